//! `/metrics` latency over real HTTP at 1k, 10k and 100k series, in both exposition formats.
//!
//! `cargo bench -p sidelight --bench metrics_latency`
//!
//! Serves the agent's real router (same handler, encoder and format conversion) on loopback
//! with a registry holding N synthetic series (100 families × N/100 label sets, shaped like
//! per-target and per-device metrics), then issues sequential keep-alive GETs from a client
//! thread and reports p50 / p99 / max of the full request latency.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sidelight::http::{HttpState, Readiness, router};
use sidelight_collector::metrics::{
    FamilySnapshot, Kind, Snapshot, SnapshotCell, SnapshotCollector,
};

const NAMES: [&str; 100] = {
    // Static family names: the snapshot model takes `&'static str`.
    [
        "bench_f00",
        "bench_f01",
        "bench_f02",
        "bench_f03",
        "bench_f04",
        "bench_f05",
        "bench_f06",
        "bench_f07",
        "bench_f08",
        "bench_f09",
        "bench_f10",
        "bench_f11",
        "bench_f12",
        "bench_f13",
        "bench_f14",
        "bench_f15",
        "bench_f16",
        "bench_f17",
        "bench_f18",
        "bench_f19",
        "bench_f20",
        "bench_f21",
        "bench_f22",
        "bench_f23",
        "bench_f24",
        "bench_f25",
        "bench_f26",
        "bench_f27",
        "bench_f28",
        "bench_f29",
        "bench_f30",
        "bench_f31",
        "bench_f32",
        "bench_f33",
        "bench_f34",
        "bench_f35",
        "bench_f36",
        "bench_f37",
        "bench_f38",
        "bench_f39",
        "bench_f40",
        "bench_f41",
        "bench_f42",
        "bench_f43",
        "bench_f44",
        "bench_f45",
        "bench_f46",
        "bench_f47",
        "bench_f48",
        "bench_f49",
        "bench_f50",
        "bench_f51",
        "bench_f52",
        "bench_f53",
        "bench_f54",
        "bench_f55",
        "bench_f56",
        "bench_f57",
        "bench_f58",
        "bench_f59",
        "bench_f60",
        "bench_f61",
        "bench_f62",
        "bench_f63",
        "bench_f64",
        "bench_f65",
        "bench_f66",
        "bench_f67",
        "bench_f68",
        "bench_f69",
        "bench_f70",
        "bench_f71",
        "bench_f72",
        "bench_f73",
        "bench_f74",
        "bench_f75",
        "bench_f76",
        "bench_f77",
        "bench_f78",
        "bench_f79",
        "bench_f80",
        "bench_f81",
        "bench_f82",
        "bench_f83",
        "bench_f84",
        "bench_f85",
        "bench_f86",
        "bench_f87",
        "bench_f88",
        "bench_f89",
        "bench_f90",
        "bench_f91",
        "bench_f92",
        "bench_f93",
        "bench_f94",
        "bench_f95",
        "bench_f96",
        "bench_f97",
        "bench_f98",
        "bench_f99",
    ]
};

fn snapshot(series: usize) -> Snapshot {
    let per = series / NAMES.len();
    let families = NAMES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let kind = if i % 2 == 0 {
                Kind::Counter
            } else {
                Kind::Gauge
            };
            let mut f =
                FamilySnapshot::new(name, "A synthetic family for the latency benchmark.", kind);
            for j in 0..per {
                f.push(
                    [
                        ("target", format!("service-{}", j % 50)),
                        ("device", format!("dev{j}")),
                    ],
                    (i * j) as f64 * 1.5,
                );
            }
            f
        })
        .collect();
    Snapshot { families }
}

/// One keep-alive GET; returns the body length.
fn get(stream: &mut BufReader<TcpStream>, accept: &str) -> usize {
    let req = format!("GET /metrics HTTP/1.1\r\nHost: bench\r\nAccept: {accept}\r\n\r\n");
    stream.get_mut().write_all(req.as_bytes()).expect("write");
    let mut len = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        stream.read_line(&mut line).expect("read header");
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().expect("length");
        }
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).expect("body");
    len
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    println!("| series | format | body KiB | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    for series in [1_000usize, 10_000, 100_000] {
        let cell = Arc::new(SnapshotCell::default());
        cell.publish(snapshot(series));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(SnapshotCollector(cell)));
        let state = HttpState {
            registry: Arc::new(registry),
            readiness: Arc::new(Readiness::default()),
            scrape_duration: Histogram::new([0.01]),
            tokens: Arc::new(RwLock::new(Vec::new())),
            dora: None,
            alerting: None,
            reload: None,
        };
        let app = router(state, 1 << 20, Duration::from_secs(30));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        rt.spawn(async move { axum::serve(listener, app).await });

        for (format, accept) in [
            ("text", "text/plain"),
            ("openmetrics", "application/openmetrics-text; version=1.0.0"),
        ] {
            let mut stream = BufReader::new(TcpStream::connect(addr).expect("connect"));
            let rounds = if series >= 100_000 { 30 } else { 200 };
            for _ in 0..5 {
                get(&mut stream, accept);
            }
            let mut times = Vec::with_capacity(rounds);
            let mut bytes = 0;
            for _ in 0..rounds {
                let t = Instant::now();
                bytes = get(&mut stream, accept);
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            times.sort_by(f64::total_cmp);
            let pct = |p: f64| times[((times.len() as f64 - 1.0) * p).round() as usize];
            println!(
                "| {series} | {format} | {} | {:.2} | {:.2} | {:.2} |",
                bytes / 1024,
                pct(0.5),
                pct(0.99),
                times[times.len() - 1]
            );
        }
    }
}

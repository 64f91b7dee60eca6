//! Deploy-event ingest with fsync'd writes (SQLite WAL, `synchronous=FULL`, group commit on the
//! store thread). Run with `cargo bench -p sidelight --bench dora_ingest`.
//!
//! 1. **Store**: deployments (3 commits each, as CI posts them) through `StoreHandle::apply`
//!    from C concurrent tasks; the store thread commits whatever is queued in one transaction
//!    (one fsync). C = 1 is one fsync per event.
//! 2. **HTTP**: the agent's real router and hub — with its recompute loop running, as in the
//!    agent — on loopback; C client threads in the same process, one keep-alive connection
//!    each, POST `/api/v1/deployments` back to back. Reports events/s and request latency.
//!
//! The database lives in a fresh directory under `$SIDELIGHT_BENCH_DIR` (default: the system
//! temp dir); it must be a real disk for the fsyncs to mean anything (the bench prints it).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sidelight::dora::{Change, DeployStatus, Deployment, DeploymentKind};
use sidelight::http::{HttpState, Readiness, router};
use sidelight::hub::Hub;
use sidelight::store::{Batch, Store, StoreHandle};
use sidelight_collector::metrics::LabelCaps;
use tokio_util::sync::CancellationToken;

const NOW: i64 = 1_800_000_000;

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("SIDELIGHT_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(PathBuf::from(d)),
        None => tempfile::tempdir(),
    }
    .expect("bench dir")
}

fn deployment(client: usize, k: usize) -> Deployment {
    let finished_at = NOW - 86_400 + (k as i64) * 10;
    Deployment {
        id: format!("c{client}-d{k}"),
        service: format!("service-{:03}", (client * 7 + k) % 100),
        environment: "production".into(),
        version: format!("{client}.{k}.0"),
        commit: format!("{client:04x}{k:08x}"),
        status: DeployStatus::Success,
        started_at: finished_at - 120,
        finished_at,
        commits: (0..3)
            .map(|c| Change {
                sha: format!("{client:04x}{k:08x}{c}"),
                timestamp: finished_at - 3600 * (c + 1),
                pr_first_commit_at: None,
            })
            .collect(),
        kind: DeploymentKind::Normal,
        fixes_deployment: None,
        resolves_incidents: Vec::new(),
    }
}

fn store_round(rt: &tokio::runtime::Runtime, dir: &Path, clients: usize, per_client: usize) -> f64 {
    let handle = StoreHandle::spawn(Store::open(dir).expect("open")).expect("store thread");
    let start = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let h = handle.clone();
                tokio::spawn(async move {
                    for k in 0..per_client {
                        let b = Batch {
                            deployment: Some((deployment(c, k), None)),
                            ..Batch::default()
                        };
                        let out = h.apply(b, NOW).await.expect("apply");
                        assert!(out.deployment_new);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
    });
    (clients * per_client) as f64 / start.elapsed().as_secs_f64()
}

/// One keep-alive POST; returns the status.
fn post(stream: &mut BufReader<TcpStream>, body: &str) -> u16 {
    let req = format!(
        "POST /api/v1/deployments HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.get_mut().write_all(req.as_bytes()).expect("write");
    let mut len = 0usize;
    let mut status = 0u16;
    let mut line = String::new();
    loop {
        line.clear();
        stream.read_line(&mut line).expect("read header");
        if status == 0 {
            status = line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .expect("status line");
            continue;
        }
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().expect("length");
        }
    }
    let mut reply = vec![0u8; len];
    stream.read_exact(&mut reply).expect("body");
    status
}

fn json_body(d: &Deployment) -> String {
    serde_json::json!({
        "id": d.id,
        "service": d.service,
        "environment": d.environment,
        "version": d.version,
        "commit": d.commit,
        "started_at": d.started_at,
        "finished_at": d.finished_at,
        "commits": d.commits.iter().map(|c| serde_json::json!({"sha": c.sha, "timestamp": c.timestamp})).collect::<Vec<_>>(),
    })
    .to_string()
}

/// (events/s, p50 ms, p99 ms)
fn http_round(
    addr: SocketAddr,
    clients: usize,
    per_client: usize,
    offset: usize,
) -> (f64, f64, f64) {
    let bodies: Vec<Vec<String>> = (0..clients)
        .map(|c| {
            (0..per_client)
                .map(|k| json_body(&deployment(offset + c, k)))
                .collect()
        })
        .collect();
    let start = Instant::now();
    let threads: Vec<_> = bodies
        .into_iter()
        .map(|bodies| {
            std::thread::spawn(move || {
                let mut stream = BufReader::new(TcpStream::connect(addr).expect("connect"));
                let mut times = Vec::with_capacity(bodies.len());
                for b in &bodies {
                    let t = Instant::now();
                    assert_eq!(post(&mut stream, b), 201);
                    times.push(t.elapsed().as_secs_f64() * 1e3);
                }
                times
            })
        })
        .collect();
    let mut times: Vec<f64> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("client"))
        .collect();
    let rate = (clients * per_client) as f64 / start.elapsed().as_secs_f64();
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() as f64 - 1.0) * p).round() as usize];
    (rate, pct(0.5), pct(0.99))
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let probe = bench_dir();
    println!("database under {}", probe.path().display());

    println!("\n| path | concurrent writers | events | events/s |");
    println!("|---|---|---|---|");
    for (clients, per_client) in [(1, 1_000), (16, 1_000), (64, 500), (256, 100)] {
        let dir = bench_dir();
        let rate = store_round(&rt, dir.path(), clients, per_client);
        println!(
            "| store (StoreHandle::apply) | {clients} | {} | {rate:.0} |",
            clients * per_client
        );
    }

    println!(
        "\n| path | client connections | events (store size after) | events/s | p50 ms | p99 ms |"
    );
    println!("|---|---|---|---|---|---|");
    let dir = bench_dir();
    let cfg = sidelight::config::load_str(
        "dora: { enabled: true }\n",
        "bench",
        Path::new("."),
        &std::collections::HashMap::<String, String>::new(),
    )
    .expect("config");
    let caps = Arc::new(LabelCaps::new(cfg.agent.max_label_sets));
    let hub = rt
        .block_on(async {
            let db = StoreHandle::open(dir.path()).await.expect("store");
            Hub::open(cfg.dora.clone(), db, caps).await
        })
        .expect("hub");
    let mut registry = Registry::default();
    hub.register(&mut registry);
    let cancel = CancellationToken::new();
    rt.spawn(hub.clone().run(cancel.clone()));
    let state = HttpState {
        registry: Arc::new(registry),
        readiness: Arc::new(Readiness::default()),
        scrape_duration: Histogram::new([0.01]),
        tokens: Arc::new(RwLock::new(Vec::new())),
        dora: Some(hub),
        alerting: None,
        reload: None,
    };
    let app = router(state, 1 << 20, Duration::from_secs(30));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    rt.spawn(async move { axum::serve(listener, app).await });
    let mut stored = 0;
    let mut offset = 0;
    for (clients, per_client) in [(1, 1_000), (16, 500), (64, 200), (64, 200)] {
        let (rate, p50, p99) = http_round(addr, clients, per_client, offset);
        offset += clients;
        stored += clients * per_client;
        println!(
            "| HTTP POST /api/v1/deployments | {clients} | {} ({stored}) | {rate:.0} | {p50:.2} | {p99:.2} |",
            clients * per_client
        );
    }
    cancel.cancel();
}

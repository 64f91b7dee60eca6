//! OTLP/gRPC ingest per core: the real receiver (tonic's generated service behind our accept
//! loop) with span metrics on, on a single-threaded runtime in its own thread, fed by a load
//! generator on another thread (its own runtime, several HTTP/2 connections, requests encoded
//! once up front so the generator stays cheap). Forwarding is not included (the intake discards:
//! the exporter is measured with the exporter).
//!
//! Reports, per batch size: spans accepted per second of the receiver thread's CPU time
//! ("per core") at saturation, and the receiver thread's CPU share at a fixed 10,000 spans/s.
//!
//! Run: `cargo bench -p sidelight-collector --bench otlp_ingest`

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustix::time::{ClockId, clock_gettime};
use sidelight_collector::metrics::LabelCaps;
use sidelight_collector::otlp::{OtlpSettings, ReceiverStats, Receivers};
use sidelight_collector::pipeline::Intake;
use sidelight_collector::spanmetrics::{Dimension, SpanMetrics, SpanMetricsSettings};
use tokio_util::sync::CancellationToken;

const CONNECTIONS: usize = 4;
const IN_FLIGHT_PER_CONNECTION: usize = 4;
const SATURATION_FOR: Duration = Duration::from_secs(5);
const FIXED_RATE_FOR: Duration = Duration::from_secs(10);

#[path = "support/otlp_traffic.rs"]
mod otlp_traffic;

use otlp_traffic::{SendCodec, request as batch};

struct Server {
    addr: SocketAddr,
    cancel: CancellationToken,
    /// Receiver thread CPU seconds, sampled on request.
    cpu: Arc<AtomicU64>,
    sample: Arc<tokio::sync::Notify>,
    thread: std::thread::JoinHandle<()>,
}

fn thread_cpu_nanos() -> u64 {
    let t = clock_gettime(ClockId::ThreadCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn start_server() -> Server {
    let (tx, rx) = std::sync::mpsc::channel();
    let cancel = CancellationToken::new();
    let cpu = Arc::new(AtomicU64::new(0));
    let sample = Arc::new(tokio::sync::Notify::new());
    let (c2, cpu2, s2) = (cancel.clone(), cpu.clone(), sample.clone());
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let caps = LabelCaps::new(2000);
            let sm = SpanMetrics::new(
                &SpanMetricsSettings {
                    dimensions: vec![Dimension {
                        attribute: "http.route".into(),
                        default: None,
                    }],
                    ..Default::default()
                },
                &caps,
            );
            let settings = OtlpSettings {
                grpc: Some("127.0.0.1:0".parse().expect("addr")),
                http: None,
                ..Default::default()
            };
            let r = Receivers::build(
                &settings,
                Intake::discard(),
                ReceiverStats::default(),
                Some(sm),
            )
            .await
            .expect("bind");
            tx.send(r.grpc_addr().expect("grpc")).expect("send");
            let sampler = async move {
                loop {
                    s2.notified().await;
                    cpu2.store(thread_cpu_nanos(), Ordering::SeqCst);
                }
            };
            tokio::select! {
                _ = r.run(c2) => {}
                _ = sampler => {}
            }
        });
    });
    let addr = rx.recv().expect("address");
    Server {
        addr,
        cancel,
        cpu,
        sample,
        thread,
    }
}

impl Server {
    fn cpu_seconds(&self) -> f64 {
        let before = self.cpu.load(Ordering::SeqCst);
        self.sample.notify_one();
        // The sampler runs on the receiver's thread; wait for it to store a new value.
        let t = Instant::now();
        while self.cpu.load(Ordering::SeqCst) == before && t.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.cpu.load(Ordering::SeqCst) as f64 / 1e9
    }
}

/// Sends `requests` round-robin until `stop`; `rate` (requests/s) paces it when given.
async fn generate(
    addr: SocketAddr,
    requests: Arc<Vec<Bytes>>,
    spans_per_request: u64,
    rate: Option<f64>,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) {
    let mut tasks = Vec::new();
    let workers = if rate.is_some() {
        1
    } else {
        CONNECTIONS * IN_FLIGHT_PER_CONNECTION
    };
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(
            tonic::transport::Channel::from_shared(format!("http://{addr}"))
                .expect("uri")
                .connect()
                .await
                .expect("connect"),
        );
    }
    for w in 0..workers {
        let channel = channels[w % CONNECTIONS].clone();
        let (requests, stop, sent) = (requests.clone(), stop.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            let path: http::uri::PathAndQuery =
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
                    .parse()
                    .expect("path");
            let mut ticker = rate.map(|r| {
                let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                grpc.ready().await.expect("ready");
                let body = requests[i % requests.len()].clone();
                i += 1;
                if grpc
                    .unary(tonic::Request::new(body), path.clone(), SendCodec)
                    .await
                    .is_ok()
                {
                    sent.fetch_add(spans_per_request, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

fn run(server: &Server, spans: usize, rate: Option<f64>, duration: Duration) -> (f64, f64, f64) {
    let requests: Arc<Vec<Bytes>> = Arc::new((0..64).map(|s| batch(spans, s)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let addr = server.addr;
    let generator = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(generate(addr, requests, spans as u64, rate, stop, sent))
        })
    };
    // Warm up one second, then measure.
    std::thread::sleep(Duration::from_secs(1));
    let (s0, c0, t0) = (
        sent.load(Ordering::Relaxed),
        server.cpu_seconds(),
        Instant::now(),
    );
    std::thread::sleep(duration);
    let (s1, c1, wall) = (
        sent.load(Ordering::Relaxed),
        server.cpu_seconds(),
        t0.elapsed().as_secs_f64(),
    );
    stop.store(true, Ordering::Relaxed);
    let _ = generator.join();
    let spans = (s1 - s0) as f64;
    let cpu = c1 - c0;
    (spans / wall, spans / cpu, cpu / wall)
}

fn main() {
    let server = start_server();
    println!(
        "OTLP/gRPC ingest with span metrics, one receiver thread (requests of N spans, 1 in 5 SERVER)"
    );
    for spans in [100, 512] {
        let (wall_rate, per_core, busy) = run(&server, spans, None, SATURATION_FOR);
        println!(
            "saturation  batch {spans:>4}: {wall_rate:>9.0} spans/s wall, receiver thread {:>5.1} % busy -> {per_core:>9.0} spans/s per core",
            busy * 100.0
        );
    }
    for spans in [100, 512] {
        let rate = 10_000.0 / spans as f64;
        let (wall_rate, _, busy) = run(&server, spans, Some(rate), FIXED_RATE_FOR);
        println!(
            "fixed rate  batch {spans:>4}: {wall_rate:>9.0} spans/s, receiver thread {:>5.2} % of a core",
            busy * 100.0
        );
    }
    server.cancel.cancel();
    let _ = server.thread.join();
}

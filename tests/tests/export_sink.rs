//! The OTLP exporter against a real downstream: the Python sink in `tests/python/otlp_sink.py`
//! (PyPI opentelemetry-proto + grpcio). Payloads are pushed into an `Intake` the way receivers
//! (`offer`) and the log tailer (`deliver`) do, and what the sink records is compared with what
//! was pushed: resources and scopes intact, every item exactly once under injected UNAVAILABLE,
//! nothing accepted lost while the sink is down, nothing lost across an exporter restart with the
//! disk spill, and spill overflow dropped oldest-first and counted.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use parking_lot::Mutex;
use sidelight_collector::export::ExportStats;
use sidelight_collector::export::batch::BatchLimits;
use sidelight_collector::export::otlp::{
    ClientSettings, Compression, OtlpClient, Protocol, Shutdown, SignalExporter,
};
use sidelight_collector::export::retry::RetryPolicy;
use sidelight_collector::export::spill::Spill;
use sidelight_collector::pipeline::{
    Intake, Payload, Queue, QueueLimits, QueueStats, Receipt, Refused, Signal,
};
use sidelight_testkit::OtlpSink;

/// The test kit's Python sink ([`OtlpSink`]), panicking instead of returning errors; killed on
/// drop.
struct Sink(OtlpSink);

impl std::ops::Deref for Sink {
    type Target = OtlpSink;
    fn deref(&self) -> &OtlpSink {
        &self.0
    }
}

impl Sink {
    fn start(grpc: u16, http: u16, extra: &[&str]) -> Sink {
        Sink(OtlpSink::start_on(grpc, http, extra).expect("the Python sink"))
    }

    fn state(&self) -> serde_json::Value {
        self.0.state().expect("sink state")
    }

    fn spans(&self) -> Vec<String> {
        self.state()["spans"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn stop(self) -> (u16, u16) {
        self.0.stop()
    }
}

fn s(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

/// `n` spans named `{tag}-{i}` under a resource and a scope that carry `tag`.
fn spans(tag: &str, n: usize) -> Payload {
    Payload::Traces(ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![s("service.name", tag), s("deployment.environment", "test")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: format!("scope.{tag}"),
                    version: "2.1".into(),
                    attributes: vec![s("scope.kind", tag)],
                    ..Default::default()
                }),
                spans: (0..n)
                    .map(|i| Span {
                        name: format!("{tag}-{i}"),
                        trace_id: vec![7; 16],
                        span_id: vec![(i % 250) as u8 + 1; 8],
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    })
}

fn names(p: &Payload) -> Vec<String> {
    let Payload::Traces(r) = p else { return vec![] };
    r.resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .map(|s| s.name.clone())
        .collect()
}

struct Rig {
    queue: Arc<Queue>,
    intake: Intake,
    stats: ExportStats,
    queue_stats: QueueStats,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<()>,
}

fn rig(
    signal: Signal,
    protocol: Protocol,
    sink: (u16, u16),
    limits: QueueLimits,
    spill: Option<&Path>,
    spill_cap: u64,
) -> Rig {
    rig_retry(signal, protocol, sink, limits, spill, spill_cap, None)
}

fn rig_retry(
    signal: Signal,
    protocol: Protocol,
    sink: (u16, u16),
    limits: QueueLimits,
    spill: Option<&Path>,
    spill_cap: u64,
    max_elapsed: Option<Duration>,
) -> Rig {
    let queue_stats = QueueStats::default();
    let stats = ExportStats::default();
    let queue = Arc::new(Queue::new(signal.as_str(), limits, queue_stats.clone()));
    let endpoint = match protocol {
        Protocol::Grpc => format!("http://127.0.0.1:{}", sink.0),
        Protocol::Http => format!("http://127.0.0.1:{}", sink.1),
    };
    let client = OtlpClient::new(&ClientSettings {
        endpoint,
        protocol,
        headers: vec![("x-test".into(), "1".into())],
        bearer_token: None,
        timeout: Duration::from_secs(5),
        compression: Compression::Gzip(Compression::GZIP_DEFAULT_LEVEL),
        tls: None,
    })
    .expect("client");
    let spill = spill.map(|dir| {
        let (spill, _) = Spill::open(dir, spill_cap).expect("spill");
        Arc::new(Mutex::new(spill))
    });
    let shutdown = Shutdown::default();
    let exporter = SignalExporter {
        signal,
        queue: queue.clone(),
        client: Arc::new(client),
        concurrency: 2,
        batch: BatchLimits {
            max_items: 64,
            max_bytes: 64 << 10,
            linger: Duration::from_millis(20),
        },
        retry: RetryPolicy {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(100),
            max_elapsed,
        },
        spill,
        stats: stats.clone(),
    };
    let task = tokio::spawn(exporter.run(shutdown.clone()));
    Rig {
        intake: Intake::discard().with(signal, queue.clone()),
        queue,
        stats,
        queue_stats,
        shutdown,
        task,
    }
}

impl Rig {
    fn label(&self) -> [(&'static str, &'static str); 2] {
        [("exporter", "otlp"), ("signal", "traces")]
    }

    async fn stop(self, flush: Duration) {
        self.queue.close();
        self.shutdown.closing.cancel();
        let abandon = self.shutdown.abandon.clone();
        tokio::spawn(async move {
            tokio::time::sleep(flush).await;
            abandon.cancel();
        });
        tokio::time::timeout(flush + Duration::from_secs(5), self.task)
            .await
            .expect("the exporter stops within its flush deadline")
            .expect("join");
    }
}

async fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn limits(max_items: usize) -> QueueLimits {
    QueueLimits {
        max_items,
        max_bytes: 16 << 20,
    }
}

async fn resources_and_scopes_intact(protocol: Protocol) {
    let sink = Sink::start(0, 0, &[]);
    let r = rig(
        Signal::Traces,
        protocol,
        (sink.grpc, sink.http),
        limits(100),
        None,
        0,
    );
    let mut want = Vec::new();
    for tag in ["checkout", "payments", "search"] {
        let p = spans(tag, 5);
        want.extend(names(&p));
        r.intake.offer(p).expect("room");
    }
    eventually("15 spans", Duration::from_secs(20), || {
        sink.spans().len() >= 15
    })
    .await;
    let state = sink.state();
    let mut got = sink.spans();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    let resources = state["resources"].as_array().expect("resources");
    for tag in ["checkout", "payments", "search"] {
        assert!(
            resources
                .iter()
                .any(|r| r["service.name"] == tag && r["deployment.environment"] == "test"),
            "resource of {tag} in {resources:?}"
        );
        assert!(
            state["scopes"]
                .as_array()
                .expect("scopes")
                .iter()
                .any(|s| s["name"] == format!("scope.{tag}")
                    && s["version"] == "2.1"
                    && s["attributes"]["scope.kind"] == tag),
            "scope of {tag} in {}",
            state["scopes"]
        );
    }
    // Merged into fewer requests than payloads (batching), none lost.
    assert!(state["requests"]["traces"].as_u64().expect("n") <= 3);
    assert_eq!(r.stats.sent.get_or_create(&r.label()).get(), 15);

    // Logs through `deliver`: the tailer's receipt fires once the sink has them.
    let fired = Arc::new(AtomicUsize::new(0));
    let lr = rig(
        Signal::Logs,
        protocol,
        (sink.grpc, sink.http),
        limits(100),
        None,
        0,
    );
    let f = fired.clone();
    let logs = Payload::Logs(ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![s("service.name", "app-logs")],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: (0..4)
                    .map(|i| LogRecord {
                        body: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(format!("line {i}"))),
                        }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    });
    lr.intake
        .deliver(
            logs,
            Receipt::new(move || {
                f.fetch_add(1, Ordering::SeqCst);
            }),
        )
        .await
        .expect("delivered");
    eventually("the log receipt", Duration::from_secs(20), || {
        fired.load(Ordering::SeqCst) == 1
    })
    .await;
    let state = sink.state();
    assert_eq!(
        state["logs"],
        serde_json::json!(["line 0", "line 1", "line 2", "line 3"])
    );
    r.stop(Duration::from_secs(1)).await;
    lr.stop(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_keeps_resources_and_scopes() {
    resources_and_scopes_intact(Protocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_keeps_resources_and_scopes() {
    resources_and_scopes_intact(Protocol::Http).await;
}

async fn flaky(protocol: Protocol) {
    let sink = Sink::start(0, 0, &["--unavailable-fraction", "0.7", "--seed", "4"]);
    let r = rig(
        Signal::Traces,
        protocol,
        (sink.grpc, sink.http),
        limits(1000),
        None,
        0,
    );
    let fired = Arc::new(AtomicUsize::new(0));
    let mut want = Vec::new();
    for i in 0..200 {
        let p = spans(&format!("flaky{i}"), 5);
        want.extend(names(&p));
        let f = fired.clone();
        r.intake
            .deliver(
                p,
                Receipt::new(move || {
                    f.fetch_add(1, Ordering::SeqCst);
                }),
            )
            .await
            .expect("queued");
    }
    eventually("every receipt", Duration::from_secs(60), || {
        fired.load(Ordering::SeqCst) == 200
    })
    .await;
    let mut got = sink.spans();
    got.sort();
    want.sort();
    assert_eq!(got.len(), 1000, "pushed = received");
    assert_eq!(got, want, "every span exactly once");
    assert_eq!(
        r.stats.sent.get_or_create(&r.label()).get(),
        1000,
        "sent = received"
    );
    let state = sink.state();
    let refused = state["refused"].as_u64().expect("refused");
    assert!(refused > 0, "the sink did refuse");
    assert_eq!(
        r.stats.retried.get_or_create(&r.label()).get(),
        refused,
        "every refusal retried"
    );
    r.stop(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unavailable_70_percent_every_span_arrives_once() {
    flaky(Protocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_503_70_percent_every_span_arrives_once() {
    flaky(Protocol::Http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_down_then_back_loses_nothing_accepted_and_counts_refusals() {
    let sink = Sink::start(0, 0, &[]);
    let ports = sink.stop();
    let r = rig(Signal::Traces, Protocol::Grpc, ports, limits(20), None, 0);
    let mut accepted = Vec::new();
    let mut refused = 0u64;
    for i in 0..60 {
        let p = spans(&format!("down{i}"), 3);
        let n = names(&p);
        match r.intake.offer(p) {
            Ok(()) => accepted.extend(n),
            Err(Refused::Full(_)) => refused += 1,
            Err(e) => panic!("{e}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(refused > 0, "the queue bound was reached");
    let qlabel = [("queue", "traces".to_owned())];
    assert_eq!(r.queue_stats.refused.get_or_create(&qlabel).get(), refused);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sink = Sink::start(ports.0, ports.1, &[]);
    let n = accepted.len();
    eventually("every accepted span", Duration::from_secs(30), || {
        sink.spans().len() >= n
    })
    .await;
    let mut got = sink.spans();
    got.sort();
    accepted.sort();
    assert_eq!(got, accepted, "nothing accepted is lost");
    assert!(r.stats.retried.get_or_create(&r.label()).get() > 0);
    r.stop(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spill_survives_an_exporter_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let down = dir.path().join("down");
    std::fs::write(&down, "").expect("down flag");
    let sink = Sink::start(0, 0, &["--down-file", &down.to_string_lossy()]);
    let spill_dir = dir.path().join("spill");
    let r = rig(
        Signal::Traces,
        Protocol::Grpc,
        (sink.grpc, sink.http),
        limits(10),
        Some(&spill_dir),
        64 << 20,
    );
    let fired = Arc::new(AtomicUsize::new(0));
    let mut want = Vec::new();
    for i in 0..100 {
        let p = spans(&format!("spill{i}"), 4);
        want.extend(names(&p));
        let f = fired.clone();
        r.intake
            .deliver(
                p,
                Receipt::new(move || {
                    f.fetch_add(1, Ordering::SeqCst);
                }),
            )
            .await
            .expect("queued");
    }
    // With the sink down, the receipts fire once the data is durably on disk.
    eventually("receipts of spilled data", Duration::from_secs(30), || {
        fired.load(Ordering::SeqCst) == 100
    })
    .await;
    assert!(sink.spans().is_empty());
    r.stop(Duration::from_secs(1)).await;

    // A new exporter on the same spill, the sink back: everything arrives.
    std::fs::remove_file(&down).expect("up");
    let r = rig(
        Signal::Traces,
        Protocol::Grpc,
        (sink.grpc, sink.http),
        limits(10),
        Some(&spill_dir),
        64 << 20,
    );
    eventually("the spill replayed", Duration::from_secs(30), || {
        sink.spans().len() >= 400
    })
    .await;
    let mut got = sink.spans();
    got.sort();
    want.sort();
    assert_eq!(got, want, "nothing lost, nothing twice");
    eventually("the spill drained", Duration::from_secs(10), || {
        r.stats.spill_depth.get_or_create(&r.label()).get() == 0
    })
    .await;
    r.stop(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spill_drops_oldest_and_counts_them() {
    let dir = tempfile::tempdir().expect("tmp");
    let down = dir.path().join("down");
    std::fs::write(&down, "").expect("down flag");
    let sink = Sink::start(0, 0, &["--down-file", &down.to_string_lossy()]);
    let one = spans("cap0000", 20).encoded_len() as u64;
    // Room for about 10 of the 60 envelopes (one record per envelope: pushed slowly).
    let cap = 10 * (one + 16) + 8;
    let r = rig(
        Signal::Traces,
        Protocol::Grpc,
        (sink.grpc, sink.http),
        limits(10),
        Some(&dir.path().join("spill")),
        cap,
    );
    let mut pushed = Vec::new();
    for i in 0..60 {
        let p = spans(&format!("cap{i:04}"), 20);
        pushed.push(names(&p));
        r.intake
            .deliver(p, Receipt::untracked())
            .await
            .expect("queued");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let qlabel = [("queue", "traces".to_owned())];
    eventually("drops counted", Duration::from_secs(10), || {
        r.queue_stats.dropped.get_or_create(&qlabel).get() > 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::remove_file(&down).expect("up");
    eventually("the spill drained", Duration::from_secs(30), || {
        r.stats.spill_depth.get_or_create(&r.label()).get() == 0 && r.queue.depth().0 == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = sink.spans();
    let dropped = r.queue_stats.dropped.get_or_create(&qlabel).get() as usize;
    assert_eq!(got.len() % 20, 0);
    let received = got.len() / 20;
    // Envelopes: received + dropped = pushed (an envelope in flight when the cap dropped it
    // may arrive as well: at most one per drop wave).
    assert!(
        received + dropped >= 60 && received + dropped <= 61,
        "received {received} + dropped {dropped} != 60"
    );
    // The newest survive: the last envelope pushed arrived, the first was dropped.
    assert!(got.contains(&"cap0059-0".to_owned()));
    assert!(!got.contains(&"cap0001-0".to_owned()));
    r.stop(Duration::from_secs(1)).await;
}

/// Found by `faults/disk_full.sh`: with the endpoint down and the spill's disk failing (full),
/// a batch that neither took was dropped and counted as `reason="shutdown"` although the agent
/// was not stopping — accepted spans lost. Now it stays in memory and both are retried: the
/// queue fills (receivers refuse, retryable), the failure is counted, and once the disk works
/// again the spill takes it, then the endpoint gets everything accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_spill_disk_keeps_batches_until_it_or_the_endpoint_takes_them() {
    let dir = tempfile::tempdir().expect("tmp");
    let down = dir.path().join("down");
    std::fs::write(&down, "").expect("down flag");
    let sink = Sink::start(0, 0, &["--down-file", &down.to_string_lossy()]);
    let spill_dir = dir.path().join("spill");
    let r = rig(
        Signal::Traces,
        Protocol::Grpc,
        (sink.grpc, sink.http),
        limits(10),
        Some(&spill_dir),
        64 << 20,
    );
    // The disk fails: the spill cannot create its first segment.
    std::fs::remove_dir_all(&spill_dir).expect("rm spill dir");
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..40 {
        let p = spans(&format!("nodisk{i:02}"), 3);
        let n = names(&p);
        match r.intake.offer(p) {
            Ok(()) => accepted.extend(n),
            Err(Refused::Full(_)) => refused += 1,
            Err(e) => panic!("{e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually(
        "spill write errors counted",
        Duration::from_secs(10),
        || r.stats.spill_write_errors.get_or_create(&r.label()).get() > 0,
    )
    .await;
    assert!(
        refused > 0,
        "backpressure: the queue filled behind the held batch"
    );
    let failed = |reason| {
        r.stats
            .failed
            .get_or_create(&[
                ("exporter", "otlp"),
                ("signal", "traces"),
                ("reason", reason),
            ])
            .get()
    };
    assert_eq!(failed("shutdown"), 0, "nothing accepted was dropped");
    // The disk works again: the spill takes what was held (no restart).
    std::fs::create_dir_all(&spill_dir).expect("spill dir back");
    eventually("spilled again", Duration::from_secs(10), || {
        r.stats.spilled.get_or_create(&r.label()).get() > 0
    })
    .await;
    std::fs::remove_file(&down).expect("up");
    let n = accepted.len();
    eventually("every accepted span", Duration::from_secs(30), || {
        sink.spans().len() >= n
    })
    .await;
    let mut got = sink.spans();
    got.sort();
    accepted.sort();
    assert_eq!(got, accepted, "nothing accepted is lost, nothing twice");
    assert_eq!(failed("shutdown"), 0);
    r.stop(Duration::from_secs(1)).await;
}

/// Found by `faults/sink_outage.sh` (5 minutes down, the default `retry.max_elapsed` 5m): log
/// batches from the tailer were dropped at `max_elapsed` like received data, so their lines were
/// lost until a restart and the tailer's checkpoint stayed pinned before them. Batches whose
/// receipts someone waits for are now retried until delivered; received (untracked) data still
/// expires and is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracked_batches_outlive_max_elapsed_untracked_ones_expire_counted() {
    let dir = tempfile::tempdir().expect("tmp");
    let down = dir.path().join("down");
    std::fs::write(&down, "").expect("down flag");
    let sink = Sink::start(0, 0, &["--down-file", &down.to_string_lossy()]);
    let r = rig_retry(
        Signal::Traces,
        Protocol::Grpc,
        (sink.grpc, sink.http),
        limits(50),
        None,
        0,
        Some(Duration::from_millis(300)),
    );
    let acked = Arc::new(AtomicUsize::new(0));
    let mut tracked = Vec::new();
    for i in 0..5 {
        let p = spans(&format!("kept{i}"), 3);
        tracked.extend(names(&p));
        let a = acked.clone();
        r.intake
            .deliver(
                p,
                Receipt::new(move || {
                    a.fetch_add(1, Ordering::SeqCst);
                }),
            )
            .await
            .expect("queued");
    }
    let exhausted = || {
        r.stats
            .failed
            .get_or_create(&[
                ("exporter", "otlp"),
                ("signal", "traces"),
                ("reason", "retries_exhausted"),
            ])
            .get()
    };
    // Well past max_elapsed: the tracked batches are still being retried.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(exhausted(), 0, "tracked batches are not dropped");
    assert_eq!(acked.load(Ordering::SeqCst), 0);
    // Received (untracked) data still expires, counted.
    r.intake.offer(spans("expires", 3)).expect("offered");
    eventually(
        "the untracked batch expired",
        Duration::from_secs(10),
        || exhausted() == 3,
    )
    .await;
    std::fs::remove_file(&down).expect("up");
    eventually("every tracked receipt", Duration::from_secs(30), || {
        acked.load(Ordering::SeqCst) == 5
    })
    .await;
    let mut got = sink.spans();
    got.sort();
    tracked.sort();
    assert_eq!(
        got, tracked,
        "the tracked spans arrive once, the expired ones not"
    );
    r.stop(Duration::from_secs(1)).await;
}

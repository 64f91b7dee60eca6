//! Measures alert condition → Slack request latency with `for: 0s` and `group_wait: 0s`: a
//! gauge crosses its threshold, and the clock stops when the loopback Slack Web API (bearer
//! token checked, `ok`/`channel`/`ts` answers) receives the `chat.postMessage` naming it.
//!
//! Two modes, 20 alerts each, every one a new group (a new `service` label), spaced 1.5 s apart
//! so the 1 message/s pacing never delays them:
//! - `edge`: the condition is set and one evaluation runs at once (`Alerting::cycle`): the
//!   agent's own cost from evaluation to the HTTP request (evaluate, group, queue, render,
//!   send).
//! - `ticker`: the agent's own evaluation loop with `evaluation_interval: 1s`, the condition
//!   set at a random phase of it: what a user sees, which adds the wait for the next tick
//!   (uniform in [0, evaluation_interval]).
//!
//! Run with `cargo bench -p sidelight --bench alert_latency`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sidelight::alerting::{Alerting, now_ms};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const TOKEN: &str = "xoxb-bench-token";
const N: usize = 20;

type Seen = mpsc::UnboundedSender<(usize, Instant)>;

async fn post_message(
    State(tx): State<Seen>,
    h: HeaderMap,
    body: Bytes,
) -> axum::Json<serde_json::Value> {
    let at = Instant::now();
    if h.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {TOKEN}")) {
        return axum::Json(serde_json::json!({"ok": false, "error": "invalid_auth"}));
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return axum::Json(serde_json::json!({"ok": false, "error": "invalid_json"}));
    };
    let text = v.to_string();
    if let Some(i) = text.find("case-") {
        let n: String = text[i + 5..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(n) = n.parse() {
            let _ = tx.send((n, at));
        }
    }
    let ts = format!("1700000000.{:06}", now_ms() % 1_000_000);
    axum::Json(
        serde_json::json!({"ok": true, "channel": "C0BENCH", "ts": ts,
        "message": {"type": "message", "ts": ts, "text": v["text"]}}),
    )
}

fn config(
    dir: &std::path::Path,
    api: &str,
    interval: &str,
    group_interval: &str,
) -> sidelight::config::Config {
    std::fs::write(dir.join("slack-token"), TOKEN).expect("token");
    let y = format!(
        r##"
alerts:
  evaluation_interval: {interval}
  group_wait: 0s
  group_interval: 1s
  groups:
    - name: bench
      interval: {group_interval}
      rules:
        - {{ alert: Flag, expr: bench_flag > 0, for: 0s }}
notifiers:
  slack: {{ token_file: slack-token, channel: "#bench", api_url: "{api}" }}
"##
    );
    sidelight::config::load_str(&y, "bench", dir, &HashMap::<String, String>::new())
        .expect("config")
}

fn report(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name:<7} n={}  p50 {:.1} ms  p95 {:.1} ms  max {:.1} ms  min {:.1} ms",
        v.len(),
        ms(v[v.len() / 2]),
        ms(v[(v.len() * 95).div_ceil(100) - 1]),
        ms(v[v.len() - 1]),
        ms(v[0]),
    );
}

async fn run(mode: &str) -> Vec<Duration> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let app = axum::Router::new()
        .route("/api/chat.postMessage", post(post_message))
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let api = format!("http://{}/api", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let dir = tempfile::tempdir().expect("dir");
    // In `edge` mode the loop's first tick runs at start and the next in an hour: every
    // evaluation after that is ours (the group is due 1 s after its last evaluation, and the
    // alerts are 1.5 s or more apart).
    let (interval, group_interval) = if mode == "edge" {
        ("1h", "1s")
    } else {
        ("1s", "1s")
    };
    let cfg = config(dir.path(), &api, interval, group_interval);
    let flag = Family::<Vec<(String, String)>, Gauge>::default();
    let mut reg = Registry::default();
    reg.register("bench_flag", "bench", flag.clone());
    let a = Alerting::open(
        cfg.alerting.clone().expect("alerting"),
        sidelight::store::StoreHandle::open(dir.path())
            .await
            .expect("store"),
        None,
    )
    .await
    .expect("open");
    a.set_registry(Arc::new(reg));
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    a.start(&tracker, cancel.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut out = Vec::new();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..N {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // A random phase of the evaluation ticker, then 1.5 s between alerts.
        tokio::time::sleep(Duration::from_millis(1500 + seed % 1000)).await;
        let labels = vec![("service".to_owned(), format!("case-{i}"))];
        let t = Instant::now();
        flag.get_or_create(&labels).set(1);
        if mode == "edge" {
            a.cycle(now_ms()).await;
        }
        let got = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match rx.recv().await {
                    Some((n, at)) if n == i => return at,
                    Some(_) => continue,
                    None => std::future::pending::<()>().await,
                }
            }
        })
        .await
        .expect("the alert reached the fake Slack");
        out.push(got - t);
    }
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    out
}

fn main() {
    if std::env::var_os("BENCH_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for mode in ["edge", "ticker"] {
        let v = rt.block_on(run(mode));
        report(mode, v);
    }
}

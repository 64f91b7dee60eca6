//! Delivery against loopback peers that check requests the way Slack and Teams do: a fake
//! Slack Web API (bearer token, Block Kit shape, 1 `chat.postMessage` per second per channel
//! with 429 + `Retry-After` beyond it, realistic `ok` / `ts` / `channel` answers) and a fake
//! Teams Workflows endpoint (Adaptive Card 1.4 shape, 202).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use parking_lot::{Mutex, RwLock};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::alert::{Alert, State as AlertState};
use super::config::{NotifierConfig, NotifierKind};
use super::deliver::{DeliveryMetrics, Item, Queue, Report, Sender, Transport, http_client};
use super::notify::{Kind, Notification, Status};
use crate::config::common::Secret;

const TOKEN: &str = "xoxb-1111-2222-test";

#[derive(Default)]
struct Fake {
    posts: Vec<(Instant, Value)>,
    updates: Vec<Value>,
    rejected_429: usize,
    last_post: HashMap<String, Instant>,
    next_ts: u64,
    teams: Vec<Value>,
    teams_fail_first: usize,
    known_ts: Vec<String>,
}

type Shared = Arc<Mutex<Fake>>;

fn slack_err(e: &str) -> Response {
    Json(json!({ "ok": false, "error": e })).into_response()
}

/// What Slack checks of a Block Kit payload (the parts we use).
fn check_blocks(body: &Value) -> Result<(), String> {
    let Some(blocks) = body.get("blocks") else {
        return Ok(()); // text-only thread replies
    };
    let blocks = blocks.as_array().ok_or("blocks is not an array")?;
    if blocks.is_empty() || blocks.len() > 50 {
        return Err(format!("{} blocks", blocks.len()));
    }
    for b in blocks {
        match b["type"].as_str() {
            Some("header") => {
                if b["text"]["type"] != "plain_text"
                    || b["text"]["text"]
                        .as_str()
                        .is_none_or(|t| t.chars().count() > 150)
                {
                    return Err(format!("bad header {b}"));
                }
            }
            Some("section") => {
                let t = &b["text"];
                if t["type"] != "mrkdwn" || t["text"].as_str().is_none_or(|t| t.len() > 3000) {
                    return Err(format!("bad section {b}"));
                }
            }
            Some("context") => {
                if b["elements"]
                    .as_array()
                    .is_none_or(|e| e.is_empty() || e.len() > 10)
                {
                    return Err(format!("bad context {b}"));
                }
            }
            Some("actions") => {
                for e in b["elements"].as_array().ok_or("actions without elements")? {
                    if e["type"] != "button" || e["text"]["type"] != "plain_text" {
                        return Err(format!("bad button {e}"));
                    }
                    if e.get("url").is_none() && e["action_id"].as_str().is_none() {
                        return Err(format!("button without action_id {e}"));
                    }
                }
            }
            other => return Err(format!("unexpected block type {other:?}")),
        }
    }
    Ok(())
}

fn authorized(h: &HeaderMap) -> bool {
    h.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {TOKEN}"))
}

async fn post_message(State(f): State<Shared>, h: HeaderMap, body: Bytes) -> Response {
    if !authorized(&h) {
        return slack_err("invalid_auth");
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return slack_err("invalid_json");
    };
    let Some(channel) = v["channel"].as_str().map(str::to_owned) else {
        return slack_err("channel_not_found");
    };
    if let Err(e) = check_blocks(&v) {
        return slack_err(&format!("invalid_blocks: {e}"));
    }
    let mut f = f.lock();
    let now = Instant::now();
    if f.last_post
        .get(&channel)
        .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(1))
    {
        f.rejected_429 += 1;
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1"), ("content-type", "application/json")],
            r#"{"ok":false,"error":"ratelimited"}"#,
        )
            .into_response();
    }
    f.last_post.insert(channel.clone(), now);
    f.next_ts += 1;
    let ts = format!("1700000000.{:06}", f.next_ts);
    f.known_ts.push(ts.clone());
    f.posts.push((now, v.clone()));
    Json(json!({
        "ok": true,
        "channel": "C0ALERTS",
        "ts": ts,
        "message": { "ts": ts, "type": "message", "text": v["text"], "bot_id": "B1" },
    }))
    .into_response()
}

async fn update(State(f): State<Shared>, h: HeaderMap, body: Bytes) -> Response {
    if !authorized(&h) {
        return slack_err("invalid_auth");
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return slack_err("invalid_json");
    };
    if let Err(e) = check_blocks(&v) {
        return slack_err(&format!("invalid_blocks: {e}"));
    }
    let mut f = f.lock();
    let ts = v["ts"].as_str().unwrap_or("").to_owned();
    let known = f.known_ts.contains(&ts) && v["channel"] == "C0ALERTS";
    if !known {
        return slack_err("message_not_found");
    }
    f.updates.push(v.clone());
    Json(json!({
        "ok": true, "channel": "C0ALERTS", "ts": ts,
        "text": v["text"], "message": { "text": v["text"] },
    }))
    .into_response()
}

async fn teams(State(f): State<Shared>, body: Bytes) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "not json").into_response();
    };
    // A Workflows "post card" action takes about 28 KB.
    if body.len() > super::deliver::TEAMS_MAX_BYTES {
        return (StatusCode::PAYLOAD_TOO_LARGE, "card too large").into_response();
    }
    let att = &v["attachments"][0];
    let card = &att["content"];
    let shape_ok = v["type"] == "message"
        && att["contentType"] == "application/vnd.microsoft.card.adaptive"
        && card["type"] == "AdaptiveCard"
        && card["version"] == "1.4"
        && card["body"].as_array().is_some_and(|b| {
            !b.is_empty()
                && b.iter().all(|x| {
                    x["type"] == "RichTextBlock"
                        && x["inlines"].as_array().is_some_and(|i| {
                            i.iter()
                                .all(|r| r["type"] == "TextRun" && r["text"].is_string())
                        })
                })
        })
        && ["attention", "warning", "good", "accent"]
            .iter()
            .any(|c| card["body"][0]["inlines"][0]["color"] == *c);
    if !shape_ok {
        return (StatusCode::BAD_REQUEST, format!("bad card {v}")).into_response();
    }
    let mut f = f.lock();
    if f.teams_fail_first > 0 {
        f.teams_fail_first -= 1;
        return (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response();
    }
    f.teams.push(v);
    StatusCode::ACCEPTED.into_response()
}

async fn start_fake(f: Shared) -> String {
    let app = axum::Router::new()
        .route("/api/chat.postMessage", post(post_message))
        .route("/api/chat.update", post(update))
        .route("/workflows/abc", post(teams))
        .with_state(f);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

fn alert(name: &str, state: AlertState) -> Alert {
    Alert {
        fingerprint: format!("alertname={name}"),
        labels: BTreeMap::from([
            ("alertname".into(), name.into()),
            ("service".into(), "checkout".into()),
            ("severity".into(), "critical".into()),
        ]),
        summary: format!("{name} is burning"),
        runbook: Some("https://runbooks.example/burn".into()),
        dashboard: Some("https://grafana.example/d/svc".into()),
        value: 15.36,
        external: Vec::new(),
        state,
        active_at: 0,
        fired_at: Some(0),
        resolved_at: None,
        last_active: 0,
    }
}

fn notification(key: &str, seq: u64, alerts: Vec<(Alert, Status)>, kind: Kind) -> Notification {
    Notification {
        key: key.into(),
        receiver: "slack".into(),
        group_labels: BTreeMap::from([("service".into(), "checkout".into())]),
        kind,
        alerts,
        seq,
        acked_by: None,
        message: None,
    }
}

fn slack_cfg(base: &str, token: &str) -> NotifierConfig {
    NotifierConfig {
        name: "slack".into(),
        kind: NotifierKind::SlackBot {
            token: Secret::for_tests(token),
            channel: "#alerts".into(),
            api_url: format!("{base}/api"),
        },
        rate_limit: Duration::from_millis(300),
        queue_capacity: 5,
        max_retries: 5,
        deploy_notices: false,
        digest: None,
        dashboard: None,
        socket_mode: None,
        external_url: None,
        max_alerts: 0,
    }
}

fn sender(cfg: &NotifierConfig, m: &DeliveryMetrics) -> Sender {
    let http = http_client().expect("client");
    Sender {
        name: cfg.name.clone(),
        channel: cfg.kind.channel_label(),
        transport: Transport::new(cfg, &http).expect("transport"),
        queue: Arc::new(Queue::new(
            cfg.queue_capacity,
            cfg.kind.channel_label(),
            &cfg.name,
            m,
        )),
        rate_limit: cfg.rate_limit,
        max_retries: cfg.max_retries,
    }
}

#[tokio::test]
async fn a_burst_of_600_arrives_complete_at_one_per_second() {
    let fake: Shared = Arc::default();
    let base = start_fake(fake.clone()).await;
    let m = DeliveryMetrics::default();
    // The sender paces at 300 ms, faster than Slack allows: the fake answers 429 + Retry-After
    // and the sender must honour it. The queue holds 5: the rest is coalesced, not dropped.
    let s = sender(&slack_cfg(&base, TOKEN), &m);
    let queue = s.queue.clone();
    for i in 0..600 {
        queue.push(Item::Group(Box::new(notification(
            &format!("slack:burst={i}"),
            1,
            vec![(
                alert(&format!("Burst{i:03}"), AlertState::Firing),
                Status::Firing,
            )],
            Kind::New,
        ))));
    }
    assert_eq!(queue.len(), 5);
    let (tx, mut rx) = mpsc::channel(1024);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(s.run(
        tx,
        m.clone(),
        Arc::new(RwLock::new(HashMap::new())),
        cancel.clone(),
    ));
    let mut delivered = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while delivered.len() < 600 {
        let r = tokio::time::timeout_at(deadline.into(), rx.recv())
            .await
            .expect("all 600 reported within a minute")
            .expect("report");
        match r {
            Report::Delivered { key, .. } => {
                delivered.insert(key);
            }
            Report::Failed { key, .. } => panic!("{key} failed"),
        }
    }
    cancel.cancel();
    let _ = task.await;
    let f = fake.lock();
    // Every alert is in some accepted message.
    let all: String = f.posts.iter().map(|(_, v)| v.to_string()).collect();
    for i in 0..600 {
        assert!(all.contains(&format!("Burst{i:03}")), "Burst{i:03} lost");
    }
    // At most one accepted message per second, and the limit was really hit and honoured.
    for w in f.posts.windows(2) {
        assert!(w[1].0.duration_since(w[0].0) >= Duration::from_secs(1));
    }
    assert!(f.rejected_429 >= 1, "the pacing never hit the limit");
    assert_eq!(f.posts.len(), 5);
    let coalesced = m
        .coalesced
        .get_or_create(&[("channel", "slack".into()), ("receiver", "slack".into())])
        .get();
    assert_eq!(coalesced, 596, "items folded into the summary");
    assert_eq!(m.sent.get_or_create(&[("channel", "slack")]).get(), 5);
}

#[tokio::test]
async fn resolve_updates_the_original_message_and_threads_a_follow_up() {
    let fake: Shared = Arc::default();
    let base = start_fake(fake.clone()).await;
    let cfg = slack_cfg(&base, TOKEN);
    let http = http_client().expect("client");
    let t = Transport::new(&cfg, &http).expect("transport");
    let deploys = HashMap::from([(
        "checkout".to_string(),
        super::alert::DeployInfo {
            at: super::now_ms() - 12 * 60_000,
            commit: "abc1234ffff".into(),
            version: "1.4.2".into(),
        },
    )]);
    let firing = notification(
        "slack:service=checkout",
        1,
        vec![(alert("ErrorBudgetBurn", AlertState::Firing), Status::Firing)],
        Kind::New,
    );
    let r = t
        .send(&Item::Group(Box::new(firing)), super::now_ms(), &deploys)
        .await
        .expect("posted")
        .expect("a message ref in bot mode");
    assert_eq!(r.channel, "C0ALERTS");
    {
        let f = fake.lock();
        let text = f.posts[0].1.to_string();
        assert!(
            text.contains("deployed 12 min ago, sha abc1234 (1.4.2)"),
            "{text}"
        );
        assert!(text.contains("sidelight_ack") && text.contains("sidelight_silence_1h"));
        assert!(text.contains("https://runbooks.example/burn"));
    }
    let mut resolved = notification(
        "slack:service=checkout",
        2,
        vec![(
            alert("ErrorBudgetBurn", AlertState::Resolved),
            Status::Resolved,
        )],
        Kind::Resolved,
    );
    resolved.message = Some(r.clone());
    tokio::time::sleep(Duration::from_millis(1100)).await; // the thread reply is a post
    let again = t
        .send(&Item::Group(Box::new(resolved)), super::now_ms(), &deploys)
        .await
        .expect("updated");
    assert_eq!(again, Some(r.clone()));
    {
        let f = fake.lock();
        assert_eq!(f.updates.len(), 1);
        assert_eq!(f.updates[0]["ts"], r.ts.as_str());
        assert!(f.updates[0].to_string().contains("RESOLVED"));
        // Resolved messages have no Ack / Silence buttons.
        assert!(!f.updates[0].to_string().contains("sidelight_ack"));
        assert_eq!(f.posts.len(), 2);
        assert_eq!(f.posts[1].1["thread_ts"], r.ts.as_str());
    }
    // A wrong token is refused, not retried.
    let bad = Transport::new(&slack_cfg(&base, "xoxb-wrong"), &http).expect("transport");
    let e = bad
        .send(
            &Item::Group(Box::new(notification("k", 1, vec![], Kind::New))),
            super::now_ms(),
            &deploys,
        )
        .await
        .expect_err("invalid_auth");
    assert!(
        matches!(e, super::deliver::SendError::Refused(ref m) if m.contains("invalid_auth")),
        "{e}"
    );
}

#[tokio::test]
async fn teams_gets_an_adaptive_card_and_5xx_is_retried() {
    let fake: Shared = Arc::default();
    fake.lock().teams_fail_first = 1;
    let base = start_fake(fake.clone()).await;
    let cfg = NotifierConfig {
        name: "teams".into(),
        kind: NotifierKind::Teams {
            url: Secret::for_tests(&format!("{base}/workflows/abc")),
            max_card_bytes: super::deliver::TEAMS_MAX_BYTES,
        },
        rate_limit: Duration::from_millis(10),
        queue_capacity: 10,
        max_retries: 3,
        deploy_notices: false,
        digest: None,
        dashboard: None,
        socket_mode: None,
        external_url: None,
        max_alerts: 0,
    };
    let m = DeliveryMetrics::default();
    let s = sender(&cfg, &m);
    s.queue.push(Item::Group(Box::new(notification(
        "teams:service=checkout",
        1,
        vec![(alert("ErrorBudgetBurn", AlertState::Firing), Status::Firing)],
        Kind::New,
    ))));
    let (tx, mut rx) = mpsc::channel(8);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(s.run(tx, m.clone(), Arc::default(), cancel.clone()));
    let r = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("reported")
        .expect("report");
    assert!(
        matches!(r, Report::Delivered { message: None, .. }),
        "{r:?}"
    );
    cancel.cancel();
    let _ = task.await;
    let f = fake.lock();
    assert_eq!(f.teams.len(), 1);
    let card = &f.teams[0]["attachments"][0]["content"];
    assert_eq!(card["body"][0]["inlines"][0]["color"], "attention");
    assert!(card["actions"].as_array().is_some_and(|a| a.len() == 2));
    assert_eq!(m.retried.get_or_create(&[("channel", "teams")]).get(), 1);
    assert_eq!(m.sent.get_or_create(&[("channel", "teams")]).get(), 1);
}

//! Socket Mode against loopback peers that behave like Slack's: a Web API whose
//! `apps.connections.open` requires the app-level token and answers a `ws://` URL, and a
//! WebSocket server there that says `hello`, sends slash-command and interactive envelopes the
//! way Slack frames them, and checks each acknowledgement (its `envelope_id`, and for commands
//! the reply in its `payload`). The agent's own alert post (bot token checked) supplies the
//! button value, as in Slack.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Alerting;

const BOT: &str = "xoxb-7-socket";
const APP: &str = "xapp-1-A01-socket";

#[derive(Default)]
struct Api {
    ws_url: String,
    opens: usize,
    refused: Vec<String>,
    posts: Vec<Value>,
}

type Shared = Arc<Mutex<Api>>;

fn bearer(h: &HeaderMap) -> Option<String> {
    h.get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_owned)
}

async fn open(State(api): State<Shared>, h: HeaderMap) -> Json<Value> {
    let mut api = api.lock();
    // Slack wants an app-level token here; a bot token is `not_allowed_token_type`.
    match bearer(&h).as_deref() {
        Some(APP) => {
            api.opens += 1;
            Json(json!({ "ok": true, "url": api.ws_url }))
        }
        Some(t) if t.starts_with("xoxb-") => {
            api.refused
                .push("bot token on apps.connections.open".into());
            Json(json!({ "ok": false, "error": "not_allowed_token_type" }))
        }
        _ => {
            api.refused
                .push("apps.connections.open without the app token".into());
            Json(json!({ "ok": false, "error": "invalid_auth" }))
        }
    }
}

async fn post_message(State(api): State<Shared>, h: HeaderMap, body: Bytes) -> Json<Value> {
    let mut api = api.lock();
    if bearer(&h).as_deref() != Some(BOT) {
        api.refused
            .push("chat.postMessage without the bot token".into());
        return Json(json!({ "ok": false, "error": "invalid_auth" }));
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return Json(json!({ "ok": false, "error": "invalid_json" }));
    };
    api.posts.push(v.clone());
    Json(
        json!({ "ok": true, "channel": "C0ALERTS", "ts": "1700000000.000001",
        "message": { "text": v["text"] } }),
    )
}

fn slash(envelope: &str, text: &str) -> String {
    json!({
        "envelope_id": envelope,
        "type": "slash_commands",
        "accepts_response_payload": true,
        "payload": {
            "token": "legacy", "team_id": "T01", "team_domain": "example",
            "channel_id": "C0ALERTS", "channel_name": "alerts",
            "user_id": "U01", "user_name": "ana",
            "command": "/sidelight", "text": text,
            "api_app_id": "A01", "is_enterprise_install": "false",
            "response_url": "https://hooks.slack.invalid/commands/T01/1/x",
            "trigger_id": "1.2.3",
        },
    })
    .to_string()
}

fn button(envelope: &str, action: &str, value: &str) -> String {
    json!({
        "envelope_id": envelope,
        "type": "interactive",
        "accepts_response_payload": false,
        "payload": {
            "type": "block_actions",
            "user": { "id": "U01", "username": "ana", "name": "ana", "team_id": "T01" },
            "api_app_id": "A01",
            "token": "legacy",
            "container": { "type": "message", "message_ts": "1700000000.000001",
                "channel_id": "C0ALERTS", "is_ephemeral": false },
            "trigger_id": "1.2.4",
            "team": { "id": "T01", "domain": "example" },
            "channel": { "id": "C0ALERTS", "name": "alerts" },
            "response_url": "https://hooks.slack.invalid/actions/T01/1/x",
            "actions": [{
                "type": "button", "action_id": action, "block_id": "b1",
                "text": { "type": "plain_text", "text": "Ack" },
                "value": value, "action_ts": "1700000001.000001",
            }],
        },
    })
    .to_string()
}

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// The next text frame (pings are answered by the library underneath).
async fn next_text(ws: &mut Socket) -> Value {
    loop {
        let f = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an acknowledgement within 10 s")
            .expect("open socket")
            .expect("frame");
        if let Frame::Text(t) = f {
            return serde_json::from_str(t.as_str()).expect("ack is JSON");
        }
    }
}

#[tokio::test]
async fn socket_mode_dispatches_commands_and_buttons_and_acks_them() {
    // The WebSocket side.
    let ws_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind ws");
    let ws_addr = ws_listener.local_addr().expect("addr");
    let (conn_tx, mut conn_rx) = tokio::sync::mpsc::channel::<Socket>(4);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = ws_listener.accept().await {
            let tx = conn_tx.clone();
            tokio::spawn(async move {
                if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                    let _ = tx.send(ws).await;
                }
            });
        }
    });
    // The Web API side.
    let api: Shared = Arc::new(Mutex::new(Api {
        ws_url: format!("ws://{ws_addr}/link/?ticket=t-1&app_id=A01"),
        ..Api::default()
    }));
    let app = axum::Router::new()
        .route("/api/apps.connections.open", post(open))
        .route("/api/chat.postMessage", post(post_message))
        .with_state(api.clone());
    let http = TcpListener::bind("127.0.0.1:0").await.expect("bind api");
    let base = format!("http://{}/api", http.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(http, app).await;
    });

    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("bot"), BOT).expect("bot");
    let cfg = crate::config::load_str(
        &format!(
            r##"
alerts:
  evaluation_interval: 1h
  group_wait: 0s
  groups:
    - name: flags
      rules:
        - {{ alert: Flag, expr: 'bench_flag > 0', labels: {{ service: api }} }}
notifiers:
  slack:
    token_file: bot
    channel: "#alerts"
    api_url: "{base}"
    socket_mode: {{ app_token_env: SLACK_APP_TOKEN }}
"##
        ),
        "t",
        dir.path(),
        &HashMap::from([("SLACK_APP_TOKEN".to_string(), APP.to_string())]),
    )
    .expect("config");
    let flag = Family::<Vec<(String, String)>, Gauge>::default();
    flag.get_or_create(&vec![("service".into(), "api".into())])
        .set(1);
    let mut reg = Registry::default();
    reg.register("bench_flag", "a flag", flag.clone());
    let a = Alerting::open(
        cfg.alerting.clone().expect("alerting"),
        crate::store::StoreHandle::open(dir.path())
            .await
            .expect("store"),
        None,
    )
    .await
    .expect("open");
    a.set_registry(Arc::new(reg));
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    // The evaluation loop's first tick fires the alert and posts it; Socket Mode connects.
    a.start(&tracker, cancel.clone());

    let mut ws = tokio::time::timeout(Duration::from_secs(15), conn_rx.recv())
        .await
        .expect("the agent opened the socket")
        .expect("socket");
    ws.send(Frame::text(
        json!({
            "type": "hello", "num_connections": 1,
            "connection_info": { "app_id": "A01" },
            "debug_info": { "host": "applink-loopback", "build_number": 1, "approximate_connection_time": 18060 },
        })
        .to_string(),
    ))
    .await
    .expect("hello");

    // The alert's message, with the value Slack would send back on a button press.
    let key = {
        let mut waited = 0;
        loop {
            let key = api.lock().posts.first().and_then(|p| {
                p["blocks"]
                    .as_array()?
                    .iter()
                    .find(|b| b["type"] == "actions")?["elements"]
                    .as_array()?
                    .iter()
                    .find(|e| e["action_id"] == "sidelight_ack")?["value"]
                    .as_str()
                    .map(str::to_owned)
            });
            if let Some(k) = key {
                break k;
            }
            waited += 1;
            assert!(waited < 100, "the alert was never posted");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };

    // `/sidelight status`: the reply rides in the ack's payload.
    ws.send(Frame::text(slash("env-1", "status")))
        .await
        .expect("send");
    let ack = next_text(&mut ws).await;
    assert_eq!(ack["envelope_id"], "env-1", "{ack}");
    assert_eq!(ack["payload"]["response_type"], "ephemeral", "{ack}");
    let text = ack["payload"]["text"].as_str().unwrap_or("");
    assert!(
        text.starts_with("1 firing") && text.contains("*Flag*"),
        "{ack}"
    );

    // `/sidelight silence`: the same handler as the HTTP route, so a silence exists.
    ws.send(Frame::text(slash("env-2", "silence Flag 30m")))
        .await
        .expect("send");
    let ack = next_text(&mut ws).await;
    assert_eq!(ack["envelope_id"], "env-2", "{ack}");
    assert!(
        ack["payload"]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("silenced alertname=\"Flag\" for 30m")),
        "{ack}"
    );
    let s = a.silences();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].created_by, "slack:U01");
    assert_eq!(s[0].matchers, vec!["alertname=\"Flag\"".to_owned()]);

    // The Ack button: a bare ack, and the group is acked by the presser.
    ws.send(Frame::text(button("env-3", "sidelight_ack", &key)))
        .await
        .expect("send");
    let ack = next_text(&mut ws).await;
    assert_eq!(ack, json!({ "envelope_id": "env-3" }));
    assert_eq!(
        a.core
            .lock()
            .dispatcher
            .groups
            .get(&key)
            .and_then(|g| g.acked_by.clone())
            .as_deref(),
        Some("ana")
    );

    // The Silence 1h button: a second silence, on the group's labels.
    ws.send(Frame::text(button("env-4", "sidelight_silence_1h", &key)))
        .await
        .expect("send");
    let ack = next_text(&mut ws).await;
    assert_eq!(ack, json!({ "envelope_id": "env-4" }));
    let s = a.silences();
    assert_eq!(s.len(), 2, "{s:?}");
    assert!(
        s[1].matchers.contains(&"service=\"api\"".to_owned()),
        "{s:?}"
    );
    assert_eq!(s[1].created_by, "slack:ana");

    {
        let api = api.lock();
        assert_eq!(api.opens, 1);
        assert!(api.refused.is_empty(), "{:?}", api.refused);
    }
    cancel.cancel();
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await;
}

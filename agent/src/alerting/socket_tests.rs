//! Socket Mode against the test kit's loopback peers, which behave like Slack's: a Web API whose
//! `apps.connections.open` requires the app-level token and answers a `ws://` URL
//! (`sidelight_testkit::ChatPeers`), and a WebSocket server there
//! (`sidelight_testkit::socket_mode`) that says `hello` and sends slash-command and interactive
//! envelopes the way Slack frames them; this test checks each acknowledgement (its
//! `envelope_id`, and for commands the reply in its `payload`). The agent's own alert post (bot
//! token checked) supplies the button value, as in Slack.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::json;
use sidelight_testkit::socket_mode::{
    SocketModePeer, block_action, hello, next_text, send, slash_command,
};
use sidelight_testkit::{ChatOptions, ChatPeers, ChatSecrets};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Alerting;

const BOT: &str = "xoxb-7-socket";
const APP: &str = "xapp-1-A01-socket";

#[tokio::test]
async fn socket_mode_dispatches_commands_and_buttons_and_acks_them() {
    // The WebSocket side, and the Web API that hands out its URL to the app token.
    let mut socket = SocketModePeer::start().await.expect("socket mode peer");
    let api = ChatPeers::start_with(
        ChatSecrets {
            slack_token: BOT.into(),
            hook_token: String::new(),
            hook_hmac: String::new(),
        },
        ChatOptions {
            app_token: Some(APP.into()),
            socket_url: Some(socket.url().to_owned()),
            ..ChatOptions::default()
        },
    )
    .expect("loopback Slack");
    let base = api.slack_api();

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

    let mut ws = socket
        .accept(Duration::from_secs(15))
        .await
        .expect("the agent opened the socket");
    send(&mut ws, hello()).await.expect("hello");

    // The alert's message, with the value Slack would send back on a button press.
    let key = {
        let mut waited = 0;
        loop {
            let key = api.seen().posts.first().and_then(|(_, p)| {
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
    send(&mut ws, slash_command("env-1", "status"))
        .await
        .expect("send");
    let ack = next_text(&mut ws).await.expect("an acknowledgement");
    assert_eq!(ack["envelope_id"], "env-1", "{ack}");
    assert_eq!(ack["payload"]["response_type"], "ephemeral", "{ack}");
    let text = ack["payload"]["text"].as_str().unwrap_or("");
    assert!(
        text.starts_with("1 firing") && text.contains("*Flag*"),
        "{ack}"
    );

    // `/sidelight silence`: the same handler as the HTTP route, so a silence exists.
    send(&mut ws, slash_command("env-2", "silence Flag 30m"))
        .await
        .expect("send");
    let ack = next_text(&mut ws).await.expect("an acknowledgement");
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
    send(&mut ws, block_action("env-3", "sidelight_ack", &key))
        .await
        .expect("send");
    let ack = next_text(&mut ws).await.expect("an acknowledgement");
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
    send(&mut ws, block_action("env-4", "sidelight_silence_1h", &key))
        .await
        .expect("send");
    let ack = next_text(&mut ws).await.expect("an acknowledgement");
    assert_eq!(ack, json!({ "envelope_id": "env-4" }));
    let s = a.silences();
    assert_eq!(s.len(), 2, "{s:?}");
    assert!(
        s[1].matchers.contains(&"service=\"api\"".to_owned()),
        "{s:?}"
    );
    assert_eq!(s[1].created_by, "slack:ana");

    {
        let seen = api.seen();
        assert_eq!(seen.socket_opens, 1);
        assert!(seen.refused.is_empty(), "{:?}", seen.refused);
    }
    cancel.cancel();
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await;
}

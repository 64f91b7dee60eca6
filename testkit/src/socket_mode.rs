//! Slack's Socket Mode, the WebSocket side: a loopback server the agent connects to at the URL
//! `apps.connections.open` answered ([`crate::ChatOptions::socket_url`]), handing each accepted
//! socket to the test, and the frames Slack sends on it (`hello`, slash-command and interactive
//! envelopes, framed as Slack frames them). The test reads the acknowledgements with
//! [`next_text`] and checks them.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as Frame;

use crate::Result;

/// One accepted Socket Mode connection.
pub type Socket = tokio_tungstenite::WebSocketStream<TcpStream>;

/// The WebSocket server; runs until the test's runtime ends.
pub struct SocketModePeer {
    url: String,
    accepted: mpsc::Receiver<Socket>,
}

impl SocketModePeer {
    /// Binds 127.0.0.1:0 and accepts WebSocket handshakes from a task of the current runtime.
    pub async fn start() -> Result<SocketModePeer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, accepted) = mpsc::channel::<Socket>(4);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                        let _ = tx.send(ws).await;
                    }
                });
            }
        });
        Ok(SocketModePeer {
            // The shape of the URL Slack hands out (a ticket and the app id in the query).
            url: format!("ws://{addr}/link/?ticket=t-1&app_id=A01"),
            accepted,
        })
    }

    /// The URL to give `apps.connections.open` ([`crate::ChatOptions::socket_url`]).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The next connection the client opened, waiting at most `timeout`.
    pub async fn accept(&mut self, timeout: Duration) -> Result<Socket> {
        tokio::time::timeout(timeout, self.accepted.recv())
            .await
            .map_err(|_| format!("no Socket Mode connection within {timeout:?}"))?
            .ok_or_else(|| "the Socket Mode listener stopped".into())
    }
}

/// The `hello` Slack sends first on a new connection.
pub fn hello() -> Frame {
    Frame::text(
        json!({
            "type": "hello", "num_connections": 1,
            "connection_info": { "app_id": "A01" },
            "debug_info": { "host": "applink-loopback", "build_number": 1, "approximate_connection_time": 18060 },
        })
        .to_string(),
    )
}

/// A slash-command envelope (`/sidelight <text>` from user `ana` / `U01` in `#alerts`), which
/// accepts a response payload in its acknowledgement.
pub fn slash_command(envelope: &str, text: &str) -> Frame {
    Frame::text(
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
        .to_string(),
    )
}

/// An interactive `block_actions` envelope: user `ana` pressed the button `action` whose value
/// is `value` on the message `1700000000.000001` in `#alerts`.
pub fn block_action(envelope: &str, action: &str, value: &str) -> Frame {
    Frame::text(
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
        .to_string(),
    )
}

/// The next text frame from the client as JSON, within 10 s (pings are answered by the library
/// underneath). Slack requires acknowledgements to be JSON; anything else is an error.
pub async fn next_text(ws: &mut Socket) -> Result<Value> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .map_err(|_| "no frame within 10 s")?
            .ok_or("the socket closed")??;
        if let Frame::Text(t) = frame {
            return Ok(serde_json::from_str(t.as_str())?);
        }
    }
}

/// Sends one frame to the client.
pub async fn send(ws: &mut Socket, frame: Frame) -> Result {
    use futures_util::SinkExt;
    ws.send(frame).await?;
    Ok(())
}

//! Sidelight's test kit: the loopback peers and runners that the agent's unit tests, the
//! end-to-end tests (`tests/`) and the fault scenarios (`faults/`) share, so that each fake
//! exists once.
//!
//! - [`chat`]: a loopback Slack Web API, Teams Workflows endpoint and generic webhook that check
//!   requests the way the real services do (auth, content type, Block Kit / Adaptive Card shape
//!   and size limits, Alertmanager's webhook format, Slack's rate limits), with fault injection
//!   (a 429 window, failing Teams posts) where tests ask for it;
//! - [`socket_mode`]: Slack's Socket Mode WebSocket side and the envelopes Slack sends on it;
//! - [`prometheus`]: a real Prometheus server on an ephemeral port;
//! - [`otlp_sink`]: the Python OTLP sink (`tests/python/otlp_sink.py`);
//! - [`alertmanager`]: Alertmanager's webhook message model and its checks;
//! - [`corpus`]: fuzz corpus replay on stable;
//! - [`http`], [`process`]: the loopback HTTP/1.1 server, a blocking client, child processes
//!   killed on drop, polling.
//!
//! The binary `loopback-slack` serves [`chat::ChatPeers`] on its own for the shell scenarios.

pub mod alertmanager;
pub mod chat;
pub mod corpus;
pub mod http;
pub mod otlp_sink;
pub mod process;
pub mod prometheus;
pub mod socket_mode;

pub use alertmanager::{AmAlert, AmMessage, AmStatus, check_alertmanager, is_rfc3339};
pub use chat::{
    ChatOptions, ChatPeers, ChatSecrets, ChatSeen, TEAMS_MAX_BYTES, TEAMS_PATH, check_blocks,
    check_teams_card, check_teams_cards_with_node, slack_markup, slack_signature,
};
pub use http::{HttpAnswer, HttpRequest, client, get, http_server, sample};
pub use otlp_sink::OtlpSink;
pub use process::{Proc, Result, eventually, free_port, python, workspace};
pub use prometheus::Prometheus;

//! The sidelight daemon: CLI, config, lifecycle, the HTTP surface, and the feedback half.
//!
//! `main.rs` is the only place that uses `anyhow`; everything here returns typed errors.

pub mod alerting;
pub mod api;
pub mod clock;
pub mod config;
pub mod dora;
pub mod export;
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
pub mod http;
pub mod hub;
pub mod logging;
pub mod logs;
pub mod otlp;
pub mod preflight;
pub mod reload;
pub mod resource;
pub mod runtime;
pub mod slo;
pub mod store;
pub mod webhooks;

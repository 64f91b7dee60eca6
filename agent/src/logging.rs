//! The agent's own logs: structured JSON lines on stderr, level from `agent.log_level` or the
//! `SIDELIGHT_LOG` environment variable (which wins), changeable on reload.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// The environment variable that overrides the configured level.
pub const LOG_ENV: &str = "SIDELIGHT_LOG";

/// Changes the level after start.
#[derive(Clone)]
pub struct LogHandle(reload::Handle<EnvFilter, Registry>);

impl std::fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogHandle")
    }
}

fn filter(configured: &str) -> EnvFilter {
    let directive = std::env::var(LOG_ENV).ok().filter(|v| !v.trim().is_empty());
    let directive = directive.as_deref().unwrap_or(configured);
    EnvFilter::builder()
        .parse(directive)
        .unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the JSON logger. Call once, before anything logs.
pub fn init(configured_level: &str) -> LogHandle {
    let (layer, handle) = reload::Layer::new(filter(configured_level));
    let fmt = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(true)
        .with_writer(std::io::stderr);
    // A second init (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(layer)
        .with(fmt)
        .try_init();
    LogHandle(handle)
}

impl LogHandle {
    /// Applies a new configured level (the environment variable still wins).
    pub fn set_level(&self, configured_level: &str) {
        if let Err(e) = self.0.reload(filter(configured_level)) {
            tracing::warn!(error = %e, "could not change the log level");
        }
    }
}

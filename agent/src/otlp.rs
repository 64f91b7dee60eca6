//! The agent's glue for the OTLP receivers and span metrics: builds them from the validated
//! `otlp:` section, registers their metrics, runs them on the agent's `TaskTracker` under the
//! sources' cancellation token, and applies reloads in place (tokens, limits, `retry_after`,
//! TLS certificates, span-metric dimensions and kinds; addresses, buckets and label caps need a
//! restart, which the log says).

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use sidelight_collector::logs::LogStats;
use sidelight_collector::metrics::LabelCaps;
use sidelight_collector::otlp::serve::ConnectionStats;
use sidelight_collector::otlp::{Derived, OtlpError, ReceiverStats, Receivers, ReceiversHandle};
use sidelight_collector::pipeline::{Intake, Signal};
use sidelight_collector::received_metrics::{ReceivedMetrics, ReceivedSettings};
use sidelight_collector::spanmetrics::SpanMetrics;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::OtlpConfig;

/// Running receivers.
#[derive(Debug)]
pub struct Otlp {
    handle: ReceiversHandle,
    spanmetrics: Option<SpanMetrics>,
    received: ReceivedMetrics,
    caps: Arc<LabelCaps>,
    /// The bound gRPC address.
    pub grpc: Option<SocketAddr>,
    /// The bound HTTP address.
    pub http: Option<SocketAddr>,
}

impl Otlp {
    /// Binds the receivers (when enabled), registers their metrics and spawns them on `tracker`;
    /// they stop when `cancel` fires, after answering the requests in flight. Received metrics
    /// are served on `/metrics` and received log records counted in `log_stats`, whether or not
    /// an exporter forwards them.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        config: &OtlpConfig,
        intake: Intake,
        caps: &Arc<LabelCaps>,
        log_stats: &LogStats,
        registry: &mut Registry,
        connections: ConnectionStats,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Result<Option<Otlp>, OtlpError> {
        if !config.enabled {
            return Ok(None);
        }
        let spanmetrics = config
            .spanmetrics
            .as_ref()
            .map(|s| SpanMetrics::new(s, caps));
        let stats = ReceiverStats {
            connections,
            ..Default::default()
        };
        let received = ReceivedMetrics::new(received_settings(config, caps), caps.clone());
        let forwards = (
            intake.forwards(Signal::Metrics),
            intake.forwards(Signal::Logs),
        );
        let receivers = Receivers::build_with(
            &config.receivers,
            intake,
            stats.clone(),
            Derived {
                spanmetrics: spanmetrics.clone(),
                metrics: Some(received.clone()),
                logs: Some(log_stats.clone()),
            },
        )
        .await?;
        stats.register(registry);
        if let Some(sm) = &spanmetrics {
            sm.register(registry);
        }
        received.register(registry);
        let otlp = Otlp {
            handle: receivers.handle(),
            spanmetrics,
            received: received.clone(),
            caps: caps.clone(),
            grpc: receivers.grpc_addr(),
            http: receivers.http_addr(),
        };
        tracing::info!(
            grpc = otlp.grpc.map(|a| a.to_string()),
            http = otlp.http.map(|a| a.to_string()),
            tls = config.receivers.tls.is_some(),
            auth = !config.receivers.bearer_tokens.is_empty(),
            spanmetrics = otlp.spanmetrics.is_some(),
            received_metrics = if forwards.0 {
                "served on /metrics and forwarded"
            } else {
                "served on /metrics, not forwarded (no export)"
            },
            received_logs = if forwards.1 {
                "counted on /metrics and forwarded"
            } else {
                "counted on /metrics, not forwarded (no export)"
            },
            "otlp receivers listening"
        );
        tracker.spawn(receivers.run(cancel));
        Ok(Some(otlp))
    }

    /// The received metrics served on `/metrics`.
    pub fn received_metrics(&self) -> &ReceivedMetrics {
        &self.received
    }

    /// The span metrics, for readers such as the regression detector.
    pub fn spanmetrics(&self) -> Option<&SpanMetrics> {
        self.spanmetrics.as_ref()
    }

    /// Applies a validated new `otlp:` section in place; logs what needs a restart.
    pub fn reload(&self, old: &OtlpConfig, new: &OtlpConfig) {
        if !new.enabled {
            tracing::warn!("otlp.enabled changes take effect at the next restart");
            return;
        }
        match self.handle.reconfigure(&new.receivers) {
            Ok(restart) => {
                for key in restart {
                    tracing::warn!("otlp.{key} changes take effect at the next restart");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "otlp settings not applied; the previous ones stay")
            }
        }
        self.received
            .reconfigure(received_settings(new, &self.caps));
        match (&self.spanmetrics, &new.spanmetrics) {
            (Some(sm), Some(settings)) => {
                for key in sm.reconfigure(settings) {
                    tracing::warn!(
                        "otlp.spanmetrics.{key} changes take effect at the next restart"
                    );
                }
            }
            _ if old.spanmetrics.is_some() != new.spanmetrics.is_some() => {
                tracing::warn!("otlp.spanmetrics.enabled changes take effect at the next restart");
            }
            _ => {}
        }
    }
}

/// The bounds of received metrics: `agent.max_label_sets` per family (the caps' limit), the
/// rest at their defaults.
fn received_settings(_config: &OtlpConfig, caps: &LabelCaps) -> ReceivedSettings {
    ReceivedSettings {
        max_label_sets: caps.limit(),
        ..ReceivedSettings::default()
    }
}

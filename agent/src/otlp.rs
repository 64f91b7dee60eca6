//! The agent's glue for the OTLP receivers and span metrics: builds them from the validated
//! `otlp:` section, registers their metrics, runs them on the agent's `TaskTracker` under the
//! sources' cancellation token, and applies reloads in place (tokens, limits, `retry_after`,
//! TLS certificates, span-metric dimensions and kinds; addresses, buckets and label caps need a
//! restart, which the log says).

use std::net::SocketAddr;

use prometheus_client::registry::Registry;
use sidelight_collector::metrics::LabelCaps;
use sidelight_collector::otlp::serve::ConnectionStats;
use sidelight_collector::otlp::{OtlpError, ReceiverStats, Receivers, ReceiversHandle};
use sidelight_collector::pipeline::Intake;
use sidelight_collector::spanmetrics::SpanMetrics;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::OtlpConfig;

/// Running receivers.
#[derive(Debug)]
pub struct Otlp {
    handle: ReceiversHandle,
    spanmetrics: Option<SpanMetrics>,
    /// The bound gRPC address.
    pub grpc: Option<SocketAddr>,
    /// The bound HTTP address.
    pub http: Option<SocketAddr>,
}

impl Otlp {
    /// Binds the receivers (when enabled), registers their metrics and spawns them on `tracker`;
    /// they stop when `cancel` fires, after answering the requests in flight.
    pub async fn start(
        config: &OtlpConfig,
        intake: Intake,
        caps: &LabelCaps,
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
        let receivers = Receivers::build(
            &config.receivers,
            intake,
            stats.clone(),
            spanmetrics.clone(),
        )
        .await?;
        stats.register(registry);
        if let Some(sm) = &spanmetrics {
            sm.register(registry);
        }
        let otlp = Otlp {
            handle: receivers.handle(),
            spanmetrics,
            grpc: receivers.grpc_addr(),
            http: receivers.http_addr(),
        };
        tracing::info!(
            grpc = otlp.grpc.map(|a| a.to_string()),
            http = otlp.http.map(|a| a.to_string()),
            tls = config.receivers.tls.is_some(),
            auth = !config.receivers.bearer_tokens.is_empty(),
            spanmetrics = otlp.spanmetrics.is_some(),
            "otlp receivers listening"
        );
        tracker.spawn(receivers.run(cancel));
        Ok(Some(otlp))
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

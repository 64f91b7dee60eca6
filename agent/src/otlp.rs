//! The agent's glue for the OTLP receivers and span metrics: builds them from the validated
//! `otlp:` section, registers their metrics, runs them on the agent's `TaskTracker` under the
//! sources' cancellation token, and applies reloads in place (tokens, limits, `retry_after`,
//! TLS certificates, span-metric dimensions and kinds; addresses, buckets and label caps need a
//! restart, which the log says). It owns the `otlp:` section: validation yields the collector's
//! own settings ([`OtlpSettings`], [`SpanMetricsSettings`]), whose defaults are the section's.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use serde::Deserialize;
use sidelight_collector::logs::{LogStats, RedactionConfig};
use sidelight_collector::metrics::LabelCaps;
use sidelight_collector::otlp::serve::ConnectionStats;
use sidelight_collector::otlp::{
    Derived, OtlpError, OtlpSettings, ReceiverStats, Receivers, ReceiversHandle, TlsFiles, Token,
};
use sidelight_collector::pipeline::{Intake, Signal};
use sidelight_collector::received_metrics::{ReceivedMetrics, ReceivedSettings};
use sidelight_collector::spanmetrics::{self, Dimension, SpanMetrics, SpanMetricsSettings};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::common::{ConfigError, Env, RawBearerAuth, duration};

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

/// The bounds of received metrics: `otlp.metrics`, with `agent.max_label_sets` (the caps'
/// limit) per family.
fn received_settings(config: &OtlpConfig, caps: &LabelCaps) -> ReceivedSettings {
    ReceivedSettings {
        max_label_sets: caps.limit(),
        ..config.metrics.clone()
    }
}

// ---------------------------------------------------------------------------------------------
// The `otlp:` section.

/// `otlp:` as written; every default comes from [`OtlpSettings::default`] and
/// [`SpanMetricsSettings::default`].
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RawOtlp {
    enabled: bool,
    /// `null` turns the gRPC receiver off.
    grpc: Option<String>,
    /// `null` turns the HTTP receiver off.
    http: Option<String>,
    max_request_bytes: usize,
    #[serde(with = "duration")]
    retry_after: Duration,
    auth: Option<RawBearerAuth>,
    tls: Option<RawTls>,
    max_connections: usize,
    spanmetrics: RawSpanMetrics,
    redaction: RedactionConfig,
    metrics: RawReceivedMetrics,
}

/// `otlp.metrics`: how received metrics are bounded on `/metrics`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct RawReceivedMetrics {
    #[serde(with = "duration")]
    expiry: Duration,
    max_series: usize,
}

impl Default for RawReceivedMetrics {
    fn default() -> Self {
        let d = ReceivedSettings::default();
        Self {
            expiry: d.expiry,
            max_series: d.max_series,
        }
    }
}

impl Default for RawOtlp {
    fn default() -> Self {
        let d = OtlpSettings::default();
        Self {
            enabled: true,
            grpc: d.grpc.map(|a| a.to_string()),
            http: d.http.map(|a| a.to_string()),
            max_request_bytes: d.max_request_bytes,
            retry_after: d.retry_after,
            auth: None,
            tls: None,
            max_connections: d.max_connections,
            spanmetrics: RawSpanMetrics::default(),
            redaction: d.redaction,
            metrics: RawReceivedMetrics::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
struct RawTls {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct RawSpanMetrics {
    enabled: bool,
    dimensions: Vec<RawDimension>,
    /// Absent: [`spanmetrics::DEFAULT_BUCKETS`].
    buckets: Option<Vec<RawBucket>>,
    max_label_sets: usize,
    /// Absent: the default kinds (server, consumer).
    kinds: Option<Vec<String>>,
}

impl Default for RawSpanMetrics {
    fn default() -> Self {
        Self {
            enabled: true,
            // `http.route` by default (the shipped service dashboard groups by it); a span
            // without it gives a series without the label.
            dimensions: SpanMetricsSettings::default()
                .dimensions
                .into_iter()
                .map(|d| RawDimension::Full {
                    name: d.attribute,
                    default: d.default,
                })
                .collect(),
            buckets: None,
            max_label_sets: SpanMetricsSettings::default().max_label_sets,
            kinds: None,
        }
    }
}

/// `http.route` or `{ name: http.route, default: unknown }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawDimension {
    Name(String),
    Full {
        name: String,
        #[serde(default)]
        default: Option<String>,
    },
}

/// `2ms`, `1.4s` or a number of seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawBucket {
    Seconds(f64),
    Text(String),
}

/// `otlp:` section, validated: the receivers' and span metrics' own settings.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpConfig {
    /// Whether the receivers run (false when the file has no `otlp:` section).
    pub enabled: bool,
    /// Addresses, limits, tokens, TLS.
    pub receivers: OtlpSettings,
    /// Span metrics, when `otlp.spanmetrics.enabled`.
    pub spanmetrics: Option<SpanMetricsSettings>,
    /// Bounds of received metrics (`max_label_sets` is `agent.max_label_sets`, applied at start).
    pub metrics: ReceivedSettings,
}

/// Validates `otlp:` (`None`: the file has no such section, so the receivers are off); files
/// relative to `base`; every problem added to `errors`.
pub fn validate(
    raw: Option<RawOtlp>,
    base: &Path,
    env: &dyn Env,
    errors: &mut Vec<ConfigError>,
) -> OtlpConfig {
    let given = raw.is_some();
    let raw = raw.unwrap_or_default();
    let grpc = listen_address("grpc", raw.grpc.as_deref(), errors);
    let http = listen_address("http", raw.http.as_deref(), errors);
    let bearer_tokens = match &raw.auth {
        Some(auth) => auth
            .tokens("otlp.auth", true, base, env, errors)
            .iter()
            .map(|t| Token::new(t.expose()))
            .collect(),
        None => Vec::new(),
    };
    let mut err = |path: String, message: String| errors.push(ConfigError { path, message });

    let tls = match &raw.tls {
        None => None,
        Some(RawTls {
            cert_file: Some(cert),
            key_file: Some(key),
        }) => {
            let files = TlsFiles {
                cert_file: base.join(cert),
                key_file: base.join(key),
            };
            // Loaded now so that check-config and a reload report a bad certificate.
            if raw.enabled
                && given
                && let Err(e) = sidelight_collector::otlp::load_tls(&files)
            {
                err("otlp.tls".into(), e.to_string());
            }
            Some(files)
        }
        Some(_) => {
            err(
                "otlp.tls".into(),
                "needs both cert_file and key_file".into(),
            );
            None
        }
    };

    let receivers = OtlpSettings {
        grpc,
        http,
        max_request_bytes: raw.max_request_bytes,
        retry_after: raw.retry_after,
        bearer_tokens,
        tls,
        redaction: raw.redaction.clone(),
        max_connections: raw.max_connections,
        resource: Default::default(),
    };
    let unparsed = (raw.grpc.is_some() && grpc.is_none()) || (raw.http.is_some() && http.is_none());
    for e in receivers.validate() {
        // "no listener" is only news when no address failed to parse (reported above).
        if e.key == "grpc" && unparsed {
            continue;
        }
        err(format!("otlp.{}", e.key), e.message);
    }

    let sm = &raw.spanmetrics;
    let defaults = SpanMetricsSettings::default();
    let buckets = match &sm.buckets {
        None => defaults.buckets,
        Some(raw_buckets) => {
            let mut buckets = Vec::new();
            for (i, b) in raw_buckets.iter().enumerate() {
                match b {
                    RawBucket::Seconds(s) => buckets.push(*s),
                    RawBucket::Text(t) => match spanmetrics::parse_bucket(t) {
                        Ok(s) => buckets.push(s),
                        Err(m) => err(format!("otlp.spanmetrics.buckets[{i}]"), m),
                    },
                }
            }
            buckets
        }
    };
    let kinds = match &sm.kinds {
        None => defaults.kinds,
        Some(raw_kinds) => {
            let mut kinds = Vec::new();
            for (i, k) in raw_kinds.iter().enumerate() {
                match spanmetrics::parse_kind(k) {
                    Ok(kind) => kinds.push(kind),
                    Err(m) => err(format!("otlp.spanmetrics.kinds[{i}]"), m),
                }
            }
            kinds
        }
    };
    let settings = SpanMetricsSettings {
        dimensions: sm
            .dimensions
            .iter()
            .map(|d| match d {
                RawDimension::Name(name) => Dimension {
                    attribute: name.clone(),
                    default: None,
                },
                RawDimension::Full { name, default } => Dimension {
                    attribute: name.clone(),
                    default: default.clone(),
                },
            })
            .collect(),
        buckets,
        max_label_sets: sm.max_label_sets,
        kinds,
    };
    for e in settings.validate() {
        err(format!("otlp.spanmetrics.{}", e.key), e.message);
    }
    let m = &raw.metrics;
    if m.expiry < Duration::from_secs(1) || m.expiry > Duration::from_secs(7 * 24 * 3600) {
        err(
            "otlp.metrics.expiry".into(),
            "must be between 1s and 7d".into(),
        );
    }
    if m.max_series == 0 || m.max_series > 10_000_000 {
        err(
            "otlp.metrics.max_series".into(),
            "must be between 1 and 10000000".into(),
        );
    }
    OtlpConfig {
        enabled: given && raw.enabled,
        receivers,
        spanmetrics: sm.enabled.then_some(settings),
        metrics: ReceivedSettings {
            expiry: m.expiry,
            max_series: m.max_series,
            ..ReceivedSettings::default()
        },
    }
}

/// `otlp.grpc` / `otlp.http`: an address, or `None` when turned off (`null`) or unreadable.
fn listen_address(
    key: &str,
    text: Option<&str>,
    errors: &mut Vec<ConfigError>,
) -> Option<SocketAddr> {
    let text = text?.trim();
    match text.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            errors.push(ConfigError::new(
                format!("otlp.{key}"),
                format!("{text:?} is not an address like 127.0.0.1:4317 (null turns it off)"),
            ));
            None
        }
    }
}

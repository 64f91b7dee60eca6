//! The `export:` section and its runtime: one bounded `Queue` per forwarded OTLP signal behind
//! the [`Intake`] (receivers call `Intake::offer`, the log tailer `Intake::deliver`), one OTLP
//! consumer per queue, the agent's own telemetry pushed into the metrics queue every host
//! interval, and the Prometheus remote writer. Absent sections export nothing.
//!
//! Shutdown ([`Exports::stop`]): the queues close and the consumers drain them (to the endpoint,
//! or to the disk spill when there is one); at 80 % of `agent.shutdown_timeout` whatever is still
//! in flight is abandoned (spilled, or left un-acknowledged and counted).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use sidelight_collector::export::batch::BatchLimits;
use sidelight_collector::export::otlp::{
    ClientSettings, Compression, OtlpClient, Protocol, Shutdown, SignalExporter,
};
use sidelight_collector::export::remote_write::{self, RemoteWriteSettings};
use sidelight_collector::export::retry::RetryPolicy;
use sidelight_collector::export::spill::Spill;
use sidelight_collector::export::tls::{ClientTls, ClientTlsFiles};
use sidelight_collector::export::{ExportStats, telemetry};
use sidelight_collector::filesink::FileSinkConfig;
use sidelight_collector::model;
use sidelight_collector::pipeline::{
    Envelope, Intake, Payload, PushError, Queue, QueueLimits, QueueStats, Receipt, Signal,
};
use tokio_util::task::TaskTracker;

use crate::config::common::{ConfigError, Env, duration, optional_bearer_token};

// ---------------------------------------------------------------------------------------------
// The section's shape.

/// `export:` as written.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct RawExport {
    otlp: Option<RawOtlp>,
    remote_write: Option<RawRemoteWrite>,
    file: Option<RawFileExport>,
}

/// `export.file` as written.
#[derive(Debug, Clone, Deserialize)]
struct RawFileExport {
    path: PathBuf,
    #[serde(default = "default_file_signals")]
    signals: Vec<String>,
    #[serde(default = "default_file_max_bytes")]
    max_bytes: u64,
    #[serde(default = "default_file_max_files")]
    max_files: usize,
    #[serde(default = "default_file_queue")]
    queue_max_items: usize,
}

fn default_file_signals() -> Vec<String> {
    Signal::ALL.iter().map(|s| s.as_str().to_owned()).collect()
}

fn default_file_max_bytes() -> u64 {
    100 << 20
}

fn default_file_max_files() -> usize {
    2
}

fn default_file_queue() -> usize {
    64
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct RawOtlp {
    endpoint: String,
    protocol: String,
    headers: BTreeMap<String, String>,
    bearer_token_file: Option<PathBuf>,
    bearer_token_env: Option<String>,
    #[serde(with = "duration")]
    timeout: Duration,
    compression: String,
    compression_level: Option<u8>,
    tls: Option<RawTls>,
    concurrency: usize,
    batch: RawBatch,
    queue: RawQueue,
    retry: RawRetry,
    spill: RawSpill,
    signals: Vec<String>,
    /// Export the agent's own metrics (what /metrics serves) through the metrics queue.
    self_metrics: bool,
}

impl Default for RawOtlp {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            protocol: "grpc".into(),
            headers: BTreeMap::new(),
            bearer_token_file: None,
            bearer_token_env: None,
            timeout: Duration::from_secs(10),
            compression: "gzip".into(),
            compression_level: None,
            tls: None,
            concurrency: 4,
            batch: RawBatch::default(),
            queue: RawQueue::default(),
            retry: RawRetry::default(),
            spill: RawSpill::default(),
            signals: Signal::ALL.iter().map(|s| s.as_str().to_owned()).collect(),
            self_metrics: true,
        }
    }
}

/// `export.otlp.tls` / `export.remote_write.tls`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawTls {
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    insecure_skip_verify: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct RawBatch {
    max_items: usize,
    max_bytes: usize,
    #[serde(with = "duration")]
    linger: Duration,
}

impl Default for RawBatch {
    fn default() -> Self {
        let d = BatchLimits::default();
        Self {
            max_items: d.max_items,
            max_bytes: d.max_bytes,
            linger: d.linger,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct RawQueue {
    max_items: usize,
    max_bytes: usize,
}

impl Default for RawQueue {
    fn default() -> Self {
        let d = QueueLimits::default();
        Self {
            max_items: d.max_items,
            max_bytes: d.max_bytes,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct RawRetry {
    #[serde(with = "duration")]
    initial: Duration,
    #[serde(with = "duration")]
    max: Duration,
    /// `0s`: retry until shutdown.
    #[serde(with = "duration")]
    max_elapsed: Duration,
}

impl Default for RawRetry {
    fn default() -> Self {
        let d = RetryPolicy::default();
        Self {
            initial: d.initial,
            max: d.max,
            max_elapsed: d.max_elapsed.unwrap_or(Duration::ZERO),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct RawSpill {
    enabled: bool,
    max_bytes: u64,
}

impl Default for RawSpill {
    fn default() -> Self {
        Self {
            enabled: false,
            max_bytes: 256 << 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct RawRemoteWrite {
    url: String,
    #[serde(with = "duration")]
    interval: Duration,
    headers: BTreeMap<String, String>,
    bearer_token_file: Option<PathBuf>,
    bearer_token_env: Option<String>,
    #[serde(with = "duration")]
    timeout: Duration,
    retry: RawRetry,
    queue: RawQueue,
    external_labels: BTreeMap<String, String>,
    tls: Option<RawTls>,
}

impl Default for RawRemoteWrite {
    fn default() -> Self {
        Self {
            url: String::new(),
            interval: Duration::from_secs(15),
            headers: BTreeMap::new(),
            bearer_token_file: None,
            bearer_token_env: None,
            timeout: Duration::from_secs(10),
            retry: RawRetry::default(),
            queue: RawQueue {
                max_items: 100,
                max_bytes: 64 << 20,
            },
            external_labels: BTreeMap::new(),
            tls: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The validated section.

/// `export:` section, validated.
#[derive(Debug, Clone, Default)]
pub struct ExportConfig {
    /// `export.otlp`, when configured.
    pub otlp: Option<OtlpExportConfig>,
    /// `export.remote_write`, when configured: the remote writer's own settings.
    pub remote_write: Option<RemoteWriteSettings>,
    /// `export.file`, when configured.
    pub file: Option<FileExportConfig>,
}

/// `export.otlp`: the client's own settings and what runs around it.
#[derive(Debug, Clone)]
pub struct OtlpExportConfig {
    /// Endpoint, protocol, headers, token, timeout, compression, TLS.
    pub client: ClientSettings,
    /// Batches in flight at most per signal (without a spill).
    pub concurrency: usize,
    /// Batch limits.
    pub batch: BatchLimits,
    /// Bounds of each signal's queue.
    pub queue: QueueLimits,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Disk spill cap in bytes, when the spill is enabled.
    pub spill_max_bytes: Option<u64>,
    /// Forwarded signals.
    pub signals: Vec<Signal>,
    /// Whether the agent's own metrics are exported.
    pub self_metrics: bool,
}

/// `export.file`: OTLP JSON lines to a file.
#[derive(Debug, Clone, PartialEq)]
pub struct FileExportConfig {
    /// Where, how large, how many rotated files.
    pub sink: FileSinkConfig,
    /// Which signals go there.
    pub signals: Vec<Signal>,
    /// Envelopes queued at most before sources wait (logs) or are refused (receivers).
    pub queue_max_items: usize,
}

fn validate_headers(
    headers: &BTreeMap<String, String>,
    at: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (k, v) in headers {
        let path = format!("{at}.headers.{k}");
        let token = !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.!#$%&'*+^`|~".contains(&b));
        if !token {
            errors.push(ConfigError {
                path,
                message: "not a valid header name".into(),
            });
        } else if k.eq_ignore_ascii_case("authorization") {
            errors.push(ConfigError {
                path,
                message:
                    "secrets are not written in the file: use bearer_token_file or bearer_token_env"
                        .into(),
            });
        } else if v.bytes().any(|b| b < 0x20 && b != b'\t') {
            errors.push(ConfigError {
                path,
                message: "header values cannot hold control characters".into(),
            });
        } else {
            out.push((k.to_ascii_lowercase(), v.clone()));
        }
    }
    out
}

fn validate_retry(r: &RawRetry, at: &str, errors: &mut Vec<ConfigError>) -> RetryPolicy {
    if r.initial.is_zero() {
        errors.push(ConfigError {
            path: format!("{at}.retry.initial"),
            message: "must be greater than 0".into(),
        });
    }
    if r.max < r.initial {
        errors.push(ConfigError {
            path: format!("{at}.retry.max"),
            message: "must be at least retry.initial".into(),
        });
    }
    RetryPolicy {
        initial: r.initial,
        max: r.max,
        max_elapsed: (!r.max_elapsed.is_zero()).then_some(r.max_elapsed),
    }
}

fn validate_queue(q: &RawQueue, at: &str, errors: &mut Vec<ConfigError>) -> QueueLimits {
    if q.max_items == 0 {
        errors.push(ConfigError {
            path: format!("{at}.queue.max_items"),
            message: "must be at least 1".into(),
        });
    }
    if q.max_bytes < 1024 {
        errors.push(ConfigError {
            path: format!("{at}.queue.max_bytes"),
            message: "must be at least 1024".into(),
        });
    }
    QueueLimits {
        max_items: q.max_items,
        max_bytes: q.max_bytes,
    }
}

fn validate_url(url: &str, path: &str, errors: &mut Vec<ConfigError>) {
    if url.trim().is_empty() {
        errors.push(ConfigError {
            path: path.into(),
            message: "is required".into(),
        });
    } else if !(url.starts_with("http://") && url.len() > "http://".len()
        || url.starts_with("https://") && url.len() > "https://".len())
    {
        errors.push(ConfigError {
            path: path.into(),
            message: format!("{url:?} is not an http:// or https:// URL"),
        });
    }
}

/// Loads the TLS settings of an exporter whose URL is `url` (files relative to the config).
/// `https://` without a `tls:` section uses the system roots.
fn validate_tls(
    raw: Option<&RawTls>,
    url: &str,
    at: &str,
    base: &Path,
    errors: &mut Vec<ConfigError>,
) -> Option<Arc<ClientTls>> {
    let https = url.trim().starts_with("https://");
    let Some(raw) = raw else {
        if !https {
            return None;
        }
        return match ClientTls::load(&ClientTlsFiles::default()) {
            Ok(t) => Some(Arc::new(t)),
            Err(e) => {
                errors.push(ConfigError {
                    path: format!("{at}.tls"),
                    message: e.to_string(),
                });
                None
            }
        };
    };
    if !https {
        errors.push(ConfigError {
            path: format!("{at}.tls"),
            message: "needs an https:// endpoint".into(),
        });
        return None;
    }
    let files = ClientTlsFiles {
        ca_file: raw.ca_file.as_ref().map(|p| base.join(p)),
        cert_file: raw.cert_file.as_ref().map(|p| base.join(p)),
        key_file: raw.key_file.as_ref().map(|p| base.join(p)),
        insecure_skip_verify: raw.insecure_skip_verify,
    };
    if files.insecure_skip_verify && files.ca_file.is_some() {
        errors.push(ConfigError {
            path: format!("{at}.tls.insecure_skip_verify"),
            message: "ca_file is unused when verification is skipped: set one or the other".into(),
        });
    }
    match ClientTls::load(&files) {
        Ok(t) => Some(Arc::new(t)),
        Err(e) => {
            errors.push(ConfigError {
                path: format!("{at}.tls"),
                message: e.to_string(),
            });
            None
        }
    }
}

/// Validates the `export:` section, adding every problem to `errors`.
pub fn validate(
    raw: RawExport,
    base: &Path,
    env: &dyn Env,
    errors: &mut Vec<ConfigError>,
) -> ExportConfig {
    let otlp = raw.otlp.map(|o| {
        let at = "export.otlp";
        validate_url(&o.endpoint, "export.otlp.endpoint", errors);
        let tls = validate_tls(o.tls.as_ref(), &o.endpoint, at, base, errors);
        let protocol = match o.protocol.as_str() {
            "grpc" => Protocol::Grpc,
            "http" | "http/protobuf" => Protocol::Http,
            other => {
                errors.push(ConfigError {
                    path: "export.otlp.protocol".into(),
                    message: format!("{other:?}: expected grpc or http"),
                });
                Protocol::Grpc
            }
        };
        let compression = match o.compression.as_str() {
            "gzip" => match o.compression_level {
                None => Compression::Gzip(Compression::GZIP_DEFAULT_LEVEL),
                Some(l @ 0..=9) => Compression::Gzip(l as u32),
                Some(l) => {
                    errors.push(ConfigError {
                        path: "export.otlp.compression_level".into(),
                        message: format!("{l}: gzip levels are 0 to 9"),
                    });
                    Compression::Gzip(Compression::GZIP_DEFAULT_LEVEL)
                }
            },
            "zstd" => {
                if protocol == Protocol::Http {
                    errors.push(ConfigError {
                        path: "export.otlp.compression".into(),
                        message: "zstd is for protocol: grpc (OTLP/HTTP specifies gzip)".into(),
                    });
                }
                match o.compression_level {
                    None => Compression::Zstd(Compression::ZSTD_DEFAULT_LEVEL),
                    Some(l @ 1..=22) => Compression::Zstd(l as i32),
                    Some(l) => {
                        errors.push(ConfigError {
                            path: "export.otlp.compression_level".into(),
                            message: format!("{l}: zstd levels are 1 to 22"),
                        });
                        Compression::Zstd(Compression::ZSTD_DEFAULT_LEVEL)
                    }
                }
            }
            "none" => {
                if o.compression_level.is_some() {
                    errors.push(ConfigError {
                        path: "export.otlp.compression_level".into(),
                        message: "needs compression: gzip or zstd".into(),
                    });
                }
                Compression::None
            }
            other => {
                errors.push(ConfigError {
                    path: "export.otlp.compression".into(),
                    message: format!("{other:?}: expected gzip, zstd or none"),
                });
                Compression::Gzip(Compression::GZIP_DEFAULT_LEVEL)
            }
        };
        if !(1..=64).contains(&o.concurrency) {
            errors.push(ConfigError {
                path: "export.otlp.concurrency".into(),
                message: "must be between 1 and 64".into(),
            });
        }
        if o.timeout.is_zero() {
            errors.push(ConfigError {
                path: "export.otlp.timeout".into(),
                message: "must be greater than 0".into(),
            });
        }
        if o.batch.max_items == 0 {
            errors.push(ConfigError {
                path: "export.otlp.batch.max_items".into(),
                message: "must be at least 1".into(),
            });
        }
        if o.batch.max_bytes < 1024 {
            errors.push(ConfigError {
                path: "export.otlp.batch.max_bytes".into(),
                message: "must be at least 1024".into(),
            });
        }
        if o.batch.linger > Duration::from_secs(60) {
            errors.push(ConfigError {
                path: "export.otlp.batch.linger".into(),
                message: "must be at most 1m".into(),
            });
        }
        if o.spill.enabled && o.spill.max_bytes < (1 << 20) {
            errors.push(ConfigError {
                path: "export.otlp.spill.max_bytes".into(),
                message: "must be at least 1048576 (1 MiB)".into(),
            });
        }
        let mut signals = Vec::new();
        if o.signals.is_empty() {
            errors.push(ConfigError {
                path: "export.otlp.signals".into(),
                message: "needs at least one of traces, metrics, logs".into(),
            });
        }
        for (i, s) in o.signals.iter().enumerate() {
            let path = format!("export.otlp.signals[{i}]");
            match Signal::ALL.iter().find(|x| x.as_str() == s) {
                Some(sig) if signals.contains(sig) => errors.push(ConfigError {
                    path,
                    message: format!("duplicate signal {s}"),
                }),
                Some(sig) => signals.push(*sig),
                None => errors.push(ConfigError {
                    path,
                    message: format!("{s:?}: expected traces, metrics or logs"),
                }),
            }
        }
        OtlpExportConfig {
            client: ClientSettings {
                endpoint: o.endpoint.trim().to_owned(),
                protocol,
                headers: validate_headers(&o.headers, at, errors),
                bearer_token: optional_bearer_token(
                    o.bearer_token_file.as_ref(),
                    o.bearer_token_env.as_ref(),
                    at,
                    base,
                    env,
                    errors,
                )
                .map(|s| s.expose().to_owned()),
                timeout: o.timeout,
                compression,
                tls,
            },
            concurrency: o.concurrency,
            batch: BatchLimits {
                max_items: o.batch.max_items,
                max_bytes: o.batch.max_bytes,
                linger: o.batch.linger,
            },
            queue: validate_queue(&o.queue, at, errors),
            retry: validate_retry(&o.retry, at, errors),
            spill_max_bytes: o.spill.enabled.then_some(o.spill.max_bytes),
            signals,
            self_metrics: o.self_metrics,
        }
    });
    let remote_write = raw.remote_write.map(|r| {
        let at = "export.remote_write";
        validate_url(&r.url, "export.remote_write.url", errors);
        let tls = validate_tls(r.tls.as_ref(), &r.url, at, base, errors);
        if r.interval < Duration::from_secs(1) {
            errors.push(ConfigError {
                path: "export.remote_write.interval".into(),
                message: "must be at least 1s".into(),
            });
        }
        if r.timeout.is_zero() {
            errors.push(ConfigError {
                path: "export.remote_write.timeout".into(),
                message: "must be greater than 0".into(),
            });
        }
        let mut external_labels = Vec::new();
        for (k, v) in &r.external_labels {
            let valid = k
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !k.starts_with("__");
            if valid {
                external_labels.push((k.clone(), v.clone()));
            } else {
                errors.push(ConfigError {
                    path: format!("export.remote_write.external_labels.{k}"),
                    message: "not a valid Prometheus label name (or reserved: __*)".into(),
                });
            }
        }
        let queue = validate_queue(&r.queue, at, errors);
        RemoteWriteSettings {
            url: r.url.trim().to_owned(),
            interval: r.interval,
            headers: validate_headers(&r.headers, at, errors),
            bearer_token: optional_bearer_token(
                r.bearer_token_file.as_ref(),
                r.bearer_token_env.as_ref(),
                at,
                base,
                env,
                errors,
            )
            .map(|s| s.expose().to_owned()),
            timeout: r.timeout,
            retry: validate_retry(&r.retry, at, errors),
            max_requests: queue.max_items,
            max_bytes: queue.max_bytes,
            external_labels,
            tls,
        }
    });
    let file = raw.file.and_then(|f| validate_file_export(f, errors));
    ExportConfig {
        otlp,
        remote_write,
        file,
    }
}

fn validate_file_export(
    f: RawFileExport,
    errors: &mut Vec<ConfigError>,
) -> Option<FileExportConfig> {
    let mut ok = true;
    let mut signals = Vec::new();
    for (i, name) in f.signals.iter().enumerate() {
        match Signal::ALL.iter().find(|s| s.as_str() == name) {
            Some(s) if !signals.contains(s) => signals.push(*s),
            Some(_) => {}
            None => {
                ok = false;
                errors.push(ConfigError::new(
                    format!("export.file.signals[{i}]"),
                    format!("`{name}` is not a signal (traces, metrics, logs)"),
                ));
            }
        }
    }
    for (what, zero) in [
        ("export.file.max_bytes", f.max_bytes == 0),
        ("export.file.queue_max_items", f.queue_max_items == 0),
    ] {
        if zero {
            ok = false;
            errors.push(ConfigError::new(what, "must be greater than 0"));
        }
    }
    ok.then_some(FileExportConfig {
        sink: FileSinkConfig {
            path: f.path,
            max_bytes: f.max_bytes,
            max_files: f.max_files,
        },
        signals,
        queue_max_items: f.queue_max_items,
    })
}

// ---------------------------------------------------------------------------------------------
// Runtime.

/// Why the exporters could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The OTLP client could not be built.
    #[error("export.otlp: {0}")]
    Client(#[from] sidelight_collector::export::otlp::ClientError),
    /// A disk spill could not be opened.
    #[error("export.otlp.spill: {0}")]
    Spill(#[from] sidelight_collector::export::spill::SpillError),
}

type ResultLabel = [(&'static str, &'static str); 1];

struct Built {
    exporters: Vec<SignalExporter>,
    otlp: Option<OtlpExportConfig>,
    remote_write: Option<RemoteWriteSettings>,
}

/// The exporters of a running agent.
pub struct Exports {
    intake: Intake,
    queues: Vec<Arc<Queue>>,
    shutdown: Shutdown,
    stats: ExportStats,
    queue_stats: QueueStats,
    rounds: Family<ResultLabel, Counter>,
    built: Mutex<Option<Built>>,
}

impl std::fmt::Debug for Exports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exports")
            .field("queues", &self.queues.len())
            .finish_non_exhaustive()
    }
}

impl Exports {
    /// Build phase: queues, the intake routing to them, clients and spills (opened and scanned),
    /// and every self-metric registered. Spawns nothing.
    pub fn build(
        config: &ExportConfig,
        store: &Path,
        registry: &mut Registry,
    ) -> Result<Exports, ExportError> {
        let stats = ExportStats::default();
        let queue_stats = QueueStats::default();
        stats.register(registry);
        queue_stats.register(registry);
        let rounds: Family<ResultLabel, Counter> = Family::default();
        registry.register(
            "sidelight_self_telemetry_rounds",
            "Rounds of the agent's own metrics handed to the OTLP metrics queue, by result (queued, refused)",
            rounds.clone(),
        );
        let mut intake = Intake::discard();
        let mut queues = Vec::new();
        let mut exporters = Vec::new();
        if let Some(o) = &config.otlp {
            let client = Arc::new(OtlpClient::new(&o.client)?);
            for &signal in &o.signals {
                let queue = Arc::new(Queue::new(
                    &format!("otlp_{signal}"),
                    o.queue,
                    queue_stats.clone(),
                ));
                let spill = match o.spill_max_bytes {
                    None => None,
                    Some(max) => {
                        let dir = store.join("spill").join(format!("otlp-{signal}"));
                        let (spill, report) = Spill::open(&dir, max)?;
                        let labels = [("exporter", "otlp"), ("signal", signal.as_str())];
                        if report.corrupt_segments > 0 {
                            stats
                                .spill_corrupt
                                .get_or_create(&labels)
                                .inc_by(report.corrupt_segments as u64);
                        }
                        if report.records > 0 {
                            tracing::info!(
                                signal = signal.as_str(),
                                records = report.records,
                                bytes = spill.bytes(),
                                "replaying the OTLP spill left by the previous run"
                            );
                        }
                        Some(Arc::new(Mutex::new(spill)))
                    }
                };
                intake = intake.with(signal, queue.clone());
                queues.push(queue.clone());
                exporters.push(SignalExporter {
                    signal,
                    queue,
                    client: client.clone(),
                    batch: o.batch,
                    retry: o.retry,
                    spill,
                    concurrency: o.concurrency,
                    stats: stats.clone(),
                });
            }
        }
        Ok(Exports {
            intake,
            queues,
            shutdown: Shutdown::default(),
            stats,
            queue_stats,
            rounds,
            built: Mutex::new(Some(Built {
                exporters,
                otlp: config.otlp.clone(),
                remote_write: config.remote_write.clone(),
            })),
        })
    }

    /// The queue self-metrics (registered by [`Exports::build`]): other sinks' queues share them.
    pub fn queue_stats(&self) -> QueueStats {
        self.queue_stats.clone()
    }

    /// Where sources hand OTLP payloads: `offer` for receivers, `deliver` for the log tailer.
    pub fn intake(&self) -> Intake {
        self.intake.clone()
    }

    /// Run phase: spawns the consumers, the own-telemetry loop (every `interval`) and the remote
    /// writer on `tracker`. Call once.
    pub fn spawn(&self, tracker: &TaskTracker, registry: Arc<Registry>, interval: Duration) {
        let Some(built) = self.built.lock().take() else {
            return;
        };
        for e in built.exporters {
            tracker.spawn(e.run(self.shutdown.clone()));
        }
        if let Some(o) = &built.otlp {
            tracing::info!(endpoint = %o.client.endpoint, protocol = ?o.client.protocol,
                signals = ?o.signals.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                spill = o.spill_max_bytes.is_some(), "OTLP export started");
            if o.self_metrics
                && let Some(queue) = self.intake.queues(Signal::Metrics).first().cloned()
            {
                tracker.spawn(self_telemetry(
                    queue,
                    registry.clone(),
                    interval,
                    self.rounds.clone(),
                    self.shutdown.clone(),
                ));
            }
        }
        if let Some(r) = built.remote_write {
            tracing::info!(url = %r.url, interval = %humantime::format_duration(r.interval), "remote write started");
            tracker.spawn(remote_write::run(
                r,
                registry,
                self.stats.clone(),
                self.queue_stats.clone(),
                self.shutdown.clone(),
            ));
        }
    }

    /// Starts the shutdown: closes the queues (consumers drain them) and abandons whatever is
    /// still in flight after `flush` (spilled, or left un-acknowledged and counted).
    pub fn stop(&self, flush: Duration) {
        for q in &self.queues {
            q.close();
        }
        self.shutdown.closing.cancel();
        let abandon = self.shutdown.abandon.clone();
        tokio::spawn(async move {
            tokio::time::sleep(flush).await;
            abandon.cancel();
        });
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The resource of the agent's own telemetry.
fn own_resource() -> Vec<telemetry::KeyValue> {
    let host = hostname();
    let instance = format!("{host}-{}-{:016x}", std::process::id(), instance_nonce());
    vec![
        telemetry::attr("service.name", "sidelight"),
        telemetry::attr("service.version", env!("CARGO_PKG_VERSION")),
        telemetry::attr("host.name", &host),
        telemetry::attr("service.instance.id", &instance),
    ]
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn instance_nonce() -> u64 {
    // Start time in nanoseconds mixed with the pid: unique per run without a random source.
    let t = unix_nanos(SystemTime::now());
    t ^ (u64::from(std::process::id()) << 32).rotate_left(17)
}

/// Every `interval`, encodes the registry and hands it to the OTLP metrics queue.
async fn self_telemetry(
    queue: Arc<Queue>,
    registry: Arc<Registry>,
    interval: Duration,
    rounds: Family<ResultLabel, Counter>,
    shutdown: Shutdown,
) {
    let resource = own_resource();
    let start = unix_nanos(SystemTime::now());
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick fires at once: wait one interval so the first round has collected data.
    ticker.tick().await;
    let mut warned = false;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.closing.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let reg = registry.clone();
        let snapshot = match tokio::task::spawn_blocking(move || model::snapshot(&reg)).await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the agent's registry for OTLP export");
                continue;
            }
            Err(_) => continue,
        };
        let req = telemetry::request(&snapshot, &resource, start, unix_nanos(SystemTime::now()));
        match queue.try_push(Envelope::new(Payload::Metrics(req), Receipt::untracked())) {
            Ok(()) => {
                rounds.get_or_create(&[("result", "queued")]).inc();
            }
            Err(PushError::Full(_)) => {
                rounds.get_or_create(&[("result", "refused")]).inc();

                if !warned {
                    warned = true;
                    tracing::warn!(
                        "the OTLP metrics queue is full: this round of the agent's own metrics is skipped (counted in sidelight_self_telemetry_rounds_total{{result=\"refused\"}})"
                    );
                }
            }
            Err(PushError::Closed(_)) => break,
        }
    }
    tracing::info!(
        queued = rounds.get_or_create(&[("result", "queued")]).get(),
        "own-telemetry export stopped"
    );
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crate::config::load_str;

    fn load(text: &str) -> Result<crate::config::Config, crate::config::ConfigErrors> {
        let env: HashMap<String, String> = [("OTLP_TOKEN".to_owned(), "s3cret".to_owned())]
            .into_iter()
            .collect();
        load_str(text, "t.yaml", std::path::Path::new("."), &env)
    }

    #[test]
    fn absent_means_nothing_exported() {
        let c = load("").expect("valid");
        assert!(c.export.otlp.is_none() && c.export.remote_write.is_none());
    }

    #[test]
    fn full_section() {
        let c = load(
            "export:\n  otlp:\n    endpoint: http://collector:4317\n    protocol: http\n    headers: { X-Tenant: a }\n    bearer_token_env: OTLP_TOKEN\n    timeout: 5s\n    compression: none\n    batch: { max_items: 100, max_bytes: 65536, linger: 50ms }\n    queue: { max_items: 10, max_bytes: 1048576 }\n    retry: { initial: 100ms, max: 2s, max_elapsed: 0s }\n    spill: { enabled: true, max_bytes: 2097152 }\n    signals: [traces, logs]\n  remote_write:\n    url: http://prom:9090/api/v1/write\n    interval: 5s\n    external_labels: { instance: vm-1 }\n",
        )
        .expect("valid");
        let o = c.export.otlp.as_ref().expect("otlp");
        assert_eq!(o.client.protocol, super::Protocol::Http);
        assert_eq!(
            o.client.headers,
            vec![("x-tenant".to_owned(), "a".to_owned())]
        );
        assert_eq!(o.client.bearer_token.as_deref(), Some("s3cret"));
        assert_eq!(o.retry.max_elapsed, None, "0s: until shutdown");
        assert_eq!(o.spill_max_bytes, Some(2 << 20));
        assert_eq!(
            o.signals,
            [
                sidelight_collector::pipeline::Signal::Traces,
                sidelight_collector::pipeline::Signal::Logs
            ]
        );
        assert_eq!(o.batch.max_items, 100);
        assert!(!format!("{c:?}").contains("s3cret"));
        let r = c.export.remote_write.as_ref().expect("rw");
        assert_eq!(r.interval, std::time::Duration::from_secs(5));
        assert_eq!(r.external_labels, vec![("instance".into(), "vm-1".into())]);
    }

    #[test]
    fn every_error_with_its_path() {
        let e = load(
            "export:\n  otlp:\n    endpoint: ftp://x:4317\n    protocol: thrift\n    compression: lz4\n    headers: { Authorization: Bearer x }\n    batch: { max_items: 0 }\n    retry: { initial: 0s }\n    spill: { enabled: true, max_bytes: 10 }\n    signals: [traces, traces, profiles]\n    colour: red\n  remote_write:\n    interval: 100ms\n    external_labels: { __bad: x }\n    bearer_token_file: /nonexistent/token\n",
        )
        .expect_err("invalid");
        let paths: Vec<&str> = e.errors.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "export.otlp.endpoint",
            "export.otlp.protocol",
            "export.otlp.compression",
            "export.otlp.headers.Authorization",
            "export.otlp.batch.max_items",
            "export.otlp.retry.initial",
            "export.otlp.spill.max_bytes",
            "export.otlp.signals[1]",
            "export.otlp.signals[2]",
            "export.otlp.colour",
            "export.remote_write.url",
            "export.remote_write.interval",
            "export.remote_write.external_labels.__bad",
            "export.remote_write.bearer_token_file",
        ] {
            assert!(paths.contains(&want), "missing {want} in {paths:?}");
        }
    }

    #[test]
    fn compression_levels_and_tls_are_checked() {
        use super::Compression;
        let c = load("export:\n  otlp: { endpoint: http://c:4317 }\n").expect("valid");
        let o = c.export.otlp.as_ref().expect("otlp");
        assert_eq!(
            o.client.compression,
            Compression::Gzip(1),
            "gzip level 1 by default"
        );
        assert_eq!(o.concurrency, 4);
        let c = load("export:\n  otlp: { endpoint: http://c:4317, compression: zstd, compression_level: 3 }\n")
            .expect("valid");
        assert_eq!(
            c.export.otlp.as_ref().expect("otlp").client.compression,
            Compression::Zstd(3)
        );
        let e = load(
            "export:\n  otlp: { endpoint: http://c:4318, protocol: http, compression: zstd, compression_level: 30, tls: { ca_file: ca.pem }, concurrency: 0 }\n  remote_write: { url: https://p/api/v1/write, tls: { ca_file: /nonexistent/ca.pem } }\n",
        )
        .expect_err("invalid");
        let paths: Vec<&str> = e.errors.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "export.otlp.compression",
            "export.otlp.compression_level",
            "export.otlp.tls",
            "export.otlp.concurrency",
            "export.remote_write.tls",
        ] {
            assert!(paths.contains(&want), "missing {want} in {paths:?}");
        }
        assert!(format!("{e}").contains("nonexistent/ca.pem"), "{e}");
    }
}

//! The configuration: one YAML file in the shape of DESIGN §3, with `${VAR}` substitution,
//! secrets from `*_file` / `*_env` keys, unknown keys rejected, and every error reported at once
//! with its path (`processes[1].match.cmdline: ...`).
//!
//! Loading is pure apart from reading the file and the secret files it names: nothing is bound
//! or started here, so `sidelight check-config` and SIGHUP reloads use exactly this code.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;
use sidelight_collector::filesink::FileSinkConfig;
use sidelight_collector::host::{
    DEFAULT_EXCLUDE_FSTYPES, DEFAULT_EXCLUDE_MOUNTPOINTS, HostSettings,
};
use sidelight_collector::logs::LogSourceConfig;
use sidelight_collector::pipeline::Signal;
use sidelight_collector::process::{MAX_TARGETS, TargetSpec};

pub use crate::export::ExportConfig;
use crate::export::RawExport;

/// The configuration the agent runs on when no file is given.
pub const EMBEDDED_DEFAULTS: &str = include_str!("defaults.yaml");

/// The target label of the agent's own process.
pub const SELF_TARGET: &str = "sidelight";

/// One problem in a configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path to the key (`http.listen`, `processes[0].match`), or `line N` for text errors.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in one configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    /// Where the configuration came from.
    pub source_name: String,
    /// The problems, in document order where known.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "{} has {n} error{}:",
            self.source_name,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// Where `${VAR}` values come from; tests pass a map instead of mutating the process environment.
pub trait Env {
    /// The variable's value, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for std::collections::HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// A secret value: never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub(crate) String);

impl Secret {
    /// The secret itself; call only where it is used.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A secret read by a section's own validation (`alerting::config`).
    pub(crate) fn new(s: String) -> Self {
        Self(s)
    }

    /// A secret from a literal, for tests.
    #[cfg(test)]
    pub(crate) fn for_tests(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

// ---------------------------------------------------------------------------------------------
// The file's shape. Structs take no `deny_unknown_fields`: unknown keys are collected with their
// paths by `serde_ignored`, so that all of them are reported at once rather than the first.

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
struct RawConfig {
    agent: RawAgent,
    http: RawHttp,
    host: RawHost,
    processes: Vec<RawProcess>,
    store: RawStore,
    dora: RawDora,
    logs: Vec<LogSourceConfig>,
    export: RawExport,
    /// Present only when the file has an `otlp:` section (the embedded defaults do).
    otlp: Option<RawOtlp>,
    // Alerting (issue 6): shapes and validation live in `alerting::config`.
    alerts: Option<crate::alerting::config::RawAlerts>,
    notifiers: Option<std::collections::BTreeMap<String, crate::alerting::config::RawNotifier>>,
}

/// `export.file` (the OTLP JSON file exporter; the rest of `export:` is in `export.rs`).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RawFileExport {
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
    vec!["traces".into(), "metrics".into(), "logs".into()]
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
struct RawAgent {
    log_level: String,
    #[serde(with = "duration")]
    shutdown_timeout: Duration,
    max_label_sets: usize,
}

impl Default for RawAgent {
    fn default() -> Self {
        Self {
            log_level: "info".into(),
            shutdown_timeout: Duration::from_secs(10),
            max_label_sets: 2000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct RawHttp {
    listen: String,
    max_body_bytes: usize,
    #[serde(with = "duration")]
    request_timeout: Duration,
    max_connections: usize,
    auth: RawAuth,
}

impl Default for RawHttp {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
            max_body_bytes: 1 << 20,
            request_timeout: Duration::from_secs(30),
            max_connections: 256,
            auth: RawAuth::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
struct RawAuth {
    bearer_token_file: Option<PathBuf>,
    bearer_token_env: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct RawHost {
    enabled: bool,
    #[serde(with = "duration")]
    interval: Duration,
    procfs: PathBuf,
    filesystem: RawFilesystem,
}

impl Default for RawHost {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(15),
            procfs: PathBuf::from("/proc"),
            filesystem: RawFilesystem::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct RawFilesystem {
    exclude_fstypes: String,
    exclude_mountpoints: String,
}

impl Default for RawFilesystem {
    fn default() -> Self {
        Self {
            exclude_fstypes: DEFAULT_EXCLUDE_FSTYPES.into(),
            exclude_mountpoints: DEFAULT_EXCLUDE_MOUNTPOINTS.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct RawProcess {
    target: String,
    #[serde(rename = "match")]
    matcher: RawMatch,
    #[serde(default = "yes")]
    include_children: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
struct RawMatch {
    name: Option<String>,
    cmdline: Option<String>,
    pidfile: Option<PathBuf>,
    cgroup: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct RawStore {
    path: PathBuf,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            path: PathBuf::from("./sidelight-data"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct RawDora {
    enabled: bool,
    environment: String,
    tiers: String,
    #[serde(with = "duration")]
    retention: Duration,
    windows: Vec<String>,
    webhooks: RawWebhooks,
    alertmanager: RawAlertmanager,
    /// `dora.regression`, validated in `detector.rs`.
    regression: crate::detector::RawRegression,
}

impl Default for RawDora {
    fn default() -> Self {
        Self {
            enabled: false,
            environment: "production".into(),
            tiers: "dora-2023".into(),
            retention: Duration::from_secs(400 * 86_400),
            windows: ["1d", "7d", "30d", "90d"].map(String::from).to_vec(),
            webhooks: RawWebhooks::default(),
            alertmanager: RawAlertmanager::default(),
            regression: crate::detector::RawRegression::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
struct RawWebhooks {
    github: Option<RawGithubHook>,
    gitlab: Option<RawGitlabHook>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
struct RawGithubHook {
    secret_file: Option<PathBuf>,
    secret_env: Option<String>,
    /// Record a deployment for a successful `workflow_run` on the default branch.
    deploy_on_workflow_run: bool,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
struct RawGitlabHook {
    token_file: Option<PathBuf>,
    token_env: Option<String>,
    /// Record a deployment for a successful pipeline on the default branch.
    deploy_on_pipeline: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct RawAlertmanager {
    severities: Vec<String>,
}

impl Default for RawAlertmanager {
    fn default() -> Self {
        Self {
            severities: vec!["critical".into()],
        }
    }
}

/// `otlp:` — the receivers and span metrics.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct RawOtlp {
    enabled: bool,
    /// `null` turns the gRPC receiver off.
    grpc: Option<String>,
    /// `null` turns the HTTP receiver off.
    http: Option<String>,
    max_request_bytes: usize,
    #[serde(with = "duration")]
    retry_after: Duration,
    auth: Option<RawAuth>,
    tls: Option<RawTls>,
    max_connections: usize,
    spanmetrics: RawSpanMetrics,
    redaction: sidelight_collector::logs::RedactionConfig,
}

impl Default for RawOtlp {
    fn default() -> Self {
        Self {
            enabled: true,
            grpc: Some(sidelight_collector::otlp::DEFAULT_GRPC.to_string()),
            http: Some(sidelight_collector::otlp::DEFAULT_HTTP.to_string()),
            max_request_bytes: sidelight_collector::otlp::DEFAULT_MAX_REQUEST_BYTES,
            retry_after: Duration::from_secs(1),
            auth: None,
            tls: None,
            max_connections: sidelight_collector::otlp::serve::DEFAULT_MAX_CONNECTIONS,
            spanmetrics: RawSpanMetrics::default(),
            redaction: Default::default(),
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
    buckets: Option<Vec<RawBucket>>,
    max_label_sets: usize,
    kinds: Vec<String>,
}

impl Default for RawSpanMetrics {
    fn default() -> Self {
        Self {
            enabled: true,
            // `http.route` by default: the shipped service dashboard groups by it; a span
            // without it gives a series without the label.
            dimensions: vec![RawDimension::Name("http.route".into())],
            buckets: None,
            max_label_sets: 1000,
            kinds: vec!["server".into(), "consumer".into()],
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

// ---------------------------------------------------------------------------------------------
// The validated configuration the agent runs on.

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from (a path, or "embedded defaults").
    pub source_name: String,
    /// The agent's own behaviour.
    pub agent: AgentConfig,
    /// The HTTP surface.
    pub http: HttpConfig,
    /// Host metrics.
    pub host: HostConfig,
    /// Watched process targets (the agent's own process is added by the runtime).
    pub processes: Vec<TargetSpec>,
    /// The state directory.
    pub store: StoreConfig,
    /// DORA metrics, their store and their webhooks.
    pub dora: DoraConfig,
    /// Tailed log sources.
    pub logs: Vec<LogSourceConfig>,
    /// The file exporter, if configured.
    pub export_file: Option<FileExportConfig>,
    /// Exporters (OTLP, remote write); `None` parts export nothing.
    pub export: ExportConfig,
    /// The OTLP receivers and span metrics.
    pub otlp: OtlpConfig,
    /// Alert rules and notifiers (`alerts:` / `notifiers:`), when either section is given.
    pub alerting: Option<crate::alerting::config::AlertingConfig>,
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

/// `otlp:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpConfig {
    /// Whether the receivers run (false when the file has no `otlp:` section).
    pub enabled: bool,
    /// Addresses, limits, tokens, TLS.
    pub receivers: sidelight_collector::otlp::OtlpSettings,
    /// Span metrics, when `otlp.spanmetrics.enabled`.
    pub spanmetrics: Option<sidelight_collector::spanmetrics::SpanMetricsSettings>,
}

/// `agent:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// An `EnvFilter` directive (`info`, `sidelight=debug,warn`); `SIDELIGHT_LOG` overrides it.
    pub log_level: String,
    /// How long a graceful shutdown may take before it is cut short.
    pub shutdown_timeout: Duration,
    /// Cap on distinct label sets per metric family.
    pub max_label_sets: usize,
}

/// `http:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Largest request body accepted (after decompression), in bytes.
    pub max_body_bytes: usize,
    /// Longest time one request may take.
    pub request_timeout: Duration,
    /// Open connections at most (more are closed on accept and counted).
    pub max_connections: usize,
    /// Accepted bearer tokens for non-probe endpoints; empty means no authentication.
    pub bearer_tokens: Vec<Secret>,
}

/// `host:` section.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Whether host metrics are collected.
    pub enabled: bool,
    /// Collection interval of host and process metrics.
    pub interval: Duration,
    /// procfs root and filesystem filters.
    pub settings: HostSettings,
}

/// `store:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// The state directory.
    pub path: PathBuf,
}

/// `dora:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct DoraConfig {
    /// Whether this agent is the DORA hub (store, API, webhooks, metrics).
    pub enabled: bool,
    /// The environment DORA metrics are computed for.
    pub environment: String,
    /// The tier set name (`dora-2023`).
    pub tiers: String,
    /// The report year of `tiers`.
    pub tier_year: u16,
    /// Events older than this are deleted.
    pub retention: Duration,
    /// The windows of the windowed gauges.
    pub windows: Vec<crate::dora::Window>,
    /// GitHub webhook settings, when configured.
    pub github: Option<GithubHookConfig>,
    /// GitLab webhook settings, when configured.
    pub gitlab: Option<GitlabHookConfig>,
    /// Alertmanager alerts of these severities open and resolve incidents.
    pub alertmanager_severities: Vec<String>,
    /// Change failures detected from span metrics (`dora.regression`).
    pub regression: crate::detector::RegressionSettings,
}

/// `dora.webhooks.github`.
#[derive(Debug, Clone, PartialEq)]
pub struct GithubHookConfig {
    /// The webhook secret (HMAC-SHA256 key).
    pub secret: Secret,
    /// Whether a successful `workflow_run` on the default branch records a deployment.
    pub deploy_on_workflow_run: bool,
}

/// `dora.webhooks.gitlab`.
#[derive(Debug, Clone, PartialEq)]
pub struct GitlabHookConfig {
    /// The expected `X-Gitlab-Token`.
    pub token: Secret,
    /// Whether a successful pipeline on the default branch records a deployment.
    pub deploy_on_pipeline: bool,
}

impl Config {
    /// The embedded defaults.
    pub fn embedded() -> Result<Config, ConfigErrors> {
        load_str(
            EMBEDDED_DEFAULTS,
            "embedded defaults",
            Path::new("."),
            &ProcessEnv,
        )
    }

    /// Loads and validates a file.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Config, ConfigErrors> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            source_name: name.clone(),
            errors: vec![ConfigError {
                path: "file".into(),
                message: format!("cannot read: {e}"),
            }],
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        load_str(&text, &name, base, env)
    }

    /// A one-line summary of what this configuration listens on and watches.
    pub fn summary(&self) -> String {
        let targets: Vec<&str> = self.processes.iter().map(|t| t.name.as_str()).collect();
        let logs: Vec<String> = self
            .logs
            .iter()
            .map(|l| format!("{} {}", l.source, l.include.join(" ")))
            .collect();
        format!(
            "http {} ({}), host metrics {} every {}, process targets [{}], logs [{}], store {}, {}",
            self.http.listen,
            if self.http.bearer_tokens.is_empty() {
                "no auth"
            } else {
                "bearer auth"
            },
            if self.host.enabled { "on" } else { "off" },
            humantime::format_duration(self.host.interval),
            targets.join(", "),
            logs.join(", "),
            self.store.path.display(),
            self.data_flow(),
        )
    }

    /// Where received and derived data goes: the OTLP receivers, span metrics, what happens to
    /// received metrics, logs and traces (served or counted on `/metrics`, forwarded or not),
    /// remote write, DORA and alerting — on or off, said out loud.
    fn data_flow(&self) -> String {
        let forwarded = |signal: Signal| {
            let otlp = self
                .export
                .otlp
                .as_ref()
                .filter(|o| o.signals.contains(&signal))
                .map(|o| o.endpoint.clone());
            let file = self
                .export_file
                .as_ref()
                .filter(|f| f.signals.contains(&signal))
                .map(|f| f.sink.path.display().to_string());
            match (otlp, file) {
                (None, None) => "not forwarded (no export)".to_owned(),
                (Some(o), None) => format!("forwarded to {o}"),
                (None, Some(f)) => format!("written to {f}"),
                (Some(o), Some(f)) => format!("forwarded to {o} and written to {f}"),
            }
        };
        let otlp = if self.otlp.enabled {
            let r = &self.otlp.receivers;
            let addr = |a: Option<std::net::SocketAddr>| a.map_or("off".into(), |a| a.to_string());
            format!(
                "otlp receivers grpc {} http {}, span metrics {}, received OTLP metrics: served on /metrics, {}, received OTLP logs: counted on /metrics, {}, received OTLP traces: {}",
                addr(r.grpc),
                addr(r.http),
                if self.otlp.spanmetrics.is_some() {
                    "on"
                } else {
                    "off"
                },
                forwarded(Signal::Metrics),
                forwarded(Signal::Logs),
                forwarded(Signal::Traces),
            )
        } else {
            "otlp receivers off".to_owned()
        };
        format!(
            "{otlp}, tailed logs {}, remote write {}, dora {}, alerting {}",
            forwarded(Signal::Logs),
            self.export
                .remote_write
                .as_ref()
                .map_or("off".to_owned(), |r| format!("to {}", r.url)),
            if self.dora.enabled { "on" } else { "off" },
            if self.alerting.is_some() { "on" } else { "off" },
        )
    }
}

/// Loads a configuration from text. `base` resolves relative secret-file paths.
pub fn load_str(
    text: &str,
    source_name: &str,
    base: &Path,
    env: &dyn Env,
) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let text = substitute_env(text, env, &mut errors);
    let raw = match serde_yaml_ng::from_str::<Value>(&text) {
        Ok(Value::Null) => RawConfig::default(),
        Ok(Value::Mapping(map)) => raw_from_mapping(map, &mut errors),
        Ok(_) => {
            errors.push(ConfigError {
                path: "(top)".into(),
                message: "the configuration must be a mapping".into(),
            });
            RawConfig::default()
        }
        Err(e) => {
            let path = e
                .location()
                .map(|l| format!("line {}", l.line()))
                .unwrap_or_else(|| "(yaml)".into());
            errors.push(ConfigError {
                path,
                message: e.to_string(),
            });
            RawConfig::default()
        }
    };
    let config = validate(raw, source_name, base, env, &mut errors);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors {
            source_name: source_name.into(),
            errors,
        })
    }
}

/// Replaces `${VAR}` and `${VAR:-default}`; `$$` is a literal `$`.
fn substitute_env(text: &str, env: &dyn Env, errors: &mut Vec<ConfigError>) -> String {
    let mut out = String::with_capacity(text.len());
    for (lineno, line) in text.split_inclusive('\n').enumerate() {
        let mut rest = line;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(stripped) = after.strip_prefix('$') {
                out.push('$');
                rest = stripped;
            } else if let Some(body) = after.strip_prefix('{') {
                let Some(end) = body.find('}') else {
                    errors.push(ConfigError {
                        path: format!("line {}", lineno + 1),
                        message: "unterminated ${...} reference".into(),
                    });
                    out.push_str(&rest[i..]);
                    rest = "";
                    break;
                };
                let expr = &body[..end];
                let (name, default) = match expr.split_once(":-") {
                    Some((n, d)) => (n, Some(d)),
                    None => (expr, None),
                };
                let valid =
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                match (valid, env.var(name), default) {
                    (false, _, _) => errors.push(ConfigError {
                        path: format!("line {}", lineno + 1),
                        message: format!("invalid variable name in ${{{expr}}}"),
                    }),
                    (true, Some(v), _) => out.push_str(&v),
                    (true, None, Some(d)) => out.push_str(d),
                    (true, None, None) => errors.push(ConfigError {
                        path: format!("line {}", lineno + 1),
                        message: format!("environment variable {name} is not set (use ${{{name}:-default}} for a default)"),
                    }),
                }
                rest = &body[end + 1..];
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
    }
    out
}

const SECTIONS: [&str; 11] = [
    "agent",
    "http",
    "host",
    "processes",
    "store",
    "dora",
    "logs",
    "export",
    "otlp",
    "alerts",
    "notifiers",
];

fn raw_from_mapping(map: serde_yaml_ng::Mapping, errors: &mut Vec<ConfigError>) -> RawConfig {
    let mut raw = RawConfig::default();
    for (key, value) in map {
        let Some(key) = key.as_str().map(str::to_owned) else {
            errors.push(ConfigError {
                path: format!("{key:?}"),
                message: "section names must be strings".into(),
            });
            continue;
        };
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "agent" => raw.agent = section(value, &key, errors).unwrap_or_default(),
            "http" => raw.http = section(value, &key, errors).unwrap_or_default(),
            "host" => raw.host = section(value, &key, errors).unwrap_or_default(),
            "store" => raw.store = section(value, &key, errors).unwrap_or_default(),
            "dora" => raw.dora = section(value, &key, errors).unwrap_or_default(),
            "export" => raw.export = section(value, &key, errors).unwrap_or_default(),
            "alerts" => raw.alerts = Some(section(value, &key, errors).unwrap_or_default()),
            "notifiers" => raw.notifiers = Some(section(value, &key, errors).unwrap_or_default()),
            "logs" => match value {
                Value::Sequence(items) => {
                    raw.logs = items
                        .into_iter()
                        .enumerate()
                        .filter_map(|(i, item)| section(item, &format!("logs[{i}]"), errors))
                        .collect();
                }
                other => errors.push(ConfigError {
                    path: key,
                    message: format!("expected a list of log sources, found {}", kind_of(&other)),
                }),
            },
            "otlp" => raw.otlp = Some(section(value, &key, errors).unwrap_or_default()),
            "processes" => match value {
                Value::Sequence(items) => {
                    raw.processes = items
                        .into_iter()
                        .enumerate()
                        .filter_map(|(i, item)| section(item, &format!("processes[{i}]"), errors))
                        .collect();
                }
                other => errors.push(ConfigError {
                    path: key,
                    message: format!("expected a list of targets, found {}", kind_of(&other)),
                }),
            },
            _ => errors.push(ConfigError {
                path: key,
                message: format!("unknown section (known: {})", SECTIONS.join(", ")),
            }),
        }
    }
    raw
}

/// Deserializes one section, recording unknown keys and the first type error with their paths.
fn section<T: DeserializeOwned>(
    value: Value,
    prefix: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    let mut unknown = Vec::new();
    let mut callback =
        |path: serde_ignored::Path<'_>| unknown.push(join_path(prefix, &ignored_path(&path)));
    let de = serde_ignored::Deserializer::new(value, &mut callback);
    let result: Result<T, _> = serde_path_to_error::deserialize(de);
    let out = match result {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            let path = if inner == "." {
                prefix.to_owned()
            } else {
                join_path(prefix, &inner)
            };
            errors.push(ConfigError {
                path,
                message: e.into_inner().to_string(),
            });
            None
        }
    };
    errors.extend(unknown.into_iter().map(|path| ConfigError {
        path,
        message: "unknown key".into(),
    }));
    out
}

fn ignored_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        P::Map { parent, key } => {
            let p = ignored_path(parent);
            if p.is_empty() {
                key.clone()
            } else {
                format!("{p}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            ignored_path(parent)
        }
    }
}

fn join_path(prefix: &str, inner: &str) -> String {
    if inner.is_empty() {
        prefix.to_owned()
    } else if inner.starts_with('[') {
        format!("{prefix}{inner}")
    } else {
        format!("{prefix}.{inner}")
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn validate(
    raw: RawConfig,
    source_name: &str,
    base: &Path,
    env: &dyn Env,
    errors: &mut Vec<ConfigError>,
) -> Config {
    let mut err = |path: &str, message: String| {
        errors.push(ConfigError {
            path: path.into(),
            message,
        })
    };

    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&raw.agent.log_level) {
        err(
            "agent.log_level",
            format!("not a log level or filter ({e})"),
        );
    }
    if raw.agent.shutdown_timeout.is_zero() {
        err("agent.shutdown_timeout", "must be greater than 0".into());
    }
    if raw.agent.max_label_sets == 0 {
        err("agent.max_label_sets", "must be at least 1".into());
    }

    let listen = match raw.http.listen.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            err(
                "http.listen",
                format!(
                    "{:?} is not an address like 127.0.0.1:9464",
                    raw.http.listen
                ),
            );
            SocketAddr::from(([127, 0, 0, 1], 9464))
        }
    };
    if raw.http.max_body_bytes < 1024 {
        err("http.max_body_bytes", "must be at least 1024".into());
    }
    if raw.http.request_timeout.is_zero() {
        err("http.request_timeout", "must be greater than 0".into());
    }
    if raw.http.max_connections == 0 || raw.http.max_connections > 65_536 {
        err("http.max_connections", "must be between 1 and 65536".into());
    }
    let mut bearer_tokens = Vec::new();
    match (
        &raw.http.auth.bearer_token_file,
        &raw.http.auth.bearer_token_env,
    ) {
        (Some(_), Some(_)) => {
            err(
                "http.auth",
                "give bearer_token_file or bearer_token_env, not both".into(),
            );
        }
        (Some(file), None) => {
            let path = base.join(file);
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    // One token per line, so a new token can be added before the old one is removed.
                    bearer_tokens = text
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(|l| Secret(l.into()))
                        .collect();
                    if bearer_tokens.is_empty() {
                        err(
                            "http.auth.bearer_token_file",
                            format!("{} holds no token", path.display()),
                        );
                    }
                }
                Err(e) => err(
                    "http.auth.bearer_token_file",
                    format!("cannot read {}: {e}", path.display()),
                ),
            }
        }
        (None, Some(var)) => match env.var(var) {
            Some(v) if !v.trim().is_empty() => {
                bearer_tokens = v
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(|t| Secret(t.into()))
                    .collect();
            }
            _ => err(
                "http.auth.bearer_token_env",
                format!("environment variable {var} is not set or empty"),
            ),
        },
        (None, None) => {}
    }

    if raw.host.interval < Duration::from_secs(1) {
        err("host.interval", "must be at least 1s".into());
    }
    let exclude_fstypes = compile(
        &raw.host.filesystem.exclude_fstypes,
        "host.filesystem.exclude_fstypes",
        errors,
    );
    let exclude_mountpoints = compile(
        &raw.host.filesystem.exclude_mountpoints,
        "host.filesystem.exclude_mountpoints",
        errors,
    );

    let mut processes = Vec::new();
    let mut names = std::collections::HashSet::new();
    if raw.processes.len() + 1 > MAX_TARGETS {
        errors.push(ConfigError {
            path: "processes".into(),
            message: format!(
                "at most {} targets (one is the agent itself)",
                MAX_TARGETS - 1
            ),
        });
    }
    for (i, p) in raw.processes.iter().enumerate() {
        let at = |k: &str| format!("processes[{i}].{k}");
        if p.target.trim().is_empty() {
            errors.push(ConfigError {
                path: at("target"),
                message: "must not be empty".into(),
            });
        } else if p.target == SELF_TARGET {
            errors.push(ConfigError {
                path: at("target"),
                message: format!("{SELF_TARGET:?} is reserved for the agent's own process"),
            });
        } else if !names.insert(p.target.clone()) {
            errors.push(ConfigError {
                path: at("target"),
                message: format!("duplicate target {:?}", p.target),
            });
        }
        let m = &p.matcher;
        if m.name.is_none() && m.cmdline.is_none() && m.pidfile.is_none() && m.cgroup.is_none() {
            errors.push(ConfigError {
                path: at("match"),
                message: "needs at least one of name, cmdline, pidfile, cgroup".into(),
            });
        }
        let cmdline = m
            .cmdline
            .as_deref()
            .and_then(|r| compile(r, &at("match.cmdline"), errors));
        let cgroup = m
            .cgroup
            .as_deref()
            .and_then(|r| compile(r, &at("match.cgroup"), errors));
        processes.push(TargetSpec {
            name: p.target.clone(),
            process_name: m.name.clone(),
            cmdline,
            pidfile: m.pidfile.as_ref().map(|f| base.join(f)),
            cgroup,
            pid: None,
            include_children: p.include_children,
        });
    }

    let dora = validate_dora(raw.dora, base, env, errors);
    let alerting = crate::alerting::config::validate(raw.alerts, raw.notifiers, base, env, errors);
    let logs = validate_logs(raw.logs, errors);
    let mut raw_export = raw.export;
    let export_file = raw_export
        .file
        .take()
        .and_then(|f| validate_file_export(f, errors));
    let export = crate::export::validate(raw_export, base, env, errors);
    let otlp = validate_otlp(raw.otlp, base, env, errors);

    // Only used when the pattern failed to compile, in which case the config is rejected anyway.
    let never = || Regex::new("$^").expect("a static regex compiles");
    Config {
        source_name: source_name.into(),
        agent: AgentConfig {
            log_level: raw.agent.log_level,
            shutdown_timeout: raw.agent.shutdown_timeout,
            max_label_sets: raw.agent.max_label_sets,
        },
        http: HttpConfig {
            listen,
            max_body_bytes: raw.http.max_body_bytes,
            request_timeout: raw.http.request_timeout,
            max_connections: raw.http.max_connections,
            bearer_tokens,
        },
        host: HostConfig {
            enabled: raw.host.enabled,
            interval: raw.host.interval,
            settings: HostSettings {
                procfs: raw.host.procfs,
                exclude_fstypes: exclude_fstypes.unwrap_or_else(never),
                exclude_mountpoints: exclude_mountpoints.unwrap_or_else(never),
            },
        },
        processes,
        store: StoreConfig {
            path: raw.store.path,
        },
        dora,
        logs,
        export_file,
        export,
        otlp,
        alerting,
    }
}

fn validate_logs(
    logs: Vec<LogSourceConfig>,
    errors: &mut Vec<ConfigError>,
) -> Vec<LogSourceConfig> {
    let mut seen = std::collections::HashSet::new();
    for (i, source) in logs.iter().enumerate() {
        if let Err(es) = source.validate() {
            errors.extend(es.into_iter().map(|e| ConfigError {
                path: format!("logs[{i}]"),
                message: e.to_string(),
            }));
        }
        if !seen.insert(source.source.as_str()) {
            errors.push(ConfigError {
                path: format!("logs[{i}].source"),
                message: format!(
                    "`{}` is used twice (the name keys the checkpoints; make each unique)",
                    source.source
                ),
            });
        }
        if source.source.contains(['/', '\\']) || source.source.starts_with('.') {
            errors.push(ConfigError {
                path: format!("logs[{i}].source"),
                message: "must not contain `/` or start with `.` (it names a checkpoint file)"
                    .into(),
            });
        }
    }
    logs
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
                errors.push(ConfigError {
                    path: format!("export.file.signals[{i}]"),
                    message: format!("`{name}` is not a signal (traces, metrics, logs)"),
                });
            }
        }
    }
    for (what, zero) in [
        ("export.file.max_bytes", f.max_bytes == 0),
        ("export.file.queue_max_items", f.queue_max_items == 0),
    ] {
        if zero {
            ok = false;
            errors.push(ConfigError {
                path: what.into(),
                message: "must be greater than 0".into(),
            });
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

/// Reads a secret from exactly one of a file (relative to `base`) or an environment variable.
pub(crate) fn read_secret(
    file: Option<&PathBuf>,
    var: Option<&String>,
    at: &str,
    keys: (&str, &str),
    base: &Path,
    env: &dyn Env,
    errors: &mut Vec<ConfigError>,
) -> Option<Secret> {
    let mut err = |path: String, message: String| errors.push(ConfigError { path, message });
    match (file, var) {
        (Some(_), Some(_)) => {
            err(
                at.into(),
                format!("give {} or {}, not both", keys.0, keys.1),
            );
            None
        }
        (None, None) => {
            err(at.into(), format!("needs {} or {}", keys.0, keys.1));
            None
        }
        (Some(file), None) => {
            let path = base.join(file);
            match std::fs::read_to_string(&path) {
                Ok(text) if !text.trim().is_empty() => Some(Secret(text.trim().to_owned())),
                Ok(_) => {
                    err(
                        format!("{at}.{}", keys.0),
                        format!("{} is empty", path.display()),
                    );
                    None
                }
                Err(e) => {
                    err(
                        format!("{at}.{}", keys.0),
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
            }
        }
        (None, Some(var)) => match env.var(var) {
            Some(v) if !v.trim().is_empty() => Some(Secret(v.trim().to_owned())),
            _ => {
                err(
                    format!("{at}.{}", keys.1),
                    format!("environment variable {var} is not set or empty"),
                );
                None
            }
        },
    }
}

fn validate_otlp(
    raw: Option<RawOtlp>,
    base: &Path,
    env: &dyn Env,
    errors: &mut Vec<ConfigError>,
) -> OtlpConfig {
    use sidelight_collector::otlp::{OtlpSettings, TlsFiles, Token};
    use sidelight_collector::spanmetrics::{self, Dimension, SpanMetricsSettings};
    let given = raw.is_some();
    let raw = raw.unwrap_or_default();
    let mut err = |path: String, message: String| errors.push(ConfigError { path, message });
    let mut addr = |key: &str, text: &Option<String>| -> Option<SocketAddr> {
        let text = text.as_deref()?.trim();
        match text.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                err(
                    format!("otlp.{key}"),
                    format!("{text:?} is not an address like 127.0.0.1:4317 (null turns it off)"),
                );
                None
            }
        }
    };
    let grpc = addr("grpc", &raw.grpc);
    let http = addr("http", &raw.http);

    let mut tokens = Vec::new();
    if let Some(auth) = &raw.auth {
        match (&auth.bearer_token_file, &auth.bearer_token_env) {
            (Some(_), Some(_)) => err(
                "otlp.auth".into(),
                "give bearer_token_file or bearer_token_env, not both".into(),
            ),
            (None, None) => err(
                "otlp.auth".into(),
                "needs bearer_token_file or bearer_token_env".into(),
            ),
            (Some(file), None) => {
                let path = base.join(file);
                match std::fs::read_to_string(&path) {
                    // One token per line, so a new token can be added before the old one goes.
                    Ok(text) => {
                        tokens = text
                            .lines()
                            .map(str::trim)
                            .filter(|l| !l.is_empty())
                            .map(Token::new)
                            .collect();
                        if tokens.is_empty() {
                            err(
                                "otlp.auth.bearer_token_file".into(),
                                format!("{} holds no token", path.display()),
                            );
                        }
                    }
                    Err(e) => err(
                        "otlp.auth.bearer_token_file".into(),
                        format!("cannot read {}: {e}", path.display()),
                    ),
                }
            }
            (None, Some(var)) => match env.var(var) {
                Some(v) if !v.trim().is_empty() => {
                    tokens = v
                        .split(',')
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                        .map(Token::new)
                        .collect();
                }
                _ => err(
                    "otlp.auth.bearer_token_env".into(),
                    format!("environment variable {var} is not set or empty"),
                ),
            },
        }
    }

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
        bearer_tokens: tokens,
        tls,
        redaction: raw.redaction.clone(),
        max_connections: raw.max_connections,
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
    let mut buckets = spanmetrics::DEFAULT_BUCKETS.to_vec();
    if let Some(raw_buckets) = &sm.buckets {
        buckets.clear();
        for (i, b) in raw_buckets.iter().enumerate() {
            match b {
                RawBucket::Seconds(s) => buckets.push(*s),
                RawBucket::Text(t) => match spanmetrics::parse_bucket(t) {
                    Ok(s) => buckets.push(s),
                    Err(m) => err(format!("otlp.spanmetrics.buckets[{i}]"), m),
                },
            }
        }
    }
    let mut kinds = Vec::new();
    for (i, k) in sm.kinds.iter().enumerate() {
        match spanmetrics::parse_kind(k) {
            Ok(kind) => kinds.push(kind),
            Err(m) => err(format!("otlp.spanmetrics.kinds[{i}]"), m),
        }
    }
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
    OtlpConfig {
        enabled: given && raw.enabled,
        receivers,
        spanmetrics: sm.enabled.then_some(settings),
    }
}

fn validate_dora(
    raw: RawDora,
    base: &Path,
    env: &dyn Env,
    errors: &mut Vec<ConfigError>,
) -> DoraConfig {
    let regression = crate::detector::validate(raw.regression, errors);
    let mut err = |path: &str, message: String| {
        errors.push(ConfigError {
            path: path.into(),
            message,
        })
    };
    if raw.environment.trim().is_empty() {
        err("dora.environment", "must not be empty".into());
    }
    let tier_year = match crate::dora::tiers::parse_tier_set(&raw.tiers) {
        Ok(year) => match crate::dora::TierTable::builtin().and_then(|t| t.for_year(year)) {
            Ok(_) => year,
            Err(e) => {
                err("dora.tiers", e.to_string());
                0
            }
        },
        Err(e) => {
            err("dora.tiers", e.to_string());
            0
        }
    };
    if raw.retention < Duration::from_secs(86_400) {
        err("dora.retention", "must be at least 1d".into());
    }
    let mut windows = Vec::new();
    if raw.windows.is_empty() {
        err("dora.windows", "needs at least one window".into());
    }
    for (i, w) in raw.windows.iter().enumerate() {
        match crate::dora::Window::parse(w.trim()) {
            Ok(w) if windows.contains(&w) => err(
                &format!("dora.windows[{i}]"),
                format!("duplicate window {w}"),
            ),
            Ok(w) if w.seconds() as u128 > raw.retention.as_secs() as u128 => err(
                &format!("dora.windows[{i}]"),
                format!("window {w} is longer than dora.retention"),
            ),
            Ok(w) => windows.push(w),
            Err(e) => err(&format!("dora.windows[{i}]"), e.to_string()),
        }
    }
    let mut severities = Vec::new();
    for (i, s) in raw.alertmanager.severities.iter().enumerate() {
        if s.trim().is_empty() {
            err(
                &format!("dora.alertmanager.severities[{i}]"),
                "must not be empty".into(),
            );
        } else {
            severities.push(s.trim().to_owned());
        }
    }
    let github = raw.webhooks.github.and_then(|g| {
        read_secret(
            g.secret_file.as_ref(),
            g.secret_env.as_ref(),
            "dora.webhooks.github",
            ("secret_file", "secret_env"),
            base,
            env,
            errors,
        )
        .map(|secret| GithubHookConfig {
            secret,
            deploy_on_workflow_run: g.deploy_on_workflow_run,
        })
    });
    let gitlab = raw.webhooks.gitlab.and_then(|g| {
        read_secret(
            g.token_file.as_ref(),
            g.token_env.as_ref(),
            "dora.webhooks.gitlab",
            ("token_file", "token_env"),
            base,
            env,
            errors,
        )
        .map(|token| GitlabHookConfig {
            token,
            deploy_on_pipeline: g.deploy_on_pipeline,
        })
    });
    DoraConfig {
        enabled: raw.enabled,
        environment: raw.environment,
        tiers: raw.tiers,
        tier_year,
        retention: raw.retention,
        windows,
        github,
        gitlab,
        alertmanager_severities: severities,
        regression,
    }
}

fn compile(pattern: &str, path: &str, errors: &mut Vec<ConfigError>) -> Option<Regex> {
    match Regex::new(pattern) {
        Ok(r) => Some(r),
        Err(e) => {
            errors.push(ConfigError {
                path: path.into(),
                message: format!("invalid regex: {e}"),
            });
            None
        }
    }
}

/// Durations written like `15s`, `1m30s`, `250ms`.
pub(crate) mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map_err(|e| {
            serde::de::Error::custom(format!("{s:?} is not a duration like 15s or 1m30s ({e})"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load(text: &str) -> Result<Config, ConfigErrors> {
        load_str(text, "test.yaml", Path::new("."), &env(&[("PORT", "9999")]))
    }

    fn paths(e: &ConfigErrors) -> Vec<String> {
        e.errors.iter().map(|e| e.path.clone()).collect()
    }

    #[test]
    fn embedded_defaults_are_valid_and_safe() {
        let c = Config::embedded().expect("defaults");
        assert_eq!(c.http.listen, "127.0.0.1:9464".parse().expect("addr"));
        assert_eq!(c.host.interval, Duration::from_secs(15));
        assert!(c.host.enabled);
        assert_eq!(c.store.path, PathBuf::from("./sidelight-data"));
        assert!(c.http.bearer_tokens.is_empty());
        // Security defaults: every listener on loopback, bounded connections, OTLP redaction on.
        let listeners = [
            Some(c.http.listen),
            c.otlp.receivers.grpc,
            c.otlp.receivers.http,
        ];
        for addr in listeners.into_iter().flatten() {
            assert!(addr.ip().is_loopback(), "{addr} is not loopback");
        }
        assert!(c.otlp.enabled);
        assert!(c.otlp.receivers.redaction.builtins);
        assert!(c.http.max_connections > 0 && c.otlp.receivers.max_connections > 0);
    }

    #[test]
    fn full_shape_with_substitution_and_durations() {
        let c = load(
            "agent: { log_level: debug, shutdown_timeout: 2s }\nhttp: { listen: \"127.0.0.1:${PORT}\" }\nhost: { interval: 1m30s }\nprocesses:\n  - target: web\n    match: { name: python, cmdline: \"gunicorn|uvicorn\" }\n  - target: worker\n    match: { pidfile: /run/celery.pid }\n    include_children: false\nstore: { path: /var/lib/sidelight }\n",
        )
        .expect("valid");
        assert_eq!(c.http.listen.port(), 9999);
        assert_eq!(c.host.interval, Duration::from_secs(90));
        assert_eq!(c.agent.shutdown_timeout, Duration::from_secs(2));
        assert_eq!(c.processes.len(), 2);
        assert!(
            c.processes[0]
                .cmdline
                .as_ref()
                .is_some_and(|r| r.is_match("uvicorn app:main"))
        );
        assert!(!c.processes[1].include_children);
    }

    #[test]
    fn every_error_is_reported_at_once_with_its_path() {
        let e = load(
            "agent: { log_levl: info }\nhttp: { listen: nowhere }\nhost: { interval: soon }\nprocesses:\n  - target: a\n    match: { name: x }\n  - target: b\n    match: { cmdline: \"(\" , colour: red }\n  - target: a\n    match: {}\nlogz: []\n",
        )
        .expect_err("invalid");
        let p = paths(&e);
        for want in [
            "agent.log_levl",
            "http.listen",
            "host.interval",
            "processes[1].match.colour",
            "processes[1].match.cmdline",
            "processes[2].target",
            "processes[2].match",
            "logz",
        ] {
            assert!(p.iter().any(|x| x == want), "missing {want} in {p:?}\n{e}");
        }
        let text = e.to_string();
        assert!(text.starts_with("test.yaml has 8 errors:"), "{text}");
    }

    #[test]
    fn type_errors_name_the_key() {
        let e =
            load("processes:\n  - target: a\n    match: { name: [1, 2] }\n").expect_err("invalid");
        assert_eq!(paths(&e), ["processes[0].match.name"]);
        let e = load("processes: {}\n").expect_err("invalid");
        assert_eq!(paths(&e), ["processes"]);
    }

    #[test]
    fn missing_env_var_and_defaults() {
        let e = load("http: { listen: \"${NOPE}\" }\n").expect_err("invalid");
        assert!(
            e.errors
                .iter()
                .any(|x| x.path == "line 1" && x.message.contains("NOPE")),
            "{e}"
        );
        let c = load("http: { listen: \"${NOPE:-127.0.0.1:1234}\" }\n").expect("default");
        assert_eq!(c.http.listen.port(), 1234);
        let c = load("processes:\n  - target: a\n    match: { cmdline: \"cost$$\" }\n")
            .expect("escape");
        assert_eq!(
            c.processes[0].cmdline.as_ref().map(Regex::as_str),
            Some("cost$")
        );
    }

    #[test]
    fn secrets_from_files_and_env_never_print() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("token"), "old-token\nnew-token\n").expect("write");
        let c = load_str(
            "http: { auth: { bearer_token_file: token } }\n",
            "t",
            dir.path(),
            &env(&[]),
        )
        .expect("valid");
        assert_eq!(c.http.bearer_tokens.len(), 2);
        assert!(!format!("{c:?}").contains("new-token"));
        let c = load_str(
            "http: { auth: { bearer_token_env: TOK } }\n",
            "t",
            dir.path(),
            &env(&[("TOK", "s3cret")]),
        )
        .expect("valid");
        assert_eq!(c.http.bearer_tokens[0].expose(), "s3cret");
        let e = load_str(
            "http: { auth: { bearer_token_file: missing } }\n",
            "t",
            dir.path(),
            &env(&[]),
        )
        .expect_err("missing file");
        assert_eq!(paths(&e), ["http.auth.bearer_token_file"]);
    }

    #[test]
    fn dora_defaults_and_full_section() {
        let c = load("").expect("defaults");
        assert!(!c.dora.enabled);
        assert_eq!(c.dora.environment, "production");
        assert_eq!(c.dora.tier_year, 2023);
        assert_eq!(c.dora.retention, Duration::from_secs(400 * 86_400));
        assert_eq!(c.dora.windows, crate::dora::Window::DEFAULTS.to_vec());
        assert_eq!(c.dora.alertmanager_severities, ["critical"]);
        assert!(c.dora.github.is_none() && c.dora.gitlab.is_none());

        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("gh"), "hook-secret\n").expect("write");
        let c = load_str(
            "dora:\n  enabled: true\n  environment: prod\n  retention: 30d\n  windows: [7d, 30d]\n  webhooks:\n    github: { secret_file: gh, deploy_on_workflow_run: true }\n    gitlab: { token_env: GL }\n  alertmanager: { severities: [critical, page] }\n",
            "t",
            dir.path(),
            &env(&[("GL", "gl-token")]),
        )
        .expect("valid");
        assert!(c.dora.enabled);
        assert_eq!(c.dora.environment, "prod");
        assert_eq!(c.dora.windows.len(), 2);
        let gh = c.dora.github.as_ref().expect("github");
        assert_eq!(gh.secret.expose(), "hook-secret");
        assert!(gh.deploy_on_workflow_run);
        assert_eq!(
            c.dora.gitlab.as_ref().map(|g| g.token.expose()),
            Some("gl-token")
        );
        assert!(!format!("{c:?}").contains("hook-secret"));
    }

    #[test]
    fn dora_errors_have_paths() {
        let e = load(
            "dora:\n  tiers: dora-1999\n  retention: 7d\n  windows: [1d, 1d, 30d, soon]\n  webhooks:\n    github: { secret_file: a, secret_env: B }\n    gitlab: {}\n    bitbucket: {}\n  colour: red\n",
        )
        .expect_err("invalid");
        let p = paths(&e);
        for want in [
            "dora.tiers",
            "dora.windows[1]",
            "dora.windows[2]",
            "dora.windows[3]",
            "dora.webhooks.github",
            "dora.webhooks.gitlab",
            "dora.webhooks.bitbucket",
            "dora.colour",
        ] {
            assert!(p.iter().any(|x| x == want), "missing {want} in {p:?}\n{e}");
        }
        let e = load("dora: { webhooks: { gitlab: { token_env: NOPE } } }\n").expect_err("unset");
        assert_eq!(paths(&e), ["dora.webhooks.gitlab.token_env"]);
    }

    #[test]
    fn otlp_on_in_the_embedded_defaults_off_without_a_section() {
        let c = Config::embedded().expect("defaults");
        assert!(c.otlp.enabled);
        assert_eq!(
            c.otlp.receivers.grpc,
            Some("127.0.0.1:4317".parse().expect("addr"))
        );
        assert_eq!(
            c.otlp.receivers.http,
            Some("127.0.0.1:4318".parse().expect("addr"))
        );
        assert_eq!(c.otlp.receivers.max_request_bytes, 16 << 20);
        let sm = c.otlp.spanmetrics.as_ref().expect("span metrics on");
        assert_eq!(sm.buckets.len(), 16);
        assert!(
            !load("http: { listen: 127.0.0.1:1 }\n")
                .expect("valid")
                .otlp
                .enabled
        );
        assert!(load("otlp: {}\n").expect("valid").otlp.enabled);
        assert!(
            !load("otlp: { enabled: false }\n")
                .expect("valid")
                .otlp
                .enabled
        );
    }

    #[test]
    fn otlp_full_section() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("tokens"), "old\nnew\n").expect("write");
        let c = load_str(
            "otlp:\n  grpc: 0.0.0.0:14317\n  http: null\n  max_request_bytes: 4194304\n  retry_after: 5s\n  auth: { bearer_token_file: tokens }\n  spanmetrics:\n    dimensions: [http.route, { name: http.method, default: GET }]\n    buckets: [5ms, 0.1, 1.4s]\n    max_label_sets: 50\n    kinds: [server, SPAN_KIND_CLIENT]\n",
            "t",
            dir.path(),
            &env(&[]),
        )
        .expect("valid");
        let r = &c.otlp.receivers;
        assert_eq!(r.grpc, Some("0.0.0.0:14317".parse().expect("addr")));
        assert_eq!(r.http, None);
        assert_eq!(r.max_request_bytes, 4 << 20);
        assert_eq!(r.retry_after, Duration::from_secs(5));
        assert_eq!(r.bearer_tokens.len(), 2);
        assert!(!format!("{c:?}").contains("new"), "tokens never print");
        let sm = c.otlp.spanmetrics.as_ref().expect("on");
        assert_eq!(sm.buckets, [0.005, 0.1, 1.4]);
        assert_eq!(sm.dimensions[0].label(), "http_route");
        assert_eq!(sm.dimensions[1].default.as_deref(), Some("GET"));
        assert_eq!(sm.max_label_sets, 50);
        assert_eq!(sm.kinds.len(), 2);
        let c = load_str(
            "otlp: { auth: { bearer_token_env: T }, spanmetrics: { enabled: false } }\n",
            "t",
            dir.path(),
            &env(&[("T", "a, b")]),
        )
        .expect("valid");
        assert_eq!(c.otlp.receivers.bearer_tokens.len(), 2);
        assert!(c.otlp.spanmetrics.is_none());
    }

    #[test]
    fn otlp_errors_have_paths() {
        let e = load(
            "otlp:\n  grpc: nowhere\n  max_request_bytes: 10\n  retry_after: 0s\n  auth: { bearer_token_file: a, bearer_token_env: B }\n  tls: { cert_file: missing.pem, key_file: missing.key }\n  spanmetrics:\n    buckets: [2ms, fast, 1ms]\n    kinds: [sideways]\n    dimensions: [service.name]\n    colour: red\n  colour: blue\n",
        )
        .expect_err("invalid");
        let p = paths(&e);
        for want in [
            "otlp.grpc",
            "otlp.max_request_bytes",
            "otlp.retry_after",
            "otlp.auth",
            "otlp.tls",
            "otlp.spanmetrics.buckets[1]",
            "otlp.spanmetrics.buckets[1]",
            "otlp.spanmetrics.kinds[0]",
            "otlp.spanmetrics.kinds",
            "otlp.spanmetrics.dimensions[0]",
            "otlp.spanmetrics.colour",
            "otlp.colour",
        ] {
            assert!(p.iter().any(|x| x == want), "missing {want} in {p:?}\n{e}");
        }
        let e = load("otlp: { grpc: null, http: null }\n").expect_err("nothing to listen on");
        assert_eq!(paths(&e), ["otlp.grpc"]);
        let e = load("otlp: { tls: { cert_file: a.pem } }\n").expect_err("half TLS");
        assert_eq!(paths(&e), ["otlp.tls"]);
    }

    #[test]
    fn reserved_and_syntax_errors() {
        let e = load("processes:\n  - target: sidelight\n    match: { name: x }\n")
            .expect_err("reserved");
        assert_eq!(paths(&e), ["processes[0].target"]);
        let e = load("http: [unclosed\n").expect_err("yaml");
        assert!(e.errors[0].path.starts_with("line"), "{e}");
        let e = load("- a\n- b\n").expect_err("not a mapping");
        assert_eq!(paths(&e), ["(top)"]);
        assert!(load("").is_ok());
    }
}

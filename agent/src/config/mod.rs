//! The configuration: one YAML file in the shape of DESIGN §3, with `${VAR}` substitution,
//! secrets from `*_file` / `*_env` keys, unknown keys rejected, and every error reported at once
//! with its path (`processes[1].match.cmdline: ...`).
//!
//! This module only assembles: substitution, YAML, each section deserialized into the raw shape
//! its component owns (unknown keys collected with their paths), then each component's pure
//! `validate`, every error kept. The sections live with what runs on them: `http` (`http:`),
//! `host` (`host:`, `processes:`), `logs` (`logs:`, each source the collector's), `otlp`
//! (`otlp:`), `export` (`export:`), `hub::config` (`dora:`, with `dora.regression` in
//! `hub::detector`), `alerting::config` (`alerts:`, `notifiers:`); `agent:` and `store:` are the
//! agent's own and live here. What every section is built from is in [`common`], a leaf.
//!
//! Loading is pure apart from reading the file and the secret files it names: nothing is bound
//! or started here, so `sidelight check-config` and SIGHUP reloads use exactly this code.

pub mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;
use sidelight_collector::logs::LogSourceConfig;
use sidelight_collector::pipeline::Signal;
use sidelight_collector::process::TargetSpec;

use crate::alerting::config::{AlertingConfig, RawAlerts, RawNotifier};
use crate::export::{ExportConfig, RawExport};
pub use crate::host::SELF_TARGET;
use crate::host::{HostConfig, RawHost, RawProcess};
use crate::http::{HttpConfig, RawHttp};
use crate::hub::config::{DoraConfig, RawDora};
use crate::otlp::{OtlpConfig, RawOtlp};
use common::duration;
pub use common::{ConfigError, ConfigErrors, Env, ProcessEnv, Secret};

/// The configuration the agent runs on when no file is given.
pub const EMBEDDED_DEFAULTS: &str = include_str!("../defaults.yaml");

// ---------------------------------------------------------------------------------------------
// The file's shape: one raw section per component. Structs take no `deny_unknown_fields`:
// unknown keys are collected with their paths by `serde_ignored`, so that all of them are
// reported at once rather than the first.

#[derive(Debug, Clone, Default)]
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
    alerts: Option<RawAlerts>,
    notifiers: Option<BTreeMap<String, RawNotifier>>,
    /// Resource attributes added to what the agent forwards (`resource.rs`).
    resource: BTreeMap<String, String>,
}

/// `agent:` as written.
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

/// `store:` as written.
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
    /// Exporters (OTLP, remote write, file); `None` parts export nothing.
    pub export: ExportConfig,
    /// The OTLP receivers and span metrics.
    pub otlp: OtlpConfig,
    /// Alert rules and notifiers (`alerts:` / `notifiers:`), when either section is given.
    pub alerting: Option<AlertingConfig>,
    /// `resource:`, also merged into each log source and the OTLP receivers' settings.
    pub resource: sidelight_collector::resource::ExtraResource,
}

/// `agent:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// Log level directives (`info`, `sidelight=debug,warn`: `crate::logging`); `SIDELIGHT_LOG`
    /// overrides it.
    pub log_level: String,
    /// How long a graceful shutdown may take before it is cut short.
    pub shutdown_timeout: Duration,
    /// Cap on distinct label sets per metric family.
    pub max_label_sets: usize,
}

/// `store:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// The state directory (checkpoints, spills, `sidelight.db`).
    pub path: PathBuf,
}

impl crate::logs::LogSources for Config {
    fn log_sources(&self) -> &[LogSourceConfig] {
        &self.logs
    }
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
                .map(|o| o.client.endpoint.clone());
            let file = self
                .export
                .file
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
            match &self.alerting {
                None => "off".to_owned(),
                Some(a) if a.rule_groups.is_empty() => "on".to_owned(),
                Some(a) => format!(
                    "on ({} rule groups, {} rules)",
                    a.rule_groups.len(),
                    a.rule_groups.iter().map(|g| g.rules.len()).sum::<usize>()
                ),
            },
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

const SECTIONS: [&str; 12] = [
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
    "resource",
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
            "resource" => raw.resource = section(value, &key, errors).unwrap_or_default(),
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

/// The YAML path (`a.b[2].c`) of a key serde ignored.
pub(crate) fn ignored_path(path: &serde_ignored::Path<'_>) -> String {
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

/// Each section's own validation, in document order; every problem added to `errors`.
fn validate(
    raw: RawConfig,
    source_name: &str,
    base: &Path,
    env: &dyn Env,
    errors: &mut Vec<ConfigError>,
) -> Config {
    let agent = validate_agent(raw.agent, errors);
    let http = crate::http::validate(raw.http, base, env, errors);
    let host = crate::host::validate(raw.host, errors);
    let processes = crate::host::validate_processes(raw.processes, base, errors);
    let dora = crate::hub::config::validate(raw.dora, base, env, errors);
    let alerting = crate::alerting::config::validate(raw.alerts, raw.notifiers, base, env, errors);
    let mut logs = crate::logs::validate(raw.logs, errors);
    let resource = crate::resource::build(&raw.resource, errors);
    crate::resource::apply_to_logs(&resource, &mut logs);
    let export = crate::export::validate(raw.export, base, env, errors);
    let mut otlp = crate::otlp::validate(raw.otlp, base, env, errors);
    otlp.receivers.resource = resource.clone();
    Config {
        source_name: source_name.into(),
        agent,
        http,
        host,
        processes,
        store: StoreConfig {
            path: raw.store.path,
        },
        dora,
        logs,
        export,
        otlp,
        alerting,
        resource,
    }
}

fn validate_agent(raw: RawAgent, errors: &mut Vec<ConfigError>) -> AgentConfig {
    if let Err(e) = crate::logging::parse_filter(&raw.log_level) {
        errors.push(ConfigError::new(
            "agent.log_level",
            format!("not a log level or filter ({e})"),
        ));
    }
    if raw.shutdown_timeout.is_zero() {
        errors.push(ConfigError::new(
            "agent.shutdown_timeout",
            "must be greater than 0",
        ));
    }
    if raw.max_label_sets == 0 {
        errors.push(ConfigError::new(
            "agent.max_label_sets",
            "must be at least 1",
        ));
    }
    AgentConfig {
        log_level: raw.log_level,
        shutdown_timeout: raw.shutdown_timeout,
        max_label_sets: raw.max_label_sets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;
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

    /// `defaults.yaml` writes only effective defaults, apart from what the embedded
    /// configuration adds on purpose: the `app` log source, and an `otlp:` section (without one
    /// the receivers are off). A default changed in code but not in `defaults.yaml`, or the
    /// reverse, fails here.
    #[test]
    fn embedded_defaults_yaml_holds_the_effective_defaults() {
        let embedded = Config::embedded().expect("defaults");
        let minimal = load_str(
            "logs:\n  - source: app\n    include: [\"./logs/*.log\"]\notlp: {}\n",
            "embedded defaults",
            Path::new("."),
            &ProcessEnv,
        )
        .expect("valid");
        assert_eq!(format!("{embedded:#?}"), format!("{minimal:#?}"));
        // And the comparison sees a changed default.
        let moved = load_str(
            "logs:\n  - source: app\n    include: [\"./logs/*.log\"]\notlp: {}\nhost: { interval: 16s }\n",
            "embedded defaults",
            Path::new("."),
            &ProcessEnv,
        )
        .expect("valid");
        assert_ne!(format!("{embedded:#?}"), format!("{moved:#?}"));
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
        // `http.route` is a default dimension, without a default value (absent: no label).
        assert_eq!(sm.dimensions.len(), 1);
        assert_eq!(sm.dimensions[0].attribute, "http.route");
        assert_eq!(sm.dimensions[0].default, None);
        assert_eq!(c.otlp.metrics.expiry, Duration::from_secs(300));
        assert_eq!(c.otlp.metrics.max_series, 10_000);
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
            "otlp:\n  grpc: 0.0.0.0:14317\n  http: null\n  max_request_bytes: 4194304\n  retry_after: 5s\n  auth: { bearer_token_file: tokens }\n  spanmetrics:\n    dimensions: [http.route, { name: http.method, default: GET }]\n    buckets: [5ms, 0.1, 1.4s]\n    max_label_sets: 50\n    kinds: [server, SPAN_KIND_CLIENT]\n  metrics: { expiry: 10m, max_series: 500 }\n",
            "t",
            dir.path(),
            &env(&[]),
        )
        .expect("valid");
        assert_eq!(c.otlp.metrics.expiry, Duration::from_secs(600));
        assert_eq!(c.otlp.metrics.max_series, 500);
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
            "otlp:\n  grpc: nowhere\n  max_request_bytes: 10\n  retry_after: 0s\n  auth: { bearer_token_file: a, bearer_token_env: B }\n  tls: { cert_file: missing.pem, key_file: missing.key }\n  spanmetrics:\n    buckets: [2ms, fast, 1ms]\n    kinds: [sideways]\n    dimensions: [service.name]\n    colour: red\n  colour: blue\n  metrics: { expiry: 0s, max_series: 0 }\n",
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
            "otlp.metrics.expiry",
            "otlp.metrics.max_series",
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

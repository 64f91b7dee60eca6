//! The `alerts:` and `notifiers:` sections: their file shape (`Raw*`, unknown keys collected by
//! the loader in `config.rs`) and their validation into [`AlertingConfig`], every error with its
//! path. Secrets (bot tokens, webhook URLs, signing secrets) only from `*_file` / `*_env` keys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::alert::{Matcher, Millis, ms};
use super::deliver::{TEAMS_MAX_BYTES, TEAMS_MIN_CARD_BYTES};
use super::notify::{Inhibit, Route, Routing, Silence};
use super::prom::External;
use crate::config::common::{ConfigError, Env, Secret, read_secret};

/// `alerts:` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RawAlerts {
    evaluation_interval: String,
    group_wait: String,
    group_interval: String,
    repeat_interval: String,
    group_by: Vec<String>,
    receiver: Option<String>,
    routes: Vec<RawRoute>,
    inhibit: Option<Vec<RawInhibit>>,
    silences: Vec<RawSilence>,
    max_series: usize,
    /// Prometheus rule files (paths or globs, relative to the config file).
    rule_files: Vec<String>,
    /// Prometheus rule groups written inline, in the rule-file format.
    groups: Vec<serde_yaml_ng::Value>,
    /// As Prometheus's `global.external_labels`: `$externalLabels` in templates, and attached to
    /// the alerts the notifiers receive.
    external_labels: BTreeMap<String, String>,
    /// The agent's URL as users reach it: `$externalURL` in templates, and every notifier's
    /// `external_url` unless it sets its own.
    external_url: Option<String>,
    /// The removed rule dialect (`rules:`, `links:`): read only to say how to move to
    /// `groups` / `rule_files`.
    rules: Option<serde_yaml_ng::Value>,
    links: Option<serde_yaml_ng::Value>,
}

impl Default for RawAlerts {
    fn default() -> Self {
        Self {
            evaluation_interval: "15s".into(),
            group_wait: "30s".into(),
            group_interval: "5m".into(),
            repeat_interval: "4h".into(),
            group_by: vec!["alertname".into(), "service".into()],
            receiver: None,
            routes: Vec::new(),
            inhibit: None,
            silences: Vec::new(),
            max_series: 2000,
            rule_files: Vec::new(),
            groups: Vec::new(),
            external_labels: BTreeMap::new(),
            external_url: None,
            rules: None,
            links: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
struct RawRoute {
    #[serde(rename = "match")]
    matchers: Vec<String>,
    receiver: String,
    group_by: Option<Vec<String>>,
    group_wait: Option<String>,
    group_interval: Option<String>,
    repeat_interval: Option<String>,
    #[serde(rename = "continue")]
    continue_: bool,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
struct RawInhibit {
    source: Vec<String>,
    target: Vec<String>,
    equal: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
struct RawSilence {
    matchers: Vec<String>,
    /// RFC 3339; absent: until the silence is removed from the file.
    until: Option<String>,
    comment: String,
}

/// One entry of `notifiers:` as written; `type` defaults to the entry's name.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct RawNotifier {
    #[serde(rename = "type")]
    kind: Option<String>,
    token_file: Option<PathBuf>,
    token_env: Option<String>,
    webhook_url_file: Option<PathBuf>,
    webhook_url_env: Option<String>,
    url: Option<String>,
    url_file: Option<PathBuf>,
    url_env: Option<String>,
    bearer_token_file: Option<PathBuf>,
    bearer_token_env: Option<String>,
    hmac_secret_file: Option<PathBuf>,
    hmac_secret_env: Option<String>,
    signing_secret_file: Option<PathBuf>,
    signing_secret_env: Option<String>,
    channel: Option<String>,
    api_url: Option<String>,
    rate_limit: Option<String>,
    queue_capacity: Option<usize>,
    max_retries: Option<u32>,
    deploy_notices: Option<bool>,
    digest: Option<String>,
    dashboard: Option<String>,
    socket_mode: Option<RawSocketMode>,
    external_url: Option<String>,
    max_alerts: Option<usize>,
    max_card_bytes: Option<usize>,
}

/// `notifiers.<slack>.socket_mode` as written.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct RawSocketMode {
    app_token_file: Option<PathBuf>,
    app_token_env: Option<String>,
}

/// How a receiver delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum NotifierKind {
    /// Slack Web API with a bot token: messages updated and threaded.
    SlackBot {
        /// `xoxb-...`.
        token: Secret,
        /// Channel name or id.
        channel: String,
        /// Web API base (`https://slack.com/api`).
        api_url: String,
    },
    /// Slack incoming webhook: post only.
    SlackWebhook {
        /// The webhook URL.
        url: Secret,
    },
    /// Microsoft Teams Workflows webhook (Adaptive Cards).
    Teams {
        /// The workflow URL.
        url: Secret,
        /// Most bytes of one card's JSON (default and most: Microsoft's 28 KB); larger cards
        /// are shortened, and one that cannot be is counted as failed, never posted.
        max_card_bytes: usize,
    },
    /// Any JSON endpoint.
    Webhook {
        /// Target URL.
        url: Secret,
        /// `Authorization: Bearer` token.
        bearer: Option<Secret>,
        /// HMAC-SHA256 key for `X-Sidelight-Signature`.
        hmac: Option<Secret>,
    },
}

impl NotifierKind {
    /// `slack`, `teams` or `webhook` (the `channel` label of the self-metrics).
    pub fn channel_label(&self) -> &'static str {
        match self {
            Self::SlackBot { .. } | Self::SlackWebhook { .. } => "slack",
            Self::Teams { .. } => "teams",
            Self::Webhook { .. } => "webhook",
        }
    }
}

/// A validated receiver.
#[derive(Debug, Clone, PartialEq)]
pub struct NotifierConfig {
    /// Its name (routes refer to it).
    pub name: String,
    /// How it delivers.
    pub kind: NotifierKind,
    /// Least time between two messages to its channel.
    pub rate_limit: Duration,
    /// Messages queued at most before new ones are coalesced into a summary.
    pub queue_capacity: usize,
    /// Retries of one message (429 / 5xx / network) before it counts as failed.
    pub max_retries: u32,
    /// Post a notice for each deployment the DORA hub records.
    pub deploy_notices: bool,
    /// Post a DORA digest this often.
    pub digest: Option<Duration>,
    /// Dashboard link for deploy notices and digests.
    pub dashboard: Option<String>,
    /// Slack Socket Mode: the app-level token (`xapp-…`) commands and buttons arrive through.
    pub socket_mode: Option<Secret>,
    /// The agent's URL as the message's readers reach it: "and N more" links to
    /// `{it}/api/v1/alerts`; a webhook's `externalURL`.
    pub external_url: Option<String>,
    /// Webhook: most alerts in one message, as Alertmanager's `max_alerts` (0: all).
    pub max_alerts: usize,
}

/// `alerts:` + `notifiers:`, validated.
#[derive(Debug, Clone)]
pub struct AlertingConfig {
    /// How often rule groups without an `interval` are evaluated.
    pub evaluation_interval: Duration,
    /// Routes, default route, inhibition.
    pub routing: Routing,
    /// Silences from the file.
    pub silences: Vec<Silence>,
    /// Cap of series kept in the rules' history.
    pub max_series: usize,
    /// `alerts.external_labels` and `alerts.external_url`.
    pub external: External,
    /// Prometheus rule groups: those of `rule_files` in file order, then the inline `groups`.
    pub rule_groups: std::sync::Arc<Vec<sidelight_rules::Group>>,
    /// The rule files read (globs expanded).
    pub rule_files: Vec<PathBuf>,
    /// Receivers by name.
    pub notifiers: BTreeMap<String, NotifierConfig>,
    /// The Slack signing secret, when ChatOps is configured.
    pub signing_secret: Option<Secret>,
}

struct Errs<'a>(&'a mut Vec<ConfigError>);

impl Errs<'_> {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, path: &str, text: &str) -> Duration {
        match humantime::parse_duration(text.trim()) {
            Ok(d) => d,
            Err(e) => {
                self.push(
                    path,
                    format!("{text:?} is not a duration like 15s or 1m30s ({e})"),
                );
                Duration::ZERO
            }
        }
    }

    fn matchers(&mut self, path: &str, list: &[String]) -> Vec<Matcher> {
        list.iter()
            .enumerate()
            .filter_map(|(i, m)| match Matcher::parse(m) {
                Ok(m) => Some(m),
                Err(e) => {
                    self.push(format!("{path}[{i}]"), e);
                    None
                }
            })
            .collect()
    }
}

/// Validates both sections (either may be absent).
pub fn validate(
    alerts: Option<RawAlerts>,
    notifiers: Option<BTreeMap<String, RawNotifier>>,
    base: &Path,
    env: &dyn Env,
    errors: &mut Vec<ConfigError>,
) -> Option<AlertingConfig> {
    if alerts.is_none() && notifiers.is_none() {
        return None;
    }
    let raw = alerts.unwrap_or_default();
    let notifiers_raw = notifiers.unwrap_or_default();
    let mut e = Errs(errors);
    let evaluation_interval = e.duration("alerts.evaluation_interval", &raw.evaluation_interval);
    if evaluation_interval < Duration::from_secs(1) {
        e.push("alerts.evaluation_interval", "must be at least 1s");
    }
    let group_wait = ms(e.duration("alerts.group_wait", &raw.group_wait));
    let group_interval = ms(e.duration("alerts.group_interval", &raw.group_interval));
    let repeat_interval = ms(e.duration("alerts.repeat_interval", &raw.repeat_interval));
    if raw.max_series == 0 {
        e.push("alerts.max_series", "must be at least 1");
    }

    let external = validate_external(&raw, &mut e);

    let mut notifiers = BTreeMap::new();
    let mut signing_secret = None;
    for (name, n) in notifiers_raw {
        let at = format!("notifiers.{name}");
        if let Some(mut cfg) =
            validate_notifier(&name, &at, n, base, env, &mut e, &mut signing_secret)
        {
            if cfg.external_url.is_none() && !external.url.is_empty() {
                cfg.external_url = Some(external.url.clone());
            }
            notifiers.insert(name, cfg);
        }
    }
    let known = |e: &mut Errs<'_>, path: &str, r: &str| {
        if !notifiers.contains_key(r) {
            e.push(
                path,
                format!(
                    "no notifier named {r:?} (known: {})",
                    notifiers.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            );
        }
    };
    let default_receiver = match (&raw.receiver, notifiers.len()) {
        (Some(r), _) => {
            known(&mut e, "alerts.receiver", r);
            Some(r.clone())
        }
        (None, 1) => notifiers.keys().next().cloned(),
        (None, 0) => None,
        (None, _) => {
            if raw.routes.is_empty() {
                e.push(
                    "alerts.receiver",
                    "needed when more than one notifier is configured",
                );
            }
            None
        }
    };
    let default = default_receiver.map(|receiver| Route {
        matchers: Vec::new(),
        receiver,
        group_by: raw.group_by.clone(),
        group_wait,
        group_interval,
        repeat_interval,
        continue_: false,
    });
    let mut routes = Vec::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let at = format!("alerts.routes[{i}]");
        known(&mut e, &format!("{at}.receiver"), &r.receiver);
        let mut d = |key: &str, v: &Option<String>, dflt: Millis| {
            v.as_ref()
                .map_or(dflt, |v| ms(e.duration(&format!("{at}.{key}"), v)))
        };
        let gw = d("group_wait", &r.group_wait, group_wait);
        let gi = d("group_interval", &r.group_interval, group_interval);
        let ri = d("repeat_interval", &r.repeat_interval, repeat_interval);
        routes.push(Route {
            matchers: e.matchers(&format!("{at}.match"), &r.matchers),
            receiver: r.receiver.clone(),
            group_by: r.group_by.clone().unwrap_or_else(|| raw.group_by.clone()),
            group_wait: gw,
            group_interval: gi,
            repeat_interval: ri,
            continue_: r.continue_,
        });
    }
    let inhibit = match &raw.inhibit {
        None => vec![Inhibit {
            source: vec![Matcher::eq("severity", "critical")],
            target: vec![Matcher::eq("severity", "warning")],
            equal: vec!["service".into()],
        }],
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, r)| Inhibit {
                source: e.matchers(&format!("alerts.inhibit[{i}].source"), &r.source),
                target: e.matchers(&format!("alerts.inhibit[{i}].target"), &r.target),
                equal: r.equal.clone(),
            })
            .collect(),
    };
    let mut silences = Vec::new();
    for (i, s) in raw.silences.iter().enumerate() {
        let at = format!("alerts.silences[{i}]");
        let ends_at = match &s.until {
            None => Millis::MAX,
            Some(t) => match crate::webhooks::parse_time(t) {
                Some(secs) => secs.saturating_mul(1000),
                None => {
                    e.push(
                        format!("{at}.until"),
                        format!("{t:?} is not an RFC 3339 time"),
                    );
                    continue;
                }
            },
        };
        match Silence::new(
            format!("config-{i}"),
            s.matchers.clone(),
            0,
            ends_at,
            "config".into(),
            s.comment.clone(),
        ) {
            Ok(s) => silences.push(s),
            Err(msg) => e.push(at, msg),
        }
    }

    let rule_files = expand_rule_files(&raw.rule_files, base, &mut e);
    let rule_groups = load_rule_groups(&rule_files, &raw.groups, &mut e);
    removed_dialect(raw.rules.as_ref(), raw.links.as_ref(), &mut e);

    Some(AlertingConfig {
        evaluation_interval,
        routing: Routing {
            routes,
            default,
            inhibit,
        },
        silences,
        max_series: raw.max_series,
        external,
        rule_groups: std::sync::Arc::new(rule_groups),
        rule_files,
        notifiers,
        signing_secret,
    })
}

/// Whether `name` is a label name Prometheus accepts for an external label
/// (`[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__`, which is reserved).
fn valid_label_name(name: &str) -> bool {
    let mut b = name.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
        && !name.starts_with("__")
}

/// `alerts.external_labels` and `alerts.external_url`, validated.
fn validate_external(raw: &RawAlerts, e: &mut Errs<'_>) -> External {
    let mut labels = sidelight_rules::Labels::new();
    for (k, v) in &raw.external_labels {
        let at = format!("alerts.external_labels.{k}");
        if !valid_label_name(k) {
            e.push(
                at,
                format!(
                    "{k:?} is not a label name (letters, digits and _, not starting with a digit \
                     or __)"
                ),
            );
        } else if v.is_empty() {
            e.push(at, "needs a value (an empty value is no label)");
        } else {
            labels.insert(k.clone(), v.clone());
        }
    }
    let url = raw
        .external_url
        .as_ref()
        .map_or_else(String::new, |u| match url::Url::parse(u) {
            Ok(p) if matches!(p.scheme(), "http" | "https") && p.host().is_some() => {
                u.trim_end_matches('/').to_owned()
            }
            _ => {
                e.push(
                    "alerts.external_url",
                    format!("{u:?} is not an http:// or https:// URL"),
                );
                String::new()
            }
        });
    External { labels, url }
}

/// How a rule of the removed dialect is written now (shown by `check-config`).
const DIALECT_EXAMPLE: &str = r#"alerts:
  groups:
    - name: app
      rules:
        - alert: ErrorLogs
          expr: sum by (source) (rate(sidelight_log_records_total{level="error"}[5m])) > 0.5
          for: 2m
          labels: { severity: warning }
          annotations:
            summary: "{{ $labels.source }} logs {{ $value }} errors/s""#;

/// `alerts.rules` and `alerts.links` of the rule dialect the agent had before it took
/// Prometheus rules: an error naming the old keys, with the Prometheus rule to write for each
/// threshold or rate rule, and where the shipped rules do what `slo:` and `new_exception:` did.
fn removed_dialect(
    rules: Option<&serde_yaml_ng::Value>,
    links: Option<&serde_yaml_ng::Value>,
    e: &mut Errs<'_>,
) {
    if let Some(rules) = rules {
        let example: Vec<String> = DIALECT_EXAMPLE
            .lines()
            .map(|l| format!("      {l}"))
            .collect();
        e.push(
            "alerts.rules",
            format!(
                "is no longer read: the built-in rule dialect (name, expr as a bare selector, \
                 rate, sum_by, op, threshold, slo, new_exception, severity, summary, runbook, \
                 dashboard) was replaced by Prometheus rules. Write them in alerts.groups, or in \
                 rule files listed in alerts.rule_files (the files Prometheus loads), e.g.\n{}",
                example.join("\n")
            ),
        );
        let entries = rules.as_sequence().map(Vec::as_slice).unwrap_or_default();
        for (i, r) in entries.iter().enumerate() {
            let at = format!("alerts.rules[{i}]");
            let key = |k: &str| r.get(k);
            if key("slo").is_some() {
                e.push(
                    at,
                    "slo: the burn-rate SLO alerts are Prometheus rules now: load \
                     alerts/sidelight-recording.yaml and alerts/sidelight-alerts.yaml \
                     (SidelightErrorBudgetBurn1h, 6h, 1d and 3d; SidelightLatencyHigh for a latency \
                     objective; the objectives are set in the recording rules) with \
                     alerts.rule_files",
                );
            } else if key("new_exception").is_some() {
                e.push(
                    at,
                    "new_exception: load alerts/sidelight-alerts.yaml with alerts.rule_files: its \
                     SidelightNewExceptionSinceDeploy rule compares \
                     sidelight_log_exception_first_seen_timestamp_seconds with \
                     dora_last_successful_deployment_timestamp_seconds",
                );
            } else if let Some(rule) = translate_dialect_rule(r) {
                e.push(at, format!("write instead, under a group's rules:\n{rule}"));
            }
        }
    }
    if links.is_some() {
        e.push(
            "alerts.links",
            "is no longer read: give each alerting rule `runbook_url` and `dashboard_url` \
             annotations (templates may use $labels and $externalLabels)",
        );
    }
}

/// The Prometheus alerting rule equivalent to one threshold or rate rule of the removed
/// dialect, as indented YAML; `None` when the entry is not one.
fn translate_dialect_rule(r: &serde_yaml_ng::Value) -> Option<String> {
    use serde_yaml_ng::{Mapping, Value};
    let text = |k: &str| r.get(k).and_then(Value::as_str).map(str::to_owned);
    let selector = text("expr")?;
    let threshold = match r.get("threshold")? {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => return None,
    };
    let mut expr = match text("rate") {
        Some(w) => format!("rate({}[{w}])", selector.trim()),
        None => selector.trim().to_owned(),
    };
    if let Some(by) = r.get("sum_by").and_then(Value::as_sequence) {
        let by: Vec<&str> = by.iter().filter_map(Value::as_str).collect();
        expr = format!("sum by ({}) ({expr})", by.join(", "));
    }
    let op = text("op").unwrap_or_else(|| ">".into());
    let mut rule = Mapping::new();
    let put = |m: &mut Mapping, k: &str, v: Value| {
        m.insert(Value::String(k.into()), v);
    };
    put(
        &mut rule,
        "alert",
        Value::String(text("name").unwrap_or_default()),
    );
    put(
        &mut rule,
        "expr",
        Value::String(format!("{expr} {} {threshold}", op.trim())),
    );
    for k in ["for", "keep_firing_for"] {
        if let Some(v) = text(k) {
            put(&mut rule, k, Value::String(v));
        }
    }
    let mut labels = r
        .get("labels")
        .and_then(Value::as_mapping)
        .cloned()
        .unwrap_or_default();
    labels.insert(
        Value::String("severity".into()),
        Value::String(text("severity").unwrap_or_else(|| "warning".into())),
    );
    put(&mut rule, "labels", Value::Mapping(labels));
    let mut annotations = Mapping::new();
    for (from, to) in [
        ("summary", "summary"),
        ("runbook", "runbook_url"),
        ("dashboard", "dashboard_url"),
    ] {
        if let Some(v) = text(from) {
            let v = v
                .replace("{{ $threshold }}", &threshold)
                .replace("{{$threshold}}", &threshold);
            put(&mut annotations, to, Value::String(v));
        }
    }
    if !annotations.is_empty() {
        put(&mut rule, "annotations", Value::Mapping(annotations));
    }
    let yaml = serde_yaml_ng::to_string(&Value::Sequence(vec![Value::Mapping(rule)])).ok()?;
    Some(
        yaml.lines()
            .map(|l| format!("      {l}"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// Expands `alerts.rule_files`: a path, or a glob in its last component, relative to `base`
/// (the config file's directory). A path without wildcards must exist; a glob may match nothing
/// (as in Prometheus).
fn expand_rule_files(patterns: &[String], base: &Path, e: &mut Errs<'_>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for (i, pattern) in patterns.iter().enumerate() {
        let at = format!("alerts.rule_files[{i}]");
        let full = base.join(pattern);
        let name = full
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dir = full.parent().map(Path::to_path_buf).unwrap_or_default();
        let wild = |s: &str| s.contains(['*', '?', '[', '{']);
        if wild(&dir.to_string_lossy()) {
            e.push(at, "wildcards are allowed in the file name only");
            continue;
        }
        if !wild(&name) {
            if full.is_file() {
                out.push(full);
            } else {
                e.push(at, format!("{}: no such file", full.display()));
            }
            continue;
        }
        let matcher = match globset::Glob::new(&name) {
            Ok(g) => g.compile_matcher(),
            Err(err) => {
                e.push(at, format!("bad glob {pattern:?}: {err}"));
                continue;
            }
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(r) => r,
            // As Prometheus's glob: a directory that does not exist matches nothing.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => {
                e.push(at, format!("{}: {err}", dir.display()));
                continue;
            }
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|d| matcher.is_match(d.file_name()))
            .map(|d| d.path())
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        out.extend(found);
    }
    out
}

/// Loads the rule files and the inline groups, every problem reported with its place.
fn load_rule_groups(
    files: &[PathBuf],
    inline: &[serde_yaml_ng::Value],
    e: &mut Errs<'_>,
) -> Vec<sidelight_rules::Group> {
    let mut groups = Vec::new();
    for f in files {
        match sidelight_rules::file::load_file(f) {
            Ok(rf) => groups.extend(rf.groups),
            Err(errs) => {
                for err in errs {
                    e.push(
                        format!("alerts.rule_files: {}", err.file),
                        format!("{}: {}", err.path, err.message),
                    );
                }
            }
        }
    }
    if !inline.is_empty() {
        let doc = serde_yaml_ng::to_string(&serde_yaml_ng::Value::Mapping(
            [(
                serde_yaml_ng::Value::String("groups".into()),
                serde_yaml_ng::Value::Sequence(inline.to_vec()),
            )]
            .into_iter()
            .collect(),
        ));
        match doc {
            Ok(text) => match sidelight_rules::file::parse("alerts.groups", &text) {
                Ok(rf) => groups.extend(rf.groups),
                Err(errs) => {
                    for x in errs {
                        e.push(format!("alerts.{}", x.path), x.message);
                    }
                }
            },
            Err(err) => e.push("alerts.groups", err.to_string()),
        }
    }
    let mut seen = std::collections::HashSet::new();
    for g in &groups {
        if !seen.insert((g.file.clone(), g.name.clone())) {
            e.push(
                "alerts.groups",
                format!("group {:?} is defined twice in {}", g.name, g.file),
            );
        }
    }
    groups
}

#[allow(clippy::too_many_arguments)]
fn validate_notifier(
    name: &str,
    at: &str,
    n: RawNotifier,
    base: &Path,
    env: &dyn Env,
    e: &mut Errs<'_>,
    signing: &mut Option<Secret>,
) -> Option<NotifierConfig> {
    let kind = n.kind.clone().unwrap_or_else(|| name.to_owned());
    let secret = |e: &mut Errs<'_>, file: &Option<PathBuf>, var: &Option<String>, keys| {
        read_secret(file.as_ref(), var.as_ref(), at, keys, base, env, e.0)
    };
    let rate_limit = n.rate_limit.as_ref().map_or(Duration::from_secs(1), |r| {
        e.duration(&format!("{at}.rate_limit"), r)
    });
    let queue_capacity = n.queue_capacity.unwrap_or(50);
    if queue_capacity == 0 {
        e.push(format!("{at}.queue_capacity"), "must be at least 1");
    }
    let digest = n
        .digest
        .as_ref()
        .filter(|d| d.as_str() != "off")
        .map(|d| e.duration(&format!("{at}.digest"), d));
    let socket_mode = n.socket_mode.as_ref().and_then(|sm| {
        if kind != "slack" {
            e.push(
                format!("{at}.socket_mode"),
                "only a slack notifier has socket_mode",
            );
            return None;
        }
        read_secret(
            sm.app_token_file.as_ref(),
            sm.app_token_env.as_ref(),
            &format!("{at}.socket_mode"),
            ("app_token_file", "app_token_env"),
            base,
            env,
            e.0,
        )
    });
    let external_url = n
        .external_url
        .as_ref()
        .and_then(|u| match url::Url::parse(u) {
            Ok(p) if matches!(p.scheme(), "http" | "https") => {
                Some(u.trim_end_matches('/').to_owned())
            }
            _ => {
                e.push(
                    format!("{at}.external_url"),
                    "must be an http:// or https:// URL",
                );
                None
            }
        });
    if n.max_card_bytes.is_some() && kind != "teams" {
        e.push(
            format!("{at}.max_card_bytes"),
            "only a teams notifier has max_card_bytes",
        );
    }
    let max_card_bytes = n.max_card_bytes.unwrap_or(TEAMS_MAX_BYTES);
    if !(TEAMS_MIN_CARD_BYTES..=TEAMS_MAX_BYTES).contains(&max_card_bytes) {
        e.push(
            format!("{at}.max_card_bytes"),
            format!(
                "must be between {TEAMS_MIN_CARD_BYTES} and {TEAMS_MAX_BYTES} (what a Teams workflow posts at most)"
            ),
        );
    }
    if n.max_alerts.is_some() && kind != "webhook" {
        e.push(
            format!("{at}.max_alerts"),
            "only a webhook notifier has max_alerts",
        );
    }
    if kind == "webhook" && (n.deploy_notices == Some(true) || digest.is_some()) {
        e.push(
            at,
            "deploy_notices and digest are for chats (slack, teams): a webhook carries \
             Alertmanager's alert format only",
        );
    }
    let kind = match kind.as_str() {
        "slack" => {
            if n.signing_secret_file.is_some() || n.signing_secret_env.is_some() {
                *signing = secret(
                    e,
                    &n.signing_secret_file,
                    &n.signing_secret_env,
                    ("signing_secret_file", "signing_secret_env"),
                );
            }
            let has_token = n.token_file.is_some() || n.token_env.is_some();
            let has_hook = n.webhook_url_file.is_some() || n.webhook_url_env.is_some();
            match (has_token, has_hook) {
                (true, false) => {
                    let token = secret(e, &n.token_file, &n.token_env, ("token_file", "token_env"));
                    let Some(channel) = n.channel.clone().filter(|c| !c.trim().is_empty()) else {
                        e.push(format!("{at}.channel"), "is required with a bot token");
                        return None;
                    };
                    NotifierKind::SlackBot {
                        token: token?,
                        channel,
                        api_url: n
                            .api_url
                            .clone()
                            .unwrap_or_else(|| "https://slack.com/api".into())
                            .trim_end_matches('/')
                            .to_owned(),
                    }
                }
                (false, true) => NotifierKind::SlackWebhook {
                    url: secret(
                        e,
                        &n.webhook_url_file,
                        &n.webhook_url_env,
                        ("webhook_url_file", "webhook_url_env"),
                    )?,
                },
                _ => {
                    e.push(
                        at,
                        "a slack notifier needs token_file/token_env (bot) or webhook_url_file/webhook_url_env, not both",
                    );
                    return None;
                }
            }
        }
        "teams" => NotifierKind::Teams {
            url: secret(
                e,
                &n.webhook_url_file,
                &n.webhook_url_env,
                ("webhook_url_file", "webhook_url_env"),
            )?,
            max_card_bytes,
        },
        "webhook" => {
            let url = match (&n.url, n.url_file.is_some() || n.url_env.is_some()) {
                (Some(u), false) => Secret::new(u.clone()),
                (None, true) => secret(e, &n.url_file, &n.url_env, ("url_file", "url_env"))?,
                _ => {
                    e.push(at, "a webhook notifier needs one of url, url_file, url_env");
                    return None;
                }
            };
            let bearer = (n.bearer_token_file.is_some() || n.bearer_token_env.is_some())
                .then(|| {
                    secret(
                        e,
                        &n.bearer_token_file,
                        &n.bearer_token_env,
                        ("bearer_token_file", "bearer_token_env"),
                    )
                })
                .flatten();
            let hmac = (n.hmac_secret_file.is_some() || n.hmac_secret_env.is_some())
                .then(|| {
                    secret(
                        e,
                        &n.hmac_secret_file,
                        &n.hmac_secret_env,
                        ("hmac_secret_file", "hmac_secret_env"),
                    )
                })
                .flatten();
            NotifierKind::Webhook { url, bearer, hmac }
        }
        other => {
            e.push(
                format!("{at}.type"),
                format!("unknown notifier type {other:?} (slack, teams, webhook)"),
            );
            return None;
        }
    };
    Some(NotifierConfig {
        name: name.to_owned(),
        kind,
        rate_limit,
        queue_capacity,
        max_retries: n.max_retries.unwrap_or(5),
        deploy_notices: n.deploy_notices.unwrap_or(false),
        digest,
        dashboard: n.dashboard,
        socket_mode,
        external_url,
        max_alerts: n.max_alerts.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::NotifierKind;
    use crate::config::load_str;

    fn env() -> HashMap<String, String> {
        HashMap::from([
            ("SLACK_TOKEN".to_string(), "xoxb-1-2".to_string()),
            ("SLACK_SIGNING".to_string(), "signing".to_string()),
        ])
    }

    #[test]
    fn full_sections() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("teams-url"), "https://example.invalid/wf\n").expect("w");
        let c = load_str(
            r##"
alerts:
  evaluation_interval: 5s
  group_wait: 10s
  receiver: slack
  routes:
    - { match: ['severity="critical"'], receiver: teams, continue: true, group_wait: 0s }
  silences:
    - { matchers: ['alertname="Noisy"'], until: "2030-01-01T00:00:00Z", comment: known }
  external_labels: { cluster: eu-1, runbook_base: "https://wiki.example/runbooks" }
  external_url: "https://sidelight.example:9464/"
  groups:
    - name: app
      rules:
        - alert: ErrorLogs
          expr: sum by (source) (rate(sidelight_log_records_total{level=~"error|critical"}[5m])) > 0.5
          for: 2m
          keep_firing_for: 5m
          labels: { team: web }
notifiers:
  slack: { token_env: SLACK_TOKEN, channel: "#alerts", signing_secret_env: SLACK_SIGNING, deploy_notices: true }
  teams: { webhook_url_file: teams-url, max_card_bytes: 8192 }
  hook: { type: webhook, url: "http://127.0.0.1:1/x", max_alerts: 10, external_url: "https://agent.example/" }
"##,
            "t",
            dir.path(),
            &env(),
        )
        .expect("valid");
        let a = c.alerting.expect("alerting");
        assert_eq!(a.rule_groups.len(), 1);
        assert_eq!(a.notifiers.len(), 3);
        assert_eq!(a.routing.routes[0].receiver, "teams");
        assert_eq!(a.routing.routes[0].group_wait, 0);
        assert_eq!(
            a.routing.default.as_ref().map(|r| r.group_wait),
            Some(10_000)
        );
        assert_eq!(a.silences[0].ends_at, 1_893_456_000_000);
        assert_eq!(
            a.external.labels.get("runbook_base").map(String::as_str),
            Some("https://wiki.example/runbooks")
        );
        assert_eq!(a.external.url, "https://sidelight.example:9464");
        assert_eq!(
            a.signing_secret.as_ref().map(|s| s.expose()),
            Some("signing")
        );
        assert!(!format!("{:?}", a.notifiers).contains("xoxb-1-2"));
        let hook = &a.notifiers["hook"];
        assert_eq!(hook.max_alerts, 10);
        assert_eq!(hook.external_url.as_deref(), Some("https://agent.example"));
        // A notifier without its own external_url takes alerts.external_url.
        assert_eq!(
            a.notifiers["teams"].external_url.as_deref(),
            Some("https://sidelight.example:9464")
        );
        assert_eq!(a.notifiers["teams"].max_alerts, 0);
        assert!(matches!(
            a.notifiers["teams"].kind,
            NotifierKind::Teams {
                max_card_bytes: 8192,
                ..
            }
        ));
    }

    #[test]
    fn every_error_has_a_path() {
        let e = load_str(
            r##"
alerts:
  evaluation_interval: soon
  receiver: nobody
  routes: [ { match: ['severity=~"("'], receiver: slack } ]
  silences: [ { matchers: [], until: tomorrow } ]
  external_labels: { "1bad": x, __reserved: y, empty: "", ok: fine }
  external_url: "ftp://agent"
  colour: red
notifiers:
  slack: { channel: "#a" }
  teams: { webhook_url_env: NOPE }
  pager: { type: pagerduty }
  hook: { type: webhook, url: "http://x/", digest: 1d, external_url: "ftp://x" }
  chat: { type: teams, webhook_url_env: NOPE, max_alerts: 3, max_card_bytes: 100 }
  hook2: { type: webhook, url: "http://x/", max_card_bytes: 4096 }
"##,
            "t",
            std::path::Path::new("."),
            &env(),
        )
        .expect_err("invalid");
        let paths: Vec<&str> = e.errors.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "alerts.evaluation_interval",
            "alerts.receiver",
            "alerts.routes[0].match[0]",
            "alerts.silences[0].until",
            "alerts.external_labels.1bad",
            "alerts.external_labels.__reserved",
            "alerts.external_labels.empty",
            "alerts.external_url",
            "alerts.colour",
            "notifiers.slack",
            "notifiers.teams.webhook_url_env",
            "notifiers.pager.type",
            "notifiers.hook",
            "notifiers.hook.external_url",
            "notifiers.chat.max_alerts",
            "notifiers.chat.max_card_bytes",
            "notifiers.hook2.max_card_bytes",
        ] {
            assert!(paths.contains(&want), "missing {want} in {paths:?}\n{e}");
        }
    }

    /// A configuration still written in the removed rule dialect is refused, naming the old
    /// keys and showing the Prometheus rule to write instead (never silently ignored).
    #[test]
    fn the_removed_rule_dialect_is_an_error_with_the_rule_to_write() {
        let e = load_str(
            r##"
alerts:
  links: { runbook: "https://runbooks.example/x" }
  rules:
    - name: ErrorLogs
      expr: 'sidelight_log_records_total{level=~"error|critical"}'
      rate: 5m
      sum_by: [source]
      threshold: 0.5
      for: 2m
      labels: { team: web }
      summary: "{{ $labels.source }}: {{ $value }}/s (> {{ $threshold }})"
    - { name: Budget, slo: { service: checkout, objective: 99.9 } }
    - { name: NewExc, new_exception: { service: api } }
"##,
            "t",
            std::path::Path::new("."),
            &env(),
        )
        .expect_err("the dialect is refused");
        let text = e.to_string();
        for want in [
            "alerts.rules: is no longer read",
            "sum_by, op, threshold, slo, new_exception",
            "alerts.groups",
            "alerts.rule_files",
            "- alert: ErrorLogs",
            "alerts.rules[0]: write instead",
            "sum by (source) (rate(sidelight_log_records_total{level=~",
            "[5m])) > 0.5",
            "for: 2m",
            "severity: warning",
            "team: web",
            "(> 0.5)",
            "alerts.rules[1]: slo:",
            "SidelightErrorBudgetBurn",
            "alerts.rules[2]: new_exception:",
            "SidelightNewExceptionSinceDeploy",
            "alerts.links: is no longer read",
            "runbook_url",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        // The suggested rule is a Prometheus rule the agent loads.
        let suggested: String = text
            .split("alerts.rules[0]: write instead, under a group's rules:\n")
            .nth(1)
            .and_then(|t| t.split("\n  alerts.rules[1]").next())
            .expect("suggestion")
            .lines()
            .map(|l| format!("  {}\n", l.strip_prefix("    ").unwrap_or(l)))
            .collect();
        let doc = format!("groups:\n- name: g\n  rules:\n{suggested}");
        let rf = sidelight_rules::file::parse("suggested", &doc)
            .unwrap_or_else(|e| panic!("{e:?}\n{doc}"));
        assert_eq!(rf.groups[0].rules[0].name(), "ErrorLogs");
        assert_eq!(
            rf.groups[0].rules[0].query().text().trim(),
            "sum by (source) (rate(sidelight_log_records_total{level=~\"error|critical\"}[5m])) > 0.5"
        );
    }

    #[test]
    fn prometheus_rule_files_and_inline_groups() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::create_dir(dir.path().join("rules")).expect("mkdir");
        for (name, text) in [
            (
                "rules/a.yaml",
                "groups:\n- name: a\n  rules:\n  - record: x:rate5m\n    expr: sum(rate(x_total[5m]))\n",
            ),
            (
                "rules/b.yaml",
                "groups:\n- name: b\n  interval: 1m\n  rules:\n  - alert: High\n    expr: x:rate5m > 1\n    for: 2m\n",
            ),
            ("rules/notes.txt", "not rules"),
        ] {
            std::fs::write(dir.path().join(name), text).expect("write");
        }
        let c = load_str(
            "alerts:\n  rule_files: [\"rules/*.yaml\"]\n  groups:\n    - name: inline\n      rules:\n        - alert: Down\n          expr: up == 0\n",
            "t",
            dir.path(),
            &env(),
        )
        .expect("valid");
        let a = c.alerting.expect("alerting");
        let names: Vec<&str> = a.rule_groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "inline"]);
        assert_eq!(a.rule_files.len(), 2, "{:?}", a.rule_files);
        assert_eq!(a.rule_groups[1].interval_ms, Some(60_000));

        // Every problem with its place: a missing file, bad PromQL in a file, an unsupported
        // construct inline.
        std::fs::write(
            dir.path().join("rules/bad.yaml"),
            "groups:\n- name: bad\n  rules:\n  - alert: Bad\n    expr: rate(x[5m]\n",
        )
        .expect("write");
        let e = load_str(
            "alerts:\n  rule_files: [\"rules/*.yaml\", missing.yaml]\n  groups:\n    - name: inline\n      rules:\n        - record: r\n          expr: rate(x[5m:1m])\n",
            "t",
            dir.path(),
            &env(),
        )
        .expect_err("invalid");
        let text = e.to_string();
        for want in [
            "alerts.rule_files[1]",
            "bad.yaml",
            "groups[0].rules[0].expr",
            "alerts.groups[0].rules[0].expr",
            "a subquery is not supported",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
    }
}

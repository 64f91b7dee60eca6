//! The `alerts:` and `notifiers:` sections: their file shape (`Raw*`, unknown keys collected by
//! the loader in `config.rs`) and their validation into [`AlertingConfig`], every error with its
//! path. Secrets (bot tokens, webhook URLs, signing secrets) only from `*_file` / `*_env` keys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::deliver::{TEAMS_MAX_BYTES, TEAMS_MIN_CARD_BYTES};
use super::notify::{Inhibit, Route, Routing, Silence};
use super::rules::{
    BurnWindow, Cmp, Condition, Matcher, Millis, Rule, Selector, SloKind, ms, workbook_windows,
};
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
    links: RawLinks,
    rules: Vec<RawRule>,
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
            links: RawLinks::default(),
            rules: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
struct RawLinks {
    dashboard: Option<String>,
    runbook: Option<String>,
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

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
struct RawRule {
    name: String,
    expr: Option<String>,
    rate: Option<String>,
    sum_by: Option<Vec<String>>,
    op: Option<String>,
    threshold: Option<f64>,
    slo: Option<RawSlo>,
    new_exception: Option<RawNewException>,
    #[serde(rename = "for")]
    for_: Option<String>,
    keep_firing_for: Option<String>,
    severity: Option<String>,
    labels: BTreeMap<String, String>,
    summary: Option<String>,
    runbook: Option<String>,
    dashboard: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
struct RawSlo {
    service: Option<String>,
    span_kind: Option<String>,
    span_name: Option<String>,
    matchers: Vec<String>,
    /// Percent, e.g. 99.9.
    objective: Option<f64>,
    /// A latency objective: calls slower than this bucket bound are bad.
    latency: Option<String>,
    windows: Option<Vec<RawBurnWindow>>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
struct RawBurnWindow {
    long: String,
    short: String,
    factor: f64,
    severity: String,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
struct RawNewException {
    service: String,
    source: Option<String>,
    matchers: Vec<String>,
    window: Option<String>,
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
    /// How often rules are evaluated.
    pub evaluation_interval: Duration,
    /// The rules.
    pub rules: Vec<Rule>,
    /// Routes, default route, inhibition.
    pub routing: Routing,
    /// Silences from the file.
    pub silences: Vec<Silence>,
    /// Cap of series kept for rate windows.
    pub max_series: usize,
    /// Receivers by name.
    pub notifiers: BTreeMap<String, NotifierConfig>,
    /// The Slack signing secret, when ChatOps is configured.
    pub signing_secret: Option<Secret>,
}

impl AlertingConfig {
    /// The longest window any rule looks back.
    pub fn lookback(&self) -> Millis {
        self.rules
            .iter()
            .map(Rule::lookback)
            .max()
            .unwrap_or(0)
            .max(ms(self.evaluation_interval) * 4)
    }
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

    let mut notifiers = BTreeMap::new();
    let mut signing_secret = None;
    for (name, n) in notifiers_raw {
        let at = format!("notifiers.{name}");
        if let Some(cfg) = validate_notifier(&name, &at, n, base, env, &mut e, &mut signing_secret)
        {
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

    let mut rules = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, r) in raw.rules.into_iter().enumerate() {
        let at = format!("alerts.rules[{i}]");
        if r.name.trim().is_empty() {
            e.push(format!("{at}.name"), "must not be empty");
        } else if !names.insert(r.name.clone()) {
            e.push(format!("{at}.name"), format!("duplicate rule {:?}", r.name));
        }
        if let Some(rule) = validate_rule(&at, r, &raw.links, &mut e) {
            rules.push(rule);
        }
    }

    Some(AlertingConfig {
        evaluation_interval,
        rules,
        routing: Routing {
            routes,
            default,
            inhibit,
        },
        silences,
        max_series: raw.max_series,
        notifiers,
        signing_secret,
    })
}

fn validate_rule(at: &str, r: RawRule, links: &RawLinks, e: &mut Errs<'_>) -> Option<Rule> {
    let kinds = [r.expr.is_some(), r.slo.is_some(), r.new_exception.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if kinds != 1 {
        e.push(at, "needs exactly one of expr, slo, new_exception");
        return None;
    }
    let for_ = r
        .for_
        .as_ref()
        .map_or(0, |d| ms(e.duration(&format!("{at}.for"), d)));
    let keep_firing_for = r
        .keep_firing_for
        .as_ref()
        .map_or(0, |d| ms(e.duration(&format!("{at}.keep_firing_for"), d)));
    let (condition, default_summary) = if let Some(expr) = &r.expr {
        let selector = match Selector::parse(expr) {
            Ok(s) => s,
            Err(msg) => {
                e.push(format!("{at}.expr"), msg);
                return None;
            }
        };
        let op = match r.op.as_deref().map_or(Some(Cmp::Gt), Cmp::parse) {
            Some(op) => op,
            None => {
                e.push(format!("{at}.op"), "must be one of >, >=, <, <=, ==, !=");
                Cmp::Gt
            }
        };
        let Some(value) = r.threshold else {
            e.push(format!("{at}.threshold"), "is required with expr");
            return None;
        };
        let summary = format!(
            "{} is {{{{ $value }}}}{} ({} {})",
            selector.name,
            if r.rate.is_some() { "/s" } else { "" },
            op.as_str(),
            super::eval::fmt_value(value)
        );
        let cond = match &r.rate {
            Some(w) => {
                let window = ms(e.duration(&format!("{at}.rate"), w));
                if window <= 0 {
                    e.push(format!("{at}.rate"), "must be greater than 0");
                }
                Condition::Rate {
                    selector,
                    window,
                    sum_by: r.sum_by.clone(),
                    op,
                    value,
                }
            }
            None => Condition::Threshold {
                selector,
                sum_by: r.sum_by.clone(),
                op,
                value,
            },
        };
        (cond, summary)
    } else if let Some(slo) = &r.slo {
        let mut matchers = e.matchers(&format!("{at}.slo.matchers"), &slo.matchers);
        if let Some(s) = &slo.service {
            matchers.push(Matcher::eq("service_name", s));
        }
        if let Some(s) = &slo.span_kind {
            matchers.push(Matcher::eq("span_kind", s));
        }
        if let Some(s) = &slo.span_name {
            matchers.push(Matcher::eq("span_name", s));
        }
        let objective = slo.objective.unwrap_or(99.9);
        if !(objective > 0.0 && objective < 100.0) {
            e.push(
                format!("{at}.slo.objective"),
                "a percentage between 0 and 100 (exclusive), like 99.9",
            );
        }
        let kind = match &slo.latency {
            None => SloKind::Errors,
            Some(l) => SloKind::Latency(e.duration(&format!("{at}.slo.latency"), l).as_secs_f64()),
        };
        let windows = match &slo.windows {
            None => workbook_windows(),
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(j, w)| {
                    let p = format!("{at}.slo.windows[{j}]");
                    let long = ms(e.duration(&format!("{p}.long"), &w.long));
                    let short = ms(e.duration(&format!("{p}.short"), &w.short));
                    if short <= 0 || long <= short {
                        e.push(&p, "needs 0 < short < long");
                    }
                    if w.factor <= 0.0 {
                        e.push(format!("{p}.factor"), "must be greater than 0");
                    }
                    BurnWindow {
                        long,
                        short,
                        factor: w.factor,
                        severity: if w.severity.is_empty() {
                            "critical".into()
                        } else {
                            w.severity.clone()
                        },
                    }
                })
                .collect(),
        };
        let what = match kind {
            SloKind::Errors => "error budget".to_owned(),
            SloKind::Latency(l) => format!("latency budget (calls over {}s)", l),
        };
        (
            Condition::BurnRate {
                matchers,
                objective: objective / 100.0,
                kind,
                windows,
            },
            format!(
                "{{{{ $labels.service }}}} burns its {what} at {{{{ $value }}}}x ({{{{ $labels.slo_window }}}}: {{{{ $burn_short }}}}x short), objective {}%",
                super::eval::fmt_value(objective)
            ),
        )
    } else {
        let n = r.new_exception.as_ref()?;
        if n.service.trim().is_empty() {
            e.push(format!("{at}.new_exception.service"), "is required");
        }
        let mut matchers = e.matchers(&format!("{at}.new_exception.matchers"), &n.matchers);
        if let Some(s) = &n.source {
            matchers.push(Matcher::eq("source", s));
        }
        let window = n.window.as_ref().map_or(3_600_000, |w| {
            ms(e.duration(&format!("{at}.new_exception.window"), w))
        });
        (
            Condition::NewException {
                matchers,
                service: n.service.clone(),
                window,
            },
            "new exception {{ $labels.exception }} in {{ $labels.source }} since the last deploy of {{ $labels.service }} ({{ $minutes_since_deploy }} min ago): {{ $value }} occurrences".into(),
        )
    };
    Some(Rule {
        name: r.name,
        condition,
        for_,
        keep_firing_for,
        severity: r.severity.unwrap_or_else(|| "warning".into()),
        labels: r.labels,
        summary: r.summary.unwrap_or(default_summary),
        runbook: r.runbook.or_else(|| links.runbook.clone()),
        dashboard: r.dashboard.or_else(|| links.dashboard.clone()),
    })
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
  links: { dashboard: "https://grafana/d/svc?var-service={{ $labels.service }}" }
  rules:
    - name: ErrorLogs
      expr: 'sidelight_log_records_total{level=~"error|critical"}'
      rate: 5m
      sum_by: [source]
      threshold: 0.5
      for: 2m
      keep_firing_for: 5m
      labels: { team: web }
    - name: CheckoutBudget
      slo: { service: checkout, span_kind: SPAN_KIND_SERVER, objective: 99.5 }
    - name: CheckoutSlow
      slo: { service: checkout, objective: 99, latency: 300ms, windows: [ { long: 1h, short: 5m, factor: 14.4, severity: critical } ] }
    - name: NewException
      new_exception: { service: api, source: app }
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
        assert_eq!(a.rules.len(), 4);
        assert_eq!(a.notifiers.len(), 3);
        assert_eq!(a.routing.routes[0].receiver, "teams");
        assert_eq!(a.routing.routes[0].group_wait, 0);
        assert_eq!(
            a.routing.default.as_ref().map(|r| r.group_wait),
            Some(10_000)
        );
        assert_eq!(a.silences[0].ends_at, 1_893_456_000_000);
        assert_eq!(a.rules[0].for_, 120_000);
        assert_eq!(a.rules[0].keep_firing_for, 300_000);
        assert!(
            a.rules[1]
                .dashboard
                .as_deref()
                .is_some_and(|d| d.contains("var-service"))
        );
        assert_eq!(a.lookback(), 3 * 86_400_000);
        assert_eq!(
            a.signing_secret.as_ref().map(|s| s.expose()),
            Some("signing")
        );
        assert!(!format!("{:?}", a.notifiers).contains("xoxb-1-2"));
        let hook = &a.notifiers["hook"];
        assert_eq!(hook.max_alerts, 10);
        assert_eq!(hook.external_url.as_deref(), Some("https://agent.example"));
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
  rules:
    - { name: A, expr: 'x{', threshold: 1 }
    - { name: A, expr: x }
    - { name: B, slo: { objective: 100 }, expr: y, threshold: 1 }
    - { name: C, slo: { objective: 120, windows: [ { long: 5m, short: 1h, factor: 0 } ] } }
    - { name: D, expr: x, threshold: 1, op: "=>", colour: red }
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
            "alerts.rules[0].expr",
            "alerts.rules[1].name",
            "alerts.rules[1].threshold",
            "alerts.rules[2]",
            "alerts.rules[3].slo.objective",
            "alerts.rules[3].slo.windows[0]",
            "alerts.rules[3].slo.windows[0].factor",
            "alerts.rules[4].op",
            "alerts.rules[4].colour",
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
}

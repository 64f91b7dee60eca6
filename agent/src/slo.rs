//! `sidelight slo generate`: a small SLO spec in, a standard Prometheus rule file out.
//!
//! The spec names a service and its SLOs, each with an objective (percent), a period, and an
//! SLI given either as two series selectors (`events: { errors, total }`) or as a request
//! counter with the matcher that makes a request an error (`http_requests: { metric,
//! error_matcher }`). The output is what the shipped `alerts/` rules do for span metrics, for any
//! counter: recording rules for the error ratio over 5m, 30m, 1h, 2h, 6h, 1d and 3d, and the four
//! multi-window, multi-burn-rate alerts of the Google SRE workbook (chapter 5) — 2 % of the
//! budget in 1h (checked over 5m too), 5 % in 6h (30m), 10 % in 1d (2h), 10 % in 3d (6h); over a
//! 30-day period that is 14.4x, 6x, 3x and 1x — the first two paging, the last two tickets.
//!
//! Validation reports every problem at once with its YAML path. The generated text is loaded
//! back through `sidelight-rules` before it is returned, so what is written is a rule file the
//! agent (and Prometheus) loads. No rule dialect of our own: the output is plain Prometheus rules.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use promql_parser::label::METRIC_NAME;
use promql_parser::parser::{self, Expr};
use serde::Deserialize;

/// The error-ratio windows recorded, in the order written; the first five are evaluated every
/// minute, the last two (which change slowly and read days of samples) every 5 minutes.
const RATIO_WINDOWS: [&str; 7] = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"];
const LONG_RATIO_WINDOWS: usize = 2;

/// One multi-window burn-rate alert: it fires when the error ratio over both windows is above
/// `burn × (1 − objective)`, where `burn` spends `budget_share` of the period's error budget in
/// `long` (14.4 for 2 % in 1 h of 30 days).
struct BurnAlert {
    long: &'static str,
    long_ms: i64,
    long_text: &'static str,
    short: &'static str,
    short_text: &'static str,
    budget_share: f64,
    for_: &'static str,
    page: bool,
}

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

const BURN_ALERTS: [BurnAlert; 4] = [
    BurnAlert {
        long: "1h",
        long_ms: HOUR_MS,
        long_text: "hour",
        short: "5m",
        short_text: "5 minutes",
        budget_share: 0.02,
        for_: "2m",
        page: true,
    },
    BurnAlert {
        long: "6h",
        long_ms: 6 * HOUR_MS,
        long_text: "6 hours",
        short: "30m",
        short_text: "30 minutes",
        budget_share: 0.05,
        for_: "5m",
        page: true,
    },
    BurnAlert {
        long: "1d",
        long_ms: DAY_MS,
        long_text: "day",
        short: "2h",
        short_text: "2 hours",
        budget_share: 0.1,
        for_: "15m",
        page: false,
    },
    BurnAlert {
        long: "3d",
        long_ms: 3 * DAY_MS,
        long_text: "3 days",
        short: "6h",
        short_text: "6 hours",
        budget_share: 0.1,
        for_: "1h",
        page: false,
    },
];

/// Labels the generator sets on the alerts itself.
const GENERATED_LABELS: [&str; 5] = [
    "severity",
    "service",
    "long_window",
    "short_window",
    "burn_rate",
];

/// One problem in a spec: its YAML path (`slos[0].objective`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct SpecError {
    pub path: String,
    pub message: String,
}

impl SpecError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The spec's shape. Required keys are `Option`s so that every missing one is reported with its
// path (serde stops at the first); unknown keys are collected by `serde_ignored`.

#[derive(Debug, Default, Deserialize)]
struct RawSpec {
    service: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    slos: Vec<RawSlo>,
}

#[derive(Debug, Default, Deserialize)]
struct RawSlo {
    name: Option<String>,
    description: Option<String>,
    objective: Option<f64>,
    window: Option<String>,
    #[serde(default)]
    by: Vec<String>,
    service_label: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    sli: Option<RawSli>,
    #[serde(default)]
    alerting: RawAlerting,
}

#[derive(Debug, Default, Deserialize)]
struct RawSli {
    events: Option<RawEvents>,
    http_requests: Option<RawHttpRequests>,
}

#[derive(Debug, Default, Deserialize)]
struct RawEvents {
    errors: Option<String>,
    total: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawHttpRequests {
    metric: Option<String>,
    error_matcher: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawAlerting {
    name: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    page_severity: Option<String>,
    ticket_severity: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// The validated spec.

/// A validated spec: one service and its SLOs.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub service: String,
    pub slos: Vec<Slo>,
}

/// One validated SLO, with everything the rules are written from.
#[derive(Debug, Clone, PartialEq)]
pub struct Slo {
    pub name: String,
    pub description: Option<String>,
    /// Percent, in (0, 100).
    pub objective: f64,
    /// The SLO period as written (`30d`) and in milliseconds.
    pub window: String,
    pub window_ms: i64,
    /// Labels kept by the aggregation.
    pub by: Vec<String>,
    /// The label of `by` that names the service, when one spec covers many services.
    pub service_label: Option<String>,
    /// Labels on every recorded series (the spec's and the SLO's).
    pub labels: BTreeMap<String, String>,
    /// The error and total selectors.
    pub errors: String,
    pub total: String,
    /// What one event is, in the alerts' descriptions ("calls", "requests").
    pub noun: &'static str,
    pub alert: String,
    pub alert_labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub page_severity: String,
    pub ticket_severity: String,
}

/// Parses and validates a spec; every problem is reported, with its path. Warnings (valid but
/// probably not meant) come back with the spec.
pub fn parse(text: &str) -> Result<(Spec, Vec<String>), Vec<SpecError>> {
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)
        .map_err(|e| vec![SpecError::new("(file)", format!("not YAML: {e}"))])?;
    if value.is_null() {
        return Err(vec![SpecError::new("(file)", "empty spec")]);
    }
    let mut errors = Vec::new();
    let mut unknown = Vec::new();
    let raw: Option<RawSpec> = {
        let mut callback =
            |path: serde_ignored::Path<'_>| unknown.push(crate::config::ignored_path(&path));
        let de = serde_ignored::Deserializer::new(value, &mut callback);
        match serde_path_to_error::deserialize(de) {
            Ok(v) => Some(v),
            Err(e) => {
                let path = e.path().to_string();
                errors.push(SpecError::new(
                    if path == "." { "(file)".into() } else { path },
                    e.into_inner().to_string(),
                ));
                None
            }
        }
    };
    errors.extend(
        unknown
            .into_iter()
            .map(|path| SpecError::new(path, "unknown key")),
    );
    let Some(raw) = raw else {
        return Err(errors);
    };
    let mut warnings = Vec::new();
    let spec = validate(raw, &mut errors, &mut warnings);
    if errors.is_empty() {
        Ok((spec, warnings))
    } else {
        Err(errors)
    }
}

fn validate(raw: RawSpec, errors: &mut Vec<SpecError>, warnings: &mut Vec<String>) -> Spec {
    let service = match raw.service {
        Some(s) if s.trim().is_empty() => {
            errors.push(SpecError::new("service", "must not be empty"));
            String::new()
        }
        Some(s) if s.contains("{{") => {
            errors.push(SpecError::new(
                "service",
                "a name, not a template: to take each service's name from a label, set `service_label` on the SLO",
            ));
            s
        }
        Some(s) => s,
        None => {
            errors.push(SpecError::new(
                "service",
                "missing: the service these SLOs are for",
            ));
            String::new()
        }
    };
    label_names(&raw.labels, "labels", errors);
    if raw.slos.is_empty() {
        errors.push(SpecError::new("slos", "missing: at least one SLO"));
    }
    let mut names = BTreeSet::new();
    let slos = raw
        .slos
        .into_iter()
        .enumerate()
        .filter_map(|(i, slo)| {
            let path = format!("slos[{i}]");
            let slo = validate_slo(slo, &path, &service, &raw.labels, errors, warnings)?;
            if !names.insert(slo.name.clone()) {
                errors.push(SpecError::new(
                    format!("{path}.name"),
                    format!("{:?} is used by an earlier SLO", slo.name),
                ));
            }
            Some(slo)
        })
        .collect();
    Spec { service, slos }
}

fn validate_slo(
    raw: RawSlo,
    path: &str,
    service: &str,
    spec_labels: &BTreeMap<String, String>,
    errors: &mut Vec<SpecError>,
    warnings: &mut Vec<String>,
) -> Option<Slo> {
    let before = errors.len();
    let at = |key: &str| format!("{path}.{key}");
    let name = match raw.name {
        Some(n) if is_name(&n) => n,
        Some(n) => {
            errors.push(SpecError::new(
                at("name"),
                format!("{n:?}: letters, digits and `_`, not starting with a digit (it is part of the recorded series' names)"),
            ));
            n
        }
        None => {
            errors.push(SpecError::new(at("name"), "missing: e.g. `availability`"));
            String::new()
        }
    };
    let objective = match raw.objective {
        Some(o) if o > 0.0 && o < 100.0 => o,
        Some(o) => {
            errors.push(SpecError::new(
                at("objective"),
                format!("{o}: a percentage above 0 and below 100, e.g. 99.9"),
            ));
            o
        }
        None => {
            errors.push(SpecError::new(
                at("objective"),
                "missing: the percentage of good events, e.g. 99.9",
            ));
            99.9
        }
    };
    let window = raw.window.unwrap_or_else(|| "30d".into());
    let window_ms = match sidelight_rules::parse_duration(&window) {
        Ok(ms) if ms >= 3 * DAY_MS => ms,
        Ok(_) => {
            errors.push(SpecError::new(
                at("window"),
                format!("{window:?}: at least 3d (the longest burn-rate window)"),
            ));
            30 * DAY_MS
        }
        Err(e) => {
            errors.push(SpecError::new(at("window"), e));
            30 * DAY_MS
        }
    };
    let mut seen = BTreeSet::new();
    for (i, label) in raw.by.iter().enumerate() {
        if !is_label_name(label) {
            errors.push(SpecError::new(
                format!("{path}.by[{i}]"),
                format!("{label:?} is not a label name"),
            ));
        } else if !seen.insert(label) {
            errors.push(SpecError::new(
                format!("{path}.by[{i}]"),
                format!("{label:?} is listed twice"),
            ));
        }
    }
    if let Some(l) = &raw.service_label
        && !raw.by.contains(l)
    {
        errors.push(SpecError::new(
            at("service_label"),
            format!("{l:?} must be one of `by` (the alerts read it from the recorded series)"),
        ));
    }
    label_names(&raw.labels, &at("labels"), errors);
    let mut labels = spec_labels.clone();
    labels.extend(raw.labels);
    if raw.service_label.is_none() {
        if labels.contains_key("service") || raw.by.iter().any(|b| b == "service") {
            errors.push(SpecError::new(
                at("labels"),
                "`service` is set by the generator from the spec's `service`",
            ));
        }
        labels.insert("service".into(), service.to_owned());
    }
    for key in labels.keys() {
        if raw.by.contains(key) {
            errors.push(SpecError::new(
                at("labels"),
                format!("{key:?} is also in `by`: a recorded series cannot set a label it keeps"),
            ));
        }
    }

    let (errors_sel, total_sel, noun) = sli(raw.sli, &at("sli"), errors)?;

    let alerting = raw.alerting;
    let alert = match alerting.name {
        Some(n) => n,
        None => format!("{}{}ErrorBudgetBurn", camel(service), camel(&name)),
    };
    if !is_name(&alert) {
        errors.push(SpecError::new(
            at("alerting.name"),
            format!(
                "{alert:?} is not a valid alert name (letters, digits and `_`; set alerting.name)"
            ),
        ));
    }
    label_names(&alerting.labels, &at("alerting.labels"), errors);
    for key in alerting.labels.keys() {
        if GENERATED_LABELS.contains(&key.as_str()) {
            errors.push(SpecError::new(
                format!("{path}.alerting.labels.{key}"),
                "set by the generator (severities: alerting.page_severity / ticket_severity)",
            ));
        }
    }
    label_names(&alerting.annotations, &at("alerting.annotations"), errors);
    let severity = |v: Option<String>, key: &str, default: &str, errors: &mut Vec<SpecError>| {
        let v = v.unwrap_or_else(|| default.into());
        if v.trim().is_empty() {
            errors.push(SpecError::new(at(key), "must not be empty"));
        }
        v
    };
    let page_severity = severity(
        alerting.page_severity,
        "alerting.page_severity",
        "critical",
        errors,
    );
    let ticket_severity = severity(
        alerting.ticket_severity,
        "alerting.ticket_severity",
        "warning",
        errors,
    );
    if errors.len() > before {
        return None;
    }
    let budget = 1.0 - objective / 100.0;
    let page = burn_factor(&BURN_ALERTS[0], window_ms);
    if page * budget >= 1.0 {
        warnings.push(format!(
            "{path}: with an objective of {objective} % the {}x page alert needs an error ratio above {}, which cannot happen",
            number(page),
            number(page * budget)
        ));
    }
    Some(Slo {
        name,
        description: raw.description,
        objective,
        window,
        window_ms,
        by: raw.by,
        service_label: raw.service_label,
        labels,
        errors: errors_sel,
        total: total_sel,
        noun,
        alert,
        alert_labels: alerting.labels,
        annotations: alerting.annotations,
        page_severity,
        ticket_severity,
    })
}

/// The SLI's error and total selectors, and the noun for one event.
fn sli(
    raw: Option<RawSli>,
    path: &str,
    errors: &mut Vec<SpecError>,
) -> Option<(String, String, &'static str)> {
    let Some(raw) = raw else {
        errors.push(SpecError::new(
            path,
            "missing: `events: { errors, total }` or `http_requests: { metric, error_matcher }`",
        ));
        return None;
    };
    match (raw.events, raw.http_requests) {
        (Some(_), Some(_)) => {
            errors.push(SpecError::new(
                path,
                "give either `events` or `http_requests`, not both",
            ));
            None
        }
        (None, None) => {
            errors.push(SpecError::new(
                path,
                "missing: `events: { errors, total }` or `http_requests: { metric, error_matcher }`",
            ));
            None
        }
        (Some(ev), None) => {
            let e = required_selector(ev.errors, &format!("{path}.events.errors"), errors);
            let t = required_selector(ev.total, &format!("{path}.events.total"), errors);
            let (e, t) = (e?, t?);
            if e == t {
                errors.push(SpecError::new(
                    format!("{path}.events.errors"),
                    "the same selector as `total`: every event would be an error",
                ));
                return None;
            }
            Some((e, t, "calls"))
        }
        (None, Some(http)) => {
            let mpath = format!("{path}.http_requests.metric");
            let epath = format!("{path}.http_requests.error_matcher");
            let total = required_selector(http.metric, &mpath, errors);
            let matcher = match http.error_matcher {
                None => {
                    errors.push(SpecError::new(
                        &epath,
                        "missing: the matcher that makes a request an error, e.g. `http_response_status_code=~\"5..\"`",
                    ));
                    None
                }
                Some(m) => error_matcher(&m, &epath, errors),
            };
            let (total, matcher) = (total?, matcher?);
            let errs = with_matcher(&total, &matcher);
            // The combination is checked too (e.g. a matcher that repeats one of the metric's).
            let errs = selector(&errs, &epath, errors)?;
            Some((errs, total, "requests"))
        }
    }
}

fn required_selector(
    text: Option<String>,
    path: &str,
    errors: &mut Vec<SpecError>,
) -> Option<String> {
    match text {
        Some(t) => selector(&t, path, errors),
        None => {
            errors.push(SpecError::new(
                path,
                "missing: a series selector such as `http_requests_total{job=\"api\"}`",
            ));
            None
        }
    }
}

/// Checks that `text` is one instant series selector naming a metric; returns it trimmed.
fn selector(text: &str, path: &str, errors: &mut Vec<SpecError>) -> Option<String> {
    let text = text.trim();
    let mut bad = |m: String| {
        errors.push(SpecError::new(path, m));
        None
    };
    if text.contains('\n') {
        return bad(format!("{text:?}: write the selector on one line"));
    }
    match parser::parse(text) {
        Err(e) => bad(format!("{text:?} is not valid PromQL: {}", e.trim())),
        Ok(Expr::VectorSelector(vs)) => {
            if vs.offset.is_some() || vs.at.is_some() {
                return bad(format!(
                    "{text:?}: no `offset` or `@`: the generator reads the windows up to now"
                ));
            }
            if !vs.matchers.or_matchers.is_empty() {
                return bad(format!("{text:?}: `or` inside a selector is not supported"));
            }
            let named =
                vs.name.is_some() || vs.matchers.matchers.iter().any(|m| m.name == METRIC_NAME);
            if !named {
                return bad(format!("{text:?} must name a metric (a counter)"));
            }
            Some(text.to_owned())
        }
        Ok(Expr::MatrixSelector(_)) => bad(format!(
            "{text:?} is a range selector: give the instant selector; the generator adds the windows (5m to 3d)"
        )),
        Ok(_) => bad(format!(
            "{text:?} is not a series selector: give one selector such as `x_total{{a=\"b\"}}`; the generator wraps it in rate() and sum()"
        )),
    }
}

/// Checks one or more matchers (`code=~"5.."`, comma-separated, as written inside braces).
fn error_matcher(text: &str, path: &str, errors: &mut Vec<SpecError>) -> Option<String> {
    let text = text.trim();
    let inner = text
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .unwrap_or(text)
        .trim();
    let mut bad = |m: String| {
        errors.push(SpecError::new(path, m));
        None
    };
    if inner.is_empty() || inner.contains('\n') {
        return bad(format!(
            "{text:?}: one or more matchers on one line, e.g. `http_response_status_code=~\"5..\"`"
        ));
    }
    match parser::parse(&format!("x{{{inner}}}")) {
        Ok(Expr::VectorSelector(vs)) if vs.matchers.or_matchers.is_empty() => {
            if vs.matchers.matchers.iter().any(|m| m.name == METRIC_NAME) {
                return bad(format!(
                    "{text:?}: the metric name comes from `metric`, not the error matcher"
                ));
            }
            Some(inner.to_owned())
        }
        Ok(_) => bad(format!(
            "{text:?}: label matchers only, e.g. `http_response_status_code=~\"5..\"`"
        )),
        Err(e) => bad(format!("{text:?}: not label matchers: {}", e.trim())),
    }
}

/// `metric{a="b"}` with `extra` matchers added: `metric{a="b",extra}`.
fn with_matcher(selector: &str, extra: &str) -> String {
    match selector.strip_suffix('}') {
        Some(head) => {
            let head = head.trim_end();
            if head.ends_with('{') {
                format!("{head}{extra}}}")
            } else {
                format!("{head},{extra}}}")
            }
        }
        None => format!("{selector}{{{extra}}}"),
    }
}

fn label_names(map: &BTreeMap<String, String>, path: &str, errors: &mut Vec<SpecError>) {
    for key in map.keys() {
        if !is_label_name(key) {
            errors.push(SpecError::new(
                format!("{path}.{key}"),
                "not a label name (letters, digits and `_`, not starting with a digit or `__`)",
            ));
        }
    }
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_label_name(s: &str) -> bool {
    is_name(s) && !s.starts_with("__")
}

/// `checkout-api` → `CheckoutApi`.
fn camel(s: &str) -> String {
    s.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// The burn rate that spends the alert's share of the budget in its long window.
fn burn_factor(a: &BurnAlert, window_ms: i64) -> f64 {
    a.budget_share * window_ms as f64 / a.long_ms as f64
}

/// A number as a rule reads best: at most 4 decimals, no trailing zeros (`14.4`, `6`).
fn number(x: f64) -> String {
    let s = format!("{x:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

/// A ratio from a percentage without float noise in the text (`99.9` → `0.999`).
fn ratio(percent: f64) -> String {
    let s = format!("{:.12}", percent / 100.0);
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

// ---------------------------------------------------------------------------------------------
// Output.

/// A YAML double-quoted scalar (JSON's string syntax is a subset of YAML's).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// `expr` as a YAML block scalar at `indent` spaces.
fn block(out: &mut String, key: &str, text: &str, indent: usize) {
    let pad = " ".repeat(indent);
    let _ = writeln!(out, "{pad}{key}: |");
    for line in text.lines() {
        let _ = writeln!(out, "{pad}  {line}");
    }
}

fn map(out: &mut String, key: &str, entries: &[(String, String)], indent: usize) {
    if entries.is_empty() {
        return;
    }
    let pad = " ".repeat(indent);
    let _ = writeln!(out, "{pad}{key}:");
    for (k, v) in entries {
        let _ = writeln!(out, "{pad}  {k}: {}", quoted(v));
    }
}

/// `sum by (a, b) (rate(sel[w]))`, or `sum(rate(sel[w]))` without grouping.
fn sum_rate(by: &[String], selector: &str, window: &str) -> String {
    if by.is_empty() {
        format!("sum(rate({selector}[{window}]))")
    } else {
        format!("sum by ({}) (rate({selector}[{window}]))", by.join(", "))
    }
}

impl Slo {
    /// The recorded error ratio's name: `level:<name>_error_ratio:rate<window>`, `level` the
    /// labels the series keeps.
    pub fn ratio_record(&self, window: &str) -> String {
        let mut level: Vec<&str> = Vec::new();
        if self.service_label.is_none() {
            level.push("service");
        }
        level.extend(self.by.iter().map(String::as_str));
        format!("{}:{}_error_ratio:rate{window}", level.join("_"), self.name)
    }

    fn ratio_expr(&self, window: &str) -> String {
        let errors = sum_rate(&self.by, &self.errors, window);
        let total = sum_rate(&self.by, &self.total, window);
        format!("(\n  {errors}\n  or\n  0 * {total}\n)\n/\n{total}\n")
    }

    /// How the alerts name the service: the literal, or the label's value.
    fn service_text(&self, service: &str) -> String {
        match &self.service_label {
            Some(l) => format!("{{{{ $labels.{l} }}}}"),
            None => service.to_owned(),
        }
    }
}

/// Writes the rule file for a validated spec; `source` is named in the header comment. The text
/// is loaded back through the agent's rule loader: an error there (say, a template in an
/// annotation that does not parse) is reported as a spec error.
pub fn generate(spec: &Spec, source: &str) -> Result<String, Vec<SpecError>> {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Generated by `sidelight slo generate` from {source}.\n\
         # Change the spec and generate again rather than editing this file. Standard Prometheus\n\
         # rules: load them in Prometheus (rule_files) or in the agent (alerts.rule_files).\n\
         #\n\
         # Multi-window, multi-burn-rate alerts (Google SRE workbook, chapter 5): each alert needs\n\
         # the error ratio over both of its windows above burn rate x (1 - objective). The burn\n\
         # rates spend 2 % of the period's error budget in 1h, 5 % in 6h, 10 % in 1d and 10 % in 3d\n\
         # (14.4x, 6x, 3x and 1x over 30 days); the first two page, the last two are tickets.\n\
         groups:"
    );
    for (i, slo) in spec.slos.iter().enumerate() {
        write_slo(&mut out, &spec.service, slo, i);
    }
    match sidelight_rules::file::parse(source, &out) {
        Ok(_) => Ok(out),
        Err(errs) => Err(errs
            .into_iter()
            .map(|e| {
                SpecError::new(
                    "(generated rules)",
                    format!(
                        "{}: {} (check the spec's labels and annotations)",
                        e.path, e.message
                    ),
                )
            })
            .collect()),
    }
}

fn write_slo(out: &mut String, service: &str, slo: &Slo, index: usize) {
    let prefix = format!("{service}-{}", slo.name);
    let budget_text = ratio(slo.objective);
    let _ = writeln!(
        out,
        "{}  # --- {service} / {}: {} % of events good over {} ---",
        if index > 0 { "\n" } else { "" },
        slo.name,
        number(slo.objective),
        slo.window
    );
    if let Some(d) = &slo.description {
        for line in d.lines() {
            let _ = writeln!(out, "  # {line}");
        }
    }
    let _ = writeln!(out, "  # Errors: {}\n  # Total:  {}", slo.errors, slo.total);
    let labels: Vec<(String, String)> = slo
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let groups = [
        (
            format!("{prefix}-slo-error-ratios"),
            "1m",
            &RATIO_WINDOWS[..RATIO_WINDOWS.len() - LONG_RATIO_WINDOWS],
        ),
        (
            format!("{prefix}-slo-error-ratios-long"),
            "5m",
            &RATIO_WINDOWS[RATIO_WINDOWS.len() - LONG_RATIO_WINDOWS..],
        ),
    ];
    for (name, interval, windows) in groups {
        let _ = writeln!(
            out,
            "  - name: {}\n    interval: {interval}\n    rules:",
            quoted(&name)
        );
        for w in windows {
            let _ = writeln!(out, "      - record: {}", slo.ratio_record(w));
            block(out, "expr", &slo.ratio_expr(w), 8);
            map(out, "labels", &labels, 8);
        }
    }
    let service_text = slo.service_text(service);
    let on = if slo.by.is_empty() {
        "and".to_owned()
    } else {
        format!("and on ({})", slo.by.join(", "))
    };
    let period = if slo.window_ms % DAY_MS == 0 {
        format!("{}-day", slo.window_ms / DAY_MS)
    } else {
        slo.window.clone()
    };
    for (page, group) in [(true, "slo"), (false, "slo-slow")] {
        let _ = writeln!(
            out,
            "  - name: {}\n    interval: {}\n    rules:",
            quoted(&format!("{prefix}-{group}")),
            if page { "1m" } else { "5m" }
        );
        for a in BURN_ALERTS.iter().filter(|a| a.page == page) {
            let burn = number(burn_factor(a, slo.window_ms));
            let threshold = format!("({burn} * (1 - {budget_text}))");
            let expr = format!(
                "(\n  {}\n    > {threshold}\n)\n{on}\n(\n  {}\n    > {threshold}\n)\n",
                slo.ratio_record(a.long),
                slo.ratio_record(a.short)
            );
            let _ = writeln!(out, "      - alert: {}{}", slo.alert, a.long);
            block(out, "expr", &expr, 8);
            let _ = writeln!(out, "        for: {}", a.for_);
            let severity = if page {
                &slo.page_severity
            } else {
                &slo.ticket_severity
            };
            let mut alert_labels = vec![
                ("severity".to_owned(), severity.clone()),
                ("service".to_owned(), service_text.clone()),
                ("long_window".to_owned(), a.long.to_owned()),
                ("short_window".to_owned(), a.short.to_owned()),
                ("burn_rate".to_owned(), burn.clone()),
            ];
            alert_labels.extend(slo.alert_labels.iter().map(|(k, v)| (k.clone(), v.clone())));
            map(out, "labels", &alert_labels, 8);
            // Days until the budget is gone at the threshold: the long window over its share.
            let days = a.long_ms as f64 / a.budget_share / DAY_MS as f64;
            let (summary, consequence) = if burn == "1" {
                (
                    format!("{service_text} is spending its error budget faster than it accrues"),
                    format!("above its error budget: the {period} budget will not last the period"),
                )
            } else {
                let about = if (days - days.round()).abs() > 1e-9 {
                    "about "
                } else {
                    ""
                };
                let n = days.round();
                let summary = if burn_factor(a, slo.window_ms) < 1.0 {
                    format!(
                        "{service_text} is spending its error budget at {burn}x the rate it accrues"
                    )
                } else {
                    format!("{service_text} is burning its error budget {burn}x too fast")
                };
                (
                    summary,
                    format!(
                        "more than {burn} times its error budget: at this rate the {period} budget is gone in {about}{} day{}",
                        number(n),
                        if n == 1.0 { "" } else { "s" }
                    ),
                )
            };
            let description = format!(
                "{{{{ $value | humanizePercentage }}}} of {service_text}'s {} failed over the last {} (and over the last {}), {consequence}.",
                slo.noun, a.long_text, a.short_text
            );
            let mut annotations = BTreeMap::from([
                ("summary".to_owned(), summary),
                ("description".to_owned(), description),
            ]);
            annotations.extend(slo.annotations.clone());
            // summary and description first, as in the shipped rules, then the spec's.
            let mut ordered: Vec<(String, String)> = Vec::new();
            for key in ["summary", "description"] {
                if let Some(v) = annotations.remove(key) {
                    ordered.push((key.to_owned(), v));
                }
            }
            ordered.extend(annotations);
            map(out, "annotations", &ordered, 8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_minimal_spec_generates_loadable_rules() {
        let (spec, warnings) = parse(
            "service: checkout\nslos:\n  - name: availability\n    objective: 99.9\n    sli:\n      http_requests:\n        metric: http_server_request_duration_seconds_count{service_name=\"checkout\"}\n        error_matcher: http_response_status_code=~\"5..\"\n",
        )
        .map_err(|e| format!("{e:?}"))
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(warnings.is_empty(), "{warnings:?}");
        let slo = &spec.slos[0];
        assert_eq!(slo.window, "30d");
        assert_eq!(
            slo.errors,
            "http_server_request_duration_seconds_count{service_name=\"checkout\",http_response_status_code=~\"5..\"}"
        );
        assert_eq!(slo.alert, "CheckoutAvailabilityErrorBudgetBurn");
        assert_eq!(
            slo.labels.get("service").map(String::as_str),
            Some("checkout")
        );
        assert_eq!(
            slo.ratio_record("5m"),
            "service:availability_error_ratio:rate5m"
        );
        let text = generate(&spec, "checkout.yaml").unwrap_or_else(|e| panic!("{e:?}"));
        let file = sidelight_rules::file::parse("out", &text).unwrap_or_else(|e| panic!("{e:?}"));
        let names: Vec<&str> = file
            .groups
            .iter()
            .flat_map(|g| g.rules.iter().map(|r| r.name()))
            .collect();
        assert_eq!(
            names,
            [
                "service:availability_error_ratio:rate5m",
                "service:availability_error_ratio:rate30m",
                "service:availability_error_ratio:rate1h",
                "service:availability_error_ratio:rate2h",
                "service:availability_error_ratio:rate6h",
                "service:availability_error_ratio:rate1d",
                "service:availability_error_ratio:rate3d",
                "CheckoutAvailabilityErrorBudgetBurn1h",
                "CheckoutAvailabilityErrorBudgetBurn6h",
                "CheckoutAvailabilityErrorBudgetBurn1d",
                "CheckoutAvailabilityErrorBudgetBurn3d",
            ]
        );
        assert!(text.contains("> (14.4 * (1 - 0.999))"), "{text}");
        assert!(text.contains("> (1 * (1 - 0.999))"), "{text}");
        assert!(text.contains("burn_rate: \"6\""), "{text}");
        assert!(text.contains("of checkout's requests failed"), "{text}");
    }

    #[test]
    fn burn_rates_follow_the_period() {
        let spec = "service: s\nslos:\n  - name: a\n    objective: 99.5\n    window: 28d\n    sli: { events: { errors: 'x_total{code=\"5\"}', total: x_total } }\n";
        let (spec, _) = parse(spec).unwrap_or_else(|e| panic!("{e:?}"));
        let text = generate(&spec, "s.yaml").unwrap_or_else(|e| panic!("{e:?}"));
        // 2 % of 28 days in 1 h: 13.44; 5 % in 6 h: 5.6; 10 % in 1 d: 2.8; 10 % in 3 d: 0.9333.
        for t in ["13.44", "5.6", "2.8", "0.9333"] {
            assert!(
                text.contains(&format!("> ({t} * (1 - 0.995))")),
                "{t}: {text}"
            );
        }
        assert!(
            text.contains("the 28-day budget is gone in about 2 days"),
            "{text}"
        );
        assert!(text.contains("sum(rate(x_total[3d]))"), "{text}");
        // No grouping: the two windows' series are matched on their (equal) labels.
        assert!(text.contains("\n          and\n"), "{text}");
        assert!(text.contains("at 0.9333x the rate it accrues"), "{text}");
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let errs = errors_of(
            "service: checkout\ncolour: red\nlabels: { 9bad: x }\nslos:\n  - name: has-dash\n    objective: 100\n    window: 1d\n    by: [route, route]\n    service_label: job\n    sli:\n      events: { errors: 'rate(x[5m])', total: 'x[5m]' }\n      http_requests: { metric: x }\n    alerting:\n      labels: { severity: page }\n  - objective: 99\n    window: soon\n    sli:\n      http_requests: { metric: '{job=\"a\"}', error_matcher: '' }\n  - name: avail\n    objective: 99.9\n    sli:\n      events: { errors: 'x offset 5m', total: 'sum(x)' }\n",
        );
        let want = [
            "colour: unknown key",
            "labels.9bad: not a label name",
            "slos[0].name: \"has-dash\": letters, digits and `_`",
            "slos[0].objective: 100: a percentage above 0 and below 100",
            "slos[0].window: \"1d\": at least 3d",
            "slos[0].by[1]: \"route\" is listed twice",
            "slos[0].service_label: \"job\" must be one of `by`",
            "slos[0].sli: give either `events` or `http_requests`, not both",
            "slos[1].name: missing",
            "slos[1].window: not a valid duration string: \"soon\"",
            "slos[1].sli.http_requests.metric: \"{job=\\\"a\\\"}\" must name a metric",
            "slos[1].sli.http_requests.error_matcher: \"\": one or more matchers",
            "slos[2].sli.events.errors: \"x offset 5m\": no `offset` or `@`",
            "slos[2].sli.events.total: \"sum(x)\" is not a series selector",
        ];
        for w in want {
            assert!(
                errs.iter().any(|e| e.starts_with(w)),
                "missing {w:?} in {errs:#?}"
            );
        }
        assert!(errors_of("").iter().any(|e| e.contains("empty spec")));
        assert!(
            errors_of("service: a\nslos: []\n")
                .iter()
                .any(|e| e.starts_with("slos: missing"))
        );
        assert!(
            errors_of("slos:\n  - { name: a, objective: 99, sli: { events: { errors: 'x{a=\"1\"}', total: x } } }\n")
                .iter()
                .any(|e| e.starts_with("service: missing"))
        );
        assert!(
            errors_of("service: a\nslos:\n  - { name: a, objective: high, sli: {} }\n")
                .iter()
                .any(|e| e.starts_with("slos[0].objective:")),
        );
        assert!(
            errors_of("service: a\nslos:\n  - { name: a, objective: 99, sli: { events: { errors: 'x', total: x } } }\n")
                .iter()
                .any(|e| e.contains("same selector as `total`"))
        );
        assert!(
            errors_of("service: a\nslos:\n  - { name: a, objective: 99, sli: { events: { errors: 'x{', total: x } } }\n")
                .iter()
                .any(|e| e.starts_with("slos[0].sli.events.errors: \"x{\" is not valid PromQL"))
        );
        assert!(
            errors_of("service: a\nslos:\n  - { name: a, objective: 99, sli: { events: { errors: 'x{a=\"1\"}', total: x } } }\n  - { name: a, objective: 99, sli: { events: { errors: 'x{a=\"1\"}', total: x } } }\n")
                .iter()
                .any(|e| e.starts_with("slos[1].name: \"a\" is used by an earlier SLO"))
        );
    }

    #[test]
    fn a_bad_annotation_template_is_reported() {
        let (spec, _) = parse(
            "service: a\nslos:\n  - name: a\n    objective: 99\n    sli: { events: { errors: 'x{a=\"1\"}', total: x } }\n    alerting:\n      annotations: { runbook_url: '{{ $labels.x ' }\n",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let errs = generate(&spec, "a.yaml").err().unwrap_or_default();
        assert!(
            errs.iter()
                .any(|e| e.path == "(generated rules)" && e.message.contains("annotations")),
            "{errs:?}"
        );
    }

    #[test]
    fn a_low_objective_warns_that_the_page_alert_cannot_fire() {
        let (_, warnings) = parse(
            "service: a\nslos:\n  - { name: a, objective: 90, sli: { events: { errors: 'x{a=\"1\"}', total: x } } }\n",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(
            warnings.iter().any(|w| w.contains("cannot happen")),
            "{warnings:?}"
        );
    }

    /// The spec equivalent to the shipped span-metrics SLO gives the shipped error-ratio
    /// recording rules exactly, and the shipped burn-rate alerts with the objective written in
    /// instead of read from `service_name:slo_availability:objective` (same thresholds, to the
    /// last bit: `14.4 * (1 - 0.999)` either way).
    #[test]
    fn the_shipped_slo_rules_are_what_the_equivalent_spec_generates() {
        let spec_text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../alerts/slo/sidelight-availability.slo.yaml"
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let (spec, _) = parse(&spec_text).unwrap_or_else(|e| panic!("{e:?}"));
        let text = generate(&spec, "spec").unwrap_or_else(|e| panic!("{e:?}"));
        let generated =
            sidelight_rules::file::parse("generated", &text).unwrap_or_else(|e| panic!("{e:?}"));
        let shipped = |f: &str| {
            let path = format!("{}/../alerts/{f}", env!("CARGO_MANIFEST_DIR"));
            sidelight_rules::file::load_file(std::path::Path::new(&path))
                .unwrap_or_else(|e| panic!("{e:?}"))
        };
        let (recording, alerting) = (
            shipped("sidelight-recording.yaml"),
            shipped("sidelight-alerts.yaml"),
        );
        let find = |file: &sidelight_rules::RuleFile, name: &str| {
            file.groups
                .iter()
                .find(|g| g.name == name)
                .unwrap_or_else(|| panic!("no group {name}"))
                .clone()
        };
        let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        use sidelight_rules::Rule;
        let pairs = [
            (
                "sidelight-slo-error-ratios",
                "sidelight-traces_span_metrics-slo-error-ratios",
                &recording,
            ),
            (
                "sidelight-slo-error-ratios-long",
                "sidelight-traces_span_metrics-slo-error-ratios-long",
                &recording,
            ),
            (
                "sidelight-slo",
                "sidelight-traces_span_metrics-slo",
                &alerting,
            ),
            (
                "sidelight-slo-slow",
                "sidelight-traces_span_metrics-slo-slow",
                &alerting,
            ),
        ];
        for (shipped_name, generated_name, file) in pairs {
            let (a, b) = (find(file, shipped_name), find(&generated, generated_name));
            assert_eq!(a.interval_ms, b.interval_ms, "{shipped_name}");
            assert_eq!(a.rules.len(), b.rules.len(), "{shipped_name}");
            for (x, y) in a.rules.iter().zip(&b.rules) {
                match (x, y) {
                    (Rule::Recording(x), Rule::Recording(y)) => {
                        assert_eq!(x.record, y.record);
                        assert_eq!(norm(x.expr.text()), norm(y.expr.text()), "{}", x.record);
                        assert_eq!(x.labels, y.labels, "{}", x.record);
                    }
                    (Rule::Alerting(x), Rule::Alerting(y)) => {
                        assert_eq!(x.alert, y.alert);
                        let burn = &x.labels["burn_rate"];
                        let shipped_expr = norm(x.expr.text()).replace(
                            &format!("on (service_name) ({burn} * (1 - service_name:slo_availability:objective))"),
                            &format!("({burn} * (1 - 0.999))"),
                        );
                        assert_eq!(shipped_expr, norm(y.expr.text()), "{}", x.alert);
                        assert_eq!(x.for_ms, y.for_ms, "{}", x.alert);
                        assert_eq!(x.labels, y.labels, "{}", x.alert);
                        assert_eq!(x.annotations, y.annotations, "{}", x.alert);
                    }
                    _ => panic!("{shipped_name}: rule kinds differ"),
                }
            }
        }
    }
}

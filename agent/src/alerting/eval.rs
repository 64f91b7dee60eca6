//! The pure rule evaluator: `(now, history, deploys, rules, alerts)` in, alerts updated and
//! transitions out. No IO and no clock.
//!
//! Per rule instance (the rule plus the labels of what it matched): inactive → *pending* when the
//! condition holds → *firing* once it held for `for` → *resolved* once it has not held for
//! `keep_firing_for`. A pending alert whose condition clears is dropped without a word. Resolved
//! alerts stay visible (API, messages) for [`RESOLVED_RETENTION`], then are dropped.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::expo::Labels;
use super::history::{Hint, History, SeriesId};
use super::rules::{Condition, Millis, Rule, SPAN_BUCKETS, SPAN_CALLS, SPAN_COUNT, SloKind};

/// How long resolved alerts stay listed.
pub const RESOLVED_RETENTION: Millis = 15 * 60_000;

/// The span status of errors.
pub const STATUS_ERROR: &str = "STATUS_CODE_ERROR";

/// An alert's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Active, waiting for `for`.
    Pending,
    /// Firing.
    Firing,
    /// Was firing, is no longer.
    Resolved,
}

/// One alert (a rule instance).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// `alertname` + labels: the identity.
    pub fingerprint: String,
    /// Labels: `alertname`, `severity`, the rule's and the instance's.
    pub labels: BTreeMap<String, String>,
    /// The rendered summary.
    pub summary: String,
    /// Rendered runbook link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runbook: Option<String>,
    /// Rendered dashboard link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard: Option<String>,
    /// The value that made it active (the last one while active).
    pub value: f64,
    /// Other named values (`threshold`, `burn_short`, ...).
    #[serde(default)]
    pub values: BTreeMap<String, f64>,
    /// State.
    pub state: State,
    /// When the condition first held.
    pub active_at: Millis,
    /// When it started firing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fired_at: Option<Millis>,
    /// When it resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<Millis>,
    /// The last evaluation at which the condition held.
    pub last_active: Millis,
}

impl Alert {
    /// `alertname`.
    pub fn name(&self) -> &str {
        self.labels.get("alertname").map_or("", String::as_str)
    }

    /// `severity`.
    pub fn severity(&self) -> &str {
        self.labels.get("severity").map_or("", String::as_str)
    }

    /// The service it concerns (`service`, else `service_name`, else `target`, else `source`).
    pub fn service(&self) -> Option<&str> {
        ["service", "service_name", "target", "source"]
            .iter()
            .find_map(|k| self.labels.get(*k))
            .map(String::as_str)
    }
}

/// What happened to an alert in one evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Started firing.
    Fired(String),
    /// Resolved.
    Resolved(String),
}

/// The last successful deployment of a service, for log rules and messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployInfo {
    /// When it finished (ms).
    pub at: Millis,
    /// Head commit.
    pub commit: String,
    /// Version.
    pub version: String,
}

/// What one evaluation changed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    /// Fired and resolved alerts.
    pub transitions: Vec<Transition>,
    /// Alerts created or changed (to persist).
    pub changed: Vec<String>,
    /// Alerts dropped (to delete).
    pub removed: Vec<String>,
}

/// Inputs besides the history.
#[derive(Debug, Default)]
pub struct Context {
    /// Last deployment per service.
    pub deploys: HashMap<String, DeployInfo>,
    /// When each (source, exception) was first seen (kept across restarts by the edge).
    pub first_seen: BTreeMap<(String, String), Millis>,
    /// (source, exception) pairs first seen in this evaluation (to persist).
    pub newly_seen: Vec<(String, String, Millis)>,
}

/// One active instance of a rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// Instance labels (what the rule matched; no `alertname` / `severity`).
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
    /// Other values.
    pub values: BTreeMap<String, f64>,
    /// Severity override (burn-rate pairs).
    pub severity: Option<String>,
}

fn to_map(labels: &Labels) -> BTreeMap<String, String> {
    labels.iter().cloned().collect()
}

fn group_key(labels: &Labels, by: &[String]) -> BTreeMap<String, String> {
    by.iter()
        .filter_map(|k| {
            labels
                .iter()
                .find(|(l, _)| l == k)
                .map(|(_, v)| (k.clone(), v.clone()))
        })
        .collect()
}

fn label<'a>(labels: &'a Labels, name: &str) -> &'a str {
    labels
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

/// How a span-metric series counts in a burn-rate ratio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// A call counter: adds to the total, and to the bad ones when it counts errors.
    Calls { error: bool },
    /// The duration count: adds to the total and, until the bucket is subtracted, to the bad.
    Count,
    /// The `le` bucket of a latency objective: its calls are good.
    Bucket,
}

/// What one rule reads, resolved to series ids: the matchers run once per change of the set of
/// series (or of the rules), never per evaluation.
#[derive(Debug, Clone)]
enum RulePlan {
    /// Threshold and rate rules: the series, each with the index of its output group (its own
    /// labels, or the `sum_by` key); groups are sorted by labels.
    Grouped {
        series: Vec<(SeriesId, usize)>,
        groups: Vec<BTreeMap<String, String>>,
    },
    /// Burn-rate rules: the series with their service index and part; services sorted.
    Burn {
        series: Vec<(SeriesId, usize, Part)>,
        services: Vec<String>,
    },
    /// New-exception rules: the series read.
    Series(Vec<SeriesId>),
}

/// Which series each rule reads. Build it with [`Plan::new`] when the rules or
/// [`History::generation`] change, and evaluate with [`evaluate_with`].
#[derive(Debug, Clone)]
pub struct Plan {
    generation: u64,
    rules: Vec<RulePlan>,
}

impl Plan {
    /// The plan of `rules` over the series `history` keeps now.
    pub fn new(rules: &[Rule], history: &History) -> Self {
        Self {
            generation: history.generation(),
            rules: rules.iter().map(|r| plan_rule(r, history)).collect(),
        }
    }

    /// Whether the plan still describes `history`'s series (the rules are the caller's part).
    pub fn is_current(&self, history: &History, rules: &[Rule]) -> bool {
        self.generation == history.generation() && self.rules.len() == rules.len()
    }
}

fn grouped<'a>(
    series: impl Iterator<Item = (SeriesId, &'a Labels)>,
    sum_by: Option<&[String]>,
) -> RulePlan {
    let keyed: Vec<(SeriesId, BTreeMap<String, String>)> = series
        .map(|(id, l)| {
            let key = match sum_by {
                Some(by) => group_key(l, by),
                None => to_map(l),
            };
            (id, key)
        })
        .collect();
    let mut index: BTreeMap<BTreeMap<String, String>, usize> =
        keyed.iter().map(|(_, k)| (k.clone(), 0)).collect();
    for (i, v) in index.values_mut().enumerate() {
        *v = i;
    }
    let series = keyed
        .iter()
        .filter_map(|(id, k)| index.get(k).map(|g| (*id, *g)))
        .collect();
    RulePlan::Grouped {
        series,
        groups: index.into_keys().collect(),
    }
}

fn plan_rule(rule: &Rule, history: &History) -> RulePlan {
    match &rule.condition {
        Condition::Threshold {
            selector, sum_by, ..
        }
        | Condition::Rate {
            selector, sum_by, ..
        } => grouped(
            history
                .ids_of(&selector.name)
                .filter(|(_, l)| selector.matches(&selector.name, l)),
            sum_by.as_deref(),
        ),
        Condition::BurnRate { matchers, kind, .. } => {
            let ok = |l: &Labels| matchers.iter().all(|m| m.matches(l));
            let mut series: Vec<(SeriesId, &str, Part)> = Vec::new();
            match kind {
                SloKind::Errors => {
                    for (id, l) in history.ids_of(SPAN_CALLS).filter(|(_, l)| ok(l)) {
                        let error = label(l, "status_code") == STATUS_ERROR;
                        series.push((id, label(l, "service_name"), Part::Calls { error }));
                    }
                }
                SloKind::Latency(le) => {
                    for (id, l) in history.ids_of(SPAN_COUNT).filter(|(_, l)| ok(l)) {
                        series.push((id, label(l, "service_name"), Part::Count));
                    }
                    for (id, l) in history.ids_of(SPAN_BUCKETS).filter(|(_, l)| ok(l)) {
                        let bound: Option<f64> = label(l, "le").parse().ok();
                        if bound.is_none_or(|b| (b - le).abs() > 1e-9 * le.abs().max(1.0)) {
                            continue;
                        }
                        series.push((id, label(l, "service_name"), Part::Bucket));
                    }
                }
            }
            let mut services: Vec<String> = series.iter().map(|s| s.1.to_owned()).collect();
            services.sort();
            services.dedup();
            let series = series
                .into_iter()
                .filter_map(|(id, s, p)| {
                    let i = services.binary_search_by(|x| x.as_str().cmp(s)).ok()?;
                    Some((id, i, p))
                })
                .collect();
            RulePlan::Burn { series, services }
        }
        Condition::NewException { matchers, .. } => RulePlan::Series(
            history
                .ids_of(super::rules::LOG_EXCEPTIONS)
                .filter(|(_, l)| matchers.iter().all(|m| m.matches(l)))
                .map(|(id, _)| id)
                .collect(),
        ),
    }
}

/// The instances of `rule` whose condition holds at `now`.
pub fn active(rule: &Rule, history: &History, now: Millis, ctx: &mut Context) -> Vec<Instance> {
    active_planned(rule, &plan_rule(rule, history), history, now, ctx)
}

fn active_planned(
    rule: &Rule,
    plan: &RulePlan,
    history: &History,
    now: Millis,
    ctx: &mut Context,
) -> Vec<Instance> {
    let mut out = Vec::new();
    let empty: &[(SeriesId, usize)] = &[];
    let (series, groups) = match plan {
        RulePlan::Grouped { series, groups } => (series.as_slice(), groups.as_slice()),
        _ => (empty, &[][..]),
    };
    match &rule.condition {
        Condition::Threshold { op, value, .. } => {
            // Per group: the sum of the current values, `None` while no series is present.
            let mut sums: Vec<Option<f64>> = vec![None; groups.len()];
            for &(id, g) in series {
                if let (Some(v), Some(s)) = (history.current_of(id), sums.get_mut(g)) {
                    *s = Some(s.unwrap_or(0.0) + v);
                }
            }
            for (labels, v) in groups.iter().zip(sums) {
                let Some(v) = v else { continue };
                if op.holds(v, *value) {
                    out.push(Instance {
                        labels: labels.clone(),
                        value: v,
                        values: BTreeMap::from([("threshold".into(), *value)]),
                        severity: None,
                    });
                }
            }
        }
        Condition::Rate {
            window, op, value, ..
        } => {
            let mut rates: Vec<Option<f64>> = vec![None; groups.len()];
            let mut hint = Hint::default();
            for &(id, g) in series {
                let Some((inc, covered)) = history.increase_hinted(id, now, *window, &mut hint)
                else {
                    continue;
                };
                if covered <= 0.0 {
                    continue;
                }
                if let Some(r) = rates.get_mut(g) {
                    *r = Some(r.unwrap_or(0.0) + inc / covered);
                }
            }
            for (labels, r) in groups.iter().zip(rates) {
                let Some(r) = r else { continue };
                if op.holds(r, *value) {
                    out.push(Instance {
                        labels: labels.clone(),
                        value: r,
                        values: BTreeMap::from([("threshold".into(), *value)]),
                        severity: None,
                    });
                }
            }
        }
        Condition::BurnRate {
            objective, windows, ..
        } => {
            let RulePlan::Burn { series, services } = plan else {
                return out;
            };
            let budget = (1.0 - objective).max(f64::MIN_POSITIVE);
            // Per service: (bad, total) over a window; a service absent from a window is (0, 0),
            // which never fires (a total of 0 is skipped). Each distinct window is summed once.
            let ratio = |window: Millis| -> Vec<(f64, f64)> {
                let mut acc = vec![(0.0, 0.0); services.len()];
                let mut hint = Hint::default();
                for &(id, s, part) in series {
                    let (Some((inc, _)), Some(e)) = (
                        history.increase_hinted(id, now, window, &mut hint),
                        acc.get_mut(s),
                    ) else {
                        continue;
                    };
                    match part {
                        Part::Calls { error } => {
                            e.1 += inc;
                            if error {
                                e.0 += inc;
                            }
                        }
                        Part::Count => {
                            e.0 += inc;
                            e.1 += inc;
                        }
                        // Fast calls are good: bad = count - bucket(le).
                        Part::Bucket => e.0 -= inc,
                    }
                }
                acc
            };
            let mut ratios: Vec<(Millis, Vec<(f64, f64)>)> = Vec::new();
            for w in windows.iter().flat_map(|w| [w.long, w.short]) {
                if !ratios.iter().any(|(x, _)| *x == w) {
                    ratios.push((w, ratio(w)));
                }
            }
            let of = |w: Millis| ratios.iter().find(|(x, _)| *x == w).map(|(_, r)| r);
            for w in windows {
                let (Some(long), Some(short)) = (of(w.long), of(w.short)) else {
                    continue;
                };
                for (service, ((bad_l, total_l), (bad_s, total_s))) in
                    services.iter().zip(long.iter().zip(short))
                {
                    if *total_l <= 0.0 || *total_s <= 0.0 {
                        continue;
                    }
                    let rl = (bad_l / total_l).max(0.0);
                    let rs = (bad_s / total_s).max(0.0);
                    let (burn_l, burn_s) = (rl / budget, rs / budget);
                    if burn_l > w.factor && burn_s > w.factor {
                        out.push(Instance {
                            labels: BTreeMap::from([
                                ("service".into(), service.clone()),
                                (
                                    "slo_window".into(),
                                    format!("{}/{}", fmt_window(w.long), fmt_window(w.short)),
                                ),
                            ]),
                            value: burn_l,
                            values: BTreeMap::from([
                                ("burn_short".into(), burn_s),
                                ("factor".into(), w.factor),
                                ("ratio".into(), rl),
                                ("ratio_short".into(), rs),
                                ("objective".into(), *objective),
                            ]),
                            severity: Some(w.severity.clone()),
                        });
                    }
                }
            }
        }
        Condition::NewException {
            service, window, ..
        } => {
            let RulePlan::Series(ids) = plan else {
                return out;
            };
            let deploy = ctx.deploys.get(service).cloned();
            for &id in ids {
                let Some(l) = history.labels(id) else {
                    continue;
                };
                let key = (
                    label(l, "source").to_owned(),
                    label(l, "exception").to_owned(),
                );
                let first = match ctx.first_seen.get(&key) {
                    Some(t) => *t,
                    None => {
                        let t = history.first_seen_of(id).unwrap_or(now);
                        ctx.first_seen.insert(key.clone(), t);
                        ctx.newly_seen.push((key.0.clone(), key.1.clone(), t));
                        t
                    }
                };
                let Some(d) = &deploy else { continue };
                if first <= d.at {
                    continue;
                }
                let recent = history.increase_of(id, now, *window).map(|(inc, _)| inc);
                let count = match recent {
                    Some(inc) => inc,
                    // One point only: the type appeared in this window.
                    None if now - first <= *window => history.current_of(id).unwrap_or(0.0),
                    None => 0.0,
                };
                if count > 0.0 {
                    let mut labels = to_map(l);
                    labels.insert("service".into(), service.clone());
                    out.push(Instance {
                        labels,
                        value: count,
                        values: BTreeMap::from([(
                            "minutes_since_deploy".into(),
                            ((now - d.at) / 60_000) as f64,
                        )]),
                        severity: None,
                    });
                }
            }
        }
    }
    out
}

/// `1h`, `30m`, `3d`.
pub fn fmt_window(ms: Millis) -> String {
    let s = ms / 1000;
    if s % 86_400 == 0 {
        format!("{}d", s / 86_400)
    } else if s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s % 60 == 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// A value with about four significant digits, trailing zeros trimmed.
pub fn fmt_value(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{v:.0}");
    }
    let mag = if v == 0.0 {
        0
    } else {
        v.abs().log10().floor() as i32
    };
    let decimals = (3 - mag).clamp(0, 12) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// Renders `{{ $value }}`, `{{ $labels.name }}`, `{{ $threshold }}` and any other named value
/// (`{{ $burn_short }}`); unknown names render as `<no value>`.
pub fn render(
    template: &str,
    labels: &BTreeMap<String, String>,
    value: f64,
    values: &BTreeMap<String, f64>,
) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let expr = after[..end].trim();
        let expr = expr.trim_start_matches('$').trim_start_matches('.');
        let text = if expr == "value" {
            fmt_value(value)
        } else if let Some(l) = expr.strip_prefix("labels.") {
            labels.get(l).cloned().unwrap_or_default()
        } else if let Some(v) = values.get(expr) {
            fmt_value(*v)
        } else if let Some(l) = labels.get(expr) {
            l.clone()
        } else {
            "<no value>".into()
        };
        out.push_str(&text);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// The identity of an alert: its labels, escaped and joined.
pub(crate) fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut s = String::new();
    for (k, v) in labels {
        if !s.is_empty() {
            s.push(',');
        }
        s.push_str(k);
        s.push('=');
        s.push_str(&v.replace('\\', "\\\\").replace(',', "\\,"));
    }
    s
}

/// Evaluates every rule at `now`, updating `alerts` in place.
pub fn evaluate(
    now: Millis,
    rules: &[Rule],
    history: &History,
    ctx: &mut Context,
    alerts: &mut BTreeMap<String, Alert>,
) -> Outcome {
    evaluate_with(now, rules, &Plan::new(rules, history), history, ctx, alerts)
}

/// [`evaluate`] with a [`Plan`] kept by the caller (built for these `rules`; one that no longer
/// describes the history is not used).
pub fn evaluate_with(
    now: Millis,
    rules: &[Rule],
    plan: &Plan,
    history: &History,
    ctx: &mut Context,
    alerts: &mut BTreeMap<String, Alert>,
) -> Outcome {
    let fresh;
    let plan = if plan.is_current(history, rules) {
        plan
    } else {
        fresh = Plan::new(rules, history);
        &fresh
    };
    let mut out = Outcome::default();
    let mut seen = std::collections::HashSet::new();
    for (rule, rp) in rules.iter().zip(&plan.rules) {
        for inst in active_planned(rule, rp, history, now, ctx) {
            let mut labels = inst.labels.clone();
            for (k, v) in &rule.labels {
                labels.insert(k.clone(), v.clone());
            }
            labels.insert("alertname".into(), rule.name.clone());
            labels.insert(
                "severity".into(),
                inst.severity
                    .clone()
                    .unwrap_or_else(|| rule.severity.clone()),
            );
            let fp = fingerprint(&labels);
            let summary = render(&rule.summary, &labels, inst.value, &inst.values);
            let runbook = rule
                .runbook
                .as_ref()
                .map(|t| render(t, &labels, inst.value, &inst.values));
            let dashboard = rule
                .dashboard
                .as_ref()
                .map(|t| render(t, &labels, inst.value, &inst.values));
            seen.insert(fp.clone());
            let alert = match alerts.get_mut(&fp) {
                Some(a) if a.state != State::Resolved => a,
                _ => {
                    alerts.insert(
                        fp.clone(),
                        Alert {
                            fingerprint: fp.clone(),
                            labels: labels.clone(),
                            summary: summary.clone(),
                            runbook: runbook.clone(),
                            dashboard: dashboard.clone(),
                            value: inst.value,
                            values: inst.values.clone(),
                            state: State::Pending,
                            active_at: now,
                            fired_at: None,
                            resolved_at: None,
                            last_active: now,
                        },
                    );
                    match alerts.get_mut(&fp) {
                        Some(a) => a,
                        None => continue,
                    }
                }
            };
            alert.value = inst.value;
            alert.values = inst.values;
            alert.summary = summary;
            alert.runbook = runbook;
            alert.dashboard = dashboard;
            alert.last_active = now;
            if alert.state == State::Pending && now - alert.active_at >= rule.for_ {
                alert.state = State::Firing;
                alert.fired_at = Some(now);
                out.transitions.push(Transition::Fired(fp.clone()));
            }
            out.changed.push(fp);
        }
    }
    let keep_for: HashMap<&str, Millis> = rules
        .iter()
        .map(|r| (r.name.as_str(), r.keep_firing_for))
        .collect();
    let mut drop = Vec::new();
    for (fp, a) in alerts.iter_mut() {
        if seen.contains(fp) {
            continue;
        }
        match a.state {
            State::Pending => drop.push(fp.clone()),
            State::Firing => {
                // A rule removed from the configuration resolves its alerts at once.
                let keep = keep_for.get(a.name()).copied().unwrap_or(0);
                if now - a.last_active >= keep {
                    a.state = State::Resolved;
                    a.resolved_at = Some(now);
                    out.transitions.push(Transition::Resolved(fp.clone()));
                    out.changed.push(fp.clone());
                }
            }
            State::Resolved => {
                if now - a.resolved_at.unwrap_or(now) >= RESOLVED_RETENTION {
                    drop.push(fp.clone());
                }
            }
        }
    }
    for fp in drop {
        alerts.remove(&fp);
        out.removed.push(fp);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::expo::Sample;
    use super::super::rules::{BurnWindow, Cmp, Matcher, Selector};
    use super::*;

    fn rule(name: &str, condition: Condition, for_: Millis, keep: Millis) -> Rule {
        Rule {
            name: name.into(),
            condition,
            for_,
            keep_firing_for: keep,
            severity: "warning".into(),
            labels: BTreeMap::from([("team".into(), "web".into())]),
            summary: "{{ $labels.source }} at {{ $value }} (> {{ $threshold }})".into(),
            runbook: Some("https://runbooks/{{ $labels.alertname }}".into()),
            dashboard: None,
        }
    }

    fn sample(name: &str, labels: &[(&str, &str)], v: f64) -> Sample {
        let mut labels: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        labels.sort();
        Sample {
            name: name.into(),
            labels,
            value: v,
        }
    }

    fn threshold() -> Condition {
        Condition::Threshold {
            selector: Selector::parse("queue_depth{source=~\"a|b\"}").expect("selector"),
            sum_by: None,
            op: Cmp::Gt,
            value: 10.0,
        }
    }

    /// Feeds `values` (one per 10 s step, for source "a") and returns the state after each step.
    fn run(rule: &Rule, values: &[f64]) -> Vec<Option<State>> {
        let mut h = History::new(100, 3_600_000);
        let mut alerts = BTreeMap::new();
        let mut ctx = Context::default();
        let mut states = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let now = i as i64 * 10_000;
            h.ingest(
                now,
                &[sample("queue_depth", &[("source", "a")], *v)],
                |_| true,
            );
            evaluate(now, std::slice::from_ref(rule), &h, &mut ctx, &mut alerts);
            states.push(alerts.values().next().map(|a| a.state));
        }
        states
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn pending_firing_resolved_with_for_and_keep_firing_for() {
        use State::*;
        // (for, keep_firing_for, values, expected states) — one step is 10 s.
        let cases: Vec<(Millis, Millis, Vec<f64>, Vec<Option<State>>)> = vec![
            // for 0: fires at once, resolves at the first inactive evaluation.
            (
                0,
                0,
                vec![11.0, 12.0, 5.0],
                vec![Some(Firing), Some(Firing), Some(Resolved)],
            ),
            // for 20 s: pending for two steps, fires on the third.
            (
                20_000,
                0,
                vec![11.0, 11.0, 11.0, 1.0],
                vec![Some(Pending), Some(Pending), Some(Firing), Some(Resolved)],
            ),
            // A pending alert that clears is dropped without resolving.
            (
                20_000,
                0,
                vec![11.0, 1.0, 11.0],
                vec![Some(Pending), None, Some(Pending)],
            ),
            // keep_firing_for 20 s: stays firing for two inactive steps.
            (
                0,
                20_000,
                vec![11.0, 1.0, 1.0, 1.0],
                vec![Some(Firing), Some(Firing), Some(Resolved), Some(Resolved)],
            ),
            // ... and a flap inside keep_firing_for never resolves.
            (
                0,
                20_000,
                vec![11.0, 1.0, 11.0, 1.0],
                vec![Some(Firing), Some(Firing), Some(Firing), Some(Firing)],
            ),
            // Threshold is strict: 10 is not > 10.
            (0, 0, vec![10.0], vec![None]),
        ];
        for (i, (for_, keep, values, want)) in cases.into_iter().enumerate() {
            let r = rule("QueueDeep", threshold(), for_, keep);
            assert_eq!(run(&r, &values), want, "case {i}");
        }
    }

    #[test]
    fn labels_summary_links_and_transitions() {
        let r = rule("QueueDeep", threshold(), 0, 0);
        let mut h = History::new(100, 60_000);
        let mut alerts = BTreeMap::new();
        let mut ctx = Context::default();
        h.ingest(
            0,
            &[
                sample("queue_depth", &[("source", "a")], 12.5),
                sample("queue_depth", &[("source", "b")], 3.0),
                sample("queue_depth", &[("source", "c")], 99.0),
            ],
            |_| true,
        );
        let out = evaluate(0, std::slice::from_ref(&r), &h, &mut ctx, &mut alerts);
        assert_eq!(out.transitions.len(), 1);
        let a = alerts.values().next().expect("one alert");
        assert_eq!(
            a.labels,
            BTreeMap::from([
                ("alertname".into(), "QueueDeep".into()),
                ("severity".into(), "warning".into()),
                ("source".into(), "a".into()),
                ("team".into(), "web".into()),
            ])
        );
        assert_eq!(a.summary, "a at 12.5 (> 10)");
        assert_eq!(a.runbook.as_deref(), Some("https://runbooks/QueueDeep"));
        assert_eq!(out.transitions, [Transition::Fired(a.fingerprint.clone())]);
        // Resolved alerts are dropped after the retention.
        h.ingest(10_000, &[], |_| true);
        let out = evaluate(10_000, std::slice::from_ref(&r), &h, &mut ctx, &mut alerts);
        assert!(matches!(&out.transitions[..], [Transition::Resolved(_)]));
        let out = evaluate(
            10_000 + RESOLVED_RETENTION,
            std::slice::from_ref(&r),
            &h,
            &mut ctx,
            &mut alerts,
        );
        assert_eq!(out.removed.len(), 1);
        assert!(alerts.is_empty());
    }

    #[test]
    fn rates_and_sums() {
        // Counter: errors of two sources, every 15 s over 5 minutes.
        let mut h = History::new(100, 600_000);
        for i in 0..=20 {
            let t = i * 15_000;
            h.ingest(
                t,
                &[
                    sample(
                        "errs_total",
                        &[("source", "a"), ("level", "error")],
                        i as f64 * 3.0,
                    ),
                    sample(
                        "errs_total",
                        &[("source", "b"), ("level", "error")],
                        i as f64 * 1.5,
                    ),
                    sample(
                        "errs_total",
                        &[("source", "b"), ("level", "info")],
                        i as f64 * 100.0,
                    ),
                ],
                |_| true,
            );
        }
        let now = 300_000;
        let cond = |sum_by: Option<Vec<String>>, value: f64| Condition::Rate {
            selector: Selector::parse("errs_total{level=\"error\"}").expect("selector"),
            window: 300_000,
            sum_by,
            op: Cmp::Ge,
            value,
        };
        let mut ctx = Context::default();
        // Per series: a = 3/15 = 0.2/s, b = 0.1/s.
        let per = active(&rule("R", cond(None, 0.15), 0, 0), &h, now, &mut ctx);
        assert_eq!(per.len(), 1);
        assert!((per[0].value - 0.2).abs() < 1e-12);
        assert_eq!(per[0].labels["source"], "a");
        // Summed by level: 0.3/s (info excluded by the matcher).
        let sum = active(
            &rule("R", cond(Some(vec!["level".into()]), 0.3), 0, 0),
            &h,
            now,
            &mut ctx,
        );
        assert_eq!(sum.len(), 1);
        assert!((sum[0].value - 0.3).abs() < 1e-12);
        assert_eq!(
            sum[0].labels,
            BTreeMap::from([("level".into(), "error".into())])
        );
    }

    fn calls(service: &str, status: &str, v: f64) -> Sample {
        sample(
            SPAN_CALLS,
            &[
                ("service_name", service),
                ("span_name", "GET /"),
                ("span_kind", "SPAN_KIND_SERVER"),
                ("status_code", status),
            ],
            v,
        )
    }

    fn burn_rule() -> Rule {
        let mut r = rule(
            "ErrorBudgetBurn",
            Condition::BurnRate {
                matchers: vec![Matcher::eq("span_kind", "SPAN_KIND_SERVER")],
                objective: 0.99,
                kind: SloKind::Errors,
                windows: vec![
                    BurnWindow {
                        long: 3_600_000,
                        short: 300_000,
                        factor: 14.4,
                        severity: "critical".into(),
                    },
                    BurnWindow {
                        long: 6 * 3_600_000,
                        short: 1_800_000,
                        factor: 6.0,
                        severity: "critical".into(),
                    },
                ],
            },
            0,
            0,
        );
        r.summary = "burn {{ $value }}x / {{ $burn_short }}x".into();
        r
    }

    /// 100 calls per minute; `errors(minute)` of them fail.
    fn feed(h: &mut History, minutes: std::ops::Range<i64>, errors: impl Fn(i64) -> f64) {
        let mut ok = 0.0;
        let mut err = 0.0;
        for m in 0..minutes.end {
            let e = errors(m);
            ok += 100.0 - e;
            err += e;
            if minutes.contains(&m) {
                h.ingest(
                    m * 60_000,
                    &[
                        calls("api", "STATUS_CODE_UNSET", ok),
                        calls("api", STATUS_ERROR, err),
                    ],
                    |_| true,
                );
            }
        }
    }

    #[test]
    fn burn_rate_windows_hand_computed() {
        // Budget 1 %. A 30-minute outage at 20 % errors, after 5 h at 0.1 %:
        let errors = |m: i64| if m >= 300 { 20.0 } else { 0.1 };
        // ... evaluated at minute 300+k. The value at minute m counts the calls of minutes 0..=m,
        // so a window (now-w, now] holds the minutes now-w+1..=now, k+1 of them bad:
        //  k=5:  short 5m = 20 % -> 20x; long 1h = (54*0.1 + 6*20)/6000 = 2.09 % -> 2.09x
        //  k=15: short 20x; long 1h = (44*0.1 + 16*20)/6000 = 5.41 % -> 5.41x: no pair fires
        //  k=45: long 1h = (14*0.1 + 46*20)/6000 = 15.357 % -> 15.357x > 14.4, short 20x: fires;
        //        the 6h pair: long 6h (history starts at minute 0) = (299*0.1 + 46*20)/34500
        //        = 2.75 % -> 2.75x: below 6x, not firing
        let r = burn_rule();
        for (k, want) in [(5, None), (15, None), (45, Some((921.4 / 60.0, 20.0)))] {
            let mut h = History::new(100, 6 * 3_600_000);
            feed(&mut h, 0..300 + k + 1, errors);
            let now = (300 + k) * 60_000;
            let got = active(&r, &h, now, &mut Context::default());
            match want {
                None => assert!(got.is_empty(), "k={k}: {got:?}"),
                Some((long, short)) => {
                    assert_eq!(got.len(), 1, "k={k}: {got:?}");
                    assert!((got[0].value - long).abs() < 1e-9, "{}", got[0].value);
                    assert!((got[0].values["burn_short"] - short).abs() < 1e-9);
                    assert_eq!(got[0].labels["slo_window"], "1h/5m");
                    assert_eq!(got[0].labels["service"], "api");
                    assert_eq!(got[0].severity.as_deref(), Some("critical"));
                }
            }
        }
        // Recovery: 10 minutes back at 0.1 % after 45 bad ones: the 5m window is clean again, so
        // the alert stops even though the 1h window still burns.
        let mut h = History::new(100, 6 * 3_600_000);
        let errors = |m: i64| if (300..345).contains(&m) { 20.0 } else { 0.1 };
        feed(&mut h, 0..356, errors);
        assert!(active(&r, &h, 355 * 60_000, &mut Context::default()).is_empty());
    }

    #[test]
    fn latency_objective_from_buckets() {
        // 100 calls/min, 300 ms bucket holds 90 -> 10 % slow; objective 95 % -> burn 2x.
        let mut h = History::new(100, 3_600_000);
        for m in 0..=60 {
            let n = m as f64;
            let base = [("service_name", "api"), ("span_kind", "SPAN_KIND_SERVER")];
            let mut b = base.to_vec();
            b.push(("le", "0.3"));
            let mut inf = base.to_vec();
            inf.push(("le", "+Inf"));
            h.ingest(
                m * 60_000,
                &[
                    sample(SPAN_BUCKETS, &b, 90.0 * n),
                    sample(SPAN_BUCKETS, &inf, 100.0 * n),
                    sample(SPAN_COUNT, &base, 100.0 * n),
                ],
                |_| true,
            );
        }
        let mut r = burn_rule();
        r.condition = Condition::BurnRate {
            matchers: vec![],
            objective: 0.95,
            kind: SloKind::Latency(0.3),
            windows: vec![BurnWindow {
                long: 3_600_000,
                short: 300_000,
                factor: 1.5,
                severity: "warning".into(),
            }],
        };
        let got = active(&r, &h, 3_600_000, &mut Context::default());
        assert_eq!(got.len(), 1);
        assert!((got[0].value - 2.0).abs() < 1e-9, "{}", got[0].value);
        assert!((got[0].values["ratio"] - 0.1).abs() < 1e-12);
    }

    #[test]
    fn new_exception_since_the_last_deploy() {
        let r = rule(
            "NewException",
            Condition::NewException {
                matchers: vec![Matcher::eq("source", "app")],
                service: "api".into(),
                window: 600_000,
            },
            0,
            0,
        );
        let exc = |e: &str, v: f64| {
            sample(
                super::super::rules::LOG_EXCEPTIONS,
                &[("source", "app"), ("exception", e)],
                v,
            )
        };
        let mut h = History::new(100, 600_000);
        let mut ctx = Context::default();
        ctx.deploys.insert(
            "api".into(),
            DeployInfo {
                at: 100_000,
                commit: "abc123".into(),
                version: "1.2".into(),
            },
        );
        // KeyError was seen before the deploy; ValueError appears after it.
        h.ingest(50_000, &[exc("KeyError", 1.0)], |_| true);
        assert!(active(&r, &h, 50_000, &mut ctx).is_empty());
        h.ingest(
            160_000,
            &[exc("KeyError", 4.0), exc("ValueError", 2.0)],
            |_| true,
        );
        let got = active(&r, &h, 160_000, &mut ctx);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].labels["exception"], "ValueError");
        assert_eq!(got[0].value, 2.0);
        assert_eq!(got[0].values["minutes_since_deploy"], 1.0);
        assert_eq!(ctx.newly_seen.len(), 2);
        // It stays active while it keeps occurring, and stops when it has not for the window.
        h.ingest(
            400_000,
            &[exc("KeyError", 4.0), exc("ValueError", 3.0)],
            |_| true,
        );
        assert_eq!(active(&r, &h, 400_000, &mut ctx).len(), 1);
        h.ingest(
            1_100_000,
            &[exc("KeyError", 4.0), exc("ValueError", 3.0)],
            |_| true,
        );
        assert!(active(&r, &h, 1_100_000, &mut ctx).is_empty());
    }

    #[test]
    fn values_and_templates() {
        for (v, s) in [
            (0.0, "0"),
            (12.0, "12"),
            (0.012346, "0.01235"),
            (14.4, "14.4"),
            (1234.5678, "1235"),
            (0.5, "0.5"),
        ] {
            assert_eq!(fmt_value(v), s, "{v}");
        }
        let labels = BTreeMap::from([("service".to_string(), "api".to_string())]);
        let values = BTreeMap::from([("burn_short".to_string(), 20.0)]);
        assert_eq!(
            render(
                "{{$labels.service}}: {{ $value }}x, {{ .burn_short }}x, {{ $nope }} {{ service }} {{",
                &labels,
                15.026,
                &values
            ),
            "api: 15.03x, 20x, <no value> api {{"
        );
        assert_eq!(fmt_window(3_600_000), "1h");
        assert_eq!(fmt_window(300_000), "5m");
        assert_eq!(fmt_window(3 * 86_400_000), "3d");
    }
}

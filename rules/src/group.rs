//! Evaluating a rule group at one instant, as Prometheus's rule manager does: rules in order,
//! each seeing the series recorded by the rules before it in the same cycle; recording rules
//! rename and relabel their result; alerting rules run the pending → firing → inactive state
//! machine with `for` and `keep_firing_for`, expand their templates, and produce `ALERTS` and
//! `ALERTS_FOR_STATE` series; a series a rule produced last cycle and not this one gets a
//! staleness marker; the group's `limit` fails a rule that returns more series or alerts.
//!
//! [`evaluate_group`] is pure: `now` is a parameter, reading goes through [`Storage`], and the
//! samples to write come back in [`GroupOutput`] for the caller to store.
//!
//! What an evaluation keeps from one cycle to the next so as not to redo it: each rule's parsed
//! label and annotation templates (checked against the rule's text at every use), and each
//! alert's `ALERTS` and `ALERTS_FOR_STATE` label sets (rebuilt when its state changes). The
//! output's label sets are shared (`Arc`) between the output and the rule's state.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::eval::{EvalError, SharedSample};
use crate::file::{AlertingRule, Group, RecordingRule, Rule};
use crate::storage::{
    Facts, Labels, METRIC_NAME, Matcher, MemStorage, STALE_NAN, Sample, SeriesVisitor, Storage,
};
use crate::template::{self, Compiled, TemplateData};

type FastHasher = foldhash::fast::RandomState;
type LabelsHasher = crate::storage::LabelsHashBuilder;

/// How long a resolved alert is kept (and reported as resolved) before it is forgotten.
pub const RESOLVED_RETENTION_MS: i64 = 15 * 60 * 1000;

/// The state of an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AlertState {
    Inactive,
    Pending,
    Firing,
}

impl AlertState {
    /// The `alertstate` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
        }
    }
}

/// One alert of an alerting rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// The series' labels without `__name__`, the rule's labels expanded, `alertname`. Shared
    /// and kept for as long as the alert lives (the same pointer every cycle), so that a
    /// caller can keep what it derives from them, by pointer, across cycles.
    pub labels: Arc<Labels>,
    pub annotations: BTreeMap<String, String>,
    pub state: AlertState,
    /// When the expression first returned this alert (ms).
    pub active_at: i64,
    pub fired_at: Option<i64>,
    pub resolved_at: Option<i64>,
    pub keep_firing_since: Option<i64>,
    /// The expression's value at the last evaluation that returned it.
    pub value: f64,
}

/// An alert as its rule keeps it.
#[derive(Debug, Clone)]
struct Active {
    alert: Alert,
    /// The evaluation of the rule ([`RuleState::evaluations`]) that last returned it.
    returned_in: u64,
    /// Its `ALERTS` series' labels, for the state they were built for, and its
    /// `ALERTS_FOR_STATE` series' labels.
    series: Option<(AlertState, Arc<Labels>, Arc<Labels>)>,
}

impl Active {
    fn new(alert: Alert, returned_in: u64) -> Self {
        Active {
            alert,
            returned_in,
            series: None,
        }
    }
}

/// An alerting rule's templates, parsed.
#[derive(Debug, Default, Clone)]
struct Templates {
    labels: Vec<(String, Compiled)>,
    annotations: Vec<(String, Compiled)>,
}

impl Templates {
    fn parse(a: &AlertingRule) -> Self {
        let parse = |m: &BTreeMap<String, String>| {
            m.iter()
                .map(|(k, t)| (k.clone(), template::compile(t)))
                .collect()
        };
        Templates {
            labels: parse(&a.labels),
            annotations: parse(&a.annotations),
        }
    }

    /// Whether these are the rule's templates (a reload may keep a state for a changed rule).
    fn are_of(&self, a: &AlertingRule) -> bool {
        let same = |parsed: &[(String, Compiled)], m: &BTreeMap<String, String>| {
            parsed.len() == m.len()
                && parsed
                    .iter()
                    .zip(m)
                    .all(|((k, c), (k2, t))| k == k2 && c.text() == t)
        };
        same(&self.labels, &a.labels) && same(&self.annotations, &a.annotations)
    }
}

#[derive(Debug, Default, Clone)]
struct RuleState {
    active: HashMap<Labels, Active, LabelsHasher>,
    /// Restored alerts not resolved while their expression has no data yet: until when (ms).
    held: HashMap<Labels, i64>,
    /// The series the rule wrote last cycle, in the order it wrote them.
    last_series: Vec<Arc<Labels>>,
    last_error: Option<EvalError>,
    /// Evaluations of the rule that returned a result.
    evaluations: u64,
    templates: Option<Templates>,
    /// What the rule built from each sample of its last result.
    built: BuiltCache,
}

/// What a rule built from each sample of its last result, by position, and for which rule.
#[derive(Debug, Default, Clone)]
struct BuiltCache {
    built: Vec<Built>,
    /// What `built` was built for: whether the rule alerts, its name and its labels.
    built_for: Option<(bool, String, Labels)>,
    /// For an alerting rule, the external labels and URL its annotations were expanded with.
    ctx: Option<(Labels, String)>,
}

impl BuiltCache {
    /// Forgets what was built unless it was built for this rule (a reload may keep a state for
    /// a changed rule).
    fn keep_for(&mut self, alerting: bool, name: &str, labels: &Labels) {
        let same = matches!(&self.built_for,
            Some((a, n, l)) if *a == alerting && n == name && l == labels);
        if !same {
            self.built.clear();
            self.built_for = Some((alerting, name.to_owned(), labels.clone()));
        }
    }

    /// Forgets what was built unless the annotations were expanded with this context.
    fn keep_for_context(&mut self, ctx: &EvalContext<'_>) {
        let same = matches!(&self.ctx,
            Some((l, u)) if l == ctx.external_labels && u == ctx.external_url);
        if !same {
            self.built.clear();
            self.ctx = Some((ctx.external_labels.clone(), ctx.external_url.to_owned()));
        }
    }

    /// What was built last cycle from the sample at `i`, if it had the same label set.
    fn at(&self, i: usize, s: &SharedSample) -> Option<&Built> {
        self.built
            .get(i)
            .filter(|b| s.labelled_by(&b.from, b.without_name))
    }

    /// [`at`](Self::at), to update.
    fn at_mut(&mut self, i: usize, s: &SharedSample) -> Option<&mut Built> {
        self.built
            .get_mut(i)
            .filter(|b| s.labelled_by(&b.from, b.without_name))
    }

    /// Keeps what was built from the sample at `i`.
    fn set(&mut self, i: usize, built: Built) {
        match self.built.get_mut(i) {
            Some(b) => *b = built,
            None => self.built.push(built),
        }
    }

    fn len(&self) -> usize {
        self.built.len()
    }

    fn truncate(&mut self, len: usize) {
        self.built.truncate(len);
    }

    fn clear(&mut self) {
        self.built.clear();
    }
}

/// What a rule built from one sample's label set, kept for the next cycle: a sample at the same
/// position with the same shared label set (the same pointer, held here so that it cannot be
/// reused) gets the same labels without their being built or checked again.
#[derive(Debug, Clone)]
struct Built {
    from: Arc<Labels>,
    without_name: bool,
    /// The sample's labels without the metric name: what alert templates see as `$labels`.
    sample: Option<Arc<Labels>>,
    /// The recorded series' or the alert's labels.
    labels: Arc<Labels>,
    /// The sample's value (bits), for which an alert's annotations were last expanded.
    value_bits: u64,
}

/// What a group carries from one evaluation to the next.
#[derive(Debug, Default, Clone)]
pub struct GroupState {
    rules: Vec<RuleState>,
}

impl GroupState {
    /// Forgets what the rules built from their results' label sets (what the next cycle
    /// would reuse): a reference for tests.
    #[cfg(test)]
    fn forget_built(&mut self) {
        for r in &mut self.rules {
            r.built.clear();
        }
    }

    pub fn new() -> Self {
        Self::default()
    }

    /// The active (pending, firing, or recently resolved) alerts of rule number `rule`.
    pub fn alerts(&self, rule: usize) -> Vec<&Alert> {
        let mut v: Vec<&Alert> = self
            .rules
            .get(rule)
            .map(|r| r.active.values().map(|a| &a.alert).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.labels.cmp(&b.labels));
        v
    }

    /// The active (pending, firing, or recently resolved) alerts of rule number `rule`, in no
    /// particular order.
    pub fn each_alert(&self, rule: usize) -> impl Iterator<Item = &Alert> {
        self.rules
            .get(rule)
            .into_iter()
            .flat_map(|r| r.active.values().map(|a| &a.alert))
    }

    /// Puts back an alert of rule number `rule` (kept by the caller across a restart): it carries
    /// on as if it had never stopped — a firing alert still returned stays firing. Until
    /// `hold_until` (ms) it is not resolved when the expression does not return it, since a
    /// restarted store has not yet the samples its windows need.
    pub fn restore(&mut self, rule: usize, alert: Alert, hold_until: i64) {
        if self.rules.len() <= rule {
            self.rules.resize_with(rule + 1, RuleState::default);
        }
        let rs = &mut self.rules[rule];
        rs.held.insert(Labels::clone(&alert.labels), hold_until);
        rs.active.insert(
            Labels::clone(&alert.labels),
            Active::new(alert, rs.evaluations),
        );
    }

    /// The error of rule number `rule` at its last evaluation.
    pub fn last_error(&self, rule: usize) -> Option<&EvalError> {
        self.rules.get(rule).and_then(|r| r.last_error.as_ref())
    }
}

/// What the templates may read besides the alert.
#[derive(Debug, Clone, Copy)]
pub struct EvalContext<'a> {
    pub external_labels: &'a Labels,
    pub external_url: &'a str,
}

/// The result of one group evaluation.
#[derive(Debug, Default, Clone)]
pub struct GroupOutput {
    /// Samples to store at `now`: recorded series, `ALERTS`, `ALERTS_FOR_STATE`, and staleness
    /// markers for series no longer produced.
    pub samples: Vec<(Arc<Labels>, f64)>,
    /// Rules that failed, by name, with why.
    pub errors: Vec<(String, EvalError)>,
}

/// The base storage with this cycle's recorded samples on top.
struct Overlay<'a> {
    base: &'a dyn Storage,
    cycle: &'a MemStorage,
}

impl Storage for Overlay<'_> {
    fn size_hint(&self, matchers: &[Matcher]) -> usize {
        self.base.size_hint(matchers) + self.cycle.len()
    }

    fn visit(&self, matchers: &[Matcher], mint: i64, maxt: i64, f: &mut SeriesVisitor<'_>) {
        // This cycle's samples of the matching series, in the cycle's order.
        let mut extra: Vec<(Arc<Labels>, Vec<Sample>, bool)> = Vec::new();
        if !self.cycle.is_empty() {
            self.cycle.visit(matchers, mint, maxt, &mut |l, s, _| {
                extra.push((Arc::clone(l), s.to_vec(), false));
            });
        }
        if extra.is_empty() {
            return self.base.visit(matchers, mint, maxt, f);
        }
        let index: HashMap<Arc<Labels>, usize, LabelsHasher> = extra
            .iter()
            .enumerate()
            .map(|(i, (l, ..))| (Arc::clone(l), i))
            .collect();
        let mut merged = Vec::new();
        self.base
            .visit(matchers, mint, maxt, &mut |labels, samples, facts| {
                let Some(&i) = index.get(&**labels) else {
                    return f(labels, samples, facts);
                };
                let (_, add, used) = &mut extra[i];
                *used = true;
                merged.clear();
                merged.extend_from_slice(samples);
                for x in add.iter() {
                    match merged.binary_search_by_key(&x.t, |y: &Sample| y.t) {
                        Ok(j) => merged[j] = *x,
                        Err(j) => merged.insert(j, *x),
                    }
                }
                f(labels, &merged, Facts::UNKNOWN);
            });
        for (l, samples, used) in &extra {
            if !used {
                f(l, samples, Facts::UNKNOWN);
            }
        }
    }
}

/// Which metrics the rules of a group read, and the last rule reading each: a rule's output
/// goes into the cycle's overlay only when a later rule of the group may read it.
struct LaterReads<'g> {
    last_by_name: HashMap<&'g str, usize, FastHasher>,
    /// The last rule with a selector that names no metric (it may read any).
    last_unnamed: Option<usize>,
}

impl<'g> LaterReads<'g> {
    fn new(group: &'g Group) -> Self {
        let mut last_by_name = HashMap::default();
        let mut last_unnamed = None;
        for (i, r) in group.rules.iter().enumerate() {
            let (names, unnamed) = r.query().selected_names();
            for n in names {
                last_by_name.insert(n, i);
            }
            if unnamed {
                last_unnamed = Some(i);
            }
        }
        LaterReads {
            last_by_name,
            last_unnamed,
        }
    }

    /// Whether a rule after rule `i` may read the series `labels`.
    fn after(&self, i: usize, labels: &Labels) -> bool {
        self.last_unnamed.is_some_and(|j| j > i)
            || labels
                .get(METRIC_NAME)
                .and_then(|n| self.last_by_name.get(n.as_str()))
                .is_some_and(|&j| j > i)
    }
}

/// Evaluates every rule of `group` at `now` (ms) over `storage`, updating `state`.
pub fn evaluate_group(
    group: &Group,
    now: i64,
    storage: &dyn Storage,
    state: &mut GroupState,
    ctx: &EvalContext<'_>,
) -> GroupOutput {
    if state.rules.len() != group.rules.len() {
        state
            .rules
            .resize_with(group.rules.len(), RuleState::default);
    }
    let later = LaterReads::new(group);
    let mut cycle = MemStorage::new();
    let mut out = GroupOutput::default();
    for (i, rule) in group.rules.iter().enumerate() {
        let rs = &mut state.rules[i];
        let overlay = Overlay {
            base: storage,
            cycle: &cycle,
        };
        let result = match rule {
            Rule::Recording(r) => record(r, now, &overlay, group.limit, rs),
            Rule::Alerting(a) => alert(a, now, &overlay, group.limit, rs, ctx),
        };
        match result {
            Ok(samples) => {
                rs.last_error = None;
                // The same label sets (pointers) as last cycle, in the same order: none is gone.
                let same = samples.len() == rs.last_series.len()
                    && samples
                        .iter()
                        .zip(&rs.last_series)
                        .all(|((l, _), last)| Arc::ptr_eq(l, last));
                let mut returned = Vec::with_capacity(samples.len());
                for (l, v) in samples {
                    if later.after(i, &l) {
                        cycle.append(&l, now, v);
                    }
                    returned.push(Arc::clone(&l));
                    out.samples.push((l, v));
                }
                if !same {
                    let now_returned: HashSet<&Labels, LabelsHasher> =
                        returned.iter().map(|l| &**l).collect();
                    let mut gone: Vec<Arc<Labels>> = rs
                        .last_series
                        .iter()
                        .filter(|l| !now_returned.contains(&***l))
                        .cloned()
                        .collect();
                    gone.sort();
                    for l in gone {
                        if later.after(i, &l) {
                            cycle.append(&l, now, STALE_NAN);
                        }
                        out.samples.push((l, STALE_NAN));
                    }
                }
                rs.last_series = returned;
            }
            Err(e) => {
                rs.last_error = Some(e.clone());
                out.errors.push((rule.name().to_owned(), e));
            }
        }
    }
    out
}

fn record(
    r: &RecordingRule,
    now: i64,
    storage: &dyn Storage,
    limit: usize,
    rs: &mut RuleState,
) -> Result<Vec<(Arc<Labels>, f64)>, EvalError> {
    let v = r.expr.eval_shared(storage, now)?;
    rs.built.keep_for(false, &r.record, &r.labels);
    // Whether every sample's labels are those of the sample at its place last cycle: then the
    // series are last cycle's, which were distinct.
    let mut all_built = v.len() == rs.built.len();
    let mut out = Vec::with_capacity(v.len());
    for (i, s) in v.into_iter().enumerate() {
        if let Some(b) = rs.built.at(i, &s) {
            out.push((Arc::clone(&b.labels), s.v));
            continue;
        }
        all_built = false;
        let mut l = s.to_labels();
        l.insert(METRIC_NAME.to_owned(), r.record.clone());
        for (k, val) in &r.labels {
            if val.is_empty() {
                l.remove(k);
            } else {
                l.insert(k.clone(), val.clone());
            }
        }
        let l = Arc::new(l);
        rs.built.set(
            i,
            Built {
                from: s.labels,
                without_name: s.without_name,
                sample: None,
                labels: Arc::clone(&l),
                value_bits: 0,
            },
        );
        out.push((l, s.v));
    }
    rs.built.truncate(out.len());
    if !all_built {
        let mut seen: HashSet<&Labels, LabelsHasher> =
            HashSet::with_capacity_and_hasher(out.len(), LabelsHasher::default());
        if !out.iter().all(|(l, _)| seen.insert(l)) {
            rs.built.clear();
            return Err(EvalError(
                "vector contains metrics with the same labelset after applying rule labels".into(),
            ));
        }
    }
    if limit > 0 && out.len() > limit {
        return Err(EvalError(format!(
            "exceeded limit of {limit} with {} series",
            out.len()
        )));
    }
    Ok(out)
}

/// An alert's annotations, expanded for its sample's labels (without the name) and value.
fn expand(
    templates: &[(String, Compiled)],
    labels: &Labels,
    value: f64,
    ctx: &EvalContext<'_>,
) -> BTreeMap<String, String> {
    let data = TemplateData {
        labels,
        external_labels: ctx.external_labels,
        external_url: ctx.external_url,
        value,
    };
    templates
        .iter()
        .map(|(k, t)| (k.clone(), t.expand(&data)))
        .collect()
}

fn alert(
    a: &AlertingRule,
    now: i64,
    storage: &dyn Storage,
    limit: usize,
    rs: &mut RuleState,
    ctx: &EvalContext<'_>,
) -> Result<Vec<(Arc<Labels>, f64)>, EvalError> {
    let res = a.expr.eval_shared(storage, now)?;
    let templates = match &mut rs.templates {
        Some(t) if t.are_of(a) => t,
        slot => {
            rs.built.clear();
            slot.insert(Templates::parse(a))
        }
    };
    // With literal label templates an alert's labels follow from the sample's label set alone:
    // they are kept from one cycle to the next, by position; and its annotations from the
    // sample's labels, its value and the context.
    let literal_labels = templates.labels.iter().all(|(_, t)| t.is_literal());
    if literal_labels {
        rs.built.keep_for(true, &a.alert, &a.labels);
        rs.built.keep_for_context(ctx);
    } else {
        rs.built.clear();
    }
    // Whether every alert's labels are those built at its place last cycle: then they are last
    // cycle's, which were distinct.
    let mut all_built = literal_labels && res.len() == rs.built.len();
    // Each alert's labels, its sample's labels without the name, its annotations (`None`: those
    // expanded last cycle at its place, for the same labels and value) and its value.
    type Current = (
        Arc<Labels>,
        Arc<Labels>,
        Option<BTreeMap<String, String>>,
        f64,
    );
    let mut current: Vec<Current> = Vec::with_capacity(res.len());
    for (i, s) in res.into_iter().enumerate() {
        let bits = s.v.to_bits();
        let known = if literal_labels {
            rs.built.at_mut(i, &s).and_then(|b| {
                let same_value = b.value_bits == bits;
                b.value_bits = bits;
                Some((
                    Arc::clone(b.sample.as_ref()?),
                    Arc::clone(&b.labels),
                    same_value,
                ))
            })
        } else {
            None
        };
        let (sample_labels, labels, same_value) = match known {
            Some(k) => k,
            None => {
                all_built = false;
                let mut sample_labels = s.to_labels();
                sample_labels.remove(METRIC_NAME);
                let data = TemplateData {
                    labels: &sample_labels,
                    external_labels: ctx.external_labels,
                    external_url: ctx.external_url,
                    value: s.v,
                };
                let expanded: Vec<(&String, String)> = templates
                    .labels
                    .iter()
                    .map(|(k, t)| (k, t.expand(&data)))
                    .collect();
                let mut labels = sample_labels.clone();
                for (k, v) in expanded {
                    if v.is_empty() {
                        labels.remove(k);
                    } else {
                        labels.insert(k.clone(), v);
                    }
                }
                labels.insert("alertname".to_owned(), a.alert.clone());
                let (sample_labels, labels) = (Arc::new(sample_labels), Arc::new(labels));
                if literal_labels {
                    rs.built.set(
                        i,
                        Built {
                            from: s.labels,
                            without_name: s.without_name,
                            sample: Some(Arc::clone(&sample_labels)),
                            labels: Arc::clone(&labels),
                            value_bits: bits,
                        },
                    );
                }
                (sample_labels, labels, false)
            }
        };
        let annotations =
            (!same_value).then(|| expand(&templates.annotations, &sample_labels, s.v, ctx));
        current.push((labels, sample_labels, annotations, s.v));
    }
    rs.built.truncate(current.len());
    if !all_built {
        let mut seen: HashSet<&Labels, LabelsHasher> =
            HashSet::with_capacity_and_hasher(current.len(), LabelsHasher::default());
        if !current.iter().all(|(l, ..)| seen.insert(l)) {
            rs.built.clear();
            return Err(EvalError(
                "vector contains metrics with the same labelset after applying alert labels".into(),
            ));
        }
    }
    rs.evaluations += 1;
    let this = rs.evaluations;
    let new_alert = |labels: &Arc<Labels>, annotations, value| Alert {
        labels: Arc::clone(labels),
        annotations,
        state: AlertState::Pending,
        active_at: now,
        fired_at: None,
        resolved_at: None,
        keep_firing_since: None,
        value,
    };
    for (labels, sample_labels, annotations, value) in current {
        let fresh = |kept: Option<BTreeMap<String, String>>| {
            kept.unwrap_or_else(|| expand(&templates.annotations, &sample_labels, value, ctx))
        };
        match rs.active.get_mut(&*labels) {
            Some(old) if old.alert.state != AlertState::Inactive => {
                // Annotations left as they are were expanded last cycle for the same labels
                // and value, into this alert's.
                if old.returned_in + 1 != this || annotations.is_some() {
                    old.alert.annotations = fresh(annotations);
                }
                old.alert.value = value;
                old.returned_in = this;
            }
            Some(old) => *old = Active::new(new_alert(&labels, fresh(annotations), value), this),
            None => {
                rs.active.insert(
                    (*labels).clone(),
                    Active::new(new_alert(&labels, fresh(annotations), value), this),
                );
            }
        }
    }
    let mut out = Vec::new();
    let mut active_or_pending = 0usize;
    let mut forget = Vec::new();
    let active = &rs.active;
    rs.held
        .retain(|k, until| now < *until && active.get(k).is_none_or(|x| x.returned_in != this));
    for (k, act) in rs.active.iter_mut() {
        let al = &mut act.alert;
        if act.returned_in != this {
            let held = rs.held.contains_key(k) && al.state == AlertState::Firing;
            let mut keep_firing = false;
            if al.state == AlertState::Firing && a.keep_firing_for_ms > 0 {
                let since = *al.keep_firing_since.get_or_insert(now);
                keep_firing = now - since < a.keep_firing_for_ms;
            }
            keep_firing |= held;
            if al.state == AlertState::Pending
                || al
                    .resolved_at
                    .is_some_and(|r| now - r > RESOLVED_RETENTION_MS)
            {
                forget.push(k.clone());
            }
            if al.state != AlertState::Inactive && !keep_firing {
                al.state = AlertState::Inactive;
                al.resolved_at = Some(now);
            }
            if !keep_firing {
                continue;
            }
        } else {
            al.keep_firing_since = None;
        }
        active_or_pending += 1;
        if al.state == AlertState::Pending && now - al.active_at >= a.for_ms {
            al.state = AlertState::Firing;
            al.fired_at = Some(now);
        }
        let (alerts, for_state) = match &act.series {
            Some((state, alerts, for_state)) if *state == al.state => {
                (Arc::clone(alerts), Arc::clone(for_state))
            }
            _ => {
                let mut l = Labels::clone(&al.labels);
                l.insert(METRIC_NAME.to_owned(), "ALERTS".to_owned());
                l.insert("alertstate".to_owned(), al.state.as_str().to_owned());
                let alerts = Arc::new(l);
                let mut l = Labels::clone(&al.labels);
                l.insert(METRIC_NAME.to_owned(), "ALERTS_FOR_STATE".to_owned());
                let for_state = Arc::new(l);
                act.series = Some((al.state, Arc::clone(&alerts), Arc::clone(&for_state)));
                (alerts, for_state)
            }
        };
        out.push((alerts, 1.0));
        // Prometheus stores the activation time in whole seconds.
        out.push((for_state, al.active_at.div_euclid(1000) as f64));
    }
    for k in forget {
        rs.active.remove(&k);
    }
    if limit > 0 && active_or_pending > limit {
        rs.active.clear();
        return Err(EvalError(format!(
            "exceeded limit of {limit} with {active_or_pending} alerts"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file;

    fn group(yaml: &str) -> Group {
        file::parse("t.yaml", yaml)
            .expect("rules load")
            .groups
            .remove(0)
    }

    #[test]
    fn alert_state_machine_with_for_and_keep_firing_for() {
        let g = group(
            r#"
groups:
  - name: g
    rules:
      - alert: High
        expr: x > 1
        for: 2m
        keep_firing_for: 2m
        labels: { severity: "{{ if gt $value 5.0 }}page{{ else }}ticket{{ end }}" }
        annotations: { v: "{{ $value }}" }
"#,
        );
        let mut st = MemStorage::new();
        let x: Labels = crate::parse_series_labels("x").expect("labels");
        // x is 2 from 0 to 4m, then 0.
        let values = [2.0, 2.0, 2.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0];
        let mut state = GroupState::new();
        let ext = Labels::new();
        let ctx = EvalContext {
            external_labels: &ext,
            external_url: "",
        };
        let mut seen = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let now = i as i64 * 60_000;
            st.append(&x, now, *v);
            let out = evaluate_group(&g, now, &st, &mut state, &ctx);
            assert!(out.errors.is_empty(), "{:?}", out.errors);
            for (l, v) in out.samples {
                st.append(&l, now, v);
            }
            seen.push(state.alerts(0).first().map(|a| a.state));
        }
        use AlertState::*;
        assert_eq!(
            seen,
            vec![
                Some(Pending),
                Some(Pending),
                Some(Firing),
                Some(Firing),
                Some(Firing),
                Some(Firing),   // keep_firing_for: 5m is the first miss
                Some(Firing),   // 6m: 1m of the 2m
                Some(Inactive), // 7m: 2m reached
                Some(Inactive), // kept as resolved
            ]
        );
        let a = state.alerts(0)[0];
        assert_eq!(a.labels.get("severity").map(String::as_str), Some("ticket"));
        assert_eq!(a.annotations.get("v").map(String::as_str), Some("2"));
    }

    #[test]
    fn later_rules_see_earlier_recordings_and_gone_series_go_stale() {
        let g = group(
            r#"
groups:
  - name: g
    limit: 2
    rules:
      - record: job:x:sum
        expr: sum by (job) (x)
        labels: { kind: sum }
      - record: job:x:double
        expr: job:x:sum * 2
"#,
        );
        let mut st = MemStorage::new();
        let a = crate::parse_series_labels(r#"x{job="a"}"#).expect("labels");
        st.append(&a, 0, 3.0);
        let ext = Labels::new();
        let ctx = EvalContext {
            external_labels: &ext,
            external_url: "",
        };
        let mut state = GroupState::new();
        let out = evaluate_group(&g, 0, &st, &mut state, &ctx);
        let got: Vec<String> = out
            .samples
            .iter()
            .map(|(l, v)| format!("{} {v}", crate::format_labels(l)))
            .collect();
        assert_eq!(
            got,
            vec![
                r#"{__name__="job:x:sum", job="a", kind="sum"} 3"#,
                r#"{__name__="job:x:double", job="a", kind="sum"} 6"#,
            ]
        );
        for (l, v) in out.samples {
            st.append(&l, 0, v);
        }
        // x goes stale: both recordings are marked stale at the next cycle.
        st.append(&a, 60_000, STALE_NAN);
        let out = evaluate_group(&g, 60_000, &st, &mut state, &ctx);
        assert_eq!(out.samples.len(), 2);
        assert!(
            out.samples
                .iter()
                .all(|(_, v)| crate::storage::is_stale(*v))
        );
        // The group limit fails a rule that returns too many series.
        for j in ["b", "c"] {
            let l = crate::parse_series_labels(&format!(r#"x{{job="{j}"}}"#)).expect("labels");
            st.append(&l, 120_000, 1.0);
        }
        st.append(&a, 120_000, 1.0);
        let out = evaluate_group(&g, 120_000, &st, &mut state, &ctx);
        assert!(
            out.errors[0]
                .1
                .0
                .contains("exceeded limit of 2 with 3 series"),
            "{:?}",
            out.errors
        );
    }

    proptest::proptest! {
        /// Cycle after cycle, a group whose state and queries keep what they built from the
        /// series' label sets answers exactly as the same group parsed anew each cycle with
        /// what its state built forgotten (so that nothing kept applies): the same samples,
        /// the same errors, the same alerts. Series appear, go stale, come back and collide
        /// after their names are dropped.
        #[test]
        fn kept_label_sets_change_no_result(
            present in proptest::collection::vec(proptest::collection::vec(0u8..4, 8), 1..10),
        ) {
            let yaml = r#"
groups:
- name: g
  rules:
  - record: a:sum
    expr: sum by (a) (x)
    labels:
      team: t
  - record: x:copy
    expr: x * 2
    labels:
      b: ""
  - alert: High
    expr: a:sum > 3
    for: 30s
    labels:
      severity: page
    annotations:
      summary: '{{ $labels.a }} at {{ $value }}'
  - alert: Templated
    expr: x > 1
    labels:
      where: 'in {{ $labels.a }}'
  - alert: Collide
    expr: '{__name__=~"x|y"} > 2'
  - record: r:collide
    expr: '{__name__=~"x|y"} + 0'
"#;
            let kept_group = group(yaml);
            let pool: Vec<Labels> = (0..8)
                .map(|i| {
                    crate::parse_series_labels(&format!(
                        r#"{}{{a="{}",b="{}"}}"#,
                        if i >= 6 { "y" } else { "x" },
                        i % 3,
                        i % 2
                    ))
                    .expect("labels")
                })
                .collect();
            let ext = Labels::new();
            let ctx = EvalContext {
                external_labels: &ext,
                external_url: "",
            };
            let mut st = MemStorage::new();
            let mut kept_state = GroupState::new();
            let mut fresh_state = GroupState::new();
            let mut written_before: std::collections::BTreeSet<Labels> = Default::default();
            for (cycle, row) in present.iter().enumerate() {
                let t = (cycle as i64 + 1) * 15_000;
                for (i, &p) in row.iter().enumerate() {
                    if p == 0 {
                        if st.series(&pool[i]).is_some() {
                            st.append(&pool[i], t, STALE_NAN);
                        }
                    } else {
                        st.append(&pool[i], t, f64::from(p) + cycle as f64 % 2.0);
                    }
                }
                let kept = evaluate_group(&kept_group, t, &st, &mut kept_state, &ctx);
                let fresh_group = group(yaml);
                fresh_state.forget_built();
                let fresh = evaluate_group(&fresh_group, t, &st, &mut fresh_state, &ctx);
                // Alerts come out in the order of a hash map: compared as sets.
                let show = |o: &GroupOutput| {
                    let mut samples: Vec<(Labels, u64)> = o
                        .samples
                        .iter()
                        .map(|(l, v)| ((**l).clone(), v.to_bits()))
                        .collect();
                    samples.sort();
                    format!("{samples:?} {:?}", o.errors)
                };
                proptest::prop_assert_eq!(show(&kept), show(&fresh), "cycle {}", cycle);
                for r in 0..kept_group.rules.len() {
                    let mut a: Vec<Alert> = kept_state.alerts(r).into_iter().cloned().collect();
                    let mut b: Vec<Alert> = fresh_state.alerts(r).into_iter().cloned().collect();
                    a.sort_by(|x, y| x.labels.cmp(&y.labels));
                    b.sort_by(|x, y| x.labels.cmp(&y.labels));
                    proptest::prop_assert_eq!(a, b, "rule {} cycle {}", r, cycle);
                }
                // A series written last cycle and not now gets a staleness marker, and only then
                // (a rule that failed writes nothing and keeps its series).
                let errored: Vec<&str> = kept.errors.iter().map(|(n, _)| n.as_str()).collect();
                let of_errored = |l: &Labels| {
                    ["__name__", "alertname"]
                        .iter()
                        .any(|k| l.get(*k).is_some_and(|n| errored.contains(&n.as_str())))
                };
                let mut written: std::collections::BTreeSet<Labels> = kept
                    .samples
                    .iter()
                    .filter(|(_, v)| !crate::storage::is_stale(*v))
                    .map(|(l, _)| (**l).clone())
                    .collect();
                let marked: std::collections::BTreeSet<Labels> = kept
                    .samples
                    .iter()
                    .filter(|(_, v)| crate::storage::is_stale(*v))
                    .map(|(l, _)| (**l).clone())
                    .collect();
                let gone: std::collections::BTreeSet<Labels> = written_before
                    .difference(&written)
                    .filter(|l| !of_errored(l))
                    .cloned()
                    .collect();
                proptest::prop_assert_eq!(marked, gone, "cycle {}", cycle);
                written.extend(written_before.into_iter().filter(|l| of_errored(l)));
                written_before = written;
                // Store what the group wrote, as the agent does.
                for (l, v) in kept.samples {
                    st.append(&l, t, v);
                }
            }
        }
    }
}

//! Prometheus rule groups (`alerts.rule_files`, `alerts.groups`) evaluated in the agent over its
//! own series: each cycle the structured metrics snapshot of the registry (never exposition
//! text) is appended to a bounded [`History`], every group whose interval has elapsed is
//! evaluated in order with [`sidelight_rules::evaluate_group`], recorded series go back into the
//! history and out on `/metrics` ([`RecordedCollector`]), and the rules' pending and firing
//! alerts are handed to the notification pipeline in its [`Alert`] form, with the transitions
//! (fired, resolved) it acts on.
//!
//! Pure apart from the snapshot it is given: `now` is a parameter.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use parking_lot::RwLock;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use sidelight_collector::model::{
    FamilyRef, Kind, LabelsRef, SeriesGeneration, Snapshot, ValueRef, Visit, le_value,
};
use sidelight_rules::group::{AlertState, EvalContext, GroupState, evaluate_group};
use sidelight_rules::storage::{METRIC_NAME, is_stale};
use sidelight_rules::{Group, History, HistoryConfig, HistoryStats, Labels, Rule, SeriesHandle};

use super::alert::{Alert, Millis, State, Transition, fingerprint};

/// How long a resolved alert is kept for the notifier's resolved message.
const RESOLVED_RETENTION: Millis = 15 * 60 * 1000;

/// The last evaluation of one group, for `/api/v1/rules`.
#[derive(Debug, Clone, Default)]
pub struct GroupStatus {
    /// When it was last evaluated (ms), `None` before the first evaluation.
    pub last_evaluation: Option<Millis>,
    /// How long that took (seconds).
    pub evaluation_seconds: f64,
    /// Per rule: its last error.
    pub errors: Vec<Option<String>>,
}

/// Recorded series by record name: their labels (name included) and last value.
pub type Recorded = BTreeMap<String, Vec<(Labels, f64)>>;

/// The recorded series of the last evaluation of every group, served on `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct RecordedCollector(pub Arc<RwLock<Recorded>>);

impl Collector for RecordedCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let recorded = self.0.read();
        for (name, series) in recorded.iter() {
            if series.is_empty() {
                continue;
            }
            let mut metric = encoder.encode_descriptor(
                name,
                "Recorded by a Prometheus recording rule",
                None,
                MetricType::Gauge,
            )?;
            for (labels, v) in series {
                let pairs: Vec<(&str, &str)> = labels
                    .iter()
                    .filter(|(k, _)| k.as_str() != METRIC_NAME)
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                ConstGauge::new(*v).encode(metric.encode_family(&pairs)?)?;
            }
        }
        Ok(())
    }
}

/// RFC 3339 with milliseconds, UTC.
fn rfc3339(ms: Millis) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// An alert as Prometheus's HTTP API shows it.
fn api_alert(a: &sidelight_rules::Alert) -> serde_json::Value {
    let mut v = serde_json::json!({
        "labels": &*a.labels,
        "annotations": a.annotations,
        "state": a.state.as_str(),
        "activeAt": rfc3339(a.active_at),
        "value": sidelight_rules::gofmt::fmt_lower_e(a.value),
    });
    if let Some(t) = a.keep_firing_since {
        v["keepFiringSince"] = rfc3339(t).into();
    }
    v
}

impl PromRules {
    /// `GET /api/v1/rules`'s `data`, as Prometheus answers it.
    pub fn api_rules(&self) -> serde_json::Value {
        let mut groups = Vec::new();
        for ((g, status), st) in self.groups.iter().zip(&self.status).zip(&self.states) {
            let last = status
                .last_evaluation
                .map_or_else(|| "0001-01-01T00:00:00Z".to_owned(), rfc3339);
            let mut rules = Vec::new();
            for (i, r) in g.rules.iter().enumerate() {
                let error = status.errors.get(i).cloned().flatten();
                let health = match (&status.last_evaluation, &error) {
                    (None, _) => "unknown",
                    (Some(_), Some(_)) => "err",
                    (Some(_), None) => "ok",
                };
                let mut v = match r {
                    Rule::Recording(rec) => serde_json::json!({
                        "type": "recording",
                        "name": rec.record,
                        "query": rec.expr.text().trim(),
                        "labels": rec.labels,
                    }),
                    Rule::Alerting(al) => {
                        let alerts: Vec<serde_json::Value> = st
                            .alerts(i)
                            .into_iter()
                            .filter(|a| a.state != AlertState::Inactive)
                            .map(api_alert)
                            .collect();
                        let state = st
                            .alerts(i)
                            .iter()
                            .map(|a| a.state)
                            .max()
                            .unwrap_or(AlertState::Inactive);
                        serde_json::json!({
                            "type": "alerting",
                            "name": al.alert,
                            "query": al.expr.text().trim(),
                            "duration": al.for_ms as f64 / 1000.0,
                            "keepFiringFor": al.keep_firing_for_ms as f64 / 1000.0,
                            "labels": al.labels,
                            "annotations": al.annotations,
                            "alerts": alerts,
                            "state": state.as_str(),
                        })
                    }
                };
                v["health"] = health.into();
                v["lastError"] = error.unwrap_or_default().into();
                v["lastEvaluation"] = last.clone().into();
                v["evaluationTime"] = 0.0.into();
                rules.push(v);
            }
            groups.push(serde_json::json!({
                "name": g.name,
                "file": g.file,
                "interval": g.interval_ms.unwrap_or(self.default_interval) as f64 / 1000.0,
                "limit": g.limit,
                "rules": rules,
                "evaluationTime": status.evaluation_seconds,
                "lastEvaluation": last,
            }));
        }
        serde_json::json!({ "groups": groups })
    }

    /// The pending and firing alerts as Prometheus's `GET /api/v1/alerts` lists them.
    pub fn api_alerts(&self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for (g, st) in self.groups.iter().zip(&self.states) {
            for (i, r) in g.rules.iter().enumerate() {
                if matches!(r, Rule::Alerting(_)) {
                    out.extend(
                        st.alerts(i)
                            .into_iter()
                            .filter(|a| a.state != AlertState::Inactive)
                            .map(api_alert),
                    );
                }
            }
        }
        out
    }
}

/// When each log exception type was first seen, as a map the edge keeps (and persists).
pub type FirstSeen = BTreeMap<(String, String), Millis>;

/// The series that make "a new exception type since the last deploy" a standard rule:
/// `sidelight_log_exception_first_seen_timestamp_seconds{source, exception}` (when the agent
/// first counted that exception type in `sidelight_log_exceptions_total`, kept across restarts)
/// and `dora_last_successful_deployment_timestamp_seconds{service}` (the newest successful
/// deployment per service, on a hub).
#[derive(Debug, Clone, Default)]
pub struct FeedbackCollector {
    pub first_seen: Arc<RwLock<FirstSeen>>,
    pub deploys: Arc<RwLock<HashMap<String, super::alert::DeployInfo>>>,
}

impl Collector for FeedbackCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let first_seen = self.first_seen.read();
        if !first_seen.is_empty() {
            let mut metric = encoder.encode_descriptor(
                "sidelight_log_exception_first_seen_timestamp_seconds",
                "When the agent first counted this exception type (Unix seconds)",
                None,
                MetricType::Gauge,
            )?;
            for ((source, exception), t) in first_seen.iter() {
                let labels = [
                    ("source", source.as_str()),
                    ("exception", exception.as_str()),
                ];
                ConstGauge::new(*t as f64 / 1000.0).encode(metric.encode_family(&labels)?)?;
            }
        }
        let deploys = self.deploys.read();
        if !deploys.is_empty() {
            let mut metric = encoder.encode_descriptor(
                "dora_last_successful_deployment_timestamp_seconds",
                "When the newest successful deployment of the service finished (Unix seconds)",
                None,
                MetricType::Gauge,
            )?;
            let mut sorted: Vec<_> = deploys.iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(b.0));
            for (service, d) in sorted {
                let labels = [("service", service.as_str())];
                ConstGauge::new(d.at as f64 / 1000.0).encode(metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The family that counts log exceptions by source and type.
const EXCEPTIONS: &str = "sidelight_log_exceptions";

/// The exception types of `sidelight_log_exceptions_total` in `snapshot` not in `first_seen`:
/// recorded as first seen at `now`, and returned (to persist).
pub fn note_exceptions(
    snapshot: &Snapshot,
    now: Millis,
    first_seen: &mut FirstSeen,
) -> Vec<(String, String, Millis)> {
    let mut seen = ExceptionsSeen::new(now, first_seen);
    snapshot.visit(&mut seen);
    seen.newly
}

/// A visitor of the metrics model that notes the exception types of
/// `sidelight_log_exceptions_total` not in `first_seen` as first seen at `now` (in `newly`, to
/// persist).
pub struct ExceptionsSeen<'a> {
    now: Millis,
    first_seen: &'a mut FirstSeen,
    /// Whether the current family's samples are named `sidelight_log_exceptions_total` (the
    /// counter `sidelight_log_exceptions`, or a gauge named with the `_total`).
    counter: Option<bool>,
    /// The types first seen, with their source and time.
    pub newly: Vec<(String, String, Millis)>,
}

impl<'a> ExceptionsSeen<'a> {
    pub fn new(now: Millis, first_seen: &'a mut FirstSeen) -> Self {
        ExceptionsSeen {
            now,
            first_seen,
            counter: None,
            newly: Vec::new(),
        }
    }
}

impl Visit for ExceptionsSeen<'_> {
    fn family(&mut self, f: &FamilyRef<'_>) {
        self.counter = match f.name.strip_prefix(EXCEPTIONS) {
            Some("") => Some(true),
            Some("_total") => Some(false),
            _ => None,
        };
    }

    fn wants_series(&self) -> bool {
        self.counter.is_some()
    }

    fn series(&mut self, labels: LabelsRef<'_>, value: ValueRef<'_>) {
        let Some(counter) = self.counter else {
            return;
        };
        let named = match value {
            ValueRef::Counter { .. } => counter,
            ValueRef::Gauge(_) | ValueRef::Unknown(_) => !counter,
            ValueRef::Histogram(_) => false,
        };
        if !named {
            return;
        }
        let get = |k: &str| labels.value(k).unwrap_or_default();
        let (source, exception) = (get("source"), get("exception"));
        if exception.is_empty()
            || self
                .first_seen
                .contains_key(&(source.to_owned(), exception.to_owned()))
        {
            return;
        }
        let key = (source.to_owned(), exception.to_owned());
        self.newly.push((key.0.clone(), key.1.clone(), self.now));
        self.first_seen.insert(key, self.now);
    }
}

/// `alerts.external_labels` and `alerts.external_url`: the rules' `$externalLabels` and
/// `$externalURL`, and the labels attached to the alerts the notifiers receive.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct External {
    /// Label name to value.
    pub labels: Labels,
    /// The agent's URL as users reach it ("" when not set).
    pub url: String,
}

/// What one cycle changed in the alerts.
#[derive(Debug, Default)]
pub struct Outcome {
    pub transitions: Vec<Transition>,
    /// Rules whose error is new this cycle (to log once per change): (group, rule, error).
    pub errors: Vec<(String, String, String)>,
    /// Rule evaluations that failed this cycle.
    pub failed: usize,
}

/// The series of the last walk of the metrics model with their history handles, family by
/// family in the order the walk lends them. The registry serves its series in a stable order, so
/// a series found at its position again is appended by its handle
/// ([`History::append_by_handle`]): its label set is neither built nor hashed again. When the
/// store lent the family under the series generation it lent it under last time
/// ([`FamilyRef::series_generation`]), the series at a position is the one cached there and its
/// labels are not read at all; otherwise the labels lent are compared with those cached. A series
/// found elsewhere (a new one, or one that moved) is appended by its labels and cached at its new
/// position. Holds a copy of each series' labels; rebuilt when the rules change.
#[derive(Debug, Default)]
struct SnapshotHandles {
    families: Vec<FamilyHandles>,
    /// Families read whose series were found by position alone (lent under the generation
    /// cached), since the handles were built; the tests check that the fast path is taken.
    same_series_families: u64,
}

#[derive(Debug)]
struct FamilyHandles {
    name: String,
    kind: Kind,
    /// Whether some rule can read a sample of this family ([`Ingest::reads`]); when not, its
    /// series are not read at all.
    read: bool,
    /// The series generation `samples` were cached under: set when the family was lent whole
    /// under one, `None` otherwise (never lent with one, not read, or a walk cut short).
    generation: Option<SeriesGeneration>,
    /// Its samples in the order [`Family::samples`] yields them.
    samples: Vec<CachedSample>,
}

/// Which of a family's sample names a sample has ([`SampleNames`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Suffix {
    /// A gauge's or untyped metric's bare name.
    Bare,
    Total,
    Sum,
    Count,
    Bucket,
}

#[derive(Debug)]
struct CachedSample {
    /// The sample's name: the family's with this suffix (`<family>_total`, `<family>_bucket`, …).
    suffix: Suffix,
    /// The series' labels, without a bucket's `le`.
    labels: Vec<(String, String)>,
    /// A bucket's upper bound (its `le`).
    le: Option<f64>,
    /// `None` for a recorded series (the rules store it when they record it) or one the
    /// history's cap refused (appended by its labels, so that it is counted).
    handle: Option<SeriesHandle>,
    recorded: bool,
}

/// The visitor that appends a walk of the metrics model to the history at `now`, by the handles
/// cached per position ([`SnapshotHandles`]); recorded series (`recorded`) are not appended
/// (the rules store them when they record them). A family no rule can read (by its sample
/// names against the rules' selectors, [`History::may_keep_name`]) is skipped whole: the walk
/// is told not to lend its series ([`Visit::wants_series`]), and any it lends anyway are
/// passed by; the history would keep none of them. [`Ingest::finish`] drops what the walk no
/// longer lent.
struct Ingest<'a> {
    handles: &'a mut SnapshotHandles,
    history: &'a mut History,
    recorded: &'a HashSet<String>,
    /// Whether families no rule reads are skipped (always, but in the tests that hold the
    /// skipping to the result of reading everything).
    skip_unread: bool,
    /// Whether series generations are trusted (always, but in the tests that hold the result
    /// to that of comparing every series' labels).
    identity: bool,
    /// Whether the current family's series are read.
    reading: bool,
    /// Whether the current family is lent under the generation its cache was built under, so
    /// that a series' position is its identity (never for histograms, whose buckets may
    /// change).
    same_series: bool,
    /// The series generation the current family is lent under.
    generation: Option<SeriesGeneration>,
    now: Millis,
    /// The current family's index in `handles` (one past it: 0 before the first family).
    family: usize,
    /// The current family's next sample position.
    sample: usize,
    /// The current family's sample names.
    names: SampleNames,
}

/// The sample names of one family (`Family::samples`): a counter's `_total`, a gauge's bare
/// name, a histogram's `_sum`, `_count`, `_bucket`.
#[derive(Debug, Default)]
struct SampleNames {
    bare: String,
    total: String,
    sum: String,
    count: String,
    bucket: String,
}

impl SampleNames {
    fn set(&mut self, name: &str) {
        for (s, suffix) in [
            (&mut self.bare, ""),
            (&mut self.total, "_total"),
            (&mut self.sum, "_sum"),
            (&mut self.count, "_count"),
            (&mut self.bucket, "_bucket"),
        ] {
            s.clear();
            s.push_str(name);
            s.push_str(suffix);
        }
    }

    fn get(&self, suffix: Suffix) -> &str {
        match suffix {
            Suffix::Bare => &self.bare,
            Suffix::Total => &self.total,
            Suffix::Sum => &self.sum,
            Suffix::Count => &self.count,
            Suffix::Bucket => &self.bucket,
        }
    }
}

impl Ingest<'_> {
    fn new<'a>(
        handles: &'a mut SnapshotHandles,
        history: &'a mut History,
        recorded: &'a HashSet<String>,
        now: Millis,
    ) -> Ingest<'a> {
        Ingest {
            handles,
            history,
            recorded,
            skip_unread: true,
            identity: true,
            reading: false,
            same_series: false,
            generation: None,
            now,
            family: 0,
            sample: 0,
            names: SampleNames::default(),
        }
    }

    /// Whether a rule can read some sample of the family whose sample names are `names`: one of
    /// them is not a recorded series (which the rules store themselves) and some selector can
    /// select it. Every name a family's samples can take is asked, whatever its kind.
    fn reads(history: &History, recorded: &HashSet<String>, names: &SampleNames) -> bool {
        [
            &names.bare,
            &names.total,
            &names.sum,
            &names.count,
            &names.bucket,
        ]
        .into_iter()
        .any(|n| !recorded.contains(n) && history.may_keep_name(n))
    }

    /// Truncates the current family's cache to the samples lent, and notes the generation they
    /// were lent under when they were read.
    fn end_family(&mut self) {
        if let Some(f) = self
            .family
            .checked_sub(1)
            .and_then(|i| self.handles.families.get_mut(i))
        {
            f.samples.truncate(self.sample);
            f.generation = if self.reading { self.generation } else { None };
        }
    }

    /// Ends the walk: the families and samples not lent this time are forgotten.
    fn finish(mut self) {
        self.end_family();
        self.handles.families.truncate(self.family);
    }

    /// Appends one sample at the current family's next position.
    fn one(&mut self, suffix: Suffix, labels: LabelsRef<'_>, le: Option<f64>, v: f64) {
        let j = self.sample;
        self.sample += 1;
        let Some(family) = self.family.checked_sub(1) else {
            return;
        };
        let cache = &mut self.handles.families[family].samples;
        let (history, now) = (&mut *self.history, self.now);
        let name = self.names.get(suffix);
        if let Some(c) = cache.get_mut(j)
            && c.suffix == suffix
            && c.le == le
            && (self.same_series || labels.eq_labels(&c.labels))
        {
            if c.recorded {
                return;
            }
            if let Some(h) = c.handle
                && history.append_by_handle(h, now, v)
            {
                return;
            }
            c.handle = history.append_handle(&label_set(name, labels, le), now, v);
            return;
        }
        let is_recorded = self.recorded.contains(name);
        let handle = if is_recorded {
            None
        } else {
            history.append_handle(&label_set(name, labels, le), now, v)
        };
        let entry = CachedSample {
            suffix,
            labels: labels.to_vec(),
            le,
            handle,
            recorded: is_recorded,
        };
        match cache.get_mut(j) {
            Some(slot) => *slot = entry,
            None => cache.push(entry),
        }
    }
}

impl Visit for Ingest<'_> {
    fn family(&mut self, f: &FamilyRef<'_>) {
        self.end_family();
        let i = self.family;
        self.family += 1;
        self.sample = 0;
        self.names.set(f.name);
        let families = &mut self.handles.families;
        if families
            .get(i)
            .is_none_or(|c| c.name != f.name || c.kind != f.kind)
        {
            let fresh = FamilyHandles {
                name: f.name.to_owned(),
                kind: f.kind,
                read: Self::reads(self.history, self.recorded, &self.names),
                generation: None,
                samples: Vec::new(),
            };
            if i < families.len() {
                families[i] = fresh;
            } else {
                families.push(fresh);
            }
        }
        let cached = &mut families[i];
        self.reading = !self.skip_unread || cached.read;
        self.generation = f.series_generation.filter(|_| self.identity);
        self.same_series = self.reading
            && self.generation.is_some()
            && cached.generation == self.generation
            && f.kind != Kind::Histogram;
        self.handles.same_series_families += u64::from(self.same_series);
        // Set again once the family has been lent whole (`end_family`).
        cached.generation = None;
    }

    fn wants_series(&self) -> bool {
        self.reading
    }

    fn series(&mut self, labels: LabelsRef<'_>, value: ValueRef<'_>) {
        if !self.reading {
            return;
        }
        match value {
            ValueRef::Counter { total, .. } => self.one(Suffix::Total, labels, None, total),
            ValueRef::Gauge(v) | ValueRef::Unknown(v) => self.one(Suffix::Bare, labels, None, v),
            ValueRef::Histogram(h) => {
                self.one(Suffix::Sum, labels, None, h.sum);
                self.one(Suffix::Count, labels, None, h.count as f64);
                for b in &h.buckets {
                    let le = Some(b.upper_bound);
                    self.one(Suffix::Bucket, labels, le, b.cumulative_count as f64);
                }
            }
        }
    }
}

/// A sample's label set as the rules read it: its labels (a bucket's `le` last) with
/// `__name__`.
fn label_set(name: &str, labels: LabelsRef<'_>, le: Option<f64>) -> Labels {
    let mut out: Labels = labels
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    if let Some(le) = le {
        out.insert("le".to_owned(), le_value(le));
    }
    out.insert(METRIC_NAME.to_owned(), name.to_owned());
    out
}

/// The Prometheus-rules evaluator's state.
#[derive(Debug)]
pub struct PromRules {
    groups: Arc<Vec<Group>>,
    history: History,
    states: Vec<GroupState>,
    status: Vec<GroupStatus>,
    /// Alerts in the notification pipeline's form, by fingerprint.
    pub alerts: BTreeMap<String, Alert>,
    recorded: RecordedCollector,
    recorded_names: HashSet<String>,
    /// The snapshot's series with their history handles, from the last cycle.
    handles: SnapshotHandles,
    /// What each rules alert is in the pipeline's form, kept while the alert lives.
    mirror: Mirror,
    /// `alerts.evaluation_interval` at the last cycle (ms), for groups without an interval.
    default_interval: Millis,
}

impl PromRules {
    pub fn new(max_series: usize, recorded: RecordedCollector) -> Self {
        PromRules {
            groups: Arc::new(Vec::new()),
            history: History::new(HistoryConfig {
                max_series,
                ..HistoryConfig::default()
            }),
            states: Vec::new(),
            status: Vec::new(),
            alerts: BTreeMap::new(),
            recorded,
            recorded_names: HashSet::new(),
            handles: SnapshotHandles::default(),
            mirror: Mirror::default(),
            default_interval: 15_000,
        }
    }

    /// The groups evaluated, with their last status.
    pub fn groups(&self) -> (&[Group], &[GroupStatus], &[GroupState]) {
        (&self.groups, &self.status, &self.states)
    }

    pub fn stats(&self) -> HistoryStats {
        self.history.stats()
    }

    /// The first series refused by the cap, once.
    pub fn take_cap_report(&mut self) -> Option<Labels> {
        self.history.take_cap_report()
    }

    /// Puts back the alerts kept across a restart (call after [`Self::set_groups`]). An alert of
    /// a loaded alerting rule carries on, and is not resolved for lack of data during a grace
    /// period after `now`: its rule's longest window (at most 5 minutes) plus two evaluation
    /// intervals, the time the restarted history needs to answer again. One that no loaded rule
    /// names is treated as after a reload that removed its rule: firing, it resolves at the next
    /// cycle (a resolved message); pending, it is dropped; resolved, it stays for the message.
    pub fn restore(&mut self, alerts: Vec<Alert>, now: Millis, default_interval: Millis) {
        for a in alerts {
            let place = self.groups.iter().enumerate().find_map(|(gi, g)| {
                g.rules
                    .iter()
                    .position(|r| matches!(r, Rule::Alerting(al) if al.alert == a.name()))
                    .map(|ri| (gi, ri))
            });
            let Some((gi, ri)) = place else {
                self.alerts.insert(a.fingerprint.clone(), a);
                continue;
            };
            let mut annotations = BTreeMap::new();
            annotations.insert("summary".to_owned(), a.summary.clone());
            if let Some(r) = &a.runbook {
                annotations.insert("runbook_url".to_owned(), r.clone());
            }
            let g = &self.groups[gi];
            let window = g.rules[ri]
                .query()
                .selectors()
                .iter()
                .map(|(_, w)| *w)
                .max()
                .unwrap_or(0)
                .min(5 * 60 * 1000);
            let hold_until = now + window + 2 * g.interval_ms.unwrap_or(default_interval);
            self.states[gi].restore(
                ri,
                sidelight_rules::Alert {
                    labels: Arc::new(a.rule_labels()),
                    annotations,
                    state: match a.state {
                        State::Pending => AlertState::Pending,
                        State::Firing => AlertState::Firing,
                        State::Resolved => AlertState::Inactive,
                    },
                    active_at: a.active_at,
                    fired_at: a.fired_at,
                    resolved_at: a.resolved_at,
                    keep_firing_since: None,
                    value: a.value,
                },
                hold_until,
            );
            self.alerts.insert(a.fingerprint.clone(), a);
        }
    }

    /// Takes new groups (a reload). A group with the same file, name and rules as before keeps
    /// its alert state, as Prometheus keeps it across a reload.
    pub fn set_groups(&mut self, groups: Arc<Vec<Group>>) {
        if Arc::ptr_eq(&groups, &self.groups) {
            return;
        }
        let same = |a: &Group, b: &Group| {
            a.file == b.file
                && a.name == b.name
                && a.rules.len() == b.rules.len()
                && a.rules
                    .iter()
                    .zip(&b.rules)
                    .all(|(x, y)| x.name() == y.name() && x.query().text() == y.query().text())
        };
        let mut states = Vec::with_capacity(groups.len());
        let mut status = Vec::with_capacity(groups.len());
        for g in groups.iter() {
            match self.groups.iter().position(|old| same(old, g)) {
                Some(i) => {
                    states.push(self.states[i].clone());
                    status.push(self.status[i].clone());
                }
                None => {
                    states.push(GroupState::new());
                    status.push(GroupStatus::default());
                }
            }
        }
        self.history.set_rules(&groups);
        // Which series are recorded ones (not stored from the snapshot) may have changed.
        self.handles = SnapshotHandles::default();
        self.recorded_names = groups
            .iter()
            .flat_map(|g| g.rules.iter())
            .filter_map(|r| match r {
                Rule::Recording(r) => Some(r.record.clone()),
                Rule::Alerting(_) => None,
            })
            .collect();
        self.recorded
            .0
            .write()
            .retain(|name, _| self.recorded_names.contains(name));
        self.states = states;
        self.status = status;
        self.groups = groups;
    }

    /// One cycle at `now`: ingest the snapshot, evaluate the groups that are due (a group's
    /// `interval`, else `default_interval`), update the alerts.
    pub fn cycle(
        &mut self,
        now: Millis,
        snapshot: Option<&Snapshot>,
        default_interval: Millis,
        external: &External,
    ) -> Outcome {
        if let Some(snap) = snapshot {
            let _: Result<(), std::convert::Infallible> = self.ingest(now, |v| {
                snap.visit(v);
                Ok(())
            });
        }
        self.evaluate(now, default_interval, external)
    }

    /// Appends the series a walk of the metrics model lends to the history at `now`: `walk`
    /// lends them to the visitor it is given (e.g. [`sidelight_collector::model::walk`] over the
    /// registry). When `walk` fails, the samples lent are kept but the handles cached for the
    /// series it did not reach are not dropped.
    pub fn ingest<E>(
        &mut self,
        now: Millis,
        walk: impl FnOnce(&mut dyn Visit) -> Result<(), E>,
    ) -> Result<(), E> {
        self.ingest_with(now, true, true, walk)
    }

    /// [`Self::ingest`], reading every family when `skip_unread` is `false` and comparing every
    /// series' labels when `identity` is `false` (the tests' references).
    fn ingest_with<E>(
        &mut self,
        now: Millis,
        skip_unread: bool,
        identity: bool,
        walk: impl FnOnce(&mut dyn Visit) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut ingest = Ingest::new(
            &mut self.handles,
            &mut self.history,
            &self.recorded_names,
            now,
        );
        ingest.skip_unread = skip_unread;
        ingest.identity = identity;
        walk(&mut ingest)?;
        ingest.finish();
        Ok(())
    }

    /// Evaluates the groups that are due at `now` over what was ingested (a group's `interval`,
    /// else `default_interval`), and updates the alerts.
    pub fn evaluate(
        &mut self,
        now: Millis,
        default_interval: Millis,
        external: &External,
    ) -> Outcome {
        self.default_interval = default_interval;
        let ctx = EvalContext {
            external_labels: &external.labels,
            external_url: &external.url,
        };
        let mut out = Outcome::default();
        let groups = self.groups.clone();
        for (i, g) in groups.iter().enumerate() {
            let interval = g.interval_ms.unwrap_or(default_interval).max(1);
            if self.status[i]
                .last_evaluation
                .is_some_and(|last| now - last < interval)
            {
                continue;
            }
            let started = std::time::Instant::now();
            let result = evaluate_group(g, now, &self.history, &mut self.states[i], &ctx);
            let mut recorded: HashMap<String, Vec<(Labels, f64)>> = HashMap::new();
            for (l, v) in result.samples {
                self.history.append(&l, now, v);
                if is_stale(v) {
                    continue;
                }
                if let Some(name) = l.get(METRIC_NAME)
                    && self.recorded_names.contains(name)
                {
                    recorded
                        .entry(name.clone())
                        .or_default()
                        .push((Labels::clone(&l), v));
                }
            }
            {
                let mut served = self.recorded.0.write();
                for r in &g.rules {
                    if let Rule::Recording(r) = r {
                        served.insert(
                            r.record.clone(),
                            recorded.remove(&r.record).unwrap_or_default(),
                        );
                    }
                }
            }
            let status = &mut self.status[i];
            status.last_evaluation = Some(now);
            status.evaluation_seconds = started.elapsed().as_secs_f64();
            let errors: Vec<Option<String>> = (0..g.rules.len())
                .map(|r| self.states[i].last_error(r).map(|e| e.to_string()))
                .collect();
            out.failed += result.errors.len();
            for (r, e) in errors.iter().enumerate() {
                if let Some(e) = e
                    && status.errors.get(r).and_then(Option::as_ref) != Some(e)
                {
                    out.errors
                        .push((g.name.clone(), g.rules[r].name().to_owned(), e.clone()));
                }
            }
            status.errors = errors;
        }
        self.history.prune(now);
        out.transitions = self.update_alerts(now, &external.labels);
        out
    }

    /// Mirrors the rules' alerts into the pipeline's form, with the external labels they lack
    /// (as Prometheus attaches them when it sends an alert), and says what fired and resolved:
    /// first the alerts the rules report, by fingerprint, then those they no longer report, by
    /// fingerprint. Two rules' alerts with the same fingerprint are one alert: the one of the
    /// later rule (or, within a rule, the greater label set) is kept. An alert's labels with the
    /// external ones, and its fingerprint, are built when the rules first report it
    /// ([`Mirror`]); the pipeline's alerts are updated in place.
    fn update_alerts(&mut self, now: Millis, external: &Labels) -> Vec<Transition> {
        let PromRules {
            groups,
            states,
            alerts,
            mirror,
            ..
        } = self;
        if mirror.external != *external {
            mirror.by_labels.clear();
            mirror.external = external.clone();
        }
        mirror.pass = mirror.pass.wrapping_add(1);
        let pass = mirror.pass;
        // This cycle's alerts: each one's key in the mirror, its rule's place, the rules' alert,
        // and its labels with the external ones when built this cycle.
        let mut reported = Vec::new();
        for (gi, (g, st)) in groups.iter().zip(states.iter()).enumerate() {
            for (ri, r) in g.rules.iter().enumerate() {
                if !matches!(r, Rule::Alerting(_)) {
                    continue;
                }
                for a in st.each_alert(ri) {
                    let key = Arc::as_ptr(&a.labels) as usize;
                    let built = match mirror.by_labels.get_mut(&key) {
                        // The same allocation (the mirror holds it, so it is not reused).
                        Some(m) if Arc::ptr_eq(&m.labels, &a.labels) => {
                            m.seen = pass;
                            None
                        }
                        _ => {
                            let (labels, added) = with_external(&a.labels, external);
                            mirror.by_labels.insert(
                                key,
                                Mirrored {
                                    labels: Arc::clone(&a.labels),
                                    fingerprint: fingerprint(&labels),
                                    external: added,
                                    seen: pass,
                                },
                            );
                            Some(labels)
                        }
                    };
                    reported.push((key, (gi, ri), a, built));
                }
            }
        }
        mirror.by_labels.retain(|_, m| m.seen == pass);
        let by_labels = &mirror.by_labels;
        let mut current: Vec<Reported<'_>> = reported
            .into_iter()
            .filter_map(|(key, place, a, built)| by_labels.get(&key).map(|m| (m, place, a, built)))
            .collect();
        current.sort_by(|x, y| {
            (x.0.fingerprint.as_str(), x.1)
                .cmp(&(y.0.fingerprint.as_str(), y.1))
                .then_with(|| x.2.labels.cmp(&y.2.labels))
        });
        // Of alerts with one fingerprint, the last (as the rules report them) is the one.
        current.reverse();
        current.dedup_by(|later, earlier| later.0.fingerprint == earlier.0.fingerprint);
        current.reverse();
        let mut transitions = Vec::new();
        for (m, _, a, built) in current.iter_mut() {
            let state = match a.state {
                AlertState::Pending => State::Pending,
                AlertState::Firing => State::Firing,
                AlertState::Inactive => State::Resolved,
            };
            let ann = |k: &str| {
                a.annotations
                    .get(k)
                    .map(String::as_str)
                    .filter(|v| !v.is_empty())
            };
            let summary = ann("summary").or_else(|| ann("description")).unwrap_or("");
            let runbook = ann("runbook_url");
            let dashboard = ann("dashboard_url").or_else(|| ann("dashboard"));
            let fp = &m.fingerprint;
            let before = match alerts.get_mut(fp) {
                Some(old) => {
                    let before = old.state;
                    if let Some(labels) = built.take() {
                        old.labels = labels;
                    }
                    if old.external != m.external {
                        old.external.clone_from(&m.external);
                    }
                    if old.summary != summary {
                        summary.clone_into(&mut old.summary);
                    }
                    if old.runbook.as_deref() != runbook {
                        old.runbook = runbook.map(str::to_owned);
                    }
                    if old.dashboard.as_deref() != dashboard {
                        old.dashboard = dashboard.map(str::to_owned);
                    }
                    old.value = a.value;
                    old.state = state;
                    old.active_at = a.active_at;
                    old.fired_at = a.fired_at;
                    old.resolved_at = a.resolved_at;
                    old.last_active = now;
                    Some(before)
                }
                None => {
                    let labels = built
                        .take()
                        .unwrap_or_else(|| with_external(&a.labels, external).0);
                    alerts.insert(
                        fp.clone(),
                        Alert {
                            fingerprint: fp.clone(),
                            labels,
                            external: m.external.clone(),
                            summary: summary.to_owned(),
                            runbook: runbook.map(str::to_owned),
                            dashboard: dashboard.map(str::to_owned),
                            value: a.value,
                            state,
                            active_at: a.active_at,
                            fired_at: a.fired_at,
                            resolved_at: a.resolved_at,
                            last_active: now,
                        },
                    );
                    None
                }
            };
            match (before, state) {
                (Some(State::Firing), State::Firing) => {}
                (_, State::Firing) => transitions.push(Transition::Fired(fp.clone())),
                (Some(State::Firing), State::Resolved) => {
                    transitions.push(Transition::Resolved(fp.clone()))
                }
                _ => {}
            }
        }
        // Alerts the rules no longer report (a rule removed by a reload, or the rules' own
        // retention over): a firing one resolves now; resolved ones stay for the message. Both
        // lists are in fingerprint order.
        let mut reported = current.iter().map(|c| c.0.fingerprint.as_str()).peekable();
        alerts.retain(|fp, a| {
            while reported.next_if(|r| *r < fp.as_str()).is_some() {}
            if reported.peek() == Some(&fp.as_str()) {
                return true;
            }
            match a.state {
                State::Firing => {
                    transitions.push(Transition::Resolved(fp.clone()));
                    a.state = State::Resolved;
                    a.resolved_at = Some(now);
                    true
                }
                State::Resolved => now - a.resolved_at.unwrap_or(now) < RESOLVED_RETENTION,
                State::Pending => false,
            }
        });
        transitions
    }
}

/// One alert the rules report, as `update_alerts` sorts them: its mirror entry, its rule's
/// place (group, rule), the rules' alert, and its labels with the external ones when built this
/// cycle.
type Reported<'a> = (
    &'a Mirrored,
    (usize, usize),
    &'a sidelight_rules::Alert,
    Option<Labels>,
);

/// An alert's labels with the external labels it lacks added, and the names of those added.
fn with_external(labels: &Labels, external: &Labels) -> (Labels, Vec<String>) {
    let mut out = labels.clone();
    let mut added = Vec::new();
    for (k, v) in external {
        if !out.contains_key(k) {
            out.insert(k.clone(), v.clone());
            added.push(k.clone());
        }
    }
    (out, added)
}

/// The pipeline's view of the rules' alerts kept across cycles: by the address of an alert's
/// shared label set (held here, so that the address is not reused while kept), its
/// fingerprint and the external labels it was given. An entry lives as long as the rules
/// report the alert; all are dropped when the external labels change.
#[derive(Debug, Default)]
struct Mirror {
    by_labels: HashMap<usize, Mirrored>,
    /// The external labels the entries were built with.
    external: Labels,
    /// Bumped every cycle; entries not seen in a cycle are dropped.
    pass: u64,
}

#[derive(Debug)]
struct Mirrored {
    /// The rules' label set of the alert (held).
    labels: Arc<Labels>,
    /// The fingerprint of the labels with the external ones.
    fingerprint: String,
    /// The names of the external labels added.
    external: Vec<String>,
    seen: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::registry::Registry;

    /// Appending by the handles cached per snapshot position stores what appending every
    /// sample by its labels stores, while series appear (moving others in the registry's
    /// order), values change, and a recorded series is skipped.
    #[test]
    fn snapshot_handles_append_what_labels_would() {
        use prometheus_client::metrics::gauge::Gauge;
        use prometheus_client::metrics::histogram::Histogram;
        use sidelight_rules::Storage as _;
        use sidelight_rules::history::Requirement;
        type L = Vec<(String, String)>;
        let mut reg = Registry::default();
        let req = Family::<L, Counter>::default();
        reg.register("req", "requests", req.clone());
        let temp = Family::<L, Gauge>::default();
        reg.register("temp", "temperature", temp.clone());
        let lat = Family::<L, Histogram>::new_with_constructor(|| Histogram::new([0.1, 1.0]));
        reg.register("lat", "latency", lat.clone());
        let rec = Family::<L, Gauge>::default();
        reg.register("job:req:rate1m", "recorded", rec.clone());
        let recorded: HashSet<String> = ["job:req:rate1m".to_owned()].into_iter().collect();
        let l = |k: &str, v: usize| vec![(k.to_owned(), format!("v{v}"))];
        let everything = || {
            let mut h = History::new(HistoryConfig::default());
            h.set_requirements(vec![Requirement::everything(60 * 60 * 1000)]);
            h
        };
        let (mut by_handle, mut by_labels) = (everything(), everything());
        let mut handles = SnapshotHandles::default();
        for step in 0..30usize {
            // A new series every few steps, in every family.
            for i in 0..=step / 3 {
                req.get_or_create(&l("job", i)).inc_by(step as u64);
                temp.get_or_create(&l("room", i)).set((step * i) as i64);
                lat.get_or_create(&l("route", i))
                    .observe(step as f64 / 10.0);
                rec.get_or_create(&l("job", i)).set(1);
            }
            let snap = sidelight_collector::model::snapshot(&reg).expect("snapshot");
            let now = 1_000_000 + step as i64 * 15_000;
            let mut ingest = Ingest::new(&mut handles, &mut by_handle, &recorded, now);
            // The registry walked in place, or its owned snapshot replayed: the same samples.
            if step % 2 == 0 {
                sidelight_collector::model::walk(&reg, &mut ingest).expect("walk");
            } else {
                snap.visit(&mut ingest);
            }
            ingest.finish();
            for s in snap.samples() {
                if !recorded.contains(s.name.as_ref()) {
                    let mut labels: Labels = s
                        .labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    labels.insert(METRIC_NAME.to_owned(), s.name.to_string());
                    by_labels.append(&labels, now, s.value);
                }
            }
        }
        let all = |h: &History| {
            let mut v: Vec<(Labels, Vec<(i64, u64)>)> = h
                .select(&[], i64::MIN, i64::MAX)
                .into_iter()
                .map(|s| {
                    (
                        s.labels,
                        s.samples.iter().map(|x| (x.t, x.v.to_bits())).collect(),
                    )
                })
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let got = all(&by_handle);
        assert_eq!(got, all(&by_labels));
        // 10 counters, 10 gauges, 10 histograms × (sum, count, 3 buckets); no recorded series.
        assert_eq!(got.len(), 70);
        assert!(got.iter().all(|(l, _)| l[METRIC_NAME] != "job:req:rate1m"));
        assert_eq!(by_handle.stats(), by_labels.stats());
    }

    /// The families of a generated registry, each (name, kind).
    const FAMILIES: &[(&str, Kind)] = &[
        ("a", Kind::Counter),
        ("a", Kind::Gauge),
        ("b", Kind::Gauge),
        ("c", Kind::Unknown),
        ("h", Kind::Histogram),
        ("ab", Kind::Counter),
        ("r0", Kind::Gauge),
        ("sidelight_log_exceptions", Kind::Counter),
    ];

    /// Expressions the generated rules are made of: named selectors, name matchers that are
    /// not `=`, selectors without a name, recorded series read back, and none.
    const EXPRS: &[&str] = &[
        "a",
        "a_total",
        "rate(a_total[1m])",
        "b{job=\"x\"}",
        "sum by (job) (h_bucket{le=\"1\"})",
        "histogram_quantile(0.5, sum by (le) (rate(h_bucket[1m])))",
        "h_count + on(job, i) h_sum",
        "{__name__=~\"a.*\"}",
        "{__name__=~\"b|h_sum\", job=\"y\"}",
        "{job=\"x\"}",
        "count({__name__!=\"a_total\", job!=\"\"})",
        "sum by (job) ({__name__=~\".+_total\"})",
        "r0",
        "r1 * 2",
        "absent(nothing)",
        "vector(1)",
    ];

    /// A generated registry at one cycle: for each family of [`FAMILIES`], which of its series
    /// (job `x`, `y` or none × `i` 0 or 1) are present.
    fn registry_at(present: &[Vec<bool>], step: usize) -> Snapshot {
        use sidelight_collector::model::{Bucket, Family as MFamily, Histogram, Series, Value};
        let mut families = Vec::new();
        for (fi, ((name, kind), present)) in FAMILIES.iter().zip(present).enumerate() {
            let mut series = Vec::new();
            for (si, _) in present.iter().enumerate().filter(|(_, p)| **p) {
                let mut labels = Vec::new();
                match si % 3 {
                    0 => labels.push(("job".to_owned(), "x".to_owned())),
                    1 => labels.push(("job".to_owned(), "y".to_owned())),
                    _ => {}
                }
                labels.push(("i".to_owned(), (si / 3).to_string()));
                let v = (step * (fi + si + 1)) as f64;
                let value = match kind {
                    Kind::Counter => Value::Counter {
                        total: v,
                        exemplar: None,
                    },
                    Kind::Gauge => Value::Gauge(v),
                    Kind::Unknown => Value::Unknown(v),
                    Kind::Histogram => Value::Histogram(Histogram {
                        sum: v,
                        count: step as u64,
                        buckets: [1.0, f64::INFINITY]
                            .iter()
                            .enumerate()
                            .map(|(b, le)| Bucket {
                                upper_bound: *le,
                                cumulative_count: (step * (b + 1) / 2) as u64,
                                exemplar: None,
                            })
                            .collect(),
                    }),
                };
                series.push(Series { labels, value });
            }
            families.push(MFamily {
                name: (*name).to_owned(),
                help: String::new(),
                unit: String::new(),
                kind: *kind,
                series,
            });
        }
        Snapshot { families }
    }

    /// A rule file of generated rules: each (whether it records, an index in [`EXPRS`]).
    fn rules_of(rules: &[(bool, usize)]) -> String {
        let mut y = String::from("groups:\n- name: g\n  rules:\n");
        for (i, (record, e)) in rules.iter().enumerate() {
            let expr = EXPRS[*e % EXPRS.len()];
            if *record {
                y.push_str(&format!("  - record: r{i}\n    expr: '{expr}'\n"));
            } else {
                // Two rules share each alert name, so that alerts of two rules can be one.
                y.push_str(&format!(
                    "  - alert: A{}\n    expr: '{expr} > 3'\n    for: 30s\n    annotations: {{ summary: '{{{{ $value }}}}', runbook_url: 'r/{{{{ $labels.job }}}}' }}\n",
                    i % 2
                ));
            }
        }
        y
    }

    /// Everything a cycle leaves: the history's series and samples (bits), its counters, the
    /// served recorded series, the alerts, and the outcome.
    fn cycle_result(p: &PromRules, out: &Outcome) -> String {
        use sidelight_rules::Storage as _;
        let mut series: Vec<(Labels, Vec<(i64, u64)>)> = p
            .history
            .select(&[], i64::MIN, i64::MAX)
            .into_iter()
            .map(|s| {
                let samples = s.samples.iter().map(|x| (x.t, x.v.to_bits())).collect();
                (s.labels, samples)
            })
            .collect();
        series.sort_by(|a, b| a.0.cmp(&b.0));
        let recorded: Vec<(String, Vec<(Labels, u64)>)> = p
            .recorded
            .0
            .read()
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.iter().map(|(l, x)| (l.clone(), x.to_bits())).collect(),
                )
            })
            .collect();
        format!(
            "{series:?}\n{:?}\n{recorded:?}\n{:?}\n{:?} {:?} {}",
            p.history.stats(),
            p.alerts,
            out.transitions,
            out.errors,
            out.failed
        )
    }

    /// One to five rules: whether each records (else it alerts) and which of `EXPRS` it evaluates.
    fn rule_picks() -> impl proptest::strategy::Strategy<Value = Vec<(bool, usize)>> {
        proptest::collection::vec((proptest::bool::ANY, 0..EXPRS.len()), 1..6)
    }

    /// For each of `steps` cycles, which of six series of each of `FAMILIES` are present.
    fn presences(steps: usize) -> impl proptest::strategy::Strategy<Value = Vec<Vec<Vec<bool>>>> {
        proptest::collection::vec(
            proptest::collection::vec(
                proptest::collection::vec(proptest::bool::ANY, 6),
                FAMILIES.len(),
            ),
            steps,
        )
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(96))]

        /// Skipping the families no rule reads leaves every cycle's result as reading every
        /// family does — the history (series, samples, counters), the recorded series, the
        /// alerts, the transitions and errors — over generated registries (series appearing and
        /// going), rules (named selectors, other name matchers, no name, recorded series read
        /// back, a recorded name that is also a family's) and reloads that change them.
        #[test]
        fn skipping_unread_families_changes_no_result(
            rules in rule_picks(),
            reloaded in rule_picks(),
            presence in presences(8),
        ) {
            let ext = External::default();
            let mut skipping = PromRules::new(100, RecordedCollector::default());
            let mut reading = PromRules::new(100, RecordedCollector::default());
            for (step, present) in presence.iter().enumerate() {
                let rule_file = if step < 4 { rules_of(&rules) } else { rules_of(&reloaded) };
                let g = groups(&rule_file);
                skipping.set_groups(g.clone());
                reading.set_groups(g);
                let snap = registry_at(present, step);
                let now = 1_000_000 + step as i64 * 15_000;
                let mut results = Vec::new();
                for (p, skip) in [(&mut skipping, true), (&mut reading, false)] {
                    let _: Result<(), std::convert::Infallible> =
                        p.ingest_with(now, skip, true, |v| {
                            snap.visit(v);
                            Ok(())
                        });
                    let out = p.evaluate(now, 15_000, &ext);
                    results.push(cycle_result(p, &out));
                }
                proptest::prop_assert_eq!(&results[0], &results[1], "step {}\n{}", step, rule_file);
            }
        }
    }

    /// Lends a generated registry as the model's stores do: each family with a series
    /// generation, renewed whenever its list of label sets differs from the one lent last
    /// (kept per family place, name and kind) — but the family `b`, lent without one. The walk
    /// stops after `stop_after` families when given (a walk cut short).
    #[derive(Default)]
    struct GenerationStore {
        lists: HashMap<(usize, String, String), (Vec<Labels>, SeriesGeneration)>,
    }

    impl GenerationStore {
        fn walk(
            &mut self,
            snap: &Snapshot,
            stop_after: Option<usize>,
            v: &mut dyn Visit,
        ) -> Result<(), ()> {
            for (i, f) in snap.families.iter().enumerate() {
                if stop_after == Some(i) {
                    return Err(());
                }
                let list: Vec<Labels> = f
                    .series
                    .iter()
                    .map(|s| s.labels.iter().cloned().collect())
                    .collect();
                let key = (i, f.name.clone(), format!("{:?}", f.kind));
                let token = match self.lists.get(&key) {
                    Some((before, token)) if *before == list => *token,
                    _ => {
                        let token = SeriesGeneration::next();
                        self.lists.insert(key, (list, token));
                        token
                    }
                };
                let mut head = f.as_ref();
                head.series_generation = (f.name != "b").then_some(token);
                v.family(&head);
                if v.wants_series() {
                    for s in &f.series {
                        v.series(LabelsRef::Owned(&s.labels), s.value.as_ref());
                    }
                }
            }
            Ok(())
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(96))]

        /// Finding series by their position when a family is lent under the series generation
        /// cached for it leaves every cycle's result as comparing every series' labels does —
        /// the history (series, samples, counters), the recorded series, the alerts, the
        /// transitions and errors — over generated registries whose series come, go and
        /// change order between cycles (new generations) or stay (the same), families lent
        /// without a generation, histograms, a walk cut short, and a reload that changes the
        /// rules.
        #[test]
        fn series_found_by_generation_change_no_result(
            rules in rule_picks(),
            reloaded in rule_picks(),
            presence in presences(4),
            cut in 0..FAMILIES.len(),
        ) {
            let ext = External::default();
            let mut by_position = PromRules::new(100, RecordedCollector::default());
            let mut by_labels = PromRules::new(100, RecordedCollector::default());
            let (mut store_a, mut store_b) = (GenerationStore::default(), GenerationStore::default());
            for step in 0..8usize {
                let rule_file = if step < 5 { rules_of(&rules) } else { rules_of(&reloaded) };
                if step == 0 || step == 5 {
                    let g = groups(&rule_file);
                    by_position.set_groups(g.clone());
                    by_labels.set_groups(g);
                }
                // Each registry is lent for two cycles, every other pair in reverse order.
                let mut snap = registry_at(&presence[step / 2], step);
                if step / 2 % 2 == 1 {
                    for f in &mut snap.families {
                        f.series.reverse();
                    }
                }
                let stop_after = (step == 2).then_some(cut);
                if step == 7 {
                    by_position.handles.same_series_families = 0;
                }
                let now = 1_000_000 + step as i64 * 15_000;
                let mut results = Vec::new();
                for (p, identity, store) in
                    [(&mut by_position, true, &mut store_a), (&mut by_labels, false, &mut store_b)]
                {
                    let _ = p.ingest_with(now, true, identity, |v| store.walk(&snap, stop_after, v));
                    let out = p.evaluate(now, 15_000, &ext);
                    results.push(cycle_result(p, &out));
                }
                proptest::prop_assert_eq!(&results[0], &results[1], "step {}\n{}", step, rule_file);
            }
            proptest::prop_assert_eq!(by_labels.handles.same_series_families, 0);
            // Steps 6 and 7 lend the same registry under the same rules: step 7 finds by position
            // every family read that is lent with a generation and is no histogram.
            let by_generation = read_with_generation(&by_position.handles);
            proptest::prop_assert_eq!(by_position.handles.same_series_families, by_generation as u64);
        }
    }

    /// The families the rules read that the generated registry lends with a generation and that
    /// are no histogram: those a second, unchanged walk finds by position (family `b` is lent
    /// without one).
    fn read_with_generation(handles: &SnapshotHandles) -> usize {
        handles
            .families
            .iter()
            .filter(|f| f.read && f.name != "b" && f.kind != Kind::Histogram)
            .count()
    }

    /// The fast path is taken: with the rules reading every generated family, a registry lent
    /// twice unchanged finds the second time every family lent with a generation (but the
    /// histogram family) by position.
    #[test]
    fn unchanged_families_are_found_by_position() {
        let mut p = PromRules::new(100, RecordedCollector::default());
        p.set_groups(groups(&rules_of(&[(false, 7), (false, 9), (false, 4)])));
        let snap = registry_at(&vec![vec![true; 6]; FAMILIES.len()], 1);
        let mut store = GenerationStore::default();
        for step in 0..2 {
            let _ = p.ingest_with(step * 15_000, true, true, |v| store.walk(&snap, None, v));
        }
        let read = p.handles.families.iter().filter(|f| f.read).count();
        let by_generation = read_with_generation(&p.handles);
        assert!(
            read > by_generation && by_generation >= 3,
            "{read} {by_generation}"
        );
        assert_eq!(p.handles.same_series_families, by_generation as u64);
    }

    /// The pipeline's alerts as the rules' alerts were mirrored before they were kept across
    /// cycles: rebuilt from the rules' alerts every cycle, the reference of
    /// `mirrored_alerts_are_those_rebuilt_every_cycle`.
    fn mirror_reference(
        p: &PromRules,
        mut before: BTreeMap<String, Alert>,
        now: Millis,
        external: &Labels,
    ) -> (BTreeMap<String, Alert>, Vec<Transition>) {
        let mut current: BTreeMap<String, Alert> = BTreeMap::new();
        for (g, st) in p.groups.iter().zip(&p.states) {
            for (ri, r) in g.rules.iter().enumerate() {
                if !matches!(r, Rule::Alerting(_)) {
                    continue;
                }
                for a in st.alerts(ri) {
                    let mut labels: BTreeMap<String, String> = Labels::clone(&a.labels);
                    let mut added = Vec::new();
                    for (k, v) in external {
                        if !labels.contains_key(k) {
                            labels.insert(k.clone(), v.clone());
                            added.push(k.clone());
                        }
                    }
                    let fp = fingerprint(&labels);
                    let state = match a.state {
                        AlertState::Pending => State::Pending,
                        AlertState::Firing => State::Firing,
                        AlertState::Inactive => State::Resolved,
                    };
                    let ann = |k: &str| a.annotations.get(k).filter(|v| !v.is_empty()).cloned();
                    current.insert(
                        fp.clone(),
                        Alert {
                            fingerprint: fp,
                            labels,
                            external: added,
                            summary: ann("summary")
                                .or_else(|| ann("description"))
                                .unwrap_or_default(),
                            runbook: ann("runbook_url"),
                            dashboard: ann("dashboard_url").or_else(|| ann("dashboard")),
                            value: a.value,
                            state,
                            active_at: a.active_at,
                            fired_at: a.fired_at,
                            resolved_at: a.resolved_at,
                            last_active: now,
                        },
                    );
                }
            }
        }
        let mut transitions = Vec::new();
        for (fp, a) in &current {
            match (before.get(fp).map(|b| b.state), a.state) {
                (Some(State::Firing), State::Firing) => {}
                (_, State::Firing) => transitions.push(Transition::Fired(fp.clone())),
                (Some(State::Firing), State::Resolved) => {
                    transitions.push(Transition::Resolved(fp.clone()))
                }
                _ => {}
            }
        }
        for (fp, a) in std::mem::take(&mut before) {
            if current.contains_key(&fp) {
                continue;
            }
            match a.state {
                State::Firing => {
                    transitions.push(Transition::Resolved(fp.clone()));
                    current.insert(
                        fp,
                        Alert {
                            state: State::Resolved,
                            resolved_at: Some(now),
                            ..a
                        },
                    );
                }
                State::Resolved if now - a.resolved_at.unwrap_or(now) < RESOLVED_RETENTION => {
                    current.insert(fp, a);
                }
                _ => {}
            }
        }
        (current, transitions)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(96))]

        /// The alerts kept across cycles (labels with the external ones and fingerprints built
        /// once per alert, updated in place) are, with the transitions, those rebuilt from the
        /// rules' alerts every cycle: over generated registries and rules (two rules per alert
        /// name, so that two rules' alerts can share a fingerprint), a reload, external labels
        /// that change (and collide with the series' own), and alerts that end and come back.
        #[test]
        fn mirrored_alerts_are_those_rebuilt_every_cycle(
            rules in rule_picks(),
            reloaded in rule_picks(),
            presence in presences(12),
            externals in proptest::collection::vec(0..4usize, 12),
        ) {
            let mut p = PromRules::new(100, RecordedCollector::default());
            for (step, present) in presence.iter().enumerate() {
                let rule_file = if step < 6 { rules_of(&rules) } else { rules_of(&reloaded) };
                p.set_groups(groups(&rule_file));
                let pairs: &[(&str, &str)] = match externals[step] {
                    0 => &[],
                    1 => &[("job", "x")],
                    2 => &[("region", "eu")],
                    _ => &[("job", "y"), ("region", "eu")],
                };
                let ext = External {
                    labels: pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
                    url: String::new(),
                };
                let snap = registry_at(present, step);
                // Minutes apart in the second half, so that resolved alerts age out.
                let now = 1_000_000 + step as i64 * if step < 6 { 15_000 } else { 300_000 };
                let before = p.alerts.clone();
                let out = p.cycle(now, Some(&snap), 15_000, &ext);
                let (alerts, transitions) = mirror_reference(&p, before, now, &ext.labels);
                proptest::prop_assert_eq!(&p.alerts, &alerts, "step {}\n{}", step, rule_file);
                proptest::prop_assert_eq!(&out.transitions, &transitions, "step {}", step);
            }
        }
    }

    /// The families the ingest reads follow the rules: unread families' series are not lent by
    /// the walk (the received-metrics store and the encoded metrics alike), a reload that reads
    /// another family makes the walk lend it, and the exceptions' first-seen check still reads
    /// its family beside the ingest.
    #[test]
    fn the_ingest_reads_only_families_a_rule_can_select_and_follows_reloads() {
        use prometheus_client::metrics::gauge::Gauge;
        type L = Vec<(String, String)>;
        let mut reg = Registry::default();
        let read = Family::<L, Gauge>::default();
        reg.register("read", "read", read.clone());
        let other = Family::<L, Gauge>::default();
        reg.register("other", "other", other.clone());
        let exc = Family::<L, Counter>::default();
        reg.register("sidelight_log_exceptions", "exceptions", exc.clone());
        read.get_or_create(&vec![("k".to_owned(), "1".to_owned())])
            .set(1);
        other
            .get_or_create(&vec![("k".to_owned(), "2".to_owned())])
            .set(2);
        exc.get_or_create(&vec![
            ("source".to_owned(), "api".to_owned()),
            ("exception".to_owned(), "E".to_owned()),
        ])
        .inc();
        /// Counts the series lent per family name.
        struct Lent<'a>(&'a mut dyn Visit, String, BTreeMap<String, usize>);
        impl Visit for Lent<'_> {
            fn family(&mut self, f: &FamilyRef<'_>) {
                self.1 = f.name.to_owned();
                self.0.family(f);
            }
            fn series(&mut self, labels: LabelsRef<'_>, value: ValueRef<'_>) {
                *self.2.entry(self.1.clone()).or_default() += 1;
                self.0.series(labels, value);
            }
            fn wants_series(&self) -> bool {
                self.0.wants_series()
            }
        }
        let mut p = PromRules::new(100, RecordedCollector::default());
        let mut first_seen = FirstSeen::new();
        let cycle = |p: &mut PromRules, now: Millis, first_seen: &mut FirstSeen| {
            let mut seen = ExceptionsSeen::new(now, first_seen);
            let mut lent = BTreeMap::new();
            p.ingest(now, |ingest| {
                let mut tee = super::super::Tee(ingest, &mut seen);
                let mut count = Lent(&mut tee, String::new(), BTreeMap::new());
                let r = sidelight_collector::model::walk(&reg, &mut count);
                lent = count.2;
                r
            })
            .expect("walk");
            (lent, seen.newly.len())
        };
        p.set_groups(groups(
            "groups:\n- name: g\n  rules:\n  - record: x\n    expr: read\n",
        ));
        let (lent, newly) = cycle(&mut p, 0, &mut first_seen);
        assert_eq!(newly, 1, "the exceptions' family is still read");
        assert_eq!(
            lent,
            BTreeMap::from([
                ("read".to_owned(), 1),
                ("sidelight_log_exceptions".to_owned(), 1)
            ])
        );
        assert_eq!(p.stats().series, 1);
        // A reload: now `other` is read, `read` no longer.
        p.set_groups(groups(
            "groups:\n- name: g\n  rules:\n  - record: x\n    expr: other\n",
        ));
        let (lent, _) = cycle(&mut p, 15_000, &mut first_seen);
        assert_eq!(lent.get("other"), Some(&1));
        assert_eq!(lent.get("read"), None);
        assert_eq!(p.stats().series, 1);
        // A selector without a name reads every family.
        p.set_groups(groups(
            "groups:\n- name: g\n  rules:\n  - record: x\n    expr: '{k=\"1\"}'\n",
        ));
        let (lent, _) = cycle(&mut p, 30_000, &mut first_seen);
        assert_eq!((lent.get("read"), lent.get("other")), (Some(&1), Some(&1)));
        assert_eq!(p.stats().series, 1);
    }

    fn groups(yaml: &str) -> Arc<Vec<Group>> {
        Arc::new(
            sidelight_rules::file::parse("test", yaml)
                .unwrap_or_else(|e| panic!("{e:?}"))
                .groups,
        )
    }

    const RULES: &str = "groups:
- name: g
  rules:
  - record: job:req:rate1m
    expr: sum by (job) (rate(req_total[1m]))
  - alert: Busy
    expr: job:req:rate1m > 1
    for: 30s
    labels: { severity: warning }
    annotations: { summary: '{{ $labels.job }} at {{ $value }}/s' }
";

    #[test]
    fn rules_run_over_the_registry_snapshot_record_fire_and_resolve() {
        let mut reg = Registry::default();
        let req = Family::<Vec<(String, String)>, Counter>::default();
        reg.register("req", "requests", req.clone());
        let c = req.get_or_create(&vec![("job".to_owned(), "api".to_owned())]);
        let recorded = RecordedCollector::default();
        let mut p = PromRules::new(100, recorded.clone());
        p.set_groups(groups(RULES));
        let ext = External::default();
        let mut fired = 0;
        let mut resolved = 0;
        // 3/s for 2 minutes, then flat.
        for step in 0..=16 {
            let now = 1_000_000 + step * 15_000;
            if step <= 8 {
                c.inc_by(45);
            }
            let snap = sidelight_collector::model::snapshot(&reg).expect("snapshot");
            let out = p.cycle(now, Some(&snap), 15_000, &ext);
            assert!(out.errors.is_empty(), "{:?}", out.errors);
            for t in out.transitions {
                match t {
                    Transition::Fired(_) => fired += 1,
                    Transition::Resolved(_) => resolved += 1,
                }
            }
            if step == 6 {
                let a: Vec<&Alert> = p.alerts.values().collect();
                assert_eq!(a.len(), 1);
                assert_eq!(a[0].state, State::Firing);
                assert_eq!(a[0].summary, "api at 3/s");
                assert_eq!(a[0].severity(), "warning");
                let served = recorded.0.read();
                assert_eq!(served["job:req:rate1m"].len(), 1);
                assert_eq!(served["job:req:rate1m"][0].1, 3.0);
            }
        }
        assert_eq!((fired, resolved), (1, 1));
        assert_eq!(
            p.alerts.values().next().map(|a| a.state),
            Some(State::Resolved)
        );
    }

    /// Rules read received OTLP metrics as the agent holds them: the walk reads the received
    /// store in place (with the agent's own metrics encoded around it), and a rate over a
    /// received counter records and fires as over any other series.
    #[test]
    fn rules_read_received_otlp_metrics_through_the_walk() {
        use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
        use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
        use opentelemetry_proto::tonic::metrics::v1::{
            AggregationTemporality, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
            metric::Data, number_data_point,
        };
        use opentelemetry_proto::tonic::resource::v1::Resource;
        use sidelight_collector::metrics::LabelCaps;
        use sidelight_collector::received_metrics::{ReceivedMetrics, ReceivedSettings};

        let kv = |k: &str, v: &str| KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        };
        let request = |total: f64| ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", "api")],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: "req".into(),
                        data: Some(Data::Sum(Sum {
                            data_points: vec![NumberDataPoint {
                                attributes: vec![kv("job", "api")],
                                time_unix_nano: 1,
                                value: Some(number_data_point::Value::AsDouble(total)),
                                ..Default::default()
                            }],
                            aggregation_temporality: AggregationTemporality::Cumulative as i32,
                            is_monotonic: true,
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let caps = Arc::new(LabelCaps::new(100));
        let received = ReceivedMetrics::new(ReceivedSettings::default(), caps.clone());
        let mut reg = Registry::default();
        let own = Family::<Vec<(String, String)>, Counter>::default();
        reg.register("sidelight_own", "the agent's own", own.clone());
        received.register(&mut reg);
        caps.register(&mut reg);
        let recorded = RecordedCollector::default();
        reg.register_collector(Box::new(recorded.clone()));
        let mut p = PromRules::new(100, recorded.clone());
        p.set_groups(groups(RULES));
        let ext = External::default();
        let mut fired = 0;
        let mut total = 0.0;
        for step in 0..=8 {
            let now = 1_000_000 + step * 15_000;
            total += 45.0;
            received.record(received.prepare(&request(total)));
            own.get_or_create(&vec![("k".to_owned(), "v".to_owned())])
                .inc();
            p.ingest(now, |v| sidelight_collector::model::walk(&reg, v))
                .expect("walk");
            let out = p.evaluate(now, 15_000, &ext);
            assert!(out.errors.is_empty(), "{:?}", out.errors);
            fired += out
                .transitions
                .iter()
                .filter(|t| matches!(t, Transition::Fired(_)))
                .count();
        }
        assert_eq!(fired, 1);
        let a: Vec<&Alert> = p.alerts.values().collect();
        assert_eq!((a.len(), a[0].summary.as_str()), (1, "api at 3/s"));
        // The recorded series is served (and walked) without being appended twice.
        let snap = sidelight_collector::model::snapshot(&reg).expect("snapshot");
        let rec = snap.family("job:req:rate1m").expect("recorded");
        assert_eq!(rec.series[0].value.number(), 3.0);
        assert!(snap.family("req").is_some() && snap.family("target_info").is_some());
    }

    #[test]
    fn exception_types_get_a_first_seen_time_and_deploys_a_timestamp_on_metrics() {
        let mut reg = Registry::default();
        let exc = Family::<Vec<(String, String)>, Counter>::default();
        reg.register("sidelight_log_exceptions", "exceptions", exc.clone());
        // Families that are not the exceptions counter, one with the same prefix, are passed by.
        let other = Family::<Vec<(String, String)>, Counter>::default();
        reg.register("sidelight_log_exceptions_dropped", "other", other.clone());
        reg.register("requests", "other", other.clone());
        other
            .get_or_create(&vec![
                ("source".to_owned(), "api".to_owned()),
                ("exception".to_owned(), "NotAnException".to_owned()),
            ])
            .inc();
        let key = |e: &str| {
            vec![
                ("source".to_owned(), "api".to_owned()),
                ("exception".to_owned(), e.to_owned()),
            ]
        };
        exc.get_or_create(&key("ValueError")).inc();
        let mut first_seen = FirstSeen::new();
        let snap = sidelight_collector::model::snapshot(&reg).expect("snapshot");
        let newly = note_exceptions(&snap, 5_000, &mut first_seen);
        assert_eq!(
            newly,
            vec![("api".to_owned(), "ValueError".to_owned(), 5_000)]
        );
        exc.get_or_create(&key("KeyError")).inc();
        let snap = sidelight_collector::model::snapshot(&reg).expect("snapshot");
        let newly = note_exceptions(&snap, 9_000, &mut first_seen);
        assert_eq!(
            newly,
            vec![("api".to_owned(), "KeyError".to_owned(), 9_000)]
        );
        assert_eq!(
            first_seen[&("api".to_owned(), "ValueError".to_owned())],
            5_000
        );

        let feedback = FeedbackCollector::default();
        *feedback.first_seen.write() = first_seen;
        feedback.deploys.write().insert(
            "api".to_owned(),
            super::super::alert::DeployInfo {
                at: 7_000,
                commit: "abc".into(),
                version: "1.2".into(),
            },
        );
        let mut served = Registry::default();
        served.register_collector(Box::new(feedback));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &served).expect("encode");
        for want in [
            "sidelight_log_exception_first_seen_timestamp_seconds{source=\"api\",exception=\"KeyError\"} 9.0",
            "sidelight_log_exception_first_seen_timestamp_seconds{source=\"api\",exception=\"ValueError\"} 5.0",
            "dora_last_successful_deployment_timestamp_seconds{service=\"api\"} 7.0",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
    }

    #[test]
    fn restored_alerts_carry_on_without_firing_again() {
        let rules = "groups:\n- name: g\n  rules:\n  - alert: Always\n    expr: vector(1)\n    for: 1m\n  - alert: Gone\n    expr: vector(1) == 2\n";
        let ext = External::default();
        let mut before = PromRules::new(100, RecordedCollector::default());
        before.set_groups(groups(rules));
        before.cycle(0, None, 15_000, &ext);
        let out = before.cycle(60_000, None, 15_000, &ext);
        assert_eq!(out.transitions.len(), 1);
        let mut kept: Vec<Alert> = before.alerts.values().cloned().collect();
        let mut gone = kept[0].clone();
        gone.labels.insert("alertname".into(), "Gone".into());
        gone.fingerprint = fingerprint(&gone.labels);
        kept.push(gone);
        let mut other = kept[0].clone();
        other.labels.insert("alertname".into(), "OldDialect".into());
        other.fingerprint = fingerprint(&other.labels);
        kept.push(other);
        // A restart: the firing alert carries on (no second "fired"); Gone resolves; the alert
        // of a rule no longer loaded resolves at the first cycle, as after a reload.
        let mut after = PromRules::new(100, RecordedCollector::default());
        after.set_groups(groups(rules));
        after.restore(kept, 90_000, 15_000);
        // Gone is held for the grace period (its window: the 5 m lookback, plus 2 intervals).
        let out = after.cycle(90_000, None, 15_000, &ext);
        assert_eq!(out.transitions.len(), 1, "{:?}", out.transitions);
        assert!(
            matches!(&out.transitions[0], Transition::Resolved(fp) if fp.contains("OldDialect"))
        );
        let out = after.cycle(90_000 + 330_000, None, 15_000, &ext);
        assert_eq!(out.transitions.len(), 1, "{:?}", out.transitions);
        assert!(matches!(&out.transitions[0], Transition::Resolved(fp) if fp.contains("Gone")));
        let always = after
            .alerts
            .values()
            .find(|a| a.name() == "Always")
            .expect("Always");
        assert_eq!((always.state, always.active_at), (State::Firing, 0));
    }

    /// `alerts.external_labels` reach the templates as `$externalLabels` (the shipped rules'
    /// runbook links) and the alerts the notifiers receive, without overriding the rule's own
    /// labels; `alerts.external_url` is `$externalURL`; a restart restores the alert under its
    /// rule's labels (no second "fired").
    #[test]
    fn external_labels_and_url_reach_templates_and_alerts() {
        let rules = r#"groups:
- name: g
  rules:
  - alert: Always
    expr: vector(1)
    labels: { severity: warning, cluster: from-rule }
    annotations:
      summary: 'in {{ $externalLabels.region }}, see {{ $externalURL }}/api/v1/alerts'
      runbook_url: '{{ or $externalLabels.runbook_base "https://example.invalid/default" }}/runbooks.md#always'
"#;
        let ext = External {
            labels: Labels::from([
                ("region".to_owned(), "eu-1".to_owned()),
                ("cluster".to_owned(), "from-config".to_owned()),
                (
                    "runbook_base".to_owned(),
                    "https://wiki.example/ops".to_owned(),
                ),
            ]),
            url: "https://agent.example:9464".to_owned(),
        };
        let mut p = PromRules::new(100, RecordedCollector::default());
        p.set_groups(groups(rules));
        let out = p.cycle(0, None, 15_000, &ext);
        assert_eq!(out.transitions.len(), 1, "{:?}", out.transitions);
        let a = p.alerts.values().next().expect("alert").clone();
        assert_eq!(
            a.summary,
            "in eu-1, see https://agent.example:9464/api/v1/alerts"
        );
        assert_eq!(
            a.runbook.as_deref(),
            Some("https://wiki.example/ops/runbooks.md#always")
        );
        assert_eq!(a.labels["region"], "eu-1");
        assert_eq!(a.labels["cluster"], "from-rule", "the rule's label wins");
        assert_eq!(a.external, ["region", "runbook_base"]);
        // Prometheus's /api/v1/alerts shows the rule's labels only.
        let api = p.api_alerts();
        assert!(api[0]["labels"].get("region").is_none(), "{api:?}");
        // Without a runbook_base, the rules' default link.
        let mut q = PromRules::new(100, RecordedCollector::default());
        q.set_groups(groups(rules));
        q.cycle(0, None, 15_000, &External::default());
        let b = q.alerts.values().next().expect("alert");
        assert_eq!(
            b.runbook.as_deref(),
            Some("https://example.invalid/default/runbooks.md#always")
        );
        // A restart with the same external labels: the alert carries on.
        let mut r = PromRules::new(100, RecordedCollector::default());
        r.set_groups(groups(rules));
        r.restore(vec![a.clone()], 15_000, 15_000);
        let out = r.cycle(15_000, None, 15_000, &ext);
        assert!(out.transitions.is_empty(), "{:?}", out.transitions);
        assert_eq!(r.alerts.len(), 1);
        assert_eq!(r.alerts.values().next().map(|x| x.active_at), Some(0));
    }

    #[test]
    fn a_reload_keeps_the_state_of_unchanged_groups() {
        let recorded = RecordedCollector::default();
        let mut p = PromRules::new(100, recorded);
        let g = groups(
            "groups:\n- name: g\n  rules:\n  - alert: Always\n    expr: vector(1)\n    for: 1m\n",
        );
        p.set_groups(g.clone());
        let ext = External::default();
        p.cycle(0, None, 15_000, &ext);
        p.set_groups(groups(
            "groups:\n- name: g\n  rules:\n  - alert: Always\n    expr: vector(1)\n    for: 1m\n",
        ));
        let out = p.cycle(60_000, None, 15_000, &ext);
        assert_eq!(out.transitions.len(), 1, "fires 1m after it became active");
        p.set_groups(groups(
            "groups:\n- name: g\n  rules:\n  - alert: Other\n    expr: vector(1)\n",
        ));
        let out = p.cycle(75_000, None, 15_000, &ext);
        // Always resolves (its rule is gone); Other fires at once.
        assert_eq!(out.transitions.len(), 2, "{:?}", out.transitions);
    }
}

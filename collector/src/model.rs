//! The structured metrics model: everything `/metrics` serves, read from the registry as typed
//! families — names, help, units, label sets, counter / gauge / histogram values and exemplars —
//! with no exposition text in between. Remote write, the agent's own telemetry over OTLP and rule
//! evaluation read this; only the `/metrics` endpoint writes text.
//!
//! [`walk`] lends every family and series to a [`Visit`]or, with borrowed names, labels and
//! values; [`snapshot`] collects the same walk into the owned [`Snapshot`]. Two kinds of
//! collectors are read:
//!
//! - **Stores that walk themselves** ([`Source`]): collectors that hold many series in their own
//!   structures (received OTLP metrics, host and process metrics). During a walk their
//!   `Collector::encode` hands the store to the walk ([`walk_direct`]) instead of encoding, and
//!   the walk reads it at the collector's place in the registry, borrowing its label sets. Each
//!   store's walk yields exactly what its `encode` writes (its tests hold it to the text).
//! - **Everything else** (the agent's own `prometheus-client` metrics, which the crate offers no
//!   other way to read) goes through `prometheus-client`'s own Prometheus protobuf encoder
//!   ([`prometheus_client::encoding::prometheus_protobuf::encode`]): every metric encodes through
//!   the same `DescriptorEncoder` for protobuf as for text, so the model holds what the text
//!   encoder writes, family for family, in Prometheus' data model.
//!
//! Either way the walk yields the families in the order `/metrics` writes them. A visitor that
//! reads few families says so per family ([`Visit::wants_series`]), and the walk and the stores
//! then skip the others' series (the rules' ingest reads only the families a rule can select).
//!
//! A store may also say that a family's series are those it lent before, in the same order
//! ([`FamilyRef::series_generation`]): a visitor that keeps something per series (the rules'
//! ingest keeps each series' history handle) then finds it by the series' position alone,
//! without reading its labels.

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model as pm;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// Label pairs of one series, in the order the text encoder writes them (the registry's constant
/// labels first, then the family's, then the metric's own). Values are raw, not escaped.
pub type Labels = Vec<(String, String)>;

/// The registry could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// A metric or collector failed to encode (the same failure would fail a `/metrics` scrape).
    #[error("a metric in the registry failed to encode")]
    Encode,
}

/// Everything a registry serves at one moment.
///
/// There are no timestamps on samples: a snapshot is one instant, and each consumer stamps it
/// with its own clock (remote write and OTLP use the time they read it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Families in the order `/metrics` writes them.
    pub families: Vec<Family>,
}

/// The kind of a family, as in its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A monotonic counter; its one sample is `<name>_total`.
    Counter,
    /// A gauge; its one sample is `<name>`.
    Gauge,
    /// An explicit-bucket histogram: `<name>_sum`, `<name>_count`, `<name>_bucket{le}`.
    Histogram,
    /// `unknown` (untyped): one sample `<name>`.
    Unknown,
}

/// One metric family.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// The name as `/metrics` writes it in `# TYPE`: prefix and unit suffix included
    /// (`sidelight_exporter_send_duration_seconds`), without a counter's `_total`. An info
    /// metric is read as the gauge Prometheus stores for it: `<name>_info` with the value 1 and
    /// the info labels after the series' own.
    pub name: String,
    /// The help text as served (`prometheus-client` ends it with a full stop).
    pub help: String,
    /// The OpenMetrics unit (`seconds`, `bytes`), empty when none was registered.
    pub unit: String,
    /// The family's type.
    pub kind: Kind,
    /// Its series, in the order served.
    pub series: Vec<Series>,
}

/// One series of a family: a label set and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The series' labels (a histogram's `le` is not among them: it is per bucket).
    pub labels: Labels,
    /// Its value.
    pub value: Value,
}

/// The value of one series.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A counter's running total, with the exemplar of its last increment if it keeps one.
    Counter {
        /// The total.
        total: f64,
        /// The exemplar, if any.
        exemplar: Option<Exemplar>,
    },
    /// A gauge.
    Gauge(f64),
    /// A histogram.
    Histogram(Histogram),
    /// A value of a family of unknown type.
    Unknown(f64),
}

/// An explicit-bucket histogram.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Sum of the observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
    /// Buckets by ascending upper bound; the last is `+Inf` for histograms that have one.
    pub buckets: Vec<Bucket>,
}

/// One histogram bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    /// The inclusive upper bound (`le`); `f64::INFINITY` for the last bucket.
    pub upper_bound: f64,
    /// Observations less than or equal to `upper_bound` (cumulative, as `_bucket` samples are).
    pub cumulative_count: u64,
    /// The exemplar of an observation in this bucket, if the histogram keeps them.
    pub exemplar: Option<Exemplar>,
}

/// An exemplar: one traced observation behind a value.
#[derive(Debug, Clone, PartialEq)]
pub struct Exemplar {
    /// Its labels (`trace_id`, `span_id`, …).
    pub labels: Labels,
    /// The observed value.
    pub value: f64,
    /// When it was observed, if recorded.
    pub timestamp: Option<SystemTime>,
}

/// One sample as Prometheus stores it from a scrape of `/metrics`: the sample name
/// (`foo_total`, `foo_bucket`), its labels (`le` last for buckets) and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    /// The family the sample belongs to.
    pub family: &'a Family,
    /// The sample's name.
    pub name: Cow<'a, str>,
    /// Its labels in the order written, `le` included.
    pub labels: Cow<'a, [(String, String)]>,
    /// Its value.
    pub value: f64,
    /// The exemplar written on this sample, if any.
    pub exemplar: Option<&'a Exemplar>,
}

/// Reads everything `registry` serves into a [`Snapshot`].
///
/// Runs every metric's and collector's encode, as a text scrape does, into owned strings and
/// numbers instead of text; safe to call from any thread (collectors take their own locks). An error means some metric failed to encode; a text scrape
/// of the same registry fails the same way.
pub fn snapshot(registry: &Registry) -> Result<Snapshot, SnapshotError> {
    let mut collect = Collect::default();
    walk(registry, &mut collect)?;
    Ok(Snapshot {
        families: collect.families,
    })
}

/// Walks everything `registry` serves, family by family in the order `/metrics` writes them,
/// lending each family and series to `visit`.
///
/// The stores that walk themselves ([`Source`]) are read in place, under their own locks, with
/// their label sets borrowed; the rest of the registry is encoded first (through
/// `prometheus-client`'s protobuf encoder) and lent from that. An error means some metric failed
/// to encode (a text scrape fails the same way); nothing has been visited then.
pub fn walk(registry: &Registry, visit: &mut dyn Visit) -> Result<(), SnapshotError> {
    let installed = Installed::new();
    let encoded = prometheus_client::encoding::prometheus_protobuf::encode(registry);
    let sources = installed.take();
    let encoded = encoded.map_err(|_| SnapshotError::Encode)?;
    for f in encoded {
        if let Some(i) = f
            .name
            .split_once(MARKER)
            .and_then(|(_, i)| i.parse::<usize>().ok())
        {
            if let Some(source) = sources.get(i) {
                source.walk(visit);
            }
            continue;
        }
        let (head, metrics) = family_head(f);
        visit.family(&head.as_ref());
        if !visit.wants_series() {
            continue;
        }
        for s in metrics.into_iter().filter_map(series) {
            visit.series(LabelsRef::Owned(&s.labels), s.value.as_ref());
        }
    }
    Ok(())
}

/// What a walk lends its visitor: each family, then that family's series.
pub trait Visit {
    /// A family starts; the series that follow are its own.
    fn family(&mut self, family: &FamilyRef<'_>);
    /// One series of the current family.
    fn series(&mut self, labels: LabelsRef<'_>, value: ValueRef<'_>);
    /// Whether the visitor reads the series of the family just started: asked after each
    /// [`Visit::family`]. When `false` the walk (and every [`Source`]) may skip lending that
    /// family's series, so that a visitor interested in few families does not pay for the
    /// others; a visitor must still accept them (skipping is allowed, not promised). By
    /// default every family is read.
    fn wants_series(&self) -> bool {
        true
    }
}

/// A store of series that walks itself: the walk reads it in place instead of through the
/// encoder. Its walk must yield exactly what its `Collector::encode` writes (families, names,
/// label order, values, exemplars), and the collector must be registered in the root registry
/// (no prefix, no constant labels, which the walk would not add). After lending each family it
/// should ask [`Visit::wants_series`] and, when `false`, go on to the next family without
/// reading that family's series.
pub trait Source: Send + Sync {
    /// Lends every family and series of the store to `visit`, in the order `encode` writes them.
    fn walk(&self, visit: &mut dyn Visit);
}

/// The name of the placeholder family a [`Source`]'s collector writes during a walk (followed by
/// the source's index); it cannot clash with a metric name (it starts with a control character).
const MARKER: &str = "\u{1}sidelight_model_source_";

thread_local! {
    /// The stores handed to the walk running on this thread, while [`walk`] encodes.
    static SOURCES: RefCell<Option<Vec<Box<dyn Source>>>> = const { RefCell::new(None) };
}

/// Installs the list of sources for one walk on this thread; restores the previous one when
/// dropped (also on a panic).
struct Installed {
    previous: Option<Vec<Box<dyn Source>>>,
}

impl Installed {
    fn new() -> Self {
        Installed {
            previous: SOURCES.with_borrow_mut(|s| s.replace(Vec::new())),
        }
    }

    /// The sources handed over during the encode.
    fn take(&self) -> Vec<Box<dyn Source>> {
        SOURCES.with_borrow_mut(|s| s.as_mut().map(std::mem::take).unwrap_or_default())
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let previous = self.previous.take();
        SOURCES.with_borrow_mut(|s| *s = previous);
    }
}

/// For a [`Source`]'s `Collector::encode`: when a [`walk`] is encoding on this thread, hands
/// `source()` to it (to be read at this collector's place, through a placeholder family written
/// to `encoder`) and returns its result; the collector must then write nothing else. Otherwise
/// (a `/metrics` scrape, a plain `text::encode`) returns `None` and the collector encodes as
/// usual.
pub fn walk_direct(
    encoder: &mut DescriptorEncoder<'_>,
    source: impl FnOnce() -> Box<dyn Source>,
) -> Option<Result<(), std::fmt::Error>> {
    let index = SOURCES.with_borrow_mut(|s| {
        let s = s.as_mut()?;
        s.push(source());
        Some(s.len() - 1)
    })?;
    let name = format!("{MARKER}{index}");
    Some(
        encoder
            .encode_descriptor(&name, "", None, MetricType::Gauge)
            .map(drop),
    )
}

/// One version of a family's list of series in a store that walks itself ([`Source`]): a
/// token unique in the process ([`SeriesGeneration::next`]). A store takes a new one for a
/// family whenever it adds, removes or reorders one of the family's series, or changes a
/// series' labels; so two walks that lend a family with the same token lend the same label
/// sets in the same order, and a series' position in the family is its identity. It says
/// nothing about values (a histogram's buckets may differ). Tokens are never reused: one names
/// a single version of one store's list, which several of its families may lend (span metrics'
/// calls and durations list the same label sets), so a visitor keeps what it learns per family
/// (by the family's place and name, as the rules' ingest does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeriesGeneration(u64);

impl SeriesGeneration {
    /// A token no other call returned in this process.
    #[must_use]
    pub fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        SeriesGeneration(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl Default for SeriesGeneration {
    /// A fresh token ([`SeriesGeneration::next`]), for a store's new, empty family.
    fn default() -> Self {
        Self::next()
    }
}

/// A family as a walk lends it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FamilyRef<'a> {
    /// As [`Family::name`].
    pub name: &'a str,
    /// As [`Family::help`].
    pub help: &'a str,
    /// As [`Family::unit`].
    pub unit: &'a str,
    /// As [`Family::kind`].
    pub kind: Kind,
    /// The version of the family's list of series that follows, when the store keeps one
    /// ([`SeriesGeneration`]); `None` promises nothing (families read through the encoder,
    /// replayed snapshots, stores whose series lists are rebuilt every time).
    pub series_generation: Option<SeriesGeneration>,
}

impl FamilyRef<'_> {
    /// The family, owned, with no series yet.
    #[must_use]
    pub fn to_family(&self) -> Family {
        Family {
            name: self.name.to_owned(),
            help: self.help.to_owned(),
            unit: self.unit.to_owned(),
            kind: self.kind,
            series: Vec::new(),
        }
    }
}

/// A series' label set as a walk lends it (the stores keep label names owned or static).
#[derive(Debug, Clone, Copy)]
pub enum LabelsRef<'a> {
    /// Owned names and values.
    Owned(&'a [(String, String)]),
    /// Static (or owned) names, owned values.
    Named(&'a [(Cow<'static, str>, String)]),
}

impl<'a> LabelsRef<'a> {
    /// Number of labels.
    pub fn len(&self) -> usize {
        match self {
            LabelsRef::Owned(l) => l.len(),
            LabelsRef::Named(l) => l.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The label at `i`.
    pub fn get(&self, i: usize) -> Option<(&'a str, &'a str)> {
        match *self {
            LabelsRef::Owned(l) => l.get(i).map(|(k, v)| (k.as_str(), v.as_str())),
            LabelsRef::Named(l) => l.get(i).map(|(k, v)| (k.as_ref(), v.as_str())),
        }
    }

    /// The labels in order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let this = *self;
        (0..this.len()).filter_map(move |i| this.get(i))
    }

    /// The value of the label `name`, if present.
    pub fn value(&self, name: &str) -> Option<&'a str> {
        self.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// Whether these are `other`, label for label in order.
    pub fn eq_labels(&self, other: &[(String, String)]) -> bool {
        match *self {
            LabelsRef::Owned(l) => l == other,
            LabelsRef::Named(l) => {
                l.len() == other.len()
                    && l.iter()
                        .zip(other)
                        .all(|((k, v), (ok, ov))| k.as_ref() == ok && v == ov)
            }
        }
    }

    /// The labels, owned.
    pub fn to_vec(&self) -> Labels {
        match *self {
            LabelsRef::Owned(l) => l.to_vec(),
            LabelsRef::Named(l) => l.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        }
    }
}

/// A series' value as a walk lends it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    /// As [`Value::Counter`].
    Counter {
        /// The total.
        total: f64,
        /// The exemplar, if any.
        exemplar: Option<ExemplarRef<'a>>,
    },
    /// As [`Value::Gauge`].
    Gauge(f64),
    /// As [`Value::Histogram`].
    Histogram(&'a Histogram),
    /// As [`Value::Unknown`].
    Unknown(f64),
}

/// An exemplar as a walk lends it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExemplarRef<'a> {
    /// As [`Exemplar::labels`].
    pub labels: &'a [(String, String)],
    /// As [`Exemplar::value`].
    pub value: f64,
    /// As [`Exemplar::timestamp`].
    pub timestamp: Option<SystemTime>,
}

impl ValueRef<'_> {
    /// The value, owned.
    pub fn to_owned(&self) -> Value {
        match *self {
            ValueRef::Counter { total, exemplar } => Value::Counter {
                total,
                exemplar: exemplar.map(|e| Exemplar {
                    labels: e.labels.to_vec(),
                    value: e.value,
                    timestamp: e.timestamp,
                }),
            },
            ValueRef::Gauge(v) => Value::Gauge(v),
            ValueRef::Histogram(h) => Value::Histogram(h.clone()),
            ValueRef::Unknown(v) => Value::Unknown(v),
        }
    }

    /// As [`Value::number`].
    pub fn number(&self) -> f64 {
        match *self {
            ValueRef::Counter { total, .. } => total,
            ValueRef::Gauge(v) | ValueRef::Unknown(v) => v,
            ValueRef::Histogram(h) => h.count as f64,
        }
    }
}

/// The visitor [`snapshot`] collects with.
#[derive(Debug, Default)]
struct Collect {
    families: Vec<Family>,
}

impl Visit for Collect {
    fn family(&mut self, f: &FamilyRef<'_>) {
        self.families.push(f.to_family());
    }

    fn series(&mut self, labels: LabelsRef<'_>, value: ValueRef<'_>) {
        if let Some(f) = self.families.last_mut() {
            f.series.push(Series {
                labels: labels.to_vec(),
                value: value.to_owned(),
            });
        }
    }
}

/// An encoded family without its series (see [`series`]), and its encoded series.
fn family_head(mut f: pm::MetricFamily) -> (Family, Vec<pm::Metric>) {
    let metrics = std::mem::take(&mut f.metric);
    (family(f), metrics)
}

fn family(f: pm::MetricFamily) -> Family {
    let kind = match pm::MetricType::try_from(f.r#type) {
        Ok(pm::MetricType::Counter) => Kind::Counter,
        Ok(pm::MetricType::Gauge) => Kind::Gauge,
        Ok(pm::MetricType::Histogram) => Kind::Histogram,
        _ => Kind::Unknown,
    };
    // Prometheus' data model names a counter family by its sample (`<name>_total`).
    let name = match (kind, f.name.strip_suffix("_total")) {
        (Kind::Counter, Some(base)) => base.to_owned(),
        _ => f.name,
    };
    let series = f.metric.into_iter().filter_map(series).collect();
    Family {
        name,
        help: f.help,
        unit: f.unit,
        kind,
        series,
    }
}

fn series(m: pm::Metric) -> Option<Series> {
    let value = if let Some(c) = m.counter {
        Value::Counter {
            total: c.value,
            exemplar: c.exemplar.map(exemplar),
        }
    } else if let Some(g) = m.gauge {
        Value::Gauge(g.value)
    } else if let Some(h) = m.histogram {
        Value::Histogram(Histogram {
            sum: h.sample_sum,
            count: h.sample_count,
            buckets: h
                .bucket
                .into_iter()
                .map(|b| Bucket {
                    upper_bound: b.upper_bound,
                    cumulative_count: b.cumulative_count,
                    exemplar: b.exemplar.map(exemplar),
                })
                .collect(),
        })
    } else if let Some(u) = m.untyped {
        Value::Unknown(u.value)
    } else {
        // Summaries and gauge histograms: types `prometheus-client` cannot express.
        return None;
    };
    Some(Series {
        labels: labels(m.label),
        value,
    })
}

fn labels(labels: Vec<pm::LabelPair>) -> Labels {
    labels.into_iter().map(|l| (l.name, l.value)).collect()
}

fn exemplar(e: pm::Exemplar) -> Exemplar {
    Exemplar {
        labels: labels(e.label),
        value: e.value,
        timestamp: e.timestamp.and_then(|t| {
            let secs = u64::try_from(t.seconds).ok()?;
            let nanos = u32::try_from(t.nanos).ok()?;
            UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
        }),
    }
}

/// The `le` label value the text encoder writes for a bucket bound (`0.005`, `1.0`, `+Inf`), so
/// that series read from a snapshot are the series a scrape of `/metrics` stores.
pub fn le_value(upper_bound: f64) -> String {
    if upper_bound == f64::INFINITY {
        "+Inf".to_owned()
    } else {
        dtoa::Buffer::new().format(upper_bound).to_owned()
    }
}

impl Snapshot {
    /// Lends the snapshot to `visit` as [`walk`] lent the registry.
    pub fn visit(&self, visit: &mut dyn Visit) {
        for f in &self.families {
            visit.family(&f.as_ref());
            if !visit.wants_series() {
                continue;
            }
            for s in &f.series {
                visit.series(LabelsRef::Owned(&s.labels), s.value.as_ref());
            }
        }
    }

    /// The family with this name (as in [`Family::name`]), if present.
    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }

    /// Every sample, as a scrape of `/metrics` yields them, in the order written.
    pub fn samples(&self) -> impl Iterator<Item = Sample<'_>> {
        self.families.iter().flat_map(Family::samples)
    }
}

impl Family {
    /// The family's description as a walk lends it.
    pub fn as_ref(&self) -> FamilyRef<'_> {
        FamilyRef {
            name: &self.name,
            help: &self.help,
            unit: &self.unit,
            kind: self.kind,
            series_generation: None,
        }
    }

    /// The family's samples as a scrape yields them: `_total` for counters; `_sum`, `_count`
    /// and cumulative `_bucket{le}` for histograms (that order, as written); the bare name
    /// otherwise.
    pub fn samples(&self) -> impl Iterator<Item = Sample<'_>> {
        self.series.iter().flat_map(move |s| self.series_samples(s))
    }

    fn series_samples<'a>(&'a self, s: &'a Series) -> Vec<Sample<'a>> {
        let sample = |suffix: &str, labels, value, exemplar| Sample {
            family: self,
            name: if suffix.is_empty() {
                Cow::Borrowed(self.name.as_str())
            } else {
                Cow::Owned(format!("{}{suffix}", self.name))
            },
            labels,
            value,
            exemplar,
        };
        let own = Cow::Borrowed(s.labels.as_slice());
        match &s.value {
            Value::Counter { total, exemplar } => {
                vec![sample("_total", own, *total, exemplar.as_ref())]
            }
            Value::Gauge(v) | Value::Unknown(v) => vec![sample("", own, *v, None)],
            Value::Histogram(h) => {
                let mut out = Vec::with_capacity(h.buckets.len() + 2);
                out.push(sample("_sum", own.clone(), h.sum, None));
                out.push(sample("_count", own, h.count as f64, None));
                for b in &h.buckets {
                    let mut labels = s.labels.clone();
                    labels.push(("le".to_owned(), le_value(b.upper_bound)));
                    out.push(sample(
                        "_bucket",
                        Cow::Owned(labels),
                        b.cumulative_count as f64,
                        b.exemplar.as_ref(),
                    ));
                }
                out
            }
        }
    }
}

impl Value {
    /// The value as a walk lends it.
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Value::Counter { total, exemplar } => ValueRef::Counter {
                total: *total,
                exemplar: exemplar.as_ref().map(|e| ExemplarRef {
                    labels: &e.labels,
                    value: e.value,
                    timestamp: e.timestamp,
                }),
            },
            Value::Gauge(v) => ValueRef::Gauge(*v),
            Value::Histogram(h) => ValueRef::Histogram(h),
            Value::Unknown(v) => ValueRef::Unknown(*v),
        }
    }

    /// The series' value where it is one number: a counter's total, a gauge, a histogram's
    /// count.
    pub fn number(&self) -> f64 {
        match self {
            Value::Counter { total, .. } => *total,
            Value::Gauge(v) | Value::Unknown(v) => *v,
            Value::Histogram(h) => h.count as f64,
        }
    }
}

/// The oracle of the tests: a snapshot checked against the text encoding of the same registry.
#[cfg(test)]
pub(crate) mod oracle {
    use super::*;

    /// Writes a label set as the text encoder does (escaping `\`, `"` and newlines).
    fn label_text(labels: &[(String, String)]) -> String {
        let body: Vec<String> = labels
            .iter()
            .map(|(k, v)| {
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                format!("{k}=\"{v}\"")
            })
            .collect();
        if body.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", body.join(","))
        }
    }

    /// The model of `registry` read through the protobuf encoder alone (no [`Source`] walks
    /// itself: outside a walk every collector encodes).
    pub(crate) fn encoded(registry: &Registry) -> Snapshot {
        let families = prometheus_client::encoding::prometheus_protobuf::encode(registry)
            .expect("encode")
            .into_iter()
            .map(family)
            .collect();
        Snapshot { families }
    }

    /// Asserts that the walk (the stores read in place) lends exactly the model the encoder
    /// gives of the same registry: families, help, kinds, label order, values (NaN equal to
    /// NaN), exemplars.
    pub(crate) fn assert_walk_is_encoded(registry: &Registry) {
        let walked = snapshot(registry).expect("snapshot");
        let encoded = encoded(registry);
        // `{:?}` writes NaN as NaN, where `==` would not equal it.
        assert_eq!(format!("{walked:#?}"), format!("{encoded:#?}"));
        assert_walk_skips(registry, &walked);
    }

    /// A visitor that reads every other family (the first, the third, …) and notes any series
    /// lent to it for a family it said it does not read.
    #[derive(Default)]
    struct EveryOther {
        families: Vec<Family>,
        unwanted_lent: usize,
    }

    impl Visit for EveryOther {
        fn family(&mut self, f: &FamilyRef<'_>) {
            self.families.push(f.to_family());
        }

        fn series(&mut self, labels: LabelsRef<'_>, value: ValueRef<'_>) {
            if !self.wants_series() {
                self.unwanted_lent += 1;
                return;
            }
            if let Some(f) = self.families.last_mut() {
                f.series.push(Series {
                    labels: labels.to_vec(),
                    value: value.to_owned(),
                });
            }
        }

        fn wants_series(&self) -> bool {
            self.families.len() % 2 == 1
        }
    }

    /// Asserts that a visitor reading only some families is lent every family and the series
    /// of those it reads, exactly as a full walk (`full`) lends them, and no series of the
    /// others — by the walk of `registry` (encoded families and every store) and by a replay
    /// of the snapshot.
    pub(crate) fn assert_walk_skips(registry: &Registry, full: &Snapshot) {
        let mut want = full.clone();
        for (i, f) in want.families.iter_mut().enumerate() {
            if i % 2 == 1 {
                f.series.clear();
            }
        }
        let mut walked = EveryOther::default();
        walk(registry, &mut walked).expect("walk");
        let mut replayed = EveryOther::default();
        full.visit(&mut replayed);
        for got in [walked, replayed] {
            assert_eq!(got.unwanted_lent, 0, "series lent for a family not read");
            let got = Snapshot {
                families: got.families,
            };
            assert_eq!(format!("{got:#?}"), format!("{want:#?}"));
        }
    }

    /// Holds the stores to their [`SeriesGeneration`] promise across walks of one registry: a
    /// family lent again with a token seen before lends the label sets it lent then, in the same
    /// order. Feed it a walk after each change to the stores ([`GenerationOracle::walk`]).
    #[derive(Debug, Default)]
    pub(crate) struct GenerationOracle {
        seen: std::collections::HashMap<(String, SeriesGeneration), Vec<Labels>>,
        /// The current walk: each family's name, token and label sets.
        lent: Vec<(String, Option<SeriesGeneration>, Vec<Labels>)>,
    }

    impl Visit for GenerationOracle {
        fn family(&mut self, f: &FamilyRef<'_>) {
            self.lent
                .push((f.name.to_owned(), f.series_generation, Vec::new()));
        }

        fn series(&mut self, labels: LabelsRef<'_>, _: ValueRef<'_>) {
            if let Some((_, _, l)) = self.lent.last_mut() {
                l.push(labels.to_vec());
            }
        }
    }

    impl GenerationOracle {
        /// Walks `registry`, asserts the promise for every family lent with a token, and
        /// returns each family's name and token, in the order lent.
        pub(crate) fn walk(
            &mut self,
            registry: &Registry,
        ) -> Vec<(String, Option<SeriesGeneration>)> {
            self.lent.clear();
            super::walk(registry, self).expect("walk");
            let mut tokens = Vec::new();
            for (name, token, labels) in std::mem::take(&mut self.lent) {
                tokens.push((name.clone(), token));
                let Some(token) = token else {
                    continue;
                };
                match self.seen.get(&(name.clone(), token)) {
                    Some(before) => assert_eq!(
                        before, &labels,
                        "{name}: lent with a token it had before, with other series"
                    ),
                    None => {
                        self.seen.insert((name, token), labels);
                    }
                }
            }
            tokens
        }
    }

    /// Asserts that the snapshot of `registry` is the registry's text encoding: the same
    /// families with the same type, unit and help lines, then, line for line, the same sample
    /// names and label sets (compared as text), the same values and exemplars (compared as
    /// numbers: the text writes integers without a fraction).
    pub(crate) fn assert_matches_text(registry: &Registry) -> Snapshot {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
        assert_matches_text_of(registry, &text)
    }

    /// [`assert_matches_text`] against a given OpenMetrics text of `registry` (a `/metrics`
    /// body, where stores write their own text).
    pub(crate) fn assert_matches_text_of(registry: &Registry, text: &str) -> Snapshot {
        let snap = snapshot(registry).expect("snapshot");
        let mut lines = text.lines().filter(|l| *l != "# EOF");
        for f in &snap.families {
            let help = lines.next().expect("help line");
            let ty_line = lines.next().expect("type line");
            let (text_name, text_ty) = ty_line
                .strip_prefix("# TYPE ")
                .and_then(|t| t.rsplit_once(' '))
                .expect("a type line");
            let ty = match f.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
                Kind::Unknown => "unknown",
            };
            // An info metric is read as the gauge `<name>_info` Prometheus stores.
            assert!(
                (text_name, text_ty) == (f.name.as_str(), ty)
                    || (f.kind == Kind::Gauge
                        && text_ty == "info"
                        && f.name == format!("{text_name}_info")),
                "{ty_line:?} for {} {ty}\n{text}",
                f.name
            );
            assert_eq!(help, format!("# HELP {text_name} {}", f.help), "{text}");
            if !f.unit.is_empty() {
                assert_eq!(
                    lines.next(),
                    Some(format!("# UNIT {text_name} {}", f.unit).as_str())
                );
            }
            for s in f.samples() {
                let line = lines.next().expect("a sample line per sample");
                let key = format!("{}{} ", s.name, label_text(&s.labels));
                // The text writes a bucket's `le` before a family's labels; the snapshot puts it
                // last. Label order carries no meaning, so either is the same series.
                let mut le_first = s.labels.to_vec();
                le_first.rotate_right(usize::from(s.name.ends_with("_bucket")));
                let key_le_first = format!("{}{} ", s.name, label_text(&le_first));
                // A family's series with no labels is written with empty braces.
                let key_braces = format!("{}{{}} ", s.name);
                let rest = line
                    .strip_prefix(key.as_str())
                    .or_else(|| line.strip_prefix(key_le_first.as_str()))
                    .or_else(|| {
                        s.labels
                            .is_empty()
                            .then(|| line.strip_prefix(key_braces.as_str()))
                            .flatten()
                    })
                    .unwrap_or_else(|| panic!("{line:?} should start with {key:?}\n{text}"));
                let (value, exemplar) = match rest.split_once(" # ") {
                    Some((v, e)) => (v, Some(e)),
                    None => (rest, None),
                };
                let want: f64 = value.parse().expect("a number");
                assert!(
                    want == s.value || (want.is_nan() && s.value.is_nan()),
                    "{line}: snapshot says {}",
                    s.value
                );
                match (exemplar, s.exemplar) {
                    (None, None) => {}
                    (Some(text_ex), Some(ex)) => {
                        let labels = label_text(&ex.labels);
                        let labels = if labels.is_empty() {
                            "{}".to_owned()
                        } else {
                            labels
                        };
                        let nums = text_ex
                            .strip_prefix(labels.as_str())
                            .unwrap_or_else(|| panic!("{line}: exemplar labels {labels}"));
                        let mut nums = nums.split_whitespace().map(|n| n.parse::<f64>());
                        assert_eq!(nums.next(), Some(Ok(ex.value)), "{line}");
                        let ts = ex
                            .timestamp
                            .map(|t| t.duration_since(UNIX_EPOCH).expect("after").as_secs_f64());
                        assert_eq!(nums.next().transpose().expect("timestamp"), ts, "{line}");
                    }
                    (t, s) => panic!("{line}: exemplar in text {t:?}, in snapshot {s:?}"),
                }
            }
        }
        assert_eq!(
            lines.next(),
            None,
            "the text has more than the snapshot:\n{text}"
        );
        snap
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::oracle::assert_matches_text;

    use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::exemplar::{CounterWithExemplar, HistogramWithExemplars};
    use prometheus_client::metrics::family::Family as PFamily;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::Histogram as PHistogram;
    use prometheus_client::metrics::info::Info;
    use prometheus_client::registry::Unit;

    use super::*;
    use crate::metrics::{
        FamilySnapshot, Kind as SnapKind, Snapshot as SourceSnapshot, SnapshotCell,
        SnapshotCollector,
    };

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
    enum Method {
        Get,
    }

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Route {
        method: Method,
        path: String,
    }

    #[test]
    fn counters_gauges_and_escaping_match_the_text() {
        let mut r = Registry::default();
        let requests: PFamily<[(&str, &str); 2], Counter> = PFamily::default();
        requests
            .get_or_create(&[("path", "/a\"b\\c\nd e}"), ("code", "200")])
            .inc_by(3);
        drop(requests.get_or_create(&[("path", "/"), ("code", "500")]));
        r.register("requests", "Requests \"served\"\\ by path", requests);
        let f64_counter = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        f64_counter.inc_by(1.25);
        r.register_with_unit("busy", "Busy time", Unit::Seconds, f64_counter);
        let temp = Gauge::<i64>::default();
        temp.set(-7);
        r.register_with_unit("temperature", "A gauge", Unit::Celsius, temp);
        let ratio = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        ratio.set(f64::NAN);
        r.register("ratio", "Not a number", ratio);
        let typed: PFamily<Route, Gauge> = PFamily::default();
        typed
            .get_or_create(&Route {
                method: Method::Get,
                path: "/x".into(),
            })
            .set(2);
        r.register("inflight", "Typed labels", typed);
        let sub = r
            .sub_registry_with_prefix("sub")
            .sub_registry_with_label((Cow::Borrowed("zone"), Cow::Borrowed("eu")));
        sub.register(
            "queue_depth",
            "Prefixed and labelled",
            Gauge::<i64>::default(),
        );

        let snap = assert_matches_text(&r);
        let names: Vec<&str> = snap.families.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "requests",
                "busy_seconds",
                "temperature_celsius",
                "ratio",
                "inflight",
                "sub_queue_depth"
            ]
        );
        let req = snap.family("requests").expect("requests");
        assert_eq!(req.kind, Kind::Counter);
        // A family's series come in the registry's own (hash) order: find the one by its label.
        let ok = req
            .series
            .iter()
            .find(|s| s.labels.iter().any(|(k, v)| k == "code" && v == "200"))
            .expect("the code=200 series");
        assert_eq!(
            ok.labels,
            [
                ("path".to_owned(), "/a\"b\\c\nd e}".to_owned()),
                ("code".to_owned(), "200".to_owned())
            ],
            "label values are raw, not escaped"
        );
        assert_eq!(ok.value.number(), 3.0);
        let busy = snap.family("busy_seconds").expect("busy");
        assert_eq!(
            (busy.unit.as_str(), busy.series[0].value.number()),
            ("seconds", 1.25)
        );
        let sub = snap.family("sub_queue_depth").expect("sub");
        assert_eq!(sub.series[0].labels, [("zone".to_owned(), "eu".to_owned())]);
        let s: Vec<String> = snap.samples().map(|s| s.name.into_owned()).collect();
        assert_eq!(s[0], "requests_total");
        assert_eq!(s[2], "busy_seconds_total");
    }

    #[test]
    fn histograms_have_cumulative_buckets_as_in_the_text() {
        let mut r = Registry::default();
        let h = PHistogram::new([0.005, 0.5, 1.0, 2.5]);
        for v in [0.001, 0.2, 0.7, 0.9, 9.0] {
            h.observe(v);
        }
        r.register_with_unit("latency", "Latency", Unit::Seconds, h);
        let by_route: PFamily<[(&str, &str); 1], PHistogram> =
            PFamily::new_with_constructor(|| PHistogram::new([1.0, 10.0]));
        by_route.get_or_create(&[("route", "/a")]).observe(5.0);
        drop(by_route.get_or_create(&[("route", "/b")]));
        r.register("sizes", "Empty and not", by_route);

        let snap = assert_matches_text(&r);
        let lat = snap.family("latency_seconds").expect("latency");
        assert_eq!(lat.kind, Kind::Histogram);
        let Value::Histogram(h) = &lat.series[0].value else {
            panic!("a histogram: {lat:?}");
        };
        assert_eq!(h.count, 5);
        assert!((h.sum - 10.801).abs() < 1e-9);
        let buckets: Vec<(f64, u64)> = h
            .buckets
            .iter()
            .map(|b| (b.upper_bound, b.cumulative_count))
            .collect();
        assert_eq!(
            buckets,
            [(0.005, 1), (0.5, 2), (1.0, 4), (2.5, 4), (f64::INFINITY, 5)]
        );
        let les: Vec<String> = lat
            .samples()
            .filter(|s| s.name == "latency_seconds_bucket")
            .map(|s| s.labels.last().expect("le").1.clone())
            .collect();
        assert_eq!(les, ["0.005", "0.5", "1.0", "2.5", "+Inf"]);
    }

    #[test]
    fn exemplars_and_info_match_the_text() {
        let mut r = Registry::default();
        let c: CounterWithExemplar<Vec<(String, String)>, f64> = CounterWithExemplar::default();
        c.inc_by(
            2.0,
            Some(vec![("trace_id".into(), "4bf92f3577b34da6".into())]),
            Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_250)),
        );
        r.register("orders", "Orders", c);
        let h: HistogramWithExemplars<Vec<(String, String)>> =
            HistogramWithExemplars::new([0.1, 1.0].into_iter());
        h.observe(0.5, Some(vec![("trace_id".into(), "abc".into())]), None);
        h.observe(0.05, None, None);
        r.register("checkout", "Checkout", h);
        r.register(
            "build",
            "Build",
            Info::new(vec![("version".to_owned(), "1.2.3".to_owned())]),
        );

        let snap = assert_matches_text(&r);
        let orders = snap.family("orders").expect("orders");
        let Value::Counter {
            exemplar: Some(ex), ..
        } = &orders.series[0].value
        else {
            panic!("an exemplar: {orders:?}");
        };
        assert_eq!(ex.value, 2.0);
        assert_eq!(
            ex.timestamp,
            Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_250))
        );
        let checkout = snap.family("checkout").expect("checkout");
        let Value::Histogram(h) = &checkout.series[0].value else {
            panic!("histogram");
        };
        let with: Vec<Option<f64>> = h
            .buckets
            .iter()
            .map(|b| b.exemplar.as_ref().map(|e| e.value))
            .collect();
        assert_eq!(with, [None, Some(0.5), None]);
        let info = snap.family("build_info").expect("build");
        assert_eq!(info.kind, Kind::Gauge);
        let sample = info.samples().next().expect("one sample");
        assert_eq!((sample.name.as_ref(), sample.value), ("build_info", 1.0));
    }

    #[test]
    fn custom_collectors_are_read_like_the_text() {
        let cell = Arc::new(SnapshotCell::default());
        let mut cpu = FamilySnapshot::new("node_cpu_seconds", "CPU time.", SnapKind::Counter);
        cpu.push([("cpu", "0".to_owned()), ("mode", "idle".to_owned())], 12.5);
        cpu.push([("cpu", "0".to_owned()), ("mode", "user".to_owned())], 3.0);
        let mut load = FamilySnapshot::new("node_load1", "1m load average.", SnapKind::Gauge);
        load.push([], 0.25);
        let empty = FamilySnapshot::new("node_idle", "Not sampled yet.", SnapKind::Gauge);
        cell.publish(SourceSnapshot {
            families: vec![cpu, empty, load],
        });
        let mut r = Registry::default();
        let before: Counter = Counter::default();
        before.inc();
        r.register("before", "Encoded", before);
        r.register_collector(Box::new(SnapshotCollector(cell.clone())));
        r.register("between", "Encoded", Gauge::<i64>::default());
        r.register_collector(Box::new(SnapshotCollector(Arc::new(
            SnapshotCell::default(),
        ))));
        r.register_collector(Box::new(SnapshotCollector(cell)));
        r.register("after", "Encoded", Gauge::<i64>::default());
        let snap = assert_matches_text(&r);
        // The stores are read in place, each at its collector's place in the registry (which
        // writes its metrics first, then its collectors, as the text does).
        super::oracle::assert_walk_is_encoded(&r);
        let names: Vec<&str> = snap.families.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "before",
                "between",
                "after",
                "node_cpu_seconds",
                "node_load1",
                "node_cpu_seconds",
                "node_load1",
            ]
        );
        assert_eq!(
            snap.family("node_cpu_seconds").expect("cpu").series.len(),
            2
        );
        assert_eq!(snap.samples().count(), 9);

        // A visitor sees the same walk, label sets lent.
        #[derive(Default)]
        struct Count(Vec<String>, usize);
        impl Visit for Count {
            fn family(&mut self, f: &FamilyRef<'_>) {
                self.0.push(f.name.to_owned());
            }
            fn series(&mut self, labels: LabelsRef<'_>, value: ValueRef<'_>) {
                if labels.value("mode") == Some("idle") {
                    assert_eq!(value.number(), 12.5);
                    assert!(labels.eq_labels(&[
                        ("cpu".to_owned(), "0".to_owned()),
                        ("mode".to_owned(), "idle".to_owned())
                    ]));
                }
                self.1 += 1;
            }
        }
        let mut count = Count::default();
        walk(&r, &mut count).expect("walk");
        assert_eq!(
            (count.0.clone(), count.1),
            (names.iter().map(|n| n.to_string()).collect(), 9)
        );
        let mut replayed = Count::default();
        snap.visit(&mut replayed);
        assert_eq!((replayed.0, replayed.1), (count.0, 9));
    }

    #[test]
    fn an_empty_registry_is_an_empty_snapshot() {
        let snap = assert_matches_text(&Registry::default());
        assert!(snap.families.is_empty());
    }
}

//! Received OTLP metrics served as Prometheus families, under the OpenTelemetry specification's
//! Prometheus compatibility rules as the OpenTelemetry Collector's Prometheus exporter applies
//! them (`add_metric_suffixes` on):
//!
//! - **Names**: the metric name is split into tokens at every character outside `[A-Za-z0-9]`
//!   and joined with `_`; the unit is appended as a word (`s` → `_seconds`, `By` → `_bytes`,
//!   `Cel` → `_celsius`, `By/s` → `_bytes_per_second`, [`unit_word`]) unless the name already
//!   holds it; units in braces (`{order}`) are annotations and add nothing; monotonic sums end in
//!   `_total`, gauges with unit `1` in `_ratio`; a leading digit gets a `_`.
//! - **Types**: monotonic sums → counters; non-monotonic sums and gauges → gauges; explicit-bucket
//!   histograms → histograms (`_bucket{le}`, `_sum`, `_count`); summaries → a gauge family with a
//!   `quantile` label plus `_sum` and `_count` gauges (`prometheus-client` cannot write the
//!   summary type). Exponential histograms are **dropped and counted**
//!   (`sidelight_received_metric_points_dropped_total{reason="exponential_histogram"}`), as the
//!   Collector's exporter does.
//! - **Temporality**: cumulative points replace the series' value (an older point than the one
//!   held is ignored); delta points are accumulated into a cumulative value per series.
//! - **Labels**: data-point attributes, sanitised ([`label_name`]; colliding names joined with
//!   `;`), plus the resource's `service.name`, `service.namespace`, `service.instance.id` as
//!   `service_name`, `service_namespace`, `service_instance_id` (never `job` / `instance`, which
//!   are the scrape's own) and the scope as `otel_scope_name` / `otel_scope_version`. A point
//!   attribute that would take one of these names is renamed `exported_<name>`. Every other
//!   resource attribute is a label of `target_info{service_name,service_namespace,
//!   service_instance_id,...} 1`.
//! - **Exemplars** of monotonic sums are kept (the last one per series, with its `trace_id` /
//!   `span_id`), shown in OpenMetrics output; histogram exemplars are not kept: `prometheus-client`
//!   0.25 gives a custom collector no way to write them (its `Exemplar` has no public
//!   constructor, and `HistogramWithExemplars` takes observations, not bucket counts).
//!
//! Bounds: a series not updated for `expiry` disappears (with its `target_info`). Past
//! `max_label_sets` series in one family, further label sets are folded into one series whose
//! labels are all `other` (its value the sum of theirs), counted once each in
//! `sidelight_label_sets_folded_total{family}`. Past `max_series` series in all, new series are
//! dropped and counted (`reason="series_limit"`). A family whose name the agent already uses
//! for its own metrics is dropped (`reason="reserved_name"`), and points whose family already
//! exists with another type too (`reason="type_conflict"`).
//!
//! As span metrics, recording is split in two: [`ReceivedMetrics::prepare`] reads a request into
//! a [`Prepared`] batch, the receiver offers the request to the intake, and only if it was taken
//! [`ReceivedMetrics::record`] applies the batch (a refused request is sent again, and its deltas
//! would count twice).

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash, Hasher};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hashbrown::HashTable;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, DataPointFlags, Exemplar as OtlpExemplar, exemplar, metric::Data,
    number_data_point,
};
use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::exemplar::CounterWithExemplar;
use prometheus_client::metrics::family::Family as PromFamily;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::exposition::{push_descriptor, push_labels};
use crate::metrics::{LabelCaps, OVERFLOW_VALUE};

/// Sorted label pairs of one series.
pub type SeriesLabels = Vec<(String, String)>;

/// The labels the resource and scope give every series.
pub const SERVICE_NAME: &str = "service_name";
/// `service.namespace`.
pub const SERVICE_NAMESPACE: &str = "service_namespace";
/// `service.instance.id`.
pub const SERVICE_INSTANCE_ID: &str = "service_instance_id";
/// The instrumentation scope's name.
pub const SCOPE_NAME: &str = "otel_scope_name";
/// The instrumentation scope's version.
pub const SCOPE_VERSION: &str = "otel_scope_version";
/// The family holding every resource's other attributes.
pub const TARGET_INFO: &str = "target_info";

/// Label names a data-point attribute may not take (it becomes `exported_<name>`).
const RESERVED_LABELS: [&str; 7] = [
    SERVICE_NAME,
    SERVICE_NAMESPACE,
    SERVICE_INSTANCE_ID,
    SCOPE_NAME,
    SCOPE_VERSION,
    "le",
    "quantile",
];

/// Family names and prefixes of the agent's own metrics: a received family named so is dropped,
/// so that `/metrics` never holds one family twice.
const RESERVED_PREFIXES: [&str; 5] = [
    "sidelight_",
    "node_",
    "traces_span_metrics_",
    "dora_",
    "target_info",
];
const RESERVED_NAMES: [&str; 7] = [
    "process_cpu_seconds",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_threads",
    "process_start_time_seconds",
];

/// Default time after which a series that is not updated disappears.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(300);
/// Default number of received series held at most.
pub const DEFAULT_MAX_SERIES: usize = 10_000;

/// How received metrics are bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSettings {
    /// A series not updated for this long is removed.
    pub expiry: Duration,
    /// Series held at most over every family (and `target_info`); new ones beyond are dropped.
    pub max_series: usize,
    /// Series exposed per family; further label sets are folded into `other`.
    pub max_label_sets: usize,
}

impl Default for ReceivedSettings {
    fn default() -> Self {
        Self {
            expiry: DEFAULT_EXPIRY,
            max_series: DEFAULT_MAX_SERIES,
            max_label_sets: 1000,
        }
    }
}

/// What kind of Prometheus family a received metric becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FamilyKind {
    /// A monotonic sum.
    Counter,
    /// A gauge or a non-monotonic sum.
    Gauge,
    /// An explicit-bucket histogram.
    Histogram,
    /// A summary (served as gauges).
    Summary,
}

/// The Prometheus word for an OTel unit (UCUM as the semantic conventions use it); unknown
/// units are kept, cleaned to `[a-z0-9_]`.
pub fn unit_word(unit: &str) -> String {
    let known = match unit {
        "d" => "days",
        "h" => "hours",
        "min" => "minutes",
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "GiBy" => "gibibytes",
        "TiBy" => "tibibytes",
        "KBy" => "kilobytes",
        "MBy" => "megabytes",
        "GBy" => "gigabytes",
        "TBy" => "terabytes",
        "m" => "meters",
        "V" => "volts",
        "A" => "amperes",
        "J" => "joules",
        "W" => "watts",
        "g" => "grams",
        "Cel" => "celsius",
        "Hz" => "hertz",
        "1" => "",
        "%" => "percent",
        other => return clean_word(other),
    };
    known.to_owned()
}

/// The word after `per_` for the denominator of a unit (`By/s` → `second`).
fn per_unit_word(unit: &str) -> String {
    let known = match unit {
        "s" => "second",
        "m" => "minute",
        "h" => "hour",
        "d" => "day",
        "w" => "week",
        "mo" => "month",
        "y" => "year",
        other => return clean_word(other),
    };
    known.to_owned()
}

/// Tokens of `[A-Za-z0-9]` joined by single underscores.
fn clean_word(text: &str) -> String {
    tokens(text).collect::<Vec<_>>().join("_")
}

fn tokens(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|t| !t.is_empty())
}

/// The Prometheus name of a received metric (counters with their `_total`).
pub fn metric_name(name: &str, unit: &str, kind: FamilyKind) -> String {
    let mut words: Vec<String> = tokens(name).map(str::to_owned).collect();
    let (main, per) = match unit.split_once('/') {
        Some((m, p)) => (m.trim(), Some(p.trim())),
        None => (unit.trim(), None),
    };
    let annotation = |u: &str| u.contains('{') || u.contains('}');
    if !main.is_empty() && !annotation(main) {
        let word = unit_word(main);
        if !word.is_empty() && !words.contains(&word) {
            words.push(word);
        }
    }
    if let Some(per) = per.filter(|p| !p.is_empty() && !annotation(p)) {
        let word = per_unit_word(per);
        if !word.is_empty() && !words.contains(&word) {
            words.push("per".to_owned());
            words.push(word);
        }
    }
    match kind {
        FamilyKind::Counter => {
            words.retain(|w| w != "total");
            words.push("total".to_owned());
        }
        FamilyKind::Gauge if unit == "1" => {
            words.retain(|w| w != "ratio");
            words.push("ratio".to_owned());
        }
        _ => {}
    }
    let mut out = words.join("_");
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// A Prometheus label name for an attribute key: every character outside `[A-Za-z0-9_]` becomes
/// `_`; a leading digit gets `key_`, a leading `_` gets `key` (`__` is reserved by Prometheus).
pub fn label_name(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    push_label_name(&mut out, key);
    out
}

/// Appends [`label_name`]`(key)` to `out`.
fn push_label_name(out: &mut String, key: &str) {
    match key.chars().next() {
        None => out.push_str("key_"),
        Some(c) if c.is_ascii_digit() => out.push_str("key_"),
        Some(c) if !c.is_ascii_alphanumeric() => out.push_str("key"),
        Some(_) => {}
    }
    if key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        out.push_str(key);
        return;
    }
    out.extend(key.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        }
    }));
}

fn reserved_family(name: &str) -> bool {
    RESERVED_PREFIXES.iter().any(|p| name.starts_with(p))
        || RESERVED_NAMES.contains(&name)
        || name.is_empty()
}

/// An attribute value as label text: strings as they are, scalars rendered, arrays and maps as
/// JSON-like text, bytes as hex.
fn value_text(v: &AnyValue) -> Option<String> {
    let mut out = String::new();
    push_value_text(&mut out, v).then_some(out)
}

/// Appends [`value_text`]`(v)` to `out`; `false` (nothing appended) when it has none.
fn push_value_text(out: &mut String, v: &AnyValue) -> bool {
    use std::fmt::Write as _;
    let Some(value) = v.value.as_ref() else {
        return false;
    };
    match value {
        any_value::Value::StringValue(s) => out.push_str(s),
        any_value::Value::BoolValue(b) => out.push_str(if *b { "true" } else { "false" }),
        any_value::Value::IntValue(i) => out.push_str(itoa::Buffer::new().format(*i)),
        // Writing into a `String` cannot fail.
        any_value::Value::DoubleValue(d) => drop(write!(out, "{d}")),
        any_value::Value::BytesValue(b) => push_hex(out, b),
        any_value::Value::ArrayValue(a) => {
            out.push('[');
            for (i, v) in a.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_value_text(out, v);
            }
            out.push(']');
        }
        any_value::Value::KvlistValue(kv) => {
            out.push('{');
            for (i, kv) in kv.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&kv.key);
                out.push(':');
                if let Some(v) = &kv.value {
                    push_value_text(out, v);
                }
            }
            out.push('}');
        }
        // A string-table reference (profiles only): no text here.
        _ => return false,
    }
    true
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    s
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
}

/// Sanitised attribute labels, colliding names' values joined with `;` (in key order).
fn attribute_labels(attrs: &[KeyValue], reserved: &[&str]) -> BTreeMap<String, String> {
    let mut sorted: Vec<&KeyValue> = attrs.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for kv in sorted {
        let Some(value) = kv.value.as_ref().and_then(value_text) else {
            continue;
        };
        let mut name = label_name(&kv.key);
        if reserved.contains(&name.as_str()) {
            name = format!("exported_{name}");
        }
        out.entry(name)
            .and_modify(|v| {
                v.push(';');
                v.push_str(&value);
            })
            .or_insert(value);
    }
    out
}

/// One received metric's points, waiting for the request to be accepted.
#[derive(Debug)]
struct PreparedMetric {
    name: String,
    help: String,
    kind: FamilyKind,
    points: Vec<PreparedPoint>,
}

#[derive(Debug)]
struct PreparedPoint {
    /// The point's labels: a range of [`Prepared::spans`].
    labels: Range<usize>,
    /// The hash of those labels ([`Prepared::point_labels`]).
    hash: u64,
    time: u64,
    update: Update,
    exemplar: Option<KeptExemplar>,
}

#[derive(Debug, Clone)]
enum Update {
    /// A gauge or cumulative sum.
    Set(f64),
    /// A delta sum.
    Add(f64),
    /// A histogram point, its bounds and per-bucket counts in [`Prepared`]'s arrays; `delta`
    /// says whether it adds to the held one.
    Histogram {
        bounds: Range<usize>,
        counts: Range<usize>,
        sum: f64,
        count: u64,
        delta: bool,
    },
    /// A summary point.
    Summary(Summ),
}

/// One label of a prepared point: its name and value as ranges of [`Prepared::text`].
#[derive(Debug, Clone, Copy)]
struct Span {
    name: (usize, usize),
    value: (usize, usize),
}

#[derive(Debug, Clone, PartialEq)]
struct Hist {
    bounds: Vec<f64>,
    /// Per bucket (not cumulative), one more than `bounds`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Debug, Clone, PartialEq)]
struct Summ {
    quantiles: Vec<(f64, f64)>,
    sum: f64,
    count: u64,
}

#[derive(Debug, Clone, PartialEq)]
struct KeptExemplar {
    labels: SeriesLabels,
    value: f64,
    time: Option<SystemTime>,
}

/// A request's points and resources read by [`ReceivedMetrics::prepare`]. The points' label
/// texts and histogram buckets are held in a few arrays for the whole request, so that a point of
/// a series already held costs no allocation from decoding to recording.
#[derive(Debug, Default)]
pub struct Prepared {
    metrics: Vec<PreparedMetric>,
    targets: Vec<SeriesLabels>,
    /// Points that will not be served, by reason.
    dropped: Vec<(&'static str, u64)>,
    /// Label names and values, back to back.
    text: String,
    /// Every point's labels, in label order.
    spans: Vec<Span>,
    /// Histogram bounds (points with the same bounds as the previous one share them).
    bounds: Vec<f64>,
    /// Histogram per-bucket counts.
    counts: Vec<u64>,
}

impl Prepared {
    /// Data points that will be applied.
    pub fn points(&self) -> usize {
        self.metrics.iter().map(|m| m.points.len()).sum()
    }

    fn str(&self, (start, end): (usize, usize)) -> &str {
        &self.text[start..end]
    }

    /// Whether a held series' labels are a point's.
    fn same_labels(&self, held: &[(String, String)], labels: &Range<usize>) -> bool {
        let spans = &self.spans[labels.clone()];
        held.len() == spans.len()
            && held
                .iter()
                .zip(spans)
                .all(|((n, v), s)| *n == self.str(s.name) && *v == self.str(s.value))
    }

    /// A point's labels, owned (for a new series).
    fn owned_labels(&self, labels: &Range<usize>) -> SeriesLabels {
        self.spans[labels.clone()]
            .iter()
            .map(|s| (self.str(s.name).to_owned(), self.str(s.value).to_owned()))
            .collect()
    }

    /// A histogram update's buckets, owned (for a new series or another set of bounds).
    fn hist(&self, bounds: &Range<usize>, counts: &Range<usize>, sum: f64, count: u64) -> Hist {
        Hist {
            bounds: self.bounds[bounds.clone()].to_vec(),
            counts: self.counts[counts.clone()].to_vec(),
            sum,
            count,
        }
    }

    /// Appends `bounds` (or finds them as the last ones appended).
    fn push_bounds(&mut self, bounds: &[f64], last: &mut Range<usize>) -> Range<usize> {
        if self.bounds[last.clone()] != *bounds {
            let start = self.bounds.len();
            self.bounds.extend_from_slice(bounds);
            *last = start..self.bounds.len();
        }
        last.clone()
    }

    fn push_counts(&mut self, counts: &[u64]) -> Range<usize> {
        let start = self.counts.len();
        self.counts.extend_from_slice(counts);
        start..self.counts.len()
    }

    /// Appends a label to `text` and returns its span.
    fn push_span(&mut self, name: &str, value: &str) -> Span {
        let n0 = self.text.len();
        self.text.push_str(name);
        let v0 = self.text.len();
        self.text.push_str(value);
        Span {
            name: (n0, v0),
            value: (v0, self.text.len()),
        }
    }

    /// Appends a point's labels — its attributes (read into `scratch`) merged with the
    /// resource's and scope's `base` labels (in label order; `base` wins a name both have) — and
    /// returns their range of `spans` and their hash.
    fn point_labels(
        &mut self,
        scratch: &mut Scratch,
        attrs: &[KeyValue],
        base: &[Span],
        hasher: &impl BuildHasher,
    ) -> (Range<usize>, u64) {
        let n = scratch.read(attrs);
        let start = self.spans.len();
        let mut h = hasher.build_hasher();
        let (mut i, mut b) = (0, 0);
        loop {
            let take_base = match (scratch.order.get(i), base.get(b)) {
                (None, None) => break,
                (None, Some(_)) => true,
                (Some(_), None) => false,
                (Some(&a), Some(s)) => match scratch.names[a].as_str().cmp(self.str(s.name)) {
                    std::cmp::Ordering::Less => false,
                    std::cmp::Ordering::Greater => true,
                    std::cmp::Ordering::Equal => {
                        // Not reachable with the reserved names renamed; as a map would.
                        while i < n && scratch.names[scratch.order[i]] == scratch.names[a] {
                            i += 1;
                        }
                        continue;
                    }
                },
            };
            let span = if take_base {
                b += 1;
                base[b - 1]
            } else {
                let a = scratch.order[i];
                let n0 = self.text.len();
                self.text.push_str(&scratch.names[a]);
                let v0 = self.text.len();
                self.text.push_str(&scratch.values[a]);
                i += 1;
                while i < n && scratch.names[scratch.order[i]] == scratch.names[a] {
                    self.text.push(';');
                    self.text.push_str(&scratch.values[scratch.order[i]]);
                    i += 1;
                }
                Span {
                    name: (n0, v0),
                    value: (v0, self.text.len()),
                }
            };
            self.str(span.name).hash(&mut h);
            self.str(span.value).hash(&mut h);
            self.spans.push(span);
        }
        (start..self.spans.len(), h.finish())
    }
}

/// Reused buffers for reading one point's attributes into labels (no allocation once warm).
#[derive(Debug, Default)]
struct Scratch {
    /// Sanitised names and values of the attributes read (the first `n`).
    names: Vec<String>,
    values: Vec<String>,
    /// Each one's attribute index.
    keys: Vec<usize>,
    order: Vec<usize>,
}

impl Scratch {
    /// Reads a point's attributes: sanitised names (reserved ones renamed), value texts; returns
    /// how many have a value.
    fn read(&mut self, attrs: &[KeyValue]) -> usize {
        let mut n = 0;
        for (i, kv) in attrs.iter().enumerate() {
            let Some(value) = kv.value.as_ref() else {
                continue;
            };
            if self.values.len() == n {
                self.values.push(String::new());
                self.names.push(String::new());
                self.keys.push(0);
            }
            let text = &mut self.values[n];
            text.clear();
            if !push_value_text(text, value) {
                continue;
            }
            let name = &mut self.names[n];
            name.clear();
            push_label_name(name, &kv.key);
            if RESERVED_LABELS.contains(&name.as_str()) {
                name.insert_str(0, "exported_");
            }
            self.keys[n] = i;
            n += 1;
        }
        // As `attribute_labels`: by name, colliding names' values in key order.
        self.order.clear();
        self.order.extend(0..n);
        let (names, keys) = (&self.names, &self.keys);
        self.order.sort_by(|a, b| {
            names[*a]
                .cmp(&names[*b])
                .then_with(|| attrs[keys[*a]].key.cmp(&attrs[keys[*b]].key))
        });
        n
    }
}

#[derive(Debug)]
struct Series {
    value: Value,
    time: u64,
    seen: Instant,
    folded: bool,
    exemplar: Option<KeptExemplar>,
}

#[derive(Debug, Clone)]
enum Value {
    Number(f64),
    Histogram(Hist),
    Summary(Summ),
}

#[derive(Debug)]
struct Family {
    kind: FamilyKind,
    help: String,
    /// Each label set's place in `slots`, by the hash of its labels ([`Slot::hash`]).
    index: HashTable<usize>,
    slots: Vec<Slot>,
    /// `slots` in label order (the order served), rebuilt when series come or go.
    order: Vec<usize>,
    order_stale: bool,
    /// Series exposed as themselves (the rest are folded).
    exposed: usize,
    /// The version of the list of series served (`order`, then the overflow series): renewed
    /// whenever a series comes or goes, which is whenever that list can change.
    generation: crate::model::SeriesGeneration,
}

/// One series of a family with its label set, and the label set as the exposition writes it
/// (escaped once, when the series is created).
#[derive(Debug)]
struct Slot {
    labels: Arc<SeriesLabels>,
    /// The hash of `labels` (as [`Prepared::point_labels`] computes it).
    hash: u64,
    text: Box<str>,
    series: Series,
}

impl Family {
    fn new(kind: FamilyKind, help: String) -> Self {
        Self {
            kind,
            help,
            index: HashTable::new(),
            slots: Vec::new(),
            order: Vec::new(),
            order_stale: false,
            exposed: 0,
            generation: crate::model::SeriesGeneration::next(),
        }
    }

    /// The slot holding a prepared point's series.
    fn find(&self, prepared: &Prepared, point: &PreparedPoint) -> Option<usize> {
        self.index
            .find(point.hash, |&i| {
                prepared.same_labels(&self.slots[i].labels, &point.labels)
            })
            .copied()
    }

    fn insert(&mut self, labels: SeriesLabels, hash: u64, series: Series) {
        let mut text = String::new();
        push_labels(&mut text, &labels);
        let Family { index, slots, .. } = self;
        slots.push(Slot {
            labels: Arc::new(labels),
            hash,
            text: text.into_boxed_str(),
            series,
        });
        index.insert_unique(hash, slots.len() - 1, |&i| slots[i].hash);
        self.order_stale = true;
        self.generation = crate::model::SeriesGeneration::next();
    }

    /// Drops the series `keep` says no to, returning how many went and how many of those were
    /// exposed.
    fn retain(&mut self, mut keep: impl FnMut(&Series) -> bool) -> (usize, usize) {
        if self.slots.iter().all(|s| keep(&s.series)) {
            return (0, 0);
        }
        let before = self.slots.len();
        let mut exposed = 0;
        self.slots.retain(|s| {
            let k = keep(&s.series);
            if !k && !s.series.folded {
                exposed += 1;
            }
            k
        });
        let Family { index, slots, .. } = self;
        index.clear();
        for (i, slot) in slots.iter().enumerate() {
            index.insert_unique(slot.hash, i, |&j| slots[j].hash);
        }
        self.order_stale = true;
        self.generation = crate::model::SeriesGeneration::next();
        (before - self.slots.len(), exposed)
    }

    /// The slots in label order.
    fn ordered(&mut self) -> impl Iterator<Item = &Slot> {
        if self.order_stale || self.order.len() != self.slots.len() {
            let slots = &self.slots;
            self.order = (0..slots.len()).collect();
            self.order
                .sort_unstable_by(|a, b| slots[*a].labels.cmp(&slots[*b].labels));
            self.order_stale = false;
        }
        self.order.iter().map(|i| &self.slots[*i])
    }
}

#[derive(Debug, Default)]
struct State {
    families: BTreeMap<String, Family>,
    targets: HashMap<SeriesLabels, Instant>,
    series: usize,
    last_sweep: Option<Instant>,
}

/// The self-metrics of received metrics.
#[derive(Debug, Clone, Default)]
struct Stats {
    dropped: PromFamily<[(&'static str, &'static str); 1], Counter>,
    expired: Counter,
    series: Gauge,
}

/// Received OTLP metrics, held per series and served on `/metrics`. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct ReceivedMetrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: Mutex<ReceivedSettings>,
    state: Mutex<State>,
    stats: Stats,
    caps: Arc<LabelCaps>,
    /// Hashes the label sets of received points (seeded per process: label values come from
    /// clients).
    hasher: foldhash::fast::RandomState,
}

impl ReceivedMetrics {
    /// Empty; `caps` counts the folded label sets.
    pub fn new(settings: ReceivedSettings, caps: Arc<LabelCaps>) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings: Mutex::new(settings),
                state: Mutex::new(State::default()),
                stats: Stats::default(),
                caps,
                hasher: foldhash::fast::RandomState::default(),
            }),
        }
    }

    /// Applies new bounds in place (series already held stay until they expire).
    pub fn reconfigure(&self, settings: ReceivedSettings) {
        *self.inner.settings.lock() = settings;
    }

    /// Registers the received families (a collector read at scrape time) and the self-metrics.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sidelight_received_metric_points_dropped",
            "Received OTLP metric data points not served on /metrics, by reason",
            self.inner.stats.dropped.clone(),
        );
        registry.register(
            "sidelight_received_metric_series_expired",
            "Received OTLP metric series removed because they were not updated within the expiry",
            self.inner.stats.expired.clone(),
        );
        registry.register(
            "sidelight_received_metric_series",
            "Received OTLP metric series held (target_info included)",
            self.inner.stats.series.clone(),
        );
        registry.register_collector(Box::new(self.clone()));
    }

    /// Reads one request into a batch (records nothing).
    pub fn prepare(&self, request: &ExportMetricsServiceRequest) -> Prepared {
        let mut p = Prepared::default();
        let mut scratch = Scratch::default();
        let mut last_bounds = 0..0;
        let mut exponential = 0u64;
        let mut reserved = 0u64;
        for rm in &request.resource_metrics {
            let attrs: &[KeyValue] = rm.resource.as_ref().map_or(&[], |r| &r.attributes);
            let text = |key: &str| {
                attrs
                    .iter()
                    .find(|kv| kv.key == key)
                    .and_then(|kv| kv.value.as_ref())
                    .and_then(value_text)
            };
            let mut identity: Vec<(&str, String)> = Vec::with_capacity(3);
            for (key, label) in [
                ("service.name", SERVICE_NAME),
                ("service.namespace", SERVICE_NAMESPACE),
                ("service.instance.id", SERVICE_INSTANCE_ID),
            ] {
                if let Some(v) = text(key) {
                    identity.push((label, v));
                }
            }
            let mut target: BTreeMap<String, String> = attribute_labels(
                &attrs
                    .iter()
                    .filter(|kv| {
                        !matches!(
                            kv.key.as_str(),
                            "service.name" | "service.namespace" | "service.instance.id"
                        )
                    })
                    .cloned()
                    .collect::<Vec<_>>(),
                &RESERVED_LABELS,
            );
            target.extend(identity.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
            if !target.is_empty() {
                p.targets.push(target.into_iter().collect());
            }
            for sm in &rm.scope_metrics {
                let mut base: Vec<(&str, &str)> =
                    identity.iter().map(|(k, v)| (*k, v.as_str())).collect();
                if let Some(scope) = &sm.scope {
                    if !scope.name.is_empty() {
                        base.push((SCOPE_NAME, &scope.name));
                    }
                    if !scope.version.is_empty() {
                        base.push((SCOPE_VERSION, &scope.version));
                    }
                }
                base.sort_unstable_by_key(|(k, _)| *k);
                let base: Vec<Span> = base.iter().map(|(k, v)| p.push_span(k, v)).collect();
                for metric in &sm.metrics {
                    let Some(data) = &metric.data else { continue };
                    let kind = match data {
                        Data::Sum(s) if s.is_monotonic => FamilyKind::Counter,
                        Data::Sum(_) | Data::Gauge(_) => FamilyKind::Gauge,
                        Data::Histogram(_) => FamilyKind::Histogram,
                        Data::Summary(_) => FamilyKind::Summary,
                        Data::ExponentialHistogram(h) => {
                            exponential += h.data_points.len() as u64;
                            continue;
                        }
                    };
                    let mut name = metric_name(&metric.name, &metric.unit, kind);
                    if kind == FamilyKind::Counter {
                        // The encoder writes the `_total` suffix.
                        name.truncate(name.len().saturating_sub("_total".len()));
                    }
                    if reserved_family(&name) {
                        reserved += data_points(data) as u64;
                        continue;
                    }
                    let help = if metric.description.is_empty() {
                        format!("OTLP metric {}", metric.name)
                    } else {
                        metric.description.clone()
                    };
                    let hasher = &self.inner.hasher;
                    let mut points = Vec::new();
                    match data {
                        Data::Gauge(g) => {
                            for dp in &g.data_points {
                                if let Some(v) = number(dp) {
                                    let (labels, hash) =
                                        p.point_labels(&mut scratch, &dp.attributes, &base, hasher);
                                    points.push(PreparedPoint {
                                        labels,
                                        hash,
                                        time: dp.time_unix_nano,
                                        update: Update::Set(v),
                                        exemplar: None,
                                    });
                                }
                            }
                        }
                        Data::Sum(s) => {
                            let delta =
                                s.aggregation_temporality == AggregationTemporality::Delta as i32;
                            for dp in &s.data_points {
                                if let Some(v) = number(dp) {
                                    let (labels, hash) =
                                        p.point_labels(&mut scratch, &dp.attributes, &base, hasher);
                                    points.push(PreparedPoint {
                                        labels,
                                        hash,
                                        time: dp.time_unix_nano,
                                        update: if delta {
                                            Update::Add(v)
                                        } else {
                                            Update::Set(v)
                                        },
                                        exemplar: (kind == FamilyKind::Counter)
                                            .then(|| dp.exemplars.last().map(kept_exemplar))
                                            .flatten(),
                                    });
                                }
                            }
                        }
                        Data::Histogram(h) => {
                            let delta =
                                h.aggregation_temporality == AggregationTemporality::Delta as i32;
                            for dp in &h.data_points {
                                if no_value(dp.flags) {
                                    continue;
                                }
                                if !valid_histogram(&dp.explicit_bounds, &dp.bucket_counts) {
                                    p.dropped.push(("invalid_histogram", 1));
                                    continue;
                                }
                                // No buckets at all: only `_sum` and `_count`, one `+Inf` bucket.
                                let (bounds, counts) = if dp.bucket_counts.is_empty() {
                                    (0..0, p.push_counts(&[dp.count]))
                                } else {
                                    (
                                        p.push_bounds(&dp.explicit_bounds, &mut last_bounds),
                                        p.push_counts(&dp.bucket_counts),
                                    )
                                };
                                let (labels, hash) =
                                    p.point_labels(&mut scratch, &dp.attributes, &base, hasher);
                                points.push(PreparedPoint {
                                    labels,
                                    hash,
                                    time: dp.time_unix_nano,
                                    update: Update::Histogram {
                                        bounds,
                                        counts,
                                        sum: dp.sum.unwrap_or(0.0),
                                        count: dp.count,
                                        delta,
                                    },
                                    exemplar: None,
                                });
                            }
                        }
                        Data::Summary(s) => {
                            for dp in &s.data_points {
                                if no_value(dp.flags) {
                                    continue;
                                }
                                let (labels, hash) =
                                    p.point_labels(&mut scratch, &dp.attributes, &base, hasher);
                                points.push(PreparedPoint {
                                    labels,
                                    hash,
                                    time: dp.time_unix_nano,
                                    update: Update::Summary(Summ {
                                        quantiles: dp
                                            .quantile_values
                                            .iter()
                                            .map(|q| (q.quantile, q.value))
                                            .collect(),
                                        sum: dp.sum,
                                        count: dp.count,
                                    }),
                                    exemplar: None,
                                });
                            }
                        }
                        Data::ExponentialHistogram(_) => {}
                    }
                    if !points.is_empty() {
                        p.metrics.push(PreparedMetric {
                            name,
                            help,
                            kind,
                            points,
                        });
                    }
                }
            }
        }
        if exponential > 0 {
            p.dropped.push(("exponential_histogram", exponential));
        }
        if reserved > 0 {
            p.dropped.push(("reserved_name", reserved));
        }
        p
    }

    /// Applies a prepared batch (call once its request was accepted).
    pub fn record(&self, prepared: Prepared) {
        self.record_at(prepared, Instant::now());
    }

    fn record_at(&self, mut prepared: Prepared, now: Instant) {
        let settings = self.inner.settings.lock().clone();
        let stats = &self.inner.stats;
        for (reason, n) in &prepared.dropped {
            stats
                .dropped
                .get_or_create(&[("reason", reason)])
                .inc_by(*n);
        }
        let mut guard = self.inner.state.lock();
        let state = &mut *guard;
        self.sweep(state, &settings, now, false);
        let Prepared {
            metrics, targets, ..
        } = &mut prepared;
        let (metrics, targets) = (std::mem::take(metrics), std::mem::take(targets));
        for target in targets {
            match state.targets.get_mut(&target) {
                Some(seen) => *seen = now,
                None if state.series < settings.max_series => {
                    state.targets.insert(target, now);
                    state.series += 1;
                }
                None => {
                    stats
                        .dropped
                        .get_or_create(&[("reason", "series_limit")])
                        .inc();
                }
            }
        }
        for metric in metrics {
            let State {
                families, series, ..
            } = &mut *state;
            let family = match families.get_mut(&metric.name) {
                Some(family) => family,
                None if *series >= settings.max_series => {
                    stats
                        .dropped
                        .get_or_create(&[("reason", "series_limit")])
                        .inc_by(metric.points.len() as u64);
                    continue;
                }
                None => families
                    .entry(metric.name.clone())
                    .or_insert_with(|| Family::new(metric.kind, metric.help.clone())),
            };
            if family.kind != metric.kind {
                stats
                    .dropped
                    .get_or_create(&[("reason", "type_conflict")])
                    .inc_by(metric.points.len() as u64);
                continue;
            }
            for point in metric.points {
                if let Some(i) = family.find(&prepared, &point) {
                    let s = &mut family.slots[i].series;
                    apply(s, &prepared, point.update, point.time, now);
                    if point.exemplar.is_some() {
                        s.exemplar = point.exemplar;
                    }
                    continue;
                }
                if *series >= settings.max_series {
                    stats
                        .dropped
                        .get_or_create(&[("reason", "series_limit")])
                        .inc();
                    continue;
                }
                let folded = family.exposed >= settings.max_label_sets.max(1);
                if folded {
                    self.inner.caps.count_folded(&metric.name);
                } else {
                    family.exposed += 1;
                }
                let value = match point.update {
                    Update::Set(v) | Update::Add(v) => Value::Number(v),
                    Update::Histogram {
                        bounds,
                        counts,
                        sum,
                        count,
                        ..
                    } => Value::Histogram(prepared.hist(&bounds, &counts, sum, count)),
                    Update::Summary(s) => Value::Summary(s),
                };
                family.insert(
                    prepared.owned_labels(&point.labels),
                    point.hash,
                    Series {
                        value,
                        time: point.time,
                        seen: now,
                        folded,
                        exemplar: point.exemplar,
                    },
                );
                *series += 1;
            }
        }
        let held = state.series;
        stats.series.set(i64::try_from(held).unwrap_or(i64::MAX));
    }

    /// Removes what was not updated within the expiry (at most every tenth of it, unless
    /// `force`).
    fn sweep(&self, state: &mut State, settings: &ReceivedSettings, now: Instant, force: bool) {
        let every = (settings.expiry / 10).max(Duration::from_millis(100));
        if !force
            && state
                .last_sweep
                .is_some_and(|at| now.saturating_duration_since(at) < every)
        {
            return;
        }
        state.last_sweep = Some(now);
        let live = |seen: Instant| now.saturating_duration_since(seen) < settings.expiry;
        let mut removed = 0usize;
        state.families.retain(|_, family| {
            let (gone, exposed) = family.retain(|s| live(s.seen));
            removed += gone;
            family.exposed -= exposed;
            !family.slots.is_empty()
        });
        state.targets.retain(|_, seen| {
            let keep = live(*seen);
            if !keep {
                removed += 1;
            }
            keep
        });
        if removed > 0 {
            state.series -= removed;
            self.inner.stats.expired.inc_by(removed as u64);
            self.inner
                .stats
                .series
                .set(i64::try_from(state.series).unwrap_or(i64::MAX));
        }
    }

    /// Series held now (target_info included), after expiring stale ones.
    pub fn series(&self) -> usize {
        let settings = self.inner.settings.lock().clone();
        let mut state = self.inner.state.lock();
        self.sweep(&mut state, &settings, Instant::now(), true);
        state.series
    }
}

fn data_points(data: &Data) -> usize {
    match data {
        Data::Gauge(g) => g.data_points.len(),
        Data::Sum(s) => s.data_points.len(),
        Data::Histogram(h) => h.data_points.len(),
        Data::ExponentialHistogram(h) => h.data_points.len(),
        Data::Summary(s) => s.data_points.len(),
    }
}

fn no_value(flags: u32) -> bool {
    flags & DataPointFlags::NoRecordedValueMask as u32 != 0
}

fn number(dp: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint) -> Option<f64> {
    if no_value(dp.flags) {
        return None;
    }
    match dp.value? {
        number_data_point::Value::AsDouble(d) => Some(d),
        number_data_point::Value::AsInt(i) => Some(i as f64),
    }
}

/// Whether a histogram point's buckets can be served: `bounds` ascending and finite, one more
/// count than bounds (or no counts at all: only `_sum` and `_count`).
fn valid_histogram(bounds: &[f64], counts: &[u64]) -> bool {
    counts.is_empty()
        || (counts.len() == bounds.len() + 1
            && bounds.iter().all(|b| b.is_finite())
            && bounds.windows(2).all(|w| w[0] < w[1]))
}

fn kept_exemplar(e: &OtlpExemplar) -> KeptExemplar {
    let mut labels: BTreeMap<String, String> = attribute_labels(&e.filtered_attributes, &[]);
    if e.trace_id.len() == 16 && e.trace_id.iter().any(|b| *b != 0) {
        labels.insert("trace_id".into(), hex(&e.trace_id));
    }
    if e.span_id.len() == 8 && e.span_id.iter().any(|b| *b != 0) {
        labels.insert("span_id".into(), hex(&e.span_id));
    }
    let value = match e.value {
        Some(exemplar::Value::AsDouble(d)) => d,
        Some(exemplar::Value::AsInt(i)) => i as f64,
        None => 0.0,
    };
    KeptExemplar {
        labels: labels.into_iter().collect(),
        value,
        time: (e.time_unix_nano > 0).then(|| UNIX_EPOCH + Duration::from_nanos(e.time_unix_nano)),
    }
}

/// Applies one point to a held series (a histogram's buckets are read from `prepared`).
fn apply(s: &mut Series, prepared: &Prepared, update: Update, time: u64, now: Instant) {
    s.seen = now;
    match (update, &mut s.value) {
        (Update::Add(v), Value::Number(held)) => *held += v,
        (
            Update::Histogram {
                bounds,
                counts,
                sum,
                count,
                delta: true,
            },
            Value::Histogram(held),
        ) if held.bounds == prepared.bounds[bounds.clone()] => {
            for (h, c) in held.counts.iter_mut().zip(&prepared.counts[counts]) {
                *h = h.saturating_add(*c);
            }
            held.sum += sum;
            held.count = held.count.saturating_add(count);
        }
        // A cumulative point older than the one held came late: keep the newer.
        (_, _) if time != 0 && time < s.time => return,
        (Update::Set(v), _) => s.value = Value::Number(v),
        (Update::Add(v), _) => s.value = Value::Number(v),
        (
            Update::Histogram {
                bounds,
                counts,
                sum,
                count,
                ..
            },
            held,
        ) => match held {
            // The held buckets are overwritten in place (no allocation).
            Value::Histogram(h) => {
                h.bounds.clear();
                h.bounds.extend_from_slice(&prepared.bounds[bounds]);
                h.counts.clear();
                h.counts.extend_from_slice(&prepared.counts[counts]);
                h.sum = sum;
                h.count = count;
            }
            held => *held = Value::Histogram(prepared.hist(&bounds, &counts, sum, count)),
        },
        (Update::Summary(v), _) => s.value = Value::Summary(v),
    }
    s.time = s.time.max(time);
}

/// Folds `other` into `into` (the overflow series' value: sums).
fn fold(into: &mut Option<Value>, other: &Value) {
    match (into.as_mut(), other) {
        (None, v) => *into = Some(v.clone()),
        (Some(Value::Number(a)), Value::Number(b)) => *a += b,
        (Some(Value::Histogram(a)), Value::Histogram(b)) if a.bounds == b.bounds => {
            for (x, y) in a.counts.iter_mut().zip(&b.counts) {
                *x = x.saturating_add(*y);
            }
            a.sum += b.sum;
            a.count = a.count.saturating_add(b.count);
        }
        (Some(Value::Summary(a)), Value::Summary(b)) => {
            // Quantiles cannot be summed: the overflow keeps sum and count only.
            a.quantiles.clear();
            a.sum += b.sum;
            a.count = a.count.saturating_add(b.count);
        }
        // Histograms with other bounds are not added to the overflow series.
        _ => {}
    }
}

/// Escapes a help text as the exposition formats need (`\` and newlines).
fn help_text(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

type ExemplarLabels = Vec<(String, String)>;

/// The total a counter with an exemplar is served with: the encoder's counter adds the value
/// before the exemplar's increment to zero, then the exemplar's value (so this may differ from
/// `total` in the last bit, the same in the text and in the structured snapshot).
fn total_with_exemplar(total: f64, exemplar: f64) -> f64 {
    (0.0 + (total - exemplar)) + exemplar
}

fn encode_value(
    kind: FamilyKind,
    value: &Value,
    exemplar: Option<&KeptExemplar>,
    mut encoder: MetricEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    match (kind, value) {
        (FamilyKind::Counter, Value::Number(v)) => match exemplar {
            Some(e) if e.value <= *v => {
                // The exemplar is the last increment: everything before it goes first, as
                // an increment without an exemplar clears it.
                let c = CounterWithExemplar::<ExemplarLabels, f64>::default();
                c.inc_by(*v - e.value, None, None);
                c.inc_by(e.value, Some(e.labels.clone()), e.time);
                c.encode(encoder)
            }
            _ => ConstCounter::new(*v).encode(encoder),
        },
        (_, Value::Number(v)) => ConstGauge::new(*v).encode(encoder),
        (_, Value::Histogram(h)) => {
            let mut buckets: Vec<(f64, u64)> = h
                .bounds
                .iter()
                .copied()
                .zip(h.counts.iter().copied())
                .collect();
            buckets.push((f64::INFINITY, h.counts.last().copied().unwrap_or(0)));
            encoder.encode_histogram::<ExemplarLabels>(h.sum, h.count, &buckets, None)
        }
        // Summaries are written by `encode_summary`.
        (_, Value::Summary(_)) => Ok(()),
    }
}

/// What a family serves at one scrape: its exposed series in label order, then the overflow
/// series its folded ones add up to (labels all `other`), if any.
struct Served<'a> {
    series: Vec<&'a Slot>,
    overflow: Option<(SeriesLabels, Value)>,
}

fn served(family: &mut Family) -> Served<'_> {
    let mut series = Vec::with_capacity(family.exposed);
    let mut overflow: Option<Value> = None;
    let mut overflow_labels: Option<SeriesLabels> = None;
    for slot in family.ordered() {
        if !slot.series.folded {
            series.push(slot);
            continue;
        }
        fold(&mut overflow, &slot.series.value);
        if overflow_labels.is_none() {
            overflow_labels = Some(
                slot.labels
                    .iter()
                    .map(|(k, _)| (k.clone(), OVERFLOW_VALUE.to_owned()))
                    .collect(),
            );
        }
    }
    Served {
        series,
        overflow: overflow_labels.zip(overflow),
    }
}

fn metric_type(kind: FamilyKind) -> MetricType {
    match kind {
        FamilyKind::Counter => MetricType::Counter,
        FamilyKind::Gauge | FamilyKind::Summary => MetricType::Gauge,
        FamilyKind::Histogram => MetricType::Histogram,
    }
}

const TARGET_INFO_HELP: &str = "Resource attributes of the services that sent OTLP metrics";

impl Collector for ReceivedMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        if let Some(written) =
            crate::exposition::write_direct(&mut encoder, |out| self.write_openmetrics(out))
        {
            return written;
        }
        if let Some(handed) = crate::model::walk_direct(&mut encoder, || Box::new(self.clone())) {
            return handed;
        }
        let settings = self.inner.settings.lock().clone();
        let mut state = self.inner.state.lock();
        self.sweep(&mut state, &settings, Instant::now(), false);
        if !state.targets.is_empty() {
            let mut metric = encoder.encode_descriptor(
                TARGET_INFO,
                TARGET_INFO_HELP,
                None,
                MetricType::Gauge,
            )?;
            let mut targets: Vec<&SeriesLabels> = state.targets.keys().collect();
            targets.sort();
            for labels in targets {
                ConstGauge::new(1i64).encode(metric.encode_family(labels)?)?;
            }
        }
        for (name, family) in &mut state.families {
            let help = help_text(&family.help);
            let kind = family.kind;
            let served = served(family);
            if kind == FamilyKind::Summary {
                encode_summary(&mut encoder, name, &help, &served)?;
                continue;
            }
            let mut metric = encoder.encode_descriptor(name, &help, None, metric_type(kind))?;
            for slot in &served.series {
                encode_value(
                    kind,
                    &slot.series.value,
                    slot.series.exemplar.as_ref(),
                    metric.encode_family(&*slot.labels)?,
                )?;
            }
            if let Some((labels, value)) = &served.overflow {
                encode_value(kind, value, None, metric.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}

/// The summaries of a family with their label sets, the overflow last.
fn summaries<'a>(served: &'a Served<'_>) -> Vec<(&'a [(String, String)], &'a Summ)> {
    let mut all: Vec<(&[(String, String)], &Summ)> = served
        .series
        .iter()
        .filter_map(|slot| match &slot.series.value {
            Value::Summary(v) => Some((slot.labels.as_slice(), v)),
            _ => None,
        })
        .collect();
    if let Some((labels, Value::Summary(v))) = &served.overflow {
        all.push((labels.as_slice(), v));
    }
    all
}

/// A summary as three gauge families: `name{quantile}`, `name_sum`, `name_count`.
fn encode_summary(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    served: &Served<'_>,
) -> Result<(), std::fmt::Error> {
    let all = summaries(served);
    {
        let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, v) in &all {
            for (q, value) in &v.quantiles {
                let mut l = labels.to_vec();
                l.push(("quantile".to_owned(), q.to_string()));
                ConstGauge::new(*value).encode(metric.encode_family(&l)?)?;
            }
        }
    }
    let sum_name = format!("{name}_sum");
    {
        let mut metric = encoder.encode_descriptor(&sum_name, help, None, MetricType::Gauge)?;
        for (labels, v) in &all {
            ConstGauge::new(v.sum).encode(metric.encode_family(labels)?)?;
        }
    }
    let count_name = format!("{name}_count");
    let mut metric = encoder.encode_descriptor(&count_name, help, None, MetricType::Gauge)?;
    for (labels, v) in &all {
        ConstGauge::new(v.count as f64).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

/// Writes the received families as OpenMetrics text straight into a `/metrics` body: the bytes
/// `prometheus-client`'s text encoder writes for [`Collector::encode`], from each series'
/// label text escaped when it was created.
struct Writer<'a> {
    out: &'a mut String,
    dtoa: dtoa::Buffer,
    itoa: itoa::Buffer,
    /// The `le` values of the last bounds written, and those bounds.
    les: Vec<String>,
    les_for: Vec<f64>,
}

impl Writer<'_> {
    fn descriptor(&mut self, name: &str, help: &str, kind: MetricType) {
        push_descriptor(self.out, name, help, kind);
    }

    /// `name{labels}` (braces even when empty, as the encoder writes a family's series).
    fn start(&mut self, name: &str, suffix: &str, labels: &str) {
        let out = &mut *self.out;
        out.push_str(name);
        out.push_str(suffix);
        out.push('{');
        out.push_str(labels);
        out.push('}');
    }

    fn f64(&mut self, v: f64) {
        self.out.push(' ');
        self.out.push_str(self.dtoa.format(v));
    }

    fn u64(&mut self, v: u64) {
        self.out.push(' ');
        self.out.push_str(self.itoa.format(v));
    }

    fn value(
        &mut self,
        name: &str,
        kind: FamilyKind,
        labels: &str,
        value: &Value,
        exemplar: Option<&KeptExemplar>,
    ) {
        match (kind, value) {
            (FamilyKind::Counter, Value::Number(v)) => {
                self.start(name, "_total", labels);
                match exemplar {
                    Some(e) if e.value <= *v => {
                        self.f64(total_with_exemplar(*v, e.value));
                        self.out.push_str(" # {");
                        push_labels(self.out, &e.labels);
                        self.out.push('}');
                        self.f64(e.value);
                        if let Some(t) = e.time {
                            let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default();
                            self.f64(secs.as_secs_f64());
                        }
                    }
                    _ => self.f64(*v),
                }
                self.out.push('\n');
            }
            (_, Value::Number(v)) => {
                self.start(name, "", labels);
                self.f64(*v);
                self.out.push('\n');
            }
            (_, Value::Histogram(h)) => {
                self.start(name, "_sum", labels);
                self.f64(h.sum);
                self.out.push('\n');
                self.start(name, "_count", labels);
                self.u64(h.count);
                self.out.push('\n');
                if self.les_for != h.bounds {
                    self.les = h
                        .bounds
                        .iter()
                        .map(|b| self.dtoa.format(*b).to_owned())
                        .collect();
                    self.les_for.clone_from(&h.bounds);
                }
                // As `encode_value` hands them to the encoder: a bucket per bound, then `+Inf`
                // with the last count.
                let last = h.counts.last().copied().unwrap_or(0);
                let paired = h.counts.len().min(h.bounds.len());
                let mut cumulative = 0u64;
                for (i, count) in h
                    .counts
                    .iter()
                    .take(h.bounds.len())
                    .chain(std::iter::once(&last))
                    .enumerate()
                {
                    cumulative = cumulative.wrapping_add(*count);
                    let out = &mut *self.out;
                    out.push_str(name);
                    out.push_str("_bucket{le=\"");
                    out.push_str(if i < paired { &self.les[i] } else { "+Inf" });
                    out.push('"');
                    if !labels.is_empty() {
                        out.push(',');
                        out.push_str(labels);
                    }
                    out.push('}');
                    self.u64(cumulative);
                    self.out.push('\n');
                }
            }
            (_, Value::Summary(_)) => {}
        }
    }
}

/// The structured model's walk over the held series: what [`Collector::encode`] writes, read in
/// place (label sets borrowed from their slots).
impl crate::model::Source for ReceivedMetrics {
    fn walk(&self, visit: &mut dyn crate::model::Visit) {
        use crate::model::{FamilyRef, Kind, LabelsRef};
        let settings = self.inner.settings.lock().clone();
        let mut state = self.inner.state.lock();
        self.sweep(&mut state, &settings, Instant::now(), false);
        if !state.targets.is_empty() {
            visit.family(&FamilyRef {
                name: TARGET_INFO,
                help: TARGET_INFO_HELP,
                unit: "",
                kind: Kind::Gauge,
                // Few series, sorted anew at each walk.
                series_generation: None,
            });
            if visit.wants_series() {
                let mut targets: Vec<&SeriesLabels> = state.targets.keys().collect();
                targets.sort();
                for labels in targets {
                    visit.series(LabelsRef::Owned(labels), crate::model::ValueRef::Gauge(1.0));
                }
            }
        }
        let mut hist = crate::model::Histogram {
            sum: 0.0,
            count: 0,
            buckets: Vec::new(),
        };
        for (name, family) in &mut state.families {
            let help = help_text(&family.help);
            let kind = family.kind;
            if kind == FamilyKind::Summary {
                walk_summary(visit, name, &help, &served(family));
                continue;
            }
            visit.family(&FamilyRef {
                name,
                help: &help,
                unit: "",
                kind: match kind {
                    FamilyKind::Counter => Kind::Counter,
                    FamilyKind::Histogram => Kind::Histogram,
                    FamilyKind::Gauge | FamilyKind::Summary => Kind::Gauge,
                },
                series_generation: Some(family.generation),
            });
            if !visit.wants_series() {
                continue;
            }
            let served = served(family);
            for slot in &served.series {
                walk_value(
                    visit,
                    kind,
                    &slot.labels,
                    &slot.series.value,
                    slot.series.exemplar.as_ref(),
                    &mut hist,
                );
            }
            if let Some((labels, value)) = &served.overflow {
                walk_value(visit, kind, labels, value, None, &mut hist);
            }
        }
    }
}

/// One series' value as [`encode_value`] encodes it, lent to `visit` (`hist` is reused for
/// histograms' cumulative buckets).
fn walk_value(
    visit: &mut dyn crate::model::Visit,
    kind: FamilyKind,
    labels: &[(String, String)],
    value: &Value,
    exemplar: Option<&KeptExemplar>,
    hist: &mut crate::model::Histogram,
) {
    use crate::model::{Bucket, ExemplarRef, LabelsRef, ValueRef};
    let labels = LabelsRef::Owned(labels);
    match (kind, value) {
        (FamilyKind::Counter, Value::Number(v)) => {
            let value = match exemplar {
                Some(e) if e.value <= *v => ValueRef::Counter {
                    total: total_with_exemplar(*v, e.value),
                    exemplar: Some(ExemplarRef {
                        labels: &e.labels,
                        value: e.value,
                        timestamp: e.time,
                    }),
                },
                _ => ValueRef::Counter {
                    total: *v,
                    exemplar: None,
                },
            };
            visit.series(labels, value);
        }
        (_, Value::Number(v)) => visit.series(labels, ValueRef::Gauge(*v)),
        (_, Value::Histogram(h)) => {
            // As `encode_value` hands them to the encoder, which accumulates them: a bucket per
            // bound, then `+Inf` with the last count.
            let last = h.counts.last().copied().unwrap_or(0);
            hist.sum = h.sum;
            hist.count = h.count;
            hist.buckets.clear();
            let mut cumulative = 0u64;
            let finite = h.bounds.iter().zip(&h.counts);
            for (bound, count) in finite.chain(std::iter::once((&f64::INFINITY, &last))) {
                cumulative = cumulative.wrapping_add(*count);
                hist.buckets.push(Bucket {
                    upper_bound: *bound,
                    cumulative_count: cumulative,
                    exemplar: None,
                });
            }
            visit.series(labels, ValueRef::Histogram(hist));
        }
        (_, Value::Summary(_)) => {}
    }
}

/// A summary as [`encode_summary`] encodes it: three gauge families.
fn walk_summary(visit: &mut dyn crate::model::Visit, name: &str, help: &str, served: &Served<'_>) {
    use crate::model::{FamilyRef, Kind, LabelsRef, ValueRef};
    let all = summaries(served);
    let family = |name| FamilyRef {
        name,
        help,
        unit: "",
        kind: Kind::Gauge,
        // A summary's quantiles may differ from one point to the next.
        series_generation: None,
    };
    visit.family(&family(name));
    let want = visit.wants_series();
    let mut with_quantile: Vec<(String, String)> = Vec::new();
    for (labels, v) in all.iter().filter(|_| want) {
        for (q, value) in &v.quantiles {
            with_quantile.clear();
            with_quantile.extend_from_slice(labels);
            with_quantile.push(("quantile".to_owned(), q.to_string()));
            visit.series(LabelsRef::Owned(&with_quantile), ValueRef::Gauge(*value));
        }
    }
    let sum_name = format!("{name}_sum");
    visit.family(&family(&sum_name));
    let want = visit.wants_series();
    for (labels, v) in all.iter().filter(|_| want) {
        visit.series(LabelsRef::Owned(labels), ValueRef::Gauge(v.sum));
    }
    let count_name = format!("{name}_count");
    visit.family(&family(&count_name));
    let want = visit.wants_series();
    for (labels, v) in all.iter().filter(|_| want) {
        visit.series(LabelsRef::Owned(labels), ValueRef::Gauge(v.count as f64));
    }
}

impl ReceivedMetrics {
    fn write_openmetrics(&self, out: &mut String) -> std::fmt::Result {
        let settings = self.inner.settings.lock().clone();
        let mut state = self.inner.state.lock();
        self.sweep(&mut state, &settings, Instant::now(), false);
        let mut w = Writer {
            out,
            dtoa: dtoa::Buffer::new(),
            itoa: itoa::Buffer::new(),
            les: Vec::new(),
            les_for: Vec::new(),
        };
        let mut text = String::new();
        if !state.targets.is_empty() {
            w.descriptor(TARGET_INFO, TARGET_INFO_HELP, MetricType::Gauge);
            let mut targets: Vec<&SeriesLabels> = state.targets.keys().collect();
            targets.sort();
            for labels in targets {
                text.clear();
                push_labels(&mut text, labels);
                w.start(TARGET_INFO, "", &text);
                w.out.push_str(" 1\n");
            }
        }
        for (name, family) in &mut state.families {
            let help = help_text(&family.help);
            let kind = family.kind;
            let served = served(family);
            if kind == FamilyKind::Summary {
                write_summary(&mut w, name, &help, &served);
                continue;
            }
            w.descriptor(name, &help, metric_type(kind));
            for slot in &served.series {
                w.value(
                    name,
                    kind,
                    &slot.text,
                    &slot.series.value,
                    slot.series.exemplar.as_ref(),
                );
            }
            if let Some((labels, value)) = &served.overflow {
                text.clear();
                push_labels(&mut text, labels);
                w.value(name, kind, &text, value, None);
            }
        }
        Ok(())
    }
}

/// [`encode_summary`] written directly.
fn write_summary(w: &mut Writer<'_>, name: &str, help: &str, served: &Served<'_>) {
    let all = summaries(served);
    let texts: Vec<String> = all
        .iter()
        .map(|(labels, _)| {
            let mut t = String::new();
            push_labels(&mut t, labels);
            t
        })
        .collect();
    w.descriptor(name, help, MetricType::Gauge);
    for (text, (_, v)) in texts.iter().zip(&all) {
        for (q, value) in &v.quantiles {
            let mut l = text.clone();
            if !l.is_empty() {
                l.push(',');
            }
            push_labels(&mut l, &[("quantile".to_owned(), q.to_string())]);
            w.start(name, "", &l);
            w.f64(*value);
            w.out.push('\n');
        }
    }
    let sum_name = format!("{name}_sum");
    w.descriptor(&sum_name, help, MetricType::Gauge);
    for (text, (_, v)) in texts.iter().zip(&all) {
        w.start(&sum_name, "", text);
        w.f64(v.sum);
        w.out.push('\n');
    }
    let count_name = format!("{name}_count");
    w.descriptor(&count_name, help, MetricType::Gauge);
    for (text, (_, v)) in texts.iter().zip(&all) {
        w.start(&count_name, "", text);
        w.f64(v.count as f64);
        w.out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    use opentelemetry_proto::tonic::metrics::v1::{
        Gauge as OtlpGauge, Histogram as OtlpHistogram, HistogramDataPoint, Metric,
        NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
        summary_data_point::ValueAtQuantile,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;

    use super::*;

    #[test]
    fn naming_rules() {
        use FamilyKind::*;
        let table: &[(&str, &str, FamilyKind, &str)] = &[
            ("bars.orders", "{order}", Counter, "bars_orders_total"),
            (
                "bars.order.duration",
                "s",
                Histogram,
                "bars_order_duration_seconds",
            ),
            (
                "http.server.request.duration",
                "s",
                Histogram,
                "http_server_request_duration_seconds",
            ),
            ("bars.queue.depth", "{item}", Gauge, "bars_queue_depth"),
            (
                "system.memory.usage",
                "By",
                Gauge,
                "system_memory_usage_bytes",
            ),
            ("requests_total", "", Counter, "requests_total"),
            ("requests.total.count", "", Counter, "requests_count_total"),
            ("cpu.utilization", "1", Gauge, "cpu_utilization_ratio"),
            ("errors", "1", Counter, "errors_total"),
            ("room.temperature", "Cel", Gauge, "room_temperature_celsius"),
            ("net.io", "By/s", Gauge, "net_io_bytes_per_second"),
            ("jobs.rate", "{job}/min", Gauge, "jobs_rate_per_min"),
            ("queue.items", "{item}/s", Gauge, "queue_items_per_second"),
            ("latency_seconds", "s", Histogram, "latency_seconds"),
            ("heap", "MiBy", Gauge, "heap_mebibytes"),
            ("payload", "kg", Gauge, "payload_kg"),
            ("3xx.responses", "", Counter, "_3xx_responses_total"),
            ("a..b__c-d", "ms", Summary, "a_b_c_d_milliseconds"),
            ("disk.io", "By", Counter, "disk_io_bytes_total"),
        ];
        for (name, unit, kind, want) in table {
            assert_eq!(metric_name(name, unit, *kind), *want, "{name} [{unit}]");
        }
        assert_eq!(label_name("http.route"), "http_route");
        assert_eq!(label_name("0day"), "key_0day");
        assert_eq!(label_name("_private"), "key_private");
        assert_eq!(label_name("__meta"), "key__meta");
        assert_eq!(label_name("ünï"), "key_n_");
    }

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    fn request(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", "bars"),
                        kv("service.instance.id", "i-1"),
                        kv("deployment.environment", "prod"),
                    ],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: "shop".into(),
                        ..Default::default()
                    }),
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn point(v: f64, attrs: Vec<KeyValue>, time: u64) -> NumberDataPoint {
        NumberDataPoint {
            attributes: attrs,
            time_unix_nano: time,
            value: Some(number_data_point::Value::AsDouble(v)),
            ..Default::default()
        }
    }

    fn sum(
        name: &str,
        temporality: AggregationTemporality,
        points: Vec<NumberDataPoint>,
    ) -> Metric {
        Metric {
            name: name.into(),
            unit: "{order}".into(),
            data: Some(Data::Sum(Sum {
                data_points: points,
                aggregation_temporality: temporality as i32,
                is_monotonic: true,
            })),
            ..Default::default()
        }
    }

    fn hist(temporality: AggregationTemporality, counts: Vec<u64>, sum: f64, time: u64) -> Metric {
        Metric {
            name: "bars.order.duration".into(),
            unit: "s".into(),
            description: "Order time\nper order".into(),
            data: Some(Data::Histogram(OtlpHistogram {
                data_points: vec![HistogramDataPoint {
                    explicit_bounds: vec![0.1, 1.0],
                    count: counts.iter().sum(),
                    bucket_counts: counts,
                    sum: Some(sum),
                    time_unix_nano: time,
                    ..Default::default()
                }],
                aggregation_temporality: temporality as i32,
            })),
            ..Default::default()
        }
    }

    /// What `/metrics` serves (OpenMetrics), received families written directly.
    fn text(rm: &ReceivedMetrics) -> String {
        let mut registry = Registry::default();
        rm.register(&mut registry);
        crate::exposition::encode(&registry, crate::exposition::Format::OpenMetrics)
            .expect("encode")
    }

    fn received(max_label_sets: usize, max_series: usize) -> (ReceivedMetrics, Arc<LabelCaps>) {
        let caps = Arc::new(LabelCaps::new(max_label_sets));
        let rm = ReceivedMetrics::new(
            ReceivedSettings {
                expiry: Duration::from_secs(60),
                max_series,
                max_label_sets,
            },
            caps.clone(),
        );
        (rm, caps)
    }

    #[test]
    fn deltas_accumulate_and_cumulatives_replace() {
        let (rm, _) = received(100, 100);
        let t0 = Instant::now();
        for i in 1..=3u64 {
            let r = request(vec![
                sum(
                    "bars.orders",
                    AggregationTemporality::Delta,
                    vec![point(10.0, vec![kv("shop", "a")], i)],
                ),
                hist(AggregationTemporality::Delta, vec![1, 2, 0], 1.5, i),
            ]);
            rm.record_at(rm.prepare(&r), t0);
        }
        let out = text(&rm);
        let labels = "otel_scope_name=\"shop\",service_instance_id=\"i-1\",service_name=\"bars\"";
        assert!(
            out.contains(&format!("bars_orders_total{{{labels},shop=\"a\"}} 30.0")),
            "{out}"
        );
        assert!(
            out.contains(&format!("bars_order_duration_seconds_count{{{labels}}} 9")),
            "{out}"
        );
        assert!(
            out.contains(&format!("bars_order_duration_seconds_sum{{{labels}}} 4.5")),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "bars_order_duration_seconds_bucket{{le=\"1.0\",{labels}}} 9"
            )),
            "{out}"
        );
        assert!(
            out.contains("# HELP bars_order_duration_seconds Order time\\nper order"),
            "{out}"
        );
        assert!(
            out.contains("target_info{deployment_environment=\"prod\",service_instance_id=\"i-1\",service_name=\"bars\"} 1"),
            "{out}"
        );
        // Cumulative: the newest point is the value; a late older one is ignored.
        for (v, t) in [(5.0, 10), (7.0, 20), (6.0, 15)] {
            let r = request(vec![sum(
                "bars.orders",
                AggregationTemporality::Cumulative,
                vec![point(v, vec![kv("shop", "b")], t)],
            )]);
            rm.record_at(rm.prepare(&r), t0);
        }
        assert!(
            text(&rm).contains(&format!("bars_orders_total{{{labels},shop=\"b\"}} 7.0")),
            "{}",
            text(&rm)
        );
    }

    /// Every kind of received family, read through the structured model, is what the text
    /// encoder writes: counters with their exemplar, histograms, gauges, summaries (as gauge
    /// families), `target_info` and the self-metrics.
    #[test]
    fn the_structured_snapshot_matches_the_text() {
        let (rm, _) = received(100, 100);
        let mut counter_point = point(7.0, vec![kv("shop", "a\"b")], 2);
        counter_point.exemplars = vec![OtlpExemplar {
            value: Some(exemplar::Value::AsDouble(1.0)),
            time_unix_nano: 1_700_000_000_000_000_000,
            trace_id: vec![0xab; 16],
            span_id: vec![0xcd; 8],
            ..Default::default()
        }];
        let r = request(vec![
            sum(
                "bars.orders",
                AggregationTemporality::Cumulative,
                vec![counter_point],
            ),
            hist(AggregationTemporality::Cumulative, vec![1, 2, 3], 4.5, 2),
            Metric {
                name: "bars.queue.depth".into(),
                data: Some(Data::Gauge(OtlpGauge {
                    data_points: vec![point(-2.5, vec![], 1)],
                })),
                ..Default::default()
            },
            Metric {
                name: "rpc.latency".into(),
                unit: "ms".into(),
                data: Some(Data::Summary(Summary {
                    data_points: vec![SummaryDataPoint {
                        count: 3,
                        sum: 12.0,
                        quantile_values: vec![ValueAtQuantile {
                            quantile: 0.5,
                            value: 4.0,
                        }],
                        ..Default::default()
                    }],
                })),
                ..Default::default()
            },
        ]);
        rm.record_at(rm.prepare(&r), Instant::now());
        let mut registry = Registry::default();
        rm.register(&mut registry);
        let snap = crate::model::oracle::assert_matches_text(&registry);
        crate::model::oracle::assert_walk_is_encoded(&registry);
        let orders = snap.family("bars_orders").expect("counter");
        let crate::model::Value::Counter {
            total,
            exemplar: Some(e),
        } = &orders.series[0].value
        else {
            panic!("a counter with its exemplar: {orders:?}");
        };
        assert_eq!((*total, e.value), (7.0, 1.0));
        assert!(
            e.labels.contains(&("trace_id".to_owned(), "ab".repeat(16))),
            "{e:?}"
        );
        let h = snap
            .family("bars_order_duration_seconds")
            .expect("histogram");
        assert_eq!(h.kind, crate::model::Kind::Histogram);
        let crate::model::Value::Histogram(v) = &h.series[0].value else {
            panic!("{h:?}");
        };
        let cumulative: Vec<u64> = v.buckets.iter().map(|b| b.cumulative_count).collect();
        assert_eq!(cumulative, [1, 3, 6]);
        assert!(snap.family("target_info").is_some());
        assert!(snap.family("rpc_latency_milliseconds_sum").is_some());
    }

    #[test]
    fn gauges_summaries_and_exponential_histograms() {
        let (rm, _) = received(100, 100);
        let r = request(vec![
            Metric {
                name: "bars.queue.depth".into(),
                unit: "{item}".into(),
                data: Some(Data::Gauge(OtlpGauge {
                    data_points: vec![point(4.0, vec![kv("service.name", "x")], 1)],
                })),
                ..Default::default()
            },
            Metric {
                name: "rpc.latency".into(),
                unit: "ms".into(),
                data: Some(Data::Summary(Summary {
                    data_points: vec![SummaryDataPoint {
                        count: 3,
                        sum: 12.0,
                        quantile_values: vec![ValueAtQuantile {
                            quantile: 0.5,
                            value: 4.0,
                        }],
                        ..Default::default()
                    }],
                })),
                ..Default::default()
            },
            Metric {
                name: "exp".into(),
                data: Some(Data::ExponentialHistogram(Default::default())),
                ..Default::default()
            },
            Metric {
                name: "sidelight.build.info".into(),
                data: Some(Data::Gauge(OtlpGauge {
                    data_points: vec![point(1.0, vec![], 1)],
                })),
                ..Default::default()
            },
        ]);
        let p = rm.prepare(&r);
        assert_eq!(p.points(), 2);
        rm.record_at(p, Instant::now());
        let out = text(&rm);
        assert!(out.contains("# TYPE bars_queue_depth gauge"), "{out}");
        // A point attribute that would take a resource label is renamed.
        assert!(out.contains("exported_service_name=\"x\""), "{out}");
        assert!(out.contains("quantile=\"0.5\"} 4.0"), "{out}");
        assert!(out.contains("rpc_latency_milliseconds_sum{"), "{out}");
        assert!(out.contains("rpc_latency_milliseconds_count{"), "{out}");
        assert!(!out.contains("sidelight_build_info"), "{out}");
        assert!(
            out.contains(
                "sidelight_received_metric_points_dropped_total{reason=\"reserved_name\"} 1"
            ),
            "{out}"
        );
    }

    #[test]
    fn label_sets_beyond_the_cap_fold_and_series_are_bounded_and_expire() {
        let (rm, caps) = received(2, 6);
        let t0 = Instant::now();
        let points = (0..4)
            .map(|i| point(1.0, vec![kv("shop", &format!("s{i}"))], 1))
            .collect();
        let r = request(vec![sum(
            "bars.orders",
            AggregationTemporality::Cumulative,
            points,
        )]);
        rm.record_at(rm.prepare(&r), t0);
        let out = text(&rm);
        assert!(out.contains("shop=\"other\"} 2.0"), "{out}");
        assert!(out.contains("otel_scope_name=\"other\""), "{out}");
        let mut registry = Registry::default();
        caps.register(&mut registry);
        let mut caps_text = String::new();
        prometheus_client::encoding::text::encode(&mut caps_text, &registry).expect("encode");
        assert!(
            caps_text.contains("sidelight_label_sets_folded_total{family=\"bars_orders\"} 2"),
            "{caps_text}"
        );
        // 4 series + target_info held; two more fit in 6, the rest is dropped.
        let points = (0..3)
            .map(|i| point(1.0, vec![kv("shop", &format!("t{i}"))], 1))
            .collect();
        let r = request(vec![sum(
            "bars.orders",
            AggregationTemporality::Cumulative,
            points,
        )]);
        rm.record_at(rm.prepare(&r), t0);
        assert!(
            text(&rm).contains(
                "sidelight_received_metric_points_dropped_total{reason=\"series_limit\"} 2"
            ),
            "{}",
            text(&rm)
        );
        // Nothing updated for the expiry: everything goes, and room is free again.
        let later = t0 + Duration::from_secs(61);
        let r = request(vec![sum(
            "bars.orders",
            AggregationTemporality::Cumulative,
            vec![point(3.0, vec![kv("shop", "new")], 2)],
        )]);
        rm.record_at(rm.prepare(&r), later);
        let out = text(&rm);
        assert!(out.contains("shop=\"new\"} 3.0"), "{out}");
        assert!(!out.contains("shop=\"s0\""), "{out}");
        assert!(out.contains("sidelight_received_metric_series 2"), "{out}");
        assert!(
            out.contains("sidelight_received_metric_series_expired_total 6"),
            "{out}"
        );
    }

    /// Every shape of received family, written straight into the `/metrics` body, is byte for
    /// byte what `prometheus-client`'s text encoder writes for the same collector (and so what
    /// the structured snapshot reads): label escaping, empty label sets, exemplars, histograms
    /// with and without buckets, non-finite and integral values, summaries, the folded overflow
    /// series and `target_info`, between metrics of the registry's own.
    #[test]
    fn direct_exposition_is_the_encoders_byte_for_byte() {
        let (rm, caps) = received(3, 1000);
        let mut with_exemplar = point(7.5, vec![kv("shop", "a\"b\\c\nd e}")], 2);
        with_exemplar.exemplars = vec![OtlpExemplar {
            value: Some(exemplar::Value::AsDouble(0.1)),
            time_unix_nano: 1_700_000_000_123_456_789,
            trace_id: vec![0xab; 16],
            span_id: vec![0xcd; 8],
            filtered_attributes: vec![kv("user", "q\"x")],
        }];
        // An exemplar above the total is not shown.
        let mut exemplar_above = point(0.3, vec![kv("shop", "b")], 2);
        exemplar_above.exemplars = vec![OtlpExemplar {
            value: Some(exemplar::Value::AsInt(5)),
            ..Default::default()
        }];
        let gauges = [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.0,
            1e21,
            123456789.0,
            0.1 + 0.2,
        ]
        .iter()
        .enumerate()
        .map(|(i, v)| point(*v, vec![kv("i", &i.to_string())], 1))
        .collect();
        let no_buckets = Metric {
            name: "bare".into(),
            data: Some(Data::Histogram(OtlpHistogram {
                data_points: vec![HistogramDataPoint {
                    count: 4,
                    sum: Some(2.0),
                    time_unix_nano: 1,
                    ..Default::default()
                }],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            })),
            ..Default::default()
        };
        let summary = |attrs: Vec<KeyValue>| SummaryDataPoint {
            attributes: attrs,
            count: 3,
            sum: 12.5,
            quantile_values: vec![
                ValueAtQuantile {
                    quantile: 0.5,
                    value: 4.0,
                },
                ValueAtQuantile {
                    quantile: 1.0,
                    value: 9.0,
                },
            ],
            ..Default::default()
        };
        let mut r = request(vec![
            sum(
                "bars.orders",
                AggregationTemporality::Cumulative,
                vec![
                    with_exemplar,
                    exemplar_above,
                    point(1.0, vec![kv("shop", "c")], 2),
                    // Beyond three label sets: folded into `other`.
                    point(2.0, vec![kv("shop", "d")], 2),
                    point(3.0, vec![kv("shop", "e")], 2),
                ],
            ),
            hist(AggregationTemporality::Cumulative, vec![1, 2, 3], 4.5, 2),
            no_buckets,
            Metric {
                name: "bars.queue.depth".into(),
                description: "Depth \\ of the\nqueue".into(),
                data: Some(Data::Gauge(OtlpGauge {
                    data_points: gauges,
                })),
                ..Default::default()
            },
            Metric {
                name: "rpc.latency".into(),
                unit: "ms".into(),
                data: Some(Data::Summary(Summary {
                    data_points: vec![summary(vec![kv("m", "get")]), summary(vec![])],
                })),
                ..Default::default()
            },
        ]);
        // A resource and scope without names: series with no labels at all.
        r.resource_metrics.push(ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![
                    Metric {
                        name: "plain".into(),
                        data: Some(Data::Gauge(OtlpGauge {
                            data_points: vec![point(2.0, vec![], 1)],
                        })),
                        ..Default::default()
                    },
                    Metric {
                        name: "plain.duration".into(),
                        unit: "s".into(),
                        data: Some(Data::Histogram(OtlpHistogram {
                            data_points: vec![HistogramDataPoint {
                                explicit_bounds: vec![0.005, 1.0, 2.5],
                                bucket_counts: vec![1, 0, 2, 1],
                                count: 4,
                                sum: Some(6.0),
                                time_unix_nano: 1,
                                ..Default::default()
                            }],
                            aggregation_temporality: AggregationTemporality::Delta as i32,
                        })),
                        ..Default::default()
                    },
                    Metric {
                        name: "plain.summary".into(),
                        data: Some(Data::Summary(Summary {
                            data_points: vec![summary(vec![])],
                        })),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        });
        rm.record_at(rm.prepare(&r), Instant::now());

        let mut registry = Registry::default();
        registry.register("before", "Registered before", Counter::<u64>::default());
        caps.register(&mut registry);
        rm.register(&mut registry);
        registry.register("after", "Registered after", Gauge::<i64>::default());
        let mut encoder = String::new();
        prometheus_client::encoding::text::encode(&mut encoder, &registry).expect("encode");
        let direct = crate::exposition::encode(&registry, crate::exposition::Format::OpenMetrics)
            .expect("encode");
        assert_eq!(direct, encoder);
        for wanted in [
            "bars_orders_total{otel_scope_name=\"shop\",service_instance_id=\"i-1\",service_name=\"bars\",shop=\"a\\\"b\\\\c\\nd e}\"} 7.5 # {span_id=\"cdcdcdcdcdcdcdcd\",trace_id=\"abababababababababababababababab\",user=\"q\\\"x\"} 0.1 1700000000.1234568",
            "bars_orders_total{otel_scope_name=\"other\",service_instance_id=\"other\",service_name=\"other\",shop=\"other\"} 5.0\n",
            "bare_bucket{le=\"+Inf\",otel_scope_name=\"shop\",service_instance_id=\"i-1\",service_name=\"bars\"} 4\n",
            "plain{} 2.0\n",
            "plain_duration_seconds_bucket{le=\"0.005\"} 1\nplain_duration_seconds_bucket{le=\"1.0\"} 1\n",
            "plain_summary{quantile=\"0.5\"} 4.0\n",
            "plain_summary_sum{} 12.5\n",
            "# HELP bars_queue_depth Depth \\\\ of the\\nqueue\n",
            "{i=\"0\",otel_scope_name=\"shop\",service_instance_id=\"i-1\",service_name=\"bars\"} NaN\n",
        ] {
            assert!(direct.contains(wanted), "{wanted:?} in\n{direct}");
        }
        // The structured model's walk reads the store in place: the text's series, and exactly
        // the model the encoder gives (help, exemplars, overflow, summaries, NaN included).
        crate::model::oracle::assert_matches_text(&registry);
        crate::model::oracle::assert_walk_is_encoded(&registry);
        // The text format is the same rewrite of either.
        assert_eq!(
            crate::exposition::encode(&registry, crate::exposition::Format::Text).expect("text"),
            crate::exposition::to_prometheus_text(&encoder)
        );
    }

    /// A point's labels as the receive path reads them (into the request's arena, hashed, looked
    /// up borrowed) are what sanitising each attribute into an ordered map gives: names cleaned,
    /// reserved ones renamed, colliding names' values joined in key order, values of every kind
    /// rendered; and the same label set in another attribute order is the same series.
    #[test]
    fn point_labels_are_the_sanitised_attributes_in_any_order() {
        let any = |v: any_value::Value| AnyValue { value: Some(v) };
        let kv_any = |k: &str, v: any_value::Value| KeyValue {
            key: k.into(),
            value: Some(any(v)),
            ..Default::default()
        };
        use any_value::Value as V;
        use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};
        let attrs = vec![
            kv("route", "/r1"),
            kv("a.b", "dot"),
            kv("a_b", "under"),
            kv("a-b", "dash"),
            kv("service.name", "mine"),
            kv("le", "0.5"),
            kv("quantile", "q"),
            kv("", "empty key"),
            kv("9lives", "cat"),
            kv("_private", "p"),
            kv("héllo", "accent"),
            kv_any("n", V::IntValue(-42)),
            kv_any("d", V::DoubleValue(0.1 + 0.2)),
            kv_any("t", V::BoolValue(true)),
            kv_any("raw", V::BytesValue(vec![0xde, 0xad])),
            kv_any(
                "arr",
                V::ArrayValue(ArrayValue {
                    values: vec![any(V::IntValue(1)), any(V::StringValue("x".into()))],
                }),
            ),
            kv_any(
                "map",
                V::KvlistValue(KeyValueList {
                    values: vec![kv("k", "v"), kv("k2", "w")],
                }),
            ),
            KeyValue {
                key: "unset".into(),
                value: None,
                ..Default::default()
            },
            KeyValue {
                key: "empty_any".into(),
                value: Some(AnyValue { value: None }),
                ..Default::default()
            },
        ];
        let mut wanted = attribute_labels(&attrs, &RESERVED_LABELS);
        wanted.insert(SERVICE_NAME.into(), "bars".into());
        wanted.insert(SERVICE_INSTANCE_ID.into(), "i-1".into());
        wanted.insert(SCOPE_NAME.into(), "shop".into());
        let wanted: SeriesLabels = wanted.into_iter().collect();
        assert!(wanted.contains(&("a_b".to_owned(), "dash;dot;under".to_owned())));
        assert!(wanted.contains(&("exported_service_name".to_owned(), "mine".to_owned())));
        assert!(wanted.contains(&("map".to_owned(), "{k:v,k2:w}".to_owned())));

        let (rm, _) = received(100, 100);
        let mut reversed = attrs.clone();
        reversed.reverse();
        let r = request(vec![sum(
            "bars.orders",
            AggregationTemporality::Delta,
            vec![point(1.0, attrs, 1), point(2.0, reversed, 2)],
        )]);
        let p = rm.prepare(&r);
        let points = &p.metrics[0].points;
        for point in points {
            assert_eq!(p.owned_labels(&point.labels), wanted);
        }
        assert_eq!(points[0].hash, points[1].hash);
        rm.record_at(p, Instant::now());
        // One series (and target_info), the two deltas summed.
        assert_eq!(rm.series(), 2);
        let out = text(&rm);
        assert!(out.contains("route=\"/r1\""), "{out}");
        assert!(out.contains(",t=\"true\"} 3.0\n"), "{out}");
    }

    /// Histogram points read their buckets from the request's arrays: deltas add to the held
    /// buckets, cumulative points and points with other bounds replace them.
    #[test]
    fn histogram_buckets_from_the_request_arrays() {
        let (rm, _) = received(100, 100);
        let t0 = Instant::now();
        for _ in 0..2 {
            let r = request(vec![hist(
                AggregationTemporality::Delta,
                vec![1, 2, 3],
                4.5,
                1,
            )]);
            rm.record_at(rm.prepare(&r), t0);
        }
        let out = text(&rm);
        assert!(out.contains("_count{otel_scope_name=\"shop\",service_instance_id=\"i-1\",service_name=\"bars\"} 12\n"), "{out}");
        assert!(out.contains("le=\"1.0\""), "{out}");
        let mut other = hist(AggregationTemporality::Delta, vec![5, 0], 1.0, 2);
        if let Some(Data::Histogram(h)) = &mut other.data {
            h.data_points[0].explicit_bounds = vec![0.25];
        }
        rm.record_at(rm.prepare(&request(vec![other])), t0);
        let out = text(&rm);
        assert!(out.contains("{le=\"0.25\",otel_scope_name=\"shop\",service_instance_id=\"i-1\",service_name=\"bars\"} 5\n"), "{out}");
        assert!(!out.contains("le=\"1.0\""), "{out}");
        let r = request(vec![hist(
            AggregationTemporality::Cumulative,
            vec![0, 1, 0],
            0.5,
            3,
        )]);
        rm.record_at(rm.prepare(&r), t0);
        let out = text(&rm);
        assert!(out.contains("_count{otel_scope_name=\"shop\",service_instance_id=\"i-1\",service_name=\"bars\"} 1\n"), "{out}");
        assert!(out.contains("le=\"1.0\""), "{out}");
    }

    #[test]
    fn type_conflicts_are_dropped() {
        let (rm, _) = received(10, 100);
        let counter = sum(
            "bars.orders",
            AggregationTemporality::Cumulative,
            vec![point(1.0, vec![], 1)],
        );
        rm.record_at(rm.prepare(&request(vec![counter])), Instant::now());
        let mut h = hist(AggregationTemporality::Cumulative, vec![1, 0, 0], 0.1, 1);
        h.name = "bars.orders".into();
        h.unit = String::new();
        rm.record_at(rm.prepare(&request(vec![h])), Instant::now());
        let out = text(&rm);
        assert!(
            out.contains(
                "sidelight_received_metric_points_dropped_total{reason=\"type_conflict\"} 1"
            ),
            "{out}"
        );
    }

    /// Each family keeps its series generation while only values change, takes a new one when
    /// a series comes (also one folded into the overflow series) or expires, and never lends
    /// other series under a token lent before; summaries and `target_info` promise nothing.
    #[test]
    fn series_generations_change_exactly_when_series_come_or_go() {
        let (rm, _caps) = received(2, 100);
        let mut registry = Registry::default();
        rm.register(&mut registry);
        let mut oracle = crate::model::oracle::GenerationOracle::default();
        let t0 = Instant::now();
        let orders = |shops: &[&str], v: f64| {
            let points = shops
                .iter()
                .map(|s| point(v, vec![kv("shop", s)], 1))
                .collect();
            request(vec![sum(
                "bars.orders",
                AggregationTemporality::Cumulative,
                points,
            )])
        };
        let token = |walked: &[(String, Option<crate::model::SeriesGeneration>)]| {
            let orders: Vec<_> = walked.iter().filter(|(n, _)| n == "bars_orders").collect();
            assert_eq!(orders.len(), 1, "{walked:?}");
            assert!(
                walked
                    .iter()
                    .filter(|(n, _)| n == TARGET_INFO)
                    .all(|(_, t)| t.is_none()),
                "{walked:?}"
            );
            orders[0].1.expect("a token")
        };
        rm.record_at(rm.prepare(&orders(&["a", "b"], 1.0)), t0);
        let first = token(&oracle.walk(&registry));
        rm.record_at(rm.prepare(&orders(&["b", "a"], 2.0)), t0);
        assert_eq!(token(&oracle.walk(&registry)), first, "only values changed");
        // A third label set is folded: the overflow series appears.
        rm.record_at(rm.prepare(&orders(&["c"], 1.0)), t0);
        let folded = token(&oracle.walk(&registry));
        assert_ne!(folded, first);
        assert_eq!(token(&oracle.walk(&registry)), folded);
        // Past the expiry only `a` is updated: `b` and `c` go.
        rm.record_at(
            rm.prepare(&orders(&["a"], 3.0)),
            t0 + Duration::from_secs(61),
        );
        let expired = token(&oracle.walk(&registry));
        assert!(expired != first && expired != folded);
        assert_eq!(token(&oracle.walk(&registry)), expired);
    }
}

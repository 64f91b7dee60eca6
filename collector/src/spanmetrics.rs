//! RED metrics from spans, with the OpenTelemetry Collector spanmetrics connector's names and
//! labels so existing APM dashboards work unchanged:
//! `traces_span_metrics_calls_total{service_name,span_name,span_kind,status_code,...}` and the
//! histogram `traces_span_metrics_duration_seconds{...}`, plus one label per configured
//! dimension (`http.route` → `http_route`), with trace-id exemplars in OpenMetrics output.
//!
//! Only spans of the configured kinds count (default SERVER and CONSUMER: the calls a service
//! answers). Label sets are bounded by a [`LabelCap`]: past `max_label_sets`, new sets are folded
//! into one series whose every label is `other`, counted in
//! `sidelight_label_sets_folded_total{family="traces_span_metrics"}`.
//!
//! The series live in a store of their own (per label set: calls, the duration histogram's
//! cumulative buckets with sum and count, and the trace-id exemplars of the last call and of each
//! bucket), kept in the order the label sets first came. It is registered as one
//! `prometheus-client` [`Collector`]: a `/metrics` scrape gets its text written straight into the
//! body ([`crate::exposition::write_direct`]), the structured model's walk reads it in place
//! ([`model::Source`], label sets borrowed), and any other encoder of the registry gets it
//! through the `MetricEncoder` (without the histograms' exemplars, which `prometheus-client`
//! offers no way to build outside its own histogram type; the agent never encodes so).
//!
//! Recording is split in two so that a payload is counted only once it is accepted:
//! [`SpanMetrics::prepare`] reads a request (borrowing it) into a [`Prepared`] batch, the receiver
//! offers the request to the intake, and only on success calls [`SpanMetrics::record`]. A refused
//! request is retried by its sender and would otherwise be counted twice.
//!
//! # Read API (for the regression detector)
//!
//! [`SpanMetrics::red`] returns a [`RedSnapshot`] of one service — cumulative calls, error calls
//! and the duration histogram's bucket counts, summed over the service's series — and
//! [`SpanMetrics::services`] lists the services seen. Both are cheap (a map lookup and a copy of
//! a few atomics). A windowed view is the difference of two snapshots
//! ([`RedSnapshot::since`]); [`RedSnapshot::error_ratio`] and [`RedSnapshot::quantile`] (the same
//! interpolation as PromQL's `histogram_quantile`) give the two signals the detector compares.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hashbrown::HashTable;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use parking_lot::RwLock;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::exemplar::CounterWithExemplar;
use prometheus_client::registry::Registry;

use crate::exposition::{push_descriptor, push_labels};
use crate::metrics::{LabelCap, LabelCaps, OVERFLOW_VALUE, label_key};
use crate::model;
use crate::wire::{self, WireError};

/// The maps probed once per span: foldhash instead of SipHash (keys come from clients, so the
/// seed is random per map).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The family name the label cap and the folded counter use.
pub const FAMILY: &str = "traces_span_metrics";

/// The calls counter's name (without `_total`) and help, as served.
const CALLS: &str = "traces_span_metrics_calls";
const CALLS_HELP: &str =
    "Spans of the counted kinds (server, consumer), by service, span name, kind and status.";
/// The duration histogram's name and help, as served.
const DURATIONS: &str = "traces_span_metrics_duration_seconds";
const DURATIONS_HELP: &str =
    "Duration of spans of the counted kinds, by service, span name, kind and status.";
/// The label of a trace-id exemplar.
const TRACE_ID: &str = "trace_id";

/// The spanmetrics connector's default histogram buckets, in seconds
/// (2ms … 15s).
pub const DEFAULT_BUCKETS: [f64; 16] = [
    0.002, 0.004, 0.006, 0.008, 0.010, 0.050, 0.100, 0.200, 0.400, 0.800, 1.0, 1.4, 2.0, 5.0, 10.0,
    15.0,
];

/// Labels every series has, in this order, before the configured dimensions.
const FIXED_LABELS: [&str; 4] = ["service_name", "span_name", "span_kind", "status_code"];

/// The service name used when a resource has no `service.name` (the OpenTelemetry default).
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// One extra label, from a span attribute (or, failing that, a resource attribute).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dimension {
    /// The attribute key (`http.route`).
    pub attribute: String,
    /// The value when neither the span nor its resource has the attribute; with none, the
    /// label is left out of that series (as the connector does).
    pub default: Option<String>,
}

impl Dimension {
    /// The Prometheus label name: every character outside `[A-Za-z0-9_]` becomes `_`, and a
    /// leading digit gets a `_` prefix (`http.route` → `http_route`).
    pub fn label(&self) -> String {
        sanitize_label(&self.attribute)
    }
}

/// `http.route` → `http_route`.
pub fn sanitize_label(key: &str) -> String {
    let mut out: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// What span metrics are computed from and how they are bounded.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanMetricsSettings {
    /// Extra labels.
    pub dimensions: Vec<Dimension>,
    /// Histogram upper bounds in seconds, ascending (`+Inf` is implied).
    pub buckets: Vec<f64>,
    /// Distinct label sets at most; the rest is folded into `other`.
    pub max_label_sets: usize,
    /// The span kinds that count.
    pub kinds: Vec<SpanKind>,
}

impl Default for SpanMetricsSettings {
    fn default() -> Self {
        Self {
            dimensions: vec![Dimension {
                attribute: "http.route".into(),
                default: None,
            }],
            buckets: DEFAULT_BUCKETS.to_vec(),
            max_label_sets: 1000,
            kinds: vec![SpanKind::Server, SpanKind::Consumer],
        }
    }
}

/// One problem in [`SpanMetricsSettings`], with the key it is about (relative to the section).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct SettingsError {
    /// `buckets[2]`, `dimensions[0]`, …
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl SpanMetricsSettings {
    /// Checks the settings (pure); every problem at once.
    pub fn validate(&self) -> Vec<SettingsError> {
        let mut errors = Vec::new();
        let mut err = |key: String, message: String| errors.push(SettingsError { key, message });
        if self.buckets.is_empty() {
            err("buckets".into(), "needs at least one bound".into());
        }
        for (i, b) in self.buckets.iter().enumerate() {
            if !b.is_finite() || *b <= 0.0 {
                err(
                    format!("buckets[{i}]"),
                    format!("{b} is not a positive duration"),
                );
            } else if i > 0 && *b <= self.buckets[i - 1] {
                err(
                    format!("buckets[{i}]"),
                    "bounds must be strictly ascending".into(),
                );
            }
        }
        if self.max_label_sets == 0 {
            err("max_label_sets".into(), "must be at least 1".into());
        }
        if self.kinds.is_empty() {
            err("kinds".into(), "needs at least one span kind".into());
        }
        let mut labels: Vec<String> = FIXED_LABELS.iter().map(|s| (*s).to_owned()).collect();
        labels.push("le".into());
        for (i, d) in self.dimensions.iter().enumerate() {
            let label = d.label();
            if d.attribute.trim().is_empty() {
                err(
                    format!("dimensions[{i}]"),
                    "the name must not be empty".into(),
                );
            } else if labels.contains(&label) {
                err(
                    format!("dimensions[{i}]"),
                    format!("label {label:?} is already used"),
                );
            } else {
                labels.push(label);
            }
        }
        errors
    }
}

/// `"2ms"`, `"1.4s"`, `"100us"`, `"1m"` or a plain number of seconds → seconds.
pub fn parse_bucket(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 2ms or 1.4s"))?;
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "ns" => 1e-9,
        "m" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (ns, us, ms, s, m, h)"
            ));
        }
    };
    Ok(value * scale)
}

/// `SPAN_KIND_SERVER` or `server` (any case) → the kind.
pub fn parse_kind(text: &str) -> Result<SpanKind, String> {
    let upper = text.trim().to_ascii_uppercase();
    let name = if upper.starts_with("SPAN_KIND_") {
        upper
    } else {
        format!("SPAN_KIND_{upper}")
    };
    match SpanKind::from_str_name(&name) {
        Some(SpanKind::Unspecified) | None => Err(format!(
            "{text:?} is not a span kind (server, client, consumer, producer, internal)"
        )),
        Some(k) => Ok(k),
    }
}

type SeriesLabels = Vec<(Cow<'static, str>, String)>;

/// Every span-metrics series, in the order their label sets first came.
#[derive(Debug, Default)]
struct Store {
    /// Each label set's place in `series`, by [`Series::hash`].
    index: HashTable<usize>,
    hasher: foldhash::fast::RandomState,
    series: Vec<Series>,
    /// The version of `series`' list of label sets (both families list them in this order):
    /// renewed when a series is added.
    generation: model::SeriesGeneration,
}

/// One label set's calls and durations.
#[derive(Debug)]
struct Series {
    labels: SeriesLabels,
    /// The hash of `labels` with the store's hasher.
    hash: u64,
    /// `labels` as the exposition writes them (escaped once, when the series is created).
    text: Box<str>,
    calls: u64,
    /// The last call (value 1), when its span had a trace id.
    call_exemplar: Option<model::Exemplar>,
    /// Cumulative buckets (`+Inf` last), sum and count. A bucket's exemplar is taken from the
    /// first observation of a batch in it, when that one has a trace id (else the older stays).
    durations: model::Histogram,
}

impl Store {
    /// The series of `labels`, created (with empty buckets at `bounds`) if new.
    fn series_mut(&mut self, labels: SeriesLabels, bounds: &[f64]) -> &mut Series {
        let hash = self.hasher.hash_one(&labels);
        let Store {
            index,
            series,
            generation,
            ..
        } = self;
        let i = match index.find(hash, |&i| series[i].labels == labels) {
            Some(&i) => i,
            None => {
                let mut text = String::new();
                push_labels(&mut text, &labels);
                let buckets = bounds
                    .iter()
                    .copied()
                    .chain(std::iter::once(f64::INFINITY))
                    .map(|upper_bound| model::Bucket {
                        upper_bound,
                        cumulative_count: 0,
                        exemplar: None,
                    })
                    .collect();
                series.push(Series {
                    labels,
                    hash,
                    text: text.into_boxed_str(),
                    calls: 0,
                    call_exemplar: None,
                    durations: model::Histogram {
                        sum: 0.0,
                        count: 0,
                        buckets,
                    },
                });
                index.insert_unique(hash, series.len() - 1, |&j| series[j].hash);
                *generation = model::SeriesGeneration::next();
                series.len() - 1
            }
        };
        &mut series[i]
    }
}

/// Cumulative RED figures of one service, summed over its series.
#[derive(Debug)]
struct ServiceTotals {
    calls: AtomicU64,
    errors: AtomicU64,
    sum_nanos: AtomicU64,
    /// Per bucket (not cumulative); the last is `+Inf`.
    buckets: Box<[AtomicU64]>,
}

/// A point-in-time copy of one service's RED figures (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct RedSnapshot {
    /// Calls (spans of the counted kinds) since the agent started.
    pub calls: u64,
    /// Of which with status ERROR.
    pub errors: u64,
    /// Sum of durations, seconds.
    pub sum_seconds: f64,
    /// Upper bounds of the finite buckets, seconds.
    pub bounds: Arc<[f64]>,
    /// Observations per bucket (not cumulative), one more than `bounds` (the last is `+Inf`).
    pub buckets: Vec<u64>,
}

impl RedSnapshot {
    /// The figures accumulated between `earlier` and `self` (a window); saturating, so a
    /// snapshot from before a restart gives this one.
    pub fn since(&self, earlier: &RedSnapshot) -> RedSnapshot {
        if self.bounds != earlier.bounds || earlier.calls > self.calls {
            return self.clone();
        }
        RedSnapshot {
            calls: self.calls - earlier.calls,
            errors: self.errors.saturating_sub(earlier.errors),
            sum_seconds: (self.sum_seconds - earlier.sum_seconds).max(0.0),
            bounds: self.bounds.clone(),
            buckets: self
                .buckets
                .iter()
                .zip(&earlier.buckets)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
        }
    }

    /// Error calls / calls, when there were calls.
    pub fn error_ratio(&self) -> Option<f64> {
        (self.calls > 0).then(|| self.errors as f64 / self.calls as f64)
    }

    /// The `q` quantile (0..=1) of durations in seconds, interpolated linearly within the
    /// bucket as PromQL's `histogram_quantile` does (the first bucket's lower bound is 0; a
    /// quantile in `+Inf` answers the highest finite bound). `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = q * total as f64;
        let mut below = 0u64;
        for (i, &count) in self.buckets.iter().enumerate() {
            let cumulative = below + count;
            if cumulative as f64 >= rank && count > 0 {
                let Some(&upper) = self.bounds.get(i) else {
                    return self.bounds.last().copied();
                };
                let lower = if i == 0 { 0.0 } else { self.bounds[i - 1] };
                let within = (rank - below as f64) / count as f64;
                return Some(lower + (upper - lower) * within);
            }
            below = cumulative;
        }
        self.bounds.last().copied()
    }
}

#[derive(Debug)]
struct Live {
    dimensions: Vec<(Dimension, String)>,
    kinds: Vec<i32>,
}

/// The span-metrics families and the per-service totals. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct SpanMetrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    live: RwLock<Live>,
    bounds: Arc<[f64]>,
    /// The `le` text of each finite bound, as the text encoder writes it.
    les: Box<[String]>,
    max_label_sets: usize,
    store: RwLock<Store>,
    cap: Arc<LabelCap>,
    services: RwLock<FastMap<String, Arc<ServiceTotals>>>,
}

/// Span observations read from one request, waiting for it to be accepted.
#[derive(Debug, Default)]
pub struct Prepared {
    series: Vec<PreparedSeries>,
}

impl Prepared {
    /// Spans that will be counted.
    pub fn spans(&self) -> usize {
        self.series.iter().map(|s| s.observations.len()).sum()
    }
}

#[derive(Debug)]
struct PreparedSeries {
    labels: SeriesLabels,
    error: bool,
    /// (seconds, trace id, end time in ns since the epoch).
    observations: Vec<(f64, [u8; 16], u64)>,
}

#[derive(Hash, PartialEq, Eq)]
struct Key<'a> {
    service: &'a str,
    name: &'a str,
    kind: i32,
    status: i32,
    dims: Vec<Option<Cow<'a, str>>>,
}

/// Builds a [`Prepared`] batch from one request's resources and spans, borrowing from it and
/// from the live settings.
struct Preparer<'a> {
    live: &'a Live,
    index: FastMap<Key<'a>, usize>,
    series: Vec<PreparedSeries>,
    service: &'a str,
    resource_dims: Vec<Option<Cow<'a, str>>>,
}

impl<'a> Preparer<'a> {
    fn new(live: &'a Live) -> Self {
        Self {
            live,
            index: FastMap::default(),
            series: Vec::new(),
            service: UNKNOWN_SERVICE,
            resource_dims: Vec::new(),
        }
    }

    /// The next resource, by its attribute lookup.
    fn resource(&mut self, attr: impl Fn(&str) -> Option<Cow<'a, str>>) {
        self.service = match attr("service.name") {
            Some(Cow::Borrowed(s)) => s,
            // A non-string service.name (rare): use its rendering for this resource only.
            Some(Cow::Owned(_)) | None => UNKNOWN_SERVICE,
        };
        self.resource_dims.clear();
        for (d, _) in &self.live.dimensions {
            self.resource_dims.push(attr(&d.attribute));
        }
    }

    /// One span of the current resource, with its attribute lookup.
    fn span(&mut self, span: &wire::SpanFields<'a>, attr: impl Fn(&str) -> Option<Cow<'a, str>>) {
        let live = self.live;
        if !live.kinds.contains(&span.kind) {
            return;
        }
        let dims = live
            .dimensions
            .iter()
            .zip(&self.resource_dims)
            .map(|((d, _), from_resource)| {
                attr(&d.attribute)
                    .or_else(|| from_resource.clone())
                    .or_else(|| d.default.as_deref().map(Cow::Borrowed))
            })
            .collect();
        let key = Key {
            service: self.service,
            name: span.name,
            kind: span.kind,
            status: span.status,
            dims,
        };
        let seconds = span.end.saturating_sub(span.start) as f64 / 1e9;
        let mut trace_id = [0u8; 16];
        if span.trace_id.len() == 16 {
            trace_id.copy_from_slice(span.trace_id);
        }
        let obs = (seconds, trace_id, span.end);
        if let Some(&i) = self.index.get(&key) {
            self.series[i].observations.push(obs);
            return;
        }
        let labels = series_labels(&key, &live.dimensions);
        self.index.insert(key, self.series.len());
        self.series.push(PreparedSeries {
            labels,
            error: span.status == StatusCode::Error as i32,
            observations: vec![obs],
        });
    }

    fn finish(self) -> Prepared {
        Prepared {
            series: self.series,
        }
    }
}

impl<'a> wire::Visit<'a> for Preparer<'a> {
    fn resource(&mut self, attributes: &[wire::Attr<'a>]) {
        Preparer::resource(self, |key| wire::find(attributes, key).and_then(wire_str));
    }

    fn span(&mut self, span: &wire::SpanFields<'a>, attributes: &[wire::Attr<'a>]) {
        Preparer::span(self, span, |key| {
            wire::find(attributes, key).and_then(wire_str)
        });
    }
}

/// [`as_str`] for a value read by [`wire`].
fn wire_str(v: wire::Value<'_>) -> Option<Cow<'_, str>> {
    match v {
        wire::Value::Str(s) => Some(Cow::Borrowed(s)),
        wire::Value::Bool(b) => Some(Cow::Borrowed(if b { "true" } else { "false" })),
        wire::Value::Int(i) => Some(Cow::Owned(i.to_string())),
        wire::Value::Double(d) => Some(Cow::Owned(d.to_string())),
        wire::Value::Other => None,
    }
}

impl SpanMetrics {
    /// New families with `settings` (validated by the caller); `caps` provides the label cap
    /// and its folded counter.
    pub fn new(settings: &SpanMetricsSettings, caps: &LabelCaps) -> Self {
        let bounds: Arc<[f64]> = settings.buckets.clone().into();
        Self {
            inner: Arc::new(Inner {
                live: RwLock::new(Self::live(settings)),
                les: bounds
                    .iter()
                    .map(|b| dtoa::Buffer::new().format(*b).to_owned())
                    .collect(),
                bounds,
                max_label_sets: settings.max_label_sets,
                store: RwLock::new(Store::default()),
                cap: caps.for_family_with_limit(FAMILY, settings.max_label_sets),
                services: RwLock::new(FastMap::default()),
            }),
        }
    }

    fn live(settings: &SpanMetricsSettings) -> Live {
        Live {
            dimensions: settings
                .dimensions
                .iter()
                .map(|d| (d.clone(), d.label()))
                .collect(),
            kinds: settings.kinds.iter().map(|k| *k as i32).collect(),
        }
    }

    /// Applies new dimensions and kinds in place (series already exposed stay). Returns the
    /// settings that only take effect at the next restart (`buckets`, `max_label_sets`) if they
    /// changed.
    pub fn reconfigure(&self, settings: &SpanMetricsSettings) -> Vec<&'static str> {
        *self.inner.live.write() = Self::live(settings);
        let mut restart = Vec::new();
        if *self.inner.bounds != *settings.buckets {
            restart.push("buckets");
        }
        if self.inner.max_label_sets != settings.max_label_sets {
            restart.push("max_label_sets");
        }
        restart
    }

    /// Registers both families (`traces_span_metrics_calls_total`,
    /// `traces_span_metrics_duration_seconds`), as one collector of the root registry (the
    /// direct writes and the model's walk add no prefix or constant labels).
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(self.clone()));
    }

    /// Reads the spans that count from `request` (nothing is recorded yet).
    pub fn prepare(&self, request: &ExportTraceServiceRequest) -> Prepared {
        let live = self.inner.live.read();
        let mut p = Preparer::new(&live);
        for rs in &request.resource_spans {
            let resource_attrs: &[KeyValue] = rs
                .resource
                .as_ref()
                .map_or(&[], |r| r.attributes.as_slice());
            p.resource(|key| find(resource_attrs, key).and_then(as_str));
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    p.span(
                        &wire::SpanFields {
                            name: &span.name,
                            kind: span.kind,
                            status: span.status.as_ref().map_or(0, |s| s.code),
                            start: span.start_time_unix_nano,
                            end: span.end_time_unix_nano,
                            trace_id: &span.trace_id,
                        },
                        |key| find(&span.attributes, key).and_then(as_str),
                    );
                }
            }
        }
        p.finish()
    }

    /// [`prepare`](Self::prepare) for a request still in its protobuf encoding: checks it (as
    /// prost would decode it) and reads the spans that count. Returns them and the number of
    /// spans in the request.
    pub fn prepare_encoded(&self, request: &[u8]) -> Result<(Prepared, usize), WireError> {
        self.prepare_encoded_with(request, &mut |_| {})
    }

    /// [`prepare_encoded`](Self::prepare_encoded), handing every data string of the request to
    /// `texts` in the same pass (redaction's look, [`wire::Texts`]).
    pub fn prepare_encoded_with(
        &self,
        request: &[u8],
        texts: &mut wire::Texts<'_>,
    ) -> Result<(Prepared, usize), WireError> {
        let live = self.inner.live.read();
        let mut p = wire::WithTexts(Preparer::new(&live), texts);
        let spans = wire::traces(request, &mut p)?;
        Ok((p.0.finish(), spans))
    }

    /// Records a prepared batch (call once its request was accepted).
    pub fn record(&self, prepared: Prepared) {
        let inner = &*self.inner;
        let buckets = inner.bounds.len() + 1;
        // Per batch of one series: observations per bucket, and whether the bucket's exemplar
        // was considered (one per bucket per batch: the first observation in it).
        let mut counts = vec![0u64; buckets];
        let mut exemplified = vec![false; buckets];
        let mut store = inner.store.write();
        for s in prepared.series {
            let Some(&(_, last_trace, last_end)) = s.observations.last() else {
                continue;
            };
            let labels = if inner.cap.admit(label_key(&s.labels)) {
                s.labels
            } else {
                s.labels
                    .into_iter()
                    .map(|(k, _)| (k, OVERFLOW_VALUE.to_owned()))
                    .collect()
            };
            let n = s.observations.len() as u64;
            let totals = self.totals(&labels[0].1);
            totals.calls.fetch_add(n, Ordering::Relaxed);
            if s.error {
                totals.errors.fetch_add(n, Ordering::Relaxed);
            }
            let series = store.series_mut(labels, &inner.bounds);
            series.calls = series.calls.wrapping_add(n);
            // The exemplar is one call (value 1), the batch's last; a last call without a
            // trace id leaves none.
            if is_traced(&last_trace) {
                set_exemplar(&mut series.call_exemplar, &last_trace, 1.0, last_end);
            } else {
                series.call_exemplar = None;
            }
            counts.fill(0);
            exemplified.fill(false);
            let durations = &mut series.durations;
            let mut sum_nanos = 0u64;
            for (seconds, trace_id, end) in &s.observations {
                let bucket = inner.bounds.partition_point(|b| b < seconds);
                counts[bucket] += 1;
                totals.buckets[bucket].fetch_add(1, Ordering::Relaxed);
                sum_nanos = sum_nanos.saturating_add((seconds * 1e9) as u64);
                durations.sum += seconds;
                if !exemplified[bucket] {
                    exemplified[bucket] = true;
                    if is_traced(trace_id)
                        && let Some(b) = durations.buckets.get_mut(bucket)
                    {
                        set_exemplar(&mut b.exemplar, trace_id, *seconds, *end);
                    }
                }
            }
            durations.count = durations.count.wrapping_add(n);
            let mut below = 0u64;
            for (b, count) in durations.buckets.iter_mut().zip(&counts) {
                below += count;
                b.cumulative_count = b.cumulative_count.wrapping_add(below);
            }
            totals.sum_nanos.fetch_add(sum_nanos, Ordering::Relaxed);
        }
    }

    fn totals(&self, service: &str) -> Arc<ServiceTotals> {
        if let Some(t) = self.inner.services.read().get(service) {
            return t.clone();
        }
        let mut services = self.inner.services.write();
        services
            .entry(service.to_owned())
            .or_insert_with(|| {
                Arc::new(ServiceTotals {
                    calls: AtomicU64::new(0),
                    errors: AtomicU64::new(0),
                    sum_nanos: AtomicU64::new(0),
                    buckets: (0..=self.inner.bounds.len())
                        .map(|_| AtomicU64::new(0))
                        .collect(),
                })
            })
            .clone()
    }

    /// The services seen so far (bounded by the label cap; folded ones appear as `other`).
    pub fn services(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner.services.read().keys().cloned().collect();
        v.sort();
        v
    }

    /// One service's cumulative RED figures, if it has been seen.
    pub fn red(&self, service: &str) -> Option<RedSnapshot> {
        let t = self.inner.services.read().get(service)?.clone();
        Some(RedSnapshot {
            calls: t.calls.load(Ordering::Relaxed),
            errors: t.errors.load(Ordering::Relaxed),
            sum_seconds: t.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            bounds: self.inner.bounds.clone(),
            buckets: t
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        })
    }
}

/// `/metrics` and every other encoder of the registry: the calls counter then the duration
/// histogram, each series in the store's order; nothing before the first span is recorded (as
/// an empty `prometheus-client` family writes nothing).
impl Collector for SpanMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        if let Some(written) = crate::exposition::write_direct(&mut encoder, |out| {
            self.write_openmetrics(out);
            Ok(())
        }) {
            return written;
        }
        if let Some(handed) = model::walk_direct(&mut encoder, || Box::new(self.clone())) {
            return handed;
        }
        let store = self.inner.store.read();
        if store.series.is_empty() {
            return Ok(());
        }
        {
            let mut metric =
                encoder.encode_descriptor(CALLS, CALLS_HELP, None, MetricType::Counter)?;
            for s in &store.series {
                // The encoder takes an exemplar only as `prometheus-client` builds it.
                let last = CounterWithExemplar::<Vec<(String, String)>>::default();
                if let Some(e) = &s.call_exemplar {
                    last.inc_by(1, Some(e.labels.clone()), e.timestamp);
                }
                let (_, exemplar) = last.get();
                metric
                    .encode_family(&s.labels)?
                    .encode_counter(&s.calls, exemplar.as_ref())?;
            }
        }
        let mut metric =
            encoder.encode_descriptor(DURATIONS, DURATIONS_HELP, None, MetricType::Histogram)?;
        let mut buckets: Vec<(f64, u64)> = Vec::with_capacity(self.inner.bounds.len() + 1);
        for s in &store.series {
            buckets.clear();
            let mut below = 0u64;
            for b in &s.durations.buckets {
                buckets.push((b.upper_bound, b.cumulative_count.wrapping_sub(below)));
                below = b.cumulative_count;
            }
            metric
                .encode_family(&s.labels)?
                .encode_histogram::<Vec<(String, String)>>(
                    s.durations.sum,
                    s.durations.count,
                    &buckets,
                    None,
                )?;
        }
        Ok(())
    }
}

impl SpanMetrics {
    /// Writes both families as OpenMetrics text into a `/metrics` body: the bytes
    /// `prometheus-client`'s text encoder writes for them, exemplars included.
    fn write_openmetrics(&self, out: &mut String) {
        let store = self.inner.store.read();
        if store.series.is_empty() {
            return;
        }
        let mut numbers = Numbers {
            dtoa: dtoa::Buffer::new(),
            itoa: itoa::Buffer::new(),
        };
        push_descriptor(out, CALLS, CALLS_HELP, MetricType::Counter);
        for s in &store.series {
            out.push_str(CALLS);
            out.push_str("_total{");
            out.push_str(&s.text);
            out.push_str("} ");
            out.push_str(numbers.itoa.format(s.calls));
            if let Some(e) = &s.call_exemplar {
                push_exemplar(out, e, &mut numbers.dtoa);
            }
            out.push('\n');
        }
        push_descriptor(out, DURATIONS, DURATIONS_HELP, MetricType::Histogram);
        for s in &store.series {
            let h = &s.durations;
            out.push_str(DURATIONS);
            out.push_str("_sum{");
            out.push_str(&s.text);
            out.push_str("} ");
            out.push_str(numbers.dtoa.format(h.sum));
            out.push('\n');
            out.push_str(DURATIONS);
            out.push_str("_count{");
            out.push_str(&s.text);
            out.push_str("} ");
            out.push_str(numbers.itoa.format(h.count));
            out.push('\n');
            for (i, b) in h.buckets.iter().enumerate() {
                out.push_str(DURATIONS);
                out.push_str("_bucket{le=\"");
                out.push_str(self.inner.les.get(i).map_or("+Inf", String::as_str));
                out.push_str("\",");
                out.push_str(&s.text);
                out.push_str("} ");
                out.push_str(numbers.itoa.format(b.cumulative_count));
                if let Some(e) = &b.exemplar {
                    push_exemplar(out, e, &mut numbers.dtoa);
                }
                out.push('\n');
            }
        }
    }
}

struct Numbers {
    dtoa: dtoa::Buffer,
    itoa: itoa::Buffer,
}

/// ` # {labels} value timestamp`, as the text encoder writes an exemplar.
fn push_exemplar(out: &mut String, e: &model::Exemplar, dtoa: &mut dtoa::Buffer) {
    out.push_str(" # {");
    push_labels(out, &e.labels);
    out.push_str("} ");
    out.push_str(dtoa.format(e.value));
    if let Some(t) = e.timestamp {
        out.push(' ');
        let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        out.push_str(dtoa.format(secs.as_secs_f64()));
    }
}

/// The structured model's walk over the store: what [`Collector::encode`] writes, read in place
/// under the store's lock (label sets, histograms and exemplars borrowed).
impl model::Source for SpanMetrics {
    fn walk(&self, visit: &mut dyn model::Visit) {
        use model::{ExemplarRef, FamilyRef, Kind, LabelsRef, ValueRef};
        let store = self.inner.store.read();
        if store.series.is_empty() {
            return;
        }
        visit.family(&FamilyRef {
            name: CALLS,
            help: CALLS_HELP,
            unit: "",
            kind: Kind::Counter,
            series_generation: Some(store.generation),
        });
        if visit.wants_series() {
            for s in &store.series {
                visit.series(
                    LabelsRef::Named(&s.labels),
                    ValueRef::Counter {
                        total: s.calls as f64,
                        exemplar: s.call_exemplar.as_ref().map(|e| ExemplarRef {
                            labels: &e.labels,
                            value: e.value,
                            timestamp: e.timestamp,
                        }),
                    },
                );
            }
        }
        visit.family(&FamilyRef {
            name: DURATIONS,
            help: DURATIONS_HELP,
            unit: "",
            kind: Kind::Histogram,
            series_generation: Some(store.generation),
        });
        if visit.wants_series() {
            for s in &store.series {
                visit.series(
                    LabelsRef::Named(&s.labels),
                    ValueRef::Histogram(&s.durations),
                );
            }
        }
    }
}

fn series_labels(key: &Key<'_>, dims: &[(Dimension, String)]) -> SeriesLabels {
    let kind = SpanKind::try_from(key.kind).map_or("SPAN_KIND_UNSPECIFIED", |k| k.as_str_name());
    let status = StatusCode::try_from(key.status).map_or("STATUS_CODE_UNSET", |s| s.as_str_name());
    let mut labels: SeriesLabels = Vec::with_capacity(4 + dims.len());
    labels.push((Cow::Borrowed(FIXED_LABELS[0]), key.service.to_owned()));
    labels.push((Cow::Borrowed(FIXED_LABELS[1]), key.name.to_owned()));
    labels.push((Cow::Borrowed(FIXED_LABELS[2]), kind.to_owned()));
    labels.push((Cow::Borrowed(FIXED_LABELS[3]), status.to_owned()));
    for ((_, label), value) in dims.iter().zip(&key.dims) {
        if let Some(v) = value {
            labels.push((Cow::Owned(label.clone()), v.to_string()));
        }
    }
    labels
}

/// Whether a span has a trace id (all zeros is none).
fn is_traced(trace_id: &[u8; 16]) -> bool {
    trace_id != &[0u8; 16]
}

/// Makes `slot` the exemplar `{trace_id="…"} value` at `end`, reusing its strings.
fn set_exemplar(slot: &mut Option<model::Exemplar>, trace_id: &[u8; 16], value: f64, end: u64) {
    match slot {
        Some(e) if e.labels.len() == 1 => {
            let id = &mut e.labels[0].1;
            id.clear();
            push_hex(id, trace_id);
            e.value = value;
            e.timestamp = Some(timestamp(end));
        }
        _ => {
            let mut id = String::with_capacity(32);
            push_hex(&mut id, trace_id);
            *slot = Some(model::Exemplar {
                labels: vec![(TRACE_ID.to_owned(), id)],
                value,
                timestamp: Some(timestamp(end)),
            });
        }
    }
}

fn push_hex(s: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
}

fn timestamp(unix_nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(unix_nanos)
}

fn find<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attrs.iter().find(|kv| kv.key == key)?.value.as_ref()
}

/// An attribute value as label text: strings as they are, scalars rendered; arrays, maps and
/// bytes are not used as labels.
fn as_str(v: &AnyValue) -> Option<Cow<'_, str>> {
    match v.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(Cow::Borrowed(s)),
        any_value::Value::BoolValue(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        any_value::Value::IntValue(i) => Some(Cow::Owned(i.to_string())),
        any_value::Value::DoubleValue(d) => Some(Cow::Owned(d.to_string())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

    use super::*;

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    fn span(
        name: &str,
        kind: SpanKind,
        status: StatusCode,
        millis: u64,
        route: Option<&str>,
    ) -> Span {
        let start = 1_700_000_000_000_000_000u64;
        Span {
            trace_id: vec![0xab; 16],
            span_id: vec![1; 8],
            name: name.into(),
            kind: kind as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: start + millis * 1_000_000,
            attributes: route.map(|r| kv("http.route", r)).into_iter().collect(),
            status: Some(Status {
                code: status as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A request from `shop` with one successful 3 ms server span on `route` (named `GET route`).
    fn one_server_span(route: &str) -> ExportTraceServiceRequest {
        request(
            "shop",
            vec![span(
                &format!("GET {route}"),
                SpanKind::Server,
                StatusCode::Ok,
                3,
                Some(route),
            )],
        )
    }

    fn request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", service),
                        kv("deployment.environment", "prod"),
                    ],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn text(sm: &SpanMetrics, caps: &LabelCaps) -> String {
        let mut registry = Registry::default();
        sm.register(&mut registry);
        caps.register(&mut registry);
        crate::exposition::encode(&registry, crate::exposition::Format::OpenMetrics)
            .expect("encode")
    }

    #[test]
    fn red_values_names_and_labels() {
        let caps = LabelCaps::new(100);
        let settings = SpanMetricsSettings {
            dimensions: vec![
                Dimension {
                    attribute: "http.route".into(),
                    default: Some("unknown".into()),
                },
                Dimension {
                    attribute: "deployment.environment".into(),
                    default: None,
                },
            ],
            ..Default::default()
        };
        assert!(settings.validate().is_empty());
        let sm = SpanMetrics::new(&settings, &caps);
        let req = request(
            "shop",
            vec![
                span(
                    "GET /items",
                    SpanKind::Server,
                    StatusCode::Unset,
                    3,
                    Some("/items"),
                ),
                span(
                    "GET /items",
                    SpanKind::Server,
                    StatusCode::Unset,
                    30,
                    Some("/items"),
                ),
                span(
                    "GET /items",
                    SpanKind::Server,
                    StatusCode::Error,
                    700,
                    Some("/items"),
                ),
                span("SELECT", SpanKind::Client, StatusCode::Unset, 1, None),
                span("consume", SpanKind::Consumer, StatusCode::Ok, 1, None),
            ],
        );
        let prepared = sm.prepare(&req);
        assert_eq!(prepared.spans(), 4, "the client span does not count");
        assert!(sm.red("shop").is_none(), "nothing recorded before record()");
        sm.record(prepared);
        let out = text(&sm, &caps);
        let ok = "service_name=\"shop\",span_name=\"GET /items\",span_kind=\"SPAN_KIND_SERVER\",status_code=\"STATUS_CODE_UNSET\",http_route=\"/items\",deployment_environment=\"prod\"";
        assert!(
            out.contains(&format!("traces_span_metrics_calls_total{{{ok}}} 2 # {{trace_id=\"abababababababababababababababab\"}} 1")),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "traces_span_metrics_duration_seconds_bucket{{le=\"0.004\",{ok}}} 1"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "traces_span_metrics_duration_seconds_bucket{{le=\"0.05\",{ok}}} 2"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "traces_span_metrics_duration_seconds_count{{{ok}}} 2"
            )),
            "{out}"
        );
        assert!(
            out.contains("status_code=\"STATUS_CODE_ERROR\",http_route=\"/items\""),
            "{out}"
        );
        assert!(
            out.contains("span_name=\"consume\",span_kind=\"SPAN_KIND_CONSUMER\",status_code=\"STATUS_CODE_OK\",http_route=\"unknown\""),
            "the default fills a missing dimension: {out}"
        );
        assert!(!out.contains("SELECT"));

        let red = sm.red("shop").expect("seen");
        assert_eq!((red.calls, red.errors), (4, 1));
        assert_eq!(red.buckets.iter().sum::<u64>(), 4);
        assert_eq!(sm.services(), ["shop"]);
        // 4 observations: 1ms, 3ms, 30ms, 700ms. p50: rank 2 → the 4ms bucket's top.
        let p50 = red.quantile(0.5).expect("observations");
        assert!((p50 - 0.004).abs() < 1e-9, "{p50}");
        let p95 = red.quantile(0.95).expect("observations");
        assert!(p95 > 0.4 && p95 <= 0.8, "{p95}");
        assert!((red.error_ratio().expect("calls") - 0.25).abs() < 1e-9);
        let later = {
            sm.record(sm.prepare(&request(
                "shop",
                vec![span("x", SpanKind::Server, StatusCode::Error, 1, None)],
            )));
            sm.red("shop").expect("seen")
        };
        let window = later.since(&red);
        assert_eq!((window.calls, window.errors), (1, 1));
    }

    #[test]
    fn an_encoded_request_prepares_as_its_decoded_message() {
        use prost::Message;
        let caps = LabelCaps::new(100);
        let settings = SpanMetricsSettings {
            dimensions: vec![
                Dimension {
                    attribute: "http.route".into(),
                    default: Some("unknown".into()),
                },
                Dimension {
                    attribute: "deployment.environment".into(),
                    default: None,
                },
                Dimension {
                    attribute: "region".into(),
                    default: None,
                },
            ],
            ..Default::default()
        };
        let sm = SpanMetrics::new(&settings, &caps);
        let mut req = request(
            "checkout",
            vec![
                span("GET /a", SpanKind::Server, StatusCode::Ok, 3, Some("/a")),
                span("GET /a", SpanKind::Server, StatusCode::Ok, 30, Some("/a")),
                span("GET /b", SpanKind::Server, StatusCode::Error, 7, None),
                span("q", SpanKind::Client, StatusCode::Unset, 1, None),
                span(
                    "job",
                    SpanKind::Consumer,
                    StatusCode::Unset,
                    900,
                    Some("/j"),
                ),
            ],
        );
        let mut other = request(
            "billing",
            vec![span("x", SpanKind::Server, StatusCode::Unset, 1, None)],
        );
        other.resource_spans[0].resource = None;
        req.resource_spans.extend(other.resource_spans);
        let bytes = req.encode_to_vec();
        let (encoded, spans) = sm.prepare_encoded(&bytes).expect("valid");
        assert_eq!(spans, 6);
        let decoded = sm.prepare(&req);
        assert_eq!(encoded.spans(), 5, "the client span does not count");
        assert_eq!(format!("{encoded:?}"), format!("{decoded:?}"));
        assert!(sm.prepare_encoded(&bytes[..bytes.len() - 3]).is_err());
    }

    #[test]
    fn label_sets_beyond_the_cap_fold_into_other_and_are_counted() {
        let caps = LabelCaps::new(100);
        let settings = SpanMetricsSettings {
            max_label_sets: 2,
            ..Default::default()
        };
        let sm = SpanMetrics::new(&settings, &caps);
        let spans = (0..5)
            .map(|i| {
                span(
                    &format!("GET /u/{i}"),
                    SpanKind::Server,
                    StatusCode::Unset,
                    5,
                    None,
                )
            })
            .collect();
        sm.record(sm.prepare(&request("api", spans)));
        let out = text(&sm, &caps);
        let series = out
            .lines()
            .filter(|l| l.starts_with("traces_span_metrics_calls_total{"))
            .count();
        assert_eq!(series, 3, "two admitted + one overflow series: {out}");
        assert!(
            out.contains("traces_span_metrics_calls_total{service_name=\"other\",span_name=\"other\",span_kind=\"other\",status_code=\"other\"} 3"),
            "{out}"
        );
        assert!(
            out.contains("sidelight_label_sets_folded_total{family=\"traces_span_metrics\"} 3"),
            "{out}"
        );
        // The same overflow sets again are not counted again, but their calls are.
        let spans = (2..5)
            .map(|i| {
                span(
                    &format!("GET /u/{i}"),
                    SpanKind::Server,
                    StatusCode::Unset,
                    5,
                    None,
                )
            })
            .collect();
        sm.record(sm.prepare(&request("api", spans)));
        let out = text(&sm, &caps);
        assert!(
            out.contains("sidelight_label_sets_folded_total{family=\"traces_span_metrics\"} 3")
        );
        assert!(out.contains("status_code=\"other\"} 6"), "{out}");
        assert_eq!(sm.red("other").expect("folded").calls, 6);
    }

    #[test]
    fn kinds_are_configurable_and_reconfigured_in_place() {
        let caps = LabelCaps::new(100);
        let sm = SpanMetrics::new(&SpanMetricsSettings::default(), &caps);
        let req = request(
            "w",
            vec![span("send", SpanKind::Producer, StatusCode::Unset, 1, None)],
        );
        assert_eq!(sm.prepare(&req).spans(), 0);
        let settings = SpanMetricsSettings {
            kinds: vec![SpanKind::Producer],
            buckets: vec![0.1, 1.0],
            ..Default::default()
        };
        assert_eq!(sm.reconfigure(&settings), ["buckets"]);
        assert_eq!(sm.prepare(&req).spans(), 1);
    }

    #[test]
    fn settings_parsing_and_validation() {
        assert_eq!(parse_bucket("2ms"), Ok(0.002));
        assert_eq!(parse_bucket("1.4s"), Ok(1.4));
        assert_eq!(parse_bucket("0.25"), Ok(0.25));
        assert!((parse_bucket("100us").expect("us") - 0.0001).abs() < 1e-12);
        assert!(parse_bucket("fast").is_err());
        assert!(parse_bucket("3 parsecs").is_err());
        assert_eq!(parse_kind("server"), Ok(SpanKind::Server));
        assert_eq!(parse_kind("SPAN_KIND_CONSUMER"), Ok(SpanKind::Consumer));
        assert!(parse_kind("unspecified").is_err());
        assert!(parse_kind("nope").is_err());
        assert_eq!(sanitize_label("http.route"), "http_route");
        assert_eq!(sanitize_label("9lives-x"), "_9lives_x");
        let bad = SpanMetricsSettings {
            dimensions: vec![
                Dimension {
                    attribute: "service.name".into(),
                    default: None,
                },
                Dimension {
                    attribute: "".into(),
                    default: None,
                },
            ],
            buckets: vec![0.1, 0.1, -1.0],
            max_label_sets: 0,
            kinds: vec![],
        };
        let keys: Vec<String> = bad.validate().into_iter().map(|e| e.key).collect();
        assert_eq!(
            keys,
            [
                "buckets[1]",
                "buckets[2]",
                "max_label_sets",
                "kinds",
                "dimensions[0]",
                "dimensions[1]"
            ]
        );
    }

    #[test]
    fn quantile_matches_histogram_quantile() {
        let snap = RedSnapshot {
            calls: 10,
            errors: 0,
            sum_seconds: 1.0,
            bounds: vec![0.1, 0.2, 0.4].into(),
            buckets: vec![5, 3, 1, 1],
        };
        // rank 5 of 10 → top of the first bucket.
        assert_eq!(snap.quantile(0.5), Some(0.1));
        // rank 8 → top of the second.
        assert!((snap.quantile(0.8).expect("q") - 0.2).abs() < 1e-12);
        // rank 9.5 → in +Inf: the highest finite bound.
        assert_eq!(snap.quantile(0.95), Some(0.4));
        let empty = RedSnapshot {
            buckets: vec![0; 4],
            calls: 0,
            ..snap
        };
        assert_eq!(empty.quantile(0.5), None);
        assert_eq!(empty.error_ratio(), None);
    }

    /// The span-metrics families as `prometheus-client` held them before the store: the
    /// reference the store's exposition and walk are held to.
    mod reference {
        use prometheus_client::metrics::exemplar::{CounterWithExemplar, HistogramWithExemplars};
        use prometheus_client::metrics::family::{Family, MetricConstructor};

        use super::super::*;

        type TraceLabel = [(&'static str, String); 1];
        type Durations = HistogramWithExemplars<TraceLabel>;

        #[derive(Debug, Clone)]
        struct Buckets(Arc<[f64]>);

        impl MetricConstructor<Durations> for Buckets {
            fn new_metric(&self) -> Durations {
                HistogramWithExemplars::new(self.0.iter().copied())
            }
        }

        pub(super) struct Old {
            bounds: Arc<[f64]>,
            calls: Family<SeriesLabels, CounterWithExemplar<TraceLabel>>,
            durations: Family<SeriesLabels, Durations, Buckets>,
            cap: Arc<LabelCap>,
        }

        fn exemplar(trace_id: &[u8; 16]) -> Option<TraceLabel> {
            (trace_id != &[0u8; 16]).then(|| {
                let mut id = String::new();
                push_hex(&mut id, trace_id);
                [("trace_id", id)]
            })
        }

        impl Old {
            pub(super) fn new(settings: &SpanMetricsSettings, caps: &LabelCaps) -> Self {
                let bounds: Arc<[f64]> = settings.buckets.clone().into();
                Old {
                    bounds: bounds.clone(),
                    calls: Family::default(),
                    durations: Family::new_with_constructor(Buckets(bounds)),
                    cap: caps.for_family_with_limit(FAMILY, settings.max_label_sets),
                }
            }

            pub(super) fn register(&self, registry: &mut Registry) {
                registry.register(
                    "traces_span_metrics_calls",
                    "Spans of the counted kinds (server, consumer), by service, span name, kind and status",
                    self.calls.clone(),
                );
                registry.register(
                    "traces_span_metrics_duration_seconds",
                    "Duration of spans of the counted kinds, by service, span name, kind and status",
                    self.durations.clone(),
                );
            }

            pub(super) fn record(&self, prepared: Prepared) {
                for s in prepared.series {
                    let labels = if self.cap.admit(label_key(&s.labels)) {
                        s.labels
                    } else {
                        s.labels
                            .into_iter()
                            .map(|(k, _)| (k, OVERFLOW_VALUE.to_owned()))
                            .collect()
                    };
                    let n = s.observations.len() as u64;
                    let Some(last) = s.observations.last() else {
                        continue;
                    };
                    {
                        let calls = self.calls.get_or_create(&labels);
                        if n > 1 {
                            calls.inc_by(n - 1, None, None);
                        }
                        calls.inc_by(1, exemplar(&last.1), Some(timestamp(last.2)));
                    }
                    let histogram = self.durations.get_or_create_owned(&labels);
                    let mut exemplified = vec![false; self.bounds.len() + 1];
                    for (seconds, trace_id, end) in &s.observations {
                        let bucket = self.bounds.partition_point(|b| b < seconds);
                        let (label, at) = if exemplified[bucket] {
                            (None, None)
                        } else {
                            exemplified[bucket] = true;
                            (exemplar(trace_id), Some(timestamp(*end)))
                        };
                        histogram.observe(*seconds, label, at);
                    }
                }
            }
        }
    }

    /// A body's families by name: the metadata lines, then the series as blocks (a histogram's
    /// `_sum`, `_count` and buckets together) sorted, since the old families served their series
    /// in hash order.
    fn families(body: &str) -> std::collections::BTreeMap<String, (Vec<String>, Vec<String>)> {
        let mut out: std::collections::BTreeMap<String, (Vec<String>, Vec<String>)> =
            Default::default();
        let mut current: Option<String> = None;
        let mut histogram = false;
        for line in body.lines().filter(|l| *l != "# EOF") {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or_default().to_owned();
                assert!(!out.contains_key(&name), "{name} twice:\n{body}");
                out.entry(name.clone()).or_default().0.push(line.to_owned());
                current = Some(name);
                histogram = false;
                continue;
            }
            let name = current.clone().expect("a family first");
            let family = out.entry(name.clone()).or_default();
            if line.starts_with("# ") {
                histogram |= line.ends_with(" histogram");
                family.0.push(line.to_owned());
            } else if histogram && !line.starts_with(&format!("{name}_sum")) {
                let block = family.1.last_mut().expect("a _sum line first");
                block.push('\n');
                block.push_str(line);
            } else {
                family.1.push(line.to_owned());
            }
        }
        for (_, series) in out.values_mut() {
            series.sort();
        }
        out
    }

    /// The model with each family's series sorted by their labels and the families by name.
    fn sorted(mut snap: model::Snapshot) -> String {
        for f in &mut snap.families {
            f.series.sort_by_cached_key(|s| format!("{:?}", s.labels));
        }
        snap.families.sort_by(|a, b| a.name.cmp(&b.name));
        format!("{snap:#?}")
    }

    fn traced(rng: &mut fastrand::Rng) -> Vec<u8> {
        match rng.u8(..4) {
            0 => vec![0; 16],
            1 => vec![0xab; 3],
            _ => (0..16).map(|_| rng.u8(..)).collect(),
        }
    }

    /// A request of random spans: services, names and attribute values with characters the text
    /// escapes, every kind and status, durations on, between and beyond the bounds, spans with
    /// no trace id or a malformed one, dimensions from the span, the resource, a default or
    /// nowhere.
    fn random_request(rng: &mut fastrand::Rng, bounds: &[f64]) -> ExportTraceServiceRequest {
        const SERVICES: [&str; 5] = ["shop", "pay\"ments", "back\\slash", "new\nline", "ünï"];
        const NAMES: [&str; 6] = ["GET /", "POST /items/{id}", "q\"uote", "", "a\\b", "x y"];
        const KINDS: [SpanKind; 5] = [
            SpanKind::Server,
            SpanKind::Consumer,
            SpanKind::Client,
            SpanKind::Producer,
            SpanKind::Internal,
        ];
        const STATUSES: [StatusCode; 3] = [StatusCode::Unset, StatusCode::Ok, StatusCode::Error];
        let mut resource_spans = Vec::new();
        for _ in 0..rng.usize(1..4) {
            let mut resource_attrs = Vec::new();
            if rng.u8(..5) > 0 {
                resource_attrs.push(kv("service.name", SERVICES[rng.usize(..SERVICES.len())]));
            }
            if rng.bool() {
                resource_attrs.push(kv("http.route", "/from-resource"));
            }
            let mut spans = Vec::new();
            for _ in 0..rng.usize(0..30) {
                let start = 1_700_000_000_000_000_000u64 + rng.u64(..1_000_000_000_000);
                let nanos = match rng.u8(..4) {
                    // On a bound exactly.
                    0 => (bounds[rng.usize(..bounds.len())] * 1e9) as u64,
                    1 => rng.u64(..20_000_000_000),
                    2 => rng.u64(..3_000_000),
                    _ => 0,
                };
                let mut attributes = Vec::new();
                if rng.bool() {
                    attributes.push(kv("http.route", NAMES[rng.usize(..NAMES.len())]));
                }
                if rng.u8(..3) == 0 {
                    attributes.push(KeyValue {
                        key: "region".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::IntValue(rng.i64(-3..3))),
                        }),
                        ..Default::default()
                    });
                }
                spans.push(Span {
                    trace_id: traced(rng),
                    span_id: vec![1; 8],
                    name: NAMES[rng.usize(..NAMES.len())].into(),
                    kind: KINDS[rng.usize(..KINDS.len())] as i32,
                    start_time_unix_nano: start,
                    end_time_unix_nano: start + nanos,
                    attributes,
                    status: rng.u8(..6).ne(&0).then(|| Status {
                        code: STATUSES[rng.usize(..STATUSES.len())] as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }
            resource_spans.push(ResourceSpans {
                resource: Some(Resource {
                    attributes: resource_attrs,
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
        ExportTraceServiceRequest { resource_spans }
    }

    /// The store serves what the `prometheus-client` families it replaced served, fed the same
    /// spans: `/metrics` in both formats byte for byte (series order aside: the families' was
    /// their hash map's), the model's walk equal to the encoder's model of the old families
    /// (exemplars included), and the plain encoder's text equal but for the histograms'
    /// exemplars, which only the direct write and the walk carry.
    #[test]
    fn the_store_serves_what_the_old_families_served() {
        use crate::exposition::{Format, encode};
        // What the random inputs reached, so that the comparison is known to cover it.
        let (mut series, mut folded, mut bucket_exemplars, mut escaped) = (0, false, false, false);
        for seed in 0..24u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let settings = SpanMetricsSettings {
                dimensions: vec![
                    Dimension {
                        attribute: "http.route".into(),
                        default: (seed % 2 == 0).then(|| "unknown".into()),
                    },
                    Dimension {
                        attribute: "region".into(),
                        default: None,
                    },
                ],
                buckets: if seed % 3 == 0 {
                    vec![0.001, 0.25, 1.0, 7.5]
                } else {
                    DEFAULT_BUCKETS.to_vec()
                },
                max_label_sets: [3, 20, 1000][(seed % 3) as usize],
                kinds: if seed % 4 == 0 {
                    vec![SpanKind::Server, SpanKind::Client, SpanKind::Internal]
                } else {
                    SpanMetricsSettings::default().kinds
                },
            };
            assert!(settings.validate().is_empty());
            let (new_caps, old_caps) = (LabelCaps::new(100), LabelCaps::new(100));
            let sm = SpanMetrics::new(&settings, &new_caps);
            let old = reference::Old::new(&settings, &old_caps);
            let (mut new_reg, mut old_reg) = (Registry::default(), Registry::default());
            sm.register(&mut new_reg);
            new_caps.register(&mut new_reg);
            old.register(&mut old_reg);
            old_caps.register(&mut old_reg);
            for round in 0..rng.usize(0..6) {
                let req = random_request(&mut rng, &settings.buckets);
                sm.record(sm.prepare(&req));
                old.record(sm.prepare(&req));
                let context = format!("seed {seed}, round {round}");
                let body = encode(&new_reg, Format::OpenMetrics).expect("encode");
                series = series.max(body.matches("_calls_total{").count());
                folded |= body.contains("status_code=\"other\"");
                bucket_exemplars |= body
                    .lines()
                    .any(|l| l.contains("_bucket{") && l.contains(" # {trace_id=\""));
                escaped |= body.contains("\\\"") && body.contains("\\n");
                for format in [Format::OpenMetrics, Format::Text] {
                    let new_body = encode(&new_reg, format).expect("encode");
                    let old_body = encode(&old_reg, format).expect("encode");
                    assert_eq!(
                        families(&new_body),
                        families(&old_body),
                        "{context}, {format:?}:\n{new_body}\n---\n{old_body}"
                    );
                }
                assert_eq!(
                    sorted(model::snapshot(&new_reg).expect("walk")),
                    sorted(crate::model::oracle::encoded(&old_reg)),
                    "{context}"
                );
                let plain = |r: &Registry| {
                    let mut out = String::new();
                    prometheus_client::encoding::text::encode(&mut out, r).expect("encode");
                    out
                };
                let without_bucket_exemplars: String = plain(&old_reg)
                    .lines()
                    .map(|l| match l.split_once(" # ") {
                        Some((sample, _)) if l.contains("_bucket{") => format!("{sample}\n"),
                        _ => format!("{l}\n"),
                    })
                    .collect();
                assert_eq!(
                    families(&plain(&new_reg)),
                    families(&without_bucket_exemplars),
                    "{context}"
                );
            }
        }
        assert!(
            series >= 20 && folded && bucket_exemplars && escaped,
            "{series} {folded} {bucket_exemplars} {escaped}"
        );
    }

    /// The store's walk among other collectors and plain metrics is what the encoder gives of
    /// the same registry (spans without trace ids, whose histograms have no exemplars for the
    /// encoder to leave out), and its snapshot is the registry's text.
    #[test]
    fn the_walk_reads_the_store_in_place() {
        use prometheus_client::metrics::counter::Counter;
        use prometheus_client::metrics::gauge::Gauge;
        let caps = LabelCaps::new(100);
        let sm = SpanMetrics::new(&SpanMetricsSettings::default(), &caps);
        let mut r = Registry::default();
        let before: Counter = Counter::default();
        before.inc();
        r.register("before", "Encoded", before);
        sm.register(&mut r);
        r.register("after", "Encoded", Gauge::<i64>::default());
        caps.register(&mut r);
        crate::model::oracle::assert_walk_is_encoded(&r);
        let empty = crate::model::oracle::assert_matches_text(&r);
        assert!(
            empty.family(CALLS).is_none(),
            "nothing recorded, nothing served"
        );
        let mut req = request(
            "shop",
            vec![
                span("GET /a", SpanKind::Server, StatusCode::Ok, 3, Some("/a")),
                span(
                    "GET /a",
                    SpanKind::Server,
                    StatusCode::Error,
                    3000,
                    Some("/a"),
                ),
                span("job", SpanKind::Consumer, StatusCode::Unset, 20_000, None),
            ],
        );
        for rs in &mut req.resource_spans {
            for ss in &mut rs.scope_spans {
                for s in &mut ss.spans {
                    s.trace_id = vec![0; 16];
                }
            }
        }
        sm.record(sm.prepare(&req));
        sm.record(sm.prepare(&req));
        crate::model::oracle::assert_walk_is_encoded(&r);
        let snap = crate::model::oracle::assert_matches_text(&r);
        // A visitor that reads some families only is lent no series of the others.
        crate::model::oracle::assert_walk_skips(&r, &snap);
        let calls = snap.family(CALLS).expect("calls");
        assert_eq!(calls.series.len(), 3);
        assert!(calls.series.iter().all(|s| s.value.number() == 2.0));
        let durations = snap.family(DURATIONS).expect("durations");
        let model::Value::Histogram(h) = &durations.series[2].value else {
            panic!("a histogram: {durations:?}");
        };
        assert_eq!((h.count, h.sum), (2, 40.0));
        assert_eq!(h.buckets.len(), DEFAULT_BUCKETS.len() + 1);
        assert_eq!(h.buckets[DEFAULT_BUCKETS.len() - 1].cumulative_count, 0);
        assert_eq!(h.buckets[DEFAULT_BUCKETS.len()].cumulative_count, 2);
        // With trace ids the walk carries every exemplar the text does.
        sm.record(sm.prepare(&one_server_span("/a")));
        crate::model::oracle::assert_matches_text_of(
            &r,
            &crate::exposition::encode(&r, crate::exposition::Format::OpenMetrics).expect("encode"),
        );
    }

    /// The store's families keep their series generation while only values change, take a new
    /// one when a series comes, and never lend other series under a token lent before.
    #[test]
    fn series_generations_change_exactly_when_series_come() {
        let caps = LabelCaps::new(100);
        let sm = SpanMetrics::new(&SpanMetricsSettings::default(), &caps);
        let mut r = Registry::default();
        sm.register(&mut r);
        let mut oracle = crate::model::oracle::GenerationOracle::default();
        let a = || one_server_span("/a");
        sm.record(sm.prepare(&a()));
        let first = oracle.walk(&r);
        let names: Vec<&str> = first.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, [CALLS, DURATIONS]);
        assert!(first.iter().all(|(_, t)| t.is_some()), "{first:?}");
        sm.record(sm.prepare(&a()));
        assert_eq!(oracle.walk(&r), first, "only values changed");
        sm.record(sm.prepare(&one_server_span("/b")));
        let second = oracle.walk(&r);
        assert!(
            first.iter().zip(&second).all(|(x, y)| x.1 != y.1),
            "a new series, new tokens: {first:?} {second:?}"
        );
        sm.record(sm.prepare(&a()));
        assert_eq!(oracle.walk(&r), second);
    }
}

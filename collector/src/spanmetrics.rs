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
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use parking_lot::RwLock;
use prometheus_client::metrics::exemplar::{CounterWithExemplar, HistogramWithExemplars};
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::registry::Registry;

use crate::metrics::{LabelCap, LabelCaps, OVERFLOW_VALUE, label_key};
use crate::wire::{self, WireError};

/// The maps probed once per span: foldhash instead of SipHash (keys come from clients, so the
/// seed is random per map).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The family name the label cap and the folded counter use.
pub const FAMILY: &str = "traces_span_metrics";

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
type TraceLabel = [(&'static str, String); 1];
type Calls = CounterWithExemplar<TraceLabel>;
type Durations = HistogramWithExemplars<TraceLabel>;

/// Builds every duration histogram with the configured bounds.
#[derive(Debug, Clone)]
struct Buckets(Arc<[f64]>);

impl MetricConstructor<Durations> for Buckets {
    fn new_metric(&self) -> Durations {
        HistogramWithExemplars::new(self.0.iter().copied())
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
    max_label_sets: usize,
    calls: Family<SeriesLabels, Calls>,
    durations: Family<SeriesLabels, Durations, Buckets>,
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
                bounds: bounds.clone(),
                max_label_sets: settings.max_label_sets,
                calls: Family::default(),
                durations: Family::new_with_constructor(Buckets(bounds)),
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
    /// `traces_span_metrics_duration_seconds`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "traces_span_metrics_calls",
            "Spans of the counted kinds (server, consumer), by service, span name, kind and status",
            self.inner.calls.clone(),
        );
        registry.register(
            "traces_span_metrics_duration_seconds",
            "Duration of spans of the counted kinds, by service, span name, kind and status",
            self.inner.durations.clone(),
        );
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
        for s in prepared.series {
            let labels = if inner.cap.admit(label_key(&s.labels)) {
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
                let calls = inner.calls.get_or_create(&labels);
                // The exemplar is one call (value 1), the batch's last; an increment without
                // an exemplar clears it, so that one goes first.
                if n > 1 {
                    calls.inc_by(n - 1, None, None);
                }
                calls.inc_by(1, exemplar(&last.1), Some(timestamp(last.2)));
            }
            let totals = self.totals(&labels[0].1);
            totals.calls.fetch_add(n, Ordering::Relaxed);
            if s.error {
                totals.errors.fetch_add(n, Ordering::Relaxed);
            }
            let histogram = inner.durations.get_or_create_owned(&labels);
            // One exemplar per bucket per batch: the first trace seen in it.
            let mut exemplified = vec![false; inner.bounds.len() + 1];
            let mut sum_nanos = 0u64;
            for (seconds, trace_id, end) in &s.observations {
                let bucket = inner.bounds.partition_point(|b| b < seconds);
                totals.buckets[bucket].fetch_add(1, Ordering::Relaxed);
                sum_nanos = sum_nanos.saturating_add((seconds * 1e9) as u64);
                let (label, at) = if exemplified[bucket] {
                    (None, None)
                } else {
                    exemplified[bucket] = true;
                    (exemplar(trace_id), Some(timestamp(*end)))
                };
                histogram.observe(*seconds, label, at);
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

fn exemplar(trace_id: &[u8; 16]) -> Option<TraceLabel> {
    (trace_id != &[0u8; 16]).then(|| [("trace_id", hex(trace_id))])
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    s
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
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encode");
        out
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
}

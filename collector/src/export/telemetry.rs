//! The agent's own telemetry as OTLP metrics: what `/metrics` serves (host, process, log,
//! received-OTLP and self metrics), read from the registry as a structured
//! [`model::Snapshot`](crate::model::Snapshot), becomes one `ExportMetricsServiceRequest` per
//! round — counters as cumulative monotonic sums, gauges as gauges, histograms with their explicit
//! bounds, exemplars kept — under one resource (`service.name`,
//! `host.name`, `service.instance.id`).

use std::time::UNIX_EPOCH;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
pub use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Exemplar as OtlpExemplar, Gauge, Histogram, HistogramDataPoint, Metric,
    NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, exemplar, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use crate::model::{self, Family, Kind, Snapshot, Value};

/// A string attribute.
pub fn attr(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

fn attrs(labels: &[(String, String)]) -> Vec<KeyValue> {
    labels.iter().map(|(k, v)| attr(k, v)).collect()
}

fn otlp_unit(unit: &str) -> String {
    match unit {
        "seconds" => "s".into(),
        "bytes" => "By".into(),
        "ratio" => "1".into(),
        other => other.into(),
    }
}

fn number(labels: &[(String, String)], value: f64, start: u64, now: u64) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attrs(labels),
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..Default::default()
    }
}

/// An exemplar as OTLP carries it: `trace_id` / `span_id` labels (hex) become the ids, the
/// other labels its filtered attributes; without a timestamp it is stamped `now`.
fn otlp_exemplar(e: &model::Exemplar, now: u64) -> OtlpExemplar {
    let mut out = OtlpExemplar {
        time_unix_nano: e
            .timestamp
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(now, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        value: Some(exemplar::Value::AsDouble(e.value)),
        ..Default::default()
    };
    for (k, v) in &e.labels {
        let id = match k.as_str() {
            "trace_id" => hex_id::<16>(v),
            "span_id" => hex_id::<8>(v),
            _ => None,
        };
        match (k.as_str(), id) {
            ("trace_id", Some(id)) => out.trace_id = id,
            ("span_id", Some(id)) => out.span_id = id,
            _ => out.filtered_attributes.push(attr(k, v)),
        }
    }
    out
}

/// `N` bytes from `2N` hex digits, or `None`.
fn hex_id<const N: usize>(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16);
    s.chunks(2)
        .map(|p| Some((digit(p[0])? * 16 + digit(p[1])?) as u8))
        .collect()
}

/// Converts a snapshot's families into OTLP metrics. `start` is when the cumulative series
/// started (the agent's start), `now` the round's timestamp, both in Unix nanoseconds.
pub fn to_metrics(snapshot: &Snapshot, start: u64, now: u64) -> Vec<Metric> {
    let mut out = Vec::new();
    for f in &snapshot.families {
        if f.series.is_empty() {
            continue;
        }
        let base = |name: &str, data| Metric {
            name: name.to_owned(),
            description: f.help.clone(),
            unit: otlp_unit(&f.unit),
            data: Some(data),
            ..Default::default()
        };
        let data = match f.kind {
            Kind::Counter => metric::Data::Sum(Sum {
                data_points: counter_points(f, start, now),
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            }),
            Kind::Histogram => metric::Data::Histogram(Histogram {
                data_points: histogram_points(f, start, now),
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            }),
            Kind::Gauge | Kind::Unknown => metric::Data::Gauge(Gauge {
                data_points: f
                    .series
                    .iter()
                    .map(|s| number(&s.labels, s.value.number(), 0, now))
                    .collect(),
            }),
        };
        out.push(base(&f.name, data));
    }
    out
}

fn counter_points(f: &Family, start: u64, now: u64) -> Vec<NumberDataPoint> {
    f.series
        .iter()
        .map(|s| {
            let mut p = number(&s.labels, s.value.number(), start, now);
            if let Value::Counter {
                exemplar: Some(e), ..
            } = &s.value
            {
                p.exemplars.push(otlp_exemplar(e, now));
            }
            p
        })
        .collect()
}

fn histogram_points(f: &Family, start: u64, now: u64) -> Vec<HistogramDataPoint> {
    f.series
        .iter()
        .filter_map(|s| {
            let Value::Histogram(h) = &s.value else {
                return None;
            };
            let explicit_bounds: Vec<f64> = h
                .buckets
                .iter()
                .map(|b| b.upper_bound)
                .filter(|b| b.is_finite())
                .collect();
            // Cumulative counts to per-bucket counts; the last bucket is (last bound, +Inf).
            let mut bucket_counts = Vec::with_capacity(explicit_bounds.len() + 1);
            let mut prev = 0;
            for b in &h.buckets {
                bucket_counts.push(b.cumulative_count.saturating_sub(prev));
                prev = b.cumulative_count;
                if !b.upper_bound.is_finite() {
                    break;
                }
            }
            if bucket_counts.len() == explicit_bounds.len() {
                bucket_counts.push(h.count.saturating_sub(prev));
            }
            Some(HistogramDataPoint {
                attributes: attrs(&s.labels),
                start_time_unix_nano: start,
                time_unix_nano: now,
                count: h.count,
                sum: Some(h.sum),
                bucket_counts,
                explicit_bounds,
                exemplars: h
                    .buckets
                    .iter()
                    .filter_map(|b| b.exemplar.as_ref())
                    .map(|e| otlp_exemplar(e, now))
                    .collect(),
                ..Default::default()
            })
        })
        .collect()
}

/// One export request of the agent's telemetry under `resource`.
pub fn request(
    snapshot: &Snapshot,
    resource: &[KeyValue],
    start: u64,
    now: u64,
) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: resource.to_vec(),
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "sidelight".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                metrics: to_metrics(snapshot, start, now),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family as PFamily;
    use prometheus_client::metrics::gauge::Gauge as PGauge;
    use prometheus_client::metrics::histogram::Histogram as PHistogram;
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::model::snapshot;

    #[test]
    fn counters_gauges_and_histograms_convert() {
        let mut r = Registry::default();
        let c: PFamily<[(&str, &str); 1], Counter> = PFamily::default();
        c.get_or_create(&[("cpu", "0")]).inc_by(5);
        c.get_or_create(&[("cpu", "1")]).inc_by(7);
        r.register("node_cpu_seconds", "CPU", c);
        let g = PGauge::<i64>::default();
        g.set(3);
        r.register("node_load1", "load", g);
        let h: PFamily<[(&str, &str); 1], PHistogram> =
            PFamily::new_with_constructor(|| PHistogram::new([0.1, 1.0]));
        for v in [0.05, 0.5, 0.6, 5.0] {
            h.get_or_create(&[("collector", "host")]).observe(v);
        }
        r.register("dur_seconds", "d", h);
        let snap = snapshot(&r).expect("snapshot");
        let req = request(&snap, &[attr("service.name", "sidelight")], 10, 20);
        let rm = &req.resource_metrics[0];
        assert_eq!(
            rm.resource.as_ref().map(|r| r.attributes.clone()),
            Some(vec![attr("service.name", "sidelight")])
        );
        let metrics = &rm.scope_metrics[0].metrics;
        assert_eq!(metrics.len(), 3);
        let Some(metric::Data::Sum(sum)) = &metrics[0].data else {
            panic!("sum")
        };
        assert_eq!(metrics[0].name, "node_cpu_seconds");
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        assert_eq!(sum.data_points.len(), 2);
        // Label sets come out of prometheus-client in hash order.
        let cpu1 = sum
            .data_points
            .iter()
            .find(|p| p.attributes == vec![attr("cpu", "1")])
            .expect("cpu 1");
        assert_eq!(cpu1.value, Some(number_data_point::Value::AsDouble(7.0)));
        assert_eq!(
            (
                sum.data_points[0].start_time_unix_nano,
                sum.data_points[0].time_unix_nano
            ),
            (10, 20)
        );
        let Some(metric::Data::Gauge(g)) = &metrics[1].data else {
            panic!("gauge")
        };
        assert_eq!(
            g.data_points[0].value,
            Some(number_data_point::Value::AsDouble(3.0))
        );
        let Some(metric::Data::Histogram(h)) = &metrics[2].data else {
            panic!("histogram")
        };
        let p = &h.data_points[0];
        assert_eq!(p.explicit_bounds, vec![0.1, 1.0]);
        assert_eq!(p.bucket_counts, vec![1, 2, 1]);
        assert_eq!(p.count, 4);
        assert_eq!(p.sum, Some(6.15));
        assert_eq!(p.attributes, vec![attr("collector", "host")]);
        // Items are data points: 2 + 1 + 1.
        assert_eq!(crate::pipeline::Payload::Metrics(req).items(), 4);
    }

    #[test]
    fn exemplars_become_otlp_exemplars() {
        use prometheus_client::metrics::exemplar::CounterWithExemplar;
        let mut r = Registry::default();
        let c: CounterWithExemplar<Vec<(String, String)>, f64> = CounterWithExemplar::default();
        c.inc_by(
            3.0,
            Some(vec![
                ("trace_id".into(), "0af7651916cd43dd8448eb211c80319c".into()),
                ("span_id".into(), "b7ad6b7169203331".into()),
                ("shop".into(), "main".into()),
            ]),
            None,
        );
        r.register("orders", "Orders", c);
        let snap = snapshot(&r).expect("snapshot");
        let metrics = to_metrics(&snap, 10, 20);
        let Some(metric::Data::Sum(sum)) = &metrics[0].data else {
            panic!("sum")
        };
        let e = &sum.data_points[0].exemplars[0];
        assert_eq!(
            e.trace_id,
            [
                0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80,
                0x31, 0x9c
            ]
        );
        assert_eq!(e.span_id, [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]);
        assert_eq!(e.filtered_attributes, vec![attr("shop", "main")]);
        assert_eq!(e.value, Some(exemplar::Value::AsDouble(3.0)));
        assert_eq!(
            e.time_unix_nano, 20,
            "no timestamp: stamped with the round's time"
        );
        assert_eq!(hex_id::<8>("b7ad6b716920333"), None, "odd length");
        assert_eq!(hex_id::<8>("b7ad6b716920333x"), None, "not hex");
    }
}

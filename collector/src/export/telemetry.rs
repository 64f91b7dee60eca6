//! The agent's own telemetry as OTLP metrics: what `/metrics` serves (host, process, log and
//! self metrics), parsed from the registry's OpenMetrics encoding, becomes one
//! `ExportMetricsServiceRequest` per round — counters as cumulative monotonic sums, gauges as
//! gauges, histograms with their explicit bounds — under one resource (`service.name`,
//! `host.name`, `service.instance.id`).

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
pub use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::openmetrics::{Family, Kind, Sample};

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

/// Converts parsed families into OTLP metrics. `start` is when the cumulative series started
/// (the agent's start), `now` the round's timestamp, both in Unix nanoseconds.
pub fn to_metrics(families: &[Family], start: u64, now: u64) -> Vec<Metric> {
    let mut out = Vec::new();
    for f in families {
        let base = |name: &str, data| Metric {
            name: name.to_owned(),
            description: f.help.clone(),
            unit: otlp_unit(&f.unit),
            data: Some(data),
            ..Default::default()
        };
        match f.kind {
            Kind::Counter => {
                let total = format!("{}_total", f.name);
                let points: Vec<NumberDataPoint> = f
                    .samples
                    .iter()
                    .filter(|s| s.name == total || s.name == f.name)
                    .map(|s| number(&s.labels, s.value, start, now))
                    .collect();
                if !points.is_empty() {
                    out.push(base(
                        &f.name,
                        metric::Data::Sum(Sum {
                            data_points: points,
                            aggregation_temporality: AggregationTemporality::Cumulative as i32,
                            is_monotonic: true,
                        }),
                    ));
                }
            }
            Kind::Histogram => {
                let points = histogram_points(f, start, now);
                if !points.is_empty() {
                    out.push(base(
                        &f.name,
                        metric::Data::Histogram(Histogram {
                            data_points: points,
                            aggregation_temporality: AggregationTemporality::Cumulative as i32,
                        }),
                    ));
                }
            }
            Kind::Gauge | Kind::Other => {
                // Gauges have one sample name; other types (info, summary, ...) are sent as one
                // gauge per sample name, as Prometheus would store them.
                let mut by_name: BTreeMap<&str, Vec<NumberDataPoint>> = BTreeMap::new();
                for s in f.samples.iter().filter(|s| !s.name.ends_with("_created")) {
                    by_name
                        .entry(s.name.as_str())
                        .or_default()
                        .push(number(&s.labels, s.value, 0, now));
                }
                for (name, points) in by_name {
                    out.push(base(
                        name,
                        metric::Data::Gauge(Gauge {
                            data_points: points,
                        }),
                    ));
                }
            }
        }
    }
    out
}

fn histogram_points(f: &Family, start: u64, now: u64) -> Vec<HistogramDataPoint> {
    #[derive(Default)]
    struct Acc {
        buckets: Vec<(f64, f64)>,
        sum: f64,
        count: f64,
    }
    let bucket = format!("{}_bucket", f.name);
    let sum = format!("{}_sum", f.name);
    let count = format!("{}_count", f.name);
    let mut series: Vec<(Vec<(String, String)>, Acc)> = Vec::new();
    let key_of = |s: &Sample| -> Vec<(String, String)> {
        s.labels
            .iter()
            .filter(|(k, _)| k != "le")
            .cloned()
            .collect()
    };
    for s in &f.samples {
        let key = key_of(s);
        let idx = match series.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                series.push((key, Acc::default()));
                series.len() - 1
            }
        };
        let acc = &mut series[idx].1;
        if s.name == bucket {
            let le = s
                .labels
                .iter()
                .find(|(k, _)| k == "le")
                .and_then(|(_, v)| match v.as_str() {
                    "+Inf" | "Inf" => Some(f64::INFINITY),
                    v => v.parse().ok(),
                });
            if let Some(le) = le {
                acc.buckets.push((le, s.value));
            }
        } else if s.name == sum {
            acc.sum = s.value;
        } else if s.name == count {
            acc.count = s.value;
        }
    }
    series
        .into_iter()
        .map(|(labels, mut acc)| {
            acc.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let explicit_bounds: Vec<f64> = acc
                .buckets
                .iter()
                .map(|b| b.0)
                .filter(|b| b.is_finite())
                .collect();
            // Cumulative counts to per-bucket counts; the last bucket is (last bound, +Inf).
            let mut bucket_counts = Vec::with_capacity(explicit_bounds.len() + 1);
            let mut prev = 0.0;
            for (le, c) in &acc.buckets {
                bucket_counts.push((c - prev).max(0.0) as u64);
                prev = *c;
                if !le.is_finite() {
                    break;
                }
            }
            if bucket_counts.len() == explicit_bounds.len() {
                bucket_counts.push((acc.count - prev).max(0.0) as u64);
            }
            HistogramDataPoint {
                attributes: attrs(&labels),
                start_time_unix_nano: start,
                time_unix_nano: now,
                count: acc.count as u64,
                sum: Some(acc.sum),
                bucket_counts,
                explicit_bounds,
                ..Default::default()
            }
        })
        .collect()
}

/// One export request of the agent's telemetry under `resource`.
pub fn request(
    families: &[Family],
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
                metrics: to_metrics(families, start, now),
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
    use crate::export::openmetrics::snapshot;

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
        let fams = snapshot(&r).expect("parse");
        let req = request(&fams, &[attr("service.name", "sidelight")], 10, 20);
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
}

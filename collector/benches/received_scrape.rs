//! A `/metrics` scrape with received OTLP metrics held: the exposition the agent writes for
//! 5,000 received series shaped as `bench/otlp_metrics_send.py` sends them (two SDK instances,
//! 20 families each a quarter counters, explicit-bucket histograms with the Python SDK's default
//! bounds, up-down counters and gauges; labels `route`, `code` plus the resource and scope
//! labels), in both formats.
//!
//! Reports per format: body size, sample lines, and p50 / p99 / max of the encode (what the
//! `/metrics` handler does before the body goes to the socket); then the same for the structured
//! snapshot remote write and the rule evaluator read, and for the receive path (prepare + record
//! one export of every series, once they are held).
//!
//! The receive path is timed twice: from decoded requests (prepare + record, as before) and from
//! the protobuf bytes the SDK sends (prost's decode + prepare + record, what a request costs
//! the receiver past HTTP/2 and gRPC framing), with cumulative and with delta temporality.
//!
//! Run: `cargo bench -p sidelight-collector --bench received_scrape`
//! Env: `ROUNDS=200` encodes per format (`ROUNDS=5` under `valgrind --tool=callgrind`),
//! `SERIES=5000`, `ONLY=text|openmetrics|gzip|prepare|cumulative|delta|snapshot` (one row, for
//! instruction counts: run it with two `ROUNDS` and take the difference; the receive rows then
//! send the same requests every round, so the difference holds no request building).

use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prometheus_client::registry::Registry;
use prost::Message;
use sidelight_collector::exposition::{self, Format};
use sidelight_collector::metrics::LabelCaps;
use sidelight_collector::received_metrics::{ReceivedMetrics, ReceivedSettings};

const FAMILIES: usize = 20;
const SENDERS: usize = 2;
/// The Python SDK's default explicit bucket bounds.
const BOUNDS: [f64; 15] = [
    0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 7500.0,
    10000.0,
];

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

/// One export of one SDK instance after `round` updates of every series.
fn request(
    instance: &str,
    per_family: usize,
    round: u64,
    temporality: AggregationTemporality,
) -> ExportMetricsServiceRequest {
    // A delta export carries one interval's worth: one observation per series.
    let round = if temporality == AggregationTemporality::Delta {
        1
    } else {
        round
    };
    let now = 1_700_000_000_000_000_000 + round * 500_000_000;
    let attrs = |i: usize| vec![kv("route", &format!("/r{i}")), kv("code", "200")];
    let number = |i: usize, v: f64| NumberDataPoint {
        attributes: attrs(i),
        start_time_unix_nano: 1_700_000_000_000_000_000,
        time_unix_nano: now,
        value: Some(number_data_point::Value::AsDouble(v)),
        ..Default::default()
    };
    let metrics = (0..FAMILIES)
        .map(|f| {
            let (name, unit, data) = match f % 4 {
                0 => (
                    format!("bench.requests.{f}"),
                    "{request}",
                    Data::Sum(Sum {
                        data_points: (0..per_family).map(|i| number(i, round as f64)).collect(),
                        aggregation_temporality: temporality as i32,
                        is_monotonic: true,
                    }),
                ),
                1 => (
                    format!("bench.duration.{f}"),
                    "s",
                    Data::Histogram(Histogram {
                        data_points: (0..per_family)
                            .map(|i| {
                                let mut counts = vec![0u64; BOUNDS.len() + 1];
                                // 0.01 * (i % 50): the first bucket for i % 50 == 0, else (0, 5].
                                counts[usize::from(i % 50 != 0)] = round;
                                HistogramDataPoint {
                                    attributes: attrs(i),
                                    start_time_unix_nano: 1_700_000_000_000_000_000,
                                    time_unix_nano: now,
                                    count: round,
                                    sum: Some(0.01 * (i % 50) as f64 * round as f64),
                                    bucket_counts: counts,
                                    explicit_bounds: BOUNDS.to_vec(),
                                    min: Some(0.01 * (i % 50) as f64),
                                    max: Some(0.01 * (i % 50) as f64),
                                    ..Default::default()
                                }
                            })
                            .collect(),
                        aggregation_temporality: temporality as i32,
                    }),
                ),
                2 => (
                    format!("bench.inflight.{f}"),
                    "{request}",
                    Data::Sum(Sum {
                        data_points: (0..per_family)
                            .map(|i| number(i, if i % 2 == 1 { 1.0 } else { -1.0 } * round as f64))
                            .collect(),
                        aggregation_temporality: temporality as i32,
                        is_monotonic: false,
                    }),
                ),
                _ => (
                    format!("bench.temperature.{f}"),
                    "Cel",
                    Data::Gauge(Gauge {
                        data_points: (0..per_family).map(|i| number(i, round as f64)).collect(),
                    }),
                ),
            };
            Metric {
                name,
                unit: unit.into(),
                data: Some(data),
                ..Default::default()
            }
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    kv("telemetry.sdk.language", "python"),
                    kv("telemetry.sdk.name", "opentelemetry"),
                    kv("telemetry.sdk.version", "1.39.1"),
                    kv("service.name", "bench-metrics"),
                    kv("service.instance.id", instance),
                ],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "bench.metrics".into(),
                    version: "1.0".into(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn stats(mut times: Vec<Duration>) -> (f64, f64, f64) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let pct = |p: f64| ms(times[((times.len() as f64 - 1.0) * p).round() as usize]);
    (pct(0.5), pct(0.99), ms(times[times.len() - 1]))
}

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let series: usize = std::env::var("SERIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let per_family = (series / SENDERS / FAMILIES).max(1);
    let caps = Arc::new(LabelCaps::new(2000));
    let received = ReceivedMetrics::new(ReceivedSettings::default(), caps.clone());
    let mut registry = Registry::default();
    caps.register(&mut registry);
    received.register(&mut registry);
    let only = std::env::var("ONLY").unwrap_or_default();
    let cumulative = AggregationTemporality::Cumulative;
    // Two exports per instance: the series exist and hold values, as after a few SDK intervals.
    for round in [1, 2] {
        for s in 0..SENDERS {
            let r = request(&format!("b{}", s + 1), per_family, round, cumulative);
            received.record(received.prepare(&r));
        }
    }

    println!(
        "received series: {} ({} per family, {FAMILIES} families × {SENDERS} instances)",
        received.series(),
        per_family
    );
    println!("| what | body KiB | samples | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    let run = |row: &str| only.is_empty() || only == row;
    for format in [Format::Text, Format::OpenMetrics] {
        let row = if format == Format::Text {
            "text"
        } else {
            "openmetrics"
        };
        let gzip = format == Format::OpenMetrics && run("gzip");
        if !(run(row) || gzip) {
            continue;
        }
        let encodes = if run(row) { rounds } else { 1 };
        let mut times = Vec::with_capacity(encodes);
        let mut encoded = None;
        for _ in 0..encodes {
            let t = Instant::now();
            // What the handler serves: the body in its pieces, not joined.
            encoded = Some(exposition::encode_body(&registry, format).expect("encode"));
            times.push(t.elapsed());
        }
        let body = encoded
            .map(exposition::Body::into_string)
            .unwrap_or_default();
        let samples = body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count();
        let (p50, p99, max) = stats(times);
        println!(
            "| encode {format:?} | {} | {samples} | {p50:.2} | {p99:.2} | {max:.2} |",
            body.len() / 1024
        );
        if gzip {
            // What serving it gzipped adds (flate2's fastest level, as the `/metrics` handler
            // does for scrapers that send `Accept-Encoding: gzip`).
            let mut times = Vec::with_capacity(rounds);
            let mut gz = Vec::new();
            for _ in 0..rounds.div_ceil(4) {
                let t = Instant::now();
                let mut e = flate2::write::GzEncoder::new(
                    Vec::with_capacity(body.len() / 8),
                    flate2::Compression::fast(),
                );
                std::io::Write::write_all(&mut e, body.as_bytes()).expect("gzip");
                gz = e.finish().expect("gzip");
                times.push(t.elapsed());
            }
            let (p50, p99, max) = stats(times);
            println!(
                "| gzip (fast) of the OpenMetrics body | {} | - | {p50:.2} | {p99:.2} | {max:.2} |",
                gz.len() / 1024
            );
        }
    }
    let points = per_family * FAMILIES * SENDERS;
    // With ONLY, every round sends the same requests (built once): cumulative points replace the
    // held ones, deltas add, the same work each round.
    let same = !only.is_empty();
    // The receive path with the series held: one export of every series (both instances).
    let mut times = Vec::with_capacity(rounds);
    let built: Vec<_> = (0..SENDERS)
        .map(|s| request(&format!("b{}", s + 1), per_family, 3, cumulative))
        .collect();
    for round in 0..rounds as u64 {
        if !run("prepare") {
            break;
        }
        let fresh: Vec<_>;
        let requests = if same {
            &built
        } else {
            fresh = (0..SENDERS)
                .map(|s| request(&format!("b{}", s + 1), per_family, 3 + round, cumulative))
                .collect();
            &fresh
        };
        let t = Instant::now();
        for r in requests {
            received.record(received.prepare(r));
        }
        times.push(t.elapsed());
    }
    if run("prepare") {
        let (p50, p99, max) = stats(times);
        println!(
            "| prepare + record one export of every series | - | {points} points | {p50:.2} | {p99:.2} | {max:.2} |"
        );
    }
    // The same from the bytes: decode, prepare, record.
    for temporality in [cumulative, AggregationTemporality::Delta] {
        let row = if temporality == cumulative {
            "cumulative"
        } else {
            "delta"
        };
        if !run(row) {
            continue;
        }
        let mut times = Vec::with_capacity(rounds);
        let encode = |round: u64| -> Vec<Vec<u8>> {
            (0..SENDERS)
                .map(|s| {
                    request(&format!("b{}", s + 1), per_family, round, temporality).encode_to_vec()
                })
                .collect()
        };
        let built = encode(3 + rounds as u64);
        for round in 0..rounds as u64 {
            let fresh;
            let requests = if same {
                &built
            } else {
                fresh = encode(3 + rounds as u64 + round);
                &fresh
            };
            let t = Instant::now();
            for bytes in requests {
                let r = ExportMetricsServiceRequest::decode(&bytes[..]).expect("decode");
                received.record(received.prepare(&r));
            }
            times.push(t.elapsed());
        }
        let (p50, p99, max) = stats(times);
        println!(
            "| decode + prepare + record, {temporality:?} | - | {points} points | {p50:.2} | {p99:.2} | {max:.2} |"
        );
    }
    if !run("snapshot") {
        return;
    }
    let mut times = Vec::with_capacity(rounds);
    let mut samples = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        let snap = sidelight_collector::model::snapshot(&registry).expect("snapshot");
        times.push(t.elapsed());
        samples = snap.samples().count();
    }
    let (p50, p99, max) = stats(times);
    println!("| model::snapshot | - | {samples} | {p50:.2} | {p99:.2} | {max:.2} |");
}

//! Times one alert-evaluation cycle with 200 Prometheus rules over 12,000 series, the way the
//! agent runs it (`Alerting::cycle(now)`: one walk of the `/metrics` registry's structured model
//! — the span-metrics and received-metrics stores read in place, the rest through
//! `prometheus-client`'s encoder —
//! appended to the rules' bounded history, every due group evaluated in order, the alerts
//! mirrored into the notification pipeline, grouped and persisted), and the parts alone (an
//! owned snapshot of the model; the same registry through the protobuf encoder alone, for
//! comparison; the rule groups' append + evaluation, `PromRules::cycle`). The history is
//! warmed first with 1 h 15 min of samples (300 evaluations, 15 s apart), so the
//! full-resolution windows are full and the downsampled tier is in use. Run with
//! `cargo bench -p sidelight --bench alert_eval` (`cargo test --benches` runs a small smoke
//! version whose figures mean nothing). The rules crate's own figure, without the registry and
//! the pipeline, is `cargo bench -p sidelight-rules --bench rule_eval`.
//!
//! Series, held the way the agent holds them: the span metrics of 2,000 span kinds
//! (`SpanMetrics`, fed OTLP spans: 40 services × 25 span names × UNSET/ERROR, each a
//! `traces_span_metrics_calls_total` counter and a `traces_span_metrics_duration_seconds`
//! histogram with the default 16 buckets), and 100 counter families × 40 series and 100 gauge
//! families × 40 series received over OTLP (`ReceivedMetrics`, fed an OTLP metrics request every
//! step: cumulative monotonic sums and gauges); 12,000 series in all. Rules (as in `rule_eval`):
//! 4 error-ratio recording rules over the span metrics (5 m, 30 m, 1 h, 6 h), 36 multi-window
//! burn-rate alerts reading them, 80 thresholds on the gauges (`for: 1m`) and 80 rates summed by
//! service. A few of each fire (thresholds crossed in one family in ten, rates in one in twenty,
//! the burn rate of one service).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prometheus_client::registry::Registry;
use sidelight::alerting::Alerting;
use sidelight::alerting::alert::State;
use sidelight::alerting::prom::{External, PromRules, RecordedCollector};
use sidelight_collector::metrics::LabelCaps;
use sidelight_collector::received_metrics::{ReceivedMetrics, ReceivedSettings};
use sidelight_collector::spanmetrics::{SpanMetrics, SpanMetricsSettings};

const SERVICES: usize = 40;
const SPANS: usize = 25;
const FAMILIES: usize = 100;
const PER_FAMILY: usize = 40;
const STEP: i64 = 15_000;

/// The agent's stores of the bench's series, registered as the agent registers them.
struct Series {
    spans: SpanMetrics,
    received: ReceivedMetrics,
    /// Each received counter series' running total.
    totals: Vec<Vec<f64>>,
}

fn registry() -> (Registry, Series) {
    let mut r = Registry::default();
    let caps = Arc::new(LabelCaps::new(1000));
    let spans = SpanMetrics::new(
        &SpanMetricsSettings {
            max_label_sets: 4 * SERVICES * SPANS,
            ..SpanMetricsSettings::default()
        },
        &caps,
    );
    spans.register(&mut r);
    let received = ReceivedMetrics::new(
        ReceivedSettings {
            // Longer than any run (the bench's clock is not the store's).
            expiry: Duration::from_secs(24 * 3600),
            max_series: 4 * FAMILIES * PER_FAMILY,
            max_label_sets: 1000,
        },
        caps.clone(),
    );
    received.register(&mut r);
    caps.register(&mut r);
    (
        r,
        Series {
            spans,
            received,
            totals: vec![vec![0.0; PER_FAMILY]; FAMILIES],
        },
    )
}

fn kv(k: &str, v: String) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v)),
        }),
        ..Default::default()
    }
}

fn span(n: u64, name: &str, status: StatusCode, millis: u64) -> Span {
    let start = 1_700_000_000_000_000_000u64 + n * 1_000_000;
    let mut trace_id = vec![0xab; 16];
    trace_id[..8].copy_from_slice(&n.to_be_bytes());
    Span {
        trace_id,
        span_id: n.to_be_bytes().to_vec(),
        name: name.into(),
        kind: SpanKind::Server as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start + millis * 1_000_000,
        status: Some(Status {
            code: status as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn point(v: f64, i: usize) -> NumberDataPoint {
    NumberDataPoint {
        attributes: vec![
            kv("instance", format!("i{i}")),
            kv("service", format!("svc{}", i % 10)),
        ],
        time_unix_nano: 1,
        value: Some(number_data_point::Value::AsDouble(v)),
        ..Default::default()
    }
}

/// Advances every series by one evaluation step, as OTLP requests. Each span kind gets two
/// UNSET calls a step; service 0 fails one call a step (its SLO burns), the others one call
/// every 100 steps (and one at the first step, so that every series exists). Counter series i
/// grows by i % 7 per step (up to 0.4/s; four series per service), gauge i of family f is
/// i * 3 % 100 (above 90 for three instances).
fn advance(s: &mut Series, step: u64) {
    let mut n = step * 100_000;
    let mut traces = ExportTraceServiceRequest::default();
    for svc in 0..SERVICES {
        let mut spans = Vec::new();
        for r in 0..SPANS {
            let name = format!("GET /r{r}");
            for _ in 0..2 {
                n += 1;
                spans.push(span(n, &name, StatusCode::Unset, 5 + (n % 50)));
            }
            if svc == 0 || step == 1 || step.is_multiple_of(100) {
                n += 1;
                spans.push(span(n, &name, StatusCode::Error, 300));
            }
        }
        traces.resource_spans.push(ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", format!("svc{svc}"))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    s.spans.record(s.spans.prepare(&traces));

    let mut metrics = Vec::new();
    for f in 0..FAMILIES {
        let totals = &mut s.totals[f];
        let counters = (0..PER_FAMILY)
            .map(|i| {
                totals[i] += (i % 7) as f64;
                point(totals[i], i)
            })
            .collect();
        metrics.push(Metric {
            name: format!("bench.counter.{f}"),
            data: Some(Data::Sum(Sum {
                data_points: counters,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            })),
            ..Default::default()
        });
        let gauges = (0..PER_FAMILY)
            .map(|i| point((i * 3 % 100) as f64, i))
            .collect();
        metrics.push(Metric {
            name: format!("bench.gauge.{f}"),
            data: Some(Data::Gauge(Gauge {
                data_points: gauges,
            })),
            ..Default::default()
        });
    }
    let request = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "bench".to_owned())],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    s.received.record(s.received.prepare(&request));
}

/// The 200 rules, in the rule-file format (the groups under `alerts.groups`).
fn rules_yaml() -> String {
    let mut y = String::from("- name: slo-ratios\n  rules:\n");
    for w in ["5m", "30m", "1h", "6h"] {
        let _ = write!(
            y,
            "  - record: service_name:error_ratio:rate{w}\n    expr: |\n      sum by (service_name) (rate(traces_span_metrics_calls_total{{status_code=\"STATUS_CODE_ERROR\"}}[{w}]))\n      /\n      sum by (service_name) (rate(traces_span_metrics_calls_total[{w}]))\n"
        );
    }
    y.push_str("- name: slo-burn\n  rules:\n");
    for s in 0..36 {
        let _ = write!(
            y,
            "  - alert: Burn{s}\n    expr: |\n      service_name:error_ratio:rate5m{{service_name=\"svc{s}\"}} > 14.4 * 0.001\n      and service_name:error_ratio:rate1h{{service_name=\"svc{s}\"}} > 14.4 * 0.001\n      or service_name:error_ratio:rate30m{{service_name=\"svc{s}\"}} > 6 * 0.001\n      and service_name:error_ratio:rate6h{{service_name=\"svc{s}\"}} > 6 * 0.001\n    labels:\n      severity: critical\n    annotations:\n      summary: '{{{{ $labels.service_name }}}} burns {{{{ $value | humanizePercentage }}}}'\n"
        );
    }
    y.push_str("- name: thresholds\n  rules:\n");
    for f in 0..80 {
        let _ = write!(
            y,
            "  - alert: Gauge{f}\n    expr: bench_gauge_{f} > {}\n    for: 1m\n    labels:\n      severity: warning\n",
            if f % 10 == 0 { 90 } else { 1000 }
        );
    }
    y.push_str("- name: rates\n  rules:\n");
    for f in 0..80 {
        let _ = write!(
            y,
            "  - alert: Rate{f}\n    expr: sum by (service) (rate(bench_counter_{f}_total[5m])) > {}\n",
            if f % 20 == 1 { 0.5 } else { 1e9 }
        );
    }
    y
}

fn config(dir: &std::path::Path) -> sidelight::config::Config {
    let mut y = String::from(
        "alerts:\n  evaluation_interval: 15s\n  max_series: 20000\n  group_wait: 0s\n  groups:\n",
    );
    for l in rules_yaml().lines() {
        let _ = writeln!(y, "    {l}");
    }
    match sidelight::config::load_str(&y, "bench", dir, &HashMap::<String, String>::new()) {
        Ok(c) => c,
        Err(e) => panic!("bench config: {e}"),
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// One measured cycle as the agent runs it (a function of its own, so that
/// `valgrind --tool=callgrind --toggle-collect='*measured_*'` counts the measured cycles alone).
#[inline(never)]
fn measured_cycle(rt: &tokio::runtime::Runtime, alerting: &Alerting, now: i64) {
    rt.block_on(alerting.cycle(now));
}

/// The snapshot of the registry, measured.
#[inline(never)]
fn measured_snapshot(reg: &Registry) -> sidelight_collector::model::Snapshot {
    sidelight_collector::model::snapshot(reg).expect("snapshot")
}

/// The same registry through `prometheus-client`'s protobuf encoder alone (what the model read
/// every collector through before the stores walked themselves), measured for comparison.
#[inline(never)]
fn measured_encoder(reg: &Registry) -> usize {
    prometheus_client::encoding::prometheus_protobuf::encode(reg)
        .expect("encode")
        .len()
}

/// Append + evaluate, measured.
#[inline(never)]
fn measured_rules(
    p: &mut PromRules,
    now: i64,
    snapshot: &sidelight_collector::model::Snapshot,
    ext: &External,
) {
    let out = p.cycle(now, Some(snapshot), STEP, ext);
    assert!(out.errors.is_empty(), "rule errors: {:?}", out.errors);
    black_box(out);
}

/// The value of option `--name N`, if given.
fn option(name: &str) -> Option<usize> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == name)?;
    match args.get(i + 1).map(|v| v.parse()) {
        Some(Ok(n)) => Some(n),
        _ => panic!("{name} takes a number"),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs a small smoke version.
    // `--warm N` and `--runs N` change the warm-up and the measured cycles (for callgrind);
    // `--no-parts` skips timing the parts alone.
    let full = std::env::args().any(|a| a == "--bench");
    let (warm, runs) = if full { (300, 40) } else { (6, 2) };
    let warm = option("--warm").unwrap_or(warm);
    let runs = option("--runs").unwrap_or(runs).max(1);
    let parts = !std::env::args().any(|a| a == "--no-parts");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path());
    let acfg = cfg.alerting.clone().expect("alerting");
    let n_rules: usize = acfg.rule_groups.iter().map(|g| g.rules.len()).sum();
    assert_eq!(n_rules, 200);
    let (reg, mut series) = registry();
    let reg = Arc::new(reg);
    let alerting = rt
        .block_on(async {
            let db = sidelight::store::StoreHandle::open(dir.path())
                .await
                .expect("store");
            Alerting::open(acfg.clone(), db, None).await
        })
        .expect("open");
    alerting.set_registry(reg.clone());
    let mut now: i64 = 1_700_000_000_000;
    let mut step = 0u64;
    let t = Instant::now();
    for _ in 0..warm {
        step += 1;
        advance(&mut series, step);
        now += STEP;
        rt.block_on(alerting.cycle(now));
    }
    eprintln!("warm-up: {warm} cycles in {:?}", t.elapsed());
    let snapshot = sidelight_collector::model::snapshot(&reg).expect("snapshot");
    let n_series = snapshot.samples().count();

    // The whole cycle, as the agent runs it.
    let mut cycle = Vec::new();
    for _ in 0..runs {
        step += 1;
        advance(&mut series, step);
        now += STEP;
        let t = Instant::now();
        measured_cycle(&rt, &alerting, now);
        cycle.push(t.elapsed());
    }
    let firing = alerting
        .alerts()
        .iter()
        .filter(|a| a.state == State::Firing)
        .count();

    // The parts: snapshot the registry; append it and evaluate the groups (a second evaluator
    // over the same registry, warmed the same way).
    let mut snap = Vec::new();
    let mut encoder = Vec::new();
    let mut rules = Vec::new();
    let mut p = PromRules::new(acfg.max_series, RecordedCollector::default());
    p.set_groups(acfg.rule_groups.clone());
    let ext = External::default();
    let mut pnow = 1_700_000_000_000i64;
    for i in 0..if parts { warm + runs } else { 0 } {
        step += 1;
        advance(&mut series, step);
        pnow += STEP;
        if i < warm {
            let snapshot = sidelight_collector::model::snapshot(&reg).expect("snapshot");
            let out = p.cycle(pnow, Some(&snapshot), STEP, &ext);
            assert!(out.errors.is_empty(), "rule errors: {:?}", out.errors);
            continue;
        }
        let t = Instant::now();
        let snapshot = measured_snapshot(&reg);
        let t1 = Instant::now();
        measured_rules(&mut p, pnow, &snapshot, &ext);
        let t2 = Instant::now();
        snap.push(t1 - t);
        let t3 = Instant::now();
        black_box(measured_encoder(&reg));
        encoder.push(t3.elapsed());
        rules.push(t2 - t1);
    }
    let stats = p.stats();
    println!(
        "rules {n_rules}  series {n_series}  kept in history {}  firing {firing}",
        stats.series
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "full cycle (Alerting::cycle): median {:.2} ms  min {:.2}  max {:.2}  ({runs} runs)",
        ms(median(cycle.clone())),
        ms(*cycle.iter().min().expect("runs")),
        ms(*cycle.iter().max().expect("runs")),
    );
    for (name, v) in [
        ("snapshot registry", snap),
        ("protobuf encoder alone", encoder),
        ("append + evaluate 200 rules", rules),
    ] {
        if v.is_empty() {
            continue;
        }
        println!("  {name:<28} median {:.2} ms", ms(median(v)));
    }
}

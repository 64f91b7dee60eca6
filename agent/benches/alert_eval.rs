//! Times one alert-evaluation cycle with 200 Prometheus rules over 10,000 series, the way the
//! agent runs it (`Alerting::cycle(now)`: a structured snapshot of the `/metrics` registry, its
//! samples appended to the rules' bounded history, every due group evaluated in order, the
//! alerts mirrored into the notification pipeline, grouped and persisted), and the parts alone
//! (the snapshot; the rule groups' append + evaluation, `PromRules::cycle`). The history is
//! warmed first with 1 h 15 min of samples (300 evaluations, 15 s apart), so the
//! full-resolution windows are full and the downsampled tier is in use. Run with
//! `cargo bench -p sidelight --bench alert_eval` (`cargo test --benches` runs a small smoke
//! version whose figures mean nothing). The rules crate's own figure, without the registry and
//! the pipeline, is `cargo bench -p sidelight-rules --bench rule_eval`.
//!
//! Series: 2,000 span-metric call counters (40 services × 25 spans × UNSET/ERROR), 100 counter
//! families × 40 series and 100 gauge families × 40 series. Rules (as in `rule_eval`): 4
//! error-ratio recording rules over the span metrics (5 m, 30 m, 1 h, 6 h), 36 multi-window
//! burn-rate alerts reading them, 80 thresholds on the gauges (`for: 1m`) and 80 rates summed
//! by service. A few of each fire (thresholds crossed in one family in ten, rates in one in
//! twenty, the burn rate of one service).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sidelight::alerting::Alerting;
use sidelight::alerting::alert::State;
use sidelight::alerting::prom::{External, PromRules, RecordedCollector};

type Labels = Vec<(String, String)>;

const SERVICES: usize = 40;
const SPANS: usize = 25;
const FAMILIES: usize = 100;
const PER_FAMILY: usize = 40;
const STEP: i64 = 15_000;

struct Series {
    calls: Family<Labels, Counter>,
    counters: Vec<Family<Labels, Counter>>,
    gauges: Vec<Family<Labels, Gauge>>,
}

fn registry() -> (Registry, Series) {
    let mut r = Registry::default();
    let calls = Family::<Labels, Counter>::default();
    r.register("traces_span_metrics_calls", "span calls", calls.clone());
    let mut counters = Vec::new();
    let mut gauges = Vec::new();
    for f in 0..FAMILIES {
        let c = Family::<Labels, Counter>::default();
        r.register(format!("bench_counter_{f}"), "bench", c.clone());
        counters.push(c);
        let g = Family::<Labels, Gauge>::default();
        r.register(format!("bench_gauge_{f}"), "bench", g.clone());
        gauges.push(g);
    }
    (
        r,
        Series {
            calls,
            counters,
            gauges,
        },
    )
}

fn span_labels(s: usize, span: usize, status: &str) -> Labels {
    vec![
        ("service_name".into(), format!("svc{s}")),
        ("span_name".into(), format!("GET /r{span}")),
        ("span_kind".into(), "SPAN_KIND_SERVER".into()),
        ("status_code".into(), status.into()),
    ]
}

fn inst_labels(i: usize) -> Labels {
    vec![
        ("instance".into(), format!("i{i}")),
        ("service".into(), format!("svc{}", i % 10)),
    ]
}

/// Advances every series by one evaluation step. Service 0 fails 20 % of its calls (its SLO
/// burns), the rest 0.01 %; counter series i grows by i % 7 per step (up to 0.4/s; four series
/// per service), gauge i of family f is i * 3 % 100 (above 90 for three instances).
fn advance(s: &Series, step: u64) {
    for svc in 0..SERVICES {
        for span in 0..SPANS {
            s.calls
                .get_or_create(&span_labels(svc, span, "STATUS_CODE_UNSET"))
                .inc_by(100);
            let errors = if svc == 0 {
                25
            } else {
                u64::from(step.is_multiple_of(100))
            };
            s.calls
                .get_or_create(&span_labels(svc, span, "STATUS_CODE_ERROR"))
                .inc_by(errors);
        }
    }
    for (c, g) in s.counters.iter().zip(&s.gauges) {
        for i in 0..PER_FAMILY {
            c.get_or_create(&inst_labels(i)).inc_by((i % 7) as u64);
            g.get_or_create(&inst_labels(i)).set((i * 3 % 100) as i64);
        }
    }
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
    let (reg, series) = registry();
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
        advance(&series, step);
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
        advance(&series, step);
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
    let mut rules = Vec::new();
    let mut p = PromRules::new(acfg.max_series, RecordedCollector::default());
    p.set_groups(acfg.rule_groups.clone());
    let ext = External::default();
    let mut pnow = 1_700_000_000_000i64;
    for i in 0..if parts { warm + runs } else { 0 } {
        step += 1;
        advance(&series, step);
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
        ("append + evaluate 200 rules", rules),
    ] {
        if v.is_empty() {
            continue;
        }
        println!("  {name:<28} median {:.2} ms", ms(median(v)));
    }
}

//! Times one alert-evaluation cycle with 200 rules over 10,000 series, the way the agent runs
//! it (`Alerting::cycle(now)`: a structured snapshot of the `/metrics` registry, its samples
//! ingested into the history ring, every rule evaluated, grouped and persisted), and the parts
//! alone (snapshot, flatten to samples, ingest, evaluate). The history
//! is warmed first with a full fine ring (240 evaluations, 15 s apart), so rate and burn-rate
//! windows read real point lists. Run with `cargo bench -p sidelight --bench alert_eval`.
//!
//! Series: 2,000 span-metric call counters (40 services × 25 spans × UNSET/ERROR), 100 counter
//! families × 40 series and 100 gauge families × 40 series. Rules: 80 thresholds on the gauges,
//! 80 rates (`rate: 5m`, summed by service) on the counters, 40 multi-window burn-rate SLOs (the
//! SRE workbook's four window pairs) on the span metrics. A few of each fire.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sidelight::alerting::{Alerting, eval, expo, history::History, rules::Readers};

type Labels = Vec<(String, String)>;

const SERVICES: usize = 40;
const SPANS: usize = 25;
const FAMILIES: usize = 100;
const PER_FAMILY: usize = 40;
const STEP: i64 = 15_000;
const WARM: usize = 240;
const RUNS: usize = 40;

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

/// Advances every series by one evaluation step. Service 0 fails 20 % of its calls (its SLOs
/// burn), the rest 0.01 %; counter family f grows by f per series, gauge i of family f is i.
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
    for (f, (c, g)) in s.counters.iter().zip(&s.gauges).enumerate() {
        for i in 0..PER_FAMILY {
            c.get_or_create(&inst_labels(i)).inc_by(f as u64);
            g.get_or_create(&inst_labels(i)).set(i as i64);
        }
    }
}

fn config(dir: &std::path::Path) -> sidelight::config::Config {
    let mut y = String::from(
        "alerts:\n  evaluation_interval: 15s\n  max_series: 20000\n  group_wait: 0s\n  rules:\n",
    );
    for f in 0..80 {
        // Gauge i of family f is i: thresholds at 38 fire for instance 39 only.
        let _ = writeln!(
            y,
            "    - {{ name: Gauge{f}, expr: 'bench_gauge_{f}{{service=~\"svc.*\"}}', op: '>', threshold: {}, for: 1m }}",
            if f % 10 == 0 { 38 } else { 1000 }
        );
    }
    for f in 0..80 {
        // Family f grows by f per series per 15 s: 4 series per service -> 4f/15 per second.
        let _ = writeln!(
            y,
            "    - {{ name: Rate{f}, expr: 'bench_counter_{f}_total', rate: 5m, sum_by: [service], threshold: {} }}",
            if f % 20 == 1 { 0.1 } else { 1e9 }
        );
    }
    for s in 0..SERVICES {
        let _ = writeln!(
            y,
            "    - {{ name: Slo{s}, slo: {{ service: svc{s}, span_kind: SPAN_KIND_SERVER, objective: 99.9 }} }}"
        );
    }
    sidelight::config::load_str(&y, "bench", dir, &HashMap::<String, String>::new())
        .expect("bench config")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path());
    let acfg = cfg.alerting.clone().expect("alerting");
    assert_eq!(acfg.rules.len(), 200);
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
    for _ in 0..WARM {
        step += 1;
        advance(&series, step);
        now += STEP;
        rt.block_on(alerting.cycle(now));
    }
    eprintln!("warm-up: {WARM} cycles in {:?}", t.elapsed());
    let snapshot = sidelight_collector::model::snapshot(&reg).expect("snapshot");
    let n_series = snapshot.samples().count();
    let firing = alerting
        .alerts()
        .iter()
        .filter(|a| a.state == sidelight::alerting::eval::State::Firing)
        .count();

    // The whole cycle, as the agent runs it.
    let mut cycle = Vec::new();
    for _ in 0..RUNS {
        step += 1;
        advance(&series, step);
        now += STEP;
        let t = Instant::now();
        rt.block_on(alerting.cycle(now));
        cycle.push(t.elapsed());
    }

    // The parts: snapshot the registry, flatten it to samples, ingest them, evaluate (on a
    // copy of the warmed state).
    let mut snap = Vec::new();
    let mut flatten = Vec::new();
    let mut ingest = Vec::new();
    let mut eval = Vec::new();
    let mut history = History::new(acfg.max_series, acfg.lookback());
    let mut ctx = eval::Context::default();
    let mut alerts = std::collections::BTreeMap::new();
    let readers = Readers::new(&acfg.rules);
    let mut plan = eval::Plan::new(&acfg.rules, &history);
    let mut hnow = 1_700_000_000_000i64;
    for i in 0..(WARM + RUNS) {
        step += 1;
        advance(&series, step);
        hnow += STEP;
        let t = Instant::now();
        let snapshot = sidelight_collector::model::snapshot(&reg).expect("snapshot");
        let t1 = Instant::now();
        let samples = expo::samples(&snapshot);
        let t2 = Instant::now();
        history.ingest(hnow, &samples, |s| {
            readers.reads(&acfg.rules, &s.name, &s.labels)
        });
        let t3 = Instant::now();
        // As the agent does: the plan is rebuilt only when the set of series changed.
        if !plan.is_current(&history, &acfg.rules) {
            plan = eval::Plan::new(&acfg.rules, &history);
        }
        let out = eval::evaluate_with(hnow, &acfg.rules, &plan, &history, &mut ctx, &mut alerts);
        let t4 = Instant::now();
        black_box(out);
        if i >= WARM {
            snap.push(t1 - t);
            flatten.push(t2 - t1);
            ingest.push(t3 - t2);
            eval.push(t4 - t3);
        }
    }
    println!(
        "rules {}  series {n_series}  kept in history {}  firing {firing}",
        acfg.rules.len(),
        history.len()
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "full cycle (Alerting::cycle): median {:.2} ms  min {:.2}  max {:.2}  ({RUNS} runs)",
        ms(median(cycle.clone())),
        ms(*cycle.iter().min().expect("runs")),
        ms(*cycle.iter().max().expect("runs")),
    );
    for (name, v) in [
        ("snapshot registry", snap),
        ("flatten to samples", flatten),
        ("ingest samples", ingest),
        ("evaluate 200 rules", eval),
    ] {
        println!("  {name:<24} median {:.2} ms", ms(median(v)));
    }
}

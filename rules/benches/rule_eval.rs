//! Rule evaluation as the agent runs it, over a bounded [`History`]:
//!
//! 1. **Cycle:** 200 Prometheus rules over 10,000 series. Each cycle appends one sample of every
//!    series (15 s apart; by the handle the last cycle's append returned, as the agent does), then evaluates every group in order with [`evaluate_group`], storing
//!    the recorded series and `ALERTS` back. Warmed with 1 h 15 min of samples first, so the
//!    full-resolution windows are full and the downsampled tier is in use.
//! 2. **Memory:** 1,000 series read over a 3-day window (`rate(x[3d])`), sampled every 15 s for
//!    3 days and 5 minutes: the history's accounted bytes and the process's RSS growth.
//!
//! Series: 2,000 span-metric call counters (40 services × 25 spans × UNSET/ERROR), 100 counter
//! families × 40 series, 100 gauge families × 40 series. Rules: 80 thresholds on the gauges
//! (`for: 1m`), 80 rates summed by service (`rate(x[5m])`), 4 error-ratio recording rules over
//! the span metrics (5 m, 30 m, 1 h, 6 h windows) and 36 multi-window burn-rate alerts reading
//! them. Run with `cargo bench -p sidelight-rules --bench rule_eval`; figures in BENCHMARKS.md.
//!
//! Options after `--`: `--warm N` warm-up cycles (300), `--eval-warm N` of which evaluate (all),
//! `--runs N` measured cycles (40), `--memory-series N` (1,000; 0 skips the memory figure),
//! `--memory-days N` (3), `--append-by-labels` (append each sample by its label set instead of by
//! the handle kept from the last cycle). Under callgrind, e.g. `--eval-warm 20 --runs 3 --memory-series 0`.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Instant;

use sidelight_rules::file::{self, Group};
use sidelight_rules::group::{EvalContext, GroupState, evaluate_group};
use sidelight_rules::{History, HistoryConfig, Labels, SeriesHandle, Storage};

const SERVICES: usize = 40;
const SPANS: usize = 25;
const FAMILIES: usize = 100;
const PER_FAMILY: usize = 40;
const STEP: i64 = 15_000;

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// Every series with how its value moves: (labels, increment per step, is a counter).
fn series() -> Vec<(Labels, f64, bool)> {
    let mut out = Vec::new();
    for s in 0..SERVICES {
        for span in 0..SPANS {
            for (status, inc) in [
                ("STATUS_CODE_UNSET", 100.0),
                ("STATUS_CODE_ERROR", 0.05 * s as f64),
            ] {
                out.push((
                    labels(&[
                        ("__name__", "traces_span_metrics_calls_total".into()),
                        ("service_name", format!("svc{s}")),
                        ("span_name", format!("GET /r{span}")),
                        ("span_kind", "SPAN_KIND_SERVER".into()),
                        ("status_code", status.into()),
                    ]),
                    inc,
                    true,
                ));
            }
        }
    }
    for f in 0..FAMILIES {
        for i in 0..PER_FAMILY {
            let common = [
                ("instance", format!("i{i}")),
                ("service", format!("svc{}", i % 10)),
            ];
            let mut c = vec![("__name__", format!("bench_counter_{f}_total"))];
            c.extend(common.iter().cloned());
            out.push((labels(&c), (i % 7) as f64, true));
            let mut g = vec![("__name__", format!("bench_gauge_{f}"))];
            g.extend(common.iter().cloned());
            out.push((labels(&g), (i * 3 % 100) as f64, false));
        }
    }
    out
}

fn rules() -> Vec<Group> {
    let mut y = String::from("groups:\n- name: slo-ratios\n  rules:\n");
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
            "  - alert: Burn{s}\n    expr: |\n      service_name:error_ratio:rate5m{{service_name=\"svc{s}\"}} > 14.4 * 0.0001\n      and service_name:error_ratio:rate1h{{service_name=\"svc{s}\"}} > 14.4 * 0.0001\n      or service_name:error_ratio:rate30m{{service_name=\"svc{s}\"}} > 6 * 0.0001\n      and service_name:error_ratio:rate6h{{service_name=\"svc{s}\"}} > 6 * 0.0001\n    labels:\n      severity: page\n    annotations:\n      summary: '{{{{ $labels.service_name }}}} burns {{{{ $value | humanizePercentage }}}}'\n"
        );
    }
    y.push_str("- name: thresholds\n  rules:\n");
    for f in 0..80 {
        let _ = write!(
            y,
            "  - alert: Gauge{f}\n    expr: bench_gauge_{f} > 90\n    for: 1m\n    labels:\n      severity: warning\n"
        );
    }
    y.push_str("- name: rates\n  rules:\n");
    for f in 0..80 {
        let _ = write!(
            y,
            "  - alert: Rate{f}\n    expr: sum by (service) (rate(bench_counter_{f}_total[5m])) > 5\n"
        );
    }
    match file::parse("bench", &y) {
        Ok(rf) => rf.groups,
        Err(e) => panic!("{e:?}"),
    }
}

struct Setup {
    history: History,
    groups: Vec<Group>,
    states: Vec<GroupState>,
    series: Vec<(Labels, f64, bool)>,
    /// Each series' handle from its last append, as the agent keeps them per snapshot position.
    handles: Vec<Option<SeriesHandle>>,
    /// Append by labels every cycle instead (`--append-by-labels`).
    by_labels: bool,
    t: i64,
}

impl Setup {
    /// One measured cycle's append, apart so that callgrind can count it alone
    /// (`--toggle-collect='*measured_*'`).
    #[inline(never)]
    fn measured_append(&mut self) {
        self.append();
    }

    /// One measured cycle's evaluation (see `measured_append`).
    #[inline(never)]
    fn measured_evaluate(&mut self) -> (usize, usize) {
        self.evaluate()
    }

    fn append(&mut self) {
        let step = self.t / STEP;
        for ((l, inc, counter), handle) in self.series.iter().zip(&mut self.handles) {
            let v = if *counter { inc * step as f64 } else { *inc };
            if self.by_labels {
                self.history.append(l, self.t, v);
                continue;
            }
            match handle {
                Some(h) if self.history.append_by_handle(*h, self.t, v) => {}
                _ => *handle = self.history.append_handle(l, self.t, v),
            }
        }
    }

    /// Evaluates every group; returns (alerts firing or pending, samples written).
    fn evaluate(&mut self) -> (usize, usize) {
        let ext = Labels::new();
        let ctx = EvalContext {
            external_labels: &ext,
            external_url: "",
        };
        let mut written = 0;
        let mut errors = 0;
        for (g, st) in self.groups.iter().zip(self.states.iter_mut()) {
            let out = evaluate_group(g, self.t, &self.history, st, &ctx);
            errors += out.errors.len();
            written += out.samples.len();
            for (l, v) in out.samples {
                self.history.append(&l, self.t, v);
            }
        }
        assert_eq!(errors, 0, "rule errors");
        let mut alerts = 0;
        for (g, st) in self.groups.iter().zip(&self.states) {
            for i in 0..g.rules.len() {
                alerts += st.alerts(i).len();
            }
        }
        (alerts, written)
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Warm-up cycles and measured cycles.
struct Sizes {
    warm: i64,
    /// Only the last this many warm-up cycles evaluate the rules (the others only append):
    /// the history the measured cycles read is the same, alert states settle within a few
    /// cycles, and the warm-up is much cheaper (for runs under callgrind).
    eval_warm: i64,
    runs: usize,
    /// Series and days of the memory figure; no memory figure when 0.
    memory_series: usize,
    memory_days: i64,
    /// Append every sample by its labels, not by the handle kept from the last cycle.
    by_labels: bool,
}

impl Sizes {
    /// Overrides from the command line: `--warm N`, `--eval-warm N`, `--runs N`,
    /// `--memory-series N` (0 skips the memory figure), `--memory-days N`.
    fn apply_args(&mut self, args: &[String]) {
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut num = |name: &str| -> i64 {
                match it.next().map(|v| v.parse::<i64>()) {
                    Some(Ok(n)) if n >= 0 => n,
                    _ => panic!("{name} takes a non-negative number"),
                }
            };
            match a.as_str() {
                "--warm" => self.warm = num(a),
                "--eval-warm" => self.eval_warm = num(a),
                "--runs" => self.runs = num(a).max(1) as usize,
                "--memory-series" => self.memory_series = num(a) as usize,
                "--memory-days" => self.memory_days = num(a),
                "--append-by-labels" => self.by_labels = true,
                _ => {}
            }
        }
    }
}

fn cycle_bench(sizes: &Sizes) {
    let (warm_cycles, runs) = (sizes.warm, sizes.runs);
    let groups = rules();
    let rules_n: usize = groups.iter().map(|g| g.rules.len()).sum();
    let mut history = History::new(HistoryConfig::default());
    history.set_rules(&groups);
    let states = groups.iter().map(|_| GroupState::new()).collect();
    let series = series();
    let mut s = Setup {
        history,
        groups,
        states,
        handles: vec![None; series.len()],
        series,
        by_labels: sizes.by_labels,
        t: 0,
    };
    let warm = Instant::now();
    for i in 0..warm_cycles {
        s.append();
        if i >= warm_cycles - sizes.eval_warm {
            s.evaluate();
        }
        s.t += STEP;
    }
    let warm = warm.elapsed();
    let mut cycles = Vec::new();
    let mut appends = Vec::new();
    let mut evals = Vec::new();
    let mut last = (0, 0);
    for _ in 0..runs {
        let a = Instant::now();
        s.measured_append();
        let e = Instant::now();
        last = black_box(s.measured_evaluate());
        let end = Instant::now();
        appends.push(e - a);
        evals.push(end - e);
        cycles.push(end - a);
        s.t += STEP;
    }
    cycles.sort();
    appends.sort();
    evals.sort();
    let stats = s.history.stats();
    let read = s.history.select(&[], i64::MIN, i64::MAX).len();
    println!(
        "cycle: {rules_n} rules over {} series ({read} kept: read by some rule), warm-up {warm_cycles} cycles in {:.1} s",
        s.series.len(),
        warm.as_secs_f64()
    );
    println!(
        "  full cycle median {:.2} ms (min {:.2}, max {:.2}); append {:.2} ms, evaluate {:.2} ms; {} alerts active, {} samples written a cycle",
        ms(cycles[runs / 2]),
        ms(cycles[0]),
        ms(cycles[runs - 1]),
        ms(appends[runs / 2]),
        ms(evals[runs / 2]),
        last.0,
        last.1
    );
    println!(
        "  history: {} series, {} samples, {:.1} MiB accounted",
        stats.series,
        stats.samples,
        s.history.memory_bytes() as f64 / 1_048_576.0
    );
}

fn memory_bench(sizes: &Sizes) {
    const DAY: i64 = 86_400_000;
    let n = sizes.memory_series;
    let rf = match file::parse(
        "bench",
        "groups:\n- name: g\n  rules:\n  - record: r\n    expr: sum(rate(x_total[3d]))\n",
    ) {
        Ok(rf) => rf,
        Err(e) => panic!("{e:?}"),
    };
    let before = rss_kib();
    let mut h = History::new(HistoryConfig::default());
    h.set_rules(&rf.groups);
    let series: Vec<Labels> = (0..n)
        .map(|i| {
            labels(&[
                ("__name__", "x_total".into()),
                ("instance", format!("host-{i}:9464")),
                ("job", "sidelight".into()),
            ])
        })
        .collect();
    let start = Instant::now();
    let mut t = 0;
    while t <= sizes.memory_days * DAY + 5 * 60_000 {
        for (i, l) in series.iter().enumerate() {
            h.append(l, t, (i as i64 * t / 1000) as f64);
        }
        t += STEP;
    }
    h.prune(t);
    let after = rss_kib();
    let stats = h.stats();
    let bytes = h.memory_bytes();
    println!(
        "memory: {n} series over a 3-day window, sampled every 15 s for {} days ({:.1} s to fill)",
        sizes.memory_days,
        start.elapsed().as_secs_f64()
    );
    println!(
        "  {} samples held ({} per series), {:.2} MiB accounted ({:.1} KiB per series); RSS growth {}",
        stats.samples,
        stats.samples / n,
        bytes as f64 / 1_048_576.0,
        bytes as f64 / 1024.0 / n as f64,
        match (before, after) {
            (Some(b), Some(a)) => format!("{:.2} MiB", a.saturating_sub(b) as f64 / 1024.0),
            _ => "not available".into(),
        }
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs a small smoke version (its
    // figures mean nothing).
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    let mut sizes = if full {
        Sizes {
            warm: 300,
            eval_warm: 300,
            runs: 40,
            memory_series: 1000,
            memory_days: 3,
            by_labels: false,
        }
    } else {
        println!(
            "rule_eval smoke run; figures with `cargo bench -p sidelight-rules --bench rule_eval`"
        );
        Sizes {
            warm: 6,
            eval_warm: 6,
            runs: 2,
            memory_series: 3,
            memory_days: 1,
            by_labels: false,
        }
    };
    sizes.apply_args(&args);
    if sizes.memory_series > 0 {
        memory_bench(&sizes);
    }
    cycle_bench(&sizes);
}

//! Times a 90-day DORA report over 100 services × 20 deployments a day (180 000
//! deployments in time order, 3 changes each, an incident a day per service) and prints
//! the median of several runs. `DORA_DAYS` sets the days of history (default 90). Run with
//! `cargo bench -p sidelight --bench dora_report`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use sidelight::dora::{Scope, Window, report};

#[path = "common/dora_history.rs"]
mod history;
use history::generate;

/// Days of history by default.
const DAYS: i64 = 90;
/// Timed reports; `DORA_RUNS` overrides it (e.g. to count what one report costs under
/// `perf stat`, as the difference between two run counts).
const RUNS: usize = 11;

/// Median, min and max in milliseconds.
fn summary(mut times: Vec<Duration>) -> (f64, f64, f64) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    match (times.first(), times.get(times.len() / 2), times.last()) {
        (Some(&min), Some(&median), Some(&max)) => (ms(median), ms(min), ms(max)),
        _ => (0.0, 0.0, 0.0),
    }
}

fn main() {
    let now = 1_700_000_000;
    let days = std::env::var("DORA_DAYS")
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(DAYS);
    let events = generate(now, days);
    let scope = Scope::environment("production");
    let runs = std::env::var("DORA_RUNS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(RUNS);
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let r = report(now, black_box(&events), Window::days(90), &scope);
        times.push(t.elapsed());
        black_box(r);
    }
    let r = report(now, &events, Window::days(90), &scope);
    let deployments: u64 = r.services.iter().map(|s| s.deployments).sum();
    let (median, min, max) = summary(times);
    println!(
        "dora_report: {days}-day history ({} deploy events), 90d window, {} services, {} deployments, {} incidents: median {median:.1} ms (min {min:.1} ms, max {max:.1} ms) over {runs} runs",
        events.deployments.len(),
        r.services.len(),
        deployments,
        events.incidents.len(),
    );
}

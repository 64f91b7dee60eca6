//! Times a 90-day DORA report over 100 services × 20 deployments a day (180 000
//! deployments in time order, 3 changes each, an incident a day per service) and prints
//! the median of several runs, on the threads `report` chooses and on one. Run with
//! `cargo bench -p sidelight --bench dora_report`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use sidelight::dora::{
    Change, DeployStatus, Deployment, DeploymentKind, Events, Incident, Scope, Window, report,
    report_on,
};

const DAY: i64 = 86_400;
const SERVICES: usize = 100;
const DEPLOYS_PER_DAY: i64 = 20;
const DAYS: i64 = 90;
/// Timed reports; `DORA_RUNS` overrides it (e.g. to count what one report costs under
/// `perf stat`, as the difference between two run counts).
const RUNS: usize = 11;

/// A small deterministic generator (SplitMix64), so every run times the same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> i64 {
        i64::try_from(self.next() % n).unwrap_or(0)
    }
}

fn generate(now: i64) -> Events {
    let mut rng = Rng(42);
    let mut events = Events::default();
    let start = now - DAYS * DAY;
    let step = DAY / DEPLOYS_PER_DAY;
    // Time order, services interleaved, as a store returns history.
    let services: Vec<String> = (0..SERVICES).map(|s| format!("service-{s:03}")).collect();
    let mut commit = vec![0_u64; SERVICES];
    for k in 0..DAYS * DEPLOYS_PER_DAY {
        for (s, service) in services.iter().enumerate() {
            let finished_at = start + 1 + k * step + rng.below(600);
            let commits = (0..3)
                .map(|_| {
                    commit[s] += 1;
                    Change {
                        sha: format!("{s:03}{:012x}", commit[s]),
                        timestamp: finished_at - 600 - rng.below(3 * DAY as u64),
                        pr_first_commit_at: None,
                    }
                })
                .collect::<Vec<_>>();
            let kind = match rng.below(50) {
                0 => DeploymentKind::Hotfix,
                1 => DeploymentKind::Rollback,
                _ => DeploymentKind::Normal,
            };
            let id = format!("{service}-{k}");
            if k % DEPLOYS_PER_DAY == 7 {
                events.incidents.push(Incident {
                    id: format!("inc-{id}"),
                    service: service.clone(),
                    environment: "production".into(),
                    started_at: finished_at + 300,
                    resolved_at: Some(finished_at + 300 + rng.below(7200)),
                    deployment_id: Some(id.clone()),
                    commit: None,
                    resolved_by_deployment: None,
                });
            }
            events.deployments.push(Deployment {
                id,
                service: service.clone(),
                environment: "production".into(),
                version: format!("1.{k}.0"),
                commit: commits[2].sha.clone(),
                status: DeployStatus::Success,
                started_at: finished_at - 120,
                finished_at,
                commits,
                kind,
                fixes_deployment: None,
                resolves_incidents: Vec::new(),
            });
        }
    }
    events
}

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
    let events = generate(now);
    let scope = Scope::environment("production");
    let runs = std::env::var("DORA_RUNS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(RUNS);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    // `DORA_THREADS=N` times `report_on` with N threads only (for `perf stat`).
    let only = std::env::var("DORA_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    // `report` as the hub calls it (its own choice of threads), alternated with one
    // thread, so both see the same machine.
    let mut auto = Vec::with_capacity(runs);
    let mut single = Vec::with_capacity(runs);
    let timed = |threads: Option<usize>| {
        let t = Instant::now();
        let r = match threads {
            None => report(now, black_box(&events), Window::days(90), &scope),
            Some(n) => report_on(now, black_box(&events), Window::days(90), &scope, n),
        };
        let elapsed = t.elapsed();
        black_box(r);
        elapsed
    };
    for _ in 0..runs {
        match only {
            Some(n) => single.push(timed(Some(n))),
            None => {
                auto.push(timed(None));
                single.push(timed(Some(1)));
            }
        }
    }
    let r = report(now, &events, Window::days(90), &scope);
    let deployments: u64 = r.services.iter().map(|s| s.deployments).sum();
    let single_label = format!("threads={} (report_on)", only.unwrap_or(1));
    for (label, times) in [
        (format!("threads={threads} (report)"), auto),
        (single_label, single),
    ] {
        if times.is_empty() {
            continue;
        }
        let (median, min, max) = summary(times);
        println!(
            "dora_report: 90d window, {} services, {} deployments, {} incidents, {label}: median {median:.1} ms (min {min:.1} ms, max {max:.1} ms) over {runs} runs",
            r.services.len(),
            deployments,
            events.incidents.len(),
        );
    }
}

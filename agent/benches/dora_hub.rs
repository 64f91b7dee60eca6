//! The DORA hub's work on a 400-day history of 100 services × 20 deployments a day (800,000
//! deploy events, 3 changes each, an incident a day per service), in process on one thread:
//!
//! 1. **start**: the model built from the loaded history and the first computation;
//! 2. **idle**: a recomputation a minute later, nothing new (the windows slide);
//! 3. **event**: a recomputation after one new deployment (at 1 event/s the hub makes about
//!    one a second: `CHANGE_DEBOUNCE`);
//! 4. **report**: `dora::report` over the whole history (what `sidelight dora report`
//!    computes after reading the store).
//!
//! CPU share of the hub follows: idle ≈ idle ms / 60 s, at 1 event/s ≈ event ms / 1 s. Also
//! prints the process's resident memory after the model is built and the bytes the model
//! holds as laid out (`Model::heap_bytes`). With `DORA_HUB_STORE=DIR`
//! it first writes the history into `DIR/sidelight.db` (for `bench/dora_hub.sh`, which
//! measures the release agent on it) and exits. `DORA_DAYS` sets the days (default 400).
//! Run with `cargo bench -p sidelight --bench dora_hub`. To count the instructions of the
//! recomputations after an event: `DORA_HUB_FULL=0 valgrind --tool=callgrind
//! --toggle-collect='*one_event*' <bench binary>` (five events).

use std::hint::black_box;
use std::time::{Duration, Instant};

use sidelight::dora::{Deployment, Scope, TierTable, Window, report};
use sidelight::hub::{Model, compute_on};
use sidelight::store::{Batch, Store};

#[path = "common/dora_history.rs"]
mod history;
use history::{DAY, generate};

const NOW: i64 = 1_700_000_000;
const RUNS: usize = 5;

fn median_ms(mut times: Vec<Duration>) -> f64 {
    times.sort();
    times
        .get(times.len() / 2)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |pages| pages * 4096.0 / (1024.0 * 1024.0))
}

fn config() -> sidelight::hub::DoraConfig {
    sidelight::config::load_str(
        "dora: { enabled: true }\n",
        "bench",
        std::path::Path::new("."),
        &std::collections::HashMap::<String, String>::new(),
    )
    .expect("config")
    .dora
}

fn write_store(dir: &std::path::Path, days: i64) {
    // Ending now, so that the agent's retention keeps it.
    let now = sidelight::hub::unix_now();
    let events = generate(now, days);
    let mut store = Store::open(dir).expect("open store");
    let t = Instant::now();
    for chunk in events.deployments.chunks(10_000) {
        let batches: Vec<Batch> = chunk
            .iter()
            .map(|d| Batch {
                deployment: Some((d.clone(), None)),
                ..Batch::default()
            })
            .collect();
        let refs: Vec<&Batch> = batches.iter().collect();
        store.apply_group(&refs, now).expect("write");
    }
    let incidents: Vec<Batch> = events
        .incidents
        .iter()
        .map(|i| Batch {
            incidents: vec![sidelight::store::IncidentChange::Open(i.clone())],
            ..Batch::default()
        })
        .collect();
    let refs: Vec<&Batch> = incidents.iter().collect();
    store.apply_group(&refs, now).expect("write");
    println!(
        "dora_hub: wrote {} deploy events and {} incidents ({days} days, ending {now}) to {} in {:.1} s",
        events.deployments.len(),
        events.incidents.len(),
        dir.display(),
        t.elapsed().as_secs_f64()
    );
}

/// One recorded deployment and the recomputation after it: a function of its own, so that
/// `valgrind --tool=callgrind --toggle-collect='*one_event*'` counts exactly this part.
#[inline(never)]
fn one_event(
    model: &mut Model,
    d: Deployment,
    now: i64,
    cfg: &sidelight::hub::DoraConfig,
    table: Option<&TierTable>,
) {
    model.add_deployment(d);
    black_box(compute_on(model, now, cfg, table));
}

fn main() {
    let days = std::env::var("DORA_DAYS")
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(400);
    if let Some(dir) = std::env::var_os("DORA_HUB_STORE") {
        write_store(std::path::Path::new(&dir), days);
        return;
    }
    let cfg = config();
    let table = TierTable::builtin().ok();
    let events = generate(NOW, days);
    let rss_events = rss_mib();
    let deployments = events.deployments.len();
    let t = Instant::now();
    let mut model = Model::new(events.clone());
    black_box(compute_on(&mut model, NOW, &cfg, table));
    let start = t.elapsed();
    let rss_model = rss_mib();
    let model_bytes = model.heap_bytes();

    let mut idle = Vec::new();
    let mut now = NOW;
    for _ in 0..RUNS {
        now += 60;
        let t = Instant::now();
        black_box(compute_on(&mut model, now, &cfg, table));
        idle.push(t.elapsed());
    }
    let mut event = Vec::new();
    for k in 0..RUNS {
        now += 1;
        let mut d: Deployment = events.deployments[deployments - 1 - k].clone();
        d.id = format!("bench-{k}");
        d.version = format!("bench-{k}");
        d.finished_at = now - 1;
        d.started_at = now - 60;
        for c in &mut d.commits {
            c.sha = format!("bench-{k}-{}", c.sha);
        }
        let t = Instant::now();
        one_event(&mut model, d, now, &cfg, table);
        event.push(t.elapsed());
    }
    // `DORA_HUB_FULL=0` skips the one-shot report (e.g. to count the rest under callgrind).
    let full_runs = if std::env::var("DORA_HUB_FULL").is_ok_and(|v| v == "0") {
        0
    } else {
        3
    };
    let mut full = Vec::new();
    for _ in 0..full_runs {
        let t = Instant::now();
        black_box(report(
            NOW,
            &events,
            Window::days(30),
            &Scope::environment("production"),
        ));
        full.push(t.elapsed());
    }
    let (idle_ms, event_ms) = (median_ms(idle), median_ms(event));
    println!(
        "dora_hub: {days}-day history, {deployments} deploy events, {} incidents",
        events.incidents.len()
    );
    println!(
        "dora_hub: start (model + first computation) {:.0} ms; RSS {rss_events:.0} MiB with the history loaded, {rss_model:.0} MiB with the model too",
        start.as_secs_f64() * 1e3
    );
    println!(
        "dora_hub: the model holds {:.1} MiB ({:.0} bytes per deploy event, its lineages included)",
        model_bytes as f64 / (1024.0 * 1024.0),
        model_bytes as f64 / deployments as f64
    );
    println!(
        "dora_hub: idle recomputation median {idle_ms:.1} ms (≈ {:.2} % of a core at one a minute)",
        idle_ms / 60_000.0 * 100.0
    );
    println!(
        "dora_hub: recomputation after one new deployment median {event_ms:.1} ms (≈ {:.1} % of a core at one a second)",
        event_ms / 1_000.0 * 100.0
    );
    println!(
        "dora_hub: dora::report over the whole history (30d window) median {:.0} ms",
        median_ms(full)
    );
    let _ = DAY;
}

//! Runs the configured log sources. Per source: the tailer task (`LogSource::run`) and a consumer
//! task that turns each batch into an OTLP logs request and hands it to the intake with a
//! receipt; the receipt acknowledges the tailer's batch once every sink has the records, and only
//! then can the batch's offsets reach the checkpoint.
//!
//! On SIGHUP, sources whose configuration changed are stopped (their final checkpoint is written)
//! and started again with the new one; removed sources stop, new ones start. The others keep
//! running untouched.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use sidelight_collector::logs::{LogResource, LogSource, LogSourceConfig, LogStats, to_request};
use sidelight_collector::pipeline::{Intake, Payload, Receipt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::http::Readiness;

/// Batches in flight between a tailer and its consumer (each ≤ `tail.batch_max_bytes`).
const HANDOFF_BATCHES: usize = 4;

/// What the log supervisor needs from the agent.
pub struct LogContext {
    pub intake: Intake,
    pub stats: LogStats,
    pub store: PathBuf,
    pub host: Option<String>,
    pub readiness: Arc<Readiness>,
}

struct Running {
    config: LogSourceConfig,
    cancel: CancellationToken,
    tailer: JoinHandle<()>,
    consumer: JoinHandle<()>,
}

/// Starts the configured sources and follows configuration changes until `cancel`; then stops
/// every source and waits for their final checkpoints.
pub async fn supervise(
    mut config: watch::Receiver<Arc<Config>>,
    ctx: LogContext,
    cancel: CancellationToken,
) {
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    let cfg = config.borrow_and_update().clone();
    apply(&cfg.logs, &mut running, &ctx, &cancel).await;
    ctx.readiness.ready("logs");
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            changed = config.changed() => {
                if changed.is_err() {
                    break;
                }
                let cfg = config.borrow_and_update().clone();
                apply(&cfg.logs, &mut running, &ctx, &cancel).await;
            }
        }
    }
    for (_, r) in std::mem::take(&mut running) {
        stop(r).await;
    }
}

/// Brings the running set in line with `wanted`.
async fn apply(
    wanted: &[LogSourceConfig],
    running: &mut BTreeMap<String, Running>,
    ctx: &LogContext,
    parent: &CancellationToken,
) {
    let names: Vec<String> = running.keys().cloned().collect();
    for name in names {
        let keep = wanted
            .iter()
            .any(|w| w.source == name && running.get(&name).is_some_and(|r| &r.config == w));
        if !keep && let Some(r) = running.remove(&name) {
            tracing::info!(source = %name, "stopping log source (configuration changed or removed)");
            stop(r).await;
        }
    }
    for w in wanted {
        if running.contains_key(&w.source) {
            continue;
        }
        match start(w.clone(), ctx, parent.child_token()) {
            Ok(r) => {
                running.insert(w.source.clone(), r);
            }
            Err(errors) => {
                for e in errors {
                    tracing::error!(source = %w.source, error = %e, "log source not started");
                }
            }
        }
    }
}

fn start(
    config: LogSourceConfig,
    ctx: &LogContext,
    cancel: CancellationToken,
) -> Result<Running, Vec<sidelight_collector::logs::LogSourceError>> {
    let source = LogSource::build(config.clone(), ctx.stats.clone())?;
    let mut resource = LogResource::new(
        config.service.as_deref().unwrap_or(&config.source),
        ctx.host.as_deref(),
    );
    for (k, v) in &config.resource {
        resource = resource.with(k, v);
    }
    let (tx, mut rx) = mpsc::channel(HANDOFF_BATCHES);
    let name = config.source.clone();
    let store = ctx.store.clone();
    let tailer_cancel = cancel.clone();
    let tailer = tokio::spawn(async move {
        if let Err(e) = source.run(tx, store, tailer_cancel).await {
            tracing::error!(source = %name, error = %e, "log source stopped with an error");
        }
    });
    let intake = ctx.intake.clone();
    let consumer_cancel = cancel.clone();
    let consumer = tokio::spawn(async move {
        // Ends when the tailer closes the channel (it stopped); batches still in the channel
        // are delivered first, so the tailer's drain can collect their acknowledgements.
        while let Some(batch) = rx.recv().await {
            let (records, ack) = batch.into_parts();
            let request = to_request(records, &resource);
            let receipt = Receipt::new(move || ack.ack());
            tokio::select! {
                biased;
                delivered = intake.deliver(Payload::Logs(request), receipt) => {
                    if delivered.is_err() {
                        break;
                    }
                }
                // Stopping while every sink is full: the batch stays unacknowledged and is
                // read again after the restart.
                () = consumer_cancel.cancelled() => break,
            }
        }
    });
    Ok(Running {
        config,
        cancel,
        tailer,
        consumer,
    })
}

async fn stop(r: Running) {
    r.cancel.cancel();
    // The tailer waits (bounded by `tail.drain_timeout`) for acknowledgements, then writes its
    // final checkpoint.
    let _ = r.tailer.await;
    let _ = r.consumer.await;
}

/// The host name for the records' resource (`/proc/sys/kernel/hostname`, else `$HOSTNAME`).
pub fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
}

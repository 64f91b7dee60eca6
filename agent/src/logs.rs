//! Runs the configured log sources. Per source: the tailer (`LogSource::run`, on a thread of its
//! own) turns each batch into an OTLP logs request and hands it to the intake with a receipt; the
//! receipt acknowledges the tailer's batch once every sink has the records, and only then can the
//! batch's offsets reach the checkpoint. When a sink's queue has no room, the rest of the
//! delivery goes to a consumer task, which waits for room (the tailer waits behind it: the files
//! are the buffer). Delivering from the tailer's thread spares the agent's main thread a wake-up
//! per batch; while anything is with the consumer, later batches follow it there, so the sinks
//! see the batches in order.
//!
//! On SIGHUP, sources whose configuration changed are stopped (their final checkpoint is written)
//! and started again with the new one; removed sources stop, new ones start. The others keep
//! running untouched.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sidelight_collector::logs::{
    Batch, ConsumerGone, Handoff, LogResource, LogSource, LogSourceConfig, LogStats,
};
use sidelight_collector::pipeline::{Intake, Payload, Pending, Receipt, Signal};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::common::ConfigError;
use crate::http::Readiness;

/// Deliveries waiting between a tailer and its consumer (each ≤ `tail.batch_max_bytes`).
const HANDOFF_BATCHES: usize = 4;

/// How often a waiting hand-off looks for room in the consumer's channel.
const ROOM_POLL: Duration = Duration::from_millis(10);

/// The tailer's end: delivers on the tailer's thread when every sink has room now, else hands
/// the rest of the delivery to the consumer task.
struct Deliver {
    intake: Intake,
    resource: LogResource,
    tx: mpsc::Sender<Box<Pending>>,
    /// Deliveries sent to the consumer and not finished yet (the consumer counts down).
    with_consumer: Arc<AtomicUsize>,
    /// The delivery the consumer's channel had no room for yet (the tailer waits for it).
    held: Option<Box<Pending>>,
}

impl Handoff for Deliver {
    fn hand_off(&mut self, batch: Batch, until: Instant) -> Result<bool, ConsumerGone> {
        let (logs, ack) = batch.into_parts();
        if !self.intake.forwards(Signal::Logs) {
            // No sink takes logs (the records are counted by the tailer): nothing to send.
            drop(logs);
            ack.ack();
            return Ok(true);
        }
        // The tailer encoded the records as it read them: only the request's frame is added.
        let payload = Payload::Encoded(logs.finish(&self.resource));
        drop(logs);
        let receipt = Receipt::new(move || ack.ack());
        let pending = if self.with_consumer.load(Ordering::Acquire) == 0 {
            match self.intake.try_deliver(payload, receipt) {
                Ok(()) => return Ok(true),
                Err(pending) => pending,
            }
        } else {
            // An earlier batch is still on its way: this one goes behind it.
            match self.intake.defer(payload, receipt) {
                Ok(()) => return Ok(true),
                Err(pending) => pending,
            }
        };
        self.with_consumer.fetch_add(1, Ordering::AcqRel);
        self.held = Some(pending);
        self.wait(until)
    }

    /// Polls the consumer's channel for room (a plain thread cannot await it; the tailer waits
    /// here only while a sink is full, so the polling costs nothing otherwise).
    fn wait(&mut self, until: Instant) -> Result<bool, ConsumerGone> {
        loop {
            let Some(pending) = self.held.take() else {
                return Ok(true);
            };
            match self.tx.try_send(pending) {
                Ok(()) => return Ok(true),
                Err(TrySendError::Closed(_)) => return Err(ConsumerGone),
                Err(TrySendError::Full(pending)) => self.held = Some(pending),
            }
            let now = Instant::now();
            if now >= until {
                return Ok(false);
            }
            std::thread::sleep(ROOM_POLL.min(until - now));
        }
    }
}

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

/// What the supervisor follows: the validated configuration's `logs:` section.
pub trait LogSources: Send + Sync + 'static {
    /// The configured sources.
    fn log_sources(&self) -> &[LogSourceConfig];
}

/// Starts the configured sources and follows configuration changes until `cancel`; then stops
/// every source and waits for their final checkpoints.
pub async fn supervise<C: LogSources>(
    mut config: watch::Receiver<Arc<C>>,
    ctx: LogContext,
    cancel: CancellationToken,
) {
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    let cfg = config.borrow_and_update().clone();
    apply(cfg.log_sources(), &mut running, &ctx, &cancel).await;
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
                apply(cfg.log_sources(), &mut running, &ctx, &cancel).await;
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
    let with_consumer = Arc::new(AtomicUsize::new(0));
    let deliver = Deliver {
        intake: ctx.intake.clone(),
        resource,
        tx,
        with_consumer: with_consumer.clone(),
        held: None,
    };
    let name = config.source.clone();
    let store = ctx.store.clone();
    let tailer_cancel = cancel.clone();
    let tailer = tokio::spawn(async move {
        if let Err(e) = source.run(deliver, store, tailer_cancel).await {
            tracing::error!(source = %name, error = %e, "log source stopped with an error");
        }
    });
    let intake = ctx.intake.clone();
    let consumer_cancel = cancel.clone();
    let consumer = tokio::spawn(async move {
        // Ends when the tailer drops its sender (it stopped); deliveries still in the channel
        // are finished first, so the tailer's drain can collect their acknowledgements. On a
        // break, the count stays up: the tailer sends everything here, and the closed channel
        // stops it.
        while let Some(pending) = rx.recv().await {
            tokio::select! {
                biased;
                delivered = intake.finish(pending) => {
                    if delivered.is_err() {
                        break;
                    }
                }
                // Stopping while a sink is full: the batch stays unacknowledged and is read
                // again after the restart.
                () = consumer_cancel.cancelled() => break,
            }
            with_consumer.fetch_sub(1, Ordering::AcqRel);
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

// ---------------------------------------------------------------------------------------------
// The `logs:` section: each source's shape and checks are the collector's
// ([`LogSourceConfig`]); the section adds what spans sources.

/// Validates `logs:`, adding every problem to `errors`.
pub fn validate(logs: Vec<LogSourceConfig>, errors: &mut Vec<ConfigError>) -> Vec<LogSourceConfig> {
    let mut seen = std::collections::HashSet::new();
    for (i, source) in logs.iter().enumerate() {
        if let Err(es) = source.validate() {
            errors.extend(
                es.into_iter()
                    .map(|e| ConfigError::new(format!("logs[{i}]"), e.to_string())),
            );
        }
        if !seen.insert(source.source.as_str()) {
            errors.push(ConfigError::new(
                format!("logs[{i}].source"),
                format!(
                    "`{}` is used twice (the name keys the checkpoints; make each unique)",
                    source.source
                ),
            ));
        }
        if source.source.contains(['/', '\\']) || source.source.starts_with('.') {
            errors.push(ConfigError::new(
                format!("logs[{i}].source"),
                "must not contain `/` or start with `.` (it names a checkpoint file)",
            ));
        }
    }
    logs
}

//! The file log source: its configuration, `validate` / `build` / `run`, and the loop that
//! drives the [`Tailer`] on a thread of its own — inotify wake-ups ([`super::watch`]: parent
//! directories, wake-ups only, read only while idle), a periodic scan as fallback, a bounded
//! [`Handoff`] (no room stops the reading: the files are the buffer; while it waits, file
//! events and the periodic scan keep following rotations, so files created and rotated away
//! meanwhile are held open), checkpoints of acknowledged offsets at most once per interval and
//! once more on stop.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::discover::{DiscoverError, Discovery};
use super::multiline::JoinerConfig;
use super::parse::{DEFAULT_MAX_LINE_BYTES, Format, Parser, ParserConfig};
use super::redact::{RedactError, RedactionConfig, Redactor};
use super::stats::LogStats;
use super::tail::{Batch, StartAt, TailConfig, TailError, Tailer};
use super::watch::{self, DirWatch, Waker, Woken};

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}

/// Traceback joining settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MultilineConfig {
    /// Join plain-text tracebacks (ignored for `format: json`).
    pub enabled: bool,
    /// A pending record is emitted after this long without a continuation line.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

impl Default for MultilineConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            timeout: Duration::from_millis(500),
        }
    }
}

/// Tuning knobs of the tailer; the defaults suit most hosts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TailTuning {
    /// The periodic scan (new files, rotations, growth) when file events cannot be relied on:
    /// no inotify, a directory that could not be watched, the watch cap reached, or a network
    /// or FUSE filesystem (NFS, SMB, sshfs…), whose files change without an event here.
    #[serde(deserialize_with = "duration")]
    pub scan_interval: Duration,
    /// The periodic scan while inotify watches every directory involved on a local
    /// filesystem: only a safety net then (creations, renames and writes raise events).
    #[serde(deserialize_with = "duration")]
    pub watched_scan_interval: Duration,
    /// Acknowledged offsets are written at most this often (and on stop).
    #[serde(deserialize_with = "duration")]
    pub checkpoint_interval: Duration,
    /// Checkpoints of files unseen this long are dropped.
    #[serde(deserialize_with = "duration")]
    pub checkpoint_expiry: Duration,
    /// A last line without a newline is emitted after this long without growth.
    #[serde(deserialize_with = "duration")]
    pub partial_line_timeout: Duration,
    /// A rotated-away or deleted file is released this long after its last growth.
    #[serde(deserialize_with = "duration")]
    pub rotate_wait: Duration,
    /// On stop, how long to wait for the consumer to acknowledge batches already sent.
    #[serde(deserialize_with = "duration")]
    pub drain_timeout: Duration,
    /// File events within this long of the last read are served by one read (bounds the
    /// wake-ups of a service that logs in many small writes; adds at most this much latency).
    /// Off by itself for a source once a copytruncate rotation is seen.
    #[serde(deserialize_with = "duration")]
    pub coalesce: Duration,
    pub max_open_files: usize,
    pub read_chunk_bytes: usize,
    pub batch_max_records: usize,
    pub batch_max_bytes: usize,
    pub fingerprint_bytes: usize,
}

impl Default for TailTuning {
    fn default() -> Self {
        let t = TailConfig::new("");
        Self {
            scan_interval: Duration::from_secs(1),
            watched_scan_interval: Duration::from_secs(60),
            checkpoint_interval: Duration::from_secs(1),
            checkpoint_expiry: t.checkpoint_expiry,
            partial_line_timeout: t.partial_line_timeout,
            rotate_wait: t.rotate_wait,
            drain_timeout: Duration::from_secs(5),
            coalesce: Duration::from_millis(20),
            max_open_files: t.max_open_files,
            read_chunk_bytes: t.read_chunk_bytes,
            batch_max_records: t.batch_max_records,
            batch_max_bytes: t.batch_max_bytes,
            fingerprint_bytes: t.fingerprint_bytes,
        }
    }
}

/// The shortest wait for a tick deadline that has already passed (see the tailer loop).
const MIN_DEADLINE_WAIT: Duration = Duration::from_millis(10);

fn yes() -> bool {
    true
}

fn default_max_line() -> usize {
    DEFAULT_MAX_LINE_BYTES
}

/// One `logs:` entry of the agent config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSourceConfig {
    /// The `source` label of records and metrics; names the checkpoint file.
    pub source: String,
    /// `service.name` of the exported records' resource (default: the source name).
    #[serde(default)]
    pub service: Option<String>,
    /// More resource attributes of the exported records (`deployment.environment: prod`).
    #[serde(default)]
    pub resource: std::collections::BTreeMap<String, String>,
    /// Globs of files to tail (`*` stays within a directory, `**` crosses directories).
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Skip `.gz`, `.bz2`, `.xz`, `.zst`, `.zip`, `.lz4`, `.z` files (rotated archives).
    #[serde(default = "yes")]
    pub exclude_compressed: bool,
    #[serde(default)]
    pub format: Format,
    /// Where files without a checkpoint start (`beginning` or `end`; `end` applies only to
    /// files present at start-up).
    #[serde(default)]
    pub start_at: StartAt,
    #[serde(default = "default_max_line")]
    pub max_line_bytes: usize,
    #[serde(default)]
    pub multiline: MultilineConfig,
    #[serde(default)]
    pub redaction: RedactionConfig,
    #[serde(default)]
    pub tail: TailTuning,
}

/// Errors in a log source's configuration or start-up.
#[derive(Debug, thiserror::Error)]
pub enum LogSourceError {
    #[error("logs: `source` must not be empty")]
    EmptySource,
    #[error("logs {0}: `include` must list at least one pattern")]
    NoInclude(String),
    #[error("logs {source_name}: {error}")]
    Discover {
        source_name: String,
        #[source]
        error: DiscoverError,
    },
    #[error("logs {source_name}: {error}")]
    Redact {
        source_name: String,
        #[source]
        error: RedactError,
    },
    #[error("logs {source_name}: {what} must be greater than zero")]
    Zero {
        source_name: String,
        what: &'static str,
    },
    #[error("logs {source_name}: {error}")]
    Tail {
        source_name: String,
        #[source]
        error: TailError,
    },
    #[error("logs {0}: the tailer task panicked")]
    Panicked(String),
    #[error("logs {source_name}: cannot create the tailer's wake-up descriptor: {error}")]
    Waker {
        source_name: String,
        #[source]
        error: std::io::Error,
    },
    #[error("logs {source_name}: cannot start the tailer thread: {error}")]
    Thread {
        source_name: String,
        #[source]
        error: std::io::Error,
    },
}

impl LogSourceConfig {
    /// Checks everything that can be checked without IO; returns every error found.
    pub fn validate(&self) -> Result<(), Vec<LogSourceError>> {
        let mut errors = Vec::new();
        let name = self.source.clone();
        if self.source.trim().is_empty() {
            errors.push(LogSourceError::EmptySource);
        }
        if self.include.is_empty() {
            errors.push(LogSourceError::NoInclude(name.clone()));
        }
        if let Err(error) = Discovery::new(&self.include, &self.exclude, self.exclude_compressed) {
            errors.push(LogSourceError::Discover {
                source_name: name.clone(),
                error,
            });
        }
        if let Err(error) = Redactor::shared(&self.redaction) {
            errors.push(LogSourceError::Redact {
                source_name: name.clone(),
                error,
            });
        }
        let t = &self.tail;
        for (what, zero) in [
            ("max_line_bytes", self.max_line_bytes == 0),
            ("tail.scan_interval", t.scan_interval.is_zero()),
            (
                "tail.watched_scan_interval",
                t.watched_scan_interval.is_zero(),
            ),
            ("tail.checkpoint_interval", t.checkpoint_interval.is_zero()),
            ("tail.max_open_files", t.max_open_files == 0),
            ("tail.read_chunk_bytes", t.read_chunk_bytes == 0),
            ("tail.batch_max_records", t.batch_max_records == 0),
            ("tail.batch_max_bytes", t.batch_max_bytes == 0),
        ] {
            if zero {
                errors.push(LogSourceError::Zero {
                    source_name: name.clone(),
                    what,
                });
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    fn tail_config(&self) -> TailConfig {
        let t = &self.tail;
        TailConfig {
            source: self.source.as_str().into(),
            start_at: self.start_at,
            max_line_bytes: self.max_line_bytes,
            read_chunk_bytes: t.read_chunk_bytes,
            batch_max_records: t.batch_max_records,
            batch_max_bytes: t.batch_max_bytes,
            max_open_files: t.max_open_files,
            fingerprint_bytes: t.fingerprint_bytes,
            partial_line_timeout: t.partial_line_timeout,
            rotate_wait: t.rotate_wait,
            checkpoint_expiry: t.checkpoint_expiry,
            join: (self.multiline.enabled && self.format != Format::Json).then(|| JoinerConfig {
                timeout: self.multiline.timeout,
                max_bytes: self.max_line_bytes,
                ..JoinerConfig::default()
            }),
            cri: matches!(self.format, Format::Auto | Format::Cri),
        }
    }
}

/// The consumer's end gave up: the tailer stops (the batch it held is not acknowledged).
#[derive(Debug, thiserror::Error)]
#[error("the log consumer is gone")]
pub struct ConsumerGone;

/// Where a source's tailer hands its batches, called on the tailer's own thread.
pub trait Handoff: Send + 'static {
    /// Hands `batch` on, waiting for room until `until` at most: `Ok(true)` once it is taken,
    /// `Ok(false)` when there is no room yet — then the hand-off keeps the batch and the tailer
    /// calls [`Handoff::wait`] until it is taken, before handing on another (the files are the
    /// buffer). The batch's acknowledgement must follow the contract of [`Batch`].
    fn hand_off(&mut self, batch: Batch, until: Instant) -> Result<bool, ConsumerGone>;

    /// Waits for room for the batch kept by [`Handoff::hand_off`] until `until` at most;
    /// `Ok(true)` once it is taken (or when none is kept).
    fn wait(&mut self, until: Instant) -> Result<bool, ConsumerGone>;
}

/// How long the tailer waits for room in its hand-off before it looks at the files again (file
/// events, the periodic scan, acknowledgements, the cancellation).
const HANDOFF_WAIT: Duration = Duration::from_millis(200);

/// A built log source, ready to [`run`](LogSource::run).
#[derive(Debug)]
pub struct LogSource {
    config: LogSourceConfig,
    discovery: Discovery,
    parser: Parser,
    redactor: Arc<Redactor>,
    stats: LogStats,
}

impl LogSource {
    /// Compiles patterns and rules; opens nothing, spawns nothing.
    pub fn build(config: LogSourceConfig, stats: LogStats) -> Result<Self, Vec<LogSourceError>> {
        config.validate()?;
        let name = config.source.clone();
        let discovery = Discovery::new(&config.include, &config.exclude, config.exclude_compressed)
            .map_err(|error| {
                vec![LogSourceError::Discover {
                    source_name: name.clone(),
                    error,
                }]
            })?;
        let redactor = Redactor::shared(&config.redaction).map_err(|error| {
            vec![LogSourceError::Redact {
                source_name: name.clone(),
                error,
            }]
        })?;
        let parser = Parser::new(ParserConfig {
            format: config.format,
            max_line_bytes: config.max_line_bytes,
            ..ParserConfig::default()
        });
        Ok(Self {
            config,
            discovery,
            parser,
            redactor,
            stats,
        })
    }

    /// The source name.
    pub fn name(&self) -> &str {
        &self.config.source
    }

    /// Tails until `cancel`, handing batches to `handoff` (which blocks while there is no room:
    /// that pauses the reading). On cancel: stops reading, drops `handoff`, waits up to
    /// `tail.drain_timeout` for the consumer to acknowledge what it already received, writes
    /// the final checkpoint and returns.
    /// Checkpoints live in `checkpoint_dir` (the agent's `store.path`).
    ///
    /// The tailer runs on a thread of its own for the source's lifetime (one thread per
    /// source): it blocks in [`watch::wait`] on the inotify
    /// descriptor, its deadlines and the cancellation, so a read costs no thread hand-off.
    pub async fn run(
        self,
        handoff: impl Handoff,
        checkpoint_dir: PathBuf,
        cancel: CancellationToken,
    ) -> Result<(), LogSourceError> {
        let name = self.config.source.clone();
        let waker = Waker::new().map_err(|error| LogSourceError::Waker {
            source_name: name.clone(),
            error,
        })?;
        let wake_on_cancel = {
            let (cancel, waker) = (cancel.clone(), waker.clone());
            tokio::spawn(async move {
                cancel.cancelled().await;
                waker.wake();
            })
        };
        // A thread of its own, not tokio's blocking pool: the pool is small (the agent caps
        // it) and one long-lived tailer per source would take it over.
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name(format!("tail {name}"))
            .spawn(move || {
                let _ = done_tx.send(self.run_blocking(handoff, &checkpoint_dir, &cancel, &waker));
            });
        if let Err(error) = spawned {
            wake_on_cancel.abort();
            return Err(LogSourceError::Thread {
                source_name: name,
                error,
            });
        }
        // A panicking tailer drops the sender without a result.
        let result = done_rx.await.map_err(|_| LogSourceError::Panicked(name));
        wake_on_cancel.abort();
        result?
    }

    fn run_blocking(
        self,
        mut handoff: impl Handoff,
        checkpoint_dir: &Path,
        cancel: &CancellationToken,
        waker: &Waker,
    ) -> Result<(), LogSourceError> {
        let name = self.config.source.clone();
        let tuning = self.config.tail.clone();
        let tail_error = |error| LogSourceError::Tail {
            source_name: name.clone(),
            error,
        };
        let cfg = self.config.tail_config();
        let mut tailer = Tailer::new(
            cfg,
            self.discovery,
            self.parser,
            self.redactor,
            self.stats,
            checkpoint_dir,
        )
        .map_err(tail_error)?;
        let Some(mut acks) = tailer.take_ack_receiver() else {
            return Err(LogSourceError::Panicked(name));
        };
        let mut watch = match DirWatch::new() {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(source = %name, error = %e, "no file events; relying on the periodic scan");
                None
            }
        };

        let mut next_scan = Instant::now();
        let mut next_checkpoint = Instant::now() + tuning.checkpoint_interval;
        let mut rescan = true;
        let mut checkpoint_failing = false;
        loop {
            while let Ok(seq) = acks.try_recv() {
                tailer.acked(seq);
            }
            if cancel.is_cancelled() {
                break;
            }
            // The events queued so far are served by this read.
            if let Some(w) = &mut watch
                && w.drain().rescan
            {
                rescan = true;
            }
            let now = Instant::now();
            let mut covered = None;
            if now >= next_scan || rescan {
                covered = Some(
                    watch
                        .as_mut()
                        .is_some_and(|w| watch_roots(&name, w, tailer.discovery())),
                );
                rescan = true;
            }
            let checkpoint = now >= next_checkpoint;
            if checkpoint {
                next_checkpoint = now + tuning.checkpoint_interval;
            }
            let last_poll = Instant::now();
            if std::mem::take(&mut rescan) {
                tailer.scan(last_poll);
            }
            if let Some(covered) = covered {
                // While inotify covers every directory involved, creations and writes raise
                // events: the periodic scan is only a safety net, and an idle source sleeps.
                // A file reached through a symlink writes into a directory not watched.
                next_scan = now
                    + if covered && !tailer.follows_symlinks() {
                        tuning.watched_scan_interval
                    } else {
                        tuning.scan_interval
                    };
            }
            tailer.tick(last_poll);
            let mut found = tailer.poll(last_poll);
            // Offsets acknowledged since the last round reach the checkpoint now (without
            // `fsync`: that survives a crash of the process), so `kill -9` repeats at most what
            // was not acknowledged yet; the periodic write below makes them durable.
            if !checkpoint
                && let Err(e) = tailer.write_acknowledged()
                && !checkpoint_failing
            {
                checkpoint_failing = true;
                tracing::warn!(source = %name, error = %e, "log checkpoint write failed; retrying every checkpoint interval");
            }
            if checkpoint {
                // Counted every time (`sidelight_log_checkpoint_write_errors_total`), logged
                // when it starts failing and when it works again: a full disk is not worth a
                // warning a second.
                match tailer.write_checkpoint() {
                    Err(e) if !checkpoint_failing => {
                        checkpoint_failing = true;
                        tracing::warn!(source = %name, error = %e, "log checkpoint write failed; retrying every checkpoint interval");
                    }
                    Err(_) => {}
                    Ok(()) if checkpoint_failing => {
                        checkpoint_failing = false;
                        tracing::info!(source = %name, "log checkpoint written again");
                    }
                    Ok(()) => {}
                }
            }
            if let Some(batch) = tailer.take_batch() {
                found = true;
                // Waits while there is no room (the files are the buffer: nothing more is
                // read). Meanwhile file events and the periodic scan still run, so files the
                // service creates and rotates away during a long wait are tracked — held
                // open, up to `max_open_files` — and read once there is room. A stopping
                // consumer gives up, which ends the wait; a batch not taken is not
                // acknowledged, so its lines are read again on restart.
                let mut taken = handoff.hand_off(batch, Instant::now() + HANDOFF_WAIT);
                while matches!(taken, Ok(false)) && !cancel.is_cancelled() {
                    while let Ok(seq) = acks.try_recv() {
                        tailer.acked(seq);
                    }
                    let now = Instant::now();
                    let events = watch.as_mut().is_some_and(|w| w.drain().rescan);
                    if events || now >= next_scan {
                        if let Some(w) = &mut watch {
                            watch_roots(&name, w, tailer.discovery());
                        }
                        tailer.scan(now);
                        next_scan = now + tuning.scan_interval;
                    }
                    if now >= next_checkpoint {
                        next_checkpoint = now + tuning.checkpoint_interval;
                        let _ = tailer.write_checkpoint();
                    } else {
                        let _ = tailer.write_acknowledged();
                    }
                    taken = handoff.wait(Instant::now() + HANDOFF_WAIT);
                }
                if !matches!(taken, Ok(true)) {
                    if !cancel.is_cancelled() {
                        tracing::warn!(source = %name, "log consumer is gone; stopping the tailer");
                    }
                    break;
                }
                // A hand-off that delivered at once has acknowledged already.
                while let Ok(seq) = acks.try_recv() {
                    tailer.acked(seq);
                }
                if let Err(e) = tailer.write_acknowledged()
                    && !checkpoint_failing
                {
                    checkpoint_failing = true;
                    tracing::warn!(source = %name, error = %e, "log checkpoint write failed; retrying every checkpoint interval");
                }
            }
            if tailer.has_backlog() {
                // More is readable now (a full batch, or a long line still without its end).
                continue;
            }
            let mut until = next_scan;
            // Acknowledgements arrive without waking the tailer: while batches are out, or
            // acknowledged offsets are not written yet, the next checkpoint is a reason to
            // wake; once everything is written, an idle source does not wake for it.
            if tailer.unacked_batches() > 0 || tailer.checkpoint_changed() {
                until = until.min(next_checkpoint);
            }
            if let Some(d) = tailer.next_deadline() {
                // Not sooner than a moment after this read: a deadline that passed while its
                // file keeps growing must not make the loop spin.
                until = until.min(d.max(last_poll + MIN_DEADLINE_WAIT));
            }
            // copytruncate loses whatever was written between the last read and the
            // truncation: once a source shows it, read on every event at once.
            let coalesce = if tailer.truncate_seen() {
                Duration::ZERO
            } else {
                tuning.coalesce
            };
            // Reads are at least `tail.coalesce` apart, so a service that logs in many small
            // writes costs one read per window, not one per write; the kernel merges the
            // events queued meanwhile. While the last read found something, more is likely:
            // sleep to the end of the window and read, without waiting for an event first
            // (one wake-up per window, not two). Only an empty read waits for an event.
            if found && !coalesce.is_zero() {
                if watch::wait(waker, None, until.min(last_poll + coalesce)) == Woken::Waker {
                    break;
                }
                continue;
            }
            match watch::wait(waker, watch.as_ref(), until) {
                Woken::Waker => break,
                Woken::Timeout => {}
                Woken::Events => {
                    if watch::wait(waker, None, last_poll + coalesce) == Woken::Waker {
                        break;
                    }
                }
            }
        }

        // Shutdown: let go of the consumer, collect the acknowledgements still coming,
        // checkpoint.
        drop(watch);
        drop(handoff);
        tailer.close_acks();
        let deadline = Instant::now() + tuning.drain_timeout;
        loop {
            match acks.try_recv() {
                Ok(seq) => tailer.acked(seq),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    if Instant::now() >= deadline {
                        tracing::warn!(source = %name, "stopping with unacknowledged log batches; they are read again on restart");
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        tailer
            .write_checkpoint()
            .map_err(|e| tail_error(TailError::Checkpoint(e)))
    }
}

/// Watches each root directory not yet watched (roots may appear after start-up). A root that
/// does not exist yet is waited for by watching its nearest existing ancestor: the creation of
/// the next directory down wakes a rescan, which watches the root as soon as it is there, so the
/// first lines of a service that creates its log directory are read at once, not at the next
/// periodic scan.
///
/// Returns whether the events can be relied on: every root (or the ancestor it is waited for
/// in) is watched, and [`DirWatch::reliable`].
fn watch_roots(name: &str, watch: &mut DirWatch, discovery: &Discovery) -> bool {
    let mut covered = true;
    for (root, recursive) in discovery.watch_roots() {
        let (dir, recursive) = if Path::new(root).is_dir() {
            (root.to_path_buf(), recursive)
        } else {
            let Some(ancestor) = root.ancestors().skip(1).find(|a| a.is_dir()) else {
                covered = false;
                continue;
            };
            (ancestor.to_path_buf(), false)
        };
        if watch.is_watched(&dir) {
            continue;
        }
        let capped = watch.capped();
        if let Err(e) = watch.watch(&dir, recursive) {
            covered = false;
            if !capped && watch.first_failure(&dir) {
                tracing::warn!(source = %name, dir = %dir.display(), error = %e, "cannot watch directory; relying on the periodic scan");
            }
        } else if watch.capped() && !capped {
            tracing::warn!(source = %name, dir = %dir.display(), limit = watch::MAX_WATCHES, "too many directories to watch; the rest rely on the periodic scan");
        }
    }
    covered && watch.reliable()
}

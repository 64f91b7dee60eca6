//! The synchronous core of the file tailer: tracks files by identity across rotation, reads them
//! in bounded chunks, splits lines, runs them through the joiner, parser and redactor, and builds
//! bounded [`Batch`]es whose offsets are checkpointed only once the consumer acknowledges them.
//!
//! No async and no clock inside: the caller passes `now` and decides when to scan, poll, seal
//! and checkpoint (the async loop lives in `source.rs`), which keeps every rotation case testable
//! step by step.
//!
//! Architecture invariants:
//! - a checkpointed offset is always at a line (or joined-record) boundary, and never beyond the
//!   last byte of a record that every sink has received;
//! - acknowledgements are applied in batch order, so out-of-order acks never skip an unacked batch;
//! - memory is bounded by one batch, one read chunk, and per file one capped partial line and one
//!   capped joined record, whatever the file sizes;
//! - identity is device + inode + a fingerprint of the first bytes; an inode alone is never trusted;
//! - a file is only ever opened with `O_NONBLOCK` and read only after `fstat` says it is a regular
//!   file, so a FIFO or device put where a log was never blocks the tailer;
//! - a file renamed to a rotated name (`app.log.1`, `app.log.2026-12-06`, `app.log-20261206`)
//!   is followed by identity even outside the include globs, and a rotated file written since
//!   the previous scan (or, after a restart, since the last scan before the checkpoint) is read
//!   even if this tailer never saw it under its first name;
//! - a copy of a file (new inode, same first bytes: copytruncate) continues from the offset read
//!   in the original instead of being read again from 0;
//! - bytes the tailer can prove it skipped are counted in `lost_bytes` with a reason.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, Metadata, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use super::checkpoint::{CheckpointError, CheckpointFile, Entry, Fingerprint};
use super::discover::{Discovery, mtime_ns};
use super::multiline::{Joined, Joiner, JoinerConfig};
use super::otlp::EncodedLogs;
use super::parse::{Parser, split_cri};
use super::record::AttrValue;

/// The stream and runtime time of a CRI line.
type CriMeta = (&'static str, u64);
use super::redact::Redactor;
use super::stats::{LOST_DELETED, LOST_LINE_TOO_LONG, LOST_TRUNCATED, LogStats, level_label};

/// A rotated file modified this long before the previous scan started is still taken as
/// possibly unread (file times come from a coarser clock than ours).
const MTIME_SLACK_MS: u64 = 1000;

/// Fewest fingerprint bytes that make two files the same content (a copy): shorter prefixes
/// (a file of one short line) are too likely to be shared by chance.
const MIN_COPY_FINGERPRINT: usize = 64;

/// Bytes compared beyond the fingerprint before a new file is taken for a copy of a live one.
const COPY_COMPARE_BYTES: usize = 64 * 1024;

/// Files remembered at most as found but waiting for a descriptor (see [`Tailer::scan`]); more
/// are still found again by later scans, but their loss, if they go, is not counted.
const MAX_DEFERRED: usize = 4096;

/// Where to start reading a file that has no checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// From the first byte.
    #[default]
    Beginning,
    /// From the current end — only for files present at start-up; files that appear later
    /// (a rotation's new file) are always read from the beginning, or their first lines would
    /// be lost.
    End,
}

/// Tailer settings (built from [`super::source::LogSourceConfig`]).
#[derive(Debug, Clone)]
pub struct TailConfig {
    pub source: Arc<str>,
    pub start_at: StartAt,
    pub max_line_bytes: usize,
    /// Bytes per read.
    pub read_chunk_bytes: usize,
    /// A batch is sealed at this many records…
    pub batch_max_records: usize,
    /// …or this many bytes of line text.
    pub batch_max_bytes: usize,
    /// Descriptors held at most; the least recently read file is closed beyond it and reopened
    /// by identity later.
    pub max_open_files: usize,
    /// Bytes hashed for identity.
    pub fingerprint_bytes: usize,
    /// A last line without `\n` is emitted after the file has not grown for this long.
    pub partial_line_timeout: Duration,
    /// A file renamed out of the patterns or deleted is read to its end, then released once it
    /// has not grown for this long.
    pub rotate_wait: Duration,
    /// Checkpoints of files not seen for this long are dropped.
    pub checkpoint_expiry: Duration,
    /// Traceback joining (`None` for `format: json`).
    pub join: Option<JoinerConfig>,
    /// Recognise CRI lines (`format: cri` and `auto`): strip the prefix, join partial lines.
    pub cri: bool,
}

impl TailConfig {
    /// Defaults for `source`.
    pub fn new(source: &str) -> Self {
        Self {
            source: source.into(),
            start_at: StartAt::Beginning,
            max_line_bytes: super::parse::DEFAULT_MAX_LINE_BYTES,
            read_chunk_bytes: 64 * 1024,
            batch_max_records: 1000,
            batch_max_bytes: 1024 * 1024,
            max_open_files: 256,
            fingerprint_bytes: 256,
            partial_line_timeout: Duration::from_secs(5),
            rotate_wait: Duration::from_secs(1),
            checkpoint_expiry: Duration::from_secs(24 * 3600),
            join: Some(JoinerConfig::default()),
            cri: true,
        }
    }
}

/// Errors that stop a tailer (per-file trouble is logged and counted instead).
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// A batch of records handed to the consumer.
///
/// Contract: the consumer calls [`Ack::ack`] (via [`Batch::ack`] or after taking `records`)
/// once every sink has accepted the records. Only then do the batch's file offsets become
/// eligible for the checkpoint; acknowledgements are applied in batch order. A batch dropped
/// without an acknowledgement holds back the checkpoint of its files (and of later batches'
/// offsets of those files) for the rest of the run, so its lines are read again after a restart.
#[derive(Debug)]
pub struct Batch {
    /// The records, already encoded (see [`EncodedLogs`]).
    pub logs: EncodedLogs,
    pub ack: Ack,
}

impl Batch {
    /// Splits the batch into its records and its acknowledgement token.
    pub fn into_parts(self) -> (EncodedLogs, Ack) {
        (self.logs, self.ack)
    }
}

/// The acknowledgement token of one [`Batch`]: a sequence number and the way back to the
/// tailer. Cheap to move across tasks; acknowledging after the tailer stopped is harmless.
#[derive(Debug)]
pub struct Ack {
    seq: u64,
    tx: mpsc::UnboundedSender<u64>,
}

impl Ack {
    /// The batch's sequence number (increasing per source).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Acknowledges the batch: every sink has it.
    pub fn ack(self) {
        // The tailer may be gone (it stopped); then there is nothing left to advance.
        let _ = self.tx.send(self.seq);
    }
}

/// Per-file offsets a batch advances to: id → (generation, offset). Updated for every line, so
/// keyed by foldhash rather than SipHash (ids are the tailer's own counter, not input).
type Marks = HashMap<u64, (u64, u64), foldhash::fast::FixedState>;

#[derive(Debug)]
struct Inflight {
    marks: Marks,
    acked: bool,
}

#[derive(Debug, Default)]
struct Building {
    logs: EncodedLogs,
    bytes: usize,
    marks: Marks,
}

#[derive(Debug)]
struct Tracked {
    id: u64,
    path: PathBuf,
    path_arc: Arc<str>,
    dev: u64,
    ino: u64,
    fp: Fingerprint,
    /// Bumped when the content is replaced under the same identity (copytruncate), so late
    /// acknowledgements of the old content do not move the new offsets.
    generation: u64,
    file: Option<File>,
    /// Next byte to read.
    read_offset: u64,
    /// The incomplete last line (capped at `max_line_bytes + 1`).
    partial: Vec<u8>,
    /// Bytes of the partial line beyond the cap.
    partial_dropped: usize,
    /// When the file last grew while a partial line was pending.
    partial_since: Option<Instant>,
    joiner: Option<Joiner>,
    /// Where the joiner's pending record starts.
    pending_start: Option<u64>,
    /// Every byte before it is in an emitted record (or was blank).
    emitted_offset: u64,
    /// Every byte before it was acknowledged.
    acked_offset: u64,
    /// Size at the last look.
    size_seen: u64,
    last_used: Instant,
    /// Seen at `path` in the last scan.
    present: bool,
    /// Not seen since then: read to the end, then released.
    orphan_since: Option<Instant>,
    /// Released (read to the end, or unreadable); kept until its offsets are acknowledged.
    done: bool,
    seen_unix: u64,
    deleted_counted: bool,
    /// A copy of this (live) file, not read: its content is read through the original, and it
    /// takes over where the original was read to when the original is truncated.
    copy_of: Option<u64>,
    /// The parts of a CRI line split by the runtime (`P`), capped at `max_line_bytes`.
    cri_partial: Vec<u8>,
    cri_partial_dropped: usize,
    /// Where the first part starts.
    cri_start: Option<u64>,
    /// Stream and time of the first line of the joiner's pending record.
    cri_record: Option<CriMeta>,
}

impl Tracked {
    fn line_offset(&self) -> u64 {
        self.read_offset - (self.partial.len() + self.partial_dropped) as u64
    }
}

/// The file tailer of one log source.
#[derive(Debug)]
pub struct Tailer {
    cfg: TailConfig,
    discovery: Discovery,
    parser: Parser,
    redactor: Arc<Redactor>,
    /// The time of the read whose lines are being processed (unix nanoseconds): a record's
    /// observed time, read from the clock once per chunk rather than once per line.
    read_unix_nano: Option<u64>,
    stats: LogStats,
    source_label: [(&'static str, String); 1],
    /// `sidelight_log_records_total` of this source by level label, looked up once per level.
    level_counters: Vec<(&'static str, Counter)>,
    checkpoint: CheckpointFile,
    files: BTreeMap<u64, Tracked>,
    by_inode: HashMap<(u64, u64), u64>,
    /// Checkpoint entries of files not (yet) found, kept until they expire.
    stale: Vec<Entry>,
    next_id: u64,
    next_seq: u64,
    building: Building,
    inflight: BTreeMap<u64, Inflight>,
    ack_tx: Option<mpsc::UnboundedSender<u64>>,
    ack_rx: Option<mpsc::UnboundedReceiver<u64>>,
    warned: HashSet<(PathBuf, &'static str)>,
    open_count: usize,
    scanned_once: bool,
    /// The last scan followed a symlink to a file.
    symlinks: bool,
    last_written: Option<Vec<Entry>>,
    buf: Vec<u8>,
    joined: Vec<Joined>,
    /// Round-robin start for fairness between files.
    cursor: u64,
    /// A file of this source was truncated in place (copytruncate) at least once.
    truncate_seen: bool,
    /// Unix milliseconds when the last complete scan started (from the checkpoint at start).
    last_scan_ms: Option<u64>,
    /// Reasons of lost bytes already logged (each is logged once, then only counted).
    lost_logged: HashSet<&'static str>,
    /// Compressed rotated files already counted as skipped.
    skipped: HashSet<(u64, u64)>,
    /// Rotated files present when first seen but older than the last look (history): never
    /// read, even once the threshold would call them new. Rebuilt by every scan.
    ignored: HashSet<(u64, u64)>,
    /// An acknowledgement moved an offset (or the first scan ran) since the last checkpoint
    /// write.
    acked_dirty: bool,
    /// The last checkpoint write was not `fsync`ed.
    durable_pending: bool,
    /// Files the last scan found and could not track for want of a descriptor
    /// (`max_open_files`: orphans are never closed), with their path and size then: tracked by
    /// a later scan, or counted lost if they are gone by then.
    deferred: HashMap<(u64, u64), (PathBuf, u64)>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What opening a path found.
enum Opened {
    File(File, Metadata),
    /// A FIFO, socket, device or directory: never read.
    NotRegular,
}

/// Opens `path` for reading without ever blocking (a FIFO opened for reading blocks until a
/// writer comes; `O_NONBLOCK` makes `open` return at once) and keeps it only if `fstat` says it
/// is a regular file. On a regular file `O_NONBLOCK` changes nothing.
fn open_regular(path: &Path) -> std::io::Result<Opened> {
    let nonblock = i32::try_from(rustix::fs::OFlags::NONBLOCK.bits()).unwrap_or(0);
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nonblock)
        .open(path)?;
    let meta = file.metadata()?;
    if meta.is_file() {
        Ok(Opened::File(file, meta))
    } else {
        Ok(Opened::NotRegular)
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn read_prefix(file: &File, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let n = file.read_at(&mut buf[got..], got as u64)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    buf.truncate(got);
    Ok(buf)
}

/// Whether `copy` (`size` bytes) may be a copy of `orig`, complete or still being written:
/// while `orig` holds its fingerprinted content, `copy` is no longer than it and has its bytes
/// over the fingerprint and [`COPY_COMPARE_BYTES`] more; once `orig` was rewritten (or is
/// closed), `copy` must start with the fingerprinted bytes.
fn copy_of_original(copy: &File, size: u64, orig: &Tracked) -> bool {
    let fp_len = orig.fp.len as usize;
    let copy_starts_with_fp =
        || read_prefix(copy, fp_len).is_ok_and(|p| orig.fp.matches_prefix(&p));
    let Some(of) = &orig.file else {
        return copy_starts_with_fp();
    };
    let Ok(orig_prefix) = read_prefix(of, fp_len) else {
        return copy_starts_with_fp();
    };
    if !orig.fp.matches_prefix(&orig_prefix) {
        // The original was rewritten since: a copy holds its old content.
        return copy_starts_with_fp();
    }
    if of.metadata().is_ok_and(|m| m.len() < size) {
        // Longer than the original: written to on its own.
        return false;
    }
    let len = usize::try_from(size)
        .unwrap_or(usize::MAX)
        .min(fp_len + COPY_COMPARE_BYTES);
    let read = |f: &File| {
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match f.read_at(&mut buf[got..], got as u64) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        buf.truncate(got);
        buf
    };
    let mine = read(copy);
    !mine.is_empty() && mine == read(of)
}

fn error_kind(e: &std::io::Error) -> &'static str {
    match e.kind() {
        ErrorKind::PermissionDenied => "permission_denied",
        ErrorKind::NotFound => "not_found",
        ErrorKind::IsADirectory => "not_a_file",
        _ => "io",
    }
}

impl Tailer {
    /// A tailer with the checkpoint of `cfg.source` in `checkpoint_dir` loaded (a corrupt
    /// checkpoint is logged, counted and ignored: the files are read again).
    pub fn new(
        cfg: TailConfig,
        discovery: Discovery,
        parser: Parser,
        redactor: impl Into<Arc<Redactor>>,
        stats: LogStats,
        checkpoint_dir: &Path,
    ) -> Result<Self, TailError> {
        let mut checkpoint = CheckpointFile::new(checkpoint_dir, &cfg.source);
        let source_label = [("source", cfg.source.to_string())];
        let loaded = match checkpoint.load() {
            Ok(loaded) => loaded,
            Err(e @ CheckpointError::Corrupt { .. }) => {
                tracing::error!(error = %e, "ignoring corrupt log checkpoint; files are read again");
                stats.checkpoint_errors.get_or_create(&source_label).inc();
                Default::default()
            }
            Err(e) => return Err(e.into()),
        };
        let stale = loaded.entries;
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        Ok(Self {
            cfg,
            discovery,
            parser,
            redactor: redactor.into(),
            read_unix_nano: None,
            stats,
            source_label,
            level_counters: Vec::new(),
            checkpoint,
            files: BTreeMap::new(),
            by_inode: HashMap::new(),
            stale,
            next_id: 0,
            next_seq: 0,
            building: Building::default(),
            inflight: BTreeMap::new(),
            ack_tx: Some(ack_tx),
            ack_rx: Some(ack_rx),
            warned: HashSet::new(),
            open_count: 0,
            scanned_once: false,
            symlinks: false,
            last_written: None,
            buf: Vec::new(),
            joined: Vec::new(),
            cursor: 0,
            truncate_seen: false,
            last_scan_ms: loaded.scanned_unix_ms,
            lost_logged: HashSet::new(),
            skipped: HashSet::new(),
            ignored: HashSet::new(),
            acked_dirty: false,
            durable_pending: false,
            deferred: HashMap::new(),
        })
    }

    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }

    /// Takes the acknowledgement receiver (the async loop awaits it); afterwards acks must be
    /// passed in with [`Tailer::acked`].
    pub fn take_ack_receiver(&mut self) -> Option<mpsc::UnboundedReceiver<u64>> {
        self.ack_rx.take()
    }

    /// Drops the tailer's own ack sender, so the receiver ends once every outstanding
    /// [`Ack`] has been used or dropped (shutdown drain).
    pub fn close_acks(&mut self) {
        self.ack_tx = None;
    }

    /// Applies the acknowledgements waiting in the receiver (when not taken).
    pub fn process_acks(&mut self) {
        let mut seqs = Vec::new();
        if let Some(rx) = &mut self.ack_rx {
            while let Ok(seq) = rx.try_recv() {
                seqs.push(seq);
            }
        }
        for seq in seqs {
            self.acked(seq);
        }
    }

    /// Marks batch `seq` acknowledged and applies every acknowledged batch at the head.
    pub fn acked(&mut self, seq: u64) {
        if let Some(b) = self.inflight.get_mut(&seq) {
            b.acked = true;
        }
        while let Some(entry) = self.inflight.first_entry() {
            if !entry.get().acked {
                break;
            }
            let batch = entry.remove();
            for (id, (generation, offset)) in batch.marks {
                if let Some(t) = self.files.get_mut(&id)
                    && t.generation == generation
                    && offset > t.acked_offset
                {
                    t.acked_offset = offset;
                    self.acked_dirty = true;
                }
            }
        }
        self.drop_finished();
    }

    /// Forgets released files whose offsets are all acknowledged; their identity stays among
    /// the checkpoint entries (`released`) while a rotated name could still bring them back.
    fn drop_finished(&mut self) {
        let now = unix_now();
        let finished: Vec<u64> = self
            .files
            .values()
            .filter(|t| t.done && t.acked_offset >= t.emitted_offset)
            .map(|t| t.id)
            .collect();
        for id in finished {
            if let Some(t) = self.files.remove(&id) {
                let offset = if t.copy_of.is_some() {
                    t.size_seen
                } else {
                    t.acked_offset
                };
                self.stale.push(Entry {
                    dev: t.dev,
                    ino: t.ino,
                    fingerprint: t.fp,
                    offset,
                    path: t.path,
                    seen_unix: now,
                    size: t.size_seen.max(offset),
                    released: true,
                });
            }
        }
    }

    /// Counts `bytes` lost for `reason`; the first loss of each reason is logged.
    fn lost(&mut self, reason: &'static str, bytes: u64, path: &Path) {
        if bytes == 0 {
            return;
        }
        self.stats
            .lost_bytes
            .get_or_create(&[
                ("source", self.cfg.source.to_string()),
                ("reason", reason.to_owned()),
            ])
            .inc_by(bytes);
        if self.lost_logged.insert(reason) {
            tracing::warn!(source = %self.cfg.source, path = %path.display(), reason, bytes, "log bytes skipped; further losses of this kind are only counted (sidelight_log_lost_bytes_total)");
        }
    }

    /// Batches handed out and not yet acknowledged.
    pub fn unacked_batches(&self) -> usize {
        self.inflight.values().filter(|b| !b.acked).count()
    }

    fn warn_once(&mut self, path: &Path, kind: &'static str, err: &dyn std::fmt::Display) {
        if self.warned.insert((path.to_path_buf(), kind)) {
            tracing::warn!(source = %self.cfg.source, path = %path.display(), kind, error = %err, "cannot tail log file");
            self.stats
                .file_errors
                .get_or_create(&[
                    ("source", self.cfg.source.to_string()),
                    ("kind", kind.to_owned()),
                ])
                .inc();
        }
    }

    fn rotation(&self, kind: &str) {
        self.stats
            .rotations
            .get_or_create(&[
                ("source", self.cfg.source.to_string()),
                ("kind", kind.to_owned()),
            ])
            .inc();
    }

    /// Looks for files: new ones are tracked (resuming from a checkpoint when their identity
    /// matches one), renamed ones followed, vanished ones orphaned (read to the end, then
    /// released). Rotated siblings (see [`Discovery`]) are followed when they are a tracked or
    /// checkpointed identity, or were written since the previous scan.
    pub fn scan(&mut self, now: Instant) {
        let started_ms = unix_ms();
        let mut errors = Vec::new();
        let mut found = self
            .discovery
            .scan(&mut |p: &Path, e| errors.push((p.to_path_buf(), e)));
        for (p, e) in errors {
            let kind = error_kind(&e);
            self.warn_once(&p, kind, &e);
        }
        let seen_unix = unix_now();
        let first = !self.scanned_once;
        self.scanned_once = true;
        self.symlinks = found.iter().any(|f| f.symlink && !f.rotated);
        // Rotated files modified after this may hold lines never read.
        let newer_than = self
            .last_scan_ms
            .map(|ms| ms.saturating_sub(MTIME_SLACK_MS).saturating_mul(1_000_000));
        for t in self.files.values_mut() {
            t.present = false;
        }
        // Known identities first: a new file is recognised as a copy only against them.
        found.sort_by_key(|f| {
            !(self.by_inode.contains_key(&(f.dev, f.ino))
                || self.stale.iter().any(|e| (e.dev, e.ino) == (f.dev, f.ino)))
        });
        let mut deferred = false;
        let mut waiting = HashMap::new();
        let found_ids: HashSet<(u64, u64)> = found.iter().map(|f| (f.dev, f.ino)).collect();
        let mut ignored = HashSet::new();
        for f in found {
            if f.not_a_file {
                if !f.rotated {
                    self.warn_once(
                        &f.path,
                        "not_a_file",
                        &"a pattern matched a directory or special file",
                    );
                }
                continue;
            }
            if let Some(&id) = self.by_inode.get(&(f.dev, f.ino)) {
                if self.same_content(id, &f.path) {
                    let Some(t) = self.files.get_mut(&id) else {
                        continue;
                    };
                    let renamed = t.path != f.path;
                    if renamed {
                        t.path = f.path.clone();
                        t.path_arc = f.path.to_string_lossy().into();
                    }
                    if !f.rotated {
                        t.present = true;
                        t.orphan_since = None;
                    }
                    t.seen_unix = seen_unix;
                    if renamed && !f.rotated {
                        self.rotation("rename");
                    }
                    continue;
                }
                // Same inode, other content: the old file is gone for good.
                self.release(id);
            }
            if f.rotated {
                let newer = newer_than.is_some_and(|n| f.mtime_ns > n);
                if f.compressed {
                    if newer && self.skipped.insert((f.dev, f.ino)) {
                        self.skipped_compressed(&f.path);
                    }
                    continue;
                }
                let done = self
                    .files
                    .values()
                    .any(|t| t.done && (t.dev, t.ino) == (f.dev, f.ino));
                // An entry of this inode, if the file still has that entry's first bytes (an
                // inode is recycled as soon as a file is deleted).
                let known = self
                    .stale
                    .iter()
                    .find(|e| (e.dev, e.ino) == (f.dev, f.ino))
                    .filter(|e| {
                        e.fingerprint.len > 0
                            && matches!(open_regular(&f.path), Ok(Opened::File(file, _))
                                if read_prefix(&file, e.fingerprint.len as usize)
                                    .is_ok_and(|p| e.fingerprint.matches_prefix(&p)))
                    })
                    .map(|e| (e.released, e.offset));
                let follow = match known {
                    _ if done => false,
                    Some((true, offset)) => offset < f.size,
                    Some((false, _)) => true,
                    None => newer && !self.ignored.contains(&(f.dev, f.ino)),
                };
                if !follow {
                    if known.is_none() && !done {
                        ignored.insert((f.dev, f.ino));
                    }
                    continue;
                }
            }
            let room = self.track_new(&f.path, f.dev, f.ino, first, now, seen_unix, !f.rotated);
            deferred |= !room;
            if !room && waiting.len() < MAX_DEFERRED {
                waiting.insert((f.dev, f.ino), (f.path, f.size));
            }
        }
        self.ignored = ignored;
        // Files that waited for a descriptor and are gone now (deleted by the service's own
        // rotation before one was free): what they held when last seen is lost.
        let gone: Vec<(PathBuf, u64)> = std::mem::replace(&mut self.deferred, waiting)
            .into_iter()
            .filter(|(id, _)| !found_ids.contains(id) && !self.by_inode.contains_key(id))
            .map(|(_, v)| v)
            .collect();
        for (path, size) in gone {
            self.lost(LOST_DELETED, size, &path);
        }
        if first {
            self.find_moved(now, seen_unix);
        }
        let mut orphaned = 0;
        for t in self.files.values_mut() {
            if !t.present && !t.done && t.orphan_since.is_none() {
                t.orphan_since = Some(now);
                orphaned += 1;
            }
        }
        for _ in 0..orphaned {
            self.rotation("moved_or_deleted");
        }
        // Files left out for want of a descriptor keep the threshold where it was.
        if !deferred {
            self.last_scan_ms = Some(started_ms);
        }
        if first {
            // The first checkpoint records this scan: rotated files written after it are read
            // after a crash even if no offset moved before it.
            self.acked_dirty = true;
        }
        self.update_gauges();
    }

    fn skipped_compressed(&mut self, path: &Path) {
        self.stats
            .skipped_files
            .get_or_create(&[
                ("source", self.cfg.source.to_string()),
                ("reason", "compressed".to_owned()),
            ])
            .inc();
        if self.lost_logged.insert("compressed") {
            tracing::warn!(source = %self.cfg.source, path = %path.display(), "a rotated file newer than the last look is compressed and not read; further ones are only counted (sidelight_log_skipped_files_total)");
        }
    }

    /// After the first scan: checkpointed files not found at their path nor under a rotated
    /// name are looked for by identity among their directory's files (any name), and read from
    /// their checkpoint to their end. What is still missing is counted lost.
    fn find_moved(&mut self, now: Instant, seen_unix: u64) {
        let dirs: std::collections::BTreeSet<PathBuf> = self
            .stale
            .iter()
            .filter(|e| !e.released)
            .filter_map(|e| e.path.parent().map(Path::to_path_buf))
            .collect();
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(meta) = entry.metadata() else {
                    continue;
                };
                let key = (meta.dev(), meta.ino());
                if !meta.is_file()
                    || self.by_inode.contains_key(&key)
                    || !self
                        .stale
                        .iter()
                        .any(|e| !e.released && (e.dev, e.ino) == key)
                {
                    continue;
                }
                let path = entry.path();
                let present = self.discovery.selects(&path);
                self.track_new(&path, key.0, key.1, true, now, seen_unix, present);
            }
        }
        let mut missing = Vec::new();
        for e in &mut self.stale {
            if !e.released && e.size > e.offset {
                missing.push((e.path.clone(), e.size - e.offset));
                // Counted once: the entry keeps its place in case the file comes back.
                e.size = e.offset;
            }
        }
        for (path, bytes) in missing {
            self.lost(LOST_DELETED, bytes, &path);
        }
    }

    /// Whether the last [`scan`](Self::scan) found a file through a symlink: its writes raise
    /// inotify events in its own directory, which may not be watched.
    pub fn follows_symlinks(&self) -> bool {
        self.symlinks
    }

    /// For a closed tracked file, whether `path` still has its content (guards inode reuse).
    fn same_content(&mut self, id: u64, path: &Path) -> bool {
        let Some(t) = self.files.get(&id) else {
            return false;
        };
        if t.file.is_some() {
            // An open descriptor pins the inode: it cannot have been reused.
            return true;
        }
        let fp = t.fp;
        match open_regular(path) {
            Ok(Opened::File(f, _)) => {
                read_prefix(&f, fp.len as usize).is_ok_and(|p| fp.matches_prefix(&p))
            }
            _ => false,
        }
    }

    /// A live tracked file of which the file opened as `file` (not tracked) is a copy: same
    /// directory, the same first bytes (at least [`MIN_COPY_FINGERPRINT`] of them, and more
    /// than the fingerprint in all), and — while the original still holds that content — the
    /// same bytes over the next [`COPY_COMPARE_BYTES`].
    fn copy_source(&self, path: &Path, file: &File, size: u64, prefix: &[u8]) -> Option<u64> {
        let min_fp = MIN_COPY_FINGERPRINT.min(self.cfg.fingerprint_bytes).max(1);
        let dir = path.parent();
        // A copy still being written may be shorter than the fingerprint: then its bytes so
        // far must be the original's first bytes.
        self.files
            .values()
            .filter(|t| {
                !t.done
                    && t.copy_of.is_none()
                    && t.fp.len as usize >= min_fp
                    && t.path.parent() == dir
                    && (t.fp.matches_prefix(prefix)
                        || (size < u64::from(t.fp.len) && prefix.len() as u64 == size))
            })
            .find(|t| copy_of_original(file, size, t))
            .map(|t| t.id)
    }

    /// Starts tracking `path`; returns false only when no descriptor was free (try again).
    /// `present`: selected by the patterns (else it is read to its end and let go).
    #[allow(clippy::too_many_arguments)]
    fn track_new(
        &mut self,
        path: &Path,
        dev: u64,
        ino: u64,
        first_scan: bool,
        now: Instant,
        seen_unix: u64,
        present: bool,
    ) -> bool {
        if !self.make_room(None) {
            return false;
        }
        let (file, meta) = match open_regular(path) {
            Ok(Opened::File(f, m)) => (f, m),
            Ok(Opened::NotRegular) => {
                if present {
                    self.warn_once(path, "not_a_file", &"not a regular file");
                }
                return true;
            }
            Err(e) if e.kind() == ErrorKind::NotFound => return true,
            Err(e) => {
                let kind = error_kind(&e);
                self.warn_once(path, kind, &e);
                return true;
            }
        };
        // The file we opened may not be the one stat saw (replaced in between): trust the fd.
        let (dev, ino) = if (meta.dev(), meta.ino()) == (dev, ino) {
            (dev, ino)
        } else {
            (meta.dev(), meta.ino())
        };
        if self.by_inode.contains_key(&(dev, ino)) {
            return true;
        }
        let prefix = match read_prefix(&file, self.cfg.fingerprint_bytes) {
            Ok(p) => p,
            Err(e) => {
                self.warn_once(path, error_kind(&e), &e);
                return true;
            }
        };
        self.warned.retain(|(p, _)| p != path);
        let size = meta.len();
        // An entry of a file that was empty says nothing about identity (a recycled inode
        // matches it whatever it holds); it resumes at 0 like a new file would.
        let resume = self.stale.iter().position(|e| {
            e.dev == dev
                && e.ino == ino
                && e.fingerprint.len > 0
                && e.fingerprint.matches_prefix(&prefix)
                && e.offset <= size
        });
        let mut copy_of = None;
        let offset = match resume {
            Some(i) => self.stale.swap_remove(i).offset,
            None => {
                let min_fp = MIN_COPY_FINGERPRINT.min(self.cfg.fingerprint_bytes).max(1);
                let dir = path.parent();
                // A copy of a checkpointed or released content whose original moved on
                // (copytruncate while the agent was down or before this file was seen).
                let copied = self.stale.iter().position(|e| {
                    (e.dev, e.ino) != (dev, ino)
                        && e.fingerprint.len as usize >= min_fp
                        && e.path.parent() == dir
                        && e.fingerprint.matches_prefix(&prefix)
                });
                if let Some(orig) = self.copy_source(path, &file, size, &prefix) {
                    copy_of = Some(orig);
                    0
                } else if let Some(i) = copied {
                    let e = &mut self.stale[i];
                    let offset = e.offset.min(size);
                    // What the checkpoint did not reach is here: not lost.
                    e.size = e.size.min(e.offset);
                    self.rotation("copy");
                    offset
                } else if first_scan && present && self.cfg.start_at == StartAt::End {
                    size
                } else {
                    0
                }
            }
        };
        let id = self.insert_tracked(
            path,
            file,
            (dev, ino),
            Fingerprint::of(&prefix),
            size,
            offset,
            present,
            now,
            seen_unix,
        );
        if let Some(t) = self.files.get_mut(&id) {
            t.copy_of = copy_of;
        }
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn insert_tracked(
        &mut self,
        path: &Path,
        file: File,
        (dev, ino): (u64, u64),
        fp: Fingerprint,
        size: u64,
        offset: u64,
        present: bool,
        now: Instant,
        seen_unix: u64,
    ) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.open_count += 1;
        let t = Tracked {
            id,
            path: path.to_path_buf(),
            path_arc: path.to_string_lossy().into(),
            dev,
            ino,
            fp,
            generation: 0,
            file: Some(file),
            read_offset: offset,
            partial: Vec::new(),
            partial_dropped: 0,
            partial_since: None,
            joiner: self.cfg.join.clone().map(Joiner::new),
            pending_start: None,
            emitted_offset: offset,
            acked_offset: offset,
            size_seen: size,
            last_used: now,
            present,
            orphan_since: None,
            done: false,
            seen_unix,
            deleted_counted: false,
            copy_of: None,
            cri_partial: Vec::new(),
            cri_partial_dropped: 0,
            cri_start: None,
            cri_record: None,
        };
        self.by_inode.insert((dev, ino), id);
        self.files.insert(id, t);
        id
    }

    /// Closes least recently read files until a descriptor is free; never closes orphans
    /// (their path is gone: closing would lose their tail) nor `keep`.
    fn make_room(&mut self, keep: Option<u64>) -> bool {
        while self.open_count >= self.cfg.max_open_files.max(1) {
            let victim = self
                .files
                .values()
                .filter(|t| t.file.is_some() && t.orphan_since.is_none() && Some(t.id) != keep)
                .min_by_key(|t| t.last_used)
                .map(|t| t.id);
            let Some(id) = victim else {
                return false;
            };
            if let Some(t) = self.files.get_mut(&id) {
                t.file = None;
                self.open_count -= 1;
            }
        }
        true
    }

    /// Flushes a file's pending text and stops reading it.
    fn release(&mut self, id: u64) {
        let now = Instant::now();
        self.flush_pending(id, now);
        if let Some(t) = self.files.get_mut(&id) {
            if t.file.take().is_some() {
                self.open_count -= 1;
            }
            t.done = true;
            if self.by_inode.get(&(t.dev, t.ino)) == Some(&id) {
                self.by_inode.remove(&(t.dev, t.ino));
            }
        }
        self.drop_finished();
    }

    /// Emits the partial line and the joiner's pending record (rotation, release, timeout).
    fn flush_pending(&mut self, id: u64, now: Instant) {
        let Some(t) = self.files.get_mut(&id) else {
            return;
        };
        if !t.partial.is_empty() || t.partial_dropped > 0 {
            let (start, end) = (t.line_offset(), t.read_offset);
            let line = std::mem::take(&mut t.partial);
            let dropped = std::mem::take(&mut t.partial_dropped);
            t.partial_since = None;
            self.handle_line(id, &line, dropped, start, end, now);
        }
        let Some(t) = self.files.get_mut(&id) else {
            return;
        };
        if let Some(first) = t.cri_start.take() {
            // A CRI line whose last part never came: what arrived is a record.
            let text = std::mem::take(&mut t.cri_partial);
            t.cri_partial_dropped = 0;
            let end = t.line_offset();
            self.push_line(id, &text, first, end, now, None);
        }
        let Some(t) = self.files.get_mut(&id) else {
            return;
        };
        if let Some(joined) = t.joiner.as_mut().and_then(Joiner::flush) {
            t.pending_start = None;
            t.emitted_offset = t.cri_start.unwrap_or_else(|| t.line_offset());
            let mark = (t.generation, t.emitted_offset);
            let meta = t.cri_record;
            self.emit(id, &joined.text, joined.dropped_bytes, meta);
            self.building.marks.insert(id, mark);
        }
    }

    /// Whether the batch being built should be sealed.
    pub fn batch_full(&self) -> bool {
        self.building.logs.len() >= self.cfg.batch_max_records.max(1)
            || self.building.bytes >= self.cfg.batch_max_bytes.max(1)
    }

    /// Reads every file that has grown until the batch is full or nothing is left; returns
    /// whether any byte was read or any record emitted.
    pub fn poll(&mut self, now: Instant) -> bool {
        let ids: Vec<u64> = self
            .files
            .range(self.cursor..)
            .chain(self.files.range(..self.cursor))
            .filter(|(_, t)| !t.done)
            .map(|(&id, _)| id)
            .collect();
        let mut progress = false;
        for id in ids {
            if self.batch_full() {
                self.cursor = id;
                break;
            }
            progress |= self.read_file(id, now);
        }
        self.update_gauges();
        progress
    }

    /// Whether some open file has bytes left that the last poll did not get to (its read budget
    /// ran out): the caller should poll again at once rather than wait for a wake-up.
    pub fn has_backlog(&self) -> bool {
        self.files
            .values()
            .any(|t| !t.done && t.file.is_some() && t.read_offset < t.size_seen)
    }

    /// Opens a closed file again by its path (for an orphan, the rotated name a scan followed it
    /// to) and checks it is still the same file; otherwise lets it go and counts what was seen
    /// but not read.
    fn reopen(&mut self, id: u64) -> Option<()> {
        let t = self.files.get(&id)?;
        let path = t.path.clone();
        let (dev, ino, fp) = (t.dev, t.ino, t.fp);
        if !self.make_room(Some(id)) {
            return None;
        }
        let file = match open_regular(&path) {
            Ok(Opened::File(f, _)) => Some(f),
            Ok(Opened::NotRegular) => {
                self.warn_once(&path, "not_a_file", &"not a regular file");
                None
            }
            Err(e) => {
                if e.kind() != ErrorKind::NotFound {
                    self.warn_once(&path, error_kind(&e), &e);
                }
                None
            }
        };
        let same = file.as_ref().is_some_and(|file| {
            file.metadata()
                .is_ok_and(|m| (m.dev(), m.ino()) == (dev, ino))
                && read_prefix(file, fp.len as usize).is_ok_and(|p| fp.matches_prefix(&p))
        });
        let (Some(file), true) = (file, same) else {
            // Replaced or gone while closed (the scan tracks a new file at the path): what
            // was seen but not read went with it.
            let t = self.files.get(&id)?;
            let unread = t.size_seen.saturating_sub(t.line_offset());
            self.release(id);
            self.lost(LOST_DELETED, unread, &path);
            return None;
        };
        let t = self.files.get_mut(&id)?;
        t.file = Some(file);
        self.open_count += 1;
        Some(())
    }

    fn read_file(&mut self, id: u64, now: Instant) -> bool {
        let Some(t) = self.files.get(&id) else {
            return false;
        };
        if let Some(orig) = t.copy_of {
            // A copy waits for its original's truncation; it goes when it is gone and the
            // original is let go too (the original delivered its content). A "copy" that
            // grows apart from its original was a new file with the same first bytes (a
            // header): it is read as one.
            let orig_live = self.files.get(&orig).filter(|o| !o.done);
            if t.orphan_since.is_some() && orig_live.is_none() {
                self.release(id);
                return false;
            }
            let size = t
                .file
                .as_ref()
                .and_then(|f| f.metadata().ok())
                .map(|m| m.len());
            let Some(size) = size.filter(|&s| s != t.size_seen) else {
                return false;
            };
            let apart = match (orig_live, &t.file) {
                (Some(o), Some(f)) => !copy_of_original(f, size, o),
                _ => false,
            };
            let Some(t) = self.files.get_mut(&id) else {
                return false;
            };
            t.size_seen = size;
            if !apart {
                return false;
            }
            t.copy_of = None;
        }
        let Some(t) = self.files.get(&id) else {
            return false;
        };
        let needs_open = t.file.is_none();
        if needs_open {
            // Closed files are reopened only when a stat says they grew or shrank, or when
            // their path no longer leads to them (a rotated name may, else they are let go).
            let changed = t.orphan_since.is_some()
                || std::fs::metadata(&t.path).is_ok_and(|m| m.len() != t.read_offset);
            if !changed || self.reopen(id).is_none() {
                return false;
            }
        }
        let Some(t) = self.files.get_mut(&id) else {
            return false;
        };
        let Some(file) = &t.file else {
            return false;
        };
        let meta = match file.metadata() {
            Ok(m) => m,
            Err(e) => {
                let path = t.path.clone();
                self.warn_once(&path, error_kind(&e), &e);
                self.release(id);
                return false;
            }
        };
        let size = meta.len();
        if meta.nlink() == 0 && !t.deleted_counted {
            t.deleted_counted = true;
            t.orphan_since.get_or_insert(now);
        }
        let mut progress = false;
        if size != t.size_seen || t.read_offset > size {
            // The content may have been replaced: check the fingerprint prefix.
            let want = self
                .cfg
                .fingerprint_bytes
                .min(usize::try_from(size).unwrap_or(usize::MAX));
            let prefix = read_prefix(file, want).unwrap_or_default();
            let min_fp = MIN_COPY_FINGERPRINT.min(self.cfg.fingerprint_bytes).max(1);
            if t.read_offset == 0 && (t.fp.len as usize) < min_fp && !prefix.is_empty() {
                // Its first bytes arrive now (it was seen empty, as `cp` creates a copy before
                // writing it): it may be a copy of a live file after all.
                let path = t.path.clone();
                let own = t.file.take();
                let orig = own
                    .as_ref()
                    .and_then(|f| self.copy_source(&path, f, size, &prefix))
                    .filter(|&o| o != id);
                let Some(t) = self.files.get_mut(&id) else {
                    return false;
                };
                t.file = own;
                if let Some(orig) = orig {
                    t.copy_of = Some(orig);
                    t.fp = Fingerprint::of(&prefix);
                    t.size_seen = size;
                    return false;
                }
            }
            let Some(t) = self.files.get_mut(&id) else {
                return false;
            };
            let replaced = !t.fp.matches_prefix(&prefix) || size < t.read_offset;
            if replaced {
                self.truncated(id, size, now);
                progress = true;
            }
            let Some(t) = self.files.get_mut(&id) else {
                return progress;
            };
            t.fp = Fingerprint::of(&prefix);
            t.size_seen = size;
        }
        let Some(t) = self.files.get_mut(&id) else {
            return progress;
        };
        t.last_used = now;
        // Read at most a few chunks per file per poll, for fairness between files.
        let mut budget = 4usize;
        while budget > 0 && !self.batch_full() {
            budget -= 1;
            let Some(t) = self.files.get_mut(&id) else {
                break;
            };
            let Some(file) = &t.file else { break };
            if t.read_offset >= t.size_seen {
                break;
            }
            if self.buf.is_empty() {
                // Allocated on the first read: a source whose files stay empty never needs it.
                self.buf = vec![0u8; self.cfg.read_chunk_bytes.max(1)];
            }
            let n = match file.read_at(&mut self.buf, t.read_offset) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    let path = t.path.clone();
                    self.warn_once(&path, error_kind(&e), &e);
                    self.release(id);
                    return progress;
                }
            };
            progress = true;
            self.stats
                .bytes
                .get_or_create(&self.source_label)
                .inc_by(n as u64);
            let data = std::mem::take(&mut self.buf);
            self.read_unix_nano = Some(unix_nanos());
            self.process_bytes(id, &data[..n], now);
            self.read_unix_nano = None;
            self.buf = data;
        }
        let Some(t) = self.files.get_mut(&id) else {
            return progress;
        };
        let at_eof = t.read_offset >= t.size_seen;
        if at_eof
            && let Some(since) = t.orphan_since
            && (now.saturating_duration_since(since) >= self.cfg.rotate_wait || meta.nlink() == 0)
            && !progress
        {
            if meta.nlink() == 0 {
                self.rotation("delete");
            }
            self.release(id);
        }
        progress
    }

    /// The file shrank or its first bytes changed under the same identity (copytruncate).
    /// When a copy of the old content is found beside it (parked since a scan saw it, or
    /// looked for now), reading continues in the copy where the original was read to, and
    /// only what the original was seen to hold beyond the copy's end is lost. Otherwise what
    /// existed but was never read is counted lost. The original restarts from 0.
    fn truncated(&mut self, id: u64, size: u64, now: Instant) {
        // The copy is complete by now (copytruncate copies, then truncates): its size now,
        // not when a scan first saw it.
        let copy = self.find_copy(id, now).and_then(|c| {
            let ct = self.files.get_mut(&c)?;
            let size = ct.file.as_ref()?.metadata().ok()?.len();
            ct.size_seen = size;
            Some((c, size))
        });
        let Some(t) = self.files.get_mut(&id) else {
            return;
        };
        let path = t.path.clone();
        let old_generation = t.generation;
        let read_offset = t.read_offset;
        let mut lost;
        match copy {
            Some((c, copy_size)) if read_offset <= copy_size => {
                // The copy holds everything from where we are: the reading state moves over.
                lost = t.size_seen.saturating_sub(copy_size);
                let fresh = self.cfg.join.clone().map(Joiner::new);
                let moved = (
                    t.read_offset,
                    std::mem::take(&mut t.partial),
                    std::mem::take(&mut t.partial_dropped),
                    t.partial_since.take(),
                    std::mem::replace(&mut t.joiner, fresh),
                    t.pending_start.take(),
                    t.emitted_offset,
                    t.acked_offset,
                );
                if let Some(ct) = self.files.get_mut(&c) {
                    ct.copy_of = None;
                    (
                        ct.read_offset,
                        ct.partial,
                        ct.partial_dropped,
                        ct.partial_since,
                        ct.joiner,
                        ct.pending_start,
                        ct.emitted_offset,
                        ct.acked_offset,
                    ) = moved;
                    let copy_generation = ct.generation;
                    self.move_marks(id, old_generation, c, copy_generation);
                }
                self.rotation("copy");
            }
            other => {
                if let Some((c, copy_size)) = other
                    && let Some(ct) = self.files.get_mut(&c)
                {
                    // A copy that ends before what we read holds nothing new.
                    ct.copy_of = None;
                    (ct.read_offset, ct.emitted_offset, ct.acked_offset) =
                        (copy_size, copy_size, copy_size);
                }
                // The rest of a partial line went with the old content: the fragment is
                // lost, not a record.
                let Some(t) = self.files.get_mut(&id) else {
                    return;
                };
                let fragment = (t.partial.len() + t.partial_dropped) as u64;
                t.partial.clear();
                t.partial_dropped = 0;
                t.partial_since = None;
                self.flush_pending(id, now);
                let Some(t) = self.files.get(&id) else {
                    return;
                };
                lost = t.size_seen.saturating_sub(t.read_offset) + fragment;
                if other.is_some() {
                    lost = lost.min(t.size_seen.saturating_sub(t.read_offset));
                }
            }
        }
        let Some(t) = self.files.get_mut(&id) else {
            return;
        };
        t.generation += 1;
        t.read_offset = 0;
        t.emitted_offset = 0;
        t.acked_offset = 0;
        t.pending_start = None;
        t.size_seen = size;
        self.lost(LOST_TRUNCATED, lost, &path);
        self.truncate_seen = true;
        self.rotation("truncate");
    }

    /// Re-points the offsets of batches built or in flight from `from`'s old content to the
    /// copy now holding it, so their acknowledgements advance the copy's checkpoint.
    fn move_marks(&mut self, from: u64, from_generation: u64, to: u64, to_generation: u64) {
        let marks = std::iter::once(&mut self.building.marks)
            .chain(self.inflight.values_mut().map(|b| &mut b.marks));
        for m in marks {
            if let Some(&(g, offset)) = m.get(&from)
                && g == from_generation
            {
                m.remove(&from);
                m.insert(to, (to_generation, offset));
            }
        }
    }

    /// A copy of `id`'s current (old) content: one parked since a scan found it, else one
    /// looked for now among the files of its directory (any name the user did not exclude).
    fn find_copy(&mut self, id: u64, now: Instant) -> Option<u64> {
        if let Some(c) = self
            .files
            .values()
            .find(|c| c.copy_of == Some(id) && !c.done)
            .map(|c| c.id)
        {
            return Some(c);
        }
        let t = self.files.get(&id)?;
        let min_fp = MIN_COPY_FINGERPRINT.min(self.cfg.fingerprint_bytes).max(1);
        if (t.fp.len as usize) < min_fp {
            return None;
        }
        let (fp, dir, own) = (t.fp, t.path.parent()?.to_path_buf(), (t.dev, t.ino));
        let mut best: Option<(u64, PathBuf, u64, u64)> = None;
        for entry in std::fs::read_dir(&dir).ok()?.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            let key = (meta.dev(), meta.ino());
            let path = entry.path();
            if !meta.is_file()
                || key == own
                || meta.len() <= u64::from(fp.len)
                || self.by_inode.contains_key(&key)
                || self.discovery.excluded_by_user(&path)
                || best.as_ref().is_some_and(|b| b.0 >= mtime_ns(&meta))
            {
                continue;
            }
            let Ok(Opened::File(f, _)) = open_regular(&path) else {
                continue;
            };
            if read_prefix(&f, fp.len as usize).is_ok_and(|p| fp.matches_prefix(&p)) {
                best = Some((mtime_ns(&meta), path, key.0, key.1));
            }
        }
        let (_, path, dev, ino) = best?;
        if !self.make_room(Some(id)) {
            return None;
        }
        let Ok(Opened::File(file, meta)) = open_regular(&path) else {
            return None;
        };
        let prefix = read_prefix(&file, self.cfg.fingerprint_bytes).ok()?;
        let present = self.discovery.selects(&path);
        let c = self.insert_tracked(
            &path,
            file,
            (dev, ino),
            Fingerprint::of(&prefix),
            meta.len(),
            0,
            present,
            now,
            unix_now(),
        );
        if let Some(ct) = self.files.get_mut(&c) {
            ct.copy_of = Some(id);
            if !present {
                ct.orphan_since = Some(now);
            }
        }
        Some(c)
    }

    /// Whether a file of this source was ever truncated in place (copytruncate rotation): the
    /// caller then reads on every file event at once, since what is written between its last
    /// read and the next truncation is lost.
    pub fn truncate_seen(&self) -> bool {
        self.truncate_seen
    }

    fn process_bytes(&mut self, id: u64, data: &[u8], now: Instant) {
        let cap = self.cfg.max_line_bytes.max(1);
        let mut rest = data;
        while !rest.is_empty() {
            let Some(t) = self.files.get_mut(&id) else {
                return;
            };
            match memchr::memchr(b'\n', rest) {
                Some(i) => {
                    let end = t.read_offset + i as u64 + 1;
                    let start = t.line_offset();
                    t.read_offset = end;
                    if t.partial.is_empty() && t.partial_dropped == 0 {
                        let line = &rest[..i];
                        let (line, dropped) = if line.len() > cap {
                            (&line[..cap], line.len() - cap)
                        } else {
                            (line, 0)
                        };
                        self.handle_line(id, line, dropped, start, end, now);
                    } else {
                        let room = cap.saturating_sub(t.partial.len());
                        let take = room.min(i);
                        t.partial.extend_from_slice(&rest[..take]);
                        t.partial_dropped += i - take;
                        let line = std::mem::take(&mut t.partial);
                        let dropped = std::mem::take(&mut t.partial_dropped);
                        t.partial_since = None;
                        self.handle_line(id, &line, dropped, start, end, now);
                    }
                    rest = &rest[i + 1..];
                }
                None => {
                    let room = cap.saturating_sub(t.partial.len());
                    let take = room.min(rest.len());
                    t.partial.extend_from_slice(&rest[..take]);
                    t.partial_dropped += rest.len() - take;
                    t.read_offset += rest.len() as u64;
                    t.partial_since = Some(now);
                    rest = &[];
                }
            }
        }
    }

    /// One complete line `[start, end)` of file `id` (without its `\n`, at most
    /// `max_line_bytes` long; `dropped` bytes beyond the cap were not kept).
    fn handle_line(
        &mut self,
        id: u64,
        line: &[u8],
        dropped: usize,
        start: u64,
        end: u64,
        now: Instant,
    ) {
        if dropped > 0 {
            self.stats
                .truncated_lines
                .get_or_create(&self.source_label)
                .inc();
            let path = self
                .files
                .get(&id)
                .map(|t| t.path.clone())
                .unwrap_or_default();
            self.lost(LOST_LINE_TOO_LONG, dropped as u64, &path);
        }
        let cri = if self.cfg.cri { split_cri(line) } else { None };
        let Some(cri) = cri else {
            self.push_line(id, line, start, end, now, None);
            return;
        };
        let Some(t) = self.files.get_mut(&id) else {
            return;
        };
        let cap = self.cfg.max_line_bytes.max(1);
        let room = cap.saturating_sub(t.cri_partial.len());
        let take = room.min(cri.content.len());
        if cri.partial {
            // The runtime split a long line: the rest follows in the next lines. The offsets
            // stay before the first part until the line is complete.
            t.cri_start.get_or_insert(start);
            t.cri_partial.extend_from_slice(&cri.content[..take]);
            t.cri_partial_dropped += cri.content.len() - take;
            return;
        }
        let meta = Some((cri.stream, cri.time_unix_nano));
        match t.cri_start.take() {
            Some(first) => {
                let mut full = std::mem::take(&mut t.cri_partial);
                full.extend_from_slice(&cri.content[..take]);
                let cut = std::mem::take(&mut t.cri_partial_dropped) + cri.content.len() - take;
                if cut > 0 {
                    let path = t.path.clone();
                    self.stats
                        .truncated_lines
                        .get_or_create(&self.source_label)
                        .inc();
                    self.lost(LOST_LINE_TOO_LONG, cut as u64, &path);
                }
                self.push_line(id, &full, first, end, now, meta);
            }
            None => self.push_line(id, cri.content, start, end, now, meta),
        }
    }

    /// One complete line (a CRI line's content, with `meta` = its stream and time) into the
    /// joiner, and what it completes into the batch.
    fn push_line(
        &mut self,
        id: u64,
        line: &[u8],
        start: u64,
        end: u64,
        now: Instant,
        meta: Option<CriMeta>,
    ) {
        let Some(t) = self.files.get_mut(&id) else {
            return;
        };
        let mut joined = std::mem::take(&mut self.joined);
        joined.clear();
        match &mut t.joiner {
            Some(j) => {
                let had_pending = j.deadline().is_some();
                j.push(line, now, &mut joined);
                let pending = j.deadline().is_some();
                let starts_record = !joined.is_empty() || !had_pending;
                t.pending_start = if !pending {
                    None
                } else if starts_record {
                    Some(start)
                } else {
                    t.pending_start
                };
                t.emitted_offset = t.pending_start.unwrap_or(end);
                let mark = (t.generation, t.emitted_offset);
                // A record that was pending carries the stream and time of its first line.
                let pending_meta = t.cri_record;
                if pending && starts_record {
                    t.cri_record = meta;
                }
                for (i, j) in joined.iter().enumerate() {
                    let m = if i == 0 && had_pending {
                        pending_meta
                    } else {
                        meta
                    };
                    self.emit(id, &j.text, j.dropped_bytes, m);
                }
                self.building.marks.insert(id, mark);
            }
            None => {
                t.emitted_offset = end;
                let mark = (t.generation, end);
                self.emit(id, line, 0, meta);
                self.building.marks.insert(id, mark);
            }
        }
        self.joined = joined;
    }

    /// Parses, redacts and counts one record and adds it to the batch being built; `dropped`
    /// bytes were already cut from it (by the joiner's caps).
    fn emit(&mut self, id: u64, text: &[u8], dropped: usize, cri: Option<CriMeta>) {
        if text.trim_ascii().is_empty() {
            return;
        }
        let Some(t) = self.files.get(&id) else {
            return;
        };
        let observed = self.read_unix_nano.unwrap_or_else(unix_nanos);
        let mut parsed = self.parser.parse(text, observed);
        let src = &self.source_label;
        if parsed.error.is_some() {
            self.stats.parse_errors.get_or_create(src).inc();
        }
        let cut = parsed.truncated_bytes + dropped;
        if cut > 0 {
            self.stats.truncated_lines.get_or_create(src).inc();
            let path = t.path.clone();
            self.lost(LOST_LINE_TOO_LONG, cut as u64, &path);
        }
        let Some(t) = self.files.get(&id) else {
            return;
        };
        let src = &self.source_label;
        let record = &mut parsed.record;
        if let Some((stream, time)) = cri {
            record
                .attributes
                .insert("stream", AttrValue::String(stream.into()));
            record.timestamp_unix_nano.get_or_insert(time);
        }
        // The file's path goes to the encoder beside the record (no reference counted in and
        // out of every record); the source's name is the batch's resource.
        let counts = self.redactor.redact_record(record);
        if counts.total() > 0 {
            self.stats
                .redactions
                .get_or_create(src)
                .inc_by(counts.total());
        }
        if let Some(e) = &record.exception {
            self.stats
                .exception(&self.cfg.source, e.r#type.as_deref().unwrap_or("unknown"));
        }
        let level = level_label(record.severity_number, record.severity_text.as_deref());
        match self.level_counters.iter().find(|(l, _)| *l == level) {
            Some((_, counter)) => {
                counter.inc();
            }
            None => {
                let counter = self.stats.record_counter(&self.cfg.source, level);
                counter.inc();
                self.level_counters.push((level, counter));
            }
        }
        self.building.bytes += text.len();
        // Encoded now, so the record (and every string it owns) is freed before the next line.
        self.building.logs.push_read_from(record, &t.path_arc);
    }

    /// Emits joined records and partial lines whose timeouts passed.
    pub fn tick(&mut self, now: Instant) {
        let ids: Vec<u64> = self.files.keys().copied().collect();
        for id in ids {
            let Some(t) = self.files.get_mut(&id) else {
                continue;
            };
            // A last line without its newline is emitted only when the file really stopped
            // there: not while unread bytes wait (a full batch or backpressure paused the
            // reading mid-line), or the line would be split into two records.
            let partial_due = t
                .partial_since
                .is_some_and(|s| now.saturating_duration_since(s) >= self.cfg.partial_line_timeout)
                && t.read_offset >= t.size_seen
                && !t
                    .file
                    .as_ref()
                    .is_some_and(|f| f.metadata().is_ok_and(|m| m.len() > t.read_offset));
            if partial_due {
                let (start, end) = (t.line_offset(), t.read_offset);
                let line = std::mem::take(&mut t.partial);
                let dropped = std::mem::take(&mut t.partial_dropped);
                t.partial_since = None;
                self.handle_line(id, &line, dropped, start, end, now);
            }
            let Some(t) = self.files.get_mut(&id) else {
                continue;
            };
            if let Some(joined) = t.joiner.as_mut().and_then(|j| j.poll(now)) {
                t.pending_start = None;
                t.emitted_offset = t.cri_start.unwrap_or_else(|| t.line_offset());
                let mark = (t.generation, t.emitted_offset);
                let meta = self.files.get(&id).and_then(|t| t.cri_record);
                self.emit(id, &joined.text, joined.dropped_bytes, meta);
                self.building.marks.insert(id, mark);
            }
        }
    }

    /// The next instant [`Tailer::tick`] or [`Tailer::poll`] has something to do without a
    /// file event: a joined record or a partial line to emit, an open rotated-away file to
    /// let go (`rotate_wait` after it was seen gone).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.files
            .values()
            .flat_map(|t| {
                [
                    t.joiner.as_ref().and_then(Joiner::deadline),
                    t.partial_since.map(|s| s + self.cfg.partial_line_timeout),
                    // Closed ones are let go when a stat shows they changed, not on a clock.
                    t.orphan_since
                        .filter(|_| !t.done && t.file.is_some())
                        .map(|s| s + self.cfg.rotate_wait),
                ]
            })
            .flatten()
            .min()
    }

    /// Seals the batch being built. Offsets that advanced without records (blank lines) are
    /// queued as already acknowledged, so they keep their place in the ack order.
    pub fn take_batch(&mut self) -> Option<Batch> {
        // The next batch keeps room for what this one took, an eighth more for the variation.
        let room = self.building.logs.first_scope_bytes();
        let building = std::mem::replace(
            &mut self.building,
            Building {
                logs: EncodedLogs::with_first_scope_room(room + room / 8),
                ..Building::default()
            },
        );
        if building.marks.is_empty() && building.logs.is_empty() {
            return None;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let empty = building.logs.is_empty();
        self.inflight.insert(
            seq,
            Inflight {
                marks: building.marks,
                acked: false,
            },
        );
        if empty {
            self.acked(seq);
            return None;
        }
        let tx = match &self.ack_tx {
            Some(tx) => tx.clone(),
            // Shutting down: a token whose ack goes nowhere; the batch is re-read on restart.
            None => mpsc::unbounded_channel().0,
        };
        Some(Batch {
            logs: building.logs,
            ack: Ack { seq, tx },
        })
    }

    /// The checkpoint entries as they would be written now: tracked files (a parked copy's
    /// content is the original's, so it has none), then the entries of files not found.
    fn entry_keys(&self) -> impl Iterator<Item = (u64, u64, Fingerprint, u64, &Path, u64, bool)> {
        self.files
            .values()
            .filter(|t| t.copy_of.is_none())
            .map(|t| {
                (
                    t.dev,
                    t.ino,
                    t.fp,
                    t.acked_offset,
                    t.path.as_path(),
                    t.seen_unix,
                    false,
                )
            })
            .chain(self.stale.iter().map(|e| {
                (
                    e.dev,
                    e.ino,
                    e.fingerprint,
                    e.offset,
                    e.path.as_path(),
                    e.seen_unix,
                    e.released,
                )
            }))
    }

    /// Whether [`write_checkpoint`](Self::write_checkpoint) has something to write: an
    /// acknowledged offset moved, a file came or went, a last-seen time is a minute newer than
    /// the one written, an entry of a file gone for the expiry is to be dropped, the last write
    /// was not `fsync`ed (or nothing was written yet). Looks at memory only, so an idle tailer
    /// can tell without a wake-up of its own whether the next checkpoint is worth one.
    pub fn checkpoint_changed(&self) -> bool {
        let Some(old) = &self.last_written else {
            return true;
        };
        if self.durable_pending {
            return true;
        }
        let now = unix_now();
        let expiry = self.cfg.checkpoint_expiry.as_secs();
        if self
            .stale
            .iter()
            .any(|e| e.seen_unix.saturating_add(expiry) < now)
        {
            return true;
        }
        let mut n = 0;
        for (b, a) in self.entry_keys().zip(old.iter()) {
            n += 1;
            if (
                a.dev,
                a.ino,
                a.fingerprint,
                a.offset,
                a.path.as_path(),
                a.released,
            ) != (b.0, b.1, b.2, b.3, b.4, b.6)
                || b.5.saturating_sub(a.seen_unix) >= 60
            {
                return true;
            }
        }
        n != old.len() || n != self.entry_keys().count()
    }

    /// Writes the acknowledged offsets durably (`fsync`) if they changed since the last
    /// write, or the last write was not durable (or once a minute, to refresh the last-seen
    /// times); drops entries of files unseen for the expiry.
    pub fn write_checkpoint(&mut self) -> Result<(), CheckpointError> {
        self.store_checkpoint(true)
    }

    /// Writes the checkpoint without `fsync` when an acknowledgement moved an offset since the
    /// last write: called after each round of acknowledgements, so a crash of the process
    /// repeats at most what was not acknowledged yet (the periodic
    /// [`write_checkpoint`](Self::write_checkpoint) makes it durable).
    pub fn write_acknowledged(&mut self) -> Result<(), CheckpointError> {
        if !std::mem::take(&mut self.acked_dirty) {
            return Ok(());
        }
        self.store_checkpoint(false)
    }

    fn store_checkpoint(&mut self, durable: bool) -> Result<(), CheckpointError> {
        let now = unix_now();
        let expiry = self.cfg.checkpoint_expiry.as_secs();
        self.stale
            .retain(|e| e.seen_unix.saturating_add(expiry) >= now);
        // A released file's last write is older than its release: once the threshold written
        // with this checkpoint passed that, no rotated name can bring it back (here or after a
        // restart), so its entry is not needed any more.
        if let Some(ms) = self.last_scan_ms {
            let threshold = ms.saturating_sub(MTIME_SLACK_MS) / 1000;
            self.stale
                .retain(|e| !e.released || e.seen_unix.saturating_add(2) >= threshold);
        }
        let mut entries: Vec<Entry> = self
            .files
            .values()
            .filter(|t| t.copy_of.is_none())
            .map(|t| Entry {
                dev: t.dev,
                ino: t.ino,
                fingerprint: t.fp,
                offset: t.acked_offset,
                path: t.path.clone(),
                seen_unix: t.seen_unix,
                size: t.size_seen,
                released: false,
            })
            .collect();
        entries.extend(self.stale.iter().cloned());
        let unchanged = self.last_written.as_ref().is_some_and(|old| {
            old.len() == entries.len()
                && old.iter().zip(&entries).all(|(a, b)| {
                    (a.dev, a.ino, a.fingerprint, a.offset, &a.path, a.released)
                        == (b.dev, b.ino, b.fingerprint, b.offset, &b.path, b.released)
                        && b.seen_unix.saturating_sub(a.seen_unix) < 60
                })
        });
        let unacked: u64 = self
            .files
            .values()
            .map(|t| t.read_offset.saturating_sub(t.acked_offset))
            .sum();
        self.stats
            .unacked_bytes
            .get_or_create(&self.source_label)
            .set(i64::try_from(unacked).unwrap_or(i64::MAX));
        if unchanged && !(durable && self.durable_pending) {
            return Ok(());
        }
        match self.checkpoint.store(&entries, self.last_scan_ms, durable) {
            Ok(()) => {
                self.stats
                    .checkpoint_writes
                    .get_or_create(&self.source_label)
                    .inc();
                self.last_written = Some(entries);
                self.durable_pending = !durable;
                Ok(())
            }
            Err(e) => {
                self.stats
                    .checkpoint_errors
                    .get_or_create(&self.source_label)
                    .inc();
                Err(e)
            }
        }
    }

    fn update_gauges(&self) {
        self.stats
            .files_deferred
            .get_or_create(&self.source_label)
            .set(i64::try_from(self.deferred.len()).unwrap_or(i64::MAX));
        let watched = self.files.values().filter(|t| !t.done).count();
        self.stats
            .files_watched
            .get_or_create(&self.source_label)
            .set(i64::try_from(watched).unwrap_or(i64::MAX));
        self.stats
            .open_files
            .get_or_create(&self.source_label)
            .set(i64::try_from(self.open_count).unwrap_or(i64::MAX));
    }

    /// Descriptors currently held.
    pub fn open_files(&self) -> usize {
        self.open_count
    }

    /// Files currently tracked (not released).
    pub fn files_watched(&self) -> usize {
        self.files.values().filter(|t| !t.done).count()
    }
}

#[cfg(test)]
mod tests {
    use std::fs::{self, OpenOptions};
    use std::io::Write;

    use super::*;
    use crate::logs::otlp::LogResource;
    use crate::logs::parse::{Format, ParserConfig};
    use crate::metrics::LabelCaps;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::logs::v1::LogRecord as OtlpRecord;
    use prost::Message;

    /// A batch's records as they leave the agent (decoded from its export request), scope by
    /// scope.
    fn decode(logs: &EncodedLogs) -> Vec<OtlpRecord> {
        let req = ExportLogsServiceRequest::decode(
            logs.finish(&LogResource::new("app", None)).bytes().clone(),
        )
        .expect("the batch's encoding decodes");
        req.resource_logs
            .into_iter()
            .flat_map(|rl| rl.scope_logs)
            .flat_map(|sl| sl.log_records)
            .collect()
    }

    fn body(r: &OtlpRecord) -> String {
        match r.body.as_ref().and_then(|b| b.value.clone()) {
            Some(Value::StringValue(s)) => s,
            other => panic!("body is not a string: {other:?}"),
        }
    }

    fn attr(r: &OtlpRecord, key: &str) -> Option<Value> {
        r.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone())
            .and_then(|v| v.value)
    }

    struct H {
        dir: tempfile::TempDir,
        stats: LogStats,
        cfg: TailConfig,
        include: Vec<String>,
        now: Instant,
        format: Format,
    }

    impl H {
        fn new(include: &[&str]) -> Self {
            let dir = tempfile::tempdir().expect("test setup");
            fs::create_dir_all(dir.path().join("logs")).expect("test setup");
            let include = include
                .iter()
                .map(|p| format!("{}/logs/{p}", dir.path().display()))
                .collect();
            let mut cfg = TailConfig::new("app");
            cfg.join = None;
            Self {
                dir,
                stats: LogStats::new(&LabelCaps::new(100)),
                cfg,
                include,
                now: Instant::now(),
                format: Format::Text,
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join("logs").join(name)
        }

        fn append(&self, name: &str, text: &str) {
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.path(name))
                .expect("test setup");
            f.write_all(text.as_bytes()).expect("test setup");
        }

        fn tailer(&self) -> Tailer {
            let discovery = Discovery::new(&self.include, &[], true).expect("test setup");
            let parser = Parser::new(ParserConfig {
                format: self.format,
                max_line_bytes: self.cfg.max_line_bytes,
                ..ParserConfig::default()
            });
            Tailer::new(
                self.cfg.clone(),
                discovery,
                parser,
                Redactor::builtin().expect("test setup"),
                self.stats.clone(),
                &self.dir.path().join("state"),
            )
            .expect("test setup")
        }

        /// Scans, reads and hands batches on until nothing moves; acknowledges when `ack`.
        /// Time advances 2 s per round so rotation waits and timeouts pass.
        fn pump(&mut self, t: &mut Tailer, ack: bool) -> Vec<String> {
            let mut out = Vec::new();
            let mut quiet = 0;
            while quiet < 3 {
                self.now += Duration::from_secs(2);
                t.scan(self.now);
                t.tick(self.now);
                let progress = t.poll(self.now);
                let batch = t.take_batch();
                quiet = if progress || batch.is_some() {
                    0
                } else {
                    quiet + 1
                };
                if let Some(b) = batch {
                    let (logs, ack_token) = b.into_parts();
                    for r in decode(&logs) {
                        assert!(attr(&r, "log.file.path").is_some());
                        out.push(body(&r));
                    }
                    if ack {
                        ack_token.ack();
                    }
                    t.process_acks();
                }
            }
            out
        }

        fn counter(&self, family: &Family1) -> u64 {
            family.get_or_create(&[("source", "app".into())]).get()
        }

        fn lost(&self, reason: &str) -> u64 {
            self.stats
                .lost_bytes
                .get_or_create(&[("source", "app".into()), ("reason", reason.into())])
                .get()
        }

        fn file_errors(&self, kind: &str) -> u64 {
            self.stats
                .file_errors
                .get_or_create(&[("source", "app".into()), ("kind", kind.into())])
                .get()
        }
    }

    type Family1 = prometheus_client::metrics::family::Family<
        [(&'static str, String); 1],
        prometheus_client::metrics::counter::Counter,
    >;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn reads_lines_and_keeps_partial_last_line() {
        let mut h = H::new(&["*.log"]);
        h.cfg.partial_line_timeout = Duration::from_secs(3600);
        h.append("a.log", "one\ntwo\nthr");
        let mut t = h.tailer();
        assert_eq!(h.pump(&mut t, true), lines(&["one", "two"]));
        h.append("a.log", "ee\n");
        assert_eq!(h.pump(&mut t, true), lines(&["three"]));
    }

    #[test]
    fn partial_line_is_flushed_after_timeout_and_checkpointed_past_it() {
        let mut h = H::new(&["*.log"]);
        h.cfg.partial_line_timeout = Duration::from_secs(3);
        h.append("a.log", "one\nno-newline");
        let mut t = h.tailer();
        // Each pump round advances 2 s: the partial line is flushed by the timeout.
        assert_eq!(h.pump(&mut t, true), lines(&["one", "no-newline"]));
        t.write_checkpoint().expect("test setup");
        drop(t);
        h.append("a.log", "\nnext\n");
        let mut t = h.tailer();
        assert_eq!(h.pump(&mut t, true), lines(&["next"]));
    }

    #[test]
    fn an_idle_tailer_knows_when_the_checkpoint_has_nothing_new() {
        let mut h = H::new(&["app.log"]);
        // Longer than the fingerprint, so growing the file does not change its identity.
        let first = "1".repeat(300);
        h.append("app.log", &format!("{first}\n"));
        let mut t = h.tailer();
        assert!(t.checkpoint_changed(), "nothing written yet");
        assert_eq!(h.pump(&mut t, false), vec![first]);
        t.write_checkpoint().expect("test setup");
        assert!(
            !t.checkpoint_changed(),
            "read, not acknowledged: no offset moved"
        );
        h.append("app.log", "2\n");
        assert_eq!(h.pump(&mut t, true), lines(&["2"]));
        assert!(
            !t.checkpoint_changed(),
            "the first batch is unacknowledged: the offset waits behind it"
        );
        drop(t);
        let mut t = h.tailer();
        h.pump(&mut t, true);
        assert!(t.checkpoint_changed(), "acknowledged");
        t.write_checkpoint().expect("test setup");
        assert!(!t.checkpoint_changed());
        fs::remove_file(h.path("app.log")).expect("test setup");
        h.pump(&mut t, true);
        assert!(t.checkpoint_changed(), "the file went");
        t.write_checkpoint().expect("test setup");
        assert!(!t.checkpoint_changed());
    }

    #[test]
    fn an_open_rotated_away_file_has_a_deadline_and_symlinks_are_reported() {
        let mut h = H::new(&["app.log", "link.log"]);
        h.append("app.log", "1\n");
        let mut t = h.tailer();
        assert_eq!(h.pump(&mut t, true), lines(&["1"]));
        assert_eq!(t.next_deadline(), None);
        assert!(!t.follows_symlinks());
        fs::rename(h.path("app.log"), h.path("app.log.1")).expect("test setup");
        let seen = h.now + Duration::from_secs(1);
        t.scan(seen);
        assert_eq!(t.next_deadline(), Some(seen + h.cfg.rotate_wait));
        t.poll(seen + h.cfg.rotate_wait);
        assert_eq!(t.open_files(), 0, "let go at the deadline");
        assert_eq!(t.next_deadline(), None);
        std::os::unix::fs::symlink(h.path("app.log.1"), h.path("link.log")).expect("test setup");
        t.scan(h.now);
        assert!(t.follows_symlinks());
    }

    #[test]
    fn rename_rotation_reads_old_file_to_its_end() {
        let mut h = H::new(&["app.log"]);
        h.append("app.log", "1\n2\n");
        let mut t = h.tailer();
        assert_eq!(h.pump(&mut t, true), lines(&["1", "2"]));
        // Written after our last read, then rotated away (RotatingFileHandler order).
        h.append("app.log", "3\n");
        fs::rename(h.path("app.log"), h.path("app.log.1")).expect("test setup");
        h.append("app.log", "4\n");
        let mut got = h.pump(&mut t, true);
        got.sort();
        assert_eq!(got, lines(&["3", "4"]));
        assert_eq!(t.files_watched(), 1);
        assert_eq!(t.open_files(), 1);
    }

    #[test]
    fn renamed_file_still_matched_is_not_read_twice() {
        let mut h = H::new(&["app.log*"]);
        h.append("app.log", "1\n");
        let mut t = h.tailer();
        assert_eq!(h.pump(&mut t, true), lines(&["1"]));
        fs::rename(h.path("app.log"), h.path("app.log.1")).expect("test setup");
        h.append("app.log.1", "2\n");
        h.append("app.log", "3\n");
        let mut got = h.pump(&mut t, true);
        got.sort();
        assert_eq!(got, lines(&["2", "3"]));
    }

    #[test]
    fn copytruncate_restarts_from_zero_and_counts_lost_bytes() {
        let mut h = H::new(&["app.log"]);
        h.cfg.read_chunk_bytes = 8;
        h.cfg.batch_max_records = 1;
        h.append("app.log", "line-1\n");
        let mut t = h.tailer();
        assert_eq!(h.pump(&mut t, true), lines(&["line-1"]));
        h.append("app.log", "line-2\nline-3\n");
        // One poll: sees the new size, reads one chunk ("line-2\nl"), the batch is full.
        h.now += Duration::from_secs(1);
        t.poll(h.now);
        let b = t.take_batch().expect("test setup");
        assert_eq!(body(&decode(&b.logs)[0]), "line-2");
        b.ack.ack();
        t.process_acks();
        // copytruncate: the rest ("line-3\n") is copied away and truncated before we read it.
        let f = OpenOptions::new()
            .write(true)
            .open(h.path("app.log"))
            .expect("test setup");
        f.set_len(0).expect("test setup");
        drop(f);
        h.append("app.log", "new-1\n");
        assert_eq!(h.pump(&mut t, true), lines(&["new-1"]));
        assert_eq!(h.lost("truncated"), "line-3\n".len() as u64);
        assert_eq!(
            h.stats
                .rotations
                .get_or_create(&[("source", "app".into()), ("kind", "truncate".into())])
                .get(),
            1
        );
        // The checkpoint follows the new content.
        t.write_checkpoint().expect("test setup");
        drop(t);
        h.append("app.log", "new-2\n");
        let mut t = h.tailer();
        assert_eq!(h.pump(&mut t, true), lines(&["new-2"]));
    }

    #[test]
    fn delete_and_recreate() {
        let mut h = H::new(&["app.log"]);
        h.append("app.log", "old-1\n");
        let mut t = h.tailer();
        assert_eq!(h.pump(&mut t, true), lines(&["old-1"]));
        h.append("app.log", "old-2\n");
        fs::remove_file(h.path("app.log")).expect("test setup");
        // The open descriptor still reads what was written before the delete.
        assert_eq!(h.pump(&mut t, true), lines(&["old-2"]));
        assert_eq!(t.files_watched(), 0);
        assert_eq!(t.open_files(), 0);
        h.append("app.log", "new-1\n");
        assert_eq!(h.pump(&mut t, true), lines(&["new-1"]));
    }

    #[test]
    fn empty_file_that_grows_later_also_across_restart() {
        let mut h = H::new(&["app.log"]);
        h.append("app.log", "");
        let mut t = h.tailer();
        assert!(h.pump(&mut t, true).is_empty());
        assert_eq!(t.files_watched(), 1);
        t.write_checkpoint().expect("test setup");
        drop(t);
        h.append("app.log", "first\n");
        let mut t = h.tailer();
        assert_eq!(h.pump(&mut t, true), lines(&["first"]));
        h.append("app.log", "second\n");
        assert_eq!(h.pump(&mut t, true), lines(&["second"]));
    }

    #[test]
    fn same_inode_with_other_content_is_a_new_file() {
        let mut h = H::new(&["app.log"]);
        h.append("app.log", "aaaa-1\naaaa-2\n");
        let mut t = h.tailer();
        assert_eq!(h.pump(&mut t, true), lines(&["aaaa-1", "aaaa-2"]));
        t.write_checkpoint().expect("test setup");
        drop(t);
        // Rewritten in place while we were down: same device and inode, other content, and
        // longer than the checkpointed offset, so only the fingerprint can tell.
        fs::write(h.path("app.log"), "bbbb-1\nbbbb-2\nbbbb-3\n").expect("test setup");
        let mut t = h.tailer();
        assert_eq!(h.pump(&mut t, true), lines(&["bbbb-1", "bbbb-2", "bbbb-3"]));
    }

    #[test]
    fn compressed_rotations_are_ignored() {
        let mut h = H::new(&["app.log*"]);
        h.append("app.log", "plain\n");
        h.append("app.log.1.gz", "\u{1f}\u{8b}binary\n");
        let mut t = h.tailer();
        assert_eq!(h.pump(&mut t, true), lines(&["plain"]));
        assert_eq!(t.files_watched(), 1);
    }

    #[test]
    fn directory_in_place_of_a_file_is_reported_once_and_others_flow() {
        let mut h = H::new(&["*.log"]);
        fs::create_dir(h.path("dir.log")).expect("test setup");
        h.append("ok.log", "fine\n");
        let mut t = h.tailer();
        assert_eq!(h.pump(&mut t, true), lines(&["fine"]));
        h.append("ok.log", "still\n");
        assert_eq!(h.pump(&mut t, true), lines(&["still"]));
        assert_eq!(h.file_errors("not_a_file"), 1);
    }

    #[test]
    fn unreadable_files_are_reported_once_and_others_flow() {
        let mut h = H::new(&["*.log"]);
        // A symlink loop fails for every user (root included).
        std::os::unix::fs::symlink(h.path("loop.log"), h.path("loop.log")).expect("test setup");
        h.append("ok.log", "fine\n");
        let root = rustix::process::geteuid().is_root();
        if !root {
            h.append("secret.log", "hidden\n");
            fs::set_permissions(
                h.path("secret.log"),
                std::os::unix::fs::PermissionsExt::from_mode(0o000),
            )
            .expect("test setup");
        }
        let mut t = h.tailer();
        assert_eq!(h.pump(&mut t, true), lines(&["fine"]));
        h.append("ok.log", "more\n");
        assert_eq!(h.pump(&mut t, true), lines(&["more"]));
        assert_eq!(h.file_errors("io"), 1);
        if !root {
            assert_eq!(h.file_errors("permission_denied"), 1);
        }
    }

    #[test]
    fn clean_restart_resumes_without_loss_or_repeat() {
        let mut h = H::new(&["*.log"]);
        h.append("a.log", "a1\na2\n");
        h.append("b.log", "b1\n");
        let mut t = h.tailer();
        let mut got = h.pump(&mut t, true);
        got.sort();
        assert_eq!(got, lines(&["a1", "a2", "b1"]));
        t.write_checkpoint().expect("test setup");
        drop(t);
        h.append("a.log", "a3\n");
        h.append("b.log", "b2\n");
        let mut t = h.tailer();
        let mut got = h.pump(&mut t, true);
        got.sort();
        assert_eq!(got, lines(&["a3", "b2"]));
    }

    #[test]
    fn checkpoints_of_files_gone_for_good_expire() {
        let mut h = H::new(&["*.log"]);
        h.append("gone.log", "1\n");
        h.append("kept.log", "2\n");
        let mut t = h.tailer();
        assert_eq!(h.pump(&mut t, true).len(), 2);
        t.write_checkpoint().expect("test setup");
        drop(t);
        fs::remove_file(h.path("gone.log")).expect("test setup");
        let state = h.dir.path().join("state");
        let entries = |path: &str| {
            let text =
                fs::read_to_string(state.join("logs-app.checkpoint.json")).expect("checkpoint");
            text.matches(path).count()
        };
        // A long expiry keeps the entry of a file that is missing for now (it may come back).
        let mut t = h.tailer();
        h.pump(&mut t, true);
        t.write_checkpoint().expect("test setup");
        drop(t);
        assert_eq!(entries("gone.log"), 1);
        // Past the expiry it is dropped; the present file's entry stays.
        h.cfg.checkpoint_expiry = Duration::ZERO;
        let mut t = h.tailer();
        h.pump(&mut t, true);
        std::thread::sleep(Duration::from_millis(1100));
        h.append("kept.log", "3\n");
        h.pump(&mut t, true);
        t.write_checkpoint().expect("test setup");
        assert_eq!(entries("gone.log"), 0, "expired");
        assert_eq!(entries("kept.log"), 1);
    }

    #[test]
    fn unacknowledged_batches_are_read_again_after_restart() {
        let mut h = H::new(&["a.log"]);
        h.append("a.log", "acked\n");
        let mut t = h.tailer();
        assert_eq!(h.pump(&mut t, true), lines(&["acked"]));
        h.append("a.log", "not-acked\n");
        assert_eq!(h.pump(&mut t, false), lines(&["not-acked"]));
        assert_eq!(t.unacked_batches(), 1);
        t.write_checkpoint().expect("test setup");
        drop(t);
        let mut t = h.tailer();
        assert_eq!(h.pump(&mut t, true), lines(&["not-acked"]));
    }

    #[test]
    fn acknowledgements_apply_in_batch_order() {
        let mut h = H::new(&["a.log"]);
        h.cfg.batch_max_records = 1;
        h.cfg.read_chunk_bytes = 2;
        h.append("a.log", "1\n2\n");
        let mut t = h.tailer();
        t.scan(h.now);
        t.poll(h.now);
        let first = t.take_batch().expect("test setup");
        t.poll(h.now);
        let second = t.take_batch().expect("test setup");
        assert!(first.ack.seq() < second.ack.seq());
        second.ack.ack();
        t.process_acks();
        t.write_checkpoint().expect("test setup");
        drop(first);
        drop(t);
        // The second batch was acknowledged but the first was not: both are read again.
        let mut t = h.tailer();
        assert_eq!(h.pump(&mut t, true), lines(&["1", "2"]));
    }

    #[test]
    fn start_at_end_skips_existing_content_but_not_new_files() {
        let mut h = H::new(&["*.log"]);
        h.cfg.start_at = StartAt::End;
        h.append("old.log", "history\n");
        let mut t = h.tailer();
        assert!(h.pump(&mut t, true).is_empty());
        h.append("old.log", "live\n");
        h.append("new.log", "fresh\n");
        let mut got = h.pump(&mut t, true);
        got.sort();
        assert_eq!(got, lines(&["fresh", "live"]));
    }

    #[test]
    fn long_lines_are_truncated_and_counted() {
        let mut h = H::new(&["a.log"]);
        h.cfg.max_line_bytes = 10;
        h.cfg.read_chunk_bytes = 4;
        h.append("a.log", &format!("{}\nshort\n", "x".repeat(25)));
        let mut t = h.tailer();
        assert_eq!(h.pump(&mut t, true), lines(&["xxxxxxxxxx", "short"]));
        assert_eq!(h.counter(&h.stats.truncated_lines), 1);
        assert_eq!(h.lost("line_too_long"), 15);
    }

    #[test]
    fn descriptor_cap_closes_idle_files_and_reopens_them() {
        let mut h = H::new(&["*.log"]);
        h.cfg.max_open_files = 2;
        for i in 0..5 {
            h.append(&format!("f{i}.log"), &format!("{i}-a\n"));
        }
        let mut t = h.tailer();
        let mut got = h.pump(&mut t, true);
        got.sort();
        assert_eq!(got, lines(&["0-a", "1-a", "2-a", "3-a", "4-a"]));
        assert!(t.open_files() <= 2);
        for i in 0..5 {
            h.append(&format!("f{i}.log"), &format!("{i}-b\n"));
        }
        let mut got = h.pump(&mut t, true);
        got.sort();
        assert_eq!(got, lines(&["0-b", "1-b", "2-b", "3-b", "4-b"]));
        assert!(t.open_files() <= 2);
        assert_eq!(t.files_watched(), 5);
    }

    #[test]
    fn pending_traceback_is_not_checkpointed_until_emitted() {
        let mut h = H::new(&["a.log"]);
        h.cfg.join = Some(JoinerConfig {
            timeout: Duration::from_secs(3600),
            ..JoinerConfig::default()
        });
        h.append(
            "a.log",
            "first line\nERROR boom\nTraceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n",
        );
        let mut t = h.tailer();
        // "first line" is emitted when the next line starts a new record; the traceback waits.
        assert_eq!(h.pump(&mut t, true), lines(&["first line"]));
        t.write_checkpoint().expect("test setup");
        drop(t);
        h.append("a.log", "ValueError: bad\nafter\n");
        let mut t = h.tailer();
        let got = h.pump(&mut t, true);
        assert_eq!(got, lines(&["ERROR boom"]));
        assert_eq!(
            h.stats
                .exceptions
                .get_or_create(&vec![
                    ("source", "app".into()),
                    ("exception", "ValueError".into())
                ])
                .get(),
            1
        );
    }

    /// Runs `f` on another thread and fails if it does not finish in time (a blocked `open`).
    fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(secs))
            .expect("the tailer blocked")
    }

    #[test]
    fn a_fifo_swapped_under_a_closed_symlinked_file_never_blocks() {
        let mut h = H::new(&["*.log"]);
        h.cfg.max_open_files = 1;
        fs::create_dir_all(h.dir.path().join("targets")).expect("test setup");
        let target = h.dir.path().join("targets/current");
        fs::write(&target, "t-1\n").expect("test setup");
        std::os::unix::fs::symlink(&target, h.path("link.log")).expect("test setup");
        h.append("other.log", "o-1\n");
        let mut t = h.tailer();
        let mut got = h.pump(&mut t, true);
        got.sort();
        assert_eq!(got, lines(&["o-1", "t-1"]));
        // The link's target is closed (one descriptor, other.log read last), then replaced by a
        // FIFO with no writer: opening it for reading would block for good.
        h.append("other.log", "o-2\n");
        assert_eq!(h.pump(&mut t, true), lines(&["o-2"]));
        fs::remove_file(&target).expect("test setup");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &target,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .expect("mkfifo");
        h.append("other.log", "o-3\n");
        let (h, got) = within(20, move || {
            let got = h.pump(&mut t, true);
            h.append("other.log", "o-4\n");
            let more = h.pump(&mut t, true);
            (h, [got, more].concat())
        });
        assert_eq!(got, lines(&["o-3", "o-4"]));
        assert_eq!(h.file_errors("not_a_file"), 1, "counted once");
    }

    #[test]
    fn restart_follows_files_rotated_while_down_by_identity_and_rotated_names() {
        let mut h = H::new(&["*.log"]);
        // Rotated before the agent ever ran: history, not read.
        h.append("app.log.9", "ancient\n");
        fs::File::options()
            .write(true)
            .open(h.path("app.log.9"))
            .and_then(|f| f.set_modified(SystemTime::now() - Duration::from_secs(3600)))
            .expect("test setup");
        h.append("app.log", "a-1\n");
        h.append("moved.log", "m-1\n");
        let mut t = h.tailer();
        let mut got = h.pump(&mut t, true);
        got.sort();
        assert_eq!(got, lines(&["a-1", "m-1"]));
        h.append("app.log", "a-2\n");
        h.append("moved.log", "m-2\n");
        t.write_checkpoint().expect("test setup");
        drop(t); // kill -9: the lines after the checkpoint are unread
        // While down: app.log rotates twice (the second file is created and rotated away
        // entirely), moved.log is renamed to a name no pattern or rotation scheme covers, and
        // a compressed rotation appears.
        fs::rename(h.path("app.log"), h.path("app.log.2026-12-06_10-00-00")).expect("rename");
        h.append("app.log", "b-1\n");
        fs::rename(h.path("app.log"), h.path("app.log-20261206")).expect("rename");
        h.append("app.log", "c-1\n");
        fs::rename(h.path("moved.log"), h.path("moved.old")).expect("rename");
        h.append("app.log.3.gz", "\u{1f}\u{8b}binary\n");
        let mut t = h.tailer();
        let mut got = h.pump(&mut t, true);
        got.sort();
        assert_eq!(got, lines(&["a-2", "b-1", "c-1", "m-2"]));
        assert_eq!(
            h.stats
                .skipped_files
                .get_or_create(&[("source", "app".into()), ("reason", "compressed".into())])
                .get(),
            1
        );
        // Released rotated files are not read again by later scans or restarts.
        h.append("app.log", "c-2\n");
        assert_eq!(h.pump(&mut t, true), lines(&["c-2"]));
        t.write_checkpoint().expect("test setup");
        drop(t);
        let mut t = h.tailer();
        assert!(h.pump(&mut t, true).is_empty());
    }

    #[test]
    fn files_created_and_rotated_away_between_two_scans_are_read() {
        let mut h = H::new(&["app.log"]);
        h.append("app.log", "0\n");
        let mut t = h.tailer();
        assert_eq!(h.pump(&mut t, true), lines(&["0"]));
        // No scan meanwhile (the hand-off was blocked): three files come and go.
        for i in 1..=3 {
            h.append("app.log", &format!("{i}\n"));
            for n in (1..i).rev() {
                fs::rename(
                    h.path(&format!("app.log.{n}")),
                    h.path(&format!("app.log.{}", n + 1)),
                )
                .expect("rename");
            }
            fs::rename(h.path("app.log"), h.path("app.log.1")).expect("rename");
        }
        h.append("app.log", "4\n");
        let mut got = h.pump(&mut t, true);
        got.sort();
        assert_eq!(got, lines(&["1", "2", "3", "4"]));
        assert_eq!(t.open_files(), 1, "rotated files are let go once read");
    }

    #[test]
    fn scans_while_the_hand_off_waits_hold_rotated_files_and_count_those_without_a_descriptor() {
        let mut h = H::new(&["app.log"]);
        h.cfg.max_open_files = 2;
        h.append("app.log", "0\n");
        let mut t = h.tailer();
        assert_eq!(h.pump(&mut t, true), lines(&["0"]));
        // The hand-off waits: scans run, nothing is read. Three files are written and rotated
        // out of the glob; the first two are held open, the third finds no descriptor.
        for i in 1..=3 {
            h.append("app.log", &format!("{i}\n"));
            fs::rename(h.path("app.log"), h.path(&format!("app.log.{i}"))).expect("rename");
            h.now += Duration::from_millis(200);
            t.scan(h.now);
        }
        assert_eq!(t.open_files(), 2);
        let deferred = |h: &H| {
            h.stats
                .files_deferred
                .get_or_create(&[("source", "app".into())])
                .get()
        };
        assert_eq!(deferred(&h), 1);
        // The service deletes them (backupCount): the held one stays readable, the one that
        // waited for a descriptor is gone and counted.
        fs::remove_file(h.path("app.log.2")).expect("rm");
        fs::remove_file(h.path("app.log.3")).expect("rm");
        h.now += Duration::from_millis(200);
        t.scan(h.now);
        assert_eq!(h.lost(LOST_DELETED), 2);
        assert_eq!(deferred(&h), 0);
        let mut got = h.pump(&mut t, true);
        got.sort();
        assert_eq!(got, lines(&["1", "2"]));
        assert_eq!(h.lost(LOST_DELETED), 2, "counted once");
    }

    #[test]
    fn a_checkpointed_file_gone_unread_is_counted_lost() {
        let mut h = H::new(&["*.log"]);
        h.append("a.log", "1\n");
        let mut t = h.tailer();
        assert_eq!(h.pump(&mut t, true), lines(&["1"]));
        t.write_checkpoint().expect("test setup");
        h.append("a.log", "22\n");
        // Seen (a checkpoint after the scan records the size), not read.
        t.scan(h.now);
        t.poll(h.now);
        drop(t.take_batch());
        t.write_checkpoint().expect("test setup");
        drop(t);
        fs::remove_file(h.path("a.log")).expect("test setup");
        let mut t = h.tailer();
        h.pump(&mut t, true);
        assert_eq!(h.lost("deleted_unread"), 3);
    }

    /// logrotate `copytruncate` with the copies included: `cp app.log app.log.1`, then
    /// truncate. `copy_seen_first`: a scan sees the copy before the truncation is read.
    fn copytruncate_with_copies_included(copy_seen_first: bool) {
        let mut h = H::new(&["app.log*"]);
        // One line per batch, a chunk just longer than a line: a poll reads one line.
        h.cfg.batch_max_records = 1;
        h.cfg.read_chunk_bytes = 70;
        let line = |i: u32| format!("{i:04}-{}", "x".repeat(60));
        let mut text = String::new();
        for i in 0..10 {
            text.push_str(&line(i));
            text.push('\n');
        }
        h.append("app.log", &text);
        let mut t = h.tailer();
        assert_eq!(h.pump(&mut t, true).len(), 10);
        // Written, not read yet, then copied and truncated.
        h.append("app.log", &format!("{}\n{}\n", line(10), line(11)));
        fs::copy(h.path("app.log"), h.path("app.log.1")).expect("copy");
        if copy_seen_first {
            t.scan(h.now);
        }
        // Written after the copy, before the truncation: seen (the size), not read, lost.
        h.append("app.log", &format!("{}\n", line(12)));
        t.poll(h.now);
        let early: Vec<String> = t
            .take_batch()
            .map(|b| {
                let (logs, ack) = b.into_parts();
                ack.ack();
                decode(&logs).iter().map(body).collect()
            })
            .unwrap_or_default();
        t.process_acks();
        OpenOptions::new()
            .write(true)
            .open(h.path("app.log"))
            .and_then(|f| f.set_len(0))
            .expect("truncate");
        h.append("app.log", &format!("{}\n", line(13)));
        let mut got = [early, h.pump(&mut t, true)].concat();
        got.sort();
        assert_eq!(
            got,
            vec![line(10), line(11), line(13)],
            "copy_seen_first {copy_seen_first}"
        );
        assert_eq!(h.lost("truncated"), line(12).len() as u64 + 1);
        // The copy's checkpoint is at its end: a restart reads nothing again.
        t.write_checkpoint().expect("test setup");
        drop(t);
        let mut t = h.tailer();
        assert!(h.pump(&mut t, true).is_empty());
    }

    #[test]
    fn copytruncate_copy_seen_first_continues_from_the_read_offset() {
        copytruncate_with_copies_included(true);
    }

    #[test]
    fn copytruncate_copy_found_at_truncation_continues_from_the_read_offset() {
        copytruncate_with_copies_included(false);
    }

    #[test]
    fn acknowledged_offsets_are_written_without_waiting_for_the_interval() {
        let mut h = H::new(&["a.log"]);
        h.append("a.log", "1\n");
        let mut t = h.tailer();
        assert_eq!(h.pump(&mut t, true), lines(&["1"]));
        t.write_acknowledged().expect("write");
        assert!(t.checkpoint_changed(), "not durable yet");
        t.write_acknowledged().expect("nothing new: no write");
        let writes = h.counter(&h.stats.checkpoint_writes);
        t.write_checkpoint().expect("durable");
        assert_eq!(h.counter(&h.stats.checkpoint_writes), writes + 1);
        assert!(!t.checkpoint_changed());
        drop(t); // kill -9 after the acknowledgement: nothing is read again
        h.append("a.log", "2\n");
        let mut t = h.tailer();
        assert_eq!(h.pump(&mut t, true), lines(&["2"]));
    }

    #[test]
    fn debug_model_case() {
        use Step::*;
        run_model(
            "app.log",
            &[
                Rotate,
                DeleteOldest,
                Rotate,
                Write(12),
                Write(9),
                Pump,
                Write(4),
                Write(12),
                Pump,
                CopyTruncate,
                Write(14),
                Pump,
            ],
        )
        .expect("model");
    }

    #[test]
    fn cri_lines_are_stripped_joined_and_keep_their_stream() {
        let mut h = H::new(&["*.log"]);
        h.format = Format::Cri;
        h.cfg.join = Some(JoinerConfig {
            timeout: Duration::from_secs(1),
            ..JoinerConfig::default()
        });
        h.append(
            "0.log",
            concat!(
                "2026-12-06T10:00:00.000000001Z stdout F {\"levelname\": \"ERROR\", \"message\": \"boom\"}\n",
                "2026-12-06T10:00:01.000000000Z stdout P {\"levelname\": \"INFO\", \n",
                "2026-12-06T10:00:01.000000000Z stdout P \"message\": \"long \n",
                "2026-12-06T10:00:01.000000000Z stdout F line\"}\n",
                "2026-12-06T10:00:02Z stderr F Traceback (most recent call last):\n",
                "2026-12-06T10:00:02Z stderr F   File \"app.py\", line 1, in <module>\n",
                "2026-12-06T10:00:02Z stderr F ValueError: bad\n",
                "2026-12-06T10:00:03Z stdout P unfinished\n",
            ),
        );
        let mut t = h.tailer();
        let mut records = Vec::new();
        for _ in 0..4 {
            h.now += Duration::from_secs(2);
            t.scan(h.now);
            t.tick(h.now);
            t.poll(h.now);
            t.tick(h.now);
            if let Some(b) = t.take_batch() {
                let (logs, ack) = b.into_parts();
                records.extend(decode(&logs));
                ack.ack();
                t.process_acks();
            }
        }
        let got: Vec<(String, i32, Option<Value>)> = records
            .iter()
            .map(|r| (body(r), r.severity_number, attr(r, "stream")))
            .collect();
        let stdout = Value::StringValue("stdout".into());
        let stderr = Value::StringValue("stderr".into());
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0], ("boom".to_owned(), 17, Some(stdout.clone())));
        assert_eq!(got[1], ("long line".to_owned(), 9, Some(stdout)));
        assert_eq!(got[2].2, Some(stderr));
        assert_eq!(
            attr(&records[2], "exception.type"),
            Some(Value::StringValue("ValueError".into())),
            "joined traceback"
        );
        assert_eq!(records[1].time_unix_nano, 1_796_551_201_000_000_000);
        // The unfinished partial line holds the checkpoint before it.
        t.write_checkpoint().expect("checkpoint");
        drop(t);
        h.append("0.log", "2026-12-06T10:00:03Z stdout F  line\n");
        let mut t = h.tailer();
        assert_eq!(h.pump(&mut t, true), lines(&["unfinished line"]));
    }

    /// One step of the model test.
    #[derive(Debug, Clone)]
    enum Step {
        /// Appends this many new lines to `app.log`.
        Write(u8),
        /// RotatingFileHandler: `app.log.N` → `app.log.N+1`, `app.log` → `app.log.1`, new `app.log`.
        Rotate,
        /// Truncates `app.log` in place (copytruncate without keeping the copy).
        Truncate,
        /// Deletes the oldest rotated file.
        DeleteOldest,
        /// Lets the tailer run until it is idle.
        Pump,
        /// Clean restart: final checkpoint, new tailer.
        Restart,
        /// `kill -9` after the tailer went idle: only the checkpoint written on
        /// acknowledgement (no final one), new tailer.
        Crash,
        /// logrotate copytruncate keeping the copy: rotated names shift, `app.log` is copied
        /// to `app.log.1` and truncated (only once it holds enough for a fingerprint).
        CopyTruncate,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (1u8..20).prop_map(Step::Write),
            2 => Just(Step::Rotate),
            1 => Just(Step::Truncate),
            1 => Just(Step::DeleteOldest),
            3 => Just(Step::Pump),
            1 => Just(Step::Restart),
            1 => Just(Step::Crash),
            1 => Just(Step::CopyTruncate),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Against a model of the files: every line of a file that was not truncated or
        /// deleted before being read is emitted exactly once; no line is ever emitted twice.
        #[test]
        fn tailer_matches_the_model(steps in proptest::collection::vec(step(), 1..40)) {
            run_model("app.log*", &steps)?;
        }

        /// The same with only the live name included: rotated files are followed by identity
        /// and by their rotated names, across restarts and crashes.
        #[test]
        fn tailer_matches_the_model_with_the_live_name_only(
            steps in proptest::collection::vec(step(), 1..40)
        ) {
            run_model("app.log", &steps)?;
        }
    }

    fn run_model(
        include: &str,
        steps: &[Step],
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        {
            let mut h = H::new(&[include]);
            h.append("app.log", "");
            // Lines longer than the fingerprint a copy is recognised by (a file read while
            // shorter than that has no complete line read, so its copy can be read from 0).
            h.cfg.read_chunk_bytes = 64;
            h.cfg.batch_max_records = 7;
            let mut t = h.tailer();
            // The agent's first look: what is rotated before it is history.
            h.pump(&mut t, true);
            // Model: the lines in each file (index 0 = app.log, n = app.log.n), and which
            // lines may legitimately be missing (their file was cut before they were read).
            let mut files: Vec<Vec<String>> = vec![Vec::new()];
            let mut at_risk: HashSet<String> = HashSet::new();
            let mut emitted: HashMap<String, u32> = HashMap::new();
            let mut written: HashSet<String> = HashSet::new();
            let mut next = 0u32;
            let record = |got: Vec<String>, emitted: &mut HashMap<String, u32>| {
                for l in got {
                    *emitted.entry(l).or_default() += 1;
                }
            };
            for s in steps {
                match s {
                    Step::Write(n) => {
                        let mut text = String::new();
                        for _ in 0..*n {
                            next += 1;
                            let line =
                                format!("line-{next:06}-{}", "x".repeat(60 + (next % 23) as usize));
                            text.push_str(&line);
                            text.push('\n');
                            written.insert(line.clone());
                            files[0].push(line);
                        }
                        h.append("app.log", &text);
                    }
                    Step::Rotate => {
                        for n in (0..files.len()).rev() {
                            let from = if n == 0 {
                                "app.log".to_owned()
                            } else {
                                format!("app.log.{n}")
                            };
                            if h.path(&from).exists() {
                                fs::rename(h.path(&from), h.path(&format!("app.log.{}", n + 1)))
                                    .expect("rename");
                            }
                        }
                        files.insert(0, Vec::new());
                        fs::File::create(h.path("app.log")).expect("create");
                    }
                    Step::Truncate => {
                        for l in files[0].drain(..) {
                            if !emitted.contains_key(&l) {
                                at_risk.insert(l);
                            }
                        }
                        OpenOptions::new()
                            .write(true)
                            .open(h.path("app.log"))
                            .and_then(|f| f.set_len(0))
                            .expect("truncate");
                    }
                    Step::DeleteOldest => {
                        if files.len() > 1 {
                            let n = files.len() - 1;
                            for l in files.pop().unwrap_or_default() {
                                if !emitted.contains_key(&l) {
                                    at_risk.insert(l);
                                }
                            }
                            fs::remove_file(h.path(&format!("app.log.{n}"))).expect("delete");
                        }
                    }
                    Step::Pump => {
                        let got = h.pump(&mut t, true);
                        record(got, &mut emitted);
                    }
                    Step::Restart => {
                        let got = h.pump(&mut t, true);
                        record(got, &mut emitted);
                        t.write_checkpoint().expect("checkpoint");
                        drop(t);
                        t = h.tailer();
                    }
                    Step::Crash => {
                        let got = h.pump(&mut t, true);
                        record(got, &mut emitted);
                        t.write_acknowledged().expect("checkpoint");
                        drop(t);
                        t = h.tailer();
                    }
                    Step::CopyTruncate => {
                        let size = fs::metadata(h.path("app.log"))
                            .map(|m| m.len())
                            .unwrap_or(0);
                        if size < 100 {
                            continue;
                        }
                        for n in (1..files.len()).rev() {
                            let from = format!("app.log.{n}");
                            if h.path(&from).exists() {
                                fs::rename(h.path(&from), h.path(&format!("app.log.{}", n + 1)))
                                    .expect("rename");
                            }
                        }
                        fs::copy(h.path("app.log"), h.path("app.log.1")).expect("copy");
                        OpenOptions::new()
                            .write(true)
                            .open(h.path("app.log"))
                            .and_then(|f| f.set_len(0))
                            .expect("truncate");
                        let copied = std::mem::take(&mut files[0]);
                        files.insert(1, copied);
                    }
                }
            }
            let got = h.pump(&mut t, true);
            record(got, &mut emitted);
            for (line, n) in &emitted {
                proptest::prop_assert_eq!(*n, 1, "{} emitted {} times", line, n);
            }
            for f in &files {
                for l in f {
                    proptest::prop_assert!(emitted.contains_key(l), "{} lost", l);
                }
            }
            for l in emitted.keys() {
                proptest::prop_assert!(written.contains(l), "{} was never written", l);
            }
        }
        Ok(())
    }
}

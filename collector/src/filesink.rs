//! The file exporter: writes every envelope of its queue as one line of OTLP JSON (the
//! OpenTelemetry Collector file exporter's format: one `Export*ServiceRequest` per line), and
//! completes the envelope's receipt only after the line is on disk (`fdatasync`). For
//! debugging a pipeline, for handing telemetry to a log shipper, and for tests that need to see
//! exactly which records left the agent.
//!
//! Bounded: the file is rotated at `max_bytes` (to `<path>.1`, `<path>.2`, …, keeping
//! `max_files` old files); a write that fails (disk full) is retried with backoff, the envelope
//! stays un-acknowledged meanwhile, and each failure is counted — nothing is dropped silently.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::pipeline::{Envelope, Payload, Queue};

/// Settings of a file exporter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSinkConfig {
    pub path: PathBuf,
    /// Rotate when the file reaches this size.
    pub max_bytes: u64,
    /// Rotated files kept (`<path>.1` is the newest).
    pub max_files: usize,
}

type Label = [(&'static str, &'static str); 1];

/// Self-metrics of the file exporter (`exporter="file"`).
#[derive(Debug, Clone, Default)]
pub struct FileSinkStats {
    /// `sidelight_exporter_sent_total{exporter="file",signal}`: items written.
    pub sent: Family<[(&'static str, &'static str); 2], Counter>,
    /// `sidelight_exporter_file_write_errors_total{exporter}`.
    pub write_errors: Family<Label, Counter>,
}

impl FileSinkStats {
    /// Registers the families.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sidelight_exporter_file_sent",
            "Items written by the file exporter, by signal",
            self.sent.clone(),
        );
        registry.register(
            "sidelight_exporter_file_write_errors",
            "Failed writes of the file exporter (retried; the data stays unacknowledged)",
            self.write_errors.clone(),
        );
    }
}

/// Errors of the file exporter.
#[derive(Debug, thiserror::Error)]
pub enum FileSinkError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding OTLP JSON: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("decoding a received request: {0}")]
    Decode(prost::DecodeError),
}

/// A file exporter bound to its file (opened by [`FileSink::open`], run by [`FileSink::run`]).
#[derive(Debug)]
pub struct FileSink {
    config: FileSinkConfig,
    file: File,
    len: u64,
    stats: FileSinkStats,
}

impl FileSink {
    /// Opens (creates, appends to) the file; spawns nothing.
    pub fn open(config: FileSinkConfig, stats: FileSinkStats) -> Result<Self, FileSinkError> {
        let io = |source| FileSinkError::Io {
            path: config.path.clone(),
            source,
        };
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&config.path)
            .map_err(io)?;
        let len = drop_partial_line(&file).map_err(io)?;
        Ok(Self {
            config,
            file,
            len,
            stats,
        })
    }

    /// Encodes one payload as a line of OTLP JSON.
    pub fn encode(payload: &Payload) -> Result<Vec<u8>, FileSinkError> {
        let mut line = match payload {
            Payload::Traces(r) => serde_json::to_vec(r)?,
            Payload::Metrics(r) => serde_json::to_vec(r)?,
            Payload::Logs(r) => serde_json::to_vec(r)?,
            // Received requests kept encoded; checked when received, so this decodes.
            Payload::Encoded(e) => match e.decode() {
                Ok(decoded) => return Self::encode(&decoded),
                Err(err) => return Err(FileSinkError::Decode(err)),
            },
        };
        line.push(b'\n');
        Ok(line)
    }

    /// Writes one envelope durably, rotating first if the file is full.
    fn write(&mut self, line: &[u8]) -> Result<(), FileSinkError> {
        let path = self.config.path.clone();
        let io = |source| FileSinkError::Io {
            path: path.clone(),
            source,
        };
        if self.len > 0 && self.len + line.len() as u64 > self.config.max_bytes {
            self.rotate().map_err(io)?;
        }
        self.file.write_all(line).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.len += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let numbered = |n: usize| -> PathBuf {
            let mut p = self.config.path.clone().into_os_string();
            p.push(format!(".{n}"));
            p.into()
        };
        if self.config.max_files == 0 {
            self.file.set_len(0)?;
        } else {
            let _ = std::fs::remove_file(numbered(self.config.max_files));
            for n in (1..self.config.max_files).rev() {
                let from = numbered(n);
                if from.exists() {
                    std::fs::rename(&from, numbered(n + 1))?;
                }
            }
            std::fs::rename(&self.config.path, numbered(1))?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.config.path)?;
            sync_dir(&self.config.path);
        }
        self.len = 0;
        Ok(())
    }

    /// Writes envelopes from `queue` until it is closed and drained, or `cancel` fires (what is
    /// still queued then stays un-acknowledged: its sources offer it again).
    pub async fn run(self, queue: Arc<Queue>, cancel: CancellationToken) {
        let mut sink = Some(self);
        loop {
            let env = tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                env = queue.pop() => match env { Some(e) => e, None => break },
            };
            let Some(s) = sink.take() else { break };
            let Some(s) = write_with_retry(s, env, &cancel).await else {
                break;
            };
            sink = Some(s);
        }
    }
}

/// Writes one envelope, retrying with backoff until it succeeds or `cancel` fires.
async fn write_with_retry(
    sink: FileSink,
    env: Envelope,
    cancel: &CancellationToken,
) -> Option<FileSink> {
    let signal = env.payload.signal().as_str();
    let items = env.payload.items() as u64;
    let line = match FileSink::encode(&env.payload) {
        Ok(l) => l,
        Err(e) => {
            // Cannot happen for prost messages; complete so the source does not retry forever.
            tracing::error!(error = %e, "file exporter cannot encode a payload; dropped");
            sink.stats
                .write_errors
                .get_or_create(&[("exporter", "file")])
                .inc();
            env.receipt.complete();
            return Some(sink);
        }
    };
    let line = Arc::new(line);
    let mut delay = Duration::from_millis(100);
    let mut sink = sink;
    let mut logged = false;
    loop {
        let l = line.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let r = sink.write(&l);
            (sink, r)
        })
        .await;
        let Ok((s, result)) = joined else {
            return None;
        };
        sink = s;
        match result {
            Ok(()) => {
                sink.stats
                    .sent
                    .get_or_create(&[("exporter", "file"), ("signal", signal)])
                    .inc_by(items);
                env.receipt.complete();
                if logged {
                    tracing::info!(path = %sink.config.path.display(), "file exporter writes again");
                }
                return Some(sink);
            }
            Err(e) => {
                sink.stats
                    .write_errors
                    .get_or_create(&[("exporter", "file")])
                    .inc();
                if !logged {
                    tracing::error!(error = %e, "file exporter write failed; retrying, the data stays unacknowledged");
                    logged = true;
                }
                tokio::select! {
                    () = cancel.cancelled() => return None,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// A crash mid-write can leave a last line without its newline; that line was never
/// acknowledged (its data is sent again), so it is cut off rather than glued to the next one.
fn drop_partial_line(file: &File) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    let mut end = len;
    let mut buf = vec![0u8; 64 << 10];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            let keep = start + i as u64 + 1;
            if keep < len {
                tracing::warn!(
                    cut = len - keep,
                    "file exporter: cutting an unfinished last line (never acknowledged)"
                );
                file.set_len(keep)?;
            }
            return Ok(keep);
        }
        end = start;
    }
    if len > 0 {
        file.set_len(0)?;
    }
    Ok(0)
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};

    use super::*;
    use crate::pipeline::{QueueLimits, QueueStats, Receipt};

    fn logs(body: &str) -> Payload {
        Payload::Logs(ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord {
                        severity_text: body.into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        })
    }

    #[tokio::test]
    async fn writes_lines_acks_after_write_and_rotates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out/export.jsonl");
        let line_len = FileSink::encode(&logs("x")).expect("encode").len() as u64;
        let stats = FileSinkStats::default();
        let sink = FileSink::open(
            FileSinkConfig {
                path: path.clone(),
                max_bytes: line_len * 3,
                max_files: 1,
            },
            stats.clone(),
        )
        .expect("open");
        let queue = Arc::new(Queue::new(
            "file",
            QueueLimits::default(),
            QueueStats::default(),
        ));
        let acked = Arc::new(AtomicUsize::new(0));
        for _ in 0..8 {
            let a = acked.clone();
            let r = Receipt::new(move || {
                a.fetch_add(1, Ordering::SeqCst);
            });
            queue.try_push(Envelope::new(logs("x"), r)).expect("room");
        }
        queue.close();
        sink.run(queue, CancellationToken::new()).await;
        assert_eq!(acked.load(Ordering::SeqCst), 8);
        let current = std::fs::read_to_string(&path).expect("file");
        let rotated =
            std::fs::read_to_string(dir.path().join("out/export.jsonl.1")).expect("rotated");
        assert_eq!(
            current.lines().count(),
            2,
            "8 = 3 + 3 (dropped: max_files 1) + 2"
        );
        assert_eq!(rotated.lines().count(), 3);
        let parsed: ExportLogsServiceRequest =
            serde_json::from_str(current.lines().next().expect("line")).expect("OTLP JSON");
        assert_eq!(
            parsed.resource_logs[0].scope_logs[0].log_records[0].severity_text,
            "x"
        );
        let sent = stats
            .sent
            .get_or_create(&[("exporter", "file"), ("signal", "logs")])
            .get();
        assert_eq!(sent, 8);
    }

    #[test]
    fn an_unfinished_last_line_is_cut_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("export.jsonl");
        let cfg = FileSinkConfig {
            path: path.clone(),
            max_bytes: 1 << 20,
            max_files: 1,
        };
        std::fs::write(&path, b"{\"a\":1}\n{\"b\":").expect("write");
        let sink = FileSink::open(cfg.clone(), FileSinkStats::default()).expect("open");
        assert_eq!(sink.len, 8);
        assert_eq!(std::fs::read(&path).expect("read"), b"{\"a\":1}\n");
        std::fs::write(&path, b"no newline at all").expect("write");
        assert_eq!(
            FileSink::open(cfg, FileSinkStats::default())
                .expect("open")
                .len,
            0
        );
    }

    #[tokio::test]
    async fn a_failing_write_keeps_the_envelope_unacknowledged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("export.jsonl");
        let stats = FileSinkStats::default();
        let mut sink = FileSink::open(
            FileSinkConfig {
                path: path.clone(),
                max_bytes: 1 << 20,
                max_files: 1,
            },
            stats.clone(),
        )
        .expect("open");
        // A read-only descriptor makes every write fail, like a full disk.
        sink.file = File::open(&path).expect("reopen read-only");
        let queue = Arc::new(Queue::new(
            "file",
            QueueLimits::default(),
            QueueStats::default(),
        ));
        let acked = Arc::new(AtomicUsize::new(0));
        let a = acked.clone();
        queue
            .try_push(Envelope::new(
                logs("y"),
                Receipt::new(move || {
                    a.fetch_add(1, Ordering::SeqCst);
                }),
            ))
            .expect("room");
        let cancel = CancellationToken::new();
        let task = tokio::spawn(sink.run(queue, cancel.clone()));
        tokio::time::sleep(Duration::from_millis(350)).await;
        cancel.cancel();
        task.await.expect("join");
        assert_eq!(
            acked.load(Ordering::SeqCst),
            0,
            "never written, never acked"
        );
        let errors = stats
            .write_errors
            .get_or_create(&[("exporter", "file")])
            .get();
        assert!(errors >= 2, "retried and counted: {errors}");
    }
}

//! Read positions of the file tailer, per log source in the caller's state directory, in two
//! files: `logs-<source>.checkpoint.json`, replaced atomically and durably once per checkpoint
//! interval (write a temporary file, `fsync` it, `rename` it over the old one, `fsync` the
//! directory), and `logs-<source>.checkpoint.acked`, overwritten in place after each round of
//! acknowledgements that moved an offset (no `fsync`: the page cache outlives `kill -9`, so a
//! crash of the process repeats only what was not acknowledged yet). Each write carries a
//! sequence number; on load the newer of the two wins, and an `acked` file that is incomplete
//! (its length or CRC-32 does not match: a write cut short, or a crash of the machine before
//! the page reached the disk) is ignored, which falls back to the last durable write.
//!
//! Why overwrite in place between durable writes: one `pwrite` into an open file costs about a
//! microsecond of kernel time, while a new file renamed over the old one makes ext4 (with its
//! default `auto_da_alloc`) start writing the new file out at every rename.
//!
//! Why JSON files and not SQLite: the state is a few hundred entries at most, always rewritten
//! whole by one writer (the source's tailer). An atomic rename gives exactly the crash
//! semantics we need (the old or the new file, never a mix) without linking a bundled SQLite
//! into the data plane or sharing a database handle with the agent's store; the files are
//! human-readable when debugging a stuck source (the `acked` file after a 24-byte header).
//!
//! An entry names a file by identity — device, inode and a hash of the file's first bytes
//! ([`Fingerprint`]) — never by inode alone, so a recycled inode with other content is a new file.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Hash of the first `len` bytes of a file (FNV-1a 64: stable across Rust versions, which
/// matters because it is persisted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Fingerprint {
    /// Bytes hashed (less than the configured size while the file is shorter).
    pub len: u32,
    /// FNV-1a 64 of those bytes.
    pub hash: u64,
}

impl Fingerprint {
    /// Fingerprint of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Self {
            len: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
            hash,
        }
    }

    /// Whether `prefix` (the file's first bytes, at least `self.len` of them) starts with what
    /// this fingerprint hashed.
    pub fn matches_prefix(&self, prefix: &[u8]) -> bool {
        let len = self.len as usize;
        prefix.len() >= len && Self::of(&prefix[..len]) == *self
    }
}

/// One persisted position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub dev: u64,
    pub ino: u64,
    pub fingerprint: Fingerprint,
    /// Acknowledged offset: every byte before it was handed to all sinks.
    pub offset: u64,
    /// Last path the file was seen under (informational).
    pub path: PathBuf,
    /// Unix seconds when the file was last seen; entries unseen for the expiry are dropped.
    pub seen_unix: u64,
    /// Size of the file when it was last looked at: what lies between `offset` and it is
    /// counted lost if the file is gone for good (0 in checkpoints of older versions).
    #[serde(default)]
    pub size: u64,
    /// The file was read to its end and let go (rotated away or deleted): the entry only keeps
    /// a rotated name that still holds it from being read again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub released: bool,
}

/// What a checkpoint file holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub entries: Vec<Entry>,
    /// Unix milliseconds when the last scan before this write started: rotated files written
    /// after it may hold lines never read (absent in checkpoints of older versions).
    pub scanned_unix_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct OnDisk {
    version: u32,
    entries: Vec<Entry>,
    #[serde(default)]
    scanned_unix_ms: Option<u64>,
    /// Number of the write (0 in checkpoints of older versions).
    #[serde(default)]
    seq: u64,
}

/// What is written: [`OnDisk`] borrowing the entries.
#[derive(Serialize)]
struct ToDisk<'a> {
    version: u32,
    entries: &'a [Entry],
    #[serde(skip_serializing_if = "Option::is_none")]
    scanned_unix_ms: Option<u64>,
    seq: u64,
}

const VERSION: u32 = 1;

/// First bytes of the `acked` file; then the write's sequence number (u64), the JSON body's
/// length (u32) and the CRC-32 of those two fields and the body (u32), all little-endian.
const ACKED_MAGIC: [u8; 8] = *b"SLACKED1";
const ACKED_HEADER: usize = 24;

/// Errors reading or writing checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("creating checkpoint directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading checkpoint {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("checkpoint {path} has unsupported version {version}")]
    Version { path: PathBuf, version: u32 },
    #[error("writing checkpoint {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The checkpoint files of one source.
#[derive(Debug)]
pub struct CheckpointFile {
    path: PathBuf,
    /// The positions written between durable writes, overwritten in place.
    acked_path: PathBuf,
    /// `acked_path`, open once written to.
    acked: Option<File>,
    /// Sequence number of the last write or of the newest file loaded.
    seq: u64,
}

impl CheckpointFile {
    /// The checkpoint of `source` in `dir` (`logs-<source>.checkpoint.json`; characters other
    /// than ASCII alphanumerics, `-` and `_` in the name become `_`).
    pub fn new(dir: &Path, source: &str) -> Self {
        let name: String = source
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Self {
            path: dir.join(format!("logs-{name}.checkpoint.json")),
            acked_path: dir.join(format!("logs-{name}.checkpoint.acked")),
            acked: None,
            seq: 0,
        }
    }

    /// The durable checkpoint.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The positions acknowledged since the last durable write.
    pub fn acked_path(&self) -> &Path {
        &self.acked_path
    }

    /// Loads the newer of the durable checkpoint and the acknowledged positions written after
    /// it; missing files are an empty checkpoint. An incomplete `acked` file is ignored (with a
    /// warning): the durable checkpoint is used.
    pub fn load(&mut self) -> Result<Loaded, CheckpointError> {
        let durable = match fs::read(&self.path) {
            Ok(bytes) => Some(self.parse(&self.path, &bytes)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(CheckpointError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let acked = match fs::read(&self.acked_path) {
            Ok(bytes) => match self.parse_acked(&bytes) {
                Ok(on_disk) => Some(on_disk),
                Err(why) => {
                    tracing::warn!(path = %self.acked_path.display(), why, "ignoring incomplete log checkpoint; using the durable one (lines acknowledged after it are read again)");
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(CheckpointError::Read {
                    path: self.acked_path.clone(),
                    source,
                });
            }
        };
        let durable_seq = durable.as_ref().map_or(0, |d| d.seq);
        let newest = match (durable, acked) {
            (d, Some(a)) if d.is_none() || a.seq > durable_seq => Some(a),
            (d, _) => d,
        };
        let Some(on_disk) = newest else {
            return Ok(Loaded::default());
        };
        self.seq = self.seq.max(on_disk.seq).max(durable_seq);
        Ok(Loaded {
            entries: on_disk.entries,
            scanned_unix_ms: on_disk.scanned_unix_ms,
        })
    }

    fn parse(&self, path: &Path, body: &[u8]) -> Result<OnDisk, CheckpointError> {
        let on_disk: OnDisk =
            serde_json::from_slice(body).map_err(|source| CheckpointError::Corrupt {
                path: path.to_path_buf(),
                source,
            })?;
        if on_disk.version != VERSION {
            return Err(CheckpointError::Version {
                path: path.to_path_buf(),
                version: on_disk.version,
            });
        }
        Ok(on_disk)
    }

    /// The `acked` file's content, or why it is not usable.
    fn parse_acked(&self, bytes: &[u8]) -> Result<OnDisk, &'static str> {
        let header = bytes.get(..ACKED_HEADER).ok_or("shorter than its header")?;
        if header[..8] != ACKED_MAGIC {
            return Err("not a checkpoint");
        }
        let seq = <[u8; 8]>::try_from(&header[8..16]).map(u64::from_le_bytes);
        let len = <[u8; 4]>::try_from(&header[16..20]).map(u32::from_le_bytes);
        let crc = <[u8; 4]>::try_from(&header[20..24]).map(u32::from_le_bytes);
        let (Ok(seq), Ok(len), Ok(crc)) = (seq, len, crc) else {
            return Err("shorter than its header");
        };
        let len = len as usize;
        let body = bytes
            .get(ACKED_HEADER..ACKED_HEADER + len)
            .ok_or("shorter than its length")?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&header[8..20]);
        hasher.update(body);
        if hasher.finalize() != crc {
            return Err("CRC mismatch");
        }
        let on_disk = self
            .parse(&self.acked_path, body)
            .map_err(|_| "not a checkpoint body")?;
        if on_disk.seq != seq {
            return Err("sequence numbers differ");
        }
        Ok(on_disk)
    }

    /// Writes the entries. `durable`: the checkpoint file is replaced atomically (tmp file,
    /// `fsync`, rename, directory `fsync`), so the new state survives a crash of the machine.
    /// Otherwise the `acked` file is overwritten in place with one `pwrite`: that survives a
    /// crash of the process (the page cache outlives `kill -9`) at a fraction of the cost, and
    /// the durable checkpoint stays as it was, the fallback if the write is cut short.
    pub fn store(
        &mut self,
        entries: &[Entry],
        scanned_unix_ms: Option<u64>,
        durable: bool,
    ) -> Result<(), CheckpointError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let write_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CheckpointError::Write { path, source }
        };
        self.seq += 1;
        let mut body = Vec::with_capacity(if durable { 256 } else { ACKED_HEADER + 256 });
        if !durable {
            body.resize(ACKED_HEADER, 0);
        }
        serde_json::to_writer(
            &mut body,
            &ToDisk {
                version: VERSION,
                entries,
                scanned_unix_ms,
                seq: self.seq,
            },
        )
        .map_err(|e| write_err(&self.path)(std::io::Error::other(e)))?;
        if !durable {
            return self.write_acked(body);
        }
        fs::create_dir_all(dir).map_err(|source| CheckpointError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let tmp = self.path.with_extension("json.tmp");
        let mut file = File::create(&tmp).map_err(write_err(&self.path))?;
        file.write_all(&body).map_err(write_err(&self.path))?;
        file.sync_all().map_err(write_err(&self.path))?;
        drop(file);
        fs::rename(&tmp, &self.path).map_err(write_err(&self.path))?;
        // Make the rename itself durable.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(write_err(&self.path))
    }

    /// Overwrites the `acked` file with `buf` (its header still zero, then the JSON body).
    fn write_acked(&mut self, mut buf: Vec<u8>) -> Result<(), CheckpointError> {
        let len = u32::try_from(buf.len() - ACKED_HEADER).map_err(|_| CheckpointError::Write {
            path: self.acked_path.clone(),
            source: std::io::Error::other("checkpoint over 4 GiB"),
        })?;
        buf[..8].copy_from_slice(&ACKED_MAGIC);
        buf[8..16].copy_from_slice(&self.seq.to_le_bytes());
        buf[16..20].copy_from_slice(&len.to_le_bytes());
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&buf[8..20]);
        hasher.update(&buf[ACKED_HEADER..]);
        let crc = hasher.finalize();
        buf[20..24].copy_from_slice(&crc.to_le_bytes());
        if self.acked.is_none() {
            let dir = self.acked_path.parent().unwrap_or(Path::new("."));
            fs::create_dir_all(dir).map_err(|source| CheckpointError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&self.acked_path)
                .map_err(|source| CheckpointError::Write {
                    path: self.acked_path.clone(),
                    source,
                })?;
            self.acked = Some(file);
        }
        let Some(file) = &self.acked else {
            return Ok(());
        };
        // What lies beyond the new length (a longer earlier write) is ignored: the header
        // says where the body ends.
        file.write_all_at(&buf, 0).map_err(|source| {
            let path = self.acked_path.clone();
            // Opened again on the next write (the file may have been replaced meanwhile).
            self.acked = None;
            CheckpointError::Write { path, source }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_file() {
        let dir = tempfile::tempdir().expect("test setup");
        let mut cp = CheckpointFile::new(dir.path(), "app/web");
        assert!(cp.path().ends_with("logs-app_web.checkpoint.json"));
        assert_eq!(cp.load().expect("test setup"), Loaded::default());
        let entry = Entry {
            dev: 1,
            ino: 2,
            fingerprint: Fingerprint::of(b"hello"),
            offset: 42,
            path: "/var/log/app.log".into(),
            seen_unix: 7,
            size: 50,
            released: false,
        };
        cp.store(std::slice::from_ref(&entry), Some(9), true)
            .expect("test setup");
        let loaded = cp.load().expect("test setup");
        assert_eq!(loaded.entries, vec![entry.clone()]);
        assert_eq!(loaded.scanned_unix_ms, Some(9));
        cp.store(std::slice::from_ref(&entry), None, false)
            .expect("test setup");
        assert_eq!(cp.load().expect("test setup").scanned_unix_ms, None);
        assert!(!cp.path().with_extension("json.tmp").exists());
        assert!(cp.acked_path().ends_with("logs-app_web.checkpoint.acked"));
    }

    fn entry(offset: u64) -> Entry {
        Entry {
            dev: 1,
            ino: 2,
            fingerprint: Fingerprint::of(b"hello"),
            offset,
            path: "/var/log/app.log".into(),
            seen_unix: 7,
            size: 500,
            released: false,
        }
    }

    fn offsets(dir: &Path) -> Vec<u64> {
        CheckpointFile::new(dir, "app")
            .load()
            .expect("load")
            .entries
            .iter()
            .map(|e| e.offset)
            .collect()
    }

    #[test]
    fn the_newer_of_the_durable_and_the_acked_file_wins() {
        let dir = tempfile::tempdir().expect("test setup");
        let mut cp = CheckpointFile::new(dir.path(), "app");
        // Acknowledged before the first durable write (kill -9 within the first interval).
        cp.store(&[entry(10)], None, false).expect("store");
        assert!(!cp.path().exists());
        assert_eq!(offsets(dir.path()), [10]);
        cp.store(&[entry(20)], None, true).expect("store");
        assert_eq!(offsets(dir.path()), [20]);
        cp.store(&[entry(30)], None, false).expect("store");
        assert_eq!(offsets(dir.path()), [30]);
        cp.store(&[entry(30), entry(40)], None, true)
            .expect("store");
        assert_eq!(offsets(dir.path()), [30, 40]);
        // A restarted tailer numbers its writes after the newest file it loaded.
        let mut again = CheckpointFile::new(dir.path(), "app");
        again.load().expect("load");
        again.store(&[entry(50)], None, false).expect("store");
        assert_eq!(offsets(dir.path()), [50]);
        again.store(&[entry(60)], None, true).expect("store");
        again.store(&[entry(70)], None, false).expect("store");
        assert_eq!(offsets(dir.path()), [70]);
    }

    #[test]
    fn an_incomplete_acked_file_falls_back_to_the_durable_checkpoint() {
        let dir = tempfile::tempdir().expect("test setup");
        let mut cp = CheckpointFile::new(dir.path(), "app");
        cp.store(&[entry(10)], None, true).expect("store");
        // A longer earlier write beyond the new end is ignored.
        cp.store(&[entry(20), entry(21), entry(22)], None, false)
            .expect("store");
        cp.store(&[entry(30)], None, false).expect("store");
        assert_eq!(offsets(dir.path()), [30]);
        let full = fs::read(cp.acked_path()).expect("read");
        // Cut short (a write that did not complete).
        let len = u32::from_le_bytes([full[16], full[17], full[18], full[19]]) as usize;
        fs::write(cp.acked_path(), &full[..ACKED_HEADER + len - 1]).expect("test setup");
        assert_eq!(offsets(dir.path()), [10]);
        // A changed byte (the offset 30 read as 31).
        let mut changed = full.clone();
        let at = changed
            .windows(11)
            .position(|w| w == b"\"offset\":30")
            .expect("offset in the body");
        changed[at + 10] = b'1';
        fs::write(cp.acked_path(), &changed).expect("test setup");
        assert_eq!(offsets(dir.path()), [10]);
        // Not a checkpoint at all.
        fs::write(cp.acked_path(), b"junk").expect("test setup");
        assert_eq!(offsets(dir.path()), [10]);
        fs::write(cp.acked_path(), &full).expect("test setup");
        assert_eq!(offsets(dir.path()), [30]);
    }

    #[test]
    fn corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().expect("test setup");
        let cp = CheckpointFile::new(dir.path(), "app");
        fs::write(cp.path(), b"{not json").expect("test setup");
        let mut cp = cp;
        assert!(matches!(cp.load(), Err(CheckpointError::Corrupt { .. })));
    }

    #[test]
    fn checkpoints_of_the_previous_version_load() {
        let dir = tempfile::tempdir().expect("test setup");
        let cp = CheckpointFile::new(dir.path(), "app");
        fs::write(
            cp.path(),
            br#"{"version":1,"entries":[{"dev":1,"ino":2,"fingerprint":{"len":1,"hash":3},"offset":4,"path":"/a.log","seen_unix":5}]}"#,
        )
        .expect("test setup");
        let mut cp = cp;
        let loaded = cp.load().expect("old checkpoint");
        assert_eq!(loaded.entries[0].size, 0);
        assert!(!loaded.entries[0].released);
        assert_eq!(loaded.scanned_unix_ms, None);
    }

    /// The cost of one checkpoint write with and without `fsync` (BENCHMARKS.md); ignored by
    /// default: `cargo test --release -p sidelight-collector --lib checkpoint_write_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "measurement"]
    fn checkpoint_write_cost() {
        let dir = tempfile::tempdir().expect("test setup");
        let mut cp = CheckpointFile::new(dir.path(), "app");
        let entries: Vec<Entry> = (0..8)
            .map(|i| Entry {
                dev: 2049,
                ino: 1_000_000 + i,
                fingerprint: Fingerprint::of(b"a line"),
                offset: 123_456_789,
                path: format!("/var/log/app/app.log.{i}").into(),
                seen_unix: 1_796_551_200,
                size: 123_456_789,
                released: i > 0,
            })
            .collect();
        for durable in [false, true] {
            let n = if durable { 200 } else { 2000 };
            let cpu = || rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
            let (c0, t0) = (cpu(), std::time::Instant::now());
            for _ in 0..n {
                cp.store(&entries, Some(1), durable).expect("store");
            }
            let (c1, wall) = (cpu(), t0.elapsed());
            let cpu_us = ((c1.tv_sec - c0.tv_sec) as f64 * 1e6
                + (c1.tv_nsec - c0.tv_nsec) as f64 / 1e3)
                / f64::from(n);
            eprintln!(
                "durable {durable}: {:.1} us wall, {cpu_us:.1} us CPU per write of {} entries",
                wall.as_secs_f64() * 1e6 / f64::from(n),
                entries.len()
            );
        }
    }

    #[test]
    fn fingerprint_prefix() {
        let fp = Fingerprint::of(b"abc");
        assert!(fp.matches_prefix(b"abcdef"));
        assert!(!fp.matches_prefix(b"ab"));
        assert!(!fp.matches_prefix(b"abd"));
        assert_eq!(Fingerprint::of(b"").len, 0);
    }
}

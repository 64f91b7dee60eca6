//! Durable read positions of the file tailer: one JSON file per log source in the caller's state
//! directory, replaced atomically (write a temporary file, `rename` it over the old one; the
//! periodic durable write also `fsync`s the file and the directory).
//!
//! Why a JSON file and not SQLite: the state is a few hundred entries at most, always rewritten
//! whole by one writer (the source's tailer): after each acknowledgement that moved an offset
//! (no `fsync`: that survives `kill -9`), and with `fsync` at most once per checkpoint interval
//! (that survives a machine crash). An atomic rename gives
//! exactly the crash semantics we need (the old or the new file, never a mix) without linking a
//! bundled SQLite into the data plane or sharing a database handle with the agent's store; the
//! file is human-readable when debugging a stuck source.
//!
//! An entry names a file by identity — device, inode and a hash of the file's first bytes
//! ([`Fingerprint`]) — never by inode alone, so a recycled inode with other content is a new file.

use std::fs::{self, File};
use std::io::Write;
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

#[derive(Debug, Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    entries: Vec<Entry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scanned_unix_ms: Option<u64>,
}

const VERSION: u32 = 1;

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

/// The checkpoint file of one source.
#[derive(Debug, Clone)]
pub struct CheckpointFile {
    path: PathBuf,
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
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the entries; a missing file is an empty checkpoint.
    pub fn load(&self) -> Result<Loaded, CheckpointError> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::default()),
            Err(source) => {
                return Err(CheckpointError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let on_disk: OnDisk =
            serde_json::from_slice(&bytes).map_err(|source| CheckpointError::Corrupt {
                path: self.path.clone(),
                source,
            })?;
        if on_disk.version != VERSION {
            return Err(CheckpointError::Version {
                path: self.path.clone(),
                version: on_disk.version,
            });
        }
        Ok(Loaded {
            entries: on_disk.entries,
            scanned_unix_ms: on_disk.scanned_unix_ms,
        })
    }

    /// Replaces the checkpoint atomically: a tmp file renamed over the old one. `durable`
    /// also `fsync`s the file before the rename and the directory after it, so the new state
    /// survives a crash of the machine; without it the write survives a crash of the process
    /// (the page cache outlives `kill -9`), at a fraction of the cost.
    pub fn store(
        &self,
        entries: &[Entry],
        scanned_unix_ms: Option<u64>,
        durable: bool,
    ) -> Result<(), CheckpointError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(|source| CheckpointError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let tmp = self.path.with_extension("json.tmp");
        let write_err = |source| CheckpointError::Write {
            path: self.path.clone(),
            source,
        };
        let body = serde_json::to_vec(&OnDisk {
            version: VERSION,
            entries: entries.to_vec(),
            scanned_unix_ms,
        })
        .map_err(|e| write_err(std::io::Error::other(e)))?;
        let mut file = File::create(&tmp).map_err(write_err)?;
        file.write_all(&body).map_err(write_err)?;
        if durable {
            file.sync_all().map_err(write_err)?;
        }
        drop(file);
        fs::rename(&tmp, &self.path).map_err(write_err)?;
        if durable {
            // Make the rename itself durable.
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(write_err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_file() {
        let dir = tempfile::tempdir().expect("test setup");
        let cp = CheckpointFile::new(dir.path(), "app/web");
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
    }

    #[test]
    fn corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().expect("test setup");
        let cp = CheckpointFile::new(dir.path(), "app");
        fs::write(cp.path(), b"{not json").expect("test setup");
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
        let cp = CheckpointFile::new(dir.path(), "app");
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

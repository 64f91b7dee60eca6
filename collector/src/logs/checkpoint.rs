//! Durable read positions of the file tailer: one JSON file per log source in the caller's state
//! directory, replaced atomically (write a temporary file, `fsync` it, `rename` it over the old
//! one, `fsync` the directory).
//!
//! Why a JSON file and not SQLite: the state is a few hundred entries at most, always rewritten
//! whole, at most once per second, by one writer (the source's tailer). An atomic rename gives
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
}

#[derive(Debug, Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    entries: Vec<Entry>,
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
    pub fn load(&self) -> Result<Vec<Entry>, CheckpointError> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
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
        Ok(on_disk.entries)
    }

    /// Replaces the checkpoint atomically: tmp file, `fsync`, rename, directory `fsync`.
    pub fn store(&self, entries: &[Entry]) -> Result<(), CheckpointError> {
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
        })
        .map_err(|e| write_err(std::io::Error::other(e)))?;
        let mut file = File::create(&tmp).map_err(write_err)?;
        file.write_all(&body).map_err(write_err)?;
        file.sync_all().map_err(write_err)?;
        drop(file);
        fs::rename(&tmp, &self.path).map_err(write_err)?;
        // Make the rename itself durable.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(write_err)?;
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
        assert!(cp.load().expect("test setup").is_empty());
        let entry = Entry {
            dev: 1,
            ino: 2,
            fingerprint: Fingerprint::of(b"hello"),
            offset: 42,
            path: "/var/log/app.log".into(),
            seen_unix: 7,
        };
        cp.store(std::slice::from_ref(&entry)).expect("test setup");
        assert_eq!(cp.load().expect("test setup"), vec![entry]);
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
    fn fingerprint_prefix() {
        let fp = Fingerprint::of(b"abc");
        assert!(fp.matches_prefix(b"abcdef"));
        assert!(!fp.matches_prefix(b"ab"));
        assert!(!fp.matches_prefix(b"abd"));
        assert_eq!(Fingerprint::of(b"").len, 0);
    }
}

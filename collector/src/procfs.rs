//! Reads files under a procfs root (default `/proc`, like node_exporter's `--path.procfs`) and
//! hands them to the `procfs-core` parsers. All IO of the host and process sources goes through
//! here, so tests can point the root at a fixture tree.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use procfs_core::{ExplicitSystemInfo, FromBufRead, FromBufReadSI, FromRead};

/// Why a procfs read failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The file is gone: for `/proc/<pid>/...` the process exited, which is normal.
    #[error("{0}: vanished")]
    Vanished(PathBuf),
    /// Reading failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The content did not parse.
    #[error("{path}: cannot parse: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
}

impl ProcError {
    /// True when the file (usually a process) disappeared while we read it.
    pub fn is_vanished(&self) -> bool {
        matches!(self, ProcError::Vanished(_))
    }
}

/// A procfs mount with the system constants its parsers need.
#[derive(Debug, Clone)]
pub struct ProcFs {
    root: PathBuf,
    info: ExplicitSystemInfo,
}

impl ProcFs {
    /// A procfs rooted at `root`, with this machine's tick rate and page size.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let info = ExplicitSystemInfo {
            boot_time_secs: 0,
            ticks_per_second: rustix::param::clock_ticks_per_second(),
            page_size: rustix::param::page_size() as u64,
            is_little_endian: cfg!(target_endian = "little"),
        };
        Self {
            root: root.into(),
            info,
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Clock ticks per second (`USER_HZ`).
    pub fn ticks_per_second(&self) -> u64 {
        self.info.ticks_per_second
    }

    /// Memory page size in bytes.
    pub fn page_size(&self) -> u64 {
        self.info.page_size
    }

    /// Path of a file under the root.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    fn open(&self, path: &Path) -> Result<File, ProcError> {
        File::open(path).map_err(|e| io_error(path, e))
    }

    /// Parses a file with a `FromBufRead` parser.
    pub fn parse<T: FromBufRead>(&self, rel: impl AsRef<Path>) -> Result<T, ProcError> {
        let path = self.path(rel);
        let file = self.open(&path)?;
        T::from_buf_read(BufReader::new(file)).map_err(|e| parse_error(&path, e))
    }

    /// Parses a file with a parser that needs the system constants.
    pub fn parse_si<T: FromBufReadSI>(&self, rel: impl AsRef<Path>) -> Result<T, ProcError> {
        let path = self.path(rel);
        let file = self.open(&path)?;
        T::from_buf_read(BufReader::new(file), &self.info).map_err(|e| parse_error(&path, e))
    }

    /// Parses a file with a `FromRead` parser that only implements the unbuffered form.
    pub fn parse_read<T: FromRead>(&self, rel: impl AsRef<Path>) -> Result<T, ProcError> {
        let path = self.path(rel);
        let mut buf = Vec::new();
        self.read_into(&path, &mut buf)?;
        T::from_read(&buf[..]).map_err(|e| parse_error(&path, e))
    }

    /// Reads a whole file into `buf` (cleared first), reusing its allocation.
    pub fn read_into(&self, path: &Path, buf: &mut Vec<u8>) -> Result<(), ProcError> {
        buf.clear();
        let mut file = self.open(path)?;
        file.read_to_end(buf).map_err(|e| io_error(path, e))?;
        Ok(())
    }
}

fn io_error(path: &Path, e: io::Error) -> ProcError {
    // ESRCH comes back when a process exits between open and read.
    if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc_esrch()) {
        ProcError::Vanished(path.to_owned())
    } else {
        ProcError::Io {
            path: path.to_owned(),
            source: e,
        }
    }
}

fn libc_esrch() -> i32 {
    rustix::io::Errno::SRCH.raw_os_error()
}

fn parse_error(path: &Path, e: procfs_core::ProcError) -> ProcError {
    match e {
        procfs_core::ProcError::NotFound(_) => ProcError::Vanished(path.to_owned()),
        procfs_core::ProcError::Io(io, _) => io_error(path, io),
        other => ProcError::Parse {
            path: path.to_owned(),
            message: other.to_string(),
        },
    }
}

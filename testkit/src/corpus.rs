//! Fuzz corpus replay: every committed corpus file (`fuzz/corpus/<target>/`) through the same
//! target body the `cargo fuzz` target runs, so `cargo test` checks the corpora, and any
//! regression input kept there, on the stable toolchain without cargo-fuzz.

use std::path::PathBuf;

use crate::workspace;

/// Runs `body` on every file of `fuzz/corpus/<target>/` in name order; panics naming the first
/// file it panics on, or when the corpus is missing or empty.
pub fn replay(target: &str, body: fn(&[u8])) {
    let dir = workspace().join("fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    for path in files {
        let data = std::fs::read(&path).expect("corpus file");
        let result = std::panic::catch_unwind(|| body(&data));
        assert!(result.is_ok(), "{target}: {} fails", path.display());
    }
}

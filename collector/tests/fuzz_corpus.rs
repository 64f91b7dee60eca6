//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/`) through the same target
//! bodies the `cargo fuzz` targets run (`sidelight_collector::fuzzing`), so CI checks the
//! corpora, and any regression input kept there, on the stable toolchain without cargo-fuzz.

use std::path::PathBuf;

fn replay(target: &str, body: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
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

#[test]
fn log_line() {
    replay("log_line", sidelight_collector::fuzzing::log_line);
}

#[test]
fn multiline() {
    replay("multiline", sidelight_collector::fuzzing::multiline);
}

#[test]
fn otlp_protobuf() {
    replay("otlp_protobuf", sidelight_collector::fuzzing::otlp_protobuf);
}

#[test]
fn otlp_json() {
    replay("otlp_json", sidelight_collector::fuzzing::otlp_json);
}

//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/`) through the same target
//! bodies the `cargo fuzz` targets run (`sidelight_collector::fuzzing`), with the test kit's
//! `corpus::replay`, so CI checks the corpora on the stable toolchain without cargo-fuzz.

use sidelight_testkit::corpus::replay;

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

//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/`) through the same target
//! bodies the `cargo fuzz` targets run (`sidelight::fuzzing`), with the test kit's
//! `corpus::replay`, so CI checks the corpora on the stable toolchain without cargo-fuzz.

use sidelight_testkit::corpus::replay;

#[test]
fn webhooks() {
    replay("webhooks", sidelight::fuzzing::webhooks);
}

#[test]
fn slack() {
    replay("slack", sidelight::fuzzing::slack);
}

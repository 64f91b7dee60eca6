#![no_main]
// The body is `sidelight::fuzzing::slack`, shared with the corpus replay test.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sidelight::fuzzing::slack(data));

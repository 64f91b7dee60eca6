#![no_main]
// The body is `sidelight_collector::fuzzing::multiline`, shared with the corpus replay test.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sidelight_collector::fuzzing::multiline(data));

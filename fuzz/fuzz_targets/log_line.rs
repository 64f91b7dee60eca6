#![no_main]
// The body is `sidelight_collector::fuzzing::log_line`, shared with the corpus replay test.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sidelight_collector::fuzzing::log_line(data));

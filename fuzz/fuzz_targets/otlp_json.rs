#![no_main]
// The body is `sidelight_collector::fuzzing::otlp_json`, shared with the corpus replay test.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sidelight_collector::fuzzing::otlp_json(data));

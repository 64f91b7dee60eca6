//! End-to-end test crate: see `tests/` for the tests that run the real binary.

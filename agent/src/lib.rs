//! The sidelight daemon: CLI, config, lifecycle, the HTTP surface, and the feedback half.
pub mod dora;

//! Sidelight's data plane: the sources that read telemetry (host, processes, and later logs and
//! OTLP), the metric model they publish into, and the sinks that export it.
//!
//! Invariant: this crate never depends on the agent, and a source never knows which sinks exist.

pub mod export;
pub mod filesink;
pub mod host;
pub mod logs;
pub mod metrics;
pub mod pipeline;
pub mod process;
pub mod procfs;

//! Sidelight's data plane: the sources that read telemetry (host, processes, logs and OTLP
//! receivers), the metric model they publish into, span metrics, and the sinks that export it.
//!
//! Invariant: this crate never depends on the agent, and a source never knows which sinks exist.

pub mod export;
pub mod exposition;
pub mod filesink;
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
pub mod http_client;
pub mod logs;
pub mod metrics;
pub mod model;
pub mod otlp;
pub mod pipeline;
pub mod process;
pub mod procfs;
pub mod received_metrics;
pub mod resource;
pub mod spanmetrics;
pub mod wire;

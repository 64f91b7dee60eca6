//! DORA's five metrics as pure functions: event model, report computation, performance
//! tiers as data, and regression detection from telemetry. No IO and no clock here: the
//! store and `now` are supplied by the caller.

pub mod compute;
pub mod model;
pub mod regression;
pub mod table;
pub mod telemetry;
pub mod tiers;

pub use compute::{
    ALL_SERVICES, FrequencyClass, History, LeadTimes, Lineage, Links, Report, Scope, ServiceReport,
    Window, WindowError, group_members, ingest_lead_times, lineages, recovery_seconds, report,
    reports,
};
pub use model::{
    Change, DeployStatus, Deployment, DeploymentKind, Events, Incident, RegressionFinding, Sample,
    TelemetrySeries, UnixSeconds,
};
pub use table::Table;
pub use tiers::{Level, Metric, TierError, TierTable, tier};

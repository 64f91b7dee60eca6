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

/// A seeded xorshift source for the tests' generated histories: each call gives a value in
/// `0..n` (0 when `n` ≤ 0), the same sequence for the same seed.
#[cfg(test)]
pub(crate) fn test_random(seed: u64) -> impl FnMut(i64) -> i64 {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move |n: i64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        i64::try_from(state >> 33).expect("31 bits") % n.max(1)
    }
}

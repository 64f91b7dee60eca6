//! DORA input events: deployments with their changes, incidents, and regression findings.
//!
//! Every timestamp is Unix seconds (`i64`, UTC). The types derive serde so the store can
//! keep them as JSON and the HTTP API can accept and serve them unchanged; optional fields
//! default when absent so a minimal CI payload deserialises.

use serde::{Deserialize, Serialize};

/// Unix time in whole seconds, UTC.
pub type UnixSeconds = i64;

/// Outcome of a deploy as reported by CI. Only `Success` counts as a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployStatus {
    /// The new version is live.
    #[default]
    Success,
    /// The deploy did not complete; it is ignored by every DORA metric.
    Failure,
}

/// Why a deployment was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentKind {
    /// Planned delivery of new changes.
    #[default]
    Normal,
    /// An unplanned fix for a production problem; blames the deployment it fixes.
    Hotfix,
    /// A return to an earlier version; blames the deployment it undoes.
    Rollback,
}

/// A commit shipped by a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Commit id.
    pub sha: String,
    /// Author time of the commit.
    pub timestamp: UnixSeconds,
    /// For a squash merge: time of the first commit of the pull request, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pr_first_commit_at: Option<UnixSeconds>,
}

impl Change {
    /// The time lead time is measured from: the pull request's first commit when known
    /// (squash merges erase the real history), else the commit's author time.
    #[must_use]
    pub fn effective_time(&self) -> UnixSeconds {
        self.pr_first_commit_at.unwrap_or(self.timestamp)
    }
}

/// A deploy event, as posted by CI (`sidelight deploy`, `POST /api/v1/deployments`) or a webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// Delivery id; two events with the same non-empty id are one deployment.
    pub id: String,
    /// Service name.
    pub service: String,
    /// Target environment, e.g. `production`.
    pub environment: String,
    /// Version deployed; the same non-empty (service, version, environment) twice is one deployment.
    #[serde(default)]
    pub version: String,
    /// Head commit deployed.
    #[serde(default)]
    pub commit: String,
    /// Whether the deploy succeeded.
    #[serde(default)]
    pub status: DeployStatus,
    /// When the deploy began.
    pub started_at: UnixSeconds,
    /// When the new version was live; the deployment's time for every metric.
    pub finished_at: UnixSeconds,
    /// The changes this deploy carries (typically the commits since the previous deploy).
    #[serde(default)]
    pub commits: Vec<Change>,
    /// Planned, hotfix or rollback.
    #[serde(default)]
    pub kind: DeploymentKind,
    /// For a hotfix or rollback: the delivery id of the deployment it repairs. When absent,
    /// the service's previous deployment in the same environment is the one repaired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixes_deployment: Option<String>,
    /// Ids of the incidents this deployment resolves (counts as rework if one was open).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolves_incidents: Vec<String>,
}

/// A production incident, from the API, Alertmanager, or a chat command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    /// Incident id.
    pub id: String,
    /// Affected service.
    pub service: String,
    /// Affected environment.
    pub environment: String,
    /// When the incident began.
    pub started_at: UnixSeconds,
    /// When it was resolved; `None` while open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<UnixSeconds>,
    /// Delivery id of the deployment that caused it, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_id: Option<String>,
    /// Commit that caused it, when known; blames the deployment that first shipped it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Delivery id of the deployment that resolved it, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_by_deployment: Option<String>,
}

/// One point of a service's span-metric telemetry, used for regression detection.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Sample time.
    pub timestamp: UnixSeconds,
    /// Errored calls / calls over the sample's interval, in `0.0..=1.0`.
    pub error_ratio: f64,
    /// 95th percentile latency over the sample's interval, in seconds.
    pub p95_latency_seconds: f64,
}

/// The telemetry series of one service in one environment.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TelemetrySeries {
    /// Service name.
    pub service: String,
    /// Environment.
    pub environment: String,
    /// Samples, in any order.
    pub samples: Vec<Sample>,
}

/// A telemetry-detected regression after a deployment (see `dora::regression`): the
/// deployment counts as failed and the finding acts as an incident for recovery time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegressionFinding {
    /// Delivery id of the deployment blamed.
    pub deployment_id: String,
    /// Service.
    pub service: String,
    /// Environment.
    pub environment: String,
    /// When the regression began (first breaching sample).
    pub started_at: UnixSeconds,
    /// When the service was back within thresholds; `None` while it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<UnixSeconds>,
}

/// Everything the DORA computation reads, in any order and with duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Events {
    /// Deploy events.
    #[serde(default)]
    pub deployments: Vec<Deployment>,
    /// Incidents.
    #[serde(default)]
    pub incidents: Vec<Incident>,
    /// Regression findings from telemetry.
    #[serde(default)]
    pub regressions: Vec<RegressionFinding>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_deployment_json_defaults() {
        let d: Deployment = serde_json::from_str(
            r#"{"id":"d1","service":"api","environment":"production","started_at":10,"finished_at":20}"#,
        )
        .expect("valid json");
        assert_eq!(d.status, DeployStatus::Success);
        assert_eq!(d.kind, DeploymentKind::Normal);
        assert!(d.commits.is_empty());
        assert_eq!(d.fixes_deployment, None);
    }

    #[test]
    fn enums_are_snake_case_and_round_trip() {
        let d = Deployment {
            id: "d2".into(),
            service: "api".into(),
            environment: "production".into(),
            version: "1.2.3".into(),
            commit: "abc".into(),
            status: DeployStatus::Failure,
            started_at: 1,
            finished_at: 2,
            commits: vec![Change {
                sha: "abc".into(),
                timestamp: 0,
                pr_first_commit_at: Some(-5),
            }],
            kind: DeploymentKind::Rollback,
            fixes_deployment: Some("d1".into()),
            resolves_incidents: vec!["i1".into()],
        };
        let json = serde_json::to_string(&d).expect("serialise");
        assert!(json.contains(r#""status":"failure""#), "{json}");
        assert!(json.contains(r#""kind":"rollback""#), "{json}");
        let back: Deployment = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(back, d);
    }

    #[test]
    fn effective_time_prefers_pr_first_commit() {
        let cases = [(100, None, 100), (100, Some(40), 40), (100, Some(130), 130)];
        for (timestamp, pr, want) in cases {
            let c = Change {
                sha: "s".into(),
                timestamp,
                pr_first_commit_at: pr,
            };
            assert_eq!(c.effective_time(), want, "{c:?}");
        }
    }
}

//! Change-failure detection from telemetry, as pure functions: compare a service's error
//! ratio and p95 latency after a deployment with its pre-deploy baseline; a breach
//! sustained for the configured `for` duration marks the deployment failed and starts an
//! incident, which resolves once the service is back within thresholds for that long.
//!
//! # Rules
//!
//! * Samples with a non-finite value are ignored; the rest are sorted by time.
//! * **Baseline**: samples in `[started_at - baseline_seconds, started_at)`; at least
//!   `min_baseline_samples` of them, else no verdict. Baseline error ratio and p95 are the
//!   medians of those samples (robust to a spike just before the deploy).
//! * **Breach** of a sample: error ratio `> base + error_ratio_delta` *and*
//!   `> base × error_ratio_factor`; or p95 `> base × latency_factor` *and*
//!   `> base + latency_delta_seconds` (the absolute deltas keep tiny baselines from
//!   turning noise into regressions).
//! * **Onset**: a run of consecutive breaching samples at or after `finished_at` whose
//!   first sample is before `finished_at + observe_seconds` and before the next
//!   deployment's start (later breaches belong to that deployment). The run is a
//!   regression once its last sample is at least `for_seconds` after its first — a shorter
//!   blip followed by a healthy sample does not count. The incident starts at the run's
//!   first sample (`started_at`); `confirmed_at` is when `for` was met.
//! * **Recovery**: after confirmation, the first run of consecutive healthy samples lasting
//!   `for_seconds` resolves it, at the run's first sample (when the service was back).

use serde::{Deserialize, Serialize};

use super::model::{
    DeployStatus, Deployment, RegressionFinding, Sample, TelemetrySeries, UnixSeconds,
};

/// Thresholds of the detector. Defaults: 1 h baseline of ≥ 3 samples, error ratio
/// +0.01 and ×2, p95 ×1.5 and +50 ms, sustained 5 min, onsets looked for during 1 h.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegressionConfig {
    /// Length of the pre-deploy baseline window, seconds.
    pub baseline_seconds: i64,
    /// Fewest baseline samples needed for a verdict.
    pub min_baseline_samples: usize,
    /// Absolute increase of the error ratio over baseline needed for a breach.
    pub error_ratio_delta: f64,
    /// Factor over the baseline error ratio needed for a breach.
    pub error_ratio_factor: f64,
    /// Factor over the baseline p95 needed for a breach.
    pub latency_factor: f64,
    /// Absolute increase of p95 over baseline needed for a breach, seconds.
    pub latency_delta_seconds: f64,
    /// How long a breach (and a recovery) must be sustained, seconds (`for`).
    pub for_seconds: i64,
    /// How long after the deployment an onset is attributed to it, seconds.
    pub observe_seconds: i64,
}

impl Default for RegressionConfig {
    fn default() -> Self {
        Self {
            baseline_seconds: 3600,
            min_baseline_samples: 3,
            error_ratio_delta: 0.01,
            error_ratio_factor: 2.0,
            latency_factor: 1.5,
            latency_delta_seconds: 0.05,
            for_seconds: 300,
            observe_seconds: 3600,
        }
    }
}

/// Errors from an invalid [`RegressionConfig`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegressionError {
    /// A duration is not positive (`for_seconds` may be 0).
    #[error("{field} must be positive, got {value}")]
    NotPositive {
        /// The field.
        field: &'static str,
        /// Its value.
        value: i64,
    },
    /// A threshold is negative or not finite, or a factor is below 1.
    #[error("{field} must be a finite number (factors >= 1, deltas >= 0), got {value}")]
    BadThreshold {
        /// The field.
        field: &'static str,
        /// Its value.
        value: f64,
    },
}

impl RegressionConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// The first invalid field.
    pub fn validate(&self) -> Result<(), RegressionError> {
        for (field, value, min) in [
            ("baseline_seconds", self.baseline_seconds, 1),
            ("observe_seconds", self.observe_seconds, 1),
            ("for_seconds", self.for_seconds, 0),
        ] {
            if value < min {
                return Err(RegressionError::NotPositive { field, value });
            }
        }
        for (field, value, min) in [
            ("error_ratio_delta", self.error_ratio_delta, 0.0),
            ("error_ratio_factor", self.error_ratio_factor, 1.0),
            ("latency_factor", self.latency_factor, 1.0),
            ("latency_delta_seconds", self.latency_delta_seconds, 0.0),
        ] {
            if !value.is_finite() || value < min {
                return Err(RegressionError::BadThreshold { field, value });
            }
        }
        Ok(())
    }
}

/// The pre-deploy reference.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Median error ratio.
    pub error_ratio: f64,
    /// Median p95 latency, seconds.
    pub p95_latency_seconds: f64,
    /// Samples it was computed from.
    pub samples: usize,
}

/// Which signal regressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// Error ratio only.
    ErrorRatio,
    /// p95 latency only.
    Latency,
    /// Both, at some point of the regression.
    Both,
}

/// A confirmed regression.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Regression {
    /// First breaching sample: the incident's start.
    pub started_at: UnixSeconds,
    /// When the breach had lasted `for_seconds`.
    pub confirmed_at: UnixSeconds,
    /// First sample of the sustained healthy run; `None` while not recovered.
    pub resolved_at: Option<UnixSeconds>,
    /// What regressed.
    pub cause: Cause,
    /// Highest error ratio seen while regressed.
    pub peak_error_ratio: f64,
    /// Highest p95 seen while regressed, seconds.
    pub peak_p95_latency_seconds: f64,
}

/// The detector's answer for one deployment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Too few pre-deploy samples to judge.
    InsufficientBaseline {
        /// Samples found in the baseline window.
        samples: usize,
    },
    /// No breach under way and none confirmed.
    Healthy {
        /// The reference used.
        baseline: Baseline,
    },
    /// A breach is under way but not yet sustained for `for_seconds`; ask again later.
    Pending {
        /// The reference used.
        baseline: Baseline,
        /// First breaching sample of the run.
        since: UnixSeconds,
    },
    /// The deployment caused a regression.
    Regressed {
        /// The reference used.
        baseline: Baseline,
        /// The regression.
        regression: Regression,
    },
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The breach kinds of one sample: (error ratio, latency).
fn breach(s: &Sample, base: &Baseline, cfg: &RegressionConfig) -> (bool, bool) {
    let errors = s.error_ratio > base.error_ratio + cfg.error_ratio_delta
        && s.error_ratio > base.error_ratio * cfg.error_ratio_factor;
    let latency = s.p95_latency_seconds > base.p95_latency_seconds * cfg.latency_factor
        && s.p95_latency_seconds > base.p95_latency_seconds + cfg.latency_delta_seconds;
    (errors, latency)
}

/// Judges one deployment (`started_at`, `finished_at`) against a service's `samples`
/// (any order). `next_deploy_at` is the start of the service's next deployment, if any.
///
/// # Errors
/// An invalid `cfg`.
pub fn detect(
    started_at: UnixSeconds,
    finished_at: UnixSeconds,
    next_deploy_at: Option<UnixSeconds>,
    samples: &[Sample],
    cfg: &RegressionConfig,
) -> Result<Verdict, RegressionError> {
    cfg.validate()?;
    let mut sorted: Vec<Sample> = samples
        .iter()
        .filter(|s| s.error_ratio.is_finite() && s.p95_latency_seconds.is_finite())
        .copied()
        .collect();
    sorted.sort_by_key(|s| s.timestamp);

    let from = started_at.saturating_sub(cfg.baseline_seconds);
    let reference: Vec<&Sample> = sorted
        .iter()
        .filter(|s| s.timestamp >= from && s.timestamp < started_at)
        .collect();
    if reference.len() < cfg.min_baseline_samples || reference.is_empty() {
        return Ok(Verdict::InsufficientBaseline {
            samples: reference.len(),
        });
    }
    let mut errors: Vec<f64> = reference.iter().map(|s| s.error_ratio).collect();
    let mut p95s: Vec<f64> = reference.iter().map(|s| s.p95_latency_seconds).collect();
    let baseline = Baseline {
        error_ratio: median(&mut errors),
        p95_latency_seconds: median(&mut p95s),
        samples: reference.len(),
    };

    let onset_limit = finished_at
        .saturating_add(cfg.observe_seconds)
        .min(next_deploy_at.unwrap_or(i64::MAX));
    let post = &sorted[sorted.partition_point(|s| s.timestamp < finished_at)..];

    // Find the first sustained breach run.
    let mut run: Option<usize> = None;
    let mut confirmed: Option<usize> = None;
    for (k, s) in post.iter().enumerate() {
        let (e, l) = breach(s, &baseline, cfg);
        if e || l {
            let first = match run {
                Some(first) => first,
                None if s.timestamp < onset_limit => {
                    run = Some(k);
                    k
                }
                None => break,
            };
            if s.timestamp - post[first].timestamp >= cfg.for_seconds {
                confirmed = Some(k);
                break;
            }
        } else {
            run = None;
            if s.timestamp >= onset_limit {
                break;
            }
        }
    }
    let (Some(first), Some(at)) = (run, confirmed) else {
        return Ok(match run {
            Some(first) => Verdict::Pending {
                baseline,
                since: post[first].timestamp,
            },
            None => Verdict::Healthy { baseline },
        });
    };

    // Follow the regression until a sustained healthy run.
    let (mut any_errors, mut any_latency) = (false, false);
    let (mut peak_error_ratio, mut peak_p95) = (f64::MIN, f64::MIN);
    let mut note = |s: &Sample, e: bool, l: bool| {
        any_errors |= e;
        any_latency |= l;
        peak_error_ratio = peak_error_ratio.max(s.error_ratio);
        peak_p95 = peak_p95.max(s.p95_latency_seconds);
    };
    for s in &post[first..=at] {
        let (e, l) = breach(s, &baseline, cfg);
        note(s, e, l);
    }
    let mut healthy: Option<UnixSeconds> = None;
    let mut resolved_at = None;
    for s in &post[at + 1..] {
        let (e, l) = breach(s, &baseline, cfg);
        if e || l {
            healthy = None;
            note(s, e, l);
        } else {
            let since = *healthy.get_or_insert(s.timestamp);
            if s.timestamp - since >= cfg.for_seconds {
                resolved_at = Some(since);
                break;
            }
        }
    }
    let cause = match (any_errors, any_latency) {
        (true, true) => Cause::Both,
        (false, true) => Cause::Latency,
        _ => Cause::ErrorRatio,
    };
    Ok(Verdict::Regressed {
        baseline,
        regression: Regression {
            started_at: post[first].timestamp,
            confirmed_at: post[at].timestamp,
            resolved_at,
            cause,
            peak_error_ratio,
            peak_p95_latency_seconds: peak_p95,
        },
    })
}

/// The finding to store for a deployment that regressed.
#[must_use]
pub fn finding(deployment: &Deployment, regression: &Regression) -> RegressionFinding {
    RegressionFinding {
        deployment_id: deployment.id.clone(),
        service: deployment.service.clone(),
        environment: deployment.environment.clone(),
        started_at: regression.started_at,
        resolved_at: regression.resolved_at,
    }
}

/// Runs [`detect`] for every successful deployment that has a series of the same service
/// and environment, each bounded by the next deployment's start, and returns the findings
/// in deployment order.
///
/// # Errors
/// An invalid `cfg`.
pub fn detect_all(
    deployments: &[Deployment],
    series: &[TelemetrySeries],
    cfg: &RegressionConfig,
) -> Result<Vec<RegressionFinding>, RegressionError> {
    cfg.validate()?;
    let mut findings = Vec::new();
    for s in series {
        let mut deps: Vec<&Deployment> = deployments
            .iter()
            .filter(|d| {
                d.status == DeployStatus::Success
                    && d.service == s.service
                    && d.environment == s.environment
            })
            .collect();
        deps.sort_by_key(|d| (d.finished_at, d.started_at));
        for (k, d) in deps.iter().enumerate() {
            let next = deps.get(k + 1).map(|n| n.started_at);
            if let Verdict::Regressed { regression, .. } =
                detect(d.started_at, d.finished_at, next, &s.samples, cfg)?
            {
                findings.push(finding(d, &regression));
            }
        }
    }
    findings.sort_by_key(|f| f.started_at);
    Ok(findings)
}

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

/// When a regressed service is back: the first sample of the first run of consecutive
/// healthy samples after `after` (the confirmation) that lasts `for_seconds` — the rule
/// [`detect`] applies after a confirmation, for callers that keep the [`Baseline`] of a
/// regression while the samples it was computed from are gone. `None` while not recovered.
#[must_use]
pub fn recovered(
    baseline: &Baseline,
    after: UnixSeconds,
    samples: &[Sample],
    cfg: &RegressionConfig,
) -> Option<UnixSeconds> {
    let mut sorted: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.timestamp > after && s.error_ratio.is_finite() && s.p95_latency_seconds.is_finite()
        })
        .collect();
    sorted.sort_by_key(|s| s.timestamp);
    let mut healthy: Option<UnixSeconds> = None;
    for s in sorted {
        let (e, l) = breach(s, baseline, cfg);
        if e || l {
            healthy = None;
        } else {
            let since = *healthy.get_or_insert(s.timestamp);
            if s.timestamp - since >= cfg.for_seconds {
                return Some(since);
            }
        }
    }
    None
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dora::model::DeploymentKind;

    /// Deploy start and finish.
    const S: i64 = 10_000;
    const F: i64 = 10_060;
    const OK: (f64, f64) = (0.01, 0.2);
    const ERRORS: (f64, f64) = (0.10, 0.2);
    const SLOW: (f64, f64) = (0.01, 0.5);

    fn sample(timestamp: i64, (error_ratio, p95_latency_seconds): (f64, f64)) -> Sample {
        Sample {
            timestamp,
            error_ratio,
            p95_latency_seconds,
        }
    }

    /// One sample a minute in `from..=to`.
    fn every_minute(from: i64, to: i64, values: (f64, f64)) -> Vec<Sample> {
        (from..=to).step_by(60).map(|t| sample(t, values)).collect()
    }

    /// Baseline: medians 0.01 and 0.2, so a breach is error ratio > 0.02 or p95 > 0.3.
    fn baseline() -> Vec<Sample> {
        vec![
            sample(S - 3000, (0.01, 0.2)),
            sample(S - 2000, (0.02, 0.3)),
            sample(S - 1000, (0.01, 0.2)),
        ]
    }

    fn with_baseline(post: &[Vec<Sample>]) -> Vec<Sample> {
        let mut all = baseline();
        all.extend(post.iter().flatten().copied());
        all
    }

    #[derive(Debug, PartialEq)]
    enum Want {
        Insufficient(usize),
        Healthy,
        Pending(i64),
        Regressed {
            started: i64,
            confirmed: i64,
            resolved: Option<i64>,
            cause: Cause,
        },
    }

    fn summary(v: Verdict) -> Want {
        match v {
            Verdict::InsufficientBaseline { samples } => Want::Insufficient(samples),
            Verdict::Healthy { .. } => Want::Healthy,
            Verdict::Pending { since, .. } => Want::Pending(since),
            Verdict::Regressed { regression: r, .. } => Want::Regressed {
                started: r.started_at,
                confirmed: r.confirmed_at,
                resolved: r.resolved_at,
                cause: r.cause,
            },
        }
    }

    #[test]
    fn detection_cases() {
        let cfg = RegressionConfig::default();
        let cases: Vec<(&str, Option<i64>, Vec<Sample>, Want)> = vec![
            (
                "sustained error regression, then recovery",
                None,
                with_baseline(&[
                    every_minute(F, F, OK),
                    every_minute(F + 60, F + 420, ERRORS),
                    every_minute(F + 480, F + 840, OK),
                ]),
                // Breach from F+60, sustained 300 s at F+360; healthy from F+480,
                // sustained at F+780 → resolved at F+480.
                Want::Regressed {
                    started: F + 60,
                    confirmed: F + 360,
                    resolved: Some(F + 480),
                    cause: Cause::ErrorRatio,
                },
            ),
            (
                "a short blip does not count",
                None,
                with_baseline(&[
                    every_minute(F + 60, F + 240, ERRORS),
                    every_minute(F + 300, F + 1200, OK),
                ]),
                Want::Healthy,
            ),
            (
                "a breach lasting exactly `for` counts",
                None,
                with_baseline(&[
                    every_minute(F + 60, F + 360, ERRORS),
                    every_minute(F + 420, F + 1200, OK),
                ]),
                Want::Regressed {
                    started: F + 60,
                    confirmed: F + 360,
                    resolved: Some(F + 420),
                    cause: Cause::ErrorRatio,
                },
            ),
            (
                "latency regression, never recovered",
                None,
                with_baseline(&[every_minute(F, F + 900, SLOW)]),
                Want::Regressed {
                    started: F,
                    confirmed: F + 300,
                    resolved: None,
                    cause: Cause::Latency,
                },
            ),
            (
                "both signals over the regression",
                None,
                with_baseline(&[
                    every_minute(F, F + 120, ERRORS),
                    every_minute(F + 180, F + 600, SLOW),
                    every_minute(F + 660, F + 960, OK),
                ]),
                Want::Regressed {
                    started: F,
                    confirmed: F + 300,
                    resolved: Some(F + 660),
                    cause: Cause::Both,
                },
            ),
            (
                "a healthy blip during the regression does not resolve it",
                None,
                with_baseline(&[
                    every_minute(F, F + 300, ERRORS),
                    every_minute(F + 360, F + 360, OK),
                    every_minute(F + 420, F + 600, ERRORS),
                    every_minute(F + 660, F + 1200, OK),
                ]),
                Want::Regressed {
                    started: F,
                    confirmed: F + 300,
                    resolved: Some(F + 660),
                    cause: Cause::ErrorRatio,
                },
            ),
            (
                "p95 exactly at baseline x factor is not a breach",
                None,
                with_baseline(&[every_minute(F, F + 900, (0.01, 0.3))]),
                Want::Healthy,
            ),
            (
                "breach still under way but not yet sustained",
                None,
                with_baseline(&[every_minute(F + 60, F + 180, ERRORS)]),
                Want::Pending(F + 60),
            ),
            (
                "onset after the observation window belongs to nobody",
                None,
                with_baseline(&[
                    every_minute(F, F + 3540, OK),
                    every_minute(F + 3600, F + 4200, ERRORS),
                ]),
                Want::Healthy,
            ),
            (
                "onset after the next deployment started belongs to it",
                Some(F + 200),
                with_baseline(&[
                    every_minute(F, F + 180, OK),
                    every_minute(F + 240, F + 900, ERRORS),
                ]),
                Want::Healthy,
            ),
            (
                "onset before the next deployment is confirmed after it",
                Some(F + 200),
                with_baseline(&[every_minute(F + 120, F + 900, ERRORS)]),
                Want::Regressed {
                    started: F + 120,
                    confirmed: F + 420,
                    resolved: None,
                    cause: Cause::ErrorRatio,
                },
            ),
            (
                "errors during the rollout (before finish) are not judged",
                None,
                with_baseline(&[every_minute(S, F - 1, ERRORS), every_minute(F, F + 900, OK)]),
                Want::Healthy,
            ),
            (
                "too few baseline samples",
                None,
                {
                    let mut s = every_minute(F, F + 900, ERRORS);
                    s.push(sample(S - 60, OK));
                    s.push(sample(S - 120, OK));
                    // Older than the baseline window: ignored.
                    s.push(sample(S - 3601, OK));
                    s
                },
                Want::Insufficient(2),
            ),
            (
                "samples out of order and non-finite values are handled",
                None,
                {
                    let mut s = with_baseline(&[
                        every_minute(F + 60, F + 420, ERRORS),
                        every_minute(F + 480, F + 840, OK),
                    ]);
                    s.reverse();
                    s.push(sample(F + 500, (f64::NAN, 0.2)));
                    s.push(sample(F + 510, (0.5, f64::INFINITY)));
                    s
                },
                Want::Regressed {
                    started: F + 60,
                    confirmed: F + 360,
                    resolved: Some(F + 480),
                    cause: Cause::ErrorRatio,
                },
            ),
        ];
        for (name, next, samples, want) in cases {
            let got = detect(S, F, next, &samples, &cfg).expect("valid config");
            assert_eq!(summary(got), want, "{name}");
        }
    }

    #[test]
    fn recovered_agrees_with_detect() {
        let cfg = RegressionConfig::default();
        let cases = [
            with_baseline(&[
                every_minute(F, F, OK),
                every_minute(F + 60, F + 420, ERRORS),
                every_minute(F + 480, F + 840, OK),
            ]),
            with_baseline(&[
                every_minute(F, F + 300, ERRORS),
                every_minute(F + 360, F + 360, OK),
                every_minute(F + 420, F + 600, ERRORS),
                every_minute(F + 660, F + 1200, OK),
            ]),
            with_baseline(&[every_minute(F, F + 900, SLOW)]),
            with_baseline(&[
                every_minute(F, F + 400, ERRORS),
                every_minute(F + 460, F + 700, OK),
            ]),
        ];
        for samples in cases {
            let Verdict::Regressed {
                baseline,
                regression,
            } = detect(S, F, None, &samples, &cfg).expect("valid")
            else {
                panic!("expected a regression");
            };
            // From the confirmation on, with the baseline samples gone.
            let later: Vec<Sample> = samples
                .iter()
                .filter(|s| s.timestamp >= regression.confirmed_at)
                .copied()
                .collect();
            assert_eq!(
                recovered(&baseline, regression.confirmed_at, &later, &cfg),
                regression.resolved_at,
                "{regression:?}"
            );
        }
    }

    #[test]
    fn baseline_and_peaks() {
        let samples = with_baseline(&[
            every_minute(F, F + 120, (0.30, 0.2)),
            every_minute(F + 180, F + 300, (0.05, 0.9)),
            every_minute(F + 360, F + 700, OK),
        ]);
        let v = detect(S, F, None, &samples, &RegressionConfig::default()).expect("valid");
        let Verdict::Regressed {
            baseline,
            regression,
        } = v
        else {
            panic!("expected a regression, got {v:?}");
        };
        assert_eq!(
            baseline,
            Baseline {
                error_ratio: 0.01,
                p95_latency_seconds: 0.2,
                samples: 3
            }
        );
        assert_eq!(regression.peak_error_ratio, 0.30);
        assert_eq!(regression.peak_p95_latency_seconds, 0.9);
        assert_eq!(regression.resolved_at, Some(F + 360));
    }

    #[test]
    fn breach_needs_delta_and_factor() {
        let cfg = RegressionConfig::default();
        let base = |error_ratio, p95_latency_seconds| Baseline {
            error_ratio,
            p95_latency_seconds,
            samples: 3,
        };
        let cases = [
            // High baseline: +0.015 beats the delta but not ×2.
            (base(0.10, 0.2), (0.115, 0.2), (false, false)),
            (base(0.10, 0.2), (0.21, 0.2), (true, false)),
            // Zero baseline: ×2 of 0 is nothing, the absolute delta decides.
            (base(0.0, 0.2), (0.005, 0.2), (false, false)),
            (base(0.0, 0.2), (0.011, 0.2), (true, false)),
            // Tiny latency: ×1.5 is not enough without +50 ms.
            (base(0.0, 0.01), (0.0, 0.05), (false, false)),
            (base(0.0, 0.01), (0.0, 0.061), (false, true)),
        ];
        for (b, values, want) in cases {
            assert_eq!(
                breach(&sample(0, values), &b, &cfg),
                want,
                "{b:?} {values:?}"
            );
        }
    }

    #[test]
    fn config_validation() {
        assert_eq!(RegressionConfig::default().validate(), Ok(()));
        let zero_for = RegressionConfig {
            for_seconds: 0,
            ..RegressionConfig::default()
        };
        assert_eq!(zero_for.validate(), Ok(()));
        let cases = [
            RegressionConfig {
                baseline_seconds: 0,
                ..RegressionConfig::default()
            },
            RegressionConfig {
                for_seconds: -1,
                ..RegressionConfig::default()
            },
            RegressionConfig {
                latency_factor: 0.5,
                ..RegressionConfig::default()
            },
            RegressionConfig {
                error_ratio_delta: f64::NAN,
                ..RegressionConfig::default()
            },
        ];
        for cfg in cases {
            assert!(cfg.validate().is_err(), "{cfg:?}");
            assert!(detect(S, F, None, &baseline(), &cfg).is_err());
        }
        let parsed: RegressionConfig =
            serde_json::from_str(r#"{"for_seconds": 600}"#).expect("partial config");
        assert_eq!(parsed.for_seconds, 600);
        assert_eq!(parsed.baseline_seconds, 3600);
        assert!(serde_json::from_str::<RegressionConfig>(r#"{"for": 600}"#).is_err());
    }

    #[test]
    fn detect_all_blames_the_right_deployment() {
        let deployment = |id: &str, started_at: i64, finished_at: i64| Deployment {
            id: id.into(),
            service: "api".into(),
            environment: "production".into(),
            version: id.into(),
            commit: String::new(),
            status: DeployStatus::Success,
            started_at,
            finished_at,
            commits: Vec::new(),
            kind: DeploymentKind::Normal,
            fixes_deployment: None,
            resolves_incidents: Vec::new(),
        };
        // "good" at S..F is healthy; "bad" at F+1000 breaks errors until it is rolled
        // forward; both judged on the same series.
        let bad_at = F + 1000;
        let mut failed = deployment("failed", bad_at + 100, bad_at + 200);
        failed.status = DeployStatus::Failure;
        let mut other_env = deployment("staging", S, F);
        other_env.environment = "staging".into();
        let deployments = vec![
            deployment("bad", bad_at - 60, bad_at),
            deployment("good", S, F),
            failed,
            other_env,
        ];
        let series = vec![TelemetrySeries {
            service: "api".into(),
            environment: "production".into(),
            samples: with_baseline(&[
                every_minute(F, bad_at - 60, OK),
                every_minute(bad_at + 60, bad_at + 600, ERRORS),
                every_minute(bad_at + 660, bad_at + 1200, OK),
            ]),
        }];
        let findings =
            detect_all(&deployments, &series, &RegressionConfig::default()).expect("valid");
        assert_eq!(
            findings,
            vec![RegressionFinding {
                deployment_id: "bad".into(),
                service: "api".into(),
                environment: "production".into(),
                started_at: bad_at + 60,
                resolved_at: Some(bad_at + 660),
            }]
        );
    }
}

//! Change failures detected from telemetry, wired into the hub: the `dora.regression` section, the
//! detector's self-metrics, and the task that samples span metrics (RED per `service_name`)
//! every `interval` into the pure [`Tracker`](crate::dora::telemetry::Tracker), judges each
//! watched deployment with the pure detector, and opens / resolves the resulting incidents
//! through [`Hub::record_incident`] — the path the API and the webhooks use (store,
//! idempotent). A deployment reaches the tracker from [`Hub::record`] when it is new,
//! successful and in `dora.environment`.
//!
//! Service names: a DORA deployment of `service` is judged on the span metrics whose
//! `service_name` (the resource's `service.name`) is `dora.regression.services[service]`,
//! or `service` itself when the map does not name it.
//!
//! State is in memory: after a restart the rings start empty, so deployments made before it
//! get `insufficient_baseline`, and an incident the detector opened before it is no longer
//! resolved by the detector (resolve it through `POST /api/v1/incidents`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use sidelight_collector::spanmetrics::SpanMetrics;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Hub;
use super::config::DoraConfig;
use crate::config::common::{ConfigError, duration};
use crate::dora::regression::{RegressionConfig, RegressionError};
use crate::dora::telemetry::{Action, Conclusion, SamplingConfig, Tracker, incident_id};
use crate::dora::{Deployment, Incident, UnixSeconds};
use crate::store::IncidentChange;

// ---------------------------------------------------------------------------------------------
// The section's shape.

/// `dora.regression` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RawRegression {
    enabled: bool,
    #[serde(with = "duration")]
    interval: Duration,
    #[serde(with = "duration")]
    rate_window: Duration,
    min_calls: u64,
    max_services: usize,
    #[serde(with = "duration")]
    baseline: Duration,
    min_baseline_samples: usize,
    error_ratio_delta: f64,
    error_ratio_factor: f64,
    latency_factor: f64,
    #[serde(with = "duration")]
    latency_delta: Duration,
    #[serde(rename = "for", with = "duration")]
    sustained: Duration,
    #[serde(with = "duration")]
    observe: Duration,
    services: BTreeMap<String, String>,
}

impl Default for RawRegression {
    fn default() -> Self {
        let d = RegressionConfig::default();
        let s = SamplingConfig::default();
        let secs = |v: i64| Duration::from_secs(u64::try_from(v).unwrap_or(0));
        Self {
            enabled: true,
            interval: secs(s.interval_seconds),
            rate_window: secs(s.rate_window_seconds),
            min_calls: s.min_calls,
            max_services: s.max_services,
            baseline: secs(d.baseline_seconds),
            min_baseline_samples: d.min_baseline_samples,
            error_ratio_delta: d.error_ratio_delta,
            error_ratio_factor: d.error_ratio_factor,
            latency_factor: d.latency_factor,
            latency_delta: Duration::from_secs_f64(d.latency_delta_seconds),
            sustained: secs(d.for_seconds),
            observe: secs(d.observe_seconds),
            services: BTreeMap::new(),
        }
    }
}

/// The validated `dora.regression` section.
#[derive(Debug, Clone, PartialEq)]
pub struct RegressionSettings {
    /// Whether deployments are judged from span metrics (needs `otlp.spanmetrics`).
    pub enabled: bool,
    /// Sampling period.
    pub interval: Duration,
    /// Sampling, in whole seconds.
    pub sampling: SamplingConfig,
    /// The detector's thresholds and windows.
    pub detector: RegressionConfig,
    /// DORA service → span-metric `service_name`, where they differ.
    pub services: BTreeMap<String, String>,
}

impl Default for RegressionSettings {
    fn default() -> Self {
        validate(RawRegression::default(), &mut Vec::new())
    }
}

impl RegressionSettings {
    /// The span-metric `service_name` a DORA service is judged on.
    pub fn telemetry_service<'a>(&'a self, service: &'a str) -> &'a str {
        self.services.get(service).map_or(service, String::as_str)
    }
}

fn whole_seconds(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Validates `dora.regression`, adding every problem to `errors`.
pub(crate) fn validate(raw: RawRegression, errors: &mut Vec<ConfigError>) -> RegressionSettings {
    let mut err = |key: &str, message: String| {
        errors.push(ConfigError {
            path: format!("dora.regression.{key}"),
            message,
        })
    };
    if raw.interval < Duration::from_secs(1) {
        err("interval", "must be at least 1s".into());
    }
    if raw.rate_window < raw.interval {
        err("rate_window", "must be at least the interval".into());
    }
    if raw.max_services == 0 {
        err("max_services", "must be at least 1".into());
    }
    if raw.min_baseline_samples == 0 {
        err("min_baseline_samples", "must be at least 1".into());
    }
    let interval = whole_seconds(raw.interval).max(1);
    let detector = RegressionConfig {
        baseline_seconds: whole_seconds(raw.baseline),
        min_baseline_samples: raw.min_baseline_samples.max(1),
        error_ratio_delta: raw.error_ratio_delta,
        error_ratio_factor: raw.error_ratio_factor,
        latency_factor: raw.latency_factor,
        latency_delta_seconds: raw.latency_delta.as_secs_f64(),
        for_seconds: whole_seconds(raw.sustained),
        observe_seconds: whole_seconds(raw.observe),
    };
    if let Err(e) = detector.validate() {
        let field = match &e {
            RegressionError::NotPositive { field, .. }
            | RegressionError::BadThreshold { field, .. } => *field,
        };
        let key = match field {
            "baseline_seconds" => "baseline",
            "observe_seconds" => "observe",
            "for_seconds" => "for",
            "latency_delta_seconds" => "latency_delta",
            other => other,
        };
        err(key, e.to_string());
    } else if detector.baseline_seconds / interval + 1 < raw.min_baseline_samples as i64 {
        err(
            "baseline",
            format!(
                "holds at most {} samples at interval {}s, fewer than min_baseline_samples {}",
                detector.baseline_seconds / interval + 1,
                interval,
                raw.min_baseline_samples
            ),
        );
    }
    for (from, to) in &raw.services {
        if from.trim().is_empty() || to.trim().is_empty() {
            err(
                &format!("services.{from}"),
                "service names must not be empty".into(),
            );
        }
    }
    RegressionSettings {
        enabled: raw.enabled,
        interval: Duration::from_secs(u64::try_from(interval).unwrap_or(1)),
        sampling: SamplingConfig {
            interval_seconds: interval,
            rate_window_seconds: whole_seconds(raw.rate_window).max(interval),
            min_calls: raw.min_calls,
            max_services: raw.max_services.max(1),
        },
        detector,
        services: raw.services,
    }
}

// ---------------------------------------------------------------------------------------------
// The running detector.

type VerdictLabel = [(&'static str, &'static str); 1];

/// The detector's self-metrics.
#[derive(Debug, Clone, Default)]
struct DetectorMetrics {
    services: Gauge,
    unsampled: Gauge,
    samples: Gauge,
    watched: Gauge,
    verdicts: Family<VerdictLabel, Counter>,
    recoveries: Counter,
    incident_errors: Counter,
    watches_dropped: Counter,
}

/// The detector's state, owned by the hub.
#[derive(Debug, Default)]
pub struct Detector {
    tracker: Mutex<Tracker>,
    /// Set once the sampling task runs (span metrics exist and the hub is on).
    active: AtomicBool,
    metrics: DetectorMetrics,
}

impl Detector {
    /// Registers the self-metrics.
    pub fn register(&self, registry: &mut Registry) {
        let m = &self.metrics;
        registry.register(
            "sidelight_dora_regression_services",
            "Services whose span metrics the change-failure detector samples",
            m.services.clone(),
        );
        registry.register(
            "sidelight_dora_regression_services_unsampled",
            "Span-metric services not sampled because dora.regression.max_services was reached",
            m.unsampled.clone(),
        );
        registry.register(
            "sidelight_dora_regression_samples",
            "Error-ratio / p95 samples held by the change-failure detector, over every service",
            m.samples.clone(),
        );
        registry.register(
            "sidelight_dora_regression_watched_deployments",
            "Deployments being judged, or regressed and not yet recovered",
            m.watched.clone(),
        );
        registry.register(
            "sidelight_dora_regression_verdicts",
            "Deployments judged by the change-failure detector, by verdict (regressed = detections)",
            m.verdicts.clone(),
        );
        registry.register(
            "sidelight_dora_regression_recoveries",
            "Detected regressions whose service came back within thresholds",
            m.recoveries.clone(),
        );
        registry.register(
            "sidelight_dora_regression_incident_errors",
            "Incident writes of the detector that failed (retried at the next sample)",
            m.incident_errors.clone(),
        );
        registry.register(
            "sidelight_dora_regression_watches_dropped",
            "Deployments dropped unjudged because too many were watched at once",
            m.watches_dropped.clone(),
        );
        for v in ["healthy", "regressed", "insufficient_baseline", "undecided"] {
            // Every verdict exposed from the start (at 0), so rates see the first one.
            drop(m.verdicts.get_or_create(&[("verdict", v)]));
        }
    }

    /// A deployment was recorded (new): watch it if it is to be judged.
    pub fn deployed(&self, d: &Deployment, cfg: &DoraConfig) {
        let r = &cfg.regression;
        if !self.active.load(Ordering::Relaxed) || !r.enabled || d.environment != cfg.environment {
            return;
        }
        let (watched, dropped) = self
            .tracker
            .lock()
            .deployed(d, r.telemetry_service(&d.service));
        if let Some(id) = dropped {
            self.metrics.watches_dropped.inc();
            tracing::warn!(deployment = %id, "too many deployments watched; one dropped unjudged");
        }
        if watched {
            tracing::debug!(deployment = %d.id, service = %d.service, telemetry_service = r.telemetry_service(&d.service), "watching deployment for regressions");
        }
    }

    /// One sampling round at `now`: every service's snapshot into its ring, every watch
    /// advanced. Returns the incident changes to make.
    fn sample(&self, now: UnixSeconds, sm: &SpanMetrics, r: &RegressionSettings) -> Vec<Action> {
        let services = sm.services();
        let mut tracker = self.tracker.lock();
        for s in &services {
            if let Some(snapshot) = sm.red(s) {
                tracker.observe(now, s, snapshot, &r.sampling, &r.detector);
            }
        }
        let step = match tracker.step(now, &r.sampling, &r.detector) {
            Ok(step) => step,
            Err(e) => {
                // Validated at load; unreachable unless the validation and the detector drift.
                tracing::error!(error = %e, "dora.regression settings rejected by the detector");
                return Vec::new();
            }
        };
        let m = &self.metrics;
        for c in &step.concluded {
            match c {
                Conclusion::Recovered => {
                    m.recoveries.inc();
                }
                other => {
                    m.verdicts
                        .get_or_create(&[("verdict", other.as_str())])
                        .inc();
                }
            }
        }
        let gauge = |g: &Gauge, n: usize| g.set(i64::try_from(n).unwrap_or(i64::MAX));
        gauge(&m.services, tracker.services());
        gauge(
            &m.unsampled,
            services.len().saturating_sub(tracker.services()),
        );
        gauge(&m.samples, tracker.samples_held());
        gauge(&m.watched, tracker.watches().len());
        step.actions
    }

    fn acknowledge(&self, action: &Action) {
        let mut tracker = self.tracker.lock();
        tracker.acknowledge(action);
        let watched = i64::try_from(tracker.watches().len()).unwrap_or(i64::MAX);
        self.metrics.watched.set(watched);
    }
}

fn change(action: &Action) -> IncidentChange {
    match action {
        Action::Open {
            deployment_id,
            service,
            environment,
            started_at,
        } => IncidentChange::Open(Incident {
            id: incident_id(deployment_id),
            service: service.clone(),
            environment: environment.clone(),
            started_at: *started_at,
            resolved_at: None,
            deployment_id: Some(deployment_id.clone()),
            commit: None,
            resolved_by_deployment: None,
        }),
        Action::Resolve { deployment_id, at } => IncidentChange::Resolve {
            id: incident_id(deployment_id),
            at: *at,
            by_deployment: None,
        },
    }
}

/// Starts the sampling task when the hub has span metrics to read; says so when it cannot.
pub fn start(
    hub: &Arc<Hub>,
    spanmetrics: Option<&SpanMetrics>,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) {
    let cfg = hub.config();
    match spanmetrics {
        Some(sm) => {
            hub.detector().active.store(true, Ordering::Relaxed);
            tracker.spawn(run(hub.clone(), sm.clone(), cancel));
        }
        None if cfg.regression.enabled => tracing::warn!(
            "dora.regression needs otlp.spanmetrics: change failures are not detected from telemetry"
        ),
        None => {}
    }
}

fn ticker(period: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

/// Samples every `dora.regression.interval` until cancelled; reloads apply at the next tick.
async fn run(hub: Arc<Hub>, sm: SpanMetrics, cancel: CancellationToken) {
    let mut period = hub.config().regression.interval;
    let mut tick = ticker(period);
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let cfg = hub.config();
        let r = &cfg.regression;
        if r.interval != period {
            period = r.interval;
            tick = ticker(period);
        }
        if !r.enabled {
            continue;
        }
        // The alert clock, not the raw wall clock: after a step back, sample times keep
        // advancing (the rings and the watches' windows are read in time order).
        let now = crate::clock::now_ms().div_euclid(1000);
        for action in hub.detector().sample(now, &sm, r) {
            match hub.record_incident(change(&action)).await {
                Ok(_) => {
                    match &action {
                        Action::Open {
                            deployment_id,
                            service,
                            ..
                        } => tracing::warn!(
                            deployment = %deployment_id,
                            service = %service,
                            incident = %action.incident_id(),
                            "regression after deployment: marked failed, incident opened"
                        ),
                        Action::Resolve { deployment_id, .. } => tracing::info!(
                            deployment = %deployment_id,
                            incident = %action.incident_id(),
                            "service recovered from the regression: incident resolved"
                        ),
                    }
                    hub.detector().acknowledge(&action);
                }
                Err(e) => {
                    hub.detector().metrics.incident_errors.inc();
                    tracing::error!(error = %e, incident = %action.incident_id(), "recording a detected regression failed; retrying at the next sample");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    fn load(text: &str) -> Result<crate::config::Config, crate::config::ConfigErrors> {
        crate::config::load_str(text, "t", Path::new("."), &HashMap::<String, String>::new())
    }

    #[test]
    fn defaults_and_a_full_section() {
        let c = load("dora: { enabled: true }\n").expect("config");
        let r = &c.dora.regression;
        assert!(r.enabled);
        assert_eq!(r.sampling.interval_seconds, 15);
        assert_eq!(r.detector, super::RegressionConfig::default());
        assert_eq!(r.telemetry_service("api"), "api");
        let c = load(
            "dora:\n  regression:\n    interval: 1s\n    rate_window: 3s\n    min_calls: 2\n    max_services: 5\n    baseline: 10s\n    min_baseline_samples: 4\n    error_ratio_delta: 0.05\n    error_ratio_factor: 3\n    latency_factor: 2\n    latency_delta: 250ms\n    for: 6s\n    observe: 30s\n    services: { checkout: checkout-py }\n",
        )
        .expect("config");
        let r = &c.dora.regression;
        assert_eq!(r.interval, std::time::Duration::from_secs(1));
        assert_eq!(r.sampling.rate_window_seconds, 3);
        assert_eq!(r.sampling.min_calls, 2);
        assert_eq!(r.sampling.max_services, 5);
        assert_eq!(r.detector.baseline_seconds, 10);
        assert_eq!(r.detector.min_baseline_samples, 4);
        assert_eq!(r.detector.error_ratio_factor, 3.0);
        assert_eq!(r.detector.latency_delta_seconds, 0.25);
        assert_eq!(r.detector.for_seconds, 6);
        assert_eq!(r.detector.observe_seconds, 30);
        assert_eq!(r.telemetry_service("checkout"), "checkout-py");
        assert_eq!(r.telemetry_service("other"), "other");
    }

    #[test]
    fn every_error_has_its_path() {
        let e = load(
            "dora:\n  regression:\n    interval: 500ms\n    rate_window: 100ms\n    max_services: 0\n    latency_factor: 0.5\n    services: { api: '' }\n    windw: 1s\n",
        )
        .expect_err("invalid");
        let mut paths: Vec<String> = e.errors.iter().map(|e| e.path.clone()).collect();
        paths.sort();
        assert_eq!(
            paths,
            [
                "dora.regression.interval",
                "dora.regression.latency_factor",
                "dora.regression.max_services",
                "dora.regression.rate_window",
                "dora.regression.services.api",
                "dora.regression.windw",
            ]
        );
        let e = load("dora:\n  regression: { interval: 1m, baseline: 2m, for: -1s }\n")
            .expect_err("invalid");
        assert_eq!(e.errors[0].path, "dora.regression.for");
        let e = load("dora:\n  regression: { interval: 1m, baseline: 1m }\n").expect_err("small");
        assert_eq!(e.errors[0].path, "dora.regression.baseline");
        assert!(e.errors[0].message.contains("at most 2 samples"), "{e}");
    }
}

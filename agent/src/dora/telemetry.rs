//! The telemetry half of change-failure detection, as pure state: a bounded [`Ring`] of
//! regression [`Sample`]s per service, derived from cumulative span-metric snapshots, and a
//! [`Watch`] per deployment that runs the detector ([`super::regression`]) at each step and
//! says which incident to open or resolve. [`Tracker`] holds both. No IO and no clock: the
//! caller takes the snapshots and passes `now`.
//!
//! # Sampling
//!
//! Every `interval` the caller hands [`Ring::observe`] a service's cumulative RED snapshot
//! (calls, errors, duration buckets since the agent started). The sample at `now` is the
//! difference with the newest kept snapshot at least `rate_window` old (the oldest one while
//! the ring is younger than that) — PromQL's `rate(..[rate_window])` — and carries that
//! window's error ratio and p95 (interpolated in the span-metric buckets, as
//! `histogram_quantile` does). A window with fewer than `min_calls` calls gives no sample:
//! too little traffic to judge, and the detector's runs simply skip it.
//!
//! # Memory bound
//!
//! A ring keeps the samples of the last `horizon = baseline + observe + for` seconds, at most
//! `horizon / interval + 2` of them (24 bytes each), and at most `rate_window / interval + 2`
//! cumulative snapshots (one count per span-metric bucket). With the defaults (15 s, 1 m,
//! 1 h + 1 h + 5 m) that is 522 samples + 6 snapshots ≈ 13 KiB per service; the tracker
//! samples at most `max_services` services. A [`Watch`] freezes its deployment's baseline
//! samples when it is first judged (at most `baseline / interval + 1`), so the ring may forget
//! them while the deployment is still being watched; [`MAX_WATCHES`] bounds the watches.
//!
//! # A watch's life
//!
//! From the deployment's finish, each step runs [`detect`] on the frozen baseline plus the
//! ring's samples since the deployment started:
//! * too few baseline samples → done (`insufficient_baseline`; the agent had not sampled the
//!   service long enough, e.g. just after a restart);
//! * healthy once the onset window is over (`observe` after the finish, or the next
//!   deployment's start) → done (`healthy`);
//! * a breach still pending `for + 2 × interval` after the onset window (traffic stopped) →
//!   done (`undecided`);
//! * regressed → open an incident (`regression:<deployment id>`, started at the first
//!   breaching sample, naming the deployment), then look for recovery with [`recovered`]
//!   against the kept baseline → resolve it at the first sample of the healthy run. The
//!   caller acknowledges each action once the store has it; until then it is asked again at
//!   every step (the store is idempotent).

use std::collections::{HashMap, VecDeque};

use sidelight_collector::spanmetrics::RedSnapshot;

use super::model::{DeployStatus, Deployment, Sample, UnixSeconds};
use super::regression::{Baseline, RegressionConfig, RegressionError, Verdict, detect, recovered};

/// Most deployments watched at once; beyond it the oldest one not regressed is dropped.
pub const MAX_WATCHES: usize = 1024;

/// The prefix of the incident ids the detector opens (`regression:<deployment id>`).
pub const INCIDENT_PREFIX: &str = "regression:";

/// How samples are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SamplingConfig {
    /// Seconds between samples (≥ 1).
    pub interval_seconds: i64,
    /// Seconds each sample's error ratio and p95 cover (≥ `interval_seconds`).
    pub rate_window_seconds: i64,
    /// Fewest calls in a window for it to give a sample (0 counts as 1).
    pub min_calls: u64,
    /// Most services sampled.
    pub max_services: usize,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            interval_seconds: 15,
            rate_window_seconds: 60,
            min_calls: 10,
            max_services: 200,
        }
    }
}

/// Seconds of samples a ring keeps: `baseline + observe + for`.
#[must_use]
pub fn horizon_seconds(cfg: &RegressionConfig) -> i64 {
    cfg.baseline_seconds
        .saturating_add(cfg.observe_seconds)
        .saturating_add(cfg.for_seconds)
}

/// One service's samples and the cumulative snapshots they are derived from.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    cumulative: VecDeque<(UnixSeconds, RedSnapshot)>,
    samples: VecDeque<Sample>,
}

impl Ring {
    /// Most samples a ring holds under these settings.
    #[must_use]
    pub fn capacity(sampling: &SamplingConfig, cfg: &RegressionConfig) -> usize {
        let every = sampling.interval_seconds.max(1);
        usize::try_from(horizon_seconds(cfg) / every + 2).unwrap_or(usize::MAX)
    }

    /// Takes the cumulative `snapshot` of `now` and returns the sample it gives, if any.
    pub fn observe(
        &mut self,
        now: UnixSeconds,
        snapshot: RedSnapshot,
        sampling: &SamplingConfig,
        cfg: &RegressionConfig,
    ) -> Option<Sample> {
        match self.cumulative.back() {
            // Two snapshots in one second: keep the first.
            Some((t, _)) if *t == now => return None,
            // The clock went back: what was taken "later" cannot be compared with now.
            Some((t, _)) if *t > now => {
                self.cumulative.clear();
                self.samples.retain(|s| s.timestamp < now);
            }
            _ => {}
        }
        let window_start = now.saturating_sub(sampling.rate_window_seconds.max(1));
        // Keep the newest snapshot at or before the window's start as the front.
        while self.cumulative.len() >= 2 && self.cumulative[1].0 <= window_start {
            self.cumulative.pop_front();
        }
        let sample = self.cumulative.front().and_then(|(_, base)| {
            let delta = snapshot.since(base);
            if delta.calls < sampling.min_calls.max(1) {
                return None;
            }
            Some(Sample {
                timestamp: now,
                error_ratio: delta.error_ratio()?,
                p95_latency_seconds: delta.quantile(0.95)?,
            })
        });
        self.cumulative.push_back((now, snapshot));
        let most = usize::try_from(sampling.rate_window_seconds / sampling.interval_seconds.max(1))
            .unwrap_or(usize::MAX)
            .saturating_add(2);
        while self.cumulative.len() > most {
            self.cumulative.pop_front();
        }
        if let Some(s) = sample {
            self.samples.push_back(s);
        }
        let oldest = now.saturating_sub(horizon_seconds(cfg));
        while self.samples.front().is_some_and(|s| s.timestamp < oldest) {
            self.samples.pop_front();
        }
        while self.samples.len() > Self::capacity(sampling, cfg) {
            self.samples.pop_front();
        }
        sample
    }

    /// The samples held, oldest first.
    #[must_use]
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.iter().copied().collect()
    }

    /// How many samples are held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether no sample is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// Where a watch stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Phase {
    /// Looking for a sustained breach after the deployment.
    Watching,
    /// A regression was confirmed; its incident is opened, then resolved on recovery.
    Regressed {
        /// The pre-deploy reference (kept: the samples it came from may be gone).
        baseline: Baseline,
        /// First breaching sample: the incident's start.
        started_at: UnixSeconds,
        /// When the breach had lasted `for`.
        confirmed_at: UnixSeconds,
        /// When the service was back, once it is.
        resolved_at: Option<UnixSeconds>,
        /// The store has the incident.
        opened: bool,
        /// The store has its resolution.
        closed: bool,
    },
    /// Nothing more to do.
    Done,
}

/// What a step concluded, for self-metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Conclusion {
    /// Too few baseline samples to judge.
    InsufficientBaseline,
    /// No sustained breach during the onset window.
    Healthy,
    /// A sustained breach: the deployment failed.
    Regressed,
    /// A breach was pending when traffic stopped; no verdict.
    Undecided,
    /// A regressed service is back within thresholds.
    Recovered,
}

impl Conclusion {
    /// The metric label.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InsufficientBaseline => "insufficient_baseline",
            Self::Healthy => "healthy",
            Self::Regressed => "regressed",
            Self::Undecided => "undecided",
            Self::Recovered => "recovered",
        }
    }
}

/// An incident change a watch asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open incident `regression:<deployment_id>` naming the deployment.
    Open {
        /// The deployment blamed.
        deployment_id: String,
        /// Its service (the DORA name).
        service: String,
        /// Its environment.
        environment: String,
        /// The regression's first breaching sample.
        started_at: UnixSeconds,
    },
    /// Resolve it.
    Resolve {
        /// The deployment blamed.
        deployment_id: String,
        /// The first sample of the sustained healthy run.
        at: UnixSeconds,
    },
}

impl Action {
    /// The incident id.
    #[must_use]
    pub fn incident_id(&self) -> String {
        let (Self::Open { deployment_id, .. } | Self::Resolve { deployment_id, .. }) = self;
        incident_id(deployment_id)
    }
}

/// The id of the incident the detector opens for a deployment.
#[must_use]
pub fn incident_id(deployment_id: &str) -> String {
    format!("{INCIDENT_PREFIX}{deployment_id}")
}

/// One deployment under watch.
#[derive(Debug, Clone, PartialEq)]
pub struct Watch {
    /// Delivery id.
    pub deployment_id: String,
    /// DORA service.
    pub service: String,
    /// The span metrics' `service_name` it is judged on.
    pub telemetry_service: String,
    /// Environment.
    pub environment: String,
    /// Deploy start.
    pub started_at: UnixSeconds,
    /// Deploy finish.
    pub finished_at: UnixSeconds,
    /// Start of the service's next deployment, once known.
    pub next_started_at: Option<UnixSeconds>,
    baseline: Option<Vec<Sample>>,
    /// Where it stands.
    pub phase: Phase,
}

impl Watch {
    /// A watch of `d`, judged on the span metrics of `telemetry_service`.
    #[must_use]
    pub fn new(d: &Deployment, telemetry_service: &str) -> Self {
        Self {
            deployment_id: d.id.clone(),
            service: d.service.clone(),
            telemetry_service: telemetry_service.to_owned(),
            environment: d.environment.clone(),
            started_at: d.started_at,
            finished_at: d.finished_at,
            next_started_at: None,
            baseline: None,
            phase: Phase::Watching,
        }
    }

    /// Advances the watch at `now` over `samples` (its service's ring, any order); returns
    /// what it concluded, if anything, and the incident changes still to be made.
    ///
    /// # Errors
    /// An invalid `cfg`.
    pub fn step(
        &mut self,
        now: UnixSeconds,
        samples: &[Sample],
        sampling: &SamplingConfig,
        cfg: &RegressionConfig,
    ) -> Result<(Vec<Conclusion>, Vec<Action>), RegressionError> {
        let mut concluded = Vec::new();
        if now < self.finished_at || self.phase == Phase::Done {
            return Ok((concluded, Vec::new()));
        }
        if self.phase == Phase::Watching {
            let from = self.started_at.saturating_sub(cfg.baseline_seconds);
            let started_at = self.started_at;
            let baseline = self.baseline.get_or_insert_with(|| {
                samples
                    .iter()
                    .filter(|s| s.timestamp >= from && s.timestamp < started_at)
                    .copied()
                    .collect()
            });
            let mut all = baseline.clone();
            all.extend(samples.iter().filter(|s| s.timestamp >= started_at));
            let onset_limit = self
                .finished_at
                .saturating_add(cfg.observe_seconds)
                .min(self.next_started_at.unwrap_or(i64::MAX));
            match detect(
                self.started_at,
                self.finished_at,
                self.next_started_at,
                &all,
                cfg,
            )? {
                Verdict::InsufficientBaseline { .. } => {
                    self.phase = Phase::Done;
                    concluded.push(Conclusion::InsufficientBaseline);
                }
                Verdict::Healthy { .. } if now >= onset_limit => {
                    self.phase = Phase::Done;
                    concluded.push(Conclusion::Healthy);
                }
                Verdict::Pending { .. }
                    if now
                        >= onset_limit
                            .saturating_add(cfg.for_seconds)
                            .saturating_add(2 * sampling.interval_seconds) =>
                {
                    self.phase = Phase::Done;
                    concluded.push(Conclusion::Undecided);
                }
                Verdict::Healthy { .. } | Verdict::Pending { .. } => {}
                Verdict::Regressed {
                    baseline,
                    regression,
                } => {
                    concluded.push(Conclusion::Regressed);
                    if regression.resolved_at.is_some() {
                        concluded.push(Conclusion::Recovered);
                    }
                    self.phase = Phase::Regressed {
                        baseline,
                        started_at: regression.started_at,
                        confirmed_at: regression.confirmed_at,
                        resolved_at: regression.resolved_at,
                        opened: false,
                        closed: false,
                    };
                }
            }
        } else if let Phase::Regressed {
            baseline,
            confirmed_at,
            resolved_at: resolved_at @ None,
            ..
        } = &mut self.phase
        {
            *resolved_at = recovered(baseline, *confirmed_at, samples, cfg);
            if resolved_at.is_some() {
                concluded.push(Conclusion::Recovered);
            }
        }
        Ok((concluded, self.actions()))
    }

    /// The incident changes the store does not have yet.
    #[must_use]
    pub fn actions(&self) -> Vec<Action> {
        let Phase::Regressed {
            started_at,
            resolved_at,
            opened,
            closed,
            ..
        } = self.phase
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if !opened {
            out.push(Action::Open {
                deployment_id: self.deployment_id.clone(),
                service: self.service.clone(),
                environment: self.environment.clone(),
                started_at,
            });
        }
        if let (Some(at), false) = (resolved_at, closed) {
            out.push(Action::Resolve {
                deployment_id: self.deployment_id.clone(),
                at,
            });
        }
        out
    }

    /// Records that the store has `action`; the watch is done once it has both.
    pub fn acknowledge(&mut self, action: &Action) {
        if let Phase::Regressed { opened, closed, .. } = &mut self.phase {
            match action {
                Action::Open { .. } => *opened = true,
                Action::Resolve { .. } => *closed = true,
            }
            if *opened && *closed {
                self.phase = Phase::Done;
            }
        }
    }

    /// Whether the deployment is still being judged (not yet regressed).
    #[must_use]
    pub fn is_watching(&self) -> bool {
        self.phase == Phase::Watching
    }
}

/// Every service's ring and every deployment's watch.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    rings: HashMap<String, Ring>,
    watches: Vec<Watch>,
    skipped: usize,
}

/// What one [`Tracker::step`] produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Step {
    /// Conclusions reached, for self-metrics.
    pub concluded: Vec<Conclusion>,
    /// Incident changes to make (acknowledge each one the store took).
    pub actions: Vec<Action>,
}

impl Tracker {
    /// Starts watching a successful deployment, judged on `telemetry_service`; the previous
    /// watched deployments of the same service and environment learn that it started.
    /// Returns false if it is not watched (not successful, already watched), and the
    /// deployment dropped to make room, if any.
    pub fn deployed(&mut self, d: &Deployment, telemetry_service: &str) -> (bool, Option<String>) {
        if d.status != DeployStatus::Success || self.watches.iter().any(|w| w.deployment_id == d.id)
        {
            return (false, None);
        }
        for w in &mut self.watches {
            if w.service == d.service
                && w.environment == d.environment
                && w.started_at < d.started_at
            {
                w.next_started_at = Some(
                    w.next_started_at
                        .map_or(d.started_at, |n| n.min(d.started_at)),
                );
            }
        }
        let mut dropped = None;
        if self.watches.len() >= MAX_WATCHES {
            let oldest = self
                .watches
                .iter()
                .enumerate()
                .filter(|(_, w)| w.is_watching())
                .min_by_key(|(_, w)| w.finished_at)
                .map(|(i, _)| i);
            match oldest {
                Some(i) => dropped = Some(self.watches.remove(i).deployment_id),
                None => return (false, Some(d.id.clone())),
            }
        }
        let mut w = Watch::new(d, telemetry_service);
        // A later deployment already watched bounds this one's onset window.
        w.next_started_at = self
            .watches
            .iter()
            .filter(|o| {
                o.service == d.service
                    && o.environment == d.environment
                    && o.started_at > d.started_at
            })
            .map(|o| o.started_at)
            .min();
        self.watches.push(w);
        (true, dropped)
    }

    /// Takes `service`'s cumulative snapshot at `now`. A service beyond
    /// `sampling.max_services` is not sampled (counted in [`Tracker::skipped`]).
    pub fn observe(
        &mut self,
        now: UnixSeconds,
        service: &str,
        snapshot: RedSnapshot,
        sampling: &SamplingConfig,
        cfg: &RegressionConfig,
    ) -> Option<Sample> {
        if !self.rings.contains_key(service) {
            if self.rings.len() >= sampling.max_services {
                self.skipped += 1;
                return None;
            }
            self.rings.insert(service.to_owned(), Ring::default());
        }
        self.rings
            .get_mut(service)
            .and_then(|r| r.observe(now, snapshot, sampling, cfg))
    }

    /// Advances every watch at `now`; finished ones are removed.
    ///
    /// # Errors
    /// An invalid `cfg`.
    pub fn step(
        &mut self,
        now: UnixSeconds,
        sampling: &SamplingConfig,
        cfg: &RegressionConfig,
    ) -> Result<Step, RegressionError> {
        let mut out = Step::default();
        let empty = Ring::default();
        for w in &mut self.watches {
            let samples = self
                .rings
                .get(&w.telemetry_service)
                .unwrap_or(&empty)
                .samples();
            let (concluded, actions) = w.step(now, &samples, sampling, cfg)?;
            out.concluded.extend(concluded);
            out.actions.extend(actions);
        }
        self.watches.retain(|w| w.phase != Phase::Done);
        Ok(out)
    }

    /// Records that the store has `action`.
    pub fn acknowledge(&mut self, action: &Action) {
        let (Action::Open { deployment_id, .. } | Action::Resolve { deployment_id, .. }) = action;
        if let Some(w) = self
            .watches
            .iter_mut()
            .find(|w| &w.deployment_id == deployment_id)
        {
            w.acknowledge(action);
        }
        self.watches.retain(|w| w.phase != Phase::Done);
    }

    /// Services sampled.
    #[must_use]
    pub fn services(&self) -> usize {
        self.rings.len()
    }

    /// Samples held over every ring.
    #[must_use]
    pub fn samples_held(&self) -> usize {
        self.rings.values().map(Ring::len).sum()
    }

    /// Deployments watched (judged or regressed and not yet resolved in the store).
    #[must_use]
    pub fn watches(&self) -> &[Watch] {
        &self.watches
    }

    /// Observations refused because `max_services` services were already sampled.
    #[must_use]
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// The ring of a service, if sampled.
    #[must_use]
    pub fn ring(&self, service: &str) -> Option<&Ring> {
        self.rings.get(service)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::dora::DeploymentKind;

    const BOUNDS: [f64; 4] = [0.01, 0.1, 0.5, 1.0];

    /// A cumulative snapshot with `fast` calls in the first bucket, `slow` in the third.
    fn snap(calls: u64, errors: u64, fast: u64, slow: u64) -> RedSnapshot {
        assert_eq!(calls, fast + slow);
        RedSnapshot {
            calls,
            errors,
            sum_seconds: 0.0,
            bounds: Arc::from(BOUNDS.as_slice()),
            buckets: vec![fast, 0, slow, 0, 0],
        }
    }

    fn sampling(interval: i64, window: i64) -> SamplingConfig {
        SamplingConfig {
            interval_seconds: interval,
            rate_window_seconds: window,
            min_calls: 5,
            max_services: 2,
        }
    }

    /// Short windows: baseline 60 s of ≥ 3 samples, `for` 20 s, observe 60 s.
    fn cfg() -> RegressionConfig {
        RegressionConfig {
            baseline_seconds: 60,
            min_baseline_samples: 3,
            for_seconds: 20,
            observe_seconds: 60,
            ..RegressionConfig::default()
        }
    }

    #[test]
    fn samples_cover_the_rate_window() {
        let (s, c) = (sampling(10, 20), cfg());
        let mut ring = Ring::default();
        // Cumulative: 10 calls per 10 s; from t=30 on, 5 of the 10 are errors.
        let mut got = Vec::new();
        let (mut calls, mut errors) = (0, 0);
        for t in (0..=60).step_by(10) {
            if t > 0 {
                calls += 10;
                if t > 30 {
                    errors += 5;
                }
            }
            got.push(ring.observe(t, snap(calls, errors, calls, 0), &s, &c));
        }
        let ratios: Vec<Option<f64>> = got.iter().map(|s| s.map(|s| s.error_ratio)).collect();
        // t=0: nothing to compare with; t=10: 10 s of data (younger than the window);
        // then 20 s windows: t=40 covers (20, 40] = 10 good + 10 with 5 errors.
        assert_eq!(
            ratios,
            [
                None,
                Some(0.0),
                Some(0.0),
                Some(0.0),
                Some(0.25),
                Some(0.5),
                Some(0.5)
            ]
        );
        assert_eq!(got[1].map(|s| s.timestamp), Some(10));
        // Every call in the first bucket: p95 interpolated within [0, 0.01].
        assert!(got[6].is_some_and(|s| (s.p95_latency_seconds - 0.0095).abs() < 1e-9));
        assert_eq!(ring.len(), 6);
    }

    #[test]
    fn too_few_calls_give_no_sample_and_a_clock_step_back_restarts() {
        let (s, c) = (sampling(10, 10), cfg());
        let mut ring = Ring::default();
        assert_eq!(ring.observe(100, snap(10, 0, 10, 0), &s, &c), None);
        // 4 calls < min_calls 5.
        assert_eq!(ring.observe(110, snap(14, 0, 14, 0), &s, &c), None);
        let p = ring
            .observe(120, snap(24, 0, 14, 10), &s, &c)
            .map(|s| s.p95_latency_seconds);
        // 10 slow calls in (0.1, 0.5]: p95 = 0.1 + 0.4 * 9.5/10.
        assert!(p.is_some_and(|p| (p - 0.48).abs() < 1e-9), "{p:?}");
        // Same second again: ignored.
        assert_eq!(ring.observe(120, snap(99, 0, 99, 0), &s, &c), None);
        // The clock went back to 115: the sample of 120 is dropped, comparisons restart.
        assert_eq!(ring.observe(115, snap(30, 0, 20, 10), &s, &c), None);
        assert!(ring.is_empty());
        assert!(ring.observe(125, snap(40, 0, 30, 10), &s, &c).is_some());
        // A counter reset (fewer calls than before) compares with nothing: the whole snapshot.
        let after_reset = ring.observe(135, snap(6, 6, 6, 0), &s, &c);
        assert_eq!(after_reset.map(|s| s.error_ratio), Some(1.0));
    }

    #[test]
    fn the_ring_is_bounded_by_the_horizon() {
        let (s, c) = (sampling(10, 10), cfg());
        // Horizon 60 + 60 + 20 = 140 s: at most 140 / 10 + 2 samples, none older than 140 s.
        assert_eq!(horizon_seconds(&c), 140);
        assert_eq!(Ring::capacity(&s, &c), 16);
        let mut ring = Ring::default();
        for k in 0..100 {
            let n = 10 * k as u64;
            ring.observe(10 * k, snap(n, 0, n, 0), &s, &c);
        }
        let samples = ring.samples();
        assert_eq!(samples.len(), 15);
        assert_eq!(samples.first().map(|s| s.timestamp), Some(990 - 140));
        assert!(ring.cumulative.len() <= 3);
        // With one-second jitter the count cap holds too.
        let mut ring = Ring::default();
        for k in 0..1000_i64 {
            let n = 10 * k as u64;
            ring.observe(k * 9 + k % 2, snap(n, 0, n, 0), &s, &c);
        }
        assert!(ring.len() <= Ring::capacity(&s, &c));
    }

    fn deployment(id: &str, started_at: i64, finished_at: i64) -> Deployment {
        Deployment {
            id: id.into(),
            service: "checkout".into(),
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
        }
    }

    /// Drives a tracker: one snapshot of `checkout-py` every 10 s from `from` to `to`, 20
    /// calls per interval of which `errors(t)` fail; the tracker steps after each one.
    /// Returns every step's output with its time.
    fn drive(
        tr: &mut Tracker,
        totals: &mut (u64, u64),
        from: i64,
        to: i64,
        errors: impl Fn(i64) -> u64,
    ) -> Vec<(i64, Step)> {
        let (s, c) = (sampling(10, 10), cfg());
        let mut out = Vec::new();
        for t in (from..=to).step_by(10) {
            totals.0 += 20;
            totals.1 += errors(t);
            tr.observe(
                t,
                "checkout-py",
                snap(totals.0, totals.1, totals.0, 0),
                &s,
                &c,
            );
            let step = tr.step(t, &s, &c).expect("valid config");
            if step != Step::default() {
                out.push((t, step));
            }
        }
        out
    }

    #[test]
    fn a_sustained_regression_opens_then_resolves_an_incident() {
        let mut tr = Tracker::default();
        let mut totals = (0, 0);
        assert!(drive(&mut tr, &mut totals, 0, 100, |_| 0).is_empty());
        let (watched, dropped) = tr.deployed(&deployment("d1", 100, 105), "checkout-py");
        assert!(watched && dropped.is_none());
        // Half the calls fail in (120, 160]; healthy again from 170.
        let steps = drive(&mut tr, &mut totals, 110, 240, |t| {
            if (130..=160).contains(&t) { 10 } else { 0 }
        });
        let open = Action::Open {
            deployment_id: "d1".into(),
            service: "checkout".into(),
            environment: "production".into(),
            started_at: 130,
        };
        // Breaching samples at 130..=160 (each covers 10 s): confirmed at 150 (20 s).
        // Unacknowledged, the open is asked again at every step.
        assert_eq!(steps[0].0, 150);
        assert_eq!(steps[0].1.concluded, [Conclusion::Regressed]);
        assert_eq!(steps[0].1.actions, std::slice::from_ref(&open));
        assert!(steps.iter().all(|(_, s)| s.actions.contains(&open)));
        tr.acknowledge(&open);
        let steps = drive(&mut tr, &mut totals, 250, 260, |_| 0);
        // Healthy from 170, sustained 20 s at 190: resolved at 170.
        let resolve = Action::Resolve {
            deployment_id: "d1".into(),
            at: 170,
        };
        assert_eq!(steps[0].1.actions, std::slice::from_ref(&resolve));
        assert_eq!(resolve.incident_id(), "regression:d1");
        tr.acknowledge(&resolve);
        assert!(tr.watches().is_empty());
    }

    #[test]
    fn recovery_is_seen_after_the_baseline_left_the_ring() {
        let mut tr = Tracker::default();
        let mut totals = (0, 0);
        drive(&mut tr, &mut totals, 0, 100, |_| 0);
        tr.deployed(&deployment("d1", 100, 100), "checkout-py");
        let steps = drive(
            &mut tr,
            &mut totals,
            110,
            600,
            |t| if t < 500 { 10 } else { 0 },
        );
        let (t, first) = &steps[0];
        assert_eq!(
            (*t, first.concluded.as_slice()),
            (130, [Conclusion::Regressed].as_slice())
        );
        // By 500 the ring (140 s) no longer holds the baseline; the kept one still judges.
        assert!(
            tr.ring("checkout-py")
                .is_some_and(|r| r.samples()[0].timestamp > 100)
        );
        let recovered: Vec<_> = steps
            .iter()
            .filter(|(_, s)| s.concluded.contains(&Conclusion::Recovered))
            .collect();
        assert_eq!(recovered.len(), 1);
        assert_eq!(recovered[0].0, 520);
        assert!(recovered[0].1.actions.contains(&Action::Resolve {
            deployment_id: "d1".into(),
            at: 500
        }));
    }

    #[test]
    fn a_short_blip_is_healthy_once_the_onset_window_ends() {
        let mut tr = Tracker::default();
        let mut totals = (0, 0);
        drive(&mut tr, &mut totals, 0, 100, |_| 0);
        tr.deployed(&deployment("d1", 100, 100), "checkout-py");
        // One breaching interval (10 s < for 20 s).
        let steps = drive(&mut tr, &mut totals, 110, 200, |t| {
            if t == 130 { 15 } else { 0 }
        });
        // Observe ends at 160: healthy, and nothing ever asked of the store.
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].0, 160);
        assert_eq!(steps[0].1.concluded, [Conclusion::Healthy]);
        assert!(steps[0].1.actions.is_empty());
        assert!(tr.watches().is_empty());
    }

    #[test]
    fn verdicts_without_enough_baseline_or_traffic() {
        // Deployed before any sample: insufficient baseline at its finish.
        let mut tr = Tracker::default();
        let mut totals = (0, 0);
        tr.deployed(&deployment("d0", 0, 5), "checkout-py");
        let steps = drive(&mut tr, &mut totals, 0, 20, |_| 0);
        assert_eq!(
            steps[0],
            (
                10,
                Step {
                    concluded: vec![Conclusion::InsufficientBaseline],
                    actions: vec![]
                }
            )
        );
        // A breach pending when the traffic stops: undecided after observe + for + 2 intervals.
        let (s, c) = (sampling(10, 10), cfg());
        let mut tr = Tracker::default();
        let mut totals = (0, 0);
        drive(&mut tr, &mut totals, 0, 100, |_| 0);
        tr.deployed(&deployment("d1", 100, 100), "checkout-py");
        drive(&mut tr, &mut totals, 110, 150, |t| {
            if t == 150 { 10 } else { 0 }
        });
        let mut concluded = Vec::new();
        for t in (160..=300).step_by(10) {
            // Same cumulative totals: no calls, no samples.
            tr.observe(
                t,
                "checkout-py",
                snap(totals.0, totals.1, totals.0, 0),
                &s,
                &c,
            );
            let step = tr.step(t, &s, &c).expect("valid");
            concluded.extend(step.concluded.into_iter().map(|k| (t, k)));
        }
        assert_eq!(concluded, [(200, Conclusion::Undecided)]);
    }

    #[test]
    fn the_next_deployment_bounds_the_onset_window_and_services_are_capped() {
        let (s, c) = (sampling(10, 10), cfg());
        let mut tr = Tracker::default();
        let mut totals = (0, 0);
        drive(&mut tr, &mut totals, 0, 100, |_| 0);
        tr.deployed(&deployment("d1", 100, 100), "checkout-py");
        // A second deployment at 120 (posted in the same interval): a breach from 130 on
        // is d2's, not d1's.
        tr.deployed(&deployment("d2", 120, 120), "checkout-py");
        assert_eq!(tr.watches()[0].next_started_at, Some(120));
        assert!(!tr.deployed(&deployment("d2", 120, 120), "checkout-py").0);
        let steps = drive(&mut tr, &mut totals, 110, 200, |t| {
            if t >= 130 { 10 } else { 0 }
        });
        let regressed: Vec<&Action> = steps
            .iter()
            .flat_map(|(_, s)| &s.actions)
            .filter(|a| matches!(a, Action::Open { .. }))
            .collect();
        assert!(!regressed.is_empty());
        assert!(regressed.iter().all(|a| a.incident_id() == "regression:d2"));
        assert!(
            steps
                .iter()
                .any(|(t, s)| *t == 120 && s.concluded == [Conclusion::Healthy])
        );
        // max_services 2: a third service is not sampled.
        for name in ["a", "b"] {
            tr.observe(300, name, snap(5, 0, 5, 0), &s, &c);
        }
        assert_eq!(tr.services(), 2);
        assert_eq!(tr.skipped(), 1);
        assert!(tr.samples_held() > 0);
        // A failed deploy is not watched.
        let mut failed = deployment("d3", 400, 400);
        failed.status = DeployStatus::Failure;
        assert!(!tr.deployed(&failed, "checkout-py").0);
    }
}

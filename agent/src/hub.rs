//! The DORA hub (`dora.enabled: true`): the edge around the pure `dora` module. It records
//! events in the [`store`](crate::store), recomputes the DORA metrics from the stored history
//! after new events (one recomputation per burst: 1 s after the first) and every minute, applies retention on start and daily, and exposes:
//!
//! * counters `dora_deployments_total{service,environment,status}`,
//!   `dora_change_failures_total{service,environment}`,
//!   `dora_rework_deployments_total{service,environment}` and histograms
//!   `dora_lead_time_seconds{service,environment}`, `dora_recovery_time_seconds{..}` — all-time
//!   values rebuilt from the store, so they survive restarts (they only go down when retention
//!   deletes history, which Prometheus treats as a counter reset);
//! * windowed gauges `dora_deployment_frequency_per_day`, `dora_lead_time_median_seconds`,
//!   `dora_change_failure_ratio`, `dora_recovery_time_median_seconds`, `dora_rework_ratio`
//!   `{service,environment,window}` for the configured environment, and
//!   `dora_performance_level{service,environment,metric,level}` (1 for the current level, 0 for
//!   the others) rated on the 30d window (the longest configured window when 30d is not one).
//!
//! The counters are also computed with the all-time report, so `/metrics`, `/api/v1/dora` and
//! `sidelight dora report` always agree.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sidelight_collector::metrics::{
    FamilySnapshot, Kind, LabelCaps, Snapshot, SnapshotCell, SnapshotCollector,
};
use tokio_util::sync::CancellationToken;

pub mod config;
pub mod detector;

pub use config::DoraConfig;

use crate::dora::tiers::assess;
use crate::dora::{
    DeployStatus, Deployment, Events, Level, Metric, Report, Scope, TierTable, UnixSeconds, Window,
    recovery_seconds, report,
};
use crate::store::{Batch, IncidentChange, Outcome, StoreError, StoreHandle};

/// Lead-time buckets: 1h to 90d.
pub const LEAD_TIME_BUCKETS: [f64; 13] = [
    3600.0,
    7200.0,
    14_400.0,
    28_800.0,
    43_200.0,
    86_400.0,
    172_800.0,
    259_200.0,
    604_800.0,
    1_209_600.0,
    2_592_000.0,
    5_184_000.0,
    7_776_000.0,
];

/// Recovery-time buckets: 5m to 30d.
pub const RECOVERY_BUCKETS: [f64; 12] = [
    300.0,
    900.0,
    1800.0,
    3600.0,
    7200.0,
    14_400.0,
    28_800.0,
    86_400.0,
    172_800.0,
    604_800.0,
    1_209_600.0,
    2_592_000.0,
];

/// How often the windowed gauges are recomputed without new events.
const REFRESH: Duration = Duration::from_secs(60);
/// How long a recomputation waits after an event, so that a burst of events costs one (each
/// reloads the whole history on the store thread, where it would hold up the writes).
const CHANGE_DEBOUNCE: Duration = Duration::from_secs(1);
/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(86_400);

type Labels2 = [(&'static str, String); 2];
type HistFamily = Family<Labels2, Histogram, fn() -> Histogram>;

fn lead_histogram() -> Histogram {
    Histogram::new(LEAD_TIME_BUCKETS)
}

fn recovery_histogram() -> Histogram {
    Histogram::new(RECOVERY_BUCKETS)
}

/// A histogram family replaced whole on each recomputation.
#[derive(Debug)]
struct HistogramCell {
    name: &'static str,
    help: &'static str,
    family: RwLock<Arc<HistFamily>>,
}

#[derive(Debug)]
struct HistogramCollector(Arc<HistogramCell>);

impl Collector for HistogramCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let family = self.0.family.read().clone();
        let metric =
            encoder.encode_descriptor(self.0.name, self.0.help, None, family.metric_type())?;
        family.encode(metric)
    }
}

/// The current time in Unix seconds.
pub fn unix_now() -> UnixSeconds {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// What one recomputation produces.
#[derive(Debug)]
pub struct Computed {
    /// Counters and gauges.
    pub snapshot: Snapshot,
    /// `dora_lead_time_seconds`.
    pub lead: HistFamily,
    /// `dora_recovery_time_seconds`.
    pub recovery: HistFamily,
}

/// The window performance levels are rated on.
pub fn rating_window(windows: &[Window]) -> Window {
    if windows.contains(&Window::days(30)) {
        Window::days(30)
    } else {
        windows.iter().copied().max().unwrap_or(Window::days(30))
    }
}

/// Computes every DORA metric from the stored history (pure).
pub fn compute(
    now: UnixSeconds,
    events: &Events,
    cfg: &DoraConfig,
    table: Option<&TierTable>,
) -> Computed {
    let all_time = report(
        now,
        events,
        Window::days(Window::MAX_DAYS),
        &Scope::default(),
    );
    let mut deployments = FamilySnapshot::new(
        "dora_deployments",
        "Deployments (status success, after dedup: a redelivery or a repeat of the live version is one) and failed deploy attempts (status failure), by service and environment",
        Kind::Counter,
    );
    let mut counts: HashMap<(&str, &str, &str), u64> = HashMap::new();
    for r in &all_time.services {
        if r.deployments > 0 {
            counts.insert(
                (r.service.as_str(), r.environment.as_str(), "success"),
                r.deployments,
            );
        }
    }
    for d in events
        .deployments
        .iter()
        .filter(|d| d.finished_at <= now && d.status == DeployStatus::Failure)
    {
        *counts
            .entry((d.service.as_str(), d.environment.as_str(), "failure"))
            .or_default() += 1;
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort();
    for ((s, e, st), n) in counts {
        deployments.push(
            [
                ("service", s.to_owned()),
                ("environment", e.to_owned()),
                ("status", st.to_owned()),
            ],
            n as f64,
        );
    }

    let mut failures = FamilySnapshot::new(
        "dora_change_failures",
        "Deployments that caused a failure (all time in the store)",
        Kind::Counter,
    );
    let mut rework = FamilySnapshot::new(
        "dora_rework_deployments",
        "Deployments that were unplanned fixes for a production incident (all time in the store)",
        Kind::Counter,
    );
    for r in &all_time.services {
        let labels = || {
            [
                ("service", r.service.clone()),
                ("environment", r.environment.clone()),
            ]
        };
        failures.push(labels(), r.failed_deployments as f64);
        rework.push(labels(), r.rework_deployments as f64);
    }

    // Lead times: each change at the first successful deployment that shipped it.
    let lead: HistFamily = Family::new_with_constructor(lead_histogram);
    let mut ordered: Vec<&Deployment> = events
        .deployments
        .iter()
        .filter(|d| d.status == DeployStatus::Success && d.finished_at <= now)
        .collect();
    ordered.sort_by(|a, b| {
        (a.finished_at, a.started_at, &a.id).cmp(&(b.finished_at, b.started_at, &b.id))
    });
    let mut shipped: HashSet<(&str, &str, &str)> = HashSet::new();
    for d in &ordered {
        for c in &d.commits {
            if !c.sha.is_empty()
                && !shipped.insert((d.service.as_str(), d.environment.as_str(), c.sha.as_str()))
            {
                continue;
            }
            let lead_s = (d.finished_at - c.effective_time()).max(0);
            lead.get_or_create(&[
                ("service", d.service.clone()),
                ("environment", d.environment.clone()),
            ])
            .observe(lead_s as f64);
        }
    }

    let recovery: HistFamily = Family::new_with_constructor(recovery_histogram);
    let by_id: HashMap<&str, &Deployment> = ordered.iter().map(|d| (d.id.as_str(), *d)).collect();
    for i in &events.incidents {
        if i.resolved_at.is_none_or(|r| r > now) {
            continue;
        }
        let failing = i
            .deployment_id
            .as_deref()
            .and_then(|id| by_id.get(id).copied());
        if let Some(s) = recovery_seconds(i, failing) {
            recovery
                .get_or_create(&[
                    ("service", i.service.clone()),
                    ("environment", i.environment.clone()),
                ])
                .observe(s as f64);
        }
    }

    let mut freq = FamilySnapshot::new(
        "dora_deployment_frequency_per_day",
        "Deployments per day over the window",
        Kind::Gauge,
    );
    let mut lead_median = FamilySnapshot::new(
        "dora_lead_time_median_seconds",
        "Median change lead time over the window",
        Kind::Gauge,
    );
    let mut cfr = FamilySnapshot::new(
        "dora_change_failure_ratio",
        "Failed deployments / deployments over the window",
        Kind::Gauge,
    );
    let mut recovery_median = FamilySnapshot::new(
        "dora_recovery_time_median_seconds",
        "Median failed deployment recovery time over the window",
        Kind::Gauge,
    );
    let mut rework_ratio = FamilySnapshot::new(
        "dora_rework_ratio",
        "Rework deployments / deployments over the window",
        Kind::Gauge,
    );
    let mut level = FamilySnapshot::new(
        "dora_performance_level",
        "1 for the DORA performance level of each metric, 0 for the other levels",
        Kind::Gauge,
    );
    let scope = Scope::environment(&cfg.environment);
    let rate_on = rating_window(&cfg.windows);
    for &w in &cfg.windows {
        let rep: Report = report(now, events, w, &scope);
        for r in &rep.services {
            let labels = || {
                [
                    ("service", r.service.clone()),
                    ("environment", r.environment.clone()),
                    ("window", w.to_string()),
                ]
            };
            freq.push(labels(), r.deployment_frequency_per_day);
            if let Some(v) = r.lead_time_median_seconds {
                lead_median.push(labels(), v);
            }
            if let Some(v) = r.change_fail_rate {
                cfr.push(labels(), v);
            }
            if let Some(v) = r.recovery_time_median_seconds {
                recovery_median.push(labels(), v);
            }
            if let Some(v) = r.rework_rate {
                rework_ratio.push(labels(), v);
            }
            let Some(table) = table.filter(|_| w == rate_on) else {
                continue;
            };
            let Ok(levels) = assess(table, r, cfg.tier_year) else {
                continue;
            };
            for (metric, got) in [
                (Metric::DeploymentFrequency, levels.deployment_frequency),
                (Metric::LeadTime, levels.lead_time),
                (Metric::ChangeFailRate, levels.change_fail_rate),
                (Metric::RecoveryTime, levels.recovery_time),
            ] {
                let Some(got) = got else { continue };
                for l in [Level::Elite, Level::High, Level::Medium, Level::Low] {
                    level.push(
                        [
                            ("service", r.service.clone()),
                            ("environment", r.environment.clone()),
                            ("metric", metric.as_str().to_owned()),
                            ("level", l.as_str().to_owned()),
                        ],
                        if l == got { 1.0 } else { 0.0 },
                    );
                }
            }
        }
    }
    Computed {
        snapshot: Snapshot {
            families: vec![
                deployments,
                failures,
                rework,
                freq,
                lead_median,
                cfr,
                recovery_median,
                rework_ratio,
                level,
            ],
        },
        lead,
        recovery,
    }
}

/// The running hub.
#[derive(Debug)]
pub struct Hub {
    store: StoreHandle,
    config: RwLock<DoraConfig>,
    caps: Arc<LabelCaps>,
    gauges: Arc<SnapshotCell>,
    lead: Arc<HistogramCell>,
    recovery: Arc<HistogramCell>,
    changed: tokio::sync::Notify,
    detector: detector::Detector,
    /// Bumped by every recorded deployment that changed the store (alerting re-reads them).
    deployments: std::sync::atomic::AtomicU64,
}

impl Hub {
    /// The hub over the store behind `store`.
    pub async fn open(
        config: DoraConfig,
        store: StoreHandle,
        caps: Arc<LabelCaps>,
    ) -> Result<Arc<Self>, StoreError> {
        let cell = |name, help, ctor: fn() -> Histogram| {
            Arc::new(HistogramCell {
                name,
                help,
                family: RwLock::new(Arc::new(Family::new_with_constructor(ctor))),
            })
        };
        Ok(Arc::new(Self {
            store,
            config: RwLock::new(config),
            caps,
            gauges: Arc::new(SnapshotCell::default()),
            lead: cell(
                "dora_lead_time_seconds",
                "Change lead time: deployment finish - change time, per change (all time in the store)",
                lead_histogram,
            ),
            recovery: cell(
                "dora_recovery_time_seconds",
                "Failed deployment recovery time, per resolved incident (all time in the store)",
                recovery_histogram,
            ),
            changed: tokio::sync::Notify::new(),
            detector: detector::Detector::default(),
            deployments: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    /// Registers the DORA metrics.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(SnapshotCollector(self.gauges.clone())));
        registry.register_collector(Box::new(HistogramCollector(self.lead.clone())));
        registry.register_collector(Box::new(HistogramCollector(self.recovery.clone())));
        self.detector.register(registry);
    }

    /// The change-failure detector's state (`dora.regression`).
    pub fn detector(&self) -> &detector::Detector {
        &self.detector
    }

    /// The current DORA settings.
    pub fn config(&self) -> DoraConfig {
        self.config.read().clone()
    }

    /// Applies reloaded DORA settings (secrets, windows, environment, severities).
    pub fn reconfigure(&self, config: DoraConfig) {
        *self.config.write() = config;
        self.changed.notify_one();
    }

    /// Records one event durably; metrics are recomputed if it changed anything.
    /// A new deployment is also handed to the change-failure detector.
    pub async fn record(&self, batch: Batch) -> Result<Outcome, StoreError> {
        let deployment = batch.deployment.as_ref().map(|(d, _)| d.clone());
        let out = self.store.apply(batch, unix_now()).await?;
        if out.changed() {
            if deployment.is_some() {
                self.deployments
                    .fetch_add(1, std::sync::atomic::Ordering::Release);
            }
            self.changed.notify_one();
        }
        if let (true, Some(d)) = (out.deployment_new, deployment) {
            self.detector.deployed(&d, &self.config());
        }
        Ok(out)
    }

    /// Opens or resolves an incident (for the API, Alertmanager, and the alerting code).
    pub async fn record_incident(&self, change: IncidentChange) -> Result<Outcome, StoreError> {
        self.record(Batch {
            incidents: vec![change],
            ..Batch::default()
        })
        .await
    }

    /// Changes whenever a recorded deployment changed the store (a cheap "anything new?").
    pub fn deployments_generation(&self) -> u64 {
        self.deployments.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A report from the stored history.
    pub async fn report(
        &self,
        now: UnixSeconds,
        window: Window,
        scope: &Scope,
    ) -> Result<Report, StoreError> {
        let events = self.store.load(i64::MIN).await?;
        Ok(report(now, &events, window, scope))
    }

    /// Successful deployments to the configured environment, oldest first (for alerting:
    /// messages name a service's last deployment, and deploy notices). A repeat of the live
    /// version (another event of the same deployment) is left out, as the report counts it.
    pub async fn successful_deployments(&self) -> Result<Vec<Deployment>, StoreError> {
        let env = self.config().environment;
        let events = self.store.load(i64::MIN).await?;
        let mut ok: Vec<Deployment> = events
            .deployments
            .into_iter()
            .filter(|d| d.status == DeployStatus::Success && d.environment == env)
            .collect();
        ok.sort_by(|a, b| {
            (a.finished_at, a.started_at, &a.id).cmp(&(b.finished_at, b.started_at, &b.id))
        });
        let mut live: HashMap<String, String> = HashMap::new();
        ok.retain(|d| {
            let repeat =
                !d.version.is_empty() && live.get(&d.service).is_some_and(|v| *v == d.version);
            live.insert(d.service.clone(), d.version.clone());
            !repeat
        });
        Ok(ok)
    }

    /// The latest deploy events of one service (`GET /api/v1/deployments`).
    pub async fn recent_deployments(
        &self,
        query: crate::store::RecentQuery,
    ) -> Result<Vec<Deployment>, StoreError> {
        self.store.recent_deployments(query).await
    }

    /// Recomputes every metric from the store.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let now = unix_now();
        let events = self.store.load(i64::MIN).await?;
        let cfg = self.config();
        let caps = self.caps.clone();
        let computed = tokio::task::spawn_blocking(move || {
            let mut c = compute(now, &events, &cfg, TierTable::builtin().ok());
            c.snapshot.enforce_caps(&caps);
            c
        })
        .await
        .map_err(|_| StoreError::Closed)?;
        self.gauges.publish(computed.snapshot);
        *self.lead.family.write() = Arc::new(computed.lead);
        *self.recovery.family.write() = Arc::new(computed.recovery);
        Ok(())
    }

    /// Deletes history older than `dora.retention`.
    pub async fn retain(&self) -> Result<usize, StoreError> {
        let keep = i64::try_from(self.config().retention.as_secs()).unwrap_or(i64::MAX);
        self.store.retain(unix_now().saturating_sub(keep)).await
    }

    /// Recomputes on new events and every minute, runs retention daily, until cancelled.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut refresh = tokio::time::interval(REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retention = tokio::time::interval_at(
            tokio::time::Instant::now() + RETENTION_EVERY,
            RETENTION_EVERY,
        );
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = retention.tick() => {
                    match self.retain().await {
                        Ok(n) => tracing::info!(deleted = n, "dora retention applied"),
                        Err(e) => tracing::error!(error = %e, "dora retention failed"),
                    }
                }
                _ = self.changed.notified() => {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(CHANGE_DEBOUNCE) => {}
                    }
                }
                _ = refresh.tick() => {}
            }
            if let Err(e) = self.refresh().await {
                tracing::error!(error = %e, "recomputing DORA metrics failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dora::Change;
    use std::path::Path;

    fn cfg() -> DoraConfig {
        crate::config::load_str(
            "dora: { enabled: true }\n",
            "t",
            Path::new("."),
            &HashMap::<String, String>::new(),
        )
        .expect("config")
        .dora
    }

    #[test]
    fn counters_histograms_and_gauges_from_history() {
        let now = 100 * 86_400;
        let dep = |id: &str, at: i64, sha: &str, commit_at: i64| Deployment {
            id: id.into(),
            service: "api".into(),
            environment: "production".into(),
            version: id.into(),
            commit: sha.into(),
            status: DeployStatus::Success,
            started_at: at - 60,
            finished_at: at,
            commits: vec![Change {
                sha: sha.into(),
                timestamp: commit_at,
                pr_first_commit_at: None,
            }],
            kind: Default::default(),
            fixes_deployment: None,
            resolves_incidents: vec![],
        };
        let events = Events {
            deployments: vec![
                dep("d1", now - 2 * 86_400, "a", now - 2 * 86_400 - 7200),
                dep("d2", now - 86_400, "b", now - 86_400 - 3 * 3600),
            ],
            ..Events::default()
        };
        let table = TierTable::builtin().expect("tiers");
        let c = compute(now, &events, &cfg(), Some(table));
        let fam = c.snapshot.family("dora_deployments").expect("family");
        assert_eq!(fam.samples[0].value, 2.0);
        let freq = c
            .snapshot
            .family("dora_deployment_frequency_per_day")
            .expect("freq");
        let w7 = freq
            .samples
            .iter()
            .find(|s| s.labels.iter().any(|(k, v)| k == "window" && v == "7d"))
            .expect("7d");
        assert!((w7.value - 2.0 / 7.0).abs() < 1e-9);
        let median = c
            .snapshot
            .family("dora_lead_time_median_seconds")
            .expect("lead");
        assert!(
            median
                .samples
                .iter()
                .all(|s| (s.value - 9000.0).abs() < 1e-9)
        );
        let mut text = String::new();
        let mut reg = Registry::default();
        reg.register("dora_lead_time_seconds", "x", c.lead);
        prometheus_client::encoding::text::encode(&mut text, &reg).expect("encode");
        assert!(
            text.contains(
                "dora_lead_time_seconds_count{service=\"api\",environment=\"production\"} 2"
            ),
            "{text}"
        );
    }
}

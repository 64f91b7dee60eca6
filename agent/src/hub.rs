//! The DORA hub (`dora.enabled: true`): the edge around the pure `dora` module. It records
//! events in the [`store`](crate::store) and keeps the history in memory (a [`Model`]: read
//! from the store once at start, then each recorded event as the store wrote it). The DORA
//! metrics are recomputed from the model after new events (one recomputation per burst: 1 s
//! after the first) and every minute, as the windows slide; only the services with new events
//! are worked out again, the links between services (incidents, fixes, findings) only after an
//! event or when an incident or finding starts or resolves — after a deploy event that names no
//! other service's deployment, only its own (service, environment) — and the store is not read.
//! Retention runs on start and daily, in the store and the model alike. It exposes:
//!
//! * counters `dora_deployments_total{service,environment,status}`,
//!   `dora_change_failures_total{service,environment}`,
//!   `dora_rework_deployments_total{service,environment}` and histograms
//!   `dora_lead_time_seconds{service,environment}`, `dora_recovery_time_seconds{..}` — all-time
//!   values over the stored history, so they survive restarts (they only go down when retention
//!   deletes history, which Prometheus treats as a counter reset);
//! * windowed gauges `dora_deployment_frequency_per_day`, `dora_lead_time_median_seconds`,
//!   `dora_change_failure_ratio`, `dora_recovery_time_median_seconds`, `dora_rework_ratio`
//!   `{service,environment,window}` for the configured environment, and
//!   `dora_performance_level{service,environment,metric,level}` (1 for the current level, 0 for
//!   the others) rated on the 30d window (the longest configured window when 30d is not one).
//!
//! The counters are also computed with the all-time report, so `/metrics`, `/api/v1/dora` and
//! `sidelight dora report` always agree.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::TypedMetric;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sidelight_collector::metrics::{
    FamilySnapshot, Kind, LabelCaps, Snapshot, SnapshotCell, SnapshotCollector,
};
use tokio_util::sync::CancellationToken;

pub mod config;
pub mod detector;

pub use config::DoraConfig;

use crate::dora::table::{ABSENT, EMPTY, Inc, Sym};
use crate::dora::tiers::assess;
use crate::dora::{
    DeployStatus, Deployment, Events, History, Incident, Level, Lineage, Links, Metric, Report,
    Scope, Table, TierTable, UnixSeconds, Window,
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

/// How often the metrics are recomputed without new events (the windows slide).
const REFRESH: Duration = Duration::from_secs(60);
/// How long a recomputation waits after an event, so that a burst of events costs one.
const CHANGE_DEBOUNCE: Duration = Duration::from_secs(1);
/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(86_400);

type Labels2 = [(&'static str, String); 2];

fn lead_histogram() -> Histogram {
    Histogram::new(LEAD_TIME_BUCKETS)
}

fn recovery_histogram() -> Histogram {
    Histogram::new(RECOVERY_BUCKETS)
}

fn labels2(service: &str, environment: &str) -> Labels2 {
    [
        ("service", service.to_owned()),
        ("environment", environment.to_owned()),
    ]
}

/// One histogram per (service, environment), as a `Family` would encode them.
pub type HistogramSeries = Vec<(Labels2, Histogram)>;

/// A histogram family replaced whole on each recomputation.
#[derive(Debug)]
struct HistogramCell {
    name: &'static str,
    help: &'static str,
    series: RwLock<Arc<HistogramSeries>>,
}

#[derive(Debug)]
struct HistogramCollector(Arc<HistogramCell>);

impl Collector for HistogramCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let series = self.0.series.read().clone();
        let mut metric =
            encoder.encode_descriptor(self.0.name, self.0.help, None, Histogram::TYPE)?;
        for (labels, histogram) in series.iter() {
            histogram.encode(metric.encode_family(labels)?)?;
        }
        Ok(())
    }
}

/// Most deploy events the model holds; beyond it the oldest are left out of the model (and
/// counted), the store keeping them until retention.
pub const MODEL_MAX_DEPLOYMENTS: usize = 2_000_000;

/// One (service, environment) of the [`Model`].
#[derive(Debug, Default)]
struct ModelGroup {
    /// Its deploy events: indices into the model's table.
    members: Vec<u32>,
    /// Its lineage and `dora_lead_time_seconds` histogram (`None` with no change), as last
    /// built; `None` until built again after a new event.
    built: Option<(Lineage, Option<Histogram>)>,
}

/// What the hub keeps in memory: every stored event (read once at start, then each recorded
/// one as the store wrote it) in a compact [`Table`] (strings interned once, a deploy event a
/// 48-byte record, a change 12 bytes), grouped by (service, environment), with each group's
/// [`Lineage`] — its deployments ordered, deduplicated, changes attributed — built again only
/// when the group gets an event or `now` reaches an event it left out as future. At most
/// [`MODEL_MAX_DEPLOYMENTS`] deploy events.
#[derive(Debug, Default)]
pub struct Model {
    table: Table,
    /// By group index of the table.
    groups: Vec<ModelGroup>,
    /// Deploy events left out to keep within [`MODEL_MAX_DEPLOYMENTS`].
    evicted: u64,
    /// The links of the last histories, by scope, with the groups given deploy events since
    /// (to link again on their own), or `None` when they must be linked anew (an incident,
    /// retention or eviction, a deploy event naming another group, a lineage built again
    /// because time passed one of its events).
    links: Vec<(Scope, Option<Vec<u32>>, Links)>,
    /// Links kept and brought up to date group by group (for tests and benches: that the
    /// incremental path is taken).
    relinked: u64,
    /// Changes on every change the `dora_recovery_time_seconds` series can follow: an incident recorded, retention or eviction, a deploy event whose
    /// delivery id is interned more than once (only then can an incident name it), and a
    /// lineage built again because `now` passed one of its group's events.
    recovery_generation: u64,
    /// The last `dora_recovery_time_seconds` series: recovery generation, `now`, the first
    /// resolution after it, the series.
    recovery: Option<(u64, UnixSeconds, Option<UnixSeconds>, HistogramSeries)>,
}

/// How many scopes' links the model keeps (the hub asks for two; the API for others).
const KEPT_LINKS: usize = 4;

/// What one recorded event changes in the model.
#[derive(Debug, Clone)]
enum ModelChange {
    Deployment(Box<Deployment>),
    Incident(Box<Incident>),
    Retain(UnixSeconds),
}

impl Model {
    /// The model of `events` (as `Store::load` returns them).
    #[must_use]
    pub fn new(events: Events) -> Self {
        let mut model = Self {
            table: Table::from_events(&events),
            ..Self::default()
        };
        drop(events);
        model.bound();
        model.index();
        model
    }

    /// Deploy events held.
    #[must_use]
    pub fn deployments(&self) -> usize {
        self.table.deployments().len()
    }

    /// Deploy events left out to keep within [`MODEL_MAX_DEPLOYMENTS`].
    #[must_use]
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// How many times kept links were brought up to date group by group after deploy events
    /// instead of linking every group anew.
    #[must_use]
    pub fn relinked(&self) -> u64 {
        self.relinked
    }

    /// Bytes the model holds on the heap (events, index, lineages), as laid out.
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        self.table.heap_bytes()
            + self
                .groups
                .iter()
                .map(|g| {
                    g.members.capacity() * std::mem::size_of::<u32>()
                        + g.built.as_ref().map_or(0, |(l, _)| l.heap_bytes())
                })
                .sum::<usize>()
    }

    fn index(&mut self) {
        self.groups = crate::dora::group_members(&self.table)
            .into_iter()
            .map(|members| ModelGroup {
                members,
                built: None,
            })
            .collect();
    }

    /// One [`ModelGroup`] per group of the table (an incident can add a group).
    fn cover_groups(&mut self) {
        let n = self.table.groups().len();
        if self.groups.len() < n {
            self.groups.resize_with(n, ModelGroup::default);
        }
    }

    /// Leaves the oldest deploy events out beyond [`MODEL_MAX_DEPLOYMENTS`]; whether any was.
    fn bound(&mut self) -> bool {
        let recs = self.table.deployments();
        let excess = recs.len().saturating_sub(MODEL_MAX_DEPLOYMENTS);
        if excess == 0 {
            return false;
        }
        self.recovery_generation += 1;
        // The oldest by finish, then in the order given.
        let mut finished: Vec<(UnixSeconds, u32, usize)> = recs
            .iter()
            .enumerate()
            .map(|(e, d)| (d.finished, d.seq, e))
            .collect();
        finished.select_nth_unstable(excess - 1);
        let mut drop = vec![false; finished.len()];
        for &(_, _, e) in &finished[..excess] {
            drop[e] = true;
        }
        let mut k = 0;
        self.table = self.table.filtered(
            |_| {
                k += 1;
                !drop[k - 1]
            },
            |_| true,
            |_| true,
        );
        self.evicted += excess as u64;
        tracing::warn!(
            left_out = excess,
            limit = MODEL_MAX_DEPLOYMENTS,
            "the DORA history holds more deploy events than the hub keeps in memory; the oldest are left out of the metrics and reports"
        );
        true
    }

    fn apply(&mut self, change: ModelChange) {
        match change {
            ModelChange::Deployment(d) => self.add_deployment(*d),
            ModelChange::Incident(i) => self.put_incident(*i),
            ModelChange::Retain(cutoff) => self.retain(cutoff),
        }
    }

    /// Adds a deploy event as the store wrote it.
    pub fn add_deployment(&mut self, d: Deployment) {
        let e = self.table.push_deployment(&d);
        self.cover_groups();
        let mut local = None;
        if let Some(r) = self.table.deployments().get(e as usize) {
            let repeated = self.table.strings().repeated(r.id);
            if repeated {
                self.recovery_generation += 1;
            }
            if let Some(group) = self.groups.get_mut(r.group as usize) {
                group.members.push(e);
                group.built = None;
            }
            // Its links are its group's alone unless another event or a reference holds its
            // id, it fixes another group's deployment, or it resolves incidents.
            let fixes_within = r.fixes == ABSENT
                || self
                    .table
                    .events_with_id(r.fixes)
                    .all(|f| self.table.deployments()[f as usize].group == r.group);
            if !repeated && fixes_within && self.table.resolves_of(e).next().is_none() {
                local = Some(r.group);
            }
        }
        for (_, pending, _) in &mut self.links {
            match (pending.as_mut(), local) {
                (Some(groups), Some(g)) => {
                    if !groups.contains(&g) {
                        groups.push(g);
                    }
                }
                _ => *pending = None,
            }
        }
        if self.bound() {
            self.links.clear();
            self.index();
        }
    }

    /// Adds or replaces (by id) an incident as the store wrote it.
    pub fn put_incident(&mut self, i: Incident) {
        self.table.put_incident(&i);
        self.cover_groups();
        self.recovery_generation += 1;
        self.links.clear();
    }

    /// Drops what the store's retention at `cutoff` deletes.
    pub fn retain(&mut self, cutoff: UnixSeconds) {
        self.recovery_generation += 1;
        self.links.clear();
        self.table = self.table.filtered(
            |d| d.finished >= cutoff,
            |i| i.started >= cutoff || i.resolved.is_some_and(|r| r >= cutoff),
            |_| true,
        );
        self.index();
    }

    /// Builds again the lineages that are not what `now` gives.
    fn build(&mut self, now: UnixSeconds) {
        let table = &self.table;
        let (shas, times) = (table.change_shas(), table.change_times());
        for (g, group) in self.groups.iter_mut().enumerate() {
            match &group.built {
                Some((l, _)) if l.valid_at(now) => continue,
                // `now` passed one of the group's events.
                Some(_) => {
                    self.recovery_generation += 1;
                    self.links.clear();
                }
                None => {}
            }
            let g = u32::try_from(g).unwrap_or(u32::MAX);
            let (lineage, order) = Lineage::build_in_order(table, g, &group.members, now);
            // Each change observed at the first successful deployment that shipped it, in
            // time order.
            let mut lead: Option<Histogram> = None;
            let mut shipped: foldhash::HashSet<Sym> = foldhash::HashSet::default();
            for &e in &order {
                let finished = table.deployments()[e as usize].finished;
                for c in table.changes_of(e) {
                    if shas[c] != EMPTY && !shipped.insert(shas[c]) {
                        continue;
                    }
                    let lead_s = (finished - times[c]).max(0);
                    lead.get_or_insert_with(lead_histogram)
                        .observe(lead_s as f64);
                }
            }
            group.built = Some((lineage, lead));
        }
    }

    /// The links kept for `scope` if they hold at `now` (after [`Model::build`] at `now`),
    /// the groups with new deploy events linked again on their own.
    fn take_links(&mut self, now: UnixSeconds, scope: &Scope) -> Option<Links> {
        let k = self.links.iter().position(|(s, _, _)| s == scope)?;
        let (_, pending, mut links) = self.links.remove(k);
        let groups = &self.groups;
        let lineage_of = |g: u32| groups.get(g as usize)?.built.as_ref().map(|b| &b.0);
        let pending = pending?;
        if !links.relink(now, &self.table, scope, &pending, lineage_of) {
            return None;
        }
        if !pending.is_empty() {
            self.relinked += 1;
        }
        Some(links)
    }

    /// Keeps the links of a history in `scope` for the next computation.
    fn keep_links(&mut self, scope: Scope, links: Links) {
        if self.links.len() >= KEPT_LINKS {
            self.links.remove(0);
        }
        self.links.push((scope, Some(Vec::new()), links));
    }

    /// The history in `scope` at `now` (after [`Model::build`] at `now`), from `kept` links
    /// (see [`Model::take_links`]) or linked anew.
    fn history(&self, now: UnixSeconds, scope: &Scope, kept: Option<Links>) -> History<'_> {
        match kept {
            Some(links) => History::resume(links, now, &self.table, |g| {
                self.groups.get(g as usize)?.built.as_ref().map(|b| &b.0)
            }),
            None => {
                let lineages = self
                    .groups
                    .iter()
                    .filter_map(|g| g.built.as_ref().map(|b| &b.0));
                History::link(now, lineages, &self.table, scope)
            }
        }
    }

    /// The report over `window` at `now` in `scope`.
    pub fn report(&mut self, now: UnixSeconds, window: Window, scope: &Scope) -> Report {
        self.build(now);
        let kept = self.take_links(now, scope);
        let history = self.history(now, scope, kept);
        let report = history.report(window);
        let links = history.into_links();
        self.keep_links(scope.clone(), links);
        report
    }

    /// The successful deploy events of `environment`, as given, in the order given.
    fn successful(&self, environment: &str) -> Vec<Deployment> {
        let Some(env) = self.table.strings().get(environment) else {
            return Vec::new();
        };
        let groups = self.table.groups();
        let mut found: Vec<(u32, u32)> = self
            .table
            .deployments()
            .iter()
            .enumerate()
            .filter(|(_, d)| {
                d.status == DeployStatus::Success
                    && groups.get(d.group as usize).is_some_and(|&(_, e)| e == env)
            })
            .filter_map(|(e, d)| Some((d.seq, u32::try_from(e).ok()?)))
            .collect();
        found.sort_unstable();
        found
            .into_iter()
            .filter_map(|(_, e)| self.table.deployment(e))
            .collect()
    }

    /// The latest deploy events of one service, newest first (by finish time, then id).
    fn recent(&self, query: &crate::store::RecentQuery) -> Vec<Deployment> {
        let strings = self.table.strings();
        let (Some(service), Some(environment)) =
            (strings.get(&query.service), strings.get(&query.environment))
        else {
            return Vec::new();
        };
        let groups = self.table.groups();
        let mut found: Vec<(UnixSeconds, &str, u32)> = self
            .table
            .deployments()
            .iter()
            .enumerate()
            .filter(|(_, d)| {
                groups.get(d.group as usize) == Some(&(service, environment))
                    && (!query.success_only || d.status == DeployStatus::Success)
            })
            .map(|(e, d)| {
                (
                    d.finished,
                    self.table.str(d.id),
                    u32::try_from(e).unwrap_or(0),
                )
            })
            .collect();
        found.sort_by(|a, b| (b.0, b.1).cmp(&(a.0, a.1)));
        found
            .into_iter()
            .take(query.limit)
            .filter_map(|(_, _, e)| self.table.deployment(e))
            .collect()
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
    pub lead: HistogramSeries,
    /// `dora_recovery_time_seconds`.
    pub recovery: HistogramSeries,
}

/// The window performance levels are rated on.
pub fn rating_window(windows: &[Window]) -> Window {
    if windows.contains(&Window::days(30)) {
        Window::days(30)
    } else {
        windows.iter().copied().max().unwrap_or(Window::days(30))
    }
}

/// Computes every DORA metric from a history (pure; the hub keeps a [`Model`] instead).
pub fn compute(
    now: UnixSeconds,
    events: &Events,
    cfg: &DoraConfig,
    table: Option<&TierTable>,
) -> Computed {
    compute_on(&mut Model::new(events.clone()), now, cfg, table)
}

/// Computes every DORA metric from the model at `now`.
pub fn compute_on(
    model: &mut Model,
    now: UnixSeconds,
    cfg: &DoraConfig,
    table: Option<&TierTable>,
) -> Computed {
    model.build(now);
    let all_scope = Scope::default();
    let env_scope = Scope::environment(&cfg.environment);
    let kept_all = model.take_links(now, &all_scope);
    let kept_env = model.take_links(now, &env_scope);
    let kept_recovery = model
        .recovery
        .take()
        .filter(|&(generation, at, until, _)| {
            generation == model.recovery_generation && now >= at && until.is_none_or(|t| t > now)
        })
        .map(|(_, at, until, series)| (at, until, series));
    let (computed, links_all, links_env, recovery) =
        compute_at(model, now, cfg, table, [kept_all, kept_env], kept_recovery);
    model.keep_links(all_scope, links_all);
    model.keep_links(env_scope, links_env);
    model.recovery = Some((
        model.recovery_generation,
        recovery.0,
        recovery.1,
        recovery.2,
    ));
    computed
}

/// The `dora_recovery_time_seconds` series at a `now`: (that `now`, the first resolution
/// after it, the series).
type RecoverySeries = (UnixSeconds, Option<UnixSeconds>, HistogramSeries);

/// [`compute_on`] once the lineages are built: from the links and recovery series kept, if
/// any (all scopes, then the configured environment's), and giving them back.
fn compute_at(
    model: &Model,
    now: UnixSeconds,
    cfg: &DoraConfig,
    table: Option<&TierTable>,
    [kept_all, kept_env]: [Option<Links>; 2],
    kept_recovery: Option<RecoverySeries>,
) -> (Computed, Links, Links, RecoverySeries) {
    let events = &model.table;
    let all_history = model.history(now, &Scope::default(), kept_all);
    let all_time = all_history.counts(Window::days(Window::MAX_DAYS));
    let mut deployments = FamilySnapshot::new(
        "dora_deployments",
        "Deployments (status success, after dedup: a redelivery or a repeat of the live version is one) and failed deploy attempts (status failure), by service and environment",
        Kind::Counter,
    );
    let mut counts: HashMap<(&str, &str, &str), u64> = HashMap::new();
    for &(service, environment, n, _, _) in &all_time {
        if n > 0 {
            counts.insert((service, environment, "success"), n);
        }
    }
    for (g, group) in model.groups.iter().enumerate() {
        let failures = group.built.as_ref().map_or(0, |(l, _)| l.failures());
        let Some(&(service, environment)) = events.groups().get(g).filter(|_| failures > 0) else {
            continue;
        };
        *counts
            .entry((events.str(service), events.str(environment), "failure"))
            .or_default() += failures;
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
    for &(service, environment, _, failed, reworked) in &all_time {
        failures.push(labels2(service, environment), failed as f64);
        rework.push(labels2(service, environment), reworked as f64);
    }

    // Lead times: each change at the first successful deployment that shipped it, kept per
    // group with its lineage.
    let lead: HistogramSeries = model
        .groups
        .iter()
        .enumerate()
        .filter_map(|(g, group)| {
            let histogram = group.built.as_ref()?.1.clone()?;
            let &(service, environment) = events.groups().get(g)?;
            Some((
                labels2(events.str(service), events.str(environment)),
                histogram,
            ))
        })
        .collect();

    let recovery = kept_recovery
        .map(|(_, until, series)| (now, until, series))
        .unwrap_or_else(|| {
            (
                now,
                next_resolution(events, now),
                recovery_series(events, now),
            )
        });
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
    let env_scope = Scope::environment(&cfg.environment);
    // With one environment both scopes hold the same groups: link once.
    let history = if kept_env.is_none() && env_scope.same_groups(&Scope::default(), events) {
        all_history.clone()
    } else {
        model.history(now, &env_scope, kept_env)
    };
    let rate_on = rating_window(&cfg.windows);
    for &w in &cfg.windows {
        let rep: Report = history.service_report(w);
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
    let mut held = FamilySnapshot::new(
        "sidelight_dora_history_deployments",
        "Deploy events the hub holds in memory (at most 2,000,000)",
        Kind::Gauge,
    );
    held.push([], model.deployments() as f64);
    let mut evicted = FamilySnapshot::new(
        "sidelight_dora_history_evicted",
        "Oldest deploy events left out of the hub's memory (and so of metrics and reports) to keep within its limit",
        Kind::Counter,
    );
    evicted.push([], model.evicted() as f64);
    let computed = Computed {
        snapshot: Snapshot {
            families: vec![
                held,
                evicted,
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
        recovery: recovery.2.clone(),
    };
    let links_all = all_history.into_links();
    (computed, links_all, history.into_links(), recovery)
}

/// The first time after `now` an incident resolves.
fn next_resolution(events: &Table, now: UnixSeconds) -> Option<UnixSeconds> {
    events
        .incidents()
        .iter()
        .filter_map(|i| i.resolved)
        .filter(|&r| r > now)
        .min()
}

/// `dora_recovery_time_seconds`: the recovery time of each incident resolved by `now`, from
/// the failing deployment's finish when the incident names one (the latest successful deploy
/// event with that id).
fn recovery_series(events: &Table, now: UnixSeconds) -> HistogramSeries {
    let resolved = |i: &&Inc| i.resolved.is_some_and(|r| r <= now);
    let named: foldhash::HashSet<Sym> = events
        .incidents()
        .iter()
        .filter(resolved)
        .map(|i| i.deployment)
        .filter(|&d| d != ABSENT)
        .collect();
    let mut failing: foldhash::HashMap<Sym, UnixSeconds> = foldhash::HashMap::default();
    let recs = events.deployments();
    for &id in &named {
        for e in events.events_with_id(id) {
            let Some(d) = recs.get(e as usize) else {
                continue;
            };
            if d.status == DeployStatus::Success && d.finished <= now {
                let at = failing.entry(id).or_insert(d.finished);
                *at = (*at).max(d.finished);
            }
        }
    }
    let mut recovery: BTreeMap<(&str, &str), Histogram> = BTreeMap::new();
    for i in events.incidents().iter().filter(resolved) {
        let Some(r) = i.resolved else { continue };
        let from = failing
            .get(&i.deployment)
            .map_or(i.started, |&f| i.started.min(f));
        let Some(&(service, environment)) = events.groups().get(i.group as usize) else {
            continue;
        };
        recovery
            .entry((events.str(service), events.str(environment)))
            .or_insert_with(recovery_histogram)
            .observe((r - from).max(0) as f64);
    }
    recovery
        .into_iter()
        .map(|((service, environment), h)| (labels2(service, environment), h))
        .collect()
}

/// The running hub.
#[derive(Debug)]
pub struct Hub {
    store: StoreHandle,
    /// The history in memory; worked on off the async runtime.
    model: Arc<Mutex<Model>>,
    /// Changes recorded but not yet applied to the model (taken by the next computation, so
    /// that recording never waits for one).
    pending: Arc<Mutex<Vec<ModelChange>>>,
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
    /// The hub over the store behind `store`: reads the stored history into memory, the one
    /// time the hub reads it.
    pub async fn open(
        config: DoraConfig,
        store: StoreHandle,
        caps: Arc<LabelCaps>,
    ) -> Result<Arc<Self>, StoreError> {
        let events = store.load(i64::MIN).await?;
        let model = tokio::task::spawn_blocking(move || Model::new(events))
            .await
            .map_err(|_| StoreError::Closed)?;
        let cell = |name, help| {
            Arc::new(HistogramCell {
                name,
                help,
                series: RwLock::new(Arc::new(Vec::new())),
            })
        };
        Ok(Arc::new(Self {
            store,
            model: Arc::new(Mutex::new(model)),
            pending: Arc::new(Mutex::new(Vec::new())),
            config: RwLock::new(config),
            caps,
            gauges: Arc::new(SnapshotCell::default()),
            lead: cell(
                "dora_lead_time_seconds",
                "Change lead time: deployment finish - change time, per change (all time in the store)",
            ),
            recovery: cell(
                "dora_recovery_time_seconds",
                "Failed deployment recovery time, per resolved incident (all time in the store)",
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

    /// Records one event durably, then in the model; metrics are recomputed if it changed
    /// anything. A new deployment is also handed to the change-failure detector.
    pub async fn record(&self, batch: Batch) -> Result<Outcome, StoreError> {
        let deployment = batch.deployment.as_ref().map(|(d, _)| d.clone());
        let out = self.store.apply(batch, unix_now()).await?;
        {
            let mut pending = self.pending.lock();
            if let Some(d) = &out.stored_deployment {
                pending.push(ModelChange::Deployment(Box::new(d.clone())));
            }
            for i in &out.stored_incidents {
                pending.push(ModelChange::Incident(Box::new(i.clone())));
            }
        }
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

    /// Runs `work` on the model (with every recorded change applied) off the async runtime.
    async fn with_model<R: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Model) -> R + Send + 'static,
    ) -> Result<R, StoreError> {
        let model = self.model.clone();
        let pending = self.pending.clone();
        tokio::task::spawn_blocking(move || {
            let mut model = model.lock();
            for change in std::mem::take(&mut *pending.lock()) {
                model.apply(change);
            }
            work(&mut model)
        })
        .await
        .map_err(|_| StoreError::Closed)
    }

    /// A report from the history in memory.
    pub async fn report(
        &self,
        now: UnixSeconds,
        window: Window,
        scope: &Scope,
    ) -> Result<Report, StoreError> {
        let scope = scope.clone();
        self.with_model(move |m| m.report(now, window, &scope))
            .await
    }

    /// Successful deployments to the configured environment, oldest first (for alerting:
    /// messages name a service's last deployment, and deploy notices). A repeat of the live
    /// version (another event of the same deployment) is left out, as the report counts it.
    pub async fn successful_deployments(&self) -> Result<Vec<Deployment>, StoreError> {
        let env = self.config().environment;
        let mut ok: Vec<Deployment> = self.with_model(move |m| m.successful(&env)).await?;
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

    /// The latest deploy events of one service (`GET /api/v1/deployments`), newest first (by
    /// finish time, then id), from the history in memory.
    pub async fn recent_deployments(
        &self,
        query: crate::store::RecentQuery,
    ) -> Result<Vec<Deployment>, StoreError> {
        self.with_model(move |m| m.recent(&query)).await
    }

    /// Recomputes every metric from the history in memory.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let now = unix_now();
        let cfg = self.config();
        let caps = self.caps.clone();
        let computed = self
            .with_model(move |m| {
                let mut c = compute_on(m, now, &cfg, TierTable::builtin().ok());
                c.snapshot.enforce_caps(&caps);
                c
            })
            .await?;
        self.gauges.publish(computed.snapshot);
        *self.lead.series.write() = Arc::new(computed.lead);
        *self.recovery.series.write() = Arc::new(computed.recovery);
        Ok(())
    }

    /// Deletes history older than `dora.retention`, in the store and the model.
    pub async fn retain(&self) -> Result<usize, StoreError> {
        let keep = i64::try_from(self.config().retention.as_secs()).unwrap_or(i64::MAX);
        let cutoff = unix_now().saturating_sub(keep);
        let n = self.store.retain(cutoff).await?;
        self.pending.lock().push(ModelChange::Retain(cutoff));
        Ok(n)
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
        let text = exposition(c);
        assert!(
            text.contains(
                "dora_lead_time_seconds_count{service=\"api\",environment=\"production\"} 2"
            ),
            "{text}"
        );
    }

    /// The exposition of a computation, its lines sorted (a family's series come in any order).
    fn exposition(c: Computed) -> String {
        let mut reg = Registry::default();
        reg.register_collector(Box::new(SnapshotCollector(Arc::new(
            SnapshotCell::default(),
        ))));
        let gauges = Arc::new(SnapshotCell::default());
        gauges.publish(c.snapshot);
        reg.register_collector(Box::new(SnapshotCollector(gauges)));
        for (name, series) in [
            ("dora_lead_time_seconds", c.lead),
            ("dora_recovery_time_seconds", c.recovery),
        ] {
            reg.register_collector(Box::new(HistogramCollector(Arc::new(HistogramCell {
                name,
                help: "x",
                series: RwLock::new(Arc::new(series)),
            }))));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).expect("encode");
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort_unstable();
        lines.join("\n")
    }

    /// A deployment of service `s{service}` finished at `finished`, its version, commit,
    /// status, start and changes drawn from `next`; a normal deployment fixing nothing.
    fn random_deployment(
        next: &mut impl FnMut(i64) -> i64,
        id: String,
        service: i64,
        environment: &str,
        finished: i64,
    ) -> Deployment {
        Deployment {
            id,
            service: format!("s{service}"),
            environment: environment.into(),
            version: format!("v{}", next(8)),
            commit: format!("c{}", next(40)),
            status: [DeployStatus::Success, DeployStatus::Failure][usize::from(next(6) == 0)],
            started_at: finished - next(600),
            finished_at: finished,
            commits: (0..next(4))
                .map(|_| Change {
                    sha: format!("c{}", next(40)),
                    timestamp: finished - next(5 * 86_400),
                    pr_first_commit_at: None,
                })
                .collect(),
            kind: crate::dora::DeploymentKind::Normal,
            fixes_deployment: None,
            resolves_incidents: vec![],
        }
    }

    fn random_history(seed: u64, n: usize, now: i64) -> Events {
        let mut next = crate::dora::test_random(seed);
        let mut e = Events::default();
        for k in 0..n {
            let finished = now - next(40 * 86_400) + next(86_400);
            let s = next(3);
            let environment = ["production", "staging"][usize::from(next(4) == 0)];
            let mut d = random_deployment(&mut next, format!("d{k}"), s, environment, finished);
            d.kind = match next(10) {
                0 => crate::dora::DeploymentKind::Hotfix,
                1 => crate::dora::DeploymentKind::Rollback,
                _ => crate::dora::DeploymentKind::Normal,
            };
            e.deployments.push(d);
            if k % 3 == 0 {
                let started = now - next(40 * 86_400) + next(86_400);
                e.incidents.push(crate::dora::Incident {
                    id: format!("i{k}"),
                    service: format!("s{}", next(3)),
                    environment: "production".into(),
                    started_at: started,
                    resolved_at: (next(3) != 0).then(|| started + next(86_400)),
                    deployment_id: (next(2) == 0).then(|| format!("d{}", next(n as i64 + 1))),
                    commit: (next(3) == 0).then(|| format!("c{}", next(40))),
                    resolved_by_deployment: None,
                });
            }
        }
        e
    }

    /// The model kept up to date event by event, with time passing (future events coming
    /// due, incidents resolving), publishes exactly what a computation over the whole
    /// history at that time gives.
    #[test]
    fn the_model_kept_up_to_date_equals_a_computation_from_scratch() {
        let table = TierTable::builtin().expect("tiers");
        for seed in 0..12_u64 {
            let now = 100 * 86_400;
            let all = random_history(seed, 150, now);
            let (first, later) = all.deployments.split_at(100);
            let mut model = Model::new(Events {
                deployments: first.to_vec(),
                incidents: all.incidents.clone(),
                ..Events::default()
            });
            let mut t = now - 2 * 86_400;
            let mut seen = Events {
                deployments: first.to_vec(),
                incidents: all.incidents.clone(),
                ..Events::default()
            };
            for (k, d) in later.iter().enumerate() {
                model.apply(ModelChange::Deployment(Box::new(d.clone())));
                seen.deployments.push(d.clone());
                if k % 10 == 0 {
                    t += 9 * 3600;
                    let got = exposition(compute_on(&mut model, t, &cfg(), Some(table)));
                    let want = exposition(compute(t, &seen, &cfg(), Some(table)));
                    assert_eq!(got, want, "seed {seed}, event {k}, now {t}");
                    for w in Window::DEFAULTS {
                        let scope = Scope::environment("production");
                        assert_eq!(
                            model.report(t, w, &scope),
                            crate::dora::report(t, &seen, w, &scope)
                        );
                    }
                }
            }
            // A report asked for an earlier time, then the current one again.
            let scope = Scope::default();
            let earlier = now - 20 * 86_400;
            assert_eq!(
                model.report(earlier, Window::days(7), &scope),
                crate::dora::report(earlier, &seen, Window::days(7), &scope)
            );
            let incident = crate::dora::Incident {
                id: "late".into(),
                service: "s1".into(),
                environment: "production".into(),
                started_at: t - 3600,
                resolved_at: Some(t + 1800),
                deployment_id: Some("d120".into()),
                commit: None,
                resolved_by_deployment: None,
            };
            model.apply(ModelChange::Incident(Box::new(incident.clone())));
            seen.incidents.push(incident);
            model.apply(ModelChange::Retain(now - 30 * 86_400));
            let cutoff = now - 30 * 86_400;
            seen.deployments.retain(|d| d.finished_at >= cutoff);
            seen.incidents
                .retain(|i| i.started_at >= cutoff || i.resolved_at.is_some_and(|r| r >= cutoff));
            for t in [t, t + 3600] {
                let got = exposition(compute_on(&mut model, t, &cfg(), Some(table)));
                let want = exposition(compute(t, &seen, &cfg(), Some(table)));
                assert_eq!(got, want, "seed {seed}, after retention, now {t}");
            }
        }
    }

    /// Deploy events of several services interleaved, some naming their own group's or
    /// another group's deployments, incidents naming deployments and commits: after every
    /// event the model (its links brought up to date group by group where it can) publishes
    /// and reports exactly what a computation from scratch gives.
    #[test]
    fn interleaved_services_kept_up_to_date_equal_a_computation_from_scratch() {
        let table = TierTable::builtin().expect("tiers");
        let mut relinked = 0;
        for seed in 0..6_u64 {
            let mut next = crate::dora::test_random(seed ^ 0x5eed);
            let mut t = 60 * 86_400;
            let base = random_history(seed, 90, t);
            let mut model = Model::new(base.clone());
            let mut seen = base;
            for k in 0..60 {
                t += next(1800);
                let s = next(4);
                let environment = ["production", "staging"][usize::from(next(5) == 0)];
                let finished = t - next(4 * 3600);
                let kind = match next(8) {
                    0 => crate::dora::DeploymentKind::Hotfix,
                    1 => crate::dora::DeploymentKind::Rollback,
                    _ => crate::dora::DeploymentKind::Normal,
                };
                // Mostly fresh ids; some repeat one already held (a redelivery), some fix
                // an earlier deployment of any service.
                let id = if next(12) == 0 {
                    format!("d{}", next(90))
                } else {
                    format!("n{seed}-{k}")
                };
                let fixes_deployment = (kind != crate::dora::DeploymentKind::Normal
                    && next(2) == 0)
                    .then(|| format!("d{}", next(90)));
                let mut d = random_deployment(&mut next, id, s, environment, finished);
                d.kind = kind;
                d.fixes_deployment = fixes_deployment;
                model.apply(ModelChange::Deployment(Box::new(d.clone())));
                seen.deployments.push(d);
                let got = exposition(compute_on(&mut model, t, &cfg(), Some(table)));
                let want = exposition(compute(t, &seen, &cfg(), Some(table)));
                assert_eq!(got, want, "seed {seed}, event {k}, now {t}");
                if k % 7 == 0 {
                    for scope in [Scope::default(), Scope::environment("staging")] {
                        let w = Window::days(30);
                        assert_eq!(
                            model.report(t, w, &scope),
                            crate::dora::report(t, &seen, w, &scope),
                            "seed {seed}, event {k}, {scope:?}"
                        );
                    }
                }
            }
            relinked += model.relinked();
        }
        assert!(
            relinked > 0,
            "the links were never brought up to date group by group"
        );
    }
}

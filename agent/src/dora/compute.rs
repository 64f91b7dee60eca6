//! Pure DORA computation: from deployment, incident and regression events to the five
//! metrics per (service, environment) over a trailing window. No IO, no clock: `now` is
//! a parameter and every event after it is ignored.
//!
//! # Rules (where DESIGN.md §4 leaves room, this is what is implemented)
//!
//! * **Window.** `(now - window, now]`: start exclusive, end inclusive, at most
//!   65 535 days (a longest window serves as "all time" for counter totals). Deployments
//!   finished, incidents and findings started after `now` (future or skewed clocks) are
//!   ignored entirely.
//! * **Deployment.** A `Success` event matching the [`Scope`] (the configured environment,
//!   optionally one service) with `finished_at <= now`; it belongs to the window of its
//!   `finished_at`. Events are sorted by `(finished_at, started_at, id)` whatever their
//!   arrival order, so late events land where they belong.
//! * **Dedup.** Within a (service, environment), an event whose non-empty delivery id was
//!   already seen, or whose non-empty version is the version live at the time (the last
//!   counted deployment's), is a duplicate of that earlier deployment: it is not counted,
//!   but its commits are added to the earlier deployment's changes and its id still
//!   resolves to it (for incident links). Failed attempts are not deployments, so a
//!   success after a failure of the same version counts.
//! * **Rollback by version.** A deployment whose version was first deployed before the
//!   live version was first deployed is a rollback: it counts as a deployment, blames the
//!   deployment it replaces like a `rollback` without `fixes_deployment`, and is rework
//!   when an in-scope incident of its service and environment was open while it was
//!   deployed. A version first deployed after the live one (rolling forward again) is a
//!   plain deployment.
//! * **Changes and lead time.** A deployment's changes are its `commits` (and those of its
//!   duplicates) that no earlier deployment of the same (service, environment) shipped:
//!   a commit deployed twice counts at its first deployment, including a first deployment
//!   before the window (then it is not counted in the window at all). Lead time =
//!   `finished_at - change time`, where change time is `pr_first_commit_at` when known
//!   (squash merges), else the commit time. A negative lead (commit clock ahead of the
//!   deploy clock) is clamped to 0, still counted, and tallied in `changes_clamped`.
//!   Commits with an empty sha are never deduplicated. The head `commit` of a deployment
//!   is not a change (it carries no time) but is used to link incidents.
//!   Median and p90 use linear interpolation between closest ranks (numpy's default,
//!   BigQuery's `PERCENTILE_CONT`).
//! * **Frequency.** `deployments / window days`, always defined (0 when none). The
//!   Four Keys class follows Four Keys' query over the window instead of a fixed
//!   3 months: take every UTC calendar week (Monday start) that intersects the window's
//!   days, with weeks without deployments included; for each week count distinct UTC days
//!   with a deployment and whether it had one; for each calendar month (of the week's
//!   Monday) count the weeks that had one. Then, with medians over weeks: distinct days
//!   per week ≥ 3 → `Daily`; else week-had-a-deployment ≥ 1 → `Weekly`; else weeks with a
//!   deployment in the week's month ≥ 1 → `Monthly`; else `Yearly`. `None` with no
//!   deployment in the window. The class is coarse on 1d and 7d windows by construction.
//! * **Change failure.** A deployment in the window failed if, at or before `now`, any of:
//!   an in-scope incident names its delivery id (or a duplicate's), or names a commit it
//!   first shipped (head commit or change) in the incident's service and environment —
//!   `deployment_id` wins over `commit` when both are given; the next deployment of the
//!   same service and environment is a hotfix or rollback (by kind or by version) without
//!   `fixes_deployment`; a
//!   hotfix or rollback names it in `fixes_deployment` (an unknown id there blames
//!   nothing); a [`RegressionFinding`] names it. Causes are taken up to `now`, so a
//!   deployment can turn failed in a later report. Links are by delivery id across
//!   services (an incident on `web` may blame an `api` deployment); commit links stay in
//!   the incident's own service and environment. Kind, `fixes_deployment` and head commit
//!   of a deduplicated deployment are its first event's.
//!   Rate = failed deployments in the window / deployments in the window; `None` with none.
//! * **Recovery time.** For each in-scope incident resolved inside the window (an incident
//!   counts in the window of its resolution, wherever it started): `resolved_at -
//!   min(started_at, finished_at of the deployment it is linked to)`, clamped at 0. An
//!   incident without a linked deployment counts here (from its own start) but not for
//!   change failure. Unresolved incidents (or resolved after `now`) are excluded and
//!   tallied in `incidents_open`. A regression finding counts as an incident only if no
//!   explicit incident is linked to the same deployment, and only the earliest finding per
//!   deployment counts (explicit reports win, nothing is counted twice). Median and p90.
//! * **Rework.** A deployment in the window is rework if its kind is hotfix or rollback,
//!   or it resolves an in-scope incident (`Deployment::resolves_incidents` or
//!   `Incident::resolved_by_deployment`) that was open while it was deployed:
//!   `incident.started_at <= finished_at` and the incident was not resolved before
//!   `started_at`. Rate = rework deployments / deployments; `None` with none.
//! * **Rows.** One [`ServiceReport`] per (service, environment) in scope that has any
//!   deployment or incident at or before `now` (so a service idle in the window shows up
//!   with zero deployments and `None` metrics), sorted by service then environment.

use std::collections::BTreeMap;
use std::fmt;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use serde::{Deserialize, Serialize};

use super::model::{DeployStatus, Deployment, DeploymentKind, Events, Incident, UnixSeconds};
use super::table::{ABSENT, EMPTY, Finding, Inc, Sym, Table};

/// Seconds in a day.
pub const DAY: i64 = 86_400;

/// A trailing report window: a positive number of seconds, at most [`Window::MAX_DAYS`] days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Window {
    seconds: i64,
}

/// Errors from building or parsing a [`Window`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// Zero or negative length.
    #[error("window must be positive, got {0} seconds")]
    NotPositive(i64),
    /// Longer than [`Window::MAX_DAYS`].
    #[error("window must be at most {max} days, got {0} seconds", max = Window::MAX_DAYS)]
    TooLong(i64),
    /// Not `<integer><s|m|h|d|w>`.
    #[error("invalid window {0:?}: expected e.g. 1d, 7d, 30d, 90d, 12h")]
    Syntax(String),
}

impl Window {
    /// The windows reported by default: 1d, 7d, 30d, 90d.
    pub const DEFAULTS: [Self; 4] = [Self::days(1), Self::days(7), Self::days(30), Self::days(90)];

    /// The longest window, about 179 years.
    pub const MAX_DAYS: u16 = u16::MAX;

    /// A window of `n` days.
    #[must_use]
    pub const fn days(n: u16) -> Self {
        Self {
            seconds: n as i64 * DAY,
        }
    }

    /// A window of `seconds`.
    ///
    /// # Errors
    /// [`WindowError::NotPositive`] for zero or negative lengths, [`WindowError::TooLong`]
    /// beyond [`Window::MAX_DAYS`].
    pub fn from_seconds(seconds: i64) -> Result<Self, WindowError> {
        if seconds <= 0 {
            Err(WindowError::NotPositive(seconds))
        } else if seconds > Self::days(Self::MAX_DAYS).seconds {
            Err(WindowError::TooLong(seconds))
        } else {
            Ok(Self { seconds })
        }
    }

    /// Parses `30d`, `7d`, `12h`, `2w`, `90m`, `3600s`.
    ///
    /// # Errors
    /// [`WindowError`] on bad syntax or a non-positive length.
    pub fn parse(text: &str) -> Result<Self, WindowError> {
        let syntax = || WindowError::Syntax(text.to_owned());
        let split = text.len().checked_sub(1).ok_or_else(syntax)?;
        let (number, unit) = text.split_at_checked(split).ok_or_else(syntax)?;
        let scale = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => DAY,
            "w" => 7 * DAY,
            _ => return Err(syntax()),
        };
        let n: i64 = number.parse().map_err(|_| syntax())?;
        Self::from_seconds(n.checked_mul(scale).ok_or_else(syntax)?)
    }

    /// Length in seconds.
    #[must_use]
    pub fn seconds(self) -> i64 {
        self.seconds
    }

    /// Length in days, fractional.
    #[must_use]
    pub fn days_f64(self) -> f64 {
        self.seconds as f64 / DAY as f64
    }
}

impl fmt::Display for Window {
    /// The label used in `{window}` metric labels: `30d`, `12h`, `90m` or `45s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.seconds;
        if s % DAY == 0 {
            write!(f, "{}d", s / DAY)
        } else if s % 3600 == 0 {
            write!(f, "{}h", s / 3600)
        } else if s % 60 == 0 {
            write!(f, "{}m", s / 60)
        } else {
            write!(f, "{s}s")
        }
    }
}

impl TryFrom<i64> for Window {
    type Error = WindowError;
    fn try_from(seconds: i64) -> Result<Self, Self::Error> {
        Self::from_seconds(seconds)
    }
}

impl From<Window> for i64 {
    fn from(w: Window) -> Self {
        w.seconds
    }
}

/// Which events a report covers. `None` means any.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Scope {
    /// The configured DORA environment (`dora.environment`, default `production`).
    pub environment: Option<String>,
    /// One service only (`--service`).
    pub service: Option<String>,
}

impl Scope {
    /// Every service in `environment`.
    #[must_use]
    pub fn environment(environment: &str) -> Self {
        Self {
            environment: Some(environment.to_owned()),
            service: None,
        }
    }

    /// Narrows to one service.
    #[must_use]
    pub fn with_service(mut self, service: &str) -> Self {
        self.service = Some(service.to_owned());
        self
    }

    /// Whether an event of `service` in `environment` is in scope.
    #[must_use]
    pub fn matches(&self, service: &str, environment: &str) -> bool {
        self.environment.as_deref().is_none_or(|e| e == environment)
            && self.service.as_deref().is_none_or(|s| s == service)
    }
}

/// Four Keys' deployment frequency class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrequencyClass {
    /// Median distinct deploy days per week ≥ 3.
    Daily,
    /// Most weeks have a deployment.
    Weekly,
    /// Median weeks-with-a-deployment per month ≥ 1.
    Monthly,
    /// Less often.
    Yearly,
}

/// The DORA metrics of one (service, environment) over one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceReport {
    /// Service.
    pub service: String,
    /// Environment.
    pub environment: String,
    /// Deployments in the window, after dedup.
    pub deployments: u64,
    /// Deployments per day over the window.
    pub deployment_frequency_per_day: f64,
    /// Four Keys class; `None` without deployments.
    pub deployment_frequency_class: Option<FrequencyClass>,
    /// Changes first deployed in the window.
    pub changes: u64,
    /// Of those, how many had a negative lead time clamped to 0.
    pub changes_clamped: u64,
    /// Median change lead time, seconds.
    pub lead_time_median_seconds: Option<f64>,
    /// 90th percentile change lead time, seconds.
    pub lead_time_p90_seconds: Option<f64>,
    /// Deployments in the window that caused a failure.
    pub failed_deployments: u64,
    /// `failed_deployments / deployments`.
    pub change_fail_rate: Option<f64>,
    /// Incidents (and counted regression findings) resolved in the window.
    pub incidents_resolved: u64,
    /// Incidents (and counted regression findings) unresolved at `now`.
    pub incidents_open: u64,
    /// Median failed deployment recovery time, seconds.
    pub recovery_time_median_seconds: Option<f64>,
    /// 90th percentile recovery time, seconds.
    pub recovery_time_p90_seconds: Option<f64>,
    /// Deployments in the window that were unplanned fixes.
    pub rework_deployments: u64,
    /// `rework_deployments / deployments`.
    pub rework_rate: Option<f64>,
}

/// A DORA report over one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The `now` it was computed at.
    pub now: UnixSeconds,
    /// The window.
    pub window: Window,
    /// Exclusive start of the window, `now - window`.
    pub window_start: UnixSeconds,
    /// One row per (service, environment), sorted.
    pub services: Vec<ServiceReport>,
    /// One row per environment pooling every service in scope (`service` is
    /// [`ALL_SERVICES`]): counts are summed and medians are taken over all the changes and
    /// incidents, not over the services' medians. Sorted by environment.
    pub totals: Vec<ServiceReport>,
}

/// The `service` of a [`Report::totals`] row.
pub const ALL_SERVICES: &str = "*";

/// A deployment's position: (group of a [`History`], index in its lineage's deployments).
type DepRef = (usize, usize);

/// One counted deployment of a [`Lineage`].
#[derive(Debug, Clone, Copy)]
struct Dep {
    finished: UnixSeconds,
    /// Its first event (index into the table's deploy events; its start time is there).
    event: u32,
    /// End of the changes it first shipped in [`Lineage::shipped`] (they start where the
    /// previous deployment's end).
    leads_end: u32,
    /// Lead times clamped to 0 up to and including this deployment's.
    clamped: u32,
    kind: DeploymentKind,
    /// Its version was first deployed before the version live when it was deployed.
    rollback: bool,
}

impl Dep {
    /// A hotfix or rollback, by kind or by version.
    fn repairs(&self) -> bool {
        self.kind != DeploymentKind::Normal || self.rollback
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// One (service, environment)'s successful deploy events finished at or before `now`, in
/// time order and deduplicated, with every change attributed to the deployment that first
/// shipped it. Built from that group's events alone; the links between groups (incidents,
/// `fixes_deployment`) are [`History`]'s. Holds indices into the [`Table`] it was built
/// from, whose deploy events must not change while it is used (appending is fine).
#[derive(Debug, Clone, Default)]
pub struct Lineage {
    /// Its (service, environment) in the table.
    group: u32,
    /// The latest finish among the events it counted (successful or failed).
    latest: UnixSeconds,
    /// The earliest finish after `now` among the group's events.
    next: Option<UnixSeconds>,
    /// The smallest [`Rec::seq`](super::table::Rec::seq) among its successful events
    /// (groups are ordered by it).
    first_event: Option<u32>,
    /// Failed deploy attempts finished at or before `now`.
    failures: u64,
    /// Counted deployments in time order.
    deps: Vec<Dep>,
    /// Duplicates: (index in `deps` of the deployment repeated, event), by deployment.
    dups: Vec<(u32, u32)>,
    /// The changes (indices into the table's) each deployment first shipped, deployment
    /// after deployment; a change's lead time is the deployment's finish minus the change's
    /// time, clamped at 0.
    shipped: Vec<u32>,
    /// Deployments that are hotfixes or rollbacks (by kind or by version), in order.
    repairs: Vec<u32>,
}

impl Lineage {
    /// Builds the lineage of `group` from the deploy events of `table` at `members` (the
    /// group's events, any status, order or time).
    #[must_use]
    pub fn build(table: &Table, group: u32, members: &[u32], now: UnixSeconds) -> Self {
        Self::build_in_order(table, group, members, now).0
    }

    /// [`Lineage::build`], with the group's successful events finished at or before `now`
    /// in time order (finish, start, id), duplicates included.
    #[must_use]
    pub fn build_in_order(
        table: &Table,
        group: u32,
        members: &[u32],
        now: UnixSeconds,
    ) -> (Self, Vec<u32>) {
        let recs = table.deployments();
        let mut next: Option<UnixSeconds> = None;
        let mut latest = UnixSeconds::MIN;
        let mut failures = 0;
        let mut order: Vec<u32> = Vec::with_capacity(members.len());
        for &e in members {
            let Some(d) = recs.get(e as usize) else {
                continue;
            };
            if d.finished > now {
                next = Some(next.map_or(d.finished, |n| n.min(d.finished)));
                continue;
            }
            latest = latest.max(d.finished);
            if d.status == DeployStatus::Success {
                order.push(e);
            } else {
                failures += 1;
            }
        }
        let first_event = order.iter().map(|&e| recs[e as usize].seq).min();
        let rec = |e: u32| &recs[e as usize];
        order.sort_by(|&a, &b| {
            let (a, b) = (rec(a), rec(b));
            (a.finished, a.started)
                .cmp(&(b.finished, b.started))
                .then_with(|| table.str(a.id).cmp(table.str(b.id)))
        });
        let mut deps: Vec<Dep> = Vec::with_capacity(order.len());
        let mut dups: Vec<(u32, u32)> = Vec::new();
        let mut by_id: HashMap<Sym, u32> = HashMap::new();
        // Each version's first deployment.
        let mut by_version: HashMap<Sym, u32> = HashMap::new();
        // A string interned once is in one event only: no look-up for it.
        let (strings, local) = (table.strings(), table.local(group));
        let repeated = |sym: Sym| sym != EMPTY && strings.repeated(sym);
        let repeated_here = |sym: Sym| sym != EMPTY && local.repeated(sym);
        // The version live now (the last counted deployment's) and its first deployment.
        let mut live: Option<(Sym, Option<u32>)> = None;
        for &e in &order {
            let d = rec(e);
            let id_hit = repeated(d.id).then(|| by_id.get(&d.id).copied()).flatten();
            let version_hit = live
                .filter(|&(v, _)| d.version != EMPTY && v == d.version)
                .map(|_| to_u32(deps.len() - 1));
            let i = if let Some(i) = id_hit.or(version_hit) {
                dups.push((i, e));
                i
            } else {
                let first = repeated_here(d.version)
                    .then(|| by_version.get(&d.version).copied())
                    .flatten();
                // A version first deployed before the live one: a rollback.
                let rollback = match (first, live) {
                    (Some(first), Some((_, Some(l)))) => first < l,
                    _ => false,
                };
                live = Some((
                    d.version,
                    first.or((d.version != EMPTY).then(|| to_u32(deps.len()))),
                ));
                deps.push(Dep {
                    finished: d.finished,
                    event: e,
                    leads_end: 0,
                    clamped: 0,
                    kind: d.kind,
                    rollback,
                });
                to_u32(deps.len() - 1)
            };
            if repeated(d.id) {
                by_id.entry(d.id).or_insert(i);
            }
            if repeated_here(d.version) {
                by_version.entry(d.version).or_insert(i);
            }
        }
        dups.sort_by_key(|&(i, _)| i);
        // Each change at the first deployment that shipped it (a duplicate's with the
        // deployment it repeats); an empty sha is never deduplicated.
        let (shas, times) = (table.change_shas(), table.change_times());
        let mut shipped = Vec::with_capacity(order.len() * 3);
        let mut seen: HashSet<Sym> = HashSet::new();
        let mut clamped = 0;
        let mut next_dup = 0;
        for (i, dep) in deps.iter_mut().enumerate() {
            let first_dup = next_dup;
            while dups.get(next_dup).is_some_and(|&(di, _)| di as usize == i) {
                next_dup += 1;
            }
            let repeats = dups[first_dup..next_dup].iter().map(|&(_, e)| e);
            for e in std::iter::once(dep.event).chain(repeats) {
                for c in table.changes_of(e) {
                    let sha = shas[c];
                    if repeated_here(sha) && !seen.insert(sha) {
                        continue;
                    }
                    lead_time(dep.finished, times[c], &mut clamped);
                    shipped.push(to_u32(c));
                }
            }
            dep.leads_end = to_u32(shipped.len());
            dep.clamped = u32::try_from(clamped).unwrap_or(u32::MAX);
        }
        let repairs = deps
            .iter()
            .enumerate()
            .filter(|(_, d)| d.repairs())
            .map(|(i, _)| to_u32(i))
            .collect();
        let lineage = Self {
            group,
            latest,
            next,
            first_event,
            failures,
            deps,
            dups,
            shipped,
            repairs,
        };
        (lineage, order)
    }

    /// Its (service, environment) in the table.
    #[must_use]
    pub fn group(&self) -> u32 {
        self.group
    }

    /// Whether it is what [`Lineage::build`] gives at `now` for the same events: no held
    /// event finished after `now`, no left-out one at or before it.
    #[must_use]
    pub fn valid_at(&self, now: UnixSeconds) -> bool {
        self.latest <= now && self.next.is_none_or(|n| n > now)
    }

    /// Counted deployments.
    #[must_use]
    pub fn deployments(&self) -> usize {
        self.deps.len()
    }

    /// Failed deploy attempts finished at or before its `now`.
    #[must_use]
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// Bytes held, for the hub's memory figures.
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        self.deps.capacity() * size_of::<Dep>()
            + self.dups.capacity() * size_of::<(u32, u32)>()
            + self.shipped.capacity() * size_of::<u32>()
            + self.repairs.capacity() * size_of::<u32>()
    }

    /// Each counted deployment with its duplicates, in time order: (index, event).
    fn members(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        let firsts = self.deps.iter().enumerate().map(|(i, d)| (i, d.event));
        firsts.chain(self.dups.iter().map(|&(i, e)| (i as usize, e)))
    }

    /// The first deployment (in time order, duplicates with the deployment they repeat)
    /// whose head commit or changes include each of `shas`.
    fn first_shippers(&self, table: &Table, shas: &HashSet<Sym>) -> HashMap<Sym, usize> {
        let recs = table.deployments();
        let change_shas = table.change_shas();
        let mut first: HashMap<Sym, usize> = HashMap::new();
        let mut next_dup = 0;
        for (i, dep) in self.deps.iter().enumerate() {
            let first_dup = next_dup;
            while self
                .dups
                .get(next_dup)
                .is_some_and(|&(di, _)| di as usize == i)
            {
                next_dup += 1;
            }
            let repeats = self.dups[first_dup..next_dup].iter().map(|&(_, e)| e);
            for e in std::iter::once(dep.event).chain(repeats) {
                let named = std::iter::once(recs[e as usize].commit)
                    .chain(table.changes_of(e).map(|c| change_shas[c]));
                for sha in named {
                    if shas.contains(&sha) {
                        first.entry(sha).or_insert(i);
                    }
                }
            }
        }
        first
    }

    /// Index of the first deployment finished after `start`.
    fn first_after(&self, start: UnixSeconds) -> usize {
        self.deps.partition_point(|d| d.finished <= start)
    }
}

/// The members of each group of `table` (its deploy events, in order), by group index.
#[must_use]
pub fn group_members(table: &Table) -> Vec<Vec<u32>> {
    let mut members: Vec<Vec<u32>> = vec![Vec::new(); table.groups().len()];
    for (e, d) in table.deployments().iter().enumerate() {
        if let Some(m) = members.get_mut(d.group as usize) {
            m.push(to_u32(e));
        }
    }
    members
}

/// Which groups of `table` `scope` covers, by group index.
fn groups_in_scope(table: &Table, scope: &Scope) -> Vec<bool> {
    let want = |name: &Option<String>| {
        name.as_ref()
            .map(|s| table.strings().get(s).unwrap_or(ABSENT))
    };
    let (environment, service) = (want(&scope.environment), want(&scope.service));
    table
        .groups()
        .iter()
        .map(|&(s, e)| environment.is_none_or(|x| x == e) && service.is_none_or(|x| x == s))
        .collect()
}

impl Scope {
    /// Whether `self` and `other` cover the same groups of `table` (then their histories are
    /// the same).
    #[must_use]
    pub fn same_groups(&self, other: &Scope, table: &Table) -> bool {
        self == other || groups_in_scope(table, self) == groups_in_scope(table, other)
    }
}

/// One (service, environment) of a [`History`].
#[derive(Debug, Clone)]
struct Linked<'a> {
    /// Its (service, environment) in the table.
    group: u32,
    /// `None` for a group with incidents only.
    lineage: Option<&'a Lineage>,
    failed: Vec<bool>,
    rework: Vec<bool>,
    /// An incident (or a finding) counted for recovery is linked to the deployment.
    has_incident: Vec<bool>,
    /// (resolved at, recovery seconds) of the incidents and findings resolved by `now`, by
    /// resolution time.
    recoveries: Vec<(UnixSeconds, i64)>,
    open: u64,
    /// A reference crosses from or into it (an incident, fix or finding of one group naming
    /// a deployment of another, an id held by several groups, an incident resolved by one of
    /// its deployments): it cannot be linked again on its own ([`Links::relink`]).
    entangled: bool,
}

impl<'a> Linked<'a> {
    fn new(group: u32) -> Self {
        Self {
            group,
            lineage: None,
            failed: Vec::new(),
            rework: Vec::new(),
            has_incident: Vec::new(),
            recoveries: Vec::new(),
            open: 0,
            entangled: false,
        }
    }

    fn deps(&self) -> &'a [Dep] {
        self.lineage.map_or(&[], |l| l.deps.as_slice())
    }
}

/// Every (service, environment) in a scope at `now` with the links between them: which
/// deployments failed, which were rework, and the recovery times — over the whole history,
/// so that any window is a slice of it ([`History::report`]).
#[derive(Debug, Clone)]
pub struct History<'a> {
    now: UnixSeconds,
    table: &'a Table,
    groups: Vec<Linked<'a>>,
    /// The earliest time after `now` at which an incident or finding in scope starts or
    /// resolves: the links hold until then if the lineages do.
    changes_at: Option<UnixSeconds>,
}

/// The links of a [`History`] without its borrows (of the table and the lineages), kept
/// between computations while no event changes them ([`Links::holds_at`]).
#[derive(Debug, Clone, Default)]
pub struct Links {
    now: UnixSeconds,
    changes_at: Option<UnixSeconds>,
    groups: Vec<LinkData>,
}

impl Links {
    /// See [`History::links_hold_at`].
    #[must_use]
    pub fn holds_at(&self, now: UnixSeconds) -> bool {
        now >= self.now && self.changes_at.is_none_or(|t| t > now)
    }

    /// Links `changed` groups again on their own, at `now`, after deploy events were added
    /// to them (and their lineages built again at `now`), leaving every other group's links
    /// as they are; `scope` is the one these links were made in. Gives the links
    /// [`History::link`] gives for the whole scope at `now`, or `false` (the links then
    /// unusable) where that cannot be told group by group: a changed group new to the links
    /// or entangled with another ([`Linked::entangled`]), or `now` outside
    /// [`Links::holds_at`]. The new events must reference no other group: no delivery id
    /// held or named elsewhere, no `fixes_deployment` of another group's, no incidents
    /// resolved.
    #[must_use]
    pub fn relink<'a>(
        &mut self,
        now: UnixSeconds,
        table: &'a Table,
        scope: &Scope,
        changed: &[u32],
        lineage_of: impl Fn(u32) -> Option<&'a Lineage>,
    ) -> bool {
        if !self.holds_at(now) {
            return false;
        }
        let in_scope = groups_in_scope(table, scope);
        for &g in changed {
            if !in_scope.get(g as usize).copied().unwrap_or(false) {
                continue;
            }
            let Some(slot) = self.groups.iter().position(|d| d.group == g) else {
                return false;
            };
            if self.groups[slot].entangled {
                return false;
            }
            let Some(&(service, environment)) = table.groups().get(g as usize) else {
                return false;
            };
            let alone = Scope {
                environment: Some(table.str(environment).to_owned()),
                service: Some(table.str(service).to_owned()),
            };
            let history = History::link(now, lineage_of(g), table, &alone);
            let mut linked = history.into_links();
            match linked.groups.as_slice() {
                [one] if one.group == g => {}
                _ => return false,
            }
            self.groups[slot] = linked.groups.remove(0);
        }
        self.now = now;
        true
    }
}

/// A [`Linked`] without its lineage.
#[derive(Debug, Clone)]
struct LinkData {
    group: u32,
    has_lineage: bool,
    failed: Vec<bool>,
    rework: Vec<bool>,
    has_incident: Vec<bool>,
    recoveries: Vec<(UnixSeconds, i64)>,
    open: u64,
    entangled: bool,
}

/// The group of an id's first referrer, in the order references are read: incidents (the
/// id they name, then the deployment that resolved them), then `fixes_deployment` of the
/// deploy events in input order, then regression findings by start.
fn referrer(
    id: Sym,
    groups: &[Linked<'_>],
    incidents: &[(usize, &Inc)],
    findings: &[&Finding],
    index: &[usize],
    table: &Table,
) -> Option<usize> {
    if let Some(&(g, _)) = incidents
        .iter()
        .find(|(_, i)| i.deployment == id || i.resolved_by == id)
    {
        return Some(g);
    }
    let recs = table.deployments();
    let fixing = groups
        .iter()
        .enumerate()
        .filter_map(|(g, linked)| {
            let l = linked.lineage?;
            l.members()
                .map(|(_, e)| e)
                .filter(|&e| recs[e as usize].fixes == id)
                .map(|e| recs[e as usize].seq)
                .min()
                .map(|e| (e, g))
        })
        .min();
    if let Some((_, g)) = fixing {
        return Some(g);
    }
    findings
        .iter()
        .find(|f| f.deployment == id)
        .and_then(|f| index.get(f.group as usize).copied())
        .filter(|&g| g != usize::MAX)
}

impl<'a> History<'a> {
    /// Links `lineages` (built at `now` from `table`; those out of `scope` are skipped)
    /// through the incidents, findings and fixes of `table` in `scope`.
    #[must_use]
    pub fn link(
        now: UnixSeconds,
        lineages: impl IntoIterator<Item = &'a Lineage>,
        table: &'a Table,
        scope: &Scope,
    ) -> Self {
        let recs = table.deployments();
        let in_scope = groups_in_scope(table, scope);
        let scoped = |g: u32| in_scope.get(g as usize).copied().unwrap_or(false);
        let mut index: Vec<usize> = vec![usize::MAX; table.groups().len()];
        let mut groups: Vec<Linked<'a>> = Vec::new();
        let mut group = |g: u32, groups: &mut Vec<Linked<'a>>| {
            let slot = &mut index[g as usize];
            if *slot == usize::MAX {
                groups.push(Linked::new(g));
                *slot = groups.len() - 1;
            }
            *slot
        };
        let mut changes_at: Option<UnixSeconds> = None;
        let mut note = |t: UnixSeconds| {
            if t > now {
                changes_at = Some(changes_at.map_or(t, |c| c.min(t)));
            }
        };
        let mut incidents: Vec<(usize, &'a Inc)> = Vec::new();
        for i in table.incidents() {
            if !scoped(i.group) {
                continue;
            }
            note(i.started);
            if let Some(r) = i.resolved {
                note(r);
            }
            if i.started <= now {
                incidents.push((group(i.group, &mut groups), i));
            }
        }
        // Groups in order of first appearance: incidents', then deployments' (input order).
        let mut lineages: Vec<&'a Lineage> = lineages
            .into_iter()
            .filter(|l| !l.deps.is_empty() && scoped(l.group))
            .collect();
        lineages.sort_by_key(|l| l.first_event);
        for l in lineages {
            let g = group(l.group, &mut groups);
            let n = l.deps.len();
            let linked = &mut groups[g];
            linked.lineage = Some(l);
            linked.failed = vec![false; n];
            linked.rework = vec![false; n];
            linked.has_incident = vec![false; n];
        }
        let mut findings: Vec<&'a Finding> = Vec::new();
        for f in table.findings() {
            if !scoped(f.group) {
                continue;
            }
            note(f.started);
            if let Some(r) = f.resolved {
                note(r);
            }
            if f.started <= now {
                findings.push(f);
            }
        }
        findings.sort_by_key(|f| f.started);

        // Delivery ids referenced, and where each is found: the deployment of every group
        // holding an event with that id.
        let mut wanted: HashSet<Sym> = HashSet::new();
        for &(_, i) in &incidents {
            wanted.insert(i.deployment);
            wanted.insert(i.resolved_by);
        }
        for linked in &groups {
            if let Some(l) = linked.lineage {
                for &i in &l.repairs {
                    wanted.insert(recs[l.deps[i as usize].event as usize].fixes);
                }
            }
        }
        wanted.extend(findings.iter().map(|f| f.deployment));
        wanted.remove(&EMPTY);
        wanted.remove(&ABSENT);
        let mut found: HashMap<Sym, Vec<DepRef>> = HashMap::new();
        if !wanted.is_empty() {
            // A referenced id is interned at least twice (by its event and by the
            // reference): an id interned once needs no look-up.
            let strings = table.strings();
            for (g, linked) in groups.iter().enumerate() {
                let Some(l) = linked.lineage else { continue };
                for (i, e) in l.members() {
                    let id = recs[e as usize].id;
                    if !strings.repeated(id) || !wanted.contains(&id) {
                        continue;
                    }
                    let places = found.entry(id).or_default();
                    if places.last().is_none_or(|&(last, _)| last != g) {
                        places.push((g, i));
                    }
                }
            }
        }
        let mut entangled = vec![false; groups.len()];
        let ids: HashMap<Sym, DepRef> = found
            .into_iter()
            .map(|(id, places)| {
                let place = match places.as_slice() {
                    [one] => *one,
                    // The same id in several services (the store never holds that): the
                    // first referrer's group if it has it, else the first group.
                    _ => {
                        for p in &places {
                            entangled[p.0] = true;
                        }
                        let hint = referrer(id, &groups, &incidents, &findings, &index, table);
                        hint.and_then(|h| places.iter().find(|p| p.0 == h).copied())
                            .unwrap_or(places[0])
                    }
                };
                (id, place)
            })
            .collect();

        // Change failures: hotfixes and rollbacks blame what they fix, incidents what they
        // name (a delivery id, else a commit first shipped in the incident's group).
        let mut blamed: Vec<DepRef> = Vec::new();
        for (g, linked) in groups.iter().enumerate() {
            let Some(l) = linked.lineage else { continue };
            for &i in &l.repairs {
                let i = i as usize;
                match recs[l.deps[i].event as usize].fixes {
                    ABSENT if i > 0 => blamed.push((g, i - 1)),
                    ABSENT => {}
                    id => {
                        let place = ids.get(&id).copied();
                        if let Some((h, _)) = place.filter(|&(h, _)| h != g) {
                            entangled[g] = true;
                            entangled[h] = true;
                        }
                        blamed.extend(place);
                    }
                }
            }
        }
        let mut shas_by_group: HashMap<usize, HashSet<Sym>> = HashMap::new();
        for &(g, i) in &incidents {
            if i.deployment == ABSENT && i.commit != ABSENT && i.commit != EMPTY {
                shas_by_group.entry(g).or_default().insert(i.commit);
            }
        }
        let first_shipped: HashMap<usize, HashMap<Sym, usize>> = shas_by_group
            .iter()
            .filter_map(|(&g, shas)| {
                let l = groups[g].lineage?;
                Some((g, l.first_shippers(table, shas)))
            })
            .collect();
        let links_of: Vec<Option<DepRef>> = incidents
            .iter()
            .map(|&(g, i)| {
                if i.deployment != ABSENT {
                    ids.get(&i.deployment).copied()
                } else if i.commit != ABSENT && i.commit != EMPTY {
                    first_shipped
                        .get(&g)
                        .and_then(|m| m.get(&i.commit))
                        .map(|&d| (g, d))
                } else {
                    None
                }
            })
            .collect();
        blamed.extend(links_of.iter().flatten().copied());
        for &(g, i) in &incidents {
            for id in [i.deployment, i.resolved_by] {
                if let Some(&(h, _)) = ids.get(&id).filter(|&&(h, _)| h != g) {
                    entangled[g] = true;
                    entangled[h] = true;
                }
            }
        }
        for f in &findings {
            let from = index.get(f.group as usize).copied().unwrap_or(usize::MAX);
            if let Some(&(h, _)) = ids.get(&f.deployment).filter(|&&(h, _)| h != from) {
                entangled[h] = true;
                if let Some(e) = entangled.get_mut(from) {
                    *e = true;
                }
            }
        }
        for &(g, i) in &blamed {
            groups[g].failed[i] = true;
        }
        for &(g, i) in links_of.iter().flatten() {
            groups[g].has_incident[i] = true;
        }

        // Rework: hotfixes and rollbacks by kind; rollbacks by version while an incident
        // of their group was open; deployments resolving an incident open while deployed.
        let open_during = |incident: &Inc, dep: &Dep| {
            let started = recs
                .get(dep.event as usize)
                .map_or(dep.finished, |r| r.started);
            incident.started <= dep.finished && incident.resolved.is_none_or(|t| t >= started)
        };
        let mut incidents_of: Vec<Vec<&Inc>> = vec![Vec::new(); groups.len()];
        for &(g, incident) in &incidents {
            incidents_of[g].push(incident);
        }
        for (linked, of_group) in groups.iter_mut().zip(&incidents_of) {
            let Linked {
                lineage, rework, ..
            } = linked;
            let Some(l) = lineage else { continue };
            for &i in &l.repairs {
                let (i, dep) = (i as usize, &l.deps[i as usize]);
                if dep.kind != DeploymentKind::Normal
                    || (dep.rollback && of_group.iter().any(|inc| open_during(inc, dep)))
                {
                    rework[i] = true;
                }
            }
        }
        for &(_, incident) in &incidents {
            if let Some(&(g, i)) = ids.get(&incident.resolved_by)
                && open_during(incident, &groups[g].deps()[i])
            {
                groups[g].rework[i] = true;
            }
        }
        if !table.resolves().is_empty() {
            let by_id: HashMap<Sym, &Inc> = incidents
                .iter()
                .map(|&(_, incident)| (incident.id, incident))
                .collect();
            let resolving: HashSet<u32> = table.resolves().iter().map(|&(e, _)| e).collect();
            for (linked, entangled) in groups.iter_mut().zip(&mut entangled) {
                let Some(l) = linked.lineage else { continue };
                for (i, e) in l.members() {
                    if !resolving.contains(&e) {
                        continue;
                    }
                    if table.resolves_of(e).any(|id| by_id.contains_key(&id)) {
                        *entangled = true;
                    }
                    let dep = &l.deps[i];
                    if table
                        .resolves_of(e)
                        .filter_map(|id| by_id.get(&id))
                        .any(|incident| open_during(incident, dep))
                    {
                        linked.rework[i] = true;
                    }
                }
            }
        }

        // Recovery times: incidents, then the earliest finding of a deployment no incident
        // is linked to.
        let recovery = |linked: &mut Linked<'_>,
                        resolved: Option<UnixSeconds>,
                        started: UnixSeconds,
                        failing: Option<UnixSeconds>| {
            match resolved.filter(|&r| r <= now) {
                None => linked.open += 1,
                Some(r) => {
                    let from = failing.map_or(started, |f| started.min(f));
                    linked.recoveries.push((r, (r - from).max(0)));
                }
            }
        };
        for (&(g, incident), link) in incidents.iter().zip(&links_of) {
            let failing = link.map(|(lg, li)| groups[lg].deps()[li].finished);
            recovery(&mut groups[g], incident.resolved, incident.started, failing);
        }
        for f in &findings {
            let Some(&(g, i)) = ids.get(&f.deployment) else {
                continue;
            };
            let linked = &mut groups[g];
            linked.failed[i] = true;
            if linked.has_incident[i] {
                continue;
            }
            linked.has_incident[i] = true;
            let failing = Some(linked.deps()[i].finished);
            recovery(linked, f.resolved, f.started, failing);
        }
        for (linked, entangled) in groups.iter_mut().zip(entangled) {
            linked.recoveries.sort_by_key(|&(resolved, _)| resolved);
            linked.entangled = entangled;
        }
        Self {
            now,
            table,
            groups,
            changes_at,
        }
    }

    /// The `now` it was linked at.
    #[must_use]
    pub fn now(&self) -> UnixSeconds {
        self.now
    }

    /// Whether linking the same lineages and events at `now` gives this history again but
    /// for its `now` (no incident or finding starts or resolves in between); the lineages must
    /// be valid at `now` too.
    #[must_use]
    pub fn links_hold_at(&self, now: UnixSeconds) -> bool {
        now >= self.now && self.changes_at.is_none_or(|t| t > now)
    }

    /// Its links without the borrows, to keep for [`History::resume`].
    #[must_use]
    pub fn into_links(self) -> Links {
        Links {
            now: self.now,
            changes_at: self.changes_at,
            groups: self
                .groups
                .into_iter()
                .map(|g| LinkData {
                    group: g.group,
                    has_lineage: g.lineage.is_some(),
                    failed: g.failed,
                    rework: g.rework,
                    has_incident: g.has_incident,
                    recoveries: g.recoveries,
                    open: g.open,
                    entangled: g.entangled,
                })
                .collect(),
        }
    }

    /// The history `links` were taken from, read at `now`: the table and the lineages
    /// (`lineage_of` a group) must be those it was linked from, and `links.holds_at(now)`.
    #[must_use]
    pub fn resume(
        links: Links,
        now: UnixSeconds,
        table: &'a Table,
        lineage_of: impl Fn(u32) -> Option<&'a Lineage>,
    ) -> Self {
        Self {
            now,
            table,
            changes_at: links.changes_at,
            groups: links
                .groups
                .into_iter()
                .map(|g| Linked {
                    group: g.group,
                    lineage: if g.has_lineage {
                        lineage_of(g.group)
                    } else {
                        None
                    },
                    failed: g.failed,
                    rework: g.rework,
                    has_incident: g.has_incident,
                    recoveries: g.recoveries,
                    open: g.open,
                    entangled: g.entangled,
                })
                .collect(),
        }
    }

    fn names(&self, g: &Linked<'_>) -> (&'a str, &'a str) {
        let (s, e) = self
            .table
            .groups()
            .get(g.group as usize)
            .copied()
            .unwrap_or((EMPTY, EMPTY));
        (self.table.str(s), self.table.str(e))
    }

    /// The counts of each row of [`History::report`] over `window`, without the rest: (service,
    /// environment, deployments, failed deployments, rework deployments), sorted.
    #[must_use]
    pub fn counts(&self, window: Window) -> Vec<(&'a str, &'a str, u64, u64, u64)> {
        let start = self.now.saturating_sub(window.seconds());
        let count = |flags: &[bool], first: usize| {
            flags
                .get(first..)
                .unwrap_or_default()
                .iter()
                .filter(|&&f| f)
                .count() as u64
        };
        let mut rows: Vec<_> = self
            .groups
            .iter()
            .map(|g| {
                let first = g.lineage.map_or(0, |l| l.first_after(start));
                let deployments = g.deps().len().saturating_sub(first) as u64;
                let (service, environment) = self.names(g);
                (
                    service,
                    environment,
                    deployments,
                    count(&g.failed, first),
                    count(&g.rework, first),
                )
            })
            .collect();
        rows.sort_unstable();
        rows
    }

    /// Recovery seconds of the incidents and findings resolved by `now`, per (service,
    /// environment) with any, sorted.
    #[must_use]
    pub fn recoveries(&self) -> Vec<(&'a str, &'a str, Vec<i64>)> {
        let mut rows: Vec<_> = self
            .groups
            .iter()
            .filter(|g| !g.recoveries.is_empty())
            .map(|g| {
                let (service, environment) = self.names(g);
                let seconds = g.recoveries.iter().map(|&(_, s)| s).collect();
                (service, environment, seconds)
            })
            .collect();
        rows.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        rows
    }

    /// The report over `window` ending at the history's `now`.
    #[must_use]
    pub fn report(&self, window: Window) -> Report {
        self.report_of(window, true)
    }

    /// [`History::report`] without its [`Report::totals`] (left empty), for callers that read
    /// only the rows of services.
    #[must_use]
    pub fn service_report(&self, window: Window) -> Report {
        self.report_of(window, false)
    }

    fn report_of(&self, window: Window, with_totals: bool) -> Report {
        let now = self.now;
        let start = now.saturating_sub(window.seconds());
        let times = self.table.change_times();
        let mut tallies: Vec<Tally> = self
            .groups
            .iter()
            .map(|g| Tally::of(g, start, times))
            .collect();
        // A service's quantiles select in its tally's values (reordering them, which the
        // environment's total does not mind): no copy.
        let mut services: Vec<ServiceReport> = self
            .groups
            .iter()
            .zip(&mut tallies)
            .map(|(g, t)| {
                let (service, environment) = self.names(g);
                let (mut leads, mut recoveries) = (
                    std::mem::take(&mut t.leads),
                    std::mem::take(&mut t.recoveries),
                );
                let row = row(
                    &[t],
                    (&mut leads, &mut recoveries),
                    (service, environment),
                    start,
                    now,
                    window,
                );
                (t.leads, t.recoveries) = (leads, recoveries);
                row
            })
            .collect();
        let mut pooled: BTreeMap<&str, Vec<&Tally>> = BTreeMap::new();
        if with_totals {
            for (group, tally) in self.groups.iter().zip(&tallies) {
                pooled.entry(self.names(group).1).or_default().push(tally);
            }
        }
        services.sort_by(|a, b| {
            a.service
                .cmp(&b.service)
                .then_with(|| a.environment.cmp(&b.environment))
        });
        let totals = pooled
            .iter()
            .map(|(environment, parts)| {
                // Copied part by part (a slice at a time): the total holds every lead time of
                // an environment.
                let pool = |of: fn(&Tally) -> &[i64]| {
                    let mut values = Vec::with_capacity(parts.iter().map(|t| of(t).len()).sum());
                    for t in parts {
                        values.extend_from_slice(of(t));
                    }
                    values
                };
                let (mut leads, mut recoveries) = (pool(|t| &t.leads), pool(|t| &t.recoveries));
                row(
                    parts,
                    (&mut leads, &mut recoveries),
                    (ALL_SERVICES, environment),
                    start,
                    now,
                    window,
                )
            })
            .collect();
        Report {
            now,
            window,
            window_start: start,
            services,
            totals,
        }
    }
}

/// The lineages at `now` of the groups of `table` in `scope`.
#[must_use]
pub fn lineages(table: &Table, now: UnixSeconds, scope: &Scope) -> Vec<Lineage> {
    let in_scope = groups_in_scope(table, scope);
    group_members(table)
        .iter()
        .enumerate()
        .filter(|&(g, _)| in_scope[g])
        .map(|(g, members)| Lineage::build(table, to_u32(g), members, now))
        .collect()
}

/// Computes the DORA report of every (service, environment) in `scope` over the window
/// `(now - window, now]`. See the module documentation for the exact rules.
#[must_use]
pub fn report(now: UnixSeconds, events: &Events, window: Window, scope: &Scope) -> Report {
    let table = Table::for_report(events);
    let lineages = lineages(&table, now, scope);
    History::link(now, &lineages, &table, scope).report(window)
}

/// [`report`] for each of `windows` (e.g. [`Window::DEFAULTS`]), in the same order.
#[must_use]
pub fn reports(
    now: UnixSeconds,
    events: &Events,
    windows: &[Window],
    scope: &Scope,
) -> Vec<Report> {
    let table = Table::for_report(events);
    let lineages = lineages(&table, now, scope);
    let history = History::link(now, &lineages, &table, scope);
    windows
        .iter()
        .map(|&window| history.report(window))
        .collect()
}

/// Lead times of the changes one deployment brings, for observing the
/// `dora_lead_time_seconds` histogram when the deployment is recorded.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LeadTimes {
    /// One lead time per new change, seconds, clamped at 0.
    pub seconds: Vec<i64>,
    /// How many were clamped from a negative value.
    pub clamped: u64,
}

/// The lead times [`report`] attributes to `deployment`'s changes, computed at ingest:
/// `earlier` are the deployments already stored (any service, order or status; only
/// successful ones of the same service and environment finished no later than it count).
/// Changes an earlier deployment shipped are skipped; if `deployment` repeats an earlier
/// one (same delivery id, or the version of the latest earlier one), its new changes are
/// timed from that earlier one's finish. Empty for an unsuccessful deployment.
#[must_use]
pub fn ingest_lead_times<'a>(
    deployment: &Deployment,
    earlier: impl IntoIterator<Item = &'a Deployment>,
) -> LeadTimes {
    let mut out = LeadTimes::default();
    if deployment.status != DeployStatus::Success {
        return out;
    }
    let mut finished = deployment.finished_at;
    let mut shipped: HashSet<&str> = HashSet::new();
    let mut latest: Option<&Deployment> = None;
    for e in earlier {
        if e.status != DeployStatus::Success
            || e.service != deployment.service
            || e.environment != deployment.environment
            || e.finished_at > deployment.finished_at
        {
            continue;
        }
        if !e.id.is_empty() && e.id == deployment.id {
            finished = finished.min(e.finished_at);
        }
        if latest.is_none_or(|l| (l.finished_at, l.started_at) <= (e.finished_at, e.started_at)) {
            latest = Some(e);
        }
        shipped.extend(e.commits.iter().map(|c| c.sha.as_str()));
    }
    if let Some(l) = latest
        && !l.version.is_empty()
        && l.version == deployment.version
    {
        finished = finished.min(l.finished_at);
    }
    for change in &deployment.commits {
        if change.sha.is_empty() || shipped.insert(&change.sha) {
            out.seconds.push(lead_time(
                finished,
                change.effective_time(),
                &mut out.clamped,
            ));
        }
    }
    out
}

/// The recovery time [`report`] counts for a resolved incident, for observing the
/// `dora_recovery_time_seconds` histogram at resolution: `resolved_at - min(started_at,
/// failing deployment's finished_at)`, clamped at 0; `None` while unresolved.
#[must_use]
pub fn recovery_seconds(incident: &Incident, failing: Option<&Deployment>) -> Option<i64> {
    let resolved = incident.resolved_at?;
    let from = failing.map_or(incident.started_at, |d| {
        incident.started_at.min(d.finished_at)
    });
    Some((resolved - from).max(0))
}

/// Lead time of one change, clamped at 0 (and counted) when the change is "after" the deploy.
fn lead_time(finished: UnixSeconds, change_time: UnixSeconds, clamped: &mut u64) -> i64 {
    let lead = finished - change_time;
    if lead < 0 {
        *clamped += 1;
        0
    } else {
        lead
    }
}

fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// The `q`-quantile (0..=1) of `values`, interpolating linearly between closest ranks.
/// Reorders `values` (selection, O(n), instead of a full sort).
#[cfg(test)]
fn quantile(values: &mut [i64], q: f64) -> Option<f64> {
    let last = values.len().checked_sub(1)?;
    let rank = q * last as f64;
    let lo = rank.floor() as usize;
    let (_, &mut a, above) = values.select_nth_unstable(lo);
    let b = if rank > lo as f64 {
        above.iter().copied().min().unwrap_or(a)
    } else {
        a
    };
    let (a, b) = (a as f64, b as f64);
    Some(a + (b - a) * (rank - lo as f64))
}

/// The `lower`- and `upper`-quantiles of `values` (`lower <= upper`), each exactly as
/// [`quantile`] gives it: the upper rank is selected among the values above the lower one only.
fn quantiles(values: &mut [i64], lower: f64, upper: f64) -> (Option<f64>, Option<f64>) {
    let Some(last) = values.len().checked_sub(1) else {
        return (None, None);
    };
    let at = |rank: f64, lo: usize, a: i64, above: &[i64]| {
        let b = if rank > lo as f64 {
            above.iter().copied().min().unwrap_or(a)
        } else {
            a
        };
        let (a, b) = (a as f64, b as f64);
        a + (b - a) * (rank - lo as f64)
    };
    let rank = lower * last as f64;
    let lo = rank.floor() as usize;
    let (_, &mut a, above) = values.select_nth_unstable(lo);
    let low = at(rank, lo, a, above);
    let upper_rank = upper * last as f64;
    let hi = (upper_rank.floor() as usize).max(lo);
    let high = if hi == lo {
        at(upper_rank, hi, a, above)
    } else {
        let (_, &mut x, rest) = above.select_nth_unstable(hi - lo - 1);
        at(upper_rank, hi, x, rest)
    };
    (Some(low), Some(high))
}

fn quantile_f64(sorted: &[f64], q: f64) -> f64 {
    let last = sorted.len().saturating_sub(1);
    let rank = q * last as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    match (sorted.get(lo), sorted.get(hi)) {
        (Some(&a), Some(&b)) => a + (b - a) * (rank - lo as f64),
        _ => 0.0,
    }
}

/// One group's part of a window: what its row (and its environment's total) is computed from.
struct Tally {
    deployments: u64,
    failed: u64,
    rework: u64,
    /// Finish times of the deployments in the window.
    times: Vec<UnixSeconds>,
    /// Lead times of the changes first shipped in the window.
    leads: Vec<i64>,
    clamped: u64,
    /// Recovery times of the incidents resolved in the window.
    recoveries: Vec<i64>,
    open: u64,
}

impl Tally {
    /// `group`'s part of the window starting after `start`; `times` are the table's change
    /// times.
    fn of(group: &Linked<'_>, start: UnixSeconds, times: &[UnixSeconds]) -> Self {
        let (first, deps, leads, clamped) = match group.lineage {
            Some(l) => {
                let first = l.first_after(start);
                let before = first.checked_sub(1).map(|i| &l.deps[i]);
                let total = l.deps.last().map_or(0, |d| u64::from(d.clamped));
                let mut from = before.map_or(0, |d| d.leads_end as usize);
                let mut leads = Vec::with_capacity(l.shipped.len().saturating_sub(from));
                for d in &l.deps[first..] {
                    let end = d.leads_end as usize;
                    let changes = l.shipped.get(from..end).unwrap_or_default();
                    leads.extend(changes.iter().map(|&c| {
                        let at = times.get(c as usize).copied().unwrap_or(d.finished);
                        (d.finished - at).max(0)
                    }));
                    from = end;
                }
                (
                    first,
                    &l.deps[first..],
                    leads,
                    total - before.map_or(0, |d| u64::from(d.clamped)),
                )
            }
            None => (0, &[][..], Vec::new(), 0),
        };
        let count = |flags: &[bool]| flags.iter().filter(|&&f| f).count() as u64;
        let resolved = group.recoveries.partition_point(|&(r, _)| r <= start);
        Self {
            deployments: deps.len() as u64,
            failed: count(group.failed.get(first..).unwrap_or_default()),
            rework: count(group.rework.get(first..).unwrap_or_default()),
            times: deps.iter().map(|d| d.finished).collect(),
            leads,
            clamped,
            recoveries: group.recoveries[resolved..]
                .iter()
                .map(|&(_, s)| s)
                .collect(),
            open: group.open,
        }
    }
}

/// The row of `parts` taken together: one group's tally, or every group of an environment
/// for its total (medians over all their values, not over the services' medians), whose
/// lead and recovery times are `leads` and `recoveries` (in any order; reordered).
fn row(
    parts: &[&Tally],
    (leads, recoveries): (&mut [i64], &mut [i64]),
    (service, environment): (&str, &str),
    start: UnixSeconds,
    now: UnixSeconds,
    window: Window,
) -> ServiceReport {
    let sum = |f: fn(&Tally) -> u64| parts.iter().map(|t| f(t)).sum::<u64>();
    let deployments = sum(|t| t.deployments);
    let failed = sum(|t| t.failed);
    let rework = sum(|t| t.rework);
    let times: Vec<&[UnixSeconds]> = parts.iter().map(|t| t.times.as_slice()).collect();
    let (lead_time_median_seconds, lead_time_p90_seconds) = quantiles(leads, 0.5, 0.9);
    let (recovery_time_median_seconds, recovery_time_p90_seconds) = quantiles(recoveries, 0.5, 0.9);
    ServiceReport {
        service: service.to_owned(),
        environment: environment.to_owned(),
        deployments,
        deployment_frequency_per_day: deployments as f64 / window.days_f64(),
        deployment_frequency_class: frequency_class(&times, start, now),
        changes: leads.len() as u64,
        changes_clamped: sum(|t| t.clamped),
        lead_time_median_seconds,
        lead_time_p90_seconds,
        failed_deployments: failed,
        change_fail_rate: ratio(failed, deployments),
        incidents_resolved: recoveries.len() as u64,
        incidents_open: sum(|t| t.open),
        recovery_time_median_seconds,
        recovery_time_p90_seconds,
        rework_deployments: rework,
        rework_rate: ratio(rework, deployments),
    }
}

/// UTC day number of a timestamp (day 0 = 1970-01-01, a Thursday).
fn day_of(t: UnixSeconds) -> i64 {
    t.div_euclid(DAY)
}

/// Monday-start week number of a day number.
fn week_of(day: i64) -> i64 {
    (day + 3).div_euclid(7)
}

/// `year * 12 + month - 1` of a day number (UTC; days beyond years ±9999 are clamped to them).
fn month_of(day: i64) -> i64 {
    let at = jiff::Timestamp::from_second(day.saturating_mul(DAY)).unwrap_or(if day < 0 {
        jiff::Timestamp::MIN
    } else {
        jiff::Timestamp::MAX
    });
    let date = jiff::tz::Offset::UTC.to_datetime(at).date();
    i64::from(date.year()) * 12 + i64::from(date.month()) - 1
}

/// Four Keys' class from deployment times in `(start, now]`, any order (see module docs).
fn frequency_class(
    times: &[&[UnixSeconds]],
    start: UnixSeconds,
    now: UnixSeconds,
) -> Option<FrequencyClass> {
    if times.iter().all(|t| t.is_empty()) {
        return None;
    }
    let first_day = day_of(start + 1);
    let days = usize::try_from(day_of(now) - first_day + 1).ok()?;
    let mut deployed_on = vec![false; days];
    for &t in times.iter().flat_map(|t| t.iter()) {
        if let Some(day) = usize::try_from(day_of(t) - first_day)
            .ok()
            .and_then(|k| deployed_on.get_mut(k))
        {
            *day = true;
        }
    }
    let first_week = week_of(first_day);
    let last_week = week_of(day_of(now));
    let weeks = usize::try_from(last_week - first_week + 1).ok()?;
    let mut days_deployed = vec![0.0_f64; weeks];
    for (k, _) in deployed_on.iter().enumerate().filter(|(_, d)| **d) {
        let day = first_day + i64::try_from(k).ok()?;
        let w = usize::try_from(week_of(day) - first_week).ok()?;
        *days_deployed.get_mut(w)? += 1.0;
    }
    let deployed: Vec<f64> = days_deployed.iter().map(|&d| f64::from(d > 0.0)).collect();
    // Weeks with a deployment in each week's month (month of the week's Monday).
    let months: Vec<i64> = (first_week..=last_week)
        .map(|w| month_of(w * 7 - 3))
        .collect();
    let mut monthly = vec![0.0_f64; weeks];
    let mut run = 0;
    while run < weeks {
        let end = months[run..]
            .iter()
            .position(|&m| m != months[run])
            .map_or(weeks, |p| run + p);
        let total: f64 = deployed[run..end].iter().sum();
        monthly[run..end].fill(total);
        run = end;
    }
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        quantile_f64(&values, 0.5)
    };
    Some(if median(days_deployed) >= 3.0 {
        FrequencyClass::Daily
    } else if median(deployed) >= 1.0 {
        FrequencyClass::Weekly
    } else if median(monthly) >= 1.0 {
        FrequencyClass::Monthly
    } else {
        FrequencyClass::Yearly
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dora::model::{Change, Deployment, DeploymentKind, Incident, RegressionFinding};

    const D: i64 = DAY;
    const H: i64 = 3600;
    /// Sunday 1970-05-24 23:59:59 UTC; day 143; the 7d window starts on Monday day 137.
    const NOW: i64 = 144 * D - 1;

    fn ch(sha: &str, timestamp: i64) -> Change {
        Change {
            sha: sha.into(),
            timestamp,
            pr_first_commit_at: None,
        }
    }

    fn dep(id: &str, finished_at: i64, commits: Vec<Change>) -> Deployment {
        Deployment {
            id: id.into(),
            service: "api".into(),
            environment: "production".into(),
            version: id.into(),
            commit: format!("head-{id}"),
            status: DeployStatus::Success,
            started_at: finished_at - 60,
            finished_at,
            commits,
            kind: DeploymentKind::Normal,
            fixes_deployment: None,
            resolves_incidents: Vec::new(),
        }
    }

    fn kind(mut d: Deployment, kind: DeploymentKind) -> Deployment {
        d.kind = kind;
        d
    }

    fn inc(id: &str, started_at: i64, resolved_at: Option<i64>) -> Incident {
        Incident {
            id: id.into(),
            service: "api".into(),
            environment: "production".into(),
            started_at,
            resolved_at,
            deployment_id: None,
            commit: None,
            resolved_by_deployment: None,
        }
    }

    fn linked(mut i: Incident, deployment_id: &str) -> Incident {
        i.deployment_id = Some(deployment_id.into());
        i
    }

    fn events(deployments: Vec<Deployment>, incidents: Vec<Incident>) -> Events {
        Events {
            deployments,
            incidents,
            regressions: Vec::new(),
        }
    }

    fn api(events: &Events, window: Window) -> ServiceReport {
        let r = report(NOW, events, window, &Scope::environment("production"));
        assert_eq!(r.services.len(), 1, "{r:#?}");
        r.services.into_iter().next().expect("one row")
    }

    fn close(name: &str, got: Option<f64>, want: Option<f64>) {
        match (got, want) {
            (Some(g), Some(w)) => assert!((g - w).abs() < 1e-6, "{name}: got {g}, want {w}"),
            _ => assert_eq!(got, want, "{name}"),
        }
    }

    #[test]
    fn empty_events_give_no_rows() {
        let r = report(
            NOW,
            &Events::default(),
            Window::days(30),
            &Scope::environment("production"),
        );
        assert!(r.services.is_empty());
        assert_eq!(r.window_start, NOW - 30 * D);
    }

    #[test]
    fn no_deployment_in_window_gives_none_not_nan() {
        // One deployment 10 days ago, one unlinked incident resolved yesterday.
        let e = events(
            vec![dep("old", NOW - 10 * D, vec![ch("a", NOW - 11 * D)])],
            vec![inc("i", NOW - 2 * D, Some(NOW - 2 * D + 1800))],
        );
        let r = api(&e, Window::days(7));
        assert_eq!(r.deployments, 0);
        assert_eq!(r.deployment_frequency_per_day, 0.0);
        assert_eq!(r.deployment_frequency_class, None);
        assert_eq!(r.changes, 0);
        assert_eq!(r.lead_time_median_seconds, None);
        assert_eq!(r.lead_time_p90_seconds, None);
        assert_eq!(r.change_fail_rate, None);
        assert_eq!(r.rework_rate, None);
        // The incident still has a recovery time.
        assert_eq!(r.recovery_time_median_seconds, Some(1800.0));
        // A service with only an incident gets a row too.
        let only_incident = events(vec![], vec![inc("j", NOW - H, Some(NOW - 1))]);
        let r = api(&only_incident, Window::days(1));
        assert_eq!(r.deployments, 0);
        assert_eq!(r.change_fail_rate, None);
        assert_eq!(r.recovery_time_median_seconds, Some((H - 1) as f64));
    }

    struct LeadCase {
        name: &'static str,
        deployments: Vec<Deployment>,
        window: Window,
        deployments_in_window: u64,
        changes: u64,
        clamped: u64,
        median: Option<f64>,
        p90: Option<f64>,
    }

    #[test]
    fn lead_time_cases() {
        let t = NOW - D;
        let squash = Change {
            sha: "sq".into(),
            timestamp: t - 60,
            pr_first_commit_at: Some(t - 3 * D),
        };
        let cases = vec![
            LeadCase {
                name: "one deployment, two changes",
                deployments: vec![dep("a", t, vec![ch("x", t - 2 * H), ch("y", t - 4 * H)])],
                window: Window::days(7),
                deployments_in_window: 1,
                changes: 2,
                clamped: 0,
                // [7200, 14400]: median 10800, p90 7200 + 0.9 × 7200
                median: Some(10_800.0),
                p90: Some(13_680.0),
            },
            LeadCase {
                name: "deployment with no changes",
                deployments: vec![dep("a", t, vec![])],
                window: Window::days(7),
                deployments_in_window: 1,
                changes: 0,
                clamped: 0,
                median: None,
                p90: None,
            },
            LeadCase {
                name: "commit deployed twice counts at its first deployment",
                deployments: vec![
                    dep(
                        "a",
                        t - 2 * H,
                        vec![ch("x", t - 2 * H - 100), ch("y", t - 2 * H - 200)],
                    ),
                    dep("b", t, vec![ch("y", t - 2 * H - 200), ch("z", t - 50)]),
                ],
                window: Window::days(7),
                deployments_in_window: 2,
                changes: 3,
                clamped: 0,
                // x 100, y 200 (at a), z 50 → [50, 100, 200]; p90 rank 1.8 → 100 + 0.8 × 100
                median: Some(100.0),
                p90: Some(180.0),
            },
            LeadCase {
                name: "first deployment before the window keeps the change out of it",
                deployments: vec![
                    dep("a", NOW - 10 * D, vec![ch("y", NOW - 11 * D)]),
                    dep("b", t, vec![ch("y", NOW - 11 * D), ch("z", t - 50)]),
                ],
                window: Window::days(7),
                deployments_in_window: 1,
                changes: 1,
                clamped: 0,
                median: Some(50.0),
                p90: Some(50.0),
            },
            LeadCase {
                name: "squash merge uses the pull request's first commit",
                deployments: vec![dep("a", t, vec![squash])],
                window: Window::days(7),
                deployments_in_window: 1,
                changes: 1,
                clamped: 0,
                median: Some((3 * D) as f64),
                p90: Some((3 * D) as f64),
            },
            LeadCase {
                name: "change clock ahead of deploy clock clamps to 0 and counts",
                deployments: vec![dep("a", t, vec![ch("x", t + 500), ch("y", t - 100)])],
                window: Window::days(7),
                deployments_in_window: 1,
                changes: 2,
                clamped: 1,
                // [0, 100]
                median: Some(50.0),
                p90: Some(90.0),
            },
            LeadCase {
                name: "late events are ordered by time, not arrival",
                // b arrives before a but finished later: x is first shipped by a.
                deployments: vec![
                    dep(
                        "b",
                        NOW - 2 * D,
                        vec![ch("x", NOW - 3 * D - 1000), ch("y", NOW - 2 * D - 10)],
                    ),
                    dep("a", NOW - 3 * D, vec![ch("x", NOW - 3 * D - 1000)]),
                ],
                window: Window::days(7),
                deployments_in_window: 2,
                changes: 2,
                clamped: 0,
                // x 1000 at a, y 10 at b
                median: Some(505.0),
                p90: Some(901.0),
            },
            LeadCase {
                name: "empty shas are never deduplicated",
                deployments: vec![
                    dep("a", t - 100, vec![ch("", t - 300)]),
                    dep("b", t, vec![ch("", t - 300)]),
                ],
                window: Window::days(7),
                deployments_in_window: 2,
                changes: 2,
                clamped: 0,
                // [200, 300]
                median: Some(250.0),
                p90: Some(290.0),
            },
        ];
        for c in cases {
            let r = api(&events(c.deployments, vec![]), c.window);
            assert_eq!(r.deployments, c.deployments_in_window, "{}", c.name);
            assert_eq!(r.changes, c.changes, "{}", c.name);
            assert_eq!(r.changes_clamped, c.clamped, "{}", c.name);
            close(c.name, r.lead_time_median_seconds, c.median);
            close(c.name, r.lead_time_p90_seconds, c.p90);
        }
    }

    /// A failed attempt retried, a rollback by version during an incident, a redelivery;
    /// every figure computed by hand.
    #[test]
    fn retried_failure_and_rollback_by_version() {
        let v = |mut d: Deployment, version: &str| {
            d.version = version.into();
            d
        };
        let (t1, t2, t3, t4) = (NOW - 10 * D, NOW - 8 * D, NOW - 5 * D, NOW - 2 * D);
        let mut failed = v(dep("run-2-1", t2, vec![ch("c2", t2 - 3 * H)]), "2");
        failed.status = DeployStatus::Failure;
        let e = events(
            vec![
                v(dep("run-1-1", t1, vec![ch("c1", t1 - 2 * H)]), "1"),
                failed,
                // The retry of the same version succeeds: a deployment (lead 4h).
                v(dep("run-2-2", t2 + H, vec![ch("c2", t2 - 3 * H)]), "2"),
                v(dep("run-3-1", t3, vec![ch("c3", t3 - H)]), "3"),
                // Version 2 again while version 3 is live: a rollback, blaming run-3-1,
                // rework because I1 is open.
                v(dep("run-4-1", t3 + 2 * H, vec![]), "2"),
                v(dep("run-5-1", t4, vec![ch("c4", t4 - 6 * H)]), "4"),
                // Redelivered: counted once.
                v(dep("run-5-1", t4, vec![ch("c4", t4 - 6 * H)]), "4"),
            ],
            vec![inc("I1", t3 + H, Some(t3 + 3 * H))],
        );
        let r = api(&e, Window::days(30));
        assert_eq!(r.deployments, 5);
        // Leads 2h, 4h, 1h, 6h: median (2h + 4h) / 2.
        assert_eq!(r.changes, 4);
        assert_eq!(r.lead_time_median_seconds, Some(10_800.0));
        assert_eq!(r.failed_deployments, 1);
        assert_eq!(r.change_fail_rate, Some(0.2));
        // I1 is linked to no deployment: from its own start, 2h.
        assert_eq!(r.recovery_time_median_seconds, Some(7200.0));
        assert_eq!(r.rework_deployments, 1);
        assert_eq!(r.rework_rate, Some(0.2));

        // Without an open incident the rollback still blames the deployment it replaces,
        // but it is not rework.
        let mut calm = e.clone();
        calm.incidents.clear();
        let r = api(&calm, Window::days(30));
        assert_eq!((r.failed_deployments, r.rework_deployments), (1, 0));

        // 1, 2, 1, 2: the second 2 rolls forward (2 was first deployed after 1): one
        // rollback, blaming the first 2.
        let e = events(
            vec![
                v(dep("a", t1, vec![]), "1"),
                v(dep("b", t2, vec![]), "2"),
                v(dep("c", t3, vec![]), "1"),
                v(dep("d", t4, vec![]), "2"),
            ],
            vec![],
        );
        let r = api(&e, Window::days(30));
        assert_eq!((r.deployments, r.failed_deployments), (4, 1));
    }

    #[test]
    fn dedup_by_delivery_id_and_by_version() {
        let t = NOW - D;
        let mut retry = dep("d1", t + 30, vec![ch("a", t - 100)]);
        retry.version = "1.0".into();
        let mut first = dep("d1", t, vec![ch("a", t - 100)]);
        first.version = "1.0".into();
        let mut same_version = dep("d2", t + 60, vec![ch("b", t - 40)]);
        same_version.version = "1.0".into();
        let mut failed = dep("d3", t + 100, vec![ch("c", t)]);
        failed.status = DeployStatus::Failure;
        let mut staging = dep("d4", t + 200, vec![ch("d", t)]);
        staging.environment = "staging".into();
        let e = events(
            vec![retry, same_version, first, failed, staging],
            vec![linked(inc("i", t + 500, None), "d2")],
        );
        let r = api(&e, Window::days(7));
        assert_eq!(r.deployments, 1);
        assert_eq!(r.deployment_frequency_per_day, 1.0 / 7.0);
        // a at d1: 100; b (carried by the duplicate d2) at d1's time: 40.
        assert_eq!(r.changes, 2);
        assert_eq!(r.lead_time_median_seconds, Some(70.0));
        // The incident names the duplicate's id: the counted deployment failed.
        assert_eq!(r.failed_deployments, 1);
        assert_eq!(r.change_fail_rate, Some(1.0));
        assert_eq!(r.incidents_open, 1);
    }

    #[test]
    fn change_fail_rate_causes() {
        let t = |k: i64| NOW - 6 * D + k * H;
        let mut by_commit = inc("i2", t(2) + 60, Some(t(2) + 600));
        by_commit.commit = Some("head-d2".into());
        let mut fixes_d1 = kind(dep("d7", t(7), vec![]), DeploymentKind::Hotfix);
        fixes_d1.fixes_deployment = Some("d1".into());
        let mut e = events(
            vec![
                dep("d1", t(1), vec![]),
                dep("d2", t(2), vec![]),
                dep("d3", t(3), vec![]),
                kind(dep("d4", t(4), vec![]), DeploymentKind::Hotfix),
                dep("d5", t(5), vec![]),
                dep("d6", t(6), vec![]),
                fixes_d1,
            ],
            vec![
                linked(inc("i1", t(1) + 60, None), "d1"),
                by_commit,
                // Unlinked: recovery time only.
                inc("i3", t(6) + 60, Some(t(6) + 120)),
                // Names a deployment that does not exist: no blame.
                linked(inc("i4", t(6) + 60, None), "nope"),
            ],
        );
        e.regressions.push(RegressionFinding {
            deployment_id: "d5".into(),
            service: "api".into(),
            environment: "production".into(),
            started_at: t(5) + 120,
            resolved_at: Some(t(5) + 720),
        });
        let r = api(&e, Window::days(7));
        // d1 (incident id, and d7's fixes_deployment), d2 (commit), d3 (followed by the
        // hotfix d4), d5 (regression). d6 is followed by d7, which names d1 instead.
        assert_eq!(r.deployments, 7);
        assert_eq!(r.failed_deployments, 4);
        assert_eq!(r.change_fail_rate, Some(4.0 / 7.0));
        assert_eq!(r.rework_deployments, 2);
        assert_eq!(r.rework_rate, Some(2.0 / 7.0));
        // Recoveries: i2 600 - 0 from d2's finish = 600; i3 60; finding 720 from d5 → [60, 600, 720].
        assert_eq!(r.incidents_resolved, 3);
        assert_eq!(r.recovery_time_median_seconds, Some(600.0));
        assert_eq!(r.incidents_open, 2);
    }

    #[test]
    fn rollback_blames_previous_deployment_by_time() {
        // Arrival order: rollback, b, a. By time: a, b, rollback → b failed.
        let e = events(
            vec![
                kind(dep("r", NOW - D, vec![]), DeploymentKind::Rollback),
                dep("b", NOW - 2 * D, vec![]),
                dep("a", NOW - 3 * D, vec![]),
            ],
            vec![],
        );
        let r = report(NOW, &e, Window::days(7), &Scope::environment("production"));
        let row = &r.services[0];
        assert_eq!(row.failed_deployments, 1);
        assert_eq!(row.change_fail_rate, Some(1.0 / 3.0));
        assert_eq!(row.rework_rate, Some(1.0 / 3.0));
        // In a 1d window only the rollback itself is in: 0 failed, 1 rework.
        let r = api(&e, Window::from_seconds(D + 1).expect("positive"));
        assert_eq!(
            (r.deployments, r.failed_deployments, r.rework_deployments),
            (1, 0, 1)
        );
    }

    #[test]
    fn incident_commit_blames_first_shipper_of_a_change() {
        let mut i = inc("i", NOW - D, None);
        i.commit = Some("x".into());
        let e = events(
            vec![
                dep("a", NOW - 3 * D, vec![ch("x", NOW - 4 * D)]),
                dep(
                    "b",
                    NOW - 2 * D,
                    vec![ch("x", NOW - 4 * D), ch("y", NOW - 3 * D)],
                ),
            ],
            vec![i],
        );
        let r = api(&e, Window::days(7));
        assert_eq!(r.failed_deployments, 1);
        assert_eq!(r.change_fail_rate, Some(0.5));
        // Only a failed: b alone in a 2.5-day window shows 0.
        let r = api(&e, Window::from_seconds(2 * D + D / 2).expect("positive"));
        assert_eq!((r.deployments, r.failed_deployments), (1, 0));
    }

    #[test]
    fn recovery_time_window_edges() {
        let t0 = NOW - 3 * D;
        let e = events(
            vec![dep("d", t0, vec![])],
            vec![
                // Linked: from the deployment's finish, 600 + 3000.
                linked(inc("i1", t0 + 600, Some(t0 + 3600)), "d"),
                // Unlinked: from its own start.
                inc("i2", NOW - 2 * D, Some(NOW - 2 * D + 1200)),
                // Unresolved: excluded, open.
                inc("i3", NOW - D, None),
                // Started before the window, resolved in it: counts in full.
                inc("i4", NOW - 10 * D, Some(NOW - 6 * D)),
                // Resolved before the 7d window: only in the 30d one.
                inc("i5", NOW - 9 * D, Some(NOW - 8 * D)),
                // Resolved after now: still open.
                inc("i6", NOW - H, Some(NOW + H)),
                // Starts after now: ignored.
                inc("i7", NOW + 10, Some(NOW + 20)),
            ],
        );
        let r = api(&e, Window::days(7));
        assert_eq!(r.incidents_resolved, 3);
        assert_eq!(r.incidents_open, 2);
        // [1200, 3600, 345600]: p90 rank 1.8 → 3600 + 0.8 × 342000
        close("7d median", r.recovery_time_median_seconds, Some(3600.0));
        close("7d p90", r.recovery_time_p90_seconds, Some(277_200.0));
        // The unlinked incidents do not make deployments fail.
        assert_eq!(r.change_fail_rate, Some(1.0));
        let r = api(&e, Window::days(30));
        // [1200, 3600, 86400, 345600]
        assert_eq!(r.incidents_resolved, 4);
        close("30d median", r.recovery_time_median_seconds, Some(45_000.0));
        // Resolved before it started (clock skew) clamps to 0.
        let skew = events(vec![], vec![inc("s", NOW - 100, Some(NOW - 150))]);
        assert_eq!(
            api(&skew, Window::days(1)).recovery_time_median_seconds,
            Some(0.0)
        );
    }

    #[test]
    fn references_across_services_resolve() {
        // An incident filed against "web" blames an "api" deployment; a finding filed
        // under a service with no events of its own still finds its deployment.
        let mut on_web = linked(inc("w", NOW - D, Some(NOW - D + 600)), "a");
        on_web.service = "web".into();
        let mut e = events(
            vec![dep("a", NOW - 2 * D, vec![]), dep("b", NOW - 3 * D, vec![])],
            vec![on_web],
        );
        e.regressions.push(RegressionFinding {
            deployment_id: "b".into(),
            service: "ghost".into(),
            environment: "production".into(),
            started_at: NOW - 3 * D + 60,
            resolved_at: Some(NOW - 3 * D + 360),
        });
        let r = report(NOW, &e, Window::days(7), &Scope::environment("production"));
        let rows: Vec<(&str, u64, u64, Option<f64>)> = r
            .services
            .iter()
            .map(|s| {
                (
                    s.service.as_str(),
                    s.deployments,
                    s.failed_deployments,
                    s.recovery_time_median_seconds,
                )
            })
            .collect();
        // api: both failed; b's finding recovers in 360 s from b's finish. web: the
        // incident recovers from a's finish, a day and 600 s earlier.
        assert_eq!(
            rows,
            vec![
                ("api", 2, 2, Some(360.0)),
                ("web", 0, 0, Some((D + 600) as f64)),
            ]
        );
    }

    /// Deterministic pseudo-random events: whatever the mix, no NaN, rates in 0..=1,
    /// counts consistent.
    #[test]
    fn arbitrary_events_keep_invariants() {
        let mut state = 7_u64;
        let mut next = |n: i64| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            i64::try_from(state >> 33).expect("31 bits") % n
        };
        let mut e = Events::default();
        for k in 0..400 {
            let finished = NOW - next(40 * D) + next(2 * D);
            let mut d = dep(&format!("d{}", next(300)), finished, vec![]);
            d.service = format!("s{}", next(3));
            d.version = format!("v{}", next(200));
            d.environment = ["production", "staging"][usize::from(next(5) == 0)].into();
            d.status = [DeployStatus::Success, DeployStatus::Failure][usize::from(next(8) == 0)];
            d.kind = [
                DeploymentKind::Normal,
                DeploymentKind::Hotfix,
                DeploymentKind::Rollback,
            ][usize::try_from(next(3)).expect("small")];
            for _ in 0..next(4) {
                let mut c = ch(&format!("c{}", next(600)), finished - next(5 * D) + next(D));
                if next(4) == 0 {
                    c.pr_first_commit_at = Some(c.timestamp - next(D));
                }
                d.commits.push(c);
            }
            if next(3) == 0 {
                d.fixes_deployment = Some(format!("d{}", next(300)));
            }
            if next(5) == 0 {
                d.resolves_incidents.push(format!("i{}", next(100)));
            }
            e.deployments.push(d);
            if k % 4 == 0 {
                let started = NOW - next(40 * D) + next(2 * D);
                let mut i = inc(
                    &format!("i{k}"),
                    started,
                    (next(4) != 0).then(|| started + next(3 * D) - next(H)),
                );
                i.service = format!("s{}", next(4));
                if next(2) == 0 {
                    i.deployment_id = Some(format!("d{}", next(300)));
                } else if next(2) == 0 {
                    i.commit = Some(format!("c{}", next(600)));
                }
                e.incidents.push(i);
            }
        }
        for window in Window::DEFAULTS {
            for scope in [Scope::environment("production"), Scope::default()] {
                let r = report(NOW, &e, window, &scope);
                assert!(!r.services.is_empty());
                for total in &r.totals {
                    let rows = r
                        .services
                        .iter()
                        .filter(|s| s.environment == total.environment);
                    let (deployments, changes, failed) = rows.fold((0, 0, 0), |acc, s| {
                        (
                            acc.0 + s.deployments,
                            acc.1 + s.changes,
                            acc.2 + s.failed_deployments,
                        )
                    });
                    assert_eq!(
                        (total.deployments, total.changes, total.failed_deployments),
                        (deployments, changes, failed)
                    );
                }
                for s in &r.services {
                    for v in [
                        s.lead_time_median_seconds,
                        s.lead_time_p90_seconds,
                        s.recovery_time_median_seconds,
                        s.recovery_time_p90_seconds,
                    ]
                    .into_iter()
                    .flatten()
                    {
                        assert!(v.is_finite() && v >= 0.0, "{s:?}");
                    }
                    for rate in [s.change_fail_rate, s.rework_rate].into_iter().flatten() {
                        assert!((0.0..=1.0).contains(&rate), "{s:?}");
                    }
                    assert!(s.failed_deployments <= s.deployments);
                    assert!(s.rework_deployments <= s.deployments);
                    assert!(s.changes_clamped <= s.changes);
                    assert_eq!(s.change_fail_rate.is_none(), s.deployments == 0);
                    assert_eq!(s.deployment_frequency_class.is_none(), s.deployments == 0);
                    assert!(s.lead_time_median_seconds <= s.lead_time_p90_seconds);
                }
            }
        }
    }

    /// Pseudo-random events from `seed` with `n` deploy events over a few services and
    /// both environments: duplicate ids and versions, empty ids, versions and shas,
    /// commits shipped twice, hotfixes and rollbacks with and without `fixes_deployment`,
    /// incidents linked by id (across services too), by head commit or change, or not at
    /// all, resolved by deployments either way, and regression findings.
    fn random_events(seed: u64, n: usize) -> Events {
        let mut next = crate::dora::test_random(seed);
        let ids = i64::try_from(n).expect("small") + 10;
        let mut e = Events::default();
        for k in 0..n {
            let finished = NOW - next(100 * D) + next(3 * D);
            let id = if next(20) == 0 {
                String::new()
            } else {
                format!("d{}", next(ids))
            };
            let mut d = dep(&id, finished, vec![]);
            d.started_at = finished - next(2 * H) + next(60);
            d.service = format!("s{}", next(5));
            d.version = if next(10) == 0 {
                String::new()
            } else {
                format!("v{}", next(ids))
            };
            d.commit = format!("c{}", next(3 * ids));
            d.environment = ["production", "staging"][usize::from(next(4) == 0)].into();
            d.status = [DeployStatus::Success, DeployStatus::Failure][usize::from(next(10) == 0)];
            d.kind = [
                DeploymentKind::Normal,
                DeploymentKind::Hotfix,
                DeploymentKind::Rollback,
            ][usize::try_from(next(3)).expect("small")];
            for _ in 0..next(6) {
                let sha = if next(30) == 0 {
                    String::new()
                } else {
                    format!("c{}", next(3 * ids))
                };
                let mut c = ch(&sha, finished - next(10 * D) + next(D));
                if next(4) == 0 {
                    c.pr_first_commit_at = Some(c.timestamp - next(D));
                }
                d.commits.push(c);
            }
            if next(3) == 0 {
                d.fixes_deployment = Some(format!("d{}", next(ids)));
            }
            if next(6) == 0 {
                d.resolves_incidents.push(format!("i{}", next(ids / 3)));
            }
            e.deployments.push(d);
            if k % 3 == 0 {
                let started = NOW - next(100 * D) + next(3 * D);
                let mut i = inc(
                    &format!("i{}", k / 3),
                    started,
                    (next(4) != 0).then(|| started + next(3 * D) - next(H)),
                );
                i.service = format!("s{}", next(6));
                i.environment = ["production", "staging"][usize::from(next(4) == 0)].into();
                match next(4) {
                    0 => i.deployment_id = Some(format!("d{}", next(ids))),
                    1 => i.commit = Some(format!("c{}", next(3 * ids))),
                    2 if next(2) == 0 => {
                        i.deployment_id = Some(format!("d{}", next(ids)));
                        i.commit = Some(format!("c{}", next(3 * ids)));
                    }
                    _ => {}
                }
                if next(5) == 0 {
                    i.resolved_by_deployment = Some(format!("d{}", next(ids)));
                }
                e.incidents.push(i);
            }
            if k % 7 == 0 {
                let started = NOW - next(100 * D) + next(3 * D);
                e.regressions.push(RegressionFinding {
                    deployment_id: format!("d{}", next(ids)),
                    service: format!("s{}", next(5)),
                    environment: "production".into(),
                    started_at: started,
                    resolved_at: (next(3) != 0).then(|| started + next(D)),
                });
            }
        }
        e
    }

    /// A history as the store holds it, from `seed`: `n` deploy events over four services
    /// and two environments with unique delivery ids (a few redelivered as exact copies, a
    /// few with empty ids), failures, retries and repeats of the live version, rollbacks by
    /// version and by kind, hotfixes naming what they fix (or an unknown id), commits shipped
    /// twice and empty shas, squash-merge times, events finished after `NOW`; incidents with
    /// unique ids linked by delivery id (across services too), by head commit or change, or
    /// not at all, open, resolved, resolved after `NOW`, resolved by deployments either way;
    /// and regression findings.
    fn store_shaped_events(seed: u64, n: usize) -> Events {
        let mut next = crate::dora::test_random(seed);
        let count = i64::try_from(n).expect("small") + 1;
        let mut e = Events::default();
        let mut live_version = [0_i64; 8];
        for k in 0..n {
            if k > 0 && next(15) == 0 {
                let copy = e.deployments
                    [usize::try_from(next(i64::try_from(k).expect("small"))).expect("small")]
                .clone();
                e.deployments.push(copy);
                continue;
            }
            let finished = NOW - next(120 * D) + next(2 * D);
            let id = if next(40) == 0 {
                String::new()
            } else {
                format!("d{k}")
            };
            let mut d = dep(&id, finished, vec![]);
            d.started_at = finished - next(2 * H) + next(60);
            let s = usize::try_from(next(4)).expect("small");
            d.service = format!("s{s}");
            let env = usize::from(next(4) == 0);
            d.environment = ["production", "staging"][env].into();
            let slot = s * 2 + env;
            d.version = match next(10) {
                0 => String::new(),
                1 | 2 => format!("v{}", live_version[slot]),
                3 => format!("v{}", next(live_version[slot] + 1)),
                _ => {
                    live_version[slot] += 1;
                    format!("v{}", live_version[slot])
                }
            };
            d.commit = format!("c{s}-{}", next(3 * count));
            d.status = [DeployStatus::Success, DeployStatus::Failure][usize::from(next(8) == 0)];
            d.kind = match next(12) {
                0 => DeploymentKind::Hotfix,
                1 => DeploymentKind::Rollback,
                _ => DeploymentKind::Normal,
            };
            for _ in 0..next(5) {
                let sha = if next(30) == 0 {
                    String::new()
                } else {
                    format!("c{s}-{}", next(3 * count))
                };
                let mut c = ch(&sha, finished - next(10 * D) + next(D));
                if next(4) == 0 {
                    c.pr_first_commit_at = Some(c.timestamp - next(D));
                }
                d.commits.push(c);
            }
            if d.kind != DeploymentKind::Normal && next(2) == 0 {
                d.fixes_deployment = Some(format!("d{}", next(count + 5)));
            }
            if next(8) == 0 {
                d.resolves_incidents
                    .push(format!("i{}", next(count / 3 + 2)));
            }
            e.deployments.push(d);
            if k % 3 == 0 {
                let started = NOW - next(120 * D) + next(2 * D);
                let mut i = inc(
                    &format!("i{}", k / 3),
                    started,
                    (next(4) != 0).then(|| started + next(3 * D) - next(H)),
                );
                let s = next(5);
                i.service = format!("s{s}");
                i.environment = ["production", "staging"][usize::from(next(4) == 0)].into();
                match next(4) {
                    0 => i.deployment_id = Some(format!("d{}", next(count + 5))),
                    1 => i.commit = Some(format!("c{s}-{}", next(3 * count))),
                    2 if next(2) == 0 => {
                        i.deployment_id = Some(format!("d{}", next(count + 5)));
                        i.commit = Some(format!("c{s}-{}", next(3 * count)));
                    }
                    _ => {}
                }
                if next(5) == 0 {
                    i.resolved_by_deployment = Some(format!("d{}", next(count)));
                }
                e.incidents.push(i);
            }
            if k % 7 == 0 {
                let started = NOW - next(120 * D) + next(2 * D);
                e.regressions.push(RegressionFinding {
                    deployment_id: format!("d{}", next(count)),
                    service: format!("s{}", next(4)),
                    environment: "production".into(),
                    started_at: started,
                    resolved_at: (next(3) != 0).then(|| started + next(D)),
                });
            }
        }
        e
    }

    const PROPERTY_WINDOWS: [Window; 5] = [
        Window::days(1),
        Window::days(7),
        Window::days(30),
        Window::days(90),
        Window::days(Window::MAX_DAYS),
    ];

    fn property_scopes() -> [Scope; 5] {
        [
            Scope::default(),
            Scope::environment("production"),
            Scope::environment("staging"),
            Scope::environment("production").with_service("s1"),
            Scope::default().with_service("s2"),
        ]
    }

    proptest::proptest! {
        /// One history linked once serves every window: its slices equal the report.
        #[test]
        fn one_history_serves_every_window(seed in proptest::prelude::any::<u64>(), n in 0_usize..120) {
            let e = store_shaped_events(seed, n);
            let table = Table::from_events(&e);
            let lineages = lineages(&table, NOW, &Scope::default());
            for scope in property_scopes() {
                let history = History::link(NOW, &lineages, &table, &scope);
                for window in PROPERTY_WINDOWS {
                    let want = report(NOW, &e, window, &scope);
                    let counts: Vec<_> = want
                        .services
                        .iter()
                        .map(|r| {
                            (
                                r.service.as_str(),
                                r.environment.as_str(),
                                r.deployments,
                                r.failed_deployments,
                                r.rework_deployments,
                            )
                        })
                        .collect();
                    proptest::prop_assert_eq!(history.counts(window), counts);
                    proptest::prop_assert_eq!(history.report(window), want);
                }
            }
        }
    }

    /// SHA-256 of the JSON of every report (the property windows and scopes) of 96
    /// store-shaped histories of 0 to 300 events, as the released computation gave them.
    const SAVED_OUTPUTS_SHA256: &str =
        "a5f070ede02a29b59336845c064c791ef2b09b52cb8f9f77b8be4da5ba107118";

    /// The same of 48 dense histories (`random_events`: delivery ids shared across services).
    const SAVED_DENSE_OUTPUTS_SHA256: &str =
        "7daa924563b68342a8d4ba660ca76cb2bedec212197d5e8d45e8e4045dfd1d06";

    fn outputs_digest(
        histories: impl Iterator<Item = Events>,
        compute: impl Fn(&Events, Window, &Scope) -> Report,
    ) -> String {
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        for e in histories {
            for scope in property_scopes() {
                for window in PROPERTY_WINDOWS {
                    let json = serde_json::to_string(&compute(&e, window, &scope)).expect("json");
                    hash.update(json.as_bytes());
                }
            }
        }
        hex::encode(hash.finalize())
    }

    fn store_shaped() -> impl Iterator<Item = Events> {
        (0..96_u64).map(|seed| {
            let n = [0, 1, 7, 50, 120, 300][usize::try_from(seed % 6).expect("small")];
            store_shaped_events(seed, n)
        })
    }

    fn dense() -> impl Iterator<Item = Events> {
        (0..48_u64).map(|seed| {
            let n = [1, 7, 50, 300][usize::try_from(seed % 4).expect("small")];
            random_events(seed, n)
        })
    }

    /// The reports of a fixed set of histories are the released computation's, to the byte:
    /// the digests were taken from the computation as released (FxHash, fingerprints, a
    /// thread pool), which a property test held equal to this one on random histories
    /// before it was removed.
    #[test]
    fn saved_outputs_of_the_released_computation() {
        let plain = |e: &Events, w, s: &Scope| report(NOW, e, w, s);
        assert_eq!(outputs_digest(store_shaped(), plain), SAVED_OUTPUTS_SHA256);
        assert_eq!(outputs_digest(dense(), plain), SAVED_DENSE_OUTPUTS_SHA256);
    }

    #[test]
    fn regression_findings_never_double_count() {
        let finding = |id: &str, started_at: i64, resolved_at: Option<i64>| RegressionFinding {
            deployment_id: id.into(),
            service: "api".into(),
            environment: "production".into(),
            started_at,
            resolved_at,
        };
        let (d, e, f) = (NOW - 3 * D, NOW - 2 * D, NOW - D);
        let mut ev = events(
            vec![
                dep("d", d, vec![]),
                dep("e", e, vec![]),
                dep("f", f, vec![]),
            ],
            vec![linked(inc("i", d + 100, Some(d + 700)), "d")],
        );
        ev.regressions = vec![
            finding("d", d + 50, Some(d + 2000)),
            finding("e", e + 60, Some(e + 660)),
            finding("e", e + 90, Some(e + 5000)),
            finding("f", f + 10, None),
        ];
        let r = api(&ev, Window::days(7));
        assert_eq!(r.failed_deployments, 3);
        // d: the explicit incident, 700; e: the earliest finding, 660; f open.
        assert_eq!(r.incidents_resolved, 2);
        assert_eq!(r.recovery_time_median_seconds, Some(680.0));
        assert_eq!(r.incidents_open, 1);
    }

    #[test]
    fn rework_resolving_an_open_incident() {
        let t = NOW - 5 * D;
        let mut f = dep("f", t + 2 * H, vec![]);
        f.resolves_incidents = vec!["j".into()];
        let mut g = dep("g", t + 4 * H, vec![]);
        g.resolves_incidents = vec!["k".into()];
        let mut l = inc("l", t + 5 * H, Some(t + 7 * H));
        l.resolved_by_deployment = Some("h".into());
        let mut m = inc("m", t + 9 * H, Some(t + 10 * H));
        m.resolved_by_deployment = Some("n".into());
        let e = events(
            vec![
                f,
                g,
                dep("h", t + 6 * H, vec![]),
                dep("n", t + 8 * H, vec![]),
            ],
            vec![
                // Open when f was deployed.
                inc("j", t + H, Some(t + 3 * H)),
                // Resolved before g started.
                inc("k", t, Some(t + H)),
                // Open when h was deployed.
                l,
                // Started after n: n cannot have resolved it as rework.
                m,
            ],
        );
        let r = api(&e, Window::days(7));
        assert_eq!(r.deployments, 4);
        assert_eq!(r.rework_deployments, 2);
        assert_eq!(r.rework_rate, Some(0.5));
        assert_eq!(r.change_fail_rate, Some(0.0));
    }

    #[test]
    fn window_is_start_exclusive_end_inclusive() {
        let e = events(
            vec![
                dep("at-start", NOW - 7 * D, vec![]),
                dep("inside", NOW - D, vec![]),
                dep("at-now", NOW, vec![]),
                dep("future", NOW + 1, vec![]),
            ],
            vec![],
        );
        let r = api(&e, Window::days(7));
        assert_eq!(r.deployments, 2);
        assert_eq!(r.deployment_frequency_per_day, 2.0 / 7.0);
    }

    #[test]
    fn totals_pool_services_per_environment() {
        let t = NOW - 2 * D;
        let mut web_a = dep("wa", t, vec![ch("w1", t - 1000)]);
        web_a.service = "web".into();
        let mut web_b = kind(dep("wb", t + H, vec![]), DeploymentKind::Rollback);
        web_b.service = "web".into();
        let mut staging = dep("s", t, vec![ch("s1", t - 5)]);
        staging.environment = "staging".into();
        let e = events(
            vec![
                dep("a", t, vec![ch("a1", t - 100), ch("a2", t - 300)]),
                web_a,
                web_b,
                staging,
            ],
            vec![inc("i", t, Some(t + 50)), {
                let mut i = inc("j", t, Some(t + 150));
                i.service = "web".into();
                i
            }],
        );
        let r = report(NOW, &e, Window::days(7), &Scope::environment("production"));
        assert_eq!(r.totals.len(), 1);
        let all = &r.totals[0];
        assert_eq!(
            (all.service.as_str(), all.environment.as_str()),
            (ALL_SERVICES, "production")
        );
        // api 1 + web 2 deployments; wa failed (rolled back); wb is rework.
        assert_eq!(
            (
                all.deployments,
                all.failed_deployments,
                all.rework_deployments
            ),
            (3, 1, 1)
        );
        assert_eq!(all.change_fail_rate, Some(1.0 / 3.0));
        // Leads pooled: [100, 300, 1000] → median 300, not the median of medians (600).
        assert_eq!(all.changes, 3);
        assert_eq!(all.lead_time_median_seconds, Some(300.0));
        // Recoveries pooled: [50, 150].
        assert_eq!(all.recovery_time_median_seconds, Some(100.0));
        assert_eq!(all.deployment_frequency_per_day, 3.0 / 7.0);
        let r = report(NOW, &e, Window::days(7), &Scope::default());
        let envs: Vec<(&str, u64)> = r
            .totals
            .iter()
            .map(|t| (t.environment.as_str(), t.deployments))
            .collect();
        assert_eq!(envs, [("production", 3), ("staging", 1)]);
    }

    #[test]
    fn scope_filters_and_row_order() {
        let mut web = dep("w", NOW - D, vec![]);
        web.service = "web".into();
        let mut staging = dep("s", NOW - D, vec![]);
        staging.environment = "staging".into();
        let e = events(vec![web, dep("a", NOW - D, vec![]), staging], vec![]);
        let rows = |scope: &Scope| -> Vec<(String, String)> {
            report(NOW, &e, Window::days(7), scope)
                .services
                .into_iter()
                .map(|r| (r.service, r.environment))
                .collect()
        };
        let pair = |s: &str, e: &str| (s.to_owned(), e.to_owned());
        assert_eq!(
            rows(&Scope::environment("production")),
            vec![pair("api", "production"), pair("web", "production")]
        );
        assert_eq!(
            rows(&Scope::environment("production").with_service("web")),
            vec![pair("web", "production")]
        );
        assert_eq!(
            rows(&Scope::default()),
            vec![
                pair("api", "production"),
                pair("api", "staging"),
                pair("web", "production")
            ]
        );
    }

    #[test]
    fn frequency_classes() {
        // 28d window: weeks starting Mondays day 116 (Apr 27), 123, 130, 137 (May).
        let at = |day: i64, k: i64| dep(&format!("d{day}-{k}"), day * D + 10 * H + k, vec![]);
        let weeks = [116, 123, 130, 137];
        let cases: Vec<(&str, Vec<Deployment>, Option<FrequencyClass>)> = vec![
            ("none", vec![], None),
            (
                "three distinct days every week",
                weeks
                    .iter()
                    .flat_map(|&w| [at(w, 0), at(w + 1, 0), at(w + 2, 0)])
                    .collect(),
                Some(FrequencyClass::Daily),
            ),
            (
                "many deploys but on two days a week",
                weeks
                    .iter()
                    .flat_map(|&w| [at(w, 0), at(w, 1), at(w, 2), at(w + 3, 0)])
                    .collect(),
                Some(FrequencyClass::Weekly),
            ),
            (
                "three weeks of four",
                vec![at(116, 0), at(123, 0), at(130, 0)],
                Some(FrequencyClass::Weekly),
            ),
            (
                "two weeks of four: each month has a deploy week",
                vec![at(116, 0), at(125, 0)],
                Some(FrequencyClass::Monthly),
            ),
            (
                "one week in April only",
                vec![at(118, 0)],
                Some(FrequencyClass::Yearly),
            ),
        ];
        for (name, deployments, want) in cases {
            let mut deployments = deployments;
            deployments.push(dep("older", NOW - 60 * D, vec![]));
            let e = events(deployments, vec![]);
            let r = api(&e, Window::days(28));
            assert_eq!(r.deployment_frequency_class, want, "{name}");
        }
    }

    #[test]
    fn longest_window_counts_all_history() {
        let e = events(
            vec![
                dep("a", -400 * D, vec![ch("x", -401 * D)]),
                kind(dep("b", NOW - H, vec![]), DeploymentKind::Rollback),
            ],
            vec![],
        );
        let all = Window::days(Window::MAX_DAYS);
        let r = api(&e, all);
        assert_eq!(
            (r.deployments, r.failed_deployments, r.rework_deployments),
            (2, 1, 1)
        );
        assert_eq!(r.lead_time_median_seconds, Some(D as f64));
        assert_eq!(r.deployment_frequency_class, Some(FrequencyClass::Yearly));
        let several = reports(
            NOW,
            &e,
            &Window::DEFAULTS,
            &Scope::environment("production"),
        );
        let counts: Vec<u64> = several.iter().map(|r| r.services[0].deployments).collect();
        assert_eq!(counts, [1, 1, 1, 1]);
    }

    #[test]
    fn ingest_lead_times_match_report_rules() {
        let t = NOW - D;
        let a = dep("a", t - 1000, vec![ch("x", t - 2000)]);
        let mut failed = dep("f", t - 500, vec![ch("y", t - 3000)]);
        failed.status = DeployStatus::Failure;
        let mut other_service = dep("o", t - 500, vec![ch("z", t - 3000)]);
        other_service.service = "web".into();
        let later = dep("l", t + 1000, vec![ch("w", t - 10)]);
        let new = dep(
            "b",
            t,
            vec![
                ch("x", t - 2000),
                ch("y", t - 3000),
                ch("z", t - 3000),
                ch("w", t - 10),
                ch("skew", t + 30),
            ],
        );
        let history = [a.clone(), failed, other_service, later];
        let got = ingest_lead_times(&new, &history);
        // x was shipped by a; y only by a failed deploy, z by another service, w only
        // later: all three are new here. skew clamps.
        assert_eq!(
            got,
            LeadTimes {
                seconds: vec![3000, 3000, 10, 0],
                clamped: 1
            }
        );
        // Same events through report: the same lead times in b's deployment.
        let r = api(
            &events(vec![a.clone(), new.clone()], vec![]),
            Window::from_seconds(D + 1).expect("positive"),
        );
        assert_eq!((r.changes, r.changes_clamped), (4, 1));
        // A repeat of a: its new change is timed from a's finish.
        let mut repeat = dep("a", t, vec![ch("x", t - 2000), ch("v", t - 1500)]);
        repeat.version = "a".into();
        assert_eq!(ingest_lead_times(&repeat, [&a]).seconds, vec![500]);
        let mut unsuccessful = new;
        unsuccessful.status = DeployStatus::Failure;
        assert_eq!(ingest_lead_times(&unsuccessful, []), LeadTimes::default());
    }

    #[test]
    fn recovery_seconds_cases() {
        let d = dep("d", 1000, vec![]);
        let cases = [
            (inc("i", 1500, Some(2000)), Some(&d), Some(1000)),
            (inc("i", 500, Some(2000)), Some(&d), Some(1500)),
            (inc("i", 1500, Some(2000)), None, Some(500)),
            (inc("i", 1500, Some(1400)), None, Some(0)),
            (inc("i", 1500, None), Some(&d), None),
        ];
        for (incident, failing, want) in cases {
            assert_eq!(recovery_seconds(&incident, failing), want, "{incident:?}");
        }
    }

    #[test]
    fn calendar_helpers() {
        assert_eq!(month_of(0), 1970 * 12);
        assert_eq!(month_of(-1), 1969 * 12 + 11);
        assert_eq!(month_of(116), 1970 * 12 + 3);
        assert_eq!(month_of(120), 1970 * 12 + 4);
        assert_eq!(month_of(19_723), 2024 * 12); // 2024-01-01
        assert_eq!(month_of(19_722), 2023 * 12 + 11);
        assert_eq!(month_of(19_782), 2024 * 12 + 1); // 2024-02-29
        assert_eq!(month_of(19_783), 2024 * 12 + 2); // 2024-03-01
        assert_eq!(week_of(3), 0); // Sunday 1970-01-04
        assert_eq!(week_of(4), 1); // Monday 1970-01-05
        assert_eq!(day_of(-1), -1);
    }

    #[test]
    fn windows() {
        let labels: Vec<String> = Window::DEFAULTS.iter().map(ToString::to_string).collect();
        assert_eq!(labels, ["1d", "7d", "30d", "90d"]);
        let cases = [
            ("30d", Ok(30 * D)),
            ("12h", Ok(12 * H)),
            ("2w", Ok(14 * D)),
            ("90m", Ok(5400)),
            ("45s", Ok(45)),
            ("0d", Err(WindowError::NotPositive(0))),
            ("d", Err(WindowError::Syntax("d".into()))),
            ("", Err(WindowError::Syntax(String::new()))),
            ("7x", Err(WindowError::Syntax("7x".into()))),
            ("-1d", Err(WindowError::NotPositive(-D))),
            ("65535d", Ok(65_535 * D)),
            ("65536d", Err(WindowError::TooLong(65_536 * D))),
            (
                "99999999999999999w",
                Err(WindowError::Syntax("99999999999999999w".into())),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(Window::parse(text).map(Window::seconds), want, "{text}");
        }
        assert_eq!(Window::parse("12h").expect("valid").to_string(), "12h");
        assert_eq!(
            serde_json::to_string(&Window::days(7)).expect("json"),
            "604800"
        );
        assert!(serde_json::from_str::<Window>("0").is_err());
    }

    /// The straightforward quantile: sort a copy, interpolate between closest ranks.
    fn sorted_quantile(values: &[i64], q: f64) -> Option<f64> {
        let mut sorted = values.to_vec();
        sorted.sort_unstable();
        let last = sorted.len().checked_sub(1)?;
        let rank = q * last as f64;
        let lo = rank.floor() as usize;
        let a = sorted[lo] as f64;
        let b = if rank > lo as f64 {
            sorted[lo + 1] as f64
        } else {
            a
        };
        Some(a + (b - a) * (rank - lo as f64))
    }

    proptest::proptest! {
        /// The selection gives exactly (bit for bit) what a full sort gives.
        #[test]
        fn quantile_matches_sorted_reference(
            values in proptest::collection::vec(-50_i64..50, 0..300),
            q in 0.0_f64..=1.0,
        ) {
            let bits = |x: Option<f64>| x.map(f64::to_bits);
            for q in [0.5, 0.9, q, 0.0, 1.0] {
                let mut v = values.clone();
                proptest::prop_assert_eq!(bits(quantile(&mut v, q)), bits(sorted_quantile(&values, q)));
                let (lower, upper) = if q <= 0.5 { (q, 0.5) } else { (0.5, q) };
                let mut v = values.clone();
                let (a, b) = quantiles(&mut v, lower, upper);
                proptest::prop_assert_eq!(bits(a), bits(sorted_quantile(&values, lower)));
                proptest::prop_assert_eq!(bits(b), bits(sorted_quantile(&values, upper)));
            }
        }
    }
}

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
//!   success after a failure of the same version counts. Ids, versions and shas are
//!   compared by 64-bit fingerprint (see `fingerprint`): an accidental collision, about
//!   2^-63 per pair, would merge two of them.
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

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::model::{
    DeployStatus, Deployment, DeploymentKind, Events, Incident, RegressionFinding, UnixSeconds,
};

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

/// FxHash (rustc's hasher): a multiply-rotate hash, several times faster than SipHash on
/// the short ids and shas hashed here (hundreds of thousands per report). It is not
/// collision-resistant; the keys come from authenticated CI and webhook events, and the
/// worst case of crafted collisions is a slower report, never a wrong one.
#[derive(Debug, Default, Clone, Copy)]
struct FxHasher {
    hash: u64,
}

impl FxHasher {
    const SEED: u64 = 0xf135_7aea_2e62_a9c5;

    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0_u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        // The 0..=7 bytes left are read with at most three loads into the little-endian
        // word they form: a variable-length copy into a stack word calls `memcpy` and
        // stalls the load that follows it (a seventh of a report's time went there).
        let rest = chunks.remainder();
        let n = rest.len();
        let at = |byte: u8, index: usize| u64::from(byte) << (8 * index);
        let tail = match (rest.first_chunk::<4>(), rest.last_chunk::<4>()) {
            // 4..=7 bytes: two overlapping words, each at its own offset.
            (Some(&head), Some(&last)) => {
                u64::from(u32::from_le_bytes(head))
                    | (u64::from(u32::from_le_bytes(last)) << (8 * (n - 4)))
            }
            // 1..=3 bytes: the first, middle and last, each at its own offset.
            _ => match (rest.first(), rest.get(n / 2), rest.last()) {
                (Some(&a), Some(&b), Some(&c)) => at(a, 0) | at(b, n / 2) | at(c, n - 1),
                _ => 0,
            },
        };
        self.add(tail ^ ((n as u64) << 59));
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn finish(&self) -> u64 {
        self.hash.rotate_left(26)
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;
type FastSet<K> = HashSet<K, BuildHasherDefault<FxHasher>>;

/// A 64-bit fingerprint of a non-empty string (0 for the empty string): FxHash with a
/// murmur3 finaliser, low bit forced so no fingerprint is 0. Ids, versions and shas are
/// compared by fingerprint once read, so the hot passes touch compact records instead of
/// chasing every string (two different strings share a fingerprint with probability
/// about 2^-63 per pair; such a pair would be taken as equal).
fn fingerprint(s: &str) -> u64 {
    if s.is_empty() {
        return 0;
    }
    let mut h = FxHasher::default();
    h.write(s.as_bytes());
    let mut x = h.hash;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x | 1
}

/// One in-scope deploy event, reduced to what the computation needs.
#[derive(Clone, Copy)]
struct Rec<'a> {
    finished: UnixSeconds,
    started: UnixSeconds,
    id: u64,
    version: u64,
    /// Head commit, fingerprinted only when some incident names a commit (else 0).
    head: u64,
    /// This event's changes: `changes_begin..changes_end` of its group's `changes[part]`.
    changes_begin: usize,
    changes_end: usize,
    part: usize,
    kind: DeploymentKind,
    /// Its version was first deployed before the version live when it was deployed.
    rollback: bool,
    event: &'a Deployment,
}

/// One (service, environment) being computed.
struct Group<'a> {
    service: &'a str,
    environment: &'a str,
    /// Per part of the input (see [`read_part`]): (fingerprint, change time) of every
    /// in-scope event's commits, in input order.
    changes: Vec<Changes>,
    /// In-scope events, one vector per part that had any, in input order.
    raw: Vec<Vec<Rec<'a>>>,
    /// Counted deployments, in time order.
    deps: Vec<Rec<'a>>,
    /// Duplicates: (index into `deps` of the deployment they repeat, event).
    dups: Vec<(usize, Rec<'a>)>,
    failed: Vec<bool>,
    rework: Vec<bool>,
    /// A recovery-counting incident is already linked to the deployment.
    has_incident: Vec<bool>,
    /// For commits named by incidents (by fingerprint): the deployment that first shipped them.
    sha_first: FastMap<u64, usize>,
    leads: Vec<i64>,
    /// Median and p90 of `leads`, taken where the group is built.
    lead_quantiles: (Option<f64>, Option<f64>),
    clamped: u64,
    recoveries: Vec<i64>,
    open: u64,
}

impl<'a> Group<'a> {
    fn new(service: &'a str, environment: &'a str) -> Self {
        Self {
            service,
            environment,
            changes: Vec::new(),
            raw: Vec::new(),
            deps: Vec::new(),
            dups: Vec::new(),
            failed: Vec::new(),
            rework: Vec::new(),
            has_incident: Vec::new(),
            sha_first: FastMap::default(),
            leads: Vec::new(),
            lead_quantiles: (None, None),
            clamped: 0,
            recoveries: Vec::new(),
            open: 0,
        }
    }
}

impl<'a> Group<'a> {
    /// Takes part `part`'s events and changes (parts come in input order).
    fn join(&mut self, part: usize, raw: Vec<Rec<'a>>, changes: Changes) {
        if self.changes.len() <= part {
            self.changes.resize_with(part + 1, Vec::new);
        }
        self.changes[part] = changes;
        if !raw.is_empty() {
            self.raw.push(raw);
        }
    }

    /// Work to share out: events and changes.
    fn size(&self) -> usize {
        let events: usize = self.raw.iter().map(Vec::len).sum();
        let changes: usize = self.changes.iter().map(Vec::len).sum();
        events + changes
    }
}

/// A deployment's position: (group, index in its `deps`).
type DepRef = (usize, usize);

/// Below this many deploy events a report runs on the calling thread: starting threads
/// would cost more than it saves.
const PARALLEL_MIN_EVENTS: usize = 20_000;

/// At most this many threads work on one report.
const MAX_THREADS: usize = 4;

/// (service, environment) → dense index in first-seen order, hashing the two names once
/// per event (a map keyed by the string pair hashes them through `Hash for str`, a third
/// of the grouping's time). Equal hashes are checked against the names; a collision goes
/// to `spill`.
#[derive(Default)]
struct GroupIndex<'a> {
    by_hash: FastMap<u64, usize>,
    spill: FastMap<(&'a str, &'a str), usize>,
    names: Vec<(&'a str, &'a str)>,
}

impl<'a> GroupIndex<'a> {
    fn key(service: &str, environment: &str) -> u64 {
        let mut h = FxHasher::default();
        h.write(service.as_bytes());
        h.write(environment.as_bytes());
        h.hash
    }

    /// The index of (service, environment), and whether it is new.
    fn group(&mut self, service: &'a str, environment: &'a str) -> (usize, bool) {
        let next = self.names.len();
        let g = match self.by_hash.entry(Self::key(service, environment)) {
            Entry::Vacant(v) => *v.insert(next),
            Entry::Occupied(o) if self.names.get(*o.get()) == Some(&(service, environment)) => {
                *o.get()
            }
            Entry::Occupied(_) => *self.spill.entry((service, environment)).or_insert(next),
        };
        if g == next {
            self.names.push((service, environment));
        }
        (g, g == next)
    }

    fn get(&self, service: &str, environment: &str) -> Option<usize> {
        let g = *self.by_hash.get(&Self::key(service, environment))?;
        if self.names.get(g) == Some(&(service, environment)) {
            Some(g)
        } else {
            self.spill.get(&(service, environment)).copied()
        }
    }
}

/// (fingerprint, change time) of each commit of a run of events, in input order.
type Changes = Vec<(u64, UnixSeconds)>;

/// What phase 1 finds in one contiguous run of the deploy events.
#[derive(Default)]
struct Part<'a> {
    index: GroupIndex<'a>,
    /// Per group of `index`: its in-scope events in input order and their changes.
    groups: Vec<(Vec<Rec<'a>>, Changes)>,
    /// `fixes_deployment` ids in input order, with the group (of `index`) naming them.
    fixes: Vec<(&'a str, usize)>,
    any_resolves: bool,
}

/// Phase 1 over `deployments`: selects the in-scope events, groups them, and reads each
/// one's strings once (fingerprints).
fn read_part<'a>(
    part_index: usize,
    deployments: &'a [Deployment],
    now: UnixSeconds,
    scope: &Scope,
    check_heads: bool,
) -> Part<'a> {
    let mut part = Part::default();
    for d in deployments {
        if d.status != DeployStatus::Success
            || d.finished_at > now
            || !scope.matches(&d.service, &d.environment)
        {
            continue;
        }
        let (g, new) = part.index.group(&d.service, &d.environment);
        if new {
            part.groups.push((Vec::new(), Vec::new()));
        }
        let Some((raw, changes)) = part.groups.get_mut(g) else {
            continue;
        };
        let changes_begin = changes.len();
        changes.extend(
            d.commits
                .iter()
                .map(|c| (fingerprint(&c.sha), c.effective_time())),
        );
        raw.push(Rec {
            finished: d.finished_at,
            started: d.started_at,
            id: fingerprint(&d.id),
            version: fingerprint(&d.version),
            head: if check_heads {
                fingerprint(&d.commit)
            } else {
                0
            },
            changes_begin,
            changes_end: changes.len(),
            part: part_index,
            kind: d.kind,
            rollback: false,
            event: d,
        });
        if let Some(id) = &d.fixes_deployment {
            part.fixes.push((id, g));
        }
        part.any_resolves |= !d.resolves_incidents.is_empty();
    }
    part
}

/// Runs `work` on every item, each on its own thread (the first on the calling one), and
/// returns the results in item order. An item whose thread the OS refuses to start is
/// worked on the calling thread; a panic in `work` is resumed here.
fn on_threads<I: Send, R: Send>(items: Vec<I>, work: impl Fn(I) -> R + Sync) -> Vec<R> {
    let slots: Vec<Mutex<Option<I>>> = items.into_iter().map(|i| Mutex::new(Some(i))).collect();
    let take = |slot: &Mutex<Option<I>>| slot.lock().ok().and_then(|mut item| item.take());
    let done: Vec<Option<R>> = std::thread::scope(|s| {
        let handles: Vec<_> = slots
            .iter()
            .skip(1)
            .map(|slot| {
                let (take, work) = (&take, &work);
                std::thread::Builder::new()
                    .name("dora-report".into())
                    .spawn_scoped(s, move || take(slot).map(work))
                    .ok()
            })
            .collect();
        let mut done = vec![slots.first().and_then(take).map(&work)];
        for handle in handles {
            done.push(handle.and_then(|h| match h.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }));
        }
        done
    });
    done.into_iter()
        .zip(&slots)
        .filter_map(|(result, slot)| result.or_else(|| take(slot).map(&work)))
        .collect()
}

/// Buffers phases 2 and 3 reuse from one group to the next.
#[derive(Default)]
struct Scratch {
    by_id: FastMap<u64, usize>,
    by_version: FastMap<u64, usize>,
    seen: FastSet<u64>,
}

/// Computes the DORA report of every (service, environment) in `scope` over the window
/// `(now - window, now]`. See the module documentation for the exact rules.
///
/// A large history is read in contiguous parts and computed by service on up to four
/// threads (as [`std::thread::available_parallelism`] allows); the result does not depend
/// on how many ran. [`report_on`] sets the number.
#[must_use]
pub fn report(now: UnixSeconds, events: &Events, window: Window, scope: &Scope) -> Report {
    let threads = if events.deployments.len() < PARALLEL_MIN_EVENTS {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS))
    };
    report_on(now, events, window, scope, threads)
}

/// [`report`] on at most `threads` threads (1: the calling thread only).
#[must_use]
pub fn report_on(
    now: UnixSeconds,
    events: &Events,
    window: Window,
    scope: &Scope,
    threads: usize,
) -> Report {
    let start = now.saturating_sub(window.seconds());
    let threads = threads.max(1);

    // Phase 1: select in-scope events, group them (groups in order of first appearance,
    // incidents first), note referenced ids and commits. The deploy events are read in
    // contiguous parts, one per thread, each read once; the parts are then joined in
    // input order.
    let mut index = GroupIndex::default();
    let mut groups: Vec<Group<'_>> = Vec::new();
    // Referenced delivery ids, each with the group to look in first.
    let mut ref_ids: FastMap<&str, usize> = FastMap::default();
    let mut ref_shas: FastSet<u64> = FastSet::default();
    let mut incidents: Vec<(usize, &Incident, Option<DepRef>)> = Vec::new();
    for i in &events.incidents {
        if i.started_at > now || !scope.matches(&i.service, &i.environment) {
            continue;
        }
        let (g, new) = index.group(&i.service, &i.environment);
        if new {
            groups.push(Group::new(&i.service, &i.environment));
        }
        if let Some(id) = &i.deployment_id {
            ref_ids.entry(id).or_insert(g);
        } else if let Some(sha) = i.commit.as_deref().filter(|s| !s.is_empty()) {
            ref_shas.insert(fingerprint(sha));
        }
        if let Some(id) = &i.resolved_by_deployment {
            ref_ids.entry(id).or_insert(g);
        }
        incidents.push((g, i, None));
    }
    let check_heads = !ref_shas.is_empty();
    let part_len = events.deployments.len().div_ceil(threads).max(1);
    let runs: Vec<_> = events.deployments.chunks(part_len).enumerate().collect();
    let parts = on_threads(runs, |(p, run)| read_part(p, run, now, scope, check_heads));
    let mut any_resolves = false;
    for (p, part) in parts.into_iter().enumerate() {
        let mut global = Vec::with_capacity(part.groups.len());
        for (&(service, environment), (raw, changes)) in part.index.names.iter().zip(part.groups) {
            let (g, new) = index.group(service, environment);
            if new {
                groups.push(Group::new(service, environment));
            }
            global.push(g);
            if let Some(group) = groups.get_mut(g) {
                group.join(p, raw, changes);
            }
        }
        for (id, g) in part.fixes {
            ref_ids.entry(id).or_insert(global[g]);
        }
        any_resolves |= part.any_resolves;
    }
    let mut findings: Vec<&RegressionFinding> = events
        .regressions
        .iter()
        .filter(|f| f.started_at <= now && scope.matches(&f.service, &f.environment))
        .collect();
    findings.sort_by_key(|f| f.started_at);
    for f in &findings {
        let hint = index.get(&f.service, &f.environment);
        ref_ids
            .entry(&f.deployment_id)
            .or_insert(hint.unwrap_or(usize::MAX));
    }
    let mut refs_by_group: Vec<Vec<&str>> = vec![Vec::new(); groups.len()];
    for (&id, &hint) in &ref_ids {
        if let Some(refs) = refs_by_group.get_mut(hint) {
            refs.push(id);
        }
    }

    // Phases 2 and 3, each group on its own: order and dedup its events, resolve the ids
    // referenced from it, attribute its changes. Groups are shared out by size.
    let mut ids: FastMap<&str, DepRef> =
        FastMap::with_capacity_and_hasher(ref_ids.len(), BuildHasherDefault::default());
    let shares = share_out(&mut groups, threads);
    let found = on_threads(shares, |mut share| {
        let mut found = Vec::new();
        let mut scratch = Scratch::default();
        for (g, group) in &mut share {
            let refs = refs_by_group.get(*g).map_or(&[][..], Vec::as_slice);
            dedup(*g, group, refs, &mut found, &mut scratch);
            walk_changes(group, start, &ref_shas, &mut scratch.seen);
            group.changes = Vec::new();
            group.lead_quantiles = quantile_pair(&mut group.leads, 0.5, 0.9);
        }
        found
    });
    for (id, dep) in found.into_iter().flatten() {
        ids.insert(id, dep);
    }
    // Referenced ids not found in their hint's group (other services' or unknown ids)
    // take one pass over the compact records.
    let unresolved: FastMap<u64, &str> = ref_ids
        .keys()
        .filter(|id| !ids.contains_key(*id) && !id.is_empty())
        .map(|&id| (fingerprint(id), id))
        .collect();
    if !unresolved.is_empty() {
        for (g, group) in groups.iter().enumerate() {
            let members = group.deps.iter().enumerate();
            for (i, r) in members.chain(group.dups.iter().map(|(i, r)| (*i, r))) {
                if let Some(&id) = unresolved.get(&r.id) {
                    ids.entry(id).or_insert((g, i));
                }
            }
        }
    }

    // Phase 4: change failures.
    let mut blamed: Vec<DepRef> = Vec::new();
    for (g, group) in groups.iter().enumerate() {
        for (i, r) in group.deps.iter().enumerate() {
            if r.kind == DeploymentKind::Normal && !r.rollback {
                continue;
            }
            match &r.event.fixes_deployment {
                Some(id) => blamed.extend(ids.get(id.as_str()).copied()),
                None if i > 0 => blamed.push((g, i - 1)),
                None => {}
            }
        }
    }
    for (g, incident, link) in &mut incidents {
        *link = match (&incident.deployment_id, &incident.commit) {
            (Some(id), _) => ids.get(id.as_str()).copied(),
            (None, Some(sha)) if !sha.is_empty() => groups[*g]
                .sha_first
                .get(&fingerprint(sha))
                .map(|&i| (*g, i)),
            _ => None,
        };
        if let Some(dep) = *link {
            blamed.push(dep);
        }
    }
    for &(g, i) in &blamed {
        groups[g].failed[i] = true;
    }
    for &(_, _, link) in &incidents {
        if let Some((g, i)) = link {
            groups[g].has_incident[i] = true;
        }
    }
    // Phase 5: rework.
    for group in &mut groups {
        for (i, r) in group.deps.iter().enumerate() {
            if r.kind != DeploymentKind::Normal {
                group.rework[i] = true;
            }
        }
    }
    let open_during = |incident: &Incident, r: &Rec<'_>| {
        incident.started_at <= r.finished && incident.resolved_at.is_none_or(|t| t >= r.started)
    };
    // A rollback (by version) while an incident of its service and environment is open is
    // the unplanned fix for it.
    let rollbacks: Vec<Vec<usize>> = groups
        .iter()
        .map(|group| {
            let rolled = group.deps.iter().enumerate().filter(|(_, r)| r.rollback);
            rolled.map(|(i, _)| i).collect()
        })
        .collect();
    for &(g, incident, _) in &incidents {
        for &i in &rollbacks[g] {
            let group = &mut groups[g];
            if open_during(incident, &group.deps[i]) {
                group.rework[i] = true;
            }
        }
    }
    for &(_, incident, _) in &incidents {
        if let Some(&(g, i)) = incident
            .resolved_by_deployment
            .as_deref()
            .and_then(|id| ids.get(id))
            && open_during(incident, &groups[g].deps[i])
        {
            groups[g].rework[i] = true;
        }
    }
    if any_resolves {
        let by_id: FastMap<&str, &Incident> = incidents
            .iter()
            .map(|&(_, incident, _)| (incident.id.as_str(), incident))
            .collect();
        for group in &mut groups {
            let Group {
                deps, dups, rework, ..
            } = group;
            let members = deps.iter().enumerate().map(|(i, r)| (i, r.event));
            for (i, event) in members.chain(dups.iter().map(|(i, r)| (*i, r.event))) {
                let r = &deps[i];
                if event
                    .resolves_incidents
                    .iter()
                    .filter_map(|id| by_id.get(id.as_str()))
                    .any(|incident| open_during(incident, r))
                {
                    rework[i] = true;
                }
            }
        }
    }

    // Phase 6: recovery times, from incidents and then regression findings.
    let recovery_of = |resolved: Option<UnixSeconds>,
                       started: UnixSeconds,
                       failing: Option<UnixSeconds>|
     -> Result<Option<i64>, ()> {
        match resolved.filter(|&r| r <= now) {
            None => Err(()),
            Some(r) if r > start => {
                let from = failing.map_or(started, |f| started.min(f));
                Ok(Some((r - from).max(0)))
            }
            Some(_) => Ok(None),
        }
    };
    for &(g, incident, link) in &incidents {
        let failing = link.map(|(lg, li)| groups[lg].deps[li].finished);
        match recovery_of(incident.resolved_at, incident.started_at, failing) {
            Ok(Some(seconds)) => groups[g].recoveries.push(seconds),
            Ok(None) => {}
            Err(()) => groups[g].open += 1,
        }
    }
    for f in &findings {
        let Some(&(g, i)) = ids.get(f.deployment_id.as_str()) else {
            continue;
        };
        let group = &mut groups[g];
        group.failed[i] = true;
        if group.has_incident[i] {
            continue;
        }
        group.has_incident[i] = true;
        let failing = Some(group.deps[i].finished);
        match recovery_of(f.resolved_at, f.started_at, failing) {
            Ok(Some(seconds)) => group.recoveries.push(seconds),
            Ok(None) => {}
            Err(()) => group.open += 1,
        }
    }

    // Phase 7: the metrics, per service and pooled per environment.
    let tallies: Vec<Tally> = groups
        .iter_mut()
        .map(|group| Tally::of(group, start))
        .collect();
    let mut pooled: BTreeMap<&str, Vec<&Tally>> = BTreeMap::new();
    for (group, tally) in groups.iter().zip(&tallies) {
        pooled.entry(group.environment).or_default().push(tally);
    }
    let mut services: Vec<ServiceReport> = groups
        .iter()
        .zip(&tallies)
        .map(|(group, tally)| {
            row(
                &[tally],
                group.service,
                group.environment,
                start,
                now,
                window,
            )
        })
        .collect();
    services.sort_by(|a, b| {
        a.service
            .cmp(&b.service)
            .then_with(|| a.environment.cmp(&b.environment))
    });
    let totals = pooled
        .iter()
        .map(|(environment, parts)| row(parts, ALL_SERVICES, environment, start, now, window))
        .collect();
    Report {
        now,
        window,
        window_start: start,
        services,
        totals,
    }
}

/// Splits `groups` into at most `threads` shares of about equal work (largest group first
/// onto the least loaded share), each with the groups' indices.
fn share_out<'g, 'a>(
    groups: &'g mut [Group<'a>],
    threads: usize,
) -> Vec<Vec<(usize, &'g mut Group<'a>)>> {
    let threads = threads.clamp(1, groups.len().max(1));
    let work = |g: &Group<'_>| g.size() + 1;
    let mut order: Vec<(usize, usize)> = groups.iter().map(work).enumerate().collect();
    order.sort_by_key(|&(g, w)| (std::cmp::Reverse(w), g));
    let mut load = vec![0_usize; threads];
    let mut owner = vec![0_usize; groups.len()];
    for (g, w) in order {
        let lightest = (0..threads).min_by_key(|&t| (load[t], t)).unwrap_or(0);
        owner[g] = lightest;
        load[lightest] += w;
    }
    let mut shares: Vec<Vec<(usize, &'g mut Group<'a>)>> =
        (0..threads).map(|_| Vec::new()).collect();
    for (g, group) in groups.iter_mut().enumerate() {
        shares[owner[g]].push((g, group));
    }
    shares.retain(|share| !share.is_empty());
    shares
}

/// [`report`] for each of `windows` (e.g. [`Window::DEFAULTS`]), in the same order.
#[must_use]
pub fn reports(
    now: UnixSeconds,
    events: &Events,
    windows: &[Window],
    scope: &Scope,
) -> Vec<Report> {
    windows
        .iter()
        .map(|&window| report(now, events, window, scope))
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
    let mut shipped: FastSet<&str> = FastSet::default();
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

/// Sorts a group's events and folds duplicates into the first deployment they repeat;
/// adds the ids of `refs` found in the group to `found`.
fn dedup<'a>(
    g: usize,
    group: &mut Group<'a>,
    refs: &[&'a str],
    found: &mut Vec<(&'a str, DepRef)>,
    scratch: &mut Scratch,
) {
    // The parts' events, in input order, in one vector (a single part is moved).
    let mut parts = std::mem::take(&mut group.raw);
    let mut deps = if parts.len() == 1 {
        parts.pop().unwrap_or_default()
    } else {
        let mut all = Vec::with_capacity(parts.iter().map(Vec::len).sum());
        for part in &parts {
            all.extend_from_slice(part);
        }
        all
    };
    drop(parts);
    // Most input is already in time order, which the sort detects.
    deps.sort_unstable_by(|a, b| {
        (a.finished, a.started)
            .cmp(&(b.finished, b.started))
            .then_with(|| a.event.id.cmp(&b.event.id))
    });
    let Scratch {
        by_id, by_version, ..
    } = scratch;
    by_id.clear();
    by_id.reserve(deps.len());
    by_version.clear();
    by_version.reserve(deps.len());
    // Duplicates move out to `dups`; the rest close up in place (`deps[..kept]`).
    let mut kept: usize = 0;
    for k in 0..deps.len() {
        let mut r = deps[k];
        // One hash lookup per id: remember the vacant slot, fill it once the index is known.
        let (id_hit, id_slot) = match (r.id != 0).then(|| by_id.entry(r.id)) {
            Some(Entry::Occupied(o)) => (Some(*o.get()), None),
            Some(Entry::Vacant(v)) => (None, Some(v)),
            None => (None, None),
        };
        // The version live now: the last counted deployment's.
        let current = kept.checked_sub(1).map(|j| (j, deps[j].version));
        let version_hit = current
            .filter(|&(_, v)| r.version != 0 && v == r.version)
            .map(|(j, _)| j);
        let i = match id_hit.or(version_hit) {
            Some(i) => {
                group.dups.push((i, r));
                i
            }
            None => {
                // A version first deployed before the live one: a rollback.
                if let (Some(&first), Some((_, live))) = (by_version.get(&r.version), current)
                    && let Some(&live_first) = by_version.get(&live)
                {
                    r.rollback = first < live_first;
                }
                deps[kept] = r;
                kept += 1;
                kept - 1
            }
        };
        if let Some(slot) = id_slot {
            slot.insert(i);
        }
        if r.version != 0 {
            by_version.entry(r.version).or_insert(i);
        }
    }
    deps.truncate(kept);
    group.deps = deps;
    for &id in refs {
        if let Some(&i) = by_id.get(&fingerprint(id)) {
            found.push((id, (g, i)));
        }
    }
    group.dups.sort_by_key(|&(i, _)| i);
    let n = group.deps.len();
    group.failed = vec![false; n];
    group.rework = vec![false; n];
    group.has_incident = vec![false; n];
}

/// Walks a group's deployments in order, attributing each change to its first deployment.
fn walk_changes(
    group: &mut Group<'_>,
    start: UnixSeconds,
    ref_shas: &FastSet<u64>,
    seen: &mut FastSet<u64>,
) {
    let Group {
        deps,
        dups,
        changes,
        sha_first,
        leads,
        clamped,
        ..
    } = group;
    let total: usize = changes.iter().map(Vec::len).sum();
    seen.clear();
    seen.reserve(total);
    leads.reserve_exact(total);
    let check_refs = !ref_shas.is_empty();
    let mut next_dup = 0;
    for (i, r) in deps.iter().enumerate() {
        let finished = r.finished;
        let in_window = finished > start;
        let mut shipped = |event: &Rec<'_>| {
            if check_refs && ref_shas.contains(&event.head) {
                sha_first.entry(event.head).or_insert(i);
            }
            for &(sha, time) in changes
                .get(event.part)
                .and_then(|part| part.get(event.changes_begin..event.changes_end))
                .unwrap_or_default()
            {
                // An empty sha (fingerprint 0) is never deduplicated.
                if sha != 0 && !seen.insert(sha) {
                    continue;
                }
                if check_refs && ref_shas.contains(&sha) {
                    sha_first.entry(sha).or_insert(i);
                }
                if in_window {
                    leads.push(lead_time(finished, time, clamped));
                }
            }
        };
        shipped(r);
        while let Some((di, dup)) = dups.get(next_dup)
            && *di == i
        {
            shipped(dup);
            next_dup += 1;
        }
    }
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
/// Reorders `values` (selection, O(n), instead of a full sort). The reference for
/// [`quantile_pair`], which the report uses.
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

/// [`quantile`] at `lower` and then at `upper` (`lower <= upper`), with one selection
/// for both: the upper rank is searched only among the values above the lower one.
/// Reorders `values`.
fn quantile_pair(values: &mut [i64], lower: f64, upper: f64) -> (Option<f64>, Option<f64>) {
    let Some(last) = values.len().checked_sub(1) else {
        return (None, None);
    };
    let rank = lower * last as f64;
    let lo = rank.floor() as usize;
    let (_, &mut a, above) = values.select_nth_unstable(lo);
    let next_above = |above: &[i64], a: i64| above.iter().copied().min().unwrap_or(a);
    let b = if rank > lo as f64 {
        next_above(above, a)
    } else {
        a
    };
    let first = interpolate(a, b, rank, lo);
    let upper_rank = upper * last as f64;
    let upper_lo = (upper_rank.floor() as usize).max(lo);
    let second = if upper_lo == lo {
        let b = if upper_rank > lo as f64 {
            next_above(above, a)
        } else {
            a
        };
        interpolate(a, b, upper_rank, lo)
    } else {
        // `above` holds the values of ranks lo + 1.., in some order.
        let (_, &mut a, above) = above.select_nth_unstable(upper_lo - lo - 1);
        let b = if upper_rank > upper_lo as f64 {
            next_above(above, a)
        } else {
            a
        };
        interpolate(a, b, upper_rank, upper_lo)
    };
    (Some(first), Some(second))
}

/// `a + (b - a) × (rank - lo)`: linear interpolation between the values of ranks `lo`
/// and `lo + 1`.
fn interpolate(a: i64, b: i64, rank: f64, lo: usize) -> f64 {
    let (a, b) = (a as f64, b as f64);
    a + (b - a) * (rank - lo as f64)
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

/// What a row is computed from. The per-environment totals pool their services' tallies
/// by reference (see [`row`]).
struct Tally {
    deployments: u64,
    failed: u64,
    rework: u64,
    /// Finish times of the deployments in the window, any order.
    times: Vec<UnixSeconds>,
    /// Lead times, any order.
    leads: Vec<i64>,
    /// Median and p90 of `leads`.
    lead_quantiles: (Option<f64>, Option<f64>),
    clamped: u64,
    recoveries: Vec<i64>,
    open: u64,
}

impl Tally {
    fn of(group: &mut Group<'_>, start: UnixSeconds) -> Self {
        let first = group.deps.partition_point(|r| r.finished <= start);
        let count = |flags: &[bool]| flags.iter().filter(|&&f| f).count() as u64;
        Self {
            deployments: (group.deps.len() - first) as u64,
            failed: count(group.failed.get(first..).unwrap_or_default()),
            rework: count(group.rework.get(first..).unwrap_or_default()),
            times: group.deps[first..].iter().map(|r| r.finished).collect(),
            leads: std::mem::take(&mut group.leads),
            lead_quantiles: group.lead_quantiles,
            clamped: group.clamped,
            recoveries: std::mem::take(&mut group.recoveries),
            open: group.open,
        }
    }
}

/// The row of `parts` taken together: one group's tally, or every group of an
/// environment for its total (medians over all their values, without copying them).
fn row(
    parts: &[&Tally],
    service: &str,
    environment: &str,
    start: UnixSeconds,
    now: UnixSeconds,
    window: Window,
) -> ServiceReport {
    let sum = |f: fn(&Tally) -> u64| parts.iter().map(|t| f(t)).sum::<u64>();
    let deployments = sum(|t| t.deployments);
    let failed = sum(|t| t.failed);
    let rework = sum(|t| t.rework);
    let slices = |f: fn(&Tally) -> &[i64]| parts.iter().map(|t| f(t)).collect::<Vec<_>>();
    let leads = slices(|t| &t.leads);
    let recoveries = slices(|t| &t.recoveries);
    let (lead_time_median_seconds, lead_time_p90_seconds) = match parts {
        [one] => one.lead_quantiles,
        _ => quantile_pair_of(&leads, 0.5, 0.9),
    };
    let (recovery_time_median_seconds, recovery_time_p90_seconds) =
        quantile_pair_of(&recoveries, 0.5, 0.9);
    let count = |s: &[&[i64]]| s.iter().map(|v| v.len() as u64).sum::<u64>();
    ServiceReport {
        service: service.to_owned(),
        environment: environment.to_owned(),
        deployments,
        deployment_frequency_per_day: deployments as f64 / window.days_f64(),
        deployment_frequency_class: frequency_class(&slices(|t| &t.times), start, now),
        changes: count(&leads),
        changes_clamped: sum(|t| t.clamped),
        lead_time_median_seconds,
        lead_time_p90_seconds,
        failed_deployments: failed,
        change_fail_rate: ratio(failed, deployments),
        incidents_resolved: count(&recoveries),
        incidents_open: sum(|t| t.open),
        recovery_time_median_seconds,
        recovery_time_p90_seconds,
        rework_deployments: rework,
        rework_rate: ratio(rework, deployments),
    }
}

/// Above this many values, [`quantile_pair_of`] narrows the ranks down with a histogram
/// instead of copying every value for a selection.
const HISTOGRAM_MIN: usize = 1 << 16;

/// log2 of the histogram's bucket count.
const BUCKET_BITS: u32 = 12;

/// [`quantile_pair`] of the values of all `slices` taken together, bit for bit.
fn quantile_pair_of(slices: &[&[i64]], lower: f64, upper: f64) -> (Option<f64>, Option<f64>) {
    let total: usize = slices.iter().map(|s| s.len()).sum();
    let Some(last) = total.checked_sub(1) else {
        return (None, None);
    };
    if total < HISTOGRAM_MIN {
        let mut all = Vec::with_capacity(total);
        for s in slices {
            all.extend_from_slice(s);
        }
        return quantile_pair(&mut all, lower, upper);
    }
    // The ranks `quantile_pair` reads: each quantile's rank, rounded down, and the next.
    let rank = lower * last as f64;
    let lo = rank.floor() as usize;
    let upper_rank = upper * last as f64;
    let upper_lo = (upper_rank.floor() as usize).max(lo);
    let wanted = [lo, (lo + 1).min(last), upper_lo, (upper_lo + 1).min(last)];
    let [a, a_next, b, b_next] = values_at_ranks(slices, wanted);
    let first = interpolate(a, if rank > lo as f64 { a_next } else { a }, rank, lo);
    let second = interpolate(
        b,
        if upper_rank > upper_lo as f64 {
            b_next
        } else {
            b
        },
        upper_rank,
        upper_lo,
    );
    (Some(first), Some(second))
}

/// The values at `ranks` (positions in ascending order, each below the number of values)
/// of all `slices` taken together. Three passes and no copy of the values: their range,
/// a histogram of 2^[`BUCKET_BITS`] buckets over it, and the values of the buckets that
/// hold the ranks, which a selection then orders.
fn values_at_ranks<const N: usize>(slices: &[&[i64]], ranks: [usize; N]) -> [i64; N] {
    let values = || slices.iter().flat_map(|s| s.iter().copied());
    let (min, max) = values().fold((i64::MAX, i64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let span = max.abs_diff(min);
    let shift = (u64::BITS - span.leading_zeros()).saturating_sub(BUCKET_BITS);
    // `v >= min`, so this is `(v - min) >> shift`, below 2^BUCKET_BITS.
    let bucket = |v: i64| usize::try_from(v.abs_diff(min) >> shift).unwrap_or(usize::MAX);
    let mut counts = vec![0_usize; bucket(max).saturating_add(1)];
    for v in values() {
        if let Some(c) = counts.get_mut(bucket(v)) {
            *c += 1;
        }
    }
    // For each rank: its bucket and how many values lie in the buckets below it.
    let locate = |r: usize| {
        let mut below = 0;
        for (b, &c) in counts.iter().enumerate() {
            if r < below + c {
                return (b, below);
            }
            below += c;
        }
        (counts.len(), below)
    };
    let located = ranks.map(locate);
    let mut inside: Vec<(usize, Vec<i64>)> = Vec::new();
    for &(b, _) in &located {
        if !inside.iter().any(|(have, _)| *have == b) {
            let size = counts.get(b).copied().unwrap_or(0);
            inside.push((b, Vec::with_capacity(size)));
        }
    }
    for v in values() {
        let b = bucket(v);
        if let Some((_, held)) = inside.iter_mut().find(|(have, _)| *have == b) {
            held.push(v);
        }
    }
    let mut out = [0; N];
    for ((slot, r), (b, below)) in out.iter_mut().zip(ranks).zip(located) {
        if let Some((_, held)) = inside.iter_mut().find(|(have, _)| *have == b)
            && let Some(k) = r.checked_sub(below).filter(|&k| k < held.len())
        {
            *slot = *held.select_nth_unstable(k).1;
        }
    }
    out
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
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = |n: i64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            i64::try_from(state >> 33).expect("31 bits") % n.max(1)
        };
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

    /// Every report of `random_events` on `threads` threads.
    fn random_reports(seed: u64, n: usize, threads: usize) -> Vec<Report> {
        let e = random_events(seed, n);
        let mut out = Vec::new();
        for window in [
            Window::days(1),
            Window::days(30),
            Window::days(Window::MAX_DAYS),
        ] {
            for scope in [
                Scope::environment("production"),
                Scope::default(),
                Scope::environment("production").with_service("s1"),
            ] {
                out.push(report_on(NOW, &e, window, &scope, threads));
            }
        }
        out
    }

    /// However many threads share the groups out (and whichever gets which), the report
    /// is the same.
    #[test]
    fn threads_do_not_change_the_report() {
        for seed in 0..60_u64 {
            let n = [1, 7, 50, 300][usize::try_from(seed % 4).expect("small")];
            let one = random_reports(seed, n, 1);
            for threads in [2, 3, 8] {
                assert_eq!(
                    random_reports(seed, n, threads),
                    one,
                    "seed {seed}, {threads} threads"
                );
            }
        }
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
    fn fingerprints_are_nonzero_and_distinct() {
        assert_eq!(fingerprint(""), 0);
        let mut seen = HashSet::new();
        for n in 0..100_000_u32 {
            for s in [
                format!("{n}"),
                format!("service-{n:03}"),
                format!("{n:015x}"),
            ] {
                let fp = fingerprint(&s);
                assert_ne!(fp, 0);
                assert!(seen.insert(fp), "collision on {s}");
            }
        }
        // Lengths that differ only by trailing zero bytes.
        assert_ne!(fingerprint("abcdefgh"), fingerprint("abcdefgh\0"));
        assert_ne!(fingerprint("a"), fingerprint("a\0"));
        // The tail is the little-endian word of the bytes left, as a zero-padded copy
        // would give.
        for len in 0..=23_usize {
            let bytes: Vec<u8> = (1..=len).map(|b| b as u8).collect();
            let mut reference = FxHasher::default();
            let mut chunks = bytes.chunks_exact(8);
            for chunk in &mut chunks {
                let mut word = [0_u8; 8];
                word.copy_from_slice(chunk);
                reference.add(u64::from_le_bytes(word));
            }
            let rest = chunks.remainder();
            let mut word = [0_u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            reference.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
            let mut h = FxHasher::default();
            h.write(&bytes);
            assert_eq!(h.hash, reference.hash, "length {len}");
        }
        // Every byte of every tail length counts.
        for len in 1..=17 {
            let base = vec![b'a'; len];
            let mut fps = HashSet::new();
            assert!(fps.insert(fingerprint(std::str::from_utf8(&base).unwrap_or_default())));
            for pos in 0..len {
                let mut other = base.clone();
                other[pos] = b'b';
                let text = std::str::from_utf8(&other).unwrap_or_default();
                assert!(
                    fps.insert(fingerprint(text)),
                    "len {len}, byte {pos} ignored"
                );
            }
        }
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
        let a = sorted[lo];
        let b = if rank > lo as f64 { sorted[lo + 1] } else { a };
        Some(interpolate(a, b, rank, lo))
    }

    proptest::proptest! {
        /// The one-selection pair the report uses gives exactly (bit for bit) what two
        /// separate selections and a full sort give.
        #[test]
        fn quantile_pair_matches_sorted_reference(
            values in proptest::collection::vec(-50_i64..50, 0..300),
            lower in 0.0_f64..=1.0,
            spread in 0.0_f64..=1.0,
        ) {
            let upper = (lower + (1.0 - lower) * spread).min(1.0);
            for (l, u) in [(0.5, 0.9), (lower, upper), (lower, lower), (0.0, 1.0)] {
                let want = (sorted_quantile(&values, l), sorted_quantile(&values, u));
                let mut separate = values.clone();
                let first = quantile(&mut separate, l);
                let second = quantile(&mut separate, u);
                let bits = |x: Option<f64>| x.map(f64::to_bits);
                proptest::prop_assert_eq!((bits(first), bits(second)), (bits(want.0), bits(want.1)));
                let mut paired = values.clone();
                let got = quantile_pair(&mut paired, l, u);
                proptest::prop_assert_eq!((bits(got.0), bits(got.1)), (bits(want.0), bits(want.1)));
                let (head, tail) = values.split_at(values.len() / 3);
                let pooled = quantile_pair_of(&[head, &[], tail], l, u);
                proptest::prop_assert_eq!((bits(pooled.0), bits(pooled.1)), (bits(want.0), bits(want.1)));
            }
        }
    }

    /// Above `HISTOGRAM_MIN` values the pooled quantiles come from a histogram: the same
    /// bits as a selection over the concatenation, whatever the distribution.
    #[test]
    fn pooled_quantiles_match_selection() {
        let mut state = 0x2545_F491_4F6C_DD1D_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let n = HISTOGRAM_MIN + 12_345;
        let shapes: [&dyn Fn(u64, usize) -> i64; 6] = [
            &|r, _| i64::try_from(r % 10_000_000).unwrap_or(0),
            &|_, _| 42,
            &|r, _| if r % 2 == 0 { 0 } else { 7 },
            // One huge outlier: every other value falls in the first bucket.
            &|r, k| {
                if k == 0 {
                    i64::MAX
                } else {
                    i64::try_from(r % 1_000).unwrap_or(0)
                }
            },
            &|r, _| i64::try_from(r >> 1).unwrap_or(0) - (i64::MAX / 2),
            &|r, k| {
                if k % 1_000 == 0 {
                    i64::MIN
                } else {
                    i64::try_from(r % 3_600).unwrap_or(0)
                }
            },
        ];
        for (s, shape) in shapes.iter().enumerate() {
            let values: Vec<i64> = (0..n).map(|k| shape(next(), k)).collect();
            let parts: Vec<&[i64]> = values.chunks(5_000).collect();
            for (l, u) in [(0.5, 0.9), (0.0, 1.0), (0.37, 0.37), (0.999, 1.0)] {
                let want = quantile_pair(&mut values.clone(), l, u);
                let got = quantile_pair_of(&parts, l, u);
                let bits = |x: Option<f64>| x.map(f64::to_bits);
                assert_eq!(
                    (bits(got.0), bits(got.1)),
                    (bits(want.0), bits(want.1)),
                    "shape {s}, {l}/{u}"
                );
            }
        }
    }
}

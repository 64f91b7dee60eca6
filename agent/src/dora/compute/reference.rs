//! The DORA computation as released before it was made plain (FxHash, 64-bit fingerprints,
//! a thread pool), kept only for the property test that holds the plain one equal to it.
//! Test-only; delete it together with that test once it has served.
#![allow(clippy::all, clippy::pedantic, clippy::unwrap_used, dead_code)]

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;

use super::{ALL_SERVICES, Report, Scope, ServiceReport, Window, frequency_class};
use crate::dora::model::{
    DeployStatus, Deployment, DeploymentKind, Events, Incident, RegressionFinding, UnixSeconds,
};

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
#[allow(dead_code)]
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

//! The DORA events held compactly, as [`compute`](super::compute) works on them and the hub
//! keeps them in memory: every string interned once into a [`Sym`] (a `u32`), deploy events as
//! fixed-size records ([`Rec`]) with their changes in flat arrays, incidents and regression
//! findings as records of symbols and times. Strings compared only within one (service,
//! environment) — versions, commit ids — are interned in that group's own [`Strings`], small
//! enough to stay in cache; names and ids, compared across groups, in the table's. A [`Table`] gives back the events it was given
//! ([`Table::deployment`], [`Table::incident`]) exactly.

use std::hash::BuildHasher;

use foldhash::HashMap;
use hashbrown::HashTable;

use super::model::{
    Change, DeployStatus, Deployment, DeploymentKind, Events, Incident, RegressionFinding,
    UnixSeconds,
};

/// An interned string: an index into a [`Strings`].
pub type Sym = u32;

/// The empty string's symbol (interned first in every [`Strings`]).
pub const EMPTY: Sym = 0;

/// Stands for an absent optional string (`None`), never a string's symbol.
pub const ABSENT: Sym = Sym::MAX;

/// A [`Strings`] holds fewer strings than this, and fewer bytes (symbols are below
/// [`ABSENT`] - 1, ends are `u32`).
const MAX_STRINGS: usize = (ABSENT - 1) as usize;

/// Strings copied into one buffer.
#[derive(Debug, Clone, Default)]
pub struct Owned {
    bytes: String,
    /// End of each string in `bytes` (a string starts where the previous one ends); `bytes`
    /// holds at most `u32::MAX` bytes.
    ends: Vec<u32>,
}

impl Owned {
    /// The string of `sym` (empty for an unknown symbol).
    fn get(&self, sym: Sym) -> &str {
        let i = sym as usize;
        let start = if i == 0 {
            0
        } else {
            self.ends.get(i - 1).copied().unwrap_or(0)
        };
        let end = self.ends.get(i).copied().unwrap_or(start);
        self.bytes
            .get(start as usize..end as usize)
            .unwrap_or_default()
    }

    /// Adds `s` under the next symbol; false (nothing added) when full.
    #[inline(always)]
    fn push(&mut self, s: &str) -> bool {
        // Every string but the first ("") is distinct and not empty, so there are no more
        // strings than bytes: bounding the bytes bounds the symbols too.
        let end = self.bytes.len() + s.len();
        if end >= MAX_STRINGS {
            return false;
        }
        self.bytes.push_str(s);
        self.ends.push(end as u32);
        true
    }

    /// How many strings are held.
    fn len(&self) -> usize {
        self.ends.len()
    }

    /// Room for `more` strings of `bytes` bytes in all.
    fn reserve(&mut self, more: usize, bytes: usize) {
        self.bytes.reserve(bytes);
        self.ends.reserve(more);
    }

    /// Bytes held.
    fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + self.ends.capacity() * std::mem::size_of::<u32>()
    }
}

/// Interned strings, each stored once, copied into one buffer.
#[derive(Debug, Clone)]
pub struct Strings {
    store: Owned,
    /// Whether each string was interned more than once (in any role): one interned once
    /// cannot be a repeat of another, which spares the computation a look-up.
    repeated: Vec<bool>,
    index: HashTable<Sym>,
    state: foldhash::fast::RandomState,
}

impl Default for Strings {
    fn default() -> Self {
        Self::with_state(foldhash::fast::RandomState::default())
    }
}

impl Strings {
    /// The symbol of `s`, interning it if new. Fewer than `u32::MAX - 1` bytes in all (and
    /// so fewer strings): beyond it every new string shares the last symbol (never reached:
    /// the hub holds far fewer events).
    #[inline(always)]
    pub fn intern(&mut self, s: &str) -> Sym {
        let hash = self.state.hash_one(s);
        // Most strings are new: a look-up that misses, then an insertion, each probing the
        // table inline, costs less than the general entry API.
        if let Some(&sym) = self.index.find(hash, |&k| self.store.get(k) == s) {
            self.mark_repeated(sym);
            return sym;
        }
        self.push_new(s, hash, false)
    }

    /// Appends `s`, whose hash by this interner's state is `hash` and which is not interned,
    /// under the next symbol, with its repeat flag; that symbol ([`ABSENT`] - 1 when full).
    fn push_new(&mut self, s: &str, hash: u64, repeated: bool) -> Sym {
        let Self {
            store,
            repeated: flags,
            index,
            state,
        } = self;
        let sym = store.len() as Sym;
        if !store.push(s) {
            return ABSENT - 1;
        }
        index.insert_unique(hash, sym, |&k| state.hash_one(store.get(k)));
        flags.push(repeated);
        sym
    }

    /// No strings but the empty one, hashed by `state`.
    fn with_state(state: foldhash::fast::RandomState) -> Self {
        let mut strings = Self {
            store: Owned::default(),
            repeated: Vec::new(),
            index: HashTable::new(),
            state,
        };
        strings.intern("");
        strings
    }

    /// The symbol of `s` if it is interned.
    #[must_use]
    pub fn get(&self, s: &str) -> Option<Sym> {
        let hash = self.state.hash_one(s);
        self.index.find(hash, |&k| self.store.get(k) == s).copied()
    }

    /// Whether `sym` was interned more than once (true for an unknown symbol).
    #[must_use]
    pub fn repeated(&self, sym: Sym) -> bool {
        self.repeated.get(sym as usize).copied().unwrap_or(true)
    }

    fn mark_repeated(&mut self, sym: Sym) {
        if let Some(r) = self.repeated.get_mut(sym as usize) {
            *r = true;
        }
    }

    /// The string of `sym` (empty for [`ABSENT`] or an unknown symbol).
    #[must_use]
    pub fn str(&self, sym: Sym) -> &str {
        self.store.get(sym)
    }

    /// How many strings are interned.
    #[must_use]
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// Whether only the empty string is interned.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.store.len() <= 1
    }

    /// Room for `more` strings of `bytes` bytes in all.
    pub fn reserve(&mut self, more: usize, bytes: usize) {
        let Self {
            store,
            repeated,
            index,
            state,
        } = self;
        store.reserve(more, bytes);
        repeated.reserve(more);
        index.reserve(more, |&k| state.hash_one(store.get(k)));
    }

    /// Bytes held (buffer, ends and index), for the hub's memory figures.
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        self.store.heap_bytes()
            + self.repeated.capacity()
            + self.index.capacity() * (std::mem::size_of::<Sym>() + 1)
    }
}

/// One deploy event. Its changes are `Table::change_*[changes..]` up to the next event's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rec {
    /// Its place in the order the events were given (see [`Table`]): increasing in that
    /// order, not dense once events are left out.
    pub seq: u32,
    /// When the new version was live.
    pub finished: UnixSeconds,
    /// When the deploy began.
    pub started: UnixSeconds,
    /// Delivery id.
    pub id: Sym,
    /// Version (in its group's strings).
    pub version: Sym,
    /// Head commit (in its group's strings).
    pub commit: Sym,
    /// `fixes_deployment`, [`ABSENT`] for `None`.
    pub fixes: Sym,
    /// Its (service, environment): an index into [`Table::groups`].
    pub group: u32,
    /// Index of its first change.
    pub changes: u32,
    /// Success or failure.
    pub status: DeployStatus,
    /// Normal, hotfix or rollback.
    pub kind: DeploymentKind,
}

/// One incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inc {
    /// When it began.
    pub started: UnixSeconds,
    /// When it was resolved.
    pub resolved: Option<UnixSeconds>,
    /// Incident id.
    pub id: Sym,
    /// Its (service, environment).
    pub group: u32,
    /// `deployment_id`, [`ABSENT`] for `None`.
    pub deployment: Sym,
    /// `commit`, [`ABSENT`] for `None` (in its group's strings).
    pub commit: Sym,
    /// `resolved_by_deployment`, [`ABSENT`] for `None`.
    pub resolved_by: Sym,
}

/// One regression finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    /// First breaching sample.
    pub started: UnixSeconds,
    /// Back within thresholds.
    pub resolved: Option<UnixSeconds>,
    /// Delivery id of the deployment blamed.
    pub deployment: Sym,
    /// Its (service, environment).
    pub group: u32,
}

/// Deploy events, incidents and regression findings, strings interned. Incidents and
/// findings are held in arrival order. Deploy events are held group by group
/// ([`Table::from_events`]: each group's records, changes and strings together, as the
/// computation reads them), later ones appended ([`Table::push_deployment`]): an event's index
/// is not its place in arrival order, [`Rec::seq`] is; a group's events are in arrival order.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// [`Rec::seq`] of the next deploy event appended.
    next_seq: u32,
    /// Whether the groups' strings are held (not for [`Table::for_report`]).
    partial: bool,
    strings: Strings,
    /// (service, environment) of each group, by group index.
    groups: Vec<(Sym, Sym)>,
    /// Each group's own strings (versions, commit ids), by group index.
    local: Vec<Strings>,
    group_index: HashMap<(Sym, Sym), u32>,
    deployments: Vec<Rec>,
    /// Each change's commit id (in its event's group's strings).
    change_sha: Vec<Sym>,
    /// Each change's time as lead time counts it (`Change::effective_time`).
    change_at: Vec<UnixSeconds>,
    /// (change, author time) of the changes with a pull request's first-commit time (then
    /// `change_at` holds that), by change.
    squash: Vec<(u32, UnixSeconds)>,
    /// (deploy event, incident id) of `resolves_incidents`, by event.
    resolves: Vec<(u32, Sym)>,
    incidents: Vec<Inc>,
    findings: Vec<Finding>,
    /// By symbol: the first deploy event with that delivery id (`u32::MAX` for none).
    id_first: Vec<u32>,
    /// The later deploy events of a delivery id held by several.
    id_more: HashMap<Sym, Vec<u32>>,
}

/// Where one of a group's strings lies in the input, so that it is read only when needed: to
/// compare it with another of the same hash, or to copy it.
#[derive(Clone, Copy)]
enum At {
    /// The empty string every [`Strings`] interns first.
    Empty,
    /// Change `k`'s commit id of deploy event `e` (input index).
    Change(u32, u32),
    /// The head commit of deploy event `e`.
    Head(u32),
    /// The version of deploy event `e`.
    Version(u32),
    /// The commit of incident `k`.
    Incident(u32),
}

impl At {
    fn str(self, events: &Events) -> &str {
        let d = |e: u32| events.deployments.get(e as usize);
        let s = match self {
            At::Empty => None,
            At::Change(e, k) => d(e)
                .and_then(|d| d.commits.get(k as usize))
                .map(|c| c.sha.as_str()),
            At::Head(e) => d(e).map(|d| d.commit.as_str()),
            At::Version(e) => d(e).map(|d| d.version.as_str()),
            At::Incident(k) => events
                .incidents
                .get(k as usize)
                .and_then(|i| i.commit.as_deref()),
        };
        s.unwrap_or_default()
    }
}

/// A string's hash folded to 32 bits: held in the slot its symbol takes later, so hashing in
/// input order needs no array of its own. Two strings of a group share one only by chance
/// (about one pair in a billion), and are then told apart by reading them.
fn short_hash(state: &foldhash::fast::RandomState, s: &str) -> u32 {
    let h = state.hash_one(s);
    (h ^ (h >> 32)) as u32
}

/// A short hash spread over the 64 bits a hash table takes (its low bits pick the bucket, its
/// top bits tag it).
fn widen(h: u32) -> u64 {
    let h = u64::from(h);
    h | (h << 32)
}

/// One group's strings interned by their hashes, as [`Table::from_events`] interns them after
/// hashing them in input order: the symbols and repeat flags a [`Strings`] gives the same
/// strings in the same order, but a string is read only to compare it with one of equal hash
/// (a repeat, or rarely a collision). One serves every group in turn.
#[derive(Default)]
struct ByHash {
    /// Each string's [`short_hash`].
    hashes: Vec<u32>,
    at: Vec<At>,
    repeated: Vec<bool>,
    index: HashTable<Sym>,
}

impl ByHash {
    /// Forgets every string but the empty one (whose short hash is `empty`), keeping the
    /// memory.
    fn reset(&mut self, empty: u32) {
        self.hashes.clear();
        self.at.clear();
        self.repeated.clear();
        self.index.clear();
        self.hashes.push(empty);
        self.at.push(At::Empty);
        self.repeated.push(false);
        self.index
            .insert_unique(widen(empty), EMPTY, |_| widen(empty));
    }

    /// The symbol of the string at `at` (of short hash `hash`), interning it if new.
    #[inline(always)]
    fn intern(&mut self, events: &Events, hash: u32, at: At) -> Sym {
        let Self {
            hashes,
            at: ats,
            repeated,
            index,
        } = self;
        let same = |k: &Sym| {
            let k = *k as usize;
            hashes.get(k) == Some(&hash)
                && ats
                    .get(k)
                    .is_some_and(|&held| held.str(events) == at.str(events))
        };
        if let Some(&sym) = index.find(widen(hash), same) {
            if let Some(r) = repeated.get_mut(sym as usize) {
                *r = true;
            }
            return sym;
        }
        if hashes.len() >= MAX_STRINGS {
            return ABSENT - 1;
        }
        let sym = hashes.len() as Sym;
        hashes.push(hash);
        ats.push(at);
        repeated.push(false);
        index.insert_unique(widen(hash), sym, |&k| {
            widen(hashes.get(k as usize).copied().unwrap_or(0))
        });
        sym
    }

    /// The strings interned, copied in symbol order (hashed by `state`, as they were).
    fn to_strings(&self, events: &Events, state: &foldhash::fast::RandomState) -> Strings {
        let mut strings = Strings::with_state(state.clone());
        strings.reserve(self.hashes.len(), 0);
        for (&at, &repeated) in self.at.iter().zip(&self.repeated).skip(1) {
            let s = at.str(events);
            strings.push_new(s, state.hash_one(s), repeated);
        }
        if self.repeated.first() == Some(&true) {
            strings.mark_repeated(EMPTY);
        }
        // The bytes were not counted before (that would read every string twice); the hub
        // keeps them, so no room is left over.
        strings.store.bytes.shrink_to_fit();
        strings
    }

    /// The repeat flags alone: the same symbols, no strings (each reads as empty).
    fn flags_only(&self, state: &foldhash::fast::RandomState) -> Strings {
        Strings {
            store: Owned::default(),
            repeated: self.repeated.clone(),
            index: HashTable::new(),
            state: state.clone(),
        }
    }
}

/// Symbols of one table in another, as [`Table::filtered`] copies events.
#[derive(Default)]
struct Remap {
    syms: HashMap<Sym, Sym>,
    /// Of the groups' strings: ((old group, old symbol), new symbol).
    local: HashMap<(u32, Sym), Sym>,
}

fn copy_sym(from: &Strings, to: &mut Strings, sym: Sym) -> Sym {
    let new = to.intern(from.str(sym));
    if from.repeated(sym) {
        to.mark_repeated(new);
    }
    new
}

impl Remap {
    fn sym(&mut self, from: &Table, to: &mut Table, sym: Sym) -> Sym {
        if sym == ABSENT {
            return ABSENT;
        }
        *self
            .syms
            .entry(sym)
            .or_insert_with(|| copy_sym(&from.strings, &mut to.strings, sym))
    }

    /// A symbol of group `g`'s strings in `from` as one of group `to_g`'s in `to`.
    fn local(&mut self, from: &Table, g: u32, to: &mut Table, to_g: u32, sym: Sym) -> Sym {
        if sym == ABSENT {
            return ABSENT;
        }
        *self.local.entry((g, sym)).or_insert_with(|| {
            match (from.local.get(g as usize), to.local.get_mut(to_g as usize)) {
                (Some(a), Some(b)) => copy_sym(a, b, sym),
                _ => EMPTY,
            }
        })
    }

    fn group(&mut self, from: &Table, to: &mut Table, g: u32) -> u32 {
        let (s, e) = from
            .groups
            .get(g as usize)
            .copied()
            .unwrap_or((EMPTY, EMPTY));
        let key = (self.sym(from, to, s), self.sym(from, to, e));
        let (groups, local) = (&mut to.groups, &mut to.local);
        *to.group_index.entry(key).or_insert_with(|| {
            groups.push(key);
            local.push(Strings::default());
            index_u32(groups.len() - 1)
        })
    }
}

#[inline(always)]
fn sym_of(strings: &mut Strings, s: Option<&str>) -> Sym {
    match s {
        Some(s) => strings.intern(s),
        None => ABSENT,
    }
}

/// (service, environment) as a map key hashed by the service alone: a store holds few
/// environments, and a look-up per deploy event then hashes one name instead of two.
#[derive(PartialEq, Eq)]
struct GroupKey<'a>(&'a str, &'a str);

impl std::hash::Hash for GroupKey<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

fn index_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Table {
    /// The table of `events`: the deploy events [`Table::push_deployment`] would hold given
    /// them one by one (the same [`Rec::seq`] and symbols), but each group's stored
    /// together; the incidents and findings in order. Three passes: in input order (the order
    /// the events lie in memory), each event's group, to size each group's place; again in
    /// input order, each event's record and change times written where they are stored, its
    /// names and delivery ids interned in the table's strings, and its group strings (commit
    /// ids, version) hashed into the slots their symbols take; then group by group, those
    /// strings interned by hash in one interner that stays in cache, the input read again only
    /// to compare two strings of equal hash and to copy each group's strings into its own.
    #[must_use]
    pub fn from_events(events: &Events) -> Self {
        Self::build(events, true)
    }

    /// [`Table::from_events`] for one computation on `events`: the same records and
    /// symbols, but the groups' strings (versions, commit ids) are not copied: only whether
    /// each was interned more than once, all a computation reads of them. So its deploy
    /// events and incidents are not given back ([`Table::deployment`] is `None`), and it is
    /// not to be appended to or filtered (the hub builds its table with `from_events`).
    #[must_use]
    pub(super) fn for_report(events: &Events) -> Self {
        Self::build(events, false)
    }

    fn build(events: &Events, keep_group_strings: bool) -> Self {
        let mut table = Self {
            partial: !keep_group_strings,
            ..Self::default()
        };
        let deployments = &events.deployments;
        // First pass, in input order: each event's group, and each group's size.
        let mut groups: HashMap<GroupKey<'_>, u32> = HashMap::default();
        let mut group_of: Vec<u32> = Vec::with_capacity(deployments.len());
        // (events, changes) of each group.
        let mut sizes: Vec<(usize, usize)> = Vec::new();
        let mut id_bytes = 0;
        for d in deployments {
            // Numbered in order of first appearance, as `Table::group` numbers them when the
            // second pass meets them.
            let n = index_u32(groups.len());
            let g = *groups
                .entry(GroupKey(&d.service, &d.environment))
                .or_insert(n);
            group_of.push(g);
            let g = g as usize;
            if sizes.len() <= g {
                sizes.resize(g + 1, (0, 0));
            }
            sizes[g].0 += 1;
            sizes[g].1 += d.commits.len();
            id_bytes += d.id.len();
        }
        drop(groups);
        // Where each group's events and changes start: stored group by group.
        let mut next: Vec<(usize, usize)> = Vec::with_capacity(sizes.len());
        let (mut records, mut changes) = (0, 0);
        for &(n, c) in &sizes {
            next.push((records, changes));
            records += n;
            changes += c;
        }
        table.strings.reserve(deployments.len(), id_bytes);
        // Every group's strings are hashed alike, so this pass can hash them.
        let state = foldhash::fast::RandomState::default();
        table.deployments = vec![
            Rec {
                seq: 0,
                finished: 0,
                started: 0,
                id: EMPTY,
                version: EMPTY,
                commit: EMPTY,
                fixes: ABSENT,
                group: 0,
                changes: 0,
                status: DeployStatus::Success,
                kind: DeploymentKind::Normal,
            };
            records
        ];
        table.change_at = vec![0; changes];
        // Until the third pass interns them, each change's commit id and each event's version
        // stand in their symbols' slots as short hashes, and the head commits that are none
        // of their event's changes aside, as (stored event, short hash).
        table.change_sha = vec![EMPTY; changes];
        let mut heads: Vec<(u32, u32)> = Vec::new();
        // Second pass, in input order (the order the events lie in memory): each event written
        // where it is stored, its names and delivery ids interned in the table's strings, its
        // group's strings (commit ids, version) hashed to be interned by the third.
        for (i, (d, &g)) in deployments.iter().zip(&group_of).enumerate() {
            let Some(slot) = next.get_mut(g as usize) else {
                continue;
            };
            let (e, c0) = *slot;
            *slot = (e + 1, c0 + d.commits.len());
            let e32 = index_u32(e);
            if g as usize == table.groups.len() {
                // Its names interned where pushing the events one by one interns them.
                table.group(&d.service, &d.environment);
            }
            let id = table.strings.intern(&d.id);
            let fixes = sym_of(&mut table.strings, d.fixes_deployment.as_deref());
            for (k, c) in d.commits.iter().enumerate() {
                if c.pr_first_commit_at.is_some() {
                    table.squash.push((index_u32(c0 + k), c.timestamp));
                }
                table.change_at[c0 + k] = c.effective_time();
                table.change_sha[c0 + k] = short_hash(&state, &c.sha);
            }
            // The head commit is most often one of the changes: its own string only if not.
            let head = d.commits.iter().rposition(|c| c.sha == d.commit);
            if head.is_none() {
                heads.push((e32, short_hash(&state, &d.commit)));
            }
            for r in &d.resolves_incidents {
                let sym = table.strings.intern(r);
                table.resolves.push((e32, sym));
            }
            table.deployments[e] = Rec {
                seq: index_u32(i),
                finished: d.finished_at,
                started: d.started_at,
                id,
                version: short_hash(&state, &d.version),
                // The head's index among the changes until the third pass interns it.
                commit: head.map_or(u32::MAX, index_u32),
                fixes,
                group: g,
                changes: index_u32(c0),
                status: d.status,
                kind: d.kind,
            };
        }
        drop(group_of);
        table.squash.sort_unstable_by_key(|&(c, _)| c);
        table.resolves.sort_by_key(|&(e, _)| e);
        heads.sort_unstable_by_key(|&(e, _)| e);
        // The incidents (their commits interned in their group's strings below, after its
        // deploy events: the symbols interning them in input order gives).
        table.incidents.reserve(events.incidents.len());
        let mut incidents_of: Vec<Vec<u32>> = Vec::new();
        for (k, i) in events.incidents.iter().enumerate() {
            let inc = table.incident_rec(i, false);
            let g = inc.group as usize;
            if incidents_of.len() <= g {
                incidents_of.resize_with(g + 1, Vec::new);
            }
            if i.commit.is_some() {
                incidents_of[g].push(index_u32(k));
            }
            table.incidents.push(inc);
        }
        // Third pass, group by group: each group's strings interned by their hashes while its
        // index stays in cache, the input read only to compare strings of equal hash (and, for
        // the hub's table, to copy the group's strings).
        let empty = short_hash(&state, "");
        let mut interner = ByHash::default();
        let mut heads = heads.into_iter().peekable();
        let mut locals = std::mem::take(&mut table.local);
        let mut end = 0;
        for (g, held) in locals.iter_mut().enumerate() {
            interner.reset(empty);
            let start = end;
            end += sizes.get(g).map_or(0, |&(n, _)| n);
            for e in start..end {
                let r = table.deployments[e];
                let first = r.changes as usize;
                let last = table
                    .deployments
                    .get(e + 1)
                    .map_or(table.change_sha.len(), |n| n.changes as usize);
                for (k, c) in (first..last).enumerate() {
                    let at = At::Change(r.seq, index_u32(k));
                    table.change_sha[c] = interner.intern(events, table.change_sha[c], at);
                }
                let commit = match table.change_sha.get(first + r.commit as usize) {
                    Some(&sha) if r.commit != u32::MAX => sha,
                    _ => match heads.next_if(|&(h, _)| h as usize == e) {
                        Some((_, hash)) => interner.intern(events, hash, At::Head(r.seq)),
                        None => EMPTY,
                    },
                };
                let version = interner.intern(events, r.version, At::Version(r.seq));
                let rec = &mut table.deployments[e];
                rec.commit = commit;
                rec.version = version;
            }
            for &k in incidents_of.get(g).map_or(&[][..], Vec::as_slice) {
                let Some(c) = events
                    .incidents
                    .get(k as usize)
                    .and_then(|i| i.commit.as_deref())
                else {
                    continue;
                };
                let sym = interner.intern(events, short_hash(&state, c), At::Incident(k));
                if let Some(inc) = table.incidents.get_mut(k as usize) {
                    inc.commit = sym;
                }
            }
            *held = if keep_group_strings {
                interner.to_strings(events, &state)
            } else {
                interner.flags_only(&state)
            };
        }
        table.local = locals;
        table.next_seq = index_u32(deployments.len());
        // Each delivery id's events (as `note_id` indexes them, sized once).
        table.id_first = vec![u32::MAX; table.strings.len()];
        for (e, r) in table.deployments.iter().enumerate() {
            let e = index_u32(e);
            match table.id_first.get_mut(r.id as usize) {
                Some(first) if *first == u32::MAX => *first = e,
                Some(_) => table.id_more.entry(r.id).or_default().push(e),
                None => {}
            }
        }
        for f in &events.regressions {
            let group = table.group(&f.service, &f.environment);
            let deployment = table.strings.intern(&f.deployment_id);
            table.findings.push(Finding {
                started: f.started_at,
                resolved: f.resolved_at,
                deployment,
                group,
            });
        }
        table
    }

    /// The group of (service, environment), added if new.
    fn group(&mut self, service: &str, environment: &str) -> u32 {
        let key = (
            self.strings.intern(service),
            self.strings.intern(environment),
        );
        let (groups, local) = (&mut self.groups, &mut self.local);
        *self.group_index.entry(key).or_insert_with(|| {
            groups.push(key);
            local.push(Strings::default());
            index_u32(groups.len() - 1)
        })
    }

    /// The record of `i`, its commit interned if `with_commit` (else [`ABSENT`]).
    fn incident_rec(&mut self, i: &Incident, with_commit: bool) -> Inc {
        let group = self.group(&i.service, &i.environment);
        let commit = match (&i.commit, self.local.get_mut(group as usize)) {
            (Some(c), Some(local)) if with_commit => local.intern(c),
            _ => ABSENT,
        };
        Inc {
            started: i.started_at,
            resolved: i.resolved_at,
            id: self.strings.intern(&i.id),
            group,
            deployment: sym_of(&mut self.strings, i.deployment_id.as_deref()),
            commit,
            resolved_by: sym_of(&mut self.strings, i.resolved_by_deployment.as_deref()),
        }
    }

    /// Appends a deploy event; its index.
    pub fn push_deployment(&mut self, d: &Deployment) -> u32 {
        let group = self.group(&d.service, &d.environment);
        self.push_in(d, group)
    }

    /// Appends a deploy event of `group`; its index.
    fn push_in(&mut self, d: &Deployment, group: u32) -> u32 {
        let first_change = self.change_sha.len();
        let e = index_u32(self.deployments.len());
        let Some(local) = self.local.get_mut(group as usize) else {
            return e;
        };
        for c in &d.commits {
            let sha = local.intern(&c.sha);
            if c.pr_first_commit_at.is_some() {
                self.squash
                    .push((index_u32(self.change_sha.len()), c.timestamp));
            }
            self.change_sha.push(sha);
            self.change_at.push(c.effective_time());
        }
        // The head commit is most often one of the changes: no second look-up then.
        let commit = match d.commits.iter().rposition(|c| c.sha == d.commit) {
            Some(k) => self.change_sha[first_change + k],
            None => local.intern(&d.commit),
        };
        let version = local.intern(&d.version);
        let seq = self.next_seq;
        self.next_seq = seq.saturating_add(1);
        let rec = Rec {
            seq,
            finished: d.finished_at,
            started: d.started_at,
            id: self.strings.intern(&d.id),
            version,
            commit,
            fixes: sym_of(&mut self.strings, d.fixes_deployment.as_deref()),
            group,
            changes: index_u32(first_change),
            status: d.status,
            kind: d.kind,
        };
        for id in &d.resolves_incidents {
            let sym = self.strings.intern(id);
            self.resolves.push((e, sym));
        }
        self.note_id(rec.id, e);
        self.deployments.push(rec);
        e
    }

    /// Adds an incident, or replaces the first one with the same id.
    pub fn put_incident(&mut self, i: &Incident) {
        let inc = self.incident_rec(i, true);
        match self.incidents.iter_mut().find(|k| k.id == inc.id) {
            Some(held) => *held = inc,
            None => self.incidents.push(inc),
        }
    }

    /// Indexes deploy event `e` under its delivery id.
    fn note_id(&mut self, id: Sym, e: u32) {
        let i = id as usize;
        if id == ABSENT {
            return;
        }
        if self.id_first.len() <= i {
            self.id_first.resize(i + 1, u32::MAX);
        }
        if self.id_first[i] == u32::MAX {
            self.id_first[i] = e;
        } else {
            self.id_more.entry(id).or_default().push(e);
        }
    }

    /// The deploy events with delivery id `id`.
    pub fn events_with_id(&self, id: Sym) -> impl Iterator<Item = u32> + '_ {
        let first = self
            .id_first
            .get(id as usize)
            .copied()
            .filter(|&e| e != u32::MAX);
        let more = first
            .and_then(|_| self.id_more.get(&id))
            .map_or(&[][..], Vec::as_slice);
        first.into_iter().chain(more.iter().copied())
    }

    /// The interned strings.
    #[must_use]
    pub fn strings(&self) -> &Strings {
        &self.strings
    }

    /// The string of `sym`.
    #[must_use]
    pub fn str(&self, sym: Sym) -> &str {
        self.strings.str(sym)
    }

    /// The strings of group `g` (versions, commit ids); empty for an unknown group.
    #[must_use]
    pub fn local(&self, g: u32) -> &Strings {
        static NONE: std::sync::OnceLock<Strings> = std::sync::OnceLock::new();
        self.local
            .get(g as usize)
            .unwrap_or_else(|| NONE.get_or_init(Strings::default))
    }

    /// (service, environment) of each group.
    #[must_use]
    pub fn groups(&self) -> &[(Sym, Sym)] {
        &self.groups
    }

    /// The deploy events.
    #[must_use]
    pub fn deployments(&self) -> &[Rec] {
        &self.deployments
    }

    /// The incidents.
    #[must_use]
    pub fn incidents(&self) -> &[Inc] {
        &self.incidents
    }

    /// The regression findings.
    #[must_use]
    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    /// The change indices of deploy event `e`.
    #[must_use]
    pub fn changes_of(&self, e: u32) -> std::ops::Range<usize> {
        let i = e as usize;
        let start = self.deployments.get(i).map_or(0, |r| r.changes as usize);
        let end = self
            .deployments
            .get(i + 1)
            .map_or(self.change_sha.len(), |r| r.changes as usize);
        start..end.max(start)
    }

    /// Commit ids of the changes.
    #[must_use]
    pub fn change_shas(&self) -> &[Sym] {
        &self.change_sha
    }

    /// Times of the changes as lead time counts them.
    #[must_use]
    pub fn change_times(&self) -> &[UnixSeconds] {
        &self.change_at
    }

    /// The incident ids deploy event `e` resolves.
    pub fn resolves_of(&self, e: u32) -> impl Iterator<Item = Sym> + '_ {
        let start = self.resolves.partition_point(|&(k, _)| k < e);
        self.resolves[start..]
            .iter()
            .take_while(move |&&(k, _)| k == e)
            .map(|&(_, sym)| sym)
    }

    /// Deploy events with `resolves_incidents`, by event: (event, incident id).
    #[must_use]
    pub fn resolves(&self) -> &[(u32, Sym)] {
        &self.resolves
    }

    fn opt(&self, sym: Sym) -> Option<String> {
        (sym != ABSENT).then(|| self.str(sym).to_owned())
    }

    /// Deploy event `e` as it was given (`None` from a [`Table::for_report`]).
    #[must_use]
    pub fn deployment(&self, e: u32) -> Option<Deployment> {
        let r = self.deployments.get(e as usize).filter(|_| !self.partial)?;
        let (service, environment) = self.groups.get(r.group as usize).copied()?;
        let local = self.local(r.group);
        let changes = self.changes_of(e);
        let squash_start = self
            .squash
            .partition_point(|&(c, _)| (c as usize) < changes.start);
        let mut squash = self.squash[squash_start..].iter().peekable();
        let commits = changes
            .map(|c| {
                let at = self.change_at[c];
                let (timestamp, pr_first_commit_at) =
                    match squash.next_if(|&&(k, _)| k as usize == c) {
                        Some(&(_, author)) => (author, Some(at)),
                        None => (at, None),
                    };
                Change {
                    sha: local.str(self.change_sha[c]).to_owned(),
                    timestamp,
                    pr_first_commit_at,
                }
            })
            .collect();
        Some(Deployment {
            id: self.str(r.id).to_owned(),
            service: self.str(service).to_owned(),
            environment: self.str(environment).to_owned(),
            version: local.str(r.version).to_owned(),
            commit: local.str(r.commit).to_owned(),
            status: r.status,
            started_at: r.started,
            finished_at: r.finished,
            commits,
            kind: r.kind,
            fixes_deployment: self.opt(r.fixes),
            resolves_incidents: self
                .resolves_of(e)
                .map(|s| self.str(s).to_owned())
                .collect(),
        })
    }

    /// Incident `i` as it was given (`None` from a [`Table::for_report`]).
    #[must_use]
    pub fn incident(&self, i: usize) -> Option<Incident> {
        let r = self.incidents.get(i).filter(|_| !self.partial)?;
        let (service, environment) = self.groups.get(r.group as usize).copied()?;
        Some(Incident {
            id: self.str(r.id).to_owned(),
            service: self.str(service).to_owned(),
            environment: self.str(environment).to_owned(),
            started_at: r.started,
            resolved_at: r.resolved,
            deployment_id: self.opt(r.deployment),
            commit: (r.commit != ABSENT).then(|| self.local(r.group).str(r.commit).to_owned()),
            resolved_by_deployment: self.opt(r.resolved_by),
        })
    }

    /// Regression finding `f` as it was given.
    #[must_use]
    pub fn finding(&self, f: usize) -> Option<RegressionFinding> {
        let r = self.findings.get(f)?;
        let (service, environment) = self.groups.get(r.group as usize).copied()?;
        Some(RegressionFinding {
            deployment_id: self.str(r.deployment).to_owned(),
            service: self.str(service).to_owned(),
            environment: self.str(environment).to_owned(),
            started_at: r.started,
            resolved_at: r.resolved,
        })
    }

    /// A table of the deploy events `keep` accepts (in order) and the incidents and findings
    /// `keep_incident` and `keep_finding` accept, with only the strings they use.
    #[must_use]
    pub fn filtered(
        &self,
        mut keep: impl FnMut(&Rec) -> bool,
        mut keep_incident: impl FnMut(&Inc) -> bool,
        mut keep_finding: impl FnMut(&Finding) -> bool,
    ) -> Self {
        let mut out = Self {
            next_seq: self.next_seq,
            partial: self.partial,
            ..Self::default()
        };
        let mut remap = Remap::default();
        for (e, r) in self.deployments.iter().enumerate() {
            if !keep(r) {
                continue;
            }
            let e = index_u32(e);
            let group = remap.group(self, &mut out, r.group);
            let new_e = index_u32(out.deployments.len());
            let rec = Rec {
                id: remap.sym(self, &mut out, r.id),
                version: remap.local(self, r.group, &mut out, group, r.version),
                commit: remap.local(self, r.group, &mut out, group, r.commit),
                fixes: remap.sym(self, &mut out, r.fixes),
                group,
                changes: index_u32(out.change_sha.len()),
                ..*r
            };
            let changes = self.changes_of(e);
            let squash_start = self
                .squash
                .partition_point(|&(c, _)| (c as usize) < changes.start);
            for &(c, author) in self.squash[squash_start..]
                .iter()
                .take_while(|&&(c, _)| (c as usize) < changes.end)
            {
                let offset = c as usize - changes.start;
                out.squash
                    .push((index_u32(out.change_sha.len() + offset), author));
            }
            for c in changes {
                let sha = remap.local(self, r.group, &mut out, group, self.change_sha[c]);
                out.change_sha.push(sha);
                out.change_at.push(self.change_at[c]);
            }
            for sym in self.resolves_of(e) {
                let sym = remap.sym(self, &mut out, sym);
                out.resolves.push((new_e, sym));
            }
            out.note_id(rec.id, new_e);
            out.deployments.push(rec);
        }
        for i in &self.incidents {
            if !keep_incident(i) {
                continue;
            }
            let group = remap.group(self, &mut out, i.group);
            let inc = Inc {
                id: remap.sym(self, &mut out, i.id),
                group,
                deployment: remap.sym(self, &mut out, i.deployment),
                commit: remap.local(self, i.group, &mut out, group, i.commit),
                resolved_by: remap.sym(self, &mut out, i.resolved_by),
                ..*i
            };
            out.incidents.push(inc);
        }
        for f in &self.findings {
            if !keep_finding(f) {
                continue;
            }
            let finding = Finding {
                deployment: remap.sym(self, &mut out, f.deployment),
                group: remap.group(self, &mut out, f.group),
                ..*f
            };
            out.findings.push(finding);
        }
        out
    }

    /// Bytes held, for the hub's memory figures.
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        self.strings.heap_bytes()
            + self.local.iter().map(Strings::heap_bytes).sum::<usize>()
            + self.groups.capacity() * size_of::<(Sym, Sym)>()
            + self.deployments.capacity() * size_of::<Rec>()
            + self.change_sha.capacity() * size_of::<Sym>()
            + self.change_at.capacity() * size_of::<UnixSeconds>()
            + self.squash.capacity() * size_of::<(u32, UnixSeconds)>()
            + self.resolves.capacity() * size_of::<(u32, Sym)>()
            + self.incidents.capacity() * size_of::<Inc>()
            + self.findings.capacity() * size_of::<Finding>()
            + self.id_first.capacity() * size_of::<u32>()
            + self
                .id_more
                .values()
                .map(|v| v.capacity() * size_of::<u32>() + 32)
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_intern_once() {
        let mut s: Strings = Strings::default();
        assert_eq!(s.get(""), Some(EMPTY));
        let a = s.intern("api");
        let b = s.intern("web");
        assert_eq!(s.intern("api"), a);
        assert_ne!(a, b);
        assert_eq!((s.str(a), s.str(b), s.str(EMPTY)), ("api", "web", ""));
        assert_eq!(s.get("nope"), None);
        assert_eq!(s.str(ABSENT), "");
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn strings_of_equal_short_hash_are_told_apart_by_reading_them() {
        // Three versions, each deployed twice; every string given one and the same short
        // hash, so each look-up after the first meets a collision.
        let events = Events {
            deployments: ["1.0", "1.1", "1.0", "", "1.1", "1.2"]
                .iter()
                .map(|v| Deployment {
                    id: String::new(),
                    service: "api".into(),
                    environment: "prod".into(),
                    version: (*v).into(),
                    commit: String::new(),
                    status: DeployStatus::Success,
                    started_at: 0,
                    finished_at: 0,
                    commits: Vec::new(),
                    kind: DeploymentKind::Normal,
                    fixes_deployment: None,
                    resolves_incidents: Vec::new(),
                })
                .collect(),
            ..Events::default()
        };
        let mut interner = ByHash::default();
        interner.reset(7);
        let syms: Vec<Sym> = (0..6)
            .map(|e| interner.intern(&events, 7, At::Version(e)))
            .collect();
        assert_eq!(syms, [1, 2, 1, EMPTY, 2, 3]);
        let state = foldhash::fast::RandomState::default();
        let strings = interner.to_strings(&events, &state);
        assert_eq!(
            (0..4).map(|k| strings.str(k)).collect::<Vec<_>>(),
            ["", "1.0", "1.1", "1.2"]
        );
        let flags: Vec<bool> = (0..4).map(|k| strings.repeated(k)).collect();
        assert_eq!(flags, [true, true, true, false]);
        // The copy looks strings up by their full hashes, as the hub interns new ones.
        assert_eq!(strings.get("1.1"), Some(2));
        let only = interner.flags_only(&state);
        assert_eq!(
            (only.repeated(1), only.repeated(3), only.str(1)),
            (true, false, "")
        );
    }

    #[test]
    fn events_come_back_as_given() {
        let d = Deployment {
            id: "d1".into(),
            service: "api".into(),
            environment: "production".into(),
            version: "1.0".into(),
            commit: "abc".into(),
            status: DeployStatus::Failure,
            started_at: 5,
            finished_at: 9,
            commits: vec![
                Change {
                    sha: "abc".into(),
                    timestamp: 1,
                    pr_first_commit_at: Some(-3),
                },
                Change {
                    sha: String::new(),
                    timestamp: 2,
                    pr_first_commit_at: None,
                },
            ],
            kind: DeploymentKind::Rollback,
            fixes_deployment: Some(String::new()),
            resolves_incidents: vec!["i1".into(), "i2".into()],
        };
        let plain = Deployment {
            id: "d2".into(),
            commits: vec![],
            fixes_deployment: None,
            resolves_incidents: vec![],
            ..d.clone()
        };
        let i = Incident {
            id: "i1".into(),
            service: "web".into(),
            environment: "staging".into(),
            started_at: 3,
            resolved_at: None,
            deployment_id: Some("d1".into()),
            commit: None,
            resolved_by_deployment: Some(String::new()),
        };
        let f = RegressionFinding {
            deployment_id: "d2".into(),
            service: "api".into(),
            environment: "production".into(),
            started_at: 11,
            resolved_at: Some(12),
        };
        let events = Events {
            deployments: vec![plain.clone(), d.clone(), plain.clone()],
            incidents: vec![i.clone()],
            regressions: vec![f.clone()],
        };
        let t = Table::from_events(&events);
        assert_eq!(t.deployment(0), Some(plain.clone()));
        assert_eq!(t.deployment(1), Some(d.clone()));
        assert_eq!(t.deployment(2), Some(plain.clone()));
        assert_eq!(t.deployment(3), None);
        assert_eq!(t.incident(0), Some(i.clone()));
        assert_eq!(t.finding(0), Some(f.clone()));
        // Filtering keeps what it keeps, exactly.
        let kept = t.filtered(
            |r| r.id != t.strings().get("d2").unwrap_or(ABSENT),
            |_| true,
            |_| false,
        );
        assert_eq!(kept.deployment(0), Some(d));
        assert_eq!(kept.deployments().len(), 1);
        assert_eq!(kept.incident(0), Some(i));
        assert!(kept.findings().is_empty());
    }

    /// Interleaved groups with repeated, shared and empty strings: `from_events` stores each
    /// group's events together yet gives every event back by its place in the input, with
    /// the symbols pushing them one by one gives (equal strings of a group one symbol).
    #[test]
    fn grouped_storage_gives_the_same_events_and_symbols_as_pushing() {
        let change = |sha: &str, t| Change {
            sha: sha.into(),
            timestamp: t,
            pr_first_commit_at: (t % 3 == 0).then_some(t - 1),
        };
        let mut deployments = Vec::new();
        for k in 0..40_i64 {
            let service = ["api", "web", "db"][(k % 3) as usize];
            deployments.push(Deployment {
                id: if k % 7 == 0 {
                    "shared".into()
                } else {
                    format!("d{k}")
                },
                service: service.into(),
                environment: if k % 5 == 0 { "staging" } else { "production" }.into(),
                // Versions repeat (rollbacks), and one is empty.
                version: if k == 11 {
                    String::new()
                } else {
                    format!("v{}", k % 4)
                },
                commit: format!("c{}", k % 6),
                status: if k % 9 == 0 {
                    DeployStatus::Failure
                } else {
                    DeployStatus::Success
                },
                started_at: k,
                finished_at: k + 1,
                commits: (0..k % 4)
                    .map(|j| change(&format!("c{}", (k + j) % 6), k * 10 + j))
                    .chain((k == 13).then(|| change("", 5)))
                    .collect(),
                kind: DeploymentKind::Normal,
                fixes_deployment: (k % 8 == 3).then(|| format!("d{}", k - 1)),
                resolves_incidents: if k % 6 == 1 {
                    vec!["i1".into()]
                } else {
                    vec![]
                },
            });
        }
        let events = Events {
            deployments: deployments.clone(),
            incidents: vec![],
            regressions: vec![],
        };
        let grouped = Table::from_events(&events);
        let mut pushed = Table::default();
        for d in &deployments {
            pushed.push_deployment(d);
        }
        assert_eq!(grouped.deployments().len(), deployments.len());
        let mut last_group = vec![None; grouped.groups().len()];
        for (e, r) in grouped.deployments().iter().enumerate() {
            let e = u32::try_from(e).expect("few");
            let seq = r.seq as usize;
            assert_eq!(
                grouped.deployment(e).as_ref(),
                deployments.get(seq),
                "event {e}"
            );
            // A group's events in input order.
            let g = r.group as usize;
            assert!(
                last_group[g].is_none_or(|s| s < r.seq),
                "group {g} out of order"
            );
            last_group[g] = Some(r.seq);
            // The same record and symbols as pushing the events one by one.
            let p = pushed.deployments()[seq];
            assert_eq!(Rec { changes: 0, ..p }, Rec { changes: 0, ..*r });
            let seq_u32 = u32::try_from(seq).expect("few");
            let changes = |t: &Table, x: u32| -> Vec<(Sym, UnixSeconds)> {
                t.changes_of(x)
                    .map(|c| (t.change_shas()[c], t.change_times()[c]))
                    .collect()
            };
            assert_eq!(changes(&grouped, e), changes(&pushed, seq_u32));
            assert_eq!(
                grouped.resolves_of(e).collect::<Vec<_>>(),
                pushed.resolves_of(seq_u32).collect::<Vec<_>>()
            );
            let mut ids: Vec<u32> = grouped.events_with_id(r.id).collect();
            ids.sort_unstable();
            let mut want: Vec<u32> = (0..grouped.deployments().len())
                .filter(|&k| grouped.deployments()[k].id == r.id)
                .map(|k| u32::try_from(k).expect("few"))
                .collect();
            want.sort_unstable();
            assert_eq!(ids, want);
        }
        for g in 0..u32::try_from(grouped.groups().len()).expect("few") {
            let (a, b) = (grouped.local(g), pushed.local(g));
            assert_eq!(a.len(), b.len());
            for sym in 0..u32::try_from(a.len()).expect("few") {
                assert_eq!((a.str(sym), a.repeated(sym)), (b.str(sym), b.repeated(sym)));
            }
        }
        assert_eq!(grouped.strings().len(), pushed.strings().len());
        // Events appended later follow the given ones.
        let mut more = grouped.clone();
        let e = more.push_deployment(&deployments[0]);
        assert_eq!(more.deployments()[e as usize].seq, 40);
        let kept = more.filtered(|r| r.seq % 2 == 0, |_| true, |_| true);
        let mut kept = kept;
        let e = kept.push_deployment(&deployments[1]);
        assert_eq!(kept.deployments()[e as usize].seq, 41);
    }

    /// A one-shot table holds the records, changes, incidents and symbols `from_events`
    /// gives, and the same repeat flags, without the groups' strings.
    #[test]
    fn report_table_has_the_same_symbols_and_flags() {
        let mut deployments = Vec::new();
        for k in 0..30_i64 {
            deployments.push(Deployment {
                id: format!("d{}", k % 13),
                service: ["api", "web"][(k % 2) as usize].into(),
                environment: "production".into(),
                version: format!("v{}", k % 5),
                commit: format!("c{}", k % 7),
                status: DeployStatus::Success,
                started_at: k,
                finished_at: k + 1,
                commits: (0..k % 3)
                    .map(|j| Change {
                        sha: format!("c{}", (k + j) % 7),
                        timestamp: k - j,
                        pr_first_commit_at: (j == 1).then_some(k - 9),
                    })
                    .collect(),
                kind: DeploymentKind::Normal,
                fixes_deployment: (k % 4 == 0).then(|| format!("d{}", k % 13)),
                resolves_incidents: if k % 5 == 0 {
                    vec!["i0".into()]
                } else {
                    vec![]
                },
            });
        }
        let incident = |id: &str, service: &str, commit: Option<&str>| Incident {
            id: id.into(),
            service: service.into(),
            environment: "production".into(),
            started_at: 4,
            resolved_at: Some(8),
            deployment_id: Some("d3".into()),
            commit: commit.map(Into::into),
            resolved_by_deployment: None,
        };
        let events = Events {
            deployments,
            incidents: vec![
                incident("i0", "api", Some("c2")),
                incident("i1", "web", Some("only-here")),
                incident("i2", "db", Some("c2")),
                incident("i3", "web", None),
            ],
            regressions: vec![],
        };
        let (full, quick) = (Table::from_events(&events), Table::for_report(&events));
        assert_eq!(full.deployments(), quick.deployments());
        assert_eq!(full.change_shas(), quick.change_shas());
        assert_eq!(full.change_times(), quick.change_times());
        assert_eq!(full.squash, quick.squash);
        assert_eq!(full.resolves(), quick.resolves());
        assert_eq!(full.incidents(), quick.incidents());
        assert_eq!(full.groups(), quick.groups());
        assert_eq!(full.id_first, quick.id_first);
        assert_eq!(full.id_more, quick.id_more);
        assert_eq!(full.strings().len(), quick.strings().len());
        for g in 0..u32::try_from(full.groups().len()).expect("few") {
            let (a, b) = (full.local(g), quick.local(g));
            assert!(b.is_empty(), "no strings held");
            for sym in 0..u32::try_from(a.len()).expect("few") {
                assert_eq!(a.repeated(sym), b.repeated(sym), "group {g} symbol {sym}");
            }
        }
        assert!(full.deployment(0).is_some() && full.incident(0).is_some());
        assert_eq!((quick.deployment(0), quick.incident(0)), (None, None));
    }
}

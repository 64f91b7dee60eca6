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

/// Where the strings of a [`Strings`] live, by symbol: copied into its own buffer
/// ([`Owned`]), or borrowed from the input being interned ([`Borrowed`]).
pub trait Store<'a>: Default {
    /// The string of `sym` (empty for an unknown symbol).
    fn get(&self, sym: Sym) -> &str;
    /// Adds `s` (whose hash is `hash`) under the next symbol; false (nothing added) when full.
    fn push(&mut self, s: &'a str, hash: u64) -> bool;
    /// Whether `sym` is `s` (whose hash is `hash`).
    #[inline(always)]
    fn same(&self, sym: Sym, s: &str, _hash: u64) -> bool {
        self.get(sym) == s
    }
    /// How many strings are held.
    fn len(&self) -> usize;
    /// Whether no string is held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Forgets every string, keeping the memory.
    fn clear(&mut self);
    /// Room for `more` strings of `bytes` bytes in all.
    fn reserve(&mut self, more: usize, bytes: usize);
    /// Bytes held.
    fn heap_bytes(&self) -> usize;
}

/// Strings copied into one buffer.
#[derive(Debug, Clone, Default)]
pub struct Owned {
    bytes: String,
    /// End of each string in `bytes` (a string starts where the previous one ends); `bytes`
    /// holds at most `u32::MAX` bytes.
    ends: Vec<u32>,
}

impl Store<'_> for Owned {
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

    #[inline(always)]
    fn push(&mut self, s: &str, _hash: u64) -> bool {
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

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    fn reserve(&mut self, more: usize, bytes: usize) {
        self.bytes.reserve(bytes);
        self.ends.reserve(more);
    }

    fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + self.ends.capacity() * std::mem::size_of::<u32>()
    }
}

/// Strings borrowed from the input, nothing copied, each with its hash: a string is compared
/// with another only when their hashes are equal, so the input's strings are read again only
/// for a repeat.
#[derive(Debug, Clone, Default)]
pub struct Borrowed<'a>(Vec<(u64, &'a str)>);

impl<'a> Store<'a> for Borrowed<'a> {
    fn get(&self, sym: Sym) -> &str {
        self.0.get(sym as usize).map_or("", |&(_, s)| s)
    }

    #[inline(always)]
    fn push(&mut self, s: &'a str, hash: u64) -> bool {
        if self.0.len() >= MAX_STRINGS {
            return false;
        }
        self.0.push((hash, s));
        true
    }

    #[inline(always)]
    fn same(&self, sym: Sym, s: &str, hash: u64) -> bool {
        self.0
            .get(sym as usize)
            .is_some_and(|&(h, held)| h == hash && held == s)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }

    fn reserve(&mut self, more: usize, _bytes: usize) {
        self.0.reserve(more);
    }

    fn heap_bytes(&self) -> usize {
        self.0.capacity() * std::mem::size_of::<(u64, &str)>()
    }
}

/// Interned strings, each stored once (in `S`: by default copied into one buffer).
#[derive(Debug, Clone)]
pub struct Strings<S = Owned> {
    store: S,
    /// Whether each string was interned more than once (in any role): one interned once
    /// cannot be a repeat of another, which spares the computation a look-up.
    repeated: Vec<bool>,
    index: HashTable<Sym>,
    state: foldhash::fast::RandomState,
}

impl<'a, S: Store<'a>> Default for Strings<S> {
    fn default() -> Self {
        Self::with_state(foldhash::fast::RandomState::default())
    }
}

impl<'a, S: Store<'a>> Strings<S> {
    /// The symbol of `s`, interning it if new (copied into an [`Owned`] store, borrowed by a
    /// [`Borrowed`] one). Fewer than `u32::MAX - 1` bytes in all (and so fewer strings):
    /// beyond it every new string shares the last symbol (never reached: the hub holds far
    /// fewer events).
    #[inline(always)]
    pub fn intern(&mut self, s: &'a str) -> Sym {
        let hash = self.state.hash_one(s);
        self.intern_hashed(s, hash)
    }

    /// [`Strings::intern`] of `s` whose hash by this interner's state is `hash`.
    #[inline(always)]
    fn intern_hashed(&mut self, s: &'a str, hash: u64) -> Sym {
        let Self {
            store,
            repeated,
            index,
            state,
        } = self;
        // Most strings are new: a look-up that misses, then an insertion, each probing the
        // table inline, costs less than the general entry API.
        if let Some(&sym) = index.find(hash, |&k| store.same(k, s, hash)) {
            if let Some(r) = repeated.get_mut(sym as usize) {
                *r = true;
            }
            return sym;
        }
        let sym = store.len() as Sym;
        if !store.push(s, hash) {
            return ABSENT - 1;
        }
        index.insert_unique(hash, sym, |&k| state.hash_one(store.get(k)));
        repeated.push(false);
        sym
    }

    /// No strings but the empty one, hashed by `state`.
    fn with_state(state: foldhash::fast::RandomState) -> Self {
        let mut strings = Self {
            store: S::default(),
            repeated: Vec::new(),
            index: HashTable::new(),
            state,
        };
        strings.intern("");
        strings
    }

    /// Forgets every string but the empty one, keeping the memory.
    pub fn clear(&mut self) {
        self.store.clear();
        self.repeated.clear();
        self.index.clear();
        self.intern("");
    }

    /// The repeat flags alone: the same symbols, no strings (each reads as empty).
    #[must_use]
    pub fn flags_only(&self) -> Strings {
        let mut repeated = self.repeated.clone();
        repeated.shrink_to_fit();
        Strings {
            store: Owned::default(),
            repeated,
            index: HashTable::new(),
            state: self.state.clone(),
        }
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

/// A deploy event's group and delivery ids, as [`Table::from_events`] reads them in input
/// order.
struct Named {
    group: u32,
    id: Sym,
    /// `fixes_deployment`, [`ABSENT`] for `None`.
    fixes: Sym,
}

/// One deploy event as the first pass of [`Table::from_events`] leaves it for the second.
struct StagedEvent {
    /// Its input index.
    input: u32,
    named: Named,
    finished: UnixSeconds,
    started: UnixSeconds,
    status: DeployStatus,
    kind: DeploymentKind,
    /// How many changes it has.
    changes: u32,
    /// Its head commit's index among its changes (the last with that commit id); not below
    /// `changes` when none is: its own string follows theirs.
    head: u32,
}

/// One group's deploy events as the first pass of [`Table::from_events`] reads them (in input
/// order), for the second to store together without reading the input again.
#[derive(Default)]
struct Staged<'a> {
    events: Vec<StagedEvent>,
    /// The strings to intern in the group's strings, in the order they are interned (each
    /// event's changes' commit ids, its head commit unless one of them, its version), with
    /// their hashes.
    strings: Vec<(u64, &'a str)>,
    /// Their bytes in all.
    bytes: usize,
    /// Each change's time (`Change::effective_time`).
    times: Vec<UnixSeconds>,
    /// (index into `times`, author time) of the changes with a pull request's first-commit
    /// time.
    squash: Vec<(u32, UnixSeconds)>,
}

impl<'a> Staged<'a> {
    /// Stages `d` (input index `i`), hashing its strings by `state`.
    fn push(
        &mut self,
        state: &foldhash::fast::RandomState,
        i: usize,
        d: &'a Deployment,
        named: Named,
    ) {
        for c in &d.commits {
            if c.pr_first_commit_at.is_some() {
                self.squash.push((index_u32(self.times.len()), c.timestamp));
            }
            self.times.push(c.effective_time());
            self.string(state, &c.sha);
        }
        let head = d.commits.iter().rposition(|c| c.sha == d.commit);
        if head.is_none() {
            self.string(state, &d.commit);
        }
        self.string(state, &d.version);
        self.events.push(StagedEvent {
            input: index_u32(i),
            named,
            finished: d.finished_at,
            started: d.started_at,
            status: d.status,
            kind: d.kind,
            changes: index_u32(d.commits.len()),
            head: head.map_or(u32::MAX, index_u32),
        });
    }

    fn string(&mut self, state: &foldhash::fast::RandomState, s: &'a str) {
        self.bytes += s.len();
        self.strings.push((state.hash_one(s), s));
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
    /// together; the incidents and findings in order. Two passes: in input order (the order
    /// the events lie in memory), the names and delivery ids (the table's strings) and what
    /// the second pass needs of each event, staged by group — its record's fields, its changes'
    /// times, its group strings (versions, commit ids) with their hashes; then group by group,
    /// from the staging alone, the records and changes written in the order they are stored
    /// and the group's strings interned while its string index stays in cache.
    #[must_use]
    pub fn from_events(events: &Events) -> Self {
        Self::build(events, true)
    }

    /// [`Table::from_events`] for one computation on `events`: the same records and
    /// symbols, but the groups' strings (versions, commit ids) are borrowed from `events`
    /// while they are interned, group by group in one interner (compared by hash first, so
    /// the input's strings are read again only for a repeat), and not kept: only whether
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
        let mut id_bytes = 0;
        for d in deployments {
            id_bytes += d.id.len();
        }
        table.strings.reserve(deployments.len(), id_bytes);
        // The groups' strings are all hashed alike, so the first pass can hash them.
        let state = foldhash::fast::RandomState::default();
        // Groups looked up in a map of their own: small, so it stays in cache.
        let mut groups: HashMap<GroupKey<'_>, u32> = HashMap::default();
        let mut staged: Vec<Staged<'_>> = Vec::new();
        // `resolves_incidents` by input index.
        let mut resolves: Vec<(u32, Sym)> = Vec::new();
        // The first pass, in input order: the table's strings (names and delivery ids), and
        // what the second needs of each event, staged by group, its group's strings hashed.
        for (i, d) in deployments.iter().enumerate() {
            let group = match groups.get(&GroupKey(&d.service, &d.environment)) {
                Some(&g) => g,
                None => {
                    let g = table.group(&d.service, &d.environment);
                    groups.insert(GroupKey(&d.service, &d.environment), g);
                    g
                }
            };
            let id = table.strings.intern(&d.id);
            let fixes = sym_of(&mut table.strings, d.fixes_deployment.as_deref());
            for r in &d.resolves_incidents {
                let sym = table.strings.intern(r);
                resolves.push((index_u32(i), sym));
            }
            let g = group as usize;
            if staged.len() <= g {
                staged.resize_with(g + 1, Staged::default);
            }
            staged[g].push(&state, i, d, Named { group, id, fixes });
        }
        drop(groups);
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
        let records = staged.iter().map(|s| s.events.len()).sum();
        let changes = staged.iter().map(|s| s.times.len()).sum();
        table.deployments.reserve_exact(records);
        table.change_sha.reserve_exact(changes);
        table.change_at.reserve_exact(changes);
        // The second pass, group by group: each group's strings interned while its interner
        // stays in cache, from what the first staged (the input is not read again but to
        // compare strings of equal hashes).
        let mut locals = std::mem::take(&mut table.local);
        let mut scratch: Option<Strings<Borrowed<'_>>> = None;
        for (g, held) in locals.iter_mut().enumerate() {
            let stage = staged.get_mut(g).map(std::mem::take).unwrap_or_default();
            let incidents = incidents_of.get(g).map_or(&[][..], Vec::as_slice);
            if keep_group_strings {
                *held = Strings::with_state(state.clone());
                held.reserve(stage.strings.len(), stage.bytes);
                table.store_group(held, &stage, events, incidents);
            } else {
                // One interner serves every group in turn: it stays in cache, and only its
                // repeat flags are kept.
                let scratch = scratch.get_or_insert_with(|| Strings::with_state(state.clone()));
                scratch.clear();
                scratch.reserve(stage.strings.len(), stage.bytes);
                table.store_group(scratch, &stage, events, incidents);
                *held = scratch.flags_only();
            }
        }
        table.local = locals;
        drop(staged);
        table.next_seq = index_u32(deployments.len());
        if !resolves.is_empty() {
            // Input index to stored index.
            let mut stored = vec![u32::MAX; deployments.len()];
            for (e, r) in table.deployments.iter().enumerate() {
                if let Some(slot) = stored.get_mut(r.seq as usize) {
                    *slot = index_u32(e);
                }
            }
            for (e, _) in &mut resolves {
                *e = stored.get(*e as usize).copied().unwrap_or(u32::MAX);
            }
            resolves.sort_by_key(|&(e, _)| e);
            table.resolves = resolves;
        }
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

    /// Appends the deploy events `stage` holds of one group, interning its strings in `local`,
    /// then the commits of its `incidents` (input indices).
    fn store_group<'a, S: Store<'a>>(
        &mut self,
        local: &mut Strings<S>,
        stage: &Staged<'a>,
        events: &'a Events,
        incidents: &[u32],
    ) {
        let mut strings = stage.strings.iter();
        let mut intern = |local: &mut Strings<S>| {
            strings
                .next()
                .map_or(EMPTY, |&(hash, s)| local.intern_hashed(s, hash))
        };
        let base = self.change_sha.len();
        self.squash.extend(
            stage
                .squash
                .iter()
                .map(|&(c, at)| (index_u32(base + c as usize), at)),
        );
        self.change_at.extend_from_slice(&stage.times);
        for e in &stage.events {
            let first = self.change_sha.len();
            for _ in 0..e.changes {
                let sha = intern(local);
                self.change_sha.push(sha);
            }
            // The head commit is most often one of the changes: its own string only if not.
            let commit = match self.change_sha.get(first + e.head as usize) {
                Some(&sha) if e.head < e.changes => sha,
                _ => intern(local),
            };
            let version = intern(local);
            self.deployments.push(Rec {
                seq: e.input,
                finished: e.finished,
                started: e.started,
                id: e.named.id,
                version,
                commit,
                fixes: e.named.fixes,
                group: e.named.group,
                changes: index_u32(first),
                status: e.status,
                kind: e.kind,
            });
        }
        for &k in incidents {
            if let (Some(inc), Some(Some(c))) = (
                self.incidents.get_mut(k as usize),
                events
                    .incidents
                    .get(k as usize)
                    .map(|i| i.commit.as_deref()),
            ) {
                inc.commit = local.intern(c);
            }
        }
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

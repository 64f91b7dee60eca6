//! A bounded sample history for rule evaluation: [`History`] implements [`Storage`] with a
//! memory bound per series and a cap on the number of series.
//!
//! Each series keeps only what the loaded rules can read ([`History::set_rules`]): the longest
//! window any selector matching it looks back (range plus `offset`, or the 5-minute lookback for
//! an instant selector). A series no rule selects is not kept at all.
//!
//! - **Full resolution** for the last [`HistoryConfig::full_resolution_ms`] (default 1 h) of that
//!   window: every sample, so short windows (`rate(x[5m])`, the 30 m and 1 h burn-rate windows)
//!   read exactly what an unbounded store would give ([`MemStorage`](crate::MemStorage)).
//! - **Downsampled** beyond it, for windows longer than that (the 6 h, 1 d and 3 d burn-rate
//!   windows, `offset 1d`, DORA's 7 d and 30 d): the last sample of every step-aligned bucket
//!   (default step 5 m), plus a staleness marker when the bucket ended stale. A selection that
//!   reaches further back than the full-resolution samples reads only the downsampled ones, so it
//!   sees the series as Prometheus would see it scraped once per step. The step grows for very
//!   long windows so that a series never holds more than
//!   [`HistoryConfig::max_downsampled_points`] downsampled samples.
//!
//! Memory per series: 16 bytes a sample, plus its labels. A series read over 3 days, sampled
//! every 15 s: 241 full-resolution samples (1 h) and 865 downsampled ones (5 m steps), at most
//! about 21 KiB with the buffers' spare capacity (under a fifth of each, see [`SampleBuf`]) and
//! labels; [`History::memory_bytes`] accounts for everything held (BENCHMARKS.md has the
//! measured figure for 1,000 such series).
//!
//! Each tier's samples are contiguous, so a selection lends them to the evaluator as one slice
//! ([`Storage::visit`]) without copying.
//!
//! The cap: at most [`HistoryConfig::max_series`] series. Samples of further series are dropped
//! and counted ([`HistoryStats::rejected_samples`]); [`History::take_cap_report`] hands the first
//! rejected series to the caller once, to be logged once.

use std::collections::HashMap;
use std::sync::Arc;

use crate::file::Group;
use crate::storage::{
    Facts, Labels, LabelsHashBuilder, METRIC_NAME, MatchOp, Matcher, Sample, SeriesVisitor,
    Storage, is_stale, samples_in,
};

/// The hash maps of the history: keyed by label sets and metric names looked up for every
/// appended sample, so a fast hasher (randomly seeded per map).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A time-ordered queue of samples kept contiguous, so that any range of it is one slice, with
/// the [`Facts`] the evaluator may use to skip scanning a window.
///
/// Samples leave at the front by advancing `head`; the space they leave is reclaimed (the live
/// samples moved to the start) when the buffer is full and at least a sixteenth of it is free,
/// otherwise the buffer grows by an eighth. So once a series' window is full, spare capacity
/// stays under about a fifth of the samples held, and a sample is moved at most sixteen times
/// on average.
#[derive(Debug)]
struct SampleBuf {
    buf: Vec<Sample>,
    head: usize,
    /// The newest staleness marker ever pushed (`i64::MIN`: none).
    last_stale: i64,
    /// The newest sample ever pushed that was lower than the non-stale sample before it.
    last_decrease: i64,
}

impl Default for SampleBuf {
    fn default() -> Self {
        SampleBuf {
            buf: Vec::new(),
            head: 0,
            last_stale: i64::MIN,
            last_decrease: i64::MIN,
        }
    }
}

impl SampleBuf {
    /// Bounds that hold for every sample ever pushed, hence for those held: a sample replaced
    /// or dropped can only leave them higher than needed.
    fn facts(&self) -> Facts {
        Facts {
            last_stale: self.last_stale,
            last_decrease: self.last_decrease,
        }
    }

    /// Records what `s`, about to be pushed or to replace the newest sample, adds to the facts.
    fn note(&mut self, s: Sample) {
        if is_stale(s.v) {
            self.last_stale = self.last_stale.max(s.t);
            return;
        }
        let prev = self
            .as_slice()
            .iter()
            .rev()
            .find(|x| x.t < s.t && !is_stale(x.v));
        if prev.is_some_and(|p| s.v < p.v) {
            self.last_decrease = self.last_decrease.max(s.t);
        }
    }

    /// Replaces the value of the newest sample (at `s.t`).
    fn replace_back(&mut self, s: Sample) {
        self.note(s);
        if let Some(last) = self.back_mut() {
            last.v = s.v;
        }
    }

    fn as_slice(&self) -> &[Sample] {
        &self.buf[self.head..]
    }

    fn len(&self) -> usize {
        self.buf.len() - self.head
    }

    fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    fn front(&self) -> Option<&Sample> {
        self.buf.get(self.head)
    }

    fn back(&self) -> Option<&Sample> {
        self.as_slice().last()
    }

    fn back_mut(&mut self) -> Option<&mut Sample> {
        let head = self.head;
        self.buf[head..].last_mut()
    }

    fn pop_front(&mut self) {
        if self.head < self.buf.len() {
            self.head += 1;
        }
        if self.head == self.buf.len() {
            self.buf.clear();
            self.head = 0;
        }
    }

    fn pop_back(&mut self) {
        if self.len() > 0 {
            self.buf.pop();
        }
        if self.head == self.buf.len() {
            self.buf.clear();
            self.head = 0;
        }
    }

    fn push_back(&mut self, s: Sample) {
        self.note(s);
        if self.buf.len() == self.buf.capacity() {
            if self.head > 0 && self.head >= self.buf.len() / 16 {
                self.compact();
            } else {
                self.buf.reserve_exact((self.buf.len() / 8).max(4));
            }
        }
        self.buf.push(s);
    }

    /// Moves the live samples to the start of the buffer.
    fn compact(&mut self) {
        if self.head > 0 {
            self.buf.drain(..self.head);
            self.head = 0;
        }
    }

    /// Gives back spare capacity beyond a quarter of the samples held.
    fn shrink(&mut self) {
        if self.buf.capacity() > self.len() + self.len() / 4 + 16 {
            self.compact();
            self.buf.shrink_to(self.len() + self.len() / 8);
        }
    }
}

/// How much a [`History`] keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Every sample is kept for this long (ms) when a rule reads the series that far back.
    pub full_resolution_ms: i64,
    /// Bucket width (ms) of the downsampled samples kept beyond the full-resolution window.
    pub downsample_step_ms: i64,
    /// At most this many downsampled samples per series: a longer window gets a wider step.
    pub max_downsampled_points: usize,
    /// At most this many series; samples of more are dropped and counted.
    pub max_series: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            full_resolution_ms: 60 * 60 * 1000,
            downsample_step_ms: 5 * 60 * 1000,
            max_downsampled_points: 1000,
            max_series: 10_000,
        }
    }
}

/// How far back the rules read the series some matchers select.
#[derive(Debug, Clone)]
pub struct Requirement {
    pub matchers: Vec<Matcher>,
    /// Milliseconds before the evaluation time.
    pub window_ms: i64,
}

impl Requirement {
    /// Every series, kept for `window_ms` (tests and tools that keep all input).
    pub fn everything(window_ms: i64) -> Self {
        Requirement {
            matchers: Vec::new(),
            window_ms,
        }
    }
}

/// What the rules in `groups` read: one [`Requirement`] per selector.
pub fn requirements(groups: &[Group]) -> Vec<Requirement> {
    groups
        .iter()
        .flat_map(|g| g.rules.iter())
        .flat_map(|r| r.query().selectors())
        .map(|(matchers, window_ms)| Requirement {
            matchers,
            window_ms,
        })
        .collect()
}

/// Counters a caller publishes as self-metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryStats {
    /// Series held.
    pub series: usize,
    /// Samples held (both resolutions).
    pub samples: usize,
    /// Samples dropped because the series cap was reached (all time).
    pub rejected_samples: u64,
    /// Samples dropped because they were older than the series' newest sample (all time).
    pub out_of_order_samples: u64,
}

#[derive(Debug)]
struct HSeries {
    labels: Arc<Labels>,
    /// The longest window (ms) a rule reads this series over.
    window_ms: i64,
    /// Downsampling step (ms); 0 when the window is within full resolution.
    step_ms: i64,
    /// Every sample newer than `raw_complete_after`.
    raw: SampleBuf,
    /// The newest timestamp dropped from `raw` (`i64::MIN` when none was).
    raw_complete_after: i64,
    /// The last non-stale sample of each step bucket, then a staleness marker if the bucket
    /// ended stale.
    coarse: SampleBuf,
}

impl HSeries {
    fn newest(&self) -> Option<i64> {
        self.raw.back().map(|s| s.t)
    }

    fn raw_keep_ms(&self, full_res: i64) -> i64 {
        self.window_ms.min(full_res)
    }

    fn push_coarse(&mut self, s: Sample) {
        let bucket = |t: i64| t.div_euclid(self.step_ms);
        let b = bucket(s.t);
        if is_stale(s.v) {
            if matches!(self.coarse.back(), Some(l) if bucket(l.t) == b && is_stale(l.v)) {
                return;
            }
            self.coarse.push_back(s);
            return;
        }
        while matches!(self.coarse.back(), Some(l) if bucket(l.t) == b) {
            self.coarse.pop_back();
        }
        self.coarse.push_back(s);
    }

    /// Drops what no rule can read any more: anything older than the window before `newest`.
    fn prune(&mut self, full_res: i64) {
        let Some(newest) = self.newest() else {
            return;
        };
        let raw_from = newest.saturating_sub(self.raw_keep_ms(full_res));
        while let Some(front) = self.raw.front() {
            if front.t >= raw_from {
                break;
            }
            self.raw_complete_after = front.t;
            self.raw.pop_front();
        }
        let coarse_from = newest.saturating_sub(self.window_ms);
        while matches!(self.coarse.front(), Some(f) if f.t < coarse_from) {
            self.coarse.pop_front();
        }
    }

    /// The samples in `[mint, maxt]` of the tier that holds them: full resolution when it
    /// reaches back to `mint`, else the downsampled one.
    fn select(&self, mint: i64, maxt: i64) -> (&[Sample], Facts) {
        let tier = if mint > self.raw_complete_after || self.step_ms == 0 {
            &self.raw
        } else {
            &self.coarse
        };
        (samples_in(tier.as_slice(), mint, maxt), tier.facts())
    }

    fn sample_count(&self) -> usize {
        self.raw.len() + self.coarse.len()
    }

    fn memory_bytes(&self) -> usize {
        let sample = std::mem::size_of::<Sample>();
        std::mem::size_of::<Self>()
            + (self.raw.capacity() + self.coarse.capacity()) * sample
            + labels_bytes(&self.labels)
    }
}

/// Heap bytes of a label set: the strings and the map's nodes (estimated at a pointer pair and
/// two `String` headers per entry).
fn labels_bytes(l: &Labels) -> usize {
    let entry = 2 * std::mem::size_of::<String>() + 2 * std::mem::size_of::<usize>();
    std::mem::size_of::<Labels>()
        + l.iter()
            .map(|(k, v)| k.len() + v.len() + entry)
            .sum::<usize>()
}

/// When a slot's series is gone: its newest sample time and the window rules read it over.
#[derive(Debug, Clone, Copy)]
struct SlotAge {
    newest: i64,
    window_ms: i64,
}

impl SlotAge {
    /// A free slot's: never gone.
    const FREE: SlotAge = SlotAge {
        newest: i64::MAX,
        window_ms: 0,
    };
}

/// A selector the rules read, with the series it matches.
#[derive(Debug)]
struct SelectorSlots {
    matchers: Vec<Matcher>,
    /// Slots, in the order of `History::by_name`.
    slots: Vec<usize>,
}

/// A series of a [`History`] as [`History::append_handle`] found it: its slot, or that it is not
/// kept, with the generation that tells whether this still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesHandle {
    slot: u32,
    generation: u32,
}

impl SeriesHandle {
    /// The slot of a series no rule reads.
    const NOT_KEPT: u32 = u32::MAX;
}

/// A bounded, downsampling series store for the agent's rule evaluation.
#[derive(Debug)]
pub struct History {
    config: HistoryConfig,
    requirements: Vec<Requirement>,
    /// The requirements whose selector names the metric (`__name__="x"`), by that name.
    requirements_by_name: FastMap<String, Vec<usize>>,
    /// The requirements whose selector does not name the metric.
    requirements_unnamed: Vec<usize>,
    slots: Vec<Option<HSeries>>,
    /// Each slot's newest sample time and window, beside `slots` so that [`History::prune`]
    /// finds the series that are gone without reading every series (`i64::MAX` for a free
    /// slot: never gone).
    ages: Vec<SlotAge>,
    /// Bumped each time a slot's series is removed, so that a [`SeriesHandle`] to it no longer
    /// holds once the slot is reused.
    generations: Vec<u32>,
    /// Bumped by [`History::set_requirements`]: a handle saying "not kept" holds only for the
    /// requirements it was found under.
    requirements_generation: u32,
    free: Vec<usize>,
    index: HashMap<Arc<Labels>, usize, LabelsHashBuilder>,
    by_name: FastMap<String, Vec<usize>>,
    /// The distinct selectors of the requirements that name a metric and match more than the
    /// name, each with the slots of the series it matches (in `by_name`'s order), so that
    /// visiting such a selector matches no label.
    selectors: Vec<SelectorSlots>,
    /// The indexes in `selectors` by metric name.
    selectors_by_name: FastMap<String, Vec<usize>>,
    /// The indexes in `selectors` by the hash of their matchers ([`History::matchers_hash`]).
    selectors_by_hash: FastMap<u64, Vec<usize>>,
    /// The hasher of `selectors_by_hash`.
    selector_hasher: foldhash::fast::RandomState,
    live: usize,
    rejected_samples: u64,
    out_of_order_samples: u64,
    cap_reported: bool,
    cap_report: Option<Labels>,
}

impl History {
    pub fn new(config: HistoryConfig) -> Self {
        History {
            config,
            requirements: Vec::new(),
            requirements_by_name: FastMap::default(),
            requirements_unnamed: Vec::new(),
            slots: Vec::new(),
            ages: Vec::new(),
            generations: Vec::new(),
            requirements_generation: 0,
            free: Vec::new(),
            index: HashMap::default(),
            by_name: FastMap::default(),
            selectors: Vec::new(),
            selectors_by_name: FastMap::default(),
            selectors_by_hash: FastMap::default(),
            selector_hasher: foldhash::fast::RandomState::default(),
            live: 0,
            rejected_samples: 0,
            out_of_order_samples: 0,
            cap_reported: false,
            cap_report: None,
        }
    }

    pub fn config(&self) -> &HistoryConfig {
        &self.config
    }

    /// Keeps what the selectors of `groups` read (see [`requirements`]).
    pub fn set_rules(&mut self, groups: &[Group]) {
        self.set_requirements(requirements(groups));
    }

    /// Sets what is kept, and applies it to the series held: a series no longer read is
    /// dropped, the others get their new window (their samples are kept; new ones follow the
    /// new downsampling step).
    pub fn set_requirements(&mut self, requirements: Vec<Requirement>) {
        self.requirements_by_name.clear();
        self.requirements_unnamed.clear();
        for (i, r) in requirements.iter().enumerate() {
            match metric_name_of(&r.matchers) {
                Some(name) => self
                    .requirements_by_name
                    .entry(name.to_owned())
                    .or_default()
                    .push(i),
                None => self.requirements_unnamed.push(i),
            }
        }
        self.requirements = requirements;
        self.requirements_generation = self.requirements_generation.wrapping_add(1);
        for i in 0..self.slots.len() {
            let Some(s) = &self.slots[i] else {
                continue;
            };
            let window = self.window_for(&s.labels);
            if window == 0 {
                self.remove(i);
                continue;
            }
            let step = self.step_for(window);
            let full_res = self.config.full_resolution_ms;
            self.ages[i].window_ms = window;
            if let Some(s) = self.slots[i].as_mut() {
                s.window_ms = window;
                if step != s.step_ms {
                    s.step_ms = step;
                    s.coarse = SampleBuf::default();
                    if step != 0 {
                        // Start the downsampled tier from what full resolution holds.
                        let raw: Vec<Sample> = s.raw.as_slice().to_vec();
                        for x in raw {
                            s.push_coarse(x);
                        }
                    }
                }
                s.prune(full_res);
                s.raw.shrink();
                s.coarse.shrink();
            }
        }
        self.index_selectors();
    }

    /// Rebuilds `selectors` from the requirements and the series held.
    fn index_selectors(&mut self) {
        self.selectors.clear();
        self.selectors_by_name.clear();
        self.selectors_by_hash.clear();
        for r in &self.requirements {
            let Some(name) = metric_name_of(&r.matchers) else {
                continue;
            };
            if r.matchers.len() < 2 {
                continue;
            }
            let ids = self.selectors_by_name.entry(name.to_owned()).or_default();
            if ids
                .iter()
                .any(|&i| same_matchers(&self.selectors[i].matchers, &r.matchers))
            {
                continue;
            }
            ids.push(self.selectors.len());
            self.selectors_by_hash
                .entry(matchers_hash(&self.selector_hasher, &r.matchers))
                .or_default()
                .push(self.selectors.len());
            let slots = self
                .by_name
                .get(name)
                .into_iter()
                .flatten()
                .copied()
                .filter(|&i| {
                    self.slots[i]
                        .as_ref()
                        .is_some_and(|s| r.matchers.iter().all(|m| m.matches_labels(&s.labels)))
                })
                .collect();
            self.selectors.push(SelectorSlots {
                matchers: r.matchers.clone(),
                slots,
            });
        }
    }

    /// The index in `selectors` of a selector with these matchers, if it is indexed.
    fn indexed_selector(&self, matchers: &[Matcher]) -> Option<&SelectorSlots> {
        if self.selectors.is_empty() {
            return None;
        }
        self.selectors_by_hash
            .get(&matchers_hash(&self.selector_hasher, matchers))?
            .iter()
            .map(|&i| &self.selectors[i])
            .find(|s| same_matchers(&s.matchers, matchers))
    }

    /// Whether a series named `name` (its `__name__`) can be kept, whatever its other labels:
    /// some requirement names this metric, or one that names none has `__name__` matchers
    /// (`=~`, `!=`, `!~`, or none at all) that `name` satisfies. When `false`, [`append`]
    /// keeps no series of that name, so a caller may skip appending them (the agent skips
    /// whole metric families this way); the answer changes only with the requirements.
    ///
    /// [`append`]: Self::append
    pub fn may_keep_name(&self, name: &str) -> bool {
        self.requirements_by_name.contains_key(name)
            || self.requirements_unnamed.iter().any(|&i| {
                self.requirements[i]
                    .matchers
                    .iter()
                    .filter(|m| m.name == METRIC_NAME)
                    .all(|m| m.matches(name))
            })
    }

    /// The longest window a requirement matching `labels` reads, 0 when none matches.
    fn window_for(&self, labels: &Labels) -> i64 {
        let named = labels
            .get(METRIC_NAME)
            .and_then(|n| self.requirements_by_name.get(n))
            .map_or(&[][..], Vec::as_slice);
        named
            .iter()
            .chain(&self.requirements_unnamed)
            .map(|&i| &self.requirements[i])
            .filter(|r| r.matchers.iter().all(|m| m.matches_labels(labels)))
            .map(|r| r.window_ms)
            .max()
            .unwrap_or(0)
    }

    fn step_for(&self, window_ms: i64) -> i64 {
        if window_ms <= self.config.full_resolution_ms {
            return 0;
        }
        let base = self.config.downsample_step_ms.max(1);
        let points = i64::try_from(self.config.max_downsampled_points.max(1)).unwrap_or(i64::MAX);
        // Wide enough for the window to fit in max points, in whole multiples of the base step.
        let needed = (window_ms + points - 1) / points;
        ((needed + base - 1) / base).max(1) * base
    }

    fn remove(&mut self, i: usize) {
        let Some(s) = self.slots[i].take() else {
            return;
        };
        self.index.remove(&*s.labels);
        if let Some(name) = s.labels.get(METRIC_NAME)
            && let Some(ids) = self.by_name.get_mut(name)
        {
            ids.retain(|&x| x != i);
            if ids.is_empty() {
                self.by_name.remove(name);
            }
            for &sel in self.selectors_by_name.get(name).into_iter().flatten() {
                self.selectors[sel].slots.retain(|&x| x != i);
            }
        }
        if let Some(g) = self.generations.get_mut(i) {
            *g = g.wrapping_add(1);
        }
        self.ages[i] = SlotAge::FREE;
        self.free.push(i);
        self.live -= 1;
    }

    /// Appends a sample (`v` may be a staleness marker). A sample at the series' newest
    /// timestamp replaces it; an older one is dropped and counted. Series no rule reads are not
    /// kept; a new series beyond the cap is dropped and counted.
    pub fn append(&mut self, labels: &Labels, t: i64, v: f64) {
        self.append_handle(labels, t, v);
    }

    /// [`append`](Self::append), returning a handle with which
    /// [`append_by_handle`](Self::append_by_handle) appends to the same series without its
    /// labels (also for a series that is not kept, while the requirements stay the same). `None`
    /// when the sample was refused by the series cap: such a series must be appended by its
    /// labels again, so that it is counted, and kept once there is room.
    pub fn append_handle(&mut self, labels: &Labels, t: i64, v: f64) -> Option<SeriesHandle> {
        let idx = match self.index.get(labels) {
            Some(&i) => i,
            None => {
                let window = self.window_for(labels);
                if window == 0 {
                    return Some(SeriesHandle {
                        slot: SeriesHandle::NOT_KEPT,
                        generation: self.requirements_generation,
                    });
                }
                if self.live >= self.config.max_series {
                    self.rejected_samples += 1;
                    if !self.cap_reported {
                        self.cap_reported = true;
                        self.cap_report = Some(labels.clone());
                    }
                    return None;
                }
                let step_ms = self.step_for(window);
                let arc = Arc::new(labels.clone());
                let series = HSeries {
                    labels: Arc::clone(&arc),
                    window_ms: window,
                    step_ms,
                    raw: SampleBuf::default(),
                    raw_complete_after: i64::MIN,
                    coarse: SampleBuf::default(),
                };
                let age = SlotAge {
                    newest: i64::MIN,
                    window_ms: window,
                };
                let i = match self.free.pop() {
                    Some(i) => {
                        self.slots[i] = Some(series);
                        self.ages[i] = age;
                        i
                    }
                    None => {
                        self.slots.push(Some(series));
                        self.ages.push(age);
                        self.generations.push(0);
                        self.slots.len() - 1
                    }
                };
                if let Some(name) = labels.get(METRIC_NAME) {
                    self.by_name.entry(name.clone()).or_default().push(i);
                    for &sel in self.selectors_by_name.get(name).into_iter().flatten() {
                        let sel = &mut self.selectors[sel];
                        if sel.matchers.iter().all(|m| m.matches_labels(labels)) {
                            sel.slots.push(i);
                        }
                    }
                }
                self.index.insert(arc, i);
                self.live += 1;
                i
            }
        };
        self.push_sample(idx, t, v);
        // A slot beyond u32 (never with a sane cap) gets no handle: it is appended by labels.
        let slot = u32::try_from(idx)
            .ok()
            .filter(|&s| s != SeriesHandle::NOT_KEPT)?;
        Some(SeriesHandle {
            slot,
            generation: self.generations.get(idx).copied().unwrap_or(0),
        })
    }

    /// Appends a sample to the series `handle` was returned for, as
    /// [`append`](Self::append) would with its labels. Returns `false`, appending nothing, when
    /// the handle no longer holds (the series was dropped, or the requirements changed for a
    /// series that was not kept): append by the labels then.
    pub fn append_by_handle(&mut self, handle: SeriesHandle, t: i64, v: f64) -> bool {
        if handle.slot == SeriesHandle::NOT_KEPT {
            return handle.generation == self.requirements_generation;
        }
        let idx = handle.slot as usize;
        if self.generations.get(idx) != Some(&handle.generation)
            || self.slots.get(idx).is_none_or(Option::is_none)
        {
            return false;
        }
        self.push_sample(idx, t, v);
        true
    }

    /// Appends a sample to the series in slot `idx`. Leaves the series pruned for its newest
    /// sample ([`HSeries::prune`]) with its spare capacity bounded ([`SampleBuf::shrink`]), as
    /// every change to a series does: so [`History::prune`] has only gone series to drop.
    fn push_sample(&mut self, idx: usize, t: i64, v: f64) {
        let full_res = self.config.full_resolution_ms;
        let Some(s) = self.slots[idx].as_mut() else {
            return;
        };
        let sample = Sample { t, v };
        match s.raw.back() {
            Some(last) if last.t == t => {
                s.raw.replace_back(sample);
                if s.step_ms > 0 {
                    s.push_coarse(sample);
                }
                return;
            }
            Some(last) if last.t > t => {
                self.out_of_order_samples += 1;
                return;
            }
            _ => {}
        }
        s.raw.push_back(sample);
        if s.step_ms > 0 {
            s.push_coarse(sample);
        }
        s.prune(full_res);
        s.raw.shrink();
        s.coarse.shrink();
        self.ages[idx].newest = t;
    }

    /// Drops the series whose newest sample is older than any rule reads at `now` (ms). The
    /// others are already pruned for their newest sample (see [`History::push_sample`]), which
    /// `now` does not change.
    pub fn prune(&mut self, now: i64) {
        for i in 0..self.ages.len() {
            let age = self.ages[i];
            if age.newest < now.saturating_sub(age.window_ms) {
                self.remove(i);
            }
        }
    }

    /// The first series refused because of the cap, once (the caller logs it once).
    pub fn take_cap_report(&mut self) -> Option<Labels> {
        self.cap_report.take()
    }

    pub fn stats(&self) -> HistoryStats {
        HistoryStats {
            series: self.live,
            samples: self.slots.iter().flatten().map(HSeries::sample_count).sum(),
            rejected_samples: self.rejected_samples,
            out_of_order_samples: self.out_of_order_samples,
        }
    }

    /// Heap bytes held: samples (by capacity), labels, and the indexes.
    pub fn memory_bytes(&self) -> usize {
        let series: usize = self.slots.iter().flatten().map(HSeries::memory_bytes).sum();
        let slots = self.slots.capacity() * std::mem::size_of::<Option<HSeries>>();
        // Index entries: the shared label pointer, the slot, the hash table's control byte.
        let index = self.index.capacity() * (std::mem::size_of::<(Arc<Labels>, usize)>() + 1);
        let names: usize = self
            .by_name
            .iter()
            .map(|(k, v)| k.len() + std::mem::size_of::<(String, Vec<usize>)>() + v.capacity() * 8)
            .sum();
        let selectors: usize = self
            .selectors
            .iter()
            .map(|s| std::mem::size_of::<SelectorSlots>() + s.slots.capacity() * 8)
            .sum();
        series
            + slots
            + selectors
            + self.generations.capacity() * 4
            + self.ages.capacity() * std::mem::size_of::<SlotAge>()
            + self.free.capacity() * 8
            + index
            + names
    }
}

/// A hash of a selector's matchers: what [`same_matchers`] compares.
fn matchers_hash(hasher: &foldhash::fast::RandomState, matchers: &[Matcher]) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = hasher.build_hasher();
    for m in matchers {
        m.name.hash(&mut h);
        m.value.hash(&mut h);
        std::mem::discriminant(&m.op).hash(&mut h);
    }
    h.finish()
}

/// Whether two selectors have the same matchers, in the same order (a regular expression is
/// compared by its text).
fn same_matchers(a: &[Matcher], b: &[Matcher]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.name == y.name
                && x.value == y.value
                && std::mem::discriminant(&x.op) == std::mem::discriminant(&y.op)
        })
}

/// Where the matcher requiring the metric name (`__name__="x"`) is, if there is one.
fn name_matcher(matchers: &[Matcher]) -> Option<usize> {
    matchers
        .iter()
        .position(|m| matches!(m.op, MatchOp::Equal) && m.name == METRIC_NAME)
}

/// The metric name a selector's matchers require (`__name__="x"`), if any.
fn metric_name_of(matchers: &[Matcher]) -> Option<&str> {
    name_matcher(matchers).map(|i| matchers[i].value.as_str())
}

impl Storage for History {
    fn size_hint(&self, matchers: &[Matcher]) -> usize {
        match name_matcher(matchers) {
            Some(i) => {
                let name = &matchers[i].value;
                match self.indexed_selector(matchers) {
                    Some(sel) => sel.slots.len(),
                    None => self.by_name.get(name).map_or(0, Vec::len),
                }
            }
            None => self.live,
        }
    }

    fn visit(&self, matchers: &[Matcher], mint: i64, maxt: i64, f: &mut SeriesVisitor<'_>) {
        // Series found by their name need not be matched against it again.
        let by_name = name_matcher(matchers);
        let mut one = |s: &HSeries| {
            let matched = matchers
                .iter()
                .enumerate()
                .all(|(i, m)| Some(i) == by_name || m.matches_labels(&s.labels));
            if !matched {
                return;
            }
            let (samples, facts) = s.select(mint, maxt);
            if !samples.is_empty() {
                f(&s.labels, samples, facts);
            }
        };
        match by_name {
            Some(i) => {
                let name = &matchers[i].value;
                if let Some(sel) = self.indexed_selector(matchers) {
                    // Every series listed matches: only the window is left to check.
                    for &slot in &sel.slots {
                        if let Some(s) = &self.slots[slot] {
                            let (samples, facts) = s.select(mint, maxt);
                            if !samples.is_empty() {
                                f(&s.labels, samples, facts);
                            }
                        }
                    }
                    return;
                }
                for &slot in self.by_name.get(name).into_iter().flatten() {
                    if let Some(s) = &self.slots[slot] {
                        one(s);
                    }
                }
            }
            None => self.slots.iter().flatten().for_each(one),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::Query;
    use crate::storage::{MemStorage, STALE_NAN};
    use proptest::prelude::*;

    fn labels(s: &str) -> Labels {
        crate::parse_series_labels(s).expect("labels")
    }

    const MIN: i64 = 60_000;
    const HOUR: i64 = 60 * MIN;
    const DAY: i64 = 24 * HOUR;

    fn everything(window: i64) -> History {
        let mut h = History::new(HistoryConfig::default());
        h.set_requirements(vec![Requirement::everything(window)]);
        h
    }

    #[test]
    fn short_windows_keep_every_sample_and_drop_older_ones() {
        let mut h = everything(10 * MIN);
        let l = labels(r#"x{a="1"}"#);
        for i in 0..=120 {
            h.append(&l, i * 15_000, i as f64);
        }
        // 30 minutes of samples; only the last 10 minutes (41 samples) are kept.
        assert_eq!(h.stats().samples, 41);
        let got = h.select(&[Matcher::equal(METRIC_NAME, "x")], 25 * MIN, 30 * MIN);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].samples.len(), 21);
        assert_eq!(
            got[0].samples[0],
            Sample {
                t: 25 * MIN,
                v: 100.0
            }
        );
    }

    #[test]
    fn long_windows_read_the_downsampled_samples() {
        let mut h = everything(3 * DAY);
        let l = labels("c_total");
        // A counter rising 1/s, sampled every 15 s for 3 days.
        let mut t = 0;
        while t <= 3 * DAY {
            h.append(&l, t, (t / 1000) as f64);
            t += 15_000;
        }
        let stats = h.stats();
        // 1 h at full resolution (241 samples) and one sample per 5 minutes for 3 days.
        assert_eq!(stats.samples, 241 + 3 * 24 * 12 + 1, "{stats:?}");
        let end = 3 * DAY;
        let q = |e: &str| {
            Query::parse(e)
                .expect(e)
                .eval_vector(&h, end)
                .expect(e)
                .into_iter()
                .map(|s| s.v)
                .collect::<Vec<_>>()
        };
        // The rate over 1 d and 3 d is the counter's rate, read from 5-minute samples.
        for e in ["rate(c_total[1d])", "rate(c_total[3d])"] {
            let got = q(e);
            assert!(
                got.len() == 1 && (got[0] - 1.0).abs() < 1e-12,
                "{e}: {got:?}"
            );
        }
        // Short windows read full resolution.
        assert_eq!(q("count_over_time(c_total[5m])"), vec![21.0]);
        assert_eq!(q("count_over_time(c_total[6h])"), vec![73.0]);
        // An instant selector a day back reads the downsampled samples: the last one at or
        // before that time is the end of the bucket before, 15 s earlier.
        assert_eq!(q("c_total offset 1d"), vec![(2 * DAY / 1000 - 15) as f64]);
        assert!(h.memory_bytes() < 32 * 1024, "{}", h.memory_bytes());
    }

    #[test]
    fn downsampling_keeps_the_bucket_end_and_staleness() {
        let mut h = History::new(HistoryConfig {
            full_resolution_ms: MIN,
            downsample_step_ms: 5 * MIN,
            ..HistoryConfig::default()
        });
        h.set_requirements(vec![Requirement::everything(HOUR)]);
        let l = labels("g");
        for (t, v) in [(0, 1.0), (MIN, 2.0), (2 * MIN, STALE_NAN), (6 * MIN, 3.0)] {
            h.append(&l, t, v);
        }
        let got = h.select(&[Matcher::equal(METRIC_NAME, "g")], 0, HOUR);
        let got: Vec<(i64, String)> = got[0]
            .samples
            .iter()
            .map(|s| {
                (
                    s.t,
                    if is_stale(s.v) {
                        "stale".into()
                    } else {
                        s.v.to_string()
                    },
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (MIN, "2".to_owned()),
                (2 * MIN, "stale".to_owned()),
                (6 * MIN, "3".to_owned())
            ]
        );
    }

    /// A default history whose requirements are those of one rule file's groups.
    fn history_reading(rule_file: &str) -> History {
        let mut h = History::new(HistoryConfig::default());
        let rf = crate::file::parse("t", rule_file).expect("rules");
        h.set_rules(&rf.groups);
        h
    }

    #[test]
    fn unread_series_are_not_kept_and_windows_follow_the_rules() {
        let mut h = history_reading(
            "groups:\n- name: g\n  rules:\n  - record: r\n    expr: rate(a_total[1d]) + b offset 10m\n",
        );
        h.append(&labels("a_total"), 0, 1.0);
        h.append(&labels("b"), 0, 1.0);
        h.append(&labels("unread"), 0, 1.0);
        assert_eq!(h.stats().series, 2);
        let window = |h: &History, name: &str| {
            h.slots
                .iter()
                .flatten()
                .find(|s| s.labels.get(METRIC_NAME).map(String::as_str) == Some(name))
                .map(|s| (s.window_ms, s.step_ms))
        };
        assert_eq!(window(&h, "a_total"), Some((DAY, 5 * MIN)));
        assert_eq!(window(&h, "b"), Some((15 * MIN, 0)));
        // Rules that no longer read `b` drop it.
        let rf = crate::file::parse(
            "t",
            "groups:\n- name: g\n  rules:\n  - record: r\n    expr: a_total\n",
        )
        .expect("rules");
        h.set_rules(&rf.groups);
        assert_eq!(h.stats().series, 1);
        assert_eq!(window(&h, "a_total"), Some((5 * MIN, 0)));
    }

    /// `may_keep_name` answers by the metric name alone and is never `false` for a name some
    /// series of which would be kept: every name and label set below is appended, and each kept
    /// series' name must have been answered `true`.
    #[test]
    fn may_keep_name_is_false_only_for_names_no_series_of_which_is_kept() {
        let names = [
            "a", "a_total", "b", "b_bucket", "ab", "c", "job", "", "nothing",
        ];
        let label_sets = ["", r#"job="x""#, r#"job="y""#, r#"le="1""#];
        let cases: &[(&str, &[&str])] = &[
            // Named selectors: those names only.
            ("a + on() b_bucket{le=\"1\"}", &["a", "b_bucket"]),
            // A name matcher that is not `=`: the names it matches.
            ("{__name__=~\"a.*\"}", &["a", "a_total", "ab"]),
            (
                "{__name__!~\"a.*\", job=\"x\"}",
                &["b", "b_bucket", "c", "job", "", "nothing"],
            ),
            (
                "count({__name__!=\"b\", job!=\"\"})",
                &["a", "a_total", "b_bucket", "ab", "c", "job", "", "nothing"],
            ),
            // No name matcher at all: every name (the other labels decide).
            ("{job=\"x\"}", &names),
            ("absent(nothing{job=\"y\"}) or c", &["c", "nothing"]),
            // No selector: nothing.
            ("vector(1)", &[]),
        ];
        for (expr, want) in cases {
            let rule_file =
                format!("groups:\n- name: g\n  rules:\n  - record: r\n    expr: '{expr}'\n");
            let mut h = history_reading(&rule_file);
            let got: Vec<&str> = names
                .iter()
                .copied()
                .filter(|n| h.may_keep_name(n))
                .collect();
            assert_eq!(&got, want, "{expr}");
            for n in names {
                for l in label_sets {
                    let mut labels = labels(&format!("x{{{l}}}"));
                    labels.insert(METRIC_NAME.to_owned(), n.to_owned());
                    h.append(&labels, 0, 1.0);
                }
            }
            assert!(h.stats().series > 0 || want.is_empty(), "{expr}");
            for s in h.slots.iter().flatten() {
                let n = s.labels.get(METRIC_NAME).map_or("", String::as_str);
                assert!(h.may_keep_name(n), "{expr}: {n:?} kept but not announced");
            }
        }
    }

    #[test]
    fn the_series_cap_drops_counts_and_reports_once() {
        let mut h = History::new(HistoryConfig {
            max_series: 2,
            ..HistoryConfig::default()
        });
        h.set_requirements(vec![Requirement::everything(HOUR)]);
        for i in 0..4 {
            h.append(&labels(&format!("x{{i=\"{i}\"}}")), 0, 1.0);
            h.append(&labels(&format!("x{{i=\"{i}\"}}")), 1000, 1.0);
        }
        let stats = h.stats();
        assert_eq!((stats.series, stats.rejected_samples), (2, 4));
        assert_eq!(h.take_cap_report(), Some(labels(r#"x{i="2"}"#)));
        assert_eq!(h.take_cap_report(), None);
        h.append(&labels(r#"x{i="9"}"#), 2000, 1.0);
        assert_eq!(h.take_cap_report(), None, "reported once");
        // Series that end free their place.
        h.prune(2 * HOUR);
        assert_eq!(h.stats().series, 0);
        h.append(&labels(r#"x{i="9"}"#), 2 * HOUR, 1.0);
        assert_eq!(h.stats().series, 1);
    }

    #[test]
    fn handles_append_as_labels_do_until_they_no_longer_hold() {
        let mut h = History::new(HistoryConfig {
            max_series: 2,
            ..HistoryConfig::default()
        });
        let rf = crate::file::parse(
            "t",
            "groups:\n- name: g\n  rules:\n  - record: r\n    expr: x{i=\"1\"} + y\n",
        )
        .expect("rules");
        h.set_rules(&rf.groups);
        let x1 = labels(r#"x{i="1"}"#);
        let x2 = labels(r#"x{i="2"}"#);
        let hx = h.append_handle(&x1, 0, 1.0).expect("kept");
        let unread = h.append_handle(&x2, 0, 1.0).expect("not kept, not refused");
        assert!(h.append_by_handle(hx, 1000, 2.0));
        assert!(h.append_by_handle(unread, 1000, 2.0), "still not kept");
        assert_eq!(h.stats().series, 1);
        let sel = |h: &History| h.select(&[Matcher::equal(METRIC_NAME, "x")], 0, i64::MAX);
        assert_eq!(
            sel(&h)[0].samples,
            vec![Sample { t: 0, v: 1.0 }, Sample { t: 1000, v: 2.0 }]
        );
        // Rules that read x{i="2"} too: the "not kept" handle no longer holds.
        let rf = crate::file::parse(
            "t",
            "groups:\n- name: g\n  rules:\n  - record: r\n    expr: x + y\n",
        )
        .expect("rules");
        h.set_rules(&rf.groups);
        assert!(!h.append_by_handle(unread, 2000, 3.0));
        assert!(
            h.append_by_handle(hx, 2000, 3.0),
            "a kept series' handle holds"
        );
        let h2 = h.append_handle(&x2, 2000, 3.0).expect("kept now");
        // The cap refuses a third series: no handle, so it is appended (and counted) by labels.
        assert_eq!(h.append_handle(&labels("y"), 2000, 1.0), None);
        assert_eq!(h.stats().rejected_samples, 1);
        // A series that ends frees its slot; a handle to it no longer holds, even once the
        // slot holds another series.
        h.prune(2000 + HOUR);
        assert_eq!(h.stats().series, 0);
        let hy = h
            .append_handle(&labels("y"), 2000 + HOUR, 1.0)
            .expect("kept");
        assert!(!h.append_by_handle(hx, 2001 + HOUR, 9.0));
        assert!(!h.append_by_handle(h2, 2001 + HOUR, 9.0));
        assert!(h.append_by_handle(hy, 2001 + HOUR, 2.0));
        assert_eq!(h.stats().series, 1);
        assert_eq!(h.stats().samples, 2);
    }

    #[test]
    fn indexed_selectors_follow_series_and_rules() {
        let mut h = history_reading(
            "groups:\n- name: g\n  rules:\n  - record: r\n    expr: x{i=\"1\"} + x{i!=\"1\", j=~\"a|b\"}\n",
        );
        for (i, l) in [
            r#"x{i="1"}"#,
            r#"x{i="2", j="a"}"#,
            r#"x{i="3", j="c"}"#,
            r#"x{i="4", j="b"}"#,
        ]
        .iter()
        .enumerate()
        {
            h.append(&labels(l), i as i64 * 1000, 1.0);
        }
        let q = |h: &History, e: &str| {
            let mut got: Vec<String> = Query::parse(e)
                .expect(e)
                .eval_vector(h, 10_000)
                .expect(e)
                .into_iter()
                .map(|s| crate::format_labels(&s.labels))
                .collect();
            got.sort();
            got
        };
        assert_eq!(q(&h, r#"x{i="1"}"#), vec![r#"{__name__="x", i="1"}"#]);
        assert_eq!(
            q(&h, r#"x{i!="1", j=~"a|b"}"#),
            vec![
                r#"{__name__="x", i="2", j="a"}"#,
                r#"{__name__="x", i="4", j="b"}"#
            ]
        );
        // A selector not among the rules' is matched series by series (x{i="3"} is read by no
        // rule, so not kept).
        assert_eq!(
            q(&h, r#"x{j=~"a|c"}"#),
            vec![r#"{__name__="x", i="2", j="a"}"#]
        );
        // Series that end leave the index; new ones join it.
        h.prune(5 * MIN + 3500);
        h.append(&labels(r#"x{i="5", j="a"}"#), 5 * MIN + 3500, 1.0);
        let later = |e: &str| {
            let mut got: Vec<String> = Query::parse(e)
                .expect(e)
                .eval_vector(&h, 5 * MIN + 4000)
                .expect(e)
                .into_iter()
                .map(|s| crate::format_labels(&s.labels))
                .collect();
            got.sort();
            got
        };
        assert_eq!(
            later(r#"x{i!="1", j=~"a|b"}"#),
            vec![r#"{__name__="x", i="5", j="a"}"#]
        );
        assert!(later(r#"x{i="1"}"#).is_empty());
    }

    #[test]
    fn out_of_order_samples_are_dropped_and_counted() {
        let mut h = everything(HOUR);
        let l = labels("x");
        h.append(&l, 2000, 1.0);
        h.append(&l, 1000, 2.0);
        h.append(&l, 2000, 3.0);
        assert_eq!(h.stats().out_of_order_samples, 1);
        let got = h.select(&[Matcher::equal(METRIC_NAME, "x")], 0, 5000);
        assert_eq!(got[0].samples, vec![Sample { t: 2000, v: 3.0 }]);
    }

    /// Expressions over windows within full resolution, evaluated at the end of the input.
    const SHORT_WINDOW_EXPRS: &[&str] = &[
        "x",
        "x offset 2m",
        "rate(x[5m])",
        "increase(x[10m])",
        "delta(x[30m])",
        "irate(x[1m])",
        "resets(x[1h])",
        "changes(x[20m])",
        "max_over_time(x[15m])",
        "avg_over_time(x[45m])",
        "count_over_time(x[59m])",
        "deriv(x[10m])",
        "sum by (i) (rate(x[5m]))",
        "absent_over_time(x{i=\"0\"}[5m])",
    ];

    /// Range functions whose window may sit in either tier, for `facts_never_change_a_result`.
    const FACT_EXPRS: &[&str] = &[
        "rate(x[1m])",
        "increase(x[5m])",
        "rate(x[10m])",
        "resets(x[30m])",
        "rate(x[2h])",
        "increase(x[6h])",
        "resets(x[6h])",
        "delta(x[30m])",
        "changes(x[2h])",
        "count_over_time(x[6h])",
        "last_over_time(x[10m])",
        "irate(x[5m])",
        "rate(x[1h] offset 10m)",
    ];

    #[derive(Debug, Clone)]
    enum BufOp {
        Push { dt: i64, v: f64 },
        Replace(f64),
        PopFront,
        PopBack,
        Shrink,
    }

    fn buf_op() -> impl Strategy<Value = BufOp> {
        let value = prop_oneof![
            8 => (-3i32..20).prop_map(f64::from),
            1 => Just(STALE_NAN),
            1 => Just(f64::NAN),
        ];
        prop_oneof![
            6 => (1i64..5, value.clone()).prop_map(|(dt, v)| BufOp::Push { dt, v }),
            1 => value.prop_map(BufOp::Replace),
            3 => Just(BufOp::PopFront),
            1 => Just(BufOp::PopBack),
            1 => Just(BufOp::Shrink),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A SampleBuf holds what a plain queue holds, and its facts bound what it was given:
        /// every staleness marker and every sample lower than the non-stale one before it.
        #[test]
        fn sample_buf_is_a_queue_with_sound_facts(
            ops in proptest::collection::vec(buf_op(), 1..600),
        ) {
            let mut buf = SampleBuf::default();
            let mut model: std::collections::VecDeque<Sample> = Default::default();
            let mut t = 0;
            for op in ops {
                match op {
                    BufOp::Push { dt, v } => {
                        t += dt;
                        buf.push_back(Sample { t, v });
                        model.push_back(Sample { t, v });
                    }
                    BufOp::Replace(v) => {
                        if let Some(last) = model.back_mut() {
                            last.v = v;
                            buf.replace_back(Sample { t: last.t, v });
                        }
                    }
                    BufOp::PopFront => {
                        model.pop_front();
                        buf.pop_front();
                    }
                    BufOp::PopBack => {
                        model.pop_back();
                        buf.pop_back();
                    }
                    BufOp::Shrink => buf.shrink(),
                }
                let held: Vec<Sample> = model.iter().copied().collect();
                let same = buf.as_slice().iter().zip(&held).all(|(a, b)| a.t == b.t && a.v.to_bits() == b.v.to_bits());
                prop_assert!(same && buf.len() == held.len());
                let facts = buf.facts();
                let mut prev: Option<f64> = None;
                for x in &held {
                    if is_stale(x.v) {
                        prop_assert!(facts.last_stale >= x.t);
                        continue;
                    }
                    if prev.is_some_and(|p| x.v < p) {
                        prop_assert!(facts.last_decrease >= x.t, "{:?} {:?}", facts, held);
                    }
                    prev = Some(x.v);
                }
            }
        }

        /// The facts a tier keeps (its newest staleness marker and decrease) never change a
        /// result: each function over the samples History lends equals the same function over
        /// a copy of them, which MemStorage lends without facts, in both tiers.
        #[test]
        fn facts_never_change_a_result(
            steps in proptest::collection::vec((1i64..120_000, 0u32..1000, 0u8..40), 1..400),
            extra in 0i64..600_000,
        ) {
            let mut hist = History::new(HistoryConfig {
                full_resolution_ms: 10 * MIN,
                downsample_step_ms: MIN,
                ..HistoryConfig::default()
            });
            hist.set_requirements(vec![Requirement::everything(7 * HOUR)]);
            let l = labels("x");
            let (mut t, mut v) = (0, 0.0);
            for &(dt, inc, kind) in &steps {
                t += dt;
                match kind {
                    0 => {
                        hist.append(&l, t, STALE_NAN);
                        continue;
                    }
                    // A counter reset.
                    1 => v = f64::from(inc) / 10.0,
                    // A sample replaced by a lower one at the same time.
                    2 => hist.append(&l, t, v + 5.0),
                    _ => v += f64::from(inc),
                }
                hist.append(&l, t, v);
            }
            let at = t + extra;
            for e in FACT_EXPRS {
                let q = Query::parse(e).expect("parse");
                let (matchers, window) = q.selectors().remove(0);
                let mut copy = MemStorage::new();
                for s in hist.select(&matchers, at - window, at) {
                    for x in s.samples {
                        copy.append(&s.labels, x.t, x.v);
                    }
                }
                let bits = |r: Result<Vec<crate::VSample>, crate::EvalError>| {
                    r.map(|v| v.into_iter().map(|s| (s.labels, s.t, s.v.to_bits())).collect::<Vec<_>>())
                };
                prop_assert_eq!(bits(q.eval_vector(&hist, at)), bits(q.eval_vector(&copy, at)), "{}", e);
            }
        }

        /// Over windows within full resolution, results equal MemStorage's, whatever the
        /// sample times, values, gaps and staleness markers.
        #[test]
        fn short_windows_equal_mem_storage(
            series in proptest::collection::vec(
                proptest::collection::vec((1i64..90_000, -5i32..50, 0u8..20), 1..200),
                1..4,
            ),
            extra in 0i64..600_000,
        ) {
            let mut mem = MemStorage::new();
            let mut hist = everything(HOUR);
            let mut end = 0;
            for (i, steps) in series.iter().enumerate() {
                let l = labels(&format!("x{{i=\"{i}\"}}"));
                let mut t = 0;
                for &(dt, v, kind) in steps {
                    t += dt;
                    let v = if kind == 0 { STALE_NAN } else { f64::from(v) };
                    mem.append(&l, t, v);
                    hist.append(&l, t, v);
                }
                end = end.max(t);
            }
            let at = end + extra;
            for e in SHORT_WINDOW_EXPRS {
                let q = Query::parse(e).expect("parse");
                let a = q.eval_vector(&mem, at);
                let b = q.eval_vector(&hist, at);
                let norm = |r: Result<Vec<crate::VSample>, crate::EvalError>| {
                    r.map(|mut v| {
                        v.sort_by(|x, y| x.labels.cmp(&y.labels));
                        v.into_iter().map(|s| (s.labels, s.t, s.v.to_bits())).collect::<Vec<_>>()
                    })
                };
                prop_assert_eq!(norm(a), norm(b), "{}", e);
            }
        }

        /// Counter rates over long windows read from the downsampled samples stay within the
        /// error of reading the series once per step.
        #[test]
        fn long_window_rates_stay_close(rate in 1u32..1000, scrape_s in 10i64..60) {
            let mut hist = everything(DAY);
            let l = labels("c_total");
            let mut t = 0;
            while t <= 2 * DAY {
                hist.append(&l, t, f64::from(rate) * (t / 1000) as f64);
                t += scrape_s * 1000;
            }
            let q = Query::parse("rate(c_total[1d])").expect("parse");
            let got = q.eval_vector(&hist, 2 * DAY).expect("eval");
            prop_assert_eq!(got.len(), 1);
            let err = (got[0].v - f64::from(rate)).abs() / f64::from(rate);
            prop_assert!(err < 1e-9, "rate {} read as {}", rate, got[0].v);
        }
    }
}

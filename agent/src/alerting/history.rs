//! A bounded ring of past samples for rate and burn-rate windows.
//!
//! Only series that some rule reads are kept. Each series holds a *fine* ring (every
//! evaluation, [`FINE_POINTS`] points: one hour at a 15 s interval) and a *coarse* ring (one point
//! per `lookback / COARSE_POINTS`, [`COARSE_POINTS`] + 1 points, so a 3-day burn-rate window is
//! covered with ~15-minute resolution). At most `max_series` series are kept (new ones beyond the
//! cap are refused and counted). Memory is therefore bounded by
//! `max_series × (FINE_POINTS + COARSE_POINTS) × 16 bytes` plus the label strings: about 17 MB
//! at the default 2000 series.
//!
//! Increases are computed like PromQL's `increase` without extrapolation: the sum of positive
//! deltas between consecutive points, a decrease being a counter reset (the new value counts
//! whole). A window reaching past the fine ring starts from the coarse point at or before it.
//!
//! The agent ingests the samples of a structured snapshot of its registry
//! (`sidelight_collector::model`, flattened by [`super::expo::samples`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::expo::{Labels, Sample};
use super::rules::Millis;

/// Points per series in the fine ring.
pub const FINE_POINTS: usize = 240;
/// Points per series in the coarse ring.
pub const COARSE_POINTS: usize = 288;

/// A kept series' handle: stable while [`History::generation`] does not change.
pub type SeriesId = usize;

/// One point; `cum` is the running sum of the counter's increases up to it within its ring
/// (resets counted like `increase` counts them), so an increase between two points of a ring
/// is a subtraction.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Point {
    t: Millis,
    v: f64,
    cum: f64,
}

/// PromQL's delta between consecutive counter points: a decrease is a reset.
fn delta(a: f64, b: f64) -> f64 {
    let d = b - a;
    if d >= 0.0 { d } else { b }
}

fn push(ring: &mut VecDeque<Point>, t: Millis, v: f64, cap: usize) {
    let cum = ring.back().map_or(0.0, |p| p.cum + delta(p.v, v));
    ring.push_back(Point { t, v, cum });
    if ring.len() > cap {
        ring.pop_front();
    }
}

/// Where the last [`History::increase_hinted`] found a window's ends in its ring. Series
/// ingested at the same evaluations have their points at the same times, so for the next series
/// the same indices are checked first (two comparisons each) before a binary search.
#[derive(Debug, Default, Clone, Copy)]
pub struct Hint {
    f_after: usize,
    f_end: usize,
    c_after: usize,
    c_hi: usize,
}

/// `ring.partition_point(pred)`, trying `*hint` first (a partition point `i` is the one index
/// with `pred` true before it and false at it), and remembering the answer in `hint`.
fn partition(ring: &VecDeque<Point>, hint: &mut usize, pred: impl Fn(&Point) -> bool) -> usize {
    let i = *hint;
    let fits = i <= ring.len()
        && (i == 0 || ring.get(i - 1).is_some_and(&pred))
        && ring.get(i).is_none_or(|p| !pred(p));
    if !fits {
        *hint = ring.partition_point(pred);
    }
    *hint
}

#[derive(Debug, Default, Clone)]
struct Ring {
    fine: VecDeque<Point>,
    coarse: VecDeque<Point>,
}

impl Ring {
    /// See [`History::increase`]. The points read are those the definition names (the point at
    /// or before the start, then every point up to `now`); binary searches find the ends and the
    /// running sums give the deltas in between, so nothing is allocated or scanned.
    fn increase(&self, now: Millis, window: Millis, hint: &mut Hint) -> Option<(f64, f64)> {
        let start = now - window;
        let fine_start = self.fine.front().map_or(Millis::MAX, |p| p.t);
        // First fine index after the start, and one past the last at or before now.
        let f_after = partition(&self.fine, &mut hint.f_after, |p| p.t <= start);
        let f_end = partition(&self.fine, &mut hint.f_end, |p| p.t <= now).max(f_after);
        let (coarse, fine) = if start < fine_start {
            // The coarse point at or before the start, then the coarse points before the fine
            // ring, then the fine ring up to now.
            let c_after = partition(&self.coarse, &mut hint.c_after, |p| p.t <= start);
            let c_lo = c_after.saturating_sub(1);
            let c_hi = partition(&self.coarse, &mut hint.c_hi, |p| p.t < fine_start).max(c_lo);
            (c_lo..c_hi, 0..f_end)
        } else {
            // The fine point at or before the start (there is one: the ring starts before it).
            (0..0, f_after.saturating_sub(1)..f_end)
        };
        if coarse.len() + fine.len() < 2 {
            return None;
        }
        let (mut inc, mut first, mut last) = (0.0, None, None);
        if !coarse.is_empty() {
            let (a, b) = (
                self.coarse.get(coarse.start)?,
                self.coarse.get(coarse.end - 1)?,
            );
            inc += b.cum - a.cum;
            first = Some(*a);
            last = Some(*b);
        }
        if !fine.is_empty() {
            let (a, b) = (self.fine.get(fine.start)?, self.fine.get(fine.end - 1)?);
            if let Some(l) = last {
                inc += delta(l.v, a.v);
            }
            inc += b.cum - a.cum;
            first = first.or(Some(*a));
            last = Some(*b);
        }
        let (first, last) = (first?, last?);
        Some((inc, (last.t - first.t) as f64 / 1000.0))
    }
}

/// Maps of the history, hashed with foldhash (keys are series names and label sets from the
/// agent's own registry, whose label values the label caps bound).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Debug)]
struct Slot {
    name: Arc<str>,
    labels: Arc<Labels>,
    ring: Ring,
}

/// Past samples of the series rules read.
#[derive(Debug)]
pub struct History {
    max_series: usize,
    coarse_step: Millis,
    keep_for: Millis,
    /// name → labels → slot. Names and label sets are stored once, shared with the slot.
    index: FastMap<Arc<str>, FastMap<Arc<Labels>, SeriesId>>,
    slots: Vec<Option<Slot>>,
    free: Vec<SeriesId>,
    count: usize,
    generation: u64,
    last_ingest: Option<Millis>,
    /// Series refused because the cap was reached (cumulative).
    pub refused: u64,
}

impl History {
    /// A history for rules that look back at most `lookback`.
    pub fn new(max_series: usize, lookback: Millis) -> Self {
        Self {
            max_series,
            coarse_step: (lookback / COARSE_POINTS as i64).max(1),
            keep_for: lookback,
            index: FastMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
            count: 0,
            generation: 0,
            last_ingest: None,
            refused: 0,
        }
    }

    /// Series kept now.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Changes whenever a series is added or forgotten: what was derived from the set of series
    /// (which rule reads which [`SeriesId`]) stays valid while it does not.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn id(&self, name: &str, labels: &Labels) -> Option<SeriesId> {
        self.index.get(name)?.get(labels).copied()
    }

    fn slot(&self, id: SeriesId) -> Option<&Slot> {
        self.slots.get(id)?.as_ref()
    }

    /// Records the samples taken at `now`; forgets series not seen for longer than the lookback.
    /// `keep` decides for a series not kept yet (a kept series is recorded without asking, so
    /// when what `keep` says changes, drop what it no longer keeps with [`History::retain`]).
    pub fn ingest(&mut self, now: Millis, samples: &[Sample], keep: impl Fn(&Sample) -> bool) {
        for s in samples {
            if !s.value.is_finite() {
                continue;
            }
            let id = match self.id(&s.name, &s.labels) {
                Some(id) => id,
                None => {
                    if !keep(s) {
                        continue;
                    }
                    if self.count >= self.max_series {
                        self.refused += 1;
                        continue;
                    }
                    self.insert(s)
                }
            };
            self.record(id, now, s.value);
        }
        self.finish(now);
    }

    /// Appends a point at `now` (one per ingest: a second sample of the series is ignored).
    fn record(&mut self, id: SeriesId, now: Millis, v: f64) {
        let Some(Some(slot)) = self.slots.get_mut(id) else {
            return;
        };
        let ring = &mut slot.ring;
        if ring.fine.back().is_some_and(|p| p.t >= now) {
            return;
        }
        push(&mut ring.fine, now, v, FINE_POINTS);
        if ring
            .coarse
            .back()
            .is_none_or(|p| now - p.t >= self.coarse_step)
        {
            push(&mut ring.coarse, now, v, COARSE_POINTS + 1);
        }
    }

    /// Forgets the series not seen within the lookback; `now` is the latest ingest.
    fn finish(&mut self, now: Millis) {
        let horizon = now - self.keep_for.max(1);
        self.retain_slots(|s| s.ring.fine.back().is_some_and(|p| p.t >= horizon));
        self.last_ingest = Some(now);
    }

    fn insert(&mut self, s: &Sample) -> SeriesId {
        let name: Arc<str> = match self.index.get_key_value(s.name.as_str()) {
            Some((k, _)) => k.clone(),
            None => Arc::from(s.name.as_str()),
        };
        let labels = Arc::new(s.labels.clone());
        let slot = Slot {
            name: name.clone(),
            labels: labels.clone(),
            ring: Ring::default(),
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id] = Some(slot);
                id
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        self.index.entry(name).or_default().insert(labels, id);
        self.count += 1;
        self.generation += 1;
        id
    }

    /// Forgets the series for which `keep(name, labels)` says no (what `keep` says changed).
    pub fn retain(&mut self, keep: impl Fn(&str, &Labels) -> bool) {
        self.retain_slots(|s| keep(&s.name, &s.labels));
    }

    fn retain_slots(&mut self, keep: impl Fn(&Slot) -> bool) {
        for (id, entry) in self.slots.iter_mut().enumerate() {
            let Some(slot) = entry else { continue };
            if keep(slot) {
                continue;
            }
            if let Some(m) = self.index.get_mut(&*slot.name) {
                m.remove(&*slot.labels);
                if m.is_empty() {
                    self.index.remove(&*slot.name);
                }
            }
            *entry = None;
            self.free.push(id);
            self.count -= 1;
            self.generation += 1;
        }
    }

    /// The series of one name present at the latest ingest, with their current values.
    pub fn current<'a>(&'a self, name: &str) -> impl Iterator<Item = (&'a Labels, f64)> + 'a {
        self.ids_of(name)
            .filter_map(|(id, l)| self.current_of(id).map(|v| (l, v)))
    }

    /// Every kept series of one name.
    pub fn series_of<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a Labels> + 'a {
        self.ids_of(name).map(|(_, l)| l)
    }

    /// Every kept series of one name with its id.
    pub fn ids_of<'a>(&'a self, name: &str) -> impl Iterator<Item = (SeriesId, &'a Labels)> + 'a {
        self.index
            .get(name)
            .into_iter()
            .flat_map(|m| m.iter().map(|(l, id)| (*id, &**l)))
    }

    /// The labels of a kept series.
    pub fn labels(&self, id: SeriesId) -> Option<&Labels> {
        self.slot(id).map(|s| &*s.labels)
    }

    /// The value of a series at the latest ingest, if it was present then.
    pub fn current_of(&self, id: SeriesId) -> Option<f64> {
        let p = self.slot(id)?.ring.fine.back()?;
        (Some(p.t) == self.last_ingest).then_some(p.v)
    }

    /// `(increase, seconds covered)` of a counter over `(now - window, now]`, or `None` with
    /// fewer than two points in it.
    pub fn increase(
        &self,
        name: &str,
        labels: &Labels,
        now: Millis,
        window: Millis,
    ) -> Option<(f64, f64)> {
        self.increase_of(self.id(name, labels)?, now, window)
    }

    /// [`History::increase`] of a series by id.
    pub fn increase_of(&self, id: SeriesId, now: Millis, window: Millis) -> Option<(f64, f64)> {
        self.increase_hinted(id, now, window, &mut Hint::default())
    }

    /// [`History::increase_of`], looking first where `hint` says the window's ends were in the
    /// last series asked with it (pass the same hint for the series of one `(now, window)`).
    pub fn increase_hinted(
        &self,
        id: SeriesId,
        now: Millis,
        window: Millis,
        hint: &mut Hint,
    ) -> Option<(f64, f64)> {
        self.slot(id)?.ring.increase(now, window, hint)
    }

    /// The time of the first point kept for a series (when it was first seen, within the
    /// lookback).
    pub fn first_seen(&self, name: &str, labels: &Labels) -> Option<Millis> {
        self.first_seen_of(self.id(name, labels)?)
    }

    /// [`History::first_seen`] by id.
    pub fn first_seen_of(&self, id: SeriesId) -> Option<Millis> {
        let r = &self.slot(id)?.ring;
        let c = r.coarse.front().map(|p| p.t);
        let f = r.fine.front().map(|p| p.t);
        c.into_iter().chain(f).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(name: &str, labels: &[(&str, &str)], v: f64) -> Sample {
        Sample {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value: v,
        }
    }

    #[test]
    fn increase_handles_resets_and_partial_windows() {
        let mut h = History::new(10, 600_000);
        // t = 0, 10, 20, 30, 40 s; a reset between 20 and 30.
        for (i, v) in [0.0, 5.0, 9.0, 2.0, 6.0].into_iter().enumerate() {
            h.ingest(i as i64 * 10_000, &[s("c_total", &[], v)], |_| true);
        }
        let l = Labels::new();
        // (0, 40]: starting point t=0 -> 5 + 4 + 2 (reset) + 4 = 15 over 40 s.
        assert_eq!(
            h.increase("c_total", &l, 40_000, 40_000),
            Some((15.0, 40.0))
        );
        // (25, 40]: start at the point at or before 25 (t=20, 9): reset 2, then +4.
        assert_eq!(h.increase("c_total", &l, 40_000, 15_000), Some((6.0, 20.0)));
        // A window with one point only.
        assert_eq!(h.increase("c_total", &l, 40_000, 0), None);
        assert_eq!(h.current("c_total").count(), 1);
    }

    #[test]
    fn long_windows_read_the_coarse_ring_and_memory_is_capped() {
        let lookback = 3 * 86_400_000; // 3d -> coarse step 900 s
        let mut h = History::new(2, lookback);
        let step = 15_000;
        let n = 4 * 86_400_000 / step; // 4 days of 15 s evaluations, +1 per evaluation
        for i in 0..=n {
            let t = i * step;
            h.ingest(
                t,
                &[
                    s("c_total", &[("a", "1")], i as f64),
                    s("c_total", &[("a", "2")], 0.0),
                    s("c_total", &[("a", "3")], 0.0),
                ],
                |_| true,
            );
        }
        assert_eq!(h.len(), 2);
        assert_eq!(h.refused, n as u64 + 1);
        let l: Labels = vec![("a".into(), "1".into())];
        let now = n * step;
        // 1 per 15 s: a 3d window has 17280 increments; coarse resolution is 900 s (60 points).
        // The coarse ring spans the whole lookback, so the 3d increase is exact here.
        assert_eq!(
            h.increase("c_total", &l, now, lookback),
            Some((17_280.0, 259_200.0))
        );
        // A 6h window starts between coarse points: from the one at or before its start.
        let (inc, covered) = h
            .increase("c_total", &l, now, 6 * 3_600_000 + 450_000)
            .expect("6h");
        assert_eq!((inc, covered), (1_500.0, 22_500.0));
        // A 30 min window is inside the fine ring: exact.
        assert_eq!(
            h.increase("c_total", &l, now, 1_800_000),
            Some((120.0, 1800.0))
        );
        let id = h.id("c_total", &l).expect("kept");
        let ring = &h.slot(id).expect("slot").ring;
        assert!(ring.fine.len() <= FINE_POINTS && ring.coarse.len() <= COARSE_POINTS + 1);
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            /// A hint left by other series (ingested at other times, with gaps) never changes an
            /// increase.
            #[test]
            fn hints_never_change_increases(
                present in proptest::collection::vec(proptest::collection::vec(any::<bool>(), 4), 1..400),
                queries in proptest::collection::vec((0i64..400, 0i64..8_000_000), 1..20),
            ) {
                let mut h = History::new(10, 7_200_000);
                for (i, p) in present.iter().enumerate() {
                    let samples: Vec<Sample> = p
                        .iter()
                        .enumerate()
                        .filter(|(_, on)| **on)
                        .map(|(k, _)| s("c_total", &[("k", &k.to_string())], (i * k) as f64))
                        .collect();
                    h.ingest(i as Millis * 15_000, &samples, |_| true);
                }
                let ids: Vec<SeriesId> = h.ids_of("c_total").map(|(id, _)| id).collect();
                for (at, window) in queries {
                    let now = at * 15_000 + 7_000;
                    let mut hint = Hint::default();
                    for &id in ids.iter().chain(&ids) {
                        prop_assert_eq!(
                            h.increase_hinted(id, now, window, &mut hint),
                            h.increase_of(id, now, window)
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn refusals_are_counted_at_every_ingest() {
        let mut h = History::new(1, 600_000);
        let samples = [
            s("a_total", &[("x", "1")], 1.0),
            s("a_total", &[("x", "2")], 1.0),
        ];
        h.ingest(0, &samples, |_| true);
        h.ingest(15_000, &samples, |_| true);
        assert_eq!((h.len(), h.refused), (1, 2));
    }

    #[test]
    fn stale_series_are_forgotten() {
        let mut h = History::new(10, 60_000);
        h.ingest(0, &[s("g", &[("x", "1")], 1.0)], |_| true);
        h.ingest(30_000, &[s("g", &[("x", "2")], 1.0)], |_| true);
        assert_eq!(h.len(), 2);
        assert_eq!(h.current("g").count(), 1);
        h.ingest(90_000, &[s("g", &[("x", "2")], 1.0)], |_| true);
        assert_eq!(h.len(), 1);
    }
}

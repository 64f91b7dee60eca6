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

use std::collections::{HashMap, VecDeque};

use super::expo::{Labels, Sample};
use super::rules::Millis;

/// Points per series in the fine ring.
pub const FINE_POINTS: usize = 240;
/// Points per series in the coarse ring.
pub const COARSE_POINTS: usize = 288;

#[derive(Debug, Default, Clone)]
struct Ring {
    fine: VecDeque<(Millis, f64)>,
    coarse: VecDeque<(Millis, f64)>,
}

/// Past samples of the series rules read.
#[derive(Debug)]
pub struct History {
    max_series: usize,
    coarse_step: Millis,
    keep_for: Millis,
    series: HashMap<String, HashMap<Labels, Ring>>,
    count: usize,
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
            series: HashMap::new(),
            count: 0,
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

    /// Records the samples taken at `now` for which `keep` says yes; forgets series not seen for
    /// longer than the lookback.
    pub fn ingest(&mut self, now: Millis, samples: &[Sample], keep: impl Fn(&Sample) -> bool) {
        for s in samples {
            if !s.value.is_finite() || !keep(s) {
                continue;
            }
            let by_name = self.series.entry(s.name.clone()).or_default();
            let ring = match by_name.get_mut(&s.labels) {
                Some(r) => r,
                None if self.count < self.max_series => {
                    self.count += 1;
                    by_name.entry(s.labels.clone()).or_default()
                }
                None => {
                    self.refused += 1;
                    continue;
                }
            };
            if ring.fine.back().is_some_and(|(t, _)| *t >= now) {
                continue;
            }
            ring.fine.push_back((now, s.value));
            if ring.fine.len() > FINE_POINTS {
                ring.fine.pop_front();
            }
            if ring
                .coarse
                .back()
                .is_none_or(|(t, _)| now - *t >= self.coarse_step)
            {
                ring.coarse.push_back((now, s.value));
                if ring.coarse.len() > COARSE_POINTS + 1 {
                    ring.coarse.pop_front();
                }
            }
        }
        let horizon = now - self.keep_for.max(1);
        let mut removed = 0;
        for by_name in self.series.values_mut() {
            by_name.retain(|_, r| {
                let keep = r.fine.back().is_some_and(|(t, _)| *t >= horizon);
                if !keep {
                    removed += 1;
                }
                keep
            });
        }
        self.series.retain(|_, m| !m.is_empty());
        self.count -= removed;
        self.last_ingest = Some(now);
    }

    /// The series of one name present at the latest ingest, with their current values.
    pub fn current<'a>(&'a self, name: &str) -> impl Iterator<Item = (&'a Labels, f64)> + 'a {
        let last = self.last_ingest;
        self.series.get(name).into_iter().flat_map(move |m| {
            m.iter().filter_map(move |(l, r)| {
                let (t, v) = *r.fine.back()?;
                (Some(t) == last).then_some((l, v))
            })
        })
    }

    /// Every kept series of one name.
    pub fn series_of<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a Labels> + 'a {
        self.series.get(name).into_iter().flat_map(|m| m.keys())
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
        let ring = self.series.get(name)?.get(labels)?;
        let start = now - window;
        let fine_start = ring.fine.front().map_or(Millis::MAX, |(t, _)| *t);
        let mut points: Vec<(Millis, f64)> = Vec::new();
        if start < fine_start {
            // The coarse point at or before the start, then the coarse points up to the fine ring.
            let before = ring.coarse.iter().rev().find(|(t, _)| *t <= start).copied();
            points.extend(before);
            points.extend(
                ring.coarse
                    .iter()
                    .filter(|(t, _)| *t > start && *t < fine_start)
                    .copied(),
            );
        } else if let Some(p) = ring.fine.iter().rev().find(|(t, _)| *t <= start) {
            points.push(*p);
        }
        points.extend(
            ring.fine
                .iter()
                .filter(|(t, _)| *t > start && *t <= now)
                .copied(),
        );
        if points.len() < 2 {
            return None;
        }
        let mut inc = 0.0;
        for w in points.windows(2) {
            let d = w[1].1 - w[0].1;
            inc += if d >= 0.0 { d } else { w[1].1 };
        }
        let covered = (points[points.len() - 1].0 - points[0].0) as f64 / 1000.0;
        Some((inc, covered))
    }

    /// The time of the first point kept for a series (when it was first seen, within the
    /// lookback).
    pub fn first_seen(&self, name: &str, labels: &Labels) -> Option<Millis> {
        let r = self.series.get(name)?.get(labels)?;
        let c = r.coarse.front().map(|p| p.0);
        let f = r.fine.front().map(|p| p.0);
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
        let ring = &h.series["c_total"][&l];
        assert!(ring.fine.len() <= FINE_POINTS && ring.coarse.len() <= COARSE_POINTS + 1);
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

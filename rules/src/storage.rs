//! The series store the evaluator reads: a [`Storage`] trait over series (a label set with
//! `__name__`) and their samples `(timestamp ms, f64)`, and [`MemStorage`], a plain in-memory
//! implementation used by the promtool runner and by tests.
//!
//! A store lends its series to the evaluator ([`Storage::visit`]): the label set behind a shared
//! pointer and the samples as a slice, so reading a window copies nothing; the evaluator copies a
//! label set only when it builds a result whose labels differ.
//!
//! Staleness is carried as Prometheus carries it: a sample whose value is the special NaN
//! [`STALE_NAN`] marks the end of a series; [`is_stale`] tells it from an ordinary NaN.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use regex::Regex;

/// A label set, sorted by name; the metric name is the label `__name__`.
pub type Labels = BTreeMap<String, String>;

/// The label that holds the metric name.
pub const METRIC_NAME: &str = "__name__";

/// Prometheus's staleness marker: a NaN with a fixed bit pattern, distinct from an ordinary NaN.
pub const STALE_NAN: f64 = f64::from_bits(0x7ff0_0000_0000_0002);

/// Whether `v` is the staleness marker (and not an ordinary NaN).
pub fn is_stale(v: f64) -> bool {
    v.to_bits() == STALE_NAN.to_bits()
}

/// A hasher for maps keyed by label sets: foldhash over the names' and values' bytes only.
/// A label set hashes as its map length, then each string followed by a terminator byte;
/// leaving the length and terminators out halves the hasher's work for the same strings. Keys
/// are still compared in full, so this changes speed, not results.
#[derive(Debug, Clone, Default)]
pub struct LabelsHashBuilder(foldhash::fast::RandomState);

impl std::hash::BuildHasher for LabelsHashBuilder {
    type Hasher = LabelsHasher;

    fn build_hasher(&self) -> LabelsHasher {
        LabelsHasher(self.0.build_hasher())
    }
}

/// The hasher of [`LabelsHashBuilder`].
pub struct LabelsHasher(foldhash::fast::FoldHasher<'static>);

impl std::hash::Hasher for LabelsHasher {
    fn finish(&self) -> u64 {
        self.0.finish()
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }

    /// The terminator `str` hashing writes after the bytes.
    fn write_u8(&mut self, _: u8) {}

    /// The map's length prefix.
    fn write_usize(&mut self, _: usize) {}
}

/// One sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Milliseconds since the Unix epoch.
    pub t: i64,
    /// The value (may be [`STALE_NAN`]).
    pub v: f64,
}

/// A series with its samples in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub samples: Vec<Sample>,
}

/// How a matcher compares a label value.
#[derive(Debug, Clone)]
pub enum MatchOp {
    Equal,
    NotEqual,
    /// Fully anchored regular expression.
    Re(Regex),
    /// Fully anchored regular expression, negated.
    NotRe(Regex),
}

/// A label matcher: `name op value`. A missing label matches as the empty string, as in
/// Prometheus.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
}

impl Matcher {
    /// `name="value"`.
    pub fn equal(name: &str, value: &str) -> Self {
        Matcher {
            name: name.to_owned(),
            op: MatchOp::Equal,
            value: value.to_owned(),
        }
    }

    /// Whether a label value (empty when the label is absent) matches.
    pub fn matches(&self, value: &str) -> bool {
        match &self.op {
            MatchOp::Equal => self.value == value,
            MatchOp::NotEqual => self.value != value,
            MatchOp::Re(re) => re.is_match(value),
            MatchOp::NotRe(re) => !re.is_match(value),
        }
    }

    /// Whether a label set matches.
    pub fn matches_labels(&self, labels: &Labels) -> bool {
        self.matches(labels.get(&self.name).map_or("", String::as_str))
    }
}

/// What a store knows about the samples of a series it lends, so that the evaluator can skip
/// scanning a window for what is not in it. Each bound is a timestamp (ms); [`Facts::UNKNOWN`]
/// claims nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// No staleness marker of the series is newer than this.
    pub last_stale: i64,
    /// No sample lower than the non-stale sample before it (a counter reset, a falling gauge)
    /// is newer than this; staleness markers are left out of the sequence.
    pub last_decrease: i64,
}

impl Facts {
    /// Nothing known: the evaluator scans.
    pub const UNKNOWN: Facts = Facts {
        last_stale: i64::MAX,
        last_decrease: i64::MAX,
    };

    /// Whether `samples` (a time-ordered window of the series) may hold a staleness marker.
    pub fn may_have_stale(&self, samples: &[Sample]) -> bool {
        samples.first().is_some_and(|f| self.last_stale >= f.t)
    }

    /// Whether some non-stale sample of `samples` (a window of the series) may be lower than
    /// the non-stale sample before it in the window.
    pub fn may_decrease(&self, samples: &[Sample]) -> bool {
        samples.first().is_some_and(|f| self.last_decrease > f.t)
    }
}

/// What [`Storage::visit`] calls for each series: its labels, its samples in the range asked
/// for, and what the store knows about them.
pub type SeriesVisitor<'a> = dyn FnMut(&Arc<Labels>, &[Sample], Facts) + 'a;

/// What the evaluator needs from a store of series.
pub trait Storage {
    /// Calls `f` with every series matching all `matchers` that has a sample whose timestamp
    /// lies in `[mint, maxt]` (inclusive, milliseconds): its labels, those samples in time
    /// order (staleness markers included), and what the store knows about them. Each series
    /// is visited once; no two have the same labels.
    fn visit(&self, matchers: &[Matcher], mint: i64, maxt: i64, f: &mut SeriesVisitor<'_>);

    /// About how many series [`visit`](Storage::visit) would lend for `matchers` (an upper
    /// bound where the store knows one cheaply), so that the evaluator sizes its results once.
    fn size_hint(&self, _matchers: &[Matcher]) -> usize {
        0
    }

    /// The series [`visit`](Storage::visit) would lend, copied.
    fn select(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Vec<Series> {
        let mut out = Vec::new();
        self.visit(matchers, mint, maxt, &mut |labels, samples, _| {
            out.push(Series {
                labels: (**labels).clone(),
                samples: samples.to_vec(),
            });
        });
        out
    }
}

/// The samples of a time-ordered slice whose timestamps lie in `[mint, maxt]`.
pub fn samples_in(samples: &[Sample], mint: i64, maxt: i64) -> &[Sample] {
    // Windows usually end at or after the newest sample: no search for the end then.
    let hi = match samples.last() {
        Some(last) if last.t <= maxt => samples.len(),
        _ => samples.partition_point(|x| x.t <= maxt),
    };
    let lo = match samples.first() {
        Some(first) if first.t >= mint => 0,
        _ => {
            let within = &samples[..hi];
            // Series are mostly sampled at a fixed interval: the start is guessed from the last
            // one, and searched for only when the guess is not it.
            match regular_start(within, mint) {
                Some(g) => g,
                None => within.partition_point(|x| x.t < mint),
            }
        }
    };
    &samples[lo..hi.max(lo)]
}

/// Where the first sample at or after `mint` is in a time-ordered slice, if the slice's last
/// interval, repeated back from its end, points at it (checked); `None` otherwise.
fn regular_start(samples: &[Sample], mint: i64) -> Option<usize> {
    let [.., before, last] = samples else {
        return None;
    };
    let step = last.t.checked_sub(before.t).filter(|&s| s > 0)?;
    let back = usize::try_from(last.t.checked_sub(mint)?.checked_div(step)?).ok()?;
    let g = (samples.len() - 1).checked_sub(back)?;
    let at_or_after = samples[g].t >= mint;
    let first = g == 0 || samples[g - 1].t < mint;
    (at_or_after && first).then_some(g)
}

#[derive(Debug, Clone)]
struct MemSeries {
    labels: Arc<Labels>,
    samples: Vec<Sample>,
}

/// An in-memory store: the promtool runner's and the tests' storage.
#[derive(Debug, Default, Clone)]
pub struct MemStorage {
    series: Vec<MemSeries>,
    index: HashMap<Arc<Labels>, usize, LabelsHashBuilder>,
}

impl MemStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a sample, keeping the series in time order; a sample at a timestamp the series
    /// already has replaces it.
    pub fn append(&mut self, labels: &Labels, t: i64, v: f64) {
        let idx = match self.index.get(labels) {
            Some(&i) => i,
            None => {
                let shared = Arc::new(labels.clone());
                self.series.push(MemSeries {
                    labels: Arc::clone(&shared),
                    samples: Vec::new(),
                });
                self.index.insert(shared, self.series.len() - 1);
                self.series.len() - 1
            }
        };
        let samples = &mut self.series[idx].samples;
        match samples.last() {
            Some(last) if last.t < t => samples.push(Sample { t, v }),
            None => samples.push(Sample { t, v }),
            Some(_) => match samples.binary_search_by_key(&t, |s| s.t) {
                Ok(i) => samples[i].v = v,
                Err(i) => samples.insert(i, Sample { t, v }),
            },
        }
    }

    /// The samples of the series with exactly these labels, if it is held.
    pub fn series(&self, labels: &Labels) -> Option<&[Sample]> {
        self.index
            .get(labels)
            .map(|&i| self.series[i].samples.as_slice())
    }

    /// Number of series held.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

impl Storage for MemStorage {
    fn visit(&self, matchers: &[Matcher], mint: i64, maxt: i64, f: &mut SeriesVisitor<'_>) {
        for s in &self.series {
            if !matchers.iter().all(|m| m.matches_labels(&s.labels)) {
                continue;
            }
            let samples = samples_in(&s.samples, mint, maxt);
            if !samples.is_empty() {
                f(&s.labels, samples, Facts::UNKNOWN);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn append_keeps_order_and_select_filters_by_range_and_matchers() {
        let mut st = MemStorage::new();
        let a = labels(&[("__name__", "x"), ("job", "a")]);
        let b = labels(&[("__name__", "x"), ("job", "b")]);
        for (l, t, v) in [(&a, 20, 2.0), (&a, 10, 1.0), (&b, 10, 5.0), (&a, 20, 3.0)] {
            st.append(l, t, v);
        }
        let got = st.select(&[Matcher::equal("job", "a")], 0, 100);
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].samples,
            vec![Sample { t: 10, v: 1.0 }, Sample { t: 20, v: 3.0 }]
        );
        let got = st.select(&[Matcher::equal("__name__", "x")], 15, 20);
        assert_eq!(got.len(), 1, "b has no sample in [15, 20]");
        // A missing label matches the empty string.
        assert_eq!(st.select(&[Matcher::equal("nope", "")], 0, 100).len(), 2);
    }

    proptest::proptest! {
        /// samples_in takes exactly the samples within the bounds.
        #[test]
        fn samples_in_is_the_filter(
            steps in proptest::collection::vec(0i64..5, 0..40),
            mint in -5i64..120,
            len in -5i64..120,
        ) {
            let mut t = 0;
            let samples: Vec<Sample> = steps
                .iter()
                .map(|dt| {
                    t += dt + 1;
                    Sample { t, v: 0.0 }
                })
                .collect();
            check_samples_in(&samples, mint, mint + len)?;
        }
    }

    /// `samples_in` gives exactly the samples a filter on the bounds keeps.
    fn check_samples_in(
        samples: &[Sample],
        mint: i64,
        maxt: i64,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        let want: Vec<Sample> = samples
            .iter()
            .copied()
            .filter(|x| x.t >= mint && x.t <= maxt)
            .collect();
        proptest::prop_assert_eq!(samples_in(samples, mint, maxt), &want[..]);
        Ok(())
    }

    proptest::proptest! {
        /// samples_in takes exactly the samples within the bounds of a series sampled at a
        /// fixed interval with gaps (where the start is guessed).
        #[test]
        fn samples_in_is_the_filter_at_a_fixed_interval(
            step in 1i64..20,
            gaps in proptest::collection::vec(0i64..3, 0..40),
            mint in -50i64..900,
            len in 0i64..900,
        ) {
            let mut t = 0;
            let samples: Vec<Sample> = gaps
                .iter()
                .map(|g| {
                    t += step * if *g == 2 { 3 } else { 1 };
                    Sample { t, v: 0.0 }
                })
                .collect();
            check_samples_in(&samples, mint, mint + len)?;
        }
    }

    #[test]
    fn stale_marker_is_not_an_ordinary_nan() {
        assert!(is_stale(STALE_NAN));
        assert!(!is_stale(f64::NAN));
        assert!(STALE_NAN.is_nan());
    }
}

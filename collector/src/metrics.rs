//! The metric model shared by every source: point-in-time snapshots of metric families, the
//! label-cardinality cap, and the bridge that serves a snapshot through `prometheus-client`.
//!
//! Sources that sample state on an interval (host, processes) build a [`Snapshot`] at collection
//! time and publish it into a [`SnapshotCell`]; a scrape only encodes what is already in memory.

use std::borrow::Cow;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// The label value that absorbs label sets beyond a family's cap.
pub const OVERFLOW_VALUE: &str = "other";

/// Whether a family is a monotonic counter or a gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic; `name` is given without the `_total` suffix, which the encoder adds.
    Counter,
    /// A value that can go up and down.
    Gauge,
}

/// Label pairs of one sample, in a fixed order per family.
pub type Labels = Vec<(Cow<'static, str>, String)>;

/// One sample of a family.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Label pairs; names are usually static.
    pub labels: Labels,
    /// The value.
    pub value: f64,
}

/// One metric family at a point in time.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilySnapshot {
    /// Family name (counters without `_total`).
    pub name: &'static str,
    /// Help text.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: Kind,
    /// The samples.
    pub samples: Vec<Sample>,
}

impl FamilySnapshot {
    /// An empty family.
    pub fn new(name: &'static str, help: &'static str, kind: Kind) -> Self {
        Self {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    /// Adds one sample.
    pub fn push<const N: usize>(&mut self, labels: [(&'static str, String); N], value: f64) {
        let labels = labels
            .into_iter()
            .map(|(k, v)| (Cow::Borrowed(k), v))
            .collect();
        self.samples.push(Sample { labels, value });
    }
}

/// A set of families sampled together.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Families in the order they are encoded.
    pub families: Vec<FamilySnapshot>,
}

impl Snapshot {
    /// The family with this name, if present.
    pub fn family(&self, name: &str) -> Option<&FamilySnapshot> {
        self.families.iter().find(|f| f.name == name)
    }

    /// Number of samples over all families.
    pub fn series(&self) -> usize {
        self.families.iter().map(|f| f.samples.len()).sum()
    }

    /// Applies the label cap to every family: label sets beyond `caps`' limit are folded into one
    /// sample whose label values are all [`OVERFLOW_VALUE`], with values summed (counters, and
    /// gauges that are sizes or counts, stay meaningful as totals).
    pub fn enforce_caps(&mut self, caps: &LabelCaps) {
        for family in &mut self.families {
            if family.samples.len() <= 1 {
                continue;
            }
            let cap = caps.for_family(family.name);
            let keys: Vec<u64> = family
                .samples
                .iter()
                .map(|s| label_key(&s.labels))
                .collect();
            cap.retain(&keys);
            let mut kept = Vec::with_capacity(family.samples.len());
            let mut overflow: Option<Sample> = None;
            for (sample, key) in family.samples.drain(..).zip(keys) {
                if cap.admit(key) {
                    kept.push(sample);
                } else {
                    match &mut overflow {
                        Some(o) => o.value += sample.value,
                        None => {
                            let labels = sample
                                .labels
                                .iter()
                                .map(|(k, _)| (k.clone(), OVERFLOW_VALUE.to_owned()))
                                .collect();
                            overflow = Some(Sample {
                                labels,
                                value: sample.value,
                            });
                        }
                    }
                }
            }
            kept.extend(overflow);
            family.samples = kept;
        }
    }
}

/// Stable hash of a label set, used to remember admitted sets without keeping their strings.
pub fn label_key<K: AsRef<str>, V: AsRef<str>>(labels: &[(K, V)]) -> u64 {
    let mut h = DefaultHasher::new();
    for (k, v) in labels {
        k.as_ref().hash(&mut h);
        v.as_ref().hash(&mut h);
    }
    h.finish()
}

/// The latest snapshot of one source, shared between its collection loop and scrapes.
#[derive(Debug, Default)]
pub struct SnapshotCell(RwLock<Arc<Snapshot>>);

impl SnapshotCell {
    /// Replaces the published snapshot.
    pub fn publish(&self, snapshot: Snapshot) {
        *self.0.write() = Arc::new(snapshot);
    }

    /// The published snapshot (cheap: an `Arc` clone).
    pub fn load(&self) -> Arc<Snapshot> {
        self.0.read().clone()
    }
}

/// Serves a [`SnapshotCell`] through a `prometheus-client` registry.
#[derive(Debug, Clone)]
pub struct SnapshotCollector(pub Arc<SnapshotCell>);

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        if let Some(handed) = crate::model::walk_direct(&mut encoder, || Box::new(self.clone())) {
            return handed;
        }
        let snapshot = self.0.load();
        for family in &snapshot.families {
            if family.samples.is_empty() {
                continue;
            }
            let metric_type = match family.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
            };
            let mut metric =
                encoder.encode_descriptor(family.name, family.help, None, metric_type)?;
            if let [only] = family.samples.as_slice()
                && only.labels.is_empty()
            {
                encode_value(family.kind, only.value, metric)?;
                continue;
            }
            for sample in &family.samples {
                let labels: &[(Cow<'static, str>, String)] = &sample.labels;
                encode_value(family.kind, sample.value, metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The structured model's walk over the published snapshot: what [`Collector::encode`] writes,
/// its label sets borrowed.
impl crate::model::Source for SnapshotCollector {
    fn walk(&self, visit: &mut dyn crate::model::Visit) {
        use crate::model::{FamilyRef, Kind as ModelKind, LabelsRef, ValueRef};
        let snapshot = self.0.load();
        for family in &snapshot.families {
            if family.samples.is_empty() {
                continue;
            }
            visit.family(&FamilyRef {
                name: family.name,
                help: family.help,
                unit: "",
                kind: match family.kind {
                    Kind::Counter => ModelKind::Counter,
                    Kind::Gauge => ModelKind::Gauge,
                },
                // Each collection publishes a new snapshot, its series listed anew.
                series_generation: None,
            });
            if !visit.wants_series() {
                continue;
            }
            for sample in &family.samples {
                let value = match family.kind {
                    Kind::Counter => ValueRef::Counter {
                        total: sample.value,
                        exemplar: None,
                    },
                    Kind::Gauge => ValueRef::Gauge(sample.value),
                };
                visit.series(LabelsRef::Named(&sample.labels), value);
            }
        }
    }
}

fn encode_value(kind: Kind, value: f64, encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
    match kind {
        Kind::Counter => ConstCounter::new(value).encode(encoder),
        Kind::Gauge => ConstGauge::new(value).encode(encoder),
    }
}

/// A cap on the number of distinct label sets one family may expose.
///
/// Admitted sets are remembered (as hashes) until [`LabelCap::retain`] forgets those no longer
/// present, so churn frees room; a set that arrives when the family is full is folded by the
/// caller and counted once in `sidelight_label_sets_folded_total{family}`.
#[derive(Debug)]
pub struct LabelCap {
    max: usize,
    state: Mutex<CapState>,
    folded: Counter,
}

#[derive(Debug, Default)]
struct CapState {
    admitted: HashSet<u64>,
    folded_seen: HashSet<u64>,
}

impl LabelCap {
    /// Whether the label set with this key may be exposed as itself.
    pub fn admit(&self, key: u64) -> bool {
        let mut state = self.state.lock();
        if state.admitted.contains(&key) {
            return true;
        }
        if state.admitted.len() < self.max {
            state.admitted.insert(key);
            return true;
        }
        // Count each distinct folded set once; past a bound, count every fold (still bounded memory).
        if state.folded_seen.len() < self.max.saturating_mul(4).max(1024) {
            if state.folded_seen.insert(key) {
                self.folded.inc();
            }
        } else if !state.folded_seen.contains(&key) {
            self.folded.inc();
        }
        false
    }

    /// Forgets admitted sets that are not in `present` (for families rebuilt every cycle).
    pub fn retain(&self, present: &[u64]) {
        let present: HashSet<u64> = present.iter().copied().collect();
        let mut state = self.state.lock();
        state.admitted.retain(|k| present.contains(k));
        state.folded_seen.retain(|k| present.contains(k));
    }

    /// Folds `labels` into the overflow set if the family is full; returns the labels to use.
    pub fn fold<const N: usize>(
        &self,
        labels: [(&'static str, String); N],
    ) -> [(&'static str, String); N] {
        if self.admit(label_key(&labels)) {
            labels
        } else {
            labels.map(|(k, _)| (k, OVERFLOW_VALUE.to_owned()))
        }
    }
}

/// The caps of every family, with their shared self-metric.
#[derive(Debug)]
pub struct LabelCaps {
    max: RwLock<usize>,
    caps: Mutex<BTreeMap<&'static str, Arc<LabelCap>>>,
    folded: Family<[(&'static str, String); 1], Counter>,
}

impl LabelCaps {
    /// Caps of `max` label sets per family.
    pub fn new(max: usize) -> Self {
        Self {
            max: RwLock::new(max.max(1)),
            caps: Mutex::new(BTreeMap::new()),
            folded: Family::default(),
        }
    }

    /// The cap for one family, created on first use.
    pub fn for_family(&self, family: &'static str) -> Arc<LabelCap> {
        let mut caps = self.caps.lock();
        caps.entry(family)
            .or_insert_with(|| {
                Arc::new(LabelCap {
                    max: *self.max.read(),
                    state: Mutex::new(CapState::default()),
                    folded: self
                        .folded
                        .get_or_create_owned(&[("family", family.to_owned())]),
                })
            })
            .clone()
    }

    /// The cap for one family with its own limit (a family configured apart from
    /// `agent.max_label_sets`, such as span metrics' `max_label_sets`), created on first use;
    /// folds are counted in the same `sidelight_label_sets_folded_total{family}`.
    pub fn for_family_with_limit(&self, family: &'static str, max: usize) -> Arc<LabelCap> {
        let mut caps = self.caps.lock();
        caps.entry(family)
            .or_insert_with(|| {
                Arc::new(LabelCap {
                    max: max.max(1),
                    state: Mutex::new(CapState::default()),
                    folded: self
                        .folded
                        .get_or_create_owned(&[("family", family.to_owned())]),
                })
            })
            .clone()
    }

    /// Counts one label set of `family` folded into `other` by a family that keeps its own
    /// admission (received OTLP metrics, whose family names come from the senders).
    pub fn count_folded(&self, family: &str) {
        self.folded
            .get_or_create(&[("family", family.to_owned())])
            .inc();
    }

    /// The configured limit.
    pub fn limit(&self) -> usize {
        *self.max.read()
    }

    /// Registers `sidelight_label_sets_folded_total{family}` and the limit gauge.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sidelight_label_sets_folded",
            "Distinct label sets folded into the 'other' series because their family reached its cap",
            self.folded.clone(),
        );
        let limit = prometheus_client::metrics::gauge::Gauge::<i64>::default();
        limit.set(i64::try_from(self.limit()).unwrap_or(i64::MAX));
        registry.register(
            "sidelight_label_sets_limit",
            "Maximum distinct label sets per metric family",
            limit,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn family_with(n: usize) -> FamilySnapshot {
        let mut f = FamilySnapshot::new("test_bytes", "help", Kind::Gauge);
        for i in 0..n {
            f.push([("device", format!("d{i}"))], 1.0);
        }
        f
    }

    #[test]
    fn caps_fold_excess_into_other_and_count_once() {
        let caps = LabelCaps::new(3);
        let mut snap = Snapshot {
            families: vec![family_with(5)],
        };
        snap.enforce_caps(&caps);
        let fam = snap.family("test_bytes").expect("family");
        assert_eq!(fam.samples.len(), 4);
        let other = fam.samples.last().expect("other");
        assert_eq!(other.labels[0].1, OVERFLOW_VALUE);
        assert_eq!(other.value, 2.0);
        assert_eq!(caps.for_family("test_bytes").folded.get(), 2);
        // The same sets again are not counted again.
        let mut snap = Snapshot {
            families: vec![family_with(5)],
        };
        snap.enforce_caps(&caps);
        assert_eq!(caps.for_family("test_bytes").folded.get(), 2);
    }

    #[test]
    fn churn_frees_room() {
        let caps = LabelCaps::new(2);
        let mut snap = Snapshot {
            families: vec![family_with(2)],
        };
        snap.enforce_caps(&caps);
        let mut f = FamilySnapshot::new("test_bytes", "help", Kind::Gauge);
        f.push([("device", "x".to_owned())], 1.0);
        f.push([("device", "y".to_owned())], 1.0);
        let mut snap = Snapshot { families: vec![f] };
        snap.enforce_caps(&caps);
        let names: Vec<_> = snap.families[0]
            .samples
            .iter()
            .map(|s| s.labels[0].1.clone())
            .collect();
        assert_eq!(names, ["x", "y"]);
    }

    #[test]
    fn live_fold_keeps_label_names() {
        let caps = LabelCaps::new(1);
        let cap = caps.for_family("live");
        assert_eq!(cap.fold([("level", "info".to_owned())])[0].1, "info");
        assert_eq!(
            cap.fold([("level", "warn".to_owned())])[0].1,
            OVERFLOW_VALUE
        );
        assert_eq!(cap.fold([("level", "info".to_owned())])[0].1, "info");
    }

    #[test]
    fn snapshot_encodes_as_openmetrics() {
        let cell = Arc::new(SnapshotCell::default());
        let mut f = FamilySnapshot::new(
            "node_cpu_seconds",
            "Seconds the CPUs spent in each mode.",
            Kind::Counter,
        );
        f.push([("cpu", "0".to_owned()), ("mode", "idle".to_owned())], 12.5);
        let mut g = FamilySnapshot::new("node_load1", "1m load average.", Kind::Gauge);
        g.push([], 0.25);
        cell.publish(Snapshot {
            families: vec![f, g],
        });
        let mut registry = Registry::default();
        registry.register_collector(Box::new(SnapshotCollector(cell)));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encode");
        assert!(out.contains("# TYPE node_cpu_seconds counter\n"), "{out}");
        assert!(
            out.contains("node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"} 12.5\n"),
            "{out}"
        );
        assert!(out.contains("\nnode_load1 0.25\n"), "{out}");
    }
}

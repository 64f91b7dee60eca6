//! The samples rules read: the agent's registry as a structured snapshot
//! (`sidelight_collector::model`), flattened to the series a scrape of `/metrics` stores, with
//! labels sorted. What an alert sees is exactly what a scrape sees; no text is parsed.

use std::fmt;

use sidelight_collector::model::Snapshot;

/// A sorted list of label pairs.
pub type Labels = Vec<(String, String)>;

/// One sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Series name as a scrape stores it (counters end in `_total`, histograms in `_bucket` etc.).
    pub name: String,
    /// Labels sorted by name.
    pub labels: Labels,
    /// The value.
    pub value: f64,
}

/// Every sample of `snapshot`, labels sorted.
pub fn samples(snapshot: &Snapshot) -> Vec<Sample> {
    snapshot
        .samples()
        .map(|s| {
            let mut labels = s.labels.into_owned();
            labels.sort();
            Sample {
                name: s.name.into_owned(),
                labels,
                value: s.value,
            }
        })
        .collect()
}

/// `name{a="b",c="d"}` — how series are shown in messages and keys.
pub struct SeriesDisplay<'a>(pub &'a str, pub &'a [(String, String)]);

impl fmt::Display for SeriesDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)?;
        if self.1.is_empty() {
            return Ok(());
        }
        f.write_str("{")?;
        for (i, (k, v)) in self.1.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(
                f,
                "{k}=\"{}\"",
                v.replace('\\', "\\\\").replace('"', "\\\"")
            )?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn samples_of_the_real_registry() {
        use prometheus_client::metrics::counter::Counter;
        use prometheus_client::metrics::family::Family;
        use prometheus_client::metrics::histogram::Histogram;
        let mut reg = prometheus_client::registry::Registry::default();
        let fam: Family<Vec<(String, String)>, Counter> = Family::default();
        fam.get_or_create(&vec![
            ("source".into(), "app \"x\"".into()),
            ("level".into(), "error".into()),
        ])
        .inc_by(3);
        reg.register("sidelight_log_records", "Records", fam);
        let h = Histogram::new([0.1, 1.0]);
        h.observe(0.5);
        reg.register("lat_seconds", "Latency", h);
        let snap = sidelight_collector::model::snapshot(&reg).expect("snapshot");
        let s = samples(&snap);
        let rec = s
            .iter()
            .find(|s| s.name == "sidelight_log_records_total")
            .expect("counter");
        assert_eq!(
            rec.labels,
            l(&[("level", "error"), ("source", "app \"x\"")]),
            "sorted, raw values"
        );
        assert_eq!(rec.value, 3.0);
        let b: Vec<(String, f64)> = s
            .iter()
            .filter(|s| s.name == "lat_seconds_bucket")
            .map(|s| (s.labels[0].1.clone(), s.value))
            .collect();
        assert_eq!(
            b,
            [
                ("0.1".to_owned(), 0.0),
                ("1.0".to_owned(), 1.0),
                ("+Inf".to_owned(), 1.0)
            ]
        );
        assert_eq!(
            s.iter()
                .filter(|s| s.name.starts_with("lat_seconds_"))
                .count(),
            5
        );
    }

    #[test]
    fn series_display_escapes_values() {
        assert_eq!(
            SeriesDisplay("up", &l(&[("a", "x\"y\\z")])).to_string(),
            "up{a=\"x\\\"y\\\\z\"}"
        );
        assert_eq!(SeriesDisplay("up", &[]).to_string(), "up");
    }
}

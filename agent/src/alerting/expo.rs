//! A small parser for the text the agent's own `prometheus-client` registry encodes
//! (OpenMetrics 1.0 text, or the Prometheus 0.0.4 text `/metrics` serves): sample lines only,
//! metadata and exemplars skipped. Rules evaluate over these samples, so what an alert sees is
//! exactly what a scrape sees.

use std::fmt;

/// A sorted list of label pairs.
pub type Labels = Vec<(String, String)>;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Series name as written (counters end in `_total`, histograms in `_bucket` etc.).
    pub name: String,
    /// Labels sorted by name.
    pub labels: Labels,
    /// The value.
    pub value: f64,
}

/// A line that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// Why.
    pub reason: String,
}

/// Parses every sample line. Comment lines (`# HELP`, `# TYPE`, `# UNIT`, `# EOF`) and blank
/// lines are skipped; a trailing timestamp and an exemplar (` # {...} v`) are ignored.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    // One parser for the agent's own exposition: the exporter's (it also feeds the agent's own
    // OTLP metrics and remote write), flattened to samples with sorted labels.
    let families =
        sidelight_collector::export::openmetrics::parse(text).map_err(|e| ParseError {
            line: e.line,
            reason: e.reason,
        })?;
    Ok(families
        .into_iter()
        .flat_map(|f| f.samples)
        .map(|s| {
            let mut labels = s.labels;
            labels.sort();
            Sample {
                name: s.name,
                labels,
                value: s.value,
            }
        })
        .collect())
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
    fn parses_the_shapes_the_registry_writes() {
        let text = "# HELP x Requests.\n# TYPE x counter\nx_total{b=\"2\",a=\"1\"} 17 # {trace_id=\"ab\"} 1.0 1.5\n\
                    y 0.25\nz_bucket{le=\"+Inf\"} 3\nw{s=\"a \\\"quoted\\\" \\\\ \\n,}\"} -Inf 1700000000\nn NaN\n# EOF\n";
        let s = parse(text).expect("parses");
        assert_eq!(s.len(), 5);
        assert_eq!(s[0].name, "x_total");
        assert_eq!(s[0].labels, l(&[("a", "1"), ("b", "2")]));
        assert_eq!(s[0].value, 17.0);
        assert_eq!(s[1].value, 0.25);
        assert_eq!(s[2].labels, l(&[("le", "+Inf")]));
        assert_eq!(s[3].labels, l(&[("s", "a \"quoted\" \\ \n,}")]));
        assert_eq!(s[3].value, f64::NEG_INFINITY);
        assert!(s[4].value.is_nan());
    }

    #[test]
    fn rejects_broken_lines_with_their_number() {
        for bad in [
            "x{a=\"1\" 1",
            "x{a=1} 1",
            "x{a=\"1\"}",
            "x one",
            "{a=\"1\"} 1",
            "x{=\"1\"} 1",
        ] {
            let e = parse(&format!("ok 1\n{bad}\n")).expect_err(bad);
            assert_eq!(e.line, 2, "{bad}");
        }
    }

    #[test]
    fn round_trips_the_real_registry() {
        use prometheus_client::metrics::counter::Counter;
        use prometheus_client::metrics::family::Family;
        use prometheus_client::metrics::histogram::Histogram;
        let mut reg = prometheus_client::registry::Registry::default();
        let fam: Family<Vec<(String, String)>, Counter> = Family::default();
        fam.get_or_create(&vec![("source".into(), "app \"x\"".into())])
            .inc_by(3);
        reg.register("sidelight_log_records", "Records", fam);
        let h = Histogram::new([0.1, 1.0]);
        h.observe(0.5);
        reg.register("lat_seconds", "Latency", h);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).expect("encode");
        let s = parse(&text).expect("parse");
        let rec = s
            .iter()
            .find(|s| s.name == "sidelight_log_records_total")
            .expect("counter");
        assert_eq!(rec.labels, l(&[("source", "app \"x\"")]));
        assert_eq!(rec.value, 3.0);
        let b: Vec<f64> = s
            .iter()
            .filter(|s| s.name == "lat_seconds_bucket")
            .map(|s| s.value)
            .collect();
        assert_eq!(b, [0.0, 1.0, 1.0]);
        let http = crate::http::to_prometheus_text(&text);
        assert_eq!(parse(&http).expect("0.0.4 text"), s);
    }
}

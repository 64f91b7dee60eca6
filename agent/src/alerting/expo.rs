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

/// The sample lines of an exposition, borrowed from the text: what the history's one-pass
/// ingest ([`super::history::History::ingest_text`]) reads, so that a line whose series it has
/// seen before costs a lookup of its key and the parse of its value, and builds nothing.
///
/// The lines visited, the order, and the errors (with their line numbers) are those of
/// [`parse`]: `# EOF` ends the text, a `# ` line needs a keyword and a name, other `#` lines and
/// blank lines are skipped.
pub fn lines(text: &str) -> Lines<'_> {
    Lines {
        lines: text.lines().enumerate(),
        done: false,
    }
}

/// See [`lines`].
#[derive(Debug)]
pub struct Lines<'a> {
    lines: std::iter::Enumerate<std::str::Lines<'a>>,
    done: bool,
}

impl<'a> Iterator for Lines<'a> {
    type Item = Result<Line<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        for (i, text) in self.lines.by_ref() {
            if text.is_empty() {
                continue;
            }
            if let Some(rest) = text.strip_prefix("# ") {
                if rest == "EOF" {
                    break;
                }
                let mut parts = rest.splitn(3, ' ');
                if parts.next().is_none() || parts.next().is_none() {
                    self.done = true;
                    return Some(Err(ParseError {
                        line: i + 1,
                        reason: "short metadata line".into(),
                    }));
                }
                continue;
            }
            if text.starts_with('#') {
                continue;
            }
            return Some(Ok(Line { line: i + 1, text }));
        }
        self.done = true;
        None
    }
}

/// One sample line, not parsed yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line<'a> {
    /// 1-based line number.
    pub line: usize,
    text: &'a str,
}

impl<'a> Line<'a> {
    fn err(&self, reason: impl Into<String>) -> ParseError {
        ParseError {
            line: self.line,
            reason: reason.into(),
        }
    }

    /// The whole line.
    pub fn text(&self) -> &'a str {
        self.text
    }

    /// The series as written, `name` or `name{labels}` up to the closing brace, found by
    /// scanning quotes and escapes only (labels not checked, nothing built); `None` when the
    /// line does not have that shape (then [`Line::sample`] says what is wrong). The registry
    /// writes a series the same way at every encoding, so this is a key for "seen before":
    /// a line that begins with a key [`Line::sample`] accepted parses to the same series.
    pub fn key(&self) -> Option<&'a str> {
        let b = self.text.as_bytes();
        let name_end = b.iter().position(|&c| c == b'{' || c == b' ')?;
        if b[name_end] == b' ' {
            return Some(&self.text[..name_end]);
        }
        let (mut quoted, mut i) = (false, name_end + 1);
        while let Some(&c) = b.get(i) {
            match c {
                b'\\' if quoted => i += 1,
                b'"' => quoted = !quoted,
                b'}' if !quoted => return Some(&self.text[..=i]),
                _ => {}
            }
            i += 1;
        }
        None
    }

    /// The value after the first `key_len` bytes (a key from [`Line::key`] or
    /// [`Line::sample`]); a timestamp and an exemplar after it are ignored.
    pub fn value(&self, key_len: usize) -> Result<f64, ParseError> {
        let rest = self.text.get(key_len..).unwrap_or("").trim_start();
        let v = rest.split(' ').next().unwrap_or("");
        parse_value(v).ok_or_else(|| self.err(format!("bad value {v:?}")))
    }

    /// The whole sample, labels sorted, as [`parse`] gives it, and the length of its key.
    pub fn sample(&self) -> Result<(Sample, usize), ParseError> {
        let line = self.text;
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| self.err("a sample needs a value"))?;
        let name = &line[..name_end];
        if name.is_empty() {
            return Err(self.err("empty metric name"));
        }
        let mut labels = Vec::new();
        let mut key_len = name_end;
        if let Some(body) = line[name_end..].strip_prefix('{') {
            let end = parse_labels(body, &mut labels).map_err(|r| self.err(r))?;
            key_len = name_end + 1 + end;
        }
        let value = self.value(key_len)?;
        labels.sort();
        Ok((
            Sample {
                name: name.to_owned(),
                labels,
                value,
            },
            key_len,
        ))
    }
}

/// The label pairs of `body` (the text after `{`), in the order written; returns the length
/// of the label set up to and including `}`. The same grammar as the exporter's parser.
fn parse_labels(body: &str, labels: &mut Labels) -> Result<usize, String> {
    let mut chars = body.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| *c == ',' || *c == ' ').is_some() {}
        let Some(&(start, c)) = chars.peek() else {
            return Err("unterminated label set".into());
        };
        if c == '}' {
            return Ok(start + 1);
        }
        let eq = body[start..].find('=').ok_or("label without =")? + start;
        let key = body[start..eq].trim().to_owned();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("bad label name {key:?}"));
        }
        if body.as_bytes().get(eq + 1) != Some(&b'"') {
            return Err(format!("label {key} needs a quoted value"));
        }
        while chars.next_if(|(i, _)| *i <= eq + 1).is_some() {}
        let mut value = String::new();
        let mut closed = false;
        while let Some((_, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, o)) => value.push(o),
                    None => break,
                },
                '"' => {
                    closed = true;
                    break;
                }
                o => value.push(o),
            }
        }
        if !closed {
            return Err(format!("label {key}: unterminated value"));
        }
        labels.push((key, value));
    }
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
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

    /// [`parse`] through [`lines`] and [`Line::sample`], checking that every line's quick key
    /// is the key of its sample.
    fn parse_by_lines(text: &str) -> Result<Vec<Sample>, ParseError> {
        let mut out = Vec::new();
        for line in lines(text) {
            let line = line?;
            let (sample, key_len) = line.sample()?;
            assert_eq!(
                line.key(),
                Some(&line.text()[..key_len]),
                "{:?}",
                line.text()
            );
            assert_eq!(line.value(key_len)?.to_bits(), sample.value.to_bits());
            out.push(sample);
        }
        Ok(out)
    }

    /// Samples compared with NaN equal to itself.
    fn same(a: &[Sample], b: &[Sample]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| {
                x.name == y.name && x.labels == y.labels && x.value.to_bits() == y.value.to_bits()
            })
    }

    #[test]
    fn lines_parse_like_parse() {
        let text = "# HELP x Requests.\n# TYPE x counter\nx_total{b=\"2\",a=\"1\"} 17 # {trace_id=\"ab\"} 1.0 1.5\n\
                    y 0.25\nz_bucket{le=\"+Inf\"} 3\nw{s=\"a \\\"quoted\\\" \\\\ \\n,}\"} -Inf 1700000000\n\
                    n NaN\nsp{ a=\"1\" , b=\"}\"}2\n#comment\n\n# EOF\nafter 1\n";
        let want = parse(text).expect("parses");
        assert_eq!(want.len(), 6);
        assert!(same(&parse_by_lines(text).expect("lines"), &want));
        for bad in [
            "x{a=\"1\" 1",
            "x{a=1} 1",
            "x{a=\"1\"}",
            "x one",
            "{a=\"1\"} 1",
            "x{=\"1\"} 1",
            "x",
            "# HELP",
            "x{a=\"1\\\"} 1",
            "x {a=\"1\"} 1",
        ] {
            let text = format!("ok 1\n{bad}\nlater 2\n");
            assert_eq!(
                parse_by_lines(&text),
                Err(parse(&text).expect_err(bad)),
                "{bad}"
            );
        }
    }

    #[test]
    fn keys_are_found_without_parsing_labels() {
        for (line, key) in [
            ("x 1", Some("x")),
            ("x_total{a=\"1\"} 1 # {t=\"}\"} 1", Some("x_total{a=\"1\"}")),
            ("x{a=\"}\\\" }\"} 1", Some("x{a=\"}\\\" }\"}")),
            ("x{a=\"1\" 1", None),
            ("x", None),
        ] {
            let l = lines(line).next().expect("a line").expect("sample line");
            assert_eq!(l.key(), key, "{line}");
        }
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        fn escape(v: &str) -> String {
            v.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            /// What the registry writes: label values with every character that matters to the
            /// grammar, labels in any order, exemplars and timestamps.
            #[test]
            fn lines_agree_with_parse_on_encoded_text(
                series in proptest::collection::vec(
                    (
                        "[a-c]{1,3}(_total|_bucket)?",
                        proptest::collection::btree_map("[a-d_]{1,3}", "[a-c{}=,\" \\\\\n#é]{0,6}", 0..4),
                        prop_oneof![Just(f64::NAN), Just(f64::INFINITY), any::<f64>(), (0u32..1000).prop_map(f64::from)],
                        0u8..4,
                        any::<bool>(),
                    ),
                    0..12,
                ),
            ) {
                let mut text = String::from("# HELP a x\n# TYPE a counter\n");
                for (name, labels, value, extra, rev) in &series {
                    let mut pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
                    if *rev {
                        pairs.reverse();
                    }
                    text.push_str(name);
                    if !pairs.is_empty() {
                        text.push('{');
                        text.push_str(&pairs.join(","));
                        text.push('}');
                    }
                    let v = match *value {
                        v if v.is_nan() => "NaN".to_owned(),
                        f64::INFINITY => "+Inf".to_owned(),
                        f64::NEG_INFINITY => "-Inf".to_owned(),
                        v => v.to_string(),
                    };
                    text.push(' ');
                    text.push_str(&v);
                    match extra {
                        1 => text.push_str(" 1700000000"),
                        2 => text.push_str(" # {trace_id=\"a}b\"} 1.0 1.5"),
                        3 => text.push_str("\n# some comment"),
                        _ => {}
                    }
                    text.push('\n');
                }
                text.push_str("# EOF\n");
                let want = parse(&text).expect("parses");
                prop_assert_eq!(want.len(), series.len());
                prop_assert!(same(&parse_by_lines(&text).expect("lines"), &want));
            }

            /// Any text: the same samples or the same error (line and reason).
            #[test]
            fn lines_agree_with_parse_on_any_text(text in "([a-c_]{0,3}[{}=,\" \\\\#0-9.a-fIn+-]{0,12}\n?){0,8}") {
                match (parse(&text), parse_by_lines(&text)) {
                    (Ok(a), Ok(b)) => prop_assert!(same(&a, &b), "{:?} vs {:?}", a, b),
                    (a, b) => prop_assert_eq!(a.err(), b.err()),
                }
            }
        }
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

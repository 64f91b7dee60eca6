//! A small parser for the OpenMetrics text that `prometheus-client` encodes, so that what
//! `/metrics` serves can be re-sent as OTLP metrics and remote-write series (prometheus-client
//! 0.25 has no public iterator over values). It reads `# TYPE`, `# UNIT`, `# HELP`, samples
//! with escaped label values, optional timestamps and exemplars (ignored), and `# EOF`.

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `counter` (samples `_total`, `_created`).
    Counter,
    /// `gauge`.
    Gauge,
    /// `histogram` (samples `_bucket{le}`, `_sum`, `_count`, `_created`).
    Histogram,
    /// `gaugehistogram`, `summary`, `info`, `stateset`, `unknown`: forwarded sample by sample.
    Other,
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's name (`foo_total`, `foo_bucket`).
    pub name: String,
    /// Label pairs in the order written.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

/// One family.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// The family name (without `_total` for counters).
    pub name: String,
    /// Its type.
    pub kind: Kind,
    /// `# HELP` text.
    pub help: String,
    /// `# UNIT`, if given.
    pub unit: String,
    /// Its samples in order.
    pub samples: Vec<Sample>,
}

/// A line that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// Parses an OpenMetrics exposition.
pub fn parse(text: &str) -> Result<Vec<Family>, ParseError> {
    let mut families: Vec<Family> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let err = |reason: &str| ParseError {
            line: i + 1,
            reason: reason.to_owned(),
        };
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            if rest == "EOF" {
                break;
            }
            let mut parts = rest.splitn(3, ' ');
            let (Some(keyword), Some(name)) = (parts.next(), parts.next()) else {
                return Err(err("short metadata line"));
            };
            let arg = parts.next().unwrap_or("");
            let fam = match families.last_mut() {
                Some(f) if f.name == name => f,
                _ => {
                    families.push(Family {
                        name: name.to_owned(),
                        kind: Kind::Other,
                        help: String::new(),
                        unit: String::new(),
                        samples: Vec::new(),
                    });
                    families.last_mut().ok_or_else(|| err("no family"))?
                }
            };
            match keyword {
                "TYPE" => {
                    fam.kind = match arg {
                        "counter" => Kind::Counter,
                        "gauge" => Kind::Gauge,
                        "histogram" => Kind::Histogram,
                        _ => Kind::Other,
                    }
                }
                "HELP" => fam.help = unescape(arg),
                "UNIT" => fam.unit = arg.to_owned(),
                _ => {}
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let sample = parse_sample(line).map_err(|r| err(&r))?;
        match families.last_mut() {
            Some(f) if sample.name.starts_with(f.name.as_str()) => f.samples.push(sample),
            _ => families.push(Family {
                name: sample.name.clone(),
                kind: Kind::Other,
                help: String::new(),
                unit: String::new(),
                samples: vec![sample],
            }),
        }
    }
    Ok(families)
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("a sample needs a value")?;
    let name = &line[..name_end];
    if name.is_empty() {
        return Err("empty metric name".into());
    }
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let end;
        loop {
            // Skip separators.
            while let Some((_, c)) = chars.peek() {
                if *c == ',' || *c == ' ' {
                    chars.next();
                } else {
                    break;
                }
            }
            let Some(&(start, c)) = chars.peek() else {
                return Err("unterminated label set".into());
            };
            if c == '}' {
                end = start + 1;
                break;
            }
            let eq = body[start..].find('=').ok_or("label without =")? + start;
            let key = body[start..eq].trim().to_owned();
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("bad label name {key:?}"));
            }
            if body.as_bytes().get(eq + 1) != Some(&b'"') {
                return Err(format!("label {key} needs a quoted value"));
            }
            while let Some((i, _)) = chars.peek() {
                if *i > eq + 1 {
                    break;
                }
                chars.next();
            }
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
        rest = &body[end..];
    }
    let rest = rest.trim_start();
    // The value, then an optional timestamp, then an optional exemplar after " # ".
    let value_str = rest.split(' ').next().ok_or("missing value")?;
    let value = parse_value(value_str).ok_or_else(|| format!("bad value {value_str:?}"))?;
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// Encodes a registry into OpenMetrics text and parses it.
pub fn snapshot(
    registry: &prometheus_client::registry::Registry,
) -> Result<Vec<Family>, ParseError> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).map_err(|e| ParseError {
        line: 0,
        reason: format!("encoding the registry: {e}"),
    })?;
    parse(&text)
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family as PFamily;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::registry::{Registry, Unit};

    use super::*;

    #[test]
    fn parses_what_prometheus_client_encodes() {
        let mut r = Registry::default();
        let c: PFamily<[(&str, &str); 2], Counter> = PFamily::default();
        c.get_or_create(&[("path", "/a\"b\\c\nd"), ("code", "200")])
            .inc_by(3);
        r.register("requests", "Requests \"served\"", c);
        let g = Gauge::<i64>::default();
        g.set(-7);
        r.register_with_unit("temperature", "A gauge", Unit::Celsius, g);
        let h = Histogram::new([0.5, 1.0]);
        h.observe(0.2);
        h.observe(0.7);
        h.observe(9.0);
        r.register("latency_seconds", "H", h);
        let fams = snapshot(&r).expect("parse");
        assert_eq!(fams.len(), 3, "{fams:#?}");
        let req = &fams[0];
        assert_eq!((req.name.as_str(), req.kind), ("requests", Kind::Counter));
        assert_eq!(
            req.help, "Requests \"served\".",
            "prometheus-client appends a full stop"
        );
        assert_eq!(req.samples.len(), 1);
        let s = &req.samples[0];
        assert_eq!(s.name, "requests_total");
        assert_eq!(
            s.labels,
            vec![
                ("path".to_owned(), "/a\"b\\c\nd".to_owned()),
                ("code".to_owned(), "200".to_owned())
            ]
        );
        assert_eq!(s.value, 3.0);
        let t = &fams[1];
        assert_eq!(
            (t.name.as_str(), t.kind, t.unit.as_str()),
            ("temperature_celsius", Kind::Gauge, "celsius")
        );
        assert_eq!(t.samples[0].value, -7.0);
        let h = &fams[2];
        assert_eq!(h.kind, Kind::Histogram);
        let names: Vec<(&str, f64)> = h
            .samples
            .iter()
            .map(|s| (s.name.as_str(), s.value))
            .collect();
        assert_eq!(
            names,
            [
                ("latency_seconds_sum", 9.9),
                ("latency_seconds_count", 3.0),
                ("latency_seconds_bucket", 1.0),
                ("latency_seconds_bucket", 2.0),
                ("latency_seconds_bucket", 3.0),
            ]
        );
        assert_eq!(h.samples[4].labels, vec![("le".into(), "+Inf".into())]);
    }

    #[test]
    fn table_of_lines() {
        type Case<'a> = (&'a str, Result<(&'a str, usize, f64), ()>);
        let cases: &[Case] = &[
            ("up 1", Ok(("up", 0, 1.0))),
            ("up{} 1", Ok(("up", 0, 1.0))),
            ("a{x=\"1\",y=\"2\"} 2.5 1700000000", Ok(("a", 2, 2.5))),
            (
                "a{x=\"1\"} 1 # {trace_id=\"abc\"} 0.5 123",
                Ok(("a", 1, 1.0)),
            ),
            ("a{x=\"}\"} +Inf", Ok(("a", 1, f64::INFINITY))),
            ("a{x=\"1\"} NaN", Ok(("a", 1, f64::NAN))),
            ("a{x=1} 1", Err(())),
            ("a{x=\"1\" 1", Err(())),
            ("a{x=\"1\"} one", Err(())),
            ("a", Err(())),
        ];
        for (line, want) in cases {
            let got = parse_sample(line);
            match (got, want) {
                (Ok(s), Ok((name, labels, value))) => {
                    assert_eq!(s.name, *name, "{line}");
                    assert_eq!(s.labels.len(), *labels, "{line}");
                    assert!(
                        s.value == *value || (s.value.is_nan() && value.is_nan()),
                        "{line}"
                    );
                }
                (Err(_), Err(())) => {}
                (got, want) => panic!("{line}: got {got:?}, want {want:?}"),
            }
        }
        let e = parse("# TYPE a gauge\na{x=\"1\" 1\n").expect_err("bad");
        assert_eq!(e.line, 2);
        let fams = parse("# TYPE a gauge\na 1\n# EOF\nignored 2\n").expect("ok");
        assert_eq!(fams.len(), 1);
    }
}

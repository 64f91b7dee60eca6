//! Runs Prometheus's own PromQL test scripts (`promql/testdata/*.test` of the Prometheus
//! version promtool runs here, 2.42) through this crate's evaluator, as a second oracle beside the
//! promtool differential test. The scripts are not part of this repository: point
//! `SIDELIGHT_PROMQL_TESTDATA` at a checkout's `promql/testdata` and run
//! `cargo test -p sidelight-rules --test promqltest -- --ignored --nocapture`.
//!
//! The script language read here: `load <step>` with series lines in promtool's expanding
//! notation, `clear`, `eval instant at <time> <expr>` / `eval_ordered ...` with expected samples
//! (or a scalar), and `eval_fail instant at ...`. Values compare with the scripts' relative
//! tolerance (1e-6) and NaN equals NaN, as Prometheus's test runner does. Expressions the
//! evaluator refuses at load time (subqueries, `@`, functions outside its list) are counted as
//! unsupported, not as failures: a refusal is the documented behaviour, a different answer is not.

use std::collections::BTreeMap;
use std::path::PathBuf;

use sidelight_rules::promtool::{SeqValue, expand_values};
use sidelight_rules::{Labels, MemStorage, Query, Value, parse_duration, parse_series_labels};

fn almost_equal(a: f64, b: f64) -> bool {
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || diff < f64::MIN_POSITIVE {
        return diff < 1e-6 * f64::MIN_POSITIVE;
    }
    diff / (a.abs() + b.abs()) < 1e-6
}

/// Splits a series line into the series and its values: the series ends at the closing brace
/// of its label set, or at the first blank when it has none.
fn split_series(line: &str) -> Option<(&str, &str)> {
    let line = line.trim();
    let end = match line.find('{') {
        Some(open) if !line[..open].contains(char::is_whitespace) => {
            let mut in_quote = false;
            let mut escaped = false;
            let mut end = None;
            for (i, c) in line.char_indices().skip(open) {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => in_quote = !in_quote,
                    '}' if !in_quote => {
                        end = Some(i + 1);
                        break;
                    }
                    _ => {}
                }
            }
            end?
        }
        _ => line.find(char::is_whitespace).unwrap_or(line.len()),
    };
    Some((&line[..end], line[end..].trim()))
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" | "nan" => Some(f64::NAN),
        "Inf" | "+Inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

#[derive(Default)]
struct Tally {
    passed: usize,
    unsupported: Vec<String>,
    failed: Vec<String>,
}

fn run_script(name: &str, text: &str, tally: &mut Tally) {
    let lines: Vec<&str> = text.lines().collect();
    let mut storage = MemStorage::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        i += 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line == "clear" {
            storage = MemStorage::new();
            continue;
        }
        let mut body = Vec::new();
        while i < lines.len() && lines[i].starts_with([' ', '\t']) && !lines[i].trim().is_empty() {
            if !lines[i].trim().starts_with('#') {
                body.push(lines[i].trim());
            }
            i += 1;
        }
        if let Some(step) = line.strip_prefix("load ") {
            let Ok(step) = parse_duration(step.trim()) else {
                tally.failed.push(format!("{name}: bad load step {line:?}"));
                continue;
            };
            for b in &body {
                let Some((series, values)) = split_series(b) else {
                    continue;
                };
                let (Ok(labels), Ok(values)) = (parse_series_labels(series), expand_values(values))
                else {
                    tally.unsupported.push(format!("{name}: load line {b:?}"));
                    continue;
                };
                for (k, v) in values.into_iter().enumerate() {
                    if let SeqValue::Value(v) = v {
                        storage.append(&labels, k as i64 * step, v);
                    }
                }
            }
            continue;
        }
        let (kind, rest) = match line.split_once(" instant at ") {
            Some((k, r)) if ["eval", "eval_ordered", "eval_fail"].contains(&k) => (k, r),
            _ => {
                tally.unsupported.push(format!("{name}: command {line:?}"));
                continue;
            }
        };
        let (at, expr) = rest.split_once(' ').unwrap_or((rest, ""));
        let Ok(at) = parse_duration(at) else {
            tally.failed.push(format!("{name}: bad time in {line:?}"));
            continue;
        };
        let query = match Query::parse(expr) {
            Ok(q) => q,
            Err(e) => {
                if kind != "eval_fail" {
                    tally.unsupported.push(format!("{name}: {expr}: {e}"));
                } else {
                    tally.passed += 1;
                }
                continue;
            }
        };
        let got = query.eval(&storage, at);
        if kind == "eval_fail" {
            match got {
                Err(_) => tally.passed += 1,
                Ok(v) => tally.failed.push(format!(
                    "{name}: {expr} at {at}ms: expected an error, got {v:?}"
                )),
            }
            continue;
        }
        let got = match got {
            Ok(v) => v,
            Err(e) => {
                tally
                    .failed
                    .push(format!("{name}: {expr} at {at}ms: error {e}"));
                continue;
            }
        };
        let problem = compare(&body, got, kind == "eval_ordered");
        match problem {
            None => tally.passed += 1,
            Some(p) => tally.failed.push(format!("{name}: {expr} at {at}ms: {p}")),
        }
    }
}

fn compare(expected: &[&str], got: Value, ordered: bool) -> Option<String> {
    let samples = match got {
        Value::Scalar(v) => {
            let want = expected.first().and_then(|s| parse_value(s));
            return match want {
                Some(w) if almost_equal(w, v) && expected.len() == 1 => None,
                _ => Some(format!("expected {expected:?}, got scalar {v}")),
            };
        }
        Value::String(s) => {
            return (expected.len() == 1 && expected[0].trim_matches('"') == s)
                .then_some(())
                .map_or_else(
                    || Some(format!("expected {expected:?}, got string {s:?}")),
                    |_| None,
                );
        }
        Value::Vector(v) => v,
    };
    let mut want: Vec<(Labels, f64)> = Vec::new();
    for e in expected {
        let Some((series, value)) = split_series(e) else {
            return Some(format!("bad expected line {e:?}"));
        };
        let labels = if series == "{}" {
            Labels::new()
        } else {
            match parse_series_labels(series) {
                Ok(l) => l,
                Err(err) => return Some(format!("bad expected line {e:?}: {err}")),
            }
        };
        // Some scripts give a series of values; an instant query's answer is the first.
        let first = value.split_whitespace().next().unwrap_or_default();
        let Some(v) = parse_value(first) else {
            return Some(format!("bad expected value in {e:?}"));
        };
        want.push((labels, v));
    }
    let got: Vec<(Labels, f64)> = samples.into_iter().map(|s| (s.labels, s.v)).collect();
    let show = |v: &[(Labels, f64)]| {
        v.iter()
            .map(|(l, x)| format!("{} {x}", sidelight_rules::format_labels(l)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if want.len() != got.len() {
        return Some(format!("expected [{}], got [{}]", show(&want), show(&got)));
    }
    if ordered {
        for (w, g) in want.iter().zip(&got) {
            if w.0 != g.0 || !almost_equal(w.1, g.1) {
                return Some(format!("expected [{}], got [{}]", show(&want), show(&got)));
            }
        }
        return None;
    }
    let by_labels: BTreeMap<&Labels, f64> = got.iter().map(|(l, v)| (l, *v)).collect();
    for (l, v) in &want {
        match by_labels.get(l) {
            Some(g) if almost_equal(*v, *g) => {}
            _ => return Some(format!("expected [{}], got [{}]", show(&want), show(&got))),
        }
    }
    None
}

#[test]
#[ignore = "needs SIDELIGHT_PROMQL_TESTDATA: a Prometheus 2.42 checkout's promql/testdata"]
fn prometheus_promql_test_scripts() {
    let Some(dir) = std::env::var_os("SIDELIGHT_PROMQL_TESTDATA").map(PathBuf::from) else {
        panic!("set SIDELIGHT_PROMQL_TESTDATA to a Prometheus 2.42 promql/testdata directory");
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "test"))
        .collect();
    files.sort();
    let mut tally = Tally::default();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        run_script(&name, &text, &mut tally);
    }
    println!(
        "{} passed, {} unsupported (refused at load), {} failed",
        tally.passed,
        tally.unsupported.len(),
        tally.failed.len()
    );
    for u in &tally.unsupported {
        println!("unsupported: {u}");
    }
    assert!(tally.failed.is_empty(), "{}", tally.failed.join("\n"));
}

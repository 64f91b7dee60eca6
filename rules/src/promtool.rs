//! promtool's rule unit tests (`promtool test rules`), run by `sidelight test rules`: the same
//! test-file format (`rule_files`, `evaluation_interval`, `group_eval_order`, `tests[]` with
//! `interval`, `input_series` in promtool's expanding notation, `alert_rule_test`,
//! `promql_expr_test`, `external_labels`, `external_url`, `name`), the same evaluation schedule
//! (every group at every `evaluation_interval` step from 0 to the largest `eval_time`), the same
//! output and failure report, and the same exit codes (0 all passed, 1 otherwise).
//!
//! Semantics follow promtool 2.x (the version the project tests against): input samples are
//! loaded up to each evaluation time; an alert test at `eval_time` sees the state after the last
//! evaluation at or before it, and only firing alerts; expected values compare exactly.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml_ng::Value as Yaml;

use crate::eval::Query;
use crate::file::{self, Group, Rule};
use crate::gofmt::fmt_upper_e;
use crate::group::{AlertState, EvalContext, GroupState, evaluate_group};
use crate::storage::{Labels, MemStorage, STALE_NAN};
use crate::{format_duration, format_labels, parse_duration, parse_series_labels};

/// promtool's exit code when every test passed.
pub const SUCCESS: i32 = 0;
/// promtool's exit code when a test failed or a file could not be used.
pub const FAILURE: i32 = 1;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default)]
    rule_files: Vec<String>,
    #[serde(default)]
    evaluation_interval: Option<Yaml>,
    #[serde(default)]
    group_eval_order: Vec<String>,
    #[serde(default)]
    tests: Vec<TestGroup>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestGroup {
    #[serde(default)]
    interval: Option<Yaml>,
    #[serde(default)]
    input_series: Vec<InputSeries>,
    #[serde(default)]
    alert_rule_test: Vec<AlertTest>,
    #[serde(default)]
    promql_expr_test: Vec<PromqlTest>,
    #[serde(default)]
    external_labels: BTreeMap<String, Yaml>,
    #[serde(default)]
    external_url: String,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputSeries {
    series: String,
    #[serde(default)]
    values: Option<Yaml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertTest {
    #[serde(default)]
    eval_time: Option<Yaml>,
    #[serde(default)]
    alertname: String,
    #[serde(default)]
    exp_alerts: Vec<ExpAlert>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpAlert {
    #[serde(default)]
    exp_labels: BTreeMap<String, Yaml>,
    #[serde(default)]
    exp_annotations: BTreeMap<String, Yaml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromqlTest {
    expr: String,
    #[serde(default)]
    eval_time: Option<Yaml>,
    #[serde(default)]
    exp_samples: Vec<ExpSample>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpSample {
    #[serde(default)]
    labels: String,
    value: f64,
}

fn scalar(v: &Yaml) -> String {
    match v {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

fn duration(v: &Option<Yaml>) -> Result<i64, String> {
    match v {
        None | Some(Yaml::Null) => Ok(0),
        Some(v) => parse_duration(&scalar(v)),
    }
}

fn string_map(m: &BTreeMap<String, Yaml>) -> BTreeMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), scalar(v))).collect()
}

/// One value of an expanded series: a number, a staleness marker, or nothing (`_`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SeqValue {
    Value(f64),
    Omitted,
}

fn parse_number(s: &str) -> Result<f64, String> {
    let bad = || format!("invalid value {s:?} in series values");
    let (sign, body) = match s.strip_prefix('-') {
        Some(b) => (-1.0, b),
        None => (1.0, s.strip_prefix('+').unwrap_or(s)),
    };
    if body.starts_with(['+', '-']) {
        return Err(bad());
    }
    match body.to_ascii_lowercase().as_str() {
        "inf" => return Ok(sign * f64::INFINITY),
        "nan" => return Ok(f64::NAN),
        "stale" if sign > 0.0 => return Ok(STALE_NAN),
        _ => {}
    }
    if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        return i64::from_str_radix(hex, 16)
            .map(|v| sign * v as f64)
            .map_err(|_| bad());
    }
    body.parse::<f64>().map(|v| sign * v).map_err(|_| bad())
}

/// Expands promtool's series notation: `1 2 3`, `a+bxn` (n+1 values a, a+b, ...), `a-bxn`,
/// `axn` (n+1 times a), `_` (no sample), `_xn` (n missing samples), `stale`.
pub fn expand_values(text: &str) -> Result<Vec<SeqValue>, String> {
    let mut out = Vec::new();
    for tok in text.split_whitespace() {
        let Some((head, times)) = tok.rsplit_once('x').filter(|(h, t)| {
            !h.is_empty() && !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())
        }) else {
            if tok == "_" {
                out.push(SeqValue::Omitted);
            } else {
                out.push(SeqValue::Value(parse_number(tok)?));
            }
            continue;
        };
        let n: u64 = times
            .parse()
            .map_err(|_| format!("invalid repetition in {tok:?}"))?;
        if head == "_" {
            out.extend((0..n).map(|_| SeqValue::Omitted));
            continue;
        }
        // Split "a+b" / "a-b" at the sign that is not the value's own or an exponent's.
        let bytes = head.as_bytes();
        let split = (1..bytes.len()).find(|&i| {
            (bytes[i] == b'+' || bytes[i] == b'-') && !matches!(bytes[i - 1], b'e' | b'E')
        });
        let (mut value, delta) = match split {
            Some(i) => (parse_number(&head[..i])?, parse_number(&head[i..])?),
            None => (parse_number(head)?, 0.0),
        };
        for _ in 0..=n {
            out.push(SeqValue::Value(value));
            value += delta;
        }
    }
    Ok(out)
}

/// Runs promtool's unit tests in `files`, printing as promtool prints; returns the exit code.
pub fn run(files: &[PathBuf], out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let mut failed = false;
    for f in files {
        let _ = writeln!(out, "Unit Testing:  {}", f.display());
        let errs = test_file(f, err);
        if errs.is_empty() {
            let _ = writeln!(out, "  SUCCESS");
        } else {
            let _ = writeln!(err, "  FAILED:");
            for e in errs {
                let _ = writeln!(err, "{e}");
                let _ = writeln!(out);
            }
            failed = true;
        }
        let _ = writeln!(out);
    }
    if failed { FAILURE } else { SUCCESS }
}

fn glob_files(base: &Path, pattern: &str, warn: &mut dyn Write) -> Result<Vec<PathBuf>, String> {
    let p = Path::new(pattern);
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    let name = full
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !name.contains(['*', '?', '[']) {
        if full.exists() {
            return Ok(vec![full]);
        }
        let _ = writeln!(warn, "  WARNING: no file match pattern {}", full.display());
        return Ok(Vec::new());
    }
    let mut re = String::from("^");
    for c in name.chars() {
        match c {
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push('$');
    let re = regex::Regex::new(&re).map_err(|e| format!("bad pattern {pattern:?}: {e}"))?;
    let dir = full.parent().unwrap_or(base);
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .filter(|e| re.is_match(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    found.sort();
    if found.is_empty() {
        let _ = writeln!(warn, "  WARNING: no file match pattern {}", full.display());
    }
    Ok(found)
}

fn test_file(path: &Path, warn: &mut dyn Write) -> Vec<String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return vec![format!("open {}: {e}", path.display())],
    };
    let de = serde_yaml_ng::Deserializer::from_str(&text);
    let tf: TestFile = match serde_path_to_error::deserialize(de) {
        Ok(t) => t,
        Err(e) => return vec![format!("{}: {e}", path.display())],
    };
    let eval_interval = match duration(&tf.evaluation_interval) {
        Ok(0) => 60_000,
        Ok(d) => d,
        Err(e) => return vec![format!("evaluation_interval: {e}")],
    };
    let mut order = BTreeMap::new();
    for (i, g) in tf.group_eval_order.iter().enumerate() {
        if order.insert(g.clone(), i).is_some() {
            return vec![format!("group name repeated in evaluation order: {g}")];
        }
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let mut rule_files = Vec::new();
    for rf in &tf.rule_files {
        match glob_files(base, rf, warn) {
            Ok(f) => rule_files.extend(f),
            Err(e) => return vec![e],
        }
    }
    let mut groups: Vec<Group> = Vec::new();
    let mut errs = Vec::new();
    for rf in &rule_files {
        match file::load_file(rf) {
            Ok(f) => groups.extend(f.groups),
            Err(es) => errs.extend(es.into_iter().map(|e| e.to_string())),
        }
    }
    if !errs.is_empty() {
        return errs;
    }
    // Listed groups in the listed order; the others as if listed first, in file order.
    groups.sort_by_key(|g| order.get(&g.name).copied().unwrap_or(0));
    let mut errs = Vec::new();
    for tg in &tf.tests {
        errs.extend(test_group(tg, eval_interval, &groups));
    }
    errs
}

type AlertList = Vec<(Labels, BTreeMap<String, String>)>;

fn alerts_string(la: &AlertList) -> String {
    if la.is_empty() {
        return "[]".into();
    }
    let one = |(l, a): &(Labels, BTreeMap<String, String>)| {
        indent(
            &format!(
                "\nLabels:{}\nAnnotations:{}",
                format_labels(l),
                format_labels(a)
            ),
            "  ",
        )
    };
    let mut s = format!("[\n0:{}", one(&la[0]));
    for (i, x) in la.iter().enumerate().skip(1) {
        s.push_str(&format!(",\n{i}:{}", one(x)));
    }
    s.push_str("\n]");
    s
}

fn indent(lines: &str, prefix: &str) -> String {
    let mut out = String::new();
    for (i, l) in lines.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
            out.push_str(prefix);
        }
        out.push_str(l);
    }
    out
}

fn samples_string(s: &[(Labels, f64)]) -> String {
    if s.is_empty() {
        return "nil".into();
    }
    s.iter()
        .map(|(l, v)| format!("{} {}", format_labels(l), fmt_upper_e(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn same_samples(a: &[(Labels, f64)], b: &[(Labels, f64)]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.0 == y.0 && x.1 == y.1)
}

fn test_group(tg: &TestGroup, eval_interval: i64, groups: &[Group]) -> Vec<String> {
    let interval = match duration(&tg.interval) {
        Ok(d) => d,
        Err(e) => return vec![format!("interval: {e}")],
    };
    // Input samples in time order, loaded as evaluation reaches them.
    let mut input: Vec<(i64, Labels, f64)> = Vec::new();
    for s in &tg.input_series {
        let labels = match parse_series_labels(&s.series) {
            Ok(l) => l,
            Err(e) => return vec![format!("input_series: {e}")],
        };
        let values = s.values.as_ref().map(scalar).unwrap_or_default();
        let vals = match expand_values(&values) {
            Ok(v) => v,
            Err(e) => return vec![format!("input_series {}: {e}", s.series)],
        };
        for (i, v) in vals.into_iter().enumerate() {
            if let SeqValue::Value(v) = v {
                input.push((i as i64 * interval, labels.clone(), v));
            }
        }
    }
    input.sort_by_key(|x| x.0);
    let external_labels: Labels = string_map(&tg.external_labels);
    let ctx = EvalContext {
        external_labels: &external_labels,
        external_url: &tg.external_url,
    };
    let name_prefix = if tg.name.is_empty() {
        String::new()
    } else {
        format!("    name: {},\n", tg.name)
    };

    let mut alert_tests: BTreeMap<i64, Vec<&AlertTest>> = BTreeMap::new();
    let mut max_t = 0;
    for at in &tg.alert_rule_test {
        let t = match duration(&at.eval_time) {
            Ok(t) => t,
            Err(e) => return vec![format!("eval_time: {e}")],
        };
        if at.alertname.is_empty() {
            let in_group = if tg.name.is_empty() {
                String::new()
            } else {
                format!(" (in TestGroup {})", tg.name)
            };
            return vec![format!(
                "an item under alert_rule_test misses required attribute alertname at eval_time {}{in_group}",
                format_duration(t)
            )];
        }
        alert_tests.entry(t).or_default().push(at);
        max_t = max_t.max(t);
    }
    let mut promql_tests = Vec::new();
    for pt in &tg.promql_expr_test {
        let t = match duration(&pt.eval_time) {
            Ok(t) => t,
            Err(e) => return vec![format!("eval_time: {e}")],
        };
        promql_tests.push((t, pt));
        max_t = max_t.max(t);
    }
    let alert_times: Vec<i64> = alert_tests.keys().copied().collect();

    let mut storage = MemStorage::new();
    let mut states: Vec<GroupState> = groups.iter().map(|_| GroupState::new()).collect();
    let mut next_input = 0;
    let mut curr = 0;
    let mut errs = Vec::new();
    let mut ts = 0;
    while ts <= max_t {
        while next_input < input.len() && input[next_input].0 <= ts {
            let (t, l, v) = &input[next_input];
            storage.append(l, *t, *v);
            next_input += 1;
        }
        let mut eval_errs = Vec::new();
        for (g, st) in groups.iter().zip(states.iter_mut()) {
            let out = evaluate_group(g, ts, &storage, st, &ctx);
            for (l, v) in out.samples {
                storage.append(&l, ts, v);
            }
            for (rule, e) in out.errors {
                eval_errs.push(format!(
                    "    rule: {rule}, time: {}, err: {e}",
                    format_duration(ts)
                ));
            }
        }
        if !eval_errs.is_empty() {
            errs.extend(eval_errs);
            return errs;
        }
        while curr < alert_times.len()
            && ts <= alert_times[curr]
            && alert_times[curr] < ts + eval_interval
        {
            let t = alert_times[curr];
            for at in &alert_tests[&t] {
                let mut got: AlertList = Vec::new();
                for (g, st) in groups.iter().zip(states.iter()) {
                    for (i, r) in g.rules.iter().enumerate() {
                        if let Rule::Alerting(a) = r
                            && a.alert == at.alertname
                        {
                            for al in st.alerts(i) {
                                if al.state == AlertState::Firing {
                                    got.push((Labels::clone(&al.labels), al.annotations.clone()));
                                }
                            }
                        }
                    }
                }
                let mut exp: AlertList = at
                    .exp_alerts
                    .iter()
                    .map(|e| {
                        let mut l = string_map(&e.exp_labels);
                        l.insert("alertname".into(), at.alertname.clone());
                        (l, string_map(&e.exp_annotations))
                    })
                    .collect();
                got.sort();
                exp.sort();
                if got != exp {
                    let pad = "            ";
                    errs.push(format!(
                        "{name_prefix}    alertname: {}, time: {}, \n        exp:{}, \n        got:{}",
                        at.alertname,
                        format_duration(t),
                        indent(&alerts_string(&exp), pad),
                        indent(&alerts_string(&got), pad)
                    ));
                }
            }
            curr += 1;
        }
        ts += eval_interval;
    }

    'tests: for (t, pt) in promql_tests {
        let got = Query::parse(&pt.expr)
            .map_err(|e| e.to_string())
            .and_then(|q| q.eval_vector(&storage, t).map_err(|e| e.to_string()));
        let got = match got {
            Ok(v) => v,
            Err(e) => {
                errs.push(format!(
                    "    expr: {}, time: {}, err: {e}",
                    crate::gofmt::quote(&pt.expr),
                    format_duration(t)
                ));
                continue;
            }
        };
        let mut got: Vec<(Labels, f64)> = got.into_iter().map(|s| (s.labels, s.v)).collect();
        let mut exp = Vec::new();
        for s in &pt.exp_samples {
            let l = if s.labels.trim().is_empty() || s.labels.trim() == "{}" {
                Ok(Labels::new())
            } else {
                parse_series_labels(&s.labels)
            };
            match l {
                Ok(l) => exp.push((l, s.value)),
                Err(e) => {
                    errs.push(format!(
                        "    expr: {}, time: {}, err: labels {}: {e}",
                        crate::gofmt::quote(&pt.expr),
                        format_duration(t),
                        crate::gofmt::quote(&s.labels)
                    ));
                    continue 'tests;
                }
            }
        }
        exp.sort_by(|a, b| a.0.cmp(&b.0));
        got.sort_by(|a, b| a.0.cmp(&b.0));
        if !same_samples(&exp, &got) {
            errs.push(format!(
                "    expr: {}, time: {},\n        exp: {}\n        got: {}",
                crate::gofmt::quote(&pt.expr),
                format_duration(t),
                samples_string(&exp),
                samples_string(&got)
            ));
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(text: &str) -> Vec<String> {
        expand_values(text)
            .expect(text)
            .into_iter()
            .map(|v| match v {
                SeqValue::Omitted => "_".to_owned(),
                SeqValue::Value(v) if crate::storage::is_stale(v) => "stale".to_owned(),
                SeqValue::Value(v) => format!("{v}"),
            })
            .collect()
    }

    #[test]
    fn series_notation_expands_as_promtool() {
        let cases: &[(&str, &[&str])] = &[
            ("1 2 3", &["1", "2", "3"]),
            ("0+10x3", &["0", "10", "20", "30"]),
            ("10-2x2", &["10", "8", "6"]),
            ("-1+1x2", &["-1", "0", "1"]),
            ("5x2", &["5", "5", "5"]),
            ("1 _ stale", &["1", "_", "stale"]),
            ("_x3 1", &["_", "_", "_", "1"]),
            ("1e3+1e3x1", &["1000", "2000"]),
            ("Inf -Inf", &["inf", "-inf"]),
            ("", &[]),
        ];
        for (text, want) in cases {
            assert_eq!(vals(text), *want, "{text}");
        }
        for bad in ["a", "1+x3", "1x", "--1"] {
            assert!(expand_values(bad).is_err(), "{bad}");
        }
    }
}

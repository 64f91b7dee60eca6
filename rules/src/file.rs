//! Rule files in Prometheus's format, read as Prometheus reads them: `groups` of `name`,
//! `interval`, `limit` and `rules`; alerting rules (`alert`, `expr`, `for`, `keep_firing_for`,
//! `labels`, `annotations`) and recording rules (`record`, `expr`, `labels`). Unknown keys are
//! errors with their path; every expression is parsed and checked against what the evaluator
//! implements, every template is parsed, and all errors of a file are reported together.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::Deserialize;
use serde_yaml_ng::Value as Yaml;

use crate::eval::Query;
use crate::storage::Labels;
use crate::{parse_duration, template};

/// A loaded rule file.
#[derive(Debug, Clone)]
pub struct RuleFile {
    pub groups: Vec<Group>,
}

/// A rule group.
#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    /// The file it came from (as named by the caller).
    pub file: String,
    /// `interval` in ms, when the group sets one.
    pub interval_ms: Option<i64>,
    /// `limit`: 0 means none.
    pub limit: usize,
    pub rules: Vec<Rule>,
}

/// A rule.
#[derive(Debug, Clone)]
pub enum Rule {
    Recording(RecordingRule),
    Alerting(AlertingRule),
}

impl Rule {
    /// The record or alert name.
    pub fn name(&self) -> &str {
        match self {
            Rule::Recording(r) => &r.record,
            Rule::Alerting(a) => &a.alert,
        }
    }

    pub fn query(&self) -> &Query {
        match self {
            Rule::Recording(r) => &r.expr,
            Rule::Alerting(a) => &a.expr,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RecordingRule {
    pub record: String,
    pub expr: Query,
    pub labels: Labels,
}

#[derive(Debug, Clone)]
pub struct AlertingRule {
    pub alert: String,
    pub expr: Query,
    pub for_ms: i64,
    pub keep_firing_for_ms: i64,
    /// Label templates.
    pub labels: Labels,
    /// Annotation templates.
    pub annotations: BTreeMap<String, String>,
}

/// One problem in a rule file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {path}: {message}")]
pub struct LoadError {
    pub file: String,
    /// YAML path, e.g. `groups[0].rules[2].expr`.
    pub path: String,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    groups: Vec<RawGroup>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    #[serde(default)]
    name: String,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    limit: Option<u64>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    record: Option<Yaml>,
    #[serde(default)]
    alert: Option<Yaml>,
    #[serde(default)]
    expr: Option<Yaml>,
    #[serde(default, rename = "for")]
    for_: Option<String>,
    #[serde(default)]
    keep_firing_for: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, Yaml>>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, Yaml>>,
}

/// A YAML scalar as the string Go's yaml decoder gives a string field.
fn scalar(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        Yaml::Null => Some(String::new()),
        _ => None,
    }
}

fn valid_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn valid_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Reads and checks one rule file.
pub fn load_file(path: &Path) -> Result<RuleFile, Vec<LoadError>> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![LoadError {
            file: file.clone(),
            path: String::new(),
            message: e.to_string(),
        }]
    })?;
    parse(&file, &text)
}

/// Parses and checks rule-file text; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<RuleFile, Vec<LoadError>> {
    let error = |path: String, message: String| LoadError {
        file: file.to_owned(),
        path,
        message,
    };
    if text.trim().is_empty() {
        return Ok(RuleFile { groups: Vec::new() });
    }
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let raw: RawFile = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        vec![error(path, e.into_inner().to_string())]
    })?;
    let mut errors = Vec::new();
    let mut groups = Vec::new();
    let mut names = HashSet::new();
    for (gi, g) in raw.groups.into_iter().enumerate() {
        let gpath = format!("groups[{gi}]");
        if g.name.is_empty() {
            errors.push(error(
                format!("{gpath}.name"),
                "Groupname must not be empty".into(),
            ));
        } else if !names.insert(g.name.clone()) {
            errors.push(error(
                format!("{gpath}.name"),
                format!("groupname: {:?} is repeated in the same file", g.name),
            ));
        }
        let interval_ms = match g.interval.as_deref().map(parse_duration) {
            None => None,
            Some(Ok(ms)) => Some(ms),
            Some(Err(e)) => {
                errors.push(error(format!("{gpath}.interval"), e));
                None
            }
        };
        let mut rules = Vec::new();
        for (ri, r) in g.rules.into_iter().enumerate() {
            let rpath = format!("{gpath}.rules[{ri}]");
            match rule(r, &rpath) {
                Ok(r) => rules.push(r),
                Err(es) => errors.extend(es.into_iter().map(|(p, m)| error(p, m))),
            }
        }
        groups.push(Group {
            name: g.name,
            file: file.to_owned(),
            interval_ms,
            limit: usize::try_from(g.limit.unwrap_or(0)).unwrap_or(usize::MAX),
            rules,
        });
    }
    if errors.is_empty() {
        Ok(RuleFile { groups })
    } else {
        Err(errors)
    }
}

fn rule(r: RawRule, rpath: &str) -> Result<Rule, Vec<(String, String)>> {
    let mut errs: Vec<(String, String)> = Vec::new();
    let text = |key: &str, v: &Option<Yaml>, errs: &mut Vec<(String, String)>| -> String {
        match v.as_ref().map(scalar) {
            None => String::new(),
            Some(Some(s)) => s,
            Some(None) => {
                errs.push((format!("{rpath}.{key}"), "must be a string".into()));
                String::new()
            }
        }
    };
    let record = text("record", &r.record, &mut errs);
    let alert = text("alert", &r.alert, &mut errs);
    let expr = text("expr", &r.expr, &mut errs);
    if !record.is_empty() && !alert.is_empty() {
        errs.push((
            rpath.to_owned(),
            "only one of 'record' and 'alert' must be set".into(),
        ));
    }
    if record.is_empty() && alert.is_empty() {
        errs.push((
            rpath.to_owned(),
            "one of 'record' or 'alert' must be set".into(),
        ));
    }
    let query = if expr.trim().is_empty() {
        errs.push((
            format!("{rpath}.expr"),
            "field 'expr' must be set in rule".into(),
        ));
        None
    } else {
        match Query::parse(&expr) {
            Ok(q) => Some(q),
            Err(e) => {
                errs.push((format!("{rpath}.expr"), e.to_string()));
                None
            }
        }
    };
    let strings =
        |key: &str, m: Option<BTreeMap<String, Yaml>>, errs: &mut Vec<(String, String)>| {
            let mut out = BTreeMap::new();
            for (k, v) in m.unwrap_or_default() {
                if !valid_label_name(&k) {
                    errs.push((
                        format!("{rpath}.{key}.{k}"),
                        format!("invalid {} name: {k}", &key[..key.len() - 1]),
                    ));
                }
                match scalar(&v) {
                    Some(s) => {
                        out.insert(k, s);
                    }
                    None => errs.push((format!("{rpath}.{key}.{k}"), "must be a string".into())),
                }
            }
            out
        };
    let labels = strings("labels", r.labels, &mut errs);
    let has_annotations = r.annotations.is_some();
    let annotations = strings("annotations", r.annotations, &mut errs);
    let duration = |key: &str, v: &Option<String>, errs: &mut Vec<(String, String)>| match v {
        None => 0,
        Some(s) => parse_duration(s).unwrap_or_else(|e| {
            errs.push((format!("{rpath}.{key}"), e));
            0
        }),
    };
    let for_ms = duration("for", &r.for_, &mut errs);
    let keep_ms = duration("keep_firing_for", &r.keep_firing_for, &mut errs);
    if !record.is_empty() {
        if has_annotations {
            errs.push((
                format!("{rpath}.annotations"),
                "invalid field 'annotations' in recording rule".into(),
            ));
        }
        if r.for_.is_some() {
            errs.push((
                format!("{rpath}.for"),
                "invalid field 'for' in recording rule".into(),
            ));
        }
        if r.keep_firing_for.is_some() {
            errs.push((
                format!("{rpath}.keep_firing_for"),
                "invalid field 'keep_firing_for' in recording rule".into(),
            ));
        }
        if !valid_metric_name(&record) {
            errs.push((
                format!("{rpath}.record"),
                format!("invalid recording rule name: {record}"),
            ));
        }
    } else {
        for (key, map) in [("labels", &labels), ("annotations", &annotations)] {
            for (k, v) in map {
                if let Err(e) = template::check(v) {
                    errs.push((format!("{rpath}.{key}.{k}"), format!("template: {e}")));
                }
            }
        }
    }
    let Some(expr) = query else {
        return Err(errs);
    };
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(if record.is_empty() {
        Rule::Alerting(AlertingRule {
            alert,
            expr,
            for_ms,
            keep_firing_for_ms: keep_ms,
            labels,
            annotations,
        })
    } else {
        Rule::Recording(RecordingRule {
            record,
            expr,
            labels,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_both_kinds() {
        let f = parse(
            "t.yaml",
            r#"
groups:
  - name: g
    interval: 30s
    limit: 10
    rules:
      - record: job:up:sum
        expr: sum by (job) (up)
        labels: { team: a }
      - alert: Down
        expr: up == 0
        for: 5m
        keep_firing_for: 1m
        labels: { severity: page, n: 5 }
        annotations: { summary: "{{ $labels.job }} down" }
"#,
        )
        .expect("loads");
        let g = &f.groups[0];
        assert_eq!((g.interval_ms, g.limit), (Some(30_000), 10));
        assert!(matches!(&g.rules[0], Rule::Recording(r) if r.record == "job:up:sum"));
        let Rule::Alerting(a) = &g.rules[1] else {
            panic!("alert")
        };
        assert_eq!((a.for_ms, a.keep_firing_for_ms), (300_000, 60_000));
        assert_eq!(a.labels.get("n").map(String::as_str), Some("5"));
    }

    #[test]
    fn errors_name_their_path() {
        let cases = [
            (
                "groups: [{name: g, rules: [{alert: A, expr: up, fro: 5m}]}]",
                "groups[0].rules[0]",
                "fro",
            ),
            (
                "groups: [{name: g, rules: [{alert: A, expr: 'rate(up[5m:1m])'}]}]",
                "groups[0].rules[0].expr",
                "subquery",
            ),
            (
                "groups: [{name: g, rules: [{alert: A, expr: 'holt_winters(up[5m], 0.1, 0.1)'}]}]",
                "groups[0].rules[0].expr",
                "holt_winters",
            ),
            (
                "groups: [{name: g, rules: [{record: 'bad name', expr: up}]}]",
                "groups[0].rules[0].record",
                "invalid recording rule name",
            ),
            (
                "groups: [{name: g, rules: [{record: r, expr: up, for: 5m}]}]",
                "groups[0].rules[0].for",
                "invalid field 'for'",
            ),
            (
                "groups: [{name: g, rules: [{alert: A}]}]",
                "groups[0].rules[0].expr",
                "must be set",
            ),
            (
                "groups: [{name: g, rules: [{alert: A, expr: up, for: 5x}]}]",
                "groups[0].rules[0].for",
                "duration",
            ),
            (
                "groups: [{name: g, rules: []}, {name: g, rules: []}]",
                "groups[1].name",
                "repeated",
            ),
            (
                "groups: [{name: g, rules: [{alert: A, expr: up, annotations: {a: '{{ query \"x\" }}'}}]}]",
                "groups[0].rules[0].annotations.a",
                "template",
            ),
            (
                "groups: [{name: g, rules: [{alert: A, expr: 'up +'}]}]",
                "groups[0].rules[0].expr",
                "cannot parse",
            ),
        ];
        for (text, path, msg) in cases {
            let errs = parse("f.yaml", text).expect_err(text);
            assert!(
                errs.iter()
                    .any(|e| e.path.starts_with(path) && e.message.contains(msg)),
                "{text}: {errs:?}"
            );
        }
    }
}

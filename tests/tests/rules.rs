//! The Prometheus rules in `alerts/`: `promtool check rules` and `promtool test rules` pass, and
//! the unit tests cover every rule — each alert is seen firing and not firing, each recording
//! rule has an expected value — and every alert carries what a responder needs.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::workspace;
use serde_yaml_ng::Value;

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
}

fn rule_files() -> Vec<PathBuf> {
    let files = yaml_files(&workspace().join("alerts"));
    assert!(
        files.len() >= 2,
        "expected the alerting and recording rule files: {files:?}"
    );
    files
}

fn test_files() -> Vec<PathBuf> {
    let files = yaml_files(&workspace().join("alerts/tests"));
    assert!(!files.is_empty(), "no promtool unit tests in alerts/tests");
    files
}

/// Runs promtool, failing with a clear message when it is not installed.
fn promtool(args: &[&str], files: &[PathBuf]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .args(files)
        .current_dir(workspace())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): install it with `apt-get install -y prometheus` \
                 (scripts/test.sh does)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn promtool_check_rules_passes() {
    let (ok, out) = promtool(&["check", "rules"], &rule_files());
    assert!(ok, "promtool check rules failed:\n{out}");
}

#[test]
fn promtool_unit_tests_pass() {
    let (ok, out) = promtool(&["test", "rules"], &test_files());
    assert!(ok, "promtool test rules failed:\n{out}");
    assert!(!out.contains("FAILED"), "{out}");
}

fn load(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map_or(&[], Vec::as_slice)
}

/// Every rule of the rule files: (alert or record name, the rule).
fn rules() -> Vec<(String, bool, Value)> {
    let mut out = Vec::new();
    for f in rule_files() {
        for g in seq(&load(&f)["groups"]) {
            for r in seq(&g["rules"]) {
                if let Some(a) = r["alert"].as_str() {
                    out.push((a.to_owned(), true, r.clone()));
                } else if let Some(rec) = r["record"].as_str() {
                    out.push((rec.to_owned(), false, r.clone()));
                }
            }
        }
    }
    out
}

/// The base of every `runbook_url`: the `runbook_base` external label, else this repository's
/// `alerts/` (alerts/README.md says how to point it at your copy).
const RUNBOOK_BASE: &str =
    r#"{{ or $externalLabels.runbook_base "https://example.invalid/sidelight/blob/main/alerts" }}"#;

#[test]
fn every_alert_has_severity_summary_description_and_runbook() {
    let mut problems = Vec::new();
    let mut names = BTreeSet::new();
    for (name, is_alert, rule) in rules() {
        if !is_alert {
            continue;
        }
        if !names.insert(name.clone()) {
            problems.push(format!("{name}: alert name used twice"));
        }
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        if !["critical", "warning", "info"].contains(&severity) {
            problems.push(format!("{name}: severity {severity:?}"));
        }
        let ann = &rule["annotations"];
        if ann["summary"].as_str().is_none_or(str::is_empty) {
            problems.push(format!("{name}: no summary"));
        }
        if !ann["description"]
            .as_str()
            .is_some_and(|d| d.contains("$value"))
        {
            problems.push(format!("{name}: the description does not show the value"));
        }
        // Every link takes its base from one place: the `runbook_base` external label, with
        // the same default everywhere.
        match ann["runbook_url"]
            .as_str()
            .and_then(|u| u.strip_prefix(RUNBOOK_BASE))
            .and_then(|u| u.strip_prefix("/runbooks.md#"))
        {
            Some(anchor) => {
                // The anchor names a section of alerts/runbooks.md.
                let runbooks = std::fs::read_to_string(workspace().join("alerts/runbooks.md"))
                    .expect("alerts/runbooks.md");
                let has = runbooks
                    .lines()
                    .filter_map(|l| l.strip_prefix("## "))
                    .any(|h| h.trim().to_lowercase() == anchor);
                if !has {
                    problems.push(format!("{name}: no `## {anchor}` section in runbooks.md"));
                }
            }
            None => problems.push(format!(
                "{name}: runbook_url {:?} is not {RUNBOOK_BASE}/runbooks.md#<alert>",
                ann["runbook_url"]
            )),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[derive(Default, Debug)]
struct Coverage {
    fires: bool,
    quiet: bool,
}

#[test]
fn every_rule_has_a_unit_test() {
    let mut alerts: BTreeMap<String, Coverage> = BTreeMap::new();
    let mut records: BTreeSet<String> = BTreeSet::new();
    for f in test_files() {
        let doc = load(&f);
        for t in seq(&doc["tests"]) {
            for a in seq(&t["alert_rule_test"]) {
                let name = a["alertname"].as_str().unwrap_or_default().to_owned();
                let c = alerts.entry(name).or_default();
                if seq(&a["exp_alerts"]).is_empty() {
                    c.quiet = true;
                } else {
                    c.fires = true;
                }
            }
            for e in seq(&t["promql_expr_test"]) {
                if seq(&e["exp_samples"]).is_empty() {
                    continue;
                }
                // The series tested: the expression's leading metric name.
                let expr = e["expr"].as_str().unwrap_or_default();
                let name: String = expr
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                records.insert(name);
            }
        }
    }
    let mut missing = Vec::new();
    for (name, is_alert, _) in rules() {
        if is_alert {
            match alerts.get(&name) {
                Some(Coverage {
                    fires: true,
                    quiet: true,
                }) => {}
                got => missing.push(format!(
                    "alert {name}: needs a test where it fires and one where it does not ({got:?})"
                )),
            }
        } else if !records.contains(&name) {
            missing.push(format!(
                "recording rule {name}: no expected value in any test"
            ));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

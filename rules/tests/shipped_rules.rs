//! The shipped rules (`alerts/*.yaml`) load, and their promtool unit tests (`alerts/tests/`) pass
//! under this crate's runner. (The differential test against promtool itself is in
//! `tests/tests/rules_differential.rs`.)

use std::path::{Path, PathBuf};

fn yaml_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    v.sort();
    v
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn shipped_rule_files_load() {
    let mut alerting = 0;
    let mut recording = 0;
    for f in yaml_in(&repo().join("alerts")) {
        let rf = sidelight_rules::file::load_file(&f).unwrap_or_else(|e| panic!("{e:?}"));
        for g in rf.groups {
            for r in g.rules {
                match r {
                    sidelight_rules::Rule::Alerting(_) => alerting += 1,
                    sidelight_rules::Rule::Recording(_) => recording += 1,
                }
            }
        }
    }
    assert_eq!((alerting, recording), (23, 31));
}

#[test]
fn shipped_unit_tests_pass() {
    let files = yaml_in(&repo().join("alerts/tests"));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = sidelight_rules::promtool::run(&files, &mut out, &mut err);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&err)
    );
    assert_eq!(code, 0, "{text}");
}

fn run(files: &[PathBuf]) -> (i32, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = sidelight_rules::promtool::run(files, &mut out, &mut err);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&err)
    );
    (code, text)
}

/// The PromQL coverage files (each checked under promtool first) pass, one by one.
#[test]
fn promql_coverage_files_pass() {
    let files = yaml_in(&repo().join("rules/tests/promql"));
    assert!(files.len() >= 6, "{files:?}");
    let mut failed = Vec::new();
    for f in files {
        let (code, text) = run(std::slice::from_ref(&f));
        if code != 0 {
            failed.push(text);
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// The deliberately wrong expectations fail, as they do under promtool.
#[test]
fn wrong_expectations_fail() {
    for f in yaml_in(&repo().join("rules/tests/promql/failing")) {
        let (code, text) = run(std::slice::from_ref(&f));
        assert_eq!(code, 1, "{}: {text}", f.display());
        assert!(text.contains("FAILED"), "{text}");
    }
}

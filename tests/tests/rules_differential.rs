//! Differential test of `sidelight test rules` against the real `promtool test rules`: every
//! promtool unit-test file the project ships (`alerts/tests/`) and every PromQL coverage file
//! (`rules/tests/promql/`) is run through both, one file at a time, and both must pass; the files
//! in `rules/tests/promql/failing/` hold deliberately wrong expectations, and both must fail on
//! each of them with promtool's exit code 1 and the same failure report.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{sidelight_bin, workspace};

fn yaml_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
}

/// What one runner said about one file.
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(program: &Path, file: &Path) -> Outcome {
    let out = Command::new(program)
        .args(["test", "rules"])
        .arg(file)
        .current_dir(workspace())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}); promtool comes with `apt-get install -y prometheus`",
                program.display()
            )
        });
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn both(file: &Path) -> (Outcome, Outcome) {
    // Relative to the workspace, so both print the same file name.
    let rel = file.strip_prefix(workspace()).unwrap_or(file);
    (run(Path::new("promtool"), rel), run(&sidelight_bin(), rel))
}

fn report(name: &str, o: &Outcome) -> String {
    format!("--- {name} (exit {:?})\n{}{}", o.code, o.stdout, o.stderr)
}

/// The files both runners must pass.
fn passing_files() -> Vec<PathBuf> {
    let shipped = yaml_in(&workspace().join("alerts/tests"));
    let own = yaml_in(&workspace().join("rules/tests/promql"));
    assert!(
        shipped.len() >= 5,
        "expected the shipped unit tests in alerts/tests: {shipped:?}"
    );
    assert!(
        own.len() >= 6,
        "expected the PromQL coverage files in rules/tests/promql: {own:?}"
    );
    shipped.into_iter().chain(own).collect()
}

#[test]
fn every_unit_test_file_passes_under_promtool_and_sidelight() {
    let mut problems = Vec::new();
    for file in passing_files() {
        let (p, s) = both(&file);
        if p.code != Some(0) || s.code != Some(0) {
            problems.push(format!(
                "{}: promtool exit {:?}, sidelight exit {:?}\n{}{}",
                file.display(),
                p.code,
                s.code,
                report("promtool", &p),
                report("sidelight", &s)
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// The lines of a failure report that say what was expected and what came out.
fn diff_lines(o: &Outcome) -> Vec<String> {
    format!("{}{}", o.stdout, o.stderr)
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_wrong_expectation_fails_under_both_with_the_same_report() {
    let files = yaml_in(&workspace().join("rules/tests/promql/failing"));
    assert!(
        files.len() >= 2,
        "expected deliberately failing files: {files:?}"
    );
    let mut problems = Vec::new();
    for file in files {
        let (p, s) = both(&file);
        if p.code != Some(1) || s.code != Some(1) {
            problems.push(format!(
                "{}: both must exit 1; promtool {:?}, sidelight {:?}\n{}{}",
                file.display(),
                p.code,
                s.code,
                report("promtool", &p),
                report("sidelight", &s)
            ));
            continue;
        }
        // The report names what was expected and what was got, as promtool does (stdout and
        // stderr interleave differently, so compare the lines as a set in order of appearance).
        let (mut pl, mut sl) = (diff_lines(&p), diff_lines(&s));
        pl.sort();
        sl.sort();
        if pl != sl {
            problems.push(format!(
                "{}: the failure reports differ\n{}{}",
                file.display(),
                report("promtool", &p),
                report("sidelight", &s)
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

#[test]
fn several_files_in_one_run_fail_if_any_fails() {
    let good = workspace().join("rules/tests/promql/selectors.yaml");
    let bad = workspace().join("rules/tests/promql/failing/wrong_expectation.yaml");
    for program in [PathBuf::from("promtool"), sidelight_bin()] {
        let out = Command::new(&program)
            .args(["test", "rules"])
            .arg(&good)
            .arg(&bad)
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(1), "{}", program.display());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("SUCCESS"),
            "{}: the good file still reports SUCCESS\n{text}",
            program.display()
        );
    }
}

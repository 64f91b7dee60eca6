//! `sidelight slo generate` against the real peers: the rule file it writes from the example
//! specs in `alerts/slo/` passes `promtool check rules`; promtool unit tests around it (input
//! series that burn the budget, and one that stays within it) pass under both `promtool test
//! rules` and `sidelight test rules`, and a wrong expectation fails under both; the spec
//! equivalent to the shipped SLO rules passes the shipped `alerts/tests/slo.yaml` burn-rate
//! tests (same ratios, same alerts, same labels and annotations); the file loads in the agent
//! through `alerts.rule_files`; an invalid spec exits 64 naming every problem with its path.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// Runs the agent binary with `args`; returns (exit code, stdout, stderr).
fn sidelight(args: &[&str]) -> Result<(Option<i32>, String, String)> {
    let out = Command::new(sidelight_bin())
        .args(args)
        .current_dir(workspace())
        .output()?;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Runs promtool with `args`; returns (success, combined output).
fn promtool(args: &[&str]) -> Result<(bool, String)> {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run promtool (apt-get install prometheus): {e}"))?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// Generates the rules for `spec` (relative to the workspace) into `out`.
fn generate(spec: &str, out: &Path) -> Result {
    let out_text = out.display().to_string();
    let (code, stdout, stderr) = sidelight(&["slo", "generate", spec, "-o", &out_text])?;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    let (ok, text) = promtool(&["check", "rules", &out_text])?;
    assert!(ok, "promtool check rules {out_text}: {text}");
    Ok(())
}

/// Runs one unit-test file under promtool and under the agent; both must agree on `pass`.
fn both_test_runners(file: &Path, pass: bool) -> Result {
    let f = file.display().to_string();
    let (ok, text) = promtool(&["test", "rules", &f])?;
    assert_eq!(ok, pass, "promtool test rules {f}:\n{text}");
    let (code, stdout, stderr) = sidelight(&["test", "rules", &f])?;
    assert_eq!(
        code,
        Some(if pass { 0 } else { 1 }),
        "sidelight test rules {f}:\n{stdout}{stderr}"
    );
    Ok(())
}

/// The four alerts at `eval_time`, each firing for `checkout` with its windows and texts (10 %
/// of requests failing, 100 times the 0.1 % budget).
fn burning_alerts(eval_time: &str, runbook: &str) -> String {
    let mut out = String::new();
    for (long, short, burn, severity, long_text, short_text, tail) in [
        (
            "1h",
            "5m",
            "14.4",
            "critical",
            "hour",
            "5 minutes",
            "more than 14.4 times its error budget: at this rate the 30-day budget is gone in about 2 days.",
        ),
        (
            "6h",
            "30m",
            "6",
            "critical",
            "6 hours",
            "30 minutes",
            "more than 6 times its error budget: at this rate the 30-day budget is gone in 5 days.",
        ),
        (
            "1d",
            "2h",
            "3",
            "warning",
            "day",
            "2 hours",
            "more than 3 times its error budget: at this rate the 30-day budget is gone in 10 days.",
        ),
        (
            "3d",
            "6h",
            "1",
            "warning",
            "3 days",
            "6 hours",
            "above its error budget: the 30-day budget will not last the period.",
        ),
    ] {
        let summary = if burn == "1" {
            "checkout is spending its error budget faster than it accrues".to_owned()
        } else {
            format!("checkout is burning its error budget {burn}x too fast")
        };
        out.push_str(&format!(
            "      - alertname: CheckoutAvailabilityErrorBudgetBurn{long}\n        eval_time: {eval_time}\n        exp_alerts:\n          - exp_labels: {{ service: checkout, team: payments, severity: {severity}, long_window: \"{long}\", short_window: \"{short}\", burn_rate: \"{burn}\" }}\n            exp_annotations:\n              summary: \"{summary}\"\n              description: \"10% of checkout's requests failed over the last {long_text} (and over the last {short_text}), {tail}\"\n              runbook_url: \"{runbook}\"\n"
        ));
    }
    out
}

#[test]
fn generated_rules_pass_promtool_and_both_test_runners_and_load_in_the_agent() -> Result {
    let dir = tempfile::tempdir()?;
    let rules = dir.path().join("checkout-slo-rules.yaml");
    generate("alerts/slo/checkout.slo.yaml", &rules)?;

    // Unit tests around the generated file: 10 % of checkout's requests fail for 3 hours (every
    // window burns), another service's errors are not checkout's, and a healthy checkout
    // (0.05 %) raises nothing.
    let series = |ok: u32, err: u32| {
        format!(
            "      - series: 'http_server_request_duration_seconds_count{{service_name=\"checkout\",http_route=\"/pay\",http_response_status_code=\"200\"}}'\n        values: '0+{ok}x180'\n      - series: 'http_server_request_duration_seconds_count{{service_name=\"checkout\",http_route=\"/pay\",http_response_status_code=\"503\"}}'\n        values: '0+{err}x180'\n      - series: 'http_server_request_duration_seconds_count{{service_name=\"search\",http_route=\"/q\",http_response_status_code=\"500\"}}'\n        values: '0+6000x180'\n"
        )
    };
    let quiet: String = ["1h", "6h", "1d", "3d"]
        .iter()
        .map(|w| {
            format!(
                "      - {{ alertname: CheckoutAvailabilityErrorBudgetBurn{w}, eval_time: 70m, exp_alerts: [] }}\n"
            )
        })
        .collect();
    let runbook = "https://runbooks.example.com/checkout#availability";
    let unit = format!(
        "rule_files: [checkout-slo-rules.yaml]\nevaluation_interval: 1m\ngroup_eval_order: [checkout-availability-slo-error-ratios, checkout-availability-slo-error-ratios-long, checkout-availability-slo, checkout-availability-slo-slow]\ntests:\n  - interval: 1m\n    input_series:\n{burning_series}    promql_expr_test:\n      - expr: service:availability_error_ratio:rate5m\n        eval_time: 70m\n        exp_samples:\n          - {{ labels: 'service:availability_error_ratio:rate5m{{service=\"checkout\",team=\"payments\"}}', value: 0.1 }}\n      - expr: service:availability_error_ratio:rate3d\n        eval_time: 70m\n        exp_samples:\n          - {{ labels: 'service:availability_error_ratio:rate3d{{service=\"checkout\",team=\"payments\"}}', value: 0.1 }}\n    alert_rule_test:\n      # Nothing before each alert's `for` has passed.\n      - {{ alertname: CheckoutAvailabilityErrorBudgetBurn1h, eval_time: 2m, exp_alerts: [] }}\n      - {{ alertname: CheckoutAvailabilityErrorBudgetBurn3d, eval_time: 30m, exp_alerts: [] }}\n{alerts}  - interval: 1m\n    input_series:\n{healthy_series}    promql_expr_test:\n      - expr: service:availability_error_ratio:rate5m\n        eval_time: 70m\n        exp_samples:\n          - {{ labels: 'service:availability_error_ratio:rate5m{{service=\"checkout\",team=\"payments\"}}', value: 0.0005 }}\n    alert_rule_test:\n{quiet}",
        burning_series = series(5400, 600),
        healthy_series = series(5997, 3),
        alerts = burning_alerts("70m", runbook),
    );
    let unit_file = dir.path().join("checkout-slo-test.yaml");
    std::fs::write(&unit_file, &unit)?;
    both_test_runners(&unit_file, true)?;

    // A wrong expectation (the page alert as a warning) fails under both.
    let wrong_file = dir.path().join("checkout-slo-wrong.yaml");
    std::fs::write(
        &wrong_file,
        unit.replacen("severity: critical", "severity: warning", 1),
    )?;
    both_test_runners(&wrong_file, false)?;

    // The generated file loads in the agent through alerts.rule_files.
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        "alerts:\n  rule_files: [checkout-slo-rules.yaml]\n",
    )?;
    let (code, stdout, stderr) = sidelight(&["check-config", &config.display().to_string()])?;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("4 rule groups, 11 rules"), "{stdout}");
    Ok(())
}

/// The spec equivalent to the shipped SLO rules (alerts/slo/sidelight-availability.slo.yaml)
/// passes the shipped burn-rate unit tests: the same error ratios at every window and the same
/// alerts with the same labels and annotations, under promtool and under the agent. The tests
/// of the objective series (which the generated rules do not record: the objective is written
/// into the thresholds) and of the latency alert are left out.
#[test]
fn the_equivalent_spec_passes_the_shipped_slo_tests() -> Result {
    let dir = tempfile::tempdir()?;
    let rules = dir.path().join("generated.yaml");
    generate("alerts/slo/sidelight-availability.slo.yaml", &rules)?;
    let shipped = std::fs::read_to_string(workspace().join("alerts/tests/slo.yaml"))?;
    let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&shipped)?;
    let map = doc.as_mapping_mut().ok_or("slo.yaml is not a mapping")?;
    map.insert("rule_files".into(), vec!["generated.yaml"].into());
    // Groups run in a fixed order, the error ratios before the alerts that read them, as the
    // shipped test orders its groups (promtool otherwise orders them at random).
    let prefix = "sidelight-traces_span_metrics";
    map.insert(
        "group_eval_order".into(),
        [
            "-slo-error-ratios",
            "-slo-error-ratios-long",
            "-slo",
            "-slo-slow",
        ]
        .iter()
        .map(|g| format!("{prefix}{g}"))
        .collect::<Vec<_>>()
        .into(),
    );
    let tests = map
        .get_mut("tests")
        .and_then(|t| t.as_sequence_mut())
        .ok_or("no tests")?;
    let (mut exprs, mut alerts) = (0, 0);
    for test in tests.iter_mut() {
        let t = test.as_mapping_mut().ok_or("a test is not a mapping")?;
        if let Some(list) = t
            .get_mut("promql_expr_test")
            .and_then(|v| v.as_sequence_mut())
        {
            list.retain(|e| {
                e["expr"]
                    .as_str()
                    .is_some_and(|x| x.contains("traces_span_metrics_error_ratio"))
            });
            exprs += list.len();
        }
        if let Some(list) = t
            .get_mut("alert_rule_test")
            .and_then(|v| v.as_sequence_mut())
        {
            list.retain(|a| {
                a["alertname"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("SidelightErrorBudgetBurn"))
            });
            alerts += list.len();
        }
    }
    // Most of the shipped file is about these rules: make sure the filter kept them.
    assert!(
        exprs >= 7 && alerts >= 9,
        "{exprs} expr tests, {alerts} alert tests"
    );
    let file = dir.path().join("slo-generated-test.yaml");
    std::fs::write(&file, serde_yaml_ng::to_string(&doc)?)?;
    both_test_runners(&file, true)
}

#[test]
fn an_invalid_spec_exits_64_naming_every_problem() -> Result {
    let dir = tempfile::tempdir()?;
    let spec = dir.path().join("bad.slo.yaml");
    std::fs::write(
        &spec,
        "service: checkout\nslos:\n  - name: availability\n    objective: 100\n    windw: 30d\n    sli:\n      http_requests:\n        metric: 'rate(http_requests_total[5m])'\n        error_matcher: 'code=~\"5..\"'\n",
    )?;
    let out = dir.path().join("never.yaml");
    let (code, stdout, stderr) = sidelight(&[
        "slo",
        "generate",
        &spec.display().to_string(),
        "-o",
        &out.display().to_string(),
    ])?;
    assert_eq!(code, Some(64), "{stdout}{stderr}");
    for want in [
        "bad.slo.yaml: slos[0].windw: unknown key",
        "bad.slo.yaml: slos[0].objective: 100: a percentage above 0 and below 100",
        "bad.slo.yaml: slos[0].sli.http_requests.metric: \"rate(http_requests_total[5m])\" is not a series selector",
    ] {
        assert!(stderr.contains(want), "missing {want:?} in {stderr}");
    }
    assert!(!out.exists(), "nothing is written for an invalid spec");
    // A missing file is a usage error too.
    let (code, _, stderr) = sidelight(&["slo", "generate", "no/such/spec.yaml"])?;
    assert_eq!(code, Some(64), "{stderr}");
    // Without -o the rules go to standard output.
    let (code, stdout, stderr) = sidelight(&["slo", "generate", "alerts/slo/checkout.slo.yaml"])?;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.starts_with("# Generated by `sidelight slo generate`"),
        "{stdout}"
    );
    Ok(())
}

//! The OpenAPI document (`agent/src/openapi.json`, served at `GET /api/v1/openapi.json`):
//! valid OpenAPI 3.1 by `openapi-spec-validator`, and true of the live agent by `schemathesis`
//! (PyPI), run against an agent with the DORA hub, alerting and ChatOps on: no 5xx, no status
//! code the document does not list, no body, content type or header contradicting it, and auth
//! enforced where the document says. (That the router serves no route the document leaves out
//! is `http::tests::the_openapi_document_names_every_route_mounted`.)

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Agent, Result, eventually, get, python, workspace};

const TOKEN: &str = "openapi-token";

fn agent() -> Result<Agent> {
    let dir = tempfile::tempdir()?;
    for (file, text) in [
        ("token", TOKEN),
        ("gh", "gh-secret"),
        ("gl", "gl-token"),
        ("slack-token", "xoxb-unused"),
        ("slack-signing", "signing-secret"),
    ] {
        std::fs::write(dir.path().join(file), text)?;
    }
    let agent = Agent::start_in(
        dir,
        r##"
http: { listen: 127.0.0.1:0, auth: { bearer_token_file: "{dir}/token" } }
host: { enabled: false }
logs: []
store: { path: "{dir}/store" }
dora:
  enabled: true
  webhooks:
    github: { secret_file: "{dir}/gh", deploy_on_workflow_run: true }
    gitlab: { token_file: "{dir}/gl", deploy_on_pipeline: true }
alerts:
  evaluation_interval: 1s
  groups:
    - name: agent
      rules:
        - alert: NeverFires
          expr: sidelight_build_info > 1000
          labels: { severity: warning }
          annotations: { summary: never }
notifiers:
  slack:
    token_file: "{dir}/slack-token"
    channel: "#alerts"
    api_url: "http://127.0.0.1:9/api/"
    signing_secret_file: "{dir}/slack-signing"
"##,
    )?;
    eventually(Duration::from_secs(15), "readyz", || {
        get(&agent.url("/readyz"), &[]).ok().filter(|r| r.0 == 200)
    })?;
    Ok(agent)
}

#[test]
fn the_document_validates_and_holds_for_the_live_agent() -> Result {
    let doc_path = workspace().join("agent/src/openapi.json");
    let check = Command::new(python())
        .args([
            "-c",
            "import sys\n\
             from openapi_spec_validator import validate\n\
             from openapi_spec_validator.readers import read_from_filename\n\
             spec, _ = read_from_filename(sys.argv[1])\n\
             validate(spec)\n\
             print('valid', spec['openapi'])",
        ])
        .arg(&doc_path)
        .output()?;
    assert!(
        check.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&check.stdout).trim(), "valid 3.1.0");

    let agent = agent()?;
    // The agent serves the document of the repository, without a token.
    let (status, ctype, served) = get(&agent.url("/api/v1/openapi.json"), &[])?;
    assert_eq!((status, ctype.as_str()), (200, "application/json"));
    assert_eq!(served, std::fs::read_to_string(&doc_path)?);

    let schemathesis = python().with_file_name("schemathesis");
    let reports = tempfile::tempdir()?;
    let out = Command::new(&schemathesis)
        .arg("run")
        .arg(agent.url("/api/v1/openapi.json"))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,ignored_auth",
            "--max-examples",
            "12",
            "--seed",
            "20",
            "--workers",
            "2",
            "--request-timeout",
            "10",
            "--max-time",
            "90",
            "--suppress-health-check",
            "all",
            "--header",
            &format!("Authorization: Bearer {TOKEN}"),
            "--report",
            "junit",
            "--report-dir",
        ])
        .arg(reports.path())
        // Its caches (.schemathesis/, .hypothesis/) go to the temporary directory.
        .current_dir(reports.path())
        .env("NO_COLOR", "1")
        .output()
        .map_err(|e| format!("{}: {e} (pip install -r tests/python/requirements.txt)", schemathesis.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    // Every operation of the document was exercised.
    let doc: serde_json::Value = serde_json::from_str(&served)?;
    let operations: usize = doc["paths"]
        .as_object()
        .map(|p| {
            p.values()
                .filter_map(|i| i.as_object())
                .map(|i| i.len())
                .sum()
        })
        .unwrap_or(0);
    assert!(operations >= 16, "{operations}");
    assert!(
        !text.contains("No operations"),
        "schemathesis ran nothing:\n{text}"
    );
    let agent_errors: Vec<String> = agent
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("\"level\":\"ERROR\"") && l.contains("panicked"))
        .collect();
    assert!(agent_errors.is_empty(), "{agent_errors:?}");
    Ok(())
}

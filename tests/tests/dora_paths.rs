//! DORA from the paths users take, through the real binary: GitHub deliveries as GitHub sends
//! them by default (form-encoded, signed over the raw form body) with GitHub's own payload
//! shapes; deploy attempts that fail and are retried, and a rollback, with the figures computed
//! by hand; `sidelight deploy` run in a real git checkout, read back with `sidelight dora
//! report`; and what the CLI says when the agent has no hub or the store is elsewhere.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::rfc3339;
use common::{Agent, Result, client, eventually, get, sample, sidelight_bin, workspace};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

const TOKEN: &str = "paths-token";
const GH_SECRET: &str = "It's a Secret to Everybody";
const H: i64 = 3600;
const D: i64 = 86_400;

fn now() -> Result<i64> {
    Ok(i64::try_from(
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
    )?)
}

/// A hub with the bearer token and the GitHub secret, its files in `{dir}`.
fn hub() -> Result<Agent> {
    // The token and secret files are read at start: written first.
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("token"), TOKEN)?;
    std::fs::write(dir.path().join("gh"), GH_SECRET)?;
    let agent = Agent::start_in(
        dir,
        "http: { listen: 127.0.0.1:0, auth: { bearer_token_file: {dir}/token } }\nhost: { enabled: false }\nstore: { path: {dir}/store }\ndora:\n  enabled: true\n  webhooks:\n    github: { secret_file: {dir}/gh }\n",
    )?;
    eventually(Duration::from_secs(10), "readyz", || {
        get(&agent.url("/readyz"), &[]).ok().filter(|r| r.0 == 200)
    })?;
    Ok(agent)
}

fn post(agent: &Agent, path: &str, body: &Value) -> Result<(u16, Value)> {
    let mut resp = client()
        .post(&agent.url(path))
        .header("authorization", &format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .send(body.to_string())?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string()?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

fn authed_get(agent: &Agent, path: &str) -> Result<Value> {
    let auth = format!("Bearer {TOKEN}");
    let (status, _, body) = get(&agent.url(path), &[("authorization", &auth)])?;
    assert_eq!(status, 200, "{path}: {body}");
    Ok(serde_json::from_str(&body)?)
}

/// `application/x-www-form-urlencoded` as browsers and GitHub write it: unreserved bytes
/// as they are, space as `+`, everything else `%XX`.
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Delivers a GitHub event as GitHub does with the default content type: the JSON in the
/// `payload` form field, HMAC-SHA256 of the raw form body in `X-Hub-Signature-256`.
fn github_form(
    agent: &Agent,
    query: &str,
    event: &str,
    delivery: &str,
    payload: &Value,
) -> Result<(u16, Value)> {
    let raw = format!("payload={}", form_encode(&payload.to_string()));
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(GH_SECRET.as_bytes())?;
    mac.update(raw.as_bytes());
    let sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let mut resp = client()
        .post(&agent.url(&format!("/webhooks/github{query}")))
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .header("x-github-hook-id", "292430182")
        .header("x-hub-signature-256", &sig)
        .header("user-agent", "GitHub-Hookshot/044aadd")
        .header("content-type", "application/x-www-form-urlencoded")
        .send(raw)?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string()?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

fn fixture(name: &str) -> Result<Value> {
    let path = workspace().join("tests/fixtures/github").join(name);
    Ok(serde_json::from_slice(&std::fs::read(path)?)?)
}

fn service_row<'a>(report: &'a Value, service: &str) -> Result<&'a Value> {
    report["services"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["service"] == service))
        .ok_or_else(|| format!("no row for {service}: {report}").into())
}

#[test]
fn github_form_encoded_deliveries_of_real_payloads_are_recorded() -> Result {
    let agent = hub()?;
    let t = now()?;

    // A push of two commits, as GitHub sends it by default.
    let mut push = fixture("push.json")?;
    push["commits"][0]["timestamp"] = rfc3339(t - 3 * H).into();
    push["commits"][1]["timestamp"] = rfc3339(t - H).into();
    push["head_commit"]["timestamp"] = rfc3339(t - H).into();
    let (status, body) = github_form(&agent, "", "push", "d1e5c0a0-0001", &push)?;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "recorded", "{body}");
    assert_eq!(body["changes_remembered"], 2, "{body}");

    // GitHub's deployment_status example, made current: the deployment takes the pushed commits.
    let mut status_event = fixture("deployment_status.json")?;
    status_event["deployment"]["created_at"] = rfc3339(t - 300).into();
    status_event["deployment_status"]["created_at"] = rfc3339(t - 60).into();
    let (status, body) = github_form(
        &agent,
        "",
        "deployment_status",
        "d1e5c0a0-0002",
        &status_event,
    )?;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["deployment_new"], true, "{body}");
    // The same delivery again: nothing new.
    let (status, body) = github_form(
        &agent,
        "",
        "deployment_status",
        "d1e5c0a0-0002",
        &status_event,
    )?;
    assert_eq!((status, body["status"].as_str()), (202, Some("duplicate")));

    // A failed attempt of another deployment, and a deployment renamed by the hook URL.
    let mut failed = status_event.clone();
    failed["deployment"]["id"] = 145_988_747.into();
    failed["deployment_status"]["id"] = 209_916_255.into();
    failed["deployment_status"]["state"] = "failure".into();
    let (status, body) = github_form(&agent, "", "deployment_status", "d1e5c0a0-0003", &failed)?;
    assert_eq!((status, &body["deployment_new"]), (202, &json!(true)));
    let mut renamed = status_event.clone();
    renamed["deployment"]["id"] = 145_988_748.into();
    let (status, body) = github_form(
        &agent,
        "?service=greeter",
        "deployment_status",
        "d1e5c0a0-0004",
        &renamed,
    )?;
    assert_eq!((status, &body["deployment_new"]), (202, &json!(true)));

    // A tampered form body fails the signature.
    let raw = format!("payload={}", form_encode(&status_event.to_string()));
    let mut resp = client()
        .post(&agent.url("/webhooks/github"))
        .header("x-github-event", "deployment_status")
        .header("x-hub-signature-256", "sha256=00")
        .header("content-type", "application/x-www-form-urlencoded")
        .send(raw)?;
    assert_eq!(resp.status().as_u16(), 401);
    let _ = resp.body_mut().read_to_string();

    // Lead times: (t-60) - (t-3h) = 10740 and (t-60) - (t-1h) = 3540; median 7140.
    let report = authed_get(&agent, "/api/v1/dora?window=7d")?;
    let row = service_row(&report, "Hello-World")?;
    assert_eq!(row["deployments"], 1, "{row}");
    assert_eq!(row["changes"], 2, "{row}");
    assert_eq!(row["lead_time_median_seconds"], 7140.0, "{row}");
    assert_eq!(service_row(&report, "greeter")?["deployments"], 1);
    let auth = format!("Bearer {TOKEN}");
    let metrics = eventually(Duration::from_secs(10), "dora_* rebuilt", || {
        let (_, _, body) = get(&agent.url("/metrics"), &[("authorization", &auth)]).ok()?;
        sample(
            &body,
            "dora_deployments_total",
            "service=\"Hello-World\",environment=\"production\",status=\"failure\"",
        )
        .is_some()
        .then_some(body)
    })?;
    let ok = sample(
        &metrics,
        "dora_deployments_total",
        "service=\"Hello-World\",environment=\"production\",status=\"success\"",
    );
    assert_eq!(ok, Some(1.0), "{metrics}");
    Ok(())
}

/// The history of `api` (T = now):
///
/// | event | version | finished | commits | what it is |
/// |---|---|---|---|---|
/// | gha-1-1 | 1 | T-10d | c1 (-2h) | deployment, lead 2h |
/// | gha-2-1 | 2 | T-8d | c2 (-3h) | failed attempt |
/// | gha-2-2 | 2 | T-8d+1h | c2 | the retry succeeds: deployment, lead 4h |
/// | gha-3-1 | 3 | T-5d | c3 (-1h) | deployment, lead 1h; rolled back: failed |
/// | I1 opens T-5d+1h, resolved T-5d+3h (no deployment named): recovery 2h |
/// | gha-4-1 | 2 | T-5d+2h | — | rollback during I1: deployment, rework |
/// | gha-5-1 ×2 | 4 | T-2d | c4 (-6h) | deployment once, lead 6h |
///
/// Over 30d: 5 deployments; change fail rate 1/5; recovery median 2h; rework 1/5; lead times
/// 1h, 2h, 4h, 6h, median 3h.
#[test]
fn retried_failures_and_rollbacks_through_the_api() -> Result {
    let agent = hub()?;
    let t = now()?;
    let (t1, t2, t3, t4) = (t - 10 * D, t - 8 * D, t - 5 * D, t - 2 * D);
    let dep = |id: &str, version: &str, at: i64, status: &str, commits: Value| {
        json!({"id": id, "service": "api", "version": version, "commit": format!("head-{version}"),
               "status": status, "started_at": at - 120, "finished_at": at, "commits": commits})
    };
    let c = |sha: &str, at: i64| json!([{"sha": sha, "timestamp": at}]);
    for (body, want) in [
        (dep("gha-1-1", "1", t1, "success", c("c1", t1 - 2 * H)), 201),
        (dep("gha-2-1", "2", t2, "failure", c("c2", t2 - 3 * H)), 201),
        (
            dep("gha-2-2", "2", t2 + H, "success", c("c2", t2 - 3 * H)),
            201,
        ),
        (dep("gha-3-1", "3", t3, "success", c("c3", t3 - H)), 201),
    ] {
        let (status, resp) = post(&agent, "/api/v1/deployments", &body)?;
        assert_eq!(status, want, "{body}: {resp}");
    }
    let (status, resp) = post(
        &agent,
        "/api/v1/incidents",
        &json!({"action": "open", "id": "I1", "service": "api", "started_at": rfc3339(t3 + H)}),
    )?;
    assert_eq!(status, 201, "{resp}");
    let (status, resp) = post(
        &agent,
        "/api/v1/deployments",
        &dep("gha-4-1", "2", t3 + 2 * H, "success", json!([])),
    )?;
    assert_eq!(status, 201, "{resp}");
    let (status, resp) = post(
        &agent,
        "/api/v1/incidents",
        &json!({"action": "resolve", "id": "I1", "resolved_at": t3 + 3 * H}),
    )?;
    assert_eq!(status, 201, "{resp}");
    let last = dep("gha-5-1", "4", t4, "success", c("c4", t4 - 6 * H));
    assert_eq!(post(&agent, "/api/v1/deployments", &last)?.0, 201);
    let (status, resp) = post(&agent, "/api/v1/deployments", &last)?;
    assert_eq!((status, &resp["new"]), (200, &json!(false)), "{resp}");

    let report = authed_get(&agent, "/api/v1/dora?service=api&window=30d")?;
    let row = service_row(&report, "api")?;
    assert_eq!(row["deployments"], 5, "{row}");
    assert_eq!(row["failed_deployments"], 1, "{row}");
    assert_eq!(row["change_fail_rate"], 0.2, "{row}");
    assert_eq!(row["recovery_time_median_seconds"], 7200.0, "{row}");
    assert_eq!(row["rework_deployments"], 1, "{row}");
    assert_eq!(row["rework_rate"], 0.2, "{row}");
    assert_eq!(row["changes"], 4, "{row}");
    assert_eq!(row["lead_time_median_seconds"], 10_800.0, "{row}");

    // The latest successful deployment, and every attempt on request.
    let latest = authed_get(&agent, "/api/v1/deployments?service=api")?;
    assert_eq!(latest["deployments"][0]["id"], "gha-5-1", "{latest}");
    let all = authed_get(
        &agent,
        "/api/v1/deployments?service=api&status=any&limit=100",
    )?;
    assert_eq!(
        all["deployments"].as_array().map(Vec::len),
        Some(6),
        "{all}"
    );

    // The counters agree: 5 successful events and the failed attempt.
    let auth = format!("Bearer {TOKEN}");
    eventually(Duration::from_secs(10), "dora counters", || {
        let (_, _, body) = get(&agent.url("/metrics"), &[("authorization", &auth)]).ok()?;
        let m = |status: &str| {
            sample(
                &body,
                "dora_deployments_total",
                &format!("service=\"api\",environment=\"production\",status=\"{status}\""),
            )
        };
        let rework = sample(&body, "dora_rework_deployments_total", "service=\"api\"");
        (m("success") == Some(5.0) && m("failure") == Some(1.0) && rework == Some(1.0))
            .then_some(())
    })?;

    // And so does the CLI, reading the store through the agent's configuration.
    let out = sidelight(
        &[
            "dora",
            "report",
            "--service",
            "api",
            "--format",
            "json",
            "--config",
        ],
        Some(&agent.config_path),
        &[],
        None,
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    let cli: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(cli["services"], report["services"]);
    Ok(())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs the CLI with `args` (then `last` as a path), extra environment, in `cwd`.
fn sidelight(
    args: &[&str],
    last: Option<&Path>,
    env: &[(&str, &str)],
    cwd: Option<&Path>,
) -> Result<Output> {
    let mut cmd = Command::new(sidelight_bin());
    cmd.args(args);
    if let Some(p) = last {
        cmd.arg(p);
    }
    for var in ["GITHUB_RUN_ID", "GITHUB_RUN_ATTEMPT", "CI_JOB_ID"] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    Ok(cmd.output()?)
}

fn git(repo: &Path, args: &[&str], author_time: Option<i64>) -> Result<String> {
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(repo).args(args);
    cmd.env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Dev")
        .env("GIT_AUTHOR_EMAIL", "dev@example.com")
        .env("GIT_COMMITTER_NAME", "CI")
        .env("GIT_COMMITTER_EMAIL", "ci@example.com");
    if let Some(t) = author_time {
        cmd.env("GIT_AUTHOR_DATE", format!("@{t} +0000"));
    }
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!("git {args:?}: {}", stderr(&out)).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn commit(repo: &Path, file: &str, at: i64) -> Result<String> {
    std::fs::write(repo.join(file), format!("{file} at {at}\n"))?;
    git(repo, &["add", file], None)?;
    git(repo, &["commit", "-q", "-m", file], Some(at))?;
    git(repo, &["rev-parse", "HEAD"], None)
}

#[test]
fn sidelight_deploy_in_a_git_checkout_yields_lead_times() -> Result {
    let agent = hub()?;
    let url = agent.url("");
    let repo = tempfile::tempdir()?;
    git(repo.path(), &["init", "-q", "-b", "main"], None)?;
    let t = now()?;
    commit(repo.path(), "a", t - 5 * H)?;
    let deploy = |version: &str, env: &[(&str, &str)]| {
        let mut all = vec![("SIDELIGHT_CI_TOKEN", TOKEN)];
        all.extend_from_slice(env);
        sidelight(
            &[
                "deploy",
                "--service",
                "web",
                "--version",
                version,
                "--commit",
                "HEAD",
                "--token-env",
                "SIDELIGHT_CI_TOKEN",
                "--url",
                &url,
            ],
            None,
            &all,
            Some(repo.path()),
        )
    };
    // The first deployment of `web`: the deployed commit only (lead 5h).
    let out = deploy("1", &[])?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("1 commit(s)"), "{}", stderr(&out));

    // Two more commits, deployed from CI: both are sent (leads 3h and 2h).
    commit(repo.path(), "b", t - 3 * H)?;
    let head = commit(repo.path(), "c", t - 2 * H)?;
    let ci = [("GITHUB_RUN_ID", "9000001"), ("GITHUB_RUN_ATTEMPT", "1")];
    let out = deploy("2", &ci)?;
    assert!(out.status.success(), "{}", stderr(&out));
    let answer: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(answer["id"], "gha-9000001-1/web/production", "{answer}");
    assert_eq!(answer["new"], true, "{answer}");
    // The CI job re-run posts the same delivery id: counted once.
    let out = deploy("2", &ci)?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout)?["new"], false);

    let latest = authed_get(&agent, "/api/v1/deployments?service=web")?;
    assert_eq!(
        latest["deployments"][0]["commit"],
        head.as_str(),
        "{latest}"
    );

    // Lead times 5h, 3h, 2h (plus the seconds the deploys took): median 3h.
    let out = sidelight(
        &[
            "dora",
            "report",
            "--service",
            "web",
            "--format",
            "json",
            "--config",
        ],
        Some(&agent.config_path),
        &[],
        None,
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout)?;
    let row = service_row(&report, "web")?;
    assert_eq!(row["deployments"], 2, "{row}");
    assert_eq!(row["changes"], 3, "{row}");
    let median = row["lead_time_median_seconds"]
        .as_f64()
        .ok_or("no median")?;
    assert!(
        (3.0 * 3600.0..3.0 * 3600.0 + 120.0).contains(&median),
        "{median}"
    );
    let table = sidelight(
        &["dora", "report", "--config"],
        Some(&agent.config_path),
        &[],
        None,
    )?;
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("web") && l.contains("3h")),
        "{table}"
    );

    // --commits-from overrides the hub's answer; --no-git sends nothing.
    commit(repo.path(), "d", t - H)?;
    let out = sidelight(
        &[
            "deploy",
            "--service",
            "web",
            "--version",
            "3",
            "--commit",
            "HEAD",
            "--commits-from",
            "HEAD~2",
            "--token-env",
            "SIDELIGHT_CI_TOKEN",
            "--url",
            &url,
        ],
        None,
        &[("SIDELIGHT_CI_TOKEN", TOKEN)],
        Some(repo.path()),
    )?;
    assert!(
        stderr(&out).contains("2 commit(s) (since HEAD~2)"),
        "{}",
        stderr(&out)
    );
    let out = sidelight(
        &[
            "deploy",
            "--service",
            "web",
            "--version",
            "4",
            "--commit",
            "abc123",
            "--no-git",
            "--token-env",
            "SIDELIGHT_CI_TOKEN",
            "--url",
            &url,
        ],
        None,
        &[("SIDELIGHT_CI_TOKEN", TOKEN)],
        Some(repo.path()),
    )?;
    assert!(
        stderr(&out).contains("0 commit(s) (no git)"),
        "{}",
        stderr(&out)
    );
    Ok(())
}

#[test]
fn the_cli_says_what_is_missing() -> Result {
    // An agent without the hub.
    let agent = Agent::start("http: { listen: 127.0.0.1:0 }\nhost: { enabled: false }\n")?;
    let url = agent.url("");
    let out = sidelight(
        &[
            "deploy",
            "--service",
            "web",
            "--version",
            "1",
            "--commit",
            "abc",
            "--no-git",
            "--url",
            &url,
        ],
        None,
        &[],
        None,
    )?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("DORA is not enabled on {url}")),
        "{}",
        stderr(&out)
    );
    // A token variable that is not set is a usage error.
    let out = sidelight(
        &[
            "deploy",
            "--service",
            "web",
            "--version",
            "1",
            "--commit",
            "abc",
            "--no-git",
            "--token-env",
            "SIDELIGHT_UNSET_TOKEN_VARIABLE",
            "--url",
            &url,
        ],
        None,
        &[],
        None,
    )?;
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    // `dora report` away from the store points at --config.
    let empty = tempfile::tempdir()?;
    let out = sidelight(&["dora", "report"], None, &[], Some(empty.path()))?;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--config FILE"), "{}", stderr(&out));
    Ok(())
}

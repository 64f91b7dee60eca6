//! The recipes of docs/dora.md, run as written against a real hub: the GitHub Actions job and the
//! GitLab CI job (their `run:` / `script:` lines executed by bash as the runners do, with the
//! runners' variables, the `sidelight` under test on PATH in place of the wheel), the curl
//! commands, and the Alertmanager receiver in a real Alertmanager (Debian's
//! `prometheus-alertmanager`) firing and resolving an alert into an incident.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::rfc3339;
use common::{Agent, Proc, Result, client, eventually, free_port, get, sidelight_bin, workspace};
use serde_json::{Value, json};

const TOKEN: &str = "recipes-token";

fn hub() -> Result<Agent> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("token"), TOKEN)?;
    let agent = Agent::start_in(
        dir,
        "http: { listen: 127.0.0.1:0, auth: { bearer_token_file: \"{dir}/token\" } }\nhost: { enabled: false }\nlogs: []\nstore: { path: \"{dir}/store\" }\ndora: { enabled: true }\n",
    )?;
    eventually(Duration::from_secs(10), "readyz", || {
        get(&agent.url("/readyz"), &[]).ok().filter(|r| r.0 == 200)
    })?;
    Ok(agent)
}

fn api(agent: &Agent, path: &str) -> Result<Value> {
    let auth = format!("Bearer {TOKEN}");
    let (status, _, body) = get(&agent.url(path), &[("authorization", &auth)])?;
    assert_eq!(status, 200, "{path}: {body}");
    Ok(serde_json::from_str(&body)?)
}

/// The fenced block after `<!-- recipe: NAME -->` in docs/dora.md.
fn recipe(name: &str) -> Result<String> {
    let doc = std::fs::read_to_string(workspace().join("docs/dora.md"))?;
    let marker = format!("<!-- recipe: {name} -->");
    let after = doc
        .split_once(&marker)
        .ok_or_else(|| format!("no {marker} in docs/dora.md"))?
        .1;
    let start = after.find("```").ok_or("no code block")?;
    let body = &after[start + 3..];
    let body = &body[body.find('\n').ok_or("fence")? + 1..];
    let end = body.find("\n```").ok_or("unterminated block")?;
    Ok(body[..=end].to_owned())
}

/// A directory to put first on PATH: `sidelight` is the binary under test (what
/// `pip install sidelight` puts on PATH), `pip install sidelight` a no-op.
fn shims() -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    std::os::unix::fs::symlink(sidelight_bin(), dir.path().join("sidelight"))?;
    let pip = dir.path().join("pip");
    std::fs::write(
        &pip,
        "#!/bin/sh\n[ \"$*\" = \"install sidelight\" ] || { echo \"unexpected pip $*\" >&2; exit 2; }\n",
    )?;
    let mut perms = std::fs::metadata(&pip)?.permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&pip, perms)?;
    Ok(dir)
}

fn path_with(shims: &Path) -> String {
    format!(
        "{}:{}",
        shims.display(),
        std::env::var("PATH").unwrap_or_default()
    )
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
        return Err(format!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn now() -> Result<i64> {
    Ok(i64::try_from(
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
    )?)
}

/// A checkout with commits authored 3h and 1h ago; returns (dir, HEAD).
fn checkout() -> Result<(tempfile::TempDir, String)> {
    let repo = tempfile::tempdir()?;
    git(repo.path(), &["init", "-q", "-b", "main"], None)?;
    let t = now()?;
    for (file, at) in [("a.py", t - 3 * 3600), ("b.py", t - 3600)] {
        std::fs::write(repo.path().join(file), "print(1)\n")?;
        git(repo.path(), &["add", file], None)?;
        git(repo.path(), &["commit", "-q", "-m", file], Some(at))?;
    }
    let head = git(repo.path(), &["rev-parse", "HEAD"], None)?;
    Ok((repo, head))
}

/// Runs a shell step as the CI runners do (`bash --noprofile --norc -eo pipefail`).
fn bash(script: &str, dir: &Path, env: &BTreeMap<String, String>) -> Result<bool> {
    let out = Command::new("bash")
        .args(["--noprofile", "--norc", "-eo", "pipefail", "-c", script])
        .current_dir(dir)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .output()?;
    eprintln!(
        "$ {script}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.status.success())
}

/// `${{ a.b }}` expressions of GitHub Actions, from `values`; an unknown one is an error.
fn expand(text: &str, values: &BTreeMap<&str, String>) -> Result<String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("${{") {
        out.push_str(&rest[..at]);
        let end = rest[at..].find("}}").ok_or("unterminated ${{")? + at;
        let expr = rest[at + 3..end].trim();
        out.push_str(
            values
                .get(expr)
                .ok_or_else(|| format!("the test has no value for ${{{{ {expr} }}}}"))?,
        );
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[test]
fn github_actions_job_records_a_failed_attempt_then_the_deployment() -> Result {
    let agent = hub()?;
    let (repo, head) = checkout()?;
    let shims = shims()?;
    let workflow: Value = serde_yaml_ng::from_str(&recipe("github-actions")?)?;
    let steps = workflow["jobs"]["deploy"]["steps"]
        .as_array()
        .ok_or("jobs.deploy.steps")?;
    let values: BTreeMap<&str, String> = [
        ("github.sha", head.clone()),
        ("vars.SIDELIGHT_URL", agent.url("")),
        ("secrets.SIDELIGHT_TOKEN", TOKEN.to_owned()),
    ]
    .into();
    // Attempt 1: the deployment script fails; attempt 2 (a re-run) succeeds.
    for (attempt, deploy_ok) in [("1", false), ("2", true)] {
        std::fs::write(
            repo.path().join("deploy.sh"),
            format!("#!/bin/sh\nexit {}\n", if deploy_ok { 0 } else { 1 }),
        )?;
        let mut perms = std::fs::metadata(repo.path().join("deploy.sh"))?.permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(repo.path().join("deploy.sh"), perms)?;
        let mut failed = false;
        for step in steps {
            if let Some(uses) = step["uses"].as_str() {
                // The checkout is the temporary repository with its full history.
                assert!(uses.starts_with("actions/checkout"), "{uses}");
                assert_eq!(step["with"]["fetch-depth"], 0);
                continue;
            }
            let condition = step["if"].as_str().unwrap_or("success()");
            let runs = match condition {
                "success()" => !failed,
                "failure()" => failed,
                "always()" => true,
                other => return Err(format!("condition {other} not simulated").into()),
            };
            if !runs {
                continue;
            }
            let mut env: BTreeMap<String, String> = [
                ("PATH", path_with(shims.path())),
                ("HOME", repo.path().display().to_string()),
                ("CI", "true".into()),
                ("GITHUB_ACTIONS", "true".into()),
                ("GITHUB_SHA", head.clone()),
                ("GITHUB_RUN_ID", "7781234567".into()),
                ("GITHUB_RUN_ATTEMPT", attempt.into()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            if let Some(vars) = step["env"].as_object() {
                for (k, v) in vars {
                    env.insert(k.clone(), expand(v.as_str().unwrap_or_default(), &values)?);
                }
            }
            let script = expand(step["run"].as_str().ok_or("run")?, &values)?;
            if !bash(&script, repo.path(), &env)? {
                failed = true;
                // The recording steps must not fail the job themselves.
                assert!(script.contains("deploy.sh"), "step failed: {script}");
            }
        }
        assert_eq!(failed, !deploy_ok);
    }
    let all = api(
        &agent,
        "/api/v1/deployments?service=checkout&status=any&limit=10",
    )?;
    let got: Vec<(String, String, String)> = all["deployments"]
        .as_array()
        .ok_or("list")?
        .iter()
        .map(|d| {
            (
                d["id"].as_str().unwrap_or_default().to_owned(),
                d["status"].as_str().unwrap_or_default().to_owned(),
                d["commit"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let mut got = got;
    got.sort();
    assert_eq!(
        got,
        [
            (
                "gha-7781234567-1/checkout/production".to_owned(),
                "failure".to_owned(),
                head.clone()
            ),
            (
                "gha-7781234567-2/checkout/production".to_owned(),
                "success".to_owned(),
                head.clone()
            ),
        ]
    );
    let report = api(&agent, "/api/v1/dora?service=checkout")?;
    assert_eq!(report["services"][0]["deployments"], 1, "{report}");
    assert_eq!(report["services"][0]["changes"], 1, "{report}");
    Ok(())
}

#[test]
fn gitlab_ci_job_records_deployments_with_their_commits() -> Result {
    let agent = hub()?;
    let (repo, head) = checkout()?;
    let shims = shims()?;
    let pipeline: Value = serde_yaml_ng::from_str(&recipe("gitlab-ci")?)?;
    let job = &pipeline["record-deployment"];
    assert_eq!(job["variables"]["GIT_DEPTH"], "0");
    assert_eq!(
        job["rules"][0]["if"],
        "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"
    );
    let script: Vec<&str> = job["script"]
        .as_array()
        .ok_or("script")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let run_job = |job_id: &str, sha: &str| -> Result<bool> {
        let env: BTreeMap<String, String> = [
            ("PATH", path_with(shims.path())),
            ("HOME", repo.path().display().to_string()),
            ("CI", "true".into()),
            ("GITLAB_CI", "true".into()),
            ("CI_JOB_ID", job_id.into()),
            ("CI_PROJECT_NAME", "shop".into()),
            ("CI_COMMIT_SHA", sha.into()),
            ("CI_COMMIT_SHORT_SHA", sha[..8].into()),
            ("CI_COMMIT_BRANCH", "main".into()),
            ("CI_DEFAULT_BRANCH", "main".into()),
            ("SIDELIGHT_URL", agent.url("")),
            ("SIDELIGHT_TOKEN", TOKEN.into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for line in &script {
            if !bash(line, repo.path(), &env)? {
                return Ok(false);
            }
        }
        Ok(true)
    };
    assert!(run_job("4242", &head)?);
    // Two more commits, deployed by the next pipeline: both are its changes.
    let t = now()?;
    for (file, at) in [("c.py", t - 1800), ("d.py", t - 600)] {
        std::fs::write(repo.path().join(file), "print(2)\n")?;
        git(repo.path(), &["add", file], None)?;
        git(repo.path(), &["commit", "-q", "-m", file], Some(at))?;
    }
    let next = git(repo.path(), &["rev-parse", "HEAD"], None)?;
    assert!(run_job("4243", &next)?);
    let latest = api(&agent, "/api/v1/deployments?service=shop")?;
    assert_eq!(
        latest["deployments"][0]["id"], "gitlab-job-4243/shop/production",
        "{latest}"
    );
    assert_eq!(latest["deployments"][0]["version"], &next[..8]);
    let report = api(&agent, "/api/v1/dora?service=shop")?;
    let row = &report["services"][0];
    assert_eq!(
        (row["deployments"].as_u64(), row["changes"].as_u64()),
        (Some(2), Some(3)),
        "{row}"
    );
    Ok(())
}

#[test]
fn curl_recipes_record_a_deployment_and_an_incident() -> Result {
    let agent = hub()?;
    let dir = tempfile::tempdir()?;
    let env: BTreeMap<String, String> = [
        ("PATH", std::env::var("PATH").unwrap_or_default()),
        ("SIDELIGHT_URL", agent.url("")),
        ("SIDELIGHT_TOKEN", TOKEN.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert!(bash(&recipe("curl-deployment")?, dir.path(), &env)?);
    assert!(bash(&recipe("curl-incidents")?, dir.path(), &env)?);
    let latest = api(&agent, "/api/v1/deployments?service=checkout")?;
    assert_eq!(latest["deployments"][0]["id"], "release-1.2.6", "{latest}");
    let report = api(&agent, "/api/v1/dora?service=checkout&window=30d")?;
    let row = &report["services"][0];
    assert_eq!(row["deployments"], 1, "{row}");
    assert_eq!(row["failed_deployments"], 1, "{row}");
    assert_eq!(row["incidents_resolved"], 1, "{row}");
    assert_eq!(row["incidents_open"], 0, "{row}");
    // The same commands without the token are refused (curl -f fails).
    let mut no_token = env.clone();
    no_token.insert("SIDELIGHT_TOKEN".into(), "wrong".into());
    assert!(!bash(&recipe("curl-incidents")?, dir.path(), &no_token)?);
    Ok(())
}

fn alertmanager_bin() -> Result<PathBuf> {
    ["prometheus-alertmanager", "alertmanager"]
        .iter()
        .map(|b| Path::new("/usr/bin").join(b))
        .find(|p| p.exists())
        .ok_or_else(|| {
            "Alertmanager is not installed: apt-get install -y prometheus-alertmanager".into()
        })
}

#[test]
fn alertmanager_receiver_opens_and_resolves_incidents() -> Result {
    let agent = hub()?;
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("sidelight-token");
    std::fs::write(&token_file, TOKEN)?;
    // The recipe, pointed at this hub and this token file, with a short group wait for a test.
    let mut cfg: Value = serde_yaml_ng::from_str(&recipe("alertmanager")?)?;
    let hook = &mut cfg["receivers"][1]["webhook_configs"][0];
    assert_eq!(
        hook["url"],
        "http://sidelight-hub:9464/webhooks/alertmanager"
    );
    hook["url"] = agent.url("/webhooks/alertmanager").into();
    hook["http_config"]["authorization"]["credentials_file"] =
        token_file.display().to_string().into();
    cfg["route"]["group_wait"] = "1s".into();
    cfg["route"]["group_interval"] = "1s".into();
    let cfg_path = dir.path().join("alertmanager.yml");
    std::fs::write(&cfg_path, serde_yaml_ng::to_string(&cfg)?)?;
    let check = Command::new("amtool")
        .args(["check-config"])
        .arg(&cfg_path)
        .output()?;
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let port = free_port();
    let _am = Proc(
        Command::new(alertmanager_bin()?)
            .arg(format!("--config.file={}", cfg_path.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let am = format!("http://127.0.0.1:{port}");
    eventually(Duration::from_secs(20), "alertmanager ready", || {
        get(&format!("{am}/-/ready"), &[])
            .ok()
            .filter(|r| r.0 == 200)
    })?;
    let t = now()?;
    let alert = |ends: Option<i64>| {
        let mut a = json!({
            "labels": {"alertname": "CheckoutErrors", "severity": "critical", "service": "checkout"},
            "annotations": {"summary": "checkout errors"},
            "startsAt": rfc3339(t - 120),
        });
        if let Some(e) = ends {
            a["endsAt"] = rfc3339(e).into();
        }
        json!([a])
    };
    let post = |body: Value| -> Result<u16> {
        let mut r = client()
            .post(&format!("{am}/api/v2/alerts"))
            .header("content-type", "application/json")
            .send(body.to_string())?;
        let _ = r.body_mut().read_to_string();
        Ok(r.status().as_u16())
    };
    assert_eq!(post(alert(None))?, 200);
    eventually(Duration::from_secs(30), "the incident opened", || {
        let r = api(&agent, "/api/v1/dora?service=checkout").ok()?;
        (r["services"][0]["incidents_open"] == 1).then_some(())
    })?;
    let end = now()?;
    assert_eq!(post(alert(Some(end)))?, 200);
    let report = eventually(Duration::from_secs(30), "the incident resolved", || {
        let r = api(&agent, "/api/v1/dora?service=checkout").ok()?;
        (r["services"][0]["incidents_resolved"] == 1).then_some(r)
    })?;
    assert_eq!(report["services"][0]["incidents_open"], 0, "{report}");
    Ok(())
}

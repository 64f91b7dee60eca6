//! DORA end to end: a scripted 30-day history posted through the real agent's HTTP API and
//! GitHub webhook, the agent restarted, then `/api/v1/dora`, `/metrics` and
//! `sidelight dora report --format json` checked against each other and against values
//! computed by hand below.

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::rfc3339;
use common::{Agent, Result, client, eventually, get, sample, sidelight_bin, signal, wait_exit};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

const TOKEN: &str = "e2e-token";
const GH_SECRET: &str = "gh-secret";
const H: i64 = 3600;
const D: i64 = 86_400;

fn post(agent: &Agent, path: &str, body: &Value) -> Result<(u16, String)> {
    let mut resp = client()
        .post(&agent.url(path))
        .header("authorization", &format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .send(body.to_string())?;
    let status = resp.status().as_u16();
    Ok((status, resp.body_mut().read_to_string()?))
}

fn github(
    agent: &Agent,
    event: &str,
    delivery: &str,
    body: &Value,
    secret: &str,
) -> Result<(u16, String)> {
    let raw = body.to_string();
    // Signed independently of the agent's code, as GitHub does: HMAC-SHA256 over the raw body.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())?;
    mac.update(raw.as_bytes());
    let sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let mut resp = client()
        .post(&agent.url("/webhooks/github"))
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", &sig)
        .header("content-type", "application/json")
        .send(raw)?;
    let status = resp.status().as_u16();
    Ok((status, resp.body_mut().read_to_string()?))
}

fn deployment(version: &str, finished: i64, commits: &[(&str, i64)], extra: Value) -> Value {
    let mut v = json!({
        "service": "api",
        "environment": "production",
        "version": version,
        "commit": commits.first().map_or("none", |c| c.0),
        "started_at": finished - 300,
        "finished_at": finished,
        "commits": commits.iter().map(|(sha, t)| json!({"sha": sha, "timestamp": t})).collect::<Vec<_>>(),
    });
    if let (Some(obj), Some(more)) = (v.as_object_mut(), extra.as_object()) {
        obj.extend(more.clone());
    }
    v
}

#[test]
fn scripted_history_survives_restart_and_every_view_agrees() -> Result {
    let t = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs())?;
    let state = tempfile::tempdir()?;
    std::fs::write(state.path().join("token"), TOKEN)?;
    std::fs::write(state.path().join("gh"), GH_SECRET)?;
    let config = format!(
        "http: {{ listen: 127.0.0.1:0, auth: {{ bearer_token_file: {0}/token }} }}\nhost: {{ enabled: false }}\nstore: {{ path: {0}/store }}\ndora:\n  enabled: true\n  webhooks:\n    github: {{ secret_file: {0}/gh }}\n",
        state.path().display()
    );
    let agent = Agent::start(&config)?;
    eventually(Duration::from_secs(10), "readyz", || {
        get(&agent.url("/readyz"), &[]).ok().filter(|r| r.0 == 200)
    })?;

    // The API needs the bearer token.
    let (status, _) = {
        let mut r = client()
            .post(&agent.url("/api/v1/deployments"))
            .send(deployment("0", t, &[], json!({})).to_string())?;
        (r.status().as_u16(), r.body_mut().read_to_string()?)
    };
    assert_eq!(status, 401);

    // History of `api` in production, T = now (days ago in comments):
    //   D1  T-28d  v1.0  commits c1 (-2h), c2 (-4h)           leads 7200, 14400
    //   D2  T-21d  v1.1  commit  c3 (-1d)                     lead 86400
    //   D3  T-14d  v1.2  commit  c4 (-6h)                     lead 21600
    //       incident I1 names D3: D3+1h .. D3+3h              recovery 3h = 10800 (from D3's finish)
    //   D4  T-14d+4h v1.3 hotfix, commit c5 (-1h)             lead 3600; blames D3; rework
    //   D5  T-6d   v1.4  commit  c6 (-8h)                     lead 28800
    //   I2  T-5d .. T-5d+30m, no deployment named             recovery 1800
    //   D6  T-2d   v1.5  commit  c7 (-3d)                     lead 259200
    //   v1.5 posted again with another id                     another event of the live version: not counted
    //   v1.6 T-1d with status failure                         not a deployment
    let d = [
        t - 28 * D,
        t - 21 * D,
        t - 14 * D,
        t - 14 * D + 4 * H,
        t - 6 * D,
        t - 2 * D,
    ];
    let posts = [
        deployment(
            "1.0",
            d[0],
            &[("c1", d[0] - 2 * H), ("c2", d[0] - 4 * H)],
            json!({"id": "D1"}),
        ),
        // RFC 3339 times are accepted as well as unix seconds.
        deployment(
            "1.1",
            d[1],
            &[("c3", d[1] - D)],
            json!({"id": "D2", "finished_at": rfc3339(d[1])}),
        ),
        deployment("1.2", d[2], &[("c4", d[2] - 6 * H)], json!({"id": "D3"})),
        deployment(
            "1.3",
            d[3],
            &[("c5", d[3] - H)],
            json!({"id": "D4", "kind": "hotfix"}),
        ),
        deployment("1.4", d[4], &[("c6", d[4] - 8 * H)], json!({"id": "D5"})),
        deployment("1.5", d[5], &[("c7", d[5] - 3 * D)], json!({"id": "D6"})),
    ];
    for p in &posts {
        let (status, body) = post(&agent, "/api/v1/deployments", p)?;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = post(
        &agent,
        "/api/v1/deployments",
        &deployment("1.5", d[5], &[], json!({"id": "D6-again"})),
    )?;
    // A new delivery id is a new event (201), but the live version again is no new deployment.
    assert_eq!(
        (status, body.contains("\"new\":true")),
        (201, true),
        "{body}"
    );
    let (status, _) = post(
        &agent,
        "/api/v1/deployments",
        &deployment("1.6", t - D, &[], json!({"status": "failure"})),
    )?;
    assert_eq!(status, 201);
    let (status, body) = post(
        &agent,
        "/api/v1/deployments",
        &json!({"service": "api", "finished_at": "yesterday"}),
    )?;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("finished_at"), "{body}");

    for inc in [
        json!({"action": "open", "id": "I1", "service": "api", "started_at": d[2] + H, "deployment_id": "D3"}),
        json!({"action": "resolve", "id": "I1", "resolved_at": d[2] + 3 * H}),
        json!({"action": "open", "id": "I2", "service": "api", "started_at": t - 5 * D}),
        json!({"action": "resolve", "id": "I2", "resolved_at": t - 5 * D + 1800}),
    ] {
        let (status, body) = post(&agent, "/api/v1/incidents", &inc)?;
        assert_eq!(status, 201, "{inc}: {body}");
    }

    // GitHub: a push to octo/web (commit w1 at T-3h), then a successful deployment of web at
    // T-1h links it: web has 1 deployment with lead time 2h. Redelivery counts once.
    let repo = json!({"name": "web", "full_name": "octo/web", "default_branch": "main"});
    let push = json!({"ref": "refs/heads/main", "repository": repo,
        "commits": [{"id": "w1", "timestamp": rfc3339(t - 3 * H), "message": "fix"}]});
    assert_eq!(github(&agent, "push", "g-1", &push, GH_SECRET)?.0, 202);
    let status_ev = json!({"action": "created", "repository": repo,
        "deployment_status": {"state": "success", "created_at": rfc3339(t - H)},
        "deployment": {"id": 77, "sha": "w1", "environment": "production", "created_at": rfc3339(t - H - 300)}});
    let (status, body) = github(&agent, "deployment_status", "g-2", &status_ev, GH_SECRET)?;
    assert_eq!(status, 202, "{body}");
    assert!(body.contains("\"deployment_new\":true"), "{body}");
    let (status, body) = github(&agent, "deployment_status", "g-2", &status_ev, GH_SECRET)?;
    assert_eq!((status, body.contains("duplicate")), (202, true), "{body}");
    assert_eq!(
        github(&agent, "deployment_status", "g-3", &status_ev, "wrong")?.0,
        401
    );
    assert_eq!(
        github(&agent, "ping", "g-4", &json!({"zen": "hi"}), GH_SECRET)?.0,
        202
    );

    // Restart on the same store.
    signal(&agent.proc.0, 15);
    let mut agent = agent;
    wait_exit(&mut agent.proc.0, Duration::from_secs(10)).ok_or("agent did not stop")?;
    drop(agent);
    let agent = Agent::start(&config)?;
    eventually(Duration::from_secs(10), "readyz after restart", || {
        get(&agent.url("/readyz"), &[]).ok().filter(|r| r.0 == 200)
    })?;
    let auth = format!("Bearer {TOKEN}");
    let headers = [("authorization", auth.as_str())];

    // 30d window, by hand: 6 deployments → 0.2/day; lead times sorted 3600, 7200, 14400,
    // 21600, 28800, 86400, 259200 → median 21600; failed: D3 only → 1/6; recovery 1800 and
    // 10800 → median 6300; rework: D4 (hotfix) → 1/6.
    let (status, _, body) = get(&agent.url("/api/v1/dora?service=api&window=30d"), &headers)?;
    assert_eq!(status, 200, "{body}");
    let api: Value = serde_json::from_str(&body)?;
    let row = &api["services"][0];
    let close = |v: &Value, want: f64| (v.as_f64().unwrap_or(f64::NAN) - want).abs() < 1e-9;
    assert_eq!(row["service"], "api");
    assert_eq!(row["deployments"], 6, "{row}");
    assert!(close(&row["deployment_frequency_per_day"], 0.2), "{row}");
    assert_eq!(row["changes"], 7);
    assert!(close(&row["lead_time_median_seconds"], 21600.0), "{row}");
    assert_eq!(row["failed_deployments"], 1);
    assert!(close(&row["change_fail_rate"], 1.0 / 6.0), "{row}");
    assert_eq!(row["incidents_resolved"], 2);
    assert!(close(&row["recovery_time_median_seconds"], 6300.0), "{row}");
    assert_eq!(row["rework_deployments"], 1);
    assert!(close(&row["rework_rate"], 1.0 / 6.0), "{row}");

    // 7d window, by hand: D5, D6 → 2/7 per day; leads 28800, 259200 → median 144000;
    // no failure; recovery: I2 only → 1800; no rework.
    let (_, _, body) = get(&agent.url("/api/v1/dora?service=api&window=7d"), &headers)?;
    let w7: Value = serde_json::from_str(&body)?;
    let r7 = &w7["services"][0];
    assert_eq!(r7["deployments"], 2, "{r7}");
    assert!(close(&r7["lead_time_median_seconds"], 144_000.0), "{r7}");
    assert!(close(&r7["change_fail_rate"], 0.0), "{r7}");
    assert!(close(&r7["recovery_time_median_seconds"], 1800.0), "{r7}");

    // web, from the webhooks: 1 deployment, lead 2h.
    let (_, _, body) = get(&agent.url("/api/v1/dora?service=web&window=30d"), &headers)?;
    let web: Value = serde_json::from_str(&body)?;
    assert_eq!(web["services"][0]["deployments"], 1, "{web}");
    assert!(
        close(&web["services"][0]["lead_time_median_seconds"], 7200.0),
        "{web}"
    );

    // /metrics agrees, and the all-time counters survived the restart.
    let (status, _, metrics) = get(&agent.url("/metrics"), &headers)?;
    assert_eq!(status, 200);
    let m = |name: &str, labels: &str| sample(&metrics, name, labels);
    let api_labels = "service=\"api\",environment=\"production\"";
    let w30 = format!("{api_labels},window=\"30d\"");
    assert_eq!(
        m(
            "dora_deployments_total",
            &format!("{api_labels},status=\"success\"")
        ),
        Some(6.0),
        "{metrics}"
    );
    assert_eq!(
        m(
            "dora_deployments_total",
            &format!("{api_labels},status=\"failure\"")
        ),
        Some(1.0)
    );
    assert_eq!(m("dora_change_failures_total", api_labels), Some(1.0));
    assert_eq!(m("dora_rework_deployments_total", api_labels), Some(1.0));
    assert_eq!(m("dora_lead_time_seconds_count", api_labels), Some(7.0));
    assert_eq!(m("dora_lead_time_seconds_sum", api_labels), Some(421_200.0));
    assert_eq!(m("dora_recovery_time_seconds_count", api_labels), Some(2.0));
    assert_eq!(
        m("dora_recovery_time_seconds_sum", api_labels),
        Some(12_600.0)
    );
    let near = |v: Option<f64>, want: f64| v.is_some_and(|v| (v - want).abs() < 1e-9);
    assert!(
        near(m("dora_deployment_frequency_per_day", &w30), 0.2),
        "{metrics}"
    );
    assert!(near(m("dora_lead_time_median_seconds", &w30), 21_600.0));
    assert!(near(m("dora_change_failure_ratio", &w30), 1.0 / 6.0));
    assert!(near(m("dora_recovery_time_median_seconds", &w30), 6300.0));
    assert!(near(m("dora_rework_ratio", &w30), 1.0 / 6.0));
    assert!(near(
        m(
            "dora_deployment_frequency_per_day",
            &format!("{api_labels},window=\"7d\"")
        ),
        2.0 / 7.0
    ));
    // 2023 tiers on the 30d window: lead 6h < 1 day → elite; recovery 1.75h < 1 day → high;
    // change fail 16.7 % > 15 % → low.
    for (metric, level) in [
        ("lead_time", "elite"),
        ("recovery_time", "high"),
        ("change_fail_rate", "low"),
    ] {
        let labels = format!("{api_labels},metric=\"{metric}\",level=\"{level}\"");
        assert_eq!(
            m("dora_performance_level", &labels),
            Some(1.0),
            "{metric}: {metrics}"
        );
    }

    // The CLI reads the store directly and prints the same report.
    let out = Command::new(sidelight_bin())
        .args(["dora", "report", "--config"])
        .arg(&agent.config_path)
        .args(["--window", "30d", "--service", "api", "--format", "json"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(cli["services"], api["services"]);
    let table = Command::new(sidelight_bin())
        .args(["dora", "report", "--config"])
        .arg(&agent.config_path)
        .output()?;
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("api") && table.contains("16.7%"), "{table}");

    // `sidelight deploy` posts to the running agent.
    let out = Command::new(sidelight_bin())
        .args([
            "deploy",
            "--service",
            "cli",
            "--version",
            "9",
            "--commit",
            "abc",
            "--url",
        ])
        .arg(agent.url(""))
        .arg("--token-file")
        .arg(state.path().join("token"))
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, _, body) = get(&agent.url("/api/v1/dora?service=cli"), &headers)?;
    assert!(body.contains("\"deployments\":1"), "{body}");
    Ok(())
}

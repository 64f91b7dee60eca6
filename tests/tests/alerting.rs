//! End to end: the real agent evaluates a rule over its own metrics, posts the alert to a
//! loopback fake Slack Web API (the harness's `ChatPeers`: bearer token, Block Kit shape,
//! 1 message/s per channel, `ok`/`ts`/`channel` answers), does not
//! resend it after a restart, lists it on `/api/v1/alerts`, and answers signed ChatOps commands
//! (refusing unsigned ones with 401).

mod common;

use std::time::Duration;

use common::{Agent, Result, eventually, get, workspace};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const TOKEN: &str = "xoxb-42-e2e-token";
const SIGNING: &str = "e2e-signing-secret";

/// The loopback Slack Web API of the shared harness (token, Block Kit shape, 1 message/s).
fn fake_slack() -> Result<common::ChatPeers> {
    common::ChatPeers::start(common::ChatSecrets {
        slack_token: TOKEN.into(),
        hook_token: "unused".into(),
        hook_hmac: "unused".into(),
    })
}

fn config(api: &str) -> String {
    format!(
        r##"
http: {{ listen: "127.0.0.1:0" }}
host: {{ interval: 1s }}
store: {{ path: "{{dir}}/data" }}
logs: []
alerts:
  evaluation_interval: 1s
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 4h
  groups:
    - name: agent
      rules:
        - alert: AgentRunning
          expr: sidelight_build_info > 0
          labels: {{ severity: warning, service: sidelight }}
          annotations:
            summary: "build info is {{{{ $value }}}}"
notifiers:
  slack:
    token_file: slack-token
    channel: "#alerts"
    api_url: "{api}"
    signing_secret_file: slack-signing
"##
    )
}

fn signed_command(agent: &Agent, text: &str, secret: &str) -> Result<(u16, String)> {
    let body = format!(
        "command=%2Fsidelight&text={}&user_name=ana",
        text.replace(' ', "+")
    );
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        .to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())?;
    mac.update(format!("v0:{ts}:{body}").as_bytes());
    let sig = format!("v0={}", hex::encode(mac.finalize().into_bytes()));
    let mut resp = common::client()
        .post(&agent.url("/chatops/slack/commands"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", &ts)
        .header("x-slack-signature", &sig)
        .send(body)?;
    Ok((resp.status().as_u16(), resp.body_mut().read_to_string()?))
}

#[test]
fn alert_reaches_slack_once_across_a_restart_and_chatops_answers() -> Result {
    let chat = fake_slack()?;
    let api = chat.slack_api();
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("slack-token"), format!("{TOKEN}\n"))?;
    std::fs::write(dir.path().join("slack-signing"), SIGNING)?;
    let agent = Agent::start_in(dir, &config(&api))?;
    eventually(Duration::from_secs(20), "the alert in fake Slack", || {
        (chat.seen().posts.len() == 1).then_some(())
    })?;
    {
        let s = chat.seen();
        let post = s.posts[0].1.to_string();
        assert!(post.contains("AgentRunning"), "{post}");
        assert!(post.contains("sidelight_ack"), "{post}");
        assert_eq!(s.posts[0].1["channel"], "#alerts");
        assert!(s.refused.is_empty(), "{:?}", s.refused);
    }
    let (status, _, body) = get(&agent.url("/api/v1/alerts"), &[])?;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(v["data"]["alerts"][0]["state"], "firing", "{body}");

    // ChatOps: a signed status command lists the alert; an unsigned or wrongly signed one is 401.
    let (status, body) = signed_command(&agent, "status", SIGNING)?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("AgentRunning"), "{body}");
    let (status, _) = signed_command(&agent, "status", "wrong-secret")?;
    assert_eq!(status, 401);
    let resp = common::client()
        .post(&agent.url("/chatops/slack/commands"))
        .send("text=status")?;
    assert_eq!(resp.status().as_u16(), 401);

    // Restart: the alert is still firing and its message was sent, so nothing is resent.
    let Agent { proc, dir, .. } = agent;
    common::signal(&proc.0, 15);
    let mut proc = proc;
    assert!(common::wait_exit(&mut proc.0, Duration::from_secs(15)).is_some());
    let agent = Agent::start_in(dir, &config(&api))?;
    std::thread::sleep(Duration::from_secs(5));
    let (_, _, body) = get(&agent.url("/api/v1/alerts"), &[])?;
    assert!(body.contains("\"firing\""), "{body}");
    let (_, _, metrics) = get(&agent.url("/metrics"), &[])?;
    assert!(
        common::sample(&metrics, "sidelight_alert_evaluations_total", "").unwrap_or(0.0) >= 3.0,
        "the restarted agent evaluates"
    );
    let s = chat.seen();
    assert_eq!(s.posts.len(), 1, "resent after the restart: {:?}", s.posts);
    assert!(s.updates.is_empty());
    Ok(())
}

/// A configuration still written in the agent's removed rule dialect is refused by the real
/// `check-config` (exit 64, nothing bound), naming the old keys and printing the Prometheus rule
/// to write instead — never silently ignored.
#[test]
fn check_config_refuses_the_removed_rule_dialect_with_the_rule_to_write() -> Result {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("old.yaml");
    std::fs::write(
        &path,
        r#"
alerts:
  rules:
    - name: AgentRunning
      expr: 'sidelight_build_info'
      threshold: 0
      severity: warning
      summary: "build info is {{ $value }}"
"#,
    )?;
    let out = std::process::Command::new(common::sidelight_bin())
        .arg("check-config")
        .arg(&path)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(64), "{text}");
    for want in [
        "alerts.rules: is no longer read",
        "threshold",
        "alerts.groups",
        "alerts.rule_files",
        "alerts.rules[0]: write instead",
        "alert: AgentRunning",
        "sidelight_build_info > 0",
        "severity: warning",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    Ok(())
}

/// "A new exception type since the last deploy" end to end with the shipped rule and the
/// external labels: the agent loads `alerts/sidelight-alerts.yaml` unchanged, a deployment of
/// `checkout` is recorded through the hub's API, then the `checkout` log shows an exception type
/// never seen before; `SidelightNewExceptionSinceDeploy` fires and reaches the webhook (bearer
/// and signature checked by the loopback peer) with `alerts.external_labels` attached, its
/// runbook link built from `$externalLabels.runbook_base`, and `externalURL` from
/// `alerts.external_url`; `/api/v1/alerts` shows the rule's labels without the external ones.
#[test]
fn new_exception_since_deploy_fires_from_the_shipped_rule_with_external_labels() -> Result {
    let chat = common::ChatPeers::start(common::ChatSecrets {
        slack_token: "unused".into(),
        hook_token: "hook-token-19".into(),
        hook_hmac: "hook-hmac-19".into(),
    })?;
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("hook-token"), "hook-token-19")?;
    std::fs::write(dir.path().join("hook-hmac"), "hook-hmac-19")?;
    std::fs::create_dir(dir.path().join("logs"))?;
    let log = dir.path().join("logs/checkout.log");
    std::fs::write(
        &log,
        "{\"levelname\": \"INFO\", \"name\": \"app\", \"message\": \"started\"}\n",
    )?;
    let config = format!(
        r##"
http: {{ listen: "127.0.0.1:0" }}
host: {{ interval: 1s }}
store: {{ path: "{{dir}}/data" }}
dora: {{ enabled: true }}
logs:
  - {{ source: checkout, include: ["{{dir}}/logs/*.log"], tail: {{ scan_interval: 200ms }} }}
alerts:
  evaluation_interval: 1s
  group_wait: 0s
  group_interval: 1s
  rule_files: ["{alerts}/sidelight-alerts.yaml"]
  external_labels: {{ runbook_base: "https://runbooks.example/ops", cluster: e2e }}
  external_url: "https://sidelight.example:9464/"
notifiers:
  hook:
    type: webhook
    url: "{hook}"
    bearer_token_file: hook-token
    hmac_secret_file: hook-hmac
"##,
        alerts = workspace().join("alerts").display(),
        hook = chat.hook_url(),
    );
    let agent = Agent::start_in(dir, &config)?;

    // The deployment, then wait until the rules can see it.
    let finished = common::post_deployment(&agent, "checkout", "3.1.0", "0123456789ab", 3600)?;
    eventually(
        Duration::from_secs(20),
        "the last deployment on /metrics",
        || {
            (agent.metric(
                "dora_last_successful_deployment_timestamp_seconds",
                "service=\"checkout\"",
            ) == finished as f64)
                .then_some(())
        },
    )?;
    let seen = |chat: &common::ChatPeers| {
        chat.seen()
            .hooks
            .iter()
            .flat_map(|h| h["alerts"].as_array().cloned().unwrap_or_default())
            .find(|a| a["labels"]["alertname"] == "SidelightNewExceptionSinceDeploy")
    };
    std::thread::sleep(Duration::from_secs(2));
    assert!(seen(&chat).is_none(), "fired before any exception");

    // A new exception type in checkout's log.
    let mut f = std::fs::OpenOptions::new().append(true).open(&log)?;
    std::io::Write::write_all(
        &mut f,
        b"{\"levelname\": \"ERROR\", \"name\": \"app\", \"message\": \"charge failed\", \"exc_info\": \"Traceback (most recent call last):\\n  File \\\"app.py\\\", line 3, in charge\\nValueError: amount\"}\n",
    )?;
    drop(f);
    let alert = eventually(Duration::from_secs(30), "the alert at the webhook", || {
        seen(&chat)
    })
    .map_err(|e| {
        format!(
            "{e}; refused: {:?}; agent: {:?}",
            chat.seen().refused,
            agent.log_lines()
        )
    })?;
    assert_eq!(alert["status"], "firing", "{alert}");
    let labels = &alert["labels"];
    assert_eq!(labels["exception"], "ValueError", "{alert}");
    assert_eq!(labels["service"], "checkout", "{alert}");
    assert_eq!(labels["severity"], "warning", "{alert}");
    assert_eq!(
        labels["cluster"], "e2e",
        "external labels attached: {alert}"
    );
    assert_eq!(labels["runbook_base"], "https://runbooks.example/ops");
    assert_eq!(
        alert["annotations"]["runbook_url"],
        "https://runbooks.example/ops/runbooks.md#sidelightnewexceptionsincedeploy"
    );
    assert!(
        alert["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("New exception ValueError in checkout")),
        "{alert}"
    );
    let hook = chat
        .seen()
        .hooks
        .iter()
        .find(|h| h.to_string().contains("SidelightNewExceptionSinceDeploy"))
        .cloned()
        .ok_or("no hook")?;
    assert_eq!(hook["externalURL"], "https://sidelight.example:9464");
    assert!(chat.seen().refused.is_empty(), "{:?}", chat.seen().refused);

    // Prometheus's API shape: the rule's labels only.
    let (status, _, body) = get(&agent.url("/api/v1/alerts"), &[])?;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body)?;
    let listed = v["data"]["alerts"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|x| x["labels"]["alertname"] == "SidelightNewExceptionSinceDeploy")
        })
        .cloned()
        .ok_or(format!("not listed: {body}"))?;
    assert!(listed["labels"].get("cluster").is_none(), "{listed}");
    assert_eq!(listed["state"], "firing");
    Ok(())
}

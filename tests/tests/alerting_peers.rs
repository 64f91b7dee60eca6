//! End to end with real peers: a FastAPI service instrumented with the OpenTelemetry SDK sends
//! its spans to the agent over OTLP/gRPC; a multi-window burn-rate rule on
//! `traces_span_metrics_calls_total` fires when the service starts failing and resolves when it
//! recovers, and the loopback Slack Web API (token, Block Kit shape, 1 message/s per channel with
//! 429 + Retry-After) and Teams Workflows endpoint (Adaptive Card 1.4, 202) receive it. Then
//! the generic webhook (bearer token + HMAC signature verified), deploy notices posted through
//! the hub's API, a DORA digest on a short schedule, and ChatOps over HTTP: `/sidelight dora`
//! and the Ack / Silence 1h buttons as Slack sends them (a signed `payload=` form field).

mod common;

use std::time::Duration;

use common::{
    Agent, ChatPeers, ChatSecrets, Result, Traffic, eventually, free_port, get, slack_signature,
    start_otel_service,
};

const SLACK_TOKEN: &str = "xoxb-42-peers-token";
const SIGNING: &str = "peers-signing-secret";
const HOOK_TOKEN: &str = "hook-bearer-7f3a";
const HOOK_HMAC: &str = "hook-hmac-key-19c2";

fn peers() -> Result<ChatPeers> {
    ChatPeers::start(ChatSecrets {
        slack_token: SLACK_TOKEN.into(),
        hook_token: HOOK_TOKEN.into(),
        hook_hmac: HOOK_HMAC.into(),
    })
}

fn secrets(dir: &std::path::Path, teams_url: &str) -> Result {
    std::fs::write(dir.join("slack-token"), format!("{SLACK_TOKEN}\n"))?;
    std::fs::write(dir.join("slack-signing"), SIGNING)?;
    std::fs::write(dir.join("teams-url"), teams_url)?;
    std::fs::write(dir.join("hook-token"), HOOK_TOKEN)?;
    std::fs::write(dir.join("hook-hmac"), HOOK_HMAC)?;
    Ok(())
}

/// Posts a signed Slack request (form body) to a ChatOps route; (status, body).
fn signed(agent: &Agent, route: &str, body: &str) -> Result<(u16, String)> {
    let (ts, sig) = slack_signature(SIGNING, body);
    let mut resp = common::client()
        .post(&agent.url(route))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", &ts)
        .header("x-slack-signature", &sig)
        .send(body.to_owned())?;
    Ok((resp.status().as_u16(), resp.body_mut().read_to_string()?))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Top-level channel messages (not thread replies).
fn top_level(posts: &[(std::time::Instant, serde_json::Value)]) -> Vec<serde_json::Value> {
    posts
        .iter()
        .filter(|(_, v)| v.get("thread_ts").is_none())
        .map(|(_, v)| v.clone())
        .collect()
}

/// Checkout's server-span error ratio over `window`, with `service` copied from `service_name`
/// (the label the default `group_by` and DORA incidents read).
fn error_ratio(window: &str) -> String {
    let calls =
        r#"traces_span_metrics_calls_total{service_name="checkout",span_kind="SPAN_KIND_SERVER""#;
    format!(
        r#"label_replace(sum by (service_name) (rate({calls},status_code="STATUS_CODE_ERROR"}}[{window}])) / sum by (service_name) (rate({calls}}}[{window}])), "service", "$1", "service_name", "(.+)")"#
    )
}

#[test]
fn burn_rate_alert_from_a_real_python_service_fires_and_resolves_in_slack_and_teams() -> Result {
    let chat = peers()?;
    let dir = tempfile::tempdir()?;
    secrets(dir.path(), &chat.teams_url())?;
    let (grpc, http) = (free_port(), free_port());
    // Burn rates over short windows so the test takes seconds: a 99 % objective (1 % budget),
    // a fast pair (20 s / 4 s above 10x: critical) and a slower one (40 s / 8 s above 5x:
    // warning), written as Prometheus rules (multi-window multi-burn-rate, as the SRE workbook
    // and the shipped alerts/ rules). Both alerts land in one group (alertname + service).
    let config = format!(
        r##"
http: {{ listen: "127.0.0.1:0" }}
host: {{ interval: 1s }}
store: {{ path: "{{dir}}/data" }}
logs: []
otlp:
  grpc: 127.0.0.1:{grpc}
  http: 127.0.0.1:{http}
alerts:
  evaluation_interval: 1s
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 4h
  routes:
    - {{ match: ['alertname="CheckoutErrorBudget"'], receiver: teams, continue: true }}
    - {{ match: ['alertname="CheckoutErrorBudget"'], receiver: slack }}
  groups:
    - name: checkout-slo
      rules:
        # Checkout's error ratio over each window, as the shipped SLO recording rules have it.
        - {{ record: "service:checkout_error_ratio:rate20s", expr: '{r20}' }}
        - {{ record: "service:checkout_error_ratio:rate4s", expr: '{r4}' }}
        - {{ record: "service:checkout_error_ratio:rate40s", expr: '{r40}' }}
        - {{ record: "service:checkout_error_ratio:rate8s", expr: '{r8}' }}
        # Both windows of a pair above factor x the budget (1 %): the fast pair pages.
        - alert: CheckoutErrorBudget
          expr: |
            service:checkout_error_ratio:rate20s > 10 * 0.01
            and service:checkout_error_ratio:rate4s > 10 * 0.01
          for: 2s
          labels: {{ severity: critical }}
          annotations:
            summary: "{{{{ $labels.service }}}} burns its error budget: {{{{ $value | humanizePercentage }}}} of calls fail"
            runbook_url: https://runbooks.example/slo
        - alert: CheckoutErrorBudget
          expr: |
            service:checkout_error_ratio:rate40s > 5 * 0.01
            and service:checkout_error_ratio:rate8s > 5 * 0.01
          for: 2s
          labels: {{ severity: warning }}
          annotations:
            summary: "{{{{ $labels.service }}}} burns its error budget: {{{{ $value | humanizePercentage }}}} of calls fail"
            runbook_url: https://runbooks.example/slo
notifiers:
  slack:
    token_file: slack-token
    channel: "#alerts"
    api_url: "{api}"
    signing_secret_file: slack-signing
  teams:
    webhook_url_file: teams-url
"##,
        api = chat.slack_api(),
        r20 = error_ratio("20s"),
        r4 = error_ratio("4s"),
        r40 = error_ratio("40s"),
        r8 = error_ratio("8s"),
    );
    let agent = Agent::start_in(dir, &config)?;
    let port = free_port();
    let _service = start_otel_service(
        "checkout",
        port,
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{grpc}"),
            ),
        ],
    )?;

    // Steady traffic (about 25 requests/s); while `failing`, every other request is a 500.
    let traffic = Traffic::start(port);
    // Healthy first: span metrics arrive, nothing fires.
    eventually(Duration::from_secs(20), "span metrics for checkout", || {
        (agent.metric(
            "traces_span_metrics_calls_total",
            "service_name=\"checkout\"",
        ) >= 20.0)
            .then_some(())
    })?;
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        chat.seen().posts.is_empty(),
        "alerted while healthy: {:?}",
        chat.seen().posts
    );

    traffic.set_failing(true);
    let fired = eventually(Duration::from_secs(30), "the alert in fake Slack", || {
        top_level(&chat.seen().posts).into_iter().next()
    })
    .map_err(|e| format!("{e}; agent: {:?}", agent.log_lines()))?;
    let text = fired.to_string();
    assert!(text.contains("CheckoutErrorBudget"), "{text}");
    assert!(text.contains("checkout"), "{text}");
    assert!(text.contains("sidelight_ack"), "{text}");
    assert!(text.contains("https://runbooks.example/slo"), "{text}");
    assert_eq!(fired["channel"], "#alerts");
    eventually(Duration::from_secs(15), "the alert in fake Teams", || {
        chat.seen()
            .teams
            .iter()
            .any(|c| c.to_string().contains("CheckoutErrorBudget"))
            .then_some(())
    })?;
    let (_, _, alerts) = get(&agent.url("/api/v1/alerts"), &[])?;
    let v: serde_json::Value = serde_json::from_str(&alerts)?;
    assert!(
        v["data"]["alerts"].as_array().is_some_and(|a| a
            .iter()
            .any(|x| { x["state"] == "firing" && x["labels"]["severity"] == "critical" })),
        "{alerts}"
    );

    // Recovery: once the short windows hold no errors, the alerts resolve and the original
    // message is updated in place.
    traffic.set_failing(false);
    let resolved = eventually(Duration::from_secs(40), "the resolving chat.update", || {
        chat.seen()
            .updates
            .iter()
            .rev()
            .find(|u| u.to_string().contains("RESOLVED"))
            .cloned()
    })
    .map_err(|e| format!("{e}; agent: {:?}", agent.log_lines()))?;
    eventually(
        Duration::from_secs(15),
        "the resolved card in Teams",
        || {
            chat.seen()
                .teams
                .iter()
                .any(|c| c["attachments"][0]["content"]["body"][0]["inlines"][0]["color"] == "good")
                .then_some(())
        },
    )?;
    assert!(traffic.stop() > 100);

    let seen = chat.seen();
    // One grouped message in the channel; every later change is an update of it (or a reply in
    // its thread), never a second top-level message.
    let tops = top_level(&seen.posts);
    assert_eq!(tops.len(), 1, "{tops:?}");
    let first_ts = "1700000000.000001";
    assert_eq!(resolved["ts"], first_ts);
    assert!(seen.updates.iter().all(|u| u["ts"] == first_ts));
    assert!(
        seen.posts
            .iter()
            .skip(1)
            .all(|(_, p)| p["thread_ts"] == first_ts),
        "{:?}",
        seen.posts
    );
    // Resolved messages carry no Ack / Silence buttons.
    assert!(!resolved.to_string().contains("sidelight_ack"));
    // The peers' checks: nothing was refused, and accepted posts were >= 1 s apart.
    assert!(seen.refused.is_empty(), "{:?}", seen.refused);
    for w in seen.posts.windows(2) {
        assert!(w[1].0.duration_since(w[0].0) >= Duration::from_secs(1));
    }
    // Teams: every card passed the Adaptive Card check; the first is the critical one.
    assert_eq!(
        seen.teams[0]["attachments"][0]["content"]["body"][0]["inlines"][0]["color"],
        "attention"
    );
    let report = common::check_teams_cards_with_node(&seen.teams_raw)?;
    assert!(report.contains(" 0 failed"), "{report}");
    drop(seen);
    assert_eq!(
        agent.metric("sidelight_notifications_failed_total", ""),
        0.0
    );
    Ok(())
}

#[test]
fn webhook_deploy_notice_digest_and_chatops_buttons_over_http() -> Result {
    let chat = peers()?;
    let dir = tempfile::tempdir()?;
    secrets(dir.path(), &chat.teams_url())?;
    let config = format!(
        r##"
http: {{ listen: "127.0.0.1:0" }}
host: {{ interval: 1s }}
store: {{ path: "{{dir}}/data" }}
logs: []
dora: {{ enabled: true }}
alerts:
  evaluation_interval: 1s
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 4h
  routes:
    - {{ match: ['alertname="AgentRunning"'], receiver: hook, continue: true }}
    - {{ match: ['alertname="AgentRunning"'], receiver: slack }}
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
    deploy_notices: true
    digest: 6s
  hook:
    type: webhook
    url: "{hook}"
    bearer_token_file: hook-token
    hmac_secret_file: hook-hmac
"##,
        api = chat.slack_api(),
        hook = chat.hook_url(),
    );
    let agent = Agent::start_in(dir, &config)?;

    // The generic webhook: bearer token and signature verified by the peer, Alertmanager's
    // webhook format (version 4) parsed by its strict model.
    let hook = eventually(Duration::from_secs(20), "the alert at the webhook", || {
        chat.seen().hooks.first().cloned()
    })
    .map_err(|e| format!("{e}; refused: {:?}", chat.seen().refused))?;
    assert_eq!(hook["version"], "4");
    assert_eq!(hook["status"], "firing");
    assert_eq!(hook["receiver"], "hook");
    assert_eq!(hook["groupLabels"]["alertname"], "AgentRunning");
    assert_eq!(hook["commonLabels"]["service"], "sidelight");
    assert_eq!(hook["truncatedAlerts"], 0);
    let a = &hook["alerts"][0];
    assert_eq!(a["status"], "firing");
    assert_eq!(a["labels"]["alertname"], "AgentRunning");
    assert_eq!(a["labels"]["severity"], "warning");
    assert_eq!(a["annotations"]["summary"], "build info is 1");
    assert_eq!(a["annotations"]["value"], "1");
    assert_eq!(a["endsAt"], "0001-01-01T00:00:00Z");
    assert!(
        a["startsAt"].as_str().is_some_and(common::is_rfc3339),
        "{hook}"
    );

    // A deployment through the hub's API becomes a notice in Slack.
    let alert_post = eventually(Duration::from_secs(20), "the alert in Slack", || {
        top_level(&chat.seen().posts)
            .into_iter()
            .find(|p| p.to_string().contains("AgentRunning"))
    })?;
    common::post_deployment(&agent, "checkout", "2.7.0", "9f8e7d6c5b4a", 7200)?;
    let notice = eventually(Duration::from_secs(15), "the deploy notice", || {
        top_level(&chat.seen().posts)
            .into_iter()
            .find(|p| p.to_string().contains("Deployed checkout 2.7.0"))
    })?;
    let text = notice.to_string();
    assert!(text.contains("sha 9f8e7d6"), "{text}");
    assert!(text.contains("production"), "{text}");

    // The digest, every 6 s here: a DORA summary naming the deployed service.
    let digest = eventually(Duration::from_secs(20), "the DORA digest", || {
        top_level(&chat.seen().posts)
            .into_iter()
            .find(|p| p.to_string().contains("DORA digest") && p.to_string().contains("checkout"))
    })?;
    assert!(digest.to_string().contains("deploys/day"), "{digest}");

    // `/sidelight dora checkout 7d` over the HTTP path, signed as Slack signs it.
    let (status, body) = signed(
        &agent,
        "/chatops/slack/commands",
        "token=x&team_id=T1&command=%2Fsidelight&text=dora+checkout+7d&user_name=ana&user_id=U1",
    )?;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(v["response_type"], "ephemeral");
    let t = v["text"].as_str().unwrap_or("");
    assert!(t.starts_with("DORA over 7d"), "{t}");
    assert!(t.contains("*checkout* (production)"), "{t}");
    assert!(t.contains("deploys/day"), "{t}");

    // The buttons, as Slack sends a click: a signed form with a `payload` JSON field whose
    // action carries the value the agent put on the button.
    let key = alert_post["blocks"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["type"] == "actions"))
        .and_then(|b| b["elements"].as_array())
        .and_then(|e| e.iter().find(|e| e["action_id"] == "sidelight_ack"))
        .and_then(|e| e["value"].as_str())
        .ok_or("no Ack button value")?
        .to_owned();
    let click = |action: &str| {
        let payload = serde_json::json!({
            "type": "block_actions",
            "user": {"id": "U1", "username": "ana", "name": "ana", "team_id": "T1"},
            "api_app_id": "A1",
            "token": "legacy",
            "container": {"type": "message", "message_ts": "1700000000.000001", "channel_id": "C0ALERTS"},
            "trigger_id": "1.2.3",
            "team": {"id": "T1", "domain": "example"},
            "channel": {"id": "C0ALERTS", "name": "alerts"},
            "response_url": "https://hooks.slack.invalid/actions/T1/1/x",
            "actions": [{
                "type": "button", "action_id": action, "block_id": "b1",
                "text": {"type": "plain_text", "text": "Ack"}, "value": key,
                "action_ts": "1700000001.000001",
            }],
        });
        format!("payload={}", urlencode(&payload.to_string()))
    };
    let (status, body) = signed(
        &agent,
        "/chatops/slack/interactions",
        &click("sidelight_ack"),
    )?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("acked by ana (1 group(s))"), "{body}");
    let (status, body) = signed(
        &agent,
        "/chatops/slack/interactions",
        &click("sidelight_silence_1h"),
    )?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("for 1h by ana"), "{body}");
    let (_, _, silences) = get(&agent.url("/api/v1/silences"), &[])?;
    let v: serde_json::Value = serde_json::from_str(&silences)?;
    let s = v["silences"]
        .as_array()
        .and_then(|s| s.first())
        .ok_or(format!("no silence: {silences}"))?;
    assert_eq!(s["created_by"], "slack:ana", "{silences}");
    let m = s["matchers"].to_string();
    assert!(
        m.contains("alertname=\\\"AgentRunning\\\"") && m.contains("service=\\\"sidelight\\\""),
        "{m}"
    );
    // The same click unsigned, or signed with another secret, is refused before parsing.
    let resp = common::client()
        .post(&agent.url("/chatops/slack/interactions"))
        .header("content-type", "application/x-www-form-urlencoded")
        .send(click("sidelight_ack"))?;
    assert_eq!(resp.status().as_u16(), 401);
    let body = click("sidelight_ack");
    let (ts, _) = slack_signature(SIGNING, &body);
    let (_, wrong) = slack_signature("another-secret", &body);
    let resp = common::client()
        .post(&agent.url("/chatops/slack/interactions"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", &ts)
        .header("x-slack-signature", &wrong)
        .send(body)?;
    assert_eq!(resp.status().as_u16(), 401);

    let seen = chat.seen();
    assert!(seen.refused.is_empty(), "{:?}", seen.refused);
    assert_eq!(seen.hooks.len(), 1, "{:?}", seen.hooks);
    Ok(())
}

/// 35 span names an attacker controls (Slack mentions and a disguised link, a bare `&`, a
/// Markdown link for Teams, 4 KB values, Unicode), all firing in one group: Slack receives them
/// escaped (no markup Slack would act on, in the message, its sections or the `/sidelight
/// status` reply), Teams one card under 28 KB with "and N more" and the link to the agent's
/// alerts that Microsoft's `adaptivecards` library and the 1.4 schema model accept, and the
/// webhook Alertmanager's format with `max_alerts` applied.
#[test]
fn hostile_span_names_reach_slack_escaped_and_teams_within_28_kb() -> Result {
    let chat = peers()?;
    let dir = tempfile::tempdir()?;
    secrets(dir.path(), &chat.teams_url())?;
    let (grpc, http) = (free_port(), free_port());
    let external = "https://sidelight.example:9464";
    let config = format!(
        r##"
http: {{ listen: "127.0.0.1:0" }}
host: {{ interval: 1s }}
store: {{ path: "{{dir}}/data" }}
logs: []
otlp:
  grpc: 127.0.0.1:{grpc}
  http: 127.0.0.1:{http}
alerts:
  evaluation_interval: 1s
  group_wait: 2s
  group_interval: 1s
  repeat_interval: 4h
  group_by: [alertname]
  routes:
    - {{ match: ['alertname="SpanSeen"'], receiver: teams, continue: true }}
    - {{ match: ['alertname="SpanSeen"'], receiver: hook, continue: true }}
    - {{ match: ['alertname="SpanSeen"'], receiver: slack }}
  groups:
    - name: spans
      rules:
        - alert: SpanSeen
          expr: traces_span_metrics_calls_total > 0
          labels: {{ severity: critical }}
          annotations:
            summary: "{{{{ $labels.span_name }}}} was called"
notifiers:
  slack:
    token_file: slack-token
    channel: "#alerts"
    api_url: "{api}"
    signing_secret_file: slack-signing
  teams:
    webhook_url_file: teams-url
    external_url: "{external}"
  hook:
    type: webhook
    url: "{hook}"
    bearer_token_file: hook-token
    hmac_secret_file: hook-hmac
    max_alerts: 25
    external_url: "{external}"
"##,
        api = chat.slack_api(),
        hook = chat.hook_url(),
    );
    let agent = Agent::start_in(dir, &config)?;
    let hostile = [
        "<!channel> deploy now",
        "<!here> look",
        "ping <@U123>",
        "<https://evil.example|click here>",
        "a & b &amp; c",
        "[click](https://evil.example/md)",
    ];
    let mut names: Vec<String> = hostile.iter().map(|h| h.to_string()).collect();
    for i in 0..4 {
        names.push(format!("long-{i}-{}", "é界🔥x".repeat(1100)));
    }
    for i in names.len()..35 {
        // Sorted after the others, so the hostile and the long names are among those shown.
        names.push(format!("zz GET /api/v{i}/ünïcödé/日本"));
    }
    let spans: Vec<serde_json::Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            serde_json::json!({
                "traceId": format!("{:032x}", i + 1),
                "spanId": format!("{:016x}", i + 1),
                "name": n,
                "kind": 2,
                "startTimeUnixNano": "1700000000000000000",
                "endTimeUnixNano": "1700000000010000000",
                "status": {},
            })
        })
        .collect();
    let body = serde_json::json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "checkout"}}]},
        "scopeSpans": [{"spans": spans}],
    }]});
    let (status, answer) = common::post_json(http, "/v1/traces", &body.to_string())?;
    assert_eq!(status, 200, "{answer}");

    // Slack: one message for the group; nothing in it Slack would read as a mention or link.
    let post = eventually(Duration::from_secs(30), "the group in Slack", || {
        top_level(&chat.seen().posts)
            .into_iter()
            .find(|p| p.to_string().contains("SpanSeen"))
    })
    .map_err(|e| format!("{e}; refused: {:?}", chat.seen().refused))?;
    let text = post.to_string();
    assert!(text.contains("[FIRING:35] SpanSeen"), "{text}");
    assert!(
        chat.seen().slack_markup.is_empty(),
        "Slack would act on {:?}",
        chat.seen().slack_markup
    );
    let shown = hostile
        .iter()
        .filter(|h| {
            text.contains(
                &h.replace('&', "&amp;")
                    .replace('<', "&lt;")
                    .replace('>', "&gt;"),
            )
        })
        .count();
    assert!(shown >= 1, "no hostile name shown escaped: {text}");
    assert!(text.contains("…and 15 more"), "{text}");

    // `/sidelight status`: the reply is escaped too.
    let (status, reply) = signed(
        &agent,
        "/chatops/slack/commands",
        "token=x&team_id=T1&command=%2Fsidelight&text=status&user_name=ana&user_id=U1",
    )?;
    assert_eq!(status, 200, "{reply}");
    let v: serde_json::Value = serde_json::from_str(&reply)?;
    let t = v["text"].as_str().unwrap_or("");
    assert!(t.starts_with("35 firing"), "{t}");
    assert!(
        common::slack_markup(t).is_empty(),
        "{:?}",
        common::slack_markup(t)
    );
    for h in hostile {
        let escaped = h
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        assert!(t.contains(&escaped), "{escaped} not in {t}");
    }

    // Teams: one card under 28 KB, every text a verbatim run, the rest counted and linked.
    let card = eventually(Duration::from_secs(20), "the card in Teams", || {
        chat.seen().teams_raw.first().cloned()
    })
    .map_err(|e| format!("{e}; refused: {:?}", chat.seen().refused))?;
    assert!(card.len() < common::TEAMS_MAX_BYTES, "{} bytes", card.len());
    let v: serde_json::Value = serde_json::from_slice(&card)?;
    let c = &v["attachments"][0]["content"];
    let body = c["body"].to_string();
    assert!(body.contains("…and "), "{body}");
    // The 4 KB names are shown, shortened with an ellipsis.
    assert!(
        c["body"].as_array().is_some_and(|b| b.iter().any(|x| {
            let t = x["inlines"][0]["text"].as_str().unwrap_or("");
            t.contains("long-0-é界🔥x") && t.ends_with('…')
        })),
        "{body}"
    );
    assert!(
        c["actions"]
            .to_string()
            .contains(&format!("{external}/api/v1/alerts")),
        "{}",
        c["actions"]
    );
    assert!(
        !body.contains("\"TextBlock\""),
        "Markdown-reading blocks: {body}"
    );
    let report = common::check_teams_cards_with_node(&chat.seen().teams_raw)?;
    assert!(report.contains("1 passed, 0 failed"), "{report}");
    println!("teams card: {} bytes; {report}", card.len());

    // The webhook: Alertmanager's format (the peer parsed it strictly), max_alerts applied.
    let hook = eventually(Duration::from_secs(20), "the webhook", || {
        chat.seen().hooks.first().cloned()
    })
    .map_err(|e| format!("{e}; refused: {:?}", chat.seen().refused))?;
    assert_eq!(hook["alerts"].as_array().map(Vec::len), Some(25));
    assert_eq!(hook["truncatedAlerts"], 10);
    assert_eq!(hook["externalURL"], external);
    assert_eq!(hook["commonLabels"]["service_name"], "checkout");
    assert!(
        hook.to_string().contains("<!channel> deploy now"),
        "JSON carries values as they are"
    );

    let seen = chat.seen();
    assert!(seen.refused.is_empty(), "{:?}", seen.refused);
    drop(seen);
    assert_eq!(
        agent.metric("sidelight_notifications_failed_total", ""),
        0.0
    );
    Ok(())
}

/// A Teams card that cannot be made to fit its receiver's `max_card_bytes` (here its title
/// alone: a span name of 300 four-byte characters, grouped by span name, against the smallest
/// limit) is never posted: the loopback Teams sees no request for it, the failure is counted in
/// `sidelight_notifications_failed_total{channel="teams"}` and logged with the reason, and the
/// other group's card, which fits, is posted as usual.
#[test]
fn a_teams_card_too_large_is_counted_as_failed_and_never_sent() -> Result {
    let chat = peers()?;
    let dir = tempfile::tempdir()?;
    secrets(dir.path(), &chat.teams_url())?;
    let (grpc, http) = (free_port(), free_port());
    let config = format!(
        r##"
http: {{ listen: "127.0.0.1:0" }}
host: {{ interval: 1s }}
store: {{ path: "{{dir}}/data" }}
logs: []
otlp:
  grpc: 127.0.0.1:{grpc}
  http: 127.0.0.1:{http}
alerts:
  evaluation_interval: 1s
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 4h
  group_by: [alertname, span_name]
  routes:
    - {{ match: ['alertname="SpanSeen"'], receiver: teams }}
  groups:
    - name: spans
      rules:
        - alert: SpanSeen
          expr: traces_span_metrics_calls_total > 0
          labels: {{ severity: critical }}
          annotations:
            summary: "{{{{ $labels.span_name }}}} was called"
notifiers:
  teams:
    webhook_url_file: teams-url
    max_card_bytes: 1024
    rate_limit: 100ms
"##
    );
    let agent = Agent::start_in(dir, &config)?;
    let huge = "🔥".repeat(400);
    let spans: Vec<serde_json::Value> = ["GET /ok", huge.as_str()]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            serde_json::json!({
                "traceId": format!("{:032x}", i + 1),
                "spanId": format!("{:016x}", i + 1),
                "name": n,
                "kind": 2,
                "startTimeUnixNano": "1700000000000000000",
                "endTimeUnixNano": "1700000000010000000",
                "status": {},
            })
        })
        .collect();
    let body = serde_json::json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "checkout"}}]},
        "scopeSpans": [{"spans": spans}],
    }]});
    let (status, answer) = common::post_json(http, "/v1/traces", &body.to_string())?;
    assert_eq!(status, 200, "{answer}");

    let failed =
        |agent: &Agent| agent.metric("sidelight_notifications_failed_total", "channel=\"teams\"");
    eventually(Duration::from_secs(30), "the failure to be counted", || {
        (failed(&agent) >= 1.0).then_some(())
    })
    .map_err(|e| format!("{e}; agent said: {:?}", agent.log_lines()))?;
    // The card that fits arrives; give a wrongly posted one time to arrive too.
    eventually(Duration::from_secs(20), "the other group's card", || {
        (!chat.seen().teams_raw.is_empty()).then_some(())
    })?;
    std::thread::sleep(Duration::from_secs(2));
    let seen = chat.seen();
    assert_eq!(
        seen.teams_raw.len(),
        1,
        "only the card that fits was posted"
    );
    let posted = String::from_utf8_lossy(&seen.teams_raw[0]).into_owned();
    assert!(posted.contains("GET /ok"), "{posted}");
    assert!(!posted.contains('🔥'), "{posted}");
    assert!(
        seen.teams_raw[0].len() <= 1024,
        "{} bytes",
        seen.teams_raw[0].len()
    );
    assert!(seen.refused.is_empty(), "{:?}", seen.refused);
    let report = common::check_teams_cards_with_node(&seen.teams_raw)?;
    assert!(report.contains("1 passed, 0 failed"), "{report}");
    drop(seen);
    assert_eq!(
        agent.metric("sidelight_notifications_sent_total", "channel=\"teams\""),
        1.0
    );
    assert_eq!(
        agent.metric("sidelight_notifications_retried_total", "channel=\"teams\""),
        0.0,
        "a card that cannot fit is not retried"
    );
    let logged = agent
        .log_lines()
        .into_iter()
        .find(|l| l.contains("notification failed"))
        .ok_or("no `notification failed` in the agent's log")?;
    assert!(
        logged.contains("above the 1024-byte limit (max_card_bytes)") && logged.contains("teams"),
        "{logged}"
    );
    Ok(())
}

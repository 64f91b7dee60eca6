//! Prometheus rule files run by the real agent: the shipped `alerts/*.yaml` load
//! unchanged through `alerts.rule_files` (`sidelight check-config` passes, a broken file is
//! refused with its place); a rule written as Prometheus users write it (`rate(...) > x` with
//! `for:`) fires against a real Python service instrumented with the OpenTelemetry SDK, reaches
//! the loopback Slack, and resolves; a recording rule's series is scraped by a real Prometheus;
//! `/api/v1/rules` and `/api/v1/alerts` answer in Prometheus's shapes.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{
    Agent, ChatPeers, ChatSecrets, Prometheus, Result, Traffic, eventually, free_port, get,
    sidelight_bin, start_otel_service, workspace,
};

const SLACK_TOKEN: &str = "xoxb-19-rules-token";

fn check_config(path: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(sidelight_bin())
        .arg("check-config")
        .arg(path)
        .output()
        .expect("sidelight runs");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn shipped_rule_files_load_unchanged_through_rule_files() -> Result {
    let dir = tempfile::tempdir()?;
    // Relative to the config file: a copy of the shipped rules beside it.
    std::fs::create_dir(dir.path().join("rules"))?;
    for entry in std::fs::read_dir(workspace().join("alerts"))? {
        let p = entry?.path();
        if p.extension().is_some_and(|x| x == "yaml") {
            std::fs::copy(
                &p,
                dir.path()
                    .join("rules")
                    .join(p.file_name().unwrap_or_default()),
            )?;
        }
    }
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        "alerts:\n  rule_files: [\"rules/*.yaml\"]\n  groups:\n    - name: inline\n      rules:\n        - alert: AgentDown\n          expr: absent(sidelight_build_info)\n",
    )?;
    let (code, out) = check_config(&config);
    assert_eq!(code, Some(0), "{out}");
    // 23 alerting and 31 recording rules shipped, and the inline one.
    assert!(out.contains(" rule groups, 55 rules)"), "{out}");

    // A broken rule: refused with the file, the YAML path and the construct.
    std::fs::write(
        dir.path().join("rules/zz-broken.yaml"),
        "groups:\n  - name: broken\n    rules:\n      - record: x:max\n        expr: max_over_time(rate(x_total[5m])[1h:1m])\n",
    )?;
    let (code, out) = check_config(&config);
    assert_eq!(code, Some(64), "{out}");
    for want in ["zz-broken.yaml", "groups[0].rules[0].expr", "a subquery"] {
        assert!(out.contains(want), "missing {want:?} in {out}");
    }
    Ok(())
}

#[test]
fn a_prometheus_rule_fires_from_a_real_service_reaches_slack_resolves_and_records() -> Result {
    let chat = ChatPeers::start(ChatSecrets {
        slack_token: SLACK_TOKEN.into(),
        hook_token: "unused".into(),
        hook_hmac: "unused".into(),
    })?;
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("slack-token"), SLACK_TOKEN)?;
    std::fs::create_dir(dir.path().join("rules"))?;
    // A rule file as Prometheus users write one; short windows so the test takes seconds.
    std::fs::write(
        dir.path().join("rules/checkout.yaml"),
        r#"groups:
  - name: checkout
    interval: 1s
    rules:
      - record: service_name:traces_span_metrics_calls:rate10s
        expr: sum by (service_name) (rate(traces_span_metrics_calls_total[10s]))
      - alert: CheckoutErrors
        expr: |
          sum by (service_name) (
            rate(traces_span_metrics_calls_total{service_name="checkout",status_code="STATUS_CODE_ERROR"}[5s])
          ) > 1
        for: 2s
        labels:
          severity: critical
        annotations:
          summary: '{{ $labels.service_name }} fails {{ $value | printf "%.1f" }} requests/s'
          runbook_url: https://runbooks.example/checkout-errors
"#,
    )?;
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
  rule_files: ["rules/*.yaml"]
notifiers:
  slack:
    token_file: slack-token
    channel: "#alerts"
    api_url: "{api}"
"##,
        api = chat.slack_api(),
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
    let traffic = Traffic::start(port);
    let prom = Prometheus::start(agent.addr, None)?;

    // Healthy: the recording rule's series is on /metrics and scraped by Prometheus; no alert.
    let scraped = eventually(
        Duration::from_secs(40),
        "the recorded series in Prometheus",
        || {
            prom.query("service_name:traces_span_metrics_calls:rate10s{service_name=\"checkout\"}")
                .ok()
                .filter(|v| !v.is_empty())
        },
    )
    .map_err(|e| format!("{e}; agent: {:?}", agent.log_lines()))?;
    let rate: f64 = scraped[0]["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    assert!(rate > 5.0, "about 25 requests/s recorded, got {scraped:?}");
    assert!(chat.seen().posts.is_empty(), "alerted while healthy");

    traffic.set_failing(true);
    let fired = eventually(Duration::from_secs(30), "the alert in fake Slack", || {
        chat.seen()
            .posts
            .iter()
            .find(|(_, p)| p.to_string().contains("CheckoutErrors"))
            .map(|(_, p)| p.clone())
    })
    .map_err(|e| format!("{e}; agent: {:?}", agent.log_lines()))?;
    let text = fired.to_string();
    assert!(text.contains("checkout fails"), "{text}");
    assert!(
        text.contains("https://runbooks.example/checkout-errors"),
        "{text}"
    );
    assert_eq!(fired["channel"], "#alerts");

    // The Prometheus-shaped APIs.
    let (status, _, body) = get(&agent.url("/api/v1/alerts"), &[])?;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(v["status"], "success", "{body}");
    let alert = v["data"]["alerts"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|x| x["labels"]["alertname"] == "CheckoutErrors")
        })
        .cloned()
        .ok_or_else(|| format!("no CheckoutErrors in {body}"))?;
    assert_eq!(alert["state"], "firing", "{alert}");
    assert_eq!(alert["labels"]["severity"], "critical");
    assert!(alert["activeAt"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert!(
        alert["value"].as_str().is_some_and(|t| t.contains("e+")),
        "{alert}"
    );
    let (status, _, body) = get(&agent.url("/api/v1/rules"), &[])?;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(v["status"], "success");
    let group = &v["data"]["groups"][0];
    assert_eq!(group["name"], "checkout", "{body}");
    assert_eq!(group["interval"], 1.0);
    assert!(
        group["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("checkout.yaml"))
    );
    let rules = group["rules"].as_array().cloned().unwrap_or_default();
    assert_eq!(rules.len(), 2, "{body}");
    assert_eq!(rules[0]["type"], "recording");
    assert_eq!(rules[0]["health"], "ok");
    assert_eq!(rules[1]["type"], "alerting");
    assert_eq!(rules[1]["state"], "firing");
    assert_eq!(rules[1]["duration"], 2.0);
    assert_eq!(rules[1]["alerts"][0]["state"], "firing");

    // A restart while it fires: the alert carries on (same activeAt, still firing once the
    // restarted history has data again) and Slack gets no second message for it.
    drop(prom);
    let active_at = alert["activeAt"].clone();
    let alert_posts = |chat: &ChatPeers| {
        chat.seen()
            .posts
            .iter()
            .filter(|(_, p)| {
                p.get("thread_ts").is_none() && p.to_string().contains("CheckoutErrors")
            })
            .count()
    };
    assert_eq!(alert_posts(&chat), 1);
    let Agent { proc, dir, .. } = agent;
    common::signal(&proc.0, 15);
    let mut proc = proc;
    assert!(common::wait_exit(&mut proc.0, Duration::from_secs(15)).is_some());
    let agent = Agent::start_in(dir, &config)?;
    std::thread::sleep(Duration::from_secs(8));
    let (_, _, body) = get(&agent.url("/api/v1/alerts"), &[])?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    let after = v["data"]["alerts"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|x| x["labels"]["alertname"] == "CheckoutErrors")
        })
        .cloned()
        .ok_or_else(|| format!("no CheckoutErrors after the restart in {body}"))?;
    assert_eq!(after["state"], "firing", "{after}");
    assert_eq!(after["activeAt"], active_at, "{after}");
    assert_eq!(alert_posts(&chat), 1, "{:?}", chat.seen().posts);

    // Recovery: once the 5 s window holds no errors the alert resolves and Slack hears it.
    traffic.set_failing(false);
    eventually(
        Duration::from_secs(40),
        "the resolved message in Slack",
        || {
            let seen = chat.seen();
            seen.updates
                .iter()
                .chain(seen.posts.iter().map(|(_, p)| p))
                .any(|u| u.to_string().contains("RESOLVED"))
                .then_some(())
        },
    )
    .map_err(|e| format!("{e}; agent: {:?}", agent.log_lines()))?;
    traffic.stop();
    assert!(chat.seen().refused.is_empty(), "{:?}", chat.seen().refused);
    let (_, _, metrics) = get(&agent.url("/metrics"), &[])?;
    assert!(
        common::sample(&metrics, "sidelight_rule_history_series", "").unwrap_or(0.0) >= 1.0,
        "the rule history self-metric"
    );
    Ok(())
}

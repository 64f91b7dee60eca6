//! The whole product, end to end: a real FastAPI service (OpenTelemetry SDK traces over OTLP/gRPC
//! to the agent, structlog JSON lines with exceptions to a file the agent tails), deploy and
//! incident events posted to the agent's DORA API, the real agent (host, the service's processes
//! and its own, logs, OTLP receivers and span metrics, OTLP export to the Python sink, remote
//! write, the DORA hub) and a real Prometheus scraping it every second. Then every PromQL
//! expression of every dashboard (panel targets, annotations, variable queries), with Grafana's
//! variables substituted, must return data from that Prometheus — except the few listed in
//! `NO_DATA`, which must return nothing (so the list cannot go stale). Finally every metric family
//! the agent exposes must be named in the README's metrics reference.
//!
//! Failure paths the dashboards show are produced for real, not faked: the sink refusing some
//! requests and being down for a while (retries, permanent failures, queue refusals), remote
//! write to a port nobody listens on (drops), a checkpoint write the kernel refuses, malformed and
//! oversized log lines, a malformed OTLP request, SIGHUP reloads.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::dashboards::{dashboards, expressions, substitute, variables};
use common::{
    Agent, OtlpSink, Proc, Prometheus, Result, client, eventually, free_port, get, python_service,
    workspace,
};
use serde_json::{Value, json};

const SERVICE: &str = "checkout";
const ENVIRONMENT: &str = "production";

/// Grafana's built-in variables, sized for a test that scrapes every second for about a minute.
const BUILTINS: &[(&str, &str)] = &[
    ("__rate_interval", "10s"),
    ("__interval", "5s"),
    ("__interval_ms", "5000"),
    ("__range", "5m"),
    ("__range_s", "300"),
    ("__range_ms", "300000"),
];

/// Expressions that cannot have data here: (dashboard, place, why). Each must come back empty.
const NO_DATA: &[(&str, &str, &str)] = &[(
    "sidelight.json",
    "panel \"Processes scanned and collection errors\" target B",
    "sidelight_collection_errors_total appears only when a procfs or statvfs read fails \
         (unit-tested in collector/src/host.rs); nothing here can make the real /proc fail",
)];

/// Only when the host has no swap (this test machine has none): the swap-used series is
/// `and SwapTotal > 0` by design.
const NO_SWAP: (&str, &str) = ("host.json", "panel \"Memory used and swap used\" target B");

const HOOK_TOKEN: &str = "hook-t0ken";

/// A loopback webhook receiver that checks what a strict one would (method, path, bearer token,
/// JSON content type, the documented body shape) and answers `status` to well-formed requests
/// (401 otherwise).
struct Webhook {
    port: u16,
    received: Arc<std::sync::atomic::AtomicUsize>,
}

impl Webhook {
    fn start(status: u16) -> Result<Webhook> {
        let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = received.clone();
        let addr = common::http_server(move |req| {
            let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
            let ok = req.method == "POST"
                && req.path == "/alerts"
                && req.header("authorization") == Some(&format!("Bearer {HOOK_TOKEN}"))
                && req
                    .header("content-type")
                    .is_some_and(|t| t.starts_with("application/json"))
                && body["version"] == "4"
                && body["groupKey"].is_string()
                && body["receiver"].is_string()
                && body["alerts"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty() && a.iter().all(|x| x["startsAt"].is_string()));
            if ok {
                count.fetch_add(1, Ordering::SeqCst);
            }
            (if ok { status } else { 401 }, Vec::new(), String::new())
        })?;
        Ok(Webhook {
            port: addr.port(),
            received,
        })
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn post(url: &str, body: &Value) -> Result<(u16, String)> {
    let mut resp = client()
        .post(url)
        .header("content-type", "application/json")
        .send(body.to_string())?;
    let status = resp.status().as_u16();
    Ok((status, resp.body_mut().read_to_string()?))
}

/// The FastAPI service, its spans to the agent's OTLP/gRPC receiver, its logs to `log_file`.
fn start_service(port: u16, agent_grpc: u16, log_file: &std::path::Path) -> Result<Proc> {
    let log_file = log_file.to_string_lossy();
    python_service(
        "fullstack_service.py",
        port,
        &["--log-file", &log_file],
        &[
            ("OTEL_SERVICE_NAME", SERVICE.to_owned()),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=production".to_owned(),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{agent_grpc}"),
            ),
        ],
    )
}

/// Requests against the service until `stop`: mostly 200s, some slow, some 500s with a logged
/// ValueError, some 404s with a logged KeyError.
fn traffic(port: u16, stop: Arc<AtomicBool>) -> JoinHandle<usize> {
    std::thread::spawn(move || {
        let base = format!("http://127.0.0.1:{port}");
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let path = match n % 10 {
                3 => "/slow".to_owned(),
                5 => "/fail".to_owned(),
                8 => format!("/missing/k{}", n % 3),
                _ => format!("/items/{n}"),
            };
            let _ = get(&format!("{base}{path}"), &[]);
            std::thread::sleep(Duration::from_millis(40));
        }
        n
    })
}

/// One round of delivery history: a deployment with a commit, a failed deployment, an incident
/// it caused, a hotfix that resolves it. Two rounds make every DORA counter and histogram move
/// while Prometheus watches (a series' first sample is not an increase).
fn dora_round(agent: &Agent, round: u32) -> Result {
    let t = unix_now();
    let r = i64::from(round);
    let deployments = agent.url("/api/v1/deployments");
    let incidents = agent.url("/api/v1/incidents");
    let bodies = [
        (
            &deployments,
            json!({
                "id": format!("D{round}"), "service": SERVICE, "environment": ENVIRONMENT,
                "version": format!("1.{round}.0"), "commit": format!("c{round}"),
                "started_at": t - 120, "finished_at": t - 60,
                "commits": [{"sha": format!("c{round}"), "timestamp": t - 3600 * r}],
            }),
        ),
        (
            &deployments,
            json!({
                "id": format!("F{round}"), "service": SERVICE, "environment": ENVIRONMENT,
                "version": format!("1.{round}.0-rc"), "commit": format!("f{round}"),
                "status": "failure", "finished_at": t - 50,
            }),
        ),
        (
            &incidents,
            json!({
                "action": "open", "id": format!("I{round}"), "service": SERVICE,
                "environment": ENVIRONMENT, "started_at": t - 40,
                "deployment_id": format!("D{round}"),
            }),
        ),
        (
            &deployments,
            json!({
                "id": format!("H{round}"), "service": SERVICE, "environment": ENVIRONMENT,
                "version": format!("1.{round}.1"), "commit": format!("h{round}"),
                "kind": "hotfix", "fixes_deployment": format!("D{round}"),
                "resolves_incidents": [format!("I{round}")], "finished_at": t - 20,
                "commits": [{"sha": format!("h{round}"), "timestamp": t - 30}],
            }),
        ),
        (
            &incidents,
            json!({
                "action": "resolve", "id": format!("I{round}"), "resolved_at": t - 10,
                "resolved_by_deployment": format!("H{round}"),
            }),
        ),
    ];
    for (url, body) in bodies {
        let (status, text) = post(url, &body)?;
        assert!(
            status == 201 || status == 200,
            "POST {url} {body}: {status} {text}"
        );
    }
    Ok(())
}

/// Log lines the tailer must count as problems: malformed JSON, and a line over
/// `max_line_bytes` (truncated, the cut bytes counted as lost).
fn write_bad_log_lines(path: &std::path::Path) -> Result {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "{{\"event\": \"half a record\", \"level\": ")?;
    writeln!(
        f,
        "{{\"event\": \"{}\", \"level\": \"info\"}}",
        "x".repeat(10_000)
    )?;
    f.sync_all()?;
    Ok(())
}

/// Families named in the README's metrics reference: every backticked name there, with
/// `a_{x,y}_b` expanded and label lists (`name{label,...}`) dropped.
fn documented_families() -> Result<BTreeSet<String>> {
    let readme = std::fs::read_to_string(workspace().join("README.md"))?;
    let start = readme
        .find("## Metrics reference")
        .ok_or("README has no metrics reference")?;
    let section = &readme[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |e| e + 3);
    let mut out = BTreeSet::new();
    for (i, span) in section[..end].split('`').enumerate() {
        if i % 2 == 1 {
            for name in expand_braces(span) {
                out.insert(name.trim_end_matches('_').to_owned());
            }
        }
    }
    Ok(out)
}

/// Every way of reading `text`'s brace groups: each group as one of its alternatives, or left
/// out (a label list such as `{source,level}` after a name).
fn expand_braces(text: &str) -> Vec<String> {
    let Some(open) = text.find('{') else {
        return vec![text.to_owned()];
    };
    let Some(close) = text[open..].find('}').map(|c| open + c) else {
        return vec![text.to_owned()];
    };
    let (head, alts, tail) = (&text[..open], &text[open + 1..close], &text[close + 1..]);
    let mut out = Vec::new();
    for rest in expand_braces(tail) {
        out.push(format!("{head}{rest}"));
        for alt in alts.split(',') {
            out.push(format!("{head}{}{rest}", alt.trim()));
        }
    }
    out
}

#[test]
fn braces_expand_into_family_names() {
    let names = expand_braces("node_network_{receive,transmit}_{bytes,drop}_total");
    assert!(names.contains(&"node_network_transmit_drop_total".to_owned()));
    let names = expand_braces("sidelight_log_records_total{source,level}");
    assert!(names.contains(&"sidelight_log_records_total".to_owned()));
    let names = expand_braces("traces_span_metrics_duration_seconds_{bucket,sum,count}");
    assert!(names.contains(&"traces_span_metrics_duration_seconds_".to_owned()));
}

#[test]
fn every_dashboard_query_returns_data_from_the_full_stack() -> Result {
    let started = Instant::now();
    let work = tempfile::tempdir()?;
    let down = work.path().join("sink-down");
    let sink = OtlpSink::start(&[
        "--unavailable-fraction",
        "0.2",
        "--down-file",
        &down.to_string_lossy(),
    ])?;
    let (grpc, http) = (free_port(), free_port());
    let nobody = free_port();
    // Notifications: one webhook receiver takes them, one refuses them (a 400 is reported and
    // counted, not retried), so both notification counters have data.
    let hook_ok = Webhook::start(200)?;
    let hook_bad = Webhook::start(400)?;
    let config = format!(
        r#"http: {{ listen: 127.0.0.1:0 }}
host: {{ interval: 1s }}
processes:
  - target: {SERVICE}
    match: {{ cmdline: "fullstack_service\\.py" }}
    include_children: true
store: {{ path: "{{dir}}/data" }}
logs:
  - source: {SERVICE}
    service: {SERVICE}
    include: ["{{dir}}/app/*.log"]
    max_line_bytes: 4096
otlp:
  grpc: 127.0.0.1:{grpc}
  http: 127.0.0.1:{http}
  spanmetrics: {{ dimensions: [http.route] }}
export:
  otlp:
    endpoint: http://127.0.0.1:{sink_grpc}
    protocol: grpc
    queue: {{ max_items: 2 }}
    concurrency: 1           # one batch in flight: the queue fills while the sink is down
    retry: {{ initial: 20ms, max: 100ms, max_elapsed: 3s }}
  remote_write:
    url: http://127.0.0.1:{nobody}/api/v1/write
    interval: 1s
    queue: {{ max_items: 1 }}
    retry: {{ initial: 200ms, max: 500ms, max_elapsed: 2s }}
dora: {{ enabled: true, environment: {ENVIRONMENT} }}
alerts:
  evaluation_interval: 1s
  group_wait: 0s
  receiver: hook_ok
  routes:
    - {{ match: ['severity="critical"'], receiver: hook_bad }}
  groups:
    - name: agent
      rules:
        - {{ alert: AgentUp, expr: sidelight_build_info > 0, labels: {{ severity: warning, service: agent }} }}
        - {{ alert: AgentUpPage, expr: sidelight_build_info > 0, labels: {{ severity: critical, service: pager }} }}
notifiers:
  hook_ok: {{ type: webhook, url: "http://127.0.0.1:{hook_ok}/alerts", bearer_token_file: hook-token }}
  hook_bad: {{ type: webhook, url: "http://127.0.0.1:{hook_bad}/alerts", bearer_token_file: hook-token }}
"#,
        sink_grpc = sink.grpc,
        hook_ok = hook_ok.port,
        hook_bad = hook_bad.port,
    );
    let agent_dir = tempfile::tempdir()?;
    std::fs::write(agent_dir.path().join("hook-token"), HOOK_TOKEN)?;
    let agent = Agent::start_in(agent_dir, &config)?;
    let app_dir = agent.dir.path().join("app");
    std::fs::create_dir_all(&app_dir)?;
    let port = free_port();
    let _service = start_service(port, grpc, &app_dir.join("checkout.log"))?;
    let prom = Prometheus::start_labeled(agent.addr, &[("environment", ENVIRONMENT)])?;
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(port, stop.clone());
    eventually(
        Duration::from_secs(20),
        "Prometheus scraping the agent",
        || {
            prom.query("up == 1")
                .ok()
                .filter(|r| !r.is_empty())
                .and_then(|_| prom.query("count_over_time(up[1m]) >= 3").ok())
                .filter(|r| !r.is_empty())
        },
    )?;

    // Both notifiers were called: the good one took the alert, the other refused it.
    eventually(Duration::from_secs(20), "the webhook notifications", || {
        let failed = agent.metric(
            "sidelight_notifications_failed_total",
            "channel=\"webhook\"",
        );
        (hook_ok.received.load(Ordering::SeqCst) >= 1
            && hook_bad.received.load(Ordering::SeqCst) >= 1
            && failed >= 1.0)
            .then_some(())
    })?;

    // Round 1 of everything that must move while Prometheus watches.
    let reload = || agent.reload(&config);
    let bad_otlp = || -> Result {
        let mut resp = client()
            .post(&format!("http://127.0.0.1:{http}/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .send(&b"\xff\xff not protobuf"[..])?;
        assert_eq!(
            resp.status().as_u16(),
            400,
            "{:?}",
            resp.body_mut().read_to_string()
        );
        Ok(())
    };
    dora_round(&agent, 1)?;
    write_bad_log_lines(&app_dir.join("legacy.log"))?;
    bad_otlp()?;
    reload()?;
    // A checkpoint write the kernel refuses (even for root): a directory where the tmp file goes.
    let blocker = agent
        .dir
        .path()
        .join("data")
        .join(format!("logs-{SERVICE}.checkpoint.json.tmp"));
    std::fs::create_dir_all(&blocker)?;
    eventually(Duration::from_secs(15), "a checkpoint write error", || {
        (agent.metric("sidelight_log_checkpoint_write_errors_total", "") > 0.0).then_some(())
    })?;
    std::fs::remove_dir(&blocker)?;
    // The sink down for a while: retries, failures, full queues refusing the receivers.
    std::fs::write(&down, "down")?;
    eventually(
        Duration::from_secs(20),
        "a queue refusing while the sink is down",
        || (agent.metric("sidelight_queue_refused_total", "") > 0.0).then_some(()),
    )?;
    std::fs::remove_file(&down)?;
    std::thread::sleep(Duration::from_secs(3));

    // Round 2.
    dora_round(&agent, 2)?;
    write_bad_log_lines(&app_dir.join("legacy.log"))?;
    bad_otlp()?;
    reload()?;
    eventually(Duration::from_secs(20), "Prometheus to see round 2", || {
        prom.query(r#"changes(dora_deployments_total{status="failure"}[2m]) > 0"#)
            .ok()
            .filter(|r| !r.is_empty())
            .and_then(|_| {
                prom.query(r#"changes(sidelight_config_reloads_total{result="success"}[2m]) > 0"#)
                    .ok()
            })
            .filter(|r| !r.is_empty())
    })?;

    // The values Grafana's variables take: what their label_values() queries return.
    let swap = prom.query("max(node_memory_SwapTotal_bytes)")?;
    let no_swap = swap
        .first()
        .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok())
        .is_some_and(|v| v == 0.0);
    let all = dashboards();
    let mut checked;
    let mut last_failures;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        checked = 0;
        let mut failures = Vec::new();
        for d in &all {
            let mut subs: HashMap<String, String> = BUILTINS
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            for v in variables(&d.json) {
                let name = v["name"].as_str().unwrap_or_default();
                let value = match name {
                    "service" => SERVICE.to_owned(),
                    "environment" => ENVIRONMENT.to_owned(),
                    "window" => v["current"]["value"].as_str().unwrap_or("30d").to_owned(),
                    "datasource" => String::new(),
                    _ if v["multi"] == true || v["includeAll"] == true => ".*".to_owned(),
                    _ => v["current"]["value"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                };
                subs.insert(name.to_owned(), value);
            }
            // Each variable's query lists the value substituted for it.
            for v in variables(&d.json).iter().filter(|v| v["type"] == "query") {
                let name = v["name"].as_str().unwrap_or_default();
                let def = v["definition"].as_str().unwrap_or_default();
                let Some((selector, label)) = def
                    .strip_prefix("label_values(")
                    .and_then(|s| s.strip_suffix(')'))
                    .and_then(|s| s.rsplit_once(','))
                else {
                    continue;
                };
                let series = prom.query(&substitute(selector, &subs))?;
                let values: BTreeSet<&str> = series
                    .iter()
                    .filter_map(|s| s["metric"][label.trim()].as_str())
                    .collect();
                let want = &subs[name];
                if values.is_empty() || (want != ".*" && !values.contains(want.as_str())) {
                    failures.push(format!(
                        "{}: variable {name}: {def} gives {values:?}, not {want:?}",
                        d.file
                    ));
                }
            }
            for (place, expr) in expressions(&d.json) {
                if place.starts_with("variable ") {
                    continue; // checked above, with the label
                }
                checked += 1;
                let promql = substitute(&expr, &subs);
                let result = prom.query(&promql)?;
                let expected_empty = NO_DATA
                    .iter()
                    .find(|(f, p, _)| *f == d.file && *p == place)
                    .map(|(_, _, why)| *why)
                    .or_else(|| {
                        (no_swap && NO_SWAP == (d.file.as_str(), place.as_str()))
                            .then_some("the host has no swap")
                    });
                match (expected_empty, result.is_empty()) {
                    (None, true) => {
                        failures.push(format!("{}: {place}: no data for {promql}", d.file));
                    }
                    (Some(why), false) => failures.push(format!(
                        "{}: {place} is listed as having no data ({why}) but returned {result:?}: \
                         remove it from the list",
                        d.file
                    )),
                    _ => {}
                }
            }
        }
        last_failures = failures;
        if last_failures.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    stop.store(true, Ordering::Relaxed);
    let requests = load.join().map_err(|_| "traffic thread panicked")?;
    assert!(checked > 100, "only {checked} expressions checked");
    assert!(
        last_failures.is_empty(),
        "{} problems after {requests} requests:\n{}",
        last_failures.len(),
        last_failures.join("\n")
    );

    // Every family the agent exposes now is in the README's metrics reference.
    let documented = documented_families()?;
    let (_, _, body) = get(&agent.url("/metrics"), &[])?;
    let exposed: BTreeSet<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let undocumented: Vec<&&str> = exposed
        .iter()
        .filter(|f| !documented.contains(**f))
        .collect();
    assert!(
        undocumented.is_empty(),
        "families missing from the README's metrics reference: {undocumented:?}"
    );
    eprintln!(
        "full stack: {checked} expressions, {} families, {requests} requests, {:?}",
        exposed.len(),
        started.elapsed()
    );
    Ok(())
}

//! Security defaults with the real binary: secrets planted in spans and OTLP log records never
//! reach the exporter's peer, `/metrics`, chat messages or the agent's own log; slow clients
//! (slow-loris) are cut off while others are served; an HTTP/2 "rapid reset" client leaves other
//! clients served with bounded memory; connections over the cap are refused and counted.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Agent, OtlpSink, Result, eventually, free_port, get};

const SLACK_TOKEN: &str = "xoxb-77-security-token";

/// The corpus (one of each kind the built-in rules know), as an application would leak them.
const SECRETS: &[&str] = &[
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
    "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOpQrStUvWx",
    "AKIAIOSFODNN7EXAMPLE",
    "alice.smith@example.com",
    "4111 1111 1111 1111",
];

fn attr(key: &str, value: &str) -> serde_json::Value {
    serde_json::json!({"key": key, "value": {"stringValue": value}})
}

/// A server span whose name, route, attributes, event and status each carry one secret.
fn leaky_traces() -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    serde_json::json!({"resourceSpans": [{
        "resource": {"attributes": [attr("service.name", "leaky"), attr("owner", SECRETS[3])]},
        "scopeSpans": [{
            "scope": {"name": "test"},
            "spans": [{
                "traceId": "5b8efff798038103d269b633813fc60c",
                "spanId": "eee19b7ec3c1b174",
                "name": format!("GET /users/{}", SECRETS[3]),
                "kind": 2,
                "startTimeUnixNano": (now - 5_000_000).to_string(),
                "endTimeUnixNano": now.to_string(),
                "attributes": [
                    attr("http.route", &format!("/keys/{}", SECRETS[2])),
                    attr("http.request.header.authorization", &format!("Bearer {}", SECRETS[0])),
                    attr("slack.token", SECRETS[1]),
                ],
                "events": [{"name": "exception", "timeUnixNano": now.to_string(),
                            "attributes": [attr("exception.message", &format!("card {} declined", SECRETS[4]))]}],
                "status": {"code": 2, "message": format!("denied for {}", SECRETS[2])}
            }]
        }]
    }]})
}

fn leaky_logs() -> serde_json::Value {
    serde_json::json!({"resourceLogs": [{
        "resource": {"attributes": [attr("service.name", "leaky")]},
        "scopeLogs": [{
            "scope": {"name": "app.logger"},
            "logRecords": [{
                "severityText": "ERROR",
                "body": {"stringValue": format!("login failed for {} with Bearer {}", SECRETS[3], SECRETS[0])},
                "attributes": [attr("aws.key", SECRETS[2]), attr("card", SECRETS[4])]
            }]
        }]
    }]})
}

fn post_json(port: u16, path: &str, body: &serde_json::Value) -> Result<u16> {
    Ok(common::post_json(port, path, &body.to_string())?.0)
}

#[test]
fn secrets_in_spans_and_otlp_logs_never_leave_the_agent() -> Result {
    let sink = OtlpSink::start(&["--keep-raw"])?;
    let chat = common::ChatPeers::start(common::ChatSecrets {
        slack_token: SLACK_TOKEN.into(),
        hook_token: "unused".into(),
        hook_hmac: "unused".into(),
    })?;
    let http = free_port();
    let config = format!(
        r##"
http: {{ listen: "127.0.0.1:0" }}
host: {{ interval: 1s }}
store: {{ path: "{{dir}}/data" }}
logs: []
otlp:
  grpc: null
  http: 127.0.0.1:{http}
  spanmetrics: {{ dimensions: [http.route] }}
export:
  otlp:
    endpoint: http://127.0.0.1:{grpc}
    protocol: grpc
    signals: [traces, logs]
    retry: {{ initial: 20ms, max: 100ms }}
alerts:
  evaluation_interval: 1s
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 4h
  groups:
    - name: leaky
      rules:
        - alert: LeakySpans
          expr: traces_span_metrics_calls_total{{service_name="leaky"}} > 0
          labels: {{ severity: warning }}
          annotations:
            summary: "{{{{ $labels.span_name }}}} on {{{{ $labels.http_route }}}}: {{{{ $value }}}}"
notifiers:
  slack:
    token_file: slack-token
    channel: "#alerts"
    api_url: "{api}"
"##,
        grpc = sink.grpc,
        api = chat.slack_api(),
    );
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("slack-token"), SLACK_TOKEN)?;
    let agent = Agent::start_in(dir, &config)?;
    assert_eq!(post_json(http, "/v1/traces", &leaky_traces())?, 200);
    assert_eq!(post_json(http, "/v1/logs", &leaky_logs())?, 200);

    eventually(
        Duration::from_secs(20),
        "the span and the record at the sink",
        || {
            let s = sink.state().ok()?;
            (s["items"]["traces"].as_u64()? >= 1 && s["items"]["logs"].as_u64()? >= 1).then_some(())
        },
    )?;
    eventually(Duration::from_secs(20), "the alert in fake Slack", || {
        (!chat.seen().posts.is_empty()).then_some(())
    })?;
    let exported = sink.state()?.to_string();
    let (_, _, metrics) = get(&agent.url("/metrics"), &[])?;
    let chat_text = {
        let s = chat.seen();
        assert!(s.refused.is_empty(), "{:?}", s.refused);
        s.posts
            .iter()
            .map(|(_, p)| p.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (_, _, alerts) = get(&agent.url("/api/v1/alerts"), &[])?;
    let own_log = agent.log_lines().join("\n");
    for secret in SECRETS {
        for (place, text) in [
            ("the OTLP export", &exported),
            ("/metrics", &metrics),
            ("the Slack message", &chat_text),
            ("/api/v1/alerts", &alerts),
            ("the agent's own log", &own_log),
        ] {
            assert!(!text.contains(secret), "{secret} reached {place}");
        }
    }
    // What was removed says so, and the rest of the data is intact.
    assert!(exported.contains("[REDACTED]"), "{exported}");
    assert!(exported.contains("GET /users/[REDACTED]"), "{exported}");
    assert!(chat_text.contains("LeakySpans"), "{chat_text}");
    assert!(
        common::sample(
            &metrics,
            "traces_span_metrics_calls_total",
            "http_route=\"/keys/[REDACTED]\""
        )
        .is_some(),
        "the span-metric label is the redacted route"
    );
    // 4 secrets in the span (name, route, header, slack token, event, status = 6) + the
    // resource's owner; the record's body holds 2 and its attributes 2.
    assert_eq!(
        agent.metric("sidelight_receiver_redactions_total", "signal=\"traces\""),
        7.0
    );
    assert_eq!(
        agent.metric("sidelight_receiver_redactions_total", "signal=\"logs\""),
        4.0
    );
    Ok(())
}

/// An agent with both OTLP receivers on fixed ports and a small connection cap.
fn receiver_agent(max_connections: usize) -> Result<(Agent, u16, u16)> {
    let (grpc, http) = (free_port(), free_port());
    let agent = Agent::start(&format!(
        "http: {{ listen: 127.0.0.1:0, max_connections: {max_connections} }}\nhost: {{ interval: 1s }}\nstore: {{ path: {{dir}}/data }}\nlogs: []\notlp:\n  grpc: 127.0.0.1:{grpc}\n  http: 127.0.0.1:{http}\n  max_connections: {max_connections}\n"
    ))?;
    Ok((agent, grpc, http))
}

fn rss_kib(agent: &Agent) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.proc.0.id()))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS".into())
}

/// One small, valid OTLP/HTTP JSON traces request; the status code.
fn good_export(http: u16) -> Result<u16> {
    post_json(
        http,
        "/v1/traces",
        &serde_json::json!({"resourceSpans": [{"scopeSpans": [{"spans": [{
            "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
            "name": "ok", "kind": 2, "startTimeUnixNano": "1", "endTimeUnixNano": "2"}]}]}]}),
    )
}

#[test]
fn slow_loris_clients_are_cut_off_and_others_served() -> Result {
    let (agent, _grpc, http) = receiver_agent(64)?;
    let before = rss_kib(&agent)?;
    // 40 clients that trickle a request header one byte at a time and never finish it, on the
    // OTLP/HTTP receiver and on the /metrics surface.
    let metrics_addr = agent.addr;
    let otlp_addr: SocketAddr = format!("127.0.0.1:{http}").parse()?;
    let mut slow = Vec::new();
    for i in 0..40 {
        let addr = if i % 2 == 0 { otlp_addr } else { metrics_addr };
        let mut s = TcpStream::connect(addr)?;
        s.write_all(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n")?;
        slow.push(s);
    }
    let started = Instant::now();
    // While they hang on, other clients are served.
    for _ in 0..5 {
        for s in &mut slow {
            let _ = s.write_all(b"X");
        }
        assert_eq!(good_export(http)?, 200);
        let (status, _, _) = get(&agent.url("/metrics"), &[])?;
        assert_eq!(status, 200);
        std::thread::sleep(Duration::from_millis(500));
    }
    // The header timeout (10 s) closes every slow connection, though each keeps sending.
    let mut closed = 0;
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_secs(15)))?;
        let mut buf = [0u8; 512];
        // The server answers 408 or simply closes; either way the read ends.
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
        closed += 1;
    }
    assert_eq!(closed, slow.len());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "slow clients were cut off ({:?})",
        started.elapsed()
    );
    // Over the cap (64 per listener), connections are closed on accept and counted.
    let hold: Vec<TcpStream> = (0..64)
        .map(|_| TcpStream::connect(otlp_addr))
        .collect::<std::io::Result<_>>()?;
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = TcpStream::connect(otlp_addr)?;
    extra.set_read_timeout(Some(Duration::from_secs(5)))?;
    let _ = extra.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = [0u8; 64];
    assert!(
        matches!(extra.read(&mut buf), Ok(0) | Err(_)),
        "the connection over the cap was served"
    );
    eventually(Duration::from_secs(5), "the refusal counted", || {
        (agent.metric(
            "sidelight_http_connections_refused_total",
            "listener=\"otlp_http\"",
        ) >= 1.0)
            .then_some(())
    })?;
    drop(hold);
    eventually(
        Duration::from_secs(15),
        "the receiver serving again",
        || (good_export(http).ok()? == 200).then_some(()),
    )?;
    let after = rss_kib(&agent)?;
    assert!(
        after < before + 16 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
    Ok(())
}

/// One empty OTLP/gRPC traces export on a fresh HTTP/2 connection; its `grpc-status`.
fn grpc_export(port: u16) -> Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let (client, conn) = h2::client::handshake(tcp).await?;
        tokio::spawn(conn);
        let mut client = client.ready().await?;
        let req = http::Request::post(format!(
            "http://127.0.0.1:{port}/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())?;
        let (response, mut body) = client.send_request(req, false)?;
        // An empty ExportTraceServiceRequest: uncompressed flag, length 0.
        body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)?;
        let response = tokio::time::timeout(Duration::from_secs(10), response).await??;
        let mut body = response.into_body();
        while let Some(chunk) = body.data().await {
            chunk?;
        }
        let trailers = body.trailers().await?.unwrap_or_default();
        Ok(trailers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned())
    })
}

#[test]
fn http2_rapid_reset_leaves_other_clients_served() -> Result {
    let (agent, grpc, http) = receiver_agent(64)?;
    let before = rss_kib(&agent)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The attacker: one h2c connection opening streams and resetting each at once, 20,000 times
    // (CVE-2023-44487's pattern), as fast as the connection lets it.
    let attack = std::thread::spawn(move || -> std::result::Result<(usize, String), String> {
        rt.block_on(async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", grpc))
                .await
                .map_err(|e| e.to_string())?;
            let (client, conn) = h2::client::handshake(tcp).await.map_err(|e| e.to_string())?;
            let driver = tokio::spawn(async move { conn.await.map_err(|e| e.to_string()) });
            let mut sent = 0usize;
            let mut ended = String::from("not closed");
            for _ in 0..20_000 {
                let mut ready = match client.clone().ready().await {
                    Ok(r) => r,
                    Err(e) => {
                        ended = e.to_string();
                        break;
                    }
                };
                let req = http::Request::post(format!(
                    "http://127.0.0.1:{grpc}/opentelemetry.proto.collector.trace.v1.TraceService/Export"
                ))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .map_err(|e| e.to_string())?;
                match ready.send_request(req, false) {
                    Ok((_response, mut stream)) => {
                        stream.send_reset(h2::Reason::CANCEL);
                        sent += 1;
                    }
                    Err(e) => {
                        ended = e.to_string();
                        break;
                    }
                }
            }
            drop(client);
            let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
            Ok((sent, ended))
        })
    });
    // Meanwhile, honest clients are served on the same gRPC listener and on OTLP/HTTP.
    let mut served = 0;
    while !attack.is_finished() {
        if grpc_export(grpc)? == "0" && good_export(http)? == 200 {
            served += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (sent, ended) = attack.join().map_err(|_| "attacker panicked")??;
    assert!(served >= 1, "no honest request served during the attack");
    assert!(sent >= 1, "the attack never started: {ended}");
    // After it, the gRPC listener still serves (a new connection) and memory stayed bounded.
    assert_eq!(grpc_export(grpc)?, "0");
    let (status, _, _) = get(&agent.url("/metrics"), &[])?;
    assert_eq!(status, 200);
    let after = rss_kib(&agent)?;
    assert!(
        after < before + 16 * 1024,
        "RSS grew from {before} to {after} KiB after {sent} reset streams ({ended})"
    );
    eprintln!(
        "rapid reset: {sent} streams opened and reset; connection: {ended}; {served} honest requests served; RSS {before} -> {after} KiB"
    );
    Ok(())
}

//! End-to-end OTLP: real Python services instrumented with the OpenTelemetry SDK send spans to
//! the real agent over gRPC and over HTTP (protobuf, gzip); span metrics appear on /metrics and
//! a real Prometheus scraping the agent computes p95 from them. The OTLP/JSON example files are
//! posted as they are, and bad input is refused with the right status and counted while the
//! receivers keep serving.

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;

use common::start_otel_service as otel_service;

/// `n` successful requests and `errors` failing ones.
fn drive(port: u16, n: usize, errors: usize) -> Result {
    for i in 0..n {
        let (s, _, _) = get(&format!("http://127.0.0.1:{port}/items/{i}"), &[])?;
        assert_eq!(s, 200);
    }
    for _ in 0..errors {
        let (s, _, _) = get(&format!("http://127.0.0.1:{port}/fail"), &[])?;
        assert_eq!(s, 500);
    }
    Ok(())
}

fn flush(port: u16) -> Result {
    let (s, _, body) = get(&format!("http://127.0.0.1:{port}/flush"), &[])?;
    assert_eq!(s, 200, "{body}");
    Ok(())
}

fn metrics(agent: &Agent) -> String {
    get(&agent.url("/metrics"), &[])
        .map(|(_, _, b)| b)
        .unwrap_or_default()
}

fn calls(body: &str, service: &str, span: &str, status: &str) -> f64 {
    sample(
        body,
        "traces_span_metrics_calls_total",
        &format!(
            "service_name=\"{service}\",span_name=\"{span}\",span_kind=\"SPAN_KIND_SERVER\",status_code=\"{status}\""
        ),
    )
    .unwrap_or(0.0)
}

#[test]
fn python_services_over_grpc_and_http_gzip_give_red_metrics_prometheus_can_query() -> Result {
    let (grpc, http) = (free_port(), free_port());
    let agent = Agent::start(&format!(
        "http: {{ listen: 127.0.0.1:0 }}\nhost: {{ interval: 1s }}\nstore: {{ path: {{dir}}/data }}\notlp:\n  grpc: 127.0.0.1:{grpc}\n  http: 127.0.0.1:{http}\n  spanmetrics:\n    dimensions: [http.route]\n"
    ))?;
    let (pa, pb) = (free_port(), free_port());
    let _a = otel_service(
        "py-grpc",
        pa,
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{grpc}"),
            ),
        ],
    )?;
    let _b = otel_service(
        "py-http",
        pb,
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{http}"),
            ),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip".into()),
        ],
    )?;
    drive(pa, 20, 5)?;
    drive(pb, 20, 5)?;
    flush(pa)?;
    flush(pb)?;

    let route = "GET /items/{item_id}";
    let body = eventually(
        Duration::from_secs(20),
        "span metrics of both services",
        || {
            let body = metrics(&agent);
            (calls(&body, "py-grpc", route, "STATUS_CODE_UNSET") >= 21.0
                && calls(&body, "py-http", route, "STATUS_CODE_UNSET") >= 21.0
                && calls(&body, "py-grpc", "GET /fail", "STATUS_CODE_ERROR") >= 5.0
                && calls(&body, "py-http", "GET /fail", "STATUS_CODE_ERROR") >= 5.0)
                .then_some(body)
        },
    )
    .map_err(|e| format!("{e}\n{}", metrics(&agent)))?;
    // The readiness probe's request plus the 20 driven ones; /flush is not instrumented.
    assert_eq!(calls(&body, "py-grpc", route, "STATUS_CODE_UNSET"), 21.0);
    assert_eq!(
        calls(&body, "py-http", "GET /fail", "STATUS_CODE_ERROR"),
        5.0
    );
    let count = sample(
        &body,
        "traces_span_metrics_duration_seconds_count",
        "service_name=\"py-http\",span_name=\"GET /items/{item_id}\"",
    );
    assert_eq!(count, Some(21.0), "{body}");
    assert!(
        body.contains("http_route=\"/items/{item_id}\""),
        "the configured dimension: {body}"
    );
    assert!(
        body.contains(
            "traces_span_metrics_duration_seconds_bucket{le=\"+Inf\",service_name=\"py-grpc\""
        ),
        "{body}"
    );
    for receiver in ["otlp_grpc", "otlp_http"] {
        let labels = format!("receiver=\"{receiver}\",signal=\"traces\"");
        let accepted = sample(&body, "sidelight_receiver_accepted_total", &labels).unwrap_or(0.0);
        assert!(accepted >= 26.0, "{receiver}: {accepted}\n{body}");
        let bytes = sample(&body, "sidelight_receiver_bytes_total", &labels).unwrap_or(0.0);
        assert!(bytes > 0.0, "{receiver}: {body}");
    }
    // Exemplars with trace ids in OpenMetrics.
    let (_, _, om) = get(
        &agent.url("/metrics"),
        &[("accept", "application/openmetrics-text; version=1.0.0")],
    )?;
    assert!(
        om.lines().any(|l| l
            .starts_with("traces_span_metrics_calls_total{service_name=\"py-grpc\"")
            && l.contains("# {trace_id=\"")),
        "{om}"
    );

    // A real Prometheus scraping the agent while traffic continues.
    let prom = Prometheus::start(agent.addr, None)?;
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = drive(pa, 5, 1);
                let _ = drive(pb, 5, 1);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let q = "histogram_quantile(0.95, sum by (le, service_name) (rate(traces_span_metrics_duration_seconds_bucket{service_name=\"py-grpc\"}[1m])))";
    let result = eventually(Duration::from_secs(60), "a p95 from Prometheus", || {
        let r = prom.query(q).ok()?;
        let value: f64 = r.first()?["value"][1].as_str()?.parse().ok()?;
        value.is_finite().then_some((r, value))
    });
    stop.store(true, Ordering::Relaxed);
    let _ = load.join();
    let (series, p95) = result?;
    assert_eq!(series[0]["metric"]["service_name"], "py-grpc");
    assert!(p95 > 0.0 && p95 <= 15.0, "{p95}");
    Ok(())
}

/// Status, headers and body of a reply.
type Reply = (u16, Vec<(String, String)>, Vec<u8>);

fn post(url: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Reply> {
    let mut req = client().post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.send(body)?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = resp.body_mut().read_to_vec()?;
    Ok((status, headers, body))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).expect("compress");
    e.finish().expect("compress")
}

#[test]
fn json_examples_bad_input_and_token_rotation_end_to_end() -> Result {
    let http = free_port();
    let config = |tokens: &str| {
        format!(
            "http: {{ listen: 127.0.0.1:0 }}\nstore: {{ path: {{dir}}/data }}\notlp:\n  grpc: null\n  http: 127.0.0.1:{http}\n  max_request_bytes: 4194304\n  retry_after: 2s\n  auth: {{ bearer_token_file: {{dir}}/{tokens} }}\n"
        )
    };
    // The token files, one token per line (two accepted at once, for rotation).
    let tdir = tempfile::tempdir()?;
    std::fs::write(tdir.path().join("t1"), "token-one\ntoken-two\n")?;
    std::fs::write(tdir.path().join("t2"), "token-three\n")?;
    let config_with =
        |file: &str| config("T").replace("{dir}/T", &tdir.path().join(file).to_string_lossy());
    let agent = Agent::start(&config_with("t1"))?;
    let url = |signal: &str| format!("http://127.0.0.1:{http}/v1/{signal}");
    let one = ("authorization", "Bearer token-one");
    let two = ("authorization", "Bearer token-two");
    let json = ("content-type", "application/json");
    let pb = ("content-type", "application/x-protobuf");

    let fixtures = workspace().join("tests/fixtures/otlp");
    for (signal, file, auth) in [
        ("traces", "trace.json", one),
        ("metrics", "metrics.json", two),
        ("logs", "logs.json", one),
    ] {
        let body = std::fs::read(Path::new(&fixtures).join(file))?;
        let (status, headers, out) = post(&url(signal), &[json, auth], &body)?;
        assert_eq!(status, 200, "{file}: {}", String::from_utf8_lossy(&out));
        assert_eq!(header(&headers, "content-type"), Some("application/json"));
        assert_eq!(out, b"{}");
    }
    let body = metrics(&agent);
    for (signal, n) in [("traces", 2.0), ("metrics", 3.0), ("logs", 1.0)] {
        let labels = format!("receiver=\"otlp_http\",signal=\"{signal}\"");
        assert_eq!(
            sample(&body, "sidelight_receiver_accepted_total", &labels),
            Some(n),
            "{signal}: {body}"
        );
    }
    assert_eq!(
        calls(
            &body,
            "json-example",
            "GET /orders/{id}",
            "STATUS_CODE_UNSET"
        ),
        1.0
    );

    // Bad input, each refused with its status and counted.
    let truncated = [0x0a, 0x20, 0x0a, 0x05];
    let (status, headers, _) = post(&url("traces"), &[pb, one], &truncated)?;
    assert_eq!(status, 400);
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/x-protobuf")
    );
    let (status, _, out) = post(&url("traces"), &[json, one], b"{\"resourceSpans\": [{]")?;
    assert_eq!(status, 400);
    let st: serde_json::Value = serde_json::from_slice(&out)?;
    assert_eq!(st["code"], 3, "{st}");
    // 1 GiB of zeros as 1024 gzip members: about 1 MiB on the wire, under the 4 MiB limit.
    let bomb = gzip(&vec![0u8; 1 << 20]).repeat(1024);
    assert!(bomb.len() < 4 << 20);
    let (status, _, _) = post(
        &url("traces"),
        &[pb, one, ("content-encoding", "gzip")],
        &bomb,
    )?;
    assert_eq!(status, 413);
    let (status, headers, _) = post(
        &url("traces"),
        &[pb, ("authorization", "Bearer wrong")],
        &truncated,
    )?;
    assert_eq!(status, 401);
    assert_eq!(header(&headers, "www-authenticate"), Some("Bearer"));
    let (status, _, _) = post(
        &url("traces"),
        &[("content-type", "text/plain"), one],
        b"hello",
    )?;
    assert_eq!(status, 415);
    let body = metrics(&agent);
    for (reason, n) in [
        ("bad_request", 2.0),
        ("too_large", 1.0),
        ("unauthenticated", 1.0),
        ("unsupported_media_type", 1.0),
    ] {
        let labels = format!("receiver=\"otlp_http\",signal=\"traces\",reason=\"{reason}\"");
        assert_eq!(
            sample(&body, "sidelight_receiver_refused_total", &labels),
            Some(n),
            "{reason}: {body}"
        );
    }
    // The receiver keeps serving.
    let trace = std::fs::read(fixtures.join("trace.json"))?;
    assert_eq!(post(&url("traces"), &[json, two], &trace)?.0, 200);

    // Token rotation on SIGHUP: the new file replaces both old tokens.
    agent.reload(&config_with("t2"))?;
    eventually(Duration::from_secs(10), "the new token", || {
        let three = ("authorization", "Bearer token-three");
        (post(&url("traces"), &[json, three], &trace).ok()?.0 == 200).then_some(())
    })?;
    assert_eq!(post(&url("traces"), &[json, one], &trace)?.0, 401);
    let logs = agent.log_lines().join("\n");
    assert!(
        !logs.contains("token-one") && !logs.contains("token-three"),
        "{logs}"
    );
    Ok(())
}

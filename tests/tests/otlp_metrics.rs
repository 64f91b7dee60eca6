//! Everything the SDK sends reaches Prometheus: the official OpenTelemetry Python SDK, configured
//! only through its `OTEL_*` variables by its own environment configurator (what
//! `opentelemetry-instrument` and the OTel Operator's injection run), sends metrics and logs to an agent with **no exporter** — once over
//! gRPC with cumulative temporality, once over http/protobuf with delta temporality. A real
//! Prometheus scraping the agent gets the metrics under the OpenTelemetry specification's
//! Prometheus names with the values sent (deltas summed), plus `target_info`; the error log
//! records are counted in `sidelight_log_records_total` and `sidelight_log_exceptions_total`.
//! The exposition stays valid for the official Python parsers, and the start line says the
//! received metrics and logs are served but not forwarded. With enough series that the body
//! passes 64 KiB, Prometheus's own scrapes (which ask for gzip) get it gzipped and read every
//! sample.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// Runs `tests/python/otel_metrics_app.py` as `service` with only `OTEL_*` settings, and waits
/// for it to finish.
fn run_app(service: &str, env: &[(&str, String)]) -> Result {
    run_script("otel_metrics_app.py", service, env)
}

/// Runs `tests/python/{script}` as `service` with only `OTEL_*` settings (and `env`), and waits
/// for it to finish.
fn run_script(script: &str, service: &str, env: &[(&str, String)]) -> Result {
    let mut cmd = Command::new(python());
    cmd.arg(workspace().join("tests/python").join(script))
        .env("OTEL_SERVICE_NAME", service)
        .env("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
        .env("OTEL_TRACES_EXPORTER", "none")
        .env("OTEL_METRICS_EXPORTER", "otlp")
        .env("OTEL_LOGS_EXPORTER", "otlp")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "300")
        .env("OTEL_BLRP_SCHEDULE_DELAY", "200")
        .env("OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.spawn()?.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{service} failed: {stderr}");
    // The SDK logs export failures instead of failing: none may have happened.
    assert!(
        !stderr.contains("Failed to export"),
        "{service} could not export: {stderr}"
    );
    Ok(())
}

/// The single value of an instant query, once it has exactly one series.
fn value(prom: &Prometheus, promql: &str) -> Option<f64> {
    let result = prom.query(promql).ok()?;
    let [one] = result.as_slice() else {
        return None;
    };
    one["value"][1].as_str()?.parse().ok()
}

/// Waits until `promql` answers `want`.
fn expect(prom: &Prometheus, promql: &str, want: f64) -> Result {
    let got = eventually(Duration::from_secs(30), promql, || {
        value(prom, promql).filter(|v| (v - want).abs() < 1e-9)
    });
    got.map(|_| ()).map_err(|e| {
        format!(
            "{e}; last answer {:?}",
            prom.query(promql).unwrap_or_default()
        )
        .into()
    })
}

#[test]
fn sdk_metrics_and_logs_reach_prometheus_with_no_exporter() -> Result {
    let (grpc, http) = (free_port(), free_port());
    let agent = Agent::start(&format!(
        "http: {{ listen: 127.0.0.1:0 }}\nhost: {{ interval: 1s }}\nstore: {{ path: {{dir}}/data }}\notlp:\n  grpc: 127.0.0.1:{grpc}\n  http: 127.0.0.1:{http}\n"
    ))?;
    let said = agent.log_lines().join("\n");
    assert!(
        said.contains("served on /metrics, not forwarded (no export)"),
        "the start must say received metrics are not forwarded: {said}"
    );
    let prom = Prometheus::start(agent.addr, None)?;

    run_app(
        "bars-grpc",
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{grpc}"),
            ),
            (
                "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
                "cumulative".into(),
            ),
        ],
    )?;
    run_app(
        "bars-http",
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{http}"),
            ),
            (
                "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
                "delta".into(),
            ),
        ],
    )?;

    for service in ["bars-grpc", "bars-http"] {
        let s = format!("service_name=\"{service}\"");
        // Counter 50 (for delta: the sum of several deltas) → `_total`.
        expect(
            &prom,
            &format!("bars_orders_total{{{s},shop=\"main\"}}"),
            50.0,
        )?;
        // Histogram, unit `s` → `_seconds`, 50 observations of 0.25 s.
        expect(
            &prom,
            &format!("bars_order_duration_seconds_count{{{s},shop=\"main\"}}"),
            50.0,
        )?;
        expect(
            &prom,
            &format!("bars_order_duration_seconds_sum{{{s},shop=\"main\"}}"),
            12.5,
        )?;
        expect(
            &prom,
            &format!("bars_order_duration_seconds_bucket{{{s},shop=\"main\",le=\"+Inf\"}}"),
            50.0,
        )?;
        expect(
            &prom,
            &format!("histogram_quantile(0.5, bars_order_duration_seconds_bucket{{{s}}}) > 0"),
            2.5,
        )?;
        // Up-down counter → gauge; `{item}` adds nothing to the name.
        expect(
            &prom,
            &format!("bars_queue_depth{{{s},queue=\"orders\"}}"),
            3.0,
        )?;
        // Observable gauge, unit `Cel`.
        expect(
            &prom,
            &format!("bars_temperature_celsius{{{s},room=\"cellar\"}}"),
            21.5,
        )?;
        // The instrumentation scope is a label.
        expect(
            &prom,
            &format!(
                "count(bars_orders_total{{{s},otel_scope_name=\"bars.shop\",otel_scope_version=\"1.0\"}})"
            ),
            1.0,
        )?;
        // The other resource attributes are on target_info.
        expect(
            &prom,
            &format!(
                "target_info{{{s},deployment_environment=\"test\",telemetry_sdk_language=\"python\"}}"
            ),
            1.0,
        )?;
        // The error log records, counted like tailed ones.
        expect(
            &prom,
            &format!("sidelight_log_records_total{{source=\"otlp\",{s},level=\"error\"}}"),
            2.0,
        )?;
        expect(
            &prom,
            &format!(
                "sidelight_log_exceptions_total{{source=\"otlp\",{s},exception=\"LookupError\"}}"
            ),
            1.0,
        )?;
    }
    // The scrape's own job and instance are untouched by the senders' resources.
    expect(
        &prom,
        "count(bars_orders_total{job=\"sidelight\",exported_job=\"\",exported_instance=\"\"})",
        2.0,
    )?;
    expect(
        &prom,
        "sum(sidelight_received_metric_points_dropped_total) or vector(0)",
        0.0,
    )?;

    // Both exposition formats stay valid for the official parsers with received families in.
    for (accept, mode) in [
        ("application/openmetrics-text; version=1.0.0", "openmetrics"),
        ("text/plain", "text"),
    ] {
        let (status, _, body) = get(&agent.url("/metrics"), &[("Accept", accept)])?;
        assert_eq!(status, 200);
        let mut child = Command::new(python())
            .arg(workspace().join("tests/python/parse_exposition.py"))
            .arg(mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        std::io::Write::write_all(child.stdin.as_mut().ok_or("stdin")?, body.as_bytes())?;
        let out = child.wait_with_output()?;
        assert!(
            out.status.success(),
            "{mode} parse failed: {}\n{body}",
            String::from_utf8_lossy(&out.stderr)
        );
        let families: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        assert_eq!(families["bars_orders"]["type"], "counter", "{families}");
        assert_eq!(
            families["bars_order_duration_seconds"]["type"], "histogram",
            "{families}"
        );
        assert_eq!(families["bars_queue_depth"]["type"], "gauge", "{families}");
    }
    Ok(())
}

/// With an exporter, received metrics and logs are still forwarded as received, and are served
/// on `/metrics` too; remote write and the agent's own telemetry over OTLP carry the same
/// received series.
#[test]
fn with_an_exporter_received_metrics_are_forwarded_and_served_and_remote_written() -> Result {
    let sink = OtlpSink::start(&[])?;
    let receiver = Prometheus::start_receiver()?;
    let http = free_port();
    let agent = Agent::start(&format!(
        "http: {{ listen: 127.0.0.1:0 }}\nhost: {{ interval: 1s }}\nstore: {{ path: {{dir}}/data }}\n\
         otlp: {{ grpc: null, http: 127.0.0.1:{http} }}\n\
         export:\n  otlp:\n    endpoint: http://127.0.0.1:{}\n    protocol: grpc\n\
         \x20   signals: [metrics, logs]\n    self_metrics: true\n\
         \x20   batch: {{ max_items: 64, linger: 50ms }}\n\
         \x20 remote_write:\n    url: {}/api/v1/write\n    interval: 1s\n",
        sink.grpc, receiver.url
    ))?;
    let said = agent.log_lines().join("\n");
    assert!(
        said.contains("served on /metrics and forwarded"),
        "the start must say received metrics are forwarded: {said}"
    );
    run_app(
        "bars-fwd",
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{http}"),
            ),
        ],
    )?;
    // Forwarded as received: the OTel names, the log bodies.
    let state = eventually(
        Duration::from_secs(30),
        "forwarded metrics and logs",
        || {
            let s = sink.state().ok()?;
            let forwarded = s["points_by_metric"]["bars.orders"].as_u64()? > 0;
            let logs = s["logs"]
                .as_array()?
                .iter()
                .any(|l| l.as_str() == Some("payment failed for order 7"));
            // The agent's own telemetry carries the received families under their Prometheus names.
            let own = s["points_by_metric"]["bars_orders"].as_u64()? > 0;
            (forwarded && logs && own).then_some(s)
        },
    )?;
    assert!(
        state["points_by_metric"]["bars.order.duration"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{state}"
    );
    // Served on /metrics.
    let (_, _, body) = get(&agent.url("/metrics"), &[])?;
    assert_eq!(
        sample(
            &body,
            "bars_orders_total",
            "service_name=\"bars-fwd\",shop=\"main\""
        ),
        Some(50.0),
        "{body}"
    );
    // Remote-written to a real Prometheus.
    expect(
        &receiver,
        "bars_orders_total{service_name=\"bars-fwd\",shop=\"main\"}",
        50.0,
    )?;
    expect(
        &receiver,
        "bars_order_duration_seconds_count{service_name=\"bars-fwd\",shop=\"main\"}",
        50.0,
    )?;
    Ok(())
}

/// A transparent TCP tap in front of the agent: Prometheus scrapes through it, bytes pass
/// unchanged both ways, and it notes what the scraper asked for and what the agent answered, so
/// the test sees Prometheus's own scrape requests rather than a request of its own.
struct Tap {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<TapSeen>>,
}

#[derive(Default, Clone, Debug)]
struct TapSeen {
    /// The last `Accept` header a scrape request carried.
    accept: Option<String>,
    /// Requests that carried `Accept-Encoding: gzip`.
    asked_gzip: usize,
    /// Responses that carried `Content-Encoding: gzip`.
    answered_gzip: usize,
    /// Requests and responses seen.
    requests: usize,
    responses: usize,
}

impl Tap {
    fn start(upstream: std::net::SocketAddr) -> Result<Tap> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(TapSeen::default()));
        let shared = Arc::clone(&seen);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                let up = Arc::clone(&shared);
                let down = Arc::clone(&shared);
                std::thread::spawn(move || pipe(client, server, up, true));
                std::thread::spawn(move || pipe(server2, client2, down, false));
            }
        });
        Ok(Tap { addr, seen })
    }

    fn seen(&self) -> TapSeen {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Copies `from` to `to` until either end closes. Requests (`request == true`) are looked at for
/// their `Accept` and `Accept-Encoding` headers, responses for `Content-Encoding`: each head
/// line is read from the chunk it starts in (heads are small, and read whole in practice).
fn pipe(mut from: TcpStream, mut to: TcpStream, seen: Arc<Mutex<TapSeen>>, request: bool) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        // A head starts at the beginning of a message: "GET " for a request, "HTTP/1.1 " for
        // a response (a body chunk never starts with either here: the body is exposition text
        // or gzip, which starts with 0x1f 0x8b).
        let head_start = if request {
            &b"GET "[..]
        } else {
            &b"HTTP/1."[..]
        };
        if let Some(at) = chunk
            .windows(head_start.len())
            .position(|w| w == head_start)
        {
            let text = String::from_utf8_lossy(&chunk[at..]);
            let head = text.split("\r\n\r\n").next().unwrap_or_default();
            if let Ok(mut s) = seen.lock() {
                if request {
                    s.requests += 1;
                } else {
                    s.responses += 1;
                }
                for line in head.lines() {
                    let Some((name, value)) = line.split_once(':') else {
                        continue;
                    };
                    let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
                    match (request, name.as_str()) {
                        (true, "accept") => s.accept = Some(value.to_owned()),
                        (true, "accept-encoding") if value.contains("gzip") => s.asked_gzip += 1,
                        (false, "content-encoding") if value == "gzip" => s.answered_gzip += 1,
                        _ => {}
                    }
                }
            }
        }
        if to.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// The samples in an exposition (text or OpenMetrics): every line that is not a comment, blank,
/// or `# EOF`; an exemplar rides on its sample's line.
fn sample_lines(body: &str) -> Vec<&str> {
    body.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// Issue 18 end to end: a Python service with the OpenTelemetry SDK (configured only by
/// `OTEL_*`) pushes enough series that the agent's `/metrics` body passes 64 KiB; a real
/// Prometheus with its default scrape settings (it asks for gzip) scrapes it through a
/// transparent tap, gets it gzipped, and reads every sample: `up == 1`, `scrape_samples_scraped`
/// equals the samples of the plain body, and the SDK's values are queryable.
#[test]
fn prometheus_reads_a_gzipped_metrics_body() -> Result {
    let http = free_port();
    let agent = Agent::start(&format!(
        "http: {{ listen: 127.0.0.1:0 }}\nhost: {{ interval: 1s }}\nstore: {{ path: {{dir}}/data }}\n\
         otlp: {{ grpc: null, http: 127.0.0.1:{http} }}\n"
    ))?;
    let tap = Tap::start(agent.addr)?;
    let prom = Prometheus::start(tap.addr, None)?;
    run_script(
        "otel_wide_app.py",
        "wide",
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{http}"),
            ),
            ("OTEL_METRIC_EXPORT_INTERVAL", "60000".into()),
            ("OTEL_LOGS_EXPORTER", "none".into()),
            ("WIDE_ROUTES", "200".into()),
        ],
    )?;

    // Prometheus's own scrapes: asked for gzip, and (once the SDK's series are in) got it.
    let seen = eventually(Duration::from_secs(20), "a gzipped scrape", || {
        Some(tap.seen()).filter(|s| s.asked_gzip > 0 && s.answered_gzip > 0)
    })
    .map_err(|e| format!("{e}: {:?}", tap.seen()))?;
    let accept = seen.accept.clone().ok_or("no Accept header seen")?;

    // The plain body, asked for as Prometheus asks but without Accept-Encoding.
    let (status, ctype, plain) = get(&agent.url("/metrics"), &[("Accept", accept.as_str())])?;
    assert_eq!(status, 200);
    assert!(
        plain.len() > 64 * 1024,
        "the body must pass the 64 KiB gzip threshold: {} bytes",
        plain.len()
    );
    let sdk_lines: Vec<&str> = sample_lines(&plain)
        .into_iter()
        .filter(|l| l.starts_with("wide_"))
        .collect();
    // 400 counter series, 40 histograms of 16 buckets + sum + count, 1 gauge.
    assert!(sdk_lines.len() > 400 + 40 * 3, "{}", sdk_lines.len());

    // The same request accepting gzip gets the same exposition gzipped.
    let mut resp = client()
        .get(&agent.url("/metrics"))
        .header("Accept", accept.as_str())
        .header("Accept-Encoding", "gzip")
        .call()?;
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(header("content-encoding"), "gzip");
    assert_eq!(header("vary").to_ascii_lowercase(), "accept-encoding");
    assert_eq!(header("content-type"), ctype);
    let gz = resp.body_mut().read_to_vec()?;
    assert!(
        gz.len() < plain.len() / 4,
        "{} of {}",
        gz.len(),
        plain.len()
    );
    let mut unzipped = String::new();
    flate2::read::GzDecoder::new(gz.as_slice()).read_to_string(&mut unzipped)?;
    let unzipped_sdk: Vec<&str> = sample_lines(&unzipped)
        .into_iter()
        .filter(|l| l.starts_with("wide_"))
        .collect();
    assert_eq!(
        unzipped_sdk, sdk_lines,
        "the gzipped body carries the same SDK samples"
    );

    // Prometheus read every sample of the gzipped body. The agent's own series can change from
    // one scrape to the next (a first observation adds a series), so compare the plain count
    // before and after the query: a match with both is the scrape's count.
    expect(&prom, "up{job=\"sidelight\"}", 1.0)?;
    let mut last = (0, 0.0, 0);
    eventually(Duration::from_secs(15), "scrape_samples_scraped", || {
        let before =
            sample_lines(&get(&agent.url("/metrics"), &[("Accept", &accept)]).ok()?.2).len();
        let scraped = value(&prom, "scrape_samples_scraped{job=\"sidelight\"}")?;
        let after =
            sample_lines(&get(&agent.url("/metrics"), &[("Accept", &accept)]).ok()?.2).len();
        last = (before, scraped, after);
        (before == after && scraped == before as f64).then_some(())
    })
    .map_err(|e| format!("{e}: plain before, scraped, plain after = {last:?}"))?;
    // Every scrape since asked for gzip and got it (and there were several).
    let after = eventually(Duration::from_secs(15), "three more scrapes", || {
        Some(tap.seen()).filter(|s| s.responses >= seen.responses + 3)
    })?;
    assert_eq!(
        after.asked_gzip - seen.asked_gzip,
        after.requests - seen.requests,
        "{after:?}"
    );
    assert_eq!(
        after.answered_gzip - seen.answered_gzip,
        after.responses - seen.responses,
        "{after:?}"
    );

    // The SDK's series and values, read back through Prometheus's API.
    let s = "service_name=\"wide\"";
    expect(
        &prom,
        &format!("wide_requests_total{{{s},route=\"/r7\",status=\"200\"}}"),
        8.0,
    )?;
    expect(
        &prom,
        &format!("wide_requests_total{{{s},route=\"/r199\",status=\"500\"}}"),
        1.0,
    )?;
    expect(&prom, &format!("count(wide_requests_total{{{s}}})"), 400.0)?;
    // Σ (i + 1) + 200 for i in 0..200.
    expect(&prom, &format!("sum(wide_requests_total{{{s}}})"), 20_300.0)?;
    expect(
        &prom,
        &format!("wide_latency_seconds_count{{{s},route=\"/r3\"}}"),
        4.0,
    )?;
    expect(
        &prom,
        &format!("wide_latency_seconds_sum{{{s},route=\"/r3\"}}"),
        1.0,
    )?;
    expect(
        &prom,
        &format!("count(wide_latency_seconds_count{{{s}}})"),
        40.0,
    )?;
    expect(&prom, &format!("wide_routes{{{s}}}"), 200.0)?;
    expect(
        &prom,
        "sum(sidelight_received_metric_points_dropped_total) or vector(0)",
        0.0,
    )?;
    Ok(())
}

//! Everything the SDK sends reaches Prometheus: the official OpenTelemetry Python SDK, configured
//! only through its `OTEL_*` variables by its own environment configurator (what
//! `opentelemetry-instrument` and the OTel Operator's injection run), sends metrics and logs to an agent with **no exporter** — once over
//! gRPC with cumulative temporality, once over http/protobuf with delta temporality. A real
//! Prometheus scraping the agent gets the metrics under the OpenTelemetry specification's
//! Prometheus names with the values sent (deltas summed), plus `target_info`; the error log
//! records are counted in `sidelight_log_records_total` and `sidelight_log_exceptions_total`.
//! The exposition stays valid for the official Python parsers, and the start line says the
//! received metrics and logs are served but not forwarded.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Runs `tests/python/otel_metrics_app.py` as `service` with only `OTEL_*` settings, and waits
/// for it to finish.
fn run_app(service: &str, env: &[(&str, String)]) -> Result {
    let mut cmd = Command::new(python());
    cmd.arg(workspace().join("tests/python/otel_metrics_app.py"))
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

//! Change failures detected from telemetry, end to end: a real FastAPI service instrumented
//! with the OpenTelemetry SDK sends its spans to the real agent over OTLP/gRPC while a load
//! thread calls it; a deployment is posted through `/api/v1/deployments` and the service's
//! fault switch is flipped. A sustained error-ratio regression marks the deployment failed
//! and opens an incident (`/api/v1/dora`, `dora_change_failures_total`), which resolves once
//! the fault is switched off; a short blip after a deployment is judged healthy.
//!
//! Windows are short (1 s samples over 2 s, 8 s baseline, `for` 6 s, 15 s onset window) and
//! the latency threshold is wide (+2 s): the tests are about the error ratio, and p95 noise
//! on a busy two-core machine is not.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn agent_config(grpc: u16, http: u16, services: &str) -> String {
    format!(
        "http: {{ listen: 127.0.0.1:0 }}\nhost: {{ enabled: false }}\nstore: {{ path: {{dir}}/store }}\n\
         otlp: {{ grpc: 127.0.0.1:{grpc}, http: 127.0.0.1:{http} }}\n\
         dora:\n  enabled: true\n  regression:\n    interval: 1s\n    rate_window: 2s\n    min_calls: 5\n    \
         baseline: 8s\n    min_baseline_samples: 4\n    for: 6s\n    observe: 15s\n    latency_delta: 2s\n    \
         services: {services}\n"
    )
}

/// Starts `otel_service.py` as `name`, exporting spans to the agent's gRPC receiver.
fn service(name: &str, grpc: u16) -> Result<(Proc, u16)> {
    let port = free_port();
    let proc = common::start_otel_service(
        name,
        port,
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{grpc}"),
            ),
        ],
    )?;
    Ok((proc, port))
}

/// Calls `GET /work` about 30 times a second until dropped; counts the 500s it got.
struct Load {
    stop: Arc<AtomicBool>,
    errors: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Load {
    fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, errors) = (stop.clone(), errors.clone());
            std::thread::spawn(move || {
                let url = format!("http://127.0.0.1:{port}/work");
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((500, _, _)) = get(&url, &[]) {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(30));
                }
            })
        };
        Load {
            stop,
            errors,
            thread: Some(thread),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn set_fault(port: u16, error_rate: f64) -> Result {
    let mut resp = client()
        .post(&format!(
            "http://127.0.0.1:{port}/fault?error_rate={error_rate}"
        ))
        .send("")?;
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string()?;
    assert_eq!(status, 200, "{body}");
    Ok(())
}

fn post_deployment(agent: &Agent, body: &Value) -> Result<String> {
    let mut resp = client()
        .post(&agent.url("/api/v1/deployments"))
        .header("content-type", "application/json")
        .send(body.to_string())?;
    let status = resp.status().as_u16();
    let reply: Value = serde_json::from_str(&resp.body_mut().read_to_string()?)?;
    assert_eq!(status, 201, "{reply}");
    Ok(reply["id"].as_str().ok_or("no id")?.to_owned())
}

/// The 1d report row of `service`.
fn report(agent: &Agent, service: &str) -> Option<Value> {
    let (status, _, body) = get(
        &agent.url(&format!("/api/v1/dora?service={service}&window=1d")),
        &[],
    )
    .ok()?;
    let v: Value = serde_json::from_str(&body).ok()?;
    (status == 200).then(|| v["services"].get(0).cloned())?
}

fn metrics(agent: &Agent) -> String {
    get(&agent.url("/metrics"), &[])
        .map(|(_, _, b)| b)
        .unwrap_or_default()
}

/// Waits until the detector holds enough samples of healthy traffic for a baseline.
fn wait_for_baseline(agent: &Agent) -> Result {
    eventually(Duration::from_secs(30), "baseline samples", || {
        (agent.metric("sidelight_dora_regression_samples", "") >= 9.0).then_some(())
    })
    .map_err(|e| format!("{e}\n{}", metrics(agent)).into())
}

#[test]
fn a_sustained_error_regression_fails_the_deployment_and_recovers() -> Result {
    let (grpc, http) = (free_port(), free_port());
    // The DORA service `checkout` is judged on the span metrics of `checkout-py`.
    let agent = Agent::start(&agent_config(grpc, http, "{ checkout: checkout-py }"))?;
    let (_service, port) = service("checkout-py", grpc)?;
    let load = Load::start(port);
    wait_for_baseline(&agent)?;
    assert_eq!(agent.metric("sidelight_dora_regression_services", ""), 1.0);

    let id = post_deployment(
        &agent,
        &json!({"service": "checkout", "version": "2.0.0", "commit": "c0ffee"}),
    )?;
    set_fault(port, 0.5)?;

    let row = eventually(
        Duration::from_secs(30),
        "the deployment marked failed",
        || report(&agent, "checkout").filter(|r| r["failed_deployments"] == 1),
    )
    .map_err(|e| format!("{e}\n{:?}", agent.log_lines()))?;
    assert_eq!(row["deployments"], 1, "{row}");
    assert_eq!(row["incidents_open"], 1, "{row}");
    assert_eq!(row["change_fail_rate"], 1.0, "{row}");
    // /metrics is recomputed about a second after an event.
    let body = eventually(
        Duration::from_secs(10),
        "dora_change_failures_total",
        || {
            let body = metrics(&agent);
            sample(&body, "dora_change_failures_total", "service=\"checkout\"")
                .is_some_and(|v| v >= 1.0)
                .then_some(body)
        },
    )?;
    assert_eq!(
        sample(
            &body,
            "dora_change_failures_total",
            "service=\"checkout\",environment=\"production\""
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            "sidelight_dora_regression_verdicts_total",
            "verdict=\"regressed\""
        ),
        Some(1.0),
        "{body}"
    );
    let opened = agent.log_lines().into_iter().find(|l| {
        l.contains("incident opened") && l.contains(&format!("\"incident\":\"regression:{id}\""))
    });
    assert!(opened.is_some(), "{:?}", agent.log_lines());

    // Fault off: the incident resolves once the service has been healthy for `for`.
    set_fault(port, 0.0)?;
    let row = eventually(Duration::from_secs(30), "the incident resolved", || {
        report(&agent, "checkout").filter(|r| r["incidents_open"] == 0)
    })
    .map_err(|e| format!("{e}\n{:?}", agent.log_lines()))?;
    drop(load);
    assert_eq!(row["incidents_resolved"], 1, "{row}");
    assert_eq!(row["failed_deployments"], 1, "{row}");
    // Recovery from the deployment's finish to the first healthy sample: the fault lasted
    // for the detection (≥ 6 s) and at most the 30 s waited for it.
    let recovery = row["recovery_time_median_seconds"]
        .as_f64()
        .ok_or(format!("no recovery time: {row}"))?;
    assert!((6.0..=40.0).contains(&recovery), "{recovery} {row}");
    let body = eventually(
        Duration::from_secs(10),
        "dora_recovery_time_seconds",
        || {
            let body = metrics(&agent);
            sample(
                &body,
                "dora_recovery_time_seconds_count",
                "service=\"checkout\"",
            )
            .is_some_and(|v| v >= 1.0)
            .then_some(body)
        },
    )?;
    assert_eq!(
        sample(
            &body,
            "dora_recovery_time_seconds_count",
            "service=\"checkout\""
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "dora_change_failures_total", "service=\"checkout\""),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "sidelight_dora_regression_recoveries_total", ""),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "sidelight_dora_regression_watched_deployments", ""),
        Some(0.0),
        "{body}"
    );
    Ok(())
}

#[test]
fn a_short_blip_after_a_deployment_is_not_a_failure() -> Result {
    let (grpc, http) = (free_port(), free_port());
    // No mapping: the DORA service `cart` is the span metrics' `cart`.
    let agent = Agent::start(&agent_config(grpc, http, "{}"))?;
    let (_service, port) = service("cart", grpc)?;
    let load = Load::start(port);
    wait_for_baseline(&agent)?;

    post_deployment(&agent, &json!({"service": "cart", "version": "7.1.0"}))?;
    // One second of failures (shorter than `for`, even counting the 2 s rate window).
    std::thread::sleep(Duration::from_secs(2));
    set_fault(port, 1.0)?;
    std::thread::sleep(Duration::from_secs(1));
    set_fault(port, 0.0)?;

    // Judged healthy once the 15 s onset window after the deployment has passed.
    eventually(Duration::from_secs(45), "a healthy verdict", || {
        (agent.metric(
            "sidelight_dora_regression_verdicts_total",
            "verdict=\"healthy\"",
        ) == 1.0)
            .then_some(())
    })
    .map_err(|e| format!("{e}\n{}", metrics(&agent)))?;
    let failed_calls = load.errors.load(Ordering::Relaxed);
    drop(load);
    assert!(failed_calls >= 10, "the blip failed calls: {failed_calls}");
    let blip = load_errors_seen(&agent);
    assert!(blip >= 10.0, "the blip reached the span metrics: {blip}");
    let row = report(&agent, "cart").ok_or("no report row")?;
    assert_eq!(row["deployments"], 1, "{row}");
    assert_eq!(row["failed_deployments"], 0, "{row}");
    assert_eq!(row["incidents_open"], 0, "{row}");
    assert_eq!(row["incidents_resolved"], 0, "{row}");
    let body = metrics(&agent);
    assert_eq!(
        sample(&body, "dora_change_failures_total", "service=\"cart\""),
        Some(0.0),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            "sidelight_dora_regression_verdicts_total",
            "verdict=\"regressed\""
        ),
        Some(0.0),
        "{body}"
    );
    Ok(())
}

/// Errored `/work` calls in the span metrics of `cart`.
fn load_errors_seen(agent: &Agent) -> f64 {
    agent.metric(
        "traces_span_metrics_calls_total",
        "service_name=\"cart\",span_name=\"GET /work\",span_kind=\"SPAN_KIND_SERVER\",status_code=\"STATUS_CODE_ERROR\"",
    )
}

//! The sidecar overlay's agent config, run by the real binary with the downward-API variables
//! the manifest sets, beside a FastAPI app under `opentelemetry-instrument` with the variables
//! the OpenTelemetry Operator injects for Python (OTLP http/protobuf to :4318, all three
//! signals): every span and log record that reaches the downstream OTLP sink (received from
//! the app, or tailed from its log file) carries the pod's attributes, and /metrics has one
//! `sidelight_kubernetes_info` series labelled with them.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Agent, OtlpSink, Proc, Result, eventually, free_port, get, python, workspace};
use serde_json::Value;
use serde_yaml_ng::Value as Yaml;

/// What the manifest's downward API would give (`deploy/kubernetes/overlays/sidecar`).
const POD: &[(&str, &str, &str)] = &[
    ("K8S_POD_NAME", "k8s.pod.name", "checkout-7d9f8c6b5-x2v4q"),
    ("K8S_NAMESPACE_NAME", "k8s.namespace.name", "shop"),
    ("K8S_NODE_NAME", "k8s.node.name", "node-a1"),
    (
        "K8S_POD_UID",
        "k8s.pod.uid",
        "5f1c9a3e-2b7d-4c1e-9a8f-0d6e4b2c1a77",
    ),
    ("K8S_CONTAINER_NAME", "k8s.container.name", "app"),
];

/// The overlay's config with loopback addresses and temp paths; `resource:` untouched.
fn sidecar_config(grpc: u16, http: u16, sink_grpc: u16) -> Result<String> {
    let text = std::fs::read_to_string(
        workspace().join("deploy/kubernetes/overlays/sidecar/sidelight.yaml"),
    )?;
    let mut c: Yaml = serde_yaml_ng::from_str(&text)?;
    let set = |v: &mut Yaml, path: &[&str], value: Yaml| -> Result {
        let mut at = v;
        for p in path {
            at = at
                .get_mut(*p)
                .ok_or_else(|| format!("no {p} in the config"))?;
        }
        *at = value;
        Ok(())
    };
    let str = |s: String| Yaml::String(s);
    set(&mut c, &["http", "listen"], str("127.0.0.1:0".into()))?;
    set(&mut c, &["otlp", "grpc"], str(format!("127.0.0.1:{grpc}")))?;
    set(&mut c, &["otlp", "http"], str(format!("127.0.0.1:{http}")))?;
    set(&mut c, &["store", "path"], str("{dir}/data".into()))?;
    set(&mut c, &["host", "interval"], str("1s".into()))?;
    set(
        &mut c,
        &["export", "otlp", "endpoint"],
        str(format!("http://127.0.0.1:{sink_grpc}")),
    )?;
    let logs = c
        .get_mut("logs")
        .and_then(|l| l.get_mut(0))
        .ok_or("no logs[0]")?;
    set(
        logs,
        &["include"],
        Yaml::Sequence(vec![str("{dir}/logs/*.log*".into())]),
    )?;
    Ok(serde_yaml_ng::to_string(&c)?)
}

/// The string attributes of an OTLP JSON (MessageToDict) resource.
fn attrs(resource: &Value) -> Vec<(String, String)> {
    resource["attributes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                a["key"].as_str().unwrap_or_default().to_owned(),
                a["value"]["stringValue"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

/// Starts the FastAPI app under `opentelemetry-instrument` with the Operator's Python env.
fn operator_instrumented_app(port: u16, agent_http: u16) -> Result<Proc> {
    let venv_bin = Path::new(&python())
        .parent()
        .ok_or("python has no directory")?
        .to_path_buf();
    // As in an activated venv: opentelemetry-instrument finds `uvicorn` on PATH.
    let path = format!(
        "{}:{}",
        venv_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(venv_bin.join("opentelemetry-instrument"));
    cmd.env("PATH", path);
    cmd.args(["uvicorn", "instrumented_app:app", "--host", "127.0.0.1"])
        .args(["--port", &port.to_string()])
        .current_dir(workspace().join("tests/python"))
        .env("OTEL_SERVICE_NAME", "checkout")
        // What the Operator's Python injection sets when the user has not.
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_TRACES_EXPORTER", "otlp")
        .env("OTEL_METRICS_EXPORTER", "otlp")
        .env("OTEL_LOGS_EXPORTER", "otlp")
        // spec.exporter.endpoint of an Instrumentation pointing at the sidecar.
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{agent_http}"),
        )
        // Not the Operator's: the Python SDK attaches its logging handler only when asked, and
        // exports metrics every 60 s by default (shortened for the test).
        .env("OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED", "true")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "1000")
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .env("OTEL_BLRP_SCHEDULE_DELAY", "200")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let proc = Proc(cmd.spawn()?);
    eventually(Duration::from_secs(60), "the instrumented app", || {
        get(&format!("http://127.0.0.1:{port}/items/0"), &[])
            .ok()
            .filter(|(s, _, _)| *s == 200)
    })?;
    Ok(proc)
}

#[test]
fn pod_metadata_reaches_exported_spans_and_logs() -> Result {
    let sink = OtlpSink::start(&["--keep-raw"])?;
    let (grpc, http) = (free_port(), free_port());
    let config = sidecar_config(grpc, http, sink.grpc)?;
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("logs"))?;
    let env: Vec<(&str, &str)> = POD.iter().map(|(var, _, v)| (*var, *v)).collect();
    let agent = Agent::start_in_env(dir, &config, &env)?;
    eventually(Duration::from_secs(30), "/readyz", || {
        get(&agent.url("/readyz"), &[])
            .ok()
            .filter(|(s, _, _)| *s == 200)
    })?;

    let app_port = free_port();
    let _app = operator_instrumented_app(app_port, http)?;
    for i in 1..=5 {
        get(&format!("http://127.0.0.1:{app_port}/items/{i}"), &[])?;
    }
    // A line the agent tails (structlog JSON, as the overlay's app writes).
    std::fs::write(
        agent.dir.path().join("logs/checkout.log"),
        "{\"event\": \"order placed\", \"level\": \"info\", \"timestamp\": \"2026-12-06T12:00:00Z\"}\n",
    )?;

    // All three signals of the Operator's defaults arrive over OTLP/HTTP.
    for signal in ["traces", "metrics", "logs"] {
        eventually(
            Duration::from_secs(30),
            &format!("{signal} from the app"),
            || {
                let v = agent.metric(
                    "sidelight_receiver_accepted_total",
                    &format!("receiver=\"otlp_http\",signal=\"{signal}\""),
                );
                (v > 0.0).then_some(())
            },
        )?;
    }

    // Spans (received) and log records (received and tailed) at the sink, with the pod's
    // attributes on every resource.
    let want: Vec<(String, String)> = POD
        .iter()
        .map(|(_, k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let (spans, logs) = eventually(
        Duration::from_secs(30),
        "spans and logs at the sink",
        || {
            let state = sink.state().ok()?;
            let raw = state["raw"].as_array()?.clone();
            let resources = |field: &str| -> Vec<Vec<(String, String)>> {
                raw.iter()
                    .flat_map(|r| r[field].as_array().cloned().unwrap_or_default())
                    .map(|rs| attrs(&rs["resource"]))
                    .collect()
            };
            let spans = resources("resourceSpans");
            let logs = resources("resourceLogs");
            let app_logs = state["logs"]
                .as_array()?
                .iter()
                .any(|b| b.as_str().is_some_and(|b| b.starts_with("served item")));
            let tailed_line = state["logs"]
                .as_array()?
                .iter()
                .any(|b| b.as_str() == Some("order placed"));
            (!spans.is_empty() && app_logs && tailed_line).then_some((spans, logs))
        },
    )?;
    for (what, resources) in [("span", &spans), ("log", &logs)] {
        for r in resources {
            for kv in &want {
                assert!(r.contains(kv), "{what} resource {r:?} lacks {kv:?}");
            }
            // The SDK's own attributes are still there.
            assert!(
                r.iter()
                    .any(|(k, v)| k == "service.name" && v == "checkout"),
                "{what} resource {r:?}"
            );
        }
    }

    // One info series with the pod's labels.
    let (_, _, body) = get(&agent.url("/metrics"), &[])?;
    let info: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("sidelight_kubernetes_info{"))
        .collect();
    assert_eq!(info.len(), 1, "{info:?}");
    for (_, k, v) in POD {
        let label = k.replace('.', "_");
        assert!(info[0].contains(&format!("{label}=\"{v}\"")), "{}", info[0]);
    }
    assert!(info[0].ends_with(" 1"), "{}", info[0]);
    agent.stop()?;
    Ok(())
}

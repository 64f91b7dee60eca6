//! End-to-end export: the real binary sends its own metrics (host, process, self) as OTLP to the
//! Python sink (`tests/python/otlp_sink.py`, grpcio + opentelemetry-proto) and by remote write to
//! a real Prometheus. Spans from a Python service and tailed logs through the exporter are in
//! `forward.rs`; the exporter alone against the same sink in `export_sink.rs`.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{
    Agent, OtlpSink as Sink, Prometheus, Result, eventually, get, python, sample, signal,
    wait_exit, workspace,
};

fn metric(agent: &Agent, name: &str, labels: &str) -> Option<f64> {
    let (_, _, body) = get(&agent.url("/metrics"), &[]).ok()?;
    sample(&body, name, labels)
}

#[test]
fn own_metrics_reach_an_otlp_sink_through_70_percent_unavailable() -> Result {
    let sink = Sink::start(&["--unavailable-fraction", "0.7", "--seed", "11"])?;
    let agent = Agent::start(&format!(
        "http: {{ listen: 127.0.0.1:0 }}\nhost: {{ interval: 2s }}\nstore: {{ path: {{dir}}/data }}\nexport:\n  otlp:\n    endpoint: http://127.0.0.1:{}\n    protocol: grpc\n    signals: [metrics]\n    retry: {{ initial: 20ms, max: 100ms }}\n",
        sink.grpc
    ))?;
    eventually(Duration::from_secs(30), "three rounds at the sink", || {
        let s = sink.state().ok()?;
        (s["build_info_times"].as_array()?.len() >= 3).then_some(())
    })?;
    let s = sink.state()?;
    let res = s["resources"].as_array().ok_or("resources")?;
    assert_eq!(res.len(), 1, "one resource: {res:?}");
    assert_eq!(res[0]["service.name"], "sidelight");
    assert!(res[0]["host.name"].as_str().is_some_and(|h| !h.is_empty()));
    assert!(
        res[0]["service.instance.id"]
            .as_str()
            .is_some_and(|h| !h.is_empty())
    );
    assert_eq!(s["scopes"][0]["name"], "sidelight");
    for m in [
        "node_load1",
        "node_cpu_seconds",
        "process_resident_memory_bytes",
        "sidelight_collection_duration_seconds",
    ] {
        assert!(
            s["points_by_metric"][m].as_u64().is_some_and(|n| n > 0),
            "{m} missing from {}",
            s["points_by_metric"]
        );
    }
    assert!(
        s["refused"].as_u64().is_some_and(|n| n > 0),
        "the sink refused some"
    );
    // Counts reconcile at a quiet moment between rounds: every round queued reached the sink
    // once, and the agent's sent counter equals the data points the sink holds.
    eventually(Duration::from_secs(30), "sent = received", || {
        let before = sink.state().ok()?;
        let sent = metric(
            &agent,
            "sidelight_exporter_sent_total",
            "signal=\"metrics\"",
        )?;
        let rounds = metric(&agent, "sidelight_self_telemetry_rounds_total", "queued")?;
        let after = sink.state().ok()?;
        let items = after["items"]["metrics"].as_f64()?;
        let times = after["build_info_times"].as_array()?;
        let mut distinct: Vec<u64> = times.iter().filter_map(|t| t.as_u64()).collect();
        distinct.sort_unstable();
        distinct.dedup();
        (before == after
            && sent == items
            && rounds == times.len() as f64
            && distinct.len() == times.len())
        .then_some(())
    })?;
    let retried = metric(
        &agent,
        "sidelight_exporter_retried_total",
        "signal=\"metrics\"",
    )
    .unwrap_or(0.0);
    assert!(retried > 0.0, "retries counted");
    assert_eq!(
        metric(&agent, "sidelight_exporter_failed_total", "otlp"),
        None,
        "nothing failed"
    );
    Ok(())
}

#[test]
fn the_disk_spill_keeps_own_metrics_across_an_agent_restart() -> Result {
    let dir = tempfile::tempdir()?;
    let down = dir.path().join("down");
    std::fs::write(&down, "")?;
    let sink = Sink::start(&["--down-file", &down.to_string_lossy()])?;
    let config = format!(
        "http: {{ listen: 127.0.0.1:0 }}\nhost: {{ interval: 1s }}\nagent: {{ shutdown_timeout: 5s }}\nstore: {{ path: {} }}\nexport:\n  otlp:\n    endpoint: http://127.0.0.1:{}\n    signals: [metrics]\n    retry: {{ initial: 20ms, max: 100ms }}\n    spill: {{ enabled: true, max_bytes: 16777216 }}\n",
        dir.path().join("store").display(),
        sink.grpc
    );
    let mut first = Agent::start(&config)?;
    eventually(Duration::from_secs(30), "three rounds spilled", || {
        (metric(&first, "sidelight_exporter_spill_depth", "metrics")? >= 3.0).then_some(())
    })?;
    signal(&first.proc.0, 15);
    let status = wait_exit(&mut first.proc.0, Duration::from_secs(10)).ok_or("no exit")?;
    assert!(status.success(), "clean stop: {status:?}");
    let queued = first
        .log_lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "own-telemetry export stopped")
        .and_then(|v| v["queued"].as_u64())
        .ok_or("the stop line with the rounds queued")?;
    assert!(queued >= 3);
    assert_eq!(
        sink.state()?["items"]["metrics"],
        0,
        "nothing got through while down"
    );

    std::fs::remove_file(&down)?;
    let restart_ns = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64;
    let second = Agent::start(&config)?;
    let times = eventually(Duration::from_secs(30), "the first run's rounds", || {
        let s = sink.state().ok()?;
        let before: Vec<u64> = s["build_info_times"]
            .as_array()?
            .iter()
            .filter_map(|t| t.as_u64())
            .filter(|t| *t < restart_ns)
            .collect();
        (before.len() as u64 >= queued).then_some(before)
    })?;
    assert_eq!(
        times.len() as u64,
        queued,
        "every round of the first run, once"
    );
    assert!(
        second
            .log_lines()
            .iter()
            .any(|l| l.contains("replaying the OTLP spill")),
        "the second run says it replays"
    );
    Ok(())
}

#[test]
fn remote_write_reaches_a_real_prometheus() -> Result {
    let prom = Prometheus::start_receiver()?;
    let agent = Agent::start(&format!(
        "http: {{ listen: 127.0.0.1:0 }}\nhost: {{ interval: 1s }}\nstore: {{ path: {{dir}}/data }}\nexport:\n  remote_write:\n    url: {}/api/v1/write\n    interval: 1s\n    external_labels: {{ instance: e2e-agent }}\n",
        prom.url
    ))?;
    for q in [
        "sidelight_build_info{instance=\"e2e-agent\"}",
        "node_load1{instance=\"e2e-agent\"}",
        "node_cpu_seconds_total{instance=\"e2e-agent\",mode=\"idle\"}",
        "process_resident_memory_bytes{instance=\"e2e-agent\",target=\"sidelight\"}",
    ] {
        let r = eventually(Duration::from_secs(30), q, || {
            prom.query(q).ok().filter(|r| !r.is_empty())
        })?;
        assert!(r[0]["value"][1].as_str().is_some(), "{q}: {r:?}");
    }
    let info = prom.query("sidelight_build_info{instance=\"e2e-agent\"}")?;
    assert_eq!(info[0]["metric"]["version"], env!("CARGO_PKG_VERSION"));
    // Several rounds: more than one sample of one series within the last minute.
    eventually(
        Duration::from_secs(20),
        "several remote-write rounds",
        || {
            let r = prom
                .query("count_over_time(sidelight_build_info{instance=\"e2e-agent\"}[1m])")
                .ok()?;
            (r.first()?["value"][1].as_str()?.parse::<f64>().ok()? >= 3.0).then_some(())
        },
    )?;
    // Every series a scrape shows (read by the official Python parser, the oracle) is written
    // remotely, and nothing else: the same names, label sets and `le` strings.
    let scraped = || -> Result<std::collections::BTreeSet<String>> {
        let (status, _, body) = get(&agent.url("/metrics"), &[])?;
        assert_eq!(status, 200);
        let mut child = std::process::Command::new(python())
            .arg(workspace().join("tests/python/parse_exposition.py"))
            .arg("text")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        std::io::Write::write_all(child.stdin.as_mut().ok_or("stdin")?, body.as_bytes())?;
        let out = child.wait_with_output()?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let families: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(families
            .as_object()
            .ok_or("families")?
            .values()
            .flat_map(|f| f["series"].as_array().cloned().unwrap_or_default())
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect())
    };
    let written = || -> Result<std::collections::BTreeSet<String>> {
        let mut out = std::collections::BTreeSet::new();
        for r in prom.query("{instance=\"e2e-agent\"}")? {
            let labels = r["metric"].as_object().ok_or("metric")?;
            let name = labels["__name__"].as_str().ok_or("__name__")?;
            let rest: Vec<String> = labels
                .iter()
                .filter(|(k, _)| *k != "__name__" && *k != "instance")
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            out.insert(format!("{name}{{{}}}", rest.join(",")));
        }
        Ok(out)
    };
    let before = scraped()?;
    assert!(
        before
            .iter()
            .any(|s| s.contains("_bucket{") && s.contains("le=")),
        "a histogram in the scrape: {before:?}"
    );
    eventually(
        Duration::from_secs(30),
        "every scraped series written",
        || {
            let w = written().ok()?;
            before.is_subset(&w).then_some(())
        },
    )?;
    let w = written()?;
    let after = scraped()?;
    let extra: Vec<&String> = w
        .iter()
        .filter(|s| !before.contains(*s) && !after.contains(*s))
        .collect();
    assert!(extra.is_empty(), "written but never scraped: {extra:?}");
    let sent = metric(&agent, "sidelight_exporter_sent_total", "remote_write").unwrap_or(0.0);
    assert!(sent > 0.0, "samples counted as sent");
    assert_eq!(
        metric(&agent, "sidelight_exporter_failed_total", "remote_write"),
        None
    );
    Ok(())
}

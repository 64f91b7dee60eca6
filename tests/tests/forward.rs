//! End-to-end forwarding: a real Python service instrumented with the OpenTelemetry SDK sends
//! spans to the agent's OTLP receiver, the agent tails a log file, and both leave through the
//! OTLP exporter to the Python sink (`tests/python/otlp_sink.py`) — with the sink refusing most
//! requests, and with the sink down for a while; and from one agent to another over TLS.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::{Agent, OtlpSink, Proc, Result, eventually, free_port, get};

fn otel_service(name: &str, port: u16, agent_grpc: u16) -> Result<Proc> {
    common::start_otel_service(
        name,
        port,
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{agent_grpc}"),
            ),
        ],
    )
}

fn drive(port: u16, ok: usize, fail: usize) -> Result {
    for i in 0..ok {
        get(&format!("http://127.0.0.1:{port}/items/{i}"), &[])?;
    }
    for _ in 0..fail {
        get(&format!("http://127.0.0.1:{port}/fail"), &[])?;
    }
    let (s, _, body) = get(&format!("http://127.0.0.1:{port}/flush"), &[])?;
    assert_eq!(s, 200, "{body}");
    Ok(())
}

fn config(grpc: u16, http: u16, sink: &OtlpSink) -> String {
    format!(
        "http: {{ listen: 127.0.0.1:0 }}\nstore: {{ path: {{dir}}/data }}\n\
         otlp: {{ grpc: 127.0.0.1:{grpc}, http: 127.0.0.1:{http} }}\n\
         logs:\n  - {{ source: app, service: checkout, include: ['{{dir}}/app/*.log'] }}\n\
         export:\n  otlp:\n    endpoint: http://127.0.0.1:{}\n    protocol: grpc\n\
         \x20   signals: [traces, logs]\n    self_metrics: false\n\
         \x20   retry: {{ initial: 20ms, max: 200ms, max_elapsed: 0s }}\n\
         \x20   batch: {{ max_items: 8, linger: 50ms }}\n",
        sink.grpc
    )
}

/// Spans the agent's receivers accepted (both receivers).
fn accepted_spans(agent: &Agent) -> f64 {
    let (_, _, body) = get(&agent.url("/metrics"), &[]).unwrap_or_default();
    body.lines()
        .filter(|l| {
            l.starts_with("sidelight_receiver_accepted_total{") && l.contains("signal=\"traces\"")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn write_log_lines(agent: &Agent, from: usize, to: usize) -> Result {
    let dir = agent.dir.path().join("app");
    std::fs::create_dir_all(&dir)?;
    let mut text = String::new();
    for seq in from..to {
        text.push_str(
            &serde_json::json!({"message": format!("order {seq} placed"), "levelname": "INFO", "seq": seq})
                .to_string(),
        );
        text.push('\n');
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("app.log"))?;
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    Ok(())
}

/// Counts of each log body the sink received.
fn log_bodies(state: &serde_json::Value) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for b in state["logs"].as_array().into_iter().flatten() {
        *m.entry(b.as_str().unwrap_or("").to_owned()).or_default() += 1;
    }
    m
}

#[test]
fn python_spans_and_tailed_logs_arrive_intact_through_70_percent_unavailable() -> Result {
    // Seeded: the first draws refuse (0.32, 0.15, 0.65, ...), so refusals happen however few
    // requests the exporter's batching makes.
    let sink = OtlpSink::start(&["--unavailable-fraction", "0.7", "--seed", "7"])?;
    let (grpc, http) = (free_port(), free_port());
    let agent = Agent::start(&config(grpc, http, &sink))?;
    let port = free_port();
    let _svc = otel_service("checkout", port, grpc)?;
    drive(port, 60, 6)?;
    write_log_lines(&agent, 0, 300)?;

    let accepted = eventually(Duration::from_secs(20), "the spans to be accepted", || {
        let n = accepted_spans(&agent);
        (n >= 66.0).then_some(n)
    })?;
    let state = eventually(
        Duration::from_secs(60),
        "every span and log at the sink",
        || {
            let s = sink.state().ok()?;
            let spans = s["items"]["traces"].as_f64()?;
            let logs = s["items"]["logs"].as_f64()?;
            (spans >= accepted && logs >= 300.0).then_some(s)
        },
    )?;
    assert!(
        state["refused"].as_u64().unwrap_or(0) > 0,
        "the sink refused requests"
    );
    // Exactly what was accepted arrived: retries did not duplicate (the sink never stored a
    // refused request), and nothing was lost.
    assert_eq!(state["items"]["traces"].as_f64(), Some(accepted));
    let bodies = log_bodies(&state);
    for seq in 0..300 {
        assert_eq!(
            bodies.get(&format!("order {seq} placed")),
            Some(&1),
            "log {seq} arrived once"
        );
    }
    // Resources and scopes as the SDK sent them, and the log source's resource.
    let resources = state["resources"].as_array().ok_or("resources")?;
    let python = resources
        .iter()
        .find(|r| r["service.name"] == "checkout" && r["telemetry.sdk.language"] == "python")
        .ok_or_else(|| format!("the SDK's resource, got {resources:?}"))?;
    assert!(python["telemetry.sdk.version"].is_string());
    assert!(
        resources
            .iter()
            .any(|r| r["service.name"] == "checkout" && r["host.name"].is_string()),
        "the log source's resource"
    );
    let scopes = state["scopes"].as_array().ok_or("scopes")?;
    assert!(
        scopes
            .iter()
            .any(|s| s["name"] == "opentelemetry.instrumentation.fastapi"
                && s["version"].as_str().is_some_and(|v| !v.is_empty())),
        "the instrumentation scope with its version: {scopes:?}"
    );
    // Every refusal was retried and counted.
    let retried: f64 = ["traces", "logs"]
        .iter()
        .map(|s| {
            agent.metric(
                "sidelight_exporter_retried_total",
                &format!("signal=\"{s}\""),
            )
        })
        .sum();
    assert!(retried > 0.0, "retries counted");
    assert!(
        retried >= state["refused"].as_f64().unwrap_or(0.0),
        "every refusal retried: {retried} retries, {} refused",
        state["refused"]
    );
    Ok(())
}

#[test]
fn a_sink_down_for_a_while_loses_nothing_accepted() -> Result {
    let down = tempfile::NamedTempFile::new()?;
    let down_path = down.path().to_string_lossy().into_owned();
    let sink = OtlpSink::start(&["--down-file", &down_path])?;
    let (grpc, http) = (free_port(), free_port());
    let agent = Agent::start(&config(grpc, http, &sink))?;
    let port = free_port();
    let _svc = otel_service("checkout", port, grpc)?;
    drive(port, 30, 0)?;
    write_log_lines(&agent, 0, 200)?;
    let accepted = eventually(Duration::from_secs(20), "the spans to be accepted", || {
        let n = accepted_spans(&agent);
        (n >= 30.0).then_some(n)
    })?;
    // While the sink is down nothing arrives; the exporter keeps retrying and the log records
    // stay unacknowledged (the tailer's checkpoint waits).
    std::thread::sleep(Duration::from_secs(2));
    let s = sink.state()?;
    assert_eq!(s["items"]["traces"].as_f64(), Some(0.0));
    assert!(agent.metric("sidelight_exporter_retried_total", "") > 0.0);
    assert!(
        agent.metric("sidelight_log_unacked_bytes", "source=\"app\"") > 0.0,
        "log records are not acknowledged while the sink is down"
    );
    drop(down);
    let state = eventually(
        Duration::from_secs(30),
        "everything after the sink came back",
        || {
            let s = sink.state().ok()?;
            (s["items"]["traces"].as_f64()? >= accepted && s["items"]["logs"].as_f64()? >= 200.0)
                .then_some(s)
        },
    )?;
    assert_eq!(state["items"]["traces"].as_f64(), Some(accepted));
    let bodies = log_bodies(&state);
    assert_eq!(bodies.len(), 200);
    assert!(bodies.values().all(|&n| n == 1));
    eventually(
        Duration::from_secs(10),
        "the checkpoint to catch up",
        || (agent.metric("sidelight_log_unacked_bytes", "source=\"app\"") == 0.0).then_some(()),
    )?;
    Ok(())
}

/// VmRSS of the agent, in bytes.
fn rss_bytes(agent: &Agent) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.proc.0.id()))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or("no VmRSS")?;
    Ok(kib * 1024.0)
}

/// The queue's byte bound is the memory a backlog takes: with the default 64 MiB logs queue and
/// a sink that is down, a file far larger than the queue is read until the queue is full, and
/// the agent's RSS stays within the bound plus the stated overhead (README: 48 MiB).
#[test]
fn a_backlog_takes_no_more_memory_than_the_queue_bound() -> Result {
    let down = tempfile::NamedTempFile::new()?;
    let down_path = down.path().to_string_lossy().into_owned();
    let sink = OtlpSink::start(&["--down-file", &down_path])?;
    let config = format!(
        "http: {{ listen: 127.0.0.1:0 }}\nstore: {{ path: {{dir}}/data }}\n\
         logs:\n  - {{ source: app, include: ['{{dir}}/app/*.log'] }}\n\
         export:\n  otlp:\n    endpoint: http://127.0.0.1:{}\n    protocol: grpc\n\
         \x20   signals: [logs]\n    self_metrics: false\n\
         \x20   retry: {{ initial: 20ms, max: 200ms, max_elapsed: 0s }}\n",
        sink.grpc
    );
    let agent = Agent::start(&config)?;
    // python-json-logger lines of about 300 bytes: 600,000 of them (~180 MB), three times what
    // the queue holds encoded.
    let dir = agent.dir.path().join("app");
    std::fs::create_dir_all(&dir)?;
    let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("app.log"))?);
    for seq in 0..600_000 {
        writeln!(
            f,
            "{{\"asctime\": \"2026-12-06 13:00:00,123\", \"levelname\": \"INFO\", \"name\": \"shop.orders\", \"message\": \"order {seq} placed for customer {} with 3 items\", \"order_id\": {seq}, \"customer\": \"c-{}\", \"amount\": 12.5, \"currency\": \"EUR\", \"region\": \"eu-west-1\", \"request_id\": \"{seq:032x}\"}}",
            seq % 977,
            seq % 977
        )?;
    }
    f.flush()?;
    drop(f);
    // Read until the queue is full, then the tailer waits.
    let mut last = -1.0;
    let read = eventually(
        Duration::from_secs(60),
        "the tailer to stop reading",
        || {
            let now = agent.metric("sidelight_log_bytes_total", "source=\"app\"");
            let settled = now > 0.0 && now == last;
            last = now;
            std::thread::sleep(Duration::from_millis(500));
            settled.then_some(now)
        },
    )?;
    let queued = agent.metric("sidelight_queue_bytes", "queue=\"otlp_logs\"");
    let rss = rss_bytes(&agent)?;
    eprintln!("backlog: read {read} bytes, queue {queued} bytes, RSS {rss} bytes");
    assert!(read < 180e6, "the tailer stopped before the end: {read}");
    assert!(queued > 32.0 * 1048576.0, "the queue filled: {queued}");
    assert!(queued <= 64.0 * 1048576.0, "within its bound: {queued}");
    assert!(
        rss <= (64.0 + 48.0) * 1048576.0,
        "RSS {rss} within the queue bound + 48 MiB"
    );
    Ok(())
}

/// A sink that is only busy — gRPC RESOURCE_EXHAUSTED without RetryInfo, which the OTLP spec
/// calls non-retryable for data the sender cannot keep — does not make the agent drop tailed
/// lines: the files are their buffer, so they are retried until the sink takes them.
#[test]
fn a_busy_sink_loses_no_tailed_line() -> Result {
    let down = tempfile::NamedTempFile::new()?;
    let down_path = down.path().to_string_lossy().into_owned();
    let sink = OtlpSink::start(&[
        "--down-file",
        &down_path,
        "--refuse-with",
        "resource_exhausted",
    ])?;
    let (grpc, http) = (free_port(), free_port());
    let agent = Agent::start(&config(grpc, http, &sink))?;
    write_log_lines(&agent, 0, 300)?;
    eventually(Duration::from_secs(20), "refusals", || {
        (sink.state().ok()?["refused"].as_f64()? >= 3.0).then_some(())
    })?;
    write_log_lines(&agent, 300, 500)?;
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(sink.state()?["items"]["logs"].as_f64(), Some(0.0));
    assert!(
        agent.metric("sidelight_log_unacked_bytes", "source=\"app\"") > 0.0,
        "tailed records stay unacknowledged while the sink refuses"
    );
    assert_eq!(
        agent.metric("sidelight_exporter_failed_total", "signal=\"logs\""),
        0.0,
        "nothing counted as dropped"
    );
    drop(down);
    let state = eventually(
        Duration::from_secs(30),
        "every line after the sink recovered",
        || {
            let s = sink.state().ok()?;
            (s["items"]["logs"].as_f64()? >= 500.0).then_some(s)
        },
    )?;
    let bodies = log_bodies(&state);
    assert_eq!(bodies.len(), 500, "every line arrived");
    assert!(bodies.values().all(|&n| n == 1), "and once");
    eventually(
        Duration::from_secs(10),
        "the checkpoint to catch up",
        || (agent.metric("sidelight_log_unacked_bytes", "source=\"app\"") == 0.0).then_some(()),
    )?;
    Ok(())
}

/// An outage during fast rotation, scaled for CI: a Python service logs through
/// `RotatingFileHandler` (64 KiB files, about six rotations a second, `backups` kept) under the
/// embedded default's pattern (`*.log`: the rotated names are not included) while the endpoint
/// answers UNAVAILABLE for 16 s. The small queue fills within a second and the tailer waits in
/// its hand-off: it reads nothing more, but file events and scans still follow the files the
/// service creates and rotates out of the glob meanwhile, and hold them open; once the endpoint
/// is back every line arrives, none twice, and nothing is counted lost.
fn outage_during_fast_rotation(backups: usize) -> Result {
    let down_dir = tempfile::tempdir()?;
    let down = down_dir.path().join("down");
    let sink = OtlpSink::start(&["--down-file", &down.to_string_lossy()])?;
    let config = format!(
        "http: {{ listen: 127.0.0.1:0 }}\nstore: {{ path: {{dir}}/data }}\n\
         logs:\n  - {{ source: app, include: ['{{dir}}/app/*.log'] }}\n\
         export:\n  otlp:\n    endpoint: http://127.0.0.1:{}\n    protocol: grpc\n\
         \x20   signals: [logs]\n    self_metrics: false\n\
         \x20   retry: {{ initial: 20ms, max: 500ms, max_elapsed: 0s }}\n\
         \x20   queue: {{ max_items: 8, max_bytes: 4194304 }}\n",
        sink.grpc
    );
    let agent = Agent::start(&config)?;
    let app = agent.dir.path().join("app");
    let (rate, seconds) = (2000usize, 24usize);
    let count = rate * seconds;
    let writer = Proc(
        std::process::Command::new(common::python())
            .arg(common::workspace().join("tests/python/log_writer.py"))
            .arg("jsonlogger")
            .arg(app.join("app.log"))
            .args(["--count", &count.to_string(), "--rate", &rate.to_string()])
            .args(["--max-bytes", "65536", "--backups", &backups.to_string()])
            .arg("--numbered")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()?,
    );
    std::thread::sleep(Duration::from_secs(4));
    std::fs::write(&down, b"")?;
    let outage = std::time::Instant::now();
    // The tailer stops: the queue is full and the hand-off waits.
    eventually(Duration::from_secs(10), "the logs queue to fill", || {
        (agent.metric("sidelight_queue_depth", "queue=\"otlp_logs\"") >= 8.0).then_some(())
    })?;
    let read_at_full = agent.metric("sidelight_log_bytes_total", "source=\"app\"");
    std::thread::sleep(Duration::from_secs(16).saturating_sub(outage.elapsed()));
    let read_at_end = agent.metric("sidelight_log_bytes_total", "source=\"app\"");
    let rotated_during = std::fs::read_dir(&app)?.count();
    std::fs::remove_file(&down)?;
    let mut writer = writer;
    assert!(
        common::wait_exit(&mut writer.0, Duration::from_secs(60)).is_some_and(|s| s.success()),
        "the writer finished"
    );
    let files = std::fs::read_dir(&app)?.count();
    let written_at = outage.elapsed();
    let state = eventually(
        Duration::from_secs(60),
        "every line after the endpoint came back",
        || {
            let s = sink.state().ok()?;
            (s["items"]["logs"].as_f64()? >= count as f64).then_some(s)
        },
    );
    let state = match state {
        Ok(s) => s,
        Err(e) => sink.state().map_err(|_| e)?,
    };
    let mut seen: HashMap<usize, usize> = HashMap::new();
    for body in state["logs"].as_array().into_iter().flatten() {
        let seq = body
            .as_str()
            .and_then(|b| b.strip_prefix("request "))
            .and_then(|b| b.strip_suffix(" handled"))
            .and_then(|n| n.parse().ok());
        if let Some(seq) = seq {
            *seen.entry(seq).or_default() += 1;
        }
    }
    let missing: Vec<usize> = (1..=count).filter(|s| !seen.contains_key(s)).collect();
    let dups: usize = seen.values().map(|n| n - 1).sum();
    let lost_bytes = agent.metric("sidelight_log_lost_bytes_total", "");
    let failed = agent.metric("sidelight_exporter_failed_total", "signal=\"logs\"");
    eprintln!(
        "outage 16 s at {rate} lines/s, backupCount {backups}, {files} files ({rotated_during} by the end of the outage), \
         read {read_at_full} bytes when the queue filled, {read_at_end} at the end of the outage, \
         refused {}: {} of {count} lost, {dups} duplicated, lost bytes counted {lost_bytes}, \
         failed {failed}; writer done {written_at:?}, all at the sink {:?} after the outage began",
        state["refused"],
        missing.len(),
        outage.elapsed()
    );
    // The handler rotates at 64 KiB: that many files were written.
    let rotations = agent.metric("sidelight_log_bytes_total", "source=\"app\"") / 65536.0;
    assert!(
        rotations >= 100.0,
        "the writer rotated often: {rotations} files' worth"
    );
    assert!(
        read_at_end < read_at_full + 4.0 * 1048576.0,
        "the tailer waited during the outage: {read_at_full} -> {read_at_end} bytes"
    );
    assert!(
        missing.is_empty(),
        "{} lines lost, first {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    assert_eq!(dups, 0, "nothing is sent twice");
    assert_eq!(lost_bytes, 0.0, "nothing counted lost");
    assert_eq!(failed, 0.0, "nothing dropped");
    Ok(())
}

/// Every rotated file stays on disk (`backupCount` 2000): after the outage, the ones the tailer
/// followed while it waited, and any it had no descriptor for, are read from their rotated names.
#[test]
fn an_outage_during_fast_rotation_loses_no_line_with_only_the_live_name_included() -> Result {
    outage_during_fast_rotation(2000)
}

/// `backupCount` 10: the service deletes each rotated file about 1.7 s after creating it, long
/// before the 16 s outage ends. The tailer, waiting in its hand-off, still follows each file
/// through its renames and holds it open, so the deleted files are read once the endpoint is
/// back.
#[test]
fn an_outage_longer_than_the_handler_keeps_files_loses_no_line() -> Result {
    outage_during_fast_rotation(10)
}

/// An answer that says the data itself is bad (INVALID_ARGUMENT) is final even for tailed
/// lines: retrying would never succeed. They are counted as failed and the checkpoint moves on.
#[test]
fn a_sink_that_rejects_the_data_drops_it_counted() -> Result {
    let down = tempfile::NamedTempFile::new()?;
    let down_path = down.path().to_string_lossy().into_owned();
    let sink = OtlpSink::start(&[
        "--down-file",
        &down_path,
        "--refuse-with",
        "invalid_argument",
    ])?;
    let (grpc, http) = (free_port(), free_port());
    let agent = Agent::start(&config(grpc, http, &sink))?;
    write_log_lines(&agent, 0, 100)?;
    let failed = eventually(Duration::from_secs(20), "the refusal to be counted", || {
        let n = agent.metric(
            "sidelight_exporter_failed_total",
            "reason=\"invalid_argument\"",
        );
        (n >= 100.0).then_some(n)
    })?;
    assert_eq!(failed, 100.0);
    eventually(Duration::from_secs(10), "the checkpoint to move on", || {
        (agent.metric("sidelight_log_unacked_bytes", "source=\"app\"") == 0.0).then_some(())
    })?;
    Ok(())
}

#[test]
fn a_full_pipeline_stops_the_tailer_and_memory_stays_bounded() -> Result {
    let down = tempfile::NamedTempFile::new()?;
    let down_path = down.path().to_string_lossy().into_owned();
    let sink = OtlpSink::start(&["--down-file", &down_path])?;
    let config = format!(
        "http: {{ listen: 127.0.0.1:0 }}\nstore: {{ path: {{dir}}/data }}\n\
         logs:\n  - {{ source: app, include: ['{{dir}}/app/*.log'] }}\n\
         export:\n  otlp:\n    endpoint: http://127.0.0.1:{}\n    protocol: grpc\n\
         \x20   signals: [logs]\n    self_metrics: false\n\
         \x20   retry: {{ initial: 20ms, max: 200ms, max_elapsed: 0s }}\n\
         \x20   queue: {{ max_items: 4, max_bytes: 4194304 }}\n",
        sink.grpc
    );
    let agent = Agent::start(&config)?;
    // 24 MiB of logs while the sink is down.
    let dir = agent.dir.path().join("app");
    std::fs::create_dir_all(&dir)?;
    let pad = "p".repeat(440);
    let mut text = String::with_capacity(25 << 20);
    let lines = 48_000;
    for seq in 0..lines {
        text.push_str(&format!(
            "{{\"message\": \"order {seq} placed\", \"seq\": {seq}, \"pad\": \"{pad}\"}}\n"
        ));
    }
    let size = text.len() as f64;
    std::fs::write(dir.join("app.log"), &text)?;
    drop(text);
    std::thread::sleep(Duration::from_secs(3));
    let read = agent.metric("sidelight_log_bytes_total", "source=\"app\"");
    let depth = agent.metric("sidelight_queue_depth", "queue=\"otlp_logs\"");
    let rss = agent.metric("process_resident_memory_bytes", "target=\"sidelight\"");
    eprintln!("sink down: read {read} of {size} bytes, queue depth {depth}, agent RSS {rss}");
    assert!(
        read < size / 2.0,
        "the tailer stopped reading: {read} of {size}"
    );
    assert!(depth >= 1.0, "the queue holds what was read");
    drop(down);
    let state = eventually(
        Duration::from_secs(90),
        "every line after the sink came back",
        || {
            let s = sink.state().ok()?;
            (s["items"]["logs"].as_f64()? >= lines as f64).then_some(s)
        },
    )?;
    let bodies = log_bodies(&state);
    assert_eq!(bodies.len(), lines, "every line once");
    assert!(bodies.values().all(|&n| n == 1));
    Ok(())
}

/// An agent whose receivers speak TLS with `cert`, exporting traces to the sink.
fn tls_receiver_config(grpc: u16, http: u16, cert: &Path, key: &Path, sink: &OtlpSink) -> String {
    format!(
        "http: {{ listen: 127.0.0.1:0 }}\nstore: {{ path: {{dir}}/data }}\n\
         otlp:\n  grpc: 127.0.0.1:{grpc}\n  http: 127.0.0.1:{http}\n\
         \x20 tls: {{ cert_file: {}, key_file: {} }}\n\
         export:\n  otlp:\n    endpoint: http://127.0.0.1:{}\n    protocol: grpc\n\
         \x20   signals: [traces]\n    self_metrics: false\n\
         \x20   batch: {{ linger: 50ms }}\n",
        cert.display(),
        key.display(),
        sink.grpc
    )
}

/// An agent exporting traces over TLS (OTLP/gRPC) to `https://localhost:{to}`, trusting `ca`.
fn tls_sender_config(grpc: u16, http: u16, to: u16, ca: &Path) -> String {
    format!(
        "http: {{ listen: 127.0.0.1:0 }}\nstore: {{ path: {{dir}}/data }}\n\
         otlp: {{ grpc: 127.0.0.1:{grpc}, http: 127.0.0.1:{http} }}\n\
         export:\n  otlp:\n    endpoint: https://localhost:{to}\n    protocol: grpc\n\
         \x20   tls: {{ ca_file: {} }}\n\
         \x20   signals: [traces]\n    self_metrics: false\n\
         \x20   retry: {{ initial: 20ms, max: 200ms, max_elapsed: 0s }}\n\
         \x20   batch: {{ linger: 50ms }}\n",
        ca.display()
    )
}

/// Sum of a family's samples whose labels contain `fragment`.
fn sum_of(agent: &Agent, family: &str, fragment: &str) -> f64 {
    let (_, _, body) = get(&agent.url("/metrics"), &[]).unwrap_or_default();
    body.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(fragment))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[test]
fn agent_to_agent_over_tls_spans_arrive_intact_and_a_wrong_ca_is_refused_on_both_sides() -> Result {
    let certs = tempfile::tempdir()?;
    let b_cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    // Another CA, with its own name (rcgen's simple certificates share one).
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "another CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other = params.self_signed(&rcgen::KeyPair::generate()?)?;
    let (cert, key, wrong_ca) = (
        certs.path().join("b.crt"),
        certs.path().join("b.key"),
        certs.path().join("other.crt"),
    );
    std::fs::write(&cert, b_cert.cert.pem())?;
    std::fs::write(&key, b_cert.signing_key.serialize_pem())?;
    std::fs::write(&wrong_ca, other.pem())?;

    // Python service -> agent A -> (OTLP/gRPC over TLS) -> agent B -> Python sink.
    let sink = OtlpSink::start(&[])?;
    let (b_grpc, b_http) = (free_port(), free_port());
    let b = Agent::start(&tls_receiver_config(b_grpc, b_http, &cert, &key, &sink))?;
    let (a_grpc, a_http) = (free_port(), free_port());
    let a = Agent::start(&tls_sender_config(a_grpc, a_http, b_grpc, &cert))?;
    let port = free_port();
    let _svc = otel_service("checkout", port, a_grpc)?;
    drive(port, 40, 4)?;

    let accepted = eventually(
        Duration::from_secs(20),
        "the spans to be accepted by A",
        || {
            let n = accepted_spans(&a);
            (n >= 44.0).then_some(n)
        },
    )?;
    let state = eventually(Duration::from_secs(30), "every span at the sink", || {
        let s = sink.state().ok()?;
        (s["items"]["traces"].as_f64()? >= accepted).then_some(s)
    })?;
    assert_eq!(
        state["items"]["traces"].as_f64(),
        Some(accepted),
        "no duplicates"
    );
    assert_eq!(accepted_spans(&b), accepted, "B took what A sent, over TLS");
    let resources = state["resources"].as_array().ok_or("resources")?;
    assert!(
        resources.iter().any(|r| r["service.name"] == "checkout"
            && r["telemetry.sdk.language"] == "python"
            && r["telemetry.sdk.version"].is_string()),
        "the SDK's resource through both agents: {resources:?}"
    );
    let scopes = state["scopes"].as_array().ok_or("scopes")?;
    assert!(
        scopes
            .iter()
            .any(|s| s["name"] == "opentelemetry.instrumentation.fastapi"
                && s["version"].as_str().is_some_and(|v| !v.is_empty())),
        "the instrumentation scope with its version: {scopes:?}"
    );
    let spans: Vec<&str> = state["spans"]
        .as_array()
        .ok_or("spans")?
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    assert!(
        spans.iter().any(|s| s.starts_with("GET /items")),
        "{spans:?}"
    );
    // Both agents derive the same span metrics from the same spans.
    let calls = |agent: &Agent| {
        sum_of(
            agent,
            "traces_span_metrics_calls_total",
            "service_name=\"checkout\"",
        )
    };
    assert!(calls(&a) >= 44.0, "{}", calls(&a));
    assert_eq!(calls(&a), calls(&b));
    assert_eq!(
        sum_of(&b, "sidelight_receiver_tls_handshake_failures_total", ""),
        0.0
    );

    // Agent C trusts another CA: its handshakes fail (retried, logged with the rustls reason),
    // B counts them as unknown_ca, and nothing of C's reaches the sink.
    let (c_grpc, c_http) = (free_port(), free_port());
    let c = Agent::start(&tls_sender_config(c_grpc, c_http, b_grpc, &wrong_ca))?;
    let span = serde_json::json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "wrong-ca"}}]},
        "scopeSpans": [{"spans": [{
            "traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331",
            "name": "GET /wrong", "kind": 2,
            "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000005000000"
        }]}]
    }]});
    let (status, body) = common::post_json(c_http, "/v1/traces", &span.to_string())?;
    assert_eq!(status, 200, "{body}");
    eventually(
        Duration::from_secs(20),
        "C's refused handshakes to be counted",
        || {
            let retried = c.metric("sidelight_exporter_retried_total", "signal=\"traces\"");
            let unknown_ca = sum_of(
                &b,
                "sidelight_receiver_tls_handshake_failures_total",
                "reason=\"unknown_ca\"",
            );
            (retried >= 2.0 && unknown_ca >= 2.0).then_some(())
        },
    )?;
    assert!(
        c.log_lines()
            .iter()
            .any(|l| l.contains("TLS with https://localhost") && l.contains("UnknownIssuer")),
        "C logs the TLS failure: {:?}",
        c.log_lines()
    );
    let state = sink.state()?;
    assert_eq!(state["items"]["traces"].as_f64(), Some(accepted));
    let resources = state["resources"].as_array().ok_or("resources")?;
    assert!(!resources.iter().any(|r| r["service.name"] == "wrong-ca"));
    Ok(())
}

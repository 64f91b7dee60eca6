//! End-to-end tests of the foundation: the real binary, a real Prometheus scraping it, a real
//! Python service it watches, signals, reloads and bad configurations.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    Agent, Proc, Prometheus, Result, eventually, get, python, sample, sidelight_bin, signal,
    wait_exit,
};

const PROM_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts the Python stand-in service (a parent and two workers) with a unique marker.
fn python_service(marker: &str) -> Result<Proc> {
    let script = common::workspace().join("tests/python/idle_service.py");
    let mut child = Command::new(python())
        .arg(script)
        .args(["--marker", marker, "--workers", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut out = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&mut out), &mut line)?;
    if !line.starts_with("ready") {
        return Err(format!("python service did not start: {line:?}").into());
    }
    Ok(Proc(child))
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    )
}

#[test]
fn prometheus_scrapes_host_and_python_process_metrics() -> Result {
    let marker = unique("sidelight-e2e-svc");
    let _svc = python_service(&marker)?;
    // The bearer token lives in a file, as a secret should.
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("token"), "scrape-token\n")?;
    let agent = Agent::start(&format!(
        "http:\n  listen: 127.0.0.1:0\n  auth: {{ bearer_token_file: {}/token }}\nhost: {{ interval: 1s }}\nprocesses:\n  - target: pyapp\n    match: {{ cmdline: \"{marker}\" }}\nstore: {{ path: {{dir}}/data }}\n",
        dir.path().display()
    ))?;

    // Without the token the agent refuses; the probes stay open.
    assert_eq!(get(&agent.url("/metrics"), &[])?.0, 401);
    assert_eq!(get(&agent.url("/healthz"), &[])?.0, 200);
    // The scheme is case-insensitive (RFC 9110 §11.1), as on the OTLP receivers; other schemes
    // and wrong tokens are refused.
    for (value, want) in [
        ("bearer scrape-token", 200),
        ("BEARER scrape-token", 200),
        ("Bearer  scrape-token ", 200),
        ("Basic c2NyYXBlLXRva2Vu", 401),
        ("bearer scrape-toke", 401),
        ("Bearer", 401),
    ] {
        let got = get(&agent.url("/metrics"), &[("authorization", value)])?.0;
        assert_eq!(got, want, "Authorization: {value}");
    }
    eventually(Duration::from_secs(10), "readyz", || {
        get(&agent.url("/readyz"), &[]).ok().filter(|r| r.0 == 200)
    })?;

    let prom = Prometheus::start(agent.addr, Some("scrape-token"))?;
    eventually(PROM_TIMEOUT, "the target to be up", || {
        let health = prom.target_health().ok()?;
        health
            .iter()
            .all(|(h, _)| h == "up")
            .then_some(())
            .filter(|_| !health.is_empty())
    })
    .map_err(|e| format!("{e}: {:?}", prom.target_health()))?;

    for q in [
        "node_cpu_seconds_total{mode=\"idle\"}",
        "node_memory_MemAvailable_bytes",
        "node_memory_MemTotal_bytes",
        "node_load1",
        "node_network_receive_bytes_total",
        "process_resident_memory_bytes{target=\"pyapp\"} > 8e6",
        "process_resident_memory_bytes{target=\"sidelight\"}",
        "sidelight_build_info",
    ] {
        eventually(PROM_TIMEOUT, q, || {
            prom.query(q).ok().filter(|r| !r.is_empty())
        })?;
    }
    // The parent and its two workers are one target.
    let procs = eventually(PROM_TIMEOUT, "3 python processes", || {
        let r = prom
            .query("sidelight_target_processes{target=\"pyapp\"}")
            .ok()?;
        let v: f64 = r.first()?["value"][1].as_str()?.parse().ok()?;
        (v == 3.0).then_some(v)
    });
    assert!(procs.is_ok(), "{procs:?}");
    Ok(())
}

#[test]
fn exposition_is_valid_for_the_official_python_parsers() -> Result {
    let agent = Agent::start(
        "http: { listen: 127.0.0.1:0 }\nhost: { interval: 1s }\nstore: { path: {dir}/data }\n",
    )?;
    eventually(Duration::from_secs(10), "readyz", || {
        get(&agent.url("/readyz"), &[]).ok().filter(|r| r.0 == 200)
    })?;
    for (accept, mode, ctype) in [
        (
            "application/openmetrics-text; version=1.0.0",
            "openmetrics",
            "application/openmetrics-text",
        ),
        ("text/plain", "text", "text/plain; version=0.0.4"),
    ] {
        let (status, content_type, body) = get(&agent.url("/metrics"), &[("Accept", accept)])?;
        assert_eq!(status, 200);
        assert!(content_type.starts_with(ctype), "{content_type}");
        let mut child = Command::new(python())
            .arg(common::workspace().join("tests/python/parse_exposition.py"))
            .arg(mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        std::io::Write::write_all(child.stdin.as_mut().ok_or("stdin")?, body.as_bytes())?;
        let out = child.wait_with_output()?;
        assert!(
            out.status.success(),
            "{mode} parse failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let families: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        // prometheus_client strips `_total` from counter family names.
        assert_eq!(
            families["node_cpu_seconds"]["type"], "counter",
            "{families}"
        );
        assert_eq!(families["node_memory_MemAvailable_bytes"]["type"], "gauge");
        assert_eq!(families["sidelight_target_processes"]["type"], "gauge");
    }
    Ok(())
}

#[test]
fn http_surface_answers_probes_404_and_body_limits() -> Result {
    let agent = Agent::start(
        "http: { listen: 127.0.0.1:0, max_body_bytes: 4096 }\nhost: { interval: 1s }\nstore: { path: {dir}/data }\n",
    )?;
    assert_eq!(get(&agent.url("/healthz"), &[])?.0, 200);
    assert_eq!(get(&agent.url("/no/such/path"), &[])?.0, 404);
    let resp = common::client()
        .post(&agent.url("/healthz"))
        .send(&vec![b'x'; 64 * 1024][..])?;
    assert_eq!(resp.status().as_u16(), 413);
    let (status, _, body) = get(&agent.url("/metrics"), &[])?;
    assert_eq!(status, 200);
    assert!(
        sample(&body, "sidelight_target_processes", "target=\"sidelight\"") == Some(1.0),
        "{body}"
    );
    Ok(())
}

#[test]
fn sigterm_and_sigint_stop_cleanly_within_the_deadline() -> Result {
    for sig in [15, 2] {
        let mut agent = Agent::start(
            "agent: { shutdown_timeout: 3s }\nhttp: { listen: 127.0.0.1:0 }\nhost: { interval: 1s }\nstore: { path: {dir}/data }\n",
        )?;
        eventually(Duration::from_secs(10), "readyz", || {
            get(&agent.url("/readyz"), &[]).ok().filter(|r| r.0 == 200)
        })?;
        // A scrape in flight must not hold the shutdown.
        let _ = get(&agent.url("/metrics"), &[])?;
        let started = Instant::now();
        signal(&agent.proc.0, sig);
        let status = wait_exit(&mut agent.proc.0, Duration::from_secs(4))
            .ok_or("agent did not exit within the deadline")?;
        assert_eq!(
            status.code(),
            Some(0),
            "signal {sig}: {:?}",
            agent.log_lines()
        );
        assert!(started.elapsed() < Duration::from_secs(3));
        let logs = agent.log_lines().join("\n");
        assert!(logs.contains("sidelight stopped"), "{logs}");
    }
    Ok(())
}

#[test]
fn bad_config_exits_64_naming_every_bad_key() -> Result {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "http: { listen: not-an-address, colour: blue }\nhost: { interval: often }\nprocesses:\n  - target: web\n    match: { cmdline: \"([\" }\n  - target: web\n    match: {}\nlogz: []\n",
    )?;
    for args in [
        vec!["check-config".to_owned()],
        vec!["run".to_owned(), "--config".to_owned()],
    ] {
        let out = Command::new(sidelight_bin())
            .args(&args)
            .arg(&path)
            .stdin(Stdio::null())
            .output()?;
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        for key in [
            "http.listen:",
            "http.colour: unknown key",
            "host.interval:",
            "processes[0].match.cmdline: invalid regex",
            "processes[1].target: duplicate",
            "processes[1].match: needs at least one",
            "logz: unknown section",
        ] {
            assert!(
                stderr.contains(key),
                "{args:?}: missing {key:?} in\n{stderr}"
            );
        }
    }
    // A good file passes and binds nothing: its port is held by us meanwhile.
    let held = std::net::TcpListener::bind("127.0.0.1:0")?;
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        format!("http: {{ listen: \"{}\" }}\n", held.local_addr()?),
    )?;
    let out = Command::new(sidelight_bin())
        .arg("check-config")
        .arg(&good)
        .output()?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Usage errors are 64 too; --version is 0.
    assert_eq!(
        Command::new(sidelight_bin())
            .arg("frobnicate")
            .output()?
            .status
            .code(),
        Some(64)
    );
    let out = Command::new(sidelight_bin()).arg("--version").output()?;
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("sidelight "));
    Ok(())
}

#[test]
fn sighup_applies_a_valid_config_and_rejects_an_invalid_one() -> Result {
    let marker = unique("sidelight-e2e-reload");
    let _svc = python_service(&marker)?;
    let base =
        "http: { listen: 127.0.0.1:0 }\nhost: { interval: 1s }\nstore: { path: {dir}/data }\n";
    let agent = Agent::start(base)?;
    let cpu = |body: &str| sample(body, "process_cpu_seconds_total", "target=\"sidelight\"");
    let before = eventually(Duration::from_secs(10), "own cpu", || {
        cpu(&get(&agent.url("/metrics"), &[]).ok()?.2)
    })?;

    // Valid: a new target appears without a restart, on the same address, counters kept.
    agent.reload(&format!(
        "{base}processes:\n  - target: late\n    match: {{ cmdline: \"{marker}\" }}\n"
    ))?;
    let body = eventually(Duration::from_secs(10), "the new target", || {
        let (_, _, body) = get(&agent.url("/metrics"), &[]).ok()?;
        (sample(&body, "sidelight_target_processes", "target=\"late\"") == Some(3.0))
            .then_some(body)
    })?;
    assert!(
        cpu(&body).is_some_and(|after| after >= before),
        "counter reset across reload"
    );
    assert_eq!(
        sample(
            &body,
            "sidelight_config_reloads_total",
            "result=\"success\""
        ),
        Some(1.0)
    );

    // Invalid: rejected with the reason logged, the old config keeps running.
    agent.reload("http: { listen: 127.0.0.1:0 }\nhost: { interval: sometimes }\n")?;
    let body = eventually(Duration::from_secs(10), "the rejection", || {
        let (_, _, body) = get(&agent.url("/metrics"), &[]).ok()?;
        (sample(
            &body,
            "sidelight_config_reloads_total",
            "result=\"failure\"",
        ) == Some(1.0))
        .then_some(body)
    })?;
    assert_eq!(
        sample(&body, "sidelight_config_last_reload_successful", ""),
        Some(0.0)
    );
    assert_eq!(
        sample(&body, "sidelight_target_processes", "target=\"late\""),
        Some(3.0)
    );
    let logs = agent.log_lines().join("\n");
    assert!(
        logs.contains("reload rejected") && logs.contains("host.interval"),
        "{logs}"
    );
    Ok(())
}

/// The threads ARCHITECTURE.md ("Threads and tasks") says the agent starts, and no other: the
/// runtime's own (`sidelight`: the main thread and at most 4 blocking-pool threads), one tailer
/// per log source, and the store's owner when DORA or alerts are on. Read from
/// `/proc/<pid>/task/*/comm` while every part is busy at least once.
#[test]
fn the_agent_starts_only_the_threads_the_architecture_names() -> Result {
    let agent = Agent::start(
        r#"http: { listen: 127.0.0.1:0 }
host: { interval: 1s }
store: { path: {dir}/data }
logs:
  - { source: app, include: ["{dir}/logs/*.log"] }
  - { source: worker, include: ["{dir}/logs/worker/*.log"] }
otlp: { grpc: 127.0.0.1:0, http: 127.0.0.1:0 }
dora: { enabled: true }
alerts:
  groups:
    - name: up
      interval: 1s
      rules:
        - alert: AgentDown
          expr: absent(sidelight_build_info)
"#,
    )?;
    eventually(Duration::from_secs(20), "readyz", || {
        get(&agent.url("/readyz"), &[]).ok().filter(|r| r.0 == 200)
    })?;
    // Put the blocking pool and the store to work: scrapes, collection cycles, a deployment.
    common::post_deployment(&agent, "checkout", "1.0.0", "abc123", 3600)?;
    for _ in 0..3 {
        let _ = get(&agent.url("/metrics"), &[])?;
        std::thread::sleep(Duration::from_millis(700));
    }
    let pid = agent.proc.0.id();
    let mut names = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let comm = std::fs::read_to_string(task?.path().join("comm"))?;
        names.push(comm.trim_end().to_owned());
    }
    names.sort();
    let runtime = names.iter().filter(|n| *n == "sidelight").count();
    assert!(
        (1..=5).contains(&runtime),
        "main thread + at most 4 blocking: {names:?}"
    );
    // The kernel keeps 15 bytes of a thread's name.
    for want in ["tail app", "tail worker", "sidelight-store"] {
        assert_eq!(
            names.iter().filter(|n| *n == want).count(),
            1,
            "{want}: {names:?}"
        );
    }
    let others: Vec<_> = names
        .iter()
        .filter(|n| {
            !["sidelight", "tail app", "tail worker", "sidelight-store"].contains(&n.as_str())
        })
        .collect();
    assert!(
        others.is_empty(),
        "threads the architecture does not name: {others:?}"
    );
    Ok(())
}

//! Harness shared by the end-to-end tests: builds and starts the real `sidelight` binary on
//! ephemeral ports and drives it (the agent runner, Python services, traffic, dashboards). The
//! peers and runners other tests share too (the loopback Slack / Teams / webhook peers,
//! Prometheus, the OTLP sink, the HTTP helpers) come from the test kit (`testkit/`,
//! `sidelight-testkit`), re-exported here. Every child process is killed when its handle drops,
//! so a failing test leaves nothing behind.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use sidelight_testkit::*;

/// Builds the agent once per test binary and returns its path.
pub fn sidelight_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "sidelight", "--bin", "sidelight"])
            .current_dir(workspace())
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building sidelight failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("target"));
        let target = if target.is_absolute() {
            target
        } else {
            workspace().join(target)
        };
        target.join("debug").join("sidelight")
    })
    .clone()
}

/// Sends a signal to a child (through `kill(1)`: `unsafe` is forbidden in this workspace).
pub fn signal(child: &Child, sig: i32) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// Waits for a child to exit, up to `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A running agent with its captured log lines.
pub struct Agent {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    /// Starts the agent on `config` (YAML; `{dir}` is replaced by a fresh temp dir) and waits for
    /// its startup line, which names the address it listens on.
    pub fn start(config: &str) -> Result<Agent> {
        Self::start_in(tempfile::tempdir()?, config)
    }

    /// Starts the agent in an existing directory (a restart keeps its store and logs).
    pub fn start_in(dir: tempfile::TempDir, config: &str) -> Result<Agent> {
        Self::start_in_env(dir, config, &[])
    }

    /// Starts the agent with these variables added to its environment (`${VAR}` in the config).
    pub fn start_in_env(
        dir: tempfile::TempDir,
        config: &str,
        env: &[(&str, &str)],
    ) -> Result<Agent> {
        let config = config.replace("{dir}", &dir.path().to_string_lossy());
        let config_path = dir.path().join("sidelight.yaml");
        std::fs::write(&config_path, config)?;
        let mut child = Command::new(sidelight_bin())
            .args(["run", "--config"])
            .arg(&config_path)
            .envs(env.iter().copied())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr)
                .lines()
                .map_while(std::result::Result::ok)
            {
                if std::env::var_os("SIDELIGHT_TEST_ECHO").is_some() {
                    eprintln!("agent: {line}");
                }
                sink.lock().expect("lock").push(line);
            }
        });
        let proc = Proc(child);
        let addr = eventually(Duration::from_secs(30), "the agent's startup line", || {
            logs.lock().expect("lock").iter().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["message"].as_str()?.starts_with("sidelight started"))
                    .then(|| v["listen"].as_str()?.parse().ok())?
            })
        })
        .map_err(|e| format!("{e}; agent said: {:?}", logs.lock().map(|l| l.clone())))?;
        Ok(Agent {
            proc,
            addr,
            dir,
            config_path,
            logs,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Log lines (JSON) so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Rewrites the config file and sends SIGHUP.
    pub fn reload(&self, config: &str) -> Result {
        let config = config.replace("{dir}", &self.dir.path().to_string_lossy());
        let mut f = std::fs::File::create(&self.config_path)?;
        f.write_all(config.as_bytes())?;
        f.sync_all()?;
        signal(&self.proc.0, 1);
        Ok(())
    }
}
impl Agent {
    /// `kill -9`, then hands back the directory (store, logs) for a restart.
    pub fn kill9(self) -> tempfile::TempDir {
        let Agent { proc, dir, .. } = self;
        let mut proc = proc;
        let _ = proc.0.kill();
        let _ = proc.0.wait();
        dir
    }

    /// SIGTERM, waits for the exit (asserting a clean one), hands back the directory.
    pub fn stop(self) -> Result<tempfile::TempDir> {
        let Agent {
            proc, dir, logs, ..
        } = self;
        let mut proc = proc;
        signal(&proc.0, 15);
        let status =
            wait_exit(&mut proc.0, Duration::from_secs(20)).ok_or("no exit after SIGTERM")?;
        if !status.success() {
            return Err(format!(
                "unclean exit {status:?}: {:?}",
                logs.lock().map(|l| l.clone())
            )
            .into());
        }
        Ok(dir)
    }

    /// The value of one sample on `/metrics` (0 when absent).
    pub fn metric(&self, name: &str, label_fragment: &str) -> f64 {
        get(&self.url("/metrics"), &[])
            .ok()
            .and_then(|(_, _, body)| sample(&body, name, label_fragment))
            .unwrap_or(0.0)
    }
}

/// Every log record in a file exporter's output (`path` and its rotated `path.N`), each with the
/// `service.name` of its resource: (service, record as OTLP JSON).
pub fn exported_log_records(path: &Path) -> Vec<(String, serde_json::Value)> {
    let mut files = vec![path.to_path_buf()];
    for n in 1..100 {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{n}"));
        files.push(PathBuf::from(p));
    }
    let mut out = Vec::new();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for line in text.lines() {
            let Ok(req) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            for rl in req["resourceLogs"].as_array().into_iter().flatten() {
                let service = rl["resource"]["attributes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|kv| kv["key"] == "service.name")
                    .and_then(|kv| kv["value"]["stringValue"].as_str())
                    .unwrap_or("")
                    .to_owned();
                for sl in rl["scopeLogs"].as_array().into_iter().flatten() {
                    for r in sl["logRecords"].as_array().into_iter().flatten() {
                        out.push((service.clone(), r.clone()));
                    }
                }
            }
        }
    }
    out
}

/// A record's attribute value as JSON (`{"intValue": "7"}` → the inner value).
pub fn otlp_attr<'a>(record: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    record["attributes"]
        .as_array()?
        .iter()
        .find(|kv| kv["key"] == key)
        .and_then(|kv| kv["value"].as_object())
        .and_then(|v| v.values().next())
}

/// An integer attribute (OTLP JSON writes int64 as a string or a number).
pub fn otlp_int(record: &serde_json::Value, key: &str) -> Option<i64> {
    match otlp_attr(record, key)? {
        serde_json::Value::String(s) => s.parse().ok(),
        v => v.as_i64(),
    }
}
/// Grafana dashboards in `dashboards/`: loading them, walking their panels and variables, finding
/// and substituting Grafana variable references in their PromQL (shared by the dashboard
/// structure test and the full-stack test).
pub mod dashboards {
    use std::collections::HashMap;
    use std::path::PathBuf;

    use serde_json::Value;

    use super::workspace;

    pub struct Dashboard {
        pub file: String,
        pub json: Value,
    }

    pub fn dashboards() -> Vec<Dashboard> {
        let dir = workspace().join("dashboards");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("dashboards/ exists")
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        assert!(
            files.len() >= 4,
            "expected the four dashboards, found {files:?}"
        );
        files
            .into_iter()
            .map(|p| {
                let text = std::fs::read_to_string(&p).expect("readable");
                let json = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", p.display()));
                Dashboard {
                    file: p
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    json,
                }
            })
            .collect()
    }

    /// Every panel, including those nested in (collapsed) rows.
    pub fn panels(d: &Value) -> Vec<&Value> {
        fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
            for p in list.as_array().into_iter().flatten() {
                out.push(p);
                walk(&p["panels"], out);
            }
        }
        let mut out = Vec::new();
        walk(&d["panels"], &mut out);
        out
    }

    pub fn variables(d: &Value) -> &[Value] {
        d["templating"]["list"]
            .as_array()
            .map_or(&[], Vec::as_slice)
    }

    /// The variable references in `text`: `$name`, `${name}`, `${name:format}` and `[[name]]`,
    /// as (start, end, name) byte ranges.
    pub fn var_refs(text: &str) -> Vec<(usize, usize, String)> {
        let b = text.as_bytes();
        let ident = |from: usize| {
            let mut end = from;
            while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
                end += 1;
            }
            end
        };
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'$' && b.get(i + 1) == Some(&b'{') {
                let end = ident(i + 2);
                let close = text[end..].find('}').map(|o| end + o);
                if let Some(close) = close.filter(|_| end > i + 2) {
                    out.push((i, close + 1, text[i + 2..end].to_owned()));
                    i = close + 1;
                    continue;
                }
            } else if b[i] == b'$' {
                let end = ident(i + 1);
                if end > i + 1 {
                    out.push((i, end, text[i + 1..end].to_owned()));
                    i = end;
                    continue;
                }
            } else if b[i] == b'[' && b.get(i + 1) == Some(&b'[') {
                let end = ident(i + 2);
                if end > i + 2 && text[end..].starts_with("]]") {
                    out.push((i, end + 2, text[i + 2..end].to_owned()));
                    i = end + 2;
                    continue;
                }
            }
            i += 1;
        }
        out
    }

    /// Every PromQL expression of a dashboard, with where it is: panel targets, Prometheus
    /// annotations, and the series selectors of `label_values(selector, label)` variable queries.
    pub fn expressions(d: &Value) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for p in panels(d) {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((
                        format!(
                            "panel {:?} target {}",
                            p["title"].as_str().unwrap_or_default(),
                            t["refId"].as_str().unwrap_or_default()
                        ),
                        e.to_owned(),
                    ));
                }
            }
        }
        for a in d["annotations"]["list"].as_array().into_iter().flatten() {
            if let Some(e) = a["expr"].as_str() {
                out.push((
                    format!("annotation {:?}", a["name"].as_str().unwrap_or_default()),
                    e.to_owned(),
                ));
            }
        }
        for v in variables(d).iter().filter(|v| v["type"] == "query") {
            let def = v["definition"].as_str().unwrap_or_default();
            let inner = def
                .strip_prefix("label_values(")
                .and_then(|s| s.strip_suffix(')'));
            if let Some((selector, _label)) = inner.and_then(|s| s.rsplit_once(',')) {
                out.push((
                    format!("variable {:?}", v["name"].as_str().unwrap_or_default()),
                    selector.to_owned(),
                ));
            }
        }
        out
    }

    pub fn substitute(expr: &str, subs: &HashMap<String, String>) -> String {
        let mut out = String::with_capacity(expr.len());
        let mut last = 0;
        for (start, end, name) in var_refs(expr) {
            out.push_str(&expr[last..start]);
            out.push_str(subs.get(&name).map_or("", String::as_str));
            last = end;
        }
        out.push_str(&expr[last..]);
        out
    }
}
/// Starts a Python service from `tests/python/` instrumented with the OpenTelemetry SDK (traces
/// only; the `OTEL_*` variables in `env` say where and how), listening on `port`, and waits
/// until it answers `GET /items/0`.
pub fn python_service(
    script: &str,
    port: u16,
    args: &[&str],
    env: &[(&str, String)],
) -> Result<Proc> {
    let mut cmd = Command::new(python());
    cmd.arg(workspace().join("tests/python").join(script))
        .arg("--port")
        .arg(port.to_string())
        .args(args)
        .env("OTEL_TRACES_EXPORTER", "otlp")
        .env("OTEL_METRICS_EXPORTER", "none")
        .env("OTEL_LOGS_EXPORTER", "none")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let proc = Proc(cmd.spawn()?);
    eventually(
        Duration::from_secs(60),
        "the Python service to answer",
        || {
            get(&format!("http://127.0.0.1:{port}/items/0"), &[])
                .ok()
                .filter(|(s, _, _)| *s == 200)
        },
    )?;
    Ok(proc)
}
/// Starts `tests/python/otel_service.py` (FastAPI + the OpenTelemetry SDK) as `name` on `port`,
/// exporting spans over OTLP with the given OTEL_* settings; waits until it answers.
pub fn start_otel_service(name: &str, port: u16, env: &[(&str, String)]) -> Result<Proc> {
    let mut env = env.to_vec();
    env.push(("OTEL_SERVICE_NAME", name.to_owned()));
    python_service("otel_service.py", port, &[], &env)
}

/// Steady GET traffic (about 25 requests/s) to a test service on `port`, from a thread of its
/// own; while failing is set, every other request goes to `/fail` (a 500).
pub struct Traffic {
    failing: Arc<std::sync::atomic::AtomicBool>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    sent: Arc<std::sync::atomic::AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    /// Starts sending.
    pub fn start(port: u16) -> Traffic {
        use std::sync::atomic::Ordering;
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let thread = {
            let (failing, stop, sent) = (failing.clone(), stop.clone(), sent.clone());
            std::thread::spawn(move || {
                let client = client();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let path = if failing.load(Ordering::Relaxed) && i.is_multiple_of(2) {
                        "/fail".to_owned()
                    } else {
                        format!("/items/{i}")
                    };
                    if client
                        .get(&format!("http://127.0.0.1:{port}{path}"))
                        .call()
                        .is_ok()
                    {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(40));
                }
            })
        };
        Traffic {
            failing,
            stop,
            sent,
            thread: Some(thread),
        }
    }

    /// Makes every other request fail (true) or none (false).
    pub fn set_failing(&self, on: bool) {
        self.failing.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Stops the sender and returns how many requests were answered.
    pub fn stop(mut self) -> u64 {
        self.halt();
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn halt(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.halt();
    }
}
/// POSTs OTLP/HTTP JSON to an agent's receiver on 127.0.0.1:`port`; the status and body.
pub fn post_json(port: u16, path: &str, body: &str) -> Result<(u16, String)> {
    let mut resp = client()
        .post(&format!("http://127.0.0.1:{port}{path}"))
        .header("Content-Type", "application/json")
        .send(body)?;
    let status = resp.status().as_u16();
    Ok((status, resp.body_mut().read_to_string()?))
}

/// Records a successful deployment of `service` to production through the DORA API, finished a
/// minute ago, with one commit made `commit_age` seconds ago; the agent must answer 201.
/// Returns the deployment's finish time (Unix seconds).
pub fn post_deployment(
    agent: &Agent,
    service: &str,
    version: &str,
    commit: &str,
    commit_age: u64,
) -> Result<u64> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let deploy = serde_json::json!({
        "service": service, "environment": "production", "version": version,
        "commit": commit, "started_at": now - 120, "finished_at": now - 60,
        "commits": [{"sha": commit, "timestamp": now - commit_age}],
    });
    let (status, body) = post_json(
        agent.addr.port(),
        "/api/v1/deployments",
        &deploy.to_string(),
    )?;
    assert_eq!(status, 201, "{body}");
    Ok(now - 60)
}

/// Unix seconds as RFC 3339 UTC (`2026-12-06T13:00:00Z`), for the bodies tests post.
pub fn rfc3339(t: i64) -> String {
    // Civil from days (Howard Hinnant), enough for test timestamps.
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

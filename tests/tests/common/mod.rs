//! Harness shared by the end-to-end tests: builds and starts the real `sidelight` binary on
//! ephemeral ports, starts real peers (Prometheus, Python services), and talks HTTP to them.
//! Every child process is killed when its handle drops, so a failing test leaves nothing behind.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

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

/// The Python interpreter with the test peers' packages (the venv made by scripts/test.sh).
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SIDELIGHT_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = workspace().join(".venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// A free loopback port (bound then released; good enough for peers that cannot bind :0).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            return Err(format!("timed out after {timeout:?} waiting for {what}").into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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

/// A plain HTTP client that reports every status instead of failing on 4xx/5xx.
pub fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// GET with optional headers; returns (status, content type, body).
pub fn get(url: &str, headers: &[(&str, &str)]) -> Result<(u16, String, String)> {
    let mut req = client().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.call()?;
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = resp.body_mut().read_to_string()?;
    Ok((status, ctype, body))
}

/// The value of one sample in a Prometheus text exposition (first match on name + label text).
pub fn sample(body: &str, name: &str, label_fragment: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let (series, _) = l.rsplit_once(' ').unwrap_or((l, ""));
            (series == name || series.starts_with(&format!("{name}{{")))
                && series.contains(label_fragment)
        })
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
}

/// A real Prometheus server scraping the given targets every second.
pub struct Prometheus {
    pub proc: Proc,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus with a scrape job `sidelight` for `target`; `bearer` is written to a
    /// credentials file when given.
    pub fn start(target: SocketAddr, bearer: Option<&str>) -> Result<Prometheus> {
        let dir = tempfile::tempdir()?;
        let auth = match bearer {
            Some(token) => {
                let f = dir.path().join("token");
                std::fs::write(&f, token)?;
                format!(
                    "    authorization:\n      credentials_file: {}\n",
                    f.display()
                )
            }
            None => String::new(),
        };
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n  - job_name: sidelight\n{auth}    static_configs:\n      - targets: ['{target}']\n"
        );
        Self::launch(dir, config, &[])
    }

    /// Starts Prometheus with no scrape job and the remote-write receiver on
    /// (`POST {url}/api/v1/write`).
    pub fn start_receiver() -> Result<Prometheus> {
        let dir = tempfile::tempdir()?;
        Self::launch(
            dir,
            "global:\n  scrape_interval: 15s\n",
            &["--web.enable-remote-write-receiver"],
        )
    }

    /// Writes `config`, starts Prometheus on a free port with `extra` flags, waits until ready.
    fn launch(
        dir: tempfile::TempDir,
        config: impl AsRef<[u8]>,
        extra: &[&str],
    ) -> Result<Prometheus> {
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(&cfg, config)?;
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(extra)
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start prometheus (apt-get install prometheus): {e}"))?;
        let prom = Prometheus {
            proc: Proc(child),
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        eventually(Duration::from_secs(30), "prometheus to be ready", || {
            get(&format!("{}/-/ready", prom.url), &[])
                .ok()
                .filter(|(s, _, _)| *s == 200)
        })?;
        Ok(prom)
    }

    /// Runs an instant query and returns the result vector.
    pub fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>> {
        let mut resp = client()
            .get(&format!("{}/api/v1/query", self.url))
            .query("query", promql)
            .call()?;
        let body: serde_json::Value = serde_json::from_str(&resp.body_mut().read_to_string()?)?;
        if body["status"] != "success" {
            return Err(format!("query {promql} failed: {body}").into());
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Health of the scrape targets, as Prometheus reports it.
    pub fn target_health(&self) -> Result<Vec<(String, String)>> {
        let (_, _, body) = get(&format!("{}/api/v1/targets", self.url), &[])?;
        let v: serde_json::Value = serde_json::from_str(&body)?;
        Ok(v["data"]["activeTargets"]
            .as_array()
            .map(|ts| {
                ts.iter()
                    .map(|t| {
                        (
                            t["health"].as_str().unwrap_or("").to_owned(),
                            t["lastError"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
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

/// The Python OTLP sink (`tests/python/otlp_sink.py`), its ports; killed on drop.
pub struct OtlpSink {
    _proc: Proc,
    pub grpc: u16,
    pub http: u16,
}

impl OtlpSink {
    /// Starts the sink with extra arguments (`--unavailable-fraction 0.7`, `--down-file P`).
    pub fn start(extra: &[&str]) -> Result<OtlpSink> {
        let mut child = Command::new(python())
            .arg(workspace().join("tests/python/otlp_sink.py"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let proc = Proc(child);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let ports: Vec<u16> = line
            .trim()
            .strip_prefix("READY ")
            .ok_or_else(|| format!("sink said {line:?}"))?
            .split(' ')
            .filter_map(|kv| kv.split_once('=')?.1.parse().ok())
            .collect();
        Ok(OtlpSink {
            _proc: proc,
            grpc: ports[0],
            http: ports[1],
        })
    }

    /// What the sink received so far (its `/state` JSON).
    pub fn state(&self) -> Result<serde_json::Value> {
        let (_, _, body) = get(&format!("http://127.0.0.1:{}/state", self.http), &[])?;
        Ok(serde_json::from_str(&body)?)
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

impl Prometheus {
    /// Starts Prometheus scraping `target` every second with extra target labels, honouring the
    /// target's own labels (`honor_labels: true`, as dashboards/README.md asks for a DORA hub
    /// whose metrics carry their own `environment`).
    pub fn start_labeled(target: SocketAddr, labels: &[(&str, &str)]) -> Result<Prometheus> {
        let dir = tempfile::tempdir()?;
        let labels: String = labels
            .iter()
            .map(|(k, v)| format!("          {k}: '{v}'\n"))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n  - job_name: sidelight\n    honor_labels: true\n    static_configs:\n      - targets: ['{target}']\n        labels:\n{labels}"
        );
        Self::launch(dir, config, &[])
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

/// One HTTP/1.1 request as a loopback peer received it.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An answer: status, extra headers, body (JSON unless a content-type header says otherwise).
pub type HttpAnswer = (u16, Vec<(&'static str, String)>, String);

/// A threaded HTTP/1.1 server on 127.0.0.1:0 (one request per connection, `connection: close`);
/// returns its address. Runs until the test process exits.
pub fn http_server(
    handler: impl Fn(HttpRequest) -> HttpAnswer + Send + Sync + 'static,
) -> Result<SocketAddr> {
    use std::io::Read;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let handler = Arc::new(handler);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let handler = handler.clone();
            std::thread::spawn(move || {
                let Ok(read) = stream.try_clone() else { return };
                let mut reader = BufReader::new(read);
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() || line.is_empty() {
                    return;
                }
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or("").to_owned();
                let path = parts.next().unwrap_or("").to_owned();
                let mut headers = Vec::new();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
                    }
                }
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; len];
                if reader.read_exact(&mut body).is_err() {
                    return;
                }
                let (status, extra, text) = handler(HttpRequest {
                    method,
                    path,
                    headers,
                    body,
                });
                let mut head = format!("HTTP/1.1 {status} X\r\n");
                if !extra.iter().any(|(k, _)| *k == "content-type") {
                    head.push_str("content-type: application/json; charset=utf-8\r\n");
                }
                for (k, v) in &extra {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str(&format!(
                    "content-length: {}\r\nconnection: close\r\n\r\n",
                    text.len()
                ));
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(text.as_bytes());
            });
        }
    });
    Ok(addr)
}

/// What the loopback chat peers received and refused.
#[derive(Debug, Default)]
pub struct ChatSeen {
    /// Accepted `chat.postMessage` calls (time, JSON body).
    pub posts: Vec<(Instant, serde_json::Value)>,
    /// Accepted `chat.update` calls.
    pub updates: Vec<serde_json::Value>,
    /// Posts answered 429 because the channel had a message less than 1 s before.
    pub rejected_429: usize,
    /// Requests refused, with the reason (bad token, bad blocks, bad card, bad signature).
    pub refused: Vec<String>,
    /// Accepted Teams Workflows posts.
    pub teams: Vec<serde_json::Value>,
    /// Accepted generic-webhook posts (verified bearer token and HMAC signature, parsed as
    /// Alertmanager's webhook format).
    pub hooks: Vec<serde_json::Value>,
    /// Raw bodies of accepted Teams posts (for the Node card check).
    pub teams_raw: Vec<Vec<u8>>,
    /// Markup Slack would have acted on (mentions, links) in accepted posts' mrkdwn texts.
    pub slack_markup: Vec<String>,
    last_post: std::collections::HashMap<String, Instant>,
    known_ts: Vec<String>,
    next_ts: u64,
}

/// Loopback peers that check requests the way the real services do:
///
/// - a Slack Web API under `{url}/api`: `Authorization: Bearer <bot token>` (else
///   `invalid_auth`), JSON bodies, Block Kit shape (header / section / context / actions with
///   Slack's size limits), at most one `chat.postMessage` per second per channel (else HTTP 429
///   with `Retry-After: 1`), `chat.update` only of a message it returned, realistic
///   `ok` / `channel` / `ts` answers (channel names become the channel id `C0ALERTS`);
/// - a Teams Workflows endpoint at `{url}/workflows/{TEAMS_PATH}`: at most 28 KB (413 beyond,
///   where the real post action would fail after a 202), a message with one Adaptive Card 1.4
///   attachment of verbatim text runs whose title has a severity colour; 202;
/// - a generic JSON webhook at `{url}/hook`: `Authorization: Bearer <hook token>` and
///   `X-Sidelight-Signature: sha256=<HMAC-SHA256 of the raw body>`, else 401; a body that is not
///   Alertmanager's webhook format ([`check_alertmanager`]), 400.
///
/// Slack does not refuse markup in text; the peer records what it would act on
/// (`ChatSeen::slack_markup`).
pub struct ChatPeers {
    pub url: String,
    pub seen: Arc<Mutex<ChatSeen>>,
}

/// The Teams workflow path the peers accept.
pub const TEAMS_PATH: &str = "wf-8c1d";

/// What a Slack client must send to be accepted.
#[derive(Debug, Clone)]
pub struct ChatSecrets {
    pub slack_token: String,
    pub hook_token: String,
    pub hook_hmac: String,
}

fn slack_json(v: serde_json::Value) -> HttpAnswer {
    (200, Vec::new(), v.to_string())
}

/// What Slack checks of a Block Kit payload (the parts Sidelight uses).
pub fn check_blocks(body: &serde_json::Value) -> std::result::Result<(), String> {
    let Some(blocks) = body.get("blocks") else {
        return if body["text"].is_string() {
            Ok(())
        } else {
            Err("neither text nor blocks".into())
        };
    };
    let blocks = blocks.as_array().ok_or("blocks is not an array")?;
    if blocks.is_empty() || blocks.len() > 50 {
        return Err(format!("{} blocks", blocks.len()));
    }
    for b in blocks {
        match b["type"].as_str() {
            Some("header") => {
                if b["text"]["type"] != "plain_text"
                    || b["text"]["text"]
                        .as_str()
                        .is_none_or(|t| t.chars().count() > 150)
                {
                    return Err(format!("bad header {b}"));
                }
            }
            Some("section") => {
                let t = &b["text"];
                if t["type"] != "mrkdwn" || t["text"].as_str().is_none_or(|t| t.len() > 3000) {
                    return Err(format!("bad section {b}"));
                }
            }
            Some("context") => {
                if b["elements"]
                    .as_array()
                    .is_none_or(|e| e.is_empty() || e.len() > 10)
                {
                    return Err(format!("bad context {b}"));
                }
            }
            Some("actions") => {
                for e in b["elements"].as_array().ok_or("actions without elements")? {
                    if e["type"] != "button" || e["text"]["type"] != "plain_text" {
                        return Err(format!("bad button {e}"));
                    }
                    if e.get("url").is_none() && e["action_id"].as_str().is_none() {
                        return Err(format!("button without action_id {e}"));
                    }
                }
            }
            other => return Err(format!("unexpected block type {other:?}")),
        }
    }
    Ok(())
}

/// The most a Teams Workflows "post card in a chat or channel" action takes (about 28 KB,
/// Microsoft's documented limit, on the request body).
pub const TEAMS_MAX_BYTES: usize = 28 * 1024;

/// Whether a Teams Workflows body is a message with one Adaptive Card 1.4 whose texts are
/// verbatim text runs and whose title has a severity colour. The full check (Microsoft's
/// `adaptivecards` library and the 1.4 schema model) is [`check_teams_cards_with_node`].
pub fn check_teams_card(v: &serde_json::Value) -> std::result::Result<(), String> {
    let att = &v["attachments"][0];
    let card = &att["content"];
    let ok = v["type"] == "message"
        && v["attachments"].as_array().is_some_and(|a| a.len() == 1)
        && att["contentType"] == "application/vnd.microsoft.card.adaptive"
        && card["type"] == "AdaptiveCard"
        && card["version"] == "1.4"
        && card["body"].as_array().is_some_and(|b| {
            !b.is_empty()
                && b.iter().all(|x| {
                    x["type"] == "RichTextBlock"
                        && x["inlines"].as_array().is_some_and(|i| {
                            i.iter()
                                .all(|r| r["type"] == "TextRun" && r["text"].is_string())
                        })
                })
        })
        && ["attention", "warning", "good", "accent"]
            .iter()
            .any(|c| card["body"][0]["inlines"][0]["color"] == *c)
        && card["actions"].as_array().is_none_or(|a| {
            a.iter()
                .all(|x| x["type"] == "Action.OpenUrl" && x["url"].is_string())
        });
    if ok {
        Ok(())
    } else {
        Err(format!("bad card {v}"))
    }
}

/// Runs `tests/node/check-teams-cards.js` (Microsoft's `adaptivecards` library parsing each card
/// as a 1.4 host, a strict JSON Schema model of the 1.4 elements, the 28 KB limit) on raw
/// bodies; Err with its report when any fails. The Node packages come from `npm ci` in
/// scripts/test.sh.
pub fn check_teams_cards_with_node(bodies: &[Vec<u8>]) -> std::result::Result<String, String> {
    let node_dir = workspace().join("tests/node");
    if !node_dir.join("node_modules/adaptivecards").is_dir() {
        return Err(format!(
            "{}/node_modules is missing: run `npm ci --prefix tests/node` (scripts/test.sh does)",
            node_dir.display()
        ));
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut files = Vec::new();
    for (i, b) in bodies.iter().enumerate() {
        let f = dir.path().join(format!("card-{i:03}.json"));
        std::fs::write(&f, b).map_err(|e| e.to_string())?;
        files.push(f);
    }
    let out = Command::new("node")
        .arg(node_dir.join("check-teams-cards.js"))
        .args(&files)
        .output()
        .map_err(|e| format!("node: {e}"))?;
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        Ok(report)
    } else {
        Err(report)
    }
}

/// What Slack would read as markup in a `text` field: `<!channel>`, `<!here>`, `<@U123>`,
/// `<https://…|label>` and the like (anything between `<` and `>`), which Slack's formatting
/// rules say must arrive escaped when it is not meant as markup.
pub fn slack_markup(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find('<') {
        let after = &rest[i + 1..];
        match after.find('>') {
            Some(j) => {
                out.push(format!("<{}>", &after[..j]));
                rest = &after[j + 1..];
            }
            None => break,
        }
    }
    out
}

/// The markup in every text of a Slack Web API body that Slack parses as mrkdwn (the message
/// `text`, section and context texts).
fn slack_parsed_markup(v: &serde_json::Value) -> Vec<String> {
    let mut found = Vec::new();
    if let Some(t) = v["text"].as_str() {
        found.extend(slack_markup(t));
    }
    for b in v["blocks"].as_array().into_iter().flatten() {
        match b["type"].as_str() {
            Some("section") => {
                found.extend(slack_markup(b["text"]["text"].as_str().unwrap_or("")));
            }
            Some("context") => {
                for e in b["elements"].as_array().into_iter().flatten() {
                    if e["type"] == "mrkdwn" {
                        found.extend(slack_markup(e["text"].as_str().unwrap_or("")));
                    }
                }
            }
            _ => {}
        }
    }
    found
}

/// Alertmanager's webhook message, version 4, as its documentation gives it (every field
/// required, no other field): what a bridge written for Alertmanager parses.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AmMessage {
    pub version: String,
    pub group_key: String,
    pub truncated_alerts: u64,
    pub status: AmStatus,
    pub receiver: String,
    pub group_labels: std::collections::BTreeMap<String, String>,
    pub common_labels: std::collections::BTreeMap<String, String>,
    pub common_annotations: std::collections::BTreeMap<String, String>,
    #[serde(rename = "externalURL")]
    pub external_url: String,
    pub alerts: Vec<AmAlert>,
}

/// One alert of an [`AmMessage`].
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AmAlert {
    pub status: AmStatus,
    pub labels: std::collections::BTreeMap<String, String>,
    pub annotations: std::collections::BTreeMap<String, String>,
    pub starts_at: String,
    pub ends_at: String,
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
    pub fingerprint: String,
}

/// `firing` or `resolved`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AmStatus {
    Firing,
    Resolved,
}

/// Whether `s` is an RFC 3339 date-time (`2026-12-06T13:00:00.123Z`, `...+02:00`).
pub fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|x| x.iter().all(u8::is_ascii_digit));
    let num =
        |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<u32>().ok()).unwrap_or(99);
    if b.len() < 20
        || !(digits(0..4) && b[4] == b'-' && digits(5..7) && b[7] == b'-' && digits(8..10))
        || !(b[10] == b'T' || b[10] == b't')
        || !(digits(11..13) && b[13] == b':' && digits(14..16) && b[16] == b':' && digits(17..19))
    {
        return false;
    }
    if !(1..=12).contains(&num(5..7)) || !(1..=31).contains(&num(8..10)) {
        return false;
    }
    if num(11..13) > 23 || num(14..16) > 59 || num(17..19) > 60 {
        return false;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match &s[i..] {
        "Z" | "z" => true,
        off => {
            let o = off.as_bytes();
            o.len() == 6
                && (o[0] == b'+' || o[0] == b'-')
                && o[1..3].iter().all(u8::is_ascii_digit)
                && o[3] == b':'
                && o[4..6].iter().all(u8::is_ascii_digit)
        }
    }
}

/// Parses a webhook body with the [`AmMessage`] model and checks what types cannot: version
/// "4", RFC 3339 times, a resolved alert's `endsAt` not before its `startsAt`, the message
/// status matching its alerts.
pub fn check_alertmanager(body: &[u8]) -> std::result::Result<AmMessage, String> {
    let m: AmMessage =
        serde_json::from_slice(body).map_err(|e| format!("not Alertmanager's format: {e}"))?;
    if m.version != "4" {
        return Err(format!("version {:?}", m.version));
    }
    if m.alerts.is_empty() {
        return Err("no alerts".into());
    }
    for a in &m.alerts {
        if !is_rfc3339(&a.starts_at) || !is_rfc3339(&a.ends_at) {
            return Err(format!("times not RFC 3339: {} {}", a.starts_at, a.ends_at));
        }
        if a.status == AmStatus::Resolved && a.ends_at < a.starts_at {
            return Err(format!("resolved before it started: {a:?}"));
        }
        if a.fingerprint.is_empty() || !a.labels.contains_key("alertname") {
            return Err(format!("alert without identity: {a:?}"));
        }
    }
    let firing = m.alerts.iter().any(|a| a.status == AmStatus::Firing);
    if firing != (m.status == AmStatus::Firing) {
        return Err(format!("status {:?} does not match its alerts", m.status));
    }
    Ok(m)
}

fn hmac_hex(key: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()) else {
        return String::new();
    };
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

impl ChatPeers {
    pub fn start(secrets: ChatSecrets) -> Result<ChatPeers> {
        let seen = Arc::new(Mutex::new(ChatSeen::default()));
        let s = seen.clone();
        let addr = http_server(move |req| chat_answer(&secrets, &s, req))?;
        Ok(ChatPeers {
            url: format!("http://{addr}"),
            seen,
        })
    }

    /// The Slack Web API base URL (`notifiers.<name>.api_url`).
    pub fn slack_api(&self) -> String {
        format!("{}/api", self.url)
    }

    /// The Teams workflow URL.
    pub fn teams_url(&self) -> String {
        format!("{}/workflows/{TEAMS_PATH}", self.url)
    }

    /// The generic webhook URL.
    pub fn hook_url(&self) -> String {
        format!("{}/hook", self.url)
    }

    pub fn seen(&self) -> std::sync::MutexGuard<'_, ChatSeen> {
        self.seen.lock().expect("chat peers lock")
    }
}

fn chat_answer(secrets: &ChatSecrets, seen: &Mutex<ChatSeen>, req: HttpRequest) -> HttpAnswer {
    let mut seen = seen.lock().expect("chat peers lock");
    let refuse = |seen: &mut ChatSeen, why: String| seen.refused.push(why);
    if req.method != "POST" {
        refuse(&mut seen, format!("{} {}", req.method, req.path));
        return (405, Vec::new(), "{}".into());
    }
    let json: Option<serde_json::Value> = req
        .header("content-type")
        .filter(|c| c.starts_with("application/json"))
        .and_then(|_| serde_json::from_slice(&req.body).ok());
    if let Some(method) = req.path.strip_prefix("/api/") {
        if req.header("authorization") != Some(&format!("Bearer {}", secrets.slack_token)) {
            refuse(&mut seen, format!("{method}: invalid_auth"));
            return slack_json(serde_json::json!({"ok": false, "error": "invalid_auth"}));
        }
        let Some(v) = json else {
            refuse(&mut seen, format!("{method}: invalid_json"));
            return slack_json(serde_json::json!({"ok": false, "error": "invalid_json"}));
        };
        if let Err(e) = check_blocks(&v) {
            refuse(&mut seen, format!("{method}: {e}"));
            return slack_json(serde_json::json!({"ok": false, "error": "invalid_blocks"}));
        }
        let markup = slack_parsed_markup(&v);
        seen.slack_markup.extend(markup);
        let channel = match v["channel"].as_str() {
            Some("#alerts" | "alerts" | "C0ALERTS") => "C0ALERTS",
            _ => {
                refuse(
                    &mut seen,
                    format!("{method}: channel_not_found {}", v["channel"]),
                );
                return slack_json(serde_json::json!({"ok": false, "error": "channel_not_found"}));
            }
        };
        match method {
            "chat.postMessage" => {
                let now = Instant::now();
                if seen
                    .last_post
                    .get(channel)
                    .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(1))
                {
                    seen.rejected_429 += 1;
                    return (
                        429,
                        vec![("retry-after", "1".into())],
                        r#"{"ok":false,"error":"ratelimited"}"#.into(),
                    );
                }
                seen.last_post.insert(channel.to_owned(), now);
                seen.next_ts += 1;
                let ts = format!("1700000000.{:06}", seen.next_ts);
                seen.known_ts.push(ts.clone());
                seen.posts.push((now, v.clone()));
                slack_json(serde_json::json!({
                    "ok": true, "channel": channel, "ts": ts,
                    "message": {"type": "message", "ts": ts, "text": v["text"], "bot_id": "B01"},
                }))
            }
            "chat.update" => {
                let ts = v["ts"].as_str().unwrap_or("").to_owned();
                if !seen.known_ts.contains(&ts) {
                    refuse(&mut seen, format!("chat.update: message_not_found {ts}"));
                    return slack_json(
                        serde_json::json!({"ok": false, "error": "message_not_found"}),
                    );
                }
                seen.updates.push(v.clone());
                slack_json(serde_json::json!({
                    "ok": true, "channel": channel, "ts": ts, "text": v["text"],
                    "message": {"text": v["text"]},
                }))
            }
            other => {
                refuse(&mut seen, format!("unknown_method {other}"));
                slack_json(serde_json::json!({"ok": false, "error": "unknown_method"}))
            }
        }
    } else if req.path == format!("/workflows/{TEAMS_PATH}") {
        if req.body.len() > TEAMS_MAX_BYTES {
            // The webhook would answer 202 and its post action fail: refuse it loudly here.
            refuse(&mut seen, format!("teams: {} bytes", req.body.len()));
            return (413, Vec::new(), "{}".into());
        }
        let Some(v) = json else {
            refuse(&mut seen, "teams: not JSON".into());
            return (400, Vec::new(), "{}".into());
        };
        if let Err(e) = check_teams_card(&v) {
            refuse(&mut seen, format!("teams: {e}"));
            return (400, Vec::new(), "{}".into());
        }
        seen.teams.push(v);
        seen.teams_raw.push(req.body.clone());
        (202, Vec::new(), String::new())
    } else if req.path == "/hook" {
        let bearer_ok =
            req.header("authorization") == Some(&format!("Bearer {}", secrets.hook_token));
        let want = format!("sha256={}", hmac_hex(&secrets.hook_hmac, &req.body));
        let sig_ok = req.header("x-sidelight-signature") == Some(want.as_str());
        if !bearer_ok || !sig_ok {
            refuse(
                &mut seen,
                format!("hook: bearer ok {bearer_ok}, signature ok {sig_ok}"),
            );
            return (401, Vec::new(), "{}".into());
        }
        let Some(v) = json else {
            refuse(&mut seen, "hook: not JSON".into());
            return (400, Vec::new(), "{}".into());
        };
        if let Err(e) = check_alertmanager(&req.body) {
            refuse(&mut seen, format!("hook: {e}"));
            return (400, Vec::new(), "{}".into());
        }
        seen.hooks.push(v);
        (204, Vec::new(), String::new())
    } else {
        refuse(&mut seen, format!("no route {}", req.path));
        (404, Vec::new(), "{}".into())
    }
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

/// Signs a Slack request body the way Slack does (`v0=` HMAC-SHA256 of `v0:{ts}:{body}`);
/// returns (timestamp, signature) for now.
pub fn slack_signature(secret: &str, body: &str) -> (String, String) {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        .to_string();
    let sig = format!(
        "v0={}",
        hmac_hex(secret, format!("v0:{ts}:{body}").as_bytes())
    );
    (ts, sig)
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

//! A real Prometheus server (the `prometheus` binary on PATH) on an ephemeral port: scraping
//! targets every second, or as a remote-write receiver; instant queries and target health.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{Proc, Result, client, eventually, free_port, get};

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

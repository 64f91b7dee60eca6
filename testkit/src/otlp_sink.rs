//! The Python OTLP sink (`tests/python/otlp_sink.py`, run with [`crate::python`]): gRPC and HTTP
//! receivers that record what they got, answer `/state`, and inject unavailability on request.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::{Proc, Result, get, python, workspace};

/// The Python OTLP sink (`tests/python/otlp_sink.py`), its ports; killed on drop.
pub struct OtlpSink {
    _proc: Proc,
    pub grpc: u16,
    pub http: u16,
}

impl OtlpSink {
    /// Starts the sink on ports of its choosing with extra arguments
    /// (`--unavailable-fraction 0.7`, `--down-file P`).
    pub fn start(extra: &[&str]) -> Result<OtlpSink> {
        Self::start_on(0, 0, extra)
    }

    /// Starts the sink on these ports (0: its choice), e.g. again on a stopped sink's ports.
    pub fn start_on(grpc: u16, http: u16, extra: &[&str]) -> Result<OtlpSink> {
        let mut child = Command::new(python())
            .arg(workspace().join("tests/python/otlp_sink.py"))
            .args(["--grpc-port", &grpc.to_string()])
            .args(["--http-port", &http.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start the Python sink (make the venv: README): {e}"))?;
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
        let [grpc, http] = ports[..] else {
            return Err(format!("sink said {line:?}").into());
        };
        Ok(OtlpSink {
            _proc: proc,
            grpc,
            http,
        })
    }

    /// What the sink received so far (its `/state` JSON).
    pub fn state(&self) -> Result<serde_json::Value> {
        let (_, _, body) = get(&format!("http://127.0.0.1:{}/state", self.http), &[])?;
        Ok(serde_json::from_str(&body)?)
    }

    /// Kills the sink; its (gRPC, HTTP) ports, for a restart with [`OtlpSink::start_on`].
    pub fn stop(self) -> (u16, u16) {
        let OtlpSink { _proc, grpc, http } = self;
        drop(_proc);
        (grpc, http)
    }
}

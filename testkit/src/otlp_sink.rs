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

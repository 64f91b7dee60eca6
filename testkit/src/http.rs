//! The loopback HTTP/1.1 server the chat peers run on, and a blocking client that reports every
//! status instead of failing on 4xx/5xx.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use crate::Result;

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

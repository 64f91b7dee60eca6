//! Log line throughput on one core: parse (JSON → record) and parse + redaction, for 256 B and
//! 1 KiB lines shaped like python-json-logger and structlog output. Prints MiB/s.
//!
//! Run: `cargo bench -p sidelight-collector --bench log_parse`

use std::hint::black_box;
use std::time::{Duration, Instant};

use sidelight_collector::logs::{Parser, RedactionCounts, Redactor};

/// Distinct lines per batch, so the figures are not one line in a hot cache.
const LINES: usize = 1024;
const RUN_FOR: Duration = Duration::from_millis(1500);

fn pad_to(prefix: &str, suffix: &str, size: usize, i: usize) -> String {
    let fill = "user request handled for tenant acme corp with upstream latency fine ";
    let mut msg = format!("req {i} ");
    while prefix.len() + msg.len() + suffix.len() < size {
        msg.push_str(fill);
    }
    msg.truncate(size.saturating_sub(prefix.len() + suffix.len()));
    format!("{prefix}{msg}{suffix}")
}

fn python_json_logger(size: usize, i: usize) -> String {
    let extra = if size > 512 {
        format!(
            r#", "user_id": {i}, "path": "/api/v1/orders/{i}", "method": "GET", "status": 200, "duration_ms": 12.5, "client": "10.0.0.{}", "user_agent": "python-requests/2.32.3", "otelServiceName": "web", "otelTraceSampled": true"#,
            i % 250
        )
    } else {
        String::new()
    };
    let prefix = r#"{"asctime": "2026-11-22 02:36:14,020", "levelname": "INFO", "name": "app.web", "message": ""#;
    let suffix = format!(
        r#"", "otelTraceID": "4bf92f3577b34da6a3ce929d0e0e4736", "otelSpanID": "00f067aa0ba902b7"{extra}}}"#
    );
    pad_to(prefix, &suffix, size, i)
}

fn structlog(size: usize, i: usize) -> String {
    let extra = if size > 512 {
        format!(
            r#", "job_id": "j-{i}", "attempt": 1, "queue": "default", "worker": "celery@host-3", "task": "app.tasks.send_invoice", "retries": 0, "eta": null, "args": [{i}, "eur"], "kwargs": {{"priority": 5}}"#
        )
    } else {
        String::new()
    };
    let prefix = r#"{"event": ""#;
    let suffix = format!(
        r#"", "logger": "worker", "level": "info", "timestamp": "2026-11-22T02:36:14.021532Z"{extra}}}"#
    );
    pad_to(prefix, &suffix, size, i)
}

fn run(name: &str, lines: &[String], mut f: impl FnMut(&[u8])) {
    let bytes: usize = lines.iter().map(String::len).sum();
    // Warm up.
    for l in lines {
        f(l.as_bytes());
    }
    let start = Instant::now();
    let mut rounds = 0u64;
    while start.elapsed() < RUN_FOR {
        for l in lines {
            f(l.as_bytes());
        }
        rounds += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let mib = (bytes as f64 * rounds as f64) / (1024.0 * 1024.0);
    let per_line_ns = secs * 1e9 / (rounds as f64 * lines.len() as f64);
    println!(
        "{name:<50} {:>8.1} MiB/s  {:>7.0} ns/line  (avg line {} B)",
        mib / secs,
        per_line_ns,
        bytes / lines.len()
    );
}

fn main() {
    let parser = Parser::default();
    let redactor = match Redactor::builtin() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("built-in redaction rules: {e}");
            std::process::exit(1);
        }
    };
    type MakeLine = fn(usize, usize) -> String;
    let shapes: [(&str, MakeLine); 2] = [
        ("python-json-logger", python_json_logger),
        ("structlog", structlog),
    ];
    for (shape, make) in shapes {
        for size in [256, 1024] {
            let lines: Vec<String> = (0..LINES).map(|i| make(size, i)).collect();
            // Every line must really parse as JSON, or the figure measures the wrong path.
            for l in &lines {
                let p = parser.parse(l.as_bytes(), 0);
                assert!(p.error.is_none(), "{l}: {:?}", p.error);
            }
            run(&format!("parse            {shape} {size} B"), &lines, |l| {
                black_box(parser.parse(black_box(l), 0));
            });
            run(&format!("parse + redact   {shape} {size} B"), &lines, |l| {
                let mut p = parser.parse(black_box(l), 0);
                let counts: RedactionCounts = redactor.redact_record(&mut p.record);
                black_box((p, counts));
            });
        }
    }
    // The slow path: one line in ten carries an email address and a bearer token.
    let secrets: Vec<String> = (0..LINES)
        .map(|i| {
            let line = python_json_logger(256, i);
            if i % 10 == 0 {
                line.replacen(
                    "req ",
                    "mail bob@example.com Authorization: Bearer eyJhbGciOi.x.y req ",
                    1,
                )
            } else {
                line
            }
        })
        .collect();
    run(
        "parse + redact   python-json-logger 10% secrets",
        &secrets,
        |l| {
            let mut p = parser.parse(black_box(l), 0);
            let counts = redactor.redact_record(&mut p.record);
            black_box((p, counts));
        },
    );
    let text: Vec<String> = (0..LINES)
        .map(|i| {
            format!(
                "2026-11-22 02:36:14,038 INFO app.web: request {i} handled for user {i} in 12 ms with status 200 from 10.0.0.{}",
                i % 250
            )
        })
        .collect();
    run("parse + redact   text logging line", &text, |l| {
        let mut p = parser.parse(black_box(l), 0);
        let counts = redactor.redact_record(&mut p.record);
        black_box((p, counts));
    });
}

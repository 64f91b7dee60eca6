//! Tail + parse + redact + OTLP conversion throughput on one core: the synchronous tailer reads a
//! 256 MiB file of 256 B or 1 KiB JSON lines (python-json-logger shape) from the page cache,
//! through discovery, chunked reads, line splitting, parsing, built-in redaction, log metrics and
//! batching; each batch is converted to an OTLP request and acknowledged, as the agent does.
//! Prints MiB/s of file bytes per CPU-second of this thread.
//!
//! Run: `cargo bench -p sidelight-collector --bench log_tail`

use std::io::Write;
use std::time::{Duration, Instant};

use sidelight_collector::logs::discover::Discovery;
use sidelight_collector::logs::{
    LogResource, LogStats, Parser, ParserConfig, Redactor, TailConfig, Tailer, to_request,
};
use sidelight_collector::metrics::LabelCaps;

const FILE_BYTES: usize = 256 << 20;

fn line(size: usize, i: usize) -> String {
    let prefix = format!(
        r#"{{"asctime": "2026-11-22 02:36:14,020", "levelname": "INFO", "name": "app.web", "seq": {i}, "message": "req {i} "#
    );
    let suffix = r#"", "otelTraceID": "4bf92f3577b34da6a3ce929d0e0e4736", "otelSpanID": "00f067aa0ba902b7"}"#;
    let fill = "user request handled for tenant acme corp with upstream latency fine ";
    let mut msg = String::new();
    while prefix.len() + msg.len() + suffix.len() + 1 < size {
        msg.push_str(fill);
    }
    msg.truncate(size.saturating_sub(prefix.len() + suffix.len() + 1));
    format!("{prefix}{msg}{suffix}\n")
}

fn thread_cpu() -> Duration {
    rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime)
        .try_into()
        .unwrap_or_default()
}

fn run(size: usize) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs)?;
    let path = logs.join("app.log");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut written = 0;
        let mut i = 0;
        while written < FILE_BYTES {
            let l = line(size, i);
            f.write_all(l.as_bytes())?;
            written += l.len();
            i += 1;
        }
        f.flush()?;
    }
    // Into the page cache, so the figure is the agent's work, not the disk's.
    let _ = std::fs::read(&path)?;
    let bytes = std::fs::metadata(&path)?.len();

    let include = vec![format!("{}/*.log", logs.display())];
    let discovery = Discovery::new(&include, &[], true)?;
    let parser = Parser::new(ParserConfig {
        source: Some("app".into()),
        ..ParserConfig::default()
    });
    let stats = LogStats::new(&LabelCaps::new(1000));
    let mut cfg = TailConfig::new("app");
    cfg.join = None;
    let mut tailer = Tailer::new(
        cfg,
        discovery,
        parser,
        Redactor::builtin()?,
        stats,
        &dir.path().join("state"),
    )?;
    let resource = LogResource::new("app", Some("bench"));
    let (cpu0, wall0) = (thread_cpu(), Instant::now());
    let mut records = 0usize;
    let mut encoded = 0usize;
    let now = Instant::now();
    tailer.scan(now);
    loop {
        tailer.poll(now);
        let Some(batch) = tailer.take_batch() else {
            if tailer.has_backlog() {
                continue;
            }
            break;
        };
        let (recs, ack) = batch.into_parts();
        records += recs.len();
        let req = to_request(recs, &resource);
        encoded += prost::Message::encoded_len(&req);
        ack.ack();
        tailer.process_acks();
    }
    let cpu = (thread_cpu() - cpu0).as_secs_f64();
    let wall = wall0.elapsed().as_secs_f64();
    let mib = bytes as f64 / (1024.0 * 1024.0);
    println!(
        "tail+parse+redact+otlp {size:>5} B lines: {:>7.1} MiB/s per CPU-second ({:>7.1} MiB/s wall), {:>6.0} ns/line, {records} records, OTLP {:.0} MiB",
        mib / cpu,
        mib / wall,
        cpu * 1e9 / records as f64,
        encoded as f64 / (1024.0 * 1024.0),
    );
    Ok(())
}

fn main() {
    for size in [256, 1024] {
        if let Err(e) = run(size) {
            eprintln!("log_tail bench {size} B: {e}");
            std::process::exit(1);
        }
    }
}

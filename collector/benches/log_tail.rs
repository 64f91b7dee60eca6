//! Tail + parse + redact + OTLP conversion throughput on one core: the synchronous tailer reads a
//! 256 MiB file of 256 B or 1 KiB JSON lines (python-json-logger shape) from the page cache,
//! through discovery, chunked reads, line splitting, parsing, built-in redaction, log metrics and
//! batching; each batch is converted to an OTLP request and acknowledged, as the agent does.
//! Prints MiB/s of file bytes per CPU-second of this thread.
//!
//! Run: `cargo bench -p sidelight-collector --bench log_tail`
//!
//! `LOG_TAIL_FILES=json:/path/a.log,text:/path/b.log` reads those files instead (each from the
//! page cache, with the parser format and traceback joining the agent uses for that format), e.g.
//! the side-by-side workloads `bench/logs_vs_fluentbit.sh` generates.

use std::io::Write;
use std::time::{Duration, Instant};

use sidelight_collector::logs::discover::Discovery;
use sidelight_collector::logs::{
    Format, JoinerConfig, LogResource, LogStats, Parser, ParserConfig, Redactor, TailConfig, Tailer,
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

/// CPU time of this thread: the scheduler's on-CPU nanoseconds (`/proc/thread-self/schedstat`),
/// read from procfs rather than the vDSO so the bench also runs under valgrind.
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map(Duration::from_nanos)
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
    measure(&format!("{size:>5} B lines"), dir.path(), Format::Json)
}

/// Tails `<dir>/logs/*.log` once from the head and prints the figures under `name`.
fn measure(
    name: &str,
    dir: &std::path::Path,
    format: Format,
) -> Result<(), Box<dyn std::error::Error>> {
    let logs = dir.join("logs");
    let path = logs.join("app.log");
    // Into the page cache, so the figure is the agent's work, not the disk's.
    std::io::copy(&mut std::fs::File::open(&path)?, &mut std::io::sink())?;
    let bytes = std::fs::metadata(&path)?.len();

    let include = vec![format!("{}/*.log", logs.display())];
    let discovery = Discovery::new(&include, &[], true)?;
    let parser = Parser::new(ParserConfig {
        format,
        ..ParserConfig::default()
    });
    let stats = LogStats::new(&LabelCaps::new(1000));
    let mut cfg = TailConfig::new("app");
    // As the agent configures a source of this format.
    cfg.join = (format != Format::Json).then(JoinerConfig::default);
    cfg.cri = matches!(format, Format::Auto | Format::Cri);
    let mut tailer = Tailer::new(
        cfg,
        discovery,
        parser,
        Redactor::builtin()?,
        stats,
        &dir.join("state"),
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
        let (logs, ack) = batch.into_parts();
        records += logs.len();
        encoded += logs.finish(&resource).bytes().len();
        drop(logs);
        ack.ack();
        tailer.process_acks();
    }
    let cpu = (thread_cpu() - cpu0).as_secs_f64();
    let wall = wall0.elapsed().as_secs_f64();
    let mib = bytes as f64 / (1024.0 * 1024.0);
    println!(
        "tail+parse+redact+otlp {name}: {:>7.1} MiB/s per CPU-second ({:>7.1} MiB/s wall), {:>6.0} ns/line, {records} records, OTLP {:.0} MiB",
        mib / cpu,
        mib / wall,
        cpu * 1e9 / records as f64,
        encoded as f64 / (1024.0 * 1024.0),
    );
    Ok(())
}

/// `LOG_TAIL_FILES=format:path,...`: each file hard-linked (or copied) into a fresh directory.
fn run_files(spec: &str) -> Result<(), Box<dyn std::error::Error>> {
    for item in spec.split(',').filter(|s| !s.is_empty()) {
        let (format, path) = item.split_once(':').ok_or("want format:path")?;
        let format = match format {
            "json" => Format::Json,
            "text" => Format::Text,
            "auto" => Format::Auto,
            other => return Err(format!("unknown format {other}").into()),
        };
        let dir = tempfile::tempdir()?;
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs)?;
        let target = logs.join("app.log");
        if std::fs::hard_link(path, &target).is_err() {
            std::fs::copy(path, &target)?;
        }
        let name = std::path::Path::new(path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        measure(&format!("{name:>13}"), dir.path(), format)?;
    }
    Ok(())
}

fn main() {
    if let Ok(spec) = std::env::var("LOG_TAIL_FILES") {
        if let Err(e) = run_files(&spec) {
            eprintln!("log_tail bench {spec}: {e}");
            std::process::exit(1);
        }
        return;
    }
    for size in [256, 1024] {
        if let Err(e) = run(size) {
            eprintln!("log_tail bench {size} B: {e}");
            std::process::exit(1);
        }
    }
}

//! Pins what leaves the agent for each log corpus: every line is joined, parsed, redacted and
//! encoded as the tailer does it, the OTLP request is decoded again, and its records (attributes,
//! body, severity, timestamps, trace ids, resource, scopes) are compared with a checked-in
//! rendering under `tests/fixtures/logs/golden/`. Any change to the mapping shows up as a diff.
//!
//! `SIDELIGHT_BLESS=1 cargo test -p sidelight-collector --lib logs::mapping_tests` rewrites the
//! renderings (only when a change of the output is intended).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message;

use super::{Format, Joiner, JoinerConfig, LogResource, Parser, ParserConfig, Redactor};

const OBSERVED: u64 = 42;

/// Reads `fixture` the way a source of `format` does (`join`: the traceback joiner in front)
/// and renders the decoded OTLP request, one line per record.
fn render(fixture: &str, format: Format, join: bool) -> String {
    let path = format!(
        "{}/tests/fixtures/logs/{fixture}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read(&path).expect("fixture");
    let parser = Parser::new(ParserConfig {
        format,
        ..ParserConfig::default()
    });
    let redactor = Redactor::builtin().expect("built-in rules compile");
    let mut joiner = join.then(|| Joiner::new(JoinerConfig::default()));
    let now = Instant::now();
    let mut texts: Vec<Vec<u8>> = Vec::new();
    for line in text.split_inclusive(|&b| b == b'\n') {
        match &mut joiner {
            Some(j) => {
                let mut out = Vec::new();
                j.push(line, now, &mut out);
                texts.extend(out.into_iter().map(|j| j.text));
            }
            None => texts.push(line.to_vec()),
        }
    }
    if let Some(j) = &mut joiner {
        texts.extend(j.flush().map(|j| j.text));
    }
    let file: Arc<str> = Arc::from("/var/log/app/app.log");
    let mut records = Vec::new();
    let mut out = String::new();
    for t in &texts {
        if t.trim_ascii().is_empty() {
            continue;
        }
        let mut parsed = parser.parse(t, OBSERVED);
        parsed.record.file_path = Some(file.clone());
        let counts = redactor.redact_record(&mut parsed.record);
        writeln!(
            out,
            "# record {}: parse error {}, truncated {}, lossy {}, redactions {}",
            records.len(),
            parsed.error.is_some(),
            parsed.truncated_bytes,
            parsed.lossy_utf8,
            counts.total()
        )
        .expect("string");
        records.push(parsed.record);
    }
    let resource = LogResource::new("app", Some("host-1")).with("deployment.environment", "test");
    let encoded = super::encode_request(&records, &resource);
    let req = ExportLogsServiceRequest::decode(encoded.bytes().clone()).expect("decodes");
    // The slower message-tree conversion must say the same.
    assert_eq!(
        req,
        super::to_request(records, &resource),
        "{fixture}: encode_request and to_request differ"
    );
    for rl in &req.resource_logs {
        writeln!(out, "resource {:?}", rl.resource).expect("string");
        for sl in &rl.scope_logs {
            writeln!(out, "scope {:?}", sl.scope).expect("string");
            for r in &sl.log_records {
                writeln!(out, "{r:?}").expect("string");
            }
        }
    }
    out
}

fn check(fixture: &str, format: Format, join: bool, golden: &str) {
    let got = render(fixture, format, join);
    let path = format!(
        "{}/tests/fixtures/logs/golden/{golden}",
        env!("CARGO_MANIFEST_DIR")
    );
    if std::env::var_os("SIDELIGHT_BLESS").is_some() {
        std::fs::create_dir_all(format!(
            "{}/tests/fixtures/logs/golden",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("golden dir");
        std::fs::write(&path, &got).expect("write golden");
        return;
    }
    let want = std::fs::read_to_string(&path).expect("golden file (SIDELIGHT_BLESS=1 writes it)");
    if got != want {
        let diff = got
            .lines()
            .zip(want.lines())
            .enumerate()
            .find(|(_, (g, w))| g != w)
            .map(|(i, (g, w))| format!("line {}:\n got: {g}\nwant: {w}", i + 1))
            .unwrap_or_else(|| {
                format!(
                    "lengths differ: {} vs {} lines",
                    got.lines().count(),
                    want.lines().count()
                )
            });
        panic!("{fixture} ({golden}) no longer maps as pinned; first difference at {diff}");
    }
}

#[test]
fn python_json_logger_mapping_is_pinned() {
    check("python_json_logger.jsonl", Format::Json, false, "pjl.txt");
    check(
        "workload_pjl.jsonl",
        Format::Json,
        false,
        "workload_pjl.txt",
    );
}

#[test]
fn structlog_mapping_is_pinned() {
    check("structlog.jsonl", Format::Json, false, "structlog.txt");
    check(
        "workload_structlog.jsonl",
        Format::Json,
        false,
        "workload_structlog.txt",
    );
}

#[test]
fn loguru_mapping_is_pinned() {
    check("loguru.jsonl", Format::Json, false, "loguru.txt");
    check(
        "workload_loguru.jsonl",
        Format::Json,
        false,
        "workload_loguru.txt",
    );
}

#[test]
fn traceback_text_mapping_is_pinned() {
    check(
        "text_traceback.log",
        Format::Text,
        true,
        "text_traceback.txt",
    );
    check(
        "text_exception_group.log",
        Format::Text,
        true,
        "text_exception_group.txt",
    );
    check("workload_text.log", Format::Text, true, "workload_text.txt");
}

#[test]
fn edge_cases_mapping_is_pinned() {
    check("mapping_edge.jsonl", Format::Json, false, "edge_json.txt");
    check("mapping_edge.jsonl", Format::Auto, true, "edge_auto.txt");
}

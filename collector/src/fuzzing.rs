//! The bodies of the `cargo fuzz` targets in `fuzz/` that exercise this crate's decoders of
//! untrusted input, written once: the fuzz targets call them, and `tests/fuzz_corpus.rs`
//! replays every committed corpus file through them on the stable toolchain. Each takes the raw
//! fuzz input, never panics on any input unless an invariant below is broken (a panic is the
//! finding), and keeps its own state per call, so every finding reproduces from its input alone.
//!
//! Not an API: hidden from the docs, kept `pub` only so the fuzz crate and the tests reach it.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use prost::Message;

use crate::filesink::FileSink;
use crate::logs::parse::DEFAULT_MAX_LINE_BYTES;
use crate::logs::redact::PatternConfig;
use crate::logs::{
    Format, Joined, Joiner, JoinerConfig, LogRecord, Parser, ParserConfig, RedactionConfig,
    RedactionCounts, Redactor,
};
use crate::metrics::LabelCaps;
use crate::otlp::http::{self, Format as BodyFormat};
use crate::pipeline::{Payload, Signal};
use crate::spanmetrics::{SpanMetrics, SpanMetricsSettings};

/// The request limit the OTLP targets decode under (small, so inflation past it is reached).
pub const OTLP_LIMIT: usize = 1 << 20;

fn redactor() -> &'static Redactor {
    static REDACTOR: OnceLock<Redactor> = OnceLock::new();
    REDACTOR.get_or_init(|| {
        // The built-ins plus one configured pattern with a `secret` group, as users write them.
        let config = RedactionConfig {
            builtins: true,
            patterns: vec![PatternConfig {
                name: "password".to_owned(),
                regex: r"(?i)password=(?P<secret>[^&\s]+)".to_owned(),
            }],
        };
        Redactor::new(&config).expect("the fuzz redactor's patterns compile")
    })
}

/// Target `log_line`: byte 0 picks the parser settings (format, line cap, zone offset), the
/// rest is one log line. Parses it, redacts the record, and also redacts the raw text.
///
/// Invariants: a line cut to the cap reports what was cut; redaction reaches a fixed point (a
/// second pass over its output finds nothing: no secret it matched, nor one a replacement
/// exposed, is left in the output).
pub fn log_line(data: &[u8]) {
    let Some((&select, line)) = data.split_first() else {
        return;
    };
    let format = [Format::Auto, Format::Json, Format::Text][usize::from(select % 3)];
    let max_line_bytes = [DEFAULT_MAX_LINE_BYTES, 4096, 64, 1][usize::from((select >> 2) & 3)];
    let naive_utc_offset_secs =
        [0, 5 * 3600 + 1800, -12 * 3600, 14 * 3600][usize::from(select >> 4 & 3)];
    let parser = Parser::new(ParserConfig {
        format,
        max_line_bytes,
        naive_utc_offset_secs,
    });
    let mut parsed = parser.parse(line, 1_714_564_800_000_000_000);
    // The parser ignores a trailing `\n`, then a trailing `\r`, each optional.
    let content = line.strip_suffix(b"\n").unwrap_or(line);
    let content = content.strip_suffix(b"\r").unwrap_or(content);
    assert_eq!(
        parsed.truncated_bytes,
        content.len().saturating_sub(max_line_bytes),
        "cut bytes reported"
    );
    let redactor = redactor();
    redactor.redact_record(&mut parsed.record);
    assert_redacted(redactor, &parsed.record);

    let mut text = String::from_utf8_lossy(line).into_owned();
    let mut counts = RedactionCounts::default();
    redactor.redact_string(&mut text, &mut counts);
    let mut again = RedactionCounts::default();
    let before = text.clone();
    redactor.redact_string(&mut text, &mut again);
    assert_eq!(again.total(), 0, "a second pass redacted {before:?} again");
}

fn assert_redacted(redactor: &Redactor, record: &LogRecord) {
    let mut again = record.clone();
    let counts = redactor.redact_record(&mut again);
    assert_eq!(counts.total(), 0, "a second pass redacted {record:?} again");
}

/// Target `multiline`: byte 0 picks the joiner's caps and timeout; the rest, split on `\n`, is
/// the line sequence. A line starting with ESC (0x1b) is not a line but a clock step of
/// `10 ms × its second byte` followed by [`Joiner::poll`]; every line is pushed at the current
/// time, and the joiner is flushed at the end.
///
/// Invariants (the module's): every line pushed ends up in exactly one record, in order; a
/// record that was not cut is its lines joined by `\n`, one that was is a prefix of that and
/// never over the byte cap; no record keeps more lines than the line cap.
pub fn multiline(data: &[u8]) {
    let Some((&select, rest)) = data.split_first() else {
        return;
    };
    let config = JoinerConfig {
        timeout: Duration::from_millis([500, 0, 10, 10_000][usize::from(select & 3)]),
        max_lines: [1000, 3, 1, 50][usize::from((select >> 2) & 3)],
        max_bytes: [DEFAULT_MAX_LINE_BYTES, 256, 16, 1][usize::from((select >> 4) & 3)],
    };
    let (max_lines, max_bytes) = (config.max_lines, config.max_bytes);
    let mut joiner = Joiner::new(config);
    let start = Instant::now();
    let mut now = start;
    let mut pushed: Vec<&[u8]> = Vec::new();
    let mut out: Vec<Joined> = Vec::new();
    for piece in rest.split(|&b| b == b'\n') {
        if let Some(step) = piece.strip_prefix(b"\x1b") {
            now += Duration::from_millis(10 * u64::from(step.first().copied().unwrap_or(0)));
            out.extend(joiner.poll(now));
            if let Some(deadline) = joiner.deadline() {
                assert!(deadline > now, "poll left a record that was due");
            }
            continue;
        }
        joiner.push(piece, now, &mut out);
        pushed.push(piece.strip_suffix(b"\r").unwrap_or(piece));
    }
    out.extend(joiner.flush());
    assert!(joiner.flush().is_none() && joiner.deadline().is_none());

    let mut next = 0;
    for record in &out {
        assert!(record.lines >= 1, "an empty record");
        let lines = pushed.get(next..next + record.lines).unwrap_or_else(|| {
            panic!(
                "records hold more lines than were pushed ({})",
                pushed.len()
            )
        });
        next += record.lines;
        let whole = lines.join(&b'\n');
        if record.truncated() {
            assert!(
                whole.starts_with(&record.text),
                "a cut record is not a prefix"
            );
            assert!(record.text.len() <= max_bytes, "over the byte cap");
            assert!(
                record.lines - record.dropped_lines <= max_lines.max(1),
                "over the line cap"
            );
        } else {
            assert_eq!(record.text, whole, "a record differs from its lines");
        }
    }
    assert_eq!(next, pushed.len(), "lines lost or duplicated");
}

fn signal_of(select: u8) -> Signal {
    [
        Signal::Traces,
        Signal::Metrics,
        Signal::Logs,
        Signal::Traces,
    ][usize::from(select & 3)]
}

fn encode(payload: &Payload) -> Vec<u8> {
    match payload {
        Payload::Traces(r) => r.encode_to_vec(),
        Payload::Metrics(r) => r.encode_to_vec(),
        Payload::Logs(r) => r.encode_to_vec(),
        Payload::Encoded(e) => e.bytes().to_vec(),
    }
}

fn decode_pb(signal: Signal, bytes: &[u8]) -> Result<Payload, prost::DecodeError> {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    Ok(match signal {
        Signal::Traces => Payload::Traces(ExportTraceServiceRequest::decode(bytes)?),
        Signal::Metrics => Payload::Metrics(ExportMetricsServiceRequest::decode(bytes)?),
        Signal::Logs => Payload::Logs(ExportLogsServiceRequest::decode(bytes)?),
    })
}

/// What the receivers do with a decoded request besides queueing it (span metrics for
/// traces), and the checks both OTLP targets share: the protobuf encoding of what was decoded
/// decodes again to the same encoding.
fn after_decode(payload: &Payload) -> Vec<u8> {
    let decoded;
    let payload = match payload {
        Payload::Encoded(e) => {
            // `wire::traces` accepted it, so prost must decode it: one bad request must never
            // make a whole batch undecodable downstream. Span metrics read it as the receivers do.
            decoded = e
                .decode()
                .unwrap_or_else(|err| panic!("wire accepted what prost refuses: {err}"));
            let caps = LabelCaps::new(20);
            let spanmetrics = SpanMetrics::new(&SpanMetricsSettings::default(), &caps);
            let (prepared, _) = spanmetrics
                .prepare_encoded(e.bytes())
                .unwrap_or_else(|err| panic!("span metrics refuse what wire accepted: {err}"));
            spanmetrics.record(prepared);
            &decoded
        }
        p => p,
    };
    if let Payload::Traces(request) = payload {
        let caps = LabelCaps::new(20);
        let settings = SpanMetricsSettings {
            max_label_sets: 20,
            ..SpanMetricsSettings::default()
        };
        let spanmetrics = SpanMetrics::new(&settings, &caps);
        let prepared = spanmetrics.prepare(request);
        spanmetrics.record(prepared);
        for service in spanmetrics.services() {
            let red = spanmetrics.red(&service);
            assert!(red.is_some(), "a listed service has no figures");
        }
    }
    let encoded = encode(payload);
    let again = decode_pb(payload.signal(), &encoded)
        .unwrap_or_else(|e| panic!("our own encoding does not decode: {e}"));
    assert_eq!(encode(&again), encoded, "protobuf re-encoding differs");
    encoded
}

/// Target `otlp_protobuf`: byte 0 picks the signal (bits 0–1) and gzip (bit 2), the rest is an
/// OTLP/HTTP protobuf body, decoded as the HTTP receiver does (inflation capped at
/// [`OTLP_LIMIT`]); the gRPC receiver decodes the same messages with the same prost code.
///
/// Invariants: what decodes re-encodes to bytes that decode to the same encoding; the file
/// sink can write it as a JSON line.
pub fn otlp_protobuf(data: &[u8]) {
    let Some((&select, body)) = data.split_first() else {
        return;
    };
    let gzip = select & 4 != 0;
    let Ok(decoded) = http::decode(
        signal_of(select),
        BodyFormat::Protobuf,
        gzip,
        bytes::Bytes::copy_from_slice(body),
        OTLP_LIMIT,
    ) else {
        return;
    };
    let Ok(payload) = decoded.into_payload() else {
        return;
    };
    after_decode(&payload);
    if let Err(e) = FileSink::encode(&payload) {
        panic!("the file sink cannot write a decoded request: {e}");
    }
}

/// Target `otlp_json`: byte 0 as for [`otlp_protobuf`], the rest an OTLP/HTTP JSON body.
///
/// Invariants: as for protobuf, and the file sink's JSON line of the request (the same serde
/// code, our OTLP JSON output) decodes back to the same request.
pub fn otlp_json(data: &[u8]) {
    let Some((&select, body)) = data.split_first() else {
        return;
    };
    let gzip = select & 4 != 0;
    let signal = signal_of(select);
    let body = bytes::Bytes::copy_from_slice(body);
    let Ok(decoded) = http::decode(signal, BodyFormat::Json, gzip, body, OTLP_LIMIT) else {
        return;
    };
    let Ok(payload) = decoded.into_payload() else {
        return;
    };
    let encoded = after_decode(&payload);
    let line = FileSink::encode(&payload)
        .unwrap_or_else(|e| panic!("the file sink cannot write a decoded request: {e}"));
    let back = http::decode(
        signal,
        BodyFormat::Json,
        false,
        line.clone().into(),
        usize::MAX,
    )
    .ok()
    .and_then(|d| d.into_payload().ok())
    .unwrap_or_else(|| {
        panic!(
            "our own OTLP JSON does not decode: {}",
            String::from_utf8_lossy(&line)
        )
    });
    assert_eq!(encode(&back), encoded, "OTLP JSON round trip differs");
}

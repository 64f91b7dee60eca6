//! The OTLP exporter's hot path on one core: merging received span payloads into batches
//! (`Batch::push`), protobuf-encoding each batch, gzip, and, for the disk spill, one fsync'd
//! append per batch. Prints MiB/s of encoded protobuf and spans/s.
//!
//! Run: `cargo bench -p sidelight-collector --bench export_hot_path`

use std::hint::black_box;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use sidelight_collector::export::batch::Batch;
use sidelight_collector::export::otlp::{Compression, encode_compressed};
use sidelight_collector::export::spill::Spill;
use sidelight_collector::pipeline::{Envelope, Payload, Receipt};

const RUN_FOR: Duration = Duration::from_millis(2000);
const BATCH_BYTES: usize = 512 << 10;

fn s(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

/// A request like an OTel Python SDK's BatchSpanProcessor sends: one resource, one scope,
/// `n` HTTP server spans with a handful of attributes (~250 B each encoded).
fn request(i: usize, n: usize) -> Payload {
    Payload::Traces(ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    s("service.name", "checkout"),
                    s("service.version", "1.4.2"),
                    s("host.name", "web-7d9f8"),
                    s("telemetry.sdk.language", "python"),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "opentelemetry.instrumentation.fastapi".into(),
                    version: "0.66b1".into(),
                    ..Default::default()
                }),
                spans: (0..n)
                    .map(|j| Span {
                        trace_id: ((i * n + j) as u128).to_be_bytes().to_vec(),
                        span_id: ((i * n + j) as u64).to_be_bytes().to_vec(),
                        name: format!("GET /api/v1/orders/{{id}} {}", j % 7),
                        kind: 2,
                        start_time_unix_nano: 1_700_000_000_000_000_000 + j as u64,
                        end_time_unix_nano: 1_700_000_000_012_000_000 + j as u64,
                        attributes: vec![
                            s("http.request.method", "GET"),
                            s("http.route", "/api/v1/orders/{id}"),
                            s("url.path", &format!("/api/v1/orders/{}", i * n + j)),
                            s("http.response.status_code", "200"),
                            s("client.address", "10.0.3.17"),
                        ],
                        status: Some(Status::default()),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    })
}

fn main() {
    let per_request = 100;
    let requests: Vec<Payload> = (0..512).map(|i| request(i, per_request)).collect();
    let bytes_per_round: usize = requests.iter().map(Payload::encoded_len).sum();
    let spans_per_round = requests.len() * per_request;
    println!(
        "input: {} requests x {per_request} spans, {:.1} MiB encoded ({} B/span), batches of {} KiB",
        requests.len(),
        bytes_per_round as f64 / 1048576.0,
        bytes_per_round / spans_per_round,
        BATCH_BYTES >> 10
    );

    let run = |name: &str, stage: &dyn Fn(&[Payload]) -> usize| {
        let t = Instant::now();
        let mut rounds = 0usize;
        let mut out = 0usize;
        while t.elapsed() < RUN_FOR {
            out += stage(&requests);
            rounds += 1;
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{name:<40} {:>8.1} MiB/s {:>12.0} spans/s   (output {:.1} MiB/round)",
            (bytes_per_round * rounds) as f64 / 1048576.0 / secs,
            (spans_per_round * rounds) as f64 / secs,
            out as f64 / rounds as f64 / 1048576.0
        );
    };

    // Each stage starts from the received payloads (the clone stands for what the receiver
    // decoded; it is measured alone first).
    run("clone (receiver's decode stand-in)", &|reqs| {
        reqs.iter()
            .map(|p| black_box(p.clone()).encoded_len())
            .sum()
    });
    let merge = |reqs: &[Payload]| -> Vec<Batch> {
        let mut batches = Vec::new();
        let mut cur: Option<Batch> = None;
        for p in reqs {
            let env = Envelope::new(p.clone(), Receipt::untracked());
            match cur.as_mut() {
                Some(b) if b.bytes + env.bytes <= BATCH_BYTES => {
                    let _ = b.push(env);
                }
                _ => {
                    if let Some(b) = cur.replace(Batch::from_envelope(env)) {
                        batches.push(b);
                    }
                }
            }
        }
        batches.extend(cur);
        batches
    };
    run("clone + merge", &|reqs| {
        merge(reqs).iter().map(|b| b.bytes).sum()
    });
    run("clone + merge + encode", &|reqs| {
        merge(reqs)
            .iter()
            .map(|b| black_box(b.payload.encode_to_vec()).len())
            .sum()
    });
    for (name, c) in [
        ("clone + merge + encode + gzip 6", Compression::Gzip(6)),
        ("clone + merge + encode + gzip 1", Compression::Gzip(1)),
        ("clone + merge + encode + zstd 1", Compression::Zstd(1)),
        ("clone + merge + encode + zstd 3", Compression::Zstd(3)),
    ] {
        run(name, &|reqs| {
            merge(reqs)
                .iter()
                .map(|b| {
                    let mut out = Vec::new();
                    encode_compressed(&b.payload, c, &mut out);
                    black_box(out).len()
                })
                .sum()
        });
    }
    let dir = tempfile::tempdir().expect("tmp");
    let spill = std::cell::RefCell::new(Spill::open(dir.path(), 1 << 30).expect("spill").0);
    run("clone + merge + encode + spill (fsync)", &|reqs| {
        let mut s = spill.borrow_mut();
        let mut n = 0;
        for b in merge(reqs) {
            let bytes = b.payload.encode_to_vec();
            n += bytes.len();
            s.append(&bytes, b.envelopes as u32, b.items as u32)
                .expect("append");
        }
        // Replay and acknowledge, as the sender does once the endpoint answers.
        while let Some(r) = s.peek().expect("peek") {
            s.ack(r.meta.seq).expect("ack");
        }
        n
    });
}

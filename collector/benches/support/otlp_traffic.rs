//! Shared by the `otlp_ingest` bench and the `otlp_load` example (included with `#[path]`): OTLP
//! trace requests shaped like a web service's, encoded once, and a tonic codec that sends such
//! pre-encoded bytes as the gRPC message (the response is discarded).

use bytes::{Buf, BufMut, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;

pub fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

/// A request of `spans` spans shaped like a web service's traces (the shape of the
/// `otlp_ingest` bench, so the figures compare).
pub fn request(spans: usize, seed: usize) -> Bytes {
    let start = 1_700_000_000_000_000_000u64;
    let routes = ["/items/{id}", "/orders", "/users/{id}", "/health", "/cart"];
    let spans = (0..spans)
        .map(|i| {
            let n = seed * 10_000 + i;
            let server = i % 5 == 0;
            let route = routes[(n / 5) % routes.len()];
            let mut trace_id = [0u8; 16];
            trace_id[..8].copy_from_slice(&((n / 5) as u64).to_le_bytes());
            trace_id[8..].copy_from_slice(&(seed as u64).to_le_bytes());
            let mut attributes = vec![
                kv("http.request.method", "GET"),
                kv("url.scheme", "http"),
                kv("server.address", "shop.internal"),
                kv("network.protocol.version", "1.1"),
            ];
            if server {
                attributes.push(kv("http.route", route));
                attributes.push(kv("url.path", &route.replace("{id}", &n.to_string())));
                attributes.push(kv("user_agent.original", "python-requests/2.32.3"));
            } else {
                attributes.push(kv("db.system", "postgresql"));
                attributes.push(kv(
                    "db.statement",
                    "SELECT id, name, price FROM items WHERE id = $1",
                ));
            }
            Span {
                trace_id: trace_id.to_vec(),
                span_id: (n as u64 + 1).to_le_bytes().to_vec(),
                parent_span_id: if server { vec![] } else { vec![1; 8] },
                name: if server {
                    format!("GET {route}")
                } else {
                    "SELECT shop".into()
                },
                kind: if server {
                    SpanKind::Server
                } else if i % 5 == 1 {
                    SpanKind::Internal
                } else {
                    SpanKind::Client
                } as i32,
                start_time_unix_nano: start + n as u64 * 1000,
                end_time_unix_nano: start
                    + n as u64 * 1000
                    + 1_000_000
                    + (n as u64 % 97) * 3_000_000,
                attributes,
                status: Some(Status {
                    code: if n.is_multiple_of(50) { 2 } else { 0 },
                    ..Default::default()
                }),
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", "shop"),
                    kv("service.version", "1.4.2"),
                    kv("deployment.environment", "production"),
                    kv("telemetry.sdk.language", "python"),
                    kv("telemetry.sdk.name", "opentelemetry"),
                    kv("telemetry.sdk.version", "1.45.1"),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "opentelemetry.instrumentation.fastapi".into(),
                    version: "0.66b1".into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
    .into()
}

// ---------------------------------------------------------------------------------------------
// Codecs: the sender writes pre-encoded bytes; the sink counts spans without decoding.

#[derive(Clone, Default)]
pub struct SendCodec;
pub struct SendEncoder;
pub struct SendDecoder;

impl tonic::codec::Codec for SendCodec {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = SendEncoder;
    type Decoder = SendDecoder;
    fn encoder(&mut self) -> SendEncoder {
        SendEncoder
    }
    fn decoder(&mut self) -> SendDecoder {
        SendDecoder
    }
}

impl tonic::codec::Encoder for SendEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for SendDecoder {
    type Item = ();
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<()>, tonic::Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

//! Receiver tests against the real listeners and tonic clients (HTTP cases through the router
//! where the transport does not matter).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use bytes::{Buf, BufMut};
use flate2::Compression;
use flate2::write::GzEncoder;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prometheus_client::registry::Registry;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel;
use tower::ServiceExt;

use super::http::RpcStatus;
use super::testing::{text, tiny_intake, traces};
use super::*;
use crate::metrics::LabelCaps;
use crate::spanmetrics::SpanMetricsSettings;

struct Running {
    grpc: SocketAddr,
    http: SocketAddr,
    handle: ReceiversHandle,
    registry: Registry,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn metrics(&self) -> String {
        text(&self.registry)
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("run returns after cancel")
            .expect("join");
    }
}

fn loopback() -> OtlpSettings {
    OtlpSettings {
        grpc: Some("127.0.0.1:0".parse().expect("addr")),
        http: Some("127.0.0.1:0".parse().expect("addr")),
        ..Default::default()
    }
}

async fn start(settings: OtlpSettings, intake: Intake) -> Running {
    assert!(settings.validate().is_empty(), "{:?}", settings.validate());
    let caps = LabelCaps::new(100);
    let stats = ReceiverStats::default();
    let sm = SpanMetrics::new(&SpanMetricsSettings::default(), &caps);
    let mut registry = Registry::default();
    stats.register(&mut registry);
    sm.register(&mut registry);
    let receivers = Receivers::build(&settings, intake, stats, Some(sm))
        .await
        .expect("build");
    let cancel = CancellationToken::new();
    Running {
        grpc: receivers.grpc_addr().expect("grpc"),
        http: receivers.http_addr().expect("http"),
        handle: receivers.handle(),
        registry,
        cancel: cancel.clone(),
        task: tokio::spawn(receivers.run(cancel)),
    }
}

async fn grpc_client(addr: SocketAddr) -> TraceServiceClient<Channel> {
    TraceServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
}

fn with_token(
    mut req: tonic::Request<ExportTraceServiceRequest>,
    token: &str,
) -> tonic::Request<ExportTraceServiceRequest> {
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    req
}

/// POSTs through the HTTP router in process (the same service the listener serves).
async fn post(
    handle: &ReceiversHandle,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let mut req = Request::post(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let router = handle.http_router.read().clone();
    let resp = router
        .oneshot(req.body(Body::from(body)).expect("request"))
        .await
        .expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, headers, body.to_vec())
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(data).expect("compress");
    e.finish().expect("compress")
}

const PB: (&str, &str) = ("content-type", "application/x-protobuf");
const JS: (&str, &str) = ("content-type", "application/json");

#[tokio::test]
async fn grpc_accepts_plain_gzip_and_zstd_and_feeds_span_metrics() {
    let r = start(loopback(), Intake::discard()).await;
    let mut client = grpc_client(r.grpc).await;
    client.export(traces("shop", 2)).await.expect("plain");
    let mut gz = grpc_client(r.grpc)
        .await
        .send_compressed(CompressionEncoding::Gzip);
    gz.export(traces("shop", 3)).await.expect("gzip");
    let mut zs = grpc_client(r.grpc)
        .await
        .send_compressed(CompressionEncoding::Zstd);
    zs.export(traces("shop", 5)).await.expect("zstd");
    let m = r.metrics();
    assert!(
        m.contains(
            "sidelight_receiver_accepted_total{receiver=\"otlp_grpc\",signal=\"traces\"} 10"
        ),
        "{m}"
    );
    assert!(m.contains("sidelight_receiver_requests_total{receiver=\"otlp_grpc\",signal=\"traces\",code=\"OK\"} 3"), "{m}");
    assert!(m.contains("traces_span_metrics_calls_total{service_name=\"shop\",span_name=\"GET /\",span_kind=\"SPAN_KIND_SERVER\",status_code=\"STATUS_CODE_UNSET\"} 10"), "{m}");
    let bytes = crate_sample(
        &m,
        "sidelight_receiver_bytes_total{receiver=\"otlp_grpc\",signal=\"traces\"}",
    );
    assert!(bytes > 0.0, "{m}");
    r.stop().await;
}

fn crate_sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .trim()
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(-1.0)
}

/// Encodes raw bytes as the request message, so a test can send what no client would.
#[derive(Clone, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = ExportTraceServiceResponse;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Self::Item>, tonic::Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        ExportTraceServiceResponse::decode(bytes)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

async fn raw_export(addr: SocketAddr, body: Vec<u8>) -> Result<(), tonic::Status> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        .parse()
        .expect("path");
    grpc.unary(tonic::Request::new(body), path, RawCodec)
        .await
        .map(drop)
}

#[tokio::test]
async fn grpc_bad_data_is_invalid_argument_too_large_is_resource_exhausted() {
    let settings = OtlpSettings {
        max_request_bytes: 4096,
        ..loopback()
    };
    let r = start(settings, Intake::discard()).await;
    let mut good = traces("svc", 3).encode_to_vec();
    good.truncate(good.len() - 7);
    let err = raw_export(r.grpc, good).await.expect_err("truncated");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    let err = grpc_client(r.grpc)
        .await
        .export(traces("svc", 200))
        .await
        .expect_err("too large");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");

    // A compressed message that inflates past the limit.
    let err = grpc_client(r.grpc)
        .await
        .send_compressed(CompressionEncoding::Gzip)
        .export(traces("svc", 200))
        .await
        .expect_err("too large once inflated");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");

    // The receiver keeps serving.
    grpc_client(r.grpc)
        .await
        .export(traces("svc", 1))
        .await
        .expect("good after bad");
    let m = r.metrics();
    assert!(m.contains("sidelight_receiver_refused_total{receiver=\"otlp_grpc\",signal=\"traces\",reason=\"bad_request\"} 1"), "{m}");
    assert!(m.contains("sidelight_receiver_refused_total{receiver=\"otlp_grpc\",signal=\"traces\",reason=\"too_large\"} 2"), "{m}");
    assert!(m.contains("code=\"INVALID_ARGUMENT\"} 1"), "{m}");
    r.stop().await;
}

#[tokio::test]
async fn auth_with_two_tokens_on_both_receivers_and_rotation() {
    let settings = OtlpSettings {
        bearer_tokens: vec![Token::new("alpha"), Token::new("beta")],
        ..loopback()
    };
    let r = start(settings.clone(), Intake::discard()).await;
    let mut c = grpc_client(r.grpc).await;
    let err = c.export(traces("s", 1)).await.expect_err("no token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = c
        .export(with_token(tonic::Request::new(traces("s", 1)), "gamma"))
        .await
        .expect_err("wrong token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    for t in ["alpha", "beta"] {
        c.export(with_token(tonic::Request::new(traces("s", 1)), t))
            .await
            .expect(t);
    }
    let body = traces("s", 1).encode_to_vec();
    let (status, headers, _) = post(&r.handle, "/v1/traces", &[PB], body.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
    let (status, _, _) = post(
        &r.handle,
        "/v1/traces",
        &[PB, ("authorization", "Bearer nope")],
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for t in ["alpha", "beta"] {
        let auth = format!("Bearer {t}");
        let (status, _, _) = post(
            &r.handle,
            "/v1/traces",
            &[PB, ("authorization", &auth)],
            body.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{t}");
    }
    // Rotation: beta retired, gamma added, in place.
    let rotated = OtlpSettings {
        bearer_tokens: vec![Token::new("gamma")],
        ..settings
    };
    assert_eq!(
        r.handle.reconfigure(&rotated).expect("reload"),
        Vec::<&str>::new()
    );
    let (status, _, _) = post(
        &r.handle,
        "/v1/traces",
        &[PB, ("authorization", "Bearer beta")],
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    c.export(with_token(tonic::Request::new(traces("s", 1)), "gamma"))
        .await
        .expect("new token");
    let m = r.metrics();
    assert!(m.contains("sidelight_receiver_refused_total{receiver=\"otlp_grpc\",signal=\"traces\",reason=\"unauthenticated\"} 2"), "{m}");
    assert!(m.contains("sidelight_receiver_refused_total{receiver=\"otlp_http\",signal=\"traces\",reason=\"unauthenticated\"} 3"), "{m}");
    assert!(!m.contains("alpha") && !m.contains("gamma"));
    r.stop().await;
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after_and_unavailable_and_is_not_counted_twice() {
    let (intake, queue) = tiny_intake();
    let settings = OtlpSettings {
        retry_after: Duration::from_secs(3),
        ..loopback()
    };
    let r = start(settings, intake).await;
    let body = traces("busy", 2).encode_to_vec();
    let (status, _, _) = post(&r.handle, "/v1/traces", &[PB], body.clone()).await;
    assert_eq!(status, StatusCode::OK, "the queue takes one");
    let (status, headers, body_out) = post(&r.handle, "/v1/traces", &[PB], body.clone()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers[header::RETRY_AFTER], "3");
    let st = RpcStatus::decode(body_out.as_slice()).expect("a google.rpc.Status body");
    assert_eq!(st.code, 14);
    let err = grpc_client(r.grpc)
        .await
        .export(traces("busy", 2))
        .await
        .expect_err("full");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    let m = r.metrics();
    assert!(m.contains("traces_span_metrics_calls_total{service_name=\"busy\",span_name=\"GET /\",span_kind=\"SPAN_KIND_SERVER\",status_code=\"STATUS_CODE_UNSET\"} 2"), "only the accepted request: {m}");
    assert!(m.contains("reason=\"full\"} 1"), "{m}");
    assert!(m.contains("sidelight_receiver_requests_total{receiver=\"otlp_http\",signal=\"traces\",code=\"503\"} 1"), "{m}");
    let bytes_before = crate_sample(
        &m,
        "sidelight_receiver_bytes_total{receiver=\"otlp_http\",signal=\"traces\"}",
    );

    // OTLP/HTTP refuses before decompressing or decoding: bodies that would be a 400 get 503.
    for (headers, body) in [
        (
            vec![PB, ("content-encoding", "gzip")],
            b"not gzip at all".to_vec(),
        ),
        (vec![JS], b"{not json".to_vec()),
    ] {
        let (status, h, _) = post(&r.handle, "/v1/traces", &headers, body).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{headers:?}");
        assert_eq!(h[header::RETRY_AFTER], "3");
    }
    // Over a real HTTP/1.1 connection the answer arrives whole (the unread body is drained).
    let mut tcp = tokio::net::TcpStream::connect(r.http).await.expect("tcp");
    let garbage = vec![0x1f; 100_000];
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
        garbage.len()
    );
    tcp.write_all(head.as_bytes()).await.expect("write");
    tcp.write_all(&garbage).await.expect("write");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .expect("an answer")
            .expect("read");
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 3"),
        "{answer}"
    );
    let m = r.metrics();
    assert!(m.contains("sidelight_receiver_refused_total{receiver=\"otlp_http\",signal=\"traces\",reason=\"full\"} 4"), "{m}");
    assert!(
        !m.contains("reason=\"bad_request\""),
        "nothing was decoded: {m}"
    );
    assert_eq!(
        crate_sample(
            &m,
            "sidelight_receiver_bytes_total{receiver=\"otlp_http\",signal=\"traces\"}"
        ),
        bytes_before,
        "refused bodies are not counted as received"
    );
    // Room again: the retry is taken.
    assert!(queue.try_pop().is_some());
    let (status, _, _) = post(&r.handle, "/v1/traces", &[PB], body).await;
    assert_eq!(status, StatusCode::OK);
    r.stop().await;
}

#[tokio::test]
async fn http_protobuf_gzip_and_json_for_every_signal() {
    let r = start(loopback(), Intake::discard()).await;
    let pb = traces("web", 4).encode_to_vec();
    let (status, headers, body) = post(&r.handle, "/v1/traces", &[PB], pb.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/x-protobuf");
    assert!(body.is_empty(), "an empty ExportTraceServiceResponse");
    let (status, _, _) = post(
        &r.handle,
        "/v1/traces",
        &[PB, ("content-encoding", "gzip")],
        gzip(&pb),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // JSON per the OTLP spec: hex ids (either case), integer enums, 64-bit ints as strings.
    let trace_json = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"json-svc"}}]},
        "scopeSpans":[{"scope":{"name":"lib"},"spans":[{"traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"eee19b7ec3c1b174",
        "name":"GET /json","kind":2,"startTimeUnixNano":"1544712660000000000","endTimeUnixNano":1544712661000000000,
        "status":{"code":2},"unknownField":true}]}]}]}"#;
    let (status, headers, body) = post(
        &r.handle,
        "/v1/traces",
        &[("content-type", "application/json; charset=utf-8")],
        trace_json.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(body, b"{}");
    let metrics_json = br#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"c","sum":{"aggregationTemporality":2,"isMonotonic":true,
        "dataPoints":[{"asDouble":5,"timeUnixNano":"1544712660300000000"},{"asInt":"7","timeUnixNano":"1544712660300000000"}]}},
        {"name":"g","gauge":{"dataPoints":[{"asDouble":1.5}]}}]}]}]}"#;
    let (status, _, body) = post(&r.handle, "/v1/metrics", &[JS], metrics_json.to_vec()).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let logs_json = br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"timeUnixNano":"1544712660300000000","severityNumber":9,
        "severityText":"Information","traceId":"5b8efff798038103d269b633813fc60c","body":{"stringValue":"hello"}}]}]}]}"#;
    let (status, _, body) = post(
        &r.handle,
        "/v1/logs",
        &[JS, ("content-encoding", "gzip")],
        gzip(logs_json),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let (status, _, _) = post(
        &r.handle,
        "/v1/metrics",
        &[PB],
        ExportMetricsServiceRequest::default().encode_to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = post(
        &r.handle,
        "/v1/logs",
        &[PB],
        ExportLogsServiceRequest::default().encode_to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let m = r.metrics();
    assert!(
        m.contains("sidelight_receiver_accepted_total{receiver=\"otlp_http\",signal=\"traces\"} 9"),
        "{m}"
    );
    assert!(
        m.contains(
            "sidelight_receiver_accepted_total{receiver=\"otlp_http\",signal=\"metrics\"} 3"
        ),
        "{m}"
    );
    assert!(
        m.contains("sidelight_receiver_accepted_total{receiver=\"otlp_http\",signal=\"logs\"} 1"),
        "{m}"
    );
    assert!(m.contains("service_name=\"json-svc\",span_name=\"GET /json\",span_kind=\"SPAN_KIND_SERVER\",status_code=\"STATUS_CODE_ERROR\"} 1"), "{m}");
    assert!(m.contains("traces_span_metrics_duration_seconds_bucket{le=\"1.0\",service_name=\"json-svc\",span_name=\"GET /json\",span_kind=\"SPAN_KIND_SERVER\",status_code=\"STATUS_CODE_ERROR\"} 1"), "{m}");
    r.stop().await;
}

#[tokio::test]
async fn http_bad_input_gets_the_right_status_and_a_status_body() {
    let r = start(loopback(), Intake::discard()).await;
    let mut truncated = traces("x", 3).encode_to_vec();
    truncated.truncate(truncated.len() - 5);
    let (status, headers, body) = post(&r.handle, "/v1/traces", &[PB], truncated).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(headers[header::CONTENT_TYPE], "application/x-protobuf");
    let st = RpcStatus::decode(body.as_slice()).expect("status");
    assert_eq!(st.code, 3);
    assert!(st.message.contains("invalid protobuf"), "{}", st.message);

    let (status, headers, body) = post(
        &r.handle,
        "/v1/traces",
        &[JS],
        b"{\"resourceSpans\": [".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    let st: serde_json::Value = serde_json::from_slice(&body).expect("json status");
    assert_eq!(st["code"], 3);
    assert!(
        st["message"]
            .as_str()
            .is_some_and(|m| m.contains("invalid OTLP JSON")),
        "{st}"
    );

    // Enum names and base64 ids are not OTLP JSON.
    let names = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"a","kind":"SPAN_KIND_SERVER"}]}]}]}"#;
    assert_eq!(
        post(&r.handle, "/v1/traces", &[JS], names.to_vec()).await.0,
        StatusCode::BAD_REQUEST
    );
    let b64 = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"a","traceId":"W47/95gDgQPSabYzgT/GDA=="}]}]}]}"#;
    assert_eq!(
        post(&r.handle, "/v1/traces", &[JS], b64.to_vec()).await.0,
        StatusCode::BAD_REQUEST
    );

    let (status, _, _) = post(
        &r.handle,
        "/v1/traces",
        &[("content-type", "text/plain")],
        b"hi".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, _, _) = post(&r.handle, "/v1/traces", &[], b"hi".to_vec()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, _, _) = post(
        &r.handle,
        "/v1/traces",
        &[PB, ("content-encoding", "br")],
        b"hi".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, _, _) = post(
        &r.handle,
        "/v1/traces",
        &[PB, ("content-encoding", "gzip")],
        b"not gzip".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        post(&r.handle, "/v1/spans", &[PB], vec![]).await.0,
        StatusCode::NOT_FOUND
    );

    let m = r.metrics();
    for (reason, n) in [
        ("bad_request", 5),
        ("unsupported_media_type", 2),
        ("unsupported_encoding", 1),
    ] {
        let series = format!(
            "sidelight_receiver_refused_total{{receiver=\"otlp_http\",signal=\"traces\",reason=\"{reason}\"}}"
        );
        assert_eq!(crate_sample(&m, &series), f64::from(n), "{reason}: {m}");
    }
    // And a good request right after.
    let (status, _, _) = post(
        &r.handle,
        "/v1/traces",
        &[PB],
        traces("x", 1).encode_to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    r.stop().await;
}

#[tokio::test]
async fn http_limits_before_and_after_decompression() {
    let settings = OtlpSettings {
        max_request_bytes: 1 << 20,
        ..loopback()
    };
    let r = start(settings, Intake::discard()).await;
    // A gzip bomb: 1 GiB of zeros, about 1 MiB compressed... over the 1 MiB limit compressed,
    // so use a 64 MiB one (64 members) that is small on the wire and huge inflated.
    let member = gzip(&vec![0u8; 1 << 20]);
    let bomb = member.repeat(64);
    assert!(bomb.len() < 1 << 20);
    let (status, _, body) = post(
        &r.handle,
        "/v1/traces",
        &[PB, ("content-encoding", "gzip")],
        bomb,
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let st = RpcStatus::decode(body.as_slice()).expect("status");
    assert_eq!(st.code, 8);
    // Over the limit on the wire.
    let (status, _, _) = post(&r.handle, "/v1/traces", &[PB], vec![0u8; (1 << 20) + 1]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let m = r.metrics();
    assert!(m.contains("reason=\"too_large\"} 2"), "{m}");
    r.stop().await;
}

/// A self-signed CA certificate with its own name (rcgen's simple certificates all share one, so
/// a client trusting another of them fails on the signature, not on the issuer).
fn other_ca() -> rcgen::Certificate {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "another CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().expect("key");
    params.self_signed(&key).expect("cert")
}

#[tokio::test]
async fn tls_on_both_listeners_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let cert_pem = ck.cert.pem();
    std::fs::write(dir.path().join("cert.pem"), &cert_pem).expect("write");
    std::fs::write(dir.path().join("key.pem"), ck.signing_key.serialize_pem()).expect("write");
    let files = TlsFiles {
        cert_file: dir.path().join("cert.pem"),
        key_file: dir.path().join("key.pem"),
    };
    let settings = OtlpSettings {
        tls: Some(files.clone()),
        ..loopback()
    };
    let r = start(settings, Intake::discard()).await;

    // gRPC over TLS with tonic's client.
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&cert_pem))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://localhost:{}", r.grpc.port()))
        .expect("uri")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("TLS connect");
    TraceServiceClient::new(channel)
        .export(traces("tls", 1))
        .await
        .expect("export over TLS");

    // OTLP/HTTP over TLS, HTTP/1.1 by hand.
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).expect("root");
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(r.http).await.expect("tcp");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut stream = connector.connect(name, tcp).await.expect("TLS handshake");
    let body = traces("tls", 2).encode_to_vec();
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    stream.write_all(&body).await.expect("write");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    // Plain text to a TLS listener does not get an answer.
    let plain = raw_export(r.grpc, traces("x", 1).encode_to_vec());
    assert!(
        tokio::time::timeout(Duration::from_secs(5), plain)
            .await
            .map_or(true, |r| r.is_err())
    );
    // A client that does not trust our certificate's issuer aborts the handshake with
    // unknown_ca; both failures are counted by reason.
    let other = other_ca();
    let mut wrong_roots = tokio_rustls::rustls::RootCertStore::empty();
    wrong_roots.add(other.der().clone()).expect("root");
    let wrong = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(wrong_roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(r.http).await.expect("tcp");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let refused = tokio_rustls::TlsConnector::from(Arc::new(wrong))
        .connect(name, tcp)
        .await;
    assert!(refused.is_err(), "the client refuses our certificate");
    let want = [
        "sidelight_receiver_tls_handshake_failures_total{receiver=\"otlp_grpc\",reason=\"protocol\"} 1",
        "sidelight_receiver_tls_handshake_failures_total{receiver=\"otlp_http\",reason=\"unknown_ca\"} 1",
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !want.iter().all(|w| r.metrics().contains(w)) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = r.metrics();
    for w in want {
        assert!(m.contains(w), "{w}\n{m}");
    }
    assert!(
        m.contains("sidelight_receiver_accepted_total{receiver=\"otlp_http\",signal=\"traces\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("sidelight_receiver_accepted_total{receiver=\"otlp_grpc\",signal=\"traces\"} 1"),
        "{m}"
    );

    // A bad certificate on reload is refused and the old one keeps serving.
    std::fs::write(dir.path().join("broken.pem"), "not pem").expect("write");
    let broken = OtlpSettings {
        tls: Some(TlsFiles {
            cert_file: dir.path().join("broken.pem"),
            key_file: files.key_file.clone(),
        }),
        ..loopback()
    };
    assert!(matches!(
        r.handle.reconfigure(&broken),
        Err(OtlpError::Tls { .. })
    ));
    r.stop().await;
}

#[tokio::test]
async fn run_stops_on_cancel_and_closes_the_listeners() {
    let r = start(loopback(), Intake::discard()).await;
    let (grpc, http) = (r.grpc, r.http);
    grpc_client(grpc)
        .await
        .export(traces("a", 1))
        .await
        .expect("export");
    r.stop().await;
    assert!(tokio::net::TcpStream::connect(grpc).await.is_err());
    assert!(tokio::net::TcpStream::connect(http).await.is_err());
}

#[test]
fn settings_validation() {
    assert!(OtlpSettings::default().validate().is_empty());
    let bad = OtlpSettings {
        grpc: Some("127.0.0.1:4000".parse().expect("addr")),
        http: Some("127.0.0.1:4000".parse().expect("addr")),
        max_request_bytes: 10,
        retry_after: Duration::ZERO,
        bearer_tokens: vec![Token::new("  ")],
        tls: None,
        max_connections: 0,
        resource: Default::default(),
        redaction: crate::logs::RedactionConfig {
            builtins: true,
            patterns: vec![crate::logs::redact::PatternConfig {
                name: "broken".into(),
                regex: "([a-z".into(),
            }],
        },
    };
    let keys: Vec<String> = bad.validate().into_iter().map(|e| e.key).collect();
    assert_eq!(
        keys,
        [
            "http",
            "max_request_bytes",
            "retry_after",
            "auth",
            "max_connections",
            "redaction"
        ]
    );
    let none = OtlpSettings {
        grpc: None,
        http: None,
        ..Default::default()
    };
    assert_eq!(none.validate().len(), 1);
    let s = OtlpSettings {
        retry_after: Duration::from_millis(1500),
        ..Default::default()
    };
    assert_eq!(s.retry_after_secs(), 2);
}

#[tokio::test]
async fn encoded_traces_with_a_secret_are_redacted_before_they_are_queued() {
    use super::redact::tests::{SECRETS, leaky_traces};
    let q = Arc::new(crate::pipeline::Queue::new(
        "traces",
        crate::pipeline::QueueLimits {
            max_items: 16,
            max_bytes: 1 << 20,
        },
        crate::pipeline::QueueStats::default(),
    ));
    let intake = Intake::discard().with(crate::pipeline::Signal::Traces, q.clone());
    let r = start(loopback(), intake).await;
    // gRPC and OTLP/HTTP protobuf, each once with the planted secrets and once clean.
    grpc_client(r.grpc)
        .await
        .export(leaky_traces())
        .await
        .expect("grpc");
    grpc_client(r.grpc)
        .await
        .export(traces("clean", 2))
        .await
        .expect("grpc");
    let pb = [("content-type", "application/x-protobuf")];
    let (status, _, _) = post(&r.handle, "/v1/traces", &pb, leaky_traces().encode_to_vec()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = post(
        &r.handle,
        "/v1/traces",
        &pb,
        traces("clean", 2).encode_to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let mut kinds = Vec::new();
    while let Some(env) = q.try_pop() {
        let encoded = env.payload.encode_to_vec();
        for secret in SECRETS {
            assert!(
                !encoded
                    .windows(secret.len())
                    .any(|w| w == secret.as_bytes()),
                "{secret} reached the queue"
            );
        }
        kinds.push(matches!(env.payload, Payload::Encoded(_)));
    }
    // Whether decoded for redaction or forwarded as received, queues hold requests encoded.
    assert_eq!(kinds, [true; 4], "queued encoded");
    let m = r.metrics();
    assert!(
        m.contains("sidelight_receiver_redactions_total{signal=\"traces\"} 14"),
        "{m}"
    );
    assert!(
        m.contains("span_name=\"GET /token/[REDACTED]\""),
        "span metrics see the redacted name: {m}"
    );
    r.stop().await;
}

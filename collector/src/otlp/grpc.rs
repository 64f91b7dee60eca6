//! OTLP/gRPC: the generated `TraceService`, `MetricsService` and `LogsService` servers
//! (accepting gzip and zstd, messages up to `max_request_bytes` after decompression), behind an
//! edge layer that checks the bearer token before anything is decoded, counts wire bytes, and
//! maps tonic's decoding failures onto OTLP's codes: tonic answers INTERNAL for undecodable
//! protobuf and OUT_OF_RANGE for an oversized message, which OTLP clients treat as retryable or
//! unknown; we answer INVALID_ARGUMENT and RESOURCE_EXHAUSTED (permanent: not retried).
//! Our handlers never return INTERNAL, so every INTERNAL comes from decoding the request.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use bytes::Bytes;
use http_body::Frame;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prometheus_client::metrics::counter::Counter;
use tonic::codec::CompressionEncoding;
use tonic::{Code, Status};

use super::{Core, Reason, Receiver};
use crate::pipeline::{Payload, Refused, Signal};

/// The three generated services with our limits, behind the edge layer.
pub(crate) fn router(core: Arc<Core>, max_message_bytes: usize) -> Router {
    let export = Arc::new(Export { core: core.clone() });
    let traces = TraceServiceServer::from_arc(export.clone())
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(max_message_bytes);
    let metrics = MetricsServiceServer::from_arc(export.clone())
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(max_message_bytes);
    let logs = LogsServiceServer::from_arc(export)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(max_message_bytes);
    tonic::service::Routes::new(traces)
        .add_service(metrics)
        .add_service(logs)
        .into_axum_router()
        .layer(middleware::from_fn_with_state(core, edge))
}

struct Export {
    core: Arc<Core>,
}

impl Export {
    fn accept(&self, payload: Payload) -> Result<(), Status> {
        self.core
            .accept(Receiver::Grpc, payload)
            .map(drop)
            .map_err(|r| match r {
                Refused::Full(s) => {
                    Status::unavailable(format!("the {s} queue is full; retry later"))
                }
                Refused::Closed(_) => Status::unavailable("the agent is stopping; retry later"),
            })
    }
}

#[tonic::async_trait]
impl TraceService for Export {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, Status> {
        self.accept(Payload::Traces(request.into_inner()))?;
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Export {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, Status> {
        self.accept(Payload::Metrics(request.into_inner()))?;
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Export {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, Status> {
        self.accept(Payload::Logs(request.into_inner()))?;
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

fn signal_of(path: &str) -> Option<Signal> {
    match path {
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export" => Some(Signal::Traces),
        "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export" => Some(Signal::Metrics),
        "/opentelemetry.proto.collector.logs.v1.LogsService/Export" => Some(Signal::Logs),
        _ => None,
    }
}

async fn edge(State(core): State<Arc<Core>>, req: Request, next: Next) -> Response {
    let Some(signal) = signal_of(req.uri().path()) else {
        // tonic answers UNIMPLEMENTED.
        return next.run(req).await;
    };
    if !core.tokens.allows(req.headers().get(header::AUTHORIZATION)) {
        core.stats
            .refused(Receiver::Grpc, signal, Reason::Unauthenticated);
        core.stats
            .request(Receiver::Grpc, signal, code_label(Code::Unauthenticated));
        return Status::unauthenticated("missing or wrong bearer token").into_http::<Body>();
    }
    // A full pipeline refuses before the body is read and decoded (the sender retries).
    if let Some(refused) = core.intake.refuse_early(signal) {
        let (reason, status) = match refused {
            Refused::Full(s) => (
                Reason::Full,
                Status::unavailable(format!("the {s} queue is full; retry later")),
            ),
            Refused::Closed(_) => (
                Reason::Closed,
                Status::unavailable("the agent is stopping; retry later"),
            ),
        };
        core.stats.refused(Receiver::Grpc, signal, reason);
        core.stats
            .request(Receiver::Grpc, signal, code_label(Code::Unavailable));
        return status.into_http::<Body>();
    }
    let counter = core.stats.bytes_counter(Receiver::Grpc, signal);
    let req = req.map(|inner| Body::new(Counting { inner, counter }));
    let mut response = next.run(req).await;
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok()?.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from_i32);
    let (code, reason) = match code {
        Code::Internal | Code::InvalidArgument => (Code::InvalidArgument, Some(Reason::BadRequest)),
        Code::OutOfRange | Code::ResourceExhausted => {
            (Code::ResourceExhausted, Some(Reason::TooLarge))
        }
        // An unsupported grpc-encoding (the path is a known one).
        Code::Unimplemented => (Code::Unimplemented, Some(Reason::UnsupportedEncoding)),
        // Counted by the intake offer (full / closed).
        other => (other, None),
    };
    if let Some(reason) = reason {
        core.stats.refused(Receiver::Grpc, signal, reason);
        response
            .headers_mut()
            .insert("grpc-status", HeaderValue::from(code as i32));
    }
    core.stats.request(Receiver::Grpc, signal, code_label(code));
    response
}

fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::Unauthenticated => "UNAUTHENTICATED",
        Code::Unavailable => "UNAVAILABLE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Cancelled => "CANCELLED",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        _ => "OTHER",
    }
}

/// A request body that counts the bytes passing through (the wire bytes of the gRPC frames).
struct Counting {
    inner: Body,
    counter: Counter,
}

impl http_body::Body for Counting {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.counter.inc_by(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

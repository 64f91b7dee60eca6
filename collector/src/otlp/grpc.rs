//! OTLP/gRPC: the generated `TraceService`, `MetricsService` and `LogsService` servers
//! (accepting gzip and zstd, messages up to `max_request_bytes` after decompression), behind an
//! edge layer that checks the bearer token before anything is decoded, counts wire bytes, and
//! maps tonic's decoding failures onto OTLP's codes: tonic answers INTERNAL for undecodable
//! protobuf and OUT_OF_RANGE for an oversized message, which OTLP clients treat as retryable or
//! unknown; we answer INVALID_ARGUMENT and RESOURCE_EXHAUSTED (permanent: not retried).
//! Our handlers never return INTERNAL, so every INTERNAL comes from decoding the request.
//!
//! Traces are served by [`Traces`], not the generated server: tonic still reads the gRPC frame,
//! decompresses it and applies the message limit, but its codec hands over the message bytes,
//! which [`Core::accept_encoded_traces`] checks and reads in one pass and forwards as they are.

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
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prometheus_client::metrics::counter::Counter;
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::{Code, Status};

use super::{Core, Reason, Receiver, Rejected};
use crate::pipeline::{Payload, Refused, Signal};

const TRACES_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The three generated services with our limits, behind the edge layer.
pub(crate) fn router(core: Arc<Core>, max_message_bytes: usize) -> Router {
    let export = Arc::new(Export { core: core.clone() });
    let traces = Traces {
        core: core.clone(),
        max_message_bytes,
    };
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
            .map_err(unavailable)
    }
}

fn unavailable(r: Refused) -> Status {
    match r {
        Refused::Full(s) => Status::unavailable(format!("the {s} queue is full; retry later")),
        Refused::Closed(_) => Status::unavailable("the agent is stopping; retry later"),
    }
}

/// The OTLP `TraceService`, taking its requests as bytes (see the module docs).
#[derive(Clone)]
struct Traces {
    core: Arc<Core>,
    max_message_bytes: usize,
}

impl tonic::server::NamedService for Traces {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl tower::Service<http::Request<tonic::body::Body>> for Traces {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            if req.uri().path() != TRACES_PATH {
                return Ok(Status::unimplemented("").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(BytesCodec)
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Zstd)
                .max_decoding_message_size(this.max_message_bytes);
            Ok(grpc.unary(ExportTraces(this.core), req).await)
        })
    }
}

struct ExportTraces(Arc<Core>);

impl tonic::server::UnaryService<Bytes> for ExportTraces {
    type Response = ExportTraceServiceResponse;
    type Future = std::future::Ready<Result<tonic::Response<Self::Response>, Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let answer = match self
            .0
            .accept_encoded_traces(Receiver::Grpc, request.into_inner())
        {
            Ok(_) => Ok(tonic::Response::new(ExportTraceServiceResponse::default())),
            // Counted by the edge, as tonic's own decoding failures are.
            Err(Rejected::Invalid(e)) => Err(Status::invalid_argument(e.to_string())),
            Err(Rejected::Refused(r)) => Err(unavailable(r)),
        };
        std::future::ready(answer)
    }
}

/// A codec whose requests are the message bytes, undecoded (its responses are OTLP's).
#[derive(Debug, Clone, Copy, Default)]
struct BytesCodec;

impl tonic::codec::Codec for BytesCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Bytes;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;

    fn encoder(&mut self) -> Self::Encoder {
        BytesCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesCodec
    }
}

impl tonic::codec::Encoder for BytesCodec {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn encode(
        &mut self,
        item: Self::Item,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding the answer: {e}")))
    }
}

impl tonic::codec::Decoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining())))
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
        TRACES_PATH => Some(Signal::Traces),
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
    if let Some(refused) = core.refuse_early(Receiver::Grpc, signal) {
        core.stats
            .request(Receiver::Grpc, signal, code_label(Code::Unavailable));
        return unavailable(refused).into_http::<Body>();
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

//! OTLP/HTTP: `POST /v1/traces`, `/v1/metrics`, `/v1/logs` with `application/x-protobuf` or
//! `application/json` bodies (JSON as the OTLP spec encodes it: hex ids, integer enums),
//! optionally `Content-Encoding: gzip`. Answers in the request's content type: an empty
//! `Export*ServiceResponse` on success, a `google.rpc.Status` on failure.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use super::limits::{self, BodyError};
use super::{Core, Reason, Receiver, Rejected};
use crate::pipeline::{Payload, Refused, Signal};

/// Bodies up to this size are decoded on the async runtime; larger ones on the blocking pool.
const INLINE_DECODE_BYTES: usize = 64 << 10;

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

/// `google.rpc.Status`, the error body of OTLP/HTTP (details are never sent).
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub(crate) struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Protobuf,
    Json,
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Format::Protobuf => PROTOBUF,
            Format::Json => JSON,
        }
    }
}

pub(crate) fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route(
            "/v1/traces",
            post(|State(c): State<Arc<Core>>, r: Request| handle(c, Signal::Traces, r)),
        )
        .route(
            "/v1/metrics",
            post(|State(c): State<Arc<Core>>, r: Request| handle(c, Signal::Metrics, r)),
        )
        .route(
            "/v1/logs",
            post(|State(c): State<Arc<Core>>, r: Request| handle(c, Signal::Logs, r)),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(core)
}

/// A refusal: status, reason counted, message for the client.
pub(crate) struct Failure {
    status: StatusCode,
    reason: Reason,
    message: String,
}

impl Failure {
    fn new(status: StatusCode, reason: Reason, message: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
        }
    }
}

impl From<BodyError> for Failure {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge { .. } => Failure::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                Reason::TooLarge,
                e.to_string(),
            ),
            BodyError::Corrupt(_) | BodyError::Read(_) => {
                Failure::new(StatusCode::BAD_REQUEST, Reason::BadRequest, e.to_string())
            }
        }
    }
}

async fn handle(core: Arc<Core>, signal: Signal, req: Request) -> Response {
    // Answer in the request's format when it is one we speak; protobuf otherwise.
    let format = media_type(req.headers());
    let answer = format.ok().flatten().unwrap_or(Format::Protobuf);
    let response = match receive(&core, signal, format, req).await {
        Ok(()) => {
            let body = match answer {
                Format::Protobuf => Bytes::new(),
                Format::Json => Bytes::from_static(b"{}"),
            };
            ([(header::CONTENT_TYPE, answer.content_type())], body).into_response()
        }
        Err(f) => {
            if f.reason != Reason::Full && f.reason != Reason::Closed {
                // Full and closed are counted by the intake offer.
                core.stats.refused(Receiver::Http, signal, f.reason);
            }
            failure_response(&core, answer, f)
        }
    };
    core.stats
        .request(Receiver::Http, signal, status_label(response.status()));
    response
}

/// `Ok(Some(format))`, `Ok(None)` without a content type, `Err(())` for an unsupported one.
fn media_type(headers: &HeaderMap) -> Result<Option<Format>, ()> {
    let Some(v) = headers.get(header::CONTENT_TYPE) else {
        return Ok(None);
    };
    let v = v.to_str().map_err(|_| ())?;
    let essence = v.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case(PROTOBUF) {
        Ok(Some(Format::Protobuf))
    } else if essence.eq_ignore_ascii_case(JSON) {
        Ok(Some(Format::Json))
    } else {
        Err(())
    }
}

async fn receive(
    core: &Core,
    signal: Signal,
    format: Result<Option<Format>, ()>,
    req: Request,
) -> Result<(), Failure> {
    if !core.tokens.allows(req.headers().get(header::AUTHORIZATION)) {
        return Err(Failure::new(
            StatusCode::UNAUTHORIZED,
            Reason::Unauthenticated,
            "missing or wrong bearer token",
        ));
    }
    let format = match format {
        Ok(Some(f)) => f,
        Ok(None) | Err(()) => {
            return Err(Failure::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Reason::UnsupportedMediaType,
                format!("Content-Type must be {PROTOBUF} or {JSON}"),
            ));
        }
    };
    let gzip = match req
        .headers()
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("" | "identity") => false,
        Some("gzip" | "x-gzip") => true,
        Some(other) => {
            return Err(Failure::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Reason::UnsupportedEncoding,
                format!("Content-Encoding {other:?} is not supported (gzip or none)"),
            ));
        }
    };
    let limit = core.max_request_bytes();
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit, inflated: 0 }.into());
    }
    // A full pipeline refuses before the body is decompressed or decoded (the sender retries).
    if let Some(refused) = core.refuse_early(Receiver::Http, signal) {
        if req.version() < axum::http::Version::HTTP_2 {
            // HTTP/1: read the body (up to the limit) so that the answer is not lost to a reset
            // of a connection closed with unread data.
            let _ = limits::read_capped(req.into_body(), limit).await;
        }
        return Err(refusal(refused));
    }
    let raw = limits::read_capped(req.into_body(), limit).await;
    if let Ok(raw) = &raw {
        core.stats
            .bytes_counter(Receiver::Http, signal)
            .inc_by(raw.len() as u64);
    }
    let raw = raw?;
    let decoded = if raw.len() <= INLINE_DECODE_BYTES {
        decode(signal, format, gzip, raw, limit)?
    } else {
        tokio::task::spawn_blocking(move || decode(signal, format, gzip, raw, limit))
            .await
            .map_err(|_| {
                Failure::new(
                    StatusCode::BAD_REQUEST,
                    Reason::BadRequest,
                    "decoding failed",
                )
            })??
    };
    match decoded {
        Decoded::Payload(payload) => core
            .accept(Receiver::Http, payload)
            .map(drop)
            .map_err(refusal),
        Decoded::Traces(bytes) => core
            .accept_encoded_traces(Receiver::Http, bytes)
            .map(drop)
            .map_err(|r| match r {
                Rejected::Invalid(e) => {
                    Failure::new(StatusCode::BAD_REQUEST, Reason::BadRequest, e.to_string())
                }
                Rejected::Refused(r) => refusal(r),
            }),
    }
}

/// 503 for a full or closing pipeline (counted by the core).
fn refusal(r: Refused) -> Failure {
    let (reason, message) = match r {
        Refused::Full(s) => (Reason::Full, format!("the {s} queue is full; retry later")),
        Refused::Closed(_) => (
            Reason::Closed,
            "the agent is stopping; retry later".to_owned(),
        ),
    };
    Failure::new(StatusCode::SERVICE_UNAVAILABLE, reason, message)
}

/// A body made ready for the core: decoded messages, or protobuf traces as bytes (checked and
/// read by [`Core::accept_encoded_traces`]).
pub(crate) enum Decoded {
    Payload(Payload),
    Traces(Bytes),
}

impl Decoded {
    /// The payload as the receivers pass it on: a protobuf traces body once `wire::traces`
    /// accepted it (as [`Core::accept_encoded_traces`](super::Core) checks it).
    pub(crate) fn into_payload(self) -> Result<Payload, String> {
        match self {
            Decoded::Payload(p) => Ok(p),
            Decoded::Traces(bytes) => crate::pipeline::EncodedRequest::traces(bytes)
                .map(Payload::Encoded)
                .map_err(|e| e.to_string()),
        }
    }
}

/// Inflates (when `gzip`, capped at `limit`) and decodes a body, as both request paths do;
/// also the body of the `otlp_protobuf` / `otlp_json` fuzz targets (`crate::fuzzing`).
pub(crate) fn decode(
    signal: Signal,
    format: Format,
    gzip: bool,
    raw: Bytes,
    limit: usize,
) -> Result<Decoded, Failure> {
    let bytes = if gzip {
        Bytes::from(limits::gunzip_capped(&raw, limit)?)
    } else {
        raw
    };
    if (signal, format) == (Signal::Traces, Format::Protobuf) {
        return Ok(Decoded::Traces(bytes));
    }
    decode_payload(signal, format, &bytes)
        .map(Decoded::Payload)
        .map_err(|m| Failure::new(StatusCode::BAD_REQUEST, Reason::BadRequest, m))
}

fn decode_payload(signal: Signal, format: Format, bytes: &[u8]) -> Result<Payload, String> {
    fn pb<M: Message + Default>(b: &[u8]) -> Result<M, String> {
        M::decode(b).map_err(|e| format!("invalid protobuf: {e}"))
    }
    fn json<M: serde::de::DeserializeOwned>(b: &[u8]) -> Result<M, String> {
        serde_json::from_slice(b).map_err(|e| format!("invalid OTLP JSON: {e}"))
    }
    Ok(match (signal, format) {
        (Signal::Traces, Format::Protobuf) => {
            Payload::Traces(pb::<ExportTraceServiceRequest>(bytes)?)
        }
        (Signal::Traces, Format::Json) => {
            Payload::Traces(json::<ExportTraceServiceRequest>(bytes)?)
        }
        (Signal::Metrics, Format::Protobuf) => {
            Payload::Metrics(pb::<ExportMetricsServiceRequest>(bytes)?)
        }
        (Signal::Metrics, Format::Json) => {
            Payload::Metrics(json::<ExportMetricsServiceRequest>(bytes)?)
        }
        (Signal::Logs, Format::Protobuf) => Payload::Logs(pb::<ExportLogsServiceRequest>(bytes)?),
        (Signal::Logs, Format::Json) => Payload::Logs(json::<ExportLogsServiceRequest>(bytes)?),
    })
}

fn failure_response(core: &Core, format: Format, f: Failure) -> Response {
    // The gRPC code that matches the HTTP status, as google.rpc.Status carries one.
    let code = match f.status {
        StatusCode::BAD_REQUEST => 3,             // INVALID_ARGUMENT
        StatusCode::UNAUTHORIZED => 16,           // UNAUTHENTICATED
        StatusCode::PAYLOAD_TOO_LARGE => 8,       // RESOURCE_EXHAUSTED
        StatusCode::SERVICE_UNAVAILABLE => 14,    // UNAVAILABLE
        StatusCode::UNSUPPORTED_MEDIA_TYPE => 12, // UNIMPLEMENTED
        _ => 2,                                   // UNKNOWN
    };
    let status = RpcStatus {
        code,
        message: f.message,
    };
    let body = match format {
        Format::Protobuf => Body::from(status.encode_to_vec()),
        Format::Json => Body::from(serde_json::to_vec(&status).unwrap_or_default()),
    };
    let mut response = (f.status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    match f.status {
        StatusCode::UNAUTHORIZED => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(core.retry_after_secs()),
            );
        }
        _ => {}
    }
    response
}

fn status_label(s: StatusCode) -> &'static str {
    match s.as_u16() {
        200 => "200",
        400 => "400",
        401 => "401",
        404 => "404",
        405 => "405",
        413 => "413",
        415 => "415",
        503 => "503",
        _ => "other",
    }
}

//! The OTLP exporter: one consumer per signal queue that batches envelopes, sends them over
//! gRPC (the generated tonic clients, gzip) or HTTP/protobuf (`POST {endpoint}/v1/{signal}`),
//! retries retryable failures with backoff, and — with a disk spill — moves what it cannot send
//! now to disk, replaying it in order when the endpoint answers again.
//!
//! Shutdown has two steps ([`Shutdown`]): `closing` (the queues are closed; the consumer drains
//! what is queued — into the spill when there is one — and stops retrying spill records) and
//! `abandon` (the flush deadline: whatever is still in flight is spilled or left un-acknowledged
//! and counted with `reason="shutdown"`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flate2::Compression as GzLevel;
use flate2::write::GzEncoder;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, TE};
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tower::ServiceExt;

use super::ExportStats;
use super::batch::{Batch, BatchLimits, Batcher};
use super::retry::{
    Backoff, Outcome, RetryPolicy, classify_grpc, classify_http, classify_no_answer,
    parse_retry_after,
};
use super::spill::Spill;
use crate::http_client::tls::{ClientTls, TlsConnector};
use crate::http_client::{ClientOptions, HttpClient};
use crate::pipeline::{Payload, Queue, Receipt, Signal};

const EXPORTER: &str = "otlp";
/// The largest response body read from an OTLP/HTTP endpoint.
const MAX_RESPONSE: usize = 4 << 20;
/// The largest gRPC response message read (OTLP answers are a few bytes).
const MAX_GRPC_RESPONSE: usize = 4 << 20;

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    Http,
}

/// Request compression, done once per batch by the exporter (not by tonic, whose gzip level is
/// fixed at 6: at that level gzip alone caps a core below the ingest goal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// None.
    None,
    /// gzip at this level (0–9).
    Gzip(u32),
    /// zstd at this level (1–22; gRPC only: OTLP/HTTP specifies gzip).
    Zstd(i32),
}

impl Compression {
    /// The default gzip level: flate2's fastest, far cheaper than level 6 on OTLP spans for a
    /// few per cent more bytes (BENCHMARKS.md).
    pub const GZIP_DEFAULT_LEVEL: u32 = 1;
    /// The default zstd level: zstd's fastest standard level.
    pub const ZSTD_DEFAULT_LEVEL: i32 = 1;

    /// The `grpc-encoding` / `Content-Encoding` name.
    pub fn name(self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            Compression::Gzip(_) => Some("gzip"),
            Compression::Zstd(_) => Some("zstd"),
        }
    }
}

/// Where and how to send.
#[derive(Clone)]
pub struct ClientSettings {
    /// `http://host:port` (gRPC) or the base URL the `/v1/{signal}` paths are appended to (HTTP).
    pub endpoint: String,
    /// gRPC or HTTP.
    pub protocol: Protocol,
    /// Extra request headers (gRPC metadata).
    pub headers: Vec<(String, String)>,
    /// Sent as `Authorization: Bearer ...`.
    pub bearer_token: Option<String>,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Request compression.
    pub compression: Compression,
    /// TLS settings (roots, client certificate); an `https://` endpoint without them uses the
    /// system roots.
    pub tls: Option<Arc<ClientTls>>,
}

impl std::fmt::Debug for ClientSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSettings")
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "[redacted]"),
            )
            .field("timeout", &self.timeout)
            .field("compression", &self.compression)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint is not a usable URI.
    #[error("endpoint {endpoint:?}: {reason}")]
    Endpoint {
        /// The endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// A header name or value cannot be sent.
    #[error("header {0:?} is not a valid header")]
    Header(String),
    /// TLS could not be set up.
    #[error("tls: {0}")]
    Tls(#[from] crate::http_client::tls::TlsError),
}

enum Transport {
    Grpc {
        channel: Channel,
        /// `te`, `content-type`, `grpc-timeout`, `grpc-encoding` and the configured headers.
        headers: HeaderMap,
    },
    Http {
        client: HttpClient,
        /// `{endpoint}/v1/traces`, `.../metrics`, `.../logs`, in [`Signal`] order.
        uris: Box<[http::Uri; 3]>,
        /// `content-type`, `content-encoding` and the configured headers.
        headers: HeaderMap,
    },
}

/// An OTLP client for all three signals.
pub struct OtlpClient {
    transport: Transport,
    timeout: Duration,
    compression: Compression,
    endpoint: String,
}

impl std::fmt::Debug for OtlpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpClient")
            .field("timeout", &self.timeout)
            .field("compression", &self.compression)
            .finish_non_exhaustive()
    }
}

/// A request encoded and compressed once, sent as it is on every attempt (cheap to clone).
#[derive(Debug, Clone)]
pub struct Encoded {
    signal: Signal,
    /// gRPC: the length-prefixed message; HTTP: the body.
    body: Bytes,
}

impl Encoded {
    /// Bytes on the wire (compressed), for tests and benchmarks.
    pub fn len(&self) -> usize {
        self.body.len()
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }
}

fn grpc_path(signal: Signal) -> &'static str {
    match signal {
        Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        Signal::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    }
}

/// Encodes `payload` into `out` after `out`'s current contents, compressed.
pub fn encode_compressed(payload: &Payload, compression: Compression, out: &mut Vec<u8>) {
    use std::io::Write;
    // A payload kept encoded is compressed from its bytes, without a copy.
    let owned;
    let raw: &[u8] = match (compression, payload.as_encoded()) {
        (Compression::None, _) => {
            payload.encode_into(out);
            return;
        }
        (_, Some(bytes)) => bytes,
        (_, None) => {
            owned = payload.encode_to_vec();
            &owned
        }
    };
    match compression {
        Compression::None => {}
        Compression::Gzip(level) => {
            let mut enc = GzEncoder::new(std::mem::take(out), GzLevel::new(level.min(9)));
            // Writing into a Vec cannot fail.
            let _ = enc.write_all(raw);
            *out = enc.finish().unwrap_or_default();
        }
        Compression::Zstd(level) => {
            let start = out.len();
            match zstd::stream::Encoder::new(std::mem::take(out), level).and_then(|mut e| {
                e.write_all(raw)?;
                e.finish()
            }) {
                Ok(v) => *out = v,
                // Only a bad level fails: send uncompressed rather than nothing (unreachable
                // with a validated level).
                Err(_) => {
                    out.truncate(start);
                    out.extend_from_slice(raw);
                }
            }
        }
    }
}

/// A configured header as it goes on the wire (names lower-cased).
fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), ClientError> {
    let key = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| ClientError::Header(name.to_owned()))?;
    let value = HeaderValue::from_str(value).map_err(|_| ClientError::Header(name.to_owned()))?;
    Ok((key, value))
}

impl OtlpClient {
    /// Builds the client; a gRPC channel connects lazily (call inside a Tokio runtime).
    pub fn new(s: &ClientSettings) -> Result<Self, ClientError> {
        let mut extra = s.headers.clone();
        if let Some(t) = &s.bearer_token {
            extra.push(("authorization".into(), format!("Bearer {t}")));
        }
        let https = s.endpoint.starts_with("https://");
        let tls = match (&s.tls, https) {
            (_, false) => None,
            (Some(t), true) => Some(t.clone()),
            (None, true) => Some(Arc::new(ClientTls::load(&Default::default())?)),
        };
        let bad_endpoint = |reason: String| ClientError::Endpoint {
            endpoint: s.endpoint.clone(),
            reason,
        };
        let transport = match s.protocol {
            Protocol::Grpc => {
                let mut headers = HeaderMap::new();
                headers.insert(TE, HeaderValue::from_static("trailers"));
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
                let millis = s.timeout.as_millis().clamp(1, 99_999_999);
                headers.insert(
                    "grpc-timeout",
                    HeaderValue::from_str(&format!("{millis}m"))
                        .map_err(|_| ClientError::Header("grpc-timeout".into()))?,
                );
                if let Some(name) = s.compression.name() {
                    headers.insert("grpc-encoding", HeaderValue::from_static(name));
                }
                for (k, v) in &extra {
                    let (key, value) = header(k, v)?;
                    headers.insert(key, value);
                }
                let channel = match tls {
                    None => Endpoint::from_shared(s.endpoint.clone())
                        .map_err(|e| bad_endpoint(e.to_string()))?
                        .connect_timeout(s.timeout)
                        .timeout(s.timeout)
                        .tcp_nodelay(true)
                        .connect_lazy(),
                    Some(tls) => {
                        // tonic dials `http://host:port` through our TLS connector, and sends
                        // `:scheme https` from the origin.
                        let origin: http::Uri = s
                            .endpoint
                            .parse()
                            .map_err(|e: http::uri::InvalidUri| bad_endpoint(e.to_string()))?;
                        let host = origin
                            .host()
                            .ok_or_else(|| bad_endpoint("no host".into()))?
                            .to_owned();
                        let port = origin.port_u16().unwrap_or(443);
                        let connector = TlsConnector::new(&tls, &host, port)?;
                        let dial = if host.contains(':') && !host.starts_with('[') {
                            format!("http://[{host}]:{port}")
                        } else {
                            format!("http://{host}:{port}")
                        };
                        Endpoint::from_shared(dial)
                            .map_err(|e| bad_endpoint(e.to_string()))?
                            .origin(origin)
                            .connect_timeout(s.timeout)
                            .timeout(s.timeout)
                            .connect_with_connector_lazy(connector)
                    }
                };
                Transport::Grpc { channel, headers }
            }
            Protocol::Http => {
                let client = HttpClient::new(&ClientOptions {
                    tls,
                    timeout: s.timeout,
                    max_response_bytes: MAX_RESPONSE,
                })?;
                let base = s.endpoint.trim_end_matches('/');
                let uri = |signal: Signal| -> Result<http::Uri, ClientError> {
                    let text = format!("{base}/v1/{}", signal.as_str());
                    let uri: http::Uri = text
                        .parse()
                        .map_err(|e: http::uri::InvalidUri| bad_endpoint(e.to_string()))?;
                    if uri.host().is_none() || !matches!(uri.scheme_str(), Some("http" | "https")) {
                        return Err(bad_endpoint("not an http:// or https:// URL".into()));
                    }
                    Ok(uri)
                };
                let mut headers = HeaderMap::new();
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/x-protobuf"),
                );
                if let Some(name) = s.compression.name() {
                    headers.insert(
                        http::header::CONTENT_ENCODING,
                        HeaderValue::from_static(name),
                    );
                }
                for (k, v) in &extra {
                    let (key, value) = header(k, v)?;
                    headers.append(key, value);
                }
                Transport::Http {
                    client,
                    uris: Box::new([
                        uri(Signal::Traces)?,
                        uri(Signal::Metrics)?,
                        uri(Signal::Logs)?,
                    ]),
                    headers,
                }
            }
        };
        Ok(Self {
            transport,
            timeout: s.timeout,
            compression: s.compression,
            endpoint: s.endpoint.clone(),
        })
    }

    /// Encodes and compresses `payload` once for every attempt to send it.
    pub fn prepare(&self, payload: &Payload) -> Encoded {
        let body = match &self.transport {
            Transport::Grpc { .. } => {
                let mut out = Vec::with_capacity(5 + payload.encoded_len() / 2);
                out.extend_from_slice(&[0; 5]);
                encode_compressed(payload, self.compression, &mut out);
                let len = u32::try_from(out.len() - 5).unwrap_or(u32::MAX);
                out[0] = u8::from(self.compression != Compression::None);
                out[1..5].copy_from_slice(&len.to_be_bytes());
                out
            }
            Transport::Http { .. } => {
                let mut out = Vec::new();
                encode_compressed(payload, self.compression, &mut out);
                out
            }
        };
        Encoded {
            signal: payload.signal(),
            body: body.into(),
        }
    }

    /// One attempt to send a prepared request.
    pub async fn export(&self, encoded: &Encoded) -> Outcome {
        match &self.transport {
            Transport::Grpc { channel, headers } => {
                let call = self.export_grpc(channel.clone(), headers, encoded);
                match tokio::time::timeout(self.timeout + Duration::from_secs(1), call).await {
                    Err(_) => Outcome::Retry {
                        reason: "deadline_exceeded",
                        after: None,
                        message: format!("no answer within {:?}", self.timeout),
                    },
                    Ok(outcome) => outcome,
                }
            }
            Transport::Http {
                client,
                uris,
                headers,
            } => self.export_http(client, uris, headers, encoded).await,
        }
    }

    /// One gRPC unary call with the prepared message, over tonic's channel (HTTP/2, reconnect)
    /// but without its codec: the message is framed and compressed already.
    async fn export_grpc(&self, channel: Channel, headers: &HeaderMap, enc: &Encoded) -> Outcome {
        let mut req = http::Request::new(tonic::body::Body::new(http_body_util::Full::new(
            enc.body.clone(),
        )));
        *req.method_mut() = http::Method::POST;
        *req.version_mut() = http::Version::HTTP_2;
        *req.uri_mut() = http::Uri::from_static(grpc_path(enc.signal));
        *req.headers_mut() = headers.clone();
        let resp = match channel.oneshot(req).await {
            Ok(r) => r,
            Err(e) => return self.connection_failure(&e),
        };
        let (parts, body) = resp.into_parts();
        // A trailers-only answer (an error, usually) carries grpc-status in the headers.
        if let Some(st) = tonic::Status::from_header_map(&parts.headers) {
            return grpc_outcome(&st, &[]);
        }
        if parts.status != http::StatusCode::OK {
            return classify_grpc(
                http_to_grpc(parts.status.as_u16()),
                None,
                format!("HTTP {} from a gRPC endpoint", parts.status),
            );
        }
        let collected = match body.collect().await {
            Ok(c) => c,
            Err(e) => return self.connection_failure(&e),
        };
        let status = collected
            .trailers()
            .and_then(tonic::Status::from_header_map);
        let data = collected.to_bytes();
        match status {
            Some(st) => grpc_outcome(&st, &data),
            None => classify_grpc(
                tonic::Code::Unknown,
                None,
                "the answer had no grpc-status".into(),
            ),
        }
    }

    /// A failure to connect or to complete the exchange: retried; TLS failures named as such.
    fn connection_failure(&self, e: &(dyn std::error::Error + 'static)) -> Outcome {
        let message = crate::http_client::error_chain(e);
        let tls = crate::http_client::is_tls_error(e);
        Outcome::Retry {
            reason: if tls { "tls" } else { "connection" },
            after: None,
            message: if tls {
                format!(
                    "TLS with {} failed: {message} (check export.otlp.tls)",
                    self.endpoint
                )
            } else {
                format!("{}: {message}", self.endpoint)
            },
        }
    }

    async fn export_http(
        &self,
        client: &HttpClient,
        uris: &[http::Uri; 3],
        headers: &HeaderMap,
        enc: &Encoded,
    ) -> Outcome {
        let uri = match enc.signal {
            Signal::Traces => &uris[0],
            Signal::Metrics => &uris[1],
            Signal::Logs => &uris[2],
        };
        let mut req = http::Request::new(enc.body.clone());
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = uri.clone();
        *req.headers_mut() = headers.clone();
        match client.send(req).await {
            Err(e) => classify_no_answer(&e, &self.endpoint, "export.otlp.tls"),
            Ok(resp) => {
                let status = resp.status.as_u16();
                let retry_after = resp
                    .header("retry-after")
                    .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
                // A body beyond the limit is not decoded (a cut protobuf message).
                let body: &[u8] = if resp.truncated { &[] } else { &resp.body };
                match classify_http(status, retry_after, String::new()) {
                    Outcome::Delivered { .. } => partial_from_http(enc.signal, body),
                    Outcome::Retry { reason, after, .. } => Outcome::Retry {
                        reason,
                        after,
                        message: http_message(status, body),
                    },
                    Outcome::Permanent { reason, .. } => Outcome::Permanent {
                        reason,
                        message: http_message(status, body),
                    },
                }
            }
        }
    }
}

/// gzip-compresses `data` at `level` (remote write's snappy aside, the exporters' gzip).
pub fn gzip_bytes(data: &[u8], level: u32) -> Vec<u8> {
    use std::io::Write;
    let mut enc = GzEncoder::new(
        Vec::with_capacity(data.len() / 4 + 64),
        GzLevel::new(level.min(9)),
    );
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

/// The outcome of a call that answered with a gRPC status (and, when OK, a response message).
fn grpc_outcome(st: &tonic::Status, message: &[u8]) -> Outcome {
    if st.code() != tonic::Code::Ok {
        return classify_grpc(st.code(), retry_info(st), st.message().to_owned());
    }
    // One length-prefixed message; we advertise no response compression, so flag 0.
    match message {
        [0, l0, l1, l2, l3, rest @ ..] => {
            let len = u32::from_be_bytes([*l0, *l1, *l2, *l3]) as usize;
            if len <= MAX_GRPC_RESPONSE
                && let Some(msg) = rest.get(..len)
            {
                return partial_from_grpc(msg);
            }
            delivered(0, "")
        }
        _ => delivered(0, ""),
    }
}

/// gRPC's mapping of HTTP statuses from a non-gRPC answer (gRPC-over-HTTP2 spec).
fn http_to_grpc(status: u16) -> tonic::Code {
    use tonic::Code as C;
    match status {
        400 => C::Internal,
        401 => C::Unauthenticated,
        403 => C::PermissionDenied,
        404 => C::Unimplemented,
        429 | 502 | 503 | 504 => C::Unavailable,
        _ => C::Unknown,
    }
}

/// The three responses share their layout (field 1: partial_success with the rejected count in
/// field 1 and the message in field 2), so one decoder serves them all.
fn partial_from_grpc(msg: &[u8]) -> Outcome {
    ExportTraceServiceResponse::decode(msg)
        .map(|r| partial_traces(&r))
        .unwrap_or(delivered(0, ""))
}

fn http_message(status: u16, body: &[u8]) -> String {
    // OTLP/HTTP errors carry a google.rpc.Status; fall back to the body's text.
    match RpcStatus::decode(body) {
        Ok(s) if !s.message.is_empty() => format!("HTTP {status}: {}", s.message),
        _ => {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
            format!("HTTP {status}: {}", text.trim())
        }
    }
}

fn delivered(rejected: i64, message: &str) -> Outcome {
    Outcome::Delivered {
        rejected: u64::try_from(rejected).unwrap_or(0),
        message: (!message.is_empty()).then(|| message.to_owned()),
    }
}

fn partial_traces(r: &ExportTraceServiceResponse) -> Outcome {
    r.partial_success.as_ref().map_or(delivered(0, ""), |p| {
        delivered(p.rejected_spans, &p.error_message)
    })
}

fn partial_metrics(r: &ExportMetricsServiceResponse) -> Outcome {
    r.partial_success.as_ref().map_or(delivered(0, ""), |p| {
        delivered(p.rejected_data_points, &p.error_message)
    })
}

fn partial_logs(r: &ExportLogsServiceResponse) -> Outcome {
    r.partial_success.as_ref().map_or(delivered(0, ""), |p| {
        delivered(p.rejected_log_records, &p.error_message)
    })
}

fn partial_from_http(signal: Signal, body: &[u8]) -> Outcome {
    match signal {
        Signal::Traces => ExportTraceServiceResponse::decode(body)
            .map(|r| partial_traces(&r))
            .unwrap_or(delivered(0, "")),
        Signal::Metrics => ExportMetricsServiceResponse::decode(body)
            .map(|r| partial_metrics(&r))
            .unwrap_or(delivered(0, "")),
        Signal::Logs => ExportLogsServiceResponse::decode(body)
            .map(|r| partial_logs(&r))
            .unwrap_or(delivered(0, "")),
    }
}

// google.rpc.Status and RetryInfo, the two messages needed to honour RESOURCE_EXHAUSTED with a
// retry delay (defined here rather than pulling in a crate of all the googleapis types).
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<ProtoAny>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

/// The RetryInfo delay in a status's details, if the server sent one.
fn retry_info(status: &tonic::Status) -> Option<Duration> {
    retry_info_from_details(status.details())
}

fn retry_info_from_details(details: &[u8]) -> Option<Duration> {
    if details.is_empty() {
        return None;
    }
    let s = RpcStatus::decode(details).ok()?;
    s.details
        .iter()
        .filter(|a| a.type_url.ends_with("google.rpc.RetryInfo"))
        .find_map(|a| {
            let d = RetryInfo::decode(&a.value[..]).ok()?.retry_delay?;
            Some(
                Duration::from_secs(u64::try_from(d.seconds).ok()?)
                    + Duration::from_nanos(u64::try_from(d.nanos).unwrap_or(0)),
            )
        })
}

// ---------------------------------------------------------------------------------------------
// The consumer.

/// The two steps of an exporter's shutdown (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Cancelled when the queues close: stop waiting on a failing endpoint where the data is
    /// safe elsewhere (spilled).
    pub closing: CancellationToken,
    /// Cancelled at the flush deadline: stop sending.
    pub abandon: CancellationToken,
}

/// One signal's exporter: its queue, where it sends, and how.
#[derive(Debug)]
pub struct SignalExporter {
    /// The signal.
    pub signal: Signal,
    /// Its queue (filled through the `Intake`).
    pub queue: Arc<Queue>,
    /// Where to send.
    pub client: Arc<OtlpClient>,
    /// Batch limits.
    pub batch: BatchLimits,
    /// Retry policy for batches in memory (spilled records are retried until shutdown).
    pub retry: RetryPolicy,
    /// The disk spill, if enabled (opened by the caller).
    pub spill: Option<Arc<Mutex<Spill>>>,
    /// Batches in flight at most without a spill (with one, batches go one at a time, so the
    /// spill replays in order).
    pub concurrency: usize,
    /// Self-metrics.
    pub stats: ExportStats,
}

enum Stop {
    Abandoned,
    Exhausted,
}

/// How long one batch is retried, and on which answers.
#[derive(Debug, Clone, Copy)]
struct Plan {
    policy: RetryPolicy,
    /// Someone keeps this data until it is delivered (a log tailer's checkpoint waits for the
    /// receipt, or it sits in the spill): retried without `max_elapsed`, and on every refusal
    /// but one that says the data is bad.
    kept: bool,
}

impl Plan {
    fn kept(policy: RetryPolicy) -> Self {
        Self {
            policy: RetryPolicy {
                max_elapsed: None,
                ..policy
            },
            kept: true,
        }
    }

    /// Received data nobody else keeps: the OTLP spec's classification, up to `max_elapsed`.
    fn dropped_after(policy: RetryPolicy) -> Self {
        Self {
            policy,
            kept: false,
        }
    }
}

impl SignalExporter {
    fn labels(&self) -> [(&'static str, &'static str); 2] {
        [("exporter", EXPORTER), ("signal", self.signal.as_str())]
    }

    /// Runs until the queue is closed and drained (or the flush deadline passes).
    pub async fn run(self, shutdown: Shutdown) {
        match self.spill.clone() {
            None => self.run_in_memory(shutdown).await,
            Some(spill) => self.run_spilling(spill, shutdown).await,
        }
    }

    /// Sends `payload` until it is delivered or permanently refused (`Ok`), or until retries
    /// end: the flush deadline (`Abandoned`), `max_elapsed`, or `give_up` once it is cancelled
    /// (`Exhausted`).
    async fn attempts(
        &self,
        payload: &Payload,
        items: u64,
        plan: Plan,
        shutdown: &Shutdown,
        give_up: Option<&CancellationToken>,
        logged: &Mutex<HashSet<&'static str>>,
    ) -> Result<(), Stop> {
        let mut backoff = Backoff::new(plan.policy);
        let signal = self.signal.as_str();
        // Encoded and compressed once: every retry sends the same bytes.
        let encoded = self.client.prepare(payload);
        loop {
            let in_flight = self
                .stats
                .in_flight
                .get_or_create(&[("exporter", EXPORTER)])
                .clone();
            in_flight.inc();
            let started = Instant::now();
            let outcome = tokio::select! {
                biased;
                _ = shutdown.abandon.cancelled() => None,
                o = self.client.export(&encoded) => Some(o),
            };
            in_flight.dec();
            self.stats
                .send_duration
                .get_or_create(&[("exporter", EXPORTER)])
                .observe(started.elapsed().as_secs_f64());
            let Some(outcome) = outcome else {
                return Err(Stop::Abandoned);
            };
            let outcome = if plan.kept {
                let kept = outcome.clone().for_kept_data();
                if let (Outcome::Permanent { reason, message }, Outcome::Retry { .. }) =
                    (&outcome, &kept)
                    && logged.lock().insert(reason)
                {
                    tracing::error!(signal, reason, error = %message, items,
                        "OTLP endpoint refused a request that holds kept data (tailed logs or the spill): retrying with backoff instead of dropping it (logged once per reason)");
                }
                kept
            } else {
                outcome
            };
            match outcome {
                Outcome::Delivered { rejected, message } => {
                    let rejected = rejected.min(items);
                    self.stats
                        .sent
                        .get_or_create(&self.labels())
                        .inc_by(items - rejected);
                    if rejected > 0 {
                        self.stats.fail(EXPORTER, signal, "rejected", rejected);
                        if logged.lock().insert("rejected") {
                            tracing::warn!(
                                signal,
                                rejected,
                                message = message.as_deref().unwrap_or(""),
                                "OTLP endpoint rejected part of a request (partial success; further rejections are only counted)"
                            );
                        }
                    }
                    if backoff.attempts() > 0 {
                        tracing::info!(
                            signal,
                            retries = backoff.attempts(),
                            "OTLP export recovered"
                        );
                    }
                    return Ok(());
                }
                Outcome::Permanent { reason, message } => {
                    self.stats.fail(EXPORTER, signal, reason, items);
                    if logged.lock().insert(reason) {
                        tracing::error!(signal, reason, error = %message, items,
                            "OTLP endpoint refused a request permanently: dropped (further refusals of this kind are only counted)");
                    }
                    return Ok(());
                }
                Outcome::Retry {
                    reason,
                    after,
                    message,
                } => {
                    self.stats.retried.get_or_create(&self.labels()).inc();
                    if backoff.attempts().is_multiple_of(10) {
                        tracing::warn!(signal, reason, error = %message, retries = backoff.attempts(),
                            "OTLP export failed; retrying");
                    }
                    if give_up.is_some_and(CancellationToken::is_cancelled) {
                        return Err(Stop::Exhausted);
                    }
                    let Some(delay) = backoff.next_delay(after) else {
                        return Err(Stop::Exhausted);
                    };
                    let never = CancellationToken::new();
                    let give_up_token = give_up.unwrap_or(&never);
                    tokio::select! {
                        biased;
                        _ = shutdown.abandon.cancelled() => return Err(Stop::Abandoned),
                        _ = give_up_token.cancelled() => return Err(Stop::Exhausted),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn run_in_memory(self, shutdown: Shutdown) {
        let mut batcher = Batcher::new(self.batch);
        let logged = Arc::new(Mutex::new(HashSet::new()));
        let signal = self.signal.as_str();
        let this = Arc::new(self);
        // Up to `concurrency` batches in flight: each task encodes, compresses and sends its
        // own (OTLP does not order requests), so a slow round trip does not stall the queue.
        let slots = Arc::new(tokio::sync::Semaphore::new(this.concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        // The batcher returns promptly once the queue is closed, which precedes `abandon`.
        while let Some(batch) = batcher.next(&this.queue).await {
            while tasks.try_join_next().is_some() {}
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let (this, shutdown, logged) = (this.clone(), shutdown.clone(), logged.clone());
            tasks.spawn(async move {
                let items = batch.items as u64;
                // Someone keeps this data until it is delivered (the log tailer: its checkpoint
                // waits for the receipt): retry until delivered or shutdown. Dropping it at
                // `max_elapsed` would lose it until a restart (and pin the checkpoint, so the
                // restart re-reads everything after it); waiting keeps the backpressure — the
                // queue fills and the tailer stops reading.
                // Such data is also retried on refusals that do not say the data is bad
                // (`Outcome::for_kept_data`).
                let plan = if batch.receipts.iter().any(Receipt::is_tracked) {
                    Plan::kept(this.retry)
                } else {
                    Plan::dropped_after(this.retry)
                };
                let result = this
                    .attempts(&batch.payload, items, plan, &shutdown, None, &logged)
                    .await;
                drop(slot);
                match result {
                    Ok(()) => batch.complete(),
                    Err(Stop::Exhausted) => {
                        this.stats
                            .fail(EXPORTER, signal, "retries_exhausted", items);
                        tracing::error!(
                            signal,
                            items,
                            "OTLP export retries exhausted (export.otlp.retry.max_elapsed): batch dropped"
                        );
                    }
                    Err(Stop::Abandoned) => {
                        this.stats.fail(EXPORTER, signal, "shutdown", items);
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let mut left = batcher.take_carry().map_or(0, |e| e.payload.items() as u64);
        while let Some(e) = this.queue.try_pop() {
            left += e.payload.items() as u64;
        }
        this.stats.fail(EXPORTER, signal, "shutdown", left);
        tracing::info!(
            signal,
            exporter = EXPORTER,
            unsent_items = left,
            "OTLP exporter stopped"
        );
    }

    fn publish_spill(&self, spill: &Spill) {
        let l = self.labels();
        self.stats
            .spill_bytes
            .get_or_create(&l)
            .set(i64::try_from(spill.bytes()).unwrap_or(i64::MAX));
        self.stats
            .spill_depth
            .get_or_create(&l)
            .set(i64::try_from(spill.len()).unwrap_or(i64::MAX));
    }

    /// Writes a batch to the spill and completes its receipts; hands it back if the write failed.
    async fn spill_batch(
        &self,
        spill: &Arc<Mutex<Spill>>,
        batch: Batch,
        logged: &Mutex<HashSet<&'static str>>,
    ) -> Result<(), Batch> {
        let bytes = batch.payload.encode_to_vec();
        let (envelopes, items) = (batch.envelopes as u32, batch.items as u32);
        let s = spill.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut s = s.lock();
            let r = s.append(&bytes, envelopes, items);
            (r, s.bytes(), s.len())
        })
        .await;
        match written {
            Ok((Ok(dropped), _, _)) => {
                self.publish_spill(&spill.lock());
                self.stats
                    .spilled
                    .get_or_create(&self.labels())
                    .inc_by(u64::from(items));
                if dropped.envelopes > 0 {
                    self.queue.count_dropped(dropped.envelopes);
                    if logged.lock().insert("spill_full") {
                        tracing::warn!(
                            signal = self.signal.as_str(),
                            dropped_envelopes = dropped.envelopes,
                            dropped_items = dropped.items,
                            "OTLP spill is full (export.otlp.spill.max_bytes): oldest records dropped (counted in sidelight_queue_dropped_total; further drops are only counted)"
                        );
                    }
                }
                if logged.lock().remove("spill_error") {
                    tracing::info!(
                        signal = self.signal.as_str(),
                        "the OTLP spill is writable again"
                    );
                }
                batch.complete();
                Ok(())
            }
            Ok((Err(e), _, _)) => {
                self.stats
                    .spill_write_errors
                    .get_or_create(&self.labels())
                    .inc();
                if logged.lock().insert("spill_error") {
                    tracing::error!(signal = self.signal.as_str(), error = %e,
                        "cannot write to the OTLP spill: keeping the batch in memory and retrying (counted in sidelight_exporter_spill_write_errors_total)");
                }
                Err(batch)
            }
            Err(e) => {
                tracing::error!(error = %e, "the spill write task failed");
                Err(batch)
            }
        }
    }

    async fn run_spilling(self, spill: Arc<Mutex<Spill>>, shutdown: Shutdown) {
        let (tx, mut rx) = mpsc::channel::<Batch>(1);
        let wake = Arc::new(Notify::new());
        let logged = Mutex::new(HashSet::new());
        let signal = self.signal.as_str();
        self.publish_spill(&spill.lock());

        let drain = async {
            let mut batcher = Batcher::new(self.batch);
            while let Some(batch) = batcher.next(&self.queue).await {
                let spill_empty = spill.lock().is_empty();
                let batch = if spill_empty {
                    match tx.try_send(batch) {
                        Ok(()) => continue,
                        Err(mpsc::error::TrySendError::Full(b))
                        | Err(mpsc::error::TrySendError::Closed(b)) => b,
                    }
                } else {
                    batch
                };
                let mut batch = batch;
                let mut backoff = Backoff::new(RetryPolicy {
                    max_elapsed: None,
                    ..self.retry
                });
                // Until the disk or the sender takes it. The disk failed (full): the sender may
                // be free to try the endpoint; if it is busy (replaying the spill to a failing
                // endpoint) the disk is tried again after a backoff, so the spill resumes once
                // space returns. Meanwhile the queue fills behind (backpressure).
                loop {
                    batch = match self.spill_batch(&spill, batch, &logged).await {
                        Ok(()) => break,
                        Err(b) => b,
                    };
                    batch = match tx.try_send(batch) {
                        Ok(()) => break,
                        Err(mpsc::error::TrySendError::Full(b)) => b,
                        Err(mpsc::error::TrySendError::Closed(b)) => {
                            self.stats
                                .fail(EXPORTER, signal, "shutdown", b.items as u64);
                            break;
                        }
                    };
                    let delay = backoff.next_delay(None).unwrap_or(self.retry.max);
                    tokio::select! {
                        biased;
                        _ = shutdown.abandon.cancelled() => {
                            self.stats
                                .fail(EXPORTER, signal, "shutdown", batch.items as u64);
                            break;
                        }
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                wake.notify_one();
            }
            drop(tx);
        };

        let send = async {
            let mut rx_open = true;
            let mut send_spilled = true;
            let log_set = Mutex::new(HashSet::new());
            loop {
                let direct = if rx_open {
                    match rx.try_recv() {
                        Ok(b) => Some(b),
                        Err(mpsc::error::TryRecvError::Empty) => None,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            rx_open = false;
                            None
                        }
                    }
                } else {
                    None
                };
                if let Some(batch) = direct {
                    if let Err(b) = self
                        .attempts_direct_or_spill(batch, &spill, &shutdown, &logged, &log_set)
                        .await
                    {
                        self.stats
                            .fail(EXPORTER, signal, "shutdown", b.items as u64);
                    }
                    continue;
                }
                if !rx_open || shutdown.abandon.is_cancelled() {
                    break;
                }
                let record = if send_spilled {
                    let s = spill.clone();
                    match tokio::task::spawn_blocking(move || s.lock().peek()).await {
                        Ok(Ok(r)) => r,
                        Ok(Err(e)) => {
                            tracing::error!(signal, error = %e, "cannot read the OTLP spill");
                            send_spilled = false;
                            None
                        }
                        Err(_) => None,
                    }
                } else {
                    None
                };
                if let Some(rec) = record {
                    let seq = rec.meta.seq;
                    let items = u64::from(rec.meta.items);
                    let sent = match decode(self.signal, &rec.payload) {
                        Some(payload) => self
                            .attempts(
                                &payload,
                                items,
                                Plan::kept(self.retry),
                                &shutdown,
                                Some(&shutdown.closing),
                                &log_set,
                            )
                            .await
                            .is_ok(),
                        None => {
                            tracing::error!(
                                signal,
                                "undecodable record in the OTLP spill: skipped"
                            );
                            self.stats.fail(EXPORTER, signal, "spill_corrupt", items);
                            true
                        }
                    };
                    if sent {
                        let s = spill.clone();
                        if let Ok(Err(e)) =
                            tokio::task::spawn_blocking(move || s.lock().ack(seq)).await
                        {
                            tracing::error!(signal, error = %e, "cannot advance the OTLP spill cursor");
                        }
                        self.publish_spill(&spill.lock());
                    } else {
                        // Closing with the endpoint failing: the record is safe on disk.
                        send_spilled = false;
                    }
                    continue;
                }
                tokio::select! {
                    b = rx.recv() => match b {
                        Some(b) => {
                            // Put it back in front: handled at the top of the loop.
                            if let Err(b) = self.attempts_direct_or_spill(b, &spill, &shutdown, &logged, &log_set).await {
                                self.stats.fail(EXPORTER, signal, "shutdown", b.items as u64);
                            }
                        }
                        None => rx_open = false,
                    },
                    _ = wake.notified(), if send_spilled => {}
                    _ = shutdown.abandon.cancelled() => break,
                }
            }
            // Whatever is still handed over goes to disk.
            rx.close();
            while let Some(b) = rx.recv().await {
                if let Err(b) = self.spill_batch(&spill, b, &logged).await {
                    self.stats
                        .fail(EXPORTER, signal, "shutdown", b.items as u64);
                }
            }
        };
        tokio::join!(drain, send);
        let left = spill.lock().len();
        tracing::info!(
            signal,
            exporter = EXPORTER,
            spilled_records = left,
            "OTLP exporter stopped"
        );
    }

    async fn attempts_direct_or_spill(
        &self,
        batch: Batch,
        spill: &Arc<Mutex<Spill>>,
        shutdown: &Shutdown,
        logged: &Mutex<HashSet<&'static str>>,
        log_set: &Mutex<HashSet<&'static str>>,
    ) -> Result<(), Batch> {
        // One attempt: on a retryable failure the batch goes to disk at once (its receipts
        // complete there) and is retried from the spill, so a failing endpoint never holds
        // data in memory. When the disk fails too (full), the batch is kept in memory and both
        // are tried again with backoff until one takes it: the queue behind it fills, so the
        // receivers refuse (retryable) and the tailers wait — nothing accepted is dropped.
        // Only the flush deadline hands it back.
        let items = batch.items as u64;
        let now = CancellationToken::new();
        now.cancel();
        let mut backoff = Backoff::new(RetryPolicy {
            max_elapsed: None,
            ..self.retry
        });
        let mut batch = batch;
        loop {
            match self
                .attempts(
                    &batch.payload,
                    items,
                    if batch.receipts.iter().any(Receipt::is_tracked) {
                        Plan::kept(self.retry)
                    } else {
                        Plan::dropped_after(self.retry)
                    },
                    shutdown,
                    Some(&now),
                    log_set,
                )
                .await
            {
                Ok(()) => {
                    batch.complete();
                    return Ok(());
                }
                Err(Stop::Abandoned) => return Err(batch),
                Err(Stop::Exhausted) => match self.spill_batch(spill, batch, logged).await {
                    Ok(()) => return Ok(()),
                    Err(b) => batch = b,
                },
            }
            let delay = backoff.next_delay(None).unwrap_or(self.retry.max);
            tokio::select! {
                biased;
                _ = shutdown.abandon.cancelled() => return Err(batch),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// Decodes a spilled record of `signal`.
pub fn decode(signal: Signal, bytes: &[u8]) -> Option<Payload> {
    match signal {
        Signal::Traces => ExportTraceServiceRequest::decode(bytes)
            .ok()
            .map(Payload::Traces),
        Signal::Metrics => ExportMetricsServiceRequest::decode(bytes)
            .ok()
            .map(Payload::Metrics),
        Signal::Logs => ExportLogsServiceRequest::decode(bytes)
            .ok()
            .map(Payload::Logs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_info_is_found_in_status_details() {
        let info = RetryInfo {
            retry_delay: Some(ProtoDuration {
                seconds: 2,
                nanos: 500_000_000,
            }),
        };
        let status = RpcStatus {
            code: 8,
            message: "slow down".into(),
            details: vec![
                ProtoAny {
                    type_url: "type.googleapis.com/google.rpc.DebugInfo".into(),
                    value: vec![1, 2, 3],
                },
                ProtoAny {
                    type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
                    value: info.encode_to_vec(),
                },
            ],
        };
        assert_eq!(
            retry_info_from_details(&status.encode_to_vec()),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(retry_info_from_details(&[]), None);
        let st = tonic::Status::with_details(
            tonic::Code::ResourceExhausted,
            "busy",
            status.encode_to_vec().into(),
        );
        assert_eq!(retry_info(&st), Some(Duration::from_millis(2500)));
    }

    #[test]
    fn partial_success_counts_rejected_items() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;
        let r = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 3,
                error_message: "too old".into(),
            }),
        };
        assert_eq!(
            partial_from_http(Signal::Traces, &r.encode_to_vec()),
            Outcome::Delivered {
                rejected: 3,
                message: Some("too old".into())
            }
        );
        assert_eq!(
            partial_from_http(Signal::Logs, b""),
            Outcome::Delivered {
                rejected: 0,
                message: None
            }
        );
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read;
        let data = b"hello hello hello hello".repeat(100);
        let z = gzip_bytes(&data, 1);
        assert!(z.len() < data.len());
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&z[..])
            .read_to_end(&mut out)
            .expect("gunzip");
        assert_eq!(out, data);
    }
}

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

use flate2::Compression as GzLevel;
use flate2::write::GzEncoder;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use super::ExportStats;
use super::batch::{Batch, BatchLimits, Batcher};
use super::retry::{
    Backoff, Outcome, RetryPolicy, classify_grpc, classify_http, parse_retry_after,
};
use super::spill::Spill;
use crate::pipeline::{Payload, Queue, Signal};

const EXPORTER: &str = "otlp";
/// The largest response body read from an OTLP/HTTP endpoint.
const MAX_RESPONSE: u64 = 4 << 20;
/// The largest request the gRPC client encodes (batches are bounded well below this).
const MAX_GRPC_MESSAGE: usize = 64 << 20;

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    Http,
}

/// Request compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// None.
    None,
    /// gzip.
    Gzip,
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
}

enum Transport {
    Grpc {
        channel: Channel,
        metadata: MetadataMap,
    },
    Http {
        agent: ureq::Agent,
        base: String,
        headers: Vec<(String, String)>,
    },
}

/// An OTLP client for all three signals.
pub struct OtlpClient {
    transport: Transport,
    timeout: Duration,
    gzip: bool,
}

impl std::fmt::Debug for OtlpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpClient")
            .field("timeout", &self.timeout)
            .field("gzip", &self.gzip)
            .finish_non_exhaustive()
    }
}

impl OtlpClient {
    /// Builds the client; a gRPC channel connects lazily (call inside a Tokio runtime).
    pub fn new(s: &ClientSettings) -> Result<Self, ClientError> {
        let mut headers = s.headers.clone();
        if let Some(t) = &s.bearer_token {
            headers.push(("authorization".into(), format!("Bearer {t}")));
        }
        let transport = match s.protocol {
            Protocol::Grpc => {
                let endpoint = Endpoint::from_shared(s.endpoint.clone())
                    .map_err(|e| ClientError::Endpoint {
                        endpoint: s.endpoint.clone(),
                        reason: e.to_string(),
                    })?
                    .connect_timeout(s.timeout)
                    .timeout(s.timeout)
                    .tcp_nodelay(true);
                let mut metadata = MetadataMap::new();
                for (k, v) in &headers {
                    let key = MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                        .map_err(|_| ClientError::Header(k.clone()))?;
                    let value: MetadataValue<_> =
                        v.parse().map_err(|_| ClientError::Header(k.clone()))?;
                    metadata.insert(key, value);
                }
                Transport::Grpc {
                    channel: endpoint.connect_lazy(),
                    metadata,
                }
            }
            Protocol::Http => {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(s.timeout))
                    .build()
                    .into();
                Transport::Http {
                    agent,
                    base: s.endpoint.trim_end_matches('/').to_owned(),
                    headers,
                }
            }
        };
        Ok(Self {
            transport,
            timeout: s.timeout,
            gzip: s.compression == Compression::Gzip,
        })
    }

    /// One attempt to send `payload`.
    pub async fn export(&self, payload: &Payload) -> Outcome {
        match &self.transport {
            Transport::Grpc { channel, metadata } => {
                self.export_grpc(channel.clone(), metadata, payload).await
            }
            Transport::Http {
                agent,
                base,
                headers,
            } => self.export_http(agent, base, headers, payload).await,
        }
    }

    async fn export_grpc(
        &self,
        channel: Channel,
        metadata: &MetadataMap,
        payload: &Payload,
    ) -> Outcome {
        fn request<T>(msg: T, metadata: &MetadataMap, timeout: Duration) -> tonic::Request<T> {
            let mut req = tonic::Request::new(msg);
            *req.metadata_mut() = metadata.clone();
            req.set_timeout(timeout);
            req
        }
        let enc = if self.gzip {
            Some(CompressionEncoding::Gzip)
        } else {
            None
        };
        let call = async {
            match payload {
                Payload::Traces(r) => {
                    let mut c = TraceServiceClient::new(channel)
                        .accept_compressed(CompressionEncoding::Gzip)
                        .max_encoding_message_size(MAX_GRPC_MESSAGE);
                    if let Some(e) = enc {
                        c = c.send_compressed(e);
                    }
                    c.export(request(r.clone(), metadata, self.timeout))
                        .await
                        .map(|resp| partial_traces(&resp.into_inner()))
                }
                Payload::Metrics(r) => {
                    let mut c = MetricsServiceClient::new(channel)
                        .accept_compressed(CompressionEncoding::Gzip)
                        .max_encoding_message_size(MAX_GRPC_MESSAGE);
                    if let Some(e) = enc {
                        c = c.send_compressed(e);
                    }
                    c.export(request(r.clone(), metadata, self.timeout))
                        .await
                        .map(|resp| partial_metrics(&resp.into_inner()))
                }
                Payload::Logs(r) => {
                    let mut c = LogsServiceClient::new(channel)
                        .accept_compressed(CompressionEncoding::Gzip)
                        .max_encoding_message_size(MAX_GRPC_MESSAGE);
                    if let Some(e) = enc {
                        c = c.send_compressed(e);
                    }
                    c.export(request(r.clone(), metadata, self.timeout))
                        .await
                        .map(|resp| partial_logs(&resp.into_inner()))
                }
            }
        };
        match tokio::time::timeout(self.timeout + Duration::from_secs(1), call).await {
            Err(_) => Outcome::Retry {
                reason: "deadline_exceeded",
                after: None,
                message: format!("no answer within {:?}", self.timeout),
            },
            Ok(Ok(outcome)) => outcome,
            Ok(Err(status)) => {
                let hint = retry_info(&status);
                classify_grpc(status.code(), hint, status.message().to_owned())
            }
        }
    }

    async fn export_http(
        &self,
        agent: &ureq::Agent,
        base: &str,
        headers: &[(String, String)],
        payload: &Payload,
    ) -> Outcome {
        let url = format!("{base}/v1/{}", payload.signal().as_str());
        let signal = payload.signal();
        let body = payload.encode_to_vec();
        let agent = agent.clone();
        let headers = headers.to_vec();
        let gzip = self.gzip;
        let joined = tokio::task::spawn_blocking(move || {
            let body = if gzip { gzip_bytes(&body) } else { body };
            let mut req = agent
                .post(&url)
                .header("Content-Type", "application/x-protobuf");
            if gzip {
                req = req.header("Content-Encoding", "gzip");
            }
            for (k, v) in &headers {
                req = req.header(k.as_str(), v.as_str());
            }
            match req.send(&body[..]) {
                Err(e) => Outcome::Retry {
                    reason: "connection",
                    after: None,
                    message: e.to_string(),
                },
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
                    let body = resp
                        .body_mut()
                        .with_config()
                        .limit(MAX_RESPONSE)
                        .read_to_vec()
                        .unwrap_or_default();
                    match classify_http(status, retry_after, String::new()) {
                        Outcome::Delivered { .. } => partial_from_http(signal, &body),
                        Outcome::Retry { reason, after, .. } => Outcome::Retry {
                            reason,
                            after,
                            message: http_message(status, &body),
                        },
                        Outcome::Permanent { reason, .. } => Outcome::Permanent {
                            reason,
                            message: http_message(status, &body),
                        },
                    }
                }
            }
        })
        .await;
        joined.unwrap_or_else(|e| Outcome::Retry {
            reason: "connection",
            after: None,
            message: format!("send task failed: {e}"),
        })
    }
}

/// gzip-compresses `data` (the default level, what OTel SDKs use).
pub fn gzip_bytes(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = GzEncoder::new(Vec::with_capacity(data.len() / 4 + 64), GzLevel::default());
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
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
    /// Self-metrics.
    pub stats: ExportStats,
}

enum Stop {
    Abandoned,
    Exhausted,
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
        policy: RetryPolicy,
        shutdown: &Shutdown,
        give_up: Option<&CancellationToken>,
        logged: &mut HashSet<&'static str>,
    ) -> Result<(), Stop> {
        let mut backoff = Backoff::new(policy);
        let signal = self.signal.as_str();
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
                o = self.client.export(payload) => Some(o),
            };
            in_flight.dec();
            self.stats
                .send_duration
                .get_or_create(&[("exporter", EXPORTER)])
                .observe(started.elapsed().as_secs_f64());
            let Some(outcome) = outcome else {
                return Err(Stop::Abandoned);
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
                        if logged.insert("rejected") {
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
                    if logged.insert(reason) {
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
        let mut logged = HashSet::new();
        let signal = self.signal.as_str();
        // The batcher returns promptly once the queue is closed, which precedes `abandon`.
        while let Some(batch) = batcher.next(&self.queue).await {
            let items = batch.items as u64;
            match self
                .attempts(
                    &batch.payload,
                    items,
                    self.retry,
                    &shutdown,
                    None,
                    &mut logged,
                )
                .await
            {
                Ok(()) => batch.complete(),
                Err(Stop::Exhausted) => {
                    self.stats
                        .fail(EXPORTER, signal, "retries_exhausted", items);
                    tracing::error!(
                        signal,
                        items,
                        "OTLP export retries exhausted (export.otlp.retry.max_elapsed): batch dropped (log records are re-read after a restart)"
                    );
                    drop(batch);
                }
                Err(Stop::Abandoned) => {
                    self.stats.fail(EXPORTER, signal, "shutdown", items);
                    drop(batch);
                    break;
                }
            }
        }
        let mut left = batcher.take_carry().map_or(0, |e| e.payload.items() as u64);
        while let Some(e) = self.queue.try_pop() {
            left += e.payload.items() as u64;
        }
        self.stats.fail(EXPORTER, signal, "shutdown", left);
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
                batch.complete();
                Ok(())
            }
            Ok((Err(e), _, _)) => {
                if logged.lock().insert("spill_error") {
                    tracing::error!(signal = self.signal.as_str(), error = %e,
                        "cannot write to the OTLP spill: keeping the batch in memory");
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
                if let Err(batch) = self.spill_batch(&spill, batch, &logged).await {
                    // The disk failed: fall back to the in-memory hand-off (backpressure).
                    if let Err(mpsc::error::SendError(b)) = tx.send(batch).await {
                        self.stats
                            .fail(EXPORTER, signal, "shutdown", b.items as u64);
                    }
                }
                wake.notify_one();
            }
            drop(tx);
        };

        let send = async {
            let mut rx_open = true;
            let mut send_spilled = true;
            let mut log_set = HashSet::new();
            let unlimited = RetryPolicy {
                max_elapsed: None,
                ..self.retry
            };
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
                        .attempts_direct_or_spill(batch, &spill, &shutdown, &logged, &mut log_set)
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
                                unlimited,
                                &shutdown,
                                Some(&shutdown.closing),
                                &mut log_set,
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
                            if let Err(b) = self.attempts_direct_or_spill(b, &spill, &shutdown, &logged, &mut log_set).await {
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
        log_set: &mut HashSet<&'static str>,
    ) -> Result<(), Batch> {
        // One attempt: on a retryable failure the batch goes to disk at once (its receipts
        // complete there) and is retried from the spill, so a failing endpoint never holds
        // data in memory.
        let items = batch.items as u64;
        let now = CancellationToken::new();
        now.cancel();
        match self
            .attempts(
                &batch.payload,
                items,
                self.retry,
                shutdown,
                Some(&now),
                log_set,
            )
            .await
        {
            Ok(()) => {
                batch.complete();
                Ok(())
            }
            Err(_) => self.spill_batch(spill, batch, logged).await,
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
        let z = gzip_bytes(&data);
        assert!(z.len() < data.len());
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&z[..])
            .read_to_end(&mut out)
            .expect("gunzip");
        assert_eq!(out, data);
    }
}

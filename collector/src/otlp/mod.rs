//! The OTLP receivers: OTLP/gRPC (tonic's generated services for traces, metrics and logs) and
//! OTLP/HTTP (`POST /v1/{traces,metrics,logs}`, protobuf or JSON, gzip), behind one accept loop
//! (plain or TLS) with optional bearer-token auth, both handing every decoded request to the
//! pipeline's [`Intake`].
//!
//! Three phases, as every component: [`OtlpSettings::validate`] is pure; [`Receivers::build`]
//! binds the listeners and spawns nothing; [`Receivers::run`] serves until cancelled and then
//! lets in-flight requests finish. [`ReceiversHandle::reconfigure`] applies a reload in place.
//!
//! What a request meets, in order: the token check (401 / UNAUTHENTICATED), the media type and
//! encoding (415), the size limit before and after decompression (413 / RESOURCE_EXHAUSTED),
//! a full queue (503 with `Retry-After` / UNAVAILABLE, before the body is read: decompressing and
//! decoding what will be refused would only cost CPU when the agent is busiest), decoding
//! (400 / INVALID_ARGUMENT), then [`Intake::offer`], which still decides: nothing is buffered
//! beyond the queue. Protobuf trace requests are not decoded into messages: [`crate::wire`]
//! checks them and reads the spans for span metrics in one pass, and they travel on as the bytes
//! received ([`Payload::Encoded`]), with [`OtlpSettings::resource`] appended to each resource at
//! the wire level when configured ([`crate::resource`]). Span metrics are
//! recorded only for requests the intake took (a refused request is retried and would be
//! counted twice). Every refusal is counted by reason in [`ReceiverStats`].

mod auth;
mod grpc;
pub(crate) mod http;
mod limits;
mod log_counts;
pub mod redact;
pub mod serve;
mod stats;
#[cfg(test)]
mod tests;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use auth::{Token, bearer_credentials};
pub use limits::{BodyError, gunzip_capped, read_capped};
pub use stats::{HandshakeFailure, Reason, Receiver, ReceiverStats};
pub use tls::{TlsFiles, load as load_tls};

use crate::logs::{LogStats, RedactionConfig};
use crate::pipeline::{EncodedRequest, Intake, Payload, Refused, Signal};
use crate::received_metrics::{self, ReceivedMetrics};
use crate::resource::ExtraResource;
use crate::spanmetrics::{Prepared, SettingsError, SpanMetrics};
use crate::wire::WireError;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use redact::OtlpRedactor;

/// Default OTLP/gRPC address.
pub const DEFAULT_GRPC: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 4317);
/// Default OTLP/HTTP address.
pub const DEFAULT_HTTP: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 4318);
/// Default request limit (compressed and decompressed): 16 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 16 << 20;

/// What the receivers listen on and accept.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpSettings {
    /// OTLP/gRPC listen address; `None` disables it.
    pub grpc: Option<SocketAddr>,
    /// OTLP/HTTP listen address; `None` disables it.
    pub http: Option<SocketAddr>,
    /// Largest request, compressed and decompressed (gRPC: largest message), in bytes.
    pub max_request_bytes: usize,
    /// What a full queue tells HTTP clients in `Retry-After` (whole seconds, rounded up).
    pub retry_after: Duration,
    /// Accepted bearer tokens; empty means no authentication.
    pub bearer_tokens: Vec<Token>,
    /// TLS on both listeners.
    pub tls: Option<TlsFiles>,
    /// Secrets replaced in received traces and logs (built-ins on by default).
    pub redaction: RedactionConfig,
    /// Open connections per listener at most (more are closed on accept and counted).
    pub max_connections: usize,
    /// Resource attributes added to received traces and logs that lack them (pod metadata).
    pub resource: ExtraResource,
}

impl Default for OtlpSettings {
    fn default() -> Self {
        Self {
            grpc: Some(DEFAULT_GRPC),
            http: Some(DEFAULT_HTTP),
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            retry_after: Duration::from_secs(1),
            bearer_tokens: Vec::new(),
            tls: None,
            redaction: RedactionConfig::default(),
            max_connections: serve::DEFAULT_MAX_CONNECTIONS,
            resource: ExtraResource::default(),
        }
    }
}

impl OtlpSettings {
    /// Checks the settings without touching the network or files; every problem at once.
    pub fn validate(&self) -> Vec<SettingsError> {
        let mut errors = Vec::new();
        let mut err = |key: &str, message: String| {
            errors.push(SettingsError {
                key: key.into(),
                message,
            })
        };
        if self.grpc.is_none() && self.http.is_none() {
            err(
                "grpc",
                "give grpc, http or both (or set enabled: false)".into(),
            );
        }
        if let (Some(g), Some(h)) = (self.grpc, self.http)
            && g == h
            && g.port() != 0
        {
            err("http", format!("{h} is also the grpc address"));
        }
        if self.max_request_bytes < 1024 {
            err("max_request_bytes", "must be at least 1024".into());
        }
        if self.max_request_bytes > 1 << 30 {
            err("max_request_bytes", "must be at most 1 GiB".into());
        }
        if self.retry_after.is_zero() || self.retry_after > Duration::from_secs(3600) {
            err("retry_after", "must be between 1s and 1h".into());
        }
        if self.bearer_tokens.iter().any(Token::is_empty) {
            err("auth", "a bearer token is empty".into());
        }
        if self.max_connections == 0 || self.max_connections > 65_536 {
            err("max_connections", "must be between 1 and 65536".into());
        }
        if let Err(e) = OtlpRedactor::new(&self.redaction) {
            err("redaction", e.to_string());
        }
        errors
    }

    fn retry_after_secs(&self) -> u64 {
        let d = self.retry_after;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }
}

/// Why the receivers could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A redaction pattern does not compile.
    #[error("redaction: {0}")]
    Redaction(String),
    /// A certificate or key could not be loaded.
    #[error("tls {}: {message}", path.display())]
    Tls {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// What the receivers derive from accepted requests, besides handing them to the intake.
#[derive(Debug, Clone, Default)]
pub struct Derived {
    /// RED metrics from spans.
    pub spanmetrics: Option<SpanMetrics>,
    /// Received metrics served on `/metrics`.
    pub metrics: Option<ReceivedMetrics>,
    /// Received log records counted in the log families.
    pub logs: Option<LogStats>,
}

/// What one request will add once the intake took it.
enum Batch {
    Metrics(received_metrics::Prepared),
    Logs(log_counts::LogCounts),
}

/// What both receivers share: where payloads go, what is derived from them, the counters,
/// and the settings that a reload changes in place.
pub(crate) struct Core {
    intake: Intake,
    stats: ReceiverStats,
    spanmetrics: Option<SpanMetrics>,
    received_metrics: Option<ReceivedMetrics>,
    log_stats: Option<LogStats>,
    redactor: RwLock<Option<Arc<OtlpRedactor>>>,
    /// Added to every accepted trace and log request (nothing when empty).
    resource: RwLock<Arc<ExtraResource>>,
    tokens: auth::Tokens,
    retry_after_secs: AtomicU64,
    max_request_bytes: AtomicUsize,
}

/// Why [`Core::accept_encoded_traces`] did not take a request.
#[derive(Debug)]
pub(crate) enum Rejected {
    /// Not an `ExportTraceServiceRequest` (400 / INVALID_ARGUMENT).
    Invalid(WireError),
    /// The intake refused it (503 / UNAVAILABLE).
    Refused(Refused),
}

impl Core {
    /// Redacts a decoded request, offers it to the intake and on success records span metrics
    /// and counts the items. Refusals are counted here too.
    fn accept(&self, receiver: Receiver, mut payload: Payload) -> Result<usize, Refused> {
        let signal = payload.signal();
        let redactor = self.redactor.read().clone();
        if let Some(r) = redactor {
            let n = match &mut payload {
                Payload::Traces(request) => r.traces(request),
                Payload::Logs(request) => r.logs(request),
                // Metric data points are passed as they are; encoded traces are looked at by
                // `accept_encoded_traces` and come here decoded when they hold a secret.
                Payload::Metrics(_) | Payload::Encoded(_) => 0,
            };
            if n > 0 {
                self.stats.redacted(signal, n);
            }
        }
        let prepared = match (&payload, &self.spanmetrics) {
            (Payload::Traces(request), Some(sm)) => Some(sm.prepare(request)),
            _ => None,
        };
        let resource = self.resource.read().clone();
        match &mut payload {
            Payload::Traces(request) => resource.apply_traces(request),
            Payload::Logs(request) => resource.apply_logs(request),
            Payload::Metrics(_) | Payload::Encoded(_) => {}
        }
        let batch = match &payload {
            Payload::Metrics(request) => self
                .received_metrics
                .as_ref()
                .map(|m| Batch::Metrics(m.prepare(request))),
            Payload::Logs(request) => self
                .log_stats
                .as_ref()
                .map(|_| Batch::Logs(log_counts::count(request))),
            _ => None,
        };
        let items = payload.items();
        let taken = self.offer(receiver, payload, prepared, items)?;
        match batch {
            Some(Batch::Metrics(p)) => {
                if let Some(m) = &self.received_metrics {
                    m.record(p);
                }
            }
            Some(Batch::Logs(c)) => {
                if let Some(stats) = &self.log_stats {
                    c.record(stats);
                }
            }
            None => {}
        }
        Ok(taken)
    }

    /// Checks an encoded trace request and reads its spans for span metrics in one pass, then
    /// offers it to the intake as those bytes ([`Payload::Encoded`]), as [`accept`](Self::accept)
    /// does. Undecodable requests are not counted here (the caller answers and counts them).
    ///
    /// Redaction looks at every data string in the same pass; a request holding something to
    /// redact (rare) is decoded, redacted and taken through [`accept`](Self::accept) instead.
    fn accept_encoded_traces(&self, receiver: Receiver, bytes: Bytes) -> Result<usize, Rejected> {
        let check = |texts: &mut crate::wire::Texts<'_>| match &self.spanmetrics {
            Some(sm) => sm
                .prepare_encoded_with(&bytes, texts)
                .map(|(p, n)| (Some(p), n)),
            None => {
                let mut v = crate::wire::WithTexts((), texts);
                crate::wire::traces(&bytes, &mut v).map(|n| (None, n))
            }
        };
        let redactor = self.redactor.read().clone();
        let (checked, secret) = match &redactor {
            Some(r) => r.probe(check),
            None => (check(&mut |_| {}), false),
        };
        let (prepared, items) = checked.map_err(Rejected::Invalid)?;
        if secret {
            let request = ExportTraceServiceRequest::decode(&bytes[..]).map_err(|_| {
                Rejected::Invalid(WireError::new(
                    "accepted by the wire check, refused by prost",
                ))
            })?;
            return self
                .accept(receiver, Payload::Traces(request))
                .map_err(Rejected::Refused);
        }
        let resource = self.resource.read().clone();
        let bytes = if resource.is_empty() {
            bytes
        } else {
            resource
                .apply_encoded_traces(&bytes)
                .map_err(Rejected::Invalid)?
        };
        let payload = Payload::Encoded(EncodedRequest::traces_checked(bytes, items));
        self.offer(receiver, payload, prepared, items)
            .map_err(Rejected::Refused)
    }

    fn offer(
        &self,
        receiver: Receiver,
        payload: Payload,
        prepared: Option<Prepared>,
        items: usize,
    ) -> Result<usize, Refused> {
        let signal = payload.signal();
        if let Err(refused) = self.intake.offer(payload) {
            let reason = match refused {
                Refused::Full(_) => Reason::Full,
                Refused::Closed(_) => Reason::Closed,
            };
            self.stats.refused(receiver, signal, reason);
            return Err(refused);
        }
        if let (Some(p), Some(sm)) = (prepared, &self.spanmetrics) {
            sm.record(p);
        }
        self.stats.accepted(receiver, signal, items);
        Ok(items)
    }

    /// For both receivers, before a request body is read: refuses (and counts) when the
    /// pipeline has no room for `signal` now, so a full queue costs no decompression or decoding.
    fn refuse_early(&self, receiver: Receiver, signal: Signal) -> Option<Refused> {
        let refused = self.intake.refuse_early(signal)?;
        let reason = match refused {
            Refused::Full(_) => Reason::Full,
            Refused::Closed(_) => Reason::Closed,
        };
        self.stats.refused(receiver, signal, reason);
        Some(refused)
    }

    fn max_request_bytes(&self) -> usize {
        self.max_request_bytes.load(Ordering::Relaxed)
    }

    fn retry_after_secs(&self) -> u64 {
        self.retry_after_secs.load(Ordering::Relaxed)
    }
}

/// The compiled redaction rules (`None`: redaction off).
fn redactor(config: &RedactionConfig) -> Result<Option<Arc<OtlpRedactor>>, OtlpError> {
    OtlpRedactor::new(config)
        .map(|r| r.map(Arc::new))
        .map_err(|e| OtlpError::Redaction(e.to_string()))
}

/// Bound receivers, not yet serving.
pub struct Receivers {
    handle: ReceiversHandle,
    max_connections: usize,
    grpc: Option<TcpListener>,
    http: Option<TcpListener>,
    grpc_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
}

impl std::fmt::Debug for Receivers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receivers")
            .field("grpc", &self.grpc_addr)
            .field("http", &self.http_addr)
            .finish_non_exhaustive()
    }
}

/// Changes running receivers in place. Cheap to clone.
#[derive(Clone)]
pub struct ReceiversHandle {
    core: Arc<Core>,
    grpc_router: serve::Swap,
    http_router: serve::Swap,
    tls: serve::TlsSwap,
    settings: Arc<Mutex<OtlpSettings>>,
}

impl std::fmt::Debug for ReceiversHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiversHandle").finish_non_exhaustive()
    }
}

impl Receivers {
    /// Loads TLS (if configured) and binds the listeners; spawns nothing. `settings` should have
    /// passed [`OtlpSettings::validate`]. `spanmetrics`, when given, is fed from accepted traces.
    pub async fn build(
        settings: &OtlpSettings,
        intake: Intake,
        stats: ReceiverStats,
        spanmetrics: Option<SpanMetrics>,
    ) -> Result<Receivers, OtlpError> {
        let derived = Derived {
            spanmetrics,
            ..Derived::default()
        };
        Self::build_with(settings, intake, stats, derived).await
    }

    /// [`build`](Self::build) with everything derived from accepted requests: span metrics,
    /// received metrics served on `/metrics`, received log records counted.
    pub async fn build_with(
        settings: &OtlpSettings,
        intake: Intake,
        stats: ReceiverStats,
        derived: Derived,
    ) -> Result<Receivers, OtlpError> {
        let Derived {
            spanmetrics,
            metrics: received_metrics,
            logs: log_stats,
        } = derived;
        let tls = settings.tls.as_ref().map(tls::load).transpose()?;
        let redactor = redactor(&settings.redaction)?;
        let bind = |addr: SocketAddr| async move {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| OtlpError::Bind { addr, source })?;
            let local = l
                .local_addr()
                .map_err(|source| OtlpError::Bind { addr, source })?;
            Ok::<_, OtlpError>((l, local))
        };
        let grpc = match settings.grpc {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        let http = match settings.http {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        let core = Arc::new(Core {
            intake,
            stats,
            spanmetrics,
            received_metrics,
            log_stats,
            redactor: RwLock::new(redactor),
            resource: RwLock::new(Arc::new(settings.resource.clone())),
            tokens: auth::Tokens::new(&settings.bearer_tokens),
            retry_after_secs: AtomicU64::new(settings.retry_after_secs()),
            max_request_bytes: AtomicUsize::new(settings.max_request_bytes),
        });
        let handle = ReceiversHandle {
            grpc_router: Arc::new(RwLock::new(grpc::router(
                core.clone(),
                settings.max_request_bytes,
            ))),
            http_router: Arc::new(RwLock::new(http::router(core.clone()))),
            core,
            tls: Arc::new(RwLock::new(tls)),
            settings: Arc::new(Mutex::new(settings.clone())),
        };
        Ok(Receivers {
            handle,
            max_connections: settings.max_connections,
            grpc_addr: grpc.as_ref().map(|g| g.1),
            http_addr: http.as_ref().map(|h| h.1),
            grpc: grpc.map(|g| g.0),
            http: http.map(|h| h.0),
        })
    }

    /// The bound OTLP/gRPC address.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc_addr
    }

    /// The bound OTLP/HTTP address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// A handle for reloads.
    pub fn handle(&self) -> ReceiversHandle {
        self.handle.clone()
    }

    /// Serves until `cancel`, then stops accepting, closes idle connections and returns once
    /// in-flight requests are answered.
    pub async fn run(self, cancel: CancellationToken) {
        let h = self.handle;
        let connections = h.core.stats.connections.clone();
        let grpc = self.grpc.map(|l| {
            serve::serve(
                l,
                h.grpc_router.clone(),
                h.tls.clone(),
                cancel.clone(),
                self.max_connections,
                serve::Accounting {
                    name: Receiver::Grpc.as_str(),
                    connections: connections.clone(),
                    handshakes: Some((Receiver::Grpc, h.core.stats.clone())),
                },
            )
        });
        let http = self.http.map(|l| {
            serve::serve(
                l,
                h.http_router.clone(),
                h.tls.clone(),
                cancel.clone(),
                self.max_connections,
                serve::Accounting {
                    name: Receiver::Http.as_str(),
                    connections: connections.clone(),
                    handshakes: Some((Receiver::Http, h.core.stats.clone())),
                },
            )
        });
        tokio::join!(
            async {
                if let Some(f) = grpc {
                    f.await
                }
            },
            async {
                if let Some(f) = http {
                    f.await
                }
            },
        );
    }
}

impl ReceiversHandle {
    /// Applies new settings in place: tokens, `retry_after`, `max_request_bytes` and TLS
    /// certificates (for new connections) and redaction. Returns the keys that only take effect
    /// at the next restart (`grpc`, `http`: the addresses; `max_connections`). On a TLS error
    /// nothing is changed.
    pub fn reconfigure(&self, new: &OtlpSettings) -> Result<Vec<&'static str>, OtlpError> {
        let tls = new.tls.as_ref().map(tls::load).transpose()?;
        let mut old = self.settings.lock();
        if old.redaction != new.redaction {
            *self.core.redactor.write() = redactor(&new.redaction)?;
        }
        if old.resource != new.resource {
            *self.core.resource.write() = Arc::new(new.resource.clone());
        }
        let mut restart = Vec::new();
        if old.grpc != new.grpc {
            restart.push("grpc");
        }
        if old.http != new.http {
            restart.push("http");
        }
        if old.max_connections != new.max_connections {
            restart.push("max_connections");
        }
        if (old.tls.is_some() || new.tls.is_some()) && old.tls.as_ref() != new.tls.as_ref() {
            tracing::info!("otlp TLS settings changed; new connections use them");
        }
        *self.tls.write() = tls;
        self.core.tokens.set(&new.bearer_tokens);
        self.core
            .retry_after_secs
            .store(new.retry_after_secs(), Ordering::Relaxed);
        self.core
            .max_request_bytes
            .store(new.max_request_bytes, Ordering::Relaxed);
        if old.max_request_bytes != new.max_request_bytes {
            *self.grpc_router.write() = grpc::router(self.core.clone(), new.max_request_bytes);
        }
        *old = OtlpSettings {
            grpc: old.grpc,
            http: old.http,
            ..new.clone()
        };
        Ok(restart)
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Helpers shared by the receivers' tests.

    use std::sync::Arc;

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span};
    use prometheus_client::registry::Registry;

    use crate::pipeline::{Intake, Queue, QueueLimits, QueueStats, Signal};

    /// A request with `n` server spans of service `svc`.
    pub fn traces(svc: &str, n: usize) -> ExportTraceServiceRequest {
        let start = 1_700_000_000_000_000_000u64;
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(svc.into())),
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: (0..n)
                        .map(|i| Span {
                            trace_id: vec![0x11; 16],
                            span_id: vec![i as u8 + 1; 8],
                            name: "GET /".into(),
                            kind: span::SpanKind::Server as i32,
                            start_time_unix_nano: start,
                            end_time_unix_nano: start + 5_000_000,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    /// An intake whose traces queue holds one envelope.
    pub fn tiny_intake() -> (Intake, Arc<Queue>) {
        let q = Arc::new(Queue::new(
            "traces",
            QueueLimits {
                max_items: 1,
                max_bytes: 1 << 20,
            },
            QueueStats::default(),
        ));
        (Intake::discard().with(Signal::Traces, q.clone()), q)
    }

    /// The text exposition of a registry.
    pub fn text(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).expect("encode");
        out
    }
}

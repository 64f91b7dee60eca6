//! The agent's one outgoing HTTP client: hyper's connection-pooling client over a
//! hyper-rustls connector, with the TLS settings of [`tls::ClientTls`], a deadline per request
//! (connect, send and reading the answer) and a limit on the answer's body. OTLP/HTTP export,
//! remote write, Teams, webhooks, Slack (through [`HttpClient::connector`]) and the CLI all send
//! through it; it runs on the caller's Tokio runtime, never on the blocking pool (only a host
//! name's DNS lookup does, as tokio's own lookups do).
//!
//! HTTP/1.1, no redirects followed, no proxy: the answer is what the endpoint said.

pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderValue, USER_AGENT};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio_rustls::rustls;

use tls::{ClientTls, TlsError};

/// The connector under every client: TCP (no Nagle, a connect timeout), then TLS for
/// `https://` URLs.
pub type Connector = HttpsConnector<HttpConnector>;

/// How a client connects and how much it waits for and reads.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// TLS for `https://` URLs; `None`: plain `http://` only (an `https://` URL is refused).
    pub tls: Option<Arc<ClientTls>>,
    /// The deadline of one request: connecting, sending and reading the whole answer.
    pub timeout: Duration,
    /// The most bytes of an answer's body read; the rest is discarded (the connection is closed
    /// instead of being reused) and the response is marked [`Response::truncated`].
    pub max_response_bytes: usize,
}

/// An answer, its body read up to the client's limit.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body, at most `max_response_bytes` of it.
    pub body: Bytes,
    /// Whether the body was longer than the limit (and `body` holds only its start).
    pub truncated: bool,
}

impl Response {
    /// A header's value as text, if it is present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No answer (headers and body) within the client's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The TLS handshake failed (a certificate that does not verify, a protocol mismatch).
    #[error("TLS: {0}")]
    Tls(String),
    /// Connecting or the exchange failed (refused, reset, DNS, a broken answer).
    #[error("{0}")]
    Connection(String),
    /// An `https://` URL on a client without TLS settings.
    #[error("https:// URL on a client without TLS settings")]
    NoTls,
}

impl RequestError {
    /// Whether TLS failed (so the TLS settings are the thing to check).
    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Tls(_) | Self::NoTls)
    }
}

/// The user agent sent unless a request names its own.
const DEFAULT_USER_AGENT: &str = concat!("sidelight/", env!("CARGO_PKG_VERSION"));

/// A pooling HTTP/1.1 client (cheap to clone: clones share the pool).
#[derive(Clone)]
pub struct HttpClient(Arc<Inner>);

struct Inner {
    client: Client<Connector, Full<Bytes>>,
    connector: Connector,
    tls: bool,
    timeout: Duration,
    max_response_bytes: usize,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("tls", &self.0.tls)
            .field("timeout", &self.0.timeout)
            .field("max_response_bytes", &self.0.max_response_bytes)
            .finish_non_exhaustive()
    }
}

/// The connector for `tls` (or plain HTTP only), connecting within `connect_timeout`.
pub fn connector(
    tls: Option<&ClientTls>,
    connect_timeout: Duration,
) -> Result<Connector, TlsError> {
    let config = match tls {
        Some(t) => t.rustls_config(&[])?,
        // Never used for a handshake: `HttpClient::send` refuses `https://` first.
        None => Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
        ),
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    Ok(HttpsConnectorBuilder::new()
        .with_tls_config((*config).clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}

impl HttpClient {
    /// Builds the client (no connection is made until the first request).
    pub fn new(options: &ClientOptions) -> Result<Self, TlsError> {
        let connector = connector(options.tls.as_deref(), options.timeout)?;
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector.clone());
        Ok(Self(Arc::new(Inner {
            client,
            connector,
            tls: options.tls.is_some(),
            timeout: options.timeout,
            max_response_bytes: options.max_response_bytes,
        })))
    }

    /// The connector (TLS settings and connect timeout) for a library that builds its own
    /// hyper client (slack-morphism).
    pub fn connector(&self) -> Connector {
        self.0.connector.clone()
    }

    /// The per-request deadline.
    pub fn timeout(&self) -> Duration {
        self.0.timeout
    }

    /// Sends `request` and reads the answer, within the client's timeout.
    pub async fn send(&self, request: Request<Bytes>) -> Result<Response, RequestError> {
        if request.uri().scheme() == Some(&http::uri::Scheme::HTTPS) && !self.0.tls {
            return Err(RequestError::NoTls);
        }
        let (mut parts, body) = request.into_parts();
        if !parts.headers.contains_key(USER_AGENT) {
            parts
                .headers
                .insert(USER_AGENT, HeaderValue::from_static(DEFAULT_USER_AGENT));
        }
        let request = Request::from_parts(parts, Full::new(body));
        match tokio::time::timeout(self.0.timeout, self.exchange(request)).await {
            Ok(r) => r,
            Err(_) => Err(RequestError::Timeout(self.0.timeout)),
        }
    }

    async fn exchange(&self, request: Request<Full<Bytes>>) -> Result<Response, RequestError> {
        let resp = self
            .0
            .client
            .request(request)
            .await
            .map_err(|e| failure(&e))?;
        let (parts, mut body) = resp.into_parts();
        let mut read = BytesMut::new();
        let mut truncated = false;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| failure(&e))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let room = self.0.max_response_bytes - read.len();
            if data.len() > room {
                read.extend_from_slice(&data[..room]);
                truncated = true;
                // Dropping the body closes the connection instead of reading the rest.
                break;
            }
            read.extend_from_slice(&data);
        }
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body: read.freeze(),
            truncated,
        })
    }
}

/// Names a failure: TLS when a rustls error is anywhere in the chain, else the whole chain.
fn failure(e: &(dyn std::error::Error + 'static)) -> RequestError {
    let message = error_chain(e);
    if is_tls_error(e) {
        RequestError::Tls(message)
    } else {
        RequestError::Connection(message)
    }
}

/// An error and its sources, `a: b: c` (a source whose text is already there is skipped).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = Some(e);
    while let Some(s) = cur {
        // An I/O error's `source` skips the error it wraps: look inside it too.
        let inner = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|i| i as &(dyn std::error::Error + 'static));
        for t in [inner, s.source()].into_iter().flatten() {
            let text = t.to_string();
            if !out.contains(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
        }
        cur = s.source();
    }
    out
}

/// Whether a rustls error (a handshake or certificate failure) is in the chain, directly or
/// inside an I/O error.
pub fn is_tls_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(s) = cur {
        if s.is::<rustls::Error>() || s.is::<tls::HandshakeError>() {
            return true;
        }
        if let Some(inner) = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && (inner.is::<rustls::Error>() || is_tls_error(inner))
        {
            return true;
        }
        cur = s.source();
    }
    false
}

#[cfg(test)]
mod tests;

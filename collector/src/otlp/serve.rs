//! The accept loop both receivers and the agent's HTTP surface share: plain TCP or TLS,
//! HTTP/1.1 and HTTP/2 (h2c by prior knowledge, or ALPN under TLS) through hyper, each
//! connection on its own task. On cancel the listener closes, idle connections are closed, and
//! in-flight requests finish before `serve` returns (the caller bounds the wait).
//!
//! Hostile clients meet these bounds: at most `max_connections` connections per listener (more
//! are closed on accept and counted in `sidelight_http_connections_refused_total`); request
//! headers (and the TLS handshake) within [`HANDSHAKE_TIMEOUT`], so a slow-loris client is cut
//! off; a whole request, body included, within [`REQUEST_TIMEOUT`] (408); on HTTP/2 at most
//! [`MAX_STREAMS`] concurrent streams and a 16 KiB header list, and a client that resets streams
//! faster than they are served (the "rapid reset" attack) is sent GOAWAY by h2's limit on
//! reset-but-unaccepted streams. Failed TLS handshakes are counted by
//! reason (`sidelight_receiver_tls_handshake_failures_total`).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use parking_lot::RwLock;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::stats::{HandshakeFailure, Receiver, ReceiverStats};

/// How long a client may take for the TLS handshake or to send request headers.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request may take, reading its body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Concurrent HTTP/2 streams per connection.
pub const MAX_STREAMS: u32 = 100;
/// Default cap on open connections per listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

type Label = [(&'static str, &'static str); 1];

/// Connection counters of every listener (label `listener`: `otlp_grpc`, `otlp_http`, `http`).
#[derive(Debug, Clone, Default)]
pub struct ConnectionStats {
    /// `sidelight_http_connections{listener}`: open now.
    pub open: Family<Label, Gauge>,
    /// `sidelight_http_connections_refused_total{listener}`: closed on accept, over the cap.
    pub refused: Family<Label, Counter>,
}

impl ConnectionStats {
    /// Registers both families.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sidelight_http_connections",
            "Open connections per listener",
            self.open.clone(),
        );
        registry.register(
            "sidelight_http_connections_refused",
            "Connections closed on accept because the listener was at max_connections",
            self.refused.clone(),
        );
    }
}

/// Who a listener is, for its counters.
#[derive(Debug, Clone)]
pub struct Accounting {
    /// The `listener` label (`otlp_grpc`, `otlp_http`, `http`).
    pub name: &'static str,
    /// Open and refused connections.
    pub connections: ConnectionStats,
    /// Where failed TLS handshakes are counted (the receivers; `None`: not counted).
    pub handshakes: Option<(Receiver, ReceiverStats)>,
}

/// The service a listener serves, swappable in place (a reload changes limits).
pub type Swap = Arc<RwLock<Router>>;
/// The TLS acceptor in force, if any (read per connection, so new certificates apply to new
/// connections).
pub type TlsSwap = Arc<RwLock<Option<TlsAcceptor>>>;

/// Serves `listener` until `cancel` (see the module documentation for the bounds).
pub async fn serve(
    listener: TcpListener,
    router: Swap,
    tls: TlsSwap,
    cancel: CancellationToken,
    max_connections: usize,
    accounting: Accounting,
) {
    let name = accounting.name;
    let connections = TaskTracker::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
    let open = accounting
        .connections
        .open
        .get_or_create_owned(&[("listener", name)]);
    let refused = accounting
        .connections
        .refused
        .get_or_create_owned(&[("listener", name)]);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of descriptors and the like: back off rather than spin.
                tracing::warn!(receiver = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused.inc();
            tracing::debug!(receiver = name, "connection refused: at max_connections");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = tls.read().clone();
        let router = router.clone();
        let cancel = cancel.clone();
        let open = open.clone();
        open.inc();
        let handshakes = accounting.handshakes.clone();
        connections.spawn(async move {
            let _slot = slot;
            let _open = OpenGuard(open);
            match acceptor {
                None => connection(tcp, router, cancel).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => connection(stream, router, cancel).await,
                        Ok(Err(e)) => {
                            let why = HandshakeFailure::of(&e);
                            if let Some((r, stats)) = &handshakes {
                                stats.handshake_failed(*r, why);
                            }
                            tracing::debug!(receiver = name, reason = why.as_str(), error = %e,
                                "TLS handshake failed");
                        }
                        Err(_) => {
                            if let Some((r, stats)) = &handshakes {
                                stats.handshake_failed(*r, HandshakeFailure::Timeout);
                            }
                            tracing::debug!(receiver = name, "TLS handshake timed out");
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Takes one off the open-connections gauge when the connection's task ends.
struct OpenGuard(Gauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn connection<I>(io: I, router: Swap, cancel: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let router = router.read().clone();
        async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, router.oneshot(req.map(Body::new))).await {
                Ok(response) => response,
                Err(_) => Ok((
                    axum::http::StatusCode::REQUEST_TIMEOUT,
                    "request not completed in time\n",
                )
                    .into_response()),
            }
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(16 << 10)
        .max_pending_accept_reset_streams(Some(20))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

//! The accept loop both receivers share: plain TCP or TLS, HTTP/1.1 and HTTP/2 (h2c by prior
//! knowledge, or ALPN under TLS) through hyper, each connection on its own task. On cancel the
//! listener closes, idle connections are closed, and in-flight requests finish before `serve`
//! returns (the caller bounds the wait). Failed TLS handshakes are counted by reason.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use parking_lot::RwLock;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::stats::{HandshakeFailure, Receiver, ReceiverStats};

/// How long a client may take for the TLS handshake or to send request headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The service a listener serves, swappable in place (a reload changes limits).
pub(crate) type Swap = Arc<RwLock<Router>>;
/// The TLS acceptor in force, if any (read per connection, so new certificates apply to new
/// connections).
pub(crate) type TlsSwap = Arc<RwLock<Option<TlsAcceptor>>>;

pub(crate) async fn serve(
    listener: TcpListener,
    router: Swap,
    tls: TlsSwap,
    cancel: CancellationToken,
    receiver: Receiver,
    stats: ReceiverStats,
) {
    let name = receiver.as_str();
    let connections = TaskTracker::new();
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
        let _ = tcp.set_nodelay(true);
        let acceptor = tls.read().clone();
        let router = router.clone();
        let cancel = cancel.clone();
        let stats = stats.clone();
        connections.spawn(async move {
            match acceptor {
                None => connection(tcp, router, cancel).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => connection(stream, router, cancel).await,
                        Ok(Err(e)) => {
                            let why = HandshakeFailure::of(&e);
                            stats.handshake_failed(receiver, why);
                            tracing::debug!(receiver = name, reason = why.as_str(), error = %e,
                                "TLS handshake failed");
                        }
                        Err(_) => {
                            stats.handshake_failed(receiver, HandshakeFailure::Timeout);
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

async fn connection<I>(io: I, router: Swap, cancel: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let router = router.read().clone();
        router.oneshot(req.map(Body::new))
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
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

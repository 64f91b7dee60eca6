//! The OTLP exporter over TLS against the receivers' own TLS (rustls on both sides, a
//! self-signed certificate from rcgen): gRPC and HTTP deliver with the right CA, with the
//! certificate as its own CA, and with `insecure_skip_verify`; a wrong CA is refused with a
//! TLS error (retryable, reason `tls`) and nothing arrives; mTLS material that does not fit is
//! a load error.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use sidelight_collector::export::otlp::{ClientSettings, Compression, OtlpClient, Protocol};
use sidelight_collector::export::retry::Outcome;
use sidelight_collector::http_client::tls::{ClientTls, ClientTlsFiles, TlsError};
use sidelight_collector::otlp::{OtlpSettings, ReceiverStats, Receivers, TlsFiles};
use sidelight_collector::pipeline::{Intake, Payload, Queue, QueueLimits, QueueStats, Signal};
use tokio_util::sync::CancellationToken;

fn traces(n: usize) -> Payload {
    Payload::Traces(ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource::default()),
            scope_spans: vec![ScopeSpans {
                spans: (0..n)
                    .map(|i| Span {
                        name: format!("s{i}"),
                        trace_id: vec![1; 16],
                        span_id: vec![2; 8],
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    })
}

struct Peer {
    grpc: std::net::SocketAddr,
    http: std::net::SocketAddr,
    queue: Arc<Queue>,
    cancel: CancellationToken,
    dir: tempfile::TempDir,
}

/// Receivers with TLS from a self-signed certificate for localhost and 127.0.0.1.
async fn peer() -> Peer {
    let dir = tempfile::tempdir().expect("tempdir");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("cert");
    std::fs::write(dir.path().join("cert.pem"), ck.cert.pem()).expect("write");
    std::fs::write(dir.path().join("key.pem"), ck.signing_key.serialize_pem()).expect("write");
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    std::fs::write(dir.path().join("other-ca.pem"), other.cert.pem()).expect("write");
    let queue = Arc::new(Queue::new(
        "otlp_traces",
        QueueLimits::default(),
        QueueStats::default(),
    ));
    let settings = OtlpSettings {
        grpc: Some("127.0.0.1:0".parse().expect("addr")),
        http: Some("127.0.0.1:0".parse().expect("addr")),
        tls: Some(TlsFiles {
            cert_file: dir.path().join("cert.pem"),
            key_file: dir.path().join("key.pem"),
        }),
        ..Default::default()
    };
    let r = Receivers::build(
        &settings,
        Intake::discard().with(Signal::Traces, queue.clone()),
        ReceiverStats::default(),
        None,
    )
    .await
    .expect("bind");
    let (grpc, http) = (r.grpc_addr().expect("grpc"), r.http_addr().expect("http"));
    let cancel = CancellationToken::new();
    tokio::spawn(r.run(cancel.clone()));
    Peer {
        grpc,
        http,
        queue,
        cancel,
        dir,
    }
}

fn client(endpoint: String, protocol: Protocol, tls: Option<ClientTls>) -> OtlpClient {
    OtlpClient::new(&ClientSettings {
        endpoint,
        protocol,
        headers: vec![],
        bearer_token: None,
        timeout: Duration::from_secs(5),
        compression: Compression::Gzip(1),
        tls: tls.map(Arc::new),
    })
    .expect("client")
}

fn ca(p: &Peer, file: &str) -> ClientTls {
    ClientTls::load(&ClientTlsFiles {
        ca_file: Some(p.dir.path().join(file)),
        ..Default::default()
    })
    .expect("tls")
}

async fn send(c: &OtlpClient, n: usize) -> Outcome {
    c.export(&c.prepare(&traces(n))).await
}

fn delivered(o: &Outcome) -> bool {
    matches!(o, Outcome::Delivered { rejected: 0, .. })
}

fn drain(q: &Queue) -> usize {
    let mut n = 0;
    while let Some(e) = q.try_pop() {
        n += e.payload.items();
    }
    n
}

#[tokio::test]
async fn exporter_sends_over_tls_to_tls_receivers() {
    let p = peer().await;
    for (protocol, addr, host) in [
        (Protocol::Grpc, p.grpc, "localhost"),
        (Protocol::Grpc, p.grpc, "127.0.0.1"),
        (Protocol::Http, p.http, "localhost"),
        (Protocol::Http, p.http, "127.0.0.1"),
    ] {
        let url = format!("https://{host}:{}", addr.port());
        let c = client(url.clone(), protocol, Some(ca(&p, "cert.pem")));
        let o = send(&c, 3).await;
        assert!(delivered(&o), "{protocol:?} {url}: {o:?}");
        assert_eq!(drain(&p.queue), 3, "{protocol:?} {url}");
    }
    p.cancel.cancel();
}

#[tokio::test]
async fn insecure_skip_verify_accepts_the_self_signed_certificate() {
    let p = peer().await;
    let tls = || {
        ClientTls::load(&ClientTlsFiles {
            insecure_skip_verify: true,
            ..Default::default()
        })
        .expect("tls")
    };
    for (protocol, addr) in [(Protocol::Grpc, p.grpc), (Protocol::Http, p.http)] {
        let c = client(
            format!("https://localhost:{}", addr.port()),
            protocol,
            Some(tls()),
        );
        let o = send(&c, 2).await;
        assert!(delivered(&o), "{protocol:?}: {o:?}");
        assert_eq!(drain(&p.queue), 2);
    }
    p.cancel.cancel();
}

#[tokio::test]
async fn a_wrong_ca_is_refused_with_a_tls_error() {
    let p = peer().await;
    for (protocol, addr) in [(Protocol::Grpc, p.grpc), (Protocol::Http, p.http)] {
        let c = client(
            format!("https://localhost:{}", addr.port()),
            protocol,
            Some(ca(&p, "other-ca.pem")),
        );
        match send(&c, 2).await {
            Outcome::Retry {
                reason, message, ..
            } => {
                assert_eq!(reason, "tls", "{protocol:?}: {message}");
                assert!(
                    message.contains("TLS") && message.to_lowercase().contains("certificate"),
                    "{protocol:?}: a clear message, got {message}"
                );
            }
            other => panic!("{protocol:?}: expected a TLS failure, got {other:?}"),
        }
        // Plain text to a TLS listener fails too (a connection error, not a delivery).
        let plain = client(format!("http://127.0.0.1:{}", addr.port()), protocol, None);
        assert!(!delivered(&send(&plain, 1).await), "{protocol:?}");
    }
    assert_eq!(drain(&p.queue), 0, "nothing arrived");
    p.cancel.cancel();
}

#[test]
fn bad_tls_material_is_a_load_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = rcgen::generate_simple_self_signed(vec!["a".into()]).expect("cert");
    let b = rcgen::generate_simple_self_signed(vec!["b".into()]).expect("cert");
    std::fs::write(dir.path().join("a.pem"), a.cert.pem()).expect("write");
    std::fs::write(dir.path().join("b.key"), b.signing_key.serialize_pem()).expect("write");
    std::fs::write(dir.path().join("junk.pem"), "junk").expect("write");
    let load = |f: ClientTlsFiles| ClientTls::load(&f).map(|_| ()).map_err(|e| e.to_string());
    let ca = Some(dir.path().join("a.pem"));
    // A client certificate whose key is another's.
    let e = load(ClientTlsFiles {
        ca_file: ca.clone(),
        cert_file: Some(dir.path().join("a.pem")),
        key_file: Some(dir.path().join("b.key")),
        ..Default::default()
    });
    assert!(e.is_err(), "{e:?}");
    assert!(matches!(
        ClientTls::load(&ClientTlsFiles {
            ca_file: ca.clone(),
            cert_file: Some(dir.path().join("a.pem")),
            ..Default::default()
        }),
        Err(TlsError::HalfIdentity)
    ));
    let e = load(ClientTlsFiles {
        ca_file: Some(dir.path().join("junk.pem")),
        ..Default::default()
    })
    .expect_err("junk");
    assert!(e.contains("junk.pem"), "{e}");
    let e = load(ClientTlsFiles {
        ca_file: Some(dir.path().join("missing.pem")),
        ..Default::default()
    })
    .expect_err("missing");
    assert!(e.contains("missing.pem"), "{e}");
}

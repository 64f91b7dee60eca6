//! The client against loopback servers: TLS with a test CA (server verified, a wrong CA
//! refused as a TLS error, a client certificate presented to a server that requires one), the
//! response-size limit, the timeout, and a plain `http://` client refusing `https://`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;

use super::tls::{ClientTls, ClientTlsFiles};
use super::*;

/// A CA, a server certificate for localhost / 127.0.0.1 and a client certificate it signed,
/// and a second, unrelated CA; all written as PEM into `dir`.
struct Pki {
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
    ca: CertificateDer<'static>,
}

fn pki(dir: &Path) -> Pki {
    let ca_params = |name: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, name.to_owned());
        p
    };
    let ca = CertifiedIssuer::self_signed(ca_params("test CA"), KeyPair::generate().expect("key"))
        .expect("ca");
    let other =
        CertifiedIssuer::self_signed(ca_params("other CA"), KeyPair::generate().expect("key"))
            .expect("ca");
    let server_key = KeyPair::generate().expect("key");
    let server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("params")
        .signed_by(&server_key, &ca)
        .expect("server cert");
    let client_key = KeyPair::generate().expect("key");
    let client = CertificateParams::new(vec!["sidelight".into()])
        .expect("params")
        .signed_by(&client_key, &ca)
        .expect("client cert");
    let write = |name: &str, text: String| std::fs::write(dir.join(name), text).expect("write");
    write("ca.pem", ca.pem());
    write("other-ca.pem", other.pem());
    write("client.pem", client.pem());
    write("client-key.pem", client_key.serialize_pem());
    Pki {
        server_chain: vec![server.der().clone()],
        server_key: PrivateKeyDer::from_pem_slice(server_key.serialize_pem().as_bytes())
            .expect("key"),
        ca: ca.der().clone(),
    }
}

fn server_config(p: &Pki, require_client_cert: bool) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = if require_client_cert {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(p.ca.clone()).expect("root");
        builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("verifier"),
        )
    } else {
        builder.with_no_client_auth()
    };
    Arc::new(
        builder
            .with_single_cert(p.server_chain.clone(), p.server_key.clone_key())
            .expect("server config"),
    )
}

/// What the loopback server does with a request.
#[derive(Clone, Copy)]
enum Answer {
    /// `200 OK` with this many body bytes.
    Ok(usize),
    /// Reads the request and never answers.
    Silent,
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, a: Answer) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    match a {
        Answer::Ok(n) => {
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {n}\r\n\r\n");
            if s.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = vec![b'x'; 64 * 1024];
            let mut left = n;
            while left > 0 {
                let k = left.min(chunk.len());
                if s.write_all(&chunk[..k]).await.is_err() {
                    return;
                }
                left -= k;
            }
            let _ = s.flush().await;
        }
        Answer::Silent => tokio::time::sleep(Duration::from_secs(30)).await,
    }
}

/// Serves every connection with `a`, over TLS when `tls` is given.
async fn serve(tls: Option<Arc<rustls::ServerConfig>>, a: Answer) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => answer(tcp, a).await,
                    Some(cfg) => {
                        if let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await {
                            answer(s, a).await;
                        }
                    }
                }
            });
        }
    });
    addr
}

fn client(tls: Option<ClientTls>, timeout: Duration, max: usize) -> HttpClient {
    HttpClient::new(&ClientOptions {
        tls: tls.map(Arc::new),
        timeout,
        max_response_bytes: max,
    })
    .expect("client")
}

fn get(url: String) -> Request<Bytes> {
    Request::get(url).body(Bytes::new()).expect("request")
}

fn files(dir: &Path, ca: &str, client_cert: bool) -> ClientTlsFiles {
    ClientTlsFiles {
        ca_file: Some(dir.join(ca)),
        cert_file: client_cert.then(|| dir.join("client.pem")),
        key_file: client_cert.then(|| dir.join("client-key.pem")),
        insecure_skip_verify: false,
    }
}

#[tokio::test]
async fn https_with_a_test_ca_verifies_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = pki(dir.path());
    let addr = serve(Some(server_config(&p, false)), Answer::Ok(5)).await;
    let ok = client(
        Some(ClientTls::load(&files(dir.path(), "ca.pem", false)).expect("tls")),
        Duration::from_secs(5),
        1024,
    );
    for host in ["localhost", "127.0.0.1"] {
        let r = ok
            .send(get(format!("https://{host}:{}/", addr.port())))
            .await
            .expect("answer");
        assert_eq!(r.status, StatusCode::OK, "{host}");
        assert_eq!(&r.body[..], b"xxxxx");
        assert!(!r.truncated);
    }
    // A CA that did not sign the server's certificate: a TLS error, named as such.
    let wrong = client(
        Some(ClientTls::load(&files(dir.path(), "other-ca.pem", false)).expect("tls")),
        Duration::from_secs(5),
        1024,
    );
    let e = wrong
        .send(get(format!("https://localhost:{}/", addr.port())))
        .await
        .expect_err("unknown issuer");
    assert!(e.is_tls(), "{e}");
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    // Skipping verification accepts it (tests against self-signed peers).
    let insecure = client(
        Some(
            ClientTls::load(&ClientTlsFiles {
                insecure_skip_verify: true,
                ..Default::default()
            })
            .expect("tls"),
        ),
        Duration::from_secs(5),
        1024,
    );
    let r = insecure
        .send(get(format!("https://localhost:{}/", addr.port())))
        .await
        .expect("answer");
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn a_client_certificate_is_presented_when_configured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = pki(dir.path());
    let addr = serve(Some(server_config(&p, true)), Answer::Ok(2)).await;
    let url = format!("https://localhost:{}/", addr.port());
    let with = client(
        Some(ClientTls::load(&files(dir.path(), "ca.pem", true)).expect("tls")),
        Duration::from_secs(5),
        1024,
    );
    let r = with.send(get(url.clone())).await.expect("mTLS answer");
    assert_eq!(r.status, StatusCode::OK);
    let without = client(
        Some(ClientTls::load(&files(dir.path(), "ca.pem", false)).expect("tls")),
        Duration::from_secs(5),
        1024,
    );
    let e = without
        .send(get(url))
        .await
        .expect_err("the server requires a certificate");
    // TLS 1.3: the server's refusal arrives after the client's handshake completed, so it may
    // surface as an alert (TLS) or as a closed connection; either way there is no answer.
    assert!(
        matches!(e, RequestError::Tls(_) | RequestError::Connection(_)),
        "{e}"
    );
}

#[tokio::test]
async fn a_body_beyond_the_limit_is_cut_and_marked() {
    let addr = serve(None, Answer::Ok(1 << 20)).await;
    let c = client(None, Duration::from_secs(5), 1000);
    let r = c
        .send(get(format!("http://127.0.0.1:{}/", addr.port())))
        .await
        .expect("answer");
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.truncated);
    assert_eq!(r.body.len(), 1000);
    // Within the limit: whole and unmarked.
    let c = client(None, Duration::from_secs(5), 2 << 20);
    let r = c
        .send(get(format!("http://127.0.0.1:{}/", addr.port())))
        .await
        .expect("answer");
    assert!(!r.truncated);
    assert_eq!(r.body.len(), 1 << 20);
}

#[tokio::test]
async fn a_silent_server_times_out() {
    let addr = serve(None, Answer::Silent).await;
    let c = client(None, Duration::from_millis(300), 1000);
    let started = std::time::Instant::now();
    let e = c
        .send(get(format!("http://127.0.0.1:{}/", addr.port())))
        .await
        .expect_err("no answer");
    assert!(
        matches!(e, RequestError::Timeout(d) if d == Duration::from_millis(300)),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn refused_connections_and_https_without_tls_are_errors() {
    let c = client(None, Duration::from_secs(5), 1000);
    let e = c
        .send(get("https://127.0.0.1:1/".into()))
        .await
        .expect_err("no TLS settings");
    assert!(matches!(e, RequestError::NoTls), "{e}");
    // A port nobody listens on.
    let free = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = free.local_addr().expect("addr").port();
    drop(free);
    let e = c
        .send(get(format!("http://127.0.0.1:{port}/")))
        .await
        .expect_err("refused");
    assert!(matches!(e, RequestError::Connection(_)), "{e}");
    assert!(!e.is_tls());
}

//! The one TLS configuration of every outgoing connection, with rustls on the `ring` provider:
//! the system's root certificates or a CA file, an optional client certificate (mTLS), and —
//! for tests against self-signed peers only — `insecure_skip_verify`.
//!
//! HTTP (OTLP/HTTP, remote write, Teams, webhooks, Slack, the CLI) goes through
//! [`super::HttpClient`]'s connector; OTLP/gRPC through [`TlsConnector`] (a tower connector
//! tonic's channel dials through, ALPN `h2`). Both take their rustls configuration from
//! [`ClientTls::rustls_config`]; the files are loaded once at build time, so a bad file is a
//! configuration error, not a send failure.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{DigitallySignedStruct, SignatureScheme};

/// Where the client's TLS material is (paths already resolved against the config file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// PEM CA certificates that replace the system roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain (mTLS), leaf first; with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate (tests only: no protection against interception).
    pub insecure_skip_verify: bool,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// No root certificates at all.
    #[error("no system root certificates could be loaded: set tls.ca_file")]
    NoRoots,
    /// `cert_file` without `key_file` or the other way round.
    #[error("cert_file and key_file go together (mTLS)")]
    HalfIdentity,
    /// rustls refused the configuration (e.g. the key does not fit the certificate).
    #[error("{0}")]
    Config(String),
    /// The server name cannot be a TLS server name.
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
}

/// Loaded TLS material for one exporter.
pub struct ClientTls {
    roots: Vec<CertificateDer<'static>>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    insecure: bool,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("roots", &self.roots.len())
            .field("client_certificate", &self.identity.is_some())
            .field("insecure_skip_verify", &self.insecure)
            .finish()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::File {
            path: path.to_owned(),
            message: format!("not PEM certificates: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::File {
            path: path.to_owned(),
            message: "holds no certificate".into(),
        });
    }
    Ok(certs)
}

impl ClientTls {
    /// Reads the files (or the system roots) and checks that rustls accepts them.
    pub fn load(files: &ClientTlsFiles) -> Result<Self, TlsError> {
        let roots = match &files.ca_file {
            Some(p) => certs(p)?,
            None if files.insecure_skip_verify => Vec::new(),
            None => {
                let found = rustls_native_certs::load_native_certs();
                if found.certs.is_empty() {
                    return Err(TlsError::NoRoots);
                }
                found.certs
            }
        };
        let identity = match (&files.cert_file, &files.key_file) {
            (None, None) => None,
            (Some(c), Some(k)) => {
                let chain = certs(c)?;
                let key_pem = read(k)?;
                let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::File {
                    path: k.clone(),
                    message: format!("not a PEM private key: {e}"),
                })?;
                Some((chain, key))
            }
            _ => return Err(TlsError::HalfIdentity),
        };
        let tls = Self {
            roots,
            identity,
            insecure: files.insecure_skip_verify,
        };
        tls.rustls_config(&[])?;
        Ok(tls)
    }

    /// A rustls client configuration offering `alpn`.
    pub fn rustls_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = if self.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
        } else {
            let mut store = rustls::RootCertStore::empty();
            let (added, _ignored) = store.add_parsable_certificates(self.roots.iter().cloned());
            if added == 0 {
                return Err(TlsError::NoRoots);
            }
            builder.with_root_certificates(store)
        };
        let mut config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| TlsError::Config(format!("client certificate: {e}")))?,
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

/// Accepts any certificate, still checking that the handshake is signed by its key.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS handshake that failed (the chain names the rustls error).
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake: {0}")]
pub struct HandshakeError(#[source] pub std::io::Error);

/// Dials TCP and completes a TLS handshake (ALPN `h2`) for tonic's channel.
#[derive(Clone)]
pub struct TlsConnector {
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
    addr: (String, u16),
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl TlsConnector {
    /// A connector to `host:port` verifying the certificate for `host`.
    pub fn new(tls: &ClientTls, host: &str, port: u16) -> Result<Self, TlsError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(bare.to_owned())
            .map_err(|_| TlsError::ServerName(bare.to_owned()))?;
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(tls.rustls_config(&[b"h2"])?),
            server_name,
            addr: (bare.to_owned(), port),
        })
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect((this.addr.0.as_str(), this.addr.1)).await?;
            let _ = tcp.set_nodelay(true);
            let tls = this
                .connector
                .connect(this.server_name.clone(), tcp)
                .await
                .map_err(HandshakeError)?;
            Ok(TokioIo::new(tls))
        })
    }
}

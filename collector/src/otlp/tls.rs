//! TLS for both listeners from PEM files (certificate chain + private key), with rustls on the
//! `ring` provider. ALPN offers `h2` and `http/1.1`, so gRPC and OTLP/HTTP clients both agree.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::OtlpError;

/// Where the certificate chain and its key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// Reads both files and builds the acceptor (also used to validate a configuration).
pub fn load(files: &TlsFiles) -> Result<TlsAcceptor, OtlpError> {
    let err = |path: &PathBuf, message: String| OtlpError::Tls {
        path: path.clone(),
        message,
    };
    let cert_pem =
        std::fs::read(&files.cert_file).map_err(|e| err(&files.cert_file, e.to_string()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            err(
                &files.cert_file,
                format!("not a PEM certificate chain: {e}"),
            )
        })?;
    if certs.is_empty() {
        return Err(err(&files.cert_file, "holds no certificate".into()));
    }
    let key_pem =
        std::fs::read(&files.key_file).map_err(|e| err(&files.key_file, e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| err(&files.key_file, format!("not a PEM private key: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| err(&files.cert_file, e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| {
        err(
            &files.key_file,
            format!("does not fit the certificate: {e}"),
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

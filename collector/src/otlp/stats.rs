//! Self-metrics of the receivers, shared by both (one [`ReceiverStats`] per agent), labelled
//! `receiver` (`otlp_grpc`, `otlp_http`) and `signal` (`traces`, `metrics`, `logs`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::pipeline::Signal;

type L2 = [(&'static str, &'static str); 2];
type L3 = [(&'static str, &'static str); 3];

/// Which receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receiver {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP.
    Http,
}

impl Receiver {
    /// The `receiver` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Receiver::Grpc => "otlp_grpc",
            Receiver::Http => "otlp_http",
        }
    }
}

/// Why a request was refused (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The intake queue was full (retryable: 503 / UNAVAILABLE).
    Full,
    /// The agent was stopping (retryable).
    Closed,
    /// Over `max_request_bytes`, compressed or decompressed (413 / RESOURCE_EXHAUSTED).
    TooLarge,
    /// Undecodable protobuf or JSON, corrupt compression (400 / INVALID_ARGUMENT).
    BadRequest,
    /// Missing or wrong bearer token (401 / UNAUTHENTICATED).
    Unauthenticated,
    /// Neither `application/x-protobuf` nor `application/json` (415).
    UnsupportedMediaType,
    /// A content or message encoding we do not decode (415 / UNIMPLEMENTED).
    UnsupportedEncoding,
}

impl Reason {
    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Full => "full",
            Reason::Closed => "closed",
            Reason::TooLarge => "too_large",
            Reason::BadRequest => "bad_request",
            Reason::Unauthenticated => "unauthenticated",
            Reason::UnsupportedMediaType => "unsupported_media_type",
            Reason::UnsupportedEncoding => "unsupported_encoding",
        }
    }
}

/// Counters of both receivers.
#[derive(Debug, Clone, Default)]
pub struct ReceiverStats {
    /// `sidelight_receiver_accepted_total{receiver,signal}`: spans, data points, log records.
    pub accepted: Family<L2, Counter>,
    /// `sidelight_receiver_refused_total{receiver,signal,reason}`: requests refused.
    pub refused: Family<L3, Counter>,
    /// `sidelight_receiver_bytes_total{receiver,signal}`: request bytes as received (compressed).
    pub bytes: Family<L2, Counter>,
    /// `sidelight_receiver_requests_total{receiver,signal,code}`: requests answered, by HTTP
    /// status or gRPC code name.
    pub requests: Family<L3, Counter>,
    /// Connection counts of both listeners; registered by its owner (the agent shares one
    /// [`ConnectionStats`] between the receivers and its HTTP surface), not by
    /// [`ReceiverStats::register`].
    pub connections: super::serve::ConnectionStats,
    /// `sidelight_receiver_redactions_total{signal}`: secrets replaced in received data.
    pub redactions: Family<[(&'static str, &'static str); 1], Counter>,
    /// `sidelight_receiver_tls_handshake_failures_total{receiver,reason}`: connections whose TLS
    /// handshake failed, by [`HandshakeFailure`].
    pub tls_handshake_failures: Family<L2, Counter>,
}

/// Why a TLS handshake on a receiver failed (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The client does not trust our certificate's issuer (it sent `unknown_ca`), or, with
    /// client certificates, we do not trust the client's.
    UnknownCa,
    /// A certificate was refused otherwise: expired, wrong name, unsupported, revoked (by the
    /// client's alert or our check of a client certificate).
    BadCertificate,
    /// A client certificate was required and none was presented.
    NoClientCert,
    /// Not TLS, or TLS we do not speak: plain text on a TLS port, no common version, cipher or
    /// ALPN protocol, a malformed or unexpected message.
    Protocol,
    /// The client sent nothing within the handshake timeout.
    Timeout,
    /// Anything else (the connection closed or reset mid-handshake).
    Other,
}

impl HandshakeFailure {
    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::UnknownCa => "unknown_ca",
            HandshakeFailure::BadCertificate => "bad_certificate",
            HandshakeFailure::NoClientCert => "no_client_cert",
            HandshakeFailure::Protocol => "protocol",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Other => "other",
        }
    }

    /// Classifies the error `tokio-rustls` returns from a failed accept.
    pub fn of(e: &std::io::Error) -> Self {
        use tokio_rustls::rustls::{AlertDescription as A, CertificateError as C, Error as E};
        let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<E>()) else {
            return HandshakeFailure::Other;
        };
        match tls {
            E::AlertReceived(A::UnknownCA) | E::InvalidCertificate(C::UnknownIssuer) => {
                HandshakeFailure::UnknownCa
            }
            E::AlertReceived(
                A::BadCertificate
                | A::CertificateUnknown
                | A::CertificateExpired
                | A::CertificateRevoked
                | A::UnsupportedCertificate
                | A::AccessDenied
                // The client could not verify a signature of our chain (a CA of the same name
                // but another key, for one).
                | A::DecryptError,
            )
            | E::InvalidCertificate(_) => HandshakeFailure::BadCertificate,
            E::NoCertificatesPresented => HandshakeFailure::NoClientCert,
            E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. }
            | E::InvalidMessage(_)
            | E::PeerIncompatible(_)
            | E::PeerMisbehaved(_)
            | E::NoApplicationProtocol
            | E::DecryptError
            | E::PeerSentOversizedRecord
            | E::AlertReceived(_) => HandshakeFailure::Protocol,
            _ => HandshakeFailure::Other,
        }
    }
}

impl ReceiverStats {
    pub(crate) fn accepted(&self, r: Receiver, s: Signal, items: usize) {
        self.accepted
            .get_or_create(&[("receiver", r.as_str()), ("signal", s.as_str())])
            .inc_by(items as u64);
    }

    pub(crate) fn refused(&self, r: Receiver, s: Signal, reason: Reason) {
        self.refused
            .get_or_create(&[
                ("receiver", r.as_str()),
                ("signal", s.as_str()),
                ("reason", reason.as_str()),
            ])
            .inc();
    }

    pub(crate) fn redacted(&self, s: Signal, n: u64) {
        self.redactions
            .get_or_create(&[("signal", s.as_str())])
            .inc_by(n);
    }

    pub(crate) fn handshake_failed(&self, r: Receiver, why: HandshakeFailure) {
        self.tls_handshake_failures
            .get_or_create(&[("receiver", r.as_str()), ("reason", why.as_str())])
            .inc();
    }

    pub(crate) fn bytes_counter(&self, r: Receiver, s: Signal) -> Counter {
        self.bytes
            .get_or_create_owned(&[("receiver", r.as_str()), ("signal", s.as_str())])
    }

    pub(crate) fn request(&self, r: Receiver, s: Signal, code: &'static str) {
        self.requests
            .get_or_create(&[
                ("receiver", r.as_str()),
                ("signal", s.as_str()),
                ("code", code),
            ])
            .inc();
    }

    /// Registers every family.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sidelight_receiver_accepted",
            "Items (spans, data points, log records) accepted by an OTLP receiver",
            self.accepted.clone(),
        );
        registry.register(
            "sidelight_receiver_refused",
            "Requests refused by an OTLP receiver, by reason",
            self.refused.clone(),
        );
        registry.register(
            "sidelight_receiver_bytes",
            "Request body bytes received by an OTLP receiver, as sent (compressed)",
            self.bytes.clone(),
        );
        registry.register(
            "sidelight_receiver_requests",
            "Requests answered by an OTLP receiver, by HTTP status or gRPC code",
            self.requests.clone(),
        );
        registry.register(
            "sidelight_receiver_redactions",
            "Secrets replaced by [REDACTED] in received traces and logs",
            self.redactions.clone(),
        );
        registry.register(
            "sidelight_receiver_tls_handshake_failures",
            "TLS handshakes that failed on an OTLP receiver, by reason",
            self.tls_handshake_failures.clone(),
        );
    }
}

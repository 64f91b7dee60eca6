//! The HTTP surface on one listener: `GET /metrics` (Prometheus text, or OpenMetrics when the
//! scraper asks for it), `GET /healthz`, `GET /readyz`, `POST /-/reload` (`reload.rs`); a
//! request body limit on every route, optional bearer-token auth on everything but the probes,
//! and 404 for unknown paths. With
//! `dora.enabled` it also mounts the DORA API and webhooks (see `api.rs`): the API and the
//! Alertmanager hook sit behind the bearer token; GitHub and GitLab hooks check their own
//! signatures instead.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use parking_lot::{Mutex, RwLock};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use sidelight_collector::exposition::{self, Format};
use subtle::ConstantTimeEq;

use crate::config::common::{ConfigError, Env, RawBearerAuth, Secret, duration};

pub use sidelight_collector::exposition::{OPENMETRICS, PROMETHEUS_TEXT};

/// Components that must have started before `/readyz` answers 200.
#[derive(Debug, Default)]
pub struct Readiness(Mutex<BTreeMap<&'static str, bool>>);

impl Readiness {
    /// Declares a component that is not ready yet.
    pub fn expect(&self, component: &'static str) {
        self.0.lock().entry(component).or_insert(false);
    }

    /// Marks a component ready.
    pub fn ready(&self, component: &'static str) {
        self.0.lock().insert(component, true);
    }

    /// The components not ready yet.
    pub fn pending(&self) -> Vec<&'static str> {
        self.0
            .lock()
            .iter()
            .filter(|(_, ready)| !**ready)
            .map(|(name, _)| *name)
            .collect()
    }
}

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// Every metric the agent exposes.
    pub registry: Arc<Registry>,
    /// Startup progress.
    pub readiness: Arc<Readiness>,
    /// Time spent encoding `/metrics`.
    pub scrape_duration: Histogram,
    /// Accepted bearer tokens (empty: no auth); replaced on reload.
    pub tokens: Arc<RwLock<Vec<Secret>>>,
    /// The DORA hub, when `dora.enabled`.
    pub dora: Option<Arc<crate::hub::Hub>>,
    /// Alert rules and notifiers, when `alerts:` / `notifiers:` are configured.
    pub alerting: Option<Arc<crate::alerting::Alerting>>,
    /// Where `POST /-/reload` sends its requests (none: the route answers 404).
    pub reload: Option<crate::reload::Reloader>,
}

impl axum::extract::FromRef<HttpState> for crate::api::DoraApiState {
    fn from_ref(state: &HttpState) -> Self {
        Self {
            dora: state.dora.clone(),
        }
    }
}

impl axum::extract::FromRef<HttpState> for crate::reload::ReloadState {
    fn from_ref(state: &HttpState) -> Self {
        Self(state.reload.clone())
    }
}

impl axum::extract::FromRef<HttpState> for crate::alerting::api::AlertsApiState {
    fn from_ref(state: &HttpState) -> Self {
        Self {
            alerting: state.alerting.clone(),
        }
    }
}

/// The router with every route and limit.
pub fn router(
    state: HttpState,
    max_body_bytes: usize,
    request_timeout: std::time::Duration,
) -> Router {
    let mut protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/-/reload", post(crate::reload::handle));
    let mut open = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/openapi.json", get(openapi));
    if state.dora.is_some() {
        use crate::api;
        protected = protected
            .route(
                "/api/v1/deployments",
                post(api::post_deployment).get(api::get_deployments),
            )
            .route("/api/v1/incidents", post(api::post_incident))
            .route("/api/v1/dora", get(api::get_report))
            .route("/webhooks/alertmanager", post(api::alertmanager));
        open = open
            .route("/webhooks/github", post(api::github))
            .route("/webhooks/gitlab", post(api::gitlab));
    }
    if state.alerting.is_some() {
        use crate::alerting::api as alerts;
        protected = protected
            .route("/api/v1/alerts", get(alerts::get_alerts))
            .route("/api/v1/rules", get(alerts::get_rules))
            .route(
                "/api/v1/silences",
                get(alerts::get_silences).post(alerts::post_silence),
            )
            .route("/api/v1/silences/{id}", delete(alerts::delete_silence));
        open = open
            .route("/chatops/slack/commands", post(alerts::slack_command))
            .route(
                "/chatops/slack/interactions",
                post(alerts::slack_interaction),
            );
    }
    let protected =
        protected.route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    open.merge(protected)
        .fallback(not_found)
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            max_body_bytes,
        ))
        .with_state(state)
}

/// The OpenAPI 3.1 document of every route (`GET /api/v1/openapi.json`).
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<HttpState>) -> Response {
    let pending = state.readiness.pending();
    if pending.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", pending.join(", ")),
        )
            .into_response()
    }
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

async fn require_token(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    let tokens = state.tokens.read().clone();
    if tokens.is_empty() {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| sidelight_collector::otlp::bearer_credentials(v.as_bytes()));
    if let Some(presented) = presented
        && token_matches(&tokens, presented)
    {
        return next.run(request).await;
    }
    let mut response =
        (StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n").into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Compares against every accepted token in constant time (per token), without early exit.
fn token_matches(tokens: &[Secret], presented: &[u8]) -> bool {
    let mut ok = subtle::Choice::from(0u8);
    for t in tokens {
        ok |= t.expose().as_bytes().ct_eq(presented);
    }
    ok.into()
}

async fn metrics(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    let started = Instant::now();
    let format = Format::from_accept(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let body = match exposition::encode_body(&state.registry, format) {
        Ok(body) => body,
        Err(e) => {
            tracing::error!(error = %e, "encoding /metrics failed");
            return (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n").into_response();
        }
    };
    let gzipped = (body.len() >= GZIP_FROM_BYTES && accepts_gzip(&headers))
        .then(|| gzip(&body))
        .flatten();
    state
        .scrape_duration
        .observe(started.elapsed().as_secs_f64());
    let vary = (header::VARY, HeaderValue::from_static("accept-encoding"));
    let content_type = (
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    match gzipped {
        Some(gz) => (
            [
                content_type,
                vary,
                (header::CONTENT_ENCODING, HeaderValue::from_static("gzip")),
            ],
            gz,
        )
            .into_response(),
        None => (
            [content_type, vary],
            axum::body::Body::new(Pieces::new(body.into_bytes())),
        )
            .into_response(),
    }
}

/// A response body sent from the buffers the exposition was written to, one frame each, without
/// joining them; its exact size is known, so the response carries a `Content-Length`.
struct Pieces {
    pieces: std::collections::VecDeque<bytes::Bytes>,
    remaining: u64,
}

impl Pieces {
    fn new(pieces: Vec<bytes::Bytes>) -> Self {
        let pieces: std::collections::VecDeque<_> =
            pieces.into_iter().filter(|p| !p.is_empty()).collect();
        let remaining = pieces.iter().map(|p| p.len() as u64).sum();
        Pieces { pieces, remaining }
    }
}

impl http_body::Body for Pieces {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let next = self.pieces.pop_front();
        if let Some(piece) = &next {
            self.remaining -= piece.len() as u64;
        }
        std::task::Poll::Ready(next.map(|p| Ok(http_body::Frame::data(p))))
    }

    fn is_end_stream(&self) -> bool {
        self.pieces.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

/// Bodies smaller than this are served as they are even to a scraper that accepts gzip.
const GZIP_FROM_BYTES: usize = 64 * 1024;

/// Whether an `Accept-Encoding` header accepts gzip: `gzip` (or `x-gzip`, or `*` when gzip is not
/// named) with a q-value above 0 (RFC 9110 §12.5.3).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let (mut gzip, mut any) = (None, None);
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or_default().trim();
            let q = parts
                .find_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    k.trim().eq_ignore_ascii_case("q").then(|| v.trim())
                })
                .map_or(1.0, |q| q.parse::<f32>().unwrap_or(0.0));
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                gzip = Some(q > 0.0);
            } else if coding == "*" {
                any = Some(q > 0.0);
            }
        }
    }
    gzip.or(any).unwrap_or(false)
}

/// `body` gzipped at the fastest level (`None` if that failed: the body is served as it is).
fn gzip(body: &exposition::Body) -> Option<Vec<u8>> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 8),
        flate2::Compression::fast(),
    );
    for piece in body.pieces() {
        encoder.write_all(piece.as_bytes()).ok()?;
    }
    encoder.finish().ok()
}

// ---------------------------------------------------------------------------------------------
// The `http:` section.

/// `http:` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RawHttp {
    listen: String,
    max_body_bytes: usize,
    #[serde(with = "duration")]
    request_timeout: Duration,
    max_connections: usize,
    auth: RawBearerAuth,
}

impl Default for RawHttp {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
            max_body_bytes: 1 << 20,
            request_timeout: Duration::from_secs(30),
            max_connections: 256,
            auth: RawBearerAuth::default(),
        }
    }
}

/// `http:` section, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Largest request body accepted (after decompression), in bytes.
    pub max_body_bytes: usize,
    /// Longest time one request may take.
    pub request_timeout: Duration,
    /// Open connections at most (more are closed on accept and counted).
    pub max_connections: usize,
    /// Accepted bearer tokens for non-probe endpoints; empty means no authentication.
    pub bearer_tokens: Vec<Secret>,
}

/// Validates `http:`, adding every problem to `errors`.
pub fn validate(
    raw: RawHttp,
    base: &Path,
    env: &dyn Env,
    errors: &mut Vec<ConfigError>,
) -> HttpConfig {
    let listen = match raw.listen.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            errors.push(ConfigError::new(
                "http.listen",
                format!("{:?} is not an address like 127.0.0.1:9464", raw.listen),
            ));
            SocketAddr::from(([127, 0, 0, 1], 9464))
        }
    };
    if raw.max_body_bytes < 1024 {
        errors.push(ConfigError::new(
            "http.max_body_bytes",
            "must be at least 1024",
        ));
    }
    if raw.request_timeout.is_zero() {
        errors.push(ConfigError::new(
            "http.request_timeout",
            "must be greater than 0",
        ));
    }
    if raw.max_connections == 0 || raw.max_connections > 65_536 {
        errors.push(ConfigError::new(
            "http.max_connections",
            "must be between 1 and 65536",
        ));
    }
    let bearer_tokens = raw.auth.tokens("http.auth", false, base, env, errors);
    HttpConfig {
        listen,
        max_body_bytes: raw.max_body_bytes,
        request_timeout: raw.request_timeout,
        max_connections: raw.max_connections,
        bearer_tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    fn state(tokens: Vec<Secret>) -> HttpState {
        let mut registry = Registry::default();
        let c = prometheus_client::metrics::counter::Counter::<u64>::default();
        c.inc();
        registry.register("demo_requests", "Requests.", c);
        HttpState {
            registry: Arc::new(registry),
            readiness: Arc::new(Readiness::default()),
            scrape_duration: Histogram::new([0.01]),
            tokens: Arc::new(RwLock::new(tokens)),
            dora: None,
            alerting: None,
            reload: None,
        }
    }

    async fn call(router: Router, req: Request<Body>) -> (StatusCode, HeaderMap, String) {
        let resp = router.oneshot(req).await.expect("infallible");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body");
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    fn get(path: &str) -> axum::http::request::Builder {
        Request::builder().uri(path)
    }

    /// Every `.route(path, method(..)...)` this file mounts, as (METHOD, path).
    fn mounted_routes() -> std::collections::BTreeSet<(String, String)> {
        let src = include_str!("http.rs");
        // The code, not these tests.
        let src = src.split("#[cfg(test)]").next().unwrap_or(src);
        let mut out = std::collections::BTreeSet::new();
        let mut rest = src;
        while let Some(at) = rest.find(".route(") {
            rest = &rest[at + ".route(".len()..];
            let Some(path) = rest
                .trim_start()
                .strip_prefix('"')
                .and_then(|r| r.split('"').next())
            else {
                continue;
            };
            // The handlers: up to the call's closing parenthesis.
            let mut depth = 1;
            let end = rest
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map_or(rest.len(), |(i, _)| i);
            let call = &rest[..end];
            for method in ["get", "post", "put", "delete", "patch"] {
                let called = call.match_indices(&format!("{method}(")).any(|(i, _)| {
                    i == 0
                        || !call[..i]
                            .chars()
                            .next_back()
                            .is_some_and(|c| c.is_alphanumeric() || c == '_')
                });
                if called {
                    out.insert((method.to_uppercase(), path.to_owned()));
                }
            }
        }
        out
    }

    #[test]
    fn the_openapi_document_names_every_route_mounted() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let mut documented = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
        let mounted = mounted_routes();
        assert!(mounted.len() >= 15, "the scan found {mounted:?}");
        let missing: Vec<_> = mounted.difference(&documented).collect();
        assert!(
            missing.is_empty(),
            "routes served but not in agent/src/openapi.json: {missing:?}"
        );
        let stale: Vec<_> = documented.difference(&mounted).collect();
        assert!(
            stale.is_empty(),
            "routes in agent/src/openapi.json that are not served: {stale:?}"
        );
    }

    #[tokio::test]
    async fn metrics_negotiates_the_format() {
        let r = router(state(vec![]), 1 << 20, std::time::Duration::from_secs(5));
        let (status, headers, body) =
            call(r.clone(), get("/metrics").body(Body::empty()).expect("req")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], PROMETHEUS_TEXT);
        assert!(
            body.contains("# TYPE demo_requests_total counter\ndemo_requests_total 1\n"),
            "{body}"
        );
        assert!(!body.contains("# EOF"));
        let req = get("/metrics")
            .header(
                header::ACCEPT,
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
            )
            .body(Body::empty())
            .expect("req");
        let (_, headers, body) = call(r, req).await;
        assert_eq!(headers[header::CONTENT_TYPE], OPENMETRICS);
        assert!(body.ends_with("# EOF\n"));
    }

    /// The exposition's pieces go out one frame each, in order, with the exact size known up
    /// front (so hyper writes a `Content-Length`, not chunks); empty pieces are dropped.
    #[tokio::test]
    async fn the_body_is_sent_in_its_pieces() {
        use http_body::Body as _;
        let parts = ["# HELP a A.\n", "", "a 1\n", "# EOF\n"]
            .map(|p| bytes::Bytes::from_static(p.as_bytes()));
        let mut body = Pieces::new(parts.to_vec());
        assert_eq!(body.size_hint().exact(), Some(22));
        let mut sent = Vec::new();
        while let Some(frame) =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
        {
            let data = frame.expect("infallible").into_data().expect("data");
            assert!(!data.is_empty());
            sent.extend_from_slice(&data);
            assert_eq!(body.size_hint().exact(), Some(22 - sent.len() as u64));
        }
        assert!(body.is_end_stream());
        assert_eq!(sent, b"# HELP a A.\na 1\n# EOF\n");
    }

    /// A scraper that accepts gzip gets a large exposition gzipped (`Vary` says so); a plain
    /// request, a refused gzip (`q=0`) and a small body get plain text.
    #[tokio::test]
    async fn metrics_gzipped_when_asked() {
        use prometheus_client::metrics::family::Family;
        let mut s = state(vec![]);
        let mut registry = Registry::default();
        let family =
            Family::<Vec<(String, String)>, prometheus_client::metrics::gauge::Gauge>::default();
        for i in 0..3000 {
            family
                .get_or_create(&vec![("route".to_owned(), format!("/route/{i}"))])
                .set(i);
        }
        registry.register("demo_routes", "Routes", family);
        s.registry = Arc::new(registry);
        let r = router(s, 1 << 20, std::time::Duration::from_secs(5));
        let fetch = |accept_encoding: Option<&'static str>| {
            let r = r.clone();
            async move {
                let mut req = get("/metrics");
                if let Some(v) = accept_encoding {
                    req = req.header(header::ACCEPT_ENCODING, v);
                }
                let resp = r
                    .oneshot(req.body(Body::empty()).expect("req"))
                    .await
                    .expect("infallible");
                let headers = resp.headers().clone();
                let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
                    .await
                    .expect("body");
                (headers, body)
            }
        };
        let (headers, plain) = fetch(None).await;
        assert!(headers.get(header::CONTENT_ENCODING).is_none());
        assert_eq!(headers[header::VARY], "accept-encoding");
        assert!(plain.len() > GZIP_FROM_BYTES, "{}", plain.len());
        for refused in ["gzip;q=0", "identity", "br", "*;q=0"] {
            let (headers, body) = fetch(Some(refused)).await;
            assert!(headers.get(header::CONTENT_ENCODING).is_none(), "{refused}");
            assert_eq!(body, plain, "{refused}");
        }
        for accepted in [
            "gzip",
            "deflate, gzip;q=1.0, *;q=0.5",
            "br, *",
            "GZIP ; q=0.3",
        ] {
            let (headers, body) = fetch(Some(accepted)).await;
            assert_eq!(headers[header::CONTENT_ENCODING], "gzip", "{accepted}");
            assert_eq!(headers[header::CONTENT_TYPE], PROMETHEUS_TEXT);
            assert!(body.len() < plain.len() / 4, "{accepted}: {}", body.len());
            let mut unzipped = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut unzipped)
                .expect("gunzip");
            assert_eq!(unzipped, plain, "{accepted}");
        }
        // Small bodies are not worth it.
        let small = router(state(vec![]), 1 << 20, std::time::Duration::from_secs(5));
        let req = get("/metrics")
            .header(header::ACCEPT_ENCODING, "gzip")
            .body(Body::empty())
            .expect("req");
        let (_, headers, body) = call(small, req).await;
        assert!(headers.get(header::CONTENT_ENCODING).is_none());
        assert!(body.contains("demo_requests_total 1"), "{body}");
    }

    #[tokio::test]
    async fn probes_unknown_paths_and_limits() {
        let s = state(vec![]);
        s.readiness.expect("host");
        let r = router(s.clone(), 2048, std::time::Duration::from_secs(5));
        assert_eq!(
            call(r.clone(), get("/healthz").body(Body::empty()).expect("req"))
                .await
                .0,
            StatusCode::OK
        );
        let (status, _, body) =
            call(r.clone(), get("/readyz").body(Body::empty()).expect("req")).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "not ready: host\n")
        );
        s.readiness.ready("host");
        assert_eq!(
            call(r.clone(), get("/readyz").body(Body::empty()).expect("req"))
                .await
                .0,
            StatusCode::OK
        );
        assert_eq!(
            call(r.clone(), get("/nope").body(Body::empty()).expect("req"))
                .await
                .0,
            StatusCode::NOT_FOUND
        );
        let big = Request::post("/healthz")
            .header(header::CONTENT_LENGTH, "4096")
            .body(Body::from(vec![0u8; 4096]));
        assert_eq!(
            call(r, big.expect("req")).await.0,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[tokio::test]
    async fn bearer_tokens_guard_metrics_but_not_probes() {
        let r = router(
            state(vec![Secret::for_tests("old"), Secret::for_tests("new")]),
            1 << 20,
            std::time::Duration::from_secs(5),
        );
        let (status, headers, _) =
            call(r.clone(), get("/metrics").body(Body::empty()).expect("req")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
        for (token, want) in [
            ("new", StatusCode::OK),
            ("old", StatusCode::OK),
            ("ol", StatusCode::UNAUTHORIZED),
        ] {
            let req = get("/metrics")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(Body::empty());
            assert_eq!(call(r.clone(), req.expect("req")).await.0, want, "{token}");
        }
        assert_eq!(
            call(r, get("/healthz").body(Body::empty()).expect("req"))
                .await
                .0,
            StatusCode::OK
        );
    }
}

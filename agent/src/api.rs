//! The DORA HTTP endpoints (mounted only with `dora.enabled`):
//!
//! | route | auth | answers |
//! |---|---|---|
//! | `POST /api/v1/deployments` | bearer | 201 new, 200 duplicate, 400 malformed, 503 store down |
//! | `POST /api/v1/incidents` | bearer | 201 changed, 200 no change, 400, 503 |
//! | `GET /api/v1/dora?service=&environment=&window=` | bearer | 200 report JSON, 400 |
//! | `POST /webhooks/alertmanager` | bearer | 202, 400 |
//! | `POST /webhooks/github` | `X-Hub-Signature-256` | 202 (recorded, duplicate or ignored), 401, 400, 404 unconfigured |
//! | `POST /webhooks/gitlab` | `X-Gitlab-Token` | same as GitHub |
//!
//! Signatures are checked on the raw body before it is parsed; a validly signed event that is
//! not used is acknowledged with 202, never refused.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::dora::{Change, DeployStatus, Deployment, DeploymentKind, Incident, Scope, Window};
use crate::hub::{Hub, unix_now};
use crate::store::{Batch, IncidentChange, StoreError};
use crate::webhooks::{self, HookOptions, Parsed};

/// What the DORA handlers read from the HTTP server's state (`http::HttpState` hands it out).
#[derive(Debug, Clone)]
pub struct DoraApiState {
    /// The DORA hub, when `dora.enabled`.
    pub dora: Option<std::sync::Arc<Hub>>,
}

/// A time given as Unix seconds or RFC 3339 text.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TimeIn {
    /// Unix seconds.
    Unix(i64),
    /// RFC 3339.
    Text(String),
}

impl TimeIn {
    fn resolve(&self, field: &str) -> Result<i64, String> {
        match self {
            Self::Unix(s) => Ok(*s),
            Self::Text(t) => webhooks::parse_time(t)
                .ok_or_else(|| format!("{field}: {t:?} is not RFC 3339 or unix seconds")),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommitIn {
    sha: String,
    timestamp: TimeIn,
    #[serde(default)]
    pr_first_commit_at: Option<TimeIn>,
}

/// The body of `POST /api/v1/deployments`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeploymentIn {
    #[serde(default)]
    id: Option<String>,
    service: String,
    #[serde(default)]
    environment: Option<String>,
    #[serde(default)]
    version: String,
    #[serde(default)]
    commit: String,
    #[serde(default)]
    status: DeployStatus,
    #[serde(default)]
    started_at: Option<TimeIn>,
    #[serde(default)]
    finished_at: Option<TimeIn>,
    #[serde(default)]
    commits: Vec<CommitIn>,
    #[serde(default)]
    kind: DeploymentKind,
    #[serde(default)]
    fixes_deployment: Option<String>,
    #[serde(default)]
    resolves_incidents: Vec<String>,
    /// Repository whose pushed commits (from webhooks) this deployment takes, e.g.
    /// `github:octo/api`.
    #[serde(default)]
    repository: Option<String>,
}

/// Converts an API body into a stored deployment; `Err` is the reason for a 400.
fn deployment_from(
    input: DeploymentIn,
    default_env: &str,
    now: i64,
) -> Result<(Deployment, Option<String>), String> {
    if input.service.trim().is_empty() {
        return Err("service must not be empty".into());
    }
    let environment = input.environment.unwrap_or_else(|| default_env.to_owned());
    let finished_at = input
        .finished_at
        .map(|t| t.resolve("finished_at"))
        .transpose()?
        .unwrap_or(now);
    let started_at = input
        .started_at
        .map(|t| t.resolve("started_at"))
        .transpose()?
        .unwrap_or(finished_at);
    if started_at > finished_at {
        return Err("started_at is after finished_at".into());
    }
    let commits = input
        .commits
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            Ok(Change {
                sha: c.sha,
                timestamp: c.timestamp.resolve(&format!("commits[{i}].timestamp"))?,
                pr_first_commit_at: c
                    .pr_first_commit_at
                    .map(|t| t.resolve(&format!("commits[{i}].pr_first_commit_at")))
                    .transpose()?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let id = match input.id.filter(|i| !i.trim().is_empty()) {
        Some(id) => id,
        None if !input.version.is_empty() => {
            format!("{}/{}/{}", input.service, environment, input.version)
        }
        None => format!(
            "{}/{}/{}/{}",
            input.service, environment, finished_at, input.commit
        ),
    };
    Ok((
        Deployment {
            id,
            service: input.service,
            environment,
            version: input.version,
            commit: input.commit,
            status: input.status,
            started_at,
            finished_at,
            commits,
            kind: input.kind,
            fixes_deployment: input.fixes_deployment,
            resolves_incidents: input.resolves_incidents,
        },
        input.repository,
    ))
}

/// The body of `POST /api/v1/incidents`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IncidentIn {
    action: IncidentAction,
    id: String,
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    environment: Option<String>,
    #[serde(default)]
    started_at: Option<TimeIn>,
    #[serde(default)]
    resolved_at: Option<TimeIn>,
    #[serde(default)]
    deployment_id: Option<String>,
    #[serde(default)]
    commit: Option<String>,
    #[serde(default)]
    resolved_by_deployment: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum IncidentAction {
    Open,
    Resolve,
}

fn incident_from(
    input: IncidentIn,
    default_env: &str,
    now: i64,
) -> Result<Vec<IncidentChange>, String> {
    if input.id.trim().is_empty() {
        return Err("id must not be empty".into());
    }
    let resolved_at = input
        .resolved_at
        .map(|t| t.resolve("resolved_at"))
        .transpose()?;
    match input.action {
        IncidentAction::Open => {
            let service = input
                .service
                .filter(|s| !s.trim().is_empty())
                .ok_or("service is required to open an incident")?;
            let started_at = input
                .started_at
                .map(|t| t.resolve("started_at"))
                .transpose()?
                .unwrap_or(now);
            if resolved_at.is_some_and(|r| r < started_at) {
                return Err("resolved_at is before started_at".into());
            }
            Ok(vec![IncidentChange::Open(Incident {
                id: input.id,
                service,
                environment: input.environment.unwrap_or_else(|| default_env.to_owned()),
                started_at,
                resolved_at,
                deployment_id: input.deployment_id,
                commit: input.commit,
                resolved_by_deployment: input.resolved_by_deployment,
            })])
        }
        IncidentAction::Resolve => Ok(vec![IncidentChange::Resolve {
            id: input.id,
            at: resolved_at.unwrap_or(now),
            by_deployment: input.resolved_by_deployment,
        }]),
    }
}

fn bad_request(reason: impl std::fmt::Display) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": reason.to_string() })),
    )
        .into_response()
}

fn store_down(e: &StoreError) -> Response {
    tracing::error!(error = %e, "dora store write failed");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "error": format!("store unavailable: {e}") })),
    )
        .into_response()
}

fn not_enabled() -> Response {
    (StatusCode::NOT_FOUND, "dora is not enabled\n").into_response()
}

/// `POST /api/v1/deployments`.
pub async fn post_deployment(State(state): State<DoraApiState>, body: Bytes) -> Response {
    let Some(hub) = state.dora.as_ref() else {
        return not_enabled();
    };
    let input: DeploymentIn = match serde_json::from_slice(&body) {
        Ok(i) => i,
        Err(e) => return bad_request(format!("invalid deployment: {e}")),
    };
    let (d, repo) = match deployment_from(input, &hub.config().environment, unix_now()) {
        Ok(d) => d,
        Err(e) => return bad_request(e),
    };
    let id = d.id.clone();
    match hub
        .record(Batch {
            deployment: Some((d, repo)),
            ..Batch::default()
        })
        .await
    {
        Ok(o) if o.deployment_new => {
            (StatusCode::CREATED, Json(json!({ "id": id, "new": true }))).into_response()
        }
        Ok(_) => (StatusCode::OK, Json(json!({ "id": id, "new": false }))).into_response(),
        Err(e) => store_down(&e),
    }
}

/// `POST /api/v1/incidents`.
pub async fn post_incident(State(state): State<DoraApiState>, body: Bytes) -> Response {
    let Some(hub) = state.dora.as_ref() else {
        return not_enabled();
    };
    let input: IncidentIn = match serde_json::from_slice(&body) {
        Ok(i) => i,
        Err(e) => return bad_request(format!("invalid incident: {e}")),
    };
    let id = input.id.clone();
    let changes = match incident_from(input, &hub.config().environment, unix_now()) {
        Ok(c) => c,
        Err(e) => return bad_request(e),
    };
    match hub
        .record(Batch {
            incidents: changes,
            ..Batch::default()
        })
        .await
    {
        Ok(o) if o.incidents_changed > 0 => (
            StatusCode::CREATED,
            Json(json!({ "id": id, "changed": true })),
        )
            .into_response(),
        Ok(_) => (StatusCode::OK, Json(json!({ "id": id, "changed": false }))).into_response(),
        Err(e) => store_down(&e),
    }
}

/// Query of `GET /api/v1/dora`.
#[derive(Debug, Deserialize)]
pub struct ReportQuery {
    service: Option<String>,
    environment: Option<String>,
    window: Option<String>,
}

/// `GET /api/v1/dora`.
pub async fn get_report(
    State(state): State<DoraApiState>,
    Query(q): Query<ReportQuery>,
) -> Response {
    let Some(hub) = state.dora.as_ref() else {
        return not_enabled();
    };
    let window = match q.window.as_deref().map(Window::parse).transpose() {
        Ok(w) => w.unwrap_or(Window::days(30)),
        Err(e) => return bad_request(e),
    };
    let mut scope = Scope::environment(
        q.environment
            .as_deref()
            .unwrap_or(&hub.config().environment),
    );
    if let Some(s) = q.service.as_deref().filter(|s| !s.is_empty()) {
        scope = scope.with_service(s);
    }
    match hub.report(unix_now(), window, &scope).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => store_down(&e),
    }
}

async fn record_hook(
    hub: &Hub,
    parsed: Result<Parsed, webhooks::PayloadError>,
    delivery: Option<(String, String)>,
) -> Response {
    match parsed {
        Err(e) => bad_request(e),
        Ok(Parsed::Ignored(reason)) => (
            StatusCode::ACCEPTED,
            Json(json!({ "status": "ignored", "reason": reason })),
        )
            .into_response(),
        Ok(Parsed::Record(mut batch)) => {
            batch.delivery = delivery;
            match hub.record(*batch).await {
                Ok(o) if o.duplicate_delivery => {
                    (StatusCode::ACCEPTED, Json(json!({ "status": "duplicate" }))).into_response()
                }
                Ok(o) => (
                    StatusCode::ACCEPTED,
                    Json(json!({
                        "status": "recorded",
                        "deployment_new": o.deployment_new,
                        "incidents_changed": o.incidents_changed,
                        "changes_remembered": o.pending_new,
                    })),
                )
                    .into_response(),
                Err(e) => store_down(&e),
            }
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn unauthorized(e: &webhooks::SignatureError) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({ "error": e.to_string() })),
    )
        .into_response()
}

/// `POST /webhooks/github`.
pub async fn github(
    State(state): State<DoraApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(hub) = state.dora.as_ref() else {
        return not_enabled();
    };
    let cfg = hub.config();
    let Some(gh) = cfg.github.as_ref() else {
        return (
            StatusCode::NOT_FOUND,
            "the github webhook is not configured\n",
        )
            .into_response();
    };
    if let Err(e) = webhooks::verify_github(
        gh.secret.expose().as_bytes(),
        header(&headers, webhooks::GITHUB_SIGNATURE),
        &body,
    ) {
        return unauthorized(&e);
    }
    let Some(event) = header(&headers, "x-github-event") else {
        return bad_request("missing X-GitHub-Event header");
    };
    let opts = HookOptions {
        environment: cfg.environment.clone(),
        deploy_on_ci_success: gh.deploy_on_workflow_run,
        severities: Vec::new(),
    };
    let delivery =
        header(&headers, "x-github-delivery").map(|d| ("github".to_owned(), d.to_owned()));
    record_hook(hub, webhooks::parse_github(event, &body, &opts), delivery).await
}

/// `POST /webhooks/gitlab`.
pub async fn gitlab(
    State(state): State<DoraApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(hub) = state.dora.as_ref() else {
        return not_enabled();
    };
    let cfg = hub.config();
    let Some(gl) = cfg.gitlab.as_ref() else {
        return (
            StatusCode::NOT_FOUND,
            "the gitlab webhook is not configured\n",
        )
            .into_response();
    };
    if let Err(e) =
        webhooks::verify_gitlab(gl.token.expose(), header(&headers, webhooks::GITLAB_TOKEN))
    {
        return unauthorized(&e);
    }
    let Some(event) = header(&headers, "x-gitlab-event") else {
        return bad_request("missing X-Gitlab-Event header");
    };
    let opts = HookOptions {
        environment: cfg.environment.clone(),
        deploy_on_ci_success: gl.deploy_on_pipeline,
        severities: Vec::new(),
    };
    let delivery = header(&headers, "x-gitlab-event-uuid")
        .or_else(|| header(&headers, "x-gitlab-webhook-uuid"))
        .map(|d| ("gitlab".to_owned(), d.to_owned()));
    record_hook(hub, webhooks::parse_gitlab(event, &body, &opts), delivery).await
}

/// `POST /webhooks/alertmanager`.
pub async fn alertmanager(State(state): State<DoraApiState>, body: Bytes) -> Response {
    let Some(hub) = state.dora.as_ref() else {
        return not_enabled();
    };
    let cfg = hub.config();
    let opts = HookOptions {
        environment: cfg.environment.clone(),
        deploy_on_ci_success: false,
        severities: cfg.alertmanager_severities.clone(),
    };
    record_hook(hub, webhooks::parse_alertmanager(&body, &opts), None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_bodies() {
        let input: DeploymentIn = serde_json::from_str(
            r#"{"service":"api","version":"1.2","commit":"abc","finished_at":"2024-05-01T12:00:00Z",
                "started_at":1714564000,"commits":[{"sha":"abc","timestamp":"2024-05-01T10:00:00+00:00"}]}"#,
        )
        .expect("json");
        let (d, _) = deployment_from(input, "production", 0).expect("valid");
        assert_eq!(d.id, "api/production/1.2");
        assert_eq!(d.finished_at, 1_714_564_800);
        assert_eq!(d.commits[0].timestamp, 1_714_564_800 - 7200);
        let input: DeploymentIn =
            serde_json::from_str(r#"{"service":"api","finished_at":"soon"}"#).expect("json");
        assert!(deployment_from(input, "production", 0).is_err());
        assert!(serde_json::from_str::<DeploymentIn>(r#"{"service":"api","colour":1}"#).is_err());
    }

    #[test]
    fn incident_bodies() {
        let input: IncidentIn =
            serde_json::from_str(r#"{"action":"open","id":"i1","service":"api","started_at":10}"#)
                .expect("json");
        let c = incident_from(input, "production", 99).expect("valid");
        assert!(
            matches!(&c[0], IncidentChange::Open(i) if i.started_at == 10 && i.environment == "production")
        );
        let input: IncidentIn =
            serde_json::from_str(r#"{"action":"resolve","id":"i1"}"#).expect("json");
        let c = incident_from(input, "production", 99).expect("valid");
        assert!(matches!(&c[0], IncidentChange::Resolve { at: 99, .. }));
        let input: IncidentIn =
            serde_json::from_str(r#"{"action":"open","id":"i1"}"#).expect("json");
        assert!(incident_from(input, "production", 99).is_err());
    }
}

//! The alerting HTTP endpoints (mounted when `alerts:` or `notifiers:` is configured):
//!
//! | route | auth | answers |
//! |---|---|---|
//! | `GET /api/v1/alerts` | bearer | 200 `{"status": "success", "data": {"alerts": [...]}}` (Prometheus's shape) |
//! | `GET /api/v1/rules` | bearer | 200 `{"status": "success", "data": {"groups": [...]}}` (Prometheus's shape) |
//! | `GET /api/v1/silences` | bearer | 200 `{"silences": [...]}` |
//! | `POST /api/v1/silences` | bearer | 201 `{"id"}`, 400 |
//! | `DELETE /api/v1/silences/{id}` | bearer | 200, 404 |
//! | `POST /chatops/slack/commands` | Slack signature | 200 ephemeral reply, 401, 404 unconfigured |
//! | `POST /chatops/slack/interactions` | Slack signature | 200, 401, 400 |
//!
//! Slack signatures are checked on the raw body before it is parsed; answers come from memory
//! (or the DORA report, bounded to 2.5 s) so Slack's 3-second limit holds.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::alert::{State as AlertState, fmt_value};
use super::chatops::{self, Command};
use super::notify::Silence;
use super::{Alerting, now_ms};
use crate::dora::{Report, Scope, Window};

/// What the alert handlers read from the HTTP server's state (`http::HttpState` hands it out).
#[derive(Debug, Clone)]
pub struct AlertsApiState {
    /// Alert rules and notifiers, when `alerts:` / `notifiers:` are configured.
    pub alerting: Option<std::sync::Arc<Alerting>>,
}

#[allow(clippy::result_large_err)] // an early-return response, built once
fn alerting(state: &AlertsApiState) -> Result<&std::sync::Arc<Alerting>, Response> {
    state
        .alerting
        .as_ref()
        .ok_or_else(|| (StatusCode::NOT_FOUND, "alerting is not configured\n").into_response())
}

/// `GET /api/v1/alerts`, in Prometheus's response shape.
pub async fn get_alerts(State(state): State<AlertsApiState>) -> Response {
    match alerting(&state) {
        Ok(a) => Json(json!({ "status": "success", "data": { "alerts": a.api_alerts() } }))
            .into_response(),
        Err(r) => r,
    }
}

/// `GET /api/v1/rules`, in Prometheus's response shape (the Prometheus rule groups).
pub async fn get_rules(State(state): State<AlertsApiState>) -> Response {
    match alerting(&state) {
        Ok(a) => Json(json!({ "status": "success", "data": a.api_rules() })).into_response(),
        Err(r) => r,
    }
}

/// `GET /api/v1/silences`.
pub async fn get_silences(State(state): State<AlertsApiState>) -> Response {
    match alerting(&state) {
        Ok(a) => Json(json!({ "silences": a.silences() })).into_response(),
        Err(r) => r,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SilenceIn {
    matchers: Vec<String>,
    /// `1h`, `30m`.
    #[serde(default)]
    duration: Option<String>,
    /// RFC 3339 or unix seconds.
    #[serde(default)]
    ends_at: Option<crate::api::TimeIn>,
    #[serde(default)]
    created_by: Option<String>,
    #[serde(default)]
    comment: String,
}

fn new_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{:x}-{}", now_ms(), N.fetch_add(1, Ordering::Relaxed))
}

fn bad(msg: impl std::fmt::Display) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": msg.to_string() })),
    )
        .into_response()
}

/// `POST /api/v1/silences`.
pub async fn post_silence(State(state): State<AlertsApiState>, body: Bytes) -> Response {
    let a = match alerting(&state) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let input: SilenceIn = match serde_json::from_slice(&body) {
        Ok(i) => i,
        Err(e) => return bad(format!("invalid silence: {e}")),
    };
    let now = now_ms();
    let ends_at = match (&input.duration, &input.ends_at) {
        (Some(d), None) => match humantime::parse_duration(d) {
            Ok(d) => now.saturating_add(super::alert::ms(d)),
            Err(e) => return bad(format!("duration: {e}")),
        },
        (None, Some(crate::api::TimeIn::Unix(s))) => s.saturating_mul(1000),
        (None, Some(crate::api::TimeIn::Text(t))) => match crate::webhooks::parse_time(t) {
            Some(s) => s.saturating_mul(1000),
            None => return bad("ends_at is not RFC 3339"),
        },
        _ => return bad("give duration or ends_at"),
    };
    let s = match Silence::new(
        new_id(),
        input.matchers,
        now,
        ends_at,
        input.created_by.unwrap_or_else(|| "api".into()),
        input.comment,
    ) {
        Ok(s) => s,
        Err(e) => return bad(e),
    };
    let id = s.id.clone();
    match a.add_silence(s).await {
        Ok(()) => (StatusCode::CREATED, Json(json!({ "id": id }))).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

/// `DELETE /api/v1/silences/{id}`.
pub async fn delete_silence(
    State(state): State<AlertsApiState>,
    Path(id): Path<String>,
) -> Response {
    let a = match alerting(&state) {
        Ok(a) => a,
        Err(r) => return r,
    };
    match a.delete_silence(&id).await {
        Ok(true) => Json(json!({ "deleted": id })).into_response(),
        Ok(false) => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": "no such silence" })),
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

#[allow(clippy::result_large_err)]
fn verify(a: &Alerting, headers: &HeaderMap, body: &[u8]) -> Result<(), Response> {
    let cfg = a.config();
    let Some(secret) = cfg.signing_secret.as_ref() else {
        return Err((StatusCode::NOT_FOUND, "chatops is not configured\n").into_response());
    };
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    chatops::verify(
        secret.expose().as_bytes(),
        h(chatops::TIMESTAMP),
        h(chatops::SIGNATURE),
        body,
        now_ms() / 1000,
    )
    .map_err(|e| {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": e.to_string() })),
        )
            .into_response()
    })
}

fn ephemeral(text: String) -> Response {
    Json(json!({ "response_type": "ephemeral", "text": text })).into_response()
}

/// The lines of a DORA report for chat.
pub fn dora_lines(r: &Report) -> Vec<String> {
    let dur = |s: Option<f64>| {
        s.map_or("–".to_owned(), |s| {
            humantime::format_duration(Duration::from_secs(s.max(0.0) as u64)).to_string()
        })
    };
    let pct = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{}%", fmt_value(v * 100.0)));
    if r.services.is_empty() {
        return vec!["no deployments in the window".into()];
    }
    r.services
        .iter()
        .map(|s| {
            format!(
                "*{}* ({}): {} deploys/day · lead time {} · change fail rate {} · recovery {} · rework {}",
                s.service,
                s.environment,
                fmt_value(s.deployment_frequency_per_day),
                dur(s.lead_time_median_seconds),
                pct(s.change_fail_rate),
                dur(s.recovery_time_median_seconds),
                pct(s.rework_rate),
            )
        })
        .collect()
}

/// `POST /chatops/slack/commands`.
pub async fn slack_command(
    State(state): State<AlertsApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let a = match alerting(&state) {
        Ok(a) => a.clone(),
        Err(r) => return r,
    };
    if let Err(r) = verify(&a, &headers, &body) {
        return r;
    }
    let form = chatops::form(&body);
    let field = |k: &str| {
        form.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let user = field("user_name");
    let user = if user.is_empty() {
        field("user_id")
    } else {
        user
    };
    ephemeral(command(&a, &field("text"), &user).await)
}

/// Runs one `/sidelight` command for `user` and returns the ephemeral reply's text (the HTTP
/// route and Socket Mode share it), escaped for Slack: alert names, summaries, label values,
/// services and the user's own words reach Slack as text, never as mentions or links.
pub async fn command(a: &Alerting, text: &str, user: &str) -> String {
    super::render::slack_escape(&command_reply(a, text, user).await)
}

async fn command_reply(a: &Alerting, text: &str, user: &str) -> String {
    match chatops::parse_command(text) {
        Command::Status => {
            let firing: Vec<String> = a
                .alerts()
                .into_iter()
                .filter(|x| x.state == AlertState::Firing)
                .map(|x| {
                    format!(
                        "• *{}* `{}` {} — {} (value {})",
                        x.name(),
                        x.severity(),
                        x.service().unwrap_or(""),
                        x.summary,
                        fmt_value(x.value)
                    )
                })
                .collect();
            if firing.is_empty() {
                "no alert is firing :white_check_mark:".into()
            } else {
                format!("{} firing:\n{}", firing.len(), firing.join("\n"))
            }
        }
        Command::Dora { service, window } => {
            let Some(hub) = a.hub() else {
                return "DORA is not enabled on this agent (dora.enabled)".into();
            };
            let window = match window.as_deref().map(Window::parse).transpose() {
                Ok(w) => w.unwrap_or(Window::days(30)),
                Err(e) => return e.to_string(),
            };
            let mut scope = Scope::environment(&hub.config().environment);
            if let Some(s) = &service {
                scope = scope.with_service(s);
            }
            match tokio::time::timeout(
                Duration::from_millis(2500),
                hub.report(now_ms() / 1000, window, &scope),
            )
            .await
            {
                Ok(Ok(r)) => format!("DORA over {window}:\n{}", dora_lines(&r).join("\n")),
                Ok(Err(e)) => format!("the DORA store failed: {e}"),
                Err(_) => "the DORA report took too long; try the API".into(),
            }
        }
        Command::Silence { matchers, duration } => {
            let now = now_ms();
            let s = match Silence::new(
                new_id(),
                matchers.clone(),
                now,
                now.saturating_add(super::alert::ms(duration)),
                format!("slack:{user}"),
                "from /sidelight silence".into(),
            ) {
                Ok(s) => s,
                Err(e) => return e,
            };
            let id = s.id.clone();
            match a.add_silence(s).await {
                Ok(()) => format!(
                    "silenced {} for {} (id {id})",
                    matchers.join(", "),
                    humantime::format_duration(duration)
                ),
                Err(e) => format!("could not store the silence: {e}"),
            }
        }
        Command::Ack(what) => match a.ack(&what, user).await {
            Ok(0) => format!("no notified alert matches {what:?}"),
            Ok(n) => format!("acked {n} group(s) for {what}: no repeats until it changes"),
            Err(e) => format!("could not store the ack: {e}"),
        },
        Command::Help(reason) => match reason {
            Some(r) => format!("{r}\n{}", chatops::HELP),
            None => chatops::HELP.into(),
        },
    }
}

/// `POST /chatops/slack/interactions` (the Ack and Silence 1h buttons).
pub async fn slack_interaction(
    State(state): State<AlertsApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let a = match alerting(&state) {
        Ok(a) => a.clone(),
        Err(r) => return r,
    };
    if let Err(r) = verify(&a, &headers, &body) {
        return r;
    }
    let actions = match chatops::parse_interaction(&body) {
        Ok(x) => x,
        Err(e) => return bad(e),
    };
    let replies = interactions(&a, actions).await;
    Json(json!({
        "response_type": "ephemeral",
        "replace_original": false,
        "text": replies.join("\n"),
    }))
    .into_response()
}

/// Applies button presses `(action id, value, user)` (Ack, Silence 1h) and returns one reply line
/// per press (the HTTP route and Socket Mode share it), escaped for Slack.
pub async fn interactions(a: &Alerting, actions: Vec<(String, String, String)>) -> Vec<String> {
    interaction_replies(a, actions)
        .await
        .iter()
        .map(|r| super::render::slack_escape(r))
        .collect()
}

async fn interaction_replies(a: &Alerting, actions: Vec<(String, String, String)>) -> Vec<String> {
    let mut replies = Vec::new();
    for (action, key, user) in actions {
        match action.as_str() {
            super::deliver::ACK_ACTION => match a.ack(&key, &user).await {
                Ok(n) => replies.push(format!("acked by {user} ({n} group(s))")),
                Err(e) => replies.push(format!("ack failed: {e}")),
            },
            super::deliver::SILENCE_ACTION => {
                let Some(matchers) = a.group_matchers(&key) else {
                    replies.push("that alert group is gone".into());
                    continue;
                };
                let now = now_ms();
                match Silence::new(
                    new_id(),
                    matchers.clone(),
                    now,
                    now + 3_600_000,
                    format!("slack:{user}"),
                    "Silence 1h button".into(),
                ) {
                    Ok(s) => match a.add_silence(s).await {
                        Ok(()) => replies
                            .push(format!("silenced {} for 1h by {user}", matchers.join(", "))),
                        Err(e) => replies.push(format!("silence failed: {e}")),
                    },
                    Err(e) => replies.push(e),
                }
            }
            _ => {}
        }
    }
    replies
}

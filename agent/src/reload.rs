//! `POST /-/reload`, the HTTP twin of SIGHUP (as Prometheus's lifecycle endpoint): the handler
//! asks the task that owns the running agent (the binary's signal loop) to reload, and answers
//! with the outcome. Both triggers go through `Running::reload_from`, so the file is read by the
//! same loader and applied (or rejected, leaving the running config untouched) by the same code.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::sync::{mpsc, oneshot};

use crate::config::common::ConfigErrors;

/// Reload requests waiting for the signal loop; more are refused with 503 (a client retrying a
/// reload in a loop cannot queue unbounded work).
const MAX_PENDING: usize = 4;

/// What a reload did.
#[derive(Debug)]
pub enum Outcome {
    /// The file was valid and is now running; the summary of the new configuration.
    Applied(String),
    /// The agent runs on its embedded defaults: there is no file to read again.
    NoFile,
    /// The file was rejected (every error); the previous configuration keeps running.
    Rejected(ConfigErrors),
}

/// One request: where to send the outcome.
pub type Request = oneshot::Sender<Outcome>;

/// The sending half, held by the HTTP surface.
#[derive(Debug, Clone)]
pub struct Reloader(mpsc::Sender<Request>);

/// The receiving half, served by whoever owns the `Running` agent.
pub type Requests = mpsc::Receiver<Request>;

/// What the handler takes from the HTTP surface's state (`FromRef<HttpState>` in `http.rs`).
#[derive(Debug, Clone)]
pub struct ReloadState(pub Option<Reloader>);

/// A bounded channel of reload requests.
pub fn channel() -> (Reloader, Requests) {
    let (tx, rx) = mpsc::channel(MAX_PENDING);
    (Reloader(tx), rx)
}

/// `POST /-/reload`: 200 when the new file runs, 400 with every error when it was rejected,
/// 503 when the agent is stopping or already has reloads waiting.
pub async fn handle(State(ReloadState(reloader)): State<ReloadState>) -> Response {
    let Some(Reloader(tx)) = reloader else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let (reply, outcome) = oneshot::channel();
    if tx.try_send(reply).is_err() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "reload not possible now (stopping, or reloads already waiting)\n",
        )
            .into_response();
    }
    match outcome.await {
        Ok(Outcome::Applied(summary)) => (
            StatusCode::OK,
            format!("configuration reloaded: {summary}\n"),
        )
            .into_response(),
        Ok(Outcome::NoFile) => (
            StatusCode::OK,
            "running on the embedded defaults: nothing to reload\n",
        )
            .into_response(),
        Ok(Outcome::Rejected(errors)) => (
            StatusCode::BAD_REQUEST,
            format!("{errors}\nthe previous configuration keeps running\n"),
        )
            .into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping\n").into_response(),
    }
}

//! Slack Socket Mode, for agents with no public URL: instead of Slack calling
//! `/chatops/slack/*`, the agent calls `apps.connections.open` with an app-level token
//! (`xapp-…`), keeps the WebSocket it is given (slack-morphism's
//! `SlackClientSocketModeListener`, which reconnects on its own), and answers each envelope with
//! an acknowledgement. Slash commands and button presses go to the same handlers as the HTTP
//! routes ([`api::command`], [`api::interactions`]); the command's reply travels in the ack's
//! payload. No request signature is involved: the connection itself is authenticated by the
//! app token.

use std::sync::Arc;

use slack_morphism::prelude::*;
use tokio_util::sync::CancellationToken;

use super::{Alerting, api, deliver};
use crate::config::common::Secret;

type Connector = SlackClientHyperConnector<sidelight_collector::http_client::Connector>;

/// What the callbacks (plain `fn`s) find in the listener's user state.
struct Handle(Arc<Alerting>);

async fn alerting(state: &SlackClientEventsUserState) -> Option<Arc<Alerting>> {
    state
        .read()
        .await
        .get_user_state::<Handle>()
        .map(|h| h.0.clone())
}

fn no_state() -> Box<dyn std::error::Error + Send + Sync> {
    "socket mode: the alerting state is gone".into()
}

async fn on_command(
    ev: SlackCommandEvent,
    _client: Arc<SlackClient<Connector>>,
    state: SlackClientEventsUserState,
) -> UserCallbackResult<SlackCommandEventResponse> {
    let a = alerting(&state).await.ok_or_else(no_state)?;
    let text = api::command(&a, ev.text.as_deref().unwrap_or(""), ev.user_id.as_ref()).await;
    Ok(
        SlackCommandEventResponse::new(SlackMessageContent::new().with_text(text))
            .with_response_type(SlackMessageResponseType::Ephemeral),
    )
}

async fn on_interaction(
    ev: SlackInteractionEvent,
    _client: Arc<SlackClient<Connector>>,
    state: SlackClientEventsUserState,
) -> UserCallbackResult<()> {
    let SlackInteractionEvent::BlockActions(ev) = ev else {
        return Ok(());
    };
    let a = alerting(&state).await.ok_or_else(no_state)?;
    let user = ev
        .user
        .as_ref()
        .map(|u| {
            u.username
                .clone()
                .or_else(|| u.name.clone())
                .unwrap_or_else(|| u.id.to_string())
        })
        .unwrap_or_else(|| "someone".into());
    let actions: Vec<(String, String, String)> = ev
        .actions
        .unwrap_or_default()
        .into_iter()
        .map(|x| {
            (
                x.action_id.to_string(),
                x.value.unwrap_or_default(),
                user.clone(),
            )
        })
        .collect();
    for reply in api::interactions(&a, actions).await {
        tracing::info!(reply = %reply, "socket mode interaction");
    }
    Ok(())
}

fn on_error(
    err: Box<dyn std::error::Error + Send + Sync>,
    _client: Arc<SlackClient<Connector>>,
    _state: SlackClientEventsUserState,
) -> axum::http::StatusCode {
    tracing::warn!(error = %err, "slack socket mode");
    // Acknowledge anyway: Slack would only redeliver what failed here.
    axum::http::StatusCode::OK
}

/// Runs Socket Mode for one notifier until `cancel` fires.
pub async fn run(
    alerting: Arc<Alerting>,
    name: String,
    app_token: Secret,
    api_url: String,
    cancel: CancellationToken,
) {
    let connector = match deliver::http_connector() {
        Ok(c) => SlackClientHyperConnector::with_connector(c).with_slack_api_url(&api_url),
        Err(e) => {
            tracing::error!(notifier = %name, error = %e, "socket mode cannot start");
            return;
        }
    };
    let client = Arc::new(SlackClient::new(connector));
    let callbacks = SlackSocketModeListenerCallbacks::new()
        .with_command_events(on_command)
        .with_interaction_events(on_interaction);
    let env = Arc::new(
        SlackClientEventsListenerEnvironment::new(client)
            .with_error_handler(on_error)
            .with_user_state(Handle(alerting)),
    );
    let config = SlackClientSocketModeConfig::new().with_max_connections_count(1);
    let listener = SlackClientSocketModeListener::new(&config, env, callbacks);
    let token = SlackApiToken::new(SlackApiTokenValue::new(app_token.expose().to_owned()));
    if let Err(e) = listener.listen_for(&token).await {
        tracing::error!(notifier = %name, error = %e, "socket mode cannot start");
        return;
    }
    tracing::info!(notifier = %name, "slack socket mode connecting");
    // `start` connects (retrying until it can) and returns; the clients then run on their own.
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = listener.start() => cancel.cancelled().await,
    }
    listener.shutdown().await;
}

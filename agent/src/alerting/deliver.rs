//! The edge that talks to chats: one bounded queue and one sender task per receiver, paced to
//! `rate_limit` (1 message per second by default: Slack's per-channel limit), retrying 429 (after
//! `Retry-After`), 5xx and network errors with backoff, reporting every outcome back to the
//! dispatcher. When a queue is full, new items are coalesced into one summary message at its
//! tail instead of being dropped (counted in `sidelight_notifications_coalesced_total`).
//!
//! Transports: Slack through `slack-morphism` (bot token: `chat.postMessage`, `chat.update`,
//! thread replies; or an incoming webhook), Teams Workflows (Adaptive Card 1.4; 202 is success)
//! and generic JSON webhooks (optional bearer token and HMAC signature), the last two over one
//! `hyper` client (rustls with the system's roots, or plain HTTP).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use parking_lot::{Mutex, RwLock};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use slack_morphism::errors::SlackClientError;
use slack_morphism::prelude::*;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::config::{NotifierConfig, NotifierKind};
use super::eval::DeployInfo;
use super::notify::{MessageRef, Notification};
use super::render::{self, Message, Tone};
use super::rules::Millis;
use crate::config::common::Secret;

/// The HTTP client shared by every transport.
pub type Http = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot load the system's TLS roots: {0}")]
pub struct ClientError(#[from] std::io::Error);

/// A client for `https://` (system roots) and `http://` (tests, local gateways).
pub fn http_connector() -> Result<HttpsConnector<HttpConnector>, ClientError> {
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()?
        .https_or_http()
        .enable_http1()
        .build())
}

/// Builds the shared client.
pub fn http_client() -> Result<Http, ClientError> {
    Ok(Client::builder(hyper_util::rt::TokioExecutor::new()).build(http_connector()?))
}

/// Something to post.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// An alert group's notification.
    Group(Box<Notification>),
    /// A deploy notice or digest.
    Notice(Box<Message>),
    /// Items coalesced because the queue was full.
    Summary(Vec<Notification>, Vec<String>),
}

/// What happened to a group's notification.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// Delivered; `message` is where it lives (bot mode).
    Delivered {
        /// Group key.
        key: String,
        /// Sequence number.
        seq: u64,
        /// The message to update later.
        message: Option<MessageRef>,
    },
    /// Given up after the retries.
    Failed {
        /// Group key.
        key: String,
        /// Sequence number.
        seq: u64,
    },
}

/// The notification self-metrics.
#[derive(Debug, Clone, Default)]
pub struct DeliveryMetrics {
    /// `sidelight_notifications_sent_total{channel}`.
    pub sent: Family<[(&'static str, &'static str); 1], Counter>,
    /// `sidelight_notifications_failed_total{channel}`.
    pub failed: Family<[(&'static str, &'static str); 1], Counter>,
    /// `sidelight_notifications_retried_total{channel}`.
    pub retried: Family<[(&'static str, &'static str); 1], Counter>,
    /// `sidelight_notifications_coalesced_total{channel,receiver}`.
    pub coalesced: Family<[(&'static str, String); 2], Counter>,
    /// `sidelight_notification_queue_depth{channel,receiver}`.
    pub depth: Family<[(&'static str, String); 2], Gauge>,
    /// `sidelight_notification_queue_capacity{channel,receiver}`.
    pub capacity: Family<[(&'static str, String); 2], Gauge>,
}

impl DeliveryMetrics {
    /// Registers them.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "sidelight_notifications_sent",
            "Chat and webhook messages delivered, by channel (slack, teams, webhook)",
            self.sent.clone(),
        );
        r.register(
            "sidelight_notifications_failed",
            "Messages given up after their retries or refused, by channel",
            self.failed.clone(),
        );
        r.register(
            "sidelight_notifications_retried",
            "Retried sends (429, 5xx, network), by channel",
            self.retried.clone(),
        );
        r.register(
            "sidelight_notifications_coalesced",
            "Notifications folded into a summary message because the receiver's queue was full",
            self.coalesced.clone(),
        );
        r.register(
            "sidelight_notification_queue_depth",
            "Messages waiting for their receiver",
            self.depth.clone(),
        );
        r.register(
            "sidelight_notification_queue_capacity",
            "Messages a receiver's queue holds before coalescing",
            self.capacity.clone(),
        );
    }
}

/// A receiver's bounded queue.
#[derive(Debug)]
pub struct Queue {
    items: Mutex<VecDeque<Item>>,
    cap: usize,
    notify: Notify,
    depth: Gauge,
    coalesced: Counter,
}

impl Queue {
    /// A queue of `cap` items reporting to `metrics` as (channel, receiver).
    pub fn new(cap: usize, channel: &'static str, receiver: &str, m: &DeliveryMetrics) -> Self {
        let labels = [
            ("channel", channel.to_owned()),
            ("receiver", receiver.to_owned()),
        ];
        m.capacity
            .get_or_create(&labels)
            .set(i64::try_from(cap).unwrap_or(i64::MAX));
        Self {
            items: Mutex::new(VecDeque::new()),
            cap: cap.max(1),
            notify: Notify::new(),
            depth: m.depth.get_or_create(&labels).clone(),
            coalesced: m.coalesced.get_or_create(&labels).clone(),
        }
    }

    /// Queues an item; a full queue folds it (and its tail) into a summary.
    pub fn push(&self, item: Item) {
        let mut q = self.items.lock();
        if q.len() < self.cap {
            q.push_back(item);
        } else {
            self.coalesced.inc();
            let (mut groups, mut texts) = match q.pop_back() {
                Some(Item::Summary(g, t)) => (g, t),
                Some(Item::Group(n)) => {
                    self.coalesced.inc();
                    (vec![*n], Vec::new())
                }
                Some(Item::Notice(m)) => {
                    self.coalesced.inc();
                    (Vec::new(), vec![m.title.clone()])
                }
                None => (Vec::new(), Vec::new()),
            };
            match item {
                Item::Group(n) => groups.push(*n),
                Item::Notice(m) => texts.push(m.title.clone()),
                Item::Summary(g, t) => {
                    groups.extend(g);
                    texts.extend(t);
                }
            }
            q.push_back(Item::Summary(groups, texts));
        }
        self.depth.set(i64::try_from(q.len()).unwrap_or(i64::MAX));
        drop(q);
        self.notify.notify_one();
    }

    /// Takes the oldest item, waiting for one.
    pub async fn pop(&self) -> Item {
        loop {
            {
                let mut q = self.items.lock();
                if let Some(i) = q.pop_front() {
                    self.depth.set(i64::try_from(q.len()).unwrap_or(i64::MAX));
                    return i;
                }
            }
            self.notify.notified().await;
        }
    }

    /// Takes everything waiting (tests).
    #[cfg(test)]
    pub fn drain(&self) -> Vec<Item> {
        let mut q = self.items.lock();
        let out: Vec<Item> = q.drain(..).collect();
        self.depth.set(0);
        out
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.items.lock().len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a send failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SendError {
    /// 429; retry after this long.
    #[error("rate limited (retry after {0:?})")]
    RateLimited(Option<Duration>),
    /// 5xx or network: worth retrying.
    #[error("temporary failure: {0}")]
    Temporary(String),
    /// Anything else: reported and counted.
    #[error("refused: {0}")]
    Refused(String),
}

/// A Slack destination.
pub struct Slack {
    client: SlackClient<SlackClientHyperConnector<HttpsConnector<HttpConnector>>>,
    mode: SlackMode,
}

enum SlackMode {
    Bot {
        token: SlackApiToken,
        channel: String,
    },
    Webhook(url::Url),
}

impl std::fmt::Debug for Slack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Slack([redacted])")
    }
}

/// How one receiver posts.
#[derive(Debug)]
pub enum Transport {
    /// Slack (bot or webhook).
    Slack(Box<Slack>),
    /// Teams Workflows.
    Teams {
        /// The client.
        http: Http,
        /// Workflow URL.
        url: Secret,
    },
    /// A JSON webhook.
    Webhook {
        /// The client.
        http: Http,
        /// Target.
        url: Secret,
        /// Bearer token.
        bearer: Option<Secret>,
        /// HMAC key.
        hmac: Option<Secret>,
    },
}

fn slack_error(e: SlackClientError) -> SendError {
    match e {
        SlackClientError::RateLimitError(r) => SendError::RateLimited(r.retry_after),
        SlackClientError::HttpError(h) if h.status_code.is_server_error() => {
            SendError::Temporary(format!("HTTP {}", h.status_code))
        }
        SlackClientError::HttpError(h) => SendError::Refused(format!("HTTP {}", h.status_code)),
        SlackClientError::HttpProtocolError(p) => SendError::Temporary(p.to_string()),
        SlackClientError::ApiError(a) => SendError::Refused(format!("slack: {}", a.code)),
        other => SendError::Temporary(other.to_string()),
    }
}

impl Transport {
    /// Builds the transport of a receiver.
    pub fn new(cfg: &NotifierConfig, http: &Http) -> Result<Self, String> {
        Ok(match &cfg.kind {
            NotifierKind::SlackBot {
                token,
                channel,
                api_url,
            } => {
                let connector = SlackClientHyperConnector::with_connector(
                    http_connector().map_err(|e| e.to_string())?,
                )
                .with_slack_api_url(api_url);
                Self::Slack(Box::new(Slack {
                    client: SlackClient::new(connector),
                    mode: SlackMode::Bot {
                        token: SlackApiToken::new(SlackApiTokenValue::new(
                            token.expose().to_owned(),
                        )),
                        channel: channel.clone(),
                    },
                }))
            }
            NotifierKind::SlackWebhook { url } => {
                let connector = SlackClientHyperConnector::with_connector(
                    http_connector().map_err(|e| e.to_string())?,
                );
                let url = url::Url::parse(url.expose())
                    .map_err(|_| "the Slack webhook URL does not parse".to_owned())?;
                Self::Slack(Box::new(Slack {
                    client: SlackClient::new(connector),
                    mode: SlackMode::Webhook(url),
                }))
            }
            NotifierKind::Teams { url } => Self::Teams {
                http: http.clone(),
                url: url.clone(),
            },
            NotifierKind::Webhook { url, bearer, hmac } => Self::Webhook {
                http: http.clone(),
                url: url.clone(),
                bearer: bearer.clone(),
                hmac: hmac.clone(),
            },
        })
    }

    /// Posts one item; returns the message to update later (Slack bot mode).
    pub async fn send(
        &self,
        item: &Item,
        now: Millis,
        deploys: &HashMap<String, DeployInfo>,
    ) -> Result<Option<MessageRef>, SendError> {
        let (msg, existing) = match item {
            Item::Group(n) => (render::notification(n, now, deploys), n.message.clone()),
            Item::Notice(m) => ((**m).clone(), None),
            Item::Summary(g, t) => (render::summary(g, t, now), None),
        };
        match self {
            Self::Slack(s) => s.send(&msg, existing).await,
            Self::Teams { http, url } => {
                let body = teams_card(&msg);
                let (status, retry_after) = post_json(http, url.expose(), &body, &[]).await?;
                classify(status, retry_after, &[200, 202]).map(|()| None)
            }
            Self::Webhook {
                http,
                url,
                bearer,
                hmac,
            } => {
                let body = webhook_body(item, &msg);
                let text = body.to_string();
                let mut headers: Vec<(&str, String)> = Vec::new();
                if let Some(b) = bearer {
                    headers.push(("authorization", format!("Bearer {}", b.expose())));
                }
                if let Some(k) = hmac {
                    headers.push((
                        "x-sidelight-signature",
                        crate::webhooks::sign_github(k.expose().as_bytes(), text.as_bytes()),
                    ));
                }
                let (status, retry_after) = post_json(http, url.expose(), &body, &headers).await?;
                if (200..300).contains(&status) {
                    Ok(None)
                } else {
                    classify(status, retry_after, &[]).map(|()| None)
                }
            }
        }
    }
}

impl Slack {
    async fn send(
        &self,
        msg: &Message,
        existing: Option<MessageRef>,
    ) -> Result<Option<MessageRef>, SendError> {
        let content = SlackMessageContent::new()
            .with_text(render::plain(&msg.text))
            .with_blocks(slack_blocks(msg));
        match &self.mode {
            SlackMode::Webhook(url) => {
                self.client
                    .post_webhook_message(url, &SlackApiPostWebhookMessageRequest::new(content))
                    .await
                    .map_err(slack_error)?;
                Ok(None)
            }
            SlackMode::Bot { token, channel } => {
                let session = self.client.open_session(token);
                match existing {
                    Some(r) => {
                        session
                            .chat_update(&SlackApiChatUpdateRequest::new(
                                SlackChannelId::new(r.channel.clone()),
                                content,
                                SlackTs::new(r.ts.clone()),
                            ))
                            .await
                            .map_err(slack_error)?;
                        if let Some(f) = &msg.follow_up {
                            session
                                .chat_post_message(
                                    &SlackApiChatPostMessageRequest::new(
                                        SlackChannelId::new(r.channel.clone()),
                                        SlackMessageContent::new().with_text(f.clone()),
                                    )
                                    .with_thread_ts(SlackTs::new(r.ts.clone())),
                                )
                                .await
                                .map_err(slack_error)?;
                        }
                        Ok(Some(r))
                    }
                    None => {
                        let resp = session
                            .chat_post_message(&SlackApiChatPostMessageRequest::new(
                                SlackChannelId::new(channel.clone()),
                                content,
                            ))
                            .await
                            .map_err(slack_error)?;
                        Ok(Some(MessageRef {
                            channel: resp.channel.to_string(),
                            ts: resp.ts.to_string(),
                        }))
                    }
                }
            }
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Most section blocks per message (Slack allows 50 blocks).
const MAX_SECTIONS: usize = 45;
/// Characters per section (Slack allows 3000).
const SECTION_CHARS: usize = 2900;

/// Block Kit for a message: a header, sections packed with the lines, a context line with the
/// deployment, and actions (Ack, Silence 1h, links).
pub fn slack_blocks(m: &Message) -> Vec<SlackBlock> {
    let mut blocks: Vec<SlackBlock> = vec![
        SlackHeaderBlock::new(SlackBlockPlainTextOnly::from(truncate(
            &render::plain(&m.title),
            150,
        )))
        .into(),
    ];
    let mut chunks: Vec<String> = Vec::new();
    let mut cur = String::new();
    for line in &m.lines {
        let line = truncate(line, SECTION_CHARS);
        if !cur.is_empty() && cur.len() + line.len() + 1 > SECTION_CHARS {
            chunks.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push('\n');
        }
        cur.push_str(&line);
    }
    if !cur.is_empty() {
        chunks.push(cur);
    }
    let total = chunks.len();
    for (i, c) in chunks.into_iter().enumerate() {
        if i == MAX_SECTIONS - 1 && total > MAX_SECTIONS {
            blocks.push(
                SlackSectionBlock::new()
                    .with_text(SlackBlockText::MarkDown(SlackBlockMarkDownText::new(
                        format!("…{} more sections (see /api/v1/alerts)", total - i),
                    )))
                    .into(),
            );
            break;
        }
        blocks.push(
            SlackSectionBlock::new()
                .with_text(SlackBlockText::MarkDown(SlackBlockMarkDownText::new(c)))
                .into(),
        );
    }
    if !m.context.is_empty() {
        blocks.push(
            SlackContextBlock::new(vec![SlackContextBlockElement::MarkDown(
                SlackBlockMarkDownText::new(truncate(&m.context.join(" · "), 2900)),
            )])
            .into(),
        );
    }
    let mut elements: Vec<SlackActionBlockElement> = Vec::new();
    if m.buttons {
        elements.push(SlackActionBlockElement::Button(
            SlackBlockButtonElement::new(SlackBlockPlainTextOnly::from("Ack"))
                .with_action_id(SlackActionId::new(ACK_ACTION.into()))
                .with_value(m.key.clone())
                .with_style(SlackBlockButtonStyle::Primary),
        ));
        elements.push(SlackActionBlockElement::Button(
            SlackBlockButtonElement::new(SlackBlockPlainTextOnly::from("Silence 1h"))
                .with_action_id(SlackActionId::new(SILENCE_ACTION.into()))
                .with_value(m.key.clone()),
        ));
    }
    for (label, link) in &m.links {
        if let Ok(u) = url::Url::parse(link) {
            elements.push(SlackActionBlockElement::Button(
                SlackBlockButtonElement::new(SlackBlockPlainTextOnly::from(label.as_str()))
                    .with_action_id(SlackActionId::new(format!(
                        "sidelight_link_{}",
                        label.to_lowercase()
                    )))
                    .with_url(u),
            ));
        }
    }
    if !elements.is_empty() {
        blocks.push(SlackActionsBlock::new(elements).into());
    }
    blocks
}

/// `action_id` of the Ack button.
pub const ACK_ACTION: &str = "sidelight_ack";
/// `action_id` of the Silence 1h button.
pub const SILENCE_ACTION: &str = "sidelight_silence_1h";

fn tone_color(t: Tone) -> &'static str {
    match t {
        Tone::Critical => "attention",
        Tone::Warning => "warning",
        Tone::Resolved => "good",
        Tone::Info => "accent",
    }
}

/// The Teams Workflows payload: a message with one Adaptive Card 1.4 attachment.
pub fn teams_card(m: &Message) -> Value {
    let mut body = vec![json!({
        "type": "TextBlock",
        "text": render::plain(&m.title),
        "size": "Medium",
        "weight": "Bolder",
        "color": tone_color(m.tone),
        "wrap": true,
    })];
    for line in &m.lines {
        body.push(json!({ "type": "TextBlock", "text": render::plain(line), "wrap": true }));
    }
    if !m.context.is_empty() {
        body.push(json!({
            "type": "TextBlock",
            "text": m.context.join(" · "),
            "isSubtle": true,
            "size": "Small",
            "wrap": true,
        }));
    }
    let actions: Vec<Value> = m
        .links
        .iter()
        .map(|(t, u)| json!({ "type": "Action.OpenUrl", "title": t, "url": u }))
        .collect();
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "msteams": { "width": "Full" },
                "body": body,
                "actions": actions,
            }
        }]
    })
}

/// The generic webhook body (Alertmanager-like).
pub fn webhook_body(item: &Item, m: &Message) -> Value {
    let alerts = |n: &Notification| -> Vec<Value> {
        n.alerts
            .iter()
            .map(|(a, s)| {
                json!({
                    "status": s,
                    "labels": a.labels,
                    "summary": a.summary,
                    "value": a.value,
                    "values": a.values,
                    "activeAt": a.active_at,
                    "firedAt": a.fired_at,
                    "resolvedAt": a.resolved_at,
                    "runbook": a.runbook,
                    "dashboard": a.dashboard,
                    "fingerprint": a.fingerprint,
                })
            })
            .collect()
    };
    match item {
        Item::Group(n) => json!({
            "version": "1",
            "type": "alerts",
            "receiver": n.receiver,
            "kind": n.kind,
            "status": if n.count(super::notify::Status::Firing) > 0 { "firing" } else { "resolved" },
            "groupKey": n.key,
            "groupLabels": n.group_labels,
            "title": render::plain(&m.title),
            "context": m.context,
            "alerts": alerts(n),
        }),
        Item::Notice(_) => json!({
            "version": "1",
            "type": "notice",
            "title": render::plain(&m.title),
            "lines": m.lines.iter().map(|l| render::plain(l)).collect::<Vec<_>>(),
            "context": m.context,
        }),
        Item::Summary(ns, texts) => json!({
            "version": "1",
            "type": "summary",
            "title": m.title,
            "groups": ns.iter().map(|n| json!({"groupKey": n.key, "alerts": alerts(n)})).collect::<Vec<_>>(),
            "notices": texts,
        }),
    }
}

async fn post_json(
    http: &Http,
    url: &str,
    body: &Value,
    headers: &[(&str, String)],
) -> Result<(u16, Option<Duration>), SendError> {
    let mut req = hyper::Request::post(url).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| SendError::Refused(format!("bad request: {e}")))?;
    let resp = tokio::time::timeout(Duration::from_secs(15), http.request(req))
        .await
        .map_err(|_| SendError::Temporary("timed out".into()))?
        .map_err(|e| SendError::Temporary(e.to_string()))?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    // Drain the body so the connection can be reused.
    let _ = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect()).await;
    Ok((status, retry_after))
}

fn classify(status: u16, retry_after: Option<Duration>, ok: &[u16]) -> Result<(), SendError> {
    if ok.contains(&status) {
        Ok(())
    } else if status == 429 {
        Err(SendError::RateLimited(retry_after))
    } else if status >= 500 {
        Err(SendError::Temporary(format!("HTTP {status}")))
    } else {
        Err(SendError::Refused(format!("HTTP {status}")))
    }
}

/// Backoff before retry `attempt` (1-based).
pub fn backoff(e: &SendError, attempt: u32) -> Duration {
    match e {
        SendError::RateLimited(Some(d)) => *d,
        SendError::RateLimited(None) => Duration::from_secs(1),
        _ => Duration::from_millis(500u64.saturating_mul(1 << attempt.min(6)))
            .min(Duration::from_secs(30)),
    }
}

/// One receiver's sender.
#[derive(Debug)]
pub struct Sender {
    /// Receiver name.
    pub name: String,
    /// `slack`, `teams`, `webhook`.
    pub channel: &'static str,
    /// How it posts.
    pub transport: Transport,
    /// Its queue.
    pub queue: Arc<Queue>,
    /// Least time between two posts.
    pub rate_limit: Duration,
    /// Retries per item.
    pub max_retries: u32,
}

impl Sender {
    /// Posts queued items until cancelled, reporting group outcomes on `reports`.
    pub async fn run(
        self,
        reports: mpsc::Sender<Report>,
        metrics: DeliveryMetrics,
        deploys: Arc<RwLock<HashMap<String, DeployInfo>>>,
        cancel: CancellationToken,
    ) {
        let label = [("channel", self.channel)];
        let mut last: Option<tokio::time::Instant> = None;
        loop {
            let item = tokio::select! {
                _ = cancel.cancelled() => break,
                i = self.queue.pop() => i,
            };
            let mut attempt = 0;
            let result = loop {
                if let Some(t) = last {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep_until(t + self.rate_limit) => {}
                    }
                }
                let snapshot = deploys.read().clone();
                let r = self
                    .transport
                    .send(&item, crate::alerting::now_ms(), &snapshot)
                    .await;
                last = Some(tokio::time::Instant::now());
                match r {
                    Ok(m) => break Ok(m),
                    Err(e) if attempt < self.max_retries && !matches!(e, SendError::Refused(_)) => {
                        attempt += 1;
                        metrics.retried.get_or_create(&label).inc();
                        let wait = backoff(&e, attempt);
                        tracing::debug!(receiver = %self.name, error = %e, wait_ms = wait.as_millis() as u64, "retrying a notification");
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(wait) => {}
                        }
                        // The wait honoured Retry-After: send right away.
                        last = None;
                    }
                    Err(e) => break Err(e),
                }
            };
            let groups: Vec<(String, u64)> = match &item {
                Item::Group(n) => vec![(n.key.clone(), n.seq)],
                Item::Summary(ns, _) => ns.iter().map(|n| (n.key.clone(), n.seq)).collect(),
                Item::Notice(_) => Vec::new(),
            };
            match result {
                Ok(message) => {
                    metrics.sent.get_or_create(&label).inc();
                    for (i, (key, seq)) in groups.into_iter().enumerate() {
                        let message = if i == 0 && matches!(item, Item::Group(_)) {
                            message.clone()
                        } else {
                            None
                        };
                        let _ = reports.send(Report::Delivered { key, seq, message }).await;
                    }
                }
                Err(e) => {
                    metrics.failed.get_or_create(&label).inc();
                    tracing::warn!(receiver = %self.name, error = %e, "notification failed");
                    for (key, seq) in groups {
                        let _ = reports.send(Report::Failed { key, seq }).await;
                    }
                }
            }
        }
    }
}

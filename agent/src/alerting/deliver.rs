//! The edge that talks to chats: one bounded queue and one sender task per receiver, paced to
//! `rate_limit` (1 message per second by default: Slack's per-channel limit), retrying 429 (after
//! `Retry-After`), 5xx and network errors with backoff, reporting every outcome back to the
//! dispatcher. When a queue is full, new items are coalesced into one summary message at its
//! tail instead of being dropped (counted in `sidelight_notifications_coalesced_total`).
//!
//! Transports: Slack through `slack-morphism` (bot token: `chat.postMessage`, `chat.update`,
//! thread replies; or an incoming webhook), Teams Workflows (Adaptive Card 1.4; 202 is success)
//! and generic JSON webhooks (optional bearer token and HMAC signature), the last two over the
//! agent's HTTP client ([`sidelight_collector::http_client`]: rustls with the system's roots, or
//! plain HTTP); slack-morphism builds its client on that client's connector.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use sidelight_collector::http_client::tls::ClientTls;
use sidelight_collector::http_client::{ClientOptions, Connector, HttpClient, RequestError};
use slack_morphism::errors::SlackClientError;
use slack_morphism::prelude::*;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::alert::Millis;
use super::alert::{Alert, DeployInfo, fmt_value};
use super::config::{NotifierConfig, NotifierKind};
use super::notify::{MessageRef, Notification, Status};
use super::render::{self, Message, Tone};
use crate::config::common::Secret;

/// The HTTP client shared by every transport.
pub type Http = HttpClient;

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot load the system's TLS roots: {0}")]
pub struct ClientError(#[from] sidelight_collector::http_client::tls::TlsError);

/// The deadline of one post (connect, send, read the answer).
const POST_TIMEOUT: Duration = Duration::from_secs(15);
/// The most of a chat or webhook answer read (only its status is used).
const MAX_ANSWER: usize = 64 * 1024;

/// A client for `https://` (system roots) and `http://` (tests, local gateways).
pub fn http_client() -> Result<Http, ClientError> {
    let tls = ClientTls::load(&Default::default())?;
    Ok(HttpClient::new(&ClientOptions {
        tls: Some(Arc::new(tls)),
        timeout: POST_TIMEOUT,
        max_response_bytes: MAX_ANSWER,
    })?)
}

/// The same TLS settings as a connector, for slack-morphism's own hyper client.
pub fn http_connector() -> Result<Connector, ClientError> {
    Ok(http_client()?.connector())
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
    client: SlackClient<SlackClientHyperConnector<Connector>>,
    mode: SlackMode,
    /// `{external_url}/api/v1/alerts`, linked from "and N more".
    all_alerts: Option<String>,
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
        /// `{external_url}/api/v1/alerts`, linked from "and N more".
        all_alerts: Option<String>,
        /// Most bytes a card may take (`max_card_bytes`).
        max_bytes: usize,
    },
    /// A JSON webhook (Alertmanager's format).
    Webhook {
        /// The client.
        http: Http,
        /// Target.
        url: Secret,
        /// Bearer token.
        bearer: Option<Secret>,
        /// HMAC key.
        hmac: Option<Secret>,
        /// Receiver name (`receiver`).
        receiver: String,
        /// Links and truncation.
        shape: WebhookShape,
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
        let all_alerts = cfg
            .external_url
            .as_deref()
            .map(|u| format!("{}/api/v1/alerts", u.trim_end_matches('/')));
        Ok(match &cfg.kind {
            NotifierKind::SlackBot {
                token,
                channel,
                api_url,
            } => {
                let connector = SlackClientHyperConnector::with_connector(http.connector())
                    .with_slack_api_url(api_url);
                Self::Slack(Box::new(Slack {
                    client: SlackClient::new(connector),
                    all_alerts: all_alerts.clone(),
                    mode: SlackMode::Bot {
                        token: SlackApiToken::new(SlackApiTokenValue::new(
                            token.expose().to_owned(),
                        )),
                        channel: channel.clone(),
                    },
                }))
            }
            NotifierKind::SlackWebhook { url } => {
                let connector = SlackClientHyperConnector::with_connector(http.connector());
                let url = url::Url::parse(url.expose())
                    .map_err(|_| "the Slack webhook URL does not parse".to_owned())?;
                Self::Slack(Box::new(Slack {
                    client: SlackClient::new(connector),
                    all_alerts: all_alerts.clone(),
                    mode: SlackMode::Webhook(url),
                }))
            }
            NotifierKind::Teams {
                url,
                max_card_bytes,
            } => Self::Teams {
                http: http.clone(),
                url: url.clone(),
                all_alerts,
                max_bytes: *max_card_bytes,
            },
            NotifierKind::Webhook { url, bearer, hmac } => Self::Webhook {
                http: http.clone(),
                url: url.clone(),
                bearer: bearer.clone(),
                hmac: hmac.clone(),
                receiver: cfg.name.clone(),
                shape: WebhookShape {
                    external_url: cfg.external_url.clone(),
                    max_alerts: cfg.max_alerts,
                },
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
            // Bot mode may take two calls (an update and its thread reply): one deadline each.
            Self::Slack(s) => tokio::time::timeout(2 * POST_TIMEOUT, s.send(&msg, existing))
                .await
                .unwrap_or_else(|_| Err(SendError::Temporary("timed out".into()))),
            Self::Teams {
                http,
                url,
                all_alerts,
                max_bytes,
            } => {
                // Never posted: the workflow would answer 202 and then fail to post it.
                let body = teams_card(&msg, all_alerts.as_deref(), *max_bytes)
                    .map_err(|e| SendError::Refused(e.to_string()))?;
                let (status, retry_after) = post_json(http, url.expose(), &body, &[]).await?;
                classify(status, retry_after, &[200, 202]).map(|()| None)
            }
            Self::Webhook {
                http,
                url,
                bearer,
                hmac,
                receiver,
                shape,
            } => {
                let Some(body) = webhook_body(item, receiver, shape) else {
                    return Ok(None);
                };
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
            .with_text(render::slack_escape_within(&render::plain(&msg.text), 3000))
            .with_blocks(slack_blocks(msg, self.all_alerts.as_deref()));
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
                                        SlackMessageContent::new()
                                            .with_text(render::slack_escape_within(f, 3000)),
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
/// Bytes (so also characters) per section (Slack allows 3000 characters).
const SECTION_CHARS: usize = 2900;

/// "…and N more" for a message that leaves items out, linking the full list when the agent's
/// external URL is known. Slack mrkdwn (the link is our markup; the URL is escaped).
fn slack_more(more: usize, all_alerts: Option<&str>) -> String {
    match all_alerts {
        Some(u) => format!(
            "…and {more} more: <{}|all alerts>",
            render::slack_escape(u).replace('|', "%7C")
        ),
        None => format!("…and {more} more (see the agent's /api/v1/alerts)"),
    }
}

/// Block Kit for a message: a header, sections packed with the lines, a context line with the
/// deployment, and actions (Ack, Silence 1h, links). Every text from telemetry is escaped for
/// Slack ([`render::slack_escape`]); the header is `plain_text`, which Slack never parses.
pub fn slack_blocks(m: &Message, all_alerts: Option<&str>) -> Vec<SlackBlock> {
    let mut blocks: Vec<SlackBlock> = vec![
        SlackHeaderBlock::new(SlackBlockPlainTextOnly::from(truncate(
            &render::plain(&m.title),
            150,
        )))
        .into(),
    ];
    let mut chunks: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut lines: Vec<String> = m
        .lines
        .iter()
        .map(|l| render::slack_escape_within(l, SECTION_CHARS))
        .collect();
    if m.more > 0 {
        lines.push(slack_more(m.more, all_alerts));
    }
    for line in lines {
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
                SlackBlockMarkDownText::new(render::slack_escape_within(
                    &m.context.join(" · "),
                    2900,
                )),
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

/// Teams Workflows' "post card in a chat or channel" action takes about 28 KB (Microsoft's
/// documented limit, measured on the request body); a webhook answers 202 before that action
/// runs, so a larger card would count as sent and never appear. Cards are built to stay under
/// [`teams_budget`] bytes of serialized JSON and refused above the receiver's `max_card_bytes`
/// (this by default, and at most).
pub const TEAMS_MAX_BYTES: usize = 28 * 1024;
/// The smallest `max_card_bytes`: room for a card's frame, a title and an "and N more" line.
pub const TEAMS_MIN_CARD_BYTES: usize = 1024;
/// What a card of the default limit is built to fit in: the limit with a 4 KiB margin.
pub const TEAMS_CARD_BUDGET: usize = teams_budget(TEAMS_MAX_BYTES);

/// What a card is built to fit in under a limit of `max_bytes`: a seventh of it is kept as a
/// margin (4 KiB of the default 28 KiB).
pub const fn teams_budget(max_bytes: usize) -> usize {
    max_bytes - max_bytes / 7
}
/// Characters of a card's title before it is shortened with an ellipsis.
const TEAMS_TITLE_CHARS: usize = 300;
/// Characters of one text line (an alert's summary line, a notice) before the ellipsis.
const TEAMS_LINE_CHARS: usize = 1000;
/// Characters of the context line before the ellipsis.
const TEAMS_CONTEXT_CHARS: usize = 500;
/// Characters of a link's URL beyond which the link is left off (a cut URL is a broken one).
const TEAMS_URL_CHARS: usize = 2000;

/// Why no Teams card could be built: its size and the limit, in bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the Teams card would be {0} bytes, above the {1}-byte limit (max_card_bytes) even with every alert line left out; not posted"
)]
pub struct CardTooLarge(pub usize, pub usize);

fn json_len(v: &Value) -> usize {
    serde_json::to_string(v).map_or(usize::MAX, |s| s.len())
}

/// One paragraph of verbatim text: a `RichTextBlock` of `TextRun`s, which Adaptive Cards never
/// read as Markdown, so an injected `[click](https://…)` stays text.
fn teams_text(text: &str, run: Value) -> Value {
    let mut run = run;
    run["type"] = json!("TextRun");
    run["text"] = json!(text);
    json!({ "type": "RichTextBlock", "inlines": [run] })
}

/// The blocks of one message line (an alert takes two lines: what, and since when).
fn teams_line_blocks(line: &str) -> Vec<Value> {
    render::plain(line)
        .split('\n')
        .enumerate()
        .map(|(i, l)| {
            let mut b = teams_text(&truncate(l, TEAMS_LINE_CHARS), json!({}));
            if i > 0 {
                b["spacing"] = json!("none");
            }
            b
        })
        .collect()
}

/// The Teams Workflows payload: a message with one Adaptive Card 1.4 attachment, under
/// [`teams_budget`]`(max_bytes)` bytes: texts shortened with an ellipsis, lines that do not fit
/// left out and counted in an "and N more" line whose link opens the full list (`all_alerts`,
/// the agent's `/api/v1/alerts`, else the dashboard). Every text is verbatim (see
/// [`teams_text`]). A card whose fixed part (title, context, the "and N more" line) is still
/// above `max_bytes` is refused.
pub fn teams_card(
    m: &Message,
    all_alerts: Option<&str>,
    max_bytes: usize,
) -> Result<Value, CardTooLarge> {
    let budget = teams_budget(max_bytes);
    let title = teams_text(
        &truncate(&render::plain(&m.title), TEAMS_TITLE_CHARS),
        json!({ "size": "medium", "weight": "bolder", "color": tone_color(m.tone) }),
    );
    let context = (!m.context.is_empty()).then(|| {
        teams_text(
            &truncate(&render::plain(&m.context.join(" · ")), TEAMS_CONTEXT_CHARS),
            json!({ "isSubtle": true, "size": "small" }),
        )
    });
    let mut actions: Vec<Value> = m
        .links
        .iter()
        .filter(|(_, u)| u.chars().count() <= TEAMS_URL_CHARS && url::Url::parse(u).is_ok())
        .map(|(t, u)| json!({ "type": "Action.OpenUrl", "title": truncate(t, 40), "url": u }))
        .collect();
    let all = all_alerts
        .filter(|u| u.chars().count() <= TEAMS_URL_CHARS && url::Url::parse(u).is_ok())
        .map(|u| json!({ "type": "Action.OpenUrl", "title": "All alerts", "url": u }));
    let card = |body: &[Value], actions: &[Value]| {
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
    };
    let more_block = |n: usize, linked: bool| {
        let where_ = if linked {
            "open All alerts for the full list"
        } else if m.links.iter().any(|(t, _)| t == "Dashboard") {
            "see the Dashboard or the agent's /api/v1/alerts"
        } else {
            "see the agent's /api/v1/alerts"
        };
        teams_text(
            &format!("…and {n} more: {where_}"),
            json!({ "isSubtle": true }),
        )
    };
    // The fixed part: title, context, links, the "All alerts" link and room for an "and N
    // more" line with the largest count it can show.
    let mut with_all = actions.clone();
    with_all.extend(all.clone());
    let mut fixed: Vec<Value> = vec![title.clone()];
    fixed.extend(context.clone());
    let reserve = json_len(&more_block(usize::MAX, all.is_some())) + 1;
    let mut used = json_len(&card(&fixed, &with_all)) + reserve;
    if used > budget {
        // Only oversized links can make the fixed part this large: leave them off.
        actions.clear();
        with_all = all.iter().cloned().collect();
        used = json_len(&card(&fixed, &with_all)) + reserve;
    }
    let mut body = vec![title];
    let mut shown = 0usize;
    for line in &m.lines {
        let blocks = teams_line_blocks(line);
        let size: usize = blocks.iter().map(|b| json_len(b) + 1).sum();
        if used + size > budget {
            break;
        }
        used += size;
        body.extend(blocks);
        shown += 1;
    }
    let more = m.more + (m.lines.len() - shown);
    let final_actions = if more > 0 {
        body.push(more_block(more, all.is_some()));
        with_all
    } else {
        actions
    };
    body.extend(context);
    let v = card(&body, &final_actions);
    let len = json_len(&v);
    if len > max_bytes {
        return Err(CardTooLarge(len, max_bytes));
    }
    Ok(v)
}

/// Alertmanager's fingerprint of a label set: FNV-1a (64 bit) over the sorted names and values,
/// each followed by the byte 0xff, as 16 hex digits (the `fingerprint` Alertmanager sends).
pub fn am_fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in labels {
        for b in k.bytes().chain([0xff]).chain(v.bytes()).chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// RFC 3339 in UTC with milliseconds (`2026-12-06T13:00:00.123Z`).
fn rfc3339(ms: Millis) -> String {
    // Before 1970 or beyond jiff's range (year 9999): the epoch, as before for negatives.
    let t = jiff::Timestamp::from_millisecond(ms.max(0)).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    format!("{t:.3}")
}

/// What Alertmanager sends as `endsAt` of an alert that still fires (Go's zero time).
const AM_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Labels or annotations every alert has with the same value.
fn common(maps: &[BTreeMap<String, String>]) -> BTreeMap<String, String> {
    let Some((first, rest)) = maps.split_first() else {
        return BTreeMap::new();
    };
    first
        .iter()
        .filter(|(k, v)| rest.iter().all(|m| m.get(*k) == Some(*v)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Where a generic webhook's links point, and how many alerts one message carries.
#[derive(Debug, Clone, Default)]
pub struct WebhookShape {
    /// The agent's external URL (`externalURL`; `generatorURL` is `{it}/api/v1/rules`).
    pub external_url: Option<String>,
    /// Most alerts in one message (0: all); the rest are counted in `truncatedAlerts`.
    pub max_alerts: usize,
}

/// The generic webhook body: Alertmanager's webhook format, version 4. One message per alert
/// group; a coalesced summary becomes one message with the latest state of every alert of its
/// groups. Alerts silenced since they were notified are left out (Alertmanager does not send
/// silenced alerts); `None` when nothing is left to send (notices, and a group whose every alert
/// is silenced).
pub fn webhook_body(item: &Item, receiver: &str, shape: &WebhookShape) -> Option<Value> {
    let (key, group_labels, members): (String, BTreeMap<String, String>, Vec<&(Alert, Status)>) =
        match item {
            Item::Group(n) => (
                n.key.clone(),
                n.group_labels.clone(),
                n.alerts.iter().collect(),
            ),
            Item::Summary(ns, _) => {
                let mut by_fp: BTreeMap<&str, &(Alert, Status)> = BTreeMap::new();
                for n in ns {
                    for m in &n.alerts {
                        by_fp.insert(m.0.fingerprint.as_str(), m);
                    }
                }
                (
                    format!("{receiver}:coalesced"),
                    BTreeMap::new(),
                    by_fp.into_values().collect(),
                )
            }
            Item::Notice(_) => return None,
        };
    let external = shape
        .external_url
        .as_deref()
        .map(|u| u.trim_end_matches('/').to_owned())
        .unwrap_or_default();
    let generator = if external.is_empty() {
        String::new()
    } else {
        format!("{external}/api/v1/rules")
    };
    let mut alerts: Vec<(&Alert, Status, BTreeMap<String, String>)> = members
        .into_iter()
        .filter(|(_, s)| *s != Status::Silenced)
        .map(|(a, s)| {
            let mut ann = BTreeMap::new();
            ann.insert("summary".to_owned(), a.summary.clone());
            ann.insert("value".to_owned(), fmt_value(a.value));
            if let Some(r) = &a.runbook {
                ann.insert("runbook_url".to_owned(), r.clone());
            }
            if let Some(d) = &a.dashboard {
                ann.insert("dashboard_url".to_owned(), d.clone());
            }
            (a, *s, ann)
        })
        .collect();
    if alerts.is_empty() {
        return None;
    }
    let firing = alerts.iter().any(|(_, s, _)| *s == Status::Firing);
    let labels: Vec<BTreeMap<String, String>> =
        alerts.iter().map(|(a, _, _)| a.labels.clone()).collect();
    let anns: Vec<BTreeMap<String, String>> = alerts.iter().map(|(_, _, n)| n.clone()).collect();
    let truncated = if shape.max_alerts > 0 && alerts.len() > shape.max_alerts {
        let t = alerts.len() - shape.max_alerts;
        alerts.truncate(shape.max_alerts);
        t
    } else {
        0
    };
    let alerts: Vec<Value> = alerts
        .into_iter()
        .map(|(a, s, ann)| {
            let starts = a.fired_at.unwrap_or(a.active_at);
            let (status, ends) = match s {
                Status::Resolved => (
                    "resolved",
                    rfc3339(a.resolved_at.unwrap_or(a.last_active).max(starts)),
                ),
                _ => ("firing", AM_ZERO_TIME.to_owned()),
            };
            json!({
                "status": status,
                "labels": a.labels,
                "annotations": ann,
                "startsAt": rfc3339(starts),
                "endsAt": ends,
                "generatorURL": generator,
                "fingerprint": am_fingerprint(&a.labels),
            })
        })
        .collect();
    Some(json!({
        "version": "4",
        "groupKey": key,
        "truncatedAlerts": truncated,
        "status": if firing { "firing" } else { "resolved" },
        "receiver": receiver,
        "groupLabels": group_labels,
        "commonLabels": common(&labels),
        "commonAnnotations": common(&anns),
        "externalURL": external,
        "alerts": alerts,
    }))
}

async fn post_json(
    http: &Http,
    url: &str,
    body: &Value,
    headers: &[(&str, String)],
) -> Result<(u16, Option<Duration>), SendError> {
    let mut req = http::Request::post(url).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let req = req
        .body(Bytes::from(body.to_string()))
        .map_err(|e| SendError::Refused(format!("bad request: {e}")))?;
    let resp = http.send(req).await.map_err(|e| match e {
        RequestError::Timeout(_) => SendError::Temporary("timed out".into()),
        e => SendError::Temporary(e.to_string()),
    })?;
    let retry_after = resp
        .header("retry-after")
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    Ok((resp.status.as_u16(), retry_after))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerting::alert::State;
    use crate::alerting::notify::Kind;

    /// Telemetry an attacker controls: mentions, a disguised link, a bare `&`, a Markdown link.
    const HOSTILE: &str = "GET /x <!channel> <!here> <@U123> <https://evil.example|click> a&b [click](https://evil.example/md)";

    fn alert(i: usize, span: &str) -> Alert {
        Alert {
            fingerprint: format!("a{i}"),
            labels: BTreeMap::from([
                ("alertname".to_string(), "SpanErrors".to_string()),
                ("service".to_string(), "checkout".to_string()),
                ("severity".to_string(), "critical".to_string()),
                ("span_name".to_string(), span.to_string()),
            ]),
            summary: format!("{span} fails"),
            runbook: Some("https://runbooks.example/spans".into()),
            dashboard: Some("https://grafana.example/d/red".into()),
            value: 0.5,
            external: Vec::new(),
            state: State::Firing,
            active_at: 1_700_000_000_000,
            fired_at: Some(1_700_000_060_000),
            resolved_at: None,
            last_active: 1_700_000_060_000,
        }
    }

    fn group(alerts: Vec<Alert>) -> Notification {
        Notification {
            key: "teams:alertname=SpanErrors".into(),
            receiver: "teams".into(),
            group_labels: BTreeMap::from([("alertname".into(), "SpanErrors".into())]),
            kind: Kind::New,
            alerts: alerts.into_iter().map(|a| (a, Status::Firing)).collect(),
            seq: 1,
            acked_by: None,
            message: None,
        }
    }

    fn texts(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => out.push(s.clone()),
            Value::Array(a) => a.iter().for_each(|x| texts(x, out)),
            Value::Object(o) => o.values().for_each(|x| texts(x, out)),
            _ => {}
        }
    }

    #[test]
    fn slack_text_is_escaped_and_never_cut_inside_an_entity() {
        assert_eq!(
            render::slack_escape("<!channel> a&b <@U1>"),
            "&lt;!channel&gt; a&amp;b &lt;@U1&gt;"
        );
        for max in 1..40 {
            let s = render::slack_escape_within("<<<&&&>>> <!here> é界", max);
            assert!(s.len() <= max.max(3), "{max}: {s}");
            let cut = s.trim_end_matches('…');
            // Every `&` starts a whole entity.
            for (i, _) in cut.match_indices('&') {
                let rest = &cut[i..];
                assert!(
                    rest.starts_with("&amp;")
                        || rest.starts_with("&lt;")
                        || rest.starts_with("&gt;"),
                    "{max}: {s}"
                );
            }
            assert!(!cut.contains('<') && !cut.contains('>'));
        }
    }

    #[test]
    fn slack_blocks_carry_no_raw_markup_from_telemetry() {
        let n = group((0..3).map(|i| alert(i, HOSTILE)).collect());
        let m = render::notification(&n, 1_700_000_120_000, &HashMap::new());
        let blocks = serde_json::to_value(slack_blocks(&m, None)).expect("json");
        for b in blocks.as_array().expect("blocks") {
            let mut t = Vec::new();
            match b["type"].as_str() {
                Some("section") => texts(&b["text"]["text"], &mut t),
                Some("context") => texts(&b["elements"], &mut t),
                _ => continue,
            }
            for s in t {
                assert!(!s.contains('<') && !s.contains('>'), "{s}");
                assert!(
                    s.contains("&lt;!channel&gt;") || !s.contains("channel"),
                    "{s}"
                );
            }
        }
        assert!(blocks.to_string().contains("a&amp;b"));
    }

    fn card_len(v: &Value) -> usize {
        serde_json::to_string(v)
            .map(|s| s.len())
            .unwrap_or(usize::MAX)
    }

    #[test]
    fn teams_cards_stay_under_28_kb_in_the_worst_cases() {
        let long = "é🔥界".repeat(1366) + &"x".repeat(4096); // > 4 KB of Unicode and ASCII
        let cases: Vec<(&str, Vec<Alert>)> = vec![
            (
                "35 alerts, 4 KB labels",
                (0..35).map(|i| alert(i, &long)).collect(),
            ),
            (
                "40 short alerts",
                (0..40).map(|i| alert(i, "GET /x")).collect(),
            ),
            ("hostile", (0..5).map(|i| alert(i, HOSTILE)).collect()),
        ];
        for (what, alerts) in cases {
            let total = alerts.len();
            let n = group(alerts);
            let m = render::notification(&n, 1_700_000_120_000, &HashMap::new());
            let card = teams_card(
                &m,
                Some("https://agent.example/api/v1/alerts"),
                TEAMS_MAX_BYTES,
            )
            .expect(what);
            let len = card_len(&card);
            assert!(len <= TEAMS_CARD_BUDGET, "{what}: {len} bytes");
            let body = card["attachments"][0]["content"]["body"]
                .as_array()
                .expect("body")
                .clone();
            assert!(body.iter().all(|b| b["type"] == "RichTextBlock"), "{what}");
            let all: Vec<String> = {
                let mut t = Vec::new();
                texts(&Value::Array(body), &mut t);
                t
            };
            // Each alert's first line is shown or counted.
            let shown = all
                .iter()
                .filter(|t| t.contains("SpanErrors critical"))
                .count();
            if shown < total {
                let more = format!("…and {} more", total - shown);
                assert!(all.iter().any(|t| t.starts_with(&more)), "{what}: {all:?}");
                let actions = card["attachments"][0]["content"]["actions"].to_string();
                assert!(
                    actions.contains("https://agent.example/api/v1/alerts"),
                    "{what}"
                );
            }
            assert!(shown >= 1, "{what}");
            // Shortened values end with an ellipsis and stay within the per-line limit.
            for t in &all {
                assert!(t.chars().count() <= TEAMS_LINE_CHARS, "{what}: {}", t.len());
            }
        }
        // The coalesced summary of 300 notifications of 4 KB alerts is bounded the same way.
        let ns: Vec<Notification> = (0..300).map(|i| group(vec![alert(i, &long)])).collect();
        let m = render::summary(&ns, &["Deployed checkout 1.2".into()], 1_700_000_120_000);
        let card = teams_card(&m, None, TEAMS_MAX_BYTES).expect("summary");
        assert!(card_len(&card) <= TEAMS_CARD_BUDGET);
        assert!(
            card.to_string().contains("more: see the Dashboard")
                || card.to_string().contains("more: see the agent")
        );
    }

    #[test]
    fn teams_text_is_verbatim() {
        let n = group(vec![alert(0, HOSTILE)]);
        let m = render::notification(&n, 1_700_000_120_000, &HashMap::new());
        let card = teams_card(&m, None, TEAMS_MAX_BYTES).expect("card");
        let body = &card["attachments"][0]["content"]["body"];
        // The Markdown link is inside a TextRun (never read as Markdown), not a TextBlock.
        assert!(
            body.to_string()
                .contains("[click](https://evil.example/md)")
        );
        assert!(!body.to_string().contains("\"TextBlock\""));
        // A card whose fixed part cannot fit is refused, not posted.
        let mut big = m.clone();
        big.links = vec![(
            "Runbook".into(),
            format!("https://x.example/{}", "a".repeat(40_000)),
        )];
        let c = teams_card(&big, None, TEAMS_MAX_BYTES).expect("oversized links are left off");
        assert!(card_len(&c) <= TEAMS_CARD_BUDGET);
        assert!(!c.to_string().contains("aaaa"));
    }

    #[test]
    fn a_lower_card_limit_is_kept_and_a_card_that_cannot_fit_is_refused() {
        let alerts: Vec<Alert> = (0..30).map(|i| alert(i, "GET /x")).collect();
        let m = render::notification(&group(alerts), 1_700_000_120_000, &HashMap::new());
        let card = teams_card(&m, None, 4096).expect("fits");
        assert!(card_len(&card) <= teams_budget(4096), "{}", card_len(&card));
        assert!(card.to_string().contains("more: see the"), "{card}");
        // A 300-character title of 4-byte characters alone is above the smallest limit.
        let mut big = m.clone();
        big.title = "🔥".repeat(300);
        let e = teams_card(&big, None, TEAMS_MIN_CARD_BYTES).expect_err("cannot fit");
        assert!(e.0 > TEAMS_MIN_CARD_BYTES, "{e}");
        assert_eq!(e.1, TEAMS_MIN_CARD_BYTES);
        assert!(teams_card(&big, None, TEAMS_MAX_BYTES).is_ok());
    }

    #[test]
    fn webhook_body_is_alertmanager_v4() {
        let mut resolved = alert(1, "GET /b");
        resolved.resolved_at = Some(1_700_000_300_000);
        resolved.state = State::Resolved;
        let mut n = group(vec![alert(0, "GET /a")]);
        n.alerts.push((resolved, Status::Resolved));
        n.alerts.push((alert(2, "GET /c"), Status::Silenced));
        let shape = WebhookShape {
            external_url: Some("https://agent.example/".into()),
            max_alerts: 0,
        };
        let v = webhook_body(&Item::Group(Box::new(n.clone())), "hook", &shape).expect("body");
        assert_eq!(v["version"], "4");
        assert_eq!(v["status"], "firing");
        assert_eq!(v["receiver"], "hook");
        assert_eq!(v["truncatedAlerts"], 0);
        assert_eq!(v["externalURL"], "https://agent.example");
        assert_eq!(v["commonLabels"]["alertname"], "SpanErrors");
        assert!(v["commonLabels"].get("span_name").is_none());
        assert_eq!(
            v["commonAnnotations"]["runbook_url"],
            "https://runbooks.example/spans"
        );
        let alerts = v["alerts"].as_array().expect("alerts");
        assert_eq!(alerts.len(), 2, "the silenced alert is left out");
        assert_eq!(alerts[0]["startsAt"], "2023-11-14T22:14:20.000Z");
        assert_eq!(alerts[0]["endsAt"], AM_ZERO_TIME);
        assert_eq!(alerts[1]["status"], "resolved");
        assert_eq!(alerts[1]["endsAt"], "2023-11-14T22:18:20.000Z");
        assert_eq!(
            alerts[0]["generatorURL"],
            "https://agent.example/api/v1/rules"
        );
        assert_eq!(alerts[0]["fingerprint"].as_str().map(str::len), Some(16));
        // max_alerts as Alertmanager has it.
        let shape = WebhookShape {
            external_url: None,
            max_alerts: 1,
        };
        let v = webhook_body(&Item::Group(Box::new(n)), "hook", &shape).expect("body");
        assert_eq!(v["alerts"].as_array().map(Vec::len), Some(1));
        assert_eq!(v["truncatedAlerts"], 1);
        assert_eq!(v["externalURL"], "");
        // Alertmanager's own fingerprint of {a="b"} (model.LabelSet.Fingerprint).
        let fp = am_fingerprint(&BTreeMap::from([("a".to_string(), "b".to_string())]));
        assert_eq!(fp.len(), 16);
        assert_ne!(fp, am_fingerprint(&BTreeMap::new()));
        assert_eq!(am_fingerprint(&BTreeMap::new()), "cbf29ce484222325");
    }
}

//! Loopback Slack Web API, Teams Workflows endpoint and generic webhook that check requests the
//! way the real services do, and record what they accepted and refused ([`ChatSeen`]). Faults
//! are injected only where a test asks for them ([`ChatOptions`]); nothing here accepts a
//! request the real service would refuse.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::http::{HttpAnswer, HttpRequest, http_server};
use crate::{Result, check_alertmanager, workspace};

/// What the loopback chat peers received and refused.
#[derive(Debug, Default)]
pub struct ChatSeen {
    /// Accepted `chat.postMessage` calls (time, JSON body).
    pub posts: Vec<(Instant, serde_json::Value)>,
    /// Accepted `chat.update` calls.
    pub updates: Vec<serde_json::Value>,
    /// When each accepted `chat.update` arrived (same order as `updates`).
    pub update_times: Vec<Instant>,
    /// Slack calls answered 429: a post less than 1 s after the channel's last one, or any call
    /// inside [`ChatOptions::ratelimit_window`].
    pub rejected_429: usize,
    /// Requests refused, with the reason (bad token, bad blocks, bad card, bad signature).
    pub refused: Vec<String>,
    /// Accepted `apps.connections.open` calls (Socket Mode, with the app-level token).
    pub socket_opens: usize,
    /// Accepted Teams Workflows posts.
    pub teams: Vec<serde_json::Value>,
    /// Teams posts answered 503 by [`ChatOptions::teams_fail_first`].
    pub teams_failed: usize,
    /// Accepted generic-webhook posts (verified bearer token and HMAC signature, parsed as
    /// Alertmanager's webhook format).
    pub hooks: Vec<serde_json::Value>,
    /// Raw bodies of accepted Teams posts (for the Node card check).
    pub teams_raw: Vec<Vec<u8>>,
    /// Markup Slack would have acted on (mentions, links) in accepted posts' mrkdwn texts.
    pub slack_markup: Vec<String>,
    last_post: HashMap<String, Instant>,
    known_ts: Vec<String>,
    next_ts: u64,
    first_call: Option<Instant>,
}

/// Loopback peers that check requests the way the real services do:
///
/// - a Slack Web API under `{url}/api`: `Authorization: Bearer <bot token>` (else
///   `invalid_auth`), JSON bodies (`Content-Type: application/json`), Block Kit shape (header /
///   section / context / actions / divider with Slack's size limits), a known channel (`#alerts`,
///   `alerts` or `C0ALERTS`, else `channel_not_found`), at most one `chat.postMessage` per second
///   per channel (else HTTP 429 with `Retry-After: 1`; [`ChatOptions::channel_limit`]),
///   `chat.update` only of a message it returned, realistic `ok` / `channel` / `ts` answers
///   (channel names become the channel id `C0ALERTS`); `apps.connections.open` (Socket Mode)
///   only with the app-level token when [`ChatOptions::app_token`] is set
///   (`not_allowed_token_type` for a bot token), answering [`ChatOptions::socket_url`];
/// - a Teams Workflows endpoint at `{url}/workflows/{TEAMS_PATH}`: at most 28 KB (413 beyond,
///   where the real post action would fail after a 202), a message with one Adaptive Card 1.4
///   attachment of verbatim text runs whose title has a severity colour; 202;
/// - a generic JSON webhook at `{url}/hook`: `Authorization: Bearer <hook token>` and
///   `X-Sidelight-Signature: sha256=<HMAC-SHA256 of the raw body>`, else 401; a body that is not
///   Alertmanager's webhook format ([`check_alertmanager`]), 400. Off when the hook token is
///   empty;
/// - `GET {url}/state`: what was accepted and refused, as JSON ([`ChatPeers::state_json`]).
///
/// Slack does not refuse markup in text; the peer records what it would act on
/// (`ChatSeen::slack_markup`).
pub struct ChatPeers {
    pub url: String,
    pub seen: Arc<Mutex<ChatSeen>>,
    epoch: (Instant, SystemTime),
}

/// The Teams workflow path the peers accept.
pub const TEAMS_PATH: &str = "wf-8c1d";

/// What a client must send to be accepted.
#[derive(Debug, Clone)]
pub struct ChatSecrets {
    /// The Slack bot token (`xoxb-…`) the Web API methods require.
    pub slack_token: String,
    /// The generic webhook's bearer token (empty: no webhook route).
    pub hook_token: String,
    /// The generic webhook's HMAC key.
    pub hook_hmac: String,
}

/// How the peers behave beyond the real services' rules.
#[derive(Debug, Clone)]
pub struct ChatOptions {
    /// Slack's per-channel limit on `chat.postMessage`: one per second, 429 + `Retry-After: 1`
    /// beyond it. On by default.
    pub channel_limit: bool,
    /// For this long from the first Slack call, every authenticated Slack call is answered HTTP
    /// 429 (`ratelimited`) with `Retry-After: retry_after` seconds.
    pub ratelimit_window: Option<(Duration, u64)>,
    /// The first N Teams posts that pass every check are answered 503 (a transient outage).
    pub teams_fail_first: usize,
    /// The Slack app-level token (`xapp-…`) `apps.connections.open` requires; None: the method
    /// is refused as Slack refuses it for an app without Socket Mode.
    pub app_token: Option<String>,
    /// The `wss://` (here `ws://`) URL `apps.connections.open` answers.
    pub socket_url: Option<String>,
}

impl Default for ChatOptions {
    fn default() -> Self {
        ChatOptions {
            channel_limit: true,
            ratelimit_window: None,
            teams_fail_first: 0,
            app_token: None,
            socket_url: None,
        }
    }
}

fn slack_json(v: serde_json::Value) -> HttpAnswer {
    (200, Vec::new(), v.to_string())
}

/// What Slack checks of a Block Kit payload (the block types Sidelight uses).
pub fn check_blocks(body: &serde_json::Value) -> std::result::Result<(), String> {
    let Some(blocks) = body.get("blocks") else {
        return if body["text"].is_string() {
            Ok(())
        } else {
            Err("neither text nor blocks".into())
        };
    };
    let blocks = blocks.as_array().ok_or("blocks is not an array")?;
    if blocks.is_empty() || blocks.len() > 50 {
        return Err(format!("{} blocks", blocks.len()));
    }
    for b in blocks {
        match b["type"].as_str() {
            Some("header") => {
                if b["text"]["type"] != "plain_text"
                    || b["text"]["text"]
                        .as_str()
                        .is_none_or(|t| t.chars().count() > 150)
                {
                    return Err(format!("bad header {b}"));
                }
            }
            Some("section") => {
                let t = &b["text"];
                if t["type"] != "mrkdwn" || t["text"].as_str().is_none_or(|t| t.len() > 3000) {
                    return Err(format!("bad section {b}"));
                }
            }
            Some("context") => {
                if b["elements"]
                    .as_array()
                    .is_none_or(|e| e.is_empty() || e.len() > 10)
                {
                    return Err(format!("bad context {b}"));
                }
            }
            Some("actions") => {
                for e in b["elements"].as_array().ok_or("actions without elements")? {
                    if e["type"] != "button" || e["text"]["type"] != "plain_text" {
                        return Err(format!("bad button {e}"));
                    }
                    if e.get("url").is_none() && e["action_id"].as_str().is_none() {
                        return Err(format!("button without action_id {e}"));
                    }
                }
            }
            Some("divider") => {
                if b.as_object()
                    .is_some_and(|o| o.keys().any(|k| k != "type" && k != "block_id"))
                {
                    return Err(format!("bad divider {b}"));
                }
            }
            other => return Err(format!("unexpected block type {other:?}")),
        }
    }
    Ok(())
}

/// The most a Teams Workflows "post card in a chat or channel" action takes (about 28 KB,
/// Microsoft's documented limit, on the request body).
pub const TEAMS_MAX_BYTES: usize = 28 * 1024;

/// Whether a Teams Workflows body is a message with one Adaptive Card 1.4 whose texts are
/// verbatim text runs and whose title has a severity colour. The full check (Microsoft's
/// `adaptivecards` library and the 1.4 schema model) is [`check_teams_cards_with_node`].
pub fn check_teams_card(v: &serde_json::Value) -> std::result::Result<(), String> {
    let att = &v["attachments"][0];
    let card = &att["content"];
    let ok = v["type"] == "message"
        && v["attachments"].as_array().is_some_and(|a| a.len() == 1)
        && att["contentType"] == "application/vnd.microsoft.card.adaptive"
        && card["type"] == "AdaptiveCard"
        && card["version"] == "1.4"
        && card["body"].as_array().is_some_and(|b| {
            !b.is_empty()
                && b.iter().all(|x| {
                    x["type"] == "RichTextBlock"
                        && x["inlines"].as_array().is_some_and(|i| {
                            i.iter()
                                .all(|r| r["type"] == "TextRun" && r["text"].is_string())
                        })
                })
        })
        && ["attention", "warning", "good", "accent"]
            .iter()
            .any(|c| card["body"][0]["inlines"][0]["color"] == *c)
        && card["actions"].as_array().is_none_or(|a| {
            a.iter()
                .all(|x| x["type"] == "Action.OpenUrl" && x["url"].is_string())
        });
    if ok {
        Ok(())
    } else {
        Err(format!("bad card {v}"))
    }
}

/// Runs `tests/node/check-teams-cards.js` (Microsoft's `adaptivecards` library parsing each card
/// as a 1.4 host, a strict JSON Schema model of the 1.4 elements, the 28 KB limit) on raw
/// bodies; Err with its report when any fails. The Node packages come from `npm ci` in
/// scripts/test.sh.
pub fn check_teams_cards_with_node(bodies: &[Vec<u8>]) -> std::result::Result<String, String> {
    let node_dir = workspace().join("tests/node");
    if !node_dir.join("node_modules/adaptivecards").is_dir() {
        return Err(format!(
            "{}/node_modules is missing: run `npm ci --prefix tests/node` (scripts/test.sh does)",
            node_dir.display()
        ));
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut files = Vec::new();
    for (i, b) in bodies.iter().enumerate() {
        let f = dir.path().join(format!("card-{i:03}.json"));
        std::fs::write(&f, b).map_err(|e| e.to_string())?;
        files.push(f);
    }
    let out = Command::new("node")
        .arg(node_dir.join("check-teams-cards.js"))
        .args(&files)
        .output()
        .map_err(|e| format!("node: {e}"))?;
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        Ok(report)
    } else {
        Err(report)
    }
}

/// What Slack would read as markup in a `text` field: `<!channel>`, `<!here>`, `<@U123>`,
/// `<https://…|label>` and the like (anything between `<` and `>`), which Slack's formatting
/// rules say must arrive escaped when it is not meant as markup.
pub fn slack_markup(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find('<') {
        let after = &rest[i + 1..];
        match after.find('>') {
            Some(j) => {
                out.push(format!("<{}>", &after[..j]));
                rest = &after[j + 1..];
            }
            None => break,
        }
    }
    out
}

/// The markup in every text of a Slack Web API body that Slack parses as mrkdwn (the message
/// `text`, section and context texts).
fn slack_parsed_markup(v: &serde_json::Value) -> Vec<String> {
    let mut found = Vec::new();
    if let Some(t) = v["text"].as_str() {
        found.extend(slack_markup(t));
    }
    for b in v["blocks"].as_array().into_iter().flatten() {
        match b["type"].as_str() {
            Some("section") => {
                found.extend(slack_markup(b["text"]["text"].as_str().unwrap_or("")));
            }
            Some("context") => {
                for e in b["elements"].as_array().into_iter().flatten() {
                    if e["type"] == "mrkdwn" {
                        found.extend(slack_markup(e["text"].as_str().unwrap_or("")));
                    }
                }
            }
            _ => {}
        }
    }
    found
}

fn hmac_hex(key: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()) else {
        return String::new();
    };
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Signs a Slack request body the way Slack does (`v0=` HMAC-SHA256 of `v0:{ts}:{body}`);
/// returns (timestamp, signature) for now.
pub fn slack_signature(secret: &str, body: &str) -> (String, String) {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        .to_string();
    let sig = format!(
        "v0={}",
        hmac_hex(secret, format!("v0:{ts}:{body}").as_bytes())
    );
    (ts, sig)
}

impl ChatPeers {
    /// Starts the peers with the real services' rules only ([`ChatOptions::default`]).
    pub fn start(secrets: ChatSecrets) -> Result<ChatPeers> {
        Self::start_with(secrets, ChatOptions::default())
    }

    /// Starts the peers with `options` (fault injection, Socket Mode).
    pub fn start_with(secrets: ChatSecrets, options: ChatOptions) -> Result<ChatPeers> {
        let seen = Arc::new(Mutex::new(ChatSeen::default()));
        let epoch = (Instant::now(), SystemTime::now());
        let s = seen.clone();
        let addr = http_server(move |req| chat_answer(&secrets, &options, epoch, &s, req))?;
        Ok(ChatPeers {
            url: format!("http://{addr}"),
            seen,
            epoch,
        })
    }

    /// The Slack Web API base URL (`notifiers.<name>.api_url`).
    pub fn slack_api(&self) -> String {
        format!("{}/api", self.url)
    }

    /// The Teams workflow URL.
    pub fn teams_url(&self) -> String {
        format!("{}/workflows/{TEAMS_PATH}", self.url)
    }

    /// The generic webhook URL.
    pub fn hook_url(&self) -> String {
        format!("{}/hook", self.url)
    }

    pub fn seen(&self) -> std::sync::MutexGuard<'_, ChatSeen> {
        self.seen.lock().expect("chat peers lock")
    }

    /// What `GET {url}/state` answers.
    pub fn state_json(&self) -> serde_json::Value {
        state_json(&self.seen(), self.epoch)
    }
}

/// The accepted and refused requests as JSON: `posts` and `updates` (each with `t`, Unix seconds
/// of arrival, its `text`, `ts` and `thread_ts`), `rejected_429`, `refused` (reasons), `teams`,
/// `hooks`, `socket_opens`.
fn state_json(seen: &ChatSeen, epoch: (Instant, SystemTime)) -> serde_json::Value {
    let unix = |at: Instant| {
        (epoch.1 + at.saturating_duration_since(epoch.0))
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    };
    let entry = |at: Instant, v: &serde_json::Value, ts: &serde_json::Value| {
        serde_json::json!({
            "t": unix(at),
            "text": v["text"].as_str().unwrap_or(""),
            "ts": ts,
            "thread_ts": v["thread_ts"],
            "body": v,
        })
    };
    let posts: Vec<_> = seen
        .posts
        .iter()
        .zip(&seen.known_ts)
        .map(|((at, v), ts)| entry(*at, v, &serde_json::Value::from(ts.as_str())))
        .collect();
    let updates: Vec<_> = seen
        .updates
        .iter()
        .zip(&seen.update_times)
        .map(|(v, at)| entry(*at, v, &v["ts"]))
        .collect();
    serde_json::json!({
        "posts": posts,
        "updates": updates,
        "rejected_429": seen.rejected_429,
        "refused": seen.refused,
        "socket_opens": seen.socket_opens,
        "teams": seen.teams,
        "teams_failed": seen.teams_failed,
        "hooks": seen.hooks,
    })
}

fn bearer(req: &HttpRequest) -> Option<&str> {
    req.header("authorization")?.strip_prefix("Bearer ")
}

fn chat_answer(
    secrets: &ChatSecrets,
    options: &ChatOptions,
    epoch: (Instant, SystemTime),
    seen: &Mutex<ChatSeen>,
    req: HttpRequest,
) -> HttpAnswer {
    let mut seen = seen.lock().expect("chat peers lock");
    if req.method == "GET" && req.path == "/state" {
        return (200, Vec::new(), state_json(&seen, epoch).to_string());
    }
    let refuse = |seen: &mut ChatSeen, why: String| seen.refused.push(why);
    if req.method != "POST" {
        refuse(&mut seen, format!("{} {}", req.method, req.path));
        return (405, Vec::new(), "{}".into());
    }
    let json: Option<serde_json::Value> = req
        .header("content-type")
        .filter(|c| c.starts_with("application/json"))
        .and_then(|_| serde_json::from_slice(&req.body).ok());
    if let Some(method) = req.path.strip_prefix("/api/") {
        let now = Instant::now();
        let first = *seen.first_call.get_or_insert(now);
        if method == "apps.connections.open" {
            // Slack wants the app-level token here; a bot token is `not_allowed_token_type`.
            return match (bearer(&req), &options.app_token, &options.socket_url) {
                (Some(t), Some(app), Some(url)) if t == app => {
                    seen.socket_opens += 1;
                    slack_json(serde_json::json!({"ok": true, "url": url}))
                }
                (Some(t), _, _) if t.starts_with("xoxb-") => {
                    refuse(&mut seen, format!("{method}: not_allowed_token_type"));
                    slack_json(serde_json::json!({"ok": false, "error": "not_allowed_token_type"}))
                }
                _ => {
                    refuse(&mut seen, format!("{method}: invalid_auth"));
                    slack_json(serde_json::json!({"ok": false, "error": "invalid_auth"}))
                }
            };
        }
        if bearer(&req) != Some(secrets.slack_token.as_str()) {
            refuse(&mut seen, format!("{method}: invalid_auth"));
            return slack_json(serde_json::json!({"ok": false, "error": "invalid_auth"}));
        }
        if let Some((window, retry_after)) = options.ratelimit_window
            && now.duration_since(first) < window
        {
            seen.rejected_429 += 1;
            return (
                429,
                vec![("retry-after", retry_after.to_string())],
                r#"{"ok":false,"error":"ratelimited"}"#.into(),
            );
        }
        let Some(v) = json else {
            refuse(&mut seen, format!("{method}: invalid_json"));
            return slack_json(serde_json::json!({"ok": false, "error": "invalid_json"}));
        };
        if let Err(e) = check_blocks(&v) {
            refuse(&mut seen, format!("{method}: {e}"));
            return slack_json(serde_json::json!({"ok": false, "error": "invalid_blocks"}));
        }
        let markup = slack_parsed_markup(&v);
        seen.slack_markup.extend(markup);
        let channel = match v["channel"].as_str() {
            Some("#alerts" | "alerts" | "C0ALERTS") => "C0ALERTS",
            _ => {
                refuse(
                    &mut seen,
                    format!("{method}: channel_not_found {}", v["channel"]),
                );
                return slack_json(serde_json::json!({"ok": false, "error": "channel_not_found"}));
            }
        };
        match method {
            "chat.postMessage" => {
                if options.channel_limit
                    && seen
                        .last_post
                        .get(channel)
                        .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(1))
                {
                    seen.rejected_429 += 1;
                    return (
                        429,
                        vec![("retry-after", "1".into())],
                        r#"{"ok":false,"error":"ratelimited"}"#.into(),
                    );
                }
                seen.last_post.insert(channel.to_owned(), now);
                seen.next_ts += 1;
                let ts = format!("1700000000.{:06}", seen.next_ts);
                seen.known_ts.push(ts.clone());
                seen.posts.push((now, v.clone()));
                slack_json(serde_json::json!({
                    "ok": true, "channel": channel, "ts": ts,
                    "message": {"type": "message", "ts": ts, "text": v["text"], "bot_id": "B01"},
                }))
            }
            "chat.update" => {
                let ts = v["ts"].as_str().unwrap_or("").to_owned();
                if !seen.known_ts.contains(&ts) {
                    refuse(&mut seen, format!("chat.update: message_not_found {ts}"));
                    return slack_json(
                        serde_json::json!({"ok": false, "error": "message_not_found"}),
                    );
                }
                seen.updates.push(v.clone());
                seen.update_times.push(now);
                slack_json(serde_json::json!({
                    "ok": true, "channel": channel, "ts": ts, "text": v["text"],
                    "message": {"text": v["text"]},
                }))
            }
            other => {
                refuse(&mut seen, format!("unknown_method {other}"));
                slack_json(serde_json::json!({"ok": false, "error": "unknown_method"}))
            }
        }
    } else if req.path == format!("/workflows/{TEAMS_PATH}") {
        if req.body.len() > TEAMS_MAX_BYTES {
            // The webhook would answer 202 and its post action fail: refuse it loudly here.
            refuse(&mut seen, format!("teams: {} bytes", req.body.len()));
            return (413, Vec::new(), "{}".into());
        }
        let Some(v) = json else {
            refuse(&mut seen, "teams: not JSON".into());
            return (400, Vec::new(), "{}".into());
        };
        if let Err(e) = check_teams_card(&v) {
            refuse(&mut seen, format!("teams: {e}"));
            return (400, Vec::new(), "{}".into());
        }
        if seen.teams_failed < options.teams_fail_first {
            seen.teams_failed += 1;
            return (503, Vec::new(), "{}".into());
        }
        seen.teams.push(v);
        seen.teams_raw.push(req.body.clone());
        (202, Vec::new(), String::new())
    } else if req.path == "/hook" && !secrets.hook_token.is_empty() {
        let bearer_ok = bearer(&req) == Some(secrets.hook_token.as_str());
        let want = format!("sha256={}", hmac_hex(&secrets.hook_hmac, &req.body));
        let sig_ok = req.header("x-sidelight-signature") == Some(want.as_str());
        if !bearer_ok || !sig_ok {
            refuse(
                &mut seen,
                format!("hook: bearer ok {bearer_ok}, signature ok {sig_ok}"),
            );
            return (401, Vec::new(), "{}".into());
        }
        let Some(v) = json else {
            refuse(&mut seen, "hook: not JSON".into());
            return (400, Vec::new(), "{}".into());
        };
        if let Err(e) = check_alertmanager(&req.body) {
            refuse(&mut seen, format!("hook: {e}"));
            return (400, Vec::new(), "{}".into());
        }
        seen.hooks.push(v);
        (204, Vec::new(), String::new())
    } else {
        refuse(&mut seen, format!("no route {}", req.path));
        (404, Vec::new(), "{}".into())
    }
}

#[cfg(test)]
mod tests {
    //! The peers refuse what the real services refuse: a fake that accepts anything would let
    //! every delivery test pass.

    use super::*;

    fn peers(options: ChatOptions) -> ChatPeers {
        ChatPeers::start_with(
            ChatSecrets {
                slack_token: "xoxb-right".into(),
                hook_token: "hook-token".into(),
                hook_hmac: "hook-key".into(),
            },
            options,
        )
        .expect("peers")
    }

    /// POSTs `body` with `headers`; (status, retry-after, body).
    fn post(url: &str, headers: &[(&str, &str)], body: &str) -> (u16, String, String) {
        let mut req = crate::client().post(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut resp = req.send(body).expect("answered");
        let retry = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let status = resp.status().as_u16();
        (
            status,
            retry,
            resp.body_mut().read_to_string().expect("body"),
        )
    }

    const JSON: (&str, &str) = ("content-type", "application/json; charset=utf-8");
    const AUTH: (&str, &str) = ("authorization", "Bearer xoxb-right");

    #[test]
    fn slack_refuses_what_slack_refuses_and_limits_one_post_per_second_per_channel() {
        let p = peers(ChatOptions::default());
        let post_url = format!("{}/chat.postMessage", p.slack_api());
        let ok = r##"{"channel":"#alerts","text":"hi"}"##;
        let error = |(_, _, body): (u16, String, String)| {
            serde_json::from_str::<serde_json::Value>(&body).expect("json")["error"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        };
        let wrong = ("authorization", "Bearer xoxb-wrong");
        assert_eq!(error(post(&post_url, &[wrong, JSON], ok)), "invalid_auth");
        let form = ("content-type", "application/x-www-form-urlencoded");
        assert_eq!(error(post(&post_url, &[AUTH, form], ok)), "invalid_json");
        let elsewhere = r##"{"channel":"#random","text":"hi"}"##;
        assert_eq!(
            error(post(&post_url, &[AUTH, JSON], elsewhere)),
            "channel_not_found"
        );
        let long_header = format!(
            r##"{{"channel":"#alerts","blocks":[{{"type":"header","text":{{"type":"plain_text","text":"{}"}}}}]}}"##,
            "x".repeat(151)
        );
        assert_eq!(
            error(post(&post_url, &[AUTH, JSON], &long_header)),
            "invalid_blocks"
        );
        let update = format!("{}/chat.update", p.slack_api());
        let unknown = r##"{"channel":"C0ALERTS","ts":"1.2","text":"x"}"##;
        assert_eq!(
            error(post(&update, &[AUTH, JSON], unknown)),
            "message_not_found"
        );
        assert_eq!(p.seen().refused.len(), 5, "{:?}", p.seen().refused);
        let (status, _, body) = post(&post_url, &[AUTH, JSON], ok);
        assert_eq!(status, 200, "{body}");
        let (status, retry, _) = post(&post_url, &[AUTH, JSON], ok);
        assert_eq!((status, retry.as_str()), (429, "1"));
        let seen = p.seen();
        assert_eq!((seen.posts.len(), seen.rejected_429), (1, 1));
    }

    #[test]
    fn the_ratelimit_window_answers_429_with_its_retry_after_then_lets_calls_through() {
        let p = peers(ChatOptions {
            ratelimit_window: Some((Duration::from_millis(300), 7)),
            channel_limit: false,
            ..ChatOptions::default()
        });
        let url = format!("{}/chat.postMessage", p.slack_api());
        let ok = r##"{"channel":"#alerts","text":"hi"}"##;
        let (status, retry, _) = post(&url, &[AUTH, JSON], ok);
        assert_eq!((status, retry.as_str()), (429, "7"));
        std::thread::sleep(Duration::from_millis(350));
        assert_eq!(post(&url, &[AUTH, JSON], ok).0, 200);
        assert_eq!(post(&url, &[AUTH, JSON], ok).0, 200, "no channel limit");
        let state = p.state_json();
        assert_eq!(state["rejected_429"], 1);
        assert_eq!(state["posts"][1]["ts"], "1700000000.000002");
    }

    #[test]
    fn socket_mode_open_needs_the_app_token() {
        let p = peers(ChatOptions {
            app_token: Some("xapp-1".into()),
            socket_url: Some("ws://127.0.0.1:1/link".into()),
            ..ChatOptions::default()
        });
        let url = format!("{}/apps.connections.open", p.slack_api());
        let answer = |token: &str| {
            let (_, _, body) = post(&url, &[("authorization", &format!("Bearer {token}"))], "");
            serde_json::from_str::<serde_json::Value>(&body).expect("json")
        };
        assert_eq!(answer("xoxb-right")["error"], "not_allowed_token_type");
        assert_eq!(answer("xapp-2")["error"], "invalid_auth");
        assert_eq!(answer("xapp-1")["url"], "ws://127.0.0.1:1/link");
        assert_eq!(p.seen().socket_opens, 1);
    }

    #[test]
    fn teams_refuses_bad_and_oversized_cards_and_fails_on_request() {
        let p = peers(ChatOptions {
            teams_fail_first: 1,
            ..ChatOptions::default()
        });
        let card = serde_json::json!({
            "type": "message",
            "attachments": [{
                "contentType": "application/vnd.microsoft.card.adaptive",
                "content": {
                    "type": "AdaptiveCard", "version": "1.4",
                    "body": [{"type": "RichTextBlock", "inlines": [
                        {"type": "TextRun", "text": "FIRING", "color": "attention"}]}],
                },
            }],
        });
        let url = p.teams_url();
        let mut bad = card.clone();
        bad["attachments"][0]["content"]["version"] = "1.6".into();
        assert_eq!(post(&url, &[JSON], &bad.to_string()).0, 400);
        let mut big = card.clone();
        big["attachments"][0]["content"]["body"][0]["inlines"][0]["text"] =
            "x".repeat(TEAMS_MAX_BYTES).into();
        assert_eq!(post(&url, &[JSON], &big.to_string()).0, 413);
        assert_eq!(post(&url, &[JSON], &card.to_string()).0, 503);
        assert_eq!(post(&url, &[JSON], &card.to_string()).0, 202);
        let seen = p.seen();
        assert_eq!(
            (seen.teams.len(), seen.teams_failed, seen.refused.len()),
            (1, 1, 2)
        );
    }

    #[test]
    fn the_webhook_needs_its_bearer_token_and_signature() {
        let p = peers(ChatOptions::default());
        let body = r#"{"version":"4"}"#;
        let sig = format!("sha256={}", hmac_hex("hook-key", body.as_bytes()));
        let auth = ("authorization", "Bearer hook-token");
        let signed = ("x-sidelight-signature", sig.as_str());
        assert_eq!(post(&p.hook_url(), &[JSON, auth], body).0, 401);
        let wrong = ("authorization", "Bearer nope");
        assert_eq!(post(&p.hook_url(), &[JSON, wrong, signed], body).0, 401);
        // Signed and authorized, but not Alertmanager's format.
        assert_eq!(post(&p.hook_url(), &[JSON, auth, signed], body).0, 400);
        assert!(p.seen().hooks.is_empty());
    }
}

//! What a chat message says, independent of the chat: a title, mrkdwn lines (one or two per
//! alert: summary, value, severity, since when), the service's last deployment ("deployed 12 min
//! ago, sha abc123"), links (dashboard, runbook) and whether Ack / Silence buttons belong on it.
//! Slack renders it as Block Kit, Teams as an Adaptive Card, webhooks as JSON. Pure.
//!
//! Invariant: the text of a [`Message`] carries telemetry (span names, exception types, label
//! values, summaries) as it came, and our own markup is limited to `*bold*`, `` `code` `` and
//! `:emoji:` codes — never Slack's `<...>` syntax (links travel as buttons). Each chat's edge
//! neutralises the data for its own rules: [`slack_escape`] for Slack (`&`, `<`, `>`), verbatim
//! text runs for Teams.

use std::collections::HashMap;

use super::alert::Millis;
use super::alert::{Alert, DeployInfo, fmt_value};
use super::notify::{Kind, Notification, Status};

/// Alerts shown one by one in a message; the rest are counted in [`Message::more`].
pub const MAX_ITEMS: usize = 20;

/// The colour of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    /// A critical alert fires.
    Critical,
    /// Something else fires.
    Warning,
    /// Everything resolved.
    Resolved,
    /// Deploy notices, digests, summaries.
    Info,
}

/// A message, ready to render for a chat.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The group key (button values), empty for notices.
    pub key: String,
    /// Header line.
    pub title: String,
    /// Colour.
    pub tone: Tone,
    /// Body lines (one per alert) with `*bold*` / `` `code` `` markup; telemetry unescaped.
    pub lines: Vec<String>,
    /// Items (alerts, notices) left out of `lines`; each chat says "and N more" with a link.
    pub more: usize,
    /// Context line: last deployment, ack.
    pub context: Vec<String>,
    /// (label, url).
    pub links: Vec<(String, String)>,
    /// Ack and Silence buttons.
    pub buttons: bool,
    /// A one-line text (notification fallback, thread follow-ups).
    pub text: String,
    /// A thread follow-up for updates (Slack bot mode).
    pub follow_up: Option<String>,
}

/// `12 min ago`, `3 h ago`, `2 d ago`.
pub fn ago(now: Millis, then: Millis) -> String {
    let m = (now - then).max(0) / 60_000;
    if m < 60 {
        format!("{m} min ago")
    } else if m < 48 * 60 {
        format!("{} h ago", m / 60)
    } else {
        format!("{} d ago", m / 1440)
    }
}

/// `deployed 12 min ago, sha abc1234 (v1.2)`.
pub fn deploy_line(now: Millis, d: &DeployInfo) -> String {
    let sha: String = d.commit.chars().take(7).collect();
    let mut s = format!("deployed {}", ago(now, d.at));
    if !sha.is_empty() {
        s.push_str(&format!(", sha {sha}"));
    }
    if !d.version.is_empty() && d.version != d.commit {
        s.push_str(&format!(" ({})", d.version));
    }
    s
}

fn emoji(status: Status, a: &Alert) -> &'static str {
    match status {
        Status::Resolved => ":large_green_circle:",
        Status::Silenced => ":mute:",
        Status::Firing if a.severity() == "critical" => ":red_circle:",
        Status::Firing => ":large_orange_circle:",
    }
}

fn status_word(s: Status) -> &'static str {
    match s {
        Status::Firing => "FIRING",
        Status::Resolved => "RESOLVED",
        Status::Silenced => "SILENCED",
    }
}

fn utc_time(ms: Millis) -> String {
    let secs = ms.div_euclid(1000);
    let day = secs.rem_euclid(86_400);
    format!("{:02}:{:02} UTC", day / 3600, (day % 3600) / 60)
}

fn alert_lines(a: &Alert, status: Status, now: Millis) -> String {
    let since = match status {
        Status::Resolved => a
            .resolved_at
            .map(|t| format!("resolved {}", ago(now, t)))
            .unwrap_or_else(|| "resolved".into()),
        _ => format!(
            "since {} ({})",
            utc_time(a.fired_at.unwrap_or(a.active_at)),
            ago(now, a.fired_at.unwrap_or(a.active_at))
        ),
    };
    format!(
        "{} *{}* `{}` — {}\nvalue *{}* · {}",
        emoji(status, a),
        a.name(),
        a.severity(),
        a.summary,
        fmt_value(a.value),
        since
    )
}

/// The message for one notification.
pub fn notification(
    n: &Notification,
    now: Millis,
    deploys: &HashMap<String, DeployInfo>,
) -> Message {
    let firing = n.count(Status::Firing);
    let resolved = n.alerts.len() - firing;
    let names: Vec<&str> = {
        let mut v: Vec<&str> = n.alerts.iter().map(|(a, _)| a.name()).collect();
        v.dedup();
        v
    };
    let scope: Vec<String> = n
        .group_labels
        .iter()
        .filter(|(k, _)| *k != "alertname")
        .map(|(_, v)| v.clone())
        .collect();
    let head = if firing > 0 {
        format!("[FIRING:{firing}]")
    } else {
        "[RESOLVED]".to_owned()
    };
    let mut title = format!("{head} {}", names.join(", "));
    if !scope.is_empty() {
        title.push_str(&format!(" · {}", scope.join(" ")));
    }
    let tone = if firing == 0 {
        Tone::Resolved
    } else if n
        .alerts
        .iter()
        .any(|(a, s)| *s == Status::Firing && a.severity() == "critical")
    {
        Tone::Critical
    } else {
        Tone::Warning
    };
    let lines: Vec<String> = n
        .alerts
        .iter()
        .take(MAX_ITEMS)
        .map(|(a, s)| alert_lines(a, *s, now))
        .collect();
    let more = n.alerts.len().saturating_sub(MAX_ITEMS);
    let mut context = Vec::new();
    let service = n
        .group_labels
        .get("service")
        .map(String::as_str)
        .or_else(|| n.alerts.first().and_then(|(a, _)| a.service()));
    if let Some(s) = service {
        match deploys.get(s) {
            Some(d) => context.push(format!("{s}: {}", deploy_line(now, d))),
            None => context.push(format!("{s}: no deployment recorded")),
        }
    }
    if let Some(by) = &n.acked_by {
        context.push(format!("acked by {by}"));
    }
    let mut links = Vec::new();
    if let Some(d) = n.alerts.iter().find_map(|(a, _)| a.dashboard.clone()) {
        links.push(("Dashboard".to_owned(), d));
    }
    if let Some(r) = n.alerts.iter().find_map(|(a, _)| a.runbook.clone()) {
        links.push(("Runbook".to_owned(), r));
    }
    let follow_up = match n.kind {
        Kind::New => None,
        Kind::Repeat => Some(format!("still firing: {firing} alert(s)")),
        Kind::Update => Some(format!(
            "now {firing} firing, {resolved} resolved or silenced: {}",
            n.alerts
                .iter()
                .map(|(a, s)| format!("{} {}", a.name(), status_word(*s).to_lowercase()))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Kind::Resolved => Some("resolved :white_check_mark:".to_owned()),
    };
    Message {
        key: n.key.clone(),
        text: title.clone(),
        title,
        tone,
        lines,
        more,
        context,
        links,
        buttons: firing > 0,
        follow_up,
    }
}

/// Lines of a coalesced summary; the rest are counted in [`Message::more`]. Each chat bounds
/// what it posts further (Slack: 45 sections, Teams: the card's byte budget).
pub const SUMMARY_MAX_LINES: usize = 1000;

/// One message standing for several notifications that found their channel's queue full: at
/// most [`SUMMARY_MAX_LINES`] lines, the rest counted in [`Message::more`].
pub fn summary(ns: &[Notification], texts: &[String], now: Millis) -> Message {
    let mut lines = Vec::new();
    let mut more = 0usize;
    for n in ns {
        for (a, s) in &n.alerts {
            if lines.len() >= SUMMARY_MAX_LINES {
                more += 1;
                continue;
            }
            lines.push(format!(
                "• [{}] *{}* {} — {} (value {})",
                status_word(*s),
                a.name(),
                a.service().unwrap_or(""),
                a.summary,
                fmt_value(a.value)
            ));
        }
    }
    for t in texts {
        if lines.len() >= SUMMARY_MAX_LINES {
            more += 1;
        } else {
            lines.push(t.clone());
        }
    }
    let alerts: usize = ns.iter().map(|n| n.alerts.len()).sum();
    let title = format!(
        "{} notifications ({alerts} alerts) coalesced: the channel is rate limited",
        ns.len() + texts.len()
    );
    Message {
        key: String::new(),
        text: title.clone(),
        title,
        tone: Tone::Info,
        lines,
        more,
        context: vec![format!("at {}", utc_time(now))],
        links: Vec::new(),
        buttons: false,
        follow_up: None,
    }
}

/// Escapes text for Slack's `text` fields (message `text`, mrkdwn sections and context, replies):
/// Slack reads `<...>` as mentions (`<!channel>`, `<@U123>`) and links (`<url|label>`), so every
/// `&`, `<` and `>` that is not our markup becomes `&amp;`, `&lt;`, `&gt;` as Slack's formatting
/// rules require. Applied to whole strings: our own markup never uses those characters.
pub fn slack_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// [`slack_escape`] cut to at most `max` bytes after escaping — so at most `max` characters too,
/// whichever way a limit is counted — never splitting an entity or a character, ending with `…`
/// when something was cut.
pub fn slack_escape_within(text: &str, max: usize) -> String {
    let full = slack_escape(text);
    if full.len() <= max {
        return full;
    }
    let budget = max.saturating_sub('…'.len_utf8());
    let mut out = String::new();
    for c in text.chars() {
        let piece = match c {
            '&' => "&amp;",
            '<' => "&lt;",
            '>' => "&gt;",
            _ => "",
        };
        let n = if piece.is_empty() {
            c.len_utf8()
        } else {
            piece.len()
        };
        if out.len() + n > budget {
            break;
        }
        if piece.is_empty() {
            out.push(c);
        } else {
            out.push_str(piece);
        }
    }
    out.push('…');
    out
}

/// Strips our markup (`*`, `` ` ``, emoji codes) for chats that do not speak Slack mrkdwn. The
/// result is still raw text: a chat that interprets markup must render it verbatim.
pub fn plain(line: &str) -> String {
    line.replace(['*', '`'], "")
        .replace(":red_circle:", "🔴")
        .replace(":large_orange_circle:", "🟠")
        .replace(":large_green_circle:", "🟢")
        .replace(":mute:", "🔇")
        .replace(":white_check_mark:", "✅")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerting::alert::State;
    use std::collections::BTreeMap;

    pub(crate) fn alert(name: &str, severity: &str) -> Alert {
        Alert {
            fingerprint: format!("{name}/{severity}"),
            labels: BTreeMap::from([
                ("alertname".to_string(), name.to_string()),
                ("service".to_string(), "checkout".to_string()),
                ("severity".to_string(), severity.to_string()),
            ]),
            summary: "checkout burns 15.36x".into(),
            runbook: Some("https://runbooks/burn".into()),
            dashboard: Some("https://grafana/d/svc".into()),
            value: 15.357,
            external: Vec::new(),
            state: State::Firing,
            active_at: 0,
            fired_at: Some(60_000),
            resolved_at: None,
            last_active: 0,
        }
    }

    #[test]
    fn a_firing_group_with_deploy_and_links() {
        let n = Notification {
            key: "slack:service=checkout".into(),
            receiver: "slack".into(),
            group_labels: BTreeMap::from([("service".into(), "checkout".into())]),
            kind: Kind::New,
            alerts: vec![
                (alert("ErrorBudgetBurn", "critical"), Status::Firing),
                (alert("HighLatency", "warning"), Status::Resolved),
            ],
            seq: 1,
            acked_by: None,
            message: None,
        };
        let deploys = HashMap::from([(
            "checkout".to_string(),
            DeployInfo {
                at: 0,
                commit: "abc1234def".into(),
                version: "1.4.2".into(),
            },
        )]);
        let m = notification(&n, 12 * 60_000, &deploys);
        assert_eq!(
            m.title,
            "[FIRING:1] ErrorBudgetBurn, HighLatency · checkout"
        );
        assert_eq!(m.tone, Tone::Critical);
        assert!(m.lines[0].contains("value *15.36*"), "{}", m.lines[0]);
        assert!(
            m.lines[0].contains("since 00:01 UTC (11 min ago)"),
            "{}",
            m.lines[0]
        );
        assert_eq!(
            m.context,
            ["checkout: deployed 12 min ago, sha abc1234 (1.4.2)"]
        );
        assert_eq!(m.links.len(), 2);
        assert!(m.buttons);
        assert_eq!(plain("*a* `b` :red_circle:"), "a b 🔴");
    }
}

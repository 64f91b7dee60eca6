//! Delivery against the test kit's loopback peers, which check requests the way Slack and Teams
//! do (`sidelight_testkit::ChatPeers`): a Slack Web API (bearer token, Block Kit shape, one
//! `chat.postMessage` per second per channel with 429 + `Retry-After` beyond it, realistic
//! `ok` / `ts` / `channel` answers) and a Teams Workflows endpoint (Adaptive Card 1.4 shape, 202;
//! here its first post answered 503).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use sidelight_testkit::{ChatOptions, ChatPeers, ChatSecrets};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::alert::{Alert, State as AlertState};
use super::config::{NotifierConfig, NotifierKind};
use super::deliver::{DeliveryMetrics, Item, Queue, Report, Sender, Transport, http_client};
use super::notify::{Kind, Notification, Status};
use crate::config::common::Secret;

const TOKEN: &str = "xoxb-1111-2222-test";

/// The kit's peers, accepting [`TOKEN`] (no generic webhook).
fn start_peers(options: ChatOptions) -> ChatPeers {
    ChatPeers::start_with(
        ChatSecrets {
            slack_token: TOKEN.into(),
            hook_token: String::new(),
            hook_hmac: String::new(),
        },
        options,
    )
    .expect("loopback peers")
}

fn alert(name: &str, state: AlertState) -> Alert {
    Alert {
        fingerprint: format!("alertname={name}"),
        labels: BTreeMap::from([
            ("alertname".into(), name.into()),
            ("service".into(), "checkout".into()),
            ("severity".into(), "critical".into()),
        ]),
        summary: format!("{name} is burning"),
        runbook: Some("https://runbooks.example/burn".into()),
        dashboard: Some("https://grafana.example/d/svc".into()),
        value: 15.36,
        external: Vec::new(),
        state,
        active_at: 0,
        fired_at: Some(0),
        resolved_at: None,
        last_active: 0,
    }
}

fn notification(key: &str, seq: u64, alerts: Vec<(Alert, Status)>, kind: Kind) -> Notification {
    Notification {
        key: key.into(),
        receiver: "slack".into(),
        group_labels: BTreeMap::from([("service".into(), "checkout".into())]),
        kind,
        alerts,
        seq,
        acked_by: None,
        message: None,
    }
}

fn slack_cfg(base: &str, token: &str) -> NotifierConfig {
    NotifierConfig {
        name: "slack".into(),
        kind: NotifierKind::SlackBot {
            token: Secret::for_tests(token),
            channel: "#alerts".into(),
            api_url: format!("{base}/api"),
        },
        rate_limit: Duration::from_millis(300),
        queue_capacity: 5,
        max_retries: 5,
        deploy_notices: false,
        digest: None,
        dashboard: None,
        socket_mode: None,
        external_url: None,
        max_alerts: 0,
    }
}

fn sender(cfg: &NotifierConfig, m: &DeliveryMetrics) -> Sender {
    let http = http_client().expect("client");
    Sender {
        name: cfg.name.clone(),
        channel: cfg.kind.channel_label(),
        transport: Transport::new(cfg, &http).expect("transport"),
        queue: Arc::new(Queue::new(
            cfg.queue_capacity,
            cfg.kind.channel_label(),
            &cfg.name,
            m,
        )),
        rate_limit: cfg.rate_limit,
        max_retries: cfg.max_retries,
    }
}

#[tokio::test]
async fn a_burst_of_600_arrives_complete_at_one_per_second() {
    let fake = start_peers(ChatOptions::default());
    let base = fake.url.clone();
    let m = DeliveryMetrics::default();
    // The sender paces at 300 ms, faster than Slack allows: the fake answers 429 + Retry-After
    // and the sender must honour it. The queue holds 5: the rest is coalesced, not dropped.
    let s = sender(&slack_cfg(&base, TOKEN), &m);
    let queue = s.queue.clone();
    for i in 0..600 {
        queue.push(Item::Group(Box::new(notification(
            &format!("slack:burst={i}"),
            1,
            vec![(
                alert(&format!("Burst{i:03}"), AlertState::Firing),
                Status::Firing,
            )],
            Kind::New,
        ))));
    }
    assert_eq!(queue.len(), 5);
    let (tx, mut rx) = mpsc::channel(1024);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(s.run(
        tx,
        m.clone(),
        Arc::new(RwLock::new(HashMap::new())),
        cancel.clone(),
    ));
    let mut delivered = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while delivered.len() < 600 {
        let r = tokio::time::timeout_at(deadline.into(), rx.recv())
            .await
            .expect("all 600 reported within a minute")
            .expect("report");
        match r {
            Report::Delivered { key, .. } => {
                delivered.insert(key);
            }
            Report::Failed { key, .. } => panic!("{key} failed"),
        }
    }
    cancel.cancel();
    let _ = task.await;
    let f = fake.seen();
    assert!(f.refused.is_empty(), "{:?}", f.refused);
    // Every alert is in some accepted message.
    let all: String = f.posts.iter().map(|(_, v)| v.to_string()).collect();
    for i in 0..600 {
        assert!(all.contains(&format!("Burst{i:03}")), "Burst{i:03} lost");
    }
    // At most one accepted message per second, and the limit was really hit and honoured.
    for w in f.posts.windows(2) {
        assert!(w[1].0.duration_since(w[0].0) >= Duration::from_secs(1));
    }
    assert!(f.rejected_429 >= 1, "the pacing never hit the limit");
    assert_eq!(f.posts.len(), 5);
    let coalesced = m
        .coalesced
        .get_or_create(&[("channel", "slack".into()), ("receiver", "slack".into())])
        .get();
    assert_eq!(coalesced, 596, "items folded into the summary");
    assert_eq!(m.sent.get_or_create(&[("channel", "slack")]).get(), 5);
}

#[tokio::test]
async fn resolve_updates_the_original_message_and_threads_a_follow_up() {
    let fake = start_peers(ChatOptions::default());
    let base = fake.url.clone();
    let cfg = slack_cfg(&base, TOKEN);
    let http = http_client().expect("client");
    let t = Transport::new(&cfg, &http).expect("transport");
    let deploys = HashMap::from([(
        "checkout".to_string(),
        super::alert::DeployInfo {
            at: super::now_ms() - 12 * 60_000,
            commit: "abc1234ffff".into(),
            version: "1.4.2".into(),
        },
    )]);
    let firing = notification(
        "slack:service=checkout",
        1,
        vec![(alert("ErrorBudgetBurn", AlertState::Firing), Status::Firing)],
        Kind::New,
    );
    let r = t
        .send(&Item::Group(Box::new(firing)), super::now_ms(), &deploys)
        .await
        .expect("posted")
        .expect("a message ref in bot mode");
    assert_eq!(r.channel, "C0ALERTS");
    {
        let f = fake.seen();
        let text = f.posts[0].1.to_string();
        assert!(
            text.contains("deployed 12 min ago, sha abc1234 (1.4.2)"),
            "{text}"
        );
        assert!(text.contains("sidelight_ack") && text.contains("sidelight_silence_1h"));
        assert!(text.contains("https://runbooks.example/burn"));
    }
    let mut resolved = notification(
        "slack:service=checkout",
        2,
        vec![(
            alert("ErrorBudgetBurn", AlertState::Resolved),
            Status::Resolved,
        )],
        Kind::Resolved,
    );
    resolved.message = Some(r.clone());
    tokio::time::sleep(Duration::from_millis(1100)).await; // the thread reply is a post
    let again = t
        .send(&Item::Group(Box::new(resolved)), super::now_ms(), &deploys)
        .await
        .expect("updated");
    assert_eq!(again, Some(r.clone()));
    {
        let f = fake.seen();
        assert_eq!(f.updates.len(), 1);
        assert_eq!(f.updates[0]["ts"], r.ts.as_str());
        assert!(f.updates[0].to_string().contains("RESOLVED"));
        // Resolved messages have no Ack / Silence buttons.
        assert!(!f.updates[0].to_string().contains("sidelight_ack"));
        assert_eq!(f.posts.len(), 2);
        assert_eq!(f.posts[1].1["thread_ts"], r.ts.as_str());
    }
    // A wrong token is refused, not retried.
    let bad = Transport::new(&slack_cfg(&base, "xoxb-wrong"), &http).expect("transport");
    let e = bad
        .send(
            &Item::Group(Box::new(notification("k", 1, vec![], Kind::New))),
            super::now_ms(),
            &deploys,
        )
        .await
        .expect_err("invalid_auth");
    assert!(
        matches!(e, super::deliver::SendError::Refused(ref m) if m.contains("invalid_auth")),
        "{e}"
    );
}

#[tokio::test]
async fn teams_gets_an_adaptive_card_and_5xx_is_retried() {
    let fake = start_peers(ChatOptions {
        teams_fail_first: 1,
        ..ChatOptions::default()
    });
    let cfg = NotifierConfig {
        name: "teams".into(),
        kind: NotifierKind::Teams {
            url: Secret::for_tests(&fake.teams_url()),
            max_card_bytes: super::deliver::TEAMS_MAX_BYTES,
        },
        rate_limit: Duration::from_millis(10),
        queue_capacity: 10,
        max_retries: 3,
        deploy_notices: false,
        digest: None,
        dashboard: None,
        socket_mode: None,
        external_url: None,
        max_alerts: 0,
    };
    let m = DeliveryMetrics::default();
    let s = sender(&cfg, &m);
    s.queue.push(Item::Group(Box::new(notification(
        "teams:service=checkout",
        1,
        vec![(alert("ErrorBudgetBurn", AlertState::Firing), Status::Firing)],
        Kind::New,
    ))));
    let (tx, mut rx) = mpsc::channel(8);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(s.run(tx, m.clone(), Arc::default(), cancel.clone()));
    let r = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("reported")
        .expect("report");
    assert!(
        matches!(r, Report::Delivered { message: None, .. }),
        "{r:?}"
    );
    cancel.cancel();
    let _ = task.await;
    let f = fake.seen();
    assert!(f.refused.is_empty(), "{:?}", f.refused);
    assert_eq!(f.teams_failed, 1);
    assert_eq!(f.teams.len(), 1);
    let card = &f.teams[0]["attachments"][0]["content"];
    assert_eq!(card["body"][0]["inlines"][0]["color"], "attention");
    assert!(card["actions"].as_array().is_some_and(|a| a.len() == 2));
    assert_eq!(m.retried.get_or_create(&[("channel", "teams")]).get(), 1);
    assert_eq!(m.sent.get_or_create(&[("channel", "teams")]).get(), 1);
}

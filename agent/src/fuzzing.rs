//! The bodies of the `cargo fuzz` targets in `fuzz/` that exercise the agent's parsers of
//! untrusted input (webhook payloads, Slack requests), written once: the fuzz targets call
//! them, and `tests/fuzz_corpus.rs` replays every committed corpus file through them on the
//! stable toolchain. A panic is the finding; nothing is kept between calls.
//!
//! Not an API: hidden from the docs, kept `pub` only so the fuzz crate and the tests reach it.

use crate::alerting::chatops::{self, AuthError, Command};
use crate::webhooks::{self, HookOptions, Parsed};

const SECRET: &[u8] = b"fuzz-webhook-secret";

const GITHUB_EVENTS: [&str; 5] = [
    "deployment_status",
    "push",
    "pull_request",
    "workflow_run",
    "ping",
];
const GITLAB_EVENTS: [&str; 5] = [
    "Deployment Hook",
    "Push Hook",
    "Merge Request Hook",
    "Pipeline Hook",
    "Issue Hook",
];

/// Target `webhooks`: byte 0 picks the parser (bits 0–1: GitHub, GitLab, Alertmanager), the
/// event header (bits 2–4) and whether CI successes are deployments (bit 5); the rest is the
/// signed body.
///
/// Invariants: a body signed with the secret verifies, with a flipped bit it does not; a
/// recorded batch records something (a deployment, an incident change or pushed commits).
pub fn webhooks(data: &[u8]) {
    let Some((&select, body)) = data.split_first() else {
        return;
    };
    let opts = HookOptions {
        environment: "production".to_owned(),
        deploy_on_ci_success: select & 0x20 != 0,
        severities: vec!["critical".to_owned(), "page".to_owned()],
        service: None,
    };
    let event = usize::from((select >> 2) & 7);
    let parsed = match select & 3 {
        0 => {
            let signature = webhooks::sign_github(SECRET, body);
            assert!(webhooks::verify_github(SECRET, Some(&signature), body).is_ok());
            assert!(webhooks::verify_github(SECRET, Some(body_str(body)), body).is_err());
            webhooks::parse_github(GITHUB_EVENTS[event % GITHUB_EVENTS.len()], body, &opts)
        }
        1 => {
            let header = body_str(body);
            let matches = webhooks::verify_gitlab("fuzz-token", Some(header)).is_ok();
            assert_eq!(matches, header == "fuzz-token", "gitlab token check");
            webhooks::parse_gitlab(GITLAB_EVENTS[event % GITLAB_EVENTS.len()], body, &opts)
        }
        _ => webhooks::parse_alertmanager(body, &opts),
    };
    if let Ok(Parsed::Record(batch)) = parsed {
        assert!(
            batch.deployment.is_some() || !batch.incidents.is_empty() || !batch.pending.is_empty(),
            "a recorded batch with nothing in it"
        );
    }
}

fn body_str(body: &[u8]) -> &str {
    std::str::from_utf8(body).unwrap_or("")
}

/// Target `slack`: the input is a Slack request body (a urlencoded form). It is verified
/// against a signature made over it (and over it with one byte changed), read as a form, as a
/// button press, and its `text` field (or the whole input when there is none) as a slash
/// command.
///
/// Invariants: a body signed at `t` verifies at `t` and not 301 s later, nor with another body;
/// a command the parser reads back is well formed (a silence has matchers and a duration; a
/// `dora` window parses).
pub fn slack(data: &[u8]) {
    let now = 1_714_564_800;
    let ts = now.to_string();
    let signature = chatops::sign(SECRET, &ts, data);
    assert_eq!(
        chatops::verify(SECRET, Some(&ts), Some(&signature), data, now),
        Ok(())
    );
    assert_eq!(
        chatops::verify(SECRET, Some(&ts), Some(&signature), data, now + 301),
        Err(AuthError::Stale)
    );
    let mut tampered = data.to_vec();
    tampered.push(b'&');
    assert_eq!(
        chatops::verify(SECRET, Some(&ts), Some(&signature), &tampered, now),
        Err(AuthError::Mismatch)
    );
    // The headers come from the client too.
    let header = body_str(data);
    let _ = chatops::verify(SECRET, Some(header), Some(header), data, now);

    let fields = chatops::form(data);
    let _ = chatops::parse_interaction(data);
    let text = fields
        .iter()
        .find(|(k, _)| k == "text")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| String::from_utf8_lossy(data).into_owned());
    match chatops::parse_command(&text) {
        Command::Silence { matchers, .. } => {
            assert!(!matchers.is_empty(), "a silence matches nothing")
        }
        Command::Dora {
            window: Some(w), ..
        } => assert!(crate::dora::Window::parse(&w).is_ok(), "dora window {w:?}"),
        _ => {}
    }
}

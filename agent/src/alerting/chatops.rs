//! Slack ChatOps, the pure half: request-signature verification (`v0` HMAC-SHA256 over
//! `v0:{timestamp}:{raw body}`, a 5-minute window, constant-time comparison — done on the raw
//! body before anything is parsed) and parsing of slash commands (`/sidelight status`,
//! `/sidelight dora [service] [window]`, `/sidelight silence <alert|matcher> <duration>`,
//! `/sidelight ack <alert>`) and button presses (Ack, Silence 1h).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// `X-Slack-Signature`.
pub const SIGNATURE: &str = "x-slack-signature";
/// `X-Slack-Request-Timestamp`.
pub const TIMESTAMP: &str = "x-slack-request-timestamp";
/// Oldest (and furthest in the future) request accepted, in seconds.
pub const WINDOW_SECS: i64 = 300;

/// Why a request was refused (all answered with 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A header is absent.
    #[error("missing {0} header")]
    Missing(&'static str),
    /// The timestamp is not a number or outside the window.
    #[error("request timestamp outside the 5-minute window")]
    Stale,
    /// The signature does not match.
    #[error("signature does not match")]
    Mismatch,
}

/// Checks Slack's request signature.
pub fn verify(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_secs: i64,
) -> Result<(), AuthError> {
    let ts_text = timestamp.ok_or(AuthError::Missing(TIMESTAMP))?;
    let sig = signature.ok_or(AuthError::Missing(SIGNATURE))?;
    let ts: i64 = ts_text.trim().parse().map_err(|_| AuthError::Stale)?;
    if (now_secs - ts).abs() > WINDOW_SECS {
        return Err(AuthError::Stale);
    }
    let hex_sig = sig.trim().strip_prefix("v0=").ok_or(AuthError::Mismatch)?;
    let sig = hex::decode(hex_sig).map_err(|_| AuthError::Mismatch)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| AuthError::Mismatch)?;
    mac.update(b"v0:");
    mac.update(ts_text.trim().as_bytes());
    mac.update(b":");
    mac.update(body);
    mac.verify_slice(&sig).map_err(|_| AuthError::Mismatch)
}

/// Signs a request the way Slack does (tests and tools).
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(format!("v0:{timestamp}:").as_bytes());
    mac.update(body);
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

/// A parsed slash command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Firing alerts.
    Status,
    /// A DORA report.
    Dora {
        /// Only this service.
        service: Option<String>,
        /// Window (`30d`).
        window: Option<String>,
    },
    /// A silence.
    Silence {
        /// Matchers (an alert name becomes `alertname="..."`).
        matchers: Vec<String>,
        /// How long.
        duration: std::time::Duration,
    },
    /// Ack an alert or group.
    Ack(String),
    /// Help (also for anything not understood, with the reason).
    Help(Option<String>),
}

/// Parses the `text` of a slash command.
pub fn parse_command(text: &str) -> Command {
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        [] | ["help"] => Command::Help(None),
        ["status"] => Command::Status,
        ["dora", rest @ ..] if rest.len() <= 2 => {
            let (mut service, mut window) = (None, None);
            for w in rest {
                if crate::dora::Window::parse(w).is_ok() {
                    window = Some((*w).to_owned());
                } else {
                    service = Some((*w).to_owned());
                }
            }
            Command::Dora { service, window }
        }
        ["silence", what @ .., dur] if !what.is_empty() => {
            let Ok(duration) = humantime::parse_duration(dur) else {
                return Command::Help(Some(format!("{dur:?} is not a duration like 1h or 30m")));
            };
            let joined = what.join(" ");
            let matchers: Vec<String> = if joined.contains(['=', '~']) {
                joined
                    .split(',')
                    .map(|m| m.trim().to_owned())
                    .filter(|m| !m.is_empty())
                    .collect()
            } else {
                vec![format!("alertname=\"{}\"", joined.replace('"', ""))]
            };
            if let Some(bad) = matchers
                .iter()
                .find_map(|m| super::alert::Matcher::parse(m).err())
            {
                return Command::Help(Some(bad));
            }
            Command::Silence { matchers, duration }
        }
        ["ack", what] => Command::Ack((*what).to_owned()),
        _ => Command::Help(Some(format!("unknown command {text:?}"))),
    }
}

/// The command's usage text.
pub const HELP: &str = "usage: /sidelight status | dora [service] [window] | silence <alert|matcher> <duration> | ack <alert>";

/// Form fields of a urlencoded body.
pub fn form(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// A button press: (action id, value, user).
pub fn parse_interaction(body: &[u8]) -> Result<Vec<(String, String, String)>, String> {
    let payload = form(body)
        .into_iter()
        .find(|(k, _)| k == "payload")
        .map(|(_, v)| v)
        .ok_or("no payload field")?;
    let v: serde_json::Value =
        serde_json::from_str(&payload).map_err(|e| format!("payload is not JSON: {e}"))?;
    let user = v["user"]["username"]
        .as_str()
        .or_else(|| v["user"]["name"].as_str())
        .or_else(|| v["user"]["id"].as_str())
        .unwrap_or("someone")
        .to_owned();
    let actions = v["actions"].as_array().ok_or("no actions")?;
    Ok(actions
        .iter()
        .filter_map(|a| {
            Some((
                a["action_id"].as_str()?.to_owned(),
                a["value"].as_str().unwrap_or("").to_owned(),
                user.clone(),
            ))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";
    const BODY: &[u8] = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&command=%2Fsidelight&text=status&user_name=ana";

    #[test]
    fn signed_requests_pass_and_tampered_ones_do_not() {
        let now = 1_531_420_618;
        let ts = now.to_string();
        let sig = sign(SECRET, &ts, BODY);
        assert_eq!(verify(SECRET, Some(&ts), Some(&sig), BODY, now), Ok(()));
        // A flipped byte in the body.
        let mut flipped = BODY.to_vec();
        flipped[10] ^= 0x01;
        assert_eq!(
            verify(SECRET, Some(&ts), Some(&sig), &flipped, now),
            Err(AuthError::Mismatch)
        );
        // A wrong secret.
        assert_eq!(
            verify(b"other", Some(&ts), Some(&sig), BODY, now),
            Err(AuthError::Mismatch)
        );
        // 301 s old (signed correctly for that time) and 300 s old.
        let old = (now - 301).to_string();
        let old_sig = sign(SECRET, &old, BODY);
        assert_eq!(
            verify(SECRET, Some(&old), Some(&old_sig), BODY, now),
            Err(AuthError::Stale)
        );
        let edge = (now - 300).to_string();
        assert_eq!(
            verify(
                SECRET,
                Some(&edge),
                Some(&sign(SECRET, &edge, BODY)),
                BODY,
                now
            ),
            Ok(())
        );
        // Missing headers.
        assert_eq!(
            verify(SECRET, None, Some(&sig), BODY, now),
            Err(AuthError::Missing(TIMESTAMP))
        );
        assert_eq!(
            verify(SECRET, Some(&ts), None, BODY, now),
            Err(AuthError::Missing(SIGNATURE))
        );
        // The timestamp is part of what is signed.
        let other_ts = (now - 1).to_string();
        assert_eq!(
            verify(SECRET, Some(&other_ts), Some(&sig), BODY, now),
            Err(AuthError::Mismatch)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// No mutation of a signed request (body bytes, signature, timestamp) is accepted.
        #[test]
        fn mutated_requests_are_never_accepted(
            pos in 0usize..BODY.len(),
            xor in 1u8..=255,
            which in 0u8..4,
            extra in proptest::collection::vec(any::<u8>(), 1..8),
            shift in 1i64..10_000,
        ) {
            let now = 1_700_000_000i64;
            let ts = now.to_string();
            let sig = sign(SECRET, &ts, BODY);
            let (body, ts2, sig2): (Vec<u8>, String, String) = match which {
                0 => { let mut b = BODY.to_vec(); b[pos] ^= xor; (b, ts.clone(), sig.clone()) }
                1 => { let mut b = BODY.to_vec(); b.extend(&extra); (b, ts.clone(), sig.clone()) }
                2 => {
                    let mut s = sig.clone().into_bytes();
                    let i = 3 + pos % (s.len() - 3);
                    s[i] = if s[i] == b'0' { b'1' } else { b'0' };
                    (BODY.to_vec(), ts.clone(), String::from_utf8_lossy(&s).into_owned())
                }
                _ => (BODY.to_vec(), (now - shift).to_string(), sig.clone()),
            };
            prop_assert!(verify(SECRET, Some(&ts2), Some(&sig2), &body, now).is_err());
        }
    }

    #[test]
    fn commands() {
        assert_eq!(parse_command("status"), Command::Status);
        assert_eq!(
            parse_command("dora checkout 7d"),
            Command::Dora {
                service: Some("checkout".into()),
                window: Some("7d".into())
            }
        );
        assert_eq!(
            parse_command("dora"),
            Command::Dora {
                service: None,
                window: None
            }
        );
        assert_eq!(
            parse_command("silence HighLatency 1h"),
            Command::Silence {
                matchers: vec!["alertname=\"HighLatency\"".into()],
                duration: std::time::Duration::from_secs(3600)
            }
        );
        assert_eq!(
            parse_command("silence service=\"api\",severity=~\"warn.*\" 30m"),
            Command::Silence {
                matchers: vec!["service=\"api\"".into(), "severity=~\"warn.*\"".into()],
                duration: std::time::Duration::from_secs(1800)
            }
        );
        assert_eq!(
            parse_command("ack ErrorBudgetBurn"),
            Command::Ack("ErrorBudgetBurn".into())
        );
        assert!(matches!(
            parse_command("silence X soon"),
            Command::Help(Some(_))
        ));
        assert!(matches!(parse_command("reboot"), Command::Help(Some(_))));
        let body = b"payload=%7B%22type%22%3A%22block_actions%22%2C%22user%22%3A%7B%22username%22%3A%22ana%22%7D%2C%22actions%22%3A%5B%7B%22action_id%22%3A%22sidelight_ack%22%2C%22value%22%3A%22slack%3Aservice%3Dapi%22%7D%5D%7D";
        assert_eq!(
            parse_interaction(body).expect("payload"),
            vec![(
                "sidelight_ack".into(),
                "slack:service=api".into(),
                "ana".into()
            )]
        );
    }
}

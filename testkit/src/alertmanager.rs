//! Alertmanager's webhook message (version 4) as its documentation gives it, and the checks a
//! receiver written for Alertmanager relies on.

/// Alertmanager's webhook message, version 4, as its documentation gives it (every field
/// required, no other field): what a bridge written for Alertmanager parses.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AmMessage {
    pub version: String,
    pub group_key: String,
    pub truncated_alerts: u64,
    pub status: AmStatus,
    pub receiver: String,
    pub group_labels: std::collections::BTreeMap<String, String>,
    pub common_labels: std::collections::BTreeMap<String, String>,
    pub common_annotations: std::collections::BTreeMap<String, String>,
    #[serde(rename = "externalURL")]
    pub external_url: String,
    pub alerts: Vec<AmAlert>,
}

/// One alert of an [`AmMessage`].
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AmAlert {
    pub status: AmStatus,
    pub labels: std::collections::BTreeMap<String, String>,
    pub annotations: std::collections::BTreeMap<String, String>,
    pub starts_at: String,
    pub ends_at: String,
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
    pub fingerprint: String,
}

/// `firing` or `resolved`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AmStatus {
    Firing,
    Resolved,
}

/// Whether `s` is an RFC 3339 date-time (`2026-12-06T13:00:00.123Z`, `...+02:00`).
pub fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|x| x.iter().all(u8::is_ascii_digit));
    let num =
        |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<u32>().ok()).unwrap_or(99);
    if b.len() < 20
        || !(digits(0..4) && b[4] == b'-' && digits(5..7) && b[7] == b'-' && digits(8..10))
        || !(b[10] == b'T' || b[10] == b't')
        || !(digits(11..13) && b[13] == b':' && digits(14..16) && b[16] == b':' && digits(17..19))
    {
        return false;
    }
    if !(1..=12).contains(&num(5..7)) || !(1..=31).contains(&num(8..10)) {
        return false;
    }
    if num(11..13) > 23 || num(14..16) > 59 || num(17..19) > 60 {
        return false;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match &s[i..] {
        "Z" | "z" => true,
        off => {
            let o = off.as_bytes();
            o.len() == 6
                && (o[0] == b'+' || o[0] == b'-')
                && o[1..3].iter().all(u8::is_ascii_digit)
                && o[3] == b':'
                && o[4..6].iter().all(u8::is_ascii_digit)
        }
    }
}

/// Parses a webhook body with the [`AmMessage`] model and checks what types cannot: version
/// "4", RFC 3339 times, a resolved alert's `endsAt` not before its `startsAt`, the message
/// status matching its alerts.
pub fn check_alertmanager(body: &[u8]) -> std::result::Result<AmMessage, String> {
    let m: AmMessage =
        serde_json::from_slice(body).map_err(|e| format!("not Alertmanager's format: {e}"))?;
    if m.version != "4" {
        return Err(format!("version {:?}", m.version));
    }
    if m.alerts.is_empty() {
        return Err("no alerts".into());
    }
    for a in &m.alerts {
        if !is_rfc3339(&a.starts_at) || !is_rfc3339(&a.ends_at) {
            return Err(format!("times not RFC 3339: {} {}", a.starts_at, a.ends_at));
        }
        if a.status == AmStatus::Resolved && a.ends_at < a.starts_at {
            return Err(format!("resolved before it started: {a:?}"));
        }
        if a.fingerprint.is_empty() || !a.labels.contains_key("alertname") {
            return Err(format!("alert without identity: {a:?}"));
        }
    }
    let firing = m.alerts.iter().any(|a| a.status == AmStatus::Firing);
    if firing != (m.status == AmStatus::Firing) {
        return Err(format!("status {:?} does not match its alerts", m.status));
    }
    Ok(m)
}

//! The alert as the notification pipeline sees it: one instance of a Prometheus alerting rule
//! (`prom.rs` mirrors the rule groups' alerts into this form), its state, its identity
//! (fingerprint) and what one evaluation did to it. Also the label matchers routes, inhibition
//! and silences use (Alertmanager's `label="value"` syntax), and the last deployment per service
//! that messages mention.

use std::collections::BTreeMap;
use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch: the pipeline's clock.
pub type Millis = i64;

/// A duration in milliseconds.
pub fn ms(d: Duration) -> Millis {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// An alert's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Active, waiting for `for`.
    Pending,
    /// Firing.
    Firing,
    /// Was firing, is no longer.
    Resolved,
}

/// One alert (a rule instance).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// `alertname` + labels: the identity.
    pub fingerprint: String,
    /// Labels: `alertname`, the rule's and the instance's, and `alerts.external_labels` the
    /// alert does not already have (as Prometheus attaches them when it sends an alert).
    pub labels: BTreeMap<String, String>,
    /// The names of the labels added from `alerts.external_labels` (not the rule's own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external: Vec<String>,
    /// The rendered `summary` annotation (else `description`).
    pub summary: String,
    /// The rendered `runbook_url` annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runbook: Option<String>,
    /// The rendered `dashboard_url` (else `dashboard`) annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard: Option<String>,
    /// The value that made it active (the last one while active).
    pub value: f64,
    /// State.
    pub state: State,
    /// When the condition first held.
    pub active_at: Millis,
    /// When it started firing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fired_at: Option<Millis>,
    /// When it resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<Millis>,
    /// The last evaluation at which the rule reported it.
    pub last_active: Millis,
}

impl Alert {
    /// `alertname`.
    pub fn name(&self) -> &str {
        self.labels.get("alertname").map_or("", String::as_str)
    }

    /// `severity`.
    pub fn severity(&self) -> &str {
        self.labels.get("severity").map_or("", String::as_str)
    }

    /// The service it concerns (`service`, else `service_name`, else `target`, else `source`).
    pub fn service(&self) -> Option<&str> {
        ["service", "service_name", "target", "source"]
            .iter()
            .find_map(|k| self.labels.get(*k))
            .map(String::as_str)
    }

    /// The labels the rule gave it, without those added from `alerts.external_labels`.
    pub fn rule_labels(&self) -> BTreeMap<String, String> {
        let mut l = self.labels.clone();
        for k in &self.external {
            l.remove(k);
        }
        l
    }
}

/// What happened to an alert in one evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Started firing.
    Fired(String),
    /// Resolved.
    Resolved(String),
}

/// The last successful deployment of a service, for messages and
/// `dora_last_successful_deployment_timestamp_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployInfo {
    /// When it finished (ms).
    pub at: Millis,
    /// Head commit.
    pub commit: String,
    /// Version.
    pub version: String,
}

/// A value with about four significant digits, trailing zeros trimmed.
pub fn fmt_value(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{v:.0}");
    }
    let mag = if v == 0.0 {
        0
    } else {
        v.abs().log10().floor() as i32
    };
    let decimals = (3 - mag).clamp(0, 12) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// The identity of an alert: its labels, escaped and joined.
pub(crate) fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut s = String::new();
    for (k, v) in labels {
        if !s.is_empty() {
            s.push(',');
        }
        s.push_str(k);
        s.push('=');
        s.push_str(&v.replace('\\', "\\\\").replace(',', "\\,"));
    }
    s
}

/// How a matcher compares.
#[derive(Debug, Clone)]
pub enum MatchOp {
    /// `=`
    Eq(String),
    /// `!=`
    Ne(String),
    /// `=~` (anchored, like PromQL)
    Re(Regex),
    /// `!~` (anchored)
    NotRe(Regex),
}

/// One label matcher (routes, inhibition, silences). A missing label has the value "".
#[derive(Debug, Clone)]
pub struct Matcher {
    /// Label name.
    pub label: String,
    /// Comparison.
    pub op: MatchOp,
}

impl Matcher {
    /// Whether the value (absent = "") matches.
    pub fn matches_value(&self, v: &str) -> bool {
        match &self.op {
            MatchOp::Eq(x) => v == x,
            MatchOp::Ne(x) => v != x,
            MatchOp::Re(r) => r.is_match(v),
            MatchOp::NotRe(r) => !r.is_match(v),
        }
    }

    /// Whether a map of labels matches.
    pub fn matches_map(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_value(labels.get(&self.label).map_or("", String::as_str))
    }

    /// An equality matcher.
    pub fn eq(label: &str, value: &str) -> Self {
        Self {
            label: label.into(),
            op: MatchOp::Eq(value.into()),
        }
    }

    /// Parses `label="value"`, `label!="v"`, `label=~"re"`, `label!~"re"` (quotes optional).
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let idx = t
            .find(['=', '!'])
            .ok_or_else(|| format!("{t:?} is not a matcher like label=\"value\""))?;
        let label = t[..idx].trim();
        if label.is_empty()
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(format!("{t:?}: invalid label name {label:?}"));
        }
        let rest = &t[idx..];
        let (op, value) = ["=~", "!~", "!=", "="]
            .iter()
            .find_map(|op| rest.strip_prefix(op).map(|v| (*op, v.trim())))
            .ok_or_else(|| format!("{t:?}: expected =, !=, =~ or !~"))?;
        let value = unquote(value).ok_or_else(|| format!("{t:?}: unterminated quote"))?;
        let anchored = |v: &str| {
            Regex::new(&format!("^(?:{v})$")).map_err(|e| format!("{t:?}: invalid regex: {e}"))
        };
        let op = match op {
            "=" => MatchOp::Eq(value),
            "!=" => MatchOp::Ne(value),
            "=~" => MatchOp::Re(anchored(&value)?),
            _ => MatchOp::NotRe(anchored(&value)?),
        };
        Ok(Self {
            label: label.into(),
            op,
        })
    }
}

fn unquote(v: &str) -> Option<String> {
    let Some(inner) = v.strip_prefix('"') else {
        return Some(v.to_owned());
    };
    let inner = inner.strip_suffix('"')?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.push(chars.next()?);
        } else {
            out.push(c);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matchers_table() {
        let labels = BTreeMap::from([
            ("level".to_owned(), "error".to_owned()),
            ("source".to_owned(), "app".to_owned()),
        ]);
        for (m, want) in [
            ("level=\"error\"", true),
            ("level = error", true),
            ("level!=\"error\"", false),
            ("level=~\"err.*|crit\"", true),
            ("level=~\"err\"", false), // anchored
            ("level!~\"warn|info\"", true),
            ("missing=\"\"", true),
            ("missing!=\"\"", false),
            ("source=~\"a.p\"", true),
        ] {
            assert_eq!(
                Matcher::parse(m).expect(m).matches_map(&labels),
                want,
                "{m}"
            );
        }
        for bad in ["level", "=\"x\"", "le vel=\"x\"", "a=~\"(\"", "a=\"x"] {
            assert!(Matcher::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn values_fingerprints_and_rule_labels() {
        for (v, s) in [
            (0.0, "0"),
            (12.0, "12"),
            (0.012346, "0.01235"),
            (14.4, "14.4"),
            (1234.5678, "1235"),
            (0.5, "0.5"),
        ] {
            assert_eq!(fmt_value(v), s, "{v}");
        }
        let labels = BTreeMap::from([
            ("alertname".to_owned(), "A".to_owned()),
            ("cluster".to_owned(), "eu".to_owned()),
            ("path".to_owned(), "a,b\\c".to_owned()),
        ]);
        assert_eq!(
            fingerprint(&labels),
            "alertname=A,cluster=eu,path=a\\,b\\\\c"
        );
        let a = Alert {
            fingerprint: fingerprint(&labels),
            labels,
            external: vec!["cluster".into()],
            summary: String::new(),
            runbook: None,
            dashboard: None,
            value: 1.0,
            state: State::Firing,
            active_at: 0,
            fired_at: None,
            resolved_at: None,
            last_active: 0,
        };
        assert_eq!(
            a.rule_labels().keys().collect::<Vec<_>>(),
            ["alertname", "path"]
        );
    }
}

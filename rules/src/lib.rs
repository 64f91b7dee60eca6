//! Prometheus alerting and recording rules, evaluated as Prometheus evaluates them.
//!
//! - [`file`] reads rule files in Prometheus's format (`groups`, `record`/`alert`, `expr`,
//!   `for`, `keep_firing_for`, `labels`, `annotations`), refusing unknown keys with their path
//!   and any PromQL the evaluator does not implement.
//! - [`eval`] evaluates PromQL (parsed by the `promql-parser` crate) at one instant over a
//!   [`storage::Storage`], with Prometheus's lookback, staleness and extrapolation rules.
//! - [`group`] evaluates a rule group at `now`: rules in order, later rules seeing earlier
//!   recording rules' output, the alert state machine, `ALERTS`/`ALERTS_FOR_STATE` series.
//! - [`history`] is the bounded store the agent evaluates over: full resolution for short
//!   windows, downsampled for long ones, only what the rules read, with a cap on series.
//! - [`template`] expands alert labels and annotations as Prometheus's Go templates do.
//! - [`promtool`] runs promtool's rule unit-test files (`sidelight test rules`).
//!
//! The crate is pure: no clock (`now` is always a parameter), no IO except reading the rule and
//! test files the caller names.

pub mod eval;
pub mod file;
pub mod gofmt;
pub mod group;
pub mod history;
pub mod promtool;
pub mod storage;
pub mod template;

pub use eval::{EvalError, ExprError, Query, VSample, Value};
pub use file::{AlertingRule, Group, LoadError, RecordingRule, Rule, RuleFile};
pub use group::{Alert, AlertState, GroupOutput, GroupState, evaluate_group};
pub use history::{History, HistoryConfig, HistoryStats, SeriesHandle};
pub use storage::{Labels, MemStorage, Sample, Series, Storage};

use promql_parser::label::MatchOp;
use promql_parser::parser::Expr;

/// Formats a label set as Prometheus does (`{__name__="x", job="a"}`), Go-quoting values.
pub fn format_labels(l: &Labels) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in l.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(k);
        s.push('=');
        s.push_str(&gofmt::quote(v));
    }
    s.push('}');
    s
}

/// Parses a series written as PromQL writes one (`x{a="b"}` or `{__name__="x", a="b"}`),
/// as promtool reads `series:` and `exp_samples[].labels`.
pub fn parse_series_labels(text: &str) -> Result<Labels, String> {
    let expr = promql_parser::parser::parse(text).map_err(|e| format!("{text:?}: {e}"))?;
    let Expr::VectorSelector(vs) = expr else {
        return Err(format!("{text:?}: not a series (metric name and labels)"));
    };
    let mut out = Labels::new();
    if let Some(name) = vs.name {
        out.insert(storage::METRIC_NAME.to_owned(), name);
    }
    for m in vs.matchers.matchers {
        if !matches!(m.op, MatchOp::Equal) {
            return Err(format!("{text:?}: only `=` may be used in a series"));
        }
        if m.value.is_empty() {
            continue;
        }
        out.insert(m.name, m.value);
    }
    Ok(out)
}

/// Parses a Prometheus duration (`1h30m`, `5m`, `1d`, `100ms`, `0`) into milliseconds.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let bad = || format!("not a valid duration string: {s:?}");
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(bad());
    }
    // Units in the only order Prometheus accepts them.
    const UNITS: [(&str, i64); 7] = [
        ("y", 365 * 86_400_000),
        ("w", 7 * 86_400_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ];
    let mut rest = s;
    let mut total: i64 = 0;
    let mut next_unit = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: i64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = if rest.starts_with("ms") {
            2
        } else {
            rest.chars().next().map_or(0, char::len_utf8)
        };
        let unit = &rest[..unit_len];
        let Some(pos) = UNITS[next_unit..].iter().position(|(u, _)| *u == unit) else {
            return Err(bad());
        };
        let factor = UNITS[next_unit + pos].1;
        next_unit += pos + 1;
        total = n
            .checked_mul(factor)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Formats milliseconds as Prometheus prints a duration (`1h30m`, `0s`).
pub fn format_duration(ms: i64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let mut rest = ms;
    if rest < 0 {
        out.push('-');
        rest = -rest;
    }
    for (unit, factor) in [
        ("y", 365 * 86_400_000),
        ("w", 7 * 86_400_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ] {
        let n = rest / factor;
        if n > 0 {
            out.push_str(&n.to_string());
            out.push_str(unit);
            rest -= n * factor;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (text, ms) in [
            ("0", 0),
            ("5m", 300_000),
            ("1h30m", 5_400_000),
            ("1d", 86_400_000),
            ("2w", 14 * 86_400_000),
            ("100ms", 100),
            ("1m30s500ms", 90_500),
        ] {
            assert_eq!(parse_duration(text), Ok(ms), "{text}");
        }
        for bad in ["", "5", "m", "1m1h", "1.5h", "-1m", "5 m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        for (ms, text) in [
            (0, "0s"),
            (600_000, "10m"),
            (5_400_000, "1h30m"),
            (86_400_000 * 30, "4w2d"),
        ] {
            assert_eq!(format_duration(ms), text);
        }
    }

    #[test]
    fn series_labels() {
        let l = parse_series_labels(r#"x{a="b", c="d"}"#).expect("parse");
        assert_eq!(format_labels(&l), r#"{__name__="x", a="b", c="d"}"#);
        let l = parse_series_labels(r#"{__name__="x", a="b\"q"}"#).expect("parse");
        assert_eq!(format_labels(&l), r#"{__name__="x", a="b\"q"}"#);
        assert!(parse_series_labels(r#"x{a=~"b"}"#).is_err());
        assert!(parse_series_labels("rate(x[5m])").is_err());
    }
}

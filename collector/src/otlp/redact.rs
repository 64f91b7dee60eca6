//! Redaction of received traces and logs, before anything reads them: span metrics (and so
//! `/metrics`, alert labels and chat messages), the queues and every exporter see the redacted
//! text only. The rules are the log redactor's ([`Redactor`]), configured under
//! `otlp.redaction`.
//!
//! What is looked at: every string value of resource, scope, span, event, link and log-record
//! attributes (nested arrays and maps included), span and event names, status messages and
//! log bodies. Keys, ids and metric data points are not (keys are code, not data; metric
//! attributes are bounded label sets chosen by the application).
//!
//! Cost: a span carries a dozen short strings, mostly the same ones request after request
//! (`GET`, the route, the service, the user agent). Running the rule set over each would cost
//! ~100 ns a string; instead a string shorter than the shortest possible match is skipped, and
//! a string found clean is remembered in a small per-thread table (exact: the whole string is
//! compared), so a repeat costs one hash and one comparison.

use std::cell::RefCell;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};

use crate::logs::{RedactError, RedactionConfig, RedactionCounts, Redactor};

/// Slots of the per-thread table of strings known clean (direct-mapped: a collision replaces).
const CLEAN_SLOTS: usize = 2048;
/// Longer strings are checked every time, not remembered (they are rarely repeated, and this
/// bounds the table at `CLEAN_SLOTS × CLEAN_MAX_LEN` bytes per thread).
const CLEAN_MAX_LEN: usize = 256;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The compiled rules for received data.
#[derive(Debug)]
pub struct OtlpRedactor {
    redactor: Arc<Redactor>,
    /// Tells the per-thread tables built for another configuration to start over.
    id: u64,
}

impl OtlpRedactor {
    /// Compiles the configured rules; `None` when there are none (redaction off).
    pub fn new(config: &RedactionConfig) -> Result<Option<Self>, RedactError> {
        let redactor = Redactor::shared(config)?;
        if redactor.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self {
            redactor,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        }))
    }

    /// Redacts a traces request in place; returns the replacements made.
    pub fn traces(&self, request: &mut ExportTraceServiceRequest) -> u64 {
        self.walk(|w| {
            for rs in &mut request.resource_spans {
                if let Some(r) = &mut rs.resource {
                    w.attrs(&mut r.attributes);
                }
                for ss in &mut rs.scope_spans {
                    if let Some(scope) = &mut ss.scope {
                        w.attrs(&mut scope.attributes);
                    }
                    for span in &mut ss.spans {
                        w.string(&mut span.name);
                        w.attrs(&mut span.attributes);
                        for event in &mut span.events {
                            w.string(&mut event.name);
                            w.attrs(&mut event.attributes);
                        }
                        for link in &mut span.links {
                            w.attrs(&mut link.attributes);
                        }
                        if let Some(status) = &mut span.status {
                            w.string(&mut status.message);
                        }
                    }
                }
            }
        })
    }

    /// Redacts a logs request in place; returns the replacements made.
    pub fn logs(&self, request: &mut ExportLogsServiceRequest) -> u64 {
        self.walk(|w| {
            for rl in &mut request.resource_logs {
                if let Some(r) = &mut rl.resource {
                    w.attrs(&mut r.attributes);
                }
                for sl in &mut rl.scope_logs {
                    if let Some(scope) = &mut sl.scope {
                        w.attrs(&mut scope.attributes);
                    }
                    for record in &mut sl.log_records {
                        if let Some(body) = &mut record.body {
                            w.value(body);
                        }
                        w.attrs(&mut record.attributes);
                    }
                }
            }
        })
    }

    /// Runs `f` with a look at strings (see [`crate::wire::Texts`]); returns its result and
    /// whether some string holds something to redact. Costs what [`traces`](Self::traces) costs
    /// on a clean request: a length check, or one hash and a comparison for a string seen before.
    pub fn probe<R>(&self, f: impl FnOnce(&mut crate::wire::Texts<'_>) -> R) -> (R, bool) {
        CLEAN.with_borrow_mut(|clean| {
            if clean.owner != self.id {
                clean.reset(self.id);
            }
            let min_len = self.redactor.min_match_len();
            let mut secret = false;
            let out = f(&mut |s: &str| {
                if !secret && s.len() >= min_len {
                    secret = !clean.is_clean(s, &self.redactor);
                }
            });
            (out, secret)
        })
    }

    fn walk(&self, f: impl FnOnce(&mut Walker<'_>)) -> u64 {
        CLEAN.with_borrow_mut(|clean| {
            if clean.owner != self.id {
                clean.reset(self.id);
            }
            let mut w = Walker {
                redactor: &self.redactor,
                min_len: self.redactor.min_match_len(),
                clean,
                counts: RedactionCounts::default(),
            };
            f(&mut w);
            w.counts.total()
        })
    }
}

thread_local! {
    static CLEAN: RefCell<CleanTable> = RefCell::new(CleanTable::default());
}

/// Strings found clean by one configuration's rules, on this thread.
#[derive(Default)]
struct CleanTable {
    owner: u64,
    slots: Vec<Option<Box<str>>>,
}

impl CleanTable {
    fn reset(&mut self, owner: u64) {
        self.owner = owner;
        self.slots.clear();
        self.slots.resize(CLEAN_SLOTS, None);
    }

    /// Whether no rule matches `s`, remembering a clean `s` (up to [`CLEAN_MAX_LEN`] bytes).
    fn is_clean(&mut self, s: &str, redactor: &Redactor) -> bool {
        let slot = (s.len() <= CLEAN_MAX_LEN).then(|| Self::slot(s));
        if let Some(i) = slot
            && self.slots[i].as_deref() == Some(s)
        {
            return true;
        }
        if redactor.is_match(s) {
            return false;
        }
        if let Some(i) = slot {
            self.slots[i] = Some(s.into());
        }
        true
    }

    fn slot(s: &str) -> usize {
        let h = foldhash::fast::FixedState::with_seed(0x5eed).hash_one(s);
        (h as usize) % CLEAN_SLOTS
    }
}

struct Walker<'a> {
    redactor: &'a Redactor,
    min_len: usize,
    clean: &'a mut CleanTable,
    counts: RedactionCounts,
}

impl Walker<'_> {
    fn string(&mut self, s: &mut String) {
        if s.len() >= self.min_len && !self.clean.is_clean(s, self.redactor) {
            self.redactor.redact_string(s, &mut self.counts);
        }
    }

    fn value(&mut self, v: &mut AnyValue) {
        match &mut v.value {
            Some(any_value::Value::StringValue(s)) => self.string(s),
            Some(any_value::Value::ArrayValue(a)) => {
                for v in &mut a.values {
                    self.value(v);
                }
            }
            Some(any_value::Value::KvlistValue(kv)) => self.attrs(&mut kv.values),
            _ => {}
        }
    }

    fn attrs(&mut self, kvs: &mut [KeyValue]) {
        for kv in kvs {
            if let Some(v) = &mut kv.value {
                self.value(v);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::trace::v1::span::Event;
    use opentelemetry_proto::tonic::trace::v1::{Span, Status, span::Link};
    use prost::Message;

    use super::*;
    use crate::otlp::testing;

    pub(crate) const SECRETS: &[&str] = &[
        "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
        "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOpQrStUvWx",
        "AKIAIOSFODNN7EXAMPLE",
        "alice.smith@example.com",
        "4111 1111 1111 1111",
    ];

    fn s(text: &str) -> Option<AnyValue> {
        Some(AnyValue {
            value: Some(any_value::Value::StringValue(text.into())),
        })
    }

    fn kv(key: &str, value: Option<AnyValue>) -> KeyValue {
        KeyValue {
            key: key.into(),
            value,
            ..Default::default()
        }
    }

    fn builtin() -> OtlpRedactor {
        OtlpRedactor::new(&RedactionConfig::default())
            .expect("compiles")
            .expect("has rules")
    }

    /// Every place a secret can hide in a span, one secret each.
    pub(crate) fn leaky_traces() -> ExportTraceServiceRequest {
        let mut req = testing::traces("checkout", 2);
        let rs = &mut req.resource_spans[0];
        if let Some(r) = rs.resource.as_mut() {
            r.attributes.push(kv("owner", s(SECRETS[3])));
        }
        let span = &mut rs.scope_spans[0].spans[0];
        span.name = format!("GET /token/{}", SECRETS[1]);
        span.attributes.push(kv(
            "http.request.header.authorization",
            Some(AnyValue {
                value: Some(any_value::Value::ArrayValue(ArrayValue {
                    values: vec![s(SECRETS[0]).unwrap_or_default()],
                })),
            }),
        ));
        span.attributes.push(kv(
            "nested",
            Some(AnyValue {
                value: Some(any_value::Value::KvlistValue(KeyValueList {
                    values: vec![kv("key", s(SECRETS[2]))],
                })),
            }),
        ));
        span.events.push(Event {
            name: "exception".into(),
            attributes: vec![kv(
                "exception.message",
                s(&format!("card {} declined", SECRETS[4])),
            )],
            ..Default::default()
        });
        span.links.push(Link {
            attributes: vec![kv("why", s(SECRETS[3]))],
            ..Default::default()
        });
        span.status = Some(Status {
            message: format!("denied for {}", SECRETS[2]),
            code: 2,
        });
        req
    }

    #[test]
    fn every_string_of_a_span_is_redacted() {
        let r = builtin();
        let mut req = leaky_traces();
        let n = r.traces(&mut req);
        assert_eq!(n, 7, "one replacement per planted secret");
        let bytes = req.encode_to_vec();
        for secret in SECRETS {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} survived"
            );
        }
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.name, "GET /token/[REDACTED]");
        // The second, clean span is untouched, and so is a repeat of the request.
        assert_eq!(req.resource_spans[0].scope_spans[0].spans[1].name, "GET /");
        let mut again = leaky_traces();
        assert_eq!(
            r.traces(&mut again),
            7,
            "the clean table never hides a secret"
        );
    }

    #[test]
    fn log_bodies_and_attributes_are_redacted() {
        let r = builtin();
        let mut req = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord {
                        body: s(&format!("login by {} ok", SECRETS[3])),
                        attributes: vec![kv("token", s(SECRETS[1]))],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        assert_eq!(r.logs(&mut req), 2);
        let rec = &req.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(rec.body, s("login by [REDACTED] ok"));
    }

    #[test]
    fn clean_strings_are_remembered_per_configuration() {
        let r = builtin();
        let mut req = testing::traces("checkout-api-with-a-long-name", 3);
        assert_eq!(r.traces(&mut req), 0);
        let remembered = CLEAN.with_borrow(|c| c.slots.iter().flatten().count());
        assert!(remembered >= 1, "the service name is remembered");
        // Another configuration (a pattern that matches the service name) starts over.
        let strict = OtlpRedactor::new(&RedactionConfig {
            builtins: false,
            patterns: vec![crate::logs::redact::PatternConfig {
                name: "svc".into(),
                regex: "checkout-api".into(),
            }],
        })
        .expect("compiles")
        .expect("has rules");
        assert_eq!(strict.traces(&mut req), 1);
    }

    #[test]
    fn the_probe_finds_what_the_walk_would_redact() {
        let r = builtin();
        let look = |req: &ExportTraceServiceRequest| {
            let bytes = req.encode_to_vec();
            let (n, secret) = r.probe(|texts| {
                let mut v = crate::wire::WithTexts((), texts);
                crate::wire::traces(&bytes, &mut v)
            });
            (n.expect("valid"), secret)
        };
        assert_eq!(look(&leaky_traces()), (2, true));
        assert_eq!(look(&testing::traces("checkout", 3)), (3, false));
        // Each hiding place alone is found (the event, the status, a nested value, the link).
        let full = leaky_traces();
        let span = &full.resource_spans[0].scope_spans[0].spans[0];
        let only = |f: &dyn Fn(&mut Span)| {
            let mut req = testing::traces("checkout", 1);
            f(&mut req.resource_spans[0].scope_spans[0].spans[0]);
            look(&req).1
        };
        assert!(only(&|s| s.events = span.events.clone()));
        assert!(only(&|s| s.status = span.status.clone()));
        assert!(only(&|s| s.links = span.links.clone()));
        assert!(only(&|s| s.attributes = span.attributes[1..2].to_vec()));
        assert!(only(&|s| s.name = span.name.clone()));
    }

    #[test]
    fn no_rules_means_no_redactor() {
        let none = OtlpRedactor::new(&RedactionConfig {
            builtins: false,
            patterns: Vec::new(),
        })
        .expect("compiles");
        assert!(none.is_none());
    }

    #[test]
    fn short_strings_are_skipped_by_length_only_below_the_shortest_match() {
        let r = builtin();
        // "a@b.co" is the shortest built-in match (6 bytes): it must still be caught.
        let mut req = testing::traces("a@b.co", 1);
        assert_eq!(r.traces(&mut req), 1);
    }
}

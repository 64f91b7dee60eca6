//! Received OTLP log records counted like tailed ones: `sidelight_log_records_total` by level and
//! `sidelight_log_exceptions_total` by exception type, labelled `source="otlp"` and the
//! resource's `service_name` ([`LogStats::received`]).
//!
//! The level comes from the record's severity number (its text when there is no number), as for
//! tailed records ([`level_label`]); the exception type from the semantic-convention attribute
//! `exception.type`, else from a Python traceback in `exception.stacktrace` or in the body.
//! Counting is split like span metrics: [`count`] reads a request, and the counts are added
//! only once the intake took it ([`LogCounts::record`]).

use std::collections::HashMap;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};

use crate::logs::LogStats;
use crate::logs::parse::exception_from_traceback;
use crate::logs::stats::level_label;
use crate::spanmetrics::UNKNOWN_SERVICE;

/// Records per (service, level) and exceptions per (service, type) of one request.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct LogCounts {
    records: HashMap<(String, &'static str), u64>,
    exceptions: HashMap<(String, String), u64>,
}

impl LogCounts {
    /// Adds the counts to the log families.
    pub(crate) fn record(self, stats: &LogStats) {
        for ((service, level), n) in self.records {
            stats.received(&service, level, n);
        }
        for ((service, exception), n) in self.exceptions {
            stats.received_exception(&service, &exception, n);
        }
    }
}

fn find<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attrs
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?
    {
        any_value::Value::StringValue(s) => Some(s),
        _ => None,
    }
}

fn body_text(body: Option<&AnyValue>) -> Option<&str> {
    match body?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s),
        _ => None,
    }
}

const TRACEBACK: &str = "Traceback (most recent call last):";

/// The exception type of a traceback in `text`, if it holds one.
fn traceback_type(text: &str) -> Option<String> {
    let at = text.find(TRACEBACK)?;
    exception_from_traceback(text[at..].trim_end().to_owned()).r#type
}

/// Counts one request's records.
pub(crate) fn count(request: &ExportLogsServiceRequest) -> LogCounts {
    let mut counts = LogCounts::default();
    for rl in &request.resource_logs {
        let attrs: &[KeyValue] = rl.resource.as_ref().map_or(&[], |r| &r.attributes);
        let service = find(attrs, "service.name").unwrap_or(UNKNOWN_SERVICE);
        for sl in &rl.scope_logs {
            for record in &sl.log_records {
                let severity = u8::try_from(record.severity_number.clamp(0, 255)).unwrap_or(0);
                let text = (!record.severity_text.is_empty()).then_some(&*record.severity_text);
                let level = level_label(severity, text);
                *counts
                    .records
                    .entry((service.to_owned(), level))
                    .or_default() += 1;
                let exception = find(&record.attributes, "exception.type")
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .or_else(|| {
                        find(&record.attributes, "exception.stacktrace").and_then(traceback_type)
                    })
                    .or_else(|| body_text(record.body.as_ref()).and_then(traceback_type));
                if let Some(e) = exception {
                    *counts
                        .exceptions
                        .entry((service.to_owned(), e))
                        .or_default() += 1;
                }
            }
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;

    use super::*;
    use crate::metrics::LabelCaps;

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    fn record(severity: i32, attrs: Vec<KeyValue>, body: &str) -> LogRecord {
        LogRecord {
            severity_number: severity,
            severity_text: String::new(),
            attributes: attrs,
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(body.into())),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn levels_and_exception_types_from_attribute_stack_or_body() {
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", "bars")],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    log_records: vec![
                        record(9, vec![], "hello"),
                        record(17, vec![kv("exception.type", "LookupError")], "failed"),
                        record(
                            17,
                            vec![kv(
                                "exception.stacktrace",
                                "Traceback (most recent call last):\n  File \"a.py\", line 1, in f\nKeyError: 'x'",
                            )],
                            "failed",
                        ),
                        record(
                            21,
                            vec![],
                            "boom\nTraceback (most recent call last):\n  File \"a.py\", line 1, in f\nValueError: bad",
                        ),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let counts = count(&request);
        assert_eq!(counts.records[&("bars".to_owned(), "info")], 1);
        assert_eq!(counts.records[&("bars".to_owned(), "error")], 2);
        assert_eq!(counts.records[&("bars".to_owned(), "fatal")], 1);
        for e in ["LookupError", "KeyError", "ValueError"] {
            assert_eq!(
                counts.exceptions[&("bars".to_owned(), e.to_owned())],
                1,
                "{e}"
            );
        }
        let caps = LabelCaps::new(10);
        let stats = LogStats::new(&caps);
        counts.record(&stats);
        let mut registry = prometheus_client::registry::Registry::default();
        stats.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains(
                "sidelight_log_records_total{source=\"otlp\",service_name=\"bars\",level=\"error\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("sidelight_log_exceptions_total{source=\"otlp\",service_name=\"bars\",exception=\"LookupError\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn services_beyond_the_cap_are_other() {
        let caps = LabelCaps::new(1);
        let stats = LogStats::new(&caps);
        stats.received("a", "info", 1);
        stats.received("b", "info", 2);
        let other = stats
            .records
            .get_or_create(&vec![
                ("source", "otlp".into()),
                ("service_name", "other".into()),
                ("level", "info".into()),
            ])
            .get();
        assert_eq!(other, 2);
    }
}

//! Log records → OTLP: one `ResourceLogs` per batch (the source's resource), one `ScopeLogs` per
//! logger (the scope name is the logger's name, as the OpenTelemetry Python SDK's logging
//! handler does), record order kept within a scope. Exceptions, the file path and the source
//! become semantic-convention attributes.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord as OtlpRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::record::{AttrValue, Attributes, LogRecord};

/// The resource attributes of one source's records (`service.name`, `host.name`, …), in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogResource {
    pub attributes: Vec<(String, String)>,
}

impl LogResource {
    /// A resource naming the service and the host.
    pub fn new(service: &str, host: Option<&str>) -> Self {
        let mut attributes = vec![("service.name".to_owned(), service.to_owned())];
        if let Some(h) = host {
            attributes.push(("host.name".to_owned(), h.to_owned()));
        }
        Self { attributes }
    }

    /// Adds (or replaces) one attribute.
    pub fn with(mut self, key: &str, value: &str) -> Self {
        match self.attributes.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.to_owned(),
            None => self.attributes.push((key.to_owned(), value.to_owned())),
        }
        self
    }

    fn to_proto(&self) -> Resource {
        Resource {
            attributes: self
                .attributes
                .iter()
                .map(|(k, v)| kv(k.clone(), string(v.clone())))
                .collect(),
            ..Default::default()
        }
    }
}

/// Scope name for records without a logger.
const NO_LOGGER: &str = "sidelight.logs";

/// Converts one batch of records into an OTLP export request. Records are consumed.
pub fn to_request(records: Vec<LogRecord>, resource: &LogResource) -> ExportLogsServiceRequest {
    let mut scopes: Vec<ScopeLogs> = Vec::new();
    for record in records {
        let scope_name = record.logger.as_deref().unwrap_or(NO_LOGGER);
        // Few loggers per batch: a linear search beats hashing here.
        let at = match scopes.iter().position(|s| {
            s.scope
                .as_ref()
                .is_some_and(|sc| sc.name.as_str() == scope_name)
        }) {
            Some(i) => i,
            None => {
                scopes.push(ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: scope_name.to_owned(),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
                scopes.len() - 1
            }
        };
        scopes[at].log_records.push(to_record(record));
    }
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource.to_proto()),
            scope_logs: scopes,
            ..Default::default()
        }],
    }
}

fn to_record(r: LogRecord) -> OtlpRecord {
    let mut attributes: Vec<KeyValue> = Vec::with_capacity(r.attributes.len() + 4);
    if let Some(path) = &r.file_path {
        attributes.push(kv("log.file.path".into(), string(path.to_string())));
    }
    if let Some(e) = r.exception {
        if let Some(t) = e.r#type {
            attributes.push(kv("exception.type".into(), string(t)));
        }
        if let Some(m) = e.message {
            attributes.push(kv("exception.message".into(), string(m)));
        }
        if let Some(s) = e.stacktrace {
            attributes.push(kv("exception.stacktrace".into(), string(s)));
        }
    }
    attributes.extend(r.attributes.into_iter().map(|(k, v)| kv(k, any(v))));
    OtlpRecord {
        time_unix_nano: r.timestamp_unix_nano.unwrap_or(0),
        observed_time_unix_nano: r.observed_unix_nano,
        severity_number: i32::from(r.severity_number),
        severity_text: r.severity_text.unwrap_or_default(),
        body: Some(string(r.body)),
        attributes,
        trace_id: r.trace_id.map(|t| t.0.to_vec()).unwrap_or_default(),
        span_id: r.span_id.map(|s| s.0.to_vec()).unwrap_or_default(),
        // W3C trace flags are not in Python logs; 0 = unknown.
        flags: 0,
        ..Default::default()
    }
}

fn kv(key: String, value: AnyValue) -> KeyValue {
    KeyValue {
        key,
        value: Some(value),
        ..Default::default()
    }
}

fn string(s: String) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(s)),
    }
}

fn any(v: AttrValue) -> AnyValue {
    let value = match v {
        AttrValue::Null => None,
        AttrValue::Bool(b) => Some(any_value::Value::BoolValue(b)),
        AttrValue::Int(i) => Some(any_value::Value::IntValue(i)),
        AttrValue::Float(f) => Some(any_value::Value::DoubleValue(f)),
        AttrValue::String(s) => Some(any_value::Value::StringValue(s)),
        AttrValue::Array(items) => Some(any_value::Value::ArrayValue(ArrayValue {
            values: items.into_iter().map(any).collect(),
        })),
        AttrValue::Map(m) => Some(any_value::Value::KvlistValue(kvlist(m))),
    };
    AnyValue { value }
}

fn kvlist(m: Attributes) -> KeyValueList {
    KeyValueList {
        values: m.into_iter().map(|(k, v)| kv(k, any(v))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::logs::record::{ExceptionInfo, SpanId, TraceId};

    fn value(kvs: &[KeyValue], key: &str) -> Option<any_value::Value> {
        kvs.iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone())
            .and_then(|v| v.value)
    }

    #[test]
    fn records_group_by_logger_and_keep_every_field() {
        let mut attrs = Attributes::new();
        attrs.insert("user_id", AttrValue::Int(7));
        attrs.insert(
            "ctx",
            AttrValue::Map(Attributes::from_pairs(vec![(
                "k".into(),
                AttrValue::Array(vec![AttrValue::Bool(true), AttrValue::Null]),
            )])),
        );
        let full = LogRecord {
            timestamp_unix_nano: Some(1_700_000_000_000_000_000),
            observed_unix_nano: 1_700_000_000_500_000_000,
            severity_number: 17,
            severity_text: Some("ERROR".into()),
            logger: Some("app.web".into()),
            body: "payment failed".into(),
            exception: Some(ExceptionInfo {
                r#type: Some("ValueError".into()),
                message: Some("card declined".into()),
                stacktrace: Some("Traceback ...".into()),
            }),
            trace_id: TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736"),
            span_id: SpanId::from_hex("00f067aa0ba902b7"),
            attributes: attrs,
            source: Some(Arc::from("app")),
            file_path: Some(Arc::from("/var/log/app/app.log")),
        };
        let other_logger = LogRecord {
            logger: Some("app.db".into()),
            body: "slow query".into(),
            ..LogRecord::default()
        };
        let no_logger = LogRecord::from_body("plain".into(), 5);
        let same_logger = LogRecord {
            logger: Some("app.web".into()),
            body: "second".into(),
            ..LogRecord::default()
        };
        let resource =
            LogResource::new("checkout", Some("vm-1")).with("deployment.environment", "prod");
        let req = to_request(vec![full, other_logger, no_logger, same_logger], &resource);
        assert_eq!(req.resource_logs.len(), 1);
        let rl = &req.resource_logs[0];
        let res = rl.resource.as_ref().expect("resource");
        assert_eq!(
            value(&res.attributes, "service.name"),
            Some(any_value::Value::StringValue("checkout".into()))
        );
        assert_eq!(res.attributes.len(), 3);
        let names: Vec<&str> = rl
            .scope_logs
            .iter()
            .map(|s| s.scope.as_ref().map_or("", |s| s.name.as_str()))
            .collect();
        assert_eq!(names, ["app.web", "app.db", NO_LOGGER]);
        let web = &rl.scope_logs[0].log_records;
        assert_eq!(web.len(), 2, "same logger, same scope, order kept");
        let r = &web[0];
        assert_eq!(r.severity_number, 17);
        assert_eq!(r.severity_text, "ERROR");
        assert_eq!(r.time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(r.observed_time_unix_nano, 1_700_000_000_500_000_000);
        assert_eq!(r.trace_id.len(), 16);
        assert_eq!(r.span_id.len(), 8);
        assert_eq!(
            value(&r.attributes, "exception.type"),
            Some(any_value::Value::StringValue("ValueError".into()))
        );
        assert_eq!(
            value(&r.attributes, "log.file.path"),
            Some(any_value::Value::StringValue("/var/log/app/app.log".into()))
        );
        assert_eq!(
            value(&r.attributes, "user_id"),
            Some(any_value::Value::IntValue(7))
        );
        let Some(any_value::Value::KvlistValue(ctx)) = value(&r.attributes, "ctx") else {
            panic!("nested map kept as a kvlist");
        };
        let Some(any_value::Value::ArrayValue(arr)) = value(&ctx.values, "k") else {
            panic!("array kept");
        };
        assert_eq!(arr.values.len(), 2);
        assert_eq!(arr.values[1].value, None, "null kept as an empty value");
        assert_eq!(
            web[1].body.as_ref().and_then(|b| b.value.clone()),
            Some(any_value::Value::StringValue("second".into()))
        );
        let plain = &rl.scope_logs[2].log_records[0];
        assert_eq!(plain.time_unix_nano, 0, "no timestamp: observed time only");
        assert!(plain.trace_id.is_empty() && plain.span_id.is_empty());
    }
}

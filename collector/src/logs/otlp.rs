//! Log records → OTLP: one `ResourceLogs` per batch (the source's resource), one `ScopeLogs` per
//! logger (the scope name is the logger's name, as the OpenTelemetry Python SDK's logging
//! handler does), record order kept within a scope. Exceptions, the file path and the source
//! become semantic-convention attributes.
//!
//! [`encode_request`] writes the request's protobuf encoding straight from the records (what
//! the agent hands to its sinks, which queue requests encoded); [`to_request`] builds the same
//! request as prost messages.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord as OtlpRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;

use std::sync::Arc;

use bytes::Bytes;
use prost::encoding::{WireType, encoded_len_varint};

use super::record::{AttrValue, Attributes, LogRecord, Name};
use crate::pipeline::EncodedRequest;

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
pub fn to_request(records: Vec<LogRecord<'_>>, resource: &LogResource) -> ExportLogsServiceRequest {
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

fn to_record(r: LogRecord<'_>) -> OtlpRecord {
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
    attributes.extend(
        r.attributes
            .into_iter()
            .map(|(k, v)| kv(k.into_owned(), any(v))),
    );
    OtlpRecord {
        time_unix_nano: r.timestamp_unix_nano.unwrap_or(0),
        observed_time_unix_nano: r.observed_unix_nano,
        severity_number: i32::from(r.severity_number),
        severity_text: r.severity_text.map(String::from).unwrap_or_default(),
        body: Some(string(r.body.into_owned())),
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

fn any(v: AttrValue<'_>) -> AnyValue {
    let value = match v {
        AttrValue::Null => None,
        AttrValue::Bool(b) => Some(any_value::Value::BoolValue(b)),
        AttrValue::Int(i) => Some(any_value::Value::IntValue(i)),
        AttrValue::Float(f) => Some(any_value::Value::DoubleValue(f)),
        AttrValue::String(s) => Some(any_value::Value::StringValue(s.into_owned())),
        AttrValue::Array(items) => Some(any_value::Value::ArrayValue(ArrayValue {
            values: items.into_iter().map(any).collect(),
        })),
        AttrValue::Map(m) => Some(any_value::Value::KvlistValue(kvlist(m))),
    };
    AnyValue { value }
}

fn kvlist(m: Attributes<'_>) -> KeyValueList {
    KeyValueList {
        values: m
            .into_iter()
            .map(|(k, v)| kv(k.into_owned(), any(v)))
            .collect(),
    }
}

/// The protobuf encoding of [`to_request`]`(records, resource)`, written directly from the
/// records (no message tree in between).
pub fn encode_request(records: &[LogRecord<'_>], resource: &LogResource) -> EncodedRequest {
    let mut logs = EncodedLogs::new();
    for r in records {
        logs.push(r);
    }
    logs.finish(resource)
}

/// Room kept up front for the records of a batch's first scope (most batches have one logger).
const FIRST_SCOPE_RESERVE: usize = 64 << 10;
/// The most room [`EncodedLogs::with_first_scope_room`] keeps up front.
const MAX_FIRST_SCOPE_RESERVE: usize = 4 << 20;

/// A batch of records encoded as they come: each record is written once, as its
/// `ScopeLogs.log_records` field, into its scope's buffer (scopes in order of first appearance,
/// records in order within a scope), so the caller can drop the record at once.
/// [`EncodedLogs::finish`] wraps the scopes into an export request — byte for byte what
/// [`encode_request`] writes for the same records.
#[derive(Debug, Default)]
pub struct EncodedLogs {
    /// Scope name and its records' encodings.
    scopes: Vec<(Name, Vec<u8>)>,
    /// The scope the last record went to (consecutive records mostly share their logger).
    last: usize,
    records: usize,
    /// The last file path seen and its `log.file.path` attribute, encoded: every record of a
    /// file carries the same one.
    path_attr: Option<(Arc<str>, Vec<u8>)>,
    /// Room kept for the first scope when it is opened (0: [`FIRST_SCOPE_RESERVE`]).
    first_scope_room: usize,
}

impl EncodedLogs {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch whose first scope keeps `bytes` of room up front (between 64 KiB and
    /// 4 MiB): what the previous batch of the same source took, so that a batch is mostly one
    /// allocation of about its size rather than a chain of doublings to the next power of two.
    pub fn with_first_scope_room(bytes: usize) -> Self {
        Self {
            first_scope_room: bytes.clamp(FIRST_SCOPE_RESERVE, MAX_FIRST_SCOPE_RESERVE),
            ..Self::default()
        }
    }

    /// Bytes of the first scope's records so far (most batches have one scope).
    pub fn first_scope_bytes(&self) -> usize {
        self.scopes.first().map_or(0, |(_, b)| b.len())
    }

    /// Encodes `r` into its scope.
    pub fn push(&mut self, r: &LogRecord<'_>) {
        self.push_with_path(r, r.file_path.as_ref());
    }

    /// Encodes `r`, read from the file at `path`, into its scope: as [`Self::push`] with
    /// `r.file_path` set to `path` (when it is not set already), without the record holding a
    /// reference to the path.
    pub fn push_read_from(&mut self, r: &LogRecord<'_>, path: &Arc<str>) {
        self.push_with_path(r, Some(r.file_path.as_ref().unwrap_or(path)));
    }

    fn push_with_path(&mut self, r: &LogRecord<'_>, file_path: Option<&Arc<str>>) {
        let name: &str = r.logger.as_deref().unwrap_or(NO_LOGGER);
        let at = match self.scopes.get(self.last) {
            Some((n, _)) if n.as_ref() == name => self.last,
            _ => match self.scopes.iter().position(|(n, _)| n.as_ref() == name) {
                Some(i) => i,
                None => {
                    let owned: Name = match &r.logger {
                        Some(l) => l.clone(),
                        None => Name::Borrowed(NO_LOGGER),
                    };
                    let reserve = if self.scopes.is_empty() {
                        if self.first_scope_room == 0 {
                            FIRST_SCOPE_RESERVE
                        } else {
                            self.first_scope_room
                        }
                    } else {
                        0
                    };
                    self.scopes.push((owned, Vec::with_capacity(reserve)));
                    self.scopes.len() - 1
                }
            },
        };
        self.last = at;
        let path_attr = match file_path {
            Some(path) => {
                let cached = self
                    .path_attr
                    .as_ref()
                    .is_some_and(|(p, _)| Arc::ptr_eq(p, path));
                if !cached {
                    let mut encoded = Vec::with_capacity(path.len() + 24);
                    string_attribute(&mut encoded, "log.file.path", path);
                    self.path_attr = Some((path.clone(), encoded));
                }
                self.path_attr.as_ref().map(|(_, e)| e.as_slice())
            }
            None => None,
        };
        // ScopeLogs.log_records = 2 (most records take 128 B to 16 KiB)
        message_sized(&mut self.scopes[at].1, 2, 2, |out| {
            write_record(out, r, path_attr);
        });
        self.records += 1;
    }

    /// Records pushed.
    pub fn len(&self) -> usize {
        self.records
    }

    /// True when no record was pushed.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Bytes of the records' encodings so far.
    pub fn encoded_bytes(&self) -> usize {
        self.scopes.iter().map(|(_, b)| b.len()).sum()
    }

    /// The export request: one `ResourceLogs` (`resource`) holding every scope.
    pub fn finish(&self, resource: &LogResource) -> EncodedRequest {
        // ResourceLogs.resource = 1
        let mut head = Vec::with_capacity(64);
        message(&mut head, 1, |out| {
            for (k, v) in &resource.attributes {
                // Resource.attributes = 1
                message(out, 1, |out| {
                    key_value_key(out, k);
                    message(out, 2, |out| string_field(out, 1, v, true));
                });
            }
        });
        // Each scope's `ScopeLogs.scope` (= 1, InstrumentationScope.name = 1) and the length of
        // its `ScopeLogs` message.
        let scope_heads: Vec<(Vec<u8>, usize)> = self
            .scopes
            .iter()
            .map(|(name, recs)| {
                let mut h = Vec::with_capacity(name.len() + 4);
                message(&mut h, 1, |out| string_field(out, 1, name, false));
                let len = h.len() + recs.len();
                (h, len)
            })
            .collect();
        // ResourceLogs: the resource, then each scope as ResourceLogs.scope_logs = 2.
        let resource_logs = head.len()
            + scope_heads
                .iter()
                .map(|(_, len)| 1 + encoded_len_varint(*len as u64) + len)
                .sum::<usize>();
        let mut out =
            Vec::with_capacity(1 + encoded_len_varint(resource_logs as u64) + resource_logs);
        // ExportLogsServiceRequest.resource_logs = 1
        write_key(1, WireType::LengthDelimited, &mut out);
        write_varint(&mut out, resource_logs as u64);
        out.extend_from_slice(&head);
        for ((h, len), (_, recs)) in scope_heads.iter().zip(&self.scopes) {
            write_key(2, WireType::LengthDelimited, &mut out);
            write_varint(&mut out, *len as u64);
            out.extend_from_slice(h);
            out.extend_from_slice(recs);
        }
        EncodedRequest::logs_written(Bytes::from(out), self.records)
    }
}

/// `LogRecord.attributes` (= 6) holding one string value.
fn string_attribute(out: &mut Vec<u8>, key: &str, value: &str) {
    message(out, 6, |out| {
        key_value_key(out, key);
        message(out, 2, |out| string_field(out, 1, value, true));
    });
}

/// One `LogRecord`, as [`to_record`] builds it; `path_attr` is [`string_attribute`] of its
/// `log.file.path`, encoded once per file.
fn write_record(out: &mut Vec<u8>, r: &LogRecord<'_>, path_attr: Option<&[u8]>) {
    // time_unix_nano = 1 (fixed64), observed_time_unix_nano = 11 (fixed64)
    fixed64_field(out, 1, r.timestamp_unix_nano.unwrap_or(0));
    // severity_number = 2, severity_text = 3
    if r.severity_number != 0 {
        write_key(2, WireType::Varint, out);
        write_varint(out, u64::from(r.severity_number));
    }
    string_field(out, 3, r.severity_text.as_deref().unwrap_or(""), false);
    // body = 5
    message(out, 5, |out| string_field(out, 1, &r.body, true));
    // attributes = 6
    if let Some(path) = path_attr {
        out.extend_from_slice(path);
    }
    if let Some(e) = &r.exception {
        if let Some(t) = &e.r#type {
            string_attribute(out, "exception.type", t);
        }
        if let Some(m) = &e.message {
            string_attribute(out, "exception.message", m);
        }
        if let Some(s) = &e.stacktrace {
            string_attribute(out, "exception.stacktrace", s);
        }
    }
    for (k, v) in r.attributes.iter() {
        message(out, 6, |out| key_value(out, k, v));
    }
    // trace_id = 9, span_id = 10 (bytes)
    if let Some(t) = &r.trace_id {
        bytes_field(out, 9, &t.0);
    }
    if let Some(s) = &r.span_id {
        bytes_field(out, 10, &s.0);
    }
    fixed64_field(out, 11, r.observed_unix_nano);
}

/// A `KeyValue`'s fields: key = 1, value = 2.
fn key_value(out: &mut Vec<u8>, key: &str, value: &AttrValue<'_>) {
    key_value_key(out, key);
    message(out, 2, |out| any_value(out, value));
}

fn key_value_key(out: &mut Vec<u8>, key: &str) {
    string_field(out, 1, key, false);
}

/// An `AnyValue`'s fields (a null is an `AnyValue` with no field set).
fn any_value(out: &mut Vec<u8>, v: &AttrValue<'_>) {
    match v {
        AttrValue::Null => {}
        // string_value = 1, bool_value = 2, int_value = 3, double_value = 4: members of a oneof,
        // so written even when zero.
        AttrValue::String(s) => string_field(out, 1, s, true),
        AttrValue::Bool(b) => {
            write_key(2, WireType::Varint, out);
            write_varint(out, u64::from(*b));
        }
        AttrValue::Int(i) => {
            write_key(3, WireType::Varint, out);
            write_varint(out, *i as u64);
        }
        AttrValue::Float(f) => {
            write_key(4, WireType::SixtyFourBit, out);
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        // array_value = 5: ArrayValue.values = 1
        AttrValue::Array(items) => message(out, 5, |out| {
            for item in items {
                message(out, 1, |out| any_value(out, item));
            }
        }),
        // kvlist_value = 6: KeyValueList.values = 1
        AttrValue::Map(m) => message(out, 6, |out| {
            for (k, v) in m.iter() {
                message(out, 1, |out| key_value(out, k, v));
            }
        }),
    }
}

/// A string field; proto3 leaves an empty one out unless it is a oneof member (`always`).
fn string_field(out: &mut Vec<u8>, field: u32, s: &str, always: bool) {
    if s.is_empty() && !always {
        return;
    }
    bytes_field(out, field, s.as_bytes());
}

fn bytes_field(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    write_key(field, WireType::LengthDelimited, out);
    write_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A `fixed64` field, left out when zero (proto3).
fn fixed64_field(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        write_key(field, WireType::SixtyFourBit, out);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// An embedded message: its key, its length, then what `body` writes. The length is not known
/// before the body is written: one byte is kept for it (see [`message_sized`]).
fn message(out: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    message_sized(out, field, 1, body);
}

/// [`message`] keeping `room` bytes for the length: the body is moved only when its length
/// needs another number of bytes (a guess of the size spares most moves).
fn message_sized(out: &mut Vec<u8>, field: u32, room: usize, body: impl FnOnce(&mut Vec<u8>)) {
    write_key(field, WireType::LengthDelimited, out);
    let at = out.len();
    if room == 1 {
        out.push(0);
    } else {
        out.resize(at + room, 0);
    }
    body(out);
    let len = out.len() - at - room;
    let need = encoded_len_varint(len as u64);
    if need > room {
        out.resize(out.len() + need - room, 0);
        out.copy_within(at + room..at + room + len, at + need);
    } else if need < room {
        out.copy_within(at + room..at + room + len, at + need);
        out.truncate(at + need + len);
    }
    // The length, as a varint, into the `need` bytes kept for it.
    let mut v = len as u64;
    let mut i = at;
    while v >= 0x80 {
        out[i] = (v as u8) | 0x80;
        v >>= 7;
        i += 1;
    }
    out[i] = v as u8;
}

/// A field's key: `(field << 3) | wire type`, as a varint.
fn write_key(field: u32, wire: WireType, out: &mut Vec<u8>) {
    write_varint(out, (u64::from(field) << 3) | wire as u64);
}

/// A base-128 varint, low group first.
fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::logs::record::{ExceptionInfo, Name, SpanId, TraceId};
    use crate::pipeline::Payload;
    use proptest::prelude::*;
    use prost::Message;

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
            file_path: Some(Arc::from("/var/log/app/app.log")),
        };
        let other_logger = LogRecord {
            logger: Some("app.db".into()),
            body: "slow query".into(),
            ..LogRecord::default()
        };
        let no_logger = LogRecord::from_body("plain", 5);
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

    fn attr_value() -> impl Strategy<Value = AttrValue<'static>> {
        let leaf = prop_oneof![
            Just(AttrValue::Null),
            proptest::arbitrary::any::<bool>().prop_map(AttrValue::Bool),
            proptest::arbitrary::any::<i64>().prop_map(AttrValue::Int),
            (-1e300f64..1e300).prop_map(AttrValue::Float),
            ".{0,40}".prop_map(|s| AttrValue::String(s.into())),
            ".{100,300}".prop_map(|s| AttrValue::String(s.into())),
        ];
        leaf.prop_recursive(4, 40, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(AttrValue::Array),
                proptest::collection::vec(("[a-z.]{0,8}", inner), 0..6).prop_map(|pairs| {
                    AttrValue::Map(pairs.into_iter().map(|(k, v)| (Name::from(k), v)).collect())
                }),
            ]
        })
    }

    fn record() -> impl Strategy<Value = LogRecord<'static>> {
        let text = || proptest::option::of(".{0,20}");
        (
            (
                proptest::option::of(proptest::arbitrary::any::<u64>()),
                proptest::arbitrary::any::<u64>(),
                proptest::arbitrary::any::<u8>(),
                text(),
                proptest::option::of(prop::sample::select(vec!["app.web", "app.db", ""])),
                prop_oneof![
                    ".{0,30}".boxed(),
                    ".{120,300}".boxed(),
                    (16_000usize..17_000).prop_map(|n| "x".repeat(n)).boxed(),
                ],
            ),
            (
                proptest::option::of((text(), text(), proptest::option::of(".{0,300}"))),
                proptest::option::of(proptest::arbitrary::any::<[u8; 16]>()),
                proptest::option::of(proptest::arbitrary::any::<[u8; 8]>()),
                proptest::collection::vec(("[a-z_.]{0,10}", attr_value()), 0..8),
                proptest::option::of(prop::sample::select(vec!["/var/log/a.log", ""])),
            ),
        )
            .prop_map(
                |((ts, observed, sev, sev_text, logger, body), (exc, trace, span, attrs, path))| {
                    LogRecord {
                        timestamp_unix_nano: ts,
                        observed_unix_nano: observed,
                        severity_number: sev % 25,
                        severity_text: sev_text.map(Name::from),
                        logger: logger.map(Name::from),
                        body: body.into(),
                        exception: exc.map(|(t, m, s)| ExceptionInfo {
                            r#type: t,
                            message: m,
                            stacktrace: s,
                        }),
                        trace_id: trace.map(TraceId),
                        span_id: span.map(SpanId),
                        attributes: attrs.into_iter().map(|(k, v)| (Name::from(k), v)).collect(),
                        file_path: path.map(Arc::from),
                    }
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn the_written_encoding_decodes_to_the_built_request(
            records in proptest::collection::vec(record(), 0..12),
            host in proptest::option::of("[a-z0-9-]{0,12}"),
        ) {
            let resource = LogResource::new("svc", host.as_deref()).with("k", "");
            let written = encode_request(&records, &resource);
            let decoded = ExportLogsServiceRequest::decode(&written.bytes()[..])
                .expect("the written request decodes");
            prop_assert_eq!(&decoded, &to_request(records.clone(), &resource));
            prop_assert_eq!(Payload::Encoded(written).items(), records.len());
        }
    }
}

//! Turns one line (or one joined multi-line text record) into a [`LogRecord`]: JSON lines from
//! python-json-logger, structlog's `JSONRenderer` and loguru's `serialize=True`, or plain text
//! (leading timestamp and level picked out, Python tracebacks split into an exception).
//!
//! Parsing never fails: a line that should have been JSON and is not becomes a text record and
//! the [`Parsed::error`] tells the caller to count `sidelight_log_parse_errors_total`; invalid
//! UTF-8 is replaced; a line over [`ParserConfig::max_line_bytes`] is cut and flagged.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::sync::{LazyLock, Mutex, PoisonError};

use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::record::{
    AttrValue, Attributes, ExceptionInfo, LogRecord, Name, SpanId, TraceId, severity,
};

/// Default cap on one line: 256 KiB.
pub const DEFAULT_MAX_LINE_BYTES: usize = 256 * 1024;

/// How a source's lines are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// JSON when the line starts with `{`, text otherwise.
    #[default]
    Auto,
    /// Every line should be a JSON object; anything else is a parse error (kept as text).
    Json,
    /// Never try JSON.
    Text,
    /// Kubernetes node logs (CRI: `<RFC 3339 time> stdout|stderr F|P <line>`): the prefix is
    /// stripped and the line parsed as with `auto`, partial (`P`) lines are joined with the
    /// line that ends them, `stream` is kept as an attribute. `auto` recognises CRI lines too.
    Cri,
}

/// One line of the CRI log format, as the kubelet writes `/var/log/pods/*/*/N.log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CriLine<'a> {
    /// The runtime's timestamp (unix nanoseconds).
    pub time_unix_nano: u64,
    /// `stdout` or `stderr`.
    pub stream: &'static str,
    /// A `P` (partial) line: the runtime split a long line; the rest follows.
    pub partial: bool,
    /// The container's output, without the prefix.
    pub content: &'a [u8],
}

/// Splits a CRI line (`2026-12-06T10:00:00.123456789Z stdout F {"msg": 1}`); `None` when the
/// line does not have that shape.
pub fn split_cri(line: &[u8]) -> Option<CriLine<'_>> {
    // The time is at most ~35 bytes; anything longer is not a CRI prefix.
    let head = &line[..line.len().min(48)];
    let sp = head.iter().position(|&b| b == b' ')?;
    let time = std::str::from_utf8(&line[..sp]).ok()?;
    // RFC 3339 with a `T` and a zone, as the runtimes write it.
    if time.len() < 20 || time.as_bytes().get(10) != Some(&b'T') {
        return None;
    }
    let time_unix_nano = parse_timestamp(time, 0)?;
    let rest = &line[sp + 1..];
    let (stream, rest) = if let Some(r) = rest.strip_prefix(b"stdout ") {
        ("stdout", r)
    } else if let Some(r) = rest.strip_prefix(b"stderr ") {
        ("stderr", r)
    } else {
        return None;
    };
    // The tag: `F` or `P`, possibly followed by more `:`-separated flags.
    let tag_end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
    let tag = &rest[..tag_end];
    let partial = match tag.split(|&b| b == b':').next()? {
        b"F" => false,
        b"P" => true,
        _ => return None,
    };
    let content = rest.get(tag_end + 1..).unwrap_or(&[]);
    Some(CriLine {
        time_unix_nano,
        stream,
        partial,
        content,
    })
}

/// Parser settings (one per configured log source).
#[derive(Debug, Clone)]
pub struct ParserConfig {
    pub format: Format,
    /// Lines longer than this are cut to it (on a UTF-8 boundary) and flagged.
    pub max_line_bytes: usize,
    /// Offset east of UTC, in seconds, for timestamps written without a zone (Python's
    /// `asctime` is local time). `0` reads them as UTC.
    pub naive_utc_offset_secs: i32,
}

impl Default for ParserConfig {
    fn default() -> Self {
        Self {
            format: Format::Auto,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            naive_utc_offset_secs: 0,
        }
    }
}

/// Why a line that should have been JSON was kept as text.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("invalid JSON: {0}")]
    InvalidJson(#[from] serde_json::Error),
    #[error("JSON value is not an object")]
    NotAnObject,
}

/// The result of parsing one line: always a record, plus what went wrong on the way.
#[derive(Debug)]
pub struct Parsed<'a> {
    /// The record; its strings borrow from the line where they can.
    pub record: LogRecord<'a>,
    /// Set when JSON was expected and the line was kept as text instead (count it in
    /// `sidelight_log_parse_errors_total`). A JSON line cut to `max_line_bytes` no longer parses,
    /// so it is reported here as well as in `truncated_bytes`.
    pub error: Option<ParseError>,
    /// Bytes cut off because the line was longer than `max_line_bytes` (0 when whole; count it
    /// in `sidelight_log_lost_bytes_total`).
    pub truncated_bytes: usize,
    /// True when invalid UTF-8 was replaced with U+FFFD.
    pub lossy_utf8: bool,
}

impl Parsed<'_> {
    /// True when the line was cut to `max_line_bytes`.
    pub fn truncated(&self) -> bool {
        self.truncated_bytes > 0
    }
}

/// A configured parser. Its only state is what it remembers of the last line parsed (its names,
/// see `Names`, and its timestamp's minute, see `Minute`): a clone starts without them. Each
/// log source's thread has its own parser, so that memory is a `RefCell` (no lock per line).
#[derive(Debug, Default)]
pub struct Parser {
    config: ParserConfig,
    last_line: RefCell<LastLine>,
}

/// What the parser remembers of the last line.
#[derive(Debug, Default)]
struct LastLine {
    names: Vec<(&'static str, Role)>,
    minute: Option<Minute>,
}

impl Clone for Parser {
    fn clone(&self) -> Self {
        Self::new(self.config.clone())
    }
}

impl Parser {
    pub fn new(config: ParserConfig) -> Self {
        Self {
            config,
            last_line: RefCell::default(),
        }
    }

    pub fn config(&self) -> &ParserConfig {
        &self.config
    }

    /// Parses one line (a trailing `\n` / `\r\n` is ignored) read at `observed_unix_nano`.
    /// The caller sets [`LogRecord::file_path`].
    pub fn parse<'a>(&self, line: &'a [u8], observed_unix_nano: u64) -> Parsed<'a> {
        let line = strip_newline(line);
        let (line, truncated_bytes) = if line.len() > self.config.max_line_bytes {
            (
                &line[..self.config.max_line_bytes],
                line.len() - self.config.max_line_bytes,
            )
        } else {
            (line, 0)
        };
        let (text, lossy_utf8) = decode_utf8(line, truncated_bytes > 0);
        let mut error = None;
        let wants_json = match self.config.format {
            Format::Text => false,
            Format::Json => true,
            Format::Auto | Format::Cri => text.trim_start().starts_with('{'),
        };
        // Only a parse that re-entered this one would find it borrowed (none does): it would
        // parse without the memory.
        let mut unshared = LastLine::default();
        let mut borrowed = self.last_line.try_borrow_mut();
        let last_line = match &mut borrowed {
            Ok(l) => &mut **l,
            Err(_) => &mut unshared,
        };
        let mut names = Names {
            prev: &mut last_line.names,
            at: 0,
            minute: &mut last_line.minute,
        };
        let mut record = None;
        if wants_json {
            let json = match &text {
                Cow::Borrowed(t) => self.json(t, observed_unix_nano, &mut names),
                // Invalid UTF-8 was replaced: the record cannot borrow from the line.
                Cow::Owned(t) => self
                    .json(t, observed_unix_nano, &mut names)
                    .map(LogRecord::into_owned),
            };
            match json {
                Ok(r) => record = Some(r),
                Err(e) => error = Some(e),
            }
        }
        Parsed {
            record: match record {
                Some(r) => r,
                None => self.text_record(text, observed_unix_nano, &mut names),
            },
            error,
            truncated_bytes,
            lossy_utf8,
        }
    }

    fn text_record<'a>(
        &self,
        text: Cow<'a, str>,
        observed: u64,
        names: &mut Names<'_>,
    ) -> LogRecord<'a> {
        let mut rec = LogRecord::from_body("", observed);
        let mut rest = text.strip_prefix('[').unwrap_or(&text);
        if let Some((ts, used)) =
            scan_timestamp_in(rest, self.config.naive_utc_offset_secs, names.minute)
        {
            rec.timestamp_unix_nano = Some(ts);
            rest = &rest[used..];
        } else {
            rest = &text;
        }
        let rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace() || "|-[]".contains(c));
        let word_end = rest
            .find(|c: char| !(c.is_ascii_alphabetic()))
            .unwrap_or(rest.len());
        if word_end > 0
            && let Some(n) = severity::from_text(&rest[..word_end])
        {
            rec.severity_number = n;
            rec.severity_text = Some(names.name(&rest[..word_end]));
        }
        match find_traceback(&text) {
            Some(at) => {
                let head = text[..at].trim_end().len();
                let stack = text[at..].trim_end().to_owned();
                rec.exception = Some(exception_from_traceback(stack));
                rec.body = if head == 0 {
                    text
                } else {
                    match text {
                        Cow::Borrowed(t) => Cow::Borrowed(&t[..head]),
                        Cow::Owned(mut t) => {
                            t.truncate(head);
                            Cow::Owned(t)
                        }
                    }
                };
            }
            None => rec.body = text,
        }
        rec
    }

    /// The record of a JSON line. Its fields are mapped as they are read (no field vector in
    /// between); a line that turns out to have loguru's shape after other fields were mapped is
    /// read again as fields, for [`Parser::loguru_record`].
    fn json<'a>(
        &self,
        text: &'a str,
        observed: u64,
        names: &mut Names<'_>,
    ) -> Result<LogRecord<'a>, ParseError> {
        let offset = self.config.naive_utc_offset_secs;
        let mut mapping = JsonMapping::new(offset, observed);
        let read = match read_json(text, names, Some(&mut mapping))? {
            Read::Loguru => {
                // The line's names are met again from its first.
                names.at = 0;
                read_json(text, names, None)?
            }
            read => read,
        };
        match read {
            Read::Mapped => Ok(mapping.finish()),
            Read::Fields(fields) => Ok(self.json_record(fields, observed, names)),
            // Only a read that maps as it reads stops at loguru's shape.
            Read::Loguru => Err(ParseError::NotAnObject),
        }
    }

    /// The record of a JSON object's top-level fields, read into a vector first (loguru's
    /// shape, or a line read again as fields).
    fn json_record<'a>(
        &self,
        fields: Vec<Field<'a>>,
        observed: u64,
        names: &mut Names<'_>,
    ) -> LogRecord<'a> {
        let is_loguru = fields
            .iter()
            .any(|f| f.role == Role::Record && f.value.as_map().is_some())
            && fields.iter().any(|f| f.role == Role::Text);
        if is_loguru {
            return self.loguru_record(fields, observed, names);
        }
        let mut mapping = JsonMapping::new(self.config.naive_utc_offset_secs, observed);
        mapping.room(fields.len());
        for Field { name, role, value } in fields {
            mapping.take(names, name, role, value);
        }
        mapping.finish()
    }

    fn loguru_record<'a>(
        &self,
        fields: Vec<Field<'a>>,
        observed: u64,
        names: &mut Names<'_>,
    ) -> LogRecord<'a> {
        let mut rec = LogRecord::from_body("", observed);
        let mut text = None;
        let mut record = Attributes::new();
        let mut attrs = Vec::new();
        for Field { name, role, value } in fields {
            match (role, value) {
                (Role::Text, Top::Str(s)) if text.is_none() => text = Some(s),
                (Role::Record, Top::Other(AttrValue::Map(m))) if record.is_empty() => record = m,
                (_, v) => attrs.push((name, v.into_value())),
            }
        }
        for (key, value) in record {
            match (key.as_ref(), value) {
                ("message", AttrValue::String(s)) => rec.body = s,
                ("name", AttrValue::String(s)) => rec.logger = Some(names.name_cow(s)),
                ("time", AttrValue::Map(t)) => {
                    rec.timestamp_unix_nano = t
                        .get("repr")
                        .and_then(AttrValue::as_str)
                        .and_then(|r| {
                            parse_timestamp_in(r, self.config.naive_utc_offset_secs, names.minute)
                        })
                        .or_else(|| t.get("timestamp").and_then(|v| self.timestamp_of(v)));
                }
                ("level", AttrValue::Map(l)) => {
                    let no = l.get("no").and_then(AttrValue::as_i64);
                    if let Some(AttrValue::String(name)) = l.get("name") {
                        rec.severity_number = severity::from_text(name)
                            .or(no.map(severity::from_levelno))
                            .unwrap_or(0);
                        rec.severity_text = Some(names.name(name));
                    } else if let Some(no) = no {
                        rec.severity_number = severity::from_levelno(no);
                    }
                }
                ("exception", AttrValue::Map(e)) => {
                    let stack = text
                        .as_deref()
                        .and_then(|t| find_traceback(t).map(|at| t[at..].trim_end().to_owned()));
                    rec.exception = Some(ExceptionInfo {
                        r#type: e.get("type").and_then(AttrValue::as_str).map(str::to_owned),
                        message: e
                            .get("value")
                            .and_then(AttrValue::as_str)
                            .map(str::to_owned),
                        stacktrace: stack,
                    });
                }
                ("extra", AttrValue::Map(extra)) => {
                    for (k, v) in extra {
                        let left = if is_trace_key(&k) && rec.trace_id.is_none() {
                            take_id(v, TraceId::from_hex, &mut rec.trace_id)
                        } else if is_span_key(&k) && rec.span_id.is_none() {
                            take_id(v, SpanId::from_hex, &mut rec.span_id)
                        } else {
                            Some(v)
                        };
                        if let Some(v) = left {
                            attrs.push((k, v));
                        }
                    }
                }
                ("file", AttrValue::Map(mut f)) => {
                    if let Some(p) = f.remove("path") {
                        attrs.push((Cow::Borrowed("code.filepath"), p));
                    }
                }
                ("function", v) => attrs.push((Cow::Borrowed("code.function"), v)),
                ("line", v) => attrs.push((Cow::Borrowed("code.lineno"), v)),
                ("process", AttrValue::Map(mut p)) => {
                    if let Some(id) = p.remove("id") {
                        attrs.push((Cow::Borrowed("process.pid"), id));
                    }
                }
                ("thread", AttrValue::Map(mut t)) => {
                    if let Some(id) = t.remove("id") {
                        attrs.push((Cow::Borrowed("thread.id"), id));
                    }
                    if let Some(name) = t.remove("name") {
                        attrs.push((Cow::Borrowed("thread.name"), name));
                    }
                }
                // `elapsed`, `module`, a null `exception` and the icon carry nothing the
                // record does not already have.
                _ => {}
            }
        }
        rec.attributes = Attributes::from_pairs(attrs);
        rec
    }

    fn timestamp_of(&self, v: &AttrValue) -> Option<u64> {
        timestamp_of(v, self.config.naive_utc_offset_secs)
    }
}

/// A timestamp written as a string, or as epoch seconds (or milli-, micro-, nanoseconds).
fn timestamp_of(v: &AttrValue, naive_utc_offset_secs: i32) -> Option<u64> {
    match v {
        AttrValue::String(s) => parse_timestamp(s, naive_utc_offset_secs),
        AttrValue::Int(i) => u64::try_from(*i).ok().map(epoch_int_to_nanos),
        AttrValue::Float(f) => epoch_float_to_nanos(*f),
        _ => None,
    }
}

/// A JSON record being mapped, one top-level field at a time, in the line's order: the first
/// field of each role that fits its slot fills it, every other field is an attribute.
struct JsonMapping<'a> {
    rec: LogRecord<'a>,
    naive_utc_offset_secs: i32,
    has_body: bool,
    levelno: Option<i64>,
    attrs: Vec<(Name, AttrValue<'a>)>,
}

impl<'a> JsonMapping<'a> {
    /// A mapping; [`Self::room`] before the first field.
    fn new(naive_utc_offset_secs: i32, observed: u64) -> Self {
        Self {
            rec: LogRecord::from_body("", observed),
            naive_utc_offset_secs,
            has_body: false,
            levelno: None,
            attrs: Vec::new(),
        }
    }

    /// Room for `fields` attributes (at most [`MAX_MAPPED_ROOM`] up front), before the first.
    fn room(&mut self, fields: usize) {
        if self.attrs.is_empty() {
            self.attrs = Vec::with_capacity(fields.min(MAX_MAPPED_ROOM));
        }
    }

    /// Maps one field. The role was decided once for the name (see `Names`), not by comparing
    /// the key with every name the mapping knows.
    #[inline]
    fn take(&mut self, names: &mut Names<'_>, name: Name, role: Role, value: Top<'a>) {
        let rec = &mut self.rec;
        let naive_utc_offset_secs = self.naive_utc_offset_secs;
        let consumed = match role {
            Role::Body if !self.has_body => match value {
                Top::Str(s) => {
                    rec.body = s;
                    self.has_body = true;
                    None
                }
                other => Some(other),
            },
            Role::Time if rec.timestamp_unix_nano.is_none() => {
                let ts = match &value {
                    Top::Str(s) => parse_timestamp_in(s, naive_utc_offset_secs, names.minute),
                    Top::Other(v) => timestamp_of(v, naive_utc_offset_secs),
                };
                match ts {
                    Some(ts) => {
                        rec.timestamp_unix_nano = Some(ts);
                        None
                    }
                    None => Some(value),
                }
            }
            Role::Level if rec.severity_text.is_none() => match value {
                Top::Str(s) => {
                    rec.severity_number = severity::from_text(&s).unwrap_or(0);
                    rec.severity_text = Some(match s {
                        Cow::Borrowed(s) => names.name(s),
                        Cow::Owned(s) => names.name_owned(s),
                    });
                    None
                }
                Top::Other(v @ (AttrValue::Int(_) | AttrValue::Float(_))) => match v.as_i64() {
                    Some(n) => {
                        self.levelno = Some(n);
                        None
                    }
                    None => Some(Top::Other(v)),
                },
                other => Some(other),
            },
            Role::LevelNo if self.levelno.is_none() => match &value {
                Top::Other(v) => match v.as_i64() {
                    Some(n) => {
                        self.levelno = Some(n);
                        None
                    }
                    None => Some(value),
                },
                Top::Str(_) => Some(value),
            },
            Role::Logger if rec.logger.is_none() => match value {
                Top::Str(s) => {
                    rec.logger = Some(match s {
                        Cow::Borrowed(s) => names.name(s),
                        Cow::Owned(s) => names.name_owned(s),
                    });
                    None
                }
                other => Some(other),
            },
            Role::Exception if rec.exception.is_none() => match value {
                Top::Other(AttrValue::Null) => None,
                Top::Str(s) if s.is_empty() => None,
                Top::Str(s) => {
                    rec.exception = Some(exception_from_traceback(s.into_owned()));
                    None
                }
                Top::Other(AttrValue::Array(frames)) => {
                    match exception_from_dict_tracebacks(&frames) {
                        Some(e) => {
                            rec.exception = Some(e);
                            None
                        }
                        None => Some(Top::Other(AttrValue::Array(frames))),
                    }
                }
                other => Some(other),
            },
            Role::TraceId if rec.trace_id.is_none() => {
                take_top_id(value, TraceId::from_hex, &mut rec.trace_id)
            }
            Role::SpanId if rec.span_id.is_none() => {
                take_top_id(value, SpanId::from_hex, &mut rec.span_id)
            }
            _ => Some(value),
        };
        if let Some(v) = consumed {
            self.attrs.push((name, v.into_value()));
        }
    }

    fn finish(self) -> LogRecord<'a> {
        let mut rec = self.rec;
        if let Some(n) = self.levelno
            && rec.severity_number == 0
        {
            rec.severity_number = severity::from_levelno(n);
        }
        rec.attributes = Attributes::from_pairs(self.attrs);
        rec
    }
}

fn is_trace_key(k: &str) -> bool {
    matches!(
        k,
        "otelTraceID" | "trace_id" | "traceId" | "traceid" | "trace.id"
    )
}

fn is_span_key(k: &str) -> bool {
    matches!(
        k,
        "otelSpanID" | "span_id" | "spanId" | "spanid" | "span.id"
    )
}

/// [`take_id`] for a top-level value.
fn take_top_id<'a, T>(
    value: Top<'a>,
    parse: fn(&str) -> Option<T>,
    slot: &mut Option<T>,
) -> Option<Top<'a>> {
    match value {
        Top::Str(s) => {
            if let Some(id) = parse(&s) {
                *slot = Some(id);
                None
            } else if !s.is_empty() && s.bytes().all(|b| b == b'0') {
                None
            } else {
                Some(Top::Str(s))
            }
        }
        Top::Other(v) => take_id(v, parse, slot).map(Top::Other),
    }
}

/// Sets `slot` from a hex id. All-zero ids (what OpenTelemetry's logging instrumentation writes
/// outside a span) are dropped; anything else unparseable is handed back to stay an attribute.
fn take_id<'a, T>(
    value: AttrValue<'a>,
    parse: fn(&str) -> Option<T>,
    slot: &mut Option<T>,
) -> Option<AttrValue<'a>> {
    match &value {
        AttrValue::String(s) => {
            if let Some(id) = parse(s) {
                *slot = Some(id);
                None
            } else if !s.is_empty() && s.bytes().all(|b| b == b'0') {
                None
            } else {
                Some(value)
            }
        }
        _ => Some(value),
    }
}

fn strip_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Decodes UTF-8, replacing invalid sequences; a sequence cut short by truncation at the very end
/// is dropped rather than replaced.
fn decode_utf8(bytes: &[u8], was_cut: bool) -> (Cow<'_, str>, bool) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (Cow::Borrowed(s), false),
        Err(e) if was_cut && e.error_len().is_none() => {
            let valid = &bytes[..e.valid_up_to()];
            match std::str::from_utf8(valid) {
                Ok(s) => (Cow::Borrowed(s), false),
                Err(_) => (String::from_utf8_lossy(valid), true),
            }
        }
        Err(_) => (String::from_utf8_lossy(bytes), true),
    }
}

// ---------------------------------------------------------------------------------------------
// JSON: a single pass with serde_json. Top-level keys and strings stay borrowed from the line
// until the mapping knows what it keeps; names (attribute keys, levels, loggers) are shared.

/// Most distinct names shared for the whole process; later new names are owned per record.
const MAX_NAMES: usize = 4096;
/// Longer names are owned per record (they are rarely names that repeat).
const MAX_NAME_BYTES: usize = 64;
/// Most names of one line remembered for matching the next line's.
const MAX_LINE_NAMES: usize = 256;
/// Most attributes a record mapped as read keeps room for up front.
const MAX_MAPPED_ROOM: usize = 32;

/// `sidelight_log_shared_names`: names in the process-wide table (see [`intern`]).
pub(crate) fn shared_names_gauge() -> &'static Gauge {
    static GAUGE: LazyLock<Gauge> = LazyLock::new(Gauge::default);
    &GAUGE
}

/// The process-wide copy of `s`, made on first sight; `None` when `s` is long or the table is
/// full (at most [`MAX_NAMES`] names of [`MAX_NAME_BYTES`], 256 KiB, live for the process; a
/// name first seen after that is copied into each record that has it, as every name was before
/// the table).
fn intern(s: &str) -> Option<&'static str> {
    static NAMES: LazyLock<Mutex<HashSet<&'static str>>> = LazyLock::new(Mutex::default);
    if s.len() > MAX_NAME_BYTES {
        return None;
    }
    let mut names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(&shared) = names.get(s) {
        return Some(shared);
    }
    if names.len() >= MAX_NAMES {
        return None;
    }
    let shared: &'static str = Box::leak(Box::from(s));
    names.insert(shared);
    shared_names_gauge().set(names.len() as i64);
    Some(shared)
}

/// The names of the line being parsed, in the order they are met, matched against the previous
/// line's at the same position: lines of one source mostly repeat their keys in the same order,
/// so a name is found with one comparison, without hashing or locking.
/// Each remembered name carries its [`Role`], so a top-level key found this way is mapped
/// without comparing it with the names the mapping knows.
struct Names<'a> {
    prev: &'a mut Vec<(&'static str, Role)>,
    at: usize,
    /// The last timestamp's minute (see [`scan_timestamp_in`]).
    minute: &'a mut Option<Minute>,
}

impl Names<'_> {
    fn name(&mut self, s: &str) -> Name {
        self.named(s).0
    }

    fn name_owned(&mut self, s: String) -> Name {
        self.named_owned(s).0
    }

    /// The name and its role.
    fn named(&mut self, s: &str) -> (Name, Role) {
        match self.shared(s) {
            Some((shared, role)) => (Cow::Borrowed(shared), role),
            None => (Cow::Owned(s.to_owned()), role_of(s)),
        }
    }

    fn named_owned(&mut self, s: String) -> (Name, Role) {
        match self.shared(&s) {
            Some((shared, role)) => (Cow::Borrowed(shared), role),
            None => {
                let role = role_of(&s);
                (Cow::Owned(s), role)
            }
        }
    }

    fn name_cow(&mut self, s: Cow<'_, str>) -> Name {
        match s {
            Cow::Borrowed(s) => self.name(s),
            Cow::Owned(s) => self.name_owned(s),
        }
    }

    fn shared(&mut self, s: &str) -> Option<(&'static str, Role)> {
        let at = self.at;
        self.at += 1;
        if let Some(&(p, role)) = self.prev.get(at)
            && same_name(p, s)
        {
            return Some((p, role));
        }
        let shared = intern(s)?;
        let entry = (shared, role_of(shared));
        if let Some(slot) = self.prev.get_mut(at) {
            *slot = entry;
        } else if at == self.prev.len() && at < MAX_LINE_NAMES {
            self.prev.push(entry);
        }
        Some(entry)
    }
}

/// `a == b`, without a call to `memcmp` for names of 4 to 16 bytes (most keys): two
/// overlapping words of four or eight bytes.
#[inline(always)]
fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word8 = |s: &[u8], at: usize| {
        s.get(at..at + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map(u64::from_ne_bytes)
    };
    let word4 = |s: &[u8], at: usize| {
        s.get(at..at + 4)
            .and_then(|w| <[u8; 4]>::try_from(w).ok())
            .map(u32::from_ne_bytes)
    };
    match n {
        4..=7 => word4(a, 0) == word4(b, 0) && word4(a, n - 4) == word4(b, n - 4),
        8..=16 => word8(a, 0) == word8(b, 0) && word8(a, n - 8) == word8(b, n - 8),
        _ => a == b,
    }
}

/// What the JSON mapping does with a top-level field of this name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Body,
    Time,
    Level,
    LevelNo,
    Logger,
    Exception,
    TraceId,
    SpanId,
    /// loguru's rendered `text`.
    Text,
    /// loguru's `record`.
    Record,
    /// Anything else: an attribute.
    Other,
}

fn role_of(k: &str) -> Role {
    match k {
        "message" | "event" | "msg" => Role::Body,
        "timestamp" | "asctime" | "time" | "@timestamp" | "ts" | "created" => Role::Time,
        "levelname" | "level" | "severity" | "loglevel" | "log.level" => Role::Level,
        "levelno" => Role::LevelNo,
        "name" | "logger" | "logger_name" => Role::Logger,
        "exc_info" | "exception" | "exc_text" => Role::Exception,
        "text" => Role::Text,
        "record" => Role::Record,
        k if is_trace_key(k) => Role::TraceId,
        k if is_span_key(k) => Role::SpanId,
        _ => Role::Other,
    }
}

/// A top-level field: its name (shared through [`Names`]), the name's role, the value.
struct Field<'a> {
    name: Name,
    role: Role,
    value: Top<'a>,
}

/// A top-level key: its name and role, through [`Names`].
struct KeySeed<'n, 'p> {
    names: &'n mut Names<'p>,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_, '_> {
    type Value = (Name, Role);
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(Name, Role), D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_, '_> {
    type Value = (Name, Role);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(Name, Role), E> {
        Ok(self.names.named(v))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<(Name, Role), E> {
        Ok(self.names.named_owned(v))
    }
}

/// A top-level value: a string stays borrowed from the line (when it has no escapes) until the
/// mapping decides whether the record keeps it.
enum Top<'a> {
    Str(Cow<'a, str>),
    Other(AttrValue<'a>),
}

impl<'a> Top<'a> {
    fn into_value(self) -> AttrValue<'a> {
        match self {
            Top::Str(s) => AttrValue::String(s),
            Top::Other(v) => v,
        }
    }

    fn as_map(&self) -> Option<&Attributes<'a>> {
        match self {
            Top::Other(v) => v.as_map(),
            Top::Str(_) => None,
        }
    }
}

/// What reading a JSON object line gave.
enum Read<'a> {
    /// Its fields were mapped as they were read (into the mapping [`read_json`] was given).
    Mapped,
    /// The top-level fields, in order, for [`Parser::json_record`].
    Fields(Vec<Field<'a>>),
    /// loguru's shape (`text` and a `record` map) met after other fields were mapped: the line
    /// is to be read again as fields.
    Loguru,
}

/// Reads a JSON object line. With a `mapping`, its fields are mapped into it as they are read,
/// unless the first is loguru's `text` or `record`; without, the fields come back as they are.
fn read_json<'de>(
    text: &'de str,
    names: &mut Names<'_>,
    mapping: Option<&mut JsonMapping<'de>>,
) -> Result<Read<'de>, ParseError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let read = match de.deserialize_any(TopLevel { names, mapping }) {
        Ok(Some(read)) => read,
        Ok(None) => return Err(ParseError::NotAnObject),
        Err(e) => return Err(ParseError::InvalidJson(e)),
    };
    de.end()?;
    Ok(read)
}

struct TopLevel<'n, 'p, 'm, 'de> {
    names: &'n mut Names<'p>,
    mapping: Option<&'m mut JsonMapping<'de>>,
}

impl<'de> Visitor<'de> for TopLevel<'_, '_, '_, 'de> {
    type Value = Option<Read<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let first = map.next_key_seed(KeySeed {
            names: &mut *self.names,
        })?;
        if let (Some(mapping), Some((_, role))) = (self.mapping, &first)
            && !matches!(role, Role::Text | Role::Record)
        {
            // Room for as many attributes as the previous line had names.
            mapping.room(self.names.prev.len());
            let (mut seen_text, mut seen_record_map) = (false, false);
            let mut next = first;
            while let Some((name, role)) = next {
                if (role == Role::Text && seen_record_map) || (role == Role::Record && seen_text) {
                    // loguru's shape after all: the fields mapped so far would map otherwise.
                    map.next_value::<de::IgnoredAny>()?;
                    while map
                        .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
                        .is_some()
                    {}
                    return Ok(Some(Read::Loguru));
                }
                let value = map.next_value_seed(TopSeed {
                    names: &mut *self.names,
                })?;
                seen_text |= role == Role::Text;
                seen_record_map |= role == Role::Record && value.as_map().is_some();
                mapping.take(self.names, name, role, value);
                next = map.next_key_seed(KeySeed {
                    names: &mut *self.names,
                })?;
            }
            return Ok(Some(Read::Mapped));
        }
        // Room for the fields of most records without growing.
        let mut out = Vec::with_capacity(map.size_hint().unwrap_or(16));
        let mut seen_text = false;
        let mut seen_record = false;
        let mut next = first;
        while let Some((name, role)) = next {
            // loguru writes `text` before `record`: the first `record` after a `text` is, when
            // it is a map, the record `Parser::loguru_record` reads.
            let value = if seen_text && !seen_record && role == Role::Record {
                seen_record = true;
                map.next_value_seed(LoguruRecordSeed {
                    names: &mut *self.names,
                })?
            } else {
                seen_record |= role == Role::Record;
                map.next_value_seed(TopSeed {
                    names: &mut *self.names,
                })?
            };
            seen_text |= role == Role::Text;
            out.push(Field { name, role, value });
            next = map.next_key_seed(KeySeed {
                names: &mut *self.names,
            })?;
        }
        Ok(Some(Read::Fields(out)))
    }

    // Any other JSON value is valid JSON but not a record.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

/// A top-level value: strings as [`Top::Str`], anything else through [`ValueSeed`].
struct TopSeed<'n, 'p> {
    names: &'n mut Names<'p>,
}

impl<'de> DeserializeSeed<'de> for TopSeed<'_, '_> {
    type Value = Top<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Top<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_, '_> {
    type Value = Top<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Top<'de>, E> {
        Ok(Top::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Top<'de>, E> {
        Ok(Top::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Top<'de>, E> {
        Ok(Top::Str(Cow::Owned(v)))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Top<'de>, E> {
        Ok(Top::Other(AttrValue::Bool(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Top<'de>, E> {
        Ok(Top::Other(AttrValue::Int(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Top<'de>, E> {
        ValueSeed { names: self.names }.visit_u64(v).map(Top::Other)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Top<'de>, E> {
        Ok(Top::Other(AttrValue::Float(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Top<'de>, E> {
        Ok(Top::Other(AttrValue::Null))
    }
    fn visit_none<E: de::Error>(self) -> Result<Top<'de>, E> {
        Ok(Top::Other(AttrValue::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Top<'de>, A::Error> {
        ValueSeed { names: self.names }
            .visit_seq(seq)
            .map(Top::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Top<'de>, A::Error> {
        ValueSeed { names: self.names }
            .visit_map(map)
            .map(Top::Other)
    }
}

/// A nested value, its map keys shared through [`Names`].
struct ValueSeed<'n, 'p> {
    names: &'n mut Names<'p>,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_, '_> {
    type Value = AttrValue<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<AttrValue<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_, '_> {
    type Value = AttrValue<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<AttrValue<'de>, E> {
        Ok(AttrValue::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<AttrValue<'de>, E> {
        Ok(AttrValue::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<AttrValue<'de>, E> {
        Ok(match i64::try_from(v) {
            Ok(i) => AttrValue::Int(i),
            Err(_) => AttrValue::Float(v as f64),
        })
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<AttrValue<'de>, E> {
        Ok(AttrValue::Float(v))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<AttrValue<'de>, E> {
        Ok(AttrValue::String(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<AttrValue<'de>, E> {
        Ok(AttrValue::String(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<AttrValue<'de>, E> {
        Ok(AttrValue::String(Cow::Owned(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<AttrValue<'de>, E> {
        Ok(AttrValue::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<AttrValue<'de>, E> {
        Ok(AttrValue::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<AttrValue<'de>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(v) = seq.next_element_seed(ValueSeed {
            names: &mut *self.names,
        })? {
            out.push(v);
        }
        Ok(AttrValue::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AttrValue<'de>, A::Error> {
        let mut out = Vec::with_capacity(map.size_hint().unwrap_or(4));
        while let Some(k) = map.next_key_seed(NameSeed {
            names: &mut *self.names,
        })? {
            let v = map.next_value_seed(ValueSeed {
                names: &mut *self.names,
            })?;
            out.push((k, v));
        }
        Ok(AttrValue::Map(Attributes::from_pairs(out)))
    }
}

/// What [`Parser::loguru_record`] reads of a field of loguru's `record` map.
fn loguru_reads(key: &str) -> Option<&'static [&'static str]> {
    const ALL: &[&str] = &[];
    match key {
        "message" | "name" | "extra" | "function" | "line" => Some(ALL),
        "time" => Some(&["repr", "timestamp"]),
        "level" => Some(&["name", "no"]),
        "exception" => Some(&["type", "value"]),
        "file" => Some(&["path"]),
        "process" => Some(&["id"]),
        "thread" => Some(&["id", "name"]),
        _ => None,
    }
}

/// loguru's `record` map: the fields its mapping reads are parsed; the others (`elapsed`,
/// `module`, a level's icon, …) are checked as JSON but kept as nulls, so the map keeps its
/// keys, order and duplicates and maps exactly as if parsed whole. Anything but a map is
/// parsed as [`TopSeed`] does.
struct LoguruRecordSeed<'n, 'p> {
    names: &'n mut Names<'p>,
}

impl<'de> DeserializeSeed<'de> for LoguruRecordSeed<'_, '_> {
    type Value = Top<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Top<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for LoguruRecordSeed<'_, '_> {
    type Value = Top<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Top<'de>, E> {
        TopSeed { names: self.names }.visit_borrowed_str(v)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Top<'de>, E> {
        TopSeed { names: self.names }.visit_str(v)
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Top<'de>, E> {
        TopSeed { names: self.names }.visit_string(v)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Top<'de>, E> {
        TopSeed { names: self.names }.visit_bool(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Top<'de>, E> {
        TopSeed { names: self.names }.visit_i64(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Top<'de>, E> {
        TopSeed { names: self.names }.visit_u64(v)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Top<'de>, E> {
        TopSeed { names: self.names }.visit_f64(v)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Top<'de>, E> {
        TopSeed { names: self.names }.visit_unit()
    }
    fn visit_none<E: de::Error>(self) -> Result<Top<'de>, E> {
        TopSeed { names: self.names }.visit_none()
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Top<'de>, A::Error> {
        TopSeed { names: self.names }.visit_seq(seq)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top<'de>, A::Error> {
        let mut out = Vec::with_capacity(16);
        while let Some(k) = map.next_key_seed(NameSeed {
            names: &mut *self.names,
        })? {
            let v = match loguru_reads(&k) {
                Some([]) => map.next_value_seed(ValueSeed {
                    names: &mut *self.names,
                })?,
                Some(fields) => map.next_value_seed(PickSeed {
                    names: &mut *self.names,
                    fields,
                })?,
                None => {
                    map.next_value::<Skip>()?;
                    AttrValue::Null
                }
            };
            out.push((k, v));
        }
        Ok(Top::Other(AttrValue::Map(Attributes::from_pairs(out))))
    }
}

/// A value of which, when it is a map, only `fields` are parsed; the other fields are checked
/// and kept as nulls (see [`LoguruRecordSeed`]).
struct PickSeed<'n, 'p> {
    names: &'n mut Names<'p>,
    fields: &'static [&'static str],
}

impl<'de> DeserializeSeed<'de> for PickSeed<'_, '_> {
    type Value = AttrValue<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<AttrValue<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PickSeed<'_, '_> {
    type Value = AttrValue<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<AttrValue<'de>, E> {
        ValueSeed { names: self.names }.visit_borrowed_str(v)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<AttrValue<'de>, E> {
        ValueSeed { names: self.names }.visit_str(v)
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<AttrValue<'de>, E> {
        ValueSeed { names: self.names }.visit_string(v)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<AttrValue<'de>, E> {
        ValueSeed { names: self.names }.visit_bool(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<AttrValue<'de>, E> {
        ValueSeed { names: self.names }.visit_i64(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<AttrValue<'de>, E> {
        ValueSeed { names: self.names }.visit_u64(v)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<AttrValue<'de>, E> {
        ValueSeed { names: self.names }.visit_f64(v)
    }
    fn visit_unit<E: de::Error>(self) -> Result<AttrValue<'de>, E> {
        ValueSeed { names: self.names }.visit_unit()
    }
    fn visit_none<E: de::Error>(self) -> Result<AttrValue<'de>, E> {
        ValueSeed { names: self.names }.visit_none()
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<AttrValue<'de>, A::Error> {
        ValueSeed { names: self.names }.visit_seq(seq)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AttrValue<'de>, A::Error> {
        let mut out = Vec::with_capacity(4);
        while let Some(k) = map.next_key_seed(NameSeed {
            names: &mut *self.names,
        })? {
            let v = if self.fields.contains(&k.as_ref()) {
                map.next_value_seed(ValueSeed {
                    names: &mut *self.names,
                })?
            } else {
                map.next_value::<Skip>()?;
                AttrValue::Null
            };
            out.push((k, v));
        }
        Ok(AttrValue::Map(Attributes::from_pairs(out)))
    }
}

/// Reads any JSON value as [`ValueSeed`] would (strings decoded, numbers read) and keeps
/// nothing: a skipped field accepts and rejects exactly the input a parsed one does.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Skip, D::Error> {
        d.deserialize_any(Skip)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = Skip;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_none<E: de::Error>(self) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_key::<Skip>()?.is_some() {
            map.next_value::<Skip>()?;
        }
        Ok(Skip)
    }
}

/// A nested map's key, shared through [`Names`].
struct NameSeed<'n, 'p> {
    names: &'n mut Names<'p>,
}

impl<'de> DeserializeSeed<'de> for NameSeed<'_, '_> {
    type Value = Name;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Name, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for NameSeed<'_, '_> {
    type Value = Name;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Name, E> {
        Ok(self.names.name(v))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Name, E> {
        Ok(self.names.name_owned(v))
    }
}

// ---------------------------------------------------------------------------------------------
// Exceptions.

const TRACEBACK_HEADER: &str = "Traceback (most recent call last):";
const GROUP_HEADER: &str = "+ Exception Group Traceback (most recent call last):";
const BANNER_CONTEXT: &str = "During handling of the above exception, another exception occurred:";
const BANNER_CAUSE: &str = "The above exception was the direct cause of the following exception:";

/// Byte offset of the first line that starts a Python traceback, if any.
fn find_traceback(text: &str) -> Option<usize> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_end();
        if trimmed == TRACEBACK_HEADER || trimmed.trim_start() == GROUP_HEADER {
            return Some(offset);
        }
        offset += line.len();
    }
    None
}

/// Reads a Python traceback: the exception is the one on the line after the *last* traceback's
/// frames (`Type: message`, message lines that follow included), so in a chain it is the final
/// exception; the stack keeps the whole text.
pub fn exception_from_traceback(stack: String) -> ExceptionInfo {
    let (r#type, message) = split_final_exception(&stack);
    ExceptionInfo {
        r#type,
        message,
        stacktrace: Some(stack),
    }
}

fn split_final_exception(text: &str) -> (Option<String>, Option<String>) {
    let mut start = None;
    let mut group = false;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_end();
        if trimmed == TRACEBACK_HEADER || trimmed.trim_start() == GROUP_HEADER {
            start = Some(offset + line.len());
            group = trimmed != TRACEBACK_HEADER;
        }
        offset += line.len();
    }
    let Some(start) = start else {
        return (None, None);
    };
    if group {
        // The group's own line is the first line of its box (`  | `) that is not a frame.
        let line = text[start..]
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("| "))
            .find(|l| !l.starts_with([' ', '\t']));
        return match line.map(split_type) {
            Some((ty, msg)) => (ty.map(str::to_owned), msg.map(str::to_owned)),
            None => (None, None),
        };
    }
    let mut lines = text[start..]
        .lines()
        .skip_while(|l| l.trim().is_empty() || l.starts_with([' ', '\t']) || l.starts_with("> "));
    let Some(first) = lines.next() else {
        return (None, None);
    };
    let rest: Vec<&str> = lines.collect();
    let rest = rest.join("\n");
    let rest = rest.trim_end();
    let (ty, msg) = split_type(first);
    let message = match (msg, rest.is_empty()) {
        (Some(m), true) => Some(m.to_owned()),
        (Some(m), false) => Some(format!("{m}\n{rest}")),
        (None, true) => None,
        (None, false) => Some(rest.to_owned()),
    };
    (ty.map(str::to_owned), message)
}

/// Splits `Type: message` (or a bare `Type`); a line that does not start with a type name is all
/// message.
fn split_type(line: &str) -> (Option<&str>, Option<&str>) {
    match line.split_once(": ") {
        Some((ty, msg)) if is_exception_type(ty) => (Some(ty), Some(msg)),
        _ if is_exception_type(line.trim_end_matches(':')) => {
            (Some(line.trim_end_matches(':')), None)
        }
        _ => (None, Some(line)),
    }
}

fn is_exception_type(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && s.chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '.')
}

/// Reads structlog's `dict_tracebacks` list (outermost exception first, each followed by its
/// cause or context): the record's exception is the first, the stack is rendered as Python
/// would print it (oldest first, with the chaining banners). Frame locals are left out.
fn exception_from_dict_tracebacks(list: &[AttrValue]) -> Option<ExceptionInfo> {
    let first = list.first()?.as_map()?;
    let str_of = |m: &Attributes, k: &str| m.get(k).and_then(AttrValue::as_str).map(str::to_owned);
    let r#type = str_of(first, "exc_type");
    r#type.as_ref()?;
    let message = str_of(first, "exc_value");
    let mut stack = String::new();
    let maps: Vec<&Attributes> = list.iter().filter_map(AttrValue::as_map).collect();
    for (i, exc) in maps.iter().enumerate().rev() {
        stack.push_str(TRACEBACK_HEADER);
        stack.push('\n');
        if let Some(AttrValue::Array(frames)) = exc.get("frames") {
            for frame in frames.iter().filter_map(AttrValue::as_map) {
                let file = frame
                    .get("filename")
                    .and_then(AttrValue::as_str)
                    .unwrap_or("?");
                let name = frame.get("name").and_then(AttrValue::as_str).unwrap_or("?");
                let line = frame.get("lineno").and_then(AttrValue::as_i64).unwrap_or(0);
                stack.push_str(&format!("  File \"{file}\", line {line}, in {name}\n"));
            }
        }
        let ty = exc
            .get("exc_type")
            .and_then(AttrValue::as_str)
            .unwrap_or("?");
        match exc.get("exc_value").and_then(AttrValue::as_str) {
            Some(v) if !v.is_empty() => stack.push_str(&format!("{ty}: {v}")),
            _ => stack.push_str(ty),
        }
        if i > 0 {
            let is_cause = matches!(exc.get("is_cause"), Some(AttrValue::Bool(true)));
            let banner = if is_cause {
                BANNER_CAUSE
            } else {
                BANNER_CONTEXT
            };
            stack.push_str("\n\n");
            stack.push_str(banner);
            stack.push_str("\n\n");
        }
    }
    Some(ExceptionInfo {
        r#type,
        message,
        stacktrace: Some(stack),
    })
}

// ---------------------------------------------------------------------------------------------
// Timestamps.

/// Parses a whole timestamp: ISO-8601 / RFC 3339 (`T` or space, `.` or `,` before the fraction,
/// `Z`, `±HH:MM`, `±HHMM`, `±HH` or no zone — then `naive_utc_offset_secs` applies), Python's
/// `asctime` (`2024-05-01 12:00:00,123`), or epoch seconds / millis / micros / nanos as digits.
pub fn parse_timestamp(s: &str, naive_utc_offset_secs: i32) -> Option<u64> {
    parse_timestamp_in(s, naive_utc_offset_secs, &mut None)
}

/// [`parse_timestamp`], through a remembered minute (see [`scan_timestamp_in`]).
fn parse_timestamp_in(
    s: &str,
    naive_utc_offset_secs: i32,
    minute: &mut Option<Minute>,
) -> Option<u64> {
    let s = s.trim();
    if let Some((ts, used)) = scan_timestamp_in(s, naive_utc_offset_secs, minute)
        && used == s.len()
    {
        return Some(ts);
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<u64>().ok().map(epoch_int_to_nanos);
    }
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return s.parse::<f64>().ok().and_then(epoch_float_to_nanos);
    }
    None
}

/// Epoch integer in seconds, millis, micros or nanos, told apart by magnitude.
fn epoch_int_to_nanos(v: u64) -> u64 {
    if v < 100_000_000_000 {
        v.saturating_mul(1_000_000_000)
    } else if v < 100_000_000_000_000 {
        v.saturating_mul(1_000_000)
    } else if v < 100_000_000_000_000_000 {
        v.saturating_mul(1_000)
    } else {
        v
    }
}

fn epoch_float_to_nanos(v: f64) -> Option<u64> {
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    let scale = if v < 1e11 {
        1e9
    } else if v < 1e14 {
        1e6
    } else if v < 1e17 {
        1e3
    } else {
        1.0
    };
    let nanos = (v * scale).round();
    (nanos < u64::MAX as f64).then_some(nanos as u64)
}

/// A timestamp's first 16 bytes (`YYYY-MM-DD HH:MM`) and the unix seconds they name (before any
/// zone offset): consecutive lines mostly share their minute, which is then not read again.
#[derive(Debug, Clone, Copy)]
struct Minute {
    head: [u8; 16],
    secs: i64,
}

/// Reads a timestamp at the start of `s`; returns unix nanos and how many bytes it used. The
/// date, hour and minute are taken from `minute` when `s` starts with the same 16 bytes as the
/// last timestamp read through it (and remembered there when it does not).
fn scan_timestamp_in(
    s: &str,
    naive_utc_offset_secs: i32,
    minute: &mut Option<Minute>,
) -> Option<(u64, usize)> {
    let b = s.as_bytes();
    let head = b.get(..16).and_then(|h| <[u8; 16]>::try_from(h).ok());
    let minute_secs = match (head, minute.as_ref()) {
        (Some(h), Some(m)) if h == m.head => m.secs,
        _ => {
            let secs = scan_minute(b)?;
            if let Some(head) = head {
                *minute = Some(Minute { head, secs });
            }
            secs
        }
    };
    let num = |at: usize, len: usize| decimal(b, at, len);
    let mut at = 16;
    let mut second = 0;
    if b.get(at) == Some(&b':') {
        second = num(17, 2)?;
        at = 19;
    }
    if second > 60 {
        return None;
    }
    let mut nanos = 0i64;
    if matches!(b.get(at), Some(b'.' | b',')) && b.get(at + 1).is_some_and(u8::is_ascii_digit) {
        at += 1;
        let mut scale = 100_000_000i64;
        while let Some(d) = b.get(at).filter(|d| d.is_ascii_digit()) {
            nanos += i64::from(d - b'0') * scale;
            scale /= 10;
            at += 1;
        }
    }
    let offset = match b.get(at) {
        Some(b'Z' | b'z') => {
            at += 1;
            0
        }
        Some(&sign @ (b'+' | b'-')) if b.get(at + 1).is_some_and(u8::is_ascii_digit) => {
            let oh = num(at + 1, 2)?;
            at += 3;
            let mut om = 0;
            if b.get(at) == Some(&b':') {
                om = num(at + 1, 2)?;
                at += 3;
            } else if let Some(m) = num(at, 2) {
                om = m;
                at += 2;
            }
            let off = oh * 3600 + om * 60;
            if sign == b'-' { -off } else { off }
        }
        _ => i64::from(naive_utc_offset_secs),
    };
    let secs = minute_secs + second - offset;
    let total = i128::from(secs) * 1_000_000_000 + i128::from(nanos);
    let total = u64::try_from(total).ok()?;
    Some((total, at))
}

/// The `len` ASCII digits at `b[at..]` as a number; `None` when one is missing or not a digit.
fn decimal(b: &[u8], at: usize, len: usize) -> Option<i64> {
    let mut v = 0i64;
    for &d in b.get(at..at + len)? {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i64::from(d - b'0');
    }
    Some(v)
}

/// `YYYY-MM-DD[T ]HH:MM` at the start of `b`, as unix seconds (before any zone offset).
fn scan_minute(b: &[u8]) -> Option<i64> {
    let num = |at: usize, len: usize| decimal(b, at, len);
    let year = num(0, 4)?;
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let month = num(5, 2)?;
    let day = num(8, 2)?;
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    let hour = num(11, 2)?;
    if b.get(13) != Some(&b':') {
        return None;
    }
    let minute = num(14, 2)?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    // A day past the month's end (`02-30`) rolls into the next month, as it always has.
    Some(month_start(year, month)? + (day - 1) * 86_400 + hour * 3600 + minute * 60)
}

/// Unix seconds of the first of `month` (1–12) in `year` (0–9999), UTC. Called once per
/// minute of timestamps (the minute is remembered), so jiff's checked arithmetic costs nothing
/// a user could see.
fn month_start(year: i64, month: i64) -> Option<i64> {
    let date =
        jiff::civil::Date::new(i16::try_from(year).ok()?, i8::try_from(month).ok()?, 1).ok()?;
    let at = jiff::tz::Offset::UTC
        .to_timestamp(date.to_datetime(jiff::civil::Time::midnight()))
        .ok()?;
    Some(at.as_second())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PJL: &str = include_str!("../../tests/fixtures/logs/python_json_logger.jsonl");
    const STRUCTLOG: &str = include_str!("../../tests/fixtures/logs/structlog.jsonl");
    const LOGURU: &str = include_str!("../../tests/fixtures/logs/loguru.jsonl");
    const TEXT: &str = include_str!("../../tests/fixtures/logs/text_traceback.log");
    const GROUP: &str = include_str!("../../tests/fixtures/logs/text_exception_group.log");

    /// 2026-11-22T02:36:14Z, the second the fixtures were generated in.
    const T0: u64 = 1_795_314_974_000_000_000;
    const OBSERVED: u64 = 42;

    fn parse(line: &str) -> Parsed<'_> {
        Parser::default().parse(line.as_bytes(), OBSERVED)
    }

    fn line(fixture: &str, n: usize) -> &str {
        fixture.lines().nth(n).expect("fixture line")
    }

    /// What a test expects of a record; `None` fields are not checked.
    #[derive(Default)]
    struct Want {
        ts: Option<u64>,
        sev: Option<(u8, &'static str)>,
        logger: Option<&'static str>,
        body: Option<&'static str>,
        exc: Option<(&'static str, &'static str)>,
        stack_has: &'static [&'static str],
        trace: Option<(&'static str, &'static str)>,
        attrs: &'static [&'static str],
    }

    fn check(p: &Parsed, want: &Want, what: &str) {
        let r = &p.record;
        assert!(p.error.is_none(), "{what}: {:?}", p.error);
        assert_eq!(r.observed_unix_nano, OBSERVED);
        if let Some(ts) = want.ts {
            assert_eq!(r.timestamp_unix_nano, Some(ts), "{what}: timestamp");
        }
        if let Some((n, text)) = want.sev {
            assert_eq!(r.severity_number, n, "{what}: severity");
            assert_eq!(r.severity_text.as_deref(), Some(text), "{what}");
        }
        if let Some(logger) = want.logger {
            assert_eq!(r.logger.as_deref(), Some(logger), "{what}");
        }
        if let Some(body) = want.body {
            assert_eq!(r.body, body, "{what}");
        }
        match want.exc {
            Some((ty, msg)) => {
                let e = r.exception.as_ref().expect("exception");
                assert_eq!(e.r#type.as_deref(), Some(ty), "{what}");
                assert_eq!(e.message.as_deref(), Some(msg), "{what}");
                let stack = e.stacktrace.as_deref().expect("stack");
                assert!(stack.starts_with(TRACEBACK_HEADER), "{what}: {stack}");
                for needle in want.stack_has {
                    assert!(stack.contains(needle), "{what}: {needle:?} not in {stack}");
                }
            }
            None => assert_eq!(r.exception, None, "{what}"),
        }
        match want.trace {
            Some((t, s)) => {
                assert_eq!(
                    r.trace_id.map(|t| t.to_string()).as_deref(),
                    Some(t),
                    "{what}"
                );
                assert_eq!(
                    r.span_id.map(|s| s.to_string()).as_deref(),
                    Some(s),
                    "{what}"
                );
            }
            None => assert_eq!((r.trace_id, r.span_id), (None, None), "{what}"),
        }
        let keys: Vec<&str> = r.attributes.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, want.attrs, "{what}: attributes");
    }

    #[test]
    fn python_json_logger_lines() {
        let wants = [
            Want {
                ts: Some(T0 + 20_000_000),
                sev: Some((9, "INFO")),
                logger: Some("app.web"),
                body: Some("user logged in"),
                trace: Some(("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")),
                attrs: &["user_id", "otelServiceName", "otelTraceSampled"],
                ..Want::default()
            },
            Want {
                sev: Some((13, "WARNING")),
                body: Some("disk almost full: 93%"),
                ..Want::default()
            },
            Want {
                sev: Some((17, "ERROR")),
                body: Some("lookup failed"),
                exc: Some(("KeyError", "'missing'")),
                stack_has: &["line 16, in fail", "~~^^^^^^^^^^^"],
                ..Want::default()
            },
            Want {
                body: Some("chained"),
                exc: Some(("ValueError", "bad ratio")),
                stack_has: &["ZeroDivisionError: division by zero", BANNER_CAUSE],
                ..Want::default()
            },
            Want {
                ts: Some(T0 + 21_187_000),
                sev: Some((5, "DEBUG")),
                body: Some("with timestamp"),
                trace: Some(("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")),
                attrs: &["nested"],
                ..Want::default()
            },
            Want {
                sev: Some((21, "CRITICAL")),
                body: Some("password for bob@example.com is in Authorization: Bearer abc.def.ghi"),
                ..Want::default()
            },
        ];
        assert_eq!(PJL.lines().count(), wants.len());
        for (i, want) in wants.iter().enumerate() {
            check(
                &parse(line(PJL, i)),
                want,
                &format!("python-json-logger line {i}"),
            );
        }
        let first = parse(line(PJL, 0)).record;
        assert_eq!(first.attributes.get("user_id"), Some(&AttrValue::Int(42)));
        assert_eq!(
            first.attributes.get("otelTraceSampled"),
            Some(&AttrValue::Bool(true))
        );
        let nested = parse(line(PJL, 4)).record;
        let want = AttrValue::Array(vec![
            AttrValue::Int(1),
            AttrValue::Float(2.5),
            AttrValue::Null,
            AttrValue::String("x".into()),
        ]);
        let got = nested.attributes.get("nested").and_then(AttrValue::as_map);
        assert_eq!(got.and_then(|m| m.get("a")), Some(&want));
    }

    /// A loguru line whose `record` comes after `text` has the fields its mapping ignores
    /// skipped; with `record` first it is parsed whole. Both must give the same record.
    #[test]
    fn loguru_record_read_in_part_maps_as_read_whole() {
        let records = [
            LOGURU.lines().map(str::to_owned).collect::<Vec<_>>(),
            vec![
                r#"{"record": {"message": "m", "elapsed": {"repr": "\ud83d\ude00", "s": [1, {"a": null}]}, "module": 1e300, "level": {"icon": "x", "name": "INFO", "no": 20, "name": "WARNING"}, "file": {"name": "a", "path": "/p", "path": "/q"}, "process": {"id": 1, "name": "P"}, "thread": {"id": 2, "name": "T", "other": [1]}, "time": {"repr": "bad", "timestamp": 1795314974.5, "x": 1}, "exception": {"type": "E", "value": "v", "traceback": true}, "extra": {"k": "v"}, "function": {"nested": "kept"}, "line": "7", "message": "second"}}"#.to_owned(),
                r#"{"record": {}, "record": {"message": "second record map"}}"#.to_owned(),
                r#"{"record": "not a map", "other": 1}"#.to_owned(),
                r#"{"record": {"message": "m", "elapsed": {"bad": "\ud800"}}}"#.to_owned(),
                r#"{"record": {"message": "m", "file": "not a map", "level": ["x"], "process": 5}}"#.to_owned(),
            ],
        ]
        .concat();
        for rest in records {
            let Some(rest) = rest.strip_prefix('{') else {
                continue;
            };
            // Every line with `text` first (the shape loguru writes) and with `text` last.
            let split = rest
                .starts_with(r#""text""#)
                .then(|| rest.find(r#", "record""#))
                .flatten();
            let (text_first, text_last) = if let Some(at) = split {
                let text = &rest[..at];
                let after = &rest[at + 2..];
                (
                    format!("{{{rest}"),
                    format!("{{{}, {text}}}", after.strip_suffix('}').unwrap_or(after)),
                )
            } else {
                let body = rest.strip_suffix('}').unwrap_or(rest);
                (
                    format!(r#"{{"text": "t", {body}}}"#),
                    format!(r#"{{{body}, "text": "t"}}"#),
                )
            };
            let part = parse(&text_first);
            let whole = parse(&text_last);
            // A line that is no JSON record is kept as text: its body is the line itself.
            assert_eq!(part.error.is_some(), whole.error.is_some(), "{text_first}");
            // Outside loguru's shape `text` is an attribute, in its place in the line.
            let sorted = |r: &LogRecord<'_>| {
                let mut r = r.clone().into_owned();
                let mut attrs: Vec<_> = std::mem::take(&mut r.attributes).into_iter().collect();
                attrs.sort_by(|a, b| a.0.cmp(&b.0));
                r.attributes = attrs.into_iter().collect();
                r
            };
            if part.error.is_none() {
                assert_eq!(
                    sorted(&part.record),
                    sorted(&whole.record),
                    "{text_first}\n{text_last}"
                );
            }
        }
    }

    #[test]
    fn structlog_lines() {
        let wants = [
            Want {
                ts: Some(T0 + 21_532_000),
                sev: Some((9, "info")),
                logger: Some("worker"),
                body: Some("job started"),
                attrs: &["job_id", "attempt"],
                ..Want::default()
            },
            Want {
                sev: Some((17, "error")),
                body: Some("job failed"),
                exc: Some(("RuntimeError", "conversion failed")),
                stack_has: &[
                    "ValueError: invalid literal for int() with base 10: 'x'",
                    BANNER_CONTEXT,
                ],
                ..Want::default()
            },
            Want {
                body: Some("dict tb"),
                exc: Some(("KeyError", "'k'")),
                stack_has: &[
                    "Traceback (most recent call last):\n  File \"/tmp/gen.py\", line 51, in <module>\nIndexError: list index out of range\n\nThe above exception",
                    "following exception:\n\nTraceback (most recent call last):\n  File \"/tmp/gen.py\", line 53, in <module>\nKeyError: 'k'",
                ],
                attrs: &["order"],
                ..Want::default()
            },
            Want {
                ts: Some(T0 + 25_402_000),
                sev: Some((13, "warning")),
                body: Some("local time"),
                trace: Some(("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")),
                ..Want::default()
            },
            Want {
                sev: Some((5, "debug")),
                body: Some("epoch time"),
                ..Want::default()
            },
        ];
        assert_eq!(STRUCTLOG.lines().count(), wants.len());
        for (i, want) in wants.iter().enumerate() {
            check(
                &parse(line(STRUCTLOG, i)),
                want,
                &format!("structlog line {i}"),
            );
        }
        // Float epoch seconds: f64 holds them to about a quarter of a microsecond.
        let ts = parse(line(STRUCTLOG, 4))
            .record
            .timestamp_unix_nano
            .expect("ts");
        assert!(ts.abs_diff(T0 + 25_428_000) < 1_000, "{ts}");
        // Frame locals from dict_tracebacks are not kept anywhere.
        let dict_tb = parse(line(STRUCTLOG, 2)).record;
        let stack = dict_tb
            .exception
            .and_then(|e| e.stacktrace)
            .unwrap_or_default();
        assert!(!stack.contains("BoundLoggerLazyProxy"), "{stack}");
    }

    #[test]
    fn loguru_serialized_lines() {
        let wants = [
            Want {
                ts: Some(T0 + 32_398_000),
                sev: Some((9, "INFO")),
                logger: Some("__main__"),
                body: Some("hello world"),
                attrs: &[
                    "request_id",
                    "code.filepath",
                    "code.function",
                    "code.lineno",
                    "process.pid",
                    "thread.id",
                    "thread.name",
                ],
                ..Want::default()
            },
            Want {
                sev: Some((1, "TRACE")),
                body: Some("tracing"),
                ..Want::default()
            },
            Want {
                ts: Some(T0 + 32_600_000),
                sev: Some((12, "SUCCESS")),
                body: Some("done"),
                ..Want::default()
            },
            Want {
                sev: Some((17, "ERROR")),
                body: Some("boom"),
                exc: Some(("TypeError", "wrapped")),
                stack_has: &[
                    "FileNotFoundError: [Errno 2] No such file",
                    BANNER_CONTEXT,
                    "> File \"/tmp/gen.py\", line 73",
                ],
                ..Want::default()
            },
        ];
        assert_eq!(LOGURU.lines().count(), wants.len());
        for (i, want) in wants.iter().enumerate() {
            let p = parse(line(LOGURU, i));
            // The attribute list differs per line only in `request_id`.
            let mut want_attrs = want.attrs.to_vec();
            if i > 0 {
                want_attrs = [
                    "code.filepath",
                    "code.function",
                    "code.lineno",
                    "process.pid",
                    "thread.id",
                    "thread.name",
                ]
                .to_vec();
            }
            let keys: Vec<&str> = p.record.attributes.iter().map(|(k, _)| k).collect();
            assert_eq!(keys, want_attrs, "loguru line {i}");
            let want = Want {
                attrs: &[],
                ..*want
            };
            let mut p = p;
            p.record.attributes = Attributes::new();
            check(&p, &want, &format!("loguru line {i}"));
        }
        let r = parse(line(LOGURU, 0)).record;
        assert_eq!(
            r.attributes.get("request_id"),
            Some(&AttrValue::String("r-9".into()))
        );
        assert_eq!(r.attributes.get("code.lineno"), Some(&AttrValue::Int(66)));
    }

    #[test]
    fn text_lines_and_joined_tracebacks() {
        let p = parse(line(TEXT, 0));
        check(
            &p,
            &Want {
                ts: Some(T0 + 38_000_000),
                sev: Some((9, "INFO")),
                body: Some("2026-11-22 02:36:14,038 INFO app.web: starting"),
                ..Want::default()
            },
            "text line",
        );
        // Lines 1..=14 are one logging call with a chained traceback, as the joiner emits them.
        let joined: Vec<&str> = TEXT.lines().skip(1).take(14).collect();
        let joined = joined.join("\n");
        let p = parse(&joined);
        check(
            &p,
            &Want {
                sev: Some((17, "ERROR")),
                body: Some("2026-11-22 02:36:14,038 ERROR app.web: handling failed"),
                exc: Some(("KeyError", "'k'")),
                stack_has: &[BANNER_CONTEXT, "ZeroDivisionError: division by zero"],
                ..Want::default()
            },
            "joined text traceback",
        );
        let joined = GROUP.lines().take(24).collect::<Vec<_>>().join("\n");
        let r = parse(&joined).record;
        assert_eq!(r.severity_number, 17);
        assert_eq!(
            r.body,
            "2026-11-22 02:50:53,296 ERROR app.tasks: gather failed"
        );
        let e = r.exception.expect("exception");
        assert_eq!(e.r#type.as_deref(), Some("ExceptionGroup"));
        assert_eq!(
            e.message.as_deref(),
            Some("tasks failed (2 sub-exceptions)")
        );
        assert!(e.stacktrace.as_deref().is_some_and(|s| {
            s.starts_with("  + Exception Group")
                && s.ends_with("+------------------------------------")
        }));
        let cases = [
            ("ERROR:root:boom", Some(17)),
            (
                "2024-05-01 12:00:00.123 | WARNING  | mod:fn:3 - x",
                Some(13),
            ),
            ("[2024-05-01T12:00:00Z] [info] started", Some(9)),
            ("2024-05-01T12:00:00Z debugger attached", None),
            ("plain words", None),
            ("", None),
        ];
        for (text, sev) in cases {
            let r = parse(text).record;
            assert_eq!(r.severity_number, sev.unwrap_or(0), "{text:?}");
            assert_eq!(r.body, text);
        }
    }

    #[test]
    fn malformed_and_hostile_input() {
        let json_mode = Parser::new(ParserConfig {
            format: Format::Json,
            ..ParserConfig::default()
        });
        let text_mode = Parser::new(ParserConfig {
            format: Format::Text,
            ..ParserConfig::default()
        });
        let cases: [(&Parser, &[u8], bool); 9] = [
            (
                &Parser::default(),
                br#"{"levelname": "INFO", "message": "unterminated"#,
                true,
            ),
            (&Parser::default(), br#"{"message": "x"} trailing"#, true),
            (&Parser::default(), br#"{"message": "x",}"#, true),
            (&Parser::default(), b"plain text is not an error", false),
            (&json_mode, b"plain text is an error here", true),
            (&json_mode, b"[1, 2, 3]", true),
            (&json_mode, b"\"just a string\"", true),
            (&text_mode, br#"{"message": "kept verbatim"}"#, false),
            (&Parser::default(), b"\xff\xfe\x00{\x80garbage\xc3", false),
        ];
        for (parser, input, is_error) in cases {
            let p = parser.parse(input, 0);
            assert_eq!(
                p.error.is_some(),
                is_error,
                "{:?}",
                String::from_utf8_lossy(input)
            );
            assert_eq!(p.record.body, String::from_utf8_lossy(input));
        }
        let p = json_mode.parse(b"[1]", 0);
        assert!(matches!(p.error, Some(ParseError::NotAnObject)));
        let p = Parser::default().parse(b"\xff\xfe{bin}\x00", 0);
        assert!(p.lossy_utf8);
        assert!(p.record.body.contains('\u{FFFD}'));
        // Invalid UTF-8 inside a JSON string: replaced, then parsed as JSON.
        let p = Parser::default().parse(b"{\"message\": \"caf\xe9\"}", 0);
        assert!(p.error.is_none());
        assert_eq!(p.record.body, "caf\u{FFFD}");
        // Nesting deeper than serde_json's recursion limit: an error, not a stack overflow.
        let deep = format!("{{\"a\": {}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let p = Parser::default().parse(deep.as_bytes(), 0);
        assert!(matches!(p.error, Some(ParseError::InvalidJson(_))));
        assert_eq!(p.record.body, deep);
        // Newline handling.
        assert_eq!(parse("{\"msg\": \"a\"}\r\n").record.body, "a");
    }

    #[test]
    fn ten_mib_line_is_cut_and_flagged() {
        let big = format!("{{\"message\": \"{}\"}}", "a".repeat(10 * 1024 * 1024));
        let p = parse(&big);
        assert!(p.truncated());
        assert_eq!(p.truncated_bytes, big.len() - DEFAULT_MAX_LINE_BYTES);
        assert_eq!(p.record.body.len(), DEFAULT_MAX_LINE_BYTES);
        // A cut JSON line cannot be parsed: it is kept as text and reported as both.
        assert!(matches!(p.error, Some(ParseError::InvalidJson(_))));

        let small = Parser::new(ParserConfig {
            max_line_bytes: 5,
            ..ParserConfig::default()
        });
        let p = small.parse("héllo wörld".as_bytes(), 0);
        assert_eq!(p.record.body, "héll");
        assert!(!p.lossy_utf8);
        assert_eq!(p.truncated_bytes, "héllo wörld".len() - 5);
        let p = small.parse(b"short", 0);
        assert!(!p.truncated());
    }

    #[test]
    fn strings_borrow_from_the_line_unless_escaped_or_replaced() {
        let line = br#"{"message": "plain", "path": "/a", "esc": "a\"b", "n": 1}"#;
        let p = Parser::default().parse(line, 0);
        assert!(p.error.is_none());
        assert!(matches!(p.record.body, Cow::Borrowed("plain")));
        assert!(matches!(
            p.record.attributes.get("path"),
            Some(AttrValue::String(Cow::Borrowed("/a")))
        ));
        // An escape is decoded into a string of its own.
        assert!(matches!(
            p.record.attributes.get("esc"),
            Some(AttrValue::String(Cow::Owned(s))) if s == "a\"b"
        ));
        let text = Parser::new(ParserConfig {
            format: Format::Text,
            ..ParserConfig::default()
        });
        let t = text.parse(b"2026-11-22 02:36:14,020 INFO hello\n", 0);
        assert!(matches!(t.record.body, Cow::Borrowed(_)));

        // Invalid UTF-8 inside valid JSON: parsed from the replaced copy, the record owned.
        let p = Parser::default().parse(b"{\"message\": \"caf\xff\", \"k\": \"v\"}", 0);
        assert!(p.error.is_none() && p.lossy_utf8);
        assert_eq!(p.record.body, "caf\u{fffd}");
        assert!(matches!(p.record.body, Cow::Owned(_)));
        assert_eq!(
            p.record.attributes.get("k"),
            Some(&AttrValue::String("v".into()))
        );
    }

    #[test]
    fn ids_that_are_zero_or_invalid() {
        let r = parse(r#"{"message": "m", "otelTraceID": "0", "otelSpanID": "0"}"#).record;
        assert_eq!((r.trace_id, r.span_id), (None, None));
        assert!(r.attributes.is_empty());
        let r = parse(r#"{"message": "m", "trace_id": "not-hex", "span_id": 7}"#).record;
        assert_eq!((r.trace_id, r.span_id), (None, None));
        let keys: Vec<&str> = r.attributes.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["trace_id", "span_id"]);
    }

    #[test]
    fn levels_from_levelno_and_unknown_names() {
        let cases = [
            (r#"{"levelno": 30, "message": "m"}"#, 13, None),
            (r#"{"level": 40, "message": "m"}"#, 17, None),
            (
                r#"{"levelname": "NOTICE", "levelno": 25}"#,
                10,
                Some("NOTICE"),
            ),
            (
                r#"{"levelname": "AUDIT", "levelno": 25}"#,
                12,
                Some("AUDIT"),
            ),
            (r#"{"levelname": "AUDIT"}"#, 0, Some("AUDIT")),
        ];
        for (line, sev, text) in cases {
            let r = parse(line).record;
            assert_eq!(r.severity_number, sev, "{line}");
            assert_eq!(r.severity_text.as_deref(), text, "{line}");
            assert!(r.attributes.get("levelno").is_none(), "{line}");
        }
    }

    #[test]
    fn duplicate_keys_last_wins_at_first_position() {
        let r = parse(r#"{"a": 1, "b": 2, "a": 3}"#).record;
        let got: Vec<(&str, &AttrValue)> = r.attributes.iter().collect();
        assert_eq!(got, [("a", &AttrValue::Int(3)), ("b", &AttrValue::Int(2))]);
        let many: Vec<String> = (0..40).map(|i| format!("\"k{}\": {i}", i % 20)).collect();
        let line = format!("{{{}}}", many.join(","));
        let r = parse(&line).record;
        assert_eq!(r.attributes.len(), 20);
        assert_eq!(r.attributes.get("k0"), Some(&AttrValue::Int(20)));
    }

    #[test]
    fn cri_lines() {
        let l = split_cri(b"2026-12-06T10:00:00.123456789Z stdout F {\"a\": 1}").expect("cri");
        assert_eq!(l.stream, "stdout");
        assert!(!l.partial);
        assert_eq!(l.content, b"{\"a\": 1}");
        assert_eq!(l.time_unix_nano % 1_000_000_000, 123_456_789);
        let p = split_cri(b"2026-12-06T10:00:00+01:00 stderr P part").expect("cri");
        assert!(p.partial);
        assert_eq!((p.stream, p.content), ("stderr", &b"part"[..]));
        let empty = split_cri(b"2026-12-06T10:00:00Z stdout F").expect("cri");
        assert_eq!(empty.content, b"");
        for not in [
            &b"2026-12-06 10:00:00,000 INFO app: stdout F x"[..],
            b"2026-12-06T10:00:00Z stdin F x",
            b"2026-12-06T10:00:00Z stdout X x",
            b"{\"time\": \"2026-12-06T10:00:00Z\"}",
            b"",
        ] {
            assert_eq!(split_cri(not), None, "{}", String::from_utf8_lossy(not));
        }
    }

    #[test]
    fn timestamps_table() {
        const NOON: u64 = 1_714_564_800_000_000_000; // 2024-05-01T12:00:00Z
        let cases: [(&str, i32, Option<u64>); 25] = [
            ("2024-05-01T12:00:00Z", 0, Some(NOON)),
            ("2024-05-01T12:00:00z", 0, Some(NOON)),
            ("2024-05-01 12:00:00,123", 0, Some(NOON + 123_000_000)),
            (
                "2024-05-01T12:00:00.123456789Z",
                0,
                Some(NOON + 123_456_789),
            ),
            (
                "2024-05-01T12:00:00.1234567891Z",
                0,
                Some(NOON + 123_456_789),
            ),
            ("2024-05-01T14:00:00+02:00", 0, Some(NOON)),
            ("2024-05-01T14:00:00+0200", 0, Some(NOON)),
            ("2024-05-01T07:00:00-05", 0, Some(NOON)),
            ("2024-05-01T12:00Z", 0, Some(NOON)),
            ("2024-05-01 14:00:00", 7200, Some(NOON)),
            ("2024-05-01 12:00:00", 0, Some(NOON)),
            ("2000-02-29T23:59:59Z", 0, Some(951_868_799_000_000_000)),
            ("1970-01-01T00:00:00Z", 0, Some(0)),
            ("2100-03-01T00:00:00Z", 0, Some(4_107_542_400_000_000_000)),
            // Days past the month's end roll over; so does a leap second.
            ("2023-02-29T00:00:00Z", 0, Some(1_677_628_800_000_000_000)),
            ("2024-02-31T00:00:00Z", 0, Some(1_709_337_600_000_000_000)),
            ("2024-12-31T23:59:60Z", 0, Some(1_735_689_600_000_000_000)),
            // Beyond u64 nanoseconds (the year 2554).
            ("9999-12-31T23:59:59Z", 0, None),
            ("1714564800", 0, Some(NOON)),
            ("1714564800123", 0, Some(NOON + 123_000_000)),
            ("1714564800.5", 0, Some(NOON + 500_000_000)),
            ("2024-13-01T00:00:00Z", 0, None),
            ("2024-05-01T12:00:00Zjunk", 0, None),
            ("1969-12-31T23:59:59Z", 0, None),
            ("yesterday", 0, None),
        ];
        for (s, off, want) in cases {
            assert_eq!(parse_timestamp(s, off), want, "{s}");
        }
    }

    #[test]
    fn traceback_final_exception_table() {
        let cases: [(&str, Option<&str>, Option<&str>); 6] = [
            (
                "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\nStopIteration",
                Some("StopIteration"),
                None,
            ),
            (
                "Traceback (most recent call last):\n  File \"x.py\", line 1, in f\nrequests.exceptions.ConnectionError: HTTPSConnectionPool(host='x', port=443): Max retries",
                Some("requests.exceptions.ConnectionError"),
                Some("HTTPSConnectionPool(host='x', port=443): Max retries"),
            ),
            (
                "Traceback (most recent call last):\n  File \"x.py\", line 2\n    x = (\n        ^\nSyntaxError: '(' was never closed\n",
                Some("SyntaxError"),
                Some("'(' was never closed"),
            ),
            (
                "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\nValueError: first line\nsecond line\nAdd a note\n\n",
                Some("ValueError"),
                Some("first line\nsecond line\nAdd a note"),
            ),
            ("ValueError: no header", None, None),
            (
                "Traceback (most recent call last):\n  File \"x.py\", line 1",
                None,
                None,
            ),
        ];
        for (text, ty, msg) in cases {
            let e = exception_from_traceback(text.to_owned());
            assert_eq!(e.r#type.as_deref(), ty, "{text}");
            assert_eq!(e.message.as_deref(), msg, "{text}");
            assert_eq!(e.stacktrace.as_deref(), Some(text));
        }
    }

    #[test]
    fn format_is_configurable_by_name() {
        #[derive(serde::Deserialize)]
        struct C {
            format: Format,
        }
        for (s, want) in [
            ("auto", Format::Auto),
            ("json", Format::Json),
            ("text", Format::Text),
        ] {
            let c: C = serde_json::from_str(&format!("{{\"format\": \"{s}\"}}")).expect("valid");
            assert_eq!(c.format, want);
        }
        assert!(serde_json::from_str::<C>("{\"format\": \"xml\"}").is_err());
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600), max in 1usize..700) {
            for format in [Format::Auto, Format::Json, Format::Text] {
                let parser = Parser::new(ParserConfig { format, max_line_bytes: max, ..ParserConfig::default() });
                let p = parser.parse(&bytes, 1);
                // U+FFFD takes three bytes where the invalid byte took one.
                prop_assert!(p.record.body.len() <= 3 * max.min(bytes.len()));
                prop_assert_eq!(p.truncated_bytes, strip_newline(&bytes).len().saturating_sub(max));
            }
        }

        #[test]
        fn never_panics_on_json_like_text(s in r#"[{}\[\]":,a-z0-9 .\\-]{0,200}"#) {
            let _ = Parser::default().parse(s.as_bytes(), 1);
            let _ = parse_timestamp(&s, 0);
        }

        #[test]
        fn json_records_round_trip_the_message(message in any::<String>(), key in prop::sample::select(vec!["message", "event", "msg"]), level in prop::sample::select(vec!["DEBUG", "info", "WARNING", "error"])) {
            let mut map = serde_json::Map::new();
            map.insert(key.to_owned(), serde_json::Value::String(message.clone()));
            map.insert("levelname".to_owned(), serde_json::Value::String(level.to_owned()));
            map.insert("extra".to_owned(), serde_json::Value::String(message.clone()));
            let line = serde_json::Value::Object(map).to_string();
            let p = Parser::default().parse(line.as_bytes(), 1);
            prop_assert!(p.error.is_none());
            prop_assert_eq!(&p.record.body, &message);
            prop_assert_eq!(p.record.attributes.get("extra").and_then(AttrValue::as_str), Some(message.as_str()));
            prop_assert_eq!(p.record.severity_text.as_deref(), Some(level));
        }
    }

    /// The record of a JSON line read into its field vector first, then mapped: what
    /// [`Parser::json`] gives for every line, whether it maps the fields as it reads them or not.
    fn parse_as_fields<'a>(parser: &Parser, text: &'a str) -> Result<LogRecord<'a>, String> {
        let mut last = LastLine::default();
        let mut names = Names {
            prev: &mut last.names,
            at: 0,
            minute: &mut last.minute,
        };
        match read_json(text, &mut names, None).map_err(|e| e.to_string())? {
            Read::Fields(fields) => Ok(parser.json_record(fields, OBSERVED, &mut names)),
            Read::Mapped | Read::Loguru => Err("fields not read as fields".to_owned()),
        }
    }

    /// A top-level key of a generated JSON record: every role the mapping knows, some twice,
    /// and plain attributes.
    fn json_key() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "message",
            "event",
            "msg",
            "asctime",
            "timestamp",
            "time",
            "ts",
            "levelname",
            "level",
            "severity",
            "levelno",
            "name",
            "logger",
            "exc_info",
            "exception",
            "otelTraceID",
            "trace_id",
            "otelSpanID",
            "span_id",
            "text",
            "record",
            "path",
            "status",
            "extra",
            "user_id",
        ])
    }

    /// A value for [`json_key`]: strings each role reads (or does not), numbers, nulls, lists
    /// and maps (loguru-like records among them).
    fn json_value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(r#""hello world""#.to_owned()),
            Just(r#""""#.to_owned()),
            Just(r#""2026-11-22 02:36:14,020""#.to_owned()),
            Just(r#""2026-11-22T02:36:14.5Z""#.to_owned()),
            Just(r#""INFO""#.to_owned()),
            Just(r#""warning""#.to_owned()),
            Just(r#""app.web""#.to_owned()),
            Just(r#""4bf92f3577b34da6a3ce929d0e0e4736""#.to_owned()),
            Just(r#""00f067aa0ba902b7""#.to_owned()),
            Just(r#""0000000000000000""#.to_owned()),
            Just(r#""esc\"aped \u00e9""#.to_owned()),
            Just(r#""Traceback (most recent call last):\n  File \"a.py\", line 1, in <module>\nValueError: bad""#.to_owned()),
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("20".to_owned()),
            Just("40.0".to_owned()),
            Just("1795314974.5".to_owned()),
            Just("-3".to_owned()),
            Just("18446744073709551615".to_owned()),
            Just(r#"[1, "a", null]"#.to_owned()),
            Just(r#"[{"filename": "a.py", "lineno": 1, "name": "f", "exc_type": "E", "exc_value": "v", "frames": []}]"#.to_owned()),
            Just(r#"{"k": "v", "n": {"m": 1}}"#.to_owned()),
            Just(r#"{"message": "m", "level": {"name": "INFO", "no": 20}, "time": {"repr": "2026-11-22 02:36:14.020000+00:00", "timestamp": 1795314974.02}, "name": "app", "extra": {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "k": 1}}"#.to_owned()),
            Just("{}".to_owned()),
        ]
    }

    proptest! {
        /// Mapping the fields as they are read gives the record mapping the field vector gives,
        /// in any key order, with duplicate keys, loguru's shape anywhere in the line, and
        /// invalid lines.
        #[test]
        fn fields_mapped_as_read_map_as_the_field_vector(
            fields in proptest::collection::vec((json_key(), json_value()), 0..12),
            cut in 0usize..400,
        ) {
            let body = fields.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect::<Vec<_>>().join(", ");
            let line = format!("{{{body}}}");
            // Also cut short (invalid JSON): both ways must fail alike.
            let short: String = line.chars().take(cut).collect();
            for text in [line.as_str(), short.as_str()] {
                let parser = Parser::default();
                let mut last = LastLine::default();
                let mut names = Names { prev: &mut last.names, at: 0, minute: &mut last.minute };
                let streamed = parser.json(text, OBSERVED, &mut names).map_err(|e| e.to_string());
                prop_assert_eq!(streamed, parse_as_fields(&parser, text), "{}", text);
                // And again with the names of the line remembered, as for the next line.
                let streamed = parser.json(text, OBSERVED, &mut Names { prev: &mut last.names, at: 0, minute: &mut last.minute })
                    .map_err(|e| e.to_string());
                prop_assert_eq!(streamed, parse_as_fields(&parser, text), "{}", text);
            }
        }
    }

    /// A remembered minute reads every timestamp as a fresh read does, whatever came before.
    #[test]
    fn remembered_minute_reads_as_a_fresh_read() {
        let stamps = [
            "2024-05-01 12:00:00,123",
            "2024-05-01 12:00:59.999999",
            "2024-05-01 12:00:60",
            "2024-05-01 12:00:61",
            "2024-05-01 12:00",
            "2024-05-01 12:00Z",
            "2024-05-01 12:00:07+02:00",
            "2024-05-01 12:00:07-0130",
            "2024-05-01T12:00:07Z",
            "2024-05-01 12:01:00,000",
            "2024-05-01 12:00:0x",
            "2024-02-30 23:59:59",
            "2024-13-01 12:00:00",
            "2024-05-01 24:00:00",
            "1714564800",
            "1714564800.5",
            " 2024-05-01 12:00:01 ",
            "2024-05-01 12:0",
        ];
        for offset in [0, 3600, -19_800] {
            let mut minute = None;
            for round in 0..2 {
                for s in stamps.iter().chain(stamps.iter().rev()) {
                    assert_eq!(
                        parse_timestamp_in(s, offset, &mut minute),
                        parse_timestamp(s, offset),
                        "{s} (offset {offset}, round {round})"
                    );
                    assert_eq!(
                        scan_timestamp_in(s, offset, &mut minute),
                        scan_timestamp_in(s, offset, &mut None),
                        "{s} (offset {offset}, round {round})"
                    );
                }
            }
        }
    }
}

//! The one log record model every log format is mapped to (it follows the OpenTelemetry log data
//! model: timestamps in unix nanoseconds, severity numbers 1–24, hex trace and span ids).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// A name that repeats across records (an attribute key, a level, a logger): the parser shares
/// one copy per distinct name for the whole process (see `parse::intern`), or owns it when the
/// shared table is full or the name is long.
pub type Name = Cow<'static, str>;

/// A log record, whatever format it was read from. Its strings borrow from the line it was
/// parsed from (`'a`) where the line holds them as they are (no escapes, not redacted), so a
/// record read, redacted and encoded copies nothing it does not have to.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LogRecord<'a> {
    /// When the event happened, as the application wrote it (unix nanoseconds), if it said.
    pub timestamp_unix_nano: Option<u64>,
    /// When the agent read the record (unix nanoseconds), supplied by the caller.
    pub observed_unix_nano: u64,
    /// OpenTelemetry severity number (1–24, see [`severity`]), `0` when unknown.
    pub severity_number: u8,
    /// The level as the application spelled it (`INFO`, `warning`, `SUCCESS`, …).
    pub severity_text: Option<Name>,
    /// The logger's name (`app.web`, `__main__`).
    pub logger: Option<Name>,
    /// The message.
    pub body: Cow<'a, str>,
    /// The exception attached to the record, if any.
    pub exception: Option<ExceptionInfo>,
    /// W3C trace id.
    pub trace_id: Option<TraceId>,
    /// W3C span id.
    pub span_id: Option<SpanId>,
    /// Every field the model has no slot for, in the order the application wrote them.
    pub attributes: Attributes<'a>,
    /// The file the record was read from.
    pub file_path: Option<Arc<str>>,
}

impl<'a> LogRecord<'a> {
    /// A record with just a body, read at `observed_unix_nano`.
    pub fn from_body(body: impl Into<Cow<'a, str>>, observed_unix_nano: u64) -> Self {
        Self {
            body: body.into(),
            observed_unix_nano,
            ..Self::default()
        }
    }

    /// The record with every string its own (no longer tied to the line it was read from).
    pub fn into_owned(self) -> LogRecord<'static> {
        LogRecord {
            timestamp_unix_nano: self.timestamp_unix_nano,
            observed_unix_nano: self.observed_unix_nano,
            severity_number: self.severity_number,
            severity_text: self.severity_text,
            logger: self.logger,
            body: Cow::Owned(self.body.into_owned()),
            exception: self.exception,
            trace_id: self.trace_id,
            span_id: self.span_id,
            attributes: self.attributes.into_owned(),
            file_path: self.file_path,
        }
    }
}

/// An exception: its type and message (of the last exception of a chain) and the whole stack text.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExceptionInfo {
    /// `ValueError`, `requests.exceptions.ConnectionError`, …
    pub r#type: Option<String>,
    /// What follows `Type: ` on the traceback's last line.
    pub message: Option<String>,
    /// The full traceback text, chained parts included.
    pub stacktrace: Option<String>,
}

/// A JSON-like attribute value (OpenTelemetry `AnyValue`); strings borrow from the line where
/// they can (see [`LogRecord`]).
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue<'a> {
    Null,
    Bool(bool),
    /// Integers that fit `i64`; larger ones become [`AttrValue::Float`].
    Int(i64),
    Float(f64),
    String(Cow<'a, str>),
    Array(Vec<AttrValue<'a>>),
    Map(Attributes<'a>),
}

impl<'a> AttrValue<'a> {
    /// The value with every string its own.
    pub fn into_owned(self) -> AttrValue<'static> {
        match self {
            AttrValue::Null => AttrValue::Null,
            AttrValue::Bool(b) => AttrValue::Bool(b),
            AttrValue::Int(i) => AttrValue::Int(i),
            AttrValue::Float(f) => AttrValue::Float(f),
            AttrValue::String(s) => AttrValue::String(Cow::Owned(s.into_owned())),
            AttrValue::Array(items) => {
                AttrValue::Array(items.into_iter().map(AttrValue::into_owned).collect())
            }
            AttrValue::Map(m) => AttrValue::Map(m.into_owned()),
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The map, if this is one.
    pub fn as_map(&self) -> Option<&Attributes<'a>> {
        match self {
            AttrValue::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The number as `f64`, if this is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            AttrValue::Int(i) => Some(i as f64),
            AttrValue::Float(f) => Some(f),
            _ => None,
        }
    }

    /// The number as `i64`, if this is an integer (or a float with no fractional part).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            AttrValue::Int(i) => Some(i),
            AttrValue::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Some(f as i64),
            _ => None,
        }
    }
}

/// An ordered map of attributes: insertion order is kept, keys are unique.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Attributes<'a>(Vec<(Name, AttrValue<'a>)>);

impl<'a> Attributes<'a> {
    /// An empty map.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// The map with every string its own.
    pub fn into_owned(self) -> Attributes<'static> {
        Attributes(
            self.0
                .into_iter()
                .map(|(k, v)| (k, v.into_owned()))
                .collect(),
        )
    }

    /// Inserts or replaces `key` (a replaced key keeps its position).
    pub fn insert(&mut self, key: impl Into<Name>, value: AttrValue<'a>) {
        let key = key.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// Builds a map from pairs; duplicate keys keep the last value at the first key's position.
    /// Linear for small maps, hashed for large ones (a hostile line can hold thousands of keys).
    pub fn from_pairs(pairs: Vec<(Name, AttrValue<'a>)>) -> Self {
        if pairs.len() <= 16 {
            // Keys are almost always unique: then the pairs are the map as they are.
            let unique = pairs
                .iter()
                .enumerate()
                .all(|(i, (k, _))| pairs[..i].iter().all(|(seen, _)| seen != k));
            if unique {
                return Attributes(pairs);
            }
            let mut m = Attributes(Vec::with_capacity(pairs.len()));
            for (k, v) in pairs {
                m.insert(k, v);
            }
            return m;
        }
        let mut index: std::collections::HashMap<Name, usize> =
            std::collections::HashMap::with_capacity(pairs.len());
        let mut out: Vec<(Name, AttrValue<'a>)> = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            match index.get(&k) {
                Some(&at) => out[at].1 = v,
                None => {
                    index.insert(k.clone(), out.len());
                    out.push((k, v));
                }
            }
        }
        Attributes(out)
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&AttrValue<'a>> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Removes and returns the value under `key`.
    pub fn remove(&mut self, key: &str) -> Option<AttrValue<'a>> {
        let at = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(at).1)
    }

    /// Entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &AttrValue<'a>)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v))
    }

    /// Mutable entries in order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut AttrValue<'a>)> {
        self.0.iter_mut().map(|(k, v)| {
            let k: &Name = k;
            (k.as_ref(), v)
        })
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> IntoIterator for Attributes<'a> {
    type Item = (Name, AttrValue<'a>);
    type IntoIter = std::vec::IntoIter<(Name, AttrValue<'a>)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> FromIterator<(Name, AttrValue<'a>)> for Attributes<'a> {
    /// Duplicate keys: the last value wins, at the first key's position (as in `serde_json`).
    fn from_iter<I: IntoIterator<Item = (Name, AttrValue<'a>)>>(iter: I) -> Self {
        let pairs: Vec<(Name, AttrValue<'a>)> = iter.into_iter().collect();
        Attributes::from_pairs(pairs)
    }
}

/// A W3C trace id (16 bytes, 32 hex digits). All-zero ids are invalid and never constructed.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// A W3C span id (8 bytes, 16 hex digits). All-zero ids are invalid and never constructed.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// Parses exactly 32 hex digits (either case); `None` for anything else or all zeros.
    pub fn from_hex(s: &str) -> Option<Self> {
        parse_hex::<16>(s).map(TraceId)
    }
}

impl SpanId {
    /// Parses exactly 16 hex digits (either case); `None` for anything else or all zeros.
    pub fn from_hex(s: &str) -> Option<Self> {
        parse_hex::<8>(s).map(SpanId)
    }
}

fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        out[i] = (hex_val(pair[0])? << 4) | hex_val(pair[1])?;
    }
    if out.iter().all(|&x| x == 0) {
        return None;
    }
    Some(out)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

/// OpenTelemetry severity numbers and the mappings from Python's levels to them.
pub mod severity {
    pub const UNSPECIFIED: u8 = 0;
    pub const TRACE: u8 = 1;
    pub const DEBUG: u8 = 5;
    pub const INFO: u8 = 9;
    pub const INFO2: u8 = 10;
    pub const INFO4: u8 = 12;
    pub const WARN: u8 = 13;
    pub const ERROR: u8 = 17;
    pub const FATAL: u8 = 21;
    pub const FATAL4: u8 = 24;

    /// Maps a level name (any case) to a severity number: Python's `DEBUG`/`INFO`/`WARNING`/
    /// `ERROR`/`CRITICAL`, loguru's `TRACE` and `SUCCESS` (levelno 25, so `INFO4` as the
    /// OpenTelemetry Python SDK maps it), and the usual aliases.
    pub fn from_text(level: &str) -> Option<u8> {
        const TABLE: &[(&str, u8)] = &[
            ("info", INFO),
            ("debug", DEBUG),
            ("warning", WARN),
            ("error", ERROR),
            ("critical", FATAL),
            ("trace", TRACE),
            ("success", INFO4),
            ("warn", WARN),
            ("exception", ERROR),
            ("fatal", FATAL),
            ("notice", INFO2),
            ("err", ERROR),
            ("crit", FATAL),
            ("emergency", FATAL4),
            ("alert", FATAL),
            ("panic", FATAL4),
        ];
        let level = level.trim();
        TABLE
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(level))
            .map(|&(_, n)| n)
    }

    /// Maps a Python `levelno` to a severity number the way the OpenTelemetry Python SDK does
    /// (`std_to_otel`): 10→DEBUG, 20→INFO, 30→WARN, 40→ERROR, 50→FATAL, the values between
    /// climb the sub-levels (capped at the fourth), above 53 is FATAL4. Levels 1–9 (loguru's
    /// TRACE is 5) are TRACE; 0 and negatives are unspecified.
    pub fn from_levelno(levelno: i64) -> u8 {
        match levelno {
            i64::MIN..=0 => UNSPECIFIED,
            1..=9 => TRACE,
            10..=53 => {
                let base = (levelno / 10) as u8; // 1..=5
                let sub = (levelno % 10).min(3) as u8;
                DEBUG + (base - 1) * 4 + sub
            }
            _ => FATAL4,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_from_text_table() {
        let cases = [
            ("DEBUG", Some(5)),
            ("info", Some(9)),
            ("WARNING", Some(13)),
            ("warn", Some(13)),
            ("ERROR", Some(17)),
            ("CRITICAL", Some(21)),
            ("TRACE", Some(1)),
            ("SUCCESS", Some(12)),
            (" Error ", Some(17)),
            ("verbose", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(severity::from_text(text), want, "{text:?}");
        }
    }

    #[test]
    fn severity_from_levelno_table() {
        let cases = [
            (0, 0),
            (-5, 0),
            (5, 1),
            (10, 5),
            (11, 6),
            (15, 8),
            (20, 9),
            (25, 12),
            (30, 13),
            (40, 17),
            (50, 21),
            (53, 24),
            (60, 24),
        ];
        for (levelno, want) in cases {
            assert_eq!(severity::from_levelno(levelno), want, "{levelno}");
        }
    }

    #[test]
    fn ids_parse_and_print() {
        let t = TraceId::from_hex("4BF92F3577B34DA6A3CE929D0E0E4736").expect("valid");
        assert_eq!(t.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let s = SpanId::from_hex("00f067aa0ba902b7").expect("valid");
        assert_eq!(s.to_string(), "00f067aa0ba902b7");
        assert_eq!(format!("{s:?}"), "SpanId(00f067aa0ba902b7)");
        for bad in [
            "",
            "00000000000000000000000000000000",
            "4bf92f3577b34da6a3ce929d0e0e473",
            "4bf92f3577b34da6a3ce929d0e0e473g",
            "4bf92f3577b34da6a3ce929d0e0e47361",
        ] {
            assert_eq!(TraceId::from_hex(bad), None, "{bad:?}");
        }
        assert_eq!(SpanId::from_hex("0000000000000000"), None);
    }

    #[test]
    fn attributes_keep_order_and_replace_in_place() {
        let mut a = Attributes::new();
        a.insert("b", AttrValue::Int(1));
        a.insert("a", AttrValue::Int(2));
        a.insert("b", AttrValue::Int(3));
        let keys: Vec<_> = a.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["b", "a"]);
        assert_eq!(a.get("b"), Some(&AttrValue::Int(3)));
        assert_eq!(a.remove("b"), Some(AttrValue::Int(3)));
        assert_eq!(a.len(), 1);
        assert_eq!(AttrValue::Float(3.0).as_i64(), Some(3));
        assert_eq!(AttrValue::Float(3.5).as_i64(), None);
    }
}

//! A zero-copy reader of protobuf-encoded OTLP trace export requests
//! (`ExportTraceServiceRequest`), so that received traces can be forwarded as the bytes they came
//! in (the exporter concatenates them: protobuf repeated fields concatenate) while span metrics
//! still read every span.
//!
//! [`traces`] checks a request as prost's generated decoder would — wire types of known fields,
//! UTF-8 of strings, lengths, varints, groups, the nesting limit of 100 — so that what passes here
//! decodes there, and what prost refuses is refused here (`tests::agrees_with_prost`). It hands
//! the fields span metrics read to a [`Visit`]or, borrowed from the buffer, with prost's merge
//! semantics: the last occurrence of a scalar wins, repeated fields and repeated occurrences of
//! an embedded message accumulate.

/// Why a buffer is not an `ExportTraceServiceRequest`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid protobuf: {0}")]
pub struct WireError(&'static str);

impl WireError {
    /// A refusal for another reason than the encoding (the caller's own check).
    pub(crate) fn new(why: &'static str) -> Self {
        Self(why)
    }
}

/// Receives every string value that is data rather than code — string attribute values at any
/// depth (resource, scope, span, event, link), span and event names, status messages — for
/// redaction's look at an encoded request (`otlp::redact::OtlpRedactor::probe`).
pub type Texts<'t> = dyn FnMut(&str) + 't;

/// prost's (and protobuf C++'s) default nesting limit.
const RECURSION_LIMIT: u32 = 100;

/// An attribute value as span metrics can use it (arrays, maps, bytes and string-table
/// references are [`Value::Other`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// `string_value`.
    Str(&'a str),
    /// `bool_value`.
    Bool(bool),
    /// `int_value`.
    Int(i64),
    /// `double_value`.
    Double(f64),
    /// Any other kind of value.
    Other,
}

/// One `KeyValue`: its key and, if set, its value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Attr<'a> {
    /// The key.
    pub key: &'a str,
    /// The value (`None` when the `KeyValue` has none, or an `AnyValue` with no field set).
    pub value: Option<Value<'a>>,
}

/// The first attribute named `key` and its value, as `attrs.iter().find(..)?.value` on decoded
/// attributes.
pub fn find<'a>(attrs: &[Attr<'a>], key: &str) -> Option<Value<'a>> {
    attrs.iter().find(|a| a.key == key)?.value
}

/// What span metrics read from one span.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SpanFields<'a> {
    /// `name`.
    pub name: &'a str,
    /// `kind` (the enum's number).
    pub kind: i32,
    /// `status.code` (0 without a status).
    pub status: i32,
    /// `start_time_unix_nano`.
    pub start: u64,
    /// `end_time_unix_nano`.
    pub end: u64,
    /// `trace_id` as received (16 bytes when valid).
    pub trace_id: &'a [u8],
}

/// Receives what [`traces`] reads, in order: each resource's attributes before its spans.
pub trait Visit<'a> {
    /// The attributes of the next resource (empty without one).
    fn resource(&mut self, attributes: &[Attr<'a>]);
    /// One span of the current resource, with its attributes.
    fn span(&mut self, span: &SpanFields<'a>, attributes: &[Attr<'a>]);
    /// Every data string of the request ([`Texts`]), in encoding order.
    fn text(&mut self, _text: &str) {}
}

/// A visitor that also hands every data string to `texts`.
pub struct WithTexts<'t, V>(pub V, pub &'t mut Texts<'t>);

impl<'a, V: Visit<'a>> Visit<'a> for WithTexts<'_, V> {
    fn resource(&mut self, attributes: &[Attr<'a>]) {
        self.0.resource(attributes);
    }
    fn span(&mut self, span: &SpanFields<'a>, attributes: &[Attr<'a>]) {
        self.0.span(span, attributes);
    }
    fn text(&mut self, text: &str) {
        (self.1)(text);
    }
}

/// A visitor that only checks the request.
impl<'a> Visit<'a> for () {
    fn resource(&mut self, _: &[Attr<'a>]) {}
    fn span(&mut self, _: &SpanFields<'a>, _: &[Attr<'a>]) {}
}

/// Checks an encoded `ExportTraceServiceRequest`, calls `visit` for every resource and span,
/// and returns the number of spans.
pub fn traces<'a>(buf: &'a [u8], visit: &mut impl Visit<'a>) -> Result<usize, WireError> {
    let mut s = Scanner {
        visit,
        resource_attrs: Vec::new(),
        span_attrs: Vec::new(),
        spans: 0,
    };
    let mut r = Reader { buf };
    while let Some((tag, wire)) = r.key()? {
        match tag {
            1 => {
                let m = r.message(wire, RECURSION_LIMIT)?;
                s.resource_spans(m, RECURSION_LIMIT - 1)?;
            }
            _ => r.skip(tag, wire, RECURSION_LIMIT)?,
        }
    }
    Ok(s.spans)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    Varint,
    Fixed64,
    Len,
    StartGroup,
    EndGroup,
    Fixed32,
}

fn expect(wire: Wire, want: Wire) -> Result<(), WireError> {
    if wire == want {
        Ok(())
    } else {
        Err(WireError("invalid wire type"))
    }
}

/// A cursor over one message's bytes.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    #[inline]
    fn varint(&mut self) -> Result<u64, WireError> {
        // Most keys and lengths are one byte.
        if let Some((&b, rest)) = self.buf.split_first()
            && b < 0x80
        {
            self.buf = rest;
            return Ok(u64::from(b));
        }
        self.varint_long()
    }

    fn varint_long(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for (i, &b) in self.buf.iter().take(10).enumerate() {
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                if i == 9 && b > 1 {
                    break;
                }
                self.buf = &self.buf[i + 1..];
                return Ok(value);
            }
        }
        Err(WireError("invalid varint"))
    }

    /// The next field's tag and wire type; `None` at the end of the message.
    fn key(&mut self) -> Result<Option<(u32, Wire)>, WireError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let key = u32::try_from(key).map_err(|_| WireError("invalid key value"))?;
        let wire = match key & 7 {
            0 => Wire::Varint,
            1 => Wire::Fixed64,
            2 => Wire::Len,
            3 => Wire::StartGroup,
            4 => Wire::EndGroup,
            5 => Wire::Fixed32,
            _ => return Err(WireError("invalid wire type value")),
        };
        let tag = key >> 3;
        if tag == 0 {
            return Err(WireError("invalid tag value: 0"));
        }
        Ok(Some((tag, wire)))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], WireError> {
        let n = usize::try_from(n).map_err(|_| WireError("buffer underflow"))?;
        if n > self.buf.len() {
            return Err(WireError("buffer underflow"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn bytes(&mut self, wire: Wire) -> Result<&'a [u8], WireError> {
        expect(wire, Wire::Len)?;
        let n = self.varint()?;
        self.take(n)
    }

    fn string(&mut self, wire: Wire) -> Result<&'a str, WireError> {
        let b = self.bytes(wire)?;
        std::str::from_utf8(b)
            .map_err(|_| WireError("invalid string value: data is not UTF-8 encoded"))
    }

    /// An embedded message's bytes, if the nesting limit allows another level.
    fn message(&mut self, wire: Wire, depth: u32) -> Result<&'a [u8], WireError> {
        if depth == 0 {
            return Err(WireError("recursion limit reached"));
        }
        self.bytes(wire)
    }

    fn uint(&mut self, wire: Wire) -> Result<u64, WireError> {
        expect(wire, Wire::Varint)?;
        self.varint()
    }

    fn fixed64(&mut self, wire: Wire) -> Result<u64, WireError> {
        expect(wire, Wire::Fixed64)?;
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn fixed32(&mut self, wire: Wire) -> Result<(), WireError> {
        expect(wire, Wire::Fixed32)?;
        self.take(4).map(|_| ())
    }

    /// Skips an unknown field (prost's `skip_field`).
    fn skip(&mut self, tag: u32, wire: Wire, depth: u32) -> Result<(), WireError> {
        if depth == 0 {
            return Err(WireError("recursion limit reached"));
        }
        match wire {
            Wire::Varint => self.varint().map(|_| ()),
            Wire::Fixed64 => self.take(8).map(|_| ()),
            Wire::Fixed32 => self.take(4).map(|_| ()),
            Wire::Len => {
                let n = self.varint()?;
                self.take(n).map(|_| ())
            }
            Wire::StartGroup => loop {
                match self.key()? {
                    None => return Err(WireError("buffer underflow")),
                    Some((inner, Wire::EndGroup)) => {
                        if inner != tag {
                            return Err(WireError("unexpected end group tag"));
                        }
                        return Ok(());
                    }
                    Some((inner, w)) => self.skip(inner, w, depth - 1)?,
                }
            },
            Wire::EndGroup => Err(WireError("unexpected end group tag")),
        }
    }
}

/// Walks one request, feeding the visitor; the attribute lists are reused buffers.
struct Scanner<'a, 'v, V> {
    visit: &'v mut V,
    resource_attrs: Vec<Attr<'a>>,
    span_attrs: Vec<Attr<'a>>,
    spans: usize,
}

impl<'a, V: Visit<'a>> Scanner<'a, '_, V> {
    /// `ResourceSpans`: the resource first (wherever it is encoded), then the scopes' spans.
    fn resource_spans(&mut self, buf: &'a [u8], depth: u32) -> Result<(), WireError> {
        self.resource_attrs.clear();
        let mut r = Reader { buf };
        let mut has_scopes = false;
        while let Some((tag, wire)) = r.key()? {
            match tag {
                1 => {
                    let m = r.message(wire, depth)?;
                    let mut attrs = std::mem::take(&mut self.resource_attrs);
                    resource(m, depth - 1, &mut attrs, &mut |t| self.visit.text(t))?;
                    self.resource_attrs = attrs;
                }
                2 => {
                    // Checked in the second pass, once the resource is known.
                    r.message(wire, depth)?;
                    has_scopes = true;
                }
                3 => {
                    r.string(wire)?;
                }
                _ => r.skip(tag, wire, depth)?,
            }
        }
        self.visit.resource(&self.resource_attrs);
        if !has_scopes {
            return Ok(());
        }
        let mut r = Reader { buf };
        while let Some((tag, wire)) = r.key()? {
            if tag == 2 {
                let m = r.message(wire, depth)?;
                self.scope_spans(m, depth - 1)?;
            } else {
                r.skip(tag, wire, depth)?;
            }
        }
        Ok(())
    }

    fn scope_spans(&mut self, buf: &'a [u8], depth: u32) -> Result<(), WireError> {
        let mut r = Reader { buf };
        while let Some((tag, wire)) = r.key()? {
            match tag {
                1 => scope(r.message(wire, depth)?, depth - 1, &mut |t| {
                    self.visit.text(t)
                })?,
                2 => {
                    let m = r.message(wire, depth)?;
                    self.span(m, depth - 1)?;
                }
                3 => {
                    r.string(wire)?;
                }
                _ => r.skip(tag, wire, depth)?,
            }
        }
        Ok(())
    }

    fn span(&mut self, buf: &'a [u8], depth: u32) -> Result<(), WireError> {
        let mut f = SpanFields::default();
        self.span_attrs.clear();
        let mut r = Reader { buf };
        while let Some((tag, wire)) = r.key()? {
            match tag {
                1 => f.trace_id = r.bytes(wire)?,
                2 | 4 => {
                    r.bytes(wire)?;
                }
                3 => {
                    r.string(wire)?;
                }
                5 => {
                    f.name = r.string(wire)?;
                    self.visit.text(f.name);
                }
                6 => f.kind = r.uint(wire)? as i32,
                7 => f.start = r.fixed64(wire)?,
                8 => f.end = r.fixed64(wire)?,
                9 => {
                    let m = r.message(wire, depth)?;
                    let attr = key_value(m, depth - 1, &mut |t| self.visit.text(t))?;
                    self.span_attrs.push(attr);
                }
                10 | 12 | 14 => {
                    r.uint(wire)?;
                }
                11 => event(r.message(wire, depth)?, depth - 1, &mut |t| {
                    self.visit.text(t)
                })?,
                13 => link(r.message(wire, depth)?, depth - 1, &mut |t| {
                    self.visit.text(t)
                })?,
                15 => {
                    let m = r.message(wire, depth)?;
                    if let Some(code) = status(m, depth - 1, &mut |t| self.visit.text(t))? {
                        f.status = code;
                    }
                }
                16 => r.fixed32(wire)?,
                _ => r.skip(tag, wire, depth)?,
            }
        }
        self.spans += 1;
        self.visit.span(&f, &self.span_attrs);
        Ok(())
    }
}

fn resource<'a>(
    buf: &'a [u8],
    depth: u32,
    attrs: &mut Vec<Attr<'a>>,
    texts: &mut Texts<'_>,
) -> Result<(), WireError> {
    let mut r = Reader { buf };
    while let Some((tag, wire)) = r.key()? {
        match tag {
            1 => attrs.push(key_value(r.message(wire, depth)?, depth - 1, texts)?),
            2 => {
                r.uint(wire)?;
            }
            3 => entity_ref(r.message(wire, depth)?, depth - 1)?,
            _ => r.skip(tag, wire, depth)?,
        }
    }
    Ok(())
}

fn entity_ref(buf: &[u8], depth: u32) -> Result<(), WireError> {
    let mut r = Reader { buf };
    while let Some((tag, wire)) = r.key()? {
        match tag {
            1..=4 => {
                r.string(wire)?;
            }
            _ => r.skip(tag, wire, depth)?,
        }
    }
    Ok(())
}

fn scope(buf: &[u8], depth: u32, texts: &mut Texts<'_>) -> Result<(), WireError> {
    let mut r = Reader { buf };
    while let Some((tag, wire)) = r.key()? {
        match tag {
            1 | 2 => {
                r.string(wire)?;
            }
            3 => {
                key_value(r.message(wire, depth)?, depth - 1, texts)?;
            }
            4 => {
                r.uint(wire)?;
            }
            _ => r.skip(tag, wire, depth)?,
        }
    }
    Ok(())
}

fn event(buf: &[u8], depth: u32, texts: &mut Texts<'_>) -> Result<(), WireError> {
    let mut r = Reader { buf };
    while let Some((tag, wire)) = r.key()? {
        match tag {
            1 => {
                r.fixed64(wire)?;
            }
            2 => texts(r.string(wire)?),
            3 => {
                key_value(r.message(wire, depth)?, depth - 1, texts)?;
            }
            4 => {
                r.uint(wire)?;
            }
            _ => r.skip(tag, wire, depth)?,
        }
    }
    Ok(())
}

fn link(buf: &[u8], depth: u32, texts: &mut Texts<'_>) -> Result<(), WireError> {
    let mut r = Reader { buf };
    while let Some((tag, wire)) = r.key()? {
        match tag {
            1 | 2 => {
                r.bytes(wire)?;
            }
            3 => {
                r.string(wire)?;
            }
            4 => {
                key_value(r.message(wire, depth)?, depth - 1, texts)?;
            }
            5 => {
                r.uint(wire)?;
            }
            6 => r.fixed32(wire)?,
            _ => r.skip(tag, wire, depth)?,
        }
    }
    Ok(())
}

/// `Status`: the code, if this occurrence sets one.
fn status(buf: &[u8], depth: u32, texts: &mut Texts<'_>) -> Result<Option<i32>, WireError> {
    let mut code = None;
    let mut r = Reader { buf };
    while let Some((tag, wire)) = r.key()? {
        match tag {
            2 => texts(r.string(wire)?),
            3 => code = Some(r.uint(wire)? as i32),
            _ => r.skip(tag, wire, depth)?,
        }
    }
    Ok(code)
}

fn key_value<'a>(buf: &'a [u8], depth: u32, texts: &mut Texts<'_>) -> Result<Attr<'a>, WireError> {
    let mut attr = Attr {
        key: "",
        value: None,
    };
    let mut r = Reader { buf };
    while let Some((tag, wire)) = r.key()? {
        match tag {
            1 => attr.key = r.string(wire)?,
            // A second occurrence merges into the first: a value set there stays unless this one
            // sets another.
            2 => {
                if let Some(v) = any_value(r.message(wire, depth)?, depth - 1, texts)? {
                    attr.value = Some(v);
                }
            }
            3 => {
                r.uint(wire)?;
            }
            _ => r.skip(tag, wire, depth)?,
        }
    }
    Ok(attr)
}

/// `AnyValue`: the value of its oneof, if any field of it is set (the last one wins).
fn any_value<'a>(
    buf: &'a [u8],
    depth: u32,
    texts: &mut Texts<'_>,
) -> Result<Option<Value<'a>>, WireError> {
    let mut value = None;
    let mut r = Reader { buf };
    while let Some((tag, wire)) = r.key()? {
        value = Some(match tag {
            1 => {
                let s = r.string(wire)?;
                texts(s);
                Value::Str(s)
            }
            2 => Value::Bool(r.uint(wire)? != 0),
            3 => Value::Int(r.uint(wire)? as i64),
            4 => Value::Double(f64::from_bits(r.fixed64(wire)?)),
            5 => {
                let m = r.message(wire, depth)?;
                repeated(m, depth - 1, &mut |b, d| any_value(b, d, texts).map(|_| ()))?;
                Value::Other
            }
            6 => {
                let m = r.message(wire, depth)?;
                repeated(m, depth - 1, &mut |b, d| key_value(b, d, texts).map(|_| ()))?;
                Value::Other
            }
            7 => {
                r.bytes(wire)?;
                Value::Other
            }
            8 => {
                r.uint(wire)?;
                Value::Other
            }
            _ => {
                r.skip(tag, wire, depth)?;
                continue;
            }
        });
    }
    Ok(value)
}

/// Checks one element of a repeated field (its bytes, the depth left).
type Item<'i> = dyn FnMut(&[u8], u32) -> Result<(), WireError> + 'i;

/// `ArrayValue` / `KeyValueList`: field 1 repeated, each checked by `item`.
fn repeated(buf: &[u8], depth: u32, item: &mut Item<'_>) -> Result<(), WireError> {
    let mut r = Reader { buf };
    while let Some((tag, wire)) = r.key()? {
        if tag == 1 {
            item(r.message(wire, depth)?, depth - 1)?;
        } else {
            r.skip(tag, wire, depth)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
    use proptest::prelude::*;
    use prost::Message;

    use super::*;

    /// Records what the scanner reports, owned, for comparison with a prost decode.
    type Attrs = Vec<(String, Option<String>)>;
    /// Name, kind, status, start, end, trace id, attributes.
    type SeenSpan = (String, i32, i32, u64, u64, Vec<u8>, Attrs);

    #[derive(Debug, Default, PartialEq)]
    struct Seen {
        resources: Vec<Attrs>,
        spans: Vec<SeenSpan>,
    }

    fn show(v: Option<Value<'_>>) -> Option<String> {
        v.map(|v| match v {
            Value::Str(s) => format!("s:{s}"),
            Value::Bool(b) => format!("b:{b}"),
            Value::Int(i) => format!("i:{i}"),
            Value::Double(d) => format!("d:{d}"),
            Value::Other => "other".into(),
        })
    }

    fn show_any(v: &Option<AnyValue>) -> Option<String> {
        use any_value::Value as V;
        v.as_ref()?.value.as_ref().map(|v| match v {
            V::StringValue(s) => format!("s:{s}"),
            V::BoolValue(b) => format!("b:{b}"),
            V::IntValue(i) => format!("i:{i}"),
            V::DoubleValue(d) => format!("d:{d}"),
            _ => "other".into(),
        })
    }

    fn attrs(a: &[Attr<'_>]) -> Attrs {
        a.iter()
            .map(|a| (a.key.to_owned(), show(a.value)))
            .collect()
    }

    impl<'a> Visit<'a> for Seen {
        fn resource(&mut self, a: &[Attr<'a>]) {
            self.resources.push(attrs(a));
        }
        fn span(&mut self, s: &SpanFields<'a>, a: &[Attr<'a>]) {
            self.spans.push((
                s.name.into(),
                s.kind,
                s.status,
                s.start,
                s.end,
                s.trace_id.into(),
                attrs(a),
            ));
        }
    }

    /// What the scanner should report, from prost's decode.
    fn expected(req: &ExportTraceServiceRequest) -> Seen {
        let kvs = |a: &[KeyValue]| -> Attrs {
            a.iter()
                .map(|kv| (kv.key.clone(), show_any(&kv.value)))
                .collect()
        };
        let mut seen = Seen::default();
        for rs in &req.resource_spans {
            seen.resources
                .push(rs.resource.as_ref().map_or(vec![], |r| kvs(&r.attributes)));
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    seen.spans.push((
                        s.name.clone(),
                        s.kind,
                        s.status.as_ref().map_or(0, |st| st.code),
                        s.start_time_unix_nano,
                        s.end_time_unix_nano,
                        s.trace_id.clone(),
                        kvs(&s.attributes),
                    ));
                }
            }
        }
        seen
    }

    fn check(bytes: &[u8]) {
        let mut seen = Seen::default();
        let ours = traces(bytes, &mut seen);
        match ExportTraceServiceRequest::decode(bytes) {
            Ok(req) => {
                let n = ours.unwrap_or_else(|e| panic!("prost decodes, we refuse: {e}"));
                assert_eq!(n, seen.spans.len());
                assert_eq!(seen, expected(&req));
            }
            Err(e) => assert!(ours.is_err(), "prost refuses ({e}), we accept"),
        }
    }

    fn kv(k: &str, v: any_value::Value) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    fn sample() -> ExportTraceServiceRequest {
        use any_value::Value as V;
        ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![
                            kv("service.name", V::StringValue("shop".into())),
                            kv("n", V::IntValue(-7)),
                            kv("x", V::DoubleValue(1.5)),
                            kv(
                                "nested",
                                V::ArrayValue(ArrayValue {
                                    values: vec![AnyValue {
                                        value: Some(V::KvlistValue(KeyValueList {
                                            values: vec![kv("deep", V::BoolValue(true))],
                                        })),
                                    }],
                                }),
                            ),
                        ],
                        ..Default::default()
                    }),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "s".into(),
                            version: "1".into(),
                            attributes: vec![kv("a", V::BytesValue(vec![1, 2]))],
                            dropped_attributes_count: 3,
                        }),
                        spans: vec![
                            Span {
                                trace_id: vec![7; 16],
                                span_id: vec![1; 8],
                                trace_state: "k=v".into(),
                                name: "GET /".into(),
                                kind: span::SpanKind::Server as i32,
                                start_time_unix_nano: 10,
                                end_time_unix_nano: 20,
                                attributes: vec![
                                    kv("http.route", V::StringValue("/".into())),
                                    kv("ok", V::BoolValue(false)),
                                ],
                                events: vec![span::Event {
                                    time_unix_nano: 15,
                                    name: "e".into(),
                                    attributes: vec![kv("e", V::IntValue(1))],
                                    dropped_attributes_count: 0,
                                }],
                                links: vec![span::Link {
                                    trace_id: vec![8; 16],
                                    span_id: vec![2; 8],
                                    flags: 1,
                                    ..Default::default()
                                }],
                                status: Some(Status {
                                    message: "boom".into(),
                                    code: 2,
                                }),
                                flags: 0x100,
                                ..Default::default()
                            },
                            Span {
                                name: "child".into(),
                                kind: span::SpanKind::Client as i32,
                                ..Default::default()
                            },
                        ],
                        schema_url: "u".into(),
                    }],
                    schema_url: "v".into(),
                },
                ResourceSpans::default(),
            ],
        }
    }

    #[test]
    fn reads_what_prost_decodes() {
        let bytes = sample().encode_to_vec();
        check(&bytes);
        let mut seen = Seen::default();
        assert_eq!(traces(&bytes, &mut seen), Ok(2));
        assert_eq!(seen.resources.len(), 2);
        assert_eq!(seen.spans[0].0, "GET /");
        assert_eq!(seen.spans[0].2, 2);
        // Two requests concatenated are the merged request.
        let mut twice = bytes.clone();
        twice.extend_from_slice(&bytes);
        check(&twice);
        assert_eq!(traces(&twice, &mut ()), Ok(4));
        check(&[]);
    }

    #[test]
    fn merge_semantics_match_prost() {
        // A resource after the scopes, a second resource occurrence (merged), a second status
        // without a code (keeps the first), a repeated name (the last wins).
        let mut rs = Vec::new();
        let span = Span {
            name: "first".into(),
            status: Some(Status {
                code: 2,
                ..Default::default()
            }),
            ..Default::default()
        };
        let scope = ScopeSpans {
            spans: vec![span],
            ..Default::default()
        };
        prost::encoding::message::encode(2, &scope, &mut rs);
        let r1 = Resource {
            attributes: vec![kv(
                "service.name",
                any_value::Value::StringValue("a".into()),
            )],
            ..Default::default()
        };
        let r2 = Resource {
            attributes: vec![kv(
                "service.name",
                any_value::Value::StringValue("b".into()),
            )],
            ..Default::default()
        };
        prost::encoding::message::encode(1, &r1, &mut rs);
        prost::encoding::message::encode(1, &r2, &mut rs);
        let mut req = Vec::new();
        prost::encoding::bytes::encode(1, &rs, &mut req);
        check(&req);
        let mut seen = Seen::default();
        traces(&req, &mut seen).expect("valid");
        assert_eq!(seen.resources[0].len(), 2, "both occurrences' attributes");
    }

    #[test]
    fn refuses_what_prost_refuses() {
        let good = sample().encode_to_vec();
        for bad in [
            vec![0x0a, 0x05, 0x01],       // length past the end
            vec![0x08, 0x01],             // resource_spans as a varint
            vec![0x00],                   // tag 0
            vec![0x0f],                   // wire type 7
            vec![0x0c],                   // end group without a start
            vec![0xff; 11],               // varint too long
            vec![0x0a, 0x02, 0x1a, 0xff], // invalid schema_url length
        ] {
            check(&bad);
            assert!(traces(&bad, &mut ()).is_err(), "{bad:?}");
        }
        // A span name that is not UTF-8.
        let mut req = sample();
        req.resource_spans[0].scope_spans[0].spans[1].name = "\u{e9}".into();
        let mut bytes = req.encode_to_vec();
        let at = bytes
            .windows(2)
            .position(|w| w == "\u{e9}".as_bytes())
            .expect("the name");
        bytes[at + 1] = 0x28;
        check(&bytes);
        assert!(traces(&bytes, &mut ()).is_err());
        // Unknown fields of every wire type are skipped, as prost does.
        let mut unknown = good.clone();
        unknown.extend_from_slice(&[0x10, 0x01, 0x19, 0, 0, 0, 0, 0, 0, 0, 0, 0x1d, 0, 0, 0, 0]);
        unknown.extend_from_slice(&[0x23, 0x08, 0x01, 0x24]); // group 4 { 1: 1 }
        check(&unknown);
        assert!(traces(&unknown, &mut ()).is_ok());
    }

    #[test]
    fn nesting_limit_matches_prost() {
        for levels in [90, 95, 96, 97, 98, 99, 100, 120] {
            let mut v = AnyValue {
                value: Some(any_value::Value::StringValue("leaf".into())),
            };
            for _ in 0..levels {
                v = AnyValue {
                    value: Some(any_value::Value::ArrayValue(ArrayValue { values: vec![v] })),
                };
            }
            let mut req = sample();
            req.resource_spans[0].scope_spans[0].spans[0]
                .attributes
                .push(KeyValue {
                    key: "deep".into(),
                    value: Some(v),
                    ..Default::default()
                });
            check(&req.encode_to_vec());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Corrupted requests: we accept exactly what prost accepts, and read the same.
        #[test]
        fn agrees_with_prost(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let mut bytes = sample().encode_to_vec();
            for (i, b) in edits {
                let at = i.index(bytes.len());
                bytes[at] = b;
            }
            if truncate {
                bytes.truncate(cut.index(bytes.len()));
            }
            check(&bytes);
        }
    }
}

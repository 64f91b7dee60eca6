//! Parses every line of a file into the same kind of borrowed top-level fields as the agent's
//! `parse_json_fields` (collector/src/logs/parse.rs), to compare JSON crates by callgrind
//! instructions (bench/json_crates_callgrind/run.sh). Usage: `BIN MODE FILE`, MODE one of
//! `serde_json`, `sonic` (sonic-rs's serde deserializer), `simd` (simd-json's serde
//! deserializer over a mutable copy of the line), `sonic_dom` / `simd_borrowed` (each crate's own
//! document type, top level read only: a floor, not the same work), `none` (reading and line
//! splitting only, the baseline).
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

#[allow(dead_code)] // built to be paid for, read only by `count`
enum Val<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
    Arr(Vec<Val<'a>>),
    Map(Vec<(Cow<'a, str>, Val<'a>)>),
}

struct Key<'a>(Cow<'a, str>);
impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

struct ValSeed;
impl<'de> DeserializeSeed<'de> for ValSeed {
    type Value = Val<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Val<'de>, D::Error> {
        d.deserialize_any(self)
    }
}
impl<'de> Visitor<'de> for ValSeed {
    type Value = Val<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Val<'de>, E> {
        Ok(Val::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Val<'de>, E> {
        Ok(Val::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Val<'de>, E> {
        Ok(match i64::try_from(v) {
            Ok(i) => Val::Int(i),
            Err(_) => Val::Float(v as f64),
        })
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Val<'de>, E> {
        Ok(Val::Float(v))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Owned(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Val<'de>, E> {
        Ok(Val::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Val<'de>, E> {
        Ok(Val::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Val<'de>, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(ValSeed)? {
            out.push(v);
        }
        Ok(Val::Arr(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Val<'de>, A::Error> {
        let mut out = Vec::with_capacity(map.size_hint().unwrap_or(16));
        while let Some(k) = map.next_key::<Key<'de>>()? {
            let v = map.next_value_seed(ValSeed)?;
            out.push((k.0, v));
        }
        Ok(Val::Map(out))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().expect("mode");
    let path = args.next().expect("file");
    let data = std::fs::read(&path).expect("read");
    let text = std::str::from_utf8(&data).expect("utf8");
    let mut fields = 0usize;
    let mut bytes = 0usize;
    let mut buf: Vec<u8> = Vec::new();
    let mut buffers = simd_json::Buffers::default();
    for line in text.lines() {
        let v = match mode.as_str() {
            "serde_json" => {
                let mut de = serde_json::Deserializer::from_str(line);
                let v = ValSeed.deserialize(&mut de).expect("parse");
                de.end().expect("end");
                count(&v)
            }
            "sonic" => {
                let mut de = sonic_rs::Deserializer::from_str(line);
                let v = ValSeed.deserialize(&mut de).expect("parse");
                de.end().expect("end");
                count(&v)
            }
            "simd" => {
                // simd-json unescapes in place: it needs a mutable copy of the line.
                buf.clear();
                buf.extend_from_slice(line.as_bytes());
                let mut de =
                    simd_json::Deserializer::from_slice_with_buffers(&mut buf, &mut buffers)
                        .expect("tape");
                let v = ValSeed.deserialize(&mut de).expect("parse");
                count(&v)
            }
            "sonic_dom" => {
                use sonic_rs::{JsonContainerTrait, JsonValueTrait};
                let v: sonic_rs::Value = sonic_rs::from_str(line).expect("parse");
                let o = v.as_object().expect("object");
                let mut b = 0;
                for (k, v) in o.iter() {
                    b += k.len() + v.as_str().map_or(0, str::len);
                }
                (o.len(), b)
            }
            "simd_borrowed" => {
                use simd_json::prelude::*;
                buf.clear();
                buf.extend_from_slice(line.as_bytes());
                let v = simd_json::to_borrowed_value_with_buffers(&mut buf, &mut buffers)
                    .expect("parse");
                let o = v.as_object().expect("object");
                let mut b = 0;
                for (k, v) in o.iter() {
                    b += k.len() + v.as_str().map_or(0, str::len);
                }
                (o.len(), b)
            }
            "none" => (0, line.len()),
            _ => panic!("mode"),
        };
        fields += v.0;
        bytes += v.1;
    }
    println!("{mode}: {fields} fields {bytes} string bytes");
}

fn count(v: &Val<'_>) -> (usize, usize) {
    match v {
        Val::Map(m) => m.iter().fold((m.len(), 0), |(n, b), (k, v)| {
            let (n2, b2) = count(v);
            (n + n2, b + b2 + k.len())
        }),
        Val::Arr(a) => a.iter().fold((a.len(), 0), |(n, b), v| {
            let (n2, b2) = count(v);
            (n + n2, b + b2)
        }),
        Val::Str(s) => (0, s.len()),
        _ => (0, 0),
    }
}

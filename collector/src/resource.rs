//! Resource attributes the agent adds to the traces and logs it forwards (the pod metadata a
//! Kubernetes sidecar learns from the downward API: `k8s.pod.name`, `k8s.namespace.name`, ...),
//! with the OpenTelemetry Collector `resource` processor's `insert` semantics: an attribute is
//! added only to resources that do not have its key, so what the SDK said wins.
//!
//! Decoded requests get the attributes pushed onto each resource. Encoded trace requests (the
//! bytes forwarded as received, [`crate::pipeline::Payload::Encoded`]) are rewritten at the wire
//! level: each `ResourceSpans` gets one more `resource` field holding the missing attributes.
//! Protobuf merges repeated occurrences of an embedded message field, so a decoder sees the
//! original resource with the attributes appended (or, with no resource, a resource of just
//! them) — exactly what the decoded path produces (`tests::encoded_agrees_with_decoded`).

use bytes::{BufMut, Bytes};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, encode_varint};

use crate::wire::WireError;

/// Field numbers: `ExportTraceServiceRequest.resource_spans`, `ResourceSpans.resource`,
/// `Resource.attributes` and `KeyValue.key` are all field 1.
const FIELD_ONE: u32 = 1;

/// String attributes to add to every resource that lacks their key, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtraResource {
    attributes: Vec<(String, String)>,
}

impl ExtraResource {
    /// The attributes (later duplicates of a key are ignored).
    pub fn new(attributes: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut out: Vec<(String, String)> = Vec::new();
        for (k, v) in attributes {
            if !out.iter().any(|(have, _)| *have == k) {
                out.push((k, v));
            }
        }
        Self { attributes: out }
    }

    /// Whether there is nothing to add.
    pub fn is_empty(&self) -> bool {
        self.attributes.is_empty()
    }

    /// The attributes.
    pub fn attributes(&self) -> &[(String, String)] {
        &self.attributes
    }

    fn missing(&self, has: impl Fn(&str) -> bool) -> Vec<KeyValue> {
        self.attributes
            .iter()
            .filter(|(k, _)| !has(k))
            .map(|(k, v)| KeyValue {
                key: k.clone(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(v.clone())),
                }),
                ..Default::default()
            })
            .collect()
    }

    fn add_to(&self, resource: &mut Option<Resource>) {
        let r = resource.get_or_insert_with(Resource::default);
        let add = self.missing(|k| r.attributes.iter().any(|a| a.key == k));
        r.attributes.extend(add);
    }

    /// Adds the missing attributes to every `ResourceSpans` of a decoded request.
    pub fn apply_traces(&self, request: &mut ExportTraceServiceRequest) {
        if self.is_empty() {
            return;
        }
        for rs in &mut request.resource_spans {
            self.add_to(&mut rs.resource);
        }
    }

    /// Adds the missing attributes to every `ResourceLogs` of a decoded request.
    pub fn apply_logs(&self, request: &mut ExportLogsServiceRequest) {
        if self.is_empty() {
            return;
        }
        for rl in &mut request.resource_logs {
            self.add_to(&mut rl.resource);
        }
    }

    /// The encoding of `buf` (an `ExportTraceServiceRequest`, already checked by
    /// [`crate::wire::traces`]) with the missing attributes added to every `ResourceSpans`;
    /// other fields are copied as they are. One copy of the request.
    pub fn apply_encoded_traces(&self, buf: &[u8]) -> Result<Bytes, WireError> {
        if self.is_empty() {
            return Ok(Bytes::copy_from_slice(buf));
        }
        let mut out = Vec::with_capacity(buf.len() + 64 * self.attributes.len());
        let mut rest = buf;
        while !rest.is_empty() {
            let start = rest;
            let (tag, wire_type) = decode_key(&mut rest).map_err(|_| bad("field key"))?;
            if tag == FIELD_ONE && wire_type == WireType::LengthDelimited {
                let spans = take_len(&mut rest)?;
                let keys = resource_keys(spans)?;
                let add = self.missing(|k| keys.contains(&k));
                if add.is_empty() {
                    out.extend_from_slice(&start[..start.len() - rest.len()]);
                    continue;
                }
                let resource = Resource {
                    attributes: add,
                    ..Default::default()
                }
                .encode_to_vec();
                let mut field = Vec::with_capacity(resource.len() + 6);
                // ResourceSpans.resource (field 1, length-delimited): key byte 0x0a.
                field.put_u8(0x0a);
                encode_varint(resource.len() as u64, &mut field);
                field.extend_from_slice(&resource);
                out.put_u8(0x0a);
                encode_varint((spans.len() + field.len()) as u64, &mut out);
                out.extend_from_slice(spans);
                out.extend_from_slice(&field);
            } else {
                prost::encoding::skip_field(wire_type, tag, &mut rest, DecodeContext::default())
                    .map_err(|_| bad("unknown field"))?;
                out.extend_from_slice(&start[..start.len() - rest.len()]);
            }
        }
        Ok(Bytes::from(out))
    }
}

fn bad(what: &'static str) -> WireError {
    WireError::new(what)
}

/// Reads a length prefix and returns that many bytes, advancing `buf` past them.
fn take_len<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], WireError> {
    let len = decode_varint(buf).map_err(|_| bad("length"))?;
    let len = usize::try_from(len).map_err(|_| bad("length"))?;
    if len > buf.len() {
        return Err(bad("length past the end"));
    }
    let (head, tail) = buf.split_at(len);
    *buf = tail;
    Ok(head)
}

/// Walks the fields of one message, handing each field-1 length-delimited value to `f` and
/// skipping the others.
fn each_field_one<'a>(
    mut msg: &'a [u8],
    mut f: impl FnMut(&'a [u8]) -> Result<(), WireError>,
) -> Result<(), WireError> {
    while !msg.is_empty() {
        let (tag, wire_type) = decode_key(&mut msg).map_err(|_| bad("field key"))?;
        if tag == FIELD_ONE && wire_type == WireType::LengthDelimited {
            f(take_len(&mut msg)?)?;
        } else {
            prost::encoding::skip_field(wire_type, tag, &mut msg, DecodeContext::default())
                .map_err(|_| bad("field"))?;
        }
    }
    Ok(())
}

/// The attribute keys of one encoded `ResourceSpans`' resource (every occurrence of the
/// `resource` field, as a decoder merges them; a `KeyValue`'s last `key` wins).
fn resource_keys(resource_spans: &[u8]) -> Result<Vec<&str>, WireError> {
    let mut keys = Vec::new();
    each_field_one(resource_spans, |resource| {
        each_field_one(resource, |key_value| {
            let mut key = "";
            each_field_one(key_value, |k| {
                key = std::str::from_utf8(k).map_err(|_| bad("key is not UTF-8"))?;
                Ok(())
            })?;
            keys.push(key);
            Ok(())
        })
    })?;
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use proptest::prelude::*;

    fn extra() -> ExtraResource {
        ExtraResource::new([
            ("k8s.pod.name".to_owned(), "checkout-7d9f".to_owned()),
            ("k8s.namespace.name".to_owned(), "shop".to_owned()),
        ])
    }

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    fn keys(r: &Option<Resource>) -> Vec<(String, String)> {
        r.as_ref()
            .map(|r| {
                r.attributes
                    .iter()
                    .map(|a| {
                        let v = match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                            Some(any_value::Value::StringValue(s)) => s.clone(),
                            other => format!("{other:?}"),
                        };
                        (a.key.clone(), v)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn adds_only_missing_keys_and_creates_a_resource() {
        let mut req = ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![kv("service.name", "a"), kv("k8s.pod.name", "sdk-said")],
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ResourceSpans::default(),
            ],
        };
        let encoded = extra()
            .apply_encoded_traces(&req.encode_to_vec())
            .expect("valid");
        extra().apply_traces(&mut req);
        let decoded = ExportTraceServiceRequest::decode(&encoded[..]).expect("decodes");
        assert_eq!(decoded, req);
        let s = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(
            keys(&req.resource_spans[0].resource),
            vec![
                s("service.name", "a"),
                s("k8s.pod.name", "sdk-said"),
                s("k8s.namespace.name", "shop")
            ]
        );
        assert_eq!(
            keys(&req.resource_spans[1].resource),
            vec![
                s("k8s.pod.name", "checkout-7d9f"),
                s("k8s.namespace.name", "shop")
            ]
        );
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans::default()],
        };
        let mut bytes = req.encode_to_vec();
        bytes.push(0x0a);
        bytes.push(0x05);
        assert!(extra().apply_encoded_traces(&bytes).is_err());
    }

    fn any_resource() -> impl Strategy<Value = Option<Resource>> {
        let key = prop::sample::select(vec![
            "service.name",
            "k8s.pod.name",
            "k8s.namespace.name",
            "host.name",
            "",
        ]);
        prop::option::of(
            (
                prop::collection::vec((key, "[a-z]{0,4}"), 0..4),
                any::<u32>(),
            )
                .prop_map(|(attrs, dropped)| Resource {
                    attributes: attrs.into_iter().map(|(k, v)| kv(k, &v)).collect(),
                    dropped_attributes_count: dropped,
                    ..Default::default()
                }),
        )
    }

    fn any_request() -> impl Strategy<Value = ExportTraceServiceRequest> {
        let rs = (any_resource(), "[a-z]{0,3}", 0usize..3).prop_map(|(resource, url, n)| {
            ResourceSpans {
                resource,
                schema_url: url,
                scope_spans: vec![ScopeSpans {
                    spans: (0..n)
                        .map(|i| Span {
                            name: format!("s{i}"),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
            }
        });
        prop::collection::vec(rs, 0..4)
            .prop_map(|resource_spans| ExportTraceServiceRequest { resource_spans })
    }

    proptest! {
        /// What prost decodes from the rewritten bytes is what the decoded path builds, for
        /// requests with and without resources, with some keys already present, and with an
        /// unknown field (kept as bytes, skipped by prost) and requests concatenated as batches
        /// concatenate them.
        #[test]
        fn encoded_agrees_with_decoded(
            a in any_request(),
            b in any_request(),
            unknown in prop::option::of(prop::collection::vec(any::<u8>(), 0..8)),
        ) {
            let mut bytes = a.encode_to_vec();
            if let Some(u) = &unknown {
                // Field 7, length-delimited: unknown to ExportTraceServiceRequest.
                bytes.push(0x3a);
                encode_varint(u.len() as u64, &mut bytes);
                bytes.extend_from_slice(u);
            }
            bytes.extend_from_slice(&b.encode_to_vec());
            let rewritten = extra().apply_encoded_traces(&bytes).expect("valid input");
            let mut want = ExportTraceServiceRequest::decode(&bytes[..]).expect("prost decodes");
            extra().apply_traces(&mut want);
            let got = ExportTraceServiceRequest::decode(&rewritten[..]).expect("still decodes");
            prop_assert_eq!(got, want);
            prop_assert!(crate::wire::traces(&rewritten, &mut ()).is_ok());
        }
    }
}

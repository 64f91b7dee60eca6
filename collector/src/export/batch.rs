//! Batching: envelopes taken from a queue until a batch holds `max_items` items or `max_bytes`
//! encoded bytes, or `linger` has passed since its first envelope; their payloads merged into one
//! export request by concatenating the `resource_*` lists ([`Payload::merge`]: for payloads kept
//! encoded, their bytes), so every resource and scope arrives exactly as it was received.

use std::time::Duration;

use tokio::time::Instant;

use crate::pipeline::{Envelope, Payload, Queue, Receipt};

/// When a batch is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Items (spans, data points, log records) at most; a batch is sent once it has this many.
    pub max_items: usize,
    /// Encoded bytes at most (one envelope larger than this travels alone).
    pub max_bytes: usize,
    /// The longest an envelope waits for others.
    pub linger: Duration,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            max_items: 8192,
            max_bytes: 512 << 10,
            linger: Duration::from_millis(200),
        }
    }
}

/// Envelopes merged into one request, with the receipts to complete once it is delivered.
#[derive(Debug)]
pub struct Batch {
    /// The merged request.
    pub payload: Payload,
    /// One share per envelope.
    pub receipts: Vec<Receipt>,
    /// Envelopes merged.
    pub envelopes: usize,
    /// Items inside.
    pub items: usize,
    /// Sum of the envelopes' encoded sizes (the merged encoding is this size: repeated fields
    /// concatenate).
    pub bytes: usize,
}

impl Batch {
    /// A batch of one envelope.
    pub fn from_envelope(env: Envelope) -> Self {
        let items = env.payload.items();
        Self {
            payload: env.payload,
            receipts: vec![env.receipt],
            envelopes: 1,
            items,
            bytes: env.bytes,
        }
    }

    /// Appends another envelope of the same signal (one of another signal is refused and handed
    /// back: a queue carries one signal).
    pub fn push(&mut self, env: Envelope) -> Result<(), Envelope> {
        let items = env.payload.items();
        if let Err(payload) = self.payload.merge(env.payload) {
            return Err(Envelope {
                payload,
                receipt: env.receipt,
                bytes: env.bytes,
            });
        }
        self.receipts.push(env.receipt);
        self.envelopes += 1;
        self.items += items;
        self.bytes += env.bytes;
        Ok(())
    }

    /// Completes every receipt (delivered, durably spilled, or permanently refused).
    pub fn complete(self) {
        for r in self.receipts {
            r.complete();
        }
    }
}

/// Builds batches from one queue; keeps the envelope that did not fit for the next batch.
#[derive(Debug)]
pub struct Batcher {
    limits: BatchLimits,
    carry: Option<Envelope>,
}

impl Batcher {
    /// A batcher with these limits.
    pub fn new(limits: BatchLimits) -> Self {
        Self {
            limits,
            carry: None,
        }
    }

    /// The next batch: waits for a first envelope, then for more until a limit is reached or
    /// `linger` has passed; once the queue is closed, takes only what is left without waiting.
    /// `None` when the queue is closed and empty.
    pub async fn next(&mut self, queue: &Queue) -> Option<Batch> {
        let first = match self.carry.take() {
            Some(e) => e,
            None => queue.pop().await?,
        };
        let mut batch = Batch::from_envelope(first);
        let deadline = Instant::now() + self.limits.linger;
        while batch.items < self.limits.max_items && batch.bytes < self.limits.max_bytes {
            let env = match queue.try_pop() {
                Some(e) => e,
                None if queue.is_closed() => break,
                None => match tokio::time::timeout_at(deadline, queue.pop()).await {
                    Ok(Some(e)) => e,
                    Ok(None) | Err(_) => break,
                },
            };
            if batch.bytes + env.bytes > self.limits.max_bytes
                || batch.items + env.payload.items() > self.limits.max_items
            {
                self.carry = Some(env);
                break;
            }
            if let Err(env) = batch.push(env) {
                self.carry = Some(env);
                break;
            }
        }
        Some(batch)
    }

    /// The envelope held over for the next batch, if any (at shutdown).
    pub fn take_carry(&mut self) -> Option<Envelope> {
        self.carry.take()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        AnyValue, InstrumentationScope, KeyValue, any_value,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    use super::*;
    use crate::pipeline::{QueueLimits, QueueStats};

    pub(crate) fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    /// Spans of one service: `scopes` scopes with `per_scope` spans each, named `{service}-{n}`.
    pub(crate) fn spans(service: &str, scopes: usize, per_scope: usize) -> Payload {
        Payload::Traces(ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", service)],
                    ..Default::default()
                }),
                scope_spans: (0..scopes)
                    .map(|s| ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: format!("scope-{s}"),
                            version: "1.0".into(),
                            attributes: vec![kv("scope.attr", &s.to_string())],
                            ..Default::default()
                        }),
                        spans: (0..per_scope)
                            .map(|i| Span {
                                name: format!("{service}-{s}-{i}"),
                                trace_id: vec![1; 16],
                                span_id: vec![2; 8],
                                ..Default::default()
                            })
                            .collect(),
                        ..Default::default()
                    })
                    .collect(),
                schema_url: "https://opentelemetry.io/schemas/1.21.0".into(),
            }],
        })
    }

    #[test]
    fn merging_keeps_every_resource_and_scope_in_order() {
        let a = spans("a", 2, 3);
        let b = spans("b", 1, 2);
        let c = spans("c", 3, 1);
        let mut batch = Batch::from_envelope(Envelope::new(a.clone(), Receipt::untracked()));
        batch
            .push(Envelope::new(b.clone(), Receipt::untracked()))
            .expect("same signal");
        batch
            .push(Envelope::new(c.clone(), Receipt::untracked()))
            .expect("same signal");
        assert_eq!(batch.items, 6 + 2 + 3);
        assert_eq!(batch.envelopes, 3);
        let Payload::Traces(merged) = &batch.payload else {
            panic!("traces")
        };
        let mut want = Vec::new();
        for p in [a, b, c] {
            let Payload::Traces(r) = p else { panic!() };
            want.extend(r.resource_spans);
        }
        assert_eq!(merged.resource_spans, want, "resources and scopes intact");
        assert_eq!(batch.payload.encoded_len(), batch.bytes);
        let logs = Payload::Logs(Default::default());
        assert!(
            batch
                .push(Envelope::new(logs, Receipt::untracked()))
                .is_err()
        );
    }

    #[test]
    fn encoded_payloads_merge_by_concatenation_with_decoded_ones_in_order() {
        use crate::pipeline::EncodedRequest;
        let (a, b, c) = (spans("a", 2, 3), spans("b", 1, 2), spans("c", 3, 1));
        let encoded = |p: &Payload| {
            Payload::Encoded(EncodedRequest::traces(p.encode_to_vec().into()).expect("valid"))
        };
        // decoded, encoded, encoded, decoded: the batch goes encoded at the first encoded one.
        let mut batch = Batch::from_envelope(Envelope::new(a.clone(), Receipt::untracked()));
        for p in [encoded(&b), encoded(&c), a.clone()] {
            batch
                .push(Envelope::new(p, Receipt::untracked()))
                .expect("same signal");
        }
        assert_eq!(batch.items, 6 + 2 + 3 + 6);
        assert_eq!(batch.payload.items(), batch.items);
        assert_eq!(batch.payload.encoded_len(), batch.bytes);
        let Ok(Payload::Traces(merged)) = batch.payload.clone().into_decoded() else {
            panic!("decodes")
        };
        let mut want = Vec::new();
        for p in [a.clone(), b, c, a] {
            let Payload::Traces(r) = p else { panic!() };
            want.extend(r.resource_spans);
        }
        assert_eq!(
            merged.resource_spans, want,
            "resources and scopes intact, in order"
        );
        let logs = Payload::Logs(Default::default());
        assert!(
            batch
                .push(Envelope::new(logs, Receipt::untracked()))
                .is_err(),
            "another signal is handed back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn batches_close_on_items_bytes_and_linger() {
        let q = Arc::new(Queue::new(
            "traces",
            QueueLimits {
                max_items: 100,
                max_bytes: 1 << 20,
            },
            QueueStats::default(),
        ));
        for i in 0..5 {
            q.try_push(Envelope::new(
                spans(&format!("s{i}"), 1, 4),
                Receipt::untracked(),
            ))
            .expect("room");
        }
        let mut b = Batcher::new(BatchLimits {
            max_items: 10,
            max_bytes: 1 << 20,
            linger: Duration::from_millis(200),
        });
        // 4 + 4 fit, the third envelope would make 12 > 10: carried over.
        let first = b.next(&q).await.expect("batch");
        assert_eq!((first.envelopes, first.items), (2, 8));
        let second = b.next(&q).await.expect("batch");
        assert_eq!((second.envelopes, second.items), (2, 8));
        // One left: the batch waits for the linger, then goes alone.
        let started = Instant::now();
        let third = b.next(&q).await.expect("batch");
        assert_eq!(third.envelopes, 1);
        assert_eq!(started.elapsed(), Duration::from_millis(200));

        let one = Envelope::new(spans("x", 1, 1), Receipt::untracked());
        let mut b = Batcher::new(BatchLimits {
            max_items: 1000,
            max_bytes: one.bytes * 2,
            linger: Duration::from_secs(1),
        });
        for _ in 0..3 {
            q.try_push(Envelope::new(spans("x", 1, 1), Receipt::untracked()))
                .expect("room");
        }
        let by_bytes = b.next(&q).await.expect("batch");
        assert_eq!(by_bytes.envelopes, 2, "closed by bytes");
        q.close();
        let rest = b.next(&q).await.expect("the rest, without lingering");
        assert_eq!(rest.envelopes, 1);
        assert!(b.next(&q).await.is_none());
    }
}

//! The hand-off between sources and sinks: OTLP [`Payload`]s travel in [`Envelope`]s through
//! bounded [`Queue`]s, and each envelope carries a [`Receipt`] that tells its source when every
//! sink is done with it.
//!
//! The contract, which the log tailer's checkpoints and the receivers' answers rely on:
//! - A source that needs to know when its data is safe (the log tailer, to advance a checkpoint)
//!   makes a [`Receipt::new`] with a callback and hands one [`Receipt::share`] to each sink. The
//!   callback runs once, when the last share is [completed](Receipt::complete). If any share is
//!   dropped without being completed (a sink gave up, the agent stopped with data queued), the
//!   callback never runs: the data counts as not delivered and the source offers it again (the
//!   tailer re-reads it after a restart).
//! - A sink completes its share once the data is delivered downstream, durably stored (a disk
//!   spill), or permanently refused by the downstream (counted by the sink: offering it again
//!   would only repeat the refusal).
//! - Every queue is bounded in envelopes and in bytes, and holds its payloads encoded
//!   ([`Payload::into_encoded`], done once by the [`Intake`] for every sink), so the byte bound
//!   is the memory the queued data takes. [`Queue::try_push`] refuses when
//!   full (receivers answer with a retryable status); [`Queue::push`] waits for room (the tailer:
//!   the files are the buffer). Nothing is dropped silently: the queue counts refusals, and a
//!   sink that drops (oldest first, from a capped spill) counts that in
//!   [`QueueStats::dropped`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Bytes, BytesMut};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use prost::Message;
use tokio::sync::Notify;

use crate::wire::{self, WireError};

/// The three OTLP signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    Traces,
    Metrics,
    Logs,
}

impl Signal {
    /// The label value (`traces`, `metrics`, `logs`).
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }

    /// All three, in a fixed order.
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Metrics, Signal::Logs];
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One OTLP export request, as received or as built by a source. Resources and scopes are kept
/// as they came: exporters forward these messages unchanged.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    Traces(ExportTraceServiceRequest),
    Metrics(ExportMetricsServiceRequest),
    Logs(ExportLogsServiceRequest),
    /// A request still in the protobuf encoding it was received in (checked to decode):
    /// forwarded as these bytes, so nothing is decoded into messages or encoded again.
    Encoded(EncodedRequest),
}

/// An export request's protobuf encoding, known to decode as its signal's request. Two of them
/// concatenated are the request holding both one's resources and then the other's (the export
/// requests have one field, a repeated one), which is how batches merge them.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedRequest {
    signal: Signal,
    bytes: Bytes,
    items: usize,
}

impl EncodedRequest {
    /// An encoded `ExportTraceServiceRequest`, checked ([`wire::traces`]).
    pub fn traces(bytes: Bytes) -> Result<Self, WireError> {
        let items = wire::traces(&bytes, &mut ())?;
        Ok(Self::traces_checked(bytes, items))
    }

    /// An encoded `ExportTraceServiceRequest` that [`wire::traces`] accepted, with the span
    /// count it returned.
    pub(crate) fn traces_checked(bytes: Bytes, items: usize) -> Self {
        Self {
            signal: Signal::Traces,
            bytes,
            items,
        }
    }

    /// An encoded `ExportLogsServiceRequest` written by [`crate::logs::otlp::encode_request`],
    /// which writes only what prost's decoder reads back (`logs::otlp` tests hold it to
    /// prost), with its record count.
    pub(crate) fn logs_written(bytes: Bytes, items: usize) -> Self {
        Self {
            signal: Signal::Logs,
            bytes,
            items,
        }
    }

    /// The encoding.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Appends `other` (same signal): the encoding of both requests merged.
    fn append(&mut self, other: &[u8], items: usize) {
        let bytes = std::mem::take(&mut self.bytes);
        let mut buf = bytes.try_into_mut().unwrap_or_else(|shared| {
            // Received bytes share their buffer: copy once, with room for more.
            let mut b = BytesMut::with_capacity(2 * (shared.len() + other.len()));
            b.extend_from_slice(&shared);
            b
        });
        buf.extend_from_slice(other);
        self.bytes = buf.freeze();
        self.items += items;
    }

    /// The decoded message.
    pub fn decode(&self) -> Result<Payload, prost::DecodeError> {
        let b = &self.bytes[..];
        Ok(match self.signal {
            Signal::Traces => Payload::Traces(ExportTraceServiceRequest::decode(b)?),
            Signal::Metrics => Payload::Metrics(ExportMetricsServiceRequest::decode(b)?),
            Signal::Logs => Payload::Logs(ExportLogsServiceRequest::decode(b)?),
        })
    }
}

impl Payload {
    /// Which signal this is.
    pub fn signal(&self) -> Signal {
        match self {
            Payload::Traces(_) => Signal::Traces,
            Payload::Metrics(_) => Signal::Metrics,
            Payload::Logs(_) => Signal::Logs,
            Payload::Encoded(e) => e.signal,
        }
    }

    /// Spans, data points or log records inside.
    pub fn items(&self) -> usize {
        match self {
            Payload::Traces(r) => r
                .resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .map(|ss| ss.spans.len())
                .sum(),
            Payload::Metrics(r) => r
                .resource_metrics
                .iter()
                .flat_map(|rm| &rm.scope_metrics)
                .flat_map(|sm| &sm.metrics)
                .map(metric_points)
                .sum(),
            Payload::Logs(r) => r
                .resource_logs
                .iter()
                .flat_map(|rl| &rl.scope_logs)
                .map(|sl| sl.log_records.len())
                .sum(),
            Payload::Encoded(e) => e.items,
        }
    }

    /// The protobuf-encoded size in bytes (what queues bound and exporters send).
    pub fn encoded_len(&self) -> usize {
        match self {
            Payload::Traces(r) => r.encoded_len(),
            Payload::Metrics(r) => r.encoded_len(),
            Payload::Logs(r) => r.encoded_len(),
            Payload::Encoded(e) => e.bytes.len(),
        }
    }

    /// Appends the protobuf encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        match self {
            Payload::Traces(r) => r.encode_raw(out),
            Payload::Metrics(r) => r.encode_raw(out),
            Payload::Logs(r) => r.encode_raw(out),
            Payload::Encoded(e) => out.extend_from_slice(&e.bytes),
        }
    }

    /// The protobuf encoding.
    pub fn encode_to_vec(&self) -> Vec<u8> {
        match self {
            Payload::Traces(r) => r.encode_to_vec(),
            Payload::Metrics(r) => r.encode_to_vec(),
            Payload::Logs(r) => r.encode_to_vec(),
            Payload::Encoded(e) => e.bytes.to_vec(),
        }
    }

    /// The protobuf encoding without a copy, when the payload is kept encoded.
    pub fn as_encoded(&self) -> Option<&[u8]> {
        match self {
            Payload::Encoded(e) => Some(&e.bytes),
            _ => None,
        }
    }

    /// The payload in its protobuf encoding (an encoded one as it is). What queues hold: a
    /// decoded request takes about three times its encoded size in memory (one allocation per
    /// string, attribute and value), so a queue bounded by encoded bytes holds what its bound
    /// says only when its items are kept encoded; and fanning out to several sinks then shares
    /// one buffer instead of copying the messages per sink.
    pub fn into_encoded(self) -> Payload {
        match self {
            Payload::Encoded(_) => self,
            p => {
                let signal = p.signal();
                let items = p.items();
                let bytes = Bytes::from(p.encode_to_vec());
                Payload::Encoded(EncodedRequest {
                    signal,
                    bytes,
                    items,
                })
            }
        }
    }

    /// The payload as messages (decoding an encoded one; the others as they are).
    pub fn into_decoded(self) -> Result<Payload, prost::DecodeError> {
        match self {
            Payload::Encoded(e) => e.decode(),
            p => Ok(p),
        }
    }

    /// Merges `other` (same signal) after this payload's resources, as one export request.
    /// Hands `other` back if its signal differs.
    pub fn merge(&mut self, other: Payload) -> Result<(), Payload> {
        if self.signal() != other.signal() {
            return Err(other);
        }
        match (&mut *self, other) {
            (Payload::Traces(a), Payload::Traces(b)) => a.resource_spans.extend(b.resource_spans),
            (Payload::Metrics(a), Payload::Metrics(b)) => {
                a.resource_metrics.extend(b.resource_metrics)
            }
            (Payload::Logs(a), Payload::Logs(b)) => a.resource_logs.extend(b.resource_logs),
            (Payload::Encoded(a), b) => {
                let items = b.items();
                match b.as_encoded() {
                    Some(bytes) => a.append(bytes, items),
                    None => a.append(&b.encode_to_vec(), items),
                }
            }
            (a, b) => {
                // A decoded payload followed by an encoded one: the batch goes encoded.
                let mut e = EncodedRequest {
                    signal: a.signal(),
                    bytes: Bytes::from(a.encode_to_vec()),
                    items: a.items(),
                };
                let items = b.items();
                match b.as_encoded() {
                    Some(bytes) => e.append(bytes, items),
                    None => e.append(&b.encode_to_vec(), items),
                }
                *a = Payload::Encoded(e);
            }
        }
        Ok(())
    }
}

fn metric_points(m: &opentelemetry_proto::tonic::metrics::v1::Metric) -> usize {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    match &m.data {
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(Data::Summary(s)) => s.data_points.len(),
        None => 0,
    }
}

// ---------------------------------------------------------------------------------------------
// Receipts.

struct ReceiptInner {
    on_delivered: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    abandoned: AtomicBool,
}

impl Drop for ReceiptInner {
    fn drop(&mut self) {
        if !self.abandoned.load(Ordering::Acquire)
            && let Some(f) = self.on_delivered.get_mut().take()
        {
            f();
        }
    }
}

/// A share in the delivery of one envelope. See the module docs for the contract.
pub struct Receipt {
    inner: Option<Arc<ReceiptInner>>,
    completed: bool,
}

impl std::fmt::Debug for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receipt")
            .field("tracked", &self.inner.is_some())
            .finish()
    }
}

impl Receipt {
    /// A receipt whose callback runs once every share is completed (and never if one is
    /// abandoned). The returned receipt is itself the first share.
    pub fn new(on_delivered: impl FnOnce() + Send + 'static) -> Self {
        Self {
            inner: Some(Arc::new(ReceiptInner {
                on_delivered: Mutex::new(Some(Box::new(on_delivered))),
                abandoned: AtomicBool::new(false),
            })),
            completed: false,
        }
    }

    /// A receipt nobody waits for (data whose sender has already been answered).
    pub fn untracked() -> Self {
        Self {
            inner: None,
            completed: false,
        }
    }

    /// One more share: the callback now also waits for this one.
    pub fn share(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            completed: false,
        }
    }

    /// Whether anyone waits for this receipt.
    pub fn is_tracked(&self) -> bool {
        self.inner.is_some()
    }

    /// This share is done: delivered, durably stored, or permanently refused downstream.
    pub fn complete(mut self) {
        self.completed = true;
    }
}

impl Drop for Receipt {
    fn drop(&mut self) {
        if !self.completed
            && let Some(inner) = &self.inner
        {
            inner.abandoned.store(true, Ordering::Release);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Queues.

/// One payload on its way to one sink.
#[derive(Debug)]
pub struct Envelope {
    pub payload: Payload,
    pub receipt: Receipt,
    /// `payload.encoded_len()`, computed once.
    pub bytes: usize,
}

impl Envelope {
    /// Wraps a payload with its receipt share.
    pub fn new(payload: Payload, receipt: Receipt) -> Self {
        let bytes = payload.encoded_len();
        Self::with_bytes(payload, receipt, bytes)
    }

    /// Wraps a payload whose encoded size is already known.
    pub fn with_bytes(payload: Payload, receipt: Receipt, bytes: usize) -> Self {
        Self {
            payload,
            receipt,
            bytes,
        }
    }
}

/// Why a push did not take the envelope (which is handed back).
#[derive(Debug)]
pub enum PushError {
    /// The queue is at its bound (only from [`Queue::try_push`]).
    Full(Envelope),
    /// The queue is closed: its consumer stopped.
    Closed(Envelope),
}

impl PushError {
    /// The envelope that was not taken.
    pub fn into_envelope(self) -> Envelope {
        match self {
            PushError::Full(e) | PushError::Closed(e) => e,
        }
    }
}

/// Bounds of one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Envelopes at most.
    pub max_items: usize,
    /// Encoded bytes at most. An envelope larger than this is taken only into an empty queue
    /// (so a single large request is never refused forever).
    pub max_bytes: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self {
            max_items: 1024,
            max_bytes: 64 << 20,
        }
    }
}

type QueueLabel = [(&'static str, String); 1];

/// Self-metrics of every queue, labelled `queue` (one set per agent).
#[derive(Debug, Clone, Default)]
pub struct QueueStats {
    /// `sidelight_queue_depth{queue}`: envelopes waiting.
    pub depth: Family<QueueLabel, Gauge>,
    /// `sidelight_queue_bytes{queue}`: encoded bytes waiting.
    pub bytes: Family<QueueLabel, Gauge>,
    /// `sidelight_queue_capacity{queue}`: the envelope bound.
    pub capacity: Family<QueueLabel, Gauge>,
    /// `sidelight_queue_capacity_bytes{queue}`: the byte bound.
    pub capacity_bytes: Family<QueueLabel, Gauge>,
    /// `sidelight_queue_refused_total{queue}`: pushes refused because the queue was full.
    pub refused: Family<QueueLabel, Counter>,
    /// `sidelight_queue_dropped_total{queue}`: envelopes dropped by the queue's consumer
    /// (e.g. oldest first from a capped disk spill).
    pub dropped: Family<QueueLabel, Counter>,
}

impl QueueStats {
    /// Registers every family.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sidelight_queue_depth",
            "Envelopes waiting in a queue",
            self.depth.clone(),
        );
        registry.register(
            "sidelight_queue_bytes",
            "Encoded bytes waiting in a queue",
            self.bytes.clone(),
        );
        registry.register(
            "sidelight_queue_capacity",
            "Envelopes a queue holds at most",
            self.capacity.clone(),
        );
        registry.register(
            "sidelight_queue_capacity_bytes",
            "Encoded bytes a queue holds at most",
            self.capacity_bytes.clone(),
        );
        registry.register(
            "sidelight_queue_refused",
            "Pushes refused because a queue was full (the sender was told to retry)",
            self.refused.clone(),
        );
        registry.register(
            "sidelight_queue_dropped",
            "Envelopes dropped from a queue (counted, never silent)",
            self.dropped.clone(),
        );
    }
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Envelope>,
    bytes: usize,
    closed: bool,
}

/// A bounded multi-producer queue of envelopes for one sink. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Queue {
    label: QueueLabel,
    limits: Mutex<QueueLimits>,
    state: Mutex<State>,
    not_empty: Notify,
    not_full: Notify,
    stats: QueueStats,
}

impl Queue {
    /// A queue named `name` (the `queue` label), bounded by `limits`.
    pub fn new(name: &str, limits: QueueLimits, stats: QueueStats) -> Self {
        let q = Self {
            label: [("queue", name.to_owned())],
            limits: Mutex::new(limits),
            state: Mutex::new(State::default()),
            not_empty: Notify::new(),
            not_full: Notify::new(),
            stats,
        };
        q.publish_limits(limits);
        q.publish_depth(0, 0);
        q
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.label[0].1
    }

    /// Changes the bounds in place (a reload); waiting producers re-check.
    pub fn set_limits(&self, limits: QueueLimits) {
        *self.limits.lock() = limits;
        self.publish_limits(limits);
        self.not_full.notify_waiters();
    }

    /// The current bounds.
    pub fn limits(&self) -> QueueLimits {
        *self.limits.lock()
    }

    fn publish_limits(&self, l: QueueLimits) {
        self.stats
            .capacity
            .get_or_create(&self.label)
            .set(i64::try_from(l.max_items).unwrap_or(i64::MAX));
        self.stats
            .capacity_bytes
            .get_or_create(&self.label)
            .set(i64::try_from(l.max_bytes).unwrap_or(i64::MAX));
    }

    fn publish_depth(&self, items: usize, bytes: usize) {
        self.stats
            .depth
            .get_or_create(&self.label)
            .set(i64::try_from(items).unwrap_or(i64::MAX));
        self.stats
            .bytes
            .get_or_create(&self.label)
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    fn fits(state: &State, limits: QueueLimits, bytes: usize) -> bool {
        state.items.is_empty()
            || (state.items.len() < limits.max_items && state.bytes + bytes <= limits.max_bytes)
    }

    /// Whether an envelope of `bytes` would be taken now.
    pub fn has_room(&self, bytes: usize) -> bool {
        let limits = self.limits();
        let state = self.state.lock();
        !state.closed && Self::fits(&state, limits, bytes)
    }

    /// Counts one refused push (for callers that checked [`has_room`](Self::has_room)).
    pub fn count_refused(&self) {
        self.stats.refused.get_or_create(&self.label).inc();
    }

    /// Takes the envelope if there is room now; refuses (and counts) otherwise.
    pub fn try_push(&self, env: Envelope) -> Result<(), PushError> {
        let pushed = self.push_now(env);
        if matches!(pushed, Err(PushError::Full(_))) {
            self.stats.refused.get_or_create(&self.label).inc();
        }
        pushed
    }

    /// [`try_push`](Self::try_push) without counting a refusal: for a producer that waits for
    /// room instead when there is none.
    fn push_now(&self, env: Envelope) -> Result<(), PushError> {
        let limits = self.limits();
        let mut state = self.state.lock();
        if state.closed {
            return Err(PushError::Closed(env));
        }
        if !Self::fits(&state, limits, env.bytes) {
            return Err(PushError::Full(env));
        }
        self.enqueue(&mut state, env);
        Ok(())
    }

    /// Takes the envelope, waiting for room as long as needed.
    pub async fn push(&self, env: Envelope) -> Result<(), PushError> {
        loop {
            let notified = self.not_full.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let limits = self.limits();
                let mut state = self.state.lock();
                if state.closed {
                    return Err(PushError::Closed(env));
                }
                if Self::fits(&state, limits, env.bytes) {
                    self.enqueue(&mut state, env);
                    return Ok(());
                }
            }
            notified.await;
        }
    }

    fn enqueue(&self, state: &mut State, env: Envelope) {
        state.bytes += env.bytes;
        state.items.push_back(env);
        self.publish_depth(state.items.len(), state.bytes);
        self.not_empty.notify_one();
    }

    /// The next envelope, waiting for one; `None` once closed and empty.
    pub async fn pop(&self) -> Option<Envelope> {
        loop {
            let notified = self.not_empty.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.state.lock();
                if let Some(env) = self.dequeue(&mut state) {
                    return Some(env);
                }
                if state.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// The next envelope if one is waiting.
    pub fn try_pop(&self) -> Option<Envelope> {
        let mut state = self.state.lock();
        self.dequeue(&mut state)
    }

    fn dequeue(&self, state: &mut State) -> Option<Envelope> {
        let env = state.items.pop_front()?;
        state.bytes -= env.bytes;
        self.publish_depth(state.items.len(), state.bytes);
        // More than one producer may fit in the room just made (a large envelope left).
        self.not_full.notify_waiters();
        if !state.items.is_empty() {
            self.not_empty.notify_one();
        }
        Some(env)
    }

    /// Counts `n` envelopes that the consumer dropped (e.g. from a capped spill).
    pub fn count_dropped(&self, n: u64) {
        self.stats.dropped.get_or_create(&self.label).inc_by(n);
    }

    /// Refuses further pushes; `pop` drains what is left, then returns `None`.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.not_empty.notify_waiters();
        self.not_full.notify_waiters();
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Envelopes and bytes waiting now.
    pub fn depth(&self) -> (usize, usize) {
        let s = self.state.lock();
        (s.items.len(), s.bytes)
    }
}

// ---------------------------------------------------------------------------------------------
// The intake: where sources hand payloads to the sinks of their signal.

/// Why the intake did not take a payload.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The sink's queue is full: the sender should retry later (gRPC `UNAVAILABLE`, HTTP 503
    /// with `Retry-After`).
    #[error("the {0} queue is full")]
    Full(Signal),
    /// The agent is stopping.
    #[error("the {0} pipeline is closed")]
    Closed(Signal),
}

/// Where payloads go, per signal: the queues of the sinks that forward that signal (the OTLP
/// exporter, the file exporter), or none (nothing forwards it: the payload is taken and dropped
/// by design, after whatever the source derives from it, such as span metrics).
#[derive(Debug, Clone, Default)]
pub struct Intake {
    traces: Vec<Arc<Queue>>,
    metrics: Vec<Arc<Queue>>,
    logs: Vec<Arc<Queue>>,
}

impl Intake {
    /// An intake that forwards nothing.
    pub fn discard() -> Self {
        Self::default()
    }

    /// Routes `signal` to `queue` too (each sink of a signal has its own queue).
    pub fn with(mut self, signal: Signal, queue: Arc<Queue>) -> Self {
        self.slot(signal).push(queue);
        self
    }

    fn slot(&mut self, signal: Signal) -> &mut Vec<Arc<Queue>> {
        match signal {
            Signal::Traces => &mut self.traces,
            Signal::Metrics => &mut self.metrics,
            Signal::Logs => &mut self.logs,
        }
    }

    /// The queues of `signal` (empty if nothing forwards it).
    pub fn queues(&self, signal: Signal) -> &[Arc<Queue>] {
        match signal {
            Signal::Traces => &self.traces,
            Signal::Metrics => &self.metrics,
            Signal::Logs => &self.logs,
        }
    }

    /// Whether anything forwards `signal`.
    pub fn forwards(&self, signal: Signal) -> bool {
        !self.queues(signal).is_empty()
    }

    /// For receivers, before a request is decoded: refuses (and counts) when a queue of
    /// `signal` has no room at all now, so a full pipeline does not pay for decoding what it
    /// will refuse. `None`: go ahead and [`offer`](Self::offer), which still decides.
    pub fn refuse_early(&self, signal: Signal) -> Option<Refused> {
        let q = self.queues(signal).iter().find(|q| !q.has_room(1))?;
        if q.is_closed() {
            return Some(Refused::Closed(signal));
        }
        q.count_refused();
        Some(Refused::Full(signal))
    }

    /// For receivers: takes the payload now or refuses it (the sender still holds it and
    /// retries). Taken payloads are the sinks' responsibility (untracked receipts).
    ///
    /// With several sinks, every queue is checked for room first; a push that still loses a
    /// race to another producer refuses the whole payload, and the sinks that took it will see
    /// it again when the sender retries (at-least-once, never lost).
    pub fn offer(&self, payload: Payload) -> Result<(), Refused> {
        let signal = payload.signal();
        let queues = self.queues(signal);
        let Some((last, rest)) = queues.split_last() else {
            return Ok(());
        };
        let bytes = payload.encoded_len();
        if let Some(full) = queues.iter().find(|q| !q.has_room(bytes)) {
            full.count_refused();
            return Err(Refused::Full(signal));
        }
        // Encoded only once taken: a refused request costs no encoding.
        let payload = payload.into_encoded();
        let refused = |e: PushError| match e {
            PushError::Full(_) => Refused::Full(signal),
            PushError::Closed(_) => Refused::Closed(signal),
        };
        for q in rest {
            q.try_push(Envelope::with_bytes(
                payload.clone(),
                Receipt::untracked(),
                bytes,
            ))
            .map_err(refused)?;
        }
        last.try_push(Envelope::with_bytes(payload, Receipt::untracked(), bytes))
            .map_err(refused)
    }

    /// For sources that keep their own data (the log tailer): waits for room in every sink's
    /// queue, then hands the payload on with a share of `receipt` each. With no sink for the
    /// signal the receipt is completed at once. On `Err` the remaining shares were abandoned
    /// (the agent is stopping), so the receipt never fires.
    pub async fn deliver(&self, payload: Payload, receipt: Receipt) -> Result<(), Refused> {
        let signal = payload.signal();
        if !self.forwards(signal) {
            receipt.complete();
            return Ok(());
        }
        let payload = payload.into_encoded();
        let bytes = payload.encoded_len();
        self.push_from(0, payload, receipt, bytes).await
    }

    /// [`deliver`](Self::deliver) without waiting, for a source on a thread of its own (the
    /// log tailer): hands the payload to every sink's queue that has room now, in order, and
    /// stops at the first that has none (or is closed). What is left is returned, to be
    /// completed with [`finish`](Self::finish) (which waits); the queues that took it keep
    /// their shares, so nothing is pushed twice and the receipt still fires only once every
    /// sink has it. A refusal here is not counted: the caller waits instead of giving up.
    pub fn try_deliver(&self, payload: Payload, receipt: Receipt) -> Result<(), Box<Pending>> {
        let Some(mut pending) = self.pending(payload, receipt) else {
            return Ok(());
        };
        let queues = self.queues(pending.signal);
        loop {
            let Pending {
                signal,
                at,
                next,
                rest,
            } = pending;
            let Some(q) = queues.get(at) else {
                return Err(Box::new(Pending {
                    signal,
                    at,
                    next,
                    rest,
                }));
            };
            let bytes = next.bytes;
            if let Err(e) = q.push_now(next) {
                return Err(Box::new(Pending {
                    signal,
                    at,
                    next: e.into_envelope(),
                    rest,
                }));
            }
            let Some((payload, receipt)) = rest else {
                return Ok(());
            };
            let (next, rest) = envelope_for(at + 2 == queues.len(), payload, receipt, bytes);
            pending = Pending {
                signal,
                at: at + 1,
                next,
                rest,
            };
        }
    }

    /// A delivery not even tried now, for [`finish`](Self::finish) (behind an earlier one
    /// that is still pending, to keep their order). `Ok` when nothing forwards the signal (the
    /// receipt is completed then).
    pub fn defer(&self, payload: Payload, receipt: Receipt) -> Result<(), Box<Pending>> {
        match self.pending(payload, receipt) {
            Some(pending) => Err(Box::new(pending)),
            None => Ok(()),
        }
    }

    /// The delivery to the signal's first queue, not tried yet; `None` (the receipt completed)
    /// when nothing forwards the signal.
    fn pending(&self, payload: Payload, receipt: Receipt) -> Option<Pending> {
        let signal = payload.signal();
        let queues = self.queues(signal);
        if queues.is_empty() {
            receipt.complete();
            return None;
        }
        let payload = payload.into_encoded();
        let bytes = payload.encoded_len();
        let (next, rest) = envelope_for(queues.len() == 1, payload, receipt, bytes);
        Some(Pending {
            signal,
            at: 0,
            next,
            rest,
        })
    }

    /// Completes a [`try_deliver`](Self::try_deliver) that could not finish: waits for room in
    /// the queue that refused, then goes on with the rest. `Err` as for
    /// [`deliver`](Self::deliver).
    pub async fn finish(&self, pending: Box<Pending>) -> Result<(), Refused> {
        let Pending {
            signal,
            at,
            next,
            rest,
        } = *pending;
        let closed = |_| Refused::Closed(signal);
        let Some(q) = self.queues(signal).get(at) else {
            return Err(Refused::Closed(signal));
        };
        let bytes = next.bytes;
        q.push(next).await.map_err(closed)?;
        match rest {
            Some((payload, receipt)) => self.push_from(at + 1, payload, receipt, bytes).await,
            None => Ok(()),
        }
    }

    /// Waits for room in each queue of the payload's signal from `from` on and pushes it there,
    /// the receipt itself going to the last one.
    async fn push_from(
        &self,
        from: usize,
        payload: Payload,
        receipt: Receipt,
        bytes: usize,
    ) -> Result<(), Refused> {
        let signal = payload.signal();
        let closed = |_| Refused::Closed(signal);
        let Some((last, rest)) = self.queues(signal).get(from..).and_then(<[_]>::split_last) else {
            // No queue left to hold the receipt: the intake changed under a pending delivery.
            return Err(Refused::Closed(signal));
        };
        for q in rest {
            q.push(Envelope::with_bytes(
                payload.clone(),
                receipt.share(),
                bytes,
            ))
            .await
            .map_err(closed)?;
        }
        last.push(Envelope::with_bytes(payload, receipt, bytes))
            .await
            .map_err(closed)
    }
}

/// The envelope for one sink's queue, with a share of the receipt, and what is left for the
/// queues after it; the last queue gets the payload and the receipt themselves.
fn envelope_for(
    last: bool,
    payload: Payload,
    receipt: Receipt,
    bytes: usize,
) -> (Envelope, Option<(Payload, Receipt)>) {
    if last {
        (Envelope::with_bytes(payload, receipt, bytes), None)
    } else {
        let env = Envelope::with_bytes(payload.clone(), receipt.share(), bytes);
        (env, Some((payload, receipt)))
    }
}

/// What an [`Intake::try_deliver`] could not hand on without waiting (or what
/// [`Intake::defer`] did not try): the envelope for the queue at `at` and, when more queues
/// follow it, the payload and receipt for them. Dropping it abandons the receipt.
#[derive(Debug)]
pub struct Pending {
    signal: Signal,
    at: usize,
    next: Envelope,
    rest: Option<(Payload, Receipt)>,
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};

    use super::*;

    fn logs(n: usize) -> Payload {
        Payload::Logs(ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: (0..n)
                        .map(|i| LogRecord {
                            time_unix_nano: i as u64 + 1,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        })
    }

    fn counter() -> (Arc<AtomicUsize>, impl FnOnce() + Send + 'static) {
        let c = Arc::new(AtomicUsize::new(0));
        let c2 = c.clone();
        (c, move || {
            c2.fetch_add(1, Ordering::SeqCst);
        })
    }

    #[tokio::test]
    async fn intake_routes_by_signal_and_refuses_when_full() {
        let q = Arc::new(Queue::new(
            "logs",
            QueueLimits {
                max_items: 1,
                max_bytes: 1 << 20,
            },
            QueueStats::default(),
        ));
        let intake = Intake::discard().with(Signal::Logs, q.clone());
        assert!(intake.forwards(Signal::Logs) && !intake.forwards(Signal::Traces));
        intake.offer(logs(1)).expect("room");
        assert!(matches!(
            intake.offer(logs(1)),
            Err(Refused::Full(Signal::Logs))
        ));
        let traces = Payload::Traces(ExportTraceServiceRequest::default());
        intake
            .offer(traces)
            .expect("nothing forwards traces: taken");

        let (fired, f) = counter();
        Intake::discard()
            .deliver(logs(1), Receipt::new(f))
            .await
            .expect("no sink");
        assert_eq!(
            fired.load(Ordering::SeqCst),
            1,
            "no sink: delivered at once"
        );

        let (fired, f) = counter();
        let pending = {
            let intake = intake.clone();
            tokio::spawn(async move { intake.deliver(logs(2), Receipt::new(f)).await })
        };
        q.pop().await.expect("first").receipt.complete();
        pending
            .await
            .expect("join")
            .expect("delivered into the queue");
        assert_eq!(fired.load(Ordering::SeqCst), 0, "queued, not yet sent");
        q.pop().await.expect("second").receipt.complete();
        assert_eq!(fired.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn try_deliver_takes_what_has_room_and_finish_waits_for_the_rest() {
        let limits = QueueLimits {
            max_items: 1,
            max_bytes: 1 << 20,
        };
        let stats = QueueStats::default();
        let a = Arc::new(Queue::new("a", limits, stats.clone()));
        let b = Arc::new(Queue::new("b", limits, stats.clone()));
        let intake = Intake::discard()
            .with(Signal::Logs, a.clone())
            .with(Signal::Logs, b.clone());

        let (fired, f) = counter();
        intake
            .try_deliver(logs(1), Receipt::new(f))
            .expect("room in both");
        assert_eq!((a.depth().0, b.depth().0), (1, 1));
        a.try_pop().expect("a").receipt.complete();

        // b is full: a takes its share now, the rest waits.
        let (fired2, f2) = counter();
        let pending = intake
            .try_deliver(logs(2), Receipt::new(f2))
            .expect_err("b is full");
        assert_eq!((a.depth().0, b.depth().0), (1, 1));
        let refused = stats
            .refused
            .get_or_create(&[("queue", "b".to_owned())])
            .get();
        assert_eq!(refused, 0, "a refusal the caller waits out is not counted");
        let finishing = {
            let intake = intake.clone();
            tokio::spawn(async move { intake.finish(pending).await })
        };
        b.pop().await.expect("b, first").receipt.complete();
        assert_eq!(fired.load(Ordering::SeqCst), 1);
        finishing.await.expect("join").expect("room in b");
        a.pop().await.expect("a, second").receipt.complete();
        assert_eq!(fired2.load(Ordering::SeqCst), 0, "b still holds its share");
        let second = b.pop().await.expect("b, second");
        assert_eq!(second.payload.items(), 2);
        second.receipt.complete();
        assert_eq!(fired2.load(Ordering::SeqCst), 1, "fired once, after both");

        // Deferred: nothing pushed until finished, in order behind what came first.
        let (fired3, f3) = counter();
        let deferred = intake.defer(logs(3), Receipt::new(f3)).expect_err("sinks");
        assert_eq!((a.depth().0, b.depth().0), (0, 0));
        intake.finish(deferred).await.expect("room");
        for q in [&a, &b] {
            let env = q.pop().await.expect("deferred");
            assert_eq!(env.payload.items(), 3);
            env.receipt.complete();
        }
        assert_eq!(fired3.load(Ordering::SeqCst), 1);

        // A closed queue: finishing fails and the receipt never fires.
        let (fired4, f4) = counter();
        a.close();
        let pending = intake
            .try_deliver(logs(1), Receipt::new(f4))
            .expect_err("closed");
        assert!(matches!(
            intake.finish(pending).await,
            Err(Refused::Closed(Signal::Logs))
        ));
        assert_eq!(fired4.load(Ordering::SeqCst), 0);

        // Nothing forwards traces: taken at once.
        let (fired5, f5) = counter();
        Intake::discard()
            .try_deliver(logs(1), Receipt::new(f5))
            .expect("no sink");
        assert_eq!(fired5.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn fan_out_waits_for_every_sink() {
        let limits = QueueLimits {
            max_items: 1,
            max_bytes: 1 << 20,
        };
        let a = Arc::new(Queue::new("a", limits, QueueStats::default()));
        let b = Arc::new(Queue::new("b", limits, QueueStats::default()));
        let intake = Intake::discard()
            .with(Signal::Logs, a.clone())
            .with(Signal::Logs, b.clone());
        let (fired, f) = counter();
        intake
            .deliver(logs(2), Receipt::new(f))
            .await
            .expect("room in both");
        a.pop().await.expect("a").receipt.complete();
        assert_eq!(fired.load(Ordering::SeqCst), 0, "b still holds its share");
        // b is full: a receiver's offer is refused without touching a.
        assert!(matches!(intake.offer(logs(1)), Err(Refused::Full(_))));
        assert_eq!(a.depth().0, 0);
        b.pop().await.expect("b").receipt.complete();
        assert_eq!(fired.load(Ordering::SeqCst), 1);
        intake.offer(logs(1)).expect("room again");
        assert_eq!((a.depth().0, b.depth().0), (1, 1));
    }

    #[test]
    fn receipt_fires_once_after_every_share_completes() {
        let (fired, f) = counter();
        let r = Receipt::new(f);
        let a = r.share();
        let b = r.share();
        r.complete();
        a.complete();
        assert_eq!(fired.load(Ordering::SeqCst), 0, "b is still out");
        b.complete();
        assert_eq!(fired.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn an_abandoned_share_means_not_delivered() {
        let (fired, f) = counter();
        let r = Receipt::new(f);
        let a = r.share();
        r.complete();
        drop(a);
        assert_eq!(fired.load(Ordering::SeqCst), 0);
        Receipt::untracked().complete();
        drop(Receipt::untracked());
    }

    #[test]
    fn payload_counts_items_and_bytes() {
        let p = logs(3);
        assert_eq!(p.signal(), Signal::Logs);
        assert_eq!(p.items(), 3);
        assert_eq!(p.encoded_len(), p.encode_to_vec().len());
    }

    #[test]
    fn try_push_refuses_and_counts_when_full() {
        let stats = QueueStats::default();
        let q = Queue::new(
            "logs",
            QueueLimits {
                max_items: 2,
                max_bytes: 1 << 20,
            },
            stats.clone(),
        );
        for _ in 0..2 {
            q.try_push(Envelope::new(logs(1), Receipt::untracked()))
                .expect("room");
        }
        let refused = q.try_push(Envelope::new(logs(1), Receipt::untracked()));
        assert!(matches!(refused, Err(PushError::Full(_))));
        let label = [("queue", "logs".to_owned())];
        assert_eq!(stats.refused.get_or_create(&label).get(), 1);
        assert_eq!(stats.depth.get_or_create(&label).get(), 2);
        assert_eq!(stats.capacity.get_or_create(&label).get(), 2);
    }

    #[test]
    fn byte_bound_and_oversized_envelope_into_empty_queue() {
        let big = Envelope::new(logs(50), Receipt::untracked());
        let limit = big.bytes - 1;
        let q = Queue::new(
            "t",
            QueueLimits {
                max_items: 10,
                max_bytes: limit,
            },
            QueueStats::default(),
        );
        q.try_push(big)
            .expect("an empty queue takes one oversized envelope");
        let small = Envelope::new(logs(1), Receipt::untracked());
        assert!(matches!(q.try_push(small), Err(PushError::Full(_))));
        assert_eq!(q.depth().0, 1);
    }

    #[tokio::test]
    async fn push_waits_for_room_and_pop_drains_after_close() {
        let q = Arc::new(Queue::new(
            "t",
            QueueLimits {
                max_items: 1,
                max_bytes: 1 << 20,
            },
            QueueStats::default(),
        ));
        q.push(Envelope::new(logs(1), Receipt::untracked()))
            .await
            .expect("room");
        let q2 = q.clone();
        let producer = tokio::spawn(async move {
            q2.push(Envelope::new(logs(2), Receipt::untracked()))
                .await
                .is_ok()
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!producer.is_finished(), "second push waits while full");
        let first = q.pop().await.expect("item");
        assert_eq!(first.payload.items(), 1);
        assert!(producer.await.expect("join"));
        q.close();
        assert_eq!(q.pop().await.expect("drained").payload.items(), 2);
        assert!(q.pop().await.is_none());
        let closed = q.try_push(Envelope::new(logs(1), Receipt::untracked()));
        assert!(matches!(closed, Err(PushError::Closed(_))));
    }

    #[tokio::test]
    async fn close_wakes_a_waiting_producer() {
        let q = Arc::new(Queue::new(
            "t",
            QueueLimits {
                max_items: 1,
                max_bytes: 1 << 20,
            },
            QueueStats::default(),
        ));
        q.try_push(Envelope::new(logs(1), Receipt::untracked()))
            .expect("room");
        let q2 = q.clone();
        let producer = tokio::spawn(async move {
            q2.push(Envelope::new(logs(1), Receipt::untracked()))
                .await
                .is_err()
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        q.close();
        assert!(producer.await.expect("join"), "closed while waiting");
    }

    #[tokio::test]
    async fn many_producers_one_consumer_lose_nothing() {
        let q = Arc::new(Queue::new(
            "t",
            QueueLimits {
                max_items: 4,
                max_bytes: 1 << 20,
            },
            QueueStats::default(),
        ));
        let (fired, _) = counter();
        let mut producers = Vec::new();
        for p in 0..4 {
            let q = q.clone();
            let fired = fired.clone();
            producers.push(tokio::spawn(async move {
                for i in 0..250 {
                    let fired = fired.clone();
                    let r = Receipt::new(move || {
                        fired.fetch_add(1, Ordering::SeqCst);
                    });
                    q.push(Envelope::new(logs(1 + (p + i) % 3), r))
                        .await
                        .expect("open");
                }
            }));
        }
        let consumer = {
            let q = q.clone();
            tokio::spawn(async move {
                let mut n = 0;
                while let Some(env) = q.pop().await {
                    env.receipt.complete();
                    n += 1;
                }
                n
            })
        };
        for p in producers {
            p.await.expect("join");
        }
        q.close();
        assert_eq!(consumer.await.expect("join"), 1000);
        assert_eq!(fired.load(Ordering::SeqCst), 1000);
    }
}

//! Prometheus remote write 1.0: everything `/metrics` serves, every interval, as one
//! `WriteRequest` (protobuf, snappy block format) with one timestamp per round, sent with the
//! same retry discipline as OTLP (5xx and 429 retried, honouring `Retry-After`; other 4xx
//! dropped and counted) from a bounded queue of encoded requests (oldest dropped and counted).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use prost::Message;
use tokio::sync::Notify;

use super::ExportStats;
use super::otlp::Shutdown;
use super::retry::{Backoff, Outcome, RetryPolicy, parse_retry_after};
use crate::model::{self, Snapshot};
use crate::pipeline::QueueStats;

const EXPORTER: &str = "remote_write";
const SIGNAL: &str = "metrics";

/// `prometheus.WriteRequest` (remote write 1.0; metadata omitted).
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    /// The series.
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// `prometheus.TimeSeries`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    /// Sorted by name.
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    /// Samples, oldest first.
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Label {
    /// Name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `prometheus.Sample`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    /// Value.
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// Builds one request from a snapshot: a series per sample as a scrape of `/metrics` would
/// store it (`_total`, `_bucket{le}`, `_sum`, `_count`, `_info`), labels sorted by name (so
/// `__name__` leads the usual lower-case labels), `external` labels added where the sample has no
/// label of that name, one timestamp for all.
pub fn write_request(
    snapshot: &Snapshot,
    external: &[(String, String)],
    timestamp_ms: i64,
) -> WriteRequest {
    let mut timeseries = Vec::new();
    for s in snapshot.samples() {
        let mut labels: Vec<Label> = Vec::with_capacity(s.labels.len() + 1 + external.len());
        labels.push(Label {
            name: "__name__".into(),
            value: s.name.into_owned(),
        });
        for (k, v) in s.labels.iter() {
            labels.push(Label {
                name: k.clone(),
                value: v.clone(),
            });
        }
        for (k, v) in external {
            if !labels.iter().any(|l| &l.name == k) {
                labels.push(Label {
                    name: k.clone(),
                    value: v.clone(),
                });
            }
        }
        labels.sort_by(|a, b| a.name.cmp(&b.name));
        timeseries.push(TimeSeries {
            labels,
            samples: vec![Sample {
                value: s.value,
                timestamp: timestamp_ms,
            }],
        });
    }
    WriteRequest { timeseries }
}

/// The protobuf encoding compressed with snappy's block format (what remote write requires;
/// not the framed stream format).
pub fn encode(req: &WriteRequest) -> Result<Vec<u8>, snap::Error> {
    snap::raw::Encoder::new().compress_vec(&req.encode_to_vec())
}

/// Where and how to write.
#[derive(Clone)]
pub struct RemoteWriteSettings {
    /// The receiver's URL (`http://prometheus:9090/api/v1/write`).
    pub url: String,
    /// How often to send everything.
    pub interval: Duration,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Sent as `Authorization: Bearer ...`.
    pub bearer_token: Option<String>,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Retry policy per request.
    pub retry: RetryPolicy,
    /// Requests waiting at most (oldest dropped beyond).
    pub max_requests: usize,
    /// Compressed bytes waiting at most.
    pub max_bytes: usize,
    /// Labels added to every series.
    pub external_labels: Vec<(String, String)>,
    /// TLS for an `https://` URL (the system roots when `None`).
    pub tls: Option<Arc<super::tls::ClientTls>>,
}

impl std::fmt::Debug for RemoteWriteSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteWriteSettings")
            .field("url", &self.url)
            .field("interval", &self.interval)
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "[redacted]"),
            )
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .field("max_requests", &self.max_requests)
            .field("max_bytes", &self.max_bytes)
            .field("external_labels", &self.external_labels)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

struct Pending {
    body: Vec<u8>,
    samples: u64,
}

/// Classifies a remote-write answer: 2xx delivered, 5xx and 429 retryable, other 4xx permanent.
pub fn classify(status: u16, retry_after: Option<Duration>, message: String) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered {
            rejected: 0,
            message: None,
        },
        429 => Outcome::Retry {
            reason: "http_429",
            after: retry_after,
            message,
        },
        500..=599 => Outcome::Retry {
            reason: "http_5xx",
            after: retry_after,
            message,
        },
        400 => Outcome::Permanent {
            reason: "http_400",
            message,
        },
        _ => Outcome::Permanent {
            reason: "http_4xx",
            message,
        },
    }
}

fn send_once(agent: &ureq::Agent, s: &RemoteWriteSettings, body: &[u8]) -> Outcome {
    let mut req = agent
        .post(&s.url)
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .header(
            "User-Agent",
            concat!("sidelight/", env!("CARGO_PKG_VERSION")),
        );
    for (k, v) in &s.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    if let Some(t) = &s.bearer_token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    match req.send(body) {
        Err(e) if super::tls::is_ureq_tls_error(&e) => Outcome::Retry {
            reason: "tls",
            after: None,
            message: format!(
                "TLS with {} failed: {e} (check export.remote_write.tls)",
                s.url
            ),
        },
        Err(e) => Outcome::Retry {
            reason: "connection",
            after: None,
            message: e.to_string(),
        },
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            let text = resp
                .body_mut()
                .with_config()
                .limit(4096)
                .read_to_string()
                .unwrap_or_default();
            classify(status, after, format!("HTTP {status}: {}", text.trim()))
        }
    }
}

type PendingState = (VecDeque<Pending>, usize);
type PendingQueue = Mutex<PendingState>;

fn pop_front(queue: &PendingQueue, publish: &dyn Fn(&PendingState)) {
    let mut q = queue.lock();
    if let Some(p) = q.0.pop_front() {
        q.1 -= p.body.len();
    }
    publish(&q);
}

/// Runs the remote writer: every `interval`, encodes `registry` into a request and queues it;
/// a sender delivers the queue in order. Returns once `shutdown.closing` is cancelled and the
/// queue is flushed, or at `shutdown.abandon`.
pub async fn run(
    settings: RemoteWriteSettings,
    registry: Arc<Registry>,
    stats: ExportStats,
    queue_stats: QueueStats,
    shutdown: Shutdown,
) {
    let label = [("queue", "remote_write".to_owned())];
    queue_stats
        .capacity
        .get_or_create(&label)
        .set(i64::try_from(settings.max_requests).unwrap_or(i64::MAX));
    queue_stats
        .capacity_bytes
        .get_or_create(&label)
        .set(i64::try_from(settings.max_bytes).unwrap_or(i64::MAX));
    let queue: PendingQueue = Mutex::new((VecDeque::new(), 0));
    let wake = Notify::new();
    let publish = |q: &PendingState| {
        queue_stats
            .depth
            .get_or_create(&label)
            .set(i64::try_from(q.0.len()).unwrap_or(i64::MAX));
        queue_stats
            .bytes
            .get_or_create(&label)
            .set(i64::try_from(q.1).unwrap_or(i64::MAX));
    };
    let produce = async {
        let mut ticker = tokio::time::interval(settings.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut logged = false;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.closing.cancelled() => break,
                _ = ticker.tick() => {}
            }
            let reg = registry.clone();
            let built = tokio::task::spawn_blocking(move || model::snapshot(&reg)).await;
            let snapshot = match built {
                Ok(Ok(f)) => f,
                Ok(Err(e)) => {
                    if !logged {
                        tracing::error!(error = %e, "cannot read the registry for remote write");
                        logged = true;
                    }
                    continue;
                }
                Err(_) => continue,
            };
            let ts = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            let req = write_request(&snapshot, &settings.external_labels, ts);
            let samples = req.timeseries.len() as u64;
            let body = match encode(&req) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "snappy compression failed");
                    continue;
                }
            };
            {
                let mut q = queue.lock();
                q.1 += body.len();
                q.0.push_back(Pending { body, samples });
                let mut dropped = 0;
                while q.0.len() > settings.max_requests.max(1)
                    || (q.1 > settings.max_bytes && q.0.len() > 1)
                {
                    if let Some(old) = q.0.pop_front() {
                        q.1 -= old.body.len();
                        dropped += 1;
                        stats.fail(EXPORTER, SIGNAL, "queue_full", old.samples);
                    }
                }
                if dropped > 0 {
                    queue_stats.dropped.get_or_create(&label).inc_by(dropped);
                    tracing::warn!(
                        dropped,
                        "remote-write queue full: oldest requests dropped (counted in sidelight_queue_dropped_total{{queue=\"remote_write\"}})"
                    );
                }
                publish(&q);
            }
            wake.notify_one();
        }
    };
    let send = async {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(settings.timeout));
        if let Some(tls) = &settings.tls {
            config = config.tls_config(tls.ureq_config());
        } else if settings.url.starts_with("https://") {
            match super::tls::ClientTls::load(&Default::default()) {
                Ok(tls) => config = config.tls_config(tls.ureq_config()),
                Err(e) => tracing::error!(error = %e, "remote write: no TLS roots"),
            }
        }
        let agent: ureq::Agent = config.build().into();
        let settings = Arc::new(settings.clone());
        let mut logged = std::collections::HashSet::new();
        'outer: loop {
            let next = {
                let q = queue.lock();
                q.0.front().map(|p| (p.body.clone(), p.samples))
            };
            let Some((body, samples)) = next else {
                if shutdown.closing.is_cancelled() {
                    break;
                }
                tokio::select! {
                    _ = wake.notified() => continue,
                    _ = shutdown.closing.cancelled() => continue,
                    _ = shutdown.abandon.cancelled() => break,
                }
            };
            let body = Arc::new(body);
            let mut backoff = Backoff::new(settings.retry);
            let done = loop {
                let in_flight = stats
                    .in_flight
                    .get_or_create(&[("exporter", EXPORTER)])
                    .clone();
                in_flight.inc();
                let started = Instant::now();
                let (a, s, b) = (agent.clone(), settings.clone(), body.clone());
                let attempt = tokio::task::spawn_blocking(move || send_once(&a, &s, &b));
                let outcome = tokio::select! {
                    biased;
                    _ = shutdown.abandon.cancelled() => None,
                    o = attempt => Some(o.unwrap_or(Outcome::Retry { reason: "connection", after: None, message: "send task failed".into() })),
                };
                in_flight.dec();
                stats
                    .send_duration
                    .get_or_create(&[("exporter", EXPORTER)])
                    .observe(started.elapsed().as_secs_f64());
                let Some(outcome) = outcome else {
                    break 'outer;
                };
                match outcome {
                    Outcome::Delivered { .. } => {
                        stats
                            .sent
                            .get_or_create(&[("exporter", EXPORTER), ("signal", SIGNAL)])
                            .inc_by(samples);
                        break true;
                    }
                    Outcome::Permanent { reason, message } => {
                        stats.fail(EXPORTER, SIGNAL, reason, samples);
                        if logged.insert(reason) {
                            tracing::error!(reason, error = %message, "remote-write receiver refused a request permanently: dropped (further refusals of this kind are only counted)");
                        }
                        break true;
                    }
                    Outcome::Retry {
                        reason,
                        after,
                        message,
                    } => {
                        stats
                            .retried
                            .get_or_create(&[("exporter", EXPORTER), ("signal", SIGNAL)])
                            .inc();
                        if backoff.attempts().is_multiple_of(10) {
                            tracing::warn!(reason, error = %message, retries = backoff.attempts(), "remote write failed; retrying");
                        }
                        let Some(delay) = backoff.next_delay(after) else {
                            stats.fail(EXPORTER, SIGNAL, "retries_exhausted", samples);
                            break true;
                        };
                        if shutdown.closing.is_cancelled() && delay > Duration::ZERO {
                            // Stopping: one more try is all a shutdown waits for.
                            stats.fail(EXPORTER, SIGNAL, "shutdown", samples);
                            break true;
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = shutdown.abandon.cancelled() => break 'outer,
                        }
                    }
                }
            };
            if done {
                pop_front(&queue, &publish);
            }
        }
        let left: u64 = queue.lock().0.iter().map(|p| p.samples).sum();
        stats.fail(EXPORTER, SIGNAL, "shutdown", left);
    };
    tokio::join!(produce, send);
    tracing::info!(exporter = EXPORTER, "remote writer stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::registry::Registry;

    #[test]
    fn encodes_sorted_labels_and_decodes_back() {
        let mut r = Registry::default();
        let load = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        load.set(0.5);
        r.register("node_load1", "Load", load);
        let reqs: Family<[(&str, &str); 2], Counter> = Family::default();
        reqs.get_or_create(&[("zone", "b"), ("code", "200")])
            .inc_by(3);
        r.register("reqs", "Requests", reqs);
        let h = Histogram::new([1.0]);
        for v in [0.5, 0.75, 2.75] {
            h.observe(v);
        }
        r.register("h", "H", h);
        let snapshot = model::snapshot(&r).expect("snapshot");
        let req = write_request(
            &snapshot,
            &[
                ("instance".into(), "vm-1".into()),
                ("zone".into(), "x".into()),
            ],
            1_700_000_000_123,
        );
        let body = encode(&req).expect("snappy");
        let raw = snap::raw::Decoder::new()
            .decompress_vec(&body)
            .expect("snappy block format");
        let back = WriteRequest::decode(&raw[..]).expect("protobuf");
        assert_eq!(back, req);
        assert_eq!(back.timeseries.len(), 1 + 1 + 4);
        for ts in &back.timeseries {
            let names: Vec<&str> = ts.labels.iter().map(|l| l.name.as_str()).collect();
            let mut sorted = names.clone();
            sorted.sort();
            assert_eq!(names, sorted);
            assert_eq!(names[0], "__name__");
            assert_eq!(ts.samples.len(), 1);
            assert_eq!(ts.samples[0].timestamp, 1_700_000_000_123);
        }
        let reqs = &back.timeseries[1];
        let pairs: Vec<(&str, &str)> = reqs
            .labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("__name__", "reqs_total"),
                ("code", "200"),
                ("instance", "vm-1"),
                ("zone", "b"),
            ],
            "the sample's own label wins over an external one"
        );
        assert_eq!(reqs.samples[0].value, 3.0);
        // The histogram as a scrape stores it: `_sum`, `_count`, then cumulative buckets.
        let hist: Vec<(String, f64)> = back.timeseries[2..]
            .iter()
            .map(|ts| {
                let name = &ts.labels[0].value;
                let le = ts.labels.iter().find(|l| l.name == "le");
                let key = match le {
                    Some(le) => format!("{name}{{le={}}}", le.value),
                    None => name.clone(),
                };
                (key, ts.samples[0].value)
            })
            .collect();
        assert_eq!(
            hist,
            [
                ("h_sum".to_owned(), 4.0),
                ("h_count".to_owned(), 3.0),
                ("h_bucket{le=1.0}".to_owned(), 2.0),
                ("h_bucket{le=+Inf}".to_owned(), 3.0),
            ]
        );
    }

    #[test]
    fn remote_write_status_classes() {
        assert!(matches!(
            classify(204, None, String::new()),
            Outcome::Delivered { .. }
        ));
        for s in [429, 500, 502, 503] {
            assert!(matches!(
                classify(s, None, String::new()),
                Outcome::Retry { .. }
            ));
        }
        for s in [400, 401, 404, 413] {
            assert!(matches!(
                classify(s, None, String::new()),
                Outcome::Permanent { .. }
            ));
        }
    }
}

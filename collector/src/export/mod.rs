//! Sinks that send telemetry out of the agent: the OTLP exporter (gRPC or HTTP/protobuf, one
//! consumer per signal queue, batching, retry, an optional disk spill) and Prometheus remote
//! write; plus the conversion of the agent's own registry (a [`crate::model::Snapshot`]) into OTLP
//! metrics and remote-write series.
//!
//! Delivery: a batch's receipts are completed once it is delivered, durably spilled, or
//! permanently refused (counted in `sidelight_exporter_failed_total`). A batch that is neither
//! when the exporter stops keeps its receipts un-completed: the log tailer re-reads it; a
//! receiver's data (already acknowledged to its sender) is then lost and counted with
//! `reason="shutdown"`.

pub mod batch;
pub mod otlp;
pub mod remote_write;
pub mod retry;
pub mod spill;
pub mod telemetry;
pub mod tls;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type ExporterSignal = [(&'static str, &'static str); 2];
type ExporterSignalReason = [(&'static str, &'static str); 3];
type ExporterLabel = [(&'static str, &'static str); 1];

fn send_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Self-metrics of every exporter (one set per agent), labelled `exporter` = `otlp` |
/// `remote_write` and `signal` = `traces` | `metrics` | `logs`.
#[derive(Debug, Clone)]
pub struct ExportStats {
    /// `sidelight_exporter_sent_total{exporter,signal}`: items accepted downstream.
    pub sent: Family<ExporterSignal, Counter>,
    /// `sidelight_exporter_failed_total{exporter,signal,reason}`: items permanently failed.
    pub failed: Family<ExporterSignalReason, Counter>,
    /// `sidelight_exporter_retried_total{exporter,signal}`: attempts that were retried.
    pub retried: Family<ExporterSignal, Counter>,
    /// `sidelight_exporter_in_flight{exporter}`: requests being sent now.
    pub in_flight: Family<ExporterLabel, Gauge>,
    /// `sidelight_exporter_send_duration_seconds{exporter}`: one attempt's duration.
    pub send_duration: Family<ExporterLabel, Histogram, fn() -> Histogram>,
    /// `sidelight_exporter_spill_bytes{exporter,signal}`: record bytes in the disk spill.
    pub spill_bytes: Family<ExporterSignal, Gauge>,
    /// `sidelight_exporter_spill_depth{exporter,signal}`: records (batches) in the disk spill.
    pub spill_depth: Family<ExporterSignal, Gauge>,
    /// `sidelight_exporter_spill_corrupt_total{exporter,signal}`: corrupt spill tails skipped.
    pub spill_corrupt: Family<ExporterSignal, Counter>,
    /// `sidelight_exporter_spilled_total{exporter,signal}`: items written to the disk spill.
    pub spilled: Family<ExporterSignal, Counter>,
    /// `sidelight_exporter_spill_write_errors_total{exporter,signal}`: spill writes that failed
    /// (a full or failing disk); the batch stayed in memory.
    pub spill_write_errors: Family<ExporterSignal, Counter>,
}

impl Default for ExportStats {
    fn default() -> Self {
        Self {
            sent: Family::default(),
            failed: Family::default(),
            retried: Family::default(),
            in_flight: Family::default(),
            send_duration: Family::new_with_constructor(send_histogram),
            spill_bytes: Family::default(),
            spill_depth: Family::default(),
            spill_corrupt: Family::default(),
            spilled: Family::default(),
            spill_write_errors: Family::default(),
        }
    }
}

impl ExportStats {
    /// Registers every family.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sidelight_exporter_sent",
            "Items (spans, data points, log records, samples) accepted downstream",
            self.sent.clone(),
        );
        registry.register(
            "sidelight_exporter_failed",
            "Items that failed permanently (refused downstream, rejected in a partial success, or not sent at shutdown)",
            self.failed.clone(),
        );
        registry.register(
            "sidelight_exporter_retried",
            "Export attempts that failed with a retryable error and were retried",
            self.retried.clone(),
        );
        registry.register(
            "sidelight_exporter_in_flight",
            "Export requests being sent now",
            self.in_flight.clone(),
        );
        registry.register(
            "sidelight_exporter_send_duration_seconds",
            "Duration of one export attempt",
            self.send_duration.clone(),
        );
        registry.register(
            "sidelight_exporter_spill_bytes",
            "Record bytes waiting in the disk spill",
            self.spill_bytes.clone(),
        );
        registry.register(
            "sidelight_exporter_spill_depth",
            "Records (batches) waiting in the disk spill",
            self.spill_depth.clone(),
        );
        registry.register(
            "sidelight_exporter_spill_corrupt",
            "Corrupt or torn spill segment tails found at start and skipped",
            self.spill_corrupt.clone(),
        );
        registry.register(
            "sidelight_exporter_spilled",
            "Items written to the disk spill",
            self.spilled.clone(),
        );
        registry.register(
            "sidelight_exporter_spill_write_errors",
            "Writes to the disk spill that failed (disk full or failing); the batch was kept in memory and retried",
            self.spill_write_errors.clone(),
        );
    }

    /// Counts `n` permanently failed items.
    pub fn fail(&self, exporter: &'static str, signal: &'static str, reason: &'static str, n: u64) {
        if n > 0 {
            self.failed
                .get_or_create(&[
                    ("exporter", exporter),
                    ("signal", signal),
                    ("reason", reason),
                ])
                .inc_by(n);
        }
    }
}

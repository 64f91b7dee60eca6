//! Self-metrics of the log sources: `prometheus-client` families shared by every source (one
//! [`LogStats`] per agent, labelled by `source`), registered once by the agent with
//! [`LogStats::register`]. Exception types are bounded through the metric label cap.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::metrics::{LabelCap, LabelCaps, OVERFLOW_VALUE, label_key};

type L1 = [(&'static str, String); 1];
type L2 = [(&'static str, String); 2];
/// Labels of the families tailed and received records share: tailed ones carry
/// `{source,level}` / `{source,exception}`, received ones `{source="otlp",service_name,...}`.
pub type RecordLabels = Vec<(&'static str, String)>;

/// The `source` label of log records received over OTLP.
pub const OTLP_SOURCE: &str = "otlp";

/// `reason` of lost bytes: a file was truncated in place (copytruncate) below bytes seen but not
/// read, and no copy holding them was found.
pub const LOST_TRUNCATED: &str = "truncated";
/// `reason` of lost bytes: a file was deleted (or replaced) while closed, before it was read to
/// the size last seen — also a checkpointed file not found again after a restart.
pub const LOST_DELETED: &str = "deleted_unread";
/// `reason` of lost bytes: the part of a line (or joined record) beyond `max_line_bytes`.
pub const LOST_LINE_TOO_LONG: &str = "line_too_long";

/// Counters and gauges of the log sources.
#[derive(Debug, Clone)]
pub struct LogStats {
    /// `sidelight_log_records_total{source,level}` (tailed) and
    /// `{source="otlp",service_name,level}` (received over OTLP).
    pub records: Family<RecordLabels, Counter>,
    /// `sidelight_log_bytes_total{source}`: bytes read from files.
    pub bytes: Family<L1, Counter>,
    /// `sidelight_log_parse_errors_total{source}`.
    pub parse_errors: Family<L1, Counter>,
    /// `sidelight_log_truncated_lines_total{source}`: lines cut to `max_line_bytes`.
    pub truncated_lines: Family<L1, Counter>,
    /// `sidelight_log_lost_bytes_total{source,reason}`: bytes the tailer can prove it skipped —
    /// [`LOST_TRUNCATED`], [`LOST_DELETED`], [`LOST_LINE_TOO_LONG`].
    pub lost_bytes: Family<L2, Counter>,
    /// `sidelight_log_skipped_files_total{source,reason}`: rotated files newer than the last
    /// look that are not read (`compressed`).
    pub skipped_files: Family<L2, Counter>,
    /// `sidelight_log_exceptions_total{source,exception}` (bounded set; received records add
    /// `service_name`).
    pub exceptions: Family<RecordLabels, Counter>,
    /// `sidelight_log_redactions_total{source}`.
    pub redactions: Family<L1, Counter>,
    /// `sidelight_log_file_errors_total{source,kind}`: permission denied, not a file, IO.
    pub file_errors: Family<L2, Counter>,
    /// `sidelight_log_rotations_total{source,kind}`: rename, truncate, delete.
    pub rotations: Family<L2, Counter>,
    /// `sidelight_log_files_watched{source}`.
    pub files_watched: Family<L1, Gauge>,
    /// `sidelight_log_open_files{source}`: descriptors held.
    pub open_files: Family<L1, Gauge>,
    /// `sidelight_log_files_deferred{source}`: files found that wait for a descriptor
    /// (`tail.max_open_files` reached by files being read to their end).
    pub files_deferred: Family<L1, Gauge>,
    /// `sidelight_log_unacked_bytes{source}`: bytes read but not yet acknowledged (checkpoint lag).
    pub unacked_bytes: Family<L1, Gauge>,
    /// `sidelight_log_checkpoint_write_errors_total{source}`.
    pub checkpoint_errors: Family<L1, Counter>,
    /// `sidelight_log_checkpoint_writes_total{source}`.
    pub checkpoint_writes: Family<L1, Counter>,
    exception_cap: Arc<LabelCap>,
    service_cap: Arc<LabelCap>,
}

impl LogStats {
    /// New, empty stats; `caps` bounds the exception label set.
    pub fn new(caps: &LabelCaps) -> Self {
        Self {
            records: Family::default(),
            bytes: Family::default(),
            parse_errors: Family::default(),
            truncated_lines: Family::default(),
            lost_bytes: Family::default(),
            skipped_files: Family::default(),
            exceptions: Family::default(),
            redactions: Family::default(),
            file_errors: Family::default(),
            rotations: Family::default(),
            files_watched: Family::default(),
            open_files: Family::default(),
            files_deferred: Family::default(),
            unacked_bytes: Family::default(),
            checkpoint_errors: Family::default(),
            checkpoint_writes: Family::default(),
            exception_cap: caps.for_family("sidelight_log_exceptions"),
            service_cap: caps.for_family("sidelight_log_records"),
        }
    }

    /// Counts one tailed record of `source` at `level`.
    pub fn record(&self, source: &str, level: &str) {
        self.records
            .get_or_create(&vec![
                ("source", source.to_owned()),
                ("level", level.to_owned()),
            ])
            .inc();
    }

    /// The counter of tailed records of `source` at `level`, for a caller that counts many
    /// (a clone shares the family's value).
    pub fn record_counter(&self, source: &str, level: &str) -> Counter {
        self.records
            .get_or_create(&vec![
                ("source", source.to_owned()),
                ("level", level.to_owned()),
            ])
            .clone()
    }

    /// Counts `n` records received over OTLP from `service` at `level`; services beyond the
    /// label cap are counted as `other`.
    pub fn received(&self, service: &str, level: &str, n: u64) {
        let service = self.service_label(service);
        self.records
            .get_or_create(&vec![
                ("source", OTLP_SOURCE.to_owned()),
                ("service_name", service),
                ("level", level.to_owned()),
            ])
            .inc_by(n);
    }

    /// Counts `n` exceptions of `exception` type received over OTLP from `service`, folded into
    /// `other` past the cap.
    pub fn received_exception(&self, service: &str, exception: &str, n: u64) {
        let service = self.service_label(service);
        let labels = [
            ("source", OTLP_SOURCE.to_owned()),
            ("service_name", service),
            ("exception", exception.to_owned()),
        ];
        let labels = if self.exception_cap.admit(label_key(&labels)) {
            labels.to_vec()
        } else {
            labels
                .into_iter()
                .map(|(k, v)| {
                    (
                        k,
                        if k == "source" {
                            v
                        } else {
                            OVERFLOW_VALUE.to_owned()
                        },
                    )
                })
                .collect()
        };
        self.exceptions.get_or_create(&labels).inc_by(n);
    }

    fn service_label(&self, service: &str) -> String {
        if self
            .service_cap
            .admit(label_key(&[("service_name", service)]))
        {
            service.to_owned()
        } else {
            OVERFLOW_VALUE.to_owned()
        }
    }

    /// Counts one exception of `exception` type, folded into `other` past the cap.
    pub fn exception(&self, source: &str, exception: &str) {
        let labels = self.exception_cap.fold([
            ("source", source.to_owned()),
            ("exception", exception.to_owned()),
        ]);
        self.exceptions.get_or_create(&labels.to_vec()).inc();
    }

    /// Registers every family (names without `_total`; the client adds it to counters).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sidelight_log_shared_names",
            "Attribute keys, level and logger names held once for the whole process (at most 4096)",
            super::parse::shared_names_gauge().clone(),
        );
        registry.register(
            "sidelight_log_records",
            "Log records read, by source and level",
            self.records.clone(),
        );
        registry.register(
            "sidelight_log_bytes",
            "Bytes read from log files",
            self.bytes.clone(),
        );
        registry.register(
            "sidelight_log_parse_errors",
            "Lines that should have been JSON and were kept as text",
            self.parse_errors.clone(),
        );
        registry.register(
            "sidelight_log_truncated_lines",
            "Lines cut to max_line_bytes",
            self.truncated_lines.clone(),
        );
        registry.register(
            "sidelight_log_lost_bytes",
            "Log bytes the tailer proved it skipped, by reason (truncated, deleted_unread, line_too_long)",
            self.lost_bytes.clone(),
        );
        registry.register(
            "sidelight_log_skipped_files",
            "Rotated log files newer than the last look that were not read, by reason (compressed)",
            self.skipped_files.clone(),
        );
        registry.register(
            "sidelight_log_exceptions",
            "Exceptions in log records, by type (bounded set)",
            self.exceptions.clone(),
        );
        registry.register(
            "sidelight_log_redactions",
            "Secrets redacted from log records",
            self.redactions.clone(),
        );
        registry.register(
            "sidelight_log_file_errors",
            "Files that could not be read, by kind of error",
            self.file_errors.clone(),
        );
        registry.register(
            "sidelight_log_rotations",
            "Rotations seen, by kind (rename, truncate, delete)",
            self.rotations.clone(),
        );
        registry.register(
            "sidelight_log_files_watched",
            "Log files currently tracked",
            self.files_watched.clone(),
        );
        registry.register(
            "sidelight_log_open_files",
            "File descriptors held by the log tailer",
            self.open_files.clone(),
        );
        registry.register(
            "sidelight_log_files_deferred",
            "Log files found that wait for a descriptor (tail.max_open_files), read once one is free",
            self.files_deferred.clone(),
        );
        registry.register(
            "sidelight_log_unacked_bytes",
            "Bytes read but not yet acknowledged by every sink (checkpoint lag)",
            self.unacked_bytes.clone(),
        );
        registry.register(
            "sidelight_log_checkpoint_write_errors",
            "Failed checkpoint writes",
            self.checkpoint_errors.clone(),
        );
        registry.register(
            "sidelight_log_checkpoint_writes",
            "Checkpoint writes",
            self.checkpoint_writes.clone(),
        );
    }
}

/// The level label of a record: its severity text lower-cased, or a name from the number.
pub fn level_label(severity_number: u8, severity_text: Option<&str>) -> &'static str {
    let from_number = match severity_number {
        0 => None,
        1..=4 => Some("trace"),
        5..=8 => Some("debug"),
        9..=12 => Some("info"),
        13..=16 => Some("warn"),
        17..=20 => Some("error"),
        _ => Some("fatal"),
    };
    from_number.unwrap_or(if severity_text.is_some() {
        "other"
    } else {
        "unknown"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exceptions_are_capped_and_registered() {
        let caps = LabelCaps::new(2);
        let stats = LogStats::new(&caps);
        for ty in ["A", "B", "C", "D"] {
            stats.exception("app", ty);
        }
        let other = stats
            .exceptions
            .get_or_create(&vec![
                ("source", "other".into()),
                ("exception", "other".into()),
            ])
            .get();
        assert_eq!(other, 2);
        let mut registry = Registry::default();
        stats.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("test setup");
        assert!(text.contains("sidelight_log_exceptions_total{source=\"app\",exception=\"A\"} 1"));
    }

    #[test]
    fn levels() {
        assert_eq!(level_label(17, Some("ERROR")), "error");
        assert_eq!(level_label(0, None), "unknown");
        assert_eq!(level_label(9, None), "info");
    }
}

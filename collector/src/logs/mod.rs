//! The log source's pure half: the record model, line parsing (JSON from python-json-logger,
//! structlog and loguru, or text), the plain-text traceback joiner and redaction. No IO and no
//! clock here: the file tailer feeds lines in and hands records on.
//!
//! Pipeline per file: [`Joiner`] (for `text` and `auto` sources; complete JSON lines pass
//! straight through it) → [`Parser`] → [`Redactor`] → metrics and export. The tailer calls
//! [`Joiner::poll`] when [`Joiner::deadline`] passes, and [`Joiner::flush`] at end of file.
//!
//! ```
//! use std::time::Instant;
//! use sidelight_collector::logs::{Joiner, JoinerConfig, Parser, ParserConfig, Redactor};
//!
//! let parser = Parser::new(ParserConfig::default());
//! let redactor = Redactor::builtin()?;
//! let mut joiner = Joiner::new(JoinerConfig::default());
//! let lines = [
//!     "2024-05-01 12:00:00,000 ERROR app.web: payment failed for bob@example.com",
//!     "Traceback (most recent call last):",
//!     "  File \"app.py\", line 3, in <module>",
//!     "ValueError: card declined",
//! ];
//! let mut joined = Vec::new();
//! for line in lines {
//!     joiner.push(line.as_bytes(), Instant::now(), &mut joined);
//! }
//! joined.extend(joiner.flush());
//! assert_eq!(joined.len(), 1);
//!
//! let mut parsed = parser.parse(&joined[0].text, 1_714_564_800_000_000_000);
//! assert!(parsed.error.is_none() && !parsed.truncated());
//! let counts = redactor.redact_record(&mut parsed.record);
//! let record = parsed.record;
//! assert_eq!(record.severity_number, 17);
//! assert_eq!(record.body, "2024-05-01 12:00:00,000 ERROR app.web: payment failed for [REDACTED]");
//! let exception = record.exception.expect("traceback");
//! assert_eq!(exception.r#type.as_deref(), Some("ValueError"));
//! assert_eq!(exception.message.as_deref(), Some("card declined"));
//! assert_eq!(counts.total(), 1);
//! # Ok::<(), sidelight_collector::logs::RedactError>(())
//! ```

pub mod checkpoint;
pub mod discover;
#[cfg(test)]
mod mapping_tests;
pub mod multiline;
pub mod otlp;
pub mod parse;
pub mod record;
pub mod redact;
pub mod source;
pub mod stats;
pub mod tail;
pub mod watch;

pub use multiline::{Joined, Joiner, JoinerConfig};
pub use otlp::{EncodedLogs, LogResource, encode_request, to_request};
pub use parse::{Format, ParseError, Parsed, Parser, ParserConfig};
pub use record::{AttrValue, Attributes, ExceptionInfo, LogRecord, SpanId, TraceId};
pub use redact::{RedactError, RedactionConfig, RedactionCounts, Redactor};
pub use source::{
    ConsumerGone, Handoff, LogSource, LogSourceConfig, LogSourceError, MultilineConfig, TailTuning,
};
pub use stats::LogStats;
pub use tail::{Ack, Batch, StartAt, TailConfig, TailError, Tailer};

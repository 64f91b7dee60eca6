//! The log source's pure half: the record model, line parsing (JSON from python-json-logger,
//! structlog and loguru, or text), the plain-text traceback joiner and redaction. No IO and no
//! clock here: the file tailer feeds lines in and hands records on.
//!
//! Pipeline per file: `multiline::Joiner` (text sources) → `parse::Parser` →
//! `redact::Redactor` → metrics and export.

pub mod multiline;
pub mod parse;
pub mod record;
pub mod redact;

pub use multiline::{Joined, Joiner, JoinerConfig};
pub use parse::{Format, ParseError, Parsed, Parser, ParserConfig};
pub use record::{AttrValue, Attributes, ExceptionInfo, LogRecord, SpanId, TraceId};
pub use redact::{RedactError, RedactionConfig, RedactionCounts, Redactor};

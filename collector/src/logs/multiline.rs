//! Joins the lines of a plain-text Python traceback — and the log line just before it — into one
//! record. A pure state machine: the caller feeds lines with its own `now` and asks for the
//! pending record on a timer ([`Joiner::poll`]) or at end of file ([`Joiner::flush`]); there is
//! no clock and no IO inside.
//!
//! What belongs together: a line, then `Traceback (most recent call last):`, the indented frames
//! (and blank lines, and loguru's `> File` marker), the final `Type: message` line, and for
//! chained exceptions a blank line, one of Python's two banners (`During handling of the above
//! exception, another exception occurred:` / `The above exception was the direct cause of the
//! following exception:`), and the next traceback. A line that looks like a complete JSON object
//! is always a record of its own and is emitted at once.
//!
//! Invariant: every line pushed ends up in exactly one [`Joined`] record, in order (beyond the
//! caps it is counted in [`Joined::dropped_lines`] instead of being copied).

use std::time::{Duration, Instant};

const HEADER: &[u8] = b"Traceback (most recent call last):";
const GROUP_HEADER: &[u8] = b"+ Exception Group Traceback (most recent call last):";
const BANNER_CONTEXT: &[u8] =
    b"During handling of the above exception, another exception occurred:";
const BANNER_CAUSE: &[u8] = b"The above exception was the direct cause of the following exception:";

/// Joiner settings.
#[derive(Debug, Clone)]
pub struct JoinerConfig {
    /// A pending record with no new line for this long is flushed by [`Joiner::poll`].
    pub timeout: Duration,
    /// Most lines kept in one record; later lines are counted, not copied.
    pub max_lines: usize,
    /// Most bytes kept in one record (newlines included); later lines are counted, not copied.
    pub max_bytes: usize,
}

impl Default for JoinerConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(500),
            max_lines: 1000,
            max_bytes: super::parse::DEFAULT_MAX_LINE_BYTES,
        }
    }
}

/// One joined record: its lines separated by `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub text: Vec<u8>,
    /// Lines this record consumed, dropped ones included.
    pub lines: usize,
    /// Lines consumed but not copied because a cap was reached.
    pub dropped_lines: usize,
    /// Bytes not copied because a cap was reached (for `sidelight_log_lost_bytes_total`).
    pub dropped_bytes: usize,
}

impl Joined {
    /// True when a cap cut the record.
    pub fn truncated(&self) -> bool {
        self.dropped_bytes > 0 || self.dropped_lines > 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A log line that a traceback may follow.
    Head,
    /// Inside a traceback's frames.
    Frames,
    /// After the final `Type: message` line: a banner may chain another traceback.
    AfterFinal,
    /// After a chaining banner: the next traceback is expected.
    Banner,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Header,
    Banner,
    Blank,
    Indented,
    CompleteJson,
    Other,
}

fn classify(line: &[u8]) -> Kind {
    let trimmed = line.trim_ascii_end();
    if trimmed.is_empty() {
        return Kind::Blank;
    }
    if trimmed == HEADER || trimmed.trim_ascii_start() == GROUP_HEADER {
        return Kind::Header;
    }
    if trimmed == BANNER_CONTEXT || trimmed == BANNER_CAUSE {
        return Kind::Banner;
    }
    if line.starts_with(b" ") || line.starts_with(b"\t") || line.starts_with(b"> ") {
        return Kind::Indented;
    }
    if trimmed.starts_with(b"{") && trimmed.ends_with(b"}") {
        return Kind::CompleteJson;
    }
    Kind::Other
}

#[derive(Debug)]
struct Pending {
    joined: Joined,
    state: State,
    last_at: Instant,
}

/// The traceback joiner (one per file being tailed).
#[derive(Debug)]
pub struct Joiner {
    config: JoinerConfig,
    pending: Option<Pending>,
}

impl Joiner {
    pub fn new(config: JoinerConfig) -> Self {
        Self {
            config,
            pending: None,
        }
    }

    /// Feeds one line (a trailing `\n` / `\r\n` is ignored) read at `now`; records that are
    /// complete are appended to `out`.
    pub fn push(&mut self, line: &[u8], now: Instant, out: &mut Vec<Joined>) {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(done) = self.poll(now) {
            out.push(done);
        }
        let kind = classify(line);
        if let Some(p) = &mut self.pending {
            let next = match (p.state, kind) {
                (_, Kind::CompleteJson) => None,
                (State::Head, Kind::Header) => Some(State::Frames),
                (State::Head, _) => None,
                (State::Frames, Kind::Banner) => Some(State::Banner),
                (State::Frames, Kind::Blank | Kind::Indented | Kind::Header) => Some(State::Frames),
                (State::Frames, Kind::Other) => Some(State::AfterFinal),
                (State::AfterFinal, Kind::Blank | Kind::Indented) => Some(State::AfterFinal),
                (State::AfterFinal, Kind::Banner) => Some(State::Banner),
                (State::AfterFinal, Kind::Header | Kind::Other) => None,
                (State::Banner, Kind::Blank) => Some(State::Banner),
                (State::Banner, Kind::Header) => Some(State::Frames),
                (State::Banner, _) => None,
            };
            if let Some(state) = next {
                p.state = state;
                p.last_at = now;
                append(&mut p.joined, line, &self.config);
                return;
            }
            if let Some(done) = self.flush() {
                out.push(done);
            }
        }
        let mut joined = Joined {
            text: Vec::new(),
            lines: 0,
            dropped_lines: 0,
            dropped_bytes: 0,
        };
        append(&mut joined, line, &self.config);
        let state = match kind {
            Kind::CompleteJson => {
                out.push(joined);
                return;
            }
            Kind::Header => State::Frames,
            _ => State::Head,
        };
        self.pending = Some(Pending {
            joined,
            state,
            last_at: now,
        });
    }

    /// Returns the pending record if no line has joined it for the timeout.
    pub fn poll(&mut self, now: Instant) -> Option<Joined> {
        let due = self.deadline()?;
        if now >= due { self.flush() } else { None }
    }

    /// When [`Joiner::poll`] will flush the pending record, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending
            .as_ref()
            .map(|p| p.last_at + self.config.timeout)
    }

    /// Returns the pending record now (end of file, shutdown, rotation).
    pub fn flush(&mut self) -> Option<Joined> {
        self.pending.take().map(|p| p.joined)
    }
}

fn append(joined: &mut Joined, line: &[u8], config: &JoinerConfig) {
    joined.lines += 1;
    let sep = usize::from(joined.lines > 1);
    if joined.lines == 1 {
        let keep = line.len().min(config.max_bytes);
        joined.text.extend_from_slice(&line[..keep]);
        joined.dropped_bytes += line.len() - keep;
        return;
    }
    if joined.lines - joined.dropped_lines > config.max_lines
        || joined.dropped_lines > 0
        || joined.text.len() + sep + line.len() > config.max_bytes
    {
        joined.dropped_lines += 1;
        joined.dropped_bytes += line.len();
        return;
    }
    joined.text.push(b'\n');
    joined.text.extend_from_slice(line);
}

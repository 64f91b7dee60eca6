//! Joins the lines of a plain-text Python traceback — and the log line just before it — into one
//! record. A pure state machine: the caller feeds lines with its own `now` and asks for the
//! pending record on a timer ([`Joiner::poll`]) or at end of file ([`Joiner::flush`]); there is
//! no clock and no IO inside.
//!
//! What belongs together: a line, then `Traceback (most recent call last):`, the indented frames
//! (and blank lines, and loguru's `> File` marker), the final `Type: message` line, and for
//! chained exceptions a blank line, one of Python's two banners (`During handling of the above
//! exception, another exception occurred:` / `The above exception was the direct cause of the
//! following exception:`), and the next traceback. A line that looks like a complete JSON object,
//! and a blank line outside a traceback, is a record of its own and is emitted at once (callers
//! may drop blank records).
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
    /// Inside an exception group's box (`  + Exception Group Traceback`, `  | ...`, `  +-+---`):
    /// every line of it is indented, so the first line that is not ends it.
    Group,
    /// After the final `Type: message` line: a banner may chain another traceback.
    AfterFinal,
    /// After a chaining banner: the next traceback is expected.
    Banner,
    /// Inside a PEM private-key block (`-----BEGIN … PRIVATE KEY-----` until its `END` line):
    /// kept in one record so that redaction sees the whole block, never a bare key line.
    Pem,
    /// After a PEM block's `END` line: the record is complete.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Header,
    GroupHeader,
    Banner,
    Blank,
    Indented,
    CompleteJson,
    PemBegin,
    PemEnd,
    Other,
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn classify(line: &[u8]) -> Kind {
    let trimmed = line.trim_ascii_end();
    if trimmed.is_empty() {
        return Kind::Blank;
    }
    if trimmed == HEADER {
        return Kind::Header;
    }
    if trimmed.trim_ascii_start() == GROUP_HEADER {
        return Kind::GroupHeader;
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
    if trimmed.len() < 4096 && contains(trimmed, b"PRIVATE KEY-----") {
        if contains(trimmed, b"-----BEGIN ") && !contains(trimmed, b"-----END ") {
            return Kind::PemBegin;
        }
        if contains(trimmed, b"-----END ") && !contains(trimmed, b"-----BEGIN ") {
            return Kind::PemEnd;
        }
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
                (State::Pem, Kind::PemEnd) => Some(State::Closed),
                (State::Pem, _) => Some(State::Pem),
                (State::Closed, _) => None,
                (State::Head, Kind::PemBegin) => Some(State::Pem),
                (_, Kind::CompleteJson) => None,
                (State::Head | State::Banner | State::Frames, Kind::GroupHeader) => {
                    Some(State::Group)
                }
                (State::Group, Kind::Blank | Kind::Indented) => Some(State::Group),
                (State::Group, Kind::Banner) => Some(State::Banner),
                (State::Group, _) => None,
                (State::AfterFinal, Kind::GroupHeader) => None,
                (State::Head, Kind::Header) => Some(State::Frames),
                (State::Head, _) => None,
                (State::Frames, Kind::Banner) => Some(State::Banner),
                (State::Frames, Kind::Blank | Kind::Indented | Kind::Header) => Some(State::Frames),
                (State::Frames, Kind::Other | Kind::PemBegin | Kind::PemEnd) => {
                    Some(State::AfterFinal)
                }
                (State::AfterFinal, Kind::Blank | Kind::Indented) => Some(State::AfterFinal),
                (State::AfterFinal, Kind::Banner) => Some(State::Banner),
                (State::AfterFinal, Kind::Header | Kind::Other | Kind::PemBegin | Kind::PemEnd) => {
                    None
                }
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
            // Nothing can join a JSON object or a blank line: emit them without waiting.
            Kind::CompleteJson | Kind::Blank => {
                out.push(joined);
                return;
            }
            Kind::Header => State::Frames,
            Kind::GroupHeader => State::Group,
            Kind::PemBegin => State::Pem,
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
        let cut = line.len().min(config.max_bytes);
        let mut keep = cut;
        // Do not split a UTF-8 sequence (the bytes need not be UTF-8; this only avoids a U+FFFD).
        while keep > 0 && keep < line.len() && cut - keep < 3 && (line[keep] & 0xC0) == 0x80 {
            keep -= 1;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TEXT: &str = include_str!("../../tests/fixtures/logs/text_traceback.log");
    const LOGURU: &str = include_str!("../../tests/fixtures/logs/loguru.jsonl");
    const GROUP: &str = include_str!("../../tests/fixtures/logs/text_exception_group.log");

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    /// Feeds every line at one instant, flushes at the end, returns the records as text.
    fn join_all(joiner: &mut Joiner, lines: &[&str]) -> Vec<String> {
        let now = Instant::now();
        let mut out = Vec::new();
        for line in lines {
            joiner.push(line.as_bytes(), now, &mut out);
        }
        out.extend(joiner.flush());
        out.iter()
            .map(|j| String::from_utf8_lossy(&j.text).into_owned())
            .collect()
    }

    #[test]
    fn python_logging_output_with_chained_tracebacks() {
        let lines: Vec<&str> = TEXT.lines().collect();
        let got = join_all(&mut Joiner::new(JoinerConfig::default()), &lines);
        let want = [
            lines[0..1].join("\n"),
            lines[1..15].join("\n"),
            lines[15..16].join("\n"),
            lines[16..29].join("\n"),
            lines[29..30].join("\n"),
        ];
        assert_eq!(got, want);
        assert!(got[1].contains("During handling of the above exception"));
        assert!(got[1].ends_with("KeyError: 'k'"));
        assert!(got[3].contains("The above exception was the direct cause"));
        assert!(got[3].ends_with("ValueError: bad ratio"));
    }

    #[test]
    fn exception_group_ends_at_the_first_unindented_line() {
        let lines: Vec<&str> = GROUP.lines().collect();
        let got = join_all(&mut Joiner::new(JoinerConfig::default()), &lines);
        assert_eq!(got, [lines[..24].join("\n"), lines[24].to_owned()]);
        assert!(got[1].ends_with("INFO app.tasks: after group"));
    }

    #[test]
    fn loguru_text_traceback_with_blank_lines_and_marker() {
        // loguru's own text rendering (the `text` field of its serialized record), line by line.
        let rec: serde_json::Value =
            serde_json::from_str(LOGURU.lines().nth(3).expect("line")).expect("json");
        let text = rec["text"].as_str().expect("text").trim_end();
        let lines: Vec<&str> = text.lines().collect();
        let got = join_all(&mut Joiner::new(JoinerConfig::default()), &lines);
        assert_eq!(got, [text]);
    }

    #[test]
    fn classification_table() {
        let cases = [
            ("Traceback (most recent call last):", Kind::Header),
            ("Traceback (most recent call last):  ", Kind::Header),
            (
                "  + Exception Group Traceback (most recent call last):",
                Kind::GroupHeader,
            ),
            (
                "During handling of the above exception, another exception occurred:",
                Kind::Banner,
            ),
            (
                "The above exception was the direct cause of the following exception:",
                Kind::Banner,
            ),
            ("", Kind::Blank),
            (" \t", Kind::Blank),
            ("  File \"x.py\", line 1, in <module>", Kind::Indented),
            ("\tat frame", Kind::Indented),
            ("> File \"x.py\", line 1", Kind::Indented),
            ("{\"message\": \"m\"}", Kind::CompleteJson),
            ("{\"message\": ", Kind::Other),
            ("ValueError: x", Kind::Other),
            ("2024-05-01 INFO x", Kind::Other),
        ];
        for (line, want) in cases {
            assert_eq!(classify(line.as_bytes()), want, "{line:?}");
        }
    }

    #[test]
    fn sequences_table() {
        let tb = "Traceback (most recent call last):";
        let frame = "  File \"a.py\", line 1, in f";
        let cases: [(&[&str], &[&str]); 7] = [
            // Plain lines stay apart.
            (&["a", "b", "c"], &["a", "b", "c"]),
            // A traceback with no log line before it (an uncaught exception on stderr).
            (
                &[tb, frame, "E: x", "next"],
                &["{tb}\n{frame}\nE: x", "next"],
            ),
            // Two tracebacks without a banner are two records.
            (
                &["log", tb, frame, "E: 1", tb, frame, "E: 2"],
                &["log\n{tb}\n{frame}\nE: 1", "{tb}\n{frame}\nE: 2"],
            ),
            // JSON lines are never joined and never wait.
            (
                &["{\"a\":1}", tb, frame, "E: x"],
                &["{\"a\":1}", "{tb}\n{frame}\nE: x"],
            ),
            // A banner not followed by a traceback ends the record.
            (
                &["log", tb, frame, "E: 1", "", BANNER_CAUSE_STR, "", "other"],
                &["log\n{tb}\n{frame}\nE: 1\n\n{cause}\n", "other"],
            ),
            // Indented lines after the final line (notes, loguru's diagnose) stay in.
            (
                &["log", tb, frame, "E: 1", "    note", "x"],
                &["log\n{tb}\n{frame}\nE: 1\n    note", "x"],
            ),
            // A blank line before a header is not joined to the log line.
            (
                &["log", "", tb, frame, "E: 1"],
                &["log", "", "{tb}\n{frame}\nE: 1"],
            ),
        ];
        for (input, want) in cases {
            let got = join_all(&mut Joiner::new(JoinerConfig::default()), input);
            let want: Vec<String> = want
                .iter()
                .map(|w| {
                    w.replace("{tb}", tb)
                        .replace("{frame}", frame)
                        .replace("{cause}", BANNER_CAUSE_STR)
                })
                .collect();
            assert_eq!(got, want, "{input:?}");
        }
    }

    const BANNER_CAUSE_STR: &str =
        "The above exception was the direct cause of the following exception:";

    #[test]
    fn a_private_key_block_stays_in_one_record() {
        let mut j = Joiner::new(JoinerConfig::default());
        let got = join_all(
            &mut j,
            &[
                "2026-12-01 10:00:00,000 ERROR app: key leaked",
                "-----BEGIN RSA PRIVATE KEY-----",
                "MIIEowIBAAKCAQEA1234",
                "{\"looks\": \"like json\"}",
                "-----END RSA PRIVATE KEY-----",
                "next line",
                "-----BEGIN PRIVATE KEY-----",
                "abc",
            ],
        );
        assert_eq!(
            got,
            [
                "2026-12-01 10:00:00,000 ERROR app: key leaked\n-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA1234\n{\"looks\": \"like json\"}\n-----END RSA PRIVATE KEY-----",
                "next line\n-----BEGIN PRIVATE KEY-----\nabc",
            ]
        );
    }

    #[test]
    fn pending_record_is_flushed_after_the_timeout() {
        let base = Instant::now();
        let mut j = Joiner::new(JoinerConfig::default());
        let mut out = Vec::new();
        j.push(b"last line before a quiet spell", base, &mut out);
        assert!(out.is_empty());
        assert_eq!(j.deadline(), Some(at(base, 500)));
        assert_eq!(j.poll(at(base, 499)), None);
        let got = j.poll(at(base, 500)).expect("flushed");
        assert_eq!(got.text, b"last line before a quiet spell");
        assert_eq!(j.deadline(), None);
        assert_eq!(j.flush(), None);

        // A traceback that arrives after the timeout is not glued to the earlier line.
        j.push(b"log line", base, &mut out);
        j.push(
            b"Traceback (most recent call last):",
            at(base, 600),
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].text, b"log line");
        // Each joined line restarts the timeout.
        j.push(b"  File \"a.py\", line 1, in f", at(base, 1000), &mut out);
        assert_eq!(j.poll(at(base, 1400)), None);
        j.push(b"E: x", at(base, 1400), &mut out);
        assert_eq!(j.deadline(), Some(at(base, 1900)));
        let got = j.poll(at(base, 1900)).expect("flushed");
        assert_eq!(got.lines, 3);
    }

    #[test]
    fn caps_cut_and_count() {
        let lines = [
            "log",
            "Traceback (most recent call last):",
            "  f1",
            "  f2",
            "E: x",
        ];
        let mut j = Joiner::new(JoinerConfig {
            max_lines: 3,
            ..JoinerConfig::default()
        });
        let mut out = Vec::new();
        for l in lines {
            j.push(l.as_bytes(), Instant::now(), &mut out);
        }
        let got = j.flush().expect("record");
        assert_eq!(got.text, b"log\nTraceback (most recent call last):\n  f1");
        assert_eq!((got.lines, got.dropped_lines, got.dropped_bytes), (5, 2, 8));
        assert!(got.truncated());

        let mut j = Joiner::new(JoinerConfig {
            max_bytes: 10,
            ..JoinerConfig::default()
        });
        j.push(b"0123456789abcdef", Instant::now(), &mut out);
        j.push(
            b"Traceback (most recent call last):",
            Instant::now(),
            &mut out,
        );
        let got = j.flush().expect("record");
        assert_eq!(got.text, b"0123456789");
        assert_eq!(
            (got.lines, got.dropped_lines, got.dropped_bytes),
            (2, 1, 6 + 34)
        );
        j.push("012345678é".as_bytes(), Instant::now(), &mut out);
        let got = j.flush().expect("record");
        assert_eq!(
            (got.text.as_slice(), got.dropped_bytes),
            (&b"012345678"[..], 2)
        );

        let mut j = Joiner::new(JoinerConfig::default());
        j.push(b"fine\r\n", Instant::now(), &mut out);
        let got = j.flush().expect("record");
        assert_eq!(got.text, b"fine");
        assert!(!got.truncated());
    }

    fn line_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("Traceback (most recent call last):".to_owned()),
            Just(BANNER_CAUSE_STR.to_owned()),
            Just("  + Exception Group Traceback (most recent call last):".to_owned()),
            Just("  | ExceptionGroup: two (2 sub-exceptions)".to_owned()),
            Just("During handling of the above exception, another exception occurred:".to_owned()),
            Just(String::new()),
            Just("  File \"a.py\", line 3, in f".to_owned()),
            Just("    return g()".to_owned()),
            Just("ValueError: bad".to_owned()),
            Just("2024-05-01 12:00:00,000 ERROR app: failed".to_owned()),
            Just("{\"message\": \"json\"}".to_owned()),
            "[^\r\n]{0,40}",
        ]
    }

    proptest! {
        #[test]
        fn every_line_lands_in_exactly_one_record_in_order(
            input in proptest::collection::vec((line_strategy(), 0u64..800), 0..60),
            polls in proptest::collection::vec(any::<bool>(), 60),
        ) {
            let base = Instant::now();
            let mut j = Joiner::new(JoinerConfig::default());
            let mut out = Vec::new();
            let mut t = 0;
            for (i, (line, gap)) in input.iter().enumerate() {
                t += gap;
                if polls[i] {
                    out.extend(j.poll(at(base, t)));
                }
                j.push(line.as_bytes(), at(base, t), &mut out);
            }
            out.extend(j.flush());
            let mut seen = Vec::new();
            for rec in &out {
                let text = String::from_utf8(rec.text.clone()).expect("utf-8 in, utf-8 out");
                let lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
                prop_assert_eq!(lines.len(), rec.lines);
                prop_assert!(!rec.truncated());
                seen.extend(lines);
            }
            let want: Vec<String> = input.into_iter().map(|(l, _)| l).collect();
            prop_assert_eq!(seen, want);
        }

        #[test]
        fn caps_bound_every_record(
            input in proptest::collection::vec(line_strategy(), 0..80),
            max_lines in 1usize..6,
            max_bytes in 1usize..120,
        ) {
            let config = JoinerConfig { max_lines, max_bytes, ..JoinerConfig::default() };
            let mut j = Joiner::new(config);
            let mut out = Vec::new();
            for line in &input {
                j.push(line.as_bytes(), Instant::now(), &mut out);
            }
            out.extend(j.flush());
            let total: usize = out.iter().map(|r| r.lines).sum();
            prop_assert_eq!(total, input.len());
            let total_bytes: usize = input.iter().map(String::len).sum();
            let kept: usize = out.iter().map(|r| r.text.len() + 1 - r.lines.saturating_sub(r.dropped_lines)).sum();
            prop_assert_eq!(kept + out.iter().map(|r| r.dropped_bytes).sum::<usize>(), total_bytes);
            for r in &out {
                prop_assert!(r.text.len() <= max_bytes);
                prop_assert!(r.lines - r.dropped_lines <= max_lines);
            }
        }
    }
}

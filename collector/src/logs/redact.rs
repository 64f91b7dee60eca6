//! Redaction of secrets before a record leaves the agent: built-in rules for bearer tokens and
//! `Authorization` values, Slack tokens, AWS keys, PEM private keys, email addresses and card
//! numbers (Luhn-checked), plus configured patterns. Matches become `[REDACTED]`; the count per
//! rule is returned for a counter.
//!
//! Most strings hold no secret, so a string first meets a prefilter: every built-in rule names
//! literals or a digit run its matches must contain, and one literal search (SIMD for long
//! strings, a table-driven pass over the bytes for short ones) plus one byte scan tell whether
//! any could match; a string shorter than any match is not looked at. Only a string that passes
//! (or has configured patterns matching) meets the [`RegexSet`] pass, and only the rules that
//! matched then run their own replacement.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;
use regex::{Captures, Regex, RegexSet};

use super::record::{AttrValue, LogRecord};

/// What a match is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Most redaction rounds over one string (see [`Redactor::redact_string`]).
const MAX_ROUNDS: usize = 4;

/// A configured extra pattern.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatternConfig {
    /// Rule name, reported with its count.
    pub name: String,
    /// A `regex` crate pattern; the whole match is replaced, or only capture group `secret` when
    /// the pattern names one.
    pub regex: String,
}

/// Redaction settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactionConfig {
    /// Use the built-in rules.
    pub builtins: bool,
    /// Extra patterns, applied after the built-ins.
    pub patterns: Vec<PatternConfig>,
}

impl Default for RedactionConfig {
    fn default() -> Self {
        Self {
            builtins: true,
            patterns: Vec::new(),
        }
    }
}

/// Errors building a [`Redactor`].
#[derive(Debug, thiserror::Error)]
pub enum RedactError {
    #[error("redaction pattern {name:?} is not a valid regex: {source}")]
    InvalidPattern {
        name: String,
        #[source]
        source: regex::Error,
    },
    #[error("redaction patterns are too large together: {0}")]
    SetTooLarge(#[source] regex::Error),
}

/// A second check on a match, to leave ordinary text alone.
#[derive(Debug, Clone, Copy)]
enum Check {
    None,
    Luhn,
}

/// What every match of a built-in rule contains, for the prefilter.
#[derive(Debug, Clone, Copy)]
enum Needs {
    /// One of these literals, byte for byte (the rule's pattern does not fold case).
    AnyOfExact(&'static [&'static str]),
    /// One of these literals, compared with ASCII case folded.
    AnyOf(&'static [&'static str]),
    /// A run of this many ASCII digits with at most one space or dash between two of them.
    DigitRun(usize),
}

/// A built-in rule: name, pattern, check, and what its matches contain. A capture group named
/// `secret` limits the replacement to that group, so `Authorization: [REDACTED]` keeps saying
/// what was removed.
struct Builtin {
    name: &'static str,
    pattern: &'static str,
    check: Check,
    needs: Needs,
}

const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "private_key",
        pattern: r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?s:.*?-----END [A-Z0-9 ]*PRIVATE KEY-----|.*)",
        check: Check::None,
        needs: Needs::AnyOfExact(&["-----BEGIN "]),
    },
    Builtin {
        name: "authorization",
        pattern: r#"(?i:authorization)["']?\s*[:=]\s*["']?(?P<secret>(?:[A-Za-z]+ +)?[^\s"',;]+)"#,
        check: Check::None,
        needs: Needs::AnyOf(&["authorization"]),
    },
    Builtin {
        name: "bearer_token",
        pattern: r"(?i:bearer)\s+(?P<secret>[A-Za-z0-9\-._~+/]{8,}=*)",
        check: Check::None,
        needs: Needs::AnyOf(&["bearer"]),
    },
    Builtin {
        name: "slack_token",
        pattern: r"(?-u:\b)xox[abprs]-[A-Za-z0-9-]{10,}",
        check: Check::None,
        needs: Needs::AnyOfExact(&["xox"]),
    },
    Builtin {
        name: "aws_access_key",
        pattern: r"(?-u:\b)(?:AKIA|ASIA)[A-Z0-9]{16}(?-u:\b)",
        check: Check::None,
        needs: Needs::AnyOfExact(&["AKIA", "ASIA"]),
    },
    Builtin {
        name: "aws_secret_key",
        pattern: r#"(?i:aws_secret_access_key|aws_secret_key|secret_access_key)["']?\s*[:=]\s*["']?(?P<secret>[A-Za-z0-9/+=]{20,})"#,
        check: Check::None,
        needs: Needs::AnyOf(&["secret_key", "secret_access_key"]),
    },
    Builtin {
        name: "email",
        pattern: r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}",
        check: Check::None,
        needs: Needs::AnyOf(&["@"]),
    },
    Builtin {
        name: "card_number",
        pattern: r"(?-u:\b)[2-6](?:[ \-]?[0-9]){12,18}(?-u:\b)",
        check: Check::Luhn,
        needs: Needs::DigitRun(13),
    },
];

/// The built-ins' necessary condition (see the module docs). It holds for ASCII text only: under
/// `(?i)` the regex crate also matches `ſ` for `s` and the Kelvin sign for `k`, so a string
/// with a non-ASCII byte is always passed on.
#[derive(Debug)]
struct Prefilter {
    literals: Literals,
    /// The same search for short strings, byte by byte.
    short: ShortScan,
    /// Shortest digit run a rule needs (`usize::MAX`: no rule needs one).
    digit_run: usize,
}

/// Strings up to this long are looked at by [`ShortScan`]: the packed searcher's set-up per call
/// costs more than reading a hundred bytes eight at a time.
const SHORT_STRING: usize = 128;

impl Prefilter {
    fn new() -> Self {
        let mut literals = Vec::new();
        let mut digit_run = usize::MAX;
        for b in BUILTINS {
            match b.needs {
                Needs::AnyOfExact(l) => literals.extend(l.iter().map(|l| (*l, false))),
                Needs::AnyOf(l) => literals.extend(l.iter().map(|l| (*l, true))),
                Needs::DigitRun(n) => digit_run = digit_run.min(n),
            }
        }
        Self {
            short: ShortScan::new(&literals),
            literals: Literals::new(&literals),
            digit_run,
        }
    }

    /// False only when no built-in rule can match `s`.
    fn may_match(&self, s: &str) -> bool {
        let b = s.as_bytes();
        let literal = if b.len() <= SHORT_STRING {
            self.short.may_match(b)
        } else {
            !s.is_ascii() || self.literals.is_match(b)
        };
        literal || has_digit_run(b, self.digit_run)
    }
}

/// What [`Literals::is_match`] finds, plus any non-ASCII byte, in one pass over the bytes. Each
/// literal is anchored on its rarest byte in log text (see [`commonness`]: `z` of
/// `authorization`, `_` of `secret_key`, …); a table says for each byte whether it passes the
/// string on its own (non-ASCII, a one-byte literal), anchors some literals, or neither. The
/// bytes are read eight at a time: a block whose eight table entries are all "neither" (most of
/// them) costs one test; otherwise its bytes are looked at one by one and the literals anchored
/// on a byte are compared where they would start.
#[derive(Debug)]
struct ShortScan {
    /// Per byte: [`ShortScan::NOTHING`], [`ShortScan::PASS`], or `START + g` for group `g`.
    class: [u8; 256],
    /// Per group: the literals anchored on the group's byte.
    anchored: Vec<Vec<Anchored>>,
}

/// A literal anchored on one of its bytes, with its first eight bytes as a masked word: most
/// candidates (an anchor byte in ordinary text) are turned down by one load, `and` and compare.
#[derive(Debug)]
struct Anchored {
    literal: &'static [u8],
    /// The anchor byte's offset in the literal.
    anchor: usize,
    /// Whether the literal folds ASCII case.
    fold: bool,
    /// Per byte of the first eight: `0xff` (compare as is), `0xdf` (a letter, either case:
    /// clearing bit 5 maps exactly the two cases of a letter to one), `0` (past the literal).
    mask: u64,
    /// The literal's first eight bytes under `mask`.
    value: u64,
}

impl Anchored {
    fn new(literal: &'static [u8], anchor: usize, fold: bool) -> Self {
        let (mut mask, mut value) = ([0u8; 8], [0u8; 8]);
        for (i, &c) in literal.iter().take(8).enumerate() {
            mask[i] = if fold && c.is_ascii_alphabetic() {
                0xdf
            } else {
                0xff
            };
            value[i] = c & mask[i];
        }
        Self {
            literal,
            anchor,
            fold,
            mask: u64::from_le_bytes(mask),
            value: u64::from_le_bytes(value),
        }
    }

    /// Whether the literal occurs in `s` with its anchor byte at `i`.
    #[inline(always)]
    fn found_at(&self, s: &[u8], i: usize) -> bool {
        let Some(start) = i.checked_sub(self.anchor) else {
            return false;
        };
        let Some(there) = s.get(start..start + self.literal.len()) else {
            return false;
        };
        // The first eight bytes as one word, when eight are there to read.
        if let Some(word) = s
            .get(start..start + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map(u64::from_le_bytes)
        {
            if word & self.mask != self.value {
                return false;
            }
            if self.literal.len() <= 8 {
                return true;
            }
        }
        if self.fold {
            there.eq_ignore_ascii_case(self.literal)
        } else {
            there == self.literal
        }
    }
}

/// Roughly how often a byte turns up in the values of log lines (higher: more often), to anchor
/// each literal on its rarest byte. Only the order matters, and only for speed.
fn commonness(b: u8) -> u32 {
    match b {
        b' ' => 100,
        b'e' | b't' | b'a' | b'o' | b'i' | b'n' | b's' | b'r' | b'h' => 60,
        b'0'..=b'9' => 50,
        b'l' | b'd' | b'c' | b'u' | b'm' => 40,
        b'/' | b'.' | b'-' | b':' | b',' | b'"' | b'=' => 30,
        b'p' | b'f' | b'g' | b'w' | b'y' | b'b' | b'v' | b'k' => 20,
        b'_' => 10,
        b'E' | b'T' | b'A' | b'O' | b'I' | b'N' | b'S' | b'R' | b'H' | b'L' | b'D' | b'C'
        | b'U' | b'M' => 6,
        b'A'..=b'Z' => 4,
        b'x' | b'j' | b'q' | b'z' => 3,
        _ => 2,
    }
}

/// A byte and, when `fold` and it is a letter, its other case.
fn cases(c: u8, fold: bool) -> Vec<u8> {
    if fold && c.is_ascii_alphabetic() {
        vec![c.to_ascii_lowercase(), c.to_ascii_uppercase()]
    } else {
        vec![c]
    }
}

impl ShortScan {
    const NOTHING: u8 = 0;
    const PASS: u8 = 1;
    const START: u8 = 2;

    fn new(literals: &[(&'static str, bool)]) -> Self {
        let mut class = [Self::NOTHING; 256];
        class[0x80..].fill(Self::PASS);
        let mut anchored: Vec<Vec<Anchored>> = Vec::new();
        for &(lit, fold) in literals {
            let b = lit.as_bytes();
            if b.is_empty() {
                // An empty literal occurs everywhere.
                class = [Self::PASS; 256];
                continue;
            }
            let rarity = |c: u8| cases(c, fold).into_iter().map(commonness).sum::<u32>();
            let at = (0..b.len()).min_by_key(|&i| rarity(b[i])).unwrap_or(0);
            for c in cases(b[at], fold) {
                let slot = &mut class[usize::from(c)];
                if *slot == Self::PASS {
                    continue;
                }
                if b.len() == 1 {
                    *slot = Self::PASS;
                    continue;
                }
                if *slot == Self::NOTHING {
                    // At most one group per ASCII byte: far below the table's 254.
                    *slot =
                        Self::START + u8::try_from(anchored.len()).unwrap_or(u8::MAX - Self::START);
                    anchored.push(Vec::new());
                }
                if let Some(group) = anchored.get_mut(usize::from(*slot - Self::START)) {
                    group.push(Anchored::new(b, at, fold));
                }
            }
        }
        Self { class, anchored }
    }

    fn may_match(&self, s: &[u8]) -> bool {
        if s.len() < 8 {
            return self.hit_in(s, 0, s.len());
        }
        // Whole blocks, then the last eight bytes (overlapping the last block: a byte looked at
        // twice changes nothing).
        let mut at = 0;
        loop {
            let end = (at + 8).min(s.len());
            let from = end - 8;
            let classes = self.block_classes(s, from);
            if classes != 0 && self.hit_in_block(s, from, classes) {
                return true;
            }
            if end == s.len() {
                return false;
            }
            at = end;
        }
    }

    /// The classes of the eight bytes from `at`, one byte each (byte `j` of the word is the
    /// class of `s[at + j]`): 0 when none of them is more than [`ShortScan::NOTHING`].
    #[inline(always)]
    fn block_classes(&self, s: &[u8], at: usize) -> u64 {
        let Some(block) = s.get(at..at + 8) else {
            return 0;
        };
        let class = |j: usize| u64::from(self.class[usize::from(block[j])]) << (8 * j);
        class(0) | class(1) | class(2) | class(3) | class(4) | class(5) | class(6) | class(7)
    }

    /// Whether a byte of the block at `at` whose class is set in `classes` passes `s` or
    /// anchors a literal found in `s`; only those bytes are looked at.
    #[inline(never)]
    fn hit_in_block(&self, s: &[u8], at: usize, mut classes: u64) -> bool {
        while classes != 0 {
            let shift = classes.trailing_zeros() & !7;
            // The low byte of the shifted word is one byte's class (`as u8` keeps just it).
            let k = (classes >> shift) as u8;
            classes &= !(0xff_u64 << shift);
            if self.candidate(s, at + (shift / 8) as usize, k) {
                return true;
            }
        }
        false
    }

    /// Whether a byte of `s[from..to]` passes `s` or anchors a literal found in `s`.
    fn hit_in(&self, s: &[u8], from: usize, to: usize) -> bool {
        (from..to).any(|i| self.candidate(s, i, self.class[usize::from(s[i])]))
    }

    /// Whether byte `i` of `s`, of class `k`, passes `s` or anchors a literal found in `s`.
    #[inline(always)]
    fn candidate(&self, s: &[u8], i: usize, k: u8) -> bool {
        match k {
            Self::NOTHING => false,
            Self::PASS => true,
            _ => match self.anchored.get(usize::from(k - Self::START)) {
                Some(group) => group.iter().any(|a| a.found_at(s, i)),
                None => true,
            },
        }
    }
}

/// Bytes of a literal's window that the packed searcher looks for.
const WINDOW: usize = 3;

/// Finds whether any of a few literals occurs, some with ASCII case folded.
///
/// An Aho-Corasick automaton that folds case has no fast prefilter for literals starting with
/// common letters and steps through every byte. Here each literal is found through one
/// three-byte window of it, spelled in every letter case, with aho-corasick's packed (SIMD)
/// searcher; each hit is then compared with the whole literal. Literals shorter than the
/// window are single bytes found with `memchr`. Without SIMD, the automaton does it all.
#[derive(Debug)]
enum Literals {
    Packed {
        windows: aho_corasick::packed::Searcher,
        /// Per window pattern: the literals it is part of, with the window's offset in each and
        /// whether the literal folds case.
        owners: Vec<Vec<(&'static str, usize, bool)>>,
        /// Literals of one byte (both cases of a letter, when folded).
        bytes: Vec<u8>,
    },
    Automaton(aho_corasick::AhoCorasick, aho_corasick::AhoCorasick),
}

impl Literals {
    fn new(literals: &[(&'static str, bool)]) -> Self {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        let mut owners: Vec<Vec<(&'static str, usize, bool)>> = Vec::new();
        let mut bytes = Vec::new();
        let mut packable = true;
        for &(lit, fold) in literals {
            let b = lit.as_bytes();
            if b.len() < WINDOW {
                if b.len() != 1 {
                    packable = false;
                    continue;
                }
                bytes.push(b[0].to_ascii_lowercase());
                if fold {
                    bytes.push(b[0].to_ascii_uppercase());
                }
                continue;
            }
            // The window with the fewest case spellings (digits and punctuation have one).
            let variants = |w: &[u8]| -> usize {
                if fold {
                    1 << w.iter().filter(|c| c.is_ascii_alphabetic()).count()
                } else {
                    1
                }
            };
            let at = (0..=b.len() - WINDOW)
                .min_by_key(|&i| variants(&b[i..i + WINDOW]))
                .unwrap_or(0);
            let window = &b[at..at + WINDOW];
            for spelling in spellings(window, fold) {
                match patterns.iter().position(|p| *p == spelling) {
                    Some(i) => owners[i].push((lit, at, fold)),
                    None => {
                        patterns.push(spelling);
                        owners.push(vec![(lit, at, fold)]);
                    }
                }
            }
        }
        bytes.dedup();
        let windows = if packable && !patterns.is_empty() {
            aho_corasick::packed::Config::new()
                .match_kind(aho_corasick::packed::MatchKind::LeftmostFirst)
                .builder()
                .extend(&patterns)
                .build()
        } else {
            None
        };
        match windows {
            Some(windows) => Literals::Packed {
                windows,
                owners,
                bytes,
            },
            None => Self::automaton(literals),
        }
    }

    /// The same search with two Aho-Corasick automata (folded literals, exact literals).
    fn automaton(literals: &[(&'static str, bool)]) -> Self {
        let build = |fold: bool| {
            aho_corasick::AhoCorasickBuilder::new()
                .ascii_case_insensitive(fold)
                .build(literals.iter().filter(|l| l.1 == fold).map(|l| l.0))
                // A handful of short literals: far below every automaton limit.
                .expect("built-in literals build an automaton")
        };
        Literals::Automaton(build(true), build(false))
    }

    fn is_match(&self, s: &[u8]) -> bool {
        match self {
            Literals::Automaton(folded, exact) => folded.is_match(s) || exact.is_match(s),
            Literals::Packed {
                windows,
                owners,
                bytes,
            } => {
                if bytes.iter().any(|&b| memchr::memchr(b, s).is_some()) {
                    return true;
                }
                if s.len() < WINDOW {
                    // Too short to hold a window, so any longer literal.
                    return false;
                }
                let mut from = 0;
                while from < s.len() {
                    let Some(m) = windows.find_in(s, aho_corasick::Span::from(from..s.len()))
                    else {
                        return false;
                    };
                    let hit = owners[m.pattern().as_usize()]
                        .iter()
                        .any(|&(lit, at, fold)| {
                            let Some(start) = m.start().checked_sub(at) else {
                                return false;
                            };
                            let Some(there) = s.get(start..start + lit.len()) else {
                                return false;
                            };
                            if fold {
                                there.eq_ignore_ascii_case(lit.as_bytes())
                            } else {
                                there == lit.as_bytes()
                            }
                        });
                    if hit {
                        return true;
                    }
                    // Windows may overlap: look again one byte further.
                    from = m.start() + 1;
                }
                false
            }
        }
    }
}

/// Every spelling of `window` (each ASCII letter in both cases when `fold`).
fn spellings(window: &[u8], fold: bool) -> Vec<Vec<u8>> {
    let mut out = vec![Vec::with_capacity(window.len())];
    for &c in window {
        let cases: &[u8] = if fold && c.is_ascii_alphabetic() {
            &[c.to_ascii_lowercase(), c.to_ascii_uppercase()]
        } else {
            &[c]
        };
        out = out
            .into_iter()
            .flat_map(|prefix| {
                cases.iter().map(move |&c| {
                    let mut p = prefix.clone();
                    p.push(c);
                    p
                })
            })
            .collect();
    }
    out
}

/// Bytes a digit run is made of.
fn in_run(b: u8) -> bool {
    b.is_ascii_digit() || b == b' ' || b == b'-'
}

/// Whether `s` holds `min` ASCII digits in a row, allowing one space or dash between two digits
/// (the shape of a card number).
///
/// Such a run lies inside a stretch of at least `min` bytes that are all digits, spaces or
/// dashes, so the scan looks at every `min`-th byte and only reads a stretch closely when the
/// byte it lands on could be part of one.
fn has_digit_run(s: &[u8], min: usize) -> bool {
    if min == 0 {
        return true;
    }
    if s.len() < min {
        return false;
    }
    // Bytes before `checked` are known to be in no stretch long enough.
    let mut checked = 0usize;
    let mut probe = min - 1;
    while probe < s.len() {
        if !in_run(s[probe]) {
            checked = probe + 1;
            probe += min;
            continue;
        }
        let mut start = probe;
        while start > checked && in_run(s[start - 1]) {
            start -= 1;
        }
        let mut end = probe + 1;
        while end < s.len() && in_run(s[end]) {
            end += 1;
        }
        if end - start >= min && has_digit_run_in(&s[start..end], min) {
            return true;
        }
        checked = end;
        probe = end + min;
    }
    false
}

/// [`has_digit_run`] by reading every byte: the state machine that defines a run.
fn has_digit_run_in(s: &[u8], min: usize) -> bool {
    let mut run = 0usize;
    let mut after_separator = false;
    for &b in s {
        if b.is_ascii_digit() {
            run += 1;
            after_separator = false;
            if run >= min {
                return true;
            }
        } else if (b == b' ' || b == b'-') && run > 0 && !after_separator {
            after_separator = true;
        } else {
            run = 0;
            after_separator = false;
        }
    }
    false
}

#[derive(Debug)]
struct Rule {
    regex: Regex,
    check: Check,
    has_secret_group: bool,
}

/// Replacements made, per rule (indexed like [`Redactor::rule_names`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RedactionCounts(Vec<u64>);

impl RedactionCounts {
    /// Replacements made by rule `index`.
    pub fn get(&self, index: usize) -> u64 {
        self.0.get(index).copied().unwrap_or(0)
    }

    /// All replacements.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Counts by rule index.
    pub fn as_slice(&self) -> &[u64] {
        &self.0
    }

    fn add(&mut self, index: usize, n: u64) {
        if self.0.len() <= index {
            self.0.resize(index + 1, 0);
        }
        self.0[index] += n;
    }
}

/// The rules, compiled on first use: a log source or an OTLP receiver that never sees a record
/// never builds the regexes (they are most of the agent's idle heap otherwise). Configured
/// patterns are compiled by [`Redactor::new`] already, so that an invalid one is a configuration
/// error; the set built for that check is the one used.
#[derive(Debug)]
pub struct Redactor {
    config: RedactionConfig,
    /// Rule names, in the order counts are reported.
    names: Vec<String>,
    compiled: OnceLock<Compiled>,
}

/// The compiled rules behind a [`Redactor`].
#[derive(Debug)]
struct Compiled {
    set: RegexSet,
    rules: Vec<Rule>,
    min_match_len: usize,
    /// Present when the built-ins are on.
    prefilter: Option<Prefilter>,
    /// The configured patterns alone (no prefilter knows them); `None` when there are none.
    configured: Option<RegexSet>,
}

impl Compiled {
    /// Compiles the built-ins (if enabled) and the configured patterns; an invalid pattern is
    /// reported by name (the first one found).
    fn new(config: &RedactionConfig) -> Result<Self, RedactError> {
        let mut rules = Vec::new();
        if config.builtins {
            for b in BUILTINS {
                rules.push(compile(b.name, b.pattern, b.check)?);
            }
        }
        let first_configured = rules.len();
        for p in &config.patterns {
            rules.push(compile(&p.name, &p.regex, Check::None)?);
        }
        let set = RegexSet::new(rules.iter().map(|r| r.regex.as_str()))
            .map_err(RedactError::SetTooLarge)?;
        let min_match_len = rules
            .iter()
            .map(|r| min_len(r.regex.as_str()))
            .min()
            .unwrap_or(usize::MAX);
        let configured = if rules.len() > first_configured {
            let patterns = rules[first_configured..].iter().map(|r| r.regex.as_str());
            Some(RegexSet::new(patterns).map_err(RedactError::SetTooLarge)?)
        } else {
            None
        };
        Ok(Self {
            set,
            rules,
            min_match_len,
            prefilter: config.builtins.then(Prefilter::new),
            configured,
        })
    }

    /// False only when no rule can match `s`: the built-ins' prefilter, then the configured
    /// patterns' own set.
    fn may_match(&self, s: &str) -> bool {
        if self.prefilter.as_ref().is_some_and(|p| p.may_match(s)) {
            return true;
        }
        self.configured.as_ref().is_some_and(|set| set.is_match(s))
    }
}

impl Redactor {
    /// The built-ins (if enabled) and the configured patterns; an invalid configured pattern is
    /// reported by name (the first one found). The built-ins alone are compiled on first use.
    pub fn new(config: &RedactionConfig) -> Result<Self, RedactError> {
        let builtins = BUILTINS.iter().filter(|_| config.builtins).map(|b| b.name);
        let names = builtins
            .chain(config.patterns.iter().map(|p| p.name.as_str()))
            .map(str::to_owned)
            .collect();
        let compiled = OnceLock::new();
        if !config.patterns.is_empty() {
            let _ = compiled.set(Compiled::new(config)?);
        }
        Ok(Self {
            config: config.clone(),
            names,
            compiled,
        })
    }

    /// The compiled rules, built now if this is the first use.
    fn compiled(&self) -> &Compiled {
        self.compiled.get_or_init(|| {
            // Only the built-ins are left to compile here (`new` compiled any configured
            // pattern), and they compile (`builtins_compile_on_first_use`).
            Compiled::new(&self.config).unwrap_or_else(|e| panic!("built-in redaction rules: {e}"))
        })
    }

    /// Whether there is any rule at all (built-ins off and no patterns: nothing to do).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Whether some rule matches `s` (a match the Luhn check later rejects counts too).
    pub fn is_match(&self, s: &str) -> bool {
        let c = self.compiled();
        c.may_match(s) && c.set.is_match(s)
    }

    /// The shortest text any rule can match, in bytes: shorter strings need no look.
    pub fn min_match_len(&self) -> usize {
        self.compiled().min_match_len
    }

    /// The built-in rules only.
    pub fn builtin() -> Result<Self, RedactError> {
        Self::new(&RedactionConfig::default())
    }

    /// Rule names, in the order counts are reported.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// Redacts one string in place, adding to `counts`.
    pub fn redact_string(&self, s: &mut String, counts: &mut RedactionCounts) {
        let c = self.compiled();
        // Shorter than any match: no rule can match it.
        if s.len() >= c.min_match_len && c.may_match(s) {
            c.redact_rounds(s, counts);
        }
    }

    /// [`Self::redact_string`] for a string that may borrow from the line: it is copied only
    /// when a rule matches it.
    pub fn redact_cow(&self, s: &mut Cow<'_, str>, counts: &mut RedactionCounts) {
        let c = self.compiled();
        if s.len() >= c.min_match_len && c.may_match(s) && c.set.is_match(s) {
            c.redact_rounds(s.to_mut(), counts);
        }
    }
}

impl Compiled {
    /// The replacement rounds, without the prefilter (the tests hold
    /// [`Redactor::redact_string`] to this).
    fn redact_rounds(&self, s: &mut String, counts: &mut RedactionCounts) {
        // A replacement can expose a match that was not one before (`bob@example.com4111…`:
        // once the address is gone, the card number starts on a word boundary), so repeat while
        // rounds still replace something. `[REDACTED]` itself is never replaced again, so this
        // settles; the cap only bounds hostile input.
        for _ in 0..MAX_ROUNDS {
            if !self.set.is_match(s) {
                return;
            }
            let mut replaced_any = false;
            for index in self.set.matches(s).into_iter() {
                let n = self.apply(index, s);
                if n > 0 {
                    counts.add(index, n);
                    replaced_any = true;
                }
            }
            if !replaced_any {
                return;
            }
        }
    }

    /// Runs rule `index` over `s`; returns how many replacements it made.
    fn apply(&self, index: usize, s: &mut String) -> u64 {
        let rule = &self.rules[index];
        let mut n = 0u64;
        let replaced = rule.regex.replace_all(s, |caps: &Captures<'_>| {
            let Some(whole) = caps.get(0) else {
                return String::new();
            };
            if let Check::Luhn = rule.check
                && !luhn_valid(whole.as_str())
            {
                return whole.as_str().to_owned();
            }
            let secret = caps.name("secret").filter(|_| rule.has_secret_group);
            // Already redacted (by us, or by the application): leave it and do not count it.
            if secret.unwrap_or(whole).as_str() == REDACTED {
                return whole.as_str().to_owned();
            }
            n += 1;
            match secret {
                Some(secret) => {
                    let start = secret.start() - whole.start();
                    let end = secret.end() - whole.start();
                    let w = whole.as_str();
                    format!("{}{REDACTED}{}", &w[..start], &w[end..])
                }
                None => REDACTED.to_owned(),
            }
        });
        if let Cow::Owned(new) = replaced
            && n > 0
        {
            *s = new;
        }
        n
    }
}

impl Redactor {
    /// Redacts a record's body, exception type/message/stack and every string attribute
    /// (nested ones included); returns the counts.
    pub fn redact_record(&self, record: &mut LogRecord<'_>) -> RedactionCounts {
        let mut counts = RedactionCounts::default();
        self.redact_cow(&mut record.body, &mut counts);
        if let Some(e) = &mut record.exception {
            for s in [&mut e.r#type, &mut e.message, &mut e.stacktrace]
                .into_iter()
                .flatten()
            {
                self.redact_string(s, &mut counts);
            }
        }
        for (_, v) in record.attributes.iter_mut() {
            self.redact_value(v, &mut counts);
        }
        counts
    }

    fn redact_value(&self, v: &mut AttrValue<'_>, counts: &mut RedactionCounts) {
        match v {
            AttrValue::String(s) => self.redact_cow(s, counts),
            AttrValue::Array(items) => {
                for item in items {
                    self.redact_value(item, counts);
                }
            }
            AttrValue::Map(m) => {
                for (_, item) in m.iter_mut() {
                    self.redact_value(item, counts);
                }
            }
            AttrValue::Null | AttrValue::Bool(_) | AttrValue::Int(_) | AttrValue::Float(_) => {}
        }
    }
}

/// Rule sets compiled for [`Redactor::shared`]: the most recent one held, the others while
/// something uses them.
#[derive(Default)]
struct SharedRedactors {
    latest: Option<(RedactionConfig, Arc<Redactor>)>,
    live: Vec<(RedactionConfig, Weak<Redactor>)>,
}

static SHARED: Mutex<SharedRedactors> = Mutex::new(SharedRedactors {
    latest: None,
    live: Vec::new(),
});

impl Redactor {
    /// [`Self::new`], compiled once per distinct configuration: the validation of a config, the
    /// log sources and the OTLP receivers that name the same rules share one compiled set. The
    /// most recently compiled set is kept (the next validation or start usually asks for it
    /// again); older ones live as long as someone holds them.
    pub fn shared(config: &RedactionConfig) -> Result<Arc<Self>, RedactError> {
        let mut shared = SHARED.lock();
        if let Some((c, r)) = &shared.latest
            && c == config
        {
            return Ok(r.clone());
        }
        shared.live.retain(|(_, w)| w.strong_count() > 0);
        let found = shared
            .live
            .iter()
            .find(|(c, _)| c == config)
            .and_then(|(_, w)| w.upgrade());
        let redactor = match found {
            Some(r) => r,
            None => {
                let r = Arc::new(Self::new(config)?);
                shared.live.push((config.clone(), Arc::downgrade(&r)));
                r
            }
        };
        shared.latest = Some((config.clone(), redactor.clone()));
        Ok(redactor)
    }
}

fn compile(name: &str, pattern: &str, check: Check) -> Result<Rule, RedactError> {
    let regex = Regex::new(pattern).map_err(|source| RedactError::InvalidPattern {
        name: name.to_owned(),
        source,
    })?;
    let has_secret_group = regex.capture_names().flatten().any(|n| n == "secret");
    Ok(Rule {
        regex,
        check,
        has_secret_group,
    })
}

/// The fewest bytes `pattern` can match (0 when unknown, so that nothing is skipped).
fn min_len(pattern: &str) -> usize {
    regex_syntax::parse(pattern)
        .ok()
        .and_then(|hir| hir.properties().minimum_len())
        .unwrap_or(0)
}

/// Luhn checksum over the digits of `s` (separators ignored).
fn luhn_valid(s: &str) -> bool {
    let mut sum = 0u32;
    let mut count = 0;
    for (i, d) in s
        .bytes()
        .rev()
        .filter(u8::is_ascii_digit)
        .map(|b| u32::from(b - b'0'))
        .enumerate()
    {
        count += 1;
        sum += if i % 2 == 1 {
            let x = d * 2;
            if x > 9 { x - 9 } else { x }
        } else {
            d
        };
    }
    count >= 13 && sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::parse::Parser;
    use crate::logs::record::{Attributes, ExceptionInfo};
    use proptest::prelude::*;

    const PJL: &str = include_str!("../../tests/fixtures/logs/python_json_logger.jsonl");

    fn redactor() -> Redactor {
        Redactor::builtin().expect("built-ins compile")
    }

    fn count_of(r: &Redactor, counts: &RedactionCounts, rule: &str) -> u64 {
        let index = r.rule_names().position(|n| n == rule).expect("rule exists");
        counts.get(index)
    }

    #[test]
    fn builtin_rules_table() {
        let pem = "key: -----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\nabc/def+==\n-----END RSA PRIVATE KEY----- done";
        type Counts = &'static [(&'static str, u64)];
        let cases: [(&str, &str, Counts); 22] = [
            (
                "Authorization: Bearer abc.def.ghi",
                "Authorization: [REDACTED]",
                &[("authorization", 1)],
            ),
            (
                r#"headers={"authorization": "Basic dXNlcjpwYXNz"}"#,
                r#"headers={"authorization": "[REDACTED]"}"#,
                &[("authorization", 1)],
            ),
            (
                "curl -H 'X-Token: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln' x",
                "curl -H 'X-Token: Bearer [REDACTED]' x",
                &[("bearer_token", 1)],
            ),
            (
                "posting with xoxb-1234567890-0987654321-AbCdEfGhIjKl now",
                "posting with [REDACTED] now",
                &[("slack_token", 1)],
            ),
            (
                "key AKIAIOSFODNN7EXAMPLE and ASIAY34FZKBOKMUTVV7A used",
                "key [REDACTED] and [REDACTED] used",
                &[("aws_access_key", 2)],
            ),
            (
                "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                "aws_secret_access_key=[REDACTED]",
                &[("aws_secret_key", 1)],
            ),
            (
                r#"{'AWS_SECRET_ACCESS_KEY': 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY'}"#,
                r#"{'AWS_SECRET_ACCESS_KEY': '[REDACTED]'}"#,
                &[("aws_secret_key", 1)],
            ),
            (pem, "key: [REDACTED] done", &[("private_key", 1)]),
            (
                "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC (cut)",
                "[REDACTED]",
                &[("private_key", 1)],
            ),
            (
                "mail bob.smith+tag@example.co.uk and ALICE@Example.COM now",
                "mail [REDACTED] and [REDACTED] now",
                &[("email", 2)],
            ),
            (
                "card 4111 1111 1111 1111 ok",
                "card [REDACTED] ok",
                &[("card_number", 1)],
            ),
            (
                "card 4111-1111-1111-1111, mc 5105105105105100.",
                "card [REDACTED], mc [REDACTED].",
                &[("card_number", 2)],
            ),
            (
                "amex 378282246310005",
                "amex [REDACTED]",
                &[("card_number", 1)],
            ),
            // Luhn fails: an ordinary number.
            (
                "order 4111 1111 1111 1112 shipped",
                "order 4111 1111 1111 1112 shipped",
                &[],
            ),
            // Too short, or part of a longer run of digits, or not a card's first digit.
            (
                "took 1234567 ns, id 41111111111111110000",
                "took 1234567 ns, id 41111111111111110000",
                &[],
            ),
            (
                "trace 1795314974021187000",
                "trace 1795314974021187000",
                &[],
            ),
            ("nothing to see here", "nothing to see here", &[]),
            ("the bearer of bad news", "the bearer of bad news", &[]),
            ("", "", &[]),
            // Already redacted upstream: unchanged and not counted.
            (
                "Authorization: [REDACTED]",
                "Authorization: [REDACTED]",
                &[],
            ),
            // A replacement exposes the next match: a second round catches it.
            (
                "bob@example.com4111 1111 1111 1111",
                "[REDACTED][REDACTED]",
                &[("email", 1), ("card_number", 1)],
            ),
            (
                "both: user=bob@example.com auth=Authorization: token s3cr3t",
                "both: user=[REDACTED] auth=Authorization: [REDACTED]",
                &[("email", 1), ("authorization", 1)],
            ),
        ];
        let r = redactor();
        for (input, want, want_counts) in cases {
            let mut s = input.to_owned();
            let mut counts = RedactionCounts::default();
            r.redact_string(&mut s, &mut counts);
            assert_eq!(s, want, "{input:?}");
            for (rule, n) in want_counts {
                assert_eq!(count_of(&r, &counts, rule), *n, "{input:?} {rule}");
            }
            let expected_total: u64 = want_counts.iter().map(|(_, n)| n).sum();
            assert_eq!(counts.total(), expected_total, "{input:?}");
        }
    }

    fn fragment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("Authorization: Bearer abc.def.ghi".to_owned()),
            Just("authorization=".to_owned()),
            Just("Bearer ".to_owned()),
            Just("bob@example.com".to_owned()),
            Just("@".to_owned()),
            Just("4111 1111 1111 1111".to_owned()),
            Just("5105105105105100".to_owned()),
            Just("AKIAIOSFODNN7EXAMPLE".to_owned()),
            Just("aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_owned()),
            Just("xoxb-1234567890-abcdef".to_owned()),
            Just("-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----".to_owned()),
            Just(REDACTED.to_owned()),
            "[ a-z0-9.:=\\-]{0,12}",
            any::<String>(),
        ]
    }

    proptest! {
        #[test]
        fn redaction_never_panics_and_is_stable(parts in proptest::collection::vec(fragment(), 0..12)) {
            let r = redactor();
            let mut s = parts.concat();
            let mut counts = RedactionCounts::default();
            r.redact_string(&mut s, &mut counts);
            let once = s.clone();
            let mut again = RedactionCounts::default();
            r.redact_string(&mut s, &mut again);
            prop_assert_eq!(&s, &once);
            prop_assert_eq!(again.total(), 0, "{}", once);
        }
    }

    /// Secrets in shapes the prefilter must still see: other letter cases, non-ASCII case
    /// folds, separators, near misses.
    fn tricky_fragment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("AUTHORIZATION=Basic dXNlcjpwYXNz".to_owned()),
            Just("AuThOrIzAtIoN: token x".to_owned()),
            Just("bEaReR abcdefghijklmnop".to_owned()),
            Just("AWS_SECRET_KEY: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCY'".to_owned()),
            // `ſ` (long s) and `K` (Kelvin sign) fold to `s` and `k` under `(?i)`.
            Just("aws_\u{17f}ecret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCY".to_owned()),
            Just("secret_\u{212a}ey=wJalrXUtnFEMI/K7MDENG/bPxRfiCY".to_owned()),
            Just("4111-1111-1111-1111".to_owned()),
            Just("3782 822463 10005".to_owned()),
            Just("4111  1111 1111 1111".to_owned()),
            Just("2026-12-06T14:13:38.857123Z".to_owned()),
            Just("xoxs-0123456789abc".to_owned()),
            Just("ASIAY34FZKBOKMUTVV7A".to_owned()),
            Just("-----BEGIN EC PRIVATE KEY-----\nMHcC".to_owned()),
            Just("caf\u{e9} \u{2139}\u{fe0f} ".to_owned()),
            "[0-9 \\-]{0,24}",
            "[A-Za-z@._:=' \"]{0,16}",
        ]
    }

    fn assert_same_as_reference(r: &Redactor, input: &str) -> Result<(), TestCaseError> {
        let mut fast = input.to_owned();
        let mut fast_counts = RedactionCounts::default();
        r.redact_string(&mut fast, &mut fast_counts);
        let mut reference = input.to_owned();
        let mut reference_counts = RedactionCounts::default();
        r.compiled()
            .redact_rounds(&mut reference, &mut reference_counts);
        prop_assert_eq!(&fast, &reference, "input {:?}", input);
        prop_assert_eq!(fast_counts, reference_counts, "input {:?}", input);
        prop_assert_eq!(
            r.is_match(input),
            r.compiled().set.is_match(input),
            "input {:?}",
            input
        );
        Ok(())
    }

    proptest! {
        #[test]
        fn prefilter_redacts_exactly_what_the_rules_do(
            parts in proptest::collection::vec(prop_oneof![fragment(), tricky_fragment()], 0..10),
        ) {
            let input = parts.concat();
            assert_same_as_reference(&redactor(), &input)?;
            let with_configured = Redactor::new(&RedactionConfig {
                builtins: true,
                patterns: vec![PatternConfig { name: "ssn".into(), regex: r"\b\d{3}-\d{2}-\d{4}\b".into() }],
            })
            .expect("valid");
            assert_same_as_reference(&with_configured, &format!("{input} 123-45-6789"))?;
            assert_same_as_reference(&with_configured, &input)?;
        }
    }

    #[test]
    fn prefilter_matches_reference_on_fixtures() {
        let r = redactor();
        let fixtures = [
            PJL,
            include_str!("../../tests/fixtures/logs/structlog.jsonl"),
            include_str!("../../tests/fixtures/logs/loguru.jsonl"),
            include_str!("../../tests/fixtures/logs/text_traceback.log"),
            include_str!("../../tests/fixtures/logs/text_exception_group.log"),
        ];
        for line in fixtures.iter().flat_map(|f| f.lines()) {
            assert_same_as_reference(&r, line).expect("same as reference");
            let record = Parser::default().parse(line.as_bytes(), 0).record;
            let mut strings = vec![record.body.clone()];
            for (_, v) in record.attributes.iter() {
                if let AttrValue::String(s) = v {
                    strings.push(s.clone());
                }
            }
            for s in strings {
                assert_same_as_reference(&r, &s).expect("same as reference");
            }
        }
    }

    fn builtin_literals() -> Vec<(&'static str, bool)> {
        let mut out = Vec::new();
        for b in BUILTINS {
            match b.needs {
                Needs::AnyOfExact(l) => out.extend(l.iter().map(|l| (*l, false))),
                Needs::AnyOf(l) => out.extend(l.iter().map(|l| (*l, true))),
                Needs::DigitRun(_) => {}
            }
        }
        out
    }

    /// Strings around the built-ins' literals: other cases, overlaps, cut-offs.
    fn near_literal() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("-----BEGIN ".to_owned()),
            Just("------BEGIN ".to_owned()),
            Just("-----begin ".to_owned()),
            Just("AuThOrIzAtIoN".to_owned()),
            Just("authorizatio".to_owned()),
            Just("bEaReR".to_owned()),
            Just("bebearer".to_owned()),
            Just("xox".to_owned()),
            Just("XOX".to_owned()),
            Just("AKIA".to_owned()),
            Just("akia".to_owned()),
            Just("ASIA".to_owned()),
            Just("SECRET_KEY".to_owned()),
            Just("secret_access_KEY".to_owned()),
            Just("secret_acces_key".to_owned()),
            Just("et_".to_owned()),
            Just("@".to_owned()),
            "[a-zA-Z_@ -]{0,8}",
        ]
    }

    proptest! {
        #[test]
        fn packed_literal_search_agrees_with_the_automaton(
            parts in proptest::collection::vec(near_literal(), 0..8),
            filler in "[a-z ]{0,80}",
        ) {
            let literals = builtin_literals();
            let packed = Literals::new(&literals);
            let automaton = Literals::automaton(&literals);
            for s in [parts.concat(), format!("{filler}{}{filler}", parts.join(" ")), filler.clone()] {
                prop_assert_eq!(packed.is_match(s.as_bytes()), automaton.is_match(s.as_bytes()), "{:?}", s);
            }
        }

        #[test]
        fn short_scan_agrees_with_the_packed_search(
            parts in proptest::collection::vec(near_literal(), 0..6),
            filler in "[a-z é]{0,20}",
        ) {
            let literals = builtin_literals();
            let packed = Literals::new(&literals);
            let short = ShortScan::new(&literals);
            for s in [parts.concat(), format!("{filler}{}{filler}", parts.join(" ")), filler.clone()] {
                let expected = !s.is_ascii() || packed.is_match(s.as_bytes());
                prop_assert_eq!(short.may_match(s.as_bytes()), expected, "{:?}", s);
            }
        }

        #[test]
        fn digit_run_skipping_agrees_with_reading_every_byte(
            s in "[0-9 \\-a.]{0,60}",
            min in 1usize..16,
        ) {
            prop_assert_eq!(has_digit_run(s.as_bytes(), min), has_digit_run_in(s.as_bytes(), min), "{:?}", s);
        }
    }

    #[test]
    fn digit_run_table() {
        let cases = [
            ("4111111111111", true),
            ("411111111111", false),
            ("4111 1111 1111 1", true),
            ("4111-1111-1111-1", true),
            ("4111  1111 1111 1", false),
            ("4111 -1111 1111 1", false),
            ("2026-12-06T14:13:38.857123Z", false),
            ("id 1795314974021187000", true),
            ("", false),
        ];
        for (s, want) in cases {
            assert_eq!(has_digit_run(s.as_bytes(), 13), want, "{s}");
        }
    }

    #[test]
    fn luhn_table() {
        let cases = [
            ("4111111111111111", true),
            ("4111 1111 1111 1111", true),
            ("4111111111111112", false),
            ("79927398713", false), // valid checksum, but too short for a card
            ("6011111111111117", true),
        ];
        for (s, want) in cases {
            assert_eq!(luhn_valid(s), want, "{s}");
        }
    }

    #[test]
    fn configured_patterns() {
        let config = RedactionConfig {
            builtins: false,
            patterns: vec![
                PatternConfig {
                    name: "ssn".into(),
                    regex: r"\b\d{3}-\d{2}-\d{4}\b".into(),
                },
                PatternConfig {
                    name: "password".into(),
                    regex: r"password=(?P<secret>\S+)".into(),
                },
            ],
        };
        let r = Redactor::new(&config).expect("valid");
        assert_eq!(r.rule_names().collect::<Vec<_>>(), ["ssn", "password"]);
        let mut s = "ssn 123-45-6789 password=hunter2 mail a@b.co".to_owned();
        let mut counts = RedactionCounts::default();
        r.redact_string(&mut s, &mut counts);
        assert_eq!(s, "ssn [REDACTED] password=[REDACTED] mail a@b.co");
        assert_eq!(counts.as_slice(), [1, 1]);

        let bad = RedactionConfig {
            builtins: true,
            patterns: vec![PatternConfig {
                name: "broken".into(),
                regex: "(unclosed".into(),
            }],
        };
        match Redactor::new(&bad) {
            Err(RedactError::InvalidPattern { name, .. }) => assert_eq!(name, "broken"),
            other => panic!("expected InvalidPattern, got {other:?}"),
        }
        let parsed: RedactionConfig =
            serde_json::from_str(r#"{"patterns": [{"name": "x", "regex": "y"}]}"#).expect("ok");
        assert!(parsed.builtins);
        assert!(serde_json::from_str::<RedactionConfig>(r#"{"paterns": []}"#).is_err());
    }

    #[test]
    fn borrowed_strings_are_copied_only_when_redacted() {
        let r = redactor();
        let mut counts = RedactionCounts::default();
        let line = String::from("nothing secret in this fairly long message at all 12345");
        let mut clean = Cow::Borrowed(line.as_str());
        r.redact_cow(&mut clean, &mut counts);
        assert!(matches!(clean, Cow::Borrowed(_)));
        let secret = String::from("mail bob@example.com now");
        let mut dirty = Cow::Borrowed(secret.as_str());
        r.redact_cow(&mut dirty, &mut counts);
        assert_eq!(dirty, "mail [REDACTED] now");
        assert_eq!(counts.total(), 1);
        let mut owned = secret.clone();
        let mut same = RedactionCounts::default();
        r.redact_string(&mut owned, &mut same);
        assert_eq!(owned, dirty, "the same as the owned path");
    }

    #[test]
    fn records_are_redacted_everywhere() {
        let r = redactor();
        let mut rec = Parser::default()
            .parse(PJL.lines().nth(5).expect("line").as_bytes(), 0)
            .record;
        let counts = r.redact_record(&mut rec);
        assert_eq!(
            rec.body,
            "password for [REDACTED] is in Authorization: [REDACTED]"
        );
        assert_eq!(count_of(&r, &counts, "email"), 1);
        assert_eq!(count_of(&r, &counts, "authorization"), 1);

        let mut nested = Attributes::new();
        nested.insert("to", AttrValue::String("carol@example.org".into()));
        let mut rec = LogRecord::from_body("ok", 0);
        rec.attributes.insert(
            "list",
            AttrValue::Array(vec![
                AttrValue::String("AKIAIOSFODNN7EXAMPLE".into()),
                AttrValue::Int(4_111_111_111_111_111),
            ]),
        );
        rec.attributes.insert("mail", AttrValue::Map(nested));
        rec.exception = Some(ExceptionInfo {
            r#type: Some("AuthError".into()),
            message: Some("bad token xoxp-1234567890-abcdefghij".into()),
            stacktrace: Some(
                "Traceback ...\nAuthError: bad token xoxp-1234567890-abcdefghij".into(),
            ),
        });
        let counts = r.redact_record(&mut rec);
        assert_eq!(counts.total(), 4);
        let e = rec.exception.as_ref().expect("exception");
        assert_eq!(e.message.as_deref(), Some("bad token [REDACTED]"));
        assert!(
            e.stacktrace
                .as_deref()
                .is_some_and(|s| s.ends_with("bad token [REDACTED]"))
        );
        assert_eq!(
            rec.attributes.get("list"),
            Some(&AttrValue::Array(vec![
                AttrValue::String(REDACTED.into()),
                // Numbers are not strings: left alone.
                AttrValue::Int(4_111_111_111_111_111),
            ]))
        );
        let to = rec
            .attributes
            .get("mail")
            .and_then(AttrValue::as_map)
            .and_then(|m| m.get("to"));
        assert_eq!(to, Some(&AttrValue::String(REDACTED.into())));
    }

    #[test]
    fn builtins_compile_on_first_use() {
        let r = redactor();
        assert!(
            r.compiled.get().is_none(),
            "nothing compiled before first use"
        );
        assert_eq!(r.rule_names().count(), BUILTINS.len());
        assert!(!r.is_empty());
        let mut s = "Authorization: Bearer abcdefgh12345678".to_owned();
        let mut counts = RedactionCounts::default();
        r.redact_string(&mut s, &mut counts);
        assert!(r.compiled.get().is_some());
        assert_eq!(s, "Authorization: [REDACTED]");
        assert_eq!(count_of(&r, &counts, "authorization"), 1);
        // Configured patterns are compiled (and checked) at once.
        let configured = Redactor::new(&RedactionConfig {
            builtins: true,
            patterns: vec![PatternConfig {
                name: "order".into(),
                regex: r"ord-\d{4}".into(),
            }],
        })
        .expect("compiles");
        assert!(configured.compiled.get().is_some());
        assert_eq!(
            configured.rule_names().last(),
            Some("order"),
            "configured names follow the built-ins"
        );
    }

    #[test]
    fn equal_configurations_share_one_compiled_set() {
        // Patterns no other test uses, so that parallel tests do not reach these entries.
        let config = |name: &str| RedactionConfig {
            builtins: false,
            patterns: vec![PatternConfig {
                name: name.into(),
                regex: r"shared-\d{6}".into(),
            }],
        };
        let a = Redactor::shared(&config("share-a")).expect("compiles");
        let again = Redactor::shared(&config("share-a")).expect("compiles");
        assert!(Arc::ptr_eq(&a, &again));
        let b = Redactor::shared(&config("share-b")).expect("compiles");
        assert!(!Arc::ptr_eq(&a, &b));
        // `a` is no longer the latest, but still held: found again, not recompiled.
        assert!(Arc::ptr_eq(
            &a,
            &Redactor::shared(&config("share-a")).expect("compiles")
        ));
        let mut s = "id shared-123456".to_string();
        let mut counts = RedactionCounts::default();
        again.redact_string(&mut s, &mut counts);
        assert_eq!(s, "id [REDACTED]");
        // An invalid pattern is reported as by `new`, and not remembered.
        let bad = RedactionConfig {
            builtins: false,
            patterns: vec![PatternConfig {
                name: "share-bad".into(),
                regex: "(".into(),
            }],
        };
        assert!(matches!(
            Redactor::shared(&bad),
            Err(RedactError::InvalidPattern { name, .. }) if name == "share-bad"
        ));
    }
}

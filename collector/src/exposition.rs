//! The exposition `/metrics` serves: the registry written as OpenMetrics text by
//! `prometheus-client`'s encoder, or as the Prometheus text format 0.0.4 (rewritten from it)
//! when the scraper does not ask for OpenMetrics.
//!
//! Collectors that hold many series may keep their exposition text ready (label sets escaped
//! once, when a series is created) and write it with [`write_direct`] instead of going through
//! the encoder token by token (the text is put in the collector's place once the encoder is
//! done). They must write exactly what the encoder would (the received OTLP metrics' and span
//! metrics' tests hold them to it byte for byte), and must be registered in the root registry
//! (no prefix, no constant labels, which the direct path would not add). The structured
//! model's walk (`model::walk`) reads such stores in place as `model::Source`s, and the rest of
//! the registry through the encoder.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The exposition format a scraper asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics when it names it, else text 0.0.4.
    pub fn from_accept(accept: Option<&str>) -> Self {
        if accept.is_some_and(|v| v.contains("application/openmetrics-text")) {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    /// The response's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS,
            Format::Text => PROMETHEUS_TEXT,
        }
    }
}

/// OpenMetrics content type.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Prometheus text exposition content type.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

thread_local! {
    /// The text collectors wrote directly during the exposition [`encode`] running on this
    /// thread; `None` outside one.
    static DIRECT: RefCell<Option<Direct>> = const { RefCell::new(None) };
}

/// What collectors wrote directly during one encode: their pieces one after the other in
/// `text`, each ending at its entry of `ends`.
#[derive(Default)]
struct Direct {
    text: String,
    ends: Vec<usize>,
}

/// The name of the placeholder family [`write_direct`] writes through the encoder (followed by
/// the index of its piece); it cannot clash with a metric name (it starts with a control
/// character).
const MARKER: &str = "\u{1}sidelight_direct_";

/// The sizes of the last body and of its direct text, to allocate the next ones once.
static LAST_LEN: AtomicUsize = AtomicUsize::new(0);
static LAST_DIRECT_LEN: AtomicUsize = AtomicUsize::new(0);

/// Collects the direct text for one encode on this thread; restores the previous state when
/// dropped (also on a panic).
struct Installed {
    previous: Option<Direct>,
}

impl Installed {
    fn new() -> Self {
        let capacity = LAST_DIRECT_LEN.load(Ordering::Relaxed);
        let direct = Direct {
            text: String::with_capacity(capacity + capacity / 16),
            ends: Vec::new(),
        };
        Installed {
            previous: DIRECT.with_borrow_mut(|d| d.replace(direct)),
        }
    }

    /// The text written directly so far.
    fn take(&self) -> Direct {
        DIRECT.with_borrow_mut(|d| d.as_mut().map(std::mem::take).unwrap_or_default())
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let previous = self.previous.take();
        DIRECT.with_borrow_mut(|d| *d = previous);
    }
}

/// Writes everything `registry` serves in `format`, as one `String` (see [`encode_body`] for
/// the body `/metrics` serves without joining its pieces).
pub fn encode(registry: &Registry, format: Format) -> Result<String, std::fmt::Error> {
    Ok(encode_body(registry, format)?.into_string())
}

/// Writes everything `registry` serves in `format`.
///
/// The encoder writes into a plain `String`; text written directly ([`write_direct`]) goes to a
/// side buffer, each piece behind a placeholder family in the encoder's text. The [`Body`] keeps
/// both buffers and lists its pieces in order (the encoder's text around each placeholder, then
/// the direct piece in its place), so neither buffer is copied to serve it; the text format is
/// rewritten from the pieces in one pass.
pub fn encode_body(registry: &Registry, format: Format) -> Result<Body, std::fmt::Error> {
    let capacity = LAST_LEN.load(Ordering::Relaxed);
    let mut encoded = String::with_capacity((capacity + capacity / 16).max(4 * 1024));
    let direct = {
        let installed = Installed::new();
        prometheus_client::encoding::text::encode(&mut encoded, registry)?;
        installed.take()
    };
    LAST_LEN.store(encoded.len(), Ordering::Relaxed);
    LAST_DIRECT_LEN.store(direct.text.len(), Ordering::Relaxed);
    let pieces = pieces(&encoded, &direct)?;
    let body = Body {
        encoded,
        direct: direct.text,
        pieces,
    };
    Ok(match format {
        Format::OpenMetrics => body,
        Format::Text => {
            let mut text = TextRewrite::default();
            let mut out = String::with_capacity(body.len());
            for piece in body.pieces() {
                text.rewrite(piece, &mut out);
            }
            Body::from(out)
        }
    })
}

/// An encoded exposition, in the buffers it was written to: the encoder's and the direct side
/// buffer, read as an ordered list of pieces of either.
#[derive(Debug)]
pub struct Body {
    encoded: String,
    direct: String,
    pieces: Vec<Piece>,
}

/// A run of a [`Body`]'s buffer.
#[derive(Debug, Clone)]
enum Piece {
    Encoded(Range<usize>),
    Direct(Range<usize>),
}

impl From<String> for Body {
    fn from(encoded: String) -> Self {
        let pieces = vec![Piece::Encoded(0..encoded.len())];
        Body {
            encoded,
            direct: String::new(),
            pieces,
        }
    }
}

impl Body {
    /// The body's size in bytes.
    pub fn len(&self) -> usize {
        self.pieces.iter().map(|p| self.piece(p).len()).sum()
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The body's text, piece by piece, in order.
    pub fn pieces(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().map(|p| self.piece(p))
    }

    /// The body's pieces as shared byte buffers (no copy of the text), in order.
    pub fn into_bytes(self) -> Vec<bytes::Bytes> {
        let encoded = bytes::Bytes::from(self.encoded);
        let direct = bytes::Bytes::from(self.direct);
        self.pieces
            .into_iter()
            .map(|p| match p {
                Piece::Encoded(r) => encoded.slice(r),
                Piece::Direct(r) => direct.slice(r),
            })
            .collect()
    }

    /// The body joined into one `String` (a copy when it has more than one piece).
    pub fn into_string(mut self) -> String {
        if let [Piece::Encoded(r)] = self.pieces.as_slice()
            && r.start == 0
        {
            self.encoded.truncate(r.end);
            return self.encoded;
        }
        let mut out = String::with_capacity(self.len());
        self.pieces().for_each(|p| out.push_str(p));
        out
    }

    fn piece(&self, piece: &Piece) -> &str {
        match piece {
            Piece::Encoded(r) => &self.encoded[r.clone()],
            Piece::Direct(r) => &self.direct[r.clone()],
        }
    }
}

/// The pieces of `encoded` with each placeholder family replaced by its piece of `direct`. A
/// placeholder not found (a direct collector registered under a prefix, which the doc forbids)
/// fails the encode rather than serving a body with a family missing.
fn pieces(encoded: &str, direct: &Direct) -> Result<Vec<Piece>, std::fmt::Error> {
    let mut pieces = Vec::with_capacity(2 * direct.ends.len() + 1);
    let mut pos = 0;
    let mut start = 0;
    for (index, &end) in direct.ends.iter().enumerate() {
        let placeholder = format!("# HELP {MARKER}{index} \n# TYPE {MARKER}{index} unknown\n");
        let at = memchr::memmem::find(&encoded.as_bytes()[pos..], placeholder.as_bytes())
            .map(|i| pos + i)
            .filter(|&at| at == 0 || encoded.as_bytes()[at - 1] == b'\n')
            .ok_or(std::fmt::Error)?;
        if at > pos {
            pieces.push(Piece::Encoded(pos..at));
        }
        if end > start {
            pieces.push(Piece::Direct(start..end));
        }
        pos = at + placeholder.len();
        start = end;
    }
    pieces.push(Piece::Encoded(pos..encoded.len()));
    Ok(pieces)
}

/// For a collector's `encode`: when a `/metrics` exposition is being encoded on this thread,
/// runs `write` (OpenMetrics text, to be served at the collector's place in the registry; it
/// appends to what the collectors before it wrote), writes a placeholder family to `encoder`
/// and returns the result; the collector must then write nothing else. Otherwise (a structured
/// walk, a plain `text::encode`) returns `None` and the collector encodes through `encoder` as
/// usual.
pub fn write_direct(
    encoder: &mut DescriptorEncoder<'_>,
    write: impl FnOnce(&mut String) -> std::fmt::Result,
) -> Option<std::fmt::Result> {
    // Out of the slot while `write` runs, so that nothing it calls finds it borrowed.
    let mut text = DIRECT.with_borrow_mut(|d| d.as_mut().map(|d| std::mem::take(&mut d.text)))?;
    let written = write(&mut text);
    let index = DIRECT.with_borrow_mut(|d| {
        let d = d.as_mut()?;
        d.text = text;
        d.ends.push(d.text.len());
        Some(d.ends.len() - 1)
    });
    // A failed write fails the whole encode, so what it left in the buffer is never served.
    if let Err(e) = written {
        return Some(Err(e));
    }
    let index = index?;
    let name = format!("{MARKER}{index}");
    Some(
        encoder
            .encode_descriptor(&name, "", None, MetricType::Unknown)
            .map(drop),
    )
}

/// Appends a family's `# HELP` and `# TYPE` lines as the text encoder writes them.
pub(crate) fn push_descriptor(out: &mut String, name: &str, help: &str, kind: MetricType) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    out.push_str(help);
    out.push_str("\n# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(kind.as_str());
    out.push('\n');
}

/// Appends a label set as the text encoder writes one: `name="value"` pairs joined by commas,
/// values escaped (`\`, `"` and newlines), no braces.
pub(crate) fn push_labels<K: AsRef<str>>(out: &mut String, labels: &[(K, String)]) {
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name.as_ref());
        out.push_str("=\"");
        if value.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
            for c in value.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
        } else {
            out.push_str(value);
        }
        out.push('"');
    }
}

/// Rewrites OpenMetrics text into the Prometheus 0.0.4 text format: counters' metadata take the
/// `_total` name, `info` / `stateset` become gauges, `unknown` becomes `untyped`, and `# UNIT`,
/// `# EOF` and exemplars are dropped. Sample lines without a `#` are copied as they are, in runs.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    TextRewrite::default().rewrite(openmetrics, &mut out);
    out
}

/// [`to_prometheus_text`] over a text given in pieces that split it between lines: the state
/// one piece leaves (a `# HELP` line waiting for its `# TYPE`) is carried to the next.
#[derive(Default)]
struct TextRewrite<'a> {
    pending_help: Option<(&'a str, &'a str)>,
}

impl<'a> TextRewrite<'a> {
    fn rewrite(&mut self, openmetrics: &'a str, out: &mut String) {
        // Start of the run of unchanged sample lines not written yet.
        let mut run = 0;
        let mut pos = 0;
        let bytes = openmetrics.as_bytes();
        while pos < bytes.len() {
            let end = memchr::memchr(b'\n', &bytes[pos..]).map_or(bytes.len(), |i| pos + i);
            let raw = &openmetrics[pos..end];
            if !raw.is_empty()
                && !raw.ends_with('\r')
                && memchr::memchr(b'#', raw.as_bytes()).is_none()
            {
                pos = end + 1;
                continue;
            }
            out.push_str(&openmetrics[run..pos]);
            pos = end + 1;
            run = pos;
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                self.pending_help = Some((name, help));
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (om_name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
                let (name, kind) = text_family(om_name, kind);
                if let Some((help_name, help)) = self.pending_help.take()
                    && help_name == om_name
                {
                    out.push_str("# HELP ");
                    out.push_str(&name);
                    out.push(' ');
                    out.push_str(help);
                    out.push('\n');
                }
                out.push_str("# TYPE ");
                out.push_str(&name);
                out.push(' ');
                out.push_str(kind);
                out.push('\n');
                continue;
            }
            if line.starts_with("# UNIT ") || line == "# EOF" || line.is_empty() {
                continue;
            }
            // Drop exemplars (` # {...} value`) outside label values.
            out.push_str(strip_exemplar(line));
            out.push('\n');
        }
        if run < bytes.len() {
            out.push_str(&openmetrics[run..]);
            if !openmetrics.ends_with('\n') {
                out.push('\n');
            }
        }
    }
}

/// An OpenMetrics family's name and type as the text format 0.0.4 writes them (counters gain
/// `_total`, info families `_info`; statesets are gauges).
fn text_family<'a>(om_name: &'a str, kind: &str) -> (std::borrow::Cow<'a, str>, &'static str) {
    match kind {
        "counter" => (format!("{om_name}_total").into(), "counter"),
        "info" => (format!("{om_name}_info").into(), "gauge"),
        "stateset" | "gauge" => (om_name.into(), "gauge"),
        "histogram" | "gaugehistogram" => (om_name.into(), "histogram"),
        "summary" => (om_name.into(), "summary"),
        _ => (om_name.into(), "untyped"),
    }
}

fn strip_exemplar(line: &str) -> &str {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match c {
            '\\' if in_quotes => escaped = !escaped,
            '"' if !escaped => in_quotes = !in_quotes,
            '#' if !in_quotes && i > 0 && line[..i].ends_with(' ') => return line[..i].trim_end(),
            _ => escaped = false,
        }
        if c != '\\' {
            escaped = false;
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    /// The rewrite as first written, line by line: the oracle of the run-copying one.
    fn reference(openmetrics: &str) -> String {
        let mut out = String::with_capacity(openmetrics.len());
        let mut pending_help: Option<(&str, &str)> = None;
        for line in openmetrics.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                pending_help = Some((name, help));
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (om_name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
                let (name, kind) = text_family(om_name, kind);
                if let Some((help_name, help)) = pending_help.take()
                    && help_name == om_name
                {
                    out.push_str(&format!("# HELP {name} {help}\n"));
                }
                out.push_str(&format!("# TYPE {name} {kind}\n"));
                continue;
            }
            if line.starts_with("# UNIT ") || line == "# EOF" || line.is_empty() {
                continue;
            }
            out.push_str(strip_exemplar(line));
            out.push('\n');
        }
        out
    }

    #[test]
    fn openmetrics_to_prometheus_text() {
        let om = "# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests_total{a=\"b # c\"} 1 # {trace_id=\"abc\"} 1.0 1.5\n# HELP b Build.\n# TYPE b info\nb_info{version=\"1\"} 1\n# TYPE s_seconds histogram\n# UNIT s_seconds seconds\ns_seconds_bucket{le=\"+Inf\"} 1\n# EOF\n";
        let text = to_prometheus_text(om);
        assert_eq!(
            text,
            "# HELP x_requests_total Requests.\n# TYPE x_requests_total counter\nx_requests_total{a=\"b # c\"} 1\n# HELP b_info Build.\n# TYPE b_info gauge\nb_info{version=\"1\"} 1\n# TYPE s_seconds histogram\ns_seconds_bucket{le=\"+Inf\"} 1\n"
        );
    }

    #[test]
    fn the_rewrite_copies_runs_as_the_line_by_line_one_wrote() {
        let samples: String = (0..50)
            .map(|i| format!("g{{a=\"{i}\",b=\"x\\\"y\"}} {i}.5\n"))
            .collect();
        for om in [
            String::new(),
            "\n\n".to_owned(),
            "# EOF\n".to_owned(),
            "a 1".to_owned(),
            "a 1\nb 2".to_owned(),
            "a 1\r\nb 2\r\n\r\n# EOF\r\n".to_owned(),
            "# HELP g G.\n# TYPE g gauge\n".to_owned() + &samples + "# EOF\n",
            format!(
                "# TYPE c counter\nc_total{{x=\"#\"}} 1 # {{t=\"1\"}} 1\n{samples}\nc_total 2\n{samples}# HELP u U\n# TYPE u unknown\nu 1\n# EOF\n"
            ),
        ] {
            assert_eq!(to_prometheus_text(&om), reference(&om), "{om:?}");
        }
    }

    /// Writes its family directly inside an exposition encode (when `direct`), through the
    /// encoder otherwise.
    #[derive(Debug)]
    struct Collected {
        name: &'static str,
        direct: bool,
    }

    fn direct(name: &'static str) -> Box<Collected> {
        Box::new(Collected { name, direct: true })
    }

    impl prometheus_client::collector::Collector for Collected {
        fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
            if self.direct
                && let Some(written) = write_direct(&mut encoder, |out| {
                    push_descriptor(out, self.name, "Collected.", MetricType::Gauge);
                    out.push_str(self.name);
                    out.push_str("{via=\"direct\"} 1\n");
                    Ok(())
                })
            {
                return written;
            }
            let mut metric =
                encoder.encode_descriptor(self.name, "Collected.", None, MetricType::Gauge)?;
            prometheus_client::encoding::EncodeMetric::encode(
                &prometheus_client::metrics::gauge::ConstGauge::new(1i64),
                metric.encode_family(&[("via", "encoder")])?,
            )
        }
    }

    /// A metric, three direct collectors with an encoded one between the first two, and a
    /// sub-registry's metric. The registry writes its metrics, then its collectors, then its
    /// sub-registries.
    fn mixed_registry() -> Registry {
        let mut r = Registry::default();
        let c: Counter = Counter::default();
        r.register("before", "Before", c.clone());
        r.register_collector(direct("first"));
        r.register_collector(Box::new(Collected {
            name: "between",
            direct: false,
        }));
        r.register_collector(direct("second"));
        r.register_collector(direct("third"));
        r.sub_registry_with_prefix("sub")
            .register("after", "After", c);
        r
    }

    #[test]
    fn direct_text_takes_its_collectors_place() {
        let r = mixed_registry();
        let families = |via: &str| {
            format!(
                "# HELP before Before.\n# TYPE before counter\nbefore_total 0\n\
                 # HELP first Collected.\n# TYPE first gauge\nfirst{{via=\"{via}\"}} 1\n\
                 # HELP between Collected.\n# TYPE between gauge\nbetween{{via=\"encoder\"}} 1\n\
                 # HELP second Collected.\n# TYPE second gauge\nsecond{{via=\"{via}\"}} 1\n\
                 # HELP third Collected.\n# TYPE third gauge\nthird{{via=\"{via}\"}} 1\n\
                 # HELP sub_after After.\n# TYPE sub_after counter\nsub_after_total 0\n# EOF\n"
            )
        };
        assert_eq!(
            encode(&r, Format::OpenMetrics).expect("encode"),
            families("direct")
        );
        // A plain encode of the same registry (no exposition running) goes through the encoder.
        let mut plain = String::new();
        prometheus_client::encoding::text::encode(&mut plain, &r).expect("encode");
        assert_eq!(plain, families("encoder"));
        // Nothing is left installed for the next encode on this thread.
        assert!(DIRECT.with_borrow(Option::is_none));
        // The text format is rewritten from the spliced body.
        assert!(
            encode(&r, Format::Text)
                .expect("encode")
                .contains("# TYPE second gauge\nsecond{via=\"direct\"} 1\n# HELP third")
        );
    }

    #[test]
    fn the_body_keeps_its_pieces_in_the_buffers_they_were_written_to() {
        let r = mixed_registry();
        let joined = encode(&r, Format::OpenMetrics).expect("encode");
        let body = encode_body(&r, Format::OpenMetrics).expect("encode");
        let pieces: Vec<&str> = body.pieces().collect();
        // The encoder's text, first, its text, second and third (adjacent placeholders leave
        // no piece between them), its text to the end.
        assert_eq!(pieces.len(), 6, "{pieces:#?}");
        assert!(pieces[1].starts_with("# HELP first ") && pieces[5].ends_with("# EOF\n"));
        assert_eq!(pieces.concat(), joined);
        assert_eq!(body.len(), joined.len());
        let bytes: Vec<u8> = body.into_bytes().concat();
        assert_eq!(bytes, joined.as_bytes());
        // The text format, rewritten piece by piece, is the rewrite of the joined body.
        let text = encode_body(&r, Format::Text).expect("encode");
        assert_eq!(text.pieces().count(), 1);
        assert_eq!(text.into_string(), to_prometheus_text(&joined));
        // A `# HELP` line at the end of one piece meets its `# TYPE` in the next.
        let mut out = String::new();
        let mut rewrite = TextRewrite::default();
        for piece in ["# HELP c Calls.\n", "# TYPE c counter\nc_total 1\n# EOF\n"] {
            rewrite.rewrite(piece, &mut out);
        }
        assert_eq!(
            out,
            "# HELP c_total Calls.\n# TYPE c_total counter\nc_total 1\n"
        );
    }

    #[test]
    fn a_placeholder_under_a_prefix_fails_the_encode() {
        let mut r = Registry::default();
        r.sub_registry_with_prefix("nested")
            .register_collector(direct("hidden"));
        assert!(encode(&r, Format::OpenMetrics).is_err());
        assert!(DIRECT.with_borrow(Option::is_none));
    }

    #[test]
    fn encode_serves_the_registry_in_both_formats() {
        let mut r = Registry::default();
        let c: Counter = Counter::default();
        c.inc();
        r.register("demo_requests", "Requests", c);
        let om = encode(&r, Format::OpenMetrics).expect("encode");
        assert_eq!(
            om,
            "# HELP demo_requests Requests.\n# TYPE demo_requests counter\ndemo_requests_total 1\n# EOF\n"
        );
        assert_eq!(
            encode(&r, Format::Text).expect("encode"),
            "# HELP demo_requests_total Requests.\n# TYPE demo_requests_total counter\ndemo_requests_total 1\n"
        );
        assert_eq!(
            Format::from_accept(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
            )),
            Format::OpenMetrics
        );
        assert_eq!(Format::from_accept(Some("text/plain")), Format::Text);
        assert_eq!(Format::from_accept(None), Format::Text);
    }
}

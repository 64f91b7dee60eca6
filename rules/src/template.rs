//! Alert label and annotation templates, expanded as Prometheus expands them: Go `text/template`
//! (the `gtmpl` crate) with `$labels`, `$externalLabels`, `$externalURL` and `$value` defined,
//! missing label keys reading as "", and Prometheus's functions `humanize`, `humanize1024`,
//! `humanizeDuration`, `humanizePercentage`, `title`, `toUpper`, `toLower`, `reReplaceAll`,
//! `match`, `stripPort` beside Go's built-ins (`printf`, `if`, `eq`, ...).
//!
//! A template that uses a function outside that list (`query`, `graphLink`, ...) fails to parse,
//! which [`check`] reports when the rule file is loaded.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use gtmpl::{Context, Func, Template};
use gtmpl_value::{FuncError, Number, Value};
use regex::Regex;

use crate::Labels;
use crate::gofmt::fmt_g;

/// What a template sees.
#[derive(Debug, Clone, Copy)]
pub struct TemplateData<'a> {
    pub labels: &'a Labels,
    pub external_labels: &'a Labels,
    pub external_url: &'a str,
    pub value: f64,
}

/// The definitions Prometheus puts in front of every alert template.
const DEFS: &str = "{{$labels := .Labels}}{{$externalLabels := .ExternalLabels}}{{$externalURL := .ExternalURL}}{{$value := .Value}}";

/// A gtmpl number as f64 (gtmpl keeps integral values as integers).
fn num_f64(n: &Number) -> Option<f64> {
    n.as_f64()
        .or_else(|| n.as_i64().map(|i| i as f64))
        .or_else(|| n.as_u64().map(|u| u as f64))
}

/// `$value` for gtmpl: a number when gtmpl's number type holds it exactly (it truncates values
/// with a fractional part below f64::EPSILON, such as negative fractions and tiny values), the
/// Go `%v` text otherwise (the `humanize*` functions read both).
fn value_of(v: f64) -> Value {
    let exact = v.fract() >= f64::EPSILON || v.is_nan() || (v == v.trunc() && v.abs() < 9.0e18);
    if exact {
        Value::Number(Number::from(v))
    } else {
        Value::String(crate::gofmt::fmt_v(v))
    }
}

fn to_f64(args: &[Value], name: &str) -> Result<f64, FuncError> {
    let [v] = args else {
        return Err(FuncError::ExactlyXArgs(name.into(), 1));
    };
    match v {
        Value::Number(n) => {
            num_f64(n).ok_or_else(|| FuncError::Generic(format!("{name}: not a number")))
        }
        Value::String(s) => s.trim().parse::<f64>().map_err(|e| {
            FuncError::Generic(format!("{name}: strconv.ParseFloat: parsing {s:?}: {e}"))
        }),
        other => Err(FuncError::Generic(format!(
            "{name}: can't convert {other} to float"
        ))),
    }
}

fn string_arg(args: &[Value], i: usize, name: &str) -> Result<String, FuncError> {
    match args.get(i) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Ok(other.to_string()),
        None => Err(FuncError::AtLeastXArgs(name.into(), i + 1)),
    }
}

fn scaled(mut v: f64, base: f64, prefixes: &[&'static str]) -> (f64, &'static str) {
    let mut prefix = "";
    for p in prefixes {
        if v.abs() < base {
            break;
        }
        prefix = p;
        v /= base;
    }
    (v, prefix)
}

fn small(mut v: f64) -> (f64, &'static str) {
    let mut prefix = "";
    for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
        if v.abs() >= 1.0 {
            break;
        }
        prefix = p;
        v *= 1000.0;
    }
    (v, prefix)
}

/// Prometheus's `humanize`.
pub fn humanize(v: f64) -> String {
    if v == 0.0 || v.is_nan() || v.is_infinite() {
        return fmt_g(v, Some(4));
    }
    if v.abs() >= 1.0 {
        let (v, p) = scaled(v, 1000.0, &["k", "M", "G", "T", "P", "E", "Z", "Y"]);
        return format!("{}{p}", fmt_g(v, Some(4)));
    }
    let (v, p) = small(v);
    format!("{}{p}", fmt_g(v, Some(4)))
}

/// Prometheus's `humanize1024`.
pub fn humanize1024(v: f64) -> String {
    if v.abs() <= 1.0 || v.is_nan() || v.is_infinite() {
        return fmt_g(v, Some(4));
    }
    let (v, p) = scaled(v, 1024.0, &["ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"]);
    format!("{}{p}", fmt_g(v, Some(4)))
}

/// Prometheus's `humanizeDuration` (seconds).
pub fn humanize_duration(v: f64) -> String {
    if v.is_nan() || v.is_infinite() {
        return fmt_g(v, Some(4));
    }
    if v == 0.0 {
        return format!("{}s", fmt_g(v, Some(4)));
    }
    if v.abs() >= 1.0 {
        let (sign, v) = if v < 0.0 { ("-", -v) } else { ("", v) };
        let d = v as i64;
        let (s, m, h, days) = (d % 60, (d / 60) % 60, (d / 3600) % 24, d / 86_400);
        if days != 0 {
            return format!("{sign}{days}d {h}h {m}m {s}s");
        }
        if h != 0 {
            return format!("{sign}{h}h {m}m {s}s");
        }
        if m != 0 {
            return format!("{sign}{m}m {s}s");
        }
        return format!("{sign}{}s", fmt_g(v, Some(4)));
    }
    let (v, p) = small(v);
    format!("{}{p}s", fmt_g(v, Some(4)))
}

/// Prometheus's `humanizePercentage`.
pub fn humanize_percentage(v: f64) -> String {
    format!("{}%", fmt_g(v * 100.0, Some(4)))
}

/// Go's `strings.Title`: the first letter of each word upper-cased.
pub fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev_sep = true;
    for c in s.chars() {
        if prev_sep {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        prev_sep = !(c.is_alphanumeric() || c == '_');
    }
    out
}

fn f_humanize(a: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::String(humanize(to_f64(a, "humanize")?)))
}
fn f_humanize1024(a: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::String(humanize1024(to_f64(a, "humanize1024")?)))
}
fn f_humanize_duration(a: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::String(humanize_duration(to_f64(
        a,
        "humanizeDuration",
    )?)))
}
fn f_humanize_percentage(a: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::String(humanize_percentage(to_f64(
        a,
        "humanizePercentage",
    )?)))
}
fn f_title(a: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::String(title(&string_arg(a, 0, "title")?)))
}
fn f_upper(a: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::String(string_arg(a, 0, "toUpper")?.to_uppercase()))
}
fn f_lower(a: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::String(string_arg(a, 0, "toLower")?.to_lowercase()))
}
fn f_re_replace_all(a: &[Value]) -> Result<Value, FuncError> {
    let pattern = string_arg(a, 0, "reReplaceAll")?;
    let repl = string_arg(a, 1, "reReplaceAll")?;
    let text = string_arg(a, 2, "reReplaceAll")?;
    let re = Regex::new(&pattern).map_err(|e| FuncError::Generic(format!("reReplaceAll: {e}")))?;
    Ok(Value::String(
        re.replace_all(&text, repl.as_str()).into_owned(),
    ))
}
fn f_match(a: &[Value]) -> Result<Value, FuncError> {
    let pattern = string_arg(a, 0, "match")?;
    let text = string_arg(a, 1, "match")?;
    let re = Regex::new(&pattern).map_err(|e| FuncError::Generic(format!("match: {e}")))?;
    Ok(Value::Bool(re.is_match(&text)))
}
fn f_strip_port(a: &[Value]) -> Result<Value, FuncError> {
    let s = string_arg(a, 0, "stripPort")?;
    let host = if let Some(rest) = s.strip_prefix('[') {
        rest.split_once("]:").map_or(s.as_str(), |(h, _)| h)
    } else if s.matches(':').count() == 1 {
        s.split_once(':').map_or(s.as_str(), |(h, _)| h)
    } else {
        s.as_str()
    };
    Ok(Value::String(host.to_owned()))
}
/// Prints a float as Go's `%v` does (the rewrite of `{{ $value }}` calls it).
fn f_go_value(a: &[Value]) -> Result<Value, FuncError> {
    match a {
        [Value::Number(n)] => Ok(Value::String(
            num_f64(n).map(crate::gofmt::fmt_v).unwrap_or_default(),
        )),
        [other] => Ok(Value::String(other.to_string())),
        _ => Err(FuncError::ExactlyXArgs("__sidelightGoValue".into(), 1)),
    }
}

/// A printf argument as Go sees it.
enum Arg {
    Float(f64),
    Int(i64),
    Str(String),
    Bool(bool),
    Other(String),
}

fn arg_of(v: &Value) -> Arg {
    match v {
        Value::Number(n) => match (n.as_f64(), n.as_i64(), n.as_u64()) {
            (Some(f), _, _) => Arg::Float(f),
            (None, Some(i), _) => Arg::Int(i),
            (None, None, Some(u)) => Arg::Float(u as f64),
            _ => Arg::Other(v.to_string()),
        },
        Value::String(s) => Arg::Str(s.clone()),
        Value::Bool(b) => Arg::Bool(*b),
        other => Arg::Other(other.to_string()),
    }
}

/// Pads `body` to `width` as Go does (`-` left-aligns, `0` pads numbers with zeros after the sign).
fn pad(body: String, width: Option<usize>, minus: bool, zero: bool) -> String {
    let Some(w) = width else { return body };
    let len = body.chars().count();
    if len >= w {
        return body;
    }
    let fill = w - len;
    if minus {
        format!("{body}{}", " ".repeat(fill))
    } else if zero {
        let (sign, digits) = match body.strip_prefix(['-', '+']) {
            Some(rest) => (&body[..1], rest.to_owned()),
            None => ("", body.clone()),
        };
        format!("{sign}{}{digits}", "0".repeat(fill))
    } else {
        format!("{}{body}", " ".repeat(fill))
    }
}

fn float_verb(f: f64, verb: char, prec: Option<usize>, plus: bool) -> String {
    let body = if f.is_nan() {
        "NaN".to_owned()
    } else if f.is_infinite() {
        if f > 0.0 {
            "+Inf".to_owned()
        } else {
            "-Inf".to_owned()
        }
    } else {
        match verb {
            'f' | 'F' => format!("{:.*}", prec.unwrap_or(6), f),
            'e' | 'E' => {
                let p = prec.unwrap_or(6);
                let raw = format!("{:.*e}", p, f);
                let (m, e) = raw.split_once('e').unwrap_or((&raw, "0"));
                let e: i32 = e.parse().unwrap_or(0);
                let out = format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
                if verb == 'E' { out.to_uppercase() } else { out }
            }
            'g' | 'G' => {
                let out = crate::gofmt::fmt_g(f, prec);
                if verb == 'G' { out.to_uppercase() } else { out }
            }
            _ => crate::gofmt::fmt_v(f),
        }
    };
    if plus && !body.starts_with(['-', '+']) {
        format!("+{body}")
    } else {
        body
    }
}

/// Go's `fmt.Sprintf` for the verbs templates use: `%v %s %q %d %f %e %g %x %t %%`, with flags
/// `-+0`, width and precision.
pub fn sprintf(format: &str, args: &[Value]) -> String {
    let mut out = String::new();
    let mut args = args.iter();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let (mut minus, mut plus, mut zero) = (false, false, false);
        while let Some(&f) = chars.peek() {
            match f {
                '-' => minus = true,
                '+' => plus = true,
                '0' => zero = true,
                ' ' | '#' => {}
                _ => break,
            }
            chars.next();
        }
        let mut width = None;
        while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
            width = Some(width.unwrap_or(0) * 10 + d as usize);
            chars.next();
        }
        let mut prec = None;
        if chars.peek() == Some(&'.') {
            chars.next();
            let mut p = 0;
            while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                p = p * 10 + d as usize;
                chars.next();
            }
            prec = Some(p);
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.next() else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        let body = match (verb, arg_of(arg)) {
            ('v' | 's', Arg::Str(s)) => match prec {
                Some(p) => s.chars().take(p).collect(),
                None => s,
            },
            ('q', Arg::Str(s)) => crate::gofmt::quote(&s),
            ('v' | 't', Arg::Bool(b)) => b.to_string(),
            ('v' | 'd', Arg::Int(i)) => {
                if plus && i >= 0 {
                    format!("+{i}")
                } else {
                    i.to_string()
                }
            }
            // gtmpl turns integral floats (such as `$value`) into integers: format them as the
            // float64 they are in Prometheus.
            ('f' | 'F' | 'e' | 'E' | 'g' | 'G', Arg::Int(i)) => {
                float_verb(i as f64, verb, prec, plus)
            }
            ('x', Arg::Int(i)) => format!("{i:x}"),
            ('X', Arg::Int(i)) => format!("{i:X}"),
            ('v' | 'f' | 'F' | 'e' | 'E' | 'g' | 'G', Arg::Float(f)) => {
                float_verb(f, verb, prec, plus)
            }
            // A number that reached the template as text (see `value_of`).
            ('f' | 'F' | 'e' | 'E' | 'g' | 'G', Arg::Str(s)) if s.parse::<f64>().is_ok() => {
                float_verb(s.parse().unwrap_or(f64::NAN), verb, prec, plus)
            }
            (v, Arg::Float(f)) => format!("%!{v}(float64={})", crate::gofmt::fmt_v(f)),
            (v, Arg::Int(i)) => format!("%!{v}(int={i})"),
            (v, Arg::Str(s)) => format!("%!{v}(string={s})"),
            (v, Arg::Bool(b)) => format!("%!{v}(bool={b})"),
            (_, Arg::Other(s)) => s,
        };
        out.push_str(&pad(body, width, minus, zero));
    }
    let extra: Vec<String> = args.map(|a| a.to_string()).collect();
    if !extra.is_empty() {
        out.push_str(&format!("%!(EXTRA {})", extra.join(", ")));
    }
    out
}

fn f_printf(a: &[Value]) -> Result<Value, FuncError> {
    let Some((Value::String(format), rest)) = a.split_first() else {
        return Err(FuncError::AtLeastXArgs("printf".into(), 1));
    };
    Ok(Value::String(sprintf(format, rest)))
}

const FUNCS: &[(&str, Func)] = &[
    ("printf", f_printf),
    ("humanize", f_humanize),
    ("humanize1024", f_humanize1024),
    ("humanizeDuration", f_humanize_duration),
    ("humanizePercentage", f_humanize_percentage),
    ("title", f_title),
    ("toUpper", f_upper),
    ("toLower", f_lower),
    ("reReplaceAll", f_re_replace_all),
    ("match", f_match),
    ("stripPort", f_strip_port),
    ("__sidelightGoValue", f_go_value),
];

fn bare_value_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"\{\{(-?)(\s*)(\$value|\.Value)(\s*)(-?)\}\}").unwrap_or_else(|_| {
            // The pattern is a constant; this branch is never taken.
            Regex::new("$^").unwrap_or_else(|_| unreachable!())
        })
    })
}

fn label_ref_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(
            r"(\$labels|\.Labels|\$externalLabels|\.ExternalLabels)\.([A-Za-z_][A-Za-z0-9_]*)",
        )
        .unwrap_or_else(|_| Regex::new("$^").unwrap_or_else(|_| unreachable!()))
    })
}

/// The template text gtmpl runs: Prometheus's definitions, then the text with a bare
/// `{{ $value }}` printed as Go prints a float.
fn source(text: &str) -> String {
    let body = bare_value_re().replace_all(text, "{{${1}${2}__sidelightGoValue ${3}${4}${5}}}");
    format!("{DEFS}{body}")
}

/// Checks that every action `{{ ... }}` is closed (quoted strings, raw strings, character
/// constants and comments inside an action skipped as Go's lexer skips them). gtmpl's lexer does
/// not return on an unclosed action, so such text never reaches it.
fn check_delimiters(text: &str) -> Result<(), String> {
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(off) = text[i..].find("{{") {
        let start = i + off;
        i = start + 2;
        loop {
            match b.get(i) {
                None => return Err(format!("unclosed action at byte {start}")),
                Some(b'}') if b.get(i + 1) == Some(&b'}') => {
                    i += 2;
                    break;
                }
                Some(b'/') if b.get(i + 1) == Some(&b'*') => match text[i + 2..].find("*/") {
                    Some(end) => i += end + 4,
                    None => return Err(format!("unclosed comment at byte {i}")),
                },
                Some(&q @ (b'"' | b'\'' | b'`')) => {
                    let open = i;
                    i += 1;
                    loop {
                        match b.get(i) {
                            None => {
                                return Err(format!("unterminated quoted string at byte {open}"));
                            }
                            Some(b'\\') if q != b'`' => i += 2,
                            Some(b'\n') if q != b'`' => {
                                return Err(format!("unterminated quoted string at byte {open}"));
                            }
                            Some(&c) if c == q => {
                                i += 1;
                                break;
                            }
                            Some(_) => i += 1,
                        }
                    }
                }
                Some(_) => i += 1,
            }
        }
    }
    Ok(())
}

fn build(text: &str) -> Result<Template, String> {
    check_delimiters(text)?;
    let mut t = Template::default();
    t.add_funcs(FUNCS);
    t.parse(source(text)).map_err(|e| e.to_string())?;
    Ok(t)
}

/// Checks that a template parses and uses only supported functions.
pub fn check(text: &str) -> Result<(), String> {
    build(text).map(|_| ())
}

/// The labels a template names (`$labels.x`, `.Labels.x`, ...): (prefix, label name).
fn label_refs(text: &str) -> Vec<(String, String)> {
    label_ref_re()
        .captures_iter(text)
        .map(|c| (c[1].to_owned(), c[2].to_owned()))
        .collect()
}

fn labels_value(l: &Labels, refs: &[(String, String)], prefixes: [&str; 2]) -> Value {
    let mut m: HashMap<String, Value> = l
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    // Go's missingkey=zero: a label the template names but the alert lacks reads as "".
    for (prefix, name) in refs {
        if prefixes.contains(&prefix.as_str()) {
            m.entry(name.clone())
                .or_insert_with(|| Value::String(String::new()));
        }
    }
    Value::Map(m)
}

/// A template parsed once, to be expanded for many alerts ([`compile`]).
#[derive(Clone)]
pub struct Compiled {
    text: String,
    parsed: Arc<Parsed>,
}

enum Parsed {
    /// Text without an action (`{{`): it expands to itself.
    Literal,
    /// The template, with the labels it names ([`label_refs`]).
    Template(Template, Vec<(String, String)>),
    Failed(String),
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("text", &self.text)
            .finish_non_exhaustive()
    }
}

/// Parses a template for [`Compiled::expand`].
pub fn compile(text: &str) -> Compiled {
    let parsed = if !text.contains("{{") {
        Parsed::Literal
    } else {
        match build(text) {
            Ok(t) => Parsed::Template(t, label_refs(text)),
            Err(e) => Parsed::Failed(e),
        }
    };
    Compiled {
        text: text.to_owned(),
        parsed: Arc::new(parsed),
    }
}

impl Compiled {
    /// The template as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether the template has no action: it expands to its text whatever the data.
    pub fn is_literal(&self) -> bool {
        matches!(*self.parsed, Parsed::Literal)
    }

    /// Expands the template, as [`expand`] does.
    pub fn expand(&self, data: &TemplateData<'_>) -> String {
        match &*self.parsed {
            Parsed::Literal => self.text.clone(),
            Parsed::Failed(e) => format!("<error expanding template: {e}>"),
            Parsed::Template(t, refs) => render(t, refs, data),
        }
    }
}

/// Expands a template; a failure gives Prometheus's `<error expanding template: ...>` text.
pub fn expand(text: &str, data: &TemplateData<'_>) -> String {
    compile(text).expand(data)
}

fn render(t: &Template, refs: &[(String, String)], data: &TemplateData<'_>) -> String {
    let mut obj = HashMap::new();
    obj.insert(
        "Labels".to_owned(),
        labels_value(data.labels, refs, ["$labels", ".Labels"]),
    );
    obj.insert(
        "ExternalLabels".to_owned(),
        labels_value(
            data.external_labels,
            refs,
            ["$externalLabels", ".ExternalLabels"],
        ),
    );
    obj.insert(
        "ExternalURL".to_owned(),
        Value::String(data.external_url.to_owned()),
    );
    obj.insert("Value".to_owned(), value_of(data.value));
    match t.render(&Context::from(Value::Object(obj))) {
        Ok(s) => s,
        Err(e) => format!("<error expanding template: {e}>"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn humanize_functions_match_prometheus() {
        // Expected outputs are Prometheus's (template_test.go and the docs' examples).
        for (v, want) in [
            (0.0, "0"),
            (1.0, "1"),
            (1234567.0, "1.235M"),
            (12345.0, "12.35k"),
            (0.0001234, "123.4u"),
            (0.5, "500m"),
            (f64::INFINITY, "+Inf"),
        ] {
            assert_eq!(humanize(v), want, "humanize({v})");
        }
        for (v, want) in [
            (0.5, "0.5"),
            (1024.0, "1ki"),
            (1048576.0, "1Mi"),
            (17179869184.0, "16Gi"),
        ] {
            assert_eq!(humanize1024(v), want, "humanize1024({v})");
        }
        for (v, want) in [
            (0.0, "0s"),
            (1.0, "1s"),
            (1.5, "1.5s"),
            (60.0, "1m 0s"),
            (3601.0, "1h 0m 1s"),
            (90061.0, "1d 1h 1m 1s"),
            (0.1, "100ms"),
            (0.000001, "1us"),
            (-90.0, "-1m 30s"),
        ] {
            assert_eq!(humanize_duration(v), want, "humanizeDuration({v})");
        }
        assert_eq!(humanize_percentage(0.1234567), "12.35%");
        assert_eq!(humanize_percentage(1.0), "100%");
        assert_eq!(title("a quick-brown fox"), "A Quick-Brown Fox");
    }

    #[test]
    fn expands_like_prometheus() {
        let l = labels(&[("instance", "host:9100"), ("job", "node")]);
        let ext = labels(&[("cluster", "eu")]);
        let data = TemplateData {
            labels: &l,
            external_labels: &ext,
            external_url: "http://prom",
            value: 1e6,
        };
        for (text, want) in [
            ("{{ $labels.instance }} down", "host:9100 down"),
            ("[{{ $labels.missing }}]", "[]"),
            ("{{ __sidelightGoValue $value }}", "1e+06"),
            ("{{ __sidelightGoValue .Value }}", "1e+06"),
            ("{{ $value }}", "1e+06"),
            ("{{ $value | humanizeDuration }}", "11d 13h 46m 40s"),
            ("{{$value}}", "1e+06"),
            ("{{ $value | humanize }}", "1M"),
            ("{{ $value | humanize1024 }}", "976.6ki"),
            (r#"{{ printf "%.2f" $value }}"#, "1000000.00"),
            (
                "{{ $externalLabels.cluster }} {{ $externalURL }}",
                "eu http://prom",
            ),
            ("{{ $labels.job | toUpper }}", "NODE"),
            ("{{ $labels.job | title }}", "Node"),
            ("{{ toLower \"ABC\" }}", "abc"),
            (r#"{{ reReplaceAll ":.*" "" $labels.instance }}"#, "host"),
            (r#"{{ $labels.instance | stripPort }}"#, "host"),
            (
                r#"{{ if match "^host" $labels.instance }}yes{{ end }}"#,
                "yes",
            ),
            ("plain text", "plain text"),
        ] {
            assert_eq!(expand(text, &data), want, "{text}");
        }
        for (v, want) in [
            (-2.5, "-2.5"),
            (1e-20, "1e-20"),
            (0.25, "0.25"),
            (-3.0, "-3"),
        ] {
            let data = TemplateData { value: v, ..data };
            assert_eq!(expand("{{ $value }}", &data), want, "{v}");
            assert_eq!(expand("{{ humanize $value }}", &data), humanize(v), "{v}");
        }
        for (fmt, want) in [
            ("%.2f", "1000000.00"),
            ("%v", "1e+06"),
            ("%g", "1e+06"),
            ("%.3e", "1.000e+06"),
            ("%10.1f|", " 1000000.0|"),
            ("%-4s|", "abc |"),
            ("%q", "\"abc\""),
            ("%d%%", "7%"),
        ] {
            let arg = match fmt {
                "%-4s|" | "%q" => Value::String("abc".into()),
                "%d%%" => Value::Number(Number::from(7i64)),
                _ => Value::Number(Number::from(1e6_f64 + 0.5)),
            };
            let got = sprintf(fmt, &[arg]);
            let want = if matches!(fmt, "%v" | "%g") {
                "1.0000005e+06"
            } else {
                want
            };
            let want = if fmt == "%.2f" { "1000000.50" } else { want };
            let want = if fmt == "%10.1f|" {
                " 1000000.5|"
            } else {
                want
            };
            let want = if fmt == "%.3e" { "1.000e+06" } else { want };
            assert_eq!(got, want, "{fmt}");
        }
        assert!(
            check("{{ query \"up\" }}").is_err(),
            "query() is not supported"
        );
        for bad in [
            "{{ $labels.x ",
            "{{",
            "{{ \"a }}",
            "{{ `a }}",
            "{{/* }}",
            "a {{ 'x }}",
        ] {
            assert!(check(bad).is_err(), "{bad}");
            assert!(
                expand(bad, &data).starts_with("<error expanding template"),
                "{bad}"
            );
        }
        assert!(check(r#"{{ "}}" }} {{/* }} */}}"#).is_ok());
    }
}

//! Go's formatting of floats and strings where Prometheus's output depends on it: `%g` and `%v`
//! (template values, `humanize*`), `strconv.FormatFloat(v, 'E', -1, 64)` (promtool's diff) and
//! `strconv.Quote` (label sets).

/// Decimal digits (no trailing zeros) and the decimal point position of |v|: v = 0.DIGITS × 10^dp.
fn digits(v: f64, precision: Option<usize>) -> (String, i32) {
    let s = match precision {
        Some(p) => format!("{:.*e}", p.saturating_sub(1), v.abs()),
        None => format!("{:e}", v.abs()),
    };
    let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let mut d: String = mant.chars().filter(char::is_ascii_digit).collect();
    while d.len() > 1 && d.ends_with('0') {
        d.pop();
    }
    (d, exp + 1)
}

fn special(v: f64) -> Option<String> {
    if v.is_nan() {
        Some("NaN".into())
    } else if v == f64::INFINITY {
        Some("+Inf".into())
    } else if v == f64::NEG_INFINITY {
        Some("-Inf".into())
    } else {
        None
    }
}

fn fmt_e(neg: bool, d: &str, dp: i32, frac: usize, e: char) -> String {
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    let mut chars = d.chars();
    out.push(chars.next().unwrap_or('0'));
    if frac > 0 {
        out.push('.');
        let rest: String = chars.collect();
        out.push_str(&rest);
        for _ in rest.len()..frac {
            out.push('0');
        }
    }
    let exp = if d == "0" { 0 } else { dp - 1 };
    out.push(e);
    out.push(if exp < 0 { '-' } else { '+' });
    let a = exp.abs();
    if a < 10 {
        out.push('0');
    }
    out.push_str(&a.to_string());
    out
}

fn fmt_f(neg: bool, d: &str, dp: i32, frac: usize) -> String {
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    let bytes = d.as_bytes();
    if dp > 0 {
        for i in 0..dp as usize {
            out.push(bytes.get(i).map_or('0', |b| *b as char));
        }
    } else {
        out.push('0');
    }
    if frac > 0 {
        out.push('.');
        for i in 1..=frac as i32 {
            let j = dp + i - 1;
            out.push(if j >= 0 {
                bytes.get(j as usize).map_or('0', |b| *b as char)
            } else {
                '0'
            });
        }
    }
    out
}

/// Go's `%g` (with `precision`, as in `%.4g`) or `%v` of a float64 (`precision` None).
pub fn fmt_g(v: f64, precision: Option<usize>) -> String {
    if let Some(s) = special(v) {
        return s;
    }
    let neg = v.is_sign_negative();
    if v == 0.0 {
        return if neg { "-0".into() } else { "0".into() };
    }
    let precision = precision.map(|p| p.max(1));
    let (d, dp) = digits(v, precision);
    let nd = d.len();
    let mut prec = precision.unwrap_or(nd);
    let mut eprec = prec;
    if eprec > nd && nd as i32 >= dp {
        eprec = nd;
    }
    if precision.is_none() {
        eprec = 6;
    }
    let exp = dp - 1;
    if exp < -4 || exp >= eprec as i32 {
        if prec > nd {
            prec = nd;
        }
        return fmt_e(neg, &d, dp, prec - 1, 'e');
    }
    if prec as i32 > dp {
        prec = nd;
    }
    fmt_f(neg, &d, dp, (prec as i32 - dp).max(0) as usize)
}

/// Go's `%v` of a float64.
pub fn fmt_v(v: f64) -> String {
    fmt_g(v, None)
}

/// Go's `strconv.FormatFloat(v, 'E', -1, 64)`.
pub fn fmt_upper_e(v: f64) -> String {
    if let Some(s) = special(v) {
        return s;
    }
    let neg = v.is_sign_negative();
    if v == 0.0 {
        return if neg { "-0E+00".into() } else { "0E+00".into() };
    }
    let (d, dp) = digits(v, None);
    fmt_e(neg, &d, dp, d.len() - 1, 'E')
}

/// Go's `strconv.FormatFloat(v, 'e', -1, 64)` (Prometheus's API writes alert values so).
pub fn fmt_lower_e(v: f64) -> String {
    if let Some(s) = special(v) {
        return s;
    }
    let neg = v.is_sign_negative();
    if v == 0.0 {
        return if neg { "-0e+00".into() } else { "0e+00".into() };
    }
    let (d, dp) = digits(v, None);
    fmt_e(neg, &d, dp, d.len() - 1, 'e')
}

/// Go's `strconv.Quote`.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_g_formatting() {
        // Expected strings are Go's fmt output.
        let cases: &[(f64, Option<usize>, &str)] = &[
            (0.0, Some(4), "0"),
            (1.0, Some(4), "1"),
            (1234.5, Some(4), "1234"),
            (1235.5, Some(4), "1236"),
            (12345.0, Some(4), "1.234e+04"),
            (123456.0, Some(4), "1.235e+05"),
            (100.0, Some(4), "100"),
            (0.5, Some(4), "0.5"),
            (0.000123456, Some(4), "0.0001235"),
            (0.0000123456, Some(4), "1.235e-05"),
            (-2.5, Some(4), "-2.5"),
            (33.33333333, Some(4), "33.33"),
            (f64::NAN, Some(4), "NaN"),
            (f64::INFINITY, Some(4), "+Inf"),
            (1.0, None, "1"),
            (1e6, None, "1e+06"),
            (123456.0, None, "123456"),
            (1234567.0, None, "1.234567e+06"),
            (0.1, None, "0.1"),
            (0.00001, None, "1e-05"),
            (0.30000000000000004, None, "0.30000000000000004"),
        ];
        for &(v, p, want) in cases {
            assert_eq!(fmt_g(v, p), want, "{v} {p:?}");
        }
    }

    #[test]
    fn go_upper_e_and_quote() {
        assert_eq!(fmt_upper_e(1.0), "1E+00");
        assert_eq!(fmt_upper_e(0.25), "2.5E-01");
        assert_eq!(fmt_upper_e(123456.0), "1.23456E+05");
        assert_eq!(fmt_upper_e(1e100), "1E+100");
        assert_eq!(quote("a\"b\\c\n"), r#""a\"b\\c\n""#);
    }
}

//! The three JSON spellings a prompt can contain, each byte for byte as its origin writes it:
//!
//! - [`tojson`]: the template filter, as llama.cpp's Jinja engine (`common/jinja/value.cpp`,
//!   `value_to_json`) writes it, which is Python's `json.dumps` as HF calls it: `", "` and
//!   `": "` without `indent`, `","` and newlines with it, keys in their order, non-ASCII kept
//!   unless `ensure_ascii`, floats as C++'s `ostream << double` prints them (`%g`, six digits).
//! - [`nlohmann_pretty`]: nlohmann's `dump(2)`, which minja's polyfills use for tool calls and
//!   tool responses.
//! - [`minja_pretty`]: minja's `Value::dump(2, true)`, which its tools polyfill uses (it differs
//!   from nlohmann's for empty arrays and objects).

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Error, ErrorKind};

/// The `tojson` filter: `tojson(value, ensure_ascii=false, indent=none, separators=none)`,
/// arguments by position or by name, in Python's order.
pub(super) fn tojson(value: &Value, rest: &[Value], kwargs: Kwargs) -> Result<Value, Error> {
    let arg = |pos: usize, name: &str| -> Result<Option<Value>, Error> {
        if let Some(v) = kwargs.get::<Option<Value>>(name)? {
            return Ok(Some(v));
        }
        Ok(rest.get(pos).cloned())
    };
    let ensure_ascii = arg(0, "ensure_ascii")?.is_some_and(|v| v.is_true());
    let indent = match arg(1, "indent")? {
        Some(v) if v.kind() == ValueKind::Number => i64::try_from(v)
            .map_err(|_| Error::new(ErrorKind::InvalidOperation, "tojson: indent must be an integer"))?,
        _ => -1,
    };
    let separators: Vec<String> = match arg(2, "separators")? {
        Some(v) if matches!(v.kind(), ValueKind::Seq) => {
            v.try_iter()?.map(|s| s.as_str().map(str::to_owned).unwrap_or_else(|| s.to_string())).collect()
        }
        _ => Vec::new(),
    };
    if arg(3, "sort_keys")?.is_some_and(|v| v.is_true()) {
        return Err(Error::new(ErrorKind::InvalidOperation, "tojson: sort_keys=true is not supported"));
    }
    kwargs.assert_all_used()?;
    let item_sep = separators.first().cloned().unwrap_or_else(|| if indent < 0 { ", ".into() } else { ",".into() });
    let key_sep = separators.get(1).cloned().unwrap_or_else(|| ": ".into());
    let mut out = String::new();
    let style = Style { indent, item_sep: &item_sep, key_sep: &key_sep };
    write_value(&mut out, value, 0, &style)?;
    if ensure_ascii {
        out = escape_non_ascii(&out);
    }
    Ok(Value::from_safe_string(out))
}

struct Style<'a> {
    indent: i64,
    item_sep: &'a str,
    key_sep: &'a str,
}

impl Style<'_> {
    fn newline(&self, out: &mut String) {
        if self.indent >= 0 {
            out.push('\n');
        }
    }
    fn pad(&self, out: &mut String, level: usize) {
        if self.indent > 0 {
            let width = usize::try_from(self.indent).unwrap_or(0) * level;
            out.extend(std::iter::repeat_n(' ', width));
        }
    }
}

fn write_value(out: &mut String, value: &Value, level: usize, style: &Style<'_>) -> Result<(), Error> {
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(out, value),
        ValueKind::String => write_string(out, value.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            out.push('[');
            if !items.is_empty() {
                style.newline(out);
                for (i, item) in items.iter().enumerate() {
                    style.pad(out, level + 1);
                    write_value(out, item, level + 1, style)?;
                    if i + 1 < items.len() {
                        out.push_str(style.item_sep);
                    }
                    style.newline(out);
                }
                style.pad(out, level);
            }
            out.push(']');
        }
        ValueKind::Map => {
            let keys: Vec<Value> = value.try_iter()?.collect();
            out.push('{');
            if !keys.is_empty() {
                style.newline(out);
                for (i, key) in keys.iter().enumerate() {
                    style.pad(out, level + 1);
                    match key.as_str() {
                        Some(k) => write_string(out, k),
                        None => write_string(out, &key.to_string()),
                    }
                    out.push_str(style.key_sep);
                    write_value(out, &value.get_item(key)?, level + 1, style)?;
                    if i + 1 < keys.len() {
                        out.push_str(style.item_sep);
                    }
                    style.newline(out);
                }
                style.pad(out, level);
            }
            out.push('}');
        }
        _ => out.push_str("null"),
    }
    Ok(())
}

fn write_number(out: &mut String, value: &Value) {
    if value.is_integer() {
        out.push_str(&value.to_string());
    } else if let Ok(f) = f64::try_from(value.clone()) {
        out.push_str(&format_g(f));
    } else {
        out.push_str(&value.to_string());
    }
}

/// A double as C++'s `std::ostream << double` prints it: `%g` with six significant digits.
pub(super) fn format_g(x: f64) -> String {
    const PRECISION: usize = 6;
    if x.is_nan() {
        return if x.is_sign_negative() { "-nan".into() } else { "nan".into() };
    }
    if x.is_infinite() {
        return if x < 0.0 { "-inf".into() } else { "inf".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0".into() } else { "0".into() };
    }
    // Rounded to PRECISION significant digits first: the exponent is the rounded one's.
    let sci = format!("{:.*e}", PRECISION - 1, x);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if exp < -4 || exp >= PRECISION as i32 {
        let mantissa = strip_zeros(mantissa);
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.unsigned_abs())
    } else {
        let decimals = usize::try_from(PRECISION as i32 - 1 - exp).unwrap_or(0);
        strip_zeros(&format!("{x:.decimals$}")).to_owned()
    }
}

fn strip_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// A JSON string as nlohmann and llama.cpp escape it: `"`, `\`, the short escapes, other
/// control characters as `\u00xx`; everything else (DEL and non-ASCII included) as is.
pub(super) fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Non-ASCII characters as `\uxxxx` (surrogate pairs above the BMP). Only strings hold them.
fn escape_non_ascii(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// nlohmann's `dump(2)`: newlines and two spaces per level, `": "` after keys, `[]`/`{}` when
/// empty, floats in their shortest round-trip form.
pub(super) fn nlohmann_pretty(value: &serde_json::Value) -> String {
    let mut out = String::new();
    pretty(&mut out, value, 0, Flavor::Nlohmann);
    out
}

/// minja's `Value::dump(2, /* to_json= */ true)`: as nlohmann's, but an empty array or object
/// still opens and closes on lines of its own.
pub(super) fn minja_pretty(value: &serde_json::Value) -> String {
    let mut out = String::new();
    pretty(&mut out, value, 0, Flavor::Minja);
    out
}

#[derive(Clone, Copy, PartialEq)]
enum Flavor {
    Nlohmann,
    Minja,
}

fn pretty(out: &mut String, value: &serde_json::Value, level: usize, flavor: Flavor) {
    use serde_json::Value as J;
    let line = |out: &mut String, level: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n(' ', level * 2));
    };
    match value {
        J::Array(items) => {
            if items.is_empty() && flavor == Flavor::Nlohmann {
                out.push_str("[]");
                return;
            }
            out.push('[');
            line(out, level + 1);
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                    line(out, level + 1);
                }
                pretty(out, item, level + 1, flavor);
            }
            line(out, level);
            out.push(']');
        }
        J::Object(map) => {
            if map.is_empty() && flavor == Flavor::Nlohmann {
                out.push_str("{}");
                return;
            }
            out.push('{');
            line(out, level + 1);
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                    line(out, level + 1);
                }
                write_string(out, key);
                out.push_str(": ");
                pretty(out, item, level + 1, flavor);
            }
            line(out, level);
            out.push('}');
        }
        scalar => write_scalar(out, scalar),
    }
}

/// A scalar as nlohmann writes it (`dump()` of a number, string, bool or null).
pub(super) fn write_scalar(out: &mut String, value: &serde_json::Value) {
    use serde_json::Value as J;
    match value {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::String(s) => write_string(out, s),
        J::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => out.push_str(&nlohmann_float(f)),
            _ => out.push_str(&n.to_string()),
        },
        J::Array(_) | J::Object(_) => {
            let mut s = String::new();
            compact(&mut s, value);
            out.push_str(&s);
        }
    }
}

/// nlohmann's compact `dump()`: no spaces at all.
pub(super) fn compact(out: &mut String, value: &serde_json::Value) {
    use serde_json::Value as J;
    match value {
        J::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                compact(out, item);
            }
            out.push(']');
        }
        J::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, key);
                out.push(':');
                compact(out, item);
            }
            out.push('}');
        }
        scalar => write_scalar(out, scalar),
    }
}

/// A double as nlohmann writes it: the shortest digits that read back the same, fixed
/// notation for decimal exponents from -4 to 15 (with `.0` when integral), else `de±XX`.
fn nlohmann_float(x: f64) -> String {
    if !x.is_finite() {
        return "null".into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    // Rust's `{:e}` is the shortest round-trip form: "d.ddde-x".
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let k = digits.len() as i32; // number of significant digits
    let n = exp + 1; // position of the decimal point relative to the digits
    let sign = if x < 0.0 { "-" } else { "" };
    let body = if k <= n && n <= 15 {
        format!("{digits}{}.0", "0".repeat(usize::try_from(n - k).unwrap_or(0)))
    } else if 0 < n && n <= 15 {
        let (int, frac) = digits.split_at(usize::try_from(n).unwrap_or(0));
        format!("{int}.{frac}")
    } else if -4 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat(usize::try_from(-n).unwrap_or(0)))
    } else {
        let (first, rest) = digits.split_at(1);
        let e = n - 1;
        let esign = if e < 0 { '-' } else { '+' };
        if rest.is_empty() {
            format!("{first}e{esign}{:02}", e.unsigned_abs())
        } else {
            format!("{first}.{rest}e{esign}{:02}", e.unsigned_abs())
        }
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_g_matches_ostream() {
        let cases = [
            (0.5, "0.5"),
            (2.0, "2"),
            (1.23456789, "1.23457"),
            (100000.0, "100000"),
            (1000000.0, "1e+06"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-1.25, "-1.25"),
            (123456789.0, "1.23457e+08"),
            (999999.5, "1e+06"),
        ];
        for (x, want) in cases {
            assert_eq!(format_g(x), want, "{x}");
        }
    }

    #[test]
    fn nlohmann_floats() {
        let cases =
            [(2.0, "2.0"), (0.1, "0.1"), (1e-5, "1e-05"), (1.5e20, "1.5e+20"), (-0.25, "-0.25"), (123.456, "123.456")];
        for (x, want) in cases {
            assert_eq!(nlohmann_float(x), want, "{x}");
        }
    }

    #[test]
    fn pretty_flavors_differ_only_when_empty() {
        let v = serde_json::json!({"a": [1, {"b": "c"}], "e": []});
        assert_eq!(
            nlohmann_pretty(&v),
            "{\n  \"a\": [\n    1,\n    {\n      \"b\": \"c\"\n    }\n  ],\n  \"e\": []\n}"
        );
        assert_eq!(
            minja_pretty(&v),
            "{\n  \"a\": [\n    1,\n    {\n      \"b\": \"c\"\n    }\n  ],\n  \"e\": [\n    \n  ]\n}"
        );
    }

    #[test]
    fn strings_escape_as_nlohmann() {
        let mut s = String::new();
        write_string(&mut s, "a\"b\\c\n\u{1}é\u{7f}");
        assert_eq!(s, "\"a\\\"b\\\\c\\n\\u0001é\u{7f}\"");
        assert_eq!(escape_non_ascii("\"é😀\""), "\"\\u00e9\\ud83d\\ude00\"");
    }
}

//! How values turn into text, as llama.cpp's Jinja engine does it (minijinja's own ways are
//! Rust's: `true`, `none`, `["a"]`):
//!
//! - `{{ value }}` (`gather_string_parts`): strings as they are, integers, floats as C's `%f`
//!   without trailing zeros (`1.5`, `2.0`), `True`/`False`, arrays as their items one after
//!   another; none, undefined and objects print nothing.
//! - `|string`: numbers as `tojson` writes them, `True`/`False`, `None`, arrays and objects
//!   in Python's repr (`['a', 1]`, `{'k': 'v'}`).
//! - `is sequence`: arrays, objects, strings and undefined, as llama.cpp (and, but for
//!   undefined, Jinja2) answers.
//!
//! The `~` operator is minijinja's and cannot be changed (`true` prints `true` there).

use minijinja::value::{Value, ValueKind};
use minijinja::{Error, Output, State};

use super::json::format_g;

/// The environment's formatter for `{{ }}`.
pub(super) fn format(out: &mut Output, _state: &State, value: &Value) -> Result<(), Error> {
    let mut text = String::new();
    gather(&mut text, value)?;
    out.write_str(&text).map_err(Error::from)
}

fn gather(out: &mut String, value: &Value) -> Result<(), Error> {
    match value.kind() {
        ValueKind::String => out.push_str(value.as_str().unwrap_or_default()),
        ValueKind::Number | ValueKind::Bool => out.push_str(&scalar(value)),
        ValueKind::Seq => {
            for item in value.try_iter()? {
                gather(out, &item)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// A number or bool as llama.cpp's `as_string` writes it.
fn scalar(value: &Value) -> String {
    match value.kind() {
        ValueKind::Bool => (if value.is_true() { "True" } else { "False" }).to_owned(),
        ValueKind::Number if value.is_integer() => value.to_string(),
        ValueKind::Number => match f64::try_from(value.clone()) {
            Ok(f) => c_float(f),
            Err(_) => value.to_string(),
        },
        _ => value.to_string(),
    }
}

/// `std::to_string(double)` (`%f`) with the trailing zeros cut, one kept after the point.
fn c_float(f: f64) -> String {
    let mut s = format!("{f:.6}");
    if s.contains('.') {
        let trimmed = s.trim_end_matches('0').len();
        s.truncate(trimmed);
        if s.ends_with('.') {
            s.push('0');
        }
    }
    s
}

/// The `string` filter.
pub(super) fn string_filter(value: &Value) -> Result<Value, Error> {
    Ok(Value::from(match value.kind() {
        ValueKind::String => return Ok(value.clone()),
        ValueKind::Number if value.is_integer() => value.to_string(),
        ValueKind::Number => f64::try_from(value.clone()).map(format_g).unwrap_or_else(|_| value.to_string()),
        ValueKind::Bool => scalar(value),
        ValueKind::None => "None".to_owned(),
        ValueKind::Undefined => "Undefined".to_owned(),
        ValueKind::Seq | ValueKind::Map => repr(value)?,
        _ => value.to_string(),
    }))
}

/// Python's repr, as llama.cpp's `as_string` of arrays and objects writes it.
fn repr(value: &Value) -> Result<String, Error> {
    Ok(match value.kind() {
        ValueKind::String => {
            let s = value.as_str().unwrap_or_default();
            if s.contains('\'') {
                let mut quoted = String::new();
                super::json::write_string(&mut quoted, s);
                quoted
            } else {
                format!("'{s}'")
            }
        }
        ValueKind::Number | ValueKind::Bool => scalar(value),
        ValueKind::None => "None".to_owned(),
        ValueKind::Undefined => "Undefined".to_owned(),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Result<Vec<String>, Error> = value.try_iter()?.map(|v| repr(&v)).collect();
            format!("[{}]", items?.join(", "))
        }
        ValueKind::Map => {
            let mut parts = Vec::new();
            for key in value.try_iter()? {
                parts.push(format!("{}: {}", repr(&key)?, repr(&value.get_item(&key)?)?));
            }
            format!("{{{}}}", parts.join(", "))
        }
        _ => value.to_string(),
    })
}

/// The `sequence` test.
pub(super) fn is_sequence(value: &Value) -> bool {
    matches!(value.kind(), ValueKind::Seq | ValueKind::Map | ValueKind::String | ValueKind::Undefined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_as_llama_cpp() {
        let mut env = minijinja::Environment::new();
        env.set_formatter(format);
        env.add_filter("string", string_filter);
        let render = |src: &str| env.render_str(src, ()).unwrap();
        assert_eq!(
            render("{{ true }}|{{ none }}|{{ 1.5 }}|{{ 2.0 }}|{{ [1, 'a', [false]] }}|{{ {'a': 1} }}"),
            "True||1.5|2.0|1aFalse|"
        );
        assert_eq!(
            render("{{ none|string }}|{{ 2.5|string }}|{{ ['a', \"it's\", 1]|string }}|{{ {'k': true}|string }}"),
            "None|2.5|['a', \"it's\", 1]|{'k': True}"
        );
    }
}

//! Validation of a batch input file, before anything runs: every problem names its line
//! (1-based, as editors count), with OpenAI's limits (50,000 lines, 200 MB).

use std::collections::HashSet;

use serde::Serialize;
use serde_json::Value;

use crate::protocol::{self, Endpoint};

pub const MAX_LINES: usize = 50_000;
pub const MAX_BYTES: u64 = 200 * 1024 * 1024;
/// Problems reported at most (the count says how many more there were).
const MAX_ERRORS: usize = 100;

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct LineError {
    pub code: String,
    pub message: String,
    pub param: Option<String>,
    pub line: Option<u32>,
}

/// One runnable line.
#[derive(Clone, Debug)]
pub struct Line {
    pub custom_id: String,
    pub body: Vec<u8>,
}

fn err(line: usize, code: &str, message: String, param: Option<&str>) -> LineError {
    LineError { code: code.into(), message, param: param.map(str::to_owned), line: Some(line as u32) }
}

/// Parses and checks every line; `known_model` says whether a model name routes somewhere.
pub fn validate(
    bytes: &[u8],
    endpoint: Endpoint,
    url: &str,
    known_model: &dyn Fn(&str) -> bool,
) -> Result<Vec<Line>, Vec<LineError>> {
    let mut errors = Vec::new();
    let mut more = 0usize;
    let mut push = |errors: &mut Vec<LineError>, e: LineError| {
        if errors.len() < MAX_ERRORS {
            errors.push(e);
        } else {
            more += 1;
        }
    };
    if bytes.len() as u64 > MAX_BYTES {
        return Err(vec![LineError {
            code: "file_too_large".into(),
            message: format!("The input file is {} bytes; a batch takes at most {MAX_BYTES}.", bytes.len()),
            param: None,
            line: None,
        }]);
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut n = 0usize;
    for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let line_no = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        n += 1;
        if n > MAX_LINES {
            push(
                &mut errors,
                err(line_no, "too_many_lines", format!("A batch takes at most {MAX_LINES} requests."), None),
            );
            break;
        }
        let v: Value = match serde_json::from_slice(raw) {
            Ok(v) => v,
            Err(e) => {
                push(
                    &mut errors,
                    err(line_no, "invalid_json_line", format!("Line {line_no} is not valid JSON: {e}."), None),
                );
                continue;
            }
        };
        let Some(o) = v.as_object() else {
            push(&mut errors, err(line_no, "invalid_request", format!("Line {line_no} is not a JSON object."), None));
            continue;
        };
        let custom_id = match o.get("custom_id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => {
                push(
                    &mut errors,
                    err(
                        line_no,
                        "missing_required_parameter",
                        format!("Line {line_no} has no 'custom_id' string."),
                        Some("custom_id"),
                    ),
                );
                continue;
            }
        };
        if !seen.insert(custom_id.clone()) {
            push(
                &mut errors,
                err(
                    line_no,
                    "duplicate_custom_id",
                    format!("Line {line_no}: the custom_id '{custom_id}' is used by an earlier line."),
                    Some("custom_id"),
                ),
            );
            continue;
        }
        match o.get("method").and_then(Value::as_str) {
            Some(m) if m.eq_ignore_ascii_case("POST") => {}
            _ => {
                push(
                    &mut errors,
                    err(
                        line_no,
                        "invalid_method",
                        format!("Line {line_no}: 'method' must be \"POST\"."),
                        Some("method"),
                    ),
                );
                continue;
            }
        }
        match o.get("url").and_then(Value::as_str) {
            Some(u) if u == url => {}
            other => {
                push(
                    &mut errors,
                    err(
                        line_no,
                        "invalid_url",
                        format!(
                            "Line {line_no}: 'url' is {}, but this batch's endpoint is {url}.",
                            other.map_or("missing".into(), |u| format!("'{u}'"))
                        ),
                        Some("url"),
                    ),
                );
                continue;
            }
        }
        let Some(body) = o.get("body").filter(|b| b.is_object()) else {
            push(
                &mut errors,
                err(line_no, "invalid_request", format!("Line {line_no}: 'body' must be an object."), Some("body")),
            );
            continue;
        };
        let body_bytes = serde_json::to_vec(body).unwrap_or_default();
        match protocol::validate(endpoint, &body_bytes) {
            Err(e) => {
                push(
                    &mut errors,
                    err(line_no, "invalid_request", format!("Line {line_no}: {}", e.message), e.param.as_deref()),
                );
                continue;
            }
            Ok(r) if r.stream => {
                push(
                    &mut errors,
                    err(
                        line_no,
                        "invalid_request",
                        format!("Line {line_no}: batch requests cannot stream."),
                        Some("body.stream"),
                    ),
                );
                continue;
            }
            Ok(r) if !known_model(&r.model) => {
                push(
                    &mut errors,
                    err(
                        line_no,
                        "model_not_found",
                        format!("Line {line_no}: the model '{}' does not exist here.", r.model),
                        Some("body.model"),
                    ),
                );
                continue;
            }
            Ok(_) => {}
        }
        out.push(Line { custom_id, body: body_bytes });
    }
    if out.is_empty() && errors.is_empty() {
        errors.push(LineError {
            code: "empty_file".into(),
            message: "The input file has no requests.".into(),
            param: None,
            line: None,
        });
    }
    if more > 0 {
        errors.push(LineError {
            code: "too_many_errors".into(),
            message: format!("{more} more lines have problems; fix the ones above first."),
            param: None,
            line: None,
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_names_its_line() {
        let input = [
            r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"hi"}]}}"#,
            r#"{"custom_id":"b", oops"#,
            r#"{"method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[]}}"#,
            r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"hi"}]}}"#,
            r#"{"custom_id":"c","method":"POST","url":"/v1/completions","body":{"model":"m","prompt":"x"}}"#,
            r#"{"custom_id":"d","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":"nope"}}"#,
            "",
            r#"{"custom_id":"e","method":"POST","url":"/v1/chat/completions","body":{"model":"other","messages":[{"role":"user","content":"hi"}]}}"#,
        ]
        .join("\n");
        let errs = validate(input.as_bytes(), Endpoint::Chat, "/v1/chat/completions", &|m| m == "m").unwrap_err();
        let lines: Vec<(u32, &str)> = errs.iter().map(|e| (e.line.unwrap(), e.code.as_str())).collect();
        assert_eq!(
            lines,
            vec![
                (2, "invalid_json_line"),
                (3, "missing_required_parameter"),
                (4, "duplicate_custom_id"),
                (5, "invalid_url"),
                (6, "invalid_request"),
                (8, "model_not_found")
            ]
        );
        let ok = validate(input.lines().next().unwrap().as_bytes(), Endpoint::Chat, "/v1/chat/completions", &|_| true)
            .unwrap();
        assert_eq!(ok[0].custom_id, "a");
    }
}

//! Tool calls in a local model's own syntax, both ways: what a request's `tools`,
//! `tool_choice` and `response_format` ask decoding to follow ([`Constraint`]), and the
//! model's text read back into OpenAI's shapes ([`OutputParser`], in `output.rs`).
//!
//! The syntaxes are llama.cpp's (`common/chat.cpp`), for the formats it detects from the
//! template's source ([`ToolFormat::detect`]):
//! - **Hermes** (Hermes 2/3 Pro, Qwen2.5, Qwen3): `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`,
//!   repeated for parallel calls, content allowed before.
//! - **Llama3** (Llama 3.1/3.2/3.3): `{"name": …, "parameters": {…}}`, optionally after `<|python_tag|>`.
//! - **Mistral** (Mistral Nemo and others with `[TOOL_CALLS]`):
//!   `[TOOL_CALLS][{"name": …, "arguments": {…}, "id": "a1b2c3d4e"}]`.
//! - **Generic** (any other template, and llama.cpp's built-in ones): the whole answer is one
//!   JSON object, `{"tool_call": {…}}`, `{"tool_calls": [{…, "id"}]}` (parallel) or
//!   `{"response": …}`, asked for by a system message and enforced by the grammar from the
//!   first token.
//!
//! Under `tool_choice: auto` the tagged formats are constrained lazily: free text until the
//! trigger word (`<tool_call>`, `{"name"`, `[TOOL_CALLS]`), the call's grammar from there on.
//! `required` or a named function constrains from the first token, the name limited to the
//! one allowed. `parallel_tool_calls: false` allows exactly one call.

use serde_json::{json, Map, Value};

use super::schema::{check_schema, embed, relax_schema};
use crate::protocol::error::ApiError;

mod json_stream;
mod output;

pub use output::{parse, Delta, OutputParser, Parsed, ToolCall};

/// The syntax a model writes tool calls in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolFormat {
    /// The JSON envelope llama.cpp uses for templates with no syntax of their own.
    Generic,
    /// `<tool_call>{json}</tool_call>`: Qwen2.5, Qwen3, Hermes 2/3 Pro.
    Hermes,
    /// `{"name": …, "parameters": …}` (after an optional `<|python_tag|>`): Llama 3.1–3.3.
    Llama3,
    /// `[TOOL_CALLS][{"name": …, "arguments": …, "id": …}]`: Mistral Nemo and its kin.
    Mistral,
}

impl ToolFormat {
    /// The format llama.cpp picks for a template, by what its source contains, in its order.
    /// Templates with a syntax llama.cpp knows and tollgate does not (DeepSeek-R1, Command R7B,
    /// Functionary, FireFunction) and `None` (llama.cpp's built-in, non-Jinja templates) are
    /// Generic.
    pub fn detect(template_source: Option<&str>) -> ToolFormat {
        let Some(src) = template_source else { return ToolFormat::Generic };
        let has = |s: &str| src.contains(s);
        if has("<｜tool▁calls▁begin｜>") || has("<|END_THINKING|><|START_ACTION|>") {
            ToolFormat::Generic
        } else if has("<tool_call>") {
            ToolFormat::Hermes
        } else if has(">>>all") || has(" functools[") || (has("<|start_header_id|>") && has("<function=")) {
            ToolFormat::Generic
        } else if has("<|start_header_id|>ipython<|end_header_id|>") {
            ToolFormat::Llama3
        } else if has("[TOOL_CALLS]") {
            ToolFormat::Mistral
        } else {
            ToolFormat::Generic
        }
    }
}

/// A function the model may call (OpenAI's `tools[].function`).
#[derive(Clone, Debug, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// Its parameters' JSON schema; `{}` when the request gave none.
    pub parameters: Value,
    pub strict: bool,
}

/// OpenAI's `tool_choice`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    /// `{"type": "function", "function": {"name": …}}`: that function, and no other.
    Named(String),
}

/// What decoding must follow: `prefix`, then JSON matching `schema`, then `suffix` (the whole
/// repeated, newline-separated, when `repeat`).
#[derive(Clone, Debug, PartialEq)]
pub struct Constraint {
    /// The JSON schema of the constrained part.
    pub schema: Value,
    /// Literal text the grammar requires before the JSON (e.g. `"<tool_call>\n"`), may be empty.
    pub prefix: String,
    /// Literal text after it (e.g. `"\n</tool_call>"`), may be empty.
    pub suffix: String,
    /// The prefix-JSON-suffix item may repeat (parallel calls), separated by `"\n"`.
    pub repeat: bool,
    /// Empty: constrained from the first token. Else only once one of these words is
    /// generated; the grammar then starts at the trigger, which begins `prefix` (or, for
    /// Llama 3, the JSON itself).
    pub lazy_triggers: Vec<String>,
}

fn bad(message: String, param: &str) -> ApiError {
    ApiError::invalid_request(message, Some(param))
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The request's `tools`: each `{"type": "function", "function": {"name", "description"?,
/// "parameters"?, "strict"?}}`, its name `[a-zA-Z0-9_-]{1,64}` and unique, its parameters a
/// schema constrained decoding can enforce ([`check_schema`]). Absent or null: none.
pub fn parse_tools(body: &Map<String, Value>) -> Result<Vec<Tool>, ApiError> {
    let list = match body.get("tools") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(bad("Invalid type for 'tools': expected an array of tools.".into(), "tools")),
    };
    let mut tools: Vec<Tool> = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let at = format!("tools[{i}]");
        let Value::Object(t) = t else {
            return Err(bad(format!("Invalid type for '{at}': expected an object."), &at));
        };
        match t.get("type") {
            Some(Value::String(ty)) if ty == "function" => {}
            Some(Value::String(ty)) => {
                return Err(bad(
                    format!("Invalid value for '{at}.type': '{ty}'. Supported values are: 'function'."),
                    &format!("{at}.type"),
                ))
            }
            _ => return Err(bad(format!("Missing required parameter: '{at}.type'."), &format!("{at}.type"))),
        }
        let f = match t.get("function") {
            Some(Value::Object(f)) => f,
            None => {
                return Err(bad(format!("Missing required parameter: '{at}.function'."), &format!("{at}.function")))
            }
            Some(_) => {
                return Err(bad(
                    format!("Invalid type for '{at}.function': expected an object."),
                    &format!("{at}.function"),
                ))
            }
        };
        let p = format!("{at}.function.name");
        let name = match f.get("name") {
            Some(Value::String(n)) if valid_name(n) => n.clone(),
            Some(Value::String(n)) => {
                return Err(bad(format!("Invalid '{p}': '{n}' does not match '^[a-zA-Z0-9_-]{{1,64}}$'."), &p))
            }
            None => return Err(bad(format!("Missing required parameter: '{p}'."), &p)),
            Some(_) => return Err(bad(format!("Invalid type for '{p}': expected a string."), &p)),
        };
        if tools.iter().any(|t| t.name == name) {
            return Err(bad(format!("Invalid '{p}': the function name '{name}' is given twice."), &p));
        }
        let p = format!("{at}.function.description");
        let description = match f.get("description") {
            None | Some(Value::Null) => None,
            Some(Value::String(d)) => Some(d.clone()),
            Some(_) => return Err(bad(format!("Invalid type for '{p}': expected a string."), &p)),
        };
        let p = format!("{at}.function.strict");
        let strict = match f.get("strict") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(bad(format!("Invalid type for '{p}': expected a boolean."), &p)),
        };
        let p = format!("{at}.function.parameters");
        let parameters = match f.get("parameters") {
            None | Some(Value::Null) => json!({}),
            // A strict tool is enforced as written, or refused; any other is constrained as far
            // as the grammar can (agents' tools carry formats and bounds it cannot enforce).
            Some(v @ Value::Object(_)) if strict => {
                check_schema(v, &p)?;
                v.clone()
            }
            Some(v @ Value::Object(_)) => {
                let (relaxed, loosened) = relax_schema(v, &p)?;
                if !loosened.is_empty() {
                    tracing::debug!(tool = %name, loosened = ?loosened, "tool schema loosened for constrained decoding");
                }
                relaxed
            }
            Some(_) => return Err(bad(format!("Invalid type for '{p}': expected a JSON schema object."), &p)),
        };
        tools.push(Tool { name, description, parameters, strict });
    }
    Ok(tools)
}

/// The request's `tool_choice` against its `tools`: `"none" | "auto" | "required"` or
/// `{"type": "function", "function": {"name"}}` naming one of them. Absent: `auto` with
/// tools, `none` without (as OpenAI). `required` or a name without tools is a 400.
pub fn parse_tool_choice(body: &Map<String, Value>, tools: &[Tool]) -> Result<ToolChoice, ApiError> {
    let p = "tool_choice";
    let choice = match body.get(p) {
        None | Some(Value::Null) => return Ok(if tools.is_empty() { ToolChoice::None } else { ToolChoice::Auto }),
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => {
                return Err(bad(
                    format!("Invalid value for '{p}': '{other}'. Supported values are: 'none', 'auto' and 'required'."),
                    p,
                ))
            }
        },
        Some(Value::Object(o)) => {
            match o.get("type") {
                Some(Value::String(t)) if t == "function" => {}
                Some(Value::String(t)) => {
                    return Err(bad(
                        format!("Invalid value for '{p}.type': '{t}'. Supported values are: 'function'."),
                        "tool_choice.type",
                    ))
                }
                _ => return Err(bad(format!("Missing required parameter: '{p}.type'."), "tool_choice.type")),
            }
            let name = match o.get("function") {
                Some(Value::Object(f)) => match f.get("name") {
                    Some(Value::String(n)) => n,
                    None => {
                        return Err(bad(
                            format!("Missing required parameter: '{p}.function.name'."),
                            "tool_choice.function.name",
                        ))
                    }
                    Some(_) => {
                        return Err(bad(
                            format!("Invalid type for '{p}.function.name': expected a string."),
                            "tool_choice.function.name",
                        ))
                    }
                },
                _ => return Err(bad(format!("Missing required parameter: '{p}.function'."), "tool_choice.function")),
            };
            if !tools.iter().any(|t| &t.name == name) {
                return Err(bad(
                    format!("Invalid value for '{p}.function.name': no function named '{name}' is in 'tools'."),
                    "tool_choice.function.name",
                ));
            }
            ToolChoice::Named(name.clone())
        }
        Some(_) => {
            return Err(bad(format!("Invalid type for '{p}': expected a string or an object."), p));
        }
    };
    if tools.is_empty() && matches!(choice, ToolChoice::Required | ToolChoice::Named(_)) {
        return Err(bad(format!("'{p}' is only allowed when 'tools' are specified."), p));
    }
    Ok(choice)
}

/// The tools a choice allows, and whether a call is forced; `None` when none may be called.
fn allowed<'a>(tools: &'a [Tool], choice: &ToolChoice) -> Option<(Vec<&'a Tool>, bool)> {
    let (list, forced): (Vec<&Tool>, bool) = match choice {
        ToolChoice::None => return None,
        ToolChoice::Auto => (tools.iter().collect(), false),
        ToolChoice::Required => (tools.iter().collect(), true),
        ToolChoice::Named(n) => (tools.iter().filter(|t| &t.name == n).collect(), true),
    };
    (!list.is_empty()).then_some((list, forced))
}

/// A tool's parameters as the grammar sees them at `at`: `{}` (none given) must still be an
/// object of arguments.
fn parameters_at(t: &Tool, at: &str) -> Value {
    if t.parameters.as_object().is_some_and(Map::is_empty) {
        json!({"type": "object"})
    } else {
        embed(&t.parameters, at)
    }
}

/// The schema at `base` of one of `n` alternatives, `i`-th: itself, or `anyOf`'s item.
fn alt_at(base: &str, n: usize, i: usize) -> String {
    if n == 1 {
        base.to_owned()
    } else {
        format!("{base}/anyOf/{i}")
    }
}

fn one_or_any(mut items: Vec<Value>) -> Value {
    if items.len() == 1 {
        items.remove(0)
    } else {
        json!({"anyOf": items})
    }
}

/// The constraint for a request's tools in `format`; `None` when no tool may be called.
pub fn tool_constraint(format: ToolFormat, tools: &[Tool], choice: &ToolChoice, parallel: bool) -> Option<Constraint> {
    let (list, forced) = allowed(tools, choice)?;
    let n = list.len();
    let lazy = |trigger: &str| if forced { Vec::new() } else { vec![trigger.to_owned()] };
    match format {
        ToolFormat::Generic => generic_tool_constraint(tools, choice, parallel, None),
        ToolFormat::Hermes => {
            let calls = list
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let at = format!("{}/properties/arguments", alt_at("", n, i));
                    json!({
                        "type": "object",
                        "properties": {"name": {"const": t.name}, "arguments": parameters_at(t, &at)},
                        "required": ["name", "arguments"],
                    })
                })
                .collect();
            Some(Constraint {
                schema: one_or_any(calls),
                prefix: "<tool_call>\n".into(),
                suffix: "\n</tool_call>".into(),
                repeat: parallel,
                lazy_triggers: lazy("<tool_call>"),
            })
        }
        ToolFormat::Llama3 => {
            let calls = list
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let at = format!("{}/properties/parameters", alt_at("", n, i));
                    json!({
                        "type": "object",
                        "properties": {"name": {"const": t.name}, "parameters": parameters_at(t, &at)},
                        "required": ["name", "parameters"],
                    })
                })
                .collect();
            // Llama 3.1's template renders one call per turn: no repeat.
            Some(Constraint {
                schema: one_or_any(calls),
                prefix: String::new(),
                suffix: String::new(),
                repeat: false,
                lazy_triggers: lazy("{\"name\""),
            })
        }
        ToolFormat::Mistral => {
            let calls = list
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let at = format!("{}/properties/arguments", alt_at("/items", n, i));
                    json!({
                        "type": "object",
                        "properties": {
                            "name": {"type": "string", "const": t.name},
                            "arguments": parameters_at(t, &at),
                            // Nemo's template expects a 9-character alphanumeric id.
                            "id": {"type": "string", "pattern": "^[a-zA-Z0-9]{9}$"},
                        },
                        "required": ["name", "arguments", "id"],
                    })
                })
                .collect();
            let mut schema = json!({"type": "array", "items": one_or_any(calls), "minItems": 1});
            if !parallel {
                schema["maxItems"] = json!(1);
            }
            Some(Constraint {
                schema,
                prefix: "[TOOL_CALLS]".into(),
                suffix: String::new(),
                repeat: false,
                lazy_triggers: lazy("[TOOL_CALLS]"),
            })
        }
    }
}

/// llama.cpp's generic handler's schema: a `tool_call` object (or, parallel, a `tool_calls`
/// array of them, each with an `id`), or — unless a call is forced — `{"response": …}`, a
/// string or `response_schema` (when the request also has a `response_format`; any format
/// can use this envelope for that mix, as llama.cpp does). Never lazy.
pub fn generic_tool_constraint(
    tools: &[Tool],
    choice: &ToolChoice,
    parallel: bool,
    response_schema: Option<&Value>,
) -> Option<Constraint> {
    let (list, forced) = allowed(tools, choice)?;
    let n = list.len();
    let root = if forced { String::new() } else { "/anyOf/0".to_owned() };
    let base =
        if parallel { format!("{root}/properties/tool_calls/items") } else { format!("{root}/properties/tool_call") };
    let calls: Vec<Value> = list
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let at = format!("{}/properties/arguments", alt_at(&base, n, i));
            let mut call = json!({
                "type": "object",
                "properties": {
                    "name": {"type": "string", "const": t.name},
                    "arguments": parameters_at(t, &at),
                },
                "required": ["name", "arguments"],
            });
            if let Some(d) = &t.description {
                call["description"] = json!(d);
            }
            if parallel {
                call["properties"]["id"] = json!({"type": "string", "minLength": 4});
                if let Some(r) = call["required"].as_array_mut() {
                    r.push(json!("id"));
                }
            }
            call
        })
        .collect();
    let tool_call = if parallel {
        json!({
            "type": "object",
            "properties": {"tool_calls": {"type": "array", "items": one_or_any(calls), "minItems": 1}},
            "required": ["tool_calls"],
        })
    } else {
        json!({"type": "object", "properties": {"tool_call": one_or_any(calls)}, "required": ["tool_call"]})
    };
    let schema = if forced {
        tool_call
    } else {
        let response = match response_schema {
            Some(s) => embed(s, "/anyOf/1/properties/response"),
            None => json!({"type": "string"}),
        };
        json!({"anyOf": [
            tool_call,
            {"type": "object", "properties": {"response": response}, "required": ["response"]},
        ]})
    };
    Some(Constraint { schema, prefix: String::new(), suffix: String::new(), repeat: false, lazy_triggers: Vec::new() })
}

/// The request's `response_format`: `text` (or none) is no constraint; `json_object` any
/// object (or llama.cpp's extension `{"type": "json_object", "schema": …}`); `json_schema`
/// `{"name"?, "schema"?, "strict"?}` its schema (an object when none is given). Checked with
/// [`check_schema`].
pub fn response_format_constraint(body: &Map<String, Value>) -> Result<Option<Constraint>, ApiError> {
    let p = "response_format";
    let rf = match body.get(p) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(bad(format!("Invalid type for '{p}': expected an object."), p)),
    };
    let (schema, param) = match rf.get("type").and_then(Value::as_str) {
        Some("text") => return Ok(None),
        Some("json_object") => match rf.get("schema") {
            None | Some(Value::Null) => (json!({"type": "object"}), "response_format"),
            Some(s) => (s.clone(), "response_format.schema"),
        },
        Some("json_schema") => {
            let js = match rf.get("json_schema") {
                Some(Value::Object(js)) => js,
                None => return Err(bad(format!("Missing required parameter: '{p}.json_schema'."), "response_format.json_schema")),
                Some(_) => {
                    return Err(bad(
                        format!("Invalid type for '{p}.json_schema': expected an object."),
                        "response_format.json_schema",
                    ))
                }
            };
            match js.get("name") {
                None | Some(Value::Null) => {}
                Some(Value::String(n)) if valid_name(n) => {}
                Some(_) => {
                    return Err(bad(
                        format!("Invalid '{p}.json_schema.name': it must match '^[a-zA-Z0-9_-]{{1,64}}$'."),
                        "response_format.json_schema.name",
                    ))
                }
            }
            if js.get("strict").is_some_and(|s| !s.is_boolean() && !s.is_null()) {
                return Err(bad(
                    format!("Invalid type for '{p}.json_schema.strict': expected a boolean."),
                    "response_format.json_schema.strict",
                ));
            }
            match js.get("schema") {
                None | Some(Value::Null) => (json!({"type": "object"}), "response_format.json_schema.schema"),
                Some(s) => (s.clone(), "response_format.json_schema.schema"),
            }
        }
        Some(other) => {
            return Err(bad(
                format!("Invalid value for '{p}.type': '{other}'. Supported values are: 'text', 'json_object' and 'json_schema'."),
                "response_format.type",
            ))
        }
        None => return Err(bad(format!("Missing required parameter: '{p}.type'."), "response_format.type")),
    };
    if !schema.is_object() {
        return Err(bad(format!("Invalid type for '{param}': expected a JSON schema object."), param));
    }
    check_schema(&schema, param)?;
    Ok(Some(Constraint {
        schema,
        prefix: String::new(),
        suffix: String::new(),
        repeat: false,
        lazy_triggers: Vec::new(),
    }))
}

/// The system text llama.cpp's generic handler adds, word for word.
pub const GENERIC_SYSTEM_PROMPT: &str =
    "Respond in JSON format, either with `tool_call` (a request to call tools) or with `response` reply to the user's request";

/// The messages to render, per format: for Generic (when a tool may be called), llama.cpp's
/// system text appended to the first system (or developer) message after a blank line, or
/// put first as a system message of its own (minja's `add_system`). The other formats'
/// templates render the tools themselves: the messages are unchanged.
pub fn prepare_messages(format: ToolFormat, messages: &[Value], tools: &[Tool], choice: &ToolChoice) -> Vec<Value> {
    let mut out = messages.to_vec();
    if format != ToolFormat::Generic || allowed(tools, choice).is_none() {
        return out;
    }
    let first = out.first_mut().and_then(Value::as_object_mut);
    match first {
        Some(m) if matches!(m.get("role").and_then(Value::as_str), Some("system" | "developer")) => {
            let existing = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => {
                    parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("\n")
                }
                _ => String::new(),
            };
            m.insert("content".into(), json!(format!("{existing}\n\n{GENERIC_SYSTEM_PROMPT}")));
        }
        _ => out.insert(0, json!({"role": "system", "content": GENERIC_SYSTEM_PROMPT})),
    }
    out
}

#[cfg(test)]
mod tests;

//! Anthropic's Messages API (`POST /v1/messages`, `/v1/messages/count_tokens`), served as a
//! chat completion: [`parse`] validates a request and writes the chat completion that serves
//! it; [`message`] and [`Stream`] (in `reply`) turn the chat answer back into a message and
//! its stream events; [`error_body`] writes an error in Anthropic's shape.
//!
//! Blocks and chat messages:
//! - `system` (a string or text blocks) is the first system message;
//! - `text` blocks are the message's text; `image` blocks (base64 or URL) are `image_url`
//!   parts;
//! - an assistant's `tool_use` blocks are its `tool_calls` (the input written as JSON text);
//! - a user's `tool_result` blocks are `tool` messages, sent before the rest of that user
//!   message, as chat orders them;
//! - `thinking` blocks are not sent back; `cache_control` marks are hints and are dropped.
//!
//! `tool_choice` `auto` / `any` / `tool` / `none` are chat's `auto` / `required` / a named
//! function / `none`; `disable_parallel_tool_use` is `parallel_tool_calls: false`.

mod reply;
#[cfg(test)]
mod tests;

use serde_json::{json, Map, Value};

use super::error::ApiError;
pub use reply::{error_body, error_event, message, status_of, Stream};

/// A validated Messages request and the chat completion that serves it.
#[derive(Clone, Debug)]
pub struct Request {
    pub model: String,
    pub stream: bool,
    pub chat: Map<String, Value>,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::invalid_request(message, None)
}

fn type_error(param: &str, want: &str) -> ApiError {
    bad(format!("{param}: Input should be {want}"))
}

/// Validates a Messages request; `count` is for `count_tokens`, which needs no `max_tokens`.
pub fn parse(bytes: &[u8], count: bool) -> Result<Request, ApiError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("The request body is not valid JSON: {e}")))?;
    let Value::Object(b) = value else {
        return Err(bad("The request body must be a JSON object."));
    };
    let model = match b.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(Value::String(_)) | None | Some(Value::Null) => return Err(bad("model: Field required")),
        Some(_) => return Err(type_error("model", "a valid string")),
    };
    let mut chat = Map::new();
    chat.insert("model".into(), Value::String(model.clone()));
    let max_tokens = match b.get("max_tokens") {
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n >= 1) => Some(n.clone()),
        None | Some(Value::Null) if count => None,
        None | Some(Value::Null) => return Err(bad("max_tokens: Field required")),
        Some(_) => return Err(bad("max_tokens: Input should be a positive integer")),
    };
    let stream = match b.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(s)) => *s && !count,
        Some(_) => return Err(type_error("stream", "a valid boolean")),
    };
    for k in ["mcp_servers", "container"] {
        if b.get(k).is_some_and(|v| !v.is_null()) {
            return Err(bad(format!("{k}: not supported by tollgate.")));
        }
    }

    let mut messages = Vec::new();
    match b.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(Value::Array(blocks)) => {
            let mut text = String::new();
            for (i, bl) in blocks.iter().enumerate() {
                if bl.get("type").and_then(Value::as_str) != Some("text") {
                    return Err(bad(format!("system.{i}: only text blocks are allowed in 'system'")));
                }
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(bl.get("text").and_then(Value::as_str).unwrap_or_default());
            }
            messages.push(json!({"role": "system", "content": text}));
        }
        Some(_) => return Err(type_error("system", "a valid string or a list of text blocks")),
    }
    let list = match b.get("messages") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => return Err(bad("messages: at least one message is required")),
        None | Some(Value::Null) => return Err(bad("messages: Field required")),
        Some(_) => return Err(type_error("messages", "a valid list")),
    };
    for (i, m) in list.iter().enumerate() {
        chat_messages(m, i, &mut messages)?;
    }
    chat.insert("messages".into(), Value::Array(messages));

    if let Some(n) = max_tokens {
        chat.insert("max_tokens".into(), Value::Number(n));
    }
    for (k, lo, hi) in [("temperature", 0.0, 1.0), ("top_p", 0.0, 1.0)] {
        match b.get(k) {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) if n.as_f64().is_some_and(|v| (lo..=hi).contains(&v)) => {
                chat.insert(k.into(), Value::Number(n.clone()));
            }
            Some(_) => return Err(bad(format!("{k}: Input should be a number between {lo} and {hi}"))),
        }
    }
    match b.get("top_k") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_u64().is_some() => {
            chat.insert("top_k".into(), Value::Number(n.clone()));
        }
        Some(_) => return Err(bad("top_k: Input should be a non-negative integer")),
    }
    match b.get("stop_sequences") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) if a.iter().all(|s| s.as_str().is_some_and(|s| !s.is_empty())) => {
            if a.len() > 4 {
                return Err(bad("stop_sequences: tollgate's backends take at most 4 stop sequences"));
            }
            if !a.is_empty() {
                chat.insert("stop".into(), Value::Array(a.clone()));
            }
        }
        Some(_) => return Err(bad("stop_sequences: Input should be a list of non-empty strings")),
    }
    let tools = tools(b.get("tools"))?;
    let has_tools = !tools.is_empty();
    if has_tools {
        chat.insert("tools".into(), Value::Array(tools));
    }
    if let Some(tc) = b.get("tool_choice").filter(|v| !v.is_null()) {
        let kind = tc.get("type").and_then(Value::as_str);
        let choice = match kind {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => match tc.get("name").and_then(Value::as_str) {
                Some(name) => json!({"type": "function", "function": {"name": name}}),
                None => return Err(bad("tool_choice.tool.name: Field required")),
            },
            _ => {
                return Err(bad(
                    "tool_choice: Input tag does not match any of the expected tags: 'auto', 'any', 'tool', 'none'",
                ))
            }
        };
        if kind != Some("none") && !has_tools {
            return Err(bad("tool_choice: may only be specified while providing tools"));
        }
        if has_tools {
            chat.insert("tool_choice".into(), choice);
        }
        if tc.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) && has_tools {
            chat.insert("parallel_tool_calls".into(), Value::Bool(false));
        }
    }
    match b.get("metadata") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => match m.get("user_id") {
            None | Some(Value::Null) => {}
            Some(Value::String(u)) => {
                chat.insert("user".into(), Value::String(u.clone()));
            }
            Some(_) => return Err(type_error("metadata.user_id", "a valid string")),
        },
        Some(_) => return Err(type_error("metadata", "a valid dictionary")),
    }
    if stream {
        chat.insert("stream".into(), Value::Bool(true));
        chat.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(Request { model, stream, chat })
}

/// One Anthropic message as chat messages, appended to `out`.
fn chat_messages(m: &Value, i: usize, out: &mut Vec<Value>) -> Result<(), ApiError> {
    let at = format!("messages.{i}");
    let role = match m.get("role").and_then(Value::as_str) {
        Some(r @ ("user" | "assistant" | "system")) => r,
        Some(r) => return Err(bad(format!("{at}.role: Input should be 'user', 'assistant' or 'system', not '{r}'"))),
        None => return Err(bad(format!("{at}.role: Field required"))),
    };
    let blocks = match m.get("content") {
        Some(Value::String(s)) => {
            out.push(json!({"role": role, "content": s}));
            return Ok(());
        }
        Some(Value::Array(b)) => b,
        None | Some(Value::Null) => return Err(bad(format!("{at}.content: Field required"))),
        Some(_) => return Err(type_error(&format!("{at}.content"), "a valid string or a list of content blocks")),
    };
    let mut parts: Vec<Value> = Vec::new();
    let mut calls = Vec::new();
    let mut images = false;
    for (j, bl) in blocks.iter().enumerate() {
        let at = format!("{at}.content.{j}");
        match bl.get("type").and_then(Value::as_str) {
            Some("text") => {
                let text = bl.get("text").and_then(Value::as_str).unwrap_or_default();
                parts.push(json!({"type": "text", "text": text}));
            }
            Some("image") => {
                images = true;
                parts.push(image_part(bl, &at)?);
            }
            Some("tool_use") if role == "assistant" => {
                let id = bl.get("id").and_then(Value::as_str).unwrap_or_default();
                let name = bl.get("name").and_then(Value::as_str).unwrap_or_default();
                let input = bl.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(
                    json!({"id": id, "type": "function", "function": {"name": name, "arguments": input.to_string()}}),
                );
            }
            Some("tool_result") if role == "user" => {
                let id = bl.get("tool_use_id").and_then(Value::as_str).unwrap_or_default();
                // A tool message holds text; a result's images follow it as a user message.
                let mut result_images = Vec::new();
                let text = match bl.get("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(c)) => {
                        let mut texts = Vec::new();
                        for (k, p) in c.iter().enumerate() {
                            match p.get("type").and_then(Value::as_str) {
                                Some("image") => result_images.push(image_part(p, &format!("{at}.content.{k}"))?),
                                Some("tool_reference") => texts.push(format!(
                                    "Tool available: {}",
                                    p.get("tool_name").and_then(Value::as_str).unwrap_or_default()
                                )),
                                _ => texts.extend(p.get("text").and_then(Value::as_str).map(str::to_owned)),
                            }
                        }
                        texts.join("\n")
                    }
                    Some(_) => return Err(type_error(&format!("{at}.content"), "a valid string or a list of blocks")),
                };
                let text = if bl.get("is_error") == Some(&Value::Bool(true)) { format!("Error: {text}") } else { text };
                out.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
                if !result_images.is_empty() {
                    out.push(json!({"role": "user", "content": result_images}));
                }
            }
            Some("document") => match bl.get("source") {
                Some(src) if src.get("type").and_then(Value::as_str) == Some("text") => {
                    let text = src.get("data").and_then(Value::as_str).unwrap_or_default();
                    parts.push(json!({"type": "text", "text": text}));
                }
                _ => return Err(bad(format!("{at}.source: only plain-text documents are supported by tollgate"))),
            },
            Some("thinking" | "redacted_thinking") => {}
            Some(t @ ("tool_use" | "tool_result")) => {
                return Err(bad(format!(
                    "{at}: a '{t}' block belongs in an {} message",
                    if t == "tool_use" { "assistant" } else { "user" }
                )))
            }
            Some(t) => return Err(bad(format!("{at}.type: the block type '{t}' is not supported by tollgate"))),
            None => return Err(bad(format!("{at}.type: Field required"))),
        }
    }
    if parts.is_empty() && calls.is_empty() {
        return Ok(());
    }
    let content = if images {
        Value::Array(parts)
    } else {
        let text: String =
            parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("");
        if text.is_empty() && !calls.is_empty() {
            Value::Null
        } else {
            Value::String(text)
        }
    };
    let mut msg = json!({"role": role, "content": content});
    if !calls.is_empty() {
        msg["tool_calls"] = Value::Array(calls);
    }
    out.push(msg);
    Ok(())
}

/// An `image` block (base64 or URL source) as a chat `image_url` part.
fn image_part(bl: &Value, at: &str) -> Result<Value, ApiError> {
    let src = bl.get("source");
    let field = |k: &str| src.and_then(|s| s.get(k)).and_then(Value::as_str);
    let url = match field("type") {
        Some("base64") => {
            format!("data:{};base64,{}", field("media_type").unwrap_or("image/png"), field("data").unwrap_or_default())
        }
        Some("url") => field("url").unwrap_or_default().to_owned(),
        _ => return Err(bad(format!("{at}.source: expected a base64 or url image source"))),
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// Anthropic tools as chat's function tools. Server tools (those with a versioned `type`,
/// such as `web_search_20250305`) cannot be run here.
fn tools(v: Option<&Value>) -> Result<Vec<Value>, ApiError> {
    let list = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(type_error("tools", "a valid list")),
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        match t.get("type").and_then(Value::as_str) {
            None | Some("custom") => {}
            // Claude Code's tool search: every tool is sent to the model anyway.
            Some(t) if t.starts_with("tool_search_tool_") => continue,
            Some(other) => {
                return Err(bad(format!("tools.{i}.type: the server tool '{other}' is not supported by tollgate")))
            }
        }
        let Some(name) = t.get("name").and_then(Value::as_str) else {
            return Err(bad(format!("tools.{i}.name: Field required")));
        };
        let Some(schema) = t.get("input_schema").filter(|s| s.is_object()) else {
            return Err(bad(format!("tools.{i}.input_schema: Field required")));
        };
        let mut f = Map::new();
        f.insert("name".into(), name.into());
        if let Some(d) = t.get("description").and_then(Value::as_str) {
            f.insert("description".into(), d.into());
        }
        f.insert("parameters".into(), schema.clone());
        out.push(json!({"type": "function", "function": f}));
    }
    Ok(out)
}

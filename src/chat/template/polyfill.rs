//! minja's polyfills (`chat_template::apply` in google/minja's `chat-template.hpp`, which
//! llama-server used before its own Jinja engine): for a template that lacks a capability, the
//! messages are rewritten so that tools, tool calls, tool results and system prompts still
//! reach the model as plain text. Strings and JSON layouts are minja's, byte for byte:
//!
//! - tools (template never reads them): a system message, or the end of the first one after a
//!   blank line, `You can call any of the following tools to satisfy the user's requests: `
//!   and the tools in minja's `dump(2)`, then, when one was found, `\n\nExample tool call
//!   syntax:\n\n<example>\n\n`;
//! - tool calls: the assistant's content becomes nlohmann's `dump(2)` of
//!   `{"tool_calls": [{"name", "arguments", "id"}], "content"}` (arguments parsed to objects);
//! - tool responses: a user message whose content is `{"tool_response": {"tool", "content",
//!   "tool_call_id"}}`, also `dump(2)`;
//! - system role: system messages are held and put before the next user message's content
//!   after a newline (or become a user message of their own before any other role);
//! - object arguments: JSON-string arguments are parsed; typed content: a string content
//!   becomes `[{"type": "text", "text": ...}]`.

use serde_json::{json, Map, Value};

use super::json::{minja_pretty, nlohmann_pretty};
use super::{content_text, Caps};

/// The minja polyfills `caps` calls for, applied to `messages` (see the module header).
/// `example` is the tool-call example [`super::ChatTemplate`] infers for templates without
/// tool support; the free [`super::polyfill`] has none.
pub(super) fn apply(messages: &[Value], tools: Option<&[Value]>, caps: Caps, example: Option<&str>) -> Vec<Value> {
    let tools = tools.filter(|t| !t.is_empty());
    let has_tool_calls = messages.iter().any(|m| m.get("tool_calls").is_some_and(|c| !c.is_null()));
    let has_tool_responses = messages.iter().any(|m| m.get("role").and_then(Value::as_str) == Some("tool"));
    let has_string_content = messages.iter().any(|m| m.get("content").is_some_and(Value::is_string));

    let system_role = !caps.supports_system_role;
    let polyfill_tools = tools.is_some() && !caps.supports_tools;
    let tool_calls = has_tool_calls && !caps.supports_tool_calls;
    let tool_responses = has_tool_responses && !caps.supports_tool_responses;
    let object_arguments = has_tool_calls && caps.requires_object_arguments;
    let typed_content = has_string_content && caps.requires_typed_content;
    if !(system_role || polyfill_tools || tool_calls || tool_responses || object_arguments || typed_content) {
        return messages.to_vec();
    }

    let adjusted = match tools {
        Some(tools) if polyfill_tools => {
            let mut prompt = format!(
                "You can call any of the following tools to satisfy the user's requests: {}",
                minja_pretty(&Value::Array(tools.to_vec()))
            );
            if let Some(example) = example.filter(|e| !e.is_empty()) {
                prompt.push_str(&format!("\n\nExample tool call syntax:\n\n{example}\n\n"));
            }
            add_system(messages, &prompt)
        }
        _ => messages.to_vec(),
    };

    let mut out = Vec::with_capacity(adjusted.len());
    let add = |out: &mut Vec<Value>, msg: Value| {
        if typed_content {
            if let Some(Value::String(text)) = msg.get("content") {
                let role = msg.get("role").cloned().unwrap_or(Value::Null);
                out.push(json!({"role": role, "content": [{"type": "text", "text": text}]}));
                return;
            }
        }
        out.push(msg);
    };
    let mut pending_system = String::new();
    let flush = |out: &mut Vec<Value>, pending: &mut String| {
        if !pending.is_empty() {
            add(out, json!({"role": "user", "content": std::mem::take(pending)}));
        }
    };

    for original in adjusted {
        let Value::Object(mut message) = original else {
            out.push(original);
            continue;
        };
        // minja refuses such a message; here it passes through untouched.
        let role = match message.get("role").and_then(Value::as_str) {
            Some(role) if message.contains_key("content") || message.contains_key("tool_calls") => role.to_owned(),
            _ => {
                out.push(Value::Object(message));
                continue;
            }
        };

        if message.contains_key("tool_calls") {
            if object_arguments || tool_calls {
                parse_arguments(&mut message);
            }
            if tool_calls {
                rewrite_tool_calls(&mut message);
            }
        }
        if tool_responses && role == "tool" {
            rewrite_tool_response(&mut message);
        }

        let has_content = message.get("content").is_some_and(|c| !c.is_null());
        if has_content && system_role {
            let content = content_text(&Value::Object(message.clone()));
            if role == "system" {
                if !pending_system.is_empty() {
                    pending_system.push('\n');
                }
                pending_system.push_str(&content);
                continue;
            } else if role == "user" {
                if !pending_system.is_empty() {
                    let joined = if content.is_empty() {
                        std::mem::take(&mut pending_system)
                    } else {
                        format!("{}\n{content}", std::mem::take(&mut pending_system))
                    };
                    message.insert("content".into(), Value::String(joined));
                }
            } else {
                flush(&mut out, &mut pending_system);
            }
        }
        add(&mut out, Value::Object(message));
    }
    flush(&mut out, &mut pending_system);
    out
}

/// minja's `add_system`: the prompt goes at the end of a leading system message (after a
/// blank line), or becomes one.
fn add_system(messages: &[Value], prompt: &str) -> Vec<Value> {
    let mut out = messages.to_vec();
    match out.first() {
        Some(first) if first.get("role").and_then(Value::as_str) == Some("system") => {
            let existing = content_text(first);
            out[0] = json!({"role": "system", "content": format!("{existing}\n\n{prompt}")});
        }
        _ => out.insert(0, json!({"role": "system", "content": prompt})),
    }
    out
}

/// Function arguments that are JSON strings become the objects they spell (left as they
/// are when they do not parse, as minja does).
fn parse_arguments(message: &mut Map<String, Value>) {
    let Some(Value::Array(calls)) = message.get_mut("tool_calls") else { return };
    for call in calls {
        if call.get("type").and_then(Value::as_str) != Some("function") {
            continue;
        }
        if let Some(args) = call.get_mut("function").and_then(|f| f.get_mut("arguments")) {
            if let Some(parsed) = args.as_str().and_then(|s| serde_json::from_str::<Value>(s).ok()) {
                *args = parsed;
            }
        }
    }
}

fn rewrite_tool_calls(message: &mut Map<String, Value>) {
    let mut calls = Vec::new();
    if let Some(Value::Array(list)) = message.get("tool_calls") {
        for call in list {
            if call.get("type").and_then(Value::as_str) != Some("function") {
                continue;
            }
            let function = call.get("function").cloned().unwrap_or(Value::Null);
            let mut tc = Map::new();
            tc.insert("name".into(), function.get("name").cloned().unwrap_or(Value::Null));
            tc.insert("arguments".into(), function.get("arguments").cloned().unwrap_or(Value::Null));
            if let Some(id) = call.get("id") {
                tc.insert("id".into(), id.clone());
            }
            calls.push(Value::Object(tc));
        }
    }
    let mut obj = Map::new();
    obj.insert("tool_calls".into(), Value::Array(calls));
    // nlohmann's `empty()` is true only for null and empty arrays and objects, so an empty
    // string content is kept.
    match message.get("content") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(Value::Object(o)) if o.is_empty() => {}
        Some(content) => {
            obj.insert("content".into(), content.clone());
        }
    }
    message.insert("content".into(), Value::String(nlohmann_pretty(&Value::Object(obj))));
    message.shift_remove("tool_calls");
}

fn rewrite_tool_response(message: &mut Map<String, Value>) {
    message.insert("role".into(), Value::String("user".into()));
    let mut response = Map::new();
    if let Some(name) = message.get("name") {
        response.insert("tool".into(), name.clone());
    }
    response.insert("content".into(), message.get("content").cloned().unwrap_or(Value::Null));
    if let Some(id) = message.get("tool_call_id") {
        response.insert("tool_call_id".into(), id.clone());
    }
    let obj = json!({ "tool_response": Value::Object(response) });
    message.insert("content".into(), Value::String(nlohmann_pretty(&obj)));
    message.shift_remove("name");
}

/// minja's tool-call example for a template without tool support: the text the template adds
/// after `[user]` + generation prompt when the conversation goes on with a tool call, found by
/// rendering both (`prefix` and `full`) and cutting the common start (see
/// `chat_template::chat_template`, whose quirks are kept).
pub(super) fn example_from(prefix: &str, full: &str, eos: &str) -> Option<String> {
    let (prefix, mut full) = (prefix.as_bytes(), full.as_bytes());
    if let Some(last) = rfind(full, eos.as_bytes()) {
        let at_prefix_end = prefix.len().checked_sub(eos.len()) == Some(last);
        let before_final_newline = full.last() == Some(&b'\n') && full.len().checked_sub(eos.len() + 1) == Some(last);
        if at_prefix_end || before_final_newline {
            full = &full[..last];
        }
    }
    let mut common = 0;
    for (i, (a, b)) in prefix.iter().zip(full).enumerate() {
        if a != b {
            break;
        }
        // DeepSeek R1 diverges at `<think>` vs `<｜tool▁calls▁begin｜>`: a shared `<` is not
        // consumed.
        if *a == b'<' {
            continue;
        }
        common = i + 1;
    }
    let example = String::from_utf8_lossy(&full[common..]).into_owned();
    (example.contains("tool_name") || example.contains("some_value")).then_some(example)
}

fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.len() > haystack.len() {
        return None;
    }
    (0..=haystack.len() - needle.len()).rev().find(|&i| &haystack[i..i + needle.len()] == needle)
}

/// The two conversations [`example_from`] compares: `[user]` with a generation prompt, and
/// `[user, assistant tool call]` without.
pub(super) fn example_conversations(caps: Caps) -> (Vec<Value>, Vec<Value>) {
    let user = json!({"role": "user", "content": "Hey"});
    let args = json!({"arg1": "some_value"});
    let arguments = if caps.requires_object_arguments { args } else { json!("{\"arg1\": \"some_value\"}") };
    let call = json!({
        "role": "assistant",
        "content": null,
        "tool_calls": [{"id": "call_1___", "type": "function", "function": {"name": "tool_name", "arguments": arguments}}],
    });
    (vec![user.clone()], vec![user, call])
}

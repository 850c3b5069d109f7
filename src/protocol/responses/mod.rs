//! OpenAI's Responses API (`POST /v1/responses`), served as a chat completion: [`parse`]
//! validates a request and keeps what the response object echoes; [`Request::chat_body`]
//! writes the chat completion that serves it (the instructions, the stored conversation it
//! continues, its input items as chat messages); [`response`] and [`Stream`] (in `reply`)
//! turn the chat answer back into a response object and its typed stream events.
//!
//! Input items and chat messages, one to one where they can be:
//! - a `message` item (`user`, `system`, `developer`, `assistant`; content a string or
//!   `input_text` / `output_text` / `input_image` parts) is a chat message (`developer` is
//!   sent as `system`, which every chat template knows);
//! - `function_call` items are the `tool_calls` of one assistant message (joined to the
//!   assistant message just before them, as one turn of a model writes them);
//! - a `function_call_output` item is a `tool` message;
//! - a `reasoning` item is not sent back (chat has no place for it).
//!
//! An `item_reference` names an item of a stored response (input or output) and is replaced
//! by it ([`Request::resolve`]). What cannot be served is a 400 naming the parameter: hosted
//! tools (`web_search`, ...), `background`, `conversation`, `prompt` templates.

mod reply;
#[cfg(test)]
mod tests;

use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::translate::new_id;
pub use reply::{response, Event, Stream};

/// A validated Responses request.
#[derive(Clone, Debug)]
pub struct Request {
    pub model: String,
    pub stream: bool,
    pub store: bool,
    pub previous_response_id: Option<String>,
    /// This request's input as items, each with an id (`input_items` lists them).
    pub input: Vec<Value>,
    /// The same input as chat messages.
    pub messages: Vec<Value>,
    instructions: Option<String>,
    /// The chat completion's parameters, apart from `messages`.
    chat: Map<String, Value>,
    /// What the response object repeats of the request, in OpenAI's key order.
    pub echo: Map<String, Value>,
}

pub fn is_reference(item: &Value) -> bool {
    item.get("type").and_then(Value::as_str) == Some("item_reference")
}

impl Request {
    /// Replaces each `item_reference` with the stored item it names (`find`: the caller's
    /// stored items by id), then writes the input as chat messages.
    pub fn resolve(&mut self, mut find: impl FnMut(&str) -> Result<Option<Value>, ApiError>) -> Result<(), ApiError> {
        if !self.input.iter().any(is_reference) {
            return Ok(());
        }
        for (i, item) in self.input.iter_mut().enumerate() {
            if !is_reference(item) {
                continue;
            }
            let id = item.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
            match find(&id)? {
                Some(found) => *item = found,
                None => return Err(bad(format!("Item with id '{id}' not found."), &format!("input[{i}]"))),
            }
        }
        self.messages = chat_messages(&self.input)?;
        Ok(())
    }

    /// The chat completion that serves this request after `history` (the chat messages of
    /// the stored conversation it continues).
    pub fn chat_body(&self, history: &[Value]) -> Map<String, Value> {
        let mut body = Map::new();
        body.insert("model".into(), Value::String(self.model.clone()));
        let mut messages = Vec::with_capacity(history.len() + self.messages.len() + 1);
        if let Some(i) = &self.instructions {
            messages.push(json!({"role": "system", "content": i}));
        }
        messages.extend(history.iter().cloned());
        messages.extend(self.messages.iter().cloned());
        body.insert("messages".into(), Value::Array(messages));
        for (k, v) in &self.chat {
            body.insert(k.clone(), v.clone());
        }
        if self.stream {
            body.insert("stream".into(), Value::Bool(true));
            body.insert("stream_options".into(), json!({"include_usage": true}));
        }
        body
    }
}

fn bad(message: impl Into<String>, param: &str) -> ApiError {
    ApiError::invalid_request(message, Some(param))
}

fn type_error(param: &str, want: &str) -> ApiError {
    bad(format!("Invalid type for '{param}': expected {want}."), param)
}

fn unsupported(param: &str, what: &str) -> ApiError {
    bad(format!("{what} is not supported by tollgate's Responses API."), param).with_code("unsupported_parameter")
}

fn string_field(o: &Map<String, Value>, key: &str, param: &str) -> Result<Option<String>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(type_error(param, "a string")),
    }
}

/// Validates a Responses request body.
pub fn parse(bytes: &[u8]) -> Result<Request, ApiError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::invalid_request(format!("We could not parse the JSON body of your request: {e}"), None)
    })?;
    let Value::Object(b) = value else {
        return Err(ApiError::invalid_request("The request body must be a JSON object.", None));
    };
    let model = match string_field(&b, "model", "model")? {
        Some(m) if !m.is_empty() => m,
        _ => return Err(bad("Missing required parameter: 'model'.", "model")),
    };
    for (k, what) in [("conversation", "'conversation'"), ("prompt", "A prompt template ('prompt')")] {
        if b.get(k).is_some_and(|v| !v.is_null()) {
            return Err(unsupported(k, what));
        }
    }
    if b.get("background") == Some(&Value::Bool(true)) {
        return Err(unsupported("background", "Background mode"));
    }
    let flag = |k: &str| match b.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(v)) => Ok(Some(*v)),
        Some(_) => Err(type_error(k, "a boolean")),
    };
    let stream = flag("stream")?.unwrap_or(false);
    let store = flag("store")?.unwrap_or(true);
    let parallel = flag("parallel_tool_calls")?;
    let previous_response_id = string_field(&b, "previous_response_id", "previous_response_id")?;
    let instructions = string_field(&b, "instructions", "instructions")?;
    let input = input_items(b.get("input"))?;
    let messages = if input.iter().any(is_reference) { Vec::new() } else { chat_messages(&input)? };

    let mut chat = Map::new();
    let mut echo = Map::new();
    let number = |k: &str| match b.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Number(_)) => Ok(Some(v.clone())),
        Some(_) => Err(type_error(k, "a number")),
    };
    let max_output_tokens = match b.get("max_output_tokens") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n >= 1) => Some(n.clone()),
        Some(_) => return Err(bad("Invalid 'max_output_tokens': it must be a positive integer.", "max_output_tokens")),
    };
    if let Some(n) = &max_output_tokens {
        chat.insert("max_tokens".into(), Value::Number(n.clone()));
    }
    let temperature = number("temperature")?;
    let top_p = number("top_p")?;
    for (k, v) in [("temperature", &temperature), ("top_p", &top_p)] {
        if let Some(v) = v {
            chat.insert(k.into(), v.clone());
        }
    }
    // Not in OpenAI's Responses API, but what the engine and vLLM read: passed on as given.
    for k in ["seed", "top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"] {
        if let Some(v) = b.get(k).filter(|v| !v.is_null()) {
            chat.insert(k.into(), v.clone());
        }
    }
    let top_logprobs = match b.get("top_logprobs") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n <= 20) => n.as_u64().unwrap_or(0),
        Some(_) => return Err(bad("Invalid 'top_logprobs': it must be an integer from 0 to 20.", "top_logprobs")),
    };
    if top_logprobs > 0 {
        chat.insert("logprobs".into(), Value::Bool(true));
        chat.insert("top_logprobs".into(), top_logprobs.into());
    }
    let tools = tools(b.get("tools"))?;
    if !tools.is_empty() {
        chat.insert("tools".into(), Value::Array(tools.iter().map(chat_tool).collect()));
    }
    let tool_choice = b.get("tool_choice").filter(|v| !v.is_null()).cloned();
    if let Some(tc) = &tool_choice {
        chat.insert("tool_choice".into(), chat_tool_choice(tc)?);
    }
    if let Some(p) = parallel {
        chat.insert("parallel_tool_calls".into(), Value::Bool(p));
    }
    let text = match b.get("text") {
        None | Some(Value::Null) => json!({"format": {"type": "text"}}),
        Some(t @ Value::Object(_)) => t.clone(),
        Some(_) => return Err(type_error("text", "an object")),
    };
    if let Some(rf) = response_format(&text)? {
        chat.insert("response_format".into(), rf);
    }
    let reasoning = match b.get("reasoning") {
        None | Some(Value::Null) => json!({"effort": null, "summary": null}),
        Some(r @ Value::Object(o)) => {
            if let Some(e) = o.get("effort").filter(|e| !e.is_null()) {
                chat.insert("reasoning_effort".into(), e.clone());
            }
            r.clone()
        }
        Some(_) => return Err(type_error("reasoning", "an object")),
    };
    let metadata = match b.get("metadata") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(m @ Value::Object(_)) => m.clone(),
        Some(_) => return Err(type_error("metadata", "an object")),
    };
    if metadata.as_object().is_some_and(|m| !m.is_empty()) {
        chat.insert("metadata".into(), metadata.clone());
    }
    let user = string_field(&b, "user", "user")?.or(string_field(&b, "safety_identifier", "safety_identifier")?);
    if let Some(u) = &user {
        chat.insert("user".into(), Value::String(u.clone()));
    }
    let truncation = string_field(&b, "truncation", "truncation")?.unwrap_or_else(|| "disabled".into());

    let opt = |v: Option<Value>| v.unwrap_or(Value::Null);
    for (k, v) in [
        ("background", Value::Bool(false)),
        ("instructions", instructions.clone().map_or(Value::Null, Value::String)),
        ("max_output_tokens", max_output_tokens.map_or(Value::Null, Value::Number)),
        ("max_tool_calls", Value::Null),
        ("metadata", metadata),
        ("model", Value::String(model.clone())),
        ("parallel_tool_calls", Value::Bool(parallel.unwrap_or(true))),
        ("previous_response_id", previous_response_id.clone().map_or(Value::Null, Value::String)),
        ("reasoning", reasoning),
        ("service_tier", Value::String("default".into())),
        ("store", Value::Bool(store)),
        ("temperature", opt(temperature).as_f64().unwrap_or(1.0).into()),
        ("text", text),
        ("tool_choice", tool_choice.unwrap_or_else(|| Value::String("auto".into()))),
        ("tools", Value::Array(tools)),
        ("top_logprobs", top_logprobs.into()),
        ("top_p", opt(top_p).as_f64().unwrap_or(1.0).into()),
        ("truncation", Value::String(truncation)),
        ("user", user.map_or(Value::Null, Value::String)),
    ] {
        echo.insert(k.into(), v);
    }
    Ok(Request { model, stream, store, previous_response_id, input, messages, instructions, chat, echo })
}

/// `input` as items, each with an id: a string is one user message.
fn input_items(input: Option<&Value>) -> Result<Vec<Value>, ApiError> {
    let list = match input {
        None | Some(Value::Null) => return Err(bad("Missing required parameter: 'input'.", "input")),
        Some(Value::String(s)) => {
            return Ok(vec![message_item("user", vec![json!({"type": "input_text", "text": s})])]);
        }
        Some(Value::Array(a)) => a,
        Some(_) => return Err(type_error("input", "a string or an array of input items")),
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let param = format!("input[{i}]");
        let o = item.as_object().ok_or_else(|| type_error(&param, "an object"))?;
        // An untyped item is a message, or a reference when it has only an id.
        let untyped = if !o.contains_key("role") && o.contains_key("id") { "item_reference" } else { "message" };
        let kind = o.get("type").and_then(Value::as_str).unwrap_or(untyped);
        match kind {
            "message" => {
                let role = o.get("role").and_then(Value::as_str).unwrap_or_default();
                if !matches!(role, "user" | "system" | "developer" | "assistant") {
                    return Err(bad(
                        format!("Invalid value for '{param}.role': '{role}'. Supported values are: 'user', 'system', 'developer' and 'assistant'."),
                        &format!("{param}.role"),
                    ));
                }
                let parts = content_parts(o.get("content"), role, &format!("{param}.content"))?;
                let mut m = message_item(role, parts);
                if let (Some(id), Some(mo)) = (o.get("id").and_then(Value::as_str), m.as_object_mut()) {
                    mo.insert("id".into(), id.into());
                }
                out.push(m);
            }
            "function_call" => {
                let call_id = required_str(o, "call_id", &param)?;
                let name = required_str(o, "name", &param)?;
                let arguments = required_str(o, "arguments", &param)?;
                let id = o.get("id").and_then(Value::as_str).map_or_else(|| new_id("fc_"), str::to_owned);
                out.push(json!({"id": id, "type": "function_call", "status": "completed",
                    "arguments": arguments, "call_id": call_id, "name": name}));
            }
            "function_call_output" => {
                let call_id = required_str(o, "call_id", &param)?;
                let output = match o.get("output") {
                    Some(Value::String(s)) => Value::String(s.clone()),
                    Some(Value::Array(_)) => Value::String(text_of_parts(o.get("output"))),
                    _ => {
                        return Err(bad(
                            format!("Missing required parameter: '{param}.output'."),
                            &format!("{param}.output"),
                        ))
                    }
                };
                let id = o.get("id").and_then(Value::as_str).map_or_else(|| new_id("fco_"), str::to_owned);
                out.push(json!({"id": id, "type": "function_call_output", "status": "completed",
                    "call_id": call_id, "output": output}));
            }
            "reasoning" => out.push(item.clone()),
            "item_reference" => match o.get("id").and_then(Value::as_str) {
                Some(id) => out.push(json!({"type": "item_reference", "id": id})),
                None => return Err(bad(format!("Missing required parameter: '{param}.id'."), &format!("{param}.id"))),
            },
            other => return Err(unsupported(&format!("{param}.type"), &format!("The input item type '{other}'"))),
        }
    }
    if out.is_empty() {
        return Err(bad("Invalid 'input': empty array. Expected an array with minimum length 1.", "input"));
    }
    Ok(out)
}

fn required_str(o: &Map<String, Value>, k: &str, param: &str) -> Result<String, ApiError> {
    match o.get(k) {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(bad(format!("Missing required parameter: '{param}.{k}'."), &format!("{param}.{k}"))),
    }
}

fn message_item(role: &str, content: Vec<Value>) -> Value {
    json!({"id": new_id("msg_"), "type": "message", "role": role, "status": "completed", "content": content})
}

/// A message's content as typed parts (a string is one `input_text`, or `output_text` for
/// the assistant).
fn content_parts(content: Option<&Value>, role: &str, param: &str) -> Result<Vec<Value>, ApiError> {
    let text_type = if role == "assistant" { "output_text" } else { "input_text" };
    match content {
        Some(Value::String(s)) => Ok(vec![if role == "assistant" {
            json!({"type": "output_text", "text": s, "annotations": []})
        } else {
            json!({"type": text_type, "text": s})
        }]),
        Some(Value::Array(parts)) => {
            for (j, p) in parts.iter().enumerate() {
                let t = p.get("type").and_then(Value::as_str).unwrap_or_default();
                match t {
                    "input_text" | "output_text" | "refusal" | "summary_text" => {}
                    "input_image" if p.get("image_url").and_then(Value::as_str).is_some() => {}
                    "input_image" => {
                        return Err(bad(
                            format!("'{param}[{j}]': an image must be given by 'image_url' (a URL or a data URL)."),
                            &format!("{param}[{j}]"),
                        ))
                    }
                    other => {
                        return Err(unsupported(
                            &format!("{param}[{j}].type"),
                            &format!("The content part type '{other}'"),
                        ))
                    }
                }
            }
            Ok(parts.clone())
        }
        _ => Err(type_error(param, "a string or an array of content parts")),
    }
}

/// The text of content parts, joined.
fn text_of_parts(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            parts.iter().filter_map(|p| p.get("text").or_else(|| p.get("refusal")).and_then(Value::as_str)).collect()
        }
        _ => String::new(),
    }
}

/// Items as chat messages (see the module header).
pub fn chat_messages(items: &[Value]) -> Result<Vec<Value>, ApiError> {
    let mut out: Vec<Value> = Vec::with_capacity(items.len());
    for item in items {
        match item.get("type").and_then(Value::as_str).unwrap_or("message") {
            "message" => {
                let role = item.get("role").and_then(Value::as_str).unwrap_or("user");
                let role = if role == "developer" { "system" } else { role };
                let content = item.get("content");
                let images = content
                    .and_then(Value::as_array)
                    .is_some_and(|p| p.iter().any(|p| p.get("type").and_then(Value::as_str) == Some("input_image")));
                let content = if images {
                    let parts = content.and_then(Value::as_array).into_iter().flatten().map(|p| {
                        match p.get("type").and_then(Value::as_str) {
                            Some("input_image") => {
                                let mut url = json!({"url": p.get("image_url").cloned().unwrap_or(Value::Null)});
                                if let Some(d) = p.get("detail").filter(|d| !d.is_null()) {
                                    url["detail"] = d.clone();
                                }
                                json!({"type": "image_url", "image_url": url})
                            }
                            _ => json!({"type": "text", "text": text_of_parts(Some(&Value::Array(vec![p.clone()])))}),
                        }
                    });
                    Value::Array(parts.collect())
                } else {
                    Value::String(text_of_parts(content))
                };
                out.push(json!({"role": role, "content": content}));
            }
            "function_call" => {
                let call = json!({"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}});
                let joins = out.last().is_some_and(|m| m["role"] == "assistant");
                if joins {
                    if let Some(m) = out.last_mut().and_then(Value::as_object_mut) {
                        if let Value::Array(calls) = m.entry("tool_calls").or_insert_with(|| Value::Array(Vec::new())) {
                            calls.push(call);
                        }
                    }
                } else {
                    out.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
                }
            }
            "function_call_output" => {
                out.push(json!({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]}));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The function tools, as the response object lists them.
fn tools(v: Option<&Value>) -> Result<Vec<Value>, ApiError> {
    let list = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(type_error("tools", "an array")),
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let param = format!("tools[{i}]");
        let o = t.as_object().ok_or_else(|| type_error(&param, "an object"))?;
        match o.get("type").and_then(Value::as_str) {
            Some("function") => {}
            Some(other) => {
                return Err(unsupported(&format!("{param}.type"), &format!("The hosted tool '{other}'")));
            }
            None => return Err(bad(format!("Missing required parameter: '{param}.type'."), &format!("{param}.type"))),
        }
        let name = required_str(o, "name", &param)?;
        out.push(json!({
            "type": "function",
            "name": name,
            "description": o.get("description").cloned().unwrap_or(Value::Null),
            "parameters": o.get("parameters").cloned().unwrap_or(Value::Null),
            "strict": o.get("strict").cloned().unwrap_or(Value::Bool(true)),
        }));
    }
    Ok(out)
}

fn chat_tool(t: &Value) -> Value {
    let mut f = Map::new();
    f.insert("name".into(), t["name"].clone());
    if !t["description"].is_null() {
        f.insert("description".into(), t["description"].clone());
    }
    let parameters =
        if t["parameters"].is_null() { json!({"type": "object", "properties": {}}) } else { t["parameters"].clone() };
    f.insert("parameters".into(), parameters);
    if t["strict"] == Value::Bool(true) {
        f.insert("strict".into(), Value::Bool(true));
    }
    json!({"type": "function", "function": f})
}

fn chat_tool_choice(tc: &Value) -> Result<Value, ApiError> {
    match tc {
        Value::String(s) if matches!(s.as_str(), "auto" | "none" | "required") => Ok(tc.clone()),
        Value::Object(o) => match o.get("type").and_then(Value::as_str) {
            Some("function") => match o.get("name").and_then(Value::as_str) {
                Some(name) => Ok(json!({"type": "function", "function": {"name": name}})),
                None => Err(bad("Missing required parameter: 'tool_choice.name'.", "tool_choice.name")),
            },
            Some(other) => Err(unsupported("tool_choice.type", &format!("The tool choice '{other}'"))),
            None => Err(bad("Missing required parameter: 'tool_choice.type'.", "tool_choice.type")),
        },
        _ => Err(bad(
            "Invalid 'tool_choice': expected 'auto', 'none', 'required' or {\"type\": \"function\", \"name\": ...}.",
            "tool_choice",
        )),
    }
}

/// `text.format` as a chat `response_format`; `None` for plain text.
fn response_format(text: &Value) -> Result<Option<Value>, ApiError> {
    let Some(format) = text.get("format").filter(|f| !f.is_null()) else { return Ok(None) };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let Some(schema) = format.get("schema").filter(|s| s.is_object()) else {
                return Err(bad("Missing required parameter: 'text.format.schema'.", "text.format.schema"));
            };
            let mut js = Map::new();
            js.insert("name".into(), format.get("name").cloned().unwrap_or_else(|| "response".into()));
            if let Some(d) = format.get("description").filter(|d| !d.is_null()) {
                js.insert("description".into(), d.clone());
            }
            js.insert("schema".into(), schema.clone());
            if let Some(s) = format.get("strict").filter(|s| !s.is_null()) {
                js.insert("strict".into(), s.clone());
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": js})))
        }
        _ => {
            Err(bad("Invalid 'text.format.type': expected 'text', 'json_object' or 'json_schema'.", "text.format.type"))
        }
    }
}

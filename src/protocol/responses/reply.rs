//! A chat answer as a Responses answer: the whole response object ([`response`]), and the
//! typed events of a stream ([`Stream`]), each with its `sequence_number`, in OpenAI's order:
//! `response.created`, `response.in_progress`; per output item `response.output_item.added`,
//! then for a message `response.content_part.added`, `response.output_text.delta`...,
//! `response.output_text.done`, `response.content_part.done`, for a function call
//! `response.function_call_arguments.delta`... and `.done`, then `response.output_item.done`;
//! last `response.completed` (or `response.incomplete` when cut at `max_output_tokens`, or
//! `response.failed`).

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use crate::protocol::error::ApiError;
use crate::protocol::translate::{new_id, pieces, Piece, Reply};
use crate::protocol::Usage;

/// One stream event: its `type` and its whole JSON object (with `type` and
/// `sequence_number`).
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub name: &'static str,
    pub data: Value,
}

/// What every response object of one answer shares.
#[derive(Clone, Debug)]
struct Head<'a> {
    echo: &'a Map<String, Value>,
    id: &'a str,
    created_at: u64,
    model: &'a str,
}

impl Head<'_> {
    /// The response object, in OpenAI's key order.
    fn object(&self, status: &str, output: Vec<Value>, usage: Value, error: Value) -> Value {
        let mut o = Map::with_capacity(28);
        o.insert("id".into(), self.id.into());
        o.insert("object".into(), "response".into());
        o.insert("created_at".into(), self.created_at.into());
        o.insert("status".into(), status.into());
        o.insert("background".into(), Value::Bool(false));
        o.insert("error".into(), error);
        let incomplete = match status {
            "incomplete" => json!({"reason": "max_output_tokens"}),
            _ => Value::Null,
        };
        o.insert("incomplete_details".into(), incomplete);
        for k in ["instructions", "max_output_tokens", "max_tool_calls"] {
            o.insert(k.into(), self.echo.get(k).cloned().unwrap_or(Value::Null));
        }
        o.insert("model".into(), self.model.into());
        o.insert("output".into(), Value::Array(output));
        for k in [
            "parallel_tool_calls",
            "previous_response_id",
            "reasoning",
            "service_tier",
            "store",
            "temperature",
            "text",
            "tool_choice",
            "tools",
            "top_logprobs",
            "top_p",
            "truncation",
        ] {
            o.insert(k.into(), self.echo.get(k).cloned().unwrap_or(Value::Null));
        }
        o.insert("usage".into(), usage);
        o.insert("user".into(), self.echo.get("user").cloned().unwrap_or(Value::Null));
        o.insert("metadata".into(), self.echo.get("metadata").cloned().unwrap_or_else(|| json!({})));
        Value::Object(o)
    }
}

/// `usage` in the Responses shape.
pub fn usage_json(u: Option<Usage>) -> Value {
    let Some(u) = u else { return Value::Null };
    json!({
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens.unwrap_or(0), "cache_write_tokens": 0},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.total_tokens,
    })
}

/// The response's status for a chat finish reason.
fn status_of(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "incomplete",
        _ => "completed",
    }
}

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "annotations": [], "logprobs": [], "text": text})
}

fn message(id: &str, status: &str, text: Option<&str>) -> Value {
    let content: Vec<Value> = text.map(text_part).into_iter().collect();
    json!({"id": id, "type": "message", "status": status, "content": content, "role": "assistant"})
}

fn reasoning(id: &str, text: &str) -> Value {
    json!({"id": id, "type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": text}]})
}

fn function_call(id: &str, status: &str, call_id: &str, name: &str, arguments: &str) -> Value {
    json!({"id": id, "type": "function_call", "status": status, "arguments": arguments, "call_id": call_id, "name": name})
}

/// The whole response object for a finished chat answer.
pub fn response(echo: &Map<String, Value>, id: &str, created_at: u64, model: &str, reply: &Reply) -> Value {
    let head = Head { echo, id, created_at, model };
    let status = status_of(reply.finish.as_deref());
    let item_status = if status == "completed" { "completed" } else { "incomplete" };
    let mut output = Vec::new();
    if !reply.reasoning.is_empty() {
        output.push(reasoning(&new_id("rs_"), &reply.reasoning));
    }
    if !reply.text.is_empty() || reply.calls.is_empty() {
        output.push(message(&new_id("msg_"), item_status, Some(&reply.text)));
    }
    for c in &reply.calls {
        let call_id = if c.id.is_empty() { new_id("call_") } else { c.id.clone() };
        output.push(function_call(&new_id("fc_"), "completed", &call_id, &c.name, &c.arguments));
    }
    head.object(status, output, usage_json(reply.usage), Value::Null)
}

/// An output item being streamed.
#[derive(Clone, Debug)]
enum Item {
    Message { id: String, text: String },
    Reasoning { id: String, text: String },
    Call { id: String, call_id: String, name: String, arguments: String },
}

impl Item {
    fn id(&self) -> &str {
        match self {
            Item::Message { id, .. } | Item::Reasoning { id, .. } | Item::Call { id, .. } => id,
        }
    }
    fn json(&self, status: &str) -> Value {
        match self {
            Item::Message { id, text } => message(id, status, (status != "in_progress").then_some(text.as_str())),
            Item::Reasoning { id, text } => reasoning(id, text),
            Item::Call { id, call_id, name, arguments } => function_call(id, status, call_id, name, arguments),
        }
    }
}

/// Chat chunks in, Responses events out (see the module header).
pub struct Stream {
    echo: Map<String, Value>,
    id: String,
    created_at: u64,
    model: String,
    seq: u64,
    items: Vec<Item>,
    /// The item still receiving, an index into `items`.
    open: Option<usize>,
    /// A tool call's index in the chat answer → its item.
    calls: HashMap<u64, usize>,
    finish: Option<String>,
    usage: Option<Usage>,
    /// The last response object sent (or to be sent): what is stored.
    last: Option<Value>,
}

impl Stream {
    pub fn new(echo: Map<String, Value>, id: String, created_at: u64, model: String) -> Stream {
        Stream {
            echo,
            id,
            created_at,
            model,
            seq: 0,
            items: Vec::new(),
            open: None,
            calls: HashMap::new(),
            finish: None,
            usage: None,
            last: None,
        }
    }

    fn head(&self) -> Head<'_> {
        Head { echo: &self.echo, id: &self.id, created_at: self.created_at, model: &self.model }
    }

    fn event(&mut self, name: &'static str, fields: Value) -> Event {
        let mut o = Map::with_capacity(8);
        o.insert("type".into(), name.into());
        o.insert("sequence_number".into(), self.seq.into());
        if let Value::Object(f) = fields {
            o.extend(f);
        }
        self.seq += 1;
        Event { name, data: Value::Object(o) }
    }

    /// `response.created` and `response.in_progress`.
    pub fn start(&mut self) -> Vec<Event> {
        let r = self.head().object("in_progress", Vec::new(), Value::Null, Value::Null);
        vec![
            self.event("response.created", json!({"response": r})),
            self.event("response.in_progress", json!({"response": r})),
        ]
    }

    /// The events of one chat chunk.
    pub fn push(&mut self, chunk: &Map<String, Value>) -> Vec<Event> {
        let mut out = Vec::new();
        for p in pieces(chunk) {
            match p {
                Piece::Text(t) => {
                    let i = self.open_kind(
                        &mut out,
                        |it| matches!(it, Item::Message { .. }),
                        || Item::Message { id: new_id("msg_"), text: String::new() },
                    );
                    if let Item::Message { text, id } = &mut self.items[i] {
                        text.push_str(&t);
                        let id = id.clone();
                        out.push(self.event(
                            "response.output_text.delta",
                            json!({"item_id": id, "output_index": i, "content_index": 0, "delta": t, "logprobs": []}),
                        ));
                    }
                }
                Piece::Reasoning(t) => {
                    let i = self.open_kind(
                        &mut out,
                        |it| matches!(it, Item::Reasoning { .. }),
                        || Item::Reasoning { id: new_id("rs_"), text: String::new() },
                    );
                    if let Item::Reasoning { text, id } = &mut self.items[i] {
                        text.push_str(&t);
                        let id = id.clone();
                        out.push(self.event(
                            "response.reasoning_text.delta",
                            json!({"item_id": id, "output_index": i, "content_index": 0, "delta": t}),
                        ));
                    }
                }
                Piece::CallStart { index, id, name } => {
                    // Some backends repeat the id and name in every delta of a call.
                    if self.calls.contains_key(&index) {
                        continue;
                    }
                    self.close_open(&mut out);
                    let call_id = if id.is_empty() { new_id("call_") } else { id };
                    let item = Item::Call { id: new_id("fc_"), call_id, name, arguments: String::new() };
                    let i = self.add(&mut out, item);
                    self.calls.insert(index, i);
                }
                Piece::CallArgs { index, delta } => {
                    let Some(&i) = self.calls.get(&index) else { continue };
                    if let Item::Call { arguments, id, .. } = &mut self.items[i] {
                        arguments.push_str(&delta);
                        let id = id.clone();
                        out.push(self.event(
                            "response.function_call_arguments.delta",
                            json!({"item_id": id, "output_index": i, "delta": delta}),
                        ));
                    }
                }
                Piece::Finish { reason, .. } => self.finish = Some(reason),
                Piece::Usage(u) => self.usage = Some(u),
            }
        }
        out
    }

    /// The open item when it is of this kind, else a new one (the open one closed first).
    fn open_kind(&mut self, out: &mut Vec<Event>, is: impl Fn(&Item) -> bool, new: impl FnOnce() -> Item) -> usize {
        if let Some(i) = self.open.filter(|&i| is(&self.items[i])) {
            return i;
        }
        self.close_open(out);
        self.add(out, new())
    }

    fn add(&mut self, out: &mut Vec<Event>, item: Item) -> usize {
        let i = self.items.len();
        let json = item.json("in_progress");
        let id = item.id().to_owned();
        let is_message = matches!(item, Item::Message { .. });
        self.items.push(item);
        self.open = Some(i);
        out.push(self.event("response.output_item.added", json!({"output_index": i, "item": json})));
        if is_message {
            out.push(self.event(
                "response.content_part.added",
                json!({"item_id": id, "output_index": i, "content_index": 0, "part": text_part("")}),
            ));
        }
        i
    }

    fn close_open(&mut self, out: &mut Vec<Event>) {
        let Some(i) = self.open.take() else { return };
        let status = self.item_status();
        let item = self.items[i].clone();
        match &item {
            Item::Message { id, text } => {
                out.push(self.event(
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": i, "content_index": 0, "text": text, "logprobs": []}),
                ));
                out.push(self.event(
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": i, "content_index": 0, "part": text_part(text)}),
                ));
            }
            Item::Reasoning { id, text } => out.push(self.event(
                "response.reasoning_text.done",
                json!({"item_id": id, "output_index": i, "content_index": 0, "text": text}),
            )),
            Item::Call { id, name, arguments, .. } => out.push(self.event(
                "response.function_call_arguments.done",
                json!({"item_id": id, "output_index": i, "name": name, "arguments": arguments}),
            )),
        }
        let json = item.json(status);
        out.push(self.event("response.output_item.done", json!({"output_index": i, "item": json})));
    }

    fn item_status(&self) -> &'static str {
        match status_of(self.finish.as_deref()) {
            "completed" => "completed",
            _ => "incomplete",
        }
    }

    fn output(&self, status: &str) -> Vec<Value> {
        self.items.iter().map(|it| it.json(status)).collect()
    }

    /// The stream ended: the open item is closed, then `response.completed` (or
    /// `response.incomplete`).
    pub fn finish(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        if self.items.is_empty() {
            // An empty answer is still one message, as a whole body has.
            self.add(&mut out, Item::Message { id: new_id("msg_"), text: String::new() });
        }
        self.close_open(&mut out);
        let status = status_of(self.finish.as_deref());
        let r = self.head().object(status, self.output(self.item_status()), usage_json(self.usage), Value::Null);
        self.last = Some(r.clone());
        let name = if status == "completed" { "response.completed" } else { "response.incomplete" };
        out.push(self.event(name, json!({"response": r})));
        out
    }

    /// The stream failed after it started: `response.failed`, with the error.
    pub fn fail(&mut self, e: &ApiError) -> Vec<Event> {
        // The SDKs accept only OpenAI's own codes here.
        let code = if e.status.as_u16() == 429 { "rate_limit_exceeded" } else { "server_error" };
        let error = json!({"code": code, "message": e.message});
        let r = self.head().object("failed", self.output("incomplete"), usage_json(self.usage), error);
        self.last = Some(r.clone());
        vec![self.event("response.failed", json!({"response": r}))]
    }

    /// The final response object (after [`Stream::finish`] or [`Stream::fail`]).
    pub fn response(&self) -> Option<&Value> {
        self.last.as_ref()
    }
}

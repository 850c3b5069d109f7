//! A chat answer as an Anthropic message ([`message`]) and its stream ([`Stream`]):
//! `message_start`, `ping`, then per content block `content_block_start`,
//! `content_block_delta` (`text_delta`, `input_json_delta`, `thinking_delta`),
//! `content_block_stop`, then `message_delta` (the stop reason and the usage) and
//! `message_stop`; `error` when the stream fails after it started. Errors in Anthropic's
//! shape ([`error_body`]).

use http::StatusCode;
use serde_json::{json, Map, Value};

use crate::protocol::error::{ApiError, BUSY};
use crate::protocol::translate::{new_id, parse_or_string, pieces, Piece, Reply};
use crate::protocol::Usage;

/// Anthropic's `stop_reason` for a chat finish reason; an answer that ends with tool calls
/// is `tool_use` whatever its finish reason (OpenAI says `stop` for a named tool choice).
pub fn status_of(finish: Option<&str>, stop_sequence: Option<&str>, has_calls: bool) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls") => "tool_use",
        _ if has_calls => "tool_use",
        Some("content_filter") => "refusal",
        _ if stop_sequence.is_some() => "stop_sequence",
        _ => "end_turn",
    }
}

/// `usage` in Anthropic's shape: `input_tokens` are those not read from the cache.
fn usage_json(u: Option<Usage>) -> Value {
    let u = u.unwrap_or_default();
    let cached = u.cached_tokens.unwrap_or(0).min(u.prompt_tokens);
    json!({
        "input_tokens": u.prompt_tokens - cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": u.completion_tokens,
    })
}

/// The whole message for a finished chat answer.
pub fn message(id: &str, model: &str, reply: &Reply) -> Value {
    let mut content = Vec::new();
    if !reply.reasoning.is_empty() {
        content.push(json!({"type": "thinking", "thinking": reply.reasoning, "signature": ""}));
    }
    if !reply.text.is_empty() || reply.calls.is_empty() {
        content.push(json!({"type": "text", "text": reply.text}));
    }
    for c in &reply.calls {
        let id = if c.id.is_empty() { new_id("toolu_") } else { c.id.clone() };
        // The SDKs type `input` as an object: arguments that are not one become `{}`.
        let input = match parse_or_string(&c.arguments) {
            v @ Value::Object(_) => v,
            _ => json!({}),
        };
        content.push(json!({"type": "tool_use", "id": id, "name": c.name, "input": input}));
    }
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": status_of(reply.finish.as_deref(), reply.stop_sequence.as_deref(), !reply.calls.is_empty()),
        "stop_sequence": reply.stop_sequence,
        "usage": usage_json(reply.usage),
    })
}

/// The status and body of an error, in Anthropic's shape. "Every deployment is busy" is
/// 529 `overloaded_error`, which the SDKs retry.
pub fn error_body(e: &ApiError) -> (StatusCode, Value) {
    let (status, kind) = match e.status.as_u16() {
        429 if e.code.as_deref() == Some(BUSY) => (StatusCode::from_u16(529).unwrap_or(e.status), "overloaded_error"),
        529 => (e.status, "overloaded_error"),
        400 | 405 | 409 | 415 | 422 => (e.status, "invalid_request_error"),
        401 => (e.status, "authentication_error"),
        403 => (e.status, "permission_error"),
        404 => (e.status, "not_found_error"),
        504 => (e.status, "timeout_error"),
        413 => (e.status, "request_too_large"),
        429 => (e.status, "rate_limit_error"),
        503 => (e.status, "overloaded_error"),
        s if s >= 500 => (e.status, "api_error"),
        _ => (e.status, "invalid_request_error"),
    };
    (status, json!({"type": "error", "error": {"type": kind, "message": e.message}}))
}

/// The in-band `error` event of a stream that failed after it started.
pub fn error_event(e: &ApiError) -> (&'static str, Value) {
    ("error", error_body(e).1)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Block {
    Text,
    Thinking,
    Tool,
}

/// Chat chunks in, Anthropic events out (see the module header).
pub struct Stream {
    id: String,
    model: String,
    /// The prompt's tokens, when they were counted before the stream began.
    counted: Option<u64>,
    /// The block still receiving: its index and kind.
    open: Option<(usize, Block)>,
    blocks: usize,
    /// A tool call's index in the chat answer → its block index, and whether any of its
    /// arguments were sent yet.
    calls: Vec<(u64, usize, bool)>,
    finish: Option<String>,
    stop_sequence: Option<String>,
    usage: Option<Usage>,
}

type Events = Vec<(&'static str, Value)>;

impl Stream {
    /// `counted`: the prompt's tokens, for `message_start` (the engine counts them first; an
    /// upstream's are known only at the end, from `message_delta`).
    pub fn new(id: String, model: String, counted: Option<u64>) -> Stream {
        Stream {
            id,
            model,
            counted,
            open: None,
            blocks: 0,
            calls: Vec::new(),
            finish: None,
            stop_sequence: None,
            usage: None,
        }
    }

    /// `message_start` (with the prompt's tokens when they were counted; `message_delta`
    /// carries the usage as served, cache reads apart) and `ping`.
    pub fn start(&mut self) -> Events {
        let prompt = self.counted.unwrap_or(0);
        let usage = usage_json(Some(Usage { prompt_tokens: prompt, total_tokens: prompt, ..Usage::default() }));
        let message = json!({
            "id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": usage,
        });
        vec![("message_start", json!({"type": "message_start", "message": message})), ("ping", json!({"type": "ping"}))]
    }

    pub fn push(&mut self, chunk: &Map<String, Value>) -> Events {
        let mut out = Vec::new();
        for p in pieces(chunk) {
            match p {
                Piece::Text(t) => {
                    let i = self.open_kind(&mut out, Block::Text, json!({"type": "text", "text": ""}));
                    out.push(delta(i, json!({"type": "text_delta", "text": t})));
                }
                Piece::Reasoning(t) => {
                    let i = self.open_kind(
                        &mut out,
                        Block::Thinking,
                        json!({"type": "thinking", "thinking": "", "signature": ""}),
                    );
                    out.push(delta(i, json!({"type": "thinking_delta", "thinking": t})));
                }
                Piece::CallStart { index, id, name } => {
                    // Some backends repeat the id and name in every delta of a call.
                    if self.calls.iter().any(|(c, _, _)| *c == index) {
                        continue;
                    }
                    self.close(&mut out);
                    let id = if id.is_empty() { new_id("toolu_") } else { id };
                    let block = json!({"type": "tool_use", "id": id, "name": name, "input": {}});
                    let i = self.start_block(&mut out, Block::Tool, block);
                    self.calls.push((index, i, false));
                }
                Piece::CallArgs { index, delta: d } => {
                    if let Some((_, i, sent)) = self.calls.iter_mut().find(|(c, _, _)| *c == index) {
                        // The SDKs parse the arguments so far after every delta: leading
                        // whitespace alone would not parse.
                        let d = if *sent { d.as_str() } else { d.trim_start() };
                        if d.is_empty() {
                            continue;
                        }
                        *sent = true;
                        let i = *i;
                        out.push(delta(i, json!({"type": "input_json_delta", "partial_json": d})));
                    }
                }
                Piece::Finish { reason, stop_sequence } => {
                    self.finish = Some(reason);
                    self.stop_sequence = stop_sequence;
                }
                Piece::Usage(u) => self.usage = Some(u),
            }
        }
        out
    }

    fn open_kind(&mut self, out: &mut Events, kind: Block, block: Value) -> usize {
        match self.open {
            Some((i, k)) if k == kind => i,
            _ => {
                self.close(out);
                self.start_block(out, kind, block)
            }
        }
    }

    fn start_block(&mut self, out: &mut Events, kind: Block, block: Value) -> usize {
        let i = self.blocks;
        self.blocks += 1;
        self.open = Some((i, kind));
        out.push(("content_block_start", json!({"type": "content_block_start", "index": i, "content_block": block})));
        i
    }

    fn close(&mut self, out: &mut Events) {
        if let Some((i, _)) = self.open.take() {
            out.push(("content_block_stop", json!({"type": "content_block_stop", "index": i})));
        }
    }

    /// The stream ended: the open block stops, then `message_delta` and `message_stop`.
    pub fn finish(&mut self) -> Events {
        let mut out = Vec::new();
        if self.blocks == 0 {
            self.start_block(&mut out, Block::Text, json!({"type": "text", "text": ""}));
        }
        self.close(&mut out);
        let stop_reason = status_of(self.finish.as_deref(), self.stop_sequence.as_deref(), !self.calls.is_empty());
        out.push((
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": self.stop_sequence},
                "usage": usage_json(self.usage)}),
        ));
        out.push(("message_stop", json!({"type": "message_stop"})));
        out
    }
}

fn delta(index: usize, d: Value) -> (&'static str, Value) {
    ("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": d}))
}

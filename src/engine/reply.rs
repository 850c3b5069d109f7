//! The engine thread's events turned into OpenAI objects: one body, or a stream of chunks.
//!
//! A job's `n` choices interleave on one channel; each is read on its own (text, the
//! tool-call and reasoning syntax its format uses, log-probabilities) and each ends with its
//! own finish reason. The prompt is counted once, the completions of every choice summed.
//! A choice whose text is a tool call ends with `finish_reason: "tool_calls"`; one cut by
//! `max_tokens` in the middle of a call ends with `"length"`, the unfinished call left out
//! (the content before it, and any calls finished before it, are kept).

use futures::StreamExt;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::job::{Event, Timings, TokenLogprob};
use crate::backend::{BackendError, BackendReply, Chunk, EventStream};
use crate::chat::reasoning::ReasoningTags;
use crate::chat::tools::{Delta, OutputParser, Parsed, ToolCall, ToolFormat};
use crate::protocol::chunk::{self, fields, Head};
use crate::protocol::Usage;

/// How a job's generated text is read back into the answer.
#[derive(Clone, Debug)]
pub struct Reading {
    pub n: u32,
    /// The tool-call and reasoning syntax to parse, when the request has tools or the
    /// template marks reasoning; `None` reads the text as it is.
    pub parse: Option<ParseSpec>,
    pub logprobs: Option<LogprobShape>,
    /// Completions' `echo`: the prompt, written before the completion.
    pub echo: Option<String>,
}

#[derive(Clone, Debug)]
pub struct ParseSpec {
    pub format: ToolFormat,
    pub tools_active: bool,
    pub generic_envelope: bool,
    pub reasoning: Option<ReasoningTags>,
}

impl ParseSpec {
    fn parser(&self) -> OutputParser {
        OutputParser::new(self.format, self.tools_active, self.generic_envelope, self.reasoning.clone())
    }
}

/// Chat's `logprobs.content[]`, or the legacy completions object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogprobShape {
    Chat,
    Completions,
}

fn token_text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `logprobs` of a chat choice (or chunk): `{"content":[..],"refusal":null}`.
fn chat_logprobs(lps: &[TokenLogprob]) -> Value {
    let entry = |bytes: &[u8], logprob: f32| -> Map<String, Value> {
        fields([("token", token_text(bytes).into()), ("logprob", json!(logprob)), ("bytes", json!(bytes))])
    };
    let content: Vec<Value> = lps
        .iter()
        .map(|t| {
            let mut e = entry(&t.bytes, t.logprob);
            let top: Vec<Value> = t.top.iter().map(|(b, lp)| Value::Object(entry(b, *lp))).collect();
            e.insert("top_logprobs".into(), Value::Array(top));
            Value::Object(e)
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// The legacy completions `logprobs`: tokens, their logprobs, the top alternatives as a
/// token → logprob object, and each token's offset in the choice's text (from `offset`).
fn completion_logprobs(lps: &[TokenLogprob], offset: usize) -> Value {
    let mut at = offset;
    let mut offsets = Vec::with_capacity(lps.len());
    for t in lps {
        offsets.push(at);
        at += token_text(&t.bytes).len();
    }
    json!({
        "tokens": lps.iter().map(|t| token_text(&t.bytes)).collect::<Vec<_>>(),
        "token_logprobs": lps.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": lps.iter().map(|t| {
            let mut m = Map::new();
            for (b, lp) in &t.top {
                m.entry(token_text(b)).or_insert(json!(lp));
            }
            Value::Object(m)
        }).collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

fn logprobs_value(shape: Option<LogprobShape>, lps: &[TokenLogprob], offset: usize) -> Value {
    match shape {
        None => Value::Null,
        Some(LogprobShape::Chat) => chat_logprobs(lps),
        Some(LogprobShape::Completions) => completion_logprobs(lps, offset),
    }
}

fn tool_calls_json(calls: &[ToolCall]) -> Value {
    Value::Array(
        calls
            .iter()
            .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
            .collect(),
    )
}

/// The finish reason a choice reports: `tool_calls` when it ended by finishing calls.
fn finish_reason(engine: &str, parsed: Option<&Parsed>) -> &'static str {
    match (engine, parsed) {
        ("stop", Some(p)) if !p.tool_calls.is_empty() && !p.incomplete_call => "tool_calls",
        ("length", _) => "length",
        _ => "stop",
    }
}

pub fn usage(prompt: u64, completion: u64, cached: u64) -> Usage {
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
        cached_tokens: Some(cached),
    }
}

/// llama-server's `timings` object.
pub fn timings_json(t: &Timings) -> Value {
    let per = |ms: f64, n: u64| if n > 0 { ms / n as f64 } else { 0.0 };
    let rate = |ms: f64, n: u64| {
        if ms > 0.0 {
            n as f64 * 1000.0 / ms
        } else {
            0.0
        }
    };
    json!({
        "cache_n": t.cache_n,
        "prompt_n": t.prompt_n,
        "prompt_ms": t.prompt_ms,
        "prompt_per_token_ms": per(t.prompt_ms, t.prompt_n),
        "prompt_per_second": rate(t.prompt_ms, t.prompt_n),
        "predicted_n": t.predicted_n,
        "predicted_ms": t.predicted_ms,
        "predicted_per_token_ms": per(t.predicted_ms, t.predicted_n),
        "predicted_per_second": rate(t.predicted_ms, t.predicted_n),
        "queued_ms": t.queued_ms,
        // tollgate's own: where the reused prompt tokens came from.
        "cache_from": t.cache_from,
    })
}

const STOPPED: &str = "the engine stopped before the request finished";

#[derive(Default)]
struct Whole {
    text: String,
    logprobs: Vec<TokenLogprob>,
    finish: Option<&'static str>,
    stop: Option<String>,
}

/// Reads every choice to its end and writes one body.
pub async fn full(
    head: Head,
    reading: Reading,
    mut rx: mpsc::UnboundedReceiver<Event>,
) -> Result<BackendReply, BackendError> {
    let n = reading.n.max(1) as usize;
    let mut choices: Vec<Whole> = (0..n).map(|_| Whole::default()).collect();
    let (mut prompt, mut completion, mut timings, mut done) = (0, 0, Timings::default(), 0);
    while done < n {
        match rx.recv().await {
            Some(Event::Text { choice, text, logprobs }) => {
                if let Some(c) = choices.get_mut(choice as usize) {
                    c.text.push_str(&text);
                    c.logprobs.extend(logprobs);
                }
            }
            Some(Event::Done { choice, finish, stop, prompt_tokens, completion_tokens, timings: t }) => {
                if let Some(c) = choices.get_mut(choice as usize) {
                    c.finish = Some(finish);
                    c.stop = stop;
                }
                completion += completion_tokens;
                if choice == 0 {
                    prompt = prompt_tokens;
                    timings = t;
                }
                done += 1;
            }
            Some(Event::Error(e)) => return Err(BackendError::Internal(e)),
            Some(Event::Embedding(_)) => {}
            None => return Err(BackendError::Internal(STOPPED.into())),
        }
    }
    let echo = reading.echo.as_deref().unwrap_or("");
    let out: Vec<Value> = choices
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let engine_finish = c.finish.unwrap_or("stop");
            if !head.is_chat() {
                let lp = logprobs_value(reading.logprobs, &c.logprobs, echo.len());
                let text = format!("{echo}{}", c.text);
                return with_stop(chunk::completion_choice(i as u32, text.into(), lp, engine_finish.into()), c.stop);
            }
            let lp = logprobs_value(reading.logprobs, &c.logprobs, 0);
            let (msg, finish) = match &reading.parse {
                None => (fields([("role", "assistant".into()), ("content", c.text.into())]), engine_finish),
                Some(spec) => {
                    let mut p = spec.parser();
                    p.push(&c.text);
                    let parsed = p.finish();
                    let finish = finish_reason(engine_finish, Some(&parsed));
                    let mut msg = fields([("role", "assistant".into())]);
                    msg.insert("content".into(), parsed.content.clone().map_or(Value::Null, Value::String));
                    if let Some(r) = &parsed.reasoning {
                        msg.insert("reasoning_content".into(), r.clone().into());
                    }
                    if !parsed.tool_calls.is_empty() {
                        msg.insert("tool_calls".into(), tool_calls_json(&parsed.tool_calls));
                    }
                    (msg, finish)
                }
            };
            // A tool call that ended at a stop string ended as a tool call.
            let stop = c.stop.filter(|_| finish == "stop");
            with_stop(chunk::chat_choice(i as u32, msg, lp, finish.into()), stop)
        })
        .collect();
    let u = usage(prompt, completion, timings.cache_n);
    let mut body = head.choices_body(out, Some(u.to_json()));
    body.insert("timings".into(), timings_json(&timings));
    Ok(BackendReply::Full { body, usage: Some(u), raw: None })
}

/// One streamed choice's state.
struct Streamed {
    started: bool,
    parser: Option<OutputParser>,
    /// Log-probabilities of tokens whose text is still held back.
    logprobs: Vec<TokenLogprob>,
    /// Bytes of text sent so far (completions' `text_offset`).
    sent: usize,
    /// Tool calls begun, to tell `tool_calls` from `stop` at the end.
    calls: usize,
}

/// Streams every choice's chunks as they come; the usage chunk follows the last choice.
pub fn chunks(head: Head, reading: Reading, rx: mpsc::UnboundedReceiver<Event>) -> EventStream {
    let n = reading.n.max(1) as usize;
    let mut st: Vec<Streamed> = (0..n)
        .map(|_| Streamed {
            started: false,
            parser: reading.parse.as_ref().filter(|_| head.is_chat()).map(ParseSpec::parser),
            logprobs: Vec::new(),
            sent: reading.echo.as_ref().map_or(0, String::len),
            calls: 0,
        })
        .collect();
    let (mut prompt, mut completion, mut cached, mut done) = (0u64, 0u64, 0u64, 0usize);
    let events = futures::stream::poll_fn({
        let mut rx = rx;
        move |cx| rx.poll_recv(cx)
    })
    .map(Some)
    .chain(futures::stream::iter([None]))
    .flat_map(move |ev| {
        let mut out: Vec<Result<Chunk, BackendError>> = Vec::with_capacity(3);
        let shape = reading.logprobs;
        // The first event of a choice opens it: chat's role chunk, completions' echo.
        let open = |s: &mut Streamed, i: u32, out: &mut Vec<Result<Chunk, BackendError>>| {
            if s.started {
                return;
            }
            s.started = true;
            if head.is_chat() {
                let delta = fields([("role", "assistant".into()), ("content", "".into())]);
                out.push(Ok(head.choice_chunk(i, delta, Value::Null, Value::Null)));
            } else if let Some(echo) = &reading.echo {
                let lp = if shape.is_some() { logprobs_value(shape, &[], 0) } else { Value::Null };
                out.push(Ok(head.choice_chunk(i, fields([("content", echo.clone().into())]), lp, Value::Null)));
            }
        };
        match ev {
            Some(Event::Text { choice, text, logprobs }) => {
                let i = choice;
                if let Some(s) = st.get_mut(i as usize) {
                    open(s, i, &mut out);
                    s.logprobs.extend(logprobs);
                    let deltas = match &mut s.parser {
                        Some(p) => p.push(&text),
                        None if text.is_empty() => Vec::new(),
                        None => vec![Delta::Content(text)],
                    };
                    for d in deltas {
                        let delta = delta_json(d, &mut s.calls);
                        let lp = take_logprobs(shape, s);
                        if let Some(t) = delta.get("content").and_then(Value::as_str) {
                            s.sent += t.len();
                        }
                        out.push(Ok(head.choice_chunk(i, delta, lp, Value::Null)));
                    }
                }
            }
            Some(Event::Done { choice, finish, stop, prompt_tokens, completion_tokens, timings }) => {
                let i = choice;
                completion += completion_tokens;
                if choice == 0 {
                    prompt = prompt_tokens;
                    cached = timings.cache_n;
                }
                done += 1;
                if let Some(s) = st.get_mut(i as usize) {
                    open(s, i, &mut out);
                    let parsed = s.parser.take().map(|mut p| {
                        for d in p.flush() {
                            let delta = delta_json(d, &mut s.calls);
                            out.push(Ok(head.choice_chunk(i, delta, Value::Null, Value::Null)));
                        }
                        p.finish()
                    });
                    let lp = if s.logprobs.is_empty() { Value::Null } else { take_logprobs(shape, s) };
                    let reason = finish_reason(finish, parsed.as_ref());
                    let mut last = head.choice_chunk(i, Map::new(), lp, reason.into());
                    if let (Some(stop), "stop") = (stop, reason) {
                        set_stop(&mut last, stop);
                    }
                    if done == n {
                        last.insert("timings".into(), timings_json(&timings));
                    }
                    out.push(Ok(last));
                }
                if done == n {
                    out.push(Ok(head.usage_chunk(usage(prompt, completion, cached).to_json())));
                }
            }
            Some(Event::Error(e)) => {
                done = n + 1;
                out.push(Err(BackendError::Internal(e)));
            }
            Some(Event::Embedding(_)) => {}
            // The engine went away without finishing this request.
            None if done < n => out.push(Err(BackendError::Internal(STOPPED.into()))),
            None => {}
        }
        futures::stream::iter(out)
    });
    events.boxed()
}

/// A choice that ended at a stop string names it, as vLLM does (`stop_reason`): the Messages
/// API answers `stop_reason: "stop_sequence"` with it.
fn with_stop(mut choice: Value, stop: Option<String>) -> Value {
    if let (Some(s), Some(o)) = (stop, choice.as_object_mut()) {
        o.insert("stop_reason".into(), s.into());
    }
    choice
}

/// The same on a stream's finish chunk (its first choice).
fn set_stop(chunk: &mut Map<String, Value>, stop: String) {
    if let Some(c) = chunk.get_mut("choices").and_then(|c| c.get_mut(0)).and_then(Value::as_object_mut) {
        c.insert("stop_reason".into(), stop.into());
    }
}

fn take_logprobs(shape: Option<LogprobShape>, s: &mut Streamed) -> Value {
    if shape.is_none() {
        return Value::Null;
    }
    let lps = std::mem::take(&mut s.logprobs);
    logprobs_value(shape, &lps, s.sent)
}

/// One parsed piece as a chat delta.
fn delta_json(d: Delta, calls: &mut usize) -> Map<String, Value> {
    match d {
        Delta::Content(t) => fields([("content", t.into())]),
        Delta::Reasoning(t) => fields([("reasoning_content", t.into())]),
        Delta::ToolCallStart { index, id, name } => {
            *calls += 1;
            fields([(
                "tool_calls",
                json!([{"index": index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]),
            )])
        }
        Delta::ToolCallArgs { index, fragment } => {
            fields([("tool_calls", json!([{"index": index, "function": {"arguments": fragment}}]))])
        }
    }
}

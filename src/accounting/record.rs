//! The per-request record: one [`RequestRecord`] per request, filled by a [`Tap`] that
//! observes the response as it passes (it never holds a token back), then handed to
//! [`crate::accounting::Accounting::finish`].
//!
//! Token counts come from the backend's usage report when there is one (`TokenSource::Reported`);
//! otherwise they are counted with tiktoken's cl100k_base (`TokenSource::Counted`), so a
//! stream never loses its usage.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::accounting::limits::Admission;
use crate::clock::{ms, now_ms};
use crate::pricing::{Cost, Price, Tokens};
use crate::protocol::{Endpoint, Usage};

/// What a finished record is reported to besides the sinks: the registry version that
/// served it (its canary comparison). A trait, so the record names no module above it.
pub trait VersionOutcome: Send + Sync + std::fmt::Debug {
    fn observe(&self, rec: &RequestRecord);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenSource {
    Reported,
    Counted,
    None,
}

/// Everything the gateway knows about one request once it has ended.
#[derive(Clone, Debug, Serialize)]
pub struct RequestRecord {
    /// The ledger's key for this record (unique, unlike a client-chosen request id).
    pub id: String,
    pub request_id: String,
    /// Unix milliseconds at arrival.
    pub started_at_ms: u64,
    pub key: Option<String>,
    pub user: Option<String>,
    pub endpoint: &'static str,
    pub alias: String,
    pub deployment: Option<String>,
    pub backend_kind: Option<&'static str>,
    pub upstream_model: Option<String>,
    pub stream: bool,
    pub status: u16,
    pub error: Option<&'static str>,
    pub attempts: u32,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    /// Prefill time the reused prompt tokens saved: cached tokens times this request's own
    /// prefill time per computed token (from llama-server-style `timings`), when known.
    pub prefill_saved_ms: Option<f64>,
    pub tokens_source: TokenSource,
    pub ttft_ms: Option<f64>,
    pub total_ms: f64,
    pub finish_reason: Option<String>,
    /// The client went away before the response ended.
    pub client_closed: bool,
    /// Answered from the response cache.
    pub cache_hit: bool,
    /// The request's `metadata` (attribution tags), as sent.
    pub tags: Option<Value>,
    /// The batch this request is a line of.
    pub batch_id: Option<String>,
    /// What it cost and saved; `None` when its deployment has no price.
    pub cost: Option<Cost>,
    /// The small-model router's decision (`x-tollgate-route`), when an `auto` alias chose.
    pub route: Option<String>,
    /// The registry version that answered (`NAME@X.Y.Z`), and the model file's SHA-256.
    pub model_version: Option<String>,
    pub model_sha256: Option<String>,
    /// The sampling parameters as requested, and the seed the answer was drawn with (the
    /// client's, or the one the gateway chose for its engine): enough to reproduce it.
    pub sampler: Option<crate::protocol::Sampling>,
    pub seed: Option<i64>,
    /// The registry version's canary comparison, told how this request ended.
    #[serde(skip)]
    pub release: Option<Arc<dyn VersionOutcome>>,
    /// The serving deployment's price (set with the deployment).
    #[serde(skip)]
    pub price: Option<Price>,
    /// Sent to the small model: the large model's price, to account the saving.
    #[serde(skip)]
    pub downgrade_price: Option<Price>,
    /// The key's rate-limit hold, settled when the record is finished.
    #[serde(skip)]
    pub admission: Option<Arc<Admission>>,
    /// Prompt and completion text, only when `log.content` is on.
    #[serde(skip)]
    pub content: Option<(String, String)>,
    /// What the guardrails found, both ways (`detector:action:direction=n`, never a value);
    /// shared with a stream's guard, which adds to it as the answer passes.
    #[serde(serialize_with = "guardrail_summary", skip_serializing_if = "Option::is_none")]
    pub guardrails: Option<Arc<std::sync::Mutex<crate::guardrails::Hits>>>,
    /// The request's span ids, when traces are exported (`[otel]`).
    #[serde(skip)]
    pub trace: Option<Box<super::telemetry::Trace>>,
    /// When it was first dispatched to a deployment, milliseconds after it started.
    #[serde(skip)]
    pub dispatched_ms: Option<f64>,
}

fn guardrail_summary<S: serde::Serializer>(
    h: &Option<Arc<std::sync::Mutex<crate::guardrails::Hits>>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match h {
        Some(h) => s.serialize_str(&h.lock().unwrap_or_else(std::sync::PoisonError::into_inner).summary()),
        None => s.serialize_none(),
    }
}

impl RequestRecord {
    pub fn new(request_id: String, endpoint: Endpoint, alias: String, stream: bool) -> Self {
        RequestRecord {
            id: uuid::Uuid::new_v4().simple().to_string(),
            request_id,
            started_at_ms: now_ms(),
            key: None,
            user: None,
            endpoint: endpoint.as_str(),
            alias,
            deployment: None,
            backend_kind: None,
            upstream_model: None,
            stream,
            status: 200,
            error: None,
            attempts: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            cached_tokens: 0,
            prefill_saved_ms: None,
            tokens_source: TokenSource::None,
            ttft_ms: None,
            total_ms: 0.0,
            finish_reason: None,
            client_closed: false,
            content: None,
            cache_hit: false,
            tags: None,
            batch_id: None,
            cost: None,
            price: None,
            downgrade_price: None,
            route: None,
            model_version: None,
            model_sha256: None,
            sampler: None,
            seed: None,
            release: None,
            admission: None,
            guardrails: None,
            trace: None,
            dispatched_ms: None,
        }
    }

    pub fn tokens(&self) -> Tokens {
        Tokens { prompt: self.prompt_tokens, cached: self.cached_tokens, completion: self.completion_tokens }
    }

    /// What these tokens cost this request: a cache hit pays nothing and saves the whole cost;
    /// a request the router sent to the small model also saves what the large one would have
    /// cost for the same tokens.
    pub fn charge(&self, t: Tokens) -> Option<Cost> {
        let p = self.price.as_ref()?;
        let batch = self.batch_id.is_some();
        let mut c = if self.cache_hit { p.cache_hit(t) } else { p.cost(t, batch) };
        if let Some(large) = &self.downgrade_price {
            let would = large.cost(t, batch).usd;
            if would > c.usd {
                c.saved_usd += would - c.usd;
            }
        }
        Some(c)
    }

    /// Prices the record from its tokens.
    pub fn price_it(&mut self) {
        self.cost = self.charge(self.tokens());
    }
}

/// Observes a response: first token time, usage, finish reason, and the text needed to
/// count tokens when the backend reported none.
pub struct Tap {
    start: Instant,
    first_token: Option<Duration>,
    usage: Option<Usage>,
    finish: Option<String>,
    text: String,
    prompt_text: Option<String>,
    /// Keep the texts for the log (`log.content = true`); off by default.
    keep_content: bool,
    /// Keep the completion text for the response cache.
    keep_text: bool,
    /// The answer has more than one choice's text: tool calls, reasoning, log-probabilities
    /// or several choices, which the text and finish reason do not rebuild.
    rich: bool,
    prefill_saved_ms: Option<f64>,
    /// Queue + prefill + first decode, from llama.cpp-style `timings`: the time to first
    /// token of a response that arrives whole.
    timings_ttft_ms: Option<f64>,
}

impl Tap {
    pub fn new(start: Instant, prompt_text: Option<String>) -> Self {
        Self::with_content(start, prompt_text, false)
    }

    pub fn with_content(start: Instant, prompt_text: Option<String>, keep_content: bool) -> Self {
        Tap {
            start,
            first_token: None,
            usage: None,
            finish: None,
            text: String::new(),
            prompt_text,
            keep_content,
            rich: false,
            keep_text: false,
            prefill_saved_ms: None,
            timings_ttft_ms: None,
        }
    }

    /// Looks at one chunk (or a full body: same fields, `message` instead of `delta`), or at
    /// a passed-through Responses event or `response` object.
    pub fn observe(&mut self, chunk: &serde_json::Map<String, Value>) {
        if let Some(t) = chunk.get("type").and_then(Value::as_str) {
            return self.observe_event(t, chunk);
        }
        if chunk.get("object").and_then(Value::as_str) == Some("response") {
            return self.observe_response(chunk, true);
        }
        if let Some(t) = chunk.get("timings").and_then(Value::as_object) {
            let f = |k: &str| t.get(k).and_then(Value::as_f64);
            if let (Some(cache_n), Some(per_token)) = (f("cache_n"), f("prompt_per_token_ms")) {
                if cache_n > 0.0 && per_token > 0.0 {
                    self.prefill_saved_ms = Some(cache_n * per_token);
                }
            }
            if let Some(prompt) = f("prompt_ms") {
                self.timings_ttft_ms =
                    Some(f("queued_ms").unwrap_or(0.0) + prompt + f("predicted_per_token_ms").unwrap_or(0.0));
            }
        }
        if let Some(u) = chunk.get("usage").and_then(Usage::from_json) {
            self.usage = Some(u);
        }
        let Some(Value::Array(choices)) = chunk.get("choices") else {
            return;
        };
        for c in choices {
            let delta = c.get("delta").or_else(|| c.get("message"));
            let piece = delta
                .and_then(|d| d.get("content"))
                .and_then(Value::as_str)
                .or_else(|| c.get("text").and_then(Value::as_str));
            let beyond_text = delta.is_some_and(|d| {
                d.get("tool_calls").is_some_and(|v| !v.is_null())
                    || d.get("reasoning_content").is_some_and(|v| !v.is_null())
            });
            if beyond_text
                || c.get("logprobs").is_some_and(|v| !v.is_null())
                || c.get("index").and_then(Value::as_u64).is_some_and(|i| i > 0)
            {
                self.rich = true;
            }
            if (beyond_text || piece.is_some_and(|p| !p.is_empty())) && self.first_token.is_none() {
                self.first_token = Some(self.start.elapsed());
            }
            if let Some(p) = piece.filter(|p| !p.is_empty()) {
                if self.usage.is_none() || self.keep_content || self.keep_text {
                    self.text.push_str(p);
                }
            }
            if let Some(f) = c.get("finish_reason").and_then(Value::as_str) {
                self.finish = Some(f.to_owned());
            }
        }
    }

    /// One event of a Responses stream: its text deltas, and the usage and status of the
    /// response it ends with.
    fn observe_event(&mut self, kind: &str, ev: &serde_json::Map<String, Value>) {
        match kind {
            "response.output_text.delta" => {
                let piece = ev.get("delta").and_then(Value::as_str).unwrap_or_default();
                if !piece.is_empty() {
                    self.first_token.get_or_insert_with(|| self.start.elapsed());
                    if self.usage.is_none() || self.keep_content || self.keep_text {
                        self.text.push_str(piece);
                    }
                }
            }
            k if k.ends_with(".delta") => {
                // Tool-call arguments, reasoning, refusals: output beyond the text.
                self.first_token.get_or_insert_with(|| self.start.elapsed());
                self.rich = true;
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                if let Some(r) = ev.get("response").and_then(Value::as_object) {
                    self.observe_response(r, false);
                }
            }
            _ => {}
        }
    }

    /// A `response` object: its usage, its status as a finish reason, and (a whole body) its
    /// output text.
    fn observe_response(&mut self, r: &serde_json::Map<String, Value>, whole: bool) {
        if let Some(u) = r.get("usage").and_then(Usage::from_json) {
            self.usage = Some(u);
        }
        let output = r.get("output").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        let calls = output.iter().any(|i| i.get("type").and_then(Value::as_str) == Some("function_call"));
        self.rich |= calls;
        self.finish = match r.get("status").and_then(Value::as_str) {
            Some("completed") if calls => Some("tool_calls".into()),
            Some("completed") => Some("stop".into()),
            Some("incomplete") => Some(
                match r.get("incomplete_details").and_then(|d| d.get("reason")).and_then(Value::as_str) {
                    Some("content_filter") => "content_filter",
                    _ => "length",
                }
                .into(),
            ),
            Some(other) => Some(other.to_owned()),
            None => self.finish.take(),
        };
        if !whole {
            return;
        }
        let parts = output.iter().filter_map(|i| i.get("content")?.as_array()).flatten();
        for p in parts.filter(|p| p.get("type").and_then(Value::as_str) == Some("output_text")) {
            if let Some(t) = p.get("text").and_then(Value::as_str).filter(|t| !t.is_empty()) {
                self.first_token.get_or_insert_with(|| self.start.elapsed());
                if self.usage.is_none() || self.keep_content || self.keep_text {
                    self.text.push_str(t);
                }
            }
        }
    }

    /// Keep the completion text (to store a stream in the response cache).
    pub fn keep_text(&mut self) {
        self.keep_text = true;
    }

    /// The text, finish reason and usage seen so far; `None` when the answer has more than
    /// one choice's text (tool calls, reasoning, log-probabilities, several choices), which
    /// they do not rebuild.
    pub fn snapshot(&self) -> Option<(String, Option<String>, Option<Usage>)> {
        (!self.rich).then(|| (self.text.clone(), self.finish.clone(), self.usage))
    }

    pub fn set_usage(&mut self, u: Usage) {
        self.usage = Some(u);
    }

    /// Fills the record's tokens, times and finish reason.
    pub fn finish_into(self, rec: &mut RequestRecord) {
        rec.total_ms = ms(self.start.elapsed());
        // A whole (non-streamed) body says nothing of when its first token was made: only
        // the backend's own timings do; without them there is no TTFT, rather than a wrong one.
        rec.ttft_ms = if rec.stream { self.first_token.map(ms) } else { self.timings_ttft_ms };
        rec.finish_reason = self.finish;
        rec.prefill_saved_ms = self.prefill_saved_ms;
        match self.usage {
            Some(u) => {
                rec.prompt_tokens = u.prompt_tokens;
                rec.completion_tokens = u.completion_tokens;
                rec.cached_tokens = u.cached_tokens.unwrap_or(0);
                rec.tokens_source = TokenSource::Reported;
            }
            None if rec.status < 400 || !self.text.is_empty() => {
                rec.prompt_tokens = self.prompt_text.as_deref().map(count_tokens).unwrap_or(0);
                rec.completion_tokens = count_tokens(&self.text);
                rec.tokens_source = TokenSource::Counted;
            }
            None => {}
        }
        if self.keep_content {
            rec.content = Some((self.prompt_text.unwrap_or_default(), self.text));
        }
    }
}

/// Counts tokens with cl100k_base, loaded on first use (only for backends that report none).
pub fn count_tokens(text: &str) -> u64 {
    static BPE: OnceLock<Option<tiktoken_rs::CoreBPE>> = OnceLock::new();
    match BPE.get_or_init(|| tiktoken_rs::cl100k_base().ok()) {
        Some(bpe) => bpe.encode_ordinary(text).len() as u64,
        None => text.len().div_ceil(4) as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tap_reads_usage_ttft_and_finish() {
        let mut tap = Tap::new(Instant::now(), None);
        let c = |v: Value| v.as_object().unwrap().clone();
        tap.observe(&c(json!({"choices":[{"delta":{"role":"assistant","content":""}}]})));
        tap.observe(&c(json!({"choices":[{"delta":{"content":"Hi"}}]})));
        tap.observe(&c(json!({"choices":[{"delta":{},"finish_reason":"length"}]})));
        tap.observe(&c(json!({"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4,"prompt_tokens_details":{"cached_tokens":2}}})));
        let mut r = RequestRecord::new("r".into(), Endpoint::Chat, "a".into(), true);
        tap.finish_into(&mut r);
        assert_eq!((r.prompt_tokens, r.completion_tokens, r.cached_tokens), (3, 1, 2));
        assert_eq!(r.prefill_saved_ms, None, "no timings, no estimate");
        assert_eq!(r.tokens_source, TokenSource::Reported);
        assert_eq!(r.finish_reason.as_deref(), Some("length"));
        assert!(r.ttft_ms.is_some());
        let mut tap = Tap::new(Instant::now(), None);
        tap.observe(
            json!({"choices":[],"timings":{"cache_n":100,"prompt_n":10,"prompt_per_token_ms":2.5}})
                .as_object()
                .unwrap(),
        );
        let mut r = RequestRecord::new("r".into(), Endpoint::Chat, "a".into(), true);
        tap.finish_into(&mut r);
        assert_eq!(r.prefill_saved_ms, Some(250.0));
    }

    #[test]
    fn tokens_are_counted_without_usage() {
        let mut tap = Tap::new(Instant::now(), Some("hello world".into()));
        tap.observe(json!({"choices":[{"delta":{"content":"Hello there"}}]}).as_object().unwrap());
        let mut r = RequestRecord::new("r".into(), Endpoint::Chat, "a".into(), true);
        tap.finish_into(&mut r);
        assert_eq!(r.tokens_source, TokenSource::Counted);
        assert_eq!((r.prompt_tokens, r.completion_tokens), (2, 2));
    }
}

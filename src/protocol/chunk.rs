//! OpenAI completion objects, written in one place: the streamed chunks
//! (`chat.completion.chunk`, and `text_completion` for the legacy endpoint) and the whole
//! bodies (`chat.completion`, `text_completion`) that tollgate builds itself: for the embedded
//! engine, the Ollama translation and the response cache (a stored body replayed as a stream,
//! a finished stream stored as a body). An OpenAI-compatible upstream's own objects pass
//! through untouched.
//!
//! The keys are written in OpenAI's order, and serde_json keeps insertion order
//! (`preserve_order`), so this order is the order of the bytes clients see:
//! - an object: `id`, `object`, `created`, `model`, `system_fingerprint` (when the backend has
//!   one), `choices`, then `usage` (and whatever the caller appends, such as the engine's
//!   `timings`);
//! - a chat choice: `{"index":0,"delta":{..},"logprobs":null,"finish_reason":..}`, or with
//!   `message` in place of `delta` in a body;
//! - a completions choice: `{"text":..,"index":0,"logprobs":null,"finish_reason":..}`.
//!
//! The one-choice builders write `index` 0; the engine's `n` choices and their `logprobs` go
//! through [`Head::choice_chunk`], [`Head::choices_body`] and the `*_choice` functions.

use serde_json::{Map, Value};

use super::{Endpoint, Usage};

/// One OpenAI object, a chunk or a body.
pub type Object = Map<String, Value>;

/// A fresh response id: `chatcmpl-…` for chat, `cmpl-…` for completions.
pub fn response_id(endpoint: Endpoint) -> String {
    let prefix = if endpoint == Endpoint::Chat { "chatcmpl-" } else { "cmpl-" };
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// What every chunk and the body of one response share, and the builders of each.
#[derive(Clone, Debug)]
pub struct Head {
    chat: bool,
    // Each is written when present (a replayed body has what its upstream sent).
    id: Option<Value>,
    created: Option<Value>,
    model: Option<Value>,
    system_fingerprint: Option<Value>,
}

impl Head {
    /// The head of a chat response when `endpoint` is chat, else of a completions one.
    pub fn new(
        endpoint: Endpoint,
        id: String,
        created: u64,
        model: String,
        system_fingerprint: Option<String>,
    ) -> Head {
        Head {
            chat: endpoint == Endpoint::Chat,
            id: Some(Value::String(id)),
            created: Some(created.into()),
            model: Some(Value::String(model)),
            system_fingerprint: system_fingerprint.map(Value::String),
        }
    }

    /// The head of a whole body, to replay it as chunks: its `id`, `created`, `model` and
    /// `system_fingerprint` as they are (those it has); chat when its `object` is
    /// `chat.completion`.
    pub fn of_body(body: &Object) -> Head {
        Head {
            chat: body.get("object").and_then(Value::as_str) == Some("chat.completion"),
            id: body.get("id").cloned(),
            created: body.get("created").cloned(),
            model: body.get("model").cloned(),
            system_fingerprint: body.get("system_fingerprint").cloned(),
        }
    }

    pub fn is_chat(&self) -> bool {
        self.chat
    }

    /// The object's keys up to and with `choices`; room for two more (`usage`, `timings`),
    /// so that appending them does not grow the map.
    fn object(&self, object: &'static str, choice: Option<Value>) -> Object {
        let mut o = Map::with_capacity(8);
        if let Some(id) = &self.id {
            o.insert("id".into(), id.clone());
        }
        o.insert("object".into(), Value::String(object.into()));
        for (k, v) in
            [("created", &self.created), ("model", &self.model), ("system_fingerprint", &self.system_fingerprint)]
        {
            if let Some(v) = v {
                o.insert(k.into(), v.clone());
            }
        }
        o.insert("choices".into(), Value::Array(choice.into_iter().collect()));
        o
    }

    fn chunk(&self, choice: Option<Value>) -> Object {
        self.object(if self.chat { "chat.completion.chunk" } else { "text_completion" }, choice)
    }

    /// A chat chunk with this delta.
    fn delta_chunk(&self, delta: Object, finish_reason: Value) -> Object {
        self.chunk(Some(choice(delta_choice(delta), finish_reason)))
    }

    /// The first chunk of a chat stream: the assistant's role, with empty content.
    pub fn role_chunk(&self) -> Object {
        self.delta_chunk(fields([("role", "assistant".into()), ("content", "".into())]), Value::Null)
    }

    /// A piece of the answer: a `content` delta (chat) or a `text` choice (completions).
    pub fn text_chunk(&self, text: impl Into<Value>) -> Object {
        if self.chat {
            self.delta_chunk(fields([("content", text.into())]), Value::Null)
        } else {
            self.chunk(Some(text_choice(text.into(), Value::Null)))
        }
    }

    /// A piece of a chat answer's reasoning (a `reasoning_content` delta).
    pub fn reasoning_chunk(&self, text: impl Into<Value>) -> Object {
        self.delta_chunk(fields([("reasoning_content", text.into())]), Value::Null)
    }

    /// The chunk that ends the answer: an empty delta (chat) or empty text (completions),
    /// with the finish reason.
    pub fn finish_chunk(&self, finish_reason: impl Into<Value>) -> Object {
        if self.chat {
            self.delta_chunk(Map::new(), finish_reason.into())
        } else {
            self.chunk(Some(text_choice("".into(), finish_reason.into())))
        }
    }

    /// The usage chunk: no choices, then `usage` (as given: a cached body's may carry more
    /// than [`Usage`] knows).
    pub fn usage_chunk(&self, usage: Value) -> Object {
        let mut o = self.chunk(None);
        o.insert("usage".into(), usage);
        o
    }

    /// A chunk of one choice: a chat `delta` (the object given) or a completions `text`.
    pub fn choice_chunk(&self, index: u32, delta: Object, logprobs: Value, finish_reason: Value) -> Object {
        let choice = if self.chat {
            let mut c = Map::with_capacity(4);
            c.insert("index".into(), index.into());
            c.insert("delta".into(), Value::Object(delta));
            c.insert("logprobs".into(), logprobs);
            c.insert("finish_reason".into(), finish_reason);
            Value::Object(c)
        } else {
            let text = delta.get("content").cloned().unwrap_or_else(|| Value::String(String::new()));
            completion_choice(index, text, logprobs, finish_reason)
        };
        self.chunk(Some(choice))
    }

    /// A whole body of several choices (built by [`chat_choice`] or [`completion_choice`]).
    pub fn choices_body(&self, choices: Vec<Value>, usage: Option<Value>) -> Object {
        let mut o = self.object(if self.chat { "chat.completion" } else { "text_completion" }, None);
        o.insert("choices".into(), Value::Array(choices));
        if let Some(u) = usage {
            o.insert("usage".into(), u);
        }
        o
    }

    /// A whole body: the assistant's message (chat; `reasoning_content` after `content`
    /// when given) or the text (completions), its finish reason, then `usage` when given.
    pub fn body(
        &self,
        text: impl Into<Value>,
        reasoning: Option<&str>,
        finish_reason: impl Into<Value>,
        usage: Option<Usage>,
    ) -> Object {
        let choice = if self.chat {
            let mut msg = fields([("role", "assistant".into()), ("content", text.into())]);
            if let Some(r) = reasoning {
                msg.insert("reasoning_content".into(), r.into());
            }
            choice(message_choice(msg), finish_reason.into())
        } else {
            text_choice(text.into(), finish_reason.into())
        };
        let mut o = self.object(if self.chat { "chat.completion" } else { "text_completion" }, Some(choice));
        if let Some(u) = usage {
            o.insert("usage".into(), u.to_json());
        }
        o
    }
}

/// A chat body's choice: `{"index":..,"message":..,"logprobs":..,"finish_reason":..}`.
pub fn chat_choice(index: u32, message: Object, logprobs: Value, finish_reason: Value) -> Value {
    Value::Object(fields([
        ("index", index.into()),
        ("message", Value::Object(message)),
        ("logprobs", logprobs),
        ("finish_reason", finish_reason),
    ]))
}

/// A completions choice: `{"text":..,"index":..,"logprobs":..,"finish_reason":..}`.
pub fn completion_choice(index: u32, text: Value, logprobs: Value, finish_reason: Value) -> Value {
    Value::Object(fields([
        ("text", text),
        ("index", index.into()),
        ("logprobs", logprobs),
        ("finish_reason", finish_reason),
    ]))
}

/// A map of these fields, in this order.
pub fn fields<const N: usize>(kv: [(&str, Value); N]) -> Object {
    let mut m = Map::with_capacity(N);
    for (k, v) in kv {
        m.insert(k.into(), v);
    }
    m
}

/// `{"index":0,"delta":..` (to be finished by [`choice`]).
fn delta_choice(delta: Object) -> Object {
    let mut c = Map::with_capacity(4);
    c.insert("index".into(), 0.into());
    c.insert("delta".into(), Value::Object(delta));
    c
}

/// `{"index":0,"message":..` (to be finished by [`choice`]).
fn message_choice(message: Object) -> Object {
    let mut c = Map::with_capacity(4);
    c.insert("index".into(), 0.into());
    c.insert("message".into(), Value::Object(message));
    c
}

/// A chat choice's tail: `"logprobs":null,"finish_reason":..}`.
fn choice(mut c: Object, finish_reason: Value) -> Value {
    c.insert("logprobs".into(), Value::Null);
    c.insert("finish_reason".into(), finish_reason);
    Value::Object(c)
}

/// `{"text":..,"index":0,"logprobs":null,"finish_reason":..}`.
fn text_choice(text: Value, finish_reason: Value) -> Value {
    completion_choice(0, text, Value::Null, finish_reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(o: &Object) -> String {
        serde_json::to_string(o).unwrap()
    }

    // The expected strings are the bytes the engine and the Ollama translation wrote before
    // they shared this builder.
    #[test]
    fn chat_chunks_and_body() {
        let h = Head::new(Endpoint::Chat, "ID".into(), 7, "M".into(), Some("FP".into()));
        let pre = r#"{"id":"ID","object":"chat.completion.chunk","created":7,"model":"M","system_fingerprint":"FP","choices":"#;
        assert_eq!(
            s(&h.role_chunk()),
            format!(
                r#"{pre}[{{"index":0,"delta":{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}]}}"#
            )
        );
        assert_eq!(
            s(&h.text_chunk("llo \u{e9}\"")),
            format!(r#"{pre}[{{"index":0,"delta":{{"content":"llo é\""}},"logprobs":null,"finish_reason":null}}]}}"#)
        );
        assert_eq!(
            s(&h.text_chunk(String::new())),
            format!(r#"{pre}[{{"index":0,"delta":{{"content":""}},"logprobs":null,"finish_reason":null}}]}}"#)
        );
        assert_eq!(
            s(&h.reasoning_chunk("hmm")),
            format!(
                r#"{pre}[{{"index":0,"delta":{{"reasoning_content":"hmm"}},"logprobs":null,"finish_reason":null}}]}}"#
            )
        );
        assert_eq!(
            s(&h.finish_chunk("length")),
            format!(r#"{pre}[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"length"}}]}}"#)
        );
        let usage = Usage { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5, cached_tokens: Some(2) };
        assert_eq!(
            s(&h.usage_chunk(usage.to_json())),
            format!(
                r#"{pre}[],"usage":{{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5,"prompt_tokens_details":{{"cached_tokens":2}}}}}}"#
            )
        );
        assert_eq!(
            s(&h.body("Hello", None, "length", Some(usage))),
            r#"{"id":"ID","object":"chat.completion","created":7,"model":"M","system_fingerprint":"FP","choices":[{"index":0,"message":{"role":"assistant","content":"Hello"},"logprobs":null,"finish_reason":"length"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5,"prompt_tokens_details":{"cached_tokens":2}}}"#
        );
        // Without a fingerprint (Ollama), with reasoning, a missing finish reason, no usage.
        let h = Head::new(Endpoint::Chat, "chatcmpl-x".into(), 7, "m".into(), None);
        assert_eq!(
            s(&h.body("Hi", Some("t"), None::<String>, None)),
            r#"{"id":"chatcmpl-x","object":"chat.completion","created":7,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hi","reasoning_content":"t"},"logprobs":null,"finish_reason":null}]}"#
        );
        assert_eq!(
            s(&h.finish_chunk("stop")),
            r#"{"id":"chatcmpl-x","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}"#
        );
    }

    #[test]
    fn completions_chunks_and_body() {
        let h = Head::new(Endpoint::Completions, "ID".into(), 7, "M".into(), Some("FP".into()));
        let pre =
            r#"{"id":"ID","object":"text_completion","created":7,"model":"M","system_fingerprint":"FP","choices":"#;
        assert_eq!(
            s(&h.text_chunk("He")),
            format!(r#"{pre}[{{"text":"He","index":0,"logprobs":null,"finish_reason":null}}]}}"#)
        );
        assert_eq!(
            s(&h.finish_chunk(Some("length"))),
            format!(r#"{pre}[{{"text":"","index":0,"logprobs":null,"finish_reason":"length"}}]}}"#)
        );
        assert_eq!(s(&h.usage_chunk(Value::Null)), format!(r#"{pre}[],"usage":null}}"#));
        let usage = Usage { prompt_tokens: 5, completion_tokens: 6, total_tokens: 11, cached_tokens: None };
        let h = Head::new(Endpoint::Completions, "chatcmpl-x".into(), 7, "m".into(), None);
        assert_eq!(
            s(&h.body("The sky", Some("ignored"), "stop", Some(usage))),
            r#"{"id":"chatcmpl-x","object":"text_completion","created":7,"model":"m","choices":[{"text":"The sky","index":0,"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":6,"total_tokens":11}}"#
        );
    }

    #[test]
    fn a_body_replayed_keeps_its_head_as_sent() {
        let body: Object = serde_json::from_str(
            r#"{"id":"chatcmpl-1","object":"chat.completion","created":5,"model":"m","system_fingerprint":null,"choices":[]}"#,
        )
        .unwrap();
        assert_eq!(
            s(&Head::of_body(&body).finish_chunk("stop")),
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":5,"model":"m","system_fingerprint":null,"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}"#
        );
        let body: Object = serde_json::from_str(r#"{"object":"text_completion","model":"m"}"#).unwrap();
        let h = Head::of_body(&body);
        assert!(!h.is_chat());
        assert_eq!(
            s(&h.text_chunk(Value::Null)),
            r#"{"object":"text_completion","model":"m","choices":[{"text":null,"index":0,"logprobs":null,"finish_reason":null}]}"#
        );
    }

    #[test]
    fn ids_name_their_endpoint() {
        let (chat, text) = (response_id(Endpoint::Chat), response_id(Endpoint::Completions));
        assert!(chat.starts_with("chatcmpl-") && chat.len() == 9 + 32, "{chat}");
        assert!(text.starts_with("cmpl-") && text.len() == 5 + 32, "{text}");
        assert_ne!(response_id(Endpoint::Chat), chat);
    }
}

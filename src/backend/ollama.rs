//! Ollama's native API (`/api/chat`, `/api/generate`, `/api/embed`) behind the OpenAI shapes.
//!
//! This module owns the translation both ways: the request (messages, sampling parameters
//! into Ollama's `options`, and the rejection, by name, of parameters Ollama cannot honour),
//! and the translation of Ollama's lines (framed by [`super::ndjson`]) and bodies into OpenAI
//! chunks and bodies ([`crate::protocol::chunk`]), with usage taken from Ollama's token counters.
//! A streamed reply always ends with a usage chunk (the API layer drops it when the client
//! did not ask). Retries, fallbacks and the final `model` name belong to the router and the
//! API layer.

use std::collections::VecDeque;
use std::fmt::Display;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use http::StatusCode;
use serde_json::{json, Map, Value};

use super::ndjson::NdjsonParser;
use super::remote::{self, Remote};
use super::{Backend, BackendError, BackendReply, BackendRequest, Chunk, EventStream};
use crate::config::{DeploymentConfig, RemoteConfig};
use crate::protocol::chunk::{self, Head};
use crate::protocol::error::ApiError;
use crate::protocol::{Endpoint, Prompt, Sampling, Usage, ValidRequest};

/// The longest NDJSON line accepted; a final `/api/generate` line carries the whole context.
const MAX_LINE: usize = 16 << 20;

pub struct OllamaBackend {
    remote: Remote,
}

impl OllamaBackend {
    pub fn new(dep: &DeploymentConfig, cfg: RemoteConfig) -> Self {
        OllamaBackend { remote: Remote::new(dep, cfg) }
    }

    /// The native path (`api/chat`, `api/generate`, `api/embed`) and body for a request, or
    /// `Rejected` naming the first parameter Ollama cannot honour.
    pub fn upstream_request(
        cfg: &RemoteConfig,
        req: &ValidRequest,
    ) -> Result<(&'static str, Map<String, Value>), BackendError> {
        check_supported(req)?;
        let mut body = Map::new();
        body.insert("model".into(), Value::String(cfg.model.clone()));
        let path = match &req.prompt {
            Prompt::Embed(input) => {
                body.insert("input".into(), json!(input));
                if let Some(d) = req.body.get("dimensions").filter(|v| v.is_u64()) {
                    body.insert("dimensions".into(), d.clone());
                }
                return Ok(("api/embed", body));
            }
            Prompt::Chat(msgs) => {
                let msgs = msgs.iter().map(|m| json!({"role": ollama_role(&m.role), "content": m.content}));
                body.insert("messages".into(), msgs.collect());
                body.insert("stream".into(), Value::Bool(req.stream));
                "api/chat"
            }
            Prompt::Text(p) => {
                body.insert("prompt".into(), Value::String(p.clone()));
                body.insert("stream".into(), Value::Bool(req.stream));
                body.insert("raw".into(), Value::Bool(true));
                "api/generate"
            }
        };
        body.insert("options".into(), Value::Object(options(&req.sampling)));
        Ok((path, body))
    }
}

impl Backend for OllamaBackend {
    fn call(&self, br: BackendRequest) -> BoxFuture<'static, Result<BackendReply, BackendError>> {
        let req = br.req.clone();
        let cfg = self.remote.cfg();
        let (path, body) = match Self::upstream_request(cfg, &req) {
            Ok(x) => x,
            Err(e) => return futures::future::ready(Err(e)).boxed(),
        };
        let url = match remote::uri(&format!("{}/{path}", cfg.base_url)) {
            Ok(u) => u,
            Err(e) => return futures::future::ready(Err(BackendError::Connect(e))).boxed(),
        };
        let sent = self.remote.send(self.remote.post(url, &br, serde_json::to_vec(&body).unwrap_or_default()));
        let model = cfg.model.clone();
        // As for OpenAI upstreams: a whole body gets the first-token budget, stretched.
        async move {
            let resp = sent.await?;
            let endpoint = req.endpoint;
            if req.stream && endpoint != Endpoint::Embeddings {
                let tr = StreamTranslator::new(endpoint, head(endpoint, &model));
                return Ok(BackendReply::Stream(ndjson_chunks(remote::body_stream(resp), tr)));
            }
            // The router bounds the whole attempt (`request_timeout`).
            let bytes = remote::read(resp).await?;
            let obj = parse_object(&bytes)?;
            let (body, usage) = if endpoint == Endpoint::Embeddings {
                let base64 = req.body.get("encoding_format").and_then(Value::as_str) == Some("base64");
                translate_embed(&model, &obj, base64)?
            } else {
                translate_final(endpoint, &head(endpoint, &model), &obj)?
            };
            Ok(BackendReply::Full { body, usage: Some(usage), raw: None })
        }
        .boxed()
    }

    fn health(&self) -> BoxFuture<'static, Result<(), crate::backend::Unhealthy>> {
        self.remote.health("api/version")
    }
}

// ---- The request ----

fn unsupported(param: &str) -> BackendError {
    BackendError::Rejected(ApiError::unsupported_param(param, "ollama"))
}

/// Set to something that asks for behaviour (not null, false, 0 or empty).
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// Rejects what a client may rely on and Ollama would silently ignore or cannot serve.
fn check_supported(req: &ValidRequest) -> Result<(), BackendError> {
    if req.sampling.n > 1 {
        return Err(unsupported("n"));
    }
    let b = &req.body;
    for key in ["tools", "functions", "logit_bias", "logprobs", "top_logprobs", "echo", "suffix"] {
        if b.get(key).is_some_and(truthy) {
            return Err(unsupported(key));
        }
    }
    if b.get("best_of").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(unsupported("best_of"));
    }
    match b.get("response_format") {
        None | Some(Value::Null) => {}
        Some(f) if f.get("type").and_then(Value::as_str) == Some("text") => {}
        Some(_) => return Err(unsupported("response_format")),
    }
    if req.endpoint == Endpoint::Chat {
        // Image and audio parts would be dropped: the prompt carries only the text parts.
        let msgs = b.get("messages").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        for (i, m) in msgs.iter().enumerate() {
            let parts = m.get("content").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
            if parts.iter().any(|p| p.get("type").and_then(Value::as_str) != Some("text")) {
                return Err(unsupported(&format!("messages[{i}].content")));
            }
        }
    }
    if let (Endpoint::Embeddings, Some(Value::Array(a))) = (req.endpoint, b.get("input")) {
        // Token-id inputs: Ollama embeds text only.
        if a.iter().any(|v| !v.is_string()) {
            return Err(unsupported("input"));
        }
    }
    Ok(())
}

fn ollama_role(role: &str) -> &str {
    match role {
        "developer" => "system",
        "function" => "tool",
        r => r,
    }
}

/// Ollama's `options` from the validated sampling parameters; unset ones are left out.
fn options(s: &Sampling) -> Map<String, Value> {
    let stop = (!s.stop.is_empty()).then(|| json!(s.stop));
    let all = [
        ("temperature", s.temperature.map(Value::from)),
        ("top_p", s.top_p.map(Value::from)),
        ("top_k", s.top_k.map(Value::from)),
        ("min_p", s.min_p.map(Value::from)),
        ("seed", s.seed.map(Value::from)),
        ("num_predict", s.max_tokens.map(Value::from)),
        ("stop", stop),
        ("presence_penalty", s.presence_penalty.map(Value::from)),
        ("frequency_penalty", s.frequency_penalty.map(Value::from)),
        ("repeat_penalty", s.repetition_penalty.map(Value::from)),
    ];
    all.into_iter().filter_map(|(k, v)| Some((k.to_owned(), v?))).collect()
}

// ---- The reply ----

/// The head of one response's chunks or body (Ollama has no `system_fingerprint`).
fn head(endpoint: Endpoint, model: &str) -> Head {
    Head::new(endpoint, chunk::response_id(endpoint), crate::clock::now_s(), model.to_owned(), None)
}

/// The object a `json!({...})` literal built (json! keeps the written key order).
fn into_map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Ollama's `done_reason` as an OpenAI `finish_reason`.
fn finish_reason(done_reason: Option<&str>) -> &'static str {
    match done_reason {
        Some("length") => "length",
        _ => "stop",
    }
}

/// Usage from Ollama's counters (`prompt_eval_count` is left out when the prompt was cached).
fn usage_of(obj: &Map<String, Value>) -> Usage {
    let count = |k: &str| obj.get(k).and_then(Value::as_u64).unwrap_or(0);
    let (prompt, completion) = (count("prompt_eval_count"), count("eval_count"));
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
        cached_tokens: None,
    }
}

/// The generated text and thinking of one line or body: in `message` for chat, at the top
/// level for generate.
fn texts(endpoint: Endpoint, obj: &Map<String, Value>) -> (&str, &str) {
    let src = if endpoint == Endpoint::Chat { obj.get("message").and_then(Value::as_object) } else { Some(obj) };
    let field = |k: &str| src.and_then(|o| o.get(k)).and_then(Value::as_str).unwrap_or_default();
    (field(if endpoint == Endpoint::Chat { "content" } else { "response" }), field("thinking"))
}

fn is_done(obj: &Map<String, Value>) -> bool {
    obj.get("done").and_then(Value::as_bool).unwrap_or(false)
}

/// One JSON object; an `{"error": ...}` object is an in-band error.
fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, BackendError> {
    let obj: Map<String, Value> = serde_json::from_slice(bytes)
        .map_err(|e| BackendError::Protocol(format!("the upstream sent something that is not a JSON object: {e}")))?;
    if obj.contains_key("error") {
        return Err(BackendError::InBand(ApiError::from_upstream(StatusCode::BAD_GATEWAY, bytes)));
    }
    Ok(obj)
}

/// Turns Ollama's NDJSON lines into OpenAI chunks, one line at a time.
struct StreamTranslator {
    endpoint: Endpoint,
    head: Head,
    started: bool,
    finished: bool,
}

impl StreamTranslator {
    fn new(endpoint: Endpoint, head: Head) -> Self {
        StreamTranslator { endpoint, head, started: false, finished: false }
    }

    /// The chunks one line becomes; the `done` line adds the finish and usage chunks.
    fn line(&mut self, line: &[u8]) -> Result<Vec<Chunk>, BackendError> {
        let obj = parse_object(line)?;
        let (h, chat) = (&self.head, self.head.is_chat());
        let mut out = Vec::new();
        if chat && !self.started {
            out.push(h.role_chunk());
        }
        self.started = true;
        let (text, thinking) = texts(self.endpoint, &obj);
        if chat && !thinking.is_empty() {
            out.push(h.reasoning_chunk(thinking));
        }
        if !text.is_empty() {
            out.push(h.text_chunk(text));
        }
        if is_done(&obj) {
            self.finished = true;
            out.push(h.finish_chunk(finish_reason(obj.get("done_reason").and_then(Value::as_str))));
            out.push(h.usage_chunk(usage_of(&obj).to_json()));
        }
        Ok(out)
    }
}

/// An NDJSON body as a stream of OpenAI chunks; ends after the `done` line (the rest of the
/// body is not read); a body that ends before it is a broken stream.
fn ndjson_chunks<S, E>(body: S, tr: StreamTranslator) -> EventStream
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Display + Send + 'static,
{
    struct St<S> {
        body: std::pin::Pin<Box<S>>,
        parser: NdjsonParser,
        tr: StreamTranslator,
        pending: VecDeque<Result<Chunk, BackendError>>,
        done: bool,
    }
    impl<S> St<S> {
        /// Queues what a line becomes; true when the line ended the stream.
        fn take(&mut self, line: &[u8]) -> bool {
            match self.tr.line(line) {
                Ok(chunks) => self.pending.extend(chunks.into_iter().map(Ok)),
                Err(e) => {
                    self.pending.push_back(Err(e));
                    return true;
                }
            }
            self.tr.finished
        }
    }
    let st = St { body: Box::pin(body), parser: NdjsonParser::default(), tr, pending: VecDeque::new(), done: false };
    futures::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(item) = st.pending.pop_front() {
                return Some((item, st));
            }
            if st.done {
                return None;
            }
            if let Some(line) = st.parser.next_line() {
                st.done = st.take(&line);
                continue;
            }
            if st.parser.buffered() > MAX_LINE {
                st.done = true;
                st.pending
                    .push_back(Err(BackendError::Protocol(format!("an NDJSON line is longer than {MAX_LINE} bytes"))));
                continue;
            }
            match st.body.next().await {
                Some(Ok(b)) => st.parser.push(&b),
                Some(Err(e)) => {
                    st.done = true;
                    st.pending.push_back(Err(BackendError::Connect(format!("the stream broke: {e}"))));
                }
                None => {
                    st.done = true;
                    let ended = match st.parser.finish() {
                        Some(line) => st.take(&line),
                        None => false,
                    };
                    if !ended {
                        st.pending.push_back(Err(BackendError::Connect("the stream ended before done".into())));
                    }
                }
            }
        }
    })
    .boxed()
}

/// A non-streamed `/api/chat` or `/api/generate` body as an OpenAI body, with its usage.
fn translate_final(
    endpoint: Endpoint,
    h: &Head,
    obj: &Map<String, Value>,
) -> Result<(Map<String, Value>, Usage), BackendError> {
    if !is_done(obj) {
        return Err(BackendError::Protocol("the body is not a finished response (no \"done\": true)".into()));
    }
    let (text, thinking) = texts(endpoint, obj);
    let fr = finish_reason(obj.get("done_reason").and_then(Value::as_str));
    let usage = usage_of(obj);
    let body = h.body(text, Some(thinking).filter(|t| !t.is_empty()), fr, Some(usage));
    Ok((body, usage))
}

/// An `/api/embed` body as an OpenAI embeddings list; `base64` packs each vector as
/// little-endian f32, as `encoding_format: "base64"` asks (the OpenAI Python SDK's default).
fn translate_embed(
    model: &str,
    obj: &Map<String, Value>,
    base64: bool,
) -> Result<(Map<String, Value>, Usage), BackendError> {
    let no_vectors = || BackendError::Protocol("the body has no \"embeddings\" array of arrays".into());
    let vectors = obj.get("embeddings").and_then(Value::as_array).ok_or_else(no_vectors)?;
    let mut data = Vec::with_capacity(vectors.len());
    for (i, v) in vectors.iter().enumerate() {
        let v = v.as_array().ok_or_else(no_vectors)?;
        let embedding = if base64 {
            Value::String(super::base64_f32(v.iter().map(|x| x.as_f64().unwrap_or(0.0) as f32)))
        } else {
            Value::Array(v.clone())
        };
        data.push(json!({"object": "embedding", "index": i, "embedding": embedding}));
    }
    let prompt = obj.get("prompt_eval_count").and_then(Value::as_u64).unwrap_or(0);
    let usage = json!({"prompt_tokens": prompt, "total_tokens": prompt});
    let body = into_map(json!({"object": "list", "data": data, "model": model, "usage": usage}));
    Ok((body, Usage { prompt_tokens: prompt, completion_tokens: 0, total_tokens: prompt, cached_tokens: None }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::validate;

    const CHAT: &[u8] = b"{\"model\":\"llama3.2\",\"created_at\":\"2025-01-20T10:00:00.000000Z\",\"message\":{\"role\":\"assistant\",\"content\":\"Hel\"},\"done\":false}\n{\"model\":\"llama3.2\",\"created_at\":\"2025-01-20T10:00:00.050000Z\",\"message\":{\"role\":\"assistant\",\"content\":\"lo \\u00e9\"},\"done\":false}\n{\"model\":\"llama3.2\",\"created_at\":\"2025-01-20T10:00:00.100000Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done_reason\":\"stop\",\"done\":true,\"total_duration\":4883583458,\"load_duration\":1334875,\"prompt_eval_count\":26,\"prompt_eval_duration\":342546000,\"eval_count\":2,\"eval_duration\":4535599000}\n";
    const GENERATE: &[u8] = b"{\"model\":\"llama3.2\",\"created_at\":\"2025-01-20T10:00:00.000000Z\",\"response\":\"The\",\"done\":false}\r\n\r\n{\"model\":\"llama3.2\",\"created_at\":\"2025-01-20T10:00:00.050000Z\",\"response\":\" sky\",\"done\":false}\r\n{\"model\":\"llama3.2\",\"created_at\":\"2025-01-20T10:00:00.100000Z\",\"response\":\"\",\"done\":true,\"done_reason\":\"length\",\"context\":[1,2,3],\"total_duration\":10706818083,\"load_duration\":6338219291,\"prompt_eval_count\":5,\"prompt_eval_duration\":130079000,\"eval_count\":2,\"eval_duration\":4232710000}\r\n";

    fn head(endpoint: Endpoint) -> Head {
        Head::new(endpoint, "chatcmpl-x".into(), 7, "m".into(), None)
    }

    fn cfg() -> RemoteConfig {
        let (base_url, model) = ("http://127.0.0.1:11434".into(), "llama3.2".into());
        RemoteConfig {
            base_url,
            model,
            api_key: None,
            max_tokens_field: "max_tokens".into(),
            headers: Vec::new(),
            responses_passthrough: false,
            ca_file: None,
        }
    }

    fn upstream(endpoint: Endpoint, body: &str) -> Result<(&'static str, Map<String, Value>), BackendError> {
        OllamaBackend::upstream_request(&cfg(), &validate(endpoint, body.as_bytes()).unwrap())
    }

    fn run_stream(endpoint: Endpoint, pieces: Vec<&'static [u8]>) -> Vec<Result<Chunk, BackendError>> {
        let body = futures::stream::iter(pieces.into_iter().map(|p| Ok::<_, std::io::Error>(Bytes::from_static(p))));
        futures::executor::block_on(ndjson_chunks(body, StreamTranslator::new(endpoint, head(endpoint))).collect())
    }

    #[test]
    fn chat_stream_becomes_openai_chunks() {
        for split in 0..=CHAT.len() {
            let out: Vec<Chunk> = run_stream(Endpoint::Chat, vec![&CHAT[..split], &CHAT[split..]])
                .into_iter()
                .map(Result::unwrap)
                .collect();
            assert_eq!(out.len(), 5, "split at {split}");
            assert_eq!(out[0].keys().collect::<Vec<_>>(), ["id", "object", "created", "model", "choices"]);
            assert_eq!(out[0]["object"], "chat.completion.chunk");
            let deltas: Vec<&Value> = out[..4].iter().map(|c| &c["choices"][0]["delta"]).collect();
            assert_eq!(
                deltas,
                [
                    &json!({"role": "assistant", "content": ""}),
                    &json!({"content": "Hel"}),
                    &json!({"content": "lo \u{e9}"}),
                    &json!({})
                ]
            );
            assert_eq!(
                (&out[2]["choices"][0]["finish_reason"], &out[3]["choices"][0]["finish_reason"]),
                (&Value::Null, &json!("stop"))
            );
            assert_eq!(out[4]["choices"], json!([]));
            assert_eq!(out[4]["usage"], json!({"prompt_tokens": 26, "completion_tokens": 2, "total_tokens": 28}));
        }
    }

    #[test]
    fn generate_stream_becomes_text_completion_chunks() {
        let out: Vec<Chunk> =
            run_stream(Endpoint::Completions, vec![GENERATE]).into_iter().map(Result::unwrap).collect();
        assert_eq!(out.len(), 4);
        assert_eq!((&out[0]["id"], &out[0]["object"]), (&json!("chatcmpl-x"), &json!("text_completion")));
        assert_eq!(out[0]["choices"][0], json!({"text": "The", "index": 0, "logprobs": null, "finish_reason": null}));
        assert_eq!(out[1]["choices"][0]["text"], " sky");
        assert_eq!(out[2]["choices"][0], json!({"text": "", "index": 0, "logprobs": null, "finish_reason": "length"}));
        assert_eq!(out[3]["usage"], json!({"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}));
    }

    #[test]
    fn in_band_error_and_cut_stream() {
        let first = CHAT.iter().position(|b| *b == b'\n').unwrap() + 1;
        let err: &'static [u8] = b"{\"error\":\"an error was encountered while running the model\"}\n";
        let out = run_stream(Endpoint::Chat, vec![&CHAT[..first], err, &CHAT[first..]]);
        assert_eq!(out.len(), 3);
        match &out[2] {
            Err(BackendError::InBand(e)) => {
                assert_eq!(
                    (e.status, e.message.as_str()),
                    (StatusCode::BAD_GATEWAY, "an error was encountered while running the model")
                );
            }
            other => panic!("{other:?}"),
        }
        let out = run_stream(Endpoint::Chat, vec![&CHAT[..first]]);
        assert!(matches!(out.last(), Some(Err(BackendError::Connect(m))) if m.contains("before done")), "{out:?}");
        // A last line without its newline still counts.
        let out = run_stream(Endpoint::Chat, vec![CHAT.strip_suffix(b"\n").unwrap()]);
        assert!(out.len() == 5 && out.iter().all(Result::is_ok), "{out:?}");
        let out = run_stream(Endpoint::Chat, vec![&b"not json\n"[..]]);
        assert!(matches!(out.as_slice(), [Err(BackendError::Protocol(_))]), "{out:?}");
    }

    #[test]
    fn finish_reasons_and_usage() {
        let fr: Vec<&str> = [Some("stop"), Some("length"), Some("load"), None].into_iter().map(finish_reason).collect();
        assert_eq!(fr, ["stop", "length", "stop", "stop"]);
        let obj: Map<String, Value> = serde_json::from_str(r#"{"done":true,"eval_count":4}"#).unwrap();
        assert_eq!(
            usage_of(&obj),
            Usage { prompt_tokens: 0, completion_tokens: 4, total_tokens: 4, cached_tokens: None }
        );
    }

    #[test]
    fn request_bodies() {
        let (path, body) = upstream(
            Endpoint::Chat,
            r#"{"model":"a","messages":[{"role":"developer","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"}]}],"stream":true,"temperature":0.5,"top_k":40,"max_tokens":9,"stop":"\n","repetition_penalty":1.1,"seed":3,"response_format":{"type":"text"},"logprobs":false}"#,
        )
        .unwrap();
        assert_eq!(path, "api/chat");
        let msgs = json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]);
        let options = json!({"temperature": 0.5, "top_k": 40, "seed": 3, "num_predict": 9, "stop": ["\n"], "repeat_penalty": 1.1});
        assert_eq!(
            Value::Object(body),
            json!({"model": "llama3.2", "messages": msgs, "stream": true, "options": options})
        );
        let (path, body) = upstream(
            Endpoint::Completions,
            r#"{"model":"a","prompt":"x","top_p":0.9,"min_p":0.1,"presence_penalty":1,"frequency_penalty":-1}"#,
        )
        .unwrap();
        assert_eq!(path, "api/generate");
        assert_eq!(body.keys().collect::<Vec<_>>(), ["model", "prompt", "stream", "raw", "options"]);
        assert_eq!((&body["raw"], &body["stream"]), (&json!(true), &json!(false)));
        let options: Vec<&String> = body["options"].as_object().unwrap().keys().collect();
        assert_eq!(options, ["top_p", "min_p", "presence_penalty", "frequency_penalty"]);
        let (path, body) = upstream(Endpoint::Embeddings, r#"{"model":"a","input":"x"}"#).unwrap();
        assert_eq!((path, Value::Object(body)), ("api/embed", json!({"model": "llama3.2", "input": ["x"]})));
    }

    #[test]
    fn rejections_name_the_parameter() {
        let base = r#""model":"a","messages":[{"role":"user","content":"hi"}]"#;
        for (extra, param) in [
            (r#""n":2"#, "n"),
            (r#""tools":[{"type":"function","function":{"name":"f"}}]"#, "tools"),
            (r#""response_format":{"type":"json_object"}"#, "response_format"),
            (r#""logprobs":true"#, "logprobs"),
            (r#""logit_bias":{"50256":-100}"#, "logit_bias"),
        ] {
            match upstream(Endpoint::Chat, &format!("{{{base},{extra}}}")) {
                Err(BackendError::Rejected(e)) => {
                    assert_eq!((e.param.as_deref(), e.code.as_deref()), (Some(param), Some("unsupported_parameter")));
                }
                other => panic!("{extra}: {:?}", other.map(|x| x.0)),
            }
        }
        let images =
            r#"{"model":"a","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#;
        assert!(
            matches!(upstream(Endpoint::Chat, images), Err(BackendError::Rejected(e)) if e.param.as_deref() == Some("messages[0].content"))
        );
        assert!(upstream(Endpoint::Chat, &format!("{{{base},\"tools\":[],\"n\":1,\"logit_bias\":{{}}}}")).is_ok());
    }

    #[test]
    fn full_bodies() {
        let chat: Map<String, Value> = serde_json::from_str(r#"{"model":"llama3.2","created_at":"2025-01-20T10:00:00.000000Z","message":{"role":"assistant","content":"Hello! How are you today?"},"done_reason":"length","done":true,"total_duration":5191566416,"load_duration":2154458,"prompt_eval_count":26,"prompt_eval_duration":383809000,"eval_count":298,"eval_duration":4799921000}"#).unwrap();
        let (body, usage) = translate_final(Endpoint::Chat, &head(Endpoint::Chat), &chat).unwrap();
        assert_eq!(body.keys().collect::<Vec<_>>(), ["id", "object", "created", "model", "choices", "usage"]);
        assert_eq!(body["object"], "chat.completion");
        let choice = json!({"index": 0, "message": {"role": "assistant", "content": "Hello! How are you today?"}, "logprobs": null, "finish_reason": "length"});
        assert_eq!(body["choices"], json!([choice]));
        assert_eq!((usage.total_tokens, Usage::from_json(&body["usage"])), (324, Some(usage)));
        let gen: Map<String, Value> = serde_json::from_str(r#"{"model":"llama3.2","created_at":"2025-01-20T10:00:00Z","response":"The sky is blue.","done":true,"done_reason":"stop","context":[1],"prompt_eval_count":5,"eval_count":6}"#).unwrap();
        let (body, usage) = translate_final(Endpoint::Completions, &head(Endpoint::Completions), &gen).unwrap();
        assert_eq!(body["object"], "text_completion");
        assert_eq!(
            body["choices"][0],
            json!({"text": "The sky is blue.", "index": 0, "logprobs": null, "finish_reason": "stop"})
        );
        assert_eq!(usage.total_tokens, 11);
        let emb: Map<String, Value> = serde_json::from_str(r#"{"model":"all-minilm","embeddings":[[0.5,-1.0],[0.25,2.0]],"total_duration":14143917,"load_duration":1019500,"prompt_eval_count":8}"#).unwrap();
        let (body, usage) = translate_embed("m", &emb, false).unwrap();
        let data = json!([{"object": "embedding", "index": 0, "embedding": [0.5, -1.0]}, {"object": "embedding", "index": 1, "embedding": [0.25, 2.0]}]);
        assert_eq!(
            Value::Object(body),
            json!({"object": "list", "data": data, "model": "m", "usage": {"prompt_tokens": 8, "total_tokens": 8}})
        );
        assert_eq!(usage.prompt_tokens, 8);
        let (body, _) = translate_embed("m", &emb, true).unwrap();
        assert_eq!(body["data"][0]["embedding"], "AAAAPwAAgL8=");
        assert_eq!(crate::backend::base64_f32([0.5f32].into_iter()), "AAAAPw==");
    }
}

//! OpenAI-compatible upstreams: vLLM, llama-server, OpenAI and the like.
//!
//! The client's body goes upstream with its unknown fields intact; only `model` (the
//! upstream's name), the completion-length field and `stream_options` are rewritten. A
//! streamed request streams upstream and its SSE is parsed event by event; usage is always
//! requested on streamed calls (the API layer drops the usage chunk again when the client
//! did not ask for it). A non-streamed request goes upstream non-streamed and its body
//! passes through, parsed only for usage.
//!
//! A deployment with `responses = "passthrough"` is sent a Responses request as the client
//! wrote it (`POST {base}/responses`, `model` rewritten) and its answer comes back as the
//! upstream wrote it: a `response` object, or the typed events of its stream, which end at
//! `response.completed`, `.incomplete` or `.failed` (there is no `[DONE]`). A stored
//! response it made is deleted upstream too ([`Backend::delete_response`]).

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde_json::{Map, Value};

use super::remote::{self, Remote};
use super::sse::SseParser;
use super::{Backend, BackendError, BackendReply, BackendRequest, Chunk};
use crate::config::{DeploymentConfig, RemoteConfig};
use crate::protocol::error::ApiError;
use crate::protocol::{Endpoint, Usage};

pub struct OpenAiBackend {
    remote: Remote,
    /// The deployment's name (a passed-through conversation is pinned to it).
    name: String,
    /// The endpoint URLs, parsed once (chat, completions, embeddings, responses).
    urls: Option<[http::Uri; 4]>,
}

impl OpenAiBackend {
    pub fn new(dep: &DeploymentConfig, cfg: RemoteConfig) -> Self {
        let paths = [Endpoint::Chat.path(), Endpoint::Completions.path(), Endpoint::Embeddings.path(), "responses"];
        OpenAiBackend {
            urls: paths
                .map(|p| remote::uri(&format!("{}/{p}", cfg.base_url)).ok())
                .into_iter()
                .collect::<Option<Vec<_>>>()
                .and_then(|v| v.try_into().ok()),
            name: dep.name.clone(),
            remote: Remote::new(dep, cfg),
        }
    }

    /// The Responses body to pass through, when this deployment passes it through and may
    /// serve it: the client's, with the upstream's model name.
    fn native_body(&self, br: &BackendRequest) -> Option<Vec<u8>> {
        let native =
            br.native.as_ref().filter(|n| self.remote.cfg().responses_passthrough && n.for_deployment(&self.name))?;
        let body = Rewritten { body: &native.body, model: &self.remote.cfg().model, set: Vec::new(), drop: &[] };
        Some(serde_json::to_vec(&body).unwrap_or_default())
    }

    /// The upstream body: the client's, with the few fields tollgate owns rewritten,
    /// written straight from the client's body (nothing of it is copied first).
    pub fn upstream_body(cfg: &RemoteConfig, br: &BackendRequest) -> Vec<u8> {
        let req = &br.req;
        let mut set: Vec<(&str, Value)> = Vec::new();
        let mut drop: &[&str] = &["stream_options"];
        if req.endpoint != Endpoint::Embeddings {
            drop = &["max_tokens", "max_completion_tokens", "stream_options"];
            if let Some(n) = req.sampling.max_tokens {
                set.push((&cfg.max_tokens_field, n.into()));
            }
        }
        if req.stream {
            let mut so = match req.body.get("stream_options") {
                Some(Value::Object(o)) => o.clone(),
                _ => Map::new(),
            };
            so.insert("include_usage".into(), Value::Bool(true));
            set.push(("stream_options", Value::Object(so)));
        }
        let body = Rewritten { body: &req.body, model: &cfg.model, set, drop };
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

/// A client's body as it goes upstream: in its own order, `model` replaced where it stands,
/// the `drop`ped fields left out, the `set` ones written at the end.
struct Rewritten<'a> {
    body: &'a Map<String, Value>,
    model: &'a str,
    set: Vec<(&'a str, Value)>,
    drop: &'a [&'a str],
}

impl serde::Serialize for Rewritten<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        let mut model = false;
        for (k, v) in self.body {
            if k == "model" {
                m.serialize_entry(k, self.model)?;
                model = true;
            } else if !self.drop.contains(&k.as_str()) && !self.set.iter().any(|(s, _)| s == k) {
                m.serialize_entry(k, v)?;
            }
        }
        if !model {
            m.serialize_entry("model", self.model)?;
        }
        for (k, v) in &self.set {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl Backend for OpenAiBackend {
    fn call(&self, br: BackendRequest) -> BoxFuture<'static, Result<BackendReply, BackendError>> {
        let native = self.native_body(&br);
        let idx = match (br.req.endpoint, &native) {
            (_, Some(_)) => 3,
            (Endpoint::Chat, None) => 0,
            (Endpoint::Completions, None) => 1,
            (Endpoint::Embeddings, None) => 2,
        };
        let cfg = self.remote.cfg();
        let url = match &self.urls {
            Some(u) => u[idx].clone(),
            None => {
                let e = BackendError::Connect(format!("the base URL '{}' is not a valid URL", cfg.base_url));
                return async move { Err(e) }.boxed();
            }
        };
        let stream = br.req.stream;
        let (body, framing) = match native {
            Some(body) => (body, Framing::Responses),
            None => (Self::upstream_body(cfg, &br), Framing::Chat),
        };
        let sent = self.remote.send(self.remote.post(url, &br, body));
        async move {
            let resp = sent.await?;
            if !stream {
                // The router bounds the whole attempt (`request_timeout`).
                let bytes = remote::read(resp).await?;
                let body: Map<String, Value> = serde_json::from_slice(&bytes)
                    .map_err(|e| BackendError::Protocol(format!("the body is not a JSON object: {e}")))?;
                let usage = body.get("usage").and_then(Usage::from_json);
                return Ok(BackendReply::Full { body, usage, raw: Some(bytes) });
            }
            Ok(BackendReply::Stream(sse_chunks(resp, framing)))
        }
        .boxed()
    }

    fn health(&self) -> BoxFuture<'static, Result<(), crate::backend::Unhealthy>> {
        self.remote.health("models")
    }

    fn delete_response(&self, id: &str) -> Option<BoxFuture<'static, Result<(), BackendError>>> {
        if !self.remote.cfg().responses_passthrough {
            return None;
        }
        let url = response_url(&self.urls.as_ref()?[3], id)?;
        let sent = self.remote.send(self.remote.delete(url));
        Some(
            async move {
                match sent.await {
                    Ok(_) => Ok(()),
                    // Already gone upstream (expired, or deleted there): deleted all the same.
                    Err(BackendError::Status { status, .. }) if status == http::StatusCode::NOT_FOUND => Ok(()),
                    Err(e) => Err(e),
                }
            }
            .boxed(),
        )
    }
}

/// `{base}/responses/{id}`, the id one percent-encoded path segment.
fn response_url(responses: &http::Uri, id: &str) -> Option<http::Uri> {
    let mut s = responses.to_string();
    s.push('/');
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    remote::uri(&s).ok()
}

/// Which protocol an upstream stream speaks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Chat or completion chunks, ended by `data: [DONE]`.
    Chat,
    /// The Responses API's typed events, ended by the response's last event.
    Responses,
}

/// The upstream's SSE body as a stream of chunks; `[DONE]` (or a Responses stream's last
/// event) ends it; an in-band error event becomes an error item.
fn sse_chunks(resp: remote::Response, framing: Framing) -> super::EventStream {
    struct St {
        body: futures::stream::BoxStream<'static, Result<bytes::Bytes, String>>,
        parser: SseParser,
        framing: Framing,
        done: bool,
    }
    let st = St { body: remote::body_stream(resp), parser: SseParser::default(), framing, done: false };
    futures::stream::unfold(st, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            if let Some(ev) = st.parser.next_event() {
                match parse_event(&ev.data, st.framing) {
                    Parsed::Done => return None,
                    Parsed::Skip => continue,
                    Parsed::Last(item) => {
                        st.done = true;
                        return Some((Ok(item), st));
                    }
                    Parsed::Item(item) => {
                        if item.is_err() {
                            st.done = true;
                        }
                        return Some((item, st));
                    }
                }
            }
            match st.body.next().await {
                Some(Ok(b)) => st.parser.push(&b),
                Some(Err(e)) => {
                    st.done = true;
                    return Some((Err(BackendError::Connect(format!("the stream broke: {e}"))), st));
                }
                None => {
                    st.done = true;
                    if let Some(ev) = st.parser.finish() {
                        match parse_event(&ev.data, st.framing) {
                            Parsed::Item(item) => return Some((item, st)),
                            Parsed::Last(item) => return Some((Ok(item), st)),
                            Parsed::Done => return None,
                            Parsed::Skip => {}
                        }
                    }
                    // The body ended before its last event: the upstream cut the stream.
                    let last = if st.framing == Framing::Chat { "[DONE]" } else { "the response's last event" };
                    return Some((Err(BackendError::Connect(format!("the stream ended before {last}"))), st));
                }
            }
        }
    })
    .boxed()
}

enum Parsed {
    Done,
    Skip,
    Item(Result<Chunk, BackendError>),
    /// The last event of a Responses stream.
    Last(Chunk),
}

fn parse_event(data: &str, framing: Framing) -> Parsed {
    let data = data.trim();
    if data == "[DONE]" {
        return Parsed::Done;
    }
    if data.is_empty() {
        return Parsed::Skip;
    }
    match serde_json::from_str::<Map<String, Value>>(data) {
        Ok(obj) if framing == Framing::Responses => match obj.get("type").and_then(Value::as_str) {
            Some("response.completed" | "response.incomplete" | "response.failed") => Parsed::Last(obj),
            Some("error") => {
                // `{"type": "error", "code", "message", "param"}`, as an OpenAI error body.
                let mut e = obj.clone();
                e.remove("type");
                e.remove("sequence_number");
                let bytes = serde_json::to_vec(&serde_json::json!({"error": e})).unwrap_or_default();
                Parsed::Item(Err(BackendError::InBand(ApiError::from_upstream(http::StatusCode::BAD_GATEWAY, &bytes))))
            }
            Some(_) => Parsed::Item(Ok(obj)),
            None => Parsed::Item(Err(BackendError::Protocol("a Responses stream event has no type".into()))),
        },
        Ok(obj) => {
            if let Some(err) = obj.get("error") {
                let status = err
                    .get("code")
                    .and_then(Value::as_u64)
                    .and_then(|c| http::StatusCode::from_u16(c as u16).ok())
                    .unwrap_or(http::StatusCode::BAD_GATEWAY);
                let bytes = serde_json::to_vec(&obj).unwrap_or_default();
                return Parsed::Item(Err(BackendError::InBand(ApiError::from_upstream(status, &bytes))));
            }
            Parsed::Item(Ok(obj))
        }
        Err(e) => Parsed::Item(Err(BackendError::Protocol(format!("an SSE event is not JSON: {e}")))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_responses_stream_ends_at_its_last_event_and_its_error_event_is_an_error() {
        let r = Framing::Responses;
        assert!(matches!(parse_event(r#"{"type":"response.created","response":{}}"#, r), Parsed::Item(Ok(_))));
        for last in ["response.completed", "response.incomplete", "response.failed"] {
            let ev = format!(r#"{{"type":"{last}","response":{{}}}}"#);
            assert!(matches!(parse_event(&ev, r), Parsed::Last(_)), "{last}");
        }
        let err =
            r#"{"type":"error","code":"rate_limit_exceeded","message":"Slow down.","param":null,"sequence_number":3}"#;
        match parse_event(err, r) {
            Parsed::Item(Err(BackendError::InBand(e))) => {
                assert_eq!((e.message.as_str(), e.code.as_deref()), ("Slow down.", Some("rate_limit_exceeded")))
            }
            _ => panic!("an error event is an error"),
        }
        assert!(matches!(parse_event(r#"{"id":"x"}"#, r), Parsed::Item(Err(BackendError::Protocol(_)))));
        // A chat stream's chunk has no type, and its in-band error is `{"error": ...}`.
        assert!(matches!(parse_event(r#"{"id":"x","choices":[]}"#, Framing::Chat), Parsed::Item(Ok(_))));
        assert!(matches!(parse_event("[DONE]", Framing::Chat), Parsed::Done));
    }

    #[test]
    fn a_response_id_is_one_path_segment() {
        let base = remote::uri("http://h/v1/responses").unwrap();
        let path = |id: &str| response_url(&base, id).unwrap().path().trim_start_matches("/v1/responses/").to_owned();
        assert_eq!(path("resp_abc-1.2~"), "resp_abc-1.2~");
        assert_eq!(path("a/../b?c"), "a%2F..%2Fb%3Fc");
    }
}

//! OpenAI-compatible upstreams: vLLM, llama-server, OpenAI and the like.
//!
//! The client's body goes upstream with its unknown fields intact; only `model` (the
//! upstream's name), the completion-length field and `stream_options` are rewritten. A
//! streamed request streams upstream and its SSE is parsed event by event; usage is always
//! requested on streamed calls (the API layer drops the usage chunk again when the client
//! did not ask for it). A non-streamed request goes upstream non-streamed and its body
//! passes through, parsed only for usage.

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde_json::{Map, Value};

use super::remote::{self, classify_reqwest, Remote};
use super::sse::SseParser;
use super::{Backend, BackendError, BackendReply, BackendRequest, Chunk};
use crate::config::{DeploymentConfig, RemoteConfig};
use crate::protocol::error::ApiError;
use crate::protocol::{Endpoint, Usage};

pub struct OpenAiBackend {
    remote: Remote,
    /// The endpoint URLs, parsed once (chat, completions, embeddings).
    urls: Option<[reqwest::Url; 3]>,
}

impl OpenAiBackend {
    pub fn new(dep: &DeploymentConfig, cfg: RemoteConfig) -> Self {
        OpenAiBackend {
            urls: [Endpoint::Chat, Endpoint::Completions, Endpoint::Embeddings]
                .map(|e| reqwest::Url::parse(&format!("{}/{}", cfg.base_url, e.path())).ok())
                .into_iter()
                .collect::<Option<Vec<_>>>()
                .and_then(|v| v.try_into().ok()),
            remote: Remote::new(dep, cfg),
        }
    }

    /// The upstream body: the client's, with the few fields tollgate owns rewritten.
    pub fn upstream_body(cfg: &RemoteConfig, br: &BackendRequest) -> Map<String, Value> {
        let req = &br.req;
        let mut body = req.body.clone();
        body.insert("model".into(), Value::String(cfg.model.clone()));
        if req.endpoint != Endpoint::Embeddings {
            body.remove("max_tokens");
            body.remove("max_completion_tokens");
            if let Some(n) = req.sampling.max_tokens {
                body.insert(cfg.max_tokens_field.clone(), n.into());
            }
        }
        if req.stream {
            let mut so = match body.remove("stream_options") {
                Some(Value::Object(o)) => o,
                _ => Map::new(),
            };
            so.insert("include_usage".into(), Value::Bool(true));
            body.insert("stream_options".into(), Value::Object(so));
        } else {
            body.remove("stream_options");
        }
        body
    }
}

impl Backend for OpenAiBackend {
    fn call(&self, br: BackendRequest) -> BoxFuture<'static, Result<BackendReply, BackendError>> {
        let idx = match br.req.endpoint {
            Endpoint::Chat => 0,
            Endpoint::Completions => 1,
            Endpoint::Embeddings => 2,
        };
        let cfg = self.remote.cfg();
        let url = match &self.urls {
            Some(u) => u[idx].clone(),
            None => {
                let e = BackendError::Connect(format!("the base URL '{}' is not a valid URL", cfg.base_url));
                return async move { Err(e) }.boxed();
            }
        };
        let rb = self.remote.post(url, &br, &Self::upstream_body(cfg, &br));
        let stream = br.req.stream;
        async move {
            let resp = remote::send(rb).await?;
            if !stream {
                // The router bounds the whole attempt (`request_timeout`).
                let bytes = resp.bytes().await.map_err(classify_reqwest)?;
                let body: Map<String, Value> = serde_json::from_slice(&bytes)
                    .map_err(|e| BackendError::Protocol(format!("the body is not a JSON object: {e}")))?;
                let usage = body.get("usage").and_then(Usage::from_json);
                return Ok(BackendReply::Full { body, usage });
            }
            Ok(BackendReply::Stream(sse_chunks(resp)))
        }
        .boxed()
    }

    fn health(&self) -> BoxFuture<'static, Result<(), crate::backend::Unhealthy>> {
        self.remote.health("models")
    }
}

/// The upstream's SSE body as a stream of chunks; `[DONE]` ends it; an in-band error
/// event becomes an error item.
fn sse_chunks(resp: reqwest::Response) -> super::EventStream {
    struct St {
        body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
        parser: SseParser,
        done: bool,
    }
    let st = St { body: resp.bytes_stream().boxed(), parser: SseParser::default(), done: false };
    futures::stream::unfold(st, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            if let Some(ev) = st.parser.next_event() {
                match parse_event(&ev.data) {
                    Parsed::Done => return None,
                    Parsed::Skip => continue,
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
                        match parse_event(&ev.data) {
                            Parsed::Item(item) => return Some((item, st)),
                            Parsed::Done => return None,
                            Parsed::Skip => {}
                        }
                    }
                    // The body ended without `[DONE]`: the upstream cut the stream.
                    return Some((Err(BackendError::Connect("the stream ended before [DONE]".into())), st));
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
}

fn parse_event(data: &str) -> Parsed {
    let data = data.trim();
    if data == "[DONE]" {
        return Parsed::Done;
    }
    if data.is_empty() {
        return Parsed::Skip;
    }
    match serde_json::from_str::<Map<String, Value>>(data) {
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

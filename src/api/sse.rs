//! The SSE body sent to clients: `data: {chunk}\n\n` per event, `data: [DONE]\n\n` at the end,
//! `: keep-alive` comments while the backend is silent, an OpenAI-shaped in-band error event
//! when the stream fails after it started (or stalls past the deployment's stall timeout,
//! or the gateway's shutdown deadline passes). A Responses or Messages stream is the same
//! chat stream written as that API's typed events ([`Framing`]); a Responses stream from an
//! upstream that speaks that API passes through event by event.
//!
//! The body owns the deployment's concurrency permit and the request's accounting record:
//! both are released when the body ends or is dropped (the client went away), and dropping
//! it drops the backend stream, which cancels the upstream request at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::accounting::{Accounting, RequestRecord, Tap};
use crate::backend::{Chunk, EventStream};
use crate::cache::{Cached, Leader};
use crate::protocol::error::ApiError;
use crate::protocol::Endpoint;
use crate::router::Deployment;

pub struct SseSetup {
    pub alias: String,
    pub framing: Framing,
    pub keepalive: Duration,
    pub stall: Duration,
    pub hard_stop: CancellationToken,
    pub accounting: Arc<Accounting>,
    pub deployment: Arc<Deployment>,
    pub permit: OwnedSemaphorePermit,
    pub record: RequestRecord,
    pub tap: Tap,
    /// Store the finished stream in the response cache (the leader guard releases the
    /// requests waiting for it when the stream ends).
    pub store: Option<(Leader, Endpoint)>,
}

/// Finishes the record exactly once: at the end of the stream, or when dropped early.
struct Finisher {
    accounting: Arc<Accounting>,
    record: Option<(RequestRecord, Tap)>,
    _permit: OwnedSemaphorePermit,
}

impl Finisher {
    fn finish(&mut self, client_closed: bool) {
        if let Some((mut rec, tap)) = self.record.take() {
            rec.client_closed = client_closed;
            tap.finish_into(&mut rec);
            self.accounting.finish(rec);
        }
    }
    fn tap(&mut self) -> Option<&mut Tap> {
        self.record.as_mut().map(|(_, t)| t)
    }
    fn fail(&mut self, e: &ApiError) {
        if let Some((rec, _)) = self.record.as_mut() {
            rec.status = e.status.as_u16();
            rec.error = Some(e.kind());
        }
    }
}

impl Drop for Finisher {
    fn drop(&mut self) {
        self.finish(true);
    }
}

struct State {
    store: Option<(Leader, Endpoint)>,
    first: Option<Box<Chunk>>,
    rest: EventStream,
    alias: Value,
    framing: Framing,
    keepalive: Duration,
    stall: Duration,
    hard_stop: CancellationToken,
    deployment: Arc<Deployment>,
    fin: Finisher,
    last_event: Instant,
    done: bool,
}

pub fn body(first: Box<Chunk>, rest: EventStream, s: SseSetup) -> Body {
    let st = State {
        store: s.store,
        first: Some(first),
        rest,
        alias: Value::String(s.alias),
        framing: s.framing,
        keepalive: s.keepalive,
        stall: s.stall,
        hard_stop: s.hard_stop,
        deployment: s.deployment,
        fin: Finisher { accounting: s.accounting, record: Some((s.record, s.tap)), _permit: s.permit },
        last_event: Instant::now(),
        done: false,
    };
    let stream = futures::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        if let Some(first) = st.first.take() {
            let mut out = Vec::with_capacity(512);
            st.framing.start(&mut out);
            st.encode(*first, &mut out);
            if !out.is_empty() {
                return Some((Ok::<Bytes, std::convert::Infallible>(Bytes::from(out)), st));
            }
        }
        loop {
            let stall_at = st.last_event + st.stall;
            let wake = (Instant::now() + st.keepalive).min(stall_at);
            tokio::select! {
                biased;
                _ = st.hard_stop.cancelled() => {
                    let e = ApiError::unavailable("The gateway is shutting down; the stream was closed.").with_code("shutting_down");
                    return Some((Ok(st.error_event(e)), st));
                }
                item = st.rest.next() => {
                    st.last_event = Instant::now();
                    match item {
                        Some(Ok(chunk)) => {
                            let mut out = Vec::with_capacity(256);
                            st.encode(chunk, &mut out);
                            if !out.is_empty() {
                                return Some((Ok(Bytes::from(out)), st));
                            }
                        }
                        Some(Err(e)) => {
                            if e.counts_against_breaker() {
                                st.deployment.breaker.failure();
                            }
                            let api = e.to_api(st.deployment.name());
                            return Some((Ok(st.error_event(api)), st));
                        }
                        None => {
                            st.done = true;
                            st.store_in_cache().await;
                            st.fin.finish(false);
                            let mut out = Vec::with_capacity(256);
                            st.framing.done(&mut out);
                            return Some((Ok(Bytes::from(out)), st));
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    if Instant::now() >= stall_at {
                        st.deployment.breaker.failure();
                        let e = ApiError::upstream_timeout(format!(
                            "The upstream '{}' stalled: no token for {} ms.",
                            st.deployment.name(),
                            st.stall.as_millis()
                        ));
                        return Some((Ok(st.error_event(e)), st));
                    }
                    return Some((Ok(Bytes::from_static(st.framing.keepalive())), st));
                }
            }
        }
    });
    Body::from_stream(stream)
}

impl State {
    async fn store_in_cache(&mut self) {
        let Some((leader, endpoint)) = self.store.take() else { return };
        let Some((text, finish, usage)) = self.fin.record.as_ref().and_then(|(_, tap)| tap.snapshot()) else { return };
        let Some(deployment) = self.fin.record.as_ref().and_then(|(r, _)| r.deployment.clone()) else { return };
        let alias = self.alias.as_str().unwrap_or_default().to_owned();
        let body = crate::cache::body_from_stream(endpoint, &alias, text, finish, usage);
        leader.cache().insert(leader.key(), Cached { body, usage, deployment }).await;
    }

    /// One chunk, priced and named by the alias, written by the framing.
    fn encode(&mut self, mut chunk: Chunk, out: &mut Vec<u8>) {
        if let Some(tap) = self.fin.tap() {
            tap.observe(&chunk);
        }
        // The final usage chunk carries the cost, computed as the record's will be.
        if let Some(u) = chunk.get_mut("usage") {
            if let Some((rec, _)) = self.fin.record.as_ref() {
                if let Some(cost) = crate::protocol::Usage::from_json(u).and_then(|usage| rec.charge(usage.into())) {
                    crate::pricing::annotate_usage(u, cost);
                }
            }
        }
        if let Some(m) = chunk.get_mut("model") {
            *m = self.alias.clone();
        }
        self.framing.chunk(chunk, out);
    }

    fn error_event(&mut self, e: ApiError) -> Bytes {
        self.done = true;
        self.fin.fail(&e);
        self.fin.finish(false);
        let mut out = Vec::with_capacity(256);
        self.framing.error(&e, &mut out);
        Bytes::from(out)
    }
}

/// Called with the final response object when a Responses stream completes (to store it).
pub type OnResponse = Box<dyn FnOnce(&Value) + Send>;

/// How the chat chunks of a stream reach the client: as they are (`data: {chunk}`, then
/// `data: [DONE]`), or as the typed events of the Responses or Messages API
/// (`event: NAME` and `data: {event}`).
pub enum Framing {
    Chat {
        /// The client asked for the usage chunk (`stream_options.include_usage`).
        include_usage: bool,
    },
    Responses {
        stream: Box<crate::protocol::responses::Stream>,
        on_complete: Option<OnResponse>,
    },
    Messages(Box<crate::protocol::messages::Stream>),
    /// A Responses stream passed through from an upstream that speaks the API: each event as
    /// it came, named by its `type`, the response's `model` written as the alias.
    Native {
        alias: Value,
        /// The number the next event the gateway writes takes (an error event at the end).
        sequence: u64,
        on_complete: Option<OnResponse>,
    },
}

/// `event: NAME` and `data: JSON`.
pub fn write_event(out: &mut Vec<u8>, name: &str, data: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    let _ = serde_json::to_writer(&mut *out, data);
    out.extend_from_slice(b"\n\n");
}

impl Framing {
    /// What is sent before the first chunk.
    pub fn start(&mut self, out: &mut Vec<u8>) {
        match self {
            Framing::Chat { .. } => {}
            Framing::Responses { stream, .. } => {
                for e in stream.start() {
                    write_event(out, e.name, &e.data);
                }
            }
            Framing::Messages(m) => {
                for (name, data) in m.start() {
                    write_event(out, name, &data);
                }
            }
            Framing::Native { .. } => {}
        }
    }

    /// One chunk (a chat usage chunk the client did not ask for is not sent).
    pub fn chunk(&mut self, mut chunk: Chunk, out: &mut Vec<u8>) {
        match self {
            Framing::Chat { include_usage } => {
                if !*include_usage && chunk.contains_key("usage") {
                    let usage_only = chunk.get("choices").and_then(Value::as_array).is_some_and(|c| c.is_empty());
                    if usage_only {
                        return;
                    }
                    chunk.remove("usage");
                }
                out.extend_from_slice(b"data: ");
                if serde_json::to_writer(&mut *out, &chunk).is_ok() {
                    out.extend_from_slice(b"\n\n");
                }
            }
            Framing::Responses { stream, .. } => {
                for e in stream.push(&chunk) {
                    write_event(out, e.name, &e.data);
                }
            }
            Framing::Messages(m) => {
                for (name, data) in m.push(&chunk) {
                    write_event(out, name, &data);
                }
            }
            Framing::Native { alias, sequence, on_complete } => {
                if let Some(n) = chunk.get("sequence_number").and_then(Value::as_u64) {
                    *sequence = n + 1;
                }
                let kind = chunk.get("type").and_then(Value::as_str).unwrap_or("message").to_owned();
                if let Some(Value::Object(r)) = chunk.get_mut("response") {
                    if r.contains_key("model") {
                        r.insert("model".into(), alias.clone());
                    }
                }
                let last = matches!(kind.as_str(), "response.completed" | "response.incomplete" | "response.failed");
                if let (true, Some(r)) = (last, chunk.get("response")) {
                    if let Some(f) = on_complete.take() {
                        f(r);
                    }
                }
                write_event(out, &kind, &Value::Object(chunk));
            }
        }
    }

    /// The end of a stream that finished.
    pub fn done(&mut self, out: &mut Vec<u8>) {
        match self {
            Framing::Chat { .. } => out.extend_from_slice(b"data: [DONE]\n\n"),
            Framing::Responses { stream, on_complete } => {
                for e in stream.finish() {
                    write_event(out, e.name, &e.data);
                }
                if let (Some(f), Some(r)) = (on_complete.take(), stream.response()) {
                    f(r);
                }
            }
            Framing::Messages(m) => {
                for (name, data) in m.finish() {
                    write_event(out, name, &data);
                }
            }
            // The upstream's last event was the end.
            Framing::Native { .. } => {}
        }
    }

    /// The in-band error event of a stream that failed after it started.
    pub fn error(&mut self, e: &ApiError, out: &mut Vec<u8>) {
        match self {
            Framing::Chat { .. } => {
                out.extend_from_slice(b"data: ");
                let _ = serde_json::to_writer(&mut *out, &e.to_json());
                out.extend_from_slice(b"\n\n");
            }
            Framing::Responses { stream, .. } => {
                for ev in stream.fail(e) {
                    write_event(out, ev.name, &ev.data);
                }
            }
            Framing::Messages(_) => {
                let (name, data) = crate::protocol::messages::error_event(e);
                write_event(out, name, &data);
            }
            Framing::Native { sequence, .. } => {
                // The Responses API's own error event: `code`, `message`, `param`.
                let mut data = match e.to_json().get("error") {
                    Some(Value::Object(o)) => o.clone(),
                    _ => serde_json::Map::new(),
                };
                data.remove("type");
                data.insert("type".into(), "error".into());
                data.insert("sequence_number".into(), (*sequence).into());
                write_event(out, "error", &Value::Object(data));
            }
        }
    }

    /// What is sent while the backend is silent: a comment, or Anthropic's `ping` event.
    pub fn keepalive(&self) -> &'static [u8] {
        match self {
            Framing::Messages(_) => b"event: ping\ndata: {\"type\": \"ping\"}\n\n",
            _ => b": keep-alive\n\n",
        }
    }
}

//! Renders a [`gateway::Answer`] as an HTTP response: a JSON body, a replayed SSE stream (a
//! cache hit) or a live SSE stream, each with the same response headers written from its
//! [`Meta`] in one place.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::sse::{self, Framing};
use super::AppState;
use crate::gateway::{self, Answer, CacheStatus, Meta};

/// The deployment that answered.
pub const DEPLOYMENT_HEADER: &str = "x-tollgate-deployment";
/// `hit` or `miss`, on a request the response cache could answer.
pub const CACHE_HEADER: &str = "x-tollgate-cache";
/// The small-model router's decision: which model, the score, the reasons.
pub const ROUTE_HEADER: &str = "x-tollgate-route";
/// The registry version that answered, `NAME@X.Y.Z`.
pub const VERSION_HEADER: &str = "x-tollgate-model-version";
pub const COST_HEADER: &str = "x-tollgate-cost-usd";
pub const SAVED_HEADER: &str = "x-tollgate-saved-usd";

/// An answer in the chat API's own shape. A whole body the upstream wrote goes out as its
/// bytes, `model` rewritten in place (not parsed and written again).
pub fn answer(st: &AppState, answer: Answer) -> Response {
    match answer {
        Answer::Full { body, meta, raw } => full_answer(body, meta, raw, Value::Object),
        other => answer_as(st, other, Value::Object, |include_usage| Framing::Chat { include_usage }),
    }
}

/// An answer in another dialect: `full` writes a whole chat body in it, `framing` is how
/// its streams (live or replayed) are written. A chat body's timing headers are kept.
pub fn answer_as(
    st: &AppState,
    answer: Answer,
    full: impl FnOnce(Map<String, Value>) -> Value,
    framing: impl FnOnce(bool) -> Framing,
) -> Response {
    match answer {
        Answer::Full { body, meta, .. } => full_answer(body, meta, None, full),
        Answer::Replay { chunks, meta } => {
            // The chunks were made for the client's own `include_usage`.
            let mut framing = framing(true);
            let mut out = Vec::new();
            framing.start(&mut out);
            for c in chunks {
                framing.chunk(c, &mut out);
            }
            framing.done(&mut out);
            event_stream(Body::from(out), meta)
        }
        Answer::Stream { stream, meta } => {
            let gateway::Streaming { first, rest, alias, include_usage, stall, deployment, permit, record, tap, store } =
                *stream;
            let setup = sse::SseSetup {
                alias,
                framing: framing(include_usage),
                keepalive: st.server.keepalive,
                stall,
                hard_stop: st.hard_stop.clone(),
                accounting: st.accounting.clone(),
                deployment,
                permit,
                record,
                tap,
                store,
            };
            event_stream(sse::body(first, rest, setup), meta)
        }
    }
}

/// A whole body: the upstream's bytes `raw` with `model` rewritten in place, when they may
/// go as they are, else the body written in the dialect `full` makes of it.
fn full_answer(
    body: Map<String, Value>,
    meta: Meta,
    raw: Option<bytes::Bytes>,
    full: impl FnOnce(Map<String, Value>) -> Value,
) -> Response {
    let mut h = HeaderMap::new();
    // A hit's timings are those of the request that made it, not this one's.
    if meta.cache != Some(CacheStatus::Hit) {
        timing_headers(&body, &mut h);
    }
    let model = body.get("model").and_then(Value::as_str).unwrap_or_default();
    let mut resp = match raw.and_then(|r| crate::protocol::raw::set_model(&r, model)) {
        Some(bytes) => (StatusCode::OK, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], bytes)
            .into_response(),
        None => json(StatusCode::OK, &full(body)),
    };
    resp.headers_mut().extend(h);
    write_meta(meta, resp.headers_mut());
    resp
}

/// A JSON body with this status.
pub fn json(status: StatusCode, v: &Value) -> Response {
    let bytes = serde_json::to_vec(v).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], bytes).into_response()
}

fn event_stream(body: Body, meta: Meta) -> Response {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    write_meta(meta, h);
    resp
}

/// The headers every answer carries, from its [`Meta`].
fn write_meta(meta: Meta, h: &mut HeaderMap) {
    h.insert(DEPLOYMENT_HEADER, HeaderValue::from_str(&meta.deployment).unwrap_or(HeaderValue::from_static("-")));
    if let Some(v) = meta.version.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
        h.insert(VERSION_HEADER, v);
    }
    match meta.cache {
        Some(CacheStatus::Hit) => h.insert(CACHE_HEADER, HeaderValue::from_static("hit")),
        Some(CacheStatus::Miss) => h.insert(CACHE_HEADER, HeaderValue::from_static("miss")),
        None => None,
    };
    if let Some(c) = meta.cost {
        for (name, v) in [(COST_HEADER, c.usd), (SAVED_HEADER, c.saved_usd)] {
            if let Ok(v) = HeaderValue::from_str(&v.to_string()) {
                h.insert(name, v);
            }
        }
    }
    h.extend(meta.limits);
    if let Some(r) = meta.route.as_deref().and_then(|r| HeaderValue::from_str(r).ok()) {
        h.insert(ROUTE_HEADER, r);
    }
}

/// llama-server-style `timings` (the engine's, or an upstream llama-server's) as headers.
fn timing_headers(body: &Map<String, Value>, h: &mut HeaderMap) {
    let Some(t) = body.get("timings").and_then(Value::as_object) else {
        return;
    };
    for (field, name) in [
        ("prompt_ms", "x-tollgate-prompt-ms"),
        ("prompt_per_second", "x-tollgate-prompt-tokens-per-second"),
        ("predicted_ms", "x-tollgate-generation-ms"),
        ("predicted_per_second", "x-tollgate-generation-tokens-per-second"),
    ] {
        if let Some(v) = t.get(field).and_then(Value::as_f64) {
            if let Ok(v) = HeaderValue::from_str(&format!("{v:.3}")) {
                h.insert(name, v);
            }
        }
    }
}

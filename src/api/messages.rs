//! Anthropic's Messages API: `POST /v1/messages` (served as a chat completion through
//! [`gateway::serve`], so keys, limits, the cache, the router, releases and the ledger apply
//! unchanged) and `POST /v1/messages/count_tokens`. Keys come as `x-api-key` (or a bearer
//! token); `anthropic-version` and `anthropic-beta` are accepted. Every error, the gateway's
//! own included, is in Anthropic's shape with the status its SDKs map (529 when every
//! deployment is busy); each answer carries `request-id`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::json;

use super::inference::{context, origin, read_body, request_id};
use super::sse::Framing;
use super::{auth, render, AppState};
use crate::gateway::{self, Answer, Refused};
use crate::protocol::error::ApiError;
use crate::protocol::messages::{self, error_body, Stream};
use crate::protocol::translate::{new_id, Reply};
use crate::protocol::{Dialect, Endpoint, Usage};

fn with_ids(mut resp: Response, rid: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(rid) {
        // `x-request-id` is written by the connection layer; Anthropic's SDKs read this one.
        resp.headers_mut().insert("request-id", v);
    }
    resp
}

/// An error in Anthropic's shape, with the headers the error carries (`retry-after`,
/// rate-limit state).
pub fn error(mut e: ApiError) -> Response {
    // The chat path names OpenAI's fields: `tools[3].function.parameters` is `tools.3.input_schema` here.
    if e.message.contains(".function.parameters") {
        e.message = e
            .message
            .replace(".function.parameters", ".input_schema")
            .replace("tools[", "tools.")
            .replace("].input_schema", ".input_schema");
    }
    let (status, body) = error_body(&e);
    let mut resp = render::json(status, &body);
    let h = resp.headers_mut();
    if let Some(s) = e.retry_after.and_then(|s| HeaderValue::from_str(&s.to_string()).ok()) {
        h.insert("retry-after", s);
    }
    for (k, v) in e.header_list() {
        h.insert(k.clone(), v.clone());
    }
    resp
}

pub async fn create(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let start = Instant::now();
    let rid = request_id(&headers);
    let resp = match serve(&st, &headers, body, &rid, start).await {
        Ok(r) => r,
        Err(refused) => error(refused.finish_as(&st.accounting, start, anthropic_status)),
    };
    with_ids(resp, &rid)
}

/// The status an Anthropic client gets for an error (529 for "every deployment is busy"), so
/// that the record says what was sent.
fn anthropic_status(e: &ApiError) -> StatusCode {
    error_body(e).0
}

async fn serve(st: &AppState, headers: &HeaderMap, body: Body, rid: &str, start: Instant) -> Result<Response, Refused> {
    let live = st.live();
    let caller = auth::authenticate(&live.auth, headers).map_err(Refused::bare)?;
    let bytes = read_body(body, st.server.max_body_bytes).await.map_err(Refused::bare)?;
    let ctx = context(st, &live);
    let (bytes, guarded) = gateway::guard_body(&ctx, &caller, bytes);
    let req = messages::parse(&bytes, false).map_err(Refused::bare)?;
    let chat = serde_json::to_vec(&req.chat).unwrap_or_default();
    // `message_start` carries the prompt's tokens: the engine counts them (from the same
    // template and tokenizer) before the stream begins.
    let counted = if req.stream { gateway::count_tokens(&ctx, &caller, &chat).ok().flatten() } else { None };
    let mut origin = origin(headers, caller, Dialect::Messages, None);
    origin.guarded = guarded;
    let answer = gateway::serve(&ctx, Endpoint::Chat, origin, &chat, rid, start).await?;
    let id = new_id("msg_");
    let (stream_id, model) = (id.clone(), req.model.clone());
    Ok(render::answer_as(
        st,
        answer,
        |body| messages::message(&id, &req.model, &Reply::of_body(&body)),
        move |_| Framing::Messages(Box::new(Stream::new(stream_id, model, counted))),
    ))
}

/// `POST /v1/messages/count_tokens`: the engine counts with its own tokenizer and template;
/// a deployment that cannot count is asked for one token, and its usage says how many the
/// prompt was (that request is recorded like any other).
pub async fn count_tokens(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let start = Instant::now();
    let rid = request_id(&headers);
    let resp = match count(&st, &headers, body, &rid, start).await {
        Ok(n) => render::json(StatusCode::OK, &json!({"input_tokens": n})),
        Err(refused) => error(refused.finish_as(&st.accounting, start, anthropic_status)),
    };
    with_ids(resp, &rid)
}

async fn count(st: &AppState, headers: &HeaderMap, body: Body, rid: &str, start: Instant) -> Result<u64, Refused> {
    let live = st.live();
    let caller = auth::authenticate(&live.auth, headers).map_err(Refused::bare)?;
    let bytes = read_body(body, st.server.max_body_bytes).await.map_err(Refused::bare)?;
    let mut req = messages::parse(&bytes, true).map_err(Refused::bare)?;
    let chat = serde_json::to_vec(&req.chat).unwrap_or_default();
    let ctx = context(st, &live);
    if let Some(n) = gateway::count_tokens(&ctx, &caller, &chat).map_err(Refused::bare)? {
        return Ok(n);
    }
    req.chat.insert("max_tokens".into(), 1.into());
    let chat = serde_json::to_vec(&req.chat).unwrap_or_default();
    let origin = origin(headers, caller, Dialect::Messages, None);
    match gateway::serve(&ctx, Endpoint::Chat, origin, &chat, rid, start).await? {
        Answer::Full { body, .. } => {
            let usage = body.get("usage").and_then(Usage::from_json);
            usage.map(|u| u.prompt_tokens).ok_or_else(|| {
                Refused::bare(ApiError::upstream("The upstream did not report how many tokens the prompt has."))
            })
        }
        _ => Err(Refused::bare(ApiError::internal("A token count was answered as a stream."))),
    }
}

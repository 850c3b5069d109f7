//! The inference endpoints: `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`.
//! Thin: authenticate and read the body, call [`gateway::serve`], render its answer
//! ([`super::render`]) or its refusal.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde_json::Value;

use super::{auth, render, AppState};
use crate::cache::ClientPolicy;
use crate::gateway::{self, Caller, Context, Origin, Refused};
use crate::protocol::error::ApiError;
use crate::protocol::{Dialect, Endpoint};

pub const REQUEST_ID_HEADER: &str = "x-request-id";
pub const SESSION_HEADER: &str = "x-session-id";

/// The client's `x-request-id` when it is sane, else a fresh one.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("req_{}", uuid::Uuid::new_v4().simple()))
}

pub async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::payload_too_large(limit)),
        Err(e) => Err(ApiError::invalid_request(format!("Could not read the request body: {e}"), None)),
    }
}

pub async fn handle(st: Arc<AppState>, endpoint: Endpoint, headers: HeaderMap, body: Body) -> Response {
    let start = Instant::now();
    let rid = request_id(&headers);
    match serve(&st, endpoint, &headers, body, &rid, start).await {
        Ok(r) => r,
        Err(refused) => refused.finish(&st.accounting, start).into_response(),
    }
}

async fn serve(
    st: &AppState,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Body,
    rid: &str,
    start: Instant,
) -> Result<Response, Refused> {
    let live = st.live();
    let caller = auth::authenticate(&live.auth, headers).map_err(Refused::bare)?;
    let bytes = read_body(body, st.server.max_body_bytes).await.map_err(Refused::bare)?;
    let origin = origin(headers, caller, Dialect::OpenAi, None);
    let ctx = context(st, &live);
    let answer = gateway::serve(&ctx, endpoint, origin, &bytes, rid, start).await?;
    Ok(render::answer(st, answer))
}

/// Who sent an HTTP request and how; `session` when the client named none
/// (`x-session-id` wins).
pub(super) fn origin<'a>(
    headers: &'a HeaderMap,
    caller: Caller,
    dialect: Dialect,
    session: Option<&'a str>,
) -> Origin<'a> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    Origin {
        caller,
        session: text(SESSION_HEADER).or(session),
        traceparent: text("traceparent"),
        cache: ClientPolicy::from_headers(headers),
        batch_id: None,
        dialect,
        native: None,
        guarded: None,
    }
}

pub(super) fn context<'a>(st: &'a AppState, live: &'a gateway::Live) -> Context<'a> {
    Context { live, accounting: &st.accounting, cache: st.cache.as_ref(), log_content: st.server.log_content }
}

/// One line of a batch, through the same path as an interactive request (named prompts,
/// routing, fallbacks, the response cache, accounting), at batch priority and without the
/// key's rate limits: the answer's status and JSON body.
pub async fn run_line(
    st: Arc<AppState>,
    endpoint: Endpoint,
    key: Option<String>,
    batch_id: String,
    rid: String,
    body: bytes::Bytes,
) -> (u16, Value) {
    let start = Instant::now();
    let live = st.live();
    let caller = match key {
        None => Caller::Anonymous,
        Some(k) => match live.auth.keys.iter().find(|c| c.name == k) {
            Some(c) => Caller::Key(c.clone()),
            None => {
                let e = ApiError::unauthorized(format!("The key '{k}' that created this batch no longer exists."));
                return (e.status.as_u16(), e.to_json());
            }
        },
    };
    let origin = Origin {
        caller,
        session: None,
        traceparent: None,
        cache: ClientPolicy { lookup: true, store: true },
        batch_id: Some(batch_id),
        dialect: Dialect::OpenAi,
        native: None,
        guarded: None,
    };
    let resp = match gateway::serve(&context(&st, &live), endpoint, origin, &body, &rid, start).await {
        Ok(answer) => render::answer(&st, answer),
        Err(refused) => refused.finish(&st.accounting, start).into_response(),
    };
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

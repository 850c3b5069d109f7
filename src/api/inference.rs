//! The inference endpoints: `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`.
//! Thin: authenticate, read and validate the body, route, render (JSON or SSE).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde_json::Value;

use super::error::ApiError;
use super::{auth, sse, AppState};
use crate::accounting::{RequestRecord, Tap};
use crate::backend::{BackendRequest, Priority};
use crate::cache::{Cached, ClientPolicy, Leader, Lookup};
use crate::protocol::{self, Endpoint, Prompt};
use crate::router::{self, Committed};

pub const DEPLOYMENT_HEADER: &str = "x-tollgate-deployment";
pub const REQUEST_ID_HEADER: &str = "x-request-id";
pub const CACHE_HEADER: &str = "x-tollgate-cache";
pub const SESSION_HEADER: &str = "x-session-id";
const UNKNOWN_ALIAS: &str = "_unknown";

/// Records a request whose client left while it was being routed (the handler's future
/// was dropped before it could answer): upstream work may have been spent on it.
struct Abandoned {
    rec: Option<RequestRecord>,
    accounting: std::sync::Arc<crate::accounting::Accounting>,
    start: Instant,
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        if let Some(mut rec) = self.rec.take() {
            rec.status = 499;
            rec.error = Some("client_closed");
            rec.client_closed = true;
            rec.total_ms = self.start.elapsed().as_secs_f64() * 1000.0;
            self.accounting.finish(rec);
        }
    }
}

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
    let mut resp = match serve(&st, endpoint, &headers, body, &rid, start).await {
        Ok(r) => r,
        Err((e, rec)) => {
            if let Some(mut rec) = rec {
                rec.status = e.status.as_u16();
                rec.error = Some(e.kind());
                rec.total_ms = start.elapsed().as_secs_f64() * 1000.0;
                st.accounting.finish(rec);
            }
            e.into_response()
        }
    };
    if let Ok(v) = HeaderValue::from_str(&rid) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    resp
}

type Fail = (ApiError, Option<RequestRecord>);

async fn serve(
    st: &Arc<AppState>,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Body,
    rid: &str,
    start: Instant,
) -> Result<Response, Fail> {
    let live = st.live();
    let caller = auth::authenticate(&live.auth, headers).map_err(|e| (e, None))?;
    let bytes = read_body(body, st.server.max_body_bytes).await.map_err(|e| (e, None))?;
    let mut req = protocol::validate(endpoint, &bytes).map_err(|e| (e, None))?;
    protocol::apply_named_prompt(&mut req, &live.prompts).map_err(|e| (e, None))?;
    let mut rec = RequestRecord::new(rid.to_owned(), endpoint, req.model.clone(), req.stream);
    rec.key = caller.name().map(str::to_owned);
    rec.user = req.user.clone();
    let alias = match live.routes.get(&req.model) {
        Some(a) if caller.allows(&a.name) => a.clone(),
        _ => {
            // One series for every unknown name: clients must not grow the metrics.
            rec.alias = UNKNOWN_ALIAS.to_owned();
            return Err((ApiError::model_not_found(&req.model), Some(rec)));
        }
    };
    // The response cache: a hit is answered here; a miss may lead identical requests.
    let policy = ClientPolicy::from_headers(headers);
    let cache_key = st.cache.as_ref().and_then(|c| c.key(caller.name(), &alias, &req).map(|k| (c.clone(), k)));
    let mut leader: Option<Leader> = None;
    if let Some((cache, key)) = &cache_key {
        if policy.lookup {
            match cache.lookup(*key).await {
                Lookup::Hit(hit) => return Ok(serve_hit(st, hit, rec, &req, start)),
                Lookup::Lead(l) => leader = Some(l),
            }
        }
    }
    let store = policy.store && cache_key.is_some();
    let prompt_text = match &req.prompt {
        Prompt::Chat(m) => Some(m.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n")),
        Prompt::Text(t) => Some(t.clone()),
        Prompt::Embed(v) => Some(v.join("\n")),
    };
    let include_usage = req.include_usage;
    let session = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok());
    let fingerprint = crate::affinity::fingerprint(session, &req);
    // A session belongs to the key that names it: another key naming the same id gets
    // another session.
    let session_key = session.filter(|s| !s.is_empty() && s.len() <= 256).map(|s| {
        let h = crate::config::sha256(format!("{}\u{0}{s}", caller.name().unwrap_or("")).as_bytes());
        hex::encode(&h[..16])
    });
    let req_endpoint = req.endpoint;
    let stream = req.stream;
    let br = BackendRequest {
        req: Arc::new(req),
        request_id: rid.to_owned(),
        traceparent: headers.get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned),
        priority: Priority::Interactive,
        fingerprint,
        session: session_key,
    };
    let mut abandoned = Abandoned { rec: Some(rec.clone()), accounting: st.accounting.clone(), start };
    let dispatched = router::dispatch(&alias, &br).await;
    abandoned.rec = None;
    let d = match dispatched {
        Ok(d) => d,
        Err(f) => {
            rec.deployment = f.deployment;
            rec.attempts = f.attempts;
            return Err((f.error, Some(rec)));
        }
    };
    rec.deployment = Some(d.deployment.name().to_owned());
    rec.backend_kind = Some(d.deployment.cfg.kind.name());
    rec.attempts = d.attempts;
    let mut tap = Tap::with_content(start, prompt_text, st.server.log_content);
    let dep_header = HeaderValue::from_str(d.deployment.name()).unwrap_or(HeaderValue::from_static("-"));
    match d.reply {
        Committed::Full { mut body, usage } => {
            if let Some(m) = body.get_mut("model") {
                *m = Value::String(alias.name.clone());
            }
            tap.observe(&body);
            if let Some(u) = usage {
                tap.set_usage(u);
            }
            tap.finish_into(&mut rec);
            drop(d.permit);
            if let (true, Some((cache, key))) = (store, &cache_key) {
                let cached = Cached { body: body.clone(), usage, deployment: d.deployment.name().to_owned() };
                cache.insert(*key, cached).await;
            }
            drop(leader);
            st.accounting.finish(rec);
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            let mut resp =
                (StatusCode::OK, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], bytes)
                    .into_response();
            resp.headers_mut().insert(DEPLOYMENT_HEADER, dep_header);
            if cache_key.is_some() {
                resp.headers_mut().insert(CACHE_HEADER, HeaderValue::from_static("miss"));
            }
            timing_headers(&body, resp.headers_mut());
            Ok(resp)
        }
        Committed::Stream { first, rest } => {
            debug_assert!(stream);
            let store = match (store, &cache_key) {
                (true, Some((cache, key))) => {
                    tap.keep_text();
                    // The leader guard (if this request leads) goes with the stream, so
                    // identical requests wait for it to finish and then hit.
                    let guard = leader.take().unwrap_or_else(|| cache.follower_guard(*key));
                    Some((guard, req_endpoint))
                }
                _ => None,
            };
            let setup = sse::SseSetup {
                alias: alias.name.clone(),
                include_usage,
                keepalive: st.server.keepalive,
                stall: d.deployment.cfg.stall_timeout,
                hard_stop: st.hard_stop.clone(),
                accounting: st.accounting.clone(),
                deployment: d.deployment.clone(),
                permit: d.permit,
                record: rec,
                tap,
                store,
            };
            let mut resp = Response::new(sse::body(first, rest, setup));
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            h.insert("x-accel-buffering", HeaderValue::from_static("no"));
            h.insert(DEPLOYMENT_HEADER, dep_header);
            Ok(resp)
        }
    }
}

/// llama-server-style `timings` (the engine's, or an upstream llama-server's) as headers.
fn timing_headers(body: &serde_json::Map<String, Value>, h: &mut HeaderMap) {
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

/// Answers from the response cache: the stored body, or its replay as SSE. The record
/// carries the original usage and marks the hit.
fn serve_hit(
    st: &Arc<AppState>,
    hit: Arc<Cached>,
    mut rec: RequestRecord,
    req: &crate::protocol::ValidRequest,
    start: Instant,
) -> Response {
    rec.deployment = Some(hit.deployment.clone());
    rec.cache_hit = true;
    let mut tap = Tap::new(start, None);
    if let Some(u) = hit.usage {
        tap.set_usage(u);
    }
    let mut body = hit.body.clone();
    if let Some(m) = body.get_mut("model") {
        *m = Value::String(req.model.clone());
    }
    tap.observe(&body);
    tap.finish_into(&mut rec);
    st.accounting.finish(rec);
    let dep = HeaderValue::from_str(&hit.deployment).unwrap_or(HeaderValue::from_static("-"));
    let mut resp = if req.stream {
        let mut out = Vec::new();
        for c in crate::cache::as_chunks(&body, req.include_usage) {
            out.extend_from_slice(b"data: ");
            let _ = serde_json::to_writer(&mut out, &c);
            out.extend_from_slice(b"\n\n");
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        let mut r = Response::new(Body::from(out));
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        r
    } else {
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        (StatusCode::OK, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], bytes).into_response()
    };
    resp.headers_mut().insert(DEPLOYMENT_HEADER, dep);
    resp.headers_mut().insert(CACHE_HEADER, HeaderValue::from_static("hit"));
    resp
}

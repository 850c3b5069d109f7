//! The inference endpoints: `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`.
//! Thin: authenticate, read and validate the body, route, render (JSON or SSE).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde_json::Value;

use super::{auth, sse, AppState};
use crate::accounting::{RequestRecord, Tap};
use crate::backend::{BackendRequest, Priority};
use crate::cache::{Cached, ClientPolicy, Leader, Lookup};
use crate::protocol::error::ApiError;
use crate::protocol::{self, Endpoint, Prompt};
use crate::router::{self, Committed};

pub const DEPLOYMENT_HEADER: &str = "x-tollgate-deployment";
pub const REQUEST_ID_HEADER: &str = "x-request-id";
pub const CACHE_HEADER: &str = "x-tollgate-cache";
pub const SESSION_HEADER: &str = "x-session-id";
/// The small-model router's decision: which model, the score, the reasons.
pub const ROUTE_HEADER: &str = "x-tollgate-route";
/// The registry version that answered, `NAME@X.Y.Z`.
pub const VERSION_HEADER: &str = "x-tollgate-model-version";
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
        Err((e, rec)) => fail(&st, e, rec, start),
    };
    if let Ok(v) = HeaderValue::from_str(&rid) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    resp
}

/// Records a refused or failed request and renders its error.
fn fail(st: &AppState, e: ApiError, rec: Option<RequestRecord>, start: Instant) -> Response {
    if let Some(mut rec) = rec {
        rec.status = e.status.as_u16();
        rec.error = Some(e.kind());
        rec.total_ms = start.elapsed().as_secs_f64() * 1000.0;
        st.accounting.finish(rec);
    }
    e.into_response()
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
        None => auth::Caller::Anonymous,
        Some(k) => match live.auth.keys.iter().find(|c| c.name == k) {
            Some(c) => auth::Caller::Key(c.clone()),
            None => {
                let e = ApiError::unauthorized(format!("The key '{k}' that created this batch no longer exists."));
                return (e.status.as_u16(), e.to_json());
            }
        },
    };
    let origin = Origin { caller, headers: None, batch_id: Some(batch_id) };
    let resp = match serve_valid(&st, &live, endpoint, origin, &body, &rid, start).await {
        Ok(r) => r,
        Err((e, rec)) => fail(&st, e, rec, start),
    };
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Who sent a request and how: a client over HTTP, or a batch line.
struct Origin<'a> {
    caller: auth::Caller,
    headers: Option<&'a HeaderMap>,
    batch_id: Option<String>,
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
    let origin = Origin { caller, headers: Some(headers), batch_id: None };
    serve_valid(st, &live, endpoint, origin, &bytes, rid, start).await
}

async fn serve_valid(
    st: &Arc<AppState>,
    live: &super::Live,
    endpoint: Endpoint,
    origin: Origin<'_>,
    bytes: &[u8],
    rid: &str,
    start: Instant,
) -> Result<Response, Fail> {
    let Origin { caller, headers, batch_id } = origin;
    let mut req = protocol::validate(endpoint, bytes).map_err(|e| (e, None))?;
    protocol::apply_named_prompt(&mut req, &live.prompts).map_err(|e| (e, None))?;
    let mut rec = RequestRecord::new(rid.to_owned(), endpoint, req.model.clone(), req.stream);
    rec.key = caller.name().map(str::to_owned);
    rec.user = req.user.clone();
    rec.batch_id = batch_id;
    match req.body.get("metadata") {
        None | Some(Value::Null) => {}
        Some(m @ Value::Object(_)) => rec.tags = Some(m.clone()),
        Some(_) => {
            let e = ApiError::invalid_request("'metadata' must be an object of string tags.", Some("metadata"));
            return Err((e, Some(rec)));
        }
    }
    let alias = match live.routes.get(&req.model) {
        Some(a) if caller.allows(&a.name) => a.clone(),
        _ => {
            // One series for every unknown name: clients must not grow the metrics.
            rec.alias = UNKNOWN_ALIAS.to_owned();
            return Err((ApiError::model_not_found(&req.model), Some(rec)));
        }
    };
    st.accounting.monitor.observe_fields(&alias.name, &req.body);
    // A small-model router: the request goes to its small or its large alias.
    let shown = alias.name.clone();
    let mut route_header: Option<HeaderValue> = None;
    let mut escalation: Option<(Arc<router::Alias>, bool)> = None;
    let mut alias = match &alias.auto {
        None => alias,
        Some(auto) => {
            let mut decision =
                crate::policy::smallroute::decide(&crate::policy::smallroute::features(&req.body), &auto.weights);
            let mut asked = String::new();
            if let Some(cl) = &auto.classifier {
                match classify(st, live, &auto.small, cl, &req, &caller, rid).await {
                    Ok(large) => {
                        decision.large = large;
                        asked = format!("; classifier={}", if large { "hard" } else { "easy" });
                    }
                    Err(why) => asked = format!("; classifier={why}, rules decided"),
                }
            }
            let target = if decision.large { &auto.large } else { &auto.small };
            let Some(t) = live.routes.get(target).cloned() else {
                let e =
                    ApiError::unavailable(format!("The router '{shown}' points at '{target}', which is not loaded."));
                return Err((e, Some(rec)));
            };
            let text = format!("{}{asked}; model={target}", decision.header());
            route_header = HeaderValue::from_str(&text).ok();
            rec.route = Some(text);
            if !decision.large {
                let large = live.routes.get(&auto.large).cloned();
                rec.downgrade_price =
                    large.as_ref().and_then(|l| l.deployments.first()).and_then(|d| d.cfg.price.clone());
                escalation = large.map(|l| (l, auto.escalate_on_length));
            }
            t
        }
    };
    // The key's limits and budgets: a refusal is recorded like any other answered request.
    // Batch lines run below interactive traffic and are paced by the batch runner instead.
    let batch = rec.batch_id.is_some();
    let mut limit_headers = Vec::new();
    if let (auth::Caller::Key(k), false) = (&caller, batch) {
        let ask = crate::accounting::limits::Ask {
            key: k,
            prompt_bytes: prompt_bytes(&req.prompt),
            max_tokens: req.sampling.max_tokens.map(u64::from),
            now_ms: rec.started_at_ms,
        };
        match st.accounting.limits.admit(&ask) {
            Ok(Some(mut a)) => {
                // The headers go to the response; the hold stays with the record.
                limit_headers = std::mem::take(&mut a.headers);
                rec.admission = Some(Arc::new(a));
            }
            Ok(None) => {}
            Err(e) => return Err((e, Some(rec))),
        }
    }
    let session = headers.and_then(|h| h.get(SESSION_HEADER)).and_then(|v| v.to_str().ok());
    let canary = alias.picks_canary(identity(session, req.user.as_deref(), &caller)).cloned();
    // The seed an engine draws with, recorded so that the answer can be reproduced.
    let seed = match req.sampling.seed {
        Some(v) => (v as u64 & 0xFFFF_FFFF).min(0xFFFF_FFFE) as u32,
        None => rand::random::<u32>() & 0x7FFF_FFFF,
    };
    rec.sampler = Some(req.sampling.clone());
    // The response cache: a hit is answered here; a miss may lead identical requests.
    let policy = headers.map(ClientPolicy::from_headers).unwrap_or(ClientPolicy { lookup: true, store: true });
    let cache_key =
        st.cache.as_ref().and_then(|c| c.key(caller.name(), &alias, canary.as_deref(), &req).map(|k| (c.clone(), k)));
    let mut leader: Option<Leader> = None;
    if let Some((cache, key)) = &cache_key {
        if policy.lookup {
            match cache.lookup(*key).await {
                Lookup::Hit(hit) => {
                    let dep = alias.all().find(|d| d.name() == hit.deployment).cloned();
                    let mut resp = serve_hit(st, hit, rec, dep.as_deref(), &req, start);
                    resp.headers_mut().extend(limit_headers);
                    return Ok(resp);
                }
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
    let client_seed = req.sampling.seed;
    let fingerprint = crate::policy::affinity::fingerprint(session, &req);
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
        traceparent: headers.and_then(|h| h.get("traceparent")).and_then(|v| v.to_str().ok()).map(str::to_owned),
        priority: if batch { Priority::Batch } else { Priority::Interactive },
        fingerprint,
        session: session_key,
        seed,
    };
    let mut abandoned = Abandoned { rec: Some(rec.clone()), accounting: st.accounting.clone(), start };
    let mut dispatched = router::dispatch(&alias, alias.order_for(fingerprint, canary.is_some()), &br).await;
    // The small model failed (or, if configured, was cut at max_tokens): ask the large one.
    if let Some((large, on_length)) = escalation.take() {
        let escalate = match &dispatched {
            Err(_) => true,
            Ok(d) => on_length && matches!(&d.reply, Committed::Full { body, .. } if finish_of(body) == Some("length")),
        };
        if escalate {
            if let Ok(d) = dispatched {
                // The small model's answer was paid for: it is accounted on its own.
                let mut small = rec.clone();
                small.id = uuid::Uuid::new_v4().simple().to_string();
                small.admission = None;
                small.error = Some("escalated");
                small.deployment = Some(d.deployment.name().to_owned());
                small.backend_kind = Some(d.deployment.cfg.kind.name());
                small.price = d.deployment.cfg.price.clone();
                small.downgrade_price = None;
                if let Committed::Full { body, usage } = &d.reply {
                    let mut tap = Tap::new(start, None);
                    tap.observe(body);
                    if let Some(u) = usage {
                        tap.set_usage(*u);
                    }
                    tap.finish_into(&mut small);
                }
                st.accounting.finish(small);
            }
            rec.route = rec.route.take().map(|r| format!("{r}; escalated={}", large.name));
            route_header = rec.route.as_deref().and_then(|r| HeaderValue::from_str(r).ok());
            rec.downgrade_price = None;
            alias = large;
            let canary = alias.picks_canary(identity(session, br.req.user.as_deref(), &caller)).is_some();
            dispatched = router::dispatch(&alias, alias.order_for(fingerprint, canary), &br).await;
        }
    }
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
    rec.price = d.deployment.cfg.price.clone();
    trace_version(&mut rec, &d.deployment);
    let local = matches!(d.deployment.cfg.kind, crate::config::DeploymentKind::Local(_));
    // The engine drew with `seed`; a remote upstream got the client's own value, if any.
    rec.seed = if local { Some(i64::from(seed)) } else { client_seed };
    let version_header = rec.model_version.as_deref().and_then(|v| HeaderValue::from_str(v).ok());
    let mut tap = Tap::with_content(start, prompt_text, st.server.log_content);
    let dep_header = HeaderValue::from_str(d.deployment.name()).unwrap_or(HeaderValue::from_static("-"));
    match d.reply {
        Committed::Full { mut body, usage } => {
            if let Some(m) = body.get_mut("model") {
                *m = Value::String(shown.clone());
            }
            tap.observe(&body);
            if let Some(u) = usage {
                tap.set_usage(u);
            }
            tap.finish_into(&mut rec);
            rec.price_it();
            let cost = rec.cost;
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
            if let Some(v) = version_header {
                resp.headers_mut().insert(VERSION_HEADER, v);
            }
            if cache_key.is_some() {
                resp.headers_mut().insert(CACHE_HEADER, HeaderValue::from_static("miss"));
            }
            timing_headers(&body, resp.headers_mut());
            cost_headers(cost, resp.headers_mut());
            resp.headers_mut().extend(limit_headers);
            if let Some(r) = route_header {
                resp.headers_mut().insert(ROUTE_HEADER, r);
            }
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
                alias: shown.clone(),
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
            if let Some(v) = version_header {
                h.insert(VERSION_HEADER, v);
            }
            h.extend(limit_headers);
            if let Some(r) = route_header {
                h.insert(ROUTE_HEADER, r);
            }
            Ok(resp)
        }
    }
}

/// The router's classifier: the named prompt and the request's last user message, asked of
/// the small alias for one word under the timeout. `Ok(true)`: HARD. The call is accounted as
/// its own record (`route = "classifier"`). Errors say why the rules decide instead:
/// `timeout`, `error`, or `unclear` (an answer that is neither word).
async fn classify(
    st: &Arc<AppState>,
    live: &super::Live,
    small: &str,
    cl: &crate::config::Classifier,
    req: &protocol::ValidRequest,
    caller: &auth::Caller,
    rid: &str,
) -> Result<bool, &'static str> {
    let start = Instant::now();
    let alias = live.routes.get(small).ok_or("error")?;
    let system = live.prompts.get(&cl.prompt).ok_or("error")?;
    let text = match &req.prompt {
        Prompt::Chat(m) => m.iter().rev().find(|m| m.role == "user").map(|m| m.content.as_str()).unwrap_or(""),
        Prompt::Text(t) => t.as_str(),
        Prompt::Embed(_) => return Err("error"),
    };
    // The end of a long request says most about what is asked.
    let cut = text.len().saturating_sub(4000);
    let text = &text[(cut..=text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(0)..];
    let body = serde_json::json!({"model": small, "max_tokens": 3, "temperature": 0.0,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": text}]});
    let bytes = serde_json::to_vec(&body).map_err(|_| "error")?;
    let creq = protocol::validate(Endpoint::Chat, &bytes).map_err(|_| "error")?;
    let mut rec = RequestRecord::new(format!("{rid}-classifier"), Endpoint::Chat, small.to_owned(), false);
    rec.key = caller.name().map(str::to_owned);
    rec.route = Some("classifier".into());
    let br = BackendRequest {
        req: Arc::new(creq),
        request_id: format!("{rid}-classifier"),
        traceparent: None,
        priority: Priority::Interactive,
        fingerprint: 0,
        session: None,
        seed: 0,
    };
    let outcome = tokio::time::timeout(cl.timeout, router::dispatch(alias, alias.order_for(0, false), &br)).await;
    let answer = match outcome {
        Err(_) => {
            rec.status = 504;
            rec.error = Some("classifier_timeout");
            Err("timeout")
        }
        Ok(Err(f)) => {
            rec.status = f.error.status.as_u16();
            rec.error = Some(f.error.kind());
            rec.deployment = f.deployment;
            Err("error")
        }
        Ok(Ok(d)) => {
            rec.deployment = Some(d.deployment.name().to_owned());
            rec.backend_kind = Some(d.deployment.cfg.kind.name());
            rec.price = d.deployment.cfg.price.clone();
            let mut tap = Tap::new(start, None);
            let said = match &d.reply {
                Committed::Full { body, usage } => {
                    tap.observe(body);
                    if let Some(u) = usage {
                        tap.set_usage(*u);
                    }
                    body.get("choices")
                        .and_then(|c| c.get(0))
                        .and_then(|c| c["message"]["content"].as_str())
                        .unwrap_or("")
                        .trim()
                        .to_ascii_lowercase()
                }
                Committed::Stream { .. } => String::new(),
            };
            tap.finish_into(&mut rec);
            if said.starts_with("hard") {
                Ok(true)
            } else if said.starts_with("easy") {
                Ok(false)
            } else {
                Err("unclear")
            }
        }
    };
    rec.total_ms = start.elapsed().as_secs_f64() * 1000.0;
    st.accounting.finish(rec);
    answer
}

/// Who a request is for a canary's sticky assignment: the session, else the request's
/// `user`, else the key; empty for none.
fn identity<'a>(session: Option<&'a str>, user: Option<&'a str>, caller: &'a auth::Caller) -> &'a str {
    session.filter(|s| !s.is_empty()).or(user).or(caller.name()).unwrap_or("")
}

/// The version that answered, for the record (and its canary comparison).
fn trace_version(rec: &mut RequestRecord, dep: &router::Deployment) {
    rec.model_version = dep.version.as_ref().map(|v| v.label());
    rec.model_sha256 = dep.model_sha256().map(str::to_owned);
    rec.release = dep.version.clone().map(|v| v as Arc<dyn crate::accounting::VersionOutcome>);
}

fn finish_of(body: &serde_json::Map<String, Value>) -> Option<&str> {
    body.get("choices")?.get(0)?.get("finish_reason")?.as_str()
}

/// The bytes of prompt text, for a token estimate at admission.
fn prompt_bytes(p: &Prompt) -> usize {
    match p {
        Prompt::Chat(m) => m.iter().map(|m| m.content.len()).sum(),
        Prompt::Text(t) => t.len(),
        Prompt::Embed(v) => v.iter().map(String::len).sum(),
    }
}

pub const COST_HEADER: &str = "x-tollgate-cost-usd";
pub const SAVED_HEADER: &str = "x-tollgate-saved-usd";

fn cost_headers(cost: Option<crate::pricing::Cost>, h: &mut HeaderMap) {
    if let Some(c) = cost {
        for (name, v) in [(COST_HEADER, c.usd), (SAVED_HEADER, c.saved_usd)] {
            if let Ok(v) = HeaderValue::from_str(&v.to_string()) {
                h.insert(name, v);
            }
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
    dep: Option<&router::Deployment>,
    req: &crate::protocol::ValidRequest,
    start: Instant,
) -> Response {
    rec.deployment = Some(hit.deployment.clone());
    rec.cache_hit = true;
    rec.price = dep.and_then(|d| d.cfg.price.clone());
    if let Some(d) = dep {
        trace_version(&mut rec, d);
        // A hit is no evidence about the version: it is not compared.
        rec.release = None;
    }
    let version_header = rec.model_version.as_deref().and_then(|v| HeaderValue::from_str(v).ok());
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
    rec.price_it();
    let cost = rec.cost;
    st.accounting.finish(rec);
    let dep = HeaderValue::from_str(&hit.deployment).unwrap_or(HeaderValue::from_static("-"));
    let mut resp = if req.stream {
        let mut out = Vec::new();
        for mut c in crate::cache::as_chunks(&body, req.include_usage) {
            if let (Some(u), Some(cost)) = (c.get_mut("usage"), cost) {
                crate::pricing::annotate_usage(u, cost);
            }
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
    if let Some(v) = version_header {
        resp.headers_mut().insert(VERSION_HEADER, v);
    }
    cost_headers(cost, resp.headers_mut());
    resp
}

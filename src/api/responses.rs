//! OpenAI's Responses API: `POST /v1/responses` (served as a chat completion through
//! [`gateway::serve`], so keys, limits, the cache, the router, releases and the ledger apply
//! unchanged), and the stored responses: `GET` and `DELETE /v1/responses/{id}`,
//! `GET /v1/responses/{id}/input_items`.
//!
//! A deployment whose upstream speaks the Responses API itself (`responses = "passthrough"`)
//! is sent the client's body and its answer comes back as the upstream wrote it; the gateway
//! still keeps the response for its key (retrieve and input items are answered here), pins
//! the conversation's follow-ups to that deployment and forwards a delete to it.
//!
//! A stored conversation is the engine's session: every response of a chain made with
//! `previous_response_id` runs in the session of the chain's first response, so a
//! follow-up prefills only its new input.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::inference::{context, origin, read_body, request_id};
use super::sse::Framing;
use super::{auth, render, AppState};
use crate::backend::NativeResponses;
use crate::conversation::{Conversations, Stored};
use crate::gateway::{self, Caller, Refused};
use crate::protocol::error::ApiError;
use crate::protocol::responses::{self, chat_messages, Stream};
use crate::protocol::translate::{new_id, Reply};
use crate::protocol::{Dialect, Endpoint};

pub async fn create(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let start = Instant::now();
    let rid = request_id(&headers);
    match serve(&st, &headers, body, &rid, start).await {
        Ok(r) => r,
        Err(refused) => refused.finish(&st.accounting, start).into_response(),
    }
}

/// The key a stored response belongs to: its name, or "" for the anonymous caller.
fn owner(caller: &Caller) -> String {
    caller.name().unwrap_or_default().to_owned()
}

fn store_error(e: String) -> ApiError {
    tracing::error!("{e}");
    ApiError::internal("The response store failed; see the gateway's log.")
}

async fn serve(st: &AppState, headers: &HeaderMap, body: Body, rid: &str, start: Instant) -> Result<Response, Refused> {
    let live = st.live();
    let caller = auth::authenticate(&live.auth, headers).map_err(Refused::bare)?;
    let bytes = read_body(body, st.server.max_body_bytes).await.map_err(Refused::bare)?;
    // Redacted before anything keeps it: the stored input items and a passed-through body.
    let (bytes, guarded) = gateway::guard_body(&context(st, &live), &caller, bytes);
    let mut req = responses::parse(&bytes).map_err(Refused::bare)?;
    let owner = owner(&caller);
    let now = crate::clock::now_s();
    let references = req.input.iter().any(responses::is_reference);
    // Referenced items are looked up first (here, or in the replicas' store), then resolved.
    let mut found = std::collections::HashMap::new();
    for item in req.input.iter().filter(|i| responses::is_reference(i)) {
        let Some(id) = item.get("id").and_then(Value::as_str) else { continue };
        if let Some(v) = st.conversations.find_item(&owner, id, now).await.map_err(|e| Refused::bare(store_error(e)))? {
            found.insert(id.to_owned(), v);
        }
    }
    req.resolve(|id| Ok(found.get(id).cloned())).map_err(Refused::bare)?;
    let prev = match &req.previous_response_id {
        None => None,
        Some(pid) => match st.conversations.find(&owner, pid, now).await.map_err(|e| Refused::bare(store_error(e)))? {
            Some(prev) => Some(prev),
            None => {
                return Err(Refused::bare(
                    ApiError::invalid_request(
                        format!("Previous response with id '{pid}' not found."),
                        Some("previous_response_id"),
                    )
                    .with_code("previous_response_not_found"),
                ))
            }
        },
    };
    let native = native(&live, &req.model, &bytes, references, prev.as_ref());
    let (history, root) = prev.map(|p| (p.history, Some(p.root))).unwrap_or_default();
    let id = new_id("resp_");
    let root = root.unwrap_or_else(|| id.clone());
    let chat = serde_json::to_vec(&req.chat_body(&history)).unwrap_or_default();
    // A stored conversation keeps its KV on the engine as a session does.
    let session = req.store.then_some(root.as_str());
    let mut origin = origin(headers, caller, Dialect::Responses, session);
    origin.native = native;
    origin.guarded = guarded;
    let answer = gateway::serve(&context(st, &live), Endpoint::Chat, origin, &chat, rid, start).await?;

    // Passed through: the upstream made the response and keeps its state.
    let passed = answer.is_native_response();
    let saver = req.store.then(|| {
        let mut history = history;
        history.extend(req.messages.iter().cloned());
        Arc::new(Saver {
            conversations: st.conversations.clone(),
            stored: Stored {
                id: id.clone(),
                key: owner,
                created_at: now,
                root,
                response: Value::Null,
                input_items: req.input.clone(),
                history,
                deployment: passed.then(|| answer.meta().deployment.clone()),
            },
        })
    });
    let on_complete = saver.clone().map(|s| Box::new(move |r: &Value| s.save(r)) as super::sse::OnResponse);
    if passed {
        let alias = Value::String(req.model.clone());
        return Ok(render::answer_as(
            st,
            answer,
            |body| {
                let r = Value::Object(body);
                if let Some(s) = saver {
                    s.save(&r);
                }
                r
            },
            move |_| Framing::Native { alias, sequence: 0, on_complete },
        ));
    }
    let (echo, model) = (req.echo.clone(), req.model.clone());
    let stream_id = id.clone();
    Ok(render::answer_as(
        st,
        answer,
        |body| {
            let r = responses::response(&req.echo, &id, now, &req.model, &Reply::of_body(&body));
            if let Some(s) = saver {
                s.save(&r);
            }
            r
        },
        move |_| Framing::Responses { stream: Box::new(Stream::new(echo, stream_id, now, model)), on_complete },
    ))
}

/// The client's body, to pass through when a deployment of its alias speaks the Responses
/// API itself. Not when the request names stored items (the gateway resolves those), nor
/// when it continues a conversation the gateway made (no upstream knows its id); a
/// conversation an upstream made goes back to that upstream.
fn native(
    live: &gateway::Live,
    model: &str,
    bytes: &[u8],
    references: bool,
    prev: Option<&Stored>,
) -> Option<Arc<NativeResponses>> {
    let alias = live.routes.get(model)?;
    if references || !alias.all().any(|d| d.passes_responses_through()) {
        return None;
    }
    let pinned = match prev {
        None => None,
        Some(p) => Some(p.deployment.clone()?),
    };
    let body = serde_json::from_slice(bytes).ok()?;
    Some(Arc::new(NativeResponses { body, pinned }))
}

/// Stores a finished response with the conversation it ends.
struct Saver {
    conversations: Arc<Conversations>,
    stored: Stored,
}

impl Saver {
    fn save(&self, response: &Value) {
        let mut s = self.stored.clone();
        // A passed-through response has the upstream's id.
        if let Some(id) = response.get("id").and_then(Value::as_str) {
            s.id = id.to_owned();
        }
        s.response = response.clone();
        if let Some(output) = response.get("output").and_then(Value::as_array) {
            s.history.extend(chat_messages(output).unwrap_or_default());
        }
        if let Err(e) = self.conversations.put(&s, crate::clock::now_s()) {
            tracing::error!("{e}");
        }
    }
}

/// The stored response `id` of the caller, or the 404 every other caller gets.
async fn find(st: &AppState, headers: &HeaderMap, id: &str) -> Result<(String, Stored), ApiError> {
    let caller = auth::authenticate(&st.live().auth, headers)?;
    let owner = owner(&caller);
    match st.conversations.find(&owner, id, crate::clock::now_s()).await.map_err(store_error)? {
        Some(s) => Ok((owner, s)),
        None => Err(ApiError::not_found(format!("Response with id '{id}' not found."))),
    }
}

pub async fn retrieve(State(st): State<Arc<AppState>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    match find(&st, &headers, &id).await {
        Ok((_, s)) => render::json(StatusCode::OK, &s.response),
        Err(e) => e.into_response(),
    }
}

/// Deletes a stored response; one an upstream made is deleted there first (when that fails,
/// the gateway keeps its copy and says so: the upstream still holds the conversation).
pub async fn delete(State(st): State<Arc<AppState>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let (owner, stored) = match find(&st, &headers, &id).await {
        Ok(found) => found,
        Err(e) => return e.into_response(),
    };
    if let Some(name) = &stored.deployment {
        let live = st.live();
        let dep = live.routes.aliases.values().flat_map(|a| a.all()).find(|d| d.name() == name);
        match dep.and_then(|d| d.backend.delete_response(&id)) {
            Some(forward) => {
                if let Err(e) = forward.await {
                    let inner = e.to_api(name);
                    return ApiError::upstream(format!(
                        "The upstream '{name}' that holds this response could not delete it: {}",
                        inner.message
                    ))
                    .into_response();
                }
            }
            None => {
                tracing::warn!(response = %id, deployment = %name, "the deployment that made this response is gone; deleted here only")
            }
        }
    }
    match st.conversations.remove(&owner, &id).await.map_err(store_error) {
        Ok(_) => render::json(StatusCode::OK, &json!({"id": id, "object": "response.deleted", "deleted": true})),
        Err(e) => e.into_response(),
    }
}

#[derive(serde::Deserialize)]
pub struct ListQuery {
    after: Option<String>,
    limit: Option<usize>,
    order: Option<String>,
}

/// The response's input items, newest first unless `order=asc`, `limit` (1 to 100, default
/// 20) at a time after the item `after`.
pub async fn input_items(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    let (_, s) = match find(&st, &headers, &id).await {
        Ok(found) => found,
        Err(e) => return e.into_response(),
    };
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return ApiError::invalid_request("Invalid 'limit': it must be between 1 and 100.", Some("limit"))
            .into_response();
    }
    let mut items = s.input_items;
    match q.order.as_deref() {
        None | Some("desc") => items.reverse(),
        Some("asc") => {}
        Some(_) => {
            return ApiError::invalid_request("Invalid 'order': expected 'asc' or 'desc'.", Some("order"))
                .into_response()
        }
    }
    let from = match &q.after {
        None => 0,
        Some(a) => match items.iter().position(|i| i.get("id").and_then(Value::as_str) == Some(a)) {
            Some(p) => p + 1,
            None => {
                return ApiError::invalid_request(format!("No input item with id '{a}'."), Some("after"))
                    .into_response()
            }
        },
    };
    let page: Vec<Value> = items.iter().skip(from).take(limit).cloned().collect();
    let id_of = |v: Option<&Value>| v.and_then(|i| i.get("id")).cloned().unwrap_or(Value::Null);
    let body = json!({
        "object": "list",
        "data": page,
        "first_id": id_of(page.first()),
        "last_id": id_of(page.last()),
        "has_more": from + page.len() < items.len(),
    });
    render::json(StatusCode::OK, &body)
}

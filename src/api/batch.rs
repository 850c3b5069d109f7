//! `/v1/files` and `/v1/batches`, as the OpenAI API does them. Thin: authenticate, call the
//! batch store ([`crate::batch`]), render. Uploads stream to disk (at most 200 MB).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use super::{auth, AppState};
use crate::batch::files::FileStore;
use crate::batch::{input::MAX_BYTES, BatchStatus, CreateError};
use crate::protocol::error::ApiError;

fn caller(st: &AppState, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    Ok(auth::authenticate(&st.live().auth, headers)?.name().map(str::to_owned))
}

pub async fn upload(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    mut mp: Multipart,
) -> Result<Response, ApiError> {
    Ok(axum::Json(upload_inner(&st, &headers, &mut mp).await?).into_response())
}

async fn upload_inner(st: &AppState, headers: &HeaderMap, mp: &mut Multipart) -> Result<Value, ApiError> {
    let key = caller(st, headers)?;
    let files = &st.batches.files;
    let bad = |m: String| ApiError::invalid_request(m, None);
    let mut purpose = None;
    let mut stored: Option<(String, String)> = None;
    let cleanup = |id: &Option<(String, String)>| {
        if let Some(p) = id.as_ref().and_then(|(id, _)| files.data_path(id)) {
            let _ = std::fs::remove_file(p);
        }
    };
    loop {
        let field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                cleanup(&stored);
                return Err(bad(format!("The multipart body could not be read: {e}")));
            }
        };
        match field.name() {
            Some("purpose") => purpose = Some(field.text().await.map_err(|e| bad(e.to_string()))?),
            Some("file") => {
                let filename = field.file_name().unwrap_or("upload.jsonl").to_owned();
                let id = FileStore::new_id();
                let path = files.data_path(&id).ok_or_else(|| ApiError::internal("bad file id"))?;
                tokio::fs::create_dir_all(files.dir()).await.map_err(|e| io_error(&e))?;
                let mut f = tokio::fs::File::create(&path).await.map_err(|e| io_error(&e))?;
                stored = Some((id, filename));
                let mut field = field;
                let mut n: u64 = 0;
                loop {
                    match field.chunk().await {
                        Ok(Some(c)) => {
                            n += c.len() as u64;
                            if n > MAX_BYTES {
                                cleanup(&stored);
                                return Err(ApiError::payload_too_large(MAX_BYTES as usize));
                            }
                            if let Err(e) = f.write_all(&c).await {
                                cleanup(&stored);
                                return Err(io_error(&e));
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            cleanup(&stored);
                            return Err(bad(format!("The upload was cut: {e}")));
                        }
                    }
                }
                f.flush().await.map_err(|e| io_error(&e))?;
            }
            _ => {}
        }
    }
    let Some((id, filename)) = stored else {
        return Err(ApiError::invalid_request("A 'file' part is required.", Some("file")));
    };
    match purpose.as_deref() {
        Some("batch") => {}
        other => {
            cleanup(&Some((id, filename)));
            return Err(ApiError::invalid_request(
                format!("'purpose' must be \"batch\" (the only purpose tollgate serves), not {other:?}."),
                Some("purpose"),
            ));
        }
    }
    let f = files.commit(&id, &filename, "batch", key.as_deref()).map_err(|e| io_error(&e))?;
    Ok(serde_json::to_value(f).unwrap_or_default())
}

fn io_error(e: &std::io::Error) -> ApiError {
    tracing::error!("file store: {e}");
    ApiError::internal("The file could not be stored.")
}

pub async fn list_files(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let key = caller(&st, &headers)?;
    let data = st.batches.files.list(q.get("purpose").map(String::as_str), key.as_deref());
    Ok(axum::Json(json!({"object": "list", "data": data, "has_more": false})).into_response())
}

fn no_file(id: &str) -> ApiError {
    ApiError::not_found(format!("No such File object: {id}")).with_code("file_not_found")
}

pub async fn get_file(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let key = caller(&st, &headers)?;
    Ok(axum::Json(st.batches.files.get(&id, key.as_deref()).ok_or_else(|| no_file(&id))?).into_response())
}

pub async fn file_content(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let key = caller(&st, &headers)?;
    let files = &st.batches.files;
    let path = files.get(&id, key.as_deref()).and_then(|_| files.data_path(&id)).ok_or_else(|| no_file(&id))?;
    let f = tokio::fs::File::open(&path).await.map_err(|_| no_file(&id))?;
    let mut resp = Response::new(Body::from_stream(tokio_util::io::ReaderStream::new(f)));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    Ok(resp)
}

pub async fn delete_file(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let key = caller(&st, &headers)?;
    if !st.batches.files.delete(&id, key.as_deref()) {
        return Err(no_file(&id));
    }
    Ok(axum::Json(json!({"id": id, "object": "file", "deleted": true})).into_response())
}

pub async fn create_batch(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let live = st.live();
    let who = auth::authenticate(&live.auth, &headers)?;
    let key = who.name().map(str::to_owned);
    let bytes = super::inference::read_body(body, 1024 * 1024).await?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid_request(format!("The body is not valid JSON: {e}"), None))?;
    let known = move |m: &str| live.routes.get(m).is_some_and(|a| who.allows(&a.name));
    let batches = st.batches.clone();
    let create_error = |e| match e {
        CreateError::BadRequest(m, p) => ApiError::invalid_request(m, p),
        CreateError::NotFound(m) => ApiError::not_found(m).with_code("file_not_found"),
        CreateError::Io(e) => io_error(&e),
    };
    if let Some(sh) = st.batches.shared.clone() {
        // The replicas' batch: stored in PostgreSQL, run by whichever replicas are up.
        let k = key.clone();
        let (b, lines) = tokio::task::spawn_blocking(move || batches.plan(k.as_deref(), &v, &known))
            .await
            .map_err(|_| ApiError::internal("The batch could not be created."))?
            .map_err(create_error)?;
        sh.create(key.as_deref(), &b, &lines).await.map_err(create_error)?;
        return Ok(axum::Json(b).into_response());
    }
    let b = tokio::task::spawn_blocking(move || batches.create(key.as_deref(), &v, &known))
        .await
        .map_err(|_| ApiError::internal("The batch could not be created."))?
        .map_err(create_error)?;
    if b.status == BatchStatus::Validating {
        st.start_batch(&b.id);
    }
    Ok(axum::Json(b).into_response())
}

/// The shared batch store (PostgreSQL) did not answer.
fn shared_error(e: String) -> ApiError {
    tracing::error!("batches: the shared store cannot be read: {e}");
    ApiError::unavailable("The shared batch store (PostgreSQL) cannot be read right now; retry shortly.")
}

fn no_batch(id: &str) -> ApiError {
    ApiError::not_found(format!("No such batch: {id}")).with_code("batch_not_found")
}

pub async fn get_batch(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let key = caller(&st, &headers)?;
    let b = match &st.batches.shared {
        Some(sh) => sh.get(&id, key.as_deref()).await.map_err(shared_error)?,
        None => st.batches.get(&id, key.as_deref()),
    };
    Ok(axum::Json(b.ok_or_else(|| no_batch(&id))?).into_response())
}

pub async fn cancel_batch(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let key = caller(&st, &headers)?;
    let b = match &st.batches.shared {
        Some(sh) => sh.cancel(&id, key.as_deref()).await.map_err(shared_error)?,
        None => st.batches.cancel(&id, key.as_deref()),
    };
    Ok(axum::Json(b.ok_or_else(|| no_batch(&id))?).into_response())
}

pub async fn list_batches(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let key = caller(&st, &headers)?;
    let limit = q.get("limit").and_then(|l| l.parse::<usize>().ok()).unwrap_or(20).clamp(1, 100);
    let after = q.get("after").map(String::as_str);
    let (data, has_more) = match &st.batches.shared {
        Some(sh) => sh.list(key.as_deref(), after, limit).await.map_err(shared_error)?,
        None => st.batches.list(key.as_deref(), after, limit),
    };
    let first = data.first().map(|b| b.id.clone());
    let last = data.last().map(|b| b.id.clone());
    let list = json!({"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": has_more});
    Ok(axum::Json(list).into_response())
}

//! The admin API of model releases (`/v1/admin/models`): list versions and stages, promote
//! (blue/green), stage a canary or change its weight, roll back, read the audit trail.
//!
//! A change that moves traffic to a version first loads it under every registry deployment
//! that follows its model, warms it (`prompts/` prefixes filled) and asks it a one-token
//! question; only then is the change recorded and the routes swapped, in one step, so that
//! no request reaches a version before it is ready. The version that leaves production
//! stays loaded (standby), so a rollback is a swap back and takes effect on the next request.
//!
//! With `[cluster]` a change is written to the shared store first, and every other replica's
//! follower ([`follow`]) adopts it: it readies the versions the new stages need (as above)
//! and swaps its routes, within a second of the announcement.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::AppState;
use crate::clock::now_ms;
use crate::protocol::error::ApiError;
use crate::registry::RegistryError;
use crate::release::{AuditAction, AuditEntry, Change, ModelLive, ReleaseError, Stages};
use crate::router::Deployment;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeBody {
    version: Option<String>,
    /// Percent, for a canary.
    weight: Option<f64>,
    reason: Option<String>,
}

async fn admin_body(st: &AppState, headers: &HeaderMap, body: Body) -> Result<(String, ChangeBody), ApiError> {
    let actor = super::dashboard::admin(st, headers, true)?;
    let bytes = super::inference::read_body(body, 64 * 1024).await?;
    let b = if bytes.iter().all(u8::is_ascii_whitespace) {
        ChangeBody { version: None, weight: None, reason: None }
    } else {
        serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid_request(format!("Bad request body: {e}"), None))?
    };
    if let Some(r) = &b.reason {
        if r.len() > 1000 {
            return Err(ApiError::invalid_request("'reason' is longer than 1000 bytes.", Some("reason")));
        }
    }
    Ok((actor, b))
}

fn known(st: &AppState, name: &str) -> Result<Arc<ModelLive>, ApiError> {
    st.releases.model(name).ok_or_else(|| {
        ApiError::not_found(format!(
            "No route follows the model '{name}': declare it with [[model]] in routes/ and serve it with a \
             kind = \"registry\" deployment."
        ))
        .with_code("model_not_found")
    })
}

fn registry_error(e: RegistryError) -> ApiError {
    ApiError::not_found(e.to_string()).with_code("version_not_found")
}

/// Loads, warms and tests `version` under every registry deployment that follows `model`
/// (reusing one already loaded, which is tested again); the deployments, ready for
/// traffic, and the names of those loaded now.
async fn prepare(st: &AppState, model: &str, version: &str) -> Result<(Vec<Arc<Deployment>>, Vec<String>), String> {
    let live = st.live();
    let meta = st.releases.registry.get(model, version).map_err(|e| e.to_string())?;
    let mlive = st.releases.model(model);
    let mut out: Vec<Arc<Deployment>> = Vec::new();
    let mut fresh = Vec::new();
    for a in &live.config.aliases {
        for t in &a.deployments {
            if !t.release.as_ref().is_some_and(|r| r.model == model && r.version.is_none()) {
                continue;
            }
            let dc = crate::router::build::version_config(t, &meta, &st.releases);
            if out.iter().any(|d| d.name() == dc.name) {
                continue;
            }
            let loaded =
                live.routes.aliases.values().flat_map(|a| a.all()).find(|d| d.name() == dc.name && d.cfg == dc);
            let started = Instant::now();
            let dep = match loaded {
                // Loaded (a standby, or a canary being promoted): asked again, since its
                // upstream may have gone away since.
                Some(d) if d.breaker.is_open() => return Err(format!("{}: its circuit breaker is open", d.name())),
                Some(d) => d.clone(),
                None => {
                    let d =
                        crate::router::build::load_version(&live.config, dc, &meta, mlive.clone(), st.clock.clone())
                            .await
                            .map_err(|e| e.to_string())?;
                    fresh.push(d.name().to_owned());
                    d
                }
            };
            crate::router::build::smoke_test(&dep).await.map_err(|e| format!("{}: {e}", dep.name()))?;
            tracing::info!(deployment = dep.name(), ready_ms = started.elapsed().as_millis() as u64, "version ready");
            out.push(dep);
        }
    }
    Ok((out, fresh))
}

/// Runs a change on its own task: a client that goes away mid-change does not leave it half
/// applied (recorded but not routed).
async fn detached(
    f: impl std::future::Future<Output = Result<Response, ApiError>> + Send + 'static,
) -> Result<Response, ApiError> {
    tokio::spawn(f).await.unwrap_or_else(|_| Err(ApiError::internal("The change was interrupted.")))
}

/// Loads what `after` needs, records the change, swaps the routes.
async fn change(
    st: &AppState,
    live: &ModelLive,
    change: Change,
    load: Option<&str>,
    after: Stages,
    actor: String,
    reason: Option<String>,
) -> Result<Response, ApiError> {
    let before = live.stages();
    let version = load.map(str::to_owned).or(after.production.clone());
    let started = Instant::now();
    let (loaded, fresh) = match load {
        Some(v) => match prepare(st, &live.name, v).await {
            Ok(l) => l,
            Err(e) => {
                let entry = AuditEntry {
                    id: 0,
                    at_ms: now_ms(),
                    model: live.name.clone(),
                    action: AuditAction::Failed(change),
                    version: version.clone(),
                    actor,
                    reason,
                    detail: json!({ "before": before, "error": e }),
                };
                let _ = st.releases.record(&live.name, None, None, entry).await;
                return Err(ApiError::unavailable(format!(
                    "{}@{v} could not be made ready; traffic stays where it was: {e}",
                    live.name
                ))
                .with_code("version_not_ready"));
            }
        },
        None => (Vec::new(), Vec::new()),
    };
    let entry = AuditEntry {
        id: 0,
        at_ms: now_ms(),
        model: live.name.clone(),
        action: AuditAction::Applied(change),
        version,
        actor: actor.clone(),
        reason,
        detail: json!({ "before": before, "after": after, "loaded": fresh,
            "ready_ms": started.elapsed().as_millis() as u64 }),
    };
    // Only an automatic rollback changes stages outside `ops`: one that came first wins.
    let entry = match st.releases.record(&live.name, Some(&before), Some(&after), entry).await {
        Ok(e) => e,
        Err(ReleaseError::StagesChanged) => {
            return Err(ApiError::conflict(format!(
                "{}'s stages changed while the version was being readied (an automatic rollback); nothing was \
                 changed: read the audit trail and try again.",
                live.name
            )))
        }
        Err(e @ ReleaseError::Shared(_)) => {
            return Err(ApiError::unavailable(format!("Nothing was changed: {e}; retry when it is back.")))
        }
        Err(e) => return Err(ApiError::internal(e.to_string())),
    };
    if let Err(e) = st.rebuild_routes(&loaded).await {
        // The routes could not take the change: put the stages back, and say so in the trail.
        let undo = AuditEntry {
            id: 0,
            at_ms: now_ms(),
            model: live.name.clone(),
            action: AuditAction::Reverted(change),
            version: entry.version.clone(),
            actor,
            reason: Some(e.clone()),
            detail: json!({ "after": before }),
        };
        let _ = st.releases.record(&live.name, None, Some(&before), undo).await;
        return Err(ApiError::unavailable(format!("The change could not be applied: {e}")));
    }
    Ok(axum::Json(json!({ "model": live.name, "stages": live.stages(), "audit": entry })).into_response())
}

/// A change decided from the body and the current stages: its action, the version to make
/// ready first (if any), and the stages after it.
struct Plan {
    change: Change,
    load: Option<String>,
    after: Stages,
}

/// The shared path of every change: the admin key and the body, then, on its own task and
/// under `ops`, the current stages, the plan made from them, and the change.
async fn run(
    st: Arc<AppState>,
    name: String,
    headers: HeaderMap,
    body: Body,
    plan: impl FnOnce(&AppState, &str, ChangeBody, Stages) -> Result<Plan, ApiError> + Send + 'static,
) -> Result<Response, ApiError> {
    let (actor, b) = admin_body(&st, &headers, body).await?;
    detached(async move {
        let live = known(&st, &name)?;
        let _one = st.releases.ops.lock().await;
        let reason = b.reason.clone();
        let p = plan(&st, &name, b, live.stages())?;
        change(&st, &live, p.change, p.load.as_deref(), p.after, actor, reason).await
    })
    .await
}

/// `POST /v1/admin/models/{name}/promote` `{"version": "1.1.0", "reason": "..."}`.
pub async fn promote(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    run(st, name, headers, body, |st, name, b, cur| {
        let version =
            b.version.ok_or_else(|| ApiError::invalid_request("Give the 'version' to promote.", Some("version")))?;
        st.releases.registry.get(name, &version).map_err(registry_error)?;
        if cur.production.as_deref() == Some(version.as_str()) {
            return Err(ApiError::conflict(format!("{name}@{version} is already in production.")));
        }
        let was_canary = cur.staging.as_deref() == Some(version.as_str());
        let after = Stages {
            production: Some(version.clone()),
            staging: if was_canary { None } else { cur.staging.clone() },
            canary_weight: if was_canary { 0.0 } else { cur.canary_weight },
            previous: cur.production.clone(),
        };
        Ok(Plan { change: Change::Promote, load: Some(version), after })
    })
    .await
}

/// `POST /v1/admin/models/{name}/canary` `{"version": "1.1.0", "weight": 10}` stages a
/// canary; `{"weight": 25}` changes the current canary's weight (0 stops its traffic).
pub async fn canary(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    run(st, name, headers, body, |st, name, b, cur| {
        let weight = b.weight.unwrap_or(if b.version.is_some() { 10.0 } else { cur.canary_weight });
        if !(0.0..=100.0).contains(&weight) {
            return Err(ApiError::invalid_request(
                format!("'weight' {weight} is not a percentage (0 to 100)."),
                Some("weight"),
            ));
        }
        let version = match (b.version, &cur.staging) {
            (Some(v), _) => v,
            (None, Some(s)) => s.clone(),
            (None, None) => {
                return Err(ApiError::invalid_request(
                    format!("{name} has no canary: give the 'version' to stage."),
                    Some("version"),
                ))
            }
        };
        st.releases.registry.get(name, &version).map_err(registry_error)?;
        if cur.production.as_deref() == Some(version.as_str()) {
            return Err(ApiError::conflict(format!(
                "{name}@{version} is the production version; it cannot be its canary."
            )));
        }
        let same = cur.staging.as_deref() == Some(version.as_str());
        let (change, load) = if same { (Change::Weight, None) } else { (Change::Canary, Some(version.clone())) };
        Ok(Plan { change, load, after: Stages { staging: Some(version), canary_weight: weight, ..cur } })
    })
    .await
}

/// `POST /v1/admin/models/{name}/rollback`: the previous production version answers again.
pub async fn rollback(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    run(st, name, headers, body, |_, name, b, cur| {
        if b.version.is_some() || b.weight.is_some() {
            return Err(ApiError::invalid_request("A rollback takes only a 'reason'.", None));
        }
        let Some(prev) = cur.previous.clone() else {
            return Err(ApiError::conflict(format!("{name} has no previous production version to roll back to.")));
        };
        let after = Stages {
            production: Some(prev.clone()),
            previous: cur.production.clone(),
            staging: cur.staging.clone().filter(|s| *s != prev),
            canary_weight: if cur.staging.as_deref() == Some(prev.as_str()) { 0.0 } else { cur.canary_weight },
        };
        // The previous version is normally loaded (standby): `prepare` then reuses it at once.
        Ok(Plan { change: Change::Rollback, load: Some(prev), after })
    })
    .await
}

/// `GET /v1/admin/models`: every registry version, with its stage and whether it is loaded.
pub async fn list(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    super::dashboard::admin(&st, &headers, false)?;
    let data = registry_list(&st)?;
    Ok(axum::Json(json!({ "object": "list", "data": data })).into_response())
}

/// Every registry version with its stage, canary weight and whether it is loaded.
pub fn registry_list(st: &AppState) -> Result<Vec<Value>, ApiError> {
    let live = st.live();
    let loaded: Vec<String> = live
        .routes
        .aliases
        .values()
        .flat_map(|a| a.all())
        .filter_map(|d| d.version.as_ref().map(|v| v.label()))
        .collect();
    let metas = st.releases.registry.list().map_err(|e| ApiError::internal(e.to_string()))?;
    let mut data = Vec::new();
    for meta in metas {
        let stages = st.releases.model(&meta.name).map(|l| l.stages());
        let label = format!("{}@{}", meta.name, meta.version);
        let mut v = serde_json::to_value(&meta).unwrap_or(Value::Null);
        v["id"] = json!(label);
        v["stage"] = json!(crate::release::stage_of(stages.as_ref(), &meta.version));
        if let Some(s) = stages.as_ref().filter(|s| s.staging.as_deref() == Some(meta.version.as_str())) {
            v["canary_weight"] = json!(s.canary_weight);
        }
        v["loaded"] = json!(loaded.contains(&label));
        v["previous"] = json!(stages.as_ref().is_some_and(|s| s.previous.as_deref() == Some(meta.version.as_str())));
        data.push(v);
    }
    Ok(data)
}

/// `GET /v1/admin/models/{name}/audit`: every change, oldest first.
pub async fn audit(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    super::dashboard::admin(&st, &headers, false)?;
    let entries = st.releases.audit_trail(Some(&name)).await.map_err(|e| match e {
        ReleaseError::Shared(_) => ApiError::unavailable(e.to_string()),
        e => ApiError::internal(e.to_string()),
    })?;
    Ok(axum::Json(json!({ "object": "list", "model": name, "data": entries })).into_response())
}

/// Keeps this replica's stages those of the shared store: on every announcement (and every
/// few seconds), the models whose stored stages differ are readied and adopted.
pub fn follow(st: std::sync::Weak<AppState>, store: Arc<crate::release::shared::SharedStore>) {
    let mut changes = store.cluster.release_changes();
    store.cluster.clone().spawn(async move {
        while changes.recv().await.is_some() {
            while changes.try_recv().is_ok() {}
            let Some(st) = st.upgrade() else { return };
            if let Err(e) = sync(&st, &store).await {
                tracing::warn!("releases: cannot follow the shared store yet: {e}");
            }
        }
    });
}

async fn sync(st: &AppState, store: &Arc<crate::release::shared::SharedStore>) -> Result<(), String> {
    if st.releases.shared().is_none() {
        st.releases.join(store.clone()).await.map_err(|e| e.to_string())?;
    }
    let stored = store.all().await.map_err(|e| e.to_string())?;
    let _one = st.releases.ops.lock().await;
    let (mut loaded, mut changed) = (Vec::new(), false);
    for name in st.releases.names() {
        let (Some(live), Some(s)) = (st.releases.model(&name), stored.get(&name)) else { continue };
        let (now, s) = (live.stages(), crate::release::normal(s));
        if now == s {
            continue;
        }
        // Versions this replica serves or keeps as standby are loaded already.
        let have = [&now.production, &now.staging, &now.previous];
        for v in [&s.production, &s.staging].into_iter().flatten() {
            if !have.iter().any(|h| h.as_ref() == Some(v)) {
                loaded.extend(prepare(st, &name, v).await.map_err(|e| format!("{name}@{v}: {e}"))?.0);
            }
        }
        st.releases.adopt(&name, &s).map_err(|e| e.to_string())?;
        tracing::info!(model = %name, stages = ?s, "releases: adopted the shared store's stages");
        changed = true;
    }
    if changed {
        st.rebuild_routes(&loaded).await?;
    }
    Ok(())
}

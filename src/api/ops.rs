//! The operator's endpoints: `/health`, `/ready`, `/metrics`, `/v1/models`; and the
//! deployments' and canaries' families on `/metrics` ([`Gateway`]).

use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::{auth, AppState};
use crate::accounting::metrics::{self, Collector, ConstCounter, ConstGauge, DescriptorEncoder};
use crate::backend::Unhealthy;
use crate::protocol::error::ApiError;

fn model_object(st: &AppState, alias: &crate::router::Alias) -> Value {
    let deployments: Vec<Value> = alias
        .all()
        .map(|d| {
            let mut o = json!({ "name": d.name(), "kind": d.cfg.kind.name() });
            if let Some(v) = &d.version {
                o["version"] = json!(v.label());
                let role = match &alias.canary {
                    Some(c) if Arc::ptr_eq(&c.staging, d) => "staging",
                    _ if alias.standby.iter().any(|s| Arc::ptr_eq(s, d)) => "standby",
                    _ => "production",
                };
                o["stage"] = json!(role);
            }
            if let Some(info) = d.backend.info() {
                o["model"] = info;
            }
            o
        })
        .collect();
    json!({
        "id": alias.name,
        "object": "model",
        "created": st.created,
        "owned_by": "tollgate",
        "deployments": deployments,
    })
}

pub(super) async fn models(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let live = st.live();
    let caller = auth::authenticate(&live.auth, &headers)?;
    let data: Vec<Value> = live
        .routes
        .order
        .iter()
        .filter_map(|n| live.routes.get(n))
        .filter(|a| caller.allows(&a.name))
        .map(|a| model_object(&st, a))
        .collect();
    Ok(axum::Json(json!({ "object": "list", "data": data })).into_response())
}

pub(super) async fn model(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let live = st.live();
    let caller = auth::authenticate(&live.auth, &headers)?;
    match live.routes.get(&id) {
        Some(a) if caller.allows(&a.name) => Ok(axum::Json(model_object(&st, a)).into_response()),
        _ => Err(ApiError::model_not_found(&id)),
    }
}

pub(super) async fn health() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

/// Green when every alias has at least one deployment that answers its health check and
/// whose breaker is closed.
pub(super) async fn ready(State(st): State<Arc<AppState>>) -> Response {
    let live = st.live();
    let mut checks = Vec::new();
    for name in &live.routes.order {
        let Some(alias) = live.routes.get(name) else {
            continue;
        };
        for d in alias.routed() {
            let d = d.clone();
            let alias = name.clone();
            checks.push(async move {
                let r = match tokio::time::timeout(Duration::from_secs(5), d.backend.health()).await {
                    Ok(r) => r,
                    Err(_) => Err(Unhealthy::TimedOut),
                };
                let r = r.and_then(|_| if d.breaker.is_open() { Err(Unhealthy::BreakerOpen) } else { Ok(()) });
                (alias, d.name().to_owned(), r)
            });
        }
    }
    let results = futures::future::join_all(checks).await;
    let mut aliases = serde_json::Map::new();
    let mut all_ok = true;
    for name in &live.routes.order {
        let mine: Vec<_> = results.iter().filter(|(a, _, _)| a == name).collect();
        let ok = mine.iter().any(|(_, _, r)| r.is_ok());
        all_ok &= ok;
        let deps: serde_json::Map<String, Value> = mine
            .iter()
            .map(|(_, d, r)| {
                (
                    d.clone(),
                    match r {
                        Ok(()) => json!({"ok": true}),
                        Err(e) => json!({"ok": false, "error": e.to_string()}),
                    },
                )
            })
            .collect();
        aliases.insert(name.clone(), json!({ "ready": ok, "deployments": deps }));
    }
    let status = if all_ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut body = json!({ "ready": all_ok, "aliases": aliases });
    // Shared state is reported, not required: a replica whose Redis is down still serves, on
    // its fallbacks.
    if let Some(c) = st.accounting.limits.cluster() {
        body["cluster"] = json!({
            "redis": c.state(),
            "fallback": (!c.is_up()).then(|| format!(
                "limits are this replica's share (1/{}), fail_mode {}; the shared cache is skipped",
                c.cfg.replicas,
                if c.cfg.fail_closed { "closed" } else { "open" }
            )),
        });
    }
    if let Some(p) = &st.accounting.postgres {
        body["ledger"] = json!({
            "postgres": if p.is_up() { "up" } else { "down" },
            "fallback": (!p.is_up()).then_some("records wait in this replica's local ledger until PostgreSQL is back"),
        });
    }
    (status, axum::Json(body)).into_response()
}

pub(super) async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], metrics::encode(&st.prometheus)).into_response()
}

/// The deployments' and canaries' families on `/metrics`, read from the live routes and the
/// releases at scrape time. Weak: the registry that holds it is the state's own.
#[derive(Debug)]
pub(super) struct Gateway(pub(super) Weak<AppState>);

impl Collector for Gateway {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let Some(st) = self.0.upgrade() else { return Ok(()) };
        let live = st.live();
        let aliases = live.routes.order.iter().filter_map(|n| live.routes.get(n));
        let deployments: Vec<_> = aliases.flat_map(|a| a.all()).collect();
        let in_flight = deployments.iter().map(|d| ([("deployment", d.name())], ConstGauge::new(d.in_flight())));
        let help = "Requests holding a deployment's concurrency permit.";
        metrics::family(&mut enc, "tollgate_deployment_in_flight", help, in_flight)?;
        let open =
            deployments.iter().map(|d| ([("deployment", d.name())], ConstGauge::new(u64::from(d.breaker.is_open()))));
        let help = "1 while the deployment's circuit breaker is open.";
        metrics::family(&mut enc, "tollgate_deployment_breaker_open", help, open)?;
        let stages: Vec<_> =
            st.releases.names().into_iter().filter_map(|n| Some((st.releases.model(&n)?.stages(), n))).collect();
        let weights = stages.iter().map(|(s, name)| {
            let (production, staging) = (s.production.as_deref().unwrap_or(""), s.staging.as_deref().unwrap_or(""));
            let labels = [("model", name.as_str()), ("production", production), ("staging", staging)];
            (labels, ConstGauge::new(s.canary_weight))
        });
        metrics::family(&mut enc, "tollgate_canary_weight_percent", "A registry model's canary weight.", weights)?;
        let rollbacks = ConstCounter::new(st.releases.auto_rollbacks.load(std::sync::atomic::Ordering::Relaxed));
        let help = "Canaries set to weight 0 for doing worse than production.";
        metrics::family(&mut enc, "tollgate_canary_auto_rollbacks_total", help, [(metrics::NO_LABELS, rollbacks)])
    }
}

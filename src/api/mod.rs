//! The HTTP API (axum): routes, shared state, the ops endpoints (`/health`, `/ready`,
//! `/metrics`, `/v1/models`), OpenAI-shaped 404/405, CORS, and the server's lifecycle:
//! start, reload (keys and routes swapped without dropping streams), graceful shutdown.

pub mod auth;
pub mod batch;
pub mod error;
pub mod inference;
pub mod models;
pub mod sse;
pub mod usage;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accounting::Accounting;
use crate::config::{AuthConfig, Config, ServerConfig};
use crate::protocol::Endpoint;
use crate::router::{Clock, Routes, SystemClock};
use error::ApiError;

/// What a reload replaces.
pub struct Live {
    pub routes: Routes,
    pub auth: AuthConfig,
    /// Named system prompts (`prompts/`), referred to by `system_prompt`.
    pub prompts: std::collections::BTreeMap<String, String>,
    /// The configuration these came from (a promotion loads versions with its settings).
    pub config: Arc<Config>,
}

pub struct AppState {
    live: RwLock<Arc<Live>>,
    pub server: ServerConfig,
    pub accounting: Arc<Accounting>,
    /// Cancelled when the shutdown grace period is over: open streams end cleanly.
    pub hard_stop: CancellationToken,
    pub clock: Arc<dyn Clock>,
    pub created: u64,
    pub cache: Option<Arc<crate::cache::ResponseCache>>,
    /// Files and batches (`/v1/files`, `/v1/batches`).
    pub batches: Arc<crate::batch::Batches>,
    /// The batch runners, drained at shutdown.
    batch_tasks: TaskTracker,
    /// Cancelled at shutdown: runners start no new line.
    batch_stop: CancellationToken,
    /// Registry models: stages, canaries, the audit trail.
    pub releases: Arc<crate::release::Releases>,
}

impl AppState {
    /// Runs (or resumes) a batch on this gateway's own request path.
    pub fn start_batch(self: &Arc<Self>, id: &str) {
        self.batches.start(id, self.batch_exec(), &self.batch_tasks, self.batch_stop.clone());
    }

    fn batch_exec(self: &Arc<Self>) -> crate::batch::Exec {
        let weak = Arc::downgrade(self);
        Arc::new(move |endpoint, key, batch_id, rid, body| {
            let weak = weak.clone();
            Box::pin(async move {
                match weak.upgrade() {
                    Some(st) => inference::run_line(st, endpoint, key, batch_id, rid, body).await,
                    None => (503, ApiError::unavailable("The gateway is stopping.").to_json()),
                }
            })
        })
    }

    pub fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Applies a new configuration's keys and routes. Deployments whose settings did not
    /// change are kept as they are (their engines, breakers and in-flight streams).
    pub async fn reload(&self, cfg: &Config) -> Result<(), String> {
        let _one = self.releases.ops.lock().await;
        self.releases.configure(cfg)?;
        let old = self.live();
        let routes =
            crate::deploy::build_routes(cfg, Some(&old.routes), self.clock.clone(), Some(&self.releases), &[]).await?;
        self.accounting.limits.configure(&cfg.auth.keys);
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Live {
            routes,
            auth: cfg.auth.clone(),
            prompts: cfg.prompts.clone(),
            config: Arc::new(cfg.clone()),
        });
        Ok(())
    }

    /// Rebuilds the routes from the current configuration and the releases' stages, with
    /// `loaded` (versions loaded and warmed beforehand) in them; the swap is atomic: one
    /// request sees the old routes or the new. The caller holds `releases.ops`.
    pub async fn rebuild_routes(&self, loaded: &[Arc<crate::router::Deployment>]) -> Result<(), String> {
        let old = self.live();
        let routes = crate::deploy::build_routes(
            &old.config,
            Some(&old.routes),
            self.clock.clone(),
            Some(&self.releases),
            loaded,
        )
        .await?;
        let mut w = self.live.write().unwrap_or_else(|p| p.into_inner());
        *w = Arc::new(Live { routes, auth: w.auth.clone(), prompts: w.prompts.clone(), config: w.config.clone() });
        Ok(())
    }
}

pub async fn state(cfg: &Config) -> anyhow::Result<Arc<AppState>> {
    state_with_clock(cfg, Arc::new(SystemClock)).await
}

/// With an injected clock (tests move time for rate limits, breakers and windows).
pub async fn state_with_clock(cfg: &Config, clock: Arc<dyn Clock>) -> anyhow::Result<Arc<AppState>> {
    let accounting = Arc::new(Accounting::new(cfg, clock.clone()));
    let releases = crate::release::Releases::open(cfg, Some(accounting.clone())).map_err(|e| anyhow::anyhow!(e))?;
    let routes = crate::deploy::build_routes(cfg, None, clock.clone(), Some(&releases), &[])
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(Arc::new(AppState {
        live: RwLock::new(Arc::new(Live {
            routes,
            auth: cfg.auth.clone(),
            prompts: cfg.prompts.clone(),
            config: Arc::new(cfg.clone()),
        })),
        server: cfg.server.clone(),
        accounting,
        releases,
        hard_stop: CancellationToken::new(),
        clock,
        cache: crate::cache::ResponseCache::new(&cfg.server.cache),
        batches: crate::batch::Batches::open(&cfg.server.data_dir, cfg.server.batch_concurrency),
        batch_tasks: TaskTracker::new(),
        batch_stop: CancellationToken::new(),
        created: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    }))
}

pub fn router(st: Arc<AppState>) -> Router {
    let mut r = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/v1/models/{*id}", get(model))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/v1/usage", get(usage::usage))
        .route(
            "/v1/files",
            post(batch::upload)
                .layer(axum::extract::DefaultBodyLimit::max(crate::batch::input::MAX_BYTES as usize + 1024 * 1024))
                .get(batch::list_files),
        )
        .route("/v1/files/{id}", get(batch::get_file).delete(batch::delete_file))
        .route("/v1/files/{id}/content", get(batch::file_content))
        .route("/v1/batches", post(batch::create_batch).get(batch::list_batches))
        .route("/v1/batches/{id}", get(batch::get_batch))
        .route("/v1/batches/{id}/cancel", post(batch::cancel_batch))
        .route("/v1/admin/models", get(models::list))
        .route("/v1/admin/models/{name}/audit", get(models::audit))
        .route("/v1/admin/models/{name}/promote", post(models::promote))
        .route("/v1/admin/models/{name}/canary", post(models::canary))
        .route("/v1/admin/models/{name}/rollback", post(models::rollback))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(st.clone());
    if !st.server.cors_origins.is_empty() {
        use tower_http::cors::{AllowOrigin, Any, CorsLayer};
        let origins = &st.server.cors_origins;
        let allow = if origins.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
        };
        r = r.layer(
            CorsLayer::new()
                .allow_origin(allow)
                .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
                .allow_headers(Any)
                .expose_headers(Any)
                .max_age(Duration::from_secs(600)),
        );
    }
    r
}

async fn chat(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    inference::handle(st, Endpoint::Chat, headers, body).await
}
async fn completions(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    inference::handle(st, Endpoint::Completions, headers, body).await
}
async fn embeddings(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    inference::handle(st, Endpoint::Embeddings, headers, body).await
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("Unknown path: {}.", uri.path()))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::method_not_allowed(format!("{method} is not allowed on {}.", uri.path()))
}

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

async fn models(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
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

async fn model(
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

async fn health() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

/// Green when every alias has at least one deployment that answers its health check and
/// whose breaker is closed.
async fn ready(State(st): State<Arc<AppState>>) -> Response {
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
                    Err(_) => Err("health check timed out".into()),
                };
                let r = r.and_then(|_| if d.breaker.is_open() { Err("circuit breaker open".into()) } else { Ok(()) });
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
                        Err(e) => json!({"ok": false, "error": e}),
                    },
                )
            })
            .collect();
        aliases.insert(name.clone(), json!({ "ready": ok, "deployments": deps }));
    }
    let status = if all_ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(json!({ "ready": all_ok, "aliases": aliases }))).into_response()
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let mut out = String::with_capacity(4096);
    st.accounting.metrics.render(&mut out);
    st.accounting.monitor.render(&mut out);
    if let Some(l) = &st.accounting.ledger {
        l.render(&mut out);
    }
    let live = st.live();
    out.push_str("# HELP tollgate_deployment_in_flight Requests holding a deployment's concurrency permit.\n# TYPE tollgate_deployment_in_flight gauge\n");
    for name in &live.routes.order {
        if let Some(a) = live.routes.get(name) {
            for d in a.all() {
                let used = d.cfg.max_concurrency - d.permits.available_permits();
                out.push_str(&format!("tollgate_deployment_in_flight{{deployment=\"{}\"}} {used}\n", d.name()));
                let open = u8::from(d.breaker.is_open());
                out.push_str(&format!("tollgate_deployment_breaker_open{{deployment=\"{}\"}} {open}\n", d.name()));
            }
        }
    }
    out.push_str("# HELP tollgate_canary_weight_percent A registry model's canary weight.\n# TYPE tollgate_canary_weight_percent gauge\n");
    for name in st.releases.names() {
        if let Some(m) = st.releases.model(&name) {
            let s = m.stages();
            let staging = s.staging.as_deref().unwrap_or("");
            let production = s.production.as_deref().unwrap_or("");
            out.push_str(&format!(
                "tollgate_canary_weight_percent{{model=\"{name}\",production=\"{production}\",staging=\"{staging}\"}} {}\n",
                s.canary_weight
            ));
        }
    }
    out.push_str("# HELP tollgate_canary_auto_rollbacks_total Canaries set to weight 0 for doing worse than production.\n# TYPE tollgate_canary_auto_rollbacks_total counter\n");
    let n = st.releases.auto_rollbacks.load(std::sync::atomic::Ordering::Relaxed);
    out.push_str(&format!("tollgate_canary_auto_rollbacks_total {n}\n"));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// A running server: its address, its state, and how to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    pub shutdown: CancellationToken,
    pub done: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stops accepting, lets streams finish up to the grace period, then closes them.
    pub async fn stop(self) -> std::io::Result<()> {
        self.shutdown.cancel();
        self.done.await.unwrap_or(Ok(()))
    }
}

/// Binds and serves in the background (tests bind `127.0.0.1:0`).
pub async fn spawn(cfg: &Config, listen: SocketAddr) -> anyhow::Result<Running> {
    spawn_with_clock(cfg, listen, Arc::new(SystemClock)).await
}

pub async fn spawn_with_clock(cfg: &Config, listen: SocketAddr, clock: Arc<dyn Clock>) -> anyhow::Result<Running> {
    let st = state_with_clock(cfg, clock).await?;
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let done = tokio::spawn(serve(listener, st.clone(), shutdown.clone()));
    Ok(Running { addr, state: st, shutdown, done })
}

pub async fn serve(listener: TcpListener, st: Arc<AppState>, shutdown: CancellationToken) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        // Nagle's algorithm would hold small SSE events and responses back ~40 ms.
        let _ = tcp.set_nodelay(true);
    });
    let app = router(st.clone());
    // Batches a previous run left unfinished carry on.
    st.batches.resume(st.batch_exec(), &st.batch_tasks, st.batch_stop.clone());
    let tracker = TaskTracker::new();
    let grace = st.server.shutdown_grace;
    let hard_stop = st.hard_stop.clone();
    let sd = shutdown.clone();
    tracker.spawn(async move {
        sd.cancelled().await;
        tokio::select! {
            _ = tokio::time::sleep(grace) => hard_stop.cancel(),
            _ = hard_stop.cancelled() => {}
        }
    });
    tracker.close();
    let started = Instant::now();
    let r = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
    st.hard_stop.cancel();
    tracker.wait().await;
    // Batch runners start no new line; lines in flight get the grace period, and any line
    // not recorded by then runs again at the next start.
    st.batch_stop.cancel();
    st.batch_tasks.close();
    let _ = tokio::time::timeout(grace, st.batch_tasks.wait()).await;
    // Alerts raised so far are sent (bounded: a webhook that hangs does not hold the exit).
    let _ = tokio::time::timeout(Duration::from_secs(5), st.accounting.monitor.drain()).await;
    // Every finished request is in the journal already; this moves it into the database.
    if let Some(l) = st.accounting.ledger.clone() {
        let _ = tokio::task::spawn_blocking(move || l.close()).await;
    }
    tracing::info!(uptime_s = started.elapsed().as_secs(), "server stopped");
    r
}

//! The HTTP API (axum): routes, shared state, the inference endpoints in three dialects
//! (OpenAI's chat and completions, its Responses API, Anthropic's Messages API), the ops
//! endpoints (`/health`, `/ready`, `/metrics`, `/v1/models`), OpenAI-shaped 404/405, CORS,
//! connection hygiene ([`conn`]: `Connection: close` after an unread body, `x-request-id` on
//! every answer, the open-file limit), and the server's lifecycle:
//! start, reload (keys and routes swapped without dropping streams), graceful shutdown.

pub mod auth;
pub mod batch;
mod conn;
pub mod dashboard;
mod framing;
mod listen;
pub mod error;
pub mod inference;
pub mod messages;
pub mod models;
mod ops;
mod render;
pub mod responses;
mod serve;
pub mod sse;
pub mod usage;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accounting::Accounting;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ServerConfig};
pub use crate::gateway::Live;
use crate::protocol::error::ApiError;
use crate::protocol::Endpoint;
pub use conn::raise_open_file_limit;
pub use serve::{serve, spawn, spawn_with_clock, Running};

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
    /// What `/metrics` serves: accounting's collectors, then the deployments' and canaries'.
    pub prometheus: crate::accounting::metrics::Registry,
    /// Stored Responses (`/v1/responses` with `store`).
    pub conversations: Arc<crate::conversation::Conversations>,
    /// The dashboard's logged-in sessions.
    pub dashboard: dashboard::Sessions,
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
        self.releases.configure(cfg).map_err(|e| e.to_string())?;
        let old = self.live();
        let routes =
            crate::router::build::build_routes(cfg, Some(&old.routes), self.clock.clone(), Some(&self.releases), &[])
                .await
                .map_err(|e| e.to_string())?;
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
        let routes = crate::router::build::build_routes(
            &old.config,
            Some(&old.routes),
            self.clock.clone(),
            Some(&self.releases),
            loaded,
        )
        .await
        .map_err(|e| e.to_string())?;
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
    let cluster = match &cfg.server.cluster {
        Some(c) => Some(crate::cluster::Cluster::connect(c).map_err(|e| anyhow::anyhow!(e))?),
        None => None,
    };
    let accounting = Arc::new(Accounting::new(cfg, clock.clone(), cluster.clone()));
    let releases =
        crate::release::Releases::open(cfg, Some(accounting.monitor.clone())).map_err(|e| anyhow::anyhow!(e))?;
    let routes = crate::router::build::build_routes(cfg, None, clock.clone(), Some(&releases), &[])
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let mut conversations = crate::conversation::Conversations::open(&cfg.server.data_dir, cfg.server.responses_ttl)
        .map_err(|e| anyhow::anyhow!(e))?;
    // Many replicas: a stored response is every replica's.
    if let (Some(_), Some(p)) = (&cfg.server.cluster, &cfg.server.postgres) {
        conversations = conversations.with_shared(crate::conversation::shared::SharedResponses::new(p));
    }
    let conversations = Arc::new(conversations);
    // Many replicas: batches are the replicas', run by all of them.
    let shared_batches = match (&cluster, &cfg.server.postgres) {
        (Some(c), Some(p)) => Some(crate::batch::shared::SharedBatches::new(
            p,
            c.replica.clone(),
            cfg.server.batch_lease,
            cfg.server.batch_concurrency,
        )),
        _ => None,
    };
    let st = Arc::new_cyclic(|me| AppState {
        prometheus: {
            let mut registry = crate::accounting::metrics::Registry::default();
            accounting.register_metrics(&mut registry);
            registry.register_collector(Box::new(ops::Gateway(me.clone())));
            registry
        },
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
        cache: crate::cache::ResponseCache::new(&cfg.server.cache, cluster.clone()),
        batches: crate::batch::Batches::open(
            &cfg.server.data_dir,
            cfg.server.files_dir.as_deref(),
            cfg.server.batch_concurrency,
            shared_batches,
        ),
        batch_tasks: TaskTracker::new(),
        batch_stop: CancellationToken::new(),
        created: crate::clock::now_s(),
        conversations,
        dashboard: dashboard::Sessions::default(),
    });
    // Many replicas: the release stages follow the shared store.
    // Joined before the first request, so that no change is made here alone (retried by the
    // follower when PostgreSQL is not there yet).
    if let (Some(c), Some(p)) = (&cluster, &cfg.server.postgres) {
        let store = Arc::new(crate::release::shared::SharedStore::new(p, c.clone()));
        if let Err(e) = st.releases.join(store.clone()).await {
            tracing::warn!("releases: cannot join the shared store yet ({e}); release changes wait for it");
        }
        models::follow(Arc::downgrade(&st), store);
    }
    Ok(st)
}

pub fn router(st: Arc<AppState>) -> Router {
    let mut r = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/responses", post(responses::create))
        .route("/v1/responses/{id}", get(responses::retrieve).delete(responses::delete))
        .route("/v1/responses/{id}/input_items", get(responses::input_items))
        .route("/v1/messages", post(messages::create))
        .route("/v1/messages/count_tokens", post(messages::count_tokens))
        .route("/v1/models", get(ops::models))
        .route("/v1/models/{*id}", get(ops::model))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
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
        .merge(dashboard::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(st.clone())
        .layer(axum::middleware::from_fn(conn::hygiene));
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

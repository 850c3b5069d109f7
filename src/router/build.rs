//! Turns checked configuration into live deployments: one backend per deployment, reusing
//! on reload every deployment whose settings did not change (its engine stays loaded, its
//! breaker keeps its state, its streams keep flowing). A registry deployment becomes one
//! deployment per version its model's stages name: production, the staging canary, and
//! the previous production version kept warm for a rollback.

use std::collections::HashMap;
use std::sync::Arc;

use crate::backend::ollama::OllamaBackend;
use crate::backend::openai::OpenAiBackend;
use crate::backend::{Backend, BackendError, BackendReply, BackendRequest, Priority, Unhealthy};
use crate::clock::Clock;
use crate::config::{Config, DeploymentConfig, DeploymentKind, RemoteConfig};
use crate::registry::{RegistryError, VersionMeta};
use crate::release::{ModelLive, Releases, VersionTag};
use crate::router::{Alias, Canary, Deployment, Routes};

/// Deployments already loaded, by name: reused when their settings are the same.
type Loaded = HashMap<String, Arc<Deployment>>;

/// Why the routes could not be built (at start, or on a reload: the old routes keep serving).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("deployment '{deployment}': {source}")]
    Deployment { deployment: String, source: LoadError },
    #[error("deployment '{0}': registry deployments need the release store")]
    NoReleaseStore(String),
    #[error("alias '{alias}': deployment '{deployment}': {source}")]
    Version { alias: String, deployment: String, source: VersionError },
}

/// Why one registry version could not take its place in the routes.
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    #[error("model '{0}' is not known")]
    UnknownModel(String),
    #[error(
        "model '{0}' has no production version: set `production` in its [[model]] entry in routes/, \
         or promote one with `tollgate models promote`"
    )]
    NoProduction(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{deployment}: not ready: {source}")]
    NotReady { deployment: String, source: SmokeError },
}

/// Why a deployment's backend could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[cfg(feature = "engine")]
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error("this build has no embedded engine (built without the `engine` feature)")]
    NoEngine,
    #[error(
        "{model}@{version}: the model file's SHA-256 is {got}, not the registered {want}: it changed since it was added"
    )]
    ChangedFile { model: String, version: String, got: String, want: String },
}

/// Why a loaded deployment failed its smoke test.
#[derive(Debug, thiserror::Error)]
pub enum SmokeError {
    #[error("health check failed: {0}")]
    Health(#[from] Unhealthy),
    #[error("health request: {0}")]
    Request(String),
    #[error("a stream answered a request for a whole body")]
    Streamed,
    #[error("test completion failed: {0:?}")]
    Completion(BackendError),
    #[error("no answer within {0} s")]
    Timeout(u64),
}

pub async fn build_routes(
    cfg: &Config,
    old: Option<&Routes>,
    clock: Arc<dyn Clock>,
    releases: Option<&Releases>,
    extra: &[Arc<Deployment>],
) -> Result<Routes, BuildError> {
    // Before any engine runs ggml (a no-op once decided: a reload cannot change it).
    #[cfg(feature = "engine")]
    crate::engine::decide_batch_invariant_matmul(
        cfg.aliases
            .iter()
            .flat_map(|a| &a.deployments)
            .any(|d| matches!(&d.kind, crate::config::DeploymentKind::Local(l) if l.deterministic)),
    );
    let mut existing: Loaded = HashMap::new();
    if let Some(old) = old {
        for a in old.aliases.values() {
            for d in a.all() {
                existing.insert(d.name().to_owned(), d.clone());
            }
        }
    }
    for d in extra {
        existing.insert(d.name().to_owned(), d.clone());
    }
    let mut routes = Routes::default();
    for a in &cfg.aliases {
        let mut deployments = Vec::new();
        let mut canary = None;
        let mut standby = Vec::new();
        for d in &a.deployments {
            let Some(r) = &d.release else {
                let dep = match existing.get(&d.name) {
                    Some(old) if old.cfg == *d => old.clone(),
                    _ => {
                        let backend = backend(d, cfg)
                            .await
                            .map_err(|source| BuildError::Deployment { deployment: d.name.clone(), source })?;
                        let dep = Arc::new(Deployment::new(d.clone(), backend, clock.clone()));
                        existing.insert(d.name.clone(), dep.clone());
                        dep
                    }
                };
                deployments.push(dep);
                continue;
            };
            let Some(rel) = releases else {
                return Err(BuildError::NoReleaseStore(d.name.clone()));
            };
            let at = |source| BuildError::Version { alias: a.name.clone(), deployment: d.name.clone(), source };
            // On a reload, a version loaded now is tested before it takes traffic (at start,
            // nothing is served before the routes are built).
            let ctx = VersionCtx { cfg, rel, clock: &clock, test_new: old.is_some() };
            let Some(version) = &r.version else {
                let live = rel.model(&r.model).ok_or_else(|| at(VersionError::UnknownModel(r.model.clone())))?;
                let st = live.stages();
                let prod = st.production.clone().ok_or_else(|| at(VersionError::NoProduction(r.model.clone())))?;
                let pdep = version_dep(&ctx, d, &prod, Some(&live), &mut existing).await.map_err(at)?;
                deployments.push(pdep.clone());
                if let Some(sv) = st.staging.as_ref().filter(|_| canary.is_none()) {
                    let sdep = version_dep(&ctx, d, sv, Some(&live), &mut existing).await.map_err(at)?;
                    canary = Some(Canary { staging: sdep, production: pdep, live: live.clone() });
                }
                if let Some(pv) = st.previous.as_ref().filter(|p| Some(*p) != st.staging.as_ref() && **p != prod) {
                    // The rollback target: loaded now, so that a rollback is one step. One that
                    // cannot be loaded any more only costs that step.
                    match version_dep(&ctx, d, pv, Some(&live), &mut existing).await {
                        Ok(dep) => standby.push(dep),
                        Err(e) => tracing::warn!(model = %r.model, version = %pv, "rollback target not loaded: {e}"),
                    }
                }
                continue;
            };
            deployments.push(version_dep(&ctx, d, version, None, &mut existing).await.map_err(at)?);
        }
        routes.order.push(a.name.clone());
        routes.aliases.insert(
            a.name.clone(),
            Arc::new(Alias {
                name: a.name.clone(),
                description: a.description.clone(),
                deployments,
                affinity: a.prefix_affine.then_some(a.load_factor),
                auto: a.router.clone(),
                canary,
                standby,
                guardrails: a.guardrails.clone(),
            }),
        );
    }
    Ok(routes)
}

struct VersionCtx<'a> {
    cfg: &'a Config,
    rel: &'a Releases,
    clock: &'a Arc<dyn Clock>,
    /// Test a version loaded now before it takes traffic.
    test_new: bool,
}

/// One registry version under a registry deployment's settings, reused when loaded already.
async fn version_dep(
    ctx: &VersionCtx<'_>,
    template: &DeploymentConfig,
    version: &str,
    live: Option<&Arc<ModelLive>>,
    existing: &mut Loaded,
) -> Result<Arc<Deployment>, VersionError> {
    let model = template.release.as_ref().map(|r| r.model.as_str()).unwrap_or_default();
    let meta = ctx.rel.registry.get(model, version)?;
    let dc = version_config(template, &meta, ctx.rel);
    if let Some(d) = existing.get(&dc.name).filter(|d| d.cfg == dc) {
        return Ok(d.clone());
    }
    let dep = load_version(ctx.cfg, dc, &meta, live.cloned(), ctx.clock.clone()).await?;
    if ctx.test_new {
        smoke_test(&dep)
            .await
            .map_err(|source| VersionError::NotReady { deployment: dep.name().to_owned(), source })?;
    }
    existing.insert(dep.name().to_owned(), dep.clone());
    Ok(dep)
}

/// The deployment settings of one version: `<deployment>@<version>`, a GGUF version on the
/// local engine with the template's settings, a remote version at its endpoint.
pub fn version_config(template: &DeploymentConfig, meta: &VersionMeta, rel: &Releases) -> DeploymentConfig {
    let mut dc = template.clone();
    dc.name = format!("{}@{}", template.name, meta.version);
    if let Some(r) = &mut dc.release {
        r.version = Some(meta.version.clone());
    }
    match (&meta.endpoint, rel.registry.gguf_path(meta)) {
        (Some(e), _) => {
            let r = template.release.as_ref();
            let remote = RemoteConfig {
                base_url: e.base_url.trim_end_matches('/').to_owned(),
                model: e.model.clone(),
                api_key: r.and_then(|r| r.api_key.clone()),
                max_tokens_field: r.map(|r| r.max_tokens_field.clone()).unwrap_or_else(|| "max_tokens".into()),
                headers: r.map(|r| r.headers.clone()).unwrap_or_default(),
                // A registry version is served by translation.
                responses_passthrough: false,
                ca_file: None,
            };
            dc.kind = if e.kind == "ollama" { DeploymentKind::Ollama(remote) } else { DeploymentKind::OpenAi(remote) };
        }
        (None, Some(path)) => {
            if let DeploymentKind::Local(l) = &mut dc.kind {
                l.path = path;
                l.sessions_dir = l.sessions_dir.as_ref().and_then(|s| s.parent()).map(|p| p.join(&dc.name));
            }
        }
        (None, None) => {}
    }
    dc
}

/// Loads a version (a local model is read, its context made and `prompts/` prefilled).
pub async fn load_version(
    cfg: &Config,
    dc: DeploymentConfig,
    meta: &VersionMeta,
    live: Option<Arc<ModelLive>>,
    clock: Arc<dyn Clock>,
) -> Result<Arc<Deployment>, LoadError> {
    let backend = backend(&dc, cfg).await?;
    // The file must still be the one registered (a hard-linked source edited in place is not).
    let loaded_sha =
        backend.info().and_then(|i| i.get("sha256").and_then(serde_json::Value::as_str).map(str::to_owned));
    if let (Some(got), Some(want)) = (&loaded_sha, &meta.sha256) {
        if got != want {
            return Err(LoadError::ChangedFile {
                model: meta.name.clone(),
                version: meta.version.clone(),
                got: got.clone(),
                want: want.clone(),
            });
        }
    }
    let tag = VersionTag { model: meta.name.clone(), version: meta.version.clone(), sha256: meta.sha256.clone(), live };
    Ok(Arc::new(Deployment::new(dc, backend, clock).with_version(tag)))
}

/// Proves a loaded deployment answers: its health check, then a one-token chat completion.
pub async fn smoke_test(dep: &Deployment) -> Result<(), SmokeError> {
    let limit = dep.cfg.request_timeout.min(std::time::Duration::from_secs(120));
    tokio::time::timeout(limit, async {
        dep.backend.health().await?;
        let body = br#"{"model":"health","messages":[{"role":"user","content":"Hello"}],"max_tokens":1}"#;
        let req = crate::protocol::validate(crate::protocol::Endpoint::Chat, body)
            .map_err(|e| SmokeError::Request(e.message))?;
        let br = BackendRequest {
            req: Arc::new(req),
            request_id: format!("health-{}", uuid::Uuid::new_v4().simple()),
            traceparent: None,
            priority: Priority::Interactive,
            fingerprint: 0,
            session: None,
            seed: 0,
            native: None,
        };
        match dep.backend.call(br).await {
            Ok(BackendReply::Full { .. }) => Ok(()),
            Ok(BackendReply::Stream(_)) => Err(SmokeError::Streamed),
            Err(e) => Err(SmokeError::Completion(e)),
        }
    })
    .await
    .map_err(|_| SmokeError::Timeout(limit.as_secs()))?
}

#[cfg_attr(not(feature = "engine"), allow(unused_variables))]
async fn backend(d: &DeploymentConfig, cfg: &Config) -> Result<Arc<dyn Backend>, LoadError> {
    match &d.kind {
        DeploymentKind::OpenAi(r) => Ok(Arc::new(OpenAiBackend::new(d, r.clone()))),
        DeploymentKind::Ollama(r) => Ok(Arc::new(OllamaBackend::new(d, r.clone()))),
        #[cfg(feature = "engine")]
        DeploymentKind::Local(l) => {
            let b = crate::engine::LocalBackend::start(d, l).await?;
            b.warm_prompts(&cfg.prompts).await;
            Ok(b as Arc<dyn Backend>)
        }
        #[cfg(not(feature = "engine"))]
        DeploymentKind::Local(_) => Err(LoadError::NoEngine),
    }
}

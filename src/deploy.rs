//! Turns checked configuration into live deployments: one backend per deployment, reusing
//! on reload every deployment whose settings did not change (its engine stays loaded, its
//! breaker keeps its state, its streams keep flowing).

use std::collections::HashMap;
use std::sync::Arc;

use crate::backend::ollama::OllamaBackend;
use crate::backend::openai::OpenAiBackend;
use crate::backend::Backend;
use crate::config::{Config, DeploymentConfig, DeploymentKind};
use crate::router::{Alias, Clock, Deployment, Routes};

pub async fn build_routes(cfg: &Config, old: Option<&Routes>, clock: Arc<dyn Clock>) -> Result<Routes, String> {
    let mut existing: HashMap<String, Arc<Deployment>> = HashMap::new();
    if let Some(old) = old {
        for a in old.aliases.values() {
            for d in &a.deployments {
                existing.insert(d.name().to_owned(), d.clone());
            }
        }
    }
    let mut routes = Routes::default();
    for a in &cfg.aliases {
        let mut deployments = Vec::new();
        for d in &a.deployments {
            let dep = match existing.get(&d.name) {
                Some(old) if old.cfg == *d => old.clone(),
                _ => {
                    let backend = backend(d, cfg).await.map_err(|e| format!("deployment '{}': {e}", d.name))?;
                    let dep = Arc::new(Deployment::new(d.clone(), backend, clock.clone()));
                    existing.insert(d.name.clone(), dep.clone());
                    dep
                }
            };
            deployments.push(dep);
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
            }),
        );
    }
    Ok(routes)
}

#[cfg_attr(not(feature = "engine"), allow(unused_variables))]
async fn backend(d: &DeploymentConfig, cfg: &Config) -> Result<Arc<dyn Backend>, String> {
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
        DeploymentKind::Local(_) => {
            Err("this build has no embedded engine (built without the `engine` feature)".into())
        }
    }
}

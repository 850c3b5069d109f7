//! Routing: model alias → one deployment, with concurrency permits, retries with backoff,
//! fallback along the alias's ordered deployments, and a circuit breaker per deployment.
//!
//! The algorithm for one request:
//! 1. Walk the alias's deployments in their declared order (or prefix-affine order), with a
//!    registry model's canary version ahead of its production version for the identities
//!    the canary's weight covers (`crate::release`). Skip one whose breaker is open.
//! 2. Take a concurrency permit without waiting; a deployment at its limit is skipped (it is
//!    "full"). The permit travels with the response and is released only when the whole
//!    stream has been delivered or dropped.
//! 3. Call the backend. For a stream, the call is committed only when its first event has
//!    arrived within `first_token_timeout`: until then nothing has reached the client, so
//!    a failure may still be retried. Retry (same deployment, up to `max_retries`, with
//!    exponential backoff and full jitter, honouring an upstream `retry-after` up to
//!    [`MAX_RETRY_AFTER`]) on connect errors, timeouts, 429 and 5xx; then fall back to the
//!    next deployment.
//! 4. A client error from the upstream (4xx other than 429), or a request the backend
//!    rejects, ends the walk at once: another deployment would say the same.
//! 5. If every deployment was full, the client gets a 429 with `retry-after` at once.
//!
//! Breaker: `FAILURE_THRESHOLD` consecutive failures (5xx, timeouts, connection errors)
//! open it for `OPEN_FOR`; then one probe request is let through (half-open): success
//! closes it, failure opens it again.

pub mod breaker;
pub mod build;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rand::Rng;
use serde_json::Map;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::backend::{Backend, BackendError, BackendReply, BackendRequest, Chunk, EventStream, Priority};
use crate::clock::Clock;
use crate::config::DeploymentConfig;
use crate::protocol::error::ApiError;
use crate::protocol::Usage;
pub use breaker::Breaker;

pub const FAILURE_THRESHOLD: u32 = 5;
pub const OPEN_FOR: Duration = Duration::from_secs(10);
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);
const BACKOFF_BASE: Duration = Duration::from_millis(50);
const BACKOFF_CAP: Duration = Duration::from_secs(2);

/// A deployment: one backend, its limits and its health.
pub struct Deployment {
    pub cfg: DeploymentConfig,
    pub backend: Arc<dyn Backend>,
    pub permits: Arc<Semaphore>,
    /// Batch requests in flight at once, within `permits` (`batch_concurrency`).
    pub batch_permits: Arc<Semaphore>,
    pub breaker: Breaker,
    /// Requests in flight (for metrics and load-aware choices).
    pub in_flight: AtomicU64,
    /// The registry version this deployment serves, if it serves one.
    pub version: Option<Arc<crate::release::VersionTag>>,
    /// The model file's SHA-256 (a local engine's), looked up once.
    sha256: std::sync::OnceLock<Option<String>>,
}

impl Deployment {
    pub fn new(cfg: DeploymentConfig, backend: Arc<dyn Backend>, clock: Arc<dyn Clock>) -> Self {
        Deployment {
            permits: Arc::new(Semaphore::new(cfg.max_concurrency)),
            batch_permits: Arc::new(Semaphore::new(cfg.batch_concurrency.max(1))),
            cfg,
            backend,
            breaker: Breaker::new(clock),
            in_flight: AtomicU64::new(0),
            version: None,
            sha256: std::sync::OnceLock::new(),
        }
    }

    pub fn with_version(mut self, tag: crate::release::VersionTag) -> Self {
        self.version = Some(Arc::new(tag));
        self
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Requests holding one of its concurrency permits now.
    pub fn in_flight(&self) -> usize {
        self.cfg.max_concurrency - self.permits.available_permits()
    }

    /// Its upstream speaks the Responses API itself (`responses = "passthrough"`).
    pub fn passes_responses_through(&self) -> bool {
        matches!(&self.cfg.kind, crate::config::DeploymentKind::OpenAi(r) if r.responses_passthrough)
    }

    /// The model file's SHA-256: the local engine's, else the registry's; `None` for a remote
    /// model the registry does not hold.
    pub fn model_sha256(&self) -> Option<&str> {
        self.sha256
            .get_or_init(|| {
                // The engine's own hash of what it loaded, else the registry's record.
                let info = self.backend.info();
                let loaded = info.as_ref().and_then(|i| i.get("sha256")).and_then(serde_json::Value::as_str);
                loaded.map(str::to_owned).or_else(|| self.version.as_ref().and_then(|v| v.sha256.clone()))
            })
            .as_deref()
    }

    fn observe_failure(&self) {
        if let Some(v) = &self.version {
            v.observe_failure();
        }
    }
}

/// A registry model's canary within an alias: the staging version's deployment, which
/// answers (ahead of production, which stays its fallback) the identities its weight covers.
pub struct Canary {
    pub staging: Arc<Deployment>,
    /// The production deployment it stands in front of.
    pub production: Arc<Deployment>,
    pub live: Arc<crate::release::ModelLive>,
}

pub struct Alias {
    pub name: String,
    pub description: Option<String>,
    pub deployments: Vec<Arc<Deployment>>,
    /// Prefix-affine routing over replicas (see `crate::policy::affinity`), with its load factor;
    /// `None`: the declared order.
    pub affinity: Option<f64>,
    /// A small-model router: requests go to one of two other aliases (`crate::policy::smallroute`).
    pub auto: Option<crate::config::AutoRouterConfig>,
    /// A registry model's canary, when one has a staging version.
    pub canary: Option<Canary>,
    /// Loaded and warm but given no traffic: the previous production version, the target of
    /// a one-step rollback.
    pub standby: Vec<Arc<Deployment>>,
    /// The alias's scope of the guardrails policy.
    pub guardrails: Option<crate::guardrails::Scope>,
}

impl Alias {
    /// Does this identity's request go to the alias's canary?
    pub fn picks_canary(&self, identity: &str) -> Option<&Arc<Deployment>> {
        self.canary.as_ref().filter(|c| c.live.canary_for(identity)).map(|c| &c.staging)
    }

    /// Every deployment that takes traffic, the canary's included.
    pub fn routed(&self) -> impl Iterator<Item = &Arc<Deployment>> {
        self.deployments.iter().chain(self.canary.as_ref().map(|c| &c.staging))
    }

    /// Every deployment this alias holds loaded (standby versions too).
    pub fn all(&self) -> impl Iterator<Item = &Arc<Deployment>> {
        self.routed().chain(&self.standby)
    }

    /// The deployments in the order to try them: for a request with this fingerprint, and
    /// (when it picked the canary) the canary ahead of the production version.
    pub fn order_for(&self, fingerprint: u64, canary: bool) -> Vec<Arc<Deployment>> {
        let mut v = self.order(fingerprint);
        if let (true, Some(c)) = (canary, &self.canary) {
            let at = v.iter().position(|d| Arc::ptr_eq(d, &c.production)).unwrap_or(0);
            v.insert(at, c.staging.clone());
        }
        v
    }

    /// The deployments in the order to try them for a request with this fingerprint.
    pub fn order(&self, fingerprint: u64) -> Vec<Arc<Deployment>> {
        let Some(factor) = self.affinity else { return self.deployments.clone() };
        let names: Vec<&str> = self.deployments.iter().map(|d| d.name()).collect();
        let loads: Vec<u64> = self.deployments.iter().map(|d| d.in_flight() as u64).collect();
        crate::policy::affinity::order(&names, &loads, fingerprint, factor)
            .into_iter()
            .map(|i| self.deployments[i].clone())
            .collect()
    }
}

/// The routing table: swapped whole on reload, so a request sees one consistent version.
#[derive(Default)]
pub struct Routes {
    pub aliases: HashMap<String, Arc<Alias>>,
    /// Alias names in declared order, for listings.
    pub order: Vec<String>,
}

impl Routes {
    pub fn get(&self, name: &str) -> Option<&Arc<Alias>> {
        self.aliases.get(name)
    }
}

/// A request that has a deployment and whose first byte is ready.
pub struct Dispatched {
    pub deployment: Arc<Deployment>,
    pub permit: OwnedSemaphorePermit,
    /// Held by a batch request: its deployment's batch slot.
    pub batch_permit: Option<OwnedSemaphorePermit>,
    pub attempts: u32,
    pub reply: Committed,
}

pub enum Committed {
    Full {
        body: Map<String, serde_json::Value>,
        usage: Option<Usage>,
        /// The upstream's bytes of `body`, while they may go to the client as they are.
        raw: Option<bytes::Bytes>,
    },
    /// The first chunk, already received, and the rest of the stream.
    Stream { first: Box<Chunk>, rest: EventStream },
}

/// The outcome of a walk that produced no response.
pub struct Failed {
    pub error: ApiError,
    pub deployment: Option<String>,
    pub attempts: u32,
}

/// Walks `ordered`: the alias's deployments in the order chosen for this request
/// ([`Alias::order_for`]).
pub async fn dispatch(
    alias: &Alias,
    ordered: Vec<Arc<Deployment>>,
    req: &BackendRequest,
) -> Result<Dispatched, Failed> {
    let mut attempts = 0;
    let mut last: Option<(String, BackendError)> = None;
    let mut skipped_open = 0;
    // A batch request waits (without spinning) for a batch slot on any of its deployments
    // when all are taken, then takes that deployment first.
    let mut waited: Option<(usize, OwnedSemaphorePermit)> = None;
    if req.priority == Priority::Batch
        && !ordered.is_empty()
        && ordered.iter().all(|d| d.batch_permits.available_permits() == 0)
    {
        let waits = ordered.iter().map(|d| Box::pin(d.batch_permits.clone().acquire_owned()));
        if let (Ok(p), i, _) = futures::future::select_all(waits).await {
            waited = Some((i, p));
        }
    }
    for (di, dep) in ordered.iter().enumerate() {
        // A batch request takes one of the deployment's batch slots first: batch work never
        // holds more than its share, whatever the runner's own concurrency.
        let pre = match &waited {
            Some((i, _)) if *i == di => waited.take().map(|(_, p)| p),
            _ => None,
        };
        let batch_permit = match req.priority {
            Priority::Batch if pre.is_some() => pre,
            Priority::Batch => match dep.batch_permits.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    last = last.or(Some((dep.name().to_owned(), BackendError::Full)));
                    continue;
                }
            },
            Priority::Interactive => None,
        };
        let Ok(permit) = dep.permits.clone().try_acquire_owned() else {
            continue;
        };
        // Asked only with a permit in hand, so a half-open probe is always really sent.
        if !dep.breaker.allow() {
            // A version that cannot be asked has failed the request it was chosen for.
            dep.observe_failure();
            skipped_open += 1;
            continue;
        }
        let mut tries = 0;
        loop {
            attempts += 1;
            tries += 1;
            match attempt(dep, req).await {
                Ok(reply) => {
                    dep.breaker.success();
                    return Ok(Dispatched { deployment: dep.clone(), permit, batch_permit, attempts, reply });
                }
                Err(e) => {
                    if e.counts_against_breaker() {
                        dep.breaker.failure();
                        dep.observe_failure();
                    } else {
                        dep.breaker.release_probe();
                    }
                    tracing::debug!(deployment = dep.name(), error = ?e, "attempt failed");
                    if !e.retryable() {
                        if matches!(e, BackendError::Full) {
                            last = last.or(Some((dep.name().to_owned(), e)));
                            break;
                        }
                        return Err(Failed {
                            error: e.to_api(dep.name()),
                            deployment: Some(dep.name().to_owned()),
                            attempts,
                        });
                    }
                    let wait = match &e {
                        BackendError::Status { retry_after: Some(ra), .. } if *ra > MAX_RETRY_AFTER => None,
                        BackendError::Status { retry_after: Some(ra), .. } => Some(*ra),
                        _ => Some(backoff(tries)),
                    };
                    last = Some((dep.name().to_owned(), e));
                    match wait {
                        Some(w) if tries <= dep.cfg.max_retries && dep.breaker.allow_retry() => {
                            tokio::time::sleep(w).await
                        }
                        _ => break,
                    }
                }
            }
        }
    }
    let error = match &last {
        Some((_, BackendError::Full)) => ApiError::overloaded(&alias.name, 1),
        Some((name, e)) => e.to_api(name),
        None if skipped_open > 0 && skipped_open == ordered.len() => {
            let mut e = ApiError::unavailable(format!(
                "Every deployment of '{}' is failing; it is being probed and will be retried.",
                alias.name
            ));
            e.retry_after = Some(OPEN_FOR.as_secs() as u32);
            e
        }
        None => ApiError::overloaded(&alias.name, 1),
    };
    Err(Failed { error, deployment: last.map(|(n, _)| n), attempts })
}

fn backoff(try_no: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1 << try_no.min(10)).min(BACKOFF_CAP);
    let jitter = rand::rng().random_range(0.5..=1.0);
    exp.mul_f64(jitter)
}

/// One call; for a stream, wait (bounded) for its first event before committing.
async fn attempt(dep: &Deployment, req: &BackendRequest) -> Result<Committed, BackendError> {
    // A stream commits at its first event; a whole body may take the whole generation.
    let timeout = if req.req.stream { dep.cfg.first_token_timeout } else { dep.cfg.request_timeout };
    let fut = async {
        match dep.backend.call(req.clone()).await? {
            BackendReply::Full { body, usage, raw } => Ok(Committed::Full { body, usage, raw }),
            BackendReply::Stream(mut s) => match s.next().await {
                Some(Ok(first)) => Ok(Committed::Stream { first: Box::new(first), rest: s }),
                Some(Err(e)) => Err(e),
                None => Err(BackendError::Protocol("the stream ended without an event".into())),
            },
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) if req.req.stream => {
            Err(BackendError::Timeout(format!("no first token within {} ms", timeout.as_millis())))
        }
        Err(_) => Err(BackendError::Timeout(format!("no response within {} ms", timeout.as_millis()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) <= BACKOFF_BASE * 2);
        assert!(backoff(30) <= BACKOFF_CAP);
    }
}

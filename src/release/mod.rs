//! Model releases: which registry version of a model answers (production, and a staging
//! canary by its weight), the sticky assignment of identities to the canary, the canary's
//! comparison with production and its automatic rollback, and the durable record of every
//! change ([`store`]). Loading a version and swapping it into the routes is the work of the
//! layers above (the router's `build` and the admin API's `models`); this module owns the
//! state and its rules.
//!
//! Sticky assignment: an identity (the `x-session-id`, else the request's `user`, else the
//! API key) hashes with the model's name to a bucket in 0..10,000; the canary answers the
//! buckets below its weight in basis points. One identity therefore sees one version, the
//! weight applies across identities, and raising the weight only adds identities to the
//! canary (none moves back).
//!
//! Automatic rollback: every request a version answers (or fails, attempt by attempt) is
//! kept in a window of its last [`WINDOW`] outcomes, from the moment the canary started.
//! Once the canary has `min_requests` of them, it is rolled back (weight 0) when its error
//! rate exceeds production's by `error_rate_margin`, or its p95 latency exceeds
//! production's by `p95_margin` (a fraction); an alert fires and the audit record says why.
//!
//! Many replicas (`[cluster]`): the stages and the audit trail live in PostgreSQL
//! ([`shared`]); a change is written there first, then made live here and announced, and the
//! other replicas adopt it ([`Releases::adopt`], driven by the admin API's follower).

mod error;
pub mod shared;
pub mod store;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use serde_json::json;

use crate::accounting::RequestRecord;
use crate::clock::now_ms;
use crate::config::{Config, ModelConfig, RollbackPolicy};
use crate::registry::Registry;
pub use error::ReleaseError;
pub use store::{AuditAction, AuditEntry, Change, Stages, Store};

/// Outcomes kept per version for the canary comparison.
use crate::config::ROLLBACK_WINDOW as WINDOW;
const BUCKETS: u64 = 10_000;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The identity's bucket for a model, in 0..10,000.
pub fn bucket(model: &str, identity: &str) -> u64 {
    let h = crate::config::sha256(format!("{model}\u{0}{identity}").as_bytes());
    u64::from_be_bytes(h[..8].try_into().unwrap_or_default()) % BUCKETS
}

/// Percent → basis points, clamped.
fn basis_points(weight: f64) -> u32 {
    (weight.clamp(0.0, 100.0) * 100.0).round() as u32
}

#[derive(Default)]
struct Side {
    /// (error, latency in ms for a success)
    outcomes: VecDeque<(bool, Option<f64>)>,
}

impl Side {
    fn push(&mut self, error: bool, latency: Option<f64>) {
        if self.outcomes.len() == WINDOW {
            self.outcomes.pop_front();
        }
        self.outcomes.push_back((error, latency));
    }
    fn len(&self) -> u64 {
        self.outcomes.len() as u64
    }
    fn error_rate(&self) -> f64 {
        if self.outcomes.is_empty() {
            return 0.0;
        }
        self.outcomes.iter().filter(|o| o.0).count() as f64 / self.outcomes.len() as f64
    }
    /// p95 of successful latencies (nearest rank) and how many there were.
    fn p95(&self) -> (Option<f64>, u64) {
        use crate::accounting::percentile::{nearest_rank, P95};
        let mut v: Vec<f64> = self.outcomes.iter().filter_map(|o| o.1).collect();
        let p95 = nearest_rank(&mut v, [P95]).map(|[p]| p);
        (p95, v.len() as u64)
    }
}

#[derive(Default)]
struct Compare {
    canary: Side,
    production: Side,
}

/// One registry model, live: its stages, its canary weight (read by every request), its
/// rollback policy and the comparison behind it.
pub struct ModelLive {
    pub name: String,
    stages: RwLock<Stages>,
    weight_bp: AtomicU32,
    policy: RwLock<RollbackPolicy>,
    compare: Mutex<Compare>,
    owner: Weak<Releases>,
}

impl ModelLive {
    pub fn stages(&self) -> Stages {
        let mut s = self.stages.read().unwrap_or_else(|p| p.into_inner()).clone();
        s.canary_weight = f64::from(self.weight_bp.load(Ordering::Relaxed)) / 100.0;
        s
    }

    /// Does this identity's request go to the canary? A request with no identity (an open
    /// gateway, no session, no `user`) is drawn on its own, so the weight still holds.
    pub fn canary_for(&self, identity: &str) -> bool {
        let bp = self.weight_bp.load(Ordering::Relaxed);
        let b = if identity.is_empty() { rand::random::<u64>() % BUCKETS } else { bucket(&self.name, identity) };
        bp > 0 && b < u64::from(bp)
    }

    /// Makes `stages` live. The comparison starts again when the canary or production
    /// changes, or when a canary at weight 0 (rolled back) is given traffic again.
    fn set(&self, stages: &Stages) {
        let mut cur = self.stages.write().unwrap_or_else(|p| p.into_inner());
        let canary_changed = cur.staging != stages.staging || cur.production != stages.production;
        *cur = stages.clone();
        let bp = if stages.staging.is_some() { basis_points(stages.canary_weight) } else { 0 };
        let resumed = self.weight_bp.swap(bp, Ordering::Relaxed) == 0 && bp > 0;
        if canary_changed || resumed {
            *lock(&self.compare) = Compare::default();
        }
    }

    /// Sets the canary's weight to 0 if `version` is still the canary and still has traffic:
    /// the new stages, or `None` when another change came first.
    fn stop_canary(&self, version: &str) -> Option<Stages> {
        let mut s = self.stages.write().unwrap_or_else(|p| p.into_inner());
        if s.staging.as_deref() != Some(version) || self.weight_bp.swap(0, Ordering::Relaxed) == 0 {
            return None;
        }
        s.canary_weight = 0.0;
        Some(s.clone())
    }

    /// One outcome of a request this model's `version` answered or failed.
    fn observe(&self, version: &str, error: bool, latency_ms: Option<f64>) {
        let (is_canary, is_prod) = {
            let s = self.stages.read().unwrap_or_else(|p| p.into_inner());
            (s.staging.as_deref() == Some(version), s.production.as_deref() == Some(version))
        };
        if !is_canary && !is_prod {
            return;
        }
        let policy = *self.policy.read().unwrap_or_else(|p| p.into_inner());
        let verdict = {
            let mut c = lock(&self.compare);
            if is_canary {
                c.canary.push(error, latency_ms);
            } else {
                c.production.push(error, latency_ms);
            }
            if !is_canary || !policy.enabled || self.weight_bp.load(Ordering::Relaxed) == 0 {
                return;
            }
            judge(&c, &policy)
        };
        if let Some(v) = verdict {
            match self.owner.upgrade() {
                Some(owner) => owner.auto_rollback(self, version, v),
                None => {
                    self.stop_canary(version);
                }
            }
        }
    }
}

/// Why a canary must be rolled back: the reason in words, the measured value against its
/// threshold (the alert's), and every measurement (the audit record's).
struct Verdict {
    why: String,
    value: f64,
    threshold: f64,
    requests: u64,
    detail: serde_json::Value,
}

/// The canary against production under the policy: why it must be rolled back, if it must.
fn judge(c: &Compare, p: &RollbackPolicy) -> Option<Verdict> {
    let n = c.canary.len();
    if n < p.min_requests {
        return None;
    }
    let (cr, pr) = (c.canary.error_rate(), c.production.error_rate());
    if cr - pr > p.error_rate_margin {
        let why = format!(
            "canary error rate {:.1}% over {n} requests exceeds production's {:.1}% over {} by more than {:.1} points (counted per attempt)",
            cr * 100.0,
            pr * 100.0,
            c.production.len(),
            p.error_rate_margin * 100.0
        );
        let detail = json!({"canary_error_rate": cr, "production_error_rate": pr, "canary_requests": n,
            "production_requests": c.production.len(), "error_rate_margin": p.error_rate_margin});
        return Some(Verdict { why, value: cr, threshold: p.error_rate_margin, requests: n, detail });
    }
    let ((cp, cn), (pp, pn)) = (c.canary.p95(), c.production.p95());
    if let (Some(cp), Some(pp)) = (cp, pp) {
        if cn >= p.min_requests && pn >= p.min_requests && cp > pp * (1.0 + p.p95_margin) {
            let why = format!(
                "canary p95 latency {cp:.0} ms over {cn} requests exceeds production's {pp:.0} ms over {pn} by more than {:.0}%",
                p.p95_margin * 100.0
            );
            let detail = json!({"canary_p95_ms": cp, "production_p95_ms": pp, "canary_requests": cn,
                "production_requests": pn, "p95_margin": p.p95_margin});
            return Some(Verdict { why, value: cp, threshold: p.p95_margin, requests: cn, detail });
        }
    }
    None
}

/// What a version deployment carries: which version it is, and where its outcomes go.
pub struct VersionTag {
    pub model: String,
    pub version: String,
    pub sha256: Option<String>,
    /// The model's live state, for a version that follows stages (not a pinned one).
    pub live: Option<Arc<ModelLive>>,
}

impl std::fmt::Debug for VersionTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.model, self.version)
    }
}

impl VersionTag {
    /// `NAME@X.Y.Z`.
    pub fn label(&self) -> String {
        format!("{}@{}", self.model, self.version)
    }

    /// An attempt on this version failed before anything reached the client (or its
    /// breaker is open, so it could not be asked).
    pub fn observe_failure(&self) {
        if let Some(l) = &self.live {
            l.observe(&self.version, true, None);
        }
    }
}

impl crate::accounting::VersionOutcome for VersionTag {
    /// A request this version answered has ended. Its latency counts only when this version
    /// answered at the first attempt (a fallback's time includes another version's failure).
    fn observe(&self, rec: &RequestRecord) {
        if let Some(l) = &self.live {
            let error = crate::accounting::monitor::is_error(rec);
            l.observe(&self.version, error, (!error && rec.attempts <= 1).then_some(rec.total_ms));
        }
    }
}

/// Every registry model's live state, the store behind it, and the alerts it raises.
pub struct Releases {
    pub registry: Registry,
    store: Mutex<Store>,
    models: RwLock<HashMap<String, Arc<ModelLive>>>,
    /// One change at a time (a promotion loads a model: seconds).
    pub ops: tokio::sync::Mutex<()>,
    monitor: Option<Arc<crate::accounting::monitor::Monitor>>,
    pub auto_rollbacks: AtomicU64,
    /// The shared store, once joined ([`Releases::join`]).
    shared: std::sync::OnceLock<Arc<shared::SharedStore>>,
    /// A shared store is configured: until it is joined, changes are refused (a change
    /// made here alone would be undone by the store's stages when it is joined).
    expects_shared: std::sync::atomic::AtomicBool,
}

/// Stages as they are kept live (the weight in whole basis points), so that stages read
/// from a store compare equal to the live ones.
pub fn normal(s: &Stages) -> Stages {
    let mut s = s.clone();
    s.canary_weight = f64::from(basis_points(s.canary_weight)) / 100.0;
    s
}

impl Releases {
    /// Opens the store under the data directory and brings every `[[model]]` of the
    /// configuration live: with its stored stages, or (the first time) with the stages
    /// `routes/` declares, recorded as a `seed` change.
    pub fn open(
        cfg: &Config,
        monitor: Option<Arc<crate::accounting::monitor::Monitor>>,
    ) -> Result<Arc<Releases>, ReleaseError> {
        let store = Store::open(&cfg.server.data_dir.join("releases.sqlite"))?;
        let r = Arc::new(Releases {
            registry: Registry::new(cfg.server.registry_dir.clone()),
            store: Mutex::new(store),
            models: RwLock::new(HashMap::new()),
            ops: tokio::sync::Mutex::new(()),
            monitor,
            auto_rollbacks: AtomicU64::new(0),
            shared: std::sync::OnceLock::new(),
            expects_shared: std::sync::atomic::AtomicBool::new(false),
        });
        r.configure(cfg)?;
        Ok(r)
    }

    /// Applies a (re)loaded configuration: new models are seeded, policies updated. Stored
    /// stages win over `routes/` (see [`Releases::drift`]).
    pub fn configure(self: &Arc<Self>, cfg: &Config) -> Result<(), ReleaseError> {
        // The store's lock is held throughout: no change lands between reading and applying.
        let mut store = lock(&self.store);
        let stored = store.all()?;
        let mut names: Vec<(&str, Option<&ModelConfig>)> =
            cfg.models.iter().map(|m| (m.name.as_str(), Some(m))).collect();
        // A model that deployments follow without a `[[model]]` entry lives on its store state.
        for a in &cfg.aliases {
            for d in &a.deployments {
                if let Some(r) = d.release.as_ref().filter(|r| r.version.is_none()) {
                    if !names.iter().any(|(n, _)| *n == r.model) {
                        names.push((r.model.as_str(), None));
                    }
                }
            }
        }
        for (name, mc) in names {
            let stages = match (stored.get(name), mc) {
                (Some(s), _) => s.clone(),
                (None, Some(m)) => {
                    let s = declared(m);
                    let entry = AuditEntry {
                        id: 0,
                        at_ms: now_ms(),
                        model: name.to_owned(),
                        action: AuditAction::Seed,
                        version: s.production.clone(),
                        actor: "routes".into(),
                        reason: Some(format!("first start with {}", m.file.display())),
                        detail: json!({ "after": s }),
                    };
                    store.apply(Some(&s), &entry)?;
                    s
                }
                (None, None) => Stages::default(),
            };
            let policy = mc.map(|m| m.rollback).unwrap_or_default();
            let mut models = self.models.write().unwrap_or_else(|p| p.into_inner());
            let live = models.entry(name.to_owned()).or_insert_with(|| {
                Arc::new(ModelLive {
                    name: name.to_owned(),
                    stages: RwLock::new(Stages::default()),
                    weight_bp: AtomicU32::new(0),
                    policy: RwLock::new(policy),
                    compare: Mutex::new(Compare::default()),
                    owner: Arc::downgrade(self),
                })
            });
            *live.policy.write().unwrap_or_else(|p| p.into_inner()) = policy;
            live.set(&stages);
        }
        Ok(())
    }

    pub fn model(&self, name: &str) -> Option<Arc<ModelLive>> {
        self.models.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.models.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        v.sort();
        v
    }

    /// Records a change and makes it live: the stages (when given) and the audit record are
    /// written first, in one transaction, then every request sees the new stages. With
    /// `expected`, the change is refused ([`ReleaseError::StagesChanged`]) if the live stages
    /// are no longer those (an automatic rollback came first).
    pub fn commit(
        &self,
        model: &str,
        expected: Option<&Stages>,
        stages: Option<&Stages>,
        entry: AuditEntry,
    ) -> Result<AuditEntry, ReleaseError> {
        let mut store = lock(&self.store);
        let live = self.model(model);
        if let (Some(exp), Some(l)) = (expected, &live) {
            if l.stages() != *exp {
                return Err(ReleaseError::StagesChanged);
            }
        }
        let mut entry = entry;
        entry.id = store.apply(stages, &entry)?;
        if let (Some(s), Some(live)) = (stages, live) {
            live.set(s);
        }
        Ok(entry)
    }

    pub fn audit(&self, model: Option<&str>) -> Result<Vec<AuditEntry>, ReleaseError> {
        lock(&self.store).audit(model)
    }

    pub fn shared(&self) -> Option<&Arc<shared::SharedStore>> {
        self.shared.get()
    }

    /// Joins the replicas' shared store: a model it does not hold yet is seeded with this
    /// replica's stages (the first replica to arrive wins); adopting what it holds is the
    /// follower's work, since it may need versions loaded.
    pub async fn join(self: &Arc<Self>, store: Arc<shared::SharedStore>) -> Result<(), ReleaseError> {
        self.expects_shared.store(true, Ordering::Release);
        for name in self.names() {
            let Some(live) = self.model(&name) else { continue };
            let mine = live.stages();
            let entry = AuditEntry {
                id: 0,
                at_ms: now_ms(),
                model: name.clone(),
                action: AuditAction::Seed,
                version: mine.production.clone(),
                actor: "replica".into(),
                reason: Some("the first replica in the shared store".into()),
                detail: json!({ "after": mine }),
            };
            store.seed(&mine, &entry).await?;
        }
        let _ = self.shared.set(store);
        Ok(())
    }

    /// Makes stages read from the shared store live here (and keeps them in the local store).
    pub fn adopt(&self, model: &str, stages: &Stages) -> Result<(), ReleaseError> {
        let mut store = lock(&self.store);
        let Some(live) = self.model(model) else { return Ok(()) };
        if live.stages() == normal(stages) {
            return Ok(());
        }
        store.set_stages(model, stages, now_ms())?;
        live.set(stages);
        Ok(())
    }

    /// [`Releases::commit`], written first to the shared store when there is one (whose
    /// stored stages must still be `expected`), then announced to the other replicas.
    pub async fn record(
        &self,
        model: &str,
        expected: Option<&Stages>,
        stages: Option<&Stages>,
        entry: AuditEntry,
    ) -> Result<AuditEntry, ReleaseError> {
        let Some(sh) = self.shared.get() else {
            if self.expects_shared.load(Ordering::Acquire) {
                return Err(ReleaseError::Shared("this replica has not joined it yet".into()));
            }
            return self.commit(model, expected, stages, entry);
        };
        let stages = stages.map(normal);
        let mut entry = entry;
        entry.id = sh.apply(expected.map(normal).as_ref(), stages.as_ref(), &entry).await?;
        if let Some(s) = &stages {
            let _ = lock(&self.store).set_stages(model, s, entry.at_ms);
            if let Some(live) = self.model(model) {
                live.set(s);
            }
            sh.cluster.publish_release(model).await;
        }
        Ok(entry)
    }

    /// The audit trail: the shared one when there is one.
    pub async fn audit_trail(&self, model: Option<&str>) -> Result<Vec<AuditEntry>, ReleaseError> {
        match self.shared.get() {
            Some(sh) => sh.audit(model).await,
            None => self.audit(model),
        }
    }

    fn auto_rollback(&self, live: &ModelLive, version: &str, v: Verdict) {
        // Under the store's lock, like every change: the weight drops and is recorded together,
        // and only if `version` is still the canary with traffic (only the first verdict acts).
        let mut store = lock(&self.store);
        let before = live.stages();
        let Some(stages) = live.stop_canary(version) else { return };
        self.auto_rollbacks.fetch_add(1, Ordering::Relaxed);
        let entry = AuditEntry {
            id: 0,
            at_ms: now_ms(),
            model: live.name.clone(),
            action: AuditAction::AutoRollback,
            version: Some(version.to_owned()),
            actor: "auto".into(),
            reason: Some(v.why.clone()),
            detail: json!({ "after": stages, "measured": v.detail }),
        };
        if let Some(sh) = self.shared.get().cloned() {
            // The truth is the shared store: written there (unless another replica's rollback
            // came first) and announced; here it is live already.
            let _ = store.set_stages(&live.name, &stages, entry.at_ms);
            let (model, after) = (live.name.clone(), normal(&stages));
            sh.cluster.clone().spawn(async move {
                match sh.apply(Some(&normal(&before)), Some(&after), &entry).await {
                    Ok(_) => sh.cluster.publish_release(&model).await,
                    Err(ReleaseError::StagesChanged) => {}
                    Err(e) => tracing::error!(%model, "the automatic rollback could not be recorded: {e}"),
                }
            });
        } else if let Err(e) = store.apply(Some(&stages), &entry) {
            tracing::error!(model = %live.name, "the automatic rollback could not be recorded: {e}");
        }
        drop(store);
        if let Some(monitor) = &self.monitor {
            monitor.emit(crate::accounting::monitor::Alert {
                kind: crate::accounting::monitor::AlertKind::CanaryRollback,
                deployment: format!("{}@{version}", live.name),
                value: v.value,
                threshold: v.threshold,
                requests: v.requests,
                firing: true,
                message: format!("{}@{version}: canary weight set to 0: {}", live.name, v.why),
            });
        }
    }
}

/// A model's stages as `routes/` declares them (a canary weight only with a canary).
pub fn declared(m: &ModelConfig) -> Stages {
    Stages {
        production: m.production.clone(),
        staging: m.staging.clone(),
        canary_weight: if m.staging.is_some() { m.canary_weight } else { 0.0 },
        previous: None,
    }
}

/// A version's stage under a model's stages: production, staging, or archived (the rollback
/// target, or any other version).
pub fn stage_of(stages: Option<&Stages>, version: &str) -> &'static str {
    match stages {
        Some(s) if s.production.as_deref() == Some(version) => "production",
        Some(s) if s.staging.as_deref() == Some(version) => "staging",
        _ => "archived",
    }
}

/// Where the store and `routes/` disagree, model by model: one line each.
pub fn drift(cfg: &Config, stored: &HashMap<String, Stages>) -> Vec<String> {
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".into());
    let mut out = Vec::new();
    for m in &cfg.models {
        let Some(s) = stored.get(&m.name) else { continue };
        let d = declared(m);
        let weight = |v: f64| format!("{v}%");
        let lines = [
            ("production is", s.production != d.production, show(&s.production), show(&d.production)),
            ("staging is", s.staging != d.staging, show(&s.staging), show(&d.staging)),
            (
                "the canary weight is",
                s.staging.is_some() && (s.canary_weight - d.canary_weight).abs() > 1e-9,
                weight(s.canary_weight),
                weight(d.canary_weight),
            ),
        ];
        for (what, differs, store, routes) in lines {
            if differs {
                out.push(format!("{}: {what} {store} in the store, {routes} in {}", m.name, m.file.display()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_spread_and_the_weight_holds_across_identities() {
        let n = 100_000;
        let under_10 = (0..n).filter(|i| bucket("gemma", &format!("user-{i}")) < 1000).count();
        let share = under_10 as f64 / n as f64;
        assert!((share - 0.10).abs() < 0.005, "{share}");
        // The same identity, another model: an independent draw.
        let both =
            (0..n).filter(|i| bucket("a", &format!("u{i}")) < 1000 && bucket("b", &format!("u{i}")) < 1000).count();
        assert!((both as f64 / n as f64 - 0.01).abs() < 0.002, "{both}");
    }

    fn live(policy: RollbackPolicy) -> Arc<ModelLive> {
        let l = Arc::new(ModelLive {
            name: "m".into(),
            stages: RwLock::new(Stages::default()),
            weight_bp: AtomicU32::new(0),
            policy: RwLock::new(policy),
            compare: Mutex::new(Compare::default()),
            owner: Weak::new(),
        });
        l.set(&Stages {
            production: Some("1.0.0".into()),
            staging: Some("1.1.0".into()),
            canary_weight: 10.0,
            previous: None,
        });
        l
    }

    #[test]
    fn a_canary_with_more_errors_is_rolled_back_once_it_has_enough_requests() {
        let p = RollbackPolicy { enabled: true, error_rate_margin: 0.05, p95_margin: 0.5, min_requests: 20 };
        let l = live(p);
        for _ in 0..100 {
            l.observe("1.0.0", false, Some(100.0));
        }
        for i in 0..19 {
            l.observe("1.1.0", i % 2 == 0, Some(100.0));
        }
        assert_eq!(l.stages().canary_weight, 10.0, "19 requests are not enough to judge");
        l.observe("1.1.0", true, None);
        assert_eq!(l.stages().canary_weight, 0.0);
        assert!(!l.canary_for("anyone"));
    }

    #[test]
    fn a_slower_canary_is_rolled_back_and_a_similar_one_is_not() {
        let p = RollbackPolicy { enabled: true, error_rate_margin: 0.05, p95_margin: 0.5, min_requests: 20 };
        let l = live(p);
        for i in 0..100 {
            l.observe("1.0.0", false, Some(100.0 + f64::from(i % 10)));
        }
        for i in 0..40 {
            l.observe("1.1.0", false, Some(110.0 + f64::from(i % 10)));
        }
        assert_eq!(l.stages().canary_weight, 10.0, "within the margin");
        for _ in 0..20 {
            l.observe("1.1.0", false, Some(400.0));
        }
        assert_eq!(l.stages().canary_weight, 0.0, "p95 now 400 ms against 109 ms");
    }

    #[test]
    fn raising_the_weight_only_adds_identities() {
        let l = live(RollbackPolicy::default());
        let ids: Vec<String> = (0..2000).map(|i| format!("u{i}")).collect();
        let at10: Vec<bool> = ids.iter().map(|i| l.canary_for(i)).collect();
        l.set(&Stages { canary_weight: 25.0, ..l.stages() });
        for (i, was) in ids.iter().zip(&at10) {
            assert!(!*was || l.canary_for(i), "{i} left the canary when its weight rose");
        }
    }
}

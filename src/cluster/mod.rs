//! Shared state for many replicas (`[cluster]`): one Redis connection per replica
//! (multiplexed and reconnecting), its health, and what goes through it: the limits and
//! budgets' scripts ([`limits`]), the shared response cache ([`cache`]) and the release
//! changes' notifications ([`releases`]); and the PostgreSQL connection ([`pg`]) of what
//! lives in the database.
//!
//! Redis is never on a request's critical path for longer than `cluster.timeout_ms`: a call
//! that fails or times out marks Redis down (logged once, counted), and until a probe (every
//! 500 ms, off the request path) finds it again every caller uses its fallback — the limits
//! a replica's share of each limit, the cache its in-process tier. What could not be written
//! meanwhile (spend) waits in memory and is written when Redis is back, before it is used.

pub mod cache;
pub mod limits;
pub mod pg;
pub mod releases;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::IntoConnectionInfo;

use crate::config::ClusterConfig;

const PROBE_EVERY: Duration = Duration::from_millis(500);

/// What the cluster counted, for `/metrics` and `/ready`.
#[derive(Default)]
pub struct Stats {
    pub errors: AtomicU64,
    /// Admissions decided by the replica's own counters while Redis was down.
    pub fallback_admissions: AtomicU64,
    /// Of those, admitted beyond the replica's share (`fail_mode = "open"`).
    pub over_share: AtomicU64,
    /// Requests refused beyond the replica's share (`fail_mode = "closed"`).
    pub refused_share: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
}

/// Something to redo when Redis comes back (e.g. seed the budgets of an emptied Redis).
type Hook = Box<dyn Fn(Arc<Cluster>) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

pub struct Cluster {
    pub cfg: ClusterConfig,
    client: redis::Client,
    con: ConnectionManager,
    rt: tokio::runtime::Handle,
    up: AtomicBool,
    probing: AtomicBool,
    pub stats: Stats,
    /// Spend increments not yet in Redis: key → (pico-USD, TTL in ms).
    unsynced: Mutex<HashMap<String, (i64, u64)>>,
    on_recovery: Mutex<Vec<Hook>>,
    /// A unique name of this replica (leases and locks carry it).
    pub replica: String,
    /// Where settlements wait to be sent together ([`limits`]).
    settles: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<limits::Settle>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("up", &self.is_up()).finish_non_exhaustive()
    }
}

impl Cluster {
    /// Prepares the connection (made on first use, so a replica starts while Redis is down).
    /// Must be called inside the Tokio runtime.
    pub fn connect(cfg: &ClusterConfig) -> Result<Arc<Cluster>, String> {
        let mut info =
            cfg.redis_url.0.as_str().into_connection_info().map_err(|e| format!("cluster.redis_url: {e}"))?;
        if let Some(pw) = &cfg.redis_password {
            let settings = info.redis_settings().clone().set_password(&pw.0);
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info).map_err(|e| format!("cluster.redis_url: {e}"))?;
        let mcfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.timeout))
            .set_response_timeout(Some(cfg.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let con = ConnectionManager::new_lazy_with_config(client.clone(), mcfg).map_err(|e| format!("cluster: {e}"))?;
        Ok(Arc::new(Cluster {
            cfg: cfg.clone(),
            client,
            con,
            rt: tokio::runtime::Handle::current(),
            up: AtomicBool::new(true),
            probing: AtomicBool::new(false),
            stats: Stats::default(),
            unsynced: Mutex::new(HashMap::new()),
            on_recovery: Mutex::new(Vec::new()),
            replica: uuid::Uuid::new_v4().simple().to_string(),
            settles: std::sync::OnceLock::new(),
        }))
    }

    /// A key of tollgate's namespace; `tag` (an API key's name, a cache key) is Redis
    /// Cluster's hash tag, so that one script's keys share a slot.
    pub fn key(&self, kind: &str, tag: &str, rest: &str) -> String {
        format!("{}:{kind}:{{{tag}}}{rest}", self.cfg.prefix)
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Runs `f` on the connection within the timeout; `None` (and Redis marked down) when it
    /// fails. While Redis is down, `f` is not run at all.
    pub async fn call<T, F, Fut>(self: &Arc<Self>, what: &str, f: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.is_up() {
            return None;
        }
        match tokio::time::timeout(self.cfg.timeout, f(self.con.clone())).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.failed(what, &e.to_string());
                None
            }
            Err(_) => {
                self.failed(what, &format!("no answer within {} ms", self.cfg.timeout.as_millis()));
                None
            }
        }
    }

    /// Runs `fut` in the background (settling, writing spend).
    pub fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        self.rt.spawn(fut);
    }

    fn failed(self: &Arc<Self>, what: &str, e: &str) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::error!(
                replicas = self.cfg.replicas,
                fail_mode = if self.cfg.fail_closed { "closed" } else { "open" },
                "Redis unavailable ({what}: {e}): limits fall back to this replica's share, the shared cache is skipped; retrying every {} ms",
                PROBE_EVERY.as_millis()
            );
        }
        if !self.probing.swap(true, Ordering::AcqRel) {
            let me = self.clone();
            self.rt.spawn(async move { me.probe().await });
        }
    }

    async fn probe(self: Arc<Self>) {
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            let mut con = self.con.clone();
            let ping = tokio::time::timeout(self.cfg.timeout, redis::cmd("PING").query_async::<String>(&mut con)).await;
            if !matches!(ping, Ok(Ok(_))) {
                continue;
            }
            // What waited is written before anyone reads Redis again.
            if !self.flush_unsynced(&mut con).await {
                continue;
            }
            let hooks: Vec<_> = {
                let h = self.on_recovery.lock().unwrap_or_else(|p| p.into_inner());
                h.iter().map(|f| f(self.clone())).collect()
            };
            self.up.store(true, Ordering::Release);
            futures::future::join_all(hooks).await;
            self.probing.store(false, Ordering::Release);
            tracing::info!("Redis available again: limits, budgets and the cache are shared again");
            return;
        }
    }

    /// Registers something to run when Redis comes back after being down.
    pub fn on_recovery(&self, hook: Hook) {
        self.on_recovery.lock().unwrap_or_else(|p| p.into_inner()).push(hook);
    }

    /// Keeps an increment for when Redis is back.
    fn defer(&self, key: String, by: i64, ttl_ms: u64) {
        let mut u = self.unsynced.lock().unwrap_or_else(|p| p.into_inner());
        let e = u.entry(key).or_insert((0, ttl_ms));
        e.0 += by;
    }

    async fn flush_unsynced(&self, con: &mut ConnectionManager) -> bool {
        let pending: Vec<_> =
            std::mem::take(&mut *self.unsynced.lock().unwrap_or_else(|p| p.into_inner())).into_iter().collect();
        if pending.is_empty() {
            return true;
        }
        let mut pipe = redis::pipe();
        for (k, (by, ttl)) in &pending {
            pipe.cmd("INCRBY").arg(k).arg(*by).ignore().cmd("PEXPIRE").arg(k).arg(*ttl).ignore();
        }
        match tokio::time::timeout(self.cfg.timeout, pipe.query_async::<()>(con)).await {
            Ok(Ok(())) => true,
            _ => {
                for (k, (by, ttl)) in pending {
                    self.defer(k, by, ttl);
                }
                false
            }
        }
    }

    /// `"up"` or `"down"`, for `/ready`.
    pub fn state(&self) -> &'static str {
        if self.is_up() {
            "up"
        } else {
            "down"
        }
    }
}

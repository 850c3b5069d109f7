//! The response cache's shared tier: answers in Redis under `<prefix>:cache:{<key>}`, each
//! with the cache's TTL, the number of entries bounded by an index scored by insertion time
//! (the oldest go first), entries over a size bound not stored; and a short lock per key, so
//! that identical requests in flight on two replicas make one upstream call.
//!
//! The scripts touch the entry and the index together: one Redis (or a primary with
//! replicas), not Redis Cluster's sharding.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use super::Cluster;

/// How long a replica may lead a key before another takes over (it is released at the end).
pub const LOCK_MS: u64 = 30_000;
/// How often a replica waiting for another's answer looks for it.
pub const POLL: Duration = Duration::from_millis(25);

const PUT: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[3]) - tonumber(ARGV[2]))
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if over > 0 then
  local old = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #old, 2 do redis.call('DEL', old[i]) end
end
return 1
";

const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

static SCRIPTS: std::sync::LazyLock<[Script; 2]> = std::sync::LazyLock::new(|| [Script::new(PUT), Script::new(UNLOCK)]);

/// What the shared tier answered for a key.
pub enum Shared {
    Hit(Vec<u8>),
    /// This replica holds the key's lock: it computes the answer.
    Lead,
    /// Redis is down, or another replica held the lock too long: compute it without a lock.
    Alone,
}

impl Cluster {
    fn entry(&self, key: &str) -> String {
        self.key("cache", key, "")
    }

    async fn get(self: &Arc<Self>, entry: &str) -> Option<Option<Vec<u8>>> {
        let entry = entry.to_owned();
        self.call("cache get", |mut c| async move { redis::cmd("GET").arg(entry).query_async(&mut c).await }).await
    }

    /// Looks the key up; on a miss takes its lock, or waits (up to `wait`) for the replica
    /// holding it to store the answer.
    pub async fn cache_lookup(self: &Arc<Self>, key: &str, wait: Duration) -> Shared {
        let entry = self.entry(key);
        let lock = format!("{entry}:lock");
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.get(&entry).await {
                None => return Shared::Alone,
                Some(Some(v)) => {
                    self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                    return Shared::Hit(v);
                }
                Some(None) => {}
            }
            let (l, me) = (lock.clone(), self.replica.clone());
            let took: Option<Option<String>> = self
                .call("cache lock", |mut c| async move {
                    redis::cmd("SET").arg(l).arg(me).arg("NX").arg("PX").arg(LOCK_MS).query_async(&mut c).await
                })
                .await;
            match took {
                None => return Shared::Alone,
                Some(Some(_)) => {
                    self.stats.cache_misses.fetch_add(1, Ordering::Relaxed);
                    return Shared::Lead;
                }
                Some(None) if tokio::time::Instant::now() >= deadline => return Shared::Alone,
                // Another replica computes it: look again shortly.
                Some(None) => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// Stores an answer (then the lock, if this replica held it, is released by the caller).
    pub async fn cache_put(self: &Arc<Self>, key: &str, value: Vec<u8>, ttl: Duration, max_entries: u64) {
        let entry = self.entry(key);
        let index = format!("{}:cache:index", self.cfg.prefix);
        let now = crate::clock::now_ms();
        let _: Option<i64> = self
            .call("cache put", |mut c| async move {
                let mut inv = SCRIPTS[0].prepare_invoke();
                inv.key(&entry).key(index).arg(value).arg(ttl.as_millis() as u64).arg(now).arg(max_entries);
                inv.invoke_async(&mut c).await
            })
            .await;
    }

    /// Releases this replica's lock on the key (in the background).
    pub fn cache_unlock(self: &Arc<Self>, key: &str) {
        let (lock, me, c) = (format!("{}:lock", self.entry(key)), self.replica.clone(), self.clone());
        self.spawn(async move {
            let _: Option<i64> = c
                .call("cache unlock", |mut con| async move {
                    let mut inv = SCRIPTS[1].prepare_invoke();
                    inv.key(lock).arg(me);
                    inv.invoke_async(&mut con).await
                })
                .await;
        });
    }
}

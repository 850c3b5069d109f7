//! The limits and budgets of a key, shared by every replica: one Lua script per admission
//! (atomic in Redis, so no read-modify-write races between replicas) and one per settlement,
//! both taking `now` from the gateway's injectable clock rather than from Redis.
//!
//! Per key (`<prefix>:lim:{<key name>}:…`, one hash slot):
//! - `:rpm` — GCRA's theoretical arrival time (ms): burst = the per-minute quota, one request
//!   regained every `60 s / rpm` (the same rule as governor's, in-process);
//! - `:tpm` — a token bucket `{level, at}`: the admission reserves, the settlement refunds
//!   what the request did not use (or charges what it used beyond);
//! - `:conc` — the requests in flight, a sorted set of leases scored by their expiry, so a
//!   replica that dies holding some frees them when they expire (renewed while in flight);
//! - `:spend:d<day>`, `:spend:m<month-start day>` — the spend in pico-USD (integers, exact).

use std::sync::Arc;

use redis::Script;

use super::Cluster;

/// A lease on a concurrency slot lasts this long unless renewed.
pub const LEASE_MS: u64 = 30_000;
/// How often a replica renews the leases it holds.
pub const RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

const ADMIT: &str = r"
local now = tonumber(ARGV[1])
local rpm = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
local reserve = tonumber(ARGV[4])
local maxc = tonumber(ARGV[5])
local bday = tonumber(ARGV[8])
local bmonth = tonumber(ARGV[9])
local day = redis.call('GET', KEYS[4]) or '0'
local month = redis.call('GET', KEYS[5]) or '0'
if bday >= 0 and tonumber(day) >= bday then return {1, day, month} end
if bmonth >= 0 and tonumber(month) >= bmonth then return {2, day, month} end
if maxc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[1])
  if redis.call('ZCARD', KEYS[3]) >= maxc then return {3, day, month} end
end
local level, at = 0, now
if cap > 0 then
  local h = redis.call('HMGET', KEYS[2], 'level', 'at')
  level = tonumber(h[1]) or cap
  at = tonumber(h[2]) or now
  if now > at then
    level = math.min(cap, level + (now - at) * cap / 60000)
    at = now
  end
  if level < reserve then return {4, day, month, string.format('%.6f', level)} end
end
local remaining, reset = 0, 0
if rpm > 0 then
  local t = 60000 / rpm
  local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
  local allow_at = tat - 60000 + t
  if allow_at > now then return {5, day, month, string.format('%.3f', allow_at - now)} end
  local new = tat + t
  redis.call('SET', KEYS[1], string.format('%.3f', new), 'PX', math.ceil(new - now) + 1000)
  remaining = math.floor((now + 60000 - new) / t + 1e-9)
  reset = new - now
end
if cap > 0 then
  redis.call('HSET', KEYS[2], 'level', string.format('%.6f', level - reserve), 'at', string.format('%.3f', at))
  redis.call('PEXPIRE', KEYS[2], 120000)
end
if maxc > 0 then
  redis.call('ZADD', KEYS[3], ARGV[7], ARGV[6])
  redis.call('PEXPIRE', KEYS[3], 3600000)
end
return {0, day, month, string.format('%.6f', level - reserve), tostring(remaining), string.format('%.3f', reset)}
";

const SETTLE: &str = r"
local now = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local refund = tonumber(ARGV[3])
if cap > 0 and refund ~= 0 then
  local h = redis.call('HMGET', KEYS[1], 'level', 'at')
  local level = tonumber(h[1]) or cap
  local at = tonumber(h[2]) or now
  if now > at then
    level = math.min(cap, level + (now - at) * cap / 60000)
    at = now
  end
  level = math.min(cap, level + refund)
  redis.call('HSET', KEYS[1], 'level', string.format('%.6f', level), 'at', string.format('%.3f', at))
  redis.call('PEXPIRE', KEYS[1], 120000)
end
if ARGV[4] ~= '' then redis.call('ZREM', KEYS[2], ARGV[4]) end
if ARGV[5] ~= '0' then
  redis.call('INCRBY', KEYS[3], ARGV[5])
  redis.call('PEXPIRE', KEYS[3], ARGV[6])
  redis.call('INCRBY', KEYS[4], ARGV[5])
  redis.call('PEXPIRE', KEYS[4], ARGV[7])
end
return 1
";

const SPEND: &str = r"
redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('INCRBY', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
";

/// Adds the ledger's totals to an empty Redis, once (the marker says it was done).
const SEED: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 2, #KEYS do
  redis.call('INCRBY', KEYS[i], ARGV[i])
  redis.call('PEXPIRE', KEYS[i], ARGV[1])
end
redis.call('SET', KEYS[1], '1')
return 1
";

static SCRIPTS: std::sync::LazyLock<[Script; 4]> =
    std::sync::LazyLock::new(|| [Script::new(ADMIT), Script::new(SETTLE), Script::new(SPEND), Script::new(SEED)]);

/// One admission's question. Limits absent are 0 (budgets: negative).
pub struct Ask<'a> {
    pub name: &'a str,
    pub now_ms: f64,
    pub rpm: u32,
    pub tpm: u64,
    pub reserve: u64,
    pub max_concurrent: u32,
    pub lease: &'a str,
    pub budget_day: i64,
    pub budget_month: i64,
    /// The UTC day and the first day of the UTC month (days since the epoch) of `now`.
    pub day: u64,
    pub month: u64,
}

/// What the script decided; `day` and `month` are the key's spend in pico-USD.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Admitted { day: i64, month: i64, tokens_left: f64, requests_left: u32, requests_reset_ms: f64 },
    Budget { monthly: bool, day: i64, month: i64 },
    Concurrency { day: i64, month: i64 },
    Tokens { day: i64, month: i64, level: f64 },
    Requests { day: i64, month: i64, wait_ms: f64 },
}

/// A finished request's cost, for its key's shared spend.
#[derive(Clone, Copy, Debug)]
pub struct Spend {
    pub pico: i64,
    pub day: u64,
    pub month: u64,
}

const DAY_TTL_MS: u64 = 2 * 86_400_000;
const MONTH_TTL_MS: u64 = 32 * 86_400_000;

impl Cluster {
    fn lim(&self, name: &str, what: &str) -> String {
        self.key("lim", name, what)
    }

    fn spend_keys(&self, name: &str, day: u64, month: u64) -> [String; 2] {
        [self.lim(name, &format!(":spend:d{day}")), self.lim(name, &format!(":spend:m{month}"))]
    }

    /// Runs the admission script; `None` when Redis did not answer (the caller falls back).
    pub async fn admit(self: &Arc<Self>, a: &Ask<'_>) -> Option<Outcome> {
        let [d, m] = self.spend_keys(a.name, a.day, a.month);
        let mut inv = SCRIPTS[0].prepare_invoke();
        inv.key(self.lim(a.name, ":rpm")).key(self.lim(a.name, ":tpm")).key(self.lim(a.name, ":conc")).key(d).key(m);
        inv.arg(format!("{:.3}", a.now_ms))
            .arg(a.rpm)
            .arg(a.tpm)
            .arg(a.reserve)
            .arg(a.max_concurrent)
            .arg(a.lease)
            .arg(format!("{:.3}", a.now_ms + LEASE_MS as f64))
            .arg(a.budget_day)
            .arg(a.budget_month);
        let v: Vec<String> = self.call("limits", |mut c| async move { inv.invoke_async(&mut c).await }).await?;
        let num = |i: usize| v.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
        let (day, month) = (num(1) as i64, num(2) as i64);
        Some(match v.first().map(String::as_str) {
            Some("0") => Outcome::Admitted {
                day,
                month,
                tokens_left: num(3),
                requests_left: num(4) as u32,
                requests_reset_ms: num(5),
            },
            Some("1") => Outcome::Budget { monthly: false, day, month },
            Some("2") => Outcome::Budget { monthly: true, day, month },
            Some("3") => Outcome::Concurrency { day, month },
            Some("4") => Outcome::Tokens { day, month, level: num(3) },
            _ => Outcome::Requests { day, month, wait_ms: num(3) },
        })
    }

    /// Refunds (or charges, when negative) tokens, frees the lease and adds the request's
    /// spend (pico-USD on its day and month), in one script, in the background: settlements
    /// are sent together, up to [`SETTLE_EVERY`] after they were asked for (one write for many
    /// requests). Spend that cannot be written is kept for when Redis is back.
    pub fn settle(
        self: &Arc<Self>,
        name: &str,
        now_ms: f64,
        tpm: u64,
        refund: i64,
        lease: Option<String>,
        spend: Option<Spend>,
    ) {
        if tpm == 0 && lease.is_none() && spend.is_none() {
            return;
        }
        let (day, month) = spend.map_or((0, 0), |s| (s.day, s.month));
        let [d, m] = self.spend_keys(name, day, month);
        let s = Settle {
            keys: [self.lim(name, ":tpm"), self.lim(name, ":conc"), d, m],
            now_ms,
            tpm,
            refund,
            lease: lease.unwrap_or_default(),
            pico: spend.map_or(0, |s| s.pico),
        };
        let tx = self.settles.get_or_init(|| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            self.spawn(settler(self.clone(), rx));
            tx
        });
        let _ = tx.send(s);
    }

    /// Adds a finished request's cost to the key's day and month, in the background; kept
    /// for later when Redis is down.
    pub fn add_spend(self: &Arc<Self>, name: &str, day: u64, month: u64, pico: i64) {
        if pico == 0 {
            return;
        }
        let [d, m] = self.spend_keys(name, day, month);
        if !self.is_up() {
            self.defer(d, pico, DAY_TTL_MS);
            self.defer(m, pico, MONTH_TTL_MS);
            return;
        }
        let me = self.clone();
        self.spawn(async move {
            let mut inv = SCRIPTS[2].prepare_invoke();
            inv.key(&d).key(&m).arg(pico).arg(DAY_TTL_MS).arg(MONTH_TTL_MS);
            let r: Option<i64> = me.call("spend", |mut c| async move { inv.invoke_async(&mut c).await }).await;
            if r.is_none() {
                me.defer(d, pico, DAY_TTL_MS);
                me.defer(m, pico, MONTH_TTL_MS);
            }
        });
    }

    /// Seeds an empty Redis with the spend the ledger knows: `(name, day, month, day pico,
    /// month pico)`. Only the first replica to ask seeds; `Some(true)` when this one did.
    pub async fn seed_spend(self: &Arc<Self>, totals: &[(String, u64, u64, i64, i64)]) -> Option<bool> {
        let mut inv = SCRIPTS[3].prepare_invoke();
        inv.key(format!("{}:lim:seeded", self.cfg.prefix)).arg(MONTH_TTL_MS);
        for (name, day, month, d, m) in totals {
            let [dk, mk] = self.spend_keys(name, *day, *month);
            inv.key(dk).arg(*d).key(mk).arg(*m);
        }
        let r: i64 = self.call("seed", |mut c| async move { inv.invoke_async(&mut c).await }).await?;
        Some(r == 1)
    }

    /// Renews the leases this replica holds (`conc` key, member) so they outlive `LEASE_MS`.
    pub async fn renew(self: &Arc<Self>, leases: &[(String, String)], now_ms: f64) {
        if leases.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for (name, member) in leases {
            pipe.cmd("ZADD")
                .arg(self.lim(name, ":conc"))
                .arg("XX")
                .arg(format!("{:.3}", now_ms + LEASE_MS as f64))
                .arg(member)
                .ignore();
        }
        let _: Option<()> = self.call("renew", |mut c| async move { pipe.query_async(&mut c).await }).await;
    }
}

/// How long a settlement may wait to be sent with others.
pub const SETTLE_EVERY: std::time::Duration = std::time::Duration::from_millis(2);

/// One settlement, as the script takes it.
pub struct Settle {
    keys: [String; 4],
    now_ms: f64,
    tpm: u64,
    refund: i64,
    lease: String,
    pico: i64,
}

/// Sends the settlements asked for, many to a pipeline.
async fn settler(c: Arc<Cluster>, mut rx: tokio::sync::mpsc::UnboundedReceiver<Settle>) {
    let hash = SCRIPTS[1].get_hash().to_owned();
    while let Some(first) = rx.recv().await {
        tokio::time::sleep(SETTLE_EVERY).await;
        let mut batch = vec![first];
        while let Ok(s) = rx.try_recv() {
            batch.push(s);
        }
        let pipe = |hash: &str| {
            let mut p = redis::pipe();
            for s in &batch {
                p.cmd("EVALSHA").arg(hash).arg(4).arg(&s.keys[..]);
                p.arg(format!("{:.3}", s.now_ms)).arg(s.tpm).arg(s.refund).arg(&s.lease);
                p.arg(s.pico).arg(DAY_TTL_MS).arg(MONTH_TTL_MS).ignore();
            }
            p
        };
        let (p, h) = (pipe(&hash), hash.clone());
        let mut sent: Option<Result<(), redis::RedisError>> = c
            .call("settle", |mut con| async move {
                match p.query_async::<()>(&mut con).await {
                    // The script is not loaded yet (a fresh Redis): load it, then say so.
                    Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                        SCRIPTS[1].prepare_invoke().load_async(&mut con).await?;
                        Ok(Err(e))
                    }
                    r => r.map(Ok),
                }
            })
            .await;
        if matches!(sent, Some(Err(_))) {
            let p = pipe(&h);
            sent = c.call("settle", |mut con| async move { p.query_async::<()>(&mut con).await.map(Ok) }).await;
        }
        if !matches!(sent, Some(Ok(()))) {
            for s in batch.into_iter().filter(|s| s.pico != 0) {
                let [_, _, d, m] = s.keys;
                c.defer(d, s.pico, DAY_TTL_MS);
                c.defer(m, s.pico, MONTH_TTL_MS);
            }
        }
    }
}

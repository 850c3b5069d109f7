//! Per-key admission: requests per minute, tokens per minute, concurrent requests, and USD
//! budgets per day and per month. Limits are declared with the keys (`[[auth.keys]]`) and
//! replaced by a reload; a key whose limits did not change keeps its state.
//!
//! - **Requests per minute**: governor's GCRA limiter (burst = the per-minute quota, one
//!   request regained every `60 s / rpm`), on the gateway's injectable clock.
//! - **Tokens per minute**: a token bucket (capacity = the quota, refilled continuously),
//!   because admission must *reserve* tokens before they are known and *refund* the unused
//!   part after: the reservation is the prompt (estimated at 4 bytes a token, as tokenizers do
//!   for English) plus `max_tokens` (or `limits.default_max_tokens`); the real usage is
//!   charged when the request ends. A request larger than the whole quota is refused for good.
//! - **Concurrency**: a counter released when the response ends (the stream's last byte).
//! - **Budgets**: spend per key for the current UTC day and month, in memory, started from the
//!   ledger at boot (so a restart keeps them) and added to as requests finish.
//!
//! With `[cluster]` the same rules run in Redis, for every replica at once
//! ([`crate::cluster::limits`]): one script per admission, one per settlement, the spend
//! shared. While Redis is down each replica enforces its share of each limit
//! (`limit ÷ cluster.replicas`) with the in-process state above; `fail_mode = "open"` admits
//! a request beyond the share (counted), `"closed"` refuses it. Budgets then use the last
//! shared spend this replica saw plus its own since.
//!
//! Every admitted response carries `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`
//! for the limits the key has; a refusal is a 429 in the OpenAI shape with the same headers
//! and `retry-after`; an exhausted budget is `insufficient_quota` with `x-should-retry: false`.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use axum::http::{HeaderName, HeaderValue};
use governor::clock::Clock as _;
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

use super::metrics::{family, Collector, ConstCounter, ConstGauge, DescriptorEncoder, NO_LABELS};
use crate::clock::Clock;
use crate::cluster::limits as shared;
use crate::cluster::Cluster;
use crate::config::{ApiKeyConfig, KeyLimits};
use crate::protocol::error::ApiError;

/// The gateway's clock as governor sees it.
#[derive(Clone)]
pub struct GovClock {
    clock: Arc<dyn Clock>,
    base: Instant,
}

impl governor::clock::Clock for GovClock {
    type Instant = Nanos;
    fn now(&self) -> Nanos {
        Nanos::from(self.clock.now().saturating_duration_since(self.base))
    }
}

type Rpm = RateLimiter<NotKeyed, InMemoryState, GovClock, StateInformationMiddleware>;

struct Bucket {
    level: f64,
    at: Instant,
}

struct KeyState {
    cfg: KeyLimits,
    rpm: Option<Rpm>,
    tpm: Option<Mutex<Bucket>>,
    in_flight: AtomicU32,
}

#[derive(Default, Clone, Copy)]
struct Spend {
    day: u64,
    day_usd: Decimal,
    month: u64,
    month_usd: Decimal,
}

type States = RwLock<HashMap<String, Arc<KeyState>>>;

/// The limits shared through Redis, and this replica's share of them for when it is down.
struct Shared {
    cluster: Arc<Cluster>,
    share: States,
    /// The concurrency leases this replica holds: lease → key name (renewed while held).
    leases: Arc<Mutex<HashMap<String, String>>>,
}

pub struct Limits {
    clock: Arc<dyn Clock>,
    base: Instant,
    default_max_tokens: u64,
    keys: States,
    spend: Mutex<HashMap<String, Spend>>,
    shared: Option<Shared>,
}

/// What a request needs from the limits at admission.
pub struct Ask<'a> {
    pub key: &'a ApiKeyConfig,
    /// Bytes of prompt text (messages' content, or the prompt).
    pub prompt_bytes: usize,
    pub max_tokens: Option<u64>,
    /// Unix ms (budgets are per UTC day and month).
    pub now_ms: u64,
}

enum Hold {
    Local(Arc<KeyState>),
    Shared {
        cluster: Arc<Cluster>,
        name: String,
        tpm: u64,
        lease: Option<String>,
        leases: Arc<Mutex<HashMap<String, String>>>,
    },
}

/// An admitted request's hold on its key's limits, released by [`Admission::settle`] (or on
/// drop, keeping the whole reservation).
pub struct Admission {
    hold: Hold,
    clock: Arc<dyn Clock>,
    reserved: u64,
    settled: AtomicBool,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Admission(reserved={})", self.reserved)
    }
}

impl Admission {
    /// Charges the real token usage instead of the reservation and frees the concurrency slot.
    /// Only the first call counts.
    pub fn settle(&self, used_tokens: u64) {
        self.settle_spending(used_tokens, None);
    }

    /// [`Admission::settle`], with the request's spend when it goes to the shared spend
    /// (written in the same script as the settlement). Whether it took the spend.
    fn settle_spending(&self, used_tokens: u64, spend: Option<shared::Spend>) -> bool {
        if self.settled.swap(true, Ordering::AcqRel) {
            return false;
        }
        match &self.hold {
            Hold::Local(state) => {
                if state.cfg.max_concurrent.is_some() {
                    state.in_flight.fetch_sub(1, Ordering::AcqRel);
                }
                if let Some(b) = &state.tpm {
                    let cap = state.cfg.tokens_per_minute.unwrap_or(0) as f64;
                    let mut b = b.lock().unwrap_or_else(|p| p.into_inner());
                    refill(&mut b, cap, self.clock.now());
                    b.level = (b.level + self.reserved as f64 - used_tokens as f64).min(cap);
                }
                false
            }
            Hold::Shared { cluster, name, tpm, lease, leases } => {
                if let Some(l) = lease {
                    leases.lock().unwrap_or_else(|p| p.into_inner()).remove(l);
                }
                let refund = self.reserved as i64 - used_tokens as i64;
                cluster.settle(name, now_ms_of(&*self.clock), *tpm, refund, lease.clone(), spend);
                spend.is_some()
            }
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.settle(self.reserved);
    }
}

fn now_ms_of(clock: &dyn Clock) -> f64 {
    clock.unix_micros() as f64 / 1000.0
}

fn refill(b: &mut Bucket, cap: f64, now: Instant) {
    let dt = now.saturating_duration_since(b.at).as_secs_f64();
    b.level = (b.level + dt * cap / 60.0).min(cap);
    b.at = now;
}

/// OpenAI's reset format: `20ms`, `1s`, `6m0s`.
fn reset_text(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = d.as_secs_f64();
        if (s - s.round()).abs() < 0.0005 {
            format!("{}s", s.round() as u64)
        } else {
            format!("{:.3}s", s).trim_end_matches('0').to_owned()
        }
    } else {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

fn header(name: &'static str, v: impl ToString) -> (HeaderName, HeaderValue) {
    (HeaderName::from_static(name), HeaderValue::from_str(&v.to_string()).unwrap_or(HeaderValue::from_static("0")))
}

/// Days since the Unix epoch → (year, month) in UTC (Howard Hinnant's civil_from_days).
fn year_month(days: i64) -> (i64, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m)
}

/// The first day (days since the epoch) of the month holding `days`.
fn month_start_day(days: i64) -> i64 {
    let (y, m) = year_month(days);
    // days_from_civil for (y, m, 1).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 } as i64;
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

const DAY_MS: u64 = 86_400_000;

/// (start of the UTC day, start of the UTC month) holding `now_ms`, in Unix ms.
pub fn period_starts(now_ms: u64) -> (u64, u64) {
    let day = now_ms / DAY_MS;
    (day * DAY_MS, month_start_day(day as i64).max(0) as u64 * DAY_MS)
}

/// (day, first day of the month), in days since the epoch.
fn periods(now_ms: u64) -> (u64, u64) {
    (now_ms / DAY_MS, period_starts(now_ms).1 / DAY_MS)
}

/// USD → the integer pico-USD the shared spend counts in (exact to 10⁻¹² USD).
pub fn pico(usd: Decimal) -> i64 {
    (usd * Decimal::from(1_000_000_000_000u64)).round().to_i64().unwrap_or(i64::MAX)
}

fn usd(pico: i64) -> Decimal {
    Decimal::from_i128_with_scale(i128::from(pico), 12).normalize()
}

// The answers, one shape whichever state decided.

fn budget_refused(name: &str, daily: bool, spent: Decimal, budget: Decimal) -> ApiError {
    let (period, unit) = if daily { ("daily", "day") } else { ("monthly", "month") };
    let mut e = ApiError::insufficient_quota(format!(
        "The key '{name}' has used its {period} budget: ${} of ${budget}. It resets at the start of the next UTC {unit}.",
        spent.round_dp(6).normalize(),
    ));
    e.push_header(header("x-should-retry", "false"));
    e
}

fn concurrency_refused(name: &str, max: u32) -> ApiError {
    let mut e = ApiError::rate_limited(
        format!("The key '{name}' has {max} requests in flight, its limit; retry when one ends."),
        Some(1),
    );
    e.push_header(header("x-ratelimit-limit-concurrent", max));
    e.push_header(header("x-ratelimit-remaining-concurrent", 0));
    e
}

fn too_large(name: &str, reserve: u64, cap: u64) -> ApiError {
    let mut e = ApiError::rate_limited(
        format!(
            "Request too large for the key '{name}': it may use {reserve} tokens (prompt plus max_tokens), more than its limit of {cap} tokens per minute. Lower max_tokens or shorten the prompt."
        ),
        None,
    );
    e.push_header(header("x-should-retry", "false"));
    e
}

fn token_headers(cap: u64, level: f64) -> [(HeaderName, HeaderValue); 3] {
    let capf = cap as f64;
    let reset = Duration::from_secs_f64((capf - level).max(0.0) / (capf / 60.0));
    [
        header("x-ratelimit-limit-tokens", cap),
        header("x-ratelimit-remaining-tokens", level.max(0.0).floor() as u64),
        header("x-ratelimit-reset-tokens", reset_text(reset)),
    ]
}

fn tokens_refused(name: &str, cap: u64, reserve: u64, level: f64) -> ApiError {
    let wait = Duration::from_secs_f64((reserve as f64 - level).max(0.0) / (cap as f64 / 60.0));
    let mut e = ApiError::rate_limited(
        format!(
            "Rate limit reached for the key '{name}' on tokens per minute: limit {cap}, requested {reserve}. Please try again in {}.",
            reset_text(wait)
        ),
        Some(wait.as_secs_f64().ceil().max(1.0) as u32),
    );
    for h in token_headers(cap, level) {
        e.push_header(h);
    }
    e.push_header(header("retry-after-ms", wait.as_millis()));
    e
}

fn request_headers(rpm: u32, remaining: u32, reset: Duration) -> [(HeaderName, HeaderValue); 3] {
    [
        header("x-ratelimit-limit-requests", rpm),
        header("x-ratelimit-remaining-requests", remaining),
        header("x-ratelimit-reset-requests", reset_text(reset)),
    ]
}

fn requests_refused(name: &str, rpm: u32, wait: Duration) -> ApiError {
    let mut e = ApiError::rate_limited(
        format!(
            "Rate limit reached for the key '{name}' on requests per minute: limit {rpm}. Please try again in {}.",
            reset_text(wait)
        ),
        Some(wait.as_secs_f64().ceil().max(1.0) as u32),
    );
    for h in request_headers(rpm, 0, wait) {
        e.push_header(h);
    }
    e.push_header(header("retry-after-ms", wait.as_millis()));
    e
}

/// A replica's share of a limit while Redis is down (at least 1).
fn share(cfg: &KeyLimits, replicas: u32) -> KeyLimits {
    let n = replicas.max(1);
    KeyLimits {
        requests_per_minute: cfg.requests_per_minute.map(|v| (v / n).max(1)),
        tokens_per_minute: cfg.tokens_per_minute.map(|v| (v / u64::from(n)).max(1)),
        max_concurrent: cfg.max_concurrent.map(|v| (v / n).max(1)),
        ..cfg.clone()
    }
}

impl Limits {
    pub fn new(clock: Arc<dyn Clock>, default_max_tokens: u64) -> Self {
        let base = clock.now();
        Limits {
            clock,
            base,
            default_max_tokens,
            keys: RwLock::new(HashMap::new()),
            spend: Mutex::new(HashMap::new()),
            shared: None,
        }
    }

    /// Shares the limits through `cluster` (call before [`Limits::configure`]); starts the
    /// renewal of this replica's concurrency leases.
    pub fn with_cluster(mut self, cluster: Arc<Cluster>) -> Self {
        let leases: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let (weak, c, clock) = (Arc::downgrade(&leases), cluster.clone(), self.clock.clone());
        cluster.spawn(renew_leases(weak, c, clock));
        self.shared = Some(Shared { cluster, share: RwLock::new(HashMap::new()), leases });
        self
    }

    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.shared.as_ref().map(|s| &s.cluster)
    }

    /// Applies the keys' limits; keys whose limits did not change keep their state.
    pub fn configure(&self, keys: &[ApiKeyConfig]) {
        self.configure_states(&self.keys, keys, |l| l.clone());
        if let Some(sh) = &self.shared {
            let n = sh.cluster.cfg.replicas;
            self.configure_states(&sh.share, keys, |l| share(l, n));
        }
    }

    fn configure_states(&self, states: &States, keys: &[ApiKeyConfig], limits: impl Fn(&KeyLimits) -> KeyLimits) {
        let mut map = states.write().unwrap_or_else(|p| p.into_inner());
        let mut next = HashMap::new();
        for k in keys {
            if k.limits == KeyLimits::default() {
                continue;
            }
            let cfg = limits(&k.limits);
            let state = match map.remove(&k.name) {
                Some(s) if s.cfg == cfg => s,
                _ => Arc::new(self.state_for(&cfg)),
            };
            next.insert(k.name.clone(), state);
        }
        *map = next;
    }

    fn state_for(&self, cfg: &KeyLimits) -> KeyState {
        let clock = GovClock { clock: self.clock.clone(), base: self.base };
        KeyState {
            cfg: cfg.clone(),
            rpm: cfg.requests_per_minute.and_then(NonZeroU32::new).map(|n| {
                RateLimiter::direct_with_clock(Quota::per_minute(n), clock.clone())
                    .with_middleware::<StateInformationMiddleware>()
            }),
            tpm: cfg.tokens_per_minute.map(|t| Mutex::new(Bucket { level: t as f64, at: self.clock.now() })),
            in_flight: AtomicU32::new(0),
        }
    }

    /// Starts the budgets from the ledger's totals: key → (today's USD, this month's USD).
    pub fn load_spend(&self, now_ms: u64, totals: HashMap<String, (Decimal, Decimal)>) {
        let (day, month) = periods(now_ms);
        let mut s = self.spend.lock().unwrap_or_else(|p| p.into_inner());
        for (k, (d, m)) in totals {
            s.insert(k, Spend { day, day_usd: d, month, month_usd: m });
        }
    }

    /// Settles a finished request's admission (`used` tokens charged) and adds its cost to its
    /// key's spend: here, and for a key with a budget in the shared spend too (in the
    /// settlement's own script when the admission was shared).
    pub fn finish(
        &self,
        admission: Option<Arc<Admission>>,
        used: u64,
        key: Option<&str>,
        usd: Option<Decimal>,
        at_ms: u64,
    ) {
        let (day, month) = periods(at_ms);
        let spend = match (key, usd, &self.shared) {
            (Some(k), Some(u), Some(_)) if !u.is_zero() && self.budgeted(k) => {
                Some(shared::Spend { pico: pico(u), day, month })
            }
            _ => None,
        };
        let taken = admission.is_some_and(|a| a.settle_spending(used, spend));
        if let (Some(s), false, Some(sh), Some(k)) = (spend, taken, &self.shared, key) {
            sh.cluster.add_spend(k, s.day, s.month, s.pico);
        }
        if let (Some(k), Some(u)) = (key, usd) {
            self.record_spend(k, u, at_ms);
        }
    }

    fn budgeted(&self, key: &str) -> bool {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .is_some_and(|s| s.cfg.budget_usd_per_day.is_some() || s.cfg.budget_usd_per_month.is_some())
    }

    /// Adds a finished request's cost to this replica's view of its key's spend.
    pub fn record_spend(&self, key: &str, usd: Decimal, at_ms: u64) {
        if usd.is_zero() {
            return;
        }
        let (day, month) = periods(at_ms);
        let mut m = self.spend.lock().unwrap_or_else(|p| p.into_inner());
        let s = m.entry(key.to_owned()).or_default();
        if s.day != day {
            if day < s.day {
                return;
            }
            s.day = day;
            s.day_usd = Decimal::ZERO;
        }
        if s.month != month {
            s.month = month;
            s.month_usd = Decimal::ZERO;
        }
        s.day_usd += usd;
        s.month_usd += usd;
    }

    /// The shared spend as Redis last told it (replaces this replica's view).
    fn saw_spend(&self, key: &str, now_ms: u64, day_pico: i64, month_pico: i64) {
        let (day, month) = periods(now_ms);
        let spend = Spend { day, day_usd: usd(day_pico), month, month_usd: usd(month_pico) };
        self.spend.lock().unwrap_or_else(|p| p.into_inner()).insert(key.to_owned(), spend);
    }

    /// The key's spend today and this month (UTC).
    pub fn spent(&self, key: &str, now_ms: u64) -> (Decimal, Decimal) {
        let (day, month) = periods(now_ms);
        let m = self.spend.lock().unwrap_or_else(|p| p.into_inner());
        match m.get(key) {
            Some(s) => (
                if s.day == day { s.day_usd } else { Decimal::ZERO },
                if s.month == month { s.month_usd } else { Decimal::ZERO },
            ),
            None => (Decimal::ZERO, Decimal::ZERO),
        }
    }

    /// Admits a request or refuses it with the 429 to send. `Ok(None)`: the key has no limits.
    pub async fn admit(&self, ask: &Ask<'_>) -> Result<Option<Admission>, ApiError> {
        let Some(state) = self.keys.read().unwrap_or_else(|p| p.into_inner()).get(&ask.key.name).cloned() else {
            return Ok(None);
        };
        let reserve = (ask.prompt_bytes as u64).div_ceil(4) + ask.max_tokens.unwrap_or(self.default_max_tokens);
        if let Some(cap) = state.cfg.tokens_per_minute.filter(|cap| reserve > *cap) {
            return Err(too_large(&ask.key.name, reserve, cap));
        }
        let Some(sh) = &self.shared else {
            return self.admit_local(&state, ask, reserve);
        };
        if let Some(decided) = self.admit_shared(sh, &state.cfg, ask, reserve).await {
            return decided;
        }
        // Redis is down: this replica's share.
        let stats = &sh.cluster.stats;
        stats.fallback_admissions.fetch_add(1, Ordering::Relaxed);
        let Some(mine) = sh.share.read().unwrap_or_else(|p| p.into_inner()).get(&ask.key.name).cloned() else {
            return Ok(None);
        };
        match self.admit_local(&mine, ask, reserve) {
            Err(e) if e.code.as_deref() == Some("insufficient_quota") => Err(e),
            Err(e) if sh.cluster.cfg.fail_closed => {
                stats.refused_share.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
            Err(_) => {
                stats.over_share.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
            ok => ok,
        }
    }

    /// The shared decision; `None` when Redis did not answer.
    async fn admit_shared(
        &self,
        sh: &Shared,
        cfg: &KeyLimits,
        ask: &Ask<'_>,
        reserve: u64,
    ) -> Option<Result<Option<Admission>, ApiError>> {
        let name = &ask.key.name;
        let (day, month) = periods(ask.now_ms);
        let lease = cfg.max_concurrent.map(|_| format!("{}:{}", sh.cluster.replica, uuid::Uuid::new_v4().simple()));
        let q = shared::Ask {
            name,
            now_ms: now_ms_of(&*self.clock),
            rpm: cfg.requests_per_minute.unwrap_or(0),
            tpm: cfg.tokens_per_minute.unwrap_or(0),
            reserve,
            max_concurrent: cfg.max_concurrent.unwrap_or(0),
            lease: lease.as_deref().unwrap_or(""),
            budget_day: cfg.budget_usd_per_day.map_or(-1, pico),
            budget_month: cfg.budget_usd_per_month.map_or(-1, pico),
            day,
            month,
        };
        // Renewed from now on; dropped (a refusal, no answer, or this request going away
        // while Redis answers) it is no longer renewed, and expires there.
        let mut renewed = Renewed { leases: &sh.leases, lease: lease.clone() };
        if let Some(l) = &lease {
            sh.leases.lock().unwrap_or_else(|p| p.into_inner()).insert(l.clone(), name.clone());
        }
        let out = sh.cluster.admit(&q).await?;
        use shared::Outcome as O;
        let (O::Admitted { day, month, .. }
        | O::Budget { day, month, .. }
        | O::Concurrency { day, month }
        | O::Tokens { day, month, .. }
        | O::Requests { day, month, .. }) = out.clone();
        if cfg.budget_usd_per_day.is_some() || cfg.budget_usd_per_month.is_some() {
            self.saw_spend(name, ask.now_ms, day, month);
        }
        let refused = match out {
            O::Admitted { tokens_left, requests_left, requests_reset_ms, .. } => {
                let mut headers = Vec::new();
                if let Some(cap) = cfg.tokens_per_minute {
                    headers.extend(token_headers(cap, tokens_left));
                }
                if let Some(rpm) = cfg.requests_per_minute {
                    let reset = Duration::from_secs_f64(requests_reset_ms.max(0.0) / 1000.0);
                    headers.extend(request_headers(rpm, requests_left, reset));
                }
                let tpm = cfg.tokens_per_minute.unwrap_or(0);
                // The admission holds the lease now (released when it is settled).
                renewed.lease = None;
                return Some(Ok(Some(Admission {
                    hold: Hold::Shared {
                        cluster: sh.cluster.clone(),
                        name: name.clone(),
                        tpm,
                        lease,
                        leases: sh.leases.clone(),
                    },
                    clock: self.clock.clone(),
                    reserved: if tpm > 0 { reserve } else { 0 },
                    settled: AtomicBool::new(false),
                    headers,
                })));
            }
            O::Budget { monthly, day, month } => {
                let (spent, b) =
                    if monthly { (usd(month), cfg.budget_usd_per_month) } else { (usd(day), cfg.budget_usd_per_day) };
                budget_refused(name, !monthly, spent, b.unwrap_or_default())
            }
            O::Concurrency { .. } => concurrency_refused(name, cfg.max_concurrent.unwrap_or(0)),
            O::Tokens { level, .. } => tokens_refused(name, cfg.tokens_per_minute.unwrap_or(0), reserve, level),
            O::Requests { wait_ms, .. } => {
                requests_refused(name, cfg.requests_per_minute.unwrap_or(0), Duration::from_secs_f64(wait_ms / 1000.0))
            }
        };
        Some(Err(refused))
    }

    /// The in-process decision (alone, or this replica's share while Redis is down).
    fn admit_local(&self, state: &Arc<KeyState>, ask: &Ask<'_>, reserve: u64) -> Result<Option<Admission>, ApiError> {
        let cfg = &state.cfg;
        let name = &ask.key.name;
        // Budgets first: nothing else should be consumed by a request that cannot be paid.
        if cfg.budget_usd_per_day.is_some() || cfg.budget_usd_per_month.is_some() {
            let (day, month) = self.spent(name, ask.now_ms);
            for (budget, spent, daily) in
                [(cfg.budget_usd_per_day, day, true), (cfg.budget_usd_per_month, month, false)]
            {
                if let Some(b) = budget.filter(|b| spent >= *b) {
                    return Err(budget_refused(name, daily, spent, b));
                }
            }
        }
        let mut headers = Vec::new();
        let now = self.clock.now();
        // Concurrency.
        if let Some(max) = cfg.max_concurrent {
            let prev = state.in_flight.fetch_add(1, Ordering::AcqRel);
            if prev >= max {
                state.in_flight.fetch_sub(1, Ordering::AcqRel);
                return Err(concurrency_refused(name, max));
            }
        }
        let release_slot = || {
            if cfg.max_concurrent.is_some() {
                state.in_flight.fetch_sub(1, Ordering::AcqRel);
            }
        };
        // Tokens: checked (not taken) before the request rate, so a refusal spends neither.
        if let (Some(cap), Some(b)) = (cfg.tokens_per_minute, &state.tpm) {
            let mut b = b.lock().unwrap_or_else(|p| p.into_inner());
            refill(&mut b, cap as f64, now);
            if b.level < reserve as f64 {
                let level = b.level;
                drop(b);
                release_slot();
                return Err(tokens_refused(name, cap, reserve, level));
            }
            headers.extend(token_headers(cap, b.level - reserve as f64));
        }
        // Requests.
        if let (Some(rpm), Some(lim)) = (cfg.requests_per_minute, &state.rpm) {
            let per = Duration::from_secs(60) / rpm;
            match lim.check() {
                Ok(snap) => {
                    let remaining = snap.remaining_burst_capacity();
                    headers.extend(request_headers(rpm, remaining, per * (rpm - remaining)));
                }
                Err(not_until) => {
                    let wait = not_until.wait_time_from(lim.clock().now());
                    release_slot();
                    return Err(requests_refused(name, rpm, wait));
                }
            }
        }
        // Only now is the token reservation taken: the request is admitted.
        if let Some(b) = &state.tpm {
            b.lock().unwrap_or_else(|p| p.into_inner()).level -= reserve as f64;
        }
        let reserved = if state.tpm.is_some() { reserve } else { 0 };
        Ok(Some(Admission {
            hold: Hold::Local(state.clone()),
            clock: self.clock.clone(),
            reserved,
            settled: AtomicBool::new(false),
            headers,
        }))
    }
}

/// A lease being renewed while its admission is decided: forgotten when dropped, unless the
/// admission took it.
struct Renewed<'a> {
    leases: &'a Mutex<HashMap<String, String>>,
    lease: Option<String>,
}

impl Drop for Renewed<'_> {
    fn drop(&mut self) {
        if let Some(l) = &self.lease {
            self.leases.lock().unwrap_or_else(|p| p.into_inner()).remove(l);
        }
    }
}

/// Renews this replica's leases until its limits are dropped.
async fn renew_leases(leases: Weak<Mutex<HashMap<String, String>>>, cluster: Arc<Cluster>, clock: Arc<dyn Clock>) {
    loop {
        tokio::time::sleep(shared::RENEW_EVERY).await;
        let Some(l) = leases.upgrade() else { return };
        let held: Vec<(String, String)> =
            l.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(lease, k)| (k.clone(), lease.clone())).collect();
        drop(l);
        cluster.renew(&held, now_ms_of(&*clock)).await;
    }
}

/// The cluster's families on `/metrics`: whether Redis answers, and how often this replica
/// decided alone.
pub struct ClusterMetrics(pub Arc<Cluster>);

impl std::fmt::Debug for ClusterMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterMetrics")
    }
}

impl Collector for ClusterMetrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.0.stats;
        let up = ConstGauge::new(u64::from(self.0.is_up()));
        family(
            &mut enc,
            "tollgate_cluster_redis_up",
            "Whether Redis answers (0: this replica uses its fallbacks).",
            [(NO_LABELS, up)],
        )?;
        for (name, help, v) in [
            ("tollgate_cluster_redis_errors_total", "Redis calls that failed or timed out.", &s.errors),
            (
                "tollgate_cluster_fallback_admissions_total",
                "Admissions decided by this replica's share of the limits while Redis was down.",
                &s.fallback_admissions,
            ),
            (
                "tollgate_cluster_over_share_total",
                "Requests admitted beyond this replica's share while Redis was down (fail_mode open).",
                &s.over_share,
            ),
            (
                "tollgate_cluster_refused_share_total",
                "Requests refused beyond this replica's share while Redis was down (fail_mode closed).",
                &s.refused_share,
            ),
            ("tollgate_cluster_cache_hits_total", "Answers found in the shared cache.", &s.cache_hits),
            ("tollgate_cluster_cache_misses_total", "Shared cache lookups that found nothing.", &s.cache_misses),
        ] {
            family(&mut enc, name, help, [(NO_LABELS, ConstCounter::new(v.load(Ordering::Relaxed)))])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

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
//! Every admitted response carries `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`
//! for the limits the key has; a refusal is a 429 in the OpenAI shape with the same headers
//! and `retry-after`; an exhausted budget is `insufficient_quota` with `x-should-retry: false`.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::http::{HeaderName, HeaderValue};
use governor::clock::Clock as _;
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use rust_decimal::Decimal;

use crate::clock::Clock;
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

pub struct Limits {
    clock: Arc<dyn Clock>,
    base: Instant,
    default_max_tokens: u64,
    keys: RwLock<HashMap<String, Arc<KeyState>>>,
    spend: Mutex<HashMap<String, Spend>>,
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

/// An admitted request's hold on its key's limits, released by [`Admission::settle`] (or on
/// drop, keeping the whole reservation).
pub struct Admission {
    state: Arc<KeyState>,
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
        if self.settled.swap(true, Ordering::AcqRel) {
            return;
        }
        if self.state.cfg.max_concurrent.is_some() {
            self.state.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(b) = &self.state.tpm {
            let cap = self.state.cfg.tokens_per_minute.unwrap_or(0) as f64;
            let mut b = b.lock().unwrap_or_else(|p| p.into_inner());
            refill(&mut b, cap, self.clock.now());
            b.level = (b.level + self.reserved as f64 - used_tokens as f64).min(cap);
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.settle(self.reserved);
    }
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

impl Limits {
    pub fn new(clock: Arc<dyn Clock>, default_max_tokens: u64) -> Self {
        let base = clock.now();
        Limits { clock, base, default_max_tokens, keys: RwLock::new(HashMap::new()), spend: Mutex::new(HashMap::new()) }
    }

    /// Applies the keys' limits; keys whose limits did not change keep their state.
    pub fn configure(&self, keys: &[ApiKeyConfig]) {
        let mut map = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let mut next = HashMap::new();
        for k in keys {
            if k.limits == KeyLimits::default() {
                continue;
            }
            let state = match map.remove(&k.name) {
                Some(s) if s.cfg == k.limits => s,
                _ => Arc::new(self.state_for(&k.limits)),
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
        let day = now_ms / DAY_MS;
        let month = period_starts(now_ms).1 / DAY_MS;
        let mut s = self.spend.lock().unwrap_or_else(|p| p.into_inner());
        for (k, (d, m)) in totals {
            s.insert(k, Spend { day, day_usd: d, month, month_usd: m });
        }
    }

    /// Adds a finished request's cost to its key's spend.
    pub fn record_spend(&self, key: &str, usd: Decimal, at_ms: u64) {
        if usd.is_zero() {
            return;
        }
        let day = at_ms / DAY_MS;
        let month = period_starts(at_ms).1 / DAY_MS;
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

    /// The key's spend today and this month (UTC).
    pub fn spent(&self, key: &str, now_ms: u64) -> (Decimal, Decimal) {
        let day = now_ms / DAY_MS;
        let month = period_starts(now_ms).1 / DAY_MS;
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
    pub fn admit(&self, ask: &Ask<'_>) -> Result<Option<Admission>, ApiError> {
        let Some(state) = self.keys.read().unwrap_or_else(|p| p.into_inner()).get(&ask.key.name).cloned() else {
            return Ok(None);
        };
        let cfg = &state.cfg;
        let name = &ask.key.name;
        // Budgets first: nothing else should be consumed by a request that cannot be paid.
        if cfg.budget_usd_per_day.is_some() || cfg.budget_usd_per_month.is_some() {
            let (day, month) = self.spent(name, ask.now_ms);
            for (budget, spent, period) in
                [(cfg.budget_usd_per_day, day, "daily"), (cfg.budget_usd_per_month, month, "monthly")]
            {
                if let Some(b) = budget.filter(|b| spent >= *b) {
                    let mut e = ApiError::insufficient_quota(format!(
                        "The key '{name}' has used its {period} budget: ${} of ${b}. It resets at the start of the next UTC {}.",
                        spent.round_dp(6).normalize(),
                        if period == "daily" { "day" } else { "month" }
                    ));
                    e.push_header(header("x-should-retry", "false"));
                    return Err(e);
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
                let mut e = ApiError::rate_limited(
                    format!("The key '{name}' has {max} requests in flight, its limit; retry when one ends."),
                    Some(1),
                );
                e.push_header(header("x-ratelimit-limit-concurrent", max));
                e.push_header(header("x-ratelimit-remaining-concurrent", 0));
                return Err(e);
            }
        }
        let release_slot = || {
            if cfg.max_concurrent.is_some() {
                state.in_flight.fetch_sub(1, Ordering::AcqRel);
            }
        };
        // Tokens: checked (not taken) before the request rate, so a refusal spends neither.
        let reserve = (ask.prompt_bytes as u64).div_ceil(4) + ask.max_tokens.unwrap_or(self.default_max_tokens);
        if let (Some(cap), Some(b)) = (cfg.tokens_per_minute, &state.tpm) {
            let mut b = b.lock().unwrap_or_else(|p| p.into_inner());
            refill(&mut b, cap as f64, now);
            let capf = cap as f64;
            let rate = capf / 60.0;
            let tok_headers = |level: f64| {
                let reset = Duration::from_secs_f64(((capf - level).max(0.0) / rate).max(0.0));
                [
                    header("x-ratelimit-limit-tokens", cap),
                    header("x-ratelimit-remaining-tokens", level.max(0.0).floor() as u64),
                    header("x-ratelimit-reset-tokens", reset_text(reset)),
                ]
            };
            if reserve > cap {
                drop(b);
                release_slot();
                let mut e = ApiError::rate_limited(
                    format!(
                        "Request too large for the key '{name}': it may use {reserve} tokens (prompt plus max_tokens), more than its limit of {cap} tokens per minute. Lower max_tokens or shorten the prompt."
                    ),
                    None,
                );
                e.push_header(header("x-should-retry", "false"));
                return Err(e);
            }
            if b.level < reserve as f64 {
                let wait = Duration::from_secs_f64((reserve as f64 - b.level) / rate);
                let h = tok_headers(b.level);
                drop(b);
                release_slot();
                let mut e = ApiError::rate_limited(
                    format!(
                        "Rate limit reached for the key '{name}' on tokens per minute: limit {cap}, requested {reserve}. Please try again in {}.",
                        reset_text(wait)
                    ),
                    Some(wait.as_secs_f64().ceil().max(1.0) as u32),
                );
                for h in h {
                    e.push_header(h);
                }
                e.push_header(header("retry-after-ms", wait.as_millis()));
                return Err(e);
            }
            headers.extend(tok_headers(b.level - reserve as f64));
        }
        // Requests.
        if let (Some(rpm), Some(lim)) = (cfg.requests_per_minute, &state.rpm) {
            let per = Duration::from_secs(60) / rpm;
            match lim.check() {
                Ok(snap) => {
                    let remaining = snap.remaining_burst_capacity();
                    headers.push(header("x-ratelimit-limit-requests", rpm));
                    headers.push(header("x-ratelimit-remaining-requests", remaining));
                    headers.push(header("x-ratelimit-reset-requests", reset_text(per * (rpm - remaining))));
                }
                Err(not_until) => {
                    let wait = not_until.wait_time_from(lim.clock().now());
                    release_slot();
                    let mut e = ApiError::rate_limited(
                        format!(
                            "Rate limit reached for the key '{name}' on requests per minute: limit {rpm}. Please try again in {}.",
                            reset_text(wait)
                        ),
                        Some(wait.as_secs_f64().ceil().max(1.0) as u32),
                    );
                    e.push_header(header("x-ratelimit-limit-requests", rpm));
                    e.push_header(header("x-ratelimit-remaining-requests", 0));
                    e.push_header(header("x-ratelimit-reset-requests", reset_text(wait)));
                    e.push_header(header("retry-after-ms", wait.as_millis()));
                    return Err(e);
                }
            }
        }
        // Only now is the token reservation taken: the request is admitted.
        if let Some(b) = &state.tpm {
            b.lock().unwrap_or_else(|p| p.into_inner()).level -= reserve as f64;
        }
        let reserved = if state.tpm.is_some() { reserve } else { 0 };
        Ok(Some(Admission { state, clock: self.clock.clone(), reserved, settled: AtomicBool::new(false), headers }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::str::FromStr;

    fn key(limits: KeyLimits) -> ApiKeyConfig {
        ApiKeyConfig { name: "k".into(), sha256: [0; 32], aliases: vec!["*".into()], limits, guardrails: None }
    }

    #[test]
    fn periods_are_utc_days_and_months() {
        // 2026-11-30T12:00:00Z
        let now = 1_796_040_000_000u64;
        let (day, month) = period_starts(now);
        assert_eq!(day, 1_795_996_800_000); // 2026-11-30T00:00:00Z
        assert_eq!(month, 1_793_491_200_000); // 2026-11-01T00:00:00Z
        assert_eq!(period_starts(951_782_400_000).1, 949_363_200_000); // 2000-02-29 → 2000-02-01
        assert_eq!(year_month(11_016), (2000, 2));
    }

    #[test]
    fn requests_per_minute_refuse_then_recover() {
        let clock = Arc::new(ManualClock::new());
        let l = Limits::new(clock.clone(), 100);
        let k = key(KeyLimits { requests_per_minute: Some(3), ..Default::default() });
        l.configure(std::slice::from_ref(&k));
        let ask = Ask { key: &k, prompt_bytes: 10, max_tokens: Some(5), now_ms: 0 };
        for _ in 0..3 {
            assert!(l.admit(&ask).unwrap().is_some());
        }
        let e = l.admit(&ask).unwrap_err();
        assert_eq!(e.status.as_u16(), 429);
        assert_eq!(e.retry_after, Some(20));
        clock.advance(Duration::from_secs(20));
        let a = l.admit(&ask).unwrap().unwrap();
        let h: HashMap<_, _> = a.headers.iter().map(|(k, v)| (k.as_str(), v.to_str().unwrap())).collect();
        assert_eq!(h["x-ratelimit-limit-requests"], "3");
        assert_eq!(h["x-ratelimit-remaining-requests"], "0");
    }

    #[test]
    fn tokens_are_reserved_and_refunded() {
        let clock = Arc::new(ManualClock::new());
        let l = Limits::new(clock.clone(), 100);
        let k = key(KeyLimits { tokens_per_minute: Some(1000), ..Default::default() });
        l.configure(std::slice::from_ref(&k));
        let big = Ask { key: &k, prompt_bytes: 400, max_tokens: Some(600), now_ms: 0 }; // 700 reserved
        let a = l.admit(&big).unwrap().unwrap();
        let e = l.admit(&big).unwrap_err();
        assert_eq!(e.status.as_u16(), 429, "300 left, 700 asked");
        a.settle(150); // 550 refunded
        drop(a);
        let b = l.admit(&big).unwrap().unwrap();
        let h: HashMap<_, _> = b.headers.iter().map(|(k, v)| (k.as_str(), v.to_str().unwrap())).collect();
        assert_eq!(h["x-ratelimit-remaining-tokens"], "150");
        let too_big = Ask { key: &k, prompt_bytes: 0, max_tokens: Some(5000), now_ms: 0 };
        let e = l.admit(&too_big).unwrap_err();
        assert!(e.message.contains("Request too large"), "{}", e.message);
        // Without max_tokens the configured default is reserved.
        let dflt = Ask { key: &k, prompt_bytes: 0, max_tokens: None, now_ms: 0 };
        drop(b); // dropped unsettled: the reservation stays spent
        let e = l.admit(&Ask { max_tokens: Some(300), ..dflt }).unwrap_err();
        assert_eq!(e.status.as_u16(), 429, "150 left after an unsettled 700");
        clock.advance(Duration::from_secs(6)); // +100
        assert!(l.admit(&dflt).unwrap().is_some(), "250 left, 100 asked");
    }

    #[test]
    fn concurrency_is_released_when_settled() {
        let l = Limits::new(Arc::new(ManualClock::new()), 100);
        let k = key(KeyLimits { max_concurrent: Some(1), ..Default::default() });
        l.configure(std::slice::from_ref(&k));
        let ask = Ask { key: &k, prompt_bytes: 0, max_tokens: None, now_ms: 0 };
        let a = l.admit(&ask).unwrap().unwrap();
        assert!(l.admit(&ask).is_err());
        a.settle(0);
        assert!(l.admit(&ask).is_ok());
    }

    #[test]
    fn budgets_refuse_with_insufficient_quota() {
        let l = Limits::new(Arc::new(ManualClock::new()), 100);
        let k = key(KeyLimits { budget_usd_per_day: Some(Decimal::from_str("0.01").unwrap()), ..Default::default() });
        l.configure(std::slice::from_ref(&k));
        let now = 1_796_040_000_000u64;
        let ask = Ask { key: &k, prompt_bytes: 0, max_tokens: None, now_ms: now };
        l.load_spend(now, HashMap::from([("k".to_owned(), (Decimal::from_str("0.006").unwrap(), Decimal::ZERO))]));
        assert!(l.admit(&ask).is_ok());
        l.record_spend("k", Decimal::from_str("0.004").unwrap(), now);
        let e = l.admit(&ask).unwrap_err();
        assert_eq!(e.code.as_deref(), Some("insufficient_quota"));
        assert!(e.header_list().iter().any(|(n, v)| n == "x-should-retry" && v == "false"));
        // The next UTC day starts afresh.
        assert!(l.admit(&Ask { now_ms: now + DAY_MS, ..ask }).is_ok());
    }
}

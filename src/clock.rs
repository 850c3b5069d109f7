//! Time: the injectable [`Clock`] (monotonic `Instant`s, so that breakers, rate limits and
//! windows are tested without sleeps) and wall-clock helpers for records and ledgers.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Time, injectable so that tests of the breaker need no sleeps.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
    /// Wall-clock time in Unix microseconds, moving with [`Clock::now`]: what the shared
    /// limiter's scripts take as `now`, so that replicas (and a test's replicas on one
    /// [`ManualClock`]) agree on it.
    fn unix_micros(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
    }
}

pub struct SystemClock;
impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told: for tests of anything timed (breakers, rate limits,
/// windows), in unit tests and in a gateway started by an integration test.
pub struct ManualClock {
    now: Mutex<Instant>,
    /// Unix microseconds at [`ManualClock::new`]; the wall clock moves with `now` only.
    epoch_us: u64,
    start: Instant,
}

impl ManualClock {
    pub fn new() -> Self {
        let start = Instant::now();
        ManualClock { now: Mutex::new(start), epoch_us: SystemClock.unix_micros(), start }
    }
    pub fn advance(&self, d: Duration) {
        *self.now.lock().unwrap_or_else(|p| p.into_inner()) += d;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.now.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn unix_micros(&self) -> u64 {
        self.epoch_us + self.now().duration_since(self.start).as_micros() as u64
    }
}

/// Unix milliseconds now (0 on a clock before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A duration in milliseconds, as the records and timings report it.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Unix seconds now (0 on a clock before 1970): OpenAI's `created` fields.
pub fn now_s() -> u64 {
    now_ms() / 1000
}

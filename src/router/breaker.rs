//! The circuit breaker each deployment has: closed, open for `OPEN_FOR` after
//! `FAILURE_THRESHOLD` consecutive failures, then half-open with one trial request.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::clock::Clock;

use super::{FAILURE_THRESHOLD, OPEN_FOR};

/// A consecutive-failure circuit breaker with a half-open probe.
pub struct Breaker {
    clock: Arc<dyn Clock>,
    failures: AtomicU32,
    state: Mutex<BreakerState>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BreakerState {
    Closed,
    Open {
        until: Instant,
    },
    /// A probe is in flight since then. A probe whose request vanished (its client left
    /// mid-attempt) is given up after `OPEN_FOR`, and another caller probes.
    HalfOpen {
        since: Instant,
    },
}

impl Breaker {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Breaker { clock, failures: AtomicU32::new(0), state: Mutex::new(BreakerState::Closed) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May a request go to this deployment now? Past the open period, the first caller
    /// becomes the probe.
    pub fn allow(&self) -> bool {
        let mut st = self.lock();
        let now = self.clock.now();
        match *st {
            BreakerState::Closed => true,
            BreakerState::Open { until } if now >= until => {
                *st = BreakerState::HalfOpen { since: now };
                true
            }
            BreakerState::HalfOpen { since } if now >= since + OPEN_FOR => {
                *st = BreakerState::HalfOpen { since: now };
                true
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen { .. } => false,
        }
    }

    /// Retries on the same deployment stop once the breaker has opened.
    pub(super) fn allow_retry(&self) -> bool {
        matches!(*self.lock(), BreakerState::Closed)
    }

    pub fn is_open(&self) -> bool {
        !matches!(*self.lock(), BreakerState::Closed)
    }

    pub fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        *self.lock() = BreakerState::Closed;
    }

    /// A half-open probe that ended with a client error proves nothing either way.
    pub(super) fn release_probe(&self) {
        let mut st = self.lock();
        if matches!(*st, BreakerState::HalfOpen { .. }) {
            *st = BreakerState::Open { until: self.clock.now() };
        }
    }

    pub fn failure(&self) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let mut st = self.lock();
        if matches!(*st, BreakerState::HalfOpen { .. }) || n >= FAILURE_THRESHOLD {
            *st = BreakerState::Open { until: self.clock.now() + OPEN_FOR };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn breaker_opens_probes_and_closes() {
        let clock = Arc::new(ManualClock::new());
        let b = Breaker::new(clock.clone());
        for _ in 0..FAILURE_THRESHOLD - 1 {
            b.failure();
            assert!(b.allow());
        }
        b.failure();
        assert!(!b.allow(), "open after the threshold");
        clock.advance(OPEN_FOR);
        assert!(b.allow(), "the first caller after the open period probes");
        assert!(!b.allow(), "only one probe at a time");
        b.failure();
        assert!(!b.allow(), "a failed probe opens it again");
        clock.advance(OPEN_FOR);
        assert!(b.allow(), "probing again after the open period");
        // That probe's request vanished: after another period someone else probes.
        clock.advance(OPEN_FOR);
        assert!(b.allow());
        b.success();
        assert!(b.allow() && b.allow(), "a good probe closes it");
    }
}

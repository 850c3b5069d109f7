//! The limits' unit tests, on a manual clock.

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

#[tokio::test]
async fn requests_per_minute_refuse_then_recover() {
    let clock = Arc::new(ManualClock::new());
    let l = Limits::new(clock.clone(), 100);
    let k = key(KeyLimits { requests_per_minute: Some(3), ..Default::default() });
    l.configure(std::slice::from_ref(&k));
    let ask = Ask { key: &k, prompt_bytes: 10, max_tokens: Some(5), now_ms: 0 };
    for _ in 0..3 {
        assert!(l.admit(&ask).await.unwrap().is_some());
    }
    let e = l.admit(&ask).await.unwrap_err();
    assert_eq!(e.status.as_u16(), 429);
    assert_eq!(e.retry_after, Some(20));
    clock.advance(Duration::from_secs(20));
    let a = l.admit(&ask).await.unwrap().unwrap();
    let h: HashMap<_, _> = a.headers.iter().map(|(k, v)| (k.as_str(), v.to_str().unwrap())).collect();
    assert_eq!(h["x-ratelimit-limit-requests"], "3");
    assert_eq!(h["x-ratelimit-remaining-requests"], "0");
}

#[tokio::test]
async fn tokens_are_reserved_and_refunded() {
    let clock = Arc::new(ManualClock::new());
    let l = Limits::new(clock.clone(), 100);
    let k = key(KeyLimits { tokens_per_minute: Some(1000), ..Default::default() });
    l.configure(std::slice::from_ref(&k));
    let big = Ask { key: &k, prompt_bytes: 400, max_tokens: Some(600), now_ms: 0 }; // 700 reserved
    let a = l.admit(&big).await.unwrap().unwrap();
    let e = l.admit(&big).await.unwrap_err();
    assert_eq!(e.status.as_u16(), 429, "300 left, 700 asked");
    a.settle(150); // 550 refunded
    drop(a);
    let b = l.admit(&big).await.unwrap().unwrap();
    let h: HashMap<_, _> = b.headers.iter().map(|(k, v)| (k.as_str(), v.to_str().unwrap())).collect();
    assert_eq!(h["x-ratelimit-remaining-tokens"], "150");
    let too_big = Ask { key: &k, prompt_bytes: 0, max_tokens: Some(5000), now_ms: 0 };
    let e = l.admit(&too_big).await.unwrap_err();
    assert!(e.message.contains("Request too large"), "{}", e.message);
    // Without max_tokens the configured default is reserved.
    let dflt = Ask { key: &k, prompt_bytes: 0, max_tokens: None, now_ms: 0 };
    drop(b); // dropped unsettled: the reservation stays spent
    let e = l.admit(&Ask { max_tokens: Some(300), ..dflt }).await.unwrap_err();
    assert_eq!(e.status.as_u16(), 429, "150 left after an unsettled 700");
    clock.advance(Duration::from_secs(6)); // +100
    assert!(l.admit(&dflt).await.unwrap().is_some(), "250 left, 100 asked");
}

#[tokio::test]
async fn concurrency_is_released_when_settled() {
    let l = Limits::new(Arc::new(ManualClock::new()), 100);
    let k = key(KeyLimits { max_concurrent: Some(1), ..Default::default() });
    l.configure(std::slice::from_ref(&k));
    let ask = Ask { key: &k, prompt_bytes: 0, max_tokens: None, now_ms: 0 };
    let a = l.admit(&ask).await.unwrap().unwrap();
    assert!(l.admit(&ask).await.is_err());
    a.settle(0);
    assert!(l.admit(&ask).await.is_ok());
}

#[tokio::test]
async fn budgets_refuse_with_insufficient_quota() {
    let l = Limits::new(Arc::new(ManualClock::new()), 100);
    let k = key(KeyLimits { budget_usd_per_day: Some(Decimal::from_str("0.01").unwrap()), ..Default::default() });
    l.configure(std::slice::from_ref(&k));
    let now = 1_796_040_000_000u64;
    let ask = Ask { key: &k, prompt_bytes: 0, max_tokens: None, now_ms: now };
    l.load_spend(now, HashMap::from([("k".to_owned(), (Decimal::from_str("0.006").unwrap(), Decimal::ZERO))]));
    assert!(l.admit(&ask).await.is_ok());
    l.record_spend("k", Decimal::from_str("0.004").unwrap(), now);
    let e = l.admit(&ask).await.unwrap_err();
    assert_eq!(e.code.as_deref(), Some("insufficient_quota"));
    assert!(e.header_list().iter().any(|(n, v)| n == "x-should-retry" && v == "false"));
    // The next UTC day starts afresh.
    assert!(l.admit(&Ask { now_ms: now + DAY_MS, ..ask }).await.is_ok());
}

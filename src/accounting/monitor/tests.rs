//! The monitors' unit tests, on a manual clock.

use super::*;
use crate::accounting::metrics::sample;
use crate::protocol::Endpoint;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::json;

struct ManualClock(Mutex<Instant>);
impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.0.lock().unwrap()
    }
}

fn monitor(cfg: MonitorConfig) -> (Arc<Monitor>, impl Fn(u64)) {
    let clock = Arc::new(ManualClock(Mutex::new(Instant::now())));
    let c = clock.clone();
    (Arc::new(Monitor::new(cfg, clock)), move |secs| *c.0.lock().unwrap() += Duration::from_secs(secs))
}

fn rec(status: u16) -> RequestRecord {
    let mut r = RequestRecord::new("r".into(), Endpoint::Chat, "a".into(), false);
    (r.deployment, r.status, r.finish_reason) = (Some("d".into()), status, Some("stop".into()));
    (r.prompt_tokens, r.completion_tokens, r.total_ms, r.ttft_ms) = (20, 10, 100.0, Some(10.0));
    r.error = (status >= 400).then_some("upstream");
    r
}

fn drift_rec(prompt: u64, completion: u64, finish: &str) -> RequestRecord {
    let mut r = rec(200);
    (r.prompt_tokens, r.completion_tokens, r.finish_reason) = (prompt, completion, Some(finish.into()));
    r
}

fn rendered(m: &Arc<Monitor>) -> String {
    let mut registry = crate::accounting::metrics::Registry::default();
    registry.register_collector(Box::new(m.clone()));
    crate::accounting::metrics::encode(&registry)
}

#[test]
fn error_rate_alert_fires_once_and_resolves_once() {
    let (m, advance) = monitor(MonitorConfig::default());
    for i in 0..100 {
        m.observe(&rec(if i == 30 || i == 70 { 502 } else { 200 }));
    }
    assert_eq!(m.error_rate("d"), Some((0.02, 100)));
    let log = m.alert_log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(log[0].firing && log[0].kind == AlertKind::ErrorRate && log[0].deployment == "d");
    assert_eq!(m.active_alerts(), log);
    (0..10).for_each(|_| m.observe(&rec(503)));
    assert_eq!(m.alert_log().len(), 1, "no new event while firing");

    advance(301);
    (0..30).for_each(|_| m.observe(&rec(200)));
    let log = m.alert_log();
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(!log[1].firing && log[1].value == 0.0 && log[1].requests == 1, "{:?}", log[1]);
    assert!(m.active_alerts().is_empty());
    assert_eq!(m.error_rate("d"), Some((0.0, 30)));
    let out = rendered(&m);
    assert!(out.contains("tollgate_alerts_total{kind=\"error_rate\",deployment=\"d\"} 1\n"), "{out}");
    assert!(out.contains("tollgate_alert_firing{kind=\"error_rate\",deployment=\"d\"} 0\n"), "{out}");
    assert_eq!(sample(&out, "tollgate_error_rate_window{deployment=\"d\"}"), Some(0.0), "{out}");
    assert_eq!(m.alert_log().len(), 2, "render judges again but adds nothing");
}

#[test]
fn under_min_requests_no_alert_and_silence_resolves() {
    let (m, advance) = monitor(MonitorConfig::default());
    (0..10).for_each(|_| m.observe(&rec(503)));
    assert_eq!(m.error_rate("d"), Some((1.0, 10)));
    assert!(m.alert_log().is_empty() && m.active_alerts().is_empty());
    (0..10).for_each(|_| m.observe(&rec(503)));
    assert_eq!(m.active_alerts().len(), 1);
    advance(301); // no more traffic: once the window is empty, the alert resolves
    assert!(m.active_alerts().is_empty());
    assert_eq!(m.alert_log().iter().map(|a| a.firing).collect::<Vec<_>>(), [true, false]);
    assert_eq!(m.error_rate("d"), None);
}

#[test]
fn what_counts_as_an_error_and_what_is_not_monitored() {
    let mut r = rec(200);
    assert!(!is_error(&r));
    r.error = Some("upstream_stream");
    assert!(is_error(&r), "a stream that broke after its 200");
    for (status, err) in [(400, false), (404, false), (408, true), (429, true), (500, true), (503, true)] {
        assert_eq!(is_error(&rec(status)), err, "{status}");
    }
    let mut closed = rec(499);
    closed.client_closed = true;
    assert!(!is_error(&closed));

    let (m, _) = monitor(MonitorConfig::default());
    let (mut refused, mut hit) = (rec(429), rec(200));
    (refused.deployment, hit.cache_hit) = (None, true);
    m.observe(&refused);
    m.observe(&hit);
    assert_eq!((m.error_rate("d"), m.window_quantiles("a", "d", "total")), (None, None));

    let (m, _) = monitor(MonitorConfig { enabled: false, ..MonitorConfig::default() });
    m.observe(&rec(500));
    m.observe_fields("a", json!({"user": "u"}).as_object().unwrap());
    assert_eq!((m.error_rate("d"), m.field_counts("a", "user")), (None, None));
}

#[test]
fn shifted_prompt_lengths_drift_and_unshifted_do_not() {
    let cfg = MonitorConfig { drift_window: 500, ..MonitorConfig::default() };
    let mut rng = StdRng::seed_from_u64(7);
    let mut usual =
        |prompt: std::ops::RangeInclusive<u64>| drift_rec(rng.random_range(prompt), rng.random_range(50..=150), "stop");
    let (same, _) = monitor(cfg.clone());
    for i in 0..1500 {
        same.observe(&usual(10..=30));
        assert_eq!(same.psi("d").is_some(), i >= 499, "None until the current window is full");
        let worst = same.psi("d").unwrap_or_default().into_iter().fold(0.0, f64::max);
        assert!(worst < 0.1, "unshifted PSI {worst} after {i}");
    }
    assert!(same.alert_log().is_empty());

    let (shifted, _) = monitor(cfg);
    (0..500).for_each(|_| shifted.observe(&usual(10..=30)));
    assert_eq!(shifted.psi("d"), Some([0.0; 3]), "current = baseline at first");
    (0..500).for_each(|_| shifted.observe(&usual(300..=500)));
    let [p, c, f] = shifted.psi("d").unwrap();
    assert!(p > 0.2 && c < 0.1 && f == 0.0, "{p} {c} {f}");
    let log = shifted.alert_log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(log[0].firing && log[0].kind == AlertKind::DriftPromptTokens && log[0].requests == 500);
    let out = rendered(&shifted);
    assert!(out.contains("tollgate_alert_firing{kind=\"drift_prompt_tokens\",deployment=\"d\"} 1\n"), "{out}");
    assert_eq!(sample(&out, "tollgate_drift_psi{deployment=\"d\",kind=\"prompt_tokens\"}"), Some(p), "{out}");
}

#[test]
fn finish_reason_mix_shift_raises_its_psi() {
    let (m, _) = monitor(MonitorConfig { drift_window: 200, ..MonitorConfig::default() });
    (0..200).for_each(|_| m.observe(&drift_rec(20, 100, "stop")));
    (0..200).for_each(|i| m.observe(&drift_rec(20, 100, ["stop", "length"][i % 2])));
    let [p, c, f] = m.psi("d").unwrap();
    assert!(p == 0.0 && c == 0.0 && f > 0.2, "{p} {c} {f}");
    assert_eq!(m.active_alerts().into_iter().map(|a| a.kind).collect::<Vec<_>>(), [AlertKind::DriftFinishReason]);
    (0..200).for_each(|_| m.observe(&drift_rec(20, 100, "stop"))); // back to the baseline mix
    assert!(m.active_alerts().is_empty());
    assert_eq!(m.alert_log().len(), 2);
}

#[test]
fn token_bins_are_log2() {
    let bins = [0, 1, 2, 3, 4, 5, 8, 9, 16, 17, 262_144, 262_145, u64::MAX].map(token_bin);
    assert_eq!(bins, [0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 18, 19, 19]);
    assert_eq!([Some("stop"), Some("content_filter"), Some("eos"), None].map(finish_bin), [0, 3, 4, 4]);
}

#[test]
fn field_health_counts_present_null_missing() {
    let (m, _) = monitor(MonitorConfig::default());
    m.observe_fields("a", json!({"user": "u", "temperature": null, "stream": true}).as_object().unwrap());
    m.observe_fields("a", json!({"user": null, "tools": []}).as_object().unwrap());
    assert_eq!(m.field_counts("a", "user"), Some([1, 1, 0]));
    assert_eq!(m.field_counts("a", "temperature"), Some([0, 1, 1]));
    assert_eq!(m.field_counts("a", "stream"), Some([1, 0, 1]));
    assert_eq!(m.field_counts("a", "tools"), Some([1, 0, 1]));
    assert_eq!(m.field_counts("a", "seed"), Some([0, 0, 2]));
    assert_eq!(m.field_counts("a", "messages"), None, "not a tracked field");
    let out = rendered(&m);
    assert!(out.contains("tollgate_request_field_total{alias=\"a\",field=\"user\",state=\"null\"} 1\n"), "{out}");
    assert!(out.contains("# TYPE tollgate_request_field_total counter\n"));

    let (m, _) = monitor(MonitorConfig::default());
    (0..300).for_each(|i| m.observe_fields(&format!("x{i}"), &serde_json::Map::new()));
    assert_eq!((m.field_counts("x255", "seed"), m.field_counts("x256", "seed")), (Some([0, 0, 1]), None));
    assert_eq!(m.field_counts("_other", "seed"), Some([0, 0, 44]));
}

#[test]
fn window_quantiles_by_nearest_rank() {
    let (m, advance) = monitor(MonitorConfig::default());
    for i in 1..=100 {
        let mut r = rec(200);
        (r.alias, r.total_ms, r.ttft_ms, r.completion_tokens) = ("a\"b".into(), i as f64, Some(1.0), 2);
        m.observe(&r);
    }
    assert_eq!(m.window_quantiles("a\"b", "d", "total"), Some([50.0, 95.0, 99.0]));
    assert_eq!(m.window_quantiles("a\"b", "d", "ttft"), Some([1.0; 3]));
    assert_eq!(m.window_quantiles("a\"b", "d", "tpot"), Some([49.0, 94.0, 98.0]));
    assert_eq!(m.window_quantiles("a\"b", "d", "itl"), None);
    let out = rendered(&m);
    for (q, v) in [("0.5", 0.05), ("0.95", 0.095), ("0.99", 0.099)] {
        let series = format!(
            "tollgate_latency_window_seconds{{alias=\"a\\\"b\",deployment=\"d\",metric=\"total\",quantile=\"{q}\"}}"
        );
        assert_eq!(sample(&out, &series), Some(v), "{out}");
    }
    advance(301);
    assert_eq!(m.window_quantiles("a\"b", "d", "total"), None, "all samples are older than the window");
}

/// A webhook receiver on 127.0.0.1:0 that answers `status` and passes on each body.
async fn hook_server(status: u16) -> (String, mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/alerts",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| async move {
            let _ = tx.send(body);
            http::StatusCode::from_u16(status).unwrap()
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/alerts", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

#[tokio::test]
async fn webhook_gets_one_post_for_a_sustained_error_condition() {
    let (url, mut posts) = hook_server(200).await;
    let (m, _) = monitor(MonitorConfig { webhook_url: Some(url), ..MonitorConfig::default() });
    (0..200).for_each(|i| m.observe(&rec(if i % 2 == 0 { 503 } else { 200 })));
    let wait = Duration::from_secs(10);
    let alert = tokio::time::timeout(wait, posts.recv()).await.expect("a POST within 10 s").unwrap();
    assert_eq!(alert, serde_json::to_value(&m.alert_log()[0]).unwrap());
    assert_eq!(
        (&alert["kind"], &alert["deployment"], &alert["firing"]),
        (&json!("error_rate"), &json!("d"), &json!(true))
    );
    assert_eq!((&alert["threshold"], &alert["requests"]), (&json!(0.01), &json!(20)));
    // Drain sends whatever is queued: a second alert, had there been one, would be here now.
    tokio::time::timeout(wait, m.drain()).await.expect("drained within 10 s");
    assert!(posts.try_recv().is_err(), "exactly one POST while the condition lasts");
    let out = rendered(&m);
    assert!(out.contains("tollgate_webhook_failures_total 0\n") && out.contains("tollgate_webhook_dropped_total 0\n"));
}

#[tokio::test]
async fn failed_webhook_is_retried_twice_and_counted() {
    let (url, mut posts) = hook_server(500).await;
    let (m, _) = monitor(MonitorConfig { webhook_url: Some(url), min_requests: 1, ..MonitorConfig::default() });
    m.observe(&rec(500));
    tokio::time::timeout(Duration::from_secs(10), m.drain()).await.expect("drained within 10 s");
    let mut n = 0;
    while posts.try_recv().is_ok() {
        n += 1;
    }
    assert_eq!(n, 1 + WEBHOOK_RETRIES);
    assert!(rendered(&m).contains("tollgate_webhook_failures_total 3\n"));
    assert_eq!(m.alert_log().len(), 1, "the alert is still recorded");
}

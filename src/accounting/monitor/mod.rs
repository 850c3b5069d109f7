//! Monitoring of finished requests: error-rate alerts, drift, request-field health and
//! sliding-window latency percentiles. [`Monitor::observe`] runs on each request's own task, so
//! it takes one short mutex and does O(1) work, no I/O; sorting for quantiles happens on demand.
//!
//! What counts: requests without a deployment (refused before routing) and cache hits feed only
//! field health. A request is an *error* ([`is_error`]) when the client did not close it and its
//! status is >= 500, 408 or 429 (a deployment that timed out or throttled), or it is < 400 but
//! carries an `error` (a stream that broke after its 200); other 4xx are the client's fault.
//! Drift and latency take only successes (status < 400, client still there), so an outage shows
//! up once, as an error rate, not also as a shift in completion lengths.
//!
//! - **Error rate** per deployment over `window` (default 300 s) on the injected [`Clock`]: a ring
//!   of [`BUCKETS`] time buckets of `window / BUCKETS` (10 s by default) holding (requests,
//!   errors); a slot is reset when its time comes round again, so observe is O(1). Judged only
//!   with at least `min_requests` (20) in the window: above `error_rate_threshold` (0.01) an
//!   alert fires once and stays firing until the rate is at or below it. An empty window counts
//!   as rate 0, and [`Monitor::tick`] (run by a scrape and `active_alerts`) re-judges every
//!   deployment, so an alert on a deployment whose traffic stopped still resolves.
//! - **Drift** per deployment: `PSI = Σ_bins (cur% − base%) · ln(cur% / base%)`, an empty bin
//!   counted as [`PSI_EPSILON`]. Baseline: the first `drift_window` (500) requests the deployment
//!   serves, then frozen; current: a ring of its latest `drift_window` (so the first PSI is 0).
//!   Token counts go in [`TOKEN_BINS`] log2 bins (0, 1–2, 3–4, 5–8, …, (2^17, 2^18], and one open
//!   bin above 262,144); finish reasons in stop, length, tool_calls, content_filter, other/none.
//!   Evaluated once the ring is full, then every `max(drift_window / 10, 1)` requests; above
//!   `drift_threshold` (0.2) a (deployment, kind) alert fires once, and resolves at or below it.
//!   `drift_window = 0` turns drift off.
//! - **Alerts**: each raise or resolve goes to a log (the newest [`ALERT_LOG_CAP`]), a `tracing`
//!   line with target `tollgate::alert` (warn on raise, info on resolve), `tollgate_alerts_total`
//!   (raises) and `tollgate_alert_firing`; with `webhook_url`, the [`Alert`] as a JSON POST from
//!   one background task fed by a bounded queue ([`WEBHOOK_QUEUE`]; `try_send`, a full queue
//!   drops and counts `tollgate_webhook_dropped_total`), 5 s timeout, at most [`WEBHOOK_RETRIES`]
//!   retries after 250 ms, 500 ms; each failed attempt is logged and counted in
//!   `tollgate_webhook_failures_total`. [`Monitor::drain`] closes the queue and waits for the rest.
//! - **Field health**: per alias, how many bodies had each of [`FIELDS`] present, `null` or
//!   missing; at most [`MAX_FIELD_ALIASES`] aliases, the others counted as `_other`.
//! - **Latency** per (alias, deployment): timestamped samples of total time, TTFT and time per
//!   output token (`(total − ttft) / (completion_tokens − 1)`, with ttft known and >= 2 tokens),
//!   pruned to `window` and capped at the newest [`LATENCY_CAP`]; p50/p95/p99 by nearest rank
//!   ([`super::percentile`]) on a copy. [`Monitor::window_quantiles`] answers in milliseconds,
//!   `/metrics` in seconds.

mod drift;
mod webhook;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use super::metrics::{family, Collector, ConstCounter, ConstGauge, DescriptorEncoder, NO_LABELS};
use super::percentile::{nearest_rank, P50, P95, P99};
use crate::accounting::RequestRecord;
use crate::clock::Clock;
use crate::config::MonitorConfig;
use drift::{finish_bin, Drift};
pub use drift::{psi, token_bin};
use webhook::send_webhooks;

pub const BUCKETS: usize = 30;
pub const TOKEN_BINS: usize = 20;
const FINISH_BINS: usize = 5;
pub const PSI_EPSILON: f64 = 1e-4;
pub const ALERT_LOG_CAP: usize = 1000;
pub const LATENCY_CAP: usize = 10_000;
pub const MAX_FIELD_ALIASES: usize = 256;
pub const WEBHOOK_QUEUE: usize = 256;
pub const WEBHOOK_RETRIES: u32 = 2;
const WEBHOOK_BACKOFF: Duration = Duration::from_millis(250);
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
#[rustfmt::skip]
pub const FIELDS: [&str; 11] = ["user", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "seed",
    "metadata", "tools", "response_format", "stream"];
/// (per mille, label) of the reported quantiles.
const QUANTILES: [(u64, &str); 3] = [(P50, "0.5"), (P95, "0.95"), (P99, "0.99")];
const METRICS: [&str; 3] = ["total", "ttft", "tpot"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    ErrorRate,
    DriftPromptTokens,
    DriftCompletionTokens,
    DriftFinishReason,
    /// A canary version's weight was set to 0 because it did worse than production (an
    /// event, not a condition: it is not resolved).
    CanaryRollback,
}

impl AlertKind {
    const DRIFT: [AlertKind; 3] =
        [AlertKind::DriftPromptTokens, AlertKind::DriftCompletionTokens, AlertKind::DriftFinishReason];
    const ALL: [AlertKind; 4] = [AlertKind::ErrorRate, Self::DRIFT[0], Self::DRIFT[1], Self::DRIFT[2]];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::ErrorRate => "error_rate",
            AlertKind::DriftPromptTokens => "drift_prompt_tokens",
            AlertKind::DriftCompletionTokens => "drift_completion_tokens",
            AlertKind::DriftFinishReason => "drift_finish_reason",
            AlertKind::CanaryRollback => "canary_rollback",
        }
    }
}

/// One alert event, raised (`firing: true`) or resolved (`firing: false`); also the webhook body.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    pub kind: AlertKind,
    pub deployment: String,
    /// The error rate (0..1) or the PSI.
    pub value: f64,
    pub threshold: f64,
    /// Requests the value was computed over.
    pub requests: u64,
    pub firing: bool,
    pub message: String,
}

/// Whether a finished request counts against its deployment's error rate.
pub fn is_error(rec: &RequestRecord) -> bool {
    match rec.status {
        _ if rec.client_closed => false,
        500.. | 408 | 429 => true,
        400..=499 => false,
        _ => rec.error.is_some(),
    }
}

/// One latency sample: when, and total, TTFT and TPOT in milliseconds (NaN when unknown).
struct Sample(Instant, [f64; 3]);

/// Everything kept per deployment.
#[derive(Default)]
struct Dep {
    /// (time slot since the monitor started, requests, errors); a stale slot reads as empty.
    buckets: [(u64, u64, u64); BUCKETS],
    drift: Drift,
    /// The alert as raised, per [`AlertKind`], while it fires.
    firing: [Option<Alert>; 4],
    raised: [u64; 4],
    latency: HashMap<String, VecDeque<Sample>>,
}

impl Dep {
    /// (errors, requests) in the window that ends with time slot `slot`.
    fn window(&self, slot: u64) -> (u64, u64) {
        let oldest = (slot + 1).saturating_sub(BUCKETS as u64);
        let live = self.buckets.iter().filter(|b| (oldest..=slot).contains(&b.0));
        live.fold((0, 0), |(e, n), b| (e + b.2, n + b.1))
    }
}

/// Where alert events go besides the deployment's own state.
struct Sink {
    log: VecDeque<Alert>,
    tx: Option<mpsc::Sender<Alert>>,
    dropped: Arc<AtomicU64>,
}

impl Sink {
    /// Raises or resolves the deployment's `kind` alert when `over` disagrees with its state.
    fn judge(&mut self, dep: &mut Dep, kind: AlertKind, over: bool, alert: impl FnOnce() -> Alert) {
        let i = kind as usize;
        if dep.firing[i].is_some() == over {
            return;
        }
        let alert = alert();
        if over {
            dep.raised[i] += 1;
            dep.firing[i] = Some(alert.clone());
            tracing::warn!(target: "tollgate::alert", kind = kind.as_str(), deployment = %alert.deployment,
                value = alert.value, requests = alert.requests, firing = true, "{}", alert.message);
        } else {
            dep.firing[i] = None;
            tracing::info!(target: "tollgate::alert", kind = kind.as_str(), deployment = %alert.deployment,
                value = alert.value, requests = alert.requests, firing = false, "{}", alert.message);
        }
        if self.tx.as_ref().is_some_and(|tx| tx.try_send(alert.clone()).is_err()) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        if self.log.len() == ALERT_LOG_CAP {
            self.log.pop_front();
        }
        self.log.push_back(alert);
    }
}

struct State {
    deps: HashMap<String, Dep>,
    sink: Sink,
}

pub struct Monitor {
    cfg: MonitorConfig,
    clock: Arc<dyn Clock>,
    origin: Instant,
    bucket: Duration,
    state: Mutex<State>,
    fields: Mutex<HashMap<String, [[u64; 3]; FIELDS.len()]>>,
    dropped: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Monitor {
    /// Spawns the webhook sender task when a tokio runtime is current and a webhook is set.
    pub fn new(cfg: MonitorConfig, clock: Arc<dyn Clock>) -> Self {
        let (dropped, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (mut tx, mut task) = (None, None);
        if let Some(url) = cfg.webhook_url.clone() {
            match (tokio::runtime::Handle::try_current(), reqwest::Client::builder().timeout(WEBHOOK_TIMEOUT).build()) {
                (Ok(rt), Ok(client)) => {
                    let (t, rx) = mpsc::channel(WEBHOOK_QUEUE);
                    tx = Some(t);
                    task = Some(rt.spawn(send_webhooks(client, url, rx, failures.clone())));
                }
                (rt, client) => tracing::error!(target: "tollgate::alert", runtime = rt.is_ok(), error = ?client.err(),
                    "alert webhook not started: alerts are only logged"),
            }
        }
        Monitor {
            origin: clock.now(),
            clock,
            bucket: (cfg.window / BUCKETS as u32).max(Duration::from_millis(1)),
            state: Mutex::new(State {
                deps: HashMap::new(),
                sink: Sink { log: VecDeque::new(), tx, dropped: dropped.clone() },
            }),
            fields: Mutex::new(HashMap::new()),
            dropped,
            failures,
            task: Mutex::new(task),
            cfg,
        }
    }

    fn slot(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.origin).as_nanos() / self.bucket.as_nanos()) as u64
    }

    /// Called once per finished request, on the request's own task: one short mutex, O(1), no I/O.
    pub fn observe(&self, rec: &RequestRecord) {
        let Some(name) = rec.deployment.as_deref().filter(|_| self.cfg.enabled && !rec.cache_hit) else { return };
        let now = self.clock.now();
        let slot = self.slot(now);
        let mut guard = lock(&self.state);
        let State { deps, sink } = &mut *guard;
        if !deps.contains_key(name) {
            deps.insert(name.to_owned(), Dep::default());
        }
        let Some(dep) = deps.get_mut(name) else { return };

        let b = &mut dep.buckets[(slot % BUCKETS as u64) as usize];
        if b.0 != slot {
            *b = (slot, 0, 0);
        }
        b.1 += 1;
        b.2 += is_error(rec) as u64;
        self.judge_error_rate(dep, sink, name, slot);
        if rec.client_closed || rec.status >= 400 {
            return;
        }

        let size = self.cfg.drift_window;
        if size > 0 {
            let (p, c) = (token_bin(rec.prompt_tokens), token_bin(rec.completion_tokens));
            dep.drift.push([p as u8, c as u8, finish_bin(rec.finish_reason.as_deref()) as u8], size);
            let past_full = dep.drift.seen.checked_sub(size as u64);
            if past_full.is_some_and(|n| n % (size as u64 / 10).max(1) == 0) {
                for (kind, value) in AlertKind::DRIFT.into_iter().zip(dep.drift.psi(size).unwrap_or_default()) {
                    self.judge_drift(dep, sink, name, kind, value);
                }
            }
        }

        let tpot = match (rec.ttft_ms, rec.completion_tokens) {
            (Some(t), n @ 2..) => (rec.total_ms - t).max(0.0) / (n - 1) as f64,
            _ => f64::NAN,
        };
        if !dep.latency.contains_key(&rec.alias) {
            dep.latency.insert(rec.alias.clone(), VecDeque::new());
        }
        let Some(samples) = dep.latency.get_mut(&rec.alias) else { return };
        let cutoff = now.checked_sub(self.cfg.window);
        while samples.front().is_some_and(|s| samples.len() >= LATENCY_CAP || cutoff.is_some_and(|c| s.0 < c)) {
            samples.pop_front();
        }
        samples.push_back(Sample(now, [rec.total_ms, rec.ttft_ms.unwrap_or(f64::NAN), tpot]));
    }

    fn judge_error_rate(&self, dep: &mut Dep, sink: &mut Sink, name: &str, slot: u64) {
        let (errors, requests) = dep.window(slot);
        let (rate, threshold) = (errors as f64 / requests.max(1) as f64, self.cfg.error_rate_threshold);
        let firing = dep.firing[AlertKind::ErrorRate as usize].is_some();
        let over = rate > threshold && (firing || requests >= self.cfg.min_requests);
        let (pct, limit, secs) = (rate * 100.0, threshold * 100.0, self.cfg.window.as_secs());
        // Formatted only on a raise or resolve: observe allocates nothing on the usual path.
        let message = || match over {
            true => format!("{name}: error rate {pct:.2}% over {requests} requests in {secs} s is above {limit:.2}%"),
            false => format!("{name}: resolved, error rate {pct:.2}% over {requests} requests in {secs} s"),
        };
        let kind = AlertKind::ErrorRate;
        sink.judge(dep, kind, over, || Alert {
            kind,
            deployment: name.into(),
            value: rate,
            threshold,
            requests,
            firing: over,
            message: message(),
        });
    }

    fn judge_drift(&self, dep: &mut Dep, sink: &mut Sink, name: &str, kind: AlertKind, value: f64) {
        let (threshold, size) = (self.cfg.drift_threshold, self.cfg.drift_window);
        let over = value > threshold;
        let what = &kind.as_str()["drift_".len()..];
        let message = || match over {
            true => format!("{name}: {what} drift, PSI {value:.3} of the latest {size} requests is above {threshold}"),
            false => format!("{name}: resolved, {what} PSI {value:.3} of the latest {size} requests"),
        };
        let requests = size as u64;
        sink.judge(dep, kind, over, || Alert {
            kind,
            deployment: name.into(),
            value,
            threshold,
            requests,
            firing: over,
            message: message(),
        });
    }

    /// Re-judges every deployment's error rate at the clock's time, so an alert on a deployment
    /// whose traffic stopped resolves once its window is empty.
    pub fn tick(&self) {
        let slot = self.slot(self.clock.now());
        let mut guard = lock(&self.state);
        let State { deps, sink } = &mut *guard;
        for (name, dep) in deps.iter_mut() {
            self.judge_error_rate(dep, sink, name, slot);
        }
    }

    /// Presence of request fields, called once per valid request with the JSON body.
    pub fn observe_fields(&self, alias: &str, body: &serde_json::Map<String, Value>) {
        if !self.cfg.enabled {
            return;
        }
        let mut fields = lock(&self.fields);
        let key = if fields.contains_key(alias) || fields.len() < MAX_FIELD_ALIASES { alias } else { "_other" };
        if !fields.contains_key(key) {
            fields.insert(key.to_owned(), [[0; 3]; FIELDS.len()]);
        }
        let Some(counts) = fields.get_mut(key) else { return };
        for (field, c) in FIELDS.iter().zip(counts) {
            c[match body.get(*field) {
                Some(Value::Null) => 1,
                Some(_) => 0,
                None => 2,
            }] += 1;
        }
    }

    /// [present, null, missing] counts of `field` for `alias` (`_other` past the alias cap).
    pub fn field_counts(&self, alias: &str, field: &str) -> Option<[u64; 3]> {
        let i = FIELDS.iter().position(|f| *f == field)?;
        lock(&self.fields).get(alias).map(|c| c[i])
    }

    /// Alerts currently firing, as they were raised, by deployment and kind.
    pub fn active_alerts(&self) -> Vec<Alert> {
        self.tick();
        let state = lock(&self.state);
        let mut out: Vec<Alert> = state.deps.values().flat_map(|d| d.firing.iter().flatten().cloned()).collect();
        out.sort_by(|a, b| (&a.deployment, a.kind as usize).cmp(&(&b.deployment, b.kind as usize)));
        out
    }

    /// Raises a one-off alert event (a canary rollback): logged, sent to the webhook, kept in
    /// the alert log.
    pub fn emit(&self, alert: Alert) {
        tracing::warn!(target: "tollgate::alert", kind = alert.kind.as_str(), deployment = %alert.deployment,
            value = alert.value, requests = alert.requests, firing = true, "{}", alert.message);
        let mut state = lock(&self.state);
        let sink = &mut state.sink;
        if sink.tx.as_ref().is_some_and(|tx| tx.try_send(alert.clone()).is_err()) {
            sink.dropped.fetch_add(1, Ordering::Relaxed);
        }
        if sink.log.len() == ALERT_LOG_CAP {
            sink.log.pop_front();
        }
        sink.log.push_back(alert);
    }

    /// Every alert event raised or resolved so far, oldest first (the newest [`ALERT_LOG_CAP`]).
    pub fn alert_log(&self) -> Vec<Alert> {
        lock(&self.state).sink.log.iter().cloned().collect()
    }

    /// p50/p95/p99 in **milliseconds** over the window, by nearest rank; None when there are no
    /// samples, or `metric` is not "total" | "ttft" | "tpot".
    pub fn window_quantiles(&self, alias: &str, deployment: &str, metric: &str) -> Option<[f64; 3]> {
        let m = METRICS.iter().position(|x| *x == metric)?;
        let cutoff = self.clock.now().checked_sub(self.cfg.window);
        let mut values = live(lock(&self.state).deps.get(deployment)?.latency.get(alias)?, m, cutoff);
        nearest_rank(&mut values, QUANTILES.map(|q| q.0))
    }

    /// (error rate, requests) in the window; None when it holds no requests.
    pub fn error_rate(&self, deployment: &str) -> Option<(f64, u64)> {
        let slot = self.slot(self.clock.now());
        let (errors, requests) = lock(&self.state).deps.get(deployment)?.window(slot);
        (requests > 0).then(|| (errors as f64 / requests as f64, requests))
    }

    /// PSI of prompt tokens, completion tokens and the finish-reason mix, latest window against
    /// the baseline; None until the latest window is full.
    pub fn psi(&self, deployment: &str) -> Option<[f64; 3]> {
        lock(&self.state).deps.get(deployment)?.drift.psi(self.cfg.drift_window)
    }

    /// Closes the webhook queue and waits until the task has sent what was queued (each POST is
    /// bounded by its timeout and retries; bound the whole with the shutdown grace).
    pub async fn drain(&self) {
        lock(&self.state).sink.tx = None;
        let task = lock(&self.task).take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

/// The monitors' families on `/metrics`: window gauges, alert and webhook counters, field
/// health. Scraping re-judges every deployment's error rate first ([`Monitor::tick`]).
impl Collector for Monitor {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        self.tick();
        let now = self.clock.now();
        let (slot, cutoff) = (self.slot(now), now.checked_sub(self.cfg.window));
        // Copied under the lock, sorted and written after it, so a scrape holds up `observe` only
        // for the copy.
        let (mut latency, mut deps) = (Vec::new(), Vec::new());
        for (name, dep) in &lock(&self.state).deps {
            for (alias, samples) in &dep.latency {
                latency.push((alias.clone(), name.clone(), [0, 1, 2].map(|m| live(samples, m, cutoff))));
            }
            let firing = dep.firing.each_ref().map(Option::is_some);
            deps.push((name.clone(), dep.window(slot), dep.drift.psi(self.cfg.drift_window), dep.raised, firing));
        }
        latency.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        deps.sort_by(|a, b| a.0.cmp(&b.0));
        let mut windows = Vec::new();
        for (alias, name, values) in &mut latency {
            for (metric, v) in METRICS.into_iter().zip(values) {
                let Some(q) = nearest_rank(v, QUANTILES.map(|q| q.0)) else { continue };
                for ((_, quantile), v) in QUANTILES.iter().zip(q) {
                    let labels =
                        [("alias", alias.as_str()), ("deployment", name), ("metric", metric), ("quantile", quantile)];
                    windows.push((labels, ConstGauge::new(v / 1000.0)));
                }
            }
        }
        let help = "Latency percentiles over the sliding window.";
        family(&mut enc, "tollgate_latency_window_seconds", help, windows)?;
        let rates = deps.iter().filter(|d| d.1 .1 > 0);
        let rates = rates.map(|(name, (errors, requests), ..)| {
            ([("deployment", name.as_str())], ConstGauge::new(*errors as f64 / *requests as f64))
        });
        let help = "Error rate per deployment over the sliding window.";
        family(&mut enc, "tollgate_error_rate_window", help, rates)?;
        let requests = deps.iter().map(|(name, (_, n), ..)| ([("deployment", name.as_str())], ConstGauge::new(*n)));
        let help = "Requests per deployment in the error-rate window.";
        family(&mut enc, "tollgate_error_rate_window_requests", help, requests)?;
        let psi = deps.iter().filter_map(|(name, _, psi, ..)| Some((name, (*psi)?)));
        let psi = psi.flat_map(|(name, values)| {
            let kinds = ["prompt_tokens", "completion_tokens", "finish_reason"].into_iter().zip(values);
            kinds.map(move |(kind, v)| ([("deployment", name.as_str()), ("kind", kind)], ConstGauge::new(v)))
        });
        let help = "Population stability index of the latest drift window against the baseline.";
        family(&mut enc, "tollgate_drift_psi", help, psi)?;
        fn per_kind(name: &str) -> [[(&str, &str); 2]; 4] {
            AlertKind::ALL.map(|kind| [("kind", kind.as_str()), ("deployment", name)])
        }
        let raised = deps.iter().flat_map(|(name, _, _, raised, _)| {
            per_kind(name).into_iter().zip(raised).map(|(labels, n)| (labels, ConstCounter::new(*n)))
        });
        family(&mut enc, "tollgate_alerts_total", "Alerts raised.", raised)?;
        let firing = deps.iter().flat_map(|(name, _, _, _, firing)| {
            per_kind(name).into_iter().zip(firing).map(|(labels, f)| (labels, ConstGauge::new(u64::from(*f))))
        });
        family(&mut enc, "tollgate_alert_firing", "1 while the alert fires.", firing)?;
        let help = "Alerts dropped because the webhook queue was full.";
        let dropped = ConstCounter::new(self.dropped.load(Ordering::Relaxed));
        family(&mut enc, "tollgate_webhook_dropped_total", help, [(NO_LABELS, dropped)])?;
        let help = "Failed webhook POST attempts, retries included.";
        let failures = ConstCounter::new(self.failures.load(Ordering::Relaxed));
        family(&mut enc, "tollgate_webhook_failures_total", help, [(NO_LABELS, failures)])?;
        let mut fields: Vec<_> = lock(&self.fields).iter().map(|(a, c)| (a.clone(), *c)).collect();
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        let fields = fields.iter().flat_map(|(alias, counts)| {
            FIELDS.iter().zip(counts).flat_map(move |(field, c)| {
                let states = ["present", "null", "missing"].into_iter().zip(c);
                states.map(move |(state, n)| {
                    ([("alias", alias.as_str()), ("field", field), ("state", state)], ConstCounter::new(*n))
                })
            })
        });
        let help = "Request bodies by alias with each field present, null or missing.";
        family(&mut enc, "tollgate_request_field_total", help, fields)
    }
}

/// Metric `m` (total, ttft, tpot) of the samples newer than `cutoff`, unknowns left out.
fn live(samples: &VecDeque<Sample>, m: usize, cutoff: Option<Instant>) -> Vec<f64> {
    let live = samples.iter().filter(|s| cutoff.is_none_or(|c| s.0 >= c));
    live.map(|s| s.1[m]).filter(|x| !x.is_nan()).collect()
}

#[cfg(test)]
mod tests;

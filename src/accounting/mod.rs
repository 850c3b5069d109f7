//! Accounting: every finished [`RequestRecord`] goes through [`Accounting::finish`], which
//! prices it ([`crate::pricing`]), settles its rate-limit admission and budget ([`limits`]),
//! journals it to the durable ledger ([`ledger`]), feeds the monitors ([`monitor`]) and the
//! Prometheus series ([`metrics`]), tells the version that served it, and logs one
//! structured line.
//!
//! The record and the [`record::Tap`] that fills it live in [`record`]; `usage` reports
//! over the ledger. [`metrics`] also holds the one Prometheus exposition every layer writes
//! through, and [`percentile`] the one nearest-rank percentile every report uses.

pub mod dashboard;
pub mod ledger;
pub mod limits;
pub mod metrics;
pub mod monitor;
pub mod percentile;
pub mod postgres;
pub mod record;
pub mod telemetry;
pub mod usage;

use std::sync::Arc;

pub use record::{count_tokens, RequestRecord, Tap, TokenSource, VersionOutcome};

use crate::clock::now_ms;
use metrics::Metrics;

/// Where finished records go.
pub struct Accounting {
    pub metrics: Arc<Metrics>,
    pub limits: limits::Limits,
    pub monitor: Arc<monitor::Monitor>,
    /// The durable ledger (off with `ledger.enabled = false`).
    pub ledger: Option<Arc<ledger::Ledger>>,
    /// OpenTelemetry traces (on with `[otel]`).
    pub telemetry: Option<telemetry::Telemetry>,
    /// The one ledger of every replica (on with `[ledger] postgres_url`), fed from `ledger`.
    pub postgres: Option<Arc<postgres::Postgres>>,
}

impl Accounting {
    /// Opens the ledger under `data_dir` (ingesting what a previous run left in its journal)
    /// and starts the budgets from it.
    ///
    /// With `cluster`, the limits and budgets are shared through it, and an empty Redis is
    /// seeded with the ledger's spend (now, and whenever Redis comes back).
    pub fn new(
        cfg: &crate::config::Config,
        clock: Arc<dyn crate::clock::Clock>,
        cluster: Option<Arc<crate::cluster::Cluster>>,
    ) -> Self {
        let s = &cfg.server;
        let mut limits = limits::Limits::new(clock.clone(), s.default_max_tokens);
        if let Some(c) = &cluster {
            limits = limits.with_cluster(c.clone());
        }
        limits.configure(&cfg.auth.keys);
        let ledger = s.ledger.then(|| ledger::Ledger::open(&s.data_dir.join("ledger")));
        if let Some(l) = &ledger {
            let now = now_ms();
            let (day, month) = limits::period_starts(now);
            limits.load_spend(now, l.spend_since(day, month));
        }
        let postgres = match (&s.postgres, &ledger) {
            (Some(p), Some(l)) => Some(postgres::Postgres::start(p, l.clone())),
            (Some(_), None) => {
                tracing::error!(
                    "ledger.postgres_url needs the local ledger (ledger.enabled = true): nothing is shipped"
                );
                None
            }
            _ => None,
        };
        if let (Some(c), Some(l)) = (&cluster, &ledger) {
            let seed = seed_budgets(l.clone(), postgres.clone());
            c.spawn(seed(c.clone()));
            c.on_recovery(Box::new(seed));
        }
        Accounting {
            metrics: Arc::default(),
            limits,
            monitor: Arc::new(monitor::Monitor::new(s.monitor.clone(), clock)),
            ledger,
            telemetry: s.otel.as_ref().and_then(|o| {
                telemetry::Telemetry::start(o).map_err(|e| tracing::error!("{e}; no traces are sent")).ok()
            }),
            postgres,
        }
    }

    /// Adds what accounting exposes on `/metrics` to `registry`: the request series, the
    /// monitors and the ledger, each read at scrape time.
    pub fn register_metrics(&self, registry: &mut metrics::Registry) {
        registry.register_collector(Box::new(self.metrics.clone()));
        if let Some(c) = self.limits.cluster() {
            registry.register_collector(Box::new(limits::ClusterMetrics(c.clone())));
        }
        registry.register_collector(Box::new(self.monitor.clone()));
        if let Some(l) = &self.ledger {
            registry.register_collector(Box::new(l.clone()));
        }
        if let Some(p) = &self.postgres {
            registry.register_collector(Box::new(p.clone()));
        }
    }

    pub fn finish(&self, mut rec: RequestRecord) {
        if rec.cost.is_none() {
            rec.price_it();
        }
        let used = if rec.cache_hit { 0 } else { rec.prompt_tokens + rec.completion_tokens };
        let usd = rec.cost.map(|c| c.usd);
        self.limits.finish(rec.admission.take(), used, rec.key.as_deref(), usd, rec.started_at_ms);
        // Under guardrails, the text a log keeps has every finding masked, whatever the action.
        if let (Some(_), Some((prompt, completion))) = (&rec.guardrails, &mut rec.content) {
            *prompt = crate::guardrails::mask(prompt).into_owned();
            *completion = crate::guardrails::mask(completion).into_owned();
        }
        let guardrails =
            rec.guardrails.as_ref().map(|h| h.lock().unwrap_or_else(std::sync::PoisonError::into_inner).summary());
        if let Some(l) = &self.ledger {
            l.append(&rec);
        }
        self.metrics.record(&rec);
        self.monitor.observe(&rec);
        if let Some(t) = &self.telemetry {
            t.export(&rec);
        }
        if let Some(v) = &rec.release {
            v.observe(&rec);
        }
        tracing::info!(
            target: "tollgate::request",
            request_id = %rec.request_id,
            key = rec.key.as_deref().unwrap_or("-"),
            alias = %rec.alias,
            deployment = rec.deployment.as_deref().unwrap_or("-"),
            endpoint = rec.endpoint,
            stream = rec.stream,
            status = rec.status,
            error = rec.error.unwrap_or("-"),
            attempts = rec.attempts,
            prompt_tokens = rec.prompt_tokens,
            completion_tokens = rec.completion_tokens,
            cached_tokens = rec.cached_tokens,
            prefill_saved_ms = rec.prefill_saved_ms.map(|t| (t * 1000.0).round() / 1000.0),
            tokens = ?rec.tokens_source,
            ttft_ms = rec.ttft_ms.map(|t| (t * 1000.0).round() / 1000.0),
            total_ms = (rec.total_ms * 1000.0).round() / 1000.0,
            finish = rec.finish_reason.as_deref().unwrap_or("-"),
            client_closed = rec.client_closed,
            cache_hit = rec.cache_hit,
            cost_usd = rec.cost.map(|c| c.usd.to_string()),
            saved_usd = rec.cost.map(|c| c.saved_usd.to_string()),
            prompt = rec.content.as_ref().map(|c| c.0.as_str()),
            completion = rec.content.as_ref().map(|c| c.1.as_str()),
            guardrails = guardrails.as_deref().filter(|g| !g.is_empty()),
            "request"
        );
    }
}

/// Seeds an empty Redis with the spend the ledger holds for today and this month: every
/// replica's, from PostgreSQL (this replica's alone without it).
fn seed_budgets(
    ledger: Arc<ledger::Ledger>,
    pg: Option<Arc<postgres::Postgres>>,
) -> impl Fn(Arc<crate::cluster::Cluster>) -> futures::future::BoxFuture<'static, ()> + Send + Sync {
    move |c| {
        let (l, pg) = (ledger.clone(), pg.clone());
        Box::pin(async move {
            let now = now_ms();
            let (day_ms, month_ms) = limits::period_starts(now);
            let (day, month) = (day_ms / 86_400_000, month_ms / 86_400_000);
            let totals = match pg {
                Some(pg) => {
                    pg.flush().await;
                    match pg.spend_since(day_ms, month_ms).await {
                        Ok(t) => t,
                        Err(e) => {
                            tracing::warn!("budgets not seeded: the PostgreSQL ledger cannot be read ({e})");
                            return;
                        }
                    }
                }
                None => match tokio::task::spawn_blocking(move || l.spend_since(day_ms, month_ms)).await {
                    Ok(t) => t,
                    Err(_) => return,
                },
            };
            let totals: Vec<_> =
                totals.into_iter().map(|(k, (d, m))| (k, day, month, limits::pico(d), limits::pico(m))).collect();
            if c.seed_spend(&totals).await == Some(true) {
                tracing::info!(keys = totals.len(), "Redis was empty: the budgets' spend was seeded from the ledger");
            }
        })
    }
}

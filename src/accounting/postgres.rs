//! The one ledger of many replicas (`[ledger] postgres_url`): every replica keeps its own
//! SQLite ledger first (a request never waits on the database: [`super::ledger`]), and a
//! shipper task copies its rows into one PostgreSQL table, `requests`, in order. `/v1/usage`
//! and `tollgate usage` read that table, so they cover every replica, and the budgets of an
//! empty Redis are seeded from it.
//!
//! Exactly once: each replica's ledger has a source id (`<data_dir>/ledger/source-id`); the
//! rows it ships and the last SQLite rowid shipped (`ledger_sources`) are written in one
//! PostgreSQL transaction, and `id` is the primary key. While PostgreSQL is down the rows wait
//! in SQLite (logged once, counted, shown in `/ready`); they are shipped when it returns.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use rust_decimal::Decimal;
use serde_json::Value;
use tokio::sync::Notify;
use tokio_postgres::types::ToSql;

use super::ledger::Ledger;
use super::metrics::{family, Collector, ConstCounter, ConstGauge, DescriptorEncoder, NO_LABELS};
use super::usage::{self, Param, Query, UsageRow};
use crate::cluster::pg::Pg;
use crate::config::PostgresConfig;

const SHIP_EVERY: Duration = Duration::from_millis(500);
const RETRY: Duration = Duration::from_secs(2);
/// Rows per statement (34 parameters each; PostgreSQL allows 65,535).
const ROWS_PER_BATCH: usize = 500;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Text,
    Json,
    Numeric,
    I64,
    I32,
    F64,
    Bool,
}

/// The ledger's columns, in the order both databases are read and written.
const COLUMNS: [(&str, Kind, bool); 33] = {
    use Kind::*;
    [
        ("id", Text, false),
        ("request_id", Text, false),
        ("started_at_ms", I64, false),
        ("key", Text, true),
        ("user", Text, true),
        ("tags", Json, true),
        ("batch_id", Text, true),
        ("endpoint", Text, false),
        ("alias", Text, false),
        ("deployment", Text, true),
        ("backend_kind", Text, true),
        ("stream", Bool, false),
        ("status", I32, false),
        ("error", Text, true),
        ("attempts", I32, false),
        ("prompt_tokens", I64, false),
        ("completion_tokens", I64, false),
        ("cached_tokens", I64, false),
        ("tokens_source", Text, false),
        ("ttft_ms", F64, true),
        ("total_ms", F64, false),
        ("finish_reason", Text, true),
        ("client_closed", Bool, false),
        ("cache_hit", Bool, false),
        ("cost_usd", Numeric, true),
        ("saved_usd", Numeric, true),
        ("prefill_saved_ms", F64, true),
        ("route", Text, true),
        ("model_version", Text, true),
        ("model_sha256", Text, true),
        ("sampler", Json, true),
        ("seed", I64, true),
        ("guardrails", Text, true),
    ]
};

fn schema() -> String {
    let mut s = String::from("CREATE TABLE IF NOT EXISTS requests (\n");
    for (name, kind, null) in COLUMNS {
        let ty = match kind {
            Kind::Text => "TEXT",
            Kind::Json => "JSONB",
            Kind::Numeric => "NUMERIC",
            Kind::I64 => "BIGINT",
            Kind::I32 => "INTEGER",
            Kind::F64 => "DOUBLE PRECISION",
            Kind::Bool => "BOOLEAN",
        };
        let pk = if name == "id" { " PRIMARY KEY" } else { "" };
        s.push_str(&format!("    \"{name}\" {ty}{}{pk},\n", if null { "" } else { " NOT NULL" }));
    }
    s.push_str("    replica TEXT NOT NULL\n);\n");
    s.push_str(
        "CREATE INDEX IF NOT EXISTS requests_started ON requests (started_at_ms);\n\
         CREATE TABLE IF NOT EXISTS ledger_sources (source TEXT PRIMARY KEY, last_rowid BIGINT NOT NULL);\n",
    );
    s
}

/// One value read from SQLite, typed for PostgreSQL.
enum V {
    T(Option<String>),
    I(Option<i64>),
    I32(Option<i32>),
    F(Option<f64>),
    B(bool),
}

impl V {
    fn sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            V::T(v) => v,
            V::I(v) => v,
            V::I32(v) => v,
            V::F(v) => v,
            V::B(v) => v,
        }
    }
}

#[derive(Default)]
struct Stats {
    up: AtomicBool,
    shipped: AtomicU64,
    errors: AtomicU64,
}

pub struct Postgres {
    pg: Pg,
    stats: Stats,
    wake: Notify,
    shipped: Notify,
    source: String,
    /// The last local rowid shipped, once read from `ledger_sources` (this replica is its
    /// row's only writer); forgotten after an error.
    shipped_to: std::sync::Mutex<Option<i64>>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres").field("source", &self.source).finish_non_exhaustive()
    }
}

impl Postgres {
    /// Starts shipping `ledger`'s rows (inside the Tokio runtime); never fails: a database
    /// that cannot be reached is retried.
    pub fn start(cfg: &PostgresConfig, ledger: Arc<Ledger>) -> Arc<Postgres> {
        let id_path = ledger.db_path().with_file_name("source-id");
        let source = std::fs::read_to_string(&id_path).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
        let source = source.unwrap_or_else(|| {
            let id = uuid::Uuid::new_v4().simple().to_string();
            if let Err(e) = std::fs::write(&id_path, &id) {
                tracing::error!(path = %id_path.display(), "cannot store the ledger's source id: {e}");
            }
            id
        });
        let pg = Arc::new(Postgres {
            pg: Pg::new(cfg, schema()),
            stats: Stats::default(),
            wake: Notify::new(),
            shipped: Notify::new(),
            source,
            shipped_to: std::sync::Mutex::new(None),
        });
        tokio::spawn(ship_loop(Arc::downgrade(&pg), ledger));
        pg
    }

    pub fn is_up(&self) -> bool {
        self.stats.up.load(Ordering::Acquire)
    }

    fn failed(&self, e: &str) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        if self.stats.up.swap(false, Ordering::AcqRel) {
            tracing::error!("PostgreSQL ledger unavailable, records wait in the local ledger: {e}");
        }
    }

    /// Waits until what the local ledger holds now is in PostgreSQL (or an attempt failed).
    pub async fn flush(&self) {
        let done = self.shipped.notified();
        tokio::pin!(done);
        done.as_mut().enable();
        self.wake.notify_one();
        let _ = tokio::time::timeout(Duration::from_secs(10), done).await;
    }

    /// The usage report over every replica's records.
    pub async fn report(&self, q: &Query) -> Result<Value, String> {
        let (sql, args) = usage::sql(q, true);
        let args: Vec<Box<dyn ToSql + Sync + Send>> = args
            .into_iter()
            .map(|a| -> Box<dyn ToSql + Sync + Send> {
                match a {
                    Param::Int(i) => Box::new(i),
                    Param::Text(t) => Box::new(t),
                }
            })
            .collect();
        let refs: Vec<&(dyn ToSql + Sync)> = args.iter().map(|b| b.as_ref() as &(dyn ToSql + Sync)).collect();
        let client = self.pg.client().await?;
        let rows = client.query(&sql, &refs).await.map_err(|e| e.to_string())?;
        drop(client);
        let n = q.group_by.len();
        let mut report = usage::Report::new(q);
        for r in rows {
            let groups = (0..n).map(|i| r.try_get::<_, Option<String>>(i)).collect::<Result<Vec<_>, _>>();
            let row = (|| -> Result<UsageRow, tokio_postgres::Error> {
                Ok(UsageRow {
                    groups: groups?,
                    status: i64::from(r.try_get::<_, i32>(n)?),
                    prompt: r.try_get(n + 1)?,
                    completion: r.try_get(n + 2)?,
                    cached: r.try_get(n + 3)?,
                    cost: usage::money(r.try_get(n + 4)?),
                    saved: usage::money(r.try_get(n + 5)?),
                    total_ms: r.try_get(n + 6)?,
                    ttft_ms: r.try_get(n + 7)?,
                    cache_hit: r.try_get(n + 8)?,
                })
            })()
            .map_err(|e| e.to_string())?;
            report.add(row);
        }
        Ok(report.finish())
    }

    /// Spend per key since the given instants (Unix ms), over every replica: (day, month).
    pub async fn spend_since(&self, day_ms: u64, month_ms: u64) -> Result<HashMap<String, (Decimal, Decimal)>, String> {
        let client = self.pg.client().await?;
        let rows = client
            .query(
                "SELECT key, COALESCE(SUM(cost_usd) FILTER (WHERE started_at_ms >= $1), 0)::text, \
                 COALESCE(SUM(cost_usd) FILTER (WHERE started_at_ms >= $2), 0)::text \
                 FROM requests WHERE key IS NOT NULL AND cost_usd IS NOT NULL AND started_at_ms >= LEAST($1, $2) GROUP BY key",
                &[&(day_ms as i64), &(month_ms as i64)],
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(rows
            .iter()
            .map(|r| {
                let d: String = r.get(1);
                let m: String = r.get(2);
                (r.get::<_, String>(0), (d.parse().unwrap_or_default(), m.parse().unwrap_or_default()))
            })
            .collect())
    }

    /// Ships the next rows; `Ok(true)` when more may wait.
    async fn ship_batch(&self, ledger: &Arc<Ledger>) -> Result<bool, String> {
        let mut client = self.pg.client().await?;
        let cached = *self.shipped_to.lock().unwrap_or_else(|p| p.into_inner());
        let last: i64 = match cached {
            Some(v) => v,
            None => client
                .query_opt("SELECT last_rowid FROM ledger_sources WHERE source = $1", &[&self.source])
                .await
                .map_err(|e| e.to_string())?
                .map_or(0, |r| r.get(0)),
        };
        *self.shipped_to.lock().unwrap_or_else(|p| p.into_inner()) = Some(last);
        let l = ledger.clone();
        let rows = tokio::task::spawn_blocking(move || read_rows(&l, last, ROWS_PER_BATCH))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("reading the local ledger: {e}"))?;
        let Some(&(max_rowid, _)) = rows.last() else { return Ok(false) };
        let mut sql = String::from("INSERT INTO requests (");
        for (name, _, _) in COLUMNS {
            sql.push_str(&format!("\"{name}\", "));
        }
        sql.push_str("replica) VALUES ");
        let per = COLUMNS.len() + 1;
        for i in 0..rows.len() {
            sql.push_str(if i == 0 { "(" } else { ", (" });
            for (j, (_, kind, _)) in COLUMNS.iter().enumerate() {
                let cast = match kind {
                    Kind::Json => "::text::jsonb",
                    Kind::Numeric => "::text::numeric",
                    _ => "",
                };
                sql.push_str(&format!("${}{cast}, ", i * per + j + 1));
            }
            sql.push_str(&format!("${})", i * per + per));
        }
        sql.push_str(" ON CONFLICT (id) DO NOTHING");
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(rows.len() * per);
        for (_, vals) in &rows {
            params.extend(vals.iter().map(V::sql));
            params.push(&self.source);
        }
        let tx = client.transaction().await.map_err(|e| e.to_string())?;
        let n = tx.execute(&sql, &params).await.map_err(|e| e.to_string())?;
        tx.execute(
            "INSERT INTO ledger_sources (source, last_rowid) VALUES ($1, $2) \
             ON CONFLICT (source) DO UPDATE SET last_rowid = excluded.last_rowid",
            &[&self.source, &max_rowid],
        )
        .await
        .map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())?;
        *self.shipped_to.lock().unwrap_or_else(|p| p.into_inner()) = Some(max_rowid);
        self.stats.shipped.fetch_add(n, Ordering::Relaxed);
        Ok(rows.len() == ROWS_PER_BATCH)
    }
}

/// Rows of the local ledger after `rowid`, in order, typed for PostgreSQL.
fn read_rows(ledger: &Ledger, rowid: i64, limit: usize) -> rusqlite::Result<Vec<(i64, Vec<V>)>> {
    let c = ledger.reader()?;
    let cols: Vec<String> = COLUMNS.iter().map(|(n, _, _)| format!("\"{n}\"")).collect();
    let mut stmt = c.prepare(&format!(
        "SELECT rowid, {} FROM requests WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
        cols.join(", ")
    ))?;
    let rows = stmt.query_map(rusqlite::params![rowid, limit as i64], |r| {
        let mut vals = Vec::with_capacity(COLUMNS.len());
        for (i, (_, kind, _)) in COLUMNS.iter().enumerate() {
            let i = i + 1;
            vals.push(match kind {
                Kind::Text | Kind::Json | Kind::Numeric => V::T(r.get(i)?),
                Kind::I64 => V::I(r.get(i)?),
                Kind::I32 => V::I32(r.get(i)?),
                Kind::F64 => V::F(r.get(i)?),
                Kind::Bool => V::B(r.get(i)?),
            });
        }
        Ok((r.get::<_, i64>(0)?, vals))
    })?;
    rows.collect()
}

async fn ship_loop(pg: Weak<Postgres>, ledger: Arc<Ledger>) {
    // The ledger's ingester moves the journal into SQLite on its own every 200 ms; it is asked
    // to do it now only when a caller waits ([`Postgres::flush`]), and for what a previous
    // run left.
    let mut asked = true;
    loop {
        let Some(p) = pg.upgrade() else { return };
        if asked {
            ledger.flush().await;
        }
        let wait = loop {
            match p.ship_batch(&ledger).await {
                Ok(true) => continue,
                Ok(false) => {
                    if !p.stats.up.swap(true, Ordering::AcqRel) {
                        tracing::info!("PostgreSQL ledger available: records are shipped");
                    }
                    break SHIP_EVERY;
                }
                Err(e) => {
                    p.failed(&e);
                    *p.shipped_to.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    p.pg.reset().await;
                    break RETRY;
                }
            }
        };
        p.shipped.notify_waiters();
        asked = tokio::time::timeout(wait, p.wake.notified()).await.is_ok();
    }
}

/// The shipper's families on `/metrics`.
impl Collector for Postgres {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.stats;
        let up = ConstGauge::new(u64::from(s.up.load(Ordering::Relaxed)));
        let help = "Whether the PostgreSQL ledger takes records (0: they wait in the local ledger).";
        family(&mut enc, "tollgate_ledger_postgres_up", help, [(NO_LABELS, up)])?;
        for (name, help, v) in [
            ("tollgate_ledger_postgres_shipped_total", "Records written to the PostgreSQL ledger.", &s.shipped),
            ("tollgate_ledger_postgres_errors_total", "Failed PostgreSQL ledger connections or writes.", &s.errors),
        ] {
            family(&mut enc, name, help, [(NO_LABELS, ConstCounter::new(v.load(Ordering::Relaxed)))])?;
        }
        Ok(())
    }
}

//! Usage reports over the ledger: requests, tokens, cost, savings, error rate, and latency,
//! TTFT and time-per-output-token percentiles, filtered by time (and key or alias) and
//! grouped by any of key, user, alias, deployment, day or batch. Served by `GET /v1/usage`
//! and printed by `tollgate usage`.
//!
//! Sums are exact ([`Decimal`] from the ledger's decimal strings). Percentiles are
//! nearest-rank over the group's requests that have the measure (TTFT only for requests that
//! produced a token; time per output token for those with two or more).

use std::collections::BTreeMap;

use rusqlite::Connection;
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{json, Value};

use super::percentile::{nearest_rank, P50, P95, P99};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupBy {
    Key,
    User,
    Alias,
    Deployment,
    Day,
    Batch,
    Endpoint,
}

impl GroupBy {
    pub fn parse(s: &str) -> Option<GroupBy> {
        Some(match s {
            "key" => GroupBy::Key,
            "user" => GroupBy::User,
            "alias" | "model" => GroupBy::Alias,
            "deployment" => GroupBy::Deployment,
            "day" => GroupBy::Day,
            "batch" | "batch_id" => GroupBy::Batch,
            "endpoint" => GroupBy::Endpoint,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            GroupBy::Key => "key",
            GroupBy::User => "user",
            GroupBy::Alias => "alias",
            GroupBy::Deployment => "deployment",
            GroupBy::Day => "day",
            GroupBy::Batch => "batch",
            GroupBy::Endpoint => "endpoint",
        }
    }
    /// The group's SQL expression, in SQLite's dialect or PostgreSQL's.
    pub fn column(self, postgres: bool) -> &'static str {
        match self {
            GroupBy::Key => "key",
            GroupBy::User => "\"user\"",
            GroupBy::Alias => "alias",
            GroupBy::Deployment => "deployment",
            GroupBy::Day if postgres => {
                "to_char(to_timestamp(started_at_ms / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
            }
            GroupBy::Day => "strftime('%Y-%m-%d', started_at_ms / 1000, 'unixepoch')",
            GroupBy::Batch => "batch_id",
            GroupBy::Endpoint => "endpoint",
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Query {
    /// Unix ms, inclusive.
    pub start_ms: u64,
    /// Unix ms, exclusive.
    pub end_ms: u64,
    pub group_by: Vec<GroupBy>,
    pub key: Option<String>,
    pub alias: Option<String>,
}

/// The figures of a group of ledger records: counts, tokens, money, and the latencies of the
/// answered ones (what the usage report writes per group, and the dashboard per table row
/// and per time bucket).
#[derive(Default)]
pub struct Acc {
    pub requests: u64,
    pub errors: u64,
    pub client_errors: u64,
    pub cache_hits: u64,
    pub prompt: u64,
    pub completion: u64,
    pub cached: u64,
    pub cost: Decimal,
    pub saved: Decimal,
    pub priced: u64,
    pub total: Vec<f64>,
    pub ttft: Vec<f64>,
    pub tpot: Vec<f64>,
}

impl Acc {
    pub fn add(&mut self, r: &UsageRow) {
        self.requests += 1;
        if r.status >= 500 {
            self.errors += 1;
        } else if r.status >= 400 {
            self.client_errors += 1;
        }
        self.cache_hits += u64::from(r.cache_hit);
        self.prompt += r.prompt as u64;
        self.completion += r.completion as u64;
        self.cached += r.cached as u64;
        if let Some(c) = r.cost {
            self.cost += c;
            self.priced += 1;
        }
        if let Some(s) = r.saved {
            self.saved += s;
        }
        // Latency figures describe answered requests, not refusals.
        if r.status < 400 {
            self.total.push(r.total_ms);
            if let Some(t) = r.ttft_ms {
                self.ttft.push(t);
                if r.completion >= 2 {
                    self.tpot.push((r.total_ms - t).max(0.0) / (r.completion - 1) as f64);
                }
            }
        }
    }

    /// The group's figures as the usage report writes them (the latency vectors are sorted).
    pub fn json(&mut self) -> serde_json::Map<String, Value> {
        let rate = if self.requests > 0 { self.errors as f64 / self.requests as f64 } else { 0.0 };
        let v = json!({
            "requests": self.requests,
            "errors": self.errors,
            "client_errors": self.client_errors,
            "error_rate": (rate * 1e6).round() / 1e6,
            "cache_hits": self.cache_hits,
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "cached_tokens": self.cached,
            "cost_usd": (self.priced > 0).then(|| self.cost.normalize().to_string()),
            "saved_usd": self.saved.normalize().to_string(),
            "priced_requests": self.priced,
            "latency_ms": percentiles(&mut self.total),
            "ttft_ms": percentiles(&mut self.ttft),
            "time_per_output_token_ms": percentiles(&mut self.tpot),
        });
        match v {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        }
    }
}

/// A ledger's money column (a decimal string) as a number; unpriced when absent or unreadable.
pub fn money(s: Option<String>) -> Option<Decimal> {
    s.and_then(|s| s.parse().ok())
}

#[derive(Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// Nearest-rank percentiles of `v` (sorted here), rounded to 3 decimals.
pub fn percentiles(v: &mut [f64]) -> Option<Percentiles> {
    let [p50, p95, p99] = nearest_rank(v, [P50, P95, P99])?.map(|x| (x * 1000.0).round() / 1000.0);
    Some(Percentiles { p50, p95, p99 })
}

/// The report's SQL over the `requests` table, and its parameters in order (`?N` for
/// SQLite, `$N` for PostgreSQL): the group columns, then the fields [`UsageRow`] reads.
pub fn sql(q: &Query, postgres: bool) -> (String, Vec<Param>) {
    let mut sql = String::from("SELECT ");
    for g in &q.group_by {
        sql.push_str(g.column(postgres));
        sql.push_str(", ");
    }
    let money = if postgres { "cost_usd::text, saved_usd::text" } else { "cost_usd, saved_usd" };
    let p = |n: usize| if postgres { format!("${n}") } else { format!("?{n}") };
    sql.push_str(&format!(
        "status, prompt_tokens, completion_tokens, cached_tokens, {money}, total_ms, ttft_ms, cache_hit \
         FROM requests WHERE started_at_ms >= {} AND started_at_ms < {}",
        p(1),
        p(2)
    ));
    let mut args = vec![Param::Int(q.start_ms as i64), Param::Int(q.end_ms as i64)];
    if let Some(k) = &q.key {
        args.push(Param::Text(k.clone()));
        sql.push_str(&format!(" AND key = {}", p(args.len())));
    }
    if let Some(a) = &q.alias {
        args.push(Param::Text(a.clone()));
        sql.push_str(&format!(" AND alias = {}", p(args.len())));
    }
    (sql, args)
}

/// A parameter of [`sql`].
#[derive(Clone, Debug)]
pub enum Param {
    Int(i64),
    Text(String),
}

/// One ledger row as the report reads it.
pub struct UsageRow {
    pub groups: Vec<Option<String>>,
    pub status: i64,
    pub prompt: i64,
    pub completion: i64,
    pub cached: i64,
    pub cost: Option<Decimal>,
    pub saved: Option<Decimal>,
    pub total_ms: f64,
    pub ttft_ms: Option<f64>,
    pub cache_hit: bool,
}

/// The report, built row by row from whichever database holds the ledger.
pub struct Report<'a> {
    q: &'a Query,
    groups: BTreeMap<Vec<Option<String>>, Acc>,
}

impl<'a> Report<'a> {
    pub fn new(q: &'a Query) -> Self {
        Report { q, groups: BTreeMap::new() }
    }

    pub fn add(&mut self, mut r: UsageRow) {
        self.groups.entry(std::mem::take(&mut r.groups)).or_default().add(&r);
    }

    pub fn finish(self) -> Value {
        let q = self.q;
        let data: Vec<Value> = self
            .groups
            .into_iter()
            .map(|(g, mut a)| {
                let mut o = serde_json::Map::new();
                for (k, v) in q.group_by.iter().zip(g) {
                    o.insert(k.name().into(), v.map_or(Value::Null, Value::String));
                }
                o.extend(a.json());
                Value::Object(o)
            })
            .collect();
        json!({
            "object": "usage.report",
            "start_time": q.start_ms / 1000,
            "end_time": q.end_ms / 1000,
            "group_by": q.group_by.iter().map(|g| g.name()).collect::<Vec<_>>(),
            "data": data,
        })
    }
}

/// Runs the report on the SQLite ledger. Errors are SQLite's (a missing or unreadable database).
pub fn report(c: &Connection, q: &Query) -> rusqlite::Result<Value> {
    let (sql, args) = sql(q, false);
    let args: Vec<Box<dyn rusqlite::ToSql>> = args
        .into_iter()
        .map(|a| -> Box<dyn rusqlite::ToSql> {
            match a {
                Param::Int(i) => Box::new(i),
                Param::Text(t) => Box::new(t),
            }
        })
        .collect();
    let n = q.group_by.len();
    let mut report = Report::new(q);
    let mut stmt = c.prepare(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args.iter().map(|b| b.as_ref())))?;
    while let Some(r) = rows.next()? {
        let mut groups = Vec::with_capacity(n);
        for i in 0..n {
            groups.push(r.get::<_, Option<String>>(i)?);
        }
        report.add(UsageRow {
            groups,
            status: r.get(n)?,
            prompt: r.get(n + 1)?,
            completion: r.get(n + 2)?,
            cached: r.get(n + 3)?,
            cost: money(r.get(n + 4)?),
            saved: money(r.get(n + 5)?),
            total_ms: r.get(n + 6)?,
            ttft_ms: r.get(n + 7)?,
            cache_hit: r.get(n + 8)?,
        });
    }
    Ok(report.finish())
}

/// The report as a fixed-width table (`tollgate usage`).
pub fn table(report: &Value) -> String {
    let groups: Vec<String> = report["group_by"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let mut head: Vec<String> = groups.clone();
    for h in [
        "requests",
        "err%",
        "prompt",
        "completion",
        "cached",
        "cost_usd",
        "saved_usd",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "ttft_p50",
        "ttft_p95",
        "ttft_p99",
    ] {
        head.push(h.into());
    }
    let mut rows = vec![head];
    let pct = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64).map(|x| format!("{x:.1}")).unwrap_or("-".into());
    for d in report["data"].as_array().into_iter().flatten() {
        let mut r: Vec<String> = groups.iter().map(|g| d[g].as_str().unwrap_or("-").to_owned()).collect();
        r.push(d["requests"].to_string());
        r.push(format!("{:.2}", d["error_rate"].as_f64().unwrap_or(0.0) * 100.0));
        for k in ["prompt_tokens", "completion_tokens", "cached_tokens"] {
            r.push(d[k].to_string());
        }
        for k in ["cost_usd", "saved_usd"] {
            r.push(d[k].as_str().unwrap_or("-").to_owned());
        }
        for k in ["latency_ms", "ttft_ms"] {
            for p in ["p50", "p95", "p99"] {
                r.push(pct(&d[k], p));
            }
        }
        rows.push(r);
    }
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| if i < groups.len() { format!("{c:<w$}") } else { format!("{c:>w$}") })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = percentiles(&mut v).unwrap();
        assert_eq!((p.p50, p.p95, p.p99), (50.0, 95.0, 99.0));
        assert!(percentiles(&mut []).is_none());
    }
}

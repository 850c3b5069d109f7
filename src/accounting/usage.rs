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
    fn column(self) -> &'static str {
        match self {
            GroupBy::Key => "key",
            GroupBy::User => "user",
            GroupBy::Alias => "alias",
            GroupBy::Deployment => "deployment",
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

#[derive(Default)]
struct Acc {
    requests: u64,
    errors: u64,
    client_errors: u64,
    cache_hits: u64,
    prompt: u64,
    completion: u64,
    cached: u64,
    cost: Decimal,
    saved: Decimal,
    priced: u64,
    total: Vec<f64>,
    ttft: Vec<f64>,
    tpot: Vec<f64>,
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

/// Runs the report. Errors are SQLite's (a missing or unreadable database).
pub fn report(c: &Connection, q: &Query) -> rusqlite::Result<Value> {
    let mut sql = String::from("SELECT ");
    for g in &q.group_by {
        sql.push_str(g.column());
        sql.push_str(", ");
    }
    sql.push_str(
        "status, prompt_tokens, completion_tokens, cached_tokens, cost_usd, saved_usd, total_ms, ttft_ms, cache_hit \
         FROM requests WHERE started_at_ms >= ?1 AND started_at_ms < ?2",
    );
    let mut args: Vec<Box<dyn rusqlite::ToSql>> = vec![Box::new(q.start_ms as i64), Box::new(q.end_ms as i64)];
    if let Some(k) = &q.key {
        args.push(Box::new(k.clone()));
        sql.push_str(&format!(" AND key = ?{}", args.len()));
    }
    if let Some(a) = &q.alias {
        args.push(Box::new(a.clone()));
        sql.push_str(&format!(" AND alias = ?{}", args.len()));
    }
    let n = q.group_by.len();
    let mut groups: BTreeMap<Vec<Option<String>>, Acc> = BTreeMap::new();
    let mut stmt = c.prepare(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args.iter().map(|b| b.as_ref())))?;
    while let Some(r) = rows.next()? {
        let mut g = Vec::with_capacity(n);
        for i in 0..n {
            g.push(r.get::<_, Option<String>>(i)?);
        }
        let a = groups.entry(g).or_default();
        let status: i64 = r.get(n)?;
        let (prompt, completion, cached): (i64, i64, i64) = (r.get(n + 1)?, r.get(n + 2)?, r.get(n + 3)?);
        let cost: Option<String> = r.get(n + 4)?;
        let saved: Option<String> = r.get(n + 5)?;
        let total: f64 = r.get(n + 6)?;
        let ttft: Option<f64> = r.get(n + 7)?;
        let hit: bool = r.get(n + 8)?;
        a.requests += 1;
        if status >= 500 {
            a.errors += 1;
        } else if status >= 400 {
            a.client_errors += 1;
        }
        a.cache_hits += u64::from(hit);
        a.prompt += prompt as u64;
        a.completion += completion as u64;
        a.cached += cached as u64;
        if let Some(c) = cost.and_then(|c| c.parse::<Decimal>().ok()) {
            a.cost += c;
            a.priced += 1;
        }
        if let Some(s) = saved.and_then(|c| c.parse::<Decimal>().ok()) {
            a.saved += s;
        }
        // Latency figures describe answered requests, not refusals.
        if status < 400 {
            a.total.push(total);
            if let Some(t) = ttft {
                a.ttft.push(t);
                if completion >= 2 {
                    a.tpot.push((total - t).max(0.0) / (completion - 1) as f64);
                }
            }
        }
    }
    let data: Vec<Value> = groups
        .into_iter()
        .map(|(g, mut a)| {
            let mut o = serde_json::Map::new();
            for (k, v) in q.group_by.iter().zip(g) {
                o.insert(k.name().into(), v.map_or(Value::Null, Value::String));
            }
            let rate = if a.requests > 0 { a.errors as f64 / a.requests as f64 } else { 0.0 };
            let extra = json!({
                "requests": a.requests,
                "errors": a.errors,
                "client_errors": a.client_errors,
                "error_rate": (rate * 1e6).round() / 1e6,
                "cache_hits": a.cache_hits,
                "prompt_tokens": a.prompt,
                "completion_tokens": a.completion,
                "cached_tokens": a.cached,
                "cost_usd": (a.priced > 0).then(|| a.cost.normalize().to_string()),
                "saved_usd": a.saved.normalize().to_string(),
                "priced_requests": a.priced,
                "latency_ms": percentiles(&mut a.total),
                "ttft_ms": percentiles(&mut a.ttft),
                "time_per_output_token_ms": percentiles(&mut a.tpot),
            });
            if let Value::Object(e) = extra {
                o.extend(e);
            }
            Value::Object(o)
        })
        .collect();
    Ok(json!({
        "object": "usage.report",
        "start_time": q.start_ms / 1000,
        "end_time": q.end_ms / 1000,
        "group_by": q.group_by.iter().map(|g| g.name()).collect::<Vec<_>>(),
        "data": data,
    }))
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

//! The dashboard's figures, read from the ledger's `requests` table: for a time range
//! ([`Range`]: 15 minutes, an hour, a day, a week) the traffic, latency, money and guardrail
//! series in fixed buckets, and the same range's tables by alias and deployment, endpoint,
//! key, model version and day.
//!
//! Counted by the usage report's own accumulator ([`super::usage::Acc`]), so every row has
//! the fields and meaning of a `/v1/usage` group: an error is a 5xx answer, a 4xx is a client
//! error; latency percentiles (nearest rank) describe answered requests; time per output
//! token is `(total − TTFT) / (completion tokens − 1)`. Savings are split by where they came
//! from: a response-cache hit's under `cache`, a request the small-model router sent to a
//! cheaper model under `router` (with any prefix discount it also had), the rest (cached
//! prompt tokens priced as cached) under `prefix`.
//!
//! At most [`MAX_ROWS`] records are read, the newest; beyond that the answer says
//! `"truncated": true` and covers the newest part of the range.

use std::collections::BTreeMap;

use rusqlite::Connection;
use rust_decimal::Decimal;
use serde_json::{json, Value};

use super::usage::{money, percentiles, Acc, UsageRow};

/// The most records one answer reads.
pub const MAX_ROWS: usize = 500_000;

/// A time range and its bucket width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub name: &'static str,
    pub from_ms: u64,
    pub to_ms: u64,
    pub bucket_ms: u64,
}

impl Range {
    /// `15m`, `1h`, `24h` or `7d`, ending at `now_ms` (buckets aligned to their width).
    pub fn parse(name: &str, now_ms: u64) -> Option<Range> {
        let (name, span, bucket): (&'static str, u64, u64) = match name {
            "15m" => ("15m", 15 * 60_000, 15_000),
            "1h" => ("1h", 3_600_000, 60_000),
            "24h" => ("24h", 86_400_000, 900_000),
            "7d" => ("7d", 7 * 86_400_000, 7_200_000),
            _ => return None,
        };
        let to_ms = (now_ms / bucket + 1) * bucket;
        Some(Range { name, from_ms: to_ms.saturating_sub(span), to_ms, bucket_ms: bucket })
    }

    fn buckets(&self) -> usize {
        ((self.to_ms - self.from_ms) / self.bucket_ms) as usize
    }
}

/// One ledger record: what the usage report reads, and what the dashboard's tables add.
struct Row {
    usage: UsageRow,
    at_ms: u64,
    key: Option<String>,
    endpoint: String,
    alias: String,
    deployment: Option<String>,
    backend_kind: Option<String>,
    route: Option<String>,
    version: Option<String>,
    guardrails: Option<String>,
    /// The UTC day, `YYYY-MM-DD`.
    day: String,
}

/// Per-second rates and each bucket's percentiles (`null` where a bucket has none).
fn series(buckets: &mut [Acc], range: &Range) -> Value {
    let secs = range.bucket_ms as f64 / 1000.0;
    let rate =
        |f: fn(&Acc) -> u64| buckets.iter().map(|a| (f(a) as f64 / secs * 1000.0).round() / 1000.0).collect::<Vec<_>>();
    let (requests, errors) = (rate(|a| a.requests), rate(|a| a.errors));
    let (prompt, completion, cached) = (rate(|a| a.prompt), rate(|a| a.completion), rate(|a| a.cached));
    let counts: Vec<u64> = buckets.iter().map(|a| a.requests).collect();
    let mut pick = |f: fn(&mut Acc) -> &mut Vec<f64>| {
        let mut out = [Vec::new(), Vec::new(), Vec::new()];
        for a in buckets.iter_mut() {
            let p = percentiles(f(a));
            out[0].push(p.as_ref().map(|p| p.p50));
            out[1].push(p.as_ref().map(|p| p.p95));
            out[2].push(p.as_ref().map(|p| p.p99));
        }
        json!({"p50": out[0], "p95": out[1], "p99": out[2]})
    };
    let (total, ttft, tpot) = (pick(|a| &mut a.total), pick(|a| &mut a.ttft), pick(|a| &mut a.tpot));
    let t: Vec<u64> = (0..range.buckets()).map(|i| (range.from_ms + i as u64 * range.bucket_ms) / 1000).collect();
    json!({
        "t": t,
        "requests": counts,
        "requests_per_s": requests,
        "errors_per_s": errors,
        "prompt_tokens_per_s": prompt,
        "completion_tokens_per_s": completion,
        "cached_tokens_per_s": cached,
        "total_ms": total,
        "ttft_ms": ttft,
        "time_per_output_token_ms": tpot,
    })
}

/// A table's rows: each group's figures, with the group's own columns first.
fn rows<K>(groups: BTreeMap<K, Acc>, columns: impl Fn(K) -> Vec<(&'static str, Value)>) -> Vec<Value> {
    groups
        .into_iter()
        .map(|(k, mut a)| {
            let mut o: serde_json::Map<String, Value> =
                columns(k).into_iter().map(|(c, v)| (c.to_owned(), v)).collect();
            o.extend(a.json());
            Value::Object(o)
        })
        .collect()
}

/// The dashboard's figures for `range` from the ledger at `c`.
pub fn figures(c: &Connection, range: &Range) -> rusqlite::Result<Value> {
    let mut stmt = c.prepare_cached(
        "SELECT started_at_ms, key, endpoint, alias, deployment, backend_kind, status, prompt_tokens, \
         completion_tokens, cached_tokens, ttft_ms, total_ms, cache_hit, cost_usd, saved_usd, route, \
         model_version, guardrails, strftime('%Y-%m-%d', started_at_ms / 1000, 'unixepoch') FROM requests \
         WHERE started_at_ms >= ?1 AND started_at_ms < ?2 ORDER BY started_at_ms DESC LIMIT ?3",
    )?;
    let rows_read =
        stmt.query_map(rusqlite::params![range.from_ms as i64, range.to_ms as i64, MAX_ROWS as i64], |r| {
            Ok(Row {
                usage: UsageRow {
                    groups: Vec::new(),
                    status: r.get(6)?,
                    prompt: r.get(7)?,
                    completion: r.get(8)?,
                    cached: r.get(9)?,
                    cost: money(r.get(13)?),
                    saved: money(r.get(14)?),
                    total_ms: r.get(11)?,
                    ttft_ms: r.get(10)?,
                    cache_hit: r.get(12)?,
                },
                at_ms: r.get::<_, i64>(0)? as u64,
                key: r.get(1)?,
                endpoint: r.get(2)?,
                alias: r.get(3)?,
                deployment: r.get(4)?,
                backend_kind: r.get(5)?,
                route: r.get(15)?,
                version: r.get(16)?,
                guardrails: r.get(17)?,
                day: r.get(18)?,
            })
        })?;
    let mut buckets: Vec<Acc> = (0..range.buckets()).map(|_| Acc::default()).collect();
    let mut all = Acc::default();
    let mut by_alias: BTreeMap<(String, String), Acc> = BTreeMap::new();
    let mut by_endpoint: BTreeMap<String, Acc> = BTreeMap::new();
    let mut by_key: BTreeMap<String, Acc> = BTreeMap::new();
    let mut by_version: BTreeMap<String, Acc> = BTreeMap::new();
    let mut by_day: BTreeMap<String, Acc> = BTreeMap::new();
    let mut local: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut guardrails: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    let (mut saved_cache, mut saved_router, mut saved_prefix) = (Decimal::ZERO, Decimal::ZERO, Decimal::ZERO);
    let mut n = 0usize;
    for r in rows_read {
        let r = r?;
        let u = &r.usage;
        n += 1;
        let i = ((r.at_ms - range.from_ms) / range.bucket_ms) as usize;
        buckets[i.min(range.buckets().saturating_sub(1))].add(u);
        all.add(u);
        let dep = r.deployment.clone().unwrap_or_else(|| "-".into());
        by_alias.entry((r.alias.clone(), dep.clone())).or_default().add(u);
        by_endpoint.entry(r.endpoint.clone()).or_default().add(u);
        by_key.entry(r.key.clone().unwrap_or_else(|| "(open)".into())).or_default().add(u);
        if let Some(v) = &r.version {
            by_version.entry(v.clone()).or_default().add(u);
        }
        by_day.entry(r.day.clone()).or_default().add(u);
        if r.backend_kind.as_deref() == Some("local") {
            let l = local.entry(dep).or_default();
            l.0 += u.prompt as u64;
            l.1 += u.cached as u64;
        }
        let saved = u.saved.unwrap_or_default();
        if u.cache_hit {
            saved_cache += saved;
        } else if r.route.is_some() {
            saved_router += saved;
        } else {
            saved_prefix += saved;
        }
        for part in r.guardrails.as_deref().unwrap_or_default().split(',').filter(|p| !p.is_empty()) {
            let (what, count) = part.rsplit_once('=').unwrap_or((part, "1"));
            let mut f = what.splitn(3, ':');
            let (d, a, w) = (f.next().unwrap_or(""), f.next().unwrap_or(""), f.next().unwrap_or(""));
            *guardrails.entry((d.to_owned(), a.to_owned(), w.to_owned())).or_default() += count.parse().unwrap_or(1);
        }
    }
    let usd = |d: Decimal| d.normalize().to_string();
    Ok(json!({
        "range": range.name,
        "from_ms": range.from_ms,
        "to_ms": range.to_ms,
        "bucket_ms": range.bucket_ms,
        "truncated": n >= MAX_ROWS,
        "series": series(&mut buckets, range),
        "totals": all.json(),
        "saved_usd": {"prefix": usd(saved_prefix), "cache": usd(saved_cache), "router": usd(saved_router)},
        "by_alias": rows(by_alias, |(a, d)| vec![("alias", json!(a)), ("deployment", json!(d))]),
        "by_endpoint": rows(by_endpoint, |e| vec![("endpoint", json!(e))]),
        "by_key": rows(by_key, |k| vec![("key", json!(k))]),
        "by_version": rows(by_version, |m| vec![("model_version", json!(m))]),
        "by_day": rows(by_day, |d| vec![("day", json!(d))]),
        "prefix_reuse": local.iter().map(|(d, (p, c))| json!({
            "deployment": d, "prompt_tokens": p, "cached_tokens": c,
            "hit_rate": if *p > 0 { (*c as f64 / *p as f64 * 1000.0).round() / 1000.0 } else { 0.0 },
        })).collect::<Vec<_>>(),
        "guardrails": guardrails.iter().map(|((d, a, w), n)| json!({"detector": d, "action": a, "direction": w, "hits": n})).collect::<Vec<_>>(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_end_at_the_current_bucket_and_hold_whole_buckets() {
        let now = 1_796_000_123_456;
        for (name, buckets) in [("15m", 60), ("1h", 60), ("24h", 96), ("7d", 84)] {
            let r = Range::parse(name, now).unwrap();
            assert_eq!(r.buckets(), buckets, "{name}");
            assert!(r.from_ms <= now && now < r.to_ms, "{name}");
            assert_eq!(r.to_ms % r.bucket_ms, 0);
        }
        assert_eq!(Range::parse("2w", now), None);
    }
}

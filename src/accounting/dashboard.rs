//! The dashboard's figures, read from the ledger's `requests` table: for a time range
//! ([`Range`]: 15 minutes, an hour, a day, a week) the traffic, latency, money and guardrail
//! series in fixed buckets, and the same range's tables by alias and deployment, endpoint,
//! key, model version and day.
//!
//! Counted as in the usage report (`/v1/usage`): an error is a 5xx answer, a 4xx is a client
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

use super::usage::percentiles;

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

/// One ledger record, the columns the dashboard reads.
struct Row {
    at_ms: u64,
    key: Option<String>,
    endpoint: String,
    alias: String,
    deployment: Option<String>,
    backend_kind: Option<String>,
    status: u16,
    prompt: u64,
    completion: u64,
    cached: u64,
    ttft_ms: Option<f64>,
    total_ms: f64,
    cache_hit: bool,
    cost: Option<Decimal>,
    saved: Option<Decimal>,
    route: Option<String>,
    version: Option<String>,
    guardrails: Option<String>,
    /// The UTC day, `YYYY-MM-DD`.
    day: String,
}

#[derive(Default)]
struct Latency {
    total: Vec<f64>,
    ttft: Vec<f64>,
    tpot: Vec<f64>,
}

impl Latency {
    fn add(&mut self, r: &Row) {
        // Refusals are no evidence of latency.
        if r.status >= 400 {
            return;
        }
        self.total.push(r.total_ms);
        if let Some(t) = r.ttft_ms {
            self.ttft.push(t);
            if r.completion >= 2 {
                self.tpot.push((r.total_ms - t).max(0.0) / (r.completion - 1) as f64);
            }
        }
    }

    fn json(&mut self) -> Value {
        json!({
            "total_ms": percentiles(&mut self.total),
            "ttft_ms": percentiles(&mut self.ttft),
            "time_per_output_token_ms": percentiles(&mut self.tpot),
        })
    }
}

/// Counts and money of a group of records.
#[derive(Default)]
struct Sums {
    requests: u64,
    errors: u64,
    client_errors: u64,
    prompt: u64,
    completion: u64,
    cached: u64,
    cache_hits: u64,
    cost: Decimal,
    saved: Decimal,
    latency: Latency,
}

impl Sums {
    fn add(&mut self, r: &Row) {
        self.requests += 1;
        match r.status {
            500.. => self.errors += 1,
            400..=499 => self.client_errors += 1,
            _ => {}
        }
        self.prompt += r.prompt;
        self.completion += r.completion;
        self.cached += r.cached;
        self.cache_hits += u64::from(r.cache_hit);
        self.cost += r.cost.unwrap_or_default();
        self.saved += r.saved.unwrap_or_default();
        self.latency.add(r);
    }

    fn json(&mut self) -> Value {
        json!({
            "requests": self.requests,
            "errors": self.errors,
            "client_errors": self.client_errors,
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "cached_tokens": self.cached,
            "cache_hits": self.cache_hits,
            "cost_usd": self.cost.normalize().to_string(),
            "saved_usd": self.saved.normalize().to_string(),
            "latency": self.latency.json(),
        })
    }
}

/// The per-bucket series, one array per figure.
struct Series {
    requests: Vec<u64>,
    errors: Vec<u64>,
    prompt: Vec<u64>,
    completion: Vec<u64>,
    cached: Vec<u64>,
    latency: Vec<Latency>,
}

impl Series {
    fn new(n: usize) -> Series {
        Series {
            requests: vec![0; n],
            errors: vec![0; n],
            prompt: vec![0; n],
            completion: vec![0; n],
            cached: vec![0; n],
            latency: (0..n).map(|_| Latency::default()).collect(),
        }
    }

    fn add(&mut self, i: usize, r: &Row) {
        self.requests[i] += 1;
        self.errors[i] += u64::from(r.status >= 500);
        self.prompt[i] += r.prompt;
        self.completion[i] += r.completion;
        self.cached[i] += r.cached;
        self.latency[i].add(r);
    }

    /// Per-second rates and each bucket's percentiles (`null` where a bucket has none).
    fn json(mut self, range: &Range) -> Value {
        let secs = range.bucket_ms as f64 / 1000.0;
        let rate = |v: &[u64]| v.iter().map(|n| (*n as f64 / secs * 1000.0).round() / 1000.0).collect::<Vec<_>>();
        let mut pick = |f: fn(&mut Latency) -> &mut Vec<f64>| {
            let mut out = [Vec::new(), Vec::new(), Vec::new()];
            for l in &mut self.latency {
                let p = percentiles(f(l));
                out[0].push(p.as_ref().map(|p| p.p50));
                out[1].push(p.as_ref().map(|p| p.p95));
                out[2].push(p.as_ref().map(|p| p.p99));
            }
            json!({"p50": out[0], "p95": out[1], "p99": out[2]})
        };
        let total = pick(|l| &mut l.total);
        let ttft = pick(|l| &mut l.ttft);
        let tpot = pick(|l| &mut l.tpot);
        let t: Vec<u64> = (0..range.buckets()).map(|i| (range.from_ms + i as u64 * range.bucket_ms) / 1000).collect();
        json!({
            "t": t,
            "requests": self.requests,
            "requests_per_s": rate(&self.requests),
            "errors_per_s": rate(&self.errors),
            "prompt_tokens_per_s": rate(&self.prompt),
            "completion_tokens_per_s": rate(&self.completion),
            "cached_tokens_per_s": rate(&self.cached),
            "total_ms": total,
            "ttft_ms": ttft,
            "time_per_output_token_ms": tpot,
        })
    }
}

/// The dashboard's figures for `range` from the ledger at `c`.
pub fn figures(c: &Connection, range: &Range) -> rusqlite::Result<Value> {
    let mut stmt = c.prepare_cached(
        "SELECT started_at_ms, key, endpoint, alias, deployment, backend_kind, status, prompt_tokens, \
         completion_tokens, cached_tokens, ttft_ms, total_ms, cache_hit, cost_usd, saved_usd, route, \
         model_version, guardrails, strftime('%Y-%m-%d', started_at_ms / 1000, 'unixepoch') FROM requests WHERE started_at_ms >= ?1 AND started_at_ms < ?2 \
         ORDER BY started_at_ms DESC LIMIT ?3",
    )?;
    let rows = stmt.query_map(rusqlite::params![range.from_ms as i64, range.to_ms as i64, MAX_ROWS as i64], |r| {
        let dec = |s: Option<String>| s.and_then(|s| s.parse::<Decimal>().ok());
        Ok(Row {
            at_ms: r.get::<_, i64>(0)? as u64,
            key: r.get(1)?,
            endpoint: r.get(2)?,
            alias: r.get(3)?,
            deployment: r.get(4)?,
            backend_kind: r.get(5)?,
            status: r.get::<_, i64>(6)? as u16,
            prompt: r.get::<_, i64>(7)? as u64,
            completion: r.get::<_, i64>(8)? as u64,
            cached: r.get::<_, i64>(9)? as u64,
            ttft_ms: r.get(10)?,
            total_ms: r.get(11)?,
            cache_hit: r.get::<_, i64>(12)? != 0,
            cost: dec(r.get(13)?),
            saved: dec(r.get(14)?),
            route: r.get(15)?,
            version: r.get(16)?,
            guardrails: r.get(17)?,
            day: r.get(18)?,
        })
    })?;
    let mut series = Series::new(range.buckets());
    let mut all = Sums::default();
    let mut by_alias: BTreeMap<(String, String), Sums> = BTreeMap::new();
    let mut by_endpoint: BTreeMap<String, Sums> = BTreeMap::new();
    let mut by_key: BTreeMap<String, Sums> = BTreeMap::new();
    let mut by_version: BTreeMap<String, Sums> = BTreeMap::new();
    let mut by_day: BTreeMap<String, (Decimal, Decimal, u64)> = BTreeMap::new();
    let mut local: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut guardrails: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    let (mut saved_cache, mut saved_router, mut saved_prefix) = (Decimal::ZERO, Decimal::ZERO, Decimal::ZERO);
    let mut n = 0usize;
    for r in rows {
        let r = r?;
        n += 1;
        let i = ((r.at_ms - range.from_ms) / range.bucket_ms) as usize;
        series.add(i.min(range.buckets().saturating_sub(1)), &r);
        all.add(&r);
        let dep = r.deployment.clone().unwrap_or_else(|| "-".into());
        by_alias.entry((r.alias.clone(), dep.clone())).or_default().add(&r);
        by_endpoint.entry(r.endpoint.clone()).or_default().add(&r);
        by_key.entry(r.key.clone().unwrap_or_else(|| "(open)".into())).or_default().add(&r);
        if let Some(v) = &r.version {
            by_version.entry(v.clone()).or_default().add(&r);
        }
        let day = by_day.entry(r.day.clone()).or_default();
        day.0 += r.cost.unwrap_or_default();
        day.1 += r.saved.unwrap_or_default();
        day.2 += 1;
        if r.backend_kind.as_deref() == Some("local") {
            let l = local.entry(dep).or_default();
            l.0 += r.prompt;
            l.1 += r.cached;
        }
        let saved = r.saved.unwrap_or_default();
        if r.cache_hit {
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
    let money = |d: Decimal| d.normalize().to_string();
    Ok(json!({
        "range": range.name,
        "from_ms": range.from_ms,
        "to_ms": range.to_ms,
        "bucket_ms": range.bucket_ms,
        "truncated": n >= MAX_ROWS,
        "series": series.json(range),
        "totals": all.json(),
        "saved_usd": {"prefix": money(saved_prefix), "cache": money(saved_cache), "router": money(saved_router)},
        "by_alias": by_alias.iter_mut().map(|((a, d), s)| { let mut v = s.json(); v["alias"] = json!(a); v["deployment"] = json!(d); v }).collect::<Vec<_>>(),
        "by_endpoint": by_endpoint.iter_mut().map(|(e, s)| { let mut v = s.json(); v["endpoint"] = json!(e); v }).collect::<Vec<_>>(),
        "by_key": by_key.iter_mut().map(|(k, s)| { let mut v = s.json(); v["key"] = json!(k); v }).collect::<Vec<_>>(),
        "by_version": by_version.iter_mut().map(|(m, s)| { let mut v = s.json(); v["model_version"] = json!(m); v }).collect::<Vec<_>>(),
        "by_day": by_day.iter().map(|(d, (c, s, n))| json!({"day": d, "cost_usd": money(*c), "saved_usd": money(*s), "requests": n})).collect::<Vec<_>>(),
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

//! The Prometheus series per (alias, deployment): request counts by status, tokens, cost,
//! and latency histograms.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use super::RequestRecord;

/// Latency buckets in seconds.
const BUCKETS: [f64; 16] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.counts[i] += 1;
        }
        self.sum += secs;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cum = 0;
        for (b, c) in BUCKETS.iter().zip(self.counts) {
            cum += c;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Default)]
struct Series {
    by_status: HashMap<u16, u64>,
    prompt_tokens: u64,
    completion_tokens: u64,
    cached_tokens: u64,
    cost_usd: rust_decimal::Decimal,
    saved_usd: rust_decimal::Decimal,
    latency: Histogram,
    ttft: Histogram,
    tpot: Histogram,
}

/// Prometheus series per (alias, deployment).
#[derive(Default)]
pub struct Metrics {
    series: Mutex<HashMap<(String, String), Series>>,
}

impl Metrics {
    pub fn record(&self, r: &RequestRecord) {
        let key = (r.alias.clone(), r.deployment.clone().unwrap_or_default());
        let mut m = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let s = m.entry(key).or_default();
        *s.by_status.entry(r.status).or_default() += 1;
        s.prompt_tokens += r.prompt_tokens;
        s.completion_tokens += r.completion_tokens;
        s.cached_tokens += r.cached_tokens;
        if let Some(c) = &r.cost {
            s.cost_usd += c.usd;
            s.saved_usd += c.saved_usd;
        }
        s.latency.observe(r.total_ms / 1000.0);
        if let Some(t) = r.ttft_ms {
            s.ttft.observe(t / 1000.0);
            if r.completion_tokens >= 2 {
                s.tpot.observe((r.total_ms - t).max(0.0) / 1000.0 / (r.completion_tokens - 1) as f64);
            }
        }
    }

    pub fn render(&self, out: &mut String) {
        let m = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let mut keys: Vec<_> = m.keys().cloned().collect();
        keys.sort();
        let lbl = |k: &(String, String)| format!("alias=\"{}\",deployment=\"{}\"", esc(&k.0), esc(&k.1));
        out.push_str("# HELP tollgate_requests_total Requests by alias, deployment and HTTP status.\n# TYPE tollgate_requests_total counter\n");
        for k in &keys {
            let mut st: Vec<_> = m[k].by_status.iter().collect();
            st.sort();
            for (code, n) in st {
                let _ = writeln!(out, "tollgate_requests_total{{{},status=\"{code}\"}} {n}", lbl(k));
            }
        }
        out.push_str("# HELP tollgate_tokens_total Tokens by alias, deployment and kind.\n# TYPE tollgate_tokens_total counter\n");
        for k in &keys {
            let s = &m[k];
            for (kind, n) in
                [("prompt", s.prompt_tokens), ("completion", s.completion_tokens), ("cached", s.cached_tokens)]
            {
                let _ = writeln!(out, "tollgate_tokens_total{{{},kind=\"{kind}\"}} {n}", lbl(k));
            }
        }
        out.push_str("# HELP tollgate_cost_usd_total What requests cost, in USD, by alias and deployment (priced deployments).\n# TYPE tollgate_cost_usd_total counter\n");
        for k in &keys {
            let _ = writeln!(out, "tollgate_cost_usd_total{{{}}} {}", lbl(k), m[k].cost_usd);
        }
        out.push_str("# HELP tollgate_saved_usd_total What reuse saved (cache hits, reused prefix tokens), in USD.\n# TYPE tollgate_saved_usd_total counter\n");
        for k in &keys {
            let _ = writeln!(out, "tollgate_saved_usd_total{{{}}} {}", lbl(k), m[k].saved_usd);
        }
        out.push_str("# HELP tollgate_request_duration_seconds Total request time.\n# TYPE tollgate_request_duration_seconds histogram\n");
        for k in &keys {
            m[k].latency.render(out, "tollgate_request_duration_seconds", &lbl(k));
        }
        out.push_str("# HELP tollgate_time_to_first_token_seconds Time to the first generated token.\n# TYPE tollgate_time_to_first_token_seconds histogram\n");
        for k in &keys {
            m[k].ttft.render(out, "tollgate_time_to_first_token_seconds", &lbl(k));
        }
        out.push_str("# HELP tollgate_time_per_output_token_seconds Time per generated token after the first.\n# TYPE tollgate_time_per_output_token_seconds histogram\n");
        for k in &keys {
            m[k].tpot.render(out, "tollgate_time_per_output_token_seconds", &lbl(k));
        }
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

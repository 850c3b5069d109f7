//! The Prometheus exposition, through `prometheus-client`, and the request series.
//!
//! `/metrics` is one [`Registry`] (held by the HTTP layer) encoded as the Prometheus text
//! format 0.0.4 ([`CONTENT_TYPE`], [`encode`]); the library writes every `# HELP` / `# TYPE`
//! line, escapes label values (`\`, `"`, newline) and formats numbers. What is read at scrape
//! time (these series, the monitors, the ledger, the deployments and canaries) is a
//! [`Collector`] that writes its families with [`family`]: every family gets its HELP and TYPE
//! even while it has no sample, and series come out sorted, so the text is stable.
//!
//! [`Metrics`] holds the series per (alias, deployment): requests by status, tokens by kind,
//! cost and savings in USD (f64 counters), and histograms of total time, time to the first
//! token and time per output token (`(total − ttft) / (completion_tokens − 1)`, with ttft
//! known and >= 2 tokens) over [`BUCKETS`]. [`Metrics::record`] runs once per request: one
//! short mutex, two lookups by `&str` and plain additions; only the first request of a new
//! (alias, deployment) allocates, for its names. Costs are summed as decimals and exposed as
//! f64 at scrape time.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Mutex, PoisonError};

use prometheus_client::encoding::{prometheus_text, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

pub use prometheus_client::collector::Collector;
pub use prometheus_client::encoding::DescriptorEncoder;
pub use prometheus_client::metrics::counter::ConstCounter;
pub use prometheus_client::metrics::gauge::ConstGauge;
pub use prometheus_client::registry::Registry;

use super::RequestRecord;

/// The `Content-Type` of the exposition: the Prometheus text format 0.0.4, UTF-8.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The label set of a family without labels.
pub const NO_LABELS: [(&str, &str); 0] = [];

/// Latency buckets in seconds.
pub const BUCKETS: [f64; 16] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// The registry as Prometheus text.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 * 1024);
    // Writing to a String cannot fail; a collector's error would end the text early.
    if let Err(e) = prometheus_text::encode(&mut out, registry) {
        tracing::error!("metrics exposition cut short: {e}");
    }
    out
}

/// Writes one family: its HELP and TYPE, then one sample (or, for a histogram, its buckets,
/// sum and count) per `(labels, value)`. `name` is the name as exposed: a counter's ends in
/// `_total`, which is taken off here because the encoder appends it.
pub fn family<L, M>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result
where
    L: EncodeLabelSet,
    M: EncodeMetric + TypedMetric,
{
    let name = match M::TYPE {
        MetricType::Counter => name.strip_suffix("_total").ok_or(fmt::Error)?,
        _ => name,
    };
    let mut metric = enc.encode_descriptor(name, help, None, M::TYPE)?;
    for (labels, value) in series {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The value of `series` (name and labels, as written) in exposition text `out`.
#[cfg(test)]
pub fn sample(out: &str, series: &str) -> Option<f64> {
    out.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Counts per bucket (not cumulative; above the last bound only in `count`), sum and count.
#[derive(Clone, Debug, Default)]
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
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut enc: MetricEncoder) -> fmt::Result {
        let buckets: [(f64, u64); BUCKETS.len()] = std::array::from_fn(|i| (BUCKETS[i], self.counts[i]));
        // The encoder adds the `+Inf` bucket, with `count`.
        enc.encode_histogram::<NoLabelSet>(self.sum, self.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// One (alias, deployment)'s series.
#[derive(Clone, Debug, Default)]
struct Series {
    by_status: BTreeMap<u16, u64>,
    /// Prompt, completion and cached tokens.
    tokens: [u64; 3],
    /// Summed exactly; exposed as f64 counters.
    cost_usd: Decimal,
    saved_usd: Decimal,
    latency: Histogram,
    ttft: Histogram,
    tpot: Histogram,
}

impl Series {
    fn record(&mut self, r: &RequestRecord) {
        *self.by_status.entry(r.status).or_default() += 1;
        for (t, n) in self.tokens.iter_mut().zip([r.prompt_tokens, r.completion_tokens, r.cached_tokens]) {
            *t += n;
        }
        if let Some(c) = &r.cost {
            self.cost_usd += c.usd;
            self.saved_usd += c.saved_usd;
        }
        self.latency.observe(r.total_ms / 1000.0);
        if let Some(t) = r.ttft_ms {
            self.ttft.observe(t / 1000.0);
            if r.completion_tokens >= 2 {
                self.tpot.observe((r.total_ms - t).max(0.0) / 1000.0 / (r.completion_tokens - 1) as f64);
            }
        }
    }
}

/// The Prometheus series per (alias, deployment).
#[derive(Debug, Default)]
pub struct Metrics {
    /// alias → deployment (empty when the request had none) → series.
    series: Mutex<HashMap<String, HashMap<String, Series>>>,
    /// Guardrail findings by (detector, action, direction).
    guardrails: Mutex<BTreeMap<(&'static str, &'static str, &'static str), u64>>,
}

impl Metrics {
    pub fn record(&self, r: &RequestRecord) {
        if let Some(h) = &r.guardrails {
            let h = h.lock().unwrap_or_else(PoisonError::into_inner);
            let mut g = self.guardrails.lock().unwrap_or_else(PoisonError::into_inner);
            for (d, a, w, n) in h.iter() {
                *g.entry((d, a.name(), w.name())).or_default() += u64::from(n);
            }
        }
        let deployment = r.deployment.as_deref().unwrap_or_default();
        let mut all = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        // Looked up by `&str`, one hash per level; the names are copied only the first time.
        if let Some(s) = all.get_mut(&r.alias).and_then(|d| d.get_mut(deployment)) {
            return s.record(r);
        }
        all.entry(r.alias.clone()).or_default().entry(deployment.to_owned()).or_default().record(r);
    }
}

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        // Copied under the lock and written after it: a scrape holds up `record` only for the copy.
        let mut all: Vec<((String, String), Series)> = {
            let series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
            let each =
                series.iter().flat_map(|(a, ds)| ds.iter().map(move |(d, s)| ((a.clone(), d.clone()), s.clone())));
            each.collect()
        };
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let all: Vec<_> =
            all.iter().map(|((a, d), s)| ([("alias", a.as_str()), ("deployment", d.as_str())], s)).collect();
        let all = &all;

        let by_status = all.iter().flat_map(|(labels, s)| {
            s.by_status.iter().map(move |(code, n)| ((*labels, [("status", *code)]), ConstCounter::new(*n)))
        });
        let help = "Requests by alias, deployment and HTTP status.";
        family(&mut enc, "tollgate_requests_total", help, by_status)?;
        let tokens = all.iter().flat_map(|(labels, s)| {
            let kinds = ["prompt", "completion", "cached"].into_iter().zip(s.tokens);
            kinds.map(move |(kind, n)| ((*labels, [("kind", kind)]), ConstCounter::new(n)))
        });
        family(&mut enc, "tollgate_tokens_total", "Tokens by alias, deployment and kind.", tokens)?;
        let usd = |d: Decimal| ConstCounter::new(d.to_f64().unwrap_or_default());
        let help = "What requests cost, in USD, by alias and deployment (priced deployments).";
        family(&mut enc, "tollgate_cost_usd_total", help, all.iter().map(|(l, s)| (*l, usd(s.cost_usd))))?;
        let help = "What reuse saved (cache hits, reused prefix tokens), in USD.";
        family(&mut enc, "tollgate_saved_usd_total", help, all.iter().map(|(l, s)| (*l, usd(s.saved_usd))))?;
        for (name, help, h) in [
            ("tollgate_request_duration_seconds", "Total request time.", (|s| &s.latency) as fn(&Series) -> &Histogram),
            ("tollgate_time_to_first_token_seconds", "Time to the first generated token.", |s| &s.ttft),
            ("tollgate_time_per_output_token_seconds", "Time per generated token after the first.", |s| &s.tpot),
        ] {
            family(&mut enc, name, help, all.iter().map(|(l, s)| (*l, h(s).clone())))?;
        }
        let hits: Vec<_> = self.guardrails.lock().unwrap_or_else(PoisonError::into_inner).clone().into_iter().collect();
        let hits = hits
            .iter()
            .map(|((d, a, w), n)| ([("detector", *d), ("action", *a), ("direction", *w)], ConstCounter::new(*n)));
        let help = "Values the guardrails found, by detector, action taken and direction (input, output).";
        family(&mut enc, "tollgate_guardrail_hits_total", help, hits)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Endpoint;
    use std::sync::Arc;

    fn rec(alias: &str, deployment: &str, status: u16) -> RequestRecord {
        let mut r = RequestRecord::new("r".into(), Endpoint::Chat, alias.into(), false);
        (r.deployment, r.status) = (Some(deployment.into()), status);
        (r.prompt_tokens, r.completion_tokens, r.total_ms, r.ttft_ms) = (20, 11, 1500.0, Some(500.0));
        r
    }

    fn text(m: Metrics) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Arc::new(m)));
        encode(&registry)
    }

    #[test]
    fn series_by_alias_and_deployment_sorted_and_escaped() {
        let m = Metrics::default();
        m.record(&rec("b", "d", 200));
        m.record(&rec("a\"\\\n", "d", 502));
        m.record(&rec("b", "d", 200));
        m.record(&rec("b", "d", 429));
        let out = text(m);
        let a = r#"alias="a\"\\\n",deployment="d""#;
        let expected = [
            "# HELP tollgate_requests_total Requests by alias, deployment and HTTP status.\n",
            "# TYPE tollgate_requests_total counter\n",
            &format!("tollgate_requests_total{{{a},status=\"502\"}} 1\n"),
            "tollgate_requests_total{alias=\"b\",deployment=\"d\",status=\"200\"} 2\n",
            "tollgate_requests_total{alias=\"b\",deployment=\"d\",status=\"429\"} 1\n",
            "# HELP tollgate_tokens_total Tokens by alias, deployment and kind.\n",
        ]
        .concat();
        assert!(out.starts_with(&expected), "{out}");
        assert!(out.contains("tollgate_tokens_total{alias=\"b\",deployment=\"d\",kind=\"completion\"} 33\n"), "{out}");
        assert!(out.contains("# TYPE tollgate_cost_usd_total counter\n"), "{out}");
        assert!(out.contains("# TYPE tollgate_saved_usd_total counter\n"), "{out}");
        assert!(!out.contains("# EOF"), "the Prometheus text format, not OpenMetrics: {out}");
    }

    #[test]
    fn histograms_of_latency_ttft_and_time_per_token() {
        let m = Metrics::default();
        m.record(&rec("a", "d", 200));
        let out = text(m);
        let l = "alias=\"a\",deployment=\"d\"";
        for line in [
            "# TYPE tollgate_request_duration_seconds histogram\n".to_owned(),
            format!("tollgate_request_duration_seconds_bucket{{{l},le=\"1\"}} 0\n"),
            format!("tollgate_request_duration_seconds_bucket{{{l},le=\"2.5\"}} 1\n"),
            format!("tollgate_request_duration_seconds_bucket{{{l},le=\"+Inf\"}} 1\n"),
            format!("tollgate_request_duration_seconds_sum{{{l}}} 1.5\n"),
            format!("tollgate_request_duration_seconds_count{{{l}}} 1\n"),
            format!("tollgate_time_to_first_token_seconds_bucket{{{l},le=\"0.5\"}} 1\n"),
            // (1500 − 500) ms over 10 tokens after the first: 0.1 s each.
            format!("tollgate_time_per_output_token_seconds_bucket{{{l},le=\"0.05\"}} 0\n"),
            format!("tollgate_time_per_output_token_seconds_bucket{{{l},le=\"0.1\"}} 1\n"),
        ] {
            assert!(out.contains(&line), "{line}: {out}");
        }
    }

    #[test]
    fn every_family_is_described_before_any_request() {
        let out = text(Metrics::default());
        for name in ["requests_total", "tokens_total", "cost_usd_total", "request_duration_seconds"] {
            assert!(out.contains(&format!("# TYPE tollgate_{name} ")), "{out}");
        }
    }

    #[test]
    fn usd_counters_add_up_as_floats() {
        let m = Metrics::default();
        for _ in 0..2 {
            let mut r = rec("a", "d", 200);
            r.cost = Some(crate::pricing::Cost { usd: "0.25".parse().unwrap(), saved_usd: "0.125".parse().unwrap() });
            m.record(&r);
        }
        let out = text(m);
        assert!(out.contains("tollgate_cost_usd_total{alias=\"a\",deployment=\"d\"} 0.5\n"), "{out}");
        assert!(out.contains("tollgate_saved_usd_total{alias=\"a\",deployment=\"d\"} 0.25\n"), "{out}");
    }
}

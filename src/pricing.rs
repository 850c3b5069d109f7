//! Prices and costs. Each deployment declares USD per million input, cached-input and output
//! tokens (a local deployment its amortised compute price, in the same units), and optionally
//! a batch price as a multiplier. Costs are [`Decimal`], never floats, so a month of
//! requests adds up to the cent exactly.
//!
//! A request's cost is computed from its usage:
//! `(prompt - cached) * input + cached * cached_input + completion * output` per million.
//! Its saving, beside the cost:
//! - reused prompt tokens: `cached * (input - cached_input)`;
//! - a response-cache hit: the whole cost the request would have had (it pays nothing);
//! - a router downgrade: the large model's cost minus the small one's (model lifecycle issue).
//!
//! A deployment without a price has no cost (`None`, "not priced"), never a zero one.

use rust_decimal::Decimal;
use serde::Serialize;

use crate::protocol::Usage;

const MILLION: Decimal = Decimal::from_parts(1_000_000, 0, 0, false, 0);

/// USD per million tokens.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Price {
    pub input: Decimal,
    /// Prompt tokens served from a cache (the upstream's or the engine's prefix cache);
    /// the input price unless declared.
    pub cached_input: Decimal,
    pub output: Decimal,
    /// Batch lines are charged at this fraction of the price (e.g. 0.5); 1 unless declared.
    pub batch_multiplier: Decimal,
}

/// The tokens a request is charged for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    pub prompt: u64,
    pub cached: u64,
    pub completion: u64,
}

impl From<Usage> for Tokens {
    fn from(u: Usage) -> Self {
        Tokens { prompt: u.prompt_tokens, cached: u.cached_tokens.unwrap_or(0), completion: u.completion_tokens }
    }
}

/// Serialised as decimal strings (`"0.00018"`), exact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Cost {
    pub usd: Decimal,
    pub saved_usd: Decimal,
}

impl Price {
    /// The cost of these tokens; cached tokens are a part of `prompt`, priced once, as cached.
    pub fn cost(&self, t: Tokens, batch: bool) -> Cost {
        let cached = t.cached.min(t.prompt);
        let fresh = t.prompt - cached;
        let m = if batch { self.batch_multiplier } else { Decimal::ONE };
        let usd = (Decimal::from(fresh) * self.input
            + Decimal::from(cached) * self.cached_input
            + Decimal::from(t.completion) * self.output)
            * m
            / MILLION;
        let saved_usd = Decimal::from(cached) * (self.input - self.cached_input) * m / MILLION;
        Cost { usd: usd.normalize(), saved_usd: saved_usd.max(Decimal::ZERO).normalize() }
    }

    /// A response-cache hit: nothing is paid, and the whole cost (counting the cached tokens
    /// at the full input price, as a fresh call would) is saved.
    pub fn cache_hit(&self, t: Tokens) -> Cost {
        let full = self.cost(Tokens { cached: 0, ..t }, false);
        Cost { usd: Decimal::ZERO, saved_usd: full.usd }
    }
}

/// Adds the cost to a `usage` object as decimal strings (`cost_usd`, `saved_usd`): extra
/// fields that OpenAI SDKs ignore and cost-aware clients read.
pub fn annotate_usage(usage: &mut serde_json::Value, cost: Cost) {
    if let Some(u) = usage.as_object_mut() {
        u.insert("cost_usd".into(), serde_json::Value::String(cost.usd.to_string()));
        u.insert("saved_usd".into(), serde_json::Value::String(cost.saved_usd.to_string()));
    }
}

/// Reads a price or budget written in a config file as a number (`0.15`) or a string
/// (`"0.15"`): the number's shortest decimal form is taken exactly, never rounded through
/// binary.
pub fn decimal_from_toml(v: &toml::Value) -> Option<Decimal> {
    use std::str::FromStr;
    match v {
        toml::Value::Integer(i) => Some(Decimal::from(*i)),
        toml::Value::Float(f) if f.is_finite() => Decimal::from_str(&f.to_string()).ok(),
        toml::Value::String(s) => Decimal::from_str(s.trim()).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn cached_tokens_are_priced_once_as_cached() {
        let p = Price { input: d("0.15"), cached_input: d("0.075"), output: d("0.60"), batch_multiplier: d("0.5") };
        let c = p.cost(Tokens { prompt: 1000, cached: 400, completion: 100 }, false);
        // 600 * 0.15 + 400 * 0.075 + 100 * 0.6 = 90 + 30 + 60 = 180 per million.
        assert_eq!(c.usd, d("0.00018"));
        assert_eq!(c.saved_usd, d("0.00003"));
        let b = p.cost(Tokens { prompt: 1000, cached: 400, completion: 100 }, true);
        assert_eq!(b.usd, d("0.00009"));
        let hit = p.cache_hit(Tokens { prompt: 1000, cached: 400, completion: 100 });
        assert_eq!(hit.usd, Decimal::ZERO);
        assert_eq!(hit.saved_usd, d("0.00021"));
    }

    #[test]
    fn a_million_small_costs_add_up_exactly() {
        let p = Price { input: d("0.1"), cached_input: d("0.1"), output: d("0.2"), batch_multiplier: Decimal::ONE };
        let one = p.cost(Tokens { prompt: 7, cached: 0, completion: 3 }, false).usd;
        let mut sum = Decimal::ZERO;
        for _ in 0..1_000_000 {
            sum += one;
        }
        assert_eq!(sum, d("1.3"));
    }

    #[test]
    fn toml_numbers_become_exact_decimals() {
        assert_eq!(decimal_from_toml(&toml::Value::Float(0.075)), Some(d("0.075")));
        assert_eq!(decimal_from_toml(&toml::Value::String("1.25".into())), Some(d("1.25")));
        assert_eq!(decimal_from_toml(&toml::Value::Integer(3)), Some(d("3")));
        assert_eq!(decimal_from_toml(&toml::Value::Boolean(true)), None);
    }
}

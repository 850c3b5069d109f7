//! The router's decision time: `smallroute::features` + `smallroute::decide` over every
//! request of the labelled set (`tests/data/router_prompts.jsonl`, bodies parsed beforehand,
//! as the gateway has them), many rounds. Reports ns per request: mean, median, p99 and max
//! of single timed calls, and the mean of untimed back-to-back calls. Target: under 50 us.
//! Also the canary's sticky assignment (`release::bucket`: one SHA-256 of model and
//! identity), which every request to a model with a canary pays.
//!
//! `cargo bench --no-default-features --bench smallroute`
#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests and benches: a panic is the report

use std::hint::black_box;
use std::time::Instant;

use serde_json::{Map, Value};
use tollgate::policy::smallroute::{decide, features, RouterWeights};

const ROUNDS: usize = 2_000;

fn main() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/router_prompts.jsonl");
    let text = std::fs::read_to_string(path).expect("the labelled set is in the repository");
    let bodies: Vec<Map<String, Value>> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).expect("each line is JSON");
            match v["request"].take() {
                Value::Object(m) => m,
                other => panic!("request is not an object: {other}"),
            }
        })
        .collect();
    let bytes: usize = bodies.iter().map(|b| serde_json::to_string(b).map_or(0, |s| s.len())).sum();
    let w = RouterWeights::default();

    // Warm up caches and branch predictors.
    for b in &bodies {
        black_box(decide(&features(black_box(b)), &w));
    }

    // Single calls, each timed: the distribution, including the longest prompts.
    let mut samples: Vec<u64> = Vec::with_capacity(ROUNDS * bodies.len());
    for _ in 0..ROUNDS {
        for b in &bodies {
            let t = Instant::now();
            black_box(decide(&features(black_box(b)), &w));
            samples.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
    }
    samples.sort_unstable();
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    let mean = samples.iter().sum::<u64>() as f64 / samples.len() as f64;

    // Back to back, timed as a whole: no timer overhead per call.
    let t = Instant::now();
    for _ in 0..ROUNDS {
        for b in &bodies {
            black_box(decide(&features(black_box(b)), &w));
        }
    }
    let bulk = t.elapsed().as_nanos() as f64 / (ROUNDS * bodies.len()) as f64;

    println!(
        "smallroute: {} requests (mean body {} bytes) x {ROUNDS} rounds: features+decide ns/request: mean {mean:.0}, p50 {}, p99 {}, max {}; back-to-back mean {bulk:.0} (target < 50000)",
        bodies.len(),
        bytes / bodies.len(),
        pick(0.5),
        pick(0.99),
        samples.last().copied().unwrap_or(0),
    );

    let ids: Vec<String> = (0..10_000).map(|i| format!("user-{i:05}@example.com")).collect();
    let t = Instant::now();
    let mut under = 0u64;
    for _ in 0..100 {
        for id in &ids {
            under += u64::from(tollgate::release::bucket(black_box("chat"), black_box(id)) < 1000);
        }
    }
    let per = t.elapsed().as_nanos() as f64 / (100 * ids.len()) as f64;
    println!(
        "canary assignment: {per:.0} ns/request back-to-back over {} identities; {:.2}% under a 10% weight",
        ids.len(),
        under as f64 / 10_000.0
    );
}

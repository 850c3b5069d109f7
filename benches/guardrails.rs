//! The guardrails' scan: time per KB of text the detectors read, on realistic prompts with
//! nothing to find (prose, code, JSON: the common case), on the repository's own lock file
//! (hash-dense), and on text dense with findings; and a whole 2 KB chat request scanned and
//! a 2 KB answer streamed through the guard in 4-character pieces.
//!
//! `cargo bench --bench guardrails` (no engine needed). Each figure is the median of 15 runs.
#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests and benches: a panic is the report

use std::hint::black_box;
use std::time::Instant;

use tollgate::guardrails::{self, detect::Scanner, Policy, Scope};

fn median_us(mut f: impl FnMut()) -> f64 {
    let mut v: Vec<f64> = (0..15)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..20 {
                f();
            }
            t.elapsed().as_secs_f64() * 1e6 / 20.0
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let prompt = std::fs::read_to_string(format!("{root}/tests/data/guardrails/prompt_2k.txt")).unwrap();
    let (prose, rest) = prompt.split_once("```python").unwrap();
    let (code, json) = rest.split_once("```").unwrap();
    let lock = std::fs::read_to_string(format!("{root}/Cargo.lock")).unwrap();
    let labelled: String = std::fs::read_to_string(format!("{root}/tests/data/guardrails/labelled.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["text"].as_str().unwrap().to_owned() + "\n")
        .collect();
    let scanner = Scanner::get();
    println!("guardrails scan, median of 15 runs (µs per KB of text)");
    for (name, text) in [
        ("prose", prose.repeat(4)),
        ("code", code.repeat(4)),
        ("json", json.repeat(8)),
        ("2 KB prompt (mixed)", prompt.clone()),
        ("Cargo.lock (hashes)", lock[..64 * 1024].to_owned()),
        ("findings (labelled corpus)", labelled),
    ] {
        let us = median_us(|| {
            black_box(scanner.find(black_box(&text)));
        });
        println!(
            "  {name:28} {:>8.1} KB  {:>7.2} µs/KB",
            text.len() as f64 / 1024.0,
            us / (text.len() as f64 / 1024.0)
        );
    }
    let policy =
        Policy::resolve(&[Some(&Scope { default: Some(guardrails::Action::Redact), detectors: vec![] })]).unwrap();
    let body = serde_json::json!({"model": "chat", "messages": [{"role": "user", "content": prompt}]});
    let body = body.as_object().unwrap().clone();
    let us = median_us(|| {
        let mut b = body.clone();
        black_box(guardrails::scan_request(&policy, &mut b));
    });
    let clone = median_us(|| {
        black_box(body.clone());
    });
    println!("  a 2 KB chat request scanned (scan_request): {:.1} µs (of which {clone:.1} µs cloning the body)", us);
}

//! The embedded engine against llama.cpp's own llama-server, same GGUF, same threads, same
//! chat template (Gemma's template (llama.cpp's built-in `gemma`; llama-server gets it as
//! `benches/gemma.jinja`, since its `--chat-template gemma` renders a 3-token prompt in this
//! build)), same slots and context, both with ggml's
//! runtime-selected CPU variants. Interleaved rounds; the median with its spread.
//!
//! tollgate runs twice, as configured by default and with `deterministic = true`, so that
//! switch's cost is measured in the same run.
//!
//! `cargo bench --bench engine` after `scripts/setup.sh --llama-server` (it needs
//! `TOLLGATE_TEST_MODEL` and `TOLLGATE_LLAMA_SERVER`) and `cargo build --release`.
//! Measured, from each server's own `timings` and from the client's clock:
//! - single stream: generation tokens/s (128 tokens) and prompt tokens/s (a ~450-token prompt);
//! - 4 and 8 concurrent streams (64 tokens each): aggregate generation tokens/s over the
//!   wall time, and the time to first token of the streams under that load;
//! - resident memory of each server after the runs.
#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests and benches: a panic is the report

mod support;

use std::time::{Duration, Instant};

use support::{median, rss_mb, wait_ready, Server};

use futures::future::join_all;
use serde_json::{json, Value};

const THREADS: &str = "2";
const SLOTS: usize = 8;
const CTX_PER_SLOT: usize = 1024;

fn start_tollgate(name: &'static str, model: &str, dir: &std::path::Path, extra: &str) -> Server {
    support::start_tollgate_as(
        name,
        dir,
        &format!("[[alias]]\nname = \"gemma\"\n[[alias.deployment]]\nname = \"local\"\nkind = \"local\"\npath = \"{model}\"\ncontext = {CTX_PER_SLOT}\nparallel = {SLOTS}\nthreads = {THREADS}\nbatch = 512\nchat_template = \"gemma\"\n{extra}"),
    )
}

fn start_llama_server(model: &str) -> Server {
    let (np, c) = (SLOTS.to_string(), (SLOTS * CTX_PER_SLOT).to_string());
    support::start_llama_server(
        model,
        &["-t", THREADS, "-tb", THREADS, "-np", &np, "-c", &c, "-b", "512", "--kv-unified"],
    )
}

struct Run {
    ttft: Duration,
    end: Duration,
    completion_tokens: f64,
    timings: Value,
}

/// One streamed completion; TTFT is the first `data:` event carrying text.
async fn stream(c: &reqwest::Client, s: &Server, prompt: &str, max_tokens: u32) -> Run {
    // `cache_prompt: false`: llama-server would otherwise reuse the prompt of the round
    // before, and its prompt speed would measure its cache, not its prefill.
    let body = json!({"model": "gemma", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": true,
                      "stream_options": {"include_usage": true}, "ignore_eos": true, "cache_prompt": false});
    let t0 = Instant::now();
    let mut r = support::post(c, s, "/v1/completions", &body).await;
    assert!(r.status().is_success(), "{}: {}", s.name, r.status());
    let (mut ttft, mut buf) = (None, String::new());
    while let Some(chunk) = r.chunk().await.unwrap() {
        let text = String::from_utf8_lossy(&chunk);
        if ttft.is_none() && text.contains("\"text\":\"") && !text.contains("\"text\":\"\"") {
            ttft = Some(t0.elapsed());
        }
        buf.push_str(&text);
    }
    let end = t0.elapsed();
    let (mut tokens, mut timings) = (0.0, Value::Null);
    for d in buf.split("\n\n").filter_map(|e| e.strip_prefix("data: ")) {
        if let Ok(v) = serde_json::from_str::<Value>(d) {
            if let Some(u) = v["usage"]["completion_tokens"].as_f64() {
                tokens = u;
            }
            if v["timings"].is_object() {
                timings = v["timings"].clone();
            }
        }
    }
    Run { ttft: ttft.unwrap_or(end), end, completion_tokens: tokens, timings }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let model = std::env::var("TOLLGATE_TEST_MODEL").expect("TOLLGATE_TEST_MODEL (scripts/setup.sh)");
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let (dir, dir_det) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let model: &'static str = Box::leak(model.into_boxed_str());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        // llama-server closes idle keep-alive connections after 5 s; never reuse one that old.
        let c = reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(1)).build().unwrap();
        let mut servers = vec![
            start_tollgate("tollgate", model, dir.path(), ""),
            start_tollgate("tollgate deterministic", model, dir_det.path(), "deterministic = true\n"),
            start_llama_server(model),
        ];
        for s in &servers {
            wait_ready(&c, s).await;
            stream(&c, s, "Warm up.", 4).await;
        }
        let long_prompt = "The history of the city is long and full of events. ".repeat(40);
        let names: Vec<&str> = servers.iter().map(|s| s.name).collect();
        let metrics = ["gen tok/s (1 stream)", "prompt tok/s (1 stream)", "agg gen tok/s (4 streams)", "TTFT ms (4 streams)", "agg gen tok/s (8 streams)", "TTFT ms (8 streams)"];
        let mut table: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); metrics.len()]; servers.len()];
        for round in 0..rounds {
            for (si, s) in servers.iter().enumerate() {
                let r = stream(&c, s, "Once upon a time", 128).await;
                let gen = r.timings["predicted_per_second"].as_f64().unwrap_or(r.completion_tokens / (r.end - r.ttft).as_secs_f64());
                table[si][0].push(gen);
                // A prompt of its own each round and server: prompt processing, not a cache hit.
                let p = stream(&c, s, &format!("Round {round}, server {si}. {long_prompt}"), 1).await;
                let pp = p.timings["prompt_per_second"].as_f64().unwrap_or(0.0);
                table[si][1].push(pp);
                for (k, n) in [(2, 4usize), (4, 8usize)] {
                    let t0 = Instant::now();
                    let runs = join_all((0..n).map(|i| {
                        let c = c.clone();
                        let prompt = format!("Story number {i}: once upon a time");
                        async move { stream(&c, s, &prompt, 64).await }
                    }))
                    .await;
                    let wall = t0.elapsed().as_secs_f64();
                    let tokens: f64 = runs.iter().map(|r| r.completion_tokens).sum();
                    table[si][k].push(tokens / wall);
                    let mut ttfts: Vec<f64> = runs.iter().map(|r| r.ttft.as_secs_f64() * 1e3).collect();
                    table[si][k + 1].push(median(&mut ttfts).0);
                }
            }
            eprintln!("round {} of {rounds} done", round + 1);
        }
        println!("engine vs llama-server: {rounds} interleaved rounds, {THREADS} threads, {SLOTS} slots x {CTX_PER_SLOT} tokens, gemma template");
        print!("{:<28}", "");
        for n in &names {
            print!(" {n:>26}");
        }
        println!();
        for (mi, m) in metrics.iter().enumerate() {
            print!("{m:<28}");
            for row in &table {
                let (med, lo, hi) = median(&mut row[mi].clone());
                print!(" {:>26}", format!("{med:.1} ({lo:.1}..{hi:.1})"));
            }
            println!();
        }
        let size = std::fs::metadata(model).map(|m| m.len() as f64 / 1048576.0).unwrap_or(0.0);
        // KV cache: 18 layers x 1 KV head x 256 dims x (K+V) x f16 per token for this model.
        let kv = (SLOTS * CTX_PER_SLOT) as f64 * 18.0 * 256.0 * 2.0 * 2.0 / 1048576.0;
        for s in &servers {
            println!("{:<14} resident {:.0} MB (model file {:.0} MB + KV {:.0} MB = {:.0} MB)", s.name, rss_mb(s.child.id()), size, kv, size + kv);
        }
        for s in &mut servers {
            let _ = s.child.kill();
        }
    });
}

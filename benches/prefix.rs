//! Reuse before recompute, measured: time to first token for a chat request whose
//! ~1,000-token system prompt is cached against the same request cold, and the TTFT of a
//! 20-turn conversation at turn 20 against turn 1. tollgate's prefix cache against
//! llama-server's `cache_prompt` (its slots keep the last prompt), same GGUF, threads,
//! Gemma's template (llama.cpp's built-in `gemma`; llama-server gets it as
//! `benches/gemma.jinja`, since its `--chat-template gemma` renders a 3-token prompt in this
//! build), full sliding-window KV (`--swa-full`), interleaved rounds.
//!
//! tollgate runs twice: as configured by default and with `deterministic = true` (a Q8_0 KV
//! cache: batch-invariant attention), so the cost of that switch is measured in the same run.
//!
//! `cargo bench --bench prefix` after `scripts/setup.sh --llama-server` and
//! `cargo build --release`.
#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests and benches: a panic is the report

mod support;

use std::time::{Duration, Instant};

use support::{median, wait_ready, Server};

use serde_json::{json, Value};

fn start_tollgate(name: &'static str, model: &str, dir: &std::path::Path, extra: &str) -> Server {
    support::start_tollgate_as(
        name,
        dir,
        &format!("[[alias]]\nname = \"gemma\"\n[[alias.deployment]]\nname = \"local\"\nkind = \"local\"\npath = \"{model}\"\ncontext = 4096\nparallel = 4\nthreads = 2\nchat_template = \"gemma\"\nprefix_cache_tokens = 16384\nprefix_cache_entries = 16\n{extra}"),
    )
}

fn start_llama_server(model: &str) -> Server {
    support::start_llama_server(model, &["-t", "2", "-tb", "2", "-np", "4", "-c", "16384", "--swa-full"])
}

/// TTFT of one streamed chat request (first `data:` event with content) and its reply.
async fn ttft(c: &reqwest::Client, s: &Server, messages: &Value, max_tokens: u32) -> (f64, String) {
    let (t, reply, _) = ttft_cached(c, s, messages, max_tokens).await;
    (t, reply)
}

/// TTFT, reply, and (cached, prompt) tokens from the usage chunk.
async fn ttft_cached(c: &reqwest::Client, s: &Server, messages: &Value, max_tokens: u32) -> (f64, String, (u64, u64)) {
    let body = json!({"model": "gemma", "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": true,
                      "cache_prompt": true, "stream_options": {"include_usage": true}});
    let t0 = Instant::now();
    let mut r = support::post(c, s, "/v1/chat/completions", &body).await;
    assert!(r.status().is_success(), "{}: {}", s.name, r.status());
    let (mut first, mut buf) = (None, String::new());
    while let Some(chunk) = r.chunk().await.unwrap() {
        let t = String::from_utf8_lossy(&chunk);
        if first.is_none() && t.contains("\"content\":\"") && !t.contains("\"content\":\"\"") {
            first = Some(t0.elapsed());
        }
        buf.push_str(&t);
    }
    let events: Vec<Value> = buf
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    let reply: String = events.iter().filter_map(|v| v["choices"][0]["delta"]["content"].as_str()).collect();
    let usage = events.iter().rev().find(|v| v["usage"].is_object()).map(|v| {
        let u = &v["usage"];
        (u["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0), u["prompt_tokens"].as_u64().unwrap_or(0))
    });
    (first.unwrap_or(t0.elapsed()).as_secs_f64() * 1e3, reply, usage.unwrap_or_default())
}

/// One of eight ~300-token system prompts, different from its first words.
fn rotating(k: usize) -> String {
    let mut s = format!("Desk {k} of the city hall. ");
    for i in 0..14 {
        s.push_str(&format!("Rule {i} of desk {k}: explain forms, fees and opening hours in plain words. "));
    }
    s
}

fn system(round: usize) -> String {
    // About 1,000 tokens, different in every round (its first words), so the cold run is cold.
    let mut s = format!("Session {round}. You are the assistant of a public library. ");
    for i in 0..62 {
        s.push_str(&format!("Rule {i}: answer questions about books, opening hours and membership politely. "));
    }
    s
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let model = std::env::var("TOLLGATE_TEST_MODEL").expect("TOLLGATE_TEST_MODEL (scripts/setup.sh)");
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let (dir, dir_det) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let c = reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(1)).build().unwrap();
        let mut servers = vec![
            start_tollgate("tollgate", &model, dir.path(), ""),
            start_tollgate("tollgate deterministic", &model, dir_det.path(), "deterministic = true\n"),
            start_llama_server(&model),
        ];
        for s in &servers {
            wait_ready(&c, s).await;
        }
        // [server][metric]: cold, warm, turn 1, turn 20, rotation TTFT, rotation hit rate
        let mut m = vec![vec![Vec::new(); 6]; servers.len()];
        for round in 0..rounds {
            for (si, s) in servers.iter().enumerate() {
                let sys = system(round * 10 + si);
                let q = |u: &str| json!([{"role": "system", "content": sys}, {"role": "user", "content": u}]);
                m[si][0].push(ttft(&c, s, &q("When do you open?"), 1).await.0);
                m[si][1].push(ttft(&c, s, &q("Can I renew a book?"), 1).await.0);
                // A conversation: every turn resends all the turns before it.
                let mut msgs = vec![json!({"role": "system", "content": format!("Conversation {round}-{si}. You are a helpful librarian.")})];
                for turn in 1..=20 {
                    msgs.push(json!({"role": "user", "content": format!("Question {turn}: tell me about shelf {turn}.")}));
                    let (t, reply) = ttft(&c, s, &Value::Array(msgs.clone()), 24).await;
                    if turn == 1 {
                        m[si][2].push(t);
                    }
                    if turn == 20 {
                        m[si][3].push(t);
                    }
                    msgs.push(json!({"role": "assistant", "content": reply}));
                }
                // Eight system prompts rotating over four slots: 8 x 3 requests in turn; the
                // first pass fills, the next two measure.
                let (mut ttfts, mut hits, mut n) = (Vec::new(), 0, 0);
                for pass in 0..3 {
                    for k in 0..8 {
                        let q = json!([{"role": "system", "content": format!("Round {round}. {}", rotating(k))}, {"role": "user", "content": format!("Question {pass}.")}]);
                        let (t, _, (cached, prompt)) = ttft_cached(&c, s, &q, 1).await;
                        if pass > 0 {
                            ttfts.push(t);
                            n += 1;
                            hits += usize::from(cached * 2 >= prompt);
                        }
                    }
                }
                m[si][4].push(median(&mut ttfts).0);
                m[si][5].push(hits as f64 / n as f64 * 100.0);
            }
            eprintln!("round {} of {rounds} done", round + 1);
        }
        println!("prefix reuse: {rounds} interleaved rounds; TTFT in ms, median (min..max)");
        let labels = [
            "cold 1,000-token system prompt",
            "same system prompt, cached",
            "conversation turn 1",
            "conversation turn 20",
            "8 prompts over 4 slots: TTFT",
            "8 prompts over 4 slots: hit %",
        ];
        print!("{:<34}", "");
        for s in &servers {
            print!(" {:>24}", s.name);
        }
        println!();
        for (k, l) in labels.iter().enumerate() {
            print!("{l:<34}");
            for row in &m {
                let (a, b, c) = median(&mut row[k].clone());
                print!(" {:>24}", format!("{a:.0} ({b:.0}..{c:.0})"));
            }
            println!();
        }
        for (si, s) in servers.iter().enumerate() {
            let cold = median(&mut m[si][0].clone()).0;
            let warm = median(&mut m[si][1].clone()).0;
            let t1 = median(&mut m[si][2].clone()).0;
            let t20 = median(&mut m[si][3].clone()).0;
            println!("{}: cached/cold speed-up {:.1}x; turn 20 / turn 1 = {:.2}", s.name, cold / warm, t20 / t1);
        }
        for s in &mut servers {
            let _ = s.child.kill();
        }
    });
}

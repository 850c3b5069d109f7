//! A stored conversation on the engine, measured: the time to first token of a 20-turn
//! Responses conversation chained by `previous_response_id` (each turn sends only its new
//! question; the gateway continues the stored history in the chain's engine session), at
//! turn 20 against turn 1; beside it, turn 20 of a stateless conversation (`store: false`,
//! the whole history resent as input items every turn) and of the same conversation as chat
//! completions. Each round runs the three, with their own questions; one tollgate on the
//! test GGUF with Gemma's built-in template.
//!
//! `cargo bench --bench responses` after `scripts/setup.sh` and `cargo build --release`.
#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests and benches: a panic is the report

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{median, wait_ready, Server};

const TURNS: usize = 20;

/// TTFT (the first `response.output_text.delta` with text) and the completed response.
async fn ttft(c: &reqwest::Client, s: &Server, body: &Value) -> (f64, Value) {
    let t0 = Instant::now();
    let mut r = support::post(c, s, "/v1/responses", body).await;
    assert!(r.status().is_success(), "{}", r.status());
    let (mut first, mut buf) = (None, String::new());
    while let Some(chunk) = r.chunk().await.unwrap() {
        let t = String::from_utf8_lossy(&chunk);
        if first.is_none() && t.contains("response.output_text.delta") {
            first = Some(t0.elapsed());
        }
        buf.push_str(&t);
    }
    let done = buf
        .split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|e| e["type"] == "response.completed" || e["type"] == "response.incomplete")
        .expect("the stream completed");
    (first.unwrap_or_else(|| t0.elapsed()).as_secs_f64() * 1000.0, done["response"].clone())
}

/// TTFT of a streamed chat completion, and its text.
async fn chat_ttft(c: &reqwest::Client, s: &Server, messages: &[Value]) -> (f64, String) {
    let body = json!({"model": "gemma", "messages": messages, "max_tokens": 8, "temperature": 0, "stream": true});
    let t0 = Instant::now();
    let mut r = support::post(c, s, "/v1/chat/completions", &body).await;
    let (mut first, mut buf) = (None, String::new());
    while let Some(chunk) = r.chunk().await.unwrap() {
        let t = String::from_utf8_lossy(&chunk);
        if first.is_none() && t.contains("\"content\":\"") && !t.contains("\"content\":\"\"") {
            first = Some(t0.elapsed());
        }
        buf.push_str(&t);
    }
    let text = buf
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    (first.unwrap_or_else(|| t0.elapsed()).as_secs_f64() * 1000.0, text)
}

/// The text of a response object's message items.
fn output_text(r: &Value) -> String {
    r["output"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| o["type"] == "message")
        .flat_map(|o| o["content"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["text"].as_str().map(str::to_owned))
        .collect()
}

fn question(round: usize, turn: usize) -> String {
    format!(
        "Round {round}, question {turn}: describe shelf {turn} of the library in the east wing, its books, \
         its readers and the light from the tall windows in the afternoon."
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let model = std::env::var("TOLLGATE_TEST_MODEL").expect("TOLLGATE_TEST_MODEL (scripts/setup.sh)");
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let c = reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(1)).build().unwrap();
        let s = support::start_tollgate_as(
            "tollgate",
            dir.path(),
            &format!("[[alias]]\nname = \"gemma\"\n[[alias.deployment]]\nname = \"local\"\nkind = \"local\"\npath = \"{model}\"\ncontext = 8192\nparallel = 4\nthreads = 2\nchat_template = \"gemma\"\n"),
        );
        wait_ready(&c, &s).await;
        // turn 1 and turn 20 chained, turn 20 stateless, turn 20 as chat: three conversations
        // per round, each with its own questions (so that none reuses another's KV).
        let mut m = vec![Vec::new(); 4];
        let (mut prompt_tokens, mut cached_tokens) = (0, 0);
        for round in 0..rounds {
            // Chained: each turn sends only its question.
            let mut prev: Option<String> = None;
            for turn in 1..=TURNS {
                let mut body = json!({"model": "gemma", "input": question(3 * round, turn), "max_output_tokens": 8,
                    "temperature": 0, "stream": true});
                if let Some(p) = &prev {
                    body["previous_response_id"] = json!(p);
                }
                let (t, r) = ttft(&c, &s, &body).await;
                if turn == 1 {
                    m[0].push(t);
                }
                if turn == TURNS {
                    m[1].push(t);
                    prompt_tokens = r["usage"]["input_tokens"].as_u64().unwrap_or(0);
                    cached_tokens = r["usage"]["input_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0);
                }
                prev = r["id"].as_str().map(str::to_owned);
            }
            // Stateless: every turn resends the whole history as input items.
            let mut items: Vec<Value> = Vec::new();
            for turn in 1..=TURNS {
                items.push(json!({"role": "user", "content": question(3 * round + 1, turn)}));
                let body = json!({"model": "gemma", "input": items, "max_output_tokens": 8, "temperature": 0,
                    "stream": true, "store": false});
                let (t, r) = ttft(&c, &s, &body).await;
                if turn == TURNS {
                    m[2].push(t);
                }
                items.push(json!({"role": "assistant", "content": output_text(&r)}));
            }
            // The same as chat completions.
            let mut chat: Vec<Value> = Vec::new();
            for turn in 1..=TURNS {
                chat.push(json!({"role": "user", "content": question(3 * round + 2, turn)}));
                let (t, text) = chat_ttft(&c, &s, &chat).await;
                if turn == TURNS {
                    m[3].push(t);
                }
                chat.push(json!({"role": "assistant", "content": text}));
            }
        }
        let names = ["turn 1 (chained)", "turn 20 (chained)", "turn 20 (stateless)", "turn 20 (chat)"];
        println!(
            "{rounds} rounds, {TURNS} turns; chained turn 20: {prompt_tokens} prompt tokens, {cached_tokens} of them from \
             the KV ({} prefilled); TTFT ms (median, min, max):",
            prompt_tokens - cached_tokens
        );
        let mut med = Vec::new();
        for (n, v) in names.iter().zip(m.iter_mut()) {
            let (md, lo, hi) = median(v);
            med.push(md);
            println!("  {n:<22} {md:8.1} {lo:8.1} {hi:8.1}");
        }
        println!("chained turn 20 / turn 1 = {:.2}; stateless turn 20 / chained turn 20 = {:.2}", med[1] / med[0], med[2] / med[1]);
    });
}

//! Constrained decoding and `n` on the embedded engine, beside llama-server in the same run
//! (same GGUF, threads, slots, Gemma's template; interleaved rounds, the median with its
//! spread):
//! - generation tokens/s of a `json_schema` request (a 20-field object) and of a
//!   `tool_choice: "required"` request, against the same chat request unconstrained (its
//!   `ignore_eos` run of the same length), and the ratio to it (target: at least 85%, and no
//!   worse a ratio than llama-server's);
//! - the time to turn that 20-field schema into a grammar and compile it, in this process
//!   (llama.cpp's converter and grammar parser with the model's vocabulary), and what a request
//!   pays for it once the gateway has it cached (the second request with the same schema);
//! - `n = 4` against `n = 1` and against four separate requests sent together: time to first
//!   token (target: `n = 4` within 1.2x of `n = 1`, the prompt being prefilled once).
//!
//! `cargo bench --bench constrained` after `scripts/setup.sh --llama-server` and
//! `cargo build --release`.
#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests and benches: a panic is the report

mod support;

use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::{json, Value};
use support::{median, wait_ready, Server};

const THREADS: &str = "2";
const SLOTS: usize = 4;
const CTX_PER_SLOT: usize = 2048;

/// A typical 20-field record, strings bounded (a base model may otherwise never close one).
fn schema20() -> Value {
    let mut props = serde_json::Map::new();
    let kinds = ["string", "integer", "boolean", "enum"];
    for i in 0..20 {
        let v = match kinds[i % 4] {
            "string" => json!({"type": "string", "maxLength": 12}),
            "integer" => json!({"type": "integer", "minimum": 0, "maximum": 1000}),
            "boolean" => json!({"type": "boolean"}),
            _ => json!({"type": "string", "enum": ["red", "green", "blue"]}),
        };
        props.insert(format!("field_{i:02}_name"), v);
    }
    let required: Vec<String> = props.keys().cloned().collect();
    json!({"type": "object", "properties": props, "required": required, "additionalProperties": false})
}

fn weather_tool() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 24}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"], "additionalProperties": false}}}])
}

struct Gen {
    tokens_per_s: f64,
    completion_tokens: f64,
}

async fn chat(c: &reqwest::Client, s: &Server, extra: Value, max_tokens: u32) -> Gen {
    let mut body = json!({"model": "gemma", "messages": [{"role": "user", "content": "Describe a customer record."}],
                          "max_tokens": max_tokens, "temperature": 0, "cache_prompt": false});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let r = support::post(c, s, "/v1/chat/completions", &body).await;
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert!(status.is_success(), "{}: {v}", s.name);
    Gen {
        tokens_per_s: v["timings"]["predicted_per_second"].as_f64().unwrap_or(0.0),
        completion_tokens: v["usage"]["completion_tokens"].as_f64().unwrap_or(0.0),
    }
}

/// Time to the first streamed content of a chat request with `n` choices.
async fn ttft(c: &reqwest::Client, s: &Server, prompt: &str, n: u32) -> Duration {
    let body = json!({"model": "gemma", "messages": [{"role": "user", "content": prompt}], "max_tokens": 4,
                      "temperature": 0, "n": n, "stream": true, "cache_prompt": false});
    let t0 = Instant::now();
    let mut r = support::post(c, s, "/v1/chat/completions", &body).await;
    assert!(r.status().is_success(), "{}: {}", s.name, r.status());
    let mut first = None;
    while let Some(chunk) = r.chunk().await.unwrap() {
        let text = String::from_utf8_lossy(&chunk);
        if first.is_none() && text.contains("\"content\":\"") && !text.contains("\"content\":\"\"") {
            first = Some(t0.elapsed());
        }
    }
    first.unwrap_or_else(|| t0.elapsed())
}

/// The 20-field schema to a compiled grammar, in this process: (convert, compile) ms.
fn grammar_build_ms(model_path: &str) -> (f64, f64) {
    use llama_cpp_2::model::params::LlamaModelParams;
    use llama_cpp_2::model::LlamaModel;
    let backend = tollgate::engine::llama_backend().unwrap();
    let model = LlamaModel::load_from_file(backend, model_path, &LlamaModelParams::default()).unwrap();
    let c = tollgate::chat::tools::Constraint {
        schema: schema20(),
        prefix: String::new(),
        suffix: String::new(),
        repeat: false,
        lazy_triggers: Vec::new(),
    };
    let (mut conv, mut comp) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let t0 = Instant::now();
        let g = tollgate::engine::grammar::gbnf(&c, "response_format").unwrap();
        conv.push(t0.elapsed().as_secs_f64() * 1e3);
        let t1 = Instant::now();
        drop(llama_cpp_2::sampling::LlamaSampler::grammar(&model, &g, "root").unwrap());
        comp.push(t1.elapsed().as_secs_f64() * 1e3);
    }
    (median(&mut conv).0, median(&mut comp).0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let model = std::env::var("TOLLGATE_TEST_MODEL").expect("TOLLGATE_TEST_MODEL (scripts/setup.sh)");
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let (convert_ms, compile_ms) = grammar_build_ms(&model);
    let dir = tempfile::tempdir().unwrap();
    let model: &'static str = Box::leak(model.into_boxed_str());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let c = reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(1)).build().unwrap();
        let (np, ctx) = (SLOTS.to_string(), (SLOTS * CTX_PER_SLOT).to_string());
        let mut servers = vec![
            support::start_tollgate_as("tollgate", dir.path(), &format!(
                "[[alias]]\nname = \"gemma\"\n[[alias.deployment]]\nname = \"local\"\nkind = \"local\"\npath = \"{model}\"\ncontext = {CTX_PER_SLOT}\nparallel = {SLOTS}\nthreads = {THREADS}\nbatch = 512\nchat_template = \"gemma\"\n")),
            support::start_llama_server(model, &["-t", THREADS, "-tb", THREADS, "-np", &np, "-c", &ctx, "-b", "512"]),
        ];
        for s in &servers {
            wait_ready(&c, s).await;
            chat(&c, s, json!({}), 4).await;
        }
        let rf = json!({"response_format": {"type": "json_schema", "json_schema": {"name": "record", "schema": schema20(), "strict": true}}});
        let tools = json!({"tools": weather_tool(), "tool_choice": "required", "parallel_tool_calls": false});
        // The first request with the schema pays for its grammar; the next finds it cached.
        let mut first_cost = Vec::new();
        for s in &servers {
            let t0 = Instant::now();
            let mut fresh = rf.clone();
            fresh["response_format"]["json_schema"]["schema"]["description"] = json!(format!("fresh {}", s.name));
            chat(&c, s, fresh.clone(), 1).await;
            let first = t0.elapsed();
            let t1 = Instant::now();
            chat(&c, s, fresh, 1).await;
            first_cost.push((first.as_secs_f64() - t1.elapsed().as_secs_f64()) * 1e3);
        }
        let metrics = ["plain gen tok/s", "json_schema gen tok/s", "json_schema / plain", "tools gen tok/s", "tools / plain",
                       "TTFT ms n=1", "TTFT ms n=4", "TTFT n=4 / n=1", "TTFT ms 4 requests (max)"];
        let mut table: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); metrics.len()]; servers.len()];
        for round in 0..rounds {
            for (si, s) in servers.iter().enumerate() {
                let js = chat(&c, s, rf.clone(), 400).await;
                let tl = chat(&c, s, tools.clone(), 120).await;
                // The plain run is as long as the constrained ones, so the KV length matches.
                let n = js.completion_tokens.max(8.0) as u32;
                let plain = chat(&c, s, json!({"ignore_eos": true}), n).await;
                table[si][0].push(plain.tokens_per_s);
                table[si][1].push(js.tokens_per_s);
                table[si][2].push(js.tokens_per_s / plain.tokens_per_s);
                table[si][3].push(tl.tokens_per_s);
                table[si][4].push(tl.tokens_per_s / plain.tokens_per_s);
                let prompt = |k: &str| format!("Round {round} {k} {si}. {}", "The history of the city is long and full of events. ".repeat(25));
                let one = ttft(&c, s, &prompt("one"), 1).await.as_secs_f64() * 1e3;
                table[si][5].push(one);
                if s.name == "tollgate" {
                    let four = ttft(&c, s, &prompt("four"), 4).await.as_secs_f64() * 1e3;
                    table[si][6].push(four);
                    table[si][7].push(four / one);
                }
                let p = prompt("sep");
                let sep = join_all((0..4).map(|i| {
                    let (c, p) = (c.clone(), format!("{i} {p}"));
                    async move { ttft(&c, s, &p, 1).await.as_secs_f64() * 1e3 }
                }))
                .await;
                table[si][8].push(sep.iter().cloned().fold(0.0, f64::max));
            }
            eprintln!("round {} of {rounds} done", round + 1);
        }
        println!("constrained decoding and n: {rounds} interleaved rounds, {THREADS} threads, {SLOTS} slots, gemma template");
        println!("20-field schema -> grammar in process: convert {convert_ms:.2} ms, compile {compile_ms:.2} ms (median of 5)");
        for (s, cost) in servers.iter().zip(&first_cost) {
            println!("{:<14} first request with a new schema costs {cost:.1} ms more than the next (cached)", s.name);
        }
        print!("{:<26}", "");
        for s in &servers {
            print!(" {:>26}", s.name);
        }
        println!();
        for (mi, m) in metrics.iter().enumerate() {
            print!("{m:<26}");
            for row in &table {
                if row[mi].is_empty() {
                    print!(" {:>26}", "(no n > 1)");
                    continue;
                }
                let (med, lo, hi) = median(&mut row[mi].clone());
                print!(" {:>26}", format!("{med:.2} ({lo:.2}..{hi:.2})"));
            }
            println!();
        }
        for s in &mut servers {
            let _ = s.child.kill();
        }
    });
}

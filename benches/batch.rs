//! A batch on the local Gemma model against the engine's best aggregate, and what a batch
//! does to interactive latency.
//!
//! `cargo build --release && cargo bench --bench batch` (needs `TOLLGATE_TEST_MODEL`; `LINES`
//! sets the batch size, default 500). One tollgate with the embedded engine (8 slots, 2
//! threads; batch work may use 7 slots, one is kept for interactive traffic):
//! 1. **direct**: the same `LINES` requests (short prompts, max_tokens 32) sent as interactive
//!    requests, 8 at a time, the engine's best aggregate: generated tokens / wall time;
//! 2. **batch**: the same lines as one batch through `/v1/files` and `/v1/batches`, from
//!    create to completed: generated tokens / wall time;
//! 3. **interactive TTFT**: a short streamed request (max_tokens 1), idle, then while the
//!    batch runs: the median of `PROBES` (default 10) each.
#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests and benches: a panic is the report

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use support::{median, wait_ready, Server};

const SLOTS: usize = 8;

fn body(i: usize) -> Value {
    json!({"model": "gemma", "messages": [{"role": "user", "content": format!("Write a line about the number {i}.")}],
           "max_tokens": 32, "temperature": 0, "ignore_eos": true})
}

/// Time to the first content token of a short streamed chat request.
async fn ttft(c: &reqwest::Client, s: &Server) -> f64 {
    let b =
        json!({"model": "gemma", "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 1, "stream": true});
    let t0 = Instant::now();
    let r = support::post(c, s, "/v1/chat/completions", &b).await;
    let mut stream = r.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        if String::from_utf8_lossy(&chunk).contains("\"content\":\"") {
            break;
        }
    }
    t0.elapsed().as_secs_f64() * 1e3
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let model = std::env::var("TOLLGATE_TEST_MODEL").expect("TOLLGATE_TEST_MODEL (scripts/setup.sh)");
    let lines: usize = std::env::var("LINES").ok().and_then(|s| s.parse().ok()).unwrap_or(500);
    let probes: usize = std::env::var("PROBES").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let c = reqwest::Client::new();
        let s = support::start_tollgate(
            dir.path(),
            &format!("[[alias]]\nname = \"gemma\"\n[[alias.deployment]]\nname = \"local\"\nkind = \"local\"\npath = \"{model}\"\ncontext = 512\nparallel = {SLOTS}\nthreads = 2\nbatch = 512\nqueue_depth = 1024\n"),
        );
        wait_ready(&c, &s).await;
        ttft(&c, &s).await;

        // 1. The engine's best aggregate: the same requests, `SLOTS` at a time.
        let t0 = Instant::now();
        let results: Vec<f64> = futures::stream::iter(0..lines)
            .map(|i| {
                let (c, s) = (&c, &s);
                async move {
                    let v: Value = support::post(c, s, "/v1/chat/completions", &body(i)).await.json().await.unwrap();
                    v["usage"]["completion_tokens"].as_f64().unwrap_or(0.0)
                }
            })
            .buffer_unordered(SLOTS)
            .collect()
            .await;
        let direct_wall = t0.elapsed().as_secs_f64();
        let direct_tokens: f64 = results.iter().sum();
        eprintln!("direct: {direct_tokens} tokens in {direct_wall:.1} s");

        // 3a. Interactive TTFT, idle.
        let mut idle = Vec::new();
        for _ in 0..probes {
            idle.push(ttft(&c, &s).await);
        }

        // 2. The batch.
        let mut input = Vec::new();
        for i in 0..lines {
            let l = json!({"custom_id": format!("l{i}"), "method": "POST", "url": "/v1/chat/completions", "body": body(i)});
            input.extend_from_slice(l.to_string().as_bytes());
            input.push(b'\n');
        }
        let form = reqwest::multipart::Form::new()
            .text("purpose", "batch")
            .part("file", reqwest::multipart::Part::bytes(input).file_name("bench.jsonl"));
        let f: Value = c.post(format!("{}/v1/files", s.base)).multipart(form).send().await.unwrap().json().await.unwrap();
        let t0 = Instant::now();
        let b: Value = c
            .post(format!("{}/v1/batches", s.base))
            .json(&json!({"input_file_id": f["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = b["id"].as_str().unwrap().to_owned();
        // 3b. Interactive TTFT while it runs (probes spread over its first part).
        let mut busy = Vec::new();
        let status = |c: reqwest::Client, url: String| async move {
            c.get(url).send().await.unwrap().json::<Value>().await.unwrap()
        };
        let url = format!("{}/v1/batches/{id}", s.base);
        for _ in 0..probes {
            tokio::time::sleep(Duration::from_millis(500)).await;
            busy.push(ttft(&c, &s).await);
        }
        let done = loop {
            let b = status(c.clone(), url.clone()).await;
            if matches!(b["status"].as_str(), Some("completed" | "failed" | "cancelled" | "expired")) {
                break b;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let batch_wall = t0.elapsed().as_secs_f64();
        let out = c
            .get(format!("{}/v1/files/{}/content", s.base, done["output_file_id"].as_str().unwrap()))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let batch_tokens: f64 = out
            .split(|b| *b == b'\n')
            .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
            .map(|v| v["response"]["body"]["usage"]["completion_tokens"].as_f64().unwrap_or(0.0))
            .sum();
        let (d, bt) = (direct_tokens / direct_wall, batch_tokens / batch_wall);
        let (i, b) = (median(&mut idle), median(&mut busy));
        println!("batch of {lines} lines (max_tokens 32) on the local engine, {SLOTS} slots, 2 threads");
        println!("  direct, {SLOTS} at a time : {d:.1} tokens/s ({direct_tokens} tokens in {direct_wall:.1} s)");
        println!("  as a batch            : {bt:.1} tokens/s ({batch_tokens} tokens in {batch_wall:.1} s) = {:.0}% of direct; status {}", bt / d * 100.0, done["status"]);
        println!("  interactive TTFT idle : p50 {:.0} ms ({:.0}..{:.0})", i.0, i.1, i.2);
        println!("  ... during the batch  : p50 {:.0} ms ({:.0}..{:.0}) = {:.2}x idle", b.0, b.1, b.2, b.0 / i.0);
        let mut s = s;
        let _ = s.child.kill();
    });
}

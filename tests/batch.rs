//! The Batch API end to end against a real llama-server: the whole flow through the OpenAI
//! SDK (files, batches, retrieve, content), input refused with line numbers, cancel keeping
//! partial results, and a `kill -9` of the real binary mid-batch with `tollgate batch run`
//! resuming it, every line exactly once.
#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests and benches: a panic is the report

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_openai::types::{
    BatchCompletionWindow, BatchEndpoint, BatchRequest, BatchStatus, CreateFileRequest, FileInput, FilePurpose,
};
use common::{openai_route, Gateway, OPEN};
use serde_json::{json, Value};

fn route(extra: &str) -> String {
    openai_route(
        "gemma",
        "llama-server",
        &common::llama_server(),
        "gemma",
        &format!("price = {{ input = 100, output = 200, batch_multiplier = 0.5 }}\n{extra}"),
    )
}

/// `n` short chat lines.
fn lines(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        let line = json!({"custom_id": format!("line-{i}"), "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gemma", "messages": [{"role": "user", "content": format!("Count to {i}.")}],
                     "max_tokens": 2, "temperature": 0}});
        out.extend_from_slice(line.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

/// Polls a batch until `done` says so (bounded: a stuck batch fails the test, never hangs it).
async fn wait_for(base: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let b: Value = reqwest::get(format!("{base}/v1/batches/{id}")).await.unwrap().json().await.unwrap();
        if done(&b) {
            return b;
        }
        assert!(Instant::now() < deadline, "the batch did not get there: {b}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn custom_ids(jsonl: &[u8]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for l in jsonl.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_slice(l).unwrap();
        *m.entry(v["custom_id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    m
}

#[tokio::test]
async fn the_sdk_runs_a_batch_end_to_end() {
    let gw = Gateway::start(OPEN, &[("a.toml", &route(""))]).await;
    let client = gw.openai("none");
    let file = client
        .files()
        .create(CreateFileRequest {
            file: FileInput::from_vec_u8("in.jsonl".into(), lines(6)),
            purpose: FilePurpose::Batch,
        })
        .await
        .unwrap();
    assert_eq!(file.filename, "in.jsonl");
    assert_eq!(client.files().retrieve(&file.id).await.unwrap().id, file.id);
    let req = BatchRequest {
        input_file_id: file.id.clone(),
        endpoint: BatchEndpoint::V1ChatCompletions,
        completion_window: BatchCompletionWindow::W24H,
        metadata: None,
    };
    let batch = client.batches().create(req).await.unwrap();
    let done = wait_for(&gw.url(""), &batch.id, |b| b["status"] == "completed").await;
    let b = client.batches().retrieve(&batch.id).await.unwrap();
    assert_eq!(b.status, BatchStatus::Completed, "{done}");
    let counts = b.request_counts.unwrap();
    assert_eq!((counts.total, counts.completed, counts.failed), (6, 6, 0));
    assert!(b.error_file_id.is_none());
    let out = client.files().content(&b.output_file_id.unwrap()).await.unwrap();
    let ids = custom_ids(&out);
    assert_eq!(ids.len(), 6);
    assert!(ids.values().all(|n| *n == 1));
    let first: Value = serde_json::from_slice(out.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(first["response"]["status_code"], 200);
    assert_eq!(first["response"]["body"]["object"], "chat.completion");
    assert!(first["error"].is_null());
    let listed = client.batches().list(&[("limit", "10")]).await.unwrap();
    assert!(listed.data.iter().any(|x| x.id == batch.id));
    // Batch lines reach the ledger with their batch id, priced at the batch rate.
    gw.running.state.accounting.ledger.as_ref().unwrap().flush().await;
    let c = rusqlite::Connection::open(gw.dir.path().join("data/ledger/ledger.sqlite")).unwrap();
    let (n, p, comp, cost): (i64, i64, i64, String) = c
        .query_row(
            "SELECT COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), group_concat(cost_usd, '|') FROM requests WHERE batch_id = ?1",
            [&batch.id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(n, 6);
    let sum: rust_decimal::Decimal = cost.split('|').map(|c| c.parse::<rust_decimal::Decimal>().unwrap()).sum();
    let full = rust_decimal::Decimal::from(p * 100 + comp * 200) / rust_decimal::Decimal::from(1_000_000);
    assert_eq!(sum * rust_decimal::Decimal::from(2), full, "half price");
    // The usage API groups by batch (open mode without an admin key: no key needed).
    let u: Value = reqwest::get(gw.url("/v1/usage?group_by=batch")).await.unwrap().json().await.unwrap();
    let row = u["data"].as_array().unwrap().iter().find(|r| r["batch"] == batch.id.as_str()).unwrap();
    assert_eq!(row["requests"], 6, "{u}");
    assert!(client.files().delete(&file.id).await.unwrap().deleted);
    assert!(client.files().retrieve(&file.id).await.is_err());
}

#[tokio::test]
async fn invalid_input_is_refused_with_line_numbers() {
    let gw = Gateway::start(OPEN, &[("a.toml", &route(""))]).await;
    let mut input = lines(1);
    input.extend_from_slice(b"{not json\n");
    input.extend_from_slice(br#"{"custom_id":"line-0","method":"POST","url":"/v1/chat/completions","body":{"model":"gemma","messages":[{"role":"user","content":"x"}]}}"#);
    input.extend_from_slice(b"\n");
    input.extend_from_slice(
        br#"{"custom_id":"z","method":"POST","url":"/v1/embeddings","body":{"model":"gemma","input":"x"}}"#,
    );
    input.extend_from_slice(b"\n");
    let client = gw.openai("none");
    let file = client
        .files()
        .create(CreateFileRequest {
            file: FileInput::from_vec_u8("bad.jsonl".into(), input),
            purpose: FilePurpose::Batch,
        })
        .await
        .unwrap();
    let req = BatchRequest {
        input_file_id: file.id,
        endpoint: BatchEndpoint::V1ChatCompletions,
        completion_window: BatchCompletionWindow::W24H,
        metadata: None,
    };
    let b = client.batches().create(req).await.unwrap();
    assert_eq!(b.status, BatchStatus::Failed);
    let errs = b.errors.unwrap().data;
    let got: Vec<(Option<u32>, &str)> = errs.iter().map(|e| (e.line, e.code.as_str())).collect();
    assert_eq!(got, vec![(Some(2), "invalid_json_line"), (Some(3), "duplicate_custom_id"), (Some(4), "invalid_url")]);
    // An unknown file is a 404; a request without an endpoint a 400.
    let r = reqwest::Client::new()
        .post(gw.url("/v1/batches"))
        .json(&json!({"input_file_id": "file-nope", "endpoint": "/v1/chat/completions", "completion_window": "24h"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r =
        reqwest::Client::new().post(gw.url("/v1/batches")).json(&json!({"input_file_id": "x"})).send().await.unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn cancel_keeps_the_results_already_made() {
    let gw = Gateway::start(&format!("{OPEN}[batch]\nconcurrency = 1\n"), &[("a.toml", &route(""))]).await;
    let c = reqwest::Client::new();
    let b = gw.create_batch(lines(40)).await;
    let id = b["id"].as_str().unwrap();
    wait_for(&gw.url(""), id, |b| b["request_counts"]["completed"].as_u64() >= Some(2)).await;
    let r: Value = c.post(gw.url(&format!("/v1/batches/{id}/cancel"))).send().await.unwrap().json().await.unwrap();
    assert!(matches!(r["status"].as_str(), Some("cancelling" | "cancelled")), "{r}");
    let b = wait_for(&gw.url(""), id, |b| b["status"] == "cancelled").await;
    let made = b["request_counts"]["completed"].as_u64().unwrap();
    assert!((2..40).contains(&made), "{b}");
    let out =
        c.get(gw.url(&format!("/v1/files/{}/content", b["output_file_id"].as_str().unwrap()))).send().await.unwrap();
    let ids = custom_ids(&out.bytes().await.unwrap());
    assert_eq!(ids.len() as u64, made, "every result made is kept");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_batch_then_batch_run_resumes_with_every_line_once() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("tollgate.toml"), format!("{OPEN}[batch]\nconcurrency = 2\n")).unwrap();
    std::fs::create_dir(d.path().join("routes")).unwrap();
    std::fs::write(d.path().join("routes/a.toml"), route("")).unwrap();
    std::fs::write(d.path().join("in.jsonl"), lines(24)).unwrap();
    let bin = env!("CARGO_BIN_EXE_tollgate");
    let (mut gw, addr) = common::serve_binary(d.path());
    let out = d.path().join("out.jsonl");
    let mut cli = std::process::Command::new(bin)
        .args(["batch", "run"])
        .arg(d.path().join("in.jsonl"))
        .arg("-o")
        .arg(&out)
        .args(["--url", &format!("http://{addr}"), "--quiet"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the batch to be under way, then kill the gateway mid-batch.
    let state = d.path().join("out.jsonl.tollgate-batch");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !state.exists() {
        assert!(Instant::now() < deadline, "the CLI never created the batch");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = serde_json::from_slice::<Value>(&std::fs::read(&state).unwrap()).unwrap()["batch_id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for(&format!("http://{addr}"), &id, |b| b["request_counts"]["completed"].as_u64() >= Some(4)).await;
    gw.kill().unwrap();
    gw.wait().unwrap();
    assert!(!cli.wait().unwrap().success(), "the CLI lost its gateway");

    let (mut gw, addr) = common::serve_binary(d.path());
    let run = std::process::Command::new(bin)
        .args(["batch", "run"])
        .arg(d.path().join("in.jsonl"))
        .arg("-o")
        .arg(&out)
        .args(["--url", &format!("http://{addr}"), "--quiet"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("resuming batch {id}")), "{stderr}");
    let ids = custom_ids(&std::fs::read(&out).unwrap());
    assert_eq!(ids.len(), 24, "every line");
    assert!(ids.values().all(|n| *n == 1), "exactly once: {ids:?}");
    // Lines recorded before the kill did not run again: at most the two in flight did.
    unsafe { libc::kill(gw.id() as i32, libc::SIGTERM) }; // a graceful stop ingests the journal
    gw.wait().unwrap();
    let c = rusqlite::Connection::open(d.path().join("data/ledger/ledger.sqlite")).unwrap();
    let n: i64 = c.query_row("SELECT COUNT(*) FROM requests WHERE batch_id = ?1", [&id], |r| r.get(0)).unwrap();
    assert!((24..=26).contains(&n), "{n} requests ran for 24 lines");
}

//! An Ollama upstream: its native NDJSON API, translated into OpenAI chunks and bodies.
//! The upstream is scripted with Ollama's documented wire format, line for line.
#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests and benches: a panic is the report

mod common;

use common::fake::{End, Fake, Reply};
use common::{sse_data, sse_text, Gateway, OPEN};
use serde_json::{json, Value};

fn route(fake: &Fake) -> String {
    format!("[[alias]]\nname = \"llama\"\n[[alias.deployment]]\nname = \"ollama\"\nkind = \"ollama\"\nbase_url = \"{}\"\nmodel = \"llama3.2:1b\"\n", fake.root())
}

fn line(content: &str) -> String {
    json!({"model": "llama3.2:1b", "created_at": "2026-11-29T21:00:00.000000Z", "message": {"role": "assistant", "content": content}, "done": false}).to_string()
}

fn done(reason: &str) -> String {
    json!({"model": "llama3.2:1b", "created_at": "2026-11-29T21:00:01.000000Z", "message": {"role": "assistant", "content": ""}, "done_reason": reason, "done": true,
           "total_duration": 412000000u64, "load_duration": 1000000, "prompt_eval_count": 26, "prompt_eval_duration": 130000000, "eval_count": 3, "eval_duration": 250000000u64})
    .to_string()
}

#[tokio::test]
async fn chat_streams_are_translated_with_usage_and_finish_reason() {
    let fake =
        Fake::start(vec![Reply::Ndjson(vec![line("Hello"), line(" there"), line("!"), done("length")], End::Done)])
            .await;
    let gw = Gateway::start(OPEN, &[("o.toml", &route(&fake))]).await;
    let body = json!({"model": "llama", "messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}],
                      "max_tokens": 3, "temperature": 0.2, "seed": 7, "stop": ["\n"], "stream": true, "stream_options": {"include_usage": true}});
    let text = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(sse_text(&text), "Hello there!");
    let data = sse_data(&text);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["model"] == "llama"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let finish = chunks.iter().find_map(|c| c["choices"][0]["finish_reason"].as_str()).unwrap();
    assert_eq!(finish, "length");
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(
        (usage["prompt_tokens"].as_u64(), usage["completion_tokens"].as_u64(), usage["total_tokens"].as_u64()),
        (Some(26), Some(3), Some(29))
    );

    let sent = &fake.posts()[0];
    assert_eq!(sent.path, "/api/chat");
    let up = sent.json();
    assert_eq!(up["model"], "llama3.2:1b");
    assert_eq!(up["stream"], true);
    assert_eq!(up["messages"][0]["role"], "system");
    assert_eq!(up["options"]["num_predict"], 3);
    assert_eq!(up["options"]["seed"], 7);
    assert_eq!(up["options"]["stop"], json!(["\n"]));
}

#[tokio::test]
async fn non_streamed_chat_and_generate_become_openai_bodies() {
    let full = json!({"model": "llama3.2:1b", "created_at": "2026-11-29T21:00:01Z", "message": {"role": "assistant", "content": "Hi!"}, "done_reason": "stop", "done": true, "prompt_eval_count": 10, "eval_count": 2}).to_string();
    let gen = json!({"model": "llama3.2:1b", "created_at": "2026-11-29T21:00:01Z", "response": " Paris.", "done": true, "done_reason": "stop", "prompt_eval_count": 4, "eval_count": 2}).to_string();
    let fake = Fake::start(vec![Reply::Status(200, vec![], full), Reply::Status(200, vec![], gen)]).await;
    let gw = Gateway::start(OPEN, &[("o.toml", &route(&fake))]).await;
    let c = reqwest::Client::new();
    let v: Value = c
        .post(gw.url("/v1/chat/completions"))
        .json(&json!({"model": "llama", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "Hi!");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["total_tokens"], 12);
    let v: Value = c
        .post(gw.url("/v1/completions"))
        .json(&json!({"model": "llama", "prompt": "The capital of France is"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["choices"][0]["text"], " Paris.");
    assert_eq!(fake.posts()[1].path, "/api/generate");
}

#[tokio::test]
async fn an_ollama_error_mid_stream_is_an_error_event() {
    let fake = Fake::start(vec![Reply::Ndjson(
        vec![line("Hel"), json!({"error": "model runner crashed"}).to_string()],
        End::Done,
    )])
    .await;
    let gw = Gateway::start(OPEN, &[("o.toml", &route(&fake))]).await;
    let body = json!({"model": "llama", "messages": [{"role": "user", "content": "hi"}], "stream": true});
    let text = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let last: Value = serde_json::from_str(sse_data(&text).last().unwrap()).unwrap();
    assert!(last["error"]["message"].as_str().unwrap().contains("model runner crashed"), "{text}");
}

#[tokio::test]
async fn an_unknown_ollama_model_is_a_404_in_openai_shape() {
    let fake = Fake::start(vec![Reply::Status(
        404,
        vec![],
        json!({"error": "model \"llama3.2:1b\" not found, try pulling it first"}).to_string(),
    )])
    .await;
    let gw = Gateway::start(OPEN, &[("o.toml", &route(&fake))]).await;
    let r = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(&json!({"model": "llama", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("not found"));
}

#[tokio::test]
async fn health_checks_carry_the_deployments_headers() {
    let fake = Fake::start(vec![]).await;
    let gw =
        Gateway::start(OPEN, &[("o.toml", &format!("{}headers = {{ x-gateway-key = \"gw-1\" }}\n", route(&fake)))])
            .await;
    assert_eq!(reqwest::get(gw.url("/ready")).await.unwrap().status(), 200);
    let checks: Vec<_> = fake.requests().into_iter().filter(|c| c.method == "GET").collect();
    assert!(!checks.is_empty(), "/ready checked the upstream");
    for c in &checks {
        assert_eq!((c.path.as_str(), c.header("x-gateway-key")), ("/api/version", Some("gw-1")));
    }
}

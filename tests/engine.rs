#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests and benches: a panic is the report
#![cfg(feature = "engine")]
//! The embedded engine on the real Gemma 3 270M GGUF, through the whole API. One engine
//! is loaded for this test binary and shared by every test (llama.cpp's backend
//! initialises once per process); generations are kept short.

mod common;

use std::sync::{LazyLock, OnceLock};

use common::{sse_data, sse_text, Gateway, OPEN};
use serde_json::{json, Value};

static RT: LazyLock<tokio::runtime::Runtime> =
    LazyLock::new(|| tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap());

fn gw() -> &'static Gateway {
    static GW: OnceLock<Gateway> = OnceLock::new();
    GW.get_or_init(|| {
        let model = common::test_model();
        let route = "[[alias]]\nname = \"gemma\"\n[[alias.deployment]]\nname = \"gemma-local\"\nkind = \"local\"\npath = \"${TOLLGATE_TEST_MODEL}\"\ncontext = 512\nparallel = 8\nthreads = 2\nbatch = 256\nprice = { input = 100, cached_input = 25, output = 200 }\n";
        RT.block_on(Gateway::start_env(OPEN, &[("local.toml", route)], &[("TOLLGATE_TEST_MODEL", model.to_str().unwrap())]))
    })
}

async fn post(path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new().post(gw().url(path)).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn post_stream(path: &str, body: Value) -> String {
    let r = reqwest::Client::new().post(gw().url(path)).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    r.text().await.unwrap()
}

fn chat(content: &str, max_tokens: u32) -> Value {
    json!({"model": "gemma", "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0})
}

#[test]
fn chat_and_completions_answer_with_exact_usage() {
    gw();
    RT.block_on(async {
        let (s, v) = post("/v1/chat/completions", chat("Name a colour.", 8)).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "gemma");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        let u = &v["usage"];
        assert!(u["prompt_tokens"].as_u64().unwrap() > 5);
        assert_eq!(
            u["total_tokens"].as_u64(),
            Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
        );
        assert!(v["timings"]["predicted_n"].as_u64().is_some(), "llama-server-style timings: {v}");
        let (s, v) = post(
            "/v1/completions",
            json!({"model": "gemma", "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["object"], "text_completion");
        assert!(!v["choices"][0]["text"].as_str().unwrap().is_empty());
    });
}

#[test]
fn max_tokens_ends_with_length_and_exact_completion_tokens() {
    gw();
    RT.block_on(async {
        let mut body =
            json!({"model": "gemma", "prompt": "One, two, three, four,", "max_completion_tokens": 7, "temperature": 0});
        let (_, v) = post("/v1/completions", body.clone()).await;
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["completion_tokens"], 7);
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        let text = post_stream("/v1/completions", body).await;
        let data = sse_data(&text);
        let usage: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
        assert_eq!(usage["usage"]["completion_tokens"], 7);
        let finish: Value = serde_json::from_str(&data[data.len() - 3]).unwrap();
        assert_eq!(finish["choices"][0]["finish_reason"], "length");
    });
}

#[test]
fn streamed_text_equals_the_non_streamed_text_at_temperature_zero() {
    gw();
    RT.block_on(async {
        let (_, full) = post("/v1/chat/completions", chat("Write a short sentence about the sea.", 16)).await;
        let mut body = chat("Write a short sentence about the sea.", 16);
        body["stream"] = json!(true);
        let text = post_stream("/v1/chat/completions", body).await;
        assert_eq!(sse_data(&text).last().map(String::as_str), Some("[DONE]"));
        assert_eq!(sse_text(&text), full["choices"][0]["message"]["content"].as_str().unwrap());
    });
}

#[test]
fn a_stop_string_that_spans_tokens_is_never_emitted() {
    gw();
    RT.block_on(async {
        // Find what the model says, then stop on a string that straddles two of its tokens.
        let base = json!({"model": "gemma", "prompt": "1, 2, 3, 4, 5, 6, 7,", "max_tokens": 10, "temperature": 0});
        let (_, v) = post("/v1/completions", base.clone()).await;
        let full = v["choices"][0]["text"].as_str().unwrap().to_owned();
        assert!(full.contains(" 9,"), "the model counts on: {full:?}");
        let mut body = base.clone();
        body["stop"] = json!([" 9,"]);
        let (_, v) = post("/v1/completions", body.clone()).await;
        let cut = &full[..full.find(" 9,").unwrap()];
        assert_eq!(v["choices"][0]["text"], cut);
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        body["stream"] = json!(true);
        let text = post_stream("/v1/completions", body).await;
        assert_eq!(sse_text(&text), cut);
    });
}

#[test]
fn an_over_long_prompt_is_a_400_with_both_counts() {
    gw();
    RT.block_on(async {
        let long = "word ".repeat(800);
        let (s, v) = post("/v1/chat/completions", chat(&long, 4)).await;
        assert_eq!(s, 400, "{v}");
        assert_eq!(v["error"]["code"], "context_length_exceeded");
        assert_eq!(v["error"]["param"], "messages");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("512"), "{msg}");
    });
}

#[test]
fn unsupported_parameters_are_named_in_a_400() {
    gw();
    RT.block_on(async {
        // What the engine cannot honour, and values out of its range (n past its 8 slots).
        for (k, val) in [
            ("functions", json!([{"name": "f"}])),
            ("audio", json!({"voice": "alloy", "format": "wav"})),
            ("prediction", json!({"type": "content", "content": "x"})),
            ("n", json!(9)),
            ("top_logprobs", json!(3)),
            ("logit_bias", json!({"999999999": 5})),
            ("tool_choice", json!("required")),
            ("response_format", json!({"type": "xml"})),
        ] {
            let mut body = chat("hi", 2);
            body[k] = val;
            let (s, v) = post("/v1/chat/completions", body).await;
            assert_eq!(s, 400, "{k}: {v}");
            assert!(v["error"]["param"].as_str().is_some_and(|p| p.starts_with(k)), "{k}: {v}");
        }
        let (s, v) = post(
            "/v1/completions",
            json!({"model": "gemma", "prompt": "def f(", "suffix": "return x", "max_tokens": 2}),
        )
        .await;
        assert_eq!(s, 400, "{v}");
        assert_eq!(v["error"]["param"], "suffix");
        // An image part would be dropped from the prompt: it is named instead. Text parts are read.
        let parts = json!([{"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]);
        let (s, v) = post(
            "/v1/chat/completions",
            json!({"model": "gemma", "max_tokens": 2,
            "messages": [{"role": "user", "content": parts}]}),
        )
        .await;
        assert_eq!(s, 400, "{v}");
        assert_eq!(
            (v["error"]["param"].as_str(), v["error"]["code"].as_str()),
            (Some("messages[0].content[1]"), Some("unsupported_parameter")),
            "{v}"
        );
        let (s, v) = post(
            "/v1/chat/completions",
            json!({"model": "gemma", "max_tokens": 2,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
    });
}

#[test]
fn non_ascii_text_arrives_intact() {
    gw();
    RT.block_on(async {
        let body = json!({"model": "gemma", "prompt": "Japanese: こんにちは世界。 Emoji: 🎉🎉. Repeat: こんにちは", "max_tokens": 12, "temperature": 0, "stream": true});
        let text = post_stream("/v1/completions", body.clone()).await;
        let streamed = sse_text(&text);
        assert!(!streamed.contains('\u{FFFD}'), "no broken characters: {streamed:?}");
        let mut b = body;
        b["stream"] = json!(false);
        let (_, v) = post("/v1/completions", b).await;
        assert_eq!(streamed, v["choices"][0]["text"].as_str().unwrap());
    });
}

#[test]
fn models_show_the_gguf_facts() {
    gw();
    RT.block_on(async {
        let v: Value = reqwest::get(gw().url("/v1/models/gemma")).await.unwrap().json().await.unwrap();
        let m = &v["deployments"][0]["model"];
        assert_eq!(m["sha256"].as_str().unwrap().len(), 64);
        assert!(m["sha256"].as_str().unwrap().starts_with("a5fd3b62"));
        assert_eq!(m["architecture"], "gemma3");
        assert_eq!(m["quantization"], "Q4_K_M");
        assert_eq!(m["context_trained"], 32768);
        assert_eq!(m["chat_template"], "gemma");
        assert_eq!(m["chat_template_source"], "builtin");
        assert!(m["parameters"].as_u64().unwrap() > 200_000_000);
        assert_eq!(reqwest::get(gw().url("/ready")).await.unwrap().status(), 200);
    });
}

#[test]
fn reused_prompt_tokens_are_priced_as_cached_and_counted_once() {
    gw();
    RT.block_on(async {
        use rust_decimal::Decimal;
        let body = json!({"model": "gemma", "messages": [
            {"role": "system", "content": "You are a careful assistant for a bicycle repair shop. Answer in one short sentence, name the part, and never invent prices."},
            {"role": "user", "content": "What holds the chain?"}], "max_tokens": 3, "temperature": 0});
        let c = reqwest::Client::new();
        let mut last = None;
        // The second call reuses the first one's prompt from the prefix cache.
        for _ in 0..2 {
            let r = c.post(gw().url("/v1/chat/completions")).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let cost: Decimal = r.headers()["x-tollgate-cost-usd"].to_str().unwrap().parse().unwrap();
            let saved: Decimal = r.headers()["x-tollgate-saved-usd"].to_str().unwrap().parse().unwrap();
            let v: Value = r.json().await.unwrap();
            last = Some((cost, saved, v["usage"].clone()));
        }
        let (cost, saved, u) = last.unwrap();
        let p = u["prompt_tokens"].as_u64().unwrap();
        let cached = u["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
        let out = u["completion_tokens"].as_u64().unwrap();
        assert!(cached > 10 && cached < p, "{u}");
        let m = Decimal::from(1_000_000);
        let want = (Decimal::from(p - cached) * Decimal::from(100)
            + Decimal::from(cached) * Decimal::from(25)
            + Decimal::from(out) * Decimal::from(200))
            / m;
        assert_eq!(cost, want, "{u}");
        assert_eq!(saved, Decimal::from(cached) * Decimal::from(75) / m);
    });
}

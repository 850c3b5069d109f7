//! Through tollgate to a real OpenAI-compatible upstream: llama.cpp's llama-server serving
//! the Gemma GGUF (built by scripts/setup.sh), streaming and not, with the official
//! client shapes (async-openai) and raw HTTP where the framing is under test.
#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests and benches: a panic is the report

mod common;

use async_openai::types::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs, CreateCompletionRequestArgs,
};
use common::{openai_route, sse_data, sse_text, Gateway, OPEN};
use futures::StreamExt;
use serde_json::{json, Value};

async fn gateway() -> Gateway {
    let up = common::llama_server();
    Gateway::start(OPEN, &[("a.toml", &openai_route("gemma", "llama-server", &up, "gemma", ""))]).await
}

#[tokio::test]
async fn chat_through_the_gateway_matches_going_direct() {
    let gw = gateway().await;
    let body = json!({"model": "gemma", "messages": [{"role": "user", "content": "Say hello in five words."}], "max_tokens": 12, "temperature": 0});
    let c = reqwest::Client::new();
    let direct: Value = c
        .post(format!("{}/chat/completions", common::llama_server()))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = c.post(gw.url("/v1/chat/completions")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tollgate-deployment"], "llama-server");
    let via: Value = r.json().await.unwrap();
    assert_eq!(via["choices"][0]["message"]["content"], direct["choices"][0]["message"]["content"]);
    assert_eq!(via["usage"]["completion_tokens"], direct["usage"]["completion_tokens"]);
    assert_eq!(via["model"], "gemma");
    assert!(via["timings"].is_object(), "llama-server's own fields pass through");

    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let text = c.post(gw.url("/v1/chat/completions")).json(&sbody).send().await.unwrap().text().await.unwrap();
    assert_eq!(sse_text(&text), direct["choices"][0]["message"]["content"].as_str().unwrap());
    let data = sse_data(&text);
    assert_eq!(data.last().unwrap(), "[DONE]");
    assert!(data.iter().all(|d| !d.contains("\"usage\"")), "no usage chunk the client did not ask for");
    let m = c.get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let completion = direct["usage"]["completion_tokens"].as_u64().unwrap() * 2;
    assert!(
        m.contains(&format!(
            "tollgate_tokens_total{{alias=\"gemma\",deployment=\"llama-server\",kind=\"completion\"}} {completion}"
        )),
        "{m}"
    );
}

#[tokio::test]
async fn the_openai_sdk_streams_chat_and_completions() {
    let gw = gateway().await;
    let client = gw.openai("none");
    let req = CreateChatCompletionRequestArgs::default()
        .model("gemma")
        .max_tokens(8u32)
        .temperature(0.0)
        .messages([ChatCompletionRequestUserMessageArgs::default().content("Name a fruit.").build().unwrap().into()])
        .stream_options(async_openai::types::ChatCompletionStreamOptions { include_usage: true })
        .build()
        .unwrap();
    let mut s = client.chat().create_stream(req).await.unwrap();
    let (mut text, mut usage) = (String::new(), None);
    while let Some(c) = s.next().await {
        let c = c.unwrap();
        assert_eq!(c.model, "gemma");
        usage = usage.or(c.usage);
        for ch in c.choices {
            text.push_str(ch.delta.content.as_deref().unwrap_or(""));
        }
    }
    let usage = usage.expect("the usage chunk the client asked for");
    assert_eq!(usage.completion_tokens, 8);
    assert!(!text.is_empty());
    let req = CreateCompletionRequestArgs::default()
        .model("gemma")
        .prompt("The capital of France is")
        .max_tokens(6u32)
        .temperature(0.0)
        .build()
        .unwrap();
    let r = client.completions().create(req).await.unwrap();
    assert_eq!(r.model, "gemma");
    assert_eq!(r.usage.unwrap().completion_tokens, 6);
}

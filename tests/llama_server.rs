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

/// llama-server speaks the Responses API itself: a `responses = "passthrough"` deployment
/// sends it the client's request, and the answer (whole, and streamed event by event) is
/// llama-server's own, with the alias as its model, recorded with the tokens it reported.
#[tokio::test]
async fn the_responses_api_passes_through_to_llama_servers_own() {
    let up = common::llama_server();
    let route = openai_route("native", "llama-server", &up, "gemma", "responses = \"passthrough\"\n");
    let gw = Gateway::start(OPEN, &[("a.toml", &route)]).await;
    let c = reqwest::Client::new();
    let body = json!({"model": "gemma", "input": "Say hello in five words.", "max_output_tokens": 12,
        "temperature": 0, "store": false});
    let direct: Value = c.post(format!("{up}/responses")).json(&body).send().await.unwrap().json().await.unwrap();
    let mut asked = body.clone();
    asked["model"] = json!("native");
    let r = c.post(gw.url("/v1/responses")).json(&asked).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tollgate-deployment"], "llama-server");
    let via: Value = r.json().await.unwrap();
    assert_eq!((via["object"].as_str(), via["model"].as_str()), (Some("response"), Some("native")), "{via}");
    let text_of = |r: &Value| -> String {
        let parts = r["output"].as_array().unwrap().iter().filter_map(|i| i["content"].as_array()).flatten();
        parts.filter(|p| p["type"] == "output_text").map(|p| p["text"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(text_of(&via), text_of(&direct));
    // llama-server's own usage (its cached part depends on which slot served it).
    for k in ["input_tokens", "output_tokens", "total_tokens"] {
        assert_eq!(via["usage"][k], direct["usage"][k], "{via}");
    }

    asked["stream"] = json!(true);
    let text = c.post(gw.url("/v1/responses")).json(&asked).send().await.unwrap().text().await.unwrap();
    let mut direct_body = body.clone();
    direct_body["stream"] = json!(true);
    let direct_text = c.post(format!("{up}/responses")).json(&direct_body).send().await.unwrap().text().await.unwrap();
    let types = |t: &str| -> Vec<String> {
        sse_data(t)
            .iter()
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .map(|v| v["type"].to_string())
            .collect()
    };
    assert_eq!(types(&text), types(&direct_text), "the events as llama-server sent them:\n{text}");
    assert!(types(&text).last().is_some_and(|t| t == "\"response.completed\""), "{text}");
    let deltas = |t: &str| -> String {
        sse_data(t)
            .iter()
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter(|v| v["type"] == "response.output_text.delta")
            .map(|v| v["delta"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(deltas(&text), deltas(&direct_text));
    let done: Value = serde_json::from_str(sse_data(&text).last().unwrap()).unwrap();
    assert_eq!(done["response"]["model"], "native");

    // Both recorded, with llama-server's token counts.
    let u: Value = c.get(gw.url("/v1/usage?group_by=endpoint")).send().await.unwrap().json().await.unwrap();
    let g = u["data"].as_array().unwrap().iter().find(|g| g["endpoint"] == "responses").unwrap().clone();
    assert_eq!(g["requests"], 2, "{u}");
    let out = direct["usage"]["output_tokens"].as_u64().unwrap();
    assert_eq!(g["completion_tokens"].as_u64(), Some(2 * out), "{u}");
}

#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests and benches: a panic is the report
#![cfg(feature = "engine")]
//! `/v1/embeddings` from a local deployment configured for embeddings (llama.cpp's mean
//! pooling over the Gemma GGUF), through the OpenAI SDK shapes. Its own test binary: an
//! embedding deployment is an engine of its own.

mod common;

use async_openai::types::{CreateEmbeddingRequestArgs, EmbeddingInput};
use common::{Gateway, OPEN};
use serde_json::{json, Value};

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>()
}

#[tokio::test(flavor = "multi_thread")]
async fn local_embeddings_are_served_normalised_and_deterministic() {
    let model = common::test_model();
    let route = "[[alias]]\nname = \"embed\"\n[[alias.deployment]]\nname = \"embed-local\"\nkind = \"local\"\npath = \"${TOLLGATE_TEST_MODEL}\"\nembeddings = true\ncontext = 256\nparallel = 4\nthreads = 2\n";
    let gw = Gateway::start_env(OPEN, &[("e.toml", route)], &[("TOLLGATE_TEST_MODEL", model.to_str().unwrap())]).await;
    let c = reqwest::Client::new();
    let body = json!({"model": "embed", "input": ["The cat sleeps on the sofa.", "A kitten naps on the couch.", "Quarterly tax rates rose sharply.", "The cat sleeps on the sofa."]});
    let v: Value = c.post(gw.url("/v1/embeddings")).json(&body).send().await.unwrap().json().await.unwrap();
    let vecs: Vec<Vec<f64>> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect())
        .collect();
    assert_eq!(vecs.len(), 4);
    assert_eq!(vecs[0].len(), 640, "Gemma 3 270M's embedding width");
    for (i, e) in vecs.iter().enumerate() {
        assert!((cosine(e, e) - 1.0).abs() < 1e-3, "input {i} is unit-length");
        assert_eq!(v["data"][i]["index"], i);
    }
    assert!(cosine(&vecs[0], &vecs[3]) > 0.9999, "the same text, the same vector");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 20);
    assert_eq!(v["model"], "embed");

    // The OpenAI SDK shape, including base64 vectors.
    let client = gw.openai("unused");
    let req = CreateEmbeddingRequestArgs::default()
        .model("embed")
        .input(EmbeddingInput::String("hello world".into()))
        .build()
        .unwrap();
    let r = client.embeddings().create(req).await.unwrap();
    assert_eq!(r.data[0].embedding.len(), 640);
    let b: Value = c
        .post(gw.url("/v1/embeddings"))
        .json(&json!({"model": "embed", "input": "hello world", "encoding_format": "base64"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        b["data"][0]["embedding"].as_str().unwrap().len(),
        (640 * 4usize).div_ceil(3) * 4,
        "640 little-endian f32s"
    );

    // An embedding deployment does not chat, and too long an input is named.
    let r = c
        .post(gw.url("/v1/chat/completions"))
        .json(&json!({"model": "embed", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .post(gw.url("/v1/embeddings"))
        .json(&json!({"model": "embed", "input": "word ".repeat(400)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["param"], "input");
}

#![cfg(feature = "engine")]
//! A client that goes away mid-stream frees its engine slot and KV cells at the next step,
//! so a following burst fills every slot. Its own test binary (its own engine), so that
//! no other test's traffic occupies the slots it counts.

mod common;

use std::time::Duration;

use common::{Gateway, OPEN};
use futures::future::join_all;
use serde_json::{json, Value};

async fn engine_state(gw: &Gateway) -> (u64, u64) {
    let v: Value = reqwest::get(gw.url("/v1/models/gemma")).await.unwrap().json().await.unwrap();
    let m = &v["deployments"][0]["model"];
    (m["active"].as_u64().unwrap(), m["waiting"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disconnected_client_frees_its_slot() {
    let model = common::test_model();
    let route = "[[alias]]\nname = \"gemma\"\n[[alias.deployment]]\nname = \"gemma-local\"\nkind = \"local\"\npath = \"${TOLLGATE_TEST_MODEL}\"\ncontext = 2048\nparallel = 2\nqueue_depth = 2\nthreads = 2\n";
    let gw =
        Gateway::start_env(OPEN, &[("local.toml", route)], &[("TOLLGATE_TEST_MODEL", model.to_str().unwrap())]).await;
    let client = reqwest::Client::new();
    // Two long generations occupy both slots; the clients read one event and leave.
    for _ in 0..2 {
        let mut r = client
            .post(gw.url("/v1/completions"))
            .json(&json!({"model": "gemma", "prompt": "Tell a long story:", "max_tokens": 1500, "stream": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.chunk().await.unwrap();
        drop(r);
    }
    // Unreleased, these slots would stay busy for 1,500 tokens (about 40 s here).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while engine_state(&gw).await != (0, 0) {
        assert!(tokio::time::Instant::now() < deadline, "the slots were not freed: {:?}", engine_state(&gw).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A burst of slots + queue depth is accepted whole and completes.
    let burst = join_all((0..4).map(|i| {
        let client = client.clone();
        let url = gw.url("/v1/completions");
        async move {
            let r = client
                .post(url)
                .json(&json!({"model": "gemma", "prompt": format!("Item {i}:"), "max_tokens": 4, "temperature": 0}))
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap())
        }
    }))
    .await;
    for (s, v) in burst {
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["usage"]["completion_tokens"], 4);
    }
    // One more than slots + queue while they are all busy is refused at once.
    let busy: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            let url = gw.url("/v1/completions");
            tokio::spawn(async move {
                client
                    .post(url)
                    .json(&json!({"model": "gemma", "prompt": "Go:", "max_tokens": 300, "stream": true}))
                    .send()
                    .await
                    .unwrap()
            })
        })
        .collect();
    let held = join_all(busy).await.into_iter().map(Result::unwrap).collect::<Vec<_>>();
    let r = client
        .post(gw.url("/v1/completions"))
        .json(&json!({"model": "gemma", "prompt": "x", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    drop(held);
}

#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests and benches: a panic is the report
#![cfg(feature = "engine")]
//! A batch on the embedded engine, with interactive requests beside it: they keep being
//! answered while the batch runs (batch lines queue below them and leave a slot free), and
//! the batch still finishes every line.

mod common;

use std::time::{Duration, Instant};

use common::{Gateway, OPEN};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn interactive_requests_are_served_while_a_batch_runs() {
    let model = common::test_model();
    let route = "[[alias]]\nname = \"gemma\"\n[[alias.deployment]]\nname = \"gemma-local\"\nkind = \"local\"\npath = \"${TOLLGATE_TEST_MODEL}\"\ncontext = 256\nparallel = 3\nthreads = 2\nbatch = 128\n";
    let gw =
        Gateway::start_env(OPEN, &[("local.toml", route)], &[("TOLLGATE_TEST_MODEL", model.to_str().unwrap())]).await;
    let c = reqwest::Client::new();
    let mut input = Vec::new();
    for i in 0..12 {
        let l = json!({"custom_id": format!("b{i}"), "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": "gemma", "messages": [{"role": "user", "content": format!("Story {i}:")}],
                                "max_tokens": 12, "temperature": 0}});
        input.extend_from_slice(l.to_string().as_bytes());
        input.push(b'\n');
    }
    let b = gw.create_batch(input).await;
    let url = gw.url(&format!("/v1/batches/{}", b["id"].as_str().unwrap()));
    let get = || async { c.get(&url).send().await.unwrap().json::<Value>().await.unwrap() };
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut served_during = 0;
    loop {
        let before = get().await;
        if before["status"] == "completed" {
            break;
        }
        let r = c
            .post(gw.url("/v1/chat/completions"))
            .json(&json!({"model": "gemma", "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 2}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "an interactive request beside the batch");
        let after = get().await;
        if before["status"] == "in_progress" && after["status"] == "in_progress" {
            served_during += 1;
        }
        assert!(Instant::now() < deadline, "the batch did not finish: {after}");
    }
    assert!(served_during >= 1, "no interactive request ran while the batch was in progress");
    let done = get().await;
    assert_eq!(done["request_counts"]["completed"], 12, "{done}");
    assert_eq!(done["request_counts"]["failed"], 0, "{done}");
}

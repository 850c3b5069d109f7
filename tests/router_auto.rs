//! The small-model router (`[alias.router]`) end to end against a real llama-server: easy and
//! hard prompts go where the rules say, every answer explains its route, the saving against
//! always-large is accounted on the real tokens, and a failed or cut small answer escalates.
#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests and benches: a panic is the report

mod common;

use common::{openai_route, Gateway, OPEN};
use rust_decimal::Decimal;
use serde_json::{json, Value};

/// `small` and `large` on the same llama-server (what differs here is the price), and `auto`.
fn routes(small_url: &str, escalate_on_length: bool) -> Vec<(&'static str, String)> {
    let up = common::llama_server();
    vec![
        ("small.toml", openai_route("small", "small-dep", small_url, "gemma", "price = { input = 1, output = 2 }\nmax_retries = 0")),
        ("large.toml", openai_route("large", "large-dep", &up, "gemma", "price = { input = 10, output = 20 }")),
        (
            "auto.toml",
            format!("[[alias]]\nname = \"auto\"\n[alias.router]\nsmall = \"small\"\nlarge = \"large\"\nescalate_on_length = {escalate_on_length}\n"),
        ),
    ]
}

async fn ask(gw: &Gateway, content: &str, max_tokens: u32) -> (reqwest::header::HeaderMap, Value) {
    let body = json!({"model": "auto", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0});
    let r = reqwest::Client::new().post(gw.url("/v1/chat/completions")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    (h, r.json().await.unwrap())
}

#[tokio::test]
async fn easy_goes_small_hard_goes_large_and_the_saving_is_counted() {
    let up = common::llama_server();
    let r = routes(&up, false);
    let files: Vec<(&str, &str)> = r.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let gw = Gateway::start(OPEN, &files).await;

    let (h, v) = ask(&gw, "Hello! How are you today?", 4).await;
    let route = h["x-tollgate-route"].to_str().unwrap();
    assert!(route.starts_with("small;") && route.contains("model=small"), "{route}");
    assert_eq!(h["x-tollgate-deployment"], "small-dep");
    assert_eq!(v["model"], "auto", "clients see the alias they asked for");
    // Saved: what the large model would have cost for the same tokens, minus the small cost.
    let (p, c) = (v["usage"]["prompt_tokens"].as_u64().unwrap(), v["usage"]["completion_tokens"].as_u64().unwrap());
    let saved: Decimal = h["x-tollgate-saved-usd"].to_str().unwrap().parse().unwrap();
    assert_eq!(saved, Decimal::from(9 * p + 18 * c) / Decimal::from(1_000_000));

    let hard = "Prove step by step that the square root of 2 is irrational, then write a Rust function \
                `fn is_prime(n: u64) -> bool` and explain its complexity.";
    let (h, _) = ask(&gw, hard, 4).await;
    let route = h["x-tollgate-route"].to_str().unwrap();
    assert!(route.starts_with("large;") && route.contains("reasons="), "{route}");
    assert_eq!(h["x-tollgate-deployment"], "large-dep");
    assert_eq!(h["x-tollgate-saved-usd"], "0");
}

#[tokio::test]
async fn a_cut_small_answer_escalates_and_both_are_accounted() {
    let up = common::llama_server();
    let r = routes(&up, true);
    let files: Vec<(&str, &str)> = r.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let gw = Gateway::start(OPEN, &files).await;
    // One token: the small model stops at `length`, so the large one is asked.
    let (h, v) = ask(&gw, "Hello! How are you today?", 1).await;
    let route = h["x-tollgate-route"].to_str().unwrap();
    assert!(route.contains("escalated=large"), "{route}");
    assert_eq!(h["x-tollgate-deployment"], "large-dep");
    assert_eq!(v["model"], "auto");
    gw.running.state.accounting.ledger.as_ref().unwrap().flush().await;
    let c = rusqlite::Connection::open(gw.dir.path().join("data/ledger/ledger.sqlite")).unwrap();
    let rows: Vec<(String, Option<String>)> = c
        .prepare("SELECT deployment, error FROM requests ORDER BY started_at_ms, rowid")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows, vec![("small-dep".into(), Some("escalated".into())), ("large-dep".into(), None)]);
}

#[tokio::test]
async fn a_failing_small_model_escalates() {
    // Nothing listens there: the small deployment cannot be reached.
    let dead = format!(
        "http://127.0.0.1:{}/v1",
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    );
    let r = routes(&dead, false);
    let files: Vec<(&str, &str)> = r.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let gw = Gateway::start(OPEN, &files).await;
    let (h, _) = ask(&gw, "Hello! How are you today?", 2).await;
    assert_eq!(h["x-tollgate-deployment"], "large-dep");
    assert!(h["x-tollgate-route"].to_str().unwrap().contains("escalated=large"));
}

/// The router with a classifier prompt (the project's own, `prompts/router-classifier@1.txt`).
fn classified(small_url: &str, timeout_ms: u64) -> Vec<(&'static str, String)> {
    let mut r = routes(small_url, false);
    r[2].1 += &format!("classifier_prompt = \"router-classifier@1\"\nclassifier_timeout_ms = {timeout_ms}\n");
    r
}

fn classifier_prompt() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/prompts/router-classifier@1.txt")).unwrap()
}

#[tokio::test]
async fn the_classifier_asks_the_small_model_first_and_is_accounted() {
    let up = common::llama_server();
    let r = classified(&up, 30_000);
    let files: Vec<(&str, &str)> = r.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let prompt = classifier_prompt();
    let gw = Gateway::start_full(OPEN, &files, &[("router-classifier@1", &prompt)], &[]).await;
    let (h, _) = ask(&gw, "Hello! How are you today?", 2).await;
    let route = h["x-tollgate-route"].to_str().unwrap().to_owned();
    // The test model is a base model: whatever it says, the route must follow it.
    if route.contains("classifier=easy") {
        assert!(route.starts_with("small;") && route.ends_with("model=small"), "{route}");
    } else if route.contains("classifier=hard") {
        assert!(route.starts_with("large;") && route.ends_with("model=large"), "{route}");
    } else {
        assert!(route.contains("classifier=unclear, rules decided"), "{route}");
        assert!(route.starts_with("small;"), "the rules send a greeting small: {route}");
    }
    // The classifier's own call is in the ledger, on the small deployment, with its tokens.
    gw.running.state.accounting.ledger.as_ref().unwrap().flush().await;
    let c = rusqlite::Connection::open(gw.dir.path().join("data/ledger/ledger.sqlite")).unwrap();
    let (dep, prompt_tokens): (String, i64) = c
        .query_row("SELECT deployment, prompt_tokens FROM requests WHERE route = 'classifier'", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(dep, "small-dep");
    assert!(prompt_tokens > 60, "the classifier prompt was sent: {prompt_tokens} tokens");
}

#[tokio::test]
async fn a_classifier_that_does_not_answer_in_time_leaves_the_decision_to_the_rules() {
    // A small model that never answers: the fault a real server will not give on demand.
    let fake = common::fake::Fake::start(vec![]).await;
    let never = std::sync::Arc::new(tokio::sync::Notify::new());
    fake.set_default(common::fake::Reply::Hold(never, Box::new(common::fake::Reply::Fixture("chat"))));
    let r = classified(&fake.base(), 200);
    let files: Vec<(&str, &str)> = r.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let prompt = classifier_prompt();
    let gw = Gateway::start_full(OPEN, &files, &[("router-classifier@1", &prompt)], &[]).await;
    let hard = "Prove step by step that the square root of 2 is irrational, then write a Rust function \
                `fn is_prime(n: u64) -> bool` and explain its complexity.";
    let (h, v) = ask(&gw, hard, 2).await;
    let route = h["x-tollgate-route"].to_str().unwrap();
    assert!(route.starts_with("large;") && route.contains("classifier=timeout, rules decided"), "{route}");
    assert_eq!(h["x-tollgate-deployment"], "large-dep");
    assert!(v["choices"][0]["message"]["content"].is_string());
}

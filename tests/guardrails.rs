//! Guardrails end to end: a scripted upstream records what it received, so each test proves
//! what reached a backend (redacted before it, or nothing at all when blocked), and what the
//! client got back, whole and streamed, in each API's own error shape; the corpus in
//! `tests/data/guardrails/` is sent through the gateway under `block` and under `redact`.
#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests and benches: a panic is the report

mod common;

use common::fake::{chunk, End, Fake, Reply};
use common::{sse_data, sse_text, Gateway, OPEN};
use serde_json::{json, Value};

const AWS: &str = "AKIAIOSFODNN7EXAMPLE";

fn route(alias: &str, base: &str, guardrails: &str) -> String {
    format!(
        "[[alias]]\nname = \"{alias}\"\n{guardrails}\n[[alias.deployment]]\nname = \"up-{alias}\"\nkind = \"openai\"\nbase_url = \"{base}\"\nmodel = \"m\"\n"
    )
}

fn completion(content: &str) -> Reply {
    let body = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}});
    Reply::Status(200, vec![("content-type", "application/json".into())], body.to_string())
}

async fn gateway(default: &str, alias_extra: &str) -> (Fake, Gateway) {
    let fake = Fake::start(vec![]).await;
    fake.set_default(completion("fine"));
    let gw_toml = format!("{OPEN}\n[guardrails]\ndefault = \"{default}\"\ndetectors = {{ email = \"log\" }}\n");
    let routes = [("a.toml", route("chat", &fake.base(), "")), ("b.toml", route("open", &fake.base(), alias_extra))];
    let routes: Vec<(&str, &str)> = routes.iter().map(|(n, r)| (*n, r.as_str())).collect();
    let gw = Gateway::start(&gw_toml, &routes).await;
    (fake, gw)
}

async fn post(gw: &Gateway, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new().post(gw.url(path)).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn redaction_happens_before_the_upstream_and_logged_detectors_only_count() {
    let (fake, gw) = gateway("redact", "").await;
    let text = format!("deploy with {AWS} and tell jane.roe@example.com");
    let (status, body) =
        post(&gw, "/v1/chat/completions", json!({"model": "chat", "messages": [{"role": "user", "content": text}]}))
            .await;
    assert_eq!(status, 200, "{body}");
    let sent = fake.posts()[0].json();
    assert_eq!(
        sent["messages"][0]["content"], "deploy with [REDACTED:aws_access_key_id] and tell jane.roe@example.com",
        "the key is redacted before the upstream; the e-mail (log) passes"
    );
    let m = reqwest::get(gw.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(
        m.contains(
            r#"tollgate_guardrail_hits_total{detector="aws_access_key_id",action="redact",direction="input"} 1"#
        ),
        "{m}"
    );
    assert!(m.contains(r#"tollgate_guardrail_hits_total{detector="email",action="log",direction="input"} 1"#));
}

#[tokio::test]
async fn a_blocked_request_never_reaches_the_upstream_and_each_api_says_so_in_its_shape() {
    let (fake, gw) = gateway("block", "guardrails = { default = \"off\" }").await;
    let content = format!("my key: {AWS}");
    let (status, body) =
        post(&gw, "/v1/chat/completions", json!({"model": "chat", "messages": [{"role": "user", "content": content}]}))
            .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "content_policy_violation");
    assert_eq!(body["error"]["param"], "messages[0].content");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("aws_access_key_id") && msg.contains("at character 8") && !msg.contains(AWS), "{msg}");

    let (status, body) = post(
        &gw,
        "/v1/messages",
        json!({"model": "chat", "max_tokens": 8, "system": "be brief", "messages": [{"role": "user", "content": [{"type": "text", "text": content}]}]}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(body["error"]["message"].as_str().unwrap().contains("messages[0].content[0].text"), "{body}");

    let (status, body) = post(&gw, "/v1/responses", json!({"model": "chat", "input": content})).await;
    assert_eq!((status, &body["error"]["code"]), (400, &json!("content_policy_violation")), "{body}");
    assert!(fake.posts().is_empty(), "nothing blocked reached the upstream");

    // The alias that turns the guardrails off is served as written.
    let (status, _) =
        post(&gw, "/v1/chat/completions", json!({"model": "open", "messages": [{"role": "user", "content": content}]}))
            .await;
    assert_eq!(status, 200);
    assert_eq!(fake.posts()[0].json()["messages"][0]["content"], content);
}

#[tokio::test]
async fn an_answer_is_redacted_whole_and_streamed_with_a_bounded_window() {
    let (fake, gw) = gateway("redact", "").await;
    fake.push(completion(&format!("Your key is {AWS}.")));
    let (status, body) =
        post(&gw, "/v1/chat/completions", json!({"model": "chat", "messages": [{"role": "user", "content": "key?"}]}))
            .await;
    assert_eq!(status, 200);
    assert_eq!(body["choices"][0]["message"]["content"], "Your key is [REDACTED:aws_access_key_id].");

    // A stream of one character per event: the key is split over twenty events.
    let answer = format!("Sure. The key is {AWS} and the card 4111 1111 1111 1111; keep both safe, please.");
    let mut events: Vec<String> = answer.chars().map(|c| chunk(&c.to_string())).collect();
    events.push(
        json!({"choices": [{"finish_reason": "stop", "index": 0, "delta": {}}], "created": 1, "id": "chatcmpl-fake", "model": "up", "object": "chat.completion.chunk"})
            .to_string(),
    );
    fake.push(Reply::Sse(events.clone(), End::Done));
    let r = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(&json!({"model": "chat", "stream": true, "messages": [{"role": "user", "content": "key?"}]}))
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert_eq!(
        sse_text(&text),
        "Sure. The key is [REDACTED:aws_access_key_id] and the card [REDACTED:payment_card]; keep both safe, please."
    );
    // Chunks keep their number, one character each from the upstream: the window a value was
    // held back in is the longest run of chunks that brought the client nothing.
    let data = sse_data(&text);
    assert_eq!(data.len(), events.len() + 1, "one chunk per upstream event, then [DONE]");
    let (mut run, mut window) = (0usize, 0usize);
    for d in &data[..data.len() - 2] {
        let v: Value = serde_json::from_str(d).unwrap();
        match v["choices"][0]["delta"]["content"].as_str() {
            Some("") | None => run += 1,
            Some(_) => run = 0,
        }
        window = window.max(run);
    }
    println!("longest hold: {window} characters (of {} streamed)", answer.chars().count());
    assert!(window >= AWS.len(), "the key was held until it was complete: {window}");
    assert!(window <= 32, "held no more than the value and its last group: {window}");
}

fn corpus() -> Vec<Value> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/guardrails/labelled.jsonl");
    std::fs::read_to_string(dir)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn no_labelled_secret_reaches_a_backend_under_block_and_none_unredacted_under_redact() {
    for default in ["block", "redact"] {
        let fake = Fake::start(vec![]).await;
        fake.set_default(completion("ok"));
        let gw = Gateway::start(
            &format!("{OPEN}\n[guardrails]\ndefault = \"{default}\"\n"),
            &[("a.toml", &route("chat", &fake.base(), ""))],
        )
        .await;
        let items = corpus();
        for item in &items {
            let (status, body) = post(
                &gw,
                "/v1/chat/completions",
                json!({"model": "chat", "messages": [{"role": "user", "content": item["text"]}]}),
            )
            .await;
            let want = if default == "block" { 400 } else { 200 };
            assert_eq!(status, want, "{default}: {} {body}", item["label"]);
        }
        let posts = fake.posts();
        if default == "block" {
            assert!(posts.is_empty(), "a blocked request reached the upstream");
        } else {
            assert_eq!(posts.len(), items.len());
            for (p, item) in posts.iter().zip(&items) {
                let sent = String::from_utf8(p.body.clone()).unwrap();
                let value = item["value"].as_str().unwrap();
                let written = serde_json::to_string(value).unwrap();
                assert!(!sent.contains(written.trim_matches('"')), "{} reached the upstream: {sent}", item["label"]);
                assert!(sent.contains(&format!("[REDACTED:{}]", item["label"].as_str().unwrap())), "{sent}");
            }
        }
    }
}

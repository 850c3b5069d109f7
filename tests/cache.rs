//! The response cache: deterministic requests are answered once upstream, in the shape
//! asked for, per API key, with the client's cache-control honoured, and identical
//! requests in flight are coalesced into one upstream call.
#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests and benches: a panic is the report

mod common;

use std::sync::Arc;

use common::fake::{chunk, End, Fake, Reply};
use common::{openai_route, sse_text, Gateway};
use futures::future::join_all;
use serde_json::{json, Value};

const CACHED: &str = "[cache]\nenabled = true\nttl_secs = 60\n[auth]\n[[auth.keys]]\nname = \"a\"\nkey = \"${KA}\"\naliases = [\"*\"]\n[[auth.keys]]\nname = \"b\"\nkey = \"${KB}\"\naliases = [\"*\"]\n";

async fn gateway(script: Vec<Reply>) -> (Fake, Gateway) {
    let fake = Fake::start(script).await;
    let gw = Gateway::start_env(
        CACHED,
        &[("a.toml", &openai_route("chat", "up", &fake.base(), "m", ""))],
        &[("KA", "key-a"), ("KB", "key-b")],
    )
    .await;
    (fake, gw)
}

fn body(stream: bool, temperature: f64) -> Value {
    json!({"model": "chat", "messages": [{"role": "user", "content": "Say hello in five words."}], "max_tokens": 16, "temperature": temperature, "stream": stream})
}

async fn send(gw: &Gateway, key: &str, b: &Value, cache_control: Option<&str>) -> reqwest::Response {
    let mut rb = reqwest::Client::new().post(gw.url("/v1/chat/completions")).bearer_auth(key).json(b);
    if let Some(cc) = cache_control {
        rb = rb.header("cache-control", cc);
    }
    rb.send().await.unwrap()
}

#[tokio::test]
async fn a_deterministic_request_is_answered_once_in_either_shape() {
    let (fake, gw) = gateway(vec![Reply::Fixture("chat")]).await;
    let r1 = send(&gw, "key-a", &body(false, 0.0), None).await;
    assert_eq!(r1.headers()["x-tollgate-cache"], "miss");
    let v1: Value = r1.json().await.unwrap();
    let r2 = send(&gw, "key-a", &body(false, 0.0), None).await;
    assert_eq!(r2.headers()["x-tollgate-cache"], "hit");
    assert_eq!(r2.headers()["x-tollgate-deployment"], "up");
    let v2: Value = r2.json().await.unwrap();
    assert_eq!(v1, v2, "the same body, with its original usage");
    // A streamed request is answered from the same entry, replayed as SSE.
    let mut streamed = body(true, 0.0);
    streamed["stream_options"] = json!({"include_usage": true});
    let r3 = send(&gw, "key-a", &streamed, None).await;
    assert_eq!(r3.headers()["x-tollgate-cache"], "hit");
    let text = r3.text().await.unwrap();
    assert_eq!(sse_text(&text), v1["choices"][0]["message"]["content"].as_str().unwrap());
    assert!(text.contains("\"completion_tokens\":16") && text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(fake.posts().len(), 1, "one upstream call");
    let m = reqwest::get(gw.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(
        m.contains(r#"tollgate_tokens_total{alias="chat",deployment="up",kind="completion"} 48"#),
        "hits report the original usage: {m}"
    );
}

#[tokio::test]
async fn a_streamed_answer_is_stored_and_served_to_a_plain_request() {
    let (fake, gw) = gateway(vec![Reply::Fixture("chat-stream-usage")]).await;
    let streamed = send(&gw, "key-a", &body(true, 0.0), None).await.text().await.unwrap();
    let r = send(&gw, "key-a", &body(false, 0.0), None).await;
    assert_eq!(r.headers()["x-tollgate-cache"], "hit");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"].as_str().unwrap(), sse_text(&streamed));
    assert_eq!(v["usage"]["completion_tokens"], 16);
    assert_eq!(fake.posts().len(), 1);
}

#[tokio::test]
async fn keys_do_not_share_entries_and_cache_control_is_honoured() {
    let (fake, gw) = gateway(vec![]).await;
    fake.set_default(Reply::Fixture("chat"));
    send(&gw, "key-a", &body(false, 0.0), None).await;
    assert_eq!(
        send(&gw, "key-b", &body(false, 0.0), None).await.headers()["x-tollgate-cache"],
        "miss",
        "another key's entry"
    );
    assert_eq!(send(&gw, "key-a", &body(false, 0.0), Some("no-cache")).await.headers()["x-tollgate-cache"], "miss");
    assert_eq!(fake.posts().len(), 3);
    // no-store: neither looked up nor stored.
    let other = json!({"model": "chat", "messages": [{"role": "user", "content": "Other."}], "temperature": 0});
    send(&gw, "key-a", &other, Some("no-store")).await;
    assert_eq!(send(&gw, "key-a", &other, None).await.headers()["x-tollgate-cache"], "miss");
    // Not deterministic: never cached.
    let r = send(&gw, "key-a", &body(false, 0.7), None).await;
    assert!(r.headers().get("x-tollgate-cache").is_none());
    assert_eq!(fake.posts().len(), 6);
}

#[tokio::test]
async fn identical_requests_in_flight_make_one_upstream_call() {
    let release = Arc::new(tokio::sync::Notify::new());
    let (fake, gw) =
        gateway(vec![Reply::Sse(vec![chunk("Hello"), chunk(" there")], End::Stall(release.clone()))]).await;
    let gw = Arc::new(gw);
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let gw = gw.clone();
            tokio::spawn(async move { send(&gw, "key-a", &body(true, 0.0), None).await.text().await.unwrap() })
        })
        .collect();
    // Wait until the leader's call reached the upstream, then let it finish.
    while fake.posts().is_empty() {
        tokio::task::yield_now().await;
    }
    release.notify_one();
    let texts = join_all(tasks).await;
    for t in texts {
        assert_eq!(sse_text(&t.unwrap()), "Hello there");
    }
    assert_eq!(fake.posts().len(), 1, "coalesced into one upstream call");
}

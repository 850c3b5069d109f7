//! The proxy's cases, compiled into `proxy` (a plain HTTP/1.1 upstream) and `proxy_h2` (the
//! same upstream behind TLS, speaking HTTP/2): every case holds on both wires.

use std::sync::Arc;
use std::time::Duration;

use crate::common::fake::{chunk, End, Fake, Reply};
use crate::common::{openai_route, sse_data, sse_text, upstream, Gateway, OPEN};
use serde_json::{json, Value};

/// A scripted upstream on the wire this test binary exercises.
async fn fake(script: Vec<Reply>) -> Fake {
    Fake::start_on(script, crate::WIRE).await
}

fn chat_body(stream: bool) -> Value {
    json!({"model": "chat", "messages": [{"role": "user", "content": "Say hello in five words."}], "max_tokens": 16, "temperature": 0, "stream": stream})
}

async fn one_upstream(script: Vec<Reply>, extra: &str) -> (Fake, Gateway) {
    let fake = fake(script).await;
    let gw =
        Gateway::start(OPEN, &[("a.toml", &openai_route("chat", "up", &fake.base(), "gemma-upstream", extra))]).await;
    (fake, gw)
}

#[tokio::test]
async fn stream_is_forwarded_event_by_event_with_alias_and_without_injected_usage() {
    let (fake, gw) = one_upstream(vec![Reply::Fixture("chat-stream-usage")], "").await;
    let mut body = chat_body(true);
    body["top_k"] = json!(7);
    body["guided_json"] = json!({"type": "object"});
    let r = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .header("x-request-id", "req-abc")
        .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    assert_eq!(r.headers()["x-tollgate-deployment"], "up");
    assert_eq!(r.headers()["x-request-id"], "req-abc");
    let text = r.text().await.unwrap();
    let data = sse_data(&text);
    assert_eq!(data.last().unwrap(), "[DONE]");
    for d in &data[..data.len() - 1] {
        let v: Value = serde_json::from_str(d).unwrap();
        assert_eq!(v["model"], "chat", "the alias, not the upstream's name");
        assert!(v.get("usage").is_none(), "the client did not ask for usage: {d}");
    }
    assert_eq!(sse_text(&text), "Say hello in five words.<|im_end|>\n<|im_");

    let sent = &fake.posts()[0];
    assert_eq!(sent.path, "/v1/chat/completions");
    let up = sent.json();
    assert_eq!(up["model"], "gemma-upstream");
    assert_eq!(up["stream_options"]["include_usage"], true, "usage is always requested on streams");
    assert_eq!(up["top_k"], 7, "unknown fields pass untouched");
    assert_eq!(up["guided_json"], json!({"type": "object"}));
    assert_eq!(sent.header("x-request-id"), Some("req-abc"));
    assert_eq!(sent.header("traceparent"), Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));

    // The usage the client never saw is still accounted.
    let r = reqwest::get(gw.url("/metrics")).await.unwrap();
    assert_eq!(r.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    let m = r.text().await.unwrap();
    assert!(m.contains(r#"tollgate_tokens_total{alias="chat",deployment="up",kind="completion"} 16"#), "{m}");
    assert!(m.contains(r#"tollgate_tokens_total{alias="chat",deployment="up",kind="prompt"} 29"#), "{m}");
    // Every sample belongs to a family with its HELP and TYPE, the deployments' too.
    let described = |kind: &str| -> std::collections::HashSet<String> {
        m.lines().filter_map(|l| Some(l.strip_prefix(kind)?.split(' ').next()?.to_owned())).collect()
    };
    let (help, typed) = (described("# HELP "), described("# TYPE "));
    assert_eq!(help, typed);
    for l in m.lines().filter(|l| !l.starts_with('#')) {
        let name = l.split(['{', ' ']).next().unwrap();
        let histogram = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s));
        let family = histogram.filter(|f| typed.contains(*f)).unwrap_or(name);
        assert!(typed.contains(family), "{l}: no TYPE in {m}");
    }
    assert!(m.contains("tollgate_deployment_breaker_open{deployment=\"up\"} 0\n"), "{m}");
}

#[tokio::test]
async fn usage_chunk_is_kept_when_the_client_asks() {
    let (_fake, gw) = one_upstream(vec![Reply::Fixture("chat-stream-usage")], "").await;
    let mut body = chat_body(true);
    body["stream_options"] = json!({"include_usage": true});
    let text = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let data = sse_data(&text);
    let usage: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 16);
    assert_eq!(usage["usage"]["prompt_tokens_details"]["cached_tokens"], 24);
}

#[tokio::test]
async fn full_bodies_pass_through_with_their_extra_fields() {
    let (fake, gw) = one_upstream(vec![Reply::Fixture("chat")], "max_tokens_field = \"max_completion_tokens\"").await;
    let mut body = chat_body(false);
    body.as_object_mut().unwrap().remove("max_tokens");
    body["max_completion_tokens"] = json!(16);
    let r = reqwest::Client::new().post(gw.url("/v1/chat/completions")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().await.unwrap();
    // The upstream's bytes, every number spelled as it spelled it, only `model` rewritten.
    let sent = std::fs::read_to_string(crate::common::fake::fixture_dir().join("chat.body")).unwrap();
    let want = sent.replace(r#""model":"gemma-3-270m-q4_k_m.gguf""#, r#""model":"chat""#);
    assert_ne!(want, sent);
    assert_eq!(String::from_utf8_lossy(&bytes), want);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["model"], "chat");
    assert_eq!(v["timings"]["predicted_n"], 16, "fields only full bodies carry survive");
    assert_eq!(v["usage"]["total_tokens"], 45);
    let up = fake.posts()[0].json();
    assert_eq!(up["max_completion_tokens"], 16);
    assert!(up.get("max_tokens").is_none());
    assert!(up.get("stream_options").is_none(), "stream_options only on streamed upstream calls");
}

#[tokio::test]
async fn the_openai_sdk_works_through_the_gateway() {
    use async_openai::types::{ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs};
    use futures::StreamExt;
    let (_fake, gw) = one_upstream(vec![Reply::Fixture("chat"), Reply::Fixture("chat-stream")], "").await;
    let client = gw.openai("unused");
    let req = CreateChatCompletionRequestArgs::default()
        .model("chat")
        .max_tokens(16u32)
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("Say hello in five words.")
            .build()
            .unwrap()
            .into()])
        .build()
        .unwrap();
    let r = client.chat().create(req.clone()).await.unwrap();
    assert_eq!(r.model, "chat");
    assert_eq!(r.choices[0].message.content.as_deref(), Some("Say hello in five words.<|im_end|>\n<|im_"));
    assert_eq!(r.usage.unwrap().completion_tokens, 16);
    let mut s = client.chat().create_stream(req).await.unwrap();
    let mut text = String::new();
    let mut finish = None;
    while let Some(c) = s.next().await {
        let c = c.unwrap();
        for ch in c.choices {
            text.push_str(ch.delta.content.as_deref().unwrap_or(""));
            finish = finish.or(ch.finish_reason);
        }
    }
    assert_eq!(text, "Say hello in five words.<|im_end|>\n<|im_");
    assert!(finish.is_some());
}

#[tokio::test]
async fn a_500_is_retried_then_served() {
    let err = r#"{"error":{"code":500,"message":"boom","type":"server_error"}}"#.to_string();
    let (fake, gw) = one_upstream(vec![Reply::Status(500, vec![], err), Reply::Fixture("chat")], "").await;
    let r = reqwest::Client::new().post(gw.url("/v1/chat/completions")).json(&chat_body(false)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(fake.posts().len(), 2);
}

#[tokio::test]
async fn a_429_is_retried_after_its_retry_after() {
    let err = r#"{"error":{"message":"slow down","type":"rate_limit_error"}}"#.to_string();
    let (fake, gw) = one_upstream(
        vec![Reply::Status(429, vec![("Retry-After", "0".into())], err), Reply::Fixture("chat-stream")],
        "",
    )
    .await;
    let r = reqwest::Client::new().post(gw.url("/v1/chat/completions")).json(&chat_body(true)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    assert_eq!(fake.posts().len(), 2);
}

#[tokio::test]
async fn a_429_with_a_long_retry_after_reaches_the_client() {
    let err = r#"{"error":{"message":"slow down","type":"rate_limit_error","code":"rate_limit_exceeded"}}"#.to_string();
    let (fake, gw) = one_upstream(vec![Reply::Status(429, vec![("Retry-After", "30".into())], err)], "").await;
    let r = reqwest::Client::new().post(gw.url("/v1/chat/completions")).json(&chat_body(false)).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "30");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert_eq!(fake.posts().len(), 1);
}

#[tokio::test]
async fn failures_fall_back_to_the_next_deployment() {
    let bad = fake(vec![]).await;
    let good = fake(vec![Reply::Fixture("chat")]).await;
    let routes = format!(
        "[[alias]]\nname = \"chat\"\n[[alias.deployment]]\nname = \"bad\"\nkind = \"openai\"\n{}model = \"m\"\nmax_retries = 1\n[[alias.deployment]]\nname = \"good\"\nkind = \"openai\"\n{}model = \"m\"\n",
        upstream(&bad.base()),
        upstream(&good.base())
    );
    let gw = Gateway::start(OPEN, &[("a.toml", &routes)]).await;
    let r = reqwest::Client::new().post(gw.url("/v1/chat/completions")).json(&chat_body(false)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tollgate-deployment"], "good");
    assert_eq!(bad.posts().len(), 2, "one try and one retry on the failing deployment");
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let gw = Gateway::start(
        OPEN,
        &[("a.toml", &openai_route("chat", "gone", &format!("http://127.0.0.1:{port}/v1"), "m", "max_retries = 0"))],
    )
    .await;
    let r = reqwest::Client::new().post(gw.url("/v1/chat/completions")).json(&chat_body(false)).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "api_error");
    assert_eq!(v["error"]["code"], "upstream_error");
}

#[tokio::test]
async fn upstream_client_errors_pass_through_normalised_and_are_not_retried() {
    let (fake, gw) = one_upstream(vec![Reply::Fixture("error-no-messages")], "").await;
    let r = reqwest::Client::new().post(gw.url("/v1/chat/completions")).json(&chat_body(false)).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["message"], "'messages' is required");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["code"], Value::Null, "llama-server's numeric code becomes null");
    assert_eq!(fake.posts().len(), 1);
}

#[tokio::test]
async fn a_stall_mid_stream_ends_with_an_error_event_and_closes_upstream() {
    let release = Arc::new(tokio::sync::Notify::new());
    let (fake, gw) = one_upstream(
        vec![Reply::Sse(vec![chunk("Hel"), chunk("lo")], End::Stall(release.clone()))],
        "stall_timeout_ms = 300\nmax_retries = 0",
    )
    .await;
    let text = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(&chat_body(true))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let data = sse_data(&text);
    assert_eq!(sse_text(&text), "Hello");
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_timeout", "{text}");
    assert!(!text.contains("[DONE]"));
    tokio::time::timeout(Duration::from_secs(5), fake.peer_closed.notified())
        .await
        .expect("the upstream request was cancelled");
}

#[tokio::test]
async fn a_cut_connection_ends_with_an_error_event() {
    let (_fake, gw) = one_upstream(vec![Reply::Sse(vec![chunk("Hel")], End::Cut)], "max_retries = 0").await;
    let text = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(&chat_body(true))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let data = sse_data(&text);
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_error", "{text}");
    assert_eq!(sse_text(&text), "Hel");
}

#[tokio::test]
async fn an_in_band_error_reaches_the_client_as_an_openai_error_event() {
    let inband = r#"{"error":{"code":500,"message":"the model crashed","type":"server_error"}}"#.to_string();
    let (_fake, gw) = one_upstream(vec![Reply::Sse(vec![chunk("Hi"), inband], End::Done)], "").await;
    let text = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(&chat_body(true))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let data = sse_data(&text);
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["message"], "the model crashed");
    assert!(last["error"]["type"].is_string());
    let m = reqwest::get(gw.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(
        m.contains(r#"tollgate_requests_total{alias="chat",deployment="up",status="502"} 1"#),
        "counted as a failure: {m}"
    );
}

#[tokio::test]
async fn an_in_band_error_before_the_first_token_is_retried() {
    let inband = r#"{"error":{"code":503,"message":"loading","type":"unavailable_error"}}"#.to_string();
    let (fake, gw) = one_upstream(vec![Reply::Sse(vec![inband], End::Done), Reply::Fixture("chat-stream")], "").await;
    let text = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(&chat_body(true))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(sse_text(&text), "Say hello in five words.<|im_end|>\n<|im_");
    assert_eq!(fake.posts().len(), 2);
}

#[tokio::test]
async fn every_deployment_full_is_an_immediate_429() {
    let release = Arc::new(tokio::sync::Notify::new());
    let (_fake, gw) =
        one_upstream(vec![Reply::Sse(vec![chunk("a")], End::Stall(release.clone()))], "max_concurrency = 1").await;
    let client = reqwest::Client::new();
    let held = client.post(gw.url("/v1/chat/completions")).json(&chat_body(true)).send().await.unwrap();
    assert_eq!(held.status(), 200);
    let r = client.post(gw.url("/v1/chat/completions")).json(&chat_body(false)).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    release.notify_one();
    drop(held);
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_the_upstream_request() {
    let release = Arc::new(tokio::sync::Notify::new());
    let (fake, gw) = one_upstream(vec![Reply::Sse(vec![chunk("a")], End::Stall(release))], "").await;
    let mut r =
        reqwest::Client::new().post(gw.url("/v1/chat/completions")).json(&chat_body(true)).send().await.unwrap();
    let first = r.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    drop(r);
    tokio::time::timeout(Duration::from_secs(5), fake.peer_closed.notified())
        .await
        .expect("the upstream connection was closed");
}

#[tokio::test]
async fn completions_and_models_pass_through() {
    let (fake, gw) = one_upstream(vec![Reply::Fixture("completion"), Reply::Fixture("completion-stream")], "").await;
    let c = reqwest::Client::new();
    let body = json!({"model": "chat", "prompt": "Paris is", "max_tokens": 8, "temperature": 0});
    let v: Value = c.post(gw.url("/v1/completions")).json(&body).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["choices"][0]["text"], " the capital of the country of France.");
    assert_eq!(v["model"], "chat");
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let text = c.post(gw.url("/v1/completions")).json(&sbody).send().await.unwrap().text().await.unwrap();
    assert_eq!(sse_text(&text), " the capital of the country of France.");
    assert_eq!(fake.posts()[1].path, "/v1/completions");
    let models: Value = c.get(gw.url("/v1/models")).send().await.unwrap().json().await.unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "chat");
    let one: Value = c.get(gw.url("/v1/models/chat")).send().await.unwrap().json().await.unwrap();
    assert_eq!(one["id"], "chat");
}

#[tokio::test]
async fn ready_reflects_upstream_health() {
    let fake = fake(vec![]).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let routes = [
        ("a.toml", openai_route("chat", "up", &fake.base(), "m", "")),
        ("b.toml", openai_route("other", "gone", &format!("http://127.0.0.1:{port}/v1"), "m", "")),
    ];
    let gw = Gateway::start(OPEN, &routes[..1].iter().map(|(a, b)| (*a, b.as_str())).collect::<Vec<_>>()).await;
    assert_eq!(reqwest::get(gw.url("/ready")).await.unwrap().status(), 200);
    assert_eq!(reqwest::get(gw.url("/health")).await.unwrap().status(), 200);
    let gw2 = Gateway::start(OPEN, &routes.iter().map(|(a, b)| (*a, b.as_str())).collect::<Vec<_>>()).await;
    let r = reqwest::get(gw2.url("/ready")).await.unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["aliases"]["chat"]["ready"], true);
    assert_eq!(v["aliases"]["other"]["ready"], false);
}

#[tokio::test]
async fn health_checks_carry_the_deployments_key_and_headers() {
    // An upstream behind an API gateway may require its headers on every path, `/models` too.
    let fake = fake(vec![]).await;
    let extra = "api_key = \"${UP_KEY}\"\nheaders = { x-gateway-key = \"gw-1\" }";
    let route = openai_route("chat", "up", &fake.base(), "m", extra);
    let gw = Gateway::start_env(OPEN, &[("a.toml", &route)], &[("UP_KEY", "sk-up")]).await;
    assert_eq!(reqwest::get(gw.url("/ready")).await.unwrap().status(), 200);
    let checks: Vec<_> = fake.requests().into_iter().filter(|c| c.method == "GET").collect();
    assert!(!checks.is_empty(), "/ready checked the upstream");
    for c in &checks {
        assert_eq!(c.path, "/v1/models");
        assert_eq!(c.header("authorization"), Some("Bearer sk-up"));
        assert_eq!(c.header("x-gateway-key"), Some("gw-1"));
    }
}

#[tokio::test]
async fn embeddings_pass_through_to_upstreams_that_serve_them() {
    let emb = json!({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2]}], "model": "e5", "usage": {"prompt_tokens": 3, "total_tokens": 3}}).to_string();
    let (fake, gw) = one_upstream(vec![Reply::Status(200, vec![], emb)], "embeddings = true").await;
    let v: Value = reqwest::Client::new()
        .post(gw.url("/v1/embeddings"))
        .json(&json!({"model": "chat", "input": ["hello"], "encoding_format": "float"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["data"][0]["embedding"], json!([0.1, -0.2]));
    assert_eq!(v["model"], "chat");
    let sent = &fake.posts()[0];
    assert_eq!(sent.path, "/v1/embeddings");
    assert_eq!(sent.json()["encoding_format"], "float");
}

#[tokio::test]
async fn a_reload_applies_new_routes_and_keys_without_dropping_a_stream() {
    let release = Arc::new(tokio::sync::Notify::new());
    let (fake, gw) = one_upstream(vec![Reply::Sse(vec![chunk("still ")], End::Stall(release.clone()))], "").await;
    let client = reqwest::Client::new();
    let mut r = client.post(gw.url("/v1/chat/completions")).json(&chat_body(true)).send().await.unwrap();
    let first = r.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("still"));
    // New config: a second alias, and keys required now.
    std::fs::write(gw.dir.path().join("routes/b.toml"), openai_route("chat2", "up2", &fake.base(), "m", "")).unwrap();
    std::fs::write(
        gw.dir.path().join("tollgate.toml"),
        "[[auth.keys]]\nname = \"k\"\nkey = \"${RELOAD_KEY}\"\naliases = [\"*\"]\n",
    )
    .unwrap();
    let opts =
        tollgate::config::LoadOptions { config: Some(gw.dir.path().join("tollgate.toml")), ..Default::default() };
    let cfg = tollgate::config::load_with_env(&opts, &|k| (k == "RELOAD_KEY").then(|| "new-key".to_string())).unwrap();
    gw.running.state.reload(&cfg).await.unwrap();
    let mut b = chat_body(false);
    b["model"] = json!("chat2");
    fake.push(Reply::Fixture("chat"));
    assert_eq!(client.post(gw.url("/v1/chat/completions")).json(&b).send().await.unwrap().status(), 401);
    assert_eq!(
        client.post(gw.url("/v1/chat/completions")).bearer_auth("new-key").json(&b).send().await.unwrap().status(),
        200
    );
    // The stream that began before the reload still runs to its end.
    release.notify_one();
    let mut rest = String::new();
    while let Ok(Some(c)) = r.chunk().await {
        rest.push_str(&String::from_utf8_lossy(&c));
    }
    assert!(!rest.contains("\"error\""), "{rest}");
}

#[tokio::test]
async fn sessions_and_shared_prefixes_keep_their_replica() {
    let (r1, r2, r3) = (fake(vec![]).await, fake(vec![]).await, fake(vec![]).await);
    for f in [&r1, &r2, &r3] {
        f.set_default(Reply::Fixture("chat"));
    }
    let dep = |n: &str, f: &Fake| {
        format!("[[alias.deployment]]\nname = \"{n}\"\nkind = \"openai\"\n{}model = \"m\"\n", upstream(&f.base()))
    };
    let routes = format!(
        "[[alias]]\nname = \"chat\"\nrouting = \"prefix_affine\"\n{}{}{}",
        dep("r1", &r1),
        dep("r2", &r2),
        dep("r3", &r3)
    );
    let gw = Gateway::start(OPEN, &[("a.toml", &routes)]).await;
    let c = reqwest::Client::new();
    let mut seen: std::collections::HashMap<String, std::collections::HashSet<String>> = Default::default();
    for turn in 0..20 {
        for session in ["alice-1", "bob-7"] {
            let body = json!({"model": "chat", "messages": [{"role": "user", "content": format!("turn {turn}")}]});
            let r = c
                .post(gw.url("/v1/chat/completions"))
                .header("x-session-id", session)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            seen.entry(session.into())
                .or_default()
                .insert(r.headers()["x-tollgate-deployment"].to_str().unwrap().into());
        }
        // No session: a conversation that grows keeps its system prompt and first turn.
        let mut msgs = vec![json!({"role": "system", "content": "You are a librarian. ".repeat(120)})];
        for t in 0..=turn {
            msgs.push(json!({"role": "user", "content": format!("question {t}")}));
        }
        let r = c
            .post(gw.url("/v1/chat/completions"))
            .json(&json!({"model": "chat", "messages": msgs}))
            .send()
            .await
            .unwrap();
        seen.entry("conversation".into())
            .or_default()
            .insert(r.headers()["x-tollgate-deployment"].to_str().unwrap().into());
    }
    for (k, reps) in &seen {
        assert_eq!(reps.len(), 1, "{k} stayed on one replica: {reps:?}");
    }
    assert_eq!(r1.posts().len() + r2.posts().len() + r3.posts().len(), 60);
}

#[tokio::test]
async fn the_upstream_is_reached_over_this_binarys_wire() {
    use crate::common::fake::Wire;
    use crate::common::tls::{Alpn, ALPN_HEADER};
    let (fake, gw) = one_upstream(vec![Reply::Fixture("chat")], "").await;
    let r = reqwest::Client::new().post(gw.url("/v1/chat/completions")).json(&chat_body(false)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let want = match crate::WIRE {
        Wire::Http1 => None,
        Wire::Tls(Alpn::H2) => Some("h2"),
        Wire::Tls(Alpn::Http11) => Some("http/1.1"),
    };
    assert_eq!(fake.posts()[0].header(ALPN_HEADER), want, "{:?}", crate::WIRE);

    // An HTTPS upstream that offers only HTTP/1.1 is spoken to in HTTP/1.1, streams included.
    let h1 = Fake::start_on(vec![Reply::Fixture("chat-stream-usage")], Wire::Tls(Alpn::Http11)).await;
    let gw = Gateway::start(OPEN, &[("a.toml", &openai_route("chat", "up", &h1.base(), "m", ""))]).await;
    let r = reqwest::Client::new().post(gw.url("/v1/chat/completions")).json(&chat_body(true)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert_eq!(sse_data(&text).last().map(String::as_str), Some("[DONE]"), "{text}");
    assert_eq!(h1.posts()[0].header(ALPN_HEADER), Some("http/1.1"));

    // Without the CA the upstream's certificate is not trusted: a 502 naming the failure.
    let route = format!(
        "[[alias]]\nname = \"chat\"\n[[alias.deployment]]\nname = \"up\"\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"m\"\nmax_retries = 0\n",
        h1.base()
    );
    let gw = Gateway::start(OPEN, &[("a.toml", &route)]).await;
    let r = reqwest::Client::new().post(gw.url("/v1/chat/completions")).json(&chat_body(false)).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.contains("certificate"), "{m}");
    assert_eq!(h1.posts().len(), 1, "nothing was sent to the untrusted upstream");
}

//! The Responses and Messages APIs keep the gateway's features: keys and their alias scopes,
//! the response cache (whole and replayed as typed events), busy deployments (529 for
//! Anthropic clients), mid-stream failures as each API's own error event, and one ledger
//! record per request under its endpoint. The upstream is a scripted OpenAI-compatible
//! server replaying recorded llama-server bytes, so what crosses it is checked too: every
//! dialect reaches it as a chat completion.
#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests and benches: a panic is the report

mod common;

use std::sync::Arc;

use common::fake::{chunk, End, Fake, Reply};
use common::{openai_route, Gateway};
use serde_json::{json, Value};

const KEYS: &str = "[auth]\nadmin_key = \"${ADMIN}\"\n[[auth.keys]]\nname = \"team-a\"\nkey = \"${KEY_A}\"\naliases = [\"chat\"]\n[[auth.keys]]\nname = \"team-b\"\nkey = \"${KEY_B}\"\naliases = [\"other\"]\n";

async fn gateway(extra_gateway: &str, extra_route: &str) -> (Fake, Gateway) {
    let fake = Fake::start(vec![]).await;
    fake.set_default(Reply::Fixture("chat"));
    let gw = Gateway::start_env(
        &format!("{extra_gateway}{KEYS}"),
        &[
            ("a.toml", &openai_route("chat", "up", &fake.base(), "m", extra_route)),
            ("b.toml", &openai_route("other", "up2", &fake.base(), "m", "")),
        ],
        &[("ADMIN", "admin-secret"), ("KEY_A", "key-a"), ("KEY_B", "key-b")],
    )
    .await;
    (fake, gw)
}

/// POSTs `body` with the key as Anthropic's SDKs send it (`x-api-key`).
async fn messages(gw: &Gateway, key: Option<&str>, body: &Value) -> reqwest::Response {
    let mut rb =
        reqwest::Client::new().post(gw.url("/v1/messages")).header("anthropic-version", "2023-06-01").json(body);
    if let Some(k) = key {
        rb = rb.header("x-api-key", k);
    }
    rb.send().await.unwrap()
}

async fn responses(gw: &Gateway, key: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new().post(gw.url("/v1/responses")).bearer_auth(key).json(body).send().await.unwrap()
}

fn anthropic_error(v: &Value, kind: &str) {
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], kind, "{v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

/// `event: NAME` / `data: JSON` pairs of an SSE body.
fn events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter_map(|e| {
            let name = e.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = e.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((name.to_owned(), serde_json::from_str(data).unwrap()))
        })
        .collect()
}

const HELLO: &str = r#"{"model": "chat", "max_tokens": 16, "system": "Be brief.", "messages": [{"role": "user", "content": "Say hello in five words."}]}"#;

#[tokio::test]
async fn messages_use_the_keys_scopes_and_reach_the_upstream_as_chat() {
    let (fake, gw) = gateway("", "").await;
    let hello: Value = serde_json::from_str(HELLO).unwrap();
    let r = messages(&gw, Some("key-a"), &hello).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("request-id"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["type"].as_str(), v["role"].as_str(), v["model"].as_str()),
        (Some("message"), Some("assistant"), Some("chat"))
    );
    assert_eq!(v["content"][0]["type"], "text");
    assert!(v["content"][0]["text"].as_str().is_some_and(|t| !t.is_empty()), "{v}");
    assert!(v["usage"]["input_tokens"].as_u64().unwrap() + v["usage"]["cache_read_input_tokens"].as_u64().unwrap() > 0);
    let sent = fake.posts().pop().unwrap();
    assert_eq!(sent.path, "/v1/chat/completions");
    let chat = sent.json();
    assert_eq!(
        chat["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello in five words."}])
    );
    assert_eq!(chat["max_tokens"], 16);

    // Another key's alias, no key, a wrong key, a bad body: Anthropic's shapes, nothing sent.
    let before = fake.posts().len();
    let r = messages(&gw, Some("key-b"), &hello).await;
    assert_eq!(r.status(), 404);
    anthropic_error(&r.json().await.unwrap(), "not_found_error");
    let r = messages(&gw, None, &hello).await;
    assert_eq!(r.status(), 401);
    anthropic_error(&r.json().await.unwrap(), "authentication_error");
    let r = messages(&gw, Some("nope"), &hello).await;
    assert_eq!(r.status(), 401);
    let r =
        messages(&gw, Some("key-a"), &json!({"model": "chat", "messages": [{"role": "user", "content": "x"}]})).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    anthropic_error(&v, "invalid_request_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("max_tokens"), "{v}");
    assert_eq!(fake.posts().len(), before);

    // The Responses API with the same key: its own (OpenAI) error shape for the same refusal.
    let r = responses(&gw, "key-b", &json!({"model": "chat", "input": "hi"})).await;
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "model_not_found");

    // One ledger record per request, under its endpoint.
    let r = responses(&gw, "key-a", &json!({"model": "chat", "input": "hi", "max_output_tokens": 16})).await;
    assert_eq!(r.status(), 200);
    let u: Value = reqwest::Client::new()
        .get(gw.url("/v1/usage?group_by=endpoint"))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let count = |e: &str| {
        u["data"].as_array().unwrap().iter().find(|g| g["endpoint"] == e).map(|g| g["requests"].as_u64().unwrap())
    };
    // Recorded: each request that named an alias (a refusal before that, 401 or a bad body,
    // has no record, as on every endpoint).
    assert_eq!(count("messages"), Some(2), "{u}");
    assert_eq!(count("responses"), Some(2), "{u}");
}

#[tokio::test]
async fn a_cached_answer_is_replayed_in_each_dialect() {
    let (fake, gw) = gateway("[cache]\nenabled = true\n", "").await;
    let body = json!({"model": "chat", "input": "Say hello in five words.", "max_output_tokens": 16, "temperature": 0});
    let first = responses(&gw, "key-a", &body).await;
    assert_eq!(first.headers()["x-tollgate-cache"], "miss");
    let first: Value = first.json().await.unwrap();
    let hit = responses(&gw, "key-a", &body).await;
    assert_eq!(hit.headers()["x-tollgate-cache"], "hit");
    let hit: Value = hit.json().await.unwrap();
    assert_ne!(hit["id"], first["id"], "a new response");
    assert_eq!(hit["output"][0]["content"][0]["text"], first["output"][0]["content"][0]["text"]);
    // Streamed, the hit is the same answer as typed events.
    let mut s = body.clone();
    s["stream"] = json!(true);
    let r = responses(&gw, "key-a", &s).await;
    assert_eq!(r.headers()["x-tollgate-cache"], "hit");
    let ev = events(&r.text().await.unwrap());
    assert_eq!(ev.first().unwrap().0, "response.created");
    // The stored answer's own ending (the recorded one was cut at its length).
    assert_eq!(ev.last().unwrap().0, format!("response.{}", first["status"].as_str().unwrap()));
    assert_eq!(ev.last().unwrap().1["response"]["status"], first["status"]);
    let deltas: String = ev
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, first["output"][0]["content"][0]["text"].as_str().unwrap());
    assert_eq!(fake.posts().len(), 1, "one upstream call for three answers");
}

#[tokio::test]
async fn a_busy_deployment_is_529_for_anthropic_clients() {
    let release = Arc::new(tokio::sync::Notify::new());
    let (fake, gw) = gateway("", "max_concurrency = 1").await;
    fake.push(Reply::Sse(vec![chunk("a")], End::Stall(release.clone())));
    let mut hello: Value = serde_json::from_str(HELLO).unwrap();
    hello["stream"] = json!(true);
    let held = messages(&gw, Some("key-a"), &hello).await;
    assert_eq!(held.status(), 200);
    let r = messages(&gw, Some("key-a"), &serde_json::from_str(HELLO).unwrap()).await;
    assert_eq!(r.status(), 529);
    assert!(r.headers().contains_key("retry-after"));
    anthropic_error(&r.json().await.unwrap(), "overloaded_error");
    release.notify_one();
    drop(held);
}

#[tokio::test]
async fn a_stream_cut_mid_answer_ends_with_each_dialects_error_event() {
    let (fake, gw) = gateway("", "").await;
    fake.push(Reply::Sse(vec![chunk("Hel"), chunk("lo")], End::Cut));
    let mut hello: Value = serde_json::from_str(HELLO).unwrap();
    hello["stream"] = json!(true);
    let text = messages(&gw, Some("key-a"), &hello).await.text().await.unwrap();
    let ev = events(&text);
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[..3], ["message_start", "ping", "content_block_start"], "{text}");
    assert!(names.contains(&"content_block_delta"), "{text}");
    let (last, data) = ev.last().unwrap();
    assert_eq!(last, "error", "{text}");
    assert_eq!(data["type"], "error");
    assert_eq!(data["error"]["type"], "api_error");

    fake.push(Reply::Sse(vec![chunk("Hel"), chunk("lo")], End::Cut));
    let body = json!({"model": "chat", "input": "hi", "stream": true});
    let text = responses(&gw, "key-a", &body).await.text().await.unwrap();
    let ev = events(&text);
    let (last, data) = ev.last().unwrap();
    assert_eq!(last, "response.failed", "{text}");
    assert_eq!(data["response"]["status"], "failed");
    assert_eq!(data["response"]["error"]["code"], "server_error");
    assert_eq!(data["response"]["output"][0]["content"][0]["text"], "Hello", "what was sent is kept");
    let seq: Vec<u64> = ev.iter().map(|(_, d)| d["sequence_number"].as_u64().unwrap()).collect();
    assert_eq!(seq, (0..seq.len() as u64).collect::<Vec<_>>());
    // A failed response is not stored.
    let id = data["response"]["id"].as_str().unwrap();
    let r =
        reqwest::Client::new().get(gw.url(&format!("/v1/responses/{id}"))).bearer_auth("key-a").send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn a_stored_response_belongs_to_its_key() {
    let (_fake, gw) = gateway("", "").await;
    let r: Value = responses(&gw, "key-a", &json!({"model": "chat", "input": "hi"})).await.json().await.unwrap();
    let id = r["id"].as_str().unwrap();
    let get = |key: &'static str, path: String| {
        let url = gw.url(&path);
        async move { reqwest::Client::new().get(url).bearer_auth(key).send().await.unwrap() }
    };
    let got = get("key-a", format!("/v1/responses/{id}")).await;
    assert_eq!(got.status(), 200);
    assert_eq!(got.json::<Value>().await.unwrap(), r);
    // Another key: as if it did not exist, for the response, its items and a follow-up.
    assert_eq!(get("key-b", format!("/v1/responses/{id}")).await.status(), 404);
    assert_eq!(get("key-b", format!("/v1/responses/{id}/input_items")).await.status(), 404);
    let r = responses(&gw, "key-b", &json!({"model": "other", "input": "more", "previous_response_id": id})).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["error"]["param"].as_str(), v["error"]["code"].as_str()),
        (Some("previous_response_id"), Some("previous_response_not_found"))
    );
    let del = reqwest::Client::new()
        .delete(gw.url(&format!("/v1/responses/{id}")))
        .bearer_auth("key-b")
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 404);
    assert_eq!(get("key-a", format!("/v1/responses/{id}")).await.status(), 200, "still there for its key");
}

/// The front gateway's alias `chat` passes `/v1/responses` through to a second tollgate (a
/// real Responses server, translating onto the scripted upstream): what the client sees is
/// the back's own response, the back holds the conversation, and the front keeps its copy
/// per key, records the usage, pins the follow-up and forwards the delete.
#[tokio::test]
async fn a_passthrough_deployment_gets_the_responses_request_as_the_client_wrote_it() {
    let fake = Fake::start(vec![]).await;
    fake.set_default(Reply::Fixture("chat"));
    let back = Gateway::start(common::OPEN, &[("b.toml", &openai_route("m", "up", &fake.base(), "m", ""))]).await;
    let route = openai_route("chat", "native", &back.url("/v1"), "m", "responses = \"passthrough\"\n");
    let front = Gateway::start_env(
        &format!("[cache]\nenabled = true\n{KEYS}"),
        &[("a.toml", &route), ("b.toml", &openai_route("other", "up2", &fake.base(), "m", ""))],
        &[("ADMIN", "admin-secret"), ("KEY_A", "key-a"), ("KEY_B", "key-b")],
    )
    .await;
    let c = reqwest::Client::new();
    let get = |gw: &Gateway, key: Option<&str>, path: String| {
        let rb = c.get(gw.url(&path));
        let rb = match key {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        };
        async move { rb.send().await.unwrap() }
    };
    let ask = json!({"model": "chat", "input": "Say hello in five words.", "max_output_tokens": 16, "temperature": 0,
        "metadata": {"run": "passthrough"}});
    let r = responses(&front, "key-a", &ask).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tollgate-deployment"], "native");
    let first: Value = r.json().await.unwrap();
    assert_eq!((first["object"].as_str(), first["model"].as_str()), (Some("response"), Some("chat")), "{first}");
    let id = first["id"].as_str().unwrap().to_owned();
    // The back made it (so the front did not translate it) and the front keeps it for key-a.
    let at_back: Value = get(&back, None, format!("/v1/responses/{id}")).await.json().await.unwrap();
    assert_eq!(at_back["id"], first["id"]);
    assert_eq!(at_back["metadata"], json!({"run": "passthrough"}), "the client's fields crossed as they were");
    assert_eq!(at_back["model"], "m", "the upstream got its own model name");
    let kept = get(&front, Some("key-a"), format!("/v1/responses/{id}")).await;
    assert_eq!(kept.status(), 200);
    assert_eq!(kept.json::<Value>().await.unwrap(), first);
    assert_eq!(get(&front, Some("key-b"), format!("/v1/responses/{id}")).await.status(), 404);
    let items: Value =
        get(&front, Some("key-a"), format!("/v1/responses/{id}/input_items")).await.json().await.unwrap();
    assert_eq!(items["data"][0]["content"][0]["text"], "Say hello in five words.", "{items}");

    // The same request again: passed through again (no response cache on the upstream's state).
    let again: Value = responses(&front, "key-a", &ask).await.json().await.unwrap();
    assert_ne!(again["id"], first["id"]);

    // A follow-up, streamed: the back continues its own conversation, and the events cross
    // as the back wrote them, with the alias as the model.
    let follow = json!({"model": "chat", "input": "And in French?", "previous_response_id": id,
        "max_output_tokens": 16, "stream": true});
    fake.push(Reply::Fixture("chat-stream-usage"));
    let r = responses(&front, "key-a", &follow).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let evs = events(&text);
    assert_eq!(evs.first().map(|e| e.0.as_str()), Some("response.created"), "{text}");
    // (The recorded upstream answer was cut at its length limit.)
    assert_eq!(evs.last().map(|e| e.0.as_str()), Some("response.incomplete"), "{text}");
    assert!(evs.iter().all(|(name, data)| data["type"] == name.as_str()), "{text}");
    let seq: Vec<u64> = evs.iter().map(|e| e.1["sequence_number"].as_u64().unwrap()).collect();
    assert!(seq.windows(2).all(|w| w[1] == w[0] + 1), "{seq:?}");
    let done = &evs.last().unwrap().1["response"];
    assert_eq!((done["model"].as_str(), done["previous_response_id"].as_str()), (Some("chat"), Some(id.as_str())));
    let second = done["id"].as_str().unwrap().to_owned();
    assert_eq!(get(&back, None, format!("/v1/responses/{second}")).await.status(), 200);
    assert_eq!(get(&front, Some("key-a"), format!("/v1/responses/{second}")).await.status(), 200);
    // The back's upstream got the whole conversation from the back's own store.
    let chat = fake.posts().pop().unwrap().json();
    let said: Vec<&str> = chat["messages"].as_array().unwrap().iter().filter_map(|m| m["content"].as_str()).collect();
    assert!(said.contains(&"Say hello in five words.") && said.contains(&"And in French?"), "{chat}");

    // The front's ledger: three Responses requests, with the upstream's token counts.
    let u: Value = get(&front, Some("admin-secret"), "/v1/usage?group_by=endpoint".into()).await.json().await.unwrap();
    let g = u["data"].as_array().unwrap().iter().find(|g| g["endpoint"] == "responses").unwrap().clone();
    assert_eq!(g["requests"], 3, "{u}");
    assert!(g["prompt_tokens"].as_u64().unwrap() > 0 && g["completion_tokens"].as_u64().unwrap() > 0, "{u}");

    // Deleting at the front deletes at the back too; another key cannot.
    let del = |key: &'static str, id: String| {
        let rb = c.delete(front.url(&format!("/v1/responses/{id}"))).bearer_auth(key);
        async move { rb.send().await.unwrap() }
    };
    assert_eq!(del("key-b", id.clone()).await.status(), 404);
    assert_eq!(get(&back, None, format!("/v1/responses/{id}")).await.status(), 200);
    let r = del("key-a", id.clone()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["deleted"], true);
    assert_eq!(get(&back, None, format!("/v1/responses/{id}")).await.status(), 404);
    assert_eq!(get(&front, Some("key-a"), format!("/v1/responses/{id}")).await.status(), 404);
}

/// A conversation the gateway made is continued by translation even on a deployment that
/// passes the Responses API through (no upstream knows its id), and a request naming stored
/// items is resolved by the gateway.
#[tokio::test]
async fn a_conversation_the_gateway_made_stays_translated() {
    let fake = Fake::start(vec![]).await;
    fake.set_default(Reply::Fixture("chat"));
    let routes = format!(
        "{}{}",
        openai_route("chat", "plain", &fake.base(), "m", ""),
        openai_route("native", "native-up", &fake.base(), "m", "responses = \"passthrough\"\n")
    );
    let gw = Gateway::start(common::OPEN, &[("a.toml", &routes)]).await;
    let c = reqwest::Client::new();
    let post = |body: Value| {
        let rb = c.post(gw.url("/v1/responses")).json(&body);
        async move { rb.send().await.unwrap() }
    };
    let r: Value = post(json!({"model": "chat", "input": "hi", "max_output_tokens": 8})).await.json().await.unwrap();
    let id = r["id"].as_str().unwrap();
    assert_eq!(fake.posts().pop().unwrap().path, "/v1/chat/completions");
    let r = post(json!({"model": "native", "input": "more", "previous_response_id": id, "max_output_tokens": 8})).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["previous_response_id"], id);
    let sent = fake.posts().pop().unwrap();
    assert_eq!(sent.path, "/v1/chat/completions", "translated, with the gateway's history");
    assert_eq!(sent.json()["messages"].as_array().unwrap().len(), 3);
    // Without history, the same alias passes through.
    fake.push(Reply::Status(404, vec![], r#"{"error":{"message":"no such route","type":"not_found"}}"#.into()));
    let r = post(json!({"model": "native", "input": "fresh", "max_output_tokens": 8})).await;
    assert_eq!(fake.posts().pop().unwrap().path, "/v1/responses");
    assert_eq!(r.status(), 404, "the upstream's refusal, in OpenAI's shape");
}

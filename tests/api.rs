//! Bad input and authentication: every error is OpenAI-shaped with the status the SDKs map.
#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests and benches: a panic is the report

mod common;

use common::fake::{Fake, Reply};
use common::{openai_route, Gateway};
use serde_json::{json, Value};

const KEYS: &str = "[auth]\nadmin_key = \"${ADMIN}\"\n[[auth.keys]]\nname = \"team-a\"\nkey = \"${KEY_A}\"\naliases = [\"chat\"]\n[[auth.keys]]\nname = \"team-b\"\nkey = \"${KEY_B}\"\naliases = [\"other\"]\n";

async fn gateway(extra_gateway: &str) -> (Fake, Gateway) {
    let fake = Fake::start(vec![]).await;
    fake.set_default(Reply::Fixture("chat"));
    let gw = Gateway::start_env(
        &format!("max_body_bytes = 2048\n{extra_gateway}{KEYS}"),
        &[
            ("a.toml", &openai_route("chat", "up", &fake.base(), "m", "")),
            ("b.toml", &openai_route("other", "up2", &fake.base(), "m", "")),
        ],
        &[("ADMIN", "admin-secret"), ("KEY_A", "key-a"), ("KEY_B", "key-b")],
    )
    .await;
    (fake, gw)
}

fn assert_openai_error(v: &Value) {
    let e = v["error"].as_object().unwrap_or_else(|| panic!("not an OpenAI error: {v}"));
    assert!(e["message"].is_string() && !e["message"].as_str().unwrap().is_empty());
    assert!(e["type"].is_string());
    assert!(e.contains_key("param") && e.contains_key("code"), "{v}");
    assert!(e["code"].is_string() || e["code"].is_null());
}

async fn send(
    gw: &Gateway,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    body: Option<String>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut rb = reqwest::Client::new().request(method, gw.url(path));
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    if let Some(b) = body {
        rb = rb.header("content-type", "application/json").body(b);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    assert!(headers["content-type"].to_str().unwrap().starts_with("application/json"), "{path}: {headers:?}");
    let v: Value = r.json().await.unwrap();
    assert_openai_error(&v);
    (status, v, headers)
}

#[tokio::test]
async fn bad_requests_are_400s_naming_the_parameter() {
    let (fake, gw) = gateway("").await;
    let post = reqwest::Method::POST;
    let ok_msgs = json!([{"role": "user", "content": "hi"}]);
    let cases: Vec<(String, Option<&str>)> = vec![
        (r#"{"model":"chat","messages":"#.into(), None),
        ("[1,2]".into(), None),
        (json!({"messages": ok_msgs}).to_string(), Some("model")),
        (json!({"model": "chat"}).to_string(), Some("messages")),
        (json!({"model": "chat", "messages": []}).to_string(), Some("messages")),
        (json!({"model": "chat", "messages": ok_msgs, "temperature": 2.5}).to_string(), Some("temperature")),
        (json!({"model": "chat", "messages": ok_msgs, "temperature": "hot"}).to_string(), Some("temperature")),
        (json!({"model": "chat", "messages": ok_msgs, "max_tokens": 0}).to_string(), Some("max_tokens")),
        (
            json!({"model": "chat", "messages": ok_msgs, "max_completion_tokens": -3}).to_string(),
            Some("max_completion_tokens"),
        ),
        (json!({"model": "chat", "messages": ok_msgs, "top_p": 1.5}).to_string(), Some("top_p")),
        (json!({"model": "chat", "messages": ok_msgs, "stream": "yes"}).to_string(), Some("stream")),
        (json!({"model": "chat", "messages": [{"content": "x"}]}).to_string(), Some("messages[0].role")),
        (json!({"model": "chat", "messages": ok_msgs, "stop": ["a", "b", "c", "d", "e"]}).to_string(), Some("stop")),
    ];
    for (body, param) in cases {
        let (s, v, _) = send(&gw, post.clone(), "/v1/chat/completions", Some("key-a"), Some(body.clone())).await;
        assert_eq!(s, 400, "{body}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"].as_str(), param, "{body}: {v}");
    }
    let (s, v, _) = send(&gw, post, "/v1/completions", Some("key-a"), Some(json!({"model": "chat"}).to_string())).await;
    assert_eq!((s, v["error"]["param"].as_str()), (400, Some("prompt")));
    assert!(fake.posts().is_empty(), "nothing invalid reached the upstream");
}

#[tokio::test]
async fn keys_are_checked_and_scoped_to_their_aliases() {
    let (_fake, gw) = gateway("").await;
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let post = reqwest::Method::POST;
    let (s, v, _) = send(&gw, post.clone(), "/v1/chat/completions", None, Some(body.clone())).await;
    assert_eq!(s, 401, "{v}");
    assert_eq!(v["error"]["code"], "invalid_api_key");
    let (s, _, _) = send(&gw, post.clone(), "/v1/chat/completions", Some("wrong"), Some(body.clone())).await;
    assert_eq!(s, 401);
    let (s, v, _) = send(&gw, post.clone(), "/v1/chat/completions", Some("key-b"), Some(body.clone())).await;
    assert_eq!(s, 404, "another team's alias looks like an unknown model: {v}");
    assert_eq!(v["error"]["code"], "model_not_found");
    let r = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .header("api-key", "key-a")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the api-key header is accepted");
    let models: Value = reqwest::Client::new()
        .get(gw.url("/v1/models"))
        .bearer_auth("key-b")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["other"]);
}

#[tokio::test]
async fn unknown_models_paths_methods_and_big_bodies() {
    let (_fake, gw) = gateway("").await;
    let post = reqwest::Method::POST;
    let (s, v, _) = send(
        &gw,
        post.clone(),
        "/v1/chat/completions",
        Some("key-a"),
        Some(json!({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}).to_string()),
    )
    .await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("model_not_found")));
    let (s, _, _) = send(&gw, reqwest::Method::GET, "/v1/nothing", Some("key-a"), None).await;
    assert_eq!(s, 404);
    let (s, _, _) = send(&gw, reqwest::Method::GET, "/v1/chat/completions", Some("key-a"), None).await;
    assert_eq!(s, 405);
    let (s, _, _) = send(&gw, reqwest::Method::DELETE, "/v1/models", Some("key-a"), None).await;
    assert_eq!(s, 405);
    let big = json!({"model": "chat", "messages": [{"role": "user", "content": "x".repeat(5000)}]}).to_string();
    let (s, v, _) = send(&gw, post, "/v1/chat/completions", Some("key-a"), Some(big)).await;
    assert_eq!(s, 413, "{v}");
    let (s, _, _) = send(&gw, reqwest::Method::GET, "/v1/models/nope", Some("key-a"), None).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn cors_is_answered_for_configured_origins() {
    let (_fake, gw) = gateway("[cors]\nallow_origins = [\"http://app.example\"]\n").await;
    let r = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, gw.url("/v1/chat/completions"))
        .header("origin", "http://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization,content-type")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert_eq!(r.headers()["access-control-allow-origin"], "http://app.example");
}

#[tokio::test]
async fn the_sdk_sees_gateway_errors_as_api_errors() {
    use async_openai::error::OpenAIError;
    use async_openai::types::{ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs};
    let (_fake, gw) = gateway("").await;
    let req = CreateChatCompletionRequestArgs::default()
        .model("missing")
        .messages([ChatCompletionRequestUserMessageArgs::default().content("hi").build().unwrap().into()])
        .build()
        .unwrap();
    match gw.openai("key-a").chat().create(req).await {
        Err(OpenAIError::ApiError(e)) => {
            assert_eq!(e.code.as_deref(), Some("model_not_found"));
            assert!(e.message.contains("missing"));
        }
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// One HTTP/1.1 exchange on a raw keep-alive connection: the status line and headers
/// (lower-cased), and the body by its content-length.
async fn exchange(conn: &mut tokio::net::TcpStream, request: &str) -> Option<(String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(request.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = conn.read(&mut byte).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&byte[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let len: usize =
        head.lines().find_map(|l| l.strip_prefix("content-length: ")).map(|v| v.trim().parse().unwrap()).unwrap_or(0);
    while buf.len() < head_end + len {
        let n = conn.read(&mut byte).await.ok()?;
        assert!(n > 0, "the body was cut");
        buf.extend_from_slice(&byte[..n]);
    }
    Some((head, String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned()))
}

#[tokio::test]
async fn an_answer_before_the_body_was_read_closes_the_connection_and_says_so() {
    use tokio::io::AsyncReadExt;
    let (_fake, gw) = gateway("").await;
    let addr = gw.url("").trim_start_matches("http://").to_owned();
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let post = |key: &str, body: &str| {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{key}content-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    // Read to the end (a 200): the connection stays open for the next request.
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (head, _) = exchange(&mut c, &post("authorization: Bearer key-a\r\n", &body)).await.unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    let (head, _) = exchange(&mut c, &post("authorization: Bearer key-a\r\n", &body)).await.unwrap();
    assert!(head.starts_with("http/1.1 200"), "the kept-alive connection serves again: {head}");
    // Answered from the headers (401), from a path (404), or cut at the size limit (413):
    // the answer says `connection: close`, and the connection is closed after it.
    let big = format!("{{\"x\":\"{}\"}}", "y".repeat(100_000));
    for (req, status) in [
        (post("", &body), "401"),
        (post("authorization: Bearer key-a\r\n", &big), "413"),
        (format!("POST /v1/nothing HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}", body.len()), "404"),
    ] {
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (head, answer) = exchange(&mut c, &req).await.unwrap();
        assert!(head.starts_with(&format!("http/1.1 {status}")), "{head}");
        assert!(head.contains("connection: close"), "{status}: {head}");
        assert_openai_error(&serde_json::from_str(&answer).unwrap());
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest).await;
        assert!(rest.is_empty(), "{status}: nothing follows the answer");
    }
}

#[tokio::test]
async fn every_answer_carries_the_request_id() {
    let (_fake, gw) = gateway("").await;
    let c = reqwest::Client::new();
    for (method, path) in [
        (reqwest::Method::GET, "/health"),
        (reqwest::Method::GET, "/v1/nothing"),
        (reqwest::Method::GET, "/v1/chat/completions"),
        (reqwest::Method::GET, "/v1/models/nope"),
        (reqwest::Method::GET, "/v1/models"),
    ] {
        let r = c.request(method.clone(), gw.url(path)).bearer_auth("key-a").header("x-request-id", "abc-123");
        let r = r.send().await.unwrap();
        assert_eq!(r.headers()["x-request-id"], "abc-123", "{method} {path}: {}", r.status());
        let r = c.request(method.clone(), gw.url(path)).bearer_auth("key-a").send().await.unwrap();
        let made = r.headers()["x-request-id"].to_str().unwrap();
        assert!(made.starts_with("req_") && made.len() > 8, "{method} {path}: a fresh id, got {made}");
    }
}

#[tokio::test]
async fn requests_hyper_cannot_parse_get_an_openai_error_body() {
    use tokio::io::AsyncReadExt;
    let (_fake, gw) = gateway("").await;
    let addr = gw.url("").trim_start_matches("http://").to_owned();
    let long_url = format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(70_000));
    let many_headers = format!("GET /health HTTP/1.1\r\nhost: x\r\n{}\r\n", "x-a: b\r\n".repeat(200));
    for (req, status, code) in [
        ("NOT HTTP AT ALL\r\n\r\n".to_owned(), "400", "invalid_http"),
        ("GET /health HTTP/1.1\r\nhost: x\r\nbad header\r\n\r\n".to_owned(), "400", "invalid_http"),
        (long_url, "414", "uri_too_long"),
        (many_headers, "431", "header_too_large"),
    ] {
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (head, body) = exchange(&mut c, &req).await.unwrap_or_else(|| panic!("{status}: no answer"));
        assert!(head.starts_with(&format!("http/1.1 {status}")), "{head}");
        assert!(head.contains("content-type: application/json"), "{status}: {head}");
        assert!(head.contains("connection: close"), "{status}: {head}");
        assert!(head.contains("x-request-id: req_"), "{status}: {head}");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{status}: {e}: {body:?}"));
        assert_openai_error(&v);
        assert_eq!(v["error"]["code"], code, "{v}");
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest).await;
        assert!(rest.is_empty(), "{status}: nothing follows the answer");
    }
    // A well-formed request on a fresh connection is served as ever.
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (head, body) = exchange(&mut c, "GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}: {body}");
}

/// Reads until the peer closes the connection: what it sent first, or `None` when it is
/// still open after `within`.
async fn closed_within(conn: &mut tokio::net::TcpStream, within: std::time::Duration) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    let read = async {
        loop {
            match conn.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&b[..n]),
            }
        }
    };
    tokio::time::timeout(within, read).await.ok()?;
    Some(got)
}

const BOUND: std::time::Duration = std::time::Duration::from_secs(20);

#[tokio::test]
async fn an_idle_http2_connection_is_closed_but_not_while_a_request_is_in_flight() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use std::sync::Arc;
    let (fake, gw) = gateway("header_read_timeout_ms = 300\n").await;
    let addr = gw.url("").trim_start_matches("http://").to_owned();
    let h2 = |addr: String| async move {
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
        (send, tokio::spawn(conn))
    };
    // Nothing sent after the handshake: closed (a GOAWAY, then the end of the connection).
    let (_idle, conn) = h2(addr.clone()).await;
    tokio::time::timeout(BOUND, conn).await.expect("an idle HTTP/2 connection is closed").unwrap().unwrap();

    // A request the upstream holds for longer than the bound keeps its connection open.
    let release = Arc::new(tokio::sync::Notify::new());
    fake.push(Reply::Hold(release.clone(), Box::new(Reply::Fixture("chat"))));
    let (mut send, mut conn) = h2(addr.clone()).await;
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let req = hyper::Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("authorization", "Bearer key-a")
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let answer = tokio::spawn(send.send_request(req));
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(1200), &mut conn).await.is_err(),
        "the connection stays open while its request is answered"
    );
    release.notify_one();
    let resp = answer.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["model"], "chat");
    // Answered and idle again: closed.
    tokio::time::timeout(BOUND, conn).await.expect("closed once idle again").unwrap().unwrap();
}

#[tokio::test]
async fn silent_trickling_and_idle_connections_close_but_a_long_answer_is_not_cut() {
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    let (fake, gw) = gateway("header_read_timeout_ms = 300\n").await;
    let addr = gw.url("").trim_start_matches("http://").to_owned();
    // A request whose answer the upstream holds back for longer than the timeout.
    let release = Arc::new(tokio::sync::Notify::new());
    fake.push(Reply::Hold(release.clone(), Box::new(Reply::Fixture("chat"))));
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let post = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer key-a\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut busy = TcpStream::connect(&addr).await.unwrap();
    let held = tokio::spawn(async move { exchange(&mut busy, &post).await.map(|(head, _)| head) });

    let mut silent = TcpStream::connect(&addr).await.unwrap();
    let mut trickling = TcpStream::connect(&addr).await.unwrap();
    let trickle = tokio::spawn(async move {
        // A header begun and never finished, a byte at a time, until the gateway closes.
        let bytes = b"GET /health HTTP/1.1\r\nx-slow: ".iter().copied().chain(std::iter::repeat(b'a'));
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(20));
        for b in bytes {
            tick.tick().await;
            if trickling.write_all(&[b]).await.is_err() {
                return;
            }
        }
    });
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    let (head, _) = exchange(&mut idle, "GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}");

    assert_eq!(closed_within(&mut silent, BOUND).await, Some(vec![]), "a silent connection is closed");
    assert_eq!(closed_within(&mut idle, BOUND).await, Some(vec![]), "an idle keep-alive connection is closed");
    tokio::time::timeout(BOUND, trickle).await.expect("a trickling header is cut off").unwrap();
    // The timeout has passed (the silent connection's close says so) while the held request
    // was being answered: its connection is still there for the answer.
    release.notify_one();
    let head = tokio::time::timeout(BOUND, held).await.unwrap().unwrap().expect("the long answer arrives");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    // A connection that asks in time is served.
    let mut prompt = TcpStream::connect(&addr).await.unwrap();
    let (head, _) = exchange(&mut prompt, "GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}");
}

#[tokio::test]
async fn connections_beyond_the_bound_get_a_503_at_once() {
    use tokio::net::TcpStream;
    let (_fake, gw) = gateway("max_connections = 2\n").await;
    let addr = gw.url("").trim_start_matches("http://").to_owned();
    let mut first = TcpStream::connect(&addr).await.unwrap();
    let (head, _) = exchange(&mut first, "GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let _second = TcpStream::connect(&addr).await.unwrap();
    // The third: answered 503 before it says anything, in OpenAI's error shape, and closed.
    let mut third = TcpStream::connect(&addr).await.unwrap();
    let got = String::from_utf8(closed_within(&mut third, BOUND).await.expect("answered and closed")).unwrap();
    let (head, body) = got.split_once("\r\n\r\n").unwrap();
    let head = head.to_lowercase();
    assert!(head.starts_with("http/1.1 503"), "{got}");
    assert!(head.contains("connection: close") && head.contains("x-request-id: req_"), "{got}");
    let v: Value = serde_json::from_str(body).unwrap();
    assert_openai_error(&v);
    assert_eq!(v["error"]["code"], "too_many_connections", "{v}");
    // The connections within the bound are served as before.
    let (head, _) = exchange(&mut first, "GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    // One closes: a new connection gets its place (once the gateway has seen it close).
    drop(first);
    let mut served = false;
    for _ in 0..1000 {
        let mut c = TcpStream::connect(&addr).await.unwrap();
        if let Some((head, _)) = exchange(&mut c, "GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await {
            if head.starts_with("http/1.1 200") {
                served = true;
                break;
            }
        }
        tokio::task::yield_now().await;
    }
    assert!(served, "a place freed by a closed connection is given to the next");
}

//! OpenTelemetry end to end: the gateway exports to a real OTLP/HTTP receiver on
//! `127.0.0.1:0` (a hyper server decoding each POST to `/v1/traces` with `opentelemetry-proto`'s
//! protobuf types, as a collector would), in front of a scripted upstream that records the
//! `traceparent` it was sent.
#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests and benches: a panic is the report

mod common;

use std::convert::Infallible;
use std::time::Duration;

use common::fake::{chunk, End, Fake, Reply};
use common::{Gateway, OPEN};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;
use tokio::sync::mpsc;

/// An OTLP/HTTP receiver: every span it is sent, with its resource's `service.name`.
async fn receiver() -> (String, mpsc::UnboundedReceiver<(String, Span)>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (sock, _) = l.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    async move {
                        assert_eq!(req.uri().path(), "/v1/traces");
                        assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let export = ExportTraceServiceRequest::decode(body).unwrap();
                        for rs in export.resource_spans {
                            let service = rs
                                .resource
                                .iter()
                                .flat_map(|r| &r.attributes)
                                .find(|a| a.key == "service.name")
                                .and_then(|a| a.value.as_ref()?.value.clone())
                                .map(|v| match v {
                                    Any::StringValue(s) => s,
                                    _ => String::new(),
                                })
                                .unwrap_or_default();
                            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                                let _ = tx.send((service.clone(), span));
                            }
                        }
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(bytes::Bytes::new())))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(sock);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
            });
        }
    });
    (format!("http://{addr}"), rx)
}

fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a Any> {
    s.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.as_ref()?.value.as_ref())
}

fn text(s: &Span, key: &str) -> String {
    match attr(s, key) {
        Some(Any::StringValue(v)) => v.clone(),
        other => panic!("{key}: {other:?} in {}", s.name),
    }
}

fn int(s: &Span, key: &str) -> i64 {
    match attr(s, key) {
        Some(Any::IntValue(v)) => *v,
        other => panic!("{key}: {other:?} in {}", s.name),
    }
}

/// The next `n` spans, in any order (the batch may split them).
async fn spans(rx: &mut mpsc::UnboundedReceiver<(String, Span)>, n: usize) -> Vec<(String, Span)> {
    let mut out = Vec::new();
    while out.len() < n {
        let s = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.expect("spans within 30 s").unwrap();
        out.push(s);
    }
    out
}

#[tokio::test]
async fn each_request_is_a_server_span_and_a_client_span_with_the_genai_attributes() {
    let (endpoint, mut rx) = receiver().await;
    let fake = Fake::start(vec![]).await;
    let body = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}});
    fake.push(Reply::Status(200, vec![("content-type", "application/json".into())], body.to_string()));
    let gw_toml =
        format!("{OPEN}\n[otel]\nendpoint = \"{endpoint}\"\nservice_name = \"tollgate-test\"\nbatch_delay_ms = 50\n");
    let route = common::openai_route("chat", "up", &fake.base(), "m-upstream", "");
    let gw = Gateway::start(&gw_toml, &[("a.toml", &route)]).await;

    // A client's trace goes on: its span is the server span's parent.
    let (trace_hex, parent_hex) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let r = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .header("traceparent", format!("00-{trace_hex}-{parent_hex}-01"))
        .json(&json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = spans(&mut rx, 2).await;
    let server = &got.iter().find(|(_, s)| s.kind == SpanKind::Server as i32).expect("a server span").1;
    let client = &got.iter().find(|(_, s)| s.kind == SpanKind::Client as i32).expect("a client span").1;
    assert!(got.iter().all(|(svc, _)| svc == "tollgate-test"));
    assert_eq!(server.name, "chat chat", "{{operation}} {{alias}}");
    assert_eq!(hex(&server.trace_id), trace_hex);
    assert_eq!(hex(&server.parent_span_id), parent_hex);
    assert_eq!(text(server, "gen_ai.operation.name"), "chat");
    assert_eq!(text(server, "gen_ai.request.model"), "chat");
    assert_eq!(text(server, "gen_ai.response.model"), "m-upstream");
    assert_eq!((int(server, "gen_ai.usage.input_tokens"), int(server, "gen_ai.usage.output_tokens")), (5, 3));
    assert_eq!(text(server, "tollgate.deployment"), "up");
    assert_eq!(int(server, "http.response.status_code"), 200);
    assert!(server.end_time_unix_nano >= server.start_time_unix_nano);

    assert_eq!(client.name, "chat m-upstream");
    assert_eq!(hex(&client.trace_id), trace_hex);
    assert_eq!(client.parent_span_id, server.span_id, "the upstream call is a child of the request");
    assert_eq!(text(client, "gen_ai.provider.name"), "openai");
    assert!(client.start_time_unix_nano >= server.start_time_unix_nano);
    assert!(client.end_time_unix_nano <= server.end_time_unix_nano);
    // The upstream was sent the client span's context.
    let sent = fake.posts()[0].header("traceparent").unwrap().to_owned();
    assert_eq!(sent, format!("00-{trace_hex}-{}-01", hex(&client.span_id)));

    // A stream: a new trace without a client parent, the first token as an event; an
    // unknown model: an error span with no upstream call.
    let events: Vec<String> = ["a", "b"].iter().map(|c| chunk(c)).collect();
    fake.push(Reply::Sse(events, End::Done));
    let r = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(&json!({"model": "chat", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let _ = r.text().await.unwrap();
    let got = spans(&mut rx, 2).await;
    let server = &got.iter().find(|(_, s)| s.kind == SpanKind::Server as i32).unwrap().1;
    assert!(server.parent_span_id.is_empty(), "a new trace");
    assert_ne!(hex(&server.trace_id), trace_hex);
    let first = server.events.iter().find(|e| e.name == "gen_ai.first_token").expect("the first token's event");
    assert!(first.time_unix_nano >= server.start_time_unix_nano && first.time_unix_nano <= server.end_time_unix_nano);

    let r = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(&json!({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let got = spans(&mut rx, 1).await;
    let (_, s) = &got[0];
    assert_eq!(s.kind, SpanKind::Server as i32);
    assert_eq!(text(s, "error.type"), "not_found");
    assert_eq!(s.status.as_ref().map(|st| st.code), Some(2), "STATUS_CODE_ERROR");
    assert_eq!(fake.posts().len(), 2, "no upstream call for an unknown model");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

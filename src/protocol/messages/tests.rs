use serde_json::{json, Map, Value};

use super::*;
use crate::protocol::translate::{Call, Reply};
use crate::protocol::Usage;

fn req(v: Value) -> Result<Request, ApiError> {
    parse(v.to_string().as_bytes(), false)
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[test]
fn blocks_become_chat_messages_in_chat_order() {
    let r = req(json!({"model": "m", "max_tokens": 32, "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"}, {"type": "text", "text": "Looking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny"}]},
                {"type": "text", "text": "And tomorrow?"}]}],
        "stop_sequences": ["\n\nHuman:"], "temperature": 0.2, "top_k": 5, "metadata": {"user_id": "u1"},
        "tools": [{"name": "get_weather", "description": "d", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true}, "stream": true}))
    .unwrap();
    assert!(r.stream);
    assert_eq!(
        Value::Object(r.chat),
        json!({"model": "m", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "Looking.", "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
            {"role": "user", "content": "And tomorrow?"}],
            "max_tokens": 32, "temperature": 0.2, "top_k": 5, "stop": ["\n\nHuman:"],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "d", "parameters": {"type": "object"}}}],
            "tool_choice": "required", "parallel_tool_calls": false, "user": "u1",
            "stream": true, "stream_options": {"include_usage": true}})
    );
    let named = req(json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}], "tool_choice": {"type": "tool", "name": "f"}}))
    .unwrap();
    assert_eq!(named.chat["tool_choice"], json!({"type": "function", "function": {"name": "f"}}));
}

#[test]
fn bad_requests_are_invalid_request_errors() {
    let msg = |v: Value| req(v).unwrap_err().message;
    assert!(msg(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]})).contains("max_tokens"));
    assert!(msg(json!({"model": "m", "max_tokens": 1, "messages": []})).contains("messages"));
    assert!(msg(json!({"model": "m", "max_tokens": 1, "messages": [{"role": "tool", "content": "x"}]}))
        .contains("messages.0.role"));
    assert!(msg(
        json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}], "temperature": 1.5})
    )
    .contains("temperature"));
    assert!(msg(json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search_20250305", "name": "web_search"}]})).contains("tools.0.type"));
    assert!(msg(json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "any"}})).contains("tool_choice"));
    assert!(msg(json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]})).contains("assistant"));
    // count_tokens needs no max_tokens.
    assert!(parse(br#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#, true).is_ok());
    let (status, body) = error_body(&req(json!({"model": "m"})).unwrap_err());
    assert_eq!(status.as_u16(), 400);
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let (status, body) = error_body(&ApiError::overloaded("m", 1));
    assert_eq!((status.as_u16(), body["error"]["type"].as_str()), (529, Some("overloaded_error")));
    let (status, body) = error_body(&ApiError::model_not_found("m"));
    assert_eq!((status.as_u16(), body["error"]["type"].as_str()), (404, Some("not_found_error")));
    let (status, body) = error_body(&ApiError::unauthorized("no"));
    assert_eq!((status.as_u16(), body["error"]["type"].as_str()), (401, Some("authentication_error")));
}

#[test]
fn a_whole_answer_is_a_message() {
    let usage = Some(Usage { prompt_tokens: 9, completion_tokens: 4, total_tokens: 13, cached_tokens: Some(6) });
    let reply = Reply { text: "Hi".into(), finish: Some("stop".into()), usage, ..Reply::default() };
    let m = message("msg_1", "alias", &reply);
    assert_eq!(
        m,
        json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "alias",
            "content": [{"type": "text", "text": "Hi"}], "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 3, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 6, "output_tokens": 4}})
    );
    let call = Call { id: "call_1".into(), name: "f".into(), arguments: "{\"a\":1}".into() };
    let reply = Reply { calls: vec![call], finish: Some("tool_calls".into()), ..Reply::default() };
    let m = message("msg_2", "alias", &reply);
    assert_eq!(m["content"], json!([{"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}}]));
    assert_eq!(m["stop_reason"], "tool_use");
    let reply =
        Reply { text: "x".into(), finish: Some("stop".into()), stop_sequence: Some("END".into()), ..Reply::default() };
    assert_eq!(message("m", "a", &reply)["stop_reason"], "stop_sequence");
    let reply = Reply { text: "x".into(), finish: Some("length".into()), ..Reply::default() };
    assert_eq!(message("m", "a", &reply)["stop_reason"], "max_tokens");
    // OpenAI ends a named tool choice with "stop"; a call without an id gets one.
    let call = Call { id: String::new(), name: "f".into(), arguments: "[1]".into() };
    let m = message("m", "a", &Reply { calls: vec![call], finish: Some("stop".into()), ..Reply::default() });
    assert_eq!(m["stop_reason"], "tool_use");
    assert!(m["content"][0]["id"].as_str().unwrap().starts_with("toolu_"));
    assert_eq!(m["content"][0]["input"], json!({}), "input is always an object");
}

fn chunk(delta: Value, finish: Value) -> Map<String, Value> {
    obj(json!({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}))
}

#[test]
fn a_stream_is_blocks_then_the_stop_reason_and_usage() {
    let mut s = Stream::new("msg_1".into(), "alias".into(), Some(5));
    let mut all = s.start();
    assert_eq!(all[0].1["message"]["usage"]["input_tokens"], 5);
    all.extend(s.push(&chunk(json!({"role": "assistant", "content": ""}), Value::Null)));
    all.extend(s.push(&chunk(json!({"content": "Let me"}), Value::Null)));
    all.extend(s.push(&chunk(json!({"content": " check."}), Value::Null)));
    all.extend(s.push(&chunk(
        json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]}),
        Value::Null,
    )));
    all.extend(
        s.push(&chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":"}}]}), Value::Null)),
    );
    all.extend(
        s.push(&chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}), json!("tool_calls"))),
    );
    all.extend(
        s.push(&obj(json!({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}))),
    );
    all.extend(s.finish());
    let names: Vec<&str> = all.iter().map(|e| e.0).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    for (name, data) in &all {
        assert_eq!(data["type"], *name);
    }
    assert_eq!(all[2].1["content_block"], json!({"type": "text", "text": ""}));
    assert_eq!(all[3].1["delta"], json!({"type": "text_delta", "text": "Let me"}));
    assert_eq!(
        all[6].1,
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "call_1", "name": "f", "input": {}}})
    );
    assert_eq!(all[8].1["delta"], json!({"type": "input_json_delta", "partial_json": "1}"}));
    assert_eq!(all[10].1["delta"], json!({"stop_reason": "tool_use", "stop_sequence": null}));
    assert_eq!(all[10].1["usage"]["output_tokens"], 7);
    assert_eq!(all[10].1["usage"]["input_tokens"], 5);
}

use serde_json::{json, Map, Value};

use super::*;
use crate::protocol::translate::{Call, Reply};
use crate::protocol::Usage;

fn req(v: Value) -> Result<Request, ApiError> {
    parse(v.to_string().as_bytes())
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[test]
fn a_string_input_is_one_user_message_after_the_instructions() {
    let r = req(json!({"model": "m", "input": "Hi", "instructions": "Be brief.", "max_output_tokens": 16,
        "temperature": 0.5, "metadata": {"team": "a"}, "user": "u1"}))
    .unwrap();
    assert!(r.store && !r.stream);
    let body =
        r.chat_body(&[json!({"role": "user", "content": "before"}), json!({"role": "assistant", "content": "ok"})]);
    assert_eq!(
        Value::Object(body),
        json!({"model": "m", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "before"}, {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "Hi"}],
            "max_tokens": 16, "temperature": 0.5, "metadata": {"team": "a"}, "user": "u1"})
    );
    assert_eq!(r.input.len(), 1);
    assert!(r.input[0]["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(r.input[0]["content"], json!([{"type": "input_text", "text": "Hi"}]));
    assert_eq!(r.echo["instructions"], "Be brief.");
    assert_eq!(r.echo["tool_choice"], "auto");
    assert_eq!(r.echo["top_p"], 1.0);
}

#[test]
fn function_calls_join_their_assistant_turn_and_outputs_are_tool_messages() {
    let r = req(json!({"model": "m", "stream": true, "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "Weather"}, {"type": "input_text", "text": "?"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me look."}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
        {"type": "function_call", "call_id": "call_2", "name": "get_time", "arguments": "{}"},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "noon"}]},
        {"role": "developer", "content": "Answer in French."}],
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": true}],
        "tool_choice": {"type": "function", "name": "get_weather"}, "parallel_tool_calls": false}))
    .unwrap();
    let body = r.chat_body(&[]);
    assert_eq!(
        body["messages"],
        json!([
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "Let me look.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
            {"role": "system", "content": "Answer in French."}])
    );
    assert_eq!(
        body["tools"],
        json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}, "strict": true}}])
    );
    assert_eq!(body["tool_choice"], json!({"type": "function", "function": {"name": "get_weather"}}));
    assert_eq!(body["parallel_tool_calls"], false);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_eq!(r.echo["parallel_tool_calls"], false);
}

#[test]
fn text_formats_are_response_formats() {
    let schema = json!({"type": "object", "properties": {"a": {"type": "string"}}});
    let r = req(json!({"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "name": "n", "schema": schema, "strict": true}}})).unwrap();
    assert_eq!(
        r.chat_body(&[])["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "n", "schema": schema, "strict": true}})
    );
    let r = req(json!({"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}})).unwrap();
    assert_eq!(r.chat_body(&[])["response_format"], json!({"type": "json_object"}));
    let r = req(json!({"model": "m", "input": "x", "text": {"format": {"type": "text"}}})).unwrap();
    assert!(!r.chat_body(&[]).contains_key("response_format"));
}

#[test]
fn what_cannot_be_served_is_a_400_naming_it() {
    let param = |v: Value| req(v).unwrap_err().param;
    assert_eq!(param(json!({"input": "x"})).as_deref(), Some("model"));
    assert_eq!(param(json!({"model": "m"})).as_deref(), Some("input"));
    assert_eq!(param(json!({"model": "m", "input": []})).as_deref(), Some("input"));
    assert_eq!(
        param(json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]})).as_deref(),
        Some("tools[0].type")
    );
    assert_eq!(param(json!({"model": "m", "input": "x", "background": true})).as_deref(), Some("background"));
    assert_eq!(
        param(json!({"model": "m", "input": [{"role": "tool", "content": "x"}]})).as_deref(),
        Some("input[0].role")
    );
    assert_eq!(param(json!({"model": "m", "input": [{"type": "item_reference"}]})).as_deref(), Some("input[0].id"));
    assert_eq!(
        param(json!({"model": "m", "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]})).as_deref(),
        Some("input[0].call_id")
    );
    assert_eq!(
        param(json!({"model": "m", "input": "x", "max_output_tokens": 0})).as_deref(),
        Some("max_output_tokens")
    );
    assert_eq!(
        param(json!({"model": "m", "input": "x", "text": {"format": {"type": "json_schema"}}})).as_deref(),
        Some("text.format.schema")
    );
    assert_eq!(param(json!({"model": "m", "input": "x", "tool_choice": "sometimes"})).as_deref(), Some("tool_choice"));
    assert_eq!(param(json!({"model": "m", "input": "x", "store": "yes"})).as_deref(), Some("store"));
}

fn reply(text: &str, finish: &str, calls: Vec<Call>) -> Reply {
    Reply {
        text: text.into(),
        calls,
        finish: Some(finish.into()),
        usage: Some(Usage { prompt_tokens: 7, completion_tokens: 3, total_tokens: 10, cached_tokens: Some(4) }),
        ..Reply::default()
    }
}

#[test]
fn a_whole_answer_is_a_response_object() {
    let r = req(json!({"model": "alias", "input": "x", "instructions": "I"})).unwrap();
    let v = response(&r.echo, "resp_1", 9, "alias", &reply("Hello", "stop", vec![]));
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(&keys[..4], ["id", "object", "created_at", "status"]);
    assert_eq!((v["object"].as_str(), v["status"].as_str()), (Some("response"), Some("completed")));
    assert_eq!(v["output"][0]["type"], "message");
    assert_eq!(
        v["output"][0]["content"][0],
        json!({"type": "output_text", "annotations": [], "logprobs": [], "text": "Hello"})
    );
    assert_eq!(
        v["usage"],
        json!({"input_tokens": 7, "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0}, "output_tokens": 3,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 10})
    );
    assert_eq!(v["instructions"], "I");
    let v = response(&r.echo, "resp_2", 9, "alias", &reply("Hel", "length", vec![]));
    assert_eq!(
        (v["status"].as_str(), v["incomplete_details"]["reason"].as_str()),
        (Some("incomplete"), Some("max_output_tokens"))
    );
    assert_eq!(v["output"][0]["status"], "incomplete");
    let call = Call { id: "call_9".into(), name: "f".into(), arguments: "{\"a\":1}".into() };
    let v = response(&r.echo, "resp_3", 9, "alias", &reply("", "tool_calls", vec![call]));
    assert_eq!(v["output"].as_array().unwrap().len(), 1, "no empty message beside a call");
    assert_eq!(v["output"][0]["type"], "function_call");
    assert_eq!(
        (v["output"][0]["call_id"].as_str(), v["output"][0]["arguments"].as_str()),
        (Some("call_9"), Some("{\"a\":1}"))
    );
    // The output, as the chat messages a follow-up continues from.
    let msgs = chat_messages(v["output"].as_array().unwrap()).unwrap();
    assert_eq!(
        msgs,
        vec![json!({"role": "assistant", "content": null, "tool_calls": [
        {"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]})]
    );
}

fn chunk(delta: Value, finish: Value) -> Map<String, Value> {
    obj(
        json!({"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}),
    )
}

fn names(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(|e| e.name).collect()
}

#[test]
fn a_stream_is_typed_events_in_order_with_sequence_numbers() {
    let r = req(json!({"model": "alias", "input": "x", "stream": true})).unwrap();
    let mut s = Stream::new(r.echo.clone(), "resp_1".into(), 5, "alias".into());
    let mut all = s.start();
    all.extend(s.push(&chunk(json!({"role": "assistant", "content": ""}), Value::Null)));
    all.extend(s.push(&chunk(json!({"content": "Hel"}), Value::Null)));
    all.extend(s.push(&chunk(json!({"content": "lo"}), Value::Null)));
    all.extend(s.push(&chunk(json!({}), json!("stop"))));
    all.extend(
        s.push(&obj(json!({"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}}))),
    );
    all.extend(s.finish());
    assert_eq!(
        names(&all),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.data["sequence_number"], i as u64);
        assert_eq!(e.data["type"], e.name);
    }
    assert_eq!(all[0].data["response"]["status"], "in_progress");
    assert_eq!(all[6].data["text"], "Hello");
    let done = &all[9].data["response"];
    assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
    assert_eq!(done["usage"]["output_tokens"], 2);
    assert_eq!(s.response(), Some(done));
    assert_eq!(all[4].data["item_id"], done["output"][0]["id"]);
}

#[test]
fn a_streamed_call_is_a_function_call_item_and_a_cut_stream_is_incomplete() {
    let r = req(json!({"model": "alias", "input": "x", "stream": true})).unwrap();
    let mut s = Stream::new(r.echo.clone(), "resp_1".into(), 5, "alias".into());
    let mut all = s.start();
    all.extend(s.push(&chunk(json!({"content": "Sure."}), Value::Null)));
    all.extend(s.push(&chunk(
        json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]}),
        Value::Null,
    )));
    all.extend(s.push(&chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\""}}]}), Value::Null)));
    all.extend(s.push(&chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}), Value::Null)));
    all.extend(s.push(&chunk(json!({}), json!("tool_calls"))));
    all.extend(s.finish());
    assert_eq!(
        names(&all)[2..],
        [
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    assert_eq!(all[8].data["output_index"], 1);
    assert_eq!(all[8].data["item"]["call_id"], "call_1");
    assert_eq!(all[11].data["arguments"], "{\"a\":1}");
    assert_eq!(s.response().unwrap()["output"][1]["arguments"], "{\"a\":1}");

    let mut s = Stream::new(r.echo.clone(), "resp_2".into(), 5, "alias".into());
    s.start();
    s.push(&chunk(json!({"content": "Hel"}), json!("length")));
    let end = s.finish();
    assert_eq!(end.last().unwrap().name, "response.incomplete");
    assert_eq!(end.last().unwrap().data["response"]["incomplete_details"]["reason"], "max_output_tokens");
    let mut s = Stream::new(r.echo, "resp_3".into(), 5, "alias".into());
    s.start();
    let failed = s.fail(&ApiError::upstream_timeout("stalled"));
    assert_eq!(names(&failed), ["response.failed"]);
    assert_eq!(failed[0].data["response"]["error"], json!({"code": "server_error", "message": "stalled"}));
}

#[test]
fn item_references_are_replaced_by_the_stored_items() {
    let mut r = req(json!({"model": "m", "input": [{"type": "item_reference", "id": "msg_a"}, {"role": "user", "content": "Next?"}]})).unwrap();
    assert!(r.messages.is_empty(), "not written before the references are resolved");
    let stored = json!({"id": "msg_a", "type": "message", "role": "assistant", "status": "completed",
        "content": [{"type": "output_text", "text": "Earlier.", "annotations": []}]});
    r.resolve(|id| Ok((id == "msg_a").then(|| stored.clone()))).unwrap();
    assert_eq!(r.input[0], stored);
    assert_eq!(
        r.chat_body(&[])["messages"],
        json!([{"role": "assistant", "content": "Earlier."}, {"role": "user", "content": "Next?"}])
    );
    let mut r = req(json!({"model": "m", "input": [{"type": "item_reference", "id": "msg_x"}]})).unwrap();
    assert_eq!(r.resolve(|_| Ok(None)).unwrap_err().param.as_deref(), Some("input[0]"));
}

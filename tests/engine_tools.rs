#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests and benches: a panic is the report
#![cfg(feature = "engine")]
//! Tool calls through each tool-call format on the real engine and GGUF: one deployment per
//! shipped Jinja template (`chat_template_file`), so the format comes from the template as it
//! would for a model that ships it: Hermes/Qwen `<tool_call>`, Llama 3.1 JSON, Mistral
//! `[TOOL_CALLS]`, and Gemma's Jinja template, which renders no tools (the generic JSON
//! format, with the tools written into the messages). The test model knows none of these
//! formats: the grammar makes every answer a call, and the checks are of validity: the shape,
//! arguments that parse and validate, a stream that reassembles to the body.

mod common;

use std::sync::{LazyLock, OnceLock};

use common::{sse_data, Gateway, OPEN};
use serde_json::{json, Value};

static RT: LazyLock<tokio::runtime::Runtime> =
    LazyLock::new(|| tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap());

const FORMATS: [&str; 4] = ["qwen2.5", "llama3.1", "mistral", "gemma"];

fn gw() -> &'static Gateway {
    static GW: OnceLock<Gateway> = OnceLock::new();
    GW.get_or_init(|| {
        let model = common::test_model();
        let templates = concat!(env!("CARGO_MANIFEST_DIR"), "/templates");
        let route: String = FORMATS
            .iter()
            .map(|f| {
                format!(
                    "[[alias]]\nname = \"{f}\"\n[[alias.deployment]]\nname = \"{f}-local\"\nkind = \"local\"\npath = \"${{TOLLGATE_TEST_MODEL}}\"\ncontext = 1024\nparallel = 1\nthreads = 2\nchat_template_file = \"{templates}/{f}.jinja\"\n"
                )
            })
            .collect();
        RT.block_on(Gateway::start_env(OPEN, &[("tools.toml", &route)], &[("TOLLGATE_TEST_MODEL", model.to_str().unwrap())]))
    })
}

fn request(model: &str, choice: Value, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "system", "content": "You call tools."}, {"role": "user", "content": "Weather in Oslo?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 16}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
            "required": ["city", "days"], "additionalProperties": false}}},
            {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}],
        "tool_choice": choice,
        "parallel_tool_calls": false,
        "max_tokens": 80,
        "temperature": 0,
        "stream": stream,
    })
}

/// Checks one call object as a body carries it; returns (name, arguments).
fn valid_call(call: &Value) -> (String, String) {
    assert_eq!(call["type"], "function", "{call}");
    assert!(call["id"].as_str().is_some_and(|id| !id.is_empty()), "{call}");
    let name = call["function"]["name"].as_str().unwrap().to_owned();
    let args = call["function"]["arguments"].as_str().unwrap().to_owned();
    let parsed: Value = serde_json::from_str(&args).unwrap_or_else(|e| panic!("arguments {args:?}: {e}"));
    assert!(parsed.is_object(), "{args}");
    if name == "get_weather" {
        assert!(parsed["city"].as_str().is_some_and(|c| c.chars().count() <= 16), "{args}");
        assert!(parsed["days"].as_i64().is_some_and(|d| (1..=7).contains(&d)), "{args}");
        assert_eq!(parsed.as_object().unwrap().len(), 2, "{args}");
    } else {
        assert_eq!(name, "get_time");
    }
    (name, args)
}

#[test]
fn every_format_answers_required_and_named_calls_streamed_and_not() {
    gw();
    RT.block_on(async {
        let c = reqwest::Client::new();
        for f in FORMATS {
            for choice in [json!("required"), json!({"type": "function", "function": {"name": "get_weather"}})] {
                let r = c
                    .post(gw().url("/v1/chat/completions"))
                    .json(&request(f, choice.clone(), false))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "{f}");
                let v: Value = r.json().await.unwrap();
                let ch = &v["choices"][0];
                assert_eq!(ch["finish_reason"], "tool_calls", "{f}: {v}");
                let calls = ch["message"]["tool_calls"].as_array().unwrap();
                assert_eq!(calls.len(), 1, "{f}: {v}");
                let whole = valid_call(&calls[0]);
                if choice.is_object() {
                    assert_eq!(whole.0, "get_weather", "{f}");
                }
                // Streamed: a first delta with index, id and name, then fragments that join to
                // the same arguments; the finish reason on its own chunk.
                let r = c.post(gw().url("/v1/chat/completions")).json(&request(f, choice, true)).send().await.unwrap();
                let text = r.text().await.unwrap();
                let (mut name, mut args, mut id, mut finish) = (None, String::new(), None, None);
                for d in sse_data(&text).into_iter().filter(|d| d != "[DONE]") {
                    let v: Value = serde_json::from_str(&d).unwrap();
                    let ch = &v["choices"][0];
                    for tc in ch["delta"]["tool_calls"].as_array().into_iter().flatten() {
                        assert_eq!(tc["index"], 0, "{f}: {tc}");
                        if let Some(n) = tc["function"]["name"].as_str() {
                            assert!(name.is_none(), "the name comes once: {text}");
                            name = Some(n.to_owned());
                            id = tc["id"].as_str().map(str::to_owned);
                        }
                        args.push_str(tc["function"]["arguments"].as_str().unwrap_or(""));
                    }
                    if let Some(fr) = ch["finish_reason"].as_str() {
                        finish = Some(fr.to_owned());
                    }
                }
                assert!(id.is_some(), "{f}: {text}");
                assert_eq!(finish.as_deref(), Some("tool_calls"), "{f}: {text}");
                assert_eq!((name.unwrap(), args), whole, "{f}: the stream reassembles to the body");
            }
        }
    });
}

#[test]
fn a_tool_result_in_the_history_is_rendered_and_answered() {
    gw();
    RT.block_on(async {
        let c = reqwest::Client::new();
        for f in FORMATS {
            let mut body = request(f, json!("required"), false);
            let v: Value =
                c.post(gw().url("/v1/chat/completions")).json(&body).send().await.unwrap().json().await.unwrap();
            let call = v["choices"][0]["message"]["tool_calls"][0].clone();
            let before = v["usage"]["prompt_tokens"].as_u64().unwrap();
            let msgs = body["messages"].as_array_mut().unwrap();
            msgs.push(json!({"role": "assistant", "content": null, "tool_calls": [call.clone()]}));
            msgs.push(json!({"role": "tool", "tool_call_id": call["id"], "content": "{\"sky\":\"clear\"}"}));
            body["tool_choice"] = json!("auto");
            body["max_tokens"] = json!(16);
            let r = c.post(gw().url("/v1/chat/completions")).json(&body).send().await.unwrap();
            let status = r.status();
            let v: Value = r.json().await.unwrap();
            assert_eq!(status, 200, "{f}: {v}");
            let ch = &v["choices"][0];
            assert!(["stop", "length", "tool_calls"].contains(&ch["finish_reason"].as_str().unwrap()), "{f}: {v}");
            if ch["finish_reason"] == "tool_calls" {
                valid_call(&ch["message"]["tool_calls"][0]);
            }
            assert!(
                v["usage"]["prompt_tokens"].as_u64().unwrap() > before,
                "{f}: the call and its result are in the prompt"
            );
        }
    });
}

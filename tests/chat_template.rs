#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests and benches: a panic is the report
//! Each shipped template (`templates/*.jinja`) rendered by tollgate and by the real
//! llama-server (`--jinja --chat-template-file`, its `/apply-template`), byte for byte, on the
//! same conversations: plain with a system message, content as text parts, with tools, and
//! with an assistant tool call and its result. The capabilities each detects (`/props`'
//! `chat_template_caps`) are compared too, and a template that raises must raise in both.
//!
//! llama-server puts today's date in the context (`date_string`, Llama 3.1 shows it) and runs
//! in UTC here, so tollgate renders at `SystemTime::now()`: the two disagree only if a test
//! straddles midnight UTC. The Gemma GGUF's tokenizer adds BOS itself, so llama-server cuts the
//! template's leading `bos_token`: tollgate is told the same (`with_added_tokens`).

mod common;

use std::process::Child;
use std::time::SystemTime;

use serde_json::{json, Value};
use tollgate::chat::template::{ChatTemplate, RenderInput, TemplateError};

/// A llama-server with one template, killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(template: &str) -> Server {
    let bin = std::env::var("TOLLGATE_LLAMA_SERVER")
        .expect("TOLLGATE_LLAMA_SERVER is not set: run the tests through scripts/test.sh");
    let model = common::test_model();
    let path = format!("{}/templates/{template}.jinja", env!("CARGO_MANIFEST_DIR"));
    let port = common::free_port();
    let child = common::spawn_llama_server_with(
        std::path::Path::new(&bin),
        &model,
        port,
        &["-c", "2048", "-np", "1", "-t", "1", "--jinja", "--chat-template-file", &path],
    );
    let server = Server { child, url: format!("http://127.0.0.1:{port}") };
    common::wait_healthy(&format!("{}/health", server.url));
    server
}

fn system_conversation() -> Vec<Value> {
    vec![
        json!({"role": "system", "content": "You are a terse assistant."}),
        json!({"role": "user", "content": "Hi there"}),
        json!({"role": "assistant", "content": "Hello! How can I help?"}),
        json!({"role": "user", "content": "What is 2+2?"}),
    ]
}

fn parts_conversation() -> Vec<Value> {
    vec![json!({"role": "user", "content": [
        {"type": "text", "text": "First part."},
        {"type": "text", "text": " Second part, ünïcode ✓ "},
    ]})]
}

fn weather_tools() -> Vec<Value> {
    vec![json!({"type": "function", "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"}
            },
            "required": ["city"]
        }
    }})]
}

fn tool_call_conversation() -> Vec<Value> {
    vec![
        json!({"role": "user", "content": "What's the weather in Paris?"}),
        json!({"role": "assistant", "content": null, "tool_calls": [{
            "id": "call12345",
            "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}
        }]}),
        json!({"role": "tool", "tool_call_id": "call12345", "name": "get_weather", "content": "{\"temp\": 18.5, \"sky\": \"clear\"}"}),
    ]
}

fn parallel_calls_conversation() -> Vec<Value> {
    let call = |id: &str, city: &str| json!({"id": id, "type": "function", "function": {"name": "get_weather", "arguments": format!("{{\"city\": \"{city}\"}}")}});
    vec![
        json!({"role": "developer", "content": "Answer with tools."}),
        json!({"role": "user", "content": "Paris and Oslo?"}),
        json!({"role": "assistant", "content": "Let me check.", "tool_calls": [call("call12345", "Paris"), call("call67890", "Oslo")]}),
        json!({"role": "tool", "tool_call_id": "call12345", "content": "18C"}),
        json!({"role": "tool", "tool_call_id": "call67890", "content": "9C"}),
    ]
}

/// Arguments whose JSON exercises `tojson`: floats, escapes, non-ASCII, null, nesting.
fn odd_arguments_conversation() -> Vec<Value> {
    let args = r#"{"city": "Zürich \"centre\"\n", "days": 3, "lat": 47.3769, "scale": 1.5e3, "tiny": 0.00001, "big": 12345678.9, "ok": true, "none": null, "tags": ["a", {"b": []}]}"#;
    vec![
        json!({"role": "user", "content": "Tab\there, emoji 😀, quote \"x\""}),
        json!({"role": "assistant", "content": "", "tool_calls": [{"id": "call00042", "type": "function", "function": {"name": "get_weather", "arguments": args}}]}),
        json!({"role": "tool", "tool_call_id": "call00042", "name": "get_weather", "content": "{}"}),
        json!({"role": "assistant", "content": "Done."}),
        json!({"role": "user", "content": "Thanks"}),
    ]
}

/// A conversation to render: its name, messages, tools and `add_generation_prompt`.
type Case<'a> = (&'static str, Vec<Value>, Option<&'a [Value]>, bool);

/// llama-server's answer: `Ok(prompt)`, or `Err(message)` when it refuses.
async fn apply_template(client: &reqwest::Client, url: &str, body: &Value) -> Result<String, String> {
    let response = client.post(format!("{url}/apply-template")).json(body).send().await.unwrap();
    let status = response.status();
    let answer: Value = response.json().await.unwrap();
    if status.is_success() {
        Ok(answer["prompt"].as_str().unwrap().to_owned())
    } else {
        Err(answer["error"]["message"].as_str().unwrap_or_default().to_owned())
    }
}

async fn compare(name: &str) {
    let server = start(name);
    let client = reqwest::Client::new();
    let props: Value = client.get(format!("{}/props", server.url)).send().await.unwrap().json().await.unwrap();
    let bos = props["bos_token"].as_str().unwrap();
    let eos = props["eos_token"].as_str().unwrap();
    let source = ChatTemplate::builtin(name).unwrap();
    let template = ChatTemplate::new(source, bos, eos).unwrap().with_added_tokens(true, false);

    let theirs = &props["chat_template_caps"];
    let ours = template.caps();
    println!("{name}: llama-server caps {theirs}\n{name}: tollgate caps {ours:?}");
    assert_eq!(theirs["supports_tools"], ours.supports_tools, "{name}: supports_tools");
    assert_eq!(theirs["supports_tool_calls"], ours.supports_tool_calls, "{name}: supports_tool_calls");
    assert_eq!(theirs["supports_system_role"], ours.supports_system_role, "{name}: supports_system_role");
    assert_eq!(
        theirs["supports_parallel_tool_calls"], ours.supports_parallel_tool_calls,
        "{name}: supports_parallel_tool_calls"
    );
    assert_eq!(theirs["supports_object_arguments"], ours.requires_object_arguments, "{name}: object arguments");
    let typed_only = theirs["supports_typed_content"] == true && theirs["supports_string_content"] == false;
    assert_eq!(typed_only, ours.requires_typed_content, "{name}: typed content");

    let tools = weather_tools();
    let cases: [Case<'_>; 7] = [
        ("system", system_conversation(), None, true),
        ("text parts", parts_conversation(), None, true),
        ("tools", system_conversation(), Some(&tools), true),
        ("tool call", tool_call_conversation(), Some(&tools), true),
        ("parallel calls, developer role", parallel_calls_conversation(), Some(&tools), true),
        ("odd arguments", odd_arguments_conversation(), Some(&tools), true),
        ("no generation prompt", system_conversation(), None, false),
    ];
    for (case, messages, tools, add_generation_prompt) in cases {
        let mut body = json!({"messages": messages, "add_generation_prompt": add_generation_prompt});
        if let Some(tools) = tools {
            body["tools"] = json!(tools);
        }
        let expected = apply_template(&client, &server.url, &body).await;
        let input =
            RenderInput { messages: &messages, tools, add_generation_prompt, now: SystemTime::now(), extra: None };
        let got = template.render(&input);
        match (&expected, &got) {
            (Ok(expected), Ok(got)) => assert_eq!(got, expected, "{name} / {case}: prompts differ"),
            (Err(theirs), Err(TemplateError::Raised(ours))) => {
                assert!(theirs.contains(ours.as_str()), "{name} / {case}: llama-server: {theirs:?}, tollgate: {ours:?}")
            }
            _ => panic!("{name} / {case}: llama-server: {expected:?}\ntollgate: {got:?}"),
        }
        println!("{name} / {case}: same ({})", if expected.is_ok() { "prompt" } else { "raised" });
    }
}

#[tokio::test]
async fn gemma_renders_as_llama_server() {
    compare("gemma").await;
}

#[tokio::test]
async fn chatml_renders_as_llama_server() {
    compare("chatml").await;
}

#[tokio::test]
async fn qwen25_renders_as_llama_server() {
    compare("qwen2.5").await;
}

#[tokio::test]
async fn llama31_renders_as_llama_server() {
    compare("llama3.1").await;
}

#[tokio::test]
async fn mistral_renders_as_llama_server() {
    compare("mistral").await;
}

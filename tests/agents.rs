#![allow(clippy::unwrap_used, clippy::print_stdout)]
//! The agent protocols with their official clients: the `openai` Python SDK on the Responses
//! API (`/v1/responses`: plain, streamed, tool calls with follow-ups, `previous_response_id`
//! chains, stored retrieve / input items / delete, structured output) and the `anthropic`
//! Python SDK on the Messages API (`/v1/messages`: plain, streamed, tool use with a
//! `tool_result` follow-up, `count_tokens`, errors), each check in
//! `tests/sdk/agent_protocols.py`.
//!
//! Every check runs twice: against `tollgate serve --model <the test GGUF>` (the engine
//! itself), and through a second tollgate whose alias is an `openai`-kind deployment in front
//! of the first, so the request crosses a real chat-completions upstream and is translated on
//! the way in and out. The Responses checks run a third time through a tollgate whose
//! deployment passes `/v1/responses` through (`responses = "passthrough"`) to the first,
//! which then answers as the Responses server. The gateways are real processes, started
//! once for this binary.

mod common;

use std::process::Command;
use std::sync::OnceLock;

use common::serve_for_binary as start;

struct Gateways {
    engine: String,
    proxied: String,
    passthrough: String,
    _dirs: [tempfile::TempDir; 3],
}

/// A tollgate whose alias `alias` is an `openai`-kind deployment in front of `engine`.
fn front(engine: &str, alias: &str, extra: &str) -> (String, tempfile::TempDir) {
    let b = tempfile::tempdir().unwrap();
    std::fs::create_dir(b.path().join("routes")).unwrap();
    std::fs::write(b.path().join("tollgate.toml"), "[auth]\nopen = true\n").unwrap();
    std::fs::write(
        b.path().join("routes/proxied.toml"),
        format!(
            "[[alias]]\nname = \"{alias}\"\n\n[[alias.deployment]]\nname = \"upstream\"\nkind = \"openai\"\n\
             base_url = \"{engine}/v1\"\nmodel = \"gemma\"\nfirst_token_timeout_ms = 120000\n{extra}"
        ),
    )
    .unwrap();
    let args = ["serve", "--config", "tollgate.toml", "--listen", "127.0.0.1:0"];
    (start(b.path().to_owned(), args.iter().map(|s| s.to_string()).collect()), b)
}

fn gateways() -> &'static Gateways {
    static G: OnceLock<Gateways> = OnceLock::new();
    G.get_or_init(|| {
        let model = std::env::var("TOLLGATE_TEST_MODEL")
            .expect("TOLLGATE_TEST_MODEL must name the test GGUF (scripts/setup.sh prints it)");
        let a = tempfile::tempdir().unwrap();
        let args = ["serve", "--model", &model, "--name", "gemma", "--listen", "127.0.0.1:0"];
        let engine = start(a.path().to_owned(), args.iter().map(|s| s.to_string()).collect());
        let (proxied, b) = front(&engine, "proxied", "");
        let (passthrough, c) = front(&engine, "passthrough", "responses = \"passthrough\"\n");
        Gateways { engine, proxied, passthrough, _dirs: [a, b, c] }
    })
}

fn check(url: &str, name: &str) {
    let engine = url == gateways().engine;
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/agent_protocols.py"))
        .args([url, name])
        .env("TOLLGATE_TEST_COUNTS_FIRST", if engine { "1" } else { "0" })
        .output()
        .expect("python3 runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "the SDK check {name} failed against {url}:\n{text}");
    assert!(text.contains(&format!("check {name} ... ok")), "{text}");
}

macro_rules! checks {
    ($($name:ident),* $(,)?) => {
        mod engine {
            $( #[test] fn $name() { super::check(&super::gateways().engine, stringify!($name)); } )*
        }
        mod proxied {
            $( #[test] fn $name() { super::check(&super::gateways().proxied, stringify!($name)); } )*
        }
    };
}

checks!(
    responses_plain,
    responses_stream,
    responses_tool,
    responses_tool_stream,
    responses_chain,
    responses_json,
    messages_plain,
    messages_stream,
    messages_tool,
    messages_tool_stream,
    messages_count_tokens,
    messages_errors,
    messages_stop_sequence,
);

/// The Responses checks through the deployment that passes them through.
mod passthrough {
    macro_rules! through {
        ($($name:ident),* $(,)?) => {
            $( #[test] fn $name() { super::check(&super::gateways().passthrough, stringify!($name)); } )*
        };
    }
    through!(responses_plain, responses_stream, responses_tool, responses_tool_stream, responses_chain, responses_json);
}

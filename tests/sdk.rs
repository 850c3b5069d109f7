#![allow(clippy::unwrap_used, clippy::print_stdout)]
//! The official `openai` Python SDK against `tollgate serve --model <the test GGUF>`, the
//! zero-config start a new user runs: tool calls, structured output, logprobs, `n`,
//! `logit_bias` (each check in `tests/sdk/engine_surface.py`, one test here per check). One
//! gateway process serves every test of this binary; the SDK is installed by
//! `scripts/setup.sh` from `tests/sdk/requirements.txt`.

mod common;

use std::process::Command;
use std::sync::OnceLock;

struct Served {
    url: String,
    _dir: tempfile::TempDir,
}

fn served() -> &'static Served {
    static S: OnceLock<Served> = OnceLock::new();
    S.get_or_init(|| {
        let model = std::env::var("TOLLGATE_TEST_MODEL")
            .expect("TOLLGATE_TEST_MODEL must name the test GGUF (scripts/setup.sh prints it)");
        let dir = tempfile::tempdir().unwrap();
        let args = ["serve", "--model", &model, "--listen", "127.0.0.1:0"];
        let url = common::serve_for_binary(dir.path().to_owned(), args.iter().map(|s| s.to_string()).collect());
        Served { url, _dir: dir }
    })
}

fn check(name: &str) {
    let s = served();
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/engine_surface.py"))
        .args([&s.url, name])
        .output()
        .expect("python3 runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "the SDK check {name} failed:\n{text}");
    assert!(text.contains(&format!("check {name} ... ok")), "{text}");
}

macro_rules! checks {
    ($($name:ident),* $(,)?) => { $( #[test] fn $name() { check(stringify!($name)); } )* };
}

checks!(
    tool_required,
    tool_named,
    tool_streamed,
    tool_followup,
    tool_truncated,
    json_schema,
    json_object,
    parse_pydantic,
    logprobs,
    n_choices,
    logit_bias,
    bad_input,
);

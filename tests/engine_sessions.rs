#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests and benches: a panic is the report
#![cfg(feature = "engine")]
//! Sessions on the real engine: a conversation named by `x-session-id` reuses its KV from
//! the session's saved state (here with the in-memory prefix cache off, so every reuse comes
//! from the file), also after a restart; an edited history falls back to the common prefix;
//! another API key never reaches it; reuse changes no output at temperature 0.

mod common;

use common::Gateway;
use serde_json::{json, Value};

const GATEWAY: &str = "data_dir = \"data\"\n[auth]\n[[auth.keys]]\nname = \"a\"\nkey = \"${KA}\"\naliases = [\"*\"]\n[[auth.keys]]\nname = \"b\"\nkey = \"${KB}\"\naliases = [\"*\"]\n";
const ROUTE: &str = "[[alias]]\nname = \"gemma\"\n[[alias.deployment]]\nname = \"gemma-local\"\nkind = \"local\"\npath = \"${TOLLGATE_TEST_MODEL}\"\ncontext = 1024\nparallel = 2\nthreads = 2\nprefix_cache_tokens = 0\n";
const SYSTEM: &str = "You are a patient museum guide. You answer visitors' questions in one or two short sentences.";

async fn start(dir: &std::path::Path) -> Gateway {
    // The same data directory each time: a "restart" finds the sessions the last one saved.
    let model = common::test_model();
    let gw = Gateway::start_env(
        &GATEWAY.replace("data_dir = \"data\"", &format!("data_dir = \"{}\"", dir.display())),
        &[("local.toml", ROUTE)],
        &[("TOLLGATE_TEST_MODEL", model.to_str().unwrap()), ("KA", "key-a"), ("KB", "key-b")],
    )
    .await;
    gw
}

async fn turn(gw: &Gateway, key: &str, session: Option<&str>, msgs: &[Value]) -> (String, u64, u64) {
    let body = json!({"model": "gemma", "messages": msgs, "max_tokens": 8, "temperature": 0});
    let mut rb = reqwest::Client::new().post(gw.url("/v1/chat/completions")).bearer_auth(key).json(&body);
    if let Some(s) = session {
        rb = rb.header("x-session-id", s);
    }
    let v: Value = rb.send().await.unwrap().json().await.unwrap();
    let u = &v["usage"];
    (
        v["choices"][0]["message"]["content"].as_str().unwrap_or_else(|| panic!("{v}")).to_owned(),
        u["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_continues_from_its_saved_state_also_after_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let user = |t: &str| json!({"role": "user", "content": t});
    let assistant = |t: &str| json!({"role": "assistant", "content": t});
    let mut msgs = vec![json!({"role": "system", "content": SYSTEM}), user("Where are the paintings?")];

    let gw = start(data.path()).await;
    let (r1, cached, prompt1) = turn(&gw, "key-a", Some("visit-1"), &msgs).await;
    assert_eq!(cached, 0, "nothing saved yet");
    msgs.extend([assistant(&r1), user("And the sculptures?")]);
    let (r2, cached, _) = turn(&gw, "key-a", Some("visit-1"), &msgs).await;
    assert!(cached >= prompt1, "turn 2 reuses all of turn 1's prompt from the session: {cached} of {prompt1}");
    let (plain, cached, _) = turn(&gw, "key-a", None, &msgs).await;
    assert_eq!(cached, 0, "no session, no prefix cache: computed in full");
    assert_eq!(plain, r2, "reuse changes no output");
    // Another key naming the same session id gets a session of its own.
    assert_eq!(turn(&gw, "key-b", Some("visit-1"), &msgs).await.1, 0);
    let Gateway { running, dir } = gw;
    running.stop().await.unwrap();
    drop(dir);

    // A restart: a new engine on the same data directory.
    let gw = start(data.path()).await;
    msgs.extend([assistant(&r2), user("Is there a café?")]);
    let (r3, cached, prompt3) = turn(&gw, "key-a", Some("visit-1"), &msgs).await;
    assert!(cached > prompt1, "restored after the restart: {cached} of {prompt3}");
    let (plain, _, _) = turn(&gw, "key-a", None, &msgs).await;
    assert_eq!(plain, r3, "a restored session continues exactly as a fresh computation");
    // An edited history: only the common prefix (the system prompt and beyond) is reused.
    let mut edited = msgs.clone();
    edited[1] = user("Where are the old maps?");
    let (_, cached, _) = turn(&gw, "key-a", Some("visit-1"), &edited).await;
    assert!(cached > 10 && cached < prompt1, "the longest common prefix: {cached}");
}

//! Model releases end to end: registry versions served through `kind = "registry"`, a
//! sticky canary's share over 1,000 distinct users, blue/green promotion that loads and
//! warms before any traffic moves, rollback on the next request, automatic rollback of a
//! failing canary with its alert, and stages, weights and the audit trail across a restart.
//! Versions answer from a real llama-server or the real engine; the scripted upstream is
//! used only for what a real server will not do on demand (fail, or hold an answer).
#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests and benches: a panic is the report

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::fake::{Fake, Reply};
use common::{llama_server, test_model, Gateway};
use futures::StreamExt;
use serde_json::{json, Value};
use tollgate::registry::{Endpoint, Registry};

const ADMIN: &str = "admin-secret-for-tests";
const VERSION: &str = "x-tollgate-model-version";

fn registry(dir: &Path) -> Registry {
    Registry::new(dir.join("data").join("registry"))
}

fn remote(dir: &Path, name: &str, version: &str, base_url: &str) {
    let e = Endpoint { kind: "openai".into(), base_url: base_url.into(), model: "gemma".into() };
    registry(dir).add_remote(name, version, e, None, Default::default()).unwrap();
}

fn gateway_toml(extra: &str) -> String {
    format!("admin_key = \"${{ADMIN}}\"\n{extra}")
}

fn gw_file(extra: &str) -> String {
    format!("{extra}\n[auth]\nopen = true\n{}", gateway_toml(""))
}

/// The alias `chat` following model `chat` from the registry, and its stages.
fn routes(template: &str, model: &str) -> String {
    format!(
        "[[alias]]\nname = \"chat\"\n[[alias.deployment]]\nname = \"chat\"\nkind = \"registry\"\nmodel = \"chat\"\n{template}\n\n[[model]]\nname = \"chat\"\n{model}\n"
    )
}

async fn start(dir: tempfile::TempDir, extra: &str, routes: &str, prompts: &[(&str, &str)]) -> Gateway {
    Gateway::start_in(dir, &gw_file(extra), &[("chat.toml", routes)], prompts, &[("ADMIN", ADMIN)], None).await
}

async fn admin(gw: &Gateway, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(gw.url(&format!("/v1/admin/models/{path}")))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn audit(gw: &Gateway) -> Vec<Value> {
    let r = reqwest::Client::new().get(gw.url("/v1/admin/models/chat/audit")).bearer_auth(ADMIN).send().await.unwrap();
    let v: Value = r.json().await.unwrap();
    v["data"].as_array().unwrap().clone()
}

/// One one-token chat request as `user`: (status, the version that answered).
async fn ask(c: &reqwest::Client, gw: &Gateway, user: &str) -> (u16, String) {
    let body = json!({"model": "chat", "user": user, "max_tokens": 1,
        "messages": [{"role": "user", "content": "Say hi"}]});
    let r = c.post(gw.url("/v1/chat/completions")).json(&body).send().await.unwrap();
    let v = r.headers().get(VERSION).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let s = r.status().as_u16();
    let _ = r.bytes().await;
    (s, v)
}

async fn ask_all(gw: &Gateway, users: &[String]) -> HashMap<String, String> {
    let c = reqwest::Client::new();
    let out: Vec<(String, u16, String)> = futures::stream::iter(users.iter().cloned())
        .map(|u| {
            let c = c.clone();
            async move {
                let (s, v) = ask(&c, gw, &u).await;
                (u, s, v)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    out.into_iter()
        .map(|(u, s, v)| {
            assert_eq!(s, 200, "{u}");
            (u, v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_percent_canary_takes_a_tenth_of_distinct_users_and_each_user_sticks() {
    let dir = tempfile::tempdir().unwrap();
    let url = llama_server();
    remote(dir.path(), "chat", "1.0.0", &url);
    remote(dir.path(), "chat", "1.1.0", &url);
    let gw = start(
        dir,
        "",
        &routes("", "production = \"1.0.0\"\nstaging = \"1.1.0\"\ncanary_weight = 10\nrollback.enabled = false"),
        &[],
    )
    .await;

    let users: Vec<String> = (0..1000).map(|i| format!("user-{i:04}")).collect();
    let first = ask_all(&gw, &users).await;
    let canary = first.values().filter(|v| *v == "chat@1.1.0").count();
    let prod = first.values().filter(|v| *v == "chat@1.0.0").count();
    assert_eq!(canary + prod, 1000, "every answer names its version");
    // 1,000 independent identities at p = 0.1: sd 9.5; the tolerance is three of them.
    assert!((72..=128).contains(&canary), "the canary answered {canary} of 1000 users (expected 100 ± 28)");

    // Sticky: the same users, again, see the same versions.
    let again = ask_all(&gw, &users[..200]).await;
    for (u, v) in &again {
        assert_eq!(v, &first[u], "{u} moved between versions");
    }

    // The session wins over the user: one session, one version, whoever its user is (the
    // users below are on both sides).
    let c = reqwest::Client::new();
    let mut seen = std::collections::HashSet::new();
    let on_canary = first.iter().filter(|(_, v)| *v == "chat@1.1.0").map(|(u, _)| u.clone()).take(2);
    let on_prod = first.iter().filter(|(_, v)| *v == "chat@1.0.0").map(|(u, _)| u.clone()).take(2);
    for u in on_canary.chain(on_prod) {
        let body = json!({"model": "chat", "user": u, "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]});
        let r = c.post(gw.url("/v1/chat/completions")).header("x-session-id", "s-1").json(&body).send().await.unwrap();
        seen.insert(r.headers()[VERSION].to_str().unwrap().to_owned());
    }
    assert_eq!(seen.len(), 1, "one session, one version");

    // Raising the weight only adds users to the canary.
    let (s, v) = admin(&gw, "chat/canary", json!({"weight": 30, "reason": "looks good"})).await;
    assert_eq!(s, 200, "{v}");
    let third = ask_all(&gw, &users[..300]).await;
    for u in &users[..300] {
        if first[u] == "chat@1.1.0" {
            assert_eq!(third[u], "chat@1.1.0", "{u} left the canary when its weight rose");
        }
    }
    let now = third.values().filter(|v| *v == "chat@1.1.0").count();
    assert!((60..=120).contains(&now), "30% of 300 users: {now}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_sends_no_request_to_a_version_before_it_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let url = llama_server();
    // The new version's upstream holds the gateway's readiness check until told.
    let fake = Fake::start(vec![]).await;
    let release = Arc::new(tokio::sync::Notify::new());
    fake.push(Reply::Hold(release.clone(), Box::new(Reply::Fixture("chat"))));
    fake.set_default(Reply::Fixture("chat"));
    remote(dir.path(), "chat", "1.0.0", &url);
    remote(dir.path(), "chat", "2.0.0", &fake.base());
    let gw = Arc::new(start(dir, "", &routes("", "production = \"1.0.0\""), &[]).await);

    let promote = {
        let gw = gw.clone();
        tokio::spawn(
            async move { admin(&gw, "chat/promote", json!({"version": "2.0.0", "reason": "new weights"})).await },
        )
    };
    // While the promotion waits on its check, traffic stays on 1.0.0: requests go on until
    // the check has reached the new version, and ten more after that.
    let c = reqwest::Client::new();
    let mut after_check = 0;
    let mut i = 0;
    while after_check < 10 {
        let (s, v) = ask(&c, &gw, &format!("u{i}")).await;
        assert_eq!((s, v.as_str()), (200, "chat@1.0.0"), "a request reached 2.0.0 before it was ready");
        if !fake.posts().is_empty() {
            after_check += 1;
        }
        i += 1;
        assert!(i < 3000, "the readiness check never reached 2.0.0");
    }
    assert!(!promote.is_finished());
    assert_eq!(fake.posts().len(), 1, "only the readiness check reached 2.0.0");
    release.notify_one();
    let (s, v) = promote.await.unwrap();
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["stages"]["production"], "2.0.0");
    assert_eq!(v["stages"]["previous"], "1.0.0");
    // The new version's first request was the gateway's own check: one token, before any user's.
    let posts = fake.posts();
    assert_eq!(posts.len(), 1, "only the readiness check before the swap");
    assert_eq!(posts[0].json()["max_tokens"], 1);
    assert!(fake.requests()[0].method == "GET", "the health check came first");
    // From the next request on, 2.0.0 answers.
    assert_eq!(ask(&c, &gw, "after").await, (200, "chat@2.0.0".to_owned()));
    assert_eq!(fake.posts().len(), 2);
    // A version that cannot be made ready is refused, and traffic does not move.
    let broken = Fake::start(vec![]).await;
    remote(gw.dir.path(), "chat", "3.0.0", &broken.base());
    let (s, v) = admin(&gw, "chat/promote", json!({"version": "3.0.0"})).await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["code"], "version_not_ready", "{v}");
    assert_eq!(ask(&c, &gw, "after").await, (200, "chat@2.0.0".to_owned()));
    let trail = audit(&gw).await;
    let actions: Vec<&str> = trail.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["seed", "promote", "promote_failed"]);
    assert_eq!(trail[1]["reason"], "new weights");
    assert!(trail[1]["actor"].as_str().unwrap().starts_with("admin:"), "{}", trail[1]);
    // Unknown versions and models are clear 404s.
    let (s, v) = admin(&gw, "chat/promote", json!({"version": "9.9.9"})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("version_not_found")), "{v}");
    let (s, _) = admin(&gw, "nope/promote", json!({"version": "1.0.0"})).await;
    assert_eq!(s, 404);
    let r =
        reqwest::Client::new().post(gw.url("/v1/admin/models/chat/rollback")).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), 401, "release changes need the admin key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_fails_is_rolled_back_automatically_with_an_alert() {
    let (hook_addr, mut rx) = common::webhook().await;

    let dir = tempfile::tempdir().unwrap();
    let url = llama_server();
    // The canary's upstream passes its readiness check, then fails every request with
    // llama-server's own 500 body: the fault a real server will not give on demand.
    let fake = Fake::start(vec![Reply::Fixture("chat")]).await;
    let boom = r#"{"error":{"code":500,"message":"failed to decode the batch","type":"server_error"}}"#;
    fake.set_default(Reply::Status(500, vec![], boom.into()));
    remote(dir.path(), "chat", "1.0.0", &url);
    remote(dir.path(), "chat", "1.1.0", &fake.base());
    let extra = format!("[monitor]\nwebhook_url = \"http://{hook_addr}/hook\"\n");
    let model = "production = \"1.0.0\"\n[model.rollback]\nerror_rate_margin = 0.1\nmin_requests = 10\n";
    let gw = start(dir, &extra, &routes("max_retries = 0", model), &[]).await;
    let (s, v) = admin(&gw, "chat/canary", json!({"version": "1.1.0", "weight": 50})).await;
    assert_eq!(s, 200, "{v}");

    // Users in the canary are answered by production while the canary fails (it stays
    // their fallback), until the canary has failed `min_requests` times.
    let c = reqwest::Client::new();
    let users: Vec<String> = (0..60).map(|i| format!("u{i}")).collect();
    for u in &users {
        let (s, v) = ask(&c, &gw, u).await;
        assert_eq!((s, v.as_str()), (200, "chat@1.0.0"), "{u}");
    }
    let alert = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("a webhook").unwrap();
    assert_eq!(alert["kind"], "canary_rollback", "{alert}");
    assert_eq!(alert["deployment"], "chat@1.1.0", "{alert}");
    let trail = audit(&gw).await;
    let last = trail.last().unwrap();
    assert_eq!(last["action"], "auto_rollback", "{last}");
    assert_eq!(last["actor"], "auto");
    assert!(last["reason"].as_str().unwrap().contains("error rate"), "{last}");
    assert_eq!(last["detail"]["after"]["canary_weight"], 0.0);
    // The canary's breaker opened after five failures; the requests it was then skipped for
    // count against it too, up to `min_requests`, and then it got no more.
    let failed = fake.posts().len() - 1;
    assert!((5..=10).contains(&failed), "{failed} requests reached the failing canary");
    assert_eq!(last["detail"]["measured"]["canary_requests"], 10, "{last}");
    for u in &users {
        assert_eq!(ask(&c, &gw, u).await.1, "chat@1.0.0");
    }
    assert_eq!(fake.posts().len() - 1, failed, "weight 0: no request reaches the canary");
    let m = reqwest::get(gw.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(m.contains("tollgate_canary_auto_rollbacks_total 1\n"), "{m}");

    // Given traffic again, the canary is judged afresh: its old failures do not roll it back
    // at its next request.
    let (s, v) = admin(&gw, "chat/canary", json!({"weight": 50, "reason": "upstream fixed?"})).await;
    assert_eq!(s, 200, "{v}");
    let in_canary: Vec<&String> =
        users.iter().filter(|u| tollgate::release::bucket("chat", u) < 5000).take(3).collect();
    assert_eq!(in_canary.len(), 3);
    for u in in_canary {
        assert_eq!(ask(&c, &gw, u).await, (200, "chat@1.0.0".to_owned()), "its fallback answers");
    }
    assert_eq!(audit(&gw).await.last().unwrap()["action"], "weight", "no second rollback yet");
}

/// The real engine: two versions of a GGUF model, blue/green with warm prefixes, a
/// rollback that is the next request, and everything kept across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_warms_the_engine_rollback_is_immediate_and_a_restart_keeps_it_all() {
    let dir = tempfile::tempdir().unwrap();
    let model = test_model();
    for v in ["1.0.0", "1.1.0"] {
        let meta = registry(dir.path()).add_gguf(&model, "chat", v, None, Default::default()).unwrap();
        assert_eq!(meta.sha256.as_deref().map(str::len), Some(64));
    }
    let url = llama_server();
    remote(dir.path(), "chat", "2.0.0-rc.1", &url);
    let sha = registry(dir.path()).get("chat", "1.0.0").unwrap().sha256.unwrap();
    let support = "You are the support agent of Tollgate, an inference gateway. Answer in one short \
                   sentence, politely, and never invent features. "
        .repeat(4);
    let template = "parallel = 2\ncontext = 1024\nbatch = 256\nprefix_cache_tokens = 512";
    let routes = routes(template, "production = \"1.0.0\"");
    let mut gw = start(dir, "", &routes, &[("support", &support)]).await;
    let c = reqwest::Client::new();
    let named = json!({"model": "chat", "system_prompt": "support", "max_tokens": 2, "temperature": 0.7,
        "messages": [{"role": "user", "content": "Hello"}]});

    let (s, v) = admin(&gw, "chat/promote", json!({"version": "1.1.0", "reason": "retrained"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["audit"]["detail"]["loaded"], json!(["chat@1.1.0"]), "{v}");
    // The first request on 1.1.0 finds the named prompt's prefix already in its KV cache.
    let r = c.post(gw.url("/v1/chat/completions")).json(&named).send().await.unwrap();
    assert_eq!(r.headers()[VERSION], "chat@1.1.0");
    let body: Value = r.json().await.unwrap();
    let cached = body["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0);
    assert!(cached > 50, "the version was warmed before traffic: {cached} cached tokens, {body}");

    // Streaming names the version too.
    let mut st = named.clone();
    st["stream"] = json!(true);
    let r = c.post(gw.url("/v1/chat/completions")).json(&st).send().await.unwrap();
    assert_eq!(r.headers()[VERSION], "chat@1.1.0");
    let _ = r.text().await.unwrap();

    // Rollback: the old version was kept loaded, so the very next request is on it.
    let (s, v) = admin(&gw, "chat/rollback", json!({"reason": "bad answers"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["audit"]["detail"]["loaded"], json!([]), "nothing is loaded for a rollback: {v}");
    assert_eq!(ask(&c, &gw, "next").await, (200, "chat@1.0.0".to_owned()));

    // A canary at 40% on a remote version (a real llama-server).
    let (s, v) = admin(&gw, "chat/canary", json!({"version": "2.0.0-rc.1", "weight": 40})).await;
    assert_eq!(s, 200, "{v}");

    // The ledger knows what answered: version, SHA-256, sampler and seed.
    let r = c.post(gw.url("/v1/chat/completions")).header("x-session-id", "stay-on-prod").json(&named).send().await;
    let _ = r.unwrap().bytes().await;
    gw.running.stop().await.unwrap();
    let db = rusqlite::Connection::open(gw.dir.path().join("data/ledger/ledger.sqlite")).unwrap();
    type Row = (Option<String>, Option<String>, Option<String>, Option<i64>);
    let rows: Vec<Row> = db
        .prepare("SELECT model_version, model_sha256, sampler, seed FROM requests WHERE model_version IS NOT NULL")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let local: Vec<&Row> = rows.iter().filter(|r| r.0.as_deref().is_some_and(|v| v.starts_with("chat@1."))).collect();
    assert!(local.len() >= 3, "{rows:?}");
    for r in &local {
        assert_eq!(r.1.as_deref(), Some(sha.as_str()), "{r:?}");
        assert!(r.3.is_some(), "the engine's seed is recorded: {r:?}");
    }
    let warm = local.iter().find(|r| r.0.as_deref() == Some("chat@1.1.0")).expect("a 1.1.0 row");
    let sampler: Value = serde_json::from_str(warm.2.as_deref().unwrap()).unwrap();
    assert_eq!(sampler["temperature"], 0.7, "{sampler}");
    drop(db);

    // A restart keeps the stages, the canary's weight and the audit trail.
    let dir = std::mem::replace(&mut gw.dir, tempfile::tempdir().unwrap());
    let gw = Gateway::start_in(
        dir,
        &gw_file(""),
        &[("chat.toml", &routes)],
        &[("support", &support)],
        &[("ADMIN", ADMIN)],
        None,
    )
    .await;
    let r = reqwest::Client::new().get(gw.url("/v1/admin/models")).bearer_auth(ADMIN).send().await.unwrap();
    let list: Value = r.json().await.unwrap();
    let stage = |id: &str| {
        let v = list["data"].as_array().unwrap().iter().find(|v| v["id"] == id).unwrap().clone();
        (v["stage"].as_str().unwrap().to_owned(), v["loaded"].as_bool().unwrap())
    };
    assert_eq!(stage("chat@1.0.0"), ("production".to_owned(), true));
    assert_eq!(stage("chat@1.1.0"), ("archived".to_owned(), true), "the rollback target is loaded again");
    assert_eq!(stage("chat@2.0.0-rc.1"), ("staging".to_owned(), true));
    let canary = list["data"].as_array().unwrap().iter().find(|v| v["id"] == "chat@2.0.0-rc.1").unwrap().clone();
    assert_eq!(canary["canary_weight"], 40.0);
    let trail = audit(&gw).await;
    let actions: Vec<&str> = trail.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["seed", "promote", "rollback", "canary"]);
    assert_eq!(trail[2]["reason"], "bad answers");
    let m = reqwest::get(gw.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(
        m.contains("tollgate_canary_weight_percent{model=\"chat\",production=\"1.0.0\",staging=\"2.0.0-rc.1\"} 40"),
        "{m}"
    );
}

/// The command line on the real binary: `models add` and `list`, and `check-config` showing
/// the store's stages against `routes/` and the drift between them.
#[test]
fn models_add_list_and_check_config_drift_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tollgate.toml");
    std::fs::write(&cfg, "[auth]\nopen = true\n").unwrap();
    std::fs::create_dir_all(dir.path().join("routes")).unwrap();
    std::fs::write(dir.path().join("routes/chat.toml"), routes("parallel = 2", "production = \"1.0.0\"")).unwrap();
    let tollgate = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate")).args(args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let c = cfg.to_str().unwrap();
    let model = test_model();
    let m = model.to_str().unwrap();
    for v in ["1.0.0", "1.1.0"] {
        let (ok, out) =
            tollgate(&["models", "add", m, "--name", "chat", "--version", v, "--metric", "mmlu=0.26", "--config", c]);
        assert!(ok, "{out}");
        assert!(out.contains("\"quantization\": \"Q4_K_M\"") && out.contains("\"mmlu\": 0.26"), "{out}");
    }
    let meta: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("data/registry/chat/1.0.0/metadata.json")).unwrap())
            .unwrap();
    assert_eq!(meta["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(meta["architecture"], "gemma3");
    assert!(dir.path().join("data/registry/chat/1.0.0/model.gguf").is_file());
    let (ok, out) = tollgate(&["models", "add", m, "--name", "chat", "--version", "1.0.0", "--config", c]);
    assert!(!ok && out.contains("immutable"), "{out}");
    let (ok, out) = tollgate(&["models", "add", c, "--name", "chat", "--version", "1.2.0", "--config", c]);
    assert!(!ok && out.contains("GGUF"), "a non-GGUF file is refused: {out}");
    assert!(!dir.path().join("data/registry/chat/1.2.0").exists());
    let (ok, out) = tollgate(&["models", "add", m, "--name", "chat", "--version", "v2", "--config", c]);
    assert!(!ok && out.contains("v2"), "{out}");

    let (ok, out) = tollgate(&["models", "list", "--config", c]);
    assert!(ok, "{out}");
    assert!(line_of(&out, "1.0.0").contains("production") && line_of(&out, "1.0.0").contains("Q4_K_M"), "{out}");
    assert!(line_of(&out, "1.1.0").contains("archived"), "{out}");

    // The store says 1.1.0 (a promotion); routes/ still says 1.0.0.
    let mut store = tollgate::release::Store::open(&dir.path().join("data/releases.sqlite")).unwrap();
    let st = tollgate::release::Stages {
        production: Some("1.1.0".into()),
        previous: Some("1.0.0".into()),
        ..Default::default()
    };
    let entry = tollgate::release::AuditEntry {
        id: 0,
        at_ms: 1,
        model: "chat".into(),
        action: tollgate::release::AuditAction::Applied(tollgate::release::Change::Promote),
        version: Some("1.1.0".into()),
        actor: "admin:test".into(),
        reason: None,
        detail: json!({}),
    };
    store.apply(Some(&st), &entry).unwrap();
    let (ok, out) = tollgate(&["check-config", "--config", c]);
    assert!(ok, "{out}");
    assert!(out.contains("chat routes: production=1.0.0"), "{out}");
    assert!(out.contains("chat store:  production=1.1.0"), "{out}");
    assert!(out.contains("DRIFT chat: production is 1.1.0 in the store, 1.0.0 in"), "{out}");
    let (_, out) = tollgate(&["models", "list", "--config", c]);
    assert!(
        line_of(&out, "1.1.0").contains("production") && line_of(&out, "1.0.0").contains("archived (prev)"),
        "{out}"
    );
}

fn line_of(out: &str, version: &str) -> String {
    out.lines().find(|l| l.split_whitespace().nth(1) == Some(version)).unwrap_or_default().to_owned()
}

/// A reload that has to load a version again (its settings changed) tests it first: one
/// that fails is refused, and the routes that were serving keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_tests_the_versions_it_loads_before_they_take_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let url = llama_server();
    let fake = Fake::start(vec![]).await;
    let boom = r#"{"error":{"code":500,"message":"failed to decode the batch","type":"server_error"}}"#;
    fake.set_default(Reply::Status(500, vec![], boom.into()));
    remote(dir.path(), "chat", "1.0.0", &url);
    remote(dir.path(), "chat", "1.1.0", &fake.base());
    let model = "production = \"1.0.0\"\nstaging = \"1.1.0\"\ncanary_weight = 1\nrollback.enabled = false";
    let gw = start(dir, "", &routes("", model), &[]).await;
    std::fs::write(gw.dir.path().join("routes/chat.toml"), routes("max_retries = 1", model)).unwrap();
    let opts =
        tollgate::config::LoadOptions { config: Some(gw.dir.path().join("tollgate.toml")), ..Default::default() };
    let cfg = tollgate::config::load_with_env(&opts, &|k| (k == "ADMIN").then(|| ADMIN.to_owned())).unwrap();
    let e = gw.running.state.reload(&cfg).await.unwrap_err();
    assert!(e.contains("chat@1.1.0: not ready"), "{e}");
    let c = reqwest::Client::new();
    let prod_user = (0..).map(|i| format!("u{i}")).find(|u| tollgate::release::bucket("chat", u) >= 100).unwrap();
    assert_eq!(ask(&c, &gw, &prod_user).await, (200, "chat@1.0.0".to_owned()));
    let live = gw.running.state.live();
    let dep = live.routes.get("chat").unwrap().deployments[0].clone();
    assert_eq!(dep.cfg.max_retries, 2, "the routes from before the reload still serve");
}

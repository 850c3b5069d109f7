//! Accounting end to end, against a real llama-server: prices and costs (streamed and not),
//! the durable ledger (a `kill -9` of the real binary, an unwritable database), the usage API,
//! per-key rate limits and budgets on a clock the test moves, and the error-rate webhook
//! (the one fault here, 500s, comes from a scripted upstream).
#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests and benches: a panic is the report

mod common;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use common::fake::{Fake, Reply};
use common::{openai_route, sse_data, Gateway};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use tollgate::clock::ManualClock;

const ADMIN: &str = "admin-secret";
const PRICE: &str = "price = { input = 100, cached_input = 50, output = 200 }";

fn sha(k: &str) -> String {
    tollgate::config::sha256(k.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A gateway file with an admin key and these keys: (name, extra TOML lines).
fn gateway_toml(keys: &[(&str, &str)], extra: &str) -> String {
    let mut s = format!("{extra}\n[auth]\nadmin_key_sha256 = \"{}\"\n", sha(ADMIN));
    for (name, lines) in keys {
        s.push_str(&format!(
            "[[auth.keys]]\nname = \"{name}\"\nsha256 = \"{}\"\naliases = [\"*\"]\n{lines}\n",
            sha(name)
        ));
    }
    s
}

fn gemma_route() -> String {
    openai_route("gemma", "llama-server", &common::llama_server(), "gemma", PRICE)
}

/// Deterministic and uncached on llama-server's side, so two calls use the same tokens.
fn chat(max_tokens: u32) -> Value {
    json!({"model": "gemma", "messages": [{"role": "user", "content": "Name a colour."}],
           "max_tokens": max_tokens, "temperature": 0, "cache_prompt": false})
}

async fn post(gw: &Gateway, key: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new().post(gw.url("/v1/chat/completions")).bearer_auth(key).json(body).send().await.unwrap()
}

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

/// The price above, per token.
fn expected_cost(prompt: u64, completion: u64) -> Decimal {
    (Decimal::from(prompt) * d("100") + Decimal::from(completion) * d("200")) / d("1000000")
}

async fn usage(base: &str, query: &str) -> Value {
    let r = reqwest::Client::new().get(format!("{base}/v1/usage?{query}")).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn streamed_and_plain_requests_cost_the_same_and_reach_the_usage_api() {
    let gw = Gateway::start(&gateway_toml(&[("free", "")], ""), &[("a.toml", &gemma_route())]).await;
    let r = post(&gw, "free", &chat(4)).await;
    assert_eq!(r.status(), 200);
    let cost = d(r.headers()["x-tollgate-cost-usd"].to_str().unwrap());
    assert_eq!(r.headers()["x-tollgate-saved-usd"], "0");
    let body: Value = r.json().await.unwrap();
    let (p, c) =
        (body["usage"]["prompt_tokens"].as_u64().unwrap(), body["usage"]["completion_tokens"].as_u64().unwrap());
    assert_eq!(cost, expected_cost(p, c));

    let mut s = chat(4);
    s["stream"] = json!(true);
    s["stream_options"] = json!({"include_usage": true});
    let text = post(&gw, "free", &s).await.text().await.unwrap();
    let data = sse_data(&text);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let last: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(last["usage"]["prompt_tokens"].as_u64(), Some(p));
    assert_eq!(last["usage"]["completion_tokens"].as_u64(), Some(c));
    assert_eq!(d(last["usage"]["cost_usd"].as_str().unwrap()), cost, "{text}");

    // The SDK reads the same stream; the extra fields do not bother it.
    let client = gw.openai("free");
    let req: async_openai::types::CreateChatCompletionRequest = serde_json::from_value(chat(4)).unwrap();
    let sdk = client.chat().create(req).await.unwrap();
    let su = sdk.usage.unwrap();
    assert_eq!(su.completion_tokens as u64, c);
    // The SDK drops llama-server's `cache_prompt`, so this call may reuse cached prompt
    // tokens: those are priced at the cached rate, and counted once.
    let cached = su.prompt_tokens_details.and_then(|d| d.cached_tokens).unwrap_or(0) as u64;
    let sdk_cost = expected_cost(p - cached, c) + Decimal::from(cached) * d("50") / d("1000000");

    let u = usage(&gw.url(""), "group_by=key,alias&key=free").await;
    let row = &u["data"][0];
    assert_eq!(row["key"], "free");
    assert_eq!(row["alias"], "gemma");
    assert_eq!(row["requests"], 3);
    assert_eq!(row["prompt_tokens"].as_u64(), Some(3 * p));
    assert_eq!(d(row["cost_usd"].as_str().unwrap()), cost * d("2") + sdk_cost);
    assert_eq!(d(row["saved_usd"].as_str().unwrap()), Decimal::from(cached) * d("50") / d("1000000"));
    assert_eq!(row["error_rate"], 0.0);
    assert!(row["latency_ms"]["p99"].as_f64().unwrap() >= row["latency_ms"]["p50"].as_f64().unwrap());
    assert!(row["ttft_ms"]["p50"].as_f64().unwrap() > 0.0);
    // Only the admin key reads usage.
    let r = reqwest::Client::new().get(gw.url("/v1/usage")).bearer_auth("free").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = reqwest::Client::new().get(gw.url("/v1/usage?group_by=colour")).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn a_burst_past_requests_per_minute_is_refused_then_recovers() {
    let clock = Arc::new(ManualClock::new());
    let gw = Gateway::start_clocked(
        &gateway_toml(&[("team-a", "requests_per_minute = 3")], ""),
        &[("a.toml", &gemma_route())],
        &[],
        clock.clone(),
    )
    .await;
    for left in ["2", "1", "0"] {
        let r = post(&gw, "team-a", &chat(1)).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-ratelimit-limit-requests"], "3");
        assert_eq!(r.headers()["x-ratelimit-remaining-requests"], left);
    }
    let r = post(&gw, "team-a", &chat(1)).await;
    assert_eq!(r.status(), 429);
    let h = r.headers().clone();
    assert_eq!(h["retry-after"], "20");
    assert_eq!(h["x-ratelimit-remaining-requests"], "0");
    assert_eq!(h["x-ratelimit-reset-requests"], "20s");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "rate_limit_exceeded");
    clock.advance(Duration::from_secs(20));
    assert_eq!(post(&gw, "team-a", &chat(1)).await.status(), 200, "one request regained after 20 s");
    assert_eq!(post(&gw, "team-a", &chat(1)).await.status(), 429);
}

#[tokio::test]
async fn tokens_per_minute_reserve_then_charge_the_real_usage() {
    let clock = Arc::new(ManualClock::new());
    let gw = Gateway::start_clocked(
        &gateway_toml(&[("team-b", "tokens_per_minute = 1000")], ""),
        &[("a.toml", &gemma_route())],
        &[],
        clock.clone(),
    )
    .await;
    // "Name a colour." is 14 bytes: 4 tokens estimated, plus max_tokens 4.
    let r = post(&gw, "team-b", &chat(4)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-remaining-tokens"], "992");
    let used = r.json::<Value>().await.unwrap()["usage"]["total_tokens"].as_u64().unwrap();
    // The first request was charged what it used, not what it reserved.
    let r = post(&gw, "team-b", &chat(4)).await;
    assert_eq!(r.headers()["x-ratelimit-remaining-tokens"].to_str().unwrap(), (1000 - used - 8).to_string());
    let used2 = r.json::<Value>().await.unwrap()["usage"]["total_tokens"].as_u64().unwrap();
    // Larger than the whole quota: refused for good.
    let r = post(&gw, "team-b", &chat(5000)).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-should-retry"], "false");
    // Larger than what is left: refused until the bucket refills.
    let left = 1000 - used - used2;
    let r = post(&gw, "team-b", &chat((left - 4 + 1) as u32)).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-ratelimit-remaining-tokens"].to_str().unwrap(), left.to_string());
    assert!(r.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    clock.advance(Duration::from_secs(60));
    let r = post(&gw, "team-b", &chat(4)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-remaining-tokens"], "992", "full again after a minute");
}

#[tokio::test]
async fn concurrent_requests_per_key_are_capped() {
    let gw =
        Gateway::start(&gateway_toml(&[("team-d", "max_concurrent = 1")], ""), &[("a.toml", &gemma_route())]).await;
    let mut s = chat(3);
    s["stream"] = json!(true);
    let mut open = post(&gw, "team-d", &s).await;
    assert_eq!(open.status(), 200);
    let second = post(&gw, "team-d", &chat(1)).await;
    assert_eq!(second.status(), 429, "one stream is in flight");
    while open.chunk().await.unwrap().is_some() {}
    assert_eq!(post(&gw, "team-d", &chat(1)).await.status(), 200, "released when the stream ended");
}

#[tokio::test]
async fn an_unwritable_ledger_fails_no_request_and_keeps_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("data/ledger");
    // Directories where the journal and the database should be: every write fails.
    std::fs::create_dir_all(ledger.join("journal.jsonl")).unwrap();
    std::fs::create_dir_all(ledger.join("ledger.sqlite")).unwrap();
    let gw =
        Gateway::start_in(dir, &gateway_toml(&[("free", "")], ""), &[("a.toml", &gemma_route())], &[], &[], None).await;
    for _ in 0..3 {
        assert_eq!(post(&gw, "free", &chat(1)).await.status(), 200);
    }
    let m = reqwest::get(gw.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(m.contains("tollgate_ledger_pending_records 3"), "{m}");
    assert!(m.contains("tollgate_ledger_db_up 0"), "{m}");
    let usage_now = reqwest::Client::new().get(gw.url("/v1/usage")).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(usage_now.status(), 503, "an unreadable ledger is a clear 503");
    // The disk is repaired: the records kept in memory reach the database.
    std::fs::remove_dir(ledger.join("journal.jsonl")).unwrap();
    std::fs::remove_dir(ledger.join("ledger.sqlite")).unwrap();
    let u = usage(&gw.url(""), "group_by=key").await;
    assert_eq!(u["data"][0]["requests"], 3, "{u}");
}

#[tokio::test]
async fn budgets_refuse_with_insufficient_quota() {
    // A budget of about three requests.
    let gw = Gateway::start(
        &gateway_toml(&[("team-c", "budget_usd_per_day = \"0.005\"")], ""),
        &[("a.toml", &gemma_route())],
    )
    .await;
    let mut spent = Decimal::ZERO;
    let mut refused = false;
    for _ in 0..10 {
        let r = post(&gw, "team-c", &chat(2)).await;
        if spent >= d("0.005") {
            assert_eq!(r.status(), 429);
            assert_eq!(r.headers()["x-should-retry"], "false");
            let e: Value = r.json().await.unwrap();
            assert_eq!(e["error"]["code"], "insufficient_quota");
            assert_eq!(e["error"]["type"], "insufficient_quota");
            refused = true;
            break;
        }
        assert_eq!(r.status(), 200, "spent {spent} of 0.005");
        spent += d(r.headers()["x-tollgate-cost-usd"].to_str().unwrap());
    }
    assert!(refused);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_loses_no_completed_request_and_budgets_survive() {
    let d_ = tempfile::tempdir().unwrap();
    let toml = gateway_toml(&[("free", ""), ("team-c", "budget_usd_per_day = \"0.002\"")], "");
    std::fs::write(d_.path().join("tollgate.toml"), toml).unwrap();
    std::fs::create_dir(d_.path().join("routes")).unwrap();
    std::fs::write(d_.path().join("routes/a.toml"), gemma_route()).unwrap();
    let (mut child, addr) = common::serve_binary(d_.path());
    let base = format!("http://{addr}");
    let c = reqwest::Client::new();
    let url = format!("{base}/v1/chat/completions");
    let mut n = 0;
    for i in 0..6 {
        let mut b = chat(2);
        if i % 2 == 1 {
            b["stream"] = json!(true);
        }
        let r = c.post(&url).bearer_auth("free").json(&b).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        n += 1;
    }
    // Spend team-c's budget.
    while c.post(&url).bearer_auth("team-c").json(&chat(2)).send().await.unwrap().status() == 200 {
        n += 1;
    }
    n += 1; // the refusal is a record too
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let (mut child, addr) = common::serve_binary(d_.path());
    let base = format!("http://{addr}");
    let u = usage(&base, "").await;
    assert_eq!(u["data"][0]["requests"], n, "{u}");
    let r = c.post(format!("{base}/v1/chat/completions")).bearer_auth("team-c").json(&chat(2)).send().await.unwrap();
    assert_eq!(r.status(), 429, "the day's spend came back from the ledger");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["usage", "--url", &base, "--group-by", "key"])
        .env("TOLLGATE_ADMIN_KEY", ADMIN)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}{}", String::from_utf8_lossy(&out.stderr));
    let free = table.lines().find(|l| l.starts_with("free ")).unwrap_or_else(|| panic!("{table}"));
    assert_eq!(free.split_whitespace().nth(1), Some("6"), "{table}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn an_error_rate_above_the_threshold_fires_one_webhook() {
    let (hook_addr, mut rx) = common::webhook().await;

    // 500s are the fault a real server will not give on demand.
    let fake = Fake::start(vec![]).await;
    fake.set_default(Reply::Fixture("chat"));
    let extra = format!(
        "[monitor]\nwebhook_url = \"http://{hook_addr}/hook\"\nmin_requests = 20\nerror_rate_threshold = 0.01\n"
    );
    let route = openai_route("chat", "flaky", &fake.base(), "m", "max_retries = 0");
    let gw = Gateway::start(&format!("{extra}[auth]\nopen = true\n"), &[("a.toml", &route)]).await;
    let c = reqwest::Client::new();
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]});
    let send = || c.post(gw.url("/v1/chat/completions")).json(&body).send();
    for _ in 0..18 {
        assert_eq!(send().await.unwrap().status(), 200);
    }
    for _ in 0..4 {
        fake.push(Reply::Status(500, vec![], r#"{"error":{"message":"boom","type":"server_error"}}"#.into()));
        assert_eq!(send().await.unwrap().status(), 502);
    }
    let alert = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("a webhook").unwrap();
    assert_eq!(alert["deployment"], "flaky", "{alert}");
    assert_eq!(alert["firing"], true, "{alert}");
    // While the condition lasts, nothing more is sent.
    for _ in 0..5 {
        assert_eq!(send().await.unwrap().status(), 200);
    }
    let m = reqwest::get(gw.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(m.contains("tollgate_alert_firing{"), "{m}");
    assert!(rx.try_recv().is_err(), "one webhook per episode");
}

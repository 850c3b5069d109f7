//! Many replicas, one gateway: three replicas in this process share one real Redis and one
//! real PostgreSQL (started by the harness on free ports) and route to one real llama-server.
//! The limits are exact across replicas on a clock the test holds still; the spend is shared;
//! Redis killed under load costs no request a 5xx, and exact limits return with it.
#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests and benches: a panic is the report

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::servers::{Postgres, Redis};
use common::{openai_route, Gateway};
use serde_json::{json, Value};
use tollgate::clock::ManualClock;

const ADMIN: &str = "admin-secret";
const PRICE: &str = "price = { input = 100, cached_input = 50, output = 200 }";

fn sha(k: &str) -> String {
    tollgate::config::sha256(k.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A replica's gateway file: the cluster section, an admin key, and the keys (name, limits).
fn replica_toml(redis: &Redis, pg: &Postgres, cluster_extra: &str, keys: &[(&str, &str)]) -> String {
    let mut s = format!(
        "[cluster]\nredis_url = \"{}\"\nreplicas = 3\n{cluster_extra}\n[ledger]\npostgres_url = \"{}\"\n\
         [auth]\nadmin_key_sha256 = \"{}\"\n",
        redis.url(),
        pg.url(),
        sha(ADMIN)
    );
    for (name, lines) in keys {
        s.push_str(&format!(
            "[[auth.keys]]\nname = \"{name}\"\nsha256 = \"{}\"\naliases = [\"*\"]\n{lines}\n",
            sha(name)
        ));
    }
    // Last, so a test may add to the table: the files every replica reads.
    s.push_str(&format!("[batch]\nfiles_dir = \"{}\"\n", files_dir().display()));
    s
}

/// The files directory the replicas share (one for the whole binary: file ids are unique).
fn files_dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

fn route() -> String {
    openai_route("gemma", "llama-server", &common::llama_server(), "gemma", PRICE)
}

async fn replicas(toml: &str, clock: Option<Arc<ManualClock>>) -> Vec<Gateway> {
    let mut out = Vec::new();
    for _ in 0..3 {
        let gw = match &clock {
            Some(c) => Gateway::start_clocked(toml, &[("a.toml", &route())], &[], c.clone()).await,
            None => Gateway::start(toml, &[("a.toml", &route())]).await,
        };
        out.push(gw);
    }
    out
}

fn chat(max_tokens: u32) -> Value {
    json!({"model": "gemma", "messages": [{"role": "user", "content": "Name a colour."}],
           "max_tokens": max_tokens, "temperature": 0})
}

async fn post(c: &reqwest::Client, gw: &Gateway, key: &str, body: &Value) -> reqwest::Response {
    c.post(gw.url("/v1/chat/completions")).bearer_auth(key).json(body).send().await.unwrap()
}

/// Sends `n` requests at once, round-robin over the replicas: the statuses, in order.
async fn burst(gws: &[Gateway], key: &str, n: usize, body: &Value) -> Vec<u16> {
    let c = reqwest::Client::new();
    let calls = (0..n).map(|i| {
        let (c, gw) = (c.clone(), &gws[i % gws.len()]);
        async move { post(&c, gw, key, body).await.status().as_u16() }
    });
    futures::future::join_all(calls).await
}

/// Polls `f` until it holds (a settlement or a spend lands in Redis just after the answer).
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn metric(gw: &Gateway, series: &str) -> f64 {
    let text = reqwest::get(gw.url("/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_per_minute_are_exact_across_replicas_on_a_held_clock() {
    let (redis, pg) = (Redis::start(), Postgres::start());
    let clock = Arc::new(ManualClock::new());
    let gws =
        replicas(&replica_toml(&redis, &pg, "", &[("team", "requests_per_minute = 60")]), Some(clock.clone())).await;
    let statuses = burst(&gws, "team", 300, &chat(1)).await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((ok, limited), (60, 240), "{statuses:?}");
    // A second regained on the shared clock is one request, on whichever replica.
    clock.advance(Duration::from_secs(1));
    let c = reqwest::Client::new();
    let r = post(&c, &gws[2], "team", &chat(1)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-limit-requests"], "60");
    assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "0");
    let r = post(&c, &gws[0], "team", &chat(1)).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "rate_limit_exceeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_burst_admits_no_more_than_the_limit_and_its_refill() {
    let (redis, pg) = (Redis::start(), Postgres::start());
    let gws = replicas(&replica_toml(&redis, &pg, "", &[("team", "requests_per_minute = 60")]), None).await;
    let start = Instant::now();
    let statuses = burst(&gws, "team", 300, &chat(1)).await;
    let secs = start.elapsed().as_secs_f64();
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
    // One request a second refills; the burst itself is 60.
    assert!(ok >= 60 && ok as f64 <= 60.0 + secs.ceil() + 1.0, "{ok} admitted in {secs:.1} s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_concurrency_are_shared() {
    let (redis, pg) = (Redis::start(), Postgres::start());
    let clock = Arc::new(ManualClock::new());
    let keys = [("tok", "tokens_per_minute = 160"), ("one", "max_concurrent = 2")];
    let gws = replicas(&replica_toml(&redis, &pg, "", &keys), Some(clock.clone())).await;
    let c = reqwest::Client::new();
    // "Name a colour." is 14 bytes: 4 tokens estimated, plus max_tokens 12: 16 reserved. Thirty
    // streams at once over three replicas, held open so none ends (and refunds) meanwhile:
    // exactly ten fit the key's 160 tokens a minute on the held clock.
    let mut s = chat(12);
    s["stream"] = json!(true);
    let calls = (0..30).map(|i| {
        let (c, gw, s) = (c.clone(), &gws[i % 3], s.clone());
        async move { post(&c, gw, "tok", &s).await }
    });
    let open: Vec<reqwest::Response> = futures::future::join_all(calls).await;
    let ok = open.iter().filter(|r| r.status() == 200).count();
    let limited: Vec<&reqwest::Response> = open.iter().filter(|r| r.status() == 429).collect();
    assert_eq!((ok, limited.len()), (10, 20));
    assert!(limited.iter().all(|r| r.headers()["x-ratelimit-limit-tokens"] == "160"));
    drop(open);
    // What was used is charged on every replica: once the streams ended, each replica reports
    // the same level, below the quota by their usage.
    let small = json!({"model": "gemma", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1});
    let left = |gw: usize| {
        let (c, gws, small) = (c.clone(), &gws, small.clone());
        async move {
            let r = post(&c, &gws[gw], "tok", &small).await;
            r.headers().get("x-ratelimit-remaining-tokens").map(|v| v.to_str().unwrap().parse::<u64>().unwrap())
        }
    };
    let a = left(0).await.unwrap_or(0);
    assert!(a < 160 - 16, "the burst's usage is charged: {a} left");

    // Concurrency: two streams open (on two replicas) fill the key's two slots everywhere.
    let mut s = chat(48);
    s["stream"] = json!(true);
    let mut first = post(&c, &gws[0], "one", &s).await;
    let mut second = post(&c, &gws[1], "one", &s).await;
    assert_eq!((first.status().as_u16(), second.status().as_u16()), (200, 200));
    let r = post(&c, &gws[2], "one", &chat(1)).await;
    assert_eq!(r.status(), 429, "two in flight on other replicas");
    assert_eq!(r.headers()["x-ratelimit-limit-concurrent"], "2");
    while first.chunk().await.unwrap().is_some() {}
    while second.chunk().await.unwrap().is_some() {}
    eventually("a slot freed by a finished stream is free on every replica", || async {
        post(&c, &gws[2], "one", &chat(1)).await.status() == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_budget_spent_across_replicas_stops_all_of_them() {
    let (redis, pg) = (Redis::start(), Postgres::start());
    // One request costs about 14 prompt tokens × $100/M + 8 × $200/M ≈ $0.003.
    let gws = replicas(&replica_toml(&redis, &pg, "", &[("spender", "budget_usd_per_day = 0.004")]), None).await;
    let c = reqwest::Client::new();
    assert_eq!(post(&c, &gws[0], "spender", &chat(8)).await.status(), 200);
    assert_eq!(post(&c, &gws[1], "spender", &chat(8)).await.status(), 200);
    for gw in &gws {
        eventually("every replica refuses the key once the shared spend is past its budget", || async {
            let r = post(&c, gw, "spender", &chat(1)).await;
            r.status() == 429 && r.json::<Value>().await.unwrap()["error"]["code"] == "insufficient_quota"
        })
        .await;
    }
    // The spend is Redis's, in pico-USD.
    let mut con = redis.client().await;
    let keys: Vec<String> =
        redis::cmd("KEYS").arg("tollgate:lim:{spender}:spend:d*").query_async(&mut con).await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let pico: i64 = redis::cmd("GET").arg(&keys[0]).query_async(&mut con).await.unwrap();
    assert!(pico >= 4_000_000_000, "{pico} pico-USD spent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_costs_no_5xx_and_exact_limits_return() {
    let (mut redis, pg) = (Redis::start(), Postgres::start());
    let clock = Arc::new(ManualClock::new());
    let toml = replica_toml(&redis, &pg, "timeout_ms = 200", &[("team", "requests_per_minute = 30")]);
    let gws = replicas(&toml, Some(clock.clone())).await;
    let c = reqwest::Client::new();
    let ready = |gw: &Gateway| {
        let (c, url) = (c.clone(), gw.url("/ready"));
        async move { c.get(url).send().await.unwrap().json::<Value>().await.unwrap()["cluster"]["redis"].clone() }
    };
    assert_eq!(ready(&gws[0]).await, "up");
    // Under load, Redis dies: every answer is still a 200 or a 429, never a 5xx.
    let one = chat(1);
    let load = burst(&gws, "team", 12, &one);
    let killer = async {
        redis.kill();
    };
    let (statuses, ()) = tokio::join!(load, killer);
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
    let after = burst(&gws, "team", 30, &chat(1)).await;
    assert!(after.iter().all(|s| *s == 200 || *s == 429), "{after:?}");
    for gw in &gws {
        assert_eq!(ready(gw).await, "down");
        assert!(metric(gw, "tollgate_cluster_redis_up").await == 0.0);
    }
    let fallbacks: f64 = {
        let mut sum = 0.0;
        for gw in &gws {
            sum += metric(gw, "tollgate_cluster_fallback_admissions_total").await;
        }
        sum
    };
    assert!(fallbacks >= 30.0, "{fallbacks} admissions decided alone");
    // fail_mode open: beyond a replica's share (30 ÷ 3 = 10) requests are admitted, counted.
    let ok = after.iter().filter(|s| **s == 200).count();
    assert_eq!(ok, 30, "{after:?}");
    // Redis returns (empty): the replicas find it, and the limit is exact again.
    redis.restart();
    for gw in &gws {
        eventually("the replica sees Redis again", || async { ready(gw).await == "up" }).await;
    }
    let statuses = burst(&gws, "team", 60, &chat(1)).await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 30, "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_refuses_beyond_the_share_with_a_429() {
    let (mut redis, pg) = (Redis::start(), Postgres::start());
    let clock = Arc::new(ManualClock::new());
    let toml = replica_toml(&redis, &pg, "fail_mode = \"closed\"", &[("team", "requests_per_minute = 30")]);
    let gws = replicas(&toml, Some(clock.clone())).await;
    redis.kill();
    let statuses = burst(&gws, "team", 60, &chat(1)).await;
    // Each replica's share is 10 requests a minute.
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 30, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 30, "{statuses:?}");
}

async fn usage(c: &reqwest::Client, gw: &Gateway, query: &str) -> reqwest::Response {
    c.get(gw.url(&format!("/v1/usage?{query}"))).bearer_auth(ADMIN).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_covers_every_replica_and_survives_postgres_stopping() {
    let (redis, mut pg) = (Redis::start(), Postgres::start());
    let gws = replicas(&replica_toml(&redis, &pg, "", &[("a", ""), ("b", "")]), None).await;
    let c = reqwest::Client::new();
    for (i, gw) in gws.iter().enumerate() {
        assert_eq!(post(&c, gw, "a", &chat(2)).await.status(), 200);
        assert_eq!(post(&c, gw, if i == 0 { "a" } else { "b" }, &chat(2)).await.status(), 200);
    }
    // Any replica's report is every replica's (its own records at once, the others' once
    // their shippers ran: within a second).
    let by_key = |r: &Value| -> std::collections::HashMap<String, u64> {
        r["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| (g["key"].as_str().unwrap().to_owned(), g["requests"].as_u64().unwrap()))
            .collect()
    };
    let want: std::collections::HashMap<String, u64> = [("a".to_owned(), 4), ("b".to_owned(), 2)].into_iter().collect();
    eventually("the report counts every replica's requests", || async {
        by_key(&usage(&c, &gws[1], "group_by=key").await.json().await.unwrap()) == want
    })
    .await;
    let r: Value = usage(&c, &gws[1], "group_by=key").await.json().await.unwrap();
    assert!(r["data"][0]["cost_usd"].as_str().unwrap().parse::<f64>().unwrap() > 0.0, "{r}");

    // PostgreSQL stops: no request fails, the replicas say so, and the records wait.
    pg.stop();
    for gw in &gws {
        assert_eq!(post(&c, gw, "a", &chat(2)).await.status(), 200);
    }
    for gw in &gws {
        eventually("the replica reports the shared ledger down", || async {
            let r: Value = c.get(gw.url("/ready")).send().await.unwrap().json().await.unwrap();
            r["ledger"]["postgres"] == "down"
        })
        .await;
    }
    assert_eq!(usage(&c, &gws[0], "").await.status(), 503);
    pg.restart();
    for gw in &gws {
        eventually("the records that waited are shipped", || async {
            let r: Value = c.get(gw.url("/ready")).send().await.unwrap().json().await.unwrap();
            r["ledger"]["postgres"] == "up"
        })
        .await;
    }
    eventually("the report counts the records that waited", || async {
        by_key(&usage(&c, &gws[2], "group_by=key").await.json().await.unwrap()).get("a") == Some(&7)
    })
    .await;
    // Each record exactly once, named by the replica that served it.
    let db = pg.client().await;
    let rows =
        db.query("SELECT count(*), count(DISTINCT id), count(DISTINCT replica) FROM requests", &[]).await.unwrap();
    let (n, ids, reps): (i64, i64, i64) = (rows[0].get(0), rows[0].get(1), rows[0].get(2));
    assert_eq!((n, ids, reps), (9, 9, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_cache_is_shared_and_identical_requests_make_one_upstream_call() {
    let (redis, pg) = (Redis::start(), Postgres::start());
    let toml = replica_toml(&redis, &pg, "[cache]\nenabled = true\nttl_secs = 60\nscope = \"global\"", &[("a", "")]);
    let gws = replicas(&toml, None).await;
    let c = reqwest::Client::new();
    let cache = |r: &reqwest::Response| r.headers()["x-tollgate-cache"].to_str().unwrap().to_owned();
    // A miss on one replica is a hit on the others, streamed or not.
    let r = post(&c, &gws[0], "a", &chat(3)).await;
    assert_eq!(cache(&r), "miss");
    let first: Value = r.json().await.unwrap();
    let r = post(&c, &gws[1], "a", &chat(3)).await;
    assert_eq!(cache(&r), "hit");
    let second: Value = r.json().await.unwrap();
    assert_eq!(first["choices"], second["choices"]);
    assert_eq!(first["id"], second["id"], "the stored answer itself");
    let mut s = chat(3);
    s["stream"] = json!(true);
    let r = post(&c, &gws[2], "a", &s).await;
    assert_eq!(cache(&r), "hit");
    let text = r.text().await.unwrap();
    assert_eq!(common::sse_text(&text), first["choices"][0]["message"]["content"].as_str().unwrap());
    // Identical requests arriving on three replicas at once: one leads, two wait for it.
    let body = json!({"model": "gemma", "messages": [{"role": "user", "content": "Count to three."}],
                      "max_tokens": 6, "temperature": 0});
    let calls = gws.iter().map(|gw| {
        let (c, body) = (c.clone(), body.clone());
        async move { cache(&post(&c, gw, "a", &body).await) }
    });
    let mut got = futures::future::join_all(calls).await;
    got.sort();
    assert_eq!(got, ["hit", "hit", "miss"]);
    for gw in &gws {
        assert!(
            metric(gw, "tollgate_cluster_cache_hits_total").await
                + metric(gw, "tollgate_cluster_cache_misses_total").await
                >= 1.0
        );
    }
}

/// One admin change on `gw`: (status, body).
async fn admin(c: &reqwest::Client, gw: &Gateway, path: &str, body: Value) -> (u16, Value) {
    let r = c.post(gw.url(&format!("/v1/admin/models/{path}"))).bearer_auth(ADMIN).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// The version that answers `user` on `gw`.
async fn version(c: &reqwest::Client, gw: &Gateway, user: &str) -> String {
    let body = json!({"model": "chat", "user": user, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]});
    let r = c.post(gw.url("/v1/chat/completions")).bearer_auth("a").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.headers()["x-tollgate-model-version"].to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_started_on_one_replica_is_served_by_the_others_and_the_trail_is_one() {
    let (redis, pg) = (Redis::start(), Postgres::start());
    // The replicas share the registry (a directory every replica mounts).
    let shared = tempfile::tempdir().unwrap();
    let registry = tollgate::registry::Registry::new(shared.path().join("registry"));
    for v in ["1.0.0", "1.1.0"] {
        let e = tollgate::registry::Endpoint {
            kind: "openai".into(),
            base_url: common::llama_server(),
            model: "gemma".into(),
        };
        registry.add_remote("chat", v, e, None, Default::default()).unwrap();
    }
    let toml = replica_toml(&redis, &pg, "", &[("a", "")])
        + &format!("[registry]\ndir = \"{}\"\n", shared.path().join("registry").display());
    let routes =
        "[[alias]]\nname = \"chat\"\n[[alias.deployment]]\nname = \"chat\"\nkind = \"registry\"\nmodel = \"chat\"\n\n\
                  [[model]]\nname = \"chat\"\nproduction = \"1.0.0\"\n";
    let mut gws = Vec::new();
    for _ in 0..3 {
        gws.push(Gateway::start(&toml, &[("chat.toml", routes)]).await);
    }
    let c = reqwest::Client::new();
    for gw in &gws {
        assert_eq!(version(&c, gw, "u1").await, "chat@1.0.0");
    }
    // A canary at 100% through replica A: B and C serve it on their next requests.
    let (s, v) =
        admin(&c, &gws[0], "chat/canary", json!({"version": "1.1.0", "weight": 100, "reason": "try it"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(version(&c, &gws[0], "u1").await, "chat@1.1.0");
    let announced = Instant::now();
    for gw in &gws[1..] {
        eventually("the other replicas adopt the canary", || async { version(&c, gw, "u1").await == "chat@1.1.0" })
            .await;
    }
    println!("canary adopted by the other replicas {} ms after the change", announced.elapsed().as_millis());
    // Rolled back (weight 0) through replica C: A and B follow.
    let (s, v) = admin(&c, &gws[2], "chat/canary", json!({"weight": 0, "reason": "enough"})).await;
    assert_eq!(s, 200, "{v}");
    for gw in &gws[..2] {
        eventually("the other replicas stop the canary", || async { version(&c, gw, "u1").await == "chat@1.0.0" })
            .await;
    }
    // One audit trail, whichever replica is asked.
    let r: Value =
        c.get(gws[1].url("/v1/admin/models/chat/audit")).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap();
    let actions: Vec<&str> = r["data"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["seed", "canary", "weight"], "{r}");
    assert_eq!(r["data"][1]["reason"], "try it");
    // A change planned against stages that another replica changed meanwhile is refused.
    let db = pg.client().await;
    let n = db.execute("UPDATE release_stages SET canary_weight = 5 WHERE model = 'chat'", &[]).await.unwrap();
    assert_eq!(n, 1);
    let (s, v) = admin(&c, &gws[0], "chat/canary", json!({"weight": 50})).await;
    assert_eq!(s, 409, "{v}");
}

#[test]
fn the_compose_gateway_file_passes_check_config() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["check-config", "--config", "deploy/compose.toml"])
        .envs([
            ("TOLLGATE_MODEL", "/models/gemma.gguf"),
            ("TOLLGATE_ADMIN_KEY", "a"),
            ("TOLLGATE_DEV_KEY", "d"),
            ("TOLLGATE_POSTGRES_PASSWORD", "p"),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("cluster: redis redis:6379/0, 2 replica(s), fail_mode open"), "{stdout}");
    assert!(stdout.contains("ledger: PostgreSQL postgres:5432/tollgate"), "{stdout}");
    // A cluster without the shared ledger is refused, and so is a literal password.
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("t.toml"), "[cluster]\nredis_url = \"redis://:hunter2@127.0.0.1:6379/0\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["check-config", "--config"])
        .arg(d.path().join("t.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(text.contains("cluster.redis_url: a password is not allowed in a config file"), "{text}");
    assert!(text.contains("the replicas need one ledger: set ledger.postgres_url"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

/// The load balancer of docker-compose.yml, as shipped but for its upstreams' addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_load_balancer_spreads_requests_and_streams_sse() {
    let (redis, pg) = (Redis::start(), Postgres::start());
    let toml = replica_toml(&redis, &pg, "", &[("a", "")]);
    let a = Gateway::start(&toml, &[("a.toml", &route())]).await;
    let b = Gateway::start(&toml, &[("a.toml", &route())]).await;
    let port = common::free_port();
    let conf = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx.conf"))
        .unwrap()
        .replace("tollgate-1:8080", &a.running.addr.to_string())
        .replace("tollgate-2:8080", &b.running.addr.to_string())
        .replace("listen 8080;", &format!("listen 127.0.0.1:{port};"));
    let (_nginx, _dir) = common::servers::nginx(&conf);
    let lb = format!("http://127.0.0.1:{port}");
    let c = reqwest::Client::new();
    eventually("nginx listens", || async { c.get(format!("{lb}/health")).send().await.is_ok() }).await;
    // A stream arrives as a stream, through the balancer.
    let mut s = chat(4);
    s["stream"] = json!(true);
    let r = c.post(format!("{lb}/v1/chat/completions")).bearer_auth("a").json(&s).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let body = r.text().await.unwrap();
    assert_eq!(common::sse_data(&body).last().map(String::as_str), Some("[DONE]"), "{body}");
    // Requests reach both replicas.
    for _ in 0..6 {
        let r = c.post(format!("{lb}/v1/chat/completions")).bearer_auth("a").json(&chat(1)).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let served = |gw: &Gateway| {
        let (c, url) = (c.clone(), gw.url("/metrics"));
        async move {
            let text = c.get(url).send().await.unwrap().text().await.unwrap();
            text.lines()
                .filter(|l| l.starts_with("tollgate_requests_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        }
    };
    let (na, nb) = (served(&a).await, served(&b).await);
    assert!(na >= 1.0 && nb >= 1.0 && na + nb >= 7.0, "a served {na}, b served {nb}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_outlives_a_kill_9_of_a_replica_running_it_and_every_line_appears_once() {
    let (redis, pg) = (Redis::start(), Postgres::start());
    let toml = replica_toml(&redis, &pg, "", &[("a", "")]) + "lease_ms = 1500\nconcurrency = 2\n";
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    for d in &dirs {
        std::fs::write(d.path().join("tollgate.toml"), &toml).unwrap();
        std::fs::create_dir_all(d.path().join("routes")).unwrap();
        std::fs::write(d.path().join("routes/a.toml"), route()).unwrap();
    }
    let (mut a, a_addr) = common::serve_binary(dirs[0].path());
    let (_b, b_addr) = common::serve_binary(dirs[1].path());
    let c = reqwest::Client::new();
    let n = 16;
    let mut input = Vec::new();
    for i in 0..n {
        let line = json!({"custom_id": format!("line-{i}"), "method": "POST", "url": "/v1/chat/completions",
                          "body": {"model": "gemma", "max_tokens": 12, "messages": [{"role": "user", "content": format!("Count to {i}.")}]}});
        input.extend(serde_json::to_vec(&line).unwrap());
        input.push(b'\n');
    }
    // Uploaded to A, created on A, read through B.
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part("file", reqwest::multipart::Part::bytes(input).file_name("in.jsonl"));
    let f: Value = c
        .post(format!("http://{a_addr}/v1/files"))
        .bearer_auth("a")
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let body = json!({"input_file_id": f["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"});
    let r = c.post(format!("http://{a_addr}/v1/batches")).bearer_auth("a").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let batch: Value = r.json().await.unwrap();
    let id = batch["id"].as_str().unwrap().to_owned();
    let get = |addr: String| {
        let (c, id) = (c.clone(), id.clone());
        async move {
            c.get(format!("http://{addr}/v1/batches/{id}"))
                .bearer_auth("a")
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    eventually("some lines are done", || async {
        get(b_addr.clone()).await["request_counts"]["completed"].as_u64().unwrap() >= 2
    })
    .await;
    // A dies holding lines: their leases expire and B runs them.
    let db = pg.client().await;
    let held: i64 = db
        .query_one("SELECT count(*) FROM batch_lines WHERE out IS NULL AND owner IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    a.kill().unwrap();
    a.wait().unwrap();
    println!("A killed holding {held} line(s)");
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = loop {
        let b = get(b_addr.clone()).await;
        if b["status"] == "completed" {
            break b;
        }
        assert!(Instant::now() < deadline, "the batch did not complete: {b}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(done["request_counts"]["total"], n);
    assert_eq!(done["request_counts"]["completed"], n, "{done}");
    let out = c
        .get(format!("http://{b_addr}/v1/files/{}/content", done["output_file_id"].as_str().unwrap()))
        .bearer_auth("a")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ids: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["custom_id"].as_str().unwrap().to_owned())
        .collect();
    let want: Vec<String> = (0..n).map(|i| format!("line-{i}")).collect();
    assert_eq!(ids, want, "every line once, in input order");
    // Batches are the replicas': B lists the one A created.
    let list: Value =
        c.get(format!("http://{b_addr}/v1/batches")).bearer_auth("a").send().await.unwrap().json().await.unwrap();
    assert_eq!(list["data"][0]["id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_response_is_every_replicas_and_its_deletion_too() {
    let (redis, pg) = (Redis::start(), Postgres::start());
    let gws = replicas(&replica_toml(&redis, &pg, "", &[("a", ""), ("b", "")]), None).await;
    let c = reqwest::Client::new();
    let respond = |gw: &Gateway, key: &'static str, body: Value| {
        let (c, url) = (c.clone(), gw.url("/v1/responses"));
        async move {
            let r = c.post(url).bearer_auth(key).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (s, first) = respond(&gws[0], "a", json!({"model": "gemma", "input": "Say hi.", "max_output_tokens": 4})).await;
    assert_eq!(s, 200, "{first}");
    let id = first["id"].as_str().unwrap().to_owned();
    // Continued on B the moment A answered; its chain is A's.
    let (s, second) = respond(
        &gws[1],
        "a",
        json!({"model": "gemma", "input": "Again.", "previous_response_id": id, "max_output_tokens": 4}),
    )
    .await;
    assert_eq!(s, 200, "{second}");
    assert_eq!(second["previous_response_id"], id.as_str());
    // Retrieved on C, with its input items; another key sees nothing.
    let get = |gw: &Gateway, key: &'static str, path: String| {
        let (c, url) = (c.clone(), gw.url(&path));
        async move { c.get(url).bearer_auth(key).send().await.unwrap() }
    };
    let r = get(&gws[2], "a", format!("/v1/responses/{id}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["id"], id.as_str());
    let items: Value = get(&gws[2], "a", format!("/v1/responses/{id}/input_items")).await.json().await.unwrap();
    assert_eq!(items["data"][0]["content"][0]["text"], "Say hi.", "{items}");
    assert_eq!(get(&gws[2], "b", format!("/v1/responses/{id}")).await.status(), 404);
    // Deleted through B: gone on A too, whose own copy does not bring it back.
    let r = c.delete(gws[1].url(&format!("/v1/responses/{id}"))).bearer_auth("a").send().await.unwrap();
    assert_eq!(r.status(), 200);
    for gw in &gws {
        assert_eq!(get(gw, "a", format!("/v1/responses/{id}")).await.status(), 404);
    }
    let (s, e) = respond(
        &gws[0],
        "a",
        json!({"model": "gemma", "input": "More.", "previous_response_id": id, "max_output_tokens": 4}),
    )
    .await;
    assert_eq!(s, 400, "{e}");
    assert_eq!(e["error"]["code"], "previous_response_not_found");
}

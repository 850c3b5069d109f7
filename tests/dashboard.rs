//! The dashboard in a real browser (headless Chromium through chromedriver) against a real
//! gateway: the embedded engine on the test GGUF, and a registry model whose two versions a
//! real llama-server serves. The page and its data need the admin key; after N requests the
//! page shows N more without a reload; the charts render without a script error; a canary
//! started from the page is served, and its rollback button restores production; axe-core
//! (vendored under tests/data/axe, MPL-2.0) finds no WCAG 2.1 A/AA violation on the login
//! form or the page. Screenshots go to target/test-artifacts/.
#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests and benches: a panic is the report

mod common;

use std::time::Duration;

use common::browser::Browser;
use common::Gateway;
use serde_json::{json, Value};
use tollgate::registry::{Endpoint, Registry};

const ADMIN: &str = "admin-dashboard-test-key";
const KEY: &str = "team-dashboard-test-key";

const ROUTES: &str = "[[alias]]\nname = \"gemma\"\n[[alias.deployment]]\nname = \"gemma-local\"\nkind = \"local\"\npath = \"${TOLLGATE_TEST_MODEL}\"\ncontext = 1024\nparallel = 2\nthreads = 2\nprice = { input = 0.15, cached_input = 0.075, output = 0.6 }\n\n[[alias]]\nname = \"chat\"\n[[alias.deployment]]\nname = \"chat\"\nkind = \"registry\"\nmodel = \"chat\"\n\n[[model]]\nname = \"chat\"\nproduction = \"1.0.0\"\nrollback.enabled = false\n";

async fn gateway() -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::new(dir.path().join("data").join("registry"));
    let upstream = common::llama_server();
    for v in ["1.0.0", "1.1.0"] {
        let e = Endpoint { kind: "openai".into(), base_url: upstream.clone(), model: "gemma".into() };
        registry.add_remote("chat", v, e, None, Default::default()).unwrap();
    }
    let gw = "[auth]\nadmin_key = \"${ADMIN}\"\n[[auth.keys]]\nname = \"team\"\nkey = \"${KEY}\"\naliases = [\"*\"]\nrequests_per_minute = 600\nbudget_usd_per_day = 5\n";
    let model = common::test_model();
    let env = [("ADMIN", ADMIN), ("KEY", KEY), ("TOLLGATE_TEST_MODEL", model.to_str().unwrap())];
    Gateway::start_in(dir, gw, &[("routes.toml", ROUTES)], &[], &env, None).await
}

/// The overview's request count as the page shows it ("1,234"), once the page has loaded it.
const REQUESTS_TILE: &str = "const e = document.getElementById('total-requests'); return e ? e.textContent : false;";

fn number(shown: &Value) -> u64 {
    shown.as_str().unwrap_or_default().chars().filter(char::is_ascii_digit).collect::<String>().parse().unwrap_or(0)
}

/// axe-core's WCAG 2.1 A and AA violations on the current page (id, impact, what, where).
async fn axe(b: &Browser) -> Vec<Value> {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/axe/axe.min.js")).unwrap();
    b.eval(&format!("{src}\n;return typeof axe;"), json!([])).await;
    let run = "const done = arguments[arguments.length - 1];\
        axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})\
        .then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,\
            nodes: v.nodes.slice(0, 3).map(n => n.target.join(' ') + ': ' + n.failureSummary)}))))\
        .catch(e => done([{id: 'axe-failed', help: String(e)}]));";
    b.eval_async(run, json!([])).await.as_array().cloned().unwrap()
}

/// The canary weight of `chat@1.1.0` (None when it is not staged).
async fn canary_weight(gw: &Gateway) -> Option<f64> {
    let r = reqwest::Client::new().get(gw.url("/v1/admin/models")).bearer_auth(ADMIN).send().await.unwrap();
    let v: Value = r.json().await.unwrap();
    let staged = v["data"].as_array()?.iter().find(|m| m["id"] == "chat@1.1.0" && m["stage"] == "staging")?.clone();
    staged["canary_weight"].as_f64()
}

/// The versions that answer twenty distinct users of the alias `chat`.
async fn versions_serving(gw: &Gateway) -> std::collections::BTreeSet<String> {
    let c = reqwest::Client::new();
    let mut out = std::collections::BTreeSet::new();
    for u in 0..20 {
        let body = json!({"model": "chat", "user": format!("user-{u}"), "max_tokens": 1,
            "messages": [{"role": "user", "content": "Say hi"}]});
        let r = c.post(gw.url("/v1/chat/completions")).bearer_auth(KEY).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200);
        out.insert(r.headers()["x-tollgate-model-version"].to_str().unwrap().to_owned());
        let _ = r.bytes().await;
    }
    out
}

/// Waits (at most 30 s) until the canary's weight is `want`.
async fn weight_becomes(gw: &Gateway, want: f64) -> Option<f64> {
    let mut w = None;
    for _ in 0..300 {
        w = canary_weight(gw).await;
        if w == Some(want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w
}

#[tokio::test]
async fn the_dashboard_shows_live_traffic_and_drives_a_canary_in_a_real_browser() {
    let gw = gateway().await;
    let http = reqwest::Client::new();

    // Without the admin key: the page is the login form, the data endpoints refuse.
    let r = http.get(gw.url("/dashboard")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("name=\"key\""), "the login form");
    for path in ["/admin/dashboard/figures?range=15m", "/admin/dashboard/state"] {
        let r = http.get(gw.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let r = http.get(gw.url(path)).bearer_auth(KEY).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}: an API key is not the admin key");
        let r = http.get(gw.url(path)).bearer_auth(ADMIN).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    // A change needs the admin key or the page's session with its CSRF token.
    let r = http
        .post(gw.url("/v1/admin/models/chat/rollback"))
        .header("cookie", "tollgate_session=forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let b = Browser::start().await;
    b.goto(&gw.url("/dashboard")).await;
    let login = axe(&b).await;
    assert!(login.is_empty(), "the login form's WCAG A/AA violations: {login:#?}");
    b.type_into("#key", "not the key").await;
    b.click("button[type=submit]").await;
    b.wait_for("return document.querySelector('[role=alert]')?.textContent", Duration::from_secs(10))
        .await
        .expect("a wrong key is refused with a message");
    b.type_into("#key", ADMIN).await;
    b.click("button[type=submit]").await;
    let before = b.wait_for(REQUESTS_TILE, Duration::from_secs(20)).await.expect("the page loads its figures");
    let before = number(&before);
    // The login form came with a 401, as it should: the console is read from here on.
    b.console().await;

    // N requests through three APIs, one streamed: the page shows N more within 5 seconds.
    let chat = json!({"model": "gemma", "max_tokens": 4, "messages": [{"role": "user", "content": "Say hi"}]});
    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    let messages = json!({"model": "gemma", "max_tokens": 4, "messages": [{"role": "user", "content": "Say hi"}]});
    let responses = json!({"model": "gemma", "max_output_tokens": 4, "input": "Say hi"});
    let sent = [
        ("/v1/chat/completions", chat.clone()),
        ("/v1/chat/completions", streamed),
        ("/v1/messages", messages),
        ("/v1/responses", responses),
        ("/v1/chat/completions", chat),
    ];
    for (path, body) in &sent {
        let r = http.post(gw.url(path)).bearer_auth(KEY).json(body).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let _ = r.bytes().await.unwrap();
    }
    let want = before + sent.len() as u64;
    let check = format!("const n = (function() {{ {REQUESTS_TILE} }})(); return n && Number(n.replace(/[^0-9]/g, '')) === {want} ? n : false;");
    let seen = b.wait_for(&check, Duration::from_secs(5)).await;
    let now = b.eval(REQUESTS_TILE, json!([])).await;
    assert!(seen.is_ok(), "the page shows {want} requests within 5 s (it shows {now})");

    // The charts rendered, and nothing went wrong in the page's scripts.
    let canvases = b.eval("return document.querySelectorAll('.uplot canvas').length", json!([])).await;
    assert!(canvases.as_u64().unwrap() >= 5, "five charts: {canvases}");
    let errors = b.eval("return window.dashboardErrors", json!([])).await;
    assert_eq!(errors, json!([]), "script errors in the page");
    let severe: Vec<Value> = b.console().await.into_iter().filter(|m| m["level"] == "SEVERE").collect();
    assert!(severe.is_empty(), "console errors: {severe:#?}");
    let text = b.eval("return document.body.innerText", json!([])).await;
    let text = text.as_str().unwrap();
    for shown in ["gemma-local", "messages", "responses", "team", "chat@1.1.0"] {
        assert!(text.contains(shown), "the page names {shown}");
    }
    let shot = b.screenshot("dashboard").await;
    println!("screenshot: {}", shot.display());

    // A canary started from the page is served; its rollback button restores production.
    assert_eq!(canary_weight(&gw).await, None);
    b.click("button[data-action=canary][data-version='chat@1.1.0']").await;
    b.type_into("#confirm-weight", "50").await;
    b.type_into("#confirm-reason", "started from the dashboard test").await;
    b.click("#confirm-ok").await;
    assert_eq!(weight_becomes(&gw, 50.0).await, Some(50.0), "the canary is staged at the weight given");
    let both = versions_serving(&gw).await;
    assert!(both.contains("chat@1.1.0") && both.contains("chat@1.0.0"), "both versions answer: {both:?}");
    let r = http.get(gw.url("/v1/models/chat")).bearer_auth(KEY).send().await.unwrap();
    let m: Value = r.json().await.unwrap();
    assert!(
        m["deployments"].as_array().unwrap().iter().any(|d| d["stage"] == "staging" && d["version"] == "chat@1.1.0"),
        "/v1/models shows the canary: {m}"
    );
    b.wait_for("return document.querySelector('button[data-action=stop]') !== null", Duration::from_secs(10))
        .await
        .expect("the page offers the canary's rollback");
    let page = axe(&b).await;
    assert!(page.is_empty(), "the dashboard's WCAG A/AA violations: {page:#?}");
    b.screenshot("dashboard-canary").await;
    b.click("button[data-action=stop]").await;
    b.type_into("#confirm-reason", "rolled back from the dashboard test").await;
    b.click("#confirm-ok").await;
    assert_eq!(weight_becomes(&gw, 0.0).await, Some(0.0), "the canary's weight is 0");
    let only = versions_serving(&gw).await;
    assert_eq!(only, ["chat@1.0.0".to_owned()].into(), "production serves alone again");
    let r = http.get(gw.url("/v1/admin/models/chat/audit")).bearer_auth(ADMIN).send().await.unwrap();
    let audit: Value = r.json().await.unwrap();
    let reasons: Vec<&str> = audit["data"].as_array().unwrap().iter().filter_map(|e| e["reason"].as_str()).collect();
    assert!(reasons.contains(&"started from the dashboard test"), "{audit}");
    assert!(reasons.contains(&"rolled back from the dashboard test"), "{audit}");
    let actors: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"].as_str().is_some_and(|r| r.contains("dashboard test")))
        .filter_map(|e| e["actor"].as_str())
        .collect();
    assert_eq!(actors.len(), 2, "{audit}");
    assert!(actors.iter().all(|a| a.starts_with("admin:")), "the session acts as the admin: {actors:?}");

    // Behind a reverse proxy, under a prefix: the page, its assets, its data and its login
    // all work from relative URLs.
    let port = common::free_port();
    let addr = gw.running.addr;
    let (_nginx, _dir) = common::servers::nginx(&format!(
        "worker_processes 1;\nevents {{}}\nhttp {{\naccess_log off;\nserver {{\n listen 127.0.0.1:{port};\n location /tollgate/ {{\n  proxy_pass http://{addr}/;\n  proxy_http_version 1.1;\n  proxy_set_header Connection \"\";\n }}\n}}\n}}"
    ));
    let proxied = format!("http://127.0.0.1:{port}/tollgate/dashboard");
    let mut up = false;
    for _ in 0..100 {
        if http.get(&proxied).send().await.is_ok_and(|r| r.status() == 401) {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "nginx serves the login form at {proxied}");
    b.goto(&proxied).await;
    // Logged in already (the cookie is the host's): log out, then in again, through the proxy.
    b.click("#logout button").await;
    b.wait_for("return document.getElementById('key') !== null && location.pathname", Duration::from_secs(10))
        .await
        .expect("logged out to the login form");
    b.type_into("#key", ADMIN).await;
    b.click("button[type=submit]").await;
    let check = format!("const n = (function() {{ {REQUESTS_TILE} }})(); return n && Number(n.replace(/[^0-9]/g, '')) >= {want} ? location.pathname : false;");
    let path = b.wait_for(&check, Duration::from_secs(10)).await.expect("the page's figures load through the proxy");
    assert_eq!(path, "/tollgate/dashboard");
    let errors = b.eval("return window.dashboardErrors", json!([])).await;
    assert_eq!(errors, json!([]), "script errors behind the proxy");
    b.quit().await;
}

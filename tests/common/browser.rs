//! A real browser for the dashboard's tests: Debian's `chromium`, headless, driven through
//! `chromedriver` over the W3C WebDriver protocol (a few JSON calls, made with reqwest).
//! `TOLLGATE_CHROMIUM` and `TOLLGATE_CHROMEDRIVER` name the binaries (scripts/setup.sh
//! `--browser` installs them and exports both). The driver is killed with the test binary
//! (PR_SET_PDEATHSIG) and writes nowhere the test runner reads, so an orphaned browser
//! cannot hold the runner's pipes.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    base: String,
    http: reqwest::Client,
    pub session: String,
}

fn binary(var: &str, default: &str) -> PathBuf {
    let p = std::env::var(var).map(PathBuf::from).unwrap_or_else(|_| PathBuf::from(default));
    assert!(p.exists(), "{} is missing ({var}): run the tests through scripts/test.sh, which installs it", p.display());
    p
}

impl Browser {
    /// Starts chromedriver on a free port and opens a headless session.
    pub async fn start() -> Browser {
        use std::os::unix::process::CommandExt;
        let driver = binary("TOLLGATE_CHROMEDRIVER", "/usr/bin/chromedriver");
        let chromium = binary("TOLLGATE_CHROMIUM", "/usr/bin/chromium");
        let port = super::free_port();
        let (tx, rx) = std::sync::mpsc::channel();
        // Spawned from a thread that lives as long as the test binary: PR_SET_PDEATHSIG
        // (the parent thread's death) ends the driver, and with it the browser, then.
        std::thread::spawn(move || {
            let mut cmd = Command::new(driver);
            cmd.arg(format!("--port={port}")).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let mut child = cmd.spawn().expect("start chromedriver");
            tx.send(()).unwrap();
            let _ = child.wait();
        });
        rx.recv().unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = http.get(format!("{base}/status")).send().await;
            if let Ok(r) = up {
                let v: Value = r.json().await.unwrap_or_default();
                if v["value"]["ready"] == true {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1400,1800", "--lang=en-US", "--no-first-run"],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let r = http.post(format!("{base}/session")).json(&caps).send().await.unwrap();
        let v: Value = r.json().await.unwrap();
        let session =
            v["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {v}")).to_owned();
        Browser { base, http, session }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut rb = self.http.request(method, url);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let v: Value = rb.send().await.unwrap().json().await.unwrap();
        if v["value"].get("error").is_some() {
            panic!("WebDriver {path}: {v}");
        }
        v["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url}))).await;
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page; its return value.
    pub async fn eval(&self, script: &str, args: Value) -> Value {
        self.call(reqwest::Method::POST, "/execute/sync", Some(json!({"script": script, "args": args}))).await
    }

    /// Runs `script`, which calls `arguments[arguments.length - 1]` with its result.
    pub async fn eval_async(&self, script: &str, args: Value) -> Value {
        self.call(reqwest::Method::POST, "/timeouts", Some(json!({"script": 60_000}))).await;
        self.call(reqwest::Method::POST, "/execute/async", Some(json!({"script": script, "args": args}))).await
    }

    /// The element `css` selects (the first), as WebDriver names it.
    pub async fn find(&self, css: &str) -> String {
        let v =
            self.call(reqwest::Method::POST, "/element", Some(json!({"using": "css selector", "value": css}))).await;
        v[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}: {v}")).to_owned()
    }

    pub async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.call(reqwest::Method::POST, &format!("/element/{id}/click"), Some(json!({}))).await;
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.call(reqwest::Method::POST, &format!("/element/{id}/clear"), Some(json!({}))).await;
        self.call(reqwest::Method::POST, &format!("/element/{id}/value"), Some(json!({"text": text}))).await;
    }

    /// Waits until `script` returns something truthy, at most `within`; its last value.
    pub async fn wait_for(&self, script: &str, within: Duration) -> Result<Value, Value> {
        let deadline = Instant::now() + within;
        loop {
            let v = self.eval(script, json!([])).await;
            if !(v.is_null() || v == false || v == "" || v == 0) {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                return Err(v);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The browser console's messages since the last call (chromedriver's log endpoint).
    pub async fn console(&self) -> Vec<Value> {
        let url = format!("{}/session/{}/se/log", self.base, self.session);
        let r = self.http.post(url).json(&json!({"type": "browser"})).send().await.unwrap();
        let v: Value = r.json().await.unwrap_or_default();
        v["value"].as_array().cloned().unwrap_or_default()
    }

    /// A PNG of the whole page, saved at `target/test-artifacts/NAME.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        use base64::Engine;
        // The window as tall as the page, so the shot holds all of it.
        let h = self
            .eval("window.scrollTo(0, 0); return Math.ceil(document.documentElement.scrollHeight)", json!([]))
            .await;
        let h = h.as_u64().unwrap_or(1800).clamp(600, 8000);
        self.call(reqwest::Method::POST, "/window/rect", Some(json!({"width": 1400, "height": h}))).await;
        let v = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        self.call(reqwest::Method::POST, "/window/rect", Some(json!({"width": 1400, "height": 1800}))).await;
        path
    }

    /// Ends the session (and the browser).
    pub async fn quit(self) {
        let _ = self.http.delete(format!("{}/session/{}", self.base, self.session)).send().await;
    }
}

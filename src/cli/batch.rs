//! `tollgate batch run INPUT.jsonl -o OUTPUT.jsonl`: uploads the input, creates the batch,
//! shows progress (done/total, rate, ETA) and downloads the results (failed lines go to
//! `OUTPUT.errors.jsonl`). The batch id is kept in `OUTPUT.tollgate-batch` with the input's
//! SHA-256, so running the same command again after an interruption follows the same batch
//! instead of starting over.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::batch::BatchStatus;

pub struct Args {
    pub url: String,
    pub api_key: Option<String>,
    pub input: PathBuf,
    pub output: PathBuf,
    pub completion_window: String,
    /// No progress bar (for logs and tests).
    pub quiet: bool,
}

fn state_path(output: &Path) -> PathBuf {
    let mut s = output.as_os_str().to_owned();
    s.push(".tollgate-batch");
    PathBuf::from(s)
}

fn with_suffix(output: &Path, suffix: &str) -> PathBuf {
    let mut s = output.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

struct Api {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Api {
    fn req(&self, m: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(m, format!("{}{path}", self.base));
        match &self.key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    async fn json(&self, r: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let resp = r.send().await.map_err(|e| anyhow!("cannot reach {}: {e}", self.base))?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{status}: {}", v["error"]["message"].as_str().unwrap_or("no message"));
        }
        Ok(v)
    }

    async fn bytes(&self, path: &str) -> anyhow::Result<bytes::Bytes> {
        let resp = self.req(reqwest::Method::GET, path).send().await?;
        if !resp.status().is_success() {
            bail!("{}: could not download {path}", resp.status());
        }
        Ok(resp.bytes().await?)
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(run_async(a))
}

async fn run_async(a: Args) -> anyhow::Result<()> {
    let input = std::fs::read(&a.input).with_context(|| format!("cannot read {}", a.input.display()))?;
    let sha = hex::encode(crate::config::sha256(&input));
    let api =
        Api { http: reqwest::Client::new(), base: a.url.trim_end_matches('/').to_owned(), key: a.api_key.clone() };
    let state = state_path(&a.output);
    let previous: Option<Value> = std::fs::read(&state)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|s: &Value| s["input_sha256"] == sha.as_str());
    let mut batch: Option<Value> = None;
    if let Some(id) = previous.as_ref().and_then(|s| s["batch_id"].as_str()) {
        match api.json(api.req(reqwest::Method::GET, &format!("/v1/batches/{id}"))).await {
            Ok(b)
                if !matches!(status(&b), Some(BatchStatus::Failed | BatchStatus::Expired | BatchStatus::Cancelled)) =>
            {
                eprintln!("resuming batch {id} ({})", b["status"].as_str().unwrap_or("?"));
                batch = Some(b);
            }
            _ => {}
        }
    }
    let mut batch = match batch {
        Some(b) => b,
        None => {
            let endpoint = input
                .split(|b| *b == b'\n')
                .find(|l| !l.iter().all(u8::is_ascii_whitespace))
                .and_then(|l| serde_json::from_slice::<Value>(l).ok())
                .and_then(|v| v["url"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "/v1/chat/completions".into());
            let name = a.input.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or("input.jsonl".into());
            let form = reqwest::multipart::Form::new()
                .text("purpose", "batch")
                .part("file", reqwest::multipart::Part::bytes(input.clone()).file_name(name));
            let file = api.json(api.req(reqwest::Method::POST, "/v1/files").multipart(form)).await?;
            let body =
                json!({"input_file_id": file["id"], "endpoint": endpoint, "completion_window": a.completion_window});
            let b = api.json(api.req(reqwest::Method::POST, "/v1/batches").json(&body)).await?;
            if status(&b) == Some(BatchStatus::Failed) {
                let mut msg = String::from("the input was refused:\n");
                for e in b["errors"]["data"].as_array().into_iter().flatten() {
                    match e["line"].as_u64() {
                        Some(l) => msg.push_str(&format!("  line {l}: {}\n", e["message"].as_str().unwrap_or(""))),
                        None => msg.push_str(&format!("  {}\n", e["message"].as_str().unwrap_or(""))),
                    }
                }
                bail!("{}", msg.trim_end());
            }
            let st = json!({"batch_id": b["id"], "input_sha256": sha, "url": api.base});
            std::fs::write(&state, serde_json::to_vec_pretty(&st)?)
                .with_context(|| format!("cannot write {}", state.display()))?;
            eprintln!("batch {} created: {} requests", b["id"].as_str().unwrap_or("?"), b["request_counts"]["total"]);
            b
        }
    };
    let id = batch["id"].as_str().unwrap_or_default().to_owned();
    let t0 = Instant::now();
    let done_at_start = done(&batch);
    let end = loop {
        if !a.quiet {
            progress(&batch, done_at_start, t0.elapsed());
        }
        if let Some(end) = status(&batch).filter(|s| s.is_final()) {
            if !a.quiet {
                eprintln!();
            }
            break end;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        batch = api.json(api.req(reqwest::Method::GET, &format!("/v1/batches/{id}"))).await?;
    };
    if end == BatchStatus::Failed {
        bail!("batch {id} failed: {}", batch["errors"]);
    }
    let mut written = 0;
    if let Some(f) = batch["output_file_id"].as_str() {
        let data = api.bytes(&format!("/v1/files/{f}/content")).await?;
        crate::batch::files::write_atomic(&a.output, &data)?;
        written = data.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count();
    } else {
        crate::batch::files::write_atomic(&a.output, b"")?;
    }
    let mut failed = 0;
    if let Some(f) = batch["error_file_id"].as_str() {
        let data = api.bytes(&format!("/v1/files/{f}/content")).await?;
        let path = with_suffix(&a.output, ".errors.jsonl");
        crate::batch::files::write_atomic(&path, &data)?;
        failed = data.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count();
        eprintln!("{failed} failed lines: {}", path.display());
    }
    let _ = std::fs::remove_file(&state);
    eprintln!("batch {id} {end}: {written} results in {}", a.output.display());
    if end != BatchStatus::Completed {
        bail!("the batch ended {end} with {} of {} lines done", written + failed, batch["request_counts"]["total"]);
    }
    Ok(())
}

/// The batch's status as the gateway reports it; `None` for one this client does not know.
fn status(b: &Value) -> Option<BatchStatus> {
    BatchStatus::deserialize(&b["status"]).ok()
}

fn done(b: &Value) -> u64 {
    b["request_counts"]["completed"].as_u64().unwrap_or(0) + b["request_counts"]["failed"].as_u64().unwrap_or(0)
}

fn progress(b: &Value, done_at_start: u64, elapsed: Duration) {
    let total = b["request_counts"]["total"].as_u64().unwrap_or(0);
    let d = done(b);
    let frac = if total > 0 { d as f64 / total as f64 } else { 0.0 };
    let width = 30;
    let filled = (frac * width as f64).round() as usize;
    let rate = (d.saturating_sub(done_at_start)) as f64 / elapsed.as_secs_f64().max(0.001);
    let eta = if rate > 0.0 { format!("{:.0}s", (total - d) as f64 / rate) } else { "-".into() };
    let mut e = std::io::stderr();
    let _ = write!(
        e,
        "\r[{}{}] {d}/{total} {:>3.0}%  {rate:.1} req/s  ETA {eta}  {}    ",
        "#".repeat(filled),
        ".".repeat(width - filled),
        frac * 100.0,
        b["status"].as_str().unwrap_or("")
    );
    let _ = e.flush();
}

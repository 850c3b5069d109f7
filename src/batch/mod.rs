//! The OpenAI Batch API on tollgate's own backends: files ([`files`]), input validation
//! ([`input`]), and the batches themselves: their store and their runner.
//!
//! A batch lives in `<data_dir>/batches/<id>/`: `batch.json` (the OpenAI batch object plus
//! who created it, rewritten atomically), `input.jsonl` (a copy of the validated lines), and
//! `results.jsonl`, where each finished line is appended once, as one JSON line holding its
//! line index and its output (or error) line.
//!
//! **Exactly once.** A line's result is appended after its request ended; at start (and after
//! a `kill -9`) the results file is read back, and every line it holds is done and is not run
//! again. A line cut by a crash is ignored (that line runs again); a line whose request
//! finished but whose result was not yet appended is the only one that can run twice, and its
//! result is still written once. The output and error files are built from the results file
//! when the batch ends, in input order.
//!
//! **Below interactive traffic.** Lines go through the same path as interactive requests
//! (validation, named prompts, routing, fallbacks, accounting) with the engine's batch
//! priority: interactive requests always go first in its queue, and each deployment admits at
//! most `batch_concurrency` batch requests at once (a local deployment keeps one slot for
//! interactive traffic by default). Transient failures (429, 5xx, timeouts) are retried with
//! backoff, up to [`MAX_TRIES`] times.
//!
//! **States**: validating → in_progress → finalizing → completed; failed (invalid input);
//! cancelling → cancelled (results made so far are kept and published); expired when the
//! completion window passes (likewise).

pub mod files;
pub mod input;
pub mod shared;

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::protocol::Endpoint;
use files::{write_atomic, FileStore};
use input::LineError;

/// Attempts per line for transient failures.
pub const MAX_TRIES: u32 = 6;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Counts {
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Errors {
    pub object: String,
    pub data: Vec<LineError>,
}

/// Where a batch is in its life (see the states above); serialised as OpenAI writes them
/// (`in_progress`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    Validating,
    Failed,
    InProgress,
    Finalizing,
    Completed,
    Expired,
    Cancelling,
    Cancelled,
}

impl BatchStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Validating => "validating",
            BatchStatus::Failed => "failed",
            BatchStatus::InProgress => "in_progress",
            BatchStatus::Finalizing => "finalizing",
            BatchStatus::Completed => "completed",
            BatchStatus::Expired => "expired",
            BatchStatus::Cancelling => "cancelling",
            BatchStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the batch has ended: nothing more will run or change.
    pub fn is_final(self) -> bool {
        matches!(self, BatchStatus::Failed | BatchStatus::Completed | BatchStatus::Expired | BatchStatus::Cancelled)
    }
}

impl std::fmt::Display for BatchStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// OpenAI's batch object.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BatchObject {
    pub id: String,
    pub object: String,
    pub endpoint: String,
    pub errors: Option<Errors>,
    pub input_file_id: String,
    pub completion_window: String,
    pub status: BatchStatus,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub created_at: u64,
    pub in_progress_at: Option<u64>,
    pub expires_at: Option<u64>,
    pub finalizing_at: Option<u64>,
    pub completed_at: Option<u64>,
    pub failed_at: Option<u64>,
    pub expired_at: Option<u64>,
    pub cancelling_at: Option<u64>,
    pub cancelled_at: Option<u64>,
    pub request_counts: Counts,
    pub metadata: Option<Value>,
}

/// What is stored: the object and who may see it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Stored {
    batch: BatchObject,
    /// The creating key's name (`None` in open mode).
    key: Option<String>,
}

/// One finished line in `results.jsonl`.
#[derive(Serialize, Deserialize)]
struct Done {
    i: usize,
    ok: bool,
    out: Value,
}

/// A validated line of a new batch: its `custom_id` and its request body.
pub type PlannedLine = (String, Vec<u8>);

/// How a line is run: the gateway's own request path (see `api::inference::run_line`).
pub type Exec = Arc<
    dyn Fn(Endpoint, Option<String>, String, String, bytes::Bytes) -> futures::future::BoxFuture<'static, (u16, Value)>
        + Send
        + Sync,
>;

struct Running {
    cancel: CancellationToken,
}

pub struct Batches {
    dir: PathBuf,
    pub files: FileStore,
    state: Mutex<HashMap<String, Stored>>,
    running: Mutex<HashMap<String, Running>>,
    /// Lines of one batch in flight at once (each deployment bounds its own too).
    pub concurrency: usize,
    /// With `[cluster]`: the batches every replica shares and runs ([`shared`]).
    pub shared: Option<Arc<shared::SharedBatches>>,
}

pub enum CreateError {
    BadRequest(String, Option<&'static str>),
    NotFound(String),
    Io(std::io::Error),
}

impl Batches {
    /// Opens the store under `data_dir` (batches in progress are resumed by [`Batches::resume`]);
    /// files under `files_dir` (default `data_dir/files`). With `shared`, batches are the
    /// replicas' (in PostgreSQL) and this store keeps only what an earlier run left.
    pub fn open(
        data_dir: &Path,
        files_dir: Option<&Path>,
        concurrency: usize,
        shared: Option<Arc<shared::SharedBatches>>,
    ) -> Arc<Batches> {
        let dir = data_dir.join("batches");
        let mut state = HashMap::new();
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path().join("batch.json");
            if let Some(s) = std::fs::read(&p).ok().and_then(|b| serde_json::from_slice::<Stored>(&b).ok()) {
                state.insert(s.batch.id.clone(), s);
            }
        }
        Arc::new(Batches {
            dir,
            files: FileStore::new(files_dir.map_or_else(|| data_dir.join("files"), Path::to_path_buf)),
            state: Mutex::new(state),
            running: Mutex::new(HashMap::new()),
            concurrency: concurrency.max(1),
            shared,
        })
    }

    fn bdir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    fn save(&self, s: &Stored) {
        let p = self.bdir(&s.batch.id).join("batch.json");
        if let Err(e) = write_atomic(&p, &serde_json::to_vec(s).unwrap_or_default()) {
            tracing::error!(batch = %s.batch.id, "cannot save the batch: {e}");
        }
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut BatchObject)) -> Option<BatchObject> {
        let mut m = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let s = m.get_mut(id)?;
        f(&mut s.batch);
        self.save(s);
        Some(s.batch.clone())
    }

    /// Counts a finished line, in memory only: `results.jsonl` is the durable count, read back
    /// when a batch resumes, so `batch.json` is not rewritten for every line.
    fn count(&self, id: &str, ok: bool) {
        let mut m = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = m.get_mut(id) {
            let c = &mut s.batch.request_counts;
            if ok {
                c.completed += 1;
            } else {
                c.failed += 1;
            }
        }
    }

    /// The batch, if `key` may see it (its creator; anyone in open mode).
    pub fn get(&self, id: &str, key: Option<&str>) -> Option<BatchObject> {
        let m = self.state.lock().unwrap_or_else(|p| p.into_inner());
        m.get(id).filter(|s| s.key.as_deref() == key || key.is_none()).map(|s| s.batch.clone())
    }

    /// Newest first, after `after` (an id), at most `limit`.
    pub fn list(&self, key: Option<&str>, after: Option<&str>, limit: usize) -> (Vec<BatchObject>, bool) {
        let m = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<&Stored> = m.values().filter(|s| s.key.as_deref() == key || key.is_none()).collect();
        all.sort_by(|a, b| b.batch.created_at.cmp(&a.batch.created_at).then_with(|| b.batch.id.cmp(&a.batch.id)));
        let start = after.and_then(|a| all.iter().position(|s| s.batch.id == a).map(|i| i + 1)).unwrap_or(0);
        let page: Vec<BatchObject> = all.iter().skip(start).take(limit).map(|s| s.batch.clone()).collect();
        let more = all.len() > start + page.len();
        (page, more)
    }

    /// Creates a batch from an uploaded file: validated now, so a bad line is reported (with its
    /// line number) in a `failed` batch at once. A valid one is stored and returned in
    /// `validating`; [`Batches::start`] runs it.
    pub fn create(
        &self,
        key: Option<&str>,
        body: &Value,
        known_model: &dyn Fn(&str) -> bool,
    ) -> Result<BatchObject, CreateError> {
        let (b, lines) = self.plan(key, body, known_model)?;
        let id = b.id.clone();
        std::fs::create_dir_all(self.bdir(&id)).map_err(CreateError::Io)?;
        if !lines.is_empty() {
            let mut out = Vec::new();
            for (custom_id, body) in &lines {
                serde_json::to_writer(
                    &mut out,
                    &json!({"custom_id": custom_id, "body": serde_json::from_slice::<Value>(body).unwrap_or_default()}),
                )
                .map_err(|e| CreateError::Io(e.into()))?;
                out.push(b'\n');
            }
            write_atomic(&self.bdir(&id).join("input.jsonl"), &out).map_err(CreateError::Io)?;
        }
        let s = Stored { batch: b.clone(), key: key.map(str::to_owned) };
        self.save(&s);
        self.state.lock().unwrap_or_else(|p| p.into_inner()).insert(id, s);
        Ok(b)
    }

    /// A new batch's object and its validated lines (custom_id, body), from the request body
    /// and the uploaded file; a file with a bad line gives a `failed` object and no lines.
    pub fn plan(
        &self,
        key: Option<&str>,
        body: &Value,
        known_model: &dyn Fn(&str) -> bool,
    ) -> Result<(BatchObject, Vec<PlannedLine>), CreateError> {
        let bad = |m: &str, p: &'static str| CreateError::BadRequest(m.to_owned(), Some(p));
        let input_file_id = body
            .get("input_file_id")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("'input_file_id' is required.", "input_file_id"))?;
        let url =
            body.get("endpoint").and_then(Value::as_str).ok_or_else(|| bad("'endpoint' is required.", "endpoint"))?;
        let endpoint = match url {
            "/v1/chat/completions" => Endpoint::Chat,
            "/v1/completions" => Endpoint::Completions,
            "/v1/embeddings" => Endpoint::Embeddings,
            other => {
                return Err(bad(
                    &format!(
                        "'endpoint' must be /v1/chat/completions, /v1/completions or /v1/embeddings, not '{other}'."
                    ),
                    "endpoint",
                ))
            }
        };
        let window = body.get("completion_window").and_then(Value::as_str).unwrap_or("24h");
        let window_s = parse_window(window)
            .ok_or_else(|| bad("'completion_window' must be like \"24h\".", "completion_window"))?;
        let metadata = body.get("metadata").cloned().filter(|m| !m.is_null());
        if metadata.as_ref().is_some_and(|m| !m.is_object()) {
            return Err(bad("'metadata' must be an object.", "metadata"));
        }
        let file = self
            .files
            .get(input_file_id, key)
            .ok_or_else(|| CreateError::NotFound(format!("No such file: '{input_file_id}'.")))?;
        if file.purpose != "batch" {
            return Err(bad(
                &format!("The file '{input_file_id}' was uploaded with purpose '{}', not 'batch'.", file.purpose),
                "input_file_id",
            ));
        }
        let path =
            self.files.data_path(input_file_id).ok_or_else(|| CreateError::NotFound(input_file_id.to_owned()))?;
        let bytes = std::fs::read(&path).map_err(CreateError::Io)?;
        let id = format!("batch_{}", uuid::Uuid::new_v4().simple());
        let now = crate::clock::now_s();
        let mut b = BatchObject {
            id: id.clone(),
            object: "batch".into(),
            endpoint: url.to_owned(),
            errors: None,
            input_file_id: input_file_id.to_owned(),
            completion_window: window.to_owned(),
            status: BatchStatus::Validating,
            output_file_id: None,
            error_file_id: None,
            created_at: now,
            in_progress_at: None,
            expires_at: Some(now + window_s),
            finalizing_at: None,
            completed_at: None,
            failed_at: None,
            expired_at: None,
            cancelling_at: None,
            cancelled_at: None,
            request_counts: Counts { total: 0, completed: 0, failed: 0 },
            metadata,
        };
        let mut out = Vec::new();
        match input::validate(&bytes, endpoint, url, known_model) {
            Ok(lines) => {
                b.request_counts.total = lines.len() as u64;
                out = lines.into_iter().map(|l| (l.custom_id, l.body)).collect();
            }
            Err(errors) => {
                b.status = BatchStatus::Failed;
                b.failed_at = Some(now);
                b.errors = Some(Errors { object: "list".into(), data: errors });
            }
        }
        Ok((b, out))
    }

    /// Asks a batch to stop: lines in flight finish, the rest do not start, and what was made
    /// is published.
    pub fn cancel(&self, id: &str, key: Option<&str>) -> Option<BatchObject> {
        let b = self.get(id, key)?;
        if !matches!(b.status, BatchStatus::Validating | BatchStatus::InProgress) {
            return Some(b);
        }
        let b = self.update(id, |b| {
            b.status = BatchStatus::Cancelling;
            b.cancelling_at = Some(crate::clock::now_s());
        });
        if let Some(r) = self.running.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            r.cancel.cancel();
        }
        b
    }

    /// Starts (or resumes) every batch that is not finished; with shared batches, this
    /// replica's runner of them.
    pub fn resume(self: &Arc<Self>, exec: Exec, tracker: &tokio_util::task::TaskTracker, stop: CancellationToken) {
        if let Some(sh) = &self.shared {
            sh.run(exec.clone(), self.clone(), stop.clone());
        }
        let ids: Vec<String> = {
            let m = self.state.lock().unwrap_or_else(|p| p.into_inner());
            m.values().filter(|s| !s.batch.status.is_final()).map(|s| s.batch.id.clone()).collect()
        };
        for id in ids {
            self.start(&id, exec.clone(), tracker, stop.clone());
        }
    }

    pub fn start(
        self: &Arc<Self>,
        id: &str,
        exec: Exec,
        tracker: &tokio_util::task::TaskTracker,
        stop: CancellationToken,
    ) {
        let cancel = CancellationToken::new();
        {
            let mut r = self.running.lock().unwrap_or_else(|p| p.into_inner());
            if r.contains_key(id) {
                return;
            }
            r.insert(id.to_owned(), Running { cancel: cancel.clone() });
        }
        let me = self.clone();
        let id = id.to_owned();
        tracker.spawn(async move {
            me.run(&id, exec, cancel, stop).await;
            me.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        });
    }

    /// The lines already done, by index, read from `results.jsonl` (a torn last line is
    /// dropped and truncated away, so the next append starts a clean line).
    fn read_done(&self, id: &str) -> BTreeMap<usize, Done> {
        let p = self.bdir(id).join("results.jsonl");
        let bytes = std::fs::read(&p).unwrap_or_default();
        let mut out = BTreeMap::new();
        let mut good_len = 0;
        let mut pos = 0;
        while let Some(nl) = memchr::memchr(b'\n', &bytes[pos..]) {
            if let Ok(d) = serde_json::from_slice::<Done>(&bytes[pos..pos + nl]) {
                out.entry(d.i).or_insert(d);
            }
            pos += nl + 1;
            good_len = pos;
        }
        if good_len < bytes.len() {
            if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&p) {
                let _ = f.set_len(good_len as u64);
            }
        }
        out
    }

    async fn run(self: &Arc<Self>, id: &str, exec: Exec, cancel: CancellationToken, stop: CancellationToken) {
        let Some(stored) = self.state.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned() else { return };
        let endpoint = endpoint_of(&stored.batch.endpoint);
        let lines: Vec<(String, bytes::Bytes)> = std::fs::read(self.bdir(id).join("input.jsonl"))
            .unwrap_or_default()
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(|l| {
                let v: Value = serde_json::from_slice(l).ok()?;
                Some((v["custom_id"].as_str()?.to_owned(), bytes::Bytes::from(serde_json::to_vec(&v["body"]).ok()?)))
            })
            .collect();
        let done = self.read_done(id);
        let count = |done: &BTreeMap<usize, Done>| {
            let ok = done.values().filter(|d| d.ok).count() as u64;
            (ok, done.len() as u64 - ok)
        };
        let (ok, failed) = count(&done);
        let status = stored.batch.status;
        if matches!(status, BatchStatus::Validating | BatchStatus::InProgress) {
            self.update(id, |b| {
                if b.status == BatchStatus::Validating {
                    b.status = BatchStatus::InProgress;
                    b.in_progress_at = Some(crate::clock::now_s());
                }
                b.request_counts = Counts { total: lines.len() as u64, completed: ok, failed };
            });
        }
        if !matches!(status, BatchStatus::Finalizing | BatchStatus::Cancelling) {
            let todo: Vec<usize> = (0..lines.len()).filter(|i| !done.contains_key(i)).collect();
            let results = Arc::new(Mutex::new(
                std::fs::OpenOptions::new().create(true).append(true).open(self.bdir(id).join("results.jsonl")),
            ));
            let sem = Arc::new(tokio::sync::Semaphore::new(self.concurrency));
            let expires = stored.batch.expires_at.unwrap_or(u64::MAX);
            let mut tasks = tokio::task::JoinSet::new();
            for i in todo {
                let permit = tokio::select! {
                    p = sem.clone().acquire_owned() => p,
                    _ = cancel.cancelled() => break,
                    _ = stop.cancelled() => break,
                };
                let Ok(permit) = permit else { break };
                if crate::clock::now_s() >= expires {
                    break;
                }
                let (custom_id, body) = lines[i].clone();
                let (exec, me, results, key, bid) =
                    (exec.clone(), self.clone(), results.clone(), stored.key.clone(), id.to_owned());
                let (stop, cancel) = (stop.clone(), cancel.clone());
                tasks.spawn(async move {
                    let _permit = permit;
                    let Some((ok, out)) =
                        run_line(&exec, endpoint, key, &bid, &custom_id, body, &stop, &cancel, expires).await
                    else {
                        return;
                    };
                    let mut line = serde_json::to_vec(&Done { i, ok, out }).unwrap_or_default();
                    line.push(b'\n');
                    let written = match &mut *results.lock().unwrap_or_else(|p| p.into_inner()) {
                        Ok(f) => f.write_all(&line).map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    if let Err(e) = written {
                        tracing::error!(batch = %bid, "cannot record a batch result (the line will run again): {e}");
                        return;
                    }
                    me.count(&bid, ok);
                });
                // Reap finished tasks as we go so the set stays small.
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
            if stop.is_cancelled() {
                return; // the gateway is stopping; the batch resumes at the next start
            }
        }
        self.finalize(id, lines.len());
    }

    /// Publishes the output and error files, in input order, and ends the batch.
    fn finalize(&self, id: &str, total: usize) {
        let Some(b) = self.get(id, None) else { return };
        let done = self.read_done(id);
        let end = if b.status == BatchStatus::Cancelling || b.cancelling_at.is_some() {
            BatchStatus::Cancelled
        } else if done.len() < total {
            BatchStatus::Expired
        } else {
            BatchStatus::Completed
        };
        // File ids are fixed before the files are written, so a crash here redoes the same work.
        let b = self
            .update(id, |b| {
                if b.status != BatchStatus::Cancelling {
                    b.status = BatchStatus::Finalizing;
                    b.finalizing_at.get_or_insert(crate::clock::now_s());
                }
                if done.values().any(|d| d.ok) {
                    b.output_file_id.get_or_insert_with(FileStore::new_id);
                }
                if done.values().any(|d| !d.ok) {
                    b.error_file_id.get_or_insert_with(FileStore::new_id);
                }
            })
            .unwrap_or(b);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        for d in done.values() {
            let buf = if d.ok { &mut out } else { &mut err };
            let _ = serde_json::to_writer(&mut *buf, &d.out);
            buf.push(b'\n');
        }
        for (fid, data, suffix) in [(&b.output_file_id, &out, "output"), (&b.error_file_id, &err, "error")] {
            if let Some(fid) = fid {
                let owner = self.state.lock().unwrap_or_else(|p| p.into_inner()).get(id).and_then(|s| s.key.clone());
                if let Err(e) =
                    self.files.put(fid, &format!("{id}_{suffix}.jsonl"), "batch_output", data, owner.as_deref())
                {
                    tracing::error!(batch = %id, "cannot write the {suffix} file: {e}");
                    return;
                }
            }
        }
        let ok = done.values().filter(|d| d.ok).count() as u64;
        self.update(id, |b| {
            let now = Some(crate::clock::now_s());
            b.request_counts = Counts { total: total as u64, completed: ok, failed: done.len() as u64 - ok };
            b.status = end;
            match end {
                BatchStatus::Cancelled => b.cancelled_at = now,
                BatchStatus::Expired => b.expired_at = now,
                _ => b.completed_at = now,
            }
        });
        tracing::info!(batch = %id, status = end.as_str(), completed = ok, total, "batch ended");
    }
}

/// Runs one line as the runner does: transient failures retried with backoff, and a wait
/// (not a try) while every deployment's batch slots are taken. Its output line and whether it
/// succeeded; `None` when it did not finish (the gateway stopping, or the batch cancelled or
/// expired before it started): not recorded, it runs again.
#[allow(clippy::too_many_arguments)]
pub async fn run_line(
    exec: &Exec,
    endpoint: Endpoint,
    key: Option<String>,
    bid: &str,
    custom_id: &str,
    body: bytes::Bytes,
    stop: &CancellationToken,
    cancel: &CancellationToken,
    expires: u64,
) -> Option<(bool, Value)> {
    let req_id = format!("batch_req_{}", uuid::Uuid::new_v4().simple());
    let mut tries = 0;
    let (status, resp) = loop {
        let (status, resp) = exec(endpoint, key.clone(), bid.to_owned(), req_id.clone(), body.clone()).await;
        // Every deployment's batch slots are taken: wait for one, not a try.
        if status == 429 && resp["error"]["code"] == crate::protocol::error::BUSY {
            if stop.is_cancelled() || cancel.is_cancelled() || crate::clock::now_s() >= expires {
                return None; // never started: not recorded
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        tries += 1;
        let transient = status == 429 || status >= 500;
        if !transient || tries >= MAX_TRIES || stop.is_cancelled() {
            break (status, resp);
        }
        let wait = Duration::from_millis(200 * (1 << tries.min(5)));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => break (status, resp),
        }
    };
    // Shutting down mid-request: the line is not recorded and runs after the restart.
    if stop.is_cancelled() && (status == 499 || status == 503) {
        return None;
    }
    let ok = (200..300).contains(&status);
    let error = (!ok).then(|| {
        json!({"code": resp["error"]["code"].as_str().or(resp["error"]["type"].as_str()).unwrap_or("request_failed"),
               "message": resp["error"]["message"].as_str().unwrap_or("the request failed")})
    });
    let out = json!({"id": req_id, "custom_id": custom_id,
                     "response": {"status_code": status, "request_id": req_id, "body": resp},
                     "error": error});
    Some((ok, out))
}

/// The endpoint a batch object's `endpoint` names.
pub fn endpoint_of(url: &str) -> Endpoint {
    match url {
        "/v1/completions" => Endpoint::Completions,
        "/v1/embeddings" => Endpoint::Embeddings,
        _ => Endpoint::Chat,
    }
}

/// `24h`, `1h`, `30m`, `86400s`: at least one minute, at most a week.
fn parse_window(s: &str) -> Option<u64> {
    // A unit is required here ("24h", as OpenAI writes it).
    let secs = crate::config::duration_secs(s).filter(|_| s.ends_with(|c: char| c.is_ascii_alphabetic()))?;
    (60..=7 * 86_400).contains(&secs).then_some(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_written_as_openai_writes_them() {
        use BatchStatus::*;
        let all = [Validating, Failed, InProgress, Finalizing, Completed, Expired, Cancelling, Cancelled];
        for s in all {
            let json = serde_json::to_value(s).unwrap();
            assert_eq!(json, json!(s.as_str()));
            assert_eq!(serde_json::from_value::<BatchStatus>(json).unwrap(), s);
        }
        assert_eq!(serde_json::to_string(&InProgress).unwrap(), "\"in_progress\"");
        let ended: Vec<BatchStatus> = all.into_iter().filter(|s| s.is_final()).collect();
        assert_eq!(ended, [Failed, Completed, Expired, Cancelled]);
        assert!(serde_json::from_value::<BatchStatus>(json!("paused")).is_err());
    }
}

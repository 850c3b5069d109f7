//! The durable ledger: one row per request in SQLite (`<data_dir>/ledger/ledger.sqlite`),
//! written off the hot path, and the usage queries over it.
//!
//! How a record travels, and why it survives a `kill -9`:
//! 1. [`Ledger::append`] writes the record as one JSON line to `journal.jsonl` (O_APPEND, one
//!    `write` under a mutex, no fsync) *before* the response completes. Once `write` returns,
//!    the bytes are in the kernel's page cache and outlive the process; only a power loss can
//!    take them, which no design without an fsync per request survives either.
//! 2. The ingester thread (`tollgate-ledger`) reads the journal from its offset every 200 ms
//!    (or when asked to flush), inserts the complete lines in one transaction, and stores the
//!    new offset in the same transaction: a line is ingested exactly once. The thread runs at
//!    the lowest CPU priority (nice 19): on a saturated core the requests go first and the
//!    journal is ingested in the gaps.
//! 3. Once everything is ingested and the journal is over 16 MiB, it is truncated (under the
//!    writer's lock) and the offset reset; an offset beyond the end of the journal at start
//!    means that reset was interrupted, and reads from 0.
//!
//! Failures never fail a request. A journal that cannot be written keeps its records in memory
//! (up to 100,000) and retries on every append and tick; a database that cannot be opened or
//! written leaves the records in the journal and is retried every few seconds. Both are logged
//! (once per episode) and counted in `/metrics`.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OpenFlags};
use rust_decimal::Decimal;
use serde::Deserialize;

use super::metrics::{family, Collector, ConstCounter, ConstGauge, DescriptorEncoder, NO_LABELS};
use crate::accounting::RequestRecord;

const TICK: Duration = Duration::from_millis(200);
const ROTATE_AT: u64 = 16 * 1024 * 1024;
const MAX_PENDING: usize = 100_000;
const BATCH_LINES: usize = 5_000;
const RETRY_DB: Duration = Duration::from_secs(3);

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS requests (
    id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    started_at_ms INTEGER NOT NULL,
    key TEXT,
    user TEXT,
    tags TEXT,
    batch_id TEXT,
    endpoint TEXT NOT NULL,
    alias TEXT NOT NULL,
    deployment TEXT,
    backend_kind TEXT,
    stream INTEGER NOT NULL,
    status INTEGER NOT NULL,
    error TEXT,
    attempts INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    tokens_source TEXT NOT NULL,
    ttft_ms REAL,
    total_ms REAL NOT NULL,
    finish_reason TEXT,
    client_closed INTEGER NOT NULL,
    cache_hit INTEGER NOT NULL,
    cost_usd TEXT,
    saved_usd TEXT,
    prefill_saved_ms REAL,
    route TEXT,
    model_version TEXT,
    model_sha256 TEXT,
    sampler TEXT,
    seed INTEGER,
    guardrails TEXT
);
CREATE INDEX IF NOT EXISTS requests_started ON requests(started_at_ms);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
";

/// A journal line as read back (owned, lenient: fields added later default).
#[derive(Deserialize)]
struct Row {
    id: String,
    request_id: String,
    started_at_ms: u64,
    key: Option<String>,
    user: Option<String>,
    #[serde(default)]
    tags: Option<serde_json::Value>,
    #[serde(default)]
    batch_id: Option<String>,
    endpoint: String,
    alias: String,
    deployment: Option<String>,
    backend_kind: Option<String>,
    stream: bool,
    status: u16,
    error: Option<String>,
    attempts: u32,
    prompt_tokens: u64,
    completion_tokens: u64,
    cached_tokens: u64,
    tokens_source: String,
    ttft_ms: Option<f64>,
    total_ms: f64,
    finish_reason: Option<String>,
    client_closed: bool,
    cache_hit: bool,
    #[serde(default)]
    cost: Option<CostRow>,
    #[serde(default)]
    prefill_saved_ms: Option<f64>,
    #[serde(default)]
    route: Option<String>,
    #[serde(default)]
    model_version: Option<String>,
    #[serde(default)]
    model_sha256: Option<String>,
    #[serde(default)]
    sampler: Option<serde_json::Value>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    guardrails: Option<String>,
}

#[derive(Deserialize)]
struct CostRow {
    usd: String,
    saved_usd: String,
}

struct Journal {
    path: PathBuf,
    file: Option<File>,
    /// Lines that could not be written yet (a full disk, a missing directory).
    pending: VecDeque<Vec<u8>>,
    /// The last write failed part-way: terminate the partial line before the next one.
    torn: bool,
    failing: bool,
}

impl Journal {
    fn open(path: &Path) -> std::io::Result<File> {
        let mut f = OpenOptions::new().create(true).append(true).read(true).open(path)?;
        // A line cut by a crash is ended here, so the next record starts on its own line.
        let len = f.metadata()?.len();
        if len > 0 {
            let mut last = [0u8];
            f.seek(SeekFrom::Start(len - 1))?;
            f.read_exact(&mut last)?;
            if last[0] != b'\n' {
                f.write_all(b"\n")?;
            }
        }
        Ok(f)
    }

    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() {
            self.file = Some(Self::open(&self.path)?);
        }
        let f = self.file.as_mut().expect("opened above");
        if self.torn {
            f.write_all(b"\n")?;
            self.torn = false;
        }
        if let Err(e) = f.write_all(line) {
            self.torn = true;
            self.file = None;
            return Err(e);
        }
        Ok(())
    }

    /// Writes what is pending, then `line`; anything not written stays pending.
    fn append(&mut self, line: Option<Vec<u8>>, stats: &Stats) {
        if let Some(l) = line {
            self.pending.push_back(l);
        }
        while let Some(l) = self.pending.pop_front() {
            match self.write_line(&l) {
                Ok(()) => {}
                Err(e) => {
                    self.pending.push_front(l);
                    stats.journal_errors.fetch_add(1, Ordering::Relaxed);
                    if !self.failing {
                        tracing::error!(path = %self.path.display(), "ledger journal write failed, keeping records in memory: {e}");
                        self.failing = true;
                    }
                    while self.pending.len() > MAX_PENDING {
                        self.pending.pop_front();
                        stats.lost.fetch_add(1, Ordering::Relaxed);
                    }
                    break;
                }
            }
        }
        if self.pending.is_empty() && self.failing {
            tracing::info!(path = %self.path.display(), "ledger journal writable again");
            self.failing = false;
        }
        stats.pending.store(self.pending.len() as u64, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Stats {
    journal_errors: AtomicU64,
    db_errors: AtomicU64,
    ingested: AtomicU64,
    bad_lines: AtomicU64,
    pending: AtomicU64,
    lost: AtomicU64,
    db_ok: AtomicBool,
}

enum Cmd {
    Flush(tokio::sync::oneshot::Sender<()>),
    Stop,
}

pub struct Ledger {
    dir: PathBuf,
    journal: Arc<Mutex<Journal>>,
    stats: Arc<Stats>,
    tx: Mutex<Option<mpsc::Sender<Cmd>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Ledger {
    /// Opens (or creates) the ledger under `dir` and starts its ingester. Never fails: a
    /// ledger that cannot be written is logged, counted and retried, and requests go on.
    pub fn open(dir: &Path) -> Arc<Ledger> {
        if let Err(e) = std::fs::create_dir_all(dir) {
            tracing::error!(dir = %dir.display(), "cannot create the ledger directory: {e}");
        }
        let journal = Arc::new(Mutex::new(Journal {
            path: dir.join("journal.jsonl"),
            file: None,
            pending: VecDeque::new(),
            torn: false,
            failing: false,
        }));
        let stats = Arc::new(Stats::default());
        let mut ing = Ingester { dir: dir.to_path_buf(), db: None, next_try: Instant::now(), journal: journal.clone() };
        // What a previous run left in the journal is ingested before the first request, so
        // budgets and usage start from the whole history.
        ing.ingest(&stats);
        let (tx, rx) = mpsc::channel();
        let st = stats.clone();
        let thread = std::thread::Builder::new()
            .name("tollgate-ledger".into())
            .spawn(move || {
                // Lowest priority for this thread only (Linux: nice is per thread).
                #[cfg(target_os = "linux")]
                unsafe {
                    let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                    libc::setpriority(libc::PRIO_PROCESS, tid, 19);
                }
                ing.run(rx, &st)
            })
            .map_err(|e| tracing::error!("cannot start the ledger thread: {e}"))
            .ok();
        Arc::new(Ledger {
            dir: dir.to_path_buf(),
            journal,
            stats,
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(thread),
        })
    }

    /// Journals one finished request. Called before its response completes.
    pub fn append(&self, rec: &RequestRecord) {
        let mut line = Vec::with_capacity(640);
        if serde_json::to_writer(&mut line, rec).is_err() {
            return;
        }
        line.push(b'\n');
        self.journal.lock().unwrap_or_else(|p| p.into_inner()).append(Some(line), &self.stats);
    }

    /// Waits until every record appended so far is in the database (or an attempt failed).
    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self.tx.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|s| s.send(Cmd::Flush(tx)).is_ok());
        if sent == Some(true) {
            let _ = rx.await;
        }
    }

    /// Ingests what is left and stops the ingester (graceful shutdown).
    pub fn close(&self) {
        if let Some(tx) = self.tx.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = tx.send(Cmd::Stop);
        }
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.join("ledger.sqlite")
    }

    /// Read-only connection for queries (WAL: readers never block the ingester).
    pub fn reader(&self) -> rusqlite::Result<Connection> {
        let c = Connection::open_with_flags(self.db_path(), OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        c.busy_timeout(Duration::from_secs(5))?;
        Ok(c)
    }

    /// Spend per key since the given instants (Unix ms): (day, month). Budgets start here.
    pub fn spend_since(&self, day_start_ms: u64, month_start_ms: u64) -> HashMap<String, (Decimal, Decimal)> {
        let mut out: HashMap<String, (Decimal, Decimal)> = HashMap::new();
        let Ok(c) = self.reader() else {
            return out;
        };
        let from = day_start_ms.min(month_start_ms) as i64;
        let r = c
            .prepare("SELECT key, started_at_ms, cost_usd FROM requests WHERE key IS NOT NULL AND cost_usd IS NOT NULL AND started_at_ms >= ?1")
            .and_then(|mut s| {
                let rows = s.query_map([from], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?))
                })?;
                for row in rows {
                    let (key, at, cost) = row?;
                    let cost: Decimal = cost.parse().unwrap_or_default();
                    let e = out.entry(key).or_default();
                    if at as u64 >= day_start_ms {
                        e.0 += cost;
                    }
                    if at as u64 >= month_start_ms {
                        e.1 += cost;
                    }
                }
                Ok(())
            });
        if let Err(e) = r {
            tracing::warn!("cannot read spend from the ledger: {e}");
        }
        out
    }
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// The ledger's families on `/metrics`: what it wrote, what failed, what waits.
impl Collector for Ledger {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.stats;
        for (name, help, v) in [
            ("tollgate_ledger_ingested_total", "Records written to the ledger database.", &s.ingested),
            (
                "tollgate_ledger_journal_errors_total",
                "Failed journal writes (records kept in memory).",
                &s.journal_errors,
            ),
            (
                "tollgate_ledger_db_errors_total",
                "Failed ledger database opens or writes (records kept in the journal).",
                &s.db_errors,
            ),
            ("tollgate_ledger_bad_lines_total", "Journal lines that could not be read (cut by a crash).", &s.bad_lines),
            (
                "tollgate_ledger_lost_total",
                "Records dropped after 100,000 waited in memory for a writable journal.",
                &s.lost,
            ),
        ] {
            family(&mut enc, name, help, [(NO_LABELS, ConstCounter::new(v.load(Ordering::Relaxed)))])?;
        }
        let pending = ConstGauge::new(s.pending.load(Ordering::Relaxed));
        let help = "Records waiting in memory for the journal.";
        family(&mut enc, "tollgate_ledger_pending_records", help, [(NO_LABELS, pending)])?;
        let up = ConstGauge::new(u64::from(s.db_ok.load(Ordering::Relaxed)));
        let help = "Whether the ledger database is open and writable.";
        family(&mut enc, "tollgate_ledger_db_up", help, [(NO_LABELS, up)])
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.close();
    }
}

struct Ingester {
    dir: PathBuf,
    db: Option<Connection>,
    next_try: Instant,
    journal: Arc<Mutex<Journal>>,
}

impl Ingester {
    fn run(mut self, rx: mpsc::Receiver<Cmd>, stats: &Stats) {
        loop {
            match rx.recv_timeout(TICK) {
                Ok(Cmd::Flush(done)) => {
                    self.retry_pending(stats);
                    self.next_try = Instant::now();
                    self.ingest(stats);
                    let _ = done.send(());
                }
                Ok(Cmd::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.retry_pending(stats);
                    self.ingest(stats);
                    return;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.retry_pending(stats);
                    self.ingest(stats);
                }
            }
        }
    }

    fn retry_pending(&self, stats: &Stats) {
        let mut j = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        if !j.pending.is_empty() {
            j.append(None, stats);
        }
    }

    fn open_db(&self) -> rusqlite::Result<Connection> {
        let c = Connection::open(self.dir.join("ledger.sqlite"))?;
        c.busy_timeout(Duration::from_secs(5))?;
        c.execute_batch(SCHEMA)?;
        // Columns added after a database was created: added in place (an error means present).
        for col in
            ["route TEXT", "model_version TEXT", "model_sha256 TEXT", "sampler TEXT", "seed INTEGER", "guardrails TEXT"]
        {
            let _ = c.execute(&format!("ALTER TABLE requests ADD COLUMN {col}"), []);
        }
        Ok(c)
    }

    fn ingest(&mut self, stats: &Stats) {
        if self.db.is_none() {
            if Instant::now() < self.next_try {
                return;
            }
            match self.open_db() {
                Ok(c) => {
                    if !stats.db_ok.swap(true, Ordering::Relaxed) {
                        tracing::debug!(dir = %self.dir.display(), "ledger database open");
                    }
                    self.db = Some(c);
                }
                Err(e) => return self.db_failed(stats, e),
            }
        }
        loop {
            match self.ingest_batch(stats) {
                Ok(true) => continue,
                Ok(false) => return,
                Err(e) => return self.db_failed(stats, e),
            }
        }
    }

    fn db_failed(&mut self, stats: &Stats, e: rusqlite::Error) {
        stats.db_errors.fetch_add(1, Ordering::Relaxed);
        if stats.db_ok.swap(false, Ordering::Relaxed) || self.db.is_none() && self.next_try <= Instant::now() {
            tracing::error!(dir = %self.dir.display(), "ledger database unavailable, records stay in the journal: {e}");
        }
        self.db = None;
        self.next_try = Instant::now() + RETRY_DB;
    }

    /// Ingests up to [`BATCH_LINES`] complete lines; `Ok(true)` when more may be waiting.
    fn ingest_batch(&mut self, stats: &Stats) -> rusqlite::Result<bool> {
        let Some(db) = self.db.as_mut() else { return Ok(false) };
        let offset: u64 = db
            .query_row("SELECT v FROM meta WHERE k = 'journal_offset'", [], |r| r.get::<_, i64>(0))
            .map(|v| v as u64)
            .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(0) } else { Err(e) })?;
        let path = self.dir.join("journal.jsonl");
        let Ok(mut f) = File::open(&path) else { return Ok(false) };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let offset = if offset > len { 0 } else { offset };
        if offset == len {
            if len > ROTATE_AT {
                self.rotate(len)?;
            }
            return Ok(false);
        }
        let mut buf = Vec::new();
        if f.seek(SeekFrom::Start(offset)).is_err() || f.take(8 * 1024 * 1024).read_to_end(&mut buf).is_err() {
            return Ok(false);
        }
        let mut consumed = 0usize;
        let mut lines = 0usize;
        let tx = db.transaction()?;
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO requests (id, request_id, started_at_ms, key, user, tags, batch_id, endpoint, alias, \
                 deployment, backend_kind, stream, status, error, attempts, prompt_tokens, completion_tokens, cached_tokens, \
                 tokens_source, ttft_ms, total_ms, finish_reason, client_closed, cache_hit, cost_usd, saved_usd, prefill_saved_ms, route, \
                 model_version, model_sha256, sampler, seed, guardrails) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, \
                 ?29, ?30, ?31, ?32, ?33)",
            )?;
            while lines < BATCH_LINES {
                let Some(nl) = memchr::memchr(b'\n', &buf[consumed..]) else { break };
                let line = &buf[consumed..consumed + nl];
                consumed += nl + 1;
                lines += 1;
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let Ok(r) = serde_json::from_slice::<Row>(line) else {
                    stats.bad_lines.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let n = ins.execute(params![
                    r.id,
                    r.request_id,
                    r.started_at_ms as i64,
                    r.key,
                    r.user,
                    r.tags.map(|t| t.to_string()),
                    r.batch_id,
                    r.endpoint,
                    r.alias,
                    r.deployment,
                    r.backend_kind,
                    r.stream,
                    r.status,
                    r.error,
                    r.attempts,
                    r.prompt_tokens as i64,
                    r.completion_tokens as i64,
                    r.cached_tokens as i64,
                    r.tokens_source,
                    r.ttft_ms,
                    r.total_ms,
                    r.finish_reason,
                    r.client_closed,
                    r.cache_hit,
                    r.cost.as_ref().map(|c| c.usd.as_str()),
                    r.cost.as_ref().map(|c| c.saved_usd.as_str()),
                    r.prefill_saved_ms,
                    r.route,
                    r.model_version,
                    r.model_sha256,
                    r.sampler.map(|s| s.to_string()),
                    r.seed,
                    r.guardrails,
                ])?;
                stats.ingested.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        tx.execute(
            "INSERT INTO meta (k, v) VALUES ('journal_offset', ?1) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
            [(offset + consumed as u64) as i64],
        )?;
        tx.commit()?;
        stats.db_ok.store(true, Ordering::Relaxed);
        Ok(consumed > 0 && offset + (consumed as u64) < len)
    }

    /// Empties a fully ingested journal. The writer's lock keeps appends out while the file is
    /// checked and truncated and the offset reset; a crash between the two is recognised at
    /// the next read (an offset past the end).
    fn rotate(&mut self, len: u64) -> rusqlite::Result<()> {
        let Some(db) = self.db.as_mut() else { return Ok(()) };
        let j = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(f) = OpenOptions::new().write(true).open(&j.path) else { return Ok(()) };
        if f.metadata().map(|m| m.len()).unwrap_or(0) != len || f.set_len(0).is_err() {
            return Ok(());
        }
        db.execute("UPDATE meta SET v = 0 WHERE k = 'journal_offset'", [])?;
        drop(j);
        Ok(())
    }
}

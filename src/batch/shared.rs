//! Batches every replica shares (with `[cluster]`): the batch objects and their lines in
//! PostgreSQL, run by whichever replicas are up. Each replica's runner claims lines with a
//! lease (`FOR UPDATE SKIP LOCKED`: no two replicas claim one line), renews the leases it
//! holds while their requests run, and records a line's result only if none is recorded yet,
//! so every line appears exactly once. A replica that dies mid-batch stops renewing: its
//! lines' leases expire and another replica runs them. A replica that sees no line left
//! finalizes: the file ids are fixed first (under a row lock), so two replicas finalizing at
//! once (or one after another's crash) write the same files, and the batch ends once.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio_postgres::types::Json;
use tokio_util::sync::CancellationToken;

use super::files::FileStore;
use super::{endpoint_of, run_line, BatchObject, BatchStatus, Batches, Counts, CreateError, Exec};
use crate::cluster::pg::Pg;
use crate::config::PostgresConfig;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    key TEXT,
    created_at BIGINT NOT NULL,
    object JSONB NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_lines (
    batch_id TEXT NOT NULL,
    i INTEGER NOT NULL,
    custom_id TEXT NOT NULL,
    body TEXT NOT NULL,
    owner TEXT,
    lease_until BIGINT,
    ok BOOLEAN,
    out JSONB,
    PRIMARY KEY (batch_id, i)
);
CREATE INDEX IF NOT EXISTS batch_lines_todo ON batch_lines (batch_id, i) WHERE out IS NULL;
";

/// How often a replica looks for lines to run.
const POLL: Duration = Duration::from_millis(250);

pub struct SharedBatches {
    pg: Pg,
    /// This replica's name (on the leases it holds).
    replica: String,
    lease: Duration,
    concurrency: usize,
    /// Lines this replica runs now: (batch, line).
    held: Mutex<HashSet<(String, i32)>>,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl SharedBatches {
    pub fn new(cfg: &PostgresConfig, replica: String, lease: Duration, concurrency: usize) -> Arc<SharedBatches> {
        Arc::new(SharedBatches {
            pg: Pg::new(cfg, SCHEMA.into()),
            replica,
            lease,
            concurrency: concurrency.max(1),
            held: Mutex::new(HashSet::new()),
        })
    }

    /// Stores a planned batch (its object and lines) in one transaction.
    pub async fn create(
        &self,
        key: Option<&str>,
        b: &BatchObject,
        lines: &[super::PlannedLine],
    ) -> Result<(), CreateError> {
        let io = |e: String| CreateError::Io(std::io::Error::other(e));
        let mut c = self.pg.client().await.map_err(io)?;
        let tx = c.transaction().await.map_err(|e| io(err(e)))?;
        tx.execute(
            "INSERT INTO batches (id, key, created_at, object) VALUES ($1, $2, $3, $4)",
            &[&b.id, &key, &(b.created_at as i64), &Json(b)],
        )
        .await
        .map_err(|e| io(err(e)))?;
        let ins = tx
            .prepare("INSERT INTO batch_lines (batch_id, i, custom_id, body) VALUES ($1, $2, $3, $4)")
            .await
            .map_err(|e| io(err(e)))?;
        for (i, (custom_id, body)) in lines.iter().enumerate() {
            let body = String::from_utf8_lossy(body);
            tx.execute(&ins, &[&b.id, &(i as i32), custom_id, &body.as_ref()]).await.map_err(|e| io(err(e)))?;
        }
        tx.commit().await.map_err(|e| io(err(e)))
    }

    /// The batch with its live counts, if `key` may see it.
    pub async fn get(&self, id: &str, key: Option<&str>) -> Result<Option<BatchObject>, String> {
        let c = self.pg.client().await?;
        let row = c
            .query_opt(
                "SELECT object, key, (SELECT count(*) FILTER (WHERE ok) FROM batch_lines WHERE batch_id = $1), \
                 (SELECT count(*) FILTER (WHERE NOT ok) FROM batch_lines WHERE batch_id = $1) FROM batches WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(err)?;
        Ok(row.and_then(|r| {
            let owner: Option<String> = r.get(1);
            if key.is_some() && owner.as_deref() != key {
                return None;
            }
            let mut b: BatchObject = r.get::<_, Json<BatchObject>>(0).0;
            if !b.status.is_final() {
                b.request_counts.completed = r.get::<_, i64>(2) as u64;
                b.request_counts.failed = r.get::<_, i64>(3) as u64;
            }
            Some(b)
        }))
    }

    /// Newest first, after `after` (an id), at most `limit`.
    pub async fn list(
        &self,
        key: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<BatchObject>, bool), String> {
        let c = self.pg.client().await?;
        let rows = c
            .query(
                "SELECT object FROM batches WHERE ($1::text IS NULL OR key = $1) AND ($2::text IS NULL OR \
                 (created_at, id) < (SELECT created_at, id FROM batches WHERE id = $2)) \
                 ORDER BY created_at DESC, id DESC LIMIT $3",
                &[&key, &after, &(limit as i64 + 1)],
            )
            .await
            .map_err(err)?;
        let mut out: Vec<BatchObject> = rows.iter().map(|r| r.get::<_, Json<BatchObject>>(0).0).collect();
        let more = out.len() > limit;
        out.truncate(limit);
        Ok((out, more))
    }

    /// Changes a batch's object with `f` if it is in one of `from` (compare-and-set: one
    /// replica wins); the new object.
    async fn transition(
        &self,
        id: &str,
        from: &[BatchStatus],
        f: impl FnOnce(&mut BatchObject),
    ) -> Result<Option<BatchObject>, String> {
        let mut c = self.pg.client().await?;
        let tx = c.transaction().await.map_err(err)?;
        let Some(r) = tx.query_opt("SELECT object FROM batches WHERE id = $1 FOR UPDATE", &[&id]).await.map_err(err)?
        else {
            return Ok(None);
        };
        let mut b: BatchObject = r.get::<_, Json<BatchObject>>(0).0;
        if !from.contains(&b.status) {
            return Ok(None);
        }
        f(&mut b);
        tx.execute("UPDATE batches SET object = $2 WHERE id = $1", &[&id, &Json(&b)]).await.map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(Some(b))
    }

    /// Asks a batch to stop: lines running finish, no other starts, what was made is published.
    pub async fn cancel(&self, id: &str, key: Option<&str>) -> Result<Option<BatchObject>, String> {
        let Some(b) = self.get(id, key).await? else { return Ok(None) };
        let moved = self
            .transition(id, &[BatchStatus::Validating, BatchStatus::InProgress], |b| {
                b.status = BatchStatus::Cancelling;
                b.cancelling_at = Some(crate::clock::now_s());
            })
            .await?;
        Ok(Some(moved.unwrap_or(b)))
    }

    /// Runs this replica's share of every batch, until `stop`.
    pub fn run(self: &Arc<Self>, exec: Exec, batches: Arc<Batches>, stop: CancellationToken) {
        let me = self.clone();
        tokio::spawn(async move {
            let renew = me.clone();
            let stop2 = stop.clone();
            tokio::spawn(async move {
                while !stop2.is_cancelled() {
                    tokio::time::sleep(renew.lease / 3).await;
                    let _ = renew.renew().await;
                }
            });
            let slots = Arc::new(tokio::sync::Semaphore::new(me.concurrency));
            while !stop.is_cancelled() {
                if let Err(e) = me.tick(&exec, &batches.files, &slots, &stop).await {
                    tracing::warn!("batches: the shared store cannot be read now: {e}");
                    me.pg.reset().await;
                }
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    _ = stop.cancelled() => {}
                }
            }
        });
    }

    async fn renew(&self) -> Result<(), String> {
        let held: Vec<(String, i32)> = self.held.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
        if held.is_empty() {
            return Ok(());
        }
        let until = (crate::clock::now_ms() + self.lease.as_millis() as u64) as i64;
        let c = self.pg.client().await?;
        for (b, i) in held {
            c.execute(
                "UPDATE batch_lines SET lease_until = $4 WHERE batch_id = $1 AND i = $2 AND owner = $3 AND out IS NULL",
                &[&b, &i, &self.replica, &until],
            )
            .await
            .map_err(err)?;
        }
        Ok(())
    }

    /// One look at the batches not finished: start, claim and run lines, finalize.
    async fn tick(
        self: &Arc<Self>,
        exec: &Exec,
        files: &FileStore,
        slots: &Arc<tokio::sync::Semaphore>,
        stop: &CancellationToken,
    ) -> Result<(), String> {
        let open: Vec<(String, Option<String>, BatchObject)> = {
            let c = self.pg.client().await?;
            let rows = c
                .query(
                    "SELECT id, key, object FROM batches WHERE object->>'status' IN \
                     ('validating', 'in_progress', 'cancelling', 'finalizing') ORDER BY created_at",
                    &[],
                )
                .await
                .map_err(err)?;
            rows.iter().map(|r| (r.get(0), r.get(1), r.get::<_, Json<BatchObject>>(2).0)).collect()
        };
        let now_s = crate::clock::now_s();
        for (id, key, b) in open {
            let expired = b.expires_at.is_some_and(|e| now_s >= e);
            if b.status == BatchStatus::Validating {
                self.transition(&id, &[BatchStatus::Validating], |b| {
                    b.status = BatchStatus::InProgress;
                    b.in_progress_at = Some(now_s);
                })
                .await?;
            }
            let running = b.status == BatchStatus::InProgress || b.status == BatchStatus::Validating;
            if running && !expired {
                self.claim_and_run(&id, key, &b, exec, slots, stop).await?;
            }
            if self.none_left(&id, running && !expired).await? {
                self.finalize(&id, files).await?;
            }
        }
        Ok(())
    }

    /// Claims as many lines as this replica has free slots, and runs them in the background.
    async fn claim_and_run(
        self: &Arc<Self>,
        id: &str,
        key: Option<String>,
        b: &BatchObject,
        exec: &Exec,
        slots: &Arc<tokio::sync::Semaphore>,
        stop: &CancellationToken,
    ) -> Result<(), String> {
        let free = slots.available_permits();
        if free == 0 {
            return Ok(());
        }
        let now = crate::clock::now_ms() as i64;
        let until = now + self.lease.as_millis() as i64;
        let rows = {
            let c = self.pg.client().await?;
            c.query(
                "UPDATE batch_lines SET owner = $2, lease_until = $3 WHERE (batch_id, i) IN \
                 (SELECT batch_id, i FROM batch_lines WHERE batch_id = $1 AND out IS NULL \
                  AND (lease_until IS NULL OR lease_until < $4) ORDER BY i LIMIT $5 FOR UPDATE SKIP LOCKED) \
                 RETURNING i, custom_id, body",
                &[&id, &self.replica, &until, &now, &(free as i64)],
            )
            .await
            .map_err(err)?
        };
        let endpoint = endpoint_of(&b.endpoint);
        let expires = b.expires_at.unwrap_or(u64::MAX);
        for r in rows {
            let (i, custom_id, body): (i32, String, String) = (r.get(0), r.get(1), r.get(2));
            let Ok(permit) = slots.clone().try_acquire_owned() else { break };
            self.held.lock().unwrap_or_else(|p| p.into_inner()).insert((id.to_owned(), i));
            let (me, exec, key, bid, stop) = (self.clone(), exec.clone(), key.clone(), id.to_owned(), stop.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let never = CancellationToken::new();
                let done = run_line(&exec, endpoint, key, &bid, &custom_id, body.into(), &stop, &never, expires).await;
                if let Some((ok, out)) = done {
                    if let Err(e) = me.record(&bid, i, ok, &out).await {
                        tracing::error!(batch = %bid, line = i, "cannot record a batch result (the line will run again): {e}");
                    }
                }
                me.held.lock().unwrap_or_else(|p| p.into_inner()).remove(&(bid, i));
            });
        }
        Ok(())
    }

    /// Records a line's result unless one is recorded already (exactly once).
    async fn record(&self, id: &str, i: i32, ok: bool, out: &Value) -> Result<(), String> {
        let c = self.pg.client().await?;
        c.execute(
            "UPDATE batch_lines SET ok = $3, out = $4, owner = NULL, lease_until = NULL \
             WHERE batch_id = $1 AND i = $2 AND out IS NULL",
            &[&id, &i, &ok, &Json(out)],
        )
        .await
        .map_err(err)?;
        Ok(())
    }

    /// Whether the batch can be finalized: every line done (`running`), or (cancelled or
    /// expired) no line held under a live lease.
    async fn none_left(&self, id: &str, running: bool) -> Result<bool, String> {
        let c = self.pg.client().await?;
        let now = crate::clock::now_ms() as i64;
        let r = if running {
            c.query_one("SELECT NOT EXISTS (SELECT 1 FROM batch_lines WHERE batch_id = $1 AND out IS NULL)", &[&id])
                .await
        } else {
            c.query_one(
                "SELECT NOT EXISTS (SELECT 1 FROM batch_lines WHERE batch_id = $1 AND out IS NULL AND lease_until >= $2)",
                &[&id, &now],
            )
            .await
        }
        .map_err(err)?;
        Ok(r.get(0))
    }

    /// Writes the output and error files (in input order) and ends the batch; one replica
    /// does it (the move to `finalizing`, or a `cancelling` batch, is taken under a row lock).
    async fn finalize(&self, id: &str, files: &FileStore) -> Result<(), String> {
        let Some(b) = self
            .transition(
                id,
                &[BatchStatus::InProgress, BatchStatus::Validating, BatchStatus::Cancelling, BatchStatus::Finalizing],
                |b| {
                    if b.status != BatchStatus::Cancelling {
                        b.status = BatchStatus::Finalizing;
                        b.finalizing_at.get_or_insert(crate::clock::now_s());
                    }
                    b.output_file_id.get_or_insert_with(FileStore::new_id);
                    b.error_file_id.get_or_insert_with(FileStore::new_id);
                },
            )
            .await?
        else {
            return Ok(());
        };
        let (owner, rows) = {
            let c = self.pg.client().await?;
            let owner: Option<String> =
                c.query_one("SELECT key FROM batches WHERE id = $1", &[&id]).await.map_err(err)?.get(0);
            let rows = c
                .query("SELECT ok, out FROM batch_lines WHERE batch_id = $1 AND out IS NOT NULL ORDER BY i", &[&id])
                .await
                .map_err(err)?;
            (owner, rows)
        };
        let total = {
            let c = self.pg.client().await?;
            c.query_one("SELECT count(*) FROM batch_lines WHERE batch_id = $1", &[&id])
                .await
                .map_err(err)?
                .get::<_, i64>(0) as u64
        };
        let (mut out, mut errs, mut ok_n) = (Vec::new(), Vec::new(), 0u64);
        for r in &rows {
            let ok: bool = r.get(0);
            let v: Value = r.get::<_, Json<Value>>(1).0;
            ok_n += u64::from(ok);
            let buf = if ok { &mut out } else { &mut errs };
            let _ = serde_json::to_writer(&mut *buf, &v);
            buf.push(b'\n');
        }
        let done = rows.len() as u64;
        let (mut out_id, mut err_id) = (b.output_file_id.clone(), b.error_file_id.clone());
        for (fid, data, suffix) in [(&mut out_id, &out, "output"), (&mut err_id, &errs, "error")] {
            if data.is_empty() {
                *fid = None;
                continue;
            }
            if let Some(f) = fid.as_deref() {
                files
                    .put(f, &format!("{id}_{suffix}.jsonl"), "batch_output", data, owner.as_deref())
                    .map_err(|e| format!("cannot write the {suffix} file: {e}"))?;
            }
        }
        let end = if b.status == BatchStatus::Cancelling {
            BatchStatus::Cancelled
        } else if done < total {
            BatchStatus::Expired
        } else {
            BatchStatus::Completed
        };
        self.transition(id, &[BatchStatus::Finalizing, BatchStatus::Cancelling], |b| {
            let now = Some(crate::clock::now_s());
            b.request_counts = Counts { total, completed: ok_n, failed: done - ok_n };
            b.output_file_id = out_id;
            b.error_file_id = err_id;
            b.status = end;
            match end {
                BatchStatus::Cancelled => b.cancelled_at = now,
                BatchStatus::Expired => b.expired_at = now,
                _ => b.completed_at = now,
            }
        })
        .await?;
        tracing::info!(batch = %id, status = end.as_str(), completed = ok_n, total, "batch ended");
        Ok(())
    }
}

//! Stored Responses every replica reads (with `[cluster]`): each replica writes its local
//! store first (synchronously, as without a cluster) and copies the response and its items
//! to PostgreSQL in the background. PostgreSQL is read first: a response there is the truth
//! (a deleted one stays as a tombstone, so no replica's local copy brings it back); one not
//! there yet is this replica's own copy in flight, or another's, waited for briefly (a
//! follow-up sent to another replica the moment a response is answered).

use std::time::Duration;

use serde_json::Value;
use tokio_postgres::types::Json;

use super::Stored;
use crate::cluster::pg::Pg;
use crate::config::PostgresConfig;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    root TEXT NOT NULL,
    response JSONB NOT NULL,
    input_items JSONB NOT NULL,
    history JSONB NOT NULL,
    deployment TEXT,
    deleted BOOLEAN NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS responses_expiry ON responses (expires_at);
CREATE TABLE IF NOT EXISTS response_items (
    key TEXT NOT NULL,
    id TEXT NOT NULL,
    response_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    item JSONB NOT NULL,
    PRIMARY KEY (key, id)
);
CREATE INDEX IF NOT EXISTS response_items_response ON response_items (response_id);
";

/// What the replicas' store holds for an id.
pub enum Found {
    Stored(Box<Stored>),
    /// Deleted (by any replica): gone everywhere.
    Deleted,
    /// Not there (yet).
    Absent,
}

/// How long a replica waits for a response another replica is still copying.
pub const WAIT: Duration = Duration::from_millis(1000);

pub struct SharedResponses {
    pg: Pg,
}

fn err(e: impl std::fmt::Display) -> String {
    format!("the shared response store: {e}")
}

impl SharedResponses {
    pub fn new(cfg: &PostgresConfig) -> SharedResponses {
        SharedResponses { pg: Pg::new(cfg, SCHEMA.into()) }
    }

    async fn fail<T>(&self, e: impl std::fmt::Display) -> Result<T, String> {
        self.pg.reset().await;
        Err(err(e))
    }

    /// Copies a stored response and its items (expired rows are removed on the way).
    pub async fn put(&self, s: &Stored, now_s: u64, expires: u64) -> Result<(), String> {
        let mut c = self.pg.client().await.map_err(err)?;
        let r = async {
            let tx = c.transaction().await?;
            tx.execute("DELETE FROM responses WHERE expires_at <= $1", &[&(now_s as i64)]).await?;
            tx.execute("DELETE FROM response_items WHERE expires_at <= $1", &[&(now_s as i64)]).await?;
            let output = s.response.get("output").and_then(Value::as_array).into_iter().flatten();
            for item in s.input_items.iter().chain(output) {
                if let Some(id) = item.get("id").and_then(Value::as_str) {
                    // Not for a response deleted meanwhile (its tombstone says so).
                    tx.execute(
                        "INSERT INTO response_items (key, id, response_id, expires_at, item) \
                         SELECT $1, $2, $3, $4, $5 WHERE NOT EXISTS \
                             (SELECT 1 FROM responses WHERE id = $3 AND deleted) \
                         ON CONFLICT (key, id) DO UPDATE SET response_id = $3, expires_at = $4, item = $5",
                        &[&s.key, &id, &s.id, &(expires as i64), &Json(item)],
                    )
                    .await?;
                }
            }
            tx.execute(
                "INSERT INTO responses (id, key, created_at, expires_at, root, response, input_items, history, deployment) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO UPDATE SET key = $2, created_at = $3, \
                 expires_at = $4, root = $5, response = $6, input_items = $7, history = $8, deployment = $9 \
                 WHERE NOT responses.deleted",
                &[
                    &s.id,
                    &s.key,
                    &(s.created_at as i64),
                    &(expires as i64),
                    &s.root,
                    &Json(&s.response),
                    &Json(&s.input_items),
                    &Json(&s.history),
                    &s.deployment,
                ],
            )
            .await?;
            tx.commit().await
        }
        .await;
        drop(c);
        match r {
            Ok(()) => Ok(()),
            Err(e) => self.fail(e).await,
        }
    }

    /// The response `id` of `key` as the replicas' store has it.
    pub async fn lookup(&self, key: &str, id: &str, now_s: u64) -> Result<Found, String> {
        let row = {
            let c = self.pg.client().await.map_err(err)?;
            c.query_opt(
                "SELECT created_at, root, response, input_items, history, deployment, deleted FROM responses \
                 WHERE id = $1 AND key = $2 AND expires_at > $3",
                &[&id, &key, &(now_s as i64)],
            )
            .await
        };
        let row = match row {
            Ok(r) => r,
            Err(e) => return self.fail(e).await,
        };
        let Some(r) = row else { return Ok(Found::Absent) };
        if r.get::<_, bool>(6) {
            return Ok(Found::Deleted);
        }
        let list = |v: Value| match v {
            Value::Array(a) => a,
            _ => Vec::new(),
        };
        Ok(Found::Stored(Box::new(Stored {
            id: id.to_owned(),
            key: key.to_owned(),
            created_at: r.get::<_, i64>(0) as u64,
            root: r.get(1),
            response: r.get::<_, Json<Value>>(2).0,
            input_items: list(r.get::<_, Json<Value>>(3).0),
            history: list(r.get::<_, Json<Value>>(4).0),
            deployment: r.get(5),
        })))
    }

    /// [`SharedResponses::lookup`], waiting up to [`WAIT`] for a response still being copied.
    pub async fn wait_for(&self, key: &str, id: &str, now_s: u64) -> Result<Option<Stored>, String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match self.lookup(key, id, now_s).await? {
                Found::Stored(s) => return Ok(Some(*s)),
                Found::Deleted => return Ok(None),
                Found::Absent if tokio::time::Instant::now() >= deadline => return Ok(None),
                Found::Absent => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
    }

    /// An item of a response `key` stored, by its id, as the store has it now.
    pub async fn item_now(&self, key: &str, id: &str, now_s: u64) -> Result<Option<Value>, String> {
        let row = {
            let c = self.pg.client().await.map_err(err)?;
            c.query_opt(
                "SELECT item FROM response_items WHERE key = $1 AND id = $2 AND expires_at > $3",
                &[&key, &id, &(now_s as i64)],
            )
            .await
        };
        match row {
            Ok(r) => Ok(r.map(|r| r.get::<_, Json<Value>>(0).0)),
            Err(e) => self.fail(e).await,
        }
    }

    /// An item of a response `key` stored, by its id, waiting as [`SharedResponses::wait_for`] does.
    pub async fn item(&self, key: &str, id: &str, now_s: u64) -> Result<Option<Value>, String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match self.item_now(key, id, now_s).await? {
                Some(v) => return Ok(Some(v)),
                None if tokio::time::Instant::now() >= deadline => return Ok(None),
                None => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
    }

    /// Deletes the response (leaving its tombstone, so no replica's copy brings it back) and
    /// its items; whether there was one.
    pub async fn delete(&self, key: &str, id: &str) -> Result<bool, String> {
        let c = self.pg.client().await.map_err(err)?;
        let r = async {
            // The tombstone is written even when the copy has not arrived yet, so the late copy
            // does not bring the response back.
            let existed = c
                .query_opt("SELECT 1 FROM responses WHERE id = $1 AND key = $2 AND NOT deleted", &[&id, &key])
                .await?
                .is_some();
            c.execute(
                "INSERT INTO responses (id, key, created_at, expires_at, root, response, input_items, history, deleted) \
                 VALUES ($1, $2, 0, $3, $1, 'null', '[]', '[]', true) ON CONFLICT (id) DO UPDATE SET deleted = true, \
                 response = 'null', input_items = '[]', history = '[]' WHERE responses.key = $2",
                &[&id, &key, &(i64::MAX / 2)],
            )
            .await?;
            let n = u64::from(existed);
            c.execute("DELETE FROM response_items WHERE response_id = $1 AND key = $2", &[&id, &key]).await?;
            Ok::<_, tokio_postgres::Error>(n > 0)
        }
        .await;
        drop(c);
        match r {
            Ok(n) => Ok(n),
            Err(e) => self.fail(e).await,
        }
    }
}

//! Stored Responses (`store: true`, OpenAI's default): each response object, its input
//! items, and the conversation it ends as chat messages, in SQLite at
//! `<data_dir>/responses.sqlite`, scoped to the API key that made it (another key, or the
//! anonymous caller, never sees it: a 404 as for an id that does not exist) and kept for
//! `[responses] ttl_secs` (30 days by default).
//!
//! Every input and output item is kept by its id too, for `item_reference`.
//! `previous_response_id` continues a conversation from its stored history, and every
//! response of one chain names the chain's first response as its `root`: the gateway makes
//! that the engine's session, so a follow-up prefills only its new input.
//!
//! A response an upstream made itself (its deployment passes the Responses API through) is
//! kept here too, with the name of that `deployment`: it holds the conversation's state, so
//! a follow-up is sent to it, and a delete is forwarded to it.
//!
//! Writes are small (one row per response) and synchronous, so a follow-up sent the moment
//! a response is answered always finds it.
//!
//! With `[cluster]`, every response is copied to PostgreSQL too ([`shared`]), and a replica
//! that does not hold a response (another replica stored it) reads it from there.

pub mod shared;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

/// One stored response.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    pub id: String,
    /// The key's name; empty for the anonymous caller.
    pub key: String,
    pub created_at: u64,
    /// The first response of its chain.
    pub root: String,
    pub response: Value,
    pub input_items: Vec<Value>,
    /// The conversation through this response's output, as chat messages (without the
    /// instructions, which each request gives anew).
    pub history: Vec<Value>,
    /// The deployment whose upstream made and keeps this response (passed through); `None`
    /// when the gateway made it.
    pub deployment: Option<String>,
}

pub struct Conversations {
    db: Mutex<Connection>,
    ttl: Duration,
    /// The replicas' copy (`[cluster]`).
    shared: Option<Arc<shared::SharedResponses>>,
}

fn err(e: rusqlite::Error) -> String {
    format!("the response store: {e}")
}

impl Conversations {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path, ttl: Duration) -> Result<Conversations, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let db = Connection::open(dir.join("responses.sqlite")).map_err(err)?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS responses (
                 id TEXT PRIMARY KEY,
                 key TEXT NOT NULL,
                 created_at INTEGER NOT NULL,
                 expires_at INTEGER NOT NULL,
                 root TEXT NOT NULL,
                 response TEXT NOT NULL,
                 input_items TEXT NOT NULL,
                 history TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS responses_expiry ON responses (expires_at);
             CREATE TABLE IF NOT EXISTS items (
                 key TEXT NOT NULL,
                 id TEXT NOT NULL,
                 response_id TEXT NOT NULL,
                 expires_at INTEGER NOT NULL,
                 item TEXT NOT NULL,
                 PRIMARY KEY (key, id)
             );
             CREATE INDEX IF NOT EXISTS items_response ON items (response_id);",
        )
        .map_err(err)?;
        // Stores made before passed-through responses were kept lack the column.
        let has_deployment = db
            .prepare("SELECT 1 FROM pragma_table_info('responses') WHERE name = 'deployment'")
            .and_then(|mut q| q.exists([]))
            .map_err(err)?;
        if !has_deployment {
            db.execute_batch("ALTER TABLE responses ADD COLUMN deployment TEXT").map_err(err)?;
        }
        Ok(Conversations { db: Mutex::new(db), ttl, shared: None })
    }

    /// Copies every response to the replicas' store, and reads there what is not here.
    pub fn with_shared(mut self, s: shared::SharedResponses) -> Self {
        self.shared = Some(Arc::new(s));
        self
    }

    /// The response `id` of `key`: the replicas' store's (the truth), else this replica's own
    /// copy on its way there, else one another replica is still copying (waited for). With
    /// PostgreSQL down, this replica's own.
    pub async fn find(&self, key: &str, id: &str, now_s: u64) -> Result<Option<Stored>, String> {
        let Some(sh) = &self.shared else { return self.get(key, id, now_s) };
        match sh.lookup(key, id, now_s).await {
            Ok(shared::Found::Stored(s)) => Ok(Some(*s)),
            Ok(shared::Found::Deleted) => Ok(None),
            Ok(shared::Found::Absent) => match self.get(key, id, now_s)? {
                Some(s) => Ok(Some(s)),
                None => sh.wait_for(key, id, now_s).await,
            },
            Err(e) => {
                tracing::warn!("{e}; reading this replica's own stored responses");
                self.get(key, id, now_s)
            }
        }
    }

    /// An item of a response `key` stored: here, or in the replicas' store (waited for
    /// briefly, as [`Conversations::find`] does).
    pub async fn find_item(&self, key: &str, id: &str, now_s: u64) -> Result<Option<Value>, String> {
        let Some(sh) = &self.shared else { return self.item(key, id, now_s) };
        // The replicas' store first (a deleted response's items are gone there), then this
        // replica's own copy in flight, then another's (waited for).
        match sh.item_now(key, id, now_s).await {
            Ok(Some(v)) => Ok(Some(v)),
            Ok(None) => match self.item(key, id, now_s)? {
                Some(v) => Ok(Some(v)),
                None => sh.item(key, id, now_s).await,
            },
            Err(e) => {
                tracing::warn!("{e}; reading this replica's own stored responses");
                self.item(key, id, now_s)
            }
        }
    }

    /// Deletes the response here and in the replicas' store; whether either had it.
    pub async fn remove(&self, key: &str, id: &str) -> Result<bool, String> {
        let here = self.delete(key, id)?;
        match &self.shared {
            Some(sh) => Ok(sh.delete(key, id).await? || here),
            None => Ok(here),
        }
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a response, and its input and output items for `item_reference`; expired rows
    /// are removed on the way.
    pub fn put(&self, s: &Stored, now_s: u64) -> Result<(), String> {
        let mut db = self.db();
        let expires = now_s.saturating_add(self.ttl.as_secs());
        let tx = db.transaction().map_err(err)?;
        tx.execute("DELETE FROM responses WHERE expires_at <= ?1", params![now_s as i64]).map_err(err)?;
        tx.execute("DELETE FROM items WHERE expires_at <= ?1", params![now_s as i64]).map_err(err)?;
        let output = s.response.get("output").and_then(Value::as_array).into_iter().flatten();
        for item in s.input_items.iter().chain(output) {
            if let Some(id) = item.get("id").and_then(Value::as_str) {
                tx.execute(
                    "INSERT OR REPLACE INTO items (key, id, response_id, expires_at, item) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![s.key, id, s.id, expires as i64, item.to_string()],
                )
                .map_err(err)?;
            }
        }
        tx.execute(
            "INSERT OR REPLACE INTO responses
                 (id, key, created_at, expires_at, root, response, input_items, history, deployment)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                s.id,
                s.key,
                s.created_at as i64,
                expires as i64,
                s.root,
                s.response.to_string(),
                Value::Array(s.input_items.clone()).to_string(),
                Value::Array(s.history.clone()).to_string(),
                s.deployment,
            ],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        drop(db);
        // The replicas' copy, in the background (a replica that asks meanwhile waits for it).
        if let (Some(sh), Ok(rt)) = (&self.shared, tokio::runtime::Handle::try_current()) {
            let (sh, s) = (sh.clone(), s.clone());
            rt.spawn(async move {
                if let Err(e) = sh.put(&s, now_s, expires).await {
                    tracing::error!(response = %s.id, "not copied to the replicas' store: {e}");
                }
            });
        }
        Ok(())
    }

    /// An item (input or output) of a response `key` stored, by its id.
    pub fn item(&self, key: &str, id: &str, now_s: u64) -> Result<Option<Value>, String> {
        let text: Option<String> = self
            .db()
            .query_row(
                "SELECT item FROM items WHERE key = ?1 AND id = ?2 AND expires_at > ?3",
                params![key, id, now_s as i64],
                |r| r.get(0),
            )
            .optional()
            .map_err(err)?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// The response `id` made by `key`, if it exists and has not expired.
    pub fn get(&self, key: &str, id: &str, now_s: u64) -> Result<Option<Stored>, String> {
        let db = self.db();
        let row = db
            .query_row(
                "SELECT created_at, root, response, input_items, history, deployment FROM responses
                 WHERE id = ?1 AND key = ?2 AND expires_at > ?3",
                params![id, key, now_s as i64],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, Option<String>>(5)?,
                    ))
                },
            )
            .optional()
            .map_err(err)?;
        let Some((created_at, root, response, input, history, deployment)) = row else { return Ok(None) };
        let list = |t: &str| match serde_json::from_str(t) {
            Ok(Value::Array(a)) => a,
            _ => Vec::new(),
        };
        Ok(Some(Stored {
            id: id.to_owned(),
            key: key.to_owned(),
            created_at: created_at as u64,
            root,
            response: serde_json::from_str(&response).unwrap_or(Value::Null),
            input_items: list(&input),
            history: list(&history),
            deployment,
        }))
    }

    /// Deletes the response `id` made by `key`; false when there was none.
    pub fn delete(&self, key: &str, id: &str) -> Result<bool, String> {
        let db = self.db();
        let n = db.execute("DELETE FROM responses WHERE id = ?1 AND key = ?2", params![id, key]).map_err(err)?;
        db.execute("DELETE FROM items WHERE response_id = ?1 AND key = ?2", params![id, key]).map_err(err)?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stored(id: &str, key: &str) -> Stored {
        Stored {
            id: id.into(),
            key: key.into(),
            created_at: 100,
            root: "resp_root".into(),
            response: json!({"id": id, "object": "response"}),
            input_items: vec![json!({"id": "msg_1", "type": "message"})],
            history: vec![json!({"role": "user", "content": "hi"})],
            deployment: None,
        }
    }

    #[test]
    fn a_response_is_kept_for_its_key_until_it_expires_or_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let c = Conversations::open(dir.path(), Duration::from_secs(60)).unwrap();
        c.put(&stored("resp_1", "a"), 100).unwrap();
        assert_eq!(c.get("a", "resp_1", 120).unwrap(), Some(stored("resp_1", "a")));
        assert_eq!(c.get("b", "resp_1", 120).unwrap(), None, "another key sees nothing");
        assert_eq!(c.get("", "resp_1", 120).unwrap(), None, "nor does the anonymous caller");
        assert_eq!(c.item("a", "msg_1", 120).unwrap(), Some(json!({"id": "msg_1", "type": "message"})));
        assert_eq!(c.item("b", "msg_1", 120).unwrap(), None);
        assert_eq!(c.get("a", "resp_1", 160).unwrap(), None, "expired");
        assert_eq!(c.item("a", "msg_1", 160).unwrap(), None, "expired with it");
        c.put(&stored("resp_2", "a"), 100).unwrap();
        assert!(!c.delete("b", "resp_2").unwrap());
        assert!(c.delete("a", "resp_2").unwrap());
        assert_eq!(c.get("a", "resp_2", 101).unwrap(), None);
        // A later write sweeps what has expired.
        c.put(&stored("resp_3", "a"), 200).unwrap();
        let n: i64 = c.db().query_row("SELECT COUNT(*) FROM responses", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn a_store_made_before_passthrough_gains_the_deployment_column() {
        let dir = tempfile::tempdir().unwrap();
        let old = Connection::open(dir.path().join("responses.sqlite")).unwrap();
        old.execute_batch(
            "CREATE TABLE responses (id TEXT PRIMARY KEY, key TEXT NOT NULL, created_at INTEGER NOT NULL,
                 expires_at INTEGER NOT NULL, root TEXT NOT NULL, response TEXT NOT NULL,
                 input_items TEXT NOT NULL, history TEXT NOT NULL);
             INSERT INTO responses VALUES ('resp_old', 'a', 1, 9999, 'resp_old', '{}', '[]', '[]');",
        )
        .unwrap();
        drop(old);
        let c = Conversations::open(dir.path(), Duration::from_secs(60)).unwrap();
        let kept = c.get("a", "resp_old", 100).unwrap().unwrap();
        assert_eq!(kept.deployment, None, "an old row was made by the gateway");
        let mut s = stored("resp_up", "a");
        s.deployment = Some("openai-up".into());
        c.put(&s, 100).unwrap();
        assert_eq!(c.get("a", "resp_up", 120).unwrap(), Some(s));
        // Opening it again finds the column there.
        drop(c);
        Conversations::open(dir.path(), Duration::from_secs(60)).unwrap();
    }
}

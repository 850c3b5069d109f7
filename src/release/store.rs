//! The release store: each registry model's current stages and the audit trail of every
//! change, in SQLite (`data_dir/releases.sqlite`). A change and its audit record are
//! written in one transaction, so the trail never disagrees with the state it explains.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::ReleaseError;

/// Where a model's traffic goes.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Stages {
    pub production: Option<String>,
    pub staging: Option<String>,
    /// Percent of sticky identities sent to `staging`.
    pub canary_weight: f64,
    /// The production version before the last promotion: kept loaded, the rollback target.
    pub previous: Option<String>,
}

/// One change: what, when, by whom, why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at_ms: u64,
    pub model: String,
    /// `promote`, `rollback`, `canary`, `weight`, `auto_rollback`, `seed` (from `routes/`),
    /// or `promote_failed` and the like for a change that was refused.
    pub action: String,
    pub version: Option<String>,
    /// The admin key (`admin:` and its hash prefix), `open`, or `auto`.
    pub actor: String,
    pub reason: Option<String>,
    /// The stages before and after (JSON), and any measurements behind the change.
    pub detail: serde_json::Value,
}

pub struct Store {
    conn: Connection,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, ReleaseError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|error| ReleaseError::CreateDir { dir: dir.to_owned(), error })?;
        }
        let open_error = |error| ReleaseError::Open { path: path.to_owned(), error };
        let conn = Connection::open(path).map_err(open_error)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS stages (
                 model TEXT PRIMARY KEY,
                 production TEXT,
                 staging TEXT,
                 canary_weight REAL NOT NULL DEFAULT 0,
                 previous TEXT,
                 updated_ms INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS audit (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 at_ms INTEGER NOT NULL,
                 model TEXT NOT NULL,
                 action TEXT NOT NULL,
                 version TEXT,
                 actor TEXT NOT NULL,
                 reason TEXT,
                 detail TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS audit_model ON audit(model, id);",
        )
        .map_err(open_error)?;
        Ok(Store { conn })
    }

    pub fn all(&self) -> Result<HashMap<String, Stages>, ReleaseError> {
        let mut st = self.conn.prepare("SELECT model, production, staging, canary_weight, previous FROM stages")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                Stages { production: r.get(1)?, staging: r.get(2)?, canary_weight: r.get(3)?, previous: r.get(4)? },
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn get(&self, model: &str) -> Result<Option<Stages>, ReleaseError> {
        self.conn
            .query_row(
                "SELECT production, staging, canary_weight, previous FROM stages WHERE model = ?1",
                [model],
                |r| {
                    Ok(Stages {
                        production: r.get(0)?,
                        staging: r.get(1)?,
                        canary_weight: r.get(2)?,
                        previous: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(ReleaseError::from)
    }

    /// Writes the model's new stages (when given) and the audit record, atomically; the
    /// record's id.
    pub fn apply(&mut self, stages: Option<&Stages>, entry: &AuditEntry) -> Result<i64, ReleaseError> {
        let tx = self.conn.transaction()?;
        if let Some(s) = stages {
            tx.execute(
                "INSERT INTO stages (model, production, staging, canary_weight, previous, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(model) DO UPDATE SET production = ?2, staging = ?3, canary_weight = ?4,
                     previous = ?5, updated_ms = ?6",
                params![entry.model, s.production, s.staging, s.canary_weight, s.previous, entry.at_ms as i64],
            )?;
        }
        tx.execute(
            "INSERT INTO audit (at_ms, model, action, version, actor, reason, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                entry.at_ms as i64,
                entry.model,
                entry.action,
                entry.version,
                entry.actor,
                entry.reason,
                entry.detail.to_string()
            ],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        Ok(id)
    }

    /// The audit trail, oldest first; one model's or every model's.
    pub fn audit(&self, model: Option<&str>) -> Result<Vec<AuditEntry>, ReleaseError> {
        let mut st = self.conn.prepare(
            "SELECT id, at_ms, model, action, version, actor, reason, detail FROM audit
                 WHERE ?1 IS NULL OR model = ?1 ORDER BY id",
        )?;
        let rows = st.query_map([model], |r| {
            let detail: String = r.get(7)?;
            Ok(AuditEntry {
                id: r.get(0)?,
                at_ms: r.get::<_, i64>(1)? as u64,
                model: r.get(2)?,
                action: r.get(3)?,
                version: r.get(4)?,
                actor: r.get(5)?,
                reason: r.get(6)?,
                detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(model: &str, action: &str) -> AuditEntry {
        AuditEntry {
            id: 0,
            at_ms: 1,
            model: model.into(),
            action: action.into(),
            version: Some("1.0.0".into()),
            actor: "admin:abc".into(),
            reason: Some("why".into()),
            detail: serde_json::json!({"k": 1}),
        }
    }

    #[test]
    fn stages_and_audit_survive_reopening() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("releases.sqlite");
        {
            let mut s = Store::open(&path).unwrap();
            let st = Stages { production: Some("1.0.0".into()), canary_weight: 10.0, ..Stages::default() };
            s.apply(Some(&st), &entry("gemma", "promote")).unwrap();
            s.apply(None, &entry("gemma", "promote_failed")).unwrap();
            s.apply(None, &entry("other", "seed")).unwrap();
        }
        let s = Store::open(&path).unwrap();
        let st = s.get("gemma").unwrap().unwrap();
        assert_eq!(st.production.as_deref(), Some("1.0.0"));
        assert_eq!(st.canary_weight, 10.0);
        assert!(s.get("other").unwrap().is_none(), "an audit-only change writes no stages");
        let trail = s.audit(Some("gemma")).unwrap();
        assert_eq!(trail.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(), ["promote", "promote_failed"]);
        assert_eq!(trail[0].detail, serde_json::json!({"k": 1}));
        assert_eq!(s.audit(None).unwrap().len(), 3);
    }
}

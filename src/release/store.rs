//! The release store: each registry model's current stages and the audit trail of every
//! change, in SQLite (`data_dir/releases.sqlite`). A change and its audit record are
//! written in one transaction, so the trail never disagrees with the state it explains.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
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

/// A change to a model's stages that an admin asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Blue/green: a version becomes production.
    Promote,
    /// A version is staged as the canary.
    Canary,
    /// The current canary's weight changes.
    Weight,
    /// The previous production version answers again.
    Rollback,
}

impl Change {
    const ALL: [Change; 4] = [Change::Promote, Change::Canary, Change::Weight, Change::Rollback];

    pub fn as_str(self) -> &'static str {
        match self {
            Change::Promote => "promote",
            Change::Canary => "canary",
            Change::Weight => "weight",
            Change::Rollback => "rollback",
        }
    }
}

/// What an audit record says happened. Written to the store and to JSON as the strings it
/// has always had (`seed`, `promote`, `promote_failed`, `canary_reverted`, `auto_rollback`,
/// ...), so existing stores read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditAction {
    /// A model's first start: the stages `routes/` declares (`seed`).
    Seed,
    /// An admin change, made (`promote`).
    Applied(Change),
    /// An admin change refused because its version could not be made ready; the stages did
    /// not change (`promote_failed`).
    Failed(Change),
    /// An admin change recorded, then undone because the routes could not take it
    /// (`promote_reverted`).
    Reverted(Change),
    /// A canary's weight set to 0 by its comparison with production (`auto_rollback`).
    AutoRollback,
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuditAction::Seed => f.write_str("seed"),
            AuditAction::Applied(c) => f.write_str(c.as_str()),
            AuditAction::Failed(c) => write!(f, "{}_failed", c.as_str()),
            AuditAction::Reverted(c) => write!(f, "{}_reverted", c.as_str()),
            AuditAction::AutoRollback => f.write_str("auto_rollback"),
        }
    }
}

/// A stored action that is none of [`AuditAction`]'s.
#[derive(Debug, thiserror::Error)]
#[error("'{0}' is not an audit action")]
pub struct UnknownAction(pub String);

impl std::str::FromStr for AuditAction {
    type Err = UnknownAction;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let change = |name: &str| Change::ALL.into_iter().find(|c| c.as_str() == name);
        let action = match s {
            "seed" => Some(AuditAction::Seed),
            "auto_rollback" => Some(AuditAction::AutoRollback),
            _ => match (s.strip_suffix("_failed"), s.strip_suffix("_reverted")) {
                (Some(c), _) => change(c).map(AuditAction::Failed),
                (_, Some(c)) => change(c).map(AuditAction::Reverted),
                _ => change(s).map(AuditAction::Applied),
            },
        };
        action.ok_or_else(|| UnknownAction(s.to_owned()))
    }
}

impl Serialize for AuditAction {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl ToSql for AuditAction {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.to_string()))
    }
}

impl FromSql for AuditAction {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value.as_str()?.parse().map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

/// One change: what, when, by whom, why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at_ms: u64,
    pub model: String,
    pub action: AuditAction,
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

    /// Writes stages adopted from the shared store (its audit trail is the one kept there).
    pub fn set_stages(&mut self, model: &str, s: &Stages, at_ms: u64) -> Result<(), ReleaseError> {
        self.conn.execute(
            "INSERT INTO stages (model, production, staging, canary_weight, previous, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(model) DO UPDATE SET production = ?2, staging = ?3, canary_weight = ?4,
                 previous = ?5, updated_ms = ?6",
            params![model, s.production, s.staging, s.canary_weight, s.previous, at_ms as i64],
        )?;
        Ok(())
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

    fn entry(model: &str, action: AuditAction) -> AuditEntry {
        AuditEntry {
            id: 0,
            at_ms: 1,
            model: model.into(),
            action,
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
            s.apply(Some(&st), &entry("gemma", AuditAction::Applied(Change::Promote))).unwrap();
            s.apply(None, &entry("gemma", AuditAction::Failed(Change::Promote))).unwrap();
            s.apply(None, &entry("other", AuditAction::Seed)).unwrap();
        }
        let s = Store::open(&path).unwrap();
        let st = s.get("gemma").unwrap().unwrap();
        assert_eq!(st.production.as_deref(), Some("1.0.0"));
        assert_eq!(st.canary_weight, 10.0);
        assert!(s.get("other").unwrap().is_none(), "an audit-only change writes no stages");
        let trail = s.audit(Some("gemma")).unwrap();
        let actions: Vec<AuditAction> = trail.iter().map(|e| e.action).collect();
        assert_eq!(actions, [AuditAction::Applied(Change::Promote), AuditAction::Failed(Change::Promote)]);
        assert_eq!(trail[0].detail, serde_json::json!({"k": 1}));
        assert_eq!(s.audit(None).unwrap().len(), 3);
    }

    fn every_action() -> Vec<AuditAction> {
        let mut all = vec![AuditAction::Seed, AuditAction::AutoRollback];
        for c in Change::ALL {
            all.extend([AuditAction::Applied(c), AuditAction::Failed(c), AuditAction::Reverted(c)]);
        }
        all
    }

    #[test]
    fn actions_are_written_as_their_old_strings_and_read_back() {
        let strings: Vec<String> = every_action().iter().map(ToString::to_string).collect();
        assert_eq!(
            strings,
            [
                "seed",
                "auto_rollback",
                "promote",
                "promote_failed",
                "promote_reverted",
                "canary",
                "canary_failed",
                "canary_reverted",
                "weight",
                "weight_failed",
                "weight_reverted",
                "rollback",
                "rollback_failed",
                "rollback_reverted"
            ]
        );
        for a in every_action() {
            assert_eq!(a.to_string().parse::<AuditAction>().unwrap(), a);
            assert_eq!(serde_json::to_value(a).unwrap(), serde_json::json!(a.to_string()));
        }
        for bad in
            ["", "promote_", "_failed", "seed_failed", "auto_rollback_reverted", "Promote", "promote_failed_failed"]
        {
            assert!(bad.parse::<AuditAction>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_store_written_with_plain_strings_reads_back() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("releases.sqlite");
        drop(Store::open(&path).unwrap());
        // As the store was written before actions were typed.
        let conn = Connection::open(&path).unwrap();
        for a in ["seed", "promote", "canary_failed", "weight_reverted", "auto_rollback"] {
            conn.execute(
                "INSERT INTO audit (at_ms, model, action, version, actor, reason, detail) VALUES (1, 'm', ?1, NULL, 'auto', NULL, '{}')",
                [a],
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        let actions: Vec<AuditAction> = s.audit(Some("m")).unwrap().iter().map(|e| e.action).collect();
        assert_eq!(
            actions,
            [
                AuditAction::Seed,
                AuditAction::Applied(Change::Promote),
                AuditAction::Failed(Change::Canary),
                AuditAction::Reverted(Change::Weight),
                AuditAction::AutoRollback
            ]
        );
        // An action this version does not know is an error, not a silently wrong record.
        conn.execute(
            "INSERT INTO audit (at_ms, model, action, actor, detail) VALUES (2, 'm', 'retire', 'x', '{}')",
            [],
        )
        .unwrap();
        let e = s.audit(Some("m")).unwrap_err().to_string();
        assert!(e.contains("'retire' is not an audit action"), "{e}");
    }
}

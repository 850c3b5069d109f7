//! The release store every replica shares (with `[cluster]`): the stages and the one audit
//! trail in PostgreSQL, the truth; each replica's SQLite store keeps the last stages it
//! adopted (so a restart without the database starts from them). A change is written here
//! first — compared with the stages it was planned against, under a row lock, so two
//! replicas' changes cannot both land — then made live locally and announced on Redis;
//! the other replicas read the store again and adopt it.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_postgres::types::Json;

use super::store::{AuditEntry, Stages};
use super::ReleaseError;
use crate::cluster::pg::Pg;
use crate::cluster::Cluster;
use crate::config::PostgresConfig;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS release_stages (
    model TEXT PRIMARY KEY,
    production TEXT,
    staging TEXT,
    canary_weight DOUBLE PRECISION NOT NULL DEFAULT 0,
    previous TEXT,
    updated_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS release_audit (
    id BIGSERIAL PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    model TEXT NOT NULL,
    action TEXT NOT NULL,
    version TEXT,
    actor TEXT NOT NULL,
    reason TEXT,
    detail JSONB NOT NULL
);
CREATE INDEX IF NOT EXISTS release_audit_model ON release_audit (model, id);
";

pub struct SharedStore {
    pg: Pg,
    pub cluster: Arc<Cluster>,
}

fn err(e: impl std::fmt::Display) -> ReleaseError {
    ReleaseError::Shared(e.to_string())
}

fn stages_of(r: &tokio_postgres::Row, at: usize) -> Stages {
    Stages { production: r.get(at), staging: r.get(at + 1), canary_weight: r.get(at + 2), previous: r.get(at + 3) }
}

impl SharedStore {
    pub fn new(cfg: &PostgresConfig, cluster: Arc<Cluster>) -> SharedStore {
        SharedStore { pg: Pg::new(cfg, SCHEMA.into()), cluster }
    }

    async fn client(&self) -> Result<tokio::sync::MappedMutexGuard<'_, tokio_postgres::Client>, ReleaseError> {
        self.pg.client().await.map_err(err)
    }

    pub async fn all(&self) -> Result<HashMap<String, Stages>, ReleaseError> {
        let c = self.client().await?;
        let rows = c
            .query("SELECT model, production, staging, canary_weight, previous FROM release_stages", &[])
            .await
            .map_err(err)?;
        Ok(rows.iter().map(|r| (r.get::<_, String>(0), stages_of(r, 1))).collect())
    }

    /// The model's stored stages; the first replica to ask stores `stages` (with `entry`, its
    /// `seed` record) when there are none.
    pub async fn seed(&self, stages: &Stages, entry: &AuditEntry) -> Result<Stages, ReleaseError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(err)?;
        let n = tx
            .execute(
                "INSERT INTO release_stages (model, production, staging, canary_weight, previous, updated_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (model) DO NOTHING",
                &[
                    &entry.model,
                    &stages.production,
                    &stages.staging,
                    &stages.canary_weight,
                    &stages.previous,
                    &(entry.at_ms as i64),
                ],
            )
            .await
            .map_err(err)?;
        if n == 1 {
            insert_audit(&tx, entry).await?;
        }
        let r = tx
            .query_one(
                "SELECT production, staging, canary_weight, previous FROM release_stages WHERE model = $1",
                &[&entry.model],
            )
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(stages_of(&r, 0))
    }

    /// Writes the new stages (when given) and the audit record in one transaction; with
    /// `expected`, only if the stored stages are still those. The record's id.
    pub async fn apply(
        &self,
        expected: Option<&Stages>,
        stages: Option<&Stages>,
        entry: &AuditEntry,
    ) -> Result<i64, ReleaseError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(err)?;
        if let Some(exp) = expected {
            let now = tx
                .query_opt(
                    "SELECT production, staging, canary_weight, previous FROM release_stages WHERE model = $1 FOR UPDATE",
                    &[&entry.model],
                )
                .await
                .map_err(err)?;
            if now.is_some_and(|r| stages_of(&r, 0) != *exp) {
                return Err(ReleaseError::StagesChanged);
            }
        }
        if let Some(s) = stages {
            tx.execute(
                "INSERT INTO release_stages (model, production, staging, canary_weight, previous, updated_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (model) DO UPDATE SET production = $2, staging = $3, \
                 canary_weight = $4, previous = $5, updated_ms = $6",
                &[&entry.model, &s.production, &s.staging, &s.canary_weight, &s.previous, &(entry.at_ms as i64)],
            )
            .await
            .map_err(err)?;
        }
        let id = insert_audit(&tx, entry).await?;
        tx.commit().await.map_err(err)?;
        Ok(id)
    }

    /// The one audit trail, oldest first.
    pub async fn audit(&self, model: Option<&str>) -> Result<Vec<AuditEntry>, ReleaseError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT id, at_ms, model, action, version, actor, reason, detail FROM release_audit \
                 WHERE $1::text IS NULL OR model = $1 ORDER BY id",
                &[&model],
            )
            .await
            .map_err(err)?;
        rows.iter()
            .map(|r| {
                let action: String = r.get(3);
                Ok(AuditEntry {
                    id: r.get(0),
                    at_ms: r.get::<_, i64>(1) as u64,
                    model: r.get(2),
                    action: action.parse().map_err(err)?,
                    version: r.get(4),
                    actor: r.get(5),
                    reason: r.get(6),
                    detail: r.get::<_, Json<serde_json::Value>>(7).0,
                })
            })
            .collect()
    }
}

async fn insert_audit(tx: &tokio_postgres::Transaction<'_>, e: &AuditEntry) -> Result<i64, ReleaseError> {
    let r = tx
        .query_one(
            "INSERT INTO release_audit (at_ms, model, action, version, actor, reason, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            &[&(e.at_ms as i64), &e.model, &e.action.to_string(), &e.version, &e.actor, &e.reason, &Json(&e.detail)],
        )
        .await
        .map_err(err)?;
    Ok(r.get(0))
}

//! One PostgreSQL connection, made when first needed and again after it breaks, with the
//! tables its user needs created first (replicas starting together take turns: an advisory
//! lock). The ledger's shipper and the release store each hold one.

use std::time::Duration;

use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};
use tokio_postgres::{Client, NoTls};

use crate::config::PostgresConfig;

pub struct Pg {
    cfg: PostgresConfig,
    schema: String,
    client: Mutex<Option<Client>>,
}

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pg")
    }
}

impl Pg {
    /// `schema`: statements run once per connection (`CREATE TABLE IF NOT EXISTS ...`).
    pub fn new(cfg: &PostgresConfig, schema: String) -> Pg {
        Pg { cfg: cfg.clone(), schema, client: Mutex::new(None) }
    }

    /// The connected client.
    pub async fn client(&self) -> Result<MappedMutexGuard<'_, Client>, String> {
        let mut g = self.client.lock().await;
        if g.as_ref().is_none_or(Client::is_closed) {
            *g = Some(self.connect().await?);
        }
        Ok(MutexGuard::map(g, |c| c.as_mut().expect("connected above")))
    }

    async fn connect(&self) -> Result<Client, String> {
        let mut config: tokio_postgres::Config = self.cfg.url.0.parse().map_err(|e| format!("postgres_url: {e}"))?;
        if let Some(p) = &self.cfg.password {
            config.password(&p.0);
        }
        config.connect_timeout(Duration::from_secs(5));
        let (mut client, conn) = config.connect(NoTls).await.map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("PostgreSQL connection ended: {e}");
            }
        });
        let tx = client.transaction().await.map_err(|e| e.to_string())?;
        tx.batch_execute(&format!("SELECT pg_advisory_xact_lock(7406351); {}", self.schema))
            .await
            .map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())?;
        Ok(client)
    }

    /// Drops the connection (after an error: the next call connects again).
    pub async fn reset(&self) {
        *self.client.lock().await = None;
    }
}

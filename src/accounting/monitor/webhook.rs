//! Alert delivery: one background task POSTs each alert as JSON, in order, with retries.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::{Alert, WEBHOOK_BACKOFF, WEBHOOK_RETRIES};

/// The webhook task: one POST per alert, in order, each retried at most [`WEBHOOK_RETRIES`] times.
pub(super) async fn send_webhooks(
    client: reqwest::Client,
    url: String,
    mut rx: mpsc::Receiver<Alert>,
    failures: Arc<AtomicU64>,
) {
    while let Some(alert) = rx.recv().await {
        for attempt in 0..=WEBHOOK_RETRIES {
            if attempt > 0 {
                tokio::time::sleep(WEBHOOK_BACKOFF * attempt).await;
            }
            let err = match client.post(&url).json(&alert).send().await {
                Ok(r) if r.status().is_success() => break,
                Ok(r) => format!("status {}", r.status()),
                Err(e) => e.to_string(),
            };
            failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target: "tollgate::alert", kind = alert.kind.as_str(), deployment = %alert.deployment,
                attempt = attempt + 1, error = %err, "alert webhook failed");
        }
    }
}

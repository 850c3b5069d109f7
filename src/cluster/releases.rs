//! Release changes told to every replica: the replica that changes a model's stages (in the
//! shared store, the truth) publishes the model's name on `<prefix>:releases`; every replica
//! subscribes, and reads the store again when told, when its subscription is (re)made, and
//! every few seconds in case a message was missed while Redis was away.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use super::Cluster;

/// How often the store is read again without a message.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(5);

impl Cluster {
    fn releases_channel(&self) -> String {
        format!("{}:releases", self.cfg.prefix)
    }

    /// Tells every replica that `model`'s stages changed.
    pub async fn publish_release(self: &Arc<Self>, model: &str) {
        let (ch, m) = (self.releases_channel(), model.to_owned());
        let _: Option<i64> = self
            .call("publish", |mut c| async move { redis::cmd("PUBLISH").arg(ch).arg(m).query_async(&mut c).await })
            .await;
    }

    /// The models whose stages changed, as other replicas tell them (`"*"`: read them all:
    /// the subscription was just made, or nothing was heard for a while).
    pub fn release_changes(self: &Arc<Self>) -> tokio::sync::mpsc::UnboundedReceiver<String> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let me = self.clone();
        self.spawn(async move {
            loop {
                if tx.is_closed() {
                    return;
                }
                let sub = async {
                    let mut ps = me.client.get_async_pubsub().await?;
                    ps.subscribe(me.releases_channel()).await?;
                    redis::RedisResult::Ok(ps)
                };
                match tokio::time::timeout(me.cfg.timeout.max(Duration::from_secs(1)), sub).await {
                    Ok(Ok(ps)) => {
                        let _ = tx.send("*".into());
                        let mut msgs = ps.into_on_message();
                        loop {
                            match tokio::time::timeout(RECONCILE_EVERY, msgs.next()).await {
                                Ok(Some(m)) => {
                                    let _ = tx.send(m.get_payload::<String>().unwrap_or_else(|_| "*".into()));
                                }
                                Ok(None) => break,
                                Err(_) => {
                                    if tx.send("*".into()).is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    }
                    _ => {
                        let _ = tx.send("*".into());
                        tokio::time::sleep(RECONCILE_EVERY).await;
                    }
                }
            }
        });
        rx
    }
}

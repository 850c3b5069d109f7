//! The server's lifecycle: bind, serve, and the graceful drain (streams finish within the
//! grace period, batch lines are recorded, alerts sent, the ledger closed).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{router, state_with_clock, AppState};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;

/// A running server: its address, its state, and how to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    pub shutdown: CancellationToken,
    pub done: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stops accepting, lets streams finish up to the grace period, then closes them.
    pub async fn stop(self) -> std::io::Result<()> {
        self.shutdown.cancel();
        self.done.await.unwrap_or(Ok(()))
    }
}

/// Binds and serves in the background (tests bind `127.0.0.1:0`).
pub async fn spawn(cfg: &Config, listen: SocketAddr) -> anyhow::Result<Running> {
    spawn_with_clock(cfg, listen, Arc::new(SystemClock)).await
}

pub async fn spawn_with_clock(cfg: &Config, listen: SocketAddr, clock: Arc<dyn Clock>) -> anyhow::Result<Running> {
    let st = state_with_clock(cfg, clock).await?;
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let done = tokio::spawn(serve(listener, st.clone(), shutdown.clone()));
    Ok(Running { addr, state: st, shutdown, done })
}

pub async fn serve(listener: TcpListener, st: Arc<AppState>, shutdown: CancellationToken) -> std::io::Result<()> {
    let app = router(st.clone());
    let limits = super::listen::Limits::of(&st.server);
    // Batches a previous run left unfinished carry on.
    st.batches.resume(st.batch_exec(), &st.batch_tasks, st.batch_stop.clone());
    let tracker = TaskTracker::new();
    let grace = st.server.shutdown_grace;
    let hard_stop = st.hard_stop.clone();
    let sd = shutdown.clone();
    tracker.spawn(async move {
        sd.cancelled().await;
        tokio::select! {
            _ = tokio::time::sleep(grace) => hard_stop.cancel(),
            _ = hard_stop.cancelled() => {}
        }
    });
    tracker.close();
    let started = Instant::now();
    let r = super::listen::serve(listener, app, limits, shutdown.clone()).await;
    st.hard_stop.cancel();
    tracker.wait().await;
    // Batch runners start no new line; lines in flight get the grace period, and any line
    // not recorded by then runs again at the next start.
    st.batch_stop.cancel();
    st.batch_tasks.close();
    let _ = tokio::time::timeout(grace, st.batch_tasks.wait()).await;
    // Alerts raised so far are sent (bounded: a webhook that hangs does not hold the exit).
    let _ = tokio::time::timeout(Duration::from_secs(5), st.accounting.monitor.drain()).await;
    // Every finished request is in the journal already; this moves it into the database.
    if let Some(l) = st.accounting.ledger.clone() {
        let _ = tokio::task::spawn_blocking(move || l.close()).await;
    }
    // And from there into the shared ledger, if it answers (what does not waits for the next start).
    if let Some(pg) = &st.accounting.postgres {
        let _ = tokio::time::timeout(Duration::from_secs(5), pg.flush()).await;
    }
    // The spans still in the exporter's batch are sent (bounded by the exporter's timeout).
    let accounting = st.accounting.clone();
    let _ = tokio::task::spawn_blocking(move || accounting.telemetry.as_ref().map(|t| t.shutdown())).await;
    tracing::info!(uptime_s = started.elapsed().as_secs(), "server stopped");
    r
}

//! `tollgate serve`: starts the API, handles signals (SIGINT/SIGTERM: graceful shutdown;
//! SIGHUP: reload keys and routes) and says loudly when it runs without keys.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::config::{self, Config, LoadOptions};

pub async fn run(cfg: Config, opts: LoadOptions) -> anyhow::Result<()> {
    if cfg.auth.open {
        tracing::warn!("AUTH IS OPEN: any client can call this gateway without a key; use it for local work only");
    }
    if cfg.aliases.is_empty() {
        tracing::warn!("no model aliases are configured: add routes/*.toml or pass --model FILE.gguf");
    }
    // Before anything opens files: the engine's model, the ledger, every client connection.
    api::raise_open_file_limit();
    let st = api::state(&cfg).await?;
    let listener = TcpListener::bind(cfg.server.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.server.listen))?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(st.clone(), opts, shutdown.clone()));
    tracing::info!(%addr, aliases = cfg.aliases.len(), "tollgate is listening on http://{addr}");
    api::serve(listener, st, shutdown).await?;
    Ok(())
}

#[cfg(unix)]
async fn signals(st: Arc<AppState>, opts: LoadOptions, shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) =
        (signal(SignalKind::interrupt()), signal(SignalKind::terminate()), signal(SignalKind::hangup()))
    else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = int.recv() => break,
            _ = term.recv() => break,
            _ = hup.recv() => match config::load(&opts) {
                Ok(cfg) => match st.reload(&cfg).await {
                    Ok(()) => tracing::info!(aliases = cfg.aliases.len(), "configuration reloaded"),
                    Err(e) => tracing::error!("reload failed, keeping the running configuration: {e}"),
                },
                Err(errs) => tracing::error!("reload refused, keeping the running configuration:\n{errs}"),
            },
        }
    }
    tracing::info!(
        grace_s = st.server.shutdown_grace.as_secs(),
        "shutting down: no new connections; open streams may finish"
    );
    shutdown.cancel();
}

#[cfg(not(unix))]
async fn signals(_st: Arc<AppState>, _opts: LoadOptions, shutdown: CancellationToken) {
    let _ = tokio::signal::ctrl_c().await;
    shutdown.cancel();
}

//! What each subcommand does, from raw flags to an exit code.

use std::process::ExitCode;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cli::{CatArgs, PushArgs, ServeArgs, TokenCommand};
use crate::config::{Config, Overrides};

/// `engine-gateway serve`.
pub async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(Overrides {
        listen: args.listen,
        data_dir: args.data_dir,
        config: args.config,
        max_connections: args.max_connections,
        inflight_bytes: args.inflight_bytes,
    })?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested: no new connections, finishing requests in flight");
        let _ = stop.send(true);
        wait_for_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    crate::gateway::run(config, listener, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM or SIGINT, whichever comes first.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot watch SIGTERM, only SIGINT stops the gateway");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

pub async fn token(_command: TokenCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("pending")
}

pub async fn push(_args: PushArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("pending")
}

pub async fn cat(_args: CatArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("pending")
}

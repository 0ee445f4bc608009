//! Assembles a running gateway from a [`Config`]: store, tokens, HTTP, shutdown.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::{Authenticator, FileTokenStore, JwtVerifier, TokenStore, bootstrap_admin};
use crate::budget::ByteBudget;
use crate::config::Config;
use crate::http::{self, AppState};
use crate::memory::MemoryWatch;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::store::embedded::{EmbeddedConfig, EmbeddedStore};

/// Runs the gateway on `listener` until `shutdown` turns true; then drains connections and
/// makes everything received durable before returning.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let memory_config = config.memory.clone();
    let memory_dir = data_dir.clone();
    let memory =
        tokio::task::spawn_blocking(move || MemoryWatch::start(&memory_config, &memory_dir))
            .await
            .context("memory watch task failed")?;
    let store_dir = data_dir.join("store");
    let store =
        tokio::task::spawn_blocking(move || EmbeddedStore::open(EmbeddedConfig::new(store_dir)))
            .await
            .context("store opening task failed")?
            .context("opening the embedded store")?;
    let store: Arc<dyn Store> = Arc::new(store);

    let tokens: Arc<dyn TokenStore> = Arc::new(
        FileTokenStore::open(&data_dir)
            .await
            .context("opening the token store")?,
    );
    if let Some(path) = bootstrap_admin(tokens.as_ref(), &data_dir)
        .await
        .context("creating the first admin token")?
    {
        tracing::info!(path = %path.display(), "no tokens yet: created an admin token, its secret is in this file");
    }
    let jwt =
        match &config.jwt {
            Some(jwt) => Some(
                JwtVerifier::from_pem_file(
                    &jwt.public_key,
                    jwt.audience.clone(),
                    jwt.issuer.clone(),
                )
                .with_context(|| {
                    format!("loading the JWT public key {}", jwt.public_key.display())
                })?,
            ),
            None => None,
        };
    let auth = Arc::new(Authenticator::new(tokens, jwt));

    let metrics = Arc::new(Metrics::default());
    let state = Arc::new(AppState {
        store: Arc::clone(&store),
        auth,
        budget: ByteBudget::new(config.inflight_bytes),
        metrics: Arc::clone(&metrics),
        limits: config.handler.clone(),
        shutdown: shutdown.clone(),
        memory: Arc::new(memory),
    });
    let address = listener
        .local_addr()
        .context("reading the listening address")?;
    tracing::info!(%address, data_dir = %data_dir.display(), "engine-gateway listening");
    http::server::serve(
        listener,
        http::app(state),
        config.server.clone(),
        metrics,
        shutdown,
    )
    .await
    .context("serving HTTP")?;
    store.close().await.context("closing the store")?;
    tracing::info!("stopped; everything acknowledged is durable");
    Ok(())
}

//! Assembles a running gateway from a [`Config`]: store, tokens, HTTP, shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::{Authenticator, FileTokenStore, JwtVerifier, TokenStore, bootstrap_admin};
use crate::budget::ByteBudget;
use crate::config::{Config, StoreConfig};
use crate::http::server::Drain;
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::store::embedded::{EmbeddedConfig, EmbeddedStore, WriteTrials};
use crate::store::nats::tokens::NatsTokenStore;
use crate::store::nats::{NatsConfig, NatsStore};
use crate::store::{ErrorKind, Store};

/// First pause between connection attempts to an unreachable NATS at start; doubles up to
/// [`MAX_STARTUP_BACKOFF`].
const FIRST_STARTUP_BACKOFF: Duration = Duration::from_millis(200);
/// Longest pause between connection attempts at start.
const MAX_STARTUP_BACKOFF: Duration = Duration::from_secs(5);

/// The two phases of a stop, driven by the signal handler (`commands::serve`) or a test.
#[derive(Clone, Debug)]
pub struct Shutdown {
    /// Turns true when a stop is requested: `/readyz` answers 503 so load balancers take the
    /// gateway out of rotation, while everything keeps serving.
    pub draining: watch::Receiver<bool>,
    /// Turns true when serving ends: the listener closes, requests in flight drain.
    pub stop: watch::Receiver<bool>,
}

impl Shutdown {
    /// Both phases from one signal (no readiness delay).
    pub fn immediate(stop: watch::Receiver<bool>) -> Shutdown {
        Shutdown {
            draining: stop.clone(),
            stop,
        }
    }
}

/// How a gateway that did not fail stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Every request finished; everything acknowledged is durable.
    Clean,
    /// The drain deadline cut this many connections with requests still running (their
    /// committed bytes are durable; the clients resume from `HEAD`).
    DrainCut(usize),
}

/// The store failed (opening, serving or closing): `serve` exits with its own code.
#[derive(Debug)]
pub struct StoreFailed(pub &'static str);

impl std::fmt::Display for StoreFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// Runs the gateway on `listener` until `shutdown.stop` turns true; then drains connections
/// and makes everything received durable before returning.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<Stopped> {
    let Shutdown {
        draining,
        stop: shutdown,
    } = shutdown;
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    // The post-mortem of the previous run (logged), then the flight recorder.
    let memory_settings = config.memory.clone();
    let capture_dir = data_dir.join("memwatch");
    let memory = tokio::task::spawn_blocking(move || {
        memwatch::Memwatch::builder()
            .capture_dir(capture_dir)
            .settings(&memory_settings)
            .start()
    })
    .await
    .context("memory watch task failed")?
    .context("starting memwatch")?;
    let Some((store, tokens)) = open_backends_or_stop(&config, draining.clone()).await? else {
        tracing::info!("shutdown requested while waiting for the store");
        return Ok(Stopped::Clean);
    };
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
    let (deadline_tx, deadline) = watch::channel(false);
    let state = Arc::new(AppState {
        store: Arc::clone(&store),
        auth,
        budget: ByteBudget::new(config.inflight_bytes, config.org_inflight_share),
        metrics: Arc::clone(&metrics),
        limits: config.handler.clone(),
        shutdown: shutdown.clone(),
        draining,
        deadline,
        memory: memory.clone(),
        access_log: config.access_log,
    });
    let address = listener
        .local_addr()
        .context("reading the listening address")?;
    let backend = match &config.store {
        StoreConfig::Embedded => "embedded".to_owned(),
        StoreConfig::Nats { nats, .. } => nats.urls.join(","),
    };
    tracing::info!(%address, data_dir = %data_dir.display(), store = %backend, "engine-gateway listening");
    let drain = http::server::serve(
        listener,
        http::app(state),
        config.server.clone(),
        metrics,
        shutdown,
        deadline_tx,
    )
    .await
    .context("serving HTTP")?;
    store
        .close()
        .await
        .context(StoreFailed("closing the store"))?;
    memory.mark_clean_exit();
    Ok(match drain {
        Drain::Clean => {
            tracing::info!("stopped; everything acknowledged is durable");
            Stopped::Clean
        }
        Drain::Cut(connections) => {
            tracing::warn!(
                connections,
                "stopped after cutting requests at the drain deadline; everything acknowledged is durable"
            );
            Stopped::DrainCut(connections)
        }
    })
}

/// The stream store and the token store the configuration names.
///
/// Embedded: the store under `DATA_DIR/store`, tokens as files under `DATA_DIR/tokens`.
/// NATS: one connection (retried at start, see [`connect_nats`]) shared by the JetStream
/// store and the key-value token bucket.
pub async fn open_backends(
    config: &Config,
) -> anyhow::Result<(Arc<dyn Store>, Arc<dyn TokenStore>)> {
    let (_stop, never) = watch::channel(false);
    open_backends_or_stop(config, never)
        .await?
        .context("stopped while opening the store")
}

/// [`open_backends`], giving up quietly (`None`) when `shutdown` turns true meanwhile.
async fn open_backends_or_stop(
    config: &Config,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Option<(Arc<dyn Store>, Arc<dyn TokenStore>)>> {
    match &config.store {
        StoreConfig::Embedded => {
            let store_config = EmbeddedConfig {
                retention: config.retention.clone(),
                // set: that way only; unset: measured while running, the faster kept
                direct_writes: config.direct_writes.unwrap_or(true),
                write_trials: config.direct_writes.is_none().then(WriteTrials::default),
                ..EmbeddedConfig::new(config.data_dir.join("store"))
            };
            let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(store_config))
                .await
                .context("store opening task failed")?
                .context(StoreFailed("opening the embedded store"))?;
            let tokens = FileTokenStore::open(&config.data_dir)
                .await
                .context("opening the token store")?;
            Ok(Some((Arc::new(store), Arc::new(tokens))))
        }
        StoreConfig::Nats {
            nats,
            startup_timeout,
        } => {
            let Some(store) = connect_nats(nats, *startup_timeout, shutdown).await? else {
                return Ok(None);
            };
            let tokens = NatsTokenStore::open(&store, &nats.bucket)
                .await
                .with_context(|| format!("opening the nats token bucket {}", nats.bucket))?;
            Ok(Some((Arc::new(store), Arc::new(tokens))))
        }
    }
}

/// Connects to NATS, retrying with backoff for up to `wait` while it is unreachable (it often
/// starts at the same time as the gateways), but failing at once on incompatible stream or
/// bucket settings, which no retry fixes. The gateway does not listen meanwhile, so a load
/// balancer sends it nothing; past `wait` it exits with the reason, and its supervisor's
/// restarts make the outage visible. `None` when `shutdown` turns true first.
pub async fn connect_nats(
    nats: &NatsConfig,
    wait: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Option<NatsStore>> {
    let started = Instant::now();
    let mut backoff = FIRST_STARTUP_BACKOFF;
    loop {
        let err = match NatsStore::connect(nats.clone()).await {
            Ok(store) => return Ok(Some(store)),
            Err(err) if err.kind() != ErrorKind::Unavailable => {
                return Err(anyhow::Error::new(err)
                    .context("nats store settings")
                    .context(StoreFailed("connecting to nats")));
            }
            Err(err) => err,
        };
        if started.elapsed() + backoff > wait {
            return Err(anyhow::anyhow!(
                "nats is unreachable ({}): gave up after {} s (nats.startup_timeout_secs)",
                err,
                started.elapsed().as_secs()
            )
            .context(StoreFailed("connecting to nats")));
        }
        tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "nats unreachable at start, retrying");
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|stop| *stop) => return Ok(None),
        }
        backoff = (backoff * 2).min(MAX_STARTUP_BACKOFF);
    }
}

/// The token bucket alone, for the `token` commands: one connection attempt, no waiting.
pub async fn open_nats_tokens(nats: NatsConfig) -> anyhow::Result<Arc<dyn TokenStore>> {
    let bucket = nats.bucket.clone();
    let urls = nats.urls.join(",");
    let store = NatsStore::connect(nats)
        .await
        .with_context(|| format!("connecting to nats at {urls}"))?;
    let tokens = NatsTokenStore::open_unwatched(&store, &bucket)
        .await
        .with_context(|| format!("opening the nats token bucket {bucket}"))?;
    Ok(Arc::new(tokens))
}

//! The NATS JetStream backend: stateless gateway replicas sharing one JetStream stream.
//!
//! Every gateway stream is one subject of one JetStream stream ([`codec`] has the encoding and
//! the headers); each append is one message (or several for large chunks), published with
//! `Nats-Expected-Last-Subject-Sequence` set to the subject's last sequence the gateway based
//! the append on, so JetStream itself serializes appends: two replicas can never interleave.
//! The committed offset and the sealed flag are read back from the subject's last message, so
//! no gateway keeps state of its own; the per-stream caches here are hints checked by the
//! server on every publish.
//!
//! **Architecture invariant:** every publish carries an expected subject sequence; a message
//! is only ever stored directly after the message its `Egw-Offset` was computed from.

mod append;
pub mod codec;
mod publishers;
mod read;
mod retry;
mod setup;
mod state;
pub mod tokens;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Appended, ReadChunk, Store, StoreError, StreamInfo};
use crate::stream_id::StreamId;

/// Largest payload of one JetStream message; larger appends are split (server default
/// `max_payload` is 1 MiB, headers need room too).
pub const MAX_MESSAGE_PAYLOAD: usize = 512 * 1024;

/// How to reach and lay out the JetStream deployment.
#[derive(Clone, Debug)]
pub struct NatsConfig {
    /// Server URLs, `nats://host:port` (or `tls://`); several for a cluster.
    pub urls: Vec<String>,
    pub credentials: Credentials,
    pub tls: TlsConfig,
    /// Name of the JetStream stream holding every gateway stream.
    pub stream: String,
    /// First subject token; the stream takes `<prefix>.data.>`.
    pub subject_prefix: String,
    /// Key-value bucket for tokens (created at connect so every replica shares it).
    pub bucket: String,
    /// JetStream replicas of the stream and the bucket: 1, or 3 for a cluster.
    pub replicas: usize,
    /// Age after which JetStream drops messages; `None` keeps them until deleted.
    pub max_age: Option<Duration>,
    /// Size at which JetStream refuses new messages (discard new, so nothing acknowledged is
    /// ever dropped to make room); `None` for no limit.
    pub max_bytes: Option<u64>,
    /// Limit on establishing the first connection.
    pub connect_timeout: Duration,
    /// Limit on one JetStream operation, retries included; past it the operation fails with
    /// `Unavailable`.
    pub request_timeout: Duration,
    /// Limit on one attempt of a request or publish acknowledgement: after a leader loss the
    /// next attempt reaches the new leader (see `retry.rs`).
    pub attempt_timeout: Duration,
}

/// How the gateway authenticates to NATS.
#[derive(Clone, Default)]
pub enum Credentials {
    #[default]
    None,
    Token(String),
    UserPassword {
        user: String,
        password: String,
    },
    /// An nkey seed (`SU...`).
    NkeySeed(String),
    /// A `.creds` file (JWT + nkey seed).
    CredsFile(PathBuf),
}

/// Secrets stay out of Debug output.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::Token(_) => f.write_str("Token(<redacted>)"),
            Credentials::UserPassword { user, .. } => write!(f, "UserPassword({user}, <redacted>)"),
            Credentials::NkeySeed(_) => f.write_str("NkeySeed(<redacted>)"),
            Credentials::CredsFile(path) => write!(f, "CredsFile({})", path.display()),
        }
    }
}

/// TLS towards the NATS servers.
#[derive(Clone, Debug, Default)]
pub struct TlsConfig {
    /// PEM file of CAs to trust in addition to the system roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for servers that verify clients.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Refuse plain-text connections.
    pub require: bool,
}

impl NatsConfig {
    /// Defaults for one or several URLs: `nats://h:p[,nats://h2:p2]`.
    pub fn from_url(s: &str) -> Result<NatsConfig, StoreError> {
        let urls: Vec<String> = s
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect();
        if urls.is_empty() {
            return Err(StoreError::internal(format!("no nats url in {s:?}")));
        }
        for url in &urls {
            let scheme_ok = ["nats://", "tls://"].iter().any(|p| url.starts_with(p));
            if !scheme_ok || url.parse::<async_nats::ServerAddr>().is_err() {
                return Err(StoreError::internal(format!(
                    "{url:?} is not a nats url (nats://host:port or tls://host:port)"
                )));
            }
        }
        Ok(NatsConfig {
            urls,
            credentials: Credentials::None,
            tls: TlsConfig::default(),
            stream: "ENGINE_GATEWAY".into(),
            subject_prefix: "egw".into(),
            bucket: "egw-tokens".into(),
            replicas: 1,
            max_age: None,
            max_bytes: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(1),
        })
    }
}

/// A [`Store`] on NATS JetStream. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct NatsStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    /// The connection threads' own connections, which their publishes use (`publishers`).
    publishers: Arc<publishers::Publishers>,
    /// Handle on the JetStream stream (its name and API context; not its info).
    stream: async_nats::jetstream::stream::Stream,
    subjects: codec::Subjects,
    /// Last known tip of recently used streams: a hint the server checks, never the truth.
    tips: state::TipCache,
    /// Last message read per stream, so sequential readers find the next one in one request.
    cursors: read::CursorCache,
    /// Set by `close`: every later operation is `Unavailable`.
    closed: AtomicBool,
    /// All attempts of one operation together (each attempt has the context's timeout).
    request_timeout: Duration,
    /// The last readiness verdict, kept fresh by a background watch.
    health: retry::Health,
    metrics: Metrics,
}

/// Counters for `write_metrics`.
#[derive(Default)]
struct Metrics {
    publishes: AtomicU64,
    conflicts: AtomicU64,
    dedups: AtomicU64,
    errors: AtomicU64,
    retries: AtomicU64,
}

impl NatsStore {
    /// Connects, then creates the JetStream stream and key-value bucket, or checks that the
    /// existing ones are compatible. Fails with `Unavailable` when NATS cannot be reached and
    /// with `Internal` (a message naming the setting) on incompatible settings.
    pub async fn connect(config: NatsConfig) -> Result<NatsStore, StoreError> {
        let (client, js, stream) = setup::connect(&config).await?;
        let request_timeout = config.request_timeout.max(config.attempt_timeout);
        let store = NatsStore {
            inner: Arc::new(Inner {
                client,
                js,
                stream,
                subjects: codec::Subjects::new(&config.subject_prefix),
                publishers: publishers::Publishers::new(config.clone()),
                tips: state::TipCache::default(),
                cursors: read::CursorCache::default(),
                closed: AtomicBool::new(false),
                request_timeout,
                health: retry::Health::default(),
                metrics: Metrics::default(),
            }),
        };
        tokio::spawn(retry::watch_health(Arc::downgrade(&store.inner)));
        Ok(store)
    }

    /// The JetStream context, for the token store on the same connection.
    pub fn jetstream(&self) -> &async_nats::jetstream::Context {
        &self.inner.js
    }

    /// The connection, for the token store's view of its state.
    pub(crate) fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }
}

impl Inner {
    /// Refuses at once when closed, or while the connection is known to be down (nothing
    /// would succeed, and a client should not wait out a timeout to learn it).
    fn check_open(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::unavailable("the store is closed"));
        }
        if !self.connected() {
            return Err(self.disconnected());
        }
        if let Some(why) = self.health.known_down() {
            return Err(StoreError::unavailable(why));
        }
        Ok(())
    }

    fn disconnected(&self) -> StoreError {
        StoreError::unavailable("nats is not connected (reconnecting)")
    }

    /// Counts and builds an `Unavailable` error for a failed NATS request.
    fn unavailable(&self, what: &str, err: impl fmt::Display) -> StoreError {
        self.metrics.errors.fetch_add(1, Ordering::Relaxed);
        StoreError::unavailable(format!("nats: {what}: {err}"))
    }
}

#[async_trait]
impl Store for NatsStore {
    async fn head(&self, id: &StreamId) -> Result<StreamInfo, StoreError> {
        self.inner.check_open()?;
        let tip = self.inner.fetch_tip(id).await?;
        tip.info(id)
    }

    async fn append(
        &self,
        id: &StreamId,
        offset: u64,
        data: Bytes,
        seal: bool,
    ) -> Result<Appended, StoreError> {
        self.inner.check_open()?;
        self.inner.append(id, offset, data, seal).await
    }

    async fn read(&self, id: &StreamId, offset: u64, max: usize) -> Result<ReadChunk, StoreError> {
        self.inner.check_open()?;
        self.inner.read(id, offset, max).await
    }

    async fn wait(&self, id: &StreamId, offset: u64, timeout: Duration) -> Result<(), StoreError> {
        self.inner.check_open()?;
        self.inner.wait(id, offset, timeout).await
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<StreamInfo>, StoreError> {
        self.inner.check_open()?;
        self.inner.list(prefix, limit).await
    }

    async fn delete(&self, id: &StreamId) -> Result<(), StoreError> {
        self.inner.check_open()?;
        self.inner.delete(id).await
    }

    async fn ready(&self) -> Result<(), StoreError> {
        // The probe first: it records what it finds (a disconnect too), which the checks below
        // and the settle read.
        let probed = self.inner.ready().await;
        self.inner.check_open()?;
        probed?;
        if let Some(ago) = self.inner.health.settling() {
            return Err(StoreError::unavailable(format!(
                "nats: a check failed {:.1} s ago; ready again after {} s without a failure",
                ago.as_secs_f64(),
                read::PEER_SILENCE.as_secs()
            )));
        }
        Ok(())
    }

    async fn close(&self) -> Result<(), StoreError> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // Every acknowledged publish is already stored by JetStream; flushing only pushes out
        // what is still buffered (nothing acknowledged depends on it).
        if let Err(err) = self.inner.client.flush().await {
            tracing::warn!(error = %err, "nats flush on close failed");
        }
        Ok(())
    }

    fn write_metrics(&self, out: &mut String) {
        use crate::metrics::{write_counter, write_gauge};
        let m = &self.inner.metrics;
        let connected = matches!(
            self.inner.client.connection_state(),
            async_nats::connection::State::Connected
        );
        for (name, help, value) in [
            (
                "publishes",
                "messages acknowledged by JetStream",
                &m.publishes,
            ),
            (
                "conflicts",
                "appends refused for a wrong offset or a seal",
                &m.conflicts,
            ),
            (
                "dedups",
                "publishes JetStream recognised as duplicates",
                &m.dedups,
            ),
            (
                "errors",
                "nats requests that failed or timed out",
                &m.errors,
            ),
            (
                "retries",
                "nats request attempts retried after a timeout or during a leader election",
                &m.retries,
            ),
        ] {
            write_counter(
                out,
                &format!("engine_gateway_store_nats_{name}_total"),
                help,
                value.load(Ordering::Relaxed),
            );
        }
        write_gauge(
            out,
            "engine_gateway_store_nats_connected",
            "whether the nats connection is up",
            u8::from(connected),
        );
        write_gauge(
            out,
            "engine_gateway_store_nats_thread_connections",
            "connection threads publishing over a nats connection of their own that is up",
            self.inner.publishers.connected(),
        );
    }
}

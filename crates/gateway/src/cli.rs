//! Command-line surface: `serve`, `token create|list|revoke`, `push`, `cat`, `store check|repair`.
//!
//! Phase one only: raw flags as clap parses them. `main` turns them into validated
//! configurations and runs them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::StoreOverrides;
use crate::config::units::ByteSize;
use crate::logging::LogFormat;

/// A duration flag: a number with ms, s, m, h or d; a bare number is seconds.
fn parse_seconds(text: &str) -> Result<Duration, String> {
    crate::config::units::parse_duration(text, Duration::from_secs(1))
}

/// Authenticated, resumable byte streams into a durable store.
#[derive(Debug, Parser)]
#[command(name = "engine-gateway", version, about, propagate_version = true)]
pub struct Cli {
    /// Log lines as `text` (for people) or `json` (one object per line, for log shippers).
    #[arg(
        long,
        global = true,
        env = "ENGINE_GATEWAY_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        value_name = "FORMAT"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Create, list and revoke access tokens (works while the gateway runs).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Upload a file or stdin to a stream, resuming after any error.
    Push(PushArgs),
    /// Read a stream to stdout, optionally following new bytes.
    Cat(CatArgs),
    /// Check or repair the embedded store's log (the gateway must be stopped).
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Read the whole log and report damage and the streams it touches; exit 1 if damaged.
    Check(StoreDirArgs),
    /// Move damaged records (and what depends on them) to quarantine, keep every intact
    /// record, rebuild the index. Nothing is deleted.
    Repair(StoreDirArgs),
}

#[derive(Debug, Args)]
pub struct StoreDirArgs {
    /// The gateway's data directory (the store is DIR/store, the tokens DIR/tokens).
    #[arg(
        long,
        env = "ENGINE_GATEWAY_DATA_DIR",
        value_name = "DIR",
        default_value = "./data"
    )]
    pub data_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "ENGINE_GATEWAY_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Directory for streams, tokens and the admin token [default: ./data].
    #[arg(long, env = "ENGINE_GATEWAY_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML configuration file (flags and environment win over it).
    #[arg(long, env = "ENGINE_GATEWAY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Connections served at once; more are answered 503.
    #[arg(long, env = "ENGINE_GATEWAY_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Body bytes held in memory at once, all connections together (e.g. 16MiB).
    #[arg(long, env = "ENGINE_GATEWAY_INFLIGHT_BYTES", value_name = "SIZE")]
    pub inflight_bytes: Option<ByteSize>,
    /// Memory limit for the soft limit and the flight recorder, e.g. 256MiB [default: the
    /// cgroup's].
    #[arg(long, env = "ENGINE_GATEWAY_MEMORY_LIMIT", value_name = "SIZE")]
    pub memory_limit: Option<ByteSize>,
    /// After SIGTERM, how long /readyz answers 503 while everything still serves, before the
    /// listener closes (load balancers need a moment to stop sending), e.g. 5s; SIGINT skips
    /// it [default: 5s].
    #[arg(long, env = "ENGINE_GATEWAY_SHUTDOWN_DELAY", value_name = "DURATION", value_parser = parse_seconds)]
    pub shutdown_delay: Option<Duration>,
    /// Log every request (method, route, status, error code, bytes, duration, org, token id)
    /// on target engine_gateway::access.
    #[arg(long, env = "ENGINE_GATEWAY_ACCESS_LOG", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub access_log: Option<bool>,
    /// Any setting of the config file, as section.key=value (repeatable), e.g.
    /// `--set limits.body_timeout_secs=10`; also `ENGINE_GATEWAY_<SECTION>__<KEY>=value`.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = crate::config::overlay::from_flag)]
    pub set: Vec<crate::config::overlay::Setting>,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Where streams and tokens live; `serve` and every `token` command take the same flags.
#[derive(Args)]
pub struct StoreArgs {
    /// `embedded` (local disk, the default) or NATS JetStream:
    /// nats://host:port[,nats://host2:port2...] (several URLs for a cluster).
    #[arg(long, env = "ENGINE_GATEWAY_STORE", value_name = "STORE")]
    pub store: Option<String>,
    /// NATS credentials file (JWT + nkey seed, as `nsc` writes it).
    #[arg(long, env = "ENGINE_GATEWAY_NATS_CREDS", value_name = "FILE")]
    pub nats_creds: Option<PathBuf>,
    /// NATS authentication token.
    #[arg(long, env = "ENGINE_GATEWAY_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// NATS user (with --nats-password).
    #[arg(long, env = "ENGINE_GATEWAY_NATS_USER")]
    pub nats_user: Option<String>,
    /// NATS password (with --nats-user).
    #[arg(long, env = "ENGINE_GATEWAY_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// File holding a NATS user nkey seed (SU...).
    #[arg(long, env = "ENGINE_GATEWAY_NATS_NKEY", value_name = "FILE")]
    pub nats_nkey: Option<PathBuf>,
    /// PEM file of CAs to trust for TLS to NATS (turns TLS on).
    #[arg(long, env = "ENGINE_GATEWAY_NATS_TLS_CA", value_name = "FILE")]
    pub nats_tls_ca: Option<PathBuf>,
    /// PEM client certificate for TLS to NATS (with --nats-tls-key).
    #[arg(long, env = "ENGINE_GATEWAY_NATS_TLS_CERT", value_name = "FILE")]
    pub nats_tls_cert: Option<PathBuf>,
    /// PEM private key of --nats-tls-cert.
    #[arg(long, env = "ENGINE_GATEWAY_NATS_TLS_KEY", value_name = "FILE")]
    pub nats_tls_key: Option<PathBuf>,
    /// JetStream replicas of the stream and token bucket when they are created: 1 or 3.
    #[arg(long, env = "ENGINE_GATEWAY_NATS_REPLICAS", value_name = "N")]
    pub nats_replicas: Option<usize>,
}

/// Secrets stay out of Debug output.
impl std::fmt::Debug for StoreArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreArgs")
            .field("store", &self.store)
            .field("nats_user", &self.nats_user)
            .field("nats_replicas", &self.nats_replicas)
            .finish_non_exhaustive()
    }
}

impl StoreArgs {
    /// The flags as configuration overrides.
    pub fn overrides(self) -> StoreOverrides {
        StoreOverrides {
            store: self.store,
            nats_creds: self.nats_creds,
            nats_token: self.nats_token,
            nats_user: self.nats_user,
            nats_password: self.nats_password,
            nats_nkey: self.nats_nkey,
            nats_tls_ca: self.nats_tls_ca,
            nats_tls_cert: self.nats_tls_cert,
            nats_tls_key: self.nats_tls_key,
            nats_replicas: self.nats_replicas,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; prints the secret alone on stdout.
    Create(TokenCreateArgs),
    /// List tokens (ids and scopes, never secrets).
    List(TokenStoreArgs),
    /// Revoke a token by id; takes effect on the next request.
    Revoke(TokenRevokeArgs),
}

/// Where the `token` commands find the tokens: the data directory (embedded store) or the
/// NATS key-value bucket (`--store nats://...`; the data directory is then not used).
#[derive(Debug, Args)]
pub struct TokenStoreArgs {
    /// The gateway's data directory (embedded store only; not used with NATS).
    #[command(flatten)]
    pub dir: StoreDirArgs,
    /// TOML configuration file, for its `store` and `[nats]` settings.
    #[arg(long, env = "ENGINE_GATEWAY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    #[command(flatten)]
    pub target: TokenStoreArgs,
    /// Organisation the token is bound to (not for admin tokens).
    #[arg(long)]
    pub org: Option<String>,
    /// Cluster a deployer token is bound to.
    #[arg(long)]
    pub cluster: Option<String>,
    /// deployer, reader or admin.
    #[arg(long)]
    pub role: String,
    /// Lifetime, e.g. 30d, 12h, 15m; none by default.
    #[arg(long)]
    pub ttl: Option<String>,
}

#[derive(Debug, Args)]
pub struct TokenRevokeArgs {
    #[command(flatten)]
    pub target: TokenStoreArgs,
    /// Token id, as printed by `token list`.
    pub id: String,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Gateway base URL, e.g. http://127.0.0.1:8080 or https://gw.example.com.
    #[arg(long, env = "ENGINE_GATEWAY_URL")]
    pub url: String,
    /// For https:// URLs: trust the CA certificates in this PEM file instead of the system's.
    #[arg(long, env = "ENGINE_GATEWAY_CA_CERT", value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,
    /// Bearer token.
    #[arg(long, env = "ENGINE_GATEWAY_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Stream id, ORG/CLUSTER/NAME.
    #[arg(long)]
    pub stream: String,
    /// Give up after this long without progress while retrying (e.g. 30s, 5m, 1h); exit 1.
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub retry_for: String,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Seal the stream after the last byte.
    #[arg(long)]
    pub seal: bool,
    /// Add the input after what the stream already holds, instead of resuming the stream as
    /// this input (without it, a stream holding other bytes is refused).
    #[arg(long)]
    pub append: bool,
    /// Bytes per PATCH request before a new one starts (bounds what a retry resends), e.g. 8MiB.
    #[arg(long, default_value = "8MiB", value_name = "SIZE")]
    pub request_bytes: ByteSize,
    /// File to send, or - for stdin.
    #[arg(default_value = "-")]
    pub input: PathBuf,
}

#[derive(Debug, Args)]
pub struct CatArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Offset to start reading at.
    #[arg(long, default_value_t = 0)]
    pub offset: u64,
    /// Keep reading new bytes until the stream is sealed.
    #[arg(long)]
    pub follow: bool,
}

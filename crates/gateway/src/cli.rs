//! Command-line surface: `serve`, `token create|list|revoke`, `push`, `cat`.
//!
//! Phase one only: raw flags as clap parses them. `main` turns them into validated
//! configurations and runs them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Authenticated, resumable byte streams into a durable store.
#[derive(Debug, Parser)]
#[command(name = "engine-gateway", version, about, propagate_version = true)]
pub struct Cli {
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
    /// Body bytes held in memory at once, all connections together.
    #[arg(long, env = "ENGINE_GATEWAY_INFLIGHT_BYTES", value_name = "BYTES")]
    pub inflight_bytes: Option<usize>,
    /// Memory limit in bytes for the soft limit and the flight recorder [default: the cgroup's].
    #[arg(long, env = "ENGINE_GATEWAY_MEMORY_LIMIT", value_name = "BYTES")]
    pub memory_limit: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; prints the secret alone on stdout.
    Create(TokenCreateArgs),
    /// List tokens (ids and scopes, never secrets).
    List(DataDirArg),
    /// Revoke a token by id; takes effect on the next request.
    Revoke(TokenRevokeArgs),
}

#[derive(Debug, Args)]
pub struct DataDirArg {
    /// The gateway's data directory.
    #[arg(
        long,
        env = "ENGINE_GATEWAY_DATA_DIR",
        value_name = "DIR",
        default_value = "./data"
    )]
    pub data_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
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
    pub data_dir: DataDirArg,
    /// Token id, as printed by `token list`.
    pub id: String,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Gateway base URL, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "ENGINE_GATEWAY_URL")]
    pub url: String,
    /// Bearer token.
    #[arg(long, env = "ENGINE_GATEWAY_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Stream id, ORG/CLUSTER/NAME.
    #[arg(long)]
    pub stream: String,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Seal the stream after the last byte.
    #[arg(long)]
    pub seal: bool,
    /// Bytes per PATCH request before a new one starts (bounds what a retry resends).
    #[arg(long, default_value_t = 8 * 1024 * 1024, value_name = "BYTES")]
    pub request_bytes: usize,
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

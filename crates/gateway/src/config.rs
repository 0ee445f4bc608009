//! Configuration: raw inputs (flags, environment, a TOML file) folded into one validated
//! [`Config`]. Flags and `ENGINE_GATEWAY_*` variables win over the file, the file over defaults.

mod store;

pub use store::{DEFAULT_NATS_STARTUP_TIMEOUT, StoreConfig, StoreOverrides};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::http::HandlerLimits;
use crate::http::server::ServerLimits;

/// Everything `serve` needs, validated.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub server: ServerLimits,
    pub handler: HandlerLimits,
    /// Bytes of request/response bodies held in memory at once, all connections together.
    pub inflight_bytes: usize,
    /// Share of `inflight_bytes` one org may hold, so one tenant cannot take it all.
    pub org_inflight_share: f64,
    pub jwt: Option<JwtConfig>,
    pub memory: MemoryConfig,
    /// Embedded or NATS JetStream.
    pub store: StoreConfig,
}

/// The memory limit, the flight recorder and the soft limit (memwatch).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Bytes; `None` takes the cgroup's limit (a larger value is capped by the cgroup's).
    pub limit_bytes: Option<u64>,
    /// Whether the flight recorder runs (it needs a limit, from the cgroup or `limit_bytes`).
    pub recorder: bool,
    /// Where captures go; default `DATA_DIR/memwatch`. Not a tmpfs: its pages would count
    /// against the very limit being watched.
    pub capture_dir: Option<PathBuf>,
    /// Capture thresholds as shares of the limit.
    pub ladder: Vec<f64>,
    /// New work is refused (503) above this share of the limit...
    pub soft_limit: f64,
    /// ...until usage falls below this share.
    pub soft_limit_resume: f64,
    /// Captures kept on disk, oldest removed first.
    pub max_captures: usize,
    /// Seconds of memory history a capture holds...
    pub timeline_seconds: u64,
    /// ...of which the newest are at 1 ms, the older ones 100 ms maxima (16 bytes per sample:
    /// 20 s at 1 ms is 0.3 MiB of resident memory, 300 s would be 4.6 MiB).
    pub timeline_fine_seconds: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            limit_bytes: None,
            recorder: true,
            capture_dir: None,
            ladder: vec![0.60, 0.75, 0.90],
            soft_limit: 0.80,
            soft_limit_resume: 0.70,
            max_captures: 10,
            timeline_seconds: 300,
            timeline_fine_seconds: 20,
        }
    }
}

/// Where JWTs are checked against.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// PEM public key (Ed25519 or RSA); its type decides the algorithm (EdDSA or RS256).
    pub public_key: PathBuf,
    /// Required `aud` claim.
    pub audience: String,
    /// Required `iss` claim, if set.
    pub issuer: Option<String>,
}

/// Values given on the command line or in the environment (`None` = not given).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub max_connections: Option<usize>,
    pub inflight_bytes: Option<usize>,
    pub memory_limit: Option<u64>,
    pub store: StoreOverrides,
}

/// The TOML file, as written by an operator.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    limits: FileLimits,
    jwt: Option<JwtConfig>,
    #[serde(default)]
    memory: MemoryConfig,
    /// `embedded` or `nats://...`.
    store: Option<String>,
    nats: Option<store::FileNats>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_connections: Option<usize>,
    inflight_bytes: Option<usize>,
    chunk_bytes: Option<usize>,
    max_header_bytes: Option<usize>,
    header_timeout_secs: Option<u64>,
    body_timeout_secs: Option<u64>,
    shutdown_timeout_secs: Option<u64>,
    flush_interval_ms: Option<u64>,
    min_body_rate: Option<u64>,
    body_rate_grace_secs: Option<u64>,
    auth_recheck_ms: Option<u64>,
    org_inflight_share: Option<f64>,
    first_request_timeout_secs: Option<u64>,
    write_stall_secs: Option<u64>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "./data";
const DEFAULT_INFLIGHT_BYTES: usize = 16 * 1024 * 1024;
/// Share of the byte budget one org may hold.
const DEFAULT_ORG_SHARE: f64 = 0.5;

impl Config {
    /// Builds the configuration from overrides and, if named, the config file.
    pub fn load(overrides: Overrides) -> anyhow::Result<Config> {
        let file = match &overrides.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let listen = overrides
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen: SocketAddr = listen.parse().with_context(|| {
            format!("listen address {listen:?} is not IP:PORT (e.g. 127.0.0.1:8080)")
        })?;
        let data_dir = overrides
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| DEFAULT_DATA_DIR.into());
        let limits = file.limits;
        let mut server = ServerLimits::default();
        let mut handler = HandlerLimits::default();
        if let Some(n) = overrides.max_connections.or(limits.max_connections) {
            server.max_connections = n;
        }
        if let Some(n) = limits.max_header_bytes {
            server.max_header_bytes = n;
        }
        if let Some(s) = limits.header_timeout_secs {
            server.header_timeout = Duration::from_secs(s);
        }
        if let Some(s) = limits.shutdown_timeout_secs {
            server.drain_timeout = Duration::from_secs(s);
        }
        if let Some(n) = limits.chunk_bytes {
            handler.chunk_bytes = n;
        }
        if let Some(s) = limits.body_timeout_secs {
            handler.body_timeout = Duration::from_secs(s);
        }
        if let Some(ms) = limits.flush_interval_ms {
            handler.flush_interval = Duration::from_millis(ms);
        }
        if let Some(n) = limits.min_body_rate {
            handler.min_body_rate = n;
        }
        if let Some(s) = limits.body_rate_grace_secs {
            handler.body_rate_grace = Duration::from_secs(s);
        }
        if let Some(ms) = limits.auth_recheck_ms {
            handler.auth_recheck = Duration::from_millis(ms);
        }
        if let Some(s) = limits.first_request_timeout_secs {
            server.first_request_timeout = Duration::from_secs(s);
        }
        if let Some(s) = limits.write_stall_secs {
            server.write_stall = Duration::from_secs(s);
        }
        let org_inflight_share = limits.org_inflight_share.unwrap_or(DEFAULT_ORG_SHARE);
        let inflight_bytes = overrides
            .inflight_bytes
            .or(limits.inflight_bytes)
            .unwrap_or(DEFAULT_INFLIGHT_BYTES);
        let mut memory = file.memory;
        if let Some(limit) = overrides.memory_limit {
            memory.limit_bytes = Some(limit);
        }
        let store = store::resolve(overrides.store, file.store, file.nats)?;
        let config = Config {
            listen,
            data_dir,
            server,
            handler,
            inflight_bytes,
            org_inflight_share,
            jwt: file.jwt,
            memory,
            store,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.server.max_connections == 0 {
            bail!("max_connections must be at least 1");
        }
        if !(8 * 1024..=16 * 1024 * 1024).contains(&self.server.max_header_bytes) {
            bail!("max_header_bytes must be between 8 KiB and 16 MiB");
        }
        if !(4 * 1024..=4 * 1024 * 1024).contains(&self.handler.chunk_bytes) {
            bail!("chunk_bytes must be between 4 KiB and 4 MiB");
        }
        if self.inflight_bytes < self.handler.chunk_bytes {
            bail!(
                "inflight_bytes must be at least chunk_bytes ({})",
                self.handler.chunk_bytes
            );
        }
        let m = &self.memory;
        let share = |x: f64| x > 0.0 && x < 1.0;
        if !m.ladder.iter().all(|&x| share(x))
            || !share(m.soft_limit)
            || !share(m.soft_limit_resume)
        {
            bail!(
                "memory.ladder, soft_limit and soft_limit_resume are shares of the limit, between 0 and 1"
            );
        }
        if m.soft_limit_resume >= m.soft_limit {
            bail!("memory.soft_limit_resume must be below memory.soft_limit");
        }
        if m.limit_bytes == Some(0) {
            bail!("memory.limit_bytes must be positive");
        }
        if !(1..=3600).contains(&m.timeline_seconds)
            || !(1..=m.timeline_seconds.min(600)).contains(&m.timeline_fine_seconds)
        {
            bail!(
                "memory.timeline_seconds must be 1 to 3600, memory.timeline_fine_seconds 1 to \
                 600 and at most timeline_seconds (each fine second holds 16 KB)"
            );
        }
        if !(self.org_inflight_share > 0.0 && self.org_inflight_share <= 1.0) {
            bail!("org_inflight_share is a share of inflight_bytes, above 0 and at most 1");
        }
        if !(1..=10_000).contains(&self.handler.flush_interval.as_millis()) {
            bail!("flush_interval_ms must be between 1 and 10000");
        }
        for (name, d) in [
            ("header_timeout_secs", self.server.header_timeout),
            (
                "first_request_timeout_secs",
                self.server.first_request_timeout,
            ),
            ("write_stall_secs", self.server.write_stall),
            ("body_timeout_secs", self.handler.body_timeout),
            ("body_rate_grace_secs", self.handler.body_rate_grace),
            ("auth_recheck_ms", self.handler.auth_recheck),
        ] {
            if d.is_zero() {
                bail!("{name} must be at least 1");
            }
        }
        Ok(())
    }
}

/// The store choice alone, for the `token` commands: flags and environment over the `store`
/// and `[nats]` values of the config file, if one is named.
pub fn load_store(config: Option<&Path>, overrides: StoreOverrides) -> anyhow::Result<StoreConfig> {
    let file = match config {
        Some(path) => read_file(path)?,
        None => FileConfig::default(),
    };
    store::resolve(overrides, file.store, file.nats)
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {} is not valid", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_and_validation() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gw.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\ndata_dir = \"/tmp/x\"\n[limits]\nmax_connections = 7\nbody_timeout_secs = 3\n",
        )
        .unwrap();
        let config = Config::load(Overrides {
            listen: Some("127.0.0.1:9001".into()),
            config: Some(file.clone()),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!(config.listen.port(), 9001);
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(config.server.max_connections, 7);
        assert_eq!(config.handler.body_timeout, Duration::from_secs(3));

        std::fs::write(
            &file,
            "[memory]\nlimit_bytes = 268435456\nsoft_limit = 0.5\nsoft_limit_resume = 0.6\n",
        )
        .unwrap();
        let err = Config::load(Overrides {
            config: Some(file.clone()),
            ..Overrides::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("soft_limit_resume"), "{err:#}");

        std::fs::write(
            &file,
            "[memory]\ntimeline_seconds = 60\ntimeline_fine_seconds = 90\n",
        )
        .unwrap();
        let err = Config::load(Overrides {
            config: Some(file.clone()),
            ..Overrides::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("timeline_fine_seconds"), "{err:#}");

        std::fs::write(&file, "[limits]\nmax_conections = 7\n").unwrap();
        let err = Config::load(Overrides {
            config: Some(file.clone()),
            ..Overrides::default()
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("max_conections"), "{err:#}");

        let err = Config::load(Overrides {
            listen: Some("nope".into()),
            ..Overrides::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("not IP:PORT"));
        let defaults = Config::load(Overrides::default()).unwrap();
        assert_eq!(defaults.listen.to_string(), DEFAULT_LISTEN);
    }
}

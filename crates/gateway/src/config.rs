//! Configuration: raw inputs (flags, environment, a TOML file) folded into one validated
//! [`Config`]. Flags and `ENGINE_GATEWAY_*` variables win over the file, the file over defaults.

pub mod overlay;
#[cfg(test)]
mod readme;
mod store;
pub mod units;

pub use store::{DEFAULT_NATS_STARTUP_TIMEOUT, StoreConfig, StoreOverrides};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::http::HandlerLimits;
use crate::http::server::ServerLimits;
use crate::store::retention::RetentionConfig;

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
    /// The `[memory]` section: memwatch's flight recorder and soft limit, with memwatch's
    /// defaults and checks.
    pub memory: memwatch::Settings,
    /// Embedded or NATS JetStream.
    pub store: StoreConfig,
    /// After SIGTERM, how long `/readyz` answers 503 while everything still serves.
    pub shutdown_delay: Duration,
    /// One log line per request (target `engine_gateway::access`).
    pub access_log: bool,
    /// Streams deleted for age or size (`[retention]`).
    pub retention: RetentionConfig,
    /// The embedded store's log written past the page cache (`O_DIRECT`) or through it, as
    /// `[embedded]` `direct_writes` says; unset (`None`, the default), the store measures both
    /// ways while it runs and keeps the faster.
    pub direct_writes: Option<bool>,
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
    pub shutdown_delay: Option<Duration>,
    pub access_log: Option<bool>,
    /// File settings given as `ENGINE_GATEWAY_<SECTION>__<KEY>` variables and `--set` flags
    /// (see [`overlay`]), applied in order over the file.
    pub settings: Vec<overlay::Setting>,
    pub store: StoreOverrides,
}

/// The TOML file, as written by an operator.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    access_log: Option<bool>,
    #[serde(default)]
    limits: FileLimits,
    jwt: Option<JwtConfig>,
    #[serde(default, deserialize_with = "memory_settings")]
    memory: memwatch::Settings,
    /// `embedded` or `nats://...`.
    store: Option<String>,
    nats: Option<store::FileNats>,
    #[serde(default)]
    retention: RetentionConfig,
    #[serde(default)]
    embedded: FileEmbedded,
}

/// The `[embedded]` section: how the embedded store writes its log.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEmbedded {
    direct_writes: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_connections: Option<usize>,
    #[serde(default, deserialize_with = "units::deserialize_opt_size")]
    inflight_bytes: Option<u64>,
    #[serde(default, deserialize_with = "units::deserialize_opt_size")]
    chunk_bytes: Option<u64>,
    #[serde(default, deserialize_with = "units::deserialize_opt_size")]
    max_header_bytes: Option<u64>,
    header_timeout_secs: Option<u64>,
    body_timeout_secs: Option<u64>,
    shutdown_timeout_secs: Option<u64>,
    shutdown_delay_secs: Option<u64>,
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
/// Long enough for a Kubernetes Service to drop the endpoint (readiness probe period plus
/// endpoint propagation), short against the default 30 s termination grace period.
pub const DEFAULT_SHUTDOWN_DELAY: Duration = Duration::from_secs(5);
/// Share of the byte budget one org may hold.
const DEFAULT_ORG_SHARE: f64 = 0.5;

impl Config {
    /// Builds the configuration from overrides and, if named, the config file.
    pub fn load(overrides: Overrides) -> anyhow::Result<Config> {
        let file = read_file(overrides.config.as_deref(), &overrides.settings)?;
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
            server.max_header_bytes = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(s) = limits.header_timeout_secs {
            server.header_timeout = Duration::from_secs(s);
        }
        if let Some(s) = limits.shutdown_timeout_secs {
            server.drain_timeout = Duration::from_secs(s);
        }
        if let Some(n) = limits.chunk_bytes {
            handler.chunk_bytes = usize::try_from(n).unwrap_or(usize::MAX);
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
            .or(limits
                .inflight_bytes
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)))
            .unwrap_or(DEFAULT_INFLIGHT_BYTES);
        let mut memory = file.memory;
        if let Some(limit) = overrides.memory_limit {
            memory.limit_bytes = Some(limit);
        }
        let shutdown_delay = overrides
            .shutdown_delay
            .or(limits.shutdown_delay_secs.map(Duration::from_secs))
            .unwrap_or(DEFAULT_SHUTDOWN_DELAY);
        let mut store = store::resolve(overrides.store, file.store, file.nats)?;
        if matches!(store, StoreConfig::Nats { .. }) && file.embedded.direct_writes.is_some() {
            bail!("embedded.direct_writes is a setting of the embedded store, not used with NATS");
        }
        let direct_writes = file.embedded.direct_writes;
        let retention = file.retention;
        retention.validate().map_err(anyhow::Error::msg)?;
        if let StoreConfig::Nats { nats, .. } = &mut store {
            // JetStream enforces limits on its one stream: global ones map onto it
            if !retention.orgs.is_empty() {
                bail!(
                    "retention.orgs needs the embedded store: with NATS, JetStream's limits apply \
                     to the whole stream (use retention.max_age_secs / max_bytes)"
                );
            }
            if nats.max_age.is_none() {
                nats.max_age = retention.max_age_secs.map(Duration::from_secs);
            }
            if nats.max_bytes.is_none() {
                nats.max_bytes = retention.max_bytes;
            }
        }
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
            shutdown_delay,
            access_log: overrides.access_log.or(file.access_log).unwrap_or(false),
            retention,
            direct_writes,
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
        self.memory
            .validate()
            .map_err(|err| anyhow::anyhow!("[memory]: {err}"))?;
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

/// memwatch's `[memory]` settings, its sizes also written with units (`limit_bytes = "256MiB"`).
fn memory_settings<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<memwatch::Settings, D::Error> {
    use serde::de::Error;
    let mut table = toml::Table::deserialize(deserializer)?;
    for key in ["limit_bytes", "max_capture_bytes"] {
        if let Some(toml::Value::String(text)) = table.get(key) {
            let size: units::ByteSize = text.parse().map_err(D::Error::custom)?;
            let bytes = i64::try_from(size.bytes())
                .map_err(|_| D::Error::custom(format!("memory.{key} is too large")))?;
            table.insert(key.to_owned(), toml::Value::Integer(bytes));
        }
    }
    table.try_into().map_err(D::Error::custom)
}

/// The store choice alone, for the `token` commands: flags and environment over the `store`
/// and `[nats]` values of the config file, if one is named.
pub fn load_store(config: Option<&Path>, overrides: StoreOverrides) -> anyhow::Result<StoreConfig> {
    let settings = overlay::from_env(std::env::vars());
    let file = read_file(config, &settings)?;
    store::resolve(overrides, file.store, file.nats)
}

/// The file's settings (none without a file) with `settings` put over them, checked.
fn read_file(path: Option<&Path>, settings: &[overlay::Setting]) -> anyhow::Result<FileConfig> {
    let mut table = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            text.parse::<toml::Table>()
                .with_context(|| format!("config file {} is not valid", path.display()))?
        }
        None => toml::Table::new(),
    };
    overlay::apply(&mut table, settings)?;
    table.try_into().with_context(|| {
        let mut sources: Vec<String> = path.map(|p| p.display().to_string()).into_iter().collect();
        sources.extend(settings.iter().map(|s| s.origin.clone()));
        if sources.is_empty() {
            "the configuration is not valid".to_owned()
        } else {
            format!("the configuration ({}) is not valid", sources.join(", "))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_logs_write_mode() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gw.toml");
        let load = |settings: Vec<overlay::Setting>, store: Option<&str>| {
            Config::load(Overrides {
                config: Some(file.clone()),
                settings,
                store: StoreOverrides {
                    store: store.map(str::to_owned),
                    ..StoreOverrides::default()
                },
                ..Overrides::default()
            })
        };
        std::fs::write(&file, "").unwrap();
        let unset = load(Vec::new(), None).unwrap().direct_writes;
        assert_eq!(unset, None, "chosen while running by default");
        std::fs::write(&file, "[embedded]\ndirect_writes = false\n").unwrap();
        assert_eq!(load(Vec::new(), None).unwrap().direct_writes, Some(false));
        // as ENGINE_GATEWAY_EMBEDDED__DIRECT_WRITES, over the file
        let env = overlay::from_env([(
            "ENGINE_GATEWAY_EMBEDDED__DIRECT_WRITES".to_owned(),
            "true".to_owned(),
        )]);
        assert_eq!(load(env, None).unwrap().direct_writes, Some(true));
        let err = load(Vec::new(), Some("nats://127.0.0.1:4222")).unwrap_err();
        assert!(
            format!("{err:#}").contains("embedded.direct_writes"),
            "{err:#}"
        );
        std::fs::write(&file, "[embedded]\ndirect_writes = \"sometimes\"\n").unwrap();
        let err = load(Vec::new(), None).unwrap_err();
        assert!(format!("{err:#}").contains("direct_writes"), "{err:#}");
    }

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

        std::fs::write(
            &file,
            "[limits]\ninflight_bytes = \"32MiB\"\nchunk_bytes = 65536\n[memory]\nlimit_bytes = \"256 MiB\"\n",
        )
        .unwrap();
        let config = Config::load(Overrides {
            config: Some(file.clone()),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!(config.inflight_bytes, 32 << 20);
        assert_eq!(config.handler.chunk_bytes, 64 << 10);
        assert_eq!(config.memory.limit_bytes, Some(256 << 20));

        std::fs::write(&file, "[limits]\ninflight_bytes = \"32 parsecs\"\n").unwrap();
        let err = Config::load(Overrides {
            config: Some(file.clone()),
            ..Overrides::default()
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("not a size"), "{err:#}");

        // [memory] is memwatch's Settings: its keys, its checks, its messages.
        std::fs::write(
            &file,
            "[memory]\nmeasure = \"cgroup-usage\"\npeak_window_seconds = 30\n",
        )
        .unwrap();
        let config = Config::load(Overrides {
            config: Some(file.clone()),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!(config.memory.measure, memwatch::Measure::CgroupUsage);
        assert_eq!(config.memory.peak_window_seconds, 30);
        for (toml, needle) in [
            ("[memory]\nmeasure = \"rss\"\n", "measure"),
            ("[memory]\nladder = [1.5]\n", "ladder"),
            ("[memory]\nlimit_bytes = 0\n", "limit_bytes"),
        ] {
            std::fs::write(&file, toml).unwrap();
            let err = Config::load(Overrides {
                config: Some(file.clone()),
                ..Overrides::default()
            })
            .unwrap_err();
            assert!(format!("{err:#}").contains(needle), "{toml}: {err:#}");
        }

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
        std::fs::write(
            &file,
            "[retention]\nmax_age_secs = 86400\n[retention.orgs.acme]\nmax_bytes = 1000\n",
        )
        .unwrap();
        let config = Config::load(Overrides {
            config: Some(file.clone()),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!(config.retention.max_age_secs, Some(86400));
        assert_eq!(config.retention.orgs["acme"].max_bytes, Some(1000));
        std::fs::write(&file, "[retention]\nmax_age_secs = 0\n").unwrap();
        let err = Config::load(Overrides {
            config: Some(file.clone()),
            ..Overrides::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("positive"), "{err:#}");
        let defaults = Config::load(Overrides::default()).unwrap();
        assert_eq!(defaults.listen.to_string(), DEFAULT_LISTEN);
    }
}

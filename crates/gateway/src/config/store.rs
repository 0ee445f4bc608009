//! Where streams and tokens live: the embedded store (default) or NATS JetStream, chosen by
//! `--store` / `ENGINE_GATEWAY_STORE` / `store = "..."`, with the NATS settings from `--nats-*`
//! flags, `ENGINE_GATEWAY_NATS_*` variables and the `[nats]` section of the config file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::store::nats::{Credentials, NatsConfig};

/// The validated choice of backend.
#[derive(Clone, Debug)]
pub enum StoreConfig {
    /// Segment files and redb under `DATA_DIR/store`, tokens under `DATA_DIR/tokens`.
    Embedded,
    /// Every stream and token in NATS JetStream; the data directory only holds `admin.token`.
    Nats {
        /// Boxed: it is large, and `Embedded` carries nothing.
        nats: Box<NatsConfig>,
        /// How long `serve` keeps retrying an unreachable NATS at start before it exits.
        startup_timeout: Duration,
    },
}

/// Default of [`StoreConfig::Nats::startup_timeout`].
pub const DEFAULT_NATS_STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Store settings given on the command line or in the environment (`None` = not given).
#[derive(Clone, Default)]
pub struct StoreOverrides {
    /// `embedded` or `nats://host:port[,nats://host2:port2...]`.
    pub store: Option<String>,
    pub nats_creds: Option<PathBuf>,
    pub nats_token: Option<String>,
    pub nats_user: Option<String>,
    pub nats_password: Option<String>,
    /// File holding an nkey seed (`SU...`).
    pub nats_nkey: Option<PathBuf>,
    pub nats_tls_ca: Option<PathBuf>,
    pub nats_tls_cert: Option<PathBuf>,
    pub nats_tls_key: Option<PathBuf>,
    pub nats_replicas: Option<usize>,
}

/// The `[nats]` section of the config file.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileNats {
    creds: Option<PathBuf>,
    token: Option<String>,
    user: Option<String>,
    password: Option<String>,
    nkey: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    replicas: Option<usize>,
    /// JetStream stream name (default `ENGINE_GATEWAY`).
    stream: Option<String>,
    /// Key-value bucket of the tokens (default `egw-tokens`).
    bucket: Option<String>,
    /// First subject token (default `egw`).
    subject_prefix: Option<String>,
    max_age_secs: Option<u64>,
    #[serde(default, deserialize_with = "super::units::deserialize_opt_size")]
    max_bytes: Option<u64>,
    connect_timeout_secs: Option<u64>,
    request_timeout_secs: Option<u64>,
    /// One attempt of a request (retried until request_timeout_secs), milliseconds.
    attempt_timeout_ms: Option<u64>,
    startup_timeout_secs: Option<u64>,
}

/// Secrets stay out of Debug output.
impl fmt::Debug for StoreOverrides {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreOverrides")
            .field("store", &self.store)
            .field("nats_creds", &self.nats_creds)
            .field("nats_user", &self.nats_user)
            .field("nats_replicas", &self.nats_replicas)
            .finish_non_exhaustive()
    }
}

/// Secrets stay out of Debug output.
impl fmt::Debug for FileNats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileNats")
            .field("stream", &self.stream)
            .field("bucket", &self.bucket)
            .field("replicas", &self.replicas)
            .finish_non_exhaustive()
    }
}

/// Folds flags/environment over the file's `store` and `[nats]` values into a [`StoreConfig`].
pub(super) fn resolve(
    overrides: StoreOverrides,
    file_store: Option<String>,
    file: Option<FileNats>,
) -> anyhow::Result<StoreConfig> {
    let file = file.unwrap_or_default();
    let store = overrides
        .store
        .or(file_store)
        .unwrap_or_else(|| "embedded".into());
    let store = store.trim();
    if store == "embedded" {
        return Ok(StoreConfig::Embedded);
    }
    if !store.starts_with("nats://") && !store.starts_with("tls://") {
        bail!("store {store:?} is neither \"embedded\" nor nats://host:port[,nats://host:port...]");
    }
    let mut nats = NatsConfig::from_url(store).map_err(anyhow::Error::msg)?;
    nats.credentials = credentials(
        overrides.nats_creds.or(file.creds),
        overrides.nats_token.or(file.token),
        overrides.nats_user.or(file.user),
        overrides.nats_password.or(file.password),
        overrides.nats_nkey.or(file.nkey),
    )?;
    nats.tls.ca_file = overrides.nats_tls_ca.or(file.tls_ca);
    nats.tls.client_cert = match (
        overrides.nats_tls_cert.or(file.tls_cert),
        overrides.nats_tls_key.or(file.tls_key),
    ) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => bail!("--nats-tls-cert and --nats-tls-key go together: give both or neither"),
    };
    nats.tls.require = nats.urls.iter().any(|u| u.starts_with("tls://"))
        || nats.tls.ca_file.is_some()
        || nats.tls.client_cert.is_some();
    nats.replicas = overrides.nats_replicas.or(file.replicas).unwrap_or(1);
    if nats.replicas != 1 && nats.replicas != 3 {
        bail!(
            "nats replicas must be 1 (one server) or 3 (a cluster), not {}",
            nats.replicas
        );
    }
    if let Some(stream) = file.stream {
        nats.stream = checked_name("nats.stream", stream)?;
    }
    if let Some(bucket) = file.bucket {
        nats.bucket = checked_name("nats.bucket", bucket)?;
    }
    if let Some(prefix) = file.subject_prefix {
        nats.subject_prefix = checked_name("nats.subject_prefix", prefix)?;
    }
    nats.max_age = file.max_age_secs.map(Duration::from_secs);
    nats.max_bytes = file.max_bytes;
    for (name, secs, slot) in [
        (
            "connect_timeout_secs",
            file.connect_timeout_secs,
            &mut nats.connect_timeout,
        ),
        (
            "request_timeout_secs",
            file.request_timeout_secs,
            &mut nats.request_timeout,
        ),
    ] {
        if let Some(secs) = secs {
            if secs == 0 {
                bail!("nats.{name} must be at least 1");
            }
            *slot = Duration::from_secs(secs);
        }
    }
    if let Some(ms) = file.attempt_timeout_ms {
        if !(50..=60_000).contains(&ms) {
            bail!("nats.attempt_timeout_ms must be 50 to 60000");
        }
        nats.attempt_timeout = Duration::from_millis(ms);
    }
    let startup_timeout = file
        .startup_timeout_secs
        .map_or(DEFAULT_NATS_STARTUP_TIMEOUT, Duration::from_secs);
    Ok(StoreConfig::Nats {
        nats: Box::new(nats),
        startup_timeout,
    })
}

/// At most one way to authenticate.
fn credentials(
    creds: Option<PathBuf>,
    token: Option<String>,
    user: Option<String>,
    password: Option<String>,
    nkey: Option<PathBuf>,
) -> anyhow::Result<Credentials> {
    let given = [
        creds.is_some(),
        token.is_some(),
        user.is_some() || password.is_some(),
        nkey.is_some(),
    ];
    if given.iter().filter(|&&g| g).count() > 1 {
        bail!(
            "give one kind of NATS credentials: a creds file, a token, user and password, \
             or an nkey"
        );
    }
    Ok(match (creds, token, user, password, nkey) {
        (Some(path), ..) => Credentials::CredsFile(path),
        (_, Some(token), ..) => Credentials::Token(token),
        (_, _, Some(user), Some(password), _) => Credentials::UserPassword { user, password },
        (_, _, Some(_), None, _) | (_, _, None, Some(_), _) => {
            bail!("--nats-user and --nats-password go together: give both or neither")
        }
        (.., Some(path)) => Credentials::NkeySeed(read_seed(&path)?),
        _ => Credentials::None,
    })
}

/// Reads an nkey seed file: the first line starting with `SU` (user seeds), as `nsc` writes it.
fn read_seed(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the nkey seed file {}", path.display()))?;
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with("SU"))
        .map(str::to_owned)
        .with_context(|| format!("{} holds no user nkey seed (SU...)", path.display()))
}

/// A JetStream name: no whitespace, dots, wildcards or path separators.
fn checked_name(what: &str, name: String) -> anyhow::Result<String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        bail!("{what} {name:?} must be 1-64 characters of A-Z, a-z, 0-9, - and _");
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nats(overrides: StoreOverrides, file: &str) -> anyhow::Result<NatsConfig> {
        #[derive(Deserialize)]
        struct File {
            store: Option<String>,
            nats: Option<FileNats>,
        }
        let file: File = toml::from_str(file)?;
        match resolve(overrides, file.store, file.nats)? {
            StoreConfig::Nats { nats, .. } => Ok(*nats),
            StoreConfig::Embedded => anyhow::bail!("embedded"),
        }
    }

    fn url(store: &str) -> StoreOverrides {
        StoreOverrides {
            store: Some(store.into()),
            ..StoreOverrides::default()
        }
    }

    #[test]
    fn embedded_by_default_and_by_name() {
        let default = resolve(StoreOverrides::default(), None, None).unwrap();
        assert!(matches!(default, StoreConfig::Embedded));
        let named = resolve(url("embedded"), Some("nats://a:1".into()), None).unwrap();
        assert!(matches!(named, StoreConfig::Embedded));
        let err = resolve(url("redis://x:1"), None, None).unwrap_err();
        assert!(err.to_string().contains("neither"), "{err}");
    }

    #[test]
    fn file_values_under_flags() {
        let file = "store = \"nats://file:4222\"\n[nats]\nreplicas = 3\nuser = \"u\"\n\
                    password = \"p\"\nstream = \"S1\"\nrequest_timeout_secs = 2\n";
        let config = nats(StoreOverrides::default(), file).unwrap();
        assert_eq!(config.urls, ["nats://file:4222"]);
        assert_eq!(config.replicas, 3);
        assert_eq!(config.stream, "S1");
        assert_eq!(config.request_timeout, Duration::from_secs(2));
        assert!(matches!(
            config.credentials,
            Credentials::UserPassword { .. }
        ));
        assert!(!format!("{config:?}").contains("\"p\""));

        let mut flags = url("nats://a:1, nats://b:2,nats://c:3");
        flags.nats_replicas = Some(1);
        let config = nats(flags, file).unwrap();
        assert_eq!(config.urls, ["nats://a:1", "nats://b:2", "nats://c:3"]);
        assert_eq!(config.replicas, 1);
    }

    #[test]
    fn refusals() {
        let check = |overrides: StoreOverrides, file: &str, part: &str| {
            let err = nats(overrides, file).unwrap_err();
            assert!(format!("{err:#}").contains(part), "{part}: {err:#}");
        };
        let mut two = url("nats://a:1");
        two.nats_token = Some("t".into());
        two.nats_creds = Some("/x.creds".into());
        check(two, "", "one kind");
        let mut user = url("nats://a:1");
        user.nats_user = Some("u".into());
        check(user, "", "go together");
        let mut replicas = url("nats://a:1");
        replicas.nats_replicas = Some(2);
        check(replicas, "", "1 (one server) or 3");
        let mut cert = url("nats://a:1");
        cert.nats_tls_cert = Some("/c.pem".into());
        check(cert, "", "--nats-tls-key");
        check(
            url("nats://a:1"),
            "[nats]\nstream = \"a.b\"\n",
            "nats.stream",
        );
        check(url("nats://a:1"), "[nats]\nreplica = 3\n", "replica");
        check(url("nats://a:1,http://b:2"), "", "not a nats url");
        let mut nkey = url("nats://a:1");
        nkey.nats_nkey = Some("/nonexistent/seed.nk".into());
        check(nkey, "", "nkey seed file");
    }

    #[test]
    fn nkey_seed_and_tls() {
        let dir = tempfile::tempdir().unwrap();
        let seed = dir.path().join("user.nk");
        std::fs::write(
            &seed,
            "# comment\nSUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTC4\n",
        )
        .unwrap();
        let mut flags = url("tls://a:1");
        flags.nats_nkey = Some(seed);
        let config = nats(flags, "").unwrap();
        assert!(matches!(&config.credentials, Credentials::NkeySeed(s) if s.starts_with("SUAI")));
        assert!(config.tls.require);
        let plain = nats(url("nats://a:1"), "").unwrap();
        assert!(!plain.tls.require);
    }
}

//! Opaque bearer tokens: the record a backend stores, the secret handed out once, the
//! backend-neutral [`TokenStore`] trait, and the rules every backend shares (minting, scopes).
//!
//! A token reads `egw_<id>_<secret>`: `id` is 16 lowercase hex characters (64 random bits, the
//! lookup key), `secret` is 32 random bytes in base64url without padding (43 characters). Only
//! the SHA-256 of the secret is stored; it is compared in constant time.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::Role;
use crate::stream_id::{StreamIdError, validate_segment};

/// Prefix of every opaque token, so leaked tokens are easy to grep for in logs and repos.
pub const TOKEN_PREFIX: &str = "egw_";
/// Length of a token id in hex characters.
pub const TOKEN_ID_LEN: usize = 16;
/// Length of the base64url secret part (32 bytes, no padding).
pub const SECRET_LEN: usize = 43;
/// Length of a whole opaque token.
pub const TOKEN_LEN: usize = TOKEN_PREFIX.len() + TOKEN_ID_LEN + 1 + SECRET_LEN;

/// Storage for opaque tokens. Backends persist [`TokenRecord`]s; minting, hashing and scope
/// rules live in [`NewToken::mint`] so every backend behaves the same.
///
/// **Contract:** `get` sees a revocation or deletion made through this store on the very next
/// call, and one made by another process or node as soon as it can know of it: the file store
/// on the next call (one `stat`); the NATS store once its bucket watch delivers the change
/// (about a message's latency), and never more than a couple of seconds late when the watch
/// stalls, because its copy then stops answering. Unknown ids are never cached.
#[async_trait::async_trait]
pub trait TokenStore: Send + Sync {
    /// Mints and stores a new token; the secret is returned once and never stored.
    async fn create(&self, new: NewToken) -> Result<(TokenRecord, Secret), TokenError>;
    /// The record with this id, or `None` when there is none (or `id` is not a token id).
    async fn get(&self, id: &str) -> Result<Option<TokenRecord>, TokenError>;
    /// All records, oldest first.
    async fn list(&self) -> Result<Vec<TokenRecord>, TokenError>;
    /// Marks a token revoked (idempotent: the first revocation time is kept).
    async fn revoke(&self, id: &str) -> Result<TokenRecord, TokenError>;
    /// Whether no token (not even a revoked or expired one) exists.
    async fn is_empty(&self) -> Result<bool, TokenError>;
}

/// What to mint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewToken {
    /// Required for deployer and reader, forbidden for admin.
    pub org: Option<String>,
    /// Optional for deployer, forbidden otherwise.
    pub cluster: Option<String>,
    pub role: Role,
    /// Lifetime; `None` never expires. Rounded up to whole seconds.
    pub ttl: Option<Duration>,
}

/// A stored token. Holds the hash, never the secret.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenRecord {
    /// 16 lowercase hex characters; also the file or key name.
    pub id: String,
    pub org: Option<String>,
    pub cluster: Option<String>,
    pub role: Role,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds from which the token is refused; `None` never expires.
    pub expires: Option<u64>,
    /// Unix seconds of revocation; `None` while the token is live.
    pub revoked: Option<u64>,
    /// Lowercase hex SHA-256 of the secret part. Kept out of Debug output anyway.
    pub(crate) hash: String,
}

/// The clear-text token, shown once. Its Debug output is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// Why a token operation failed. Messages may contain paths but never a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("token record {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("no token with id {0}")]
    NotFound(String),
    #[error("{0:?} is not a token id (16 lowercase hex characters)")]
    InvalidId(String),
    #[error(transparent)]
    Scope(#[from] ScopeError),
    #[error("invalid token lifetime: {0}")]
    Ttl(&'static str),
    #[error("the operating system random source failed: {0}")]
    Random(getrandom::Error),
    #[error("token storage task failed: {0}")]
    Task(String),
    /// The backend (e.g. the NATS key-value bucket) cannot be reached right now; the request
    /// may succeed later (HTTP 503, not 401).
    #[error("token storage is unavailable: {0}")]
    Unavailable(String),
}

/// Why a role/org/cluster combination is not allowed (shared by opaque tokens and JWTs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("a {0} token needs an org")]
    OrgRequired(Role),
    #[error("an admin token is not bound to an org or cluster")]
    AdminScoped,
    #[error("a reader token cannot be bound to a cluster")]
    ReaderCluster,
    #[error("invalid org or cluster name: {0}")]
    Name(#[from] StreamIdError),
}

/// Checks a scope: admins have no org and cluster; deployers and readers need a valid org;
/// only deployers may be bound to a cluster (a reader bound to a cluster would be silently
/// widened to the whole org by the scope checks, so it is refused instead).
pub fn validate_scope(
    role: Role,
    org: Option<&str>,
    cluster: Option<&str>,
) -> Result<(), ScopeError> {
    match (role, org, cluster) {
        (Role::Admin, None, None) => return Ok(()),
        (Role::Admin, _, _) => return Err(ScopeError::AdminScoped),
        (_, None, _) => return Err(ScopeError::OrgRequired(role)),
        (Role::Reader, _, Some(_)) => return Err(ScopeError::ReaderCluster),
        _ => {}
    }
    for name in [org, cluster].into_iter().flatten() {
        validate_segment(name)?;
    }
    Ok(())
}

impl NewToken {
    /// Validates the scope and makes a record plus its secret, created now.
    pub fn mint(self) -> Result<(TokenRecord, Secret), TokenError> {
        validate_scope(self.role, self.org.as_deref(), self.cluster.as_deref())?;
        let created = unix_now();
        let expires = match self.ttl {
            None => None,
            Some(ttl) if ttl.is_zero() => return Err(TokenError::Ttl("must be positive")),
            Some(ttl) => {
                let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
                Some(
                    created
                        .checked_add(secs)
                        .ok_or(TokenError::Ttl("too long"))?,
                )
            }
        };
        let mut id = [0u8; TOKEN_ID_LEN / 2];
        let mut secret = [0u8; 32];
        getrandom::fill(&mut id).map_err(TokenError::Random)?;
        getrandom::fill(&mut secret).map_err(TokenError::Random)?;
        let id = hex(&id);
        let secret_text = URL_SAFE_NO_PAD.encode(secret);
        let record = TokenRecord {
            hash: hash_secret(&secret_text),
            id: id.clone(),
            org: self.org,
            cluster: self.cluster,
            role: self.role,
            created,
            expires,
            revoked: None,
        };
        Ok((record, Secret(format!("{TOKEN_PREFIX}{id}_{secret_text}"))))
    }
}

impl TokenRecord {
    /// Whether `secret` (the part after the id) matches, in constant time.
    pub fn secret_matches(&self, secret: &str) -> bool {
        let computed = hash_secret(secret);
        computed.as_bytes().ct_eq(self.hash.as_bytes()).into()
    }

    /// Whether the token has expired at `now` (unix seconds).
    pub fn is_expired_at(&self, now: u64) -> bool {
        self.expires.is_some_and(|e| now >= e)
    }

    /// Checks the record is internally consistent (after reading it from storage).
    pub fn validate(&self) -> Result<(), String> {
        if !is_token_id(&self.id) {
            return Err("bad id".into());
        }
        if self.hash.len() != 64 || !self.hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("bad hash".into());
        }
        validate_scope(self.role, self.org.as_deref(), self.cluster.as_deref())
            .map_err(|e| e.to_string())
    }
}

impl fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRecord")
            .field("id", &self.id)
            .field("org", &self.org)
            .field("cluster", &self.cluster)
            .field("role", &self.role)
            .field("created", &self.created)
            .field("expires", &self.expires)
            .field("revoked", &self.revoked)
            .finish_non_exhaustive()
    }
}

impl Secret {
    /// The full token text, to print once to the operator or write to `admin.token`.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Parses a token lifetime as operators type it: `<positive integer><unit>` with unit `s`, `m`,
/// `h`, `d` or `w` (`30d`, `12h`, `15m`, `3600s`, `2w`).
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let unit_secs: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "" => {
            return Err(format!(
                "{s:?} lacks a unit: use s, m, h, d or w (e.g. 30d)"
            ));
        }
        _ => {
            return Err(format!(
                "{s:?} is not a lifetime: expected a number followed by s, m, h, d or w (e.g. 30d)"
            ));
        }
    };
    if digits.is_empty() {
        return Err(format!("{s:?} lacks a number (e.g. 30d)"));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is too long a lifetime"))?;
    if n == 0 {
        return Err(format!("{s:?}: a lifetime must be positive"));
    }
    let secs = n
        .checked_mul(unit_secs)
        .filter(|&secs| secs <= MAX_TTL_SECS)
        .ok_or_else(|| format!("{s:?} is too long a lifetime (at most 1000 years)"))?;
    Ok(Duration::from_secs(secs))
}

/// Longest accepted lifetime; beyond this it is a typo, and unix time arithmetic stays far
/// from overflow.
const MAX_TTL_SECS: u64 = 1000 * 366 * 86_400;

/// Splits `egw_<id>_<secret>` into `(id, secret)`; `None` when it does not have that shape.
pub fn split_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    if token.len() != TOKEN_LEN || !rest.is_char_boundary(TOKEN_ID_LEN) {
        return None;
    }
    let (id, secret) = rest.split_at(TOKEN_ID_LEN);
    let secret = secret.strip_prefix('_')?;
    let b64 = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    (is_token_id(id) && secret.bytes().all(b64)).then_some((id, secret))
}

/// Whether `id` is 16 lowercase hex characters (so it is safe as a file name).
pub fn is_token_id(id: &str) -> bool {
    id.len() == TOKEN_ID_LEN && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Current unix time in seconds (one definition for tokens and streams).
pub use crate::store::unix_now;

fn hash_secret(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mint_and_split() {
        let new = NewToken {
            org: Some("acme".into()),
            cluster: Some("prod".into()),
            role: Role::Deployer,
            ttl: Some(Duration::from_millis(1500)),
        };
        let (record, secret) = new.mint().unwrap();
        assert_eq!(record.expires, Some(record.created + 2));
        let (id, s) = split_token(secret.expose()).unwrap();
        assert_eq!(id, record.id);
        assert!(record.secret_matches(s));
        assert!(!record.secret_matches(&s.replace(|_| true, "A")));
        assert!(!format!("{secret:?}{record:?}").contains(s));
        assert!(!format!("{record:?}").contains(&record.hash));
        record.validate().unwrap();
    }

    #[test]
    fn scopes() {
        use Role::*;
        let check = |role, org, cluster, ok: bool| {
            assert_eq!(
                validate_scope(role, org, cluster).is_ok(),
                ok,
                "{role} {org:?} {cluster:?}"
            );
        };
        check(Admin, None, None, true);
        check(Admin, Some("acme"), None, false);
        check(Deployer, Some("acme"), Some("prod"), true);
        check(Deployer, Some("acme"), None, true);
        check(Deployer, None, None, false);
        check(Deployer, Some("a/b"), None, false);
        check(Deployer, Some("acme"), Some(""), false);
        check(Reader, Some("acme"), None, true);
        check(Reader, Some("acme"), Some("prod"), false);
    }

    #[test]
    fn split_rejects() {
        let good = format!("egw_0123456789abcdef_{}", "A".repeat(43));
        assert!(split_token(&good).is_some());
        for bad in [
            String::new(),
            good.replace("egw_", "egx_"),
            good.replace("0123456789abcdef", "0123456789ABCDEF"),
            good.replacen("_A", "-A", 1),
            format!("{good}A"),
            good.replacen('A', "é", 1),
            good.replacen('A', "=", 1),
        ] {
            assert!(split_token(&bad).is_none(), "{bad}");
        }
    }

    fn check_ttl(input: &str, expect: Result<u64, &str>) {
        match (parse_ttl(input), expect) {
            (Ok(got), Ok(secs)) => assert_eq!(got, Duration::from_secs(secs), "{input}"),
            (Err(msg), Err(part)) => assert!(msg.contains(part), "{input}: {msg}"),
            (got, expect) => panic!("{input}: got {got:?}, expected {expect:?}"),
        }
    }

    #[test]
    fn ttl_table() {
        check_ttl("30d", Ok(30 * 86_400));
        check_ttl("12h", Ok(12 * 3600));
        check_ttl("15m", Ok(900));
        check_ttl("3600s", Ok(3600));
        check_ttl("2w", Ok(14 * 86_400));
        check_ttl("1s", Ok(1));
        check_ttl("007h", Ok(7 * 3600));
        check_ttl("0d", Err("positive"));
        check_ttl("0s", Err("positive"));
        check_ttl("", Err("lacks a unit"));
        check_ttl("30", Err("lacks a unit"));
        check_ttl("d", Err("lacks a number"));
        check_ttl("-1d", Err("not a lifetime"));
        check_ttl("+1d", Err("not a lifetime"));
        check_ttl("1.5h", Err("not a lifetime"));
        check_ttl("30D", Err("not a lifetime"));
        check_ttl("30 d", Err("not a lifetime"));
        check_ttl(" 30d", Err("not a lifetime"));
        check_ttl("1y", Err("not a lifetime"));
        check_ttl("1hm", Err("not a lifetime"));
        check_ttl("30d ", Err("not a lifetime"));
        check_ttl("99999999999999999999999s", Err("too long"));
        check_ttl("18446744073709551615w", Err("too long"));
        check_ttl("52286w", Err("too long"));
        check_ttl("52000w", Ok(52_000 * 7 * 86_400));
    }
}

//! Who may do what: bearer tokens (opaque secrets or JWTs) mapped to a [`Principal`].
//!
//! **Architecture invariant:** a secret never leaves this module in clear text except once, on
//! stdout of `token create`; it is stored as a hash, compared in constant time, never logged.

mod authenticator;
mod file_store;
mod jwt;
mod tokens;

use std::fmt;

use crate::stream_id::StreamId;

pub use authenticator::{AuthError, Authenticator, MAX_HEADER_LEN};
pub use file_store::{ADMIN_TOKEN_FILE, CACHE_CAPACITY, FileTokenStore, bootstrap_admin};
pub use jwt::{JwtError, JwtKeyError, JwtVerifier, LEEWAY_SECS, MAX_JWT_LEN, MIN_RSA_BITS};
pub use tokens::{
    NewToken, ScopeError, Secret, TOKEN_PREFIX, TokenError, TokenRecord, TokenStore, is_token_id,
    parse_ttl, split_token, validate_scope,
};

/// What a token is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Appends to and reads its own org's (and cluster's, if bound) streams.
    Deployer,
    /// Reads an org's streams.
    Reader,
    /// Anything, on any org.
    Admin,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Deployer => "deployer",
            Role::Reader => "reader",
            Role::Admin => "admin",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "deployer" => Ok(Role::Deployer),
            "reader" => Ok(Role::Reader),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?}: expected deployer, reader or admin"
            )),
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Token id or JWT subject, for logs. Never the secret.
    pub subject: String,
    pub role: Role,
    /// The org the caller is bound to; `None` only for admins.
    pub org: Option<String>,
    /// The cluster a deployer is bound to, if any.
    pub cluster: Option<String>,
}

/// An operation on a stream, for scope checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Append,
    Read,
    Delete,
}

impl Principal {
    /// Whether this principal may do `action` on stream `id`.
    pub fn may(&self, action: Action, id: &StreamId) -> bool {
        if self.role == Role::Admin {
            return true;
        }
        if self.org.as_deref() != Some(id.org()) {
            return false;
        }
        match (self.role, action) {
            (Role::Deployer, Action::Append | Action::Read) => {
                self.cluster.as_deref().is_none_or(|c| c == id.cluster())
            }
            (Role::Reader, Action::Read) => true,
            _ => false,
        }
    }

    /// Whether this principal may list streams under `prefix` (`org/` or `org/cluster/`...).
    /// Non-admins must name their own org (and their cluster, if bound).
    pub fn may_list(&self, prefix: &str) -> bool {
        if self.role == Role::Admin {
            return true;
        }
        let Some(org) = self.org.as_deref() else {
            return false;
        };
        let mut parts = prefix.splitn(3, '/');
        let (p_org, p_cluster) = (parts.next(), parts.next());
        if p_org != Some(org) || p_cluster.is_none() {
            return false;
        }
        match (self.role, self.cluster.as_deref()) {
            (Role::Deployer, Some(cluster)) => {
                // `org/cluster/...`: the cluster segment must be complete and equal.
                parts.next().is_some() && p_cluster == Some(cluster)
            }
            _ => true,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(role: Role, org: Option<&str>, cluster: Option<&str>) -> Principal {
        Principal {
            subject: "t".into(),
            role,
            org: org.map(Into::into),
            cluster: cluster.map(Into::into),
        }
    }

    #[test]
    fn scopes() {
        let id: StreamId = "acme/prod/log".parse().unwrap();
        let other_org: StreamId = "evil/prod/log".parse().unwrap();
        let other_cluster: StreamId = "acme/dev/log".parse().unwrap();
        let d = principal(Role::Deployer, Some("acme"), Some("prod"));
        assert!(d.may(Action::Append, &id) && d.may(Action::Read, &id));
        assert!(!d.may(Action::Delete, &id));
        assert!(!d.may(Action::Append, &other_org) && !d.may(Action::Read, &other_cluster));
        let d_org = principal(Role::Deployer, Some("acme"), None);
        assert!(d_org.may(Action::Append, &other_cluster));
        let r = principal(Role::Reader, Some("acme"), None);
        assert!(r.may(Action::Read, &other_cluster) && !r.may(Action::Append, &id));
        assert!(!r.may(Action::Read, &other_org));
        let a = principal(Role::Admin, None, None);
        assert!(a.may(Action::Delete, &other_org));
    }

    #[test]
    fn list_scopes() {
        let d = principal(Role::Deployer, Some("acme"), Some("prod"));
        assert!(d.may_list("acme/prod/"));
        assert!(!d.may_list("acme/"));
        assert!(!d.may_list("acme/pro"));
        assert!(!d.may_list("acme/dev/"));
        let r = principal(Role::Reader, Some("acme"), None);
        assert!(r.may_list("acme/") && r.may_list("acme/dev/") && !r.may_list("acm"));
        assert!(!r.may_list("") && !r.may_list("evil/"));
        assert!(principal(Role::Admin, None, None).may_list(""));
    }
}

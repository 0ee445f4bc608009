//! From an `Authorization` header to a [`Principal`]: opaque tokens through a [`TokenStore`],
//! JWTs (a value with two dots) through an optional [`JwtVerifier`].

use std::sync::Arc;

use super::Principal;
use super::jwt::{JwtError, JwtVerifier, MAX_JWT_LEN};
use super::tokens::{TokenError, TokenStore, split_token, unix_now};

/// Longest `Authorization` header value looked at, in bytes.
pub const MAX_HEADER_LEN: usize = MAX_JWT_LEN + 64;

/// Authenticates requests. Cheap to share behind an `Arc`.
pub struct Authenticator {
    /// Where opaque tokens live.
    tokens: Arc<dyn TokenStore>,
    /// `None` when JWTs are not accepted.
    jwt: Option<JwtVerifier>,
}

/// Why a request is not authenticated. Every variant but [`AuthError::Storage`] means 401;
/// `Storage` means the server cannot check right now (503). Display texts are safe to send to
/// clients: they never contain the token or a path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("no bearer token: send Authorization: Bearer <token>")]
    Missing,
    #[error("the Authorization header is not a well-formed bearer token")]
    Malformed,
    #[error("unknown or invalid token")]
    Unknown,
    #[error("token has been revoked")]
    Revoked,
    #[error("token has expired")]
    Expired,
    #[error("invalid JWT: {0}")]
    InvalidJwt(JwtError),
    /// The token store failed or cannot be reached (an I/O error, a corrupt record,
    /// [`TokenError::Unavailable`] when NATS is down): the server cannot check right now.
    /// The details (path, OS error) are in the source, for logs only.
    #[error("token storage is unavailable")]
    Storage(#[source] TokenError),
}

impl AuthError {
    /// A stable snake_case code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Malformed => "malformed_token",
            AuthError::Unknown => "invalid_token",
            AuthError::Revoked => "token_revoked",
            AuthError::Expired => "token_expired",
            AuthError::InvalidJwt(_) => "invalid_jwt",
            AuthError::Storage(_) => "auth_unavailable",
        }
    }

    /// Whether this is a server-side failure (503) rather than a bad credential (401).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, AuthError::Storage(_))
    }
}

impl From<JwtError> for AuthError {
    fn from(e: JwtError) -> Self {
        match e {
            JwtError::Expired => AuthError::Expired,
            other => AuthError::InvalidJwt(other),
        }
    }
}

impl Authenticator {
    pub fn new(tokens: Arc<dyn TokenStore>, jwt: Option<JwtVerifier>) -> Self {
        Authenticator { tokens, jwt }
    }

    /// The token store, for admin endpoints or the bootstrap.
    pub fn tokens(&self) -> &Arc<dyn TokenStore> {
        &self.tokens
    }

    /// Checks an `Authorization` header value. Revocations and expiry take effect at once,
    /// also when written by another process.
    pub async fn authenticate(
        &self,
        header: Option<&http::HeaderValue>,
    ) -> Result<Principal, AuthError> {
        let token = bearer(header)?;
        if token.bytes().filter(|&b| b == b'.').count() == 2 {
            let jwt = self
                .jwt
                .as_ref()
                .ok_or(AuthError::InvalidJwt(JwtError::NotConfigured))?;
            return Ok(jwt.verify(token)?);
        }
        let (id, secret) = split_token(token).ok_or(AuthError::Malformed)?;
        let record = self
            .tokens
            .get(id)
            .await
            .map_err(AuthError::Storage)?
            .ok_or(AuthError::Unknown)?;
        // The secret is checked first, so revoked/expired is only told to its holder.
        if !record.secret_matches(secret) {
            return Err(AuthError::Unknown);
        }
        if record.revoked.is_some() {
            return Err(AuthError::Revoked);
        }
        if record.is_expired_at(unix_now()) {
            return Err(AuthError::Expired);
        }
        Ok(Principal {
            subject: record.id,
            role: record.role,
            org: record.org,
            cluster: record.cluster,
        })
    }
}

/// Extracts the token from `Bearer <token>` (scheme case-insensitive, RFC 9110 §11.1).
fn bearer(header: Option<&http::HeaderValue>) -> Result<&str, AuthError> {
    let header = header.ok_or(AuthError::Missing)?;
    if header.len() > MAX_HEADER_LEN {
        return Err(AuthError::Malformed);
    }
    let value = header.to_str().map_err(|_| AuthError::Malformed)?.trim();
    if value.is_empty() {
        return Err(AuthError::Missing);
    }
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed);
    }
    let token = token.trim_start_matches(' ');
    if token.is_empty() || token.bytes().any(|b| b == b' ' || b == b'\t') {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn check(value: &[u8], expect: Result<&str, &str>) {
        let header = http::HeaderValue::from_bytes(value).unwrap();
        let got = bearer(Some(&header)).map_err(|e| e.code());
        assert_eq!(got, expect, "{value:?}");
    }

    #[test]
    fn header_shapes() {
        assert_eq!(bearer(None).map_err(|e| e.code()), Err("missing_token"));
        check(b"Bearer abc", Ok("abc"));
        check(b"bearer abc", Ok("abc"));
        check(b"BEARER   abc ", Ok("abc"));
        check(b"", Err("missing_token"));
        check(b"   ", Err("missing_token"));
        check(b"Bearer", Err("malformed_token"));
        check(b"Bearer ", Err("malformed_token"));
        check(b"Basic dXNlcjpwYXNz", Err("malformed_token"));
        check(b"abc", Err("malformed_token"));
        check(b"Bearer a b", Err("malformed_token"));
        check(b"Bearer a\tb", Err("malformed_token"));
        check("Bearer égal".as_bytes(), Err("malformed_token"));
        let huge = format!("Bearer {}", "a".repeat(MAX_HEADER_LEN));
        check(huge.as_bytes(), Err("malformed_token"));
    }
}

//! JWT bearer tokens signed by an external issuer, verified with one configured public key.
//!
//! The algorithm is fixed by the key type (Ed25519 → `EdDSA`, RSA → `RS256`); the token's `alg`
//! header must match it, so `none`, `HS*` and key-confusion tricks are refused before any
//! cryptography runs. Parsing is by hand (base64url + serde_json), no JWT framework.
//!
//! Claims: `role` (deployer|reader|admin), `org` (unless admin), `cluster` (deployer only),
//! `exp` (required), `aud` (required, string or array containing the configured audience),
//! `nbf` (optional), `iss` (checked when configured), `sub` (→ [`Principal::subject`]).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::DecodePublicKey as _;
use rsa::pkcs1::DecodeRsaPublicKey as _;
use rsa::traits::PublicKeyParts as _;
use sha2::{Digest as _, Sha256};

use super::tokens::{ScopeError, unix_now, validate_scope};
use super::{Principal, Role};

/// Longest accepted JWT, in bytes.
pub const MAX_JWT_LEN: usize = 8 * 1024;
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;
/// Smallest accepted RSA modulus, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// Longest accepted `sub`, in bytes (it ends up in logs).
const MAX_SUBJECT_LEN: usize = 256;

/// Verifies JWTs against one public key, one audience and optionally one issuer.
pub struct JwtVerifier {
    key: Key,
    /// The `aud` value this service answers to.
    audience: String,
    /// When set, `iss` must equal it.
    issuer: Option<String>,
}

/// Why a JWT was refused. Messages are safe to return to clients: they never quote the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    #[error("JWT authentication is not configured")]
    NotConfigured,
    #[error("token longer than {MAX_JWT_LEN} bytes")]
    TooLong,
    #[error("not a well-formed JWT")]
    Format,
    #[error("JWT alg does not match the configured key")]
    Algorithm,
    #[error("JWT header has critical extensions this service does not support")]
    Critical,
    #[error("JWT signature does not verify")]
    Signature,
    #[error("JWT has expired")]
    Expired,
    #[error("JWT is not valid yet")]
    NotYetValid,
    #[error("JWT lacks the {0} claim")]
    MissingClaim(&'static str),
    #[error("JWT claim {0} is invalid")]
    InvalidClaim(&'static str),
    #[error("JWT audience does not include this service")]
    Audience,
    #[error("JWT issuer is not trusted")]
    Issuer,
    #[error("JWT scope: {0}")]
    Scope(#[from] ScopeError),
}

/// Why a verification key could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwtKeyError {
    #[error("read JWT key {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "JWT key is neither an Ed25519 nor an RSA public key in PEM \
         (BEGIN PUBLIC KEY or BEGIN RSA PUBLIC KEY)"
    )]
    Unsupported,
    #[error("JWT RSA key has {0} bits, at least {MIN_RSA_BITS} are required")]
    RsaTooSmall(usize),
    #[error("JWT audience must not be empty")]
    EmptyAudience,
}

enum Key {
    Ed25519(ed25519_dalek::VerifyingKey),
    Rs256(rsa::RsaPublicKey),
}

impl JwtVerifier {
    /// Loads a PEM public key (blocking read; call at startup).
    pub fn from_pem_file(
        path: &Path,
        audience: String,
        issuer: Option<String>,
    ) -> Result<Self, JwtKeyError> {
        let pem = std::fs::read_to_string(path).map_err(|source| JwtKeyError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_pem(&pem, audience, issuer)
    }

    /// Builds a verifier from PEM text: SPKI (`BEGIN PUBLIC KEY`, Ed25519 or RSA) or PKCS#1
    /// (`BEGIN RSA PUBLIC KEY`).
    pub fn from_pem(
        pem: &str,
        audience: String,
        issuer: Option<String>,
    ) -> Result<Self, JwtKeyError> {
        if audience.is_empty() {
            return Err(JwtKeyError::EmptyAudience);
        }
        let pem = pem.trim();
        let key = if let Ok(key) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem) {
            Key::Ed25519(key)
        } else {
            let rsa = rsa::RsaPublicKey::from_public_key_pem(pem)
                .or_else(|_| rsa::RsaPublicKey::from_pkcs1_pem(pem))
                .map_err(|_| JwtKeyError::Unsupported)?;
            let bits = rsa.size() * 8;
            if bits < MIN_RSA_BITS {
                return Err(JwtKeyError::RsaTooSmall(bits));
            }
            Key::Rs256(rsa)
        };
        Ok(JwtVerifier {
            key,
            audience,
            issuer,
        })
    }

    /// The JWS `alg` tokens must carry: `EdDSA` or `RS256`.
    pub fn algorithm(&self) -> &'static str {
        match self.key {
            Key::Ed25519(_) => "EdDSA",
            Key::Rs256(_) => "RS256",
        }
    }

    /// Verifies a compact JWT now.
    pub fn verify(&self, token: &str) -> Result<Principal, JwtError> {
        self.verify_at(token, unix_now())
    }

    /// Verifies a compact JWT as of `now` (unix seconds).
    pub fn verify_at(&self, token: &str, now: u64) -> Result<Principal, JwtError> {
        if token.len() > MAX_JWT_LEN {
            return Err(JwtError::TooLong);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Format);
        };
        let header: Header = decode_json(header_b64)?;
        if header.crit.is_some() {
            return Err(JwtError::Critical);
        }
        self.check_alg(&header.alg)?;
        let signature = URL_SAFE_NO_PAD
            .decode(sig_b64)
            .map_err(|_| JwtError::Format)?;
        let signed = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
        self.check_signature(signed, &signature)?;
        let claims: Claims = decode_json(payload_b64)?;
        self.check_claims(claims, now)
    }

    fn check_alg(&self, alg: &str) -> Result<(), JwtError> {
        let ok = match self.key {
            // RFC 9864 names the same algorithm "Ed25519".
            Key::Ed25519(_) => alg == "EdDSA" || alg == "Ed25519",
            Key::Rs256(_) => alg == "RS256",
        };
        ok.then_some(()).ok_or(JwtError::Algorithm)
    }

    fn check_signature(&self, signed: &[u8], signature: &[u8]) -> Result<(), JwtError> {
        let ok = match &self.key {
            Key::Ed25519(key) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|sig| key.verify_strict(signed, &sig).is_ok()),
            Key::Rs256(key) => {
                let digest = Sha256::digest(signed);
                let scheme = rsa::Pkcs1v15Sign::new::<Sha256>();
                key.verify(scheme, &digest, signature).is_ok()
            }
        };
        ok.then_some(()).ok_or(JwtError::Signature)
    }

    fn check_claims(&self, claims: Claims, now: u64) -> Result<Principal, JwtError> {
        let exp = claims.exp.ok_or(JwtError::MissingClaim("exp"))?;
        let exp = numeric_date(exp).ok_or(JwtError::InvalidClaim("exp"))?;
        if now >= exp.saturating_add(LEEWAY_SECS) {
            return Err(JwtError::Expired);
        }
        if let Some(nbf) = claims.nbf {
            let nbf = numeric_date(nbf).ok_or(JwtError::InvalidClaim("nbf"))?;
            if now.saturating_add(LEEWAY_SECS) < nbf {
                return Err(JwtError::NotYetValid);
            }
        }
        let aud = claims.aud.ok_or(JwtError::MissingClaim("aud"))?;
        let aud_ok = match aud {
            Audience::One(a) => a == self.audience,
            Audience::Many(list) => list.contains(&self.audience),
        };
        if !aud_ok {
            return Err(JwtError::Audience);
        }
        if let Some(issuer) = &self.issuer
            && claims.iss.as_deref() != Some(issuer.as_str())
        {
            return Err(JwtError::Issuer);
        }
        let role = claims.role.ok_or(JwtError::MissingClaim("role"))?;
        let role: Role = role.parse().map_err(|_| JwtError::InvalidClaim("role"))?;
        validate_scope(role, claims.org.as_deref(), claims.cluster.as_deref())?;
        let subject = claims.sub.unwrap_or_else(|| "jwt".to_owned());
        if subject.is_empty() || subject.len() > MAX_SUBJECT_LEN {
            return Err(JwtError::InvalidClaim("sub"));
        }
        Ok(Principal {
            subject,
            role,
            org: claims.org,
            cluster: claims.cluster,
        })
    }
}

/// The JOSE header fields this module looks at.
#[derive(serde::Deserialize)]
struct Header {
    alg: String,
    /// Present means the issuer requires extensions we do not implement: refuse.
    crit: Option<serde_json::Value>,
}

#[derive(serde::Deserialize)]
struct Claims {
    role: Option<String>,
    org: Option<String>,
    cluster: Option<String>,
    exp: Option<serde_json::Number>,
    nbf: Option<serde_json::Number>,
    aud: Option<Audience>,
    iss: Option<String>,
    sub: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, JwtError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| JwtError::Format)?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Format)
}

/// A NumericDate (seconds, possibly fractional) as whole non-negative seconds.
fn numeric_date(n: serde_json::Number) -> Option<u64> {
    if let Some(secs) = n.as_u64() {
        return Some(secs);
    }
    let f = n.as_f64()?;
    // `as` saturates; the range check keeps the value meaningful.
    (f.is_finite() && (0.0..1.0e18).contains(&f)).then_some(f as u64)
}

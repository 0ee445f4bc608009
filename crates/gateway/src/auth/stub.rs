//! TEMPORARY stand-in until the real authenticator lands.
use super::Principal;
#[derive(Debug, thiserror::Error)]
#[error("unauthorized")]
pub struct AuthError;
impl AuthError { pub fn is_unavailable(&self) -> bool { false } }
pub struct Authenticator;
impl Authenticator {
    pub async fn authenticate(&self, _h: Option<&http::HeaderValue>) -> Result<Principal, AuthError> { Err(AuthError) }
}

//! The service's authorization, as a parameter of the routes: a heap profile shows what the
//! process holds, so these endpoints are for operators.

use std::future::Future;

use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, header};

use crate::HttpError;

/// Decides whether a request may use the memory endpoints. Any
/// `Fn(HeaderMap) -> impl Future<Output = Result<(), E>>` with `E: IntoResponse` is one, so a
/// service passes its own check (its error answers included):
///
/// ```
/// # use http::HeaderMap;
/// # struct Api; impl Api { async fn require_admin(&self, _: &HeaderMap) -> Result<(), http::StatusCode> { Ok(()) } }
/// # let api = std::sync::Arc::new(Api);
/// let authorize = move |headers: HeaderMap| {
///     let api = api.clone();
///     async move { api.require_admin(&headers).await }
/// };
/// # fn takes(_: impl memwatch_axum::Authorize) {}
/// # takes(authorize);
/// ```
pub trait Authorize: Send + Sync + 'static {
    /// `Ok` lets the request through; `Err` is the answer.
    fn authorize(&self, headers: HeaderMap) -> impl Future<Output = Result<(), Response>> + Send;
}

impl<F, Fut, E> Authorize for F
where
    F: Fn(HeaderMap) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: IntoResponse,
{
    fn authorize(&self, headers: HeaderMap) -> impl Future<Output = Result<(), Response>> + Send {
        let fut = self(headers);
        async move { fut.await.map_err(IntoResponse::into_response) }
    }
}

/// Lets every request through: only for a listener no one else can reach (loopback, an
/// admin port behind the service mesh).
#[derive(Debug, Clone, Copy)]
pub struct NoAuthorization;

impl Authorize for NoAuthorization {
    async fn authorize(&self, _headers: HeaderMap) -> Result<(), Response> {
        Ok(())
    }
}

/// Requires `Authorization: Bearer <token>` (compared in constant time); 401 otherwise.
pub fn bearer_token(token: impl Into<String>) -> impl Authorize + Clone {
    let expected: std::sync::Arc<[u8]> = token.into().into_bytes().into();
    move |headers: HeaderMap| {
        let ok = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .is_some_and(|given| !expected.is_empty() && constant_time_eq(given, &expected));
        async move {
            if ok {
                Ok(())
            } else {
                Err(HttpError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "a bearer token is required for the memory endpoints",
                ))
            }
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

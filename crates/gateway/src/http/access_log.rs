//! The access log (`--access-log`): one INFO line per request on target
//! `engine_gateway::access`, written when the answer's body ends (a follow logs when the
//! reader leaves), with what an operator needs to see why a client is refused:
//! method, route, status, error code, bytes in and out, duration, org, token id.
//!
//! Never a secret: the token id is the public half of an opaque token (`egw_<id>_…`); a JWT is
//! logged as `jwt`, a malformed credential as `malformed`. Off by default: at thousands of
//! requests a second it is the largest thing the gateway writes after the streams.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use http::header;
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::ErrorCode;
use crate::auth::split_token;

/// Middleware: counts the body bytes both ways and logs the request when its answer is done.
pub async fn log_access(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |path| route_name(path.as_str()));
    let method = request.method().as_str().to_owned();
    let org = org_of(request.uri().path()).map(str::to_owned);
    let token = token_of(request.headers().get(header::AUTHORIZATION));
    let bytes_in = Arc::new(AtomicU64::new(0));
    let request = request.map(|body| {
        Body::new(Metered {
            inner: body,
            bytes: Arc::clone(&bytes_in),
            record: None,
        })
    });
    let response = next.run(request).await;
    let code = response
        .extensions()
        .get::<ErrorCode>()
        .map(|code| code.as_str());
    let record = Record {
        started,
        method,
        route,
        status: response.status().as_u16(),
        code,
        org,
        token,
        bytes_in,
        bytes_out: Arc::new(AtomicU64::new(0)),
    };
    response.map(|body| {
        Body::new(Metered {
            inner: body,
            bytes: Arc::clone(&record.bytes_out),
            record: Some(record),
        })
    })
}

/// The route as a short, bounded label (the matched pattern, never the raw path).
fn route_name(pattern: &str) -> &'static str {
    match pattern {
        "/v1/streams/{*id}" => "stream",
        "/v1/streams" => "list",
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        "/metrics" => "metrics",
        "/debug/memory" => "debug_memory",
        "/debug/pprof/heap" => "debug_pprof",
        _ => "other",
    }
}

/// The org a stream request is about (`/v1/streams/{org}/…`), if the path names one.
fn org_of(path: &str) -> Option<&str> {
    let org = path.strip_prefix("/v1/streams/")?.split('/').next()?;
    let plain = !org.is_empty()
        && org.len() <= 128
        && org
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    plain.then_some(org)
}

/// Who asked, without the secret.
fn token_of(value: Option<&http::HeaderValue>) -> String {
    let Some(value) = value else {
        return "none".to_owned();
    };
    let Some(token) = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) else {
        return "malformed".to_owned();
    };
    if let Some((id, _secret)) = split_token(token.trim()) {
        return id.to_owned();
    }
    // Three base64url parts: a JWT (its claims are not checked here, so not logged).
    if token.split('.').count() == 3 {
        "jwt".to_owned()
    } else {
        "malformed".to_owned()
    }
}

struct Record {
    started: Instant,
    method: String,
    route: &'static str,
    status: u16,
    code: Option<&'static str>,
    org: Option<String>,
    token: String,
    bytes_in: Arc<AtomicU64>,
    bytes_out: Arc<AtomicU64>,
}

impl Record {
    fn emit(&self) {
        tracing::info!(
            target: "engine_gateway::access",
            method = %self.method,
            route = self.route,
            status = self.status,
            code = self.code.unwrap_or("-"),
            bytes_in = self.bytes_in.load(Relaxed),
            bytes_out = self.bytes_out.load(Relaxed),
            duration_ms = self.started.elapsed().as_secs_f64() * 1e3,
            org = self.org.as_deref().unwrap_or("-"),
            token = %self.token,
            "request"
        );
    }
}

/// A body that counts the bytes it yields, and logs its request when it is dropped (the end
/// of the answer, or the client leaving) if it carries the record.
struct Metered {
    inner: Body,
    bytes: Arc<AtomicU64>,
    record: Option<Record>,
}

impl HttpBody for Metered {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.bytes.fetch_add(data.len() as u64, Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            record.emit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_identities() {
        assert_eq!(org_of("/v1/streams/acme/prod/x"), Some("acme"));
        assert_eq!(org_of("/v1/streams"), None);
        assert_eq!(org_of("/v1/streams/a%20b/c/d"), None);
        assert_eq!(route_name("/v1/streams/{*id}"), "stream");
        let header = |v: &str| http::HeaderValue::from_str(v).unwrap();
        let token = format!("egw_0123456789abcdef_{}", "A".repeat(43));
        assert_eq!(
            token_of(Some(&header(&format!("Bearer {token}")))),
            "0123456789abcdef"
        );
        assert_eq!(token_of(Some(&header("Bearer a.b.c"))), "jwt");
        assert_eq!(token_of(Some(&header("Basic x"))), "malformed");
        assert_eq!(token_of(None), "none");
    }
}

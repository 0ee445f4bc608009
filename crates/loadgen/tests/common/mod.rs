//! A fake gateway for tests: speaks the append part of wire protocol v1 on a real loopback socket.
//!
//! It keeps committed offsets in memory, answers 204/409/415/401 like the real gateway, and can
//! misbehave on purpose (drop connections, never become ready, fail at start).

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub const TOKEN: &str = "fake-admin-token";

/// Shared state of a fake gateway.
#[derive(Default)]
pub struct FakeState {
    pub offsets: Mutex<HashMap<String, u64>>,
    /// Bytes committed over all streams.
    pub committed: AtomicU64,
    /// PATCH requests received, including refused ones.
    pub patches: AtomicU64,
    /// When non-zero, every n-th PATCH drops its connection without an answer.
    pub drop_every: u64,
    /// When set, /readyz answers 503 forever.
    pub not_ready: bool,
}

impl FakeState {
    pub fn set_offset(&self, path: &str, offset: u64) {
        self.offsets.lock().unwrap().insert(path.to_owned(), offset);
    }

    pub fn offset(&self, path: &str) -> Option<u64> {
        self.offsets.lock().unwrap().get(path).copied()
    }
}

/// Binds a loopback port and serves `state` on it in a background task.
pub async fn start(state: Arc<FakeState>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, state));
    addr
}

/// Accepts connections until the runtime ends.
pub async fn serve(listener: TcpListener, state: Arc<FakeState>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(state.clone(), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn answer(status: StatusCode, offset: Option<u64>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    if let Some(offset) = offset {
        response
            .headers_mut()
            .insert("stream-offset", offset.into());
        response
            .headers_mut()
            .insert("stream-sealed", "false".parse().unwrap());
    }
    response
}

async fn handle(
    state: Arc<FakeState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let path = req.uri().path().to_owned();
    if path == "/readyz" {
        let status = if state.not_ready {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        return Ok(answer(status, None));
    }
    let authorized = req
        .headers()
        .get("authorization")
        .is_some_and(|v| v == format!("Bearer {TOKEN}").as_str());
    if !authorized {
        return Ok(answer(StatusCode::UNAUTHORIZED, None));
    }
    if !path.starts_with("/v1/streams/") || path.split('/').count() != 6 {
        return Ok(answer(StatusCode::NOT_FOUND, None));
    }
    match *req.method() {
        Method::HEAD => Ok(match state.offset(&path) {
            Some(offset) => answer(StatusCode::OK, Some(offset)),
            None => answer(StatusCode::NOT_FOUND, None),
        }),
        Method::PATCH => {
            let n = state.patches.fetch_add(1, Ordering::Relaxed) + 1;
            if state.drop_every > 0 && n.is_multiple_of(state.drop_every) {
                return Err(std::io::Error::other("dropping the connection on purpose"));
            }
            if req
                .headers()
                .get("content-type")
                .is_none_or(|v| v != "application/offset+octet-stream")
            {
                return Ok(answer(StatusCode::UNSUPPORTED_MEDIA_TYPE, None));
            }
            let claimed: Option<u64> = req
                .headers()
                .get("stream-offset")
                .and_then(|v| v.to_str().ok()?.parse().ok());
            let body = Limited::new(req.into_body(), 16 << 20).collect().await;
            let body = body
                .map_err(|err| std::io::Error::other(err.to_string()))?
                .to_bytes();
            let mut offsets = state.offsets.lock().unwrap();
            let current = offsets.get(&path).copied().unwrap_or(0);
            if claimed != Some(current) {
                return Ok(answer(StatusCode::CONFLICT, Some(current)));
            }
            let next = current + body.len() as u64;
            offsets.insert(path, next);
            state
                .committed
                .fetch_add(body.len() as u64, Ordering::Relaxed);
            Ok(answer(StatusCode::NO_CONTENT, Some(next)))
        }
        _ => Ok(answer(StatusCode::METHOD_NOT_ALLOWED, None)),
    }
}

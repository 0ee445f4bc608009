//! The stream endpoints of protocol v1: HEAD, PATCH, GET (with follow), list, DELETE.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::BodyExt;

use super::AppState;
use super::error::ApiError;
use super::query::{Query, parse_bool, parse_u64};
use super::read_body::ReadBody;
use crate::auth::{Action, Principal};
use crate::budget::Reservation;
use crate::store::Appended;
use crate::stream_id::StreamId;

/// The only content type a PATCH may carry (tus).
const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";
/// Most streams a list answer holds when the client does not say.
const DEFAULT_LIST_LIMIT: usize = 1000;
const MAX_LIST_LIMIT: usize = 10_000;

/// `HEAD /v1/streams/{id}`: where to resume.
pub async fn head(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, id) = state.authorize(&headers, &raw, Action::Read).await?;
    let info = state.store.head(&id).await?;
    let mut response = StatusCode::OK.into_response();
    let h = response.headers_mut();
    h.insert("stream-offset", HeaderValue::from(info.length));
    h.insert("stream-sealed", bool_header(info.sealed));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `PATCH /v1/streams/{id}`: append the body at `Stream-Offset`, committing chunk by chunk as
/// the bytes arrive, so a broken connection keeps everything committed before it broke.
pub async fn append(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (_, id) = state.authorize(&headers, &raw, Action::Append).await?;
    check_content_type(&headers)?;
    let offset = match headers.get("stream-offset") {
        None => {
            return Err(ApiError::bad_request(
                "missing_offset",
                "Stream-Offset header is required",
            ));
        }
        Some(value) => parse_u64(value.to_str().unwrap_or("")).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_offset",
                "Stream-Offset must be a decimal integer below 2^64",
            )
        })?,
    };
    let seal = match headers.get("stream-seal") {
        None => false,
        Some(value) => parse_bool(value.to_str().unwrap_or("")).ok_or_else(|| {
            ApiError::bad_request("invalid_header", "Stream-Seal must be true or false")
        })?,
    };
    let appended = Appender::new(&state, id, offset).run(body, seal).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert("stream-offset", HeaderValue::from(appended.offset));
    if appended.sealed {
        response
            .headers_mut()
            .insert("stream-sealed", bool_header(true));
    }
    Ok(response)
}

/// `GET /v1/streams/{id}?offset=N&follow=true`: the bytes from N, and with follow, new bytes
/// as they are committed until the stream is sealed or the client leaves.
pub async fn read(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, id) = state.authorize(&headers, &raw, Action::Read).await?;
    let query = Query::parse(query.as_deref())?;
    let offset = query.u64("offset")?.unwrap_or(0);
    let follow = query.bool("follow")?.unwrap_or(false);
    let info = state.store.head(&id).await?;
    if offset > info.length {
        return Err(ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "offset_out_of_range",
            format!(
                "offset {offset} is past the stream's committed length {}",
                info.length
            ),
        ));
    }
    let body = ReadBody::open(Arc::clone(&state), id, offset, follow).await?;
    let mut response = Body::new(body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("stream-offset", HeaderValue::from(offset));
    h.insert("stream-sealed", bool_header(info.sealed));
    Ok(response)
}

/// `GET /v1/streams?prefix=org/cluster/&limit=N`: the streams under a prefix, as JSON.
pub async fn list(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let principal = state.authenticate(&headers).await?;
    let query = Query::parse(query.as_deref())?;
    let prefix = match query.get("prefix") {
        Some(prefix) => prefix.to_owned(),
        None => default_prefix(&principal),
    };
    if !principal.may_list(&prefix) {
        return Err(ApiError::forbidden(format!(
            "this token may not list streams under {prefix:?}"
        )));
    }
    let limit = query.u64("limit")?.map_or(DEFAULT_LIST_LIMIT, |n| {
        n.clamp(1, MAX_LIST_LIMIT as u64) as usize
    });
    let streams = state.store.list(&prefix, limit).await?;
    Ok(axum::Json(streams).into_response())
}

/// `DELETE /v1/streams/{id}` (admin).
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, id) = state.authorize(&headers, &raw, Action::Delete).await?;
    state.store.delete(&id).await?;
    tracing::info!(stream = %id, "stream deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

impl AppState {
    /// Authenticates the caller and checks it may do `action` on the stream named `raw`.
    /// Authentication comes first, so an anonymous caller learns nothing about ids.
    pub async fn authorize(
        &self,
        headers: &HeaderMap,
        raw: &str,
        action: Action,
    ) -> Result<(Principal, StreamId), ApiError> {
        let principal = self.authenticate(headers).await?;
        let id: StreamId = raw.parse()?;
        if !principal.may(action, &id) {
            let verb = match action {
                Action::Append => "append to",
                Action::Read => "read",
                Action::Delete => "delete",
            };
            return Err(ApiError::forbidden(format!(
                "this token may not {verb} stream {id}"
            )));
        }
        Ok((principal, id))
    }

    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        Ok(self
            .auth
            .authenticate(headers.get(header::AUTHORIZATION))
            .await?)
    }
}

/// A non-admin listing without a prefix sees its own scope.
fn default_prefix(principal: &Principal) -> String {
    match (&principal.org, &principal.cluster) {
        (Some(org), Some(cluster)) => format!("{org}/{cluster}/"),
        (Some(org), None) => format!("{org}/"),
        _ => String::new(),
    }
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim());
    match media_type {
        Some(t) if t.eq_ignore_ascii_case(OFFSET_OCTET_STREAM) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("a PATCH body must be sent as Content-Type: {OFFSET_OCTET_STREAM}"),
        )),
    }
}

fn bool_header(value: bool) -> HeaderValue {
    HeaderValue::from_static(if value { "true" } else { "false" })
}

/// One PATCH body being appended: collects at most one chunk, hands it to the store, repeats.
struct Appender<'a> {
    state: &'a AppState,
    id: StreamId,
    /// Where the next chunk goes: the offset the client asked for, then each commit's result.
    offset: u64,
    /// Bytes received and not yet handed to the store (at most one chunk). Allocated at its
    /// final size, so the budget covers exactly what is held.
    chunk: BytesMut,
    /// Budget held for `chunk` (its capacity), or for a frame handed over without a copy.
    held: Option<Reservation>,
    /// Body bytes still to come when the client sent a Content-Length: sizes the last chunk.
    remaining: Option<u64>,
    /// Result of the last append, if any happened.
    last: Option<Appended>,
}

impl<'a> Appender<'a> {
    fn new(state: &'a AppState, id: StreamId, offset: u64) -> Self {
        Appender {
            state,
            id,
            offset,
            chunk: BytesMut::new(),
            held: None,
            remaining: None,
            last: None,
        }
    }

    async fn run(mut self, mut body: Body, seal: bool) -> Result<Appended, ApiError> {
        let limits = &self.state.limits;
        self.remaining = http_body::Body::size_hint(&body).exact();
        loop {
            let frame = match tokio::time::timeout(limits.body_timeout, body.frame()).await {
                Ok(Some(Ok(frame))) => frame,
                Ok(None) => break,
                Ok(Some(Err(err))) => {
                    // The client broke off: keep what arrived, then tell it (if it still listens).
                    self.flush().await?;
                    return Err(ApiError::bad_request(
                        "body_error",
                        format!("reading the body failed: {err}"),
                    ));
                }
                Err(_) => {
                    self.flush().await?;
                    let secs = limits.body_timeout.as_secs();
                    let mut err = ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "body_timeout",
                        format!("no body bytes for {secs} s; what arrived is committed"),
                    );
                    err.offset = Some(self.offset);
                    return Err(err);
                }
            };
            // Trailers are ignored.
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if let Some(remaining) = &mut self.remaining {
                *remaining = remaining.saturating_sub(data.len() as u64);
            }
            self.add(data).await?;
        }
        if !self.chunk.is_empty() || seal || self.last.is_none() {
            self.commit(seal).await?;
        }
        self.last.ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "no append happened",
            )
        })
    }

    /// Adds received bytes, committing every full chunk. Budget is taken before anything is
    /// allocated; while it is not available the body is not read (backpressure).
    async fn add(&mut self, mut data: Bytes) -> Result<(), ApiError> {
        let chunk_bytes = self.state.limits.chunk_bytes;
        while !data.is_empty() {
            if self.chunk.is_empty() && data.len() >= chunk_bytes {
                // A whole chunk in one frame: hand it over without copying.
                self.hold(chunk_bytes, &data).await?;
                let whole = data.split_to(chunk_bytes);
                self.commit_bytes(whole, false).await?;
                continue;
            }
            if self.chunk.capacity() == 0 {
                // Exactly what this chunk will hold: the rest of the body, at most one chunk.
                let rest = self
                    .remaining
                    .map_or(u64::MAX, |r| r.saturating_add(data.len() as u64));
                let size = rest.min(chunk_bytes as u64) as usize;
                self.hold(size, &data).await?;
                self.chunk = BytesMut::with_capacity(size);
            }
            let take = data.len().min(chunk_bytes - self.chunk.len());
            self.chunk.extend_from_slice(&data.split_to(take));
            if self.chunk.len() == chunk_bytes {
                self.commit(false).await?;
            }
        }
        Ok(())
    }

    /// Takes `bytes` of budget. When none comes in time, commits what was received (`pending`
    /// included) and answers 503 with the committed offset.
    async fn hold(&mut self, bytes: usize, pending: &Bytes) -> Result<(), ApiError> {
        let patience = self.state.limits.budget_patience;
        if let Some(reservation) = self.state.budget.reserve(bytes, patience).await {
            match &mut self.held {
                Some(held) => held.merge(reservation),
                None => self.held = Some(reservation),
            }
            return Ok(());
        }
        self.chunk.extend_from_slice(pending);
        self.flush().await?;
        let mut err =
            ApiError::overloaded("the gateway is at its memory budget; retry from Stream-Offset");
        err.offset = Some(self.offset);
        Err(err)
    }

    /// Commits what was received so far, if anything, keeping the error for the caller.
    async fn flush(&mut self) -> Result<(), ApiError> {
        if self.chunk.is_empty() {
            Ok(())
        } else {
            self.commit(false).await
        }
    }

    async fn commit(&mut self, seal: bool) -> Result<(), ApiError> {
        let data = std::mem::take(&mut self.chunk).freeze();
        self.commit_bytes(data, seal).await
    }

    async fn commit_bytes(&mut self, data: Bytes, seal: bool) -> Result<(), ApiError> {
        let len = data.len() as u64;
        if self.offset.checked_add(len).is_none() {
            return Err(ApiError::bad_request(
                "invalid_offset",
                "offset plus body length overflows 2^64",
            ));
        }
        let started = Instant::now();
        let result = self
            .state
            .store
            .append(&self.id, self.offset, data, seal)
            .await;
        self.state
            .metrics
            .append_latency
            .observe_duration(started.elapsed());
        self.held = None; // committed or refused: either way the bytes are no longer held
        let appended = result?;
        self.state
            .metrics
            .appended_bytes
            .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
        self.offset = appended.offset;
        self.last = Some(appended);
        Ok(())
    }
}

/// How long a handler may wait for budget before answering 503.
pub const DEFAULT_BUDGET_PATIENCE: Duration = Duration::from_secs(10);

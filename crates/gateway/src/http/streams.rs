//! The stream endpoints of protocol v1: HEAD, PATCH, GET (with follow), list, DELETE.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};

use super::AppState;
use super::append::Appender;
use super::error::{ApiError, ErrorCode};
use super::query::{Query, parse_bool, parse_u64};
use super::read_body::ReadBody;
use crate::auth::{Action, Principal};
use crate::store::{ErrorKind, StoreError};
use crate::stream_id::StreamId;

/// The `{*id}` of a stream route; a path axum cannot decode (not UTF-8) is `invalid_stream_id`.
type IdPath = Result<Path<String>, PathRejection>;

/// The only content type a PATCH may carry (tus).
const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";
/// Most streams a list answer holds when the client does not say.
const DEFAULT_LIST_LIMIT: usize = 1000;
const MAX_LIST_LIMIT: usize = 10_000;

/// `HEAD /v1/streams/{id}`: where to resume.
pub async fn head(
    State(state): State<Arc<AppState>>,
    path: IdPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, id) = state
        .authorize(&headers, path?.0.as_str(), Action::Read)
        .await?;
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
    path: IdPath,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (_, id) = state
        .authorize(&headers, path?.0.as_str(), Action::Append)
        .await?;
    check_content_type(&headers)?;
    let offset = match headers.get("stream-offset") {
        None => {
            return Err(ApiError::new(
                ErrorCode::MissingOffset,
                "Stream-Offset header is required",
            ));
        }
        Some(value) => parse_u64(value.to_str().unwrap_or("")).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidOffset,
                "Stream-Offset must be a decimal integer below 2^64",
            )
        })?,
    };
    let seal = match headers.get("stream-seal") {
        None => false,
        Some(value) => parse_bool(value.to_str().unwrap_or("")).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidHeader,
                "Stream-Seal must be true or false",
            )
        })?,
    };
    if expects_continue(&headers) {
        // hyper sends `100 Continue` when the body is first polled: every check that can fail
        // runs before that, so a client told 409 never sends the body.
        check_offset(&state, &id, offset).await?;
    }
    let appended = Appender::new(&state, id, &headers, offset)
        .run(body, seal)
        .await?;
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
    path: IdPath,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, id) = state
        .authorize(&headers, path?.0.as_str(), Action::Read)
        .await?;
    let query = Query::parse(query.as_deref())?;
    let offset = query.u64("offset")?.unwrap_or(0);
    let follow = query.bool("follow")?.unwrap_or(false);
    let info = state.store.head(&id).await?;
    if offset > info.length {
        return Err(ApiError::new(
            ErrorCode::OffsetOutOfRange,
            format!(
                "offset {offset} is past the stream's committed length {}",
                info.length
            ),
        ));
    }
    let authorization = headers.get(header::AUTHORIZATION).cloned();
    let body = ReadBody::open(Arc::clone(&state), id, offset, follow, authorization).await?;
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
    path: IdPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, id) = state
        .authorize(&headers, path?.0.as_str(), Action::Delete)
        .await?;
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
            ErrorCode::UnsupportedMediaType,
            format!("a PATCH body must be sent as Content-Type: {OFFSET_OCTET_STREAM}"),
        )),
    }
}

fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
}

/// The store's answer to an append at `offset`, asked before the body is read: the same
/// conflict, sealed and not-found errors the append itself would give.
async fn check_offset(state: &AppState, id: &StreamId, offset: u64) -> Result<(), ApiError> {
    match state.store.head(id).await {
        Ok(info) if info.sealed => Err(StoreError::sealed(id, info.length).into()),
        Ok(info) if info.length != offset => {
            Err(StoreError::conflict(id, offset, info.length).into())
        }
        Ok(_) => Ok(()),
        Err(err) if err.kind() == ErrorKind::NotFound && offset == 0 => Ok(()),
        Err(err) => Err(err.into()),
    }
}

fn bool_header(value: bool) -> HeaderValue {
    HeaderValue::from_static(if value { "true" } else { "false" })
}

/// How long a handler may wait for budget before answering 503.
pub const DEFAULT_BUDGET_PATIENCE: Duration = Duration::from_secs(10);

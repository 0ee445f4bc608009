//! The one place where failures become HTTP answers: `{"error": code, "message": text}`.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

use crate::auth::AuthError;
use crate::store::{ErrorKind, StoreError};
use crate::stream_id::StreamIdError;

/// An error answer. `code` is stable (clients and metrics match on it); `message` is for people.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Committed offset to report in `Stream-Offset` (conflicts, sealed streams).
    pub offset: Option<u64>,
    /// Whether to send `Stream-Sealed: true`.
    pub sealed: bool,
    /// Seconds for `Retry-After` (overload, unavailable store).
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            offset: None,
            sealed: false,
            retry_after: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn overloaded(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message).retry_after(1)
    }

    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        let (status, code) = match err.kind() {
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ErrorKind::Conflict => (StatusCode::CONFLICT, "offset_mismatch"),
            ErrorKind::Sealed => (StatusCode::CONFLICT, "stream_sealed"),
            ErrorKind::InvalidOffset => (StatusCode::RANGE_NOT_SATISFIABLE, "offset_out_of_range"),
            ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ErrorKind::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ErrorKind::Corrupted => (StatusCode::INTERNAL_SERVER_ERROR, "data_corrupted"),
            ErrorKind::InsufficientStorage => {
                (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage")
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let mut api = ApiError::new(status, code, err.to_string());
        api.offset = err.committed();
        api.sealed = err.kind() == ErrorKind::Sealed;
        match err.kind() {
            ErrorKind::Unavailable => api.retry_after = Some(1),
            ErrorKind::InsufficientStorage => api.retry_after = Some(10),
            _ => {}
        }
        // the store logged a corrupted record with its position already
        if status == StatusCode::INTERNAL_SERVER_ERROR && err.kind() != ErrorKind::Corrupted {
            tracing::error!(error = %err, "store failed");
        }
        api
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        if err.is_unavailable() {
            tracing::error!(error = %err, "token store failed");
            return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, err.code(), err.to_string())
                .retry_after(1);
        }
        ApiError::new(StatusCode::UNAUTHORIZED, err.code(), err.to_string())
    }
}

/// A blocking task that died (a panic in it): a bug, answered 500.
impl From<tokio::task::JoinError> for ApiError {
    fn from(err: tokio::task::JoinError) -> Self {
        tracing::error!(error = %err, "blocking task failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
}

impl From<StreamIdError> for ApiError {
    fn from(err: StreamIdError) -> Self {
        ApiError::bad_request("invalid_stream_id", err.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.code, "message": self.message }).to_string();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(offset) = self.offset {
            headers.insert("stream-offset", HeaderValue::from(offset));
        }
        if self.sealed {
            headers.insert("stream-sealed", HeaderValue::from_static("true"));
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        // Handlers log nothing for client errors; metrics count them by code.
        response.extensions_mut().insert(ErrorCode(self.code));
        response
    }
}

/// The error code of a response, for the metrics middleware.
#[derive(Clone, Copy, Debug)]
pub struct ErrorCode(pub &'static str);

//! The one place where failures become HTTP answers: `{"error": code, "message": text}`.
//!
//! **Architecture invariant:** every error status the gateway sends is built here, from an
//! [`ErrorCode`]: its stable string (clients match on it), its status, its metric label.
//! README.md's table of codes is checked against [`ErrorCode::ALL`] by a test.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

use crate::auth::AuthError;
use crate::store::{ErrorKind, StoreError};
use crate::stream_id::StreamIdError;

/// Declares [`ErrorCode`] with its string, status and description in one table.
macro_rules! error_codes {
    ($($variant:ident = $code:literal, $status:ident, $doc:literal;)*) => {
        /// A stable error code: the `error` field of a JSON error body and the `code` label
        /// of `engine_gateway_errors_total`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $(#[doc = $doc] $variant,)*
        }

        impl ErrorCode {
            /// Every code, in the order of the metric series and of README's table.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The stable string, also the metric label.
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $code,)* }
            }

            pub fn status(self) -> StatusCode {
                match self { $(ErrorCode::$variant => StatusCode::$status,)* }
            }

            /// One line of text for people (README's table).
            pub fn description(self) -> &'static str {
                match self { $(ErrorCode::$variant => $doc,)* }
            }
        }
    };
}

error_codes! {
    InvalidStreamId = "invalid_stream_id", BAD_REQUEST, "the path is not a valid `{org}/{cluster}/{name}` (or not UTF-8)";
    MissingOffset = "missing_offset", BAD_REQUEST, "a PATCH without `Stream-Offset`";
    InvalidOffset = "invalid_offset", BAD_REQUEST, "`Stream-Offset` non-numeric, ≥ 2^64, or offset + length overflowing";
    InvalidHeader = "invalid_header", BAD_REQUEST, "a header with a value the gateway does not take (e.g. `Stream-Seal`)";
    InvalidQuery = "invalid_query", BAD_REQUEST, "a query parameter that is malformed or out of range";
    InvalidRequest = "invalid_request", BAD_REQUEST, "a request the HTTP layer could not take apart";
    BodyError = "body_error", BAD_REQUEST, "the request body broke off; what arrived is committed";
    MissingToken = "missing_token", UNAUTHORIZED, "no `Authorization: Bearer` header";
    MalformedToken = "malformed_token", UNAUTHORIZED, "an `Authorization` header that is not a bearer token";
    InvalidToken = "invalid_token", UNAUTHORIZED, "an unknown token";
    TokenRevoked = "token_revoked", UNAUTHORIZED, "a revoked token (also mid-request, with the committed `Stream-Offset`)";
    TokenExpired = "token_expired", UNAUTHORIZED, "an expired token (also mid-request, with the committed `Stream-Offset`)";
    InvalidJwt = "invalid_jwt", UNAUTHORIZED, "a JWT with a bad signature, audience, issuer or claims";
    Forbidden = "forbidden", FORBIDDEN, "the token's scope does not cover this stream or endpoint";
    NotFound = "not_found", NOT_FOUND, "no such stream or endpoint";
    MethodNotAllowed = "method_not_allowed", METHOD_NOT_ALLOWED, "a method the endpoint does not serve";
    BodyTimeout = "body_timeout", REQUEST_TIMEOUT, "no body bytes for `body_timeout_secs`, or slower than `min_body_rate`; with the committed `Stream-Offset`";
    OffsetMismatch = "offset_mismatch", CONFLICT, "`Stream-Offset` differs from the committed length (given in `Stream-Offset`)";
    StreamSealed = "stream_sealed", CONFLICT, "the stream is sealed (`Stream-Sealed: true`)";
    RecorderOff = "recorder_off", CONFLICT, "a capture was requested but the flight recorder is off (no memory limit known)";
    PayloadTooLarge = "payload_too_large", PAYLOAD_TOO_LARGE, "more bytes in one append than the store takes";
    UnsupportedMediaType = "unsupported_media_type", UNSUPPORTED_MEDIA_TYPE, "a PATCH not sent as `application/offset+octet-stream`";
    OffsetOutOfRange = "offset_out_of_range", RANGE_NOT_SATISFIABLE, "a read offset past the committed length";
    Busy = "busy", TOO_MANY_REQUESTS, "a heap profile is already being taken (`Retry-After`)";
    Internal = "internal", INTERNAL_SERVER_ERROR, "a bug; the log says more";
    DataCorrupted = "data_corrupted", INTERNAL_SERVER_ERROR, "stored bytes failed their checksum";
    Overloaded = "overloaded", SERVICE_UNAVAILABLE, "memory soft limit or byte budget reached (`Retry-After`, and `Stream-Offset` mid-PATCH)";
    TooManyConnections = "too_many_connections", SERVICE_UNAVAILABLE, "the connection cap is reached and no idle connection could be evicted (`Retry-After`)";
    Unavailable = "unavailable", SERVICE_UNAVAILABLE, "the store cannot serve now, or the gateway is shutting down (`Retry-After`)";
    AuthUnavailable = "auth_unavailable", SERVICE_UNAVAILABLE, "the token store cannot be read (`Retry-After`)";
    ProfilingDisabled = "profiling_disabled", SERVICE_UNAVAILABLE, "heap profiling is off (`MALLOC_CONF=prof:false`)";
    InsufficientStorage = "insufficient_storage", INSUFFICIENT_STORAGE, "the disk is full; heals when space returns (`Retry-After`)";
}

impl ErrorCode {
    /// Position in [`ErrorCode::ALL`], for the metric counters.
    pub fn index(self) -> usize {
        self as usize
    }

    /// A code for an error status that no handler built (axum's own rejections, hyper).
    pub fn for_status(status: StatusCode) -> ErrorCode {
        match status {
            StatusCode::NOT_FOUND => ErrorCode::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
            StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
            StatusCode::UNAUTHORIZED => ErrorCode::InvalidToken,
            StatusCode::FORBIDDEN => ErrorCode::Forbidden,
            s if s.is_client_error() => ErrorCode::InvalidRequest,
            StatusCode::SERVICE_UNAVAILABLE => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        }
    }
}

/// An error answer. `code` is stable (clients and metrics match on it); `message` is for people.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Committed offset to report in `Stream-Offset` (conflicts, sealed streams, cut PATCHes).
    pub offset: Option<u64>,
    /// Whether to send `Stream-Sealed: true`.
    pub sealed: bool,
    /// Seconds for `Retry-After` (overload, unavailable store).
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let retry_after = (code.status() == StatusCode::SERVICE_UNAVAILABLE
            || code.status() == StatusCode::INSUFFICIENT_STORAGE
            || code == ErrorCode::Busy)
            .then_some(1);
        ApiError {
            code,
            message: message.into(),
            offset: None,
            sealed: false,
            retry_after,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn overloaded(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Overloaded, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// Reports the committed offset in `Stream-Offset`.
    pub fn with_offset(mut self, offset: u64) -> Self {
        self.offset = Some(offset);
        self
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        let code = match err.kind() {
            ErrorKind::NotFound => ErrorCode::NotFound,
            ErrorKind::Conflict => ErrorCode::OffsetMismatch,
            ErrorKind::Sealed => ErrorCode::StreamSealed,
            ErrorKind::InvalidOffset => ErrorCode::OffsetOutOfRange,
            ErrorKind::Unavailable => ErrorCode::Unavailable,
            ErrorKind::TooLarge => ErrorCode::PayloadTooLarge,
            ErrorKind::Corrupted => ErrorCode::DataCorrupted,
            ErrorKind::InsufficientStorage => ErrorCode::InsufficientStorage,
            _ => ErrorCode::Internal,
        };
        // Unavailable is the backend's state, not a bug; a corrupted record was logged with
        // its position by the store already.
        if code.status().is_server_error()
            && !matches!(
                code,
                ErrorCode::Unavailable | ErrorCode::DataCorrupted | ErrorCode::InsufficientStorage
            )
        {
            tracing::error!(error = %err, "store failed");
        }
        let mut api = ApiError::new(code, err.to_string());
        api.offset = err.committed();
        api.sealed = err.kind() == ErrorKind::Sealed;
        if code == ErrorCode::InsufficientStorage {
            // Space comes back when an operator (or retention) frees it: not within a second.
            api.retry_after = Some(10);
        }
        api
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        let code = match &err {
            AuthError::Missing => ErrorCode::MissingToken,
            AuthError::Malformed => ErrorCode::MalformedToken,
            AuthError::Unknown => ErrorCode::InvalidToken,
            AuthError::Revoked => ErrorCode::TokenRevoked,
            AuthError::Expired => ErrorCode::TokenExpired,
            AuthError::InvalidJwt(_) => ErrorCode::InvalidJwt,
            AuthError::Storage(_) => {
                tracing::error!(error = %err, "token store failed");
                ErrorCode::AuthUnavailable
            }
        };
        ApiError::new(code, err.to_string())
    }
}

/// A blocking task that died (a panic in it): a bug, answered 500.
impl From<tokio::task::JoinError> for ApiError {
    fn from(err: tokio::task::JoinError) -> Self {
        tracing::error!(error = %err, "blocking task failed");
        ApiError::internal("internal error")
    }
}

impl From<StreamIdError> for ApiError {
    fn from(err: StreamIdError) -> Self {
        ApiError::new(ErrorCode::InvalidStreamId, err.to_string())
    }
}

/// axum's path rejection (e.g. a path that is not UTF-8 after percent-decoding).
impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(err: axum::extract::rejection::PathRejection) -> Self {
        ApiError::new(ErrorCode::InvalidStreamId, err.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            serde_json::json!({ "error": self.code.as_str(), "message": self.message }).to_string();
        let mut response = (self.code.status(), body).into_response();
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
        if self.code.status() == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        // Handlers log nothing for client errors; metrics count them by code.
        response.extensions_mut().insert(self.code);
        response
    }
}

/// A whole HTTP/1.1 error answer as bytes, for the accept loop, which answers connections over
/// the cap without running hyper; it closes the connection.
pub fn canned_answer(code: ErrorCode, message: &str) -> String {
    let body = serde_json::json!({ "error": code.as_str(), "message": message }).to_string();
    let status = code.status();
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// README.md lists every code with its status: the table between the two markers.
    #[test]
    fn readme_table_lists_exactly_the_codes() {
        let readme = include_str!("../../../../README.md");
        let start = readme.find("<!-- error-codes -->").expect("README marker");
        let end = readme
            .find("<!-- /error-codes -->")
            .expect("README end marker");
        let rows: Vec<(String, String)> = readme[start..end]
            .lines()
            .filter_map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                let code = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
                Some((code.to_owned(), cells.get(2)?.to_string()))
            })
            .collect();
        let expected: Vec<(String, String)> = ErrorCode::ALL
            .iter()
            .map(|c| (c.as_str().to_owned(), c.status().as_u16().to_string()))
            .collect();
        let table: String = ErrorCode::ALL
            .iter()
            .map(|c| {
                format!(
                    "| `{}` | {} | {} |\n",
                    c.as_str(),
                    c.status().as_u16(),
                    c.description()
                )
            })
            .collect();
        assert_eq!(rows, expected, "README's table should be:\n{table}");
    }

    #[test]
    fn codes_are_unique_and_indexed_in_order() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(code.index(), i);
            assert_eq!(
                ErrorCode::ALL
                    .iter()
                    .filter(|c| c.as_str() == code.as_str())
                    .count(),
                1
            );
        }
    }

    #[test]
    fn canned_answer_length_is_right() {
        let text = canned_answer(ErrorCode::TooManyConnections, "retry later");
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }
}

//! The failures the endpoints answer with, and their default JSON rendering.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

/// An error answer: a stable `code` (what clients and metrics match on) and a message for
/// people. Rendered as `{"error": code, "message": text}` unless the service passes its own
/// renderer ([`Routes::errors`](crate::Routes::errors)).
#[derive(Debug, Clone)]
pub struct HttpError {
    pub status: StatusCode,
    /// `invalid_query`, `busy`, `profiling_disabled`, `internal`, `overloaded`, `unauthorized`.
    pub code: &'static str,
    pub message: String,
    /// Seconds for `Retry-After`.
    pub retry_after: Option<u32>,
}

impl HttpError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    #[must_use]
    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.code, "message": self.message }).to_string();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

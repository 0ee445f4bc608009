//! Operations endpoints: liveness, readiness, metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

use super::AppState;
use super::error::{ApiError, ErrorCode};
use crate::metrics::write_gauge;

/// `GET /healthz`: the process answers.
pub async fn healthz() -> Response {
    json(StatusCode::OK, r#"{"status":"ok"}"#)
}

/// `GET /readyz`: the gateway takes new work (store writable, not shutting down).
pub async fn readyz(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    if *state.shutdown.borrow() {
        return Err(ApiError::new(ErrorCode::Unavailable, "shutting down"));
    }
    if state.memory.over_soft_limit() {
        return Err(ApiError::overloaded("over the memory soft limit"));
    }
    state.store.ready().await?;
    Ok(json(StatusCode::OK, r#"{"status":"ready"}"#))
}

/// `GET /metrics`: Prometheus text exposition.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut out = String::with_capacity(16 * 1024);
    state.metrics.write(&mut out);
    write_gauge(
        &mut out,
        "engine_gateway_budget_bytes",
        "size of the in-flight byte budget",
        state.budget.total(),
    );
    write_gauge(
        &mut out,
        "engine_gateway_budget_used_bytes",
        "body bytes held in memory now",
        state.budget.in_use(),
    );
    state.store.write_metrics(&mut out);
    // Reading the snapshot resets the allocator's peak: each scrape sees the peak since the last.
    if let Ok(snapshot) = tokio::task::spawn_blocking(memwatch::snapshot).await {
        memwatch::write_prometheus(&snapshot, &mut out);
    }
    state.memory.write_metrics(&mut out);
    let mut response = out.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

fn json(status: StatusCode, body: &'static str) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

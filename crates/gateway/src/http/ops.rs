//! Operations endpoints: liveness, readiness, metrics; memwatch's admin endpoints
//! (`/debug/memory`, `/debug/pprof/heap`) and soft limit wired with the gateway's admin check
//! and error answers.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Request, StatusCode, header};

use super::AppState;
use super::error::{ApiError, ErrorCode};
use crate::metrics::write_gauge;

/// memwatch's endpoints for admin tokens, answering errors as the gateway does.
pub fn memory_routes(state: &Arc<AppState>) -> Router<Arc<AppState>> {
    let auth = Arc::clone(state);
    memwatch_axum::Routes::new(state.memory.clone(), move |headers: HeaderMap| {
        let state = Arc::clone(&auth);
        async move { state.require_admin(&headers).await }
    })
    .errors(|err| {
        if err.status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %err.message, "memory endpoint failed");
        }
        // memwatch's codes are the gateway's own (`busy`, `profiling_disabled`, ...).
        let code = ErrorCode::ALL
            .iter()
            .copied()
            .find(|code| code.as_str() == err.code)
            .unwrap_or_else(|| ErrorCode::for_status(err.status));
        let mut api = ApiError::new(code, err.message);
        api.retry_after = err.retry_after;
        api.into_response()
    })
    .metrics_route(false)
    .flamegraph_title("engine-gateway live heap")
    .router()
}

/// Over the memory soft limit, new work gets 503 + `Retry-After`; `exempt` requests (ops and
/// debug endpoints: an operator can still take a profile) pass.
pub fn soft_limit(
    state: &AppState,
    exempt: impl Fn(&Request<Body>) -> bool + Send + Sync + 'static,
) -> memwatch_axum::SoftLimitLayer {
    memwatch_axum::SoftLimitLayer::new(state.memory.clone())
        .exempt(exempt)
        .refusal(|| {
            ApiError::overloaded("the gateway is over its memory soft limit; retry later")
                .into_response()
        })
}

impl AppState {
    pub async fn require_admin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let principal = self.authenticate(headers).await?;
        if principal.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden("this endpoint is for admin tokens"))
        }
    }
}

/// `GET /healthz`: the process answers.
pub async fn healthz() -> Response {
    json(StatusCode::OK, r#"{"status":"ok"}"#)
}

/// `GET /readyz`: the gateway takes new work (store writable, not shutting down).
pub async fn readyz(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    if *state.draining.borrow() || *state.shutdown.borrow() {
        return Err(ApiError::new(ErrorCode::Unavailable, "shutting down"));
    }
    if state.memory.over_soft_limit() {
        return Err(ApiError::overloaded("over the memory soft limit"));
    }
    // Not ready is always 503 `unavailable`, the store's reason in the message (a full disk
    // answers PATCHes 507 `insufficient_storage`; a probe only needs to know it is not ready).
    if let Err(err) = state.store.ready().await {
        return Err(ApiError::new(ErrorCode::Unavailable, err.to_string()));
    }
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
    use super::chunk_buf::{POOL_BYTES, POOL_IDLE, pooled_bytes};
    write_gauge(
        &mut out,
        "engine_gateway_chunk_pool_bytes",
        &format!(
            "free body buffers kept for reuse (at most {} MiB, given back after {} ms unused)",
            POOL_BYTES >> 20,
            POOL_IDLE.as_millis()
        ),
        pooled_bytes(),
    );
    state.store.write_metrics(&mut out);
    // memwatch's figures, peaks, recorder and post-mortem; /proc reads, so off the workers.
    let memory = state.memory.clone();
    if let Ok(text) = tokio::task::spawn_blocking(move || memory.metrics_text()).await {
        out.push_str(&text);
    }
    if let Ok(process) = tokio::task::spawn_blocking(|| {
        let mut text = String::with_capacity(1024);
        crate::process_metrics::write(&mut text);
        text
    })
    .await
    {
        out.push_str(&process);
    }
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

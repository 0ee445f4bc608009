//! The HTTP API: protocol v1 routes, ops endpoints, and the server loop that runs them.
//!
//! **Architecture invariant:** handlers never see a socket; `app(state)` is a plain `Router`
//! so tests can drive it with `oneshot`. Limits that need the socket (connection cap, header
//! timeout, header size) live in `server`.

mod access_log;
mod error;
mod ops;
mod query;
mod read_body;
pub mod server;
mod streams;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{Method, StatusCode};
use tokio::sync::watch;

pub use error::{ApiError, ErrorCode};

use crate::auth::Authenticator;
use crate::budget::ByteBudget;
use crate::metrics::{Metrics, Route};
use crate::store::Store;

/// Limits the handlers enforce.
#[derive(Clone, Debug)]
pub struct HandlerLimits {
    /// Largest piece of a PATCH body held before it is handed to the store, and of a GET read.
    pub chunk_bytes: usize,
    /// Longest wait for the next body bytes of a PATCH before it is cut (slowloris).
    pub body_timeout: Duration,
    /// Longest wait for memory budget before answering 503.
    pub budget_patience: Duration,
}

impl Default for HandlerLimits {
    fn default() -> Self {
        HandlerLimits {
            chunk_bytes: 256 * 1024,
            body_timeout: Duration::from_secs(30),
            budget_patience: streams::DEFAULT_BUDGET_PATIENCE,
        }
    }
}

/// What every handler shares.
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub auth: Arc<Authenticator>,
    /// Bytes of request and response bodies held in memory, all connections together.
    pub budget: ByteBudget,
    pub metrics: Arc<Metrics>,
    pub limits: HandlerLimits,
    /// Turns true when the gateway stops serving (the listener closes): followers end.
    pub shutdown: watch::Receiver<bool>,
    /// Turns true when a stop is requested, `shutdown_delay` before `shutdown`: readiness
    /// fails so load balancers stop sending, while everything still serves.
    pub draining: watch::Receiver<bool>,
    /// Flight recorder and soft limit.
    pub memory: memwatch::Memwatch,
    /// Whether every request is logged (`--access-log`).
    pub access_log: bool,
}

/// The router of the whole API.
pub fn app(state: Arc<AppState>) -> Router {
    let stream_routes = get(streams::read)
        .head(streams::head)
        .patch(streams::append)
        .delete(streams::delete);
    let access_log = state.access_log;
    let router = Router::new()
        .route("/v1/streams", get(streams::list))
        .route("/v1/streams/{*id}", stream_routes)
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .merge(ops::memory_routes(&state))
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(ops::soft_limit(&state, |r| {
            matches!(
                route_of(r.method(), r.uri().path()),
                Route::Ops | Route::Debug | Route::Other
            )
        }))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), observe));
    // Outermost, so it also sees the soft limit's refusals.
    let router = if access_log {
        router.layer(middleware::from_fn(access_log::log_access))
    } else {
        router
    };
    router.with_state(state)
}

async fn fallback() -> ApiError {
    ApiError::not_found("no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint",
    )
}

/// Counts every answer by route, status and error code.
async fn observe(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let route = route_of(request.method(), request.uri().path());
    let started = Instant::now();
    let response = next.run(request).await.into_response();
    let status = response.status().as_u16();
    state.metrics.request(route, status, started.elapsed());
    if let Some(ErrorCode(code)) = response.extensions().get::<ErrorCode>() {
        state.metrics.error(code);
    }
    response
}

fn route_of(method: &Method, path: &str) -> Route {
    if path.starts_with("/v1/streams/") {
        match *method {
            Method::HEAD => Route::Head,
            Method::PATCH => Route::Append,
            Method::GET => Route::Read,
            Method::DELETE => Route::Delete,
            _ => Route::Other,
        }
    } else if path == "/v1/streams" {
        Route::List
    } else if matches!(path, "/healthz" | "/readyz" | "/metrics") {
        Route::Ops
    } else if path.starts_with("/debug/") {
        Route::Debug
    } else {
        Route::Other
    }
}

//! The HTTP API: protocol v1 routes, ops endpoints, and the server loop that runs them.
//!
//! **Architecture invariant:** handlers never see a socket; `app(state)` is a plain `Router`
//! so tests can drive it with `oneshot`. Limits that need the socket (connection cap, header
//! timeout, header size) live in `server`.

mod access_log;
mod append;
mod chunk_buf;
mod conn;
mod drain;
mod error;
mod ops;
mod query;
mod read_body;
pub mod server;
mod streams;
mod threads;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{Method, header};
use tokio::sync::watch;

pub use error::{ApiError, ErrorCode, canned_answer};

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
    /// Longest time received PATCH bytes wait for a full chunk before they are committed.
    pub flush_interval: Duration,
    /// A PATCH slower than this many bytes per second over `body_rate_grace` is cut (408).
    /// 0 turns the check off.
    pub min_body_rate: u64,
    /// The window over which `min_body_rate` is measured (and the grace before it applies).
    pub body_rate_grace: Duration,
    /// How often running PATCHes and GETs re-check their token (revocation, expiry).
    pub auth_recheck: Duration,
}

impl Default for HandlerLimits {
    fn default() -> Self {
        HandlerLimits {
            chunk_bytes: 256 * 1024,
            body_timeout: Duration::from_secs(30),
            budget_patience: streams::DEFAULT_BUDGET_PATIENCE,
            flush_interval: Duration::from_millis(100),
            min_body_rate: 32,
            body_rate_grace: Duration::from_secs(10),
            auth_recheck: Duration::from_secs(1),
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
    /// Turns true at the drain deadline: requests still running end now, a PATCH with 503
    /// and its committed `Stream-Offset` rather than a cut connection.
    pub deadline: watch::Receiver<bool>,
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
        // Stream work is refused over the memory soft limit; ops and debug endpoints keep
        // answering, so an operator can still take a profile.
        .route_layer(ops::soft_limit(&state, |request| {
            !request
                .extensions()
                .get::<MatchedPath>()
                .is_some_and(|m| m.as_str().starts_with("/v1/"))
        }))
        .route_layer(middleware::from_fn(classify))
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
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
        ErrorCode::MethodNotAllowed,
        "method not allowed on this endpoint",
    )
}

/// Inside the router, where the matched route is known: the route's metric label.
async fn classify(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(Route::Other, |m| route_of(request.method(), m.as_str()));
    let route = match route {
        Route::Read if follows(request.uri().query()) => Route::Follow,
        route => route,
    };
    let mut response = next.run(request).await;
    response.extensions_mut().insert(route);
    response
}

/// Around everything: counts every answer by route, status and error code, gives every error
/// status the JSON body (also axum's own rejections), and keeps keep-alive honest when the
/// answer comes before the request body was read (`drain`).
async fn observe(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let expect_continue = request.headers().contains_key(header::EXPECT);
    let (parts, body) = request.into_parts();
    let (body, slot) = drain::TrackedBody::wrap(body);
    let mut response = next.run(Request::from_parts(parts, body)).await;
    let status = response.status();
    let code = match response.extensions().get::<ErrorCode>() {
        Some(code) => Some(*code),
        None if status.is_client_error() || status.is_server_error() => {
            let code = ErrorCode::for_status(status);
            response = json_error(code, response);
            Some(code)
        }
        None => None,
    };
    drain::finish(&slot, expect_continue, &mut response).await;
    let route = response
        .extensions()
        .get::<Route>()
        .copied()
        .unwrap_or(Route::Other);
    state
        .metrics
        .request(route, status.as_u16(), started.elapsed());
    // A probe's 503 is its answer ("not ready"), not an error of the gateway's.
    if let Some(code) = code
        && route != Route::Ops
    {
        state.metrics.error(code);
    }
    response
}

/// An error answer that no handler built (an axum rejection): the same answer as JSON,
/// keeping its headers (e.g. `Allow`) and extensions.
fn json_error(code: ErrorCode, original: Response) -> Response {
    let (mut parts, body) = original.into_parts();
    drop(body);
    let reason = parts.status.canonical_reason().unwrap_or("error");
    let message = reason.to_lowercase();
    let built = ApiError::new(code, message).into_response();
    let (built_parts, built_body) = built.into_parts();
    for (name, value) in &built_parts.headers {
        parts.headers.insert(name, value.clone());
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.extensions.extend(built_parts.extensions);
    parts.status = built_parts.status;
    Response::from_parts(parts, built_body)
}

/// Whether a GET's query asks to follow (for the metric label only: the handler parses the
/// query strictly).
fn follows(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&')
            .any(|kv| matches!(kv, "follow=true" | "follow=1"))
    })
}

/// The metric label of a matched route (the route's pattern, not the request's path).
fn route_of(method: &Method, pattern: &str) -> Route {
    match pattern {
        "/v1/streams/{*id}" => match *method {
            Method::HEAD => Route::Head,
            Method::PATCH => Route::Append,
            Method::GET => Route::Read,
            Method::DELETE => Route::Delete,
            _ => Route::Other,
        },
        "/v1/streams" => Route::List,
        "/healthz" | "/readyz" | "/metrics" => Route::Ops,
        "/debug/memory" | "/debug/memory/capture" | "/debug/pprof/heap" => Route::Debug,
        _ => Route::Other,
    }
}

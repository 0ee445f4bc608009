//! memwatch for axum services: the memory endpoints and the soft-limit layer.
//!
//! ```no_run
//! # async fn run(mw: memwatch::Memwatch, app: axum::Router) {
//! let app = app
//!     .merge(memwatch_axum::Routes::new(mw.clone(), memwatch_axum::bearer_token("s3cret")).router())
//!     .layer(memwatch_axum::SoftLimitLayer::new(mw).exempt(|r| r.uri().path() == "/healthz"));
//! # }
//! ```
//!
//! Routes (all behind the service's authorization except `/metrics`, which Prometheus scrapes):
//!
//! - `GET /debug/pprof/heap`: the live heap as gzip pprof (`go tool pprof`), or
//!   `?format=svg` as a flame graph; one at a time (a second gets 429 + `Retry-After`).
//! - `GET /debug/memory`: every figure, the recorder's status and the post-mortem as JSON.
//! - `POST /debug/memory/capture`: asks the flight recorder for a capture now (202).
//! - `GET /metrics`: every `memwatch_*` metric in Prometheus text (leave it out with
//!   [`Routes::metrics_route`] when the service serves its own `/metrics` and appends
//!   [`Memwatch::write_metrics`](memwatch::Memwatch::write_metrics)).
//!
//! Errors are `{"error": code, "message": text}` JSON unless the service renders them itself
//! ([`Routes::errors`]). memwatch itself knows nothing of HTTP: this crate depends on it, never
//! the reverse.

mod auth;
mod error;
mod routes;
mod soft_limit;

pub use auth::{Authorize, NoAuthorization, bearer_token};
pub use error::HttpError;
pub use routes::Routes;
pub use soft_limit::{SoftLimitLayer, SoftLimitService};

/// A multi-threaded tokio runtime (all drivers) whose threads fold their allocation counts
/// into memwatch's when they stop (`on_thread_stop(memwatch::flush_thread)`: without it,
/// thread churn makes the counter drift by up to 128 KiB per exited thread). Build it in a
/// plain `fn main` after [`memwatch::apply_backtrace_policy`], instead of `#[tokio::main]`.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_stop(memwatch::flush_thread)
        .build()
}

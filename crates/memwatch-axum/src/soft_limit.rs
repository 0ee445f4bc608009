//! A tower layer that answers new work with 503 + `Retry-After` while memwatch is over its
//! soft limit, so memory pressure sheds load instead of ending in an OOM kill. Requests the
//! exempt predicate picks (health checks, the memory endpoints: an operator still needs a
//! profile) always pass.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{Request, StatusCode};
use memwatch::Memwatch;

use crate::HttpError;

type Exempt = Arc<dyn Fn(&Request<Body>) -> bool + Send + Sync>;
type Refusal = Arc<dyn Fn() -> Response + Send + Sync>;

/// See the module docs. Cheap to clone; one relaxed atomic load per request.
#[derive(Clone)]
pub struct SoftLimitLayer {
    mw: Memwatch,
    exempt: Exempt,
    refusal: Refusal,
}

impl std::fmt::Debug for SoftLimitLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftLimitLayer").finish_non_exhaustive()
    }
}

impl SoftLimitLayer {
    /// Refuses every request while over the soft limit except memwatch's own routes (an
    /// operator needs a profile then) and those [`SoftLimitLayer::exempt`] adds.
    pub fn new(mw: Memwatch) -> Self {
        Self {
            mw,
            exempt: Arc::new(|_| false),
            refusal: Arc::new(|| {
                HttpError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "over the memory soft limit; retry later",
                )
                .retry_after(1)
                .into_response()
            }),
        }
    }

    /// Requests for which this returns `true` also pass (e.g. `/healthz`), besides memwatch's
    /// own routes.
    #[must_use]
    pub fn exempt(
        mut self,
        exempt: impl Fn(&Request<Body>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.exempt = Arc::new(exempt);
        self
    }

    /// The answer to a refused request (default 503, `overloaded`, `Retry-After: 1`).
    #[must_use]
    pub fn refusal(mut self, refusal: impl Fn() -> Response + Send + Sync + 'static) -> Self {
        self.refusal = Arc::new(refusal);
        self
    }
}

impl<S> tower_layer::Layer<S> for SoftLimitLayer {
    type Service = SoftLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SoftLimitService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`SoftLimitLayer`] wraps around the inner one.
#[derive(Clone, Debug)]
pub struct SoftLimitService<S> {
    inner: S,
    layer: SoftLimitLayer,
}

impl<S> tower_service::Service<Request<Body>> for SoftLimitService<S>
where
    S: tower_service::Service<Request<Body>, Response = Response> + Send,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response, S::Error>> + Send + 'static>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if self.layer.mw.over_soft_limit()
            && !crate::routes::is_memwatch_path(request.uri().path())
            && !(self.layer.exempt)(&request)
        {
            let response = (self.layer.refusal)();
            return Box::pin(async move { Ok(response) });
        }
        Box::pin(self.inner.call(request))
    }
}

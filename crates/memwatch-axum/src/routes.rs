//! The memory endpoints as an axum `Router`, mergeable into any service's router.

use std::sync::Arc;

use axum::Router;
use axum::extract::RawQuery;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use memwatch::Memwatch;
use memwatch::profile::{Profile, ProfileError, flamegraph_svg};
use tokio::sync::Semaphore;

use crate::{Authorize, HttpError};

/// `GET`: the live heap profile.
pub const HEAP_PATH: &str = "/debug/pprof/heap";
/// `GET`: the memory JSON.
pub const MEMORY_PATH: &str = "/debug/memory";
/// `POST`: a capture now.
pub const CAPTURE_PATH: &str = "/debug/memory/capture";
/// `GET`: Prometheus text.
pub const METRICS_PATH: &str = "/metrics";

/// Whether `path` is one of the routes above (the soft limit lets them through).
pub(crate) fn is_memwatch_path(path: &str) -> bool {
    matches!(path, HEAP_PATH | MEMORY_PATH | CAPTURE_PATH | METRICS_PATH)
}

/// One profile at a time, process-wide, like the jemalloc profile it reads. The permit moves
/// into the blocking task, so a client that hangs up does not free the slot early.
static PROFILE_SLOT: Semaphore = Semaphore::const_new(1);

type Render = Arc<dyn Fn(HttpError) -> Response + Send + Sync>;

/// The memory endpoints, configured; [`Routes::router`] builds them.
#[must_use]
pub struct Routes<A> {
    mw: Memwatch,
    authorize: A,
    render: Render,
    metrics: bool,
    title: String,
}

struct Shared<A> {
    mw: Memwatch,
    authorize: A,
    render: Render,
    title: String,
}

/// What `GET /debug/pprof/heap` was asked for.
#[derive(Clone, Copy)]
enum Format {
    Pprof,
    Svg,
}

impl<A: Authorize> Routes<A> {
    /// The endpoints of `mw`, each (except `/metrics`) behind `authorize`.
    pub fn new(mw: Memwatch, authorize: A) -> Self {
        Self {
            mw,
            authorize,
            render: Arc::new(IntoResponse::into_response),
            metrics: true,
            title: "live heap".to_string(),
        }
    }

    /// Renders error answers the service's way (its JSON, its error metrics).
    pub fn errors(
        mut self,
        render: impl Fn(HttpError) -> Response + Send + Sync + 'static,
    ) -> Self {
        self.render = Arc::new(render);
        self
    }

    /// Whether to serve `GET /metrics` (default yes). A service with metrics of its own turns
    /// it off and appends [`Memwatch::write_metrics`] to its own.
    pub fn metrics_route(mut self, serve: bool) -> Self {
        self.metrics = serve;
        self
    }

    /// The flame graph's title (default "live heap"), e.g. the service's name.
    pub fn flamegraph_title(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    /// The routes, for `Router::merge` into the service's router (any state type).
    pub fn router<S: Clone + Send + Sync + 'static>(self) -> Router<S> {
        let metrics = self.metrics;
        let shared = Arc::new(Shared {
            mw: self.mw,
            authorize: self.authorize,
            render: self.render,
            title: self.title,
        });
        let (heap, memory, capture, scrape) = (
            Arc::clone(&shared),
            Arc::clone(&shared),
            Arc::clone(&shared),
            shared,
        );
        let router = Router::new()
            .route(
                HEAP_PATH,
                get(
                    move |headers: HeaderMap, RawQuery(query): RawQuery| async move {
                        heap.answer(heap.heap(headers, query).await)
                    },
                ),
            )
            .route(
                MEMORY_PATH,
                get(move |headers: HeaderMap| async move {
                    memory.answer(memory.memory(headers).await)
                }),
            )
            .route(
                CAPTURE_PATH,
                post(move |headers: HeaderMap| async move {
                    capture.answer(capture.capture(headers).await)
                }),
            );
        if metrics {
            router.route(
                METRICS_PATH,
                get(move || async move { scrape.answer(scrape.metrics().await) }),
            )
        } else {
            router
        }
    }
}

impl<A: Authorize> Shared<A> {
    fn answer(&self, result: Result<Response, Failure>) -> Response {
        match result {
            Ok(response) => response,
            Err(Failure::Denied(response)) => response,
            Err(Failure::Error(err)) => (self.render)(err),
        }
    }

    async fn heap(&self, headers: HeaderMap, query: Option<String>) -> Result<Response, Failure> {
        self.authorize
            .authorize(headers)
            .await
            .map_err(Failure::Denied)?;
        let format = match query_value(query.as_deref(), "format") {
            None | Some("pprof") => Format::Pprof,
            Some("svg") => Format::Svg,
            Some(_) => {
                return Err(HttpError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    "format is pprof or svg",
                )
                .into());
            }
        };
        let permit = PROFILE_SLOT.try_acquire().map_err(|_| {
            HttpError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "busy",
                "a heap profile is already being taken",
            )
            .retry_after(1)
        })?;
        let title = self.title.clone();
        let body = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let profile = Profile::capture(&std::env::temp_dir())?;
            Ok::<_, ProfileError>(match format {
                Format::Pprof => profile.to_pprof_gzip(),
                Format::Svg => flamegraph_svg(&profile, &title).into_bytes(),
            })
        })
        .await
        .map_err(internal)?
        .map_err(profile_error)?;
        let (content_type, disposition) = match format {
            Format::Pprof => (
                "application/octet-stream",
                "attachment; filename=\"heap.pb.gz\"",
            ),
            Format::Svg => ("image/svg+xml", "inline; filename=\"heap.svg\""),
        };
        let mut response = body.into_response();
        let h = response.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        h.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static(disposition),
        );
        Ok(response)
    }

    async fn memory(&self, headers: HeaderMap) -> Result<Response, Failure> {
        self.authorize
            .authorize(headers)
            .await
            .map_err(Failure::Denied)?;
        let mw = self.mw.clone();
        // /proc and cgroup files: tiny reads, but file I/O all the same, so off the workers.
        let body = tokio::task::spawn_blocking(move || serde_json::to_vec(&mw.report()))
            .await
            .map_err(internal)?
            .map_err(internal)?;
        Ok(with_type(body.into_response(), "application/json"))
    }

    async fn capture(&self, headers: HeaderMap) -> Result<Response, Failure> {
        self.authorize
            .authorize(headers)
            .await
            .map_err(Failure::Denied)?;
        if !self.mw.request_capture() {
            let reason = match self.mw.recorder_state() {
                memwatch::RecorderState::Off(reason) => reason,
                memwatch::RecorderState::Running(_) => String::new(),
            };
            return Err(HttpError::new(
                StatusCode::CONFLICT,
                "recorder_off",
                format!("the flight recorder is off: {reason}"),
            )
            .into());
        }
        let body = r#"{"requested":true}"#;
        Ok(with_type(
            (StatusCode::ACCEPTED, body).into_response(),
            "application/json",
        ))
    }

    async fn metrics(&self) -> Result<Response, Failure> {
        let mw = self.mw.clone();
        let text = tokio::task::spawn_blocking(move || mw.metrics_text())
            .await
            .map_err(internal)?;
        Ok(with_type(
            text.into_response(),
            "text/plain; version=0.0.4; charset=utf-8",
        ))
    }
}

/// Why a request was not answered with its result.
enum Failure {
    /// The service's authorization said no: its answer as is.
    Denied(Response),
    Error(HttpError),
}

impl From<HttpError> for Failure {
    fn from(err: HttpError) -> Self {
        Self::Error(err)
    }
}

fn internal(err: impl std::fmt::Display) -> Failure {
    HttpError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        err.to_string(),
    )
    .into()
}

fn profile_error(err: ProfileError) -> Failure {
    if let ProfileError::Dump(memwatch::Error::ProfilingDisabled) = err {
        return HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "profiling_disabled",
            err.to_string(),
        )
        .into();
    }
    internal(err)
}

fn with_type(mut response: Response, content_type: &'static str) -> Response {
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The value of `key` in a query string (no percent-decoding: the values here are words).
fn query_value<'q>(query: Option<&'q str>, key: &str) -> Option<&'q str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

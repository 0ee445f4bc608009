//! `GET /debug/pprof/heap` (admin): the live heap as gzip pprof, or `?format=svg` as a flame
//! graph, from jemalloc's sampled heap profile (see memwatch's `profile` module).
//!
//! The dump, parse, symbol-table symbolization and encoding run on a blocking thread, one
//! request at a time: a profile is process-wide, a second one at the same moment would only
//! double the cost, so it gets 429 with Retry-After.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, header};
use memwatch::profile::{Profile, ProfileError, flamegraph_svg};
use tokio::sync::Semaphore;

use super::AppState;
use super::error::{ApiError, ErrorCode};
use super::query::Query;

/// One profile at a time, process-wide, like the jemalloc profile it reads. The permit moves
/// into the blocking task, so a client that hangs up does not free the slot early.
static PROFILE_SLOT: Semaphore = Semaphore::const_new(1);

/// What the caller asked for.
#[derive(Clone, Copy)]
enum Format {
    Pprof,
    Svg,
}

/// `GET /debug/pprof/heap[?format=pprof|svg]` (admin).
pub async fn heap(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    state.require_admin(&headers).await?;
    let format = match Query::parse(query.as_deref())?.get("format") {
        None | Some("pprof") => Format::Pprof,
        Some("svg") => Format::Svg,
        Some(_) => {
            return Err(ApiError::new(
                ErrorCode::InvalidQuery,
                "format is pprof or svg",
            ));
        }
    };
    let permit = PROFILE_SLOT
        .try_acquire()
        .map_err(|_| ApiError::new(ErrorCode::Busy, "a heap profile is already being taken"))?;
    let body = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        render(format)
    })
    .await?
    .map_err(profile_error)?;

    let (content_type, disposition) = match format {
        Format::Pprof => (
            "application/octet-stream",
            "attachment; filename=\"heap.pb.gz\"",
        ),
        Format::Svg => ("image/svg+xml", "inline; filename=\"heap.svg\""),
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static(disposition),
    );
    Ok(response)
}

/// Dumps, symbolizes (symbol tables only) and encodes; blocking.
fn render(format: Format) -> Result<Vec<u8>, ProfileError> {
    let profile = Profile::capture(&std::env::temp_dir())?;
    Ok(match format {
        Format::Pprof => profile.to_pprof_gzip(),
        Format::Svg => flamegraph_svg(&profile, "engine-gateway live heap").into_bytes(),
    })
}

fn profile_error(err: ProfileError) -> ApiError {
    if let ProfileError::Dump(memwatch::Error::ProfilingDisabled) = err {
        return ApiError::new(ErrorCode::ProfilingDisabled, err.to_string());
    }
    tracing::error!(error = %err, "heap profile failed");
    ApiError::internal(err.to_string())
}

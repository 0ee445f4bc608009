//! Admin-only memory endpoints: `/debug/memory` now and its JSON shape.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;

/// `GET /debug/memory` (admin): every memory figure now, with the limit in force.
pub async fn memory(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.require_admin(&headers).await?;
    // /proc and cgroup files: tiny reads, but file I/O all the same, so off the workers.
    let snapshot = tokio::task::spawn_blocking(memwatch::peek_snapshot).await?;
    let mut body = snapshot_json(&snapshot);
    if let (Value::Object(map), Value::Object(more)) = (&mut body, state.memory.json()) {
        map.extend(more);
    }
    Ok(axum::Json(body).into_response())
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

/// The snapshot as JSON, figures that could not be read as `null`.
pub fn snapshot_json(s: &memwatch::MemorySnapshot) -> Value {
    json!({
        "jemalloc": s.jemalloc.map(|j| json!({
            "allocated_bytes": j.allocated,
            "active_bytes": j.active,
            "resident_bytes": j.resident,
            "retained_bytes": j.retained,
            "mapped_bytes": j.mapped,
            "metadata_bytes": j.metadata,
        })),
        "allocator": s.counter.map(|c| json!({
            "allocated_bytes": c.allocated_bytes,
            "peak_bytes": c.peak_bytes,
        })),
        "process": s.process.map(|p| json!({
            "resident_bytes": p.resident_bytes,
            "peak_resident_bytes": p.peak_resident_bytes,
            "threads": p.threads,
        })),
        "cgroup": s.cgroup.as_ref().map(|c| json!({
            "version": match c.version { memwatch::CgroupVersion::V1 => 1, memwatch::CgroupVersion::V2 => 2 },
            "path": c.path.display().to_string(),
            "usage_bytes": c.usage_bytes,
            "working_set_bytes": c.working_set_bytes(),
            "limit_bytes": c.limit_bytes,
            "peak_bytes": c.peak_bytes,
            "oom_kills": c.oom_kills,
        })),
    })
}

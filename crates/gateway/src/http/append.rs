//! The `Appender`: commits one PATCH body as it arrives, a chunk at a time or at least every
//! flush interval, and ends it when the client stops sending or loses its right to send.
//!
//! - **Group commit and liveness.** Received bytes are handed to the store when a chunk is full
//!   *or* `flush_interval` after the oldest of them arrived, whichever comes first: at high
//!   rates chunks are full and many streams share one fsync; a line a second is committed (and
//!   visible to followers) within the interval.
//! - **Budget for what is held.** The chunk buffer grows with what arrived (exact for a small
//!   body of known length, doubling otherwise) and the byte budget is charged for its capacity,
//!   not for a whole chunk up front; a trickling writer holds a few bytes.
//! - **Ending.** No byte for `body_timeout`, or fewer than `min_body_rate` bytes per second over
//!   a `body_rate_grace` window: 408. The token revoked or expired (re-checked every
//!   `auth_recheck`): 401. Either way what arrived is committed first and the answer carries
//!   the committed `Stream-Offset`, so the client resumes exactly there.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use axum::body::Body;
use bytes::Bytes;
use http::HeaderMap;
use http_body_util::BodyExt;
use tokio::time::sleep_until;

use super::AppState;
use super::chunk_buf::ChunkBuf;
use super::error::{ApiError, ErrorCode};
use super::server::stopping;
use crate::budget::Reservation;
use crate::store::Appended;
use crate::stream_id::StreamId;

/// Bodies of a known length up to this size get their buffer at once, at its exact size.
const EXACT_ALLOC_MAX: usize = 64 * 1024;
/// The first allocation of a buffer that grows.
const FIRST_ALLOC: usize = 16 * 1024;

/// One PATCH body being appended.
pub(super) struct Appender<'a> {
    state: &'a AppState,
    id: StreamId,
    /// The request's headers, to re-check its token while the body runs.
    headers: &'a HeaderMap,
    /// Where the next chunk goes: the offset the client asked for, then each commit's result.
    offset: u64,
    /// Bytes received and not yet handed to the store (at most one chunk), in a buffer the
    /// store's direct writes can take as it is.
    chunk: ChunkBuf,
    /// Budget held for `chunk`'s capacity, or for a frame handed over without a copy.
    held: Reservation,
    /// When the oldest byte in `chunk` arrived.
    pending_since: Option<Instant>,
    /// Body bytes still to come when the client sent a Content-Length: sizes the buffer.
    remaining: Option<u64>,
    /// Result of the last append, if any happened.
    last: Option<Appended>,
}

impl<'a> Appender<'a> {
    pub(super) fn new(
        state: &'a AppState,
        id: StreamId,
        headers: &'a HeaderMap,
        offset: u64,
    ) -> Self {
        Appender {
            state,
            id,
            headers,
            offset,
            chunk: ChunkBuf::default(),
            held: Reservation::default(),
            pending_since: None,
            remaining: None,
            last: None,
        }
    }

    pub(super) async fn run(mut self, mut body: Body, seal: bool) -> Result<Appended, ApiError> {
        let limits = self.state.limits.clone();
        self.remaining = http_body::Body::size_hint(&body).exact();
        let mut last_byte = Instant::now();
        let mut window_start = last_byte;
        let mut window_bytes = 0u64;
        let mut deadline = self.state.deadline.clone();
        // Timers made once and moved when due, not one set per frame: a 64 KiB body comes in
        // several frames, and every new timer is a registration in the runtime's wheel.
        let mut next_check = last_byte + limits.auth_recheck;
        let check = sleep_until(next_check.into());
        let idle = sleep_until((last_byte + limits.body_timeout).into());
        let flush_timer = sleep_until(last_byte.into());
        let mut flush_armed: Option<Instant> = None;
        let stop = stopping(&mut deadline);
        tokio::pin!(check, idle, flush_timer, stop);
        loop {
            let flush_at = self.pending_since.map(|t| t + limits.flush_interval);
            if flush_at != flush_armed
                && let Some(at) = flush_at
            {
                flush_timer.as_mut().reset(at.into());
            }
            flush_armed = flush_at;
            let frame = tokio::select! {
                frame = body.frame() => frame,
                () = &mut flush_timer, if flush_at.is_some() => {
                    let ours = Instant::now();
                    self.flush().await?;
                    // Time the gateway itself took does not count against the client's rate.
                    window_start += ours.elapsed();
                    continue;
                }
                () = &mut idle => {
                    // Set when the last frame but one arrived; a later byte moves it.
                    let due = last_byte + limits.body_timeout;
                    if due > Instant::now() {
                        idle.as_mut().reset(due.into());
                        continue;
                    }
                    self.flush().await?;
                    let secs = limits.body_timeout.as_secs();
                    return Err(self.cut(
                        ErrorCode::BodyTimeout,
                        format!("no body bytes for {secs} s; what arrived is committed"),
                    ));
                }
                () = &mut stop => {
                    // The gateway's drain deadline: keep what arrived, tell the client where.
                    self.flush().await?;
                    return Err(self.cut(
                        ErrorCode::Unavailable,
                        "the gateway is stopping; what arrived is committed, resume from \
                         Stream-Offset"
                            .to_owned(),
                    ));
                }
                () = &mut check => {
                    let now = Instant::now();
                    next_check = now + limits.auth_recheck;
                    check.as_mut().reset(next_check.into());
                    if let Err(err) = self.state.authenticate(self.headers).await {
                        self.flush().await?;
                        return Err(err.with_offset(self.offset));
                    }
                    let window = now - window_start;
                    if window >= limits.body_rate_grace {
                        let rate = window_bytes as f64 / window.as_secs_f64();
                        if rate < limits.min_body_rate as f64 {
                            self.flush().await?;
                            return Err(self.cut(
                                ErrorCode::BodyTimeout,
                                format!(
                                    "body slower than {} bytes/s for {} s; what arrived is committed",
                                    limits.min_body_rate,
                                    window.as_secs()
                                ),
                            ));
                        }
                        (window_start, window_bytes) = (now, 0);
                    }
                    continue;
                }
            };
            let frame = match frame {
                Some(Ok(frame)) => frame,
                None => break,
                Some(Err(err)) => {
                    // The client broke off: keep what arrived, then tell it (if it still listens).
                    self.flush().await?;
                    return Err(self.cut(
                        ErrorCode::BodyError,
                        format!("reading the body failed: {err}"),
                    ));
                }
            };
            // Trailers are ignored.
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            window_bytes += data.len() as u64;
            if let Some(remaining) = &mut self.remaining {
                *remaining = remaining.saturating_sub(data.len() as u64);
            }
            let ours = Instant::now();
            self.add(data).await?;
            window_start += ours.elapsed();
            // Nor against its idle time: a slow commit did not read the socket.
            last_byte = Instant::now();
        }
        if !self.chunk.is_empty() || seal || self.last.is_none() {
            self.commit(seal).await?;
        }
        self.last
            .ok_or_else(|| ApiError::internal("no append happened"))
    }

    /// An error answer carrying the committed offset.
    fn cut(&self, code: ErrorCode, message: String) -> ApiError {
        ApiError::new(code, message).with_offset(self.offset)
    }

    /// Adds received bytes, committing every full chunk. Budget is taken before a buffer grows;
    /// while it is not available the body is not read (backpressure).
    async fn add(&mut self, mut data: Bytes) -> Result<(), ApiError> {
        let chunk_bytes = self.state.limits.chunk_bytes;
        while !data.is_empty() {
            if self.chunk.is_empty() && data.len() >= chunk_bytes {
                // A whole chunk in one frame: hand it over without copying.
                self.hold(chunk_bytes).await?;
                let whole = data.split_to(chunk_bytes);
                self.commit_bytes(whole, false).await?;
                continue;
            }
            let take = data.len().min(chunk_bytes - self.chunk.len());
            self.grow(self.chunk.len() + take, &data).await?;
            if self.chunk.is_empty() {
                self.pending_since = Some(Instant::now());
            }
            self.chunk.extend_from_slice(&data.split_to(take));
            if self.chunk.len() == chunk_bytes {
                self.commit(false).await?;
            }
        }
        Ok(())
    }

    /// Makes room for `needed` bytes in the buffer, charging the budget for the new capacity.
    async fn grow(&mut self, needed: usize, pending: &Bytes) -> Result<(), ApiError> {
        let capacity = self.chunk.capacity();
        if needed <= capacity {
            return Ok(());
        }
        let chunk_bytes = self.state.limits.chunk_bytes;
        // The rest of the body: what is buffered, the frame being added, what is still to come.
        let rest = self.remaining.map_or(u64::MAX, |r| {
            r.saturating_add((self.chunk.len() + pending.len()) as u64)
        });
        let exact = rest.min(chunk_bytes as u64) as usize;
        let target = if exact <= EXACT_ALLOC_MAX {
            exact
        } else {
            needed.max(capacity * 2).max(FIRST_ALLOC).min(chunk_bytes)
        };
        self.hold(target - capacity).await?;
        let mut grown = ChunkBuf::with_capacity(target);
        grown.extend_from_slice(self.chunk.as_ref());
        self.chunk = grown;
        Ok(())
    }

    /// Takes `bytes` of budget. When none comes in time, commits what is buffered and answers
    /// 503 with the committed offset (the client resends the rest from there).
    async fn hold(&mut self, bytes: usize) -> Result<(), ApiError> {
        let patience = self.state.limits.budget_patience;
        let budget = &self.state.budget;
        if let Some(reservation) = budget.reserve(self.id.org(), bytes, patience).await {
            self.held.merge(reservation);
            return Ok(());
        }
        self.flush().await?;
        Err(
            ApiError::overloaded("the gateway is at its memory budget; retry from Stream-Offset")
                .with_offset(self.offset),
        )
    }

    /// Commits what was received so far, if anything, keeping the error for the caller.
    async fn flush(&mut self) -> Result<(), ApiError> {
        if self.chunk.is_empty() {
            Ok(())
        } else {
            self.commit(false).await
        }
    }

    async fn commit(&mut self, seal: bool) -> Result<(), ApiError> {
        let data = std::mem::take(&mut self.chunk).freeze();
        self.commit_bytes(data, seal).await
    }

    async fn commit_bytes(&mut self, data: Bytes, seal: bool) -> Result<(), ApiError> {
        self.pending_since = None;
        let len = data.len() as u64;
        if self.offset.checked_add(len).is_none() {
            return Err(ApiError::new(
                ErrorCode::InvalidOffset,
                "offset plus body length overflows 2^64",
            ));
        }
        let started = Instant::now();
        let result = self
            .state
            .store
            .append(&self.id, self.offset, data, seal)
            .await;
        self.state
            .metrics
            .append_latency
            .observe_duration(started.elapsed());
        // Committed or refused: either way the bytes are no longer held.
        self.held = Reservation::default();
        let appended = result?;
        self.state.metrics.appended_bytes.fetch_add(len, Relaxed);
        self.offset = appended.offset;
        self.last = Some(appended);
        Ok(())
    }
}

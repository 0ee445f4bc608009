//! The body of a GET: reads committed bytes chunk by chunk and, when following, waits for more.
//!
//! The token is re-checked at least every `auth_recheck` while the body runs: a follower whose
//! token is revoked or expires is cut within about that time.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderValue;
use http_body::Frame;

use super::AppState;
use super::error::ApiError;
use crate::budget::Reservation;
use crate::store::ErrorKind;
use crate::stream_id::StreamId;

/// Longest a follower sleeps before checking again for shutdown, its token and new bytes.
const FOLLOW_WAIT: Duration = Duration::from_secs(1);

/// A response body that reads a stream lazily: one chunk in memory at a time, taken from the
/// byte budget, so slow readers cannot make the gateway hold more than the budget allows.
pub struct ReadBody {
    reader: Option<Reader>,
    pending: Option<NextChunk>,
}

/// The reader's `next` in progress: gives the reader back with the chunk (or the end).
type NextChunk = Pin<Box<dyn Future<Output = (Reader, Option<io::Result<Bytes>>)> + Send>>;

struct Reader {
    state: Arc<AppState>,
    id: StreamId,
    offset: u64,
    follow: bool,
    /// The request's credentials, re-checked while the body runs.
    authorization: Option<HeaderValue>,
    /// When the credentials were last found good.
    checked: Instant,
    /// Budget for the chunk handed out last; released when the next one is asked for, by then
    /// hyper has taken the previous one.
    held: Option<Reservation>,
    /// The first chunk, read before the response started (see [`ReadBody::open`]).
    first: Option<(Bytes, Reservation)>,
}

impl ReadBody {
    pub fn new(
        state: Arc<AppState>,
        id: StreamId,
        offset: u64,
        follow: bool,
        authorization: Option<HeaderValue>,
    ) -> Self {
        ReadBody {
            reader: Some(Reader {
                state,
                id,
                offset,
                follow,
                authorization,
                checked: Instant::now(),
                held: None,
                first: None,
            }),
            pending: None,
        }
    }

    /// A body whose first chunk is read now, so a failure there (a record that fails its
    /// checksum: 500 `data_corrupted`) is an error answer rather than a 200 cut short. Later
    /// failures can only end the body early: its bytes are never served.
    pub async fn open(
        state: Arc<AppState>,
        id: StreamId,
        offset: u64,
        follow: bool,
        authorization: Option<HeaderValue>,
    ) -> Result<Self, ApiError> {
        let chunk_bytes = state.limits.chunk_bytes;
        let Some(mut reservation) = state
            .budget
            .reserve(id.org(), chunk_bytes, state.limits.budget_patience)
            .await
        else {
            return Err(ApiError::overloaded("memory budget exhausted"));
        };
        let chunk = state.store.read(&id, offset, chunk_bytes).await?;
        // Budget for what is held, not for what the read might have returned.
        reservation.shrink_to(chunk.data.len());
        let mut body = ReadBody::new(state, id, offset, follow, authorization);
        if !chunk.data.is_empty()
            && let Some(reader) = body.reader.as_mut()
        {
            reader.first = Some((chunk.data, reservation));
        }
        Ok(body)
    }
}

impl Reader {
    async fn next(mut self) -> (Self, Option<io::Result<Bytes>>) {
        self.held = None;
        let item = self.next_chunk().await;
        (self, item)
    }

    async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        let chunk_bytes = self.state.limits.chunk_bytes;
        let mut shutdown = self.state.shutdown.clone();
        if let Some((data, reservation)) = self.first.take() {
            self.offset += data.len() as u64;
            self.state
                .metrics
                .read_bytes
                .fetch_add(data.len() as u64, Relaxed);
            self.held = Some(reservation);
            return Some(Ok(data));
        }
        loop {
            if self.checked.elapsed() >= self.state.limits.auth_recheck {
                let auth = self.state.auth.authenticate(self.authorization.as_ref());
                if let Err(err) = auth.await {
                    tracing::info!(stream = %self.id, error = %err, "reader's token no longer valid, ending the body");
                    return Some(Err(io::Error::other(err.to_string())));
                }
                self.checked = Instant::now();
            }
            let Some(mut reservation) = self
                .state
                .budget
                .reserve(
                    self.id.org(),
                    chunk_bytes,
                    self.state.limits.budget_patience,
                )
                .await
            else {
                return Some(Err(io::Error::other("memory budget exhausted")));
            };
            let chunk = match self
                .state
                .store
                .read(&self.id, self.offset, chunk_bytes)
                .await
            {
                Ok(chunk) => chunk,
                // Deleted while being read: the body ends.
                Err(err) if err.kind() == ErrorKind::NotFound => return None,
                Err(err) => {
                    tracing::warn!(stream = %self.id, error = %err, "read failed");
                    return Some(Err(io::Error::other(err.to_string())));
                }
            };
            if !chunk.data.is_empty() {
                self.offset += chunk.data.len() as u64;
                self.state
                    .metrics
                    .read_bytes
                    .fetch_add(chunk.data.len() as u64, Relaxed);
                // Budget for what is held, not for what the read might have returned.
                reservation.shrink_to(chunk.data.len());
                self.held = Some(reservation);
                return Some(Ok(chunk.data));
            }
            drop(reservation);
            if !self.follow || chunk.sealed || *shutdown.borrow() {
                return None;
            }
            tokio::select! {
                result = self.state.store.wait(&self.id, self.offset, FOLLOW_WAIT) => {
                    if let Err(err) = result {
                        if err.kind() == ErrorKind::NotFound {
                            return None;
                        }
                        return Some(Err(io::Error::other(err.to_string())));
                    }
                }
                _ = shutdown.changed() => {}
            }
        }
    }
}

impl http_body::Body for ReadBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let this = &mut *self;
        if this.pending.is_none() {
            let Some(reader) = this.reader.take() else {
                return Poll::Ready(None);
            };
            this.pending = Some(Box::pin(reader.next()));
        }
        let Some(pending) = this.pending.as_mut() else {
            return Poll::Ready(None);
        };
        match pending.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready((reader, item)) => {
                this.pending = None;
                if item.is_some() {
                    this.reader = Some(reader);
                }
                Poll::Ready(item.map(|r| r.map(Frame::data)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.reader.is_none() && self.pending.is_none()
    }
}

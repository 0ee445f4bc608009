//! Keep-alive after an early answer: an error sent before the request body was read either
//! drains a bounded rest of the body briefly, so the connection stays usable, or says
//! `Connection: close`, so the client knows it will not be (never a silently dead connection).
//!
//! The request body is wrapped in [`TrackedBody`]: when the handler drops it unread, the inner
//! body goes back to a shared slot where the middleware can finish it.

use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderValue, header};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;

/// Most body bytes read and thrown away to keep a connection after an early answer.
pub const DRAIN_MAX_BYTES: usize = 64 * 1024;
/// Longest time spent doing so.
pub const DRAIN_MAX_TIME: Duration = Duration::from_millis(250);

/// What the handler left of the request body.
#[derive(Default)]
pub struct BodySlot {
    /// The body, put back here when the handler dropped it before its end.
    rest: Mutex<Option<Body>>,
    /// Whether the body was read to its end.
    ended: AtomicBool,
    /// Whether anyone asked for body bytes (with `Expect: 100-continue`, hyper then sent
    /// `100 Continue`).
    polled: AtomicBool,
}

/// A request body that tells its [`BodySlot`] how far it was read.
pub struct TrackedBody {
    inner: Option<Body>,
    slot: Arc<BodySlot>,
}

impl TrackedBody {
    pub fn wrap(body: Body) -> (Body, Arc<BodySlot>) {
        let slot = Arc::new(BodySlot::default());
        if body.is_end_stream() {
            slot.ended.store(true, Relaxed);
        }
        let tracked = TrackedBody {
            inner: Some(body),
            slot: Arc::clone(&slot),
        };
        (Body::new(tracked), slot)
    }
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        this.slot.polled.store(true, Relaxed);
        let polled = Pin::new(inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.slot.ended.store(true, Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(SizeHint::default, Body::size_hint)
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        if !self.slot.ended.load(Relaxed)
            && let Some(inner) = self.inner.take()
        {
            *self
                .slot
                .rest
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(inner);
        }
    }
}

/// Called with an error answer: reads what is left of the request body (at most
/// [`DRAIN_MAX_BYTES`] within [`DRAIN_MAX_TIME`]) or marks the answer `Connection: close`.
/// With `Expect: 100-continue` and the body never asked for, the client has not sent it and
/// reading it would ask for it: the connection is closed instead.
pub async fn finish(slot: &BodySlot, expect_continue: bool, response: &mut Response) {
    if slot.ended.load(Relaxed) {
        return;
    }
    let rest = slot
        .rest
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    let drained = match rest {
        Some(body) if !expect_continue || slot.polled.load(Relaxed) => drain(body).await,
        _ => false,
    };
    if !drained {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

/// Whether the body ended within the bounds.
async fn drain(mut body: Body) -> bool {
    if body.size_hint().lower() > DRAIN_MAX_BYTES as u64 {
        return false;
    }
    let read = async {
        let mut seen = 0usize;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Some(data) = frame.data_ref() {
                seen += data.len();
                if seen > DRAIN_MAX_BYTES {
                    return false;
                }
            }
        }
        true
    };
    tokio::time::timeout(DRAIN_MAX_TIME, read)
        .await
        .unwrap_or(false)
}

//! What the accept loop knows about each connection: whether it is in a request (so the cap can
//! evict idle connections first), and whether its peer still reads what it asked for.
//!
//! - [`Registry`]: every served connection's [`Activity`]. At the cap, a new connection evicts
//!   the connection that is not in a request and has waited longest, preferring one that never
//!   sent a complete request head (an idle or unauthenticated peer) over an idle keep-alive one.
//! - [`StallGuard`]: a socket whose writes make no progress for `write_stall` fails, and hyper
//!   closes the connection: a reader that stops reading gives back its slot and its budget.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Sleep;

use crate::metrics::Metrics;

/// One connection's state, shared by its task, its requests and the registry.
pub struct Activity {
    accepted: Instant,
    /// Request heads received so far.
    requests: AtomicU64,
    /// Requests whose response body has not ended yet.
    active: AtomicUsize,
    /// Milliseconds after `accepted` when the last request ended.
    idle_since_ms: AtomicU64,
    /// Told to close by the registry.
    pub evict: Notify,
    /// Already chosen for eviction (so the next connection at the cap picks another).
    evicted: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Activity {
            accepted: Instant::now(),
            requests: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            evict: Notify::new(),
            evicted: AtomicBool::new(false),
        }
    }

    /// A request head arrived; the guard ends the request when the response body is done.
    pub fn begin(self: &Arc<Self>) -> RequestGuard {
        self.requests.fetch_add(1, Relaxed);
        self.active.fetch_add(1, Relaxed);
        RequestGuard(Arc::clone(self))
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Relaxed)
    }

    pub fn in_request(&self) -> bool {
        self.active.load(Relaxed) > 0
    }

    /// Eviction order: never sent a head first, then longest idle.
    fn eviction_key(&self) -> (bool, Instant) {
        let idle_since = self.accepted + Duration::from_millis(self.idle_since_ms.load(Relaxed));
        (self.requests() > 0, idle_since)
    }
}

/// Marks its request ended when dropped (with the response body).
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let since = self.0.accepted.elapsed().as_millis() as u64;
        self.0.idle_since_ms.store(since, Relaxed);
        self.0.active.fetch_sub(1, Relaxed);
    }
}

/// A response body that holds its request's [`RequestGuard`] until it ends.
pub struct GuardedBody<B> {
    inner: B,
    guard: Option<RequestGuard>,
}

impl<B> GuardedBody<B> {
    pub fn new(inner: B, guard: RequestGuard) -> Self {
        GuardedBody {
            inner,
            guard: Some(guard),
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for GuardedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The served connections, for eviction at the cap.
#[derive(Default)]
pub struct Registry {
    connections: Mutex<HashMap<u64, Arc<Activity>>>,
    next: AtomicU64,
}

/// Removes its connection from the registry when dropped.
pub struct Registered {
    registry: Arc<Registry>,
    id: u64,
    pub activity: Arc<Activity>,
}

impl Registry {
    pub fn register(self: &Arc<Self>) -> Registered {
        let id = self.next.fetch_add(1, Relaxed);
        let activity = Arc::new(Activity::new());
        self.lock().insert(id, Arc::clone(&activity));
        Registered {
            registry: Arc::clone(self),
            id,
            activity,
        }
    }

    /// Tells the best candidate to close; false when every connection is in a request.
    pub fn evict_one(&self) -> bool {
        let connections = self.lock();
        let victim = connections
            .values()
            .filter(|a| !a.in_request() && !a.evicted.load(Relaxed))
            .min_by_key(|a| a.eviction_key());
        match victim {
            Some(activity) => {
                activity.evicted.store(true, Relaxed);
                activity.evict.notify_one();
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Activity>>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

/// A socket whose writes fail after `stall` without progress.
pub struct StallGuard<T> {
    inner: T,
    stall: Duration,
    /// Started when a write found the socket full; cleared by any progress.
    timer: Option<Pin<Box<Sleep>>>,
    metrics: Arc<Metrics>,
}

impl<T> StallGuard<T> {
    pub fn new(inner: T, stall: Duration, metrics: Arc<Metrics>) -> Self {
        StallGuard {
            inner,
            stall,
            timer: None,
            metrics,
        }
    }

    /// After a write returned `Pending`: an error once the stall lasted too long.
    fn pending<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let stall = self.stall;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        if timer.as_mut().poll(cx).is_ready() {
            self.metrics.stalled_readers_cut.fetch_add(1, Relaxed);
            tracing::debug!(
                stall_secs = stall.as_secs(),
                "peer stopped reading, closing"
            );
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "peer stopped reading",
            )));
        }
        Poll::Pending
    }

    fn progress<R>(&mut self, ready: io::Result<R>) -> Poll<io::Result<R>> {
        self.timer = None;
        Poll::Ready(ready)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.pending(cx),
            Poll::Ready(r) => self.progress(r),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.pending(cx),
            Poll::Ready(r) => self.progress(r),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.pending(cx),
            Poll::Ready(r) => self.progress(r),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

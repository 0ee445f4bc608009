//! The accept loop: a connection cap, header limits and timeouts, graceful drain on shutdown.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tower_service::Service;

use super::conn::{GuardedBody, Registered, Registry, StallGuard};
use super::error::{ErrorCode, canned_answer};
use super::threads::ConnectionThreads;
use crate::metrics::Metrics;

/// Limits enforced per connection, before any handler runs.
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// Connections served at once. A new one beyond evicts an idle connection, else it is
    /// answered 503 and closed.
    pub max_connections: usize,
    /// Longest time to receive a request's headers, idle keep-alive time included (slowloris).
    pub header_timeout: Duration,
    /// Longest time from accept to the first complete request head.
    pub first_request_timeout: Duration,
    /// A connection whose peer reads nothing of the answer for this long is closed.
    pub write_stall: Duration,
    /// hyper's read buffer per connection; also the largest request head (else 431).
    pub max_header_bytes: usize,
    /// How long in-flight requests may run on after shutdown begins.
    pub drain_timeout: Duration,
    /// Threads serving connections, each with its own event loop (`http::threads`); by default
    /// one per core the process may use.
    pub threads: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(30),
            first_request_timeout: Duration::from_secs(10),
            write_stall: Duration::from_secs(30),
            max_header_bytes: 16 * 1024,
            drain_timeout: Duration::from_secs(10),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// How long a connection that evicted another waits for the freed slot.
const EVICTION_WAIT: Duration = Duration::from_secs(2);

fn too_many_connections() -> String {
    canned_answer(
        ErrorCode::TooManyConnections,
        "the gateway serves as many connections as it may; retry later",
    )
}

/// After the drain deadline, how long requests have to answer (a PATCH commits what it holds)
/// before their connections are closed.
const DEADLINE_GRACE: Duration = Duration::from_secs(2);

/// How the connections ended once shutdown began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drain {
    /// Every request in flight finished within the drain deadline.
    Clean,
    /// The deadline passed: this many connections were cut with requests still running.
    Cut(usize),
}

/// Serves `router` on `listener` until `shutdown` turns true, then stops accepting, lets
/// in-flight requests finish (at most `drain_timeout`), and returns how that went.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
    deadline: watch::Sender<bool>,
) -> io::Result<Drain> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let registry = Arc::new(Registry::default());
    let threads = ConnectionThreads::start(limits.threads)?;
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = stopping(&mut shutdown) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(err) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let conn = Connection {
                    router: router.clone(),
                    limits: limits.clone(),
                    metrics: Arc::clone(&metrics),
                    shutdown: shutdown.clone(),
                    registry: Arc::clone(&registry),
                };
                match Arc::clone(&slots).try_acquire_owned() {
                    Ok(slot) => {
                        spawn_on_thread(&mut connections, &threads, stream, |stream| {
                            conn.serve(stream, slot)
                        });
                    }
                    Err(_) if registry.evict_one() => {
                        // An idle connection was told to go: take its slot when it is free.
                        metrics.evicted_connections.fetch_add(1, Relaxed);
                        let slots = Arc::clone(&slots);
                        spawn_on_thread(&mut connections, &threads, stream, |stream| async move {
                            let slot = tokio::time::timeout(EVICTION_WAIT, slots.acquire_owned());
                            match slot.await {
                                Ok(Ok(slot)) => conn.serve(stream, slot).await,
                                _ => {
                                    conn.metrics.rejected_connections.fetch_add(1, Relaxed);
                                    conn.metrics.error(ErrorCode::TooManyConnections);
                                    reject(stream).await;
                                }
                            }
                        });
                    }
                    Err(_) => {
                        metrics.rejected_connections.fetch_add(1, Relaxed);
                        metrics.error(ErrorCode::TooManyConnections);
                        drop(conn);
                        connections.spawn(reject(stream));
                    }
                }
            }
        }
    }
    drop(listener);
    tracing::info!(connections = connections.len(), "draining connections");
    let drained = tokio::time::timeout(limits.drain_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        let cut = connections.len();
        tracing::warn!(
            connections = cut,
            "drain deadline passed: ending requests still running, with their committed offset"
        );
        // PATCHes commit what arrived and answer 503 with `Stream-Offset`; followers end.
        let _ = deadline.send(true);
        let _ = tokio::time::timeout(DEADLINE_GRACE, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        connections.shutdown().await;
        return Ok(Drain::Cut(cut));
    }
    Ok(Drain::Clean)
}

/// Moves `stream` to the connection thread serving the fewest (`http::threads`) and runs
/// `serve` with it there, in `connections` (which drains and aborts across threads alike).
fn spawn_on_thread<F, Fut>(
    connections: &mut JoinSet<()>,
    threads: &ConnectionThreads,
    stream: TcpStream,
    serve: F,
) where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    // the socket leaves this runtime's event loop and joins the thread's
    let stream = match stream.into_std() {
        Ok(stream) => stream,
        Err(err) => {
            tracing::warn!(error = %err, "cannot hand a connection to its thread; closing it");
            return;
        }
    };
    let (handle, assigned) = threads.assign();
    connections.spawn_on(
        async move {
            let _assigned = assigned;
            match TcpStream::from_std(stream) {
                Ok(stream) => serve(stream).await,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot register a connection on its thread; closing it");
                }
            }
        },
        &handle,
    );
}

/// One accepted connection and what serving it needs.
struct Connection {
    router: Router,
    limits: ServerLimits,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
    /// Where it registers once it holds a slot (only then may it be evicted).
    registry: Arc<Registry>,
}

impl Connection {
    async fn serve(self, stream: TcpStream, slot: OwnedSemaphorePermit) {
        self.metrics.open_connections.fetch_add(1, Relaxed);
        let metrics = Arc::clone(&self.metrics);
        let registered = self.registry.register();
        self.run(stream, &registered).await;
        drop(registered);
        metrics.open_connections.fetch_sub(1, Relaxed);
        drop(slot);
    }

    async fn run(self, stream: TcpStream, registered: &Registered) {
        let Connection {
            router,
            limits,
            metrics,
            mut shutdown,
            registry: _,
        } = self;
        let activity = Arc::clone(&registered.activity);
        let service = service_fn(move |request: hyper::Request<Incoming>| {
            let guard = activity.begin();
            let mut router = router.clone();
            async move {
                let response = match router.call(request.map(Body::new)).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(response.map(|body| GuardedBody::new(body, guard)))
            }
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(limits.max_header_bytes.max(8192))
            .max_header_size(limits.max_header_bytes)
            .keep_alive(true);
        let io = StallGuard::new(stream, limits.write_stall, metrics);
        let connection = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        let activity = &registered.activity;
        let first_request = tokio::time::sleep(limits.first_request_timeout);
        tokio::pin!(first_request);
        let mut first_checked = false;
        let result = loop {
            tokio::select! {
                result = connection.as_mut() => break result,
                () = stopping(&mut shutdown) => {
                    connection.as_mut().graceful_shutdown();
                    break connection.await;
                }
                () = activity.evict.notified() => {
                    tracing::debug!(requests = activity.requests(), "idle connection evicted at the cap");
                    if !activity.in_request() {
                        return;
                    }
                    // A request started since it was chosen: let it finish, then close.
                    connection.as_mut().graceful_shutdown();
                    break connection.await;
                }
                () = &mut first_request, if !first_checked => {
                    first_checked = true;
                    if activity.requests() == 0 {
                        tracing::debug!("no request head in time, closing");
                        return;
                    }
                }
            }
        };
        if let Err(err) = result {
            // Client resets, header timeouts, parse errors: normal on the internet.
            tracing::debug!(error = %err, "connection ended with an error");
        }
    }
}

/// Resolves when shutdown begins (or the sender is gone, which means the same).
pub async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|&stop| stop).await;
}

async fn reject(mut stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(too_many_connections().as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn canned_answer_says_too_many_connections() {
        assert!(super::too_many_connections().contains("too_many_connections"));
    }
}

//! The accept loop: a connection cap, header limits and timeouts, graceful drain on shutdown.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::metrics::Metrics;

/// Limits enforced per connection, before any handler runs.
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Longest time to receive a request's headers, idle keep-alive time included (slowloris).
    pub header_timeout: Duration,
    /// hyper's read buffer per connection; also the largest request head (else 431).
    pub max_header_bytes: usize,
    /// How long in-flight requests may run on after shutdown begins.
    pub drain_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(30),
            max_header_bytes: 16 * 1024,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// What a connection over the cap is told before it is closed.
const TOO_MANY_CONNECTIONS_BODY: &str = r#"{"error":"too_many_connections","message":"the gateway serves as many connections as it may; retry later"}"#;

fn too_many_connections() -> String {
    let body = TOO_MANY_CONNECTIONS_BODY;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

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
) -> io::Result<Drain> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
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
                match Arc::clone(&slots).try_acquire_owned() {
                    Ok(slot) => {
                        let (router, limits, metrics, shutdown) =
                            (router.clone(), limits.clone(), Arc::clone(&metrics), shutdown.clone());
                        connections.spawn(async move {
                            metrics.open_connections.fetch_add(1, Relaxed);
                            serve_connection(stream, router, &limits, shutdown).await;
                            metrics.open_connections.fetch_sub(1, Relaxed);
                            drop(slot);
                        });
                    }
                    Err(_) => {
                        metrics.rejected_connections.fetch_add(1, Relaxed);
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
            "drain deadline passed, closing connections"
        );
        connections.shutdown().await;
        return Ok(Drain::Cut(cut));
    }
    Ok(Drain::Clean)
}

async fn serve_connection(
    stream: TcpStream,
    router: Router,
    limits: &ServerLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let service = TowerToHyperService::new(router);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_header_size(limits.max_header_bytes)
        .keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stopping(&mut shutdown) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = result {
        // Client resets, header timeouts, parse errors: normal on the internet.
        tracing::debug!(error = %err, "connection ended with an error");
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
    fn canned_answer_length_is_right() {
        let text = super::too_many_connections();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }
}

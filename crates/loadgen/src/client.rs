//! HTTP/1.1 load: N streams, each one keep-alive connection sending sequential PATCHes of one chunk.
//!
//! Uses hyper's connection-level client directly (no pool, no redirects, no retries hidden from
//! us), and one shared `Bytes` chunk that every request clones by reference count, so the client
//! costs little CPU next to the gateway it measures.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use tokio::task::{JoinHandle, JoinSet};

use crate::stats::Histogram;

/// Where the gateway listens and how to authenticate to it.
#[derive(Debug, Clone)]
pub struct Target {
    /// Always a loopback address: the benchmark never sends load over a real network.
    addr: SocketAddr,
    /// `Bearer <token>`, built once and shared by every request.
    authorization: HeaderValue,
    /// The `Host` header: HTTP/1.1 requires one and hyper's connection API does not add it.
    host: HeaderValue,
    /// The header carrying the offset in PATCH, HEAD and 204 (`Stream-Offset` or `Upload-Offset`).
    offset: HeaderName,
    /// Sent with every request: `Tus-Resumable: 1.0.0` for a tus server.
    extra: Option<(HeaderName, HeaderValue)>,
}

/// The dialect a server speaks: the same PATCH at an offset, under different header names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// engine-gateway's protocol v1: `Stream-Offset`.
    V1,
    /// tus 1.0 core: `Upload-Offset` and `Tus-Resumable: 1.0.0` (the upload URL must accept a
    /// PATCH at offset 0 without a creation request).
    Tus,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::V1 => "protocol v1",
            Protocol::Tus => "tus",
        })
    }
}

impl Target {
    /// A protocol v1 server (engine-gateway).
    pub fn new(addr: SocketAddr, token: &str) -> anyhow::Result<Self> {
        Self::speaking(addr, token, Protocol::V1)
    }

    /// A server speaking `protocol`.
    pub fn speaking(addr: SocketAddr, token: &str, protocol: Protocol) -> anyhow::Result<Self> {
        if !addr.ip().is_loopback() {
            bail!("refusing to send load to {addr}: only loopback addresses are allowed");
        }
        let authorization = HeaderValue::try_from(format!("Bearer {token}"))
            .context("the token contains characters not allowed in a header")?;
        let host = HeaderValue::try_from(addr.to_string())?;
        let (offset, extra) = match protocol {
            Protocol::V1 => (STREAM_OFFSET, None),
            Protocol::Tus => (
                UPLOAD_OFFSET,
                Some((TUS_RESUMABLE, HeaderValue::from_static("1.0.0"))),
            ),
        };
        Ok(Self {
            addr,
            authorization,
            host,
            offset,
            extra,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// One load scenario.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Concurrent streams, each with its own connection.
    pub streams: usize,
    /// The body of every PATCH.
    pub chunk: Bytes,
    /// How long streams keep starting new requests; the one in flight at the end completes.
    pub duration: Duration,
    /// Upper bound for one request, so a stuck gateway cannot hang the benchmark.
    pub request_timeout: Duration,
    /// `/v1/streams/{org}/{cluster}`; stream `i` is `{prefix}/s{i}`. Unique per scenario so
    /// every stream starts at offset 0.
    pub path_prefix: String,
}

/// What a scenario achieved, summed over its streams.
#[derive(Debug, Clone)]
pub struct LoadOutcome {
    /// From the common start to the end of the last request.
    pub elapsed: Duration,
    /// Bytes the gateway acknowledged as committed (204).
    pub acked_bytes: u64,
    /// Acknowledged requests.
    pub requests: u64,
    /// Send → 204 latency of acknowledged requests.
    pub latency: Histogram,
    pub errors: ErrorCounts,
}

/// Failed requests by kind; none of them counts as acknowledged bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ErrorCounts {
    /// 409: the offset was not the committed one (the stream resumes at the server's offset).
    pub conflict: u64,
    /// 429 or 503: load shedding; the stream waits for `Retry-After`.
    pub overloaded: u64,
    /// Other 4xx: the stream stops, retrying would not help (bad token, bad path).
    pub rejected: u64,
    /// Other 5xx: the stream backs off and retries.
    pub server: u64,
    /// Connect, I/O or timeout: the stream reconnects and asks HEAD where to resume.
    pub transport: u64,
    /// A 204 without a valid `Stream-Offset`, or with an unexpected one.
    pub protocol: u64,
}

impl std::fmt::Display for ErrorCounts {
    /// The non-zero kinds, e.g. `conflict 2, transport 1`, or `none`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds = [
            ("conflict", self.conflict),
            ("overloaded", self.overloaded),
            ("rejected", self.rejected),
            ("server", self.server),
            ("transport", self.transport),
            ("protocol", self.protocol),
        ];
        let mut first = true;
        for (name, n) in kinds.into_iter().filter(|(_, n)| *n > 0) {
            write!(f, "{}{name} {n}", if first { "" } else { ", " })?;
            first = false;
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

impl ErrorCounts {
    pub fn total(&self) -> u64 {
        self.conflict
            + self.overloaded
            + self.rejected
            + self.server
            + self.transport
            + self.protocol
    }

    fn merge(&mut self, other: &ErrorCounts) {
        self.conflict += other.conflict;
        self.overloaded += other.overloaded;
        self.rejected += other.rejected;
        self.server += other.server;
        self.transport += other.transport;
        self.protocol += other.protocol;
    }
}

/// Runs `spec.streams` streams concurrently for `spec.duration` and sums what they achieved.
///
/// Fails only on a bad spec; what goes wrong on the wire is counted in `errors`.
pub async fn run_load(target: &Target, spec: &LoadSpec) -> anyhow::Result<LoadOutcome> {
    if spec.streams == 0 {
        bail!("a scenario needs at least one stream");
    }
    let gate = Arc::new(Barrier::new(spec.streams));
    let start = Arc::new(OnceLock::new());
    let mut tasks = JoinSet::new();
    for i in 0..spec.streams {
        let path = format!("{}/s{i}", spec.path_prefix);
        let stream = StreamTask {
            target: target.clone(),
            uri: path
                .parse()
                .with_context(|| format!("stream path {path:?}"))?,
            chunk: spec.chunk.clone(),
            duration: spec.duration,
            request_timeout: spec.request_timeout,
        };
        let (gate, start) = (gate.clone(), start.clone());
        tasks.spawn(async move { stream.run(&gate, &start).await });
    }
    let mut total = LoadOutcome {
        elapsed: Duration::ZERO,
        acked_bytes: 0,
        requests: 0,
        latency: Histogram::new(),
        errors: ErrorCounts::default(),
    };
    let mut last_end = None::<Instant>;
    while let Some(joined) = tasks.join_next().await {
        let Ok(one) = joined else {
            // A panicking stream task is a bug in this crate; count it rather than hide it.
            total.errors.transport += 1;
            continue;
        };
        total.acked_bytes += one.acked_bytes;
        total.requests += one.requests;
        total.latency.merge(&one.latency);
        total.errors.merge(&one.errors);
        last_end = last_end.max(Some(one.finished));
    }
    if let (Some(start), Some(end)) = (start.get(), last_end) {
        total.elapsed = end.saturating_duration_since(*start);
    }
    Ok(total)
}

/// Sends one request with an empty body on a fresh connection: readiness probes and the like.
pub async fn probe(
    target: &Target,
    method: Method,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<(StatusCode, HeaderMap)> {
    let attempt = async {
        let uri: Uri = path
            .parse()
            .with_context(|| format!("request path {path:?}"))?;
        let mut conn = Conn::connect(target.addr).await?;
        conn.send(target.request(method, &uri, Bytes::new())).await
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .with_context(|| format!("no answer from {} within {timeout:?}", target.addr))?
}

/// The `Stream-Offset` header of the protocol.
pub const STREAM_OFFSET: HeaderName = HeaderName::from_static("stream-offset");
/// The `Stream-Sealed` header of the protocol.
pub const STREAM_SEALED: HeaderName = HeaderName::from_static("stream-sealed");
/// tus's offset header.
pub const UPLOAD_OFFSET: HeaderName = HeaderName::from_static("upload-offset");
/// tus's version header, on every request but OPTIONS.
pub const TUS_RESUMABLE: HeaderName = HeaderName::from_static("tus-resumable");
/// The only content type a PATCH may carry.
pub const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";

/// The largest response body read; protocol answers are small JSON documents or empty.
const MAX_RESPONSE_BODY: usize = 64 * 1024;
/// Pause after a transport or server error before trying again.
const ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// Longest pause honoured for a `Retry-After`.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

impl Target {
    fn request(&self, method: Method, uri: &Uri, body: Bytes) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = uri.clone();
        let headers = request.headers_mut();
        headers.insert(HOST, self.host.clone());
        headers.insert(AUTHORIZATION, self.authorization.clone());
        if let Some((name, value)) = &self.extra {
            headers.insert(name.clone(), value.clone());
        }
        request
    }
}

/// One HTTP/1.1 connection and the task driving it.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    /// Ends when `sender` is dropped or the peer closes; awaited on close.
    driver: JoinHandle<()>,
}

impl Conn {
    async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        tcp.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(tcp)).await?;
        let driver = tokio::spawn(async move {
            // The error surfaces on the sender's next request; nothing to add here.
            let _ = connection.await;
        });
        Ok(Self { sender, driver })
    }

    async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> anyhow::Result<(StatusCode, HeaderMap)> {
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        Limited::new(body, MAX_RESPONSE_BODY)
            .collect()
            .await
            .map_err(|err| anyhow::anyhow!("reading the response body: {err}"))?;
        Ok((parts.status, parts.headers))
    }

    async fn close(self) {
        drop(self.sender);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.driver).await;
    }
}

/// One stream's loop and its settings.
struct StreamTask {
    target: Target,
    /// `/v1/streams/{org}/{cluster}/{name}`, parsed once.
    uri: Uri,
    chunk: Bytes,
    duration: Duration,
    request_timeout: Duration,
}

/// One stream's results.
struct StreamOutcome {
    acked_bytes: u64,
    requests: u64,
    latency: Histogram,
    errors: ErrorCounts,
    /// When its last request ended, for the scenario's elapsed time.
    finished: Instant,
}

impl StreamTask {
    async fn run(self, gate: &Barrier, start: &OnceLock<Instant>) -> StreamOutcome {
        let first = Conn::connect(self.target.addr).await;
        // Every stream connects first, then all start together.
        gate.wait().await;
        let deadline = *start.get_or_init(Instant::now) + self.duration;
        let mut out = StreamOutcome {
            acked_bytes: 0,
            requests: 0,
            latency: Histogram::new(),
            errors: ErrorCounts::default(),
            finished: Instant::now(),
        };
        let mut conn = match first {
            Ok(conn) => Some(conn),
            Err(_) => {
                out.errors.transport += 1;
                None
            }
        };
        let mut offset = 0u64;
        while Instant::now() < deadline {
            let Some(current) = conn.as_mut() else {
                match self.reconnect().await {
                    Ok((fresh, committed)) => (conn, offset) = (Some(fresh), committed),
                    Err(_) => {
                        out.errors.transport += 1;
                        pause(ERROR_BACKOFF, deadline).await;
                    }
                }
                continue;
            };
            let request = self.patch(offset);
            let sent = Instant::now();
            let answer = tokio::time::timeout(self.request_timeout, current.send(request)).await;
            let (status, headers) = match answer {
                Ok(Ok(answer)) => answer,
                Ok(Err(_)) | Err(_) => {
                    out.errors.transport += 1;
                    if let Some(broken) = conn.take() {
                        broken.driver.abort();
                    }
                    pause(ERROR_BACKOFF, deadline).await;
                    continue;
                }
            };
            let committed = header_u64(&headers, &self.target.offset);
            match status {
                StatusCode::NO_CONTENT => {
                    let expected = offset + self.chunk.len() as u64;
                    out.latency.record(sent.elapsed());
                    out.requests += 1;
                    out.acked_bytes += self.chunk.len() as u64;
                    if committed != Some(expected) {
                        out.errors.protocol += 1;
                    }
                    offset = committed.unwrap_or(expected);
                }
                StatusCode::CONFLICT => {
                    out.errors.conflict += 1;
                    let sealed = headers.get(STREAM_SEALED).is_some_and(|v| v == "true");
                    match committed {
                        Some(committed) if !sealed => offset = committed,
                        _ => break,
                    }
                }
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                    out.errors.overloaded += 1;
                    let wait = header_u64(&headers, &hyper::header::RETRY_AFTER)
                        .map_or(ERROR_BACKOFF, Duration::from_secs);
                    pause(wait.min(MAX_RETRY_AFTER), deadline).await;
                }
                s if s.is_client_error() => {
                    out.errors.rejected += 1;
                    break;
                }
                _ => {
                    out.errors.server += 1;
                    pause(ERROR_BACKOFF, deadline).await;
                }
            }
        }
        out.finished = Instant::now();
        if let Some(conn) = conn {
            conn.close().await;
        }
        out
    }

    fn patch(&self, offset: u64) -> Request<Full<Bytes>> {
        let mut request = self
            .target
            .request(Method::PATCH, &self.uri, self.chunk.clone());
        let headers = request.headers_mut();
        headers.insert(self.target.offset.clone(), HeaderValue::from(offset));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(OFFSET_OCTET_STREAM));
        request
    }

    /// A new connection, and the committed offset to resume from (HEAD; 404 means 0).
    async fn reconnect(&self) -> anyhow::Result<(Conn, u64)> {
        let attempt = async {
            let mut conn = Conn::connect(self.target.addr).await?;
            let head = self.target.request(Method::HEAD, &self.uri, Bytes::new());
            let (status, headers) = conn.send(head).await?;
            let offset = match status {
                StatusCode::OK | StatusCode::NO_CONTENT => {
                    header_u64(&headers, &self.target.offset)
                        .with_context(|| format!("HEAD answered without {}", self.target.offset))?
                }
                StatusCode::NOT_FOUND => 0,
                other => bail!("HEAD answered {other}"),
            };
            Ok((conn, offset))
        };
        tokio::time::timeout(self.request_timeout, attempt)
            .await
            .context("reconnect timed out")?
    }
}

fn header_u64(headers: &HeaderMap, name: &HeaderName) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Sleeps for `wait`, but never past `deadline`.
async fn pause(wait: Duration, deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    tokio::time::sleep(wait.min(left)).await;
}

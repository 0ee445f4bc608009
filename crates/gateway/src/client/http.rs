//! Minimal HTTP/1.1 plumbing over hyper: one connection with timeouts, request bodies, the
//! requests of one stream, and turning error answers into [`Failure`]s.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::{HeaderMap, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::Timeouts;
use super::error::{ClientError, Failure, Transient};
use super::tls::{Connector, Stream};
use super::url::BaseUrl;
use crate::stream_id::StreamId;

/// A request body: nothing, or frames handed over through a bounded channel.
pub(crate) enum ReqBody {
    Empty,
    /// Frames fed by the push loop; the body ends when the sender is dropped.
    Channel(mpsc::Receiver<Bytes>),
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Channel(rx) => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, ReqBody::Empty)
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Channel(_) => SizeHint::default(),
        }
    }
}

/// One HTTP/1.1 connection. Dropping it closes the connection.
pub(crate) struct Conn {
    pub sender: SendRequest<ReqBody>,
    /// Drives the connection; aborted on drop so no task outlives its `Conn`.
    task: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Conn {
    pub(crate) async fn connect(
        url: &BaseUrl,
        connector: &Connector,
        timeouts: &Timeouts,
    ) -> Result<Conn, Failure> {
        let what = format!("connect to {}", url.authority);
        let tcp = match tokio::time::timeout(
            timeouts.connect,
            TcpStream::connect((url.host.as_str(), url.port)),
        )
        .await
        {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(err)) => return Err(Transient::caused(&what, &err).into()),
            Err(_) => return Err(Transient::new(format!("{what}: timed out")).into()),
        };
        // small frames (log lines) should leave at once
        let _ = tcp.set_nodelay(true);
        let stream = match tokio::time::timeout(timeouts.io, connector.wrap(tcp, &what)).await {
            Ok(result) => result?,
            Err(_) => return Err(Transient::new(format!("{what}: TLS handshake timed out")).into()),
        };
        match stream {
            Stream::Plain(tcp) => Self::handshake(TokioIo::new(tcp), &what, timeouts).await,
            Stream::Tls(tls) => Self::handshake(TokioIo::new(tls), &what, timeouts).await,
        }
    }

    /// HTTP/1.1 over `io`, its connection driven by a task of its own.
    async fn handshake<T>(io: T, what: &str, timeouts: &Timeouts) -> Result<Conn, Failure>
    where
        T: hyper::rt::Read + hyper::rt::Write + Send + Unpin + 'static,
    {
        let (sender, conn) = match tokio::time::timeout(
            timeouts.io,
            hyper::client::conn::http1::handshake(io),
        )
        .await
        {
            Ok(Ok(pair)) => pair,
            Ok(Err(err)) => return Err(Transient::caused(what, &err).into()),
            Err(_) => {
                return Err(Transient::new(format!("{what}: handshake timed out")).into());
            }
        };
        let task = tokio::spawn(async move {
            // the error, if any, also reaches the pending request, which reports it
            let _ = conn.await;
        });
        Ok(Conn { sender, task })
    }

    /// Whether the connection can take another request (the server may have closed it).
    pub(crate) async fn is_usable(&mut self) -> bool {
        !self.sender.is_closed()
            && matches!(
                tokio::time::timeout(Duration::from_millis(0), self.sender.ready()).await,
                Ok(Ok(()))
            )
    }

    /// Sends a request without a body and waits (bounded) for the response headers.
    pub(crate) async fn send_empty(
        &mut self,
        req: Request<ReqBody>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, Failure> {
        match tokio::time::timeout(timeout, self.sender.send_request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(err)) => Err(Transient::caused("request failed", &err).into()),
            Err(_) => Err(Transient::new("timed out waiting for the server's answer").into()),
        }
    }
}

/// What `HEAD` says about a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StreamState {
    /// Committed bytes (0 for an unknown stream).
    pub offset: u64,
    pub sealed: bool,
    /// false when the server answered 404.
    pub exists: bool,
}

/// Requests about one stream over one (reused, re-opened when needed) connection.
pub(crate) struct Session {
    pub url: BaseUrl,
    pub token: String,
    pub stream: StreamId,
    /// `{base}/v1/streams/{id}`, computed once.
    pub path: String,
    pub timeouts: Timeouts,
    /// Plain TCP or TLS, as the URL says.
    pub connector: Connector,
    /// The idle keep-alive connection, if any; taken for a request, put back after success.
    pub conn: Option<Conn>,
}

impl Session {
    pub(crate) fn new(
        url: BaseUrl,
        connector: Connector,
        token: String,
        stream: StreamId,
        timeouts: Timeouts,
    ) -> Self {
        let path = url.stream_path(&stream);
        Session {
            url,
            token,
            stream,
            path,
            timeouts,
            connector,
            conn: None,
        }
    }

    /// The idle connection if the server kept it open, else a new one.
    pub(crate) async fn take_conn(&mut self) -> Result<Conn, Failure> {
        if let Some(mut conn) = self.conn.take()
            && conn.is_usable().await
        {
            return Ok(conn);
        }
        Conn::connect(&self.url, &self.connector, &self.timeouts).await
    }

    /// A request on this stream, `query` appended to its path ("" or "?offset=…").
    pub(crate) fn request(
        &self,
        method: hyper::Method,
        query: &str,
    ) -> hyper::http::request::Builder {
        request(
            method,
            &self.url,
            &format!("{}{query}", self.path),
            &self.token,
        )
    }

    /// `HEAD`: the committed offset and whether the stream is sealed.
    pub(crate) async fn head(&mut self) -> Result<StreamState, Failure> {
        let mut conn = self.take_conn().await?;
        let req = built(self.request(hyper::Method::HEAD, "").body(ReqBody::Empty))?;
        let resp = conn.send_empty(req, self.timeouts.io).await?;
        let state = match resp.status() {
            StatusCode::OK => StreamState {
                offset: header_u64(resp.headers(), "stream-offset")?.ok_or_else(|| {
                    ClientError::Protocol("HEAD answered without Stream-Offset".into())
                })?,
                sealed: header_sealed(resp.headers()),
                exists: true,
            },
            StatusCode::NOT_FOUND => StreamState {
                offset: 0,
                sealed: false,
                exists: false,
            },
            status @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                return Err(self.explain_refusal(status).await);
            }
            _ => return Err(error_response(resp, &self.stream, self.timeouts.io).await),
        };
        // a HEAD answer has no body: the connection is ready for the next request
        self.conn = Some(conn);
        Ok(state)
    }
}

impl Session {
    /// The committed bytes `[start, start + len)`, read with a plain GET (for comparing the
    /// stream with an input before resuming it).
    pub(crate) async fn read_range(&mut self, start: u64, len: usize) -> Result<Vec<u8>, Failure> {
        let io = self.timeouts.io;
        let mut conn = self.take_conn().await?;
        let query = format!("?offset={start}");
        let req = built(
            self.request(hyper::Method::GET, &query)
                .body(ReqBody::Empty),
        )?;
        let resp = conn.send_empty(req, io).await?;
        if resp.status() != StatusCode::OK {
            return Err(error_response(resp, &self.stream, io).await);
        }
        let mut body = resp.into_body();
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let frame = match tokio::time::timeout(io, body.frame()).await {
                Ok(Some(Ok(frame))) => frame,
                Ok(Some(Err(err))) => {
                    return Err(Transient::caused("reading the stream failed", &err).into());
                }
                Ok(None) => break,
                Err(_) => return Err(Transient::new("no bytes from the server in time").into()),
            };
            if let Ok(data) = frame.into_data() {
                let take = data.len().min(len - out.len());
                out.extend_from_slice(&data[..take]);
            }
        }
        // the body may go on (the stream grew): this connection is not reused
        Ok(out)
    }

    /// A HEAD answer has no body, so a refused token gets no message from it; the same read as
    /// a GET is refused the same way, with the server's JSON message.
    async fn explain_refusal(&mut self, status: StatusCode) -> Failure {
        let io = self.timeouts.io;
        let fallback = || {
            let code = status.as_u16();
            Failure::Fatal(ClientError::Auth {
                status: code,
                code: None,
                message: default_message(status),
            })
        };
        let Ok(mut conn) = Conn::connect(&self.url, &self.connector, &self.timeouts).await else {
            return fallback();
        };
        let Ok(req) = built(
            self.request(hyper::Method::GET, "?offset=0")
                .body(ReqBody::Empty),
        ) else {
            return fallback();
        };
        match conn.send_empty(req, io).await {
            Ok(resp) if resp.status() == status => error_response(resp, &self.stream, io).await,
            _ => fallback(),
        }
    }
}

/// A message for an error answer without a body.
fn default_message(status: StatusCode) -> String {
    match status {
        StatusCode::UNAUTHORIZED => "the token was refused".to_owned(),
        StatusCode::FORBIDDEN => "the token does not allow this stream".to_owned(),
        _ => status
            .canonical_reason()
            .unwrap_or("no message")
            .to_ascii_lowercase(),
    }
}

/// A request builder with the headers every request carries.
pub(crate) fn request(
    method: hyper::Method,
    url: &BaseUrl,
    path_and_query: &str,
    token: &str,
) -> hyper::http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(header::HOST, &url.authority)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(
            header::USER_AGENT,
            concat!("engine-gateway/", env!("CARGO_PKG_VERSION")),
        )
}

/// Turns a request-building failure (an invalid token character) into a usage error.
pub(crate) fn built(
    req: Result<Request<ReqBody>, hyper::http::Error>,
) -> Result<Request<ReqBody>, Failure> {
    req.map_err(|err| ClientError::Usage(format!("cannot build the request: {err}")).into())
}

/// Reads a numeric header such as `Stream-Offset`.
pub(crate) fn header_u64(headers: &HeaderMap, name: &str) -> Result<Option<u64>, ClientError> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| ClientError::Protocol(format!("header {name} is not a number"))),
    }
}

/// Reads `Stream-Sealed: true|false` (absent = false).
pub(crate) fn header_sealed(headers: &HeaderMap) -> bool {
    headers
        .get("stream-sealed")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// Classifies a response that is neither success nor a protocol-specific answer (409): 429 and
/// 5xx are transient (honouring `Retry-After`), everything else fatal with the server's message.
pub(crate) async fn error_response(
    resp: Response<Incoming>,
    stream: &StreamId,
    timeout: Duration,
) -> Failure {
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let (code, message) = error_body(resp, timeout).await;
    let message = message.unwrap_or_else(|| default_message(status));
    // 408: the server cut a slow or quiet body after committing what arrived; go on from there.
    if status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
    {
        return Failure::Retry(Transient {
            reason: format!("HTTP {}: {message}", status.as_u16()),
            retry_after,
        });
    }
    let status = status.as_u16();
    Failure::Fatal(match status {
        401 | 403 => ClientError::Auth {
            status,
            code,
            message,
        },
        404 => ClientError::NotFound {
            stream: stream.to_string(),
        },
        _ => ClientError::Rejected {
            status,
            code,
            message,
        },
    })
}

/// Largest error body read, so a broken server cannot make the client buffer much.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The `error` code and `message` of a JSON error body, or its plain text as the message.
async fn error_body(
    resp: Response<Incoming>,
    timeout: Duration,
) -> (Option<String>, Option<String>) {
    let body = Limited::new(resp.into_body(), MAX_ERROR_BODY);
    let bytes = match tokio::time::timeout(timeout, body.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        _ => return (None, None),
    };
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(&bytes) {
        let field = |k: &str| map.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let (code, message) = (field("error"), field("message"));
        if code.is_some() || message.is_some() {
            let message = message.or_else(|| code.clone());
            return (code, message);
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    if text.is_empty() {
        (None, None)
    } else {
        (None, Some(text.chars().take(300).collect()))
    }
}

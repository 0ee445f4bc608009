//! Client side of wire protocol v1: `push` (resumable append) and `cat` (read, optionally follow).
//!
//! The server's committed offset is the truth (tus-like). `push` always sends its input from byte
//! 0, skipping what the server already has, and after any failure asks the server (`HEAD`) where
//! to go on. Memory is bounded: only the current request's unacknowledged bytes are kept
//! (at most [`PushOptions::request_bytes`]) so they can be re-sent.
//!
//! `http://` and `https://` URLs (`tls.rs`: rustls, the system CAs or `--ca-cert`).

mod cat;
mod error;
mod http;
mod progress;
mod push;
mod retry;
mod source;
mod tls;
mod url;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::AsyncRead;

use crate::stream_id::StreamId;

pub use cat::cat;
pub use error::ClientError;
pub use push::push;
pub use retry::RetryPolicy;
pub use url::BaseUrl;

/// Default size after which a PATCH request is ended and the next one started.
pub const DEFAULT_REQUEST_BYTES: usize = 8 * 1024 * 1024;
/// Default largest body frame handed to the HTTP layer (one input read).
pub const DEFAULT_FRAME_BYTES: usize = 64 * 1024;

/// Where `push` reads its bytes from. The input is always sent from its byte 0.
#[non_exhaustive]
pub enum Input {
    /// A regular file: resuming seeks to the server's offset.
    File(PathBuf),
    /// The process's standard input: resuming reads and discards the bytes the server has.
    Stdin,
    /// Any other byte source (pipe, socket, test data); resumes like `Stdin`.
    Reader(Box<dyn AsyncRead + Send + Unpin>),
}

impl fmt::Debug for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::File(path) => f.debug_tuple("File").field(path).finish(),
            Input::Stdin => f.write_str("Stdin"),
            Input::Reader(_) => f.write_str("Reader(..)"),
        }
    }
}

/// Network timeouts applied to every step of every request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect (including name resolution).
    pub connect: Duration,
    /// Waiting for response headers, for the server to accept the next body frame, and for the
    /// next body frame of a non-follow read. A follow read waits for new bytes without limit.
    pub io: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            io: Duration::from_secs(30),
        }
    }
}

/// Everything `push` needs. Build with [`PushOptions::new`], then adjust the public fields.
#[non_exhaustive]
pub struct PushOptions {
    pub url: BaseUrl,
    /// Bearer token sent with every request.
    pub token: String,
    pub stream: StreamId,
    /// Seal the stream once the input ends (a final PATCH with `Stream-Seal: true`).
    pub seal: bool,
    /// Add the input after what the stream holds (input byte 0 at the stream's committed
    /// offset when the push starts). Without it the input is the stream from its byte 0, and
    /// resuming checks that what the stream holds is the input's start.
    pub append: bool,
    pub input: Input,
    /// A PATCH request ends after this many body bytes and the next one starts; also the bound
    /// on bytes kept for re-sending. Default [`DEFAULT_REQUEST_BYTES`].
    pub request_bytes: usize,
    /// Largest single read from the input / body frame. Default [`DEFAULT_FRAME_BYTES`].
    pub frame_bytes: usize,
    pub retry: RetryPolicy,
    pub timeouts: Timeouts,
    /// Report progress on stderr: a redrawn line on a terminal, and a final summary line.
    pub progress: bool,
    /// Say on stderr what failed and when the next try comes.
    pub notices: bool,
    /// For `https://`: trust the CA certificates in this PEM file instead of the system's.
    pub ca_cert: Option<PathBuf>,
}

impl PushOptions {
    pub fn new(url: BaseUrl, token: impl Into<String>, stream: StreamId, input: Input) -> Self {
        PushOptions {
            url,
            token: token.into(),
            stream,
            seal: false,
            append: false,
            input,
            request_bytes: DEFAULT_REQUEST_BYTES,
            frame_bytes: DEFAULT_FRAME_BYTES,
            retry: RetryPolicy::default(),
            timeouts: Timeouts::default(),
            progress: false,
            notices: false,
            ca_cert: None,
        }
    }
}

impl fmt::Debug for PushOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushOptions")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field("stream", &self.stream)
            .field("seal", &self.seal)
            .field("append", &self.append)
            .field("input", &self.input)
            .field("request_bytes", &self.request_bytes)
            .field("frame_bytes", &self.frame_bytes)
            .field("retry", &self.retry)
            .field("timeouts", &self.timeouts)
            .field("progress", &self.progress)
            .field("ca_cert", &self.ca_cert)
            .finish()
    }
}

/// What a successful `push` did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PushReport {
    /// The server's committed offset when the push started (0 for a new stream).
    pub start_offset: u64,
    /// The server's committed offset at the end (= the input's length).
    pub final_offset: u64,
    /// Body bytes handed to the network, re-sent bytes included.
    pub bytes_sent: u64,
    /// Failed attempts that were retried (errors, 429/503, 409 conflicts).
    pub retries: u64,
    /// The stream is sealed at the end (by this push or already before).
    pub sealed: bool,
}

/// Everything `cat` needs. Build with [`CatOptions::new`], then adjust the public fields.
#[non_exhaustive]
pub struct CatOptions {
    pub url: BaseUrl,
    /// Bearer token sent with every request.
    pub token: String,
    pub stream: StreamId,
    /// First byte to read. Default 0.
    pub offset: u64,
    /// Keep reading new bytes until the stream is sealed, reconnecting when the connection drops;
    /// a stream that does not exist yet is waited for (like `tail -F`).
    pub follow: bool,
    /// Say on stderr what failed and when the next try comes, and that a stream is waited for.
    pub notices: bool,
    pub retry: RetryPolicy,
    pub timeouts: Timeouts,
    /// For `https://`: trust the CA certificates in this PEM file instead of the system's.
    pub ca_cert: Option<PathBuf>,
}

impl CatOptions {
    pub fn new(url: BaseUrl, token: impl Into<String>, stream: StreamId) -> Self {
        CatOptions {
            url,
            token: token.into(),
            stream,
            offset: 0,
            follow: false,
            notices: false,
            retry: RetryPolicy::default(),
            timeouts: Timeouts::default(),
            ca_cert: None,
        }
    }
}

impl fmt::Debug for CatOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CatOptions")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field("stream", &self.stream)
            .field("offset", &self.offset)
            .field("follow", &self.follow)
            .field("retry", &self.retry)
            .field("timeouts", &self.timeouts)
            .field("ca_cert", &self.ca_cert)
            .finish()
    }
}

/// What a successful `cat` did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CatReport {
    pub start_offset: u64,
    /// Offset after the last byte written to the output.
    pub end_offset: u64,
    pub bytes_received: u64,
    /// Connections re-opened after a drop or a server-side end of body.
    pub reconnects: u64,
    /// The stream was seen sealed (only checked when following).
    pub sealed: bool,
    /// The output was closed by its reader (BrokenPipe); a clean stop, like `head` closing a pipe.
    pub output_closed: bool,
}

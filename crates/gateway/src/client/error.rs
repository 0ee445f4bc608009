//! The client's error type: messages a user understands, and an exit-code hint for the CLI.

use std::error::Error as StdError;
use std::fmt::Write as _;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Why a `push` or `cat` failed. No backtrace is ever captured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("invalid url {url:?}: {reason}")]
    Url { url: String, reason: String },

    #[error("invalid options: {0}")]
    Usage(String),

    /// The CA certificates could not be loaded, or the server's certificate is not trusted.
    #[error("TLS: {0}")]
    Tls(String),

    #[error("not authorized (HTTP {status}): {message}")]
    Auth {
        status: u16,
        /// The server's stable error code (`error` field of its JSON), when it sent one.
        code: Option<String>,
        message: String,
    },

    #[error("stream {stream} does not exist")]
    NotFound { stream: String },

    #[error("server refused the request (HTTP {status}): {message}")]
    Rejected {
        status: u16,
        /// The server's stable error code (`error` field of its JSON), when it sent one.
        code: Option<String>,
        message: String,
    },

    #[error("stream {stream} is sealed at {offset} bytes but the input has more bytes")]
    Sealed { stream: String, offset: u64 },

    #[error(
        "the server already has {committed} bytes of {stream} but the input has only {input_len}; \
         is this the same input?"
    )]
    InputShorter {
        stream: String,
        committed: u64,
        input_len: u64,
    },

    #[error(
        "stream {stream} already holds {committed} bytes that are not the start of this input \
         (they differ in the {window} bytes before offset {committed}): refusing to splice two \
         inputs; push with --append to add this input after them, or push to another stream"
    )]
    Diverged {
        stream: String,
        committed: u64,
        window: u64,
    },

    #[error(
        "the server's committed offset {committed} is behind bytes it already acknowledged \
         ({acknowledged}); the stream was changed behind this client's back"
    )]
    OffsetBehind { committed: u64, acknowledged: u64 },

    #[error("unexpected answer from the server: {0}")]
    Protocol(String),

    #[error("cannot read the input {what}: {source}")]
    Input {
        /// What was being read: a path, or "stdin".
        what: String,
        #[source]
        source: io::Error,
    },

    #[error("cannot write the output: {0}")]
    Output(#[source] io::Error),

    #[error("gave up after {retries} retries and {}s without progress: {last}", .waited.as_secs())]
    GaveUp {
        retries: u64,
        waited: Duration,
        /// The last transient failure, already formatted for a user.
        last: String,
    },
}

impl ClientError {
    /// Suggested process exit code: 2 for usage, trust and authorization problems, 1 for the
    /// rest.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Url { .. }
            | ClientError::Usage(_)
            | ClientError::Auth { .. }
            | ClientError::Tls(_) => 2,
            _ => 1,
        }
    }

    pub(crate) fn input(path: Option<&PathBuf>, source: io::Error) -> Self {
        let what = match path {
            Some(path) => path.display().to_string(),
            None => "stdin".to_owned(),
        };
        ClientError::Input { what, source }
    }
}

/// A failed attempt, as the retry loops see it.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Worth another try after a backoff (network error, timeout, 429, 5xx).
    Retry(Transient),
    /// Trying again cannot help.
    Fatal(ClientError),
}

impl From<ClientError> for Failure {
    fn from(err: ClientError) -> Self {
        Failure::Fatal(err)
    }
}

/// A transient failure: what happened, and how long the server asked us to wait.
#[derive(Debug)]
pub(crate) struct Transient {
    /// Formatted for a user, e.g. "connect to 127.0.0.1:8080: connection refused".
    pub reason: String,
    /// The server's `Retry-After`, which replaces the computed backoff.
    pub retry_after: Option<Duration>,
}

impl Transient {
    pub(crate) fn new(reason: impl Into<String>) -> Self {
        Transient {
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// A failure caused by `err`, described with its whole source chain.
    pub(crate) fn caused(context: &str, err: &(dyn StdError + 'static)) -> Self {
        Transient::new(format!("{context}: {}", chain(err)))
    }
}

impl From<Transient> for Failure {
    fn from(t: Transient) -> Self {
        Failure::Retry(t)
    }
}

/// `err` and its sources, joined with ": " (Display only, never Debug).
pub(crate) fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(source) = cur {
        let text = source.to_string();
        if !out.ends_with(&text) {
            let _ = write!(out, ": {text}");
        }
        cur = source.source();
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic on what they set up
mod tests {
    use super::*;

    #[test]
    fn exit_codes_and_messages() {
        let auth = ClientError::Auth {
            status: 401,
            code: Some("unauthorized".into()),
            message: "token expired".into(),
        };
        assert_eq!(auth.exit_code(), 2);
        assert_eq!(auth.to_string(), "not authorized (HTTP 401): token expired");
        let gave_up = ClientError::GaveUp {
            retries: 3,
            waited: Duration::from_secs(7),
            last: "HTTP 503".into(),
        };
        assert_eq!(gave_up.exit_code(), 1);
        assert_eq!(
            gave_up.to_string(),
            "gave up after 3 retries and 7s without progress: HTTP 503"
        );
    }

    #[test]
    fn chain_joins_sources() {
        let inner = io::Error::new(io::ErrorKind::ConnectionReset, "reset by peer");
        let outer = ClientError::Output(inner);
        // the outer message already ends with its source: not repeated
        assert_eq!(chain(&outer), "cannot write the output: reset by peer");
        let nested = io::Error::other(ClientError::Protocol("bad header".into()));
        assert_eq!(
            chain(&nested),
            "unexpected answer from the server: bad header"
        );
    }
}

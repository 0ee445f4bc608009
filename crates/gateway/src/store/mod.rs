//! Stream storage: one trait, one error type, several backends.
//!
//! The HTTP layer only ever sees [`Store`] and [`StoreError`]; it maps [`ErrorKind`] to status
//! codes in one place (`http::error`). Every backend runs the shared [`testsuite`].
//!
//! **Architecture invariant:** an offset returned by a store (from `append`, `head`, `read`) is
//! committed: it survives `kill -9` and a machine crash. Nothing is acknowledged before that.

pub mod embedded;
pub mod nats;
pub mod retention;
pub mod testsuite;

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

use crate::stream_id::StreamId;

/// What a store knows about one stream.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StreamInfo {
    pub id: String,
    /// Committed bytes.
    pub length: u64,
    pub sealed: bool,
    /// Seconds since the Unix epoch.
    pub created: u64,
    pub updated: u64,
}

/// Bytes read from a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadChunk {
    /// Bytes starting at the requested offset; empty when the reader is at the end.
    pub data: Bytes,
    /// Committed length of the stream when the read happened.
    pub length: u64,
    pub sealed: bool,
}

/// The result of an append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Committed length after the append.
    pub offset: u64,
    pub sealed: bool,
}

/// Storage of append-only byte streams.
///
/// Backends are shared between tasks (`Arc<dyn Store>`); every method may be called
/// concurrently. Appends to one stream are serialized by the offset check: an append at an
/// offset other than the committed length fails with [`ErrorKind::Conflict`].
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Committed length and state of a stream.
    async fn head(&self, id: &StreamId) -> Result<StreamInfo, StoreError>;

    /// Appends `data` at `offset`, creating the stream when `offset` is 0 and it does not exist,
    /// and seals it afterwards when `seal` is set. Returns once the bytes are durable.
    ///
    /// An empty `data` is allowed: it creates a stream, or seals one.
    async fn append(
        &self,
        id: &StreamId,
        offset: u64,
        data: Bytes,
        seal: bool,
    ) -> Result<Appended, StoreError>;

    /// Reads at most `max` committed bytes from `offset`. Reading at the committed length returns
    /// an empty chunk; beyond it is [`ErrorKind::InvalidOffset`].
    async fn read(&self, id: &StreamId, offset: u64, max: usize) -> Result<ReadChunk, StoreError>;

    /// Waits until the stream's committed length exceeds `offset`, it is sealed or deleted, or
    /// `timeout` passes, whichever comes first. Spurious returns are allowed: callers re-read.
    async fn wait(&self, id: &StreamId, offset: u64, timeout: Duration) -> Result<(), StoreError>;

    /// Streams whose id starts with `prefix`, in id order, at most `limit` of them.
    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<StreamInfo>, StoreError>;

    /// Removes a stream and its bytes.
    async fn delete(&self, id: &StreamId) -> Result<(), StoreError>;

    /// Whether the store can take writes now (for `/readyz`).
    async fn ready(&self) -> Result<(), StoreError>;

    /// Stops taking writes and makes everything accepted durable. Idempotent.
    async fn close(&self) -> Result<(), StoreError>;

    /// Appends the backend's own metrics (Prometheus text format, `engine_gateway_store_*`).
    fn write_metrics(&self, _out: &mut String) {}
}

/// What went wrong, as callers need to tell it apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    NotFound,
    /// The offset given is not the committed length; see [`StoreError::committed`].
    Conflict,
    /// The stream is sealed: no more appends.
    Sealed,
    /// A read offset past the committed length, or an offset that would overflow.
    InvalidOffset,
    /// The store cannot serve now (closed, backend unreachable); retry later.
    Unavailable,
    /// A bug or corrupted data.
    Internal,
    /// One append carries more bytes than the backend takes in one call; split it.
    TooLarge,
    /// Stored bytes fail their checksum: they are not served. [`StoreError::committed`] is the
    /// stream offset where the damaged record starts.
    Corrupted,
    /// The disk is full: nothing was written; retry once space is back.
    /// [`StoreError::committed`] is the stream's committed length, when known.
    InsufficientStorage,
}

/// An error of a store operation. Carries no backtrace, by design.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    kind: ErrorKind,
    message: String,
    /// Committed length of the stream, where the failure is about an offset.
    committed: Option<u64>,
}

impl StoreError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        StoreError {
            kind,
            message: message.into(),
            committed: None,
        }
    }

    pub fn not_found(id: &StreamId) -> Self {
        Self::new(ErrorKind::NotFound, format!("stream {id} does not exist"))
    }

    pub fn conflict(id: &StreamId, offset: u64, committed: u64) -> Self {
        StoreError {
            kind: ErrorKind::Conflict,
            message: format!("stream {id} is at offset {committed}, not {offset}"),
            committed: Some(committed),
        }
    }

    pub fn sealed(id: &StreamId, committed: u64) -> Self {
        StoreError {
            kind: ErrorKind::Sealed,
            message: format!("stream {id} is sealed at offset {committed}"),
            committed: Some(committed),
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    pub fn too_large(len: usize, max: usize) -> Self {
        Self::new(
            ErrorKind::TooLarge,
            format!("an append of {len} bytes is more than the {max} bytes allowed"),
        )
    }

    /// Bytes of a stream fail their checksum at stream offset `offset`.
    pub fn corrupted(message: impl Into<String>, offset: u64) -> Self {
        StoreError {
            kind: ErrorKind::Corrupted,
            message: message.into(),
            committed: Some(offset),
        }
    }

    /// No space for a write; `committed` is the stream's committed length, when known.
    pub fn insufficient_storage(message: impl Into<String>, committed: Option<u64>) -> Self {
        StoreError {
            kind: ErrorKind::InsufficientStorage,
            message: message.into(),
            committed,
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn committed(&self) -> Option<u64> {
        self.committed
    }
}

/// Seconds since the Unix epoch, for `created`/`updated`.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

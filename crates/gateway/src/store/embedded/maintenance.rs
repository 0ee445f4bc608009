//! The maintenance thread: every `interval`, deletes the streams retention selects (through
//! the writer's queue, like any delete) and compacts segments whose bytes are mostly deleted.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use redb::ReadableDatabase;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::Shared;
use super::compact::{self, CompactReport};
use super::index::{Snapshot, db_err};
use super::writer::Request;
use crate::store::retention::RetentionConfig;
use crate::store::{StoreError, unix_now};
use crate::stream_id::StreamId;

/// What the thread needs.
pub(super) struct Maintenance {
    pub(super) shared: Arc<Shared>,
    pub(super) tx: mpsc::Sender<Request>,
    pub(super) retention: RetentionConfig,
    pub(super) compact_ratio: f64,
    pub(super) interval: Duration,
}

impl Maintenance {
    /// Runs passes until `stop` fires or its sender is dropped.
    pub(super) fn run(self, stop: Receiver<()>) {
        loop {
            match stop.recv_timeout(self.interval) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            if let Err(err) = self.pass() {
                warn!(error = %err, "store maintenance pass failed");
            }
        }
    }

    /// One pass: retention, then compaction. Blocking.
    pub(super) fn pass(&self) -> Result<(u64, CompactReport), StoreError> {
        let deleted = self.expire()?;
        let report = compact::compact(&self.shared, self.compact_ratio)?;
        Ok((deleted, report))
    }

    /// Deletes what retention selects; returns how many streams.
    fn expire(&self) -> Result<u64, StoreError> {
        if !self.retention.is_active() {
            return Ok(0);
        }
        let streams = {
            let txn = self.shared.db.begin_read().map_err(db_err)?;
            Snapshot::new(&txn)?.list("", usize::MAX)?
        };
        let mut deleted = 0;
        for (name, reason) in self.retention.select(&streams, unix_now()) {
            let Ok(id) = name.parse::<StreamId>() else {
                continue;
            };
            let (reply, rx) = oneshot::channel();
            let request = Request::Delete {
                id: id.clone(),
                reply,
            };
            if self.tx.blocking_send(request).is_err() {
                return Err(StoreError::unavailable("store writer has stopped"));
            }
            match rx.blocking_recv() {
                Ok(Ok(())) => {
                    deleted += 1;
                    self.shared
                        .metrics
                        .expired_streams
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    info!(stream = %id, reason, "stream deleted by retention");
                }
                Ok(Err(err)) if err.kind() == crate::store::ErrorKind::NotFound => {}
                Ok(Err(err)) => return Err(err),
                Err(_) => return Err(StoreError::unavailable("store writer has stopped")),
            }
        }
        Ok(deleted)
    }
}

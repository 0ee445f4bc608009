//! The state of a gateway stream as JetStream holds it: the subject's last message says the
//! committed length, the seal and the creation time. Plus a bounded cache of those tips, used
//! only as the expected sequence of the next publish (the server checks it).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::LastRawMessageErrorKind;

use super::Inner;
use super::codec::Meta;
use super::retry::Attempts;
use crate::store::{StoreError, StreamInfo};
use crate::stream_id::StreamId;

/// Most stream tips kept; beyond this an arbitrary one is evicted (it is only a hint).
pub const TIP_CACHE_CAPACITY: usize = 10_000;

/// What the last message on a stream's subject says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tip {
    /// No live stream: the subject is empty (`seq` 0) or ends with a tombstone at `seq`.
    Missing { seq: u64 },
    Live {
        /// Sequence of the last message: the expected sequence of the next publish.
        seq: u64,
        /// Committed length.
        committed: u64,
        sealed: bool,
        created: u64,
        /// When the last message was stored.
        updated: u64,
    },
}

impl Tip {
    pub fn from_meta(meta: &Meta) -> Tip {
        if meta.tombstone {
            Tip::Missing { seq: meta.seq }
        } else {
            Tip::Live {
                seq: meta.seq,
                committed: meta.end(),
                sealed: meta.sealed,
                created: meta.created,
                updated: meta.stored,
            }
        }
    }

    pub fn info(&self, id: &StreamId) -> Result<StreamInfo, StoreError> {
        match *self {
            Tip::Missing { .. } => Err(StoreError::not_found(id)),
            Tip::Live {
                committed,
                sealed,
                created,
                updated,
                ..
            } => Ok(StreamInfo {
                id: id.to_string(),
                length: committed,
                sealed,
                created,
                updated: updated.max(created),
            }),
        }
    }
}

/// Recently seen tips, bounded by [`TIP_CACHE_CAPACITY`].
#[derive(Default)]
pub struct TipCache {
    map: Mutex<HashMap<StreamId, Tip>>,
}

impl TipCache {
    pub fn get(&self, id: &StreamId) -> Option<Tip> {
        self.lock().get(id).copied()
    }

    pub fn put(&self, id: &StreamId, tip: Tip) {
        let mut map = self.lock();
        if map.len() >= TIP_CACHE_CAPACITY
            && !map.contains_key(id)
            && let Some(victim) = map.keys().next().cloned()
        {
            map.remove(&victim);
        }
        map.insert(id.clone(), tip);
    }

    pub fn forget(&self, id: &StreamId) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<StreamId, Tip>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    /// The stream's tip, read from the stream leader (never stale), and cached as a hint.
    pub(super) async fn fetch_tip(&self, id: &StreamId) -> Result<Tip, StoreError> {
        let tip = match self.last_message(id).await? {
            Some(msg) => Tip::from_meta(&Meta::parse(&msg)?),
            None => Tip::Missing { seq: 0 },
        };
        self.tips.put(id, tip);
        Ok(tip)
    }

    /// The last message on the stream's subject, if any.
    pub(super) async fn last_message(
        &self,
        id: &StreamId,
    ) -> Result<Option<StreamMessage>, StoreError> {
        let subject = self.subjects.of(id);
        let result = self
            .retrying(transient, || {
                self.stream
                    .raw_message_builder()
                    .last_by_subject(subject.clone())
                    .send()
            })
            .await;
        match result {
            Ok(msg) => Ok(Some(msg)),
            Err(Attempts::Disconnected) => Err(self.disconnected()),
            Err(Attempts::Failed(err)) => self.found(Err(err), "get last message"),
        }
    }

    /// The message with sequence `seq`, if it exists.
    pub(super) async fn message_at(&self, seq: u64) -> Result<Option<StreamMessage>, StoreError> {
        let result = self.stream.raw_message_builder().sequence(seq).send().await;
        self.found(result, "get message")
    }

    /// The first message on the stream's subject at or after sequence `seq`.
    pub(super) async fn next_message(
        &self,
        id: &StreamId,
        seq: u64,
    ) -> Result<Option<StreamMessage>, StoreError> {
        let result = self
            .stream
            .raw_message_builder()
            .sequence(seq.max(1))
            .next_by_subject(self.subjects.of(id))
            .send()
            .await;
        self.found(result, "get next message")
    }

    /// The answer to a message lookup, as an `Option`.
    fn found(
        &self,
        result: Result<StreamMessage, async_nats::jetstream::stream::LastRawMessageError>,
        what: &str,
    ) -> Result<Option<StreamMessage>, StoreError> {
        match result {
            Ok(msg) => Ok(Some(msg)),
            Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(err) => Err(self.unavailable(what, err)),
        }
    }
}

/// Whether a failed message lookup is worth another attempt: anything but "there is no such
/// message" and a malformed subject (timeouts, no leader yet, JetStream temporarily down).
fn transient(err: &async_nats::jetstream::stream::LastRawMessageError) -> bool {
    !matches!(
        err.kind(),
        LastRawMessageErrorKind::NoMessageFound | LastRawMessageErrorKind::InvalidSubject
    )
}

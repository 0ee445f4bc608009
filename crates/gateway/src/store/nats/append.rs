//! The write path: appends and deletes, each a publish conditioned on the subject's last
//! sequence, so JetStream itself decides which of several racing replicas wins.
//!
//! An append checks the request against the stream's tip (cached, or read from the leader),
//! then publishes with `Nats-Expected-Last-Subject-Sequence` = the tip's sequence. A refused
//! publish means the tip moved: it is re-read from the leader and the request checked again,
//! which either answers `Conflict`/`Sealed`/`NotFound` with the real committed offset or
//! publishes again on the fresh tip. A duplicate acknowledgement (same `Nats-Msg-Id` inside the
//! window) is accepted only when the stored message carries exactly our bytes and headers.

use std::sync::atomic::Ordering;

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use bytes::Bytes;

use super::codec;
use super::retry::Attempts;
use super::state::Tip;
use super::{Inner, MAX_MESSAGE_PAYLOAD};
use crate::store::{Appended, ErrorKind, StoreError, unix_now};
use crate::stream_id::StreamId;

/// Times an append re-reads the tip after a refused publish before giving up.
const MAX_ATTEMPTS: usize = 4;

/// What to do with a request, given a tip.
enum Plan {
    /// Answer at once.
    Done(Result<Appended, StoreError>),
    /// Publish on top of subject sequence `prev`.
    Publish { prev: u64, created: u64 },
}

/// Why publishing an append's messages stopped.
enum Failure {
    /// The server refused a message for a wrong expected sequence (or a foreign duplicate);
    /// `first` when nothing of this append was stored.
    Refused {
        first: bool,
    },
    Error(StoreError),
}

impl Inner {
    pub(super) async fn append(
        &self,
        id: &StreamId,
        offset: u64,
        data: Bytes,
        seal: bool,
    ) -> Result<Appended, StoreError> {
        let len = data.len() as u64;
        if offset.checked_add(len).is_none() {
            return Err(StoreError::new(
                ErrorKind::InvalidOffset,
                format!("an append of {len} bytes at {offset} overflows"),
            ));
        }
        let mut cached = self.tips.get(id);
        for _ in 0..MAX_ATTEMPTS {
            let fresh = cached.is_none();
            let tip = match cached.take() {
                Some(tip) => tip,
                None => self.fetch_tip(id).await?,
            };
            let (prev, created) = match plan(id, &tip, offset, &data, seal) {
                // A cached tip is only trusted as the expected sequence of a publish, which
                // the server checks; any other answer comes from a fresh tip.
                Plan::Done(_) if !fresh => continue,
                Plan::Done(result) => {
                    if result.is_err() {
                        self.metrics.conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                    return result;
                }
                Plan::Publish { prev, created } => (prev, created),
            };
            if let Tip::Missing { seq } = tip
                && seq > 0
            {
                // Re-creating a deleted stream: make sure no old bytes precede the tombstone.
                self.purge_before(id, seq).await?;
            }
            match self
                .publish_all(id, offset, &data, seal, prev, created)
                .await
            {
                Ok(appended) => return Ok(appended),
                Err(Failure::Refused { first: true }) => {}
                Err(Failure::Refused { first: false }) => {
                    // Part of the append is committed; answer with the committed state.
                    let tip = self.fetch_tip(id).await?;
                    self.metrics.conflicts.fetch_add(1, Ordering::Relaxed);
                    return Err(committed_error(id, &tip, offset));
                }
                Err(Failure::Error(err)) => {
                    self.tips.forget(id);
                    return Err(err);
                }
            }
        }
        let tip = self.fetch_tip(id).await?;
        self.metrics.conflicts.fetch_add(1, Ordering::Relaxed);
        Err(committed_error(id, &tip, offset))
    }

    /// Publishes `data` as one or more messages chained by expected sequence.
    async fn publish_all(
        &self,
        id: &StreamId,
        offset: u64,
        data: &Bytes,
        seal: bool,
        mut prev: u64,
        created: u64,
    ) -> Result<Appended, Failure> {
        let subject = self.subjects.of(id);
        let mut pos = 0usize;
        loop {
            let end = (pos + MAX_MESSAGE_PAYLOAD).min(data.len());
            let last = end == data.len();
            let piece = data.slice(pos..end);
            let at = offset + pos as u64;
            let headers = codec::data_headers(id, at, prev, created, seal && last);
            let seq = match self.publish(&subject, headers.clone(), piece.clone()).await {
                Ok(ack) if ack.duplicate => {
                    self.metrics.dedups.fetch_add(1, Ordering::Relaxed);
                    if !self
                        .is_ours(ack.sequence, &subject, &headers, &piece)
                        .await?
                    {
                        return Err(Failure::Refused { first: pos == 0 });
                    }
                    ack.sequence
                }
                Ok(ack) => ack.sequence,
                Err(Failure::Refused { .. }) => return Err(Failure::Refused { first: pos == 0 }),
                Err(err) => return Err(err),
            };
            self.metrics.publishes.fetch_add(1, Ordering::Relaxed);
            prev = seq;
            let committed = at + piece.len() as u64;
            let sealed = seal && last;
            self.tips.put(
                id,
                Tip::Live {
                    seq,
                    committed,
                    sealed,
                    created,
                    updated: unix_now(),
                },
            );
            if last {
                return Ok(Appended {
                    offset: committed,
                    sealed,
                });
            }
            pos = end;
        }
    }

    /// One publish, waiting for JetStream's acknowledgement.
    async fn publish(
        &self,
        subject: &str,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<PublishAck, Failure> {
        let transient = |err: &PublishError| {
            matches!(
                err.kind(),
                PublishErrorKind::TimedOut
                    | PublishErrorKind::StreamNotFound
                    | PublishErrorKind::BrokenPipe
            )
        };
        let result = self
            .retrying(transient, || {
                let message = PublishMessage::build()
                    .headers(headers.clone())
                    .payload(payload.clone());
                // this thread's own connection when it has one (`publishers`), per attempt
                let js = self.publishers.context(&self.js);
                async move {
                    match js.send_publish(subject.to_owned(), message).await {
                        Ok(ack) => ack.await,
                        Err(err) => Err(err),
                    }
                }
            })
            .await;
        result.map_err(|failure| match failure {
            Attempts::Disconnected => Failure::Error(self.disconnected()),
            Attempts::Failed(err) => match err.kind() {
                PublishErrorKind::WrongLastSequence => Failure::Refused { first: true },
                _ => Failure::Error(self.unavailable("publish", err)),
            },
        })
    }

    /// Whether the message a duplicate acknowledgement points at is the one we sent.
    async fn is_ours(
        &self,
        seq: u64,
        subject: &str,
        headers: &HeaderMap,
        payload: &Bytes,
    ) -> Result<bool, Failure> {
        let Some(stored) = self.message_at(seq).await.map_err(Failure::Error)? else {
            return Ok(false);
        };
        let same_header = |name: &str| stored.headers.get(name) == headers.get(name);
        Ok(stored.subject.as_str() == subject
            && stored.payload == *payload
            && same_header(codec::HDR_OFFSET)
            && same_header(codec::HDR_SEAL))
    }

    pub(super) async fn delete(&self, id: &StreamId) -> Result<(), StoreError> {
        let subject = self.subjects.of(id);
        for _ in 0..MAX_ATTEMPTS {
            let tip = self.fetch_tip(id).await?;
            let Tip::Live { seq, .. } = tip else {
                return Err(StoreError::not_found(id));
            };
            let headers = codec::tombstone_headers(id, seq);
            match self.publish(&subject, headers, Bytes::new()).await {
                Ok(ack) => {
                    self.tips.put(id, Tip::Missing { seq: ack.sequence });
                    return self.purge_before(id, ack.sequence).await;
                }
                // An append landed in between: read the tip again and retry.
                Err(Failure::Refused { .. }) => {}
                Err(Failure::Error(err)) => return Err(err),
            }
        }
        Err(StoreError::unavailable(format!(
            "stream {id} kept changing while being deleted; retry"
        )))
    }

    /// Removes every message of the stream's subject older than sequence `seq` (a tombstone).
    async fn purge_before(&self, id: &StreamId, seq: u64) -> Result<(), StoreError> {
        self.stream
            .purge()
            .filter(self.subjects.of(id))
            .sequence(seq)
            .await
            .map(drop)
            .map_err(|err| self.unavailable("purge", err))
    }
}

/// Checks a request against a tip.
fn plan(id: &StreamId, tip: &Tip, offset: u64, data: &Bytes, seal: bool) -> Plan {
    match *tip {
        Tip::Missing { seq } => {
            if offset != 0 {
                return Plan::Done(Err(StoreError::not_found(id)));
            }
            Plan::Publish {
                prev: seq,
                created: unix_now(),
            }
        }
        Tip::Live {
            seq,
            committed,
            sealed,
            created,
            ..
        } => {
            if sealed {
                Plan::Done(Err(StoreError::sealed(id, committed)))
            } else if offset != committed {
                Plan::Done(Err(StoreError::conflict(id, offset, committed)))
            } else if data.is_empty() && !seal {
                Plan::Done(Ok(Appended {
                    offset: committed,
                    sealed: false,
                }))
            } else {
                Plan::Publish { prev: seq, created }
            }
        }
    }
}

/// The error for an append at `offset` that the committed state `tip` refuses.
fn committed_error(id: &StreamId, tip: &Tip, offset: u64) -> StoreError {
    match *tip {
        Tip::Missing { .. } => StoreError::not_found(id),
        Tip::Live {
            committed, sealed, ..
        } => {
            if sealed {
                StoreError::sealed(id, committed)
            } else {
                StoreError::conflict(id, offset, committed)
            }
        }
    }
}

//! The read path: reads, follows (`wait`), listing and readiness.
//!
//! A read finds the message holding the requested offset. Offsets grow with sequences along a
//! subject, so: the last message (already fetched for the committed length) answers reads of
//! the tail; a per-stream cursor (the last message read) answers sequential readers with one
//! request; anything else is a binary search over sequences with "next message on subject at or
//! after sequence s" requests: O(log Δ) requests, Δ being the span of stream-wide sequences
//! the gateway stream covers. A read then gathers following messages (one request each) up to
//! its `max`, at most 16 messages and 1 MiB.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use futures_util::{StreamExt as _, TryStreamExt as _};

use super::Inner;
use super::codec::Meta;
use super::state::Tip;
use crate::store::{ErrorKind, ReadChunk, StoreError, StreamInfo};
use crate::stream_id::StreamId;

/// Most messages one read gathers (one request each).
const MAX_MESSAGES_PER_READ: usize = 16;
/// Most bytes one read gathers across messages.
const MAX_GATHER_BYTES: usize = 1 << 20;
/// Most read cursors kept; beyond this an arbitrary one is evicted.
pub const CURSOR_CACHE_CAPACITY: usize = 10_000;

/// Where the last read of a stream ended: a hint, checked against the message it names.
#[derive(Clone, Copy, Debug)]
struct Cursor {
    seq: u64,
    offset: u64,
    end: u64,
}

/// Recent read cursors, bounded by [`CURSOR_CACHE_CAPACITY`].
#[derive(Default)]
pub struct CursorCache {
    map: Mutex<HashMap<StreamId, Cursor>>,
}

impl CursorCache {
    fn get(&self, id: &StreamId) -> Option<Cursor> {
        self.lock().get(id).copied()
    }

    fn put(&self, id: &StreamId, cursor: Cursor) {
        let mut map = self.lock();
        if map.len() >= CURSOR_CACHE_CAPACITY
            && !map.contains_key(id)
            && let Some(victim) = map.keys().next().cloned()
        {
            map.remove(&victim);
        }
        map.insert(id.clone(), cursor);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<StreamId, Cursor>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    pub(super) async fn read(
        &self,
        id: &StreamId,
        offset: u64,
        max: usize,
    ) -> Result<ReadChunk, StoreError> {
        let Some(last) = self.last_message(id).await? else {
            return Err(StoreError::not_found(id));
        };
        let last_meta = Meta::parse(&last)?;
        let tip = Tip::from_meta(&last_meta);
        self.tips.put(id, tip);
        let Tip::Live {
            committed, sealed, ..
        } = tip
        else {
            return Err(StoreError::not_found(id));
        };
        let chunk = |data| ReadChunk {
            data,
            length: committed,
            sealed,
        };
        if offset > committed {
            return Err(StoreError::new(
                ErrorKind::InvalidOffset,
                format!("stream {id} has {committed} bytes, cannot read at {offset}"),
            ));
        }
        if offset == committed || max == 0 {
            return Ok(chunk(bytes::Bytes::new()));
        }
        let (msg, meta) = if last_meta.offset <= offset {
            (last, last_meta)
        } else {
            self.locate(id, offset, last_meta.seq).await?
        };
        let start = usize::try_from(offset - meta.offset)
            .map_err(|_| StoreError::internal("message offset out of range"))?;
        let end = (start.saturating_add(max)).min(msg.payload.len());
        let first = msg.payload.slice(start..end);
        if first.len() == max || meta.end() >= committed {
            self.remember(id, &meta);
            return Ok(chunk(first));
        }
        // Gather following messages up to `max` bytes (bounded by the caller's `max`, and by
        // MAX_MESSAGES_PER_READ requests).
        let mut out = bytes::BytesMut::with_capacity(max.min(MAX_GATHER_BYTES));
        out.extend_from_slice(&first);
        let mut last_meta = meta;
        for _ in 1..MAX_MESSAGES_PER_READ {
            if out.len() >= max || out.len() >= MAX_GATHER_BYTES || last_meta.end() >= committed {
                break;
            }
            let Some(next) = self.next_message(id, last_meta.seq + 1).await? else {
                break;
            };
            let next_meta = Meta::parse(&next)?;
            if next_meta.tombstone || next_meta.offset != last_meta.end() {
                break;
            }
            let take = (max - out.len()).min(next.payload.len());
            out.extend_from_slice(&next.payload[..take]);
            last_meta = next_meta;
            if take < next.payload.len() {
                break;
            }
        }
        self.remember(id, &last_meta);
        Ok(chunk(out.freeze()))
    }

    fn remember(&self, id: &StreamId, meta: &Meta) {
        self.cursors.put(
            id,
            Cursor {
                seq: meta.seq,
                offset: meta.offset,
                end: meta.end(),
            },
        );
    }

    /// The message holding byte `target`, which is below the last message's offset.
    async fn locate(
        &self,
        id: &StreamId,
        target: u64,
        last_seq: u64,
    ) -> Result<(StreamMessage, Meta), StoreError> {
        let holds = |m: &Meta| !m.tombstone && m.offset <= target && target < m.end();
        if let Some(cursor) = self.cursors.get(id) {
            let candidate = if cursor.offset <= target && target < cursor.end {
                self.message_at(cursor.seq).await?
            } else if target == cursor.end {
                self.next_non_empty(id, cursor.seq + 1).await?
            } else {
                None
            };
            if let Some(msg) = candidate
                && msg.subject.as_str() == self.subjects.of(id)
            {
                let meta = Meta::parse(&msg)?;
                if holds(&meta) {
                    return Ok((msg, meta));
                }
            }
        }
        // Binary search: `lo` is a message with offset <= target, `hi` a sequence at or past
        // which every message of the subject starts after target.
        let Some(first) = self.next_message(id, 1).await? else {
            return Err(StoreError::not_found(id));
        };
        let mut lo = (Meta::parse(&first)?, first);
        if lo.0.offset > target {
            return Err(StoreError::new(
                ErrorKind::InvalidOffset,
                format!(
                    "bytes of stream {id} before offset {} expired (jetstream max age)",
                    lo.0.offset
                ),
            ));
        }
        let mut hi = last_seq;
        while !holds(&lo.0) {
            if hi <= lo.0.seq + 1 {
                return Err(StoreError::internal(format!(
                    "stream {id} has no message holding offset {target}"
                )));
            }
            let mid = lo.0.seq + (hi - lo.0.seq) / 2;
            let Some(msg) = self.next_message(id, mid).await? else {
                hi = mid;
                continue;
            };
            let meta = Meta::parse(&msg)?;
            if meta.seq >= hi || meta.offset > target {
                hi = mid;
            } else {
                lo = (meta, msg);
            }
        }
        let (meta, msg) = lo;
        Ok((msg, meta))
    }

    /// The first message with a payload on the stream's subject from sequence `seq`.
    async fn next_non_empty(
        &self,
        id: &StreamId,
        mut seq: u64,
    ) -> Result<Option<StreamMessage>, StoreError> {
        // Empty messages are seal markers; at most one follows a data message.
        for _ in 0..2 {
            match self.next_message(id, seq).await? {
                Some(msg) if msg.payload.is_empty() => seq = msg.sequence + 1,
                other => return Ok(other),
            }
        }
        Ok(None)
    }

    pub(super) async fn wait(
        &self,
        id: &StreamId,
        offset: u64,
        timeout: Duration,
    ) -> Result<(), StoreError> {
        // Subscribe before looking, so an append in between is not missed.
        let mut sub = self
            .client
            .subscribe(self.subjects.of(id))
            .await
            .map_err(|err| self.unavailable("subscribe", err))?;
        match self.fetch_tip(id).await? {
            Tip::Missing { .. } => return Ok(()),
            Tip::Live {
                committed, sealed, ..
            } if committed > offset || sealed => return Ok(()),
            Tip::Live { .. } => {}
        }
        // Any message on the subject (data, seal, tombstone) ends the wait; so does the timeout.
        let _ = tokio::time::timeout(timeout, sub.next()).await;
        Ok(())
    }

    pub(super) async fn list(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<StreamInfo>, StoreError> {
        let filter = self.subjects.filter_for_prefix(prefix);
        let mut subjects = self
            .stream
            .info_with_subjects(filter)
            .await
            .map_err(|err| self.unavailable("stream subjects", err))?;
        let mut ids = Vec::new();
        while let Some((subject, _count)) = subjects
            .try_next()
            .await
            .map_err(|err| self.unavailable("stream subjects", err))?
        {
            if let Some(id) = self.subjects.decode(&subject)
                && id.as_str().starts_with(prefix)
            {
                ids.push(id);
            }
        }
        ids.sort();
        let mut out = Vec::new();
        for id in ids {
            if out.len() >= limit {
                break;
            }
            // Deleted streams keep their subject (the tombstone) until it expires.
            if let Ok(info) = self.fetch_tip(&id).await?.info(&id) {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// Whether a write could succeed now: connected, and (clustered) the stream has a leader
    /// and a quorum of current replicas. One attempt: a probe wants a quick answer.
    pub(super) async fn ready(&self) -> Result<(), StoreError> {
        if !self.connected() {
            self.health.record_disconnected();
            return Err(self.disconnected());
        }
        let info = match self.stream.get_info().await {
            Ok(info) => info,
            Err(err) => {
                let err = self.unavailable("stream info", err);
                self.health.record_unanswered(&err);
                return Err(err);
            }
        };
        let verdict = match &info.cluster {
            Some(cluster) => quorum(cluster),
            None => Ok(()),
        };
        let clustered = info
            .cluster
            .as_ref()
            .is_some_and(|c| !c.replicas.is_empty());
        self.health.record(&verdict, clustered);
        verdict
    }
}

/// How long a follower may stay silent and still count towards the quorum.
pub(super) const PEER_SILENCE: Duration = Duration::from_secs(3);

/// A clustered stream takes writes when it has a leader and a majority of its members (the
/// leader and the current, online followers).
fn quorum(cluster: &async_nats::jetstream::stream::ClusterInfo) -> Result<(), StoreError> {
    let Some(leader) = &cluster.leader else {
        return Err(StoreError::unavailable(
            "nats: the jetstream stream has no leader (an election is running or quorum is lost)",
        ));
    };
    let members = cluster.replicas.len() + 1;
    // A leader that lost its followers keeps reporting them `current` for seconds; a peer it
    // has not heard from within a few heartbeats (1 s apart) is not counted.
    let up = 1 + cluster
        .replicas
        .iter()
        .filter(|peer| peer.current && !peer.offline && peer.active < PEER_SILENCE)
        .count();
    if up * 2 <= members {
        return Err(StoreError::unavailable(format!(
            "nats: the jetstream stream has no quorum: {up} of {members} replicas are current \
             (leader {leader})"
        )));
    }
    Ok(())
}

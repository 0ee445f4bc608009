//! The redb index: where each stream's bytes are in the log, and what each stream is.
//!
//! It is a materialized view of the log: every change is a log record applied by [`Tables::apply`],
//! both by the writer after the log fsync and by the recovery scan, and the `state` table holds
//! the log position the index reflects (the checkpoint), committed in the same transaction.

use std::collections::BTreeMap;
use std::path::Path;

use redb::{
    Database, ReadOnlyTable, ReadTransaction, ReadableTable, Table, TableDefinition,
    WriteTransaction,
};

use super::log::{APPEND_DATA_OFFSET, Record, SegmentId};
use crate::store::{StoreError, StreamInfo};

/// name -> (key, length, sealed, created, updated).
const STREAMS: TableDefinition<&str, (u64, u64, bool, u64, u64)> = TableDefinition::new("streams");
/// key -> name, to apply log records, which name streams by key.
const KEYS: TableDefinition<u64, &str> = TableDefinition::new("keys");
/// (key, offset) -> (segment, position of the data in it, length).
const CHUNKS: TableDefinition<(u64, u64), (u64, u64, u32)> = TableDefinition::new("chunks");
/// "checkpoint" -> (segment, position); "next_key" -> (key, 0).
const STATE: TableDefinition<&str, (u64, u64)> = TableDefinition::new("state");
/// segment number -> (generation of its live file, bytes of deleted streams' records in it).
/// A number without a row is generation 0 with nothing deleted yet.
const SEGMENTS: TableDefinition<u64, (u64, u64)> = TableDefinition::new("segments");

/// Converts any redb error into an internal store error (Display only).
pub(super) fn db_err(err: impl Into<redb::Error>) -> StoreError {
    StoreError::internal(format!("index: {}", err.into()))
}

/// What the index knows about one stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Meta {
    /// Numeric key naming the stream in log records and chunk keys; never reused, so a
    /// recreated stream never sees its predecessor's chunks.
    pub(super) key: u64,
    pub(super) length: u64,
    pub(super) sealed: bool,
    pub(super) created: u64,
    pub(super) updated: u64,
}

impl Meta {
    fn from_tuple((key, length, sealed, created, updated): (u64, u64, bool, u64, u64)) -> Self {
        Meta {
            key,
            length,
            sealed,
            created,
            updated,
        }
    }

    fn tuple(&self) -> (u64, u64, bool, u64, u64) {
        (
            self.key,
            self.length,
            self.sealed,
            self.created,
            self.updated,
        )
    }

    pub(super) fn info(&self, id: &str) -> StreamInfo {
        StreamInfo {
            id: id.to_owned(),
            length: self.length,
            sealed: self.sealed,
            created: self.created,
            updated: self.updated,
        }
    }
}

/// Opens (or creates) the index with a bounded page cache.
pub(super) fn open_db(path: &Path, cache_bytes: usize) -> Result<Database, StoreError> {
    let db = redb::Builder::new()
        .set_cache_size(cache_bytes)
        .create(path)
        .map_err(|err| match err {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                StoreError::unavailable(format!("index {} is open elsewhere", path.display()))
            }
            err => db_err(err),
        })?;
    let txn = db.begin_write().map_err(db_err)?;
    {
        Tables::open(&txn)?;
    }
    txn.commit().map_err(db_err)?;
    Ok(db)
}

/// The tables of one write transaction.
pub(super) struct Tables<'t> {
    streams: Table<'t, &'static str, (u64, u64, bool, u64, u64)>,
    keys: Table<'t, u64, &'static str>,
    chunks: Table<'t, (u64, u64), (u64, u64, u32)>,
    state: Table<'t, &'static str, (u64, u64)>,
    segments: Table<'t, u64, (u64, u64)>,
    /// Set while rebuilding the index from the whole log: compaction removed the records of
    /// deleted streams from some segments and not others, so a deleted stream may show a gap
    /// before its delete record; such appends are skipped. (A gap from damage never gets here:
    /// the walker reports the unreadable bytes first and recovery refuses.)
    pub(super) tolerate_gaps: bool,
}

impl<'t> Tables<'t> {
    pub(super) fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Tables {
            streams: txn.open_table(STREAMS).map_err(db_err)?,
            keys: txn.open_table(KEYS).map_err(db_err)?,
            chunks: txn.open_table(CHUNKS).map_err(db_err)?,
            state: txn.open_table(STATE).map_err(db_err)?,
            segments: txn.open_table(SEGMENTS).map_err(db_err)?,
            tolerate_gaps: false,
        })
    }

    pub(super) fn meta(&self, name: &str) -> Result<Option<Meta>, StoreError> {
        meta_in(&self.streams, name)
    }

    pub(super) fn meta_by_key(&self, key: u64) -> Result<Option<(String, Meta)>, StoreError> {
        let Some(name) = self
            .keys
            .get(key)
            .map_err(db_err)?
            .map(|g| g.value().to_owned())
        else {
            return Ok(None);
        };
        let meta = self.meta(&name)?.ok_or_else(|| {
            StoreError::internal(format!("index: key {key} names missing stream {name}"))
        })?;
        Ok(Some((name, meta)))
    }

    /// The log position the index reflects, if any was recorded.
    pub(super) fn checkpoint(&self) -> Result<Option<(u64, u64)>, StoreError> {
        Ok(self
            .state
            .get("checkpoint")
            .map_err(db_err)?
            .map(|g| g.value()))
    }

    pub(super) fn set_checkpoint(&mut self, segment: u64, pos: u64) -> Result<(), StoreError> {
        self.state
            .insert("checkpoint", (segment, pos))
            .map_err(db_err)?;
        Ok(())
    }

    /// Segment number -> (generation, dead bytes), for every segment with a row.
    pub(super) fn segments(&self) -> Result<BTreeMap<u64, (u64, u64)>, StoreError> {
        segments_in(&self.segments)
    }

    pub(super) fn set_segment(
        &mut self,
        number: u64,
        generation: u64,
        dead: u64,
    ) -> Result<(), StoreError> {
        self.segments
            .insert(number, (generation, dead))
            .map_err(db_err)?;
        Ok(())
    }

    pub(super) fn remove_segment(&mut self, number: u64) -> Result<(), StoreError> {
        self.segments.remove(number).map_err(db_err)?;
        Ok(())
    }

    /// Where chunk `(key, offset)` is: (packed segment id, data position, length).
    pub(super) fn chunk(
        &self,
        key: u64,
        offset: u64,
    ) -> Result<Option<(u64, u64, u32)>, StoreError> {
        chunk_in(&self.chunks, key, offset)
    }

    pub(super) fn set_chunk(
        &mut self,
        key: u64,
        offset: u64,
        place: (u64, u64, u32),
    ) -> Result<(), StoreError> {
        self.chunks.insert((key, offset), place).map_err(db_err)?;
        Ok(())
    }

    /// The key the next created stream gets.
    pub(super) fn next_key(&self) -> Result<u64, StoreError> {
        Ok(self
            .state
            .get("next_key")
            .map_err(db_err)?
            .map_or(1, |g| g.value().0))
    }

    /// Applies one log record found at `(segment, pos)`. With `replay`, records the index already
    /// reflects are skipped, so replaying from an older checkpoint is harmless.
    pub(super) fn apply(
        &mut self,
        record: Record<'_>,
        segment: u64,
        pos: u64,
        replay: bool,
    ) -> Result<(), StoreError> {
        match record {
            Record::Create { key, time, name } => {
                if self.keys.get(key).map_err(db_err)?.is_some() {
                    return skip_or_fail(replay, "create of an existing key");
                }
                let meta = Meta {
                    key,
                    length: 0,
                    sealed: false,
                    created: time,
                    updated: time,
                };
                self.streams.insert(name, meta.tuple()).map_err(db_err)?;
                self.keys.insert(key, name).map_err(db_err)?;
                if key >= self.next_key()? {
                    self.state
                        .insert("next_key", (key + 1, 0))
                        .map_err(db_err)?;
                }
            }
            Record::Append {
                key,
                offset,
                time,
                data,
            } => {
                let Some((name, mut meta)) = self.meta_by_key(key)? else {
                    return skip_or_fail(replay, "append to a missing stream");
                };
                if offset < meta.length {
                    return skip_or_fail(replay, "append below the stream length");
                }
                if offset > meta.length && replay && self.tolerate_gaps {
                    return Ok(());
                }
                if offset > meta.length {
                    return Err(StoreError::internal(format!(
                        "log and index disagree: stream {name} is {} bytes, log appends at {offset}",
                        meta.length
                    )));
                }
                // data.len() <= MAX_PAYLOAD, checked by the log reader and the store
                let len = data.len() as u32;
                if len > 0 {
                    self.chunks
                        .insert((key, offset), (segment, pos + APPEND_DATA_OFFSET, len))
                        .map_err(db_err)?;
                }
                meta.length += u64::from(len);
                meta.updated = time;
                self.streams
                    .insert(name.as_str(), meta.tuple())
                    .map_err(db_err)?;
            }
            Record::Seal { key, time } => {
                let Some((name, mut meta)) = self.meta_by_key(key)? else {
                    return skip_or_fail(replay, "seal of a missing stream");
                };
                meta.sealed = true;
                meta.updated = time;
                self.streams
                    .insert(name.as_str(), meta.tuple())
                    .map_err(db_err)?;
            }
            Record::Delete { key, .. } => {
                let Some((name, _)) = self.meta_by_key(key)? else {
                    return skip_or_fail(replay, "delete of a missing stream");
                };
                let mut dead: BTreeMap<u64, u64> = BTreeMap::new();
                self.chunks
                    .retain_in((key, 0)..=(key, u64::MAX), |_, (segment, _, len)| {
                        let number = SegmentId::unpack(segment).number;
                        *dead.entry(number).or_default() += APPEND_DATA_OFFSET + u64::from(len);
                        false
                    })
                    .map_err(db_err)?;
                for (number, bytes) in dead {
                    let (generation, before) = self
                        .segments
                        .get(number)
                        .map_err(db_err)?
                        .map_or((0, 0), |g| g.value());
                    self.segments
                        .insert(number, (generation, before + bytes))
                        .map_err(db_err)?;
                }
                self.keys.remove(key).map_err(db_err)?;
                self.streams.remove(name.as_str()).map_err(db_err)?;
            }
        }
        Ok(())
    }
}

fn skip_or_fail(replay: bool, what: &str) -> Result<(), StoreError> {
    if replay {
        Ok(())
    } else {
        Err(StoreError::internal(format!("index: {what}")))
    }
}

// Reads shared by the writer's tables and the readers' snapshot (redb's `ReadableTable`).

fn meta_in(
    streams: &impl ReadableTable<&'static str, (u64, u64, bool, u64, u64)>,
    name: &str,
) -> Result<Option<Meta>, StoreError> {
    let found = streams.get(name).map_err(db_err)?;
    Ok(found.map(|g| Meta::from_tuple(g.value())))
}

fn chunk_in(
    chunks: &impl ReadableTable<(u64, u64), (u64, u64, u32)>,
    key: u64,
    offset: u64,
) -> Result<Option<(u64, u64, u32)>, StoreError> {
    Ok(chunks
        .get((key, offset))
        .map_err(db_err)?
        .map(|g| g.value()))
}

fn segments_in(
    segments: &impl ReadableTable<u64, (u64, u64)>,
) -> Result<BTreeMap<u64, (u64, u64)>, StoreError> {
    let mut out = BTreeMap::new();
    for entry in segments.iter().map_err(db_err)? {
        let (k, v) = entry.map_err(db_err)?;
        out.insert(k.value(), v.value());
    }
    Ok(out)
}

/// A piece of a read: `take` bytes from `skip` into the chunk (one append record) whose data
/// starts at `pos` in `segment` (packed id) and is `len` bytes long, at stream offset `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Piece {
    pub(super) segment: u64,
    pub(super) pos: u64,
    pub(super) len: u32,
    pub(super) offset: u64,
    pub(super) skip: usize,
    pub(super) take: usize,
}

/// A consistent view of the index for readers.
pub(super) struct Snapshot {
    streams: ReadOnlyTable<&'static str, (u64, u64, bool, u64, u64)>,
    keys: ReadOnlyTable<u64, &'static str>,
    chunks: ReadOnlyTable<(u64, u64), (u64, u64, u32)>,
    segments: ReadOnlyTable<u64, (u64, u64)>,
}

impl Snapshot {
    pub(super) fn new(txn: &ReadTransaction) -> Result<Self, StoreError> {
        Ok(Snapshot {
            streams: txn.open_table(STREAMS).map_err(db_err)?,
            keys: txn.open_table(KEYS).map_err(db_err)?,
            chunks: txn.open_table(CHUNKS).map_err(db_err)?,
            segments: txn.open_table(SEGMENTS).map_err(db_err)?,
        })
    }

    /// Whether stream key `key` is live (created and not deleted).
    pub(super) fn has_key(&self, key: u64) -> Result<bool, StoreError> {
        Ok(self.keys.get(key).map_err(db_err)?.is_some())
    }

    pub(super) fn chunk(
        &self,
        key: u64,
        offset: u64,
    ) -> Result<Option<(u64, u64, u32)>, StoreError> {
        chunk_in(&self.chunks, key, offset)
    }

    /// Segment number -> (generation, dead bytes), for every segment with a row.
    pub(super) fn segments(&self) -> Result<BTreeMap<u64, (u64, u64)>, StoreError> {
        segments_in(&self.segments)
    }

    pub(super) fn meta(&self, name: &str) -> Result<Option<Meta>, StoreError> {
        meta_in(&self.streams, name)
    }

    /// Streams whose name starts with `prefix`, in name order, at most `limit`.
    pub(super) fn list(&self, prefix: &str, limit: usize) -> Result<Vec<StreamInfo>, StoreError> {
        let mut out = Vec::new();
        for entry in self.streams.range(prefix..).map_err(db_err)? {
            if out.len() >= limit {
                break;
            }
            let (name, meta) = entry.map_err(db_err)?;
            if !name.value().starts_with(prefix) {
                break;
            }
            out.push(Meta::from_tuple(meta.value()).info(name.value()));
        }
        Ok(out)
    }

    /// Where the `want` bytes from `offset` of stream `key` are. The caller checked that
    /// `offset + want` is within the stream's length.
    pub(super) fn pieces(
        &self,
        key: u64,
        offset: u64,
        want: u64,
    ) -> Result<Vec<Piece>, StoreError> {
        let mut pieces = Vec::new();
        let start = self
            .chunks
            .range((key, 0)..=(key, offset))
            .map_err(db_err)?
            .next_back()
            .transpose()
            .map_err(db_err)?
            .map(|(k, _)| k.value().1)
            .ok_or_else(|| StoreError::internal(format!("index: no chunk at offset {offset}")))?;
        let mut at = offset;
        let end = offset + want;
        for entry in self
            .chunks
            .range((key, start)..=(key, u64::MAX))
            .map_err(db_err)?
        {
            if at >= end {
                break;
            }
            let (k, v) = entry.map_err(db_err)?;
            let (chunk_offset, (segment, pos, len)) = (k.value().1, v.value());
            let chunk_end = chunk_offset + u64::from(len);
            if chunk_offset > at || chunk_end <= at {
                return Err(StoreError::internal(format!(
                    "index: gap in stream at offset {at}"
                )));
            }
            let take = chunk_end.min(end) - at;
            pieces.push(Piece {
                segment,
                pos,
                len,
                offset: chunk_offset,
                skip: (at - chunk_offset) as usize,
                take: take as usize,
            });
            at += take;
        }
        if at < end {
            return Err(StoreError::internal(format!(
                "index: chunks end at {at}, before {end}"
            )));
        }
        Ok(pieces)
    }
}

//! Compaction: deleted (and expired) streams give their disk space back.
//!
//! A closed segment whose deleted bytes (tracked per segment in the index when a stream is
//! deleted) reach a share of its size is rewritten: its live records, in their order, go into
//! the segment's next generation; one durable index transaction moves the chunks to it; then the
//! old file is removed. Crash safety (kill -9 at any moment loses nothing live):
//! - before the rename, only `{next}.seg.tmp` exists: removed at open;
//! - after the rename, before the commit: the index still names the old generation, so the open
//!   removes the new file (a copy);
//! - after the commit: the open removes the old file (its live records are in the new one).
//!
//! Only segments before the writer's durable checkpoint are touched: the open replays from that
//! checkpoint, by position, and those positions must stay valid. Delete records are always kept
//! (tombstones): an older segment may still hold the deleted stream's records for a rebuild.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::{Duration, Instant};

use redb::{Durability, ReadableDatabase};
use tracing::{error, info};

use super::Shared;
use super::index::{Snapshot, Tables, db_err};
use super::log::{self, APPEND_DATA_OFFSET, Record, SegmentId};
use super::scan::{self, Event, Tail};
use crate::store::{ErrorKind, StoreError};

/// What one compaction pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Segments rewritten (or removed, when nothing in them was live).
    pub segments: u64,
    /// Their size before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub millis: u64,
}

/// Compacts every closed segment whose deleted bytes are at least `ratio` of its size.
pub(super) fn compact(shared: &Shared, ratio: f64) -> Result<CompactReport, StoreError> {
    let _one_at_a_time = shared.compacting.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let below = shared.durable_segment.load(SeqCst);
    let rows = {
        let txn = shared.db.begin_read().map_err(db_err)?;
        Snapshot::new(&txn)?.segments()?
    };
    let files = log::list_segments(&shared.dir)
        .map_err(|e| StoreError::internal(format!("listing segments: {e}")))?;
    let mut report = CompactReport::default();
    for id in files {
        let (generation, dead) = rows.get(&id.number).copied().unwrap_or((0, 0));
        if id.number >= below || id.generation != generation || dead == 0 {
            continue;
        }
        let size = fs::metadata(id.path(&shared.dir)).map_or(0, |m| m.len());
        if (dead as f64) < ratio * size as f64 {
            continue;
        }
        let after = match compact_one(shared, id) {
            Ok(after) => after,
            // a damaged segment stays as it is; the others are still compacted
            Err(err) if err.kind() == ErrorKind::Corrupted => continue,
            Err(err) => return Err(err),
        };
        report.segments += 1;
        report.bytes_before += size;
        report.bytes_after += after;
        let metrics = &shared.metrics;
        metrics.compacted_segments.fetch_add(1, Relaxed);
        metrics
            .reclaimed_bytes
            .fetch_add(size.saturating_sub(after), Relaxed);
    }
    report.millis = started.elapsed().as_millis() as u64;
    if report.segments > 0 {
        info!(
            segments = report.segments,
            bytes_before = report.bytes_before,
            bytes_after = report.bytes_after,
            millis = report.millis,
            "store compacted"
        );
    }
    Ok(report)
}

/// Compaction syncs what it wrote (and paces itself) every this many bytes.
const PACE_BYTES: u64 = 4 << 20;

/// A chunk moved by compaction: its key, offset, and old and new place.
type Moved = (u64, u64, (u64, u64, u32), (u64, u64, u32));

/// Rewrites one segment; returns the size of what replaced it (0: removed).
fn compact_one(shared: &Shared, id: SegmentId) -> Result<u64, StoreError> {
    let dir = &shared.dir;
    let next = SegmentId::new(id.number, id.generation + 1);
    let tmp = dir.join("segments").join(format!("{next}.tmp"));
    let io = |what: &str, e: std::io::Error| {
        StoreError::internal(format!("compacting segment {id}: {what}: {e}"))
    };
    let mut out =
        BufWriter::with_capacity(1 << 20, File::create(&tmp).map_err(|e| io("creating", e))?);
    let mut moved: Vec<Moved> = Vec::new();
    let (mut written, mut damaged, mut buf) = (0u64, false, Vec::new());
    let (mut synced, rate, started) = (0u64, shared.compact_rate, Instant::now());
    {
        let txn = shared.db.begin_read().map_err(db_err)?;
        let snapshot = Snapshot::new(&txn)?;
        scan::walk(dir, &[id], (id.number, 0), Tail::Exact, |event| {
            let (record, pos) = match event {
                Event::Record { record, pos, .. } => (record, pos),
                // a pad is not copied: the new generation is written through a buffer, where data
                // needs no placing on a block
                Event::Pad { .. } => return Ok(()),
                Event::Bad(_) => {
                    damaged = true;
                    return Ok(());
                }
            };
            let keep = match record {
                Record::Create { key, .. } | Record::Seal { key, .. } => snapshot.has_key(key)?,
                Record::Delete { .. } => true,
                Record::Append {
                    key, offset, data, ..
                } => {
                    let place = (id.packed(), pos + APPEND_DATA_OFFSET, data.len() as u32);
                    let live = snapshot.chunk(key, offset)? == Some(place);
                    if live {
                        let new = (next.packed(), written + APPEND_DATA_OFFSET, place.2);
                        moved.push((key, offset, place, new));
                    }
                    live
                }
            };
            if keep {
                buf.clear();
                record.encode(&mut buf);
                out.write_all(&buf).map_err(|e| io("writing", e))?;
                written += buf.len() as u64;
                if written - synced >= PACE_BYTES {
                    // write back as we go (one huge flush at the end would stall the writer's
                    // fdatasyncs behind it), and keep to the configured rate
                    out.flush().map_err(|e| io("writing", e))?;
                    out.get_ref().sync_data().map_err(|e| io("syncing", e))?;
                    synced = written;
                    if rate > 0 {
                        let due = Duration::from_secs_f64(written as f64 / rate as f64);
                        if let Some(wait) = due.checked_sub(started.elapsed()) {
                            std::thread::sleep(wait);
                        }
                    }
                }
            }
            Ok(())
        })?;
    }
    if damaged {
        drop(out);
        let _ = fs::remove_file(&tmp);
        error!(segment = %id, "segment fails its checksums; not compacted (see `engine-gateway store check`)");
        return Err(StoreError::new(
            ErrorKind::Corrupted,
            format!("segment {id} is damaged; compaction left it alone"),
        ));
    }
    let file = out
        .into_inner()
        .map_err(|e| io("writing", e.into_error()))?;
    if written > 0 {
        file.sync_all().map_err(|e| io("syncing", e))?;
        fs::rename(&tmp, next.path(dir)).map_err(|e| io("renaming", e))?;
    } else {
        drop(file);
        fs::remove_file(&tmp).map_err(|e| io("removing", e))?;
    }
    log::sync_dir(&dir.join("segments")).map_err(|e| io("syncing the directory", e))?;
    let mut txn = shared.db.begin_write().map_err(db_err)?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| StoreError::internal(format!("index: {e}")))?;
    {
        let mut tables = Tables::open(&txn)?;
        let mut dead = 0;
        for (key, offset, old, new) in &moved {
            // a stream deleted since the snapshot: its copy is dead in the new file
            if tables.chunk(*key, *offset)? == Some(*old) {
                tables.set_chunk(*key, *offset, *new)?;
            } else {
                dead += APPEND_DATA_OFFSET + u64::from(new.2);
            }
        }
        if written > 0 {
            tables.set_segment(id.number, next.generation, dead)?;
        } else {
            tables.remove_segment(id.number)?;
        }
    }
    txn.commit().map_err(db_err)?;
    shared.files.forget(id.packed());
    fs::remove_file(id.path(dir)).map_err(|e| io("removing the old file", e))?;
    // a read with a snapshot from before the commit may have opened it again meanwhile
    shared.files.forget(id.packed());
    log::sync_dir(&dir.join("segments")).map_err(|e| io("syncing the directory", e))?;
    Ok(written)
}

//! Opening after a crash: replay the log since the index's checkpoint, cut a torn tail, refuse
//! damage.
//!
//! The rules, in order (ARCHITECTURE.md, "Recovery"):
//! 1. Unreadable bytes followed by any valid record, in any segment, are damage: the store
//!    refuses to open, naming segments, positions and streams, and changes nothing.
//! 2. Unreadable bytes at the very end of the last segment, no larger than one write of the
//!    writer (a batch), are the torn last write: never acknowledged, so they may be cut. They
//!    are copied to `quarantine/` first; nothing is deleted.
//! 3. Anything else unreadable (a tail in an older segment, a tail larger than one write) is
//!    damage too.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use redb::Database;
use tracing::{info, warn};

use super::index::{Tables, db_err};
use super::log::{self, Record, SegmentId};
use super::metrics::RecoveryReport;
use super::scan::{self, DamageReport, Event, Region, Tail};
use crate::store::{ErrorKind, StoreError};

/// What recovery found: where the writer continues, the next stream key, the report.
pub(super) struct Recovered {
    pub(super) end: (SegmentId, u64),
    pub(super) next_key: u64,
    pub(super) report: RecoveryReport,
}

/// Replays the log into the index in one transaction, committed only when the log is sound.
pub(super) fn recover(db: &Database, dir: &Path, max_write: u64) -> Result<Recovered, StoreError> {
    let txn = db.begin_write().map_err(db_err)?;
    let result = {
        let mut tables = Tables::open(&txn)?;
        replay(&mut tables, dir, max_write)
    };
    match result {
        Ok(recovered) => {
            txn.commit().map_err(db_err)?;
            Ok(recovered)
        }
        Err(err) => {
            let _ = txn.abort();
            Err(err)
        }
    }
}

fn replay(tables: &mut Tables<'_>, dir: &Path, max_write: u64) -> Result<Recovered, StoreError> {
    let io_err = |what: &str, e: std::io::Error| StoreError::internal(format!("{what}: {e}"));
    remove_temporaries(dir).map_err(|e| io_err("removing unfinished compaction files", e))?;
    let files = log::list_segments(dir).map_err(|e| io_err("listing segments", e))?;
    let checkpoint = tables.checkpoint()?;
    let rows = tables.segments()?;
    let rebuilding = checkpoint.is_none();
    let (live, stale) = scan::choose_generations(&files, |n| {
        if rebuilding {
            None
        } else {
            Some(rows.get(&n).map_or(0, |r| r.0))
        }
    })?;
    for id in &stale {
        // a compaction or repair output the index never committed, or the file it replaced
        info!(segment = %id, "removing a segment file the index does not use");
        fs::remove_file(id.path(dir)).map_err(|e| io_err("removing a stale segment", e))?;
    }
    if !stale.is_empty() {
        log::sync_dir(&dir.join("segments")).map_err(|e| io_err("syncing segments", e))?;
    }
    if rebuilding {
        tables.tolerate_gaps = true;
        for id in live.iter().filter(|id| id.generation > 0) {
            tables.set_segment(id.number, id.generation, 0)?;
        }
    }
    let from = checkpoint.unwrap_or((live.first().map_or(0, |s| s.number), 0));
    if from.1 > 0 && !live.iter().any(|s| s.number == from.0) {
        return Err(StoreError::internal(format!(
            "segment {} named by the index checkpoint is missing",
            from.0
        )));
    }
    let mut report = RecoveryReport::default();
    let mut bad: Vec<Region> = Vec::new();
    let mut confirmed = 0;
    let mut damage = DamageReport::default();
    let mut after: HashMap<u64, (String, Option<u64>)> = HashMap::new();
    let last = scan::walk(dir, &live, from, Tail::Prepared, |event| match event {
        Event::Bad(region) => {
            bad.push(region);
            Ok(())
        }
        Event::Pad { len } => {
            if bad.is_empty() {
                report.bytes += len;
            }
            Ok(())
        }
        Event::Record {
            record,
            segment,
            pos,
            len,
        } => {
            if bad.is_empty() {
                report.records += 1;
                report.bytes += len;
                return tables.apply(record, segment.packed(), pos, true);
            }
            // valid records after unreadable bytes: damage; note which streams it breaks
            confirmed = bad.len();
            note_after_damage(tables, &mut after, &mut damage, record)
        }
    })?;
    let end = last.unwrap_or((SegmentId::new(from.0, 0), 0));
    if bad.is_empty() {
        tables.set_checkpoint(end.0.number, end.1)?;
        return Ok(Recovered {
            end,
            next_key: tables.next_key()?,
            report,
        });
    }
    let torn = confirmed == 0
        && bad.len() == 1
        && bad[0].segment == end.0
        && bad[0].pos + bad[0].len == end.1
        && bad[0].len <= max_write;
    if !torn {
        for region in &bad {
            if let Some((kind, key, word)) = region.claimed {
                let name = match after.get(&key) {
                    Some((name, _)) => name.clone(),
                    None => match tables.meta_by_key(key)? {
                        Some((name, _)) => name,
                        None => continue,
                    },
                };
                let offset = if kind == log::APPEND {
                    word
                } else {
                    tables.meta_by_key(key)?.map_or(0, |(_, m)| m.length)
                };
                damage.affect(name, offset);
            }
        }
        let why = if confirmed > 0 {
            "valid records follow"
        } else if bad[0].segment != end.0 || bad.len() > 1 {
            "later segments exist, so it was written and synced before them"
        } else {
            "it is larger than one write of the log"
        };
        damage.regions = bad;
        warn!(damage = %damage, "store log is damaged; refusing to open");
        return Err(StoreError::new(
            ErrorKind::Corrupted,
            format!(
                "store log in {} is damaged ({why}): {damage}. nothing was changed; \
                 `engine-gateway store check` reports it, `engine-gateway store repair` moves \
                 the damaged records to quarantine and keeps every intact one",
                dir.display()
            ),
        ));
    }
    let region = &bad[0];
    quarantine_tail(dir, region).map_err(|e| io_err("cutting the torn tail", e))?;
    warn!(
        segment = %region.segment,
        position = region.pos,
        bytes = region.len,
        "cut the torn last write of the log (never acknowledged; copied to quarantine)"
    );
    report.truncated_bytes = region.len;
    let end = (end.0, region.pos);
    tables.set_checkpoint(end.0.number, end.1)?;
    Ok(Recovered {
        end,
        next_key: tables.next_key()?,
        report,
    })
}

/// Tracks stream lengths through the records after damage, noting streams that lost bytes.
fn note_after_damage(
    tables: &Tables<'_>,
    after: &mut HashMap<u64, (String, Option<u64>)>,
    damage: &mut DamageReport,
    record: Record<'_>,
) -> Result<(), StoreError> {
    let (key, offset, len) = match record {
        Record::Create { key, name, .. } => {
            after.insert(key, (name.to_owned(), Some(0)));
            return Ok(());
        }
        Record::Append {
            key, offset, data, ..
        } => (key, offset, data.len() as u64),
        Record::Seal { .. } | Record::Delete { .. } => return Ok(()),
    };
    if let std::collections::hash_map::Entry::Vacant(slot) = after.entry(key) {
        slot.insert(match tables.meta_by_key(key)? {
            Some((name, meta)) => (name, Some(meta.length)),
            None => (format!("key {key}"), None),
        });
    }
    if let Some((name, length)) = after.get_mut(&key) {
        match length {
            Some(l) if offset > *l => damage.affect(name.clone(), *l),
            Some(_) => {}
            None => damage.affect(name.clone(), offset),
        }
        *length = Some(length.unwrap_or(0).max(offset + len));
    }
    Ok(())
}

/// Copies the torn tail to `quarantine/` (durably), then cuts it from the segment.
fn quarantine_tail(dir: &Path, region: &Region) -> std::io::Result<()> {
    let qdir = dir.join("quarantine");
    fs::create_dir_all(&qdir)?;
    let path = qdir.join(format!("{}.{}.torn", region.segment, region.pos));
    let segment = OpenOptions::new()
        .read(true)
        .write(true)
        .open(region.segment.path(dir))?;
    let mut bytes = vec![0u8; region.len as usize];
    segment.read_exact_at(&mut bytes, region.pos)?;
    let mut out = File::create(&path)?;
    out.write_all(&bytes)?;
    out.sync_all()?;
    log::sync_dir(&qdir)?;
    segment.set_len(region.pos)?;
    segment.sync_all()
}

/// Removes `segments/*.tmp`: compaction or repair outputs a crash interrupted before their
/// rename (copies of records the log still holds).
fn remove_temporaries(dir: &Path) -> std::io::Result<()> {
    let segments = dir.join("segments");
    let mut removed = false;
    for entry in fs::read_dir(&segments)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "tmp") {
            info!(file = %path.display(), "removing an unfinished compaction output");
            fs::remove_file(&path)?;
            removed = true;
        }
    }
    if removed {
        log::sync_dir(&segments)?;
    }
    Ok(())
}

//! The operator's tools for a damaged log: `engine-gateway store check` and `store repair`.
//!
//! Both read the whole log (every generation chosen as at an index rebuild) with the store's
//! lock held, so they never run beside a gateway. `repair` moves what cannot be kept to
//! `quarantine/repair-{time}/` (raw bytes plus a manifest), never deletes it, and keeps every
//! intact record: unreadable regions; and, for a stream that lost bytes to damage, its records
//! after the gap (the stream ends at the damage offset, so its writer can resume from there).
//! The damaged segments are rewritten into new generations, the index is rebuilt from the log.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tracing::warn;

use super::log::{self, Record, SegmentId};
use super::scan::{self, DamageReport, Event, Region, Tail};
use super::{EmbeddedConfig, MAX_APPEND_BYTES, index, lock_dir, recovery};
use crate::store::{StoreError, unix_now};

/// What `check` found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Damage and the streams it touches; empty when the log is sound.
    pub damage: DamageReport,
    /// Unreadable bytes at the very end that the next open cuts as a torn last write.
    pub torn_tail_bytes: u64,
    /// Zero bytes the writer wrote ahead of the log's end, after its last record (a store not
    /// closed cleanly); not data, and never damage.
    pub prepared_bytes: u64,
    pub segments: usize,
    pub records: u64,
    pub bytes: u64,
    /// Of `bytes`, those of pad records (they place data on a block; see ARCHITECTURE.md).
    pub pad_bytes: u64,
    /// Records `repair` would move to quarantine besides the unreadable regions.
    pub records_to_quarantine: u64,
}

/// What `repair` did.
#[derive(Debug, Default)]
pub struct RepairReport {
    pub check: CheckReport,
    /// Where the quarantined bytes are, when anything was quarantined.
    pub quarantine: Option<PathBuf>,
    pub quarantined_bytes: u64,
    pub rewritten_segments: Vec<String>,
}

/// Reads the whole log and reports damage without changing anything.
pub fn check(config: &EmbeddedConfig) -> Result<CheckReport, StoreError> {
    let _lock = lock_dir(&config.dir)?;
    Ok(analyze(config)?.report)
}

/// Quarantines damaged records and what depends on them, keeps every intact record, and
/// rebuilds the index. Logged at warn level, one line per action.
pub fn repair(config: &EmbeddedConfig) -> Result<RepairReport, StoreError> {
    let dir = &config.dir;
    let _lock = lock_dir(dir)?;
    let analysis = analyze(config)?;
    let mut out = RepairReport::default();
    let io = |what: &str, e: std::io::Error| StoreError::internal(format!("{what}: {e}"));
    if !analysis.dirty.is_empty() {
        let qdir = dir
            .join("quarantine")
            .join(format!("repair-{}", unix_now()));
        fs::create_dir_all(&qdir).map_err(|e| io("creating the quarantine directory", e))?;
        let mut manifest = File::create(qdir.join("manifest.txt"))
            .map_err(|e| io("creating the quarantine manifest", e))?;
        writeln!(
            manifest,
            "# offset_in_file\tlength\tfile\tsegment\tposition\twhat"
        )
        .map_err(|e| io("writing the manifest", e))?;
        for &segment in &analysis.dirty {
            let bytes = rewrite(dir, segment, &analysis, &qdir, &mut manifest)
                .map_err(|e| io(&format!("rewriting segment {segment}"), e))?;
            out.quarantined_bytes += bytes;
            out.rewritten_segments.push(segment.to_string());
        }
        manifest
            .sync_all()
            .map_err(|e| io("syncing the manifest", e))?;
        log::sync_dir(&qdir).map_err(|e| io("syncing quarantine", e))?;
        log::sync_dir(&dir.join("segments")).map_err(|e| io("syncing segments", e))?;
        // the index names positions in the old files: rebuild it from the repaired log
        let index = dir.join("index.redb");
        if index.exists() {
            fs::remove_file(&index).map_err(|e| io("removing the index", e))?;
            log::sync_dir(dir).map_err(|e| io("syncing the store directory", e))?;
            warn!(index = %index.display(), "repair: index removed, rebuilding it from the log");
        }
        for &segment in &analysis.dirty {
            fs::remove_file(segment.path(dir)).map_err(|e| io("removing a repaired segment", e))?;
        }
        log::sync_dir(&dir.join("segments")).map_err(|e| io("syncing segments", e))?;
        out.quarantine = Some(qdir);
    }
    let db = index::open_db(&dir.join("index.redb"), config.index_cache_bytes)?;
    recovery::recover(&db, dir, max_write(config))?;
    out.check = analysis.report;
    Ok(out)
}

/// The most bytes one write of the writer can leave torn at the log's end: a batch (its last
/// request may pass the batch limit), or zeros written ahead of the end over ones written
/// before (on ext4 without a journal, blocks allocated but not yet written can read as old
/// bytes after a crash).
pub(super) fn max_write(config: &EmbeddedConfig) -> u64 {
    (config.max_batch_bytes + MAX_APPEND_BYTES) as u64 + (64 << 10) + log::PREPARED_MAX
}

/// The checkpoint the index committed, if there is an index.
fn durable_checkpoint(config: &EmbeddedConfig) -> Result<Option<(u64, u64)>, StoreError> {
    let path = config.dir.join("index.redb");
    if !path.exists() {
        return Ok(None);
    }
    let db = index::open_db(&path, config.index_cache_bytes)?;
    let txn = db.begin_write().map_err(index::db_err)?;
    let checkpoint = index::Tables::open(&txn)?.checkpoint()?;
    txn.abort().map_err(index::db_err)?;
    Ok(checkpoint)
}

/// One pass over the whole log: damage, and the records that cannot be kept.
struct Analysis {
    report: CheckReport,
    /// (segment, position) of each intact record to quarantine, with why (for the manifest).
    why: HashMap<(SegmentId, u64), String>,
    /// Segments holding anything to quarantine.
    dirty: BTreeSet<SegmentId>,
    /// The last segment: the only one that may end in zeros written ahead of the log.
    last: Option<SegmentId>,
}

struct KeyState {
    name: String,
    length: u64,
    broken: bool,
}

fn analyze(config: &EmbeddedConfig) -> Result<Analysis, StoreError> {
    let dir = &config.dir;
    let files = log::list_segments(dir)
        .map_err(|e| StoreError::internal(format!("listing segments: {e}")))?;
    let (live, _) = scan::choose_generations(&files, |_| None)?;
    let mut report = CheckReport {
        segments: live.len(),
        ..CheckReport::default()
    };
    let mut why = HashMap::new();
    let mut dirty = BTreeSet::new();
    let mut keys: HashMap<u64, KeyState> = HashMap::new();
    let mut regions: Vec<Region> = Vec::new();
    let mut valid_after_last_bad = false;
    // bytes before the index's durable checkpoint were acknowledged: never a torn write
    let checkpoint = durable_checkpoint(config)?;
    let from = (live.first().map_or(0, |s| s.number), 0);
    let last = scan::walk(dir, &live, from, Tail::Prepared, |event| {
        match event {
            Event::Bad(region) => {
                if let Some((kind, key, word)) = region.claimed
                    && let Some(state) = keys.get_mut(&key)
                {
                    let offset = if kind == log::APPEND {
                        word.min(state.length)
                    } else {
                        state.length
                    };
                    report.damage.affect(state.name.clone(), offset);
                }
                dirty.insert(region.segment);
                regions.push(region);
                valid_after_last_bad = false;
            }
            Event::Pad { len } => {
                report.bytes += len;
                report.pad_bytes += len;
            }
            Event::Record {
                record,
                segment,
                pos,
                len,
            } => {
                valid_after_last_bad = true;
                report.records += 1;
                report.bytes += len;
                let damaged = !regions.is_empty();
                let reason = classify(record, &mut keys, damaged, &mut report.damage);
                if let Some(reason) = reason {
                    why.insert((segment, pos), reason);
                    dirty.insert(segment);
                    report.records_to_quarantine += 1;
                }
            }
        }
        Ok(())
    })?;
    // a lone unreadable region ending the last segment, small enough to be one write, is the
    // torn last write: reported apart, and cut (to quarantine) at the next open
    if let (Some(region), Some((segment, len))) = (regions.last(), last)
        && !valid_after_last_bad
        && regions.len() == 1
        && region.segment == segment
        && region.pos + region.len == len
        && region.len <= max_write(config)
        && why.is_empty()
        && checkpoint.is_none_or(|(n, p)| (region.segment.number, region.pos) >= (n, p))
    {
        report.torn_tail_bytes = region.len;
        regions.clear();
        dirty.clear();
    }
    if let Some((segment, len)) = last {
        let file_len = fs::metadata(segment.path(dir))
            .map_err(|e| StoreError::internal(format!("reading the size of {segment}: {e}")))?
            .len();
        report.prepared_bytes = file_len.saturating_sub(len);
    }
    report.damage.regions = regions;
    Ok(Analysis {
        report,
        why,
        dirty,
        last: last.map(|(segment, _)| segment),
    })
}

/// Whether an intact record must go to quarantine (and why), tracking each stream's length
/// through the log.
fn classify(
    record: Record<'_>,
    keys: &mut HashMap<u64, KeyState>,
    damaged: bool,
    damage: &mut DamageReport,
) -> Option<String> {
    match record {
        Record::Create { key, name, .. } => {
            keys.entry(key).or_insert(KeyState {
                name: name.to_owned(),
                length: 0,
                broken: false,
            });
            None
        }
        Record::Append {
            key, offset, data, ..
        } => match keys.get_mut(&key) {
            Some(s) if s.broken => Some(format!("stream {} offset {offset}: after damage", s.name)),
            // before any damage, a gap is compaction's: the records of a deleted stream, removed
            // from some segments already; its delete record follows
            Some(s) if offset > s.length && !damaged => {
                s.length = offset + data.len() as u64;
                None
            }
            Some(s) if offset > s.length => {
                s.broken = true;
                damage.affect(s.name.clone(), s.length);
                Some(format!(
                    "stream {} offset {offset}: after damage (bytes from {} are lost)",
                    s.name, s.length
                ))
            }
            Some(s) => {
                s.length = s.length.max(offset + data.len() as u64);
                None
            }
            None if damaged => {
                damage.affect(format!("key {key}"), offset);
                Some(format!(
                    "key {key} offset {offset}: its stream's create record is damaged"
                ))
            }
            // a deleted stream's leftovers, before any damage: the replay skips them
            None => None,
        },
        Record::Seal { key, .. } => match keys.get(&key) {
            Some(s) if s.broken => Some(format!("stream {}: seal after damage", s.name)),
            None if damaged => Some(format!(
                "key {key}: seal of a stream whose create is damaged"
            )),
            _ => None,
        },
        Record::Delete { key, .. } => {
            keys.remove(&key);
            None
        }
    }
}

/// Writes `segment`'s kept records into its next generation and everything else into the
/// quarantine file; returns the bytes quarantined.
fn rewrite(
    dir: &Path,
    segment: SegmentId,
    analysis: &Analysis,
    qdir: &Path,
    manifest: &mut File,
) -> std::io::Result<u64> {
    let next = SegmentId::new(segment.number, segment.generation + 1);
    let tmp = dir.join("segments").join(format!("{next}.tmp"));
    let mut kept = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
    let qname = format!("{segment}.bin");
    let mut quarantine = BufWriter::new(File::create(qdir.join(&qname))?);
    let source = File::open(segment.path(dir))?;
    let (mut qpos, mut buf) = (0u64, Vec::new());
    let mut io_error = None;
    // the zeros ending the last segment are not log bytes: neither kept nor quarantined
    let tail = if analysis.last == Some(segment) {
        Tail::Prepared
    } else {
        Tail::Exact
    };
    let walked = scan::walk(dir, &[segment], (segment.number, 0), tail, |event| {
        let result = (|| -> std::io::Result<()> {
            let (what, pos) = match event {
                Event::Record { record, pos, .. } => {
                    buf.clear();
                    record.encode(&mut buf);
                    match analysis.why.get(&(segment, pos)) {
                        None => return kept.write_all(&buf),
                        Some(why) => (why.clone(), pos),
                    }
                }
                // a pad is not kept: the new generation is written through a buffer, where data
                // needs no placing on a block
                Event::Pad { .. } => return Ok(()),
                Event::Bad(region) => {
                    buf.resize(region.len as usize, 0);
                    source.read_exact_at(&mut buf, region.pos)?;
                    ("unreadable bytes".to_owned(), region.pos)
                }
            };
            quarantine.write_all(&buf)?;
            writeln!(
                manifest,
                "{qpos}\t{}\t{qname}\t{segment}\t{pos}\t{what}",
                buf.len()
            )?;
            warn!(segment = %segment, position = pos, bytes = buf.len(), what = %what, "repair: moved to quarantine");
            qpos += buf.len() as u64;
            Ok(())
        })();
        if let Err(e) = result {
            io_error.get_or_insert(e);
        }
        Ok(())
    });
    if let Some(e) = io_error {
        return Err(e);
    }
    walked.map_err(std::io::Error::other)?;
    let kept = kept.into_inner().map_err(|e| e.into_error())?;
    kept.sync_all()?;
    quarantine
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    fs::rename(&tmp, next.path(dir))?;
    warn!(from = %segment, to = %next, "repair: segment rewritten without its damaged records");
    Ok(qpos)
}

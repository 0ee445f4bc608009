//! Walking the log: every valid record in order, and every unreadable region between them.
//!
//! A region that fails its frame or checksum is not the end of the walk: the walker searches
//! forward for the next valid record, so the caller learns whether anything valid follows. That
//! is what tells a torn tail (nothing after it: the last write, never acknowledged) from damage
//! (valid records after it: bytes that were acknowledged once).

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::log::{self, HEADER_LEN, Record, SegmentId};
use crate::store::StoreError;

/// Bytes of the log that are not a valid record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Region {
    pub(super) segment: SegmentId,
    pub(super) pos: u64,
    pub(super) len: u64,
    /// What the region's header claims, if it still has a plausible one: (type, key, offset
    /// or time). Used to name the stream a damaged record belonged to.
    pub(super) claimed: Option<(u8, u64, u64)>,
}

/// One step of the walk.
pub(super) enum Event<'a> {
    Record {
        record: Record<'a>,
        segment: SegmentId,
        pos: u64,
        len: u64,
    },
    Bad(Region),
    /// A pad record (`len` bytes): no data, only where the next record's data goes.
    Pad {
        len: u64,
    },
}

/// How a walk treats zeros ending the last segment walked.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Tail {
    /// A run of at most [`log::PREPARED_MAX`] zero bytes ending the last segment is the
    /// writer's prepared end (see [`log::SegmentWriter::prepare`]): not part of the log, and
    /// not reported. The store's whole log (at open, `store check`), or its last segment.
    Prepared,
    /// Every byte of every segment is the log's (a closed segment rewritten or compacted).
    Exact,
}

/// Walks `segments` (one generation per number, ascending), starting at `from` = (segment
/// number, position), calling `f` for every record and unreadable region. Returns the last
/// segment walked with the length of the log in it (its file length, less a prepared end).
pub(super) fn walk(
    dir: &Path,
    segments: &[SegmentId],
    from: (u64, u64),
    tail: Tail,
    mut f: impl FnMut(Event<'_>) -> Result<(), StoreError>,
) -> Result<Option<(SegmentId, u64)>, StoreError> {
    let io_err =
        |what: &str, id: SegmentId, e: io::Error| StoreError::internal(format!("{what} {id}: {e}"));
    let mut last = None;
    let mut payload = Vec::new();
    let last_id = segments.last().copied();
    for &id in segments.iter().filter(|s| s.number >= from.0) {
        let file = File::open(id.path(dir)).map_err(|e| io_err("opening segment", id, e))?;
        let mut file_len = file
            .metadata()
            .map_err(|e| io_err("reading the size of segment", id, e))?
            .len();
        let mut pos = if id.number == from.0 { from.1 } else { 0 };
        if pos > file_len {
            return Err(StoreError::internal(format!(
                "segment {id} is {file_len} bytes, shorter than the checkpoint at {pos}"
            )));
        }
        let mut reader = BufReader::with_capacity(1 << 20, &file);
        reader
            .seek(SeekFrom::Start(pos))
            .map_err(|e| io_err("seeking segment", id, e))?;
        while pos < file_len {
            match log::read_record(&mut reader, &mut payload) {
                Ok(Some(kind)) => {
                    let len = (HEADER_LEN + payload.len()) as u64;
                    match log::decode_checked(kind, &payload) {
                        Some(record) => f(Event::Record {
                            record,
                            segment: id,
                            pos,
                            len,
                        })?,
                        None => f(Event::Pad { len })?,
                    }
                    pos += len;
                }
                Ok(None) => {
                    let next = log::find_next_record(&file, pos, file_len)
                        .map_err(|e| io_err("reading segment", id, e))?;
                    if next.is_none() && tail == Tail::Prepared && Some(id) == last_id {
                        // the log ends where the zeros written ahead of it start
                        file_len = log::zero_tail_start(&file, pos, file_len, log::PREPARED_MAX)
                            .map_err(|e| io_err("reading segment", id, e))?;
                        if pos == file_len {
                            break;
                        }
                    }
                    let end = next.unwrap_or(file_len);
                    let claimed = claimed(&file, pos, end).map_err(|e| io_err("reading", id, e))?;
                    f(Event::Bad(Region {
                        segment: id,
                        pos,
                        len: end - pos,
                        claimed,
                    }))?;
                    pos = end;
                    reader
                        .seek(SeekFrom::Start(pos))
                        .map_err(|e| io_err("seeking segment", id, e))?;
                }
                Err(e) => return Err(io_err("reading segment", id, e)),
            }
        }
        last = Some((id, file_len));
    }
    Ok(last)
}

/// The type, key and second word a damaged record's header still claims, if its magic is
/// intact (the key is the first payload word of every record type).
fn claimed(file: &File, pos: u64, end: u64) -> io::Result<Option<(u8, u64, u64)>> {
    if end - pos < HEADER_LEN as u64 + 16 {
        return Ok(None);
    }
    let mut head = [0u8; HEADER_LEN + 16];
    file.read_exact_at(&mut head, pos)?;
    if head[..4] != log::MAGIC.to_le_bytes() {
        return Ok(None);
    }
    let word = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().unwrap_or([0; 8]));
    Ok(Some((head[4], word(HEADER_LEN), word(HEADER_LEN + 8))))
}

/// Which file of each segment number is the log: `chosen(number)` names the generation the
/// index committed (`None`: take the newest, as when rebuilding the index). Returns the chosen
/// ids and the other files (leftovers of a compaction or repair interrupted by a crash).
pub(super) fn choose_generations(
    files: &[SegmentId],
    chosen: impl Fn(u64) -> Option<u64>,
) -> Result<(Vec<SegmentId>, Vec<SegmentId>), StoreError> {
    let mut by_number: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for id in files {
        by_number.entry(id.number).or_default().push(id.generation);
    }
    let (mut live, mut stale) = (Vec::new(), Vec::new());
    for (number, generations) in by_number {
        let newest = generations.iter().copied().max().unwrap_or(0);
        let generation = chosen(number).unwrap_or(newest);
        if !generations.contains(&generation) {
            return Err(StoreError::internal(format!(
                "segment {} named by the index is missing",
                SegmentId::new(number, generation)
            )));
        }
        live.push(SegmentId::new(number, generation));
        stale.extend(
            generations
                .into_iter()
                .filter(|&g| g != generation)
                .map(|g| SegmentId::new(number, g)),
        );
    }
    Ok((live, stale))
}

/// Damage found in the log, with the streams it touches, for the refusal at open and for
/// `engine-gateway store check`.
#[derive(Clone, Debug, Default)]
pub struct DamageReport {
    pub(super) regions: Vec<Region>,
    /// Stream name (or `key N` when its create record is lost) → first offset not readable.
    pub(super) streams: BTreeMap<String, u64>,
}

impl DamageReport {
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// Names of the streams affected.
    pub fn streams(&self) -> impl Iterator<Item = (&str, u64)> {
        self.streams
            .iter()
            .map(|(name, &offset)| (name.as_str(), offset))
    }

    /// Total unreadable bytes.
    pub fn bytes(&self) -> u64 {
        self.regions.iter().map(|r| r.len).sum()
    }

    pub(super) fn affect(&mut self, name: String, offset: u64) {
        let at = self.streams.entry(name).or_insert(offset);
        *at = (*at).min(offset);
    }
}

impl fmt::Display for DamageReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.regions.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(
                f,
                "segment {} byte {}: {} bytes fail their checksum",
                r.segment, r.pos, r.len
            )?;
            if i >= 4 && self.regions.len() > 6 {
                write!(f, "; and {} more regions", self.regions.len() - i - 1)?;
                break;
            }
        }
        if self.streams.is_empty() {
            f.write_str("; no stream named")?;
        } else {
            f.write_str("; streams affected: ")?;
            for (i, (name, offset)) in self.streams.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                if i == 20 {
                    write!(f, "and {} more", self.streams.len() - 20)?;
                    break;
                }
                write!(f, "{name} from offset {offset}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use bytes::Bytes;

    use super::*;
    use crate::store::embedded::log::tests::{aligned_bytes, new_segment};
    use crate::store::embedded::log::{APPEND_DATA_OFFSET, Batch};

    /// A torn write can leave a pad record intact between its torn blocks: the walk still sees
    /// one unreadable region running to the end (a torn tail), not damage followed by a record.
    #[test]
    fn a_pad_left_intact_inside_a_torn_write_is_not_a_record_after_damage() {
        let (dir, id, mut writer) = new_segment(true);
        let big = aligned_bytes(64 << 10, 7);
        let small = Bytes::from(vec![5u8; 1000]);
        let mut batch = Batch::default();
        batch.begin(0, writer.is_direct());
        let seal = Record::Seal { key: 9, time: 1 };
        batch.push(&seal);
        let mut at = Vec::new();
        for (offset, data) in [(0, &small), (1000, &big)] {
            let record = Record::Append {
                key: 1,
                offset,
                time: 2,
                data,
            };
            at.push(batch.push_append(&record, data.clone(), crc32fast::hash(data)) as u64);
        }
        let end = batch.len() as u64;
        if writer.write_durably(&batch).is_err() {
            panic!("write failed");
        }
        let path = id.path(dir.path());
        let mut bytes = fs::read(&path).unwrap_or_else(|err| panic!("{err}"));
        let pad = at[0] + APPEND_DATA_OFFSET + 1000;
        assert!(at[1] > pad, "a pad between the two appends");
        // intact, the walk reports the pad between the records
        assert_eq!(
            events_of(dir.path(), id),
            vec![
                "record at 0".to_owned(),
                format!("record at {}", at[0]),
                format!("pad of {}", at[1] - pad),
                format!("record at {}", at[1]),
            ]
        );
        // torn: a block of the small append's data and one of the big one's
        bytes[(at[0] + APPEND_DATA_OFFSET + 10) as usize] ^= 0xff;
        bytes[(at[1] + APPEND_DATA_OFFSET + 5000) as usize] ^= 0xff;
        fs::write(&path, &bytes).unwrap_or_else(|err| panic!("{err}"));
        let file_len = bytes.len() as u64;
        assert!(file_len >= end);
        assert_eq!(
            events_of(dir.path(), id),
            vec![
                "record at 0".to_owned(),
                format!("bad {}..{file_len}", at[0])
            ]
        );
    }

    /// What a walk of segment `id` (whole, every byte the log's) reports, one line per event.
    fn events_of(dir: &Path, id: SegmentId) -> Vec<String> {
        let mut events = Vec::new();
        walk(dir, &[id], (id.number, 0), Tail::Exact, |event| {
            events.push(match event {
                Event::Record { pos, .. } => format!("record at {pos}"),
                Event::Bad(region) => format!("bad {}..{}", region.pos, region.pos + region.len),
                Event::Pad { len } => format!("pad of {len}"),
            });
            Ok(())
        })
        .unwrap_or_else(|err| panic!("{err}"));
        events
    }
}

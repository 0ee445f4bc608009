//! The write-ahead log: record framing, segment files, and the recovery scan.
//!
//! A record is a 16-byte header (magic, type, 3 zero bytes, payload length, crc32 over the first
//! 12 header bytes and the payload) followed by the payload. Every integer is little endian.
//! The log is the truth; the redb index only says where things are.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::store::StoreError;

/// Size of a record header.
pub(super) const HEADER_LEN: usize = 16;
/// Bytes of an append record before its data (header, key, offset, time).
pub(super) const APPEND_DATA_OFFSET: u64 = HEADER_LEN as u64 + 24;
/// Largest payload a valid record can have; anything bigger is treated as corruption.
pub(super) const MAX_PAYLOAD: u32 = 8 << 20;

const MAGIC: u32 = 0x5347_5745; // "EWGS" read as little endian bytes
const CREATE: u8 = 1;
const APPEND: u8 = 2;
const SEAL: u8 = 3;
const DELETE: u8 = 4;

/// One log record, borrowing its variable part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Record<'a> {
    /// A stream comes into existence with a fresh numeric key.
    Create {
        key: u64,
        time: u64,
        name: &'a str,
    },
    /// `data` is the stream's bytes at `offset`.
    Append {
        key: u64,
        offset: u64,
        time: u64,
        data: &'a [u8],
    },
    Seal {
        key: u64,
        time: u64,
    },
    Delete {
        key: u64,
        time: u64,
    },
}

impl Record<'_> {
    /// Bytes this record takes in the log, header included.
    pub(super) fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload_len()
    }

    fn payload_len(&self) -> usize {
        match self {
            Record::Create { name, .. } => 16 + name.len(),
            Record::Append { data, .. } => 24 + data.len(),
            Record::Seal { .. } | Record::Delete { .. } => 16,
        }
    }

    /// Appends the framed record to `buf`.
    pub(super) fn encode(&self, buf: &mut Vec<u8>) {
        let start = buf.len();
        let (kind, a, b) = match *self {
            Record::Create { key, time, .. } => (CREATE, key, time),
            Record::Append { key, offset, .. } => (APPEND, key, offset),
            Record::Seal { key, time } => (SEAL, key, time),
            Record::Delete { key, time } => (DELETE, key, time),
        };
        buf.extend_from_slice(&MAGIC.to_le_bytes());
        buf.extend_from_slice(&[kind, 0, 0, 0]);
        // payload_len is bounded by the store's append limit, far below u32::MAX
        buf.extend_from_slice(&(self.payload_len() as u32).to_le_bytes());
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(&a.to_le_bytes());
        buf.extend_from_slice(&b.to_le_bytes());
        match *self {
            Record::Create { name, .. } => buf.extend_from_slice(name.as_bytes()),
            Record::Append { time, data, .. } => {
                buf.extend_from_slice(&time.to_le_bytes());
                buf.extend_from_slice(data);
            }
            Record::Seal { .. } | Record::Delete { .. } => {}
        }
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&buf[start..start + 12]);
        hasher.update(&buf[start + HEADER_LEN..]);
        let crc = hasher.finalize();
        buf[start + 12..start + 16].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Decodes a payload whose header and checksum were already checked.
fn decode(kind: u8, payload: &[u8]) -> Option<Record<'_>> {
    let word = |i: usize| -> Option<u64> {
        let bytes = payload.get(i * 8..i * 8 + 8)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    };
    let (a, b) = (word(0)?, word(1)?);
    match kind {
        CREATE => Some(Record::Create {
            key: a,
            time: b,
            name: std::str::from_utf8(&payload[16..]).ok()?,
        }),
        APPEND => Some(Record::Append {
            key: a,
            offset: b,
            time: word(2)?,
            data: &payload[24..],
        }),
        SEAL if payload.len() == 16 => Some(Record::Seal { key: a, time: b }),
        DELETE if payload.len() == 16 => Some(Record::Delete { key: a, time: b }),
        _ => None,
    }
}

/// Path of segment `number` under the store directory.
pub(super) fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join("segments").join(format!("{number:020}.seg"))
}

/// Numbers of the segment files present, ascending.
pub(super) fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut numbers = Vec::new();
    for entry in fs::read_dir(dir.join("segments"))? {
        let name = entry?.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
            continue;
        };
        if let Ok(n) = stem.parse::<u64>() {
            numbers.push(n);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// Makes a directory entry change (a created or removed file) durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The segment being appended to.
pub(super) struct SegmentWriter {
    dir: PathBuf,
    number: u64,
    file: File,
    /// Where the next record goes: the segment's valid length.
    pos: u64,
}

impl SegmentWriter {
    /// Opens segment `number` for writing at `pos` (its valid length, after recovery).
    pub(super) fn open(dir: &Path, number: u64, pos: u64) -> io::Result<Self> {
        let path = segment_path(dir, number);
        let existed = path.exists();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        if !existed {
            sync_dir(&dir.join("segments"))?;
        }
        Ok(SegmentWriter {
            dir: dir.to_owned(),
            number,
            file,
            pos,
        })
    }

    pub(super) fn number(&self) -> u64 {
        self.number
    }

    pub(super) fn pos(&self) -> u64 {
        self.pos
    }

    /// Writes `buf` at the end of the segment (not yet durable).
    pub(super) fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, self.pos)?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    /// Makes everything written durable.
    pub(super) fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Starts the next segment. The caller has synced this one.
    pub(super) fn roll(&mut self) -> io::Result<()> {
        *self = SegmentWriter::open(&self.dir, self.number + 1, 0)?;
        Ok(())
    }
}

/// What the recovery scan found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct ScanOutcome {
    /// Where the valid log ends: segment number and length.
    pub(super) end: (u64, u64),
    pub(super) records: u64,
    pub(super) bytes: u64,
    pub(super) truncated_bytes: u64,
}

/// Reads every valid record from `from` (segment, position) on, calling `apply` with each record
/// and the position of its header. Truncates a torn or corrupt tail. Corruption followed by valid
/// segments is an error: it is damage, not a crash, and truncating would destroy acknowledged data.
pub(super) fn scan(
    dir: &Path,
    from: (u64, u64),
    mut apply: impl FnMut(Record<'_>, u64, u64) -> Result<(), StoreError>,
) -> Result<ScanOutcome, StoreError> {
    let io_err = |what: &str, err: io::Error| StoreError::internal(format!("{what}: {err}"));
    let segments = list_segments(dir).map_err(|e| io_err("listing segments", e))?;
    if from.1 > 0 && !segments.contains(&from.0) {
        return Err(StoreError::internal(format!(
            "segment {} named by the index checkpoint is missing",
            from.0
        )));
    }
    let mut outcome = ScanOutcome {
        end: from,
        ..ScanOutcome::default()
    };
    let later: Vec<u64> = segments.iter().copied().filter(|&n| n >= from.0).collect();
    let mut payload = Vec::new();
    for (i, &number) in later.iter().enumerate() {
        let path = segment_path(dir, number);
        let file = File::open(&path).map_err(|e| io_err("opening segment", e))?;
        let file_len = file
            .metadata()
            .map_err(|e| io_err("segment size", e))?
            .len();
        let mut pos = if number == from.0 { from.1 } else { 0 };
        if pos > file_len {
            return Err(StoreError::internal(format!(
                "segment {number} is {file_len} bytes, shorter than the checkpoint at {pos}"
            )));
        }
        let mut reader = BufReader::with_capacity(1 << 20, file);
        reader
            .seek(SeekFrom::Start(pos))
            .map_err(|e| io_err("seeking segment", e))?;
        loop {
            match read_record(&mut reader, &mut payload) {
                Ok(Some(kind)) => {
                    let len = (HEADER_LEN + payload.len()) as u64;
                    match decode(kind, &payload) {
                        Some(record) => apply(record, number, pos)?,
                        None => break,
                    }
                    outcome.records += 1;
                    outcome.bytes += len;
                    pos += len;
                }
                Ok(None) => break,
                Err(err) => return Err(io_err("reading segment", err)),
            }
        }
        outcome.end = (number, pos);
        if pos == file_len {
            continue;
        }
        // a torn or corrupt record at `pos`: acceptable only if nothing valid follows
        let rest = &later[i + 1..];
        for &next in rest {
            let len = fs::metadata(segment_path(dir, next))
                .map_err(|e| io_err("segment size", e))?
                .len();
            if len > 0 {
                return Err(StoreError::internal(format!(
                    "segment {number} is corrupt at byte {pos} and segment {next} follows with data; refusing to truncate"
                )));
            }
        }
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| io_err("opening segment", e))?;
        file.set_len(pos)
            .and_then(|()| file.sync_all())
            .map_err(|e| io_err("truncating segment", e))?;
        for &next in rest {
            fs::remove_file(segment_path(dir, next)).map_err(|e| io_err("removing segment", e))?;
        }
        sync_dir(&dir.join("segments")).map_err(|e| io_err("syncing directory", e))?;
        outcome.truncated_bytes = file_len - pos;
        break;
    }
    Ok(outcome)
}

/// Reads one record into `payload`. `Ok(None)` for a torn or corrupt record (or the end).
fn read_record(reader: &mut impl Read, payload: &mut Vec<u8>) -> io::Result<Option<u8>> {
    let mut header = [0u8; HEADER_LEN];
    if !read_full(reader, &mut header)? {
        return Ok(None);
    }
    let field =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let (magic, len, crc) = (field(0), field(8), field(12));
    if magic != MAGIC || header[5..8] != [0, 0, 0] || len > MAX_PAYLOAD {
        return Ok(None);
    }
    payload.resize(len as usize, 0);
    if !read_full(reader, payload)? {
        return Ok(None);
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[..12]);
    hasher.update(payload);
    if hasher.finalize() != crc {
        return Ok(None);
    }
    Ok(Some(header[4]))
}

/// Fills `buf`; `Ok(false)` when the input ends first.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    match reader.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let records = [
            Record::Create {
                key: 7,
                time: 9,
                name: "a/b/c",
            },
            Record::Append {
                key: 7,
                offset: 3,
                time: 9,
                data: b"hello",
            },
            Record::Seal { key: 7, time: 10 },
            Record::Delete { key: 7, time: 11 },
        ];
        let mut buf = Vec::new();
        for record in &records {
            let before = buf.len();
            record.encode(&mut buf);
            assert_eq!(buf.len() - before, record.encoded_len());
        }
        let mut reader = &buf[..];
        let mut payload = Vec::new();
        for record in &records {
            let kind = read_record(&mut reader, &mut payload).unwrap_or(None);
            assert_eq!(kind.and_then(|k| decode(k, &payload)), Some(*record));
        }
        // a flipped bit anywhere is detected
        buf[HEADER_LEN + 3] ^= 1;
        assert_eq!(read_record(&mut &buf[..], &mut payload).ok(), Some(None));
    }
}

//! The read side: index lookups and positioned reads from segment files, run on blocking threads,
//! with a small bounded cache of open segment files. Every record's checksum is verified before
//! any of its bytes is returned.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use redb::{Database, ReadableDatabase};

use super::Shared;
use super::index::{Piece, Snapshot, db_err};
use super::log::{self, APPEND_DATA_OFFSET, SegmentId};
use super::metrics::Metrics;
use crate::store::{ErrorKind, ReadChunk, StoreError, StreamInfo};

/// Open segment files kept for readers.
const MAX_OPEN_SEGMENTS: usize = 16;
/// Times a read retries with a fresh index snapshot when a segment it names was just replaced
/// by compaction.
const READ_ATTEMPTS: usize = 3;

/// Open read handles to segment files, at most [`MAX_OPEN_SEGMENTS`].
pub(super) struct SegmentFiles {
    dir: PathBuf,
    files: Mutex<HashMap<u64, Arc<File>>>,
}

impl SegmentFiles {
    pub(super) fn new(dir: PathBuf) -> Self {
        SegmentFiles {
            dir,
            files: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, segment: u64) -> Result<Arc<File>, std::io::Error> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(file) = files.get(&segment) {
            return Ok(file.clone());
        }
        let file = File::open(SegmentId::unpack(segment).path(&self.dir))?;
        if files.len() >= MAX_OPEN_SEGMENTS {
            // evict the oldest segment: reads mostly follow the tail
            if let Some(&oldest) = files.keys().min_by_key(|&&k| SegmentId::unpack(k).number) {
                files.remove(&oldest);
            }
        }
        let file = Arc::new(file);
        files.insert(segment, file.clone());
        Ok(file)
    }

    /// Drops the cached handle of a segment that was replaced or removed, so its space is freed
    /// once the reads using it finish.
    pub(super) fn forget(&self, segment: u64) {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        files.remove(&segment);
    }
}

/// Committed state of a stream.
pub(super) fn head(db: &Database, name: &str) -> Result<Option<StreamInfo>, StoreError> {
    let txn = db.begin_read().map_err(db_err)?;
    let snapshot = Snapshot::new(&txn)?;
    Ok(snapshot.meta(name)?.map(|m| m.info(name)))
}

pub(super) fn list(
    db: &Database,
    prefix: &str,
    limit: usize,
) -> Result<Vec<StreamInfo>, StoreError> {
    let txn = db.begin_read().map_err(db_err)?;
    Snapshot::new(&txn)?.list(prefix, limit)
}

/// Reads at most `max` bytes of stream `name` from `offset`. `Ok(None)` when it does not exist.
pub(super) fn read(
    shared: &Shared,
    name: &str,
    offset: u64,
    max: usize,
) -> Result<Option<ReadChunk>, StoreError> {
    let files = &shared.files;
    let check = Check {
        metrics: &shared.metrics,
        verify: shared.verify_reads,
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        match read_once(&shared.db, files, &check, name, offset, max) {
            Err(Missing(segment)) if attempt < READ_ATTEMPTS => files.forget(segment),
            Err(Missing(segment)) => {
                return Err(StoreError::internal(format!(
                    "segment {} named by the index is missing",
                    SegmentId::unpack(segment)
                )));
            }
            Ok(result) => return result,
        }
    }
}

/// A segment file named by the snapshot is gone (replaced by compaction since).
struct Missing(u64);

/// How reads check records, and where they count failures.
struct Check<'a> {
    metrics: &'a Metrics,
    verify: bool,
}

fn read_once(
    db: &Database,
    files: &SegmentFiles,
    check: &Check<'_>,
    name: &str,
    offset: u64,
    max: usize,
) -> Result<Result<Option<ReadChunk>, StoreError>, Missing> {
    let txn = match db.begin_read() {
        Ok(txn) => txn,
        Err(e) => return Ok(Err(db_err(e))),
    };
    let snapshot = match Snapshot::new(&txn) {
        Ok(s) => s,
        Err(e) => return Ok(Err(e)),
    };
    let meta = match snapshot.meta(name) {
        Ok(Some(meta)) => meta,
        Ok(None) => return Ok(Ok(None)),
        Err(e) => return Ok(Err(e)),
    };
    if offset > meta.length {
        return Ok(Err(StoreError::new(
            ErrorKind::InvalidOffset,
            format!(
                "offset {offset} is past the end of stream {name} ({} bytes)",
                meta.length
            ),
        )));
    }
    let want = (meta.length - offset).min(max as u64);
    let mut data = Vec::with_capacity(want as usize);
    if want > 0 {
        let pieces = match snapshot.pieces(meta.key, offset, want) {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        let mut scratch = Vec::new();
        for piece in pieces {
            if let Err(e) = read_piece(
                files,
                check,
                name,
                meta.key,
                &piece,
                &mut data,
                &mut scratch,
            )? {
                return Ok(Err(e));
            }
        }
    }
    Ok(Ok(Some(ReadChunk {
        data: Bytes::from(data),
        length: meta.length,
        sealed: meta.sealed,
    })))
}

/// Appends the piece's bytes to `out` after checking the checksum of the whole record they
/// belong to. A whole record is read straight into `out`; part of one goes through `scratch`.
fn read_piece(
    files: &SegmentFiles,
    check: &Check<'_>,
    name: &str,
    key: u64,
    piece: &Piece,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Result<Result<(), StoreError>, Missing> {
    let file = match files.get(piece.segment) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Missing(piece.segment)),
        Err(e) => {
            return Ok(Err(StoreError::internal(format!(
                "opening segment {}: {e}",
                SegmentId::unpack(piece.segment)
            ))));
        }
    };
    let segment = SegmentId::unpack(piece.segment);
    if !check.verify {
        // the read as it was before checksums were verified: the bytes asked for, nothing more
        let at = out.len();
        out.resize(at + piece.take, 0);
        let read = file.read_exact_at(&mut out[at..], piece.pos + piece.skip as u64);
        return Ok(
            read.map_err(|e| StoreError::internal(format!("reading segment {segment}: {e}")))
        );
    }
    let start = piece.pos - APPEND_DATA_OFFSET;
    let whole = piece.skip == 0 && piece.take == piece.len as usize;
    let mut header = [0u8; APPEND_DATA_OFFSET as usize];
    let at = out.len();
    let data: &mut [u8] = if whole {
        out.resize(at + piece.take, 0);
        &mut out[at..]
    } else {
        scratch.resize(piece.len as usize, 0);
        &mut scratch[..]
    };
    let read = read_two_at(&file, &mut header, data, start);
    if let Err(e) = read {
        out.truncate(at);
        return Ok(Err(StoreError::internal(format!(
            "reading segment {segment}: {e}"
        ))));
    }
    let word = |i: usize| u64::from_le_bytes(header[i..i + 8].try_into().unwrap_or([0; 8]));
    let ok = log::verify_append_parts(&header, data) && word(16) == key && word(24) == piece.offset;
    if !ok {
        out.truncate(at);
        check.metrics.corrupt_reads.fetch_add(1, Relaxed);
        tracing::error!(
            stream = %name,
            segment = %segment,
            position = start,
            offset = piece.offset,
            "stored record fails its checksum; not served"
        );
        return Ok(Err(StoreError::corrupted(
            format!(
                "stream {name}: the record at offset {} (segment {segment} byte {start}) fails its checksum; its bytes are not served",
                piece.offset
            ),
            piece.offset,
        )));
    }
    if !whole {
        out.extend_from_slice(&scratch[piece.skip..piece.skip + piece.take]);
    }
    Ok(Ok(()))
}

/// Fills `head` and then `data` from `offset` of `file` with one `preadv` (a record's header and
/// its data, into two buffers, without a second syscall or a copy), looping on short reads.
fn read_two_at(file: &File, head: &mut [u8], data: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let total = head.len() + data.len();
    let mut done = 0;
    while done < total {
        let (h, d): (&mut [u8], &mut [u8]) = if done < head.len() {
            (&mut head[done..], &mut data[..])
        } else {
            (&mut [], &mut data[done - head.len()..])
        };
        let iov = [
            libc::iovec {
                iov_base: h.as_mut_ptr().cast(),
                iov_len: h.len(),
            },
            libc::iovec {
                iov_base: d.as_mut_ptr().cast(),
                iov_len: d.len(),
            },
        ];
        let at = libc::off_t::try_from(offset + done as u64)
            .map_err(|_| std::io::Error::other("segment offset out of range"))?;
        // SAFETY: both iovecs point into live, exclusively borrowed buffers of the given
        // lengths for the duration of the call; the descriptor is open.
        let n = unsafe { libc::preadv(file.as_raw_fd(), iov.as_ptr(), 2, at) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        done += n as usize;
    }
    Ok(())
}

//! The read side: index lookups and positioned reads from segment files, run on blocking threads,
//! with a small bounded cache of open segment files.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use redb::{Database, ReadableDatabase};

use super::index::{Snapshot, db_err};
use super::log::segment_path;
use crate::store::{ErrorKind, ReadChunk, StoreError, StreamInfo};

/// Open segment files kept for readers.
const MAX_OPEN_SEGMENTS: usize = 16;

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

    fn get(&self, segment: u64) -> Result<Arc<File>, StoreError> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(file) = files.get(&segment) {
            return Ok(file.clone());
        }
        let file = File::open(segment_path(&self.dir, segment))
            .map_err(|e| StoreError::internal(format!("opening segment {segment}: {e}")))?;
        if files.len() >= MAX_OPEN_SEGMENTS {
            // evict the oldest segment: reads mostly follow the tail
            if let Some(&oldest) = files.keys().min() {
                files.remove(&oldest);
            }
        }
        let file = Arc::new(file);
        files.insert(segment, file.clone());
        Ok(file)
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
    db: &Database,
    files: &SegmentFiles,
    name: &str,
    offset: u64,
    max: usize,
) -> Result<Option<ReadChunk>, StoreError> {
    let txn = db.begin_read().map_err(db_err)?;
    let snapshot = Snapshot::new(&txn)?;
    let Some(meta) = snapshot.meta(name)? else {
        return Ok(None);
    };
    if offset > meta.length {
        return Err(StoreError::new(
            ErrorKind::InvalidOffset,
            format!(
                "offset {offset} is past the end of stream {name} ({} bytes)",
                meta.length
            ),
        ));
    }
    let want = (meta.length - offset).min(max as u64);
    let mut data = Vec::with_capacity(want as usize);
    if want > 0 {
        for piece in snapshot.pieces(meta.key, offset, want)? {
            let file = files.get(piece.segment)?;
            let start = data.len();
            data.resize(start + piece.len, 0);
            file.read_exact_at(&mut data[start..], piece.pos)
                .map_err(|e| {
                    StoreError::internal(format!("reading segment {}: {e}", piece.segment))
                })?;
        }
    }
    Ok(Some(ReadChunk {
        data: Bytes::from(data),
        length: meta.length,
        sealed: meta.sealed,
    }))
}

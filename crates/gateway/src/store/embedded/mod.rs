//! The embedded store: a checksummed write-ahead log of segment files with group commit, indexed
//! by redb. The default backend; needs no other process.
//!
//! Layout of the store directory: `LOCK` (flock held while open), `index.redb`, and
//! `segments/{n:020}.seg`. **Architecture invariant:** stream bytes are written once, into the
//! log, and an append is answered only after the log fsync that covers it; the index may lag the
//! log (it is made durable at checkpoints) and is rebuilt from the log at open.

mod compact;
mod index;
mod log;
mod maintenance;
mod metrics;
mod modes;
mod read;
mod recovery;
mod repair;
mod scan;
mod space;
mod wait;
mod writer;

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use redb::Database;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::info;

pub use self::compact::CompactReport;
pub use self::metrics::RecoveryReport;
pub use self::modes::WriteTrials;
use self::read::SegmentFiles;
pub use self::repair::{CheckReport, RepairReport, check, repair};
pub use self::scan::DamageReport;
use self::wait::Waiters;
use self::writer::{Request, Writer, WriterConfig, WriterThread};
use crate::store::retention::RetentionConfig;
use crate::store::{Appended, ErrorKind, ReadChunk, Store, StoreError, StreamInfo};
use crate::stream_id::StreamId;

/// Largest `data` one append may carry ([`ErrorKind::TooLarge`] beyond).
pub const MAX_APPEND_BYTES: usize = 4 << 20;
/// Largest chunk one read returns, whatever `max` asks for.
pub const MAX_READ_BYTES: usize = 4 << 20;

/// Settings of the embedded store.
#[derive(Clone, Debug)]
pub struct EmbeddedConfig {
    /// Directory the store owns (created when missing).
    pub dir: PathBuf,
    /// A log segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// The writer stops draining its queue into one batch (one fsync) past this many bytes.
    pub max_batch_bytes: usize,
    /// Requests the writer's queue holds.
    pub queue_depth: usize,
    /// Append bytes queued for the writer at most; appenders wait beyond (backpressure).
    pub max_queued_bytes: usize,
    /// Page cache of the redb index (redb's own default is 1 GiB, too much for a small container).
    pub index_cache_bytes: usize,
    /// A durable index commit (checkpoint) happens after this many batches...
    pub checkpoint_batches: u64,
    /// ...or after this much time, whichever comes first; recovery replays the log since then.
    pub checkpoint_interval: Duration,
    /// Free disk bytes kept for the index, deletes and compaction: appends that would leave
    /// less are answered [`ErrorKind::InsufficientStorage`] without touching the disk.
    pub reserve_bytes: u64,
    /// A closed segment is compacted once deleted streams' bytes are this share of its size.
    pub compact_ratio: f64,
    /// Bytes per second compaction writes at most (0: as fast as it can), so it leaves the
    /// disk to ingest.
    pub compact_bytes_per_sec: u64,
    /// Streams deleted for age or size; also sets how often maintenance runs.
    pub retention: RetentionConfig,
    /// With buffered writes (see `direct_writes`), the last bytes of the log kept in the page
    /// cache (followers read them); the kernel may drop older pages once synced, so writes
    /// reuse warm pages ([`log::SegmentWriter::release_behind`]). Direct writes cache nothing.
    pub cached_tail_bytes: u64,
    /// Whether the log is written past the page cache (`O_DIRECT`), where the filesystem
    /// allows it; buffered writes otherwise. The way the writer starts, and the only one when
    /// `write_trials` is `None`. On by default: on fast disks it costs the writer a quarter of
    /// the CPU per GiB of buffered writes on the reference VM (see `log::Direct`).
    pub direct_writes: bool,
    /// Whether the writer measures both ways of writing (direct, buffered) while it runs and
    /// keeps the faster (see `modes`): how often and how long it tries the other; `None`
    /// writes only the way `direct_writes` says. On by default.
    pub write_trials: Option<WriteTrials>,
    /// Whether reads check record checksums. Always on in the gateway; off only for the
    /// benchmark that measures what the check costs (`tests/store_bench.rs`).
    #[doc(hidden)]
    pub verify_reads: bool,
}

impl EmbeddedConfig {
    /// The defaults, in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        EmbeddedConfig {
            dir: dir.into(),
            segment_bytes: 1 << 30,
            max_batch_bytes: 4 << 20,
            queue_depth: 1024,
            max_queued_bytes: 16 << 20,
            index_cache_bytes: 16 << 20,
            checkpoint_batches: 256,
            checkpoint_interval: Duration::from_secs(1),
            reserve_bytes: 64 << 20,
            compact_ratio: 0.5,
            compact_bytes_per_sec: 64 << 20,
            retention: RetentionConfig::default(),
            cached_tail_bytes: 32 << 20,
            direct_writes: true,
            write_trials: Some(WriteTrials::default()),
            verify_reads: true,
        }
    }
}

/// The embedded store. Open with [`EmbeddedStore::open`], then share as `Arc<dyn Store>`.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    /// Queue to the writer thread; dropping the store closes it and the writer stops.
    tx: mpsc::Sender<Request>,
    /// The log's writing end, shared with the writer thread (see [`Writer`]).
    log: Arc<Mutex<Writer>>,
    /// Appends between their checks and their answer.
    appending: AtomicUsize,
    /// Bytes of appends queued or being written, bounded by `max_queued_bytes`.
    budget: Arc<Semaphore>,
    max_queued_bytes: usize,
    /// The writer thread, joined by `close`.
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The maintenance thread (retention, compaction) and its stop signal, joined by `close`.
    maintenance: Mutex<Option<(std::sync::mpsc::Sender<()>, JoinHandle<()>)>>,
    /// Settings of maintenance passes run on demand.
    retention: RetentionConfig,
    compact_ratio: f64,
    recovery: RecoveryReport,
}

/// State shared by the store handle, the readers and the writer thread.
struct Shared {
    db: Database,
    files: SegmentFiles,
    waiters: Waiters,
    metrics: metrics::Metrics,
    /// Set by `close`: appends are refused from then on.
    closed: AtomicBool,
    /// Set after a failed index commit or a log write that could not be cut back: the store's
    /// state is unknown until reopened. A full disk does not set it.
    failed: AtomicBool,
    /// Free bytes appends leave untouched (`EmbeddedConfig::reserve_bytes`).
    reserve_bytes: u64,
    /// Disk bytes (`writer::disk_bytes`) of the largest append refused for lack of space since
    /// the last stored one (0: none):
    /// `/readyz` reports not ready until that much is free above the reserve.
    refused_need: AtomicU64,
    /// Segment number of the writer's last durable checkpoint: compaction stays below it.
    durable_segment: AtomicU64,
    /// One compaction at a time (the maintenance thread, or `maintain` called directly).
    compacting: Mutex<()>,
    verify_reads: bool,
    /// `EmbeddedConfig::compact_bytes_per_sec`.
    compact_rate: u64,
    dir: PathBuf,
    /// Holds the flock on `dir/LOCK` for as long as anything may write.
    _lock: File,
}

impl EmbeddedStore {
    /// Opens the store in `config.dir`, recovering from a crash if needed. Blocking: call it
    /// before starting the runtime or through `spawn_blocking`.
    pub fn open(config: EmbeddedConfig) -> Result<EmbeddedStore, StoreError> {
        if config.segment_bytes == 0 || config.queue_depth == 0 || config.max_queued_bytes == 0 {
            return Err(StoreError::internal(
                "embedded store: sizes must be positive",
            ));
        }
        let dir = &config.dir;
        let io = |what: &str, e: std::io::Error| {
            StoreError::internal(format!("{what} {}: {e}", dir.display()))
        };
        fs::create_dir_all(dir.join("segments")).map_err(|e| io("creating", e))?;
        let lock = lock_dir(dir)?;
        let started = Instant::now();
        let db = index::open_db(&dir.join("index.redb"), config.index_cache_bytes)?;
        let recovered = recovery::recover(&db, dir, repair::max_write(&config))?;
        let (end, next_key, mut recovery) = (recovered.end, recovered.next_key, recovered.report);
        recovery.millis = started.elapsed().as_millis() as u64;
        info!(
            dir = %dir.display(),
            records = recovery.records,
            bytes = recovery.bytes,
            truncated_bytes = recovery.truncated_bytes,
            millis = recovery.millis,
            "store recovered"
        );
        let segment = log::SegmentWriter::open(dir, end.0, end.1, config.direct_writes)
            .map_err(|e| io("opening the log in", e))?;
        let segment_direct = segment.is_direct();
        info!(
            segment = %segment.id(),
            pos = segment.pos(),
            direct_writes = segment.is_direct(),
            "store log open for appends"
        );
        let shared = Arc::new(Shared {
            db,
            files: SegmentFiles::new(dir.clone()),
            waiters: Waiters::default(),
            metrics: metrics::Metrics::new(recovery),
            closed: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            reserve_bytes: config.reserve_bytes,
            refused_need: AtomicU64::new(0),
            durable_segment: AtomicU64::new(end.0.number),
            compacting: Mutex::new(()),
            verify_reads: config.verify_reads,
            compact_rate: config.compact_bytes_per_sec,
            dir: dir.clone(),
            _lock: lock,
        });
        let (tx, rx) = mpsc::channel(config.queue_depth);
        let writer = Arc::new(Mutex::new(Writer {
            shared: shared.clone(),
            segment,
            config: WriterConfig {
                segment_bytes: config.segment_bytes,
                max_batch_bytes: config.max_batch_bytes,
                checkpoint_batches: config.checkpoint_batches,
                checkpoint_interval: config.checkpoint_interval,
                reserve_bytes: config.reserve_bytes,
                cached_tail_bytes: config.cached_tail_bytes,
            },
            next_key,
            batch: log::Batch::default(),
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            last_write: Duration::ZERO,
            prepare: writer::Prepare::new(tx.downgrade()),
            modes: config
                .write_trials
                .filter(|_| segment_direct || !config.direct_writes)
                .map(|trials| modes::Chooser::new(trials, segment_direct)),
        }));
        writer::lock(&writer).gauge_staging();
        let thread = WriterThread {
            rx,
            writer: writer.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || thread.run())
            .map_err(|e| io("starting the writer for", e))?;
        let (stop, stopped) = std::sync::mpsc::channel();
        let maintenance = maintenance::Maintenance {
            shared: shared.clone(),
            tx: tx.clone(),
            retention: config.retention.clone(),
            compact_ratio: config.compact_ratio,
            interval: config.retention.interval(),
        };
        let maintainer = std::thread::Builder::new()
            .name("store-maintain".into())
            .spawn(move || maintenance.run(stopped))
            .map_err(|e| io("starting maintenance for", e))?;
        Ok(EmbeddedStore {
            shared,
            tx,
            log: writer,
            appending: AtomicUsize::new(0),
            maintenance: Mutex::new(Some((stop, maintainer))),
            retention: config.retention,
            compact_ratio: config.compact_ratio,
            budget: Arc::new(Semaphore::new(config.max_queued_bytes)),
            max_queued_bytes: config.max_queued_bytes,
            writer: Mutex::new(Some(handle)),
            recovery,
        })
    }

    /// What recovery did at open.
    pub fn recovery(&self) -> RecoveryReport {
        self.recovery
    }

    /// Runs one maintenance pass now (retention, then compaction), as the maintenance thread
    /// does every `retention.interval_secs`: returns the streams deleted and what compaction did.
    pub async fn maintain(&self) -> Result<(u64, CompactReport), StoreError> {
        let pass = maintenance::Maintenance {
            shared: self.shared.clone(),
            tx: self.tx.clone(),
            retention: self.retention.clone(),
            compact_ratio: self.compact_ratio,
            interval: Duration::ZERO,
        };
        tokio::task::spawn_blocking(move || pass.pass())
            .await
            .map_err(|e| StoreError::internal(format!("store task failed: {e}")))?
    }

    /// Runs `f` on a blocking thread (index lookups and file reads may touch the disk).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| StoreError::internal(format!("store task failed: {e}")))?
    }

    async fn request<T>(
        &self,
        request: Request,
        rx: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        if self.shared.closed.load(SeqCst) {
            return Err(StoreError::unavailable("store is closed"));
        }
        self.tx
            .send(request)
            .await
            .map_err(|_| StoreError::unavailable("store writer has stopped"))?;
        rx.await
            .map_err(|_| StoreError::unavailable("store writer has stopped"))?
    }
}

/// One append counted in [`EmbeddedStore::appending`] for as long as it lives (a cancelled
/// request too).
struct Appending<'a> {
    count: &'a AtomicUsize,
    /// No other append was in flight when this one entered.
    first: bool,
}

impl<'a> Appending<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        let first = count.fetch_add(1, SeqCst) == 0;
        Appending { count, first }
    }
}

impl Drop for Appending<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, SeqCst);
    }
}

/// An append commits on its own task, not through the writer thread, only while the log's last
/// write and sync took at most this long: a runtime worker is held that long, and a slow
/// disk must not hold it (nor the other connections it serves).
const INLINE_WRITE_MAX: Duration = Duration::from_millis(2);

/// How long `open` waits for the previous owner of the directory to let go of its lock.
///
/// A lock is released when the last descriptor of its open file description closes, and a
/// descriptor is copied into every child forked in the meantime until that child execs. So a
/// lock can outlive its owner by a moment: a supervisor restarting the gateway, or a process that
/// closed the store while another thread was spawning a child. Waiting briefly covers both;
/// a directory that is really in use still fails, after this wait.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Takes the exclusive flock on `dir/LOCK`, failing when another process holds it for longer
/// than [`LOCK_WAIT`].
fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::internal(format!("opening {}: {e}", path.display())))?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        // SAFETY: flock on a file descriptor we own, which stays open for the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(file);
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::WouldBlock {
            return Err(StoreError::internal(format!(
                "locking {}: {err}",
                path.display()
            )));
        }
        if Instant::now() >= deadline {
            return Err(StoreError::unavailable(format!(
                "store directory {} is in use by another process",
                dir.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn head(&self, id: &StreamId) -> Result<StreamInfo, StoreError> {
        let name = id.to_string();
        self.blocking(move |s| read::head(&s.db, &name))
            .await?
            .ok_or_else(|| StoreError::not_found(id))
    }

    async fn append(
        &self,
        id: &StreamId,
        offset: u64,
        data: Bytes,
        seal: bool,
    ) -> Result<Appended, StoreError> {
        if data.len() > MAX_APPEND_BYTES {
            return Err(StoreError::too_large(data.len(), MAX_APPEND_BYTES));
        }
        if offset.checked_add(data.len() as u64).is_none() {
            return Err(StoreError::new(
                ErrorKind::InvalidOffset,
                format!("offset {offset} overflows"),
            ));
        }
        let permits = data.len().min(self.max_queued_bytes) as u32;
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(permits)
            .await
            .map_err(|_| StoreError::unavailable("store is closed"))?;
        // Here, on the request's thread: the writer thread only writes and syncs.
        let crc = crc32fast::hash(&data);
        let (reply, mut rx) = oneshot::channel();
        let request = Request::Append {
            id: id.clone(),
            offset,
            data,
            crc,
            seal,
            reply,
            _permit: permit,
        };
        // The only append in flight: commit here rather than wake the writer thread and be
        // woken by it. With others in flight the writer thread batches them: a task committing
        // alone would hold its runtime worker and make the thread wait for the lock.
        let alone = Appending::enter(&self.appending);
        let request = if alone.first && self.tx.capacity() == self.tx.max_capacity() {
            match Writer::commit_inline(&self.log, request, INLINE_WRITE_MAX) {
                Ok(prepare) => {
                    if prepare {
                        writer::prepare_after(&self.log, self.tx.downgrade());
                    }
                    return rx.try_recv().unwrap_or_else(|_| {
                        Err(StoreError::internal("an inline commit gave no answer"))
                    });
                }
                Err(request) => request,
            }
        } else {
            request
        };
        self.request(request, rx).await
    }

    async fn read(&self, id: &StreamId, offset: u64, max: usize) -> Result<ReadChunk, StoreError> {
        let name = id.to_string();
        let max = max.min(MAX_READ_BYTES);
        self.blocking(move |s| read::read(s, &name, offset, max))
            .await?
            .ok_or_else(|| StoreError::not_found(id))
    }

    async fn wait(&self, id: &StreamId, offset: u64, timeout: Duration) -> Result<(), StoreError> {
        let guard = self.shared.waiters.register(id.as_str());
        let notified = guard.notify().notified();
        tokio::pin!(notified);
        // registered before the check below, so an append committed after it wakes us
        notified.as_mut().enable();
        let name = id.to_string();
        let info = self.blocking(move |s| read::head(&s.db, &name)).await?;
        if info.is_none_or(|i| i.length > offset || i.sealed) {
            return Ok(());
        }
        let _ = tokio::time::timeout(timeout, notified).await;
        Ok(())
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<StreamInfo>, StoreError> {
        let prefix = prefix.to_owned();
        self.blocking(move |s| read::list(&s.db, &prefix, limit))
            .await
    }

    async fn delete(&self, id: &StreamId) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.request(
            Request::Delete {
                id: id.clone(),
                reply,
            },
            rx,
        )
        .await
    }

    async fn ready(&self) -> Result<(), StoreError> {
        let writer_alive = self
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|h| !h.is_finished());
        if self.shared.closed.load(SeqCst) || !writer_alive {
            return Err(StoreError::unavailable("store is closed"));
        }
        if self.shared.failed.load(SeqCst) {
            return Err(StoreError::unavailable(
                "store failed an index update; restart to recover",
            ));
        }
        let dir = self.shared.dir.clone();
        let free = tokio::task::spawn_blocking(move || space::free_bytes_at(&dir))
            .await
            .ok()
            .flatten();
        let need = self.shared.reserve_bytes + self.shared.refused_need.load(SeqCst);
        if let Some(free) = free
            && free < need
        {
            return Err(StoreError::insufficient_storage(
                format!(
                    "disk full: {free} bytes free, {} kept in reserve; appends are refused until space is freed",
                    self.shared.reserve_bytes
                ),
                None,
            ));
        }
        Ok(())
    }

    async fn close(&self) -> Result<(), StoreError> {
        if self.shared.closed.swap(true, SeqCst) {
            return Ok(());
        }
        let maintainer = self
            .maintenance
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((stop, handle)) = maintainer {
            // a pass in progress finishes first (its deletes go through the writer, still open)
            drop(stop);
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        let (reply, rx) = oneshot::channel();
        let result = match self.tx.send(Request::Close { reply }).await {
            Ok(()) => rx.await.unwrap_or(Ok(())),
            Err(_) => Ok(()),
        };
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        self.budget.close();
        result
    }

    fn write_metrics(&self, out: &mut String) {
        self.shared.metrics.write(out);
    }
}

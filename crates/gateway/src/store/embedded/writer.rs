//! The group-commit writer thread: validates queued requests, writes their log records with
//! `pwritev`s straight from the requests' buffers and one fdatasync per batch, then updates the
//! index and answers. Checksums of the data are computed before a request is queued; the
//! thread only frames, writes, syncs and indexes. While batches are small it also keeps zeros
//! written ahead of the log's end ([`Writer::prepare`]), so a sync writes data only.

use std::collections::HashMap;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::Durability;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tracing::{error, info, warn};

use super::Shared;
use super::index::{Meta, Tables, db_err};
use super::log::{Batch, PREPARE_STEP, Record, SegmentWriter, is_no_space};
use super::modes::{Chooser, Verdict};
use crate::store::{Appended, ErrorKind, StoreError, unix_now};
use crate::stream_id::StreamId;

/// A request to the writer thread.
pub(super) enum Request {
    Append {
        id: StreamId,
        offset: u64,
        data: Bytes,
        /// crc32 of `data`, computed where it arrived, so the writer thread does not.
        crc: u32,
        seal: bool,
        reply: oneshot::Sender<Result<Appended, StoreError>>,
        /// Share of the store's queued-bytes budget, released when the request is answered.
        _permit: OwnedSemaphorePermit,
    },
    Delete {
        id: StreamId,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Finish what is queued before, make the index durable, and stop.
    Close {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Write zeros ahead of the log's end, if still wanted: for an inline commit whose own
    /// runtime thread could not ([`prepare_after`]; see [`Writer::prepare`]).
    Prepare,
    /// An inline commit used the direct-write staging buffer: the writer thread gives its
    /// pages back once the store is idle (see [`STAGING_IDLE`]).
    Idle,
}

impl Request {
    fn size(&self) -> usize {
        match self {
            Request::Append { data, .. } => 64 + data.len(),
            _ => 64,
        }
    }

    fn answer(self, result: Result<Option<Appended>, StoreError>) {
        // a requester that went away does not care about the answer
        match self {
            Request::Append { reply, .. } => {
                let _ = reply.send(
                    result.and_then(|a| a.ok_or_else(|| StoreError::internal("no append result"))),
                );
            }
            Request::Delete { reply, .. } | Request::Close { reply } => {
                let _ = reply.send(result.map(|_| ()));
            }
            Request::Prepare | Request::Idle => {}
        }
    }
}

/// Tuning of the writer, from [`super::EmbeddedConfig`].
pub(super) struct WriterConfig {
    pub(super) segment_bytes: u64,
    pub(super) max_batch_bytes: usize,
    pub(super) checkpoint_batches: u64,
    pub(super) checkpoint_interval: Duration,
    /// Free bytes the disk keeps for the index, deletes and compaction: appends are refused
    /// (507) when a batch would leave less.
    pub(super) reserve_bytes: u64,
    /// Bytes at the log's end whose pages stay cached for followers; older ones are given back.
    pub(super) cached_tail_bytes: u64,
}

/// A log record to write, naming its variable part by the request it comes from.
#[derive(Clone, Copy)]
enum Spec {
    Create { key: u64 },
    Append { key: u64, offset: u64 },
    Seal { key: u64 },
    Delete { key: u64 },
}

impl Spec {
    fn record<'a>(self, request: &'a Request, time: u64) -> Record<'a> {
        let (name, data): (&str, &[u8]) = match request {
            Request::Append { id, data, .. } => (id.as_str(), data),
            Request::Delete { id, .. } => (id.as_str(), &[]),
            Request::Close { .. } | Request::Prepare | Request::Idle => ("", &[]),
        };
        match self {
            Spec::Create { key } => Record::Create { key, time, name },
            Spec::Append { key, offset } => Record::Append {
                key,
                offset,
                time,
                data,
            },
            Spec::Seal { key } => Record::Seal { key, time },
            Spec::Delete { key } => Record::Delete { key, time },
        }
    }
}

/// The log's writing end: whoever holds its lock commits a batch. Usually the writer thread
/// (a batch of whatever queued meanwhile), or, when an append is the only one in flight and
/// the disk answers fast, that request's own task (a batch of one, see
/// `EmbeddedStore::append`): that saves the two thread wake-ups of a round trip through the
/// queue, most of one lone stream's CPU on a VM.
pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) segment: SegmentWriter,
    pub(super) config: WriterConfig,
    /// Key of the next created stream; only this thread creates streams.
    pub(super) next_key: u64,
    /// The batch's records: heads encoded here, data referenced, never copied; reused.
    pub(super) batch: Batch,
    /// Batches committed with `Durability::None` since the last durable checkpoint.
    pub(super) since_checkpoint: u64,
    pub(super) last_checkpoint: Instant,
    /// How long the last batch's write and sync took.
    pub(super) last_write: Duration,
    pub(super) prepare: Prepare,
    /// Chooses between direct and buffered writes by measuring both (`None`: the configured
    /// way only, or the filesystem refuses direct writes).
    pub(super) modes: Option<Chooser>,
}

/// Batches are "small" (worth writing zeros ahead of the log's end for) while their moving
/// average stays below this: a few streams of small commits, where a sync per commit is the
/// cost. Larger batches already spread a sync over enough bytes.
///
/// However fast such a log grows: the zeros double the bytes written, but each sync of a
/// growing file waits for one more I/O (its size and blocks), and that costs a stream of small
/// commits more. One 64 KiB stream, direct writes, zeros at any rate against only below
/// 16 MiB/s (`bench/results/ingest_ab-1-64KiB-zeros-20261203.md`): 1.15× the throughput at
/// 0.91× the CPU per GiB, p50 0.47 → 0.38 ms. Where a volume caps I/O operations, one I/O fewer
/// per commit pays for the zeros' bytes.
const PREPARE_BELOW_BATCH: u64 = 256 << 10;

/// After a failed [`Writer::prepare`] (a full disk), the next try waits this long.
const PREPARE_BACKOFF: Duration = Duration::from_secs(10);

/// The direct-write staging buffer's pages go back to the kernel once no batch used it for
/// this long, so a store at rest holds none of a burst's buffer; a stream that commits at
/// least this often keeps them.
const STAGING_IDLE: Duration = Duration::from_millis(500);

/// What waiting for the next request gave.
enum Received {
    Request(Request),
    /// Every sender is gone.
    Closed,
    TimedOut,
}

/// Wakes the writer thread (a plain thread, no runtime) when its queue has a request.
struct Unpark(std::thread::Thread);

impl std::task::Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Waits at most `timeout` for the next request, polling the queue with `waker` (an
/// [`Unpark`] of the calling thread).
fn recv_timeout(
    rx: &mut mpsc::Receiver<Request>,
    waker: &std::task::Waker,
    timeout: Duration,
) -> Received {
    let mut cx = std::task::Context::from_waker(waker);
    let deadline = Instant::now() + timeout;
    loop {
        match rx.poll_recv(&mut cx) {
            std::task::Poll::Ready(Some(request)) => return Received::Request(request),
            std::task::Poll::Ready(None) => return Received::Closed,
            std::task::Poll::Pending => {}
        }
        let now = Instant::now();
        if now >= deadline {
            return Received::TimedOut;
        }
        std::thread::park_timeout(deadline - now);
    }
}

/// The writer's work off the requests' time: when it writes zeros ahead of the log's end, and
/// when it gives the direct-write staging buffer back.
pub(super) struct Prepare {
    /// The writer thread's queue, for an inline commit to hand the work over; weak, so the
    /// queue still closes when every store handle is gone.
    pub(super) queue: mpsc::WeakSender<Request>,
    /// A prepare is on its way: a [`Request::Prepare`] queued, or a task of [`prepare_after`].
    pub(super) queued: bool,
    /// The writer thread knows the staging buffer is in use and will give it back when idle
    /// (a [`Request::Idle`] was sent, or it committed a batch itself).
    pub(super) idle_queued: bool,
    /// When a batch last used the staging buffer.
    pub(super) staging_used: Instant,
    /// Moving average of the bytes per batch (1/8 weight for the newest).
    pub(super) batch_bytes: u64,
    /// No try before this, after a failure.
    pub(super) not_before: Option<Instant>,
}

impl Prepare {
    pub(super) fn new(queue: mpsc::WeakSender<Request>) -> Self {
        Prepare {
            queue,
            queued: false,
            idle_queued: false,
            staging_used: Instant::now(),
            batch_bytes: u64::MAX,
            not_before: None,
        }
    }
}

/// The writer thread: takes queued requests and commits them in batches.
pub(super) struct WriterThread {
    pub(super) rx: mpsc::Receiver<Request>,
    pub(super) writer: Arc<Mutex<Writer>>,
}

/// Locks the writer; a panic while it was held leaves nothing half-done that matters here
/// (a failed batch is cut back or marks the store failed), so the lock is taken over.
pub(super) fn lock(writer: &Mutex<Writer>) -> MutexGuard<'_, Writer> {
    writer.lock().unwrap_or_else(|p| p.into_inner())
}

impl WriterThread {
    pub(super) fn run(mut self) {
        let mut batch = Vec::new();
        // while the staging buffer holds pages: how long to wait before giving them back
        let mut timed: Option<Duration> = None;
        let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
        loop {
            let received = if let Some(wait) = timed {
                recv_timeout(&mut self.rx, &waker, wait)
            } else {
                self.rx
                    .blocking_recv()
                    .map_or(Received::Closed, Received::Request)
            };
            let first = match received {
                Received::Request(first) => first,
                Received::Closed => {
                    // every handle dropped without close(): still leave a durable index behind
                    let _ = lock(&self.writer).checkpoint();
                    return;
                }
                Received::TimedOut => {
                    // inline commits may have used it since: idle only after STAGING_IDLE
                    let mut writer = lock(&self.writer);
                    let unused = writer.prepare.staging_used.elapsed();
                    if unused < STAGING_IDLE {
                        timed = Some(STAGING_IDLE - unused);
                    } else {
                        writer.segment.release_staging();
                        writer.gauge_staging();
                        writer.prepare.idle_queued = false;
                        timed = None;
                    }
                    continue;
                }
            };
            let mut writer = lock(&self.writer);
            let mut bytes = first.size();
            let mut close = None;
            match first {
                Request::Close { reply } => close = Some(reply),
                Request::Prepare => writer.prepare.queued = false,
                Request::Idle => {}
                other => batch.push(other),
            }
            while close.is_none() && bytes < writer.config.max_batch_bytes {
                match self.rx.try_recv() {
                    Ok(Request::Close { reply }) => close = Some(reply),
                    Ok(Request::Prepare) => writer.prepare.queued = false,
                    Ok(Request::Idle) => {}
                    Ok(request) => {
                        bytes += request.size();
                        batch.push(request);
                    }
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                writer.process(&mut batch);
            }
            if close.is_none() && writer.wants_prepare() {
                // the batch is answered: only requests arriving meanwhile wait for this
                writer.prepare();
            }
            if writer.segment.staging_touched() > 0 {
                writer.prepare.idle_queued = true;
                let unused = writer.prepare.staging_used.elapsed();
                timed = Some(STAGING_IDLE.saturating_sub(unused));
            }
            if let Some(reply) = close {
                if let Err(err) = writer.segment.trim() {
                    warn!(error = %err, "store log: cutting the zeros written ahead of its end failed; the next open ignores them");
                }
                let result = writer.checkpoint();
                drop(writer);
                self.rx.close();
                while let Ok(request) = self.rx.try_recv() {
                    request.answer(Err(StoreError::unavailable("store is closed")));
                }
                let _ = reply.send(result);
                return;
            }
        }
    }
}

/// Writes the zeros an inline commit found short ([`Writer::commit_inline`] returned `true`)
/// once the request is answered: on the caller's runtime thread, as a task that runs when the
/// request's task next waits (its answer written, the next request not yet read), not on the
/// writer thread. A lone stream's next append then finds the log free and commits inline again,
/// where with the writer thread busy writing zeros it went through the queue, with the two
/// thread wake-ups of that round trip, about one append in eight. Outside a runtime, with the
/// log busy (a batch of the writer thread, which prepares after it), or if the task never runs,
/// the request goes to the writer thread instead.
pub(super) fn prepare_after(writer: &Arc<Mutex<Writer>>, queue: mpsc::WeakSender<Request>) {
    /// Hands the prepare to the writer thread unless it was done here.
    struct Handover {
        queue: Option<mpsc::WeakSender<Request>>,
    }
    impl Handover {
        fn done(&mut self) {
            self.queue = None;
        }
    }
    impl Drop for Handover {
        fn drop(&mut self) {
            // the writer thread clears `queued` when it takes the request; a closed or full
            // queue means a closing store or a busy writer thread, which prepares after its
            // batches regardless of `queued`
            if let Some(queue) = self.queue.take().and_then(|q| q.upgrade()) {
                let _ = queue.try_send(Request::Prepare);
            }
        }
    }
    let mut handover = Handover { queue: Some(queue) };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let writer = Arc::clone(writer);
    runtime.spawn(async move {
        let Ok(mut writer) = writer.try_lock() else {
            return;
        };
        handover.done();
        writer.prepare.queued = false;
        if writer.wants_prepare() {
            writer.prepare();
        }
    });
}

impl Writer {
    /// Commits `request` on the calling thread if nothing else is being committed, the store
    /// is open and the log's last write and sync took at most `fast` (a slow disk would hold
    /// the caller that long): returns it back otherwise, to be queued. `close` marks the store
    /// closed before its final checkpoint takes this lock, so nothing commits after that.
    ///
    /// `Ok(true)`: the zeros ahead of the log's end run short; the caller has them written
    /// once this request is answered ([`prepare_after`]), and nobody else asks meanwhile.
    pub(super) fn commit_inline(
        writer: &Mutex<Writer>,
        request: Request,
        fast: Duration,
    ) -> Result<bool, Request> {
        let mut writer = match writer.try_lock() {
            Ok(writer) => writer,
            Err(_) => return Err(request),
        };
        if writer.shared.closed.load(SeqCst) || writer.last_write > fast {
            return Err(request);
        }
        writer.process(&mut vec![request]);
        writer.shared.metrics.inline_batches.fetch_add(1, Relaxed);
        let prepare = !writer.prepare.queued && writer.wants_prepare();
        if prepare {
            writer.prepare.queued = true;
        }
        if !writer.prepare.idle_queued && writer.segment.staging_touched() > 0 {
            // the writer thread sleeps until a request comes: wake it to time the idle period
            if let Some(queue) = writer.prepare.queue.upgrade()
                && queue.try_send(Request::Idle).is_ok()
            {
                writer.prepare.idle_queued = true;
            }
        }
        Ok(prepare)
    }

    /// Whether to write zeros ahead of the log's end now: batches are small, the zeros ahead
    /// run short, the segment has room for more, and the last try did not fail recently.
    fn wants_prepare(&self) -> bool {
        let prepare = &self.prepare;
        prepare.batch_bytes < PREPARE_BELOW_BATCH
            && self.segment.ahead() < PREPARE_STEP
            && self.segment.pos() + self.segment.ahead() + PREPARE_STEP <= self.config.segment_bytes
            && prepare.not_before.is_none_or(|t| Instant::now() >= t)
            && !self.shared.failed.load(SeqCst)
            && !self.shared.closed.load(SeqCst)
    }

    /// Writes [`PREPARE_STEP`] zeros ahead of the log's end (see [`SegmentWriter::prepare`]),
    /// unless that would eat into the disk's reserve.
    fn prepare(&mut self) {
        let free = super::space::free_bytes(self.segment.file()).unwrap_or(0);
        let result = if free < self.config.reserve_bytes + 2 * PREPARE_STEP {
            Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
        } else {
            self.segment.prepare()
        };
        match result {
            Ok(()) => {
                self.prepare.not_before = None;
                self.shared
                    .metrics
                    .prepared_bytes
                    .fetch_add(PREPARE_STEP, Relaxed);
            }
            Err(err) => {
                if !is_no_space(&err) {
                    warn!(error = %err, segment = %self.segment.id(), "store log: writing zeros ahead of its end failed; appends go on without");
                }
                self.prepare.not_before = Some(Instant::now() + PREPARE_BACKOFF);
            }
        }
    }

    /// Updates the gauges of the direct-write buffer.
    pub(super) fn gauge_staging(&self) {
        let metrics = &self.shared.metrics;
        let touched = self.segment.staging_touched() as u64;
        metrics.staging_bytes.store(touched, Relaxed);
        let direct = u64::from(self.segment.is_direct());
        metrics.direct_writes.store(direct, Relaxed);
    }

    /// Commits the index durably with the current log position.
    fn checkpoint(&mut self) -> Result<(), StoreError> {
        if self.shared.failed.load(SeqCst) {
            return Err(StoreError::unavailable(
                "store failed earlier; reopen to recover",
            ));
        }
        let txn = self.shared.db.begin_write().map_err(db_err)?;
        {
            let mut tables = Tables::open(&txn)?;
            tables.set_checkpoint(self.segment.id().number, self.segment.pos())?;
        }
        txn.commit().map_err(db_err)?;
        self.checkpointed();
        Ok(())
    }

    fn checkpointed(&mut self) {
        self.shared
            .durable_segment
            .store(self.segment.id().number, SeqCst);
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        self.shared.metrics.checkpoints.fetch_add(1, Relaxed);
    }

    fn process(&mut self, batch: &mut Vec<Request>) {
        let result = if self.shared.failed.load(SeqCst) {
            Err(StoreError::unavailable(
                "store failed earlier; reopen to recover",
            ))
        } else {
            self.commit(batch)
        };
        let outcomes = match result {
            Ok(outcomes) => outcomes,
            Err(err) if err.kind() == ErrorKind::InsufficientStorage => {
                // nothing of the batch is in the log: every request fails, none is lost
                warn!(error = %err, requests = batch.len(), "store batch refused: disk full");
                batch.iter().map(|r| Err(self.no_space(r, &err))).collect()
            }
            Err(err) => {
                if !self.shared.failed.load(SeqCst) && err.kind() != ErrorKind::Unavailable {
                    error!(error = %err, "store index update failed, refusing further writes");
                    self.shared.failed.store(true, SeqCst);
                }
                let message = format!("store write failed: {err}");
                batch
                    .iter()
                    .map(|_| Err(StoreError::unavailable(message.clone())))
                    .collect()
            }
        };
        // remember the largest append refused for space (for /readyz), forget it on success
        let (mut refused, mut need, mut stored) = (0, 0, false);
        for (request, outcome) in batch.iter().zip(&outcomes) {
            if let Request::Append { data, .. } = request {
                match outcome {
                    Err(e) if e.kind() == ErrorKind::InsufficientStorage => {
                        refused += 1;
                        need = need.max(disk_bytes(data.len()));
                    }
                    Ok(_) if !data.is_empty() => stored = true,
                    _ => {}
                }
            }
        }
        if refused > 0 {
            self.shared.metrics.no_space.fetch_add(refused, Relaxed);
            self.shared.refused_need.store(need, SeqCst);
        } else if stored {
            self.shared.refused_need.store(0, SeqCst);
        }
        let names: Vec<String> = batch
            .iter()
            .filter_map(|r| match r {
                Request::Append { id, .. } | Request::Delete { id, .. } => Some(id.to_string()),
                Request::Close { .. } | Request::Prepare | Request::Idle => None,
            })
            .collect();
        self.gauge_staging();
        self.prepare.staging_used = Instant::now();
        // wake followers before answering, so a wait started after an append returned is not
        // woken by that append's own notification
        self.shared.waiters.notify(names.iter().map(String::as_str));
        for (request, outcome) in batch.drain(..).zip(outcomes) {
            request.answer(outcome);
        }
    }

    /// The answer to a request refused for lack of space, with its stream's committed length.
    fn no_space(&self, request: &Request, err: &StoreError) -> StoreError {
        let committed = match request {
            Request::Append { id, .. } | Request::Delete { id, .. } => {
                super::read::head(&self.shared.db, id.as_str())
                    .ok()
                    .flatten()
                    .map(|i| i.length)
            }
            Request::Close { .. } | Request::Prepare | Request::Idle => None,
        };
        StoreError::insufficient_storage(err.to_string(), committed.or(Some(0)))
    }

    /// Validates, logs durably, and indexes one batch; returns one outcome per request.
    fn commit(
        &mut self,
        batch: &[Request],
    ) -> Result<Vec<Result<Option<Appended>, StoreError>>, StoreError> {
        let durable = self.since_checkpoint + 1 >= self.config.checkpoint_batches
            || self.last_checkpoint.elapsed() >= self.config.checkpoint_interval;
        let mut txn = self.shared.db.begin_write().map_err(db_err)?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(|e| StoreError::internal(format!("index: {e}")))?;
        let now = unix_now();
        // bytes appends may still take on disk; deletes and seals pass regardless (they are
        // tiny, and deletes are how an operator frees space)
        // (the zeros written ahead of the log's end are room already taken)
        let mut room = super::space::free_bytes(self.segment.file()).map_or(u64::MAX, |free| {
            (free + self.segment.ahead()).saturating_sub(self.config.reserve_bytes)
        });
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut ops: Vec<(usize, Spec, u64, u64)> = Vec::new();
        {
            let mut tables = Tables::open(&txn)?;
            let mut pending: HashMap<&str, Option<Meta>> = HashMap::new();
            self.batch.clear();
            for (i, request) in batch.iter().enumerate() {
                let (outcome, specs) = validate(
                    request,
                    &tables,
                    &mut pending,
                    &mut self.next_key,
                    now,
                    &mut room,
                )?;
                outcomes.push(outcome);
                for spec in specs.into_iter().flatten() {
                    let (segment, pos) = self.add(spec, request, now)?;
                    ops.push((i, spec, segment, pos));
                }
            }
            if ops.is_empty() {
                drop(tables);
                txn.abort().map_err(db_err)?;
                return Ok(outcomes);
            }
            self.flush()?;
            for &(i, spec, segment, pos) in &ops {
                tables.apply(spec.record(&batch[i], now), segment, pos, false)?;
            }
            tables.set_checkpoint(self.segment.id().number, self.segment.pos())?;
        }
        txn.commit().map_err(db_err)?;
        let metrics = &self.shared.metrics;
        metrics.batches.fetch_add(1, Relaxed);
        metrics.batch_records.observe(ops.len() as f64);
        if durable {
            self.checkpointed();
        } else {
            self.since_checkpoint += 1;
        }
        Ok(outcomes)
    }

    /// Tells the chooser how the batch just written went, and writes the next ones the way it
    /// says (see `modes`).
    fn choose_mode(&mut self, bytes: u64) {
        let Some(modes) = &mut self.modes else {
            return;
        };
        let verdict = modes.observe(self.segment.is_direct(), bytes, self.last_write);
        let next = match verdict {
            Verdict::Same => return,
            Verdict::Try { direct } => {
                self.shared.metrics.write_trials.fetch_add(1, Relaxed);
                direct
            }
            Verdict::Settle {
                direct: next,
                switched,
                rates: (direct_rate, buffered_rate),
            } => {
                if switched {
                    let way = |d: bool| {
                        if d {
                            "direct"
                        } else {
                            "through the page cache"
                        }
                    };
                    let mib = |r: f64| (r / f64::from(1 << 20)).round() as u64;
                    info!(
                        direct_mib_per_s = mib(direct_rate),
                        buffered_mib_per_s = mib(buffered_rate),
                        "store log: writing {} from now on",
                        way(next)
                    );
                }
                next
            }
        };
        if let Err(err) = self.segment.set_direct(next) {
            warn!(error = %err, segment = %self.segment.id(), "store log: switching the way it is written failed; going on as before");
        }
        if next && !self.segment.is_direct() {
            // direct writes refused (or opening them failed): buffered, nothing to choose
            self.modes = None;
        }
        self.gauge_staging();
    }

    /// Adds a record to the batch buffer; a batch that would overflow the segment starts a new
    /// one first. A batch never spans segments: it is one write, cut back whole when it fails.
    /// Returns where the record goes.
    fn add(&mut self, spec: Spec, request: &Request, now: u64) -> Result<(u64, u64), StoreError> {
        let record = spec.record(request, now);
        let end = self.segment.pos() + self.batch.len() as u64;
        if self.batch.is_empty()
            && end > 0
            && end + record.encoded_len() as u64 > self.config.segment_bytes
        {
            self.segment.roll().map_err(|e| {
                // nothing is written yet: the batch fails, the store goes on
                if is_no_space(&e) {
                    StoreError::insufficient_storage(
                        format!("disk full: cannot start a new log segment: {e}"),
                        None,
                    )
                } else {
                    StoreError::unavailable(format!("starting a log segment: {e}"))
                }
            })?;
            info!(
                segment = %self.segment.id(),
                "store log rolled to a new segment"
            );
        }
        if self.batch.is_empty() {
            self.batch
                .begin(self.segment.pos(), self.segment.is_direct());
        }
        let at = match (spec, request) {
            (Spec::Append { .. }, Request::Append { data, crc, .. }) => {
                let before = self.batch.len();
                let at = self.batch.push_append(&record, data.clone(), *crc);
                let metrics = &self.shared.metrics;
                metrics.appended_bytes.fetch_add(data.len() as u64, Relaxed);
                metrics
                    .padded_bytes
                    .fetch_add((at - before) as u64, Relaxed);
                at
            }
            _ => self.batch.push(&record),
        };
        Ok((self.segment.id().packed(), self.segment.pos() + at as u64))
    }

    /// Writes the buffer to the segment and fdatasyncs it. A failed write is cut back, so the
    /// log ends where it did and the store keeps working: a full disk is an answer (507), not a
    /// state. Only a failed cut leaves the tail unknown and stops writes until a reopen.
    fn flush(&mut self) -> Result<(), StoreError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let result = self.segment.write_durably(&self.batch);
        let len = self.batch.len();
        self.batch.clear();
        self.last_write = started.elapsed();
        match result {
            Ok(()) => {
                self.choose_mode(len as u64);
                self.segment.release_behind(self.config.cached_tail_bytes);
                let prepare = &mut self.prepare;
                prepare.batch_bytes = if prepare.batch_bytes == u64::MAX {
                    len as u64
                } else {
                    (prepare.batch_bytes * 7 + len as u64) / 8
                };
                let metrics = &self.shared.metrics;
                metrics.fsyncs.fetch_add(1, Relaxed);
                metrics
                    .fsync_seconds
                    .observe(started.elapsed().as_secs_f64());
                Ok(())
            }
            Err((err, Some(cut))) => {
                error!(error = %err, cut_error = %cut, segment = %self.segment.id(), "store log write failed and could not be cut back; refusing further writes");
                self.shared.failed.store(true, SeqCst);
                Err(StoreError::unavailable(format!(
                    "writing the log: {err}; the store must be reopened"
                )))
            }
            Err((err, None)) if is_no_space(&err) => Err(StoreError::insufficient_storage(
                format!("disk full: a write of {len} bytes to the log failed: {err}"),
                None,
            )),
            Err((err, None)) => {
                warn!(error = %err, segment = %self.segment.id(), "store log write failed; cut back, nothing acknowledged");
                Err(StoreError::unavailable(format!("writing the log: {err}")))
            }
        }
    }
}

/// Disk bytes an append of `len` bytes may take: its record, the pad that may place it, a
/// create and a seal. The room check and `/readyz` use the same figure, so a disk one append
/// short of room is not ready.
fn disk_bytes(len: usize) -> u64 {
    2 * super::log::HEADER_LEN as u64 + 64 + super::log::PAD_MAX + len as u64
}

/// The outcome of one request and the records it needs (at most create, append, seal).
type Validated = (Result<Option<Appended>, StoreError>, [Option<Spec>; 3]);

/// Checks a request against the state of its stream, including earlier requests of the batch.
fn validate<'b>(
    request: &'b Request,
    tables: &Tables<'_>,
    pending: &mut HashMap<&'b str, Option<Meta>>,
    next_key: &mut u64,
    now: u64,
    room: &mut u64,
) -> Result<Validated, StoreError> {
    let mut specs = [None; 3];
    let (id, name) = match request {
        Request::Append { id, .. } | Request::Delete { id, .. } => (id, id.as_str()),
        Request::Close { .. } | Request::Prepare | Request::Idle => return Ok((Ok(None), specs)),
    };
    let meta = match pending.get(name) {
        Some(meta) => *meta,
        None => tables.meta(name)?,
    };
    match request {
        Request::Append {
            offset, data, seal, ..
        } => {
            let mut meta = match meta {
                None if *offset != 0 => return Ok((Err(StoreError::not_found(id)), specs)),
                None => {
                    let key = *next_key;
                    *next_key += 1;
                    specs[0] = Some(Spec::Create { key });
                    Meta {
                        key,
                        length: 0,
                        sealed: false,
                        created: now,
                        updated: now,
                    }
                }
                Some(m) if m.sealed => return Ok((Err(StoreError::sealed(id, m.length)), specs)),
                Some(m) if m.length != *offset => {
                    return Ok((Err(StoreError::conflict(id, *offset, m.length)), specs));
                }
                Some(m) => m,
            };
            if !data.is_empty() {
                let need = disk_bytes(data.len());
                if need > *room {
                    let err = StoreError::insufficient_storage(
                        format!(
                            "disk full: {} bytes free above the reserve, an append of {} bytes does not fit",
                            *room,
                            data.len()
                        ),
                        Some(meta.length),
                    );
                    return Ok((Err(err), [None; 3]));
                }
                *room -= need;
                specs[1] = Some(Spec::Append {
                    key: meta.key,
                    offset: meta.length,
                });
                meta.length += data.len() as u64;
                meta.updated = now;
            }
            if *seal {
                specs[2] = Some(Spec::Seal { key: meta.key });
                meta.sealed = true;
            }
            pending.insert(name, Some(meta));
            Ok((
                Ok(Some(Appended {
                    offset: meta.length,
                    sealed: meta.sealed,
                })),
                specs,
            ))
        }
        Request::Delete { .. } => {
            let Some(meta) = meta else {
                return Ok((Err(StoreError::not_found(id)), specs));
            };
            specs[0] = Some(Spec::Delete { key: meta.key });
            pending.insert(name, None);
            Ok((Ok(None), specs))
        }
        Request::Close { .. } | Request::Prepare | Request::Idle => Ok((Ok(None), specs)),
    }
}

//! `ChunkBuf`: the buffer a PATCH body's bytes are gathered in before the store takes them.
//!
//! Like a `BytesMut` of fixed capacity, except that a buffer of [`ALIGNED_FROM`] bytes or more
//! starts on a page: the embedded store's direct writes then take the chunk's blocks from it as
//! it is, where from an allocator's buffer (jemalloc offsets large allocations by a random
//! multiple of the cache line) they would copy it first. Smaller buffers are allocated as
//! usual, so a short body does not hold a page (the byte budget charges the capacity).
//!
//! Page-aligned buffers are reused: one dropped (the store wrote it) goes to a small pool, and
//! the next of the same capacity comes from there, its pages already faulted in, instead of
//! from the allocator, which for such sizes takes its arena's lock, maps pages anew after it
//! purged them, and samples one allocation in eight of 64 KiB for the heap profile (an unwind
//! of the stack). The pool holds at most [`POOL_BYTES`]; what it holds goes back to the
//! allocator once unused for [`POOL_IDLE`], and when that empties the pool (the gateway is at
//! rest) the allocator is told to give its freed pages back at once, so none of it stays.

use std::alloc::{self, Layout};
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Capacities from which a buffer starts on a page: jemalloc gives such sizes whole pages
/// anyway (the store writes data from where it is from 64 KiB on, `log::ALIGNED_MIN`, and a
/// chunk buffer grows from 16 KiB).
pub(super) const ALIGNED_FROM: usize = 16 << 10;
const PAGE: usize = 4096;

/// A byte buffer of fixed capacity; grow by making a larger one and copying.
pub(super) struct ChunkBuf {
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
}

// SAFETY: `ChunkBuf` owns its allocation exclusively, like a `Box<[u8]>`.
unsafe impl Send for ChunkBuf {}

impl Default for ChunkBuf {
    fn default() -> Self {
        ChunkBuf {
            ptr: NonNull::dangling(),
            cap: 0,
            len: 0,
        }
    }
}

impl ChunkBuf {
    /// An empty buffer for `cap` bytes (page-aligned from [`ALIGNED_FROM`] on), from the pool
    /// when it holds one of that capacity.
    pub(super) fn with_capacity(cap: usize) -> Self {
        let Some(layout) = Self::layout(cap) else {
            return ChunkBuf::default();
        };
        if let Some(ptr) = pool_take(cap) {
            return ChunkBuf { ptr, cap, len: 0 };
        }
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { alloc::alloc(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            alloc::handle_alloc_error(layout);
        };
        ChunkBuf { ptr, cap, len: 0 }
    }

    /// The allocation's layout for `cap` bytes; `None` for 0 (nothing allocated).
    fn layout(cap: usize) -> Option<Layout> {
        if cap == 0 {
            return None;
        }
        let align = if cap >= ALIGNED_FROM { PAGE } else { 1 };
        // a chunk is far below isize::MAX; a size that is not is a caller's bug
        Some(Layout::from_size_align(cap, align).unwrap_or_else(|_| {
            panic!("chunk buffer of {cap} bytes");
        }))
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn capacity(&self) -> usize {
        self.cap
    }

    /// Appends `bytes`; they must fit in the capacity (the caller grows first).
    pub(super) fn extend_from_slice(&mut self, bytes: &[u8]) {
        assert!(
            bytes.len() <= self.cap - self.len,
            "chunk buffer overflow: {} + {} > {}",
            self.len,
            bytes.len(),
            self.cap
        );
        // SAFETY: the destination is inside our allocation (checked above) and cannot overlap
        // a slice the caller holds (we are borrowed mutably).
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.as_ptr().add(self.len),
                bytes.len(),
            );
        }
        self.len += bytes.len();
    }

    /// The buffer as `Bytes`, without a copy.
    pub(super) fn freeze(self) -> Bytes {
        if self.is_empty() {
            Bytes::new()
        } else {
            Bytes::from_owner(self)
        }
    }
}

impl AsRef<[u8]> for ChunkBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the first `len` bytes of the allocation are initialized (written by
        // `extend_from_slice`); a dangling pointer with length 0 is a valid empty slice.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for ChunkBuf {
    fn drop(&mut self) {
        if self.cap >= ALIGNED_FROM && pool_put(self.ptr, self.cap) {
            return;
        }
        // SAFETY: allocated in `with_capacity` for `cap` bytes; this buffer owned it alone.
        unsafe { dealloc(self.ptr, self.cap) };
    }
}

/// Frees an allocation of [`ChunkBuf::with_capacity`] (nothing for a capacity of 0).
///
/// # Safety
/// `ptr` was allocated there for `cap` bytes, and nothing uses it afterwards.
unsafe fn dealloc(ptr: NonNull<u8>, cap: usize) {
    if let Some(layout) = ChunkBuf::layout(cap) {
        // SAFETY: the caller's promise; `layout` is the one it was allocated with.
        unsafe { alloc::dealloc(ptr.as_ptr(), layout) };
    }
}

/// Bytes of free buffers the pool keeps at most: two of the store writer's largest batches
/// (4 MiB; it lets go of a whole batch's buffers at once). Against 4 MiB at 1,024 streams
/// (`bench/results/ingest_ab-1024-64KiB-pool8-20261203.md`): 0.95× the CPU per GiB, minor
/// faults 11.2k → 8.5k per GiB, peak RSS +0.7 MiB.
pub(super) const POOL_BYTES: usize = 8 << 20;

/// A pooled buffer unused this long goes back to the allocator.
pub(super) const POOL_IDLE: Duration = Duration::from_millis(500);

/// Free page-aligned buffers, oldest first.
struct Pool {
    free: Vec<Free>,
    bytes: usize,
    /// The thread that gives idle buffers back, once started.
    trimmer: Option<std::thread::Thread>,
    /// The trimming thread sleeps until woken (it found the pool empty): the next buffer put
    /// back wakes it. Otherwise it wakes on its own when the oldest buffer would be idle, and
    /// a buffer put back meanwhile does not wake it: one stream takes and returns a buffer per
    /// request, and a thread wake-up for each cost that stream ~6 % of its CPU.
    trimmer_asleep: bool,
}

/// A free buffer of the pool: its allocation (`cap` bytes, page-aligned) and when it came back.
struct Free {
    ptr: NonNull<u8>,
    cap: usize,
    since: Instant,
}

// SAFETY: a free buffer is owned by the pool alone, like a `Box<[u8]>`.
unsafe impl Send for Free {}

fn pool() -> MutexGuard<'static, Pool> {
    static POOL: OnceLock<Mutex<Pool>> = OnceLock::new();
    POOL.get_or_init(|| {
        Mutex::new(Pool {
            free: Vec::new(),
            bytes: 0,
            trimmer: None,
            trimmer_asleep: false,
        })
    })
    .lock()
    // consistent between statements: a panic elsewhere leaves it usable
    .unwrap_or_else(|p| p.into_inner())
}

/// Bytes of free buffers the pool holds now (`engine_gateway_chunk_pool_bytes`).
pub(crate) fn pooled_bytes() -> u64 {
    pool().bytes as u64
}

/// The most recently returned free buffer of exactly `cap` bytes.
fn pool_take(cap: usize) -> Option<NonNull<u8>> {
    if cap < ALIGNED_FROM {
        return None;
    }
    let mut pool = pool();
    let i = pool.free.iter().rposition(|f| f.cap == cap)?;
    let free = pool.free.remove(i);
    pool.bytes -= cap;
    Some(free.ptr)
}

/// Keeps a dropped buffer for reuse; `false` when the pool is full (the caller frees it).
fn pool_put(ptr: NonNull<u8>, cap: usize) -> bool {
    let mut pool = pool();
    if pool.bytes + cap > POOL_BYTES {
        return false;
    }
    if pool.trimmer.is_none() {
        match std::thread::Builder::new()
            .name("egw-chunk-pool".into())
            .spawn(trim_idle)
        {
            Ok(handle) => pool.trimmer = Some(handle.thread().clone()),
            // nothing would give the buffers back: do not keep them
            Err(_) => return false,
        }
    }
    pool.free.push(Free {
        ptr,
        cap,
        since: Instant::now(),
    });
    pool.bytes += cap;
    if pool.trimmer_asleep {
        pool.trimmer_asleep = false;
        if let Some(trimmer) = &pool.trimmer {
            trimmer.unpark();
        }
    }
    true
}

/// The trimming thread: sleeps while the pool is empty, else frees the buffers unused for
/// [`POOL_IDLE`] and sleeps until the oldest one left would be.
fn trim_idle() {
    loop {
        let now = Instant::now();
        let (idle, wait) = {
            let mut pool = pool();
            let count = pool
                .free
                .iter()
                .take_while(|f| now.duration_since(f.since) >= POOL_IDLE)
                .count();
            let idle: Vec<Free> = pool.free.drain(..count).collect();
            pool.bytes -= idle.iter().map(|f| f.cap).sum::<usize>();
            let wait = pool
                .free
                .first()
                .map(|f| POOL_IDLE.saturating_sub(now.duration_since(f.since)));
            // a put after this unparks us, before or during the park below
            pool.trimmer_asleep = wait.is_none();
            (idle, wait)
        };
        // freed with the pool unlocked: requests take and return buffers meanwhile
        let emptied = !idle.is_empty() && wait.is_none();
        for f in idle {
            // SAFETY: allocated in `with_capacity` for `cap` bytes; the pool owned it alone.
            unsafe { dealloc(f.ptr, f.cap) };
        }
        if emptied {
            // Every buffer went unused for POOL_IDLE: the gateway is at rest, and the allocator
            // would keep the freed pages until its next burst of activity (a failure only
            // leaves them resident).
            let _ = memwatch::release_unused();
        }
        match wait {
            Some(wait) => std::thread::park_timeout(wait.max(Duration::from_millis(10))),
            None => std::thread::park(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathers_bytes_and_freezes_them_in_place() {
        for cap in [0, 1, 300, ALIGNED_FROM - 1, ALIGNED_FROM, 256 << 10] {
            let mut buf = ChunkBuf::with_capacity(cap);
            assert_eq!((buf.len(), buf.capacity()), (0, cap));
            let data: Vec<u8> = (0..cap).map(|i| (i % 251) as u8).collect();
            let half = cap / 2;
            buf.extend_from_slice(&data[..half]);
            buf.extend_from_slice(&data[half..]);
            assert_eq!(buf.as_ref(), &data[..]);
            let at = buf.as_ref().as_ptr();
            if cap >= ALIGNED_FROM {
                assert!(at.addr().is_multiple_of(PAGE), "{cap} bytes at {at:?}");
            }
            let frozen = buf.freeze();
            assert_eq!(&frozen[..], &data[..]);
            if cap > 0 {
                assert_eq!(frozen.as_ptr(), at, "frozen without a copy");
            }
        }
    }

    /// Free buffers of `cap` bytes in the pool.
    fn pooled(cap: usize) -> usize {
        pool().free.iter().filter(|f| f.cap == cap).count()
    }

    #[test]
    fn reuses_dropped_buffers_and_gives_idle_ones_back() {
        // a capacity no other test uses: tests share the pool
        let cap = ALIGNED_FROM + 3 * PAGE;
        let mut buf = ChunkBuf::with_capacity(cap);
        buf.extend_from_slice(b"first body");
        let at = buf.as_ref().as_ptr();
        drop(buf.freeze());
        assert_eq!(pooled(cap), 1);
        assert!(pooled_bytes() >= cap as u64);
        let again = ChunkBuf::with_capacity(cap);
        assert_eq!(again.as_ref().as_ptr(), at, "the dropped buffer is reused");
        assert!(again.is_empty());
        assert_eq!(pooled(cap), 0);
        drop(again);
        assert_eq!(pooled(cap), 1);
        wait_trimmed(cap);
        // the trim may have emptied the pool and put the trimming thread to sleep until woken:
        // a buffer put back now must still go back to the allocator once idle
        drop(ChunkBuf::with_capacity(cap));
        assert_eq!(pooled(cap), 1);
        wait_trimmed(cap);
    }

    /// Waits until the pool holds no free buffer of `cap` bytes, failing after the idle time
    /// and a margin.
    fn wait_trimmed(cap: usize) {
        let deadline = Instant::now() + POOL_IDLE + Duration::from_secs(10);
        while pooled(cap) > 0 {
            assert!(
                Instant::now() < deadline,
                "an idle buffer stayed in the pool"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn the_pool_is_bounded() {
        let cap = ALIGNED_FROM + 5 * PAGE;
        let bufs: Vec<ChunkBuf> = (0..POOL_BYTES / cap + 8)
            .map(|_| ChunkBuf::with_capacity(cap))
            .collect();
        drop(bufs);
        assert!(pooled(cap) * cap <= POOL_BYTES);
        assert!(pool().bytes <= POOL_BYTES);
    }

    #[test]
    #[should_panic(expected = "chunk buffer overflow")]
    fn refuses_bytes_past_its_capacity() {
        let mut buf = ChunkBuf::with_capacity(4);
        buf.extend_from_slice(b"hello");
    }
}

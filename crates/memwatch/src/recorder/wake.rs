//! The allocator-side half of the flight recorder: an armed threshold checked at each fold of
//! the allocation counter, and a wake-up of the recorder thread that neither allocates nor locks.
//!
//! The recorder thread stores the next level worth waking for in [`ARMED`] (the lowest armed
//! rung of the ladder, or the growth-rate mark). The allocator's fold path, which runs at most
//! once per `FOLD_THRESHOLD` bytes per thread, compares the new total against it: one relaxed
//! load when nothing is crossed. The allocation that crosses it disarms (compare-exchange, so
//! exactly one thread wins), stamps the time with `clock_gettime` (vDSO, no allocation) and
//! writes 8 bytes to an eventfd the recorder thread polls. `write(2)` on an eventfd neither
//! allocates nor blocks (the counter cannot overflow at one write per crossing).
//!
//! **Invariant:** the eventfd is created once per process and never closed, so a thread that
//! loaded its number just before a recorder stopped can never write into a reused descriptor.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU64, Ordering};

/// The allocated-bytes level whose crossing wakes the recorder; `i64::MAX` when disarmed.
static ARMED: AtomicI64 = AtomicI64::new(i64::MAX);
/// The eventfd the recorder thread polls; -1 until a recorder first starts.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
/// Creates [`WAKE_FD`] once; holds the creation result for later starts.
static WAKE_FD_INIT: OnceLock<Result<i32, i32>> = OnceLock::new();
/// `CLOCK_MONOTONIC` nanoseconds of the last crossing, stamped by the crossing allocation:
/// the start of the detection latency.
static CROSSED_AT_NS: AtomicU64 = AtomicU64::new(0);
/// Allocated bytes right after the crossing allocation.
static CROSSED_BYTES: AtomicI64 = AtomicI64::new(0);
/// Crossings seen by the allocator since the process started; the recorder compares it with
/// the count it last handled to tell a crossing wake from a timeout or a request.
static CROSSINGS: AtomicU64 = AtomicU64::new(0);

/// Called from the allocator's fold with the new total after a positive delta.
#[inline]
pub(crate) fn check(now: i64) {
    let armed = ARMED.load(Ordering::Relaxed);
    if now >= armed {
        crossed(now, armed);
    }
}

#[cold]
#[inline(never)]
fn crossed(now: i64, armed: i64) {
    if ARMED
        .compare_exchange(armed, i64::MAX, Ordering::AcqRel, Ordering::Relaxed)
        .is_err()
    {
        return; // another thread crossed first, or the recorder re-armed meanwhile
    }
    CROSSED_AT_NS.store(monotonic_ns(), Ordering::Relaxed);
    CROSSED_BYTES.store(now, Ordering::Relaxed);
    CROSSINGS.fetch_add(1, Ordering::Release);
    wake();
}

/// Wakes the recorder thread, if one ever started. Safe from any context: one `write(2)`.
pub(crate) fn wake() {
    let fd = WAKE_FD.load(Ordering::Acquire);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local to an eventfd that is never closed. A failed
        // write (EAGAIN at a saturated counter) means a wake-up is already pending.
        unsafe { libc::write(fd, (&raw const one).cast(), 8) };
    }
}

/// Arms the allocator check at `bytes` (`None` disarms).
pub(crate) fn arm(bytes: Option<u64>) {
    let level = bytes.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
    ARMED.store(level, Ordering::Release);
}

/// The level armed now, for the status page.
pub(crate) fn armed() -> Option<u64> {
    let level = ARMED.load(Ordering::Relaxed);
    (level != i64::MAX).then(|| u64::try_from(level).unwrap_or(0))
}

/// A crossing reported by the allocator.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Crossing {
    /// Total crossings so far (a sequence number).
    pub(crate) count: u64,
    /// When the crossing allocation happened (`CLOCK_MONOTONIC` ns).
    pub(crate) at_ns: u64,
    /// Allocated bytes right after it.
    pub(crate) bytes: u64,
}

/// The latest crossing.
pub(crate) fn last_crossing() -> Crossing {
    let count = CROSSINGS.load(Ordering::Acquire);
    Crossing {
        count,
        at_ns: CROSSED_AT_NS.load(Ordering::Relaxed),
        bytes: u64::try_from(CROSSED_BYTES.load(Ordering::Relaxed)).unwrap_or(0),
    }
}

/// The process's wake eventfd, created at the first call. Errors are the errno of `eventfd`.
pub(crate) fn wake_fd() -> Result<i32, i32> {
    *WAKE_FD_INIT.get_or_init(|| {
        // SAFETY: plain syscall wrapper; the descriptor is owned by this module forever.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
        }
        WAKE_FD.store(fd, Ordering::Release);
        Ok(fd)
    })
}

/// Waits until the eventfd is signalled or `timeout_ns` passes; drains it. Returns whether it
/// was signalled.
pub(crate) fn wait(fd: i32, timeout_ns: u64) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout = libc::timespec {
        tv_sec: i64::try_from(timeout_ns / 1_000_000_000).unwrap_or(i64::MAX),
        tv_nsec: i64::try_from(timeout_ns % 1_000_000_000).unwrap_or(0),
    };
    // SAFETY: one valid pollfd, a live timespec, no signal mask change.
    let ready = unsafe { libc::ppoll(&raw mut pfd, 1, &raw const timeout, std::ptr::null()) };
    if ready <= 0 {
        return false;
    }
    let mut value: u64 = 0;
    // SAFETY: reads 8 bytes into a live local from our non-blocking eventfd.
    unsafe { libc::read(fd, (&raw mut value).cast(), 8) };
    true
}

/// `CLOCK_MONOTONIC` in nanoseconds; a vDSO call, no allocation.
pub(crate) fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// `CLOCK_REALTIME` in milliseconds since the Unix epoch, for capture names and metadata.
pub(crate) fn unix_ms() -> u64 {
    clock_ns(libc::CLOCK_REALTIME) / 1_000_000
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes into a live local timespec.
    unsafe { libc::clock_gettime(clock, &raw mut ts) };
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

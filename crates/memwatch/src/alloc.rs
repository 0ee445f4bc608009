//! The global allocator: jemalloc plus an allocation counter kept at the allocator itself.
//!
//! Every allocation, deallocation and reallocation adds its signed size change to a
//! thread-local delta. When the delta's magnitude passes [`FOLD_THRESHOLD`] it is folded into
//! one global counter and the global peak is raised with `fetch_max`. So the global is exact
//! to within `threads × FOLD_THRESHOLD`, and a threshold crossing is seen at the allocation that
//! crosses it (a single large allocation is folded at once), not at the next poll.
//!
//! **Invariant:** the allocation path never allocates, locks or does I/O. The thread-local is a
//! `const`-initialised `Cell<i64>`: no lazy initialisation and no destructor registration, so it
//! is usable from the first allocation of a thread to its last.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::ffi::{CStr, CString, c_char};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use tikv_jemallocator::Jemalloc;

use crate::Error;

/// Size of the per-thread delta (in bytes, either sign) above which it is folded into the global
/// counter. Bounds the counter's error per thread; small enough to keep the global accurate for a
/// service with a few dozen threads, large enough that a fold (two atomic RMWs) is rare.
pub const FOLD_THRESHOLD: i64 = 128 * 1024;

/// jemalloc options memwatch recommends: sampled heap profiling always on, one sample per
/// 512 KiB allocated on average (`lg_prof_sample:19`), which costs little CPU.
pub const DEFAULT_MALLOC_CONF: &CStr = c"prof:true,prof_active:true,lg_prof_sample:19";

/// jemalloc wrapped so that allocated bytes are counted at the allocator.
///
/// Install it in the binary (not in a library):
///
/// ```no_run
/// #[global_allocator]
/// static GLOBAL: memwatch::Allocator = memwatch::Allocator::new();
/// memwatch::malloc_conf!(); // sampled heap profiling on by default, MALLOC_CONF overrides
/// # fn main() {}
/// ```
#[derive(Debug, Default)]
pub struct Allocator {
    /// The allocator doing the actual work; memwatch only observes.
    inner: Jemalloc,
}

impl Allocator {
    /// A counting jemalloc allocator, usable in a `static`.
    pub const fn new() -> Self {
        Self { inner: Jemalloc }
    }
}

/// Bytes currently allocated through [`Allocator`] (requested sizes, not jemalloc's size
/// classes), exact to within `threads × FOLD_THRESHOLD`. `None` when the allocator is not
/// installed (nothing was ever folded).
pub fn allocated_bytes() -> Option<u64> {
    installed().then(|| clamp(CURRENT.load(Ordering::Relaxed)))
}

/// The allocator's running maximum since the last drain, which then restarts from the current
/// value. Only [`peaks`](crate::peaks) calls it: it moves the value into its trailing window,
/// so no reader ever loses a spike to another.
pub(crate) fn drain_peak() -> Option<u64> {
    if !installed() {
        return None;
    }
    let current = CURRENT.load(Ordering::Relaxed);
    let previous = PEAK.swap(current, Ordering::Relaxed);
    // A fold racing with the swap may have raised CURRENT after our load: keep the peak honest.
    PEAK.fetch_max(CURRENT.load(Ordering::Relaxed), Ordering::Relaxed);
    Some(clamp(previous.max(current)))
}

/// Highest value of [`allocated_bytes`] over the trailing peak window (default 60 s; see
/// [`set_peak_window`](crate::set_peak_window)). Reading resets nothing: every reader sees
/// the same peak. `None` when the allocator is not installed.
pub fn peek_peak() -> Option<u64> {
    crate::peaks::allocated_peak()
}

/// Folds the calling thread's pending delta into the global counter. A thread that exits takes
/// its unfolded delta (< `FOLD_THRESHOLD`) with it; call this when a thread stops (e.g. from
/// tokio's `on_thread_stop`) so thread churn does not make the counter drift.
pub fn flush_thread() {
    let delta = DELTA.with(|d| d.replace(0));
    if delta != 0 {
        fold(delta);
    }
}

/// Whether jemalloc's heap profiling is compiled in and enabled (`opt.prof`), i.e. whether a
/// `malloc_conf`/`MALLOC_CONF` with `prof:true` was in effect at start.
pub fn profiling_enabled() -> Result<bool, Error> {
    // SAFETY: "opt.prof" is a bool option, read as bool.
    unsafe { tikv_jemalloc_ctl::raw::read::<bool>(b"opt.prof\0") }.map_err(|err| Error::Jemalloc {
        what: "opt.prof",
        code: err,
    })
}

/// Gives the allocator's unused dirty pages back to the kernel now, in every arena, rather
/// than when its decay would (`dirty_decay_ms`): jemalloc purges on its own allocation
/// activity, so pages freed just as a process goes idle stay resident until the next burst.
/// Call it when a burst's buffers were freed at rest; under load it would only make the next
/// allocations fault their pages in again.
pub fn release_unused() -> Result<(), Error> {
    // `arena.<MALLCTL_ARENAS_ALL>.purge`: a control without input or output.
    let name = b"arena.4096.purge\0";
    // SAFETY: a NUL-terminated control name and null old/new pointers, as this control needs.
    let code = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr().cast(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if code == 0 {
        Ok(())
    } else {
        Err(Error::Control {
            what: "arena.4096.purge",
            source: std::io::Error::from_raw_os_error(code),
        })
    }
}

/// Writes a raw jemalloc heap profile (jemalloc's `prof.dump` format, convertible to pprof
/// offline) to `path`. Needs profiling enabled; blocking file I/O, so not on an async worker.
pub fn dump_heap_profile(path: &Path) -> Result<(), Error> {
    use std::os::unix::ffi::OsStrExt;
    if !profiling_enabled()? {
        return Err(Error::ProfilingDisabled);
    }
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidPath(path.to_path_buf()))?;
    let ptr: *const c_char = c_path.as_ptr();
    // SAFETY: "prof.dump" takes a `const char *` to a NUL-terminated path that jemalloc only
    // reads during the call; `c_path` outlives it.
    unsafe { tikv_jemalloc_ctl::raw::write(b"prof.dump\0", ptr) }.map_err(|err| Error::Jemalloc {
        what: "prof.dump",
        code: err,
    })
}

/// A `malloc_conf` string in the form jemalloc reads it: the C symbol is a `const char *`.
/// Used by [`malloc_conf!`](crate::malloc_conf); not useful on its own.
#[repr(transparent)]
#[derive(Debug)]
pub struct MallocConf(*const c_char);

// SAFETY: the pointer targets a `'static` immutable C string.
unsafe impl Sync for MallocConf {}

impl MallocConf {
    /// Points at `conf`, which lives for the whole program.
    pub const fn new(conf: &'static CStr) -> Self {
        Self(conf.as_ptr())
    }
}

/// Defines jemalloc's `malloc_conf` symbol in the calling binary, so jemalloc starts with these
/// options. Without argument it uses [`DEFAULT_MALLOC_CONF`] (sampled heap profiling on); with
/// one, a `&'static CStr` such as `c"prof:true,lg_prof_sample:17"`.
///
/// jemalloc applies, in order, its compile-time defaults, this symbol, `/etc/malloc.conf`, then
/// the `MALLOC_CONF` environment variable, later sources overriding earlier ones: operators
/// can turn profiling off with `MALLOC_CONF=prof:false` without a rebuild. Use the macro once,
/// at the top level of the binary crate (a symbol defined in a library may not be linked in).
#[macro_export]
macro_rules! malloc_conf {
    () => {
        $crate::malloc_conf!($crate::DEFAULT_MALLOC_CONF);
    };
    ($conf:expr) => {
        // The symbol is `_rjem_malloc_conf` where tikv-jemalloc-sys must prefix its symbols.
        #[cfg_attr(
            not(any(
                target_vendor = "apple",
                target_os = "android",
                target_os = "dragonfly"
            )),
            unsafe(export_name = "malloc_conf")
        )]
        #[cfg_attr(
            any(
                target_vendor = "apple",
                target_os = "android",
                target_os = "dragonfly"
            ),
            unsafe(export_name = "_rjem_malloc_conf")
        )]
        #[used]
        static MEMWATCH_MALLOC_CONF: $crate::MallocConf = $crate::MallocConf::new($conf);
    };
}

// SAFETY: every method forwards to jemalloc with the caller's arguments unchanged; the counting
// touches only a const thread-local `Cell` and atomics, never the allocator.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        let ptr = unsafe { self.inner.alloc(layout) };
        if !ptr.is_null() {
            record(size(layout.size()));
        }
        ptr
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        let ptr = unsafe { self.inner.alloc_zeroed(layout) };
        if !ptr.is_null() {
            record(size(layout.size()));
        }
        ptr
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        record(-size(layout.size()));
        // SAFETY: forwarded contract.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded contract.
        let new = unsafe { self.inner.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            record(size(new_size) - size(layout.size()));
        }
        new
    }
}

/// Bytes allocated through the allocator, as folded so far.
static CURRENT: AtomicI64 = AtomicI64::new(0);
/// Highest value CURRENT reached at a fold since the last [`drain_peak`].
static PEAK: AtomicI64 = AtomicI64::new(0);
/// Set at the first fold: tells "not installed" apart from "nothing allocated".
static INSTALLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// This thread's allocations not yet folded into CURRENT. `const` and `Drop`-free, so
    /// accessing it never allocates nor registers a destructor.
    static DELTA: Cell<i64> = const { Cell::new(0) };
}

#[inline]
fn record(change: i64) {
    // `try_with` cannot fail for a const, Drop-free thread-local, but if it ever did the change
    // goes straight to the global rather than being lost.
    let pending = DELTA.try_with(|d| {
        let delta = d.get() + change;
        if delta.unsigned_abs() < FOLD_THRESHOLD.unsigned_abs() {
            d.set(delta);
            0
        } else {
            d.set(0);
            delta
        }
    });
    match pending {
        Ok(0) => {}
        Ok(delta) => fold(delta),
        Err(_) => fold(change),
    }
}

#[cold]
fn fold(delta: i64) {
    let now = CURRENT.fetch_add(delta, Ordering::Relaxed) + delta;
    if delta > 0 {
        PEAK.fetch_max(now, Ordering::Relaxed);
        // The flight recorder's armed threshold: one relaxed load unless crossed.
        crate::recorder::wake::check(now);
    }
    if !INSTALLED.load(Ordering::Relaxed) {
        INSTALLED.store(true, Ordering::Relaxed);
    }
}

/// Whether [`Allocator`] is the global allocator. Until the first fold this is unknown, so it
/// probes once: an allocation of `FOLD_THRESHOLD` bytes through the global allocator folds at
/// once when the counting allocator is installed (cheap: jemalloc does not touch the pages).
fn installed() -> bool {
    if INSTALLED.load(Ordering::Relaxed) {
        return true;
    }
    #[allow(clippy::cast_sign_loss)] // a positive constant
    let probe_size = FOLD_THRESHOLD as usize;
    if let Ok(layout) = Layout::from_size_align(probe_size, 1) {
        // SAFETY: non-zero size; the pointer is freed with the same layout right away.
        unsafe {
            // black_box: an unused allocation may otherwise be elided by the optimizer, and
            // the probe would never reach the allocator.
            let ptr = std::hint::black_box(std::alloc::alloc(layout));
            if !ptr.is_null() {
                std::alloc::dealloc(ptr, layout);
            }
        }
    }
    INSTALLED.load(Ordering::Relaxed)
}

/// Allocation sizes fit in `isize`, so this never saturates in practice.
#[inline]
fn size(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// Deltas folded from other threads in a different order than they happened can briefly make
/// the sum negative; report 0 rather than wrap.
fn clamp(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// jemalloc's dirty pages, all arenas (a fresh `epoch` first).
    fn dirty_bytes() -> usize {
        tikv_jemalloc_ctl::epoch::advance().unwrap();
        // SAFETY: a size_t statistic, read as usize.
        let pages = unsafe { tikv_jemalloc_ctl::raw::read::<usize>(b"stats.arenas.4096.pdirty\0") };
        pages.unwrap() * 4096
    }

    #[test]
    fn release_unused_gives_freed_pages_back() {
        // jemalloc itself (this binary's global allocator is the system's): 16 MiB freed
        let layout = Layout::from_size_align(1 << 20, 4096).unwrap();
        let blocks: Vec<*mut u8> = (0..16)
            .map(|_| {
                // SAFETY: a non-zero layout; each block is written and freed once below.
                let p = unsafe { Jemalloc.alloc(layout) };
                assert!(!p.is_null());
                unsafe { p.write_bytes(1, layout.size()) };
                p
            })
            .collect();
        for p in blocks {
            // SAFETY: allocated above with this layout.
            unsafe { Jemalloc.dealloc(p, layout) };
        }
        let before = dirty_bytes();
        release_unused().unwrap();
        let after = dirty_bytes();
        assert!(before >= 8 << 20, "freed pages are dirty first: {before}");
        assert!(after < before / 4, "dirty {before} -> {after} bytes");
    }

    #[test]
    fn counter_reports_none_without_the_allocator_installed() {
        // This unit-test binary runs on the default allocator.
        assert_eq!(allocated_bytes(), None);
        assert_eq!(peek_peak(), None);
    }

    #[test]
    fn heap_dump_refuses_without_profiling() {
        let dir = tempfile::tempdir().unwrap();
        // No malloc_conf symbol here; profiling is off unless MALLOC_CONF turns it on.
        if !profiling_enabled().unwrap() {
            let err = dump_heap_profile(&dir.path().join("heap.prof")).unwrap_err();
            assert!(matches!(err, Error::ProfilingDisabled), "{err}");
        }
    }
}

//! What every tokio runtime of the gateway is built with: the main runtime (`main.rs`) and each
//! connection thread's (`http::threads`).

use tokio::runtime::Builder;

/// Enables I/O and timers, caps the blocking pool at `max_blocking_threads` (blocking work
/// queues instead of growing to tokio's default of 512 threads, each with a stack and allocator
/// caches), and folds a stopping pool thread's memwatch counters into the global ones.
pub fn configure(builder: &mut Builder, max_blocking_threads: usize) -> &mut Builder {
    builder
        .enable_all()
        .max_blocking_threads(max_blocking_threads)
        .on_thread_stop(memwatch::flush_thread)
}

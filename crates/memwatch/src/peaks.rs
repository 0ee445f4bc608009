//! Peaks every reader sees: the highest allocated bytes and cgroup usage over a trailing
//! window (default 60 s), kept in a few time buckets. Reading never resets anything, so two
//! scrapers (an HA Prometheus pair, an operator's `curl /metrics`) get the same figure and
//! neither steals the other's spike.
//!
//! The allocator keeps its running maximum in one atomic (see `alloc`); whoever drains it
//! (the recorder thread every tick, else each read) moves it into the current bucket. With a
//! recorder running a spike lands in the bucket of its time; without one, in the bucket of
//! the first read after it (so it may be reported up to one read interval late, never lost).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::recorder::wake::monotonic_ns;

/// Buckets per window: the window reported spans between `window × 11/12` and `window`.
const BUCKETS: usize = 12;

/// The trailing window in ms.
static WINDOW_MS: AtomicU64 = AtomicU64::new(60_000);

static ALLOCATED: Mutex<Window> = Mutex::new(Window::new());
static CGROUP: Mutex<Window> = Mutex::new(Window::new());

/// Maxima per bucket: `(bucket number, max)`; a bucket number older than the window is stale.
#[derive(Debug)]
struct Window {
    buckets: [(u64, u64); BUCKETS],
}

impl Window {
    const fn new() -> Self {
        Self {
            buckets: [(u64::MAX, 0); BUCKETS],
        }
    }

    fn record(&mut self, bucket: u64, value: u64) {
        let slot = &mut self.buckets[(bucket % BUCKETS as u64) as usize];
        if slot.0 == bucket {
            slot.1 = slot.1.max(value);
        } else {
            *slot = (bucket, value);
        }
    }

    fn max(&self, bucket: u64) -> Option<u64> {
        self.buckets
            .iter()
            .filter(|(b, _)| *b != u64::MAX && *b <= bucket && bucket - *b < BUCKETS as u64)
            .map(|(_, v)| *v)
            .max()
    }
}

fn bucket_now() -> u64 {
    let bucket_ms = (WINDOW_MS.load(Ordering::Relaxed) / BUCKETS as u64).max(1);
    monotonic_ns() / 1_000_000 / bucket_ms
}

fn lock(window: &Mutex<Window>) -> std::sync::MutexGuard<'_, Window> {
    window
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sets the trailing window of the peak gauges (1 s to 1 h; the builder applies
/// `RecorderConfig::peak_window`). Process-wide.
pub fn set_peak_window(window: Duration) {
    let ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    WINDOW_MS.store(ms.clamp(1000, 3_600_000), Ordering::Relaxed);
}

/// The trailing window of the peak gauges.
pub fn peak_window() -> Duration {
    Duration::from_millis(WINDOW_MS.load(Ordering::Relaxed))
}

/// Moves the allocator's running maximum into the current bucket. Called by the recorder
/// thread every tick and by each read; locks briefly, never allocates.
pub(crate) fn drain_allocated() {
    if let Some(peak) = crate::alloc::drain_peak() {
        lock(&ALLOCATED).record(bucket_now(), peak);
    }
}

/// Records a cgroup usage sample (the recorder's, every tick; a read's own).
pub(crate) fn record_cgroup(usage: u64) {
    lock(&CGROUP).record(bucket_now(), usage);
}

/// Highest allocated bytes over the trailing window; `None` without the counting allocator.
pub fn allocated_peak() -> Option<u64> {
    let now = crate::allocated_bytes()?;
    drain_allocated();
    Some(lock(&ALLOCATED).max(bucket_now()).unwrap_or(now).max(now))
}

/// Highest cgroup usage over the trailing window, sampled every tick while a recorder runs,
/// with `current` (a reading now) included; `None` when no usage was ever read.
pub fn cgroup_usage_peak(current: Option<u64>) -> Option<u64> {
    if let Some(usage) = current {
        record_cgroup(usage);
    }
    lock(&CGROUP).max(bucket_now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_counts_until_it_leaves_the_window_and_reads_change_nothing() {
        let mut w = Window::new();
        assert_eq!(w.max(100), None);
        w.record(100, 50);
        w.record(100, 20);
        w.record(101, 30);
        for _ in 0..3 {
            assert_eq!(w.max(101), Some(50), "reading is not resetting");
        }
        assert_eq!(w.max(111), Some(50), "11 buckets later still inside");
        assert_eq!(
            w.max(112),
            Some(30),
            "12 later: the first bucket left the window"
        );
        w.record(124, 5); // reuses 100's slot
        assert_eq!(w.max(124), Some(5));
    }
}

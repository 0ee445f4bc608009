//! The flight recorder's public face: its configuration, the handle that starts and stops the
//! recorder thread, its status (for a debug page and `memwatch_recorder_*` metrics) and the
//! soft-limit flag a service checks per request.
//!
//! How the pieces fit: the allocator wakes the recorder thread when an armed level is crossed
//! (see `wake`), the thread samples a timeline every `resolution` (see `timeline`), feeds the
//! ladder and the soft limit (see `ladder`), and writes captures (see `capture`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::ladder::Trigger;

/// Flight recorder settings. [`RecorderConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    /// Where captures go: one subdirectory per capture. Must not be on tmpfs inside the
    /// container: tmpfs pages count against the very limit being watched.
    pub capture_dir: PathBuf,
    /// The memory limit in bytes; `None` takes the cgroup's (and a configured value above the
    /// cgroup's is capped by it).
    pub limit_bytes: Option<u64>,
    /// Ladder rungs as shares of the limit (default 0.60, 0.75, 0.90).
    pub ladder: Vec<f64>,
    /// Growth-rate rung (default +25 % of the limit within 1 s); `None` turns it off.
    pub growth: Option<Growth>,
    /// How far below a rung (share of the limit) the bytes must fall before it re-arms
    /// (default 0.05): an oscillation around a rung gives one capture.
    pub hysteresis: f64,
    /// Least time between two firings of one rung (default 60 s). Higher rungs are armed on
    /// their own, so a climbing spike is captured at each rung regardless.
    pub cooldown: Duration,
    /// Disk budget: at most this many captures (default 10), oldest removed first.
    pub max_captures: usize,
    /// Disk budget: at most this many bytes of captures (default 256 MiB); the newest capture
    /// is kept even when it alone is larger.
    pub max_capture_bytes: u64,
    /// The soft limit (default over at 80 %, back under below 70 %); `None` turns it off.
    pub soft_limit: Option<SoftLimitConfig>,
    /// Sampling period of the timeline and of the cgroup usage (default 1 ms).
    pub resolution: Duration,
    /// Length of the timeline kept in memory (default 300 s).
    pub timeline: Duration,
    /// The newest part of the timeline (at most all of it), kept at `resolution` (default
    /// 20 s: 16 bytes per sample, 0.3 MiB at 1 ms).
    pub fine_timeline: Duration,
    /// The period of the older part: one entry, the maximum of each figure, per period
    /// (default 100 ms). A spike older than `fine_timeline` keeps its height.
    pub coarse_resolution: Duration,
    /// Which figure the ladder and the soft limit compare with the limit.
    pub measure: Measure,
}

/// The growth-rate rung.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Growth {
    /// Growth that fires, as a share of the limit.
    pub share: f64,
    /// Within this long.
    pub window: Duration,
}

/// The soft limit's two marks, as shares of the limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SoftLimitConfig {
    /// Over the soft limit from here (default 0.80).
    pub high: f64,
    /// Back under below this (default 0.70).
    pub low: f64,
}

/// The figure compared with the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Measure {
    /// Bytes allocated through [`Allocator`](crate::Allocator): seen at the allocation that
    /// crosses a level. Misses memory not from the Rust allocator (mmaps, C libraries' own
    /// allocators, thread stacks) and jemalloc's fragmentation.
    #[default]
    Allocated,
    /// The cgroup's usage, sampled every `resolution`: what the OOM killer sees, but includes
    /// page cache (which the kernel would reclaim first).
    CgroupUsage,
    /// The larger of both; the allocator still wakes the recorder early.
    Max,
}

impl RecorderConfig {
    /// The defaults, writing captures to `capture_dir`.
    pub fn new(capture_dir: impl Into<PathBuf>) -> Self {
        Self {
            capture_dir: capture_dir.into(),
            limit_bytes: None,
            ladder: vec![0.60, 0.75, 0.90],
            growth: Some(Growth {
                share: 0.25,
                window: Duration::from_secs(1),
            }),
            hysteresis: 0.05,
            cooldown: Duration::from_secs(60),
            max_captures: 10,
            max_capture_bytes: 256 << 20,
            soft_limit: Some(SoftLimitConfig {
                high: 0.80,
                low: 0.70,
            }),
            resolution: Duration::from_millis(1),
            timeline: Duration::from_secs(300),
            fine_timeline: Duration::from_secs(20),
            coarse_resolution: Duration::from_millis(100),
            measure: Measure::Allocated,
        }
    }

    fn validate(&self) -> Result<(), RecorderError> {
        let share = |s: f64| s > 0.0 && s <= 1.0;
        let invalid = |reason| Err(RecorderError::InvalidConfig(reason));
        if !self.ladder.iter().copied().all(share) {
            return invalid("ladder shares must be in (0, 1]");
        }
        if self
            .growth
            .is_some_and(|g| !share(g.share) || g.window.is_zero())
        {
            return invalid("growth share must be in (0, 1] and its window non-zero");
        }
        if !(0.0..1.0).contains(&self.hysteresis) {
            return invalid("hysteresis must be in [0, 1)");
        }
        if self
            .soft_limit
            .is_some_and(|s| !share(s.high) || !share(s.low) || s.low > s.high)
        {
            return invalid("soft limit marks must be in (0, 1] with low <= high");
        }
        if self.resolution < Duration::from_micros(100) || self.resolution > Duration::from_secs(1)
        {
            return invalid("resolution must be between 100 µs and 1 s");
        }
        if self.coarse_resolution < self.resolution {
            return invalid("the coarse resolution must not be finer than the resolution");
        }
        let (fine, coarse, _) = self.timeline_samples();
        if fine.saturating_add(coarse) > 10_000_000 {
            return invalid("timeline longer than 10 million samples");
        }
        if self.max_captures == 0 {
            return invalid("max_captures must be at least 1");
        }
        Ok(())
    }

    /// The timeline's fine samples, coarse entries, and fine samples per coarse entry.
    pub(crate) fn timeline_samples(&self) -> (usize, usize, usize) {
        let count = |span: Duration, period: Duration| {
            usize::try_from(span.as_nanos() / period.as_nanos().max(1)).unwrap_or(usize::MAX)
        };
        let fine_span = self.fine_timeline.min(self.timeline);
        let fine = count(fine_span, self.resolution).max(1);
        let coarse = count(
            self.timeline.saturating_sub(fine_span),
            self.coarse_resolution,
        );
        let fold = count(self.coarse_resolution, self.resolution).max(1);
        (fine, coarse, fold)
    }
}

/// Errors starting the recorder or reading its files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecorderError {
    #[error("invalid recorder configuration: {0}")]
    InvalidConfig(&'static str),
    /// Neither the configuration nor the cgroup gives a memory limit to compare with.
    #[error("no memory limit: none configured and the cgroup has none")]
    NoLimit,
    /// The ladder measures allocated bytes but [`Allocator`](crate::Allocator) is not the
    /// global allocator.
    #[error("the counting allocator memwatch::Allocator is not installed")]
    AllocatorNotInstalled,
    /// One recorder per process: the allocator hook is process-wide.
    #[error("a flight recorder is already running in this process")]
    AlreadyRunning,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {reason}")]
    Parse { path: PathBuf, reason: &'static str },
}

/// A running flight recorder; dropping it stops the thread.
#[derive(Debug)]
pub struct Recorder {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// State shared between the handle and the recorder thread.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) stop: AtomicBool,
    pub(crate) capture_requested: AtomicBool,
    /// Read per request by the service: one relaxed load.
    pub(crate) over_soft_limit: AtomicBool,
    pub(crate) samples_total: AtomicU64,
    pub(crate) purges_total: AtomicU64,
    pub(crate) soft_limit_entries_total: AtomicU64,
    /// Highest cgroup usage sampled (every tick) since the last [`Recorder::take_cgroup_peak`].
    pub(crate) cgroup_peak: AtomicU64,
    /// Updated after each capture only, never in the sampling loop.
    pub(crate) status: Mutex<RecorderStatus>,
}

/// Set while a recorder runs.
static RUNNING: AtomicBool = AtomicBool::new(false);

impl Recorder {
    /// Starts the recorder thread: resolves the limit, opens the capture directory (removing
    /// captures cut short by a previous death, and pruning to the budget), allocates and touches
    /// every buffer, then arms the allocator. Read [`postmortem`](crate::postmortem) first.
    pub fn start(config: RecorderConfig) -> Result<Self, RecorderError> {
        config.validate()?;
        if RUNNING.swap(true, Ordering::AcqRel) {
            return Err(RecorderError::AlreadyRunning);
        }
        match crate::recorder_thread::spawn(config) {
            Ok((shared, thread)) => Ok(Self {
                shared,
                thread: Some(thread),
            }),
            Err(err) => {
                RUNNING.store(false, Ordering::Release);
                Err(err)
            }
        }
    }

    /// Whether memory is over the soft limit now: refuse new work while it is. A relaxed
    /// atomic load, cheap enough for every request.
    pub fn over_soft_limit(&self) -> bool {
        self.shared.over_soft_limit.load(Ordering::Relaxed)
    }

    /// Asks for a capture now (trigger `manual`), e.g. from an admin endpoint. Ignores the
    /// ladder's cooldown; the disk budget still applies.
    pub fn request_capture(&self) {
        self.shared.capture_requested.store(true, Ordering::Release);
        crate::wake::wake();
    }

    /// Counters, the last capture and the soft-limit state.
    pub fn status(&self) -> RecorderStatus {
        let mut status = match self.shared.status.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        status.over_soft_limit = self.over_soft_limit();
        status.samples_total = self.shared.samples_total.load(Ordering::Relaxed);
        status.purges_total = self.shared.purges_total.load(Ordering::Relaxed);
        status.soft_limit_entries_total =
            self.shared.soft_limit_entries_total.load(Ordering::Relaxed);
        status.armed_bytes = crate::wake::armed();
        status
    }

    /// The highest cgroup usage the recorder sampled (at its resolution, 1 ms by default) since
    /// the previous call, which resets it: a scrape every 10 s still sees a 50 ms spike of the
    /// container's memory, page cache included. `None` when no cgroup usage could be read.
    pub fn take_cgroup_peak(&self) -> Option<u64> {
        match self.shared.cgroup_peak.swap(0, Ordering::Relaxed) {
            0 => None,
            peak => Some(peak),
        }
    }

    /// Stops the thread and waits for it (a capture in progress finishes first).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        crate::wake::wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        crate::wake::arm(None);
        RUNNING.store(false, Ordering::Release);
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What the recorder did so far.
#[derive(Debug, Clone)]
pub struct RecorderStatus {
    pub capture_dir: PathBuf,
    /// The limit the ladder and the soft limit are shares of.
    pub limit_bytes: u64,
    /// `config`, `cgroup`, or `config capped by cgroup`.
    pub limit_source: &'static str,
    /// The allocated-bytes level at which the allocator wakes the recorder now.
    pub armed_bytes: Option<u64>,
    /// Rungs fired (each starts a capture).
    pub triggers_total: u64,
    pub captures_total: u64,
    pub capture_failures_total: u64,
    pub last_capture: Option<LastCapture>,
    /// Why the last failed capture failed.
    pub last_failure: Option<String>,
    pub over_soft_limit: bool,
    pub soft_limit_entries_total: u64,
    /// jemalloc purges asked for (on entering the soft limit, then each second over it).
    pub purges_total: u64,
    pub samples_total: u64,
}

/// The newest capture written by this recorder.
#[derive(Debug, Clone)]
pub struct LastCapture {
    pub path: PathBuf,
    pub trigger: Trigger,
    pub unix_ms: u64,
    /// From the crossing allocation to the recorder acting; `None` for triggers seen by the
    /// sampler (cgroup usage) or requested.
    pub detection_latency: Option<Duration>,
    /// From the trigger to the heap profile and the timeline fsync'd.
    pub capture_duration: Duration,
    /// From the trigger to the whole capture fsync'd and renamed into place.
    pub complete_duration: Duration,
}

impl RecorderStatus {
    pub(crate) fn new(capture_dir: &Path, limit_bytes: u64, limit_source: &'static str) -> Self {
        Self {
            capture_dir: capture_dir.to_path_buf(),
            limit_bytes,
            limit_source,
            armed_bytes: None,
            triggers_total: 0,
            captures_total: 0,
            capture_failures_total: 0,
            last_capture: None,
            last_failure: None,
            over_soft_limit: false,
            soft_limit_entries_total: 0,
            purges_total: 0,
            samples_total: 0,
        }
    }

    /// `memwatch_recorder_*` metrics in Prometheus text.
    pub fn write_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        let mut metric = |kind: &str, name: &str, help: &str, value: u64| {
            let _ = write!(
                out,
                "# HELP memwatch_recorder_{name} {help}\n# TYPE memwatch_recorder_{name} {kind}\nmemwatch_recorder_{name} {value}\n"
            );
        };
        metric(
            "gauge",
            "limit_bytes",
            "memory limit the ladder is computed from",
            self.limit_bytes,
        );
        metric(
            "counter",
            "triggers_total",
            "ladder rungs fired",
            self.triggers_total,
        );
        metric(
            "counter",
            "captures_total",
            "captures written",
            self.captures_total,
        );
        metric(
            "counter",
            "capture_failures_total",
            "captures that failed",
            self.capture_failures_total,
        );
        metric(
            "gauge",
            "over_soft_limit",
            "1 while new work is refused",
            u64::from(self.over_soft_limit),
        );
        metric(
            "counter",
            "soft_limit_entries_total",
            "times the soft limit was entered",
            self.soft_limit_entries_total,
        );
        metric(
            "counter",
            "purges_total",
            "jemalloc arena purges asked for",
            self.purges_total,
        );
        if let Some(last) = &self.last_capture {
            metric(
                "gauge",
                "last_capture_timestamp_seconds",
                "time of the newest capture",
                last.unix_ms / 1000,
            );
            let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
            metric(
                "gauge",
                "last_capture_duration_microseconds",
                "trigger to a complete capture",
                micros(last.complete_duration),
            );
            if let Some(latency) = last.detection_latency {
                metric(
                    "gauge",
                    "last_detection_latency_microseconds",
                    "crossing allocation to the recorder acting",
                    micros(latency),
                );
            }
        }
    }
}

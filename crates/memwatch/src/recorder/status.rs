//! What the recorder did so far, for a status page and `memwatch_recorder_*` metrics.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::config::LimitSource;
use super::ladder::Trigger;

/// What the recorder did so far.
#[derive(Debug, Clone)]
pub struct RecorderStatus {
    pub capture_dir: PathBuf,
    /// The limit the ladder and the soft limit are shares of.
    pub limit_bytes: u64,
    /// Where the limit came from.
    pub limit_source: LimitSource,
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
    /// The measured figure at the trigger (see [`Measure`](crate::Measure)), in bytes...
    pub measured_bytes: u64,
    /// ...and as a share of the limit.
    pub share: f64,
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
    pub(crate) fn new(capture_dir: &Path, limit_bytes: u64, limit_source: LimitSource) -> Self {
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

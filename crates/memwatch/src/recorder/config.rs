//! The flight recorder's settings: their defaults and their validation, defined here once
//! (services that read them from a file use [`Settings`](crate::Settings), which fills in and
//! checks through this type), and the typed measures a capture records.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::error::RecorderError;

/// Flight recorder settings. [`RecorderConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    /// Where captures go: one subdirectory per capture. Must not be on tmpfs inside the
    /// container: tmpfs pages count against the very limit being watched.
    pub capture_dir: PathBuf,
    /// The memory limit in bytes; `None` takes the cgroup's (and a configured value above the
    /// cgroup's is capped by it).
    pub limit_bytes: Option<u64>,
    /// Ladder rungs as shares of the limit (default 0.60, 0.75, 0.90): three chances to see
    /// the heap on its way up, the last one close enough to the kill to show what filled it.
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
    /// The trailing window of the peak gauges (`memwatch_*_peak_bytes`, default 60 s: at
    /// least one scrape interval, so every scraper sees every spike).
    pub peak_window: Duration,
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
    /// crosses a level. Misses memory not from the Rust allocator (mmaps, file pages, C
    /// libraries' own allocators, thread stacks) and jemalloc's fragmentation.
    Allocated,
    /// The cgroup's working set (usage minus inactive file cache, which the kernel reclaims
    /// before it kills), sampled every `resolution`: what the OOM killer acts on.
    CgroupUsage,
    /// The larger of both (the default); the allocator still wakes the recorder at once, the
    /// cgroup's figure is seen at the next sample (1 ms). The cgroup's counts only when the
    /// limit in force is the cgroup's: a lower limit given by the service is this process's
    /// budget, compared with its allocations.
    #[default]
    Max,
}

/// Where the limit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSource {
    /// Given by the service (configuration).
    Config,
    /// The memory cgroup's limit.
    Cgroup,
    /// Given by the service but above the cgroup's, which wins.
    ConfigCappedByCgroup,
}

impl LimitSource {
    /// The form written to `meta.txt` and metrics: `config`, `cgroup`, `config capped by cgroup`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Cgroup => "cgroup",
            Self::ConfigCappedByCgroup => "config capped by cgroup",
        }
    }

    /// The limit in force given a configured one and the cgroup's.
    pub(crate) fn resolve(configured: Option<u64>, cgroup: Option<u64>) -> Option<(u64, Self)> {
        match (configured, cgroup) {
            (Some(c), Some(g)) if g < c => Some((g, Self::ConfigCappedByCgroup)),
            (Some(c), _) => Some((c, Self::Config)),
            (None, Some(g)) => Some((g, Self::Cgroup)),
            (None, None) => None,
        }
    }
}

impl fmt::Display for LimitSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Measure {
    /// The form written to `meta.txt` and read by [`CaptureInfo::measure`](crate::CaptureInfo):
    /// `allocated`, `cgroup-usage`, `max`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allocated => "allocated",
            Self::CgroupUsage => "cgroup-usage",
            Self::Max => "max",
        }
    }

    /// The inverse of [`Measure::as_str`] (also takes `cgroup`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "allocated" => Some(Self::Allocated),
            "cgroup-usage" | "cgroup" => Some(Self::CgroupUsage),
            "max" => Some(Self::Max),
            _ => None,
        }
    }
}

impl fmt::Display for Measure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for RecorderConfig {
    /// The defaults, writing captures to `./memwatch` (set `capture_dir`).
    fn default() -> Self {
        Self::new("memwatch")
    }
}

/// Longest timeline kept, in samples of both tiers: 160 MB of ring at most.
const MAX_TIMELINE_SAMPLES: usize = 10_000_000;

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
            measure: Measure::default(),
            peak_window: Duration::from_secs(60),
        }
    }

    /// Checks every setting; the messages name the [`Settings`](crate::Settings) keys an
    /// operator writes. [`Memwatch::builder`](crate::Memwatch::builder) and
    /// [`Recorder::start`](crate::Recorder::start) call it; call it early to fail at startup.
    pub fn validate(&self) -> Result<(), RecorderError> {
        let share = |s: f64| s > 0.0 && s <= 1.0;
        let invalid = |reason| Err(RecorderError::InvalidConfig(reason));
        if self.limit_bytes == Some(0) {
            return invalid("limit_bytes must be positive");
        }
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
        if let Some(s) = self.soft_limit {
            if !share(s.high) || !share(s.low) {
                return invalid("soft_limit and soft_limit_resume must be shares in (0, 1]");
            }
            if s.low >= s.high {
                return invalid("soft_limit_resume must be below soft_limit");
            }
        }
        if self.resolution < Duration::from_micros(100) || self.resolution > Duration::from_secs(1)
        {
            return invalid("resolution must be between 100 µs and 1 s");
        }
        if self.coarse_resolution < self.resolution {
            return invalid("the coarse resolution must not be finer than the resolution");
        }
        if self.timeline.is_zero() || self.fine_timeline.is_zero() {
            return invalid("timeline_seconds and timeline_fine_seconds must be at least 1");
        }
        if self.fine_timeline > self.timeline {
            return invalid("timeline_fine_seconds must be at most timeline_seconds");
        }
        let (fine, coarse, _) = self.timeline_samples();
        if fine.saturating_add(coarse) > MAX_TIMELINE_SAMPLES {
            return invalid(
                "timeline longer than 10 million samples (16 bytes each at the resolution)",
            );
        }
        if self.max_captures == 0 {
            return invalid("max_captures must be at least 1");
        }
        if self.peak_window < Duration::from_secs(1) || self.peak_window > Duration::from_secs(3600)
        {
            return invalid("peak_window_seconds must be between 1 and 3600");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bounds_are_checked_once() {
        assert!(RecorderConfig::default().validate().is_ok());
        let with = |f: fn(&mut RecorderConfig)| {
            let mut c = RecorderConfig::default();
            f(&mut c);
            c.validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(
            with(|c| c.ladder = vec![1.0]).is_empty(),
            "a rung at 100 % is allowed"
        );
        assert!(with(|c| c.ladder = vec![1.2]).contains("ladder"));
        assert!(
            with(|c| c.soft_limit = Some(SoftLimitConfig {
                high: 0.5,
                low: 0.6
            }))
            .contains("soft_limit_resume")
        );
        assert!(
            with(|c| c.fine_timeline = Duration::from_secs(400)).contains("timeline_fine_seconds")
        );
        assert!(with(|c| c.limit_bytes = Some(0)).contains("limit_bytes"));
        assert!(with(|c| c.max_captures = 0).contains("max_captures"));
    }

    #[test]
    fn limit_source_and_measure_round_trip() {
        assert_eq!(
            LimitSource::resolve(Some(10), Some(5)),
            Some((5, LimitSource::ConfigCappedByCgroup))
        );
        assert_eq!(LimitSource::resolve(None, None), None);
        for m in [Measure::Allocated, Measure::CgroupUsage, Measure::Max] {
            assert_eq!(Measure::parse(m.as_str()), Some(m));
        }
    }
}

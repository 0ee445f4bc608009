//! The recorder's settings as an operator writes them (a `[memory]` section: shares, counts,
//! seconds), with `Deserialize` under the `serde` feature. Their defaults come from
//! [`RecorderConfig::new`] and their checks from [`RecorderConfig::validate`]: nothing is
//! defined twice.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::recorder::{Measure, RecorderConfig, RecorderError, SoftLimitConfig};

/// Flat, file-friendly recorder settings. `Settings::default()` equals the recorder's
/// defaults. Unknown keys are refused when deserialized.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(deny_unknown_fields, default)
)]
pub struct Settings {
    /// Whether the flight recorder runs (default true; it needs a limit, given or the cgroup's).
    pub recorder: bool,
    /// Bytes; absent takes the cgroup's limit (a larger value is capped by the cgroup's).
    pub limit_bytes: Option<u64>,
    /// Where captures go; absent takes the service's default. Not a tmpfs.
    pub capture_dir: Option<PathBuf>,
    /// Capture rungs as shares of the limit, each in (0, 1].
    pub ladder: Vec<f64>,
    /// New work is refused above this share of the limit...
    pub soft_limit: f64,
    /// ...until the measure falls below this share (below `soft_limit`).
    pub soft_limit_resume: f64,
    /// Captures kept on disk, oldest removed first.
    pub max_captures: usize,
    /// Bytes of captures kept on disk (the newest is kept even when larger).
    pub max_capture_bytes: u64,
    /// Seconds of memory history a capture holds...
    pub timeline_seconds: u64,
    /// ...of which the newest are at the 1 ms resolution (16 bytes per sample), the older
    /// ones 100 ms maxima.
    pub timeline_fine_seconds: u64,
    /// Least seconds between two captures of one rung.
    pub cooldown_seconds: u64,
    /// What the rungs compare with the limit: `allocated`, `cgroup-usage` or `max`.
    pub measure: Measure,
    /// Seconds over which the peak gauges take their maximum (never reset by a scrape).
    pub peak_window_seconds: u64,
}

impl Default for Settings {
    fn default() -> Self {
        let d = RecorderConfig::default();
        let soft = d.soft_limit.unwrap_or(SoftLimitConfig {
            high: 1.0,
            low: 1.0,
        });
        Self {
            recorder: true,
            limit_bytes: d.limit_bytes,
            capture_dir: None,
            ladder: d.ladder,
            soft_limit: soft.high,
            soft_limit_resume: soft.low,
            max_captures: d.max_captures,
            max_capture_bytes: d.max_capture_bytes,
            timeline_seconds: d.timeline.as_secs(),
            timeline_fine_seconds: d.fine_timeline.as_secs(),
            cooldown_seconds: d.cooldown.as_secs(),
            measure: d.measure,
            peak_window_seconds: d.peak_window.as_secs(),
        }
    }
}

impl Settings {
    /// The recorder configuration these settings describe; `default_capture_dir` unless
    /// `capture_dir` is set. Everything else keeps [`RecorderConfig::new`]'s defaults.
    pub fn recorder_config(&self, default_capture_dir: &Path) -> RecorderConfig {
        let dir = self
            .capture_dir
            .clone()
            .unwrap_or_else(|| default_capture_dir.to_path_buf());
        let mut c = RecorderConfig::new(dir);
        c.limit_bytes = self.limit_bytes;
        c.ladder.clone_from(&self.ladder);
        c.soft_limit = Some(SoftLimitConfig {
            high: self.soft_limit,
            low: self.soft_limit_resume,
        });
        c.max_captures = self.max_captures;
        c.max_capture_bytes = self.max_capture_bytes;
        c.timeline = Duration::from_secs(self.timeline_seconds);
        c.fine_timeline = Duration::from_secs(self.timeline_fine_seconds);
        c.cooldown = Duration::from_secs(self.cooldown_seconds);
        c.measure = self.measure;
        c.peak_window = Duration::from_secs(self.peak_window_seconds);
        c
    }

    /// [`RecorderConfig::validate`] of these settings: call it when the config file is read.
    pub fn validate(&self) -> Result<(), RecorderError> {
        self.recorder_config(Path::new("memwatch")).validate()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn defaults_round_trip_to_the_recorders() {
        let from_settings = Settings::default().recorder_config(Path::new("d"));
        let direct = RecorderConfig::new("d");
        assert_eq!(format!("{from_settings:?}"), format!("{direct:?}"));
        assert!(Settings::default().validate().is_ok());
        let bad = Settings {
            soft_limit_resume: 0.9,
            ..Settings::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("soft_limit_resume")
        );
    }
}

//! The gateway's use of memwatch: the post-mortem of the previous run, the flight recorder, and
//! the soft limit that turns memory pressure into 503s instead of an OOM kill.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::config::MemoryConfig;

/// Memory supervision for one gateway process.
pub struct MemoryWatch {
    /// `None` when it is off by config or could not start (no limit known, say).
    recorder: Option<memwatch::Recorder>,
    /// What the previous run left behind (OOM kills, last capture), read once at start.
    postmortem: memwatch::Postmortem,
    /// Why the recorder is off, for `/debug/memory`.
    off_reason: Option<String>,
}

impl MemoryWatch {
    /// Reads the post-mortem, then starts the recorder. Blocking (directory scans, a thread).
    pub fn start(config: &MemoryConfig, data_dir: &Path) -> MemoryWatch {
        let dir = config
            .capture_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("memwatch"));
        // Before the recorder starts: starting it prunes old captures.
        let postmortem = memwatch::postmortem(&dir);
        if postmortem.has_incident() {
            tracing::warn!(summary = %postmortem, "previous memory incident");
        } else {
            tracing::info!(summary = %postmortem, "memory post-mortem");
        }
        if !config.recorder {
            return MemoryWatch {
                recorder: None,
                postmortem,
                off_reason: Some("off by configuration".into()),
            };
        }
        let mut rc = memwatch::RecorderConfig::new(&dir);
        rc.limit_bytes = config.limit_bytes;
        rc.ladder = config.ladder.clone();
        rc.max_captures = config.max_captures;
        rc.timeline = Duration::from_secs(config.timeline_seconds);
        rc.fine_timeline = Duration::from_secs(config.timeline_fine_seconds);
        rc.soft_limit = Some(memwatch::SoftLimitConfig {
            high: config.soft_limit,
            low: config.soft_limit_resume,
        });
        match memwatch::Recorder::start(rc) {
            Ok(recorder) => {
                let status = recorder.status();
                tracing::info!(
                    capture_dir = %dir.display(),
                    limit_bytes = status.limit_bytes,
                    limit_source = status.limit_source.as_str(),
                    "flight recorder armed"
                );
                MemoryWatch {
                    recorder: Some(recorder),
                    postmortem,
                    off_reason: None,
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "flight recorder off; set memory.limit_bytes to arm it");
                MemoryWatch {
                    recorder: None,
                    postmortem,
                    off_reason: Some(err.to_string()),
                }
            }
        }
    }

    /// Whether new work must be refused now (one atomic load).
    pub fn over_soft_limit(&self) -> bool {
        self.recorder
            .as_ref()
            .is_some_and(memwatch::Recorder::over_soft_limit)
    }

    /// Recorder and post-mortem metrics. Reading resets the cgroup peak: each scrape sees the
    /// highest usage since the previous one, sampled every millisecond.
    pub fn write_metrics(&self, out: &mut String) {
        if let Some(recorder) = &self.recorder {
            recorder.status().write_prometheus(out);
            if let Some(peak) = recorder.take_cgroup_peak() {
                crate::metrics::write_gauge(
                    out,
                    "memwatch_cgroup_usage_peak_bytes",
                    "highest cgroup memory usage since the previous scrape, sampled every 1 ms",
                    peak,
                );
            }
        }
        self.postmortem.write_prometheus(out);
    }

    /// The recorder's and the post-mortem's state, for `/debug/memory`.
    pub fn json(&self) -> Value {
        let recorder = match &self.recorder {
            Some(recorder) => {
                let s = recorder.status();
                json!({
                    "capture_dir": s.capture_dir.display().to_string(),
                    "limit_bytes": s.limit_bytes,
                    "limit_source": s.limit_source.as_str(),
                    "armed_bytes": s.armed_bytes,
                    "triggers_total": s.triggers_total,
                    "captures_total": s.captures_total,
                    "capture_failures_total": s.capture_failures_total,
                    "last_failure": s.last_failure,
                    "over_soft_limit": s.over_soft_limit,
                    "soft_limit_entries_total": s.soft_limit_entries_total,
                    "last_capture": s.last_capture.map(|c| json!({
                        "path": c.path.display().to_string(),
                        "trigger": c.trigger.to_string(),
                        "unix_ms": c.unix_ms,
                        "detection_latency_us": c.detection_latency.map(|d| d.as_micros() as u64),
                        "capture_ms": c.capture_duration.as_millis() as u64,
                    })),
                })
            }
            None => json!({ "off": self.off_reason }),
        };
        json!({
            "recorder": recorder,
            "postmortem": {
                "summary": self.postmortem.to_string(),
                "incident": self.postmortem.has_incident(),
                "oom_kills": self.postmortem.oom_kills,
                "captures": self.postmortem.captures,
                "latest": self.postmortem.latest.as_ref().map(|c| c.path.display().to_string()),
            },
        })
    }
}

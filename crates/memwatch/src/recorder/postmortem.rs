//! After the fact: listing the captures in a directory, keeping them within a disk budget, and
//! the start-up post-mortem (OOM kills recorded by the cgroup + the newest capture).

use std::fmt;
use std::path::{Path, PathBuf};

use super::blackbox::{PreviousRun, read_previous};
use super::error::RecorderError;
use super::files;
use super::meta::CaptureInfo;
use crate::cgroup::{CgroupMemory, cgroup_memory};

/// The captures in `dir`, oldest first. Finished captures are `complete`; directories of
/// captures cut short (the process died while writing) are listed with `complete: false`.
/// A missing directory is an empty list.
pub fn captures(dir: &Path) -> Result<Vec<CaptureInfo>, RecorderError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(RecorderError::Io {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut found: Vec<(String, CaptureInfo)> = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(key) = files::capture_key(&name) else {
            continue;
        };
        let path = entry.path();
        let mut info = CaptureInfo::read(&path).unwrap_or_else(|| incomplete(&path, &name));
        if files::is_temporary(&name) {
            info.complete = false;
        }
        found.push((key.to_string(), info));
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found.into_iter().map(|(_, info)| info).collect())
}

/// What the previous run left behind, for the start-up log, `/debug/memory` and metrics.
#[derive(Debug, Clone)]
pub struct Postmortem {
    /// The memory cgroup's OOM-kill count (v2 `memory.events`, v1 `memory.oom_control`):
    /// above zero means a process in this cgroup was killed, likely a previous instance.
    pub oom_kills: Option<u64>,
    /// The cgroup directory the count came from.
    pub cgroup: Option<PathBuf>,
    pub capture_dir: PathBuf,
    /// The newest complete capture.
    pub latest: Option<CaptureInfo>,
    /// Complete captures in the directory.
    pub captures: usize,
    /// Captures cut short: the process died while writing them.
    pub incomplete: usize,
    /// When the post-mortem was taken (Unix ms), to say how old the capture is.
    pub now_unix_ms: u64,
    /// The previous run's black box: how it ended, and its last figures. Independent of the
    /// cgroup, so it holds after a restart in a fresh one.
    pub previous_run: Option<PreviousRun>,
    /// Complete captures written by the previous run (by its pid).
    pub previous_run_captures: usize,
}

/// Reads the cgroup's OOM-kill count and the newest capture in `capture_dir`.
pub fn postmortem(capture_dir: &Path) -> Postmortem {
    postmortem_with(capture_dir, cgroup_memory().ok().as_ref())
}

/// [`postmortem`] with the cgroup figures given (e.g. read from a fixture tree with
/// [`cgroup_memory_at`](crate::cgroup_memory_at)).
pub fn postmortem_with(capture_dir: &Path, cgroup: Option<&CgroupMemory>) -> Postmortem {
    let list = captures(capture_dir).unwrap_or_default();
    let incomplete = list.iter().filter(|c| !c.complete).count();
    let complete: Vec<CaptureInfo> = list.into_iter().filter(|c| c.complete).collect();
    let previous_run = read_previous(capture_dir);
    let previous_run_captures = previous_run.as_ref().map_or(0, |run| {
        complete.iter().filter(|c| c.pid == Some(run.pid)).count()
    });
    Postmortem {
        previous_run,
        previous_run_captures,
        oom_kills: cgroup.and_then(|c| c.oom_kills),
        cgroup: cgroup.map(|c| c.path.clone()),
        capture_dir: capture_dir.to_path_buf(),
        captures: complete.len(),
        latest: complete.into_iter().last(),
        incomplete,
        now_unix_ms: super::wake::unix_ms(),
    }
}

impl Postmortem {
    /// Whether there is anything to report: an OOM kill or a capture.
    pub fn has_incident(&self) -> bool {
        self.oom_kills.unwrap_or(0) > 0
            || self.latest.is_some()
            || self.incomplete > 0
            || self.previous_run_killed()
    }

    /// Whether the previous run's black box says it did not end cleanly.
    pub fn previous_run_killed(&self) -> bool {
        self.previous_run.as_ref().is_some_and(|r| !r.clean)
    }

    /// `memwatch_postmortem_*` gauges in Prometheus text.
    pub fn write_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        let mut gauge = |name: &str, help: &str, value: u64| {
            let _ = write!(
                out,
                "# HELP memwatch_postmortem_{name} {help}\n# TYPE memwatch_postmortem_{name} gauge\nmemwatch_postmortem_{name} {value}\n"
            );
        };
        if let Some(kills) = self.oom_kills {
            gauge(
                "oom_kills",
                "OOM kills the cgroup had recorded at start",
                kills,
            );
        }
        gauge(
            "captures",
            "complete captures on disk at start",
            self.captures as u64,
        );
        gauge(
            "incomplete_captures",
            "captures cut short by the process dying",
            self.incomplete as u64,
        );
        if let Some(ms) = self.latest.as_ref().and_then(|c| c.unix_ms) {
            gauge(
                "last_capture_timestamp_seconds",
                "time of the newest capture at start",
                ms / 1000,
            );
        }
        if let Some(run) = &self.previous_run {
            gauge(
                "previous_run_killed",
                "1 when the previous run did not end cleanly (its black box)",
                u64::from(!run.clean),
            );
            gauge(
                "previous_run_end_timestamp_seconds",
                "when the previous run ended (its clean exit or newest sample)",
                run.ended_unix_ms / 1000,
            );
            let _ = write!(
                out,
                "# HELP memwatch_postmortem_previous_run_end_share share of its limit at the \
                 previous run's end\n# TYPE memwatch_postmortem_previous_run_end_share gauge\n\
                 memwatch_postmortem_previous_run_end_share {:.4}\n",
                run.share
            );
        }
    }
}

impl fmt::Display for Postmortem {
    /// One paragraph for the start-up log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(run) = &self.previous_run {
            let how = if run.clean {
                "ended cleanly"
            } else {
                "was killed"
            };
            write!(
                f,
                "the previous run (pid {}) {how} at {} UTC at {:.1} % of its {} limit ({} allocated",
                run.pid,
                crate::utc_timestamp(run.ended_unix_ms),
                run.share * 100.0,
                Mib(run.limit_bytes),
                Mib(run.allocated_bytes),
            )?;
            if let Some(usage) = run.cgroup_usage_bytes {
                write!(f, ", cgroup usage {}", Mib(usage))?;
            }
            write!(
                f,
                ") with {} capture{}; ",
                self.previous_run_captures,
                if self.previous_run_captures == 1 {
                    ""
                } else {
                    "s"
                }
            )?;
        }
        match (self.oom_kills, &self.cgroup) {
            (Some(kills), Some(path)) => write!(
                f,
                "the memory cgroup {} has recorded {kills} oom kill{}",
                path.display(),
                if kills == 1 { "" } else { "s" }
            )?,
            _ => f.write_str("no memory cgroup oom-kill count is available")?,
        }
        let Some(c) = &self.latest else {
            write!(f, "; no capture in {}", self.capture_dir.display())?;
            if self.incomplete > 0 {
                write!(f, " ({} cut short by the process dying)", self.incomplete)?;
            }
            return Ok(());
        };
        write!(
            f,
            "; the newest of {} capture{} is {}",
            self.captures,
            if self.captures == 1 { "" } else { "s" },
            c.path.display()
        )?;
        if let Some(ms) = c.unix_ms {
            let age = self.now_unix_ms.saturating_sub(ms) / 1000;
            write!(f, ", taken {}m{:02}s ago", age / 60, age % 60)?;
        }
        write!(
            f,
            " on trigger {}",
            c.trigger.as_deref().unwrap_or("unknown")
        )?;
        if let Some(bytes) = c.allocated_bytes {
            write!(f, " with {} allocated", Mib(bytes))?;
        }
        if let Some(usage) = c.cgroup_usage_bytes {
            write!(f, ", cgroup usage {}", Mib(usage))?;
        }
        if let Some(limit) = c.limit_bytes {
            write!(f, " of a {} limit", Mib(limit))?;
        }
        if let Some(pid) = c.pid {
            write!(f, " (pid {pid}")?;
            if let Some(binary) = &c.binary {
                write!(f, ", binary {}", binary.display())?;
            }
            if let Some(id) = c.build_id.as_deref().filter(|id| !id.is_empty()) {
                write!(f, ", build id {id}")?;
            }
            f.write_str(")")?;
        }
        match (&c.heap_profile, &c.heap_profile_error) {
            (Some(heap), _) => write!(
                f,
                "; its raw heap profile {} needs symbolizing with that binary (memwatch top)",
                heap.display()
            )?,
            (None, Some(err)) => write!(f, "; it has no heap profile ({err})")?,
            (None, None) => f.write_str("; it has no heap profile")?,
        }
        if self.incomplete > 0 {
            write!(
                f,
                "; {} later capture(s) were cut short by the process dying",
                self.incomplete
            )?;
        }
        Ok(())
    }
}

/// Removes captures, oldest first, until at most `max_count` remain and they take at most
/// `max_bytes` — but never the newest complete one. Also removes captures cut short (only the
/// recorder thread writes captures and it prunes between them, so none is in progress; read
/// the [`postmortem`] before starting a recorder, which prunes). Returns how many were removed.
pub(crate) fn prune(dir: &Path, max_count: usize, max_bytes: u64) -> usize {
    let Ok(list) = captures(dir) else { return 0 };
    let mut removed = 0;
    let (complete, incomplete): (Vec<_>, Vec<_>) = list.into_iter().partition(|c| c.complete);
    for c in incomplete {
        if std::fs::remove_dir_all(&c.path).is_ok() {
            removed += 1;
        }
    }
    let mut count = complete.len();
    let mut bytes: u64 = complete.iter().map(|c| c.disk_bytes).sum();
    for c in complete.iter().take(complete.len().saturating_sub(1)) {
        if count <= max_count && bytes <= max_bytes {
            break;
        }
        if std::fs::remove_dir_all(&c.path).is_ok() {
            removed += 1;
            count -= 1;
            bytes = bytes.saturating_sub(c.disk_bytes);
        }
    }
    removed
}

fn incomplete(path: &Path, name: &str) -> CaptureInfo {
    CaptureInfo {
        path: path.to_path_buf(),
        name: name.to_string(),
        complete: false,
        trigger: None,
        unix_ms: None,
        detection_latency: None,
        allocated_bytes: None,
        cgroup_usage_bytes: None,
        cgroup_limit_bytes: None,
        limit_bytes: None,
        limit_source: None,
        ladder_bytes: Vec::new(),
        trigger_bytes: None,
        measure: None,
        pid: None,
        binary: None,
        build_id: None,
        heap_profile: None,
        heap_profile_error: None,
        timeline: None,
        capture_duration: None,
        disk_bytes: 0,
    }
}

/// Bytes as MiB with one decimal.
struct Mib(u64);

impl fmt::Display for Mib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tenths = self.0 * 10 / (1 << 20);
        write!(f, "{}.{} MiB", tenths / 10, tenths % 10)
    }
}

//! One reading of every memory figure memwatch knows, and its Prometheus rendering.

use std::fmt::Write as _;
use std::path::Path;

use crate::cgroup::{CgroupMemory, cgroup_memory, read_small};
use crate::{Error, alloc};

/// Every memory figure at one moment. A figure that could not be read is `None`: a snapshot
/// never fails as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemorySnapshot {
    /// jemalloc's own statistics (always jemalloc's view, even if another global allocator is
    /// installed: with unprefixed symbols jemalloc also serves C `malloc`).
    pub jemalloc: Option<JemallocStats>,
    /// The counter kept by [`Allocator`](crate::Allocator); `None` when it is not installed.
    pub counter: Option<CounterStats>,
    /// From `/proc/self/status`.
    pub process: Option<ProcessMemory>,
    /// The memory cgroup; `None` outside one (or when `/sys/fs/cgroup` is not mounted).
    pub cgroup: Option<CgroupMemory>,
}

/// jemalloc's `stats.*` in bytes, read after advancing the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JemallocStats {
    /// Bytes in live allocations (size-class rounded).
    pub allocated: u64,
    /// Bytes in active pages: allocated plus fragmentation inside them.
    pub active: u64,
    /// Bytes in physically resident pages jemalloc maps (includes metadata and dirty pages).
    pub resident: u64,
    /// Bytes of virtual memory kept mapped but returned to the OS: not resident.
    pub retained: u64,
    /// Bytes in active extents mapped by jemalloc.
    pub mapped: u64,
    /// Bytes of jemalloc's own bookkeeping, including the heap profiler's.
    pub metadata: u64,
}

/// The allocator-level counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterStats {
    /// Bytes allocated now (requested sizes).
    pub allocated_bytes: u64,
    /// Highest `allocated_bytes` over the trailing peak window ([`peek_peak`](crate::peek_peak)).
    pub peak_bytes: u64,
}

/// Resident memory of the process as the kernel counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessMemory {
    /// `VmRSS`: resident now, including file-backed pages such as a mapped binary.
    pub resident_bytes: u64,
    /// `VmHWM`: highest resident size since the process started.
    pub peak_resident_bytes: Option<u64>,
    /// `Threads`: used by the backtrace policy to check it runs single-threaded.
    pub threads: Option<u64>,
}

/// Reads every figure. Resets nothing: the peaks are over a trailing window, the same for
/// every reader.
pub fn snapshot() -> MemorySnapshot {
    read_all(alloc::peek_peak())
}

/// The same as [`snapshot`] (kept from when a scrape reset the peak).
pub fn peek_snapshot() -> MemorySnapshot {
    snapshot()
}

/// jemalloc's statistics, after advancing the epoch so they are fresh.
pub fn jemalloc_stats() -> Result<JemallocStats, Error> {
    use tikv_jemalloc_ctl::{epoch, stats};
    let err = |what| move |code| Error::Jemalloc { what, code };
    epoch::advance().map_err(err("epoch"))?;
    let read = |value: Result<usize, tikv_jemalloc_ctl::Error>, what| {
        value.map(|v| v as u64).map_err(err(what))
    };
    Ok(JemallocStats {
        allocated: read(stats::allocated::read(), "stats.allocated")?,
        active: read(stats::active::read(), "stats.active")?,
        resident: read(stats::resident::read(), "stats.resident")?,
        retained: read(stats::retained::read(), "stats.retained")?,
        mapped: read(stats::mapped::read(), "stats.mapped")?,
        metadata: read(stats::metadata::read(), "stats.metadata")?,
    })
}

/// This process's resident memory from `/proc/self/status`.
pub fn process_memory() -> Option<ProcessMemory> {
    process_memory_at(Path::new("/proc/self/status"))
}

/// Parses a `/proc/<pid>/status` file; `None` when it is missing or has no `VmRSS`.
pub fn process_memory_at(status: &Path) -> Option<ProcessMemory> {
    let text = read_small(status)?;
    let field = |key: &str| {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(key)?.strip_prefix(':')?;
            let mut parts = rest.split_whitespace();
            let value: u64 = parts.next()?.parse().ok()?;
            match parts.next() {
                Some("kB") => value.checked_mul(1024),
                None => Some(value),
                Some(_) => None,
            }
        })
    };
    Some(ProcessMemory {
        resident_bytes: field("VmRSS")?,
        peak_resident_bytes: field("VmHWM"),
        threads: field("Threads"),
    })
}

/// Appends the snapshot as Prometheus text exposition (gauges with HELP and TYPE, names
/// prefixed `memwatch_`); figures that are `None` are left out.
pub fn write_prometheus(snapshot: &MemorySnapshot, out: &mut String) {
    let mut gauge =
        |name: &str, help: &str, value: Option<u64>| metric(out, "gauge", name, help, value);
    if let Some(j) = &snapshot.jemalloc {
        gauge(
            "jemalloc_allocated_bytes",
            "bytes in live allocations (jemalloc stats.allocated)",
            Some(j.allocated),
        );
        gauge(
            "jemalloc_active_bytes",
            "bytes in active pages (jemalloc stats.active)",
            Some(j.active),
        );
        gauge(
            "jemalloc_resident_bytes",
            "bytes resident in pages mapped by jemalloc (stats.resident)",
            Some(j.resident),
        );
        gauge(
            "jemalloc_retained_bytes",
            "bytes retained as virtual memory, not resident (stats.retained)",
            Some(j.retained),
        );
        gauge(
            "jemalloc_mapped_bytes",
            "bytes in extents mapped by jemalloc (stats.mapped)",
            Some(j.mapped),
        );
        gauge(
            "jemalloc_metadata_bytes",
            "bytes of jemalloc metadata including profiling (stats.metadata)",
            Some(j.metadata),
        );
    }
    if let Some(c) = &snapshot.counter {
        gauge(
            "allocated_bytes",
            "bytes allocated now, counted at the allocator",
            Some(c.allocated_bytes),
        );
        gauge(
            "allocated_peak_bytes",
            "highest allocated bytes over the trailing peak window (60 s unless configured)",
            Some(c.peak_bytes),
        );
    }
    if let Some(p) = &snapshot.process {
        gauge(
            "process_resident_bytes",
            "resident set size (VmRSS)",
            Some(p.resident_bytes),
        );
        gauge(
            "process_resident_peak_bytes",
            "highest resident set size since start (VmHWM)",
            p.peak_resident_bytes,
        );
    }
    if let Some(c) = &snapshot.cgroup {
        gauge(
            "cgroup_usage_bytes",
            "memory cgroup usage including page cache",
            c.usage_bytes,
        );
        gauge(
            "cgroup_working_set_bytes",
            "memory cgroup usage minus inactive file cache",
            c.working_set_bytes(),
        );
        gauge(
            "cgroup_limit_bytes",
            "effective memory cgroup limit (absent when unlimited)",
            c.limit_bytes,
        );
        gauge(
            "cgroup_peak_bytes",
            "highest memory cgroup usage recorded by the kernel",
            c.peak_bytes,
        );
        metric(
            out,
            "counter",
            "cgroup_oom_kills_total",
            "processes OOM-killed in this memory cgroup",
            c.oom_kills,
        );
    }
}

fn read_all(peak: Option<u64>) -> MemorySnapshot {
    let counter = alloc::allocated_bytes().map(|now| CounterStats {
        allocated_bytes: now,
        peak_bytes: peak.unwrap_or(now).max(now),
    });
    MemorySnapshot {
        jemalloc: jemalloc_stats().ok(),
        counter,
        process: process_memory(),
        cgroup: cgroup_memory().ok(),
    }
}

fn metric(out: &mut String, kind: &str, name: &str, help: &str, value: Option<u64>) {
    if let Some(value) = value {
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "# HELP memwatch_{name} {help}\n# TYPE memwatch_{name} {kind}\nmemwatch_{name} {value}\n"
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn parse(text: &str) -> Option<ProcessMemory> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status");
        std::fs::write(&path, text).unwrap();
        process_memory_at(&path)
    }

    #[test]
    fn status_file_gives_rss_peak_and_threads() {
        let status = "Name:\tgw\nVmHWM:\t  204800 kB\nVmRSS:\t   51200 kB\nThreads:\t7\n";
        let expected = ProcessMemory {
            resident_bytes: 50 << 20,
            peak_resident_bytes: Some(200 << 20),
            threads: Some(7),
        };
        assert_eq!(parse(status), Some(expected));
    }

    #[test]
    fn status_garbage_or_missing_gives_none() {
        assert_eq!(parse(""), None);
        assert_eq!(parse("VmRSS: lots kB\n"), None);
        assert_eq!(parse("VmRSS: 1 MB\n"), None, "unknown unit");
        assert_eq!(parse("VmRSS: 99999999999999999999 kB\n"), None);
        let p = parse("VmRSS:\t4 kB\nVmHWM: x\n").unwrap();
        assert_eq!((p.resident_bytes, p.peak_resident_bytes), (4096, None));
        assert_eq!(process_memory_at(Path::new("/nonexistent/status")), None);
    }

    #[test]
    fn prometheus_leaves_out_unknown_figures() {
        let mut out = String::new();
        let empty = MemorySnapshot {
            jemalloc: None,
            counter: None,
            process: None,
            cgroup: None,
        };
        write_prometheus(&empty, &mut out);
        assert_eq!(out, "");

        let only_rss = MemorySnapshot {
            process: parse("VmRSS: 1 kB\n"),
            ..empty
        };
        write_prometheus(&only_rss, &mut out);
        assert_eq!(
            out,
            "# HELP memwatch_process_resident_bytes resident set size (VmRSS)\n\
             # TYPE memwatch_process_resident_bytes gauge\n\
             memwatch_process_resident_bytes 1024\n"
        );
    }
}

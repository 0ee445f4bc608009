//! memwatch: memory observability for Rust services on jemalloc.
//!
//! Knows nothing of HTTP or of any particular service: it counts allocated bytes at the
//! allocator (with a peak over a trailing window that every reader sees), reads jemalloc, process and cgroup memory
//! figures, renders them as Prometheus gauges, dumps raw jemalloc heap profiles and turns them
//! into pprof and flame graphs ([`profile`]), and sets a backtrace policy that keeps the error
//! path from symbolizing debug info.
//!
//! # Installing in a binary
//!
//! ```no_run
//! #[global_allocator]
//! static GLOBAL: memwatch::Allocator = memwatch::Allocator::new();
//!
//! // Defines jemalloc's `malloc_conf` symbol: "prof:true,prof_active:true,lg_prof_sample:19".
//! // The MALLOC_CONF environment variable still overrides it (e.g. MALLOC_CONF=prof:false).
//! memwatch::malloc_conf!();
//!
//! fn main() -> Result<(), memwatch::RecorderError> {
//!     // First thing, while the process has one thread.
//!     eprintln!("{}", memwatch::apply_backtrace_policy());
//!     // The post-mortem of the previous run, then the flight recorder (limit: the cgroup's).
//!     let mw = memwatch::Memwatch::builder().capture_dir("memwatch").start()?;
//!     // ... serve; render mw.metrics_text(), mw.report(), check mw.over_soft_limit().
//!     Ok(())
//! }
//! ```
//!
//! HTTP routes and the soft-limit layer for axum: the `memwatch-axum` crate. The README
//! (`crates/memwatch/README.md`) has the quick start, the defaults and the runbook.
//!
//! **Architecture invariant:** the allocation path ([`Allocator`]) never allocates, locks or
//! does I/O; everything else in this crate may, and is meant for scrapes and startup.

mod alloc;
mod backtrace;
mod cgroup;
mod elf;
mod peaks;
pub mod profile;
mod recorder;
#[cfg(feature = "serde")]
mod serde_impls;
mod service;
mod snapshot;
mod timeline_svg;
mod utc;

use std::path::PathBuf;

pub use alloc::{
    Allocator, DEFAULT_MALLOC_CONF, FOLD_THRESHOLD, MallocConf, allocated_bytes, dump_heap_profile,
    flush_thread, peek_peak, profiling_enabled, release_unused,
};
pub use backtrace::{
    __apply_backtrace_policy_before_main, BacktracePolicy, PolicyAction, apply_backtrace_policy,
};
pub use cgroup::{CgroupMemory, CgroupVersion, cgroup_memory, cgroup_memory_at, memory_limit};
pub use elf::{DebugSection, LibraryDebug, SymbolizationCost, debug_sections};
pub use peaks::{allocated_peak, cgroup_usage_peak, peak_window, set_peak_window};
#[cfg(feature = "tracing")]
pub use recorder::log_with_tracing;
pub use recorder::{
    CaptureInfo, Event, EventHook, Growth, LastCapture, LimitSource, Measure, Postmortem, Recorder,
    RecorderConfig, RecorderError, RecorderStatus, SoftLimitConfig, Timeline, TimelineSample,
    Trigger, captures, postmortem, postmortem_with, read_timeline,
};
pub use recorder::{PreviousRun, read_blackbox};
pub use service::{Builder, MemoryReport, Memwatch, RecorderState, Settings};
pub use snapshot::{
    CounterStats, JemallocStats, MemorySnapshot, ProcessMemory, jemalloc_stats, peek_snapshot,
    process_memory, process_memory_at, snapshot, write_prometheus,
};
pub use timeline_svg::{timeline_svg, utc_timestamp};

/// Errors of memwatch's fallible operations. Reading figures for a snapshot never fails as a
/// whole: a figure that cannot be read is `None` there.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A jemalloc control (mallctl) call failed.
    #[error("jemalloc {what}: {code}")]
    Jemalloc {
        /// The mallctl name, to tell which control failed.
        what: &'static str,
        /// jemalloc's errno-style failure (not a `std::error::Error` without its `use_std`).
        code: tikv_jemalloc_ctl::Error,
    },
    /// A jemalloc control that takes no value failed (its code is an errno value).
    #[error("jemalloc {what}: {source}")]
    Control {
        what: &'static str,
        source: std::io::Error,
    },
    /// Heap profiling is not enabled (`opt.prof` is false): see [`malloc_conf!`].
    #[error("jemalloc heap profiling is not enabled (set malloc_conf or MALLOC_CONF=prof:true)")]
    ProfilingDisabled,
    /// A path that cannot be handed to C (contains a NUL byte).
    #[error("path {0} contains a NUL byte")]
    InvalidPath(PathBuf),
    /// Reading a file failed.
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file exists but its content is not what was expected.
    #[error("parsing {path}: {reason}")]
    Parse {
        path: PathBuf,
        /// What was wrong, for the operator.
        reason: &'static str,
    },
    /// No memory cgroup was found for this process.
    #[error("no memory cgroup found for this process")]
    NoCgroup,
}

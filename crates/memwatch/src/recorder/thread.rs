//! The recorder thread: sleeps on the wake eventfd with a `resolution` timeout, samples
//! allocated bytes and cgroup usage into the timeline, feeds the soft limit and the ladder,
//! writes captures, and re-arms the allocator.
//!
//! What the ladder and the soft limit compare with the limit: by default ([`Measure::Max`])
//! the larger of the allocator's figure and the cgroup's working set (usage minus inactive
//! file cache, `memory.stat` re-read every 50 ms: what the OOM killer cannot reclaim), the
//! latter only when the limit in force is the cgroup's.
//!
//! **Invariant:** the sampling loop does not allocate: the ring, the capture buffers, the
//! cgroup file descriptors and the `memory.stat` buffer are set up before the thread starts
//! taking samples. Only after a capture is on disk does it allocate (status strings,
//! directory listing for the budget).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::blackbox::BlackBox;
use super::capture::{Capturer, Moment};
use super::config::{LimitSource, Measure, RecorderConfig};
use super::error::RecorderError;
use super::event::{Event, EventHook};
use super::ladder::{Ladder, SoftChange, SoftLimit, Trigger, WindowMin, share_of};
use super::postmortem::prune;
use super::status::{LastCapture, RecorderStatus};
use super::timeline::Ring;
use super::wake;
use crate::cgroup::{CgroupVersion, cgroup_memory};

/// How much of the newest timeline the black box keeps on disk (160 KiB at 1 ms).
const BLACKBOX_SPAN: Duration = Duration::from_secs(10);

/// While over the soft limit, ask jemalloc to purge at most this often.
const PURGE_EVERY_NS: u64 = 1_000_000_000;

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
    /// Updated after each capture only, never in the sampling loop.
    pub(crate) status: Mutex<RecorderStatus>,
    /// Written by the thread every tick; marked clean by the handle at stop.
    pub(crate) blackbox: BlackBox,
}

/// Sets everything up on the calling thread, then starts the recorder thread.
pub(crate) fn spawn(
    config: RecorderConfig,
    hook: Option<EventHook>,
) -> Result<(Arc<Shared>, JoinHandle<()>), RecorderError> {
    let cgroup = cgroup_memory().ok();
    let cgroup_limit = cgroup.as_ref().and_then(|c| c.limit_bytes);
    let (limit, source) =
        LimitSource::resolve(config.limit_bytes, cgroup_limit).ok_or(RecorderError::NoLimit)?;
    if config.measure != Measure::CgroupUsage && crate::allocated_bytes().is_none() {
        return Err(RecorderError::AllocatorNotInstalled);
    }
    let usage_file = cgroup.as_ref().and_then(|c| {
        let name = match c.version {
            CgroupVersion::V1 => "memory.usage_in_bytes",
            CgroupVersion::V2 => "memory.current",
        };
        File::open(c.path.join(name)).ok()
    });
    let stat = cgroup.as_ref().and_then(|c| {
        let file = File::open(c.path.join("memory.stat")).ok()?;
        let key: &'static [u8] = match c.version {
            CgroupVersion::V1 => b"total_inactive_file ",
            CgroupVersion::V2 => b"inactive_file ",
        };
        Some(CgroupStat {
            file,
            key,
            buf: vec![0; 16 * 1024],
            inactive_file: 0,
            read_at_ns: 0,
        })
    });
    // The cgroup's figure counts only when the limit in force is the cgroup's: a limit the
    // service gives below it is a budget for this process, not for the whole cgroup.
    let cgroup_counts = match config.measure {
        Measure::Allocated => false,
        Measure::CgroupUsage => true,
        Measure::Max => source != LimitSource::Config,
    };
    let io_err = |source| RecorderError::io(&config.capture_dir, source);
    wake::wake_fd().map_err(|errno| io_err(std::io::Error::from_raw_os_error(errno)))?;
    prune(
        &config.capture_dir,
        config.max_captures,
        config.max_capture_bytes,
    );
    let mut ladder_bytes: Vec<u64> = config.ladder.iter().map(|&s| share_of(limit, s)).collect();
    ladder_bytes.sort_unstable();
    let capturer = Capturer::new(
        &config.capture_dir,
        cgroup_limit,
        limit,
        source,
        ladder_bytes,
        config.measure,
    )
    .map_err(io_err)?;
    let resolution_ns = u64::try_from(config.resolution.as_nanos()).unwrap_or(1_000_000);
    let ladder = Ladder::new(
        limit,
        &config.ladder,
        config.growth.map(|g| share_of(limit, g.share)),
        share_of(limit, config.hysteresis),
        u64::try_from(config.cooldown.as_micros()).unwrap_or(u64::MAX),
    );
    let window_us = config
        .growth
        .map_or(Duration::from_secs(1), |g| g.window)
        .as_micros();
    let soft = config
        .soft_limit
        .map(|s| SoftLimit::new(share_of(limit, s.high), share_of(limit, s.low)));
    let blackbox = BlackBox::create(
        &config.capture_dir,
        limit,
        source,
        cgroup_counts,
        resolution_ns,
        BLACKBOX_SPAN,
    )
    .map_err(io_err)?;
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        capture_requested: AtomicBool::new(false),
        over_soft_limit: AtomicBool::new(false),
        samples_total: AtomicU64::new(0),
        purges_total: AtomicU64::new(0),
        soft_limit_entries_total: AtomicU64::new(0),
        status: Mutex::new(RecorderStatus::new(&config.capture_dir, limit, source)),
        blackbox,
    });
    let (fine, coarse, fold) = config.timeline_samples();
    let mut state = State {
        shared: Arc::clone(&shared),
        hook,
        limit_bytes: limit,
        ring: Ring::new(fine, coarse, fold, resolution_ns),
        window: WindowMin::new(u64::try_from(window_us).unwrap_or(1_000_000)),
        ladder,
        soft,
        capturer,
        usage_file,
        stat,
        cgroup_counts,
        measure: config.measure,
        resolution_ns,
        max_captures: config.max_captures,
        max_capture_bytes: config.max_capture_bytes,
        started_ns: wake::monotonic_ns(),
        handled_crossings: wake::last_crossing().count,
        last_purge_ns: 0,
    };
    let thread = std::thread::Builder::new()
        .name("memwatch-recorder".into())
        .spawn(move || state.run())
        .map_err(io_err)?;
    Ok((shared, thread))
}

/// Everything the thread owns.
struct State {
    shared: Arc<Shared>,
    /// The service's hook, told of each capture once it is on disk.
    hook: Option<EventHook>,
    limit_bytes: u64,
    ring: Ring,
    window: WindowMin,
    ladder: Ladder,
    soft: Option<SoftLimit>,
    capturer: Capturer,
    /// `memory.usage_in_bytes` / `memory.current`, opened once and read with `pread`.
    usage_file: Option<File>,
    /// `memory.stat`, for the inactive file cache the working set leaves out.
    stat: Option<CgroupStat>,
    /// Whether the cgroup's working set is compared with the limit (see `spawn`).
    cgroup_counts: bool,
    measure: Measure,
    resolution_ns: u64,
    max_captures: usize,
    max_capture_bytes: u64,
    /// The timeline's clock starts here.
    started_ns: u64,
    /// Allocator crossings already acted on.
    handled_crossings: u64,
    last_purge_ns: u64,
}

impl State {
    fn run(&mut self) {
        let Ok(fd) = wake::wake_fd() else { return };
        while !self.shared.stop.load(Ordering::Acquire) {
            self.tick();
            wake::wait(fd, self.resolution_ns);
        }
        wake::arm(None);
    }

    fn tick(&mut self) {
        let now_ns = wake::monotonic_ns();
        let at_us = now_ns.saturating_sub(self.started_ns) / 1000;
        let allocated = crate::allocated_bytes().unwrap_or(0);
        let cgroup = self.usage_file.as_ref().and_then(read_usage);
        // The peak gauges' windows: every sample, so a spike lands in the bucket of its time.
        if let Some(usage) = cgroup {
            crate::peaks::record_cgroup(usage);
        }
        crate::peaks::drain_allocated();
        self.ring.push(at_us, allocated, cgroup);
        self.shared.blackbox.push(at_us, allocated, cgroup);
        self.shared.samples_total.fetch_add(1, Ordering::Relaxed);

        // An allocation may have crossed and already been freed (a 5 ms spike): the level it
        // reported counts as seen.
        let crossing = wake::last_crossing();
        let new_crossing = crossing.count != self.handled_crossings;
        self.handled_crossings = crossing.count;
        let seen_allocated = if new_crossing {
            allocated.max(crossing.bytes)
        } else {
            allocated
        };
        let working_set = match (cgroup, self.cgroup_counts) {
            (Some(usage), true) => {
                let inactive = self.stat.as_mut().map_or(0, |s| s.inactive_file(now_ns));
                usage.saturating_sub(inactive)
            }
            _ => 0,
        };
        let value = match self.measure {
            Measure::Allocated => seen_allocated,
            Measure::CgroupUsage => working_set,
            Measure::Max => seen_allocated.max(working_set),
        };
        let window_min = self.window.push(at_us, value);
        self.soft_limit(now_ns, value);

        let trigger = self.ladder.evaluate(at_us, value, window_min).or_else(|| {
            self.shared
                .capture_requested
                .swap(false, Ordering::AcqRel)
                .then_some(Trigger::Manual)
        });
        if let Some(trigger) = trigger {
            let detection_latency_ns = (new_crossing && trigger != Trigger::Manual)
                .then(|| now_ns.saturating_sub(crossing.at_ns));
            let moment = Moment {
                trigger,
                at_ns: now_ns,
                at_us,
                detection_latency_ns,
                allocated_bytes: seen_allocated,
                cgroup_usage_bytes: cgroup,
                measured_bytes: value,
            };
            self.capture(&moment);
        }
        if self.measure == Measure::CgroupUsage {
            wake::arm(None);
        } else {
            wake::arm(self.ladder.armed_level(window_min));
        }
    }

    fn soft_limit(&mut self, now_ns: u64, value: u64) {
        let Some(soft) = &mut self.soft else { return };
        match soft.evaluate(value) {
            Some(SoftChange::Entered) => {
                self.shared.over_soft_limit.store(true, Ordering::Relaxed);
                self.shared
                    .soft_limit_entries_total
                    .fetch_add(1, Ordering::Relaxed);
                self.purge(now_ns);
            }
            Some(SoftChange::Left) => {
                self.shared.over_soft_limit.store(false, Ordering::Relaxed);
            }
            None if self.shared.over_soft_limit.load(Ordering::Relaxed)
                && now_ns.saturating_sub(self.last_purge_ns) >= PURGE_EVERY_NS =>
            {
                self.purge(now_ns);
            }
            None => {}
        }
    }

    /// Returns jemalloc's dirty and muzzy pages of every arena to the OS.
    fn purge(&mut self, now_ns: u64) {
        self.last_purge_ns = now_ns;
        // SAFETY: "arena.<MALLCTL_ARENAS_ALL>.purge" is a void control: all pointers NULL.
        let rc = unsafe {
            tikv_jemalloc_sys::mallctl(
                c"arena.4096.purge".as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        if rc == 0 {
            self.shared.purges_total.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn capture(&mut self, moment: &Moment) {
        let result = self.capturer.capture(moment, &self.ring);
        let written_ok = result.is_ok();
        // The capture is on disk (or failed): from here allocating is fine.
        let mut status = match self.shared.status.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        status.triggers_total += 1;
        match result {
            Ok(written) => {
                status.captures_total += 1;
                #[allow(clippy::cast_precision_loss)] // a share for people
                let share = moment.measured_bytes as f64 / self.limit_bytes.max(1) as f64;
                status.last_capture = Some(LastCapture {
                    path: self.capturer.dir().join(written.name()),
                    trigger: moment.trigger,
                    measured_bytes: moment.measured_bytes,
                    share,
                    unix_ms: written.unix_ms,
                    detection_latency: moment.detection_latency_ns.map(Duration::from_nanos),
                    capture_duration: Duration::from_nanos(written.capture_ns),
                    complete_duration: Duration::from_nanos(written.complete_ns),
                });
            }
            Err(failure) => {
                status.capture_failures_total += 1;
                status.last_failure = Some(failure.to_string());
            }
        }
        let last = status.last_capture.clone();
        let failure = status.last_failure.clone();
        drop(status);
        if let Some(hook) = &self.hook {
            match (written_ok, last, failure) {
                (true, Some(capture), _) => hook(&Event::Captured(&capture)),
                (false, _, Some(reason)) => hook(&Event::CaptureFailed(&reason)),
                _ => {}
            }
        }
        prune(
            self.capturer.dir(),
            self.max_captures,
            self.max_capture_bytes,
        );
    }
}

/// Re-read `memory.stat` at most this often: it is larger than the usage file and the inactive
/// file cache moves slowly; usage itself is read every tick.
const STAT_EVERY_NS: u64 = 50_000_000;

/// The cgroup's `memory.stat`, read with `pread` into a buffer allocated at start.
struct CgroupStat {
    file: File,
    /// `total_inactive_file ` (v1, hierarchical) or `inactive_file ` (v2).
    key: &'static [u8],
    buf: Vec<u8>,
    inactive_file: u64,
    read_at_ns: u64,
}

impl CgroupStat {
    /// The inactive file cache, re-read every [`STAT_EVERY_NS`].
    fn inactive_file(&mut self, now_ns: u64) -> u64 {
        if now_ns.saturating_sub(self.read_at_ns) >= STAT_EVERY_NS {
            self.read_at_ns = now_ns;
            if let Ok(n) = self.file.read_at(&mut self.buf, 0)
                && let Some(value) = stat_value(&self.buf[..n], self.key)
            {
                self.inactive_file = value;
            }
        }
        self.inactive_file
    }
}

/// The number after `key` at the start of a line of a `memory.stat` text.
fn stat_value(text: &[u8], key: &[u8]) -> Option<u64> {
    text.split(|&b| b == b'\n')
        .find_map(|line| line.strip_prefix(key))
        .and_then(parse_digits)
}

/// Reads a cgroup usage file with `pread` into a stack buffer.
fn read_usage(file: &File) -> Option<u64> {
    let mut buf = [0u8; 32];
    let n = file.read_at(&mut buf, 0).ok()?;
    parse_digits(buf.get(..n)?)
}

/// The leading decimal number of `bytes`.
fn parse_digits(bytes: &[u8]) -> Option<u64> {
    let mut value: u64 = 0;
    let mut digits = 0;
    for &b in bytes {
        if b.is_ascii_digit() {
            value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
            digits += 1;
        } else {
            break;
        }
    }
    (digits > 0).then_some(value)
}

//! The black box: the newest seconds of the timeline in a memory-mapped file of the capture
//! directory (`blackbox.bin`), on disk at every moment — the page cache outlives the process,
//! so a `kill -9` or an OOM kill loses nothing the recorder sampled. Its header records
//! whether the run ended cleanly, so the next start can say "the previous run was killed at T
//! at X % of its limit" even in a fresh cgroup whose OOM counter is zero.
//!
//! Format (little-endian): a 4 KiB header of u64 words — magic `MWBLACK1`, pid, start (Unix
//! ms), limit, resolution (ns), capacity (samples), samples written, clean-exit flag, clean
//! exit (Unix ms), limit source (0 config, 1 cgroup, 2 capped), whether the cgroup's figure
//! counts for the share — then a ring of 16-byte samples as in `timeline.bin`: µs since the
//! start, allocated KiB (u32), cgroup usage KiB (u32, `u32::MAX` unknown). The recorder thread
//! writes a sample, then the count (release), with plain stores: no syscall per sample.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::config::LimitSource;
use super::files::{BLACKBOX, BLACKBOX_PREVIOUS};
use super::timeline::{Timeline, TimelineSample};

const MAGIC: &[u8; 8] = b"MWBLACK1";
const HEADER: usize = 4096;
const SAMPLE: usize = 16;
const UNKNOWN: u32 = u32::MAX;

/// Header word indexes.
const PID: usize = 1;
const STARTED_MS: usize = 2;
const LIMIT: usize = 3;
const RESOLUTION_NS: usize = 4;
const CAPACITY: usize = 5;
const WRITTEN: usize = 6;
const CLEAN: usize = 7;
const CLEAN_MS: usize = 8;
const SOURCE: usize = 9;
const CGROUP_COUNTS: usize = 10;

/// The live black box of this run: a shared mapping written by the recorder thread.
#[derive(Debug)]
pub(crate) struct BlackBox {
    base: *mut u8,
    len: usize,
    capacity: u64,
}

// SAFETY: the mapping is only written by the recorder thread (samples) and, for the
// clean-exit words, by whoever stops the recorder; words are written through atomics.
unsafe impl Send for BlackBox {}
// SAFETY: as above.
unsafe impl Sync for BlackBox {}

/// What the black box of the previous run says.
#[derive(Debug, Clone, PartialEq)]
pub struct PreviousRun {
    pub pid: u32,
    /// When it started (Unix ms).
    pub started_unix_ms: u64,
    /// Whether it ended cleanly (its recorder was stopped); `false`: killed, or it exited
    /// without stopping the recorder.
    pub clean: bool,
    /// When it ended: the clean exit, else its newest sample (Unix ms).
    pub ended_unix_ms: u64,
    pub limit_bytes: u64,
    pub limit_source: LimitSource,
    /// Its newest sample's figures.
    pub allocated_bytes: u64,
    pub cgroup_usage_bytes: Option<u64>,
    /// The measured figure at the end as a share of the limit (the larger of allocated and
    /// cgroup usage when the limit was the cgroup's).
    pub share: f64,
    /// The newest seconds, as a timeline ending at the last sample.
    pub timeline: Timeline,
}

impl BlackBox {
    /// Moves the previous run's box aside (`blackbox.prev.bin`) and creates this run's.
    pub(crate) fn create(
        dir: &Path,
        limit: u64,
        source: LimitSource,
        cgroup_counts: bool,
        resolution_ns: u64,
        span: Duration,
    ) -> std::io::Result<Self> {
        let path = dir.join(BLACKBOX);
        if path.exists() {
            std::fs::rename(&path, dir.join(BLACKBOX_PREVIOUS))?;
        }
        let capacity = (u64::try_from(span.as_nanos()).unwrap_or(u64::MAX) / resolution_ns.max(1))
            .clamp(1, 1 << 20);
        let len = HEADER + usize::try_from(capacity).unwrap_or(1) * SAMPLE;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        file.set_len(len as u64)?;
        // SAFETY: a fresh shared mapping of a file we just sized; unmapped in Drop.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let boxed = Self {
            base: base.cast(),
            len,
            capacity,
        };
        // SAFETY: the header lies within the mapping.
        unsafe { std::ptr::copy_nonoverlapping(MAGIC.as_ptr(), boxed.base, 8) };
        let source = match source {
            LimitSource::Config => 0,
            LimitSource::Cgroup => 1,
            LimitSource::ConfigCappedByCgroup => 2,
        };
        for (i, v) in [
            (PID, u64::from(std::process::id())),
            (STARTED_MS, super::wake::unix_ms()),
            (LIMIT, limit),
            (RESOLUTION_NS, resolution_ns),
            (CAPACITY, capacity),
            (SOURCE, source),
            (CGROUP_COUNTS, u64::from(cgroup_counts)),
        ] {
            boxed.word(i).store(v, Ordering::Relaxed);
        }
        // Every page touched now, so the sampling loop never faults in a fresh page.
        for page in (HEADER..len).step_by(4096) {
            // SAFETY: within the mapping.
            unsafe { boxed.base.add(page).write_volatile(0) };
        }
        Ok(boxed)
    }

    fn word(&self, index: usize) -> &AtomicU64 {
        // SAFETY: header words are 8-aligned (page-aligned base) and inside the mapping, which
        // lives as long as `self`.
        unsafe { &*self.base.add(index * 8).cast::<AtomicU64>() }
    }

    /// Appends one sample (recorder thread only). Plain stores, no syscall, no allocation.
    pub(crate) fn push(&self, at_us: u64, allocated: u64, cgroup: Option<u64>) {
        let written = self.word(WRITTEN).load(Ordering::Relaxed);
        let kib = |b: u64| u32::try_from(b / 1024).unwrap_or(UNKNOWN - 1);
        let mut sample = [0u8; SAMPLE];
        sample[..8].copy_from_slice(&at_us.to_le_bytes());
        sample[8..12].copy_from_slice(&kib(allocated).to_le_bytes());
        sample[12..].copy_from_slice(&cgroup.map_or(UNKNOWN, kib).to_le_bytes());
        let slot = usize::try_from(written % self.capacity).unwrap_or(0);
        // SAFETY: `slot < capacity`, so the 16 bytes lie inside the mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(
                sample.as_ptr(),
                self.base.add(HEADER + slot * SAMPLE),
                SAMPLE,
            );
        }
        self.word(WRITTEN).store(written + 1, Ordering::Release);
    }

    /// Records a clean exit and makes it durable (the process is stopping: a syscall is fine).
    pub(crate) fn mark_clean(&self) {
        self.word(CLEAN_MS)
            .store(super::wake::unix_ms(), Ordering::Relaxed);
        self.word(CLEAN).store(1, Ordering::Release);
        // SAFETY: our own mapping.
        unsafe { libc::msync(self.base.cast(), self.len, libc::MS_SYNC) };
    }
}

impl Drop for BlackBox {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping created in `create`, not used after this.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// Reads the black box in `dir`: the previous run's, as long as no recorder has started since
/// (the builder reads the post-mortem first). `None` when there is none or it is unreadable.
pub(crate) fn read_previous(dir: &Path) -> Option<PreviousRun> {
    read(&dir.join(BLACKBOX))
}

/// Parses a black-box file.
pub fn read_blackbox(path: &Path) -> Option<PreviousRun> {
    read(path)
}

fn read(path: &Path) -> Option<PreviousRun> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.get(..8)? != MAGIC || bytes.len() < HEADER {
        return None;
    }
    let word = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
    let capacity = word(CAPACITY);
    let written = word(WRITTEN);
    let slots = usize::try_from(capacity).ok()?;
    if bytes.len() < HEADER + slots.checked_mul(SAMPLE)? {
        return None;
    }
    let sample = |slot: u64| {
        let at = HEADER + usize::try_from(slot).unwrap_or(0) * SAMPLE;
        let s = &bytes[at..at + SAMPLE];
        let cgroup = u32::from_le_bytes(s[12..16].try_into().unwrap_or([0; 4]));
        TimelineSample {
            at: Duration::from_micros(u64::from_le_bytes(s[..8].try_into().unwrap_or([0; 8]))),
            allocated_bytes: u64::from(u32::from_le_bytes(s[8..12].try_into().unwrap_or([0; 4])))
                * 1024,
            cgroup_usage_bytes: (cgroup != UNKNOWN).then(|| u64::from(cgroup) * 1024),
        }
    };
    let first = written.saturating_sub(capacity);
    let samples: Vec<TimelineSample> = (first..written).map(|n| sample(n % capacity)).collect();
    let last = samples.last().copied();
    let started = word(STARTED_MS);
    let last_ms = last.map_or(started, |s| {
        started.saturating_add(u64::try_from(s.at.as_millis()).unwrap_or(0))
    });
    let clean = word(CLEAN) == 1;
    let limit = word(LIMIT).max(1);
    let allocated = last.map_or(0, |s| s.allocated_bytes);
    let cgroup = last.and_then(|s| s.cgroup_usage_bytes);
    let measured = if word(CGROUP_COUNTS) == 1 {
        allocated.max(cgroup.unwrap_or(0))
    } else {
        allocated
    };
    #[allow(clippy::cast_precision_loss)] // a share for people
    let share = measured as f64 / limit as f64;
    Some(PreviousRun {
        pid: u32::try_from(word(PID)).unwrap_or(0),
        started_unix_ms: started,
        clean,
        ended_unix_ms: if clean { word(CLEAN_MS) } else { last_ms },
        limit_bytes: limit,
        limit_source: match word(SOURCE) {
            1 => LimitSource::Cgroup,
            2 => LimitSource::ConfigCappedByCgroup,
            _ => LimitSource::Config,
        },
        allocated_bytes: allocated,
        cgroup_usage_bytes: cgroup,
        share,
        timeline: Timeline {
            resolution: Duration::from_nanos(word(RESOLUTION_NS)),
            coarse_resolution: None,
            coarse_samples: 0,
            captured_at: last.map_or(Duration::ZERO, |s| s.at),
            captured_unix_ms: last_ms,
            samples,
        },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_box_wraps_survives_its_writer_and_records_a_clean_exit() {
        let dir = tempfile::tempdir().unwrap();
        let span = Duration::from_millis(4);
        let b = BlackBox::create(
            dir.path(),
            100 << 20,
            LimitSource::Cgroup,
            true,
            1_000_000,
            span,
        )
        .unwrap();
        for ms in 0..6u64 {
            b.push(ms * 1000, (10 + ms) << 20, Some(90 << 20));
        }
        drop(b); // as a kill would leave it: mapped pages are in the file
        let run = read_previous(dir.path()).unwrap();
        assert!(!run.clean);
        assert_eq!(run.timeline.samples.len(), 4, "the ring keeps the newest");
        assert_eq!(run.allocated_bytes, 15 << 20);
        assert!(
            (run.share - 0.9).abs() < 1e-9,
            "cgroup usage counts: {}",
            run.share
        );
        assert_eq!(run.pid, std::process::id());

        // The next run moves it aside and starts its own; a clean exit is recorded.
        let b = BlackBox::create(
            dir.path(),
            100 << 20,
            LimitSource::Config,
            false,
            1_000_000,
            span,
        )
        .unwrap();
        assert!(dir.path().join(BLACKBOX_PREVIOUS).is_file());
        b.push(0, 50 << 20, Some(90 << 20));
        b.mark_clean();
        drop(b);
        let run = read_previous(dir.path()).unwrap();
        assert!(run.clean);
        assert!(
            (run.share - 0.5).abs() < 1e-9,
            "a given limit: allocated only"
        );
    }
}

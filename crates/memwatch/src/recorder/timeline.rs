//! The high-resolution timeline: pre-allocated rings of (time, allocated, cgroup usage)
//! samples, their binary file format, and a reader for that format.
//!
//! Two tiers: every sample of the last seconds (the fine tier, e.g. 20 s at 1 ms), and before
//! that one entry per `coarse` period (e.g. 100 ms) holding the maximum of each figure over the
//! period (the coarse tier, e.g. 5 minutes). A spike older than the fine tier keeps its height;
//! only its shape is lost. Together ~0.35 MiB, where 5 minutes at 1 ms would take 4.6 MiB.
//!
//! File format (`timeline.bin`, little-endian): a 56-byte header — magic `MWTIMEL2`,
//! resolution (ns), sample count, the capture moment on the samples' clock (µs since the
//! recorder started), the same moment as Unix ms, the coarse tier's period (ns; 0 when there
//! is none), and how many of the samples are coarse entries — then 16 bytes per sample: time
//! (µs since the recorder started, u64), allocated bytes in KiB (u32), cgroup usage in KiB
//! (u32, `u32::MAX` when unknown). Oldest sample first: the coarse entries older than the fine
//! tier, then the fine samples. Version 1 (`MWTIMEL1`, one tier, a 48-byte header ending in a
//! reserved word) is still read.

use std::path::Path;
use std::time::Duration;

use super::error::RecorderError;

/// One point of the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineSample {
    /// Time since the recorder started.
    pub at: Duration,
    /// Bytes allocated through the counting allocator (KiB precision).
    pub allocated_bytes: u64,
    /// The cgroup's usage (KiB precision); `None` outside a cgroup.
    pub cgroup_usage_bytes: Option<u64>,
}

/// A timeline read back from a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeline {
    /// The recorder's sampling period: the spacing of the newest samples.
    pub resolution: Duration,
    /// The period of the older samples, each the maximum over its period; `None` when every
    /// sample is at `resolution`.
    pub coarse_resolution: Option<Duration>,
    /// How many of the first samples are such maxima.
    pub coarse_samples: usize,
    /// The capture moment on the samples' clock: samples' `at` are before it.
    pub captured_at: Duration,
    /// The capture moment as Unix milliseconds, to put wall times on samples.
    pub captured_unix_ms: u64,
    /// Oldest first.
    pub samples: Vec<TimelineSample>,
}

impl Timeline {
    /// Wall time of a sample, in Unix milliseconds.
    pub fn unix_ms(&self, sample: &TimelineSample) -> u64 {
        let before = self.captured_at.saturating_sub(sample.at);
        let before_ms = u64::try_from(before.as_millis()).unwrap_or(u64::MAX);
        self.captured_unix_ms.saturating_sub(before_ms)
    }

    /// How long before the capture the samples at `resolution` begin.
    pub fn fine_span(&self) -> Duration {
        self.samples
            .get(self.coarse_samples)
            .map_or(Duration::ZERO, |s| self.captured_at.saturating_sub(s.at))
    }

    /// How the samples are spaced, for people: "every 1 ms" or "every 1 ms for the last
    /// 20.0 s, the maximum of every 100 ms before".
    pub fn spacing(&self) -> String {
        let every = |d: Duration| match d.as_micros() {
            us if us >= 1_000_000 && us % 1_000_000 == 0 => format!("{} s", us / 1_000_000),
            us if us >= 1000 && us % 1000 == 0 => format!("{} ms", us / 1000),
            us => format!("{us} µs"),
        };
        match self.coarse_resolution {
            Some(coarse) if self.coarse_samples > 0 => format!(
                "every {} for the last {:.1} s, the maximum of every {} before",
                every(self.resolution),
                self.fine_span().as_secs_f64(),
                every(coarse)
            ),
            _ => format!("every {}", every(self.resolution)),
        }
    }

    /// The highest allocated bytes in the timeline.
    pub fn peak_allocated_bytes(&self) -> u64 {
        self.samples
            .iter()
            .map(|s| s.allocated_bytes)
            .max()
            .unwrap_or(0)
    }
}

/// Reads a `timeline.bin` written by the recorder.
pub fn read_timeline(path: &Path) -> Result<Timeline, RecorderError> {
    let bytes = std::fs::read(path).map_err(|source| RecorderError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let parse = |reason| RecorderError::Parse {
        path: path.to_path_buf(),
        reason,
    };
    let header = match bytes.get(..8) {
        Some(magic) if magic == MAGIC => HEADER,
        Some(magic) if magic == MAGIC_V1 => HEADER_V1,
        _ => return Err(parse("not a memwatch timeline")),
    };
    if bytes.len() < header {
        return Err(parse("not a memwatch timeline"));
    }
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
    let count = usize::try_from(word(16)).unwrap_or(usize::MAX);
    let (coarse_ns, coarse_samples) = if header == HEADER {
        (word(40), usize::try_from(word(48)).unwrap_or(usize::MAX))
    } else {
        (0, 0)
    };
    if coarse_samples > count {
        return Err(parse("timeline has more coarse samples than samples"));
    }
    let body = &bytes[header..];
    if count.checked_mul(SAMPLE) != Some(body.len()) {
        return Err(parse("timeline sample count does not match its size"));
    }
    let samples = body
        .chunks_exact(SAMPLE)
        .map(|s| {
            let at = u64::from_le_bytes(s[..8].try_into().unwrap_or([0; 8]));
            let allocated = u32::from_le_bytes(s[8..12].try_into().unwrap_or([0; 4]));
            let cgroup = u32::from_le_bytes(s[12..16].try_into().unwrap_or([0; 4]));
            TimelineSample {
                at: Duration::from_micros(at),
                allocated_bytes: u64::from(allocated) * 1024,
                cgroup_usage_bytes: (cgroup != u32::MAX).then(|| u64::from(cgroup) * 1024),
            }
        })
        .collect();
    Ok(Timeline {
        resolution: Duration::from_nanos(word(8)),
        coarse_resolution: Some(coarse_ns)
            .filter(|&ns| ns != 0)
            .map(Duration::from_nanos),
        coarse_samples,
        captured_at: Duration::from_micros(word(24)),
        captured_unix_ms: word(32),
        samples,
    })
}

const MAGIC: &[u8; 8] = b"MWTIMEL2";
const HEADER: usize = 56;
const MAGIC_V1: &[u8; 8] = b"MWTIMEL1";
const HEADER_V1: usize = 48;
const SAMPLE: usize = 16;

/// A sample as kept in memory: 16 bytes, like on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Packed {
    at_us: u64,
    allocated_kib: u32,
    cgroup_kib: u32,
}

/// `cgroup_kib` of a sample taken outside a cgroup.
const UNKNOWN: u32 = u32::MAX;

impl Packed {
    const EMPTY: Packed = Packed {
        at_us: 0,
        allocated_kib: 0,
        cgroup_kib: UNKNOWN,
    };

    /// The later time and the higher of each figure (a known cgroup usage beats an unknown).
    fn max(self, other: Packed) -> Packed {
        let cgroup_kib = match (self.cgroup_kib, other.cgroup_kib) {
            (UNKNOWN, c) | (c, UNKNOWN) => c,
            (a, b) => a.max(b),
        };
        Packed {
            at_us: self.at_us.max(other.at_us),
            allocated_kib: self.allocated_kib.max(other.allocated_kib),
            cgroup_kib,
        }
    }
}

/// A fixed-capacity ring of samples, oldest overwritten first.
#[derive(Debug)]
struct Tier {
    samples: Vec<Packed>,
    /// Index of the next write.
    next: usize,
    /// Samples held (≤ capacity).
    len: usize,
}

impl Tier {
    fn new(capacity: usize) -> Self {
        Self {
            samples: vec![Packed::EMPTY; capacity],
            next: 0,
            len: 0,
        }
    }

    fn push(&mut self, sample: Packed) {
        let capacity = self.samples.len();
        if capacity == 0 {
            return;
        }
        self.samples[self.next] = sample;
        self.next = (self.next + 1) % capacity;
        self.len = (self.len + 1).min(capacity);
    }

    /// Oldest first.
    fn iter(&self) -> impl Iterator<Item = Packed> + '_ {
        let capacity = self.samples.len();
        let oldest = (self.next + capacity - self.len) % capacity.max(1);
        (0..self.len).map(move |i| self.samples[(oldest + i) % capacity])
    }
}

/// The two-tier timeline. Allocated and touched once at start; pushing never allocates.
#[derive(Debug)]
pub(crate) struct Ring {
    fine: Tier,
    coarse: Tier,
    /// Fine samples per coarse entry (0: no coarse tier).
    fold: usize,
    /// The coarse entry being built, and how many samples it holds.
    pending: Packed,
    pending_len: usize,
    resolution_ns: u64,
}

impl Ring {
    /// A ring of `fine` samples at `resolution_ns`, preceded by `coarse` entries of `fold`
    /// samples each (no coarse tier when either is 0). Every page is touched now so the ring
    /// costs no page faults (nor cgroup charge surprises) later.
    pub(crate) fn new(fine: usize, coarse: usize, fold: usize, resolution_ns: u64) -> Self {
        let fold = if coarse == 0 { 0 } else { fold.max(1) };
        Self {
            fine: Tier::new(fine.max(1)),
            coarse: Tier::new(if fold == 0 { 0 } else { coarse }),
            fold,
            pending: Packed::EMPTY,
            pending_len: 0,
            resolution_ns,
        }
    }

    pub(crate) fn push(&mut self, at_us: u64, allocated: u64, cgroup: Option<u64>) {
        let kib = |b: u64| u32::try_from(b / 1024).unwrap_or(UNKNOWN - 1);
        let sample = Packed {
            at_us,
            allocated_kib: kib(allocated),
            cgroup_kib: cgroup.map_or(UNKNOWN, kib),
        };
        self.fine.push(sample);
        if self.fold == 0 {
            return;
        }
        self.pending = if self.pending_len == 0 {
            sample
        } else {
            self.pending.max(sample)
        };
        self.pending_len += 1;
        if self.pending_len == self.fold {
            self.coarse.push(self.pending);
            self.pending_len = 0;
        }
    }

    /// The sampling period of the fine tier.
    pub(crate) fn resolution_ns(&self) -> u64 {
        self.resolution_ns
    }

    /// The period of a coarse entry (0: no coarse tier).
    fn coarse_ns(&self) -> u64 {
        self.resolution_ns.saturating_mul(self.fold as u64)
    }

    /// The coarse entries a capture writes: those that end before the oldest fine sample.
    fn older(&self) -> impl Iterator<Item = Packed> + '_ {
        let fine_start = self.fine.iter().next().map_or(u64::MAX, |s| s.at_us);
        self.coarse.iter().filter(move |s| s.at_us < fine_start)
    }

    /// The samples a capture writes, oldest first.
    fn samples(&self) -> impl Iterator<Item = Packed> + '_ {
        self.older().chain(self.fine.iter())
    }

    /// Samples a capture writes now.
    pub(crate) fn len(&self) -> usize {
        self.older().count() + self.fine.len
    }

    /// Writes the file format through `write`, encoding via `scratch` (its capacity is the
    /// chunk size; it is not grown).
    pub(crate) fn write_file(
        &self,
        scratch: &mut Vec<u8>,
        captured_at_us: u64,
        captured_unix_ms: u64,
        mut write: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<u64> {
        let chunk = (scratch.capacity() / SAMPLE).max(1) * SAMPLE;
        scratch.clear();
        scratch.extend_from_slice(MAGIC);
        for word in [
            self.resolution_ns,
            self.len() as u64,
            captured_at_us,
            captured_unix_ms,
            self.coarse_ns(),
            self.older().count() as u64,
        ] {
            scratch.extend_from_slice(&word.to_le_bytes());
        }
        let mut written = 0u64;
        for s in self.samples() {
            if scratch.len() + SAMPLE > chunk {
                write(scratch)?;
                written += scratch.len() as u64;
                scratch.clear();
            }
            scratch.extend_from_slice(&s.at_us.to_le_bytes());
            scratch.extend_from_slice(&s.allocated_kib.to_le_bytes());
            scratch.extend_from_slice(&s.cgroup_kib.to_le_bytes());
        }
        write(scratch)?;
        written += scratch.len() as u64;
        scratch.clear();
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn ring_keeps_the_newest_samples_and_round_trips_through_the_file() {
        let mut ring = Ring::new(4, 0, 0, 1_000_000);
        for i in 0..6u64 {
            ring.push(i * 1000, i * 1024 * 1024, (i % 2 == 0).then_some(i * 2048));
        }
        assert_eq!(ring.len(), 4);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("timeline.bin");
        let mut file = Vec::new();
        // A small scratch (header + one sample) forces several chunks.
        let mut scratch = Vec::with_capacity(64);
        let written = ring
            .write_file(&mut scratch, 9000, 1_700_000_000_000, |b| {
                file.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
        assert_eq!(written as usize, file.len());
        assert_eq!(scratch.capacity(), 64, "scratch must not grow");
        std::fs::write(&path, &file).unwrap();

        let t = read_timeline(&path).unwrap();
        assert_eq!(t.resolution, Duration::from_millis(1));
        assert_eq!(t.coarse_resolution, None);
        assert_eq!(t.samples.len(), 4);
        assert_eq!(t.samples[0].at, Duration::from_millis(2));
        assert_eq!(t.samples[0].allocated_bytes, 2 << 20);
        assert_eq!(t.samples[0].cgroup_usage_bytes, Some(4096));
        assert_eq!(t.samples[1].cgroup_usage_bytes, None);
        assert_eq!(t.peak_allocated_bytes(), 5 << 20);
        assert_eq!(t.unix_ms(&t.samples[3]), 1_700_000_000_000 - 4);

        std::fs::write(&path, &file[..file.len() - 3]).unwrap();
        assert!(read_timeline(&path).is_err());
    }

    fn write(ring: &Ring) -> Timeline {
        let mut file = Vec::new();
        ring.write_file(&mut Vec::with_capacity(4096), 0, 0, |b| {
            file.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("timeline.bin");
        std::fs::write(&path, &file).unwrap();
        read_timeline(&path).unwrap()
    }

    /// 1000 samples, one per ms: a 3 ms spike of 64 MiB at 250 ms, 1 MiB otherwise; the
    /// cgroup unknown in the first 150 ms (a sample outside a cgroup must not hide a known
    /// usage).
    fn fill(ring: &mut Ring) {
        for ms in 0..1000u64 {
            let allocated = if (250..253).contains(&ms) {
                64 << 20
            } else {
                1 << 20
            };
            let cgroup = (ms >= 150).then_some((2 << 20) + ms * 1024);
            ring.push(ms * 1000, allocated, cgroup);
        }
    }

    #[test]
    fn older_samples_fold_into_maxima_and_a_spike_keeps_its_height() {
        // 1 ms samples: 10 fine, then 100 ms entries (100 samples each), 5 of them.
        let mut ring = Ring::new(10, 5, 100, 1_000_000);
        fill(&mut ring);
        let t = write(&ring);
        assert_eq!(t.coarse_resolution, Some(Duration::from_millis(100)));
        assert_eq!(t.coarse_samples, 4);
        assert_eq!(
            t.spacing(),
            "every 1 ms for the last 0.0 s, the maximum of every 100 ms before"
        );
        let at_ms: Vec<u64> = t.samples.iter().map(|s| s.at.as_millis() as u64).collect();
        // The coarse tier holds the last 5 entries (ending at 599 .. 999 ms); the one ending at
        // 999 overlaps the fine tier (990..999) and is left out.
        assert_eq!(&at_ms[..4], [599, 699, 799, 899]);
        assert_eq!(at_ms[4..], (990..1000).collect::<Vec<_>>());
        assert_eq!(t.samples.len(), ring.len());

        // A coarse tier long enough to hold the spike.
        let mut early = Ring::new(10, 50, 100, 1_000_000);
        fill(&mut early);
        let t = write(&early);
        let entry = |ms: u64| {
            *t.samples
                .iter()
                .find(|s| s.at == Duration::from_millis(ms))
                .unwrap()
        };
        assert_eq!(
            entry(299).allocated_bytes,
            64 << 20,
            "the spike's height survives"
        );
        assert_eq!(entry(399).allocated_bytes, 1 << 20);
        assert_eq!(entry(99).cgroup_usage_bytes, None);
        assert_eq!(entry(199).cgroup_usage_bytes, Some((2 << 20) + 199 * 1024));
        assert_eq!(t.peak_allocated_bytes(), 64 << 20);
    }

    #[test]
    fn version_1_files_are_still_read() {
        let mut file = b"MWTIMEL1".to_vec();
        for word in [1_000_000u64, 2, 5000, 1_700_000_000_000, 0] {
            file.extend_from_slice(&word.to_le_bytes());
        }
        for (at, kib) in [(3000u64, 10u32), (4000, 20)] {
            file.extend_from_slice(&at.to_le_bytes());
            file.extend_from_slice(&kib.to_le_bytes());
            file.extend_from_slice(&u32::MAX.to_le_bytes());
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("timeline.bin");
        std::fs::write(&path, &file).unwrap();
        let t = read_timeline(&path).unwrap();
        assert_eq!((t.coarse_resolution, t.coarse_samples), (None, 0));
        assert_eq!(t.samples.len(), 2);
        assert_eq!(t.samples[1].allocated_bytes, 20 * 1024);
        assert_eq!(t.spacing(), "every 1 ms");
        assert_eq!(t.fine_span(), Duration::from_millis(2));
    }
}

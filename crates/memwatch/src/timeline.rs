//! The high-resolution timeline: a pre-allocated ring of (time, allocated, cgroup usage)
//! samples, its binary file format, and a reader for that format.
//!
//! File format (`timeline.bin`, little-endian): a 48-byte header — magic `MWTIMEL1`,
//! resolution (ns), sample count, the capture moment on the samples' clock (µs since the
//! recorder started), the same moment as Unix ms, and a reserved word — then 16 bytes per
//! sample: time (µs since the recorder started, u64), allocated bytes in KiB (u32), cgroup
//! usage in KiB (u32, `u32::MAX` when unknown). Oldest sample first.

use std::path::Path;
use std::time::Duration;

use crate::recorder::RecorderError;

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
    /// The recorder's sampling period.
    pub resolution: Duration,
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
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(parse("not a memwatch timeline"));
    }
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
    let count = usize::try_from(word(16)).unwrap_or(usize::MAX);
    let body = &bytes[HEADER..];
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
        captured_at: Duration::from_micros(word(24)),
        captured_unix_ms: word(32),
        samples,
    })
}

const MAGIC: &[u8; 8] = b"MWTIMEL1";
const HEADER: usize = 48;
const SAMPLE: usize = 16;

/// A sample as kept in memory: 16 bytes, like on disk.
#[derive(Debug, Clone, Copy, Default)]
struct Packed {
    at_us: u64,
    allocated_kib: u32,
    cgroup_kib: u32,
}

/// The ring buffer. Allocated and touched once at start; pushing never allocates.
#[derive(Debug)]
pub(crate) struct Ring {
    samples: Vec<Packed>,
    /// Index of the next write.
    next: usize,
    /// Samples held (≤ capacity).
    len: usize,
    resolution_ns: u64,
}

impl Ring {
    /// A ring of `capacity` samples (at least 1), every page touched now so the ring costs no
    /// page faults (nor cgroup charge surprises) later.
    pub(crate) fn new(capacity: usize, resolution_ns: u64) -> Self {
        let samples = vec![
            Packed {
                at_us: 0,
                allocated_kib: 0,
                cgroup_kib: u32::MAX,
            };
            capacity.max(1)
        ];
        Self {
            samples,
            next: 0,
            len: 0,
            resolution_ns,
        }
    }

    pub(crate) fn push(&mut self, at_us: u64, allocated: u64, cgroup: Option<u64>) {
        let kib = |b: u64| u32::try_from(b / 1024).unwrap_or(u32::MAX - 1);
        let capacity = self.samples.len();
        self.samples[self.next] = Packed {
            at_us,
            allocated_kib: kib(allocated),
            cgroup_kib: cgroup.map_or(u32::MAX, kib),
        };
        self.next = (self.next + 1) % capacity;
        self.len = (self.len + 1).min(capacity);
    }

    /// The sampling period the ring was sized for.
    pub(crate) fn resolution_ns(&self) -> u64 {
        self.resolution_ns
    }

    /// Samples held now.
    pub(crate) fn len(&self) -> usize {
        self.len
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
            self.len as u64,
            captured_at_us,
            captured_unix_ms,
            0,
        ] {
            scratch.extend_from_slice(&word.to_le_bytes());
        }
        let capacity = self.samples.len();
        let oldest = (self.next + capacity - self.len) % capacity;
        let mut written = 0u64;
        for i in 0..self.len {
            if scratch.len() + SAMPLE > chunk {
                write(scratch)?;
                written += scratch.len() as u64;
                scratch.clear();
            }
            let s = self.samples[(oldest + i) % capacity];
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
        let mut ring = Ring::new(4, 1_000_000);
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
}

//! The raw disk baselines: one writer appending chunks to a file with `fdatasync`, no gateway:
//! one sync per chunk (the slowest durable append), and large batches per sync (the disk's
//! durable sequential write rate, the ceiling the gateway is measured against).
//!
//! This is what durable appends cost on the data directory's filesystem, so the gateway's
//! numbers can be read as a share of the disk rather than in a vacuum. The large-batch run is
//! made both through the page cache and with direct writes (`O_DIRECT`, as the gateway's log
//! writes); the faster is the ceiling.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::procmem::proc_stat;
use crate::stats::{Histogram, LatencySummary};

/// One raw run's result.
#[derive(Debug, Clone, Serialize)]
pub struct RawResult {
    /// What was measured, e.g. `raw fdatasync` or `raw batched x8`.
    pub label: String,
    pub chunk_bytes: u64,
    /// Chunks written per `fdatasync`.
    pub chunks_per_sync: u32,
    pub bytes: u64,
    pub syncs: u64,
    pub elapsed_s: f64,
    pub mib_per_s: f64,
    /// Latency of one batch: its writes plus the `fdatasync` that makes them durable.
    pub latency: LatencySummary,
    /// CPU time (user + system) of this process per GiB written: the floor of a write +
    /// fdatasync loop, to read the gateway's cost against.
    pub cpu_s_per_gib: Option<f64>,
}

/// How a raw run's writes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    /// Through the page cache, its synced pages given back as the gateway's log did.
    Buffered,
    /// `O_DIRECT` from an aligned buffer: the chunk size must be a multiple of 4 KiB.
    Direct,
}

/// Appends `chunks_per_sync` chunks then `fdatasync`s, in a loop, for `duration`, to a fresh
/// file in `dir` that is removed afterwards. Blocking: run it off the async workers.
pub fn run_raw(
    dir: &Path,
    chunk_bytes: usize,
    chunks_per_sync: u32,
    duration: Duration,
    writes: Writes,
) -> anyhow::Result<RawResult> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.join("raw-baseline.bin");
    let flags = match writes {
        Writes::Buffered => 0,
        Writes::Direct => libc::O_DIRECT,
    };
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .custom_flags(flags)
        .open(&path)
        .with_context(|| format!("creating {} ({writes:?} writes)", path.display()))?;
    let before = proc_stat(std::process::id()).ok();
    let measured = measure(file, chunk_bytes, chunks_per_sync.max(1), duration)
        .with_context(|| format!("appending to {} ({writes:?} writes)", path.display()));
    let after = proc_stat(std::process::id()).ok();
    let _ = std::fs::remove_file(&path);
    let (bytes, syncs, elapsed, latency) = measured?;
    let per_sync = size_label(chunk_bytes as u64 * u64::from(chunks_per_sync));
    // a direct run is always a disk limit; a buffered one of one chunk per sync the per-chunk
    // reference
    let label = match writes {
        Writes::Buffered if chunks_per_sync <= 1 => String::from("raw fdatasync per chunk"),
        Writes::Buffered => format!("disk limit: fdatasync per {per_sync}"),
        Writes::Direct => format!(
            "disk limit, direct {} writes: fdatasync per {per_sync}",
            size_label(chunk_bytes as u64)
        ),
    };
    let gib = bytes as f64 / f64::from(1u32 << 30);
    let cpu_s_per_gib = before
        .zip(after)
        .filter(|_| gib > 0.0)
        .map(|(a, b)| a.until(b).cpu.as_secs_f64() / gib);
    Ok(RawResult {
        label,
        chunk_bytes: chunk_bytes as u64,
        chunks_per_sync: chunks_per_sync.max(1),
        bytes,
        syncs,
        elapsed_s: elapsed.as_secs_f64(),
        mib_per_s: mib_per_s(bytes, elapsed),
        latency: latency.summary(),
        cpu_s_per_gib,
    })
}

/// `8 MiB`, `64 KiB`, `1000 B`: whole binary units where they divide.
pub fn size_label(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// Throughput in MiB/s; zero for an empty interval.
pub fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    bytes as f64 / (1024.0 * 1024.0) / secs
}

fn measure(
    mut file: File,
    chunk_bytes: usize,
    chunks_per_sync: u32,
    duration: Duration,
) -> std::io::Result<(u64, u64, Duration, Histogram)> {
    // Not zeros: some filesystems and devices special-case them. Aligned for direct writes.
    let buf: Vec<u8> = (0..chunk_bytes + 4096)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let start = buf.as_ptr().align_offset(4096);
    let chunk = &buf[start..start + chunk_bytes];
    let mut latency = Histogram::new();
    let (mut bytes, mut syncs) = (0u64, 0u64);
    let start = Instant::now();
    let mut released = 0;
    while start.elapsed() < duration {
        let began = Instant::now();
        for _ in 0..chunks_per_sync {
            file.write_all(chunk)?;
        }
        file.sync_data()?;
        latency.record(began.elapsed());
        bytes += chunk_bytes as u64 * u64::from(chunks_per_sync);
        syncs += 1;
        released = release_behind(&file, released, bytes);
    }
    Ok((bytes, syncs, start.elapsed(), latency))
}

/// Synced bytes the page cache keeps at the file's end, as the gateway's log does
/// (`cached_tail_bytes`): older pages are given back, so the writes reuse warm pages. On the
/// reference VM a file that only grows the page cache costs 2.4x the CPU per GiB, which would
/// make the ceiling lower than what the gateway reaches.
const CACHED_TAIL: u64 = 32 << 20;
/// Pages are given back this many bytes at a time at least.
const RELEASE_STEP: u64 = 4 << 20;

/// `posix_fadvise(DONTNEED)` of what lies more than [`CACHED_TAIL`] behind `end` (synced);
/// returns the new released position.
fn release_behind(file: &File, released: u64, end: u64) -> u64 {
    use std::os::fd::AsRawFd as _;
    let upto = end.saturating_sub(CACHED_TAIL);
    if upto < released + RELEASE_STEP {
        return released;
    }
    let (Ok(from), Ok(len)) = (
        libc::off_t::try_from(released),
        libc::off_t::try_from(upto - released),
    ) else {
        return released;
    };
    // SAFETY: a plain syscall on an open descriptor; no memory is passed. Advice: a failure
    // only leaves the pages cached.
    let _ = unsafe { libc::posix_fadvise(file.as_raw_fd(), from, len, libc::POSIX_FADV_DONTNEED) };
    upto
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_run_writes_syncs_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap_or_else(|err| panic!("{err}"));
        let run = |writes| {
            run_raw(dir.path(), 4096, 2, Duration::from_millis(100), writes)
                .unwrap_or_else(|err| panic!("{err:#}"))
        };
        let result = run(Writes::Buffered);
        assert_eq!(result.label, "disk limit: fdatasync per 8 KiB");
        let direct = run(Writes::Direct);
        assert_eq!(
            direct.label,
            "disk limit, direct 4 KiB writes: fdatasync per 8 KiB"
        );
        assert!(direct.syncs > 0 && direct.bytes == direct.syncs * 8192);
        assert!(result.cpu_s_per_gib.is_some());
        assert!(result.syncs > 0);
        assert_eq!(result.bytes, result.syncs * 8192);
        assert_eq!(result.latency.count, result.syncs);
        assert!(result.mib_per_s > 0.0);
        assert!(!dir.path().join("raw-baseline.bin").exists());
    }

    #[test]
    fn throughput_in_mib() {
        assert_eq!(mib_per_s(3 * 1024 * 1024, Duration::from_secs(2)), 1.5);
        assert_eq!(mib_per_s(1, Duration::ZERO), 0.0);
        assert_eq!(size_label(8 << 20), "8 MiB");
        assert_eq!(size_label(65536), "64 KiB");
        assert_eq!(size_label(1000), "1000 B");
    }
}

//! Memory of another process read from /proc: resident set, its peak, a peak reset, a sampler.
//!
//! Everything here is blocking file I/O; async callers use `spawn_blocking`, and the sampler
//! runs on its own thread.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// Resident memory of a process, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemStatus {
    /// `VmRSS`: resident now.
    pub rss_bytes: u64,
    /// `VmHWM`: the peak resident since start or since the last `reset_peak`.
    pub hwm_bytes: u64,
}

pub fn read_status(pid: u32) -> io::Result<MemStatus> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no VmRSS/VmHWM in /proc/{pid}/status"),
        )
    })
}

/// Resets the peak resident size (`VmHWM`) to the current one (Linux ≥ 4.0, own processes).
pub fn reset_peak(pid: u32) -> io::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
}

/// Reads `VmRSS` and `VmHWM` (kB) out of a `/proc/PID/status` text.
pub fn parse_status(text: &str) -> Option<MemStatus> {
    let field = |name: &str| {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    };
    Some(MemStatus {
        rss_bytes: field("VmRSS:")?,
        hwm_bytes: field("VmHWM:")?,
    })
}

/// CPU time and page faults of a process so far, from `/proc/PID/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcStat {
    /// User + system time of all its threads.
    pub cpu: Duration,
    /// Minor page faults of all its threads (a page mapped without I/O: fresh heap pages,
    /// page-cache pages touched the first time).
    pub minor_faults: u64,
}

impl ProcStat {
    /// What happened between `self` and a later reading.
    pub fn until(self, later: ProcStat) -> ProcStat {
        ProcStat {
            cpu: later.cpu.saturating_sub(self.cpu),
            minor_faults: later.minor_faults.saturating_sub(self.minor_faults),
        }
    }
}

/// CPU time and minor faults of `pid`, in clock ticks of 10 ms for the CPU (Linux's `USER_HZ`
/// is 100 on every architecture it exports it for).
pub fn proc_stat(pid: u32) -> io::Result<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no minflt/utime/stime in /proc/{pid}/stat"),
        )
    })
}

/// CPU time (user + system, all threads) a process has used.
pub fn cpu_time(pid: u32) -> io::Result<Duration> {
    proc_stat(pid).map(|s| s.cpu)
}

/// minflt, utime and stime out of a `/proc/PID/stat` line (fields 10, 14 and 15; the command
/// name in parentheses may contain spaces, so fields are counted after its closing
/// parenthesis, where field 3 comes first).
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().take(13).collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    Some(ProcStat {
        cpu: Duration::from_millis((field(14)? + field(15)?) * 10),
        minor_faults: field(10)?,
    })
}

/// Samples a process's `VmRSS` on its own thread and keeps the largest value seen.
///
/// Complements `VmHWM`: the kernel's peak is exact but cannot tell when; the sampler shows what
/// a fine-grained scraper would have seen.
pub struct RssSampler {
    /// Set to end the sampling thread.
    stop: Arc<AtomicBool>,
    /// Largest `VmRSS` seen, bytes.
    max: Arc<AtomicU64>,
    /// Successful reads, to tell "no data" from "zero".
    samples: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

/// What the sampler saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampledRss {
    pub max_rss_bytes: u64,
    pub samples: u64,
}

impl RssSampler {
    pub fn start(pid: u32, interval: Duration) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicU64::new(0));
        let samples = Arc::new(AtomicU64::new(0));
        let thread = std::thread::Builder::new()
            .name("rss-sampler".into())
            .spawn({
                let (stop, max, samples) = (stop.clone(), max.clone(), samples.clone());
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        // A failed read means the process is gone; the scenario reports that.
                        if let Ok(status) = read_status(pid) {
                            max.fetch_max(status.rss_bytes, Ordering::Relaxed);
                            samples.fetch_add(1, Ordering::Relaxed);
                        }
                        std::thread::sleep(interval);
                    }
                }
            })?;
        Ok(Self {
            stop,
            max,
            samples,
            thread: Some(thread),
        })
    }

    /// Stops the thread (blocks for at most one interval) and returns what it saw.
    pub fn finish(mut self) -> SampledRss {
        self.halt();
        SampledRss {
            max_rss_bytes: self.max.load(Ordering::Relaxed),
            samples: self.samples.load(Ordering::Relaxed),
        }
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.halt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_text() {
        let text = "Name:\tx\nVmPeak:\t  999 kB\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\n";
        let status = parse_status(text);
        assert_eq!(
            status,
            Some(MemStatus {
                rss_bytes: 1024 * 1024,
                hwm_bytes: 2048 * 1024
            })
        );
        assert_eq!(parse_status("Name:\tkthread\n"), None);
    }

    #[test]
    fn parses_cpu_and_faults_after_a_name_with_spaces() {
        let text = "42 (tokio runtime) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 8 0\n";
        let stat = parse_stat(text);
        assert_eq!(stat.map(|s| s.cpu), Some(Duration::from_millis(3250)));
        assert_eq!(stat.map(|s| s.minor_faults), Some(100));
        assert_eq!(parse_stat("42 (x) S 1"), None);
        let own = cpu_time(std::process::id()).unwrap_or_else(|err| panic!("{err}"));
        assert!(own < Duration::from_secs(3600));
    }

    #[test]
    fn reads_resets_and_samples_this_process() {
        let pid = std::process::id();
        let before = read_status(pid).unwrap_or_else(|err| panic!("{err}"));
        assert!(before.rss_bytes > 0 && before.hwm_bytes >= before.rss_bytes);
        reset_peak(pid).unwrap_or_else(|err| panic!("{err}"));
        let sampler =
            RssSampler::start(pid, Duration::from_millis(5)).unwrap_or_else(|err| panic!("{err}"));
        std::thread::sleep(Duration::from_millis(30));
        let seen = sampler.finish();
        assert!(seen.samples >= 2, "{seen:?}");
        assert!(seen.max_rss_bytes > 0);
    }
}

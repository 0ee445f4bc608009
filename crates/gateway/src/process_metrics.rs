//! The standard `process_*` metrics every Prometheus client library exports (CPU seconds,
//! resident and virtual memory, open and maximum file descriptors, start time), read from
//! `/proc/self`, and `engine_gateway_build_info{version,commit}`.
//!
//! Read on each scrape, on a blocking thread (the caller's job): a handful of small `/proc`
//! reads, nothing kept between scrapes.

use std::fmt::Write as _;
use std::path::Path;

use crate::metrics::write_gauge;

/// The commit the binary was built from (`build.rs`), `unknown` outside a git checkout.
pub const COMMIT: &str = env!("ENGINE_GATEWAY_COMMIT");

/// What `/proc/self` tells about this process, in the units Prometheus expects.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time, seconds.
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    /// Seconds since the Unix epoch.
    pub start_time_seconds: f64,
    pub open_fds: u64,
    /// The soft `RLIMIT_NOFILE`.
    pub max_fds: u64,
    pub threads: u64,
}

impl ProcessStats {
    /// This process, now; `None` where `/proc` is not mounted.
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|text| boot_time(&text));
        let mut stats = parse_stat(&stat, clock_ticks(), page_size(), boot_time)?;
        stats.open_fds = count_entries(Path::new("/proc/self/fd"));
        stats.max_fds = max_fds();
        Some(stats)
    }
}

/// Appends the `process_*` series and the build info.
pub fn write(out: &mut String) {
    if let Some(stats) = ProcessStats::read() {
        let _ = writeln!(
            out,
            "# HELP process_cpu_seconds_total user and system CPU time spent, in seconds\n\
             # TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {}",
            stats.cpu_seconds
        );
        write_gauge(
            out,
            "process_resident_memory_bytes",
            "resident memory size in bytes",
            stats.resident_bytes,
        );
        write_gauge(
            out,
            "process_virtual_memory_bytes",
            "virtual memory size in bytes",
            stats.virtual_bytes,
        );
        write_gauge(
            out,
            "process_start_time_seconds",
            "start time of the process since the unix epoch, in seconds",
            stats.start_time_seconds,
        );
        write_gauge(
            out,
            "process_open_fds",
            "open file descriptors",
            stats.open_fds,
        );
        write_gauge(
            out,
            "process_max_fds",
            "maximum number of open file descriptors",
            stats.max_fds,
        );
        write_gauge(out, "process_threads", "OS threads", stats.threads);
    }
    let _ = writeln!(
        out,
        "# HELP engine_gateway_build_info the version and commit the binary was built from\n\
         # TYPE engine_gateway_build_info gauge\n\
         engine_gateway_build_info{{version=\"{}\",commit=\"{COMMIT}\"}} 1",
        env!("CARGO_PKG_VERSION"),
    );
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may hold spaces
/// and parentheses itself, so fields are counted from the last `)`.
fn parse_stat(
    text: &str,
    ticks_per_second: f64,
    page_size: u64,
    boot_time: Option<u64>,
) -> Option<ProcessStats> {
    let after_name = &text[text.rfind(')')? + 1..];
    // Field 3 (state) is the first one after the name; `nth(k)` is field k + 3.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    let utime = field(14)?;
    let stime = field(15)?;
    let threads = field(20)?;
    let start_ticks = field(22)?;
    let vsize = field(23)?;
    let rss_pages = field(24)?;
    Some(ProcessStats {
        cpu_seconds: (utime + stime) as f64 / ticks_per_second,
        resident_bytes: rss_pages * page_size,
        virtual_bytes: vsize,
        start_time_seconds: boot_time.map_or(0.0, |boot| {
            boot as f64 + start_ticks as f64 / ticks_per_second
        }),
        open_fds: 0,
        max_fds: 0,
        threads,
    })
}

/// `btime` of `/proc/stat`: when the machine booted, seconds since the epoch.
fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

fn count_entries(dir: &Path) -> u64 {
    // The directory handle read_dir holds is one of the entries; it is not the caller's.
    std::fs::read_dir(dir).map_or(0, |entries| entries.count().saturating_sub(1) as u64)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as u64 } else { 4096 }
}

fn max_fds() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_a_tricky_command_name() {
        // Fields 3..=24 of a real /proc/self/stat line, with a name holding ") (".
        let line = "4242 (en) (gine gw) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 150 0 0 20 0 \
                    7 0 5000 123456789 300 18446744073709551615";
        let stats = parse_stat(line, 100.0, 4096, Some(1_700_000_000)).unwrap();
        assert_eq!(stats.cpu_seconds, 4.0);
        assert_eq!(stats.threads, 7);
        assert_eq!(stats.virtual_bytes, 123_456_789);
        assert_eq!(stats.resident_bytes, 300 * 4096);
        assert_eq!(stats.start_time_seconds, 1_700_000_050.0);
    }

    #[test]
    fn this_process() {
        let stats = ProcessStats::read().unwrap();
        assert!(stats.resident_bytes > 0);
        assert!(stats.open_fds >= 3, "{stats:?}");
        assert!(stats.max_fds >= stats.open_fds);
        assert!(stats.start_time_seconds > 1_600_000_000.0);
        assert!(stats.threads >= 1);
    }

    #[test]
    fn boot_time_line() {
        assert_eq!(
            boot_time("cpu 1 2 3\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
        assert_eq!(boot_time("cpu 1 2 3\n"), None);
    }
}

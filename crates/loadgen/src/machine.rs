//! Where a benchmark ran: CPU, memory, kernel, the data directory's filesystem, time, commit.
//!
//! Read from /proc and `git`; every field is best effort, a missing one is `None`, never an
//! error, since a result without it is still a result.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct MachineInfo {
    /// UTC, RFC 3339 to the second.
    pub date: String,
    pub nproc: usize,
    pub cpu_model: Option<String>,
    pub mem_total_mib: Option<u64>,
    pub kernel: Option<String>,
    /// The filesystem holding the data directory (and the raw baseline file).
    pub data_fs: Option<MountInfo>,
    /// `git describe --always --dirty` of the current directory's repository.
    pub git_commit: Option<String>,
}

/// The mount a path lives on, from `/proc/mounts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MountInfo {
    pub device: String,
    pub mount_point: String,
    pub fs_type: String,
}

/// Gathers machine facts. Blocking (files, a `git` child): call it off the async workers.
pub fn gather(data_dir: &Path) -> MachineInfo {
    let cpu_model = read("/proc/cpuinfo").and_then(|text| {
        let line = text.lines().find(|l| l.starts_with("model name"))?;
        Some(line.split_once(':')?.1.trim().to_owned())
    });
    let mem_total_mib = read("/proc/meminfo").and_then(|text| {
        let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kb: u64 = line["MemTotal:".len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb / 1024)
    });
    let data_fs = std::fs::canonicalize(data_dir)
        .ok()
        .and_then(|dir| mount_of(&read("/proc/mounts")?, &dir));
    MachineInfo {
        date: utc_timestamp(SystemTime::now()).0,
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model,
        mem_total_mib,
        kernel: read("/proc/sys/kernel/osrelease").map(|k| k.trim().to_owned()),
        data_fs,
        git_commit: command_output("git", &["describe", "--always", "--dirty", "--abbrev=12"]),
    }
}

/// The first line of a command's stdout when it succeeds.
pub fn command_output(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Option<String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let first = text.lines().next()?.trim();
    (output.status.success() && !first.is_empty()).then(|| first.to_owned())
}

/// The longest mount point in a `/proc/mounts` text that contains `path` (canonical).
pub fn mount_of(mounts: &str, path: &Path) -> Option<MountInfo> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (device, mount_point, fs_type) = (fields.next()?, fields.next()?, fields.next()?);
            // /proc/mounts escapes spaces and the like as octal.
            let mount_point = mount_point.replace("\\040", " ");
            path.starts_with(&mount_point).then(|| MountInfo {
                device: device.to_owned(),
                mount_point,
                fs_type: fs_type.to_owned(),
            })
        })
        .max_by_key(|m| PathBuf::from(&m.mount_point).components().count())
}

/// `(RFC 3339 "2025-01-31T08:05:09Z", file-name friendly "20250131-080509")` in UTC.
pub fn utc_timestamp(time: SystemTime) -> (String, String) {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    let (h, m, s) = (rest / 3600, rest / 60 % 60, rest % 60);
    (
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z"),
        format!("{year:04}{month:02}{day:02}-{h:02}{m:02}{s:02}"),
    )
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        let at = |secs| utc_timestamp(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0).0, "1970-01-01T00:00:00Z");
        // 2024-02-29 12:34:56 UTC, a leap day.
        assert_eq!(
            at(1_709_210_096),
            ("2024-02-29T12:34:56Z".into(), "20240229-123456".into())
        );
        assert_eq!(at(1_735_689_599).0, "2024-12-31T23:59:59Z");
    }

    #[test]
    fn picks_the_longest_matching_mount() {
        let mounts = "/dev/vda / ext4 rw 0 0\ntmpfs /tmp tmpfs rw 0 0\n\
                      /dev/vdb /tmpdata xfs rw 0 0\n/dev/vdc /mnt/my\\040disk btrfs rw 0 0\n";
        let fs = |p: &str| mount_of(mounts, Path::new(p)).map(|m| m.fs_type);
        assert_eq!(fs("/tmp/x/y").as_deref(), Some("tmpfs"));
        assert_eq!(fs("/tmpdata/a").as_deref(), Some("xfs"));
        assert_eq!(fs("/home/a").as_deref(), Some("ext4"));
        assert_eq!(fs("/mnt/my disk/z").as_deref(), Some("btrfs"));
    }

    #[test]
    fn gathers_this_machine() {
        let info = gather(Path::new("/"));
        assert!(info.nproc >= 1);
        assert!(info.kernel.is_some());
        assert_eq!(info.data_fs.map(|m| m.mount_point).as_deref(), Some("/"));
    }
}

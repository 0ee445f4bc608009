//! The process's memory cgroup (v1 or v2): usage, limit, peak and OOM kills.
//!
//! The cgroup is found through `/proc/self/cgroup` and `/proc/self/mountinfo`. Every function
//! takes a filesystem root so tests can point it at fixture trees; production uses `/`.
//! Missing files and garbage give `None` (or a typed error), never a panic.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::Error;

/// Which cgroup interface the figures came from: the files and their meaning differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// Memory figures of the process's cgroup. `None` fields could not be read (older kernels lack
/// some files) or, for the limit, mean "unlimited".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMemory {
    pub version: CgroupVersion,
    /// Directory the figures were read from, for the startup log.
    pub path: PathBuf,
    /// v2 `memory.current`, v1 `memory.usage_in_bytes`; includes the page cache.
    pub usage_bytes: Option<u64>,
    /// The effective limit: the smallest of this cgroup's and its ancestors' (v2 `memory.max`,
    /// v1 `memory.limit_in_bytes` and `hierarchical_memory_limit`). `None` when unlimited.
    pub limit_bytes: Option<u64>,
    /// v2 `memory.peak` (kernel ≥ 5.19), v1 `memory.max_usage_in_bytes`: highest usage ever.
    pub peak_bytes: Option<u64>,
    /// Inactive file cache (`memory.stat`), which the kernel reclaims before OOM-killing; usage
    /// minus this is the working set that orchestrators compare with the limit.
    pub inactive_file_bytes: Option<u64>,
    /// OOM kills in this cgroup (`oom_kill` in v2 `memory.events`, v1 `memory.oom_control`):
    /// a count above zero at start means a previous instance was killed.
    pub oom_kills: Option<u64>,
}

impl CgroupMemory {
    /// Usage minus inactive file cache, as kubelet computes it: the figure that approaches the
    /// limit before an OOM kill.
    pub fn working_set_bytes(&self) -> Option<u64> {
        let usage = self.usage_bytes?;
        Some(usage.saturating_sub(self.inactive_file_bytes.unwrap_or(0)))
    }
}

/// The memory cgroup of this process, read from the real `/proc` and `/sys`.
pub fn cgroup_memory() -> Result<CgroupMemory, Error> {
    cgroup_memory_at(Path::new("/"))
}

/// The memory cgroup of this process, with every path below `root` (a fixture tree in tests).
/// A v1 memory controller wins over v2 (hybrid hierarchies mount v2 without memory).
pub fn cgroup_memory_at(root: &Path) -> Result<CgroupMemory, Error> {
    let cgroup_file = root.join("proc/self/cgroup");
    let cgroups = read_small(&cgroup_file).ok_or_else(|| Error::Io {
        path: cgroup_file.clone(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })?;
    let mountinfo = read_small(&root.join("proc/self/mountinfo")).unwrap_or_default();
    let mounts: Vec<Mount> = mountinfo.lines().filter_map(parse_mount).collect();

    for (version, cgroup_path) in cgroup_paths(&cgroups) {
        let mount = mounts.iter().find(|m| match version {
            CgroupVersion::V1 => {
                m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == "memory")
            }
            CgroupVersion::V2 => m.fstype == "cgroup2",
        });
        let Some(mount) = mount else { continue };
        let (dir, top) = resolve(root, mount, cgroup_path);
        let figures = match version {
            CgroupVersion::V1 => read_v1(&dir),
            CgroupVersion::V2 => read_v2(&dir, &top),
        };
        if figures.usage_bytes.is_some() {
            return Ok(figures);
        }
    }
    Err(Error::NoCgroup)
}

/// The memory limit to plan against: the configured value if any, capped by the cgroup limit
/// (a configured value above the container's limit would let the OOM killer act first), else
/// the cgroup limit. `None` when neither exists.
pub fn memory_limit(config_override: Option<u64>) -> Option<u64> {
    let cgroup = cgroup_memory().ok().and_then(|c| c.limit_bytes);
    match (config_override, cgroup) {
        (Some(configured), Some(cgroup)) => Some(configured.min(cgroup)),
        (configured, cgroup) => configured.or(cgroup),
    }
}

/// v1 "no limit" is i64::MAX rounded down to a page (9223372036854771712); anything this large
/// is no real limit.
const UNLIMITED_V1: u64 = 1 << 62;

/// Largest file read: cgroup and proc files here are a few KiB; garbage must not make us
/// allocate without bound.
const MAX_FILE_BYTES: u64 = 256 * 1024;

/// One line of `/proc/self/mountinfo`, the fields we need.
struct Mount {
    /// Path inside the cgroup hierarchy that is mounted (`/` unless namespaced).
    root: String,
    mount_point: String,
    fstype: String,
    super_options: String,
}

fn read_v1(dir: &Path) -> CgroupMemory {
    let stat = read_small(&dir.join("memory.stat")).unwrap_or_default();
    let own_limit = read_u64(&dir.join("memory.limit_in_bytes"));
    let hierarchical = stat_field(&stat, "hierarchical_memory_limit");
    CgroupMemory {
        version: CgroupVersion::V1,
        path: dir.to_path_buf(),
        usage_bytes: read_u64(&dir.join("memory.usage_in_bytes")),
        limit_bytes: min_limit(
            [own_limit, hierarchical]
                .into_iter()
                .flatten()
                .filter(|&l| l < UNLIMITED_V1),
        ),
        peak_bytes: read_u64(&dir.join("memory.max_usage_in_bytes")),
        inactive_file_bytes: stat_field(&stat, "total_inactive_file")
            .or_else(|| stat_field(&stat, "inactive_file")),
        oom_kills: read_small(&dir.join("memory.oom_control"))
            .and_then(|t| stat_field(&t, "oom_kill")),
    }
}

/// `top` is the mount point: limits are collected from `dir` up to it.
fn read_v2(dir: &Path, top: &Path) -> CgroupMemory {
    let mut limits = Vec::new();
    let mut cursor = Some(dir);
    while let Some(d) = cursor {
        if let Some(text) = read_small(&d.join("memory.max")) {
            limits.push(parse_limit_v2(&text));
        }
        if d == top {
            break;
        }
        cursor = d.parent().filter(|p| p.starts_with(top));
    }
    let stat = read_small(&dir.join("memory.stat")).unwrap_or_default();
    CgroupMemory {
        version: CgroupVersion::V2,
        path: dir.to_path_buf(),
        usage_bytes: read_u64(&dir.join("memory.current")),
        limit_bytes: min_limit(limits.into_iter().flatten()),
        peak_bytes: read_u64(&dir.join("memory.peak")),
        inactive_file_bytes: stat_field(&stat, "inactive_file"),
        oom_kills: read_small(&dir.join("memory.events")).and_then(|t| stat_field(&t, "oom_kill")),
    }
}

fn min_limit(limits: impl Iterator<Item = u64>) -> Option<u64> {
    limits.min()
}

/// `memory.max`: a number, or `max` for unlimited; garbage counts as unlimited.
fn parse_limit_v2(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// `(version, path)` for each cgroup line that can hold memory figures, v1 memory first.
fn cgroup_paths(text: &str) -> Vec<(CgroupVersion, &str)> {
    let mut v1 = Vec::new();
    let mut v2 = Vec::new();
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if controllers.split(',').any(|c| c == "memory") {
            v1.push((CgroupVersion::V1, path));
        } else if id == "0" && controllers.is_empty() {
            v2.push((CgroupVersion::V2, path));
        }
    }
    v1.extend(v2);
    v1
}

/// `id parent major:minor root mount_point options [optional...] - fstype source super_options`
fn parse_mount(line: &str) -> Option<Mount> {
    let (before, after) = line.split_once(" - ")?;
    let before: Vec<&str> = before.split(' ').collect();
    let mut after = after.split(' ');
    Some(Mount {
        root: unescape(before.get(3)?),
        mount_point: unescape(before.get(4)?),
        fstype: after.next()?.to_string(),
        super_options: after.nth(1).unwrap_or("").to_string(),
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let s = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(s, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup's directory and the mount point above it. When the process's path is not below
/// the mount's root, or does not exist (a cgroup namespace shows the host path while the
/// container mounts its own leaf), the mount point itself is the cgroup.
fn resolve(root: &Path, mount: &Mount, cgroup_path: &str) -> (PathBuf, PathBuf) {
    let top = root.join(mount.mount_point.trim_start_matches('/'));
    let relative = if mount.root == "/" {
        Some(cgroup_path)
    } else {
        cgroup_path.strip_prefix(mount.root.as_str())
    };
    let dir = relative
        .map(|rel| top.join(rel.trim_start_matches('/')))
        .filter(|dir| dir.is_dir())
        .unwrap_or_else(|| top.clone());
    (dir, top)
}

/// A `key value` line from memory.stat, memory.events or memory.oom_control.
fn stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

fn read_u64(path: &Path) -> Option<u64> {
    read_small(path)?.trim().parse().ok()
}

/// Reads at most `MAX_FILE_BYTES` of a text file; `None` when missing or unreadable.
pub(crate) fn read_small(path: &Path) -> Option<String> {
    let file = std::fs::File::open(path).ok()?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES).read_to_string(&mut text).ok()?;
    Some(text)
}

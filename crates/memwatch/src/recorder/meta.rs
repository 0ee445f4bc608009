//! A capture's metadata file (`meta.txt`): written into a pre-allocated buffer at capture
//! time, parsed back for listings and post-mortems; and the build id of the running binary.
//!
//! Format: `key=value` lines, first `memwatch_capture=1`, last `complete=1`. A file without
//! the last line was cut short.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::config::{LimitSource, Measure};
use super::error::RecorderError;
use super::files::{self, HEAP, META, TIMELINE};
use super::ladder::Trigger;

/// What became of the heap profile of a capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeapOutcome {
    Written,
    /// `opt.prof` is off: nothing to dump.
    Disabled,
    /// `prof.dump` failed with this errno-style code.
    Failed(i32),
}

/// Everything `meta.txt` records, borrowed so that filling it does not allocate.
#[derive(Debug)]
pub(crate) struct MetaRecord<'a> {
    pub(crate) trigger: Trigger,
    pub(crate) unix_ms: u64,
    pub(crate) detection_latency_ns: Option<u64>,
    pub(crate) allocated_bytes: u64,
    pub(crate) cgroup_usage_bytes: Option<u64>,
    pub(crate) cgroup_limit_bytes: Option<u64>,
    pub(crate) limit_bytes: u64,
    pub(crate) limit_source: LimitSource,
    pub(crate) ladder_bytes: &'a [u64],
    pub(crate) measure: Measure,
    pub(crate) binary: &'a Path,
    pub(crate) build_id: &'a str,
    pub(crate) heap: HeapOutcome,
    pub(crate) timeline_samples: usize,
    pub(crate) resolution_ns: u64,
    /// From the trigger to the moment the heap profile and the timeline were on disk.
    pub(crate) capture_ns: u64,
}

impl MetaRecord<'_> {
    /// Writes the file content into `out` (cleared first). `out` grows only if its capacity is
    /// too small, which the recorder's 8 KiB never is (the binary path is the only long field).
    pub(crate) fn encode(&self, out: &mut Vec<u8>) -> std::io::Result<()> {
        out.clear();
        writeln!(out, "memwatch_capture=1")?;
        writeln!(out, "trigger={}", self.trigger)?;
        writeln!(out, "trigger_bytes={}", self.trigger.threshold_bytes())?;
        writeln!(out, "time_unix_ms={}", self.unix_ms)?;
        if let Some(ns) = self.detection_latency_ns {
            writeln!(out, "detection_latency_ns={ns}")?;
        }
        writeln!(out, "allocated_bytes={}", self.allocated_bytes)?;
        if let Some(usage) = self.cgroup_usage_bytes {
            writeln!(out, "cgroup_usage_bytes={usage}")?;
        }
        if let Some(limit) = self.cgroup_limit_bytes {
            writeln!(out, "cgroup_limit_bytes={limit}")?;
        }
        writeln!(out, "limit_bytes={}", self.limit_bytes)?;
        writeln!(out, "limit_source={}", self.limit_source)?;
        out.extend_from_slice(b"ladder_bytes=");
        for (i, rung) in self.ladder_bytes.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(out, "{sep}{rung}")?;
        }
        out.push(b'\n');
        writeln!(out, "measure={}", self.measure)?;
        writeln!(out, "pid={}", std::process::id())?;
        writeln!(out, "binary={}", self.binary.display())?;
        writeln!(out, "build_id={}", self.build_id)?;
        match self.heap {
            HeapOutcome::Written => writeln!(out, "heap_profile={}", HEAP.name)?,
            HeapOutcome::Disabled => writeln!(out, "heap_profile_error=profiling disabled")?,
            HeapOutcome::Failed(code) => {
                writeln!(out, "heap_profile_error=prof.dump errno {code}")?
            }
        }
        writeln!(out, "timeline={}", TIMELINE.name)?;
        writeln!(out, "timeline_samples={}", self.timeline_samples)?;
        writeln!(out, "timeline_resolution_ns={}", self.resolution_ns)?;
        writeln!(out, "capture_ns={}", self.capture_ns)?;
        writeln!(out, "complete=1")
    }
}

/// A capture on disk, as listed by [`captures`](crate::captures).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureInfo {
    /// The capture's directory.
    pub path: PathBuf,
    /// Its directory name (`capture-<unix ms>-<seq>`), sortable by time.
    pub name: String,
    /// Whether `meta.txt` ends with `complete=1`: every file was written and fsync'd before
    /// the directory got its final name. Only complete captures are listed normally.
    pub complete: bool,
    /// `share-75`, `growth` or `manual`.
    pub trigger: Option<String>,
    pub unix_ms: Option<u64>,
    /// From the crossing allocation to the recorder acting on it.
    pub detection_latency: Option<Duration>,
    pub allocated_bytes: Option<u64>,
    pub cgroup_usage_bytes: Option<u64>,
    pub cgroup_limit_bytes: Option<u64>,
    /// The limit the ladder was computed from (config or cgroup).
    pub limit_bytes: Option<u64>,
    /// `config`, `cgroup` or `config capped by cgroup`.
    pub limit_source: Option<String>,
    /// The ladder's share rungs in bytes, ascending (empty in captures from before they were
    /// recorded).
    pub ladder_bytes: Vec<u64>,
    /// The bytes level that fired (`0` for a manual capture).
    pub trigger_bytes: Option<u64>,
    /// Which figure the ladder compared with the limit: `allocated`, `cgroup-usage`, `max`.
    pub measure: Option<String>,
    pub pid: Option<u32>,
    /// The binary that was running: needed to symbolize the heap profile.
    pub binary: Option<PathBuf>,
    /// Its GNU build id (hex), to check a binary offered for symbolization is the same one.
    pub build_id: Option<String>,
    /// The raw jemalloc heap profile, when one was written.
    pub heap_profile: Option<PathBuf>,
    /// Why there is no heap profile.
    pub heap_profile_error: Option<String>,
    pub timeline: Option<PathBuf>,
    /// From the trigger to the heap profile and timeline being on disk.
    pub capture_duration: Option<Duration>,
    /// Bytes of all its files.
    pub disk_bytes: u64,
}

impl CaptureInfo {
    /// Reads one capture directory, for a report: fails when `dir` is not a directory or has
    /// no `meta.txt` starting with `memwatch_capture=1`. A capture cut short is returned with
    /// `complete: false` (also when its directory still has the `.tmp-` prefix).
    pub fn open(dir: &Path) -> Result<Self, RecorderError> {
        let io = |source| RecorderError::Io {
            path: dir.to_path_buf(),
            source,
        };
        if !std::fs::metadata(dir).map_err(io)?.is_dir() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                "not a directory",
            )));
        }
        let meta = dir.join(META.name);
        let not_capture = || RecorderError::Parse {
            path: dir.to_path_buf(),
            reason: "not a memwatch capture (no meta.txt from the flight recorder)",
        };
        let first = crate::cgroup::read_small(&meta).ok_or_else(not_capture)?;
        if !first.starts_with("memwatch_capture=1") {
            return Err(not_capture());
        }
        let mut info = Self::read(dir).ok_or_else(not_capture)?;
        if files::is_temporary(&info.name) {
            info.complete = false;
        }
        Ok(info)
    }

    /// [`measure`](Self::measure) as the type (`None` when absent or unknown).
    pub fn measure_kind(&self) -> Option<Measure> {
        self.measure.as_deref().and_then(Measure::parse)
    }

    /// Reads a capture directory; `None` when it has no readable `meta.txt`.
    pub(crate) fn read(dir: &Path) -> Option<Self> {
        let text = crate::cgroup::read_small(&dir.join(META.name))?;
        let fields: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
        let num = |key: &str| fields.get(key).and_then(|v| v.parse::<u64>().ok());
        let file = |key: &str| {
            fields
                .get(key)
                .map(|name| dir.join(name))
                .filter(|p| p.is_file())
        };
        let disk_bytes = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        Some(Self {
            path: dir.to_path_buf(),
            name: dir.file_name()?.to_string_lossy().into_owned(),
            complete: fields.get("complete") == Some(&"1"),
            trigger: fields.get("trigger").map(|s| (*s).to_string()),
            unix_ms: num("time_unix_ms"),
            detection_latency: num("detection_latency_ns").map(Duration::from_nanos),
            allocated_bytes: num("allocated_bytes"),
            cgroup_usage_bytes: num("cgroup_usage_bytes"),
            cgroup_limit_bytes: num("cgroup_limit_bytes"),
            limit_bytes: num("limit_bytes"),
            limit_source: fields.get("limit_source").map(|s| (*s).to_string()),
            ladder_bytes: fields
                .get("ladder_bytes")
                .map(|v| v.split(',').filter_map(|b| b.parse().ok()).collect())
                .unwrap_or_default(),
            trigger_bytes: num("trigger_bytes"),
            measure: fields.get("measure").map(|s| (*s).to_string()),
            pid: num("pid").and_then(|p| u32::try_from(p).ok()),
            binary: fields.get("binary").map(PathBuf::from),
            build_id: fields.get("build_id").map(|s| (*s).to_string()),
            heap_profile: file("heap_profile"),
            heap_profile_error: fields.get("heap_profile_error").map(|s| (*s).to_string()),
            timeline: file("timeline"),
            capture_duration: num("capture_ns").map(Duration::from_nanos),
            disk_bytes,
        })
    }
}

/// The GNU build id of the running executable as hex, read from its loaded program headers
/// (no file I/O); empty when the binary has none.
pub(crate) fn build_id() -> String {
    let mut id = String::new();
    // SAFETY: the callback only reads the program headers and notes the loader hands it, within
    // the sizes they declare, and writes into the `String` passed as `data`.
    unsafe { libc::dl_iterate_phdr(Some(first_object_build_id), (&raw mut id).cast()) };
    id
}

/// `dl_iterate_phdr` callback: the first object is the executable; stop after it.
unsafe extern "C" fn first_object_build_id(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: the loader passes a valid info; `data` is the `String` given above.
    let (info, out) = unsafe { (&*info, &mut *data.cast::<String>()) };
    for i in 0..usize::from(info.dlpi_phnum) {
        // SAFETY: `dlpi_phdr` points at `dlpi_phnum` headers.
        let phdr = unsafe { &*info.dlpi_phdr.add(i) };
        if phdr.p_type != libc::PT_NOTE {
            continue;
        }
        let start = (info.dlpi_addr + phdr.p_vaddr) as *const u8;
        let len = usize::try_from(phdr.p_memsz).unwrap_or(0);
        // SAFETY: a loaded PT_NOTE segment is mapped readable for `p_memsz` bytes.
        let notes = unsafe { std::slice::from_raw_parts(start, len) };
        if let Some(desc) = gnu_build_id(notes) {
            for byte in desc {
                let _ = std::fmt::Write::write_fmt(out, format_args!("{byte:02x}"));
            }
            break;
        }
    }
    1
}

/// Finds the `NT_GNU_BUILD_ID` descriptor in a note segment.
fn gnu_build_id(mut notes: &[u8]) -> Option<&[u8]> {
    let word = |b: &[u8], at: usize| -> Option<usize> {
        let raw: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        usize::try_from(u32::from_ne_bytes(raw)).ok()
    };
    let pad = |n: usize| n.div_ceil(4) * 4;
    while notes.len() >= 12 {
        let (name_len, desc_len, kind) = (word(notes, 0)?, word(notes, 4)?, word(notes, 8)?);
        let name = notes.get(12..12 + name_len)?;
        let desc_at = 12 + pad(name_len);
        let desc = notes.get(desc_at..desc_at + desc_len)?;
        if kind == 3 && name == b"GNU\0" {
            return Some(desc);
        }
        notes = notes.get(desc_at + pad(desc_len)..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn build_id_note_is_found_after_other_notes() {
        let mut notes = Vec::new();
        for (name, kind, desc) in [
            (&b"XY\0"[..], 1u32, &[9u8, 9, 9][..]),
            (b"GNU\0", 3, &[0xab, 0xcd]),
        ] {
            notes.extend_from_slice(&(name.len() as u32).to_ne_bytes());
            notes.extend_from_slice(&(desc.len() as u32).to_ne_bytes());
            notes.extend_from_slice(&kind.to_ne_bytes());
            notes.extend_from_slice(name);
            notes.resize(notes.len().div_ceil(4) * 4, 0);
            notes.extend_from_slice(desc);
            notes.resize(notes.len().div_ceil(4) * 4, 0);
        }
        assert_eq!(gnu_build_id(&notes), Some(&[0xab, 0xcd][..]));
        assert_eq!(gnu_build_id(&notes[..20]), None);
    }

    #[test]
    fn encoded_meta_parses_back() {
        let dir = tempfile::tempdir().unwrap();
        let record = MetaRecord {
            trigger: Trigger::Share {
                share: 0.75,
                threshold_bytes: 192 << 20,
            },
            unix_ms: 1_700_000_000_123,
            detection_latency_ns: Some(42_000),
            allocated_bytes: 200 << 20,
            cgroup_usage_bytes: Some(230 << 20),
            cgroup_limit_bytes: Some(256 << 20),
            limit_bytes: 256 << 20,
            limit_source: LimitSource::Cgroup,
            ladder_bytes: &[150 << 20, 192 << 20],
            measure: Measure::Allocated,
            binary: Path::new("/usr/bin/engine-gateway"),
            build_id: "abcd",
            heap: HeapOutcome::Written,
            timeline_samples: 1000,
            resolution_ns: 1_000_000,
            capture_ns: 3_000_000,
        };
        let mut out = Vec::with_capacity(8192);
        record.encode(&mut out).unwrap();
        assert_eq!(out.capacity(), 8192);
        std::fs::write(dir.path().join("meta.txt"), &out).unwrap();
        std::fs::write(dir.path().join("heap.prof"), "heap_v2/524288\n").unwrap();
        let info = CaptureInfo::read(dir.path()).unwrap();
        assert!(info.complete);
        assert_eq!(info.trigger.as_deref(), Some("share-75"));
        assert_eq!(info.detection_latency, Some(Duration::from_micros(42)));
        assert_eq!(info.cgroup_limit_bytes, Some(256 << 20));
        assert_eq!(info.ladder_bytes, vec![150 << 20, 192 << 20]);
        assert_eq!(info.trigger_bytes, Some(192 << 20));
        assert_eq!(info.measure.as_deref(), Some("allocated"));
        assert_eq!(info.heap_profile, Some(dir.path().join("heap.prof")));
        assert_eq!(info.timeline, None, "listed only when the file exists");
        assert_eq!(info.build_id.as_deref(), Some("abcd"));
        assert_eq!(info.pid, Some(std::process::id()));
    }
}

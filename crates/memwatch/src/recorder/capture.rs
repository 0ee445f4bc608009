//! Writing one capture in the hot moment: heap dump, timeline and metadata into a fresh
//! directory, every file fsync'd, then renamed into place — with buffers allocated at start.
//!
//! All file operations are raw `*at` syscalls on a directory descriptor opened at start, with
//! names formatted into stack arrays: no `PathBuf`, no `CString`, no heap allocation by this
//! code during a capture. jemalloc's `prof.dump` allocates a little internally (its own
//! metadata, not through the Rust allocator). A capture directory only gets its final name
//! (`capture-<unix ms>-<seq>`) once everything in it is durable, so a `kill -9` or an OOM kill
//! mid-capture leaves a `.tmp-…` directory, never a half-written capture that looks complete.

use std::io::Write as _;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::config::{LimitSource, Measure};
use super::error::CaptureFailure;
use super::files::{CAPTURE_PREFIX, HEAP, META, TIMELINE, TMP_PREFIX};
use super::ladder::Trigger;
use super::meta::{HeapOutcome, MetaRecord};
use super::timeline::Ring;
use super::wake;

/// Figures measured at the trigger, recorded in `meta.txt`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Moment {
    pub(crate) trigger: Trigger,
    /// `CLOCK_MONOTONIC` ns when the recorder acted on the trigger.
    pub(crate) at_ns: u64,
    /// µs since the recorder started (the timeline's clock).
    pub(crate) at_us: u64,
    pub(crate) detection_latency_ns: Option<u64>,
    pub(crate) allocated_bytes: u64,
    pub(crate) cgroup_usage_bytes: Option<u64>,
    /// The figure the ladder compared (per [`Measure`]).
    pub(crate) measured_bytes: u64,
}

/// A finished capture.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Written {
    /// `capture-<unix ms>-<seq>` as bytes in a stack array, `len` long.
    pub(crate) name: [u8; 64],
    pub(crate) name_len: usize,
    pub(crate) unix_ms: u64,
    /// Trigger to heap profile and timeline on disk.
    pub(crate) capture_ns: u64,
    /// Trigger to the renamed, fsync'd directory.
    pub(crate) complete_ns: u64,
}

impl Written {
    pub(crate) fn name(&self) -> &str {
        std::str::from_utf8(&self.name[..self.name_len]).unwrap_or("capture")
    }
}

/// Everything a capture needs, allocated at recorder start.
#[derive(Debug)]
pub(crate) struct Capturer {
    dir: PathBuf,
    dir_fd: OwnedFd,
    /// Full path of the heap profile for `prof.dump` (which takes a path, not a descriptor);
    /// sized at start for the directory plus the longest name.
    heap_path: Vec<u8>,
    /// Chunk buffer for encoding the timeline.
    scratch: Vec<u8>,
    /// Buffer for `meta.txt`.
    meta: Vec<u8>,
    binary: PathBuf,
    build_id: String,
    profiling: bool,
    cgroup_limit_bytes: Option<u64>,
    limit_bytes: u64,
    limit_source: LimitSource,
    /// The ladder's share rungs in bytes, recorded so a report can draw them.
    ladder_bytes: Vec<u64>,
    /// Which figure the ladder compares.
    measure: Measure,
    /// Distinguishes captures within one millisecond.
    seq: u32,
}

impl Capturer {
    /// Opens (creating if needed) the capture directory and allocates the buffers.
    pub(crate) fn new(
        dir: &Path,
        cgroup_limit_bytes: Option<u64>,
        limit_bytes: u64,
        limit_source: LimitSource,
        ladder_bytes: Vec<u64>,
        measure: Measure,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let dir_fd = OwnedFd::from(std::fs::File::open(dir)?);
        let binary = std::fs::read_link("/proc/self/exe")
            .or_else(|_| std::env::current_exe())
            .unwrap_or_default();
        let binary_len = binary.as_os_str().len();
        // Non-zero fill: written (so resident) now, unlike calloc'd zeroes.
        let scratch = vec![0xa5u8; 64 * 1024];
        Ok(Self {
            dir: dir.to_path_buf(),
            dir_fd,
            heap_path: Vec::with_capacity(dir.as_os_str().len() + 128),
            scratch,
            meta: Vec::with_capacity(8 * 1024 + binary_len),
            binary,
            build_id: super::meta::build_id(),
            profiling: crate::profiling_enabled().unwrap_or(false),
            cgroup_limit_bytes,
            limit_bytes,
            limit_source,
            ladder_bytes,
            measure,
            seq: 0,
        })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes one capture. Does not allocate (see the module docs).
    pub(crate) fn capture(&mut self, m: &Moment, ring: &Ring) -> Result<Written, CaptureFailure> {
        let unix_ms = wake::unix_ms();
        self.seq = self.seq.wrapping_add(1);
        let mut tmp = [0u8; 64];
        let tmp_len = {
            let mut cursor = &mut tmp[..63];
            let _ = write!(
                cursor,
                "{TMP_PREFIX}{CAPTURE_PREFIX}{unix_ms:013}-{:04}",
                self.seq
            );
            63 - cursor.len()
        };
        let final_name = &tmp[TMP_PREFIX.len()..=tmp_len]; // keeps the NUL
        let dir = self.dir_fd.as_raw_fd();

        // SAFETY: NUL-terminated name in a live stack array.
        check("mkdir", unsafe {
            libc::mkdirat(dir, tmp.as_ptr().cast(), 0o750)
        })?;
        let tmp_fd = open_at(
            dir,
            &tmp,
            libc::O_DIRECTORY | libc::O_RDONLY,
            "open capture dir",
        )?;

        let heap = self.dump_heap(&tmp[..tmp_len], tmp_fd.as_raw_fd());
        let timeline = create_at(tmp_fd.as_raw_fd(), TIMELINE.c)?;
        self.scratch.clear();
        ring.write_file(&mut self.scratch, m.at_us, unix_ms, |bytes| {
            write_all(timeline.as_raw_fd(), bytes)
        })
        .map_err(|err| failure("write timeline", &err))?;
        // SAFETY: fsync of a descriptor we own.
        check("fsync timeline", unsafe {
            libc::fsync(timeline.as_raw_fd())
        })?;
        drop(timeline);
        let capture_ns = wake::monotonic_ns().saturating_sub(m.at_ns);

        let record = MetaRecord {
            trigger: m.trigger,
            unix_ms,
            detection_latency_ns: m.detection_latency_ns,
            allocated_bytes: m.allocated_bytes,
            cgroup_usage_bytes: m.cgroup_usage_bytes,
            cgroup_limit_bytes: self.cgroup_limit_bytes,
            limit_bytes: self.limit_bytes,
            limit_source: self.limit_source,
            ladder_bytes: &self.ladder_bytes,
            measure: self.measure,
            binary: &self.binary,
            build_id: &self.build_id,
            heap,
            timeline_samples: ring.len(),
            resolution_ns: ring.resolution_ns(),
            capture_ns,
        };
        record
            .encode(&mut self.meta)
            .map_err(|err| failure("encode meta", &err))?;
        let meta = create_at(tmp_fd.as_raw_fd(), META.c)?;
        write_all(meta.as_raw_fd(), &self.meta).map_err(|err| failure("write meta", &err))?;
        // SAFETY: fsync of descriptors we own.
        check("fsync meta", unsafe { libc::fsync(meta.as_raw_fd()) })?;
        drop(meta);
        // SAFETY: as above.
        check("fsync capture dir", unsafe {
            libc::fsync(tmp_fd.as_raw_fd())
        })?;
        drop(tmp_fd);
        // SAFETY: two NUL-terminated names in a live stack array, relative to our directory.
        check("rename", unsafe {
            libc::renameat(dir, tmp.as_ptr().cast(), dir, final_name.as_ptr().cast())
        })?;
        // SAFETY: fsync of the directory we own.
        check("fsync directory", unsafe { libc::fsync(dir) })?;

        let mut name = [0u8; 64];
        let name_len = final_name.len() - 1;
        name[..name_len].copy_from_slice(&final_name[..name_len]);
        Ok(Written {
            name,
            name_len,
            unix_ms,
            capture_ns,
            complete_ns: wake::monotonic_ns().saturating_sub(m.at_ns),
        })
    }

    /// `prof.dump` into `<dir>/<tmp>/heap.prof`, then fsync it.
    fn dump_heap(&mut self, tmp: &[u8], tmp_fd: RawFd) -> HeapOutcome {
        if !self.profiling {
            return HeapOutcome::Disabled;
        }
        self.heap_path.clear();
        self.heap_path
            .extend_from_slice(self.dir.as_os_str().as_bytes());
        self.heap_path.push(b'/');
        self.heap_path.extend_from_slice(tmp);
        self.heap_path.push(b'/');
        self.heap_path.extend_from_slice(HEAP.c.to_bytes_with_nul());
        let ptr: *const libc::c_char = self.heap_path.as_ptr().cast();
        // SAFETY: "prof.dump" takes a `const char *` to a NUL-terminated path, read during the
        // call; `heap_path` outlives it.
        let rc = unsafe {
            tikv_jemalloc_sys::mallctl(
                c"prof.dump".as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                (&raw const ptr).cast_mut().cast(),
                size_of::<*const libc::c_char>(),
            )
        };
        if rc != 0 {
            return HeapOutcome::Failed(rc);
        }
        // SAFETY: NUL-terminated literal; the descriptor is closed by OwnedFd.
        let fd = unsafe { libc::openat(tmp_fd, HEAP.c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd >= 0 {
            // SAFETY: we own the fresh descriptor.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: fsync of a descriptor we own.
            unsafe { libc::fsync(fd.as_raw_fd()) };
        }
        HeapOutcome::Written
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn check(step: &'static str, rc: libc::c_int) -> Result<(), CaptureFailure> {
    if rc < 0 {
        Err(CaptureFailure {
            step,
            errno: errno(),
        })
    } else {
        Ok(())
    }
}

fn failure(step: &'static str, err: &std::io::Error) -> CaptureFailure {
    CaptureFailure {
        step,
        errno: err.raw_os_error().unwrap_or(libc::EIO),
    }
}

/// `name` must be NUL-terminated.
fn open_at(
    dir: RawFd,
    name: &[u8],
    flags: i32,
    step: &'static str,
) -> Result<OwnedFd, CaptureFailure> {
    // SAFETY: NUL-terminated name; the descriptor is owned by the returned OwnedFd.
    let fd = unsafe { libc::openat(dir, name.as_ptr().cast(), flags | libc::O_CLOEXEC) };
    check(step, fd)?;
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn create_at(dir: RawFd, name: &'static std::ffi::CStr) -> Result<OwnedFd, CaptureFailure> {
    // SAFETY: NUL-terminated static name; mode passed as the variadic argument.
    let fd = unsafe {
        libc::openat(
            dir,
            name.as_ptr().cast(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
            0o640 as libc::c_uint,
        )
    };
    check("create file", fd)?;
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn write_all(fd: RawFd, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: writes from a live slice.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        bytes = &bytes[usize::try_from(n).unwrap_or(0)..];
    }
    Ok(())
}

//! Heap profiles: jemalloc's raw dump parsed, unsampled, symbolized and trimmed into one
//! [`Profile`] model (the pprof model), which encodes to pprof protobuf, renders a flame graph,
//! and answers "which sites hold memory" and "which sites grew".
//!
//! The pipeline, in-process (cheap, bounded):
//! `prof.dump` → [`Profile::parse_raw`] (heap_v2 text) → [`Profile::symbolize_in_process`]
//! (ELF symbol tables only, never DWARF; tables dropped after the call) →
//! [`Profile::trim_allocator_frames`] → [`Profile::to_pprof_gzip`] or [`flamegraph_svg`].
//!
//! Offline (the `memwatch` CLI, feature `cli`): [`Profile::read_file`] (raw or pprof, gzip or
//! not) → [`Profile::symbolize_offline`] with the binary or its split debug file, for
//! file:line.
//!
//! **Architecture invariant:** a [`Location`]'s `address` is a runtime address of the profiled
//! process minus one (a return address moved back into its call instruction); only
//! [`Mapping`]s translate it into a file's addresses.

mod advice;
mod build;
#[cfg(feature = "cli")]
mod dwarf;
mod elf;
mod flamegraph;
#[cfg(feature = "cli")]
mod names;
mod pprof;
mod raw;
mod report;

use std::path::{Path, PathBuf};

pub use advice::{
    DEFAULT_LIBRARY_CRATES, Finding, HeavyPath, MIN_FINDING_SHARE, NO_OWN_FRAME, OwnCode, crate_of,
    findings, heavy_paths,
};
pub use flamegraph::{COLLAPSED, FlameOptions, flamegraph_svg, flamegraph_svg_with};
pub use report::{DiffRow, TopRow, diff, human_bytes, short_source, top};

/// A heap profile: what is allocated now, by call stack, in estimated (unsampled) figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    /// jemalloc's mean sampling interval in bytes (`2^lg_prof_sample`), kept as pprof's period.
    pub sample_period: u64,
    /// When the profile was taken, nanoseconds since the Unix epoch (0 when unknown).
    pub time_nanos: i64,
    /// The executable mappings of the process, sorted by start address.
    pub mappings: Vec<Mapping>,
    /// Every distinct stack address; samples refer to them by index.
    pub locations: Vec<Location>,
    /// One entry per distinct allocation stack.
    pub samples: Vec<Sample>,
}

/// An executable file mapped into the profiled process (a line of `/proc/PID/maps`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mapping {
    /// First runtime address of the mapping.
    pub start: u64,
    /// One past the last runtime address.
    pub limit: u64,
    /// File offset mapped at `start`: with the file's program headers it turns a runtime
    /// address into the file's own (link-time) address, whatever ASLR did.
    pub file_offset: u64,
    /// Path of the file on the profiled machine.
    pub path: String,
    /// GNU build id, lowercase hex, when the file could be read: lets an offline symbolizer
    /// refuse the wrong binary.
    pub build_id: Option<String>,
}

/// One stack address, with what symbolization found there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    /// Runtime address minus one (see the module's invariant).
    pub address: u64,
    /// Index into [`Profile::mappings`], `None` when no mapping contains the address.
    pub mapping: Option<usize>,
    /// Innermost first: inlined functions, then the function they were inlined into. Empty
    /// when not symbolized.
    pub frames: Vec<Frame>,
}

/// A function at a location, with its source position when known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frame {
    /// Demangled name without the hash suffix.
    pub function: String,
    /// Source file, from DWARF (offline) only.
    pub file: Option<String>,
    /// Source line, 0 when unknown.
    pub line: u32,
}

/// Memory held by one stack.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    /// Indexes into [`Profile::locations`], leaf (allocation site) first.
    pub locations: Vec<usize>,
    /// Estimated live objects allocated from this stack.
    pub objects: i64,
    /// Estimated live bytes allocated from this stack.
    pub bytes: i64,
}

/// Errors reading, converting or symbolizing a profile.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// Dumping the profile failed (profiling off, jemalloc error, bad path).
    #[error(transparent)]
    Dump(#[from] crate::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The input is larger than this crate agrees to load.
    #[error("{what} is larger than {limit} bytes")]
    TooLarge { what: &'static str, limit: u64 },
    /// The input is neither a jemalloc heap profile nor a pprof profile.
    #[error("not a heap profile (expected jemalloc heap_v2 text or pprof protobuf, gzip or not)")]
    UnknownFormat,
    /// The gzip stream is damaged or cut short.
    #[error("bad gzip data: {0}")]
    Gzip(std::io::Error),
    /// A jemalloc heap_v2 text profile that does not parse.
    #[error("heap profile line {line}: {reason}")]
    Raw { line: usize, reason: &'static str },
    /// A pprof protobuf that does not decode.
    #[error("pprof profile: {0}")]
    Pprof(&'static str),
    /// A binary that cannot be used to symbolize this profile.
    #[error("binary {path}: {reason}")]
    Binary { path: PathBuf, reason: String },
}

/// Largest profile file loaded (raw text or decompressed pprof): far above real profiles
/// (a few MB), low enough that garbage cannot make us allocate without bound.
pub const MAX_PROFILE_BYTES: u64 = 256 << 20;

impl Profile {
    /// Dumps jemalloc's heap profile into a file in `dir`, reads it back, removes it, and
    /// returns it parsed, symbolized from the mapped files' symbol tables and trimmed of the
    /// allocator's own frames. Blocking (file I/O, ELF reads): not on an async worker.
    pub fn capture(dir: &Path) -> Result<Profile, ProfileError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("memwatch-heap-{}-{n}.prof", std::process::id()));
        crate::dump_heap_profile(&path)?;
        let raw = read_bounded(&path);
        let _ = std::fs::remove_file(&path);
        let mut profile = Profile::parse_raw(&raw?)?;
        profile.time_nanos = now_nanos();
        profile.read_build_ids();
        profile.symbolize_in_process();
        profile.trim_allocator_frames();
        Ok(profile)
    }

    /// Reads a profile file: jemalloc raw (heap_v2) or pprof protobuf, either possibly gzip.
    /// Not symbolized beyond what the file holds.
    pub fn read_file(path: &Path) -> Result<Profile, ProfileError> {
        let bytes = read_bounded(path)?;
        Profile::from_bytes(&bytes)
    }

    /// Like [`Profile::read_file`], from bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Profile, ProfileError> {
        let inflated;
        let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
            inflated = gunzip(bytes)?;
            &inflated[..]
        } else {
            bytes
        };
        if bytes.starts_with(b"heap_v2/") {
            Profile::parse_raw(bytes)
        } else if pprof::looks_like_pprof(bytes) {
            Profile::from_pprof(bytes)
        } else {
            Err(ProfileError::UnknownFormat)
        }
    }

    /// Total estimated live bytes.
    pub fn total_bytes(&self) -> i64 {
        self.samples.iter().map(|s| s.bytes).sum()
    }

    /// The pprof protobuf, gzip-compressed, as `go tool pprof` and profiling services read it.
    pub fn to_pprof_gzip(&self) -> Vec<u8> {
        use std::io::Write;
        let raw = self.to_pprof();
        let mut gz = flate2::write::GzEncoder::new(
            Vec::with_capacity(raw.len() / 3),
            flate2::Compression::fast(),
        );
        // Writing to a Vec cannot fail.
        let _ = gz.write_all(&raw);
        gz.finish().unwrap_or_default()
    }
}

/// Reads a whole file, refusing more than [`MAX_PROFILE_BYTES`].
fn read_bounded(path: &Path) -> Result<Vec<u8>, ProfileError> {
    use std::io::Read;
    let io = |source| ProfileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(MAX_PROFILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_PROFILE_BYTES {
        return Err(ProfileError::TooLarge {
            what: "profile file",
            limit: MAX_PROFILE_BYTES,
        });
    }
    Ok(bytes)
}

/// Inflates gzip data, refusing more than [`MAX_PROFILE_BYTES`] of output.
fn gunzip(bytes: &[u8]) -> Result<Vec<u8>, ProfileError> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .take(MAX_PROFILE_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(ProfileError::Gzip)?;
    if out.len() as u64 > MAX_PROFILE_BYTES {
        return Err(ProfileError::TooLarge {
            what: "decompressed profile",
            limit: MAX_PROFILE_BYTES,
        });
    }
    Ok(out)
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

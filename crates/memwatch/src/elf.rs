//! What one std backtrace symbolization would cost in memory, from the DWARF sections of the
//! binary and of the shared libraries' debug files, read through the `object` crate.
//!
//! Only headers are read (the section table, 24 bytes per compressed section), through
//! `object::ReadCache`, never the sections themselves: cheap enough for startup.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use object::read::ReadCache;
use object::{CompressionFormat, Object, ObjectSection};

use crate::Error;

/// One DWARF section the symbolizer loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugSection {
    /// Section name, e.g. `.debug_info` (or `.zdebug_info` for old GNU compression).
    pub name: String,
    /// Bytes in the file.
    pub file_bytes: u64,
    /// Bytes once decompressed; equals `file_bytes` when not compressed.
    pub uncompressed_bytes: u64,
    /// Compressed sections are inflated onto the heap by the symbolizer instead of being
    /// read from the mapped file.
    pub compressed: bool,
}

/// The debug info of one shared library the symbolizer would also read (libc's frames start
/// every thread): its own sections, or its separate debug file under `/usr/lib/debug`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibraryDebug {
    /// The mapped library.
    pub library: PathBuf,
    /// Where its DWARF is (the library itself or its `.debug` file).
    pub debug_file: PathBuf,
    /// Its DWARF sections.
    pub sections: Vec<DebugSection>,
}

/// What symbolizing one backtrace in this binary would cost.
///
/// Estimation rule, per file read (the executable, and each mapped library with debug info):
/// std's symbolizer (backtrace-rs: gimli and addr2line) maps the file and reads its DWARF,
/// inflating compressed sections onto the heap (1×); it parses every unit's abbreviations
/// (~11× `.debug_abbrev`: one table of `Abbreviation`s per unit), the line programs
/// (~1.7× `.debug_line`) and unit ranges (~0.05× `.debug_info`), and keeps all of it cached
/// for the rest of the process; plus ~8 MiB of symbol tables and caches once. The mapped,
/// uncompressed sections it reads become resident file pages (1×). Calibrated on a debug test
/// binary (20 MiB DWARF + libc's 9 MiB debug file: +44 MiB heap, +64 MiB RSS) and checked
/// against release builds with `debug = "line-tables-only"` and `debug = true` (see
/// ARCHITECTURE.md's figures); split DWARF (`.dwp`) is not counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymbolizationCost {
    /// The binary examined (`/proc/self/exe` resolved, for the log).
    pub binary: PathBuf,
    /// The binary's DWARF sections, in file order.
    pub sections: Vec<DebugSection>,
    /// Sum of the binary's `file_bytes`.
    pub file_bytes: u64,
    /// Sum of the binary's `uncompressed_bytes`.
    pub uncompressed_bytes: u64,
    /// The mapped libraries whose debug info would be read too.
    pub libraries: Vec<LibraryDebug>,
    /// Estimated heap kept after one symbolization.
    pub estimated_heap_bytes: u64,
    /// Estimated memory growth of one symbolization: heap plus resident DWARF pages.
    pub estimated_bytes: u64,
}

impl SymbolizationCost {
    /// The cost for the running binary and the libraries mapped into this process.
    pub fn of_current_exe() -> Result<Self, Error> {
        let exe = Path::new("/proc/self/exe");
        let binary = std::fs::read_link(exe).unwrap_or_else(|_| exe.to_path_buf());
        let mut cost = Self::of_binary_with_these_libraries(exe)?;
        cost.binary = binary;
        Ok(cost)
    }

    /// The cost for the binary at `path` linked against the libraries this process maps
    /// (the same libc on the same machine): to check another binary from a tool.
    pub fn of_binary_with_these_libraries(path: &Path) -> Result<Self, Error> {
        let mut cost = Self::of_binary(path)?;
        let exe = std::fs::read_link("/proc/self/exe").unwrap_or_default();
        cost.libraries = mapped_libraries(&exe)
            .into_iter()
            .filter_map(|library| library_debug(&library))
            .collect();
        cost.estimate();
        Ok(cost)
    }

    /// The cost for the ELF binary at `path` alone (no libraries).
    pub fn of_binary(path: &Path) -> Result<Self, Error> {
        let sections = debug_sections(path)?;
        let sum =
            |f: fn(&DebugSection) -> u64| sections.iter().map(f).fold(0u64, u64::saturating_add);
        let mut cost = Self {
            binary: path.to_path_buf(),
            file_bytes: sum(|s| s.file_bytes),
            uncompressed_bytes: sum(|s| s.uncompressed_bytes),
            sections,
            libraries: Vec::new(),
            estimated_heap_bytes: 0,
            estimated_bytes: 0,
        };
        cost.estimate();
        Ok(cost)
    }

    /// Applies the estimation rule to the sections found.
    fn estimate(&mut self) {
        let files =
            std::iter::once(&self.sections).chain(self.libraries.iter().map(|l| &l.sections));
        let (mut heap, mut mapped, mut any) = (0f64, 0f64, false);
        for sections in files {
            for s in sections {
                any = true;
                let bytes = s.uncompressed_bytes as f64;
                if s.compressed {
                    heap += bytes;
                } else {
                    mapped += bytes;
                }
                heap += bytes
                    * match dwarf_base(&s.name) {
                        Some("abbrev") => ABBREV_FACTOR,
                        Some("line") => LINE_FACTOR,
                        Some("info") => INFO_FACTOR,
                        _ => 0.0,
                    };
            }
        }
        if any {
            heap += FIXED_BYTES as f64;
        }
        self.estimated_heap_bytes = heap as u64;
        self.estimated_bytes = (heap + mapped) as u64;
    }
}

impl fmt::Display for SymbolizationCost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.sections.is_empty() && self.libraries.is_empty() {
            return write!(
                f,
                "no debug info in {}: symbolization is cheap",
                self.binary.display()
            );
        }
        write!(
            f,
            "one symbolization would cost ~{} MiB (~{} MiB heap; {} MiB DWARF in {} sections of {}",
            mib(self.estimated_bytes),
            mib(self.estimated_heap_bytes),
            mib(self.uncompressed_bytes),
            self.sections.len(),
            self.binary.display()
        )?;
        for l in &self.libraries {
            let bytes = l.sections.iter().map(|s| s.uncompressed_bytes).sum::<u64>();
            write!(f, ", {} MiB in {}", mib(bytes), l.debug_file.display())?;
        }
        f.write_str(")")
    }
}

/// The DWARF sections of the ELF file at `path` that a symbolizer loads. `Error::Parse`
/// when the file is not ELF or its headers are inconsistent.
pub fn debug_sections(path: &Path) -> Result<Vec<DebugSection>, Error> {
    let file = File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |reason| Error::Parse {
        path: path.to_path_buf(),
        reason,
    };
    let cache = ReadCache::new(file);
    let object = object::File::parse(&cache).map_err(|_| bad("not an ELF file"))?;
    if !matches!(object, object::File::Elf32(_) | object::File::Elf64(_)) {
        return Err(bad("not an ELF file"));
    }
    let mut sections = Vec::new();
    for section in object.sections() {
        let Ok(name) = section.name() else { continue };
        if !loaded_by_symbolizer(name) {
            continue;
        }
        // NOBITS (a stripped debug section) has no bytes in the file.
        let Some((_, file_bytes)) = section.file_range() else {
            continue;
        };
        let range = section
            .compressed_file_range()
            .map_err(|_| bad("bad compressed section header"))?;
        let compressed = range.format != CompressionFormat::None;
        sections.push(DebugSection {
            name: name.to_string(),
            file_bytes,
            uncompressed_bytes: if compressed {
                range.uncompressed_size
            } else {
                file_bytes
            },
            compressed,
        });
    }
    Ok(sections)
}

/// The shared libraries mapped executable into this process, `exe` excluded.
fn mapped_libraries(exe: &Path) -> Vec<PathBuf> {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_ascii_whitespace();
        let perms = fields.nth(1).unwrap_or("");
        let Some(path) = fields.nth(3) else { continue };
        let path = Path::new(path);
        if perms.contains('x')
            && path.is_absolute()
            && path != exe
            && !out.iter().any(|p| p == path)
        {
            out.push(path.to_path_buf());
        }
    }
    out
}

/// Where `library`'s DWARF is: its own sections, else `/usr/lib/debug/.build-id/xx/rest.debug`,
/// else `/usr/lib/debug/<path>.debug`; `None` when it has none.
fn library_debug(library: &Path) -> Option<LibraryDebug> {
    let own = debug_sections(library).ok()?;
    if own.iter().any(|s| dwarf_base(&s.name) == Some("info")) {
        return Some(LibraryDebug {
            library: library.to_path_buf(),
            debug_file: library.to_path_buf(),
            sections: own,
        });
    }
    let mut candidates = Vec::new();
    if let Some(id) = build_id(library) {
        let (head, tail) = id.split_at(2.min(id.len()));
        candidates.push(PathBuf::from(format!(
            "/usr/lib/debug/.build-id/{head}/{tail}.debug"
        )));
    }
    candidates.push(Path::new("/usr/lib/debug").join(format!(
        "{}.debug",
        library.strip_prefix("/").unwrap_or(library).display()
    )));
    candidates.into_iter().find_map(|debug_file| {
        let sections = debug_sections(&debug_file).ok()?;
        (!sections.is_empty()).then(|| LibraryDebug {
            library: library.to_path_buf(),
            debug_file,
            sections,
        })
    })
}

/// The GNU build id of an ELF file, lowercase hex.
fn build_id(path: &Path) -> Option<String> {
    let cache = ReadCache::new(File::open(path).ok()?);
    let object = object::File::parse(&cache).ok()?;
    let id = object.build_id().ok()??;
    Some(id.iter().map(|b| format!("{b:02x}")).collect())
}

/// See the estimation rule on [`SymbolizationCost`].
const ABBREV_FACTOR: f64 = 11.0;
const LINE_FACTOR: f64 = 1.7;
const INFO_FACTOR: f64 = 0.05;
const FIXED_BYTES: u64 = 8 << 20;

/// Sections gimli's addr2line reads; unwinding tables and index sections are not counted.
fn loaded_by_symbolizer(name: &str) -> bool {
    let Some(base) = dwarf_base(name) else {
        return false;
    };
    !matches!(
        base,
        "frame"
            | "pubnames"
            | "pubtypes"
            | "gnu_pubnames"
            | "gnu_pubtypes"
            | "gdb_scripts"
            | "macro"
            | "macinfo"
    )
}

/// `info` for `.debug_info` or `.zdebug_info`.
fn dwarf_base(name: &str) -> Option<&str> {
    name.strip_prefix(".debug_")
        .or_else(|| name.strip_prefix(".zdebug_"))
}

fn mib(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn write(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    #[test]
    fn this_debug_test_binary_has_dwarf() {
        let exe = std::env::current_exe().unwrap();
        let sections = debug_sections(&exe).unwrap();
        let info = sections.iter().find(|s| s.name == ".debug_info").unwrap();
        assert!(info.uncompressed_bytes > 100_000, "{info:?}");
        assert!(sections.iter().any(|s| s.name == ".debug_line"));
        assert!(!sections.iter().any(|s| s.name == ".debug_frame"));

        let cost = SymbolizationCost::of_current_exe().unwrap();
        assert!(cost.uncompressed_bytes >= cost.file_bytes.min(cost.uncompressed_bytes));
        assert!(cost.estimated_bytes > cost.uncompressed_bytes);
        let line = cost.to_string();
        assert!(line.starts_with("one symbolization would cost ~"), "{line}");
        // libc's frames start every thread: its debug info is read too, when installed.
        for l in &cost.libraries {
            assert!(l.sections.iter().any(|s| s.name.ends_with("info")), "{l:?}");
        }
    }

    #[test]
    fn non_elf_and_broken_files_are_errors() {
        let (_d, text) = write(b"#!/bin/sh\necho not elf\n");
        assert!(matches!(
            debug_sections(&text),
            Err(Error::Parse {
                reason: "not an ELF file",
                ..
            })
        ));
        let (_d, empty) = write(b"");
        assert!(matches!(debug_sections(&empty), Err(Error::Parse { .. })));
        assert!(matches!(
            debug_sections(Path::new("/nonexistent/bin")),
            Err(Error::Io { .. })
        ));

        // A real header whose section table lies beyond the end of the file.
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let (_d, truncated) = write(&exe[..4096]);
        assert!(matches!(
            debug_sections(&truncated),
            Err(Error::Parse { .. })
        ));

        // A 32-bit class byte on a 64-bit header: inconsistent.
        let mut elf32 = exe[..64].to_vec();
        elf32[4] = 1;
        let (_d, elf32) = write(&elf32);
        assert!(matches!(debug_sections(&elf32), Err(Error::Parse { .. })));

        // Garbage after a valid identification never panics.
        let mut garbage = b"\x7fELF\x02\x01\x01".to_vec();
        garbage.extend((0..200u32).map(|i| (i * 37 % 251) as u8));
        let (_d, garbage) = write(&garbage);
        assert!(debug_sections(&garbage).is_err());
    }

    #[test]
    fn sections_are_found_in_a_hand_built_elf_with_compression() {
        let elf = tiny_elf();
        let (_d, path) = write(&elf);
        let sections = debug_sections(&path).unwrap();
        let expected = vec![
            DebugSection {
                name: ".debug_info".into(),
                file_bytes: 40,
                uncompressed_bytes: 1000,
                compressed: true,
            },
            DebugSection {
                name: ".debug_line".into(),
                file_bytes: 16,
                uncompressed_bytes: 16,
                compressed: false,
            },
        ];
        assert_eq!(sections, expected);
        let cost = SymbolizationCost::of_binary(&path).unwrap();
        assert_eq!(cost.uncompressed_bytes, 1016);
        // 1000 inflated + 11 × 0 abbrev + 1.7 × 16 line + 0.05 × 1000 info on the heap, the
        // 16 uncompressed bytes mapped, plus the fixed part.
        assert_eq!(cost.estimated_heap_bytes, (8 << 20) + 1000 + 27 + 50);
        assert_eq!(cost.estimated_bytes, cost.estimated_heap_bytes + 16);
    }

    /// ELF64 LE: header, a compressed .debug_info, a plain .debug_line, .debug_frame (not
    /// counted), the name table, then 5 section headers (null, info, line, frame, shstrtab).
    fn tiny_elf() -> Vec<u8> {
        let names = b"\0.debug_info\0.debug_line\0.debug_frame\0.shstrtab\0";
        let mut f = vec![0u8; 64];
        f[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
        let info_off = f.len() as u64;
        let mut chdr = Vec::new();
        chdr.extend(1u32.to_le_bytes()); // ELFCOMPRESS_ZLIB
        chdr.extend(0u32.to_le_bytes());
        chdr.extend(1000u64.to_le_bytes());
        chdr.extend(1u64.to_le_bytes());
        f.extend(&chdr);
        f.extend([0u8; 16]);
        let line_off = f.len() as u64;
        f.extend([0u8; 16]);
        let names_off = f.len() as u64;
        f.extend(names);
        let shoff = f.len() as u64;
        let mut shdr = |name: u32, kind: u32, flags: u64, offset: u64, size: u64| {
            let mut h = vec![0u8; 64];
            h[0..4].copy_from_slice(&name.to_le_bytes());
            h[4..8].copy_from_slice(&kind.to_le_bytes());
            h[8..16].copy_from_slice(&flags.to_le_bytes());
            h[24..32].copy_from_slice(&offset.to_le_bytes());
            h[32..40].copy_from_slice(&size.to_le_bytes());
            f.extend(h);
        };
        shdr(0, 0, 0, 0, 0);
        shdr(1, 1, 0x800, info_off, 40); // SHF_COMPRESSED
        shdr(13, 1, 0, line_off, 16);
        shdr(25, 1, 0, line_off, 16);
        shdr(38, 3, 0, names_off, names.len() as u64);
        f[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        f[0x3A..0x3C].copy_from_slice(&64u16.to_le_bytes());
        f[0x3C..0x3E].copy_from_slice(&5u16.to_le_bytes());
        f[0x3E..0x40].copy_from_slice(&4u16.to_le_bytes());
        f
    }
}

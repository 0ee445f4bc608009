//! The DWARF sections of a binary, from a small hand-written ELF64 section-header reader, and
//! what one std backtrace symbolization would cost in memory.
//!
//! Only the ELF header, the section header table and the section-name table are read (plus 24
//! bytes per compressed section), never the sections themselves: cheap enough for startup.

use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

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

/// What symbolizing one backtrace in this binary would cost.
///
/// Estimation rule: five times the uncompressed DWARF total. std's symbolizer (backtrace-rs
/// with gimli/addr2line) maps the binary and reads the DWARF sections (inflating compressed
/// ones onto the heap): about 1× becomes resident. It then parses units, line programs and
/// function lists into heap structures, and keeps them cached for the rest of the process:
/// about 4× more. Calibrated on a debug test binary (10.6 MB DWARF: +52 MB RSS, of which
/// +41 MB heap still allocated after the backtrace was printed); consistent with +60 to
/// +200 MiB seen on service binaries with 15–40 MB of DWARF. Split DWARF (`.dwp`) next to the
/// binary is not counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymbolizationCost {
    /// The binary examined (`/proc/self/exe` resolved, for the log).
    pub binary: PathBuf,
    /// The DWARF sections found, in file order.
    pub sections: Vec<DebugSection>,
    /// Sum of `file_bytes`.
    pub file_bytes: u64,
    /// Sum of `uncompressed_bytes`.
    pub uncompressed_bytes: u64,
    /// Estimated memory growth of one symbolization (see the rule above).
    pub estimated_bytes: u64,
}

impl SymbolizationCost {
    /// The cost for the running binary.
    pub fn of_current_exe() -> Result<Self, Error> {
        let exe = Path::new("/proc/self/exe");
        let binary = std::fs::read_link(exe).unwrap_or_else(|_| exe.to_path_buf());
        let mut cost = Self::of_binary(exe)?;
        cost.binary = binary;
        Ok(cost)
    }

    /// The cost for the ELF64 binary at `path`.
    pub fn of_binary(path: &Path) -> Result<Self, Error> {
        let sections = debug_sections(path)?;
        let sum =
            |f: fn(&DebugSection) -> u64| sections.iter().map(f).fold(0u64, u64::saturating_add);
        let uncompressed_bytes = sum(|s| s.uncompressed_bytes);
        let estimated_bytes = uncompressed_bytes.saturating_mul(ESTIMATE_FACTOR);
        Ok(Self {
            binary: path.to_path_buf(),
            file_bytes: sum(|s| s.file_bytes),
            uncompressed_bytes,
            estimated_bytes,
            sections,
        })
    }
}

impl fmt::Display for SymbolizationCost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.sections.is_empty() {
            return write!(
                f,
                "no debug info in {}: symbolization is cheap",
                self.binary.display()
            );
        }
        write!(
            f,
            "one symbolization would cost ~{} MiB ({} MiB DWARF in {} sections of {})",
            mib(self.estimated_bytes),
            mib(self.uncompressed_bytes),
            self.sections.len(),
            self.binary.display()
        )
    }
}

/// The DWARF sections of the ELF64 file at `path` that a symbolizer loads. `Error::Parse`
/// when the file is not ELF64 or its headers are inconsistent.
pub fn debug_sections(path: &Path) -> Result<Vec<DebugSection>, Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let bad = |reason| Error::Parse {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = File::open(path).map_err(io)?;

    let mut header = [0u8; 64];
    let read = file.read(&mut header).map_err(io)?;
    if read < 16 || header[..4] != *b"\x7fELF" {
        return Err(bad("not an ELF file"));
    }
    if header[4] != 2 {
        return Err(bad("not a 64-bit ELF file"));
    }
    let endian = match header[5] {
        1 => Endian::Little,
        2 => Endian::Big,
        _ => return Err(bad("unknown ELF byte order")),
    };
    if read < 64 {
        return Err(bad("truncated ELF header"));
    }
    let shoff = endian.u64(&header, 0x28);
    let shentsize = u64::from(endian.u16(&header, 0x3A));
    let mut shnum = u64::from(endian.u16(&header, 0x3C));
    let mut shstrndx = u64::from(endian.u16(&header, 0x3E));
    if shoff == 0 {
        return Ok(Vec::new()); // no section headers (stripped of them): nothing to symbolize
    }
    if shentsize < SHDR_SIZE {
        return Err(bad("section header entries too small"));
    }

    // Extended numbering: counts too large for the header live in section 0.
    let first =
        read_at(&mut file, shoff, SHDR_SIZE).map_err(|_| bad("section headers out of file"))?;
    let first = Shdr::parse(&first, endian);
    if shnum == 0 {
        shnum = first.size;
    }
    if shstrndx == u64::from(SHN_XINDEX) {
        shstrndx = u64::from(first.link);
    }
    if shnum > MAX_SECTIONS || shstrndx >= shnum {
        return Err(bad("implausible section count or name table index"));
    }

    let table = read_at(&mut file, shoff, shnum * shentsize)
        .map_err(|_| bad("section headers out of file"))?;
    let headers: Vec<Shdr> = table
        .chunks_exact(usize::try_from(shentsize).map_err(|_| bad("section header size"))?)
        .map(|raw| Shdr::parse(raw, endian))
        .collect();
    let names_hdr = headers
        .get(usize::try_from(shstrndx).unwrap_or(usize::MAX))
        .ok_or_else(|| bad("name table"))?;
    if names_hdr.size > MAX_NAME_TABLE {
        return Err(bad("section name table too large"));
    }
    let names = read_at(&mut file, names_hdr.offset, names_hdr.size)
        .map_err(|_| bad("section name table out of file"))?;

    let mut sections = Vec::new();
    for h in &headers {
        let Some(name) = name_at(&names, h.name) else {
            continue;
        };
        if !loaded_by_symbolizer(name) || h.kind == SHT_NOBITS {
            continue;
        }
        let (compressed, uncompressed_bytes) = if h.flags & SHF_COMPRESSED != 0 {
            // Elf64_Chdr: ch_type u32, ch_reserved u32, ch_size u64.
            let chdr = read_at(&mut file, h.offset, 24)
                .map_err(|_| bad("compressed section out of file"))?;
            (true, endian.u64(&chdr, 8))
        } else if name.starts_with(".zdebug_") {
            // GNU style: "ZLIB" then the size as big-endian u64.
            let zhdr = read_at(&mut file, h.offset, 12)
                .map_err(|_| bad("compressed section out of file"))?;
            (true, Endian::Big.u64(&zhdr, 4))
        } else {
            (false, h.size)
        };
        sections.push(DebugSection {
            name: name.to_string(),
            file_bytes: h.size,
            uncompressed_bytes,
            compressed,
        });
    }
    Ok(sections)
}

/// See the estimation rule on [`SymbolizationCost`].
const ESTIMATE_FACTOR: u64 = 5;
const SHDR_SIZE: u64 = 64;
const SHN_XINDEX: u16 = 0xffff;
const SHT_NOBITS: u32 = 8;
const SHF_COMPRESSED: u64 = 0x800;
/// Bounds what garbage headers can make us allocate (64 B each: 6.4 MB at most).
const MAX_SECTIONS: u64 = 100_000;
const MAX_NAME_TABLE: u64 = 16 << 20;

#[derive(Clone, Copy)]
enum Endian {
    Little,
    Big,
}

impl Endian {
    fn u16(self, b: &[u8], at: usize) -> u16 {
        let raw = [b[at], b[at + 1]];
        match self {
            Self::Little => u16::from_le_bytes(raw),
            Self::Big => u16::from_be_bytes(raw),
        }
    }

    fn u32(self, b: &[u8], at: usize) -> u32 {
        let mut raw = [0u8; 4];
        raw.copy_from_slice(&b[at..at + 4]);
        match self {
            Self::Little => u32::from_le_bytes(raw),
            Self::Big => u32::from_be_bytes(raw),
        }
    }

    fn u64(self, b: &[u8], at: usize) -> u64 {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(&b[at..at + 8]);
        match self {
            Self::Little => u64::from_le_bytes(raw),
            Self::Big => u64::from_be_bytes(raw),
        }
    }
}

/// The fields of an Elf64_Shdr we use.
struct Shdr {
    name: u32,
    kind: u32,
    flags: u64,
    offset: u64,
    size: u64,
    link: u32,
}

impl Shdr {
    /// `raw` is at least `SHDR_SIZE` bytes (callers read or chunk exactly that).
    fn parse(raw: &[u8], e: Endian) -> Self {
        Self {
            name: e.u32(raw, 0),
            kind: e.u32(raw, 4),
            flags: e.u64(raw, 8),
            offset: e.u64(raw, 24),
            size: e.u64(raw, 32),
            link: e.u32(raw, 40),
        }
    }
}

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

fn name_at(names: &[u8], offset: u32) -> Option<&str> {
    let tail = names.get(usize::try_from(offset).ok()?..)?;
    let end = tail.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&tail[..end]).ok()
}

/// Reads exactly `len` bytes at `offset`; fails on a short file instead of allocating `len`
/// blindly beyond it.
fn read_at(file: &mut File, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    let file_len = file.metadata()?.len();
    if offset.checked_add(len).is_none_or(|end| end > file_len) {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; usize::try_from(len).map_err(|_| std::io::ErrorKind::OutOfMemory)?];
    file.read_exact(&mut buf)?;
    Ok(buf)
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

        // A 32-bit header.
        let mut elf32 = exe[..64].to_vec();
        elf32[4] = 1;
        let (_d, elf32) = write(&elf32);
        assert!(matches!(
            debug_sections(&elf32),
            Err(Error::Parse {
                reason: "not a 64-bit ELF file",
                ..
            })
        ));

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
        assert_eq!(cost.estimated_bytes, 5 * 1016);
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
        shdr(1, 1, SHF_COMPRESSED, info_off, 40);
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

//! What the profile needs from an ELF file: its build id, its loadable segments (to turn
//! runtime addresses into file addresses) and its function symbols (`.symtab`, else
//! `.dynsym`), never its DWARF.
//!
//! Files are read through `object::ReadCache`, which reads only the ranges asked for (headers,
//! notes, the symbol and string tables), not the whole binary; the cache and the symbol table
//! are dropped when the [`ElfInfo`] is.

use std::fs::File;
use std::path::Path;

use object::read::ReadCache;
use object::{Object, ObjectSegment, ObjectSymbol, SegmentFlags, SymbolKind};

use super::Mapping;

/// Bounds the symbols sorted (32 bytes each, names borrowed): far above a large service
/// binary (~100k functions).
const MAX_SYMBOLS: usize = 2_000_000;

/// The parts of one ELF file a profile uses.
pub(crate) struct ElfInfo {
    /// GNU build id, lowercase hex.
    pub build_id: Option<String>,
    /// The PT_LOAD segments.
    pub segments: Vec<Segment>,
}

impl ElfInfo {
    /// Reads the build id and segments of `path`.
    pub fn read(path: &Path) -> Result<ElfInfo, String> {
        Ok(ElfInfo::read_with_functions(path, |_| Vec::new())?.0)
    }

    /// Reads `path`, then names the functions at the link-time addresses `wanted` computes
    /// from it (`None` in, `None` out). The symbol table lives only during the call: sorted
    /// `(address, size, name)` triples borrowing the cached string table.
    pub fn read_with_functions(
        path: &Path,
        wanted: impl FnOnce(&ElfInfo) -> Vec<Option<u64>>,
    ) -> Result<(ElfInfo, Vec<Option<String>>), String> {
        let file = File::open(path).map_err(|err| err.to_string())?;
        let cache = ReadCache::new(file);
        let object = object::File::parse(&cache).map_err(|err| format!("not ELF: {err}"))?;
        let build_id = object
            .build_id()
            .ok()
            .flatten()
            .map(|id| id.iter().map(|b| format!("{b:02x}")).collect());
        let segments = segments(&object);
        let info = ElfInfo { build_id, segments };
        let addresses = wanted(&info);
        if addresses.iter().all(Option::is_none) {
            let names = vec![None; addresses.len()];
            return Ok((info, names));
        }

        let mut symbols: Vec<(u64, u64, &str)> = Vec::new();
        let mut table = object.symbols().peekable();
        let table: Box<dyn Iterator<Item = _>> = if table.peek().is_some() {
            Box::new(table)
        } else {
            Box::new(object.dynamic_symbols())
        };
        for symbol in table.take(MAX_SYMBOLS) {
            if symbol.kind() == SymbolKind::Text
                && symbol.address() != 0
                && let Ok(name) = symbol.name()
            {
                symbols.push((symbol.address(), symbol.size(), name));
            }
        }
        symbols.sort_unstable_by_key(|s| s.0);
        let names = addresses
            .iter()
            .map(|a| a.and_then(|a| function_at(&symbols, a)))
            .collect();
        Ok((info, names))
    }
}

/// The function containing `address`, demangled without its hash.
fn function_at(symbols: &[(u64, u64, &str)], address: u64) -> Option<String> {
    let at = symbols.partition_point(|s| s.0 <= address);
    let &(start, size, name) = symbols.get(at.checked_sub(1)?)?;
    if size != 0 && address - start >= size {
        return None;
    }
    Some(demangle(name))
}

/// Rust (legacy and v0) and plain C names; the hash suffix is dropped.
pub(crate) fn demangle(name: &str) -> String {
    format!("{:#}", rustc_demangle::demangle(name))
}

/// A PT_LOAD segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Segment {
    /// File offset of its bytes (meaningless in a `--only-keep-debug` file).
    offset: u64,
    /// Bytes in the file (0 in a `--only-keep-debug` file).
    file_size: u64,
    /// Link-time address.
    address: u64,
    /// PF_X: profiles keep executable mappings only.
    executable: bool,
}

/// The PT_LOAD segments of an ELF file.
pub(crate) fn segments<'data, R: object::ReadRef<'data>>(
    object: &object::File<'data, R>,
) -> Vec<Segment> {
    object
        .segments()
        .map(|s| {
            let (offset, file_size) = s.file_range();
            let executable =
                matches!(s.flags(), SegmentFlags::Elf { p_flags, .. } if p_flags.0 & PF_X != 0);
            Segment {
                offset,
                file_size,
                address: s.address(),
                executable,
            }
        })
        .collect()
}

/// The link-time address of `runtime_address`, in `mapping`, of the file with `segments`.
///
/// With a single executable segment (the usual case) the mapping is that segment, mapped from
/// its page-rounded start: link = runtime - start + (p_vaddr rounded down to a page). That
/// needs no file offsets, so it also works with a split debug file, whose segments keep their
/// addresses but not their offsets. Otherwise the segment is found by file offset.
pub(crate) fn link_address(
    segments: &[Segment],
    mapping: &Mapping,
    runtime_address: u64,
) -> Option<u64> {
    let delta = runtime_address.checked_sub(mapping.start)?;
    let mut executable = segments.iter().filter(|s| s.executable);
    if let (Some(only), None) = (executable.next(), executable.next()) {
        return Some((only.address & !(PAGE - 1)) + delta);
    }
    let file_offset = delta.checked_add(mapping.file_offset)?;
    segments
        .iter()
        .find(|s| file_offset >= s.offset && file_offset - s.offset < s.file_size)
        .map(|s| s.address + (file_offset - s.offset))
}

/// The page size mappings are rounded to (4 KiB on x86-64 and usual aarch64 kernels).
const PAGE: u64 = 4096;
const PF_X: u32 = 1;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn this_test_binary_has_symbols_segments_and_a_build_id() {
        let exe = std::env::current_exe().unwrap();
        let elf = ElfInfo::read(&exe).unwrap();
        assert!(!elf.segments.is_empty());
        assert!(elf.build_id.as_ref().is_some_and(|id| id.len() >= 16));
        let this =
            this_test_binary_has_symbols_segments_and_a_build_id as *const () as usize as u64;
        // Find our own function by runtime address through /proc/self/maps.
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let mapping = maps
            .lines()
            .filter_map(|l| {
                let mut f = l.split_ascii_whitespace();
                let (s, e) = f.next()?.split_once('-')?;
                let perms = f.next()?;
                let off = f.next()?;
                Some(super::super::Mapping {
                    start: u64::from_str_radix(s, 16).ok()?,
                    limit: u64::from_str_radix(e, 16).ok()?,
                    file_offset: u64::from_str_radix(off, 16).ok()?,
                    path: String::new(),
                    build_id: perms.contains('x').then(String::new),
                })
            })
            .find(|m| m.build_id.is_some() && m.start <= this && this < m.limit)
            .unwrap();
        let (_, names) = ElfInfo::read_with_functions(&exe, |elf| {
            vec![link_address(&elf.segments, &mapping, this)]
        })
        .unwrap();
        let name = names[0].clone().unwrap();
        assert!(
            name.ends_with("this_test_binary_has_symbols_segments_and_a_build_id"),
            "{name}"
        );
    }

    #[test]
    fn demangles_without_hash() {
        assert_eq!(
            demangle("_ZN4core3fmt5write17h0123456789abcdefE"),
            "core::fmt::write"
        );
        assert_eq!(demangle("malloc"), "malloc");
    }
}

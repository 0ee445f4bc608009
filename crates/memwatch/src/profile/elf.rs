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
use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};

/// Bounds the symbols sorted (32 bytes each, names borrowed): far above a large service
/// binary (~100k functions).
const MAX_SYMBOLS: usize = 2_000_000;

/// The parts of one ELF file a profile uses.
pub(crate) struct ElfInfo {
    /// GNU build id, lowercase hex.
    pub build_id: Option<String>,
    /// `(file offset, size, link-time address)` of each PT_LOAD segment.
    pub segments: Vec<(u64, u64, u64)>,
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
        let segments = object
            .segments()
            .map(|s| {
                let (offset, size) = s.file_range();
                (offset, size, s.address())
            })
            .collect();
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

    /// The link-time address of the byte at `file_offset`, if a loadable segment holds it.
    pub fn file_address(&self, file_offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|&&(offset, size, _)| file_offset >= offset && file_offset - offset < size)
            .map(|&(offset, _, address)| address + (file_offset - offset))
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

/// The link-time address of a profile location in `mapping`'s file, described by `elf`.
pub(crate) fn link_address(
    elf: &ElfInfo,
    mapping: &super::Mapping,
    runtime_address: u64,
) -> Option<u64> {
    let file_offset = runtime_address
        .checked_sub(mapping.start)?
        .checked_add(mapping.file_offset)?;
    elf.file_address(file_offset)
}

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
        let (_, names) =
            ElfInfo::read_with_functions(&exe, |elf| vec![link_address(elf, &mapping, this)])
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

//! Offline symbolization with DWARF (feature `cli`): function, file:line and inlined frames
//! from the profiled binary or its split debug file (`objcopy --only-keep-debug`), which
//! keeps the build id and program headers.
//!
//! The file is matched to the profile's mappings by build id when the profile has one (pprof
//! from the gateway, or a raw dump read where it was taken), else by file name; a mismatch is
//! an error, never a silently wrong answer.

use std::path::Path;

use addr2line::gimli;
use object::{Object, ObjectSection};

use super::elf::{demangle, link_address, segments};
use super::names::Qualifier;
use super::{Frame, Profile, ProfileError};

impl Profile {
    /// Symbolizes the locations of the mappings that are `binary` (the executable or its
    /// debug file), replacing what in-process symbolization found. Returns how many
    /// locations got a name.
    pub fn symbolize_offline(&mut self, binary: &Path) -> Result<usize, ProfileError> {
        let fail = |reason: String| ProfileError::Binary {
            path: binary.to_path_buf(),
            reason,
        };
        let data = std::fs::read(binary).map_err(|source| ProfileError::Io {
            path: binary.to_path_buf(),
            source,
        })?;
        let object =
            object::File::parse(&*data).map_err(|err| fail(format!("not an ELF file: {err}")))?;
        let build_id: Option<String> = object
            .build_id()
            .ok()
            .flatten()
            .map(|id| id.iter().map(|b| format!("{b:02x}")).collect());
        let targets = self
            .matching_mappings(binary, build_id.as_deref())
            .map_err(fail)?;

        let segments = segments(&object);
        let context = dwarf_context(&object).map_err(fail)?;
        let symbols = object.symbol_map();

        let mut named = 0;
        let mut qualifier = Qualifier::default();
        for location in &mut self.locations {
            let Some(mapping) = location.mapping.filter(|m| targets.contains(m)) else {
                continue;
            };
            let mapping = &self.mappings[mapping];
            let Some(address) = link_address(&segments, mapping, location.address) else {
                continue;
            };
            let mut frames = context
                .as_ref()
                .map(|c| dwarf_frames(c, address, &mut qualifier))
                .unwrap_or_default();
            // The symbol table has the full path of the outermost function; line-tables-only
            // DWARF names it without its module path.
            if let Some(symbol) = symbols.containing(address) {
                let full = demangle(symbol.name());
                match frames.last_mut() {
                    Some(outer) => outer.function = full,
                    None => frames.push(Frame {
                        function: full,
                        file: None,
                        line: 0,
                    }),
                }
            }
            if !frames.is_empty() {
                location.frames = frames;
                named += 1;
            }
        }
        Ok(named)
    }

    /// Indexes of the mappings that `binary` describes.
    fn matching_mappings(
        &self,
        binary: &Path,
        build_id: Option<&str>,
    ) -> Result<Vec<usize>, String> {
        let with_id: Vec<usize> = (0..self.mappings.len())
            .filter(|&i| build_id.is_some() && self.mappings[i].build_id.as_deref() == build_id)
            .collect();
        if !with_id.is_empty() {
            return Ok(with_id);
        }
        let file_name = binary
            .file_name()
            .and_then(|n| n.to_str())
            .map(|n| n.strip_suffix(".debug").unwrap_or(n))
            .unwrap_or_default();
        let by_name: Vec<usize> = (0..self.mappings.len())
            .filter(|&i| self.mappings[i].path.rsplit('/').next() == Some(file_name))
            .collect();
        if let Some(&i) = by_name.first() {
            return match (&self.mappings[i].build_id, build_id) {
                (Some(expected), found) => Err(format!(
                    "wrong binary: its build id is {}, the profile's {} has {expected}",
                    found.unwrap_or("missing"),
                    self.mappings[i].path
                )),
                (None, _) => Ok(by_name),
            };
        }
        let mapped: Vec<&str> = self.mappings.iter().map(|m| m.path.as_str()).collect();
        Err(format!(
            "wrong binary: no mapping of the profile has its build id {} or its name (mapped: {})",
            build_id.unwrap_or("(none)"),
            mapped.join(", ")
        ))
    }
}

type Reader<'a> = gimli::EndianSlice<'a, gimli::RunTimeEndian>;

/// An addr2line context over the object's DWARF, `None` when it has none.
fn dwarf_context<'a>(
    object: &object::File<'a>,
) -> Result<Option<addr2line::Context<Reader<'a>>>, String> {
    if object.section_by_name(".debug_info").is_none() {
        return Ok(None);
    }
    let endian = if object.is_little_endian() {
        gimli::RunTimeEndian::Little
    } else {
        gimli::RunTimeEndian::Big
    };
    let load = |id: gimli::SectionId| -> Result<Reader<'a>, String> {
        let data = match object.section_by_name(id.name()) {
            Some(section) => {
                let compressed = section
                    .compressed_file_range()
                    .is_ok_and(|r| r.format != object::CompressionFormat::None);
                if compressed {
                    return Err(format!(
                        "{} is compressed: run objcopy --decompress-debug-sections first",
                        id.name()
                    ));
                }
                section.data().unwrap_or(&[])
            }
            None => &[],
        };
        Ok(gimli::EndianSlice::new(data, endian))
    };
    let dwarf = gimli::Dwarf::load(load)?;
    addr2line::Context::from_dwarf(dwarf)
        .map(Some)
        .map_err(|err| format!("bad DWARF: {err}"))
}

/// The frames at `address`, innermost inlined function first, each with its full path (see
/// [`Qualifier`] for line-tables-only DWARF's bare names).
fn dwarf_frames(
    context: &addr2line::Context<Reader<'_>>,
    address: u64,
    qualifier: &mut Qualifier,
) -> Vec<Frame> {
    let mut out = Vec::new();
    let Ok(mut frames) = context.find_frames(address).skip_all_loads() else {
        return out;
    };
    while let Ok(Some(frame)) = frames.next() {
        let function = frame
            .function
            .as_ref()
            .and_then(|f| f.raw_name().ok())
            .map(|name| demangle(&name))
            .unwrap_or_else(|| "??".to_owned());
        let (file, line) = frame
            .location
            .map(|l| (l.file.map(str::to_owned), l.line.unwrap_or(0)))
            .unwrap_or((None, 0));
        let function = qualifier.qualify(function, file.as_deref());
        out.push(Frame {
            function,
            file,
            line,
        });
    }
    out
}

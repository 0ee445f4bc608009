//! Turning a parsed profile into a readable one: build ids, in-process symbolization from
//! ELF symbol tables, and trimming of the allocator's own frames.

use std::path::Path;

use super::elf::{ElfInfo, link_address};
use super::{Frame, Profile};

/// Functions that belong to the allocator or to the plumbing between the program and it.
/// Leading (leaf-side) frames matching these are trimmed, so a sample's first frame is the
/// program's own allocation site.
const ALLOCATOR_PREFIXES: &[&str] = &[
    // jemalloc, prefixed and not, and its profiling machinery.
    "_rjem_",
    "je_",
    "prof_",
    "imalloc",
    "ialloc",
    "irealloc",
    "iralloc",
    "ipalloc",
    "arena_",
    "tcache_",
    "do_rallocx",
    "_Unwind_",
    "__libc_",
    // Rust's allocation shims, the global allocators, and the generic allocation helpers.
    "__rustc::__rust_",
    "__rustc::__rdl_",
    "__rustc::__rg_",
    "__rust_alloc",
    "__rust_realloc",
    "__rust_no_alloc",
    "__rdl_",
    "__rg_",
    "<memwatch::alloc::Allocator as ",
    "<tikv_jemallocator::Jemalloc as ",
    "tikv_jemallocator::",
    "memwatch::alloc::",
    // The whole `alloc` crate (Vec, String, Box, raw_vec...): like Go's heap profiles, which
    // drop runtime.makeslice and friends, a site is where the program asked for memory.
    "alloc::",
    "<alloc::",
];

/// C allocation entry points, matched whole (a prefix would catch `freeaddrinfo`).
const ALLOCATOR_FUNCTIONS: &[&str] = &[
    "malloc",
    "calloc",
    "realloc",
    "free",
    "posix_memalign",
    "aligned_alloc",
    "memalign",
    "valloc",
    "mallocx",
    "rallocx",
    "sdallocx",
];

impl Profile {
    /// Reads the build id of each mapped file that is still readable. Done in the profiled
    /// process (or on the same machine), so an offline symbolizer can check its binary.
    pub fn read_build_ids(&mut self) {
        for mapping in &mut self.mappings {
            if mapping.build_id.is_none()
                && let Ok(info) = ElfInfo::read(Path::new(&mapping.path))
            {
                mapping.build_id = info.build_id;
            }
        }
    }

    /// Names the function at each location from the mapped files' symbol tables (`.symtab`,
    /// else `.dynsym`): no DWARF, so no file:line, no inlined frames, and memory bounded by
    /// the symbol tables, released before returning. Locations already symbolized, and files
    /// that cannot be read (deleted, replaced by another build), are left as they are.
    pub fn symbolize_in_process(&mut self) {
        for m in 0..self.mappings.len() {
            let wanted: Vec<usize> = (0..self.locations.len())
                .filter(|&i| self.locations[i].mapping == Some(m))
                .filter(|&i| self.locations[i].frames.is_empty())
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let mapping = &self.mappings[m];
            let path = Path::new(&mapping.path);
            let locations = &self.locations;
            let result = ElfInfo::read_with_functions(path, |elf| {
                if mapping
                    .build_id
                    .as_ref()
                    .is_some_and(|id| elf.build_id.as_ref() != Some(id))
                {
                    return Vec::new(); // the file was replaced: its symbols would lie
                }
                wanted
                    .iter()
                    .map(|&i| link_address(&elf.segments, mapping, locations[i].address))
                    .collect()
            });
            let Ok((_, names)) = result else { continue };
            for (&i, name) in wanted.iter().zip(names) {
                if let Some(function) = name {
                    self.locations[i].frames = vec![Frame {
                        function,
                        file: None,
                        line: 0,
                    }];
                }
            }
        }
    }

    /// Drops each sample's leading locations whose frames are all allocator internals (see
    /// `ALLOCATOR_PREFIXES`), keeping at least one location; then, in the locations that are
    /// now leaves, the leading inlined frames that are internals (DWARF names inlined std
    /// functions without their path, so their file tells: `library/alloc/src/`).
    /// Unsymbolized locations stop the trimming. Locations no sample uses any more are kept
    /// (harmless in pprof).
    pub fn trim_allocator_frames(&mut self) {
        let internal: Vec<bool> = self
            .locations
            .iter()
            .map(|l| !l.frames.is_empty() && l.frames.iter().all(is_internal_frame))
            .collect();
        let mut leaves = vec![false; self.locations.len()];
        for sample in &mut self.samples {
            let keep_from = sample
                .locations
                .iter()
                .position(|&i| !internal[i])
                .unwrap_or(sample.locations.len().saturating_sub(1));
            sample.locations.drain(..keep_from);
            if let Some(&leaf) = sample.locations.first() {
                leaves[leaf] = true;
            }
        }
        for (location, _) in self.locations.iter_mut().zip(leaves).filter(|(_, l)| *l) {
            let keep_from = location
                .frames
                .iter()
                .position(|f| !is_internal_frame(f))
                .unwrap_or(location.frames.len().saturating_sub(1));
            location.frames.drain(..keep_from);
        }
    }
}

/// Source files of allocator plumbing. DWARF names an inlined function without its path
/// (`alloc`, `reserve<...>`), so for inlined frames the file tells.
const ALLOCATOR_FILES: &[&str] = &[
    "/library/alloc/src/",
    "/tikv-jemallocator-",
    "/tikv-jemalloc-sys-",
    "/memwatch/src/alloc.rs",
];

fn is_internal_frame(frame: &Frame) -> bool {
    is_allocator(&frame.function)
        || frame
            .file
            .as_deref()
            .is_some_and(|f| ALLOCATOR_FILES.iter().any(|p| f.contains(p)))
}

/// Whether `function` is part of the allocator (see `ALLOCATOR_PREFIXES`).
pub(crate) fn is_allocator(function: &str) -> bool {
    ALLOCATOR_FUNCTIONS.contains(&function)
        || ALLOCATOR_PREFIXES.iter().any(|p| function.starts_with(p))
        // `<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem` and the like.
        || (function.starts_with('<') && function.contains(" as alloc::"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::{Location, Sample};
    use super::*;

    fn location(names: &[&str]) -> Location {
        Location {
            address: 0,
            mapping: None,
            frames: names
                .iter()
                .map(|n| Frame {
                    function: (*n).to_string(),
                    file: None,
                    line: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn trims_allocator_frames_and_keeps_one() {
        let mut p = Profile {
            locations: vec![
                location(&["prof_backtrace_impl"]),
                location(&["_rjem_je_malloc_default"]),
                location(&[
                    "<memwatch::alloc::Allocator as core::alloc::global::GlobalAlloc>::alloc",
                ]),
                location(&["alloc::raw_vec::RawVecInner<A>::try_allocate_in"]),
                location(&["app::hold_64_mib"]),
                location(&["main"]),
                location(&[]),
            ],
            samples: vec![
                Sample {
                    locations: vec![0, 1, 2, 3, 4, 5],
                    ..Sample::default()
                },
                Sample {
                    locations: vec![0, 1],
                    ..Sample::default()
                },
                Sample {
                    locations: vec![6, 0, 4],
                    ..Sample::default()
                },
            ],
            ..Profile::default()
        };
        p.trim_allocator_frames();
        assert_eq!(p.samples[0].locations, [4, 5]);
        assert_eq!(p.samples[1].locations, [1]);
        assert_eq!(p.samples[2].locations, [6, 0, 4]);
        let mut inlined = Profile {
            locations: vec![Location {
                address: 0,
                mapping: None,
                frames: vec![
                    Frame {
                        function: "alloc".into(),
                        file: Some(
                            "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/\
                             tikv-jemallocator-0.6.1/src/lib.rs"
                                .into(),
                        ),
                        line: 99,
                    },
                    Frame {
                        function: "alloc".into(),
                        file: Some("/work/main/crates/memwatch/src/alloc.rs".into()),
                        line: 120,
                    },
                    Frame {
                        function: "reserve<alloc::alloc::Global>".into(),
                        file: Some("/rustc/abc/library/alloc/src/raw_vec/mod.rs".into()),
                        line: 673,
                    },
                    Frame {
                        function: "app::fill".into(),
                        file: Some("src/app.rs".into()),
                        line: 9,
                    },
                ],
            }],
            samples: vec![Sample {
                locations: vec![0],
                ..Sample::default()
            }],
            ..Profile::default()
        };
        inlined.trim_allocator_frames();
        assert_eq!(inlined.locations[0].frames.len(), 1);
        assert_eq!(inlined.locations[0].frames[0].function, "app::fill");
        assert!(is_allocator("free"));
        assert!(!is_allocator("freeaddrinfo"));
        assert!(is_allocator(
            "<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem"
        ));
        assert!(!is_allocator(
            "<app::Cache as core::default::Default>::default"
        ));
        assert!(!is_allocator("app::hold_64_mib"));
    }
}

//! What to change: each heavy path's innermost frame in the service's own code, and rules
//! for known culprits that name the mechanism, the call site and the fix.
//!
//! "Own code" is every Rust path whose crate is not a library: std and the async stack,
//! allocators, symbolizers and the usual utility crates ([`DEFAULT_LIBRARY_CRATES`],
//! replaceable). Functions without a Rust path (C symbols, unsymbolized addresses) are
//! never own code.

use std::collections::HashMap;

use super::Profile;
use super::report::stack_names;

/// Crates that are not the service's own code unless the caller says otherwise.
pub const DEFAULT_LIBRARY_CRATES: &[&str] = &[
    "std",
    "core",
    "alloc",
    "tokio",
    "tokio_util",
    "tokio_stream",
    "mio",
    "hyper",
    "hyper_util",
    "h2",
    "http",
    "http_body",
    "http_body_util",
    "axum",
    "axum_core",
    "matchit",
    "tower",
    "tower_http",
    "tower_layer",
    "tower_service",
    "futures",
    "futures_util",
    "futures_core",
    "futures_executor",
    "pin_project_lite",
    "tracing",
    "tracing_core",
    "tracing_subscriber",
    "tracing_log",
    "log",
    "anyhow",
    "eyre",
    "color_eyre",
    "thiserror",
    "bytes",
    "hashbrown",
    "indexmap",
    "smallvec",
    "serde",
    "serde_json",
    "parking_lot",
    "parking_lot_core",
    "crossbeam_channel",
    "crossbeam_utils",
    "gimli",
    "addr2line",
    "object",
    "miniz_oxide",
    "flate2",
    "rustc_demangle",
    "backtrace",
    "memwatch",
    "tikv_jemallocator",
    "tikv_jemalloc_sys",
    "tikv_jemalloc_ctl",
    "jemallocator",
    "jemalloc_sys",
    "mimalloc",
];

/// Which functions are the service's own code.
#[derive(Debug, Clone)]
pub struct OwnCode {
    library: Vec<String>,
}

impl Default for OwnCode {
    fn default() -> Self {
        OwnCode::with_library_crates(DEFAULT_LIBRARY_CRATES.iter().copied())
    }
}

impl OwnCode {
    /// Everything but these crates (and non-Rust symbols) is own code.
    pub fn with_library_crates<S: AsRef<str>>(crates: impl IntoIterator<Item = S>) -> Self {
        OwnCode {
            library: crates.into_iter().map(|c| c.as_ref().to_owned()).collect(),
        }
    }

    /// Whether `function` (a demangled name) belongs to the service.
    pub fn is_own(&self, function: &str) -> bool {
        crate_of(function).is_some_and(|c| !self.library.iter().any(|l| l == c))
    }

    /// Whether a frame is the service's own code: its function is, and its `file:line` (when
    /// known) is not in a dependency's or std's sources. A closure a library's macro expanded
    /// into the service's function (`tracing::error!`) is named after the service's function
    /// but sits in the macro's file: the call site is the frame above it.
    pub fn is_own_frame(&self, function: &str, source: Option<&str>) -> bool {
        self.is_own(function) && !source.is_some_and(is_dependency_source)
    }
}

impl OwnCode {
    /// The index of the innermost own-code frame of a stack (leaf first) from `from` on. A
    /// closure at the same `file:line` as the own frame that called it (a macro's closure,
    /// `tracing::error!`'s, inlined into the function that holds the macro) gives way to that
    /// function: the line is the same, the function's name is the one a person looks for.
    pub fn innermost(&self, names: &[(String, Option<String>)], from: usize) -> Option<usize> {
        let mut at =
            (from..names.len()).find(|&i| self.is_own_frame(&names[i].0, names[i].1.as_deref()))?;
        while is_closure(&names[at].0)
            && let Some(next) = names.get(at + 1)
            && next.1.is_some()
            && next.1 == names[at].1
            && self.is_own_frame(&next.0, next.1.as_deref())
        {
            at += 1;
        }
        Some(at)
    }
}

/// `…::{closure#0}` (v0) or `…::{{closure}}` (legacy), generic arguments aside.
fn is_closure(name: &str) -> bool {
    let head = name.split('<').next().unwrap_or(name);
    head.ends_with("{{closure}}") || head.contains("{closure#")
}

/// Sources of std (`/rustc/<hash>/…`, `/rust/deps/…`) and of registry or git dependencies.
pub fn is_dependency_source(path: &str) -> bool {
    path.starts_with("/rustc/")
        || path.starts_with("/rust/deps/")
        || path.contains("/registry/src/")
        || path.contains("/git/checkouts/")
}

/// The crate a demangled Rust name belongs to: its first path segment, or for
/// `<Type as Trait>::f` the type's crate (the trait's when the type is not a path, as in
/// `<&T as core::fmt::Debug>::fmt`). `None` for names without a path.
pub fn crate_of(function: &str) -> Option<&str> {
    let mut rest = function;
    loop {
        let trimmed = rest
            .trim_start_matches(['<', '&', '(', '[', '*', ' '])
            .trim_start_matches("mut ")
            .trim_start_matches("const ")
            .trim_start_matches("dyn ");
        if trimmed.len() == rest.len() {
            break;
        }
        rest = trimmed;
    }
    let end = rest
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    let (head, tail) = rest.split_at(end);
    if !head.is_empty() && tail.starts_with("::") {
        return Some(head);
    }
    // A type that is not a path (`T`, `u8`, a closure): the trait says whose code it is.
    let (_, trait_path) = rest.split_once(" as ")?;
    crate_of(trait_path).filter(|_| function.starts_with('<'))
}

/// Memory under one own-code frame: the innermost frame of the service's code on its stacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeavyPath {
    /// The own-code function, or `(no frame of the service's code)`.
    pub function: String,
    /// Its `file:line` on the heaviest stack.
    pub source: Option<String>,
    /// Estimated live bytes under it.
    pub bytes: i64,
    /// The leaf (allocating function) of its heaviest stack, when it is not the frame itself.
    pub leaf: Option<String>,
}

/// The label of memory whose stacks hold no own-code frame.
pub const NO_OWN_FRAME: &str = "(no frame of the service's code)";

/// Live bytes grouped by the innermost own-code frame of each stack, heaviest first.
pub fn heavy_paths(profile: &Profile, own: &OwnCode) -> Vec<HeavyPath> {
    // (own frame, its file:line) → (bytes, heaviest stack's bytes, its leaf).
    type Site = (String, Option<String>);
    let mut groups: HashMap<Site, (i64, i64, Option<String>)> = HashMap::new();
    for sample in profile.samples.iter().filter(|s| s.bytes > 0) {
        let names = stack_names(profile, sample);
        let leaf = names.first().map(|(n, _)| n.clone());
        let at = own.innermost(&names, 0);
        let key = match at {
            Some(i) => names[i].clone(),
            None => (NO_OWN_FRAME.to_owned(), None),
        };
        let leaf = match at {
            Some(0) => None,
            _ => leaf,
        };
        let entry = groups.entry(key).or_insert((0, i64::MIN, None));
        entry.0 += sample.bytes;
        if sample.bytes > entry.1 {
            entry.1 = sample.bytes;
            entry.2 = leaf;
        }
    }
    let mut paths: Vec<HeavyPath> = groups
        .into_iter()
        .map(|((function, source), (bytes, _, leaf))| HeavyPath {
            function,
            source,
            bytes,
            leaf,
        })
        .collect();
    paths.sort_by(|a, b| (b.bytes, &a.function).cmp(&(a.bytes, &b.function)));
    paths
}

/// A known culprit found in the profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Short name of the mechanism, e.g. `std backtrace symbolization`.
    pub mechanism: &'static str,
    /// How it takes memory, one sentence.
    pub explanation: String,
    /// Estimated live bytes on the stacks it matched.
    pub bytes: i64,
    /// Where the service triggers it, heaviest first: own-code function, `file:line`, bytes.
    pub call_sites: Vec<(String, Option<String>, i64)>,
    /// What to change.
    pub fix: &'static str,
}

/// Findings are reported from this share of the heap up: smaller ones are not what an
/// incident is made of.
pub const MIN_FINDING_SHARE: f64 = 0.05;

/// The known culprits in `profile`, largest first.
pub fn findings(profile: &Profile, own: &OwnCode) -> Vec<Finding> {
    let total = profile.total_bytes().max(1);
    let mut found = Vec::new();
    for rule in RULES {
        let mut bytes = 0;
        let mut sites: HashMap<(String, Option<String>), i64> = HashMap::new();
        let mut via: HashMap<&'static str, i64> = HashMap::new();
        for sample in profile.samples.iter().filter(|s| s.bytes > 0) {
            let names = stack_names(profile, sample);
            let Some(outermost) = names.iter().rposition(|(n, _)| (rule.matches)(n)) else {
                continue;
            };
            bytes += sample.bytes;
            for (hint, pattern) in rule.formatters {
                if names[outermost..].iter().any(|(n, _)| n.contains(pattern)) {
                    *via.entry(hint).or_default() += sample.bytes;
                    break;
                }
            }
            let site = own
                .innermost(&names, outermost)
                .map(|i| names[i].clone())
                .unwrap_or((NO_OWN_FRAME.to_owned(), None));
            *sites.entry(site).or_default() += sample.bytes;
        }
        if (bytes as f64) < MIN_FINDING_SHARE * total as f64 {
            continue;
        }
        let mut call_sites: Vec<(String, Option<String>, i64)> =
            sites.into_iter().map(|((f, s), b)| (f, s, b)).collect();
        call_sites.sort_by(|a, b| (b.2, &a.0).cmp(&(a.2, &b.0)));
        let how = via.into_iter().max_by_key(|&(_, b)| b).map(|(h, _)| h);
        found.push(Finding {
            mechanism: rule.mechanism,
            explanation: (rule.explain)(how),
            bytes,
            call_sites,
            fix: rule.fix,
        });
    }
    found.sort_by_key(|f| std::cmp::Reverse(f.bytes));
    found
}

/// A known culprit: which frames show it, how to read it, what fixes it.
struct Rule {
    mechanism: &'static str,
    matches: fn(&str) -> bool,
    /// Frames naming how it was reached (first match wins), with the phrase for it.
    formatters: &'static [(&'static str, &'static str)],
    explain: fn(Option<&str>) -> String,
    fix: &'static str,
}

const RULES: &[Rule] = &[Rule {
    mechanism: "std backtrace symbolization under an error's Debug formatting",
    matches: |n| {
        n.contains("backtrace_rs::symbolize")
            || n.contains("std::backtrace::")
            || n.starts_with("<std::backtrace::")
            || n.starts_with("gimli::")
            || n.starts_with("<gimli::")
            || n.starts_with("addr2line::")
            || n.starts_with("<addr2line::")
    },
    formatters: &[
        (
            "anyhow::Error's Debug ({:?}) prints its backtrace",
            "<anyhow::Error as core::fmt::Debug>::fmt",
        ),
        (
            "anyhow::Error's Debug ({:?}) prints its backtrace",
            "anyhow::fmt",
        ),
        (
            "eyre::Report's Debug ({:?}) prints its backtrace",
            "<eyre::Report as core::fmt::Debug>::fmt",
        ),
        (
            "a panic message prints its backtrace (RUST_BACKTRACE)",
            "std::panicking::default_hook",
        ),
        (
            "a std::backtrace::Backtrace is formatted ({:?} or {})",
            "<std::backtrace::Backtrace as core::fmt::",
        ),
    ],
    explain: |how| {
        format!(
            "{}: std symbolizes it by parsing the binary's debug info (gimli, addr2line) \
                 and keeps the parsed DWARF cached for the rest of the process",
            how.unwrap_or("a captured backtrace is printed")
        )
    },
    fix: "log errors with Display ({} or {:#}), never {:?}; and turn library backtraces \
              off: RUST_LIB_BACKTRACE=0 (panics keep theirs), or \
              memwatch::apply_backtrace_policy() first in main \
              (memwatch::backtrace_policy_before_main!() with #[tokio::main])",
}];

#[cfg(test)]
mod tests {
    use super::super::{Frame, Location, Sample};
    use super::*;

    #[test]
    fn crates_of_names() {
        let cases = [
            (
                "engine_gateway::http::streams::Appender::run",
                Some("engine_gateway"),
            ),
            (
                "<gimli::read::abbrev::Abbreviations>::insert",
                Some("gimli"),
            ),
            ("<&T as core::fmt::Debug>::fmt", Some("core")),
            (
                "<engine_gateway::Error as core::fmt::Debug>::fmt",
                Some("engine_gateway"),
            ),
            ("<alloc::vec::Vec<u8> as my::Trait>::f", Some("alloc")),
            ("malloc", None),
            ("gateway+0x1234", None),
        ];
        for (name, krate) in cases {
            assert_eq!(crate_of(name), krate, "{name}");
        }
        let own = OwnCode::default();
        assert!(own.is_own("engine_gateway::auth"));
        assert!(!own.is_own("tokio::runtime::task::raw::poll"));
        assert!(!own.is_own("_start"));
    }

    fn profile(stacks: &[(&[(&str, u32)], i64)]) -> Profile {
        let mut p = Profile::default();
        for (stack, bytes) in stacks {
            let mut locations = Vec::new();
            for &(name, line) in stack.iter() {
                p.locations.push(Location {
                    // Line 0 stands for a macro's closure, in the macro crate's file.
                    frames: vec![Frame {
                        function: name.to_owned(),
                        file: Some(match line {
                            0 => "/root/.cargo/registry/src/i/tracing-0.1.4/src/macros.rs".into(),
                            _ => "src/lib.rs".into(),
                        }),
                        line,
                    }],
                    ..Location::default()
                });
                locations.push(p.locations.len() - 1);
            }
            p.samples.push(Sample {
                locations,
                objects: 1,
                bytes: *bytes,
            });
        }
        p
    }

    #[test]
    fn the_backtrace_rule_names_the_formatting_call_site() {
        let p = profile(&[
            (
                &[
                    ("<gimli::read::abbrev::Abbreviations>::insert", 1),
                    ("<std::backtrace::Backtrace as core::fmt::Debug>::fmt", 2),
                    ("<anyhow::Error as core::fmt::Debug>::fmt", 3),
                    ("core::fmt::write", 4),
                    ("svc::http::auth::{closure#0}", 0),
                    ("svc::{closure#1}", 42),
                    ("svc::http::auth", 42),
                    ("svc::http::handle::{async_fn#0}", 7),
                    ("tokio::runtime::task::raw::poll", 9),
                ],
                90,
            ),
            (
                &[
                    ("alloc::vec::Vec::with_capacity", 1),
                    ("svc::cache::fill", 12),
                ],
                10,
            ),
        ]);
        let own = OwnCode::default();
        let paths = heavy_paths(&p, &own);
        assert_eq!(paths[0].function, "svc::http::auth");
        assert_eq!(paths[0].source.as_deref(), Some("src/lib.rs:42"));
        assert_eq!(
            paths[0].leaf.as_deref(),
            Some("<gimli::read::abbrev::Abbreviations>::insert")
        );
        assert_eq!(
            (paths[1].function.as_str(), paths[1].bytes),
            ("svc::cache::fill", 10)
        );

        let found = findings(&p, &own);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].bytes, 90);
        assert!(found[0].explanation.starts_with("anyhow::Error's Debug"));
        assert_eq!(
            found[0].call_sites,
            [("svc::http::auth".into(), Some("src/lib.rs:42".into()), 90)]
        );
        assert!(found[0].fix.contains("RUST_LIB_BACKTRACE=0"));
        // With `svc` on the library list nothing is own code.
        let none =
            OwnCode::with_library_crates(DEFAULT_LIBRARY_CRATES.iter().copied().chain(["svc"]));
        assert_eq!(heavy_paths(&p, &none)[0].function, NO_OWN_FRAME);
    }
}

//! Fully qualified names for frames whose DWARF gives only a bare one.
//!
//! Full debug info (`debug = true`) gives every function, inlined ones included, a linkage
//! name, demangled into its whole path (`engine_gateway::http::streams::Appender::run`).
//! Line-tables-only debug info (`debug = "line-tables-only"`, and std's own prebuilt
//! library) gives inlined functions only their bare name (`run`, `{async_fn#0}`,
//! `next<usize>`): pprof then merges every `{async_fn#0}` into one node, and a person cannot
//! tell whose it is. Such a name is qualified here with the module path its source file
//! implies: `/rustc/…/library/core/src/iter/range.rs` is `core::iter::range`,
//! `…/registry/src/…/tokio-1.40.0/src/runtime/task/core.rs` is `tokio::runtime::task::core`,
//! a workspace file `crates/gateway/src/http/streams.rs` is `engine_gateway::http::streams`
//! (the crate name read from the package's `Cargo.toml` when the file is on this machine, else
//! the directory name). What the file cannot tell (an inline `mod`, the `impl` type) is
//! missing, never wrong.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

/// Qualifies bare names; caches one crate name per package directory.
#[derive(Default)]
pub(crate) struct Qualifier {
    crates: HashMap<PathBuf, String>,
}

impl Qualifier {
    /// `name` when it is already a path, else `module::name` with the module `file` implies.
    pub(crate) fn qualify(&mut self, name: String, file: Option<&str>) -> String {
        // A path already (`a::b`, `<T as a::Tr>::f`); generic arguments (`poll<a::B>`) do not
        // make a bare name a path.
        let head = name.split('<').next().unwrap_or_default();
        // `__rust_alloc` and friends are the compiler's symbols, wherever they were emitted.
        if name.starts_with('<') || name.starts_with("__") || head.contains("::") || name == "??" {
            return name;
        }
        match file.and_then(|f| self.module_path(f)) {
            Some(module) => format!("{module}::{name}"),
            None => name,
        }
    }

    /// The module path of a Rust source file, `None` when it is not one.
    pub(crate) fn module_path(&mut self, file: &str) -> Option<String> {
        let path = normalize(Path::new(file));
        let parts: Vec<&str> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => s.to_str(),
                _ => None,
            })
            .collect();
        let last = parts.last()?;
        let stem = last.strip_suffix(".rs")?;
        // The crate root directory is the one before the last `src`, `tests`, `examples` or
        // `benches`; test, example and bench targets are crates named after their file.
        let at = parts[..parts.len() - 1]
            .iter()
            .rposition(|p| matches!(*p, "src" | "tests" | "examples" | "benches"))?;
        let kind = parts[at];
        let dir = *parts.get(at.checked_sub(1)?)?;
        let mut module: Vec<String> = Vec::new();
        let inner = &parts[at + 1..parts.len() - 1];
        if kind == "src" {
            module.push(self.crate_name(&path, &parts, at, dir));
            module.extend(inner.iter().map(|s| s.to_string()));
            if inner.first() == Some(&"bin") {
                // src/bin/tool.rs or src/bin/tool/main.rs: the crate is the binary.
                module.clear();
                module.extend(inner.iter().skip(1).map(|s| s.replace('-', "_")));
                if module.is_empty() {
                    module.push(stem.replace('-', "_"));
                }
                if !matches!(stem, "main" | "mod") && inner.len() > 1 {
                    module.push(stem.to_string());
                }
                return Some(module.join("::"));
            }
        } else {
            // tests/foo.rs, tests/foo/bar.rs (a module of another test), tests/foo/main.rs.
            if inner.is_empty() {
                return Some(stem.replace('-', "_"));
            }
            module.extend(inner.iter().map(|s| s.replace('-', "_")));
        }
        if !matches!(stem, "lib" | "main" | "mod") {
            module.push(stem.to_string());
        }
        Some(module.join("::"))
    }

    /// The crate whose root directory is `parts[at - 1]`.
    fn crate_name(&mut self, path: &Path, parts: &[&str], at: usize, dir: &str) -> String {
        // std's library: /rustc/<hash>/library/<crate>/src/…; std vendors backtrace-rs as a
        // module and its other dependencies under /rust/deps/<name>-<version>.
        if at >= 2 && parts[at - 2] == "library" {
            return match dir {
                "backtrace" => "std::backtrace_rs".to_string(),
                "stdarch" | "core_arch" => "core::arch".to_string(),
                other => other.replace('-', "_"),
            };
        }
        if let Some(name) = strip_version(dir) {
            return name.replace('-', "_");
        }
        let root: PathBuf = path
            .ancestors()
            .find(|a| a.file_name().is_some_and(|n| n == dir))
            .map(Path::to_path_buf)
            .unwrap_or_default();
        if let Some(name) = self.crates.get(&root) {
            return name.clone();
        }
        let name = package_name(&root.join("Cargo.toml")).unwrap_or_else(|| dir.to_string());
        let name = name.replace('-', "_");
        self.crates.insert(root, name.clone());
        name
    }
}

/// `tokio` for `tokio-1.40.0`, `None` when `dir` has no `-<version>` suffix.
fn strip_version(dir: &str) -> Option<&str> {
    let (name, version) = dir.rsplit_once('-')?;
    let digits = version.split(['.', '+']).next()?;
    (!name.is_empty() && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .then_some(name)
}

/// `[lib] name`, else `[package] name`, from a manifest; a line-based read, enough for the
/// usual `name = "…"` form.
fn package_name(manifest: &Path) -> Option<String> {
    let text = std::fs::read_to_string(manifest).ok()?;
    let mut section = "";
    let (mut package, mut lib) = (None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line;
            continue;
        }
        let Some(value) = line
            .strip_prefix("name")
            .map(str::trim_start)
            .and_then(|l| l.strip_prefix('='))
        else {
            continue;
        };
        let value = value.trim().trim_matches('"').to_string();
        match section {
            "[package]" => package = Some(value),
            "[lib]" => lib = Some(value),
            _ => {}
        }
    }
    lib.or(package)
}

/// `a/b/../c` → `a/c` (std's paths read `library/std/src/../../backtrace/…`).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_names_get_the_module_their_file_implies() {
        let mut q = Qualifier::default();
        let cases = [
            (
                "/rustc/59807616/library/core/src/iter/range.rs",
                "core::iter::range",
            ),
            (
                "/rustc/5980/library/std/src/../../backtrace/src/symbolize/gimli/stash.rs",
                "std::backtrace_rs::symbolize::gimli::stash",
            ),
            (
                "/rust/deps/gimli-0.32.3/src/read/line.rs",
                "gimli::read::line",
            ),
            (
                "/root/.cargo/registry/src/index.crates.io-1949/tokio-1.40.0/src/runtime/task/mod.rs",
                "tokio::runtime::task",
            ),
            (
                "/root/.cargo/registry/src/x/tower-http-0.6.2/src/lib.rs",
                "tower_http",
            ),
            (
                "/nowhere/crates/memwatch/tests/recorder_oom.rs",
                "recorder_oom",
            ),
            (
                "/nowhere/crates/loadgen/src/bin/gateway-bench/main.rs",
                "gateway_bench",
            ),
        ];
        for (file, module) in cases {
            assert_eq!(q.module_path(file).as_deref(), Some(module), "{file}");
        }
        // This crate's own sources: the name comes from its Cargo.toml.
        let own = concat!(env!("CARGO_MANIFEST_DIR"), "/src/profile/names.rs");
        assert_eq!(
            q.qualify("run".into(), Some(own)),
            "memwatch::profile::names::run"
        );
        assert_eq!(
            q.qualify("a::b".into(), Some(own)),
            "a::b",
            "paths are kept"
        );
        assert_eq!(q.qualify("memcpy".into(), Some("/usr/src/x.c")), "memcpy");
        assert_eq!(
            q.qualify("__rust_alloc_zeroed".into(), Some(own)),
            "__rust_alloc_zeroed"
        );
        let tokio = "/r/registry/src/i/tokio-1.54.1/src/runtime/task/core.rs";
        assert_eq!(
            q.qualify("poll<svc::Task, tokio::Sched>".into(), Some(tokio)),
            "tokio::runtime::task::core::poll<svc::Task, tokio::Sched>"
        );
        assert_eq!(
            q.qualify("<svc::A as core::fmt::Debug>::fmt".into(), Some(tokio)),
            "<svc::A as core::fmt::Debug>::fmt"
        );
        assert_eq!(q.qualify("{async_fn#0}".into(), None), "{async_fn#0}");
    }
}

//! The first screen of `memwatch report`: what to change (known culprits with their call
//! site and fix), then where the memory is by the service's own frames.

use std::io::Write;
use std::path::PathBuf;

use memwatch::profile::{
    DEFAULT_LIBRARY_CRATES, NO_OWN_FRAME, OwnCode, Profile, findings, heavy_paths, human_bytes,
    short_source,
};

/// How many heavy paths the first screen lists.
const HEAVY_PATHS: usize = 6;

/// The crates that are not the service's code: `--library-crates` replaces the default list,
/// `--also-library` extends it.
#[derive(clap::Args, Clone, Default)]
pub(crate) struct OwnCodeArgs {
    /// Comma-separated crates that are not the service's own code, replacing the default list
    /// (std, core, alloc, tokio, hyper, axum, tower, futures, tracing, anyhow, gimli, addr2line,
    /// jemalloc crates, …: see `memwatch::profile::DEFAULT_LIBRARY_CRATES`).
    #[arg(long, value_delimiter = ',')]
    pub(crate) library_crates: Option<Vec<String>>,
    /// Comma-separated crates to add to the library list (e.g. an in-house framework).
    #[arg(long, value_delimiter = ',')]
    pub(crate) also_library: Vec<String>,
}

impl OwnCodeArgs {
    pub(crate) fn own_code(&self) -> OwnCode {
        let mut crates: Vec<String> = match &self.library_crates {
            Some(list) => list.clone(),
            None => DEFAULT_LIBRARY_CRATES
                .iter()
                .map(|c| c.to_string())
                .collect(),
        };
        crates.extend(self.also_library.iter().cloned());
        OwnCode::with_library_crates(crates)
    }
}

/// The working directory, to print sources under it relative to it.
pub(crate) fn base_dir() -> Option<PathBuf> {
    std::env::current_dir().ok()
}

fn source(s: Option<&str>) -> String {
    s.map(|s| short_source(s, base_dir().as_deref()))
        .unwrap_or_else(|| "no file:line".to_string())
}

/// "What to change" and the heavy paths.
pub(crate) fn write_advice(
    out: &mut impl Write,
    profile: &Profile,
    own: &OwnCode,
) -> std::io::Result<()> {
    let total = profile.total_bytes().max(1);
    let share = |b: i64| b as f64 * 100.0 / total as f64;
    let found = findings(profile, own);
    writeln!(out, "what to change")?;
    if found.is_empty() {
        writeln!(
            out,
            "  no known culprit; start from the heaviest path of the service's own code below"
        )?;
    }
    for (i, f) in found.iter().enumerate() {
        writeln!(
            out,
            "  {}. {}: {} ({:.0} % of the heap)",
            i + 1,
            f.mechanism,
            human_bytes(f.bytes),
            share(f.bytes)
        )?;
        wrapped(out, "     mechanism  ", &f.explanation)?;
        for (n, (function, src, bytes)) in f.call_sites.iter().take(3).enumerate() {
            let label = if n == 0 { "call site" } else { "         " };
            if function == NO_OWN_FRAME {
                writeln!(
                    out,
                    "     {label}  {function} on {} of its stacks: is your crate on --library-crates?",
                    human_bytes(*bytes)
                )?;
                continue;
            }
            let text = format!(
                "{function} at {} ({}): the line that formats the error",
                source(src.as_deref()),
                human_bytes(*bytes)
            );
            wrapped(out, &format!("     {label}  "), &text)?;
        }
        wrapped(out, "     fix        ", f.fix)?;
    }
    writeln!(
        out,
        "\nheavy paths, by the innermost frame of the service's own code"
    )?;
    writeln!(
        out,
        "{:>12} {:>6}  own frame at file:line  [allocating leaf]",
        "live", "share"
    )?;
    for path in heavy_paths(profile, own).into_iter().take(HEAVY_PATHS) {
        let at = match &path.source {
            Some(s) => format!(" at {}", source(Some(s))),
            None => String::new(),
        };
        let leaf = path
            .leaf
            .map(|l| format!("  [{}]", shorten(&l, 60)))
            .unwrap_or_default();
        writeln!(
            out,
            "{:>12} {:>5.1}%  {}{at}{leaf}",
            human_bytes(path.bytes).to_string(),
            share(path.bytes),
            path.function,
        )?;
    }
    Ok(())
}

/// Width the first screen's prose is wrapped to.
const COLUMNS: usize = 100;

/// `text` after `prefix`, wrapped at spaces to [`COLUMNS`], continuation lines indented as
/// far as the prefix.
fn wrapped(out: &mut impl Write, prefix: &str, text: &str) -> std::io::Result<()> {
    let indent = prefix.chars().count();
    let mut line = prefix.to_owned();
    let mut width = indent;
    let mut first_word = true;
    for word in text.split(' ') {
        let len = word.chars().count();
        if !first_word && width + 1 + len > COLUMNS {
            writeln!(out, "{line}")?;
            line = " ".repeat(indent);
            width = indent;
            first_word = true;
        }
        if !first_word {
            line.push(' ');
            width += 1;
        }
        line.push_str(word);
        width += len;
        first_word = false;
    }
    writeln!(out, "{line}")
}

/// A long generic name cut to `max` characters with `…`.
fn shorten(name: &str, max: usize) -> String {
    if name.chars().count() <= max {
        return name.to_owned();
    }
    let mut cut: String = name.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

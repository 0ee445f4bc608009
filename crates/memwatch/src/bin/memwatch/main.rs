//! `memwatch`: reads heap profiles captured by a service (raw jemalloc dumps or pprof from
//! `/debug/pprof/heap`) and the flight recorder's capture directories, and explains them
//! offline, with file:line from the binary's DWARF.
//!
//! ```text
//! memwatch top FILE [--binary BIN] [-n 20]
//! memwatch diff BASE NEW [--binary BIN] [-n 20]
//! memwatch flamegraph FILE [--binary BIN] [--all-frames] -o OUT.svg
//! memwatch symbolize FILE --binary BIN -o OUT.pb.gz
//! memwatch captures DIR
//! memwatch cost BINARY
//! memwatch report CAPTURE [--binary BIN] [--baseline CAPTURE|PROFILE] [-o DIR | --svg FILE]
//!                [--library-crates LIST | --also-library LIST] [--all-frames]
//! ```

mod advice;
mod captures;
mod report;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use memwatch::profile::{FlameOptions, Profile, diff, flamegraph_svg_with, human_bytes, top};

/// Explain heap profiles offline.
#[derive(Parser)]
#[command(name = "memwatch", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The functions holding the most live memory.
    Top {
        /// Raw jemalloc heap dump or pprof (gzip or not).
        file: PathBuf,
        #[command(flatten)]
        symbols: Symbols,
        /// How many functions to show.
        #[arg(short = 'n', long, default_value_t = 20)]
        count: usize,
    },
    /// The functions whose live memory grew most from BASE to NEW.
    Diff {
        base: PathBuf,
        new: PathBuf,
        #[command(flatten)]
        symbols: Symbols,
        #[arg(short = 'n', long, default_value_t = 20)]
        count: usize,
    },
    /// A flame graph of live memory, as SVG.
    Flamegraph {
        file: PathBuf,
        #[command(flatten)]
        symbols: Symbols,
        /// Where to write the SVG (interactive in a browser: click to zoom, Ctrl-F to search).
        #[arg(short = 'o', long)]
        output: PathBuf,
        /// Show every frame instead of collapsing async-runtime and std plumbing.
        #[arg(long)]
        all_frames: bool,
    },
    /// Rewrites a profile as gzip pprof with file:line from the binary's debug info.
    Symbolize {
        file: PathBuf,
        #[command(flatten)]
        symbols: Symbols,
        #[arg(short = 'o', long)]
        output: PathBuf,
    },
    /// What printing one backtrace would cost a process running BINARY on this machine (its
    /// DWARF and this machine's libc debug info), as the service's startup check estimates it.
    Cost { binary: PathBuf },
    /// Lists the flight recorder's captures in a directory, oldest first.
    Captures {
        /// The recorder's capture directory (the parent of the `capture-*` directories).
        dir: PathBuf,
    },
    /// Explains one capture: trigger, memory figures, top allocation sites, the diff against
    /// the previous capture, and SVGs of the timeline and of the heap.
    Report(report::ReportArgs),
}

#[derive(clap::Args)]
pub(crate) struct Symbols {
    /// The profiled binary, or its split debug file (BIN.debug), for function names and
    /// file:line. Must be the same build (checked by build id when the profile has one).
    #[arg(long)]
    pub(crate) binary: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err)
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("memwatch: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Top {
            file,
            symbols,
            count,
        } => write_top(&mut out, &load(&file, &symbols)?, count, false)?,
        Command::Diff {
            base,
            new,
            symbols,
            count,
        } => {
            let base = load(&base, &symbols)?;
            let new = load(&new, &symbols)?;
            write_diff(&mut out, &base, &new, count)?;
        }
        Command::Flamegraph {
            file,
            symbols,
            output,
            all_frames,
        } => {
            let profile = load(&file, &symbols)?;
            let options = FlameOptions {
                title: format!("heap {}", file.display()),
                all_frames,
            };
            std::fs::write(&output, flamegraph_svg_with(&profile, &options))
                .with_context(|| format!("writing {}", output.display()))?;
        }
        Command::Symbolize {
            file,
            symbols,
            output,
        } => {
            if symbols.binary.is_none() {
                bail!("symbolize needs --binary");
            }
            let profile = load(&file, &symbols)?;
            std::fs::write(&output, profile.to_pprof_gzip())
                .with_context(|| format!("writing {}", output.display()))?;
        }
        Command::Cost { binary } => {
            let cost = memwatch::SymbolizationCost::of_binary_with_these_libraries(&binary)
                .with_context(|| format!("reading {}", binary.display()))?;
            writeln!(
                out,
                "{cost}\nestimated_bytes={} estimated_heap_bytes={}",
                cost.estimated_bytes, cost.estimated_heap_bytes
            )?;
        }
        Command::Captures { dir } => captures::list(&mut out, &dir)?,
        Command::Report(args) => report::report(&mut out, &args)?,
    }
    out.flush()?;
    Ok(())
}

/// The functions holding the most live memory, as a table; with `sites_only`, only those
/// that allocated some of it themselves (flat > 0), not their callers.
pub(crate) fn write_top(
    out: &mut impl Write,
    profile: &Profile,
    count: usize,
    sites_only: bool,
) -> std::io::Result<()> {
    let total = profile.total_bytes().max(1) as f64;
    writeln!(
        out,
        "{:>12} {:>6} {:>12} {:>6}  function",
        "flat", "flat%", "cum", "cum%"
    )?;
    let rows = top(profile).into_iter();
    for row in rows.filter(|r| !sites_only || r.flat_bytes > 0).take(count) {
        let base = advice::base_dir();
        let source = row
            .source
            .map(|s| {
                format!(
                    " ({})",
                    memwatch::profile::short_source(&s, base.as_deref())
                )
            })
            .unwrap_or_default();
        writeln!(
            out,
            "{:>12} {:>5.1}% {:>12} {:>5.1}%  {}{source}",
            human_bytes(row.flat_bytes).to_string(),
            row.flat_bytes as f64 * 100.0 / total,
            human_bytes(row.cum_bytes).to_string(),
            row.cum_bytes as f64 * 100.0 / total,
            row.function,
        )?;
    }
    Ok(())
}

/// The functions whose live memory grew most from `base` to `new`, as a table.
pub(crate) fn write_diff(
    out: &mut impl Write,
    base: &Profile,
    new: &Profile,
    count: usize,
) -> std::io::Result<()> {
    writeln!(
        out,
        "total {} -> {} ({:+})",
        human_bytes(base.total_bytes()),
        human_bytes(new.total_bytes()),
        human_bytes(new.total_bytes() - base.total_bytes())
    )?;
    writeln!(
        out,
        "{:>12} {:>12} {:>12}  function",
        "delta", "base", "new"
    )?;
    for row in diff(base, new).into_iter().take(count) {
        writeln!(
            out,
            "{:>12} {:>12} {:>12}  {}",
            format!("{:+}", human_bytes(row.delta())),
            human_bytes(row.base_bytes).to_string(),
            human_bytes(row.new_bytes).to_string(),
            row.function
        )?;
    }
    Ok(())
}

/// Reads a profile and symbolizes it: with DWARF from `--binary`, else from the mapped
/// files' symbol tables if they are on this machine (raw dumps read where they were taken).
pub(crate) fn load(path: &Path, symbols: &Symbols) -> anyhow::Result<Profile> {
    let mut profile =
        Profile::read_file(path).with_context(|| format!("reading {}", path.display()))?;
    match &symbols.binary {
        Some(binary) => {
            let named = profile
                .symbolize_offline(binary)
                .with_context(|| format!("symbolizing {}", path.display()))?;
            if named == 0 && !profile.samples.is_empty() {
                bail!(
                    "{} names no address of {}: wrong binary?",
                    binary.display(),
                    path.display()
                );
            }
        }
        None => profile.symbolize_in_process(),
    }
    profile.trim_allocator_frames();
    Ok(profile)
}

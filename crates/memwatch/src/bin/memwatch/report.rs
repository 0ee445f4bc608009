//! `memwatch report CAPTURE`: one capture explained offline. Its first screen says what to
//! change (known culprits: mechanism, call site, fix) and where the memory is by the
//! service's own frames; then the capture's metadata, the top allocation sites symbolized with
//! the binary that ran, the diff against the previous capture (or a baseline); and it writes
//! the timeline chart, an interactive flame graph and the heap as symbolized pprof.
//!
//! The binary: `--binary`, else the path recorded in `meta.txt` when it still exists. Either
//! must have the build id recorded in the capture; a different build is refused (`--binary`)
//! or not used (the recorded path, rebuilt since), never used to print wrong names.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use memwatch::profile::{FlameOptions, Profile, flamegraph_svg_with};
use memwatch::{CaptureInfo, read_timeline, timeline_svg};

use crate::advice::{OwnCodeArgs, write_advice};
use crate::captures::{bytes, summary};
use crate::{Symbols, write_diff, write_top};

#[derive(clap::Args)]
pub(crate) struct ReportArgs {
    /// A capture directory (`capture-<unix ms>-<seq>`) written by the flight recorder.
    capture: PathBuf,
    /// The binary that ran, or its split debug file (BIN.debug), for names and file:line
    /// [default: the binary recorded in the capture, if its build id still matches].
    #[arg(long)]
    binary: Option<PathBuf>,
    /// What to diff against: another capture directory or a heap profile file
    /// [default: the previous capture in the same directory].
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Directory for timeline.svg and flamegraph.svg [default: ./<capture name>-report].
    #[arg(short = 'o', long, conflicts_with = "svg")]
    output: Option<PathBuf>,
    /// Write the timeline chart to this file (and the flame graph beside it as
    /// <name>-flamegraph.svg) instead of a report directory.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// How many functions to show in the top and diff tables.
    #[arg(short = 'n', long, default_value_t = 15)]
    count: usize,
    #[command(flatten)]
    own: OwnCodeArgs,
    /// Show every frame in the flame graph instead of collapsing async-runtime plumbing.
    #[arg(long)]
    all_frames: bool,
}

/// Prints the report and writes the SVGs and the symbolized pprof.
pub(crate) fn report(out: &mut impl Write, args: &ReportArgs) -> anyhow::Result<()> {
    let info = CaptureInfo::open(&args.capture)?;
    if !info.complete {
        bail!(
            "{} is an incomplete capture: the process died while writing it (its meta.txt does not end with complete=1)",
            args.capture.display()
        );
    }
    let binary = choose_binary(&info, args.binary.as_deref())?;
    let timeline = match &info.timeline {
        Some(path) => Some(read_timeline(path)?),
        None => None,
    };
    let profile = match &info.heap_profile {
        Some(heap) => Some(load_capture(heap, &info, binary.as_deref())?),
        None => None,
    };
    headline(out, &info)?;
    if let Some(profile) = &profile {
        writeln!(out)?;
        write_advice(out, profile, &args.own.own_code())?;
    }
    writeln!(out)?;
    summary(out, &info, timeline.as_ref())?;
    match &binary {
        Some(b) => writeln!(out, "symbols    from {}", b.display())?,
        None => writeln!(
            out,
            "symbols    from the symbol tables of the files still on this machine (no file:line)"
        )?,
    }

    let paths = output_paths(args, &info)?;
    if let Some(t) = &timeline {
        let others = memwatch::captures(parent(&info.path)).unwrap_or_default();
        write_file(&paths.timeline, timeline_svg(t, &info, &others).as_bytes())?;
    }
    let Some(profile) = &profile else {
        writeln!(
            out,
            "\nno heap profile in this capture ({})",
            info.heap_profile_error.as_deref().unwrap_or("none written")
        )?;
        print_written(out, timeline.as_ref().map(|_| &paths.timeline), None)?;
        return Ok(());
    };
    writeln!(
        out,
        "\ntop allocation sites (live memory at the capture, estimated from samples)"
    )?;
    write_top(out, profile, args.count, true)?;

    match baseline(args, &info, binary.as_deref()) {
        Ok(Some((label, base))) => {
            writeln!(out, "\ndiff against {label}")?;
            write_diff(out, &base, profile, args.count)?;
        }
        Ok(None) => writeln!(
            out,
            "\nno earlier capture with a heap profile in {} to diff against (use --baseline)",
            parent(&info.path).display()
        )?,
        Err(err) if args.baseline.is_some() => return Err(err),
        Err(err) => writeln!(out, "\nno diff against the previous capture: {err:#}")?,
    }

    let options = FlameOptions {
        title: format!(
            "heap at {} ({})",
            info.name,
            info.trigger.as_deref().unwrap_or("capture")
        ),
        all_frames: args.all_frames,
    };
    write_file(
        &paths.flamegraph,
        flamegraph_svg_with(profile, &options).as_bytes(),
    )?;
    write_file(&paths.pprof, &profile.to_pprof_gzip())?;
    print_written(
        out,
        timeline.as_ref().map(|_| &paths.timeline),
        Some(&paths),
    )
}

/// One line: which capture, when, why, how full.
fn headline(out: &mut impl Write, c: &CaptureInfo) -> std::io::Result<()> {
    write!(out, "{}", c.name)?;
    if let Some(ms) = c.unix_ms {
        write!(out, " at {} UTC", memwatch::utc_timestamp(ms))?;
    }
    write!(
        out,
        ", trigger {}",
        c.trigger.as_deref().unwrap_or("unknown")
    )?;
    if let Some(allocated) = c.allocated_bytes {
        write!(out, ", allocated {}", bytes(allocated))?;
    }
    if let (Some(usage), Some(limit)) = (c.cgroup_usage_bytes, c.cgroup_limit_bytes) {
        write!(
            out,
            ", cgroup {} of {} ({:.0} %)",
            bytes(usage),
            bytes(limit),
            usage as f64 * 100.0 / limit.max(1) as f64
        )?;
    }
    writeln!(out)
}

/// The binary to symbolize with, checked against the capture's build id.
fn choose_binary(info: &CaptureInfo, explicit: Option<&Path>) -> anyhow::Result<Option<PathBuf>> {
    let expected = info.build_id.as_deref().filter(|id| !id.is_empty());
    if let Some(binary) = explicit {
        let found = build_id(binary)?;
        if let Some(expected) = expected
            && found.as_deref() != Some(expected)
        {
            bail!(
                "{} is not the binary that took this capture: its build id is {}, the capture was taken by {} with build id {expected} (wrong binary)",
                binary.display(),
                found.as_deref().unwrap_or("missing"),
                info.binary.as_deref().unwrap_or(Path::new("?")).display(),
            );
        }
        return Ok(Some(binary.to_path_buf()));
    }
    let Some(recorded) = info.binary.as_deref().filter(|p| p.is_file()) else {
        eprintln!(
            "memwatch: warning: the binary recorded in the capture ({}) is not on this machine; pass --binary for names and file:line",
            info.binary
                .as_deref()
                .unwrap_or(Path::new("none"))
                .display()
        );
        return Ok(None);
    };
    match (build_id(recorded), expected) {
        (Ok(found), Some(expected)) if found.as_deref() != Some(expected) => {
            eprintln!(
                "memwatch: warning: {} was rebuilt since the capture (build id {}, the capture's is {expected}); pass --binary with the build that ran",
                recorded.display(),
                found.as_deref().unwrap_or("missing"),
            );
            Ok(None)
        }
        (Ok(_), _) => Ok(Some(recorded.to_path_buf())),
        (Err(err), _) => {
            eprintln!("memwatch: warning: not using the recorded binary: {err:#}");
            Ok(None)
        }
    }
}

/// The GNU build id of an ELF file as hex, `None` when it has none.
fn build_id(path: &Path) -> anyhow::Result<Option<String>> {
    use object::Object;
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file = object::File::parse(&*data)
        .map_err(|err| anyhow::anyhow!("{}: not an ELF file: {err}", path.display()))?;
    Ok(file
        .build_id()
        .ok()
        .flatten()
        .map(|id| id.iter().map(|b| format!("{b:02x}")).collect()))
}

/// Reads a capture's raw heap profile and symbolizes it: DWARF from `binary` for the
/// executable, symbol tables of the files still present for the rest.
fn load_capture(heap: &Path, info: &CaptureInfo, binary: Option<&Path>) -> anyhow::Result<Profile> {
    let mut profile =
        Profile::read_file(heap).with_context(|| format!("reading {}", heap.display()))?;
    // A raw dump names files, not builds: the capture recorded the executable's build id, so
    // a binary rebuilt at the same path is refused rather than trusted.
    if let (Some(exe), Some(id)) = (
        &info.binary,
        info.build_id.as_deref().filter(|i| !i.is_empty()),
    ) {
        for mapping in &mut profile.mappings {
            if Path::new(&mapping.path) == exe {
                mapping.build_id = Some(id.to_string());
            }
        }
    }
    if let Some(binary) = binary {
        let named = profile
            .symbolize_offline(binary)
            .with_context(|| format!("symbolizing {}", heap.display()))?;
        if named == 0 && !profile.samples.is_empty() {
            bail!(
                "{} names no address of {}: wrong binary?",
                binary.display(),
                heap.display()
            );
        }
    }
    profile.symbolize_in_process();
    profile.trim_allocator_frames();
    Ok(profile)
}

/// The baseline profile and how to name it: `--baseline`, else the newest earlier capture.
fn baseline(
    args: &ReportArgs,
    info: &CaptureInfo,
    binary: Option<&Path>,
) -> anyhow::Result<Option<(String, Profile)>> {
    let base_info = match &args.baseline {
        Some(path) if !path.is_dir() => {
            let symbols = Symbols {
                binary: binary.map(Path::to_path_buf),
            };
            let profile = crate::load(path, &symbols)?;
            return Ok(Some((path.display().to_string(), profile)));
        }
        Some(path) => CaptureInfo::open(path)?,
        None => {
            let earlier = memwatch::captures(parent(&info.path))?
                .into_iter()
                .rfind(|c| c.complete && c.heap_profile.is_some() && c.name < info.name);
            match earlier {
                Some(c) => c,
                None => return Ok(None),
            }
        }
    };
    let Some(heap) = &base_info.heap_profile else {
        bail!("{} has no heap profile", base_info.path.display());
    };
    // The same build is symbolized with the same file; another build with its own.
    let binary = if base_info.build_id == info.build_id {
        binary.map(Path::to_path_buf)
    } else {
        choose_binary(&base_info, None)?
    };
    let profile = load_capture(heap, &base_info, binary.as_deref())?;
    let mut label = base_info.name.clone();
    if let (Some(then), Some(now)) = (base_info.unix_ms, info.unix_ms) {
        let secs = now.saturating_sub(then) as f64 / 1000.0;
        label.push_str(&format!(
            " (taken {secs:.1} s earlier, {})",
            base_info.trigger.as_deref().unwrap_or("unknown")
        ));
    }
    Ok(Some((label, profile)))
}

/// Where the report's files go.
struct OutputPaths {
    timeline: PathBuf,
    flamegraph: PathBuf,
    /// The capture's heap profile, symbolized, as gzip pprof (`go tool pprof` reads it).
    pprof: PathBuf,
}

fn output_paths(args: &ReportArgs, info: &CaptureInfo) -> anyhow::Result<OutputPaths> {
    if let Some(svg) = &args.svg {
        let stem = svg
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("timeline");
        return Ok(OutputPaths {
            timeline: svg.clone(),
            flamegraph: svg.with_file_name(format!("{stem}-flamegraph.svg")),
            pprof: svg.with_file_name(format!("{stem}-heap.pb.gz")),
        });
    }
    let dir = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}-report", info.name)));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(OutputPaths {
        timeline: dir.join("timeline.svg"),
        flamegraph: dir.join("flamegraph.svg"),
        pprof: dir.join("heap.pb.gz"),
    })
}

fn print_written(
    out: &mut impl Write,
    timeline: Option<&PathBuf>,
    heap: Option<&OutputPaths>,
) -> anyhow::Result<()> {
    writeln!(out)?;
    match timeline {
        Some(path) => writeln!(out, "timeline chart  {}", path.display())?,
        None => writeln!(out, "timeline chart  none (the capture has no timeline)")?,
    }
    if let Some(paths) = heap {
        writeln!(
            out,
            "flame graph     {} (open in a browser: click to zoom, Ctrl-F to search)",
            paths.flamegraph.display()
        )?;
        writeln!(
            out,
            "pprof           {} (symbolized: go tool pprof -top {})",
            paths.pprof.display(),
            paths.pprof.display()
        )?;
    }
    Ok(())
}

fn write_file(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, content).with_context(|| format!("writing {}", path.display()))
}

fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

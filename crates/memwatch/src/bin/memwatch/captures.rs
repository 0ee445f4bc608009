//! `memwatch captures DIR`: the flight recorder's captures as a table; and the summary of one
//! capture's metadata that `memwatch report` starts with.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use memwatch::profile::human_bytes;
use memwatch::{CaptureInfo, Timeline, utc_timestamp};

/// Prints the captures in `dir`, oldest first, including those cut short.
pub(crate) fn list(out: &mut impl Write, dir: &Path) -> anyhow::Result<()> {
    let meta = std::fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    if dir.join("meta.txt").is_file() {
        bail!(
            "{} is one capture, not a capture directory: list its parent, or run `memwatch report {}`",
            dir.display(),
            dir.display()
        );
    }
    let captures = memwatch::captures(dir).with_context(|| format!("listing {}", dir.display()))?;
    if captures.is_empty() {
        writeln!(out, "no captures in {}", dir.display())?;
        return Ok(());
    }
    let width = captures
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0)
        .max(4);
    writeln!(
        out,
        "{:<width$}  {:<23}  {:<9}  {:>10}  {:>23}  {:>10}  complete",
        "name", "time (UTC)", "trigger", "allocated", "cgroup usage / limit", "on disk"
    )?;
    for c in &captures {
        let cgroup = match (c.cgroup_usage_bytes, c.cgroup_limit_bytes) {
            (Some(usage), Some(limit)) => format!("{} / {}", bytes(usage), bytes(limit)),
            (Some(usage), None) => format!("{} / none", bytes(usage)),
            (None, _) => "-".to_string(),
        };
        writeln!(
            out,
            "{:<width$}  {:<23}  {:<9}  {:>10}  {:>23}  {:>10}  {}",
            c.name,
            c.unix_ms.map_or_else(|| "-".to_string(), utc_timestamp),
            c.trigger.as_deref().unwrap_or("-"),
            c.allocated_bytes.map_or_else(|| "-".to_string(), bytes),
            cgroup,
            bytes(c.disk_bytes),
            if c.complete { "yes" } else { "no (cut short)" },
        )?;
    }
    Ok(())
}

/// The capture's metadata, one fact a line.
pub(crate) fn summary(
    out: &mut impl Write,
    c: &CaptureInfo,
    timeline: Option<&Timeline>,
) -> std::io::Result<()> {
    writeln!(out, "capture    {}", c.path.display())?;
    if let Some(ms) = c.unix_ms {
        write!(out, "taken      {} UTC", utc_timestamp(ms))?;
        if let Some(pid) = c.pid {
            write!(out, " in pid {pid}")?;
        }
        writeln!(out)?;
    }
    let trigger = c.trigger.as_deref().unwrap_or("unknown");
    write!(out, "trigger    {trigger}")?;
    let measure = c.measure.as_deref().unwrap_or("allocated");
    match (trigger, c.trigger_bytes, c.limit_bytes) {
        (t, Some(level), Some(limit)) if t.starts_with("share") => write!(
            out,
            ": {measure} bytes reached {} ({:.0} % of the {} limit)",
            bytes(level),
            level as f64 * 100.0 / limit.max(1) as f64,
            bytes(limit)
        )?,
        ("growth", Some(grown), _) => write!(
            out,
            ": {measure} bytes grew by {} or more within the window",
            bytes(grown)
        )?,
        ("manual", _, _) => write!(out, ": requested")?,
        _ => {}
    }
    if let Some(latency) = c.detection_latency {
        write!(
            out,
            "; seen {} after the crossing allocation",
            duration(latency)
        )?;
    }
    writeln!(out)?;
    write!(out, "memory     ")?;
    if let Some(allocated) = c.allocated_bytes {
        write!(out, "allocated {}", bytes(allocated))?;
    }
    if let Some(usage) = c.cgroup_usage_bytes {
        write!(out, ", cgroup usage {}", bytes(usage))?;
        if let Some(limit) = c.cgroup_limit_bytes {
            write!(out, " of {}", bytes(limit))?;
        }
    }
    writeln!(out)?;
    if let Some(limit) = c.limit_bytes {
        write!(
            out,
            "limit      {} ({})",
            bytes(limit),
            c.limit_source.as_deref().unwrap_or("unknown source")
        )?;
        if !c.ladder_bytes.is_empty() {
            let rungs: Vec<String> = c
                .ladder_bytes
                .iter()
                .map(|&r| {
                    format!(
                        "{} ({:.0} %)",
                        bytes(r),
                        r as f64 * 100.0 / limit.max(1) as f64
                    )
                })
                .collect();
            write!(out, "; ladder {}", rungs.join(", "))?;
        }
        writeln!(out)?;
    }
    if let Some(t) = timeline {
        let span = t
            .samples
            .first()
            .map_or(0.0, |s| (t.captured_at.saturating_sub(s.at)).as_secs_f64());
        write!(
            out,
            "timeline   {span:.1} s before the capture, one sample {} ({} samples)",
            t.spacing(),
            t.samples.len()
        )?;
        if let Some(peak) = t.samples.iter().max_by_key(|s| s.allocated_bytes) {
            let before = t.captured_at.as_secs_f64() - peak.at.as_secs_f64();
            write!(
                out,
                "; peak allocated {} at {before:.3} s before",
                bytes(peak.allocated_bytes)
            )?;
        }
        writeln!(out)?;
    }
    write!(out, "on disk    {}", bytes(c.disk_bytes))?;
    if let Some(d) = c.capture_duration {
        write!(
            out,
            "; heap profile and timeline written {} after the trigger",
            duration(d)
        )?;
    }
    writeln!(out)?;
    if let Some(binary) = &c.binary {
        let id = c.build_id.as_deref().filter(|id| !id.is_empty());
        writeln!(
            out,
            "binary     {} (build id {})",
            binary.display(),
            id.unwrap_or("none")
        )?;
    }
    Ok(())
}

/// `16.8 µs`, `1.2 ms`, `3.0 s`.
fn duration(d: std::time::Duration) -> String {
    let secs = d.as_secs_f64();
    if secs >= 1.0 {
        format!("{secs:.1} s")
    } else if secs >= 1e-3 {
        format!("{:.1} ms", secs * 1e3)
    } else {
        format!("{:.1} µs", secs * 1e6)
    }
}

pub(crate) fn bytes(b: u64) -> String {
    human_bytes(i64::try_from(b).unwrap_or(i64::MAX)).to_string()
}

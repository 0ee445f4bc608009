//! The benchmark's result: one serializable report, rendered as JSON and as a markdown table.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::client::ErrorCounts;
use crate::machine::MachineInfo;
use crate::raw::RawResult;
use crate::stats::LatencySummary;

/// Everything one `gateway-bench ingest` run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always `ingest`; lets result files of future benchmarks share a directory.
    pub benchmark: &'static str,
    pub machine: MachineInfo,
    pub settings: Settings,
    /// Gateway `VmRSS` after start and a settle pause, before any load.
    pub idle_rss_mib: Option<f64>,
    /// One writer, one `fdatasync` per several MiB: the disk's durable sequential write rate,
    /// the ceiling for `share_of_limit`. The faster of buffered 64 KiB writes and direct
    /// (`O_DIRECT`) writes of the whole batch.
    pub limit: RawResult,
    /// The slower of the two.
    pub other_limit: RawResult,
    /// One writer, one `fdatasync` per chunk: the second reference, for `ratio_to_raw`.
    pub raw: RawResult,
    pub scenarios: Vec<ScenarioResult>,
    /// The same scenarios against reference servers (`gateway-bench sink`), after the gateway.
    pub sinks: Vec<SinkResult>,
}

/// One reference server's rows.
#[derive(Debug, Clone, Serialize)]
pub struct SinkResult {
    pub sink: crate::cli::Sink,
    pub label: &'static str,
    pub scenarios: Vec<ScenarioResult>,
}

/// How the run was configured.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// The gateway binary started, or the URL of the server driven.
    pub server: String,
    /// First line of `engine-gateway --version`, when it answers.
    pub server_version: Option<String>,
    pub data_dir: String,
    pub chunk_bytes: u64,
    pub duration_s: f64,
    pub streams: Vec<usize>,
    pub smoke: bool,
    /// How peak RSS is scoped to a scenario, e.g. `VmHWM reset via /proc/PID/clear_refs`.
    pub peak_rss_method: String,
}

/// One concurrency level against the gateway.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub streams: usize,
    pub elapsed_s: f64,
    pub acked_bytes: u64,
    pub requests: u64,
    pub mib_per_s: f64,
    pub requests_per_s: f64,
    /// `mib_per_s` over the disk limit's.
    pub share_of_limit: f64,
    /// `mib_per_s` over the raw (one sync per chunk) baseline's.
    pub ratio_to_raw: f64,
    /// Send → 204 of acknowledged PATCHes, i.e. commit latency.
    pub latency: LatencySummary,
    pub errors: ErrorCounts,
    pub error_total: u64,
    /// Gateway `VmHWM` at the end of the scenario.
    pub peak_rss_mib: Option<f64>,
    /// Whether the peak was reset at the scenario's start; if not it is the peak since start.
    pub peak_rss_reset: bool,
    /// Largest `VmRSS` seen by sampling every few milliseconds during the scenario.
    pub max_sampled_rss_mib: Option<f64>,
    pub rss_samples: u64,
    /// CPU seconds (user + system) the server used during the scenario, per GiB acknowledged:
    /// a cost figure the disk's noise does not blur as much as throughput.
    pub cpu_s_per_gib: Option<f64>,
    /// The server's minor page faults during the scenario, per GiB acknowledged.
    pub minor_faults_per_gib: Option<f64>,
    /// The server's CPU seconds over the scenario's seconds: cores it kept busy.
    pub server_cores: Option<f64>,
    /// The same for this benchmark process (the load client): with the server's, whether the
    /// machine had CPU left, i.e. whether the disk or the CPU was the limit.
    pub client_cores: Option<f64>,
}

impl Report {
    /// The markdown rendering: a short header, one table, the idle RSS.
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let m = &self.machine;
        let s = &self.settings;
        let _ = writeln!(md, "# Ingest benchmark, {}\n", m.date);
        let fs = m.data_fs.as_ref().map_or_else(
            || String::from("unknown filesystem"),
            |f| format!("{} ({} on {})", f.fs_type, f.device, f.mount_point),
        );
        let _ = writeln!(
            md,
            "- machine: {} CPUs ({}), {} MiB RAM, Linux {}",
            m.nproc,
            m.cpu_model.as_deref().unwrap_or("unknown CPU"),
            m.mem_total_mib
                .map_or_else(|| "?".into(), |v| v.to_string()),
            m.kernel.as_deref().unwrap_or("?"),
        );
        let _ = writeln!(md, "- data dir: {} on {fs}", s.data_dir);
        let _ = writeln!(
            md,
            "- server: {} ({}), commit {}",
            s.server,
            s.server_version.as_deref().unwrap_or("version unknown"),
            m.git_commit.as_deref().unwrap_or("unknown"),
        );
        let _ = writeln!(
            md,
            "- load: {} B chunks, one keep-alive connection per stream, {:.1} s per scenario{}",
            s.chunk_bytes,
            s.duration_s,
            if s.smoke { " (smoke run)" } else { "" },
        );
        let _ = writeln!(md, "- peak RSS: {}\n", s.peak_rss_method);
        md.push_str(
            "| scenario | MiB/s | share of limit | x per-chunk sync | CPU-s/GiB | server / client cores | minor faults/GiB | req/s | p50 ms | p99 ms | max ms | peak RSS MiB | sampled max RSS MiB | errors |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for raw in [&self.limit, &self.other_limit, &self.raw] {
            let _ = writeln!(
                md,
                "| {} | {:.1} | {:.2} | {:.2} | {} | - | - | {:.0} | {:.2} | {:.2} | {:.2} | - | - | 0 |",
                raw.label,
                raw.mib_per_s,
                ratio(raw.mib_per_s, self.limit.mib_per_s),
                ratio(raw.mib_per_s, self.raw.mib_per_s),
                num_cell(raw.cpu_s_per_gib, 2),
                raw.syncs as f64 / raw.elapsed_s.max(f64::MIN_POSITIVE),
                raw.latency.p50_ms,
                raw.latency.p99_ms,
                raw.latency.max_ms,
            );
        }
        let rows = self.scenarios.iter().map(|sc| (String::new(), sc));
        let sink_rows = self.sinks.iter().flat_map(|sink| {
            sink.scenarios
                .iter()
                .map(move |sc| (format!("{}: ", sink.label), sc))
        });
        for (label, sc) in rows.chain(sink_rows) {
            let _ = writeln!(
                md,
                "| {label}{} stream{} | {:.1} | {:.2} | {:.2} | {} | {} / {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {}{} | {} | {} |",
                sc.streams,
                if sc.streams == 1 { "" } else { "s" },
                sc.mib_per_s,
                sc.share_of_limit,
                sc.ratio_to_raw,
                num_cell(sc.cpu_s_per_gib, 2),
                num_cell(sc.server_cores, 2),
                num_cell(sc.client_cores, 2),
                num_cell(sc.minor_faults_per_gib, 0),
                sc.requests_per_s,
                sc.latency.p50_ms,
                sc.latency.p99_ms,
                sc.latency.max_ms,
                mib_cell(sc.peak_rss_mib),
                if sc.peak_rss_reset {
                    ""
                } else {
                    " (since start)"
                },
                mib_cell(sc.max_sampled_rss_mib),
                sc.error_total,
            );
        }
        let _ = writeln!(md, "\nidle RSS: {} MiB", mib_cell(self.idle_rss_mib));
        md.push_str(
            "\nraw rows: one writer on the same filesystem, no server; req/s there is fdatasync/s, \
             CPU-s/GiB the benchmark process's own. The disk limit (large batches per fdatasync, \
             the faster of 64 KiB writes through the page cache and one direct write per batch) is \
             the ceiling every share is of.\n",
        );
        if !self.sinks.is_empty() {
            md.push_str(
                "\nhttp sink rows: `gateway-bench sink`, the same client against a minimal server \
                 (a thread per connection, blocking reads into one buffer, 204): with no disk it \
                 is the floor loopback HTTP alone costs here; with fdatasync per PATCH it is the \
                 durable server a user would write without group commit.\n",
            );
        }
        md
    }

    /// Writes `path` (JSON) and the markdown beside it (same name, `.md`), creating parents.
    pub fn write_files(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
        let md_path = path.with_extension("md");
        std::fs::write(&md_path, self.to_markdown())
            .with_context(|| format!("writing {}", md_path.display()))?;
        Ok(())
    }
}

/// `value / reference`, zero when the reference is.
pub fn ratio(value: f64, reference: f64) -> f64 {
    if reference > 0.0 {
        value / reference
    } else {
        0.0
    }
}

/// Bytes to MiB.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn num_cell(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| String::from("?"), |v| format!("{v:.decimals$}"))
}

fn mib_cell(value: Option<f64>) -> String {
    value.map_or_else(|| String::from("?"), |v| format!("{v:.1}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::MountInfo;

    fn latency(p50_ms: f64, p99_ms: f64) -> LatencySummary {
        LatencySummary {
            count: 10,
            mean_ms: p50_ms,
            p50_ms,
            p90_ms: p99_ms,
            p99_ms,
            max_ms: p99_ms * 2.0,
        }
    }

    fn sample_report() -> Report {
        let raw = |label: &str, mib_per_s, per_sync| RawResult {
            label: label.into(),
            chunk_bytes: 65536,
            chunks_per_sync: per_sync,
            bytes: 0,
            syncs: 2000,
            elapsed_s: 10.0,
            mib_per_s,
            latency: latency(0.3, 0.9),
            cpu_s_per_gib: Some(0.5),
        };
        Report {
            benchmark: "ingest",
            machine: MachineInfo {
                date: "2025-01-31T08:05:09Z".into(),
                nproc: 2,
                cpu_model: Some("Test CPU".into()),
                mem_total_mib: Some(24105),
                kernel: Some("6.1.0".into()),
                data_fs: Some(MountInfo {
                    device: "/dev/vda".into(),
                    mount_point: "/".into(),
                    fs_type: "ext4".into(),
                }),
                git_commit: Some("abc123".into()),
            },
            settings: Settings {
                server: "target/release/engine-gateway".into(),
                server_version: None,
                data_dir: "/tmp/d".into(),
                chunk_bytes: 65536,
                duration_s: 10.0,
                streams: vec![1, 64],
                smoke: false,
                peak_rss_method: "VmHWM reset".into(),
            },
            idle_rss_mib: Some(12.25),
            limit: raw("disk limit: fdatasync per 8 MiB", 600.0, 128),
            other_limit: raw(
                "disk limit, direct 8 MiB writes: fdatasync per 8 MiB",
                450.0,
                1,
            ),
            raw: raw("raw fdatasync per chunk", 200.0, 1),
            scenarios: vec![ScenarioResult {
                streams: 64,
                elapsed_s: 10.0,
                acked_bytes: 0,
                requests: 2400,
                mib_per_s: 150.0,
                requests_per_s: 2400.0,
                share_of_limit: 0.25,
                ratio_to_raw: 0.75,
                latency: latency(1.5, 12.25),
                errors: ErrorCounts::default(),
                error_total: 3,
                peak_rss_mib: Some(48.0),
                peak_rss_reset: true,
                max_sampled_rss_mib: Some(47.5),
                rss_samples: 500,
                cpu_s_per_gib: Some(0.9),
                minor_faults_per_gib: Some(1500.0),
                server_cores: Some(1.25),
                client_cores: Some(0.5),
            }],
            sinks: Vec::new(),
        }
    }

    #[test]
    fn markdown_has_one_row_per_measurement() {
        let md = sample_report().to_markdown();
        let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| ")).collect();
        assert_eq!(rows.len(), 5, "{md}");
        assert!(
            rows[2].starts_with(
                "| disk limit, direct 8 MiB writes: fdatasync per 8 MiB | 450.0 | 0.75 |"
            ),
            "{md}"
        );
        assert_eq!(
            rows[4],
            "| 64 streams | 150.0 | 0.25 | 0.75 | 0.90 | 1.25 / 0.50 | 1500 | 2400 | 1.50 | 12.25 | 24.50 | 48.0 | 47.5 | 3 |"
        );
        assert_eq!(
            rows[1],
            "| disk limit: fdatasync per 8 MiB | 600.0 | 1.00 | 3.00 | 0.50 | - | - | 200 | 0.30 | 0.90 | 1.80 | - | - | 0 |"
        );
        assert!(
            md.contains("idle RSS: 12.2 MiB") || md.contains("idle RSS: 12.3 MiB"),
            "{md}"
        );
        assert!(md.contains("ext4 (/dev/vda on /)"), "{md}");
    }

    #[test]
    fn files_are_written_as_json_and_markdown() {
        let dir = tempfile::tempdir().unwrap_or_else(|err| panic!("{err}"));
        let path = dir.path().join("nested/ingest-x.json");
        let report = sample_report();
        report
            .write_files(&path)
            .unwrap_or_else(|err| panic!("{err:#}"));
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_default())
                .unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(json["scenarios"][0]["streams"], 64);
        assert_eq!(json["raw"]["mib_per_s"], 200.0);
        assert_eq!(json["machine"]["data_fs"]["fs_type"], "ext4");
        let md = std::fs::read_to_string(path.with_extension("md")).unwrap_or_default();
        assert_eq!(md, report.to_markdown());
    }
}

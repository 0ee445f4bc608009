//! The ingest benchmark: the disk's baselines, then the server under N concurrent streams per
//! scenario, each as a share of the disk's durable sequential write rate.
//!
//! One server process serves all scenarios (like a long-running service): the gateway started
//! as a child, or any protocol v1 / tus server given by URL. Its peak RSS is scoped to each
//! scenario by resetting `VmHWM` through `/proc/PID/clear_refs` at the start; its CPU time and
//! minor faults are read from `/proc/PID/stat` around each scenario.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;

use crate::child::{GatewayChild, GatewaySpec, KillOnDrop};
use crate::cli::{IngestConfig, LIMIT_WRITE, ServerChoice, Sink};
use crate::client::{LoadSpec, Target, run_load};
use crate::machine::{command_output, gather};
use crate::procmem::{RssSampler, proc_stat, read_status, reset_peak};
use crate::raw::{RawResult, Writes, mib_per_s, run_raw};
use crate::report::{Report, ScenarioResult, Settings, SinkResult, mib, ratio};

/// Runs the whole benchmark. Progress goes to stderr; the result is returned, not printed.
pub async fn run(config: &IngestConfig) -> anyhow::Result<Report> {
    let run_dir = config.data_dir.join(format!(
        "gateway-bench-{}-{}",
        config.run_id,
        std::process::id()
    ));
    tokio::fs::create_dir_all(run_dir.join("gateway"))
        .await
        .with_context(|| format!("creating the run directory {}", run_dir.display()))?;
    let outcome = run_in(config, &run_dir).await;
    if config.keep_data {
        eprintln!("data kept in {}", run_dir.display());
    } else if let Err(err) = tokio::fs::remove_dir_all(&run_dir).await {
        eprintln!("warning: could not remove {}: {err}", run_dir.display());
    }
    outcome
}

/// What makes a finished run a failure: nothing acknowledged in some scenario, or (in smoke
/// mode, where the load is light) any error at all.
pub fn problems(report: &Report) -> Vec<String> {
    let mut problems = Vec::new();
    for sc in &report.scenarios {
        if sc.requests == 0 {
            problems.push(format!(
                "{} streams: no request was acknowledged",
                sc.streams
            ));
        }
        if report.settings.smoke && sc.error_total > 0 {
            problems.push(format!(
                "{} streams: {} errors ({})",
                sc.streams, sc.error_total, sc.errors
            ));
        }
    }
    problems
}

async fn run_in(config: &IngestConfig, run_dir: &Path) -> anyhow::Result<Report> {
    let machine = blocking({
        let dir = run_dir.to_path_buf();
        move || Ok(gather(&dir))
    })
    .await?;
    let server_version = match &config.server {
        ServerChoice::Spawn(bin) => {
            let bin = bin.clone();
            blocking(move || Ok(command_output(bin, &["--version"]))).await?
        }
        ServerChoice::External(_) => None,
    };

    // The ceiling first, then the per-chunk reference, both on the disk the server writes to.
    // The ceiling is the faster of large batches through the page cache and direct ones.
    let limit_write = LIMIT_WRITE as usize;
    let secs = config.baseline_duration;
    let buffered = raw_baseline(
        run_dir,
        limit_write,
        config.limit_chunks,
        secs,
        Writes::Buffered,
    );
    let buffered = buffered.await?;
    let batch = limit_write * config.limit_chunks as usize;
    let direct_write = batch.min(DIRECT_LIMIT_WRITE);
    let direct_chunks = u32::try_from(batch / direct_write).unwrap_or(u32::MAX);
    let direct = raw_baseline(run_dir, direct_write, direct_chunks, secs, Writes::Direct).await?;
    let (limit, other_limit) = if direct.mib_per_s > buffered.mib_per_s {
        (direct, buffered)
    } else {
        (buffered, direct)
    };
    let raw = raw_baseline(run_dir, config.chunk_bytes, 1, secs, Writes::Buffered).await?;

    let mut server = Server::start(config, run_dir).await?;
    tokio::time::sleep(config.settle).await;
    let idle_rss_mib = match server.pid() {
        Some(pid) => blocking(move || Ok(read_status(pid)?))
            .await
            .ok()
            .map(|s| mib(s.rss_bytes)),
        None => None,
    };

    let chunk = pattern_chunk(config.chunk_bytes);
    let mut scenarios = Vec::with_capacity(config.streams.len());
    let mut all_reset = true;
    for &streams in &config.streams {
        let refs = References {
            limit_mib_per_s: limit.mib_per_s,
            raw_mib_per_s: raw.mib_per_s,
        };
        let scenario = match run_scenario(config, &mut server, &chunk, streams, refs).await {
            Ok(scenario) => scenario,
            Err(err) => {
                server.stop().await;
                return Err(err);
            }
        };
        all_reset &= scenario.peak_rss_reset;
        eprintln!(
            "{streams} streams: {:.1} MiB/s ({:.2} of the limit), {} CPU-s/GiB, {} faults/GiB, p50 {:.2} ms, p99 {:.2} ms, peak RSS {:.1} MiB, {} errors",
            scenario.mib_per_s,
            scenario.share_of_limit,
            scenario
                .cpu_s_per_gib
                .map_or_else(|| "?".into(), |v| format!("{v:.2}")),
            scenario
                .minor_faults_per_gib
                .map_or_else(|| "?".into(), |v| format!("{v:.0}")),
            scenario.latency.p50_ms,
            scenario.latency.p99_ms,
            scenario.peak_rss_mib.unwrap_or(0.0),
            scenario.error_total,
        );
        scenarios.push(scenario);
        // Let the server finish background work before the next scenario starts.
        tokio::time::sleep(config.settle.min(Duration::from_secs(1))).await;
    }
    server.stop().await;

    let mut sinks = Vec::with_capacity(config.sinks.len());
    for &sink in &config.sinks {
        let child = SinkChild::start(sink, run_dir).await?;
        let mut server = Server::External {
            target: Target::new(child.addr, "sink")?,
            pid: Some(child.pid()),
        };
        let mut rows = Vec::with_capacity(config.streams.len());
        for &streams in &config.streams {
            let refs = References {
                limit_mib_per_s: limit.mib_per_s,
                raw_mib_per_s: raw.mib_per_s,
            };
            let scenario = run_scenario(config, &mut server, &chunk, streams, refs)
                .await
                .with_context(|| format!("{} ({streams} streams)", sink.label()))?;
            eprintln!(
                "{}, {streams} streams: {:.1} MiB/s, {} CPU-s/GiB, p50 {:.2} ms",
                sink.label(),
                scenario.mib_per_s,
                scenario
                    .cpu_s_per_gib
                    .map_or_else(|| "?".into(), |v| format!("{v:.2}")),
                scenario.latency.p50_ms,
            );
            rows.push(scenario);
        }
        drop(child);
        sinks.push(SinkResult {
            sink,
            label: sink.label(),
            scenarios: rows,
        });
    }

    let peak_rss_method = if all_reset {
        "VmHWM of the server, reset at each scenario's start via /proc/PID/clear_refs (one server process for all scenarios)"
    } else {
        "VmHWM of the server since its start (clear_refs reset failed; one server process for all scenarios)"
    };
    Ok(Report {
        benchmark: "ingest",
        machine,
        settings: Settings {
            server: match &config.server {
                ServerChoice::Spawn(bin) => bin.display().to_string(),
                ServerChoice::External(e) => format!("{} ({})", e.url, e.protocol),
            },
            server_version,
            data_dir: run_dir.display().to_string(),
            chunk_bytes: config.chunk_bytes as u64,
            duration_s: config.duration.as_secs_f64(),
            streams: config.streams.clone(),
            smoke: config.smoke,
            peak_rss_method: peak_rss_method.into(),
        },
        idle_rss_mib,
        limit,
        other_limit,
        raw,
        scenarios,
        sinks,
    })
}

/// `gateway-bench sink` as a child of this process; killed when dropped.
struct SinkChild {
    child: KillOnDrop,
    addr: std::net::SocketAddr,
}

impl SinkChild {
    async fn start(sink: Sink, run_dir: &Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding gateway-bench's own binary")?;
        let dir = run_dir.join("sink");
        blocking(move || {
            let mut command = std::process::Command::new(exe);
            command.arg("sink");
            if sink == Sink::FsyncEach {
                command.arg("--fsync-dir").arg(&dir);
            }
            let mut child = KillOnDrop(
                command
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .context("starting gateway-bench sink")?,
            );
            let mut line = String::new();
            if let Some(stdout) = child.stdout.take() {
                std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
            }
            let addr = line
                .trim()
                .strip_prefix("sink listening on ")
                .and_then(|a| a.parse().ok());
            match addr {
                Some(addr) => Ok(SinkChild { child, addr }),
                None => anyhow::bail!("gateway-bench sink did not start (printed {line:?})"),
            }
        })
        .await
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Bytes of one direct write in the direct disk-limit run, at most: each waits for the device,
/// and one write per batch was the fastest on the reference VM (1.1-1.3x 1 MiB pieces), so
/// the whole 8 MiB batch goes in one write.
const DIRECT_LIMIT_WRITE: usize = 8 << 20;

async fn raw_baseline(
    run_dir: &Path,
    chunk: usize,
    per_sync: u32,
    duration: Duration,
    writes: Writes,
) -> anyhow::Result<RawResult> {
    let dir = PathBuf::from(run_dir);
    let raw = blocking(move || run_raw(&dir, chunk, per_sync, duration, writes)).await?;
    eprintln!(
        "{}: {:.1} MiB/s, p50 {:.2} ms, p99 {:.2} ms",
        raw.label, raw.mib_per_s, raw.latency.p50_ms, raw.latency.p99_ms
    );
    Ok(raw)
}

/// The server under load: the gateway as a child, or a running server given by URL.
enum Server {
    Child(GatewayChild),
    External { target: Target, pid: Option<u32> },
}

impl Server {
    async fn start(config: &IngestConfig, run_dir: &Path) -> anyhow::Result<Self> {
        match &config.server {
            ServerChoice::Spawn(bin) => {
                let spec = GatewaySpec {
                    bin: bin.clone(),
                    data_dir: run_dir.join("gateway"),
                    extra_args: gateway_args(config),
                    env: config.gateway_env.clone(),
                    startup_timeout: config.startup_timeout,
                };
                let gateway = GatewayChild::start(&spec).await?;
                eprintln!(
                    "gateway ready at {} (pid {})",
                    gateway.target().addr(),
                    gateway.pid()
                );
                Ok(Self::Child(gateway))
            }
            ServerChoice::External(e) => {
                let target = Target::speaking(e.addr, &e.token, e.protocol)?;
                eprintln!("driving {} ({})", e.url, e.protocol);
                Ok(Self::External { target, pid: e.pid })
            }
        }
    }

    fn target(&self) -> &Target {
        match self {
            Self::Child(gateway) => gateway.target(),
            Self::External { target, .. } => target,
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Self::Child(gateway) => Some(gateway.pid()),
            Self::External { pid, .. } => *pid,
        }
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        match self {
            Self::Child(gateway) => gateway.check_alive(),
            Self::External { pid: Some(pid), .. } => {
                anyhow::ensure!(
                    Path::new(&format!("/proc/{pid}")).exists(),
                    "the server (pid {pid}) is gone"
                );
                Ok(())
            }
            Self::External { pid: None, .. } => Ok(()),
        }
    }

    async fn stop(self) {
        if let Self::Child(gateway) = self {
            gateway.stop().await;
        }
    }
}

/// Connections the gateway may hold beyond the largest scenario's streams.
const CONNECTION_HEADROOM: usize = 64;

/// `serve` arguments: the user's, after a connection cap above the largest scenario. At the
/// default cap (1,024) a 1,024-stream scenario has no slack: any other connection (a probe, a
/// connection of the previous scenario not yet reaped) makes the gateway evict one of the
/// scenario's idle new connections, and the benchmark counts a transport error.
fn gateway_args(config: &IngestConfig) -> Vec<String> {
    let largest = config.streams.iter().copied().max().unwrap_or(0);
    let mut args = vec![format!(
        "--max-connections={}",
        (largest + CONNECTION_HEADROOM).max(1024)
    )];
    args.extend(config.gateway_args.iter().cloned());
    args
}

/// The disk baselines a scenario is read against, MiB/s.
#[derive(Clone, Copy)]
struct References {
    limit_mib_per_s: f64,
    raw_mib_per_s: f64,
}

async fn run_scenario(
    config: &IngestConfig,
    server: &mut Server,
    chunk: &Bytes,
    streams: usize,
    refs: References,
) -> anyhow::Result<ScenarioResult> {
    server.check_alive()?;
    let pid = server.pid();
    let peak_rss_reset = match pid {
        Some(pid) => blocking(move || Ok(reset_peak(pid)?)).await.is_ok(),
        None => false,
    };
    let stat_before = read_stat(pid).await;
    let client_before = read_stat(Some(std::process::id())).await;
    let sampler = pid
        .map(|pid| RssSampler::start(pid, config.rss_interval))
        .transpose()
        .context("starting the RSS sampler")?;
    let prefix = match &config.server {
        ServerChoice::Spawn(_) => "/v1/streams/bench",
        ServerChoice::External(e) => e.prefix.as_str(),
    };
    let spec = LoadSpec {
        streams,
        chunk: chunk.clone(),
        duration: config.duration,
        request_timeout: config.request_timeout,
        path_prefix: format!("{prefix}/n{streams}-{}", config.run_id),
    };
    let load = run_load(server.target(), &spec).await;
    let sampled = match sampler {
        Some(sampler) => Some(blocking(move || Ok(sampler.finish())).await?),
        None => None,
    };
    let load = load?;
    server
        .check_alive()
        .with_context(|| format!("during the {streams}-stream scenario"))?;
    let status = match pid {
        Some(pid) => blocking(move || Ok(read_status(pid)?)).await.ok(),
        None => None,
    };
    let stat_after = read_stat(pid).await;
    let client_after = read_stat(Some(std::process::id())).await;
    let gib = load.acked_bytes as f64 / f64::from(1u32 << 30);
    let used = stat_before
        .zip(stat_after)
        .filter(|_| gib > 0.0)
        .map(|(a, b)| a.until(b));
    let mib_s = mib_per_s(load.acked_bytes, load.elapsed);
    let secs = load.elapsed.as_secs_f64();
    let cores = |used: Option<crate::procmem::ProcStat>| {
        used.filter(|_| secs > 0.0)
            .map(|u| u.cpu.as_secs_f64() / secs)
    };
    let client_used = client_before.zip(client_after).map(|(a, b)| a.until(b));
    let sampled_max = sampled
        .filter(|s| s.samples > 0)
        .map(|s| mib(s.max_rss_bytes));
    Ok(ScenarioResult {
        streams,
        elapsed_s: secs,
        acked_bytes: load.acked_bytes,
        requests: load.requests,
        mib_per_s: mib_s,
        requests_per_s: if secs > 0.0 {
            load.requests as f64 / secs
        } else {
            0.0
        },
        share_of_limit: ratio(mib_s, refs.limit_mib_per_s),
        ratio_to_raw: ratio(mib_s, refs.raw_mib_per_s),
        latency: load.latency.summary(),
        errors: load.errors,
        error_total: load.errors.total(),
        peak_rss_mib: status.map(|s| mib(s.hwm_bytes)),
        peak_rss_reset,
        max_sampled_rss_mib: sampled_max,
        rss_samples: sampled.map_or(0, |s| s.samples),
        cpu_s_per_gib: used.map(|u| u.cpu.as_secs_f64() / gib),
        minor_faults_per_gib: used.map(|u| u.minor_faults as f64 / gib),
        server_cores: cores(used),
        client_cores: cores(client_used),
    })
}

async fn read_stat(pid: Option<u32>) -> Option<crate::procmem::ProcStat> {
    let pid = pid?;
    blocking(move || Ok(proc_stat(pid)?)).await.ok()
}

/// The request body: a non-zero pattern, allocated once and shared by every request.
pub fn pattern_chunk(len: usize) -> Bytes {
    Bytes::from((0..len).map(|i| (i * 131 % 251) as u8).collect::<Vec<u8>>())
}

/// Runs blocking work (files, /proc, fsync, child processes) on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .context("a blocking task panicked")?
}

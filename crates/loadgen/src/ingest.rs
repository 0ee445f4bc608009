//! The ingest benchmark: raw baseline, then the gateway under N concurrent streams per scenario.
//!
//! One gateway process serves all scenarios (like a long-running service); its peak RSS is
//! scoped to each scenario by resetting `VmHWM` through `/proc/PID/clear_refs` at the start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;

use crate::child::{GatewayChild, GatewaySpec};
use crate::cli::IngestConfig;
use crate::client::{LoadSpec, run_load};
use crate::machine::{command_output, gather};
use crate::procmem::{RssSampler, cpu_time, read_status, reset_peak};
use crate::raw::{RawResult, mib_per_s, run_raw};
use crate::report::{Report, ScenarioResult, Settings, mib, ratio};

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
    let gateway_version = blocking({
        let bin = config.gateway_bin.clone();
        move || Ok(command_output(bin, &["--version"]))
    })
    .await?;

    let raw = raw_baseline(config, run_dir, 1).await?;
    let raw_batched = match config.raw_batch {
        0 | 1 => None,
        n => Some(raw_baseline(config, run_dir, n).await?),
    };

    let spec = GatewaySpec {
        bin: config.gateway_bin.clone(),
        data_dir: run_dir.join("gateway"),
        extra_args: config.gateway_args.clone(),
        env: config.gateway_env.clone(),
        startup_timeout: config.startup_timeout,
    };
    let mut gateway = GatewayChild::start(&spec).await?;
    eprintln!(
        "gateway ready at {} (pid {})",
        gateway.target().addr(),
        gateway.pid()
    );
    tokio::time::sleep(config.settle).await;
    let pid = gateway.pid();
    let idle = blocking(move || Ok(read_status(pid)?)).await;
    let idle_rss_mib = idle.ok().map(|s| mib(s.rss_bytes));

    let chunk = pattern_chunk(config.chunk_bytes);
    let mut scenarios = Vec::with_capacity(config.streams.len());
    let mut all_reset = true;
    for &streams in &config.streams {
        let scenario = run_scenario(config, &mut gateway, &chunk, streams, raw.mib_per_s).await;
        let scenario = match scenario {
            Ok(scenario) => scenario,
            Err(err) => {
                gateway.stop().await;
                return Err(err);
            }
        };
        all_reset &= scenario.peak_rss_reset;
        eprintln!(
            "{streams} streams: {:.1} MiB/s ({:.2} x raw), p50 {:.2} ms, p99 {:.2} ms, peak RSS {:.1} MiB, {} errors",
            scenario.mib_per_s,
            scenario.ratio_to_raw,
            scenario.latency.p50_ms,
            scenario.latency.p99_ms,
            scenario.peak_rss_mib.unwrap_or(0.0),
            scenario.error_total,
        );
        scenarios.push(scenario);
        // Let the gateway finish background work before the next scenario starts.
        tokio::time::sleep(config.settle.min(Duration::from_secs(1))).await;
    }
    gateway.stop().await;

    let peak_rss_method = if all_reset {
        "VmHWM of the gateway, reset at each scenario's start via /proc/PID/clear_refs (one gateway process for all scenarios)"
    } else {
        "VmHWM of the gateway since its start (clear_refs reset failed; one gateway process for all scenarios)"
    };
    Ok(Report {
        benchmark: "ingest",
        machine,
        settings: Settings {
            gateway_bin: config.gateway_bin.display().to_string(),
            gateway_version,
            data_dir: run_dir.display().to_string(),
            chunk_bytes: config.chunk_bytes as u64,
            duration_s: config.duration.as_secs_f64(),
            streams: config.streams.clone(),
            smoke: config.smoke,
            peak_rss_method: peak_rss_method.into(),
        },
        idle_rss_mib,
        raw,
        raw_batched,
        scenarios,
    })
}

async fn raw_baseline(
    config: &IngestConfig,
    run_dir: &Path,
    per_sync: u32,
) -> anyhow::Result<RawResult> {
    let (dir, chunk, duration) = (PathBuf::from(run_dir), config.chunk_bytes, config.duration);
    let raw = blocking(move || run_raw(&dir, chunk, per_sync, duration)).await?;
    eprintln!(
        "{}: {:.1} MiB/s, p50 {:.2} ms, p99 {:.2} ms",
        raw.label, raw.mib_per_s, raw.latency.p50_ms, raw.latency.p99_ms
    );
    Ok(raw)
}

async fn run_scenario(
    config: &IngestConfig,
    gateway: &mut GatewayChild,
    chunk: &Bytes,
    streams: usize,
    raw_mib_per_s: f64,
) -> anyhow::Result<ScenarioResult> {
    gateway.check_alive()?;
    let pid = gateway.pid();
    let peak_rss_reset = blocking(move || Ok(reset_peak(pid)?)).await.is_ok();
    let cpu_before = blocking(move || Ok(cpu_time(pid)?)).await.ok();
    let sampler =
        RssSampler::start(pid, config.rss_interval).context("starting the RSS sampler")?;
    let spec = LoadSpec {
        streams,
        chunk: chunk.clone(),
        duration: config.duration,
        request_timeout: config.request_timeout,
        path_prefix: format!("/v1/streams/bench/n{streams}-{}", config.run_id),
    };
    let load = run_load(gateway.target(), &spec).await;
    let sampled = blocking(move || Ok(sampler.finish())).await?;
    let load = load?;
    gateway
        .check_alive()
        .with_context(|| format!("during the {streams}-stream scenario"))?;
    let status = blocking(move || Ok(read_status(pid)?)).await.ok();
    let cpu_after = blocking(move || Ok(cpu_time(pid)?)).await.ok();
    let gib = load.acked_bytes as f64 / f64::from(1u32 << 30);
    let gateway_cpu_ms_per_gib = cpu_before
        .zip(cpu_after)
        .filter(|_| gib > 0.0)
        .map(|(a, b)| b.saturating_sub(a).as_secs_f64() * 1000.0 / gib);
    let mib_s = mib_per_s(load.acked_bytes, load.elapsed);
    let secs = load.elapsed.as_secs_f64();
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
        ratio_to_raw: ratio(mib_s, raw_mib_per_s),
        latency: load.latency.summary(),
        errors: load.errors,
        error_total: load.errors.total(),
        peak_rss_mib: status.map(|s| mib(s.hwm_bytes)),
        peak_rss_reset,
        max_sampled_rss_mib: (sampled.samples > 0).then(|| mib(sampled.max_rss_bytes)),
        rss_samples: sampled.samples,
        gateway_cpu_ms_per_gib,
    })
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

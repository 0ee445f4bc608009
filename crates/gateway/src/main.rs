//! The `engine-gateway` binary: parses the command line and runs the library.
//!
//! `main` is a plain function on purpose: the backtrace policy must be applied while the
//! process has one thread, before the async runtime exists (see memwatch).

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use engine_gateway::cli::{Cli, Command};
use engine_gateway::commands;
use engine_gateway::logging::LogFormat;

/// jemalloc, counted at the allocator, with sampled heap profiling on by default.
#[cfg(not(feature = "plain-jemalloc"))]
#[global_allocator]
static GLOBAL: memwatch::Allocator = memwatch::Allocator::new();
/// Benchmark builds only: the same jemalloc without the counting wrapper.
#[cfg(feature = "plain-jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
// Sampled heap profiling (memwatch's default). Freed pages go back to the kernel within 250 ms
// (jemalloc's default is 10 s, which made a 256-stream ingest peak at ~75 MiB RSS instead of
// ~55 MiB), not at once: with no delay every request body was faulted in afresh, ~320k minor
// faults and 1.5-2x the CPU per GiB ingested; with 250 ms 5-25k faults per GiB, the same CPU
// as 1 s and 12 MiB less peak RSS at 1,024 streams (bench/README.md, "Where the CPU goes").
// No `background_thread`: jemalloc would start it before `main`, and the backtrace policy can
// only be applied while the process has one thread (idle RSS was the same without it). One arena per CPU instead
// of four: each arena holds its own metadata and partly used slabs, ~0.4 MiB of idle RSS on
// two cores, and a gateway's threads are mostly idle or waiting on I/O.
memwatch::malloc_conf!(
    c"prof:true,prof_active:true,lg_prof_sample:19,dirty_decay_ms:250,muzzy_decay_ms:0,percpu_arena:percpu"
);

/// Threads for blocking work; see the runtime builder below.
const MAX_BLOCKING_THREADS: usize = 32;

fn main() -> ExitCode {
    let policy = memwatch::apply_backtrace_policy();
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve(_));
    let log_format = cli.log_format;
    // The NATS client logs each reconnect attempt itself; the gateway logs one line per
    // disconnect and reconnect (store/nats/setup.rs).
    engine_gateway::logging::init(
        if serving {
            "info,async_nats=warn"
        } else {
            "warn"
        },
        log_format,
    );
    if serving {
        // One plain line; the full policy (variables, the DWARF read) at debug level.
        let on_off = |on: bool| if on { "on" } else { "off" };
        let cost_mib = policy
            .symbolization_cost
            .as_ref()
            .map_or(0, |cost| cost.estimated_bytes >> 20);
        tracing::info!(
            library = on_off(policy.library_backtraces),
            panics = on_off(policy.panic_backtraces),
            symbolization_cost_mib = cost_mib,
            "error backtraces"
        );
        tracing::debug!(%policy, "backtrace policy");
        // Library backtraces left on by the operator, with less headroom than one printed
        // backtrace costs: said at start, with the figures, not found after an OOM kill.
        if let Some(warning) = policy.startup_warning() {
            tracing::warn!(%warning, "backtrace policy");
        }
    }
    // Blocking work: fsync-free file reads, token stats, profile dumps.
    let runtime = match engine_gateway::runtime::configure(
        &mut tokio::runtime::Builder::new_multi_thread(),
        MAX_BLOCKING_THREADS,
    )
    .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            fatal(
                serving || log_format == LogFormat::Json,
                &format_args!("cannot start the async runtime: {err}"),
            );
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => commands::serve(args).await,
            Command::Token(command) => commands::token(command).await,
            Command::Push(args) => commands::push(args).await,
            Command::Cat(args) => commands::cat(args).await,
            Command::Store(command) => commands::store(command).await,
        }
    });
    // A blocking stdin read may still be parked in the runtime; do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(500));
    match result {
        Ok(code) => code,
        Err(err) => {
            fatal(
                serving || log_format == LogFormat::Json,
                &format_args!("{err:#}"),
            );
            ExitCode::FAILURE
        }
    }
}

/// A fatal error: one structured log line for the gateway (and with `--log-format json`), the
/// plain `error: …` line a person at a terminal expects from the client commands.
fn fatal(structured: bool, error: &dyn std::fmt::Display) {
    if structured {
        engine_gateway::logging::fatal(error);
    } else {
        eprintln!("error: {error}");
    }
}

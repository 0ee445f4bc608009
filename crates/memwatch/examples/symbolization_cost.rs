//! What one printed backtrace costs this binary, measured, beside memwatch's estimate: the
//! check of `SymbolizationCost` on release builds. A tokio + tracing binary so that its debug
//! info has a service's shape.
//!
//! ```text
//! cargo build --release -p memwatch --example symbolization_cost              # line tables
//! cargo build --profile bench-naive -p memwatch --example symbolization_cost  # debug = true
//! RUST_BACKTRACE=1 target/<profile>/examples/symbolization_cost
//! ```
//!
//! With `MEMWATCH_HEAP_DUMP=FILE` (and `MALLOC_CONF=prof:true,lg_prof_sample:12`) it also
//! dumps the heap profile after the symbolization, to check `memwatch top --binary` on a
//! release build's inlined frames.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::backtrace::Backtrace;

#[global_allocator]
static GLOBAL: memwatch::Allocator = memwatch::Allocator::new();

fn main() {
    tracing_subscriber::fmt().with_ansi(false).init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cost = memwatch::SymbolizationCost::of_current_exe().unwrap();
    let heap = || memwatch::jemalloc_stats().map_or(0u64, |s| s.allocated);
    let rss = || memwatch::process_memory().map_or(0u64, |p| p.resident_bytes);
    let (heap_before, rss_before) = (heap(), rss());
    let printed = runtime.block_on(async {
        tokio::spawn(async {
            let trace = Backtrace::force_capture();
            tracing::info!(frames = format!("{trace}").lines().count(), "symbolized");
            format!("{trace:?}").len()
        })
        .await
        .unwrap()
    });
    let (heap_after, rss_after) = (heap(), rss());
    if let Some(path) = std::env::var_os("MEMWATCH_HEAP_DUMP") {
        memwatch::dump_heap_profile(std::path::Path::new(&path)).unwrap();
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "measured heap +{:.1} MiB, RSS +{:.1} MiB; estimated heap {:.1} MiB, total {:.1} MiB \
         (heap ratio {:.2}, RSS ratio {:.2}); {printed} bytes printed; {cost}",
        mib(heap_after.saturating_sub(heap_before)),
        mib(rss_after.saturating_sub(rss_before)),
        mib(cost.estimated_heap_bytes),
        mib(cost.estimated_bytes),
        cost.estimated_heap_bytes as f64 / heap_after.saturating_sub(heap_before).max(1) as f64,
        cost.estimated_bytes as f64 / rss_after.saturating_sub(rss_before).max(1) as f64,
    );
}

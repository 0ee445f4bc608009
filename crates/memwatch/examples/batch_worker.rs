//! A batch job with no HTTP that still gets flight-recorder captures and, at its next start, a
//! post-mortem of the previous run: `cargo run -p memwatch --example batch_worker -- DIR`,
//! twice. The job holds ~50 MiB under a 64 MiB limit, so the growth, 60 % and 75 % rungs fire;
//! `memwatch captures DIR` and `memwatch report DIR/capture-...` then explain them.

use std::time::Duration;

#[global_allocator]
static GLOBAL: memwatch::Allocator = memwatch::Allocator::new();
memwatch::malloc_conf!();

const MIB: usize = 1 << 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    eprintln!("{}", memwatch::apply_backtrace_policy());
    let dir = std::env::args().nth(1).unwrap_or_else(|| "memwatch".into());
    // The limit is the cgroup's when there is one; a job outside one gives it.
    let mw = memwatch::Memwatch::builder()
        .capture_dir(&dir)
        .limit_bytes(64 << 20)
        .start()?;
    let mut batch: Vec<Vec<u8>> = Vec::new();
    for record in 0..50u8 {
        // A real job would check this before taking more work: over the soft limit (80 %), it
        // finishes what it holds first.
        if mw.over_soft_limit() {
            break;
        }
        batch.push(vec![record; MIB]);
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(200)); // "processing" the batch at its peak
    let held: usize = batch.iter().map(Vec::len).sum();
    drop(batch);
    if let Some(recorder) = mw.recorder() {
        let status = recorder.status();
        eprintln!(
            "held {} MiB at the peak; {} capture(s) in {}",
            held / MIB,
            status.captures_total,
            status.capture_dir.display()
        );
    }
    Ok(())
}

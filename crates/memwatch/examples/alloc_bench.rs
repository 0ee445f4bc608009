//! Micro benchmark: ns per alloc+free pair through plain jemalloc and through the counting
//! `memwatch::Allocator`. Run in release: `cargo run --release -p memwatch --example alloc_bench`.

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::time::Instant;

const PAIRS: u32 = 20_000_000;

fn main() {
    for size in [16usize, 256, 4096] {
        let Ok(layout) = Layout::from_size_align(size, 8) else {
            return;
        };
        // Twice each, alternating, to see warm-up and noise from the shared machine.
        for _ in 0..2 {
            let plain = per_pair(&tikv_jemallocator::Jemalloc, layout);
            let counting = per_pair(&memwatch::Allocator::new(), layout);
            println!(
                "size {size:>5}: jemalloc {plain:.2} ns, memwatch::Allocator {counting:.2} ns"
            );
        }
    }
}

fn per_pair(allocator: &impl GlobalAlloc, layout: Layout) -> f64 {
    let started = Instant::now();
    for _ in 0..PAIRS {
        // SAFETY: non-zero layout; the pointer is freed with the same layout.
        unsafe {
            let ptr = black_box(allocator.alloc(layout));
            if !ptr.is_null() {
                allocator.dealloc(ptr, layout);
            }
        }
    }
    started.elapsed().as_nanos() as f64 / f64::from(PAIRS)
}

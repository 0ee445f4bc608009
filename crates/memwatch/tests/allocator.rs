//! The counting allocator installed for real, with jemalloc's profiling on via `malloc_conf!`.

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::process::Command;

#[global_allocator]
static GLOBAL: memwatch::Allocator = memwatch::Allocator::new();

memwatch::malloc_conf!();

const MIB: u64 = 1024 * 1024;

/// Serialises the tests that allocate megabytes or reset the process-wide peak: they would
/// disturb each other's before/after figures.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn malloc_conf_symbol_enables_profiling() {
    // MALLOC_CONF would override the symbol; the test environment does not set it.
    if std::env::var_os("MALLOC_CONF").is_none() {
        assert!(memwatch::profiling_enabled().unwrap());
    }
}

#[test]
fn malloc_conf_env_var_overrides_the_symbol() {
    if std::env::var_os("MEMWATCH_TEST_CHILD").is_some() {
        assert!(!memwatch::profiling_enabled().unwrap());
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["malloc_conf_env_var_overrides_the_symbol", "--exact"])
        .env("MEMWATCH_TEST_CHILD", "1")
        .env("MALLOC_CONF", "prof:false")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("1 passed"), "{stdout}");
}

/// One test for all counter behaviour: tests in one binary run in parallel threads and would
/// disturb each other's peaks. Tolerances cover other threads' small allocations.
#[test]
fn counter_tracks_allocations_and_peak_since_last_call() {
    let _serial = serial();
    let before = memwatch::allocated_bytes().unwrap();

    let big = black_box(vec![1u8; 64 * MIB as usize]);
    let during = memwatch::allocated_bytes().unwrap();
    assert!(
        during >= before + 63 * MIB,
        "before {before} during {during}"
    );
    drop(big);
    let after = memwatch::allocated_bytes().unwrap();
    assert!(after < during - 63 * MIB, "during {during} after {after}");

    // The spike is gone from "now" but not from the peak over the trailing window, and
    // reading it resets nothing: a second reader sees it too.
    let peak = memwatch::peek_peak().unwrap();
    assert!(peak >= before + 63 * MIB, "peak {peak}");
    let peak_again = memwatch::peek_peak().unwrap();
    assert!(peak_again >= peak, "peak again {peak_again} after {peak}");

    // realloc growth and shrink are counted.
    let mut v: Vec<u8> = Vec::with_capacity(MIB as usize);
    let small = memwatch::allocated_bytes().unwrap();
    v.reserve_exact(32 * MIB as usize);
    let grown = memwatch::allocated_bytes().unwrap();
    assert!(grown >= small + 30 * MIB, "small {small} grown {grown}");
    v.shrink_to_fit();
    let shrunk = memwatch::allocated_bytes().unwrap();
    assert!(shrunk + 30 * MIB <= grown, "grown {grown} shrunk {shrunk}");
}

#[test]
fn small_allocations_fold_and_thread_flush_settles_the_count() {
    let _serial = serial();
    // Many allocations below the threshold on a short-lived thread, kept alive past its end.
    let kept = std::thread::spawn(|| {
        let kept: Vec<Box<[u8; 1000]>> = (0..100).map(|_| Box::new([7u8; 1000])).collect();
        memwatch::flush_thread();
        kept
    })
    .join()
    .unwrap();
    assert_eq!(kept.len(), 100);
    assert!(memwatch::allocated_bytes().unwrap() >= 100_000);
}

#[test]
fn heap_profile_dump_writes_a_jemalloc_profile() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("heap.prof");
    let keep = black_box(vec![3u8; 8 * MIB as usize]);
    memwatch::dump_heap_profile(&path).unwrap();
    drop(keep);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with("heap_v2/"),
        "{}",
        &text[..text.len().min(200)]
    );
    assert!(text.contains("MAPPED_LIBRARIES"));
}

#[test]
fn snapshot_and_prometheus_text_carry_every_figure() {
    let _serial = serial();
    let s = memwatch::snapshot();
    let j = s.jemalloc.unwrap();
    assert!(j.allocated > 0 && j.active >= j.allocated && j.resident > 0 && j.mapped > 0);
    let counter = s.counter.unwrap();
    assert!(counter.peak_bytes >= counter.allocated_bytes);
    let process = s.process.unwrap();
    assert!(process.resident_bytes > 0);
    assert!(process.peak_resident_bytes.unwrap() >= process.resident_bytes);

    let mut out = String::new();
    memwatch::write_prometheus(&s, &mut out);
    for name in [
        "memwatch_jemalloc_allocated_bytes",
        "memwatch_jemalloc_resident_bytes",
        "memwatch_allocated_bytes",
        "memwatch_allocated_peak_bytes",
        "memwatch_process_resident_bytes",
        "memwatch_process_resident_peak_bytes",
    ] {
        assert!(
            out.contains(&format!("# TYPE {name} gauge\n{name} ")),
            "{name} in\n{out}"
        );
    }
    if let Some(cgroup) = &s.cgroup {
        let usage = cgroup.usage_bytes.unwrap();
        assert!(
            out.contains(&format!("memwatch_cgroup_usage_bytes {usage}\n")),
            "{out}"
        );
        if cgroup.oom_kills.is_some() {
            assert!(
                out.contains("# TYPE memwatch_cgroup_oom_kills_total counter\n"),
                "{out}"
            );
        }
    }
    // Every sample line is "name value" with an integer value.
    for line in out.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.split_once(' ').unwrap();
        assert!(name.starts_with("memwatch_"), "{line}");
        value.parse::<u64>().unwrap();
    }
}

//! A heap profile of a known allocation pattern, taken for real in this process: the function
//! that holds 64 MiB must be the top site once the profile is symbolized and trimmed, and the
//! pprof encoding must round-trip.

#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use memwatch::profile::{Profile, flamegraph_svg, top};

#[global_allocator]
static GLOBAL: memwatch::Allocator = memwatch::Allocator::new();

memwatch::malloc_conf!();

#[inline(never)]
fn hold_64_mib() -> Vec<u8> {
    black_box(vec![7u8; 64 << 20])
}

/// One test: tests in a binary run in parallel and would see each other's allocations.
#[test]
fn profile_names_the_function_holding_64_mib() {
    if std::env::var_os("MALLOC_CONF").is_some() {
        return; // the environment overrides malloc_conf; profiling may be off
    }
    let held = hold_64_mib();
    let dir = tempfile::tempdir().unwrap();
    let profile = Profile::capture(dir.path()).unwrap();
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "dump removed"
    );
    assert_eq!(profile.sample_period, 1 << 19);

    let exe = std::env::current_exe().unwrap();
    let exe_name = exe.file_name().unwrap().to_str().unwrap();
    let main = profile
        .mappings
        .iter()
        .find(|m| m.path.ends_with(exe_name))
        .unwrap();
    assert!(main.build_id.as_ref().is_some_and(|id| id.len() >= 16));

    let rows = top(&profile);
    let first = &rows[0];
    assert!(
        first.function.ends_with("hold_64_mib"),
        "top: {:?}",
        &rows[..rows.len().min(5)]
    );
    // Unsampled: 64 MiB sampled at 512 KiB is ~ exactly 64 MiB.
    assert!(
        (63 << 20..66 << 20).contains(&first.flat_bytes),
        "{first:?}"
    );
    // jemalloc's frames are gone from every stack's leaf.
    for sample in &profile.samples {
        let leaf = &profile.locations[sample.locations[0]];
        if let Some(frame) = leaf.frames.first() {
            assert!(!frame.function.starts_with("prof_"), "{frame:?}");
            assert!(!frame.function.contains("_rjem_"), "{frame:?}");
        }
    }

    // pprof round trip, gzip and all.
    let gz = profile.to_pprof_gzip();
    assert_eq!(&gz[..2], &[0x1f, 0x8b]);
    let back = Profile::from_bytes(&gz).unwrap();
    assert_eq!(back, profile);

    // Offline: the same profile symbolized with this test binary's DWARF has file:line.
    let mut offline = back.clone();
    let named = offline.symbolize_offline(&exe).unwrap();
    assert!(named > 0);
    offline.trim_allocator_frames();
    let first = &top(&offline)[0];
    assert!(first.function.ends_with("hold_64_mib"), "{first:?}");
    let source = first.source.as_deref().unwrap();
    assert!(source.contains("heap_profile.rs:"), "{source}");

    // The same with a split debug file (different file offsets, same build id), if objcopy
    // is there to make one.
    let debug = dir.path().join("test.debug");
    let split = std::process::Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&exe)
        .arg(&debug)
        .status();
    if split.is_ok_and(|s| s.success()) {
        let mut from_debug = back.clone();
        assert!(from_debug.symbolize_offline(&debug).unwrap() > 0);
        from_debug.trim_allocator_frames();
        assert_eq!(top(&from_debug)[0], top(&offline)[0]);
    }

    let svg = flamegraph_svg(&offline, "test");
    assert!(svg.contains("hold_64_mib"));
    drop(black_box(held));
}

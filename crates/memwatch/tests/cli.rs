//! The `memwatch` command run for real on profiles captured by this test process: good
//! input is explained with file:line, bad input gives a message and a non-zero exit.

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use memwatch::profile::Profile;

#[global_allocator]
static GLOBAL: memwatch::Allocator = memwatch::Allocator::new();

memwatch::malloc_conf!();

#[inline(never)]
fn grow_cache(mib: usize) -> Vec<u8> {
    black_box(vec![3u8; mib << 20])
}

fn memwatch(args: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_memwatch"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Fails with a one-line message naming `expected`.
fn check_fails(args: &[&Path], expected: &str) {
    let out = memwatch(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(stderr.starts_with("memwatch: error: "), "{stderr}");
    assert!(stderr.contains(expected), "{args:?}: {stderr}");
}

/// One test: the profiles must not see another test's allocations.
#[test]
fn cli_reads_profiles_and_rejects_bad_input() {
    if std::env::var_os("MALLOC_CONF").is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| -> PathBuf { dir.path().join(name) };
    let exe = std::env::current_exe().unwrap();

    let small = grow_cache(8);
    memwatch::dump_heap_profile(&path("base.raw")).unwrap();
    let big = grow_cache(40);
    memwatch::dump_heap_profile(&path("new.raw")).unwrap();
    let pprof = Profile::capture(dir.path()).unwrap().to_pprof_gzip();
    std::fs::write(path("new.pb.gz"), &pprof).unwrap();

    // top on the raw dump, with file:line from this binary's DWARF.
    let top = stdout(&memwatch(&[
        Path::new("top"),
        &path("new.raw"),
        Path::new("--binary"),
        &exe,
    ]));
    let first = top.lines().nth(1).unwrap();
    assert!(
        first.contains("grow_cache (") && first.contains("cli.rs:"),
        "{top}"
    );
    // top on the gateway-style pprof: names from the symbol table, no --binary needed.
    let top = stdout(&memwatch(&[Path::new("top"), &path("new.pb.gz")]));
    assert!(top.lines().nth(1).unwrap().contains("grow_cache"), "{top}");

    let diff = stdout(&memwatch(&[
        Path::new("diff"),
        &path("base.raw"),
        &path("new.raw"),
        Path::new("--binary"),
        &exe,
    ]));
    let grew = diff.lines().nth(2).unwrap();
    assert!(
        grew.contains("+40.0 MiB") && grew.contains("grow_cache"),
        "{diff}"
    );

    let svg = path("heap.svg");
    stdout(&memwatch(&[
        Path::new("flamegraph"),
        &path("new.pb.gz"),
        Path::new("-o"),
        &svg,
    ]));
    assert!(
        std::fs::read_to_string(&svg)
            .unwrap()
            .contains("grow_cache")
    );

    let symbolized = path("sym.pb.gz");
    stdout(&memwatch(&[
        Path::new("symbolize"),
        &path("new.pb.gz"),
        Path::new("--binary"),
        &exe,
        Path::new("-o"),
        &symbolized,
    ]));
    let back = Profile::read_file(&symbolized).unwrap();
    assert!(
        back.locations
            .iter()
            .any(|l| l.frames.iter().any(|f| f.line > 0))
    );

    // Bad input.
    std::fs::write(path("notes.txt"), "not a profile\n").unwrap();
    check_fails(
        &[Path::new("top"), &path("notes.txt")],
        "not a heap profile",
    );
    std::fs::write(path("cut.pb.gz"), &pprof[..pprof.len() / 2]).unwrap();
    check_fails(&[Path::new("top"), &path("cut.pb.gz")], "bad gzip data");
    check_fails(&[Path::new("top"), &path("missing.pb.gz")], "No such file");
    let other = Path::new(env!("CARGO_BIN_EXE_memwatch"));
    check_fails(
        &[
            Path::new("top"),
            &path("new.pb.gz"),
            Path::new("--binary"),
            other,
        ],
        "wrong binary",
    );
    check_fails(
        &[
            Path::new("top"),
            &path("new.raw"),
            Path::new("--binary"),
            other,
        ],
        "wrong binary",
    );
    check_fails(
        &[
            Path::new("top"),
            &path("new.raw"),
            Path::new("--binary"),
            &path("notes.txt"),
        ],
        "not an ELF file",
    );
    drop(black_box((small, big)));
}

//! `memwatch captures` and `memwatch report` run for real on captures the flight recorder
//! wrote in this test process: two bursts past two rungs give two captures; the report names
//! the burst with file:line from this binary, diffs against the first capture, and writes the
//! SVGs; bad input gives a message and a non-zero exit.

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use memwatch::{Recorder, RecorderConfig};

#[global_allocator]
static GLOBAL: memwatch::Allocator = memwatch::Allocator::new();

memwatch::malloc_conf!();

const MIB: usize = 1 << 20;

#[inline(never)]
fn warmup_burst(mib: usize) -> Vec<u8> {
    black_box(vec![5u8; mib * MIB])
}

#[inline(never)]
fn incident_burst(mib: usize) -> Vec<u8> {
    black_box(vec![7u8; mib * MIB])
}

fn memwatch(args: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_memwatch"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(args: &[&Path]) -> String {
    let out = memwatch(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Fails with a message naming `expected`.
fn check_fails(args: &[&Path], expected: &str) {
    let out = memwatch(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(stderr.starts_with("memwatch: error: "), "{stderr}");
    assert!(stderr.contains(expected), "{args:?}: {stderr}");
}

fn wait_for_captures(recorder: &Recorder, n: u64) {
    let started = Instant::now();
    while recorder.status().captures_total < n {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no capture {n}: {:?}",
            recorder.status()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A whole SVG document (the flame graph has an XML declaration first) containing `contains`.
fn check_svg(path: &Path, contains: &str) {
    let svg = std::fs::read_to_string(path).unwrap();
    let body = svg.strip_prefix("<?xml").map_or(svg.as_str(), |rest| {
        rest.split_once("?>").unwrap().1.trim_start()
    });
    assert!(body.starts_with("<svg"), "{}", path.display());
    assert!(svg.trim_end().ends_with("</svg>"), "{}", path.display());
    assert!(
        svg.contains(contains),
        "{} lacks {contains}",
        path.display()
    );
    // The flame graph's script (in CDATA) compares with `<`: markup is checked without it.
    let markup = match svg.split_once("<![CDATA[") {
        Some((head, rest)) => format!("{head}{}", rest.split_once("]]>").unwrap().1),
        None => svg.clone(),
    };
    assert_eq!(
        markup.matches('<').count(),
        markup.matches('>').count(),
        "unbalanced markup in {}",
        path.display()
    );
}

/// The report's pprof is symbolized; when `go` is installed, `go tool pprof -top` reads it and
/// keeps Rust names whole (pprof's C++ heuristic would cut `<…>` out of them).
fn check_pprof(path: &Path) {
    let profile = memwatch::profile::Profile::read_file(path).unwrap();
    assert!(
        profile
            .locations
            .iter()
            .flat_map(|l| &l.frames)
            .any(|f| f.function == "report::incident_burst" && f.file.is_some()),
        "{} is symbolized",
        path.display()
    );
    let go = Command::new("go")
        .args(["tool", "pprof", "-top", "-nodecount=400"])
        .arg(path)
        .output();
    let Some(go) = go.ok().filter(|o| o.status.success()) else {
        println!("go tool pprof not available: pprof output checked by memwatch's reader only");
        return;
    };
    let top = String::from_utf8_lossy(&go.stdout);
    assert!(top.contains("report::incident_burst"), "{top}");
    assert!(
        top.lines().any(|l| l.contains(" <") && l.contains(">::")),
        "names keep their <…>: {top}"
    );
}

/// One test: one recorder per process, and the profiles must not see another test's bursts.
#[test]
fn report_explains_a_real_capture_and_rejects_bad_input() {
    if std::env::var_os("MALLOC_CONF").is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let captures = dir.path().join("captures");
    let exe = std::env::current_exe().unwrap();

    // Rungs at 16 and 32 MiB of a 64 MiB limit.
    let mut config = RecorderConfig::new(&captures);
    config.limit_bytes = Some(64 << 20);
    config.ladder = vec![0.25, 0.5];
    config.growth = None;
    config.soft_limit = None;
    config.cooldown = Duration::ZERO;
    config.measure = memwatch::Measure::Allocated; // the wording below is for allocated bytes
    config.timeline = Duration::from_secs(5);
    config.fine_timeline = Duration::from_secs(5);
    let recorder = Recorder::start(config).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let warm = warmup_burst(20);
    wait_for_captures(&recorder, 1);
    std::thread::sleep(Duration::from_millis(100));
    let incident = incident_burst(24);
    wait_for_captures(&recorder, 2);
    recorder.stop();

    let list = stdout(&[Path::new("captures"), &captures]);
    let rows: Vec<&str> = list.lines().collect();
    assert_eq!(rows.len(), 3, "{list}");
    assert!(
        rows[0].starts_with("name") && rows[0].contains("time (UTC)"),
        "{list}"
    );
    assert!(
        rows[1].contains("share-25") && rows[1].ends_with("yes"),
        "{list}"
    );
    assert!(
        rows[2].contains("share-50") && rows[2].contains("MiB"),
        "{list}"
    );
    let names: Vec<PathBuf> = memwatch::captures(&captures)
        .unwrap()
        .into_iter()
        .map(|c| c.path)
        .collect();
    let newest = names[1].as_path();

    // With --binary: file:line from this test binary's DWARF, diff against the first capture.
    let out_dir = dir.path().join("report");
    let report = stdout(&[
        Path::new("report"),
        newest,
        Path::new("--binary"),
        &exe,
        Path::new("-o"),
        &out_dir,
    ]);
    assert!(
        report.contains("trigger    share-50: allocated bytes reached 32.0 MiB"),
        "{report}"
    );
    // The first screen: no known culprit here, and the burst is the heaviest own-code path,
    // named with its file:line (relative to the working directory, this package's).
    let screen: Vec<&str> = report.lines().take(24).collect();
    assert!(screen[0].starts_with("capture-") && screen[0].contains("trigger share-50"));
    assert!(screen.contains(&"what to change"), "{report}");
    assert!(
        screen.iter().any(|l| l.contains("no known culprit")),
        "{report}"
    );
    let heavy = screen
        .iter()
        .skip_while(|l| !l.starts_with("heavy paths"))
        .nth(2)
        .unwrap();
    assert!(
        heavy.contains("report::incident_burst at tests/report.rs:"),
        "{report}"
    );
    check_pprof(&out_dir.join("heap.pb.gz"));
    let top = report.split("top allocation sites").nth(1).unwrap();
    let first = top.lines().nth(2).unwrap();
    assert!(
        first.contains("incident_burst (") && first.contains("report.rs:"),
        "{report}"
    );
    let diff = report.split("diff against capture-").nth(1).unwrap();
    let grew = diff.lines().nth(3).unwrap();
    assert!(
        grew.contains("+24.0 MiB") && grew.contains("incident_burst"),
        "{report}"
    );
    check_svg(&out_dir.join("timeline.svg"), "<polyline");
    check_svg(&out_dir.join("timeline.svg"), "fired 50 % = 32.0 MiB");
    check_svg(&out_dir.join("timeline.svg"), "earlier capture: share-25");
    check_svg(&out_dir.join("flamegraph.svg"), "incident_burst");
    // Interactive (zoom, search), with file:line in the tooltips and the sampling rate.
    check_svg(&out_dir.join("flamegraph.svg"), "function search(term)");
    check_svg(&out_dir.join("flamegraph.svg"), "tests/report.rs:");
    check_svg(&out_dir.join("flamegraph.svg"), "one sample per 512.0 KiB");

    // Without --binary: the binary recorded in the capture is this one, same build id.
    let svg = dir.path().join("chart.svg");
    let report = stdout(&[Path::new("report"), newest, Path::new("--svg"), &svg]);
    assert!(
        report.contains("incident_burst (") && report.contains("report.rs:"),
        "{report}"
    );
    check_svg(&svg, "<polyline");
    check_svg(&dir.path().join("chart-flamegraph.svg"), "incident_burst");

    // --baseline: the first capture's raw heap profile as a file.
    let base = names[0].join("heap.prof");
    let report = stdout(&[
        Path::new("report"),
        newest,
        Path::new("--baseline"),
        &base,
        Path::new("--svg"),
        &svg,
    ]);
    let diff = report.split("diff against ").nth(1).unwrap();
    assert!(diff.starts_with(base.to_str().unwrap()), "{report}");
    assert!(
        diff.lines().nth(3).unwrap().contains("+24.0 MiB"),
        "{report}"
    );

    // Bad input.
    let memwatch_bin = Path::new(env!("CARGO_BIN_EXE_memwatch"));
    let report_of = |capture: &Path, extra: &[&Path]| -> Vec<PathBuf> {
        let mut args = vec![PathBuf::from("report"), capture.to_path_buf()];
        args.extend(extra.iter().map(|p| p.to_path_buf()));
        args.push("-o".into());
        args.push(dir.path().join("bad"));
        args
    };
    let fails = |args: Vec<PathBuf>, expected: &str| {
        let args: Vec<&Path> = args.iter().map(PathBuf::as_path).collect();
        check_fails(&args, expected);
    };
    fails(report_of(&captures, &[]), "not a memwatch capture");
    fails(report_of(&dir.path().join("missing"), &[]), "No such file");
    fails(
        report_of(newest, &[Path::new("--binary"), memwatch_bin]),
        "wrong binary",
    );
    fails(
        report_of(newest, &[Path::new("--binary"), &newest.join("meta.txt")]),
        "not an ELF file",
    );
    check_fails(&[Path::new("captures"), newest], "is one capture");
    check_fails(
        &[Path::new("captures"), &newest.join("meta.txt")],
        "not a directory",
    );
    let cut = captures.join("capture-9999999999999-0001");
    std::fs::create_dir(&cut).unwrap();
    let meta = std::fs::read_to_string(newest.join("meta.txt")).unwrap();
    std::fs::write(cut.join("meta.txt"), meta.replace("complete=1\n", "")).unwrap();
    fails(report_of(&cut, &[]), "incomplete capture");
    let list = stdout(&[Path::new("captures"), &captures]);
    assert!(
        list.lines().last().unwrap().ends_with("no (cut short)"),
        "{list}"
    );
    drop(black_box((warm, incident)));
}

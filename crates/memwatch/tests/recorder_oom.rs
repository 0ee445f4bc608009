//! Real OOM kills: a child process in a 256 MiB memory cgroup (created by this test under its
//! own memory cgroup, removed afterwards) runs the flight recorder and blows past the limit.
//!
//! 1. `burst`: allocates 1 MiB blocks until the kernel kills it (SIGKILL, exit 137). The capture
//!    directory must hold a complete capture taken before the kill, whose raw heap profile
//!    holds return addresses inside `oom_burst`.
//! 2. `incident`: the incident this project exists for — an `anyhow` error with
//!    `RUST_BACKTRACE=1`, printed with `{:?}`, making std symbolize the binary's debug info.
//!    A capture must be taken on that first incident.
//!
//! 3. `pagecache`: memory the allocator never sees (memfd pages, like the file pages of DWARF
//!    being parsed in the incident) fills the cgroup: with the default measure the 90 % rung
//!    must fire within 100 ms of the cgroup crossing 90 %.
//!
//! Own `main` (harness = false): the same binary is re-executed as the child. Without the
//! rights to create a cgroup the test prints a skip notice, and fails when
//! `ENGINE_GATEWAY_SLOW_TESTS=1` (CI).

#![allow(clippy::unwrap_used, clippy::print_stdout)]

#[path = "recorder_oom/cgroup.rs"]
mod cgroup;

use std::hint::black_box;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use cgroup::ChildCgroup;

#[global_allocator]
static GLOBAL: memwatch::Allocator = memwatch::Allocator::new();

memwatch::malloc_conf!();

const MIB: u64 = 1024 * 1024;
const LIMIT: u64 = 256 * MIB;
const CHILD_ENV: &str = "MEMWATCH_RECORDER_CHILD";
const DIR_ENV: &str = "MEMWATCH_RECORDER_DIR";

fn main() -> ExitCode {
    match std::env::var(CHILD_ENV).as_deref() {
        Ok("burst") => child_burst(),
        Ok("incident") => child_incident(),
        Ok("pagecache") => child_pagecache(),
        _ => parent(),
    }
}

fn parent() -> ExitCode {
    let strict = std::env::var_os("ENGINE_GATEWAY_SLOW_TESTS").is_some_and(|v| v == "1");
    let pid = std::process::id();
    for (name, test) in [
        (
            "burst",
            oom_burst_is_captured_before_the_kill as fn(&ChildCgroup),
        ),
        (
            "incident",
            incident_is_captured_the_first_time as fn(&ChildCgroup),
        ),
        (
            "pagecache",
            the_90_rung_fires_within_100ms_of_the_cgroup_crossing_90 as fn(&ChildCgroup),
        ),
    ] {
        let cgroup = match ChildCgroup::create(&format!("memwatch-test-{pid}-{name}"), LIMIT) {
            Ok(cgroup) => cgroup,
            Err(err) if strict => {
                eprintln!("error: cannot create a memory cgroup for the OOM tests: {err}");
                return ExitCode::FAILURE;
            }
            Err(err) => {
                println!(
                    "skipped: cannot create a memory cgroup ({err}); CI sets ENGINE_GATEWAY_SLOW_TESTS=1 to make this fail"
                );
                return ExitCode::SUCCESS;
            }
        };
        println!("test {name} in {}", cgroup.dir.display());
        test(&cgroup);
        drop(cgroup);
        println!("test {name} ... ok");
    }
    ExitCode::SUCCESS
}

/// Runs this binary as `mode` inside `cgroup`, writing captures under `dir`.
fn run_child(
    cgroup: &ChildCgroup,
    mode: &str,
    dir: &Path,
    env: &[(&str, &str)],
) -> (std::process::ExitStatus, String, Duration) {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .env(CHILD_ENV, mode)
        .env(DIR_ENV, dir)
        .env_remove("RUST_LIB_BACKTRACE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    cgroup.join_on_exec(&mut command);
    let started = Instant::now();
    let out = command.output().unwrap();
    let took = started.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text, took)
}

fn oom_burst_is_captured_before_the_kill(cgroup: &ChildCgroup) {
    let dir = tempfile::tempdir().unwrap();
    let captures = dir.path().join("captures");
    let kills_before = cgroup.oom_kills();
    let (status, output, took) = run_child(cgroup, "burst", &captures, &[]);
    let died_at_ms = unix_ms();
    let kills_after = cgroup.oom_kills();
    println!("burst child: {status} after {took:?}, oom_kill {kills_before} -> {kills_after}");
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "killed (exit 137): {output}"
    );
    assert_eq!(
        kills_after,
        kills_before + 1,
        "the kernel's OOM killer did it"
    );

    let list = memwatch::captures(&captures).unwrap();
    let complete: Vec<_> = list.iter().filter(|c| c.complete).collect();
    for c in &list {
        println!(
            "  {} complete={} trigger={:?} allocated={} MiB cgroup={} MiB detect={:?} capture={:?} heap={}",
            c.name,
            c.complete,
            c.trigger,
            c.allocated_bytes.unwrap_or(0) / MIB,
            c.cgroup_usage_bytes.unwrap_or(0) / MIB,
            c.detection_latency,
            c.capture_duration,
            c.heap_profile.is_some(),
        );
    }
    let first = complete
        .first()
        .unwrap_or_else(|| panic!("no complete capture: {list:?}\n{output}"));
    assert!(first.unix_ms.unwrap() <= died_at_ms);
    assert_eq!(first.limit_bytes, Some(LIMIT), "limit read from the cgroup");
    assert_eq!(first.cgroup_limit_bytes, Some(LIMIT));
    assert!(
        first.trigger.as_deref().unwrap().starts_with("share-")
            || first.trigger.as_deref() == Some("growth")
    );
    let timeline = memwatch::read_timeline(first.timeline.as_ref().unwrap()).unwrap();
    assert!(
        timeline.peak_allocated_bytes() >= LIMIT / 4,
        "the burst is on the timeline"
    );
    assert!(
        timeline
            .samples
            .iter()
            .any(|s| s.cgroup_usage_bytes.is_some()),
        "cgroup usage sampled"
    );

    // Symbolized offline with this binary's debug info, as `memwatch report` does, the newest
    // capture (the highest rung) names the burst at the top. The first rung may fire on the
    // allocation that starts the burst, before the profiler has sampled any of it.
    let exe = std::env::current_exe().unwrap();
    for c in &complete {
        let heap = std::fs::read_to_string(c.heap_profile.as_ref().unwrap()).unwrap();
        assert!(heap.starts_with("heap_v2/") && heap.contains("MAPPED_LIBRARIES"));
        assert!(c.build_id.as_ref().is_some_and(|id| !id.is_empty()));
    }
    let newest = complete.last().unwrap();
    let mut profile =
        memwatch::profile::Profile::read_file(newest.heap_profile.as_ref().unwrap()).unwrap();
    profile.symbolize_offline(&exe).unwrap();
    profile.trim_allocator_frames();
    let rows = memwatch::profile::top(&profile);
    let total = profile.total_bytes().max(1);
    let burst = rows.iter().find(|r| r.function.contains("oom_burst"));
    for r in rows.iter().take(5) {
        println!("  top: {:>6} MiB cum {}", r.cum_bytes >> 20, r.function);
    }
    let burst = burst.unwrap_or_else(|| panic!("oom_burst not in the profile of {}", newest.name));
    assert!(
        burst.cum_bytes * 2 > total,
        "oom_burst holds most of the heap: {} of {total}",
        burst.cum_bytes
    );
    assert!(!complete.is_empty(), "a capture completed before the kill");
    // What the next start would log, with this cgroup's figures.
    let figures = memwatch::CgroupMemory {
        version: memwatch::CgroupVersion::V1,
        path: cgroup.dir.clone(),
        usage_bytes: None,
        limit_bytes: Some(LIMIT),
        peak_bytes: None,
        inactive_file_bytes: None,
        oom_kills: Some(kills_after),
    };
    let summary = memwatch::postmortem_with(&captures, Some(&figures)).to_string();
    println!("  postmortem: {summary}");
    assert!(summary.contains("has recorded 1 oom kill;"), "{summary}");
    // Restarted in a fresh cgroup (Kubernetes restarts a container in a new one): its OOM
    // counter is 0, the black box in the capture directory still tells.
    let fresh = memwatch::CgroupMemory {
        oom_kills: Some(0),
        path: PathBuf::from("/sys/fs/cgroup/fresh"),
        ..figures
    };
    let after_restart = memwatch::postmortem_with(&captures, Some(&fresh));
    println!("  postmortem in a fresh cgroup: {after_restart}");
    let run = after_restart.previous_run.as_ref().expect("a black box");
    assert!(!run.clean && after_restart.has_incident());
    assert!(run.share >= 0.85, "killed near the limit: {}", run.share);
    assert!(run.ended_unix_ms <= died_at_ms && run.ended_unix_ms + 2000 >= died_at_ms);
    assert_eq!(after_restart.previous_run_captures, complete.len());
    let text = after_restart.to_string();
    assert!(
        text.contains("the previous run (pid") && text.contains("was killed at"),
        "{text}"
    );
    assert!(text.contains("of its 256.0 MiB limit"), "{text}");
}

fn incident_is_captured_the_first_time(cgroup: &ChildCgroup) {
    let dir = tempfile::tempdir().unwrap();
    // MEMWATCH_TEST_KEEP=DIR keeps the incident's captures there, to read them by hand.
    let captures = match std::env::var_os("MEMWATCH_TEST_KEEP") {
        Some(keep) => PathBuf::from(keep),
        None => dir.path().join("captures"),
    };
    let (status, output, took) =
        run_child(cgroup, "incident", &captures, &[("RUST_BACKTRACE", "1")]);
    let kills = cgroup.oom_kills();
    println!("incident child: {status} after {took:?}, oom_kill {kills}");
    let marks: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("incident:"))
        .collect();
    println!("  {}", marks.join("\n  "));
    assert!(
        output.contains("incident: first error printed") || status.signal() == Some(libc::SIGKILL),
        "{output}"
    );
    assert!(
        output.contains("stack backtrace") || output.contains("Stack backtrace"),
        "anyhow printed a backtrace: {output}"
    );
    let list = memwatch::captures(&captures).unwrap();
    for c in &list {
        println!(
            "  {} complete={} trigger={:?} allocated={} MiB cgroup={} MiB detect={:?} capture={:?}",
            c.name,
            c.complete,
            c.trigger,
            c.allocated_bytes.unwrap_or(0) / MIB,
            c.cgroup_usage_bytes.unwrap_or(0) / MIB,
            c.detection_latency,
            c.capture_duration,
        );
    }
    let first = list
        .iter()
        .find(|c| c.complete)
        .unwrap_or_else(|| panic!("no capture on the first incident: {output}"));
    assert!(first.heap_profile.is_some());
    assert_eq!(first.trigger.as_deref(), Some("growth"));
    // The incident's growth, not the baseline's. With the default measure the cgroup's
    // working set (the binary's DWARF pages being read count there too) can fire the growth
    // rung a little before the allocator alone would.
    assert!(
        first.allocated_bytes.unwrap() >= 48 * MIB + LIMIT / 16,
        "the incident's growth, not the baseline's"
    );
    // Symbolized offline, the capture's top sites are std's backtrace symbolization.
    let exe = std::env::current_exe().unwrap();
    let mut profile =
        memwatch::profile::Profile::read_file(first.heap_profile.as_ref().unwrap()).unwrap();
    profile.symbolize_offline(&exe).unwrap();
    profile.trim_allocator_frames();
    let rows = memwatch::profile::top(&profile);
    let total = profile.total_bytes().max(1);
    let symbolization: i64 = rows
        .iter()
        .filter(|r| r.function.contains("backtrace_rs"))
        .map(|r| r.cum_bytes)
        .max()
        .unwrap_or(0);
    for r in rows
        .iter()
        .filter(|r| r.function.contains("backtrace"))
        .take(3)
    {
        println!("  top: {:>6} MiB cum {}", r.cum_bytes >> 20, r.function);
    }
    assert!(
        symbolization * 4 > total,
        "std's backtrace symbolization should hold a large share: {symbolization} of {total}"
    );
    report_names_mechanism_call_site_and_fix(&first.path, &dir.path().join("report"));
}

/// `memwatch report` on the incident's capture: its first screen (the first 24 lines) names
/// the mechanism, the call site (`service::auth` at the `error!` line) and the fix; the
/// symbolized pprof it writes keeps Rust names whole.
fn report_names_mechanism_call_site_and_fix(capture: &Path, out_dir: &Path) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_memwatch"))
        .arg("report")
        .arg(capture)
        .arg("-o")
        .arg(out_dir)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .unwrap();
    let took = started.elapsed();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let screen: Vec<&str> = report.lines().take(24).collect();
    let screen = screen.join("\n");
    println!("  report in {took:?}, first screen:\n{screen}");
    let error_line = include_str!("recorder_oom.rs")
        .lines()
        .position(|l| l.contains("tracing::error!(\"auth failed"))
        .unwrap()
        + 1;
    for expected in [
        "what to change",
        "std backtrace symbolization under an error's Debug formatting",
        "anyhow::Error's Debug ({:?}) prints its backtrace",
        "RUST_LIB_BACKTRACE=0",
        "memwatch::apply_backtrace_policy()",
    ] {
        assert!(
            screen.contains(expected),
            "first screen lacks {expected:?}:\n{screen}"
        );
    }
    // The `error!` line in `auth`. A release build inlines `auth`, and line-tables-only DWARF
    // names an inlined function by its file's module: `service` is an inline module there.
    let at = format!(" at crates/memwatch/tests/recorder_oom.rs:{error_line} ");
    assert!(
        screen.contains(&format!("call site  recorder_oom::service::auth{at}"))
            || screen.contains(&format!("call site  recorder_oom::auth{at}")),
        "first screen lacks the call site{at}:\n{screen}"
    );
    let pprof = memwatch::profile::Profile::read_file(&out_dir.join("heap.pb.gz")).unwrap();
    let names: Vec<&str> = pprof
        .locations
        .iter()
        .flat_map(|l| l.frames.iter().map(|f| f.function.as_str()))
        .collect();
    assert!(
        names.contains(&"recorder_oom::service::auth") || names.contains(&"recorder_oom::auth"),
        "the pprof names the call site"
    );
    assert!(
        names.iter().any(|n| n.starts_with("<gimli::read::")),
        "Rust names keep their <…>"
    );
}

fn the_90_rung_fires_within_100ms_of_the_cgroup_crossing_90(cgroup: &ChildCgroup) {
    let dir = tempfile::tempdir().unwrap();
    let captures = dir.path().join("captures");
    let (status, output, took) = run_child(cgroup, "pagecache", &captures, &[]);
    println!("pagecache child: {status} after {took:?}");
    let crossed_ms: u64 = output
        .lines()
        .find_map(|l| l.strip_prefix("pagecache: crossed 90 % at unix ms "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("the child never saw 90 %: {output}"));
    let list = memwatch::captures(&captures).unwrap();
    for c in &list {
        println!(
            "  {} trigger={:?} allocated={} MiB cgroup={} MiB at {:+} ms, written in {:?}",
            c.name,
            c.trigger,
            c.allocated_bytes.unwrap_or(0) / MIB,
            c.cgroup_usage_bytes.unwrap_or(0) / MIB,
            c.unix_ms.unwrap_or(0) as i64 - crossed_ms as i64,
            c.capture_duration,
        );
    }
    let rung = list
        .iter()
        .find(|c| c.trigger.as_deref() == Some("share-90"))
        .unwrap_or_else(|| panic!("no share-90 capture: {list:?}\n{output}"));
    assert!(
        rung.allocated_bytes.unwrap() < LIMIT / 4,
        "the allocator saw little: the cgroup's figure fired the rung"
    );
    assert_eq!(rung.measure.as_deref(), Some("max"));
    let late = rung.unix_ms.unwrap().saturating_sub(crossed_ms);
    assert!(
        rung.unix_ms.unwrap() + 5 >= crossed_ms && late <= 100,
        "the 90 % capture came {late} ms after the cgroup crossed 90 %"
    );
}

/// The child of test 3: the default recorder; memfd pages (not from the allocator) fill the
/// cgroup past 90 % of its limit, then it waits for the capture.
fn child_pagecache() -> ExitCode {
    let dir = PathBuf::from(std::env::var_os(DIR_ENV).unwrap());
    let recorder = memwatch::Recorder::start(memwatch::RecorderConfig::new(&dir)).unwrap();
    // SAFETY: a fresh anonymous file owned by this process.
    let fd = unsafe { libc::memfd_create(c"pagecache".as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create");
    let chunk = vec![0x5au8; MIB as usize];
    let usage = || memwatch::cgroup_memory().unwrap().usage_bytes.unwrap();
    // Like the incident, it keeps growing past 90 % (to 93 %): the moment it first reads
    // 90 % is the crossing the rung must follow within 100 ms.
    let mut crossed = false;
    for _ in 0..(LIMIT * 95 / 100 / MIB) {
        // SAFETY: writes a live buffer to our descriptor.
        let n = unsafe { libc::write(fd, chunk.as_ptr().cast(), chunk.len()) };
        assert_eq!(n, chunk.len() as isize);
        let now = usage();
        if !crossed && now >= LIMIT * 9 / 10 {
            crossed = true;
            println!("pagecache: crossed 90 % at unix ms {}", unix_ms());
        }
        if now >= LIMIT * 93 / 100 {
            break;
        }
    }
    let waited = Instant::now();
    while waited.elapsed() < Duration::from_secs(3)
        && !memwatch::captures(&dir)
            .unwrap()
            .iter()
            .any(|c| c.trigger.as_deref() == Some("share-90"))
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(recorder);
    ExitCode::SUCCESS
}

/// The child of test 1: records, then allocates 1 MiB blocks until killed.
fn child_burst() -> ExitCode {
    let dir = PathBuf::from(std::env::var_os(DIR_ENV).unwrap());
    let recorder = memwatch::Recorder::start(memwatch::RecorderConfig::new(&dir)).unwrap();
    let held = oom_burst();
    drop(recorder);
    println!("not killed with {} MiB", held.len());
    ExitCode::FAILURE
}

#[inline(never)]
fn oom_burst() -> Vec<Vec<u8>> {
    let mut held = Vec::with_capacity(4096);
    for _ in 0..4096 {
        held.push(black_box(vec![0x5au8; MIB as usize]));
    }
    held
}

/// The child of test 2: a service-like baseline, then a request whose auth failure is logged
/// with `{:?}` from inside a tokio task, the way the incident's service did.
fn child_incident() -> ExitCode {
    let dir = PathBuf::from(std::env::var_os(DIR_ENV).unwrap());
    // This test binary's debug info is small: symbolizing it costs ~+40 MiB where service
    // binaries cost +60 to +200 MiB. The growth rung is set to +12.5 % of the limit per second
    // (32 MiB) so that this milder incident is one; everything else is the default ladder.
    let mut config = memwatch::RecorderConfig::new(&dir);
    config.growth = Some(memwatch::Growth {
        share: 0.125,
        window: Duration::from_secs(1),
    });
    // The service's steady state (under 50 MiB for months), reached before the incident.
    let baseline: Vec<Vec<u8>> = (0..48)
        .map(|_| black_box(vec![1u8; MIB as usize]))
        .collect();
    let recorder = memwatch::Recorder::start(config).unwrap();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    std::thread::sleep(Duration::from_millis(50));
    println!(
        "incident: baseline {} MiB allocated",
        memwatch::allocated_bytes().unwrap() / MIB
    );
    if let Ok(cost) = memwatch::SymbolizationCost::of_current_exe() {
        println!("incident: debug info {cost}");
    }
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let status = runtime.block_on(async {
        tokio::spawn(service::handle_request("stream-7", "expired-token"))
            .await
            .unwrap()
    });
    println!(
        "incident: first error printed after {:?} (status {status}), allocated now {} MiB, peak {} MiB",
        started.elapsed(),
        memwatch::allocated_bytes().unwrap() / MIB,
        memwatch::peek_peak().unwrap() / MIB
    );
    let waited = Instant::now();
    while recorder.status().captures_total == 0 && waited.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(runtime);
    drop(baseline);
    ExitCode::SUCCESS
}

/// The incident's service, in miniature: errors are `anyhow::Error`s with context, and the
/// auth step logs its failures with `{:?}`.
mod service {
    use anyhow::Context;

    /// Answers one request: 401 when the token does not check out.
    pub async fn handle_request(stream: &'static str, token: &'static str) -> u16 {
        tokio::task::yield_now().await;
        match auth(stream, token) {
            Ok(()) => 204,
            Err(_) => 401,
        }
    }

    /// Checks the deployer's token; logs why when it does not.
    pub fn auth(stream: &str, token: &str) -> anyhow::Result<()> {
        let checked = check_token(token).with_context(|| format!("authenticating for {stream}"));
        if let Err(err) = &checked {
            // The log line of the incident: Debug of an error with a captured backtrace.
            tracing::error!("auth failed: {:?}", err);
        }
        checked
    }

    fn check_token(token: &str) -> anyhow::Result<()> {
        let path = format!("/nonexistent/tokens/{token}");
        std::fs::read(&path).with_context(|| format!("reading {path}"))?;
        Ok(())
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

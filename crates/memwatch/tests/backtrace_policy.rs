//! The backtrace policy in real processes: this binary re-runs itself as a child per case,
//! each child applying the policy in a still single-threaded `main`.

#![allow(clippy::unwrap_used)]

use std::backtrace::{Backtrace, BacktraceStatus};
use std::process::Command;

use memwatch::PolicyAction;

const CHILD: &str = "MEMWATCH_POLICY_CHILD";

fn main() {
    match std::env::var(CHILD).as_deref() {
        Ok("measure") => return measure_child(),
        Ok(_) => return child(),
        Err(_) => {}
    }
    policy_disables_library_backtraces_when_unset();
    policy_keeps_an_explicit_setting();
    policy_refuses_once_threads_exist();
    estimate_matches_a_measured_symbolization();
    println!("backtrace_policy: 4 cases passed");
}

/// Applies the policy, then reports what std itself now does.
fn child() {
    let policy = memwatch::apply_backtrace_policy();
    let captured = Backtrace::capture().status() == BacktraceStatus::Captured;
    println!("action={:?}", policy.action);
    println!("lib_env={:?}", std::env::var("RUST_LIB_BACKTRACE").ok());
    println!("captured={captured}");
    println!(
        "library={} panic={}",
        policy.library_backtraces, policy.panic_backtraces
    );
    println!("summary={policy}");
}

fn run_child(lib: Option<&str>) -> String {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(CHILD, "1").env("RUST_BACKTRACE", "1");
    match lib {
        Some(value) => cmd.env("RUST_LIB_BACKTRACE", value),
        None => cmd.env_remove("RUST_LIB_BACKTRACE"),
    };
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn policy_disables_library_backtraces_when_unset() {
    let out = run_child(None);
    assert!(out.contains("action=DisabledLibraryBacktraces\n"), "{out}");
    assert!(out.contains("lib_env=Some(\"0\")\n"), "{out}");
    // std agrees: no capture although RUST_BACKTRACE=1, and panics keep theirs.
    assert!(out.contains("captured=false\n"), "{out}");
    assert!(out.contains("library=false panic=true\n"), "{out}");
    assert!(
        out.contains("library backtraces off (RUST_LIB_BACKTRACE=0, set by memwatch)"),
        "{out}"
    );
    assert!(out.contains("one symbolization would cost ~"), "{out}");
}

fn policy_keeps_an_explicit_setting() {
    let out = run_child(Some("1"));
    assert!(out.contains("action=KeptExplicit\n"), "{out}");
    assert!(out.contains("lib_env=Some(\"1\")\n"), "{out}");
    assert!(out.contains("captured=true\n"), "{out}");
    assert!(out.contains("set by the operator"), "{out}");
}

fn policy_refuses_once_threads_exist() {
    assert!(std::env::var_os("RUST_LIB_BACKTRACE").is_none() || std::env::var_os(CHILD).is_none());
    let before = std::env::var_os("RUST_LIB_BACKTRACE");
    let (stop_tx, stop_rx) = std::sync::mpsc::sync_channel::<()>(0);
    let thread = std::thread::spawn(move || stop_rx.recv());
    let policy = memwatch::apply_backtrace_policy();
    stop_tx.send(()).unwrap();
    thread.join().unwrap().unwrap();
    if before.is_none() {
        assert!(
            matches!(
                policy.action,
                PolicyAction::RefusedMultiThreaded { threads: Some(2) }
            ),
            "{:?}",
            policy.action
        );
        assert_eq!(std::env::var_os("RUST_LIB_BACKTRACE"), None);
        assert!(policy.to_string().contains("not changed"), "{policy}");
    } else {
        assert_eq!(policy.action, PolicyAction::KeptExplicit);
    }
}

/// Captures and prints one backtrace the way the incident did, reporting the resident growth.
fn measure_child() {
    let rss = || memwatch::process_memory().unwrap().resident_bytes;
    let before = rss();
    let heap = || {
        tikv_jemalloc_ctl::epoch::advance().unwrap();
        tikv_jemalloc_ctl::stats::allocated::read().unwrap() as u64
    };
    let heap_before = heap();
    let started = std::time::Instant::now();
    let text = format!("{:?}", Backtrace::force_capture());
    let elapsed = started.elapsed();
    let grown = rss().saturating_sub(before);
    let heap_grown = heap().saturating_sub(heap_before);
    let cost = memwatch::SymbolizationCost::of_current_exe().unwrap();
    let (estimate, heap_estimate) = (cost.estimated_bytes, cost.estimated_heap_bytes);
    assert!(text.contains("measure_child"), "{text}");
    let ms = elapsed.as_millis();
    println!(
        "grown={grown} estimate={estimate} heap_kept={heap_grown} heap_estimate={heap_estimate} ms={ms}"
    );
}

fn estimate_matches_a_measured_symbolization() {
    let out = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, "measure")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |key: &str| -> u64 {
        let start = stdout.find(key).unwrap() + key.len();
        stdout[start..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (grown, estimate) = (field("grown="), field("estimate="));
    let (heap, heap_estimate) = (field("heap_kept="), field("heap_estimate="));
    println!("symbolization: {}", stdout.trim());
    // Within 1.5× either way, for the growth (RSS) and for the heap it keeps. Without debug
    // info (a release test build) there is nothing to compare.
    if estimate < 1 << 20 {
        return;
    }
    let within = |measured: u64, estimated: u64| {
        measured as f64 * 1.5 >= estimated as f64 && estimated as f64 * 1.5 >= measured as f64
    };
    assert!(within(grown, estimate), "RSS: {stdout}");
    assert!(within(heap, heap_estimate), "heap: {stdout}");
}

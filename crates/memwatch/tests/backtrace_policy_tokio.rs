//! The backtrace policy with `#[tokio::main]`: applied before `main` by
//! `backtrace_policy_before_main!` (an `.init_array` constructor), while the process still
//! has one thread, so library backtraces are off although the runtime's threads exist when
//! `main`'s body first runs; panics keep theirs. Re-executes itself with `RUST_BACKTRACE=1`.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::backtrace::{Backtrace, BacktraceStatus};
use std::process::{Command, ExitCode};

memwatch::backtrace_policy_before_main!();

const CHILD: &str = "MEMWATCH_POLICY_TOKIO_CHILD";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    if std::env::var_os(CHILD).is_some() {
        return child();
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, "1")
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        return ExitCode::FAILURE;
    }
    assert!(stdout.contains("policy applied before main"), "{stdout}");
    println!("test backtrace_policy_before_main_with_tokio_main ... ok");
    ExitCode::SUCCESS
}

fn child() -> ExitCode {
    let threads = memwatch::process_memory().unwrap().threads.unwrap();
    assert!(threads > 1, "the runtime's threads exist: {threads}");
    let policy = memwatch::apply_backtrace_policy();
    assert_eq!(
        policy.action,
        memwatch::PolicyAction::DisabledLibraryBacktraces,
        "{policy}"
    );
    assert!(
        !policy.library_backtraces && policy.panic_backtraces,
        "{policy}"
    );
    assert!(
        policy.to_string().contains("set by memwatch before main"),
        "{policy}"
    );
    assert_eq!(std::env::var("RUST_LIB_BACKTRACE").as_deref(), Ok("0"));
    assert_eq!(Backtrace::capture().status(), BacktraceStatus::Disabled);
    assert_eq!(policy.warning_for(96 << 20, 0), None, "off: no warning");
    println!("policy applied before main with {threads} threads: {policy}");
    ExitCode::SUCCESS
}

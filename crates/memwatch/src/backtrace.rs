//! Backtrace policy: library backtraces off unless asked for, panics keep theirs.
//!
//! The incident this exists for: an error type captured a backtrace on every error
//! (`RUST_BACKTRACE=1`), one log line printed it with `{:?}`, and std symbolized the binary's
//! debug info: +60 to +200 MiB and a global lock for up to 0.6 s, then an OOM kill.
//! `std::backtrace::Backtrace::capture` (and anyhow, and error types built on it) reads
//! `RUST_LIB_BACKTRACE` first and falls back to `RUST_BACKTRACE`; panics read only
//! `RUST_BACKTRACE`. So setting `RUST_LIB_BACKTRACE=0` turns off library captures and keeps
//! panic backtraces. std caches the decision at the first capture, so this must run before any.

use std::ffi::OsString;
use std::fmt;

use crate::Error;
use crate::elf::SymbolizationCost;
use crate::snapshot::process_memory;

/// What [`apply_backtrace_policy`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyAction {
    /// `RUST_LIB_BACKTRACE` was absent: memwatch set it to `0`.
    DisabledLibraryBacktraces,
    /// The operator set `RUST_LIB_BACKTRACE` explicitly: left as it was.
    KeptExplicit,
    /// Not applied: the process was not provably single-threaded (thread count shown when
    /// known), so changing the environment would not have been sound.
    RefusedMultiThreaded { threads: Option<u64> },
}

/// The effective backtrace settings after the policy, for the startup log (its `Display` is
/// one line).
#[derive(Debug)]
pub struct BacktracePolicy {
    pub action: PolicyAction,
    /// `RUST_BACKTRACE` as set (governs panics), lossily decoded.
    pub rust_backtrace: Option<String>,
    /// `RUST_LIB_BACKTRACE` after the policy, lossily decoded.
    pub rust_lib_backtrace: Option<String>,
    /// Whether `Backtrace::capture` (and so anyhow and friends) will capture.
    pub library_backtraces: bool,
    /// Whether a panic prints a backtrace.
    pub panic_backtraces: bool,
    /// The memory one symbolization would take, from the binary's DWARF sections: the price
    /// of printing one captured backtrace.
    pub symbolization_cost: Result<SymbolizationCost, Error>,
}

/// Applies the policy: unless `RUST_LIB_BACKTRACE` is set, sets it to `0`.
///
/// Call it first thing in a plain `fn main` (not `#[tokio::main]`, whose runtime threads already
/// exist), before any thread is spawned and before anything captures a backtrace. Changing
/// the environment is only sound while no other thread can read it concurrently, so this
/// checks that the process has exactly one thread (`Threads:` in `/proc/self/status`) and
/// refuses otherwise ([`PolicyAction::RefusedMultiThreaded`]) instead of risking it.
pub fn apply_backtrace_policy() -> BacktracePolicy {
    let action = if std::env::var_os(LIB_VAR).is_some() {
        PolicyAction::KeptExplicit
    } else {
        let threads = process_memory().and_then(|p| p.threads);
        if threads == Some(1) {
            // SAFETY: the process has one thread, this one, so no other thread can read or
            // write the environment concurrently; only this thread could create another, and
            // it is busy here.
            unsafe { std::env::set_var(LIB_VAR, "0") };
            PolicyAction::DisabledLibraryBacktraces
        } else {
            PolicyAction::RefusedMultiThreaded { threads }
        }
    };
    current_policy(action)
}

impl fmt::Display for BacktracePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "unset".to_string());
        let on_off = |on: bool| if on { "on" } else { "off" };
        write!(
            f,
            "library backtraces {} (RUST_LIB_BACKTRACE={}{}), panic backtraces {} (RUST_BACKTRACE={}); ",
            on_off(self.library_backtraces),
            show(&self.rust_lib_backtrace),
            match self.action {
                PolicyAction::DisabledLibraryBacktraces => ", set by memwatch",
                PolicyAction::KeptExplicit => ", set by the operator",
                PolicyAction::RefusedMultiThreaded { .. } =>
                    ", not changed: the process already had threads",
            },
            on_off(self.panic_backtraces),
            show(&self.rust_backtrace),
        )?;
        match &self.symbolization_cost {
            Ok(cost) => write!(f, "{cost}"),
            Err(err) => write!(f, "symbolization cost unknown: {err}"),
        }
    }
}

const LIB_VAR: &str = "RUST_LIB_BACKTRACE";
const PANIC_VAR: &str = "RUST_BACKTRACE";

fn current_policy(action: PolicyAction) -> BacktracePolicy {
    let lib = std::env::var_os(LIB_VAR);
    let panic = std::env::var_os(PANIC_VAR);
    BacktracePolicy {
        action,
        library_backtraces: enabled(lib.as_ref().or(panic.as_ref())),
        panic_backtraces: enabled(panic.as_ref()),
        rust_backtrace: panic.map(lossy),
        rust_lib_backtrace: lib.map(lossy),
        symbolization_cost: SymbolizationCost::of_current_exe(),
    }
}

/// std's rule: set and not `0`.
fn enabled(value: Option<&OsString>) -> bool {
    value.is_some_and(|v| v != "0")
}

fn lossy(value: OsString) -> String {
    value.to_string_lossy().into_owned()
}

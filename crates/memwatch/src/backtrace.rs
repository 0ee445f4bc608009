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
/// Call it first thing in a plain `fn main`, before any thread is spawned and before anything
/// captures a backtrace; with `#[tokio::main]` (whose runtime threads already exist when
/// `main`'s body runs) put [`backtrace_policy_before_main!`] at the crate root instead, and
/// call this in `main` only to get the result for the log. Changing the environment is only
/// sound while no other thread can read it concurrently, so this checks that the process has
/// exactly one thread (`Threads:` in `/proc/self/status`) and refuses otherwise
/// ([`PolicyAction::RefusedMultiThreaded`]) instead of risking it.
pub fn apply_backtrace_policy() -> BacktracePolicy {
    if let Some(&action) = BEFORE_MAIN.get() {
        return current_policy(action);
    }
    current_policy(decide())
}

/// The policy's action, applied now.
fn decide() -> PolicyAction {
    if std::env::var_os(LIB_VAR).is_some() {
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
    }
}

/// What the constructor of [`backtrace_policy_before_main!`] did.
static BEFORE_MAIN: std::sync::OnceLock<PolicyAction> = std::sync::OnceLock::new();

/// Applies the backtrace policy before `main`, from an ELF constructor (`.init_array`), while
/// the process has one thread: works with `#[tokio::main]` and anything else that starts
/// threads early in `main`. [`apply_backtrace_policy`] then returns what it did, for the log.
///
/// ```no_run
/// memwatch::backtrace_policy_before_main!();
///
/// #[tokio::main]
/// async fn main() {
///     let policy = memwatch::apply_backtrace_policy(); // what the constructor did
///     // info!(%policy, "backtrace policy");
///     // if let Some(warning) = policy.startup_warning() { warn!(%warning, "backtrace policy") }
/// }
/// ```
///
/// Constructors of shared libraries loaded before the executable run first; one that starts
/// a thread makes the policy refuse ([`PolicyAction::RefusedMultiThreaded`]), never race.
#[macro_export]
macro_rules! backtrace_policy_before_main {
    () => {
        #[used]
        #[unsafe(link_section = ".init_array")]
        static MEMWATCH_BACKTRACE_POLICY_BEFORE_MAIN: extern "C" fn() = {
            extern "C" fn memwatch_backtrace_policy_before_main() {
                $crate::__apply_backtrace_policy_before_main();
            }
            memwatch_backtrace_policy_before_main
        };
    };
}

/// Called by [`backtrace_policy_before_main!`]'s constructor; not for direct use.
#[doc(hidden)]
pub fn __apply_backtrace_policy_before_main() {
    let _ = BEFORE_MAIN.set(decide());
}

impl BacktracePolicy {
    /// The startup warning, when library backtraces are on and printing one would cost more
    /// than the headroom under the memory limit (the cgroup's, or none: no warning). One line
    /// with the figures and the fix.
    pub fn startup_warning(&self) -> Option<String> {
        let limit = crate::memory_limit(None)?;
        let used = crate::cgroup_memory()
            .ok()
            .and_then(|c| c.usage_bytes)
            .or_else(|| process_memory().map(|p| p.resident_bytes))
            .unwrap_or(0);
        self.warning_for(limit, used)
    }

    /// [`BacktracePolicy::startup_warning`] for a given limit and usage.
    pub fn warning_for(&self, limit_bytes: u64, used_bytes: u64) -> Option<String> {
        if !self.library_backtraces {
            return None;
        }
        let cost = self.symbolization_cost.as_ref().ok()?;
        let headroom = limit_bytes.saturating_sub(used_bytes);
        if cost.estimated_bytes <= headroom {
            return None;
        }
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "unset".to_string());
        Some(format!(
            "library backtraces are on (RUST_LIB_BACKTRACE={}, RUST_BACKTRACE={}) and printing one \
             error's backtrace would cost ~{} MiB (estimated from {}'s debug info) against {} MiB \
             of headroom under the {} MiB memory limit ({} MiB in use): the first {{:?}} of such an \
             error can get this process OOM-killed; set RUST_LIB_BACKTRACE=0 (panics keep their \
             backtraces) or apply memwatch's backtrace policy (memwatch::backtrace_policy_before_main!)",
            show(&self.rust_lib_backtrace),
            show(&self.rust_backtrace),
            mib(cost.estimated_bytes),
            cost.binary.display(),
            mib(headroom),
            mib(limit_bytes),
            mib(used_bytes),
        ))
    }
}

fn mib(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
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
                PolicyAction::DisabledLibraryBacktraces if BEFORE_MAIN.get().is_some() =>
                    ", set by memwatch before main",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_warning_names_cost_headroom_limit_and_fix() {
        let cost = crate::SymbolizationCost {
            binary: "/srv/gateway".into(),
            sections: Vec::new(),
            file_bytes: 0,
            uncompressed_bytes: 0,
            libraries: Vec::new(),
            estimated_heap_bytes: 90 << 20,
            estimated_bytes: 150 << 20,
        };
        let mut policy = BacktracePolicy {
            action: PolicyAction::KeptExplicit,
            rust_backtrace: Some("1".into()),
            rust_lib_backtrace: None,
            library_backtraces: true,
            panic_backtraces: true,
            symbolization_cost: Ok(cost),
        };
        let line = policy.warning_for(96 << 20, 40 << 20).unwrap();
        for part in [
            "RUST_LIB_BACKTRACE=unset, RUST_BACKTRACE=1",
            "~150 MiB",
            "against 56 MiB of headroom under the 96 MiB memory limit (40 MiB in use)",
            "set RUST_LIB_BACKTRACE=0",
        ] {
            assert!(line.contains(part), "{part}: {line}");
        }
        assert_eq!(
            policy.warning_for(1 << 30, 40 << 20),
            None,
            "enough headroom"
        );
        policy.library_backtraces = false;
        assert_eq!(
            policy.warning_for(96 << 20, 40 << 20),
            None,
            "backtraces off"
        );
    }
}

//! Release links of `engine-gateway` place the functions named in `hot-functions.txt` (what a
//! start and ordinary requests run; scripts/hot-functions.sh writes it) together at the start of
//! the text segment, so that idle and serving, the process keeps few text pages resident.
//!
//! The kernel maps a binary's text in 64 KiB windows around each page the process touches; the
//! ~2 MiB of code a gateway runs, scattered by the linker over 8 MiB of text, made 5–6 MiB of it
//! resident. Ordered, it is about the size of the code itself.
//!
//! Relative relocations are packed (DT_RELR) when the C library supports them (glibc 2.36+):
//! the dynamic loader otherwise reads ~400 KiB of relocation entries at every start, and those
//! pages stay resident.
//!
//! The flags are those of rust-lld, the default linker of x86_64-unknown-linux-gnu since Rust
//! 1.90. ENGINE_GATEWAY_NO_FUNCTION_ORDER=1 turns both off, e.g. for another linker.

use std::env;
#[cfg(all(target_os = "linux", target_env = "gnu"))]
use std::ffi::{CStr, c_char};
use std::path::PathBuf;

fn main() {
    commit_id();
    println!("cargo:rerun-if-changed=hot-functions.txt");
    println!("cargo:rerun-if-env-changed=ENGINE_GATEWAY_NO_FUNCTION_ORDER");
    let release = env::var("PROFILE").is_ok_and(|p| p == "release");
    let lld_target = env::var("TARGET").is_ok_and(|t| t == "x86_64-unknown-linux-gnu");
    let off = env::var_os("ENGINE_GATEWAY_NO_FUNCTION_ORDER").is_some_and(|v| v != "0");
    // A linker chosen through RUSTFLAGS (`-C linker=`, `-C linker-features=-lld`) may not be lld.
    let other_linker = env::var("CARGO_ENCODED_RUSTFLAGS").is_ok_and(|f| f.contains("linker"));
    if !release || !lld_target || off || other_linker {
        return;
    }
    if native_glibc_at_least(2, 36) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    let Some(dir) = env::var_os("CARGO_MANIFEST_DIR") else {
        return;
    };
    let list = PathBuf::from(dir).join("hot-functions.txt");
    if !list.exists() {
        return;
    }
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        list.display()
    );
    // Names that went stale since the list was written are skipped, not errors.
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
}

/// `ENGINE_GATEWAY_COMMIT` for `engine_gateway_build_info`: the short commit id, `unknown`
/// outside a git checkout (a source tarball). Rebuilt when HEAD moves (not for uncommitted
/// edits: a dirty flag would rebuild the crate at every `git add`).
fn commit_id() {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .map(|text| text.trim().to_owned())
            .filter(|text| !text.is_empty())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    if let Some(file) = git(&["rev-parse", "--git-path", "HEAD"]) {
        println!("cargo:rerun-if-changed={file}");
    }
    if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"])
        && let Some(file) = git(&["rev-parse", "--git-path", &head])
    {
        println!("cargo:rerun-if-changed={file}");
    }
    println!("cargo:rustc-env=ENGINE_GATEWAY_COMMIT={commit}");
}

/// Whether this build runs on the machine it builds for, with glibc `major.minor` or newer: the
/// binary then needs that C library, which a native build links against anyway.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn native_glibc_at_least(major: u32, minor: u32) -> bool {
    unsafe extern "C" {
        fn gnu_get_libc_version() -> *const c_char;
    }
    if env::var("TARGET").ok() != env::var("HOST").ok() {
        return false;
    }
    // SAFETY: glibc returns a pointer to a static NUL-terminated version string.
    let version = unsafe { CStr::from_ptr(gnu_get_libc_version()) };
    let mut parts = version.to_str().unwrap_or("").split('.');
    let mut next = || parts.next().and_then(|p| p.parse::<u32>().ok());
    match (next(), next()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

/// A host without glibc builds for another C library, or cross-compiles.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn native_glibc_at_least(_major: u32, _minor: u32) -> bool {
    false
}

//! Free space of the filesystem the store is on (`fstatvfs`), for the writer's reserve and
//! `/readyz`.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Bytes an unprivileged writer may still use on the filesystem of `file`; `None` when the
/// filesystem does not say.
#[allow(clippy::useless_conversion)] // the field types differ between libcs
pub(super) fn free_bytes(file: &File) -> Option<u64> {
    // SAFETY: fstatvfs writes into the zeroed struct we own; the descriptor is open.
    unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        if libc::fstatvfs(file.as_raw_fd(), &mut stat) != 0 {
            return None;
        }
        Some(u64::from(stat.f_bavail).saturating_mul(u64::from(stat.f_frsize)))
    }
}

/// [`free_bytes`] of the filesystem holding `path`.
#[allow(clippy::useless_conversion)] // the field types differ between libcs
pub(super) fn free_bytes_at(path: &Path) -> Option<u64> {
    let path = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs reads the NUL-terminated path and writes into the zeroed struct we own.
    unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut stat) != 0 {
            return None;
        }
        Some(u64::from(stat.f_bavail).saturating_mul(u64::from(stat.f_frsize)))
    }
}

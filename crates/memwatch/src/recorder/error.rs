//! The recorder's one error type, and the allocation-free record of a failed capture step.

use std::fmt;
use std::path::PathBuf;

/// Errors starting the recorder or reading its files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecorderError {
    #[error("invalid recorder configuration: {0}")]
    InvalidConfig(&'static str),
    /// Neither the configuration nor the cgroup gives a memory limit to compare with.
    #[error("no memory limit: none configured and the cgroup has none")]
    NoLimit,
    /// The ladder measures allocated bytes but [`Allocator`](crate::Allocator) is not the
    /// global allocator.
    #[error("the counting allocator memwatch::Allocator is not installed")]
    AllocatorNotInstalled,
    /// One recorder per process: the allocator hook is process-wide.
    #[error("a flight recorder is already running in this process")]
    AlreadyRunning,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {reason}")]
    Parse { path: PathBuf, reason: &'static str },
}

impl RecorderError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// A failed capture step, with the OS error number. Built in the hot moment, so it holds no
/// heap data; the recorder turns it into text once the capture is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CaptureFailure {
    pub(crate) step: &'static str,
    pub(crate) errno: i32,
}

impl fmt::Display for CaptureFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let err = std::io::Error::from_raw_os_error(self.errno);
        write!(f, "{}: {err}", self.step)
    }
}

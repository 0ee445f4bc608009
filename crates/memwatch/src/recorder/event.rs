//! What the recorder tells the service, for its log: the post-mortem at start, the recorder
//! armed or off, and each capture as it lands on disk. memwatch does not log by itself (no
//! logging dependency in the core): the service passes a hook, or enables the `tracing`
//! feature for one that logs through `tracing`.

use std::fmt;
use std::sync::Arc;

use super::postmortem::Postmortem;
use super::status::{LastCapture, RecorderStatus};

/// Something worth a log line. `Display` is the message; [`Event::is_warning`] its level.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// What the previous run left behind, read at start (before the recorder prunes).
    Postmortem(&'a Postmortem),
    /// The recorder runs.
    Armed(&'a RecorderStatus),
    /// The recorder does not run, and why (no limit known, off by configuration, ...).
    Off(&'a str),
    /// A capture is complete on disk. Called on the recorder thread once it is written.
    Captured(&'a LastCapture),
    /// A capture failed (which step, the OS error).
    CaptureFailed(&'a str),
}

impl Event<'_> {
    /// Whether the line is a warning: an incident in the post-mortem, a capture, a failure.
    pub fn is_warning(&self) -> bool {
        match self {
            Self::Postmortem(p) => p.has_incident(),
            Self::Armed(_) | Self::Off(_) => false,
            Self::Captured(_) | Self::CaptureFailed(_) => true,
        }
    }
}

impl fmt::Display for Event<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Postmortem(p) => write!(f, "memory post-mortem: {p}"),
            Self::Armed(s) => write!(
                f,
                "flight recorder armed: limit {} bytes ({}), captures in {}",
                s.limit_bytes,
                s.limit_source,
                s.capture_dir.display()
            ),
            Self::Off(reason) => write!(f, "flight recorder off: {reason}"),
            Self::Captured(c) => write!(
                f,
                "memory capture written: trigger {} at {:.1} % of the limit ({} bytes), {}",
                c.trigger,
                c.share * 100.0,
                c.measured_bytes,
                c.path.display()
            ),
            Self::CaptureFailed(reason) => write!(f, "memory capture failed: {reason}"),
        }
    }
}

/// The service's hook: called at start and after each capture (from the recorder thread).
pub type EventHook = Arc<dyn Fn(&Event<'_>) + Send + Sync>;

/// The hook the `tracing` feature installs when the service passes none: WARN or INFO with
/// structured fields (a capture: `trigger`, `share`, `path`).
#[cfg(feature = "tracing")]
pub fn log_with_tracing(event: &Event<'_>) {
    match event {
        Event::Captured(c) => tracing::warn!(
            trigger = %c.trigger,
            share = c.share,
            measured_bytes = c.measured_bytes,
            path = %c.path.display(),
            "memory capture written"
        ),
        Event::CaptureFailed(reason) => tracing::warn!(%reason, "memory capture failed"),
        Event::Postmortem(p) if p.has_incident() => {
            tracing::warn!(summary = %p, "previous memory incident");
        }
        // How the previous run ended is worth a line; a first start has nothing to say.
        Event::Postmortem(p) if p.previous_run.is_some() || p.captures > 0 => {
            tracing::info!(summary = %p, "memory post-mortem")
        }
        Event::Postmortem(p) => tracing::debug!(summary = %p, "memory post-mortem"),
        Event::Armed(s) => tracing::info!(
            capture_dir = %s.capture_dir.display(),
            limit_bytes = s.limit_bytes,
            limit_source = %s.limit_source,
            "flight recorder armed"
        ),
        // The default on a machine without a memory limit: said, not warned about.
        Event::Off(reason) => tracing::info!(%reason, "flight recorder off"),
    }
}

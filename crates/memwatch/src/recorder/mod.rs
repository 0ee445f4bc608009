//! The flight recorder: the allocator wakes a pre-started thread when an armed level is
//! crossed, the thread samples a timeline, runs the trigger ladder and the soft limit, and
//! writes captures that a later start (or `memwatch report`) reads back.
//!
//! Layers, each file using only those above it:
//!
//! - `error` (the one error type), `files` (every name on disk), `config` (settings,
//!   defaults, validation, typed measures);
//! - `ladder` (triggers and the soft limit as pure state machines), `wake` (the allocator-side
//!   half: armed level and eventfd), `timeline` (the sample rings and their file format);
//! - `blackbox` (the newest seconds in a memory-mapped file, and the clean-exit mark);
//! - `meta` (a capture's `meta.txt`, written and read back), `capture` (writing one capture
//!   without allocating), `postmortem` (listing captures, the disk budget, the start-up
//!   post-mortem);
//! - `status` (what the recorder did), `event` (what it tells the service's log), `thread`
//!   (the recorder thread), and this file: the [`Recorder`] handle.

mod blackbox;
mod capture;
mod config;
mod error;
mod event;
mod files;
mod ladder;
mod meta;
mod postmortem;
mod status;
mod thread;
mod timeline;
pub(crate) mod wake;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

pub use blackbox::{PreviousRun, read_blackbox};
pub use config::{Growth, LimitSource, Measure, RecorderConfig, SoftLimitConfig};
pub use error::RecorderError;
#[cfg(feature = "tracing")]
pub use event::log_with_tracing;
pub use event::{Event, EventHook};
pub use ladder::Trigger;
pub use meta::CaptureInfo;
pub use postmortem::{Postmortem, captures, postmortem, postmortem_with};
pub use status::{LastCapture, RecorderStatus};
pub use timeline::{Timeline, TimelineSample, read_timeline};

use thread::Shared;

/// A running flight recorder; dropping it stops the thread.
#[derive(Debug)]
pub struct Recorder {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Set while a recorder runs.
static RUNNING: AtomicBool = AtomicBool::new(false);

impl Recorder {
    /// Starts the recorder thread: resolves the limit, opens the capture directory (removing
    /// captures cut short by a previous death, and pruning to the budget), allocates and touches
    /// every buffer, then arms the allocator. Read [`postmortem`](crate::postmortem) first.
    pub fn start(config: RecorderConfig) -> Result<Self, RecorderError> {
        Self::start_with_hook(config, None)
    }

    /// [`Recorder::start`], telling `hook` of each capture (on the recorder thread, once the
    /// capture is on disk).
    pub fn start_with_hook(
        config: RecorderConfig,
        hook: Option<EventHook>,
    ) -> Result<Self, RecorderError> {
        config.validate()?;
        crate::set_peak_window(config.peak_window);
        if RUNNING.swap(true, Ordering::AcqRel) {
            return Err(RecorderError::AlreadyRunning);
        }
        match thread::spawn(config, hook) {
            Ok((shared, thread)) => Ok(Self {
                shared,
                thread: Some(thread),
            }),
            Err(err) => {
                RUNNING.store(false, Ordering::Release);
                Err(err)
            }
        }
    }

    /// Whether memory is over the soft limit now: refuse new work while it is. A relaxed
    /// atomic load, cheap enough for every request.
    pub fn over_soft_limit(&self) -> bool {
        self.shared.over_soft_limit.load(Ordering::Relaxed)
    }

    /// Asks for a capture now (trigger `manual`), e.g. from an admin endpoint. Ignores the
    /// ladder's cooldown; the disk budget still applies.
    pub fn request_capture(&self) {
        self.shared.capture_requested.store(true, Ordering::Release);
        wake::wake();
    }

    /// Counters, the last capture and the soft-limit state.
    pub fn status(&self) -> RecorderStatus {
        let mut status = match self.shared.status.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        status.over_soft_limit = self.over_soft_limit();
        status.samples_total = self.shared.samples_total.load(Ordering::Relaxed);
        status.purges_total = self.shared.purges_total.load(Ordering::Relaxed);
        status.soft_limit_entries_total =
            self.shared.soft_limit_entries_total.load(Ordering::Relaxed);
        status.armed_bytes = wake::armed();
        status
    }

    /// Records in the black box that this run ends cleanly, for the next start's post-mortem
    /// (stopping the recorder does it too). Call it last, when the process is about to exit.
    pub fn mark_clean_exit(&self) {
        self.shared.blackbox.mark_clean();
    }

    /// Stops the thread and waits for it (a capture in progress finishes first).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        wake::wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // The next start's post-mortem: this run ended cleanly.
        self.shared.blackbox.mark_clean();
        wake::arm(None);
        RUNNING.store(false, Ordering::Release);
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.shutdown();
    }
}

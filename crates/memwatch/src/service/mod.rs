//! The one way to start memwatch in a service: [`Memwatch::builder`] reads the limit (the
//! cgroup's, or one given), runs the post-mortem of the previous run, starts the flight
//! recorder, and returns a [`Memwatch`] handle whose status, JSON and metrics the service
//! renders. The order of the internal calls (post-mortem before the recorder prunes old
//! captures, the hook before the first capture) is this file's business, not the service's.

mod settings;

use std::path::PathBuf;
use std::sync::Arc;

pub use settings::Settings;

use crate::recorder::{
    Event, EventHook, Postmortem, Recorder, RecorderConfig, RecorderError, RecorderStatus,
    postmortem,
};
use crate::snapshot::MemorySnapshot;

/// A started memwatch: the recorder (when it runs) and the post-mortem read at start. Cheap
/// to clone (one `Arc`); dropping the last clone stops the recorder thread.
#[derive(Clone)]
pub struct Memwatch {
    inner: Arc<Inner>,
}

struct Inner {
    recorder: Option<Recorder>,
    postmortem: Postmortem,
    /// Why the recorder does not run.
    off_reason: Option<String>,
}

impl std::fmt::Debug for Memwatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memwatch")
            .field("recorder", &self.inner.recorder.is_some())
            .field("off_reason", &self.inner.off_reason)
            .finish_non_exhaustive()
    }
}

/// Settings for starting memwatch: see [`Memwatch::builder`], then [`Builder::start`].
#[must_use]
pub struct Builder {
    config: RecorderConfig,
    enabled: bool,
    hook: Option<EventHook>,
}

/// The recorder's state for a status page.
#[derive(Debug, Clone)]
pub enum RecorderState {
    Running(Box<RecorderStatus>),
    /// Not running, and why.
    Off(String),
}

/// Everything memwatch knows now, for a memory endpoint (`Serialize` with the `serde`
/// feature: the JSON of `memwatch-axum`'s `/debug/memory`).
#[derive(Debug, Clone)]
pub struct MemoryReport {
    pub snapshot: MemorySnapshot,
    pub recorder: RecorderState,
    pub postmortem: Postmortem,
}

impl Memwatch {
    /// Starts configuring: the defaults are the recorder's ([`RecorderConfig::new`]), the limit
    /// from the cgroup, captures in `./memwatch`.
    pub fn builder() -> Builder {
        Builder {
            config: RecorderConfig::default(),
            enabled: true,
            hook: None,
        }
    }

    /// Whether new work should be refused now: the soft limit (one relaxed atomic load).
    /// Always `false` when the recorder does not run.
    pub fn over_soft_limit(&self) -> bool {
        self.inner
            .recorder
            .as_ref()
            .is_some_and(Recorder::over_soft_limit)
    }

    /// Asks for a capture now (trigger `manual`); `false` when the recorder does not run.
    pub fn request_capture(&self) -> bool {
        self.inner
            .recorder
            .as_ref()
            .map(Recorder::request_capture)
            .is_some()
    }

    /// Records that this run ends cleanly (see [`Recorder::mark_clean_exit`]); dropping the
    /// last handle does it too. Without it, the next start reports the run as killed.
    pub fn mark_clean_exit(&self) {
        if let Some(recorder) = &self.inner.recorder {
            recorder.mark_clean_exit();
        }
    }

    /// The running recorder, if any.
    pub fn recorder(&self) -> Option<&Recorder> {
        self.inner.recorder.as_ref()
    }

    /// What the previous run left behind, read once at start.
    pub fn postmortem(&self) -> &Postmortem {
        &self.inner.postmortem
    }

    /// The recorder's status, or why it does not run.
    pub fn recorder_state(&self) -> RecorderState {
        match (&self.inner.recorder, &self.inner.off_reason) {
            (Some(r), _) => RecorderState::Running(Box::new(r.status())),
            (None, reason) => RecorderState::Off(reason.clone().unwrap_or_default()),
        }
    }

    /// Every figure now plus the recorder and the post-mortem. Reads `/proc` and the cgroup:
    /// blocking (tiny reads), so off async workers. Leaves the scrape's peaks alone.
    pub fn report(&self) -> MemoryReport {
        MemoryReport {
            snapshot: crate::peek_snapshot(),
            recorder: self.recorder_state(),
            postmortem: self.inner.postmortem.clone(),
        }
    }

    /// Appends every `memwatch_*` metric in Prometheus text: the figures, the peaks over the
    /// trailing window, the recorder's counters and the post-mortem. Blocking like
    /// [`Memwatch::report`]. Resets nothing: any number of scrapers see the same peaks.
    pub fn write_metrics(&self, out: &mut String) {
        let snapshot = crate::snapshot();
        crate::write_prometheus(&snapshot, out);
        let usage = snapshot.cgroup.as_ref().and_then(|c| c.usage_bytes);
        if let Some(peak) = crate::cgroup_usage_peak(usage) {
            use std::fmt::Write as _;
            let secs = crate::peak_window().as_secs();
            let _ = write!(
                out,
                "# HELP memwatch_cgroup_usage_peak_bytes highest cgroup memory usage over the \
                 last {secs} s, sampled every tick of the recorder\n\
                 # TYPE memwatch_cgroup_usage_peak_bytes gauge\n\
                 memwatch_cgroup_usage_peak_bytes {peak}\n"
            );
        }
        if let Some(recorder) = &self.inner.recorder {
            recorder.status().write_prometheus(out);
        }
        self.inner.postmortem.write_prometheus(out);
    }

    /// [`Memwatch::write_metrics`] into a new string.
    pub fn metrics_text(&self) -> String {
        let mut out = String::with_capacity(4096);
        self.write_metrics(&mut out);
        out
    }
}

impl Builder {
    /// Where captures go (default `./memwatch`). Not a tmpfs inside the container: its pages
    /// count against the very limit being watched.
    pub fn capture_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.capture_dir = dir.into();
        self
    }

    /// The memory limit, in bytes (capped by the cgroup's when that is lower).
    pub fn limit_bytes(mut self, bytes: u64) -> Self {
        self.config.limit_bytes = Some(bytes);
        self
    }

    /// The limit is the cgroup's (the default), or `MEMWATCH_LIMIT_BYTES` when set (a host
    /// without a cgroup limit, a test). Without either the recorder stays off.
    pub fn limit_from_cgroup(mut self) -> Self {
        self.config.limit_bytes = None;
        self
    }

    /// Whether the recorder runs at all (default yes; the post-mortem is read regardless).
    pub fn recorder(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// Every recorder setting at once (replaces the capture directory and limit set so far).
    pub fn config(mut self, config: RecorderConfig) -> Self {
        self.config = config;
        self
    }

    /// Changes recorder settings in place, e.g. `.configure(|c| c.cooldown = ...)`.
    pub fn configure(mut self, f: impl FnOnce(&mut RecorderConfig)) -> Self {
        f(&mut self.config);
        self
    }

    /// Settings read from a service's config file; `capture_dir` there, when set, wins over
    /// the one given here.
    pub fn settings(mut self, settings: &Settings) -> Self {
        self.config = settings.recorder_config(&self.config.capture_dir);
        self.enabled = settings.recorder;
        self
    }

    /// Called for the post-mortem, the recorder armed or off, and each capture (from the
    /// recorder thread, once it is on disk). Without a hook they go to `tracing` (feature
    /// `tracing`, once a subscriber is installed: WARN for an incident or a capture, INFO
    /// otherwise), else one line each on stderr.
    pub fn on_event(mut self, hook: impl Fn(&Event<'_>) + Send + Sync + 'static) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// Validates, reads the post-mortem, starts the recorder. Blocking (directory scans, a
    /// thread start): call it before the async runtime or on a blocking thread. Fails only
    /// on invalid settings; a recorder that cannot run (no limit known, no counting
    /// allocator) is reported as off, and the service keeps going.
    pub fn start(mut self) -> Result<Memwatch, RecorderError> {
        if self.config.limit_bytes.is_none() {
            self.config.limit_bytes = limit_from_env()?;
        }
        self.config.validate()?;
        crate::set_peak_window(self.config.peak_window);
        let hook = self.hook.or_else(default_hook);
        let tell = |event: &Event<'_>| {
            if let Some(hook) = &hook {
                hook(event);
            }
        };
        // Before the recorder starts: starting it prunes old captures.
        let postmortem = postmortem(&self.config.capture_dir);
        tell(&Event::Postmortem(&postmortem));
        let (recorder, off_reason) = if self.enabled {
            match Recorder::start_with_hook(self.config, hook.clone()) {
                Ok(recorder) => {
                    tell(&Event::Armed(&recorder.status()));
                    (Some(recorder), None)
                }
                Err(err) => (None, Some(err.to_string())),
            }
        } else {
            (None, Some("off by configuration".to_string()))
        };
        if let Some(reason) = &off_reason {
            tell(&Event::Off(reason));
        }
        Ok(Memwatch {
            inner: Arc::new(Inner {
                recorder,
                postmortem,
                off_reason,
            }),
        })
    }
}

/// The environment variable that gives a limit when the service gives none.
pub const LIMIT_ENV: &str = "MEMWATCH_LIMIT_BYTES";

fn limit_from_env() -> Result<Option<u64>, RecorderError> {
    match std::env::var(LIMIT_ENV) {
        Err(_) => Ok(None),
        Ok(text) => text.trim().parse().map(Some).map_err(|_| {
            RecorderError::InvalidConfig("MEMWATCH_LIMIT_BYTES must be a number of bytes")
        }),
    }
}

/// Without a hook: through `tracing` when the feature is on and the service installed a
/// subscriber, else one line on stderr per event. Events are rare (start, captures) and
/// exactly what an operator looks for; `.on_event(|_| {})` silences them.
fn default_hook() -> Option<EventHook> {
    Some(Arc::new(|event| {
        #[cfg(feature = "tracing")]
        if tracing::dispatcher::has_been_set() {
            crate::recorder::log_with_tracing(event);
            return;
        }
        eprintln!("memwatch: {event}");
    }))
}

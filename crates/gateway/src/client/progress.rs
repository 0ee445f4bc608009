//! Push progress on stderr: one redrawn line on a terminal (at most 5 times a second), and a
//! summary line at the end whether or not stderr is a terminal.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Shortest time between two redraws of the progress line.
const REDRAW_EVERY: Duration = Duration::from_millis(200);

pub(crate) struct Progress {
    /// Print anything at all (the caller asked for progress).
    enabled: bool,
    /// stderr is a terminal: redraw a live line.
    live: bool,
    started: Instant,
    last_draw: Option<Instant>,
    /// A live line is on screen and must be cleared before the summary.
    drawn: bool,
}

impl Progress {
    pub(crate) fn new(enabled: bool) -> Self {
        Progress {
            enabled,
            live: enabled && std::io::stderr().is_terminal(),
            started: Instant::now(),
            last_draw: None,
            drawn: false,
        }
    }

    /// Redraws the live line if enough time passed since the last one.
    pub(crate) fn update(&mut self, sent: u64, committed: u64) {
        if !self.live {
            return;
        }
        let now = Instant::now();
        if self
            .last_draw
            .is_some_and(|last| now.duration_since(last) < REDRAW_EVERY)
        {
            return;
        }
        self.last_draw = Some(now);
        self.drawn = true;
        let line = format!(
            "sent {}  committed {}  {}/s",
            human(sent),
            human(committed),
            human(rate(sent, self.started.elapsed()))
        );
        // progress is best effort: a closed stderr is no reason to fail the push
        let _ = write!(std::io::stderr().lock(), "\r\x1b[2K{line}");
    }

    /// Prints the final summary line (clearing the live line first).
    pub(crate) fn finish(&mut self, summary: &str) {
        if !self.enabled {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.drawn {
            let _ = write!(err, "\r\x1b[2K");
        }
        let _ = writeln!(err, "{summary}");
    }

    /// The summary of a push: what was sent, where the stream ends, the mean rate.
    pub(crate) fn summary(
        &self,
        stream: &str,
        sent: u64,
        start: u64,
        end: u64,
        retries: u64,
        sealed: bool,
    ) -> String {
        let elapsed = self.started.elapsed();
        format!(
            "pushed {stream}: {} sent in {:.1}s ({}/s), offset {start} -> {end}, {retries} retries{}",
            human(sent),
            elapsed.as_secs_f64(),
            human(rate(sent, elapsed)),
            if sealed { ", sealed" } else { "" }
        )
    }
}

fn rate(bytes: u64, elapsed: Duration) -> u64 {
    let secs = elapsed.as_secs_f64();
    if secs < 0.001 {
        0
    } else {
        (bytes as f64 / secs) as u64
    }
}

/// Bytes in binary units with one decimal: "512 B", "1.5 KiB", "3.0 MiB".
pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic on what they set up
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        let cases = [
            (0, "0 B"),
            (1023, "1023 B"),
            (1536, "1.5 KiB"),
            (3 << 20, "3.0 MiB"),
            (5 << 30, "5.0 GiB"),
        ];
        for (bytes, want) in cases {
            assert_eq!(human(bytes), want);
        }
    }

    #[test]
    fn summary_line() {
        let p = Progress::new(false);
        let s = p.summary("a/b/c", 2048, 10, 2058, 1, true);
        assert!(s.starts_with("pushed a/b/c: 2.0 KiB sent in "), "{s}");
        assert!(s.ends_with("offset 10 -> 2058, 1 retries, sealed"), "{s}");
    }
}

//! Which way the log is written, direct (`O_DIRECT`) or through the page cache, chosen by
//! measuring both while the store runs.
//!
//! Why: neither way is the faster one on every disk, nor on one disk at every hour. On the
//! reference VM's fast-disk hours a direct write + fdatasync ran 1.08-1.31x as fast as a
//! buffered one at 0.78-0.96x the CPU per GiB; on its slow-disk hours the buffered one ran
//! 1.28-1.33x as fast (README, "Performance"). So the writer keeps the way it settled on, and
//! after every [`WriteTrials::every`] bytes written that way it writes [`WriteTrials::trial`]
//! bytes the other way; the other way is kept when its bytes per second of write + sync were
//! clearly higher than the settled way's just before. Direct is preferred on a near tie: it
//! costs less CPU. Both ways write the same log format, and a switch happens between batches,
//! so recovery and readers never know which way a byte was written.

use std::time::Duration;

/// How often the writer tries the other way, and for how long, in bytes of log written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteTrials {
    /// Bytes written the settled way between two trials.
    pub every: u64,
    /// Bytes written the other way in one trial, and the settled way's bytes it is compared
    /// with (the most recent ones).
    pub trial: u64,
}

impl Default for WriteTrials {
    /// A trial of 32 MiB every 512 MiB (the first after 64 MiB): at a few hundred MiB/s, one
    /// every second or two; where the other way is 25 % slower, the trials cost 1.5 % of the
    /// time. 32 MiB is 16 batches of 64 streams, 512 commits of one 64 KiB stream.
    fn default() -> Self {
        WriteTrials {
            every: 512 << 20,
            trial: 32 << 20,
        }
    }
}

/// Buffered writes (which cost more CPU) replace direct ones when they moved at least this
/// many times the bytes per second...
const BUFFERED_MARGIN: f64 = 1.15;
/// ...and direct writes come back when they moved more than this share of the buffered ones'.
const DIRECT_MARGIN: f64 = 0.95;

/// Bytes and the time their writes and syncs took.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    bytes: u64,
    time: Duration,
}

impl Sample {
    fn add(&mut self, bytes: u64, took: Duration) {
        self.bytes += bytes;
        self.time += took;
    }

    /// Bytes per second; `None` before anything was timed.
    fn rate(&self) -> Option<f64> {
        let secs = self.time.as_secs_f64();
        (self.bytes > 0 && secs > 0.0).then(|| self.bytes as f64 / secs)
    }
}

/// What a measured batch made of the way the log is written.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Verdict {
    /// Go on as before.
    Same,
    /// Start a trial of the other way.
    Try { direct: bool },
    /// A trial ended: write `direct` (its way) from now on; `switched` when that is not the
    /// way settled on before; `rates` are the bytes per second of the direct and the buffered
    /// way it compared.
    Settle {
        direct: bool,
        switched: bool,
        rates: (f64, f64),
    },
}

/// The measurements and the choice (see the module's doc).
#[derive(Debug)]
pub(super) struct Chooser {
    trials: WriteTrials,
    /// The way written outside trials: direct or not.
    settled: bool,
    /// Bytes written the settled way since the last trial (at first, `every` less twice
    /// `trial`).
    since_trial: u64,
    /// The settled way's most recent writes: the current and the previous run of up to
    /// `trial` bytes.
    recent: [Sample; 2],
    /// While trying the other way: its writes so far.
    trying: Option<Sample>,
}

impl Chooser {
    pub(super) fn new(trials: WriteTrials, direct: bool) -> Self {
        Chooser {
            trials,
            settled: direct,
            // the first trial soon, once the settled way has a comparison's worth of writes
            since_trial: trials.every.saturating_sub(2 * trials.trial),
            recent: [Sample::default(); 2],
            trying: None,
        }
    }

    /// Accounts one batch of `bytes` written the way `direct` (whose write and sync took
    /// `took`) and says what the next batch does.
    pub(super) fn observe(&mut self, direct: bool, bytes: u64, took: Duration) -> Verdict {
        match &mut self.trying {
            None => {
                if direct != self.settled {
                    // changed from outside (the filesystem refused direct writes): start over
                    *self = Chooser::new(self.trials, direct);
                }
                if self.recent[0].bytes >= self.trials.trial {
                    self.recent = [Sample::default(), self.recent[0]];
                }
                self.recent[0].add(bytes, took);
                self.since_trial += bytes;
                if self.since_trial >= self.trials.every {
                    self.trying = Some(Sample::default());
                    return Verdict::Try {
                        direct: !self.settled,
                    };
                }
                Verdict::Same
            }
            Some(trial) => {
                trial.add(bytes, took);
                if trial.bytes < self.trials.trial {
                    return Verdict::Same;
                }
                let other = *trial;
                let settled = Sample {
                    bytes: self.recent[0].bytes + self.recent[1].bytes,
                    time: self.recent[0].time + self.recent[1].time,
                };
                let (Some(other_rate), Some(settled_rate)) = (other.rate(), settled.rate()) else {
                    // nothing timed (a clock that did not move): keep the settled way
                    self.trying = None;
                    self.since_trial = 0;
                    return Verdict::Settle {
                        direct: self.settled,
                        switched: false,
                        rates: (0.0, 0.0),
                    };
                };
                let margin = if self.settled {
                    BUFFERED_MARGIN
                } else {
                    DIRECT_MARGIN
                };
                let switch = other_rate > settled_rate * margin;
                let rates = if self.settled {
                    (settled_rate, other_rate)
                } else {
                    (other_rate, settled_rate)
                };
                if switch {
                    self.settled = !self.settled;
                    self.recent = [other, Sample::default()];
                }
                self.trying = None;
                self.since_trial = 0;
                Verdict::Settle {
                    direct: self.settled,
                    switched: switch,
                    rates,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Feeds batches of 1 MiB, each taking `direct` or `buffered` ms per MiB as the chooser's
    /// answers say, and returns the way it is settled on after `batches`.
    fn run(chooser: &mut Chooser, mut direct: bool, ms: (u64, u64), batches: usize) -> bool {
        let mut settled = direct;
        for _ in 0..batches {
            let took = Duration::from_millis(if direct { ms.0 } else { ms.1 });
            match chooser.observe(direct, MIB, took) {
                Verdict::Same => {}
                Verdict::Try { direct: d } => direct = d,
                Verdict::Settle { direct: d, .. } => {
                    direct = d;
                    settled = d;
                }
            }
        }
        settled
    }

    fn trials() -> WriteTrials {
        WriteTrials {
            every: 64 * MIB,
            trial: 8 * MIB,
        }
    }

    #[test]
    fn keeps_the_faster_way_and_prefers_direct_on_a_near_tie() {
        // buffered 1.5x as fast: after the first trial it is kept
        let mut chooser = Chooser::new(trials(), true);
        assert!(!run(&mut chooser, true, (3, 2), 80));
        // the disk changes: direct now 2x as fast, found at the next trial
        assert!(run(&mut chooser, false, (1, 2), 80));
        // within the margin (buffered 1.1x as fast): direct stays
        let mut chooser = Chooser::new(trials(), true);
        assert!(run(&mut chooser, true, (11, 10), 300));
        // settled on buffered, direct as fast: back to direct
        let mut chooser = Chooser::new(trials(), false);
        assert!(run(&mut chooser, false, (10, 10), 80));
    }

    #[test]
    fn a_trial_starts_after_every_bytes_and_lasts_trial_bytes() {
        let mut chooser = Chooser::new(trials(), true);
        let ms = Duration::from_millis(2);
        // the first after twice `trial`, the next ones after `every`
        for after in [16, 64] {
            for i in 1..after {
                assert_eq!(chooser.observe(true, MIB, ms), Verdict::Same, "batch {i}");
            }
            assert_eq!(
                chooser.observe(true, MIB, ms),
                Verdict::Try { direct: false }
            );
            for _ in 1..8 {
                assert_eq!(chooser.observe(false, MIB, ms * 2), Verdict::Same);
            }
            // the buffered way was slower: settled back on direct, with both rates
            match chooser.observe(false, MIB, ms * 2) {
                Verdict::Settle {
                    direct: true,
                    switched: false,
                    rates: (direct, buffered),
                } => assert!(direct > buffered * 1.9, "{direct} vs {buffered}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_way_changed_from_outside_starts_over() {
        let mut chooser = Chooser::new(trials(), true);
        for _ in 0..10 {
            chooser.observe(true, MIB, Duration::from_millis(1));
        }
        // direct writes refused: buffered from then on, counted afresh
        for i in 0..15 {
            assert_eq!(
                chooser.observe(false, MIB, Duration::from_millis(1)),
                Verdict::Same,
                "batch {i}"
            );
        }
        assert_eq!(
            chooser.observe(false, MIB, Duration::from_millis(1)),
            Verdict::Try { direct: true }
        );
    }
}

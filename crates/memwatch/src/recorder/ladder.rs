//! The trigger ladder and the soft limit, as pure state machines fed with (time, bytes).
//!
//! Rungs are shares of the memory limit plus an optional growth rate. A rung fires once when
//! the measured bytes reach it, then re-arms only after the bytes fall below it by the
//! hysteresis *and* its cooldown has passed. A higher rung is armed independently, so a
//! climbing spike is captured at each rung it reaches, and an oscillation around one rung
//! yields one capture per cooldown, not one per wobble.

use std::fmt;

/// Why a capture was taken.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Trigger {
    /// The measured bytes reached `share` of the limit (`threshold_bytes`).
    Share { share: f64, threshold_bytes: u64 },
    /// The measured bytes grew by `bytes` or more within the growth window.
    Growth { bytes: u64 },
    /// Requested through [`Recorder::request_capture`](crate::Recorder::request_capture).
    Manual,
}

impl fmt::Display for Trigger {
    /// `share-75`, `growth` or `manual`: the form written to capture metadata.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Share { share, .. } => write!(f, "share-{}", percent(*share)),
            Self::Growth { .. } => f.write_str("growth"),
            Self::Manual => f.write_str("manual"),
        }
    }
}

impl Trigger {
    /// The bytes level that fired (`0` for a manual capture).
    pub fn threshold_bytes(&self) -> u64 {
        match self {
            Self::Share {
                threshold_bytes, ..
            } => *threshold_bytes,
            Self::Growth { bytes } => *bytes,
            Self::Manual => 0,
        }
    }
}

/// A share of the limit as a whole percent, for names.
fn percent(share: f64) -> u64 {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // 0..=100 by validation
    let p = (share * 100.0).round() as u64;
    p
}

/// Fraction of `limit`, in bytes.
pub(crate) fn share_of(limit: u64, share: f64) -> u64 {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let bytes = (limit as f64 * share) as u64;
    bytes
}

/// One share rung.
#[derive(Debug)]
struct Rung {
    share: f64,
    threshold: u64,
    armed: bool,
    /// When it last fired (µs on the recorder's clock), for the cooldown.
    fired_at_us: Option<u64>,
}

/// The whole ladder. Times are microseconds on any monotonic clock.
#[derive(Debug)]
pub(crate) struct Ladder {
    /// Ascending by threshold.
    rungs: Vec<Rung>,
    /// Growth that fires within the window, in bytes; `None` when off.
    growth: Option<u64>,
    growth_armed: bool,
    growth_fired_at_us: Option<u64>,
    hysteresis: u64,
    cooldown_us: u64,
}

impl Ladder {
    /// `shares` of `limit`; `growth_bytes` within the window; `hysteresis` in bytes.
    pub(crate) fn new(
        limit: u64,
        shares: &[f64],
        growth_bytes: Option<u64>,
        hysteresis: u64,
        cooldown_us: u64,
    ) -> Self {
        let mut rungs: Vec<Rung> = shares
            .iter()
            .map(|&share| Rung {
                share,
                threshold: share_of(limit, share),
                armed: true,
                fired_at_us: None,
            })
            .collect();
        rungs.sort_by_key(|r| r.threshold);
        Self {
            rungs,
            growth: growth_bytes,
            growth_armed: true,
            growth_fired_at_us: None,
            hysteresis,
            cooldown_us,
        }
    }

    /// Feeds one measurement: `value` now and the lowest value within the growth window.
    /// Returns the trigger to capture for, if a rung fired.
    pub(crate) fn evaluate(&mut self, now_us: u64, value: u64, window_min: u64) -> Option<Trigger> {
        let cooled =
            |fired: Option<u64>| fired.is_none_or(|t| now_us.saturating_sub(t) >= self.cooldown_us);
        for rung in &mut self.rungs {
            if !rung.armed
                && value.saturating_add(self.hysteresis) < rung.threshold
                && cooled(rung.fired_at_us)
            {
                rung.armed = true;
            }
        }
        let grown = value.saturating_sub(window_min);
        if let Some(growth) = self.growth
            && !self.growth_armed
            && grown.saturating_add(self.hysteresis) < growth
            && cooled(self.growth_fired_at_us)
        {
            self.growth_armed = true;
        }

        let mut fired = None;
        for rung in &mut self.rungs {
            if rung.armed && value >= rung.threshold {
                rung.armed = false;
                rung.fired_at_us = Some(now_us);
                fired = Some(Trigger::Share {
                    share: rung.share,
                    threshold_bytes: rung.threshold,
                });
            }
        }
        if let Some(growth) = self.growth
            && self.growth_armed
            && grown >= growth
        {
            self.growth_armed = false;
            self.growth_fired_at_us = Some(now_us);
            // A share rung crossed in the same moment names the capture; one capture for both.
            fired = fired.or(Some(Trigger::Growth { bytes: growth }));
        }
        fired
    }

    /// The lowest level at which the allocator should wake the recorder: the lowest armed
    /// rung, or the growth mark above the window's minimum.
    pub(crate) fn armed_level(&self, window_min: u64) -> Option<u64> {
        let rung = self
            .rungs
            .iter()
            .filter(|r| r.armed)
            .map(|r| r.threshold)
            .min();
        let growth = self
            .growth
            .filter(|_| self.growth_armed)
            .map(|g| window_min.saturating_add(g));
        match (rung, growth) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The soft limit: over at `high` bytes, back under below `low`.
#[derive(Debug)]
pub(crate) struct SoftLimit {
    high: u64,
    low: u64,
    over: bool,
}

/// A change of the soft-limit state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SoftChange {
    Entered,
    Left,
}

impl SoftLimit {
    pub(crate) fn new(high: u64, low: u64) -> Self {
        Self {
            high,
            low: low.min(high),
            over: false,
        }
    }

    pub(crate) fn evaluate(&mut self, value: u64) -> Option<SoftChange> {
        if !self.over && value >= self.high {
            self.over = true;
            Some(SoftChange::Entered)
        } else if self.over && value < self.low {
            self.over = false;
            Some(SoftChange::Left)
        } else {
            None
        }
    }
}

/// Lowest value over a sliding window, kept as the minima of ten buckets: O(1) per sample, no
/// scan of the timeline. The window it covers is between `window × 0.9` and `window`.
#[derive(Debug)]
pub(crate) struct WindowMin {
    mins: [u64; 10],
    index: usize,
    bucket_us: u64,
    bucket_end_us: u64,
}

impl WindowMin {
    pub(crate) fn new(window_us: u64) -> Self {
        Self {
            mins: [u64::MAX; 10],
            index: 0,
            bucket_us: (window_us / 10).max(1),
            bucket_end_us: 0,
        }
    }

    /// Adds a sample and returns the window's minimum (including it).
    pub(crate) fn push(&mut self, now_us: u64, value: u64) -> u64 {
        if now_us >= self.bucket_end_us {
            let behind = (now_us - self.bucket_end_us) / self.bucket_us + 1;
            if behind >= 10 {
                self.mins = [u64::MAX; 10];
            } else {
                for _ in 0..behind {
                    self.index = (self.index + 1) % 10;
                    self.mins[self.index] = u64::MAX;
                }
            }
            self.bucket_end_us = now_us - now_us % self.bucket_us + self.bucket_us;
        }
        self.mins[self.index] = self.mins[self.index].min(value);
        self.mins.iter().copied().min().unwrap_or(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn ladder() -> Ladder {
        // 100 MiB limit, rungs at 60/75/90 MiB, growth 25 MiB, 5 MiB hysteresis, 10 s cooldown.
        Ladder::new(
            100 * MIB,
            &[0.6, 0.75, 0.9],
            Some(25 * MIB),
            5 * MIB,
            10_000_000,
        )
    }

    fn name(t: Option<Trigger>) -> Option<String> {
        t.map(|t| t.to_string())
    }

    #[test]
    fn each_rung_fires_once_as_a_spike_climbs() {
        let mut l = ladder();
        assert_eq!(l.armed_level(50 * MIB), Some(60 * MIB));
        // Slow climb: no growth trigger (window min follows).
        assert_eq!(
            name(l.evaluate(0, 61 * MIB, 50 * MIB)),
            Some("share-60".into())
        );
        assert_eq!(l.evaluate(1, 62 * MIB, 55 * MIB), None);
        assert_eq!(l.armed_level(55 * MIB), Some(75 * MIB));
        // Jumping past two rungs at once names the highest.
        assert_eq!(
            name(l.evaluate(2, 95 * MIB, 80 * MIB)),
            Some("share-90".into())
        );
        assert_eq!(l.evaluate(3, 99 * MIB, 95 * MIB), None);
        // Only the growth mark is left armed, above the window's minimum.
        assert_eq!(l.armed_level(95 * MIB), Some(120 * MIB));
    }

    #[test]
    fn hysteresis_and_cooldown_both_gate_re_arming() {
        let mut l = ladder();
        assert!(l.evaluate(0, 61 * MIB, 61 * MIB).is_some());
        // Falls only 3 MiB below the rung: within hysteresis, stays disarmed.
        assert_eq!(l.evaluate(20_000_000, 57 * MIB, 57 * MIB), None);
        assert_eq!(l.evaluate(20_000_001, 61 * MIB, 57 * MIB), None);
        // Falls clearly below but inside the cooldown: still disarmed.
        let mut l = ladder();
        assert!(l.evaluate(0, 61 * MIB, 61 * MIB).is_some());
        assert_eq!(l.evaluate(1_000_000, 40 * MIB, 40 * MIB), None);
        assert_eq!(l.evaluate(2_000_000, 61 * MIB, 40 * MIB), None);
        // Below and cooled down: fires again.
        assert_eq!(l.evaluate(11_000_000, 40 * MIB, 40 * MIB), None);
        assert_eq!(
            name(l.evaluate(11_000_001, 61 * MIB, 40 * MIB)),
            Some("share-60".into())
        );
    }

    #[test]
    fn growth_fires_below_the_rungs_and_arms_above_the_window_minimum() {
        let mut l = ladder();
        assert_eq!(l.armed_level(10 * MIB), Some(35 * MIB));
        assert_eq!(l.evaluate(0, 34 * MIB, 10 * MIB), None);
        assert_eq!(
            name(l.evaluate(1, 36 * MIB, 10 * MIB)),
            Some("growth".into())
        );
        assert_eq!(l.armed_level(36 * MIB), Some(60 * MIB));
        // Growth and a rung at the same moment: one capture, named after the rung.
        let mut l = ladder();
        assert_eq!(
            name(l.evaluate(0, 70 * MIB, 10 * MIB)),
            Some("share-60".into())
        );
        assert_eq!(l.evaluate(1, 71 * MIB, 10 * MIB), None);
    }

    #[test]
    fn soft_limit_enters_high_and_leaves_below_low() {
        let mut s = SoftLimit::new(80, 70);
        assert_eq!(s.evaluate(79), None);
        assert_eq!(s.evaluate(80), Some(SoftChange::Entered));
        assert_eq!(s.evaluate(75), None);
        assert_eq!(s.evaluate(85), None);
        assert_eq!(s.evaluate(69), Some(SoftChange::Left));
        assert_eq!(s.evaluate(79), None);
    }

    #[test]
    fn window_min_forgets_samples_older_than_the_window() {
        let mut w = WindowMin::new(1_000_000);
        assert_eq!(w.push(0, 10), 10);
        assert_eq!(w.push(500_000, 50), 10);
        assert_eq!(w.push(950_000, 60), 10);
        // A window after the low sample's bucket: it is gone.
        assert_eq!(w.push(1_050_000, 70), 50);
        assert_eq!(w.push(5_000_000, 90), 90);
    }
}

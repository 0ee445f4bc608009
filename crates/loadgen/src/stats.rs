//! Latency histogram with fixed memory, percentile queries and a serializable summary.
//!
//! Recording a latency never allocates: a scenario of any length with any number of streams
//! costs one fixed-size array of counters per stream, merged at the end.

use std::time::Duration;

use serde::Serialize;

/// Percentiles and extremes of one set of latencies, in milliseconds for humans and JSON.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Number of recorded latencies (successful requests or syncs).
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// A log-linear histogram of durations with microsecond resolution.
///
/// Values below 128 µs are exact; above, each power of two is split into 64 buckets, so a
/// reported percentile is within about 1.6 % of the true value (and never above the maximum).
#[derive(Debug, Clone)]
pub struct Histogram {
    /// Count per bucket, `BUCKETS` long, allocated once.
    counts: Box<[u64]>,
    count: u64,
    /// Sum of all values in µs, for the mean.
    sum_us: u128,
    /// Exact largest value in µs, so `max` is not a bucket estimate.
    max_us: u64,
}

impl Histogram {
    pub fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            count: 0,
            sum_us: 0,
            max_us: 0,
        }
    }

    pub fn record(&mut self, value: Duration) {
        let us = u64::try_from(value.as_micros())
            .unwrap_or(u64::MAX)
            .min(MAX_VALUE_US);
        self.counts[bucket_index(us)] += 1;
        self.count += 1;
        self.sum_us += u128::from(us);
        self.max_us = self.max_us.max(us);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum_us += other.sum_us;
        self.max_us = self.max_us.max(other.max_us);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn max(&self) -> Duration {
        Duration::from_micros(self.max_us)
    }

    /// The value at quantile `q` (0.0..=1.0): the highest value of the bucket holding the
    /// `ceil(q × count)`-th smallest sample, capped at the exact maximum. Zero when empty.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        let q = q.clamp(0.0, 1.0);
        // Rank of the wanted sample, 1-based; the float product is exact enough for counts
        // far beyond what a benchmark records.
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0u64;
        for (index, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Duration::from_micros(bucket_high(index).min(self.max_us));
            }
        }
        self.max()
    }

    pub fn summary(&self) -> LatencySummary {
        let mean_us = if self.count == 0 {
            0.0
        } else {
            self.sum_us as f64 / self.count as f64
        };
        LatencySummary {
            count: self.count,
            mean_ms: mean_us / 1000.0,
            p50_ms: ms(self.quantile(0.50)),
            p90_ms: ms(self.quantile(0.90)),
            p99_ms: ms(self.quantile(0.99)),
            max_ms: ms(self.max()),
        }
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

/// A duration in milliseconds as a float, the unit every report uses.
pub fn ms(d: Duration) -> f64 {
    // Via whole microseconds, so JSON shows 4.159 rather than 4.159000000000001.
    d.as_micros() as f64 / 1000.0
}

/// Sub-buckets per power of two, as bits: 2^6 = 64.
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Largest recordable value: 2^40 µs is about 12 days; larger values are clamped.
const MAX_EXP: u32 = 40;
const MAX_VALUE_US: u64 = (1 << MAX_EXP) - 1;
/// Values below `2 × SUB` get one bucket each, then `SUB` buckets per shift up to the largest.
const BUCKETS: usize = (SUB * (MAX_EXP - SUB_BITS + 1) as u64) as usize;

fn bucket_index(us: u64) -> usize {
    if us < 2 * SUB {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros();
    let shift = exp - SUB_BITS;
    // `us >> shift` lies in [SUB, 2 × SUB).
    (u64::from(shift) * SUB + (us >> shift)) as usize
}

/// The highest value (µs) that lands in bucket `index`.
fn bucket_high(index: usize) -> u64 {
    let index = index as u64;
    if index < 2 * SUB {
        return index;
    }
    let shift = index / SUB - 1;
    let mantissa = index % SUB + SUB;
    ((mantissa + 1) << shift) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist_of(values_us: &[u64]) -> Histogram {
        let mut h = Histogram::new();
        for &v in values_us {
            h.record(Duration::from_micros(v));
        }
        h
    }

    #[test]
    fn buckets_are_contiguous_and_cover_their_values() {
        let mut previous = 0usize;
        for us in (0..200_000u64).chain([MAX_VALUE_US - 1, MAX_VALUE_US]) {
            let index = bucket_index(us);
            assert!(index < BUCKETS, "{us} µs maps past the end");
            assert!(index >= previous, "bucket index went down at {us}");
            assert!(bucket_high(index) >= us, "bucket of {us} ends below it");
            if index > 0 {
                assert!(
                    bucket_high(index - 1) < us,
                    "{us} also fits the previous bucket"
                );
            }
            previous = index;
        }
    }

    #[test]
    fn small_values_are_exact() {
        let h = hist_of(&(1..=100).collect::<Vec<_>>());
        assert_eq!(h.quantile(0.50), Duration::from_micros(50));
        assert_eq!(h.quantile(0.99), Duration::from_micros(99));
        assert_eq!(h.quantile(1.0), Duration::from_micros(100));
        assert_eq!(h.quantile(0.0), Duration::from_micros(1));
    }

    #[test]
    fn large_values_are_within_two_percent_and_capped_at_max() {
        let values: Vec<u64> = (1..=10_000).map(|i| i * 1_000).collect();
        let h = hist_of(&values);
        for (q, exact) in [(0.5, 5_000_000u64), (0.9, 9_000_000), (0.99, 9_900_000)] {
            let got = h.quantile(q).as_micros() as f64;
            let error = (got - exact as f64).abs() / exact as f64;
            assert!(error < 0.016, "q{q}: got {got} µs, want about {exact}");
        }
        assert_eq!(h.quantile(1.0), Duration::from_secs(10));
        assert_eq!(h.max(), Duration::from_secs(10));
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let (a, b) = ([3u64, 700, 12_000, 5], [90u64, 1_000_000, 44]);
        let mut merged = hist_of(&a);
        merged.merge(&hist_of(&b));
        let all = hist_of(&[&a[..], &b[..]].concat());
        assert_eq!(merged.summary(), all.summary());
        assert_eq!(merged.count(), 7);
    }

    #[test]
    fn summary_reports_milliseconds_and_empty_is_zero() {
        assert_eq!(Histogram::new().summary().p99_ms, 0.0);
        let s = hist_of(&[1_000, 2_000, 3_000]).summary();
        assert_eq!(s.count, 3);
        assert!((s.mean_ms - 2.0).abs() < 1e-9);
        assert!((s.max_ms - 3.0).abs() < 1e-9);
        assert!((s.p50_ms - 2.0).abs() < 0.04, "p50 {}", s.p50_ms);
    }
}

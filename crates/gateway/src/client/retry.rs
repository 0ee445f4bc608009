//! Retry policy: exponential backoff with full jitter, `Retry-After` honoured, and a budget of
//! time without progress after which the client gives up.

use std::time::{Duration, Instant};

use tracing::debug;

use super::error::{ClientError, Transient};

/// How failed attempts are retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Backoff ceiling of the first retry; doubles with each failure in a row. Default 100 ms.
    pub initial_backoff: Duration,
    /// Largest backoff ceiling. Default 10 s.
    pub max_backoff: Duration,
    /// Give up when this much time passes without the committed offset (push) or the bytes
    /// received (cat) moving forward. Default 5 min.
    pub max_without_progress: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            max_without_progress: Duration::from_secs(5 * 60),
        }
    }
}

impl RetryPolicy {
    /// The ceiling of the `attempt`-th backoff in a row (0-based), before jitter.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// "Full jitter": a uniformly random delay in `[0, ceiling]`, from a random `u64`.
fn full_jitter(ceiling: Duration, random: u64) -> Duration {
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(random % (nanos.saturating_add(1)).max(1))
}

/// The state of one retry loop: failures in a row, when progress was last made, the RNG.
pub(crate) struct Retrier {
    policy: RetryPolicy,
    /// Failures since the last progress; sets the backoff ceiling.
    attempt: u32,
    last_progress: Instant,
    /// Total retries, reported to the user.
    retries: u64,
    /// xorshift64* state for the jitter; seeded from the OS.
    rng: u64,
    /// Say on stderr what failed and when the next try comes (the CLI turns this on).
    notices: bool,
}

impl Retrier {
    pub(crate) fn new(policy: RetryPolicy, notices: bool) -> Self {
        let seed = getrandom::u64().unwrap_or_else(|_| {
            // no OS randomness: jitter from the clock is good enough to spread clients
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x9E37_79B9_7F4A_7C15)
        });
        Retrier {
            policy,
            attempt: 0,
            last_progress: Instant::now(),
            retries: 0,
            rng: seed | 1,
            notices,
        }
    }

    pub(crate) fn retries(&self) -> u64 {
        self.retries
    }

    /// Records forward progress: the next failure starts again from the smallest backoff.
    pub(crate) fn progress(&mut self) {
        self.attempt = 0;
        self.last_progress = Instant::now();
    }

    /// Counts a retry that needs no wait (the server told us exactly where to go on), still
    /// bounded by the no-progress budget.
    pub(crate) fn immediate(&mut self, why: Transient) -> Result<(), ClientError> {
        self.check_budget(Duration::ZERO, &why)?;
        self.retries += 1;
        debug!(reason = %why.reason, "retrying at once");
        Ok(())
    }

    /// Waits before the next attempt, or gives up when the no-progress budget is spent.
    pub(crate) async fn backoff(&mut self, why: Transient) -> Result<(), ClientError> {
        let delay = match why.retry_after {
            Some(after) => after,
            None => full_jitter(self.policy.ceiling(self.attempt), self.next_random()),
        };
        self.check_budget(delay, &why)?;
        self.attempt = self.attempt.saturating_add(1);
        self.retries += 1;
        debug!(
            reason = %why.reason,
            delay_ms = delay.as_millis() as u64,
            retries = self.retries,
            "retrying after a failure"
        );
        if self.notices {
            let left = self
                .policy
                .max_without_progress
                .saturating_sub(self.last_progress.elapsed());
            eprintln!(
                "engine-gateway: {}; retrying in {:.1}s (retry {}, giving up in {}s without progress)",
                why.reason,
                delay.as_secs_f64(),
                self.retries,
                left.as_secs()
            );
        }
        tokio::time::sleep(delay).await;
        Ok(())
    }

    fn check_budget(&self, delay: Duration, why: &Transient) -> Result<(), ClientError> {
        let waited = self.last_progress.elapsed();
        if waited.saturating_add(delay) > self.policy.max_without_progress {
            return Err(ClientError::GaveUp {
                retries: self.retries,
                waited,
                last: why.reason.clone(),
            });
        }
        Ok(())
    }

    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic on what they set up
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_up_to_the_max() {
        let p = RetryPolicy::default();
        let ms = |a| p.ceiling(a).as_millis();
        assert_eq!(
            [ms(0), ms(1), ms(2), ms(6), ms(7), ms(40)],
            [100, 200, 400, 6400, 10_000, 10_000]
        );
    }

    #[test]
    fn jitter_stays_within_the_ceiling() {
        let ceiling = Duration::from_millis(250);
        let mut r = Retrier::new(RetryPolicy::default(), false);
        let delays: Vec<Duration> = (0..1000)
            .map(|_| full_jitter(ceiling, r.next_random()))
            .collect();
        assert!(delays.iter().all(|d| *d <= ceiling));
        // spread over the whole range, not stuck at one end
        assert!(delays.iter().any(|d| *d < ceiling / 4));
        assert!(delays.iter().any(|d| *d > ceiling * 3 / 4));
        assert_eq!(full_jitter(Duration::ZERO, 12345), Duration::ZERO);
    }

    #[tokio::test]
    async fn gives_up_without_progress() {
        let policy = RetryPolicy {
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            max_without_progress: Duration::from_millis(30),
        };
        let mut r = Retrier::new(policy, false);
        let mut n = 0;
        let err = loop {
            match r.backoff(Transient::new("HTTP 503: busy")).await {
                Ok(()) => n += 1,
                Err(err) => break err,
            }
            if n == 3 {
                r.progress();
            }
        };
        assert!(n > 3, "retried {n} times");
        assert_eq!(r.retries(), n);
        assert!(err.to_string().contains("HTTP 503: busy"), "{err}");
        // a Retry-After beyond the budget gives up at once instead of sleeping
        let mut r = Retrier::new(policy, false);
        let long = Transient {
            reason: "HTTP 429".into(),
            retry_after: Some(Duration::from_secs(60)),
        };
        assert!(r.backoff(long).await.is_err());
    }
}

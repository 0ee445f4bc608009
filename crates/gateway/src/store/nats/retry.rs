//! Short attempts, retried until the request's deadline, so a leader election costs the time
//! the cluster needs and not one long timeout after another.
//!
//! Every JetStream request and publish of the data path has `attempt_timeout` (1 s by
//! default); a transient failure (a timeout, no responders while a new leader is elected, a
//! broken pipe) is retried after a short pause until `request_timeout` has passed since the
//! first attempt. A retried publish is idempotent: it carries the same `Nats-Msg-Id`, and a
//! duplicate acknowledgement is only accepted for our own bytes (`append.rs`). While the
//! connection is known to be down nothing is attempted: the caller answers 503 at once.

use std::future::Future;
use std::sync::{Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use async_nats::connection::State;

use super::Inner;

/// Pause between two attempts; the new leader of an R3 group is usually elected within 1–3 s.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// How often the health watch asks the stream's leader about its quorum while it has one.
pub(super) const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// How often it asks while writes are refused, so they resume soon after a new leader.
const HEALTH_INTERVAL_DOWN: Duration = Duration::from_millis(250);
/// A verdict older than this is not trusted to refuse requests.
const HEALTH_FRESH: Duration = Duration::from_secs(3);
/// Readiness comes back only this long after the last failed probe: a follower that died at
/// the failure is no longer counted by then.
const SETTLE: Duration = super::read::PEER_SILENCE;
/// Unanswered stream-info probes in a row that count as "no leader": one may be a busy
/// server; two (each waited `attempt_timeout`) mean no leader answers, as when quorum is
/// lost and the leader has stepped down.
const UNANSWERED_PROBES_DOWN: u32 = 2;

/// The last readiness verdict (the health watch's or a probe's): while it says the stream
/// cannot take writes (no leader, no quorum), requests are refused at once instead of each
/// waiting out `request_timeout`.
#[derive(Default)]
pub(super) struct Health {
    state: Mutex<HealthState>,
}

#[derive(Default)]
struct HealthState {
    /// When the stream was last found unable to take writes, and why; `None` when it could.
    down: Option<(Instant, String)>,
    /// Stream-info probes in a row that got no answer.
    unanswered: u32,
    /// When a probe last failed in any way (no answer, no leader, no quorum).
    last_failure: Option<Instant>,
    /// Whether the stream has replicas, as the last answered probe saw it.
    clustered: bool,
}

impl Health {
    /// A probe's answer: the stream's own account of its leader and replicas.
    pub(super) fn record(&self, verdict: &Result<(), crate::store::StoreError>, clustered: bool) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.unanswered = 0;
        state.clustered = clustered;
        state.down = match verdict {
            Ok(()) => None,
            Err(err) => {
                let now = Instant::now();
                state.last_failure = Some(now);
                Some((now, err.to_string()))
            }
        };
    }

    /// A probe that found the connection down: readiness waits for [`SETTLE`] after it too
    /// (the node it reconnects to may still count the lost one).
    pub(super) fn record_disconnected(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.last_failure = Some(Instant::now());
    }

    /// A probe that got no answer (a timeout, no responders).
    pub(super) fn record_unanswered(&self, err: &crate::store::StoreError) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.last_failure = Some(Instant::now());
        state.unanswered = state.unanswered.saturating_add(1);
        if state.unanswered >= UNANSWERED_PROBES_DOWN {
            state.down = Some((Instant::now(), err.to_string()));
        }
    }

    /// How long ago a probe failed, while that is less than [`SETTLE`] and the stream has
    /// replicas: readiness stays 503 meanwhile. A leader goes on counting a follower that just
    /// died for a few seconds (`PEER_SILENCE`), so the first good answer after a failure is not
    /// yet proof of a quorum; without this, `/readyz` flapped back to 200 for seconds after
    /// quorum was lost. A single server's good answer is proof enough.
    pub(super) fn settling(&self) -> Option<Duration> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !state.clustered {
            return None;
        }
        state
            .last_failure
            .map(|at| at.elapsed())
            .filter(|ago| *ago < SETTLE)
    }

    /// Why writes cannot succeed now, when a fresh verdict says so.
    pub(super) fn known_down(&self) -> Option<String> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state
            .down
            .as_ref()
            .filter(|(at, _)| at.elapsed() < HEALTH_FRESH)
            .map(|(_, why)| why.clone())
    }
}

/// Checks readiness every [`HEALTH_INTERVAL`] (faster while writes are refused) until the
/// store is closed or dropped.
pub(super) async fn watch_health(inner: Weak<Inner>) {
    let mut interval = HEALTH_INTERVAL;
    loop {
        tokio::time::sleep(interval).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.closed.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        // Records its verdict in `inner.health`.
        let _ = inner.ready().await;
        interval = if inner.health.known_down().is_some() {
            HEALTH_INTERVAL_DOWN
        } else {
            HEALTH_INTERVAL
        };
    }
}

/// Why a retried operation gave up.
pub(super) enum Attempts<E> {
    /// The last attempt's error: not transient, or the deadline passed.
    Failed(E),
    /// The connection is down: nothing was (or will be) attempted until it is back.
    Disconnected,
}

impl Inner {
    /// Whether the client is connected now (the reconnect loop runs in the background).
    pub(super) fn connected(&self) -> bool {
        matches!(self.client.connection_state(), State::Connected)
    }

    /// Runs `op` until it succeeds, fails with an error `transient` does not accept, the
    /// connection drops, the health watch finds the stream unable to take writes, or
    /// `request_timeout` passes.
    pub(super) async fn retrying<T, E, F, Fut>(
        &self,
        transient: impl Fn(&E) -> bool,
        mut op: F,
    ) -> Result<T, Attempts<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let deadline = Instant::now() + self.request_timeout;
        loop {
            if !self.connected() {
                return Err(Attempts::Disconnected);
            }
            let err = match op().await {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            if !transient(&err)
                || Instant::now() + RETRY_PAUSE >= deadline
                || self.health.known_down().is_some()
            {
                return Err(Attempts::Failed(err));
            }
            self.metrics
                .retries
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

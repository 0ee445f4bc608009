//! The global byte budget: bytes read from clients but not yet committed.
//!
//! Every request body byte is covered by a permit from one shared semaphore before the gateway
//! holds it. When the budget is spent, handlers stop polling their bodies, hyper stops reading
//! sockets, and TCP pushes back on the senders: memory stays bounded whatever clients do.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A shared budget of bytes in flight.
#[derive(Clone)]
pub struct ByteBudget {
    semaphore: Arc<Semaphore>,
    /// Total size, for the metrics gauge of bytes in use.
    total: usize,
}

/// Bytes held out of the budget; returned when dropped.
pub struct Reservation {
    /// `None` for an empty reservation (no permits to hold).
    permit: Option<OwnedSemaphorePermit>,
}

impl ByteBudget {
    /// A budget of `total` bytes (clamped to what a semaphore can count).
    pub fn new(total: usize) -> Self {
        let total = total.clamp(1, Semaphore::MAX_PERMITS);
        ByteBudget {
            semaphore: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Waits for `bytes` of budget, at most `patience`. `None` means the gateway is overloaded.
    pub async fn reserve(&self, bytes: usize, patience: Duration) -> Option<Reservation> {
        let bytes = u32::try_from(bytes.min(self.total)).unwrap_or(u32::MAX);
        if bytes == 0 {
            return Some(Reservation { permit: None });
        }
        let acquire = Arc::clone(&self.semaphore).acquire_many_owned(bytes);
        match tokio::time::timeout(patience, acquire).await {
            Ok(Ok(permit)) => Some(Reservation {
                permit: Some(permit),
            }),
            // Closed never happens (we never close it); treat like overload.
            Ok(Err(_)) | Err(_) => None,
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes currently reserved.
    pub fn in_use(&self) -> usize {
        self.total - self.semaphore.available_permits()
    }
}

impl Reservation {
    /// Adds another reservation to this one, so both are released together.
    pub fn merge(&mut self, other: Reservation) {
        match (&mut self.permit, other.permit) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exhausted_budget_waits_then_refuses() {
        let budget = ByteBudget::new(100);
        let mut a = budget.reserve(60, Duration::from_millis(10)).await.unwrap();
        a.merge(budget.reserve(40, Duration::from_millis(10)).await.unwrap());
        assert_eq!(budget.in_use(), 100);
        assert!(budget.reserve(1, Duration::from_millis(20)).await.is_none());
        drop(a);
        assert_eq!(budget.in_use(), 0);
        // Larger than the whole budget: clamped, so it can still be served alone.
        assert!(
            budget
                .reserve(1000, Duration::from_millis(10))
                .await
                .is_some()
        );
    }
}

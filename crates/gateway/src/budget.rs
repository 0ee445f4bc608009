//! The byte budget: bytes read from clients or the store and not yet handed on, shared fairly.
//!
//! Every body byte the gateway holds is covered by permits from one global semaphore before it
//! is held, and charged for what is really held (a trickling writer holds the bytes it sent,
//! not a chunk's capacity). When the budget is spent, handlers stop polling their bodies, hyper
//! stops reading sockets, and TCP pushes back on the senders: memory stays bounded whatever
//! clients do.
//!
//! Fairness: one org (the org of the stream a request works on) may hold at most
//! `org_share` of the budget, so one tenant's stalled readers or trickling writers leave the
//! rest to the others. One connection holds at most one chunk (the handlers' own bound).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A shared budget of bytes in flight, with a cap per org.
#[derive(Clone)]
pub struct ByteBudget {
    global: Arc<Semaphore>,
    /// Total size, for the metrics gauge of bytes in use.
    total: usize,
    /// Most one org may hold at once.
    org_cap: usize,
    /// The orgs holding budget now (an entry lives while someone holds or waits for it).
    orgs: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

/// Bytes held out of the budget; returned when dropped.
#[derive(Default)]
pub struct Reservation {
    global: Option<OwnedSemaphorePermit>,
    org: Option<OrgPermit>,
}

/// The org's share of a reservation; removes the org's entry when it is the last holder.
struct OrgPermit {
    permit: Option<OwnedSemaphorePermit>,
    org: String,
    orgs: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

impl ByteBudget {
    /// A budget of `total` bytes of which one org may hold `org_share` (0 < share ≤ 1).
    pub fn new(total: usize, org_share: f64) -> Self {
        let total = total.clamp(1, Semaphore::MAX_PERMITS);
        let org_cap = ((total as f64 * org_share.clamp(0.0, 1.0)) as usize).clamp(1, total);
        ByteBudget {
            global: Arc::new(Semaphore::new(total)),
            total,
            org_cap,
            orgs: Arc::default(),
        }
    }

    /// Waits for `bytes` of budget charged to `org`, at most `patience`. `None` means the
    /// gateway (or the org's share) is exhausted.
    pub async fn reserve(
        &self,
        org: &str,
        bytes: usize,
        patience: Duration,
    ) -> Option<Reservation> {
        let bytes = bytes.min(self.org_cap);
        if bytes == 0 {
            return Some(Reservation::default());
        }
        let count = u32::try_from(bytes).unwrap_or(u32::MAX);
        let semaphore = {
            let mut orgs = self.orgs.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(
                orgs.entry(org.to_owned())
                    .or_insert_with(|| Arc::new(Semaphore::new(self.org_cap))),
            )
        };
        let mut org_permit = OrgPermit {
            permit: None,
            org: org.to_owned(),
            orgs: Arc::clone(&self.orgs),
        };
        let acquire = async {
            org_permit.permit = Some(semaphore.acquire_many_owned(count).await.ok()?);
            Arc::clone(&self.global)
                .acquire_many_owned(count)
                .await
                .ok()
        };
        // On timeout `org_permit` drops here and the org's entry goes when it is the last one.
        let global = tokio::time::timeout(patience, acquire)
            .await
            .ok()
            .flatten()?;
        Some(Reservation {
            global: Some(global),
            org: Some(org_permit),
        })
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes currently reserved.
    pub fn in_use(&self) -> usize {
        self.total - self.global.available_permits()
    }

    /// Orgs holding or waiting for budget now.
    pub fn orgs(&self) -> usize {
        self.orgs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Reservation {
    /// Bytes this reservation holds.
    pub fn bytes(&self) -> usize {
        self.global
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits)
    }

    /// Adds another reservation (of the same org) to this one, so both are released together.
    pub fn merge(&mut self, mut other: Reservation) {
        match (&mut self.global, other.global.take()) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
        let theirs = other.org.as_mut().and_then(|o| o.permit.take());
        match (&mut self.org, theirs) {
            (Some(mine), Some(theirs)) => match &mut mine.permit {
                Some(permit) => permit.merge(theirs),
                None => mine.permit = Some(theirs),
            },
            (None, Some(theirs)) => {
                if let Some(mut org) = other.org.take() {
                    org.permit = Some(theirs);
                    self.org = Some(org);
                }
            }
            (_, None) => {}
        }
    }

    /// Gives back all but `keep` bytes (e.g. a read that returned less than it reserved).
    pub fn shrink_to(&mut self, keep: usize) {
        let surplus = self.bytes().saturating_sub(keep);
        if surplus == 0 {
            return;
        }
        if let Some(global) = &mut self.global {
            drop(global.split(surplus));
        }
        if let Some(OrgPermit {
            permit: Some(permit),
            ..
        }) = &mut self.org
        {
            drop(permit.split(surplus.min(permit.num_permits())));
        }
    }
}

impl Drop for OrgPermit {
    fn drop(&mut self) {
        let mut orgs = self.orgs.lock().unwrap_or_else(PoisonError::into_inner);
        drop(self.permit.take());
        // The map's reference is the only one left: nobody holds or waits for this org.
        if orgs
            .get(&self.org)
            .is_some_and(|semaphore| Arc::strong_count(semaphore) == 1)
        {
            orgs.remove(&self.org);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_millis(20);

    #[tokio::test]
    async fn exhausted_budget_waits_then_refuses() {
        let budget = ByteBudget::new(100, 1.0);
        let mut a = budget.reserve("a", 60, SHORT).await.unwrap();
        a.merge(budget.reserve("a", 40, SHORT).await.unwrap());
        assert_eq!((budget.in_use(), a.bytes()), (100, 100));
        assert!(budget.reserve("b", 1, SHORT).await.is_none());
        drop(a);
        assert_eq!((budget.in_use(), budget.orgs()), (0, 0));
        // Larger than the whole budget: clamped, so it can still be served alone.
        assert!(budget.reserve("a", 1000, SHORT).await.is_some());
    }

    #[tokio::test]
    async fn one_org_cannot_take_the_others_share() {
        let budget = ByteBudget::new(100, 0.5);
        let a = budget.reserve("a", 50, SHORT).await.unwrap();
        assert!(budget.reserve("a", 1, SHORT).await.is_none());
        let b = budget.reserve("b", 50, SHORT).await.unwrap();
        assert_eq!((budget.in_use(), budget.orgs()), (100, 2));
        drop((a, b));
        assert_eq!((budget.in_use(), budget.orgs()), (0, 0));
    }

    #[tokio::test]
    async fn shrink_gives_back_the_surplus() {
        let budget = ByteBudget::new(100, 0.5);
        let mut a = budget.reserve("a", 50, SHORT).await.unwrap();
        a.shrink_to(10);
        assert_eq!((budget.in_use(), a.bytes()), (10, 10));
        let _more = budget.reserve("a", 40, SHORT).await.unwrap();
        assert!(budget.reserve("a", 1, SHORT).await.is_none());
    }
}

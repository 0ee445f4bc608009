//! Per-stream wakeups for followers: an entry exists only while someone waits on that stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Streams someone waits on, each with the `Notify` the writer pokes after a commit.
///
/// Every clone and drop of the `Arc`s happens under the lock, so the strong count tells exactly
/// how many waiters remain and the last one removes the entry.
#[derive(Default)]
pub(super) struct Waiters {
    map: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Waiters {
    /// Registers a waiter on `name` until the guard is dropped.
    pub(super) fn register(&self, name: &str) -> WaitGuard<'_> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let notify = map.entry(name.to_owned()).or_default().clone();
        WaitGuard {
            waiters: self,
            name: name.to_owned(),
            notify: Some(notify),
        }
    }

    /// Wakes everyone waiting on any of `names`.
    pub(super) fn notify<'a>(&self, names: impl Iterator<Item = &'a str>) {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.is_empty() {
            return;
        }
        for name in names {
            if let Some(notify) = map.get(name) {
                notify.notify_waiters();
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// One registered waiter; unregisters on drop (also when the wait is cancelled).
pub(super) struct WaitGuard<'a> {
    waiters: &'a Waiters,
    name: String,
    /// Always `Some` until drop, which releases it under the lock.
    notify: Option<Arc<Notify>>,
}

impl WaitGuard<'_> {
    pub(super) fn notify(&self) -> &Notify {
        // Some until drop
        self.notify
            .as_deref()
            .unwrap_or_else(|| unreachable!("wait guard used after drop"))
    }
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.waiters.map.lock().unwrap_or_else(|p| p.into_inner());
        drop(self.notify.take());
        if map
            .get(&self.name)
            .is_some_and(|n| Arc::strong_count(n) == 1)
        {
            map.remove(&self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_live_only_while_waited_on() {
        let waiters = Waiters::default();
        let a = waiters.register("x/y/a");
        let b = waiters.register("x/y/a");
        let c = waiters.register("x/y/c");
        assert_eq!(waiters.len(), 2);
        drop(a);
        assert_eq!(waiters.len(), 2);
        drop(b);
        drop(c);
        assert_eq!(waiters.len(), 0);
    }
}

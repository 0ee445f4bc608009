//! The threads that serve connections: each runs its own single-threaded tokio runtime, and a
//! connection stays on the thread it was given, the one serving the fewest when it came.
//!
//! Why not the multi-thread runtime's work stealing: hyper's body channel wakes a connection's
//! task while that task runs, once per body frame, and the multi-thread scheduler then requeues
//! it as a yield and wakes an idle worker, which steals it. On the reference VM (2 cores) one
//! stream cost 7 context switches and 21 system calls per 64 KiB PATCH that way, the two
//! workers taking turns on one connection. Pinned, in alternated rounds: 24 % less CPU per GiB
//! at one stream, 9 % at 64, 11 % at 256, 6 % at 1,024 (bench/README.md, "One stream, call by
//! call"). What it gives up: a thread busy with its connections cannot hand
//! them to an idle one. Everything else (accepting, the store's writer, NATS, background work)
//! stays on the main runtime.

use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// Blocking-pool threads each connection thread may start (store reads, token files), half
/// the main runtime's; they are started only when needed.
const MAX_BLOCKING_THREADS: usize = 16;

/// How long a stopping thread waits for its blocking work before leaving it behind.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// The connection threads of one server; they stop when this is dropped.
pub(super) struct ConnectionThreads {
    threads: Vec<ConnectionThread>,
}

struct ConnectionThread {
    handle: Handle,
    /// Connections assigned to it and not yet ended.
    open: Arc<AtomicUsize>,
    /// Dropped (with this) to stop the thread.
    _stop: oneshot::Sender<()>,
}

/// One connection's share of its thread's count; released when the connection ends.
pub(super) struct Assigned(Arc<AtomicUsize>);

impl Drop for Assigned {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl ConnectionThreads {
    /// Starts `count` threads (at least one), named `egw-conn-N`.
    pub(super) fn start(count: usize) -> io::Result<Self> {
        let threads = (0..count.max(1))
            .map(|i| {
                let (stop, stopped) = oneshot::channel::<()>();
                let (ready, started) = std::sync::mpsc::sync_channel(1);
                // The runtime is built and dropped on its own thread: dropping one inside the
                // caller's async context would panic.
                std::thread::Builder::new()
                    .name(format!("egw-conn-{i}"))
                    .spawn(move || {
                        let runtime = match crate::runtime::configure(
                            &mut Builder::new_current_thread(),
                            MAX_BLOCKING_THREADS,
                        )
                        .build()
                        {
                            Ok(runtime) => runtime,
                            Err(err) => {
                                let _ = ready.send(Err(err));
                                return;
                            }
                        };
                        let _ = ready.send(Ok(runtime.handle().clone()));
                        // resolves when the sender is dropped
                        let _ = runtime.block_on(stopped);
                        runtime.shutdown_timeout(STOP_WAIT);
                        memwatch::flush_thread();
                    })?;
                let handle = started
                    .recv()
                    .map_err(|_| io::Error::other("a connection thread ended as it started"))??;
                Ok(ConnectionThread {
                    handle,
                    open: Arc::new(AtomicUsize::new(0)),
                    _stop: stop,
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(ConnectionThreads { threads })
    }

    /// The thread serving the fewest connections, counted for the caller until the returned
    /// share is dropped.
    pub(super) fn assign(&self) -> (Handle, Assigned) {
        let thread = self
            .threads
            .iter()
            .min_by_key(|t| t.open.load(Relaxed))
            .unwrap_or_else(|| unreachable!("start makes at least one thread"));
        thread.open.fetch_add(1, Relaxed);
        (thread.handle.clone(), Assigned(Arc::clone(&thread.open)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_to_the_thread_serving_the_fewest() {
        let threads = ConnectionThreads::start(2).unwrap();
        let counts = || {
            let mut open: Vec<usize> = threads
                .threads
                .iter()
                .map(|t| t.open.load(Relaxed))
                .collect();
            open.sort_unstable();
            open
        };
        let (a, first) = threads.assign();
        let (b, second) = threads.assign();
        assert_ne!(
            a.id(),
            b.id(),
            "the second connection went to the busy thread"
        );
        assert_eq!(counts(), [1, 1]);
        let (c, _third) = threads.assign();
        assert_eq!(counts(), [1, 2]);
        drop((first, second));
        assert_eq!(counts(), [0, 1], "an ended connection still counts");
        let (d, _fourth) = threads.assign();
        assert_ne!(
            d.id(),
            c.id(),
            "the fourth connection went to the busy thread"
        );
    }

    #[test]
    fn a_task_runs_on_its_connection_thread_and_the_threads_stop_when_dropped() {
        let threads = ConnectionThreads::start(1).unwrap();
        let (handle, _share) = threads.assign();
        let name = std::sync::mpsc::channel();
        let tx = name.0;
        handle.spawn(async move {
            let _ = tx.send(std::thread::current().name().map(str::to_owned));
        });
        let ran_on = name.1.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(ran_on.as_deref(), Some("egw-conn-0"));
        drop(threads);
        // the runtime is gone: spawning fails (the task is dropped) instead of running
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let tx = tx.clone();
            drop(handle.spawn(async move {
                let _ = tx.send(());
            }));
            if rx.recv_timeout(Duration::from_millis(50)).is_err() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the thread did not stop"
            );
        }
    }
}

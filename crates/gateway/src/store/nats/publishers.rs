//! Publishing from the thread that serves the request: each connection thread (a
//! single-threaded runtime, `http::threads`) gets a NATS connection of its own, made on that
//! runtime, so a publish and its acknowledgement never leave the thread.
//!
//! Why: async-nats drives a connection from a task on the runtime it was made on. Publishing
//! from a connection thread over the shared connection (made on the main runtime) hands every
//! message to another thread and every acknowledgement back: two cross-thread wake-ups per
//! message, each a futex call, a context switch and an idle worker woken from its epoll wait,
//! which on the reference VM were a third of the gateway's CPU on this path (perf, 8 streams:
//! scheduling 22 %, epoll 18 %, futex 6 %). JetStream orders appends by expected sequence, not
//! by connection, so several connections change nothing in what is stored.
//!
//! The shared connection stays for everything else (reads, tips, tokens, setup) and for
//! publishes from any other runtime; it also carries a thread's publishes while that thread's
//! own connection is being made or is reconnecting. The first publish on a thread starts its
//! connection in the background and goes out on the shared one; one that fails to connect is
//! tried again after [`RETRY_CONNECT`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::jetstream;
use tokio::runtime::{Handle, RuntimeFlavor};

use super::NatsConfig;
use super::setup;

/// Pause before a thread whose connection failed tries again.
const RETRY_CONNECT: Duration = Duration::from_secs(5);
/// Most runtimes with a connection of their own; publishes from more use the shared one (a
/// gateway has a few connection threads; this bounds what many short-lived runtimes, as in
/// tests, can make).
const MAX_CONNECTIONS: usize = 64;

/// The connection threads' own connections, by runtime.
pub(super) struct Publishers {
    config: NatsConfig,
    by_runtime: Mutex<HashMap<tokio::runtime::Id, Slot>>,
}

enum Slot {
    Connecting,
    Ready(Box<Publisher>),
    Failed(Instant),
}

/// A runtime's own connection and its data-path context.
struct Publisher {
    client: async_nats::Client,
    js: jetstream::Context,
}

impl Publisher {
    fn is_up(&self) -> bool {
        matches!(self.client.connection_state(), State::Connected)
    }
}

impl Publishers {
    pub(super) fn new(config: NatsConfig) -> Arc<Self> {
        Arc::new(Publishers {
            config,
            by_runtime: Mutex::new(HashMap::new()),
        })
    }

    /// The context to publish with from the current task: its single-threaded runtime's own
    /// connection while that is connected, `shared` otherwise (and while it is being made).
    pub(super) fn context(self: &Arc<Self>, shared: &jetstream::Context) -> jetstream::Context {
        let Ok(handle) = Handle::try_current() else {
            return shared.clone();
        };
        if handle.runtime_flavor() != RuntimeFlavor::CurrentThread {
            return shared.clone();
        }
        let id = handle.id();
        let mut by_runtime = self.lock();
        match by_runtime.get(&id) {
            Some(Slot::Ready(publisher)) => {
                return if publisher.is_up() {
                    publisher.js.clone()
                } else {
                    shared.clone()
                };
            }
            Some(Slot::Connecting) => return shared.clone(),
            Some(Slot::Failed(at)) if at.elapsed() < RETRY_CONNECT => return shared.clone(),
            Some(Slot::Failed(_)) => {}
            None if by_runtime.len() >= MAX_CONNECTIONS => return shared.clone(),
            None => {}
        }
        by_runtime.insert(id, Slot::Connecting);
        drop(by_runtime);
        let this = Arc::clone(self);
        // on this runtime: the connection's task must live where its publishes come from
        handle.spawn(async move {
            let slot = match setup::connect_publisher(&this.config).await {
                Ok((client, js)) => Slot::Ready(Box::new(Publisher { client, js })),
                Err(err) => {
                    tracing::warn!(error = %err, "nats: a connection thread's own connection failed; its publishes use the shared one");
                    Slot::Failed(Instant::now())
                }
            };
            this.lock().insert(id, slot);
        });
        shared.clone()
    }

    /// How many runtimes publish over a connection of their own that is up now.
    pub(super) fn connected(&self) -> usize {
        self.lock()
            .values()
            .filter(|slot| matches!(slot, Slot::Ready(publisher) if publisher.is_up()))
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<tokio::runtime::Id, Slot>> {
        self.by_runtime
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

//! Whether the store answers, checked once a second by one task per node.
//!
//! Handshakes, the rate limiter and `/readyz` read the last answer instead of each
//! pinging Redis, so a storm of handshakes during an outage costs Redis nothing and is
//! refused with 503 at once, and a monitor polling `/readyz` as often as it likes
//! costs Redis one ping a second (on a cluster, one `CLUSTER SLOTS` and a ping per
//! master) per node, never one per call.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::engine::Store;
use crate::retry::ErrorLog;

/// How often the store is pinged…
const PING_EVERY: Duration = Duration::from_secs(1);
/// …how long a ping may take…
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// …and how many pings in a row must fail before the store counts as down. One slow
/// ping is a busy node (a storm of handshakes queues commands ahead of it), not an
/// outage: refusing every handshake for it would make the storm worse.
const FAILURES_TO_DOWN: u32 = 2;

pub struct StoreHealth {
    /// The store is a Redis apart from this process (`/readyz` reports it); the
    /// memory engine is this process, up while it runs.
    remote: bool,
    /// Up unless [`FAILURES_TO_DOWN`] pings in a row failed (handshakes).
    up: AtomicBool,
    /// Whether the last ping was answered (`/readyz`: what the store says now).
    answered: AtomicBool,
}

impl StoreHealth {
    /// `remote`: whether the store is a Redis apart from this process (the wiring
    /// knows which engine it opened).
    pub fn new(remote: bool) -> StoreHealth {
        StoreHealth {
            remote,
            up: AtomicBool::new(true),
            answered: AtomicBool::new(true),
        }
    }

    /// `/readyz`'s `redis`: `not_used` (the memory engine), else whether Redis
    /// answered the last ping: `ok` or `down`.
    pub fn redis_status(&self) -> &'static str {
        match (self.remote, self.answered()) {
            (false, _) => "not_used",
            (true, true) => "ok",
            (true, false) => "down",
        }
    }

    /// True unless the store failed its last health pings.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Whether the store answered the last ping (at most a second ago).
    pub fn answered(&self) -> bool {
        self.answered.load(Ordering::Acquire)
    }

    /// Pings the store every second until `shutdown` turns true.
    pub async fn watch(self: Arc<Self>, store: Store, mut shutdown: watch::Receiver<bool>) {
        let mut log = ErrorLog::default();
        let mut failures = 0;
        loop {
            let answered = matches!(tokio::time::timeout(PING_TIMEOUT, store.ping()).await, Ok(Ok(())));
            failures = if answered { 0 } else { failures + 1 };
            let up = failures < FAILURES_TO_DOWN;
            self.up.store(up, Ordering::Release);
            self.answered.store(answered, Ordering::Release);
            if answered {
                if log.recovered() {
                    tracing::info!("store reachable again");
                }
            } else if !up && log.should_log() {
                tracing::warn!("store unreachable: handshakes answer 503 until it returns");
            }
            tokio::select! {
                _ = tokio::time::sleep(PING_EVERY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

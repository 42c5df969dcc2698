//! One reader task per partition: while the partition has active channels, one
//! blocking `XREAD` over all of their streams, on a connection of its own; what it
//! returns is published to the channels' sessions. On a store error the reader backs
//! off and continues from its cursors: the stream is the source of truth.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::channel::Partition;
use super::Hub;
use crate::clock::now_ms;
use crate::retry::{Backoff, ErrorLog};

/// A partition reader that has not heard from the store for this long is stale, and
/// `/readyz` says so: delivery silently dead must never look healthy.
pub const TAIL_STALE_AFTER: Duration = Duration::from_secs(5);

/// Readiness of the live path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailHealth {
    /// Partitions with active channels whose reader has not heard from the store for
    /// [`TAIL_STALE_AFTER`].
    pub stale_partitions: Vec<u32>,
}

impl Hub {
    /// Spawns one reader per partition; they stop when `shutdown` turns true.
    pub fn start(self: &Arc<Self>, shutdown: watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
        self.partitions
            .iter()
            .map(|p| tokio::spawn(self.clone().run_reader(p.clone(), shutdown.clone())))
            .collect()
    }

    /// Interrupts the reader until it reads with the new channel set. The retry closes
    /// the race where the wake-up reaches Redis before the reader's old `XREAD` does.
    pub(super) async fn wake_reader(self: Arc<Self>, partition: Arc<Partition>, generation: u64) {
        for _ in 0..20 {
            self.store.wake(&partition.waker).await;
            tokio::time::sleep(Duration::from_millis(25)).await;
            if partition.reading_generation.load(Ordering::Acquire) >= generation {
                return;
            }
        }
    }

    async fn run_reader(self: Arc<Self>, partition: Arc<Partition>, mut shutdown: watch::Receiver<bool>) {
        let mut tail = self.store.tail(partition.index, partition.waker.clone());
        let mut backoff = Backoff::default();
        let mut errors_logged = ErrorLog::default();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let generation = partition.generation.load(Ordering::Acquire);
            let cursors = partition.cursors();
            if cursors.is_empty() {
                partition.last_heard_ms.store(0, Ordering::Release);
                tokio::select! {
                    _ = partition.waker.notify.notified() => continue,
                    _ = shutdown.changed() => return,
                }
            }
            partition.reading_generation.store(generation, Ordering::Release);
            let result = tokio::select! {
                r = tail.read(&cursors) => r,
                _ = shutdown.changed() => return,
            };
            match result {
                Ok(batches) => {
                    partition.last_heard_ms.store(now_ms(), Ordering::Release);
                    backoff.reset();
                    if errors_logged.recovered() {
                        tracing::info!(partition = partition.index, "partition reader reconnected");
                    }
                    partition.publish(batches, self.ring, self.live_buffer);
                }
                Err(e) => {
                    self.metrics.redis_errors.inc();
                    if errors_logged.should_log() {
                        tracing::warn!(partition = partition.index, error = %e, "partition reader: store error, retrying");
                    }
                    let delay = backoff.next_delay();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
    }

    pub fn tail_health(&self) -> TailHealth {
        let now = now_ms();
        let stale = TAIL_STALE_AFTER.as_millis() as u64;
        TailHealth {
            stale_partitions: self
                .partitions
                .iter()
                .filter(|p| {
                    let heard = p.last_heard_ms.load(Ordering::Acquire);
                    heard != 0 && now.saturating_sub(heard) > stale && !p.lock().is_empty()
                })
                .map(|p| p.index)
                .collect(),
        }
    }
}

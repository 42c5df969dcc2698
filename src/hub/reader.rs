//! One reader task per partition: while the partition has active channels, one
//! blocking `XREAD` over all of their streams, on a connection of its own; what it
//! returns is published to the channels' sessions. On a store error the reader backs
//! off and continues from its cursors: the stream is the source of truth. Each fresh
//! connection is first checked for streams a failover rolled back.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::channel::Partition;
use super::direct::Delivery;
use super::Hub;
use crate::clock::now_ms;
use crate::engine::{Births, StoreError, Tail, TailBatch, TAIL_COUNT};
use crate::retry::{Backoff, ErrorLog};
use crate::tick::StreamId;

/// A partition reader that has not heard from the store for this long is stale, and
/// `/readyz` says so: delivery silently dead must never look healthy.
pub const TAIL_STALE_AFTER: Duration = Duration::from_secs(5);

/// What a reader still has to check on a fresh connection (after an error, a
/// failover, the first one) before it reads on from its cursors.
#[derive(Default)]
struct FreshConnection {
    /// Streams a failover may have rolled back are not checked yet (a failed check is
    /// tried again before the next read).
    unchecked: bool,
    /// A connection was made before: waiting channels are looked at again on a
    /// reconnection, not the first connection (their probe was just taken).
    connected_before: bool,
}

/// Readiness of the live path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailHealth {
    /// Partitions with active channels whose reader has not heard from the store for
    /// [`TAIL_STALE_AFTER`].
    pub stale_partitions: Vec<u32>,
}

impl Hub {
    /// Spawns one reader per partition, and the lag sampler; they stop when
    /// `shutdown` turns true.
    pub fn start(self: &Arc<Self>, shutdown: watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks: Vec<_> = self
            .partitions
            .iter()
            .map(|p| tokio::spawn(self.clone().run_reader(p.clone(), shutdown.clone())))
            .collect();
        tasks.push(tokio::spawn(self.clone().sample_lag(shutdown)));
        tasks
    }

    /// Interrupts the reader until it reads with the new channel set. The retry closes
    /// the race where the wake-up reaches Redis before the reader's old `XREAD` does.
    pub(super) async fn wake_reader(self: Arc<Self>, partition: Arc<Partition>, generation: u64) {
        for _ in 0..20 {
            partition.waker.wake().await;
            tokio::time::sleep(Duration::from_millis(25)).await;
            if partition.reading_generation.load(Ordering::Acquire) >= generation {
                return;
            }
        }
    }

    async fn run_reader(self: Arc<Self>, partition: Arc<Partition>, mut shutdown: watch::Receiver<bool>) {
        let mut tail = self.store.clone().tail(partition.index, partition.waker.clone());
        let mut backoff = Backoff::default();
        let mut errors_logged = ErrorLog::default();
        let mut fresh = FreshConnection::default();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let generation = partition.generation.load(Ordering::Acquire);
            let (cursors, any) = partition.cursors();
            let births = partition.births_after();
            if !any {
                partition.last_heard_ms.store(0, Ordering::Release);
                tokio::select! {
                    _ = partition.waker.notify.notified() => continue,
                    _ = shutdown.changed() => return,
                }
            }
            partition.reading_generation.store(generation, Ordering::Release);
            let result = tokio::select! {
                r = self.read_checked(&partition, &mut tail, &mut fresh, &cursors, births.after) => r,
                _ = shutdown.changed() => return,
            };
            match result {
                Ok((batches, born)) => {
                    partition.last_heard_ms.store(now_ms(), Ordering::Release);
                    if let Some(born) = born {
                        partition.born(&born.channels, born.last, births);
                    }
                    let full = batches.iter().any(|b| b.ticks.len() >= TAIL_COUNT);
                    partition.behind.store(full, Ordering::Release);
                    backoff.reset();
                    if errors_logged.recovered() {
                        tracing::info!(partition = partition.index, "partition reader reconnected");
                    }
                    let deliveries = partition.publish(&batches, self.ring, self.live_buffer);
                    self.deliver(deliveries);
                    // Then the ticks themselves move into the page cache.
                    for b in batches {
                        self.page_cache.remember(&b.channel, b.after, b.last, b.ticks);
                    }
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

    /// Writes each channel's new ticks to its direct subscribers (`direct.rs`).
    fn deliver(&self, deliveries: Vec<Delivery>) {
        for delivery in deliveries {
            let delivered = delivery.run();
            if delivered > 0 {
                self.metrics.ticks_delivered.inc_by(delivered);
                self.metrics.ticks_direct.inc_by(delivered);
                let age_ms = now_ms().saturating_sub(delivery.oldest_ms());
                self.metrics.delivery_latency.observe(age_ms as f64 / 1000.0);
            }
        }
    }

    /// Connects, checks for rolled-back streams when the connection is fresh, then
    /// reads. A failed check is tried again before the next read.
    async fn read_checked(
        &self,
        partition: &Partition,
        tail: &mut Box<dyn Tail>,
        fresh: &mut FreshConnection,
        cursors: &[(Arc<str>, StreamId)],
        births: Option<StreamId>,
    ) -> Result<(Vec<TailBatch>, Option<Births>), StoreError> {
        fresh.unchecked |= tail.connect().await?;
        if fresh.unchecked {
            self.check_rollbacks(partition).await?;
            if fresh.connected_before {
                self.check_waiting(partition).await?;
            }
            fresh.connected_before = true;
            fresh.unchecked = false;
            // The check may have moved cursors back to the survivors.
            return tail.read(&partition.cursors().0, births).await;
        }
        tail.read(cursors, births).await
    }

    /// Finds the partition's channels whose stream came back behind what this node
    /// delivered (a failover lost their last ticks), and moves each to its next
    /// epoch (docs/ARCHITECTURE.md §4 "Failover").
    async fn check_rollbacks(&self, partition: &Partition) -> Result<(), StoreError> {
        let delivered = partition.delivered();
        self.store
            .roll_back_behind(&delivered, &mut |channel, survivor| {
                partition.rolled_back(&channel, survivor)
            })
            .await?;
        Ok(())
    }

    /// On a fresh connection (a Redis restart, a failover), looks again at the
    /// partition's waiting channels: a birth may have been lost with what the old
    /// master had not replicated, or numbered below this reader's births cursor by
    /// the new one. One probe per waiting channel, only then.
    async fn check_waiting(&self, partition: &Partition) -> Result<(), StoreError> {
        for channel in partition.waiting() {
            let probe = self.store.probe(&channel).await?;
            partition.rechecked(&channel, probe);
        }
        Ok(())
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

//! Partition reader lag (`tickstream_reader_lag_ticks` and
//! `tickstream_reader_lag_milliseconds`, docs/OPERATIONS.md "Metrics"): how far the
//! newest stored tick of a partition's active channels is ahead of what this node's
//! reader delivered. Latency histograms only see ticks that were delivered; a reader
//! that has fallen behind, or stopped, shows here.
//!
//! Sampled every [`EVERY`]. A reader that heard from its store within the last 5 s and
//! whose last read was not a full batch is caught up by its own account: lag 0, and
//! Redis is not asked. Otherwise one `last_stored` read per partition (the read the
//! rollback check uses) measures it. Either way the cost does not grow with clients,
//! and a healthy node adds no Redis reads at all. On the memory engine the same
//! sample reads the engine's own memory (no Redis); its reader is behind only while
//! it works through full batches.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::channel::Partition;
use super::reader::TAIL_STALE_AFTER;
use super::Hub;
use crate::clock::now_ms;

/// How often lag is sampled.
const EVERY: Duration = Duration::from_secs(5);

impl Hub {
    pub(super) async fn sample_lag(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(EVERY) => {}
                _ = shutdown.changed() => return,
            }
            for partition in &self.partitions {
                self.sample_partition(partition).await;
            }
        }
    }

    async fn sample_partition(&self, partition: &Partition) {
        let label = partition.index.to_string();
        let delivered = partition.delivered();
        let (mut ticks, mut ms) = (0u64, 0u64);
        let heard = partition.last_heard_ms.load(Ordering::Acquire);
        let vouched = heard != 0
            && now_ms().saturating_sub(heard) < TAIL_STALE_AFTER.as_millis() as u64
            && !partition.behind.load(Ordering::Acquire);
        if !delivered.is_empty() && !vouched {
            let names: Vec<Arc<str>> = delivered.iter().map(|(c, _)| c.clone()).collect();
            // A failed read leaves the last sample: the reader's own errors are
            // counted (and logged) where it reads.
            let Ok(stored) = self.store.last_stored(&names).await else {
                return;
            };
            for ((_, fence), now) in delivered.iter().zip(stored) {
                let Some(last) = now.last_id else { continue };
                ms = ms.max(last.ms.saturating_sub(fence.id.ms));
                if now.epoch.as_deref() == Some(&*fence.epoch) {
                    ticks += now.seq.saturating_sub(fence.seq);
                }
            }
        }
        let set = |gauge: &prometheus::IntGaugeVec, v: u64| {
            gauge
                .with_label_values(&[&label])
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        set(&self.metrics.reader_lag_ticks, ticks);
        set(&self.metrics.reader_lag_ms, ms);
    }
}

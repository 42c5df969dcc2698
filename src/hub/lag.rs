//! Partition reader lag (`tickstream_reader_lag_ticks` and
//! `tickstream_reader_lag_milliseconds`, docs/OPERATIONS.md "Metrics"): how far the
//! newest stored tick of a partition's active channels is ahead of what this node's
//! reader delivered. Latency histograms only see ticks that were delivered; a reader
//! that has fallen behind, or stopped, shows here.
//!
//! Sampled every [`EVERY`] with one `heads` read per partition that has active
//! channels (the read the rollback check uses), so the cost does not grow with
//! clients. The memory engine's reader cannot fall behind: no samples.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::channel::Partition;
use super::Hub;

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
        if !delivered.is_empty() {
            let names: Vec<Arc<str>> = delivered.iter().map(|(c, _)| c.clone()).collect();
            // A failed read leaves the last sample: the reader's own errors are
            // counted (and logged) where it reads.
            let Ok(Some(heads)) = self.store.heads(&names).await else {
                return;
            };
            for ((_, fence), head) in delivered.iter().zip(heads) {
                let Some(last) = head.last_id else { continue };
                ms = ms.max(last.ms.saturating_sub(fence.id.ms));
                if head.epoch.as_deref() == Some(&*fence.epoch) {
                    ticks += head.seq.saturating_sub(fence.seq);
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

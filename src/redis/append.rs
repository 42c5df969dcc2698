//! The append pipeline: one `redis/append.lua` call per channel of a batch (dedup,
//! epoch, `seq`, `XADD MAXLEN ~`, candles, the channel's birth), behind the
//! channel's rollback fence, one pipeline per partition.

use std::collections::BTreeMap;

use futures_util::future::try_join_all;
use redis::Value;

use super::failover;
use super::keyspace::{ChannelKeys, DedupBuckets};
use super::reply::{as_array, as_id, as_u64, protocol};
use super::RedisEngine;
use crate::engine::{Appended, Fences, StoreError};
use crate::tick::{new_epoch, PreparedTick};

/// How long an ingest waits for its replicas (`TICKSTREAM_REDIS_WAIT`), in ms.
const WAIT_TIMEOUT_MS: u64 = 1000;

impl RedisEngine {
    /// Appends `ticks`. A channel with a fence (what this node delivered of it)
    /// first has `redis/rollback.lua` run on it in the same pipeline: if a failover
    /// rolled its stream back behind the fence, it moves to its next epoch before
    /// anything is appended, so no `seq` is handed out twice in one epoch.
    pub async fn append(&self, ticks: &[PreparedTick], fences: &dyn Fences) -> Result<Vec<Appended>, StoreError> {
        if ticks.is_empty() {
            return Ok(Vec::new());
        }
        // One script call per channel, with that channel's ticks in batch order; a
        // pipeline per partition (one round trip each, concurrently). The epoch only
        // matters for a channel's first tick: one candidate per batch is enough.
        let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
        let mut group_of: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for (i, t) in ticks.iter().enumerate() {
            let g = *group_of.entry(t.channel.as_str()).or_insert_with(|| {
                groups.push((t.channel.as_str(), Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push(i);
        }
        let epoch = new_epoch();
        let wait = self.settings.wait_replicas;
        let now_ms = crate::clock::now_ms();
        let window_ms = u64::try_from(self.settings.dedup_window.as_millis()).unwrap_or(u64::MAX);
        let buckets = DedupBuckets::at(now_ms, window_ms);
        let bucket_count = buckets.read().count();
        // Channels by partition, each partition one pipeline (one cluster slot); each
        // channel's keys built once (the partition hash is part of them).
        let keys: Vec<ChannelKeys> = groups.iter().map(|(channel, _)| self.keys(channel)).collect();
        let mut by_partition: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (g, k) in keys.iter().enumerate() {
            by_partition.entry(k.partition).or_default().push(g);
        }
        let (groups, keys) = (&groups, &keys);
        let calls = by_partition.values().map(|members_of_partition| {
            let mut pipe = redis::pipe();
            let mut fenced = Vec::new();
            for &g in members_of_partition {
                let (channel, members) = &groups[g];
                let k = &keys[g];
                let fence = fences.fence(channel);
                if let Some(f) = &fence {
                    self.rollback_call(&mut pipe, k, f);
                }
                fenced.push(fence.is_some());
                let intervals = self.settings.candles.intervals();
                // The key and argument layout is documented at the top of the script.
                let cmd = pipe
                    .cmd("EVALSHA")
                    .arg(self.append_script.get_hash())
                    .arg(4 + intervals.len() + bucket_count + members.len())
                    .arg(&k.stream)
                    .arg(&k.meta)
                    .arg(&k.registry);
                for &interval in intervals {
                    cmd.arg(k.candles(interval));
                }
                for bucket in buckets.read() {
                    cmd.arg(k.dedup_bucket(bucket));
                }
                for &i in members {
                    cmd.arg(k.dedup(&ticks[i].event_id));
                }
                cmd.arg(&k.births);
                cmd.arg(self.settings.stream_maxlen)
                    .arg(buckets.ttl_ms)
                    .arg(&epoch)
                    .arg(*channel)
                    .arg(u8::from(wait > 0))
                    .arg(now_ms)
                    .arg(window_ms)
                    .arg(bucket_count)
                    .arg(buckets.current_position());
                self.candle_intervals(cmd);
                for &i in members {
                    let t = &ticks[i];
                    cmd.arg(&t.fields)
                        .arg(t.ts_us)
                        .arg(t.value.as_deref().unwrap_or(""))
                        .arg(t.volume.as_deref().unwrap_or(""))
                        .arg(dedup_field(&t.event_id));
                }
            }
            if wait > 0 {
                // On the same connection, after the appends: the replicas that have
                // everything this connection wrote (a duplicate writes too, so its
                // original is covered; docs/OPERATIONS.md "Redis Cluster").
                pipe.cmd("WAIT").arg(wait).arg(WAIT_TIMEOUT_MS);
            }
            async move {
                // Safe to repeat after NOSCRIPT: the append script deduplicates by
                // event id, the rollback script checks before it moves anything.
                let scripts = [&self.append_script, &self.rollback_script];
                let lane = self.waiting.as_ref().unwrap_or(&self.connections);
                let mut replies = lane.run_scripts(&scripts, &pipe).await?;
                if wait > 0 {
                    let acked = replies.pop().as_ref().and_then(as_u64).unwrap_or(0);
                    if acked < u64::from(wait) {
                        return Err(StoreError::NotReplicated { acked, wanted: wait });
                    }
                }
                let mut replies = replies.into_iter();
                let mut appends = Vec::with_capacity(members_of_partition.len());
                for (&g, fenced) in members_of_partition.iter().zip(fenced) {
                    if fenced {
                        let rolled = replies.next().as_ref().map(failover::rolled).transpose()?;
                        if let Some(rolled) = rolled.filter(|r| r.moved) {
                            failover::report(groups[g].0, &rolled);
                            self.rollbacks.inc();
                        }
                    }
                    appends.push(replies.next());
                }
                Ok::<_, StoreError>((members_of_partition, appends))
            }
        });
        let mut replies: Vec<Option<Value>> = vec![None; groups.len()];
        for (members_of_partition, partition_replies) in try_join_all(calls).await? {
            if partition_replies.len() != members_of_partition.len() {
                return Err(StoreError::Protocol(format!(
                    "{} replies for {} channels",
                    partition_replies.len(),
                    members_of_partition.len()
                )));
            }
            for (&g, reply) in members_of_partition.iter().zip(partition_replies) {
                replies[g] = reply;
            }
        }
        let mut results: Vec<Option<Appended>> = vec![None; ticks.len()];
        for ((_, members), reply) in groups.iter().zip(&replies) {
            let reply = reply
                .as_ref()
                .ok_or_else(|| StoreError::Protocol("a channel got no append reply".into()))?;
            let items = as_array(reply).ok_or_else(|| protocol("append reply", reply))?;
            if items.len() != members.len() * 2 {
                return Err(protocol("append reply length", reply));
            }
            for (&i, pair) in members.iter().zip(items.chunks(2)) {
                let id = as_id(&pair[0]).ok_or_else(|| protocol("append id", reply))?;
                results[i] = Some(Appended {
                    id,
                    event_id: ticks[i].event_id.clone(),
                    duplicate: matches!(pair[1], Value::Int(1)),
                });
            }
        }
        results
            .into_iter()
            .map(|r| r.ok_or_else(|| StoreError::Protocol("a tick got no append result".into())))
            .collect()
    }
}

/// An event id as a dedup bucket's field: its first 128 bits, raw. A collision
/// within one channel's window is as likely as a 128-bit hash's (about 10^-19 at
/// 10^10 ticks), and a field of 16 bytes instead of 64 hex digits is most of a
/// bucket's memory and of the time to look it up.
fn dedup_field(event_id: &str) -> Vec<u8> {
    let hex = event_id.get(..32).unwrap_or(event_id);
    hex::decode(hex).unwrap_or_else(|_| event_id.as_bytes().to_vec())
}

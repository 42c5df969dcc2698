//! The Redis engine, on one Redis or a Redis Cluster: one capped stream per channel,
//! partitioned keyspace (`keyspace.rs`), the append script (`redis/append.lua`), the
//! shared connections for ordinary commands (`store/connections.rs`).
//!
//! - [`tail`]: the partition readers' blocking reads, on connections of their own.
//! - [`failover`]: noticing a stream that a failover rolled back, and moving it to
//!   its next epoch (`redis/rollback.lua`).
//! - [`candles`]: reading candles, and rebuilding them from the streams.
//!
//! Commands that touch several channels (an ingest batch, the channel list) are
//! grouped by partition and sent as one pipeline per partition, concurrently: every
//! key of a partition shares one cluster slot, and a cluster pipeline must stay in
//! one slot. On one Redis the pipelines share its multiplexed connections.

pub mod candles;
pub mod failover;
pub mod tail;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::future::try_join_all;
use redis::Value;

use super::connections::Connections;
use super::latency::CommandLatency;
use super::reply::{as_array, as_id, as_str, as_u64, pairs, parse_entries, parse_entry_opt, protocol, Unreadable};
use super::target::{Target, TlsFiles};
use super::{
    Appended, ChannelSummary, Fences, IdRange, Probe, RangeRead, Settings, StoreError, StreamEnds, StreamInfo,
};
use crate::keyspace::{self, partition_of, ChannelKeys, DedupBuckets};
use crate::tick::{new_epoch, PreparedTick, StreamId, Tick};
/// How long an ingest waits for its replicas (`TICKSTREAM_REDIS_WAIT`), in ms.
const WAIT_TIMEOUT_MS: u64 = 1000;
/// Where the partition count was recorded before keys outside partitions got hash
/// tags of their own; still read, so an upgrade keeps the safety check.
const LEGACY_PARTITIONS_KEY: &str = "tickstream:partitions";

pub struct RedisStore {
    connections: Connections,
    /// With `TICKSTREAM_REDIS_WAIT`, ingests append and `WAIT` on connections of
    /// their own: Redis runs nothing else of a connection while it waits, so a `WAIT`
    /// on the shared ones would hold up every read and rate-limit call queued behind
    /// it (up to its 1 s timeout when a replica is away).
    waiting: Option<Connections>,
    append_script: redis::Script,
    rollback_script: redis::Script,
    /// `redis/probe.lua`: a channel's existence and its partition's last birth.
    probe_script: redis::Script,
    settings: Settings,
    unreadable: Unreadable,
    /// `tickstream_rollbacks_total`.
    rollbacks: prometheus::IntCounter,
}

impl RedisStore {
    /// Connects, checks the deployment's partition count and loads the scripts. The
    /// first command proves the URL, credentials and TLS, so start-up names what is
    /// wrong (`WRONGPASS`, an unknown certificate issuer) instead of failing later.
    /// `unreadable` counts stream entries that cannot be read as ticks.
    pub async fn connect(
        target: Target,
        tls: &TlsFiles,
        settings: Settings,
        unreadable: prometheus::IntCounter,
        rollbacks: prometheus::IntCounter,
        latency: prometheus::HistogramVec,
    ) -> Result<RedisStore, StoreError> {
        let latency = Arc::new(CommandLatency::new(latency));
        let waiting = match settings.wait_replicas {
            0 => None,
            _ => Some(Connections::open(target.clone(), tls, latency.clone())?),
        };
        let store = RedisStore {
            connections: Connections::open(target, tls, latency)?,
            waiting,
            append_script: redis::Script::new(include_str!("../../../redis/append.lua")),
            rollback_script: redis::Script::new(include_str!("../../../redis/rollback.lua")),
            probe_script: redis::Script::new(include_str!("../../../redis/probe.lua")),
            settings,
            unreadable: Unreadable::new(unreadable),
            rollbacks,
        };
        let partitions = settings.partitions;
        let mut conn = store.connections.get().await?;
        // Changing the partition count would silently move every channel to other
        // keys: record it at first start and refuse a different value afterwards.
        // (The legacy key has no hash tag: on a cluster it lives in another slot.)
        let legacy: Option<u32> = redis::cmd("GET")
            .arg(LEGACY_PARTITIONS_KEY)
            .query_async(&mut conn)
            .await?;
        let recorded: Option<u32> = get_or_set(&mut conn, keyspace::PARTITIONS, partitions).await?;
        for recorded in [legacy, recorded].into_iter().flatten() {
            if recorded != partitions {
                return Err(StoreError::Config(format!(
                    "TICKSTREAM_PARTITIONS: this Redis holds a deployment with {recorded} partitions; \
                     starting with {partitions} would orphan its data"
                )));
            }
        }
        // On a cluster SCRIPT LOAD reaches every master; a replica promoted later
        // answers NOSCRIPT once and gets the script then.
        store.append_script.load_async(&mut conn).await?;
        store.rollback_script.load_async(&mut conn).await?;
        store.probe_script.load_async(&mut conn).await?;
        store.connections.latency.name_script(&store.append_script, "append");
        store
            .connections
            .latency
            .name_script(&store.rollback_script, "rollback");
        store.connections.latency.name_script(&store.probe_script, "probe");
        Ok(store)
    }

    /// The shared connections (the node registry and the rate limiter keep keys of
    /// their own in the same Redis).
    pub fn connections(&self) -> &Connections {
        &self.connections
    }

    fn keys(&self, channel: &str) -> ChannelKeys {
        ChannelKeys::new(channel, self.settings.partitions)
    }

    /// Appends `ticks`. A channel with a fence (what this node delivered of it)
    /// first has `redis/rollback.lua` run on it in the same pipeline: if a failover
    /// rolled its stream back behind the fence, it moves to its next epoch before
    /// anything is appended, so no `seq` is handed out twice in one epoch.
    pub async fn append(&self, ticks: &[PreparedTick], fences: &Fences) -> Result<Vec<Appended>, StoreError> {
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
                let fence = fences.get(*channel);
                if let Some(f) = fence {
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
                    cmd.arg(&t.tail)
                        .arg(t.ts_us)
                        .arg(t.value.as_deref().unwrap_or(""))
                        .arg(t.volume.as_deref().unwrap_or(""))
                        .arg(dedup_field(&t.event_id));
                }
            }
            if wait > 0 {
                // On the same connection, after the appends: the replicas that have
                // everything this connection wrote (a duplicate writes too, so its
                // original is covered; docs/OPERATIONS.md "Failover").
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

    /// See [`Store::probe`]: one script (`redis/probe.lua`), so the look at the
    /// births and at the stream are one moment, on one Redis or a cluster's master.
    pub async fn probe(&self, channel: &str) -> Result<Probe, StoreError> {
        let k = self.keys(channel);
        let mut pipe = redis::pipe();
        pipe.cmd("EVALSHA")
            .arg(self.probe_script.get_hash())
            .arg(2)
            .arg(&k.stream)
            .arg(&k.births);
        let reply = self
            .connections
            .run_scripts(&[&self.probe_script], &pipe)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::Protocol("no probe reply".into()))?;
        let (exists, last): (i64, String) =
            redis::from_redis_value(reply).map_err(|e| StoreError::Protocol(format!("probe reply: {e}")))?;
        let births = match last.as_str() {
            "" => StreamId::ZERO,
            id => id
                .parse()
                .map_err(|_| StoreError::Protocol(format!("probe reply: birth id {id:?}")))?,
        };
        Ok(Probe {
            exists: exists == 1,
            births,
        })
    }

    pub async fn info(&self, channel: &str) -> Result<Option<StreamInfo>, StoreError> {
        let k = self.keys(channel);
        let mut conn = self.connections.get().await?;
        let reply: Value = match redis::cmd("XINFO")
            .arg("STREAM")
            .arg(&k.stream)
            .query_async(&mut conn)
            .await
        {
            Ok(v) => v,
            Err(e) if e.to_string().contains("no such key") => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let name: Arc<str> = channel.into();
        let mut info = StreamInfo::default();
        for (key, value) in pairs(&reply).ok_or_else(|| protocol("XINFO STREAM", &reply))? {
            match as_str(key).as_deref() {
                Some("length") => info.length = as_u64(value).unwrap_or(0),
                Some("entries-added") => info.entries_added = as_u64(value).unwrap_or(0),
                Some("first-entry") => info.first = parse_entry_opt(&name, value, &self.unreadable)?,
                Some("last-entry") => info.last = parse_entry_opt(&name, value, &self.unreadable)?,
                _ => {}
            }
        }
        Ok(Some(info))
    }

    pub async fn range(&self, channel: &str, range: IdRange, count: usize) -> Result<Vec<Tick>, StoreError> {
        Ok(self.read_entries(channel, range, count, false).await?.ticks)
    }

    pub async fn rev_range(&self, channel: &str, range: IdRange, count: usize) -> Result<Vec<Tick>, StoreError> {
        Ok(self.read_entries(channel, range, count, true).await?.ticks)
    }

    /// `XRANGE` (or `XREVRANGE`) of `range`, with what the reply proves it saw.
    pub async fn read_entries(
        &self,
        channel: &str,
        range: IdRange,
        count: usize,
        descending: bool,
    ) -> Result<RangeRead, StoreError> {
        let k = self.keys(channel);
        let (command, start, end) = match descending {
            false => ("XRANGE", range.from, range.to),
            true => ("XREVRANGE", range.to, range.from),
        };
        let mut conn = self.connections.get().await?;
        let reply: Value = redis::cmd(command)
            .arg(&k.stream)
            .arg(start.to_string())
            .arg(end.to_string())
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await?;
        let entries = parse_entries(&channel.into(), reply, &self.unreadable)?;
        Ok(RangeRead {
            edges: entries.first.zip(entries.last),
            entries: entries.count,
            ticks: entries.ticks,
        })
    }

    /// The stream's first id and its last entry (id and epoch), in one round trip:
    /// what the history cache checks a page against.
    pub async fn ends(&self, channel: &str) -> Result<StreamEnds, StoreError> {
        let k = self.keys(channel);
        let mut pipe = redis::pipe();
        pipe.cmd("XRANGE").arg(&k.stream).arg("-").arg("+").arg("COUNT").arg(1);
        newest_entry(&mut pipe, &k.stream);
        let mut conn = self.connections.get().await?;
        let (first, last): (Value, Value) = pipe.query_async(&mut conn).await?;
        let name: std::sync::Arc<str> = channel.into();
        let first = parse_entries(&name, first, &self.unreadable)?.first;
        let last = parse_entries(&name, last, &self.unreadable)?;
        Ok(StreamEnds {
            first,
            last: last.ticks.into_iter().next().map(|t| (t.id, t.epoch)),
        })
    }

    pub async fn epoch(&self, channel: &str) -> Result<Option<String>, StoreError> {
        let k = self.keys(channel);
        let mut conn = self.connections.get().await?;
        Ok(redis::cmd("HGET")
            .arg(&k.meta)
            .arg("epoch")
            .query_async(&mut conn)
            .await?)
    }

    /// Every channel name with a stream, from the partitions' registries.
    pub async fn channel_names(&self) -> Result<Vec<String>, StoreError> {
        let reads = (0..self.settings.partitions).map(|p| async move {
            let mut conn = self.connections.get().await?;
            let names: Vec<String> = redis::cmd("ZRANGE")
                .arg(keyspace::registry(p))
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await?;
            Ok::<_, StoreError>(names)
        });
        Ok(try_join_all(reads).await?.into_iter().flatten().collect())
    }

    /// Length and newest tick of each named channel, in the order given.
    pub async fn summaries(&self, names: &[String]) -> Result<Vec<ChannelSummary>, StoreError> {
        let mut by_partition: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, name) in names.iter().enumerate() {
            by_partition
                .entry(partition_of(name, self.settings.partitions))
                .or_default()
                .push(i);
        }
        let reads = by_partition.into_values().map(|members| async move {
            let mut pipe = redis::pipe();
            for &i in &members {
                let k = self.keys(&names[i]);
                pipe.cmd("XLEN").arg(&k.stream);
                newest_entry(&mut pipe, &k.stream);
            }
            let mut conn = self.connections.get().await?;
            let replies: Vec<Value> = pipe.query_async(&mut conn).await?;
            Ok::<_, StoreError>((members, replies))
        });
        let mut out: Vec<Option<ChannelSummary>> = vec![None; names.len()];
        for (members, replies) in try_join_all(reads).await? {
            let mut replies = replies.into_iter();
            for i in members {
                let channel = &names[i];
                let length = replies.next().as_ref().and_then(as_u64).unwrap_or(0);
                let last = match replies.next() {
                    Some(v) => parse_entries(&channel.as_str().into(), v, &self.unreadable)?
                        .ticks
                        .pop(),
                    None => None,
                };
                out[i] = Some(ChannelSummary {
                    channel: channel.clone(),
                    last,
                    length,
                });
            }
        }
        out.into_iter()
            .map(|s| s.ok_or_else(|| StoreError::Protocol("a channel got no summary".into())))
            .collect()
    }

    /// Every slot has a master that answers (one Redis: it answers).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.connections.ping().await
    }

    /// The dev-mode secret this Redis keeps, stored as `candidate` if it has none.
    pub async fn dev_secret(&self, candidate: &str) -> Result<String, StoreError> {
        let mut conn = self.connections.get().await?;
        get_or_set(&mut conn, keyspace::DEV_SECRET, candidate).await
    }
}

/// `key`'s value, first set to `value` if it has none: whoever comes first decides,
/// in one round trip.
async fn get_or_set<T: redis::FromRedisValue>(
    conn: &mut (impl redis::aio::ConnectionLike + Send),
    key: &str,
    value: impl redis::ToRedisArgs,
) -> Result<T, StoreError> {
    let (now,): (T,) = redis::pipe()
        .cmd("SET")
        .arg(key)
        .arg(value)
        .arg("NX")
        .ignore()
        .cmd("GET")
        .arg(key)
        .query_async(conn)
        .await?;
    Ok(now)
}

/// Adds the read of `stream`'s newest entry to `pipe`.
pub(super) fn newest_entry(pipe: &mut redis::Pipeline, stream: &str) {
    pipe.cmd("XREVRANGE").arg(stream).arg("+").arg("-").arg("COUNT").arg(1);
}

/// An event id as a dedup bucket's field: its first 128 bits, raw. A collision
/// within one channel's window is as likely as a 128-bit hash's (about 10^-19 at
/// 10^10 ticks), and a field of 16 bytes instead of 64 hex digits is most of a
/// bucket's memory and of the time to look it up.
fn dedup_field(event_id: &str) -> Vec<u8> {
    let hex = event_id.get(..32).unwrap_or(event_id);
    hex::decode(hex).unwrap_or_else(|_| event_id.as_bytes().to_vec())
}

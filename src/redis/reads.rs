//! Reads: ranges of a stream, its ends and info, a channel's epoch, the channel
//! list and summaries, and the probe of a channel's existence.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::future::try_join_all;
use redis::Value;

use super::keyspace::{self, partition_of};
use super::reply::{as_str, as_u64, pairs, parse_entries, parse_entry_opt, protocol};
use super::{newest_entry, RedisEngine};
use crate::engine::{ChannelSummary, IdRange, Probe, RangeRead, StoreError, StreamEnds, StreamInfo};
use crate::tick::StreamId;

impl RedisEngine {
    /// See [`Engine::probe`](crate::engine::Engine::probe): one script (`redis/probe.lua`), so the look at the
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
    /// what the page cache checks a page against.
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

    /// Every channel name with a stream, from the partitions' registries, sorted.
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
        let mut names: Vec<String> = try_join_all(reads).await?.into_iter().flatten().collect();
        names.sort_unstable();
        Ok(names)
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
}

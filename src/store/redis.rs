//! The Redis engine: one capped stream per channel, partitioned keyspace
//! (`keyspace.rs`), the append script (`redis/append.lua`), a few shared multiplexed
//! connections for ordinary commands and one dedicated connection per partition reader for blocking `XREAD`
//! (a blocking call on a shared connection would stall every command queued behind
//! it; docs/ARCHITECTURE.md "Live tail").

use std::sync::atomic::Ordering;
use std::sync::Arc;

use redis::aio::MultiplexedConnection;
use redis::Value;

use super::connections::{self, Connections, TlsFiles, COMMAND_TIMEOUT};
use super::reply::{
    as_array, as_id, as_str, as_u64, pairs, parse_entries, parse_entry_opt, protocol, streams_of, Unreadable,
};
use super::{Appended, ChannelSummary, IdRange, Settings, StoreError, StreamInfo, TailBatch, TailWaker};
use crate::keyspace::{self, ChannelKeys};
use crate::tick::{new_epoch, PreparedTick, StreamId, Tick};

/// Most entries one partition read returns per stream.
const TAIL_COUNT: usize = 1000;
/// Where the partition count was recorded before keys outside partitions got hash
/// tags of their own; still read, so an upgrade keeps the safety check.
const LEGACY_PARTITIONS_KEY: &str = "tickstream:partitions";

pub struct RedisStore {
    connections: Connections,
    append_script: redis::Script,
    settings: Settings,
    unreadable: Unreadable,
}

impl RedisStore {
    /// Connects, checks the deployment's partition count and loads the scripts. The
    /// first command proves the URL, credentials and TLS, so start-up names what is
    /// wrong (`WRONGPASS`, an unknown certificate issuer) instead of failing later.
    /// `unreadable` counts stream entries that cannot be read as ticks.
    pub async fn connect(
        url: &str,
        tls: &TlsFiles,
        settings: Settings,
        unreadable: prometheus::IntCounter,
    ) -> Result<RedisStore, StoreError> {
        let store = RedisStore {
            connections: Connections::new(connections::client(url, tls)?),
            append_script: redis::Script::new(include_str!("../../redis/append.lua")),
            settings,
            unreadable: Unreadable::new(unreadable),
        };
        let partitions = settings.partitions;
        let mut conn = store.connections.get().await?;
        // Changing the partition count would silently move every channel to other
        // keys: record it at first start and refuse a different value afterwards.
        let (legacy, recorded): (Option<u32>, Option<u32>) = redis::pipe()
            .cmd("GET")
            .arg(LEGACY_PARTITIONS_KEY)
            .cmd("SET")
            .arg(keyspace::PARTITIONS)
            .arg(partitions)
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg(keyspace::PARTITIONS)
            .query_async(&mut conn)
            .await?;
        for recorded in [legacy, recorded].into_iter().flatten() {
            if recorded != partitions {
                return Err(StoreError::Config(format!(
                    "TICKSTREAM_PARTITIONS: this Redis holds a deployment with {recorded} partitions; \
                     starting with {partitions} would orphan its data"
                )));
            }
        }
        store.append_script.load_async(&mut conn).await?;
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

    pub async fn append(&self, ticks: &[PreparedTick]) -> Result<Vec<Appended>, StoreError> {
        if ticks.is_empty() {
            return Ok(Vec::new());
        }
        // One script call per channel, with that channel's ticks in batch order; all
        // calls in one pipeline (one round trip). The epoch only matters for a
        // channel's first tick: one candidate per batch is enough.
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
        let mut pipe = redis::pipe();
        for (channel, members) in &groups {
            let k = self.keys(channel);
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(self.append_script.get_hash())
                .arg(3 + members.len())
                .arg(&k.stream)
                .arg(&k.meta)
                .arg(&k.registry);
            for &i in members {
                cmd.arg(k.dedup(&ticks[i].event_id));
            }
            cmd.arg(self.settings.stream_maxlen)
                .arg(self.settings.dedup_window.as_secs().max(1))
                .arg(&epoch)
                .arg(*channel);
            for &i in members {
                cmd.arg(&ticks[i].tail);
            }
        }
        // Safe to repeat after NOSCRIPT: the script deduplicates by event id.
        let replies = self.connections.run_script(&self.append_script, &pipe).await?;
        if replies.len() != groups.len() {
            return Err(StoreError::Protocol(format!(
                "{} replies for {} channels",
                replies.len(),
                groups.len()
            )));
        }
        let mut results: Vec<Option<Appended>> = vec![None; ticks.len()];
        for ((_, members), reply) in groups.iter().zip(&replies) {
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
        self.read_range("XRANGE", channel, range.from, range.to, count).await
    }

    pub async fn rev_range(&self, channel: &str, range: IdRange, count: usize) -> Result<Vec<Tick>, StoreError> {
        self.read_range("XREVRANGE", channel, range.to, range.from, count).await
    }

    async fn read_range(
        &self,
        command: &str,
        channel: &str,
        start: StreamId,
        end: StreamId,
        count: usize,
    ) -> Result<Vec<Tick>, StoreError> {
        let k = self.keys(channel);
        let mut conn = self.connections.get().await?;
        let reply: Value = redis::cmd(command)
            .arg(&k.stream)
            .arg(start.to_string())
            .arg(end.to_string())
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await?;
        Ok(parse_entries(&channel.into(), reply, &self.unreadable)?.ticks)
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
        let mut conn = self.connections.get().await?;
        let mut pipe = redis::pipe();
        for p in 0..self.settings.partitions {
            pipe.cmd("ZRANGE").arg(keyspace::registry(p)).arg(0).arg(-1);
        }
        let per_partition: Vec<Vec<String>> = pipe.query_async(&mut conn).await?;
        Ok(per_partition.into_iter().flatten().collect())
    }

    /// Length and newest tick of each named channel, in the order given.
    pub async fn summaries(&self, names: &[String]) -> Result<Vec<ChannelSummary>, StoreError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.connections.get().await?;
        let mut pipe = redis::pipe();
        for name in names {
            let k = self.keys(name);
            pipe.cmd("XLEN").arg(&k.stream);
            pipe.cmd("XREVRANGE")
                .arg(&k.stream)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1);
        }
        let replies: Vec<Value> = pipe.query_async(&mut conn).await?;
        let mut replies = replies.into_iter();
        names
            .iter()
            .map(|channel| {
                let length = replies.next().as_ref().and_then(as_u64).unwrap_or(0);
                let last = match replies.next() {
                    Some(v) => parse_entries(&channel.as_str().into(), v, &self.unreadable)?
                        .ticks
                        .pop(),
                    None => None,
                };
                Ok(ChannelSummary {
                    channel: channel.clone(),
                    last,
                    length,
                })
            })
            .collect()
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.connections.get().await?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    pub fn tail(self: &Arc<Self>, partition: u32, waker: Arc<TailWaker>) -> RedisTail {
        RedisTail {
            store: self.clone(),
            conn: None,
            prefix: keyspace::stream_prefix(partition),
            waker,
        }
    }

    /// `CLIENT UNBLOCK` the reader's blocking XREAD, so it re-reads its channel set.
    pub async fn unblock(&self, waker: &TailWaker) {
        let id = waker.redis_client_id.load(Ordering::Acquire);
        if id == 0 {
            return;
        }
        if let Ok(mut conn) = self.connections.get().await {
            let _: Result<Value, _> = redis::cmd("CLIENT").arg("UNBLOCK").arg(id).query_async(&mut conn).await;
        }
    }
}

/// A partition reader's dedicated connection (never pooled, never cloned).
pub struct RedisTail {
    store: Arc<RedisStore>,
    conn: Option<MultiplexedConnection>,
    prefix: String,
    waker: Arc<TailWaker>,
}

impl RedisTail {
    async fn connect(&mut self) -> Result<&mut MultiplexedConnection, StoreError> {
        if self.conn.is_none() {
            // The response timeout must outlast the block time (redis-rs defaults to
            // 500 ms, which would fail every blocking read).
            let config = connections::connection_config(self.store.settings.tail_block + COMMAND_TIMEOUT);
            let mut conn = self
                .store
                .connections
                .client()
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            let id: u64 = redis::cmd("CLIENT").arg("ID").query_async(&mut conn).await?;
            self.waker.redis_client_id.store(id, Ordering::Release);
            self.conn = Some(conn);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| StoreError::Protocol("no reader connection".into()))
    }

    pub async fn read(&mut self, cursors: &[(Arc<str>, StreamId)]) -> Result<Vec<TailBatch>, StoreError> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(TAIL_COUNT)
            .arg("BLOCK")
            .arg(u64::try_from(self.store.settings.tail_block.as_millis()).unwrap_or(u64::MAX))
            .arg("STREAMS");
        for (channel, _) in cursors {
            cmd.arg(format!("{}{}", self.prefix, channel));
        }
        for (_, cursor) in cursors {
            // The reader tracks its own cursors; `$` would lose entries appended
            // between two calls.
            cmd.arg(cursor.to_string());
        }
        let conn = self.connect().await?;
        let reply: Result<Value, _> = cmd.query_async(conn).await;
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                // Drop the connection: after a timeout or I/O error its state is
                // unknown, and a fresh one gets a fresh CLIENT ID.
                self.conn = None;
                self.waker.redis_client_id.store(0, Ordering::Release);
                return Err(e.into());
            }
        };
        let mut out = Vec::new();
        for (key, entries) in streams_of(reply) {
            let key = as_str(&key).ok_or_else(|| protocol("XREAD key", &key))?;
            let Some(name) = key.strip_prefix(self.prefix.as_str()) else {
                continue;
            };
            let channel = cursors
                .iter()
                .find(|(c, _)| &**c == name)
                .map(|(c, _)| c.clone())
                .unwrap_or_else(|| name.into());
            let entries = parse_entries(&channel, entries, &self.store.unreadable)?;
            if let Some(last) = entries.last {
                out.push(TailBatch {
                    channel,
                    ticks: entries.ticks,
                    last,
                });
            }
        }
        Ok(out)
    }
}

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
use super::{Appended, ChannelSummary, IdRange, Settings, StoreError, StreamInfo, TailWaker};
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
}

impl RedisStore {
    /// Connects, checks the deployment's partition count and loads the scripts. The
    /// first command proves the URL, credentials and TLS, so start-up names what is
    /// wrong (`WRONGPASS`, an unknown certificate issuer) instead of failing later.
    pub async fn connect(url: &str, tls: &TlsFiles, settings: Settings) -> Result<RedisStore, StoreError> {
        let store = RedisStore {
            connections: Connections::new(connections::client(url, tls)?),
            append_script: redis::Script::new(include_str!("../../redis/append.lua")),
            settings,
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
                Some("first-entry") => info.first = parse_entry_opt(&name, value)?,
                Some("last-entry") => info.last = parse_entry_opt(&name, value)?,
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
        parse_entries(&channel.into(), reply)
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
                    Some(v) => parse_entries(&channel.as_str().into(), v)?.pop(),
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

    pub async fn read(&mut self, cursors: &[(Arc<str>, StreamId)]) -> Result<Vec<(Arc<str>, Vec<Tick>)>, StoreError> {
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
            let ticks = parse_entries(&channel, entries)?;
            out.push((channel, ticks));
        }
        Ok(out)
    }
}

// ---- reply parsing -------------------------------------------------------------
//
// Hand-written over `redis::Value` (rather than the crate's typed stream replies) so
// RESP2 arrays and RESP3 maps both parse, and so a tick is built straight from the
// reply without an intermediate HashMap per entry.

fn protocol(what: &str, v: &Value) -> StoreError {
    StoreError::Protocol(format!("{what}: {v:?}"))
}

fn as_array(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(items) | Value::Set(items) => Some(items),
        _ => None,
    }
}

fn as_bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        _ => None,
    }
}

fn as_str(v: &Value) -> Option<String> {
    as_bytes(v)
        .and_then(|b| std::str::from_utf8(b).ok())
        .map(str::to_string)
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => as_bytes(other).and_then(|b| std::str::from_utf8(b).ok()?.parse().ok()),
    }
}

fn as_id(v: &Value) -> Option<StreamId> {
    std::str::from_utf8(as_bytes(v)?).ok()?.parse().ok()
}

/// Key/value pairs of a RESP2 flat array or a RESP3 map.
fn pairs(v: &Value) -> Option<Vec<(&Value, &Value)>> {
    match v {
        Value::Map(kv) => Some(kv.iter().map(|(k, v)| (k, v)).collect()),
        Value::Array(items) => Some(
            items
                .chunks(2)
                .filter(|c| c.len() == 2)
                .map(|c| (&c[0], &c[1]))
                .collect(),
        ),
        _ => None,
    }
}

/// XREAD's reply, taken apart: RESP2 `[[key, entries], …]` or RESP3 `{key: entries}`;
/// nil on timeout.
fn streams_of(reply: Value) -> Vec<(Value, Value)> {
    match reply {
        Value::Map(kv) => kv,
        Value::Array(items) => items
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => {
                    let entries = kv.pop()?;
                    Some((kv.pop()?, entries))
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Entries of XRANGE, XREVRANGE or XREAD. Takes the reply by value so each stored
/// body moves into its tick without a copy.
fn parse_entries(channel: &Arc<str>, v: Value) -> Result<Vec<Tick>, StoreError> {
    let items = match v {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(items) | Value::Set(items) => items,
        other => return Err(protocol("entries", &other)),
    };
    let mut epochs = None;
    items
        .into_iter()
        .map(|e| parse_entry(channel, e, &mut epochs))
        .collect()
}

fn parse_entry_opt(channel: &Arc<str>, v: &Value) -> Result<Option<Tick>, StoreError> {
    match v {
        Value::Nil => Ok(None),
        other => parse_entry(channel, other.clone(), &mut None).map(Some),
    }
}

/// `[id, [field, value, …]]` → Tick. An entry is `j` (see `redis/append.lua`); entries
/// written before that format (fields `q`, `ep`, `ts`, `e`, `v`, `d`) are still read.
fn parse_entry(channel: &Arc<str>, v: Value, epochs: &mut Option<Arc<str>>) -> Result<Tick, StoreError> {
    let (id, fields) = match v {
        Value::Array(mut parts) if parts.len() == 2 => {
            let fields = parts.pop().unwrap_or(Value::Nil);
            (parts.pop().unwrap_or(Value::Nil), fields)
        }
        other => return Err(protocol("entry", &other)),
    };
    let id = as_id(&id).ok_or_else(|| protocol("entry id", &id))?;
    let read = |body: String, epochs: &mut Option<Arc<str>>| {
        Tick::from_body(id, channel.clone(), body, epochs).map_err(|e| StoreError::Protocol(format!("entry {id}: {e}")))
    };
    let body_of = |value: Value| into_string(value).ok_or_else(|| StoreError::Protocol(format!("entry {id}: body")));
    // Fields as (name, value) pairs: a RESP2 flat array or a RESP3 map.
    let fields: Vec<(Value, Value)> = match fields {
        // The current format, `[j, body]`: no pairs to build.
        Value::Array(mut items) if items.len() == 2 && as_bytes(&items[0]) == Some(b"j") => {
            let body = items.pop().unwrap_or(Value::Nil);
            return read(body_of(body)?, epochs);
        }
        Value::Map(kv) => kv,
        Value::Array(items) => {
            let mut kv = Vec::with_capacity(items.len() / 2);
            let mut items = items.into_iter();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                kv.push((k, v));
            }
            kv
        }
        other => return Err(protocol("entry fields", &other)),
    };
    let mut legacy = LegacyEntry::default();
    for (name, value) in fields {
        match as_bytes(&name) {
            Some(b"j") => return read(body_of(value)?, epochs),
            Some(b"q") => legacy.seq = as_u64(&value).unwrap_or(0),
            Some(b"ep") => legacy.epoch = as_str(&value).unwrap_or_default(),
            Some(b"ts") => legacy.ts_us = as_str(&value).and_then(|s| s.parse().ok()).unwrap_or(0),
            Some(b"v") => legacy.value = as_str(&value),
            Some(b"d") => legacy.data = as_str(&value),
            Some(b"e") => legacy.event_id = as_str(&value).unwrap_or_default(),
            _ => {}
        }
    }
    let tail = crate::tick::wire::tail(
        legacy.ts_us,
        legacy.value.as_deref(),
        legacy.data.as_deref(),
        &legacy.event_id,
    );
    read(crate::tick::wire::body(legacy.seq, &legacy.epoch, &tail), epochs)
}

/// The fields of an entry in the first storage format.
#[derive(Default)]
struct LegacyEntry {
    seq: u64,
    epoch: String,
    ts_us: i64,
    value: Option<String>,
    data: Option<String>,
    event_id: String,
}

fn into_string(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        Value::VerbatimString { text, .. } => Some(text),
        _ => None,
    }
}

//! The partition readers' side of the Redis engine: one blocking `XREAD` over every
//! active stream of a partition, on a connection of the reader's own — never a shared
//! one, where a blocking call would stall every command queued behind it
//! (docs/ARCHITECTURE.md §4).
//!
//! On a cluster that connection goes to the master serving the partition's slot, as
//! the cluster says when the reader connects. Any error (`MOVED` after a failover or
//! a resharding, a connection lost, a timeout) drops it, and the next read asks the
//! cluster again; an idle reader also re-asks every few seconds, so a slot that moved
//! quietly is followed too. Each fresh connection is reported ([`RedisTail::connect`])
//! so the hub can check, before it reads on, whether the stream came back shorter
//! than what it delivered (a failover that lost ticks; `failover.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::Value;

use super::connections::COMMAND_TIMEOUT;
use super::target::NodeAddr;
use super::RedisEngine;
use crate::engine::{Births, Interrupt, StoreError, Tail, TailBatch, TailWaker};
use crate::redis::keyspace;
use crate::redis::reply::{as_str, parse_births, parse_entries, protocol, streams_of};
use crate::tick::StreamId;

/// How often a cluster reader asks again which master serves its slot, when nothing
/// else made it reconnect.
const RESOLVE_EVERY: Duration = Duration::from_secs(5);

/// `CLIENT UNBLOCK` of a reader's blocking `XREAD`, on the node it reads from, so it
/// re-reads its channel set: one value per connection, so a waker never pairs one
/// connection's id with another's node.
struct Unblock {
    engine: Arc<RedisEngine>,
    client_id: u64,
    node: Option<NodeAddr>,
}

#[async_trait]
impl Interrupt for Unblock {
    async fn interrupt(&self) {
        let mut cmd = redis::cmd("CLIENT");
        cmd.arg("UNBLOCK").arg(self.client_id);
        let _ = self.engine.connections.on_node(self.node.as_ref(), cmd).await;
    }
}

/// A partition reader's dedicated connection (never pooled, never cloned).
pub struct RedisTail {
    store: Arc<RedisEngine>,
    conn: Option<Reading>,
    /// The cluster slot of the partition's keys.
    slot: u16,
    prefix: String,
    /// The partition's births stream, followed beside the channels' streams.
    births: String,
    waker: Arc<TailWaker>,
}

struct Reading {
    conn: MultiplexedConnection,
    /// The cluster master it reads from (`None` on one Redis).
    node: Option<NodeAddr>,
    since: Instant,
}

impl RedisTail {
    pub(super) fn new(store: Arc<RedisEngine>, partition: u32, waker: Arc<TailWaker>) -> RedisTail {
        RedisTail {
            store,
            conn: None,
            slot: keyspace::partition_slot(partition),
            prefix: keyspace::stream_prefix(partition),
            births: keyspace::births(partition),
            waker,
        }
    }

    fn drop_connection(&mut self) {
        // After a timeout or an I/O error its state is unknown, and a fresh one gets a
        // fresh CLIENT ID (and, on a cluster, the slot's current master).
        self.conn = None;
        self.waker.set_interrupt(None);
    }
}

#[async_trait]
impl Tail for RedisTail {
    /// Connects if need be; `true` when this is a fresh connection (the first, or
    /// after an error, or to the slot's new master).
    async fn connect(&mut self) -> Result<bool, StoreError> {
        if let Some(reading) = &self.conn {
            let due = reading.node.is_some() && reading.since.elapsed() >= RESOLVE_EVERY;
            if !due {
                return Ok(false);
            }
            // Still the slot's master? (A failover without an error on this
            // connection: the old master may still answer, as a replica.)
            match self.store.connections.master_of(self.slot).await {
                Ok(master) if Some(&master) == reading.node.as_ref() => {
                    if let Some(reading) = &mut self.conn {
                        reading.since = Instant::now();
                    }
                    return Ok(false);
                }
                Ok(_) => self.drop_connection(),
                // The cluster could not say just now; this connection still reads,
                // and errors on it would make it reconnect anyway.
                Err(e) => {
                    tracing::debug!(error = %e, slot = self.slot, "could not re-check the slot's master");
                    if let Some(reading) = &mut self.conn {
                        reading.since = Instant::now();
                    }
                    return Ok(false);
                }
            }
        }
        // The response timeout must outlast the block time (redis-rs defaults to
        // 500 ms, which would fail every blocking read).
        let response = self.store.settings.tail_block + COMMAND_TIMEOUT;
        let (mut conn, node) = self.store.connections.dedicated(self.slot, response).await?;
        let id: u64 = redis::cmd("CLIENT").arg("ID").query_async(&mut conn).await?;
        self.waker.set_interrupt(Some(Arc::new(Unblock {
            engine: self.store.clone(),
            client_id: id,
            node: node.clone(),
        })));
        self.conn = Some(Reading {
            conn,
            node,
            since: Instant::now(),
        });
        Ok(true)
    }

    async fn read(
        &mut self,
        cursors: &[(Arc<str>, StreamId)],
        births_after: Option<StreamId>,
    ) -> Result<(Vec<TailBatch>, Option<Births>), StoreError> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(crate::engine::TAIL_COUNT)
            .arg("BLOCK")
            .arg(u64::try_from(self.store.settings.tail_block.as_millis()).unwrap_or(u64::MAX))
            .arg("STREAMS");
        for (channel, _) in cursors {
            cmd.arg(format!("{}{}", self.prefix, channel));
        }
        if births_after.is_some() {
            cmd.arg(&self.births);
        }
        for (_, cursor) in cursors {
            // The reader tracks its own cursors; `$` would lose entries appended
            // between two calls.
            cmd.arg(cursor.to_string());
        }
        if let Some(after) = births_after {
            cmd.arg(after.to_string());
        }
        // Connecting is the caller's step (`connect` says whether the connection is
        // fresh, which decides the rollback check): without one, fail, and the
        // reader's retry connects.
        let Some(reading) = &mut self.conn else {
            return Err(StoreError::Unreachable);
        };
        let reply: Result<Value, _> = cmd.query_async(&mut reading.conn).await;
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                self.drop_connection();
                return Err(e.into());
            }
        };
        let mut out = Vec::new();
        let mut births = None;
        // XREAD answers the streams that have news in the order they were asked for,
        // so each is looked for from where the previous one was found (a full search
        // only if that ever fails): one pass over the cursors, not one per stream.
        let mut from = 0;
        for (key, entries) in streams_of(reply) {
            let key = as_str(&key).ok_or_else(|| protocol("XREAD key", &key))?;
            if key == self.births {
                births = parse_births(entries)?;
                continue;
            }
            let Some(name) = key.strip_prefix(self.prefix.as_str()) else {
                continue;
            };
            let found = cursors[from..]
                .iter()
                .position(|(c, _)| &**c == name)
                .map(|i| from + i)
                .or_else(|| cursors.iter().position(|(c, _)| &**c == name));
            let Some(i) = found else {
                continue;
            };
            from = i + 1;
            let (channel, after) = cursors[i].clone();
            let entries = parse_entries(&channel, entries, &self.store.unreadable)?;
            if let Some(last) = entries.last {
                out.push(TailBatch {
                    channel,
                    ticks: entries.ticks,
                    after,
                    last,
                });
            }
        }
        Ok((out, births))
    }
}

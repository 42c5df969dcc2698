//! Failover honesty: Redis replication is asynchronous, so a promoted replica (or a
//! Redis restarted from a slightly old append-only file) may lack the last ticks of a
//! stream — ticks nodes already delivered. A reader that reconnects asks
//! [`RedisEngine::last_stored`] where its channels' streams stand; when one came back
//! behind what it delivered, [`RedisEngine::roll_back_behind`] moves the channel to its next
//! epoch (`redis/rollback.lua`), and clients get a `rollback` gap
//! (docs/PROTOCOL.md §5.4).

use std::sync::Arc;

use redis::Value;

use super::{newest_entry, RedisEngine};
use crate::engine::{Fence, LastStored, StoreError};
use crate::redis::keyspace::ChannelKeys;
use crate::redis::reply::{as_array, as_id, as_str, as_u64, parse_entries, protocol};
use crate::tick::epoch::{after_rollback, is_rollback_of};
use crate::tick::StreamId;

/// What a rollback call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rolled {
    /// The channel's epoch now.
    pub epoch: Option<String>,
    /// The newest entry at or below the fence (`0-0`: none): what survived of what
    /// was delivered; readers go on from it.
    pub survivor: StreamId,
    /// This call moved the channel on (another node may have done it first).
    pub moved: bool,
}

impl RedisEngine {
    /// Where each of `channels` (all of one partition) stands: one pipeline, one slot.
    pub async fn last_stored(&self, channels: &[Arc<str>]) -> Result<Vec<LastStored>, StoreError> {
        if channels.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for channel in channels {
            let k = self.keys(channel);
            newest_entry(&mut pipe, &k.stream);
            pipe.cmd("HMGET").arg(&k.meta).arg("epoch").arg("seq");
        }
        let mut conn = self.connections.get().await?;
        let replies: Vec<Value> = pipe.query_async(&mut conn).await?;
        let mut replies = replies.into_iter();
        channels
            .iter()
            .map(|channel| {
                let last = replies
                    .next()
                    .ok_or_else(|| StoreError::Protocol("no XREVRANGE reply".into()))?;
                let meta = replies
                    .next()
                    .ok_or_else(|| StoreError::Protocol("no HMGET reply".into()))?;
                let entries = parse_entries(channel, last, &self.unreadable)?;
                let fields = as_array(&meta).ok_or_else(|| protocol("HMGET meta", &meta))?;
                Ok(LastStored {
                    last_id: entries.last,
                    epoch: fields.first().and_then(as_str),
                    seq: fields.get(1).and_then(as_u64).unwrap_or(0),
                })
            })
            .collect()
    }

    /// See [`crate::engine::Engine::roll_back_behind`]: compares where each stream
    /// stands with what was delivered of it, and runs `redis/rollback.lua` on each
    /// channel whose stream came back behind its fence (in the fence's epoch, or
    /// already moved to its successor by another node).
    pub async fn roll_back_behind(
        &self,
        delivered: &[(Arc<str>, Fence)],
        rolled: &mut (dyn FnMut(Arc<str>, StreamId) + Send),
    ) -> Result<(), StoreError> {
        if delivered.is_empty() {
            return Ok(());
        }
        let names: Vec<Arc<str>> = delivered.iter().map(|(c, _)| c.clone()).collect();
        let stored = self.last_stored(&names).await?;
        for ((channel, fence), now) in delivered.iter().zip(stored) {
            let same = now.epoch.as_deref() == Some(&*fence.epoch);
            let moved_on = now
                .epoch
                .as_deref()
                .is_some_and(|epoch| is_rollback_of(epoch, &fence.epoch));
            let behind = now.last_id.unwrap_or(StreamId::ZERO) < fence.id || (same && now.seq < fence.seq);
            if behind && (same || moved_on) {
                let done = self.roll_back(channel, fence).await?;
                rolled(channel.clone(), done.survivor);
            }
        }
        Ok(())
    }

    /// Runs `redis/rollback.lua` on `channel` against what was delivered of it.
    async fn roll_back(&self, channel: &str, fence: &Fence) -> Result<Rolled, StoreError> {
        let mut pipe = redis::pipe();
        self.rollback_call(&mut pipe, &self.keys(channel), fence);
        // Safe to repeat after NOSCRIPT: it checks before it moves anything.
        let reply = self
            .connections
            .run_scripts(&[&self.rollback_script], &pipe)
            .await?
            .pop()
            .ok_or_else(|| StoreError::Protocol("no rollback reply".into()))?;
        let rolled = rolled(&reply)?;
        if rolled.moved {
            report(channel, &rolled);
            self.rollbacks.inc();
        }
        Ok(rolled)
    }

    /// Adds the rollback check of one channel to `pipe`: if its stream is behind
    /// `fence` in the fence's epoch, it moves to the next epoch; either way new ids
    /// stay above the fence.
    pub(super) fn rollback_call(&self, pipe: &mut redis::Pipeline, keys: &ChannelKeys, fence: &Fence) {
        pipe.cmd("EVALSHA")
            .arg(self.rollback_script.get_hash())
            .arg(2)
            .arg(&keys.stream)
            .arg(&keys.meta)
            .arg(&*fence.epoch)
            .arg(fence.id.to_string())
            .arg(fence.seq)
            .arg(after_rollback(&fence.epoch));
    }
}

/// The rollback script's reply.
pub(super) fn rolled(reply: &Value) -> Result<Rolled, StoreError> {
    let items = as_array(reply).ok_or_else(|| protocol("rollback reply", reply))?;
    Ok(Rolled {
        epoch: items.first().and_then(as_str),
        survivor: items
            .get(1)
            .and_then(as_id)
            .ok_or_else(|| protocol("rollback survivor", reply))?,
        moved: items.get(2).and_then(as_u64) == Some(1),
    })
}

/// Says, once per channel and rollback, what a failover cost.
pub(super) fn report(channel: &str, rolled: &Rolled) {
    tracing::warn!(
        channel,
        survivor = %rolled.survivor,
        epoch = rolled.epoch.as_deref().unwrap_or(""),
        "a failover lost ticks that were delivered: the channel moved to a new epoch, clients get a rollback gap"
    );
}

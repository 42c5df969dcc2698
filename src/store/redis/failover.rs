//! Failover honesty: Redis replication is asynchronous, so a promoted replica (or a
//! Redis restarted from a slightly old append-only file) may lack the last ticks of a
//! stream — ticks nodes already delivered. A reader that reconnects asks
//! [`RedisStore::heads`] where its channels' streams stand; when one came back
//! behind what it delivered, [`RedisStore::roll_back`] moves the channel to its next
//! epoch (`redis/rollback.lua`), and clients get a `rollback` gap
//! (docs/PROTOCOL.md §5.4).

use std::sync::Arc;

use redis::Value;

use super::{newest_entry, RedisStore};
use crate::keyspace::ChannelKeys;
use crate::store::reply::{as_array, as_id, as_str, as_u64, parse_entries, protocol};
use crate::store::{Fence, StoreError};
use crate::tick::epoch::after_rollback;
use crate::tick::StreamId;

/// Where a channel's stream stands now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredHead {
    /// The newest entry's id (`None`: no stream at all).
    pub last_id: Option<StreamId>,
    /// The channel's epoch and the last `seq` it handed out (`meta`).
    pub epoch: Option<String>,
    pub seq: u64,
}

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

impl RedisStore {
    /// Where each of `channels` (all of partition `partition`) stands: one pipeline,
    /// one slot.
    pub async fn heads(&self, channels: &[Arc<str>]) -> Result<Vec<StoredHead>, StoreError> {
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
                Ok(StoredHead {
                    last_id: entries.last,
                    epoch: fields.first().and_then(as_str),
                    seq: fields.get(1).and_then(as_u64).unwrap_or(0),
                })
            })
            .collect()
    }

    /// Runs `redis/rollback.lua` on `channel` against what was delivered of it.
    pub async fn roll_back(&self, channel: &str, fence: &Fence) -> Result<Rolled, StoreError> {
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

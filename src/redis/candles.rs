//! Candles in Redis: one sorted set per channel and interval, under the channel's
//! partition tag (`tickstream:{p<N>}:c:<interval>:<channel>`), scored by bucket start,
//! each member one candle in the form of `candles::Candle::pack`. The append script
//! folds ticks into them (docs/ARCHITECTURE.md §14); this file reads them and rebuilds
//! them from the streams.

use std::time::Duration;

use redis::Value;

use super::RedisEngine;
use crate::candles::{Book, Candle, Order, Query};
use crate::engine::{IdRange, StoreError};
use crate::redis::reply::{as_array, as_id, as_str};
use crate::tick::StreamId;

/// Replace calls a rebuild makes before it gives up on a channel whose ingest never
/// pauses between two of them.
const REBUILD_ATTEMPTS: usize = 100;
/// Ticks per stream page a rebuild reads.
const REBUILD_PAGE: usize = 1000;

impl RedisEngine {
    /// Adds the candle intervals and their retentions to an append-script call:
    /// `c`, then `c` interval lengths, then `c` retentions, in ms.
    pub(super) fn candle_intervals(&self, cmd: &mut redis::Pipeline) {
        let settings = &self.settings.candles;
        let intervals = settings.intervals();
        cmd.arg(intervals.len());
        for &interval in intervals {
            cmd.arg(interval.ms());
        }
        for &interval in intervals {
            cmd.arg(u64::try_from(settings.retention(interval).as_millis()).unwrap_or(u64::MAX));
        }
    }

    pub async fn candles(&self, channel: &str, q: Query) -> Result<Vec<Candle>, StoreError> {
        let Query {
            interval,
            span,
            limit,
            order,
        } = q;
        let key = self.keys(channel).candles(interval);
        let low = span.after.map_or("-inf".to_string(), |a| format!("({a}"));
        let high = span.until.map_or("+inf".to_string(), |u| u.to_string());
        let mut cmd = match order {
            Order::Asc => redis::cmd("ZRANGEBYSCORE"),
            Order::Desc => redis::cmd("ZREVRANGEBYSCORE"),
        };
        cmd.arg(&key);
        match order {
            Order::Asc => cmd.arg(&low).arg(&high),
            Order::Desc => cmd.arg(&high).arg(&low),
        };
        cmd.arg("LIMIT").arg(0).arg(limit);
        let mut conn = self.connections.get().await?;
        let reply: Value = cmd.query_async(&mut conn).await?;
        let members = as_array(&reply).unwrap_or_default();
        Ok(members
            .iter()
            .filter_map(|m| {
                let packed = as_str(m)?;
                let candle = Candle::unpack(&packed);
                if candle.is_none() {
                    tracing::warn!(key, member = packed, "skipping a candle that cannot be read");
                }
                candle
            })
            .collect())
    }

    /// Recomputes `channel`'s candles from the ticks still in its stream; returns how
    /// many ticks were folded. Each rebuilt candle replaces the stored one unless that
    /// counts more ticks (it then holds ticks trimmed from the stream since), in one
    /// script call that only applies if no tick was appended after the last one
    /// folded here; else the newer ticks are folded too and the call is made again.
    /// So it is exact while ingest runs, and running it twice changes nothing.
    pub async fn rebuild_candles(&self, channel: &str) -> Result<usize, StoreError> {
        let settings = self.settings.candles;
        let intervals = settings.intervals();
        if intervals.is_empty() {
            return Ok(0);
        }
        let k = self.keys(channel);
        let mut book = Book::default();
        let mut folded = 0;
        let mut from = StreamId::ZERO;
        let mut last = StreamId::ZERO;
        for attempt in 0..REBUILD_ATTEMPTS {
            loop {
                let range = IdRange {
                    from,
                    to: StreamId::MAX,
                };
                let page = self.read_entries(channel, range, REBUILD_PAGE, false).await?.ticks;
                for tick in &page {
                    book.add_stored(&settings, tick);
                    last = tick.id;
                }
                folded += page.len();
                from = last.next();
                if page.len() < REBUILD_PAGE {
                    break;
                }
            }
            let mut replace = redis::pipe();
            let cmd = replace
                .cmd("EVALSHA")
                .arg(self.append_script.get_hash())
                .arg(1 + intervals.len())
                .arg(&k.stream);
            for &interval in intervals {
                cmd.arg(k.candles(interval));
            }
            cmd.arg("replace").arg(last.to_string());
            self.candle_intervals(cmd);
            for (index, &interval) in intervals.iter().enumerate() {
                for candle in book.all(interval) {
                    cmd.arg(index + 1).arg(candle.pack());
                }
            }
            let reply = self.connections.run_scripts(&[&self.append_script], &replace).await?;
            let outcome = reply.first().and_then(as_array).unwrap_or_default();
            match outcome.first().and_then(as_str).as_deref() {
                Some("ok") => return Ok(folded),
                Some("moved") => {
                    let now_last = outcome.get(1).and_then(as_id).unwrap_or(StreamId::ZERO);
                    if now_last < last {
                        // The last entry folded is gone (deleted, or a failover rolled
                        // the stream back): fold the stream again from the start.
                        book = Book::default();
                        folded = 0;
                        from = StreamId::ZERO;
                        last = StreamId::ZERO;
                    }
                    // Ticks arrived meanwhile: fold them, after a pause that grows, so
                    // a busy channel's ingest leaves a window between two appends.
                    let pause = Duration::from_millis((5 * (attempt as u64 + 1)).min(200));
                    tokio::time::sleep(pause).await;
                }
                _ => return Err(StoreError::Protocol("candle replace reply".into())),
            }
        }
        Err(StoreError::Protocol(format!(
            "candle rebuild of {channel}: ticks kept arriving faster than it could fold them"
        )))
    }
}

//! Every Redis key tickstream uses, and the partition function (docs/ARCHITECTURE.md
//! "Keyspace"). Nothing else formats a key.
//!
//! A channel's keys carry its partition as the hash tag `{p<N>}`, so all keys of a
//! partition live in one Redis Cluster slot: one `XREAD` can tail a whole partition
//! and one script can touch all of a channel's keys. Keys outside partitions carry
//! their own hash tags.

use sha2::{Digest, Sha256};

use crate::candles::Interval;

/// The partition a channel lives in: the first four bytes of SHA-256(channel) as a
/// big-endian u32, modulo the partition count.
pub fn partition_of(channel: &str, partitions: u32) -> u32 {
    let digest = Sha256::digest(channel.as_bytes());
    let head = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    head % partitions.max(1)
}

/// The Redis Cluster hash slot of a key: CRC16 (XMODEM) of its hash tag (the first
/// non-empty `{…}`), or of the whole key, modulo 16384.
pub fn slot_of(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(bytes)) % 16384
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot every key of partition `p` lives in.
pub fn partition_slot(p: u32) -> u16 {
    slot_of(&registry(p))
}

/// The keys of one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelKeys {
    pub partition: u32,
    /// The history (stream).
    pub stream: String,
    /// `epoch` and `seq` (hash).
    pub meta: String,
    /// The partition's channel registry (zset channel → last append ms).
    pub registry: String,
    /// The partition's births (stream): see [`births`].
    pub births: String,
    /// Dedup markers of the first storage format are `{dedup_prefix}<event_id>`.
    dedup_prefix: String,
    channel: String,
}

/// How long a deduplication bucket spans: half the dedup window, so an event id is
/// kept for the window and at most half as long again, plus the clock skew (each
/// bucket more is one more read per append; docs/ARCHITECTURE.md §3).
pub const DEDUP_BUCKETS_PER_WINDOW: u64 = 2;

/// How far apart two nodes' clocks may be and deduplication still hold (at most one
/// bucket is used).
pub const DEDUP_CLOCK_SKEW_MS: u64 = 30_000;

/// The dedup buckets one append reads and writes, by the node's clock `now`: it reads
/// every bucket an id stored within the window may be in, by any node whose clock is
/// within the skew of this one's — back to `now - window - skew`, up to `now + skew` —
/// and writes the one `now` falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupBuckets {
    /// The bucket length in ms.
    pub span_ms: u64,
    /// The bucket written (Unix ms / `span_ms`).
    pub current: u64,
    first: u64,
    last: u64,
    /// How long the written bucket is kept from now: until every node that may read
    /// it for an id stored now has stopped needing it.
    pub ttl_ms: u64,
}

impl DedupBuckets {
    pub fn at(now_ms: u64, window_ms: u64) -> DedupBuckets {
        let span_ms = (window_ms / DEDUP_BUCKETS_PER_WINDOW).max(1);
        let skew = DEDUP_CLOCK_SKEW_MS.min(span_ms);
        let current = now_ms / span_ms;
        let end_of_current = current.saturating_add(1).saturating_mul(span_ms);
        DedupBuckets {
            span_ms,
            current,
            first: now_ms.saturating_sub(window_ms.saturating_add(skew)) / span_ms,
            last: now_ms.saturating_add(skew) / span_ms,
            ttl_ms: end_of_current
                .saturating_add(window_ms)
                .saturating_add(skew)
                .saturating_sub(now_ms),
        }
    }

    /// The numbers of the buckets read, oldest first (three or four).
    pub fn read(&self) -> impl Iterator<Item = u64> {
        self.first..=self.last
    }

    /// Where the written bucket is among those read, from 1.
    pub fn current_position(&self) -> u64 {
        self.current - self.first + 1
    }
}

impl ChannelKeys {
    pub fn new(channel: &str, partitions: u32) -> ChannelKeys {
        let p = partition_of(channel, partitions);
        ChannelKeys {
            partition: p,
            stream: format!("{}{channel}", stream_prefix(p)),
            meta: format!("tickstream:{{p{p}}}:m:{channel}"),
            registry: registry(p),
            births: births(p),
            dedup_prefix: format!("tickstream:{{p{p}}}:d:{channel}:"),
            channel: channel.to_string(),
        }
    }

    /// The channel's candles of one interval (zset: bucket start → candle).
    pub fn candles(&self, interval: Interval) -> String {
        format!(
            "tickstream:{{p{}}}:c:{}:{}",
            self.partition,
            interval.name(),
            self.channel
        )
    }

    /// The dedup marker of one event id in the first storage format (a string key
    /// per tick), still read while a channel moves to buckets.
    pub fn dedup(&self, event_id: &str) -> String {
        format!("{}{event_id}", self.dedup_prefix)
    }

    /// One dedup bucket (hash: event id → stream id of the original).
    pub fn dedup_bucket(&self, bucket: u64) -> String {
        format!("tickstream:{{p{}}}:e:{bucket}:{}", self.partition, self.channel)
    }
}

/// Stream keys of partition `p` are this prefix and the channel name.
pub fn stream_prefix(p: u32) -> String {
    format!("tickstream:{{p{p}}}:s:")
}

/// Partition `p`'s channel registry.
pub fn registry(p: u32) -> String {
    format!("tickstream:{{p{p}}}:channels")
}

/// The partition's births: a capped stream with one entry (`c`: the channel) per
/// channel the append script creates. A partition reader follows it with its
/// streams, so a subscription to a channel that has no ticks yet costs no key in any
/// read until this says the channel exists (docs/ARCHITECTURE.md "Keyspace").
pub fn births(p: u32) -> String {
    format!("tickstream:{{p{p}}}:births")
}

/// Births kept (`XADD MAXLEN ~`, the literal in `redis/append.lua`). A reader reads
/// them continuously; one more than this many channel creations of its partition
/// behind (a Redis outage would not do it: nothing is created meanwhile) could miss
/// a birth, and that channel's waiting subscribers would wait until they resubscribe.
pub const BIRTHS_KEPT: u64 = 10_000;

/// The partition count a deployment was created with.
pub const PARTITIONS: &str = "tickstream:{meta}:partitions";
/// Dev mode's JWT signing secret, made by the first dev-mode node on this Redis and
/// reused by every later one, so a dashboard's dev token outlives a restart. Only
/// written when no signing key is configured (docs/OPERATIONS.md "Dev mode").
pub const DEV_SECRET: &str = "tickstream:{meta}:dev_jwt_secret";
/// The node registry: zset node id → last heartbeat ms.
pub const NODES: &str = "tickstream:{nodes}:index";

/// One node's details (hash), beside [`NODES`] in its slot.
pub fn node(id: &str) -> String {
    format!("tickstream:{{nodes}}:node:{id}")
}

/// A rate-limit bucket; `subject` is already made key-safe
/// (`auth::Subject::key_part`).
pub fn rate_bucket(subject: &str, group: &str) -> String {
    format!("tickstream:rl:{{{subject}}}:{group}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_documented_layout() {
        assert_eq!(partition_of("crypto.BTC-USD", 16), 5);
        let k = ChannelKeys::new("crypto.BTC-USD", 16);
        assert_eq!(k.stream, "tickstream:{p5}:s:crypto.BTC-USD");
        assert_eq!(k.meta, "tickstream:{p5}:m:crypto.BTC-USD");
        assert_eq!(k.registry, "tickstream:{p5}:channels");
        assert_eq!(k.dedup("ab"), "tickstream:{p5}:d:crypto.BTC-USD:ab");
        assert_eq!(k.dedup_bucket(7), "tickstream:{p5}:e:7:crypto.BTC-USD");
        assert_eq!(k.candles(Interval::M1), "tickstream:{p5}:c:1m:crypto.BTC-USD");
        assert_eq!(rate_bucket("u:alice", "api"), "tickstream:rl:{u:alice}:api");
        assert_eq!(node("node-1"), "tickstream:{nodes}:node:node-1");
    }

    #[test]
    fn an_event_id_is_found_for_the_whole_window_by_every_clock_within_the_skew() {
        for window in [2_000u64, 60_000, 86_400_000] {
            let skew = DEDUP_CLOCK_SKEW_MS.min(window / DEDUP_BUCKETS_PER_WINDOW);
            for written in [0u64, 1, 999, 1_000, 29_999, 1_700_000_123_456] {
                let w = DedupBuckets::at(written, window);
                assert!(w.read().any(|b| b == w.current));
                assert!((1..=4).contains(&w.current_position()), "{w:?}");
                // Every node whose clock is within the skew of the writer's reads the
                // bucket at every moment of the window…
                for later in [0, 1, window / 2, window - 1, window] {
                    for offset in [-(skew as i64), 0, skew as i64] {
                        let clock = (written + later).saturating_add_signed(offset);
                        let reader = DedupBuckets::at(clock, window);
                        assert!(
                            reader.read().any(|b| b == w.current),
                            "{window} {written} {later} {offset}"
                        );
                    }
                }
                // …and the bucket is kept that long, and not past 1.5 windows and the skew.
                assert!(w.ttl_ms >= window + skew, "{w:?}");
                assert!(w.ttl_ms <= window + window / DEDUP_BUCKETS_PER_WINDOW + skew);
                // A window and a half after the bucket, nobody reads it.
                let gone = DedupBuckets::at((w.current + 1) * w.span_ms + window + w.span_ms + skew, window);
                assert!(!gone.read().any(|b| b == w.current));
            }
        }
        // An absurd window does not overflow.
        let huge = DedupBuckets::at(1_700_000_000_000, u64::MAX / 2);
        assert!(huge.ttl_ms > 0 && huge.read().count() >= 1);
    }

    #[test]
    fn slots_are_redis_cluster_s() {
        // Values from `CLUSTER KEYSLOT` and the Redis Cluster specification.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot_of("foo"), 12182);
        assert_eq!(slot_of("{user1000}.following"), slot_of("{user1000}.followers"));
        assert_eq!(slot_of("foo{}{bar}"), crc16(b"foo{}{bar}") % 16384);
        assert_eq!(slot_of("foo{{bar}}zap"), crc16(b"{bar") % 16384);
        let k = ChannelKeys::new("crypto.BTC-USD", 16);
        for key in [
            &k.stream,
            &k.meta,
            &k.registry,
            &k.dedup("ab"),
            &k.candles(Interval::D1),
        ] {
            assert_eq!(slot_of(key), partition_slot(5), "{key}");
        }
        assert_eq!(slot_of(PARTITIONS), slot_of("meta"));
    }
}

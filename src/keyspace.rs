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
    /// Dedup markers of the first storage format are `{dedup_prefix}<event_id>`.
    dedup_prefix: String,
    channel: String,
}

/// How long a deduplication bucket spans: half the dedup window, so an event id is
/// remembered for the window and at most half as long again (each bucket more is one
/// more read per append; docs/ARCHITECTURE.md
/// "Deduplication").
pub const DEDUP_BUCKETS_PER_WINDOW: u64 = 2;

/// How far behind one node's clock may run another's and deduplication still hold.
pub const DEDUP_CLOCK_SKEW_MS: u64 = 30_000;

/// The dedup buckets an append reads, oldest first: the window's
/// [`DEDUP_BUCKETS_PER_WINDOW`] before the current one, the current one (written), and
/// the next (a node whose clock runs up to one bucket behind another's still finds
/// what that one wrote).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupBuckets {
    /// The bucket length in ms.
    pub span_ms: u64,
    /// The current bucket's number (Unix ms / `span_ms`).
    pub current: u64,
}

impl DedupBuckets {
    pub fn at(now_ms: u64, window_ms: u64) -> DedupBuckets {
        let span_ms = (window_ms / DEDUP_BUCKETS_PER_WINDOW).max(1);
        DedupBuckets {
            span_ms,
            current: now_ms / span_ms,
        }
    }

    /// The numbers of the buckets read, oldest first; the current one is last but one.
    pub fn read(&self) -> impl Iterator<Item = u64> {
        let first = self.current.saturating_sub(DEDUP_BUCKETS_PER_WINDOW);
        first..=self.current + 1
    }

    /// When the current bucket may go (Unix ms): when no node reads it any more —
    /// its last reader's bucket ends [`DEDUP_BUCKETS_PER_WINDOW`] buckets after it —
    /// plus [`DEDUP_CLOCK_SKEW_MS`] (at most a bucket) for nodes whose clocks run
    /// behind. An event id's marker so lives 1 to 1.5 windows and the skew.
    pub fn expires_at_ms(&self) -> u64 {
        (self.current + 1 + DEDUP_BUCKETS_PER_WINDOW) * self.span_ms + DEDUP_CLOCK_SKEW_MS.min(self.span_ms)
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

/// The partition count a deployment was created with.
pub const PARTITIONS: &str = "tickstream:{meta}:partitions";
/// The node registry: zset node id → last heartbeat ms.
pub const NODES: &str = "tickstream:{nodes}:index";

/// One node's details (hash), beside [`NODES`] in its slot.
pub fn node(id: &str) -> String {
    format!("tickstream:{{nodes}}:node:{id}")
}

/// A rate-limit bucket; `subject` is already made key-safe
/// (`ratelimit::Subject::key_part`).
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
    fn an_event_id_is_found_for_the_whole_window_and_at_most_half_as_long_again() {
        let window = 60_000;
        for written in [0u64, 1, 14_999, 15_000, 1_700_000_123_456] {
            let w = DedupBuckets::at(written, window);
            // Every later moment within the window reads the bucket it was written to…
            for later in [written, written + 1, written + window / 2, written + window] {
                assert!(
                    DedupBuckets::at(later, window).read().any(|b| b == w.current),
                    "{written} {later}"
                );
            }
            // …and so does a node whose clock is up to one bucket behind.
            let behind = DedupBuckets::at(written.saturating_sub(w.span_ms), window);
            assert!(behind.read().any(|b| b == w.current));
            // The bucket lives until the last of those reads (and the clock skew
            // after), and not past 1.5 windows and the skew.
            let last_read = (w.current + DEDUP_BUCKETS_PER_WINDOW + 1) * w.span_ms;
            assert!(last_read >= written + window);
            assert_eq!(w.expires_at_ms(), last_read + DEDUP_CLOCK_SKEW_MS.min(w.span_ms));
            assert!(w.expires_at_ms() <= written + window + window / DEDUP_BUCKETS_PER_WINDOW + DEDUP_CLOCK_SKEW_MS);
            // Past that, nobody reads it.
            let much_later = DedupBuckets::at(w.expires_at_ms(), window);
            assert!(!much_later.read().any(|b| b == w.current));
        }
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

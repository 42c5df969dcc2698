//! Storage engines behind one interface (docs/ARCHITECTURE.md §6).
//!
//! [`Store`] is an enum rather than a trait object: there are exactly two engines,
//! async trait methods are not object-safe without boxing every call, and a `match`
//! costs nothing on the hot path. The hub, sessions and HTTP handlers only ever see
//! `Store`, so the same tests run against both engines.
//!
//! - [`redis::RedisStore`]: the product, on one Redis or a Redis Cluster
//!   ([`target`]). Streams, the append script, shared connections for commands
//!   ([`connections`]) and one dedicated connection per partition reader.
//! - [`memory::MemoryStore`]: the embedded default when `REDIS_URL` is unset; same
//!   ids, `seq`, epochs, gaps and dedup, nothing durable.

pub mod connections;
pub mod health;
pub mod latency;
pub mod memory;
pub mod redis;
pub mod reply;
pub mod target;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

pub use health::StoreHealth;

use crate::candles::{Candle, CandleSettings, Query};
use crate::tick::{PreparedTick, StreamId, Tick};

/// Most entries one tail read returns per channel (`XREAD COUNT`): a batch this
/// full means the reader is behind its stream.
pub const TAIL_COUNT: usize = 1000;

/// A storage failure. Every variant means "the store cannot answer now"; callers
/// answer 503 or retry, and never guess.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("redis pool: {0}")]
    Pool(String),
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
    #[error("{0}")]
    Config(String),
    #[error("redis is unreachable")]
    Unreachable,
    /// `TICKSTREAM_REDIS_WAIT`: the ticks are stored, but fewer replicas than asked
    /// confirmed them within the timeout, so a failover could still lose them.
    #[error("{acked} of {wanted} replicas confirmed the write in time")]
    NotReplicated { acked: u64, wanted: u32 },
}

/// What both engines are configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Fixed for a deployment: changing it would move channels to other keys.
    pub partitions: u32,
    /// Approximate cap of each channel's stream (`XADD MAXLEN ~`).
    pub stream_maxlen: u64,
    /// How long an event id is remembered for deduplication.
    pub dedup_window: Duration,
    /// How long a partition reader's blocking read waits before it re-checks its
    /// channels.
    pub tail_block: Duration,
    /// Replicas each ingest waits for (`WAIT`) before it answers 201; 0: none.
    pub wait_replicas: u32,
    /// Which candle intervals are kept, and for how long.
    pub candles: CandleSettings,
}

/// What a node delivered of a channel: its last tick's id, `seq` and epoch. A
/// stream found behind its fence was rolled back by a failover
/// (`redis::failover`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub epoch: Arc<str>,
    pub id: StreamId,
    pub seq: u64,
}

/// Fences by channel name.
pub type Fences = std::collections::HashMap<String, Fence>;

/// The outcome of appending one tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub id: StreamId,
    pub event_id: String,
    pub duplicate: bool,
}

/// What a subscriber needs to know about a stream before replaying it.
#[derive(Debug, Clone, Default)]
pub struct StreamInfo {
    /// Entries kept now.
    pub length: u64,
    /// Entries ever appended in this epoch; more than `length` means some were trimmed.
    pub entries_added: u64,
    pub first: Option<Tick>,
    pub last: Option<Tick>,
}

impl StreamInfo {
    pub fn has_trimmed(&self) -> bool {
        self.entries_added > self.length
    }
}

/// A range read, with what its reply proves it saw (the history cache's input).
pub struct RangeRead {
    /// The readable entries, in read order.
    pub ticks: Vec<Tick>,
    /// Entries in the reply, readable or not.
    pub entries: usize,
    /// The first and last entry ids of the reply, in read order.
    pub edges: Option<(StreamId, StreamId)>,
}

/// A stream's ends, as Redis answered just before a page.
#[derive(Debug, Clone)]
pub struct StreamEnds {
    pub first: Option<StreamId>,
    /// The last entry's id and epoch (`None`: no stream, or its last entry cannot be
    /// read).
    pub last: Option<(StreamId, Arc<str>)>,
}

/// One row of `GET /api/v1/channels`.
#[derive(Debug, Clone)]
pub struct ChannelSummary {
    pub channel: String,
    pub last: Option<Tick>,
    pub length: u64,
}

/// An inclusive id range, oldest bound first; exclusive bounds are converted by the
/// caller (`after.next()`), which keeps both engines' range code to one shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub from: StreamId,
    pub to: StreamId,
}

impl IdRange {
    pub const ALL: IdRange = IdRange {
        from: StreamId::ZERO,
        to: StreamId::MAX,
    };

    /// Ids strictly greater than `after`.
    pub fn after(after: StreamId) -> IdRange {
        IdRange {
            from: after.next(),
            to: StreamId::MAX,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.from > self.to
    }
}

/// Lets the hub interrupt a partition reader's blocking read when its channel set
/// changes, so a newly active channel does not wait out the block time.
#[derive(Debug, Default)]
pub struct TailWaker {
    /// Memory engine: wakes the reader's wait.
    pub notify: Notify,
    /// Redis engine: the reader connection's `CLIENT ID` (0 = none yet), for
    /// `CLIENT UNBLOCK` on the cluster node it reads from (`None` on one Redis): one value under one
    /// lock, so a waker never pairs one connection's id with another's node.
    reader: std::sync::Mutex<(u64, Option<connections::NodeAddr>)>,
}

impl TailWaker {
    pub fn set_reader(&self, client_id: u64, node: Option<connections::NodeAddr>) {
        *self.reader.lock().unwrap_or_else(|e| e.into_inner()) = (client_id, node);
    }

    /// The reader connection's `CLIENT ID` (0 = none yet) and node.
    pub fn reader(&self) -> (u64, Option<connections::NodeAddr>) {
        self.reader.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The engine.
#[derive(Clone)]
pub enum Store {
    Redis(Arc<redis::RedisStore>),
    Memory(Arc<memory::MemoryStore>),
}

/// What one tail read brought for one channel.
#[derive(Debug)]
pub struct TailBatch {
    pub channel: Arc<str>,
    /// The new ticks, in id order: every readable entry after `after` up to `last`.
    pub ticks: Vec<Tick>,
    /// The cursor the read began after.
    pub after: StreamId,
    /// The last entry read, readable or not: the reader's cursor moves past an entry
    /// that cannot be parsed instead of reading it again forever.
    pub last: StreamId,
}

/// What a subscription learns of a channel before it joins it (one read): whether
/// its stream exists, and the partition's last birth before that look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub exists: bool,
    /// Every channel created after this look has a birth after this id
    /// (`keyspace::births`).
    pub births: StreamId,
}

/// Channels a partition reader saw created (their births), up to `last`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Births {
    pub channels: Vec<String>,
    pub last: StreamId,
}

/// A partition reader's source of new entries.
pub enum TailReader {
    Redis(redis::tail::RedisTail),
    Memory(memory::MemoryTail),
}

impl TailReader {
    /// Connects if need be; `true` for a fresh connection, after which the hub checks
    /// for streams a failover rolled back before it reads on (`hub/reader.rs`).
    pub async fn connect(&mut self) -> Result<bool, StoreError> {
        match self {
            TailReader::Redis(t) => t.connect().await,
            TailReader::Memory(_) => Ok(false),
        }
    }

    /// Waits up to the block time for entries after each cursor, and (`births`: the
    /// cursor of the partition's births) for channels being created; returns what
    /// each channel with new entries got, and the births seen. The memory engine's
    /// channels all count as existing ([`Store::probe`]), so it has no births.
    pub async fn read(
        &mut self,
        cursors: &[(Arc<str>, StreamId)],
        births: Option<StreamId>,
    ) -> Result<(Vec<TailBatch>, Option<Births>), StoreError> {
        match self {
            TailReader::Redis(t) => t.read(cursors, births).await,
            TailReader::Memory(t) => Ok((t.read(cursors).await?, None)),
        }
    }
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Redis($s) => $e,
            Store::Memory($s) => $e,
        }
    };
}

impl Store {
    pub fn engine_name(&self) -> &'static str {
        match self {
            Store::Redis(_) => "redis",
            Store::Memory(_) => "memory",
        }
    }

    /// Appends validated ticks in order, deduplicated; one round trip per partition
    /// of the batch. `fences` are what this node delivered of the batch's channels
    /// (the memory engine never fails over and ignores them).
    pub async fn append(&self, ticks: &[PreparedTick], fences: &Fences) -> Result<Vec<Appended>, StoreError> {
        match self {
            Store::Redis(s) => s.append(ticks, fences).await,
            Store::Memory(s) => s.append(ticks).await,
        }
    }

    /// Length, trim state and first/last entries; `None` when the channel has no stream.
    pub async fn info(&self, channel: &str) -> Result<Option<StreamInfo>, StoreError> {
        dispatch!(self, s => s.info(channel).await)
    }

    /// Up to `count` ticks in `range`, oldest first.
    pub async fn range(&self, channel: &str, range: IdRange, count: usize) -> Result<Vec<Tick>, StoreError> {
        if range.is_empty() || count == 0 {
            return Ok(Vec::new());
        }
        dispatch!(self, s => s.range(channel, range, count).await)
    }

    /// Up to `count` entries of `range` (newest first when `descending`), with what
    /// the reply saw: a reader that pages on needs the entries it could not read
    /// too, or one unreadable entry would look like the end of the stream. The
    /// memory engine has no unreadable entries.
    pub async fn read_entries(
        &self,
        channel: &str,
        range: IdRange,
        count: usize,
        descending: bool,
    ) -> Result<RangeRead, StoreError> {
        if range.is_empty() || count == 0 {
            return Ok(RangeRead {
                ticks: Vec::new(),
                entries: 0,
                edges: None,
            });
        }
        match self {
            Store::Redis(s) => s.read_entries(channel, range, count, descending).await,
            Store::Memory(_) => {
                let ticks = match descending {
                    false => self.range(channel, range, count).await?,
                    true => self.rev_range(channel, range, count).await?,
                };
                Ok(RangeRead {
                    edges: ticks.first().map(|t| t.id).zip(ticks.last().map(|t| t.id)),
                    entries: ticks.len(),
                    ticks,
                })
            }
        }
    }

    /// Up to `count` ticks in `range`, newest first.
    pub async fn rev_range(&self, channel: &str, range: IdRange, count: usize) -> Result<Vec<Tick>, StoreError> {
        if range.is_empty() || count == 0 {
            return Ok(Vec::new());
        }
        dispatch!(self, s => s.rev_range(channel, range, count).await)
    }

    /// The newest tick, if any.
    pub async fn latest(&self, channel: &str) -> Result<Option<Tick>, StoreError> {
        Ok(self.rev_range(channel, IdRange::ALL, 1).await?.pop())
    }

    /// The channel's current epoch (`None` before its first tick).
    pub async fn epoch(&self, channel: &str) -> Result<Option<String>, StoreError> {
        dispatch!(self, s => s.epoch(channel).await)
    }

    /// The candles of `channel` that `q` asks for.
    pub async fn candles(&self, channel: &str, q: Query) -> Result<Vec<Candle>, StoreError> {
        dispatch!(self, s => s.candles(channel, q).await)
    }

    /// Recomputes a channel's candles from the ticks its stream still holds; returns
    /// how many ticks were folded (`tickstream candles rebuild`).
    pub async fn rebuild_candles(&self, channel: &str) -> Result<usize, StoreError> {
        dispatch!(self, s => s.rebuild_candles(channel).await)
    }

    /// Every channel name with a stream, sorted.
    pub async fn channel_names(&self) -> Result<Vec<String>, StoreError> {
        let mut names = dispatch!(self, s => s.channel_names().await)?;
        names.sort_unstable();
        Ok(names)
    }

    /// Length and newest tick of each named channel, in the order given.
    pub async fn summaries(&self, names: &[String]) -> Result<Vec<ChannelSummary>, StoreError> {
        dispatch!(self, s => s.summaries(names).await)
    }

    /// True when history survives this process and is shared by every node on the
    /// same store (Redis). The memory engine is this process's alone.
    pub fn is_durable(&self) -> bool {
        matches!(self, Store::Redis(_))
    }

    /// The shared Redis connections, for the components that keep keys of their own
    /// beside the streams (the node registry, the rate limiter); `None` for the
    /// memory engine, which has nothing to share.
    pub fn shared(&self) -> Option<&connections::Connections> {
        match self {
            Store::Redis(s) => Some(s.connections()),
            Store::Memory(_) => None,
        }
    }

    /// Where each of `channels` (of one partition) stands; the memory engine never
    /// fails over, so it has nothing to say.
    pub async fn heads(&self, channels: &[Arc<str>]) -> Result<Option<Vec<redis::failover::StoredHead>>, StoreError> {
        match self {
            Store::Redis(s) => Ok(Some(s.heads(channels).await?)),
            Store::Memory(_) => Ok(None),
        }
    }

    /// Moves a channel whose stream is behind `fence` to its next epoch (see
    /// `redis::failover`); `None` for the memory engine, which never fails over.
    pub async fn roll_back(&self, channel: &str, fence: &Fence) -> Result<Option<redis::failover::Rolled>, StoreError> {
        match self {
            Store::Redis(s) => Ok(Some(s.roll_back(channel, fence).await?)),
            Store::Memory(_) => Ok(None),
        }
    }

    /// Round trip to the engine (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Redis(s) => s.ping().await,
            Store::Memory(_) => Ok(()),
        }
    }

    /// Dev mode's signing secret: kept in Redis (see `keyspace::DEV_SECRET`), so dev
    /// tokens outlive a restart; the memory engine's data does not, so neither do they.
    pub async fn dev_secret(&self, candidate: String) -> Result<String, StoreError> {
        match self {
            Store::Redis(s) => s.dev_secret(&candidate).await,
            Store::Memory(_) => Ok(candidate),
        }
    }

    /// Whether `channel`'s stream exists, and where the partition's births stood
    /// before that look: one round trip. A subscription to a channel that does not
    /// exist yet waits for its birth instead of adding its key to every read. The
    /// memory engine answers that every channel exists: its reads cost no Redis.
    pub async fn probe(&self, channel: &str) -> Result<Probe, StoreError> {
        match self {
            Store::Redis(s) => s.probe(channel).await,
            Store::Memory(_) => Ok(Probe {
                exists: true,
                births: StreamId::ZERO,
            }),
        }
    }

    /// A reader for one partition's streams.
    pub fn tail(&self, partition: u32, waker: Arc<TailWaker>) -> TailReader {
        match self {
            Store::Redis(s) => TailReader::Redis(s.tail(partition, waker)),
            Store::Memory(s) => TailReader::Memory(s.tail(waker)),
        }
    }

    /// Interrupts a reader's blocking read (see [`TailWaker`]).
    pub async fn wake(&self, waker: &TailWaker) {
        waker.notify.notify_one();
        if let Store::Redis(s) = self {
            s.unblock(waker).await;
        }
    }
}

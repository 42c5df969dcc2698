//! The engine contract: what every storage engine guarantees, written on one trait
//! (docs/ARCHITECTURE.md §6), and the embedded memory engine.
//!
//! Two engines implement [`Engine`]: the Redis engine (`crate::redis`, the product,
//! on one Redis or a Redis Cluster) and [`memory::MemoryEngine`] (the default when
//! `REDIS_URL` is unset: same ids, `seq`, epochs, gaps and dedup, nothing durable).
//! Everything above this module holds a [`Store`] and never asks which engine it has;
//! the wiring (`server/mod.rs`) is the one place that chooses.
//!
//! The guarantees, per channel:
//! - **Append is atomic and deduplicated.** Each tick of a batch is either stored
//!   once, with the next stream id (strictly increasing, `<ms>-<n>`), the next `seq`
//!   (1, 2, 3… within the channel's epoch) and its candles folded in the same step,
//!   or recognised as a duplicate of an event id seen within the dedup window and
//!   answered with the original's id. A channel's first tick fixes its epoch.
//! - **History is a capped, ordered stream.** Range reads return stored ticks in id
//!   order; trimming drops the oldest, and [`StreamInfo`] says how many were ever
//!   added, so a reader can count what it lost.
//! - **A tail sees every entry after its cursor,** in order, once per read: the hub's
//!   partition readers ([`Tail`]) never skip an entry, readable or not.
//! - **Epochs are honest.** A stream that comes back behind what this node delivered
//!   (a failover lost its last ticks) is moved to its next epoch before anything new
//!   is appended to it ([`Engine::roll_back_behind`], and the `fences` of
//!   [`Engine::append`]), so no `seq` is ever handed out twice in one epoch. The
//!   memory engine cannot fail over; it keeps the contract trivially.

pub mod memory;
pub mod types;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::Notify;

pub use types::*;

use crate::candles::{Candle, Query};
use crate::tick::{PreparedTick, StreamId, Tick};

/// The engine this server stores in, shared by every task.
pub type Store = Arc<dyn Engine>;

/// A storage failure. Every variant means "the store cannot answer now"; callers
/// answer 503 or retry, and never guess.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
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

/// What every engine does. Methods take channel names that passed
/// `tick::is_valid_channel`; none of them blocks longer than one store round trip,
/// except [`Tail::read`], which waits up to the tail block time.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// `redis` or `memory`, for `/readyz` and the start-up log.
    fn name(&self) -> &'static str;

    /// Appends validated ticks in batch order, deduplicated (see the module's
    /// guarantees); one answer per tick, in order. `fences` tell what this node
    /// delivered of the batch's channels: a channel whose stream is behind its fence
    /// moves to its next epoch before anything is appended to it.
    async fn append(&self, ticks: &[PreparedTick], fences: &dyn Fences) -> Result<Vec<Appended>, StoreError>;

    /// Whether `channel`'s stream exists, and where its partition's births stood
    /// before that look: one round trip. A subscription to a channel that does not
    /// exist yet waits for its birth ([`Tail::read`]) instead of adding its key to
    /// every read. An engine whose reads cost nothing answers that every channel
    /// exists.
    async fn probe(&self, channel: &str) -> Result<Probe, StoreError>;

    /// Length, trim state and first/last entries; `None` when the channel has no stream.
    async fn info(&self, channel: &str) -> Result<Option<StreamInfo>, StoreError>;

    /// Up to `count` entries of `range` (newest first when `descending`), with what
    /// the read saw: a reader that pages on needs the entries it could not read too,
    /// or one unreadable entry would look like the end of the stream. Called with a
    /// non-empty range and `count > 0` ([`Engine`]'s helpers check).
    async fn read_entries(
        &self,
        channel: &str,
        range: IdRange,
        count: usize,
        descending: bool,
    ) -> Result<RangeRead, StoreError>;

    /// The stream's first id and its last entry's id and epoch, in one round trip
    /// (what the page cache checks a page against).
    async fn ends(&self, channel: &str) -> Result<StreamEnds, StoreError>;

    /// The channel's current epoch (`None` before its first tick).
    async fn epoch(&self, channel: &str) -> Result<Option<String>, StoreError>;

    /// Every channel name with a stream, sorted (the channel list pages by name).
    async fn channel_names(&self) -> Result<Vec<String>, StoreError>;

    /// Length and newest tick of each named channel, in the order given.
    async fn summaries(&self, names: &[String]) -> Result<Vec<ChannelSummary>, StoreError>;

    /// The candles of `channel` that `q` asks for.
    async fn candles(&self, channel: &str, q: Query) -> Result<Vec<Candle>, StoreError>;

    /// Recomputes a channel's candles from the ticks its stream still holds; returns
    /// how many ticks were folded (`tickstream candles rebuild`). Safe while ticks
    /// are appended.
    async fn rebuild_candles(&self, channel: &str) -> Result<usize, StoreError>;

    /// Where each of `channels` (all of one partition) stands now.
    async fn last_stored(&self, channels: &[Arc<str>]) -> Result<Vec<LastStored>, StoreError>;

    /// Moves each of `delivered` (channels of one partition, with what this node
    /// delivered of them) whose stream came back behind its fence to its next epoch,
    /// calling `rolled` with the channel and the newest entry that survived (readers
    /// go on from it) as each one moves: what moved is known even when a later one
    /// fails. An engine that cannot fail over moves none.
    async fn roll_back_behind(
        &self,
        delivered: &[(Arc<str>, Fence)],
        rolled: &mut (dyn FnMut(Arc<str>, StreamId) + Send),
    ) -> Result<(), StoreError>;

    /// A round trip to the engine (readiness).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Dev mode's signing secret: the one this store keeps, else `candidate`, kept
    /// from now on where the store outlives the process.
    async fn dev_secret(&self, candidate: String) -> Result<String, StoreError>;

    /// A reader for one partition's streams; `waker` interrupts its blocking read.
    fn tail(self: Arc<Self>, partition: u32, waker: Arc<TailWaker>) -> Box<dyn Tail>;
}

/// Helpers every caller shares, on any engine.
impl dyn Engine {
    /// Up to `count` ticks in `range`, oldest first.
    pub async fn range(&self, channel: &str, range: IdRange, count: usize) -> Result<Vec<Tick>, StoreError> {
        Ok(self.entries(channel, range, count, false).await?.ticks)
    }

    /// Up to `count` ticks in `range`, newest first.
    pub async fn rev_range(&self, channel: &str, range: IdRange, count: usize) -> Result<Vec<Tick>, StoreError> {
        Ok(self.entries(channel, range, count, true).await?.ticks)
    }

    /// [`Engine::read_entries`], answering an empty range without asking the engine.
    pub async fn entries(
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
        self.read_entries(channel, range, count, descending).await
    }

    /// The newest tick, if any.
    pub async fn latest(&self, channel: &str) -> Result<Option<Tick>, StoreError> {
        Ok(self.rev_range(channel, IdRange::ALL, 1).await?.pop())
    }
}

/// A partition reader's source of new entries (one per partition, never shared).
#[async_trait]
pub trait Tail: Send {
    /// Connects if need be; `true` for a fresh connection, after which the hub checks
    /// for streams a failover rolled back before it reads on (`hub/reader.rs`).
    async fn connect(&mut self) -> Result<bool, StoreError>;

    /// Waits up to the block time for entries after each cursor, and (`births`: the
    /// cursor of the partition's births) for channels being created; returns what
    /// each channel with new entries got, and the births seen.
    async fn read(
        &mut self,
        cursors: &[(Arc<str>, StreamId)],
        births: Option<StreamId>,
    ) -> Result<(Vec<TailBatch>, Option<Births>), StoreError>;
}

/// Interrupts a tail's blocking read where waking its task is not enough (Redis:
/// `CLIENT UNBLOCK` of the reader's connection).
#[async_trait]
pub trait Interrupt: Send + Sync {
    async fn interrupt(&self);
}

/// Lets the hub interrupt a partition reader's blocking read when its channel set
/// changes, so a newly active channel does not wait out the block time.
#[derive(Default)]
pub struct TailWaker {
    /// Wakes a reader that waits in-process (no channels, or the memory engine).
    pub notify: Notify,
    /// What the tail registered to interrupt its current read, if it blocks
    /// elsewhere; replaced on each new connection.
    interrupt: Mutex<Option<Arc<dyn Interrupt>>>,
}

impl TailWaker {
    /// The tail's interrupt for its current connection.
    pub fn set_interrupt(&self, interrupt: Option<Arc<dyn Interrupt>>) {
        *self.interrupt.lock().unwrap_or_else(|e| e.into_inner()) = interrupt;
    }

    /// Interrupts the reader's current wait, wherever it waits.
    pub async fn wake(&self) {
        self.notify.notify_one();
        let interrupt = self.interrupt.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(interrupt) = interrupt {
            interrupt.interrupt().await;
        }
    }
}

//! The values the engine contract speaks (`engine/mod.rs`): what goes in, what comes
//! back. Plain data, the same for every engine.

use std::sync::Arc;
use std::time::Duration;

use crate::candles::CandleSettings;
use crate::tick::{StreamId, Tick};

/// Most entries one tail read returns per channel (`XREAD COUNT`): a batch this
/// full means the reader is behind its stream.
pub const TAIL_COUNT: usize = 1000;

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

/// Where an append looks up a channel's fence: what this node delivered of it
/// (`None`: nothing, or no subscriber here). Asked once per channel of a batch, and
/// only by an engine that can fail over.
pub trait Fences: Sync {
    fn fence(&self, channel: &str) -> Option<Fence>;
}

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

/// A range read, with what its reply proves it saw (the page cache's input).
pub struct RangeRead {
    /// The readable entries, in read order.
    pub ticks: Vec<Tick>,
    /// Entries in the reply, readable or not.
    pub entries: usize,
    /// The first and last entry ids of the reply, in read order.
    pub edges: Option<(StreamId, StreamId)>,
}

/// A stream's ends, as the engine answered just before a page.
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

/// Where a channel's stream stands now, for the failover check and the reader-lag
/// sample (`redis/failover.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastStored {
    /// The newest entry's id (`None`: no stream at all).
    pub last_id: Option<StreamId>,
    /// The channel's epoch and the last `seq` it handed out.
    pub epoch: Option<String>,
    pub seq: u64,
}

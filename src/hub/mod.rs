//! The live tail and fan-out of one node (docs/ARCHITECTURE.md §4).
//!
//! - [`channel`]: an active channel (live buffer, ring, cursor), its partition, and a
//!   session's handle on it.
//! - [`reader`]: one reader task per partition, tailing the store.
//! - [`lag`]: how far each reader is behind its partition's streams (a metric).
//! - [`direct`]: delivery from the channel: each batch framed once and written
//!   straight to caught-up WebSocket subscribers.
//! - [`conflation`]: conflated (`rate`) subscriptions, timed per channel.
//! - [`candle_feed`]: live candle feeds, one per channel and interval, shared by their
//!   subscribers.
//!
//! While a partition has active channels (channels with at least one local
//! subscriber), its reader blocks on the store for all of them at once (one `XREAD`
//! over every active stream of the partition), serializes each new tick once into a
//! [`LiveFrame`] and broadcasts it to that channel's sessions. A node's reads
//! therefore grow with its active partitions, never with its clients.
//!
//! When a channel becomes active its tail cursor is fixed *before* the first
//! subscriber replays history, so "replay up to now" ∪ "live after the cursor" covers
//! every id; sessions drop the overlap by id.

pub mod candle_feed;
pub mod channel;
pub mod conflation;
pub mod direct;
mod lag;
pub mod reader;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, Notify};

use crate::clock::now_ms;
use crate::engine::{Fence, Fences, IdRange, Store, StoreError, StreamInfo, TailWaker};
use crate::metrics::Metrics;
use crate::page_cache::PageCache;
use crate::redis::keyspace::partition_of;
use crate::tick::StreamId;
pub use candle_feed::CandleSubscription;
pub use channel::{has_line_break, Interrupted, LiveFrame, LiveSubscription};
use channel::{ActiveChannel, Partition};
pub use conflation::{Conflated, Offer, Sampler};
pub use direct::{Attachment, Conn, Pending};

/// What the hub is sized with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubSettings {
    pub partitions: u32,
    /// Frames each active channel's live buffer holds; a subscriber further behind
    /// catches up from the ring or the stream instead.
    pub live_buffer: usize,
    /// Recent ticks each active channel keeps for resumes and catch-ups.
    pub ring: usize,
}

/// What a newly active channel starts with: read once, by the first subscriber.
struct Seed {
    recent: VecDeque<LiveFrame>,
    floor: StreamId,
    first_id: Option<StreamId>,
    /// The stream exists (else the channel waits for its birth).
    exists: bool,
    /// The partition's last birth when the stream's existence was looked at.
    births: StreamId,
}

/// The head of a channel's stream as the hub knows it.
#[derive(Debug, Clone)]
pub struct Head {
    pub epoch: Option<Arc<str>>,
    pub first_id: Option<StreamId>,
    pub last_id: Option<StreamId>,
    /// `seq` of the tick at `last_id`, when the ring holds it.
    pub last_seq: Option<u64>,
}

pub struct Hub {
    store: Store,
    partitions: Vec<Arc<Partition>>,
    live_buffer: usize,
    /// Capacity of each active channel's ring of recent ticks.
    ring: usize,
    metrics: Arc<Metrics>,
    candles: candle_feed::CandleFeeds,
    /// Where the readers leave the ticks they published (REST pages read them).
    page_cache: Arc<PageCache>,
}

impl Hub {
    pub fn new(store: Store, settings: HubSettings, metrics: Arc<Metrics>, page_cache: Arc<PageCache>) -> Arc<Hub> {
        Arc::new(Hub {
            store,
            partitions: (0..settings.partitions)
                .map(|index| {
                    Arc::new(Partition {
                        index,
                        activation: tokio::sync::Mutex::new(()),
                        channels: Mutex::new(HashMap::new()),
                        waker: Arc::new(TailWaker::default()),
                        generation: AtomicU64::new(0),
                        reading_generation: AtomicU64::new(0),
                        last_heard_ms: AtomicU64::new(0),
                        behind: Default::default(),
                        births: Default::default(),
                    })
                })
                .collect(),
            live_buffer: settings.live_buffer.max(16),
            ring: settings.ring.max(1),
            metrics,
            candles: candle_feed::CandleFeeds::default(),
            page_cache,
        })
    }

    /// Registers a live receiver for `channel`, activating the channel (and fixing its
    /// tail cursor) if this node had no subscriber for it. Call this *before*
    /// replaying history.
    pub async fn subscribe(self: &Arc<Self>, channel: &str) -> Result<LiveSubscription, StoreError> {
        let partition = self.partition(channel).clone();
        if let Some(sub) = self.join(&partition, channel, None) {
            return Ok(sub);
        }
        let _one_at_a_time = partition.activation.lock().await;
        if let Some(sub) = self.join(&partition, channel, None) {
            return Ok(sub);
        }
        // One read says whether the channel exists. One that does not waits for its
        // birth: no buffer, no key in any read, no wake-up of the reader.
        let probe = self.store.probe(channel).await?;
        let seed = match probe.exists {
            false => Seed {
                recent: VecDeque::new(),
                floor: StreamId::ZERO,
                first_id: None,
                exists: false,
                births: probe.births,
            },
            true => {
                let info = self.store.info(channel).await?;
                let mut newest = self.store.rev_range(channel, IdRange::ALL, self.ring).await?;
                newest.reverse();
                let whole_stream = newest.len() < self.ring && !info.as_ref().is_some_and(StreamInfo::has_trimmed);
                let floor = match newest.first() {
                    // Nothing was ever trimmed and all of it fitted: every id is here.
                    _ if whole_stream => StreamId::ZERO,
                    Some(first) => first.id.prev(),
                    None => StreamId::ZERO,
                };
                Seed {
                    recent: newest.iter().map(LiveFrame::new).collect(),
                    floor,
                    first_id: info.and_then(|i| i.first).map(|t| t.id),
                    exists: true,
                    births: probe.births,
                }
            }
        };
        self.join(&partition, channel, Some(seed))
            .ok_or_else(|| StoreError::Protocol("channel activation lost".into()))
    }

    /// The ring's frame of the tick with id `id`, if the ring holds it.
    pub fn frame_at(&self, channel: &str, id: StreamId) -> Option<LiveFrame> {
        let channels = self.partition(channel).lock();
        let active = channels.get(channel)?;
        let i = active.recent.partition_point(|f| f.id < id);
        active.recent.get(i).filter(|f| f.id == id).cloned()
    }

    /// Whether the ring holds every tick after `after` (so a resume from it needs no
    /// store read).
    pub fn ring_covers(&self, channel: &str, after: StreamId) -> bool {
        let channels = self.partition(channel).lock();
        channels.get(channel).is_some_and(|active| after >= active.floor)
    }

    /// Ticks after `after` from the node-local ring, when it holds all of them, in a
    /// chunk of at most `budget` by `cost` (one frame at least); `true` beside them
    /// when more follow the chunk. A caller that holds a socket's budget takes no
    /// more of the ring than it was granted.
    pub fn recent_chunk_after(
        &self,
        channel: &str,
        after: StreamId,
        budget: usize,
        cost: impl Fn(&LiveFrame) -> usize,
    ) -> Option<(Vec<LiveFrame>, bool)> {
        let channels = self.partition(channel).lock();
        let ticks = channels.get(channel)?.ticks_after(after)?;
        let mut chunk = Vec::new();
        let mut spent = 0;
        for frame in ticks {
            let c = cost(frame);
            if !chunk.is_empty() && spent + c > budget {
                return Some((chunk, true));
            }
            spent += c;
            chunk.push(frame.clone());
        }
        Some((chunk, false))
    }

    /// The cursor after which the last `n` ticks follow, when the ring holds them (or
    /// the whole stream is shorter): a `since`-less subscribe replays from there.
    pub fn start_of_last(&self, channel: &str, n: usize) -> Option<StreamId> {
        let channels = self.partition(channel).lock();
        let active = channels.get(channel)?;
        let len = active.recent.len();
        if len > n {
            return Some(active.recent[len - n - 1].id);
        }
        // Every id after the floor is in the ring (ZERO: the whole stream is).
        (len == n || active.floor == StreamId::ZERO).then_some(active.floor)
    }

    /// The channel's newest tick, as its ring holds it: what a conflated subscription
    /// replays.
    pub fn newest(&self, channel: &str) -> Option<LiveFrame> {
        self.partition(channel).lock().get(channel)?.recent.back().cloned()
    }

    /// The `seq` of the channel's last tick at or before `after` (one less than the
    /// first one after it), when the ring holds every tick after `after` and one of
    /// them: what a conflated subscription's first `skipped` counts from.
    pub fn seq_through(&self, channel: &str, after: StreamId) -> Option<u64> {
        let channels = self.partition(channel).lock();
        let mut ticks = channels.get(channel)?.ticks_after(after)?;
        ticks.next().map(|f| f.seq.saturating_sub(1))
    }

    /// Hands `live` over to conflation: from here on its channel's newest tick is
    /// offered to `sampler` at most once per `interval` (docs/ARCHITECTURE.md
    /// "Conflation"); `sent_at` is when the subscription's last tick frame went out.
    pub fn conflate(
        &self,
        live: LiveSubscription,
        interval: Duration,
        sampler: Box<dyn Sampler>,
        sent_at: Option<tokio::time::Instant>,
    ) -> Conflated {
        conflation::register(live, interval, sampler, sent_at)
    }

    /// Puts `live`'s subscription on its channel's direct path, on connection `conn`
    /// (docs/ARCHITECTURE.md "Delivery from the channel"): `catch_up` turns the
    /// ring's ticks after `after` into the frames still owed, queued ahead of
    /// anything the channel writes, or refuses (`direct::attach` says when). Gives
    /// `live` back when it cannot join.
    pub fn attach(
        &self,
        live: LiveSubscription,
        conn: &Arc<Conn>,
        sub: u64,
        after: StreamId,
        catch_up: impl FnOnce(
            &mut dyn Iterator<Item = &LiveFrame>,
            Option<&LiveFrame>,
        ) -> Result<Option<axum::body::Bytes>, ()>,
    ) -> Result<Attachment, LiveSubscription> {
        direct::attach(live, direct::DirectSub::new(sub, conn.clone()), after, catch_up)
    }

    /// The stream's epoch, first and last id for a `subscribed` frame, without a
    /// store read per subscriber: `first_id` is re-read at most once a second per
    /// channel (trimming moves it; everything else the hub tracks exactly).
    pub fn head(self: &Arc<Self>, channel: &str) -> Option<Head> {
        let mut channels = self.partition(channel).lock();
        let active = channels.get_mut(channel)?;
        if active.exists && active.first_read.elapsed() > Duration::from_secs(1) && !active.refreshing {
            // Refreshed in the background (this subscriber uses the last value), so a
            // subscriber that goes away mid-read cannot leave the flag set.
            active.refreshing = true;
            tokio::spawn(self.clone().refresh_first_id(channel.into()));
        }
        // When the ring holds the whole stream its first tick is the exact answer.
        let first_id = match active.recent.front() {
            Some(f) if active.floor == StreamId::ZERO => Some(f.id),
            _ => active.first_id,
        };
        Some(Head {
            epoch: active.recent.back().map(|f| f.epoch.clone()),
            first_id,
            last_id: (active.cursor != StreamId::ZERO).then_some(active.cursor),
            last_seq: active.recent.back().map(|f| f.seq),
        })
    }

    async fn refresh_first_id(self: Arc<Self>, channel: Arc<str>) {
        // A failed read keeps the last value: it only feeds `first_id`.
        let read = self.store.info(&channel).await;
        let mut channels = self.partition(&channel).lock();
        if let Some(active) = channels.get_mut(&channel) {
            active.refreshing = false;
            if let Ok(info) = read {
                active.first_id = info.and_then(|i| i.first).map(|t| t.id);
                active.first_read = Instant::now();
            }
        }
    }

    fn partition(&self, channel: &str) -> &Arc<Partition> {
        let index = partition_of(channel, self.partitions.len() as u32) as usize;
        &self.partitions[index]
    }

    /// Joins an active channel, or activates it with `seed` when given.
    fn join(
        self: &Arc<Self>,
        partition: &Arc<Partition>,
        channel: &str,
        seed: Option<Seed>,
    ) -> Option<LiveSubscription> {
        let mut channels = partition.lock();
        let (key, rx, opened) = match channels.get_key_value(channel) {
            Some((key, active)) => (
                key.clone(),
                active.tx.as_ref().map(broadcast::Sender::subscribe),
                active.opened.clone(),
            ),
            None => {
                let seed = seed?;
                let key: Arc<str> = channel.into();
                let opened = Arc::new(Notify::new());
                let first_of_partition = channels.is_empty();
                channels.insert(
                    key.clone(),
                    ActiveChannel {
                        exists: seed.exists,
                        tx: None,
                        opened: opened.clone(),
                        subscribers: 0,
                        cursor: seed.recent.back().map_or(StreamId::ZERO, |f| f.id),
                        recent: seed.recent,
                        floor: seed.floor,
                        first_id: seed.first_id,
                        first_read: Instant::now(),
                        refreshing: false,
                        conflation: None,
                        direct: Arc::default(),
                    },
                );
                let generation = partition.generation.fetch_add(1, Ordering::AcqRel) + 1;
                if partition.last_heard_ms.load(Ordering::Acquire) == 0 {
                    partition.last_heard_ms.store(now_ms(), Ordering::Release);
                }
                let lowered = partition.births_seen(seed.births);
                if seed.exists || lowered {
                    tokio::spawn(self.clone().wake_reader(partition.clone(), generation));
                } else if first_of_partition {
                    // An idle reader waits on this (locally); a reader already
                    // reading follows the births and needs nothing.
                    partition.waker.notify.notify_one();
                }
                (key, None, opened)
            }
        };
        if let Some(active) = channels.get_mut(&key) {
            active.subscribers += 1;
        }
        Some(LiveSubscription {
            rx,
            opened,
            partition: partition.clone(),
            channel: key,
        })
    }

    /// Channels with local subscribers (for metrics and tests).
    pub fn active_channels(&self) -> usize {
        self.partitions.iter().map(|p| p.lock().len()).sum()
    }
}

/// What this node delivered of a channel it has subscribers for: an ingest through
/// this node checks the stream against it first (a failover may have rolled it back;
/// `redis/failover.rs`).
impl Fences for Hub {
    fn fence(&self, channel: &str) -> Option<Fence> {
        self.partition(channel)
            .lock()
            .get(channel)
            .and_then(ActiveChannel::fence)
    }
}

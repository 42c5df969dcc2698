//! The live tail and fan-out of one node (ARCHITECTURE §3).
//!
//! Each partition has one reader task. While the partition has active channels
//! (channels with at least one local subscriber), the reader blocks on the store for
//! all of them at once (one `XREAD` over every active stream of the partition),
//! serializes each new tick once into a [`LiveFrame`] and broadcasts it to that
//! channel's sessions. A node's reads therefore grow with its active partitions,
//! never with its clients.
//!
//! When a channel becomes active its tail cursor is fixed *before* the first
//! subscriber replays history, so "replay up to now" ∪ "live after the cursor" covers
//! every id; sessions drop the overlap by id.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, watch, Notify};

use crate::clock::now_ms;
use crate::keyspace::partition_of;
use crate::metrics::Metrics;
use crate::retry::{Backoff, ErrorLog};
use crate::store::{IdRange, Store, StoreError, StreamInfo, TailBatch, TailWaker};
use crate::tick::{StreamId, Tick};

/// A partition reader that has not heard from the store for this long is stale, and
/// `/readyz` says so: delivery silently dead must never look healthy.
pub const TAIL_STALE_AFTER: Duration = Duration::from_secs(5);

/// One tick, serialized once per node and shared by every session (cloning is a
/// reference-count bump).
#[derive(Debug, Clone)]
pub struct LiveFrame {
    pub id: StreamId,
    pub seq: u64,
    pub epoch: Arc<str>,
    /// The complete `{"type":"tick",…}` frame.
    pub text: Utf8Bytes,
}

impl LiveFrame {
    pub fn new(tick: &Tick) -> LiveFrame {
        LiveFrame {
            id: tick.id,
            seq: tick.seq,
            epoch: tick.epoch.clone(),
            text: Utf8Bytes::from(tick.to_frame()),
        }
    }
}

struct ActiveChannel {
    /// The live buffer, made when the first tick is published on this node: a
    /// channel that nobody writes to costs its subscribers no buffer at all (a
    /// broadcast allocates every slot up front).
    tx: Option<broadcast::Sender<LiveFrame>>,
    /// Wakes the subscribers that joined before `tx` existed.
    opened: Arc<Notify>,
    subscribers: usize,
    /// Last id published (or the stream's last id when the channel became active).
    cursor: StreamId,
    /// The channel's latest ticks, a contiguous suffix of its stream ending at
    /// `cursor`: resumes and catch-ups of recent history are served from here
    /// instead of each reading Redis (a reconnect storm costs Redis nothing).
    recent: VecDeque<LiveFrame>,
    /// Every stream entry with an id greater than this is in `recent`.
    floor: StreamId,
    /// The stream's oldest kept id as last read, for `subscribed` frames.
    first_id: Option<StreamId>,
    first_read: Instant,
    /// One session refreshes `first_id` at a time; the others use the last value.
    refreshing: bool,
}

impl ActiveChannel {
    fn push_recent(&mut self, frame: LiveFrame, capacity: usize) {
        if self.recent.back().is_some_and(|last| last.epoch != frame.epoch) {
            // The stream was lost and began again (a new epoch): what the ring holds
            // is no longer part of it.
            self.recent.clear();
            self.floor = frame.id.prev();
        }
        if self.recent.len() >= capacity {
            if let Some(old) = self.recent.pop_front() {
                self.floor = old.id;
            }
        }
        self.recent.push_back(frame);
    }
}

/// What a newly active channel starts with: read once, by the first subscriber.
struct Seed {
    recent: VecDeque<LiveFrame>,
    floor: StreamId,
    first_id: Option<StreamId>,
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

struct Partition {
    index: u32,
    /// Activations of this partition's channels run one at a time, so a storm of
    /// first subscribers to one channel reads its recent history from Redis once.
    activation: tokio::sync::Mutex<()>,
    channels: Mutex<HashMap<Arc<str>, ActiveChannel>>,
    waker: Arc<TailWaker>,
    /// Bumped whenever a channel is added to the set.
    generation: AtomicU64,
    /// The generation of the set the reader's current read uses.
    reading_generation: AtomicU64,
    /// Unix ms of the store's last answer to this reader; 0 while idle.
    last_heard_ms: AtomicU64,
}

impl Partition {
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, ActiveChannel>> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cursors(&self) -> Vec<(Arc<str>, StreamId)> {
        self.lock().iter().map(|(c, a)| (c.clone(), a.cursor)).collect()
    }

    /// A receiver of the channel's live buffer, once it has one.
    fn receiver(&self, channel: &str) -> Option<broadcast::Receiver<LiveFrame>> {
        self.lock().get(channel)?.tx.as_ref().map(broadcast::Sender::subscribe)
    }

    fn publish(&self, batches: Vec<TailBatch>, ring: usize, live_buffer: usize) {
        // Serialize outside the lock: that is the expensive part.
        let frames: Vec<(Arc<str>, Vec<LiveFrame>, StreamId)> = batches
            .into_iter()
            .map(|b| (b.channel, b.ticks.iter().map(LiveFrame::new).collect(), b.last))
            .collect();
        let mut channels = self.lock();
        for (channel, frames, last) in frames {
            let Some(active) = channels.get_mut(&channel) else {
                continue;
            };
            if frames.is_empty() {
                // Only unreadable entries: move past them.
                active.cursor = active.cursor.max(last);
                continue;
            }
            let tx = match &active.tx {
                Some(tx) => tx.clone(),
                None => {
                    // Nobody can be subscribed to the new buffer yet: the first frames
                    // reach the waiting subscribers through the ring once woken.
                    let tx = broadcast::channel(live_buffer).0;
                    active.tx = Some(tx.clone());
                    active.opened.notify_waiters();
                    tx
                }
            };
            for frame in frames {
                if frame.id > active.cursor {
                    active.cursor = frame.id;
                    active.push_recent(frame.clone(), ring);
                    // No receivers is fine: the last one may have just left.
                    let _ = tx.send(frame);
                }
            }
            active.cursor = active.cursor.max(last);
        }
    }
}

/// A session's handle on a channel's live ticks. Dropping it unsubscribes; the last
/// one to go makes the channel inactive.
pub struct LiveSubscription {
    /// `None` until the channel's live buffer exists (its first live tick).
    rx: Option<broadcast::Receiver<LiveFrame>>,
    opened: Arc<Notify>,
    partition: Arc<Partition>,
    channel: Arc<str>,
}

/// Why a live subscription returned no frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupted {
    /// It fell behind the live buffer: frames were dropped; catch up from the ring or
    /// the stream.
    Lagged,
    /// The channel got its live buffer just now: its first frames are in the ring,
    /// not in this receiver; catch up from the ring.
    Opened,
    /// The channel is gone (the hub shut down).
    Closed,
}

impl LiveSubscription {
    /// The next live frame.
    pub async fn recv(&mut self) -> Result<LiveFrame, Interrupted> {
        loop {
            if let Some(rx) = &mut self.rx {
                return rx.recv().await.map_err(|e| match e {
                    RecvError::Lagged(_) => Interrupted::Lagged,
                    RecvError::Closed => Interrupted::Closed,
                });
            }
            // Registered before looking, so an opening between the look and the wait
            // still wakes this subscriber.
            let notified = self.opened.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if let Some(rx) = self.partition.receiver(&self.channel) {
                self.rx = Some(rx);
                return Err(Interrupted::Opened);
            }
            notified.await;
        }
    }

    /// A frame that is ready now, if any (`Ok(None)`: nothing ready).
    pub fn try_recv(&mut self) -> Result<Option<LiveFrame>, Interrupted> {
        let Some(rx) = &mut self.rx else {
            return Ok(None);
        };
        match rx.try_recv() {
            Ok(frame) => Ok(Some(frame)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Lagged(_)) => Err(Interrupted::Lagged),
            Err(TryRecvError::Closed) => Err(Interrupted::Closed),
        }
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }
}

impl Drop for LiveSubscription {
    fn drop(&mut self) {
        let mut channels = self.partition.lock();
        if let Some(active) = channels.get_mut(&self.channel) {
            active.subscribers -= 1;
            if active.subscribers == 0 {
                channels.remove(&self.channel);
            }
        }
    }
}

/// Readiness of the live path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailHealth {
    /// Partitions with active channels whose reader has not heard from the store for
    /// [`TAIL_STALE_AFTER`].
    pub stale_partitions: Vec<u32>,
}

pub struct Hub {
    store: Store,
    partitions: Vec<Arc<Partition>>,
    live_buffer: usize,
    /// Capacity of each active channel's ring of recent ticks.
    ring: usize,
    metrics: Arc<Metrics>,
}

impl Hub {
    pub fn new(store: Store, partitions: u32, live_buffer: usize, ring: usize, metrics: Arc<Metrics>) -> Arc<Hub> {
        Arc::new(Hub {
            store,
            partitions: (0..partitions)
                .map(|index| {
                    Arc::new(Partition {
                        index,
                        activation: tokio::sync::Mutex::new(()),
                        channels: Mutex::new(HashMap::new()),
                        waker: Arc::new(TailWaker::default()),
                        generation: AtomicU64::new(0),
                        reading_generation: AtomicU64::new(0),
                        last_heard_ms: AtomicU64::new(0),
                    })
                })
                .collect(),
            live_buffer: live_buffer.max(16),
            ring: ring.max(1),
            metrics,
        })
    }

    /// Spawns one reader per partition; they stop when `shutdown` turns true.
    pub fn start(self: &Arc<Self>, shutdown: watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
        self.partitions
            .iter()
            .map(|p| tokio::spawn(self.clone().run_reader(p.clone(), shutdown.clone())))
            .collect()
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
        let seed = Seed {
            recent: newest.iter().map(LiveFrame::new).collect(),
            floor,
            first_id: info.and_then(|i| i.first).map(|t| t.id),
        };
        self.join(&partition, channel, Some(seed))
            .ok_or_else(|| StoreError::Protocol("channel activation lost".into()))
    }

    /// Ticks after `after`, when the node-local ring holds all of them.
    pub fn recent_after(&self, channel: &str, after: StreamId) -> Option<Vec<LiveFrame>> {
        let channels = self.partition(channel).lock();
        let active = channels.get(channel)?;
        if after < active.floor {
            return None;
        }
        let start = active.recent.partition_point(|f| f.id <= after);
        Some(active.recent.range(start..).cloned().collect())
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

    /// The last `n` ticks, when the ring holds them (or the whole stream is shorter).
    pub fn recent_last(&self, channel: &str, n: usize) -> Option<Vec<LiveFrame>> {
        let channels = self.partition(channel).lock();
        let active = channels.get(channel)?;
        if active.recent.len() < n && active.floor != StreamId::ZERO {
            return None;
        }
        let start = active.recent.len().saturating_sub(n);
        Some(active.recent.range(start..).cloned().collect())
    }

    /// The stream's epoch, first and last id for a `subscribed` frame, without a
    /// store read per subscriber: `first_id` is re-read at most once a second per
    /// channel (trimming moves it; everything else the hub tracks exactly).
    pub fn head(self: &Arc<Self>, channel: &str) -> Option<Head> {
        let mut channels = self.partition(channel).lock();
        let active = channels.get_mut(channel)?;
        if active.first_read.elapsed() > Duration::from_secs(1) && !active.refreshing {
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
                channels.insert(
                    key.clone(),
                    ActiveChannel {
                        tx: None,
                        opened: opened.clone(),
                        subscribers: 0,
                        cursor: seed.recent.back().map_or(StreamId::ZERO, |f| f.id),
                        recent: seed.recent,
                        floor: seed.floor,
                        first_id: seed.first_id,
                        first_read: Instant::now(),
                        refreshing: false,
                    },
                );
                let generation = partition.generation.fetch_add(1, Ordering::AcqRel) + 1;
                if partition.last_heard_ms.load(Ordering::Acquire) == 0 {
                    partition.last_heard_ms.store(now_ms(), Ordering::Release);
                }
                tokio::spawn(self.clone().wake_reader(partition.clone(), generation));
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

    /// Interrupts the reader until it reads with the new channel set. The retry closes
    /// the race where the wake-up reaches Redis before the reader's old `XREAD` does.
    async fn wake_reader(self: Arc<Self>, partition: Arc<Partition>, generation: u64) {
        for _ in 0..20 {
            self.store.wake(&partition.waker).await;
            tokio::time::sleep(Duration::from_millis(25)).await;
            if partition.reading_generation.load(Ordering::Acquire) >= generation {
                return;
            }
        }
    }

    async fn run_reader(self: Arc<Self>, partition: Arc<Partition>, mut shutdown: watch::Receiver<bool>) {
        let mut tail = self.store.tail(partition.index, partition.waker.clone());
        let mut backoff = Backoff::default();
        let mut errors_logged = ErrorLog::default();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let generation = partition.generation.load(Ordering::Acquire);
            let cursors = partition.cursors();
            if cursors.is_empty() {
                partition.last_heard_ms.store(0, Ordering::Release);
                tokio::select! {
                    _ = partition.waker.notify.notified() => continue,
                    _ = shutdown.changed() => return,
                }
            }
            partition.reading_generation.store(generation, Ordering::Release);
            let result = tokio::select! {
                r = tail.read(&cursors) => r,
                _ = shutdown.changed() => return,
            };
            match result {
                Ok(batches) => {
                    partition.last_heard_ms.store(now_ms(), Ordering::Release);
                    backoff.reset();
                    if errors_logged.recovered() {
                        tracing::info!(partition = partition.index, "partition reader reconnected");
                    }
                    partition.publish(batches, self.ring, self.live_buffer);
                }
                Err(e) => {
                    self.metrics.redis_errors.inc();
                    if errors_logged.should_log() {
                        tracing::warn!(partition = partition.index, error = %e, "partition reader: store error, retrying");
                    }
                    let delay = backoff.next_delay();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
    }

    pub fn tail_health(&self) -> TailHealth {
        let now = now_ms();
        let stale = TAIL_STALE_AFTER.as_millis() as u64;
        TailHealth {
            stale_partitions: self
                .partitions
                .iter()
                .filter(|p| {
                    let heard = p.last_heard_ms.load(Ordering::Acquire);
                    heard != 0 && now.saturating_sub(heard) > stale && !p.lock().is_empty()
                })
                .map(|p| p.index)
                .collect(),
        }
    }

    /// Channels with local subscribers (for metrics and tests).
    pub fn active_channels(&self) -> usize {
        self.partitions.iter().map(|p| p.lock().len()).sum()
    }
}

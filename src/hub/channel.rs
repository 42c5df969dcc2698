//! A channel as the hub keeps it while it has local subscribers: its live buffer,
//! its ring of recent ticks and its tail cursor; the partition that holds it; and a
//! session's handle on it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, Notify};

use super::conflation::Group;
use super::direct::{self, Delivery, DirectSub};
use crate::engine::{Fence, Probe, TailBatch, TailWaker};
use crate::tick::{StreamId, Tick};

/// One tick, serialized once per node and shared by every session. One pointer:
/// handing it to a subscriber and dropping it after the write are the only
/// reference-count changes a delivery costs (with the id, epoch and text shared
/// separately it was four, a tenth of the fan-out's CPU: docs/BENCHMARKS.md
/// "Own framing").
#[derive(Debug, Clone)]
pub struct LiveFrame(Arc<LiveTick>);

#[derive(Debug)]
pub struct LiveTick {
    pub id: StreamId,
    pub seq: u64,
    pub epoch: Arc<str>,
    /// The complete `{"type":"tick",…}` frame.
    pub text: String,
    /// Whether `text` holds a raw CR or LF: only a body written to Redis by something
    /// other than tickstream does. Found once per tick, so an SSE event (one line of
    /// `data:`) need not look for it once per client.
    pub line_breaks: bool,
}

impl LiveFrame {
    pub fn new(tick: &Tick) -> LiveFrame {
        let text = tick.to_frame();
        LiveFrame(Arc::new(LiveTick {
            id: tick.id,
            seq: tick.seq,
            epoch: tick.epoch.clone(),
            line_breaks: has_line_break(&text),
            text,
        }))
    }
}

/// Whether `text` holds a raw CR or LF.
pub fn has_line_break(text: &str) -> bool {
    text.bytes().any(|b| matches!(b, b'\r' | b'\n'))
}

impl std::ops::Deref for LiveFrame {
    type Target = LiveTick;

    fn deref(&self) -> &LiveTick {
        &self.0
    }
}

pub(crate) struct ActiveChannel {
    /// The stream existed when the channel became active, or its birth has been
    /// seen since. Until then the channel waits: its key is in no read (the
    /// partition's births say when it exists; docs/ARCHITECTURE.md §4).
    pub(crate) exists: bool,
    /// The live buffer, made when the first tick is published on this node: a
    /// channel that nobody writes to costs its subscribers no buffer at all (a
    /// broadcast allocates every slot up front).
    pub(crate) tx: Option<broadcast::Sender<LiveFrame>>,
    /// Wakes the subscribers that joined before `tx` existed.
    pub(crate) opened: Arc<Notify>,
    pub(crate) subscribers: usize,
    /// Last id published (or the stream's last id when the channel became active).
    pub(crate) cursor: StreamId,
    /// The channel's latest ticks, a contiguous suffix of its stream ending at
    /// `cursor`: resumes and catch-ups of recent history are served from here
    /// instead of each reading Redis (a reconnect storm costs Redis nothing).
    pub(crate) recent: VecDeque<LiveFrame>,
    /// Every stream entry with an id greater than this is in `recent`.
    pub(crate) floor: StreamId,
    /// The stream's oldest kept id as last read, for `subscribed` frames.
    pub(crate) first_id: Option<StreamId>,
    pub(crate) first_read: Instant,
    /// One session refreshes `first_id` at a time; the others use the last value.
    pub(crate) refreshing: bool,
    /// The channel's conflated subscriptions, while it has any.
    pub(crate) conflation: Option<Group>,
    /// Subscribers the channel writes to directly (`direct.rs`); shared, so a
    /// delivery takes the list out of the lock and writes outside it.
    pub(crate) direct: Arc<Vec<Arc<DirectSub>>>,
}

impl ActiveChannel {
    /// What this node delivered last (the ring always holds the last frame published).
    pub(crate) fn fence(&self) -> Option<Fence> {
        self.recent.back().map(|f| Fence {
            epoch: f.epoch.clone(),
            id: f.id,
            seq: f.seq,
        })
    }

    /// The ring's ticks after `after`, when it holds every one of them (`None`: some
    /// are older than the ring, read them from the stream).
    pub(crate) fn ticks_after(&self, after: StreamId) -> Option<std::collections::vec_deque::Iter<'_, LiveFrame>> {
        if after < self.floor {
            return None;
        }
        let start = self.recent.partition_point(|f| f.id <= after);
        Some(self.recent.range(start..))
    }

    pub(crate) fn push_recent(&mut self, frame: LiveFrame, capacity: usize) {
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

pub(crate) struct Partition {
    pub(crate) index: u32,
    /// Activations of this partition's channels run one at a time, so a storm of
    /// first subscribers to one channel reads its recent history from Redis once.
    pub(crate) activation: tokio::sync::Mutex<()>,
    pub(crate) channels: Mutex<HashMap<Arc<str>, ActiveChannel>>,
    pub(crate) waker: Arc<TailWaker>,
    /// Bumped whenever a channel is added to the set.
    pub(crate) generation: AtomicU64,
    /// The generation of the set the reader's current read uses.
    pub(crate) reading_generation: AtomicU64,
    /// Unix ms of the store's last answer to this reader; 0 while idle.
    pub(crate) last_heard_ms: AtomicU64,
    /// The reader's last read returned a full batch for some channel: it is behind.
    pub(crate) behind: std::sync::atomic::AtomicBool,
    /// Where the reader reads the partition's births from.
    pub(crate) births: Mutex<BirthsCursor>,
}

/// The reader's cursor in the partition's births. A channel that starts waiting
/// may have been born between its probe and its registration, after the reader
/// passed that birth: registration then moves the cursor back to the probe's id
/// (`lowered` counts such moves, so a read that began before one does not move the
/// cursor forward past it).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct BirthsCursor {
    /// `None` until a probe said where the births stood.
    pub(crate) after: Option<StreamId>,
    pub(crate) lowered: u64,
}

impl BirthsCursor {
    /// No further than `seen`: `true` when that moved the cursor back.
    fn lower_to(&mut self, seen: StreamId) -> bool {
        match self.after {
            Some(after) if after <= seen => false,
            Some(_) => {
                self.after = Some(seen);
                self.lowered += 1;
                true
            }
            None => {
                self.after = Some(seen);
                false
            }
        }
    }
}

impl Partition {
    pub(crate) fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, ActiveChannel>> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tail cursors of the channels whose streams exist (waiting channels are in
    /// no read), and whether any channel is active at all.
    pub(crate) fn cursors(&self) -> (Vec<(Arc<str>, StreamId)>, bool) {
        let channels = self.lock();
        let cursors = channels
            .iter()
            .filter(|(_, a)| a.exists)
            .map(|(c, a)| (c.clone(), a.cursor))
            .collect();
        (cursors, !channels.is_empty())
    }

    fn births_lock(&self) -> MutexGuard<'_, BirthsCursor> {
        self.births.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where the next read starts in the births.
    pub(crate) fn births_after(&self) -> BirthsCursor {
        *self.births_lock()
    }

    /// A probe saw the births at `seen`; `true` when the reader may already have
    /// read past it (the cursor moved back, and the reader must be woken). Called
    /// with the channel set locked, right after the new channel joined it.
    pub(crate) fn births_seen(&self, seen: StreamId) -> bool {
        self.births_lock().lower_to(seen)
    }

    /// The channels waiting for their birth.
    pub(crate) fn waiting(&self) -> Vec<Arc<str>> {
        self.lock()
            .iter()
            .filter(|(_, a)| !a.exists)
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// A waiting channel probed again: it exists now, or it waits on with the
    /// births cursor no further than the probe saw (a new master may number births
    /// below what the old one did).
    pub(crate) fn rechecked(&self, channel: &str, probe: Probe) {
        let mut active = self.lock();
        if let Some(a) = active.get_mut(channel) {
            a.exists |= probe.exists;
        }
        self.births_lock().lower_to(probe.births);
    }

    /// The reader read births up to `last` from where `read_from` said: waiting
    /// channels among `channels` exist now (their streams are read from the start,
    /// `0-0`, on the next read).
    pub(crate) fn born(&self, channels: &[String], last: StreamId, read_from: BirthsCursor) {
        // The channel set stays locked until the cursor has moved: a registration
        // (which also holds it, see `births_seen`) comes wholly before or after.
        let mut active = self.lock();
        for name in channels {
            if let Some(a) = active.get_mut(name.as_str()) {
                a.exists = true;
            }
        }
        let mut births = self.births_lock();
        if births.lowered == read_from.lowered {
            births.after = Some(births.after.map_or(last, |a| a.max(last)));
        }
    }

    /// A receiver of the channel's live buffer, once it has one.
    pub(crate) fn receiver(&self, channel: &str) -> Option<broadcast::Receiver<LiveFrame>> {
        self.lock().get(channel)?.tx.as_ref().map(broadcast::Sender::subscribe)
    }

    /// The last tick published (or seeded) for each active channel: what this node
    /// has delivered.
    pub(crate) fn delivered(&self) -> Vec<(Arc<str>, Fence)> {
        self.lock()
            .iter()
            .filter_map(|(c, a)| a.fence().map(|f| (c.clone(), f)))
            .collect()
    }

    /// A failover rolled `channel` back to `survivor`: the ring forgets what the
    /// stream no longer has, and the reader reads on from the survivor (whatever
    /// comes next is new, and `Cursor::admit` announces it with a `rollback` gap).
    pub(crate) fn rolled_back(&self, channel: &str, survivor: StreamId) {
        let mut channels = self.lock();
        if let Some(active) = channels.get_mut(channel) {
            // Its direct subscribers were given what is rolled back: their cursors,
            // not the channel, announce it.
            let delivered = active.fence();
            direct::detach_all(&mut active.direct, &delivered);
            while active.recent.back().is_some_and(|f| f.id > survivor) {
                active.recent.pop_back();
            }
            active.floor = active.floor.min(survivor);
            // Never forward: entries between the reader's cursor and the survivor
            // are still unread.
            active.cursor = active.cursor.min(survivor);
        }
    }

    /// Publishes what the reader read: into each channel's ring and live buffer,
    /// and, for the channels' direct subscribers, as framed batches the reader
    /// writes once the lock is released.
    pub(crate) fn publish(&self, batches: &[TailBatch], ring: usize, live_buffer: usize) -> Vec<Delivery> {
        // Serialize outside the lock: that is the expensive part.
        let frames: Vec<(Arc<str>, Vec<LiveFrame>, StreamId)> = batches
            .iter()
            .map(|b| (b.channel.clone(), b.ticks.iter().map(LiveFrame::new).collect(), b.last))
            .collect();
        let mut deliveries = Vec::new();
        let mut channels = self.lock();
        for (channel, frames, last) in frames {
            let Some(active) = channels.get_mut(&channel) else {
                continue;
            };
            // Only a channel with direct subscribers frames its batch for them.
            let direct = !active.direct.is_empty();
            let prev = if direct { active.fence() } else { None };
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
            let mut fresh = Vec::with_capacity(if direct { frames.len() } else { 0 });
            let mut any = false;
            for frame in frames {
                if frame.id > active.cursor {
                    active.cursor = frame.id;
                    active.push_recent(frame.clone(), ring);
                    any = true;
                    // No receivers is fine: the last one may have just left.
                    if direct {
                        let _ = tx.send(frame.clone());
                        fresh.push(frame);
                    } else {
                        let _ = tx.send(frame);
                    }
                }
            }
            active.cursor = active.cursor.max(last);
            if !any {
                continue;
            }
            if let (Some(group), Some(newest)) = (&mut active.conflation, active.recent.back()) {
                group.published(newest, tokio::time::Instant::now());
            }
            if !direct {
                continue;
            }
            if direct::follows(&prev, &fresh) {
                deliveries.push(Delivery {
                    subs: active.direct.clone(),
                    frames: fresh,
                    prev,
                });
            } else {
                direct::detach_all(&mut active.direct, &prev);
            }
        }
        deliveries
    }
}

/// A session's handle on a channel's live ticks. Dropping it unsubscribes; the last
/// one to go makes the channel inactive.
pub struct LiveSubscription {
    /// `None` until the channel's live buffer exists (its first live tick).
    pub(crate) rx: Option<broadcast::Receiver<LiveFrame>>,
    pub(crate) opened: Arc<Notify>,
    pub(crate) partition: Arc<Partition>,
    pub(crate) channel: Arc<str>,
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

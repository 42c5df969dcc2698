//! Delivery from the channel (docs/ARCHITECTURE.md "Delivery from the channel").
//!
//! A channel's reader frames each batch of new ticks once (a server frame is
//! unmasked, so one encoded byte string serves every socket) and writes it with one
//! non-blocking write to each WebSocket subscriber that is caught up and whose
//! connection has nothing of its own queued: no task of the connection is woken. A
//! connection that is busy (its writer is writing frames of its own, or bytes wait)
//! gets the batch appended to its [`Conn`]'s pending list instead, which its writer
//! writes in order; one whose pending list has grown past [`PENDING_LIMIT`] leaves
//! the direct path ([`Pending::Detached`]) and catches up from the ring or the stream
//! through its own queue, like any slow consumer.
//!
//! The ordering rule: every byte a connection sends passes its [`Conn`]'s lock, either
//! as a direct write when nothing is pending or as a pending item, so bytes keep the
//! order in which they took the lock; and a subscription's frames come from one
//! producer at a time: its start-up or catch-up (through the queue) until it is
//! attached, the channel while attached, and a catch-up again from the tick a
//! [`Pending::Detached`] names, which the writer only reaches after every byte the
//! channel queued before it.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use tokio::sync::Notify;

use super::channel::{LiveFrame, LiveSubscription};
use crate::engine::Fence;
use crate::framing;

/// Bytes a connection may have pending before its subscription that would add more
/// leaves the direct path (and catches up from the ring or the stream instead, within
/// the socket's budget): the size of the writer's own batch of live ticks
/// (`session/budget.rs`), which the pending list stands in for.
pub const PENDING_LIMIT: usize = 96 * 1024;

/// A socket the hub may write to without waiting.
pub trait RawSocket: Send + Sync {
    /// Writes what the kernel takes now; `WouldBlock` when it takes nothing.
    fn try_write(&self, bytes: &[u8]) -> io::Result<usize>;
}

impl RawSocket for tokio::net::tcp::OwnedWriteHalf {
    fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        tokio::net::tcp::OwnedWriteHalf::try_write(self, bytes)
    }
}

/// A WebSocket connection as the direct path sees it: its socket, and what waits
/// for its writer.
pub struct Conn {
    socket: Arc<dyn RawSocket>,
    state: Mutex<ConnState>,
    /// Wakes the connection's writer: bytes are pending.
    pub wake: Notify,
}

#[derive(Default)]
struct ConnState {
    /// The writer has frames of its own in hand, or bytes are pending: the direct
    /// path appends instead of writing.
    busy: bool,
    pending: VecDeque<Pending>,
    pending_bytes: usize,
    /// The connection is gone: nothing more is written or kept.
    closed: bool,
}

/// What waits for a connection's writer, in order.
pub enum Pending {
    /// Framed ticks of subscription `sub`. `cut`: the rest of frames a direct
    /// write cut short, which must go out whatever becomes of `sub` (the socket
    /// already holds their start).
    Bytes { sub: u64, bytes: Bytes, cut: bool },
    /// Subscription `sub` left the direct path after `after`, the last tick written
    /// or queued for it (`None`: none since it was attached): catch it up from there.
    /// `lagged`: it fell behind (else the channel's ticks did not follow on, and its
    /// cursor must say how).
    Detached {
        sub: u64,
        after: Option<Fence>,
        lagged: bool,
    },
}

impl Conn {
    pub fn new(socket: Arc<dyn RawSocket>) -> Arc<Conn> {
        Arc::new(Conn {
            socket,
            state: Mutex::new(ConnState::default()),
            wake: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writer has frames of its own in hand: direct writes queue behind them.
    /// Returns the first item already pending, which goes before the writer's own.
    #[must_use]
    pub fn hold(&self) -> Option<Pending> {
        let mut state = self.lock();
        state.busy = true;
        Self::pop(&mut state, false)
    }

    /// The next pending item for the writer; `None` when there is none, which with
    /// `release` also ends the writer's hold (direct writes resume).
    pub fn next_pending(&self, release: bool) -> Option<Pending> {
        Self::pop(&mut self.lock(), release)
    }

    fn pop(state: &mut ConnState, release: bool) -> Option<Pending> {
        let next = state.pending.pop_front();
        match &next {
            Some(Pending::Bytes { bytes, .. }) => state.pending_bytes -= bytes.len(),
            Some(Pending::Detached { .. }) => {}
            None if release => state.busy = false,
            None => {}
        }
        next
    }

    /// The connection is gone.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.busy = true;
        state.pending.clear();
        state.pending_bytes = 0;
    }

    /// Appends under the lock, and wakes the writer.
    fn queue(&self, state: &mut ConnState, item: Pending) {
        if let Pending::Bytes { bytes, .. } = &item {
            state.pending_bytes += bytes.len();
        }
        state.pending.push_back(item);
        state.busy = true;
        self.wake.notify_one();
    }

    /// Writes `batch` for `sub` now, or queues it behind what is pending; a
    /// subscription that would take the pending list past its limit leaves the
    /// direct path instead, after `prev`.
    fn deliver(&self, sub: &DirectSub, batch: &Bytes, prev: &Option<Fence>) -> bool {
        let mut state = self.lock();
        if state.closed || !sub.on.load(Ordering::Relaxed) {
            return false;
        }
        let (bytes, cut) = if state.busy {
            if state.pending_bytes + batch.len() > PENDING_LIMIT {
                sub.on.store(false, Ordering::Relaxed);
                self.queue_detached(&mut state, sub.sub, prev, true);
                return false;
            }
            (batch.clone(), false)
        } else {
            match self.socket.try_write(batch) {
                Ok(n) if n == batch.len() => return true,
                Ok(n) => (batch.slice(n..), n > 0),
                // Any other error is the writer's to find: it writes the batch itself
                // next, and a connection that is gone ends there.
                Err(_) => (batch.clone(), false),
            }
        };
        self.queue(
            &mut state,
            Pending::Bytes {
                sub: sub.sub,
                bytes,
                cut,
            },
        );
        true
    }

    /// Takes `sub` off the direct path after `prev`: its writer catches it up.
    fn detach(&self, sub: &DirectSub, prev: &Option<Fence>) {
        let mut state = self.lock();
        if sub.on.swap(false, Ordering::Relaxed) && !state.closed {
            self.queue_detached(&mut state, sub.sub, prev, false);
        }
    }

    /// The marker the writer reaches after every earlier byte of `sub`'s: from there
    /// it catches `sub` up itself (`lagged`: because it fell behind).
    fn queue_detached(&self, state: &mut ConnState, sub: u64, prev: &Option<Fence>, lagged: bool) {
        let after = prev.clone();
        self.queue(state, Pending::Detached { sub, after, lagged });
    }

    /// Queues the frames a subscription is attached with (its catch-up from the
    /// ring), ahead of anything the channel writes for it.
    fn queue_bytes(&self, sub: u64, bytes: Bytes) {
        let mut state = self.lock();
        if !state.closed {
            let item = Pending::Bytes { sub, bytes, cut: false };
            self.queue(&mut state, item);
        }
    }
}

/// A subscription on the direct path: in its channel's list, and held by its
/// connection's writer (as an [`Attachment`]).
pub struct DirectSub {
    pub sub: u64,
    pub conn: Arc<Conn>,
    /// Set while the channel may write for it; cleared under the connection's lock
    /// when it closes or leaves the path.
    on: AtomicBool,
}

impl DirectSub {
    pub(crate) fn new(sub: u64, conn: Arc<Conn>) -> Arc<DirectSub> {
        Arc::new(DirectSub {
            sub,
            conn,
            on: AtomicBool::new(true),
        })
    }
}

/// The writer's hold on an attached subscription: dropping it ends the direct
/// delivery (and, as any [`LiveSubscription`], may make the channel inactive).
pub struct Attachment {
    pub(crate) direct: Arc<DirectSub>,
    pub(crate) live: Option<LiveSubscription>,
}

impl Attachment {
    /// Leaves the direct path, keeping the channel's live subscription (for a
    /// catch-up that attaches again).
    pub fn detach(mut self) -> Option<LiveSubscription> {
        self.leave();
        self.live.take()
    }

    fn leave(&mut self) {
        {
            let _state = self.direct.conn.lock();
            self.direct.on.store(false, Ordering::Relaxed);
        }
        if let Some(live) = &self.live {
            let mut channels = live.partition.lock();
            if let Some(active) = channels.get_mut(&live.channel) {
                if active.direct.iter().any(|d| Arc::ptr_eq(d, &self.direct)) {
                    Arc::make_mut(&mut active.direct).retain(|d| !Arc::ptr_eq(d, &self.direct));
                }
            }
        }
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if self.live.is_some() {
            self.leave();
        }
    }
}

/// One channel's new ticks for its direct subscribers, framed once (outside the
/// partition's lock, by [`Delivery::run`]).
pub(crate) struct Delivery {
    pub subs: Arc<Vec<Arc<DirectSub>>>,
    pub frames: Vec<LiveFrame>,
    /// The channel's last tick before this batch: what every subscriber in `subs`
    /// was last given.
    pub prev: Option<Fence>,
}

impl Delivery {
    /// Writes the batch to each subscriber (outside the partition's lock); returns
    /// the tick frames delivered.
    pub fn run(&self) -> u64 {
        let batch = frame_batch(&self.frames);
        let ticks = self.frames.len() as u64;
        let mut delivered = 0;
        for sub in self.subs.iter() {
            if sub.conn.deliver(sub, &batch, &self.prev) {
                delivered += ticks;
            }
        }
        delivered
    }

    /// Append time (ms) of the batch's oldest tick.
    pub fn oldest_ms(&self) -> u64 {
        self.frames.first().map_or(0, |f| f.id.ms)
    }
}

/// Whether `frames` follow `prev` without a discontinuity: the same epoch and each
/// `seq` one more. Only such a batch goes out directly; any other detaches the
/// channel's direct subscribers, whose cursors then announce what happened.
pub(crate) fn follows(prev: &Option<Fence>, frames: &[LiveFrame]) -> bool {
    let Some(prev) = prev else {
        return false;
    };
    let (mut epoch, mut seq) = (&prev.epoch, prev.seq);
    for f in frames {
        if !(Arc::ptr_eq(epoch, &f.epoch) || **epoch == *f.epoch) || f.seq != seq.wrapping_add(1) {
            return false;
        }
        (epoch, seq) = (&f.epoch, f.seq);
    }
    true
}

/// Frames `frames` as WebSocket text frames, once for every subscriber.
pub(crate) fn frame_batch(frames: &[LiveFrame]) -> Bytes {
    let mut out = Vec::with_capacity(frames.iter().map(|f| f.text.len() + 10).sum());
    for f in frames {
        framing::encode_text(&mut out, &f.text);
    }
    Bytes::from(out)
}

/// Takes every direct subscriber of a channel off the path after `prev` (a batch
/// that does not follow, or a rollback).
pub(crate) fn detach_all(subs: &mut Arc<Vec<Arc<DirectSub>>>, prev: &Option<Fence>) {
    for sub in subs.iter() {
        sub.conn.detach(sub, prev);
    }
    *subs = Arc::default();
}

/// Registers `direct` in its channel's list, after queueing what `catch_up` makes of
/// the ring's ticks after `after` (the subscription's frames up to the channel's
/// last tick, given beside them). Fails, giving `live` back, when the ring does not
/// hold every tick after `after`, or `catch_up` refuses: too many to queue, or the
/// subscription would not then stand exactly at the channel's last tick (a catch-up
/// that read the stream ahead of the reader; another epoch): the channel writes
/// every later batch as it is, so only a subscription in step may join.
pub(crate) fn attach(
    mut live: LiveSubscription,
    direct: Arc<DirectSub>,
    after: crate::tick::StreamId,
    catch_up: impl FnOnce(&mut dyn Iterator<Item = &LiveFrame>, Option<&LiveFrame>) -> Result<Option<Bytes>, ()>,
) -> Result<Attachment, LiveSubscription> {
    let joined = {
        let mut channels = live.partition.lock();
        channels.get_mut(&live.channel).is_some_and(|active| {
            let Some(mut ticks) = active.ticks_after(after) else {
                return false;
            };
            let Ok(bytes) = catch_up(&mut ticks, active.recent.back()) else {
                return false;
            };
            if let Some(bytes) = bytes {
                direct.conn.queue_bytes(direct.sub, bytes);
            }
            Arc::make_mut(&mut active.direct).push(direct.clone());
            true
        })
    };
    if !joined {
        return Err(live);
    }
    // The channel writes for it now; a receiver of the live buffer would only pin
    // frames nobody reads.
    live.rx = None;
    Ok(Attachment {
        direct,
        live: Some(live),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes `room` bytes, then blocks.
    struct Tight {
        room: Mutex<usize>,
        written: Mutex<Vec<u8>>,
    }

    impl RawSocket for Tight {
        fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
            let mut room = self.room.lock().unwrap();
            if *room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = bytes.len().min(*room);
            *room -= n;
            self.written.lock().unwrap().extend_from_slice(&bytes[..n]);
            Ok(n)
        }
    }

    fn conn(room: usize) -> (Arc<Conn>, Arc<Tight>) {
        let socket = Arc::new(Tight {
            room: Mutex::new(room),
            written: Mutex::new(Vec::new()),
        });
        (Conn::new(socket.clone()), socket)
    }

    #[test]
    fn an_idle_connection_is_written_at_once_and_a_full_one_queues_the_rest_in_order() {
        let (conn, socket) = conn(5);
        let sub = DirectSub::new(1, conn.clone());
        assert!(conn.deliver(&sub, &Bytes::from_static(b"abc"), &None));
        assert!(conn.next_pending(true).is_none());
        // Two of "defg" fit: the rest waits, and so does what follows it.
        conn.deliver(&sub, &Bytes::from_static(b"defg"), &None);
        conn.deliver(&sub, &Bytes::from_static(b"hi"), &None);
        assert_eq!(&*socket.written.lock().unwrap(), b"abcde");
        let mut rest = Vec::new();
        while let Some(Pending::Bytes { bytes, .. }) = conn.next_pending(true) {
            rest.extend_from_slice(&bytes);
        }
        assert_eq!(rest, b"fghi");
    }

    #[test]
    fn a_held_connection_queues_and_a_long_queue_detaches() {
        let (conn, socket) = conn(usize::MAX);
        let sub = DirectSub::new(7, conn.clone());
        assert!(conn.hold().is_none());
        let big = Bytes::from(vec![b'x'; PENDING_LIMIT / 2 + 1]);
        assert!(conn.deliver(&sub, &big, &None));
        assert!(!conn.deliver(&sub, &big, &None));
        assert!(socket.written.lock().unwrap().is_empty());
        assert!(matches!(conn.next_pending(true), Some(Pending::Bytes { sub: 7, .. })));
        assert!(matches!(
            conn.next_pending(true),
            Some(Pending::Detached {
                sub: 7,
                after: None,
                lagged: true
            })
        ));
        // Detached: nothing more for it, and the hold ends with the queue.
        assert!(!conn.deliver(&sub, &big, &None));
        assert!(conn.next_pending(true).is_none());
    }

    #[test]
    fn only_a_batch_that_follows_goes_direct() {
        let frame = |seq: u64, epoch: &str| {
            let fields = crate::tick::wire::fields(0, None, None, "e");
            LiveFrame::new(&crate::tick::Tick {
                id: crate::tick::StreamId::new(seq, 0),
                seq,
                epoch: epoch.into(),
                channel: "c".into(),
                body: crate::tick::wire::body(seq, epoch, &fields),
            })
        };
        let prev = Some(Fence {
            epoch: "e1".into(),
            id: crate::tick::StreamId::new(4, 0),
            seq: 4,
        });
        assert!(follows(&prev, &[frame(5, "e1"), frame(6, "e1")]));
        assert!(!follows(&prev, &[frame(5, "e1"), frame(7, "e1")]));
        assert!(!follows(&prev, &[frame(1, "e2")]));
        assert!(!follows(&None, &[frame(1, "e1")]));
        let batch = frame_batch(&[frame(5, "e1")]);
        assert_eq!(batch[0], 0x81);
    }
}

//! The writer of a connection: takes frames from the session's queue and, for
//! subscriptions in their live phase, straight from their channel's live buffer, and
//! writes what is ready in one batch through its [`Transport`] (a WebSocket or an SSE
//! stream).
//!
//! On a WebSocket, a subscription in its live phase is handed to its channel
//! (`hub/direct.rs`): the channel writes its ticks straight to the socket while the
//! connection has nothing of its own queued, and this task is woken only for frames
//! of the connection's own, for bytes the socket could not take at once, and for a
//! subscription that left the direct path (it catches up, then is attached again).
//! While it has frames in hand it holds the connection, so the channel's bytes queue
//! behind them in order (docs/ARCHITECTURE.md "Delivery from the channel").
//!
//! Elsewhere (SSE, or a subscription the ring cannot attach) a live tick costs one
//! wake-up of this task and no queue hop. A client that does not read blocks only
//! this task: its live feeds stop being drained, fall behind the live buffer, and
//! later catch up from the node's ring or the stream (in a task of their own, so the
//! writer never waits on Redis). A batch that cannot be written for [`WRITE_STALL`]
//! ends the connection (1013).

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::body::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio_util::sync::ReusableBoxFuture;

use super::budget::{Budget, Grant, BATCH_BYTES};
use super::cursor::{Admit, Cursor};
use super::protocol::{close, Closing, Frame, WRITE_STALL};
use super::replay::resume_live;
use super::sampling::Conflating;
use super::{Handover, Outbound, SessionContext, SubFrames};
use crate::engine::Fence;
use crate::framing;
use crate::hub::{Attachment, Conn, Interrupted, LiveFrame, Pending};

/// Frames written per flush, at most…
const BATCH: usize = 64;
// …and bytes of them (`budget::BATCH_BYTES`): a batch of large ticks that cannot be
// written is what a slow socket holds beside its budget of replayed ticks.

/// Where frames go: a WebSocket, or the body of an SSE response.
pub trait Transport: Send + 'static {
    /// Writes `frames` (leaving it empty) and flushes; `Err` when the connection is
    /// gone.
    fn write(&mut self, frames: &mut Vec<Frame>) -> impl Future<Output = Result<(), ()>> + Send;

    /// Tells the client why the connection ends (a WebSocket close frame, an SSE
    /// `error` event) and flushes.
    fn close(&mut self, closing: Closing) -> impl Future<Output = ()> + Send;

    /// Writes bytes the channel framed for this transport (only one that offers a
    /// direct path, `Writer::new`'s `conn`, is given any) and flushes.
    fn write_framed(&mut self, bytes: &[u8]) -> impl Future<Output = Result<(), ()>> + Send;
}

/// A subscription the channel writes to directly, and where it stood when attached.
struct Attached {
    /// Its cursor at attachment (and its subscription's number); a detachment says
    /// where it is now.
    cursor: Cursor,
    hold: Attachment,
}

/// Ring ticks a subscription may still be owed when it is attached (framed and
/// queued at once); more, and it takes its channel's live buffer first (and joins
/// once it has drained it).
const ATTACH_BYTES: usize = BATCH_BYTES;

type LiveNext = ReusableBoxFuture<'static, (Box<Handover>, Result<LiveFrame, Interrupted>)>;

/// A live subscription held by the writer, waiting for its channel's next tick.
struct LiveSlot {
    sub: u64,
    next: LiveNext,
}

async fn next_live(mut handover: Box<Handover>) -> (Box<Handover>, Result<LiveFrame, Interrupted>) {
    let r = handover.live.recv().await;
    (handover, r)
}

pub(crate) struct Writer<T> {
    transport: T,
    queue: mpsc::Receiver<Outbound>,
    /// For catch-up tasks; weak, so the queue still closes when the session ends.
    requeue: mpsc::WeakSender<Outbound>,
    ctx: Arc<SessionContext>,
    /// Subscriptions whose frames may be written.
    open: Vec<u64>,
    live: Vec<LiveSlot>,
    /// The connection as the channels see it, where they may write directly
    /// (WebSocket only).
    conn: Option<Arc<Conn>>,
    /// Subscriptions on the direct path.
    attached: Vec<Attached>,
    /// Conflated subscriptions: the hub samples them; dropping one ends it.
    conflated: Vec<Conflating>,
    /// Catch-ups after a live feed lagged, by subscription: aborted when their
    /// subscription closes, and with the writer.
    catch_ups: Vec<(u64, AbortHandle)>,
    batch: Vec<Frame>,
    /// Payload bytes in `batch`.
    batch_bytes: usize,
    /// The budget the batch's replayed ticks hold, given back once it is written.
    held: Grant,
    /// The socket's budget, for the catch-ups this writer starts.
    budget: Arc<Budget>,
    /// Which live slot is polled first, rotating, so one busy channel cannot starve
    /// the others of a connection.
    turn: usize,
}

impl<T> Drop for Writer<T> {
    fn drop(&mut self) {
        for (_, task) in &self.catch_ups {
            task.abort();
        }
        if let Some(conn) = &self.conn {
            conn.close();
        }
    }
}

enum Wake {
    /// The session ended, with why, if the client should be told.
    Close(Option<Closing>),
    Queue(Outbound),
    Live(usize, Box<Handover>, Result<LiveFrame, Interrupted>),
    /// The channels queued bytes (or a detachment) for this connection.
    Pending,
}

impl<T: Transport> Writer<T> {
    pub(crate) fn new(
        transport: T,
        queue: mpsc::Receiver<Outbound>,
        requeue: mpsc::WeakSender<Outbound>,
        ctx: Arc<SessionContext>,
        budget: Arc<Budget>,
        conn: Option<Arc<Conn>>,
    ) -> Writer<T> {
        Writer {
            transport,
            queue,
            requeue,
            ctx,
            open: Vec::new(),
            live: Vec::new(),
            conn,
            attached: Vec::new(),
            conflated: Vec::new(),
            catch_ups: Vec::new(),
            batch: Vec::new(),
            batch_bytes: 0,
            held: Grant::none(&budget),
            budget,
            turn: 0,
        }
    }

    /// Whether the batch is as large as one write may be.
    fn batch_full(&self) -> bool {
        self.batch.len() >= BATCH || self.batch_bytes >= BATCH_BYTES
    }

    fn push(&mut self, frame: Frame) {
        self.batch_bytes += frame.payload_len();
        self.batch.push(frame);
    }

    pub(crate) async fn run(mut self, mut close_rx: oneshot::Receiver<Closing>) {
        loop {
            let (queue, live, turn) = (&mut self.queue, &mut self.live, &mut self.turn);
            let conn = self.conn.as_deref();
            let pending = async move {
                match conn {
                    Some(conn) => conn.wake.notified().await,
                    None => std::future::pending().await,
                }
            };
            let wake = tokio::select! {
                biased;
                close = &mut close_rx => Wake::Close(close.ok()),
                next = queue.recv() => match next {
                    Some(out) => Wake::Queue(out),
                    None => return,
                },
                () = pending => Wake::Pending,
                (i, handover, first) = std::future::poll_fn(|cx| poll_live(live, turn, cx)) => Wake::Live(i, handover, first),
            };
            // From here until the pending list is empty, the channels' bytes for
            // this connection queue behind what this task writes. What they queued
            // before goes first: it may be the rest of a frame a direct write cut.
            let first = self.conn.as_ref().and_then(|conn| conn.hold());
            if let Some(first) = first {
                if !self.write_pending_from_first(first, false).await {
                    return;
                }
            }
            let mut delivered = 0;
            match wake {
                Wake::Close(closing) => {
                    if let Some(closing) = closing {
                        Box::pin(self.finish(closing)).await;
                    }
                    return;
                }
                Wake::Queue(out) => delivered += self.take(out),
                Wake::Live(i, handover, first) => delivered += self.drain_live(i, handover, first),
                Wake::Pending => {}
            }
            while !self.batch_full() {
                match self.queue.try_recv() {
                    Ok(out) => delivered += self.take(out),
                    Err(_) => break,
                }
            }
            self.ctx.metrics.ticks_delivered.inc_by(delivered);
            if !self.write_batch().await || !self.write_pending(true).await {
                return;
            }
        }
    }

    /// Writes what the channels queued for this connection, in order, until nothing
    /// is left (which, with `release`, releases the connection to them; without, the
    /// writer keeps holding it for a batch of its own); false when it is done.
    async fn write_pending(&mut self, release: bool) -> bool {
        match self.conn.as_ref().and_then(|conn| conn.next_pending(release)) {
            None => true,
            Some(first) => self.write_pending_from_first(first, release).await,
        }
    }

    // Nothing pending is the common case, and costs no future: the one that writes
    // is boxed, so it does not size every connection's task for its life.
    async fn write_pending_from_first(&mut self, first: Pending, release: bool) -> bool {
        let Some(conn) = self.conn.clone() else {
            return true;
        };
        Box::pin(self.write_pending_from(&conn, first, release)).await
    }

    async fn write_pending_from(&mut self, conn: &Conn, first: Pending, release: bool) -> bool {
        // A pass writes at most a batch's worth, then goes back to the queue (a
        // pong, an unsubscribe, the close), still holding the connection: channels
        // that produce as fast as the socket drains never starve this task.
        let mut written = 0;
        let mut next = Some(first);
        while let Some(item) = next {
            match item {
                Pending::Bytes { sub, bytes, cut } if cut || self.is_open(sub) => {
                    written += bytes.len();
                    let write = self.transport.write_framed(&bytes);
                    match stall_guard(write).await {
                        Ok(Ok(())) => {}
                        Ok(Err(())) => return false,
                        Err(()) => return self.stalled().await,
                    }
                }
                // Whole frames of a subscription that has ended: dropped.
                Pending::Bytes { .. } => {}
                Pending::Detached { sub, after, lagged } => self.detached(sub, after, lagged),
            }
            if written >= BATCH_BYTES {
                // The rest waits for the next pass, which this wakes.
                conn.wake.notify_one();
                return true;
            }
            next = conn.next_pending(release);
        }
        true
    }

    /// Subscription `sub` left the direct path after `after`: it catches up from
    /// there through its own queue, and is attached again when done.
    fn detached(&mut self, sub: u64, after: Option<Fence>, lagged: bool) {
        let Some(i) = self.attached.iter().position(|a| a.cursor.sub == sub) else {
            return;
        };
        let Attached { mut cursor, hold } = self.attached.swap_remove(i);
        if let Some(after) = after {
            cursor.move_to(after.id, after.seq, after.epoch);
        }
        if let Some(live) = hold.detach() {
            if lagged {
                self.ctx.metrics.slow_consumer_catchups.inc();
            }
            self.spawn_catch_up(Box::new(Handover { cursor, live }));
        }
    }

    /// Hands a subscription in its live phase to its channel's direct path, with
    /// the ring's ticks it is still owed queued first. One that cannot join yet
    /// takes its channel's live buffer (through its cursor's delivery rule, which
    /// catches up or drops what it already has) and tries again once it has drained
    /// it; `Err` gives it back for that.
    fn attach(&mut self, conn: &Arc<Conn>, handover: Handover) -> Result<(), Box<Handover>> {
        let Handover { cursor, live } = handover;
        let mut owed = cursor.clone();
        let after = cursor.last_sent;
        let attached = self.ctx.hub.attach(live, conn, cursor.sub, after, |frames, last| {
            frame_owed(&mut owed, frames, last)
        });
        match attached {
            Ok(hold) => {
                self.attached.push(Attached { cursor: owed, hold });
                Ok(())
            }
            Err(live) => Err(Box::new(Handover { cursor, live })),
        }
    }

    fn is_open(&self, sub: u64) -> bool {
        self.open.contains(&sub)
    }

    /// Applies one queued item; returns the tick frames it added to the batch.
    fn take(&mut self, out: Outbound) -> u64 {
        match out {
            Outbound::Session(frame) => self.push(*frame),
            Outbound::Sub(sub) if self.is_open(sub.sub) => {
                let SubFrames {
                    frames, ticks, held, ..
                } = *sub;
                for frame in frames {
                    self.push(frame);
                }
                if let Some(held) = held {
                    self.held.absorb(held);
                }
                return ticks;
            }
            Outbound::Sub(_) => {}
            Outbound::Open(sub) => self.open.push(sub),
            Outbound::Close(sub) => {
                self.open.retain(|s| *s != sub);
                self.live.retain(|slot| slot.sub != sub);
                self.attached.retain(|a| a.cursor.sub != sub);
                self.conflated.retain(|c| c.sub != sub);
                self.catch_ups.retain(|(s, task)| {
                    if *s == sub {
                        task.abort();
                    }
                    *s != sub && !task.is_finished()
                });
            }
            // One that closed before it got here is dropped, which ends it.
            Outbound::Conflated(conflating) if self.is_open(conflating.sub) => self.conflated.push(*conflating),
            Outbound::Conflated(_) => {}
            Outbound::Live(handover) => {
                if !self.is_open(handover.cursor.sub) {
                    return 0;
                }
                let handover = match self.conn.clone() {
                    Some(conn) => match self.attach(&conn, *handover) {
                        Ok(()) => return 0,
                        Err(handover) => handover,
                    },
                    None => handover,
                };
                self.live.push(LiveSlot {
                    sub: handover.cursor.sub,
                    next: ReusableBoxFuture::new(next_live(handover)),
                });
            }
        }
        0
    }

    /// Writes a live subscription's ready ticks into the batch, then re-arms it; a
    /// lagged one goes to a catch-up task. Returns the tick frames added.
    fn drain_live(&mut self, i: usize, mut handover: Box<Handover>, first: Result<LiveFrame, Interrupted>) -> u64 {
        let mut added = 0;
        // One latency sample per drain, of its oldest tick (not one per tick: at a
        // million deliveries a second the samples alone cost a few percent of a core).
        let mut oldest = u64::MAX;
        let mut next = first;
        let added = loop {
            match next {
                Ok(frame) => added += self.admit_live(&mut handover.cursor, frame, &mut oldest),
                Err(Interrupted::Opened) => {
                    // The channel's first live ticks went to its ring before this
                    // subscription had a receiver: what fits this batch is taken
                    // here, more (a new channel read from its start) goes through a
                    // catch-up, within the socket's budget.
                    let cursor = &handover.cursor;
                    let room = BATCH_BYTES.saturating_sub(self.batch_bytes);
                    let cost = |f: &LiveFrame| f.text.len();
                    match self
                        .ctx
                        .hub
                        .recent_chunk_after(&cursor.channel, cursor.last_sent, room, cost)
                    {
                        Some((frames, false)) => {
                            for frame in frames {
                                added += self.admit_live(&mut handover.cursor, frame, &mut oldest);
                            }
                        }
                        Some((_, true)) | None => {
                            self.catch_up(i, handover);
                            break added;
                        }
                    }
                }
                Err(Interrupted::Lagged) => {
                    self.ctx.metrics.slow_consumer_catchups.inc();
                    self.catch_up(i, handover);
                    break added;
                }
                Err(Interrupted::Closed) => {
                    self.live.swap_remove(i);
                    break added;
                }
            }
            if self.batch_full() {
                self.live[i].next.set(next_live(handover));
                break added;
            }
            next = match handover.live.try_recv() {
                Ok(Some(frame)) => Ok(frame),
                Ok(None) => {
                    // Drained: in step with its channel, perhaps, and then it joins
                    // the direct path.
                    if let Some(conn) = self.conn.clone() {
                        match self.attach(&conn, *handover) {
                            Ok(()) => {
                                self.live.swap_remove(i);
                                break added;
                            }
                            Err(back) => handover = back,
                        }
                    }
                    self.live[i].next.set(next_live(handover));
                    break added;
                }
                Err(e) => Err(e),
            };
        };
        if oldest != u64::MAX {
            let now_ms = crate::clock::now_ms();
            self.ctx
                .metrics
                .delivery_latency
                .observe(now_ms.saturating_sub(oldest) as f64 / 1000.0);
        }
        added
    }

    /// One live frame through the subscription's cursor into the batch; returns 1 if
    /// it was a tick to send (and lowers `oldest` to its append time).
    fn admit_live(&mut self, cursor: &mut Cursor, frame: LiveFrame, oldest: &mut u64) -> u64 {
        match cursor.admit(frame.id, frame.seq, &frame.epoch) {
            Admit::Skip => return 0,
            Admit::Send => {}
            Admit::SendAfter(gap) => self.push(gap),
        }
        *oldest = (*oldest).min(frame.id.ms);
        self.push(Frame::Tick(frame));
        1
    }

    /// Moves live slot `i` to a catch-up task (ring or stream), which hands it back.
    fn catch_up(&mut self, i: usize, handover: Box<Handover>) {
        self.live.swap_remove(i);
        self.spawn_catch_up(handover);
    }

    /// Catches a subscription up (ring or stream) in a task of its own, which hands
    /// it back.
    fn spawn_catch_up(&mut self, handover: Box<Handover>) {
        self.catch_ups.retain(|(_, task)| !task.is_finished());
        if let Some(out) = self.requeue.upgrade() {
            let sub = handover.cursor.sub;
            let task = tokio::spawn(Box::pin(resume_live(
                self.ctx.clone(),
                handover,
                out,
                self.budget.clone(),
            )));
            self.catch_ups.push((sub, task.abort_handle()));
        }
    }

    /// Writes and flushes the batch; false when the connection is done.
    async fn write_batch(&mut self) -> bool {
        if self.batch.is_empty() {
            return true;
        }
        // Boxed: a write future (with the socket's readiness in it) inline would size
        // every connection's task for its whole life, for what is a short moment on
        // a connection that mostly idles (its live ticks come from the channel).
        let write = Box::pin(self.transport.write(&mut self.batch));
        let outcome = stall_guard(write).await;
        self.batch.clear();
        self.batch_bytes = 0;
        // Written (or given up on): the replayed ticks' budget goes back.
        self.held.release();
        match outcome {
            Ok(Ok(())) => true,
            Ok(Err(())) => false,
            // Boxed: rare, and inline it would size every connection's task.
            Err(()) => Box::pin(self.stalled()).await,
        }
    }

    /// A write stalled: 1013, if the close frame can still be written. Always false.
    async fn stalled(&mut self) -> bool {
        let closing = (close::TRY_LATER, "too slow");
        self.count_close(closing);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.transport.close(closing)).await;
        false
    }

    fn count_close(&self, (code, _): Closing) {
        let label = match code {
            close::NORMAL => "1000",
            close::PROTOCOL_ERROR => "1002",
            close::INVALID_DATA => "1007",
            close::POLICY => "1008",
            close::INTERNAL => "1011",
            close::RESTART => "1012",
            close::TRY_LATER => "1013",
            close::TOKEN_EXPIRED => "4001",
            close::FORBIDDEN => "4003",
            close::RATE_LIMITED => "4029",
            _ => "other",
        };
        self.ctx.metrics.close_codes.with_label_values(&[label]).inc();
    }

    /// Frames already queued go first (a pong, an error frame), then the close; all
    /// within a second, so a stuck connection cannot hold up the end of the session.
    async fn finish(&mut self, closing: Closing) {
        self.count_close(closing);
        let first = self.conn.as_ref().and_then(|conn| conn.hold());
        while let Ok(out) = self.queue.try_recv() {
            self.take(out);
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            // The channels' bytes first: one may be the rest of a frame a direct
            // write cut; then this task's own, then what the channels queued since.
            let held = match first {
                Some(first) => self.write_pending_from_first(first, false).await,
                None => true,
            };
            if held
                && self.write_pending(false).await
                && self.transport.write(&mut self.batch).await.is_ok()
                && self.write_pending(false).await
            {
                self.transport.close(closing).await;
            }
        })
        .await;
    }
}

/// Awaits a write, failing with `Err` when it stalls for [`WRITE_STALL`]. Most writes
/// complete at once; the stall timer is only armed for a connection that actually
/// blocks, so a healthy fan-out touches no timer.
async fn stall_guard(write: impl Future<Output = Result<(), ()>>) -> Result<Result<(), ()>, ()> {
    let mut write = std::pin::pin!(write);
    match std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
        Poll::Ready(r) => Ok(r),
        Poll::Pending => {
            // Boxed: the timer only exists for a blocked write, and inline it would
            // size every connection's writer for its whole life.
            let stall = Box::pin(tokio::time::sleep(WRITE_STALL));
            tokio::select! {
                r = write => Ok(r),
                _ = stall => Err(()),
            }
        }
    }
}

/// The frames a subscription attached at `cursor` is still owed from the ring,
/// framed for the socket: through the delivery rule, so a gap is announced as
/// anywhere else; `cursor` moves with them. `Err` (where `cursor` then stands is
/// meaningless: the caller drops it and keeps its own) when they are more than
/// [`ATTACH_BYTES`], or when the cursor would not then stand at `last`, the
/// channel's last tick (the channel's later batches follow on from `last` only).
fn frame_owed(
    cursor: &mut Cursor,
    frames: &mut dyn Iterator<Item = &LiveFrame>,
    last: Option<&LiveFrame>,
) -> Result<Option<Bytes>, ()> {
    // The ring's ticks after the cursor are found by id, which only means "after"
    // within one epoch: a cursor of another epoch than the ring's takes the live
    // buffer instead, through its delivery rule.
    let same_epoch = |a: &Option<Arc<str>>, b: &LiveFrame| a.as_deref().is_some_and(|e| *e == *b.epoch);
    if last.is_some_and(|last| cursor.epoch.is_some() && !same_epoch(&cursor.epoch, last)) {
        return Err(());
    }
    let mut out = Vec::new();
    for frame in frames {
        match cursor.admit(frame.id, frame.seq, &frame.epoch) {
            Admit::Skip => continue,
            Admit::Send => {}
            Admit::SendAfter(Frame::Text { text, .. }) => framing::encode_text(&mut out, &text),
            // A gap is always a text frame; anything else is not sent half-way.
            Admit::SendAfter(_) => return Err(()),
        }
        framing::encode_text(&mut out, &frame.text);
        if out.len() > ATTACH_BYTES {
            return Err(());
        }
    }
    let in_step = last.is_none_or(|last| cursor.last_sent == last.id && same_epoch(&cursor.epoch, last));
    if !in_step {
        return Err(());
    }
    Ok((!out.is_empty()).then(|| Bytes::from(out)))
}

/// The first live subscription with a tick (or an interruption) ready, starting at
/// `turn`.
fn poll_live(
    live: &mut [LiveSlot],
    turn: &mut usize,
    cx: &mut std::task::Context<'_>,
) -> Poll<(usize, Box<Handover>, Result<LiveFrame, Interrupted>)> {
    let n = live.len();
    for k in 0..n {
        let i = (*turn + k) % n;
        if let Poll::Ready((handover, r)) = live[i].next.poll(cx) {
            *turn = i + 1;
            return Poll::Ready((i, handover, r));
        }
    }
    Poll::Pending
}

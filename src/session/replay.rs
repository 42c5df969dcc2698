//! A subscription's start and its catch-ups: the history the client missed, from the
//! node's ring of recent ticks when it holds all of it, else from the stream, through
//! the connection's bounded queue and within the socket's budget of tick bytes
//! (`budget.rs`); then the `live` frame and the hand-over of the live feed to the
//! writer.
//!
//! The live feed is registered first, so "history up to now" ∪ "live after the tail
//! cursor" covers every id; the overlap is dropped by [`Cursor::admit`].

use std::sync::Arc;

use tokio::sync::mpsc;

use super::budget::{frame_cost, Budget, Grant, FEED_BYTES, MAX_FRAME_BYTES, PAGE_BYTES, REPLAY_BYTES};
use super::cursor::{Admit, Cursor};
use super::protocol::{self, Frame, Kind, SubscribeRequest, REPLAY_PAGE};
use super::{sampling, Handover, Outbound, SessionContext, SubFrames};
use crate::engine::IdRange;
use crate::hub::{CandleSubscription, LiveFrame};
use crate::retry::until_ok;
use crate::tick::epoch::is_rollback_of;
use crate::tick::{Since, StreamId};

/// Frames a start-up or catch-up puts in one queue slot (one wake-up of the writer per
/// batch rather than per frame). The queue has `send_queue / FEED_BATCH` slots, so it
/// still holds about `send_queue` frames.
pub const FEED_BATCH: usize = 32;

/// The subscription ended because its session is gone.
pub(crate) struct Gone;

/// A subscription's start-up or catch-up side: its cursor, the queue to the writer,
/// and its share of the socket's budget (`budget.rs`).
pub(super) struct Feed {
    pub(super) cursor: Cursor,
    out: mpsc::Sender<Outbound>,
    budget: Arc<Budget>,
    /// Frames not yet queued.
    pending: Vec<Frame>,
    pending_ticks: u64,
    /// The budget the pending tick frames hold; it travels with them.
    pending_held: Grant,
    /// Granted for the page in hand and not yet spent on a frame.
    spare: Grant,
    /// What a tick frame of this channel costs at most, as last seen: sizes the next
    /// page read so that it fits the grant (the first read assumes the largest
    /// possible frame; a page that turns out larger is cut and read again).
    frame_estimate: usize,
    /// The largest frame paid for since the last grant: the next estimate.
    largest: usize,
}

impl Feed {
    fn new(cursor: Cursor, out: mpsc::Sender<Outbound>, budget: Arc<Budget>) -> Feed {
        Feed {
            cursor,
            out,
            pending: Vec::with_capacity(FEED_BATCH),
            pending_ticks: 0,
            pending_held: Grant::none(&budget),
            spare: Grant::none(&budget),
            frame_estimate: MAX_FRAME_BYTES,
            largest: 0,
            budget,
        }
    }

    /// The cursor, and the queue to the writer.
    pub(super) fn into_parts(self) -> (Cursor, mpsc::Sender<Outbound>) {
        (self.cursor, self.out)
    }

    /// Ends the replay: counts it, and queues the `live` frame, whose `last_id` is
    /// the last tick sent, else `fallback` (docs/PROTOCOL.md §5.3).
    pub(super) async fn send_live(&mut self, ctx: &SessionContext, fallback: StreamId) -> Result<(), Gone> {
        ctx.metrics.replay_size.observe(self.cursor.sent as f64);
        let last_id = if self.cursor.sent > 0 {
            self.cursor.last_sent
        } else {
            fallback
        };
        let live = protocol::live(&self.cursor.channel, last_id);
        self.send(live).await?;
        self.flush().await
    }

    pub(super) async fn send(&mut self, frame: Frame) -> Result<(), Gone> {
        self.pending_ticks += u64::from(frame.is_tick());
        self.pending.push(frame);
        if self.pending.len() >= FEED_BATCH || self.pending_held.bytes() >= FEED_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Queues what is pending. Called before anything that may wait (a store read,
    /// the budget, the hand-over), so frames are never held back while the feed
    /// waits.
    pub(super) async fn flush(&mut self) -> Result<(), Gone> {
        let held = self.pending_held.split(usize::MAX);
        if self.pending.is_empty() {
            // Paid for ticks the cursor skipped: nothing holds those bytes.
            return Ok(());
        }
        let out = Outbound::Sub(Box::new(SubFrames {
            sub: self.cursor.sub,
            frames: std::mem::replace(&mut self.pending, Vec::with_capacity(FEED_BATCH)),
            ticks: std::mem::take(&mut self.pending_ticks),
            held: Some(held),
        }));
        self.out.send(out).await.map_err(|_| Gone)
    }

    /// Gives back what is left of the grant, then waits for a new one (holding
    /// nothing meanwhile: pending frames are queued first).
    async fn regrant(&mut self) -> Result<(), Gone> {
        self.flush().await?;
        self.spare.release();
        if self.largest > 0 {
            // Sized by what the channel's ticks weigh now, up or down.
            self.frame_estimate = std::mem::take(&mut self.largest);
        }
        // At least the largest frame seen, so a page always makes progress; at most
        // what a page needs, so the socket's other subscriptions read meanwhile.
        let want = self.frame_estimate.saturating_mul(REPLAY_PAGE).min(PAGE_BYTES);
        self.spare = self.budget.grant(self.frame_estimate, want).await;
        Ok(())
    }

    /// Moves a frame's cost from the grant to the pending frames; `false` when the
    /// grant cannot pay it.
    fn pay(&mut self, text_len: usize) -> bool {
        let cost = frame_cost(text_len).min(REPLAY_BYTES);
        self.largest = self.largest.max(cost);
        if cost > self.spare.bytes() {
            // The next grant is sized for this frame.
            self.frame_estimate = self.frame_estimate.max(cost);
            return false;
        }
        self.spare.move_to(&mut self.pending_held, cost);
        true
    }

    async fn gap(&mut self, reason: &str, resume_from: Option<StreamId>, missed: Option<u64>) -> Result<(), Gone> {
        let frame = self.cursor.gap_frame(reason, resume_from, missed);
        self.send(frame).await
    }

    /// One tick through the cursor (already paid for).
    async fn emit(&mut self, frame: LiveFrame) -> Result<(), Gone> {
        match self.cursor.admit(frame.id, frame.seq, &frame.epoch) {
            Admit::Skip => Ok(()),
            Admit::Send => self.send(Frame::Tick(frame)).await,
            Admit::SendAfter(gap) => {
                self.send(gap).await?;
                self.send(Frame::Tick(frame)).await
            }
        }
    }

    /// Sends everything after `last_sent`: from the hub's ring when it holds all of
    /// it, else from the stream page by page until the ring takes over. Each chunk of
    /// the ring and each page of the stream is as large as the socket's budget
    /// grants, so a slow socket holds at most its budget however many of its
    /// subscriptions catch up at once.
    async fn catch_up(&mut self, ctx: &SessionContext) -> Result<(), Gone> {
        let result = self.catch_up_granted(ctx).await;
        self.spare.release();
        result
    }

    async fn catch_up_granted(&mut self, ctx: &SessionContext) -> Result<(), Gone> {
        // Where the next read starts: past every tick looked at, sent or skipped.
        let mut after = self.cursor.last_sent;
        loop {
            self.regrant().await?;
            let cost = |f: &LiveFrame| frame_cost(f.text.len());
            let chunk = ctx
                .hub
                .recent_chunk_after(&self.cursor.channel, after, self.spare.bytes(), cost);
            if let Some((frames, more)) = chunk {
                ctx.metrics.replayed_ticks.inc_by(frames.len() as u64);
                for frame in frames {
                    after = frame.id;
                    self.pay(frame.text.len());
                    self.emit(frame).await?;
                }
                if !more {
                    return self.flush().await;
                }
                continue;
            }
            let count = (self.spare.bytes() / self.frame_estimate).clamp(1, REPLAY_PAGE);
            let channel = self.cursor.channel.as_str();
            let range = IdRange::after(after);
            let page = until_ok(&ctx.metrics, || ctx.store.entries(channel, range, count, false)).await;
            let mut cut = false;
            let mut sent = 0;
            for tick in &page.ticks {
                let frame = LiveFrame::new(tick);
                if !self.pay(frame.text.len()) {
                    // The page was larger than its estimate: the rest is read again
                    // with the next grant, sized by what was just seen.
                    cut = true;
                    break;
                }
                after = tick.id;
                self.emit(frame).await?;
                sent += 1;
            }
            ctx.metrics.replayed_ticks.inc_by(sent);
            if !cut {
                // Past what could not be read too (it is skipped, as the tail does).
                if let Some((_, last)) = page.edges {
                    after = after.max(last);
                }
                if page.entries < count {
                    return self.flush().await;
                }
            }
        }
    }

    /// The cursor after which the stream's last `n` ticks follow, found by reading
    /// back page by page (each within the budget; the ticks themselves are read again
    /// forwards by `catch_up`).
    async fn start_of_last(&mut self, ctx: &SessionContext, n: usize) -> Result<StreamId, Gone> {
        let channel = self.cursor.channel.clone();
        let mut left = n;
        let mut to = StreamId::MAX;
        let mut start = StreamId::ZERO;
        while left > 0 {
            self.regrant().await?;
            let count = (self.spare.bytes() / self.frame_estimate).clamp(1, left.min(REPLAY_PAGE));
            let range = IdRange {
                from: StreamId::ZERO,
                to,
            };
            let page = until_ok(&ctx.metrics, || ctx.store.entries(&channel, range, count, true)).await;
            for tick in &page.ticks {
                self.largest = self.largest.max(frame_cost(tick.frame_len_estimate()));
            }
            self.spare.release();
            let Some((_, oldest)) = page.edges else {
                break;
            };
            start = oldest.prev();
            to = start;
            left = left.saturating_sub(page.ticks.len());
            if page.entries < count {
                // The whole stream is shorter: from its beginning.
                start = StreamId::ZERO;
                break;
            }
        }
        Ok(start)
    }
}

/// The stream's head as a subscription starts from it.
struct Head {
    epoch: Option<Arc<str>>,
    first: Option<StreamId>,
    last: Option<StreamId>,
    last_seq: Option<u64>,
    /// Entries were lost before `first` (trimmed).
    trimmed: bool,
    /// With `since` absent: where the last ticks start, when the ring holds them.
    start: Option<StreamId>,
}

/// The head from the hub's ring, when the ring can answer the whole request: no Redis
/// read at all, which is what keeps a reconnect storm after a restart cheap. `None`
/// for older cursors and a changed epoch, which the store answers.
fn ring_head(ctx: &SessionContext, req: &SubscribeRequest) -> Option<Head> {
    let head = ctx.hub.head(&req.channel)?;
    let start = match req.since {
        Since::Live => None,
        Since::Default => Some(ctx.hub.start_of_last(&req.channel, ctx.default_replay)?),
        Since::After(since) => {
            let same_epoch = match (&req.epoch, &head.epoch) {
                (None, _) => true,
                (Some(theirs), Some(ours)) => **theirs == **ours,
                (Some(_), None) => false,
            };
            if !same_epoch || !ctx.hub.ring_covers(&req.channel, since) {
                return None;
            }
            None
        }
    };
    Some(Head {
        epoch: head.epoch,
        first: head.first_id,
        last: head.last_id,
        last_seq: head.last_seq,
        // The ring holds everything the request needs: nothing it asks for is lost.
        trimmed: false,
        start,
    })
}

/// The head read from the store (`XINFO STREAM`).
async fn store_head(ctx: &SessionContext, channel: &str) -> Head {
    let info = until_ok(&ctx.metrics, || ctx.store.info(channel))
        .await
        .unwrap_or_default();
    Head {
        epoch: info.last.as_ref().map(|t| t.epoch.clone()),
        first: info.first.as_ref().map(|t| t.id),
        last: info.last.as_ref().map(|t| t.id),
        last_seq: info.last.as_ref().map(|t| t.seq),
        trimmed: info.has_trimmed(),
        start: None,
    }
}

/// Places the cursor where the client asked to start, announcing a `gap` when the
/// epoch changed or history after the cursor was trimmed, and replays the last ticks
/// for `since` absent; `catch_up` replays the rest. Returns the `live` frame's
/// `last_id` if no tick is sent at all.
async fn position(
    ctx: &SessionContext,
    req: &SubscribeRequest,
    head: Head,
    vanished: bool,
    feed: &mut Feed,
) -> Result<StreamId, Gone> {
    let current = head.last.unwrap_or(StreamId::ZERO);
    match req.since {
        Since::Live => {
            feed.cursor.last_sent = current;
            feed.cursor.epoch = head.epoch;
            feed.cursor.last_seq = head.last_seq;
            Ok(current)
        }
        Since::Default => {
            if ctx.default_replay == 0 {
                feed.cursor.last_sent = current;
                feed.cursor.last_seq = head.last_seq;
                return Ok(StreamId::ZERO);
            }
            // `catch_up` replays them, within the socket's budget.
            feed.cursor.last_sent = match head.start {
                Some(start) => start,
                None => feed.start_of_last(ctx, ctx.default_replay).await?,
            };
            Ok(StreamId::ZERO)
        }
        Since::After(since) => {
            feed.cursor.last_sent = since;
            feed.cursor.last_seq = req.seq;
            feed.cursor.seq_claimed = req.seq.is_some();
            let client_epoch: Option<Arc<str>> = req.epoch.as_deref().map(Arc::from);
            let trimmed_away = head.first.is_some_and(|first| since < first) && head.trimmed;
            match (&client_epoch, &head.epoch) {
                // The client's last tick is gone and was not trimmed away: the stream
                // it came from was lost, whatever the ids look like now.
                _ if vanished && !trimmed_away => {
                    feed.gap("epoch", head.first, None).await?;
                    feed.cursor.last_sent = StreamId::ZERO;
                    feed.cursor.last_seq = None;
                    feed.cursor.epoch = head.epoch;
                }
                // A failover rolled the client's epoch back: what survived of it is
                // still in the stream after `since`, then the new epoch, whose first
                // tick `Cursor::admit` announces with a `rollback` gap.
                (Some(theirs), Some(ours)) if is_rollback_of(ours, theirs) => {
                    feed.cursor.epoch = client_epoch;
                }
                (Some(theirs), ours) if ours.as_ref() != Some(theirs) => {
                    // The stream the client knew is gone: everything kept now is new.
                    feed.gap("epoch", head.first, None).await?;
                    feed.cursor.last_sent = StreamId::ZERO;
                    feed.cursor.last_seq = None;
                    feed.cursor.epoch = head.epoch;
                }
                _ => {
                    feed.cursor.epoch = head.epoch.or(client_epoch);
                    // With `seq`, `Cursor::admit` sees the jump and announces it
                    // exactly; without it the loss cannot be counted: say so. Under
                    // a `rate` the first frame's `skipped` covers it instead.
                    if trimmed_away && req.seq.is_none() && req.rate.is_none() {
                        feed.gap("trimmed", head.first, None).await?;
                    }
                }
            }
            Ok(since)
        }
    }
}

/// A subscription's start, in a task of its own (aborted when the subscription ends).
pub(crate) async fn run_subscription(
    ctx: Arc<SessionContext>,
    sub: u64,
    req: SubscribeRequest,
    out: mpsc::Sender<Outbound>,
    budget: Arc<Budget>,
) {
    let _ = start(&ctx, sub, req, out, budget).await;
}

async fn start(
    ctx: &SessionContext,
    sub: u64,
    mut req: SubscribeRequest,
    out: mpsc::Sender<Outbound>,
    budget: Arc<Budget>,
) -> Result<(), Gone> {
    // Live first: from here on, every new tick reaches `live` (or its ring), and
    // every change of the candle reaches `candles`.
    let live = until_ok(&ctx.metrics, || ctx.hub.subscribe(&req.channel)).await;
    let candles = req.candles.map(|interval| ctx.hub.candles(&req.channel, interval));
    let mut vanished = false;
    if let (true, Since::After(since)) = (req.from_event_id, req.since) {
        match tick_at(ctx, &req.channel, since).await {
            Some((seq, epoch)) => {
                req.seq = Some(seq);
                req.epoch = Some(epoch.to_string());
            }
            None => vanished = since != StreamId::ZERO,
        }
    }
    let mut feed = Feed::new(Cursor::new(sub, req.channel.clone()), out, budget);
    let head = match ring_head(ctx, &req) {
        Some(head) => head,
        None => store_head(ctx, &req.channel).await,
    };
    let subscribed = protocol::subscribed(&req.channel, head.epoch.as_deref(), head.first, head.last);
    feed.send(subscribed).await?;
    let fallback = position(ctx, &req, head, vanished, &mut feed).await?;
    let out = match req.rate {
        Some(rate) => sampling::go_live(ctx, &req, feed, live, rate, fallback).await?,
        None => {
            feed.catch_up(ctx).await?;
            feed.send_live(ctx, fallback).await?;
            let (cursor, out) = feed.into_parts();
            out.send(Outbound::Live(Box::new(Handover { cursor, live })))
                .await
                .map_err(|_| Gone)?;
            out
        }
    };
    if let Some(candles) = candles {
        forward_candles(sub, candles, out).await;
    }
    Ok(())
}

/// Candle frames, the current candle first, until the subscription ends (its task
/// is aborted) or the connection goes.
async fn forward_candles(sub: u64, mut candles: CandleSubscription, out: mpsc::Sender<Outbound>) {
    while let Some(text) = candles.next().await {
        let frames = SubFrames {
            sub,
            frames: vec![Frame::Text {
                kind: Kind::Candle,
                text,
            }],
            ticks: 0,
            held: None,
        };
        if out.send(Outbound::Sub(Box::new(frames))).await.is_err() {
            return;
        }
    }
}

/// The `seq` and epoch of the tick with id `id`, from the ring or the stream.
async fn tick_at(ctx: &SessionContext, channel: &str, id: StreamId) -> Option<(u64, Arc<str>)> {
    if let Some(frame) = ctx.hub.frame_at(channel, id) {
        return Some((frame.seq, frame.epoch.clone()));
    }
    let range = IdRange { from: id, to: id };
    let found = until_ok(&ctx.metrics, || ctx.store.range(channel, range, 1)).await;
    found.into_iter().next().map(|t| (t.seq, t.epoch))
}

/// A live feed that fell behind its channel's live buffer: catch up from the ring or
/// the stream through the queue, then hand the feed back to the writer.
pub(crate) async fn resume_live(
    ctx: Arc<SessionContext>,
    handover: Box<Handover>,
    out: mpsc::Sender<Outbound>,
    budget: Arc<Budget>,
) {
    let Handover { cursor, live } = *handover;
    let mut feed = Feed::new(cursor, out, budget);
    if Box::pin(feed.catch_up(&ctx)).await.is_ok() {
        let Feed { cursor, out, .. } = feed;
        let _ = out.send(Outbound::Live(Box::new(Handover { cursor, live }))).await;
    }
}

//! A conflated subscription, the session's side (docs/PROTOCOL.md §5.8
//! "Conflation"): its start (at most one tick, the newest after the cursor, then
//! `live`) and the [`Sampler`] through which the hub offers it its channel's newest
//! tick, at most `rate` times a second (`hub/conflation.rs` decides when). Its
//! frames go through the connection's queue like replayed ones, so they never pass
//! the subscription's `live` frame, and a full queue only delays the next sample.

use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::time::Instant;

use super::cursor::{Cursor, Sample};
use super::protocol::{FrameRate, SubscribeRequest};
use super::replay::{Feed, Gone};
use super::{Outbound, SessionContext, SubFrames};
use crate::engine::IdRange;
use crate::hub::{Conflated, LiveFrame, LiveSubscription, Offer, Sampler};
use crate::retry::until_ok;
use crate::tick::{Since, StreamId};

/// A conflated subscription's hold on its channel, kept by the writer while the
/// subscription is open (dropping it ends the sampling).
pub(crate) struct Conflating {
    pub sub: u64,
    /// Held for its `Drop`, which ends the sampling.
    pub _hold: Conflated,
}

/// What the hub offers ticks to: the subscription's cursor and its connection.
struct Sampling {
    cursor: Cursor,
    /// Weak: the hub holding it must not keep the connection's queue open after the
    /// session has gone (its writer ends when the queue closes).
    out: mpsc::WeakSender<Outbound>,
}

impl Sampler for Sampling {
    fn offer(&mut self, newest: &LiveFrame) -> Offer {
        let Some(out) = self.out.upgrade() else {
            return Offer::Gone;
        };
        // Room first: the cursor moves only for a frame that is queued.
        let permit = match out.try_reserve() {
            Ok(permit) => permit,
            Err(TrySendError::Full(())) => return Offer::Full,
            Err(TrySendError::Closed(())) => return Offer::Gone,
        };
        match self.cursor.sample(newest) {
            Some(sample) => {
                permit.send(Outbound::Sub(Box::new(frames_of(self.cursor.sub, sample))));
                Offer::Sent
            }
            None => Offer::Stale,
        }
    }
}

fn frames_of(sub: u64, Sample { gap, tick }: Sample) -> SubFrames {
    SubFrames {
        sub,
        frames: gap.into_iter().chain([tick]).collect(),
        ticks: 1,
        held: None,
    }
}

/// The rest of a conflated subscription's start, once its cursor is placed (and any
/// `epoch` gap sent): the newest tick after the cursor (its `skipped` counting the
/// rest, trimmed ones too), `live`, then the hand-over to the hub's conflation.
/// `fallback` is the `live` frame's `last_id` when no tick is sent.
pub(super) async fn go_live(
    ctx: &SessionContext,
    req: &SubscribeRequest,
    mut feed: Feed,
    live: LiveSubscription,
    rate: FrameRate,
    fallback: StreamId,
) -> Result<mpsc::Sender<Outbound>, Gone> {
    if feed.cursor.last_seq.is_none() {
        feed.cursor.last_seq = seq_before(ctx, req, &feed.cursor).await;
        // Derived, not seen: a later `seq` at or below it is no rollback.
        feed.cursor.seq_claimed = true;
    }
    let mut sent_at = None;
    if let Some(sample) = ctx
        .hub
        .newest(&req.channel)
        .and_then(|newest| feed.cursor.sample(&newest))
    {
        if let Some(gap) = sample.gap {
            feed.send(gap).await?;
        }
        feed.send(sample.tick).await?;
        sent_at = Some(Instant::now());
    }
    feed.send_live(ctx, fallback).await?;
    let (cursor, out) = feed.into_parts();
    let sub = cursor.sub;
    let sampling = Sampling {
        cursor,
        out: out.downgrade(),
    };
    let hold = ctx.hub.conflate(live, rate.interval(), Box::new(sampling), sent_at);
    out.send(Outbound::Conflated(Box::new(Conflating { sub, _hold: hold })))
        .await
        .map_err(|_| Gone)?;
    Ok(out)
}

/// The `seq` the first frame's `skipped` counts from, where it can be known
/// (docs/PROTOCOL.md §5.8: `null` is allowed after `since` without `seq`, after
/// `since=$` and after an epoch gap): the ring's tick before the first one after the
/// cursor; for a `since`-less start (the last ticks of the stream, all kept) also the
/// stream's; 0 for a channel with no tick yet (from its start), whose first tick
/// will have `seq` 1.
async fn seq_before(ctx: &SessionContext, req: &SubscribeRequest, cursor: &Cursor) -> Option<u64> {
    if let Some(seq) = ctx.hub.seq_through(&req.channel, cursor.last_sent) {
        return Some(seq);
    }
    if cursor.last_sent == StreamId::ZERO && cursor.epoch.is_none() {
        // The stream had no tick: its first will be `seq` 1.
        return Some(0);
    }
    if req.since != Since::Default {
        return None;
    }
    let range = IdRange::after(cursor.last_sent);
    let first = until_ok(&ctx.metrics, || ctx.store.range(&req.channel, range, 1)).await;
    Some(first.first().map_or(0, |tick| tick.seq.saturating_sub(1)))
}

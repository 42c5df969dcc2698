//! A client's subscriptions, whatever carries them (docs/ARCHITECTURE.md "Sessions").
//!
//! The core is transport-free: a subscription produces frames from its cursor, the
//! node's ring or the store, and its channel's live feed; a transport writes them.
//!
//! - [`protocol`]: client messages, frames, close codes, limits.
//! - [`cursor`]: where a subscription stands, and the delivery rule.
//! - [`budget`]: a socket's budget of tick bytes in flight (at most 1 MiB).
//! - [`replay`]: a subscription's start (history, then `live`) and its catch-ups.
//! - [`sampling`]: a conflated (`rate`) subscription's start and its sampler.
//! - [`writer`]: the task that writes a connection's frames, in batches.
//! - [`websocket`] (with its framing, [`websocket::codec`]) and [`sse`]: the two
//!   transports and their control loops.
//!
//! The delivery invariant, per subscription: every tick with id > `since` is sent
//! exactly once, in id order, and any discontinuity (trimmed history, a new epoch)
//! is announced by a `gap` frame first.

pub(crate) mod budget;
pub(crate) mod cursor;
pub mod protocol;
pub(crate) mod replay;
pub(crate) mod sampling;
pub(crate) mod sse;
pub mod websocket;
pub(crate) mod writer;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::auth::{Authenticator, Principal};
use crate::candles::CandleSettings;
use crate::engine::Store;
use crate::hub::{Hub, LiveSubscription};
use crate::metrics::Metrics;
use crate::ratelimit::{Group, RateLimiter};
use budget::{Budget, Grant};
use cursor::Cursor;
use protocol::{close, Closing, Frame, SubscribeRequest};
use replay::{run_subscription, FEED_BATCH};
use sampling::Conflating;

/// Everything a session needs from the server, shared by all sessions.
pub struct SessionContext {
    pub hub: Arc<Hub>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub auth: Arc<Authenticator>,
    /// Each `subscribe` message costs a `ws` token.
    pub limiter: Arc<RateLimiter>,
    pub default_replay: usize,
    /// Which live candles a subscriber may ask for.
    pub candles: CandleSettings,
    /// Frames queued per connection before its subscriptions' start-ups wait; bounds
    /// memory per client.
    pub send_queue: usize,
    pub shutdown: watch::Receiver<bool>,
}

/// What reaches the writer through the connection's queue. Subscription frames carry
/// their subscription's number: the writer drops those of a subscription the session
/// has closed, so nothing of a channel follows the frame that says it was dropped,
/// however a subscription task's last frames race with its abort.
///
/// Every variant is a word or a box: the queue allocates its slots in blocks of 32,
/// and an idle connection keeps its first block for life (a 48-byte item made that
/// block 1.5 KiB; boxed, it is 0.5 KiB).
pub(crate) enum Outbound {
    /// Frames of a subscription (its `subscribed`, replayed ticks, `gap`, `live`), up
    /// to [`FEED_BATCH`] at a time.
    Sub(Box<SubFrames>),
    /// The session's own frames (pong, error, keep-alive).
    Session(Box<Frame>),
    /// From here on, frames of `sub` may be written.
    Open(u64),
    /// Subscription `sub` is over: its later frames and its live feed are dropped.
    Close(u64),
    /// A subscription has replayed history and hands its live feed to the writer.
    Live(Box<Handover>),
    /// A conflated subscription is live: the writer holds its conflation while it
    /// is open (its frames come as `Sub`).
    Conflated(Box<Conflating>),
}

/// Frames of subscription `sub`; `ticks` of them are tick frames.
pub(crate) struct SubFrames {
    pub sub: u64,
    pub frames: Vec<Frame>,
    pub ticks: u64,
    /// The socket budget these frames hold (replayed ticks), given back once the
    /// writer has written them.
    pub held: Option<Grant>,
}

/// A subscription in its live phase: where it stands and its channel's live feed.
pub(crate) struct Handover {
    pub cursor: Cursor,
    pub live: LiveSubscription,
}

/// The queue between a session and its writer: about `send_queue` frames.
pub(crate) fn queue(ctx: &SessionContext) -> (mpsc::Sender<Outbound>, mpsc::Receiver<Outbound>) {
    mpsc::channel(ctx.send_queue.div_ceil(FEED_BATCH).max(16))
}

/// Why a session's control loop stops: with a close to send, or silently (the
/// writer, and so the connection, is gone).
pub(crate) type Ending = Option<Closing>;

/// A client's subscriptions and its principal; the control loops of both transports
/// drive it.
pub(crate) struct Session {
    ctx: Arc<SessionContext>,
    principal: Principal,
    out: mpsc::Sender<Outbound>,
    /// Channel → (subscription number, its start-up task while it replays).
    subscriptions: HashMap<String, (u64, JoinHandle<()>)>,
    next_sub: u64,
    /// The socket's budget of tick bytes, shared with its writer.
    budget: Arc<Budget>,
}

impl Session {
    pub(crate) fn new(
        ctx: Arc<SessionContext>,
        principal: Principal,
        out: mpsc::Sender<Outbound>,
        budget: Arc<Budget>,
    ) -> Session {
        Session {
            ctx,
            principal,
            out,
            subscriptions: HashMap::new(),
            next_sub: 0,
            budget,
        }
    }

    pub(crate) fn principal(&self) -> &Principal {
        &self.principal
    }

    pub(crate) fn candle_settings(&self) -> &CandleSettings {
        &self.ctx.candles
    }

    pub(crate) fn auth(&self) -> Arc<Authenticator> {
        self.ctx.auth.clone()
    }

    pub(crate) fn subscriptions(&self) -> usize {
        self.subscriptions.len()
    }

    pub(crate) fn is_subscribed(&self, channel: &str) -> bool {
        self.subscriptions.contains_key(channel)
    }

    /// When the token stops being valid (exp + leeway); far future without `exp`.
    fn expiry(&self) -> tokio::time::Instant {
        const FAR: u64 = 365 * 86_400;
        let Some(exp) = self.principal.expires_at else {
            return tokio::time::Instant::now() + Duration::from_secs(FAR);
        };
        // Saturating, and capped: a token may carry any `exp` up to u64::MAX, and an
        // Instant that far out would overflow.
        let deadline = exp.saturating_add(crate::auth::LEEWAY_SECS);
        let left = deadline.saturating_sub(crate::clock::unix_now()).min(FAR);
        tokio::time::Instant::now() + Duration::from_secs(left)
    }

    /// Resolves when the session must end whatever the client does: the server shuts
    /// down (1012) or the token expires (4001).
    pub(crate) async fn stopping(&self) -> Closing {
        let mut shutdown = self.ctx.shutdown.clone();
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => (close::RESTART, "server restarting"),
            _ = tokio::time::sleep_until(self.expiry()) => (close::TOKEN_EXPIRED, "token expired"),
        }
    }

    /// Queues an item for the writer. The queue may be full while the client does not
    /// read; waiting for room must not keep the session from noticing shutdown or
    /// token expiry, so those end the wait (and the session).
    async fn queue(&self, item: Outbound) -> Result<(), Ending> {
        tokio::select! {
            biased;
            sent = self.out.send(item) => sent.map_err(|_| None),
            closing = self.stopping() => Err(Some(closing)),
        }
    }

    /// Queues a frame of the session's own (keep-alive), unless the queue is full.
    pub(crate) fn try_send(&self, frame: Frame) {
        let _ = self.out.try_send(Outbound::Session(Box::new(frame)));
    }

    pub(crate) async fn send(&self, frame: Frame) -> Result<(), Ending> {
        self.queue(Outbound::Session(Box::new(frame))).await
    }

    pub(crate) async fn refuse(&self, channel: &str, code: &str, message: &str) -> Result<(), Ending> {
        self.send(protocol::error(channel, code, message)).await
    }

    /// Takes a subscribe's `ws` token; a refusal answers an `error` frame
    /// `rate_limited` (with `retry_after` in seconds) and leaves the socket open.
    pub(crate) async fn charge_subscribe(&self, channel: &str) -> Result<bool, Ending> {
        let p = &self.principal;
        match self.ctx.limiter.check(p.subject(), p.tier, Group::Ws, 1).await {
            Some(d) if !d.allowed => {
                let frame = Frame::json(
                    protocol::Kind::Error,
                    serde_json::json!({
                        "type": "error",
                        "code": "rate_limited",
                        "channel": channel,
                        "message": "subscribe rate limit reached, retry later",
                        "retry_after": d.retry_after_secs(),
                    }),
                );
                self.send(frame).await?;
                Ok(false)
            }
            _ => Ok(true),
        }
    }

    /// Replaces the principal after a `refresh`; channels the new token no longer
    /// allows are unsubscribed, each with an `error` frame `forbidden`.
    pub(crate) async fn refresh(&mut self, principal: Principal) -> Result<(), Ending> {
        self.principal = principal;
        let gone: Vec<String> = self
            .subscriptions
            .keys()
            .filter(|c| !self.principal.can_read(c))
            .cloned()
            .collect();
        for channel in gone {
            self.unsubscribe(&channel).await?;
            self.refuse(&channel, "forbidden", "the refreshed token does not allow this channel")
                .await?;
        }
        Ok(())
    }

    /// Starts (or restarts, with the new cursor) a subscription.
    pub(crate) async fn subscribe(&mut self, req: SubscribeRequest) -> Result<(), Ending> {
        self.unsubscribe(&req.channel).await?;
        self.next_sub += 1;
        let sub = self.next_sub;
        // `Open` is queued before the task exists, so it precedes all its frames.
        self.queue(Outbound::Open(sub)).await?;
        let channel = req.channel.clone();
        // Boxed: the task's start-up future is large (store calls, retries), and a
        // finished task's cell lives on while its JoinHandle does; boxed, only the
        // small cell stays once the subscription has gone live.
        let task = tokio::spawn(Box::pin(run_subscription(
            self.ctx.clone(),
            sub,
            req,
            self.out.clone(),
            self.budget.clone(),
        )));
        self.subscriptions.insert(channel, (sub, task));
        self.ctx.metrics.subscriptions.inc();
        Ok(())
    }

    /// Ends a subscription: its task stops and the writer drops whatever of it is
    /// still queued or live, before anything the session queues after this.
    pub(crate) async fn unsubscribe(&mut self, channel: &str) -> Result<(), Ending> {
        if let Some((sub, task)) = self.subscriptions.remove(channel) {
            task.abort();
            self.ctx.metrics.subscriptions.dec();
            self.queue(Outbound::Close(sub)).await?;
        }
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for (_, (_, task)) in self.subscriptions.drain() {
            task.abort();
            self.ctx.metrics.subscriptions.dec();
        }
    }
}

//! One WebSocket connection (ARCHITECTURE §4).
//!
//! Tasks per connection: the session loop (reads client messages, pings, expiry,
//! shutdown) and a [`Writer`] that owns the socket sink. A subscription starts in a
//! task of its own that replays history through the writer's bounded queue, sends
//! `live`, then hands its cursor and its channel's broadcast receiver to the writer
//! and ends: from then on the writer takes live ticks straight from the broadcast
//! (one wake-up per batch, no queue hop), so an idle subscribed socket costs two
//! small tasks. A client that does not read blocks only its own writer: its live
//! feeds fall behind the broadcast and later catch up from the node's ring or the
//! stream. Fan-out never waits for a client.
//!
//! The delivery invariant, per subscription: every tick with id > `since` is sent
//! exactly once, in id order, and any discontinuity (trimmed history, a new epoch)
//! is announced by a `gap` frame first. [`Cursor::admit`] is the one place that
//! enforces it, for replayed and live ticks alike.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tokio_util::sync::ReusableBoxFuture;

use crate::auth::{Authenticator, Principal};
use crate::hub::{Hub, Interrupted, LiveFrame, LiveSubscription};
use crate::metrics::Metrics;
use crate::ratelimit::{Group, RateLimiter};
use crate::retry::{Backoff, ErrorLog};
use crate::store::{IdRange, Store, StoreError, StreamInfo};
use crate::tick::{is_valid_channel, Since, StreamId, Tick};

/// History is read in pages of this many ticks.
pub const REPLAY_PAGE: usize = 1000;
/// Largest client message (SPEC §3); larger ones close the socket with 1008.
pub const MAX_CLIENT_MESSAGE: usize = 64 * 1024;
/// Server pings this often…
pub const PING_INTERVAL: Duration = Duration::from_secs(20);
/// …and drops a client silent for this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A socket unwritable for this long is closed with 1013.
pub const WRITE_STALL: Duration = Duration::from_secs(10);
/// After the server sends a close frame, it reads (and discards) what the client
/// still sends for up to this long, waiting for the client's own close frame:
/// closing the TCP socket while unread data sits in it makes the kernel reset the
/// connection, and the client would never see the close frame (nor its code).
pub const CLOSE_HANDSHAKE: Duration = Duration::from_secs(2);
/// Subscriptions one `/ws` connection may hold.
pub const MAX_SUBSCRIPTIONS: usize = 256;
/// Inbound message budget: a burst of 20, refilled at 10 per second.
pub const INBOUND_BURST: f64 = 20.0;
pub const INBOUND_PER_SEC: f64 = 10.0;

pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const POLICY: u16 = 1008;
    pub const INTERNAL: u16 = 1011;
    pub const RESTART: u16 = 1012;
    pub const TRY_LATER: u16 = 1013;
    pub const TOKEN_EXPIRED: u16 = 4001;
    pub const FORBIDDEN: u16 = 4003;
    pub const RATE_LIMITED: u16 = 4029;
}

/// What a subscriber asked for.
#[derive(Debug, Clone)]
pub struct SubscribeRequest {
    pub channel: String,
    pub since: Since,
    /// The `seq` of the tick at `since`: makes gap detection exact.
    pub seq: Option<u64>,
    pub epoch: Option<String>,
}

/// A message from the client (SPEC §3).
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientMessage {
    Subscribe {
        channel: String,
        #[serde(default)]
        since: Option<String>,
        #[serde(default)]
        seq: Option<u64>,
        #[serde(default)]
        epoch: Option<String>,
    },
    Unsubscribe {
        channel: String,
    },
    Refresh {
        token: String,
    },
    Ping,
}

/// Parses one client text frame. Anything but a JSON object with a known `type` and
/// its required fields is an error (the session closes with 1008).
pub fn parse_client_message(raw: &str) -> Result<ClientMessage, &'static str> {
    if raw.len() > MAX_CLIENT_MESSAGE {
        return Err("message larger than 64 KiB");
    }
    serde_json::from_str(raw).map_err(|_| "expected a JSON object with a known type and its fields")
}

/// Everything a session needs from the server, shared by all sessions.
pub struct SessionContext {
    pub hub: Arc<Hub>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub auth: Arc<Authenticator>,
    /// Each `subscribe` message costs a `ws` token.
    pub limiter: Arc<RateLimiter>,
    pub default_replay: usize,
    pub send_queue: usize,
    pub shutdown: watch::Receiver<bool>,
}

/// What reaches the writer through the connection's queue. Subscription frames carry
/// their subscription's number: the writer drops those of a subscription the session
/// has closed, so nothing of a channel follows the frame that says it was dropped,
/// however a subscription task's last frames race with its abort.
enum Outbound {
    /// Frames of subscription `sub` (its `subscribed`, replayed ticks, `gap`, `live`),
    /// up to [`FEED_BATCH`] at a time; `ticks` of them are tick frames.
    Sub { sub: u64, frames: Vec<Message>, ticks: u64 },
    /// The session's own frames (pong, error, ping).
    Session(Message),
    /// From here on, frames of `sub` may be written.
    Open(u64),
    /// Subscription `sub` is over: its later frames and its live feed are dropped.
    Close(u64),
    /// A subscription has replayed history and hands its live feed to the writer.
    Live(Box<Handover>),
}

/// A subscription in its live phase: where it stands and its channel's broadcast.
struct Handover {
    cursor: Cursor,
    live: LiveSubscription,
}

fn text(value: serde_json::Value) -> Message {
    Message::Text(Utf8Bytes::from(value.to_string()))
}

/// Runs a connection to its end. `initial` subscribes at once (`/ws/{channel}`).
/// `_done` is held until every task of the session has finished: graceful shutdown
/// waits for all of them.
pub async fn run(
    socket: WebSocket,
    ctx: Arc<SessionContext>,
    principal: Principal,
    initial: Option<SubscribeRequest>,
    _done: mpsc::Sender<()>,
) {
    ctx.metrics.connections.inc();
    let (sink, mut stream) = socket.split();
    let (out_tx, out_rx) = mpsc::channel(ctx.send_queue.div_ceil(FEED_BATCH).max(16));
    let (close_tx, close_rx) = oneshot::channel();
    let writer = Writer {
        sink,
        queue: out_rx,
        requeue: out_tx.downgrade(),
        ctx: ctx.clone(),
        open: Vec::new(),
        live: Vec::new(),
        catch_ups: Vec::new(),
        batch: Vec::new(),
        turn: 0,
    };
    let mut writer = tokio::spawn(writer.run(close_rx));
    let mut session = Session {
        ctx: ctx.clone(),
        principal,
        out: out_tx,
        subscriptions: HashMap::new(),
        next_sub: 0,
        inbound_tokens: INBOUND_BURST,
        inbound_at: Instant::now(),
    };
    if let Some(req) = initial {
        Box::pin(session.subscribe(req)).await;
    }
    let mut shutdown = ctx.shutdown.clone();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
    let mut last_heard = Instant::now();
    let close: Option<(u16, &'static str)> = loop {
        let expiry = session.expiry();
        tokio::select! {
            msg = stream.next() => {
                last_heard = Instant::now();
                match msg {
                    Some(Ok(Message::Text(t))) => {
                        // Boxed: a rare path that would otherwise size every
                        // connection's task for its whole life.
                        if let Some(c) = Box::pin(session.on_text(t.as_str())).await {
                            break Some(c);
                        }
                    }
                    Some(Ok(Message::Binary(_))) => break Some((close::POLICY, "binary frames are not supported")),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Err(e)) => break is_oversized(e).then_some((close::POLICY, "message larger than 64 KiB")),
                    Some(Ok(Message::Close(_))) | None => break None,
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > IDLE_TIMEOUT {
                    break None;
                }
                let _ = session.out.try_send(Outbound::Session(Message::Ping(Default::default())));
            }
            _ = tokio::time::sleep_until(expiry) => break Some((close::TOKEN_EXPIRED, "token expired")),
            _ = shutdown.changed() => break Some((close::RESTART, "server restarting")),
            _ = &mut writer => break None,
        }
    };
    for (_, (_, task)) in session.subscriptions.drain() {
        task.abort();
        ctx.metrics.subscriptions.dec();
    }
    if let Some((code, reason)) = close {
        let _ = close_tx.send((code, reason));
        let _ = tokio::time::timeout(CLOSE_HANDSHAKE, async {
            while let Some(Ok(message)) = stream.next().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
    drop(session);
    if !writer.is_finished() {
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer).await;
        writer.abort();
    }
    ctx.metrics.connections.dec();
}

/// A frame beyond the socket's hard size cap: still a policy violation (1008), not a
/// broken connection.
fn is_oversized(e: axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error;
    matches!(e.into_inner().downcast_ref::<Error>(), Some(Error::Capacity(_)))
}

struct Session {
    ctx: Arc<SessionContext>,
    principal: Principal,
    out: mpsc::Sender<Outbound>,
    /// Channel → (subscription number, its start-up task while it replays).
    subscriptions: HashMap<String, (u64, JoinHandle<()>)>,
    next_sub: u64,
    inbound_tokens: f64,
    inbound_at: Instant,
}

impl Session {
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

    /// Handles one client message; `Some` closes the socket with that code.
    async fn on_text(&mut self, raw: &str) -> Option<(u16, &'static str)> {
        if !self.take_inbound_token() {
            return Some((close::RATE_LIMITED, "too many messages"));
        }
        let msg = match parse_client_message(raw) {
            Ok(m) => m,
            Err(reason) => return Some((close::POLICY, reason)),
        };
        match msg {
            ClientMessage::Ping => self.send(json!({"type": "pong"})).await,
            ClientMessage::Subscribe {
                channel,
                since,
                seq,
                epoch,
            } => {
                if !is_valid_channel(&channel) {
                    self.refuse(&channel, "bad_channel", "not a valid channel name").await;
                } else if !self.principal.can_read(&channel) {
                    self.refuse(&channel, "forbidden", "the token does not allow this channel")
                        .await;
                } else if !self.subscriptions.contains_key(&channel) && self.subscriptions.len() >= MAX_SUBSCRIPTIONS {
                    self.refuse(
                        &channel,
                        "too_many_subscriptions",
                        "at most 256 subscriptions per connection",
                    )
                    .await;
                } else {
                    match Since::parse(since.as_deref()) {
                        Ok(since) => {
                            if self.charge_subscribe(&channel).await {
                                self.subscribe(SubscribeRequest {
                                    channel,
                                    since,
                                    seq,
                                    epoch,
                                })
                                .await
                            }
                        }
                        Err(e) => self.refuse(&channel, "bad_since", &e.to_string()).await,
                    }
                }
            }
            ClientMessage::Unsubscribe { channel } => self.unsubscribe(&channel).await,
            ClientMessage::Refresh { token } => match self.ctx.auth.verify_jwt(&token) {
                Ok(p) if p.sub == self.principal.sub => {
                    self.principal = p;
                    self.drop_forbidden().await;
                }
                Ok(_) => {
                    self.refuse("", "invalid_token", "refresh token is for another subject")
                        .await
                }
                Err(e) => self.refuse("", "invalid_token", &e.to_string()).await,
            },
        }
        None
    }

    /// Token bucket for inbound messages (SPEC §3: burst 20, then 10/s).
    fn take_inbound_token(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.inbound_at).as_secs_f64();
        self.inbound_at = now;
        self.inbound_tokens = (self.inbound_tokens + elapsed * INBOUND_PER_SEC).min(INBOUND_BURST);
        if self.inbound_tokens >= 1.0 {
            self.inbound_tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Takes the subscribe's `ws` token; a refusal answers an `error` frame
    /// `rate_limited` (with `retry_after` in seconds) and leaves the socket open.
    async fn charge_subscribe(&self, channel: &str) -> bool {
        let p = &self.principal;
        match self.ctx.limiter.check(p.subject(), p.tier, Group::Ws, 1).await {
            Some(d) if !d.allowed => {
                self.send(json!({
                    "type": "error",
                    "code": "rate_limited",
                    "channel": channel,
                    "message": "subscribe rate limit reached, retry later",
                    "retry_after": d.retry_after_secs(),
                }))
                .await;
                false
            }
            _ => true,
        }
    }

    /// After a refresh, channels the new token no longer allows are unsubscribed.
    async fn drop_forbidden(&mut self) {
        let gone: Vec<String> = self
            .subscriptions
            .keys()
            .filter(|c| !self.principal.can_read(c))
            .cloned()
            .collect();
        for channel in gone {
            self.unsubscribe(&channel).await;
            self.refuse(&channel, "forbidden", "the refreshed token does not allow this channel")
                .await;
        }
    }

    async fn send(&self, value: serde_json::Value) {
        let _ = self.out.send(Outbound::Session(text(value))).await;
    }

    async fn refuse(&self, channel: &str, code: &str, message: &str) {
        self.send(json!({"type": "error", "code": code, "channel": channel, "message": message}))
            .await;
    }

    /// Starts (or restarts, with the new cursor) a subscription.
    async fn subscribe(&mut self, req: SubscribeRequest) {
        self.unsubscribe(&req.channel).await;
        self.next_sub += 1;
        let sub = self.next_sub;
        // `Open` is queued before the task exists, so it precedes all its frames.
        let _ = self.out.send(Outbound::Open(sub)).await;
        let channel = req.channel.clone();
        // Boxed: the task's start-up future is large (store calls, retries), and a
        // finished task's cell lives on while its JoinHandle does; boxed, only the
        // small cell stays once the subscription has gone live.
        let task = tokio::spawn(Box::pin(run_subscription(self.ctx.clone(), sub, req, self.out.clone())));
        self.subscriptions.insert(channel, (sub, task));
        self.ctx.metrics.subscriptions.inc();
    }

    /// Ends a subscription: its task stops and the writer drops whatever of it is
    /// still queued or live, before anything the session queues after this.
    async fn unsubscribe(&mut self, channel: &str) {
        if let Some((sub, task)) = self.subscriptions.remove(channel) {
            task.abort();
            self.ctx.metrics.subscriptions.dec();
            let _ = self.out.send(Outbound::Close(sub)).await;
        }
    }
}

/// Frames written per flush, at most.
const BATCH: usize = 64;
/// Frames a subscription's start-up or catch-up puts in one queue slot. The queue has
/// `send_queue / FEED_BATCH` slots, so it still holds about `send_queue` frames.
const FEED_BATCH: usize = 32;

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

/// Owns the sink. Takes frames from the queue and, for subscriptions in their live
/// phase, straight from their channel's broadcast: a live tick costs one wake-up of
/// this task and no queue hop. Writes what is ready in one batch (`feed`… then one
/// `flush`), and closes with 1013 when the socket stays unwritable for [`WRITE_STALL`].
///
/// A client that does not read blocks only this task: its live feeds stop being
/// drained, fall behind the broadcast, and later catch up from the node's ring or
/// the stream (in a task of their own, so the writer never waits on Redis).
struct Writer {
    sink: futures_util::stream::SplitSink<WebSocket, Message>,
    queue: mpsc::Receiver<Outbound>,
    /// For catch-up tasks; weak, so the queue still closes when the session ends.
    requeue: mpsc::WeakSender<Outbound>,
    ctx: Arc<SessionContext>,
    /// Subscriptions whose frames may be written.
    open: Vec<u64>,
    live: Vec<LiveSlot>,
    /// Catch-ups after a live feed lagged, by subscription: aborted when their
    /// subscription closes, and with the writer.
    catch_ups: Vec<(u64, AbortHandle)>,
    batch: Vec<Message>,
    /// Which live slot is polled first, rotating, so one busy channel cannot starve
    /// the others of a connection.
    turn: usize,
}

impl Drop for Writer {
    fn drop(&mut self) {
        for (_, task) in &self.catch_ups {
            task.abort();
        }
    }
}

enum Wake {
    /// The session ended, with the close frame to send, if any.
    Close(Option<(u16, &'static str)>),
    Queue(Outbound),
    Live(usize, Box<Handover>, Result<LiveFrame, Interrupted>),
}

impl Writer {
    async fn run(mut self, mut close_rx: oneshot::Receiver<(u16, &'static str)>) {
        loop {
            let (queue, live, turn) = (&mut self.queue, &mut self.live, &mut self.turn);
            let wake = tokio::select! {
                biased;
                close = &mut close_rx => Wake::Close(close.ok()),
                next = queue.recv() => match next {
                    Some(out) => Wake::Queue(out),
                    None => return,
                },
                (i, handover, first) = std::future::poll_fn(|cx| poll_live(live, turn, cx)) => Wake::Live(i, handover, first),
            };
            let mut delivered = 0;
            match wake {
                Wake::Close(close) => {
                    if let Some((code, reason)) = close {
                        Box::pin(self.finish(code, reason)).await;
                    }
                    return;
                }
                Wake::Queue(out) => delivered += self.take(out),
                Wake::Live(i, handover, first) => delivered += self.drain_live(i, handover, first),
            }
            while self.batch.len() < BATCH {
                match self.queue.try_recv() {
                    Ok(out) => delivered += self.take(out),
                    Err(_) => break,
                }
            }
            self.ctx.metrics.ticks_delivered.inc_by(delivered);
            if !self.write_batch().await {
                return;
            }
        }
    }

    fn is_open(&self, sub: u64) -> bool {
        self.open.contains(&sub)
    }

    /// Applies one queued item; returns the tick frames it added to the batch.
    fn take(&mut self, out: Outbound) -> u64 {
        match out {
            Outbound::Session(m) => self.batch.push(m),
            Outbound::Sub { sub, frames, ticks } if self.is_open(sub) => {
                self.batch.extend(frames);
                return ticks;
            }
            Outbound::Sub { .. } => {}
            Outbound::Open(sub) => self.open.push(sub),
            Outbound::Close(sub) => {
                self.open.retain(|s| *s != sub);
                self.live.retain(|slot| slot.sub != sub);
                self.catch_ups.retain(|(s, task)| {
                    if *s == sub {
                        task.abort();
                    }
                    *s != sub && !task.is_finished()
                });
            }
            Outbound::Live(handover) => {
                if self.is_open(handover.cursor.sub) {
                    self.live.push(LiveSlot {
                        sub: handover.cursor.sub,
                        next: ReusableBoxFuture::new(next_live(handover)),
                    });
                }
            }
        }
        0
    }

    /// Writes a live subscription's ready ticks into the batch, then re-arms it; a
    /// lagged one goes to a catch-up task. Returns the tick frames added.
    fn drain_live(&mut self, i: usize, mut handover: Box<Handover>, first: Result<LiveFrame, Interrupted>) -> u64 {
        let now_ms = crate::clock::now_ms();
        let mut added = 0;
        let mut next = first;
        loop {
            match next {
                Ok(frame) => added += self.admit_live(&mut handover.cursor, frame, now_ms),
                Err(Interrupted::Opened) => {
                    // The channel's first live ticks went to its ring before this
                    // subscription had a receiver.
                    let cursor = &handover.cursor;
                    match self.ctx.hub.recent_after(&cursor.channel, cursor.last_sent) {
                        Some(frames) => {
                            for frame in frames {
                                added += self.admit_live(&mut handover.cursor, frame, now_ms);
                            }
                        }
                        None => {
                            self.catch_up(i, handover);
                            return added;
                        }
                    }
                }
                Err(Interrupted::Lagged) => {
                    self.ctx.metrics.slow_consumer_catchups.inc();
                    self.catch_up(i, handover);
                    return added;
                }
                Err(Interrupted::Closed) => {
                    self.live.swap_remove(i);
                    return added;
                }
            }
            if self.batch.len() >= BATCH {
                break;
            }
            next = match handover.live.try_recv() {
                Ok(Some(frame)) => Ok(frame),
                Ok(None) => break,
                Err(e) => Err(e),
            };
        }
        self.live[i].next.set(next_live(handover));
        added
    }

    /// One live frame through the subscription's cursor into the batch; returns 1 if
    /// it was a tick to send.
    fn admit_live(&mut self, cursor: &mut Cursor, frame: LiveFrame, now_ms: u64) -> u64 {
        let Some(gap) = cursor.admit(frame.id, frame.seq, &frame.epoch) else {
            return 0;
        };
        if let Some(gap) = gap {
            self.batch.push(gap);
        }
        self.ctx
            .metrics
            .delivery_latency
            .observe(now_ms.saturating_sub(frame.id.ms) as f64 / 1000.0);
        self.batch.push(Message::Text(frame.text));
        1
    }

    /// Moves live slot `i` to a catch-up task (ring or stream), which hands it back.
    fn catch_up(&mut self, i: usize, handover: Box<Handover>) {
        self.live.swap_remove(i);
        self.catch_ups.retain(|(_, task)| !task.is_finished());
        if let Some(out) = self.requeue.upgrade() {
            let sub = handover.cursor.sub;
            let task = tokio::spawn(Box::pin(resume_live(self.ctx.clone(), handover, out)));
            self.catch_ups.push((sub, task.abort_handle()));
        }
    }

    /// Writes and flushes the batch; false when the connection is done.
    async fn write_batch(&mut self) -> bool {
        if self.batch.is_empty() {
            return true;
        }
        let write = write_all(&mut self.sink, &mut self.batch);
        // Most writes complete at once; the stall timer is only armed for a socket
        // that actually blocks, so a healthy fan-out touches no timer per write.
        let outcome = {
            let mut write = std::pin::pin!(write);
            match std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
                Poll::Ready(r) => Ok(r),
                Poll::Pending => tokio::time::timeout(WRITE_STALL, write).await,
            }
        };
        self.batch.clear();
        match outcome {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                let frame = Message::Close(Some(CloseFrame {
                    code: close::TRY_LATER,
                    reason: "too slow".into(),
                }));
                let _ = tokio::time::timeout(Duration::from_secs(1), self.sink.send(frame)).await;
                false
            }
        }
    }

    /// Frames already queued go first (a pong, an error frame), then the close; all
    /// within a second, so a stuck socket cannot hold up the end of the session.
    async fn finish(&mut self, code: u16, reason: &'static str) {
        while let Ok(out) = self.queue.try_recv() {
            self.take(out);
        }
        self.batch.push(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })));
        let write = write_all(&mut self.sink, &mut self.batch);
        let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
    }
}

/// Feeds every message of the batch, then flushes once.
async fn write_all(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    batch: &mut Vec<Message>,
) -> Result<(), axum::Error> {
    for m in batch.drain(..) {
        sink.feed(m).await?;
    }
    sink.flush().await
}

/// The first live subscription with a tick (or a lag) ready, starting at `turn`.
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

/// A live feed that fell behind its channel's broadcast: catch up from the ring or
/// the stream through the queue, then hand the feed back to the writer.
async fn resume_live(ctx: Arc<SessionContext>, handover: Box<Handover>, out: mpsc::Sender<Outbound>) {
    let Handover { cursor, live } = *handover;
    let mut feed = Feed::new(cursor, out);
    if Box::pin(feed.catch_up(&ctx)).await.is_ok() {
        let Feed { cursor, out, .. } = feed;
        let _ = out.send(Outbound::Live(Box::new(Handover { cursor, live }))).await;
    }
}

/// Retries a store call with backoff until it succeeds: a subscription outlives a
/// Redis outage and continues where it was (the stream is the source of truth).
async fn retry<T, F, Fut>(metrics: &Metrics, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut backoff = Backoff::default();
    let mut log = ErrorLog::default();
    loop {
        match call().await {
            Ok(v) => return v,
            Err(e) => {
                metrics.redis_errors.inc();
                if log.should_log() {
                    tracing::warn!(error = %e, "subscription: store unavailable, retrying");
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Where a subscription stands: what it sent last, and in which epoch.
struct Cursor {
    /// The session's number for this subscription (see [`Outbound`]).
    sub: u64,
    channel: String,
    last_sent: StreamId,
    last_seq: Option<u64>,
    epoch: Option<Arc<str>>,
    /// Ticks sent so far.
    sent: u64,
}

impl Cursor {
    /// The `gap` frame for a discontinuity after `last_sent`; `resume_from` is the
    /// first id that will follow (none yet when the channel has no ticks).
    fn gap_frame(&self, reason: &str, resume_from: Option<StreamId>, missed: Option<u64>) -> Message {
        text(json!({
            "type": "gap",
            "channel": self.channel,
            "reason": reason,
            "after": self.last_sent.to_string(),
            "resume_from": resume_from.map(|id| id.to_string()),
            "missed": missed,
        }))
    }

    /// Decides one tick: `None` when it was already sent; else it is sent, preceded by
    /// the returned `gap` frame when the epoch changed or `seq` skipped (history
    /// trimmed under a lagging client). This is the one place that enforces the
    /// delivery invariant, for replayed and live ticks alike.
    fn admit(&mut self, id: StreamId, seq: u64, epoch: &Arc<str>) -> Option<Option<Message>> {
        if id <= self.last_sent {
            return None;
        }
        let gap = match &self.epoch {
            Some(e) if e != epoch => {
                self.last_seq = None;
                Some(self.gap_frame("epoch", Some(id), None))
            }
            // Saturating: a client may send any `seq`, up to u64::MAX.
            _ => match self.last_seq {
                Some(last) if seq > last.saturating_add(1) => {
                    Some(self.gap_frame("trimmed", Some(id), Some(seq - last - 1)))
                }
                _ => None,
            },
        };
        self.epoch = Some(epoch.clone());
        self.last_seq = Some(seq);
        self.last_sent = id;
        self.sent += 1;
        Some(gap)
    }
}

/// A subscription's start-up and catch-up side: its cursor and the queue to the
/// writer (the live side writes without the queue, see [`Writer`]).
struct Feed {
    cursor: Cursor,
    out: mpsc::Sender<Outbound>,
    /// Frames not yet queued: they go to the writer [`FEED_BATCH`] at a time, one
    /// queue slot and one wake-up per batch rather than per frame.
    pending: Vec<Message>,
    pending_ticks: u64,
}

impl std::ops::Deref for Feed {
    type Target = Cursor;
    fn deref(&self) -> &Cursor {
        &self.cursor
    }
}

impl std::ops::DerefMut for Feed {
    fn deref_mut(&mut self) -> &mut Cursor {
        &mut self.cursor
    }
}

/// The subscription ended because its session is gone.
struct Gone;

impl Feed {
    fn new(cursor: Cursor, out: mpsc::Sender<Outbound>) -> Feed {
        Feed {
            cursor,
            out,
            pending: Vec::with_capacity(FEED_BATCH),
            pending_ticks: 0,
        }
    }

    async fn send(&mut self, frame: Message, is_tick: bool) -> Result<(), Gone> {
        self.pending.push(frame);
        self.pending_ticks += u64::from(is_tick);
        if self.pending.len() >= FEED_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// Queues what is pending. Called before anything that may wait (a store read,
    /// the hand-over), so frames are never held back while the feed waits.
    async fn flush(&mut self) -> Result<(), Gone> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let out = Outbound::Sub {
            sub: self.cursor.sub,
            frames: std::mem::replace(&mut self.pending, Vec::with_capacity(FEED_BATCH)),
            ticks: std::mem::take(&mut self.pending_ticks),
        };
        self.out.send(out).await.map_err(|_| Gone)
    }

    async fn gap(&mut self, reason: &str, resume_from: Option<StreamId>, missed: Option<u64>) -> Result<(), Gone> {
        let frame = self.cursor.gap_frame(reason, resume_from, missed);
        self.send(frame, false).await
    }

    async fn emit(
        &mut self,
        id: StreamId,
        seq: u64,
        epoch: &Arc<str>,
        frame: impl FnOnce() -> Utf8Bytes,
    ) -> Result<(), Gone> {
        match self.cursor.admit(id, seq, epoch) {
            None => Ok(()),
            Some(gap) => {
                if let Some(gap) = gap {
                    self.send(gap, false).await?;
                }
                self.send(Message::Text(frame()), true).await
            }
        }
    }

    async fn emit_stored(&mut self, tick: &Tick) -> Result<(), Gone> {
        self.emit(tick.id, tick.seq, &tick.epoch, || Utf8Bytes::from(tick.to_frame()))
            .await
    }

    /// Sends one shared frame from the hub's ring.
    async fn emit_frame(&mut self, frame: &LiveFrame) -> Result<(), Gone> {
        self.emit(frame.id, frame.seq, &frame.epoch, || frame.text.clone())
            .await
    }

    /// Sends everything after `last_sent`: from the hub's ring when it holds all of
    /// it, else from the stream page by page until the ring takes over.
    async fn catch_up(&mut self, ctx: &SessionContext) -> Result<(), Gone> {
        loop {
            if let Some(frames) = ctx.hub.recent_after(&self.channel, self.last_sent) {
                for frame in &frames {
                    self.emit_frame(frame).await?;
                }
                ctx.metrics.replayed_ticks.inc_by(frames.len() as u64);
                return self.flush().await;
            }
            self.flush().await?;
            let after = self.last_sent;
            let page = retry(&ctx.metrics, || {
                ctx.store.range(&self.channel, IdRange::after(after), REPLAY_PAGE)
            })
            .await;
            for tick in &page {
                self.emit_stored(tick).await?;
            }
            ctx.metrics.replayed_ticks.inc_by(page.len() as u64);
            if page.len() < REPLAY_PAGE {
                return self.flush().await;
            }
        }
    }
}

async fn run_subscription(ctx: Arc<SessionContext>, sub: u64, req: SubscribeRequest, out: mpsc::Sender<Outbound>) {
    let _ = subscription(&ctx, sub, req, out).await;
}

/// A subscription's start: replays what the client missed, sends `live`, and hands
/// the live feed to the writer.
async fn subscription(
    ctx: &Arc<SessionContext>,
    sub: u64,
    req: SubscribeRequest,
    out: mpsc::Sender<Outbound>,
) -> Result<(), Gone> {
    // Live first: from here on, every new tick reaches `live` (or its ring).
    let live = retry(&ctx.metrics, || ctx.hub.subscribe(&req.channel)).await;
    let cursor = Cursor {
        sub,
        channel: req.channel.clone(),
        last_sent: StreamId::ZERO,
        last_seq: None,
        epoch: None,
        sent: 0,
    };
    let mut feed = Feed::new(cursor, out);
    let live_fallback = match start_from_ring(ctx, &req, &mut feed).await? {
        Some(fallback) => fallback,
        None => start_from_store(ctx, &req, &mut feed).await?,
    };
    feed.catch_up(ctx).await?;
    let live_last = if feed.sent > 0 { feed.last_sent } else { live_fallback };
    let live_frame = text(json!({"type": "live", "channel": req.channel, "last_id": live_last.to_string()}));
    feed.send(live_frame, false).await?;
    feed.flush().await?;
    let Feed { cursor, out, .. } = feed;
    out.send(Outbound::Live(Box::new(Handover { cursor, live })))
        .await
        .map_err(|_| Gone)
}

fn subscribed_frame(channel: &str, epoch: Option<&str>, first: Option<StreamId>, last: Option<StreamId>) -> Message {
    text(json!({
        "type": "subscribed",
        "channel": channel,
        "epoch": epoch,
        "first_id": first.map(|id| id.to_string()),
        "last_id": last.map(|id| id.to_string()),
    }))
}

/// Starts a subscription from the hub's ring of recent ticks when it holds everything
/// the client asked for: no Redis read at all, which is what keeps a reconnect storm
/// after a restart cheap. `None` when the store must answer (older cursors, a changed
/// epoch). On success returns the `live` frame's fallback `last_id`.
async fn start_from_ring(
    ctx: &SessionContext,
    req: &SubscribeRequest,
    cursor: &mut Feed,
) -> Result<Option<StreamId>, Gone> {
    let Some(head) = ctx.hub.head(&req.channel) else {
        return Ok(None);
    };
    let frames = match req.since {
        Since::Live => Some(Vec::new()),
        Since::Default => ctx.hub.recent_last(&req.channel, ctx.default_replay),
        Since::After(since) => {
            let same_epoch = match (&req.epoch, &head.epoch) {
                (None, _) => true,
                (Some(theirs), Some(ours)) => **theirs == **ours,
                (Some(_), None) => false,
            };
            if same_epoch {
                ctx.hub.recent_after(&req.channel, since)
            } else {
                None
            }
        }
    };
    let Some(frames) = frames else {
        return Ok(None);
    };
    let subscribed = subscribed_frame(&req.channel, head.epoch.as_deref(), head.first_id, head.last_id);
    cursor.send(subscribed, false).await?;
    let current = head.last_id.unwrap_or(StreamId::ZERO);
    let fallback = match req.since {
        Since::Live => {
            cursor.last_sent = current;
            cursor.epoch = head.epoch.clone();
            cursor.last_seq = head.last_seq;
            current
        }
        Since::Default => {
            if ctx.default_replay == 0 {
                cursor.last_sent = current;
            }
            StreamId::ZERO
        }
        Since::After(since) => {
            cursor.last_sent = since;
            cursor.last_seq = req.seq;
            cursor.epoch = head.epoch.clone().or_else(|| req.epoch.as_deref().map(Arc::from));
            since
        }
    };
    for frame in &frames {
        cursor.emit_frame(frame).await?;
    }
    ctx.metrics.replayed_ticks.inc_by(frames.len() as u64);
    Ok(Some(fallback))
}

/// Starts a subscription from the store: reads the stream's head, announces a gap
/// when the epoch changed or history after the cursor was trimmed, and sets the
/// cursor; `catch_up` then replays. Returns the `live` frame's fallback `last_id`.
async fn start_from_store(ctx: &SessionContext, req: &SubscribeRequest, cursor: &mut Feed) -> Result<StreamId, Gone> {
    let channel = req.channel.as_str();
    let info: Option<StreamInfo> = retry(&ctx.metrics, || ctx.store.info(channel)).await;
    let info = info.unwrap_or_default();
    let epoch: Option<Arc<str>> = info.last.as_ref().map(|t| t.epoch.clone());
    let first = info.first.as_ref().map(|t| t.id);
    let last = info.last.as_ref().map(|t| t.id);
    cursor
        .send(subscribed_frame(channel, epoch.as_deref(), first, last), false)
        .await?;
    match req.since {
        Since::Live => {
            cursor.last_sent = last.unwrap_or(StreamId::ZERO);
            cursor.epoch = epoch;
            cursor.last_seq = info.last.as_ref().map(|t| t.seq);
            Ok(cursor.last_sent)
        }
        Since::Default => {
            cursor.flush().await?;
            let mut recent = retry(&ctx.metrics, || {
                ctx.store.rev_range(channel, IdRange::ALL, ctx.default_replay)
            })
            .await;
            recent.reverse();
            if ctx.default_replay == 0 {
                cursor.last_sent = last.unwrap_or(StreamId::ZERO);
            }
            for tick in &recent {
                cursor.emit_stored(tick).await?;
            }
            ctx.metrics.replayed_ticks.inc_by(recent.len() as u64);
            Ok(StreamId::ZERO)
        }
        Since::After(since) => {
            cursor.last_sent = since;
            cursor.last_seq = req.seq;
            let client_epoch: Option<Arc<str>> = req.epoch.as_deref().map(Arc::from);
            match (&client_epoch, &epoch) {
                (Some(theirs), ours) if ours.as_ref() != Some(theirs) => {
                    // The stream the client knew is gone: everything kept now is new.
                    cursor.gap("epoch", first, None).await?;
                    cursor.last_sent = StreamId::ZERO;
                    cursor.last_seq = None;
                    cursor.epoch = epoch;
                }
                _ => {
                    cursor.epoch = epoch.or(client_epoch);
                    if let Some(first) = first {
                        let lost_before_first = since < first && info.has_trimmed();
                        if lost_before_first && req.seq.is_none() {
                            // Without `seq` the loss cannot be counted; say so.
                            cursor.gap("trimmed", Some(first), None).await?;
                        }
                        // With `seq`, `Cursor::admit` sees the jump and announces it exactly.
                    }
                }
            }
            Ok(since)
        }
    }
}

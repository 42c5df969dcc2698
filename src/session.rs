//! One WebSocket connection (ARCHITECTURE §4).
//!
//! Tasks per connection: the session loop (reads client messages, pings, expiry,
//! shutdown), a writer that owns the socket sink, and one task per subscription
//! that replays history and then forwards live frames. All frames reach the writer
//! through one bounded queue, so the order within a subscription is the order sent,
//! and a client that does not read fills only its own queue: its subscription tasks
//! then stop pulling from the channel's broadcast, fall behind it, and later catch
//! up from the stream. Fan-out never waits for a client.
//!
//! The delivery invariant, per subscription: every tick with id > `since` is sent
//! exactly once, in id order, and any discontinuity (trimmed history, a new epoch)
//! is announced by a `gap` frame first. [`Cursor::emit`] is the one place that
//! enforces it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::auth::{Authenticator, Principal};
use crate::hub::{Backoff, ErrorLog, Hub, LiveFrame};
use crate::metrics::Metrics;
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
    pub default_replay: usize,
    pub send_queue: usize,
    pub shutdown: watch::Receiver<bool>,
}

/// What the writer task sends.
enum Outbound {
    /// A tick frame; `live_ingest_ms` is set for live ones (delivery latency).
    Tick {
        text: Utf8Bytes,
        live_ingest_ms: Option<u64>,
    },
    Frame(Message),
}

fn text(value: serde_json::Value) -> Outbound {
    Outbound::Frame(Message::Text(Utf8Bytes::from(value.to_string())))
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
    let (out_tx, out_rx) = mpsc::channel(ctx.send_queue.max(16));
    let (close_tx, close_rx) = oneshot::channel();
    let mut writer = tokio::spawn(write_loop(sink, out_rx, close_rx, ctx.metrics.clone()));
    let mut session = Session {
        ctx: ctx.clone(),
        principal,
        out: out_tx,
        subscriptions: HashMap::new(),
        inbound_tokens: INBOUND_BURST,
        inbound_at: Instant::now(),
    };
    if let Some(req) = initial {
        session.subscribe(req);
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
                        if let Some(c) = session.on_text(t.as_str()).await {
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
                let _ = session.out.try_send(Outbound::Frame(Message::Ping(Default::default())));
            }
            _ = tokio::time::sleep_until(expiry) => break Some((close::TOKEN_EXPIRED, "token expired")),
            _ = shutdown.changed() => break Some((close::RESTART, "server restarting")),
            _ = &mut writer => break None,
        }
    };
    for (_, task) in session.subscriptions.drain() {
        task.abort();
        ctx.metrics.subscriptions.dec();
    }
    if let Some((code, reason)) = close {
        let _ = close_tx.send((code, reason));
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
    subscriptions: HashMap<String, JoinHandle<()>>,
    inbound_tokens: f64,
    inbound_at: Instant,
}

impl Session {
    /// When the token stops being valid (exp + leeway); far future without `exp`.
    fn expiry(&self) -> tokio::time::Instant {
        let far = tokio::time::Instant::now() + Duration::from_secs(365 * 86_400);
        let Some(exp) = self.principal.expires_at else {
            return far;
        };
        let deadline = exp + crate::auth::LEEWAY_SECS;
        let now = crate::auth::unix_now();
        tokio::time::Instant::now() + Duration::from_secs(deadline.saturating_sub(now))
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
                        Ok(since) => self.subscribe(SubscribeRequest {
                            channel,
                            since,
                            seq,
                            epoch,
                        }),
                        Err(e) => self.refuse(&channel, "bad_since", &e.to_string()).await,
                    }
                }
            }
            ClientMessage::Unsubscribe { channel } => {
                if let Some(task) = self.subscriptions.remove(&channel) {
                    task.abort();
                    self.ctx.metrics.subscriptions.dec();
                }
            }
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

    /// After a refresh, channels the new token no longer allows are unsubscribed.
    async fn drop_forbidden(&mut self) {
        let gone: Vec<String> = self
            .subscriptions
            .keys()
            .filter(|c| !self.principal.can_read(c))
            .cloned()
            .collect();
        for channel in gone {
            if let Some(task) = self.subscriptions.remove(&channel) {
                task.abort();
                self.ctx.metrics.subscriptions.dec();
            }
            self.refuse(&channel, "forbidden", "the refreshed token does not allow this channel")
                .await;
        }
    }

    async fn send(&self, value: serde_json::Value) {
        let _ = self.out.send(text(value)).await;
    }

    async fn refuse(&self, channel: &str, code: &str, message: &str) {
        self.send(json!({"type": "error", "code": code, "channel": channel, "message": message}))
            .await;
    }

    /// Starts (or restarts, with the new cursor) a subscription.
    fn subscribe(&mut self, req: SubscribeRequest) {
        let channel = req.channel.clone();
        let task = tokio::spawn(run_subscription(self.ctx.clone(), req, self.out.clone()));
        match self.subscriptions.insert(channel, task) {
            Some(old) => old.abort(),
            None => self.ctx.metrics.subscriptions.inc(),
        }
    }
}

/// Owns the sink: takes frames from the queue, writes what is ready in one batch
/// (`feed`… then one `flush`), and closes with 1013 when the socket stays
/// unwritable for [`WRITE_STALL`].
async fn write_loop(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut queue: mpsc::Receiver<Outbound>,
    mut close_rx: oneshot::Receiver<(u16, &'static str)>,
    metrics: Arc<Metrics>,
) {
    const BATCH: usize = 64;
    loop {
        let first = tokio::select! {
            biased;
            close = &mut close_rx => {
                if let Ok((code, reason)) = close {
                    // Frames already queued go first (a pong, an error frame), then
                    // the close; all within a second, so a stuck socket cannot hold
                    // up the end of the session.
                    let finish = async {
                        let now_ms = crate::tick::now_ms();
                        while let Ok(out) = queue.try_recv() {
                            sink.feed(into_message(out, &metrics, now_ms)).await?;
                        }
                        sink.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(1), finish).await;
                }
                return;
            }
            next = queue.recv() => match next {
                Some(m) => m,
                None => return,
            },
        };
        let write = async {
            // One clock read per batch, not per tick: it is on the hot path.
            let now_ms = crate::tick::now_ms();
            let mut item = Some(first);
            let mut n = 0;
            while let Some(out) = item.take() {
                sink.feed(into_message(out, &metrics, now_ms)).await?;
                n += 1;
                if n < BATCH {
                    item = queue.try_recv().ok();
                }
            }
            sink.flush().await
        };
        // Most writes complete at once; the stall timer is only armed for a socket
        // that actually blocks, so a healthy fan-out touches no timer per write.
        let outcome = {
            let mut write = std::pin::pin!(write);
            let first_try = std::future::poll_fn(|cx| std::task::Poll::Ready(write.as_mut().poll(cx))).await;
            match first_try {
                std::task::Poll::Ready(r) => Ok(r),
                std::task::Poll::Pending => tokio::time::timeout(WRITE_STALL, write).await,
            }
        };
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                let frame = Message::Close(Some(CloseFrame {
                    code: close::TRY_LATER,
                    reason: "too slow".into(),
                }));
                let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(frame)).await;
                return;
            }
        }
    }
}

/// The socket message for a queued frame; counts tick deliveries and, for live
/// ticks, their latency from append to write.
fn into_message(out: Outbound, metrics: &Metrics, now_ms: u64) -> Message {
    match out {
        Outbound::Tick { text, live_ingest_ms } => {
            metrics.ticks_delivered.inc();
            if let Some(ms) = live_ingest_ms {
                metrics
                    .delivery_latency
                    .observe(now_ms.saturating_sub(ms) as f64 / 1000.0);
            }
            Message::Text(text)
        }
        Outbound::Frame(m) => m,
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
    channel: String,
    last_sent: StreamId,
    last_seq: Option<u64>,
    epoch: Option<Arc<str>>,
    /// Ticks sent so far.
    sent: u64,
    out: mpsc::Sender<Outbound>,
}

/// The subscription ended because its session is gone.
struct Gone;

impl Cursor {
    async fn send(&self, out: Outbound) -> Result<(), Gone> {
        self.out.send(out).await.map_err(|_| Gone)
    }

    /// Announces a discontinuity after `last_sent`; `resume_from` is the first id that
    /// will follow (none yet when the channel has no ticks).
    async fn gap(&self, reason: &str, resume_from: Option<StreamId>, missed: Option<u64>) -> Result<(), Gone> {
        self.send(text(json!({
            "type": "gap",
            "channel": self.channel,
            "reason": reason,
            "after": self.last_sent.to_string(),
            "resume_from": resume_from.map(|id| id.to_string()),
            "missed": missed,
        })))
        .await
    }

    /// Sends one tick unless already sent; announces a gap first when the epoch
    /// changed or `seq` skipped (history trimmed under a lagging client).
    async fn emit(
        &mut self,
        id: StreamId,
        seq: u64,
        epoch: &Arc<str>,
        frame: impl FnOnce() -> Outbound,
    ) -> Result<(), Gone> {
        if id <= self.last_sent {
            return Ok(());
        }
        match &self.epoch {
            Some(e) if e != epoch => {
                self.gap("epoch", Some(id), None).await?;
                self.last_seq = None;
            }
            _ => {
                if let Some(last) = self.last_seq {
                    if seq > last + 1 {
                        self.gap("trimmed", Some(id), Some(seq - last - 1)).await?;
                    }
                }
            }
        }
        self.epoch = Some(epoch.clone());
        self.last_seq = Some(seq);
        self.last_sent = id;
        self.sent += 1;
        self.send(frame()).await
    }

    async fn emit_stored(&mut self, tick: &Tick) -> Result<(), Gone> {
        self.emit(tick.id, tick.seq, &tick.epoch, || Outbound::Tick {
            text: Utf8Bytes::from(tick.to_frame()),
            live_ingest_ms: None,
        })
        .await
    }

    /// Sends one shared frame (live, or from the hub's ring).
    async fn emit_frame(&mut self, frame: &LiveFrame, live: bool) -> Result<(), Gone> {
        self.emit(frame.id, frame.seq, &frame.epoch, || Outbound::Tick {
            text: frame.text.clone(),
            live_ingest_ms: live.then_some(frame.id.ms),
        })
        .await
    }

    /// Sends everything after `last_sent`: from the hub's ring when it holds all of
    /// it, else from the stream page by page until the ring takes over.
    async fn catch_up(&mut self, ctx: &SessionContext) -> Result<(), Gone> {
        loop {
            if let Some(frames) = ctx.hub.recent_after(&self.channel, self.last_sent) {
                for frame in &frames {
                    self.emit_frame(frame, false).await?;
                }
                ctx.metrics.replayed_ticks.inc_by(frames.len() as u64);
                return Ok(());
            }
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
                return Ok(());
            }
        }
    }
}

async fn run_subscription(ctx: Arc<SessionContext>, req: SubscribeRequest, out: mpsc::Sender<Outbound>) {
    let _ = subscription(&ctx, req, out).await;
}

async fn subscription(
    ctx: &Arc<SessionContext>,
    req: SubscribeRequest,
    out: mpsc::Sender<Outbound>,
) -> Result<(), Gone> {
    // Live first: from here on, every new tick reaches `live.rx`.
    let mut live = Box::pin(retry(&ctx.metrics, || ctx.hub.subscribe(&req.channel))).await;
    let mut cursor = Cursor {
        channel: req.channel.clone(),
        last_sent: StreamId::ZERO,
        last_seq: None,
        epoch: None,
        sent: 0,
        out,
    };
    // The start-up and catch-up paths are boxed: they run rarely but their futures
    // (store calls, retries) are large, and inline they would size every idle
    // subscription's task for its whole life.
    let live_fallback = match Box::pin(start_from_ring(ctx, &req, &mut cursor)).await? {
        Some(fallback) => fallback,
        None => Box::pin(start_from_store(ctx, &req, &mut cursor)).await?,
    };
    Box::pin(cursor.catch_up(ctx)).await?;
    let live_last = if cursor.sent > 0 {
        cursor.last_sent
    } else {
        live_fallback
    };
    cursor
        .send(text(
            json!({"type": "live", "channel": req.channel, "last_id": live_last.to_string()}),
        ))
        .await?;

    loop {
        match live.rx.recv().await {
            Ok(frame) => cursor.emit_frame(&frame, true).await?,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                ctx.metrics.slow_consumer_catchups.inc();
                Box::pin(cursor.catch_up(ctx)).await?;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

fn subscribed_frame(channel: &str, epoch: Option<&str>, first: Option<StreamId>, last: Option<StreamId>) -> Outbound {
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
    cursor: &mut Cursor,
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
    cursor
        .send(subscribed_frame(
            &req.channel,
            head.epoch.as_deref(),
            head.first_id,
            head.last_id,
        ))
        .await?;
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
        cursor.emit_frame(frame, false).await?;
    }
    ctx.metrics.replayed_ticks.inc_by(frames.len() as u64);
    Ok(Some(fallback))
}

/// Starts a subscription from the store: reads the stream's head, announces a gap
/// when the epoch changed or history after the cursor was trimmed, and sets the
/// cursor; `catch_up` then replays. Returns the `live` frame's fallback `last_id`.
async fn start_from_store(ctx: &SessionContext, req: &SubscribeRequest, cursor: &mut Cursor) -> Result<StreamId, Gone> {
    let channel = req.channel.as_str();
    let info: Option<StreamInfo> = retry(&ctx.metrics, || ctx.store.info(channel)).await;
    let info = info.unwrap_or_default();
    let epoch: Option<Arc<str>> = info.last.as_ref().map(|t| t.epoch.clone());
    let first = info.first.as_ref().map(|t| t.id);
    let last = info.last.as_ref().map(|t| t.id);
    cursor
        .send(subscribed_frame(channel, epoch.as_deref(), first, last))
        .await?;
    match req.since {
        Since::Live => {
            cursor.last_sent = last.unwrap_or(StreamId::ZERO);
            cursor.epoch = epoch;
            cursor.last_seq = info.last.as_ref().map(|t| t.seq);
            Ok(cursor.last_sent)
        }
        Since::Default => {
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
                        // With `seq`, `emit` sees the jump and announces it exactly.
                    }
                }
            }
            Ok(since)
        }
    }
}

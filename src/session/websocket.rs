//! The WebSocket transport: the socket's sink as a [`Transport`], and the control
//! loop that reads client messages (subscribe, unsubscribe, refresh, ping), pings the
//! client, and closes the socket with the documented code (docs/PROTOCOL.md §5).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};

use super::protocol::{
    self, close, parse_client_message, ClientMessage, Closing, Frame, SubscribeRequest, CLOSE_HANDSHAKE, IDLE_TIMEOUT,
    INBOUND_BURST, INBOUND_PER_SEC, MAX_SUBSCRIPTIONS, PING_INTERVAL,
};
use super::writer::{Transport, Writer};
use super::{queue, Ending, Session, SessionContext};
use crate::auth::Principal;
use crate::tick::{is_valid_channel, Since};

/// A WebSocket's sink.
pub(crate) struct WebSocketTransport {
    sink: SplitSink<WebSocket, Message>,
}

impl Transport for WebSocketTransport {
    async fn write(&mut self, frames: &mut Vec<Frame>) -> Result<(), ()> {
        for frame in frames.drain(..) {
            let message = match frame {
                Frame::Text { text, .. } => Message::Text(text),
                Frame::Ping => Message::Ping(Default::default()),
            };
            self.sink.feed(message).await.map_err(|_| ())?;
        }
        self.sink.flush().await.map_err(|_| ())
    }

    async fn close(&mut self, (code, reason): Closing) {
        let frame = Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }));
        let _ = self.sink.send(frame).await;
    }
}

/// The inbound message budget (burst 20, then 10/s); beyond it the socket closes
/// with 4029.
struct Inbound {
    tokens: f64,
    at: Instant,
}

impl Inbound {
    fn new() -> Inbound {
        Inbound {
            tokens: INBOUND_BURST,
            at: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * INBOUND_PER_SEC).min(INBOUND_BURST);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Runs a WebSocket to its end. `initial` subscribes at once (`/ws/{channel}`).
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
    let (out_tx, out_rx) = queue(&ctx);
    let (close_tx, close_rx) = oneshot::channel();
    let writer = Writer::new(WebSocketTransport { sink }, out_rx, out_tx.downgrade(), ctx.clone());
    let mut writer = tokio::spawn(writer.run(close_rx));
    let mut session = Session::new(ctx.clone(), principal, out_tx);
    let ending = match initial {
        Some(req) => Box::pin(session.subscribe(req)).await.err(),
        None => None,
    };
    let ending = match ending {
        Some(ending) => ending,
        None => control(&mut session, &mut stream, &mut writer).await,
    };
    drop(session);
    // Boxed: the end of a connection is short and rare, and would otherwise size
    // every connection's task for its whole life.
    Box::pin(finish(ending, close_tx, stream, writer)).await;
    ctx.metrics.connections.dec();
}

/// Tells the writer how the connection ends; after a close frame, reads (and
/// discards) until the client's own close frame; then gives the writer a moment.
async fn finish(
    ending: Ending,
    close_tx: oneshot::Sender<Closing>,
    mut stream: SplitStream<WebSocket>,
    mut writer: tokio::task::JoinHandle<()>,
) {
    if let Some(closing) = ending {
        let _ = close_tx.send(closing);
        let _ = tokio::time::timeout(CLOSE_HANDSHAKE, async {
            while let Some(Ok(message)) = stream.next().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
    if !writer.is_finished() {
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer).await;
        writer.abort();
    }
}

/// The control loop: client messages, pings, the idle timeout, expiry and shutdown.
async fn control(
    session: &mut Session,
    stream: &mut SplitStream<WebSocket>,
    writer: &mut tokio::task::JoinHandle<()>,
) -> Ending {
    let mut inbound = Inbound::new();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            msg = stream.next() => {
                last_heard = Instant::now();
                match msg {
                    Some(Ok(Message::Text(t))) => {
                        if !inbound.take() {
                            return Some((close::RATE_LIMITED, "too many messages"));
                        }
                        // Boxed: a rare path that would otherwise size every
                        // connection's task for its whole life.
                        if let Err(ending) = Box::pin(on_text(session, t.as_str())).await {
                            return ending;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => return Some((close::POLICY, "binary frames are not supported")),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Err(e)) => return is_oversized(e).then_some((close::POLICY, "message larger than 64 KiB")),
                    Some(Ok(Message::Close(_))) | None => return None,
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > IDLE_TIMEOUT {
                    return None;
                }
                session.try_send(Frame::Ping);
            }
            closing = session.stopping() => return Some(closing),
            _ = &mut *writer => return None,
        }
    }
}

/// Handles one client message; `Err` ends the session (with a close frame when
/// `Some`).
async fn on_text(session: &mut Session, raw: &str) -> Result<(), Ending> {
    let msg = parse_client_message(raw).map_err(|reason| Some((close::POLICY, reason)))?;
    match msg {
        ClientMessage::Ping => session.send(protocol::pong()).await,
        ClientMessage::Subscribe {
            channel,
            since,
            seq,
            epoch,
            candles,
        } => {
            if !is_valid_channel(&channel) {
                return session
                    .refuse(&channel, "bad_channel", "not a valid channel name")
                    .await;
            }
            if !session.principal().can_read(&channel) {
                return session
                    .refuse(&channel, "forbidden", "the token does not allow this channel")
                    .await;
            }
            if !session.is_subscribed(&channel) && session.subscriptions() >= MAX_SUBSCRIPTIONS {
                return session
                    .refuse(
                        &channel,
                        "too_many_subscriptions",
                        "at most 256 subscriptions per connection",
                    )
                    .await;
            }
            let since = match Since::parse(since.as_deref()) {
                Ok(since) => since,
                Err(e) => return session.refuse(&channel, "bad_since", &e.to_string()).await,
            };
            let candles = match session.candle_settings().live(candles.as_deref()) {
                Ok(candles) => candles,
                Err(why) => return session.refuse(&channel, "bad_interval", why).await,
            };
            if session.charge_subscribe(&channel).await? {
                session
                    .subscribe(SubscribeRequest {
                        channel,
                        since,
                        seq,
                        epoch,
                        from_event_id: false,
                        candles,
                    })
                    .await?;
            }
            Ok(())
        }
        ClientMessage::Unsubscribe { channel } => session.unsubscribe(&channel).await,
        ClientMessage::Refresh { token } => {
            let auth = session.auth();
            match auth.verify_jwt(&token) {
                Ok(p) if p.sub == session.principal().sub => session.refresh(p).await,
                Ok(_) => {
                    session
                        .refuse("", "invalid_token", "refresh token is for another subject")
                        .await
                }
                Err(e) => session.refuse("", "invalid_token", &e.to_string()).await,
            }
        }
    }
}

/// A frame beyond the socket's hard size cap: still a policy violation (1008), not a
/// broken connection.
fn is_oversized(e: axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error;
    matches!(e.into_inner().downcast_ref::<Error>(), Some(Error::Capacity(_)))
}

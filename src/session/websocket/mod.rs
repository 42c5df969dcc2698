//! The WebSocket transport: the socket's sending half as a [`Transport`], its
//! receiving half as client messages, and the control loop that reads them
//! (subscribe, unsubscribe, refresh, ping), pings the client, and closes the socket
//! with the documented code (docs/PROTOCOL.md §5). Framing is [`codec`].

pub mod codec;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::auth::Principal;
use crate::hub::Conn;
use crate::session::budget::Budget;
use crate::session::protocol::{
    self, check_epoch, close, parse_client_message, ClientMessage, Closing, Frame, FrameRate, SubscribeRequest,
    CLOSE_HANDSHAKE, IDLE_TIMEOUT, INBOUND_BURST, INBOUND_PER_SEC, MAX_CLIENT_MESSAGE, MAX_SUBSCRIPTIONS,
    PING_INTERVAL,
};
use crate::session::writer::{Transport, Writer};
use crate::session::{queue, Ending, Session, SessionContext};
use crate::tick::{is_valid_channel, Since};
use codec::{Decoder, Incoming, Violation};

/// A write buffer larger than this is given back after its batch is written, so a
/// socket keeps no more than a small batch's worth between writes.
const KEEP_BUFFER: usize = 4096;

/// The socket's sending half: each batch is framed into one buffer and written with
/// as few `write` calls as the kernel allows.
pub(crate) struct WebSocketTransport {
    /// Shared with the connection's direct path (`hub/direct.rs`), which writes to
    /// it only while this transport holds nothing unwritten.
    tcp: Arc<OwnedWriteHalf>,
    buf: Vec<u8>,
    /// How much of `buf` the kernel has taken. A write cut short (the stall timer
    /// fired) leaves the rest in `buf`, so a close frame still follows whole frames.
    sent: usize,
}

impl WebSocketTransport {
    async fn flush(&mut self) -> Result<(), ()> {
        while self.sent < self.buf.len() {
            self.sent += write_some(&self.tcp, &self.buf[self.sent..]).await?;
        }
        self.buf.clear();
        self.sent = 0;
        if self.buf.capacity() > KEEP_BUFFER {
            self.buf = Vec::new();
        }
        Ok(())
    }
}

impl Transport for WebSocketTransport {
    async fn write(&mut self, frames: &mut Vec<Frame>) -> Result<(), ()> {
        let size: usize = frames.iter().map(Frame::payload_len).sum();
        self.buf.reserve(size + frames.len() * 4);
        for frame in frames.drain(..) {
            match frame {
                Frame::Text { text, .. } => codec::encode_text(&mut self.buf, &text),
                Frame::Tick(frame) => codec::encode_text(&mut self.buf, &frame.text),
                Frame::Sampled(sampled) => codec::encode_text(&mut self.buf, &sampled.text),
                Frame::Ping => codec::encode_ping(&mut self.buf),
                Frame::Pong(payload) => codec::encode_pong(&mut self.buf, &payload),
            }
        }
        self.flush().await
    }

    async fn close(&mut self, (code, reason): Closing) {
        codec::encode_close(&mut self.buf, code, reason);
        let _ = self.flush().await;
    }

    async fn write_framed(&mut self, bytes: &[u8]) -> Result<(), ()> {
        // Through the buffer, like the connection's own frames: a write the stall
        // timer cuts leaves the rest there, so a close frame still follows whole
        // frames.
        self.buf.extend_from_slice(bytes);
        self.flush().await
    }
}

/// Writes some of `bytes` once the socket takes any (through a shared half, as the
/// direct path does); `Err` when the connection is gone.
async fn write_some(tcp: &OwnedWriteHalf, bytes: &[u8]) -> Result<usize, ()> {
    loop {
        match tcp.try_write(bytes) {
            Ok(0) => return Err(()),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => tcp.writable().await.map_err(|_| ())?,
            Err(_) => return Err(()),
        }
    }
}

/// The socket's receiving half, as client messages.
struct ClientFrames {
    tcp: OwnedReadHalf,
    decoder: Decoder,
    /// When bytes last arrived (any frame, or part of one): the idle timeout counts
    /// from here.
    last_read: Instant,
}

impl ClientFrames {
    /// The next message; `None` once the connection is closed or broken. Safe to
    /// cancel (the control loop selects on it): bytes read are kept in the decoder.
    async fn next(&mut self) -> Option<Result<Incoming, Violation>> {
        loop {
            match self.decoder.next() {
                Ok(Some(message)) => return Some(Ok(message)),
                Err(violation) => return Some(Err(violation)),
                Ok(None) => {}
            }
            if !self.read().await {
                return None;
            }
        }
    }

    /// Waits for bytes and appends them to the decoder; false at the end of the
    /// stream or on an error.
    async fn read(&mut self) -> bool {
        if self.tcp.readable().await.is_err() {
            return false;
        }
        match read_ready(&self.tcp, &mut self.decoder.buf) {
            Ok(0) => false,
            Ok(_) => {
                self.last_read = Instant::now();
                true
            }
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        }
    }

    /// After the server's close frame: reads and discards until the client's close
    /// frame or the end of the stream, whatever the client sends (broken framing and
    /// the rest of an oversized message too), so the socket is never closed with
    /// unread data in it (the kernel would reset it, and the client lose the close
    /// frame).
    async fn discard_until_close(&mut self) {
        let mut broken = false;
        loop {
            if !broken {
                match self.decoder.next() {
                    Ok(Some(Incoming::Close(_))) => return,
                    // The decoder skips an oversized frame and goes on after it.
                    Ok(Some(_)) | Err(Violation::TooLarge) => continue,
                    Ok(None) => {}
                    Err(_) => broken = true,
                }
            }
            if broken {
                self.decoder.clear();
            }
            if !self.read().await {
                return;
            }
        }
    }
}

/// Appends what the socket has ready to `buf`. Reads into a stack buffer, in a
/// function of its own so that it is never part of the connection's future: an idle
/// socket holds no read buffer.
fn read_ready(tcp: &OwnedReadHalf, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut chunk = [0u8; codec::READ_CHUNK];
    let n = tcp.try_read(&mut chunk)?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// How the control loop ended.
enum End {
    /// The server ends the connection: with a close frame saying why, or silently
    /// (the writer, and so the connection, is gone).
    Server(Ending),
    /// The client sent its close frame (with this code): answer it and stop reading.
    Client(Option<u16>),
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

/// Runs a WebSocket to its end over `tcp` (after the handshake; `early` is what the
/// client sent right behind its request). `initial` subscribes at once
/// (`/ws/{channel}`). `_done` is held until every task of the session has finished:
/// graceful shutdown waits for all of them.
pub(crate) async fn run(
    tcp: TcpStream,
    early: Vec<u8>,
    ctx: Arc<SessionContext>,
    principal: Principal,
    initial: Option<SubscribeRequest>,
    _done: mpsc::Sender<()>,
) {
    ctx.metrics.connections.inc();
    let (read, write) = tcp.into_split();
    let mut frames = ClientFrames {
        tcp: read,
        decoder: Decoder::new(MAX_CLIENT_MESSAGE, early),
        last_read: Instant::now(),
    };
    let write = Arc::new(write);
    let conn = Conn::new(write.clone());
    let transport = WebSocketTransport {
        tcp: write,
        buf: Vec::new(),
        sent: 0,
    };
    let (out_tx, out_rx) = queue(&ctx);
    let budget = Budget::new();
    let (close_tx, close_rx) = oneshot::channel();
    let writer = Writer::new(
        transport,
        out_rx,
        out_tx.downgrade(),
        ctx.clone(),
        budget.clone(),
        Some(conn),
    );
    let mut writer = tokio::spawn(writer.run(close_rx));
    let mut session = Session::new(ctx.clone(), principal, out_tx, budget);
    let ending = match initial {
        Some(req) => Box::pin(session.subscribe(req)).await.err().map(End::Server),
        None => None,
    };
    let end = match ending {
        Some(end) => end,
        None => control(&mut session, &mut frames, &mut writer).await,
    };
    let closing = match &end {
        End::Server(closing) => *closing,
        End::Client(code) => Some((code.unwrap_or(close::NORMAL), "")),
    };
    // Before the session (and with it the queue) is dropped: a writer that saw its
    // queue closed first would end without writing the close frame.
    if let Some(closing) = closing {
        let _ = close_tx.send(closing);
    }
    drop(session);
    // Boxed: the end of a connection is short and rare, and would otherwise size
    // every connection's task for its whole life.
    Box::pin(finish(end, frames, writer)).await;
    ctx.metrics.connections.dec();
}

/// After a close frame of the server's, reads (and discards) until the client's own
/// close frame; then gives the writer a moment to finish.
async fn finish(end: End, mut frames: ClientFrames, mut writer: tokio::task::JoinHandle<()>) {
    if let End::Server(Some(_)) = end {
        let _ = tokio::time::timeout(CLOSE_HANDSHAKE, frames.discard_until_close()).await;
    }
    if !writer.is_finished() {
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer).await;
        writer.abort();
    }
}

/// The control loop: client messages, pings, the idle timeout, expiry and shutdown.
async fn control(session: &mut Session, frames: &mut ClientFrames, writer: &mut tokio::task::JoinHandle<()>) -> End {
    let mut inbound = Inbound::new();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
    loop {
        tokio::select! {
            msg = frames.next() => {
                let ending = match msg {
                    Some(Ok(Incoming::Text(t))) => {
                        if !inbound.take() {
                            Some((close::RATE_LIMITED, "too many messages"))
                        } else {
                            // Boxed: a rare path that would otherwise size every
                            // connection's task for its whole life.
                            match Box::pin(on_text(session, &t)).await {
                                Ok(()) => continue,
                                Err(ending) => ending,
                            }
                        }
                    }
                    Some(Ok(Incoming::Binary)) => Some((close::POLICY, "binary frames are not supported")),
                    // Pings count against the same budget: answering each costs a write.
                    Some(Ok(Incoming::Ping(_))) if !inbound.take() => Some((close::RATE_LIMITED, "too many messages")),
                    Some(Ok(Incoming::Ping(payload))) => {
                        session.try_send(Frame::Pong(payload));
                        continue;
                    }
                    // Unsolicited pongs and empty fragments cost the client nothing to
                    // send and the server a decode: they count like messages.
                    Some(Ok(Incoming::Pong | Incoming::EmptyFragment)) if !inbound.take() => {
                        Some((close::RATE_LIMITED, "too many messages"))
                    }
                    Some(Ok(Incoming::Pong | Incoming::EmptyFragment)) => continue,
                    Some(Ok(Incoming::Close(code))) => return End::Client(code),
                    Some(Err(Violation::TooLarge)) => Some((close::POLICY, "message larger than 64 KiB")),
                    Some(Err(Violation::NotUtf8)) => Some((close::INVALID_DATA, "text message is not UTF-8")),
                    Some(Err(Violation::Protocol(why))) => Some((close::PROTOCOL_ERROR, why)),
                    None => None,
                };
                return End::Server(ending);
            }
            _ = ping.tick() => {
                if frames.last_read.elapsed() > IDLE_TIMEOUT {
                    return End::Server(None);
                }
                session.try_send(Frame::Ping);
            }
            closing = session.stopping() => return End::Server(Some(closing)),
            _ = &mut *writer => return End::Server(None),
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
            rate,
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
            if let Err(why) = check_epoch(epoch.as_deref()) {
                return session.refuse(&channel, "bad_epoch", why).await;
            }
            let rate = match FrameRate::parse_json(rate.as_ref()) {
                Ok(rate) => rate,
                Err(why) => return session.refuse(&channel, "bad_rate", why).await,
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
                        rate,
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

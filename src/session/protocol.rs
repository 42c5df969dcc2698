//! The protocol of a subscription, whatever transport carries it (docs/PROTOCOL.md
//! §5): what a client may send, the frames the server sends, the close codes and
//! the limits.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use serde::Deserialize;
use serde_json::json;

use crate::candles::Interval;
use crate::hub::LiveFrame;
use crate::tick::{Since, StreamId};

/// History is read in pages of this many ticks.
pub const REPLAY_PAGE: usize = 1000;
/// Largest client message; larger ones close the socket with 1008.
pub const MAX_CLIENT_MESSAGE: usize = 64 * 1024;
/// Server pings (SSE: keep-alive comments) this often…
pub const PING_INTERVAL: Duration = Duration::from_secs(20);
/// …and drops a WebSocket client silent for this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A connection unwritable for this long is closed (1013).
pub const WRITE_STALL: Duration = Duration::from_secs(10);
/// After the server sends a close frame, it reads (and discards) what the client
/// still sends for up to this long, waiting for the client's own close frame:
/// closing the TCP socket while unread data sits in it makes the kernel reset the
/// connection, and the client would never see the close frame (nor its code).
pub const CLOSE_HANDSHAKE: Duration = Duration::from_secs(2);
/// Subscriptions one connection may hold.
pub const MAX_SUBSCRIPTIONS: usize = 256;
/// Longest `epoch` a client may send. Ours are 8 characters (a rolled-back one a few
/// more); a subscription keeps the client's for its life, so an unbounded one would
/// let a client park megabytes per socket (docs/PROTOCOL.md §5.5).
pub const MAX_EPOCH_CHARS: usize = 64;

/// The client's `epoch`, if it is one we could have sent.
pub fn check_epoch(epoch: Option<&str>) -> Result<(), &'static str> {
    match epoch {
        Some(e) if e.chars().count() > MAX_EPOCH_CHARS => Err("epoch must be at most 64 characters"),
        _ => Ok(()),
    }
}
/// Inbound message budget: a burst of 20, refilled at 10 per second.
pub const INBOUND_BURST: f64 = 20.0;
pub const INBOUND_PER_SEC: f64 = 10.0;

/// WebSocket close codes (docs/PROTOCOL.md §5.6).
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const INTERNAL: u16 = 1011;
    pub const RESTART: u16 = 1012;
    pub const TRY_LATER: u16 = 1013;
    pub const TOKEN_EXPIRED: u16 = 4001;
    pub const FORBIDDEN: u16 = 4003;
    pub const RATE_LIMITED: u16 = 4029;
}

/// Why the server ends a connection: its WebSocket close code and reason.
pub type Closing = (u16, &'static str);

/// What a subscriber asked for.
#[derive(Debug, Clone)]
pub struct SubscribeRequest {
    pub channel: String,
    pub since: Since,
    /// The `seq` of the tick at `since`: makes gap detection exact.
    pub seq: Option<u64>,
    pub epoch: Option<String>,
    /// `since` is an SSE client's `Last-Event-ID`: an id this server sent, so its
    /// `seq` and epoch can be looked up, and an id that no longer exists (and was not
    /// trimmed away) means the stream it came from was lost.
    pub from_event_id: bool,
    /// Live candles of this interval too.
    pub candles: Option<Interval>,
    /// Conflation: at most this many tick frames a second, each the newest.
    pub rate: Option<FrameRate>,
}

/// A subscription's `rate`: at most this many tick frames a second (docs/PROTOCOL.md
/// §5.8), a whole number from 1 to 1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRate(u16);

impl FrameRate {
    pub const MAX: u16 = 1000;
    const BAD: &'static str = "rate must be a whole number from 1 to 1000";

    /// `?rate=` as written: digits only (`+5`, `5.0` and ` 5` are not whole numbers
    /// as a client means them); empty means absent.
    pub fn parse_query(raw: Option<&str>) -> Result<Option<FrameRate>, &'static str> {
        match raw {
            None | Some("") => Ok(None),
            Some(raw) if raw.bytes().all(|b| b.is_ascii_digit()) => {
                raw.parse().ok().and_then(FrameRate::new).map(Some).ok_or(Self::BAD)
            }
            Some(_) => Err(Self::BAD),
        }
    }

    /// A subscribe message's `"rate"`: a JSON integer (`null` means absent; `2.5`,
    /// `"10"` and `-1` are refused).
    pub fn parse_json(value: Option<&serde_json::Value>) -> Result<Option<FrameRate>, &'static str> {
        match value {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v.as_u64().and_then(FrameRate::new).map(Some).ok_or(Self::BAD),
        }
    }

    fn new(n: u64) -> Option<FrameRate> {
        (1..=u64::from(Self::MAX)).contains(&n).then_some(FrameRate(n as u16))
    }

    /// The least time between two tick frames.
    pub fn interval(self) -> Duration {
        Duration::from_micros(1_000_000 / u64::from(self.0))
    }
}

/// A message from a WebSocket client.
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
        #[serde(default)]
        candles: Option<String>,
        /// Checked by [`FrameRate::parse_json`], so a bad value is an `error` frame
        /// `bad_rate` (the socket stays open), not a malformed message.
        #[serde(default)]
        rate: Option<serde_json::Value>,
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

/// What a frame is: its `type`, and over SSE its `event:` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Subscribed,
    Gap,
    Tick,
    Live,
    Error,
    Pong,
    Candle,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Subscribed => "subscribed",
            Kind::Gap => "gap",
            Kind::Tick => "tick",
            Kind::Live => "live",
            Kind::Error => "error",
            Kind::Pong => "pong",
            Kind::Candle => "candle",
        }
    }
}

/// One frame for the client, as a transport takes it. Kept as small as the text it
/// shares (a connection's queue holds blocks of these, idle or not).
#[derive(Debug, Clone)]
pub enum Frame {
    /// A JSON object (every frame but a tick).
    Text { kind: Kind, text: Arc<str> },
    /// A tick from the hub, shared with every subscriber of its channel.
    Tick(LiveFrame),
    /// A tick of a conflated subscription: its own text, which carries `skipped`.
    Sampled(Box<Sampled>),
    /// Keep-alive: a WebSocket ping, an SSE comment.
    Ping,
    /// The answer to a WebSocket client's ping, with its payload.
    Pong(Bytes),
}

impl Frame {
    pub fn json(kind: Kind, value: serde_json::Value) -> Frame {
        Frame::Text {
            kind,
            text: Arc::from(value.to_string()),
        }
    }

    /// Payload bytes, to size a write buffer.
    pub fn payload_len(&self) -> usize {
        match self {
            Frame::Text { text, .. } => text.len(),
            Frame::Tick(frame) => frame.text.len(),
            Frame::Sampled(sampled) => sampled.text.len(),
            Frame::Ping => 0,
            Frame::Pong(payload) => payload.len(),
        }
    }

    pub fn is_tick(&self) -> bool {
        matches!(self, Frame::Tick(_) | Frame::Sampled(_))
    }

    /// The tick frame of a conflated subscription: `tick`'s frame with `"skipped"`
    /// (the channel's ticks between the previous frame's and this one; `null` where
    /// they cannot be counted) as its last member.
    pub fn sampled(tick: &LiveFrame, skipped: Option<u64>) -> Frame {
        let body = tick.text.strip_suffix('}').unwrap_or(&tick.text);
        let mut text = String::with_capacity(body.len() + 32);
        text.push_str(body);
        text.push_str(",\"skipped\":");
        match skipped {
            Some(k) => crate::tick::id::push_digits(&mut text, k, 1),
            None => text.push_str("null"),
        }
        text.push('}');
        Frame::Sampled(Box::new(Sampled {
            tick: tick.clone(),
            text,
        }))
    }
}

/// A conflated tick frame: the hub's tick (its id, for SSE) and this subscription's
/// text of it.
#[derive(Debug, Clone)]
pub struct Sampled {
    pub tick: LiveFrame,
    pub text: String,
}

pub fn subscribed(channel: &str, epoch: Option<&str>, first: Option<StreamId>, last: Option<StreamId>) -> Frame {
    Frame::json(
        Kind::Subscribed,
        json!({
            "type": "subscribed",
            "channel": channel,
            "epoch": epoch,
            "first_id": first.map(|id| id.to_string()),
            "last_id": last.map(|id| id.to_string()),
        }),
    )
}

pub fn live(channel: &str, last_id: StreamId) -> Frame {
    Frame::json(
        Kind::Live,
        json!({"type": "live", "channel": channel, "last_id": last_id.to_string()}),
    )
}

/// An `error` frame: a refused subscribe or refresh (the connection stays open).
pub fn error(channel: &str, code: &str, message: &str) -> Frame {
    Frame::json(
        Kind::Error,
        json!({"type": "error", "code": code, "channel": channel, "message": message}),
    )
}

pub fn pong() -> Frame {
    Frame::json(Kind::Pong, json!({"type": "pong"}))
}

//! WebSocket framing (RFC 6455 §5), the server's side: frames encoded straight into a
//! connection's write buffer, and client frames decoded from its read buffer.
//!
//! Ours rather than a general WebSocket library's, because a fan-out server writes
//! the same small text frame to thousands of sockets: a server frame is unmasked, so
//! encoding it is two to ten header bytes before the shared payload, and a batch of
//! them goes out in one `write` with no per-message state machine, lock or copy into
//! an intermediate message type (docs/BENCHMARKS.md "Own framing"). The decoder is the
//! strict subset a server needs: masked frames only, no extensions, text messages up
//! to [`MAX_CLIENT_MESSAGE`](crate::session::protocol::MAX_CLIENT_MESSAGE).

mod decode;

use axum::body::Bytes;

pub use crate::framing::{encode_close, encode_ping, encode_pong, encode_text};
use crate::framing::{BINARY, CLOSE, CONTINUATION, FIN, PING, PONG, TEXT};

/// A complete message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(String),
    Binary,
    /// To be answered with a pong carrying the same payload.
    Ping(Bytes),
    Pong,
    /// An empty part of a fragmented message: no message yet, but a frame the client
    /// sent for nothing (counted against the inbound budget).
    EmptyFragment,
    /// The client's close frame, with its code if it gave one.
    Close(Option<u16>),
}

/// Why the client's bytes cannot be read as WebSocket frames.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// A message (or a frame of one) beyond the size cap: a policy violation.
    #[error("message too large")]
    TooLarge,
    /// Not valid framing (RFC 6455 §7.4.1: 1002), or a text message that is not
    /// UTF-8 (1007).
    #[error("{0}")]
    Protocol(&'static str),
    #[error("text message is not UTF-8")]
    NotUtf8,
}

pub use decode::{Decoder, READ_CHUNK};

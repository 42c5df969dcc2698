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

/// Opcodes (RFC 6455 §5.2).
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;
const FIN: u8 = 0x80;

/// Appends one unfragmented, unmasked frame.
fn encode(out: &mut Vec<u8>, opcode: u8, payload: &[&[u8]]) {
    let len: usize = payload.iter().map(|p| p.len()).sum();
    out.push(FIN | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    for part in payload {
        out.extend_from_slice(part);
    }
}

pub fn encode_text(out: &mut Vec<u8>, text: &str) {
    encode(out, TEXT, &[text.as_bytes()]);
}

pub fn encode_ping(out: &mut Vec<u8>) {
    encode(out, PING, &[]);
}

pub fn encode_pong(out: &mut Vec<u8>, payload: &[u8]) {
    encode(out, PONG, &[payload]);
}

/// A close frame: the code, then the reason, cut to fit a control frame's 125 bytes.
pub fn encode_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    encode(out, CLOSE, &[&code.to_be_bytes(), &reason.as_bytes()[..end]]);
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_frames_have_the_header_rfc_6455_gives() {
        let mut out = Vec::new();
        encode_text(&mut out, "Hello");
        assert_eq!(out, [0x81, 0x05, b'H', b'e', b'l', b'l', b'o']);
        out.clear();
        encode_text(&mut out, &"x".repeat(256));
        assert_eq!(out[..4], [0x81, 126, 0x01, 0x00]);
        assert_eq!(out.len(), 4 + 256);
        out.clear();
        encode_text(&mut out, &"x".repeat(70_000));
        assert_eq!(out[..10], [0x81, 127, 0, 0, 0, 0, 0, 0x01, 0x11, 0x70]);
        out.clear();
        encode_close(&mut out, 4029, "too many messages");
        assert_eq!(out[..4], [0x88, 19, 0x0f, 0xbd]);
        assert_eq!(&out[4..], b"too many messages");
        out.clear();
        encode_close(&mut out, 1000, &"é".repeat(100));
        assert!(out.len() - 2 <= 125, "a control frame's payload is at most 125 bytes");
        assert!(
            std::str::from_utf8(&out[4..]).is_ok(),
            "the reason is cut at a character"
        );
    }
}

//! WebSocket framing (RFC 6455 §5), the server's side: frames encoded straight into a
//! connection's write buffer, and client frames decoded from its read buffer.
//!
//! Ours rather than a general WebSocket library's, because a fan-out server writes
//! the same small text frame to thousands of sockets: a server frame is unmasked, so
//! encoding it is two to ten header bytes before the shared payload, and a batch of
//! them goes out in one `write` with no per-message state machine, lock or copy into
//! an intermediate message type (docs/BENCHMARKS.md, "Fan-out"). The decoder is the
//! strict subset a server needs: masked frames only, no extensions, text messages up
//! to [`MAX_CLIENT_MESSAGE`](super::protocol::MAX_CLIENT_MESSAGE).

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

/// Decodes client frames from bytes as they arrive.
pub struct Decoder {
    /// Bytes read and not yet decoded. Empty between messages, so an idle socket
    /// holds no read buffer.
    pub buf: Vec<u8>,
    /// The parts so far of a fragmented message, and its opcode.
    partial: Option<(u8, Vec<u8>)>,
    max_message: usize,
}

impl Decoder {
    /// `early`: bytes already read (behind the handshake request).
    pub fn new(max_message: usize, early: Vec<u8>) -> Decoder {
        Decoder {
            buf: early,
            partial: None,
            max_message,
        }
    }

    /// The next complete message in the buffer, if one has arrived.
    pub fn next(&mut self) -> Result<Option<Incoming>, Violation> {
        loop {
            let Some((header, len)) = self.header()? else {
                return Ok(None);
            };
            if self.buf.len() < header + len {
                return Ok(None);
            }
            let first = self.buf[0];
            let mut key = [0u8; 4];
            key.copy_from_slice(&self.buf[header - 4..header]);
            let mut payload: Vec<u8> = self.buf.drain(..header + len).skip(header).collect();
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
            if self.buf.is_empty() {
                // Give back a large message's memory.
                self.buf = Vec::new();
            }
            if let Some(message) = self.message(first & FIN != 0, first & 0x0F, payload)? {
                return Ok(Some(message));
            }
        }
    }

    /// The header's length and the payload's, once the whole header is here.
    fn header(&self) -> Result<Option<(usize, usize)>, Violation> {
        let b = &self.buf;
        if b.len() < 2 {
            return Ok(None);
        }
        if b[0] & 0x70 != 0 {
            return Err(Violation::Protocol("reserved bits set"));
        }
        if b[1] & 0x80 == 0 {
            return Err(Violation::Protocol("client frames must be masked"));
        }
        let opcode = b[0] & 0x0F;
        let (header, len) = match b[1] & 0x7F {
            126 if b.len() < 4 => return Ok(None),
            126 => (8, u64::from(u16::from_be_bytes([b[2], b[3]]))),
            127 if b.len() < 10 => return Ok(None),
            127 => (14, u64::from_be_bytes([b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9]])),
            n => (6, u64::from(n)),
        };
        if opcode >= CLOSE && (len > 125 || b[0] & FIN == 0) {
            return Err(Violation::Protocol("control frames are short and whole"));
        }
        let so_far = self.partial.as_ref().map_or(0, |(_, parts)| parts.len() as u64);
        if len.saturating_add(so_far) > self.max_message as u64 {
            return Err(Violation::TooLarge);
        }
        if b.len() < header {
            return Ok(None);
        }
        Ok(Some((header, len as usize)))
    }

    fn message(&mut self, fin: bool, opcode: u8, payload: Vec<u8>) -> Result<Option<Incoming>, Violation> {
        let (opcode, payload) = match opcode {
            CLOSE => {
                let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                return Ok(Some(Incoming::Close(code)));
            }
            PING => return Ok(Some(Incoming::Ping(Bytes::from(payload)))),
            PONG => return Ok(Some(Incoming::Pong)),
            TEXT | BINARY if self.partial.is_some() => {
                return Err(Violation::Protocol("a new message inside a fragmented one"))
            }
            TEXT | BINARY if !fin => {
                self.partial = Some((opcode, payload));
                return Ok(None);
            }
            TEXT | BINARY => (opcode, payload),
            CONTINUATION => match self.partial.as_mut() {
                None => return Err(Violation::Protocol("a continuation without a message")),
                Some((_, parts)) => {
                    parts.extend_from_slice(&payload);
                    if !fin {
                        return Ok(None);
                    }
                    self.partial.take().unwrap_or_default()
                }
            },
            _ => return Err(Violation::Protocol("unknown opcode")),
        };
        if opcode == BINARY {
            return Ok(Some(Incoming::Binary));
        }
        String::from_utf8(payload)
            .map(|text| Some(Incoming::Text(text)))
            .map_err(|_| Violation::NotUtf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked, as RFC 6455 requires.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        out
    }

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

    #[test]
    fn masked_client_messages_are_decoded_as_they_arrive() {
        let mut d = Decoder::new(64 * 1024, Vec::new());
        let mut bytes = client_frame(0x81, br#"{"type":"ping"}"#);
        bytes.extend(client_frame(0x89, b"hb"));
        let long = "y".repeat(300);
        bytes.extend(client_frame(0x81, long.as_bytes()));
        bytes.extend(client_frame(0x88, &[0x03, 0xe8]));
        // One byte at a time: nothing is decoded before its frame is complete.
        let mut got = Vec::new();
        for b in bytes {
            d.buf.push(b);
            while let Some(m) = d.next().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(
            got,
            [
                Incoming::Text(r#"{"type":"ping"}"#.into()),
                Incoming::Ping(Bytes::from_static(b"hb")),
                Incoming::Text(long),
                Incoming::Close(Some(1000)),
            ]
        );
        assert!(d.buf.is_empty());
    }

    #[test]
    fn fragments_join_into_one_message_around_a_ping() {
        let mut d = Decoder::new(64 * 1024, Vec::new());
        d.buf.extend(client_frame(0x01, b"{\"type\":"));
        d.buf.extend(client_frame(0x89, b""));
        d.buf.extend(client_frame(0x80, b"\"ping\"}"));
        assert_eq!(d.next(), Ok(Some(Incoming::Ping(Bytes::new()))));
        assert_eq!(d.next(), Ok(Some(Incoming::Text(r#"{"type":"ping"}"#.into()))));
        assert_eq!(d.next(), Ok(None));
    }

    #[test]
    fn oversized_unmasked_and_broken_input_is_refused() {
        let mut d = Decoder::new(1024, Vec::new());
        // Refused from the header alone, before the payload is buffered.
        d.buf.extend(&client_frame(0x81, &[b'a'; 2000])[..8]);
        assert_eq!(d.next(), Err(Violation::TooLarge));

        let mut d = Decoder::new(1024, Vec::new());
        d.buf.extend(client_frame(0x01, &[b'a'; 600]));
        d.buf.extend(client_frame(0x80, &[b'a'; 600]));
        assert_eq!(
            d.next(),
            Err(Violation::TooLarge),
            "the cap counts a whole fragmented message"
        );

        let mut d = Decoder::new(1024, Vec::new());
        d.buf.extend([0x81, 0x02, b'h', b'i']);
        assert!(matches!(d.next(), Err(Violation::Protocol(_))), "unmasked");

        let mut d = Decoder::new(1024, Vec::new());
        d.buf.extend(client_frame(0x81, &[0xff, 0xfe]));
        assert_eq!(d.next(), Err(Violation::NotUtf8));

        let mut d = Decoder::new(1024, Vec::new());
        d.buf.extend(client_frame(0x80, b"x"));
        assert!(
            matches!(d.next(), Err(Violation::Protocol(_))),
            "continuation of nothing"
        );

        let mut d = Decoder::new(1024, Vec::new());
        d.buf.extend(client_frame(0x09, b"x"));
        assert!(matches!(d.next(), Err(Violation::Protocol(_))), "fragmented ping");

        let mut d = Decoder::new(1024, Vec::new());
        d.buf.extend(client_frame(0x82, &[1, 2, 3]));
        assert_eq!(d.next(), Ok(Some(Incoming::Binary)));
    }
}

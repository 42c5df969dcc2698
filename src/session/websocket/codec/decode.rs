//! The decoder: client frames out of a socket's read buffer, as bytes arrive,
//! holding at most about one message (docs/PROTOCOL.md §9).

use axum::body::Bytes;

use super::{Incoming, Violation, BINARY, CLOSE, CONTINUATION, FIN, PING, PONG, TEXT};

/// What the session reads from a socket at a time, at most (`src/session/websocket/mod.rs`).
pub const READ_CHUNK: usize = 4096;

/// A frame's unmasked payload: the decoder's whole buffer taken over, or a part of it.
enum Payload<'a> {
    Owned(Vec<u8>),
    Slice(&'a [u8]),
}

impl Payload<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Payload::Owned(v) => v,
            Payload::Slice(s) => s,
        }
    }

    fn into_vec(self) -> Vec<u8> {
        match self {
            Payload::Owned(v) => v,
            Payload::Slice(s) => s.to_vec(),
        }
    }
}

/// Decodes client frames from bytes as they arrive.
pub struct Decoder {
    /// Bytes read and not yet decoded (from `start` on). Empty between messages, so an
    /// idle socket holds no read buffer.
    pub buf: Vec<u8>,
    /// Where the undecoded bytes begin: decoded frames are cut off once per read, not
    /// once per frame, so a read full of tiny frames costs linear time.
    start: usize,
    /// The parts so far of a fragmented message, and its opcode.
    partial: Option<(u8, Vec<u8>)>,
    max_message: usize,
    /// Bytes still to be skipped of a frame refused as too large: after the refusal
    /// the decoder goes on past it, so the client's close frame can still be read.
    skip: u64,
}

impl Decoder {
    /// `early`: bytes already read (behind the handshake request).
    pub fn new(max_message: usize, early: Vec<u8>) -> Decoder {
        Decoder {
            buf: early,
            start: 0,
            partial: None,
            max_message,
            skip: 0,
        }
    }

    /// The next complete message in the buffer, if one has arrived. After `None`,
    /// append what is read next to `buf`.
    // Not an Iterator: "no message yet" and "an error" are both answers here.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Incoming>, Violation> {
        loop {
            if self.skip > 0 {
                let n = (self.buf.len() - self.start).min(usize::try_from(self.skip).unwrap_or(usize::MAX));
                self.start += n;
                self.skip -= n as u64;
                if self.skip > 0 {
                    self.compact();
                    return Ok(None);
                }
            }
            let Some((header, len)) = self.header()? else {
                self.compact();
                return Ok(None);
            };
            // A fragmented message counts whole; a ping between its parts does not
            // add to it.
            let so_far = match (&self.partial, self.buf[self.start] & 0x0F) {
                (Some((_, parts)), CONTINUATION) => parts.len() as u64,
                _ => 0,
            };
            if len.saturating_add(so_far) > self.max_message as u64 {
                self.skip = len.saturating_add(header as u64);
                self.partial = None;
                return Err(Violation::TooLarge);
            }
            let len = len as usize;
            let available = self.buf.len() - self.start;
            if available < header + len {
                self.compact();
                // Room for exactly the rest of this frame and one read past it: a
                // growing Vec would double its capacity, and a socket would hold up to
                // twice the message cap.
                self.buf.reserve_exact(header + len - available + READ_CHUNK);
                return Ok(None);
            }
            let first = self.buf[self.start];
            let mut key = [0u8; 4];
            key.copy_from_slice(&self.buf[self.start + header - 4..self.start + header]);
            let body = self.start + header..self.start + header + len;
            for (i, b) in self.buf[body.clone()].iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
            self.start = body.end;
            let message = if self.start == self.buf.len() && body.start == header {
                // The frame is the whole buffer (the usual case): its bytes become the
                // payload without a copy, and the socket holds no read buffer after.
                let mut payload = std::mem::take(&mut self.buf);
                payload.drain(..header);
                self.start = 0;
                self.message(first & FIN != 0, first & 0x0F, Payload::Owned(payload))?
            } else {
                let buf = std::mem::take(&mut self.buf);
                let message = self.message(first & FIN != 0, first & 0x0F, Payload::Slice(&buf[body]));
                self.buf = buf;
                if self.start == self.buf.len() {
                    // Give back a large message's memory.
                    self.buf = Vec::new();
                    self.start = 0;
                }
                message?
            };
            if let Some(message) = message {
                return Ok(Some(message));
            }
        }
    }

    /// Bytes this decoder holds now (its read buffer and a fragmented message so
    /// far): at most the message cap, one frame header and one read beside it.
    pub fn held(&self) -> usize {
        self.buf.capacity() + self.partial.as_ref().map_or(0, |(_, parts)| parts.capacity())
    }

    /// Forgets everything undecoded (after a violation, when what follows is only
    /// read to be discarded).
    pub fn clear(&mut self) {
        self.buf = Vec::new();
        self.start = 0;
        self.partial = None;
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
            // A large frame's room is not kept for the small ones behind it (while a
            // fragmented message grows beside them).
            if self.buf.capacity() > 2 * READ_CHUNK && self.buf.len() < self.buf.capacity() / 2 {
                self.buf.shrink_to(self.buf.len() + READ_CHUNK);
            }
        }
    }

    /// The header's length and the payload's, once the whole header is here (the
    /// payload's length as sent: checked against the cap by the caller).
    fn header(&self) -> Result<Option<(usize, u64)>, Violation> {
        let b = &self.buf[self.start..];
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
        if b.len() < header && len <= self.max_message as u64 {
            return Ok(None);
        }
        Ok(Some((header, len)))
    }

    fn message(&mut self, fin: bool, opcode: u8, payload: Payload<'_>) -> Result<Option<Incoming>, Violation> {
        let (opcode, payload) = match opcode {
            CLOSE => {
                let payload = payload.bytes();
                let code = match payload.len() {
                    0 => None,
                    1 => return Err(Violation::Protocol("a close frame of one byte")),
                    _ => Some(u16::from_be_bytes([payload[0], payload[1]])),
                };
                // The codes an endpoint may send (RFC 6455 §7.4.1, and 1012–1014 since).
                if code.is_some_and(|c| !matches!(c, 1000..=1003 | 1007..=1014 | 3000..=4999)) {
                    return Err(Violation::Protocol("an invalid close code"));
                }
                if std::str::from_utf8(payload.get(2..).unwrap_or_default()).is_err() {
                    return Err(Violation::NotUtf8);
                }
                return Ok(Some(Incoming::Close(code)));
            }
            PING => return Ok(Some(Incoming::Ping(Bytes::copy_from_slice(payload.bytes())))),
            PONG => return Ok(Some(Incoming::Pong)),
            TEXT | BINARY if self.partial.is_some() => {
                return Err(Violation::Protocol("a new message inside a fragmented one"))
            }
            TEXT | BINARY if !fin => {
                let empty = payload.bytes().is_empty();
                let mut first = payload.into_vec();
                // A buffer taken over keeps the room of the reads around it; the
                // message's parts keep only their own bytes.
                first.shrink_to_fit();
                self.partial = Some((opcode, first));
                return Ok(empty.then_some(Incoming::EmptyFragment));
            }
            TEXT | BINARY => (opcode, payload.into_vec()),
            CONTINUATION => match self.partial.as_mut() {
                None => return Err(Violation::Protocol("a continuation without a message")),
                Some((_, parts)) => {
                    // Exactly what this part adds (the total is capped, the capacity too).
                    parts.reserve_exact(payload.bytes().len());
                    parts.extend_from_slice(payload.bytes());
                    if !fin {
                        // An empty part costs the client nothing to send: it counts
                        // against the inbound budget like a message.
                        return Ok(payload.bytes().is_empty().then_some(Incoming::EmptyFragment));
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

    /// Feeds `bytes` in reads of at most 4 KiB (as the session reads) and returns
    /// the messages and the most the decoder held at any point.
    fn feed(decoder: &mut Decoder, bytes: &[u8]) -> (Vec<Incoming>, usize) {
        let mut out = Vec::new();
        let mut most = decoder.held();
        for chunk in bytes.chunks(4096) {
            decoder.buf.extend_from_slice(chunk);
            most = most.max(decoder.held());
            while let Some(m) = decoder.next().expect("valid framing") {
                out.push(m);
            }
            most = most.max(decoder.held());
        }
        (out, most)
    }

    #[test]
    fn a_socket_decoder_holds_about_one_message_at_most() {
        const CAP: usize = 64 * 1024;
        let bound = CAP + 2 * READ_CHUNK + 14;
        // A whole 64 KiB message, then one in 16 fragments, then one whose last frame
        // is 60 KiB behind 4 KiB of parts: each decoded, never more than the bound held.
        let text = "x".repeat(CAP);
        let mut bytes = client_frame(0x81, text.as_bytes());
        let parts: Vec<&[u8]> = text.as_bytes().chunks(CAP / 16).collect();
        for (i, part) in parts.iter().enumerate() {
            let first = match (i, i + 1 == parts.len()) {
                (0, _) => 0x01,
                (_, true) => 0x80,
                _ => 0x00,
            };
            bytes.extend(client_frame(first, part));
        }
        bytes.extend(client_frame(0x01, &text.as_bytes()[..4096]));
        bytes.extend(client_frame(0x80, &text.as_bytes()[4096..]));
        let mut d = Decoder::new(CAP, Vec::new());
        let (messages, most) = feed(&mut d, &bytes);
        assert_eq!(messages.len(), 3);
        assert!(messages.iter().all(|m| *m == Incoming::Text(text.clone())));
        assert!(most <= bound, "held {most} bytes (bound {bound})");
        assert_eq!(d.held(), 0, "nothing held between messages");
    }

    /// The fuzz target's loop (fuzz/fuzz_targets/ws_codec.rs) over its seeds, one of
    /// them the input that found a first fragment keeping its read buffer's room.
    #[test]
    fn the_fuzz_seeds_stay_within_the_bound() {
        const CAP: usize = 1024;
        for data in [
            &include_bytes!("../../../../fuzz/seeds/ws_codec/fragmented.bin")[..],
            &include_bytes!("../../../../fuzz/seeds/ws_codec/regression-held-over-bound.bin")[..],
        ] {
            let (&split, bytes) = data.split_first().unwrap();
            let mut d = Decoder::new(CAP, Vec::new());
            'reads: for chunk in bytes.chunks(usize::from(split).clamp(1, READ_CHUNK)) {
                d.buf.extend_from_slice(chunk);
                loop {
                    match d.next() {
                        Ok(Some(_)) | Err(Violation::TooLarge) => {}
                        Ok(None) => break,
                        Err(_) => break 'reads,
                    }
                    assert!(d.held() <= CAP + 2 * READ_CHUNK + 14, "held {}", d.held());
                }
                assert!(d.held() <= CAP + 2 * READ_CHUNK + 14, "held {}", d.held());
            }
        }
    }

    #[test]
    fn empty_fragments_are_reported_so_they_can_be_counted() {
        let mut bytes = client_frame(0x01, b"");
        for _ in 0..3 {
            bytes.extend(client_frame(0x00, b""));
        }
        bytes.extend(client_frame(0x80, b"{}"));
        let mut d = Decoder::new(1024, Vec::new());
        let (messages, _) = feed(&mut d, &bytes);
        assert_eq!(messages.len(), 5);
        assert!(messages[..4].iter().all(|m| *m == Incoming::EmptyFragment));
        assert_eq!(messages[4], Incoming::Text("{}".into()));
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

        for (what, body) in [
            ("one byte", &[0x03][..]),
            ("code 1005", &[0x03, 0xed]),
            ("code 5000", &[0x13, 0x88]),
        ] {
            let mut d = Decoder::new(1024, Vec::new());
            d.buf.extend(client_frame(0x88, body));
            assert!(matches!(d.next(), Err(Violation::Protocol(_))), "close frame: {what}");
        }
        let mut d = Decoder::new(1024, Vec::new());
        d.buf.extend(client_frame(0x88, &[0x03, 0xe8, 0xff]));
        assert_eq!(d.next(), Err(Violation::NotUtf8), "a close reason that is not UTF-8");
    }

    #[test]
    fn after_an_oversized_frame_the_client_s_close_frame_is_still_read() {
        let mut d = Decoder::new(1024, Vec::new());
        let big = client_frame(0x81, &[b'a'; 5000]);
        d.buf.extend(&big[..100]);
        assert_eq!(d.next(), Err(Violation::TooLarge));
        // The rest of it arrives in pieces, then the close frame.
        for piece in big[100..].chunks(700) {
            d.buf.extend(piece);
            assert_eq!(d.next(), Ok(None));
        }
        d.buf.extend(client_frame(0x88, &1008u16.to_be_bytes()));
        assert_eq!(d.next(), Ok(Some(Incoming::Close(Some(1008)))));
    }

    #[test]
    fn a_ping_inside_a_message_near_the_cap_is_not_counted_with_it() {
        let mut d = Decoder::new(1024, Vec::new());
        d.buf.extend(client_frame(0x01, &[b'a'; 1000]));
        d.buf.extend(client_frame(0x89, &[b'p'; 100]));
        d.buf.extend(client_frame(0x80, &[b'a'; 24]));
        assert_eq!(d.next(), Ok(Some(Incoming::Ping(Bytes::from(vec![b'p'; 100])))));
        assert_eq!(d.next(), Ok(Some(Incoming::Text("a".repeat(1024)))));
    }

    #[test]
    fn a_read_of_many_tiny_frames_decodes_every_one() {
        let mut d = Decoder::new(1024, Vec::new());
        for _ in 0..10_000 {
            d.buf.extend(client_frame(0x8A, b""));
        }
        let mut n = 0;
        while let Ok(Some(Incoming::Pong)) = d.next() {
            n += 1;
        }
        assert_eq!(n, 10_000);
        assert!(d.buf.is_empty());
    }
}

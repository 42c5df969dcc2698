//! Server frames of the WebSocket protocol (RFC 6455 §5), encoded: unmasked, so one
//! encoded frame serves every socket. The WebSocket transport (`session/websocket/`)
//! encodes a connection's own frames with these, and the hub's direct path
//! (`hub/direct.rs`) a channel's batch of ticks once for all its subscribers.

/// Opcodes (RFC 6455 §5.2).
pub(crate) const CONTINUATION: u8 = 0x0;
pub(crate) const TEXT: u8 = 0x1;
pub(crate) const BINARY: u8 = 0x2;
pub(crate) const CLOSE: u8 = 0x8;
pub(crate) const PING: u8 = 0x9;
pub(crate) const PONG: u8 = 0xA;
pub(crate) const FIN: u8 = 0x80;

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

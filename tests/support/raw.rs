//! A WebSocket client's bytes written by hand (RFC 6455), for what a library client
//! hides: framing edge cases, and sockets that read slowly through a small buffer.

/// A masked client frame with first byte `first` (FIN and opcode).
pub fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0xa1, 0x02, 0x7c, 0x55];
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

/// The upgrade request for `path` on `host`, authorized by `token`.
pub fn upgrade_request(host: &str, path: &str, token: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    )
    .into_bytes()
}

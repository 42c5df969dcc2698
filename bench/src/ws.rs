//! A WebSocket client that costs far less per frame than any server it measures: it
//! reads into one reusable buffer per connection and hands out each frame in place,
//! with no allocation and no JSON parsing (scenarios scan the few fields they need).

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Initial read buffer; grows for a frame larger than it.
const BUFFER: usize = 64 * 1024;

pub struct Ws {
    tcp: TcpStream,
    buf: Vec<u8>,
    /// Unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    mask: u32,
}

/// One frame from the server, borrowed from the client's buffer.
pub enum Frame<'a> {
    Text(&'a [u8]),
    /// The server closed (its code, if any).
    Close(Option<u16>),
    /// Ping, pong or binary: nothing a scenario reads.
    Other,
}

/// `host:port` of an `http://host:port` URL.
pub fn host_of(url: &str) -> &str {
    url.trim_start_matches("http://").trim_end_matches('/')
}

impl Ws {
    /// Opens `path` with a bearer token; `Err` carries the refusal's status line.
    pub async fn connect(url: &str, path: &str, token: &str) -> io::Result<Ws> {
        let host = host_of(url);
        let mut tcp = TcpStream::connect(host).await?;
        tcp.set_nodelay(true)?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Authorization: Bearer {token}\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await?;
        let mut ws = Ws {
            tcp,
            buf: vec![0; BUFFER],
            start: 0,
            end: 0,
            mask: rand::random::<u32>() | 1,
        };
        let head_end = loop {
            if let Some(i) = ws.buf[..ws.end].windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if ws.end == ws.buf.len() || ws.fill().await? == 0 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "no handshake answer"));
            }
        };
        let status_line =
            String::from_utf8_lossy(&ws.buf[..ws.buf[..head_end].iter().position(|b| *b == b'\r').unwrap_or(0)])
                .to_string();
        if !status_line.contains(" 101 ") {
            return Err(io::Error::other(status_line));
        }
        ws.start = head_end;
        Ok(ws)
    }

    /// Reads more bytes after `end`; 0 at end of stream.
    async fn fill(&mut self) -> io::Result<usize> {
        let end = self.end;
        let n = self.tcp.read(&mut self.buf[end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// The next frame already in the buffer, if a whole one is there; no I/O (pings
    /// are passed over unanswered: for the fan-out scenarios, which end long before
    /// a server drops a silent client).
    pub fn buffered(&mut self) -> Option<Frame<'_>> {
        let (header, len, opcode) = self.parse()?;
        let from = self.start + header;
        self.start = from + len;
        let payload = &self.buf[from..from + len];
        Some(match opcode {
            0x1 => Frame::Text(payload),
            0x8 => Frame::Close((payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))),
            _ => Frame::Other,
        })
    }

    /// Reads more from the socket into the buffer; `false` at end of stream.
    /// Cancel-safe. Makes room first: what is unread moves to the front, and the
    /// buffer grows for a frame larger than it.
    pub async fn read_more(&mut self) -> io::Result<bool> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        Ok(self.fill().await? > 0)
    }

    /// The next frame. Cancel-safe: bytes read before a cancellation stay buffered.
    pub async fn next(&mut self) -> io::Result<Frame<'_>> {
        loop {
            if let Some((header, len, opcode)) = self.parse() {
                let from = self.start + header;
                self.start = from + len;
                let payload = from..from + len;
                return Ok(match opcode {
                    0x1 => Frame::Text(&self.buf[payload]),
                    0x8 => {
                        let p = &self.buf[payload];
                        Frame::Close((p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]])))
                    }
                    0x9 => {
                        let p = self.buf[payload].to_vec();
                        self.send(0xA, &p).await?;
                        Frame::Other
                    }
                    _ => Frame::Other,
                });
            }
            if !self.read_more().await? {
                return Ok(Frame::Close(None));
            }
        }
    }

    /// A whole frame at `start`: (header length, payload length, opcode).
    fn parse(&self) -> Option<(usize, usize, u8)> {
        let b = &self.buf[self.start..self.end];
        if b.len() < 2 {
            return None;
        }
        let opcode = b[0] & 0x0f;
        let (len, header) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => (
                usize::try_from(u64::from_be_bytes([b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9]])).ok()?,
                10,
            ),
            126 | 127 => return None,
            n => (usize::from(n), 2),
        };
        (b.len() >= header + len).then_some((header, len, opcode))
    }

    /// Sends a text frame (masked, as a client must).
    pub async fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.send(0x1, text.as_bytes()).await
    }

    async fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(payload.len() + 8);
        frame.push(0x80 | opcode);
        if payload.len() < 126 {
            frame.push(0x80 | payload.len() as u8);
        } else {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(payload.len().min(65535) as u16).to_be_bytes());
        }
        // A fresh key per frame (xorshift), as the protocol asks of clients.
        self.mask ^= self.mask << 13;
        self.mask ^= self.mask >> 17;
        self.mask ^= self.mask << 5;
        let key = self.mask.to_be_bytes();
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        self.tcp.write_all(&frame).await
    }

    /// Sends a close frame (best effort).
    pub async fn close(mut self) {
        let _ = self.send(0x8, &1000u16.to_be_bytes()).await;
    }
}

/// A numeric member looked for in frames, `"name":<digits>`: its searcher is built once
/// (SIMD substring search), so scanning a frame costs a few nanoseconds per field.
pub struct Field(memchr::memmem::Finder<'static>);

impl Field {
    /// `key` is the member with its quotes and colon, e.g. `"seq":`.
    pub fn new(key: &'static [u8]) -> Field {
        Field(memchr::memmem::Finder::new(key))
    }

    /// The member's digits in `frame`, read in place.
    pub fn number(&self, frame: &[u8]) -> Option<u64> {
        digits(&frame[self.position(frame)?..])
    }

    /// Where the member's value starts in `text`.
    pub fn position(&self, text: &[u8]) -> Option<usize> {
        Some(self.0.find(text)? + self.0.needle().len())
    }
}

/// The leading digits of `text` as a number.
pub fn digits(text: &[u8]) -> Option<u64> {
    let mut n: u64 = 0;
    let mut any = false;
    for b in text {
        if !b.is_ascii_digit() {
            break;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        any = true;
    }
    any.then_some(n)
}

/// Whether a frame is a tick (the server writes `type` first in tick frames).
pub fn is_tick(frame: &[u8]) -> bool {
    frame.starts_with(b"{\"type\":\"tick\"")
}

/// Whether a frame is of `type` (other frames have sorted keys: `type` is last).
pub fn is_type(frame: &[u8], ty: &[u8]) -> bool {
    frame
        .windows(ty.len() + 9)
        .any(|w| w.starts_with(b"\"type\":\"") && &w[8..8 + ty.len()] == ty && w[8 + ty.len()] == b'"')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_scanned_in_place() {
        let f = br#"{"type":"tick","id":"1-0","seq":4711,"data":{"sent_us":1795420800123456}}"#;
        assert!(is_tick(f));
        assert_eq!(Field::new(b"\"seq\":").number(f), Some(4711));
        assert_eq!(Field::new(b"\"sent_us\":").number(f), Some(1795420800123456));
        assert_eq!(Field::new(b"\"nope\":").number(f), None);
        assert_eq!(Field::new(b"\"id\":").number(f), None);
        let live = br#"{"channel":"c","last_id":"1-0","type":"live"}"#;
        assert!(!is_tick(live));
        assert!(is_type(live, b"live"));
        assert!(!is_type(live, b"lives"));
        assert!(!is_type(live, b"subscribed"));
    }
}

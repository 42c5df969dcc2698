//! The server's own WebSocket framing (src/session/websocket/codec/) seen from a raw TCP
//! client, for what a library client hides: bytes sent right behind the handshake,
//! pings with a payload, fragmented messages, the echo of a client's close code, and
//! the close codes for broken framing (docs/PROTOCOL.md §5.6).

mod support;

use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use sha1::{Digest, Sha1};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// A WebSocket client that writes frames byte by byte as RFC 6455 says.
struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
}

/// A server frame: its first byte (FIN and opcode) and payload.
#[derive(Debug)]
struct ServerFrame {
    first: u8,
    payload: Vec<u8>,
}

impl ServerFrame {
    fn json(&self) -> Value {
        assert_eq!(self.first, 0x81, "a whole text frame");
        serde_json::from_slice(&self.payload).expect("JSON text")
    }

    fn close_code(&self) -> u16 {
        assert_eq!(self.first, 0x88, "a close frame: {self:?}");
        u16::from_be_bytes([self.payload[0], self.payload[1]])
    }
}

/// A masked client frame.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    raw::client_frame(first, payload)
}

impl Raw {
    /// Sends the upgrade request and `early` in one write, and checks the `101`.
    async fn connect(app: &TestApp, path: &str, early: &[u8]) -> Raw {
        let addr = app
            .url("")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let mut tcp = TcpStream::connect(&addr).await.expect("connect");
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let mut request = raw::upgrade_request(&addr, path, &token(&["*"]));
        request.extend_from_slice(early);
        tcp.write_all(&request).await.expect("write");
        let mut raw = Raw { tcp, buf: Vec::new() };
        let head = loop {
            if let Some(end) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(raw.buf[..end].to_vec()).expect("ASCII headers");
                raw.buf.drain(..end + 4);
                break head;
            }
            raw.fill().await;
        };
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let mut sha1 = Sha1::new();
        sha1.update(format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes());
        let accept = base64::engine::general_purpose::STANDARD.encode(sha1.finalize());
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("sec-websocket-accept: {}", accept.to_ascii_lowercase())),
            "{head}"
        );
        raw
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
            .await
            .expect("the server answers in time")
            .expect("read");
        assert!(n > 0, "the server closed the socket early");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.expect("write");
    }

    async fn next(&mut self) -> ServerFrame {
        loop {
            if self.buf.len() >= 2 {
                assert_eq!(self.buf[1] & 0x80, 0, "server frames are unmasked");
                let (header, len) = match self.buf[1] {
                    126 if self.buf.len() >= 4 => (4, usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]]))),
                    126 => (usize::MAX, 0),
                    n => (2, usize::from(n)),
                };
                if header != usize::MAX && self.buf.len() >= header + len {
                    let payload = self.buf[header..header + len].to_vec();
                    let first = self.buf[0];
                    self.buf.drain(..header + len);
                    return ServerFrame { first, payload };
                }
            }
            self.fill().await;
        }
    }

    /// Reads frames until a text frame of this `type`.
    async fn until_type(&mut self, ty: &str) -> Value {
        loop {
            let f = self.next().await;
            if f.first == 0x81 && f.json()["type"] == ty {
                return f.json();
            }
        }
    }

    /// After the close frames, the server ends the TCP connection at once and in
    /// order (a FIN, never a reset: a reset can make a client lose the close frame).
    async fn closed(&mut self, what: &str) {
        let mut chunk = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(1), self.tcp.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("{what}: the server hangs up at once after the client's close"));
        assert_eq!(
            n.map_err(|e| e.kind()),
            Ok(0),
            "{what}: an orderly end, nothing after the close frame"
        );
        // A server that hung up with unread bytes in its socket made its kernel send a
        // reset after the FIN; it leaves an error on this socket.
        // Not a condition: this waits for something that must *not* come (a reset),
        // so a window has to pass before looking.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            self.tcp.take_error().expect("socket error").is_none(),
            "{what}: a reset"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_clients_get_rfc_6455_framing() {
    let app = TestApp::start(config(None)).await;
    app.ingest_one("raw.a", 1.0).await;

    // A subscribe and a ping with a payload in the same write as the handshake.
    let mut early = frame(0x81, br#"{"type":"subscribe","channel":"raw.a","since":"0"}"#);
    early.extend(frame(0x89, b"hb-1"));
    let mut ws = Raw::connect(&app, "/ws", &early).await;
    let mut pong = None;
    let mut types = Vec::new();
    while !types.contains(&"live".to_string()) || pong.is_none() {
        let f = ws.next().await;
        match f.first {
            0x8A => pong = Some(f.payload),
            0x81 => types.push(f.json()["type"].as_str().unwrap_or_default().to_string()),
            other => panic!("unexpected frame {other:#x}"),
        }
    }
    assert_eq!(pong.as_deref(), Some(&b"hb-1"[..]), "a pong carries the ping's payload");
    assert_eq!(types, ["subscribed", "tick", "live"], "the early subscribe was read");

    // A live tick arrives as one text frame; a message in three fragments is one message.
    app.ingest_one("raw.a", 2.0).await;
    assert_eq!(ws.until_type("tick").await["value"], 2.0);
    let mut fragmented = frame(0x01, br#"{"ty"#);
    fragmented.extend(frame(0x89, b""));
    fragmented.extend(frame(0x00, br#"pe":"pi"#));
    fragmented.extend(frame(0x80, br#"ng"}"#));
    ws.send(&fragmented).await;
    assert_eq!(
        ws.next().await.first,
        0x8A,
        "the ping between fragments is answered first"
    );
    assert_eq!(ws.next().await.json()["type"], "pong");

    // The client closes: the server answers with the client's code and hangs up.
    ws.send(&frame(0x88, &4000u16.to_be_bytes())).await;
    assert_eq!(ws.next().await.close_code(), 4000);
    ws.closed("the client's close").await;

    // Broken framing is named by its close code.
    for (what, bytes, code) in [
        ("an unmasked frame", vec![0x81, 0x02, b'h', b'i'], 1002),
        ("text that is not UTF-8", frame(0x81, &[0xff, 0xfe, 0xfd]), 1007),
        ("a continuation of nothing", frame(0x80, b"x"), 1002),
        ("a binary message", frame(0x82, &[1, 2, 3]), 1008),
        (
            "a message over 64 KiB",
            frame(
                0x81,
                format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(100_000)).as_bytes(),
            ),
            1008,
        ),
        (
            "a fragmented message over 64 KiB",
            {
                let mut b = frame(0x01, &[b' '; 40_000]);
                b.extend(frame(0x80, &[b' '; 40_000]));
                b
            },
            1008,
        ),
        (
            "a close frame with code 1005",
            frame(0x88, &1005u16.to_be_bytes()),
            1002,
        ),
    ] {
        let mut ws = Raw::connect(&app, "/ws", &[]).await;
        ws.send(&bytes).await;
        let f = ws.next().await;
        assert_eq!(f.close_code(), code, "{what}");
        // The server reads on (the rest of an oversized message included) until the
        // client's close frame, so the socket ends with nothing unread: a FIN.
        ws.send(&frame(0x88, &code.to_be_bytes())).await;
        ws.closed(what).await;
    }
    app.stop().await;
}

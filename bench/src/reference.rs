//! The reference: a fan-out server that does nothing but fan out, speaking just enough
//! of tickstream's protocol for the fan-out, idle and handshake scenarios (ingest
//! `POST`, `/ws/{channel}`, `/healthz`, `/metrics/system`), and for the history
//! scenario `GET /api/v1/channels/{channel}/ticks`, which answers one fixed page of
//! 1,000 ticks, encoded once, shaped and sized like tickstream's page of the ticks
//! that scenario stores: the least work an HTTP history endpoint can do.
//!
//! It does not conflate: a `rate` in the URL is ignored and every tick is sent.
//!
//! Each ingest batch is encoded once, as WebSocket frames in one buffer per channel,
//! and that buffer is written to each subscriber's socket straight from the ingest
//! request, one non-blocking write each (a subscriber whose socket is full gets the
//! rest from a task of its own): the least work a fan-out can do. Run against it, the bench shows its own ceiling, and beside it what
//! tickstream's extra work (storage, the ring, cursors, gaps) costs.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// A subscriber's socket, written directly while it keeps up.
struct Subscriber {
    write: OwnedWriteHalf,
    /// What could not be written at once (in order), and whether its task is writing
    /// it: while either holds, new batches queue behind.
    backlog: Mutex<(VecDeque<Arc<Vec<u8>>>, bool)>,
    wake: Notify,
    gone: std::sync::atomic::AtomicBool,
}

impl Subscriber {
    fn send(&self, frames: &Arc<Vec<u8>>) {
        let mut backlog = self.backlog.lock().unwrap_or_else(|e| e.into_inner());
        if backlog.0.is_empty() && !backlog.1 {
            match self.write.try_write(frames) {
                Ok(n) if n == frames.len() => return,
                Ok(n) => backlog.0.push_back(Arc::new(frames[n..].to_vec())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => backlog.0.push_back(frames.clone()),
                Err(_) => {
                    self.gone.store(true, std::sync::atomic::Ordering::Release);
                    return;
                }
            }
        } else {
            backlog.0.push_back(frames.clone());
        }
        backlog.1 = true;
        self.wake.notify_one();
    }
}

#[derive(Default)]
struct Channel {
    seq: u64,
    subscribers: Vec<Arc<Subscriber>>,
}

#[derive(Default)]
struct State {
    channels: Mutex<HashMap<String, Channel>>,
}

pub async fn serve(listen: &str) -> io::Result<()> {
    // The server's own backlog (src/lib.rs `LISTEN_BACKLOG`), so a storm measures
    // the same kernel queue against both.
    let addr: std::net::SocketAddr = listen
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{listen}: {e}")))?;
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(65_535)?;
    eprintln!("tickstream-bench reference listening on {}", listener.local_addr()?);
    let state = Arc::new(State::default());
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(connection(tcp, state.clone()));
    }
}

/// A WebSocket frame header for an unmasked server frame of `len` bytes.
fn frame_header(out: &mut Vec<u8>, opcode: u8, len: usize) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if len <= 65535 {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

fn text_frame(out: &mut Vec<u8>, text: &str) {
    frame_header(out, 0x1, text.len());
    out.extend_from_slice(text.as_bytes());
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

struct Request {
    method: String,
    path: String,
    ws_key: Option<String>,
    body: Vec<u8>,
}

/// Reads one request (head and body) from `buf` and the socket; `None` at EOF.
async fn read_request(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<Request>> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split_whitespace();
    let method = first.next().unwrap_or_default().to_string();
    let path = first.next().unwrap_or_default().to_string();
    let (mut length, mut ws_key) = (0usize, None);
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse().unwrap_or(0),
                "sec-websocket-key" => ws_key = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    buf.drain(..head_end);
    while buf.len() < length {
        let mut chunk = vec![0u8; length - buf.len()];
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf.drain(..length).collect();
    Ok(Some(Request {
        method,
        path,
        ws_key,
        body,
    }))
}

async fn answer(tcp: &mut TcpStream, status: &str, content_type: &str, body: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await?;
    tcp.write_all(body.as_bytes()).await
}

async fn connection(mut tcp: TcpStream, state: Arc<State>) -> io::Result<()> {
    let mut buf = Vec::new();
    while let Some(req) = read_request(&mut tcp, &mut buf).await? {
        let path = req.path.split('?').next().unwrap_or_default().to_string();
        match (req.method.as_str(), path.as_str(), &req.ws_key) {
            ("GET", p, Some(key)) if p.starts_with("/ws/") => {
                let channel = p.trim_start_matches("/ws/").to_string();
                return websocket(tcp, state, channel, key.clone()).await;
            }
            ("POST", "/api/v1/ingest", _) => {
                let body = ingest(&state, &req.body);
                answer(&mut tcp, "201 Created", "application/json", &body).await?;
            }
            ("GET", p, None) if p.starts_with("/api/v1/channels/") && p.ends_with("/ticks") => {
                answer(&mut tcp, "200 OK", "application/json", history_page()).await?
            }
            ("GET", "/healthz", _) => answer(&mut tcp, "200 OK", "application/json", r#"{"status":"ok"}"#).await?,
            ("GET", "/metrics/system", _) => {
                let text = format!(
                    "process_resident_memory_bytes {}\nprocess_cpu_seconds_total {}\n",
                    rss(),
                    crate::report::process_cpu()
                );
                answer(&mut tcp, "200 OK", "text/plain", &text).await?;
            }
            _ => {
                answer(
                    &mut tcp,
                    "404 Not Found",
                    "application/json",
                    r#"{"error":"not_found"}"#,
                )
                .await?
            }
        }
    }
    Ok(())
}

/// The fixed history page: 1,000 ticks as tickstream writes them (id, channel,
/// ingest time, seq, a 12-character epoch, then the stored body with its 64-digit
/// event id) for the history scenario's ticks: the same size, within a few bytes a
/// tick (the bench reports `page_bytes` for both).
fn history_page() -> &'static str {
    static PAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PAGE.get_or_init(|| {
        let mut page = String::from(r#"{"channel":"bench.history.0123abcd","ticks":["#);
        for i in 0..1000u64 {
            if i > 0 {
                page.push(',');
            }
            page.push_str(&format!(
                concat!(
                    r#"{{"id":"1796083200{i:03}-0","channel":"bench.history.0123abcd","#,
                    r#""ingest_ts":"2026-12-01T00:00:00.{i:03}Z","seq":{seq},"epoch":"k3v9q2xa7m1p","#,
                    r#""ts":"2026-11-30T00:{m:02}:{s:02}.000Z","value":{i},"#,
                    r#""data":{{"bid":{i},"ask":{ask},"volume":1}},"event_id":"{i:064x}"}}"#
                ),
                i = i,
                seq = i + 1,
                m = i / 60,
                s = i % 60,
                ask = i + 1,
            ));
        }
        page.push_str(r#"],"epoch":"k3v9q2xa7m1p","next":"1796083200999-0"}"#);
        page
    })
}

fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

/// Encodes the batch's ticks once per channel and hands each channel's buffer to its
/// subscribers.
fn ingest(state: &State, body: &[u8]) -> String {
    let ticks = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(ticks)) => ticks,
        Ok(one @ Value::Object(_)) => vec![one],
        _ => Vec::new(),
    };
    let ms = crate::now_us() / 1000;
    let mut channels = state.channels.lock().unwrap_or_else(|e| e.into_inner());
    let mut batches: HashMap<String, Vec<u8>> = HashMap::new();
    let mut results = Vec::with_capacity(ticks.len());
    for (n, tick) in ticks.iter().enumerate() {
        let name = tick["channel"].as_str().unwrap_or_default();
        let channel = channels.entry(name.to_string()).or_default();
        channel.seq += 1;
        let id = format!("{ms}-{n}");
        let text = format!(
            r#"{{"type":"tick","id":"{id}","seq":{},"epoch":"reference","channel":"{name}","value":{},"data":{}}}"#,
            channel.seq, tick["value"], tick["data"]
        );
        text_frame(batches.entry(name.to_string()).or_default(), &text);
        results.push(format!(r#"{{"id":"{id}","event_id":"","duplicate":false}}"#));
    }
    for (name, frames) in batches {
        if let Some(channel) = channels.get_mut(&name) {
            let frames = Arc::new(frames);
            channel
                .subscribers
                .retain(|s| !s.gone.load(std::sync::atomic::Ordering::Acquire));
            for s in &channel.subscribers {
                s.send(&frames);
            }
        }
    }
    format!(r#"{{"results":[{}]}}"#, results.join(","))
}

async fn websocket(mut tcp: TcpStream, state: Arc<State>, channel: String, key: String) -> io::Result<()> {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64(&sha.digest().bytes());
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes();
    text_frame(
        &mut out,
        &format!(r#"{{"channel":"{channel}","epoch":"reference","first_id":null,"last_id":null,"type":"subscribed"}}"#),
    );
    text_frame(
        &mut out,
        &format!(r#"{{"channel":"{channel}","last_id":"0-0","type":"live"}}"#),
    );
    tcp.write_all(&out).await?;
    let (mut read, write) = tcp.into_split();
    let subscriber = Arc::new(Subscriber {
        write,
        backlog: Mutex::new((VecDeque::new(), false)),
        wake: Notify::new(),
        gone: std::sync::atomic::AtomicBool::new(false),
    });
    state
        .channels
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(channel)
        .or_default()
        .subscribers
        .push(subscriber.clone());
    let writer = tokio::spawn({
        let s = subscriber.clone();
        async move {
            loop {
                s.wake.notified().await;
                loop {
                    let next = {
                        let mut backlog = s.backlog.lock().unwrap_or_else(|e| e.into_inner());
                        match backlog.0.pop_front() {
                            Some(b) => b,
                            None => {
                                backlog.1 = false;
                                break;
                            }
                        }
                    };
                    if write_fully(&s.write, &next).await.is_err() {
                        s.gone.store(true, std::sync::atomic::Ordering::Release);
                        return;
                    }
                }
            }
        }
    });
    // What clients send (pongs, close) needs no answer here.
    let mut discard = [0u8; 1024];
    while read.read(&mut discard).await? > 0 {}
    subscriber.gone.store(true, std::sync::atomic::Ordering::Release);
    writer.abort();
    Ok(())
}

/// Writes all of `bytes` through a shared write half.
async fn write_fully(write: &OwnedWriteHalf, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        write.writable().await?;
        match write.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_key_is_the_rfc_example() {
        let mut sha = sha1_smol::Sha1::new();
        sha.update(b"dGhlIHNhbXBsZSBub25jZQ==258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
        assert_eq!(base64(&sha.digest().bytes()), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }
}

//! The Server-Sent Events transport (docs/PROTOCOL.md §5.7): one subscription whose
//! frames are written as SSE events into the body of a streaming HTTP response, and
//! the control loop that keeps it alive and ends it.
//!
//! Each frame is an event whose `event:` is the frame's `type` and whose `data:` is
//! the frame's JSON on one line; a tick also gets `id:` (its stream id), so a browser's
//! `EventSource` reconnects with `Last-Event-ID` by itself. The body is fed through a
//! small bounded channel: a client that does not read fills it, the writer's write
//! waits, and the stall rules of every connection apply.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::budget::Budget;
use super::protocol::{close, Closing, Frame, Kind, SubscribeRequest, PING_INTERVAL};
use super::writer::{Transport, Writer};
use super::{queue, Session, SessionContext};
use crate::auth::Principal;
use crate::hub::has_line_break;

/// Chunks in flight to the response body; a client that does not read holds them.
/// One: with the one the body is writing, a slow reader holds two batches, which the
/// socket's budget counts on (`budget.rs`).
pub const BODY_CHUNKS: usize = 1;

/// The body of an SSE response.
pub(crate) struct SseTransport {
    body: mpsc::Sender<Bytes>,
}

/// Appends one frame as an SSE event.
fn write_event(out: &mut Vec<u8>, frame: &Frame) {
    use std::io::Write;
    let (kind, text, line_breaks, id) = match frame {
        // Our own frames are rare beside ticks: looked at here.
        Frame::Text { kind, text } => (*kind, &**text, has_line_break(text), None),
        Frame::Tick(tick) => (Kind::Tick, tick.text.as_str(), tick.line_breaks, Some(tick.id)),
        Frame::Sampled(sampled) => (
            Kind::Tick,
            sampled.text.as_str(),
            sampled.tick.line_breaks,
            Some(sampled.tick.id),
        ),
        // A comment line: proxies see traffic, EventSource ignores it.
        Frame::Ping => return out.extend_from_slice(b": keep-alive\n\n"),
        // Only a WebSocket client pings.
        Frame::Pong(_) => return,
    };
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(kind.name().as_bytes());
    if let Some(id) = id {
        // Writing into a Vec cannot fail.
        let _ = write!(out, "\nid: {id}");
    }
    out.extend_from_slice(b"\ndata: ");
    // Our frames are single-line JSON (serde_json escapes newlines in strings), but a
    // tick's text carries its stored body as Redis holds it: a raw CR or LF there
    // (written to Redis by something other than tickstream) would end this `data:`
    // line and make the rest a field of its own. Such a byte is only JSON whitespace
    // or an invalid string character, so a space in its place keeps the event whole.
    let bytes = text.as_bytes();
    if line_breaks {
        out.extend(bytes.iter().map(|b| if matches!(b, b'\r' | b'\n') { b' ' } else { *b }));
    } else {
        out.extend_from_slice(bytes);
    }
    out.extend_from_slice(b"\n\n");
}

impl Transport for SseTransport {
    async fn write(&mut self, frames: &mut Vec<Frame>) -> Result<(), ()> {
        let mut out = Vec::with_capacity(frames.len() * 256);
        for frame in frames.drain(..) {
            write_event(&mut out, &frame);
        }
        self.body.send(Bytes::from(out)).await.map_err(|_| ())
    }

    /// SSE has no close codes: the stream ends with an `error` event saying why,
    /// then the body ends. A browser reconnects by itself (and resumes with
    /// `Last-Event-ID`) unless the reconnect is refused.
    async fn close(&mut self, (code, reason): Closing) {
        let code = match code {
            close::RESTART => "restarting",
            close::TOKEN_EXPIRED => "token_expired",
            close::TRY_LATER => "too_slow",
            _ => "closed",
        };
        let frame = Frame::json(
            Kind::Error,
            serde_json::json!({"type": "error", "code": code, "message": reason}),
        );
        let mut out = Vec::new();
        write_event(&mut out, &frame);
        let _ = self.body.send(Bytes::from(out)).await;
    }

    /// SSE has no direct path (its writer is given no connection to offer one), so
    /// nothing framed for a WebSocket ever comes here.
    async fn write_framed(&mut self, _bytes: &[u8]) -> Result<(), ()> {
        Err(())
    }
}

/// Runs an SSE stream to its end: subscribes, then keeps it alive with a comment
/// every 20 s until the client goes, the token expires or the server shuts down.
pub async fn run(
    body: mpsc::Sender<Bytes>,
    ctx: Arc<SessionContext>,
    principal: Principal,
    request: SubscribeRequest,
    _done: mpsc::Sender<()>,
) {
    ctx.metrics.connections.inc();
    let (out_tx, out_rx) = queue(&ctx);
    let budget = Budget::new();
    let (close_tx, close_rx) = oneshot::channel();
    let gone = body.clone();
    let writer = Writer::new(
        SseTransport { body },
        out_rx,
        out_tx.downgrade(),
        ctx.clone(),
        budget.clone(),
        None,
    );
    let mut writer = tokio::spawn(writer.run(close_rx));
    let mut session = Session::new(ctx.clone(), principal, out_tx, budget);
    let ending = match Box::pin(session.subscribe(request)).await {
        Err(ending) => ending,
        Ok(()) => {
            let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
            loop {
                tokio::select! {
                    _ = ping.tick() => session.try_send(Frame::Ping),
                    closing = session.stopping() => break Some(closing),
                    _ = gone.closed() => break None,
                    _ = &mut writer => break None,
                }
            }
        }
    };
    drop(session);
    if let Some(closing) = ending {
        let _ = close_tx.send(closing);
    }
    if !writer.is_finished() {
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer).await;
        writer.abort();
    }
    ctx.metrics.connections.dec();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tick::StreamId;

    #[test]
    fn frames_are_written_as_events() {
        let mut epochs = None;
        let fields = crate::tick::wire::fields(5_000, Some("1"), None, "ab");
        let tick = crate::tick::Tick::from_body(
            StreamId::new(5, 1),
            "c".into(),
            crate::tick::wire::body(1, "e", &fields),
            &mut epochs,
        )
        .unwrap();
        let frame = crate::hub::LiveFrame::new(&tick);
        let mut out = Vec::new();
        write_event(&mut out, &Frame::Tick(frame.clone()));
        write_event(&mut out, &super::super::protocol::live("c", StreamId::new(5, 1)));
        write_event(&mut out, &Frame::Ping);
        let text = String::from_utf8(out).unwrap();
        assert!(frame.text.starts_with(r#"{"type":"tick","id":"5-1""#), "{}", frame.text);
        assert_eq!(
            text,
            format!("event: tick\nid: 5-1\ndata: {}\n\n", frame.text)
                + "event: live\ndata: {\"channel\":\"c\",\"last_id\":\"5-1\",\"type\":\"live\"}\n\n\
                   : keep-alive\n\n"
        );
    }

    #[test]
    fn a_stored_line_break_never_splits_an_event() {
        let mut epochs = None;
        // As if something other than tickstream wrote the entry: raw CR and LF in the
        // stored text, inside a string and between members.
        let fields = crate::tick::wire::fields(5_000, Some("1"), Some("{\"note\":\"a\r\nb\"}"), "ab")
            .replace(",\"data\"", "\r\n,\"data\"");
        let body = crate::tick::wire::body(1, "e", &fields);
        assert!(body.contains('\n') && body.contains('\r'), "{body}");
        let tick = crate::tick::Tick::from_body(StreamId::new(5, 1), "c".into(), body, &mut epochs).unwrap();
        let mut out = Vec::new();
        write_event(&mut out, &Frame::Tick(crate::hub::LiveFrame::new(&tick)));
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("\n\n"), "{text:?}");
        let lines: Vec<&str> = text.trim_end_matches('\n').split(['\n', '\r']).collect();
        assert_eq!(lines.len(), 3, "one event of three fields: {text:?}");
        assert!(lines[2].starts_with("data: {") && lines[2].ends_with('}'), "{text:?}");
    }
}

//! `SseClient`: a Server-Sent Events client that behaves like a browser's
//! `EventSource`.

use super::*;

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event: String,
    pub id: Option<String>,
    pub data: Value,
}

/// A Server-Sent Events client with what a browser's `EventSource` does: it parses
/// events (comments too, so tests can see keep-alives) and, when asked to, reconnects
/// to the same URL with `Last-Event-ID` set to the last `id:` it saw.
pub struct SseClient {
    url: String,
    token: String,
    pub last_event_id: Option<String>,
    response: Option<reqwest::Response>,
    buffer: Vec<u8>,
    /// Comment lines seen (keep-alives).
    pub comments: usize,
    http: reqwest::Client,
}

/// What the next read of an SSE stream produced.
#[derive(Debug)]
pub enum SseNext {
    Event(Event),
    /// The server ended the stream (or the connection broke).
    Ended,
    Timeout,
}

impl SseClient {
    /// Connects; `Err((status, body))` when refused.
    pub async fn connect(app: &TestApp, path: &str, token: &str) -> Result<SseClient, (u16, Value)> {
        let mut c = SseClient {
            url: app.url(path),
            token: token.to_string(),
            last_event_id: None,
            response: None,
            buffer: Vec::new(),
            comments: 0,
            http: reqwest::Client::new(),
        };
        c.open(None).await?;
        Ok(c)
    }

    async fn open(&mut self, extra: Option<(&str, String)>) -> Result<(), (u16, Value)> {
        let mut req = self
            .http
            .get(&self.url)
            .bearer_auth(&self.token)
            .header("accept", "text/event-stream");
        if let Some(id) = &self.last_event_id {
            req = req.header("last-event-id", id);
        }
        if let Some((k, v)) = extra {
            req = req.header(k, v);
        }
        let resp = req.send().await.map_err(|_| (0, Value::Null))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err((status, resp.json().await.unwrap_or(Value::Null)));
        }
        assert_eq!(
            resp.headers().get("content-type").and_then(|v| v.to_str().ok()),
            Some("text/event-stream")
        );
        self.response = Some(resp);
        self.buffer.clear();
        Ok(())
    }

    /// Reconnects as `EventSource` does after the stream ended, retrying while the
    /// server is away.
    pub async fn reconnect(&mut self) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match self.open(None).await {
                Ok(()) => return,
                Err((status, body)) => {
                    assert!(matches!(status, 0 | 503), "reconnect refused: {status} {body}");
                    assert!(Instant::now() < deadline, "the server never came back");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// The next event (comments are counted, not returned).
    pub async fn next_within(&mut self, wait: Duration) -> SseNext {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8(block).expect("SSE is UTF-8");
                let (mut event, mut id, mut data) = (String::from("message"), None, String::new());
                let mut any = false;
                for line in text.lines() {
                    if line.starts_with(':') {
                        self.comments += 1;
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_string();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_string());
                        any = true;
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                        any = true;
                    }
                }
                if !any {
                    continue;
                }
                if id.is_some() {
                    self.last_event_id = id.clone();
                }
                let data = serde_json::from_str(&data).expect("data is JSON");
                return SseNext::Event(Event { event, id, data });
            }
            let Some(resp) = self.response.as_mut() else {
                return SseNext::Ended;
            };
            match tokio::time::timeout_at(deadline, resp.chunk()).await {
                Err(_) => return SseNext::Timeout,
                Ok(Ok(Some(chunk))) => self.buffer.extend_from_slice(&chunk),
                Ok(_) => {
                    self.response = None;
                    return SseNext::Ended;
                }
            }
        }
    }

    pub async fn next_event(&mut self) -> Event {
        match self.next_within(TIMEOUT).await {
            SseNext::Event(e) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// Events until one named `name` (inclusive).
    pub async fn until_event(&mut self, name: &str) -> Vec<Event> {
        let mut out = Vec::new();
        loop {
            let e = self.next_event().await;
            let done = e.event == name;
            out.push(e);
            if done {
                return out;
            }
        }
    }
}

/// Tick events' ids.
pub fn event_ids(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.event == "tick")
        .map(|e| e.data["id"].as_str().unwrap().to_string())
        .collect()
}

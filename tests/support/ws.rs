//! `WsClient`: a WebSocket client (tokio-tungstenite, independent of the server's
//! own framing) that reads JSON frames with deadlines.

use super::*;

pub struct WsClient {
    pub(super) stream: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
}

/// What the next read produced.
#[derive(Debug)]
pub enum Next {
    Json(Value),
    Closed(Option<u16>, String),
    Timeout,
}

impl WsClient {
    pub async fn send(&mut self, v: Value) {
        self.stream
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, m: Message) {
        let _ = self.stream.send(m).await;
    }

    /// Sends, reporting a failure (a reset connection) instead of ignoring it.
    pub async fn try_send(&mut self, m: Message) -> Result<(), String> {
        self.stream.send(m).await.map_err(|e| e.to_string())
    }

    pub async fn next_within(&mut self, wait: Duration) -> Next {
        loop {
            match tokio::time::timeout(wait, self.stream.next()).await {
                Err(_) => return Next::Timeout,
                Ok(None) => return Next::Closed(None, String::new()),
                Ok(Some(Err(_))) => return Next::Closed(None, String::new()),
                Ok(Some(Ok(Message::Text(t)))) => {
                    return Next::Json(serde_json::from_str(t.as_str()).expect("server sends JSON"))
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return Next::Closed(
                        frame.as_ref().map(|f| u16::from(f.code)),
                        frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    )
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// The next JSON frame; panics on close or timeout.
    pub async fn next_json(&mut self) -> Value {
        match self.next_within(TIMEOUT).await {
            Next::Json(v) => v,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Frames until one of `type` arrives (inclusive).
    pub async fn until_type(&mut self, ty: &str) -> Vec<Value> {
        let mut frames = Vec::new();
        loop {
            let f = self.next_json().await;
            let done = f["type"] == ty;
            frames.push(f);
            if done {
                return frames;
            }
        }
    }

    /// Waits for the close frame and returns its code.
    pub async fn close_code(&mut self) -> Option<u16> {
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            if let Next::Closed(code, _) = self.next_within(TIMEOUT).await {
                return code;
            }
        }
        panic!("no close frame");
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}

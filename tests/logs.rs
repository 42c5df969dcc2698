//! Tokens never reach logs (docs/PROTOCOL.md §3.1): every request below carries a token in the
//! query string, the bearer subprotocol or a header, and the captured log output,
//! at TRACE for every crate, must not contain any of them.
//!
//! This file is its own test binary because it installs the global subscriber.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::json;
use support::*;
use tracing_subscriber::fmt::MakeWriter;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_appear_in_logs() {
    let capture = Capture::default();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
        .with_writer(capture.clone())
        .with_ansi(false)
        .json()
        .init();

    let mut redis = RedisServer::start();
    let mut cfg = config(Some(&redis));
    cfg.auth.hmac_secret = Some("hmac-secret-for-logs".into());
    let app = TestApp::start(cfg).await;
    let reader = token(&["*"]);
    let bogus = "bogus-token-that-must-not-be-logged-1234567890";
    let producer = token_with(json!({"sub": "p", "scope": ["ingest"], "channels": ["*"]}));

    // WebSocket: query token, bearer subprotocol, header; good and bad.
    let mut ws = app
        .try_ws(&format!("/ws/a.b?token={reader}"), &[])
        .await
        .expect("query token");
    ws.next_json().await;
    let mut ws2 = app
        .try_ws(
            "/ws/a.b",
            &[(
                "sec-websocket-protocol",
                format!("tickstream.v1, tickstream.bearer.{reader}"),
            )],
        )
        .await
        .expect("subprotocol token");
    ws2.next_json().await;
    assert!(app.try_ws(&format!("/ws/a.b?token={bogus}"), &[]).await.is_err());
    assert!(app
        .try_ws(
            "/ws/a.b",
            &[(
                "sec-websocket-protocol",
                format!("tickstream.v1, tickstream.bearer.{bogus}")
            )]
        )
        .await
        .is_err());
    assert!(app
        .try_ws("/ws/a.b", &[("authorization", format!("Bearer {bogus}"))])
        .await
        .is_err());
    assert!(app.try_ws("/ws/a.b?client_id=x&ts=1&sig=deadbeef", &[]).await.is_err());
    // A refresh with a bad token over an open socket.
    ws.send(json!({"type": "refresh", "token": bogus})).await;
    let frames = ws.until_type("error").await;
    assert_eq!(frames.last().unwrap()["code"], "invalid_token");

    // REST and ingest.
    app.get(&format!("/api/v1/channels?token={reader}"), None).await;
    app.get(&format!("/api/v1/channels/a.b/ticks?token={bogus}"), None)
        .await;
    app.get("/api/v1/channels", Some(bogus)).await;
    app.ingest_raw(r#"{"channel":"a.b","value":1}"#.into(), Some(&producer))
        .await;
    app.ingest_raw(r#"{"channel":"a.b","value":1}"#.into(), Some(bogus))
        .await;
    app.ingest_raw(r#"{"channel":"a.b","value":1}"#.into(), Some(INGEST_TOKEN))
        .await;
    // A 5xx: the request's own log line says why (and nothing else logs it).
    redis.kill();
    let (status, _) = app
        .get(&format!("/api/v1/channels/a.b/ticks?token={reader}"), None)
        .await;
    assert_eq!(status, 503);
    ws.close().await;
    ws2.close().await;
    app.stop().await;

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("\"request\""),
        "request lines are logged: {}",
        &logs[..logs.len().min(2000)]
    );
    assert!(logs.contains("/api/v1/channels"), "paths are logged");
    let failed: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("\"status\":503") && l.contains("/api/v1/channels/a.b/ticks"))
        .collect();
    assert_eq!(failed.len(), 1, "one request line for the 503: {failed:?}");
    assert!(
        failed[0].contains("\"error\":\"unavailable\"") && failed[0].contains("\"cause\":\"redis"),
        "the 503's request line carries its cause: {}",
        failed[0]
    );
    let signature = |t: &str| t.rsplit('.').next().unwrap().to_string();
    for (name, secret) in [
        ("reader token", reader.clone()),
        ("reader token signature", signature(&reader)),
        ("producer token signature", signature(&producer)),
        ("bogus token", bogus.to_string()),
        ("ingest token", INGEST_TOKEN.to_string()),
        ("hmac signature", "deadbeef".to_string()),
    ] {
        assert!(!logs.contains(&secret), "{name} leaked into the logs");
    }
}

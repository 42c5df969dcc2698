//! The WebSocket handshake and hostile client input (docs/PROTOCOL.md §3, §5): every refusal is
//! an HTTP answer with a JSON error before any upgrade, and leaves Redis unchanged;
//! bad messages on an open socket close it with the documented code.

mod support;

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use support::*;
use tickstream::clock::unix_now;
use tokio_tungstenite::tungstenite::Message;

fn hmac_sig(secret: &str, client_id: &str, ts: u64, path: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{client_id}\n{ts}\n{path}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A token signed with `alg: none` (no signature).
fn unsigned_token() -> String {
    use base64_url as b64;
    let header = b64::encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = b64::encode(format!(r#"{{"sub":"x","exp":{},"channels":["*"]}}"#, unix_now() + 3600).as_bytes());
    format!("{header}.{claims}.")
}

/// Minimal base64url without padding, so the test needs no extra crate.
mod base64_url {
    pub fn encode(input: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in input.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}

/// (name, path, headers, expected status, expected error code)
type Case<'a> = (&'a str, String, Vec<(&'a str, String)>, u16, &'a str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_handshakes_answer_json_before_the_upgrade() {
    let redis = RedisServer::start();
    let mut cfg = config(Some(&redis));
    cfg.auth.allowed_origins = vec![tickstream::acl::OriginPattern::parse("https://*.example.com").unwrap()];
    cfg.auth.hmac_secret = Some("hmac-secret".into());
    let app = TestApp::start(cfg).await;
    let good = token(&["crypto.*"]);
    let now = unix_now();
    let expired = token_with(json!({"sub": "a", "channels": ["*"], "exp": now - 300}));
    let not_yet = token_with(json!({"sub": "a", "channels": ["*"], "nbf": now + 600}));
    let wrong_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "a", "channels": ["*"], "exp": now + 60}),
        &jsonwebtoken::EncodingKey::from_secret(b"some-other-secret-entirely"),
    )
    .unwrap();
    let wrong_alg = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &json!({"sub": "a", "channels": ["*"], "exp": now + 60}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let no_exp = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "a", "channels": ["*"]}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let path = "/ws/crypto.BTC";
    let sig_ok = hmac_sig("hmac-secret", "dev-1", now, path);
    let cases: Vec<Case> = vec![
        ("no token", path.into(), vec![], 401, "missing_token"),
        (
            "garbage token",
            path.into(),
            vec![bearer("garbage")],
            401,
            "invalid_token",
        ),
        (
            "expired token",
            path.into(),
            vec![bearer(&expired)],
            401,
            "token_expired",
        ),
        (
            "token not yet valid",
            path.into(),
            vec![bearer(&not_yet)],
            401,
            "invalid_token",
        ),
        (
            "alg none",
            path.into(),
            vec![bearer(&unsigned_token())],
            401,
            "invalid_token",
        ),
        ("wrong key", path.into(), vec![bearer(&wrong_key)], 401, "invalid_token"),
        (
            "wrong algorithm",
            path.into(),
            vec![bearer(&wrong_alg)],
            401,
            "invalid_token",
        ),
        (
            "token without exp",
            path.into(),
            vec![bearer(&no_exp)],
            401,
            "invalid_token",
        ),
        (
            "forbidden channel",
            "/ws/iss.USLAB".into(),
            vec![bearer(&good)],
            403,
            "forbidden",
        ),
        (
            "channel with a space",
            "/ws/a%20b".into(),
            vec![bearer(&good)],
            400,
            "bad_channel",
        ),
        (
            "channel path traversal",
            "/ws/..%2Fx".into(),
            vec![bearer(&good)],
            400,
            "bad_channel",
        ),
        (
            "channel unicode",
            "/ws/%C3%A9".into(),
            vec![bearer(&good)],
            400,
            "bad_channel",
        ),
        (
            "channel wildcard",
            "/ws/*".into(),
            vec![bearer(&good)],
            400,
            "bad_channel",
        ),
        (
            "channel 129 chars",
            format!("/ws/{}", "a".repeat(129)),
            vec![bearer(&good)],
            400,
            "bad_channel",
        ),
        (
            "bad since",
            format!("{path}?since=yesterday"),
            vec![bearer(&good)],
            400,
            "bad_since",
        ),
        (
            "bad seq",
            format!("{path}?since=1-0&seq=-1"),
            vec![bearer(&good)],
            400,
            "bad_seq",
        ),
        (
            "foreign origin",
            path.into(),
            vec![bearer(&good), ("origin", "https://evil.test".into())],
            403,
            "bad_origin",
        ),
        (
            "look-alike origin",
            path.into(),
            vec![bearer(&good), ("origin", "https://example.com.evil.test".into())],
            403,
            "bad_origin",
        ),
        (
            "null origin",
            path.into(),
            vec![bearer(&good), ("origin", "null".into())],
            403,
            "bad_origin",
        ),
        (
            "apex of a wildcard origin",
            path.into(),
            vec![bearer(&good), ("origin", "https://example.com".into())],
            403,
            "bad_origin",
        ),
        (
            "bad origin even with no token",
            path.into(),
            vec![("origin", "https://evil.test".into())],
            403,
            "bad_origin",
        ),
        (
            "hmac bad signature",
            format!("{path}?client_id=dev-1&ts={now}&sig={}", "0".repeat(64)),
            vec![],
            401,
            "invalid_token",
        ),
        (
            "hmac skewed",
            format!(
                "{path}?client_id=dev-1&ts={}&sig={}",
                now - 600,
                hmac_sig("hmac-secret", "dev-1", now - 600, path)
            ),
            vec![],
            401,
            "token_expired",
        ),
        (
            "hmac replayed on another path",
            format!("/ws/crypto.ETH?client_id=dev-1&ts={now}&sig={sig_ok}"),
            vec![],
            401,
            "invalid_token",
        ),
    ];
    let baseline = redis.dbsize();
    for (name, path, headers, status, code) in &cases {
        match app.try_ws(path, headers).await {
            Ok(_) => panic!("{name}: the upgrade must be refused"),
            Err((got, body)) => {
                assert_eq!(got, *status, "{name}: {body}");
                assert_eq!(body["error"], *code, "{name}: {body}");
            }
        }
        assert_eq!(redis.dbsize(), baseline, "{name}: Redis must be unchanged");
    }

    // And what is allowed: a subdomain origin, the server's own origin, no origin with
    // a token, an HMAC-signed client, a token in the query.
    for headers in [
        vec![bearer(&good), ("origin", "https://app.example.com".into())],
        vec![bearer(&good), ("origin", "https://a.b.example.com".into())],
        vec![bearer(&good), ("origin", format!("http://{}", app.addr))],
        vec![bearer(&good)],
    ] {
        let mut ws = app.try_ws(path, &headers).await.expect("allowed");
        assert_eq!(ws.next_json().await["type"], "subscribed");
    }
    let mut ws = app
        .try_ws(&format!("{path}?client_id=dev-1&ts={now}&sig={sig_ok}"), &[])
        .await
        .expect("hmac");
    assert_eq!(ws.next_json().await["type"], "subscribed");
    let mut ws = app
        .try_ws(&format!("{path}?token={good}"), &[])
        .await
        .expect("query token");
    assert_eq!(ws.next_json().await["type"], "subscribed");
    // A plain GET (no upgrade) with a good token.
    let (status, body) = app.get(path, Some(&good)).await;
    assert_eq!((status, body["error"].as_str()), (426, Some("websocket_required")));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_subprotocol_is_answered_with_tickstream_v1() {
    let app = TestApp::start(config(None)).await;
    let t = token(&["*"]);
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(app.ws_url("/ws/x")).unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("tickstream.v1, tickstream.bearer.{t}").parse().unwrap(),
    );
    let (_, resp) = tokio_tungstenite::connect_async(req).await.expect("upgrade");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "tickstream.v1");
    app.stop().await;
}

async fn closes_with(app: &TestApp, message: Message) -> Option<u16> {
    let mut ws = app.ws("/ws", &token(&["*"])).await;
    ws.send_raw(message).await;
    ws.close_code().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_messages_close_with_1008() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(Some(&redis))).await;
    let baseline = redis.dbsize();
    for (name, m) in [
        ("not json", Message::Text("hello".into())),
        ("not an object", Message::Text("[1,2]".into())),
        ("unknown type", Message::Text(r#"{"type":"dance"}"#.into())),
        ("missing channel", Message::Text(r#"{"type":"subscribe"}"#.into())),
        (
            "channel of the wrong type",
            Message::Text(r#"{"type":"subscribe","channel":5}"#.into()),
        ),
        ("binary frame", Message::Binary(vec![1, 2, 3].into())),
        (
            "over the 256 KiB hard cap",
            Message::Text(format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(300_000)).into()),
        ),
        (
            "over 64 KiB",
            Message::Text(format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(70_000)).into()),
        ),
    ] {
        assert_eq!(closes_with(&app, m).await, Some(1008), "{name}");
        assert_eq!(redis.dbsize(), baseline, "{name}: Redis must be unchanged");
    }
    // A flood past the inbound budget (burst 20, then 10/s) closes with 4029.
    let mut ws = app.ws("/ws", &token(&["*"])).await;
    for _ in 0..40 {
        ws.send_raw(Message::Text(r#"{"type":"ping"}"#.into())).await;
    }
    let mut pongs = 0;
    let code = loop {
        match ws.next_within(TIMEOUT).await {
            Next::Json(f) if f["type"] == "pong" => pongs += 1,
            Next::Closed(code, _) => break code,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(code, Some(4029));
    assert!((20..40).contains(&pongs), "{pongs} pongs before the limit");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_closes_with_4001_unless_refreshed() {
    let app = TestApp::start(config(None)).await;
    // Valid now only thanks to the 30 s leeway; it lapses within ~2 s.
    let exp = unix_now() - 28;
    let expiring = |sub: &str, exp: u64| token_with(json!({"sub": sub, "channels": ["*"], "exp": exp}));
    let mut ws = app.ws("/ws", &expiring("alice", exp)).await;

    // The same expiry, refreshed in time.
    let mut refreshed = app.ws("/ws", &expiring("alice", exp)).await;
    refreshed
        .send(json!({"type": "refresh", "token": token_with(json!({"sub": "alice", "channels": ["*"]}))}))
        .await;
    // A refresh for another subject is refused, and the old expiry stands.
    let mut bob = app.ws("/ws", &expiring("bob", exp)).await;
    bob.send(json!({"type": "refresh", "token": token_with(json!({"sub": "mallory", "channels": ["*"]}))}))
        .await;
    assert_eq!(bob.next_json().await["code"], "invalid_token");
    // A witness that the refreshed socket's old token has lapsed: one that lapses 2 s
    // after it (the server's expiry is to the second, so at least 1 s after).
    let mut witness = app.ws("/ws", &expiring("alice", exp + 2)).await;

    assert_eq!(ws.close_code().await, Some(4001));
    assert_eq!(bob.close_code().await, Some(4001));
    assert_eq!(witness.close_code().await, Some(4001));
    refreshed.send(json!({"type": "ping"})).await;
    assert_eq!(refreshed.next_json().await["type"], "pong", "refreshed: still open");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_narrows_channels_unsubscribes_the_rest() {
    let app = TestApp::start(config(None)).await;
    let mut ws = app
        .ws("/ws", &token_with(json!({"sub": "alice", "channels": ["a.*", "b.*"]})))
        .await;
    for c in ["a.one", "b.one"] {
        ws.send(json!({"type": "subscribe", "channel": c})).await;
        ws.until_type("live").await;
    }
    ws.send(json!({"type": "refresh", "token": token_with(json!({"sub": "alice", "channels": ["a.*"]}))}))
        .await;
    let err = ws.next_json().await;
    assert_eq!(
        (err["type"].as_str(), err["code"].as_str(), err["channel"].as_str()),
        (Some("error"), Some("forbidden"), Some("b.one"))
    );
    app.ingest_one("b.one", 1.0).await;
    let a = app.ingest_one("a.one", 2.0).await;
    let f = ws.next_json().await;
    assert_eq!(f["id"], a.as_str(), "b.one no longer delivers: {f}");
    app.stop().await;
}

/// An unsubscribe ends a channel's frames, whether it lands in the middle of a long
/// replay or once the channel is live: none arrives after the answer to a later
/// message, and a new subscribe starts afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsubscribe_stops_the_channel_at_once() {
    let app = TestApp::start(config(None)).await;
    let batch: Vec<_> = (0..1000)
        .map(|i| json!({"channel": "long.replay", "value": i}))
        .collect();
    for _ in 0..3 {
        assert_eq!(app.ingest(&json!(batch)).await.0, 201);
    }
    let mut ws = app.ws("/ws", &token(&["*"])).await;
    // Twice in the middle of the replay, then once the subscription is live.
    for round in 0..3 {
        let since = if round < 2 { "0-0" } else { "$" };
        ws.send(json!({"type": "subscribe", "channel": "long.replay", "since": since}))
            .await;
        if round == 2 {
            ws.until_type("live").await;
        }
        ws.send(json!({"type": "unsubscribe", "channel": "long.replay"})).await;
        ws.send(json!({"type": "ping"})).await;
        ws.until_type("pong").await;
        app.ingest_one("long.replay", f64::from(round)).await;
        app.ingest_one("other", 2.0).await;
        ws.send(json!({"type": "ping"})).await;
        let f = ws.next_json().await;
        assert_eq!(
            f["type"], "pong",
            "round {round}: a frame of an unsubscribed channel: {f}"
        );
    }
    // Subscribing again replays the whole stream once, in order.
    ws.send(json!({"type": "subscribe", "channel": "long.replay", "since": "0-0"}))
        .await;
    let frames = ws.until_type("live").await;
    let ids = tick_ids(&frames);
    let expected = app.history_ids("long.replay", "0-0").await;
    assert!(expected.len() > 3000);
    assert_same_ids(&ids, &expected, "the replay after a re-subscribe");
    assert!(ids.windows(2).all(|w| sid(&w[0]) < sid(&w[1])));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_only_allowed_origins() {
    let mut cfg = config(None);
    cfg.auth.allowed_origins = vec![tickstream::acl::OriginPattern::parse("https://app.example.com").unwrap()];
    let app = TestApp::start(cfg).await;
    let http = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, app.url("/api/v1/channels"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let ok = preflight("https://app.example.com").await.unwrap();
    assert_eq!(ok.headers()["access-control-allow-origin"], "https://app.example.com");
    let evil = preflight("https://evil.test").await.unwrap();
    assert!(evil.headers().get("access-control-allow-origin").is_none());
    let get = http
        .get(app.url("/api/v1/channels"))
        .header("origin", "https://evil.test")
        .bearer_auth(token(&["*"]))
        .send()
        .await
        .unwrap();
    assert!(get.headers().get("access-control-allow-origin").is_none());
    app.stop().await;
}

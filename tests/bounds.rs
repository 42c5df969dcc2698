//! Bounded by construction (docs/PROTOCOL.md "Limits"): whatever a client sends, the
//! node's sockets, slow headers, empty subscriptions, metric series, the channel list,
//! catch-ups and arithmetic on client numbers stay within bounds, while a normal
//! client is still served.

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_connections_handshakes_answer_503_until_a_socket_closes() {
    let mut cfg = config(None);
    cfg.max_connections = 3;
    let app = TestApp::start(cfg).await;
    let t = token(&["*"]);
    let mut open = Vec::new();
    for i in 0..3 {
        open.push(app.ws(&format!("/ws/cap.{i}?since=$"), &t).await);
    }
    match app.try_ws("/ws", &[bearer(&t)]).await {
        Err((status, body)) => {
            assert_eq!(status, 503);
            assert_eq!(body["error"], "overloaded", "{body}");
        }
        Ok(_) => panic!("a fourth socket must be refused"),
    }
    // REST is still served.
    assert_eq!(app.get("/api/v1/channels", Some(&t)).await.0, 200);
    open.pop().unwrap().close().await;
    until_a_socket_is_free(&app, &t).await;
    app.stop().await;
}

/// With the setting far above what the process may open, the cap in force is the
/// open-file limit less a reserve: the socket past it gets the promised 503, not an
/// accept that fails with EMFILE and leaves the client unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_keeps_under_the_open_file_limit() {
    let redis = RedisServer::start();
    // 400 files: the cap in force is 300 (a quarter kept for Redis, REST and logs).
    let node = NodeProc::start_with_open_files(&redis, &[("TICKSTREAM_MAX_CONNECTIONS", "50000")], 400).await;
    let app = node.app();
    let t = token(&["*"]);
    let mut open = Vec::new();
    let refused = loop {
        match app.try_ws("/ws", &[bearer(&t)]).await {
            Ok(ws) => open.push(ws),
            Err(refusal) => break refusal,
        }
        assert!(open.len() <= 400, "never refused");
    };
    assert_eq!(refused.0, 503, "{refused:?}");
    assert_eq!(refused.1["error"], "overloaded", "{refused:?}");
    assert_eq!(open.len(), 300, "the cap in force");
    // REST and ingest still served, and a subscribed socket still gets its ticks.
    assert_eq!(app.get("/api/v1/channels", Some(&t)).await.0, 200);
    let ws = open.last_mut().unwrap();
    ws.send(json!({"type": "subscribe", "channel": "cap.files", "since": "$"}))
        .await;
    ws.until_type("live").await;
    let id = app.ingest_one("cap.files", 1.0).await;
    let tick = ws.until_type("tick").await;
    assert_eq!(tick.last().unwrap()["id"], id.as_str());
    // Still refused while full; a closed socket frees a place.
    assert_eq!(app.try_ws("/ws", &[bearer(&t)]).await.err().map(|e| e.0), Some(503));
    open.pop().unwrap().close().await;
    until_a_socket_is_free(&app, &t).await;
    drop(open);
}

/// Waits until a handshake is admitted again (after a socket closed).
async fn until_a_socket_is_free(app: &TestApp, t: &str) {
    eventually("a socket is free again", || async move {
        app.try_ws("/ws", &[bearer(t)]).await.is_ok()
    })
    .await;
}

/// Reads from a raw TCP connection until the server closes it; how long that took.
fn closed_after(mut s: std::net::TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) if started.elapsed() < limit => return Some(started.elapsed()),
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_must_arrive_within_10_s() {
    let app = TestApp::start(config(None)).await;
    // A slowloris client: half a request, then nothing.
    let mut slow = std::net::TcpStream::connect(app.addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
    // And one that never sends a byte.
    let silent = std::net::TcpStream::connect(app.addr).unwrap();
    let slow = std::thread::spawn(move || closed_after(slow, Duration::from_secs(20)));
    let silent = std::thread::spawn(move || closed_after(silent, Duration::from_secs(20)));
    // Meanwhile everyone else is served.
    for _ in 0..5 {
        assert_eq!(app.get("/healthz", None).await.0, 200);
        // Pacing, not a condition: five probes 500 ms apart, while the slow clients wait.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (what, handle) in [("half a request", slow), ("no request", silent)] {
        let took = handle.join().unwrap().unwrap_or_else(|| panic!("{what}: never closed"));
        assert!(
            took >= Duration::from_secs(9) && took <= Duration::from_secs(13),
            "{what}: closed after {took:?}"
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_to_empty_channels_cost_no_live_buffer_and_still_get_the_first_tick() {
    const SOCKETS: usize = 50;
    const PER_SOCKET: usize = 20;
    let redis = RedisServer::start();
    let node = NodeProc::start(&redis).await;
    let app = node.app();
    let t = token(&["*"]);
    let mut sockets = Vec::new();
    for _ in 0..SOCKETS {
        sockets.push(app.ws("/ws", &t).await);
    }
    let before = app.rss().await;
    // 1,000 subscriptions to channels no one ever wrote to (within the inbound burst).
    for (s, ws) in sockets.iter_mut().enumerate() {
        for c in 0..PER_SOCKET {
            ws.send(json!({"type": "subscribe", "channel": format!("empty.{s}.{c}")}))
                .await;
        }
    }
    for ws in sockets.iter_mut() {
        let mut live = 0;
        while live < PER_SOCKET {
            if ws.next_json().await["type"] == "live" {
                live += 1;
            }
        }
    }
    let grown = app.rss().await - before;
    let per_subscription = grown / (SOCKETS * PER_SOCKET) as f64;
    println!(
        "RSS grew {:.1} MiB: {per_subscription:.0} bytes per empty subscription",
        grown / 1048576.0
    );
    // A live buffer allocates all its 1,024 slots up front (about 100 KiB); an empty
    // subscription must cost a small fraction of that.
    assert!(
        per_subscription < 16.0 * 1024.0,
        "{per_subscription} bytes per empty subscription"
    );
    // The first tick of such a channel still arrives, live, exactly once.
    let id = app.ingest_one("empty.7.3", 1.0).await;
    let f = sockets[7].next_json().await;
    assert_eq!(
        (f["type"].as_str(), f["id"].as_str()),
        (Some("tick"), Some(id.as_str())),
        "{f}"
    );
    let second = app.ingest_one("empty.7.3", 2.0).await;
    assert_eq!(sockets[7].next_json().await["id"], second.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invented_http_method_is_recorded_as_other() {
    let app = TestApp::start(config(None)).await;
    for m in ["FOOBAR", "BREW", "X-EVIL-1"] {
        let a = app.request(m, "/api/v1/channels", &[], None).await;
        assert!(a.status >= 400);
    }
    let metrics = app.text("/metrics").await.unwrap();
    assert!(metrics.contains(r#"method="other""#), "{metrics}");
    for m in ["FOOBAR", "BREW", "X-EVIL-1"] {
        assert!(!metrics.contains(m), "{m} became a label");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_channel_list_is_filtered_first_and_paged() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(Some(&redis))).await;
    for c in ["a.1", "a.2", "a.3", "b.1"] {
        app.ingest_one(c, 1.0).await;
    }
    let a = token(&["a.*"]);
    let (status, page) = app.get("/api/v1/channels?limit=2", Some(&a)).await;
    assert_eq!(status, 200, "{page}");
    let names = |v: &serde_json::Value| -> Vec<String> {
        v["channels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["channel"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&page), ["a.1", "a.2"]);
    assert_eq!(page["next"], "a.2");
    assert_eq!(page["channels"][0]["length"], 1);
    let (_, rest) = app.get("/api/v1/channels?limit=2&cursor=a.2", Some(&a)).await;
    assert_eq!(names(&rest), ["a.3"]);
    assert!(rest["next"].is_null());
    let (status, bad) = app.get("/api/v1/channels?limit=0", Some(&a)).await;
    assert_eq!((status, bad["error"].as_str()), (400, Some("bad_limit")));
    // A token that may read nothing costs Redis nothing.
    let nothing = token(&[]);
    let (zrange, xlen) = (calls(&redis, "zrange"), calls(&redis, "xlen"));
    let (status, empty) = app.get("/api/v1/channels", Some(&nothing)).await;
    assert_eq!((status, names(&empty).len()), (200, 0));
    assert_eq!((calls(&redis, "zrange"), calls(&redis, "xlen")), (zrange, xlen));
    // One that matches nothing reads the names, and nothing per channel.
    let (_, none) = app.get("/api/v1/channels", Some(&token(&["zzz.*"]))).await;
    assert_eq!(names(&none).len(), 0);
    assert_eq!(calls(&redis, "xlen"), xlen);
    app.stop().await;
}

async fn active_channels(app: &TestApp) -> u64 {
    app.get("/readyz", None).await.1["active_channels"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_ends_when_its_subscription_is_unsubscribed() {
    let redis = RedisServer::start();
    let mut cfg = config(Some(&redis));
    // A ring of 100 (and a live buffer of 16): a burst of 1,000 ticks is trimmed
    // under the reader, the channel's ticks no longer follow on from what the
    // subscriber was given, so it must catch up from the stream (and announce the
    // trimmed gap).
    cfg.live_buffer = 16;
    cfg.stream_maxlen = 100;
    let app = TestApp::start(cfg).await;
    let t = token(&["*"]);
    let mut ws = app.ws("/ws", &t).await;
    ws.send(json!({"type": "subscribe", "channel": "catch.c", "since": "$"}))
        .await;
    ws.until_type("live").await;
    // A first live tick gives the channel its live buffer.
    app.ingest_one("catch.c", -1.0).await;
    ws.until_type("tick").await;
    // The stream cannot be read by range any more: the catch-up retries forever.
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("-xrange")
        .query(&mut redis.client())
        .unwrap();
    for round in 0..2 {
        let ticks: Vec<_> = (0..1000)
            .map(|i| json!({"channel": "catch.c", "value": i, "key": format!("{round}-{i}")}))
            .collect();
        assert_eq!(app.ingest(&serde_json::Value::Array(ticks)).await.0, 201);
    }
    let app_ref = &app;
    eventually("the subscriber's catch-up keeps failing", || async move {
        let errors = app_ref.metric("/metrics", "tickstream_redis_errors_total").await;
        errors.is_some_and(|n| n >= 2.0)
    })
    .await;
    assert_eq!(active_channels(&app).await, 1);
    ws.send(json!({"type": "unsubscribe", "channel": "catch.c"})).await;
    eventually("the channel is no longer held by a catch-up", || async move {
        active_channels(app_ref).await == 0
    })
    .await;
    // The socket itself is fine.
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.until_type("pong").await.last().unwrap()["type"], "pong");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_at_the_edges_of_their_types_never_panic() {
    let mut cfg = config(None);
    cfg.auth.hmac_secret = Some("hmac-secret".into());
    let app = TestApp::start(cfg).await;
    // An HMAC `ts` at the ends of i64 is just too old or too new.
    for ts in [i64::MIN.to_string(), i64::MAX.to_string(), "-1".into()] {
        let path = format!("/ws/edge.c?client_id=a&ts={ts}&sig={}", "0".repeat(64));
        match app.try_ws(&path, &[]).await {
            Err((status, body)) => assert_eq!(
                (status, body["error"].as_str()),
                (401, Some("token_expired")),
                "ts {ts}"
            ),
            Ok(_) => panic!("ts {ts} accepted"),
        }
        let (status, _) = app
            .get(
                &format!("/api/v1/channels?client_id=a&ts={ts}&sig={}", "0".repeat(64)),
                None,
            )
            .await;
        assert_eq!(status, 401, "ts {ts}");
    }
    // The largest `seq` a client can send.
    let t = token(&["*"]);
    let first = app.ingest_one("edge.c", 1.0).await;
    let mut ws = app.ws(&format!("/ws/edge.c?since={first}&seq={}", u64::MAX), &t).await;
    ws.until_type("live").await;
    let next = app.ingest_one("edge.c", 2.0).await;
    let frames = ws.until_type("tick").await;
    assert_eq!(frames.last().unwrap()["id"], next.as_str());
    // A token that expires at the end of time.
    let forever = token_with(json!({"sub": "eternal", "channels": ["*"], "exp": u64::MAX}));
    let mut ws = app.ws("/ws", &forever).await;
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.next_json().await["type"], "pong");
    assert_eq!(app.get("/healthz", None).await.0, 200);
    app.stop().await;
}

/// 20 pings, their 20 pongs, then 40 more, sent one by one as a script would: the
/// server's 4029 close frame must reach the client. A server that closes its socket
/// while the client is still sending resets the connection: the client's next write
/// fails, and a client (a browser, Python's websockets) then reports 1006 without
/// ever reading the close frame waiting in its buffer.
async fn flood_closes_with_4029(app: &TestApp, path: &str) {
    let mut ws = app.ws(path, &token(&["*"])).await;
    let ping = Message::Text(r#"{"type":"ping"}"#.into());
    for _ in 0..20 {
        ws.send_raw(ping.clone()).await;
    }
    let mut pongs = 0;
    while pongs < 20 {
        let f = ws.next_json().await;
        if f["type"] == "pong" {
            pongs += 1;
        }
    }
    for n in 0..40 {
        if let Err(e) = ws.try_send(ping.clone()).await {
            panic!("{path}: the connection was reset under the client's write {n}: {e}");
        }
        // Pacing, not a condition: one by one, as a script sends them.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    loop {
        match ws.next_within(TIMEOUT).await {
            Next::Json(_) => {}
            Next::Closed(code, reason) => {
                assert_eq!(code, Some(4029), "{path}: closed with {code:?} {reason:?}");
                return;
            }
            Next::Timeout => panic!("{path}: never closed"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbound_throttle_close_frame_reaches_the_client() {
    let app = TestApp::start(config(None)).await;
    flood_closes_with_4029(&app, "/ws").await;
    flood_closes_with_4029(&app, "/ws/flood.c?since=$").await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_whose_client_stopped_reading_still_closes_when_its_token_expires() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(Some(&redis))).await;
    // Far more history than the connection's queue and socket buffers hold.
    let pad = "x".repeat(2000);
    for round in 0..10 {
        let ticks: Vec<_> = (0..500)
            .map(|i| json!({"channel": "stuck.c", "data": {"pad": pad}, "key": format!("{round}-{i}")}))
            .collect();
        assert_eq!(app.ingest(&serde_json::Value::Array(ticks)).await.0, 201);
    }
    // Valid for about one more second (exp + the 30 s leeway).
    let short = token_with(json!({"sub": "stuck", "channels": ["*"], "exp": tickstream::clock::unix_now() - 29}));
    let mut ws = app.ws("/ws", &short).await;
    ws.send(json!({"type": "subscribe", "channel": "stuck.c", "since": "0-0"}))
        .await;
    // The client reads nothing and keeps asking for pongs, which the server cannot
    // queue while the replay fills the queue: the session must still notice expiry,
    // long before the 10 s write stall would end the connection anyway.
    let started = Instant::now();
    let ended = loop {
        // Pacing, not a condition: a ping every 300 ms (faster would meet the inbound
        // throttle's 4029 instead of the expiry).
        tokio::time::sleep(Duration::from_millis(300)).await;
        if ws.try_send(Message::Text(r#"{"type":"ping"}"#.into())).await.is_err() {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the socket was never closed"
        );
    };
    assert!(ended < Duration::from_secs(8), "closed {ended:?} after subscribing");
    assert_eq!(app.get("/healthz", None).await.0, 200);
    app.stop().await;
}

//! Server-Sent Events (docs/PROTOCOL.md §5.7): the same subscription as a WebSocket
//! — same checks, same guarantee, the same frames in the same order as events — and a
//! client that behaves like a browser's `EventSource` resumes by itself with
//! `Last-Event-ID` after the server restarts, losing and repeating nothing.

mod support;

use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_carries_the_same_frames_as_a_websocket() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(Some(&redis))).await;
    let t = token(&["sse.*"]);
    let history = ingest_keyed(&app, "sse.c", 0, 5).await;
    let mut sse = SseClient::connect(&app, "/sse/sse.c?since=0-0", &t).await.unwrap();
    let mut ws = app.ws("/ws/sse.c?since=0-0", &t).await;
    let events = sse.until_event("live").await;
    let frames = ws.until_type("live").await;
    // Event names are the frames' types, data the frames themselves, in the same order.
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["subscribed", "tick", "tick", "tick", "tick", "tick", "live"]);
    for (e, f) in events.iter().zip(&frames) {
        assert_eq!(e.event, f["type"].as_str().unwrap());
        assert_eq!(&e.data, f);
    }
    // Ticks carry their id as the event id.
    for e in events.iter().filter(|e| e.event == "tick") {
        assert_eq!(e.id.as_deref(), e.data["id"].as_str());
    }
    assert_eq!(event_ids(&events), history);
    let live = ingest_keyed(&app, "sse.c", 5, 2).await;
    let got: Vec<String> = [sse.next_event().await, sse.next_event().await]
        .iter()
        .map(|e| e.data["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, live);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_refused_like_a_websocket_handshake() {
    let redis = RedisServer::start();
    let mut cfg = config(Some(&redis));
    cfg.rate_limits = tickstream::ratelimit::Limits::uniform(tickstream::ratelimit::Rate::parse("2/h:2").unwrap());
    let app = TestApp::start(cfg).await;
    type Case<'a> = (&'a str, String, Vec<(&'a str, String)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("no token", "/sse/sse.a".into(), vec![], 401, "missing_token"),
        (
            "bad channel",
            "/sse/bad%20name".into(),
            vec![bearer(&token(&["*"]))],
            400,
            "bad_channel",
        ),
        (
            "forbidden",
            "/sse/other.a".into(),
            vec![bearer(&token(&["sse.*"]))],
            403,
            "forbidden",
        ),
        (
            "foreign origin",
            "/sse/sse.a".into(),
            vec![bearer(&token(&["*"])), ("origin", "https://evil.test".into())],
            403,
            "bad_origin",
        ),
        (
            "bad since",
            "/sse/sse.a?since=soon".into(),
            vec![bearer(&token(&["*"]))],
            400,
            "bad_since",
        ),
    ];
    for (name, path, headers, status, code) in cases {
        let a = app.request("GET", &path, &headers, None).await;
        assert_eq!((a.status, a.body["error"].as_str()), (status, Some(code)), "{name}");
    }
    // One `ws` token per stream, like /ws/{channel}: the refused ones above were
    // charged too (the forbidden one and the bad since, each to the subject "tester").
    let a = app.get_answer("/sse/sse.a", Some(&token(&["*"]))).await;
    assert_eq!((a.status, a.body["error"].as_str()), (429, Some("rate_limited")));
    app.stop().await;
}

/// What a browser does: read, and when the stream ends, reconnect with
/// `Last-Event-ID`; returns the tick events seen and the `error` events.
async fn read_across_restarts(sse: &mut SseClient, want: usize) -> (Vec<Event>, Vec<Event>) {
    let (mut ticks, mut errors) = (Vec::new(), Vec::new());
    while ticks.len() < want {
        match sse.next_within(TIMEOUT).await {
            SseNext::Event(e) if e.event == "tick" => ticks.push(e),
            SseNext::Event(e) if e.event == "error" => errors.push(e),
            SseNext::Event(_) => {}
            SseNext::Ended => sse.reconnect().await,
            SseNext::Timeout => panic!("stalled after {} ticks", ticks.len()),
        }
    }
    (ticks, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_source_resumes_by_itself_after_a_server_restart() {
    let redis = RedisServer::start_persistent();
    let mut node = NodeProc::start(&redis).await;
    let app = node.app();
    let t = token(&["*"]);
    let before = ingest_keyed(&app, "sse.r", 0, 50).await;
    let mut sse = SseClient::connect(&app, "/sse/sse.r?since=0-0", &t).await.unwrap();
    let (first, _) = read_across_restarts(&mut sse, 50).await;
    assert_eq!(event_ids(&first), before);
    // The node restarts (graceful, same port and Redis); meanwhile nothing is lost.
    let (code, took) = node.terminate();
    assert_eq!(code, Some(0), "exit after {took:?}");
    node.start_again().await;
    let after = ingest_keyed(&app, "sse.r", 50, 30).await;
    let (rest, errors) = read_across_restarts(&mut sse, 30).await;
    // The stream said why it ended, then the client resumed from its last event id.
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].data["code"], "restarting");
    assert_eq!(
        event_ids(&rest),
        after,
        "every tick after the last one seen, once, in order"
    );
    let seqs: Vec<u64> = first
        .iter()
        .chain(&rest)
        .map(|e| e.data["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "seq continuous: {seqs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_event_id_resumes_as_since_would_and_says_what_was_lost() {
    let redis = RedisServer::start();
    let mut cfg = config(Some(&redis));
    cfg.stream_maxlen = 10;
    let app = TestApp::start(cfg).await;
    let t = token(&["*"]);
    let ids = ingest_keyed(&app, "sse.l", 0, 5).await;
    // Resuming after the 2nd tick: the 3rd to 5th, then live.
    let mut sse = SseClient::connect(&app, "/sse/sse.l?since=0-0", &t).await.unwrap();
    sse.until_event("live").await;
    drop(sse);
    let mut sse = SseClient::connect(&app, "/sse/sse.l?since=0-0", &t).await.unwrap();
    sse.last_event_id = Some(ids[1].clone());
    sse.reconnect().await;
    let events = sse.until_event("live").await;
    assert_eq!(event_ids(&events), ids[2..]);
    assert!(events.iter().all(|e| e.event != "gap"), "{events:?}");
    // The stream trimmed past the client's last tick: a gap (the tick, and so its
    // `seq`, is gone, so how many were lost is not known).
    let more = ingest_keyed(&app, "sse.l", 5, 200).await;
    // Once the open stream has carried the last tick, this node's ring has moved past
    // the client's cursor too (else the ring could still answer the resume).
    while sse.next_event().await.id.as_ref() != more.last() {}
    sse.last_event_id = Some(ids[1].clone());
    sse.reconnect().await;
    let events = sse.until_event("live").await;
    let gap = events.iter().find(|e| e.event == "gap").expect("a gap");
    assert_eq!(gap.data["reason"], "trimmed", "{gap:?}");
    assert!(gap.data["missed"].is_null());
    // The stream was lost (Redis flushed) and began again: the client's last tick is
    // gone without having been trimmed, so it is a new epoch.
    redis.flushall();
    let fresh = ingest_keyed(&app, "sse.l", 1000, 3).await;
    sse.last_event_id = Some(ids[4].clone());
    sse.reconnect().await;
    let events = sse.until_event("live").await;
    let gap = events.iter().find(|e| e.event == "gap").expect("a gap");
    assert_eq!(gap.data["reason"], "epoch", "{gap:?}");
    assert_eq!(event_ids(&events), fresh);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_gets_a_keep_alive_comment_every_20_s() {
    let app = TestApp::start(config(None)).await;
    let mut sse = SseClient::connect(&app, "/sse/sse.idle?since=$", &token(&["*"]))
        .await
        .unwrap();
    sse.until_event("live").await;
    assert!(matches!(
        sse.next_within(Duration::from_secs(25)).await,
        SseNext::Timeout
    ));
    assert!(sse.comments >= 1, "no keep-alive comment in 25 s");
    app.stop().await;
}

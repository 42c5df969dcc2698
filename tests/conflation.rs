//! Conflation (`rate`, docs/PROTOCOL.md §5.8), on both engines: at most
//! `rate` tick frames a second, each the newest tick, `skipped` proving continuity;
//! replay under a rate is one tick; an idle subscription gets a tick at once and the
//! newest tick always arrives last; bad rates are refused; subscriptions with and
//! without a rate, on one socket or many, do not affect each other.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::property::ingest_n;
use support::*;

/// Tick frames of `frames`.
fn ticks(frames: &[Value]) -> Vec<&Value> {
    frames.iter().filter(|f| f["type"] == "tick").collect()
}

/// Asserts `seq` = previous `seq` + `skipped` + 1 along `ticks` (after the first).
fn assert_chain(ticks: &[(Instant, Value)]) {
    for pair in ticks.windows(2) {
        let (prev, next) = (&pair[0].1, &pair[1].1);
        let skipped = next["skipped"]
            .as_u64()
            .unwrap_or_else(|| panic!("skipped missing in {next}"));
        assert_eq!(
            next["seq"].as_u64().unwrap(),
            prev["seq"].as_u64().unwrap() + skipped + 1,
            "continuity broken between {prev} and {next}"
        );
    }
}

/// Ingests `batches` batches of `per_batch` ticks, paced `every` apart (a producer's
/// pace: the point is ticks arriving faster than the rate, for a while); returns the
/// ids in order.
async fn produce(app: &TestApp, channel: &str, batches: usize, per_batch: usize, every: Duration) -> Vec<String> {
    let mut ids = Vec::new();
    let mut pace = tokio::time::interval(every);
    for _ in 0..batches {
        pace.tick().await;
        ids.extend(ingest_n(app, channel, per_batch).await);
    }
    ids
}

/// Tick frames (with their arrival) until the one with `seq` `last` arrives.
async fn ticks_until(ws: &mut WsClient, last: u64) -> Vec<(Instant, Value)> {
    let mut seen = Vec::new();
    loop {
        let f = ws.next_json().await;
        if f["type"] != "tick" {
            continue;
        }
        let done = f["seq"] == last;
        seen.push((Instant::now(), f));
        if done {
            return seen;
        }
    }
}

async fn rate_is_held_and_continuity_proven(engine: Engine) {
    let app = TestApp::start(engine.config()).await;
    let t = token(&["*"]);
    let mut slow = app.ws("/ws/c.rate?since=$&rate=5", &t).await;
    let mut fast = app.ws("/ws/c.rate?since=$&rate=50", &t).await;
    let mut every = app.ws("/ws/c.rate?since=$", &t).await;
    for ws in [&mut slow, &mut fast, &mut every] {
        ws.until_type("live").await;
    }
    // Read as they arrive, so arrival times mean something.
    let slow = tokio::spawn(async move { ticks_until(&mut slow, 600).await });
    let fast = tokio::spawn(async move { ticks_until(&mut fast, 600).await });
    let started = Instant::now();
    // 600 ticks over about 1.5 s: far more than either rate.
    let ids = produce(&app, "c.rate", 30, 20, Duration::from_millis(50)).await;
    let newest = ids.last().unwrap().clone();
    let slow_ticks = slow.await.unwrap();
    let fast_ticks = fast.await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    // Without a rate: every tick, in order, no `skipped`.
    let all = ticks_until(&mut every, 600).await;
    assert_eq!(
        all.iter().map(|(_, f)| f["id"].as_str().unwrap()).collect::<Vec<_>>(),
        ids.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert!(all.iter().all(|(_, f)| f.get("skipped").is_none()));

    for (rate, ticks) in [(5.0, &slow_ticks), (50.0, &fast_ticks)] {
        // The newest tick comes last, and the chain proves nothing else was lost.
        assert_eq!(ticks.last().unwrap().1["id"], newest.as_str());
        assert_chain(ticks);
        // The first one follows `since=$` at the stream's end: counted exactly.
        assert_eq!(
            ticks[0].1["skipped"].as_u64(),
            Some(ticks[0].1["seq"].as_u64().unwrap() - 1)
        );
        // At most `rate` a second (one more for the window's edges)...
        let most = (rate * elapsed).ceil() as usize + 1;
        assert!(
            ticks.len() <= most,
            "{} frames at rate {rate} in {elapsed:.2} s",
            ticks.len()
        );
        // ...and never two within much less than 1/rate of each other (arrival, so
        // allow for scheduling on the way).
        let tightest = ticks.windows(2).map(|w| w[1].0.duration_since(w[0].0)).min().unwrap();
        assert!(
            tightest.as_secs_f64() > 0.5 / rate,
            "two frames {tightest:?} apart at rate {rate}"
        );
    }
    // The faster subscription really got more: each is held to its own rate.
    assert!(
        fast_ticks.len() > 2 * slow_ticks.len(),
        "rate 50 got {}, rate 5 got {}",
        fast_ticks.len(),
        slow_ticks.len()
    );
    app.stop().await;
}

both_engines!(rate_is_held_and_continuity_proven);

async fn replay_under_a_rate_is_the_newest_tick(engine: Engine) {
    let app = TestApp::start(engine.config()).await;
    let ids = ingest_n(&app, "c.replay", 150).await;
    let t = token(&["*"]);

    // since absent: the newest tick, counting the rest of the default replay (100).
    let mut ws = app.ws("/ws/c.replay?rate=10", &t).await;
    let frames = ws.until_type("live").await;
    let sent = ticks(&frames);
    assert_eq!(sent.len(), 1, "{frames:?}");
    assert_eq!(sent[0]["id"], ids[149].as_str());
    assert_eq!(sent[0]["skipped"], 99);
    assert_eq!(frames.last().unwrap()["last_id"], ids[149].as_str());

    // since with seq: the rest counted exactly.
    let mut ws = app
        .ws(&format!("/ws/c.replay?since={}&seq=10&rate=10", ids[9]), &t)
        .await;
    let frames = ws.until_type("live").await;
    let sent = ticks(&frames);
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0]["seq"].as_u64(), sent[0]["skipped"].as_u64()),
        (Some(150), Some(139))
    );

    // since=0-0: one tick, the whole stream counted.
    let mut ws = app.ws("/ws/c.replay?since=0-0&rate=10", &t).await;
    let frames = ws.until_type("live").await;
    assert_eq!(ticks(&frames).len(), 1);
    assert_eq!(ticks(&frames)[0]["skipped"], 149);

    // Caught up: nothing to replay, and `live` says where it stands.
    let mut ws = app
        .ws(&format!("/ws/c.replay?since={}&seq=150&rate=10", ids[149]), &t)
        .await;
    let frames = ws.until_type("live").await;
    assert!(ticks(&frames).is_empty());
    assert_eq!(frames.last().unwrap()["last_id"], ids[149].as_str());
    // Idle: the next tick goes out at once, counted from the cursor.
    let id = app.ingest_one("c.replay", 1.0).await;
    let f = ws.next_json().await;
    assert_eq!((f["id"].as_str(), f["skipped"].as_u64()), (Some(id.as_str()), Some(0)));
    app.stop().await;
}

both_engines!(replay_under_a_rate_is_the_newest_tick);

async fn trimmed_history_under_a_rate_is_skipped_not_a_gap(engine: Engine) {
    let mut config = engine.config();
    config.stream_maxlen = 50;
    let app = TestApp::start(config).await;
    let ids = ingest_n(&app, "c.trim", 400).await;
    let t = token(&["*"]);
    let mut ws = app.ws(&format!("/ws/c.trim?since={}&seq=1&rate=10", ids[0]), &t).await;
    let frames = ws.until_type("live").await;
    assert!(frames.iter().all(|f| f["type"] != "gap"), "{frames:?}");
    let sent = ticks(&frames);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["id"], ids[399].as_str());
    // Trimmed ones included: everything between seq 1 and seq 400.
    assert_eq!(sent[0]["skipped"], 398);
    app.stop().await;
}

both_engines!(trimmed_history_under_a_rate_is_skipped_not_a_gap);

async fn an_epoch_change_is_still_a_gap(engine: Engine) {
    let app = TestApp::start(engine.config()).await;
    let ids = ingest_n(&app, "c.epoch", 20).await;
    let t = token(&["*"]);
    let path = format!("/ws/c.epoch?since={}&seq=3&epoch=gone1234&rate=10", ids[2]);
    let mut ws = app.ws(&path, &t).await;
    let frames = ws.until_type("live").await;
    assert_eq!(frames[1]["type"], "gap", "{frames:?}");
    assert_eq!(frames[1]["reason"], "epoch");
    let sent = ticks(&frames);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["id"], ids[19].as_str());
    // After an epoch gap `skipped` may be null or exact; if given, it is exact.
    assert!(sent[0]["skipped"].is_null() || sent[0]["skipped"] == 19, "{}", sent[0]);
    app.stop().await;
}

both_engines!(an_epoch_change_is_still_a_gap);

async fn bad_rates_are_refused(engine: Engine) {
    let app = TestApp::start(engine.config()).await;
    let t = token(&["*"]);
    for bad in ["0", "1001", "-1", "2.5", "ten"] {
        for path in [format!("/ws/c.bad?rate={bad}"), format!("/sse/c.bad?rate={bad}")] {
            let answer = app.get_answer(&format!("{path}&token={t}"), None).await;
            assert_eq!(answer.status, 400, "{path}");
            assert_eq!(answer.body["error"], "bad_rate", "{path}");
        }
    }
    // On `/ws`: an error frame, and the socket stays open.
    let mut ws = app.ws("/ws", &t).await;
    for bad in [json!(0), json!(1001), json!(-1), json!(2.5), json!("ten")] {
        ws.send(json!({"type": "subscribe", "channel": "c.bad", "rate": bad}))
            .await;
        let f = ws.next_json().await;
        assert_eq!(
            (f["type"].as_str(), f["code"].as_str()),
            (Some("error"), Some("bad_rate")),
            "{bad}"
        );
    }
    ws.send(json!({"type": "subscribe", "channel": "c.bad", "rate": 1000}))
        .await;
    assert_eq!(ws.next_json().await["type"], "subscribed");
    app.stop().await;
}

both_engines!(bad_rates_are_refused);

async fn one_socket_conflated_and_not(engine: Engine) {
    let app = TestApp::start(engine.config()).await;
    let t = token(&["*"]);
    let mut ws = app.ws("/ws", &t).await;
    ws.send(json!({"type": "subscribe", "channel": "c.mux.sampled", "since": "$", "rate": 4}))
        .await;
    ws.until_type("live").await;
    ws.send(json!({"type": "subscribe", "channel": "c.mux.all", "since": "$"}))
        .await;
    ws.until_type("live").await;
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    let (mut sampled_ids, mut all_ids) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        pace.tick().await;
        sampled_ids.extend(ingest_n(&app, "c.mux.sampled", 5).await);
        all_ids.extend(ingest_n(&app, "c.mux.all", 5).await);
    }
    let (mut sampled, mut all) = (Vec::new(), Vec::new());
    while sampled.last() != sampled_ids.last() || all.last() != all_ids.last() {
        let f = ws.next_json().await;
        if f["type"] != "tick" {
            continue;
        }
        let id = f["id"].as_str().unwrap().to_string();
        match f["channel"].as_str() {
            Some("c.mux.sampled") => sampled.push(id),
            _ => all.push(id),
        }
    }
    assert_eq!(all, all_ids, "the unconflated subscription gets every tick");
    assert!(sampled.len() < 15, "{} frames at rate 4 in about 1 s", sampled.len());

    // Unsubscribed, a conflated subscription sends nothing more. At rate 1000 a frame
    // it still sent would leave within a millisecond of the next tick, long before
    // the marker below (a whole ingest later).
    ws.send(json!({"type": "subscribe", "channel": "c.mux.sampled", "since": "$", "rate": 1000}))
        .await;
    ws.until_type("live").await;
    ws.send(json!({"type": "unsubscribe", "channel": "c.mux.sampled"}))
        .await;
    ws.send(json!({"type": "ping"})).await;
    while ws.next_json().await["type"] != "pong" {}
    ingest_n(&app, "c.mux.sampled", 5).await;
    let marker = app.ingest_one("c.mux.all", 1.0).await;
    // The unconflated channel's tick, ingested after, arrives; nothing of the other.
    loop {
        let f = ws.next_json().await;
        assert_ne!(f["channel"], "c.mux.sampled", "{f}");
        if f["id"] == marker.as_str() {
            break;
        }
    }
    // And the server holds only the other subscription.
    eventually("one subscription left", || async {
        app.metric("/metrics", "tickstream_subscriptions").await == Some(1.0)
    })
    .await;
    app.stop().await;
}

both_engines!(one_socket_conflated_and_not);

async fn sse_under_a_rate(engine: Engine) {
    let app = TestApp::start(engine.config()).await;
    let ids = ingest_n(&app, "c.sse", 30).await;
    let t = token(&["*"]);
    let mut sse = SseClient::connect(&app, "/sse/c.sse?rate=10", &t).await.unwrap();
    let events = sse.until_event("live").await;
    assert_eq!(event_ids(&events), vec![ids[29].clone()]);
    let tick = events.iter().find(|e| e.event == "tick").unwrap();
    assert_eq!(tick.id.as_deref(), Some(ids[29].as_str()));
    assert_eq!(tick.data["skipped"], 29);
    let more = produce(&app, "c.sse", 10, 10, Duration::from_millis(30)).await;
    let mut seen = vec![tick.data.clone()];
    while seen.last().unwrap()["id"] != more.last().unwrap().as_str() {
        let e = sse.next_event().await;
        if e.event == "tick" {
            seen.push(e.data);
        }
    }
    let chained: Vec<(Instant, Value)> = seen.into_iter().map(|f| (Instant::now(), f)).collect();
    assert_chain(&chained);
    assert!(chained.len() < 30, "{} events at rate 10", chained.len());
    app.stop().await;
}

both_engines!(sse_under_a_rate);

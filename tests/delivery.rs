//! The delivery contract (docs/PROTOCOL.md §5): replay then live, every tick after the cursor
//! exactly once and in order, gaps announced, across reconnects and restarts, on both
//! engines.

mod support;

use std::sync::Arc;

use serde_json::{json, Value};
use support::property::{self, ingest_large, ingest_n};
use support::*;

async fn replay_defaults(engine: Engine) {
    let app = TestApp::start(engine.config()).await;
    let ids = ingest_n(&app, "c.replay", 150).await;
    let t = token(&["*"]);

    // since absent: the last 100, then live.
    let mut ws = app.ws("/ws/c.replay", &t).await;
    let frames = ws.until_type("live").await;
    assert_eq!(frames[0]["type"], "subscribed");
    assert_eq!(frames[0]["first_id"], ids[0].as_str());
    assert_eq!(frames[0]["last_id"], ids[149].as_str());
    assert_eq!(tick_ids(&frames), ids[50..].to_vec());
    assert_eq!(frames.last().unwrap()["last_id"], ids[149].as_str());

    // since=$: nothing replayed, live carries on from the stream's end.
    let mut live_only = app.ws("/ws/c.replay?since=$", &t).await;
    let frames = live_only.until_type("live").await;
    assert!(tick_ids(&frames).is_empty());
    assert_eq!(frames.last().unwrap()["last_id"], ids[149].as_str());

    // since=0-0: everything kept.
    let mut all = app.ws("/ws/c.replay?since=0-0", &t).await;
    assert_eq!(tick_ids(&all.until_type("live").await), ids);

    // A new tick reaches all three exactly once, with seq continuing.
    let new_id = app.ingest_one("c.replay", 1e6).await;
    for client in [&mut ws, &mut live_only, &mut all] {
        let f = client.next_json().await;
        assert_eq!(f["type"], "tick");
        assert_eq!(f["id"], new_id.as_str());
        assert_eq!(f["seq"], 151);
    }
    // All three are caught up: the channel writes the next tick to each directly
    // (docs/ARCHITECTURE.md "Delivery from the channel"). The tick above may still
    // have come through a writer's hand-over to the channel; once each has it, the
    // hand-over is done. A writer counts its ticks before writing them, the channel
    // after: the writers' share (delivered − direct) is final once the clients have
    // the tick, and the next one must add nothing to it.
    let writers = || async {
        let delivered = app.metric("/metrics", "tickstream_ticks_delivered_total").await;
        let direct = app.metric("/metrics", "tickstream_ticks_direct_total").await;
        delivered.unwrap_or(0.0) - direct.unwrap_or(0.0)
    };
    // Two equal reads in a row: not caught between the channel's two counts.
    let mut before = writers().await;
    while writers().await != before {
        before = writers().await;
    }
    assert!(before > 0.0, "the replays went through the writers");
    let next_id = app.ingest_one("c.replay", 2e6).await;
    for client in [&mut ws, &mut live_only, &mut all] {
        assert_eq!(client.next_json().await["id"], next_id.as_str());
    }
    // (Polled, for the same reason: /metrics reads the two counters one after the
    // other, and the channel may be counting between them.)
    eventually(
        "no writer wrote the next tick: the channel did, to all three",
        || async { writers().await == before },
    )
    .await;
    app.stop().await;
}

both_engines!(replay_defaults);

async fn trimmed_history_is_announced(engine: Engine) {
    let mut config = engine.config();
    config.stream_maxlen = 50;
    let app = TestApp::start(config).await;
    let ids = ingest_n(&app, "c.trim", 400).await;
    let kept = app.history_ids("c.trim", "0-0").await;
    assert!(kept.len() < 400 && kept.len() >= 50, "kept {}", kept.len());
    let first_kept = kept[0].clone();
    let lost = 400 - kept.len();
    let t = token(&["*"]);

    // With seq: exact count of what was lost.
    let mut ws = app.ws(&format!("/ws/c.trim?since={}&seq=1", ids[0]), &t).await;
    let frames = ws.until_type("live").await;
    let gap = &frames[1];
    assert_eq!(gap["type"], "gap", "{frames:?}");
    assert_eq!(gap["reason"], "trimmed");
    assert_eq!(gap["after"], ids[0].as_str());
    assert_eq!(gap["resume_from"], first_kept.as_str());
    assert_eq!(gap["missed"], (lost - 1) as u64);
    assert_eq!(tick_ids(&frames), kept);

    // Without seq: announced, count unknown.
    let mut ws = app.ws(&format!("/ws/c.trim?since={}", ids[0]), &t).await;
    let frames = ws.until_type("live").await;
    assert_eq!(frames[1]["type"], "gap");
    assert_eq!(frames[1]["missed"], Value::Null);
    assert_eq!(tick_ids(&frames), kept);

    // Resuming exactly at the tick before the first kept one: with seq, nothing was
    // missed, so no gap.
    let before_first = &ids[lost - 1];
    let mut ws = app.ws(&format!("/ws/c.trim?since={before_first}&seq={lost}"), &t).await;
    let frames = ws.until_type("live").await;
    assert!(frames.iter().all(|f| f["type"] != "gap"), "{frames:?}");
    assert_eq!(tick_ids(&frames), kept);
    app.stop().await;
}

both_engines!(trimmed_history_is_announced);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_epoch_after_flushall_is_announced() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(Some(&redis))).await;
    let t = token(&["*"]);
    let old = ingest_n(&app, "c.epoch", 5).await;
    let mut ws = app.ws("/ws/c.epoch?since=0-0", &t).await;
    let frames = ws.until_type("live").await;
    let old_epoch = frames[1]["epoch"].as_str().unwrap().to_string();
    assert_eq!(tick_ids(&frames), old);

    redis.flushall();
    let new = ingest_n(&app, "c.epoch", 3).await;

    // The connected client sees the epoch change announced before the new ticks.
    let gap = ws.next_json().await;
    assert_eq!(gap["type"], "gap", "{gap}");
    assert_eq!(gap["reason"], "epoch");
    assert_eq!(gap["resume_from"], new[0].as_str());
    let mut got = Vec::new();
    for _ in 0..3 {
        let f = ws.next_json().await;
        assert_ne!(f["epoch"], old_epoch.as_str());
        got.push(f["seq"].as_u64().unwrap());
    }
    assert_eq!(got, vec![1, 2, 3]);

    // A client resuming with the old epoch gets a gap, then the whole new epoch.
    let path = format!("/ws/c.epoch?since={}&seq=5&epoch={old_epoch}", old[4]);
    let mut resumed = app.ws(&path, &t).await;
    let frames = resumed.until_type("live").await;
    assert_eq!(frames[1]["type"], "gap");
    assert_eq!(frames[1]["reason"], "epoch");
    assert_eq!(frames[1]["missed"], Value::Null);
    assert_eq!(tick_ids(&frames), new);
    app.stop().await;
}

async fn lagging_session_catches_up(engine: Engine) {
    let mut config = engine.config();
    // A tiny live buffer and queue: a client that does not read is lapped by the
    // broadcast, or (on the direct path) fills its socket and then the channel's
    // pending bytes for it, so it must catch up from the ring or the stream.
    config.live_buffer = 16;
    config.send_queue = 16;
    let app = TestApp::start(config).await;
    let t = token(&["*"]);
    let mut ws = app.ws("/ws/c.lag?since=0-0", &t).await;
    ws.until_type("live").await;
    // Ingest without reading: 9 MB, more than the sockets on the way can hold.
    let mut ids = Vec::new();
    for round in 0..12 {
        ids.extend(ingest_large(&app, "c.lag", round).await);
    }
    let mut got = Vec::new();
    let mut last_seq = 0;
    while got.len() < ids.len() {
        let f = ws.next_json().await;
        assert_eq!(f["type"], "tick", "{f}");
        assert_eq!(f["seq"].as_u64().unwrap(), last_seq + 1);
        last_seq += 1;
        got.push(f["id"].as_str().unwrap().to_string());
    }
    assert_eq!(got, ids);
    let catchups = app
        .metric("/metrics", "tickstream_slow_consumer_catchups_total")
        .await
        .unwrap_or(0.0);
    assert!(catchups >= 1.0, "the session should have lagged and caught up");
    app.stop().await;
}

both_engines!(lagging_session_catches_up);

/// The connection's own frames (pongs here) and the channel's direct writes share one
/// socket: while the client does not read, the socket fills, a direct write is cut
/// short, and the pongs must wait until the rest of that frame is out. Read at last,
/// every frame is whole, every pong arrives, every tick once and in order.
async fn own_frames_never_split_a_direct_write(engine: Engine) {
    let app = TestApp::start(engine.config()).await;
    let t = token(&["*"]);
    let mut ws = app.ws("/ws/c.split?since=$", &t).await;
    ws.until_type("live").await;
    let mut ids = Vec::new();
    for round in 0..12 {
        ids.extend(ingest_large(&app, "c.split", round).await);
        ws.send(json!({"type": "ping"})).await;
    }
    let (mut got, mut pongs) = (Vec::new(), 0);
    while got.len() < ids.len() || pongs < 12 {
        let f = ws.next_json().await;
        match f["type"].as_str() {
            Some("tick") => got.push(f["id"].as_str().unwrap().to_string()),
            Some("pong") => pongs += 1,
            _ => panic!("unexpected frame {f}"),
        }
    }
    assert_eq!(got, ids);
    app.stop().await;
}

both_engines!(own_frames_never_split_a_direct_write);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiplexed_socket_subscribes_and_unsubscribes() {
    let app = TestApp::start(config(None)).await;
    let a = ingest_n(&app, "m.a", 3).await;
    let b = ingest_n(&app, "m.b", 2).await;
    let mut ws = app.ws("/ws", &token(&["m.*"])).await;
    ws.send(json!({"type": "subscribe", "channel": "m.a", "since": "0-0"}))
        .await;
    assert_eq!(tick_ids(&ws.until_type("live").await), a);
    ws.send(json!({"type": "subscribe", "channel": "m.b", "since": b[0]}))
        .await;
    assert_eq!(tick_ids(&ws.until_type("live").await), b[1..].to_vec());
    // Refused subscribes answer an error frame and keep the socket usable.
    ws.send(json!({"type": "subscribe", "channel": "other"})).await;
    let err = ws.next_json().await;
    assert_eq!(
        (err["type"].as_str(), err["code"].as_str(), err["channel"].as_str()),
        (Some("error"), Some("forbidden"), Some("other"))
    );
    ws.send(json!({"type": "subscribe", "channel": "bad name"})).await;
    assert_eq!(ws.next_json().await["code"], "bad_channel");
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.next_json().await["type"], "pong");
    ws.send(json!({"type": "unsubscribe", "channel": "m.a"})).await;
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.next_json().await["type"], "pong");
    let a4 = app.ingest_one("m.a", 99.0).await;
    let b3 = app.ingest_one("m.b", 98.0).await;
    let f = ws.next_json().await;
    assert_eq!(f["id"], b3.as_str(), "m.a ({a4}) was unsubscribed");
    assert_eq!(f["channel"], "m.b");
    app.stop().await;
}

/// The core property (`support::property`) on one server of each engine; for the
/// Redis engine, REST history is XRANGE.
async fn exactly_once(engine: Engine) {
    let app = Arc::new(TestApp::start(engine.config()).await);
    let channels: Vec<String> = ["p.one", "p.two", "p.three"].iter().map(|c| c.to_string()).collect();
    let checked = property::exactly_once(std::slice::from_ref(&app), &channels).await;
    if let Some(redis) = engine.redis_server() {
        for c in &channels {
            assert_eq!(app.history_ids(c, "0-0").await, redis.xrange_ids(c, 16));
        }
    }
    assert!(checked > 1000, "checked {checked} deliveries");
}

both_engines!(exactly_once);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_resume_exactly_after_a_server_restart() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(Some(&redis))).await;
    let t = token(&["*"]);
    let before = ingest_n(&app, "r.c", 50).await;
    let mut ws = app.ws("/ws/r.c?since=0-0", &t).await;
    let frames = ws.until_type("live").await;
    assert_eq!(tick_ids(&frames), before);
    let last = frames.iter().rev().find(|f| f["type"] == "tick").unwrap().clone();

    // Graceful stop: the client is told to reconnect (1012).
    app.stop().await;
    assert_eq!(ws.close_code().await, Some(1012));

    // Ticks arrive while no server runs: ingested by the next server.
    let app = TestApp::start(config(Some(&redis))).await;
    let during = ingest_n(&app, "r.c", 30).await;
    let path = format!(
        "/ws/r.c?since={}&seq={}&epoch={}",
        last["id"].as_str().unwrap(),
        last["seq"],
        last["epoch"].as_str().unwrap()
    );
    let mut ws = app.ws(&path, &t).await;
    let frames = ws.until_type("live").await;
    assert!(frames.iter().all(|f| f["type"] != "gap"));
    assert_eq!(tick_ids(&frames), during);
    let next = app.ingest_one("r.c", 7e7).await;
    let f = ws.next_json().await;
    assert_eq!((f["id"].as_str(), f["seq"].as_u64()), (Some(next.as_str()), Some(81)));
    app.stop().await;
}

/// The ingest time of a tick: the millisecond part of its id.
fn ms_of(id: &str) -> u64 {
    id.split('-').next().unwrap().parse().unwrap()
}

fn rfc3339(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap();
    t.format(&time::format_description::well_known::Rfc3339).unwrap()
}

/// Ticks appended in three bursts, each in a later millisecond than the one before.
async fn three_bursts(app: &TestApp, channel: &str) -> Vec<Vec<String>> {
    let mut bursts = Vec::new();
    for b in 0..3 {
        let ticks: Vec<Value> = (0..4)
            .map(|i| json!({"channel": channel, "value": b * 10 + i, "key": format!("{b}-{i}")}))
            .collect();
        let (status, body) = app.ingest(&Value::Array(ticks)).await;
        assert_eq!(status, 201, "{body}");
        bursts.push(
            body["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>(),
        );
        // Ids take the clock's millisecond: once it has moved on, the next burst's do.
        let last_ms = ms_of(bursts.last().unwrap().last().unwrap());
        eventually("the clock passes the burst's millisecond", || async move {
            tickstream::clock::now_ms() > last_ms
        })
        .await;
    }
    bursts
}

async fn resume_by_time(engine: Engine) {
    let app = TestApp::start(engine.config()).await;
    let t = token(&["*"]);
    let bursts = three_bursts(&app, "bytime.c").await;
    let from_second: Vec<String> = bursts[1..].concat();
    let second_ms = ms_of(&bursts[1][0]);
    for since in [format!("t:{second_ms}"), format!("t:{}", rfc3339(second_ms))] {
        // WebSocket, one channel and multiplexed.
        let mut ws = app.ws(&format!("/ws/bytime.c?since={since}"), &t).await;
        assert_eq!(
            tick_ids(&ws.until_type("live").await),
            from_second,
            "/ws/{{channel}} {since}"
        );
        let mut ws = app.ws("/ws", &t).await;
        ws.send(json!({"type": "subscribe", "channel": "bytime.c", "since": since}))
            .await;
        assert_eq!(tick_ids(&ws.until_type("live").await), from_second, "/ws {since}");
        // Server-Sent Events.
        let mut sse = SseClient::connect(&app, &format!("/sse/bytime.c?since={since}"), &t)
            .await
            .unwrap();
        assert_eq!(event_ids(&sse.until_event("live").await), from_second, "/sse {since}");
        // History: since is the first tick at or after the moment, until the last
        // one at or before it.
        let until = format!("t:{}", ms_of(bursts[1].last().unwrap()));
        let (status, page) = app
            .get(
                &format!("/api/v1/channels/bytime.c/ticks?since={since}&until={until}"),
                Some(&t),
            )
            .await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page_ids(&page), bursts[1], "history {since}..={until}");
    }
    // A moment that is not one is refused.
    let (status, body) = app.get("/api/v1/channels/bytime.c/ticks?since=t:soon", Some(&t)).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_id")));
    app.stop().await;
}

both_engines!(resume_by_time);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_by_time_older_than_the_kept_history_is_a_trimmed_gap() {
    let mut cfg = config(None);
    cfg.stream_maxlen = 5;
    let app = TestApp::start(cfg).await;
    let ids = ingest_n(&app, "bytime.t", 12).await;
    let mut ws = app
        .ws(&format!("/ws/bytime.t?since=t:{}", ms_of(&ids[0])), &token(&["*"]))
        .await;
    let frames = ws.until_type("live").await;
    let gap = frames.iter().find(|f| f["type"] == "gap").expect("a gap");
    assert_eq!(gap["reason"], "trimmed");
    assert!(gap["missed"].is_null());
    assert_eq!(tick_ids(&frames), ids[7..]);
    app.stop().await;
}

/// Two channels of one partition, so one reader tails both.
fn same_partition_pair() -> (String, String) {
    let p = |c: &str| tickstream::keyspace::partition_of(c, 16);
    let first = "bad.a".to_string();
    let second = (0..).map(|i| format!("bad.b{i}")).find(|c| p(c) == p(&first)).unwrap();
    (first, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_stream_entry_is_skipped_and_delivery_goes_on() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(Some(&redis))).await;
    let (bad, neighbour) = same_partition_pair();
    let t = token(&["*"]);
    let before = app.ingest_one(&bad, 1.0).await;
    app.ingest_one(&neighbour, 1.0).await;
    let mut ws = app.ws("/ws", &t).await;
    for c in [&bad, &neighbour] {
        ws.send(json!({"type": "subscribe", "channel": c, "since": "$"})).await;
        ws.until_type("live").await;
    }
    // Something that is not a tick lands in the stream, then one that took a `seq`
    // (its body damaged).
    let keys = tickstream::keyspace::ChannelKeys::new(&bad, 16);
    let mut c = redis.client();
    let _: String = redis::cmd("XADD")
        .arg(&keys.stream)
        .arg("*")
        .arg("j")
        .arg("garbage")
        .query(&mut c)
        .unwrap();
    let _: i64 = redis::cmd("HINCRBY")
        .arg(&keys.meta)
        .arg("seq")
        .arg(1)
        .query(&mut c)
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&keys.stream)
        .arg("*")
        .arg("x")
        .arg("1")
        .query(&mut c)
        .unwrap();
    // Delivery goes on, on that channel and on its partition's others.
    let next = app.ingest_one(&bad, 2.0).await;
    let other = app.ingest_one(&neighbour, 2.0).await;
    let mut seen = Vec::new();
    while seen.iter().filter(|f: &&Value| f["type"] == "tick").count() < 2 {
        seen.push(ws.next_json().await);
    }
    let gap = seen
        .iter()
        .find(|f| f["type"] == "gap")
        .expect("the lost seq is announced");
    assert_eq!(
        (gap["reason"].as_str(), gap["missed"].as_u64()),
        (Some("trimmed"), Some(1)),
        "{gap}"
    );
    assert_eq!(gap["channel"], bad.as_str());
    let ids = tick_ids(&seen);
    assert!(ids.contains(&next) && ids.contains(&other), "{seen:?}");
    // History skips the entries too, and says nothing false.
    let (status, page) = app.get(&format!("/api/v1/channels/{bad}/ticks"), Some(&t)).await;
    assert_eq!(status, 200, "{page}");
    let kept: Vec<&str> = page["ticks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(kept, [before.as_str(), next.as_str()]);
    assert!(app
        .metric("/metrics", "tickstream_bad_entries_total")
        .await
        .is_some_and(|n| n >= 2.0));
    app.stop().await;
}

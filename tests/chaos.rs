//! Faults with real processes (docs/PROTOCOL.md §5, docs/OPERATIONS.md): `redis-server` and the `tickstream`
//! binary started here and killed or stopped by pid. Each test checks, against
//! `XRANGE`, that every client got every tick after its cursor exactly once, in
//! order, or an announced gap.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// A client that records what it receives and can resume elsewhere.
struct Tracker {
    ids: Vec<String>,
    last: Option<(String, u64, String)>,
}

impl Tracker {
    fn new() -> Tracker {
        Tracker {
            ids: Vec::new(),
            last: None,
        }
    }

    fn path(&self, channel: &str) -> String {
        match &self.last {
            None => format!("/ws/{channel}?since=0-0"),
            Some((id, seq, epoch)) => format!("/ws/{channel}?since={id}&seq={seq}&epoch={epoch}"),
        }
    }

    /// Takes one frame; ticks must continue `seq` by one; gaps are not expected.
    fn take(&mut self, f: &Value) {
        match f["type"].as_str() {
            Some("tick") => {
                let seq = f["seq"].as_u64().unwrap();
                if let Some((_, last, _)) = &self.last {
                    assert_eq!(seq, last + 1, "seq continuity: {f}");
                }
                let id = f["id"].as_str().unwrap().to_string();
                self.ids.push(id.clone());
                self.last = Some((id, seq, f["epoch"].as_str().unwrap().to_string()));
            }
            Some("gap") => panic!("no history was lost, yet: {f}"),
            _ => {}
        }
    }

    /// Reads until the client has `last_id`; panics if the socket closes.
    async fn read_until(&mut self, ws: &mut WsClient, last_id: &str) {
        while self.ids.last().map(String::as_str) != Some(last_id) {
            match ws.next_within(TIMEOUT).await {
                Next::Json(f) => self.take(&f),
                other => panic!("socket must stay open, got {other:?}"),
            }
        }
    }
}

fn batch(channel: &str, round: usize, n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"channel": channel, "value": (round * 1000 + i) as f64, "key": format!("{round}-{i}")}))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_for_3_s_loses_nothing() {
    let redis = RedisServer::start();
    let node = NodeProc::start(&redis).await;
    let app = node.app();
    let t = token(&["*"]);
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut ws = app.ws("/ws/chaos.stop?since=0-0", &t).await;
        ws.until_type("live").await;
        clients.push((Tracker::new(), ws));
    }
    for round in 0..5 {
        app.ingest_retrying(&batch("chaos.stop", round, 20)).await;
    }
    signal(redis.pid(), "STOP");
    let paused = Instant::now();
    // Ingest during the pause: it waits or answers 503, and is retried.
    let producer = {
        let app = node.app();
        tokio::spawn(async move {
            for round in 5..10 {
                app.ingest_retrying(&batch("chaos.stop", round, 20)).await;
            }
        })
    };
    // Not a condition: the freeze itself is the scenario (3 s of Redis not answering,
    // with a producer and 5 clients waiting on it), so its length has to pass.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, ready) = app.get("/readyz", None).await;
    signal(redis.pid(), "CONT");
    assert_eq!(status, 503, "readiness reports the outage: {ready}");
    producer.await.unwrap();
    for round in 10..12 {
        app.ingest_retrying(&batch("chaos.stop", round, 20)).await;
    }
    let expected = redis.xrange_ids("chaos.stop", 16);
    assert_eq!(expected.len(), 240);
    for (tracker, ws) in &mut clients {
        tracker.read_until(ws, expected.last().unwrap()).await;
        assert_same_ids(&tracker.ids, &expected, "client");
    }
    println!(
        "survived a {:?} Redis stop; 5 clients × 240 ticks checked",
        paused.elapsed()
    );
    eventually("ready again", || async { app.get("/readyz", None).await.0 == 200 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_on_its_data_dir_keeps_history_epoch_and_seq() {
    let mut redis = RedisServer::start_persistent();
    let node = NodeProc::start(&redis).await;
    let app = node.app();
    let t = token(&["*"]);
    let mut tracker = Tracker::new();
    let mut ws = app.ws("/ws/chaos.restart?since=0-0", &t).await;
    for round in 0..5 {
        app.ingest_retrying(&batch("chaos.restart", round, 20)).await;
    }
    let before = redis.xrange_ids("chaos.restart", 16);
    tracker.read_until(&mut ws, before.last().unwrap()).await;
    let epoch = tracker.last.as_ref().unwrap().2.clone();

    // Redis is down for 3 s: the socket stays open, everything else says 503.
    let down = Instant::now();
    redis.kill();
    let (status, body) = app.ingest(&batch("chaos.restart", 99, 1)).await;
    assert_eq!((status, body["error"].as_str()), (503, Some("unavailable")));
    eventually("readyz reports the outage", || async {
        app.get("/readyz", None).await.0 == 503
    })
    .await;
    eventually("handshakes answer 503", || async {
        matches!(
            app.try_ws("/ws/chaos.restart", &[("authorization", format!("Bearer {t}"))])
                .await,
            Err((503, _))
        )
    })
    .await;
    // Not a condition: the outage's length is the scenario (down 3 s, then back on its
    // data); only what is left of the 3 s after the checks above passes here.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(down.elapsed())).await;
    redis.start_again();
    let outage = down.elapsed();
    for round in 5..10 {
        app.ingest_retrying(&batch("chaos.restart", round, 20)).await;
    }
    let after = redis.xrange_ids("chaos.restart", 16);
    assert_eq!(after.len(), 200, "the AOF kept the first 100");
    assert_eq!(after[..100], before[..]);
    tracker.read_until(&mut ws, after.last().unwrap()).await;
    assert_same_ids(&tracker.ids, &after, "client");
    let (_, seq, same_epoch) = tracker.last.clone().unwrap();
    assert_eq!(
        (seq, same_epoch),
        (200, epoch),
        "seq and epoch continue across the restart"
    );
    println!("redis was down {outage:?}; the socket stayed open; 200 ticks checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_resume_on_another_node_after_a_kill_9() {
    let redis = RedisServer::start();
    let mut a = NodeProc::start(&redis).await;
    let b = NodeProc::start(&redis).await;
    let (app_a, app_b) = (a.app(), b.app());
    let t = token(&["*"]);
    let mut clients = Vec::new();
    for _ in 0..10 {
        let mut ws = app_a.ws("/ws/chaos.kill?since=0-0", &t).await;
        ws.until_type("live").await;
        clients.push((Tracker::new(), ws));
    }
    // A watcher on node B sees ticks ingested on node A.
    let mut watcher = Tracker::new();
    let mut watcher_ws = app_b.ws("/ws/chaos.kill?since=0-0", &t).await;

    for round in 0..10 {
        app_a.ingest_retrying(&batch("chaos.kill", round, 25)).await;
    }
    // Let every client read part of it, at its own pace, then kill A mid-stream.
    for (i, (tracker, ws)) in clients.iter_mut().enumerate() {
        let stop_after = 10 + i * 17;
        while tracker.ids.len() < stop_after {
            match ws.next_within(TIMEOUT).await {
                Next::Json(f) => tracker.take(&f),
                other => panic!("{other:?}"),
            }
        }
    }
    let producer = {
        let app_b = b.app();
        tokio::spawn(async move {
            for round in 10..20 {
                app_b.ingest_retrying(&batch("chaos.kill", round, 25)).await;
            }
        })
    };
    a.kill9();
    // Every client resumes on B from its own cursor.
    let started = Instant::now();
    let mut resumed = Vec::new();
    for (tracker, _) in clients {
        let ws = app_b.ws(&tracker.path("chaos.kill"), &t).await;
        resumed.push((tracker, ws));
    }
    producer.await.unwrap();
    let expected = redis.xrange_ids("chaos.kill", 16);
    assert_eq!(expected.len(), 500);
    for (tracker, ws) in &mut resumed {
        tracker.read_until(ws, expected.last().unwrap()).await;
        assert_same_ids(&tracker.ids, &expected, "client");
    }
    println!("10 clients resumed on node B and caught up in {:?}", started.elapsed());
    watcher.read_until(&mut watcher_ws, expected.last().unwrap()).await;
    assert_same_ids(&watcher.ids, &expected, "watcher on node B");

    // The registry lists B; A's entry ages out (it could not deregister).
    let (status, nodes) = app_b.get("/api/v1/nodes", Some(&t)).await;
    assert_eq!(status, 200);
    let addrs: Vec<&str> = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["address"].as_str().unwrap())
        .collect();
    assert!(addrs.contains(&b.addr.to_string().as_str()), "{nodes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_client_never_delays_the_others() {
    let redis = RedisServer::start();
    // Keep all 20,000 in the stream, so XRANGE can check every client.
    let node = NodeProc::start_with(&redis, &[("TICKSTREAM_STREAM_MAXLEN", "50000")]).await;
    let app = node.app();
    let t = token(&["*"]);
    // The stuck client subscribes, then never reads.
    let mut stuck = app.ws("/ws/chaos.slow?since=$", &t).await;
    stuck.until_type("live").await;
    let mut normal = app.ws("/ws/chaos.slow?since=$", &t).await;
    normal.until_type("live").await;

    let rss_before = app.rss().await;
    let reader = tokio::spawn(async move {
        let mut ids = Vec::new();
        let mut lags_ms = Vec::new();
        while ids.len() < 20_000 {
            match normal.next_within(TIMEOUT).await {
                Next::Json(f) if f["type"] == "tick" => {
                    let sent_us = f["data"]["sent_us"].as_i64().unwrap();
                    lags_ms.push((tickstream::clock::now_us() - sent_us) as f64 / 1000.0);
                    ids.push(f["id"].as_str().unwrap().to_string());
                }
                Next::Json(_) => {}
                other => panic!("the normal client must not be disturbed: {other:?}"),
            }
        }
        (ids, lags_ms)
    });
    let started = Instant::now();
    for round in 0..40 {
        let ticks: Vec<Value> = (0..500)
            .map(|i| json!({"channel": "chaos.slow", "data": {"sent_us": tickstream::clock::now_us(), "i": i}, "key": format!("{round}-{i}")}))
            .collect();
        app.ingest_retrying(&Value::Array(ticks)).await;
    }
    let (ids, mut lags) = reader.await.unwrap();
    let rss_after = app.rss().await;
    let elapsed = started.elapsed();
    let expected = redis.xrange_ids("chaos.slow", 16);
    assert_same_ids(&ids, &expected, "the normal client gets all 20,000, in order");
    lags.sort_by(f64::total_cmp);
    let p99 = lags[lags.len() * 99 / 100];
    println!(
        "20,000 ticks in {elapsed:?}; normal client latency p50 {:.1} ms, p99 {p99:.1} ms, max {:.1} ms",
        lags[lags.len() / 2],
        lags[lags.len() - 1]
    );

    // The stuck client's backlog is bounded (a fixed queue; the rest stays in Redis).
    let growth_mib = (rss_after - rss_before) as f64 / 1048576.0;
    println!(
        "server RSS {:.1} MiB → {:.1} MiB while 20,000 ticks (~4 MiB of frames) passed a stuck client",
        rss_before as f64 / 1048576.0,
        rss_after as f64 / 1048576.0
    );
    assert!(growth_mib < 64.0, "server memory grew {growth_mib:.1} MiB");

    // The stuck client: either it still gets everything in order once it reads, or it
    // was closed with 1013 and resumes exactly where it stopped.
    let mut tracker = Tracker::new();
    let mut socket = Some(stuck);
    let mut closed_1013 = false;
    while tracker.ids.last() != expected.last() {
        let ws = match socket.as_mut() {
            Some(ws) => ws,
            None => {
                socket = Some(app.ws(&tracker.path("chaos.slow"), &t).await);
                socket.as_mut().unwrap()
            }
        };
        match ws.next_within(TIMEOUT).await {
            Next::Json(f) => tracker.take(&f),
            Next::Closed(code, _) => {
                assert_eq!(code, Some(1013), "a stuck socket is closed with 1013");
                closed_1013 = true;
                socket = None;
            }
            Next::Timeout => panic!("the stuck client stalled at {} ticks", tracker.ids.len()),
        }
    }
    assert_same_ids(&tracker.ids, &expected, "client");
    println!("stuck client: closed with 1013: {closed_1013}; all 20,000 received exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_sockets_with_1012_and_exits_0_within_10_s() {
    let redis = RedisServer::start();
    let mut node = NodeProc::start(&redis).await;
    let app = node.app();
    let t = token(&["*"]);
    let mut sockets = Vec::new();
    for _ in 0..20 {
        let mut ws = app.ws("/ws/chaos.term", &t).await;
        ws.until_type("live").await;
        sockets.push(ws);
    }
    let (code, took) = node.terminate();
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(10), "exited in {took:?}");
    for ws in &mut sockets {
        assert_eq!(ws.close_code().await, Some(1012));
    }
    // The node removed itself from the registry on the way out.
    let nodes: Vec<(String, u64)> = redis::cmd("ZRANGE")
        .arg("tickstream:nodes")
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query(&mut redis.client())
        .unwrap();
    assert!(nodes.is_empty(), "{nodes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_storm_reads_history_from_redis_once() {
    const CLIENTS: usize = 1000;
    let redis = RedisServer::start();
    let first = NodeProc::start(&redis).await;
    for round in 0..4 {
        first.app().ingest_retrying(&batch("storm.c", round, 500)).await;
    }
    let ids = redis.xrange_ids("storm.c", 16);
    let (_, at) = first
        .app()
        .get(
            &format!("/api/v1/channels/storm.c/ticks?since={}&limit=1", ids[1498]),
            Some(&token(&["*"])),
        )
        .await;
    let epoch = at["epoch"].as_str().unwrap().to_string();
    drop(first);

    // A fresh node (nothing active, nothing cached); every client resumes 500 behind.
    let node = NodeProc::start(&redis).await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut redis.client())
        .unwrap();
    let path = format!("/ws/storm.c?since={}&seq=1500&epoch={epoch}", ids[1499]);
    let expected: Vec<String> = ids[1500..].to_vec();
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let app = node.app();
        let path = path.clone();
        let expected = expected.clone();
        clients.push(tokio::spawn(async move {
            let mut ws = app.ws(&path, &token(&["*"])).await;
            let frames = ws.until_type("live").await;
            assert_same_ids(&tick_ids(&frames), &expected, "resumed client");
            ws
        }));
    }
    let mut sockets = Vec::new();
    for c in clients {
        sockets.push(c.await.unwrap());
    }
    let took = started.elapsed();
    let reads = calls(&redis, "xrange") + calls(&redis, "xrevrange");
    println!(
        "{CLIENTS} clients resumed 500 ticks each in {took:?}; Redis range reads: {reads}, XINFO: {}",
        calls(&redis, "xinfo|stream")
    );
    assert!(
        reads <= 2,
        "history came from Redis {reads} times for {CLIENTS} resumes"
    );
}

/// Open WebSockets on the node.
async fn connections(app: &TestApp) -> f64 {
    app.metric("/metrics", "tickstream_connections").await.unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_unwritable_for_10_s_is_dropped_and_resumes_exactly() {
    let redis = RedisServer::start();
    let node = NodeProc::start_with(&redis, &[("TICKSTREAM_STREAM_MAXLEN", "100000")]).await;
    let app = node.app();
    let t = token(&["*"]);
    let mut stuck = app.ws("/ws/chaos.unwritable?since=$", &t).await;
    let mut tracker = Tracker::new();
    for f in stuck.until_type("live").await {
        tracker.take(&f);
    }
    assert_eq!(connections(&app).await, 1.0);
    // About 40 MiB of frames, far more than the loopback socket buffers hold, while
    // the client reads nothing.
    let pad = "x".repeat(4000);
    for round in 0..40 {
        let ticks: Vec<Value> = (0..250)
            .map(|i| json!({"channel": "chaos.unwritable", "data": {"pad": pad}, "key": format!("{round}-{i}")}))
            .collect();
        app.ingest_retrying(&Value::Array(ticks)).await;
    }
    let stalled = Instant::now();
    // The write stall must last 10 s before the socket is dropped: longer than TIMEOUT.
    eventually_within("the stuck socket is dropped", Duration::from_secs(40), || async {
        connections(&app).await == 0.0
    })
    .await;
    println!("stuck socket dropped {:?} after the last ingest", stalled.elapsed());
    // What the client still gets is in order; then it resumes exactly.
    let mut code = None;
    loop {
        match stuck.next_within(TIMEOUT).await {
            Next::Json(f) => tracker.take(&f),
            Next::Closed(c, _) => {
                code = c;
                break;
            }
            Next::Timeout => break,
        }
    }
    assert!(matches!(code, None | Some(1013)), "closed with {code:?}");
    let expected = redis.xrange_ids("chaos.unwritable", 16);
    assert_eq!(expected.len(), 10_000);
    let mut ws = app.ws(&tracker.path("chaos.unwritable"), &t).await;
    tracker.read_until(&mut ws, expected.last().unwrap()).await;
    assert_same_ids(&tracker.ids, &expected, "stuck client after resuming");
}

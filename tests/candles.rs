//! Candles (docs/PROTOCOL.md §6 "Candles"): exact against a reference on both
//! engines, kept past the stream's cap, paged like history, live over WebSocket and
//! SSE, and rebuilt from the streams.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use support::candles::{
    assert_matches, candles_match_reference, ingest_all, parse_ms, random_batches, read_all, rfc3339_us, Reference,
    BASE_US, INTERVALS,
};
use support::*;

fn seed() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// Exact against a reference, with the stream capped at 50 ticks: the candles count
/// every stored tick, trimmed or not.
async fn candles_equal_a_reference_and_outlive_the_stream(engine: Engine) {
    let mut cfg = engine.config();
    cfg.stream_maxlen = 50;
    let app = TestApp::start(cfg).await;
    let reference = candles_match_reference(&app, "cd.prop", seed()).await;
    // The stream keeps about 50 ticks; the candles count every stored one.
    let counted: u64 = reference.candles("1d").values().map(|c| c.count).sum();
    let (_, page) = app
        .get("/api/v1/channels/cd.prop/ticks?limit=1000", Some(&token(&["*"])))
        .await;
    let kept = page["ticks"].as_array().unwrap().len() as u64;
    assert!(
        counted > 4 * kept,
        "candles count {counted} ticks, the stream keeps {kept}"
    );
    app.stop().await;
}

both_engines!(candles_equal_a_reference_and_outlive_the_stream);

/// Five one-minute buckets, one tick each, values 1..=5.
async fn five_minutes(app: &TestApp, channel: &str) -> Vec<i64> {
    let starts: Vec<i64> = (0..5).map(|m| BASE_US / 1000 + m * 60_000).collect();
    let ticks: Vec<Value> = starts
        .iter()
        .enumerate()
        .map(|(i, ms)| json!({"channel": channel, "ts": rfc3339_us(ms * 1000 + 5), "value": i + 1}))
        .collect();
    app.ingest_retrying(&Value::Array(ticks)).await;
    starts
}

fn closes(page: &Value) -> Vec<i64> {
    page["candles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["close"].as_i64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_bounds_and_refusals_work_like_history() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(Some(&redis))).await;
    let t = token(&["cd.*"]);
    let starts = five_minutes(&app, "cd.page").await;
    let get = |q: String| {
        let app = &app;
        let t = t.clone();
        async move {
            app.get(&format!("/api/v1/channels/cd.page/candles?{q}"), Some(&t))
                .await
        }
    };
    let (status, page) = get("interval=1m".into()).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["channel"], "cd.page");
    assert_eq!(page["interval"], "1m");
    assert_eq!(closes(&page), [1, 2, 3, 4, 5]);
    assert!(page["next"].is_null());
    let c = &page["candles"][0];
    assert_eq!(parse_ms(c["t"].as_str().unwrap()), starts[0]);
    assert_eq!(
        (c["open"].as_i64(), c["high"].as_i64(), c["low"].as_i64()),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(c["count"], 1);
    assert!(c["volume"].is_null());
    // (since, until]: by unix ms and by RFC 3339, the same.
    let (_, page) = get(format!("interval=1m&since={}&until={}", starts[1], starts[3])).await;
    assert_eq!(closes(&page), [3, 4]);
    let (since, until) = (rfc3339_us(starts[1] * 1000), rfc3339_us(starts[3] * 1000));
    let (_, page) = get(format!("interval=1m&since={since}&until={until}")).await;
    assert_eq!(closes(&page), [3, 4]);
    // Pages of 2, both orders, with the cursor.
    for (order, want) in [("asc", vec![1, 2, 3, 4, 5]), ("desc", vec![5, 4, 3, 2, 1])] {
        let mut got = Vec::new();
        let mut cursor = String::new();
        loop {
            let (status, page) = get(format!("interval=1m&limit=2&order={order}&cursor={cursor}")).await;
            assert_eq!(status, 200, "{page}");
            got.extend(closes(&page));
            match page["next"].as_str() {
                Some(n) => cursor = n.to_string(),
                None => break,
            }
        }
        assert_eq!(got, want, "{order}");
    }
    // Coarser intervals fold the same ticks.
    let (_, page) = get("interval=1h".into()).await;
    let hours: Vec<(i64, i64, i64, i64, u64)> = page["candles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let n = |k: &str| c[k].as_i64().unwrap();
            (n("open"), n("high"), n("low"), n("close"), c["count"].as_u64().unwrap())
        })
        .collect();
    // 23:50 to 23:54: one hour bucket.
    assert_eq!(hours, [(1, 5, 1, 5, 5)]);
    // A tick dated 2100 (a producer's clock gone wrong) is refused (beyond
    // TICKSTREAM_MAX_FUTURE): it would make a candle that is never trimmed.
    let (status, body) = app
        .ingest(&json!({"channel": "cd.page", "ts": "2100-01-01T00:00:00Z", "value": 9}))
        .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_ts")), "{body}");
    let (_, page) = get("interval=1m".into()).await;
    assert_eq!(closes(&page), [1, 2, 3, 4, 5]);
    // A channel without ticks: 200 and nothing.
    let (status, page) = app.get("/api/v1/channels/cd.none/candles?interval=1m", Some(&t)).await;
    assert_eq!((status, page["candles"].clone()), (200, json!([])));
    // Refusals name what was wrong.
    for (q, code) in [
        ("interval=2m", "bad_interval"),
        ("", "bad_interval"),
        ("interval=1m&since=yesterday", "bad_time"),
        ("interval=1m&limit=0", "bad_limit"),
        ("interval=1m&limit=1001", "bad_limit"),
        ("interval=1m&order=up", "bad_order"),
        ("interval=1m&cursor=x", "bad_cursor"),
    ] {
        let (status, body) = get(q.into()).await;
        assert_eq!((status, body["error"].as_str()), (400, Some(code)), "{q}: {body}");
    }
    let (status, _) = app.get("/api/v1/channels/other/candles?interval=1m", Some(&t)).await;
    assert_eq!(status, 403, "the token does not cover the channel");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_candles_off_nothing_is_kept_and_asking_is_refused() {
    let redis = RedisServer::start();
    let mut cfg = config(Some(&redis));
    cfg.candles.enabled = false;
    let app = TestApp::start(cfg).await;
    let t = token(&["*"]);
    five_minutes(&app, "cd.off").await;
    let keys: Vec<String> = redis::cmd("KEYS").arg("*:c:*").query(&mut redis.client()).unwrap();
    assert!(keys.is_empty(), "candle keys with candles off: {keys:?}");
    let (status, _) = app.get("/api/v1/channels/cd.off/candles?interval=1m", Some(&t)).await;
    assert_eq!(status, 404);
    let refused = app
        .try_ws("/ws/cd.off?candles=1m", &[bearer(&t)])
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.0, 400);
    assert_eq!(refused.1["error"], "bad_interval");
    let mut ws = app.ws("/ws", &t).await;
    ws.send(json!({"type": "subscribe", "channel": "cd.off", "candles": "1m"}))
        .await;
    let frame = ws.next_json().await;
    assert_eq!(
        (frame["type"].as_str(), frame["code"].as_str()),
        (Some("error"), Some("bad_interval"))
    );
    app.stop().await;
}

/// The candle frames a client received until one satisfied `done`.
async fn candles_until(ws: &mut WsClient, done: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut got = Vec::new();
    loop {
        let f = ws.next_json().await;
        if f["type"] == "candle" {
            let stop = done(&f);
            got.push(f);
            if stop {
                return got;
            }
        }
    }
}

fn same_candle(frame: &Value, r: &support::candles::RefCandle) -> bool {
    frame["count"].as_u64() == Some(r.count)
        && frame["open"].as_f64() == Some(r.open.2)
        && frame["close"].as_f64() == Some(r.close.2)
        && frame["high"].as_f64() == Some(r.high)
        && frame["low"].as_f64() == Some(r.low)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_candles_follow_the_reference_and_close_buckets_with_a_final_frame() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(Some(&redis))).await;
    let t = token(&["*"]);
    let mut ws = app.ws("/ws", &t).await;
    ws.send(json!({"type": "subscribe", "channel": "cd.live", "candles": "1s", "since": "$"}))
        .await;
    ws.until_type("live").await;
    // Bucket A: 40 ticks over about a second (ts inside one 1s bucket, any order).
    let a_us = BASE_US + 7_000_000;
    let mut reference = Reference::default();
    let mut sent_at = Vec::new();
    for i in 0..40i64 {
        let ts = a_us + (i * 7919) % 1_000_000;
        let body =
            json!({"channel": "cd.live", "ts": rfc3339_us(ts), "value": 100 + (i * 37) % 23, "data": {"volume": 2}});
        let (status, answer) = app.ingest(&body).await;
        assert_eq!(status, 201);
        let tick = support::candles::Sent {
            body,
            ts_us: ts,
            value: Some((100 + (i * 37) % 23) as f64),
            volume: Some(2.0),
            key: None,
        };
        reference.add(&tick, answer["results"][0]["id"].as_str().unwrap());
        sent_at.push(std::time::Instant::now());
        // Pacing, not a condition: the 40 ticks spread over about a second.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let a = reference.candles("1s").into_values().next().unwrap();
    let frames = candles_until(&mut ws, |f| same_candle(f, &a)).await;
    let span = sent_at.last().unwrap().duration_since(sent_at[0]);
    // At most one frame per 250 ms (plus the first): never one per tick.
    let most = (span.as_millis() / 250 + 3) as usize;
    assert!(frames.len() <= most, "{} frames over {span:?}", frames.len());
    for f in &frames {
        assert_eq!(
            (f["channel"].as_str(), f["interval"].as_str()),
            (Some("cd.live"), Some("1s"))
        );
        assert_eq!(f["final"], false);
        assert_eq!(parse_ms(f["t"].as_str().unwrap()), a_us / 1000);
    }
    assert_eq!(frames.last().unwrap()["volume"], 80.0);
    // Counts only grow: each frame is a later state of the same candle.
    let counts: Vec<u64> = frames.iter().map(|f| f["count"].as_u64().unwrap()).collect();
    assert!(counts.windows(2).all(|w| w[0] < w[1]), "{counts:?}");
    // A tick in the next bucket closes A: A's last state, final, then B's.
    let b_us = a_us + 1_000_000;
    app.ingest(&json!({"channel": "cd.live", "ts": rfc3339_us(b_us + 10), "value": 7}))
        .await;
    let next = candles_until(&mut ws, |f| f["final"] == false).await;
    assert_eq!(next.len(), 2, "{next:?}");
    assert_eq!(next[0]["final"], true);
    assert_eq!(parse_ms(next[0]["t"].as_str().unwrap()), a_us / 1000);
    assert!(same_candle(&next[0], &a), "{:?}", next[0]);
    assert_eq!(parse_ms(next[1]["t"].as_str().unwrap()), b_us / 1000);
    assert_eq!(
        (next[1]["close"].as_i64(), next[1]["count"].as_u64()),
        (Some(7), Some(1))
    );
    // A later subscriber gets the current candle first; over SSE, as `candle` events.
    let mut late = app.ws("/ws/cd.live?since=$&candles=1s", &t).await;
    late.until_type("live").await;
    let first = late.next_json().await;
    assert_eq!(first["type"], "candle");
    assert_eq!(parse_ms(first["t"].as_str().unwrap()), b_us / 1000);
    let mut sse = SseClient::connect(&app, "/sse/cd.live?since=$&candles=1s", &t)
        .await
        .unwrap();
    sse.until_event("live").await;
    let event = sse.next_event().await;
    assert_eq!((event.event.as_str(), event.id.as_deref()), ("candle", None));
    assert_eq!(event.data["close"], 7);
    // Candle frames do not touch the tick stream: seq goes on by one.
    let (_, answer) = app
        .ingest(&json!({"channel": "cd.live", "ts": rfc3339_us(b_us + 20), "value": 8}))
        .await;
    let last = answer["results"][0]["id"].clone();
    loop {
        let f = ws.next_json().await;
        if f["type"] == "tick" && f["id"] == last {
            assert_eq!(f["seq"], 42);
            break;
        }
    }
    app.stop().await;
}

/// Runs `tickstream candles rebuild` against `redis`; returns its standard output.
fn rebuild_command(redis: &RedisServer, channel: Option<&str>) -> String {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tickstream"));
    cmd.args(["candles", "rebuild"]).env("REDIS_URL", redis.url());
    if let Some(c) = channel {
        cmd.args(["--channel", c]);
    }
    let out = cmd.output().expect("tickstream runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

async fn assert_all_match(app: &TestApp, channel: &str, reference: &Reference, what: &str) {
    let t = token(&["*"]);
    for (interval, _) in INTERVALS {
        let got = read_all(app, &t, channel, interval, 1000).await;
        assert_matches(&got, &reference.candles(interval), &format!("{what}: {interval}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_equals_incremental_candles_and_is_safe_while_ingest_runs() {
    let redis = RedisServer::start();
    let seed = seed();
    // Ticks stored while candles were off: the rebuild makes their candles.
    let mut off = config(Some(&redis));
    off.candles.enabled = false;
    let app = TestApp::start(off).await;
    let before = random_batches("cd.rb", 3000, seed);
    let mut reference = ingest_all(&app, &before).await;
    app.stop().await;
    let app = TestApp::start(config(Some(&redis))).await;
    let (_, page) = app
        .get("/api/v1/channels/cd.rb/candles?interval=1m", Some(&token(&["*"])))
        .await;
    assert_eq!(page["candles"], json!([]));
    // The first rebuild runs while producers ingest into the same buckets: nothing
    // counted twice, nothing missed (without its "no tick since" check, the ticks
    // folded by ingest during the rebuild would be replaced away).
    let during = random_batches("cd.rb", 1500, seed ^ 1);
    let during: Vec<_> = during
        .into_iter()
        .map(|b| {
            b.into_iter()
                .map(|mut s| {
                    // Keys of their own, so these are all new ticks.
                    if let Some(k) = &s.key {
                        let k = format!("{k}-during");
                        s.body["key"] = json!(k);
                        s.key = Some(k);
                    }
                    s.body["data"]["during"] = json!(true);
                    s
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let cfg = app.config.clone();
    let rebuilds = tokio::spawn(async move {
        for _ in 0..3 {
            tickstream::rebuild_candles(&cfg, Some("cd.rb".into()), |_, _| {})
                .await
                .unwrap();
        }
    });
    let added = ingest_all(&app, &during).await;
    rebuilds.await.unwrap();
    for (name, set) in &added.sets {
        for (start, c) in set {
            reference.add_candle(name, *start, c);
        }
    }
    assert_all_match(
        &app,
        "cd.rb",
        &reference,
        &format!("rebuilt during ingest (seed {seed})"),
    )
    .await;
    // The command, over every channel, and again: the same candles.
    let out = rebuild_command(&redis, None);
    assert!(out.contains("cd.rb: candles rebuilt from"), "{out}");
    assert_all_match(
        &app,
        "cd.rb",
        &reference,
        &format!("rebuilt by the command (seed {seed})"),
    )
    .await;
    rebuild_command(&redis, Some("cd.rb"));
    assert_all_match(&app, "cd.rb", &reference, &format!("rebuilt twice (seed {seed})")).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_keeps_what_candles_counted_of_trimmed_ticks() {
    let redis = RedisServer::start();
    let mut cfg = config(Some(&redis));
    cfg.stream_maxlen = 20;
    let app = TestApp::start(cfg).await;
    let reference = candles_match_reference(&app, "cd.trim", seed()).await;
    let out = rebuild_command(&redis, Some("cd.trim"));
    assert!(out.contains("1 channel(s) rebuilt"), "{out}");
    assert_all_match(&app, "cd.trim", &reference, "after a rebuild over a trimmed stream").await;
    app.stop().await;
}

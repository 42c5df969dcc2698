//! Ingest (docs/PROTOCOL.md §2, §4): validation all-or-nothing, deduplication, the event id, and
//! that refused requests leave Redis untouched.

mod support;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_is_stored_with_the_spec_event_id_and_seq() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(Some(&redis))).await;
    let tick = json!({"channel": "crypto.BTC-USD", "ts": "2026-11-23T08:00:00.123Z", "value": 42000.5,
                      "data": {"bid": 41999.9, "ask": 42001.1}});
    let (status, body) = app.ingest(&tick).await;
    assert_eq!(status, 201, "{body}");
    let canonical = r#"["t","crypto.BTC-USD",1795420800123000,42000.5,{"ask":42001.1,"bid":41999.9}]"#;
    let expected = hex::encode(Sha256::digest(canonical.as_bytes()));
    let result = &body["results"][0];
    assert_eq!(result["event_id"], expected.as_str());
    assert_eq!(result["duplicate"], false);
    let id = result["id"].as_str().unwrap();
    // The stream key is partitioned as docs/PROTOCOL.md §2.4 says.
    assert_eq!(redis.xrange_ids("crypto.BTC-USD", 16), vec![id.to_string()]);
    let exists: bool = redis::cmd("EXISTS")
        .arg("tickstream:{p5}:s:crypto.BTC-USD")
        .query(&mut redis.client())
        .unwrap();
    assert!(exists);
    let (status, latest) = app
        .get("/api/v1/channels/crypto.BTC-USD/latest", Some(&token(&["crypto.*"])))
        .await;
    assert_eq!(status, 200);
    assert_eq!(latest["id"], id);
    assert_eq!(latest["seq"], 1);
    assert_eq!(latest["ts"], "2026-11-23T08:00:00.123Z");
    assert_eq!(latest["value"], 42000.5);
    assert_eq!(latest["data"], json!({"bid": 41999.9, "ask": 42001.1}));
    assert_eq!(latest["event_id"], expected.as_str());
    assert!(latest["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    app.stop().await;
}

async fn duplicates_store_once(engine: Engine) {
    let app = std::sync::Arc::new(TestApp::start(engine.config()).await);
    let tick = json!({"channel": "d.c", "ts": "2026-11-23T08:00:00Z", "value": 1.5});
    let (_, first) = app.ingest(&tick).await;
    let (status, second) = app.ingest(&tick).await;
    assert_eq!(status, 201);
    assert_eq!(second["results"][0]["duplicate"], true);
    assert_eq!(second["results"][0]["id"], first["results"][0]["id"]);
    // Same key, different payload: still the same tick.
    let (_, keyed1) = app
        .ingest(&json!({"channel": "d.c", "value": 1, "key": "order-7"}))
        .await;
    let (_, keyed2) = app
        .ingest(&json!({"channel": "d.c", "value": 2, "key": "order-7"}))
        .await;
    assert_eq!(keyed2["results"][0]["duplicate"], true);
    assert_eq!(keyed1["results"][0]["id"], keyed2["results"][0]["id"]);

    // 20 concurrent identical posts: one entry.
    let concurrent = json!({"channel": "d.race", "value": 3, "data": {"n": 1}, "ts": "2026-11-23T08:00:01Z"});
    let posts: Vec<_> = (0..20)
        .map(|_| {
            let app = app.clone();
            let body = concurrent.clone();
            tokio::spawn(async move { app.ingest(&body).await })
        })
        .collect();
    let mut ids = Vec::new();
    let mut stored = 0;
    for p in posts {
        let (status, body) = p.await.unwrap();
        assert_eq!(status, 201, "{body}");
        ids.push(body["results"][0]["id"].as_str().unwrap().to_string());
        if body["results"][0]["duplicate"] == false {
            stored += 1;
        }
    }
    assert_eq!(stored, 1, "exactly one post stores");
    ids.dedup();
    assert_eq!(ids.len(), 1, "all answer the original id");
    assert_eq!(app.history_ids("d.race", "0-0").await, ids);
    assert_eq!(app.history_ids("d.c", "0-0").await.len(), 2);
    if let Some(redis) = engine.redis_server() {
        assert_eq!(redis.xrange_ids("d.race", 16), ids);
    }
    // A duplicate inside a batch does not take a seq.
    let (_, batch) = app
        .ingest(&json!([{"channel": "d.c", "value": 9, "key": "b1"}, {"channel": "d.c", "value": 9, "key": "b1"}, {"channel": "d.c", "value": 10}]))
        .await;
    assert_eq!(batch["results"][1]["duplicate"], true);
    let (_, latest) = app.get("/api/v1/channels/d.c/latest", Some(&token(&["*"]))).await;
    assert_eq!(latest["seq"], 4);
}

both_engines!(duplicates_store_once);

/// A keyed tick's event id: SHA-256 of `["k", channel, key]` (docs/PROTOCOL.md §2).
fn keyed_event_id(channel: &str, key: &str) -> String {
    hex::encode(Sha256::digest(json!(["k", channel, key]).to_string().as_bytes()))
}

async fn post_keyed(app: &TestApp, channel: &str, key: &str) -> (bool, String) {
    let (status, body) = app.ingest(&json!({"channel": channel, "value": 1, "key": key})).await;
    assert_eq!(status, 201, "{body}");
    let r = &body["results"][0];
    (r["duplicate"] == true, r["id"].as_str().unwrap_or_default().to_string())
}

/// A resend is a duplicate for the whole dedup window (here 2 s, across the Redis
/// engine's buckets of 1 s) and stored anew once the window and its slack are over.
async fn the_dedup_window_holds_then_ends(engine: Engine) {
    use std::time::{Duration, Instant};
    let mut config = engine.config();
    config.dedup_window = Duration::from_secs(2);
    let app = TestApp::start(config).await;
    let sent = Instant::now();
    let (dup, original) = post_keyed(&app, "w.c", "order-1").await;
    let stored = Instant::now();
    assert!(!dup);
    if let Some(redis) = engine.redis_server() {
        // The bucket expires by itself: kept for the window and at most its slack (half
        // a window, and the clock skew allowed, here capped at one bucket: 1 s).
        let mut r = redis.client();
        let keys: Vec<String> = redis::cmd("KEYS").arg("tickstream:*:e:*:w.c").query(&mut r).unwrap();
        assert_eq!(keys.len(), 1, "{keys:?}");
        let ttl: i64 = redis::cmd("PTTL").arg(&keys[0]).query(&mut r).unwrap();
        assert!((2_000..=4_000).contains(&ttl), "PTTL {ttl}");
    }
    // Not conditions: the dedup window is time; these are moments inside it and past it.
    for after_ms in [300, 1_200, 1_900] {
        tokio::time::sleep_until((sent + Duration::from_millis(after_ms)).into()).await;
        assert_eq!(
            post_keyed(&app, "w.c", "order-1").await,
            (true, original.clone()),
            "{after_ms} ms after"
        );
    }
    // Redis forgets within the window, half a window and the skew (memory: at once
    // after the window). Not a condition either: the window and its slack pass.
    tokio::time::sleep_until((stored + Duration::from_millis(4_300)).into()).await;
    let (dup, again) = post_keyed(&app, "w.c", "order-1").await;
    assert!(!dup, "after the window a resend is a new tick");
    assert_ne!(again, original);
    app.stop().await;
}

both_engines!(the_dedup_window_holds_then_ends);

/// After an upgrade from the first storage format (one string key per event id), the
/// markers it left are still honoured for one window: a producer's retry of a tick
/// stored before the upgrade is not stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markers_of_the_first_format_are_honoured_for_one_window() {
    let redis = RedisServer::start();
    let mut config = config(Some(&redis));
    config.dedup_window = std::time::Duration::from_secs(2);
    let keys = tickstream::keyspace::ChannelKeys::new("up.c", config.partitions);
    // What the old format left: the channel's meta (no `dedup_since`) and two markers.
    let mut r = redis.client();
    let _: () = redis::cmd("HSET")
        .arg(&keys.meta)
        .arg("epoch")
        .arg("e0")
        .arg("seq")
        .arg(7)
        .query(&mut r)
        .unwrap();
    for key in ["old-1", "old-2", "old-3"] {
        let marker = keys.dedup(&keyed_event_id("up.c", key));
        let _: () = redis::cmd("SET")
            .arg(marker)
            .arg("1700000000000-0")
            .arg("EX")
            .arg(60)
            .query(&mut r)
            .unwrap();
    }
    let app = TestApp::start(config).await;
    assert_eq!(
        post_keyed(&app, "up.c", "old-1").await,
        (true, "1700000000000-0".to_string())
    );
    let (dup, _) = post_keyed(&app, "up.c", "new-1").await;
    assert!(!dup);
    let (_, latest) = app.get("/api/v1/channels/up.c/latest", Some(&token(&["*"]))).await;
    assert_eq!(latest["seq"], 8, "the channel's seq goes on");
    assert!(
        post_keyed(&app, "up.c", "new-1").await.0,
        "new ticks are deduplicated in buckets"
    );
    assert_eq!(
        post_keyed(&app, "up.c", "old-2").await,
        (true, "1700000000000-0".to_string()),
        "old markers are still read after the channel's first append in buckets"
    );
    // One window after the channel's first append in the new format, old markers are
    // no longer read (they would have expired by then). Not a condition: the window
    // has to pass.
    tokio::time::sleep(std::time::Duration::from_millis(2_300)).await;
    let (dup, _) = post_keyed(&app, "up.c", "old-3").await;
    assert!(!dup, "the transition is over");
    app.stop().await;
}

fn nested(depth: usize) -> String {
    format!(
        r#"{{"channel":"c","data":{}1{}}}"#,
        r#"{"a":"#.repeat(depth),
        "}".repeat(depth)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ingest_requests_are_refused_and_store_nothing() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(Some(&redis))).await;
    let reader = token(&["*"]);
    let valid = r#"{"channel":"ok.c","value":1}"#.to_string();
    let many: Vec<Value> = (0..1001).map(|i| json!({"channel": "ok.c", "value": i})).collect();
    let huge = format!(
        r#"[{}]"#,
        vec![format!(r#"{{"channel":"ok.c","data":{{"x":"{}"}}}}"#, "y".repeat(8000)); 140].join(",")
    );
    let cases: Vec<(&str, String, Option<&str>, u16, &str)> = vec![
        ("no token", valid.clone(), None, 401, "missing_token"),
        ("garbage token", valid.clone(), Some("garbage"), 401, "invalid_token"),
        (
            "reader token without ingest scope",
            valid.clone(),
            Some(&reader),
            403,
            "forbidden",
        ),
        (
            "truncated json",
            r#"{"channel":"ok.c","val"#.into(),
            Some(INGEST_TOKEN),
            400,
            "bad_json",
        ),
        ("not json", "hello".into(), Some(INGEST_TOKEN), 400, "bad_json"),
        ("empty body", "".into(), Some(INGEST_TOKEN), 400, "bad_json"),
        (
            "channel is a number",
            r#"{"channel":5,"value":1}"#.into(),
            Some(INGEST_TOKEN),
            400,
            "bad_json",
        ),
        (
            "value as NaN string",
            r#"{"channel":"ok.c","value":"NaN"}"#.into(),
            Some(INGEST_TOKEN),
            400,
            "bad_json",
        ),
        (
            "value NaN literal",
            r#"{"channel":"ok.c","value":NaN}"#.into(),
            Some(INGEST_TOKEN),
            400,
            "bad_json",
        ),
        (
            "value out of range",
            r#"{"channel":"ok.c","value":1e400}"#.into(),
            Some(INGEST_TOKEN),
            400,
            "bad_json",
        ),
        (
            "unknown field",
            r#"{"channel":"ok.c","value":1,"vaule":2}"#.into(),
            Some(INGEST_TOKEN),
            400,
            "bad_json",
        ),
        (
            "data is an array",
            r#"{"channel":"ok.c","data":[1,2]}"#.into(),
            Some(INGEST_TOKEN),
            400,
            "bad_json",
        ),
        ("deep nesting", nested(200), Some(INGEST_TOKEN), 400, "bad_json"),
        (
            "channel with a space",
            r#"{"channel":"a b","value":1}"#.into(),
            Some(INGEST_TOKEN),
            400,
            "bad_channel",
        ),
        (
            "channel path traversal",
            r#"{"channel":"../x","value":1}"#.into(),
            Some(INGEST_TOKEN),
            400,
            "bad_channel",
        ),
        (
            "channel wildcard",
            r#"{"channel":"*","value":1}"#.into(),
            Some(INGEST_TOKEN),
            400,
            "bad_channel",
        ),
        (
            "channel unicode",
            r#"{"channel":"prix.€","value":1}"#.into(),
            Some(INGEST_TOKEN),
            400,
            "bad_channel",
        ),
        (
            "channel 129 chars",
            format!(r#"{{"channel":"{}","value":1}}"#, "a".repeat(129)),
            Some(INGEST_TOKEN),
            400,
            "bad_channel",
        ),
        (
            "channel empty",
            r#"{"channel":"","value":1}"#.into(),
            Some(INGEST_TOKEN),
            400,
            "bad_channel",
        ),
        (
            "ts not rfc3339",
            r#"{"channel":"ok.c","value":1,"ts":"yesterday"}"#.into(),
            Some(INGEST_TOKEN),
            400,
            "bad_tick",
        ),
        (
            "ts without offset",
            r#"{"channel":"ok.c","value":1,"ts":"2026-11-23T08:00:00"}"#.into(),
            Some(INGEST_TOKEN),
            400,
            "bad_tick",
        ),
        (
            "neither value nor data",
            r#"{"channel":"ok.c"}"#.into(),
            Some(INGEST_TOKEN),
            400,
            "bad_tick",
        ),
        (
            "data over 8 KiB",
            format!(r#"{{"channel":"ok.c","data":{{"x":"{}"}}}}"#, "y".repeat(8200)),
            Some(INGEST_TOKEN),
            400,
            "bad_tick",
        ),
        (
            "key over 128 chars",
            format!(r#"{{"channel":"ok.c","value":1,"key":"{}"}}"#, "k".repeat(129)),
            Some(INGEST_TOKEN),
            400,
            "bad_tick",
        ),
        ("empty batch", "[]".into(), Some(INGEST_TOKEN), 400, "bad_batch"),
        (
            "1001-tick batch",
            Value::Array(many).to_string(),
            Some(INGEST_TOKEN),
            400,
            "batch_too_large",
        ),
        (
            "batch with one bad tick",
            r#"[{"channel":"ok.c","value":1},{"channel":"bad name","value":2}]"#.into(),
            Some(INGEST_TOKEN),
            400,
            "bad_channel",
        ),
        ("body over 1 MiB", huge, Some(INGEST_TOKEN), 413, "payload_too_large"),
    ];
    let baseline = redis.dbsize();
    for (name, body, tok, status, code) in &cases {
        let (got, answer) = app.ingest_raw(body.clone(), *tok).await;
        assert_eq!(got, *status, "{name}: {answer}");
        assert_eq!(answer["error"], *code, "{name}: {answer}");
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()), "{name}");
        assert_eq!(redis.dbsize(), baseline, "{name}: Redis must be unchanged");
    }
    assert!(redis.xrange_ids("ok.c", 16).is_empty());
    // The same server still takes a good tick, from the static token or an ingest JWT
    // whose `channels` claim covers the channel.
    let producer = token_with(json!({"sub": "producer", "scope": ["ingest"], "channels": ["ok.*"]}));
    assert_eq!(app.ingest_raw(valid, Some(&producer)).await.0, 201);
    assert_eq!(redis.xrange_ids("ok.c", 16).len(), 1);
    app.stop().await;
}

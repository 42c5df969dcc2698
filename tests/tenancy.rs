//! What a producer may write, and what a client's numbers may cost (docs/PROTOCOL.md
//! §2.1, §4 and "Limits"): a JWT producer writes only the channels its claim
//! matches, a tick dated too far ahead is refused, an over-long epoch is a bad
//! request, and `/readyz` costs Redis one ping a second however often it is called.
//! Each against a real `redis-server`.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

fn producer(channels: Option<&[&str]>) -> String {
    let mut claims = json!({"sub": "producer-a", "scope": ["ingest"]});
    if let Some(c) = channels {
        claims["channels"] = json!(c);
    }
    token_with(claims)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_producer_writes_only_the_channels_its_claim_matches() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(Some(&redis))).await;
    let tenant_a = producer(Some(&["tenant-a.*"]));
    let reader = token(&["*"]);

    let (status, body) = app
        .ingest_raw(
            json!({"channel": "tenant-a.x", "value": 1}).to_string(),
            Some(&tenant_a),
        )
        .await;
    assert_eq!(status, 201, "its own channel: {body}");

    // Another tenant's channel, alone or inside a batch: 403 naming it, nothing stored.
    let (status, body) = app
        .ingest_raw(
            json!({"channel": "tenant-b.y", "value": 2}).to_string(),
            Some(&tenant_a),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "forbidden");
    assert!(body["message"].as_str().unwrap().contains("tenant-b.y"), "{body}");
    let batch = json!([
        {"channel": "tenant-a.x", "value": 3, "key": "batch-1"},
        {"channel": "tenant-b.y", "value": 4, "key": "batch-2"},
        {"channel": "tenant-a.z", "value": 5, "key": "batch-3"},
    ]);
    let (status, body) = app.ingest_raw(batch.to_string(), Some(&tenant_a)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["message"].as_str().unwrap().contains("tenant-b.y"), "{body}");
    assert_eq!(
        app.history_ids("tenant-a.x", "0-0").await.len(),
        1,
        "nothing of the batch stored"
    );
    assert!(app.history_ids("tenant-a.z", "0-0").await.is_empty());
    assert!(app.history_ids("tenant-b.y", "0-0").await.is_empty());
    let (_, page) = app.get("/api/v1/channels/tenant-b.y/ticks", Some(&reader)).await;
    assert_eq!(page["ticks"], json!([]), "{page}");

    // No claim: no channel. The static ingest token keeps every channel.
    let unclaimed = producer(None);
    let (status, body) = app
        .ingest_raw(
            json!({"channel": "tenant-a.x", "value": 6}).to_string(),
            Some(&unclaimed),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = app.ingest(&json!({"channel": "tenant-b.y", "value": 7})).await;
    assert_eq!(status, 201, "{body}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_dated_beyond_max_future_is_bad_ts_and_stores_nothing() {
    let redis = RedisServer::start();
    let mut cfg = config(Some(&redis));
    cfg.max_future = Duration::from_secs(600);
    let app = TestApp::start(cfg).await;
    let ts = |ahead_s: i64| {
        let t = time::OffsetDateTime::now_utc() + time::Duration::seconds(ahead_s);
        t.format(&time::format_description::well_known::Rfc3339).unwrap()
    };
    // Within the allowance: stored (a producer's clock may run a little ahead).
    let (status, body) = app
        .ingest(&json!({"channel": "future.a", "value": 1, "ts": ts(300)}))
        .await;
    assert_eq!(status, 201, "{body}");
    // Beyond it, alone or in a batch: 400 bad_ts, nothing of the batch stored, no candle.
    for body in [
        json!({"channel": "future.a", "value": 2, "ts": ts(900)}),
        json!([
            {"channel": "future.a", "value": 3, "ts": ts(-60)},
            {"channel": "future.b", "value": 4, "ts": ts(10 * 365 * 86_400)},
        ]),
    ] {
        let (status, answer) = app.ingest(&body).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"], "bad_ts", "{answer}");
    }
    assert_eq!(app.history_ids("future.a", "0-0").await.len(), 1);
    assert!(app.history_ids("future.b", "0-0").await.is_empty());
    let reader = token(&["*"]);
    let (_, candles) = app
        .get("/api/v1/channels/future.b/candles?interval=1d", Some(&reader))
        .await;
    assert_eq!(candles["candles"], json!([]), "{candles}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_over_64_characters_is_a_bad_request() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(Some(&redis))).await;
    let t = token(&["*"]);
    app.ingest_one("epochs.a", 1.0).await;
    let long = "e".repeat(65);
    for path in [
        format!("/ws/epochs.a?since=0-0&epoch={long}"),
        format!("/sse/epochs.a?since=0-0&epoch={long}"),
    ] {
        let answer = app.get_answer(&path, Some(&t)).await;
        assert_eq!(answer.status, 400, "{path}: {}", answer.body);
        assert_eq!(answer.body["error"], "bad_epoch", "{path}");
    }
    // On /ws: an error frame, the socket stays open and serves a normal subscribe.
    let mut ws = app.ws("/ws", &t).await;
    ws.send(json!({"type": "subscribe", "channel": "epochs.a", "since": "0-0", "epoch": long}))
        .await;
    let refused = ws.next_json().await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "bad_epoch", "{refused}");
    let exactly = "e".repeat(64);
    ws.send(json!({"type": "subscribe", "channel": "epochs.a", "since": "0-0", "epoch": exactly}))
        .await;
    let frames = ws.until_type("live").await;
    assert_eq!(frames[0]["type"], "subscribed", "{frames:?}");
    // A 64-character epoch that is not the channel's: the client is told, as ever.
    assert!(
        frames.iter().any(|f| f["type"] == "gap" && f["reason"] == "epoch"),
        "{frames:?}"
    );
    assert_eq!(tick_ids(&frames).len(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_asks_redis_at_most_once_a_second() {
    let mut redis = RedisServer::start();
    let app = TestApp::start(config(Some(&redis))).await;
    let before = calls(&redis, "ping");
    let started = std::time::Instant::now();
    for _ in 0..300 {
        let answer = app.get_answer("/readyz", None).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.body["redis"], "ok");
    }
    let pings = calls(&redis, "ping") - before;
    let seconds = started.elapsed().as_secs() + 1;
    assert!(
        pings <= seconds + 1,
        "{pings} PINGs in {seconds} s for 300 /readyz calls"
    );
    // And it still tells the truth: Redis down is 503 within a couple of seconds.
    redis.kill();
    let app_ref = &app;
    eventually("/readyz says redis is down", || async move {
        let answer = app_ref.get_answer("/readyz", None).await;
        answer.status == 503 && answer.body["redis"] == "down"
    })
    .await;
    app.stop().await;
}

/// The binary as an operator starts it with no signing key: on a non-loopback
/// address it refuses, naming the variables; `TICKSTREAM_DEV=1` (as a container's
/// environment would say it) starts dev mode there, loudly.
#[test]
fn dev_mode_serves_loopback_only_unless_asked() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let binary = env!("CARGO_BIN_EXE_tickstream");
    let base = |cmd: &mut Command| {
        cmd.env_remove("TICKSTREAM_JWT_SECRET")
            .env_remove("TICKSTREAM_JWT_PUBLIC_KEY")
            .env_remove("TICKSTREAM_HMAC_SECRET")
            .env_remove("REDIS_URL")
            .env_remove("TICKSTREAM_DEV")
            .env("TICKSTREAM_LISTEN", "0.0.0.0:0")
            .env("TICKSTREAM_LOG", "warn");
    };
    let mut refused = Command::new(binary);
    base(&mut refused);
    let out = refused.output().expect("run the binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for name in ["TICKSTREAM_JWT_SECRET", "TICKSTREAM_HMAC_SECRET", "TICKSTREAM_DEV=1"] {
        assert!(stderr.contains(name), "{name} in {stderr}");
    }
    assert!(!stderr.contains("Reader token"), "no token printed: {stderr}");

    let mut asked = Command::new(binary);
    base(&mut asked);
    let mut child = asked
        .env("TICKSTREAM_DEV", "1")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the binary");
    let lines = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    for line in lines.lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("Reader token") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.contains("DEV MODE ON 0.0.0.0"), "{seen}");
    assert!(seen.contains("Reader token"), "{seen}");
}

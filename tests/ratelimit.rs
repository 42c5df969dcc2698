//! Rate limits as a client meets them (docs/PROTOCOL.md "Rate limits"): token buckets
//! per subject and group shared in Redis by every node, the headers on every REST
//! answer, 429 with `Retry-After`, refusals before the WebSocket upgrade and as error
//! frames on an open socket, the per-IP shield, and the local fallback while Redis is
//! away. Every test runs against its own redis-server.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;
use tickstream::ratelimit::{Group, Rate, Tier};

fn reader(sub: &str, tier: Option<&str>) -> String {
    let mut claims = json!({"sub": sub, "channels": ["*"]});
    if let Some(t) = tier {
        claims["tier"] = json!(t);
    }
    token_with(claims)
}

async fn latest(app: &TestApp, token: &str) -> Answer {
    app.get_answer("/api/v1/channels/rl.c/latest", Some(token)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_allowed_exactly_then_refused_with_429() {
    let redis = RedisServer::start();
    // Slow refill (one token per 20 minutes), so nothing comes back mid-test however
    // slow the machine is.
    let app = TestApp::start(with_limits(config(Some(&redis)), "3/h:3")).await;
    app.ingest_one("rl.c", 1.0).await;
    let alice = reader("alice", None);
    for left in [2, 1, 0] {
        let a = latest(&app, &alice).await;
        assert_eq!(a.status, 200, "{:?}", a.body);
        assert_eq!(a.number("x-ratelimit-limit"), Some(3));
        assert_eq!(a.number("x-ratelimit-remaining"), Some(left));
        assert_eq!(a.header("retry-after"), None);
    }
    let refused = latest(&app, &alice).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.body["error"], "rate_limited", "{:?}", refused.body);
    assert!(refused.body["message"].is_string());
    assert_eq!(refused.number("x-ratelimit-remaining"), Some(0));
    // The next token comes back 20 minutes after the first request, rounded up.
    let retry = refused.number("retry-after").unwrap();
    assert!((1195..=1200).contains(&retry), "Retry-After {retry}");
    // Errors after the check carry the headers too (the channel has no such tick).
    let bob = reader("bob", None);
    let missing = app.get_answer("/api/v1/channels/rl.none/latest", Some(&bob)).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.number("x-ratelimit-remaining"), Some(2));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_come_back_at_the_configured_rate() {
    let redis = RedisServer::start();
    let app = TestApp::start(with_limits(config(Some(&redis)), "1/s:2")).await;
    app.ingest_one("rl.c", 1.0).await;
    let t = reader("carol", None);
    assert_eq!(latest(&app, &t).await.status, 200);
    assert_eq!(latest(&app, &t).await.status, 200);
    let refused = latest(&app, &t).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.number("retry-after"), Some(1));
    // One token a second: waiting that long buys exactly one request (not a
    // condition: the refill is time).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = latest(&app, &t).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.number("x-ratelimit-remaining"), Some(0));
    assert_eq!(latest(&app, &t).await.status, 429);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_right_to_the_second() {
    let redis = RedisServer::start();
    let app = TestApp::start(with_limits(config(Some(&redis)), "1/h:1")).await;
    let t = reader("dave", None);
    let started = Instant::now();
    assert_eq!(latest(&app, &t).await.status, 404);
    let refused = latest(&app, &t).await;
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(refused.status, 429);
    // The token is back an hour after the first request (as Redis's clock saw it,
    // within `elapsed` of ours): whole seconds, rounded up.
    let got = refused.number("retry-after").unwrap();
    let earliest = (3600.0 - elapsed).floor() as u64;
    assert!(
        (earliest..=3600).contains(&got),
        "Retry-After {got}, expected {earliest}..=3600"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_redis_share_a_bucket() {
    let redis = RedisServer::start();
    let a = TestApp::start(with_limits(config(Some(&redis)), "3/h:3")).await;
    let b = TestApp::start(with_limits(config(Some(&redis)), "3/h:3")).await;
    let t = reader("erin", None);
    assert_eq!(latest(&a, &t).await.number("x-ratelimit-remaining"), Some(2));
    assert_eq!(latest(&b, &t).await.number("x-ratelimit-remaining"), Some(1));
    assert_eq!(latest(&a, &t).await.number("x-ratelimit-remaining"), Some(0));
    assert_eq!(latest(&b, &t).await.status, 429);
    assert_eq!(latest(&a, &t).await.status, 429);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiers_and_groups_have_buckets_of_their_own() {
    let redis = RedisServer::start();
    let mut cfg = with_limits(config(Some(&redis)), "2/h:2");
    cfg.rate_limits
        .set(Tier::Pro, Group::Api, Rate::parse("5/h:5").unwrap());
    let app = TestApp::start(cfg).await;
    let free = reader("frank", None);
    assert_eq!(latest(&app, &free).await.status, 404);
    assert_eq!(latest(&app, &free).await.status, 404);
    assert_eq!(latest(&app, &free).await.status, 429);
    // Another group of the same subject is untouched: the WebSocket still opens.
    let mut ws = app.ws("/ws/rl.c?since=$", &free).await;
    assert_eq!(ws.next_json().await["type"], "subscribed");
    // Another tier has its own limit.
    let pro = reader("grace", Some("pro"));
    let a = latest(&app, &pro).await;
    assert_eq!((a.status, a.number("x-ratelimit-limit")), (404, Some(5)));
    // Tier internal is never limited and gets no rate headers.
    let internal = reader("ops", Some("internal"));
    for _ in 0..10 {
        let a = latest(&app, &internal).await;
        assert_eq!(a.status, 404);
        assert_eq!(a.header("x-ratelimit-limit"), None);
    }
    app.stop().await;
}

fn batch(n: usize, from: usize) -> Value {
    Value::Array(
        (from..from + n)
            .map(|i| json!({"channel": "rl.ingest", "value": i, "key": format!("k{i}")}))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_is_counted_per_tick_and_a_batch_too_big_for_the_bucket_stores_nothing() {
    let redis = RedisServer::start();
    let app = TestApp::start(with_limits(config(Some(&redis)), "10/h:10")).await;
    let producer = token_with(json!({"sub": "sensor-7", "scope": ["ingest"], "channels": ["rl.*"]}));
    let post = |body: Value| {
        let producer = producer.clone();
        let app = &app;
        async move {
            app.request("POST", "/api/v1/ingest", &[bearer(&producer)], Some(body.to_string()))
                .await
        }
    };
    let a = post(batch(6, 0)).await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    assert_eq!(a.number("x-ratelimit-remaining"), Some(4));
    let refused = post(batch(5, 6)).await;
    assert_eq!(refused.status, 429, "{:?}", refused.body);
    assert_eq!(
        redis.xrange_ids("rl.ingest", 16).len(),
        6,
        "a refused batch stores nothing"
    );
    assert_eq!(post(batch(4, 6)).await.status, 201);
    assert_eq!(redis.xrange_ids("rl.ingest", 16).len(), 10);
    // A batch larger than the whole burst can never pass; the message says so.
    let never = post(batch(11, 20)).await;
    assert_eq!(never.status, 429);
    assert!(
        never.body["message"].as_str().unwrap().contains("burst"),
        "{:?}",
        never.body
    );
    // The operator's static ingest token is tier internal: never limited, no headers.
    let (status, _) = app.ingest(&batch(50, 100)).await;
    assert_eq!(status, 201);
    let own = app
        .request(
            "POST",
            "/api/v1/ingest",
            &[bearer(INGEST_TOKEN)],
            Some(batch(1, 200).to_string()),
        )
        .await;
    assert_eq!((own.status, own.header("x-ratelimit-limit")), (201, None));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_are_refused_before_the_upgrade_and_subscribes_with_an_error_frame() {
    let redis = RedisServer::start();
    let app = TestApp::start(with_limits(config(Some(&redis)), "3/h:3")).await;
    let t = reader("heidi", None);
    // /ws/{channel}: one token each.
    let _a = app.ws("/ws/rl.a", &t).await;
    let _b = app.ws("/ws/rl.b", &t).await;
    // /ws: one for the handshake (the last token), then one per subscribe.
    let mut ws = app.ws("/ws", &t).await;
    match app.try_ws("/ws/rl.c", &[bearer(&t)]).await {
        Err((status, body)) => {
            assert_eq!(status, 429);
            assert_eq!(body["error"], "rate_limited");
        }
        Ok(_) => panic!("a fourth handshake must be refused"),
    }
    ws.send(json!({"type": "subscribe", "channel": "rl.d"})).await;
    let f = ws.next_json().await;
    assert_eq!(
        (f["type"].as_str(), f["code"].as_str()),
        (Some("error"), Some("rate_limited")),
        "{f}"
    );
    assert_eq!(f["channel"], "rl.d");
    assert!(
        f["retry_after"].as_u64().is_some_and(|s| (1..=1200).contains(&s)),
        "{f}"
    );
    // The socket stays open.
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.next_json().await["type"], "pong");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_flood_is_shed_per_address_before_redis() {
    let redis = RedisServer::start();
    let mut cfg = config(Some(&redis));
    cfg.ip_rate = Rate::parse("1/m:10").unwrap();
    let app = TestApp::start(cfg).await;
    let before = calls(&redis, "evalsha");
    let mut statuses = Vec::new();
    for _ in 0..40 {
        statuses.push(app.get_answer("/api/v1/channels", None).await);
    }
    let shed: Vec<&Answer> = statuses.iter().filter(|a| a.status == 429).collect();
    let passed = statuses.iter().filter(|a| a.status == 401).count();
    assert!((10..=11).contains(&passed), "{passed} requests passed the shield");
    assert_eq!(shed.len() + passed, 40);
    assert_eq!(shed[0].body["error"], "rate_limited");
    assert!(shed[0].number("retry-after").is_some_and(|s| s >= 1));
    // Only what passed the shield reached Redis (each charged to the address).
    assert!(calls(&redis, "evalsha") - before <= passed as u64);
    // The liveness probe is never shed, nor is the operator's static ingest token
    // (which is how this reads the metrics while its address is still shed).
    assert_eq!(app.get("/healthz", None).await.0, 200);
    let (status, body) = app.ingest(&json!({"channel": "rl.flood", "value": 1})).await;
    assert_eq!(status, 201, "{body}");
    let metrics = app.text_with_token("/metrics", INGEST_TOKEN).await.unwrap();
    let shed_count = metrics
        .lines()
        .find(|l| l.starts_with(r#"tickstream_rate_limited_total{group="ip"}"#))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(shed_count, Some(shed.len() as f64), "{metrics}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoofed_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() {
    let redis = RedisServer::start();
    let mut cfg = config(Some(&redis));
    cfg.ip_rate = Rate::parse("3/m:3").unwrap();
    let app = TestApp::start(cfg.clone()).await;
    let spoofs: Vec<u16> = {
        let mut v = Vec::new();
        for i in 0..5 {
            let a = app
                .request(
                    "GET",
                    "/api/v1/openapi.json",
                    &[("x-forwarded-for", format!("203.0.113.{i}"))],
                    None,
                )
                .await;
            v.push(a.status);
        }
        v
    };
    assert_eq!(
        spoofs,
        [200, 200, 200, 429, 429],
        "every spoofed address shares the peer's budget"
    );
    app.stop().await;

    // Behind a trusted proxy (the loopback here), each forwarded client has its own.
    cfg.trusted_proxies =
        tickstream::ratelimit::ip::TrustedProxies(vec![tickstream::ratelimit::ip::Cidr::parse("127.0.0.1").unwrap()]);
    let app = TestApp::start(cfg).await;
    for client in ["203.0.113.1", "203.0.113.2"] {
        for n in 0..4 {
            let a = app
                .request(
                    "GET",
                    "/api/v1/openapi.json",
                    &[("x-forwarded-for", format!("6.6.6.6, {client}"))],
                    None,
                )
                .await;
            assert_eq!(a.status, if n < 3 { 200 } else { 429 }, "{client} request {n}");
        }
    }
    app.stop().await;
}

async fn readyz(app: &TestApp) -> Value {
    app.get("/readyz", None).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_the_limits_hold_per_node_and_come_back_to_redis_by_themselves() {
    let mut redis = RedisServer::start();
    let app = TestApp::start(with_limits(config(Some(&redis)), "3/h:3")).await;
    assert_eq!(readyz(&app).await["ratelimit"], "redis");
    assert_eq!(app.metric("/metrics", "tickstream_ratelimit_local").await, Some(0.0));
    let t = reader("ivan", None);
    let mut ws = app.ws("/ws", &t).await;
    redis.kill();
    eventually("the limiter falls back to local buckets", || async {
        readyz(&app).await["ratelimit"] == "local"
    })
    .await;
    assert_eq!(app.metric("/metrics", "tickstream_ratelimit_local").await, Some(1.0));
    // The socket is still open; its subscribes are limited locally with the same burst.
    let mut refused = Vec::new();
    for i in 0..5 {
        ws.send(json!({"type": "subscribe", "channel": format!("rl.local{i}"), "since": "$"}))
            .await;
        ws.send(json!({"type": "ping"})).await;
        loop {
            let f = ws.next_json().await;
            if f["type"] == "pong" {
                break;
            }
            if f["type"] == "error" {
                assert_eq!(f["code"], "rate_limited", "{f}");
                refused.push(i);
            }
        }
    }
    assert_eq!(refused, [3, 4], "the local bucket allows the burst of 3, then refuses");
    redis.start_again();
    eventually("the limiter is back on Redis", || async {
        readyz(&app).await["ratelimit"] == "redis"
    })
    .await;
    assert_eq!(app.metric("/metrics", "tickstream_ratelimit_local").await, Some(0.0));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_counts_whole_tokens_like_the_local_buckets_do() {
    // 7 an hour: an interval with a fraction, at the magnitude of real clocks, where a
    // careless float loses a token in the count.
    let redis = RedisServer::start();
    let app = TestApp::start(with_limits(config(Some(&redis)), "7/h:20")).await;
    let t = reader("judy", None);
    for left in (0..20).rev() {
        let a = latest(&app, &t).await;
        assert_eq!((a.status, a.number("x-ratelimit-remaining")), (404, Some(left)));
    }
    assert_eq!(latest(&app, &t).await.status, 429);
    app.stop().await;
}

#[test]
fn a_bad_rate_stops_start_up_naming_the_variable() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tickstream"))
        .env("TICKSTREAM_RATE_FREE_API", "lots")
        .env("TICKSTREAM_LISTEN", "127.0.0.1:0")
        .env_remove("REDIS_URL")
        .output()
        .expect("run the binary");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TICKSTREAM_RATE_FREE_API"), "{err}");
}

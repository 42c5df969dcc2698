//! REST reads and operations endpoints (docs/PROTOCOL.md §6, §7).

mod support;

use serde_json::{json, Value};
use support::*;

async fn seed(app: &TestApp, channel: &str, n: usize) -> Vec<String> {
    let batch: Vec<Value> = (0..n)
        .map(|i| json!({"channel": channel, "value": i, "key": format!("{i}")}))
        .collect();
    support::property::ingest_ids(app, batch).await
}

async fn page_ids(app: &TestApp, path: &str) -> (Vec<String>, Option<String>, Value) {
    let (status, body) = app.get(path, Some(&token(&["*"]))).await;
    assert_eq!(status, 200, "{path}: {body}");
    let ids = body["ticks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    (ids, body["next"].as_str().map(str::to_string), body)
}

async fn paging(engine: Engine) {
    let app = TestApp::start(engine.config()).await;
    let ids = seed(&app, "h.c", 250).await;
    let base = "/api/v1/channels/h.c/ticks";

    // Default: oldest first, 100 per page, `next` continues in order.
    let (first, next, body) = page_ids(&app, base).await;
    assert_eq!(first, ids[..100].to_vec());
    assert_eq!(body["channel"], "h.c");
    assert!(body["epoch"].is_string());
    let (second, next2, _) = page_ids(&app, &format!("{base}?cursor={}", next.unwrap())).await;
    assert_eq!(second, ids[100..200].to_vec());
    let (third, next3, _) = page_ids(&app, &format!("{base}?cursor={}", next2.unwrap())).await;
    assert_eq!(third, ids[200..].to_vec());
    assert_eq!(next3, None, "the last page has no next");

    // Descending with the same cursor rule.
    let (d1, dn, _) = page_ids(&app, &format!("{base}?order=desc&limit=120")).await;
    let mut rev = ids.clone();
    rev.reverse();
    assert_eq!(d1, rev[..120].to_vec());
    let (d2, _, _) = page_ids(&app, &format!("{base}?order=desc&limit=120&cursor={}", dn.unwrap())).await;
    assert_eq!(d2, rev[120..240].to_vec());

    // since exclusive, until inclusive, in both orders.
    let (w, next, _) = page_ids(&app, &format!("{base}?since={}&until={}&limit=1000", ids[10], ids[20])).await;
    assert_eq!(w, ids[11..=20].to_vec());
    assert_eq!(next, None);
    let (w, _, _) = page_ids(&app, &format!("{base}?since={}&until={}&order=desc", ids[10], ids[20])).await;
    assert_eq!(w, ids[11..=20].iter().rev().cloned().collect::<Vec<_>>());
    // Paging a window keeps its bounds.
    let (w1, n1, _) = page_ids(&app, &format!("{base}?since={}&until={}&limit=4", ids[10], ids[20])).await;
    let (w2, _, _) = page_ids(
        &app,
        &format!(
            "{base}?since={}&until={}&limit=100&cursor={}",
            ids[10],
            ids[20],
            n1.unwrap()
        ),
    )
    .await;
    assert_eq!([w1, w2].concat(), ids[11..=20].to_vec());

    // An unknown channel: 200, no ticks, epoch null; latest 404.
    let (none, next, body) = page_ids(&app, "/api/v1/channels/nothing.here/ticks").await;
    assert!(none.is_empty() && next.is_none());
    assert_eq!(body["epoch"], Value::Null);
    let (status, body) = app
        .get("/api/v1/channels/nothing.here/latest", Some(&token(&["*"])))
        .await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let (status, latest) = app.get("/api/v1/channels/h.c/latest", Some(&token(&["*"]))).await;
    assert_eq!((status, latest["id"].as_str()), (200, Some(ids[249].as_str())));
    app.stop().await;
}

both_engines!(history_pages, paging);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_list_shows_only_what_the_token_may_read() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(Some(&redis))).await;
    seed(&app, "crypto.BTC", 3).await;
    seed(&app, "crypto.ETH", 2).await;
    let iss = seed(&app, "iss.USLAB", 1).await;
    let (status, body) = app.get("/api/v1/channels", Some(&token(&["crypto.*"]))).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = body["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["channel"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["crypto.BTC", "crypto.ETH"]);
    assert_eq!(body["channels"][0]["length"], 3);
    let (_, all) = app.get("/api/v1/channels", Some(&token(&["*"]))).await;
    let uslab = all["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == "iss.USLAB")
        .unwrap()
        .clone();
    assert_eq!(uslab["last_id"], iss[0].as_str());
    assert!(uslab["last_ts"].is_string());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rest_reads_are_refused_with_json() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(Some(&redis))).await;
    seed(&app, "ok.c", 3).await;
    let baseline = redis.dbsize();
    let t = token(&["ok.*"]);
    let cases = [
        ("/api/v1/channels/ok.c/ticks", None, 401, "missing_token"),
        ("/api/v1/channels/ok.c/ticks?token=garbage", None, 401, "invalid_token"),
        ("/api/v1/channels/secret.c/ticks", Some(&t), 403, "forbidden"),
        ("/api/v1/channels/a%20b/ticks", Some(&t), 400, "bad_channel"),
        ("/api/v1/channels/..%2Fx/latest", Some(&t), 400, "bad_channel"),
        ("/api/v1/channels/ok.c/ticks?limit=0", Some(&t), 400, "bad_limit"),
        ("/api/v1/channels/ok.c/ticks?limit=1001", Some(&t), 400, "bad_limit"),
        ("/api/v1/channels/ok.c/ticks?limit=ten", Some(&t), 400, "bad_limit"),
        ("/api/v1/channels/ok.c/ticks?order=sideways", Some(&t), 400, "bad_order"),
        ("/api/v1/channels/ok.c/ticks?since=abc", Some(&t), 400, "bad_id"),
        ("/api/v1/channels/ok.c/ticks?cursor=1-2-3", Some(&t), 400, "bad_id"),
        ("/api/v1/channels", None, 401, "missing_token"),
        ("/no/such/thing", None, 404, "not_found"),
    ];
    for (path, tok, status, code) in cases {
        let (got, body) = app.get(path, tok.map(String::as_str)).await;
        assert_eq!((got, body["error"].as_str()), (status, Some(code)), "{path}: {body}");
        assert!(body["message"].is_string(), "{path}");
        assert_eq!(redis.dbsize(), baseline, "{path}: Redis must be unchanged");
    }
    // A token in the query works for REST too.
    let (status, _) = app.get(&format!("/api/v1/channels/ok.c/ticks?token={t}"), None).await;
    assert_eq!(status, 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_endpoints_and_headers() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(Some(&redis))).await;
    let http = reqwest::Client::new();
    let r = http
        .get(app.url("/healthz"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "abc-123", "a sane request id is echoed");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let r = http
        .get(app.url("/healthz"))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    assert_ne!(r.headers()["x-request-id"], "bad id with spaces");
    let (status, ready) = app.get("/readyz", None).await;
    assert_eq!(
        (status, ready["redis"].as_str(), ready["tail"].as_str()),
        (200, Some("ok"), Some("ok"))
    );

    app.ingest(&json!({"channel": "m.c", "value": 1})).await;
    let metrics = app.text("/metrics").await.expect("metrics");
    for name in [
        "tickstream_connections",
        "tickstream_subscriptions",
        "tickstream_ticks_ingested_total",
        "tickstream_http_request_duration_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing");
    }
    assert!(
        metrics.contains(r#"tickstream_ticks_ingested_total{result="stored"} 1"#),
        "{metrics}"
    );
    let system = app.text("/metrics/system").await.expect("system metrics");
    assert!(system.contains("process_resident_memory_bytes"));
    let (status, openapi) = app.get("/api/v1/openapi.json", None).await;
    assert_eq!(status, 200);
    assert!(openapi["paths"]["/api/v1/channels/{channel}/ticks"].is_object());
    // The document lists itself, and the 429 every limited endpoint can answer.
    assert!(openapi["paths"]["/api/v1/openapi.json"]["get"].is_object());
    assert!(openapi["paths"]["/api/v1/channels/{channel}/ticks"]["get"]["responses"]["429"].is_object());
    let page = http.get(app.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    assert!(page.text().await.unwrap().contains("<html"));
    assert_eq!(http.get(app.url("/app.js")).send().await.unwrap().status(), 200);

    // Redis gone: readiness says so (from the next health ping, within a second or
    // two: /readyz itself never asks Redis) and ingest answers 503 with JSON.
    let mut redis = redis;
    redis.kill();
    let app_ref = &app;
    eventually("/readyz says redis is down", || async move {
        let (status, ready) = app_ref.get("/readyz", None).await;
        (status, ready["redis"].as_str()) == (503, Some("down"))
    })
    .await;
    let (status, body) = app.ingest(&json!({"channel": "m.c", "value": 2})).await;
    assert_eq!((status, body["error"].as_str()), (503, Some("unavailable")));
    app.stop().await;
}

/// Streams written by the first storage format (one field per member) are still
/// served, and the channel goes on in the current format: same epoch, `seq` continues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_in_the_first_storage_format_is_still_served() {
    let redis = RedisServer::start();
    let cfg = config(Some(&redis));
    let keys = tickstream::keyspace::ChannelKeys::new("old.format", cfg.partitions);
    let mut c = redis.client();
    let stream = keys.stream.clone();
    let _: () = redis::cmd("HSET")
        .arg(&keys.meta)
        .arg("epoch")
        .arg("oldepoch0000")
        .arg("seq")
        .arg(2)
        .query(&mut c)
        .unwrap();
    let e1 = "a".repeat(64);
    let e2 = "b".repeat(64);
    let old: [(&str, Vec<(&str, &str)>); 2] = [
        (
            "1000-0",
            vec![
                ("q", "1"),
                ("ep", "oldepoch0000"),
                ("ts", "1000000"),
                ("e", &e1),
                ("v", "1.5"),
            ],
        ),
        (
            "2000-0",
            vec![
                ("q", "2"),
                ("ep", "oldepoch0000"),
                ("ts", "2000123"),
                ("e", &e2),
                ("d", r#"{"a":1}"#),
            ],
        ),
    ];
    for (id, fields) in &old {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&stream).arg(id);
        for (k, v) in fields {
            cmd.arg(k).arg(v);
        }
        let _: String = cmd.query(&mut c).unwrap();
    }
    let _: () = redis::cmd("ZADD")
        .arg(&keys.registry)
        .arg(2000)
        .arg("old.format")
        .query(&mut c)
        .unwrap();
    let app = TestApp::start(cfg).await;
    app.ingest_one("old.format", 3.0).await;

    let (_, _, body) = page_ids(&app, "/api/v1/channels/old.format/ticks?since=0-0").await;
    let ticks = body["ticks"].as_array().unwrap();
    assert_eq!(ticks.len(), 3);
    assert_eq!(body["epoch"], "oldepoch0000");
    let seqs: Vec<_> = ticks.iter().map(|t| (t["seq"].as_u64(), t["epoch"].as_str())).collect();
    assert_eq!(
        seqs,
        [1, 2, 3].map(|n| (Some(n), Some("oldepoch0000"))).to_vec(),
        "{body}"
    );
    assert_eq!(ticks[0]["id"], "1000-0");
    assert_eq!(ticks[0]["ts"], "1970-01-01T00:00:01.000Z");
    assert_eq!(ticks[0]["ingest_ts"], "1970-01-01T00:00:01.000Z");
    assert_eq!(ticks[0]["value"], 1.5);
    assert_eq!(ticks[0]["data"], Value::Null);
    assert_eq!(ticks[0]["event_id"], e1.as_str());
    assert_eq!(ticks[0]["channel"], "old.format");
    assert_eq!(ticks[1]["ts"], "1970-01-01T00:00:02.000123Z");
    assert_eq!(ticks[1]["value"], Value::Null);
    assert_eq!(ticks[1]["data"], json!({"a": 1}));
    assert_eq!(ticks[2]["value"], 3.0);

    // The WebSocket replays the same three, and the channel list reads the old `ts`.
    let mut ws = app.ws("/ws/old.format?since=0-0", &token(&["*"])).await;
    let frames = ws.until_type("live").await;
    let replayed: Vec<Value> = frames.into_iter().filter(|f| f["type"] == "tick").collect();
    assert_eq!(replayed.len(), 3);
    for (frame, tick) in replayed.iter().zip(ticks) {
        let mut frame = frame.clone();
        frame.as_object_mut().unwrap().remove("type");
        assert_eq!(&frame, tick);
    }
    let (_, list) = app.get("/api/v1/channels", Some(&token(&["old.*"]))).await;
    assert_eq!(list["channels"][0]["length"], 3);
    assert_eq!(list["channels"][0]["last_ts"], ticks[2]["ts"]);
    app.stop().await;
}

//! What an operator and a first-time user see: `--demo`'s channels, fed through the
//! normal ingest path, and the metrics an operator charts (docs/OPERATIONS.md
//! "Metrics", docs/grafana-dashboard.json).

mod support;

use serde_json::json;
use support::candles::parse_ms;
use support::*;
use tickstream::keyspace::partition_of;

const DEMO: [&str; 4] = [
    "demo.BTC-USD",
    "demo.ETH-USD",
    "demo.iss.cabin-temp",
    "demo.slow.battery",
];

async fn lengths(app: &TestApp) -> Vec<(String, u64)> {
    let (status, body) = app.get("/api/v1/channels", Some(&token(&["*"]))).await;
    assert_eq!(status, 200, "{body}");
    body["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["channel"].as_str().unwrap().to_string(),
                c["length"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

async fn latest_value(app: &TestApp, channel: &str) -> f64 {
    let (status, tick) = app
        .get(&format!("/api/v1/channels/{channel}/latest"), Some(&token(&["*"])))
        .await;
    assert_eq!(status, 200, "{tick}");
    tick["value"].as_f64().expect("a value")
}

#[tokio::test]
async fn demo_channels_are_alive_and_survive_a_restart() {
    let redis = RedisServer::start();
    let mut config = config(Some(&redis));
    config.demo = true;
    let app = TestApp::start(config.clone()).await;

    // At once: every demo channel, with minutes of history for charts and candles.
    eventually("the demo channels have their backfill", || async {
        let l = lengths(&app).await;
        DEMO.iter().all(|d| l.iter().any(|(c, n)| c == d && *n >= 30))
    })
    .await;
    let (status, candles) = app
        .get(
            "/api/v1/channels/demo.BTC-USD/candles?interval=1m",
            Some(&token(&["*"])),
        )
        .await;
    assert_eq!(status, 200);
    assert!(candles["candles"].as_array().unwrap().len() >= 3, "{candles}");
    assert!(
        candles["candles"][0]["volume"].as_f64().unwrap_or(0.0) > 0.0,
        "{candles}"
    );

    // Live ticks, each the previous seq + 1, shaped like a quote.
    let mut ws = app.ws("/ws/demo.BTC-USD?since=$", &token(&["*"])).await;
    ws.until_type("live").await;
    let mut last_seq = None;
    for _ in 0..5 {
        let t = ws.next_json().await;
        assert_eq!(t["type"], "tick", "{t}");
        let (bid, ask) = (t["data"]["bid"].as_f64().unwrap(), t["data"]["ask"].as_f64().unwrap());
        assert!(bid < ask && t["data"]["volume"].as_f64().is_some(), "{t}");
        let seq = t["seq"].as_u64().unwrap();
        if let Some(prev) = last_seq {
            assert_eq!(seq, prev + 1, "{t}");
        }
        last_seq = Some(seq);
    }
    ws.close().await;
    // The demo is an ordinary producer: its ticks are counted as ingested.
    let stored = app
        .metric("/metrics", "tickstream_ticks_ingested_total{result=\"stored\"}")
        .await
        .unwrap_or(0.0);
    assert!(stored >= 1_800.0, "backfill and live ticks counted: {stored}");

    // A restart on the same Redis continues each walk: no second backfill, and the
    // price goes on from where it was.
    let before = lengths(&app).await;
    let btc = latest_value(&app, "demo.BTC-USD").await;
    app.stop().await;
    let restarted_ms = tickstream::clock::now_ms() as i64;
    let app = TestApp::start(config).await;
    // The new feeder has made its backfill decision once it ticks live: a backfill
    // (older `ts`) is appended before its first live tick, which then is the newest.
    eventually("the restarted demo ticks live", || async {
        let (_, tick) = app
            .get("/api/v1/channels/demo.BTC-USD/latest", Some(&token(&["*"])))
            .await;
        tick["ts"].as_str().is_some_and(|ts| parse_ms(ts) >= restarted_ms)
    })
    .await;
    let after = lengths(&app).await;
    for (channel, n) in &before {
        let now = after.iter().find(|(c, _)| c == channel).map(|(_, n)| *n).unwrap_or(0);
        assert!(
            now >= *n && now < n + 100,
            "{channel}: {n} before the restart, {now} after"
        );
    }
    let next = latest_value(&app, "demo.BTC-USD").await;
    assert!(
        (next - btc).abs() / btc < 0.02,
        "the walk went on from {btc}, not from scratch: {next}"
    );
    app.stop().await;
}

/// The Prometheus sample `name{labels}`, 0 when absent.
async fn sample(app: &TestApp, series: &str) -> f64 {
    app.metric("/metrics", series).await.unwrap_or(0.0)
}

#[tokio::test]
async fn operator_metrics_count_refusals_closes_replays_redis_and_lag() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(Some(&redis))).await;
    let reader = token(&["obs.*"]);
    ingest_keyed(&app, "obs.a", 0, 50).await;

    // Replay sizes: one subscription, sent 50 ticks before `live`.
    let mut ws = app.ws("/ws/obs.a?since=0-0", &reader).await;
    ws.until_type("live").await;
    assert_eq!(sample(&app, "tickstream_replay_size_ticks_count").await, 1.0);
    assert_eq!(sample(&app, "tickstream_replay_size_ticks_sum").await, 50.0);

    // Handshake refusals, by reason.
    let refused = app
        .try_ws(
            "/ws/obs.a",
            &[
                ("authorization", format!("Bearer {reader}")),
                ("origin", "https://evil.example".into()),
            ],
        )
        .await;
    assert_eq!(refused.err().map(|(s, _)| s), Some(403));
    let refused = app.try_ws("/ws/obs.a", &[]).await;
    assert_eq!(refused.err().map(|(s, _)| s), Some(401));
    assert_eq!(
        sample(&app, "tickstream_handshakes_total{result=\"bad_origin\"}").await,
        1.0
    );
    assert_eq!(
        sample(&app, "tickstream_handshakes_total{result=\"missing_token\"}").await,
        1.0
    );

    // Close codes sent: a message that is not a known frame closes with 1008.
    let mut bad = app.ws("/ws", &reader).await;
    bad.send(json!({"type": "dance"})).await;
    assert_eq!(bad.close_code().await, Some(1008));
    eventually("the 1008 is counted", || async {
        sample(&app, "tickstream_close_codes_total{code=\"1008\"}").await == 1.0
    })
    .await;

    // Redis command latency, by what the command is for.
    assert!(
        sample(
            &app,
            "tickstream_redis_command_duration_seconds_count{command=\"append\"}"
        )
        .await
            >= 1.0
    );
    assert!(
        sample(
            &app,
            "tickstream_redis_command_duration_seconds_count{command=\"token_bucket\"}"
        )
        .await
            >= 1.0
    );

    // Reader lag of the partition the subscriber reads: sampled, and 0 once caught up.
    let partition = partition_of("obs.a", app.config.partitions);
    let lag = format!("tickstream_reader_lag_ticks{{partition=\"{partition}\"}}");
    eventually("the lag is sampled", || async {
        app.text("/metrics").await.unwrap_or_default().contains(&lag)
    })
    .await;
    assert_eq!(sample(&app, &lag).await, 0.0);

    // Every label set is bounded: nothing a client sent became a label.
    let text = app.text("/metrics").await.unwrap_or_default();
    assert!(!text.contains("dance") && !text.contains("evil"), "{text}");

    // The shipped Grafana dashboard charts only series this server exposes (a
    // labelled family appears with its first sample: no test here is refused by a
    // rate limit).
    let (status, _) = app.get("/api/v1/channels/obs.a/ticks", Some(&reader)).await;
    assert_eq!(status, 200);
    let text = app.text("/metrics").await.unwrap_or_default();
    let dashboard =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/grafana-dashboard.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() >= 10));
    let mut charted: Vec<&str> = dashboard
        .match_indices("tickstream_")
        .map(|(i, _)| {
            let rest = &dashboard[i..];
            &rest[..rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len())]
        })
        .collect();
    charted.sort_unstable();
    charted.dedup();
    for name in charted {
        let exposed = text
            .lines()
            .any(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']));
        assert!(
            exposed || name == "tickstream_rate_limited_total",
            "the dashboard charts {name}, which /metrics lacks"
        );
    }
    ws.close().await;
    app.stop().await;
}

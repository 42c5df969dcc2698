//! Redis Cluster without failovers (docs/OPERATIONS.md "Redis Cluster"): slots,
//! delivery from every master, two nodes, shared buckets, candles. Each scenario is a
//! test of its own, and one local cluster of 3 masters and 3 replicas serves them all
//! (a cluster takes seconds to start): `support::cluster::hold` starts it for the
//! first and lends it to one test at a time, whole (the others' nodes would show in
//! the registry this file counts). The failovers are in `tests/cluster_failover.rs`.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use support::cluster::RedisCluster;
use support::cluster::{blocking, channel_on, cluster_config, master_at, run_id, ticks_until};
use support::property;
use support::*;
use tickstream::keyspace::{self, partition_of, ChannelKeys};

/// Channels spread over all 16 partitions: each channel's keys are in the slot our
/// keyspace computes and on the master serving it; one batch over all of them (one
/// pipeline per partition), the channel list across every master, and delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_land_on_their_slot_owners() {
    let fixture = support::cluster::hold().await;
    let cluster: &RedisCluster = &fixture;
    let app = TestApp::start(cluster_config(cluster)).await;
    let run = run_id();
    let mut names = vec![String::new(); 16];
    let mut n = 0;
    while names.iter().any(String::is_empty) {
        let name = format!("place.{run}.{n}");
        let p = partition_of(&name, 16) as usize;
        if names[p].is_empty() {
            names[p] = name;
        }
        n += 1;
    }
    let body = Value::Array(
        names
            .iter()
            .map(|c| json!({"channel": c, "value": 1.0, "key": "k"}))
            .collect(),
    );
    let (status, answer) = app.ingest(&body).await;
    assert_eq!(status, 201, "{answer}");
    let mut masters = HashSet::new();
    for name in &names {
        let key = ChannelKeys::new(name, 16).stream;
        let slot = keyspace::slot_of(&key);
        assert_eq!(
            cluster.nodes[0].query(&["CLUSTER", "KEYSLOT", &key]),
            Some(slot.to_string()),
            "our slot of {key} is Redis's"
        );
        let owner = blocking(|| cluster.master_of(slot));
        masters.insert(owner);
        assert_eq!(
            cluster.nodes[owner].query(&["XLEN", &key]).as_deref(),
            Some("1"),
            "{key} on the master of slot {slot}"
        );
    }
    assert_eq!(masters.len(), 3, "16 partitions spread over every master");
    // Delivery from every partition's reader, on its master.
    let t = token(&[&format!("place.{run}.*")]);
    let mut ws = app.ws("/ws", &t).await;
    for name in &names {
        ws.send(json!({"type": "subscribe", "channel": name, "since": "0-0"}))
            .await;
    }
    let frames = ticks_until(&mut ws, 16).await;
    let seen: HashSet<&str> = frames
        .iter()
        .filter(|f| f["type"] == "tick")
        .map(|f| f["channel"].as_str().unwrap())
        .collect();
    assert_eq!(seen.len(), 16);
    // The channel list reads every partition's registry, on every master.
    let (status, list) = app.get("/api/v1/channels?limit=1000", Some(&t)).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["channels"].as_array().unwrap().len(), 16, "{list}");
    let (status, ready) = app.get("/readyz", None).await;
    assert_eq!((status, ready["redis"].as_str()), (200, Some("ok")), "{ready}");
    app.stop().await;
}

/// The core property with two tickstream nodes on the cluster, one channel per
/// master: producers post through either node, clients (re)connect to either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_with_two_nodes() {
    let fixture = support::cluster::hold().await;
    let cluster: &RedisCluster = &fixture;
    let started = Instant::now();
    let a = Arc::new(TestApp::start(cluster_config(cluster)).await);
    let b = Arc::new(TestApp::start(cluster_config(cluster)).await);
    let run = run_id();
    let channels: Vec<String> = (0..3)
        .map(|m| channel_on(cluster, master_at(cluster, m), &format!("once.{run}.m{m}")))
        .collect();
    let checked = property::exactly_once(&[a.clone(), b.clone()], &channels).await;
    assert!(checked > 1000, "checked {checked} deliveries");
    let (status, nodes) = a.get("/api/v1/nodes", Some(&token(&["*"]))).await;
    assert_eq!(status, 200);
    assert_eq!(nodes["nodes"].as_array().unwrap().len(), 2, "{nodes}");
    eprintln!(
        "exactly once, 2 nodes, 3 masters: {checked} deliveries checked in {:?}",
        started.elapsed()
    );
    for app in [a, b] {
        let app = Arc::try_unwrap(app)
            .ok()
            .expect("the property's tasks have ended and let go of the servers");
        app.stop().await;
    }
}

/// Two nodes, one bucket in the cluster: the burst is shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_shared_by_nodes() {
    let fixture = support::cluster::hold().await;
    let cluster: &RedisCluster = &fixture;
    let a = TestApp::start(with_limits(cluster_config(cluster), "3/h:3")).await;
    let b = TestApp::start(with_limits(cluster_config(cluster), "3/h:3")).await;
    let t = token_with(json!({"sub": format!("rl-{}", run_id()), "channels": ["*"]}));
    let path = "/api/v1/channels/rl.c/latest";
    assert_eq!(
        a.get_answer(path, Some(&t)).await.number("x-ratelimit-remaining"),
        Some(2)
    );
    assert_eq!(
        b.get_answer(path, Some(&t)).await.number("x-ratelimit-remaining"),
        Some(1)
    );
    assert_eq!(
        a.get_answer(path, Some(&t)).await.number("x-ratelimit-remaining"),
        Some(0)
    );
    assert_eq!(b.get_answer(path, Some(&t)).await.status, 429);
    let (_, ready) = a.get("/readyz", None).await;
    assert_eq!(ready["ratelimit"], "redis", "{ready}");
    a.stop().await;
    b.stop().await;
}

/// Candles on channels of several partitions (so several masters): exact against
/// the reference past the stream's cap, and unchanged by a rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candles_are_exact_on_a_cluster() {
    let fixture = support::cluster::hold().await;
    let cluster: &RedisCluster = &fixture;
    let mut cfg = cluster_config(cluster);
    cfg.stream_maxlen = 50;
    let app = TestApp::start(cfg.clone()).await;
    let seed = u64::from(std::process::id());
    let mut references = Vec::new();
    for n in 0..3 {
        let channel = format!("cc.{}.{n}", run_id());
        let reference = support::candles::candles_match_reference(&app, &channel, seed + n).await;
        references.push((channel, reference));
    }
    let rebuilt = tickstream::rebuild_candles(&cfg, None, |_, _| {}).await.unwrap();
    assert!(rebuilt >= 3, "{rebuilt} channels rebuilt");
    let t = token(&["*"]);
    for (channel, reference) in &references {
        for (interval, _) in support::candles::INTERVALS {
            let got = support::candles::read_all(&app, &t, channel, interval, 1000).await;
            support::candles::assert_matches(
                &got,
                &reference.candles(interval),
                &format!("{channel} {interval} rebuilt"),
            );
        }
    }
    app.stop().await;
}

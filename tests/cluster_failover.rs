//! Redis Cluster failovers (docs/OPERATIONS.md "Redis Cluster", docs/PROTOCOL.md
//! §5.4), graceful and hard, with and without `TICKSTREAM_REDIS_WAIT`: each
//! scenario is a test of its own, and one local cluster of 3 masters and 3 replicas
//! serves them all (a cluster takes seconds to start): `support::cluster::hold`
//! starts it for the first and lends it to one test at a time, whole (the failovers
//! need it alone, and the others count the nodes in the registry). Each scenario uses
//! channels of its own; the failovers leave the cluster whole again. Timings are
//! printed (`--nocapture`), not asserted.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::cluster::RedisCluster;
use support::cluster::{
    batch, blocking, channel_on, cluster_config, ingest_until_201, master_at, master_of_channel, run_id, seqs,
    ticks_until, ws_once_healthy,
};
use support::*;
use tickstream::keyspace::partition_of;

/// `CLUSTER FAILOVER` of the master serving a busy channel, while clients are
/// subscribed and a producer posts: nothing lost, nothing twice, sockets stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_failover_loses_nothing() {
    let fixture = support::cluster::hold().await;
    let cluster: &RedisCluster = &fixture;
    let app = TestApp::start(cluster_config(cluster)).await;
    let run = run_id();
    let master = master_at(cluster, 0);
    let channel = channel_on(cluster, master, &format!("graceful.{run}"));
    let replica = blocking(|| cluster.replica_of(master));
    let t = token(&["*"]);
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut ws = app.ws(&format!("/ws/{channel}?since=0-0"), &t).await;
        ws.until_type("live").await;
        clients.push(ws);
    }
    let mut acked = Vec::new();
    let mut refused = 0;
    let mut failed_over: Option<Duration> = None;
    let t0 = Instant::now();
    for round in 0..40 {
        if round == 10 {
            assert_eq!(
                cluster.nodes[replica].query(&["CLUSTER", "FAILOVER"]).as_deref(),
                Some("OK")
            );
        }
        let (ids, r) = ingest_until_201(&app, &batch(&channel, &format!("g{round}"), 5)).await;
        refused += r;
        acked.extend(ids);
        if round >= 10 && failed_over.is_none() && blocking(|| cluster.nodes[replica].is_master()) {
            failed_over = Some(t0.elapsed());
        }
        // Pacing, not a condition: 40 batches spread over the failover.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    blocking(|| cluster.wait_master(replica));
    let history = app.history_ids(&channel, "0-0").await;
    assert_same_ids(&history, &acked, "history after a graceful failover");
    for ws in &mut clients {
        let frames = ticks_until(ws, acked.len()).await;
        assert!(!frames.iter().any(|f| f["type"] == "gap"), "no gap: {frames:?}");
        assert_eq!(tick_ids(&frames), acked, "every tick once, in order");
        let s = seqs(&frames);
        assert!(s.windows(2).all(|w| w[1] == w[0] + 1), "seq continuous");
    }
    eprintln!(
        "graceful failover: replica took over within {:?} of the request; {} ingests answered 503 meanwhile; 5 sockets kept, {} ticks each",
        failed_over,
        refused,
        acked.len()
    );
    blocking(|| cluster.wait_whole());
    app.stop().await;
}

/// Cuts `replica` off its master: stopped (SIGSTOP), then the master's replication
/// buffer for it overflows (a large write with a 1 MB limit), so the master drops the
/// link and whatever it had not sent. Writes after this reach the master only.
fn cut_off(cluster: &RedisCluster, master: usize, replica: usize, slot_tag: u32) {
    let m = &cluster.nodes[master];
    // Everything written so far reaches the replica first: only what follows is lost.
    assert_eq!(m.query(&["WAIT", "1", "5000"]).as_deref(), Some("1"));
    signal(cluster.nodes[replica].pid(), "STOP");
    assert_eq!(
        m.query(&["CONFIG", "SET", "client-output-buffer-limit", "replica 1mb 1mb 0"])
            .as_deref(),
        Some("OK")
    );
    let junk = "x".repeat(16 * 1024 * 1024);
    let key = format!("junk:{{p{slot_tag}}}");
    assert_eq!(m.query(&["SET", &key, &junk]).as_deref(), Some("OK"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while m
        .query(&["INFO", "replication"])
        .is_some_and(|i| !i.contains("connected_slaves:0"))
    {
        assert!(Instant::now() < deadline, "the master kept its replica");
        // A poll of the condition above, under its deadline.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the master (SIGKILL) and lets the cut-off replica run again: it takes over
/// (see [`RedisCluster::wait_master`]) without the writes it never got.
fn kill_master(cluster: &mut RedisCluster, master: usize, replica: usize) {
    cluster.nodes[master].kill();
    signal(cluster.nodes[replica].pid(), "CONT");
}

/// The old master comes back (as a replica of the new one); the cluster is whole.
fn heal(cluster: &mut RedisCluster, master: usize) {
    cluster.nodes[master].start_again();
    cluster.wait_whole();
}

/// A hard failover that lost acknowledged ticks: on the channel that lost some,
/// clients get a `rollback` gap and the new epoch; on a channel of the same master
/// that lost nothing, and on another master's channel, exact continuity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_failover_that_lost_ticks_is_announced() {
    let mut fixture = support::cluster::hold().await;
    let cluster: &mut RedisCluster = &mut fixture;
    let app = TestApp::start(cluster_config(cluster)).await;
    let run = run_id();
    let master = master_at(cluster, 1);
    let replica = blocking(|| cluster.replica_of(master));
    let lost = channel_on(cluster, master, &format!("hard.{run}.lost"));
    let kept = (0..1000)
        .map(|n| format!("hard.{run}.kept.{n}"))
        .find(|c| partition_of(c, 16) != partition_of(&lost, 16) && master_of_channel(cluster, c) == master)
        .expect("a second partition on the same master");
    let other = channel_on(cluster, master_at(cluster, 2), &format!("hard.{run}.other"));
    let t = token(&["*"]);
    let mut subs = Vec::new();
    for c in [&lost, &kept, &other] {
        let (ids, _) = ingest_until_201(&app, &batch(c, "pre", 50)).await;
        assert_eq!(ids.len(), 50);
        let mut ws = app.ws(&format!("/ws/{c}?since=0-0"), &t).await;
        assert_eq!(tick_ids(&ws.until_type("live").await).len(), 50);
        subs.push(ws);
    }
    let before = app.history_ids(&lost, "0-0").await;
    let first_epoch = app.get(&format!("/api/v1/channels/{lost}/latest"), Some(&t)).await.1["epoch"]
        .as_str()
        .unwrap()
        .to_string();

    blocking(|| cut_off(cluster, master, replica, partition_of(&lost, 16)));
    // Acknowledged, delivered, and only on the master that is about to die.
    let (doomed, _) = ingest_until_201(&app, &batch(&lost, "doomed", 20)).await;
    let (other_mid, _) = ingest_until_201(&app, &batch(&other, "mid", 20)).await;
    let got = ticks_until(&mut subs[0], 20).await;
    assert_eq!(tick_ids(&got), doomed, "the doomed ticks were delivered");
    // Readiness, and ingest into the dying master's slot, while it has no master.
    let probe = {
        let url = app.url("/readyz");
        tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..150 {
                if let Ok(r) = reqwest::get(&url).await {
                    seen.push(r.status().as_u16());
                }
                if seen.contains(&503) && seen.last() == Some(&200) {
                    break;
                }
                // Pacing, not a condition: a probe every 100 ms records the statuses
                // over the failover (up to 150 of them).
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            seen
        })
    };
    let t0 = Instant::now();
    blocking(|| kill_master(cluster, master, replica));
    // Started after the kill, so nothing it gets answered 201 can be lost with the
    // old master.
    let producer = {
        let url = app.url("/api/v1/ingest");
        let channel = kept.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut statuses = Vec::new();
            for i in 0..300 {
                let body = json!({"channel": channel, "value": 1.0, "key": format!("during-{i}")});
                let status = http
                    .post(&url)
                    .bearer_auth(INGEST_TOKEN)
                    .json(&body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                statuses.push(status);
                if statuses.contains(&503) && status == 201 {
                    break;
                }
                // Pacing, not a condition: a producer posting every 100 ms.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            statuses
        })
    };
    blocking(|| cluster.wait_master(replica));
    let took = t0.elapsed();

    let during = producer.await.unwrap();
    assert!(
        during.contains(&503) && during.last() == Some(&201),
        "ingest into the failed master's slots: 503, then 201 by itself: {during:?}"
    );
    let t1 = Instant::now();
    let (after_lost, refused) = ingest_until_201(&app, &batch(&lost, "after", 10)).await;
    let ingest_back = t1.elapsed();
    let (after_kept, _) = ingest_until_201(&app, &batch(&kept, "after", 10)).await;
    let (after_other, _) = ingest_until_201(&app, &batch(&other, "after", 10)).await;

    // The channel that lost 20 acknowledged ticks: announced, then the new epoch.
    let frames = ticks_until(&mut subs[0], 10).await;
    let gap = frames
        .iter()
        .find(|f| f["type"] == "gap")
        .expect("a gap before the new epoch");
    assert_eq!(gap["reason"], "rollback", "{gap}");
    assert_eq!(gap["after"].as_str(), doomed.last().map(String::as_str), "{gap}");
    let new_ticks: Vec<&Value> = frames.iter().filter(|f| f["type"] == "tick").collect();
    assert_eq!(tick_ids(&frames), after_lost, "every tick of the new epoch");
    let new_epoch = new_ticks[0]["epoch"].as_str().unwrap().to_string();
    assert_eq!(new_epoch, format!("{first_epoch}.1"), "the successor epoch");
    // A REST page's epoch is its newest tick's: a page of survivors says the old
    // epoch (so a client resuming from it with that epoch is replayed the rest of the
    // survivors, then told of the rollback, as below); a page ending in the new epoch
    // says the new one, and so does `latest`.
    let page_epoch = |query: String| {
        let app = &app;
        let t = &t;
        let lost = &lost;
        async move {
            let (status, page) = app
                .get(&format!("/api/v1/channels/{lost}/ticks?{query}"), Some(t))
                .await;
            assert_eq!(status, 200, "{page}");
            page["epoch"].as_str().unwrap_or_default().to_string()
        }
    };
    assert_eq!(
        page_epoch("limit=1".into()).await,
        first_epoch,
        "a page of one survivor"
    );
    assert_eq!(
        page_epoch("order=desc&limit=1".into()).await,
        new_epoch,
        "the newest tick"
    );
    assert_eq!(
        page_epoch("limit=1000".into()).await,
        new_epoch,
        "a page ending in the new epoch"
    );
    let (_, latest) = app.get(&format!("/api/v1/channels/{lost}/latest"), Some(&t)).await;
    assert_eq!(latest["epoch"].as_str(), Some(new_epoch.as_str()));
    assert_eq!(
        seqs(&frames),
        (1..=10).collect::<Vec<u64>>(),
        "seq starts again in the new epoch"
    );
    assert!(
        sid(&after_lost[0]) > sid(doomed.last().unwrap()),
        "new ids above every id delivered"
    );
    let history = app.history_ids(&lost, "0-0").await;
    assert_same_ids(
        &history,
        &[before.clone(), after_lost.clone()].concat(),
        "history: the doomed ticks are gone",
    );

    // Nothing lost, nothing announced: the same master's other channel, and another
    // master's channel.
    // The kept channel: whatever was answered 201 during the failover, then `after`.
    let kept_history = app.history_ids(&kept, "0-0").await;
    assert!(kept_history.ends_with(&after_kept));
    let expectations = [
        kept_history[50..].to_vec(),
        [other_mid.clone(), after_other.clone()].concat(),
    ];
    for (ws, expected) in subs[1..].iter_mut().zip(expectations) {
        let frames = ticks_until(ws, expected.len()).await;
        assert!(!frames.iter().any(|f| f["type"] == "gap"), "no gap: {frames:?}");
        assert_eq!(tick_ids(&frames), expected);
    }

    // Clients resuming with the old epoch: from a survivor, the rest of the old epoch,
    // then the gap; from a lost tick, the gap at once.
    let survivor = &before[39];
    let mut ws = ws_once_healthy(
        &app,
        &format!("/ws/{lost}?since={survivor}&seq=40&epoch={first_epoch}"),
        &t,
    )
    .await;
    let frames = ws.until_type("live").await;
    let kinds: Vec<&str> = frames
        .iter()
        .filter(|f| f["type"] == "tick" || f["type"] == "gap")
        .map(|f| f["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.iter().filter(|k| **k == "tick").count(), 20, "{frames:?}");
    assert_eq!(kinds[10], "gap", "10 survivors, then the gap: {frames:?}");
    assert_eq!(tick_ids(&frames), [before[40..].to_vec(), after_lost.clone()].concat());
    let doomed_id = &doomed[5];
    let mut ws = ws_once_healthy(
        &app,
        &format!("/ws/{lost}?since={doomed_id}&seq=56&epoch={first_epoch}"),
        &t,
    )
    .await;
    let frames = ws.until_type("live").await;
    let gap = frames.iter().find(|f| f["type"] == "gap").expect("gap");
    assert_eq!(gap["reason"], "rollback", "{gap}");
    assert_eq!(tick_ids(&frames), after_lost);
    assert!(
        app.metric("/metrics", "tickstream_rollbacks_total")
            .await
            .unwrap_or(0.0)
            >= 1.0
    );
    let readiness = probe.await.unwrap();
    assert!(
        readiness.contains(&503) && readiness.last() == Some(&200),
        "/readyz 503 while a slot had no master, 200 after: {readiness:?}"
    );
    eprintln!(
        "hard failover: replica master {took:?} after the kill; a producer posting every 100 ms into the failed master's slots got {} answers 503 (or no answer), then 201; the next batch took {ingest_back:?} ({refused} refused); 20 acknowledged ticks lost and announced as a rollback gap",
        during.iter().filter(|s| **s != 201).count()
    );
    blocking(|| heal(cluster, master));
    app.stop().await;
}

/// `TICKSTREAM_REDIS_WAIT=1`: the same hard failover, and every tick answered 201
/// survives it; what was not confirmed was answered 503 and lands on retry, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waited_ticks_survive_a_hard_failover() {
    let mut fixture = support::cluster::hold().await;
    let cluster: &mut RedisCluster = &mut fixture;
    let mut cfg = cluster_config(cluster);
    cfg.redis_wait = 1;
    let app = TestApp::start(cfg).await;
    let run = run_id();
    let master = master_at(cluster, 2);
    let replica = blocking(|| cluster.replica_of(master));
    let channel = channel_on(cluster, master, &format!("wait.{run}"));
    let (mut acked, _) = ingest_until_201(&app, &batch(&channel, "pre", 30)).await;
    blocking(|| cut_off(cluster, master, replica, partition_of(&channel, 16)));
    let unconfirmed = batch(&channel, "unconfirmed", 10);
    let (status, answer) = app.ingest(&unconfirmed).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (503, Some("unavailable")),
        "{answer}"
    );
    let t0 = Instant::now();
    blocking(|| kill_master(cluster, master, replica));
    blocking(|| cluster.wait_master(replica));
    let took = t0.elapsed();
    // With no replica left, nothing can be confirmed: 503 until the old master is
    // back as a replica of the new one.
    blocking(|| heal(cluster, master));
    let (ids, refused) = ingest_until_201(&app, &unconfirmed).await;
    acked.extend(ids);
    let history = app.history_ids(&channel, "0-0").await;
    assert_same_ids(&history, &acked, "every acknowledged tick, once");
    eprintln!(
        "WAIT 1: hard failover in {took:?}; the unconfirmed batch answered 503, and 201 after {refused} retries once a replica was back; {} ticks acknowledged, {} in history",
        acked.len(),
        history.len()
    );
    app.stop().await;
}

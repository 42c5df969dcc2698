//! REST history from the node's cache (docs/ARCHITECTURE.md §15) is exactly what
//! `XRANGE` says, while producers ingest, the stream trims and the channel's epoch
//! changes under it.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use support::*;
use tickstream::keyspace::ChannelKeys;

const CHANNELS: [&str; 2] = ["hc.live", "hc.cold"];

fn stream_ids(redis: &RedisServer, channel: &str) -> Vec<String> {
    let key = ChannelKeys::new(channel, 16).stream;
    let reply: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .query(&mut redis.client())
        .unwrap();
    reply.into_iter().map(|(id, _)| id).collect()
}

/// Checks one page against the stream before (`a`) and after (`b`) it was asked:
/// the page is what `XRANGE` answered at some moment in between, so it is a run of
/// `a`'s window with only trimmed ticks (gone by `b`) left out in front.
fn check(page: &[String], a: &[String], b: &[String], limit: usize, descending: bool, what: &str) {
    let kept_later: std::collections::HashSet<&String> = b.iter().collect();
    // Which of `a` were trimmed by the time of the page: a prefix of `a`, at most
    // what `b` no longer has.
    let trimmed_at_most = a.iter().take_while(|id| !kept_later.contains(id)).count();
    let ok = (0..=trimmed_at_most).any(|t| {
        let window = &a[t..];
        let expected: Vec<&String> = if descending {
            window.iter().rev().take(limit).collect()
        } else {
            window.iter().take(limit).collect()
        };
        expected.len() == page.len() && expected.iter().zip(page).all(|(e, p)| *e == p)
    });
    assert!(
        ok,
        "{what}: page {page:?} is not XRANGE's answer at any moment (before: {a:?}, after: {b:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_pages_equal_xrange_under_ingest_trimming_and_a_new_epoch() {
    let redis = Arc::new(RedisServer::start());
    let mut cfg = config(Some(&redis));
    cfg.stream_maxlen = 300;
    let app = Arc::new(TestApp::start(cfg).await);
    let t = token(&["*"]);
    // A subscriber keeps `hc.live` active, so its partition reader fills the cache;
    // `hc.cold` is cached only from the pages read.
    let mut ws = app.ws("/ws/hc.live?since=$", &t).await;
    ws.until_type("live").await;
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (app, stop) = (app.clone(), stop.clone());
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(7);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let size = rng.random_range(1..30);
                let batch: Vec<Value> = (0..size)
                    .map(|_| {
                        n += 1;
                        json!({"channel": CHANNELS[(n % 2) as usize], "value": n, "key": format!("k{n}")})
                    })
                    .collect();
                app.ingest_retrying(&Value::Array(batch)).await;
                // Pacing, not a condition: a producer posting at random intervals.
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..8))).await;
            }
        })
    };
    let mut rng = StdRng::seed_from_u64(rand::random());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut checked = 0;
    let mut rolled_back = std::collections::HashMap::new();
    // Three phases of PHASE pages each, while the producer goes on: the stream as it
    // is; after a rollback (what redis/rollback.lua leaves after a failover: the
    // newest entries gone, the channel on a successor epoch, new ids above the old);
    // after the stream was lost whole (FLUSHALL: a new epoch from scratch). Each
    // change is made between two pages, so no page straddles one.
    const PHASE: usize = 150;
    while checked < 3 * PHASE {
        assert!(Instant::now() < deadline, "only {checked} pages checked in 60 s");
        if checked == PHASE && rolled_back.is_empty() {
            tokio::task::block_in_place(|| {
                for channel in CHANNELS {
                    let k = ChannelKeys::new(channel, 16);
                    let newest: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
                        .arg(&k.stream)
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(5)
                        .query(&mut redis.client())
                        .unwrap();
                    let lost: Vec<String> = newest.into_iter().map(|(id, _)| id).collect();
                    roll_back(&redis, channel, &lost);
                    // Where the lost ticks were: the stream's end now.
                    rolled_back.insert(channel, stream_ids(&redis, channel).pop());
                }
            });
        }
        if checked == 2 * PHASE && rolled_back.len() == CHANNELS.len() {
            tokio::task::block_in_place(|| redis.flushall());
            rolled_back.insert("flushed", None);
        }
        let after_rollback = (PHASE..2 * PHASE).contains(&checked);
        let channel = CHANNELS[rng.random_range(0..2)];
        let before = tokio::task::block_in_place(|| stream_ids(&redis, channel));
        if before.len() < 2 {
            // A poll of the condition "two ticks stored", under the loop's deadline.
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        // A window whose upper end exists already (later ticks never fall into it),
        // sometimes open below, and the same windows again and again (cache hits).
        let mut hi = rng.random_range(before.len() / 2..before.len());
        let mut lo = rng.random_range(0..=hi);
        let mut limit = [1, 7, 50, 400][rng.random_range(0..4)];
        let mut descending = rng.random_bool(0.5);
        // After the rollback, half the pages straddle where the deleted ticks were
        // (the stream's end then): a cache that kept them would serve them.
        if after_rollback {
            let edge = rolled_back.get(channel).cloned().flatten();
            if let Some(at) = before
                .iter()
                .position(|id| Some(id) == edge.as_ref())
                .filter(|_| rng.random_bool(0.5))
            {
                (lo, hi, limit, descending) = (at.saturating_sub(3), before.len() - 1, 50, false);
            }
        }
        let since = if rng.random_bool(0.3) {
            "0-0".to_string()
        } else {
            before[lo].clone()
        };
        let until = before[hi].clone();
        let order = if descending { "desc" } else { "asc" };
        let path = format!("/api/v1/channels/{channel}/ticks?since={since}&until={until}&limit={limit}&order={order}");
        let (status, page) = app.get(&path, Some(&t)).await;
        let after = tokio::task::block_in_place(|| stream_ids(&redis, channel));
        assert_eq!(status, 200, "{path}: {page}");
        let ids = page_ids(&page);
        let sid = |s: &String| support::sid(s);
        let window = |all: &[String]| -> Vec<String> {
            all.iter()
                .filter(|id| (since == "0-0" || sid(id) > sid(&since)) && sid(id) <= sid(&until))
                .cloned()
                .collect()
        };
        check(&ids, &window(&before), &window(&after), limit, descending, &path);
        checked += 1;
    }
    stop.store(true, Ordering::Relaxed);
    producer.await.unwrap();
    let from_cache = app
        .metric("/metrics", "tickstream_history_pages_total{source=\"cache\"}")
        .await;
    let from_store = app
        .metric("/metrics", "tickstream_history_pages_total{source=\"store\"}")
        .await;
    eprintln!("{checked} pages checked: {from_cache:?} from the cache, {from_store:?} from Redis");
    assert!(
        from_cache.unwrap_or(0.0) > 20.0,
        "the cache answered {from_cache:?} pages"
    );
    drop(ws);
    let app = Arc::try_unwrap(app)
        .ok()
        .expect("the producer has ended and let go of the server");
    app.stop().await;
}

/// Ids of a REST page.
async fn ids_of(app: &TestApp, path: &str) -> Vec<String> {
    let (status, page) = app.get(path, Some(&token(&["*"]))).await;
    assert_eq!(status, 200, "{path}: {page}");
    page_ids(&page)
}

/// The `epoch` of the page at `path`.
async fn page_epoch(app: &TestApp, path: &str) -> String {
    let (status, page) = app.get(path, Some(&token(&["*"]))).await;
    assert_eq!(status, 200, "{path}: {page}");
    page["epoch"].as_str().expect("an epoch").to_string()
}

/// What `redis/rollback.lua` leaves after a failover lost `lost`: those entries gone,
/// the channel on its successor epoch (ids go on above the old ones).
fn roll_back(redis: &RedisServer, channel: &str, lost: &[String]) {
    let k = ChannelKeys::new(channel, 16);
    let mut c = redis.client();
    for id in lost {
        let _: () = redis::cmd("XDEL").arg(&k.stream).arg(id).query(&mut c).unwrap();
    }
    let epoch: String = redis::cmd("HGET").arg(&k.meta).arg("epoch").query(&mut c).unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&k.meta)
        .arg("epoch")
        .arg(tickstream::tick::epoch::after_rollback(&epoch))
        .query(&mut c)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_a_rollback_or_a_lost_stream_took_are_never_served_from_memory() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(Some(&redis))).await;
    let ids = ingest_keyed(&app, "hc.rb", 0, 50).await;
    let top = "/api/v1/channels/hc.rb/ticks?order=desc&limit=50";
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(ids_of(&app, top).await, newest_first);
    assert_eq!(ids_of(&app, top).await, newest_first);
    let cached = || app.metric("/metrics", "tickstream_history_pages_total{source=\"cache\"}");
    assert_eq!(cached().await, Some(1.0), "the second page came from memory");
    // A failover's rollback: the newest 5 gone, the channel on a successor epoch.
    roll_back(&redis, "hc.rb", &ids[45..]);
    let after_40 = format!("/api/v1/channels/hc.rb/ticks?since={}&limit=7", ids[40]);
    assert_eq!(
        ids_of(&app, &after_40).await,
        ids[41..45],
        "the stream now ends at the survivor"
    );
    // A page's epoch is its newest tick's: survivors are of the old epoch, though the
    // channel's is the successor now.
    let t = token(&["*"]);
    let old_epoch = page_epoch(&app, &after_40).await;
    let (_, latest) = app.get("/api/v1/channels/hc.rb/latest", Some(&t)).await;
    assert_eq!(
        latest["epoch"].as_str(),
        Some(old_epoch.as_str()),
        "the survivor is the latest"
    );
    // New ticks of the new epoch above: the old epoch's lost ticks never come back.
    let new = ingest_keyed(&app, "hc.rb", 100, 5).await;
    let expected: Vec<String> = ids[41..45].iter().chain(&new[..3]).cloned().collect();
    assert_eq!(ids_of(&app, &after_40).await, expected);
    assert_eq!(ids_of(&app, &after_40).await, expected);
    let new_epoch = page_epoch(&app, &after_40).await;
    assert_eq!(
        new_epoch,
        tickstream::tick::epoch::after_rollback(&old_epoch),
        "newest tick's epoch"
    );
    let first_only = format!("/api/v1/channels/hc.rb/ticks?since={}&limit=1", ids[40]);
    assert_eq!(page_epoch(&app, &first_only).await, old_epoch, "a page of one survivor");
    // A client that read a page of survivors and resumes with that page's epoch gets
    // the rest of the survivors, then the rollback announced, then the new ticks.
    let mut ws = app
        .ws(&format!("/ws/hc.rb?since={}&epoch={old_epoch}", ids[42]), &t)
        .await;
    let frames = ws.until_type("live").await;
    let gaps: Vec<_> = frames.iter().filter(|f| f["type"] == "gap").collect();
    assert_eq!(gaps.len(), 1, "{frames:?}");
    assert_eq!(gaps[0]["reason"], "rollback", "{frames:?}");
    let want: Vec<String> = ids[43..45].iter().chain(&new).cloned().collect();
    assert_eq!(tick_ids(&frames), want);
    // The stream lost whole and begun again.
    redis.flushall();
    let fresh = ingest_keyed(&app, "hc.rb", 200, 3).await;
    assert_eq!(ids_of(&app, "/api/v1/channels/hc.rb/ticks?since=0-0").await, fresh);
    assert_eq!(ids_of(&app, top).await, fresh.iter().rev().cloned().collect::<Vec<_>>());
    app.stop().await;
}

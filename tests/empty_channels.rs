//! A subscription to a channel that has no ticks yet (docs/PROTOCOL.md §9.4 "Bounds"):
//! it holds no buffer, costs at most one Redis read when it is made, and adds
//! nothing to any later read until the channel's first tick, which its subscriber
//! then gets like any other. Redis's own `MONITOR` is the witness, against a real
//! `redis-server`, while a normal client is served exactly.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;

/// Every command Redis runs (outside scripts) while it is held.
struct Monitor {
    lines: Arc<Mutex<Vec<String>>>,
    stream: std::net::TcpStream,
}

impl Monitor {
    fn start(redis: &RedisServer) -> Monitor {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", redis.port)).expect("connect to redis");
        stream.write_all(b"*1\r\n$7\r\nMONITOR\r\n").unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut ok = String::new();
        reader.read_line(&mut ok).unwrap();
        assert_eq!(ok.trim(), "+OK");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { return };
                if !line.contains(" lua]") {
                    sink.lock().unwrap().push(line);
                }
            }
        });
        Monitor { lines, stream }
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.lines.lock().unwrap())
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

fn commands<'a>(lines: &'a [String], name: &str) -> Vec<&'a String> {
    lines.iter().filter(|l| l.contains(&format!("\"{name}\""))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_to_channels_without_ticks_cost_one_read_and_nothing_after() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(Some(&redis))).await;
    let t = token(&["*"]);
    // A busy channel with a subscriber, in every partition the empty ones use too.
    app.ingest_one("busy.x", 0.0).await;
    let mut busy = app.ws("/ws/busy.x?since=$", &t).await;
    busy.until_type("live").await;

    let monitor = Monitor::start(&redis);
    const EMPTY: usize = 100;
    let mut waiting = Vec::new();
    for i in 0..EMPTY {
        let mut ws = app.ws(&format!("/ws/empty.{i}?since=0-0"), &t).await;
        let frames = ws.until_type("live").await;
        assert_eq!(frames[0]["type"], "subscribed");
        assert_eq!(frames[0]["epoch"], serde_json::Value::Null, "{frames:?}");
        waiting.push(ws);
    }
    // Reads go on meanwhile: the busy channel's ticks, exactly, in order.
    let mut sent = Vec::new();
    for v in 1..=20 {
        sent.push(app.ingest_one("busy.x", f64::from(v)).await);
    }
    let mut got = Vec::new();
    while got.len() < sent.len() {
        got.extend(tick_ids(&busy.until_type("tick").await));
    }
    assert_eq!(got, sent, "the busy channel's subscriber");
    let lines = monitor.take();

    let xreads = commands(&lines, "XREAD");
    assert!(!xreads.is_empty(), "the readers read meanwhile");
    for line in &xreads {
        assert!(!line.contains("empty."), "a waiting channel in a read: {line}");
    }
    for i in 0..EMPTY {
        let key = format!(":s:empty.{i}\"");
        let reads: Vec<_> = lines.iter().filter(|l| l.contains(&key)).collect();
        assert!(reads.len() <= 1, "empty.{i} cost {} reads: {reads:?}", reads.len());
    }
    assert!(commands(&lines, "XINFO").is_empty(), "{:?}", commands(&lines, "XINFO"));
    let unblocks: Vec<_> = lines.iter().filter(|l| l.contains("\"UNBLOCK\"")).collect();
    assert!(unblocks.is_empty(), "{unblocks:?}");

    // A waiting channel's first tick: its subscriber gets it, and from then on the
    // channel is read like any other.
    let id = app.ingest_one("empty.7", 7.0).await;
    let first = waiting[7].until_type("tick").await;
    assert_eq!(first.last().unwrap()["id"], id.as_str());
    assert_eq!(first.last().unwrap()["seq"], 1);
    let second = app.ingest_one("empty.7", 8.0).await;
    assert_eq!(
        waiting[7].until_type("tick").await.last().unwrap()["id"],
        second.as_str()
    );
    let later = monitor.take();
    assert!(
        commands(&later, "XREAD").iter().any(|l| l.contains(":s:empty.7\"")),
        "now read"
    );
    assert!(commands(&later, "XREAD").iter().all(|l| !l.contains(":s:empty.8\"")));
    drop(monitor);
    // The other waiting subscribers were told nothing, and still wait (a frame that
    // must not come has no condition to wait for: a window has to pass).
    match waiting[8].next_within(Duration::from_millis(200)).await {
        Next::Timeout => {}
        other => panic!("a waiting subscriber got {other:?}"),
    }
    app.stop().await;
}

/// A channel created while its first subscriber's activation is in flight is not
/// missed, however the birth and the registration interleave: many tries, each a
/// subscribe racing an ingest, each must deliver the tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_born_during_its_first_subscribe_is_delivered() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(Some(&redis))).await;
    let t = token(&["*"]);
    for i in 0..40 {
        let channel = format!("race.{i}");
        let app_ref = &app;
        let ch = channel.clone();
        let ingest = async move { app_ref.ingest_one(&ch, 1.0).await };
        let subscribe = async {
            let mut ws = app.ws(&format!("/ws/{channel}?since=0-0"), &t).await;
            let mut frames = ws.until_type("live").await;
            if tick_ids(&frames).is_empty() {
                frames = ws.until_type("tick").await;
            }
            frames
        };
        let (id, frames) = tokio::join!(ingest, subscribe);
        assert_eq!(tick_ids(&frames), vec![id], "{channel}: {frames:?}");
    }
    app.stop().await;
}

/// A channel created without a birth (by a node of the version before births, during
/// a rolling upgrade, or a birth lost with a failed master): its waiting subscribers
/// are not left waiting forever; the reader's next fresh connection looks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_created_without_a_birth_is_found_after_a_reconnect() {
    let mut redis = RedisServer::start_persistent();
    let app = TestApp::start(config(Some(&redis))).await;
    let t = token(&["*"]);
    let mut ws = app.ws("/ws/unborn.a?since=0-0", &t).await;
    ws.until_type("live").await;
    // The entry as the append script writes it, with no birth beside it.
    let keys = tickstream::keyspace::ChannelKeys::new("unborn.a", 16);
    let tail = tickstream::tick::wire::fields(1_000_000, Some("5"), None, &"ab".repeat(32));
    let body = tickstream::tick::wire::body(1, "oldnode1", &tail);
    let mut c = redis.client();
    let id: String = redis::cmd("XADD")
        .arg(&keys.stream)
        .arg("*")
        .arg("j")
        .arg(body)
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&keys.meta)
        .arg("epoch")
        .arg("oldnode1")
        .arg("seq")
        .arg(1)
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("SAVE").query(&mut c).unwrap();
    // Nothing announced it: the subscriber waits (no read of it either; a frame that
    // must not come needs a window to pass).
    match ws.next_within(Duration::from_millis(300)).await {
        Next::Timeout => {}
        other => panic!("got {other:?} before any reconnect"),
    }
    // A Redis restart: the readers reconnect, look at their waiting channels again.
    redis.restart();
    let frames = ws.until_type("tick").await;
    assert_eq!(tick_ids(&frames), vec![id]);
    app.stop().await;
}

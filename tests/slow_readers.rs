//! A slow reader's share of the server's memory (docs/PROTOCOL.md §5.5 "Slow
//! consumers"): at most 1 MiB of tick data per socket, whatever its number of
//! subscriptions and however slowly it reads. Measured as a user would see it: the
//! server process's RSS, while raw clients with a 4 KiB receive buffer read a few KiB
//! a second from 20 subscriptions replaying 3,000 ticks of ~700 B each from `0-0`;
//! meanwhile a normal client is served exactly. Against a real `redis-server`.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const CHANNELS: usize = 20;
const TICKS: usize = 3_000;

/// The server's resident memory, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the server's /proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// RSS once it has stopped growing, with the node's subscriptions then: at least
/// `sockets` are subscribed (each socket's first), and two readings 300 ms apart show
/// the same subscriptions and RSS within 1 %. A slow socket's later subscribes wait
/// for room in its queue, so not all 20 of each run at once.
async fn settled_rss(app: &TestApp, pid: u32, sockets: usize) -> (u64, f64) {
    let subscriptions = || async { app.metric("/metrics", "tickstream_subscriptions").await.unwrap_or(0.0) };
    eventually("every socket has subscribed", || async move {
        subscriptions().await >= sockets as f64
    })
    .await;
    let started = Instant::now();
    let (mut last, mut subscribed) = (rss(pid), subscriptions().await);
    loop {
        // The interval between two readings that must agree ("still" needs time).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (now, now_subscribed) = (rss(pid), subscriptions().await);
        if now_subscribed == subscribed && now.abs_diff(last) * 100 <= last {
            return (now, now_subscribed);
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "RSS never settled: {last} -> {now}"
        );
        (last, subscribed) = (now, now_subscribed);
    }
}

/// A socket with a 4 KiB receive buffer that has subscribed to every channel from
/// `0-0`; a task reads `per_sec` bytes a second from it until dropped.
struct SlowReader {
    reading: tokio::task::JoinHandle<u64>,
}

impl SlowReader {
    async fn open(addr: std::net::SocketAddr, reader: &str, per_sec: usize) -> SlowReader {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut tcp: TcpStream = socket.connect(addr).await.expect("connect");
        tcp.write_all(&raw::upgrade_request(&addr.to_string(), "/ws", reader))
            .await
            .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            tcp.read_exact(&mut byte).await.expect("the upgrade answer");
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        for c in 0..CHANNELS {
            let subscribe = json!({"type": "subscribe", "channel": format!("slow.{c}"), "since": "0-0"});
            tcp.write_all(&raw::client_frame(0x81, subscribe.to_string().as_bytes()))
                .await
                .unwrap();
        }
        let reading = tokio::spawn(async move {
            let mut total = 0u64;
            let mut chunk = vec![0u8; per_sec.div_ceil(10)];
            loop {
                // Not a condition: a deliberately slow reader, `per_sec` bytes a second.
                tokio::time::sleep(Duration::from_millis(100)).await;
                match tcp.read(&mut chunk).await {
                    Ok(0) | Err(_) => return total,
                    Ok(n) => total += n as u64,
                }
            }
        });
        SlowReader { reading }
    }
}

impl Drop for SlowReader {
    fn drop(&mut self) {
        self.reading.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_holds_at_most_its_budget_whatever_it_subscribes_to() {
    let redis = RedisServer::start();
    let node = NodeProc::start_with(&redis, &[("TICKSTREAM_LOG", "error")]).await;
    let app = node.app();
    let reader = token(&["*"]);
    let note = "x".repeat(640);
    for c in 0..CHANNELS {
        for from in (0..TICKS).step_by(1000) {
            let batch: Vec<_> = (from..from + 1000)
                .map(|i| json!({"channel": format!("slow.{c}"), "value": i, "data": {"note": note}, "key": format!("{i}")}))
                .collect();
            let (status, body) = app.ingest(&json!(batch)).await;
            assert_eq!(status, 201, "{body}");
        }
    }
    // One slow socket first, so what every socket shares (the channels' rings, the
    // history cache, allocator pools) is in the baseline.
    let _warm = SlowReader::open(node.addr, &reader, 2048).await;
    let (baseline, _) = settled_rss(&app, node.pid(), 1).await;
    let mut slow = Vec::new();
    for _ in 0..8 {
        slow.push(SlowReader::open(node.addr, &reader, 2048).await);
    }
    let (eight, _) = settled_rss(&app, node.pid(), 9).await;
    for _ in 0..8 {
        slow.push(SlowReader::open(node.addr, &reader, 2048).await);
    }
    let (sixteen, subscribed) = settled_rss(&app, node.pid(), 17).await;
    let per_socket = sixteen.saturating_sub(eight) / 8;
    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "RSS: {:.1} MiB with one slow socket, {:.1} MiB with 9, {:.1} MiB with 17 ({subscribed} subscriptions \
         running): {:.2} MiB a further socket",
        mib(baseline),
        mib(eight),
        mib(sixteen),
        mib(per_socket)
    );
    // 1 MiB of tick data, and the socket's own structures (its subscriptions, its
    // queue and buffers) beside it.
    assert!(
        per_socket <= 3 * 1024 * 1024 / 2,
        "each slow socket added {:.2} MiB (budget: 1 MiB of ticks)",
        mib(per_socket)
    );
    assert!(
        sixteen.saturating_sub(baseline) <= 16 * 3 * 1024 * 1024 / 2,
        "16 slow sockets added {:.1} MiB",
        mib(sixteen.saturating_sub(baseline))
    );

    // Meanwhile a normal client is served: everything from 0-0, exactly once, in order.
    let mut ws = app.ws("/ws/slow.0?since=0-0", &reader).await;
    let frames = ws.until_type("live").await;
    let got = tick_ids(&frames);
    assert_same_ids(&got, &redis.xrange_ids("slow.0", 16), "a normal client's replay");
    let id = app.ingest_one("slow.0", 1e9).await;
    let live = ws.until_type("tick").await;
    assert_eq!(live.last().unwrap()["id"], id.as_str());

    drop(slow);
}

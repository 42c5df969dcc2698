//! Scenarios about connections rather than throughput: idle sockets, a storm of
//! resumes, handshakes, and subscriptions to channels nobody writes to.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fanout::connect_many;
use crate::http::Http;
use crate::report::{histogram, merged, server_usage, BenchCpu, Report};
use crate::ws::{is_tick, is_type, Frame, Ws};
use crate::{reader_token, Args};

/// N subscribed sockets and no traffic: memory per socket.
pub async fn idle(args: &Args, sockets: usize, hold: u64, report: &mut Report) {
    let token = reader_token(args);
    let usage0 = server_usage(&args.url).await;
    let run = format!("{:08x}", rand::random::<u32>());
    let paths: Vec<String> = (0..sockets)
        .map(|i| format!("/ws/bench.idle.{run}.{}?since=$", i % 100))
        .collect();
    let cpu = BenchCpu::start();
    let started = Instant::now();
    let open = connect_many(&args.url, &token, paths).await;
    tokio::time::sleep(Duration::from_secs(hold)).await;
    report.bench(&cpu);
    let usage1 = server_usage(&args.url).await;
    let per = (usage1.0 - usage0.0) / open.len().max(1) as f64 / 1024.0;
    report.put("sockets", json!(open.len()), format!("{} of {sockets}", open.len()));
    report.put("rss_per_socket_kib", json!(per), format!("{per:.2} KiB"));
    report.server(usage0, usage1, started.elapsed().as_secs_f64());
}

/// Ingests `n` ticks into `channel`; returns their ids.
async fn seed(http: &mut Http, ingest_token: &str, channel: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let ticks: Vec<Value> = chunk
            .iter()
            .map(|i| json!({"channel": channel, "value": i, "data": {"sent_us": 0}}))
            .collect();
        let body = serde_json::to_vec(&ticks).unwrap_or_default();
        if let Ok((201, answer)) = http.request("POST", "/api/v1/ingest", ingest_token, &body).await {
            let v: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
            for r in v["results"].as_array().into_iter().flatten() {
                ids.push(r["id"].as_str().unwrap_or_default().to_string());
            }
        }
    }
    ids
}

/// N clients reconnect at once, each `behind` ticks behind.
pub async fn resume_storm(args: &Args, clients: usize, behind: usize, report: &mut Report) {
    let token = reader_token(args);
    let run = format!("{:08x}", rand::random::<u32>());
    let channel = format!("bench.storm.{run}");
    let Ok(mut http) = Http::connect(&args.url).await else {
        return;
    };
    let ids = seed(&mut http, &args.ingest_token, &channel, behind + 1).await;
    let (_, page) = http
        .request("GET", &format!("/api/v1/channels/{channel}/ticks?limit=1"), &token, b"")
        .await
        .unwrap_or((0, Vec::new()));
    let epoch = serde_json::from_slice::<Value>(&page)
        .ok()
        .and_then(|v| v["epoch"].as_str().map(str::to_string))
        .unwrap_or_default();
    let cursor = ids.first().cloned().unwrap_or_else(|| "0-0".into());
    let path = format!("/ws/{channel}?since={cursor}&seq=1&epoch={epoch}");
    let usage0 = server_usage(&args.url).await;
    let cpu = BenchCpu::start();
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (url, token, path) = (args.url.clone(), token.clone(), path.clone());
            tokio::spawn(async move {
                let mut ws = Ws::connect(&url, &path, &token).await.ok()?;
                let mut ticks = 0usize;
                loop {
                    match ws.next().await.ok()? {
                        Frame::Text(f) if is_tick(f) => ticks += 1,
                        Frame::Text(f) if is_type(f, b"live") => return Some((ticks, started.elapsed())),
                        Frame::Close(_) => return None,
                        _ => {}
                    }
                }
            })
        })
        .collect();
    let mut latency = histogram();
    let (mut complete, mut short) = (0, 0);
    for t in tasks {
        match t.await.ok().flatten() {
            Some((ticks, took)) if ticks == behind => {
                complete += 1;
                let _ = latency.record(took.as_micros() as u64);
            }
            _ => short += 1,
        }
    }
    let all = started.elapsed().as_secs_f64();
    report.bench(&cpu);
    let usage1 = server_usage(&args.url).await;
    report.put("clients", json!(clients), clients.to_string());
    report.put("behind", json!(behind), behind.to_string());
    report.put("complete", json!(complete), complete.to_string());
    report.put("incomplete", json!(short), short.to_string());
    report.put("all_resumed_s", json!(all), format!("{all:.3} s"));
    report.latency("resume", &latency);
    report.server(usage0, usage1, all);
}

/// `count` handshakes, `concurrency` at a time: connect → `subscribed`.
pub async fn handshakes(args: &Args, count: usize, concurrency: usize, report: &mut Report) {
    let token = reader_token(args);
    let run = format!("{:08x}", rand::random::<u32>());
    let usage0 = server_usage(&args.url).await;
    let next = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let cpu = BenchCpu::start();
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (url, token, path, next, failures) = (
                args.url.clone(),
                token.clone(),
                format!("/ws/bench.hs.{run}?since=$"),
                next.clone(),
                failures.clone(),
            );
            tokio::spawn(async move {
                let mut h = histogram();
                while (next.fetch_add(1, Ordering::Relaxed) as usize) < count {
                    let began = Instant::now();
                    let subscribed = async {
                        let mut ws = Ws::connect(&url, &path, &token).await.ok()?;
                        loop {
                            match ws.next().await.ok()? {
                                Frame::Text(f) if is_type(f, b"subscribed") => return Some(ws),
                                Frame::Close(_) => return None,
                                _ => {}
                            }
                        }
                    };
                    match subscribed.await {
                        Some(ws) => {
                            let _ = h.record(began.elapsed().as_micros() as u64);
                            ws.close().await;
                        }
                        None => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                h
            })
        })
        .collect();
    let latency = merged(tasks).await;
    let elapsed = started.elapsed().as_secs_f64();
    report.bench(&cpu);
    let usage1 = server_usage(&args.url).await;
    report.count("handshakes", latency.len(), elapsed);
    let failed = failures.load(Ordering::Relaxed);
    report.put("failures", json!(failed), failed.to_string());
    report.latency("handshake_latency", &latency);
    report.server(usage0, usage1, elapsed);
}

/// `sockets` connections each subscribing `per_socket` channels nobody writes to:
/// memory per empty subscription.
pub async fn empty_subscriptions(args: &Args, sockets: usize, per_socket: usize, report: &mut Report) {
    let token = reader_token(args);
    let run = format!("{:08x}", rand::random::<u32>());
    let mut open = Vec::new();
    for _ in 0..sockets {
        match Ws::connect(&args.url, "/ws", &token).await {
            Ok(ws) => open.push(ws),
            Err(e) => eprintln!("tickstream-bench: a client failed to connect: {e}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let usage0 = server_usage(&args.url).await;
    let cpu = BenchCpu::start();
    let started = Instant::now();
    let tasks: Vec<_> = open
        .into_iter()
        .enumerate()
        .map(|(s, mut ws)| {
            let run = run.clone();
            tokio::spawn(async move {
                // The inbound budget is a burst of 20, then 10 messages a second.
                for c in 0..per_socket {
                    if c >= 20 {
                        tokio::time::sleep(Duration::from_millis(105)).await;
                    }
                    let m = json!({"type": "subscribe", "channel": format!("bench.empty.{run}.{s}.{c}"), "since": "$"});
                    ws.send_text(&m.to_string()).await.ok()?;
                }
                let mut live = 0;
                while live < per_socket {
                    match ws.next().await.ok()? {
                        Frame::Text(f) if is_type(f, b"live") => live += 1,
                        Frame::Close(_) => return None,
                        _ => {}
                    }
                }
                Some(ws)
            })
        })
        .collect();
    let mut held = Vec::new();
    for t in tasks {
        if let Ok(Some(ws)) = t.await {
            held.push(ws);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    report.bench(&cpu);
    let usage1 = server_usage(&args.url).await;
    let subscriptions = held.len() * per_socket;
    let per = (usage1.0 - usage0.0) / subscriptions.max(1) as f64;
    report.put(
        "subscriptions",
        json!(subscriptions),
        format!("{subscriptions} on {} sockets", held.len()),
    );
    report.put("rss_per_subscription_bytes", json!(per.round()), format!("{per:.0} B"));
    report.server(usage0, usage1, started.elapsed().as_secs_f64());
}

//! Fan-out: clients subscribed to one or many channels, a producer at a steady rate.
//! Every tick carries its send time; each subscriber checks `seq` as ticks arrive
//! (lost, duplicated, reordered) and records the end-to-end latency.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::http::Http;
use crate::report::{histogram, server_usage, BenchCpu, Report};
use crate::ws::{is_tick, is_type, Field, Frame, Ws};
use crate::{now_us, Args};

/// What one subscriber saw.
struct Seen {
    received: u64,
    lost: u64,
    duplicated: u64,
    reordered: u64,
    latency_us: Histogram<u64>,
}

/// Connects one subscriber and waits for its `live` frame.
pub async fn subscribe(url: &str, path: &str, token: &str) -> Result<Ws, String> {
    let mut ws = Ws::connect(url, path, token).await.map_err(|e| e.to_string())?;
    loop {
        match ws.next().await.map_err(|e| e.to_string())? {
            Frame::Text(t) if is_type(t, b"live") => return Ok(ws),
            Frame::Close(code) => return Err(format!("closed before live ({code:?})")),
            _ => {}
        }
    }
}

/// Connects many subscribers, in waves (not to trip accept backlogs).
pub async fn connect_many(url: &str, token: &str, paths: Vec<String>) -> Vec<Ws> {
    let mut sockets = Vec::with_capacity(paths.len());
    for wave in paths.chunks(250) {
        let tasks: Vec<_> = wave
            .iter()
            .map(|path| {
                let (url, token, path) = (url.to_string(), token.to_string(), path.clone());
                tokio::spawn(async move { subscribe(&url, &path, &token).await })
            })
            .collect();
        for t in tasks {
            match t.await {
                Ok(Ok(ws)) => sockets.push(ws),
                Ok(Err(e)) => eprintln!("tickstream-bench: a client failed to connect: {e}"),
                Err(e) => eprintln!("tickstream-bench: a client task failed: {e}"),
            }
        }
    }
    sockets
}

/// Reads tick frames until `target` (set when the producer finishes) is reached or
/// `stop` is set; checks `seq` continuity as it goes.
async fn subscriber(mut ws: Ws, target: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen {
        received: 0,
        lost: 0,
        duplicated: 0,
        reordered: 0,
        latency_us: histogram(),
    };
    let mut last_seq: Option<u64> = None;
    let mut missing = BTreeSet::new();
    // One periodic timer per subscriber rather than a timeout per read, polled only
    // when every frame already read has been handled.
    let mut check = tokio::time::interval(Duration::from_millis(200));
    let (seq_field, sent_field) = (Field::new(b"\"seq\":"), Field::new(b"\"sent_us\":"));
    'run: loop {
        // Every frame of one read arrived by the time the read returned: one clock
        // read per read, not per frame.
        let now = now_us();
        while let Some(frame) = ws.buffered() {
            let f = match frame {
                Frame::Text(f) if is_tick(f) => f,
                Frame::Close(_) => break 'run,
                _ => continue,
            };
            let (Some(seq), Some(sent)) = (seq_field.number(f), sent_field.number(f)) else {
                continue;
            };
            seen.received += 1;
            let _ = seen.latency_us.record(now.saturating_sub(sent).max(1));
            match last_seq {
                Some(last) if seq == last + 1 => last_seq = Some(seq),
                Some(last) if seq > last => {
                    // Seqs skipped so far: lost unless they turn up late (reordered).
                    missing.extend((last + 1..seq).take(100_000));
                    last_seq = Some(seq);
                }
                Some(_) if missing.remove(&seq) => seen.reordered += 1,
                Some(_) => seen.duplicated += 1,
                None => last_seq = Some(seq),
            }
        }
        let t = target.load(Ordering::Acquire);
        if t > 0 && seen.received >= t || !read_on(&mut ws, &mut check, &stop).await {
            break;
        }
    }
    seen.lost = missing.len() as u64;
    ws.close().await;
    seen
}

/// Waits for more bytes in `ws`'s buffer or the next tick of `check`, whichever
/// comes first (so a reader looks at its target again at least every tick); false
/// when the reader should end: the socket closed, or `stop` is set.
pub async fn read_on(ws: &mut Ws, check: &mut tokio::time::Interval, stop: &AtomicBool) -> bool {
    tokio::select! {
        more = ws.read_more() => matches!(more, Ok(true)),
        _ = check.tick() => !stop.load(Ordering::Acquire),
    }
}

/// Waits for `readers` to finish, setting `stop` (which ends those still reading)
/// after 5 s, however many there are; the results of those that did not fail.
pub async fn drain<T>(readers: Vec<tokio::task::JoinHandle<T>>, stop: &Arc<AtomicBool>) -> Vec<T> {
    let deadline = tokio::spawn({
        let stop = stop.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            stop.store(true, Ordering::Release);
        }
    });
    let mut results = Vec::new();
    for r in readers {
        if let Ok(seen) = r.await {
            results.push(seen);
        }
    }
    deadline.abort();
    results
}

/// Produces `rate` ticks/s spread evenly over `channels` for `duration`, in 10 ms
/// batches; returns how many each channel got. With `stored`, the time Redis stored
/// tick `n` (1-based, in `data.n`; the millisecond of its stream id, in µs) goes to
/// `stored[n]`, for scenarios that need it for ticks they never receive.
pub async fn produce(
    url: &str,
    ingest: &str,
    channels: &[String],
    rate: u64,
    duration: Duration,
    stored: Option<&[AtomicU64]>,
) -> Vec<u64> {
    let mut per_channel = vec![0u64; channels.len()];
    let Ok(mut http) = Http::connect(url).await else {
        return per_channel;
    };
    // Rates below 100/s send a tick every few batches (the carry), not one per batch.
    let per_batch_total = rate as f64 / 100.0;
    let mut carry = 0.0;
    let id = Field::new(b"\"id\":\"");
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut n = 0u64;
    while start.elapsed() < duration {
        tick.tick().await;
        carry += per_batch_total;
        let count = carry.floor() as usize;
        carry -= count as f64;
        if count == 0 {
            continue;
        }
        let first = n;
        let batch: Vec<Value> = (0..count)
            .map(|_| {
                n += 1;
                json!({"channel": channels[(n as usize) % channels.len()], "data": {"sent_us": now_us(), "n": n}})
            })
            .collect();
        let body = serde_json::to_vec(&batch).unwrap_or_default();
        if let Ok((201, answer)) = http.request("POST", "/api/v1/ingest", ingest, &body).await {
            for k in first + 1..=n {
                per_channel[(k as usize) % channels.len()] += 1;
            }
            if let Some(stored) = stored {
                // The results are in the batch's order; an id is `<ms>-<n>`.
                let mut rest = &answer[..];
                for k in first + 1..=n {
                    let Some(at) = id.position(rest) else { break };
                    rest = &rest[at..];
                    if let (Some(ms), Some(slot)) = (crate::ws::digits(rest), stored.get(k as usize)) {
                        slot.store(ms * 1000, Ordering::Relaxed);
                    }
                }
            }
        }
    }
    per_channel
}

pub async fn run(
    args: &Args,
    channels: usize,
    clients: usize,
    rate_per_channel: u64,
    duration: u64,
    report: &mut Report,
) {
    let token = crate::reader_token(args);
    let run = format!("{:08x}", rand::random::<u32>());
    let names: Vec<String> = (0..channels).map(|c| format!("bench.{run}.{c}")).collect();
    let paths: Vec<String> = (0..clients)
        .map(|i| format!("/ws/{}?since=$", names[i % channels]))
        .collect();
    let sockets = connect_many(&args.url, &token, paths).await;
    let connected = sockets.len();
    let usage0 = server_usage(&args.url).await;
    let cpu = BenchCpu::start();
    let targets: Vec<Arc<AtomicU64>> = names.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, ws)| tokio::spawn(subscriber(ws, targets[i % channels].clone(), stop.clone())))
        .collect();
    let started = Instant::now();
    let per_channel = produce(
        &args.url,
        &args.ingest_token,
        &names,
        rate_per_channel * channels as u64,
        Duration::from_secs(duration),
        None,
    )
    .await;
    let produced: u64 = per_channel.iter().sum();
    for (t, n) in targets.iter().zip(&per_channel) {
        t.store((*n).max(1), Ordering::Release);
    }
    // The producer is done; the subscribers get 5 s to drain.
    let results = drain(readers, &stop).await;
    let elapsed = started.elapsed().as_secs_f64();
    report.bench(&cpu);
    let usage1 = server_usage(&args.url).await;
    let mut latency = histogram();
    let (mut received, mut lost, mut dup, mut reord) = (0, 0, 0, 0);
    for s in &results {
        latency.add(&s.latency_us).ok();
        received += s.received;
        lost += s.lost;
        dup += s.duplicated;
        reord += s.reordered;
    }
    let expected: u64 = (0..connected).map(|i| per_channel[i % channels]).sum();
    let missing = expected.saturating_sub(received) + lost;
    report.put("clients", json!(connected), format!("{connected} of {clients}"));
    report.put("channels", json!(channels), channels.to_string());
    report.put("ticks_produced", json!(produced), produced.to_string());
    report.count("deliveries", received, duration as f64);
    report.latency("latency", &latency);
    report.put("lost", json!(missing), missing.to_string());
    report.put("duplicated", json!(dup), dup.to_string());
    report.put("reordered", json!(reord), reord.to_string());
    report.put("elapsed_s", json!(elapsed), format!("{elapsed:.1} s"));
    report.server(usage0, usage1, elapsed);
}

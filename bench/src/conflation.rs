//! Conflation: clients subscribed with a `rate` to one busy channel. Each checks
//! `seq` = previous `seq` + `skipped` + 1 on every frame (continuity), counts its
//! frames a second, and measures how long each stored tick waited before a frame
//! carried it or a newer one: for a frame after `prev`, that is the wait of tick
//! `prev + 1`, the oldest it replaced, from when Redis stored it (the millisecond of
//! its stream id, from the ingest answer, so a wait reads up to 1 ms long) to the
//! frame's arrival. Its `seq` is the producer's count: a fresh channel, one producer.
//!
//! Against the reference server, which does not conflate, the same clients get every
//! tick (`skipped` absent counts as 0): what a fan-out costs without conflation.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

use crate::fanout::{connect_many, drain, produce, read_on};
use crate::report::{histogram, server_usage, BenchCpu, Report};
use crate::ws::{is_tick, Field, Frame, Ws};
use crate::{now_us, Args};

/// What one conflated subscriber saw.
struct Seen {
    frames: u64,
    /// Frames that arrived while the producer ran.
    frames_in_window: u64,
    /// Frames whose `seq` did not follow from the previous one and `skipped`.
    broken: u64,
    /// Per frame: the wait of the oldest tick it carried or replaced.
    covered_us: Histogram<u64>,
}

async fn subscriber(
    mut ws: Ws,
    stored: Arc<Vec<AtomicU64>>,
    target: Arc<AtomicU64>,
    window_end: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Seen {
    let mut seen = Seen {
        frames: 0,
        frames_in_window: 0,
        broken: 0,
        covered_us: histogram(),
    };
    let (seq_field, skipped_field) = (Field::new(b"\"seq\":"), Field::new(b"\"skipped\":"));
    let mut last_seq: Option<u64> = None;
    let mut check = tokio::time::interval(Duration::from_millis(200));
    'run: loop {
        let now = now_us();
        while let Some(frame) = ws.buffered() {
            let f = match frame {
                Frame::Text(f) if is_tick(f) => f,
                Frame::Close(_) => break 'run,
                _ => continue,
            };
            let Some(seq) = seq_field.number(f) else {
                continue;
            };
            seen.frames += 1;
            let end = window_end.load(Ordering::Acquire);
            if end == 0 || now <= end {
                seen.frames_in_window += 1;
            }
            // `null` (or absent, from the reference) reads as no number: 0.
            let skipped = skipped_field.number(f).unwrap_or(0);
            let oldest = match last_seq {
                Some(prev) => {
                    if seq != prev + skipped + 1 {
                        seen.broken += 1;
                    }
                    prev + 1
                }
                None => seq,
            };
            if let Some(at) = stored.get(oldest as usize).map(|s| s.load(Ordering::Relaxed)) {
                if at > 0 {
                    let _ = seen.covered_us.record(now.saturating_sub(at).max(1));
                }
            }
            last_seq = Some(seq);
        }
        let t = target.load(Ordering::Acquire);
        if t > 0 && last_seq >= Some(t) || !read_on(&mut ws, &mut check, &stop).await {
            break;
        }
    }
    ws.close().await;
    seen
}

pub async fn run(args: &Args, clients: usize, rate: u64, frame_rate: u16, duration: u64, report: &mut Report) {
    let token = crate::reader_token(args);
    let channel = format!("bench.conflation.{:08x}", rand::random::<u32>());
    let path = format!("/ws/{channel}?since=$&rate={frame_rate}");
    let sockets = connect_many(&args.url, &token, vec![path; clients]).await;
    let connected = sockets.len();
    let stored: Arc<Vec<AtomicU64>> = Arc::new((0..rate * duration + rate + 2).map(|_| AtomicU64::new(0)).collect());
    let target = Arc::new(AtomicU64::new(0));
    let window_end = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let usage0 = server_usage(&args.url).await;
    let cpu = BenchCpu::start();
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|ws| {
            let (stored, target, window_end, stop) = (stored.clone(), target.clone(), window_end.clone(), stop.clone());
            tokio::spawn(subscriber(ws, stored, target, window_end, stop))
        })
        .collect();
    let started = Instant::now();
    let channels = [channel];
    let produced: u64 = produce(
        &args.url,
        &args.ingest_token,
        &channels,
        rate,
        Duration::from_secs(duration),
        Some(&stored),
    )
    .await
    .iter()
    .sum();
    let window = started.elapsed().as_secs_f64();
    window_end.store(now_us(), Ordering::Release);
    target.store(produced.max(1), Ordering::Release);
    // The last tick is due at most 1/rate after the one before it: 5 s is plenty.
    let results = drain(readers, &stop).await;
    let elapsed = started.elapsed().as_secs_f64();
    report.bench(&cpu);
    let usage1 = server_usage(&args.url).await;
    let mut covered = histogram();
    let (mut frames, mut broken) = (0, 0);
    let mut per_client: Vec<f64> = Vec::with_capacity(results.len());
    for s in &results {
        covered.add(&s.covered_us).ok();
        frames += s.frames;
        broken += s.broken;
        per_client.push(s.frames_in_window as f64 / window);
    }
    per_client.sort_by(f64::total_cmp);
    let least = per_client.first().copied().unwrap_or(0.0);
    let median = per_client.get(per_client.len() / 2).copied().unwrap_or(0.0);
    report.put("clients", json!(connected), format!("{connected} of {clients}"));
    report.put("ticks_produced", json!(produced), produced.to_string());
    report.count("frames", frames, window);
    report.put("frames_per_client_min", json!(least), format!("{least:.2}/s"));
    report.put("frames_per_client_median", json!(median), format!("{median:.2}/s"));
    report.latency("covered", &covered);
    report.put("broken", json!(broken), broken.to_string());
    report.put("elapsed_s", json!(elapsed), format!("{elapsed:.1} s"));
    report.server(usage0, usage1, elapsed);
}

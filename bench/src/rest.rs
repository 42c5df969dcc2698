//! HTTP scenarios: ingest throughput with dedup, and REST history pages in an open
//! loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http::Http;
use crate::report::{histogram, merged, server_usage, BenchCpu, Report};
use crate::{reader_token, Args};

/// HTTP batches as fast as `concurrency` connections allow, some duplicates.
pub async fn ingest(args: &Args, batch: usize, concurrency: usize, duration: u64, dup_ratio: f64, report: &mut Report) {
    let run = format!("{:08x}", rand::random::<u32>());
    let usage0 = server_usage(&args.url).await;
    let cpu = BenchCpu::start();
    let stored = Arc::new(AtomicU64::new(0));
    let duplicates = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            let (url, token, run) = (args.url.clone(), args.ingest_token.clone(), run.clone());
            let (stored, duplicates) = (stored.clone(), duplicates.clone());
            tokio::spawn(async move {
                let mut h = histogram();
                let Ok(mut http) = Http::connect(&url).await else { return h };
                let mut n = 0u64;
                while started.elapsed() < Duration::from_secs(duration) {
                    let dups = (batch as f64 * dup_ratio) as u64;
                    let ticks: Vec<Value> = (0..batch as u64)
                        .map(|i| {
                            n += 1;
                            // The first `dups` ticks of each batch after the first repeat
                            // the key of a stored tick of the previous batch: duplicates
                            // the server must recognise.
                            let key = if n > batch as u64 && i < dups { n - batch as u64 + dups } else { n };
                            json!({"channel": format!("bench.ingest.{run}.{}", key % 16), "value": n, "key": format!("{w}-{key}")})
                        })
                        .collect();
                    let body = serde_json::to_vec(&ticks).unwrap_or_default();
                    let t0 = Instant::now();
                    match http.request("POST", "/api/v1/ingest", &token, &body).await {
                        Ok((201, answer)) => {
                            let _ = h.record(t0.elapsed().as_micros() as u64);
                            let text = String::from_utf8_lossy(&answer);
                            let dups = text.matches("\"duplicate\":true").count() as u64;
                            duplicates.fetch_add(dups, Ordering::Relaxed);
                            stored.fetch_add(batch as u64 - dups, Ordering::Relaxed);
                        }
                        _ => break,
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
    let total = stored.load(Ordering::Relaxed) + duplicates.load(Ordering::Relaxed);
    report.count("ticks", total, elapsed);
    report.put(
        "duplicates",
        json!(duplicates.load(Ordering::Relaxed)),
        duplicates.load(Ordering::Relaxed).to_string(),
    );
    report.latency("batch_latency", &latency);
    report.server(usage0, usage1, elapsed);
}

/// REST pages of `limit` ticks at `rate` requests/s; with `candles`, pages of
/// `limit` candles of that interval instead (the seeded ticks are one second apart by
/// `ts`, so `1s` has 5,000 candles to page through).
pub async fn history(
    args: &Args,
    rate: u64,
    limit: usize,
    duration: u64,
    connections: usize,
    candles: Option<&str>,
    report: &mut Report,
) {
    let token = reader_token(args);
    let run = format!("{:08x}", rand::random::<u32>());
    let channel = format!("bench.history.{run}");
    let Ok(mut http) = Http::connect(&args.url).await else {
        return;
    };
    for b in 0..5 {
        let ticks: Vec<Value> = (0..1000)
            .map(|i| {
                let s = b * 1000 + i;
                // 2026-11-30 from 00:00:00Z, one tick a second.
                let ts = format!("2026-11-30T{:02}:{:02}:{:02}Z", s / 3600, s / 60 % 60, s % 60);
                json!({"channel": channel, "ts": ts, "value": i, "data": {"bid": i, "ask": i + 1, "volume": 1}})
            })
            .collect();
        let _ = http
            .request(
                "POST",
                "/api/v1/ingest",
                &args.ingest_token,
                &serde_json::to_vec(&ticks).unwrap_or_default(),
            )
            .await;
    }
    let usage0 = server_usage(&args.url).await;
    let cpu = BenchCpu::start();
    let path = match candles {
        Some(interval) => format!("/api/v1/channels/{channel}/candles?interval={interval}&limit={limit}"),
        None => format!("/api/v1/channels/{channel}/ticks?limit={limit}"),
    };
    let per_conn = (rate as f64 / connections as f64).max(0.1);
    let failures = Arc::new(AtomicU64::new(0));
    // The size of a page as answered: the reference's fixed page is meant to match.
    let page_bytes = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let (url, token, path, failures) = (args.url.clone(), token.clone(), path.clone(), failures.clone());
            let page_bytes = page_bytes.clone();
            tokio::spawn(async move {
                let mut h = histogram();
                let Ok(mut http) = Http::connect(&url).await else {
                    return h;
                };
                // Open loop: requests are due on a fixed schedule; a slow answer makes
                // the next ones late, and that lateness counts in their latency.
                // Connections are staggered across the period: started together they
                // would send in bursts of `connections` and measure their own queue.
                let period = Duration::from_secs_f64(1.0 / per_conn);
                let mut due = Instant::now() + period.mul_f64(c as f64 / connections as f64);
                while started.elapsed() < Duration::from_secs(duration) {
                    tokio::time::sleep_until(due.into()).await;
                    match http.request("GET", &path, &token, b"").await {
                        Ok((200, body)) => {
                            let _ = h.record(due.elapsed().as_micros() as u64);
                            page_bytes.store(body.len() as u64, Ordering::Relaxed);
                        }
                        _ => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    due += period;
                }
                h
            })
        })
        .collect();
    let latency = merged(tasks).await;
    let elapsed = started.elapsed().as_secs_f64();
    report.bench(&cpu);
    let usage1 = server_usage(&args.url).await;
    report.count("requests", latency.len(), elapsed);
    report.put(
        "failures",
        json!(failures.load(Ordering::Relaxed)),
        failures.load(Ordering::Relaxed).to_string(),
    );
    report.put("page_ticks", json!(limit), limit.to_string());
    let bytes = page_bytes.load(Ordering::Relaxed);
    report.put("page_bytes", json!(bytes), format!("{bytes} B"));
    report.latency("page_latency", &latency);
    report.server(usage0, usage1, elapsed);
}

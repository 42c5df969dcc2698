//! tickstream-bench: the project's load generator (docs/BENCHMARKS.md).
//!
//! Honest by construction: every tick carries its send time and is checked on
//! arrival for its `seq` (lost, duplicated, reordered), latency is end to end
//! (producer's clock before the POST → client's clock at the frame, one machine),
//! recorded in an HDR histogram, and the server's RSS and CPU seconds come from its
//! own `/metrics/system`. Every scenario is bounded in time and count, and talks to
//! one server URL (loopback). Prints a human table and one JSON line per run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(
    name = "tickstream-bench",
    about = "Load generator for tickstream (see docs/BENCHMARKS.md)"
)]
struct Args {
    /// The server under test.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// HS256 secret to mint reader tokens with (or give --token).
    #[arg(long, env = "TICKSTREAM_JWT_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// A reader token with channels ["*"] (or ["bench.*"]).
    #[arg(long)]
    token: Option<String>,
    /// The server's static ingest token.
    #[arg(long, env = "TICKSTREAM_INGEST_TOKEN", hide_env_values = true)]
    ingest_token: String,
    /// Print only the JSON line.
    #[arg(long)]
    json_only: bool,
    /// Rate-limit tier of the minted reader token: `internal` (never limited, no
    /// bucket check) measures the server alone; `free` and the others measure it with
    /// a token-bucket check per request (raise the server's limits to match the load).
    #[arg(long, default_value = "internal")]
    tier: String,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Clone, Debug)]
enum Scenario {
    /// One channel, many clients, a steady tick rate.
    Fanout {
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        #[arg(long, default_value_t = 500)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        duration: u64,
    },
    /// Many channels, clients spread over them; `rate` is per channel.
    ManyChannels {
        #[arg(long, default_value_t = 100)]
        channels: usize,
        #[arg(long, default_value_t = 2000)]
        clients: usize,
        #[arg(long, default_value_t = 5)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        duration: u64,
    },
    /// N subscribed sockets and no traffic: memory per socket.
    Idle {
        #[arg(long, default_value_t = 20000)]
        sockets: usize,
        #[arg(long, default_value_t = 5)]
        hold: u64,
    },
    /// HTTP batches as fast as `concurrency` connections allow, some duplicates.
    Ingest {
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Fraction of ticks that repeat an earlier key.
        #[arg(long, default_value_t = 0.1)]
        duplicates: f64,
    },
    /// N clients reconnect at once, each `behind` ticks behind.
    ResumeStorm {
        #[arg(long, default_value_t = 5000)]
        clients: usize,
        #[arg(long, default_value_t = 1000)]
        behind: usize,
    },
    /// `count` WebSocket handshakes, `concurrency` at a time: the time from connect to
    /// the `subscribed` frame.
    Handshakes {
        #[arg(long, default_value_t = 2000)]
        count: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// `sockets` connections each subscribing `per_socket` channels nobody writes to:
    /// memory per empty subscription.
    EmptySubscriptions {
        #[arg(long, default_value_t = 100)]
        sockets: usize,
        #[arg(long, default_value_t = 256)]
        per_socket: usize,
    },
    /// REST pages of `limit` ticks at `rate` requests/s.
    History {
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[arg(long, default_value_t = 10)]
        duration: u64,
        #[arg(long, default_value_t = 8)]
        connections: usize,
    },
}

/// Reader token: given, or minted from the secret.
fn reader_token(args: &Args) -> String {
    if let Some(t) = &args.token {
        return t.clone();
    }
    let secret = args.secret.as_deref().unwrap_or_else(|| {
        eprintln!("tickstream-bench: give --token or --secret (TICKSTREAM_JWT_SECRET)");
        std::process::exit(2);
    });
    let exp = tickstream::clock::unix_now() + 3600;
    let claims = json!({"sub": "bench", "channels": ["*"], "exp": exp, "tier": args.tier});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_else(|e| {
        eprintln!("tickstream-bench: cannot sign a token: {e}");
        std::process::exit(2);
    })
}

// ---- a minimal keep-alive HTTP/1.1 client (the bench must not be the bottleneck,
// and the server crate has no HTTP client dependency) ------------------------------

struct Http {
    io: BufReader<TcpStream>,
    host: String,
}

impl Http {
    async fn connect(url: &str) -> std::io::Result<Http> {
        let host = url.trim_start_matches("http://").trim_end_matches('/').to_string();
        let tcp = TcpStream::connect(&host).await?;
        tcp.set_nodelay(true)?;
        Ok(Http {
            io: BufReader::new(tcp),
            host,
        })
    }

    async fn request(&mut self, method: &str, path: &str, auth: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        let stream = self.io.get_mut();
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut line = String::new();
        self.io.read_line(&mut line).await?;
        let status: u16 = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut length = 0usize;
        loop {
            line.clear();
            self.io.read_line(&mut line).await?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        self.io.read_exact(&mut body).await?;
        Ok((status, body))
    }
}

/// Server RSS (bytes) and CPU seconds, from its /metrics/system.
async fn server_usage(url: &str) -> (f64, f64) {
    let Ok(mut http) = Http::connect(url).await else {
        return (0.0, 0.0);
    };
    let Ok((_, body)) = http.request("GET", "/metrics/system", "", b"").await else {
        return (0.0, 0.0);
    };
    let text = String::from_utf8_lossy(&body);
    let metric = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        metric("process_resident_memory_bytes "),
        metric("process_cpu_seconds_total "),
    )
}

fn ws_url(url: &str, path: &str) -> String {
    format!(
        "ws://{}{}",
        url.trim_start_matches("http://").trim_end_matches('/'),
        path
    )
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn connect_ws(url: &str, path: &str, token: &str) -> Result<Ws, String> {
    let mut req = ws_url(url, path).into_client_request().map_err(|e| e.to_string())?;
    let auth = format!("Bearer {token}").parse().map_err(|_| "bad token".to_string())?;
    req.headers_mut().insert("authorization", auth);
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

/// `"name":<digits>` inside a frame, without a full JSON parse per frame (the bench
/// must keep up with hundreds of thousands of frames a second on one core).
fn number_after(frame: &str, key: &str) -> Option<u64> {
    let start = frame.find(key)? + key.len();
    let digits: &str = &frame[start..];
    let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    digits[..end].parse().ok()
}

fn now_us() -> u64 {
    tickstream::clock::now_us().max(0) as u64
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).unwrap_or_else(|_| unreachable!("valid bounds"))
}

/// What one subscriber saw.
struct Seen {
    received: u64,
    lost: u64,
    duplicated: u64,
    reordered: u64,
    latency_us: Histogram<u64>,
}

/// Reads tick frames until `target` (set when the producer finishes) is reached or
/// the deadline passes; checks `seq` continuity as it goes.
async fn subscriber(mut ws: Ws, target: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen {
        received: 0,
        lost: 0,
        duplicated: 0,
        reordered: 0,
        latency_us: new_histogram(),
    };
    let mut last_seq: Option<u64> = None;
    let mut missing = std::collections::BTreeSet::new();
    // One periodic timer per subscriber rather than a timeout per read (which would
    // register a timer per frame: 500,000 a second in the fan-out scenario).
    let mut check = tokio::time::interval(Duration::from_millis(200));
    loop {
        let t = target.load(Ordering::Acquire);
        if t > 0 && seen.received >= t {
            break;
        }
        let msg = tokio::select! {
            next = ws.next() => match next {
                Some(Ok(m)) => m,
                _ => break,
            },
            _ = check.tick() => {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                continue;
            }
        };
        let Message::Text(text) = msg else { continue };
        let frame = text.as_str();
        if !frame.starts_with("{\"type\":\"tick\"") {
            continue;
        }
        let (Some(seq), Some(sent)) = (number_after(frame, "\"seq\":"), number_after(frame, "\"sent_us\":")) else {
            continue;
        };
        seen.received += 1;
        let _ = seen.latency_us.record(now_us().saturating_sub(sent).max(1));
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
    seen.lost = missing.len() as u64;
    let _ = ws.close(None).await;
    seen
}

#[derive(Default)]
struct Report {
    fields: serde_json::Map<String, Value>,
    rows: Vec<(String, String)>,
}

impl Report {
    fn put(&mut self, key: &str, value: Value, shown: String) {
        self.fields.insert(key.into(), value);
        self.rows.push((key.into(), shown));
    }

    fn latency(&mut self, prefix: &str, h: &Histogram<u64>) {
        for (name, q) in [("p50", 0.5), ("p99", 0.99), ("p999", 0.999)] {
            let ms = h.value_at_quantile(q) as f64 / 1000.0;
            self.put(&format!("{prefix}_{name}_ms"), json!(ms), format!("{ms:.2} ms"));
        }
        let max = h.max() as f64 / 1000.0;
        self.put(&format!("{prefix}_max_ms"), json!(max), format!("{max:.2} ms"));
    }
}

/// Connects `n` subscribers (in waves, to not trip accept backlogs) and waits for
/// each one's `live` frame.
async fn connect_many(url: &str, token: &str, paths: Vec<String>) -> Vec<Ws> {
    let mut sockets = Vec::with_capacity(paths.len());
    for wave in paths.chunks(250) {
        let tasks: Vec<_> = wave
            .iter()
            .map(|path| {
                let (url, token, path) = (url.to_string(), token.to_string(), path.clone());
                tokio::spawn(async move {
                    let mut ws = connect_ws(&url, &path, &token).await?;
                    while let Some(Ok(m)) = ws.next().await {
                        if let Message::Text(t) = m {
                            if t.as_str().contains("\"type\":\"live\"") {
                                return Ok::<Ws, String>(ws);
                            }
                        }
                    }
                    Err("closed before live".to_string())
                })
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

/// Produces `rate` ticks/s spread evenly over `channels` for `duration`, in 10 ms
/// batches; returns how many each channel got.
async fn produce(url: &str, ingest: &str, channels: &[String], rate: u64, duration: Duration) -> Vec<u64> {
    let mut per_channel = vec![0u64; channels.len()];
    let Ok(mut http) = Http::connect(url).await else {
        return per_channel;
    };
    // Rates below 100/s send a tick every few batches (the carry), not one per batch.
    let per_batch_total = rate as f64 / 100.0;
    let mut carry = 0.0;
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
        if let Ok((201, _)) = http.request("POST", "/api/v1/ingest", ingest, &body).await {
            for k in first + 1..=n {
                per_channel[(k as usize) % channels.len()] += 1;
            }
        }
    }
    per_channel
}

async fn fanout(
    args: &Args,
    channels: usize,
    clients: usize,
    rate_per_channel: u64,
    duration: u64,
    report: &mut Report,
) {
    let token = reader_token(args);
    let run = format!("{:08x}", rand::random::<u32>());
    let names: Vec<String> = (0..channels).map(|c| format!("bench.{run}.{c}")).collect();
    let paths: Vec<String> = (0..clients)
        .map(|i| format!("/ws/{}?since=$", names[i % channels]))
        .collect();
    let sockets = connect_many(&args.url, &token, paths).await;
    let connected = sockets.len();
    let (rss0, cpu0) = server_usage(&args.url).await;
    let targets: Vec<Arc<AtomicU64>> = names.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, ws)| tokio::spawn(subscriber(ws, targets[i % channels].clone(), stop.clone())))
        .collect();
    let started = Instant::now();
    let total_rate = rate_per_channel * channels as u64;
    let per_channel = produce(
        &args.url,
        &args.ingest_token,
        &names,
        total_rate,
        Duration::from_secs(duration),
    )
    .await;
    let produced: u64 = per_channel.iter().sum();
    for (t, n) in targets.iter().zip(&per_channel) {
        t.store((*n).max(1), Ordering::Release);
    }
    let drain_deadline = tokio::time::sleep(Duration::from_secs(5));
    tokio::pin!(drain_deadline);
    let mut results = Vec::new();
    let mut pending = readers;
    loop {
        tokio::select! {
            _ = &mut drain_deadline => { stop.store(true, Ordering::Release); }
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        let (done, rest): (Vec<_>, Vec<_>) = pending.into_iter().partition(|h| h.is_finished());
        for h in done {
            if let Ok(seen) = h.await {
                results.push(seen);
            }
        }
        pending = rest;
        if pending.is_empty() {
            break;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (rss1, cpu1) = server_usage(&args.url).await;
    let mut latency = new_histogram();
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
    report.put("deliveries", json!(received), received.to_string());
    let rate = received as f64 / duration as f64;
    report.put("deliveries_per_s", json!(rate.round()), format!("{rate:.0}/s"));
    report.latency("latency", &latency);
    report.put("lost", json!(missing), missing.to_string());
    report.put("duplicated", json!(dup), dup.to_string());
    report.put("reordered", json!(reord), reord.to_string());
    report.put("elapsed_s", json!(elapsed), format!("{elapsed:.1} s"));
    usage(report, (rss0, cpu0), (rss1, cpu1));
}

fn usage(report: &mut Report, before: (f64, f64), after: (f64, f64)) {
    let mib = |b: f64| b / 1048576.0;
    report.put(
        "server_rss_mib",
        json!(mib(after.0)),
        format!("{:.1} MiB (was {:.1})", mib(after.0), mib(before.0)),
    );
    let cpu = after.1 - before.1;
    report.put("server_cpu_s", json!(cpu), format!("{cpu:.2} s"));
}

async fn idle(args: &Args, sockets: usize, hold: u64, report: &mut Report) {
    let token = reader_token(args);
    let (rss0, cpu0) = server_usage(&args.url).await;
    let run = format!("{:08x}", rand::random::<u32>());
    let paths: Vec<String> = (0..sockets)
        .map(|i| format!("/ws/bench.idle.{run}.{}?since=$", i % 100))
        .collect();
    let open = connect_many(&args.url, &token, paths).await;
    tokio::time::sleep(Duration::from_secs(hold)).await;
    let (rss1, cpu1) = server_usage(&args.url).await;
    let per = (rss1 - rss0) / open.len().max(1) as f64 / 1024.0;
    report.put("sockets", json!(open.len()), format!("{} of {sockets}", open.len()));
    report.put("rss_per_socket_kib", json!(per), format!("{per:.2} KiB"));
    usage(report, (rss0, cpu0), (rss1, cpu1));
    drop(open);
}

async fn ingest(args: &Args, batch: usize, concurrency: usize, duration: u64, dup_ratio: f64, report: &mut Report) {
    let run = format!("{:08x}", rand::random::<u32>());
    let (rss0, cpu0) = server_usage(&args.url).await;
    let stored = Arc::new(AtomicU64::new(0));
    let duplicates = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut latency = new_histogram();
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            let (url, token, run) = (args.url.clone(), args.ingest_token.clone(), run.clone());
            let (stored, duplicates) = (stored.clone(), duplicates.clone());
            tokio::spawn(async move {
                let mut h = new_histogram();
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
    for t in tasks {
        if let Ok(h) = t.await {
            latency.add(&h).ok();
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (rss1, cpu1) = server_usage(&args.url).await;
    let total = stored.load(Ordering::Relaxed) + duplicates.load(Ordering::Relaxed);
    report.put("ticks", json!(total), total.to_string());
    report.put(
        "ticks_per_s",
        json!((total as f64 / elapsed).round()),
        format!("{:.0}/s", total as f64 / elapsed),
    );
    report.put(
        "duplicates",
        json!(duplicates.load(Ordering::Relaxed)),
        duplicates.load(Ordering::Relaxed).to_string(),
    );
    report.latency("batch_latency", &latency);
    usage(report, (rss0, cpu0), (rss1, cpu1));
}

async fn resume_storm(args: &Args, clients: usize, behind: usize, report: &mut Report) {
    let token = reader_token(args);
    let run = format!("{:08x}", rand::random::<u32>());
    let channel = format!("bench.storm.{run}");
    let Ok(mut http) = Http::connect(&args.url).await else {
        return;
    };
    let mut ids = Vec::new();
    for chunk in (0..behind + 1).collect::<Vec<_>>().chunks(1000) {
        let ticks: Vec<Value> = chunk
            .iter()
            .map(|i| json!({"channel": channel, "value": i, "data": {"sent_us": 0}}))
            .collect();
        let body = serde_json::to_vec(&ticks).unwrap_or_default();
        if let Ok((201, answer)) = http.request("POST", "/api/v1/ingest", &args.ingest_token, &body).await {
            let v: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
            for r in v["results"].as_array().into_iter().flatten() {
                ids.push(r["id"].as_str().unwrap_or_default().to_string());
            }
        }
    }
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
    let (rss0, cpu0) = server_usage(&args.url).await;
    let started = Instant::now();
    let mut latency = new_histogram();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (url, token, path) = (args.url.clone(), token.clone(), path.clone());
            tokio::spawn(async move {
                let mut ws = connect_ws(&url, &path, &token).await.ok()?;
                let mut ticks = 0usize;
                while let Some(Ok(m)) = ws.next().await {
                    if let Message::Text(t) = m {
                        let f = t.as_str();
                        if f.starts_with("{\"type\":\"tick\"") {
                            ticks += 1;
                        } else if f.contains("\"type\":\"live\"") {
                            return Some((ticks, started.elapsed()));
                        }
                    }
                }
                None
            })
        })
        .collect();
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
    let (rss1, cpu1) = server_usage(&args.url).await;
    report.put("clients", json!(clients), clients.to_string());
    report.put("behind", json!(behind), behind.to_string());
    report.put("complete", json!(complete), complete.to_string());
    report.put("incomplete", json!(short), short.to_string());
    report.put("all_resumed_s", json!(all), format!("{all:.3} s"));
    report.latency("resume", &latency);
    usage(report, (rss0, cpu0), (rss1, cpu1));
}

async fn history(args: &Args, rate: u64, limit: usize, duration: u64, connections: usize, report: &mut Report) {
    let token = reader_token(args);
    let run = format!("{:08x}", rand::random::<u32>());
    let channel = format!("bench.history.{run}");
    let Ok(mut http) = Http::connect(&args.url).await else {
        return;
    };
    for _ in 0..5 {
        let ticks: Vec<Value> = (0..1000)
            .map(|i| json!({"channel": channel, "value": i, "data": {"bid": i, "ask": i + 1}}))
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
    let (rss0, cpu0) = server_usage(&args.url).await;
    let path = format!("/api/v1/channels/{channel}/ticks?limit={limit}");
    let per_conn = (rate as f64 / connections as f64).max(0.1);
    let failures = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let (url, token, path, failures) = (args.url.clone(), token.clone(), path.clone(), failures.clone());
            tokio::spawn(async move {
                let mut h = new_histogram();
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
                        Ok((200, _)) => {
                            let _ = h.record(due.elapsed().as_micros() as u64);
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
    let mut latency = new_histogram();
    for t in tasks {
        if let Ok(h) = t.await {
            latency.add(&h).ok();
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (rss1, cpu1) = server_usage(&args.url).await;
    report.put("requests", json!(latency.len()), latency.len().to_string());
    report.put(
        "requests_per_s",
        json!((latency.len() as f64 / elapsed).round()),
        format!("{:.0}/s", latency.len() as f64 / elapsed),
    );
    report.put(
        "failures",
        json!(failures.load(Ordering::Relaxed)),
        failures.load(Ordering::Relaxed).to_string(),
    );
    report.put("page_ticks", json!(limit), limit.to_string());
    report.latency("page_latency", &latency);
    usage(report, (rss0, cpu0), (rss1, cpu1));
}

async fn handshakes(args: &Args, count: usize, concurrency: usize, report: &mut Report) {
    let token = reader_token(args);
    let run = format!("{:08x}", rand::random::<u32>());
    let (rss0, cpu0) = server_usage(&args.url).await;
    let next = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (url, token, run, next, failures) = (
                args.url.clone(),
                token.clone(),
                run.clone(),
                next.clone(),
                failures.clone(),
            );
            tokio::spawn(async move {
                let mut h = new_histogram();
                while (next.fetch_add(1, Ordering::Relaxed) as usize) < count {
                    let began = Instant::now();
                    let path = format!("/ws/bench.hs.{run}?since=$");
                    let subscribed = async {
                        let mut ws = connect_ws(&url, &path, &token).await.ok()?;
                        while let Some(Ok(m)) = ws.next().await {
                            if let Message::Text(t) = m {
                                if t.as_str().contains("\"type\":\"subscribed\"") {
                                    return Some(ws);
                                }
                            }
                        }
                        None
                    };
                    match subscribed.await {
                        Some(mut ws) => {
                            let _ = h.record(began.elapsed().as_micros() as u64);
                            let _ = ws.close(None).await;
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
    let mut latency = new_histogram();
    for t in tasks {
        if let Ok(h) = t.await {
            latency.add(&h).ok();
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (rss1, cpu1) = server_usage(&args.url).await;
    report.put("handshakes", json!(latency.len()), latency.len().to_string());
    report.put(
        "handshakes_per_s",
        json!((latency.len() as f64 / elapsed).round()),
        format!("{:.0}/s", latency.len() as f64 / elapsed),
    );
    report.put(
        "failures",
        json!(failures.load(Ordering::Relaxed)),
        failures.load(Ordering::Relaxed).to_string(),
    );
    report.latency("handshake_latency", &latency);
    usage(report, (rss0, cpu0), (rss1, cpu1));
}

async fn empty_subscriptions(args: &Args, sockets: usize, per_socket: usize, report: &mut Report) {
    let token = reader_token(args);
    let run = format!("{:08x}", rand::random::<u32>());
    let mut open = Vec::new();
    for _ in 0..sockets {
        match connect_ws(&args.url, "/ws", &token).await {
            Ok(ws) => open.push(ws),
            Err(e) => eprintln!("tickstream-bench: a client failed to connect: {e}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss0, cpu0) = server_usage(&args.url).await;
    let tasks: Vec<_> = open
        .into_iter()
        .enumerate()
        .map(|(s, mut ws)| {
            let run = run.clone();
            tokio::spawn(async move {
                use futures_util::SinkExt;
                // The inbound budget is a burst of 20, then 10 messages a second.
                for c in 0..per_socket {
                    if c >= 20 {
                        tokio::time::sleep(Duration::from_millis(105)).await;
                    }
                    let m = json!({"type": "subscribe", "channel": format!("bench.empty.{run}.{s}.{c}"), "since": "$"});
                    if ws.send(Message::Text(m.to_string().into())).await.is_err() {
                        return None;
                    }
                }
                let mut live = 0;
                while live < per_socket {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) if t.as_str().contains("\"type\":\"live\"") => live += 1,
                        Some(Ok(_)) => {}
                        _ => return None,
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
    let (rss1, cpu1) = server_usage(&args.url).await;
    let subscriptions = held.len() * per_socket;
    let per = (rss1 - rss0) / subscriptions.max(1) as f64;
    report.put(
        "subscriptions",
        json!(subscriptions),
        format!("{subscriptions} on {} sockets", held.len()),
    );
    report.put("rss_per_subscription_bytes", json!(per.round()), format!("{per:.0} B"));
    usage(report, (rss0, cpu0), (rss1, cpu1));
    drop(held);
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut report = Report::default();
    let (name, params) = match args.scenario.clone() {
        Scenario::Fanout {
            clients,
            rate,
            duration,
        } => {
            fanout(&args, 1, clients, rate, duration, &mut report).await;
            (
                "fanout",
                json!({"clients": clients, "rate": rate, "duration_s": duration}),
            )
        }
        Scenario::ManyChannels {
            channels,
            clients,
            rate,
            duration,
        } => {
            fanout(&args, channels, clients, rate, duration, &mut report).await;
            (
                "many-channels",
                json!({"channels": channels, "clients": clients, "rate_per_channel": rate, "duration_s": duration}),
            )
        }
        Scenario::Idle { sockets, hold } => {
            idle(&args, sockets, hold, &mut report).await;
            ("idle", json!({"sockets": sockets, "hold_s": hold}))
        }
        Scenario::Ingest {
            batch,
            concurrency,
            duration,
            duplicates,
        } => {
            ingest(&args, batch, concurrency, duration, duplicates, &mut report).await;
            (
                "ingest",
                json!({"batch": batch, "concurrency": concurrency, "duration_s": duration, "duplicates": duplicates}),
            )
        }
        Scenario::ResumeStorm { clients, behind } => {
            resume_storm(&args, clients, behind, &mut report).await;
            ("resume-storm", json!({"clients": clients, "behind": behind}))
        }
        Scenario::Handshakes { count, concurrency } => {
            handshakes(&args, count, concurrency, &mut report).await;
            ("handshakes", json!({"count": count, "concurrency": concurrency}))
        }
        Scenario::EmptySubscriptions { sockets, per_socket } => {
            empty_subscriptions(&args, sockets, per_socket, &mut report).await;
            (
                "empty-subscriptions",
                json!({"sockets": sockets, "per_socket": per_socket}),
            )
        }
        Scenario::History {
            rate,
            limit,
            duration,
            connections,
        } => {
            history(&args, rate, limit, duration, connections, &mut report).await;
            (
                "history",
                json!({"rate": rate, "limit": limit, "duration_s": duration, "connections": connections}),
            )
        }
    };
    if !args.json_only {
        println!("tickstream-bench {name} {params}");
        for (k, v) in &report.rows {
            println!("  {k:<24} {v}");
        }
    }
    let mut line = serde_json::Map::new();
    line.insert("scenario".into(), json!(name));
    line.insert("params".into(), params);
    line.extend(report.fields);
    println!("{}", Value::Object(line));
}

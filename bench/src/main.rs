//! tickstream-bench: the project's load generator (docs/BENCHMARKS.md), and the
//! do-nothing reference server its figures are measured beside.
//!
//! Honest by construction: every tick carries its send time and is checked on
//! arrival for its `seq` (lost, duplicated, reordered); latency is end to end
//! (producer's clock before the POST → client's clock at the frame, one machine); the
//! server's RSS and CPU come from its own `/metrics/system`; and the bench reports its
//! own CPU, flagging a run where it used more than 90% of its core, where the figure
//! may be the bench's rather than the server's. Frames are read in place (`ws.rs`),
//! so the bench costs far less per delivery than the server it measures.
//!
//! - [`ws`], [`http`]: the clients.
//! - [`fanout`], [`conflation`], [`sessions`], [`rest`]: the scenarios.
//! - [`reference`]: the reference server.
//! - [`report`]: the table, the JSON line, CPU accounting.

mod conflation;
mod fanout;
mod http;
mod reference;
mod report;
mod rest;
mod sessions;
mod ws;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};

use report::Report;

/// Unix microseconds (the bench's clock: one machine, so the same as the server's).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[derive(Parser)]
#[command(
    name = "tickstream-bench",
    about = "Load generator for tickstream (see docs/BENCHMARKS.md)"
)]
pub struct Args {
    /// The server under test.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// HS256 secret to mint reader tokens with (or give --token).
    #[arg(long, env = "TICKSTREAM_JWT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// A reader token with channels ["*"] (or ["bench.*"]).
    #[arg(long)]
    pub token: Option<String>,
    /// The server's static ingest token.
    #[arg(long, env = "TICKSTREAM_INGEST_TOKEN", hide_env_values = true)]
    pub ingest_token: String,
    /// Print only the JSON line.
    #[arg(long)]
    pub json_only: bool,
    /// Rate-limit tier of the minted reader token: `internal` (never limited, no
    /// bucket check) measures the server alone; `free` and the others measure it with
    /// a token-bucket check per request (raise the server's limits to match the load).
    #[arg(long, default_value = "internal")]
    pub tier: String,
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
    /// One busy channel, clients subscribed with a `rate` (conflation): frames per
    /// client, continuity by `skipped`, how long each stored tick waited.
    Conflation {
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Ticks a second into the channel.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Each subscription's `rate`: frames a second.
        #[arg(long, default_value_t = 10)]
        frame_rate: u16,
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
    /// Serve as the reference: a fan-out server that does nothing else (run it where
    /// the server under test would run, and point the other scenarios at it).
    Reference {
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: String,
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
        /// Page candles of this interval (`1s`…`1d`) instead of ticks.
        #[arg(long)]
        candles: Option<String>,
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
    let exp = now_us() / 1_000_000 + 3600;
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

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let mut report = Report::default();
    let (name, params) = match args.scenario.clone() {
        Scenario::Reference { listen } => {
            if let Err(e) = reference::serve(&listen).await {
                eprintln!("tickstream-bench reference: {e}");
                std::process::exit(1);
            }
            return;
        }
        Scenario::Fanout {
            clients,
            rate,
            duration,
        } => {
            fanout::run(&args, 1, clients, rate, duration, &mut report).await;
            (
                "fanout",
                json!({"clients": clients, "rate": rate, "duration_s": duration}),
            )
        }
        Scenario::Conflation {
            clients,
            rate,
            frame_rate,
            duration,
        } => {
            conflation::run(&args, clients, rate, frame_rate, duration, &mut report).await;
            (
                "conflation",
                json!({"clients": clients, "rate": rate, "frame_rate": frame_rate, "duration_s": duration}),
            )
        }
        Scenario::ManyChannels {
            channels,
            clients,
            rate,
            duration,
        } => {
            fanout::run(&args, channels, clients, rate, duration, &mut report).await;
            (
                "many-channels",
                json!({"channels": channels, "clients": clients, "rate_per_channel": rate, "duration_s": duration}),
            )
        }
        Scenario::Idle { sockets, hold } => {
            sessions::idle(&args, sockets, hold, &mut report).await;
            ("idle", json!({"sockets": sockets, "hold_s": hold}))
        }
        Scenario::Ingest {
            batch,
            concurrency,
            duration,
            duplicates,
        } => {
            rest::ingest(&args, batch, concurrency, duration, duplicates, &mut report).await;
            (
                "ingest",
                json!({"batch": batch, "concurrency": concurrency, "duration_s": duration, "duplicates": duplicates}),
            )
        }
        Scenario::ResumeStorm { clients, behind } => {
            sessions::resume_storm(&args, clients, behind, &mut report).await;
            ("resume-storm", json!({"clients": clients, "behind": behind}))
        }
        Scenario::Handshakes { count, concurrency } => {
            sessions::handshakes(&args, count, concurrency, &mut report).await;
            ("handshakes", json!({"count": count, "concurrency": concurrency}))
        }
        Scenario::EmptySubscriptions { sockets, per_socket } => {
            sessions::empty_subscriptions(&args, sockets, per_socket, &mut report).await;
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
            candles,
        } => {
            rest::history(
                &args,
                rate,
                limit,
                duration,
                connections,
                candles.as_deref(),
                &mut report,
            )
            .await;
            (
                "history",
                json!({"rate": rate, "limit": limit, "duration_s": duration, "connections": connections, "candles": candles}),
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

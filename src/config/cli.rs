//! The command line: a flag per environment variable (clap reads every value as a
//! string; `config/mod.rs` validates them), `serve` (the default) and the
//! `candles rebuild` command.

use std::path::PathBuf;

// Boolish: a flag's variable may say 1/0, true/false, yes/no or on/off.
use clap::builder::BoolishValueParser;
use clap::{Parser, Subcommand};

/// Command-line flags, each backed by its environment variable. No `Debug`: it holds
/// secrets, and nothing needs to print it.
#[derive(Clone, Parser)]
#[command(
    name = "tickstream",
    version,
    about = "WebSocket fan-out server for ticks, backed by Redis streams"
)]
pub struct Cli {
    /// Address to listen on.
    #[arg(long, env = "TICKSTREAM_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// `redis://[user:password@]host:port` or `rediss://` (TLS) for the Redis engine,
    /// `redis+cluster://[user:password@]h1:p1,h2:p2` or `rediss+cluster://` for a
    /// Redis Cluster; unset runs the in-memory engine.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Replicas an ingest waits for (Redis WAIT, 1 s, else 503) before it answers
    /// 201, so acknowledged ticks survive a failover; 0: do not wait.
    #[arg(long, env = "TICKSTREAM_REDIS_WAIT", default_value = "0")]
    pub redis_wait: String,
    /// PEM CA certificate(s) for `rediss://` (default: the system trust store).
    #[arg(long, env = "TICKSTREAM_REDIS_TLS_CA")]
    pub redis_tls_ca: Option<PathBuf>,
    /// PEM client certificate for mutual TLS with Redis (with the key below).
    #[arg(long, env = "TICKSTREAM_REDIS_TLS_CERT")]
    pub redis_tls_cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[arg(long, env = "TICKSTREAM_REDIS_TLS_KEY")]
    pub redis_tls_key: Option<PathBuf>,
    /// Partition count; fixed for the life of a deployment.
    #[arg(long, env = "TICKSTREAM_PARTITIONS", default_value = "16")]
    pub partitions: String,
    /// Approximate cap of each channel's stream (XADD MAXLEN ~).
    #[arg(long, env = "TICKSTREAM_STREAM_MAXLEN", default_value = "10000")]
    pub stream_maxlen: String,
    /// How long an event id is remembered for deduplication (e.g. 24h, 30m, 90s).
    #[arg(long, env = "TICKSTREAM_DEDUP_WINDOW", default_value = "24h")]
    pub dedup_window: String,
    /// Ticks replayed when a subscriber gives no `since`.
    #[arg(long, env = "TICKSTREAM_DEFAULT_REPLAY", default_value = "100")]
    pub default_replay: String,
    /// MiB of recent history a node keeps in memory for REST pages (0: none).
    #[arg(long, env = "TICKSTREAM_HISTORY_CACHE", default_value = "64")]
    pub history_cache: String,
    /// HS256 secret for JWTs.
    #[arg(long, env = "TICKSTREAM_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Path of a PEM public key for RS256/ES256 JWTs.
    #[arg(long, env = "TICKSTREAM_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// When set, a JWT's `aud` must contain it.
    #[arg(long, env = "TICKSTREAM_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// When set, a JWT's `iss` must equal it.
    #[arg(long, env = "TICKSTREAM_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Secret for HMAC-signed handshakes.
    #[arg(long, env = "TICKSTREAM_HMAC_SECRET", hide_env_values = true)]
    pub hmac_secret: Option<String>,
    /// Channel patterns granted to HMAC-signed clients.
    #[arg(long, env = "TICKSTREAM_HMAC_CHANNELS", default_value = "*")]
    pub hmac_channels: String,
    /// Static bearer token for producers.
    #[arg(long, env = "TICKSTREAM_INGEST_TOKEN", hide_env_values = true)]
    pub ingest_token: Option<String>,
    /// Comma list of allowed WebSocket origins (`https://app.example.com`, `https://*.example.com`).
    #[arg(long, env = "TICKSTREAM_ALLOWED_ORIGINS", default_value = "")]
    pub allowed_origins: String,
    /// Rate limits, `<n>/<s|m|h>[:<burst>]` or `off` (defaults in docs/OPERATIONS.md).
    #[arg(long, env = "TICKSTREAM_RATE_FREE_WS")]
    pub rate_free_ws: Option<String>,
    #[arg(long, env = "TICKSTREAM_RATE_FREE_API")]
    pub rate_free_api: Option<String>,
    #[arg(long, env = "TICKSTREAM_RATE_FREE_INGEST")]
    pub rate_free_ingest: Option<String>,
    #[arg(long, env = "TICKSTREAM_RATE_PRO_WS")]
    pub rate_pro_ws: Option<String>,
    #[arg(long, env = "TICKSTREAM_RATE_PRO_API")]
    pub rate_pro_api: Option<String>,
    #[arg(long, env = "TICKSTREAM_RATE_PRO_INGEST")]
    pub rate_pro_ingest: Option<String>,
    #[arg(long, env = "TICKSTREAM_RATE_BUSINESS_WS")]
    pub rate_business_ws: Option<String>,
    #[arg(long, env = "TICKSTREAM_RATE_BUSINESS_API")]
    pub rate_business_api: Option<String>,
    #[arg(long, env = "TICKSTREAM_RATE_BUSINESS_INGEST")]
    pub rate_business_ingest: Option<String>,
    /// Per-IP flood shield in front of everything, same format, or `off`.
    #[arg(long, env = "TICKSTREAM_IP_RATE", default_value = "50/s:100")]
    pub ip_rate: String,
    /// Comma list of proxy IPs or CIDRs whose X-Forwarded-For is believed.
    #[arg(long, env = "TICKSTREAM_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,
    /// Most open WebSockets on this node; beyond it handshakes answer 503.
    #[arg(long, env = "TICKSTREAM_MAX_CONNECTIONS", default_value = "50000")]
    pub max_connections: String,
    /// How far ahead of the server's clock a tick's `ts` may be (e.g. 1h, 5m); a tick
    /// further ahead is refused (`bad_ts`), so no producer can date candles that are
    /// never trimmed.
    #[arg(long, env = "TICKSTREAM_MAX_FUTURE", default_value = "1h")]
    pub max_future: String,
    /// Log filter (tracing-subscriber EnvFilter syntax).
    #[arg(long, env = "TICKSTREAM_LOG", default_value = "info")]
    pub log: String,
    /// `json` (production) or `pretty`.
    #[arg(long, env = "TICKSTREAM_LOG_FORMAT", default_value = "pretty")]
    pub log_format: String,
    /// `on` or `off`: OHLCV candles of every tick's `value` (docs/PROTOCOL.md §6).
    #[arg(long, env = "TICKSTREAM_CANDLES", default_value = "on")]
    pub candles: String,
    /// How long each interval keeps its candles, counted back from its newest.
    #[arg(long, env = "TICKSTREAM_CANDLE_RETENTION_1S", default_value = "6h")]
    pub candle_retention_1s: String,
    #[arg(long, env = "TICKSTREAM_CANDLE_RETENTION_1M", default_value = "7d")]
    pub candle_retention_1m: String,
    #[arg(long, env = "TICKSTREAM_CANDLE_RETENTION_5M", default_value = "30d")]
    pub candle_retention_5m: String,
    #[arg(long, env = "TICKSTREAM_CANDLE_RETENTION_1H", default_value = "365d")]
    pub candle_retention_1h: String,
    #[arg(long, env = "TICKSTREAM_CANDLE_RETENTION_1D", default_value = "3650d")]
    pub candle_retention_1d: String,
    /// Also feed a few synthetic channels (`demo.*`) through the normal ingest path,
    /// so the dashboard has something to show (docs/PROTOCOL.md §8).
    #[arg(long, global = true, env = "TICKSTREAM_DEMO", value_parser = BoolishValueParser::new())]
    pub demo: bool,
    /// Dev mode (no signing key: a generated one, and printed tokens) on a listen
    /// address other than loopback. Without it such a server refuses to start.
    #[arg(long, global = true, env = "TICKSTREAM_DEV", value_parser = BoolishValueParser::new())]
    pub dev: bool,
    /// Without a command: serve.
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Serve (the default without a command).
    Serve,
    /// Candle maintenance.
    Candles {
        #[command(subcommand)]
        action: CandlesCommand,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum CandlesCommand {
    /// Recompute candles from the ticks still in the streams (after turning candles
    /// on over existing data). Idempotent, and safe while servers run.
    Rebuild {
        /// Only this channel (default: every channel).
        #[arg(long)]
        channel: Option<String>,
    },
}

impl Cli {
    /// Every default, as with an empty environment. Unlike `Cli::parse`, this never
    /// looks at the process environment, so a test is not changed by a `REDIS_URL`
    /// that happens to be set around it.
    pub fn empty() -> Cli {
        Cli {
            listen: "127.0.0.1:8080".into(),
            redis_url: None,
            redis_wait: "0".into(),
            redis_tls_ca: None,
            redis_tls_cert: None,
            redis_tls_key: None,
            partitions: "16".into(),
            stream_maxlen: "10000".into(),
            dedup_window: "24h".into(),
            default_replay: "100".into(),
            history_cache: "64".into(),
            jwt_secret: None,
            jwt_public_key: None,
            jwt_audience: None,
            jwt_issuer: None,
            hmac_secret: None,
            hmac_channels: "*".into(),
            ingest_token: None,
            allowed_origins: String::new(),
            rate_free_ws: None,
            rate_free_api: None,
            rate_free_ingest: None,
            rate_pro_ws: None,
            rate_pro_api: None,
            rate_pro_ingest: None,
            rate_business_ws: None,
            rate_business_api: None,
            rate_business_ingest: None,
            ip_rate: "50/s:100".into(),
            trusted_proxies: String::new(),
            max_connections: "50000".into(),
            max_future: "1h".into(),
            log: "info".into(),
            log_format: "pretty".into(),
            candles: "on".into(),
            candle_retention_1s: "6h".into(),
            candle_retention_1m: "7d".into(),
            candle_retention_5m: "30d".into(),
            candle_retention_1h: "365d".into(),
            candle_retention_1d: "3650d".into(),
            demo: false,
            dev: false,
            command: None,
        }
    }
}

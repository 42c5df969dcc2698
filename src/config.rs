//! Configuration: read once at start-up from the environment (and `.env`), with a
//! CLI flag per variable that overrides it (every variable is listed in `.env.example`).
//!
//! clap reads every value as a string and [`Config::from_cli`] validates it, so a bad
//! value stops start-up with a message that names the *variable* (operators set
//! variables, not flags), e.g. `TICKSTREAM_PARTITIONS: must be a whole number 1..=1024`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::acl::{ChannelPattern, OriginPattern};
use crate::auth;
use crate::ratelimit::ip::{Cidr, TrustedProxies};
use crate::ratelimit::{Group, Limits, Rate, Tier};
use crate::store::target::{self, TlsFiles};
use crate::store::Settings;

/// Command-line flags, each backed by its environment variable.
#[derive(Debug, Clone, Parser)]
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
    /// Log filter (tracing-subscriber EnvFilter syntax).
    #[arg(long, env = "TICKSTREAM_LOG", default_value = "info")]
    pub log: String,
    /// `json` (production) or `pretty`.
    #[arg(long, env = "TICKSTREAM_LOG_FORMAT", default_value = "pretty")]
    pub log_format: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Validated configuration; everything the server reads of its environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen; port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// `None` selects the embedded memory engine.
    pub redis_url: Option<String>,
    /// Fixed for a deployment: changing it would move channels to other keys.
    pub partitions: u32,
    /// Approximate stream cap; Redis trims whole macro nodes, so a stream may hold
    /// somewhat more.
    pub stream_maxlen: u64,
    pub dedup_window: Duration,
    pub default_replay: usize,
    /// TLS files for `rediss://`.
    pub redis_tls: TlsFiles,
    /// Replicas each ingest waits for before answering 201 (0: none).
    pub redis_wait: u32,
    /// Keys, secrets, tokens and origins.
    pub auth: auth::Settings,
    /// Token buckets per tier and group.
    pub rate_limits: Limits,
    /// The per-IP shield; `None` is off.
    pub ip_rate: Option<Rate>,
    pub trusted_proxies: TrustedProxies,
    /// Open WebSockets per node, at most.
    pub max_connections: usize,
    pub log: String,
    pub log_format: LogFormat,
    /// Per-channel in-memory live buffer (broadcast capacity). A subscriber that falls
    /// further behind than this catches up from the stream instead.
    pub live_buffer: usize,
    /// Frames queued per WebSocket before the session stops pulling from the live
    /// buffer; bounds memory per client.
    pub send_queue: usize,
    /// How long a partition reader's XREAD blocks before it re-checks its channels.
    pub tail_block: Duration,
}

/// A configuration value that cannot be used; names the variable.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

fn bad(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display>(
    var: &'static str,
    raw: &str,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    match raw.trim().parse::<T>() {
        Ok(n) if n >= min && n <= max => Ok(n),
        _ => Err(bad(var, format!("must be a whole number {min}..={max}, got {raw:?}"))),
    }
}

/// Parses `90s`, `30m`, `24h`, `7d` or a bare number of seconds.
pub fn parse_duration(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    let (digits, unit) = match raw.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => raw.split_at(i),
        None => (raw, "s"),
    };
    let n: u64 = digits.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.trim().is_empty())
}

impl Config {
    /// Validates what clap read.
    pub fn from_cli(cli: Cli) -> Result<Config, ConfigError> {
        let listen = cli
            .listen
            .trim()
            .parse()
            .map_err(|_| bad("TICKSTREAM_LISTEN", format!("must be host:port, got {:?}", cli.listen)))?;
        let redis_url = non_empty(cli.redis_url);
        if let Some(url) = &redis_url {
            target::parse(url).map_err(|why| bad("REDIS_URL", why))?;
        }
        let redis_wait: u32 = cli.redis_wait.trim().parse().ok().filter(|n| *n <= 64).ok_or_else(|| {
            bad(
                "TICKSTREAM_REDIS_WAIT",
                format!("must be a number of replicas, 0 to 64, got {:?}", cli.redis_wait),
            )
        })?;
        if redis_wait > 0 && redis_url.is_none() {
            return Err(bad(
                "TICKSTREAM_REDIS_WAIT",
                "waits for Redis replicas, so it needs REDIS_URL",
            ));
        }
        let dedup_window = parse_duration(&cli.dedup_window)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                bad(
                    "TICKSTREAM_DEDUP_WINDOW",
                    format!("must be a duration like 24h, 30m or 90s, got {:?}", cli.dedup_window),
                )
            })?;
        let jwt_secret = non_empty(cli.jwt_secret);
        if let Some(secret) = &jwt_secret {
            if secret.len() < 16 {
                return Err(bad("TICKSTREAM_JWT_SECRET", "must be at least 16 bytes"));
            }
        }
        let hmac_channels = cli
            .hmac_channels
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|p| {
                ChannelPattern::parse(p)
                    .ok_or_else(|| bad("TICKSTREAM_HMAC_CHANNELS", format!("bad channel pattern {p:?}")))
            })
            .collect::<Result<_, _>>()?;
        let allowed_origins = cli
            .allowed_origins
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                OriginPattern::parse(s).ok_or_else(|| {
                    bad(
                        "TICKSTREAM_ALLOWED_ORIGINS",
                        format!("bad origin {s:?} (expected scheme://host[:port] or https://*.domain)"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        let rate_of = |tier: Tier, group: Group| -> Option<String> {
            match (tier, group) {
                (Tier::Free, Group::Ws) => cli.rate_free_ws.clone(),
                (Tier::Free, Group::Api) => cli.rate_free_api.clone(),
                (Tier::Free, Group::Ingest) => cli.rate_free_ingest.clone(),
                (Tier::Pro, Group::Ws) => cli.rate_pro_ws.clone(),
                (Tier::Pro, Group::Api) => cli.rate_pro_api.clone(),
                (Tier::Pro, Group::Ingest) => cli.rate_pro_ingest.clone(),
                (Tier::Business, Group::Ws) => cli.rate_business_ws.clone(),
                (Tier::Business, Group::Api) => cli.rate_business_api.clone(),
                (Tier::Business, Group::Ingest) => cli.rate_business_ingest.clone(),
                (Tier::Internal, _) => None,
            }
        };
        let rate_limits = Limits::from_values(|tier, group| {
            non_empty(rate_of(tier, group)).unwrap_or_else(|| Limits::default_value(tier, group).to_string())
        })
        .map_err(|(var, message)| bad(var, message))?;
        let ip_rate = Rate::parse(&cli.ip_rate).map_err(|e| bad("TICKSTREAM_IP_RATE", e))?;
        let trusted_proxies = TrustedProxies(
            cli.trusted_proxies
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    Cidr::parse(s).ok_or_else(|| {
                        bad(
                            "TICKSTREAM_TRUSTED_PROXIES",
                            format!("bad address {s:?} (expected an IP or a CIDR such as 10.0.0.0/8)"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        );
        let redis_tls = TlsFiles {
            ca: cli.redis_tls_ca,
            client_cert: cli.redis_tls_cert,
            client_key: cli.redis_tls_key,
        };
        if redis_tls.client_cert.is_some() != redis_tls.client_key.is_some() {
            return Err(bad(
                "TICKSTREAM_REDIS_TLS_CERT",
                "TICKSTREAM_REDIS_TLS_CERT and TICKSTREAM_REDIS_TLS_KEY go together",
            ));
        }
        let log_format = match cli.log_format.trim() {
            "json" => LogFormat::Json,
            "pretty" => LogFormat::Pretty,
            other => {
                return Err(bad(
                    "TICKSTREAM_LOG_FORMAT",
                    format!("must be json or pretty, got {other:?}"),
                ))
            }
        };
        Ok(Config {
            listen,
            redis_url,
            partitions: number("TICKSTREAM_PARTITIONS", &cli.partitions, 1, 1024)?,
            stream_maxlen: number("TICKSTREAM_STREAM_MAXLEN", &cli.stream_maxlen, 1, 1_000_000_000)?,
            dedup_window,
            default_replay: number("TICKSTREAM_DEFAULT_REPLAY", &cli.default_replay, 0, 100_000)?,
            redis_tls,
            redis_wait,
            auth: auth::Settings {
                jwt_secret,
                jwt_public_key: cli.jwt_public_key,
                jwt_audience: non_empty(cli.jwt_audience),
                jwt_issuer: non_empty(cli.jwt_issuer),
                hmac_secret: non_empty(cli.hmac_secret),
                hmac_channels,
                ingest_token: non_empty(cli.ingest_token),
                allowed_origins,
            },
            rate_limits,
            ip_rate,
            trusted_proxies,
            max_connections: number("TICKSTREAM_MAX_CONNECTIONS", &cli.max_connections, 1, 10_000_000)?,
            log: cli.log,
            log_format,
            live_buffer: 1024,
            send_queue: 1024,
            tail_block: Duration::from_secs(2),
        })
    }

    /// Defaults for everything (as with an empty environment); tests and embedders
    /// start from this and change fields.
    /// Unlike `Cli::parse`, this never looks at the process environment, so a test
    /// is not changed by a `REDIS_URL` that happens to be set around it.
    pub fn defaults() -> Config {
        let cli = Cli {
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
            log: "info".into(),
            log_format: "pretty".into(),
        };
        Config::from_cli(cli).unwrap_or_else(|e| unreachable!("defaults are valid: {e}"))
    }

    /// What the storage engines are configured with.
    pub fn store_settings(&self) -> Settings {
        Settings {
            partitions: self.partitions,
            stream_maxlen: self.stream_maxlen,
            dedup_window: self.dedup_window,
            tail_block: self.tail_block,
            wait_replicas: self.redis_wait,
        }
    }

    /// Ticks each active channel keeps in memory for resumes: up to 1,024, never more
    /// than the stream keeps (so the ring never serves what Redis has trimmed).
    pub fn recent_ring(&self) -> usize {
        usize::try_from(self.stream_maxlen).unwrap_or(usize::MAX).min(1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut all = vec!["tickstream"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap()
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (args, var) in [
            (&["--partitions", "0"][..], "TICKSTREAM_PARTITIONS"),
            (&["--partitions", "abc"], "TICKSTREAM_PARTITIONS"),
            (&["--listen", "nowhere"], "TICKSTREAM_LISTEN"),
            (&["--dedup-window", "soon"], "TICKSTREAM_DEDUP_WINDOW"),
            (&["--stream-maxlen=-5"], "TICKSTREAM_STREAM_MAXLEN"),
            (&["--redis-url", "http://x"], "REDIS_URL"),
            (&["--redis-url", "redis+cluster://nohost"], "REDIS_URL"),
            (&["--redis-wait", "1"], "TICKSTREAM_REDIS_WAIT"),
            (
                &["--redis-url", "redis://h:1", "--redis-wait", "many"],
                "TICKSTREAM_REDIS_WAIT",
            ),
            (&["--allowed-origins", "example.com"], "TICKSTREAM_ALLOWED_ORIGINS"),
            (&["--log-format", "xml"], "TICKSTREAM_LOG_FORMAT"),
            (&["--jwt-secret", "short"], "TICKSTREAM_JWT_SECRET"),
            (&["--rate-free-api", "lots"], "TICKSTREAM_RATE_FREE_API"),
            (&["--rate-business-ingest", "10/d"], "TICKSTREAM_RATE_BUSINESS_INGEST"),
            (&["--ip-rate", "50"], "TICKSTREAM_IP_RATE"),
            (&["--trusted-proxies", "10.0.0.0/99"], "TICKSTREAM_TRUSTED_PROXIES"),
            (&["--max-connections", "0"], "TICKSTREAM_MAX_CONNECTIONS"),
            (&["--redis-tls-cert", "/x.pem"], "TICKSTREAM_REDIS_TLS_CERT"),
        ] {
            let err = Config::from_cli(cli(args)).unwrap_err();
            assert_eq!(err.var, var, "{args:?}");
            assert!(err.to_string().starts_with(var));
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn defaults_match_the_spec() {
        let parsed = Config::from_cli(Cli::try_parse_from(["tickstream"]).unwrap()).unwrap();
        assert_eq!(parsed.partitions, Config::defaults().partitions);
        let c = Config::defaults();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.partitions, 16);
        assert_eq!(c.stream_maxlen, 10_000);
        assert_eq!(c.default_replay, 100);
        assert_eq!(c.dedup_window, Duration::from_secs(86_400));
        assert!(c.redis_url.is_none());
        assert_eq!(c.rate_limits, Limits::defaults());
        assert_eq!(c.ip_rate.map(|r| r.to_string()).as_deref(), Some("50/s:100"));
        assert_eq!(c.max_connections, 50_000);
    }
}

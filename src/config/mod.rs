//! Configuration: read once at start-up from the environment (and `.env`), with a
//! CLI flag per variable that overrides it (every variable is listed in `.env.example`).
//!
//! clap reads every value as a string and [`Config::from_cli`] validates it, so a bad
//! value stops start-up with a message that names the *variable* (operators set
//! variables, not flags), e.g. `TICKSTREAM_PARTITIONS: must be a whole number 1..=1024`.

//!
//! - [`cli`]: the flags (and the `candles rebuild` command).
//! - [`parse`]: the error that names a variable, and the value parsers.

pub mod cli;
pub mod parse;

use std::net::SocketAddr;
use std::time::Duration;

pub use cli::{CandlesCommand, Cli, Command};
use parse::{bad, list, non_empty, number};
pub use parse::{parse_duration, ConfigError};

use crate::acl::{ChannelPattern, OriginPattern};
use crate::auth;
use crate::candles::{CandleSettings, Interval};
use crate::engine::Settings;
use crate::ratelimit::ip::{Cidr, TrustedProxies};
use crate::ratelimit::{Group, Limits, Rate, Tier};
use crate::redis::target::{self, TlsFiles};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Validated configuration; everything the server reads of its environment. Its
/// `Debug` prints no secret (see the impl below).
#[derive(Clone)]
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
    /// Bytes of recent history kept in memory for REST pages (docs/ARCHITECTURE.md §15).
    pub history_cache: usize,
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
    /// Open WebSockets per node, at most, as configured; the server also keeps under
    /// its open-file limit (`http::capacity`).
    pub max_connections: usize,
    /// How far ahead of the server's clock a tick may be dated.
    pub max_future: Duration,
    pub log: String,
    pub log_format: LogFormat,
    /// Candles on or off, and their retention per interval.
    pub candles: CandleSettings,
    /// Per-channel in-memory live buffer (broadcast capacity). A subscriber that falls
    /// further behind than this catches up from the stream instead.
    pub live_buffer: usize,
    /// Frames queued per WebSocket before the session stops pulling from the live
    /// buffer; bounds memory per client.
    pub send_queue: usize,
    /// How long a partition reader's XREAD blocks before it re-checks its channels.
    pub tail_block: Duration,
    /// `--demo`: feed the synthetic `demo.*` channels (src/demo.rs).
    pub demo: bool,
    /// `--dev`: dev mode asked for explicitly, on whatever address (docs/OPERATIONS.md
    /// "Dev mode"); without it dev mode serves loopback only.
    pub dev: bool,
}

impl std::fmt::Debug for Config {
    /// Every field but the secrets: `REDIS_URL` without its password, and the auth
    /// settings' own redacted `Debug`. A config printed into a log or a panic message
    /// must not hand out the keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("partitions", &self.partitions)
            .field("stream_maxlen", &self.stream_maxlen)
            .field("dedup_window", &self.dedup_window)
            .field("default_replay", &self.default_replay)
            .field("history_cache", &self.history_cache)
            .field("redis_tls", &self.redis_tls)
            .field("redis_wait", &self.redis_wait)
            .field("auth", &self.auth)
            .field("rate_limits", &self.rate_limits)
            .field("ip_rate", &self.ip_rate)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("max_connections", &self.max_connections)
            .field("max_future", &self.max_future)
            .field("log", &self.log)
            .field("log_format", &self.log_format)
            .field("candles", &self.candles)
            .field("live_buffer", &self.live_buffer)
            .field("send_queue", &self.send_queue)
            .field("tail_block", &self.tail_block)
            .field("demo", &self.demo)
            .field("dev", &self.dev)
            .finish()
    }
}

/// A Redis URL with its `user:password@` part replaced.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://<redacted>@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// `TICKSTREAM_CANDLES` and `TICKSTREAM_CANDLE_RETENTION_*`.
fn candle_settings(cli: &Cli) -> Result<CandleSettings, ConfigError> {
    let enabled = match cli.candles.trim() {
        "on" | "true" | "1" => true,
        "off" | "false" | "0" => false,
        other => return Err(bad("TICKSTREAM_CANDLES", format!("must be on or off, got {other:?}"))),
    };
    let mut settings = CandleSettings {
        enabled,
        ..CandleSettings::default()
    };
    for (interval, var, raw) in [
        (Interval::S1, "TICKSTREAM_CANDLE_RETENTION_1S", &cli.candle_retention_1s),
        (Interval::M1, "TICKSTREAM_CANDLE_RETENTION_1M", &cli.candle_retention_1m),
        (Interval::M5, "TICKSTREAM_CANDLE_RETENTION_5M", &cli.candle_retention_5m),
        (Interval::H1, "TICKSTREAM_CANDLE_RETENTION_1H", &cli.candle_retention_1h),
        (Interval::D1, "TICKSTREAM_CANDLE_RETENTION_1D", &cli.candle_retention_1d),
    ] {
        // At least one bucket: a retention shorter than the interval keeps nothing.
        let keep = parse_duration(raw)
            .filter(|d| d.as_millis() >= interval.ms() as u128)
            .ok_or_else(|| {
                bad(
                    var,
                    format!(
                        "must be a duration of at least {} like 6h or 7d, got {raw:?}",
                        interval.name()
                    ),
                )
            })?;
        settings.retention[interval as usize] = keep;
    }
    Ok(settings)
}

/// Dev mode (no signing key) prints tokens and serves them: on loopback only, unless
/// `TICKSTREAM_DEV` asks for it on another address (a container's `0.0.0.0` would
/// hand an all-channel token to the network).
fn check_dev_mode(auth: &auth::Settings, listen: SocketAddr, dev: bool) -> Result<(), ConfigError> {
    if auth.dev_mode() && !listen.ip().is_loopback() && !dev {
        return Err(bad(
            "TICKSTREAM_JWT_SECRET",
            format!(
                "listening on {listen} (not loopback) needs a signing key: set TICKSTREAM_JWT_SECRET, \
                 TICKSTREAM_JWT_PUBLIC_KEY or TICKSTREAM_HMAC_SECRET, or TICKSTREAM_DEV=1 (--dev) to \
                 serve dev mode's generated tokens on this address anyway"
            ),
        ));
    }
    Ok(())
}

impl Config {
    /// Validates what clap read.
    pub fn from_cli(cli: Cli) -> Result<Config, ConfigError> {
        let candles = candle_settings(&cli)?;
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
        let hmac_channels = list(
            "TICKSTREAM_HMAC_CHANNELS",
            &cli.hmac_channels,
            "channel pattern",
            ChannelPattern::parse,
        )?;
        let allowed_origins = list(
            "TICKSTREAM_ALLOWED_ORIGINS",
            &cli.allowed_origins,
            "origin (expected scheme://host[:port] or https://*.domain)",
            OriginPattern::parse,
        )?;
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
        let trusted_proxies = TrustedProxies(list(
            "TICKSTREAM_TRUSTED_PROXIES",
            &cli.trusted_proxies,
            "address (expected an IP or a CIDR such as 10.0.0.0/8)",
            Cidr::parse,
        )?);
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
        let max_future = parse_duration(&cli.max_future).ok_or_else(|| {
            bad(
                "TICKSTREAM_MAX_FUTURE",
                format!("must be a duration like 1h, 5m or 0s, got {:?}", cli.max_future),
            )
        })?;
        let auth = auth::Settings {
            jwt_secret,
            jwt_public_key: cli.jwt_public_key,
            jwt_audience: non_empty(cli.jwt_audience),
            jwt_issuer: non_empty(cli.jwt_issuer),
            hmac_secret: non_empty(cli.hmac_secret),
            hmac_channels,
            ingest_token: non_empty(cli.ingest_token),
            allowed_origins,
        };
        // Maintenance commands serve nothing: the rule is about what a server serves.
        let serves = !matches!(cli.command, Some(Command::Candles { .. }));
        check_dev_mode(&auth, listen, cli.dev || !serves)?;
        Ok(Config {
            listen,
            redis_url,
            partitions: number("TICKSTREAM_PARTITIONS", &cli.partitions, 1, 1024)?,
            stream_maxlen: number("TICKSTREAM_STREAM_MAXLEN", &cli.stream_maxlen, 1, 1_000_000_000)?,
            dedup_window,
            default_replay: number("TICKSTREAM_DEFAULT_REPLAY", &cli.default_replay, 0, 100_000)?,
            history_cache: number::<usize>("TICKSTREAM_HISTORY_CACHE", &cli.history_cache, 0, 1 << 20)? << 20,
            redis_tls,
            redis_wait,
            auth,
            rate_limits,
            ip_rate,
            trusted_proxies,
            max_connections: number("TICKSTREAM_MAX_CONNECTIONS", &cli.max_connections, 1, 10_000_000)?,
            max_future,
            log: cli.log,
            log_format,
            candles,
            live_buffer: 1024,
            send_queue: 1024,
            tail_block: Duration::from_secs(2),
            demo: cli.demo,
            dev: cli.dev,
        })
    }

    /// Defaults for everything (as with an empty environment, see [`Cli::empty`]);
    /// tests and embedders start from this and change fields.
    pub fn defaults() -> Config {
        Config::from_cli(Cli::empty()).unwrap_or_else(|e| unreachable!("defaults are valid: {e}"))
    }

    /// What the storage engines are configured with.
    pub fn store_settings(&self) -> Settings {
        Settings {
            partitions: self.partitions,
            stream_maxlen: self.stream_maxlen,
            dedup_window: self.dedup_window,
            tail_block: self.tail_block,
            wait_replicas: self.redis_wait,
            candles: self.candles,
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
    use clap::Parser;

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
            (&["--candles", "maybe"], "TICKSTREAM_CANDLES"),
            (&["--candle-retention-1m", "30s"], "TICKSTREAM_CANDLE_RETENTION_1M"),
            (&["--candle-retention-1d", "forever"], "TICKSTREAM_CANDLE_RETENTION_1D"),
            (&["--max-future", "later"], "TICKSTREAM_MAX_FUTURE"),
            (&["--listen", "0.0.0.0:8080"], "TICKSTREAM_JWT_SECRET"),
        ] {
            let err = Config::from_cli(cli(args)).unwrap_err();
            assert_eq!(err.var, var, "{args:?}");
            assert!(err.to_string().starts_with(var));
        }
    }

    #[test]
    fn dev_mode_off_loopback_only_when_asked() {
        for listen in ["0.0.0.0:8080", "[::]:8080", "10.1.2.3:80"] {
            let err = Config::from_cli(cli(&["--listen", listen])).unwrap_err();
            assert!(err.to_string().contains("TICKSTREAM_DEV=1"), "{err}");
            assert!(Config::from_cli(cli(&["--listen", listen, "--dev"])).unwrap().dev);
            let keyed = cli(&["--listen", listen, "--jwt-secret", "0123456789abcdef0123"]);
            assert!(Config::from_cli(keyed).is_ok(), "{listen} with a key");
        }
        for listen in ["127.0.0.1:0", "[::1]:8080", "127.0.0.2:9000"] {
            assert!(Config::from_cli(cli(&["--listen", listen])).is_ok(), "{listen}");
        }
        // `candles rebuild` serves nothing: the rule does not apply to it.
        let rebuild = cli(&["--listen", "0.0.0.0:8080", "candles", "rebuild"]);
        assert!(Config::from_cli(rebuild).is_ok());
    }

    #[test]
    fn debug_prints_no_secret() {
        let c = Config::from_cli(cli(&[
            "--jwt-secret",
            "jwt-secret-0123456789",
            "--hmac-secret",
            "hmac-secret-0123456789",
            "--ingest-token",
            "ingest-token-0123456789",
            "--redis-url",
            "redis://tickstream:redis-password-0123@10.0.0.1:6379",
        ]))
        .unwrap();
        let printed = format!("{c:?} {c:#?}");
        for secret in ["jwt-secret-0", "hmac-secret-0", "ingest-token-0", "redis-password-0"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(printed.contains("10.0.0.1:6379"), "{printed}");
        assert!(printed.contains("max_future"), "{printed}");
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
        assert_eq!(c.max_future, Duration::from_secs(3600));
        assert!(!c.dev);
        assert_eq!(c.candles, CandleSettings::default(), "6h, 7d, 30d, 1y, 10y");
    }
}

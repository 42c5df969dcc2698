//! tickstream: a WebSocket fan-out server for high-frequency ticks, backed by Redis
//! streams.
//!
//! The path of a tick, and the module that owns each step (docs/ARCHITECTURE.md §1):
//!
//! - [`config`]: environment, `.env` and CLI flags, validated once at start-up.
//! - [`tick`]: what a tick is; stream ids and `since` cursors, ingest validation and
//!   event ids, the wire JSON.
//! - [`acl`]: channel and Origin patterns (what a token's `channels` grant).
//! - [`auth`]: who is asking: JWT, the HMAC-signed handshake, the ingest token.
//! - [`ratelimit`]: token buckets per subject and group (shared in Redis), the per-IP
//!   flood shield, the client's address.
//! - [`candles`]: OHLCV candles of `value`: intervals, the fold, retention.
//! - [`keyspace`]: every Redis key, and the partition function.
//! - [`store`]: the engines (Redis streams on one Redis or a Redis Cluster, or the
//!   embedded memory engine), the store's health, failover honesty.
//! - [`hub`]: per node, one reader per partition; serializes each tick once and
//!   broadcasts it to the channel's subscribers.
//! - [`session`]: a client's subscriptions, transport-free (cursor, replay, writer),
//!   and its two transports, WebSocket and Server-Sent Events.
//! - [`http`]: the accept loop, admission, extractors, routes and handlers.
//! - [`demo`]: `--demo`'s synthetic channels, fed through the normal ingest path.
//! - [`nodes`]: the registry of nodes sharing one Redis (heartbeats).
//! - [`retry`], [`clock`]: backoff and quiet error logs; the one clock.
//! - [`metrics`]: Prometheus metrics, one registry per server.
//! - [`error`]: the error policy; errors become HTTP answers in one place.
//!
//! [`run`] starts a server and serves until the shutdown future completes; tests use
//! [`Server::bind`] to learn the port before serving.

pub mod acl;
pub(crate) mod auth;
pub mod candles;
pub mod clock;
pub mod config;
pub(crate) mod demo;
pub(crate) mod error;
pub(crate) mod history;
pub(crate) mod http;
pub(crate) mod hub;
pub mod keyspace;
pub(crate) mod metrics;
pub(crate) mod nodes;
pub mod ratelimit;
pub(crate) mod retry;
pub mod session;
pub(crate) mod store;
pub mod tick;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};

pub use config::Config;

use crate::auth::{Authenticator, DevCredentials};
use crate::history::HistoryCache;
use crate::http::AppState;
use crate::hub::{Hub, HubSettings};
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::session::SessionContext;
use crate::store::memory::MemoryStore;
use crate::store::redis::RedisStore;
use crate::store::target;
use crate::store::{Store, StoreError, StoreHealth};

/// How long after the signal shutdown waits for sessions to send their 1012 close
/// and end; the process exits within 10 s of SIGTERM (docs/OPERATIONS.md "Upgrades").
const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);
/// How long in-flight HTTP requests get to finish after the signal.
const HTTP_DRAIN: Duration = Duration::from_secs(6);

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("TICKSTREAM_LISTEN: cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("REDIS_URL: cannot use Redis: {0}")]
    Redis(StoreError),
    #[error(transparent)]
    Key(#[from] auth::KeyError),
    #[error("server error: {0}")]
    Serve(std::io::Error),
}

/// A bound, ready-to-serve server.
pub struct Server {
    listener: TcpListener,
    state: AppState,
    shutdown_tx: watch::Sender<bool>,
    sessions_done: mpsc::Receiver<()>,
    dev: Option<DevCredentials>,
}

impl Server {
    /// Connects the store, builds the hub and binds the listener.
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        // rustls needs its crypto provider chosen before the first TLS connection;
        // an embedder may have chosen one already, which is as good.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let metrics = Arc::new(Metrics::new());
        let store = open_store(&config, &metrics).await?;
        let dev_secret = match config.auth.dev_mode() {
            true => Some(
                store
                    .dev_secret(auth::new_dev_secret())
                    .await
                    .map_err(StartError::Redis)?,
            ),
            false => None,
        };
        let (auth, dev) = Authenticator::new(&config.auth, dev_secret)?;
        let listener = listen(config.listen).map_err(|e| StartError::Bind(config.listen, e))?;
        // The memory engine is memory already: no cache in front of it.
        let cache_bytes = if store.is_durable() { config.history_cache } else { 0 };
        let per_channel = usize::try_from(config.stream_maxlen).unwrap_or(usize::MAX);
        let history = Arc::new(HistoryCache::new(cache_bytes, per_channel));
        let hub = Hub::new(
            store.clone(),
            HubSettings {
                partitions: config.partitions,
                live_buffer: config.live_buffer,
                ring: config.recent_ring(),
            },
            metrics.clone(),
            history.clone(),
        );
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (done_tx, sessions_done) = mpsc::channel(1);
        let auth = Arc::new(auth);
        let health = Arc::new(StoreHealth::default());
        let limiter = Arc::new(RateLimiter::new(
            config.rate_limits.clone(),
            store.clone(),
            health.clone(),
            metrics.clone(),
        ));
        limiter.prepare().await.map_err(StartError::Redis)?;
        let sessions = Arc::new(SessionContext {
            hub: hub.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            auth: auth.clone(),
            limiter: limiter.clone(),
            default_replay: config.default_replay,
            candles: config.candles,
            send_queue: config.send_queue,
            shutdown: shutdown_rx,
        });
        let address = advertised_address(listener.local_addr().unwrap_or(config.listen));
        let node = Arc::new(crate::nodes::Node::new(address, metrics.clone()));
        let capacity = http::capacity::Capacity::for_process(config.max_connections, config.partitions);
        tracing::info!(
            sessions = capacity.sockets,
            max_connections = config.max_connections,
            open_files = capacity.open_files,
            reserved_files = capacity.reserve,
            "connection cap in force: the smaller of TICKSTREAM_MAX_CONNECTIONS and the open-file limit less a reserve"
        );
        let state = AppState {
            node,
            sockets: Arc::new(Semaphore::new(capacity.sockets)),
            shield: ratelimit::ip::shield(config.ip_rate),
            limiter,
            health,
            config: Arc::new(config),
            store,
            hub,
            history,
            auth,
            metrics,
            sessions,
            sessions_done: done_tx,
        };
        Ok(Server {
            listener,
            state,
            shutdown_tx,
            sessions_done,
            dev,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| self.state.config.listen)
    }

    /// Dev-mode credentials, when start-up generated them.
    pub fn dev_credentials(&self) -> Option<&DevCredentials> {
        self.dev.as_ref()
    }

    /// Serves until `shutdown` completes, then stops accepting, closes every
    /// WebSocket with 1012 and waits (bounded) for sessions to end.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), StartError> {
        let Server {
            listener,
            state,
            shutdown_tx,
            mut sessions_done,
            dev,
        } = self;
        let addr = listener.local_addr().map_err(StartError::Serve)?;
        announce(&state, addr, dev.as_ref());
        let mut background = state.hub.start(shutdown_tx.subscribe());
        background.push(tokio::spawn(
            state.health.clone().watch(state.store.clone(), shutdown_tx.subscribe()),
        ));
        if let Some(shield) = state.shield.clone() {
            background.push(tokio::spawn(forget_quiet_addresses(shield, shutdown_tx.subscribe())));
        }
        if state.config.demo {
            background.push(tokio::spawn(demo::run(state.clone(), shutdown_tx.subscribe())));
        }
        let heartbeat = tokio::spawn(state.node.clone().run(state.store.clone(), shutdown_tx.subscribe()));
        let app = http::router(state.clone());
        let signal_sessions = shutdown_tx.clone();
        let signalled_at = Arc::new(std::sync::OnceLock::new());
        let mark = signalled_at.clone();
        let serve = http::serve::serve(listener, app, async move {
            shutdown.await;
            let _ = mark.set(tokio::time::Instant::now());
            tracing::info!("shutting down: closing sessions with 1012");
            let _ = signal_sessions.send(true);
        });
        // In-flight HTTP requests (ingests) get HTTP_DRAIN to finish; sessions close
        // meanwhile. Whatever still runs at the deadline is dropped, so the process
        // exits within 10 s of the signal.
        let mut signalled = shutdown_tx.subscribe();
        tokio::select! {
            _ = serve => {}
            _ = async {
                let _ = signalled.wait_for(|stop| *stop).await;
                tokio::time::sleep(HTTP_DRAIN).await;
            } => {
                tracing::warn!("shutdown: in-flight requests did not finish in time");
            }
        };
        let _ = shutdown_tx.send(true);
        drop(state);
        // Every session holds a sender; recv() returns None once all have ended.
        let started = signalled_at.get().copied().unwrap_or_else(tokio::time::Instant::now);
        let _ = tokio::time::timeout_at(started + SHUTDOWN_GRACE, sessions_done.recv()).await;
        for task in background {
            task.abort();
        }
        // The heartbeat task removes this node from the registry on its way out.
        let _ = tokio::time::timeout(Duration::from_secs(1), heartbeat).await;
        Ok(())
    }
}

/// The shield remembers each address it has seen; addresses whose bucket is full
/// again are forgotten once a minute, so its memory follows current traffic.
async fn forget_quiet_addresses(shield: ratelimit::ip::Shield, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => shield.limiter().retain_recent(),
            _ = shutdown.changed() => return,
        }
    }
}

/// Starts a server from `config` and serves until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), StartError> {
    Server::bind(config).await?.run(shutdown).await
}

/// Connections that may wait in the kernel for `accept` (capped by the kernel's
/// `net.core.somaxconn`). tokio's default is 1,024: a reconnect storm of thousands of
/// clients after a restart overflowed it, and the dropped SYNs were retried by the
/// clients' kernels 1 s and 3 s later, which was most of the storm's duration
/// (docs/BENCHMARKS.md "Resume storms").
const LISTEN_BACKLOG: u32 = 65_535;

/// Binds the listener (address reuse on, as `TcpListener::bind` does, so a restarted
/// node gets its port back at once).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The store `REDIS_URL` names, or the memory engine without it.
async fn open_store(config: &Config, metrics: &Metrics) -> Result<Store, StartError> {
    Ok(match &config.redis_url {
        Some(url) => Store::Redis(Arc::new(
            RedisStore::connect(
                target::parse(url).map_err(|why| StartError::Redis(StoreError::Config(format!("REDIS_URL {why}"))))?,
                &config.redis_tls,
                config.store_settings(),
                metrics.bad_entries.clone(),
                metrics.rollbacks.clone(),
                metrics.redis_latency.clone(),
            )
            .await
            .map_err(StartError::Redis)?,
        )),
        None => Store::Memory(Arc::new(MemoryStore::new(config.store_settings()))),
    })
}

/// `tickstream candles rebuild`: recomputes the candles of `channel` (else of every
/// channel) from the ticks still in the streams, calling `done` after each channel;
/// returns how many channels it rebuilt. Safe while servers run (see
/// `RedisStore::rebuild_candles`).
pub async fn rebuild_candles(
    config: &Config,
    channel: Option<String>,
    mut done: impl FnMut(&str, usize),
) -> Result<usize, StartError> {
    if !config.store_settings().candles.enabled {
        return Err(StartError::Redis(StoreError::Config(
            "TICKSTREAM_CANDLES is off: there are no candles to rebuild".into(),
        )));
    }
    if config.redis_url.is_none() {
        return Err(StartError::Redis(StoreError::Config(
            "REDIS_URL is not set: the memory engine's candles live and die with its server".into(),
        )));
    }
    if let Some(c) = channel.as_deref().filter(|c| !tick::is_valid_channel(c)) {
        return Err(StartError::Redis(StoreError::Config(format!(
            "{c:?} is not a channel name"
        ))));
    }
    let store = open_store(config, &Metrics::new()).await?;
    let channels = match channel {
        Some(c) => vec![c],
        None => store.channel_names().await.map_err(StartError::Redis)?,
    };
    for channel in &channels {
        let ticks = store.rebuild_candles(channel).await.map_err(StartError::Redis)?;
        done(channel, ticks);
    }
    Ok(channels.len())
}

fn announce(state: &AppState, addr: SocketAddr, dev: Option<&DevCredentials>) {
    let engine = state.store.engine_name();
    tracing::info!(%addr, engine, partitions = state.config.partitions, "tickstream listening");
    if engine == "memory" {
        tracing::warn!(
            "REDIS_URL is not set: using the embedded in-memory engine. History is NOT durable and is \
             lost when the process stops; set REDIS_URL=redis://127.0.0.1:6379 for production."
        );
    }
    if let (Some(_), false) = (dev, addr.ip().is_loopback()) {
        // TICKSTREAM_DEV asked for it (config refuses otherwise): say so loudly, in the
        // log and on the terminal.
        tracing::warn!(%addr, "DEV MODE ON A NON-LOOPBACK ADDRESS: generated tokens are served to the network");
        eprintln!(
            "\n  !!! DEV MODE ON {addr}, NOT LOOPBACK (TICKSTREAM_DEV=1): anyone who reaches this address\n  \
             !!! and reads the tokens below may read every channel and write ticks. Set\n  \
             !!! TICKSTREAM_JWT_SECRET (or a public key) for anything but a private test.\n"
        );
    }
    if let Some(dev) = dev {
        let base = format!("http://{addr}");
        let ws = format!("ws://{addr}");
        // Printed, not logged: these are for the operator's terminal, and log
        // pipelines must never carry tokens.
        eprintln!(
            "\n  DEV MODE: no TICKSTREAM_JWT_SECRET / TICKSTREAM_JWT_PUBLIC_KEY / TICKSTREAM_HMAC_SECRET set.\n  \
             {secret}\n\n  \
             Dashboard:     {base}/#token={reader}\n  \
             Reader token:  {reader}   (24 h, channels [\"*\"])\n  \
             Ingest token:  {ingest}\n\n  \
             Try it:\n    \
             curl -s -X POST {base}/api/v1/ingest -H 'Authorization: Bearer {ingest}' \\\n      \
             -H 'Content-Type: application/json' -d '{{\"channel\":\"demo.BTC-USD\",\"value\":42000.5}}'\n    \
             curl -s '{base}/api/v1/channels/demo.BTC-USD/ticks' -H 'Authorization: Bearer {reader}'\n    \
             websocat '{ws}/ws/demo.BTC-USD?since=0-0' -H 'Authorization: Bearer {reader}'\n",
            reader = dev.reader_token,
            ingest = dev.ingest_token,
            secret = match state.store.is_durable() {
                true =>
                    "A random signing secret is kept in this Redis, so these tokens outlive restarts; \
                         set TICKSTREAM_JWT_SECRET for production.",
                false => "A random signing secret was made for this run; tokens below stop working on restart.",
            },
        );
    }
}

/// How other nodes and operators can reach this one: the bound address, or the
/// host's name when bound to every interface (`0.0.0.0:8080` says nothing).
fn advertised_address(bound: SocketAddr) -> String {
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| bound.ip().to_string());
    format!("{host}:{}", bound.port())
}

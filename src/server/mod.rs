//! The wiring: opens the engine the configuration names, builds the hub, the
//! append service, the limiter and the session context around it, binds the
//! listener, serves, and shuts down gracefully (docs/ARCHITECTURE.md §7). The one
//! place that knows which engine it opened.
//!
//! - [`banner`]: what start-up tells the operator.
//! - [`rebuild`]: `tickstream candles rebuild`'s work.

mod banner;
pub mod rebuild;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::auth::{self, Authenticator, DevCredentials};
use crate::config::Config;
use crate::demo;
use crate::engine::memory::MemoryEngine;
use crate::engine::{Store, StoreError};
use crate::health::StoreHealth;
use crate::http::{self, AppState};
use crate::hub::{Hub, HubSettings};
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::nodes::Node;
use crate::page_cache::PageCache;
use crate::ratelimit::{self, RateLimiter};
use crate::redis::connections::Connections;
use crate::redis::target;
use crate::redis::RedisEngine;
use crate::session::SessionContext;

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
    /// The Redis engine could not be opened or prepared (`REDIS_URL`, its credentials,
    /// its TLS files, the deployment's partition count, the scripts): the memory
    /// engine cannot fail to start.
    #[error("REDIS_URL: cannot use Redis: {0}")]
    Store(StoreError),
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
    /// History outlives this process (the Redis engine): the banner says so.
    durable: bool,
}

impl Server {
    /// Connects the store, builds the hub and binds the listener.
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        // rustls needs its crypto provider chosen before the first TLS connection;
        // an embedder may have chosen one already, which is as good.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let metrics = Arc::new(Metrics::new());
        let opened = open_engine(&config, &metrics).await?;
        let store = opened.store.clone();
        let dev_secret = match config.auth.dev_mode() {
            true => Some(
                store
                    .dev_secret(auth::new_dev_secret())
                    .await
                    .map_err(StartError::Store)?,
            ),
            false => None,
        };
        let (auth, dev) = Authenticator::new(&config.auth, dev_secret)?;
        let listener = listen(config.listen).map_err(|e| StartError::Bind(config.listen, e))?;
        // The memory engine is memory already: no cache in front of it.
        let cache_bytes = if opened.redis.is_some() {
            config.history_cache
        } else {
            0
        };
        let per_channel = usize::try_from(config.stream_maxlen).unwrap_or(usize::MAX);
        let page_cache = Arc::new(PageCache::new(cache_bytes, per_channel));
        let hub = Hub::new(
            store.clone(),
            HubSettings {
                partitions: config.partitions,
                live_buffer: config.live_buffer,
                ring: config.recent_ring(),
            },
            metrics.clone(),
            page_cache.clone(),
        );
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (done_tx, sessions_done) = mpsc::channel(1);
        let auth = Arc::new(auth);
        let health = Arc::new(StoreHealth::new(opened.redis.is_some()));
        let limiter = Arc::new(RateLimiter::new(
            config.rate_limits.clone(),
            opened.redis.clone(),
            health.clone(),
            metrics.clone(),
        ));
        limiter.prepare().await.map_err(StartError::Store)?;
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
        let address = Node::advertised_address(listener.local_addr().unwrap_or(config.listen));
        let node = Arc::new(Node::new(address, metrics.clone(), opened.redis.clone()));
        let ingest = Arc::new(Ingest::new(
            store.clone(),
            hub.clone(),
            metrics.clone(),
            config.max_future,
        ));
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
            ingest,
            page_cache,
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
            durable: opened.redis.is_some(),
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
            durable,
        } = self;
        let addr = listener.local_addr().map_err(StartError::Serve)?;
        banner::announce(&state, addr, dev.as_ref(), durable);
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
        let heartbeat = tokio::spawn(state.node.clone().run(shutdown_tx.subscribe()));
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

/// Connections that may wait in the kernel for `accept` (capped by the kernel's
/// `net.core.somaxconn`). tokio's default is 1,024: a reconnect storm of thousands of
/// clients after a restart overflowed it, and the dropped SYNs were retried by the
/// clients' kernels 1 s and 3 s later, which was most of the storm's duration
/// (docs/OPERATIONS.md "Reconnect storms and the listen backlog").
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

/// The engine the configuration names, and what the wiring hands out beside it.
pub struct Opened {
    pub store: Store,
    /// The Redis engine's shared connections, for the components that keep keys of
    /// their own beside the streams (the node registry, the rate limiter); `None` for
    /// the memory engine.
    pub redis: Option<Arc<Connections>>,
}

/// The Redis engine `REDIS_URL` names, or the memory engine without it: the one
/// place that chooses (docs/ARCHITECTURE.md §6).
pub async fn open_engine(config: &Config, metrics: &Metrics) -> Result<Opened, StartError> {
    let Some(url) = &config.redis_url else {
        return Ok(Opened {
            store: Arc::new(MemoryEngine::new(config.store_settings())),
            redis: None,
        });
    };
    let target = target::parse(url).map_err(|why| StartError::Store(StoreError::Config(format!("REDIS_URL {why}"))))?;
    let engine = RedisEngine::connect(
        target,
        &config.redis_tls,
        config.store_settings(),
        metrics.bad_entries.clone(),
        metrics.rollbacks.clone(),
        metrics.redis_latency.clone(),
    )
    .await
    .map_err(StartError::Store)?;
    Ok(Opened {
        redis: Some(engine.connections()),
        store: Arc::new(engine),
    })
}

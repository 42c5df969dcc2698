//! The Redis engine's connections for ordinary (non-blocking) commands: a few
//! multiplexed connections, opened on first use, used round robin, and replaced when
//! one breaks.
//!
//! A multiplexed connection pipelines every caller's commands over one socket, so a
//! handful carry any load; more than one spreads reply parsing over the runtime's
//! threads. Blocking reads never use these (docs/ARCHITECTURE.md, "Live tail": a
//! blocking `XREAD` would stall every command queued behind it).
//!
//! The client is built here, from the URL and optional TLS files, because a private
//! CA or a client certificate (mutual TLS) can only be given to redis-rs through
//! `Client::build_with_tls`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Cmd, ErrorKind, Pipeline, RedisFuture, ServerErrorKind, Value};
use tokio::sync::Mutex;

use super::StoreError;

/// How many multiplexed connections ordinary commands share.
const CONNECTIONS: usize = 4;
/// Response timeout for ordinary commands. redis-rs defaults to 500 ms, which a large
/// XRANGE page on a busy server can exceed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long opening a connection (TCP, TLS, AUTH) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// TLS material for `rediss://` beyond the system's trust store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM CA certificate(s) that signed the server's certificate
    /// (`TICKSTREAM_REDIS_TLS_CA`); the system trust store when absent.
    pub ca: Option<PathBuf>,
    /// PEM client certificate and key for mutual TLS (`TICKSTREAM_REDIS_TLS_CERT`,
    /// `TICKSTREAM_REDIS_TLS_KEY`).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

fn read(var: &str, path: &PathBuf) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|e| StoreError::Config(format!("{var}: cannot read {}: {e}", path.display())))
}

/// A redis-rs client for `url`, with the TLS files when given.
pub fn client(url: &str, tls: &TlsFiles) -> Result<redis::Client, StoreError> {
    if tls == &TlsFiles::default() {
        return Ok(redis::Client::open(url)?);
    }
    let root_cert = tls
        .ca
        .as_ref()
        .map(|p| read("TICKSTREAM_REDIS_TLS_CA", p))
        .transpose()?;
    let client_tls = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read("TICKSTREAM_REDIS_TLS_CERT", cert)?,
            client_key: read("TICKSTREAM_REDIS_TLS_KEY", key)?,
        }),
        (None, None) => None,
        _ => {
            return Err(StoreError::Config(
                "TICKSTREAM_REDIS_TLS_CERT and TICKSTREAM_REDIS_TLS_KEY go together".into(),
            ))
        }
    };
    Ok(redis::Client::build_with_tls(
        url,
        redis::TlsCertificates { client_tls, root_cert },
    )?)
}

/// Connection settings with our timeouts; `response` must outlast any blocking read
/// made on the connection.
pub fn connection_config(response: Duration) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_response_timeout(Some(response))
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
}

/// After a connection attempt fails, others fail at once for this long instead of
/// each waiting out its own connect timeout: during an outage requests answer 503
/// promptly rather than queueing behind one another's attempts.
const FAIL_FAST: Duration = Duration::from_secs(1);

/// The shared connections.
pub struct Connections {
    client: redis::Client,
    slots: Vec<Mutex<Option<MultiplexedConnection>>>,
    next: AtomicUsize,
    /// Unix ms until which a new connection is not attempted (see [`FAIL_FAST`]).
    failing_until_ms: AtomicU64,
}

impl Connections {
    pub fn new(client: redis::Client) -> Connections {
        Connections {
            client,
            slots: (0..CONNECTIONS).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            failing_until_ms: AtomicU64::new(0),
        }
    }

    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// A connection for a command or a pipeline; opened if its slot is empty.
    pub async fn get(&self) -> Result<Conn<'_>, StoreError> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let slot = &self.slots[index];
        let mut guard = slot.lock().await;
        let conn = match &*guard {
            Some(conn) => conn.clone(),
            None => {
                if crate::clock::now_ms() < self.failing_until_ms.load(Ordering::Acquire) {
                    return Err(StoreError::Unreachable);
                }
                let opened = self
                    .client
                    .get_multiplexed_async_connection_with_config(&connection_config(COMMAND_TIMEOUT))
                    .await;
                let conn = match opened {
                    Ok(conn) => conn,
                    Err(e) => {
                        let until = crate::clock::now_ms() + FAIL_FAST.as_millis() as u64;
                        self.failing_until_ms.store(until, Ordering::Release);
                        return Err(e.into());
                    }
                };
                *guard = Some(conn.clone());
                conn
            }
        };
        Ok(Conn { conn, slot })
    }

    /// Runs a pipeline of `EVALSHA` calls of `script`; when Redis no longer knows the
    /// script (restarted, `SCRIPT FLUSH`), loads it and runs the pipeline again. Only
    /// for scripts that are safe to repeat.
    pub async fn run_script(&self, script: &redis::Script, pipe: &Pipeline) -> Result<Vec<Value>, StoreError> {
        let mut conn = self.get().await?;
        match pipe.query_async(&mut conn).await {
            Ok(r) => Ok(r),
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                script.load_async(&mut conn).await?;
                Ok(pipe.query_async(&mut conn).await?)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// One use of a shared connection. A command that fails because the connection broke
/// (I/O error, timeout, closed by the server) empties the slot, so the next caller
/// opens a fresh one instead of failing on the dead one forever.
pub struct Conn<'a> {
    conn: MultiplexedConnection,
    slot: &'a Mutex<Option<MultiplexedConnection>>,
}

impl Conn<'_> {
    fn check<T>(&self, result: redis::RedisResult<T>) -> redis::RedisResult<T> {
        if let Err(e) = &result {
            if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error() {
                if let Ok(mut slot) = self.slot.try_lock() {
                    *slot = None;
                }
            }
        }
        result
    }
}

impl ConnectionLike for Conn<'_> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.conn.req_packed_command(cmd).await;
            self.check(result)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self.conn.req_packed_commands(pipeline, offset, count).await;
            self.check(result)
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

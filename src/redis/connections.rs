//! The Redis engine's connections for ordinary (non-blocking) commands, to one Redis
//! or to a Redis Cluster (`target.rs`), and the dedicated connections of blocking
//! readers.
//!
//! One Redis: a few multiplexed connections, opened on first use, used round robin,
//! and replaced when one breaks. A multiplexed connection pipelines every caller's
//! commands over one socket, so a handful carry any load; more than one spreads
//! reply parsing over the runtime's threads.
//!
//! A cluster: redis-rs' cluster client, which keeps one multiplexed connection per
//! node and routes each command by its key's slot, following `MOVED`/`ASK` and
//! failovers by itself. A pipeline must stay within one slot there, which is why the
//! store groups commands by partition (every key of a partition shares its slot).
//!
//! Blocking reads never use these (docs/ARCHITECTURE.md §4: a blocking `XREAD`
//! stalls every command queued behind it): [`Connections::dedicated`] opens a
//! connection of its own, to the master serving the reader's slot.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{AsyncConnectionConfig, Cmd, ErrorKind, Pipeline, RedisFuture, ServerErrorKind, Value};
use tokio::sync::Mutex;

use super::latency::CommandLatency;
use super::target::{self, NodeAddr, Target, TlsFiles};
use crate::engine::StoreError;

/// How many multiplexed connections ordinary commands share (one Redis).
const CONNECTIONS: usize = 4;
/// Response timeout for ordinary commands. redis-rs defaults to 500 ms for one
/// Redis (and to none for a cluster); a large XRANGE page on a busy server can
/// exceed the first, and the second would let an outage hang every request.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long opening a connection (TCP, TLS, AUTH) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// After a connection attempt fails, others fail at once for this long instead of
/// each waiting out its own connect timeout: during an outage requests answer 503
/// promptly rather than queueing behind one another's attempts.
const FAIL_FAST: Duration = Duration::from_secs(1);

// One per process: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Backend {
    Single {
        client: redis::Client,
        slots: Vec<Mutex<Option<MultiplexedConnection>>>,
        next: AtomicUsize,
    },
    Cluster {
        client: ClusterClient,
        conn: Mutex<Option<ClusterConnection>>,
    },
}

/// The shared connections.
pub struct Connections {
    target: Target,
    tls: TlsFiles,
    backend: Backend,
    /// Unix ms until which a new connection is not attempted (see [`FAIL_FAST`]).
    failing_until_ms: AtomicU64,
    /// Every command's answer time is recorded here.
    pub latency: Arc<CommandLatency>,
}

/// Connection settings with our timeouts; `response` must outlast any blocking read
/// made on the connection.
pub fn connection_config(response: Duration) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_response_timeout(Some(response))
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
}

impl Connections {
    /// Clients for `target`; nothing is connected yet.
    pub fn open(target: Target, tls: &TlsFiles, latency: Arc<CommandLatency>) -> Result<Connections, StoreError> {
        let backend = match &target {
            Target::Single(url) => Backend::Single {
                client: target::client(url, tls)?,
                slots: (0..CONNECTIONS).map(|_| Mutex::new(None)).collect(),
                next: AtomicUsize::new(0),
            },
            Target::Cluster { seeds, .. } => {
                let mut builder = ClusterClient::builder(seeds.iter().map(String::as_str))
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(COMMAND_TIMEOUT)
                    // A request may need a redirect or a slot-map refresh during a
                    // failover: bound the whole of it, not each attempt.
                    .overall_response_timeout(Some(COMMAND_TIMEOUT))
                    .retries(3);
                if let Some(certs) = target::certificates(tls)? {
                    builder = builder.certs(certs);
                }
                Backend::Cluster {
                    client: builder.build()?,
                    conn: Mutex::new(None),
                }
            }
        };
        Ok(Connections {
            target,
            tls: tls.clone(),
            backend,
            failing_until_ms: AtomicU64::new(0),
            latency,
        })
    }

    fn failing(&self) -> bool {
        crate::clock::now_ms() < self.failing_until_ms.load(Ordering::Acquire)
    }

    fn failed<T>(&self, e: redis::RedisError) -> Result<T, StoreError> {
        let until = crate::clock::now_ms() + FAIL_FAST.as_millis() as u64;
        self.failing_until_ms.store(until, Ordering::Release);
        Err(e.into())
    }

    /// A connection for a command or a pipeline (a cluster pipeline must stay in one
    /// slot); opened if need be.
    pub async fn get(&self) -> Result<Conn<'_>, StoreError> {
        match &self.backend {
            Backend::Single { client, slots, next } => {
                let index = next.fetch_add(1, Ordering::Relaxed) % slots.len();
                let slot = &slots[index];
                let mut guard = slot.lock().await;
                let conn = match &*guard {
                    Some(conn) => conn.clone(),
                    None => {
                        if self.failing() {
                            return Err(StoreError::Unreachable);
                        }
                        let opened = client
                            .get_multiplexed_async_connection_with_config(&connection_config(COMMAND_TIMEOUT))
                            .await;
                        let conn = match opened {
                            Ok(conn) => conn,
                            Err(e) => return self.failed(e),
                        };
                        *guard = Some(conn.clone());
                        conn
                    }
                };
                Ok(Conn {
                    handle: Handle::Single(conn, slot),
                    latency: &self.latency,
                })
            }
            Backend::Cluster { client, conn } => {
                let mut guard = conn.lock().await;
                let conn = match &*guard {
                    Some(conn) => conn.clone(),
                    None => {
                        if self.failing() {
                            return Err(StoreError::Unreachable);
                        }
                        let conn = match client.get_async_connection().await {
                            Ok(conn) => conn,
                            Err(e) => return self.failed(e),
                        };
                        *guard = Some(conn.clone());
                        conn
                    }
                };
                Ok(Conn {
                    handle: Handle::Cluster(conn),
                    latency: &self.latency,
                })
            }
        }
    }

    /// Runs a pipeline of `EVALSHA` calls of `scripts` (one slot, on a cluster); when
    /// Redis no longer knows one (restarted, `SCRIPT FLUSH`, a promoted replica that
    /// never loaded it), loads them all and runs the pipeline again. Only for scripts
    /// that are safe to repeat.
    pub async fn run_scripts(&self, scripts: &[&redis::Script], pipe: &Pipeline) -> Result<Vec<Value>, StoreError> {
        let mut conn = self.get().await?;
        match pipe.query_async(&mut conn).await {
            Ok(r) => Ok(r),
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                // On a cluster, SCRIPT LOAD goes to every master.
                for script in scripts {
                    script.load_async(&mut conn).await?;
                }
                Ok(pipe.query_async(&mut conn).await?)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A connection of its own, for a blocking reader of `slot`: to the Redis, or to
    /// the cluster master serving the slot now (then also its address). `response`
    /// must outlast the reader's block time.
    pub async fn dedicated(
        &self,
        slot: u16,
        response: Duration,
    ) -> Result<(MultiplexedConnection, Option<NodeAddr>), StoreError> {
        let config = connection_config(response);
        match &self.backend {
            Backend::Single { client, .. } => Ok((
                client.get_multiplexed_async_connection_with_config(&config).await?,
                None,
            )),
            Backend::Cluster { .. } => {
                let master = self.master_of(slot).await?;
                let url = self
                    .target
                    .node_url(&master.host, master.port)
                    .ok_or_else(|| StoreError::Protocol("no node URL".into()))?;
                let conn = target::client(&url, &self.tls)?
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                Ok((conn, Some(master)))
            }
        }
    }

    /// The master serving `slot`, as the cluster says now.
    pub async fn master_of(&self, slot: u16) -> Result<NodeAddr, StoreError> {
        let map = self.slot_map().await?;
        map.into_iter()
            .find(|(range, _)| range.contains(&slot))
            .map(|(_, master)| master)
            .ok_or_else(|| StoreError::Protocol(format!("no master serves slot {slot}")))
    }

    /// `CLUSTER SLOTS`: each slot range and its master.
    async fn slot_map(&self) -> Result<Vec<(std::ops::RangeInclusive<u16>, NodeAddr)>, StoreError> {
        let mut conn = self.get().await?;
        // A master's view, not a replica's (a replica may be the node that is cut off).
        let reply = match &mut conn.handle {
            Handle::Cluster(c) => {
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary);
                c.route_command(redis::cmd("CLUSTER").arg("SLOTS").clone(), route)
                    .await?
            }
            Handle::Single(..) => redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut conn).await?,
        };
        super::reply::slot_ranges(&reply).ok_or_else(|| super::reply::protocol("CLUSTER SLOTS", &reply))
    }

    /// Every slot has a master, and every master answers (one Redis: it answers).
    /// What `/readyz` and the handshakes' health check mean by "Redis is up".
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.get().await?;
        match &self.backend {
            Backend::Single { .. } => {
                let _: String = redis::cmd("PING").query_async(&mut conn).await?;
            }
            Backend::Cluster { .. } => {
                let map = self.slot_map().await?;
                let covered: usize = map.iter().map(|(r, _)| r.clone().count()).sum();
                if covered < 16384 {
                    return Err(StoreError::Protocol(format!(
                        "{} of 16384 slots have no master",
                        16384 - covered
                    )));
                }
                let mut masters: Vec<NodeAddr> = map.into_iter().map(|(_, m)| m).collect();
                masters.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
                masters.dedup();
                for master in masters {
                    let answer = conn.on(&master, redis::cmd("PING")).await;
                    if let Err(e) = answer {
                        return Err(StoreError::Protocol(format!("master {master} does not answer: {e}")));
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs `cmd` on one node: the cluster node at `addr`, or the one Redis.
    pub async fn on_node(&self, addr: Option<&NodeAddr>, cmd: Cmd) -> Result<Value, StoreError> {
        let mut conn = self.get().await?;
        match addr {
            Some(addr) => Ok(conn.on(addr, cmd).await?),
            None => Ok(cmd.query_async(&mut conn).await?),
        }
    }
}

enum Handle<'a> {
    Single(MultiplexedConnection, &'a Mutex<Option<MultiplexedConnection>>),
    Cluster(ClusterConnection),
}

/// One use of a shared connection. A command that fails because the connection broke
/// (I/O error, timeout, closed by the server) empties its slot, so the next caller
/// opens a fresh one instead of failing on the dead one forever. (The cluster client
/// reconnects to its nodes by itself.)
pub struct Conn<'a> {
    handle: Handle<'a>,
    latency: &'a CommandLatency,
}

impl Conn<'_> {
    fn check<T>(&self, result: redis::RedisResult<T>) -> redis::RedisResult<T> {
        if let (Err(e), Handle::Single(_, slot)) = (&result, &self.handle) {
            if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error() {
                if let Ok(mut slot) = slot.try_lock() {
                    *slot = None;
                }
            }
        }
        result
    }

    /// Runs `cmd` on the cluster node at `addr` (one Redis: on it).
    async fn on(&mut self, addr: &NodeAddr, cmd: Cmd) -> redis::RedisResult<Value> {
        match &mut self.handle {
            Handle::Single(conn, _) => cmd.query_async(conn).await,
            Handle::Cluster(conn) => {
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: addr.host.clone(),
                    port: addr.port,
                });
                conn.route_command(cmd, route).await
            }
        }
    }
}

impl ConnectionLike for Conn<'_> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let started = Instant::now();
            let result = match &mut self.handle {
                Handle::Single(conn, _) => conn.req_packed_command(cmd).await,
                Handle::Cluster(conn) => conn.req_packed_command(cmd).await,
            };
            self.latency.command(cmd, started.elapsed());
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
            let started = Instant::now();
            let result = match &mut self.handle {
                Handle::Single(conn, _) => conn.req_packed_commands(pipeline, offset, count).await,
                Handle::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count).await,
            };
            self.latency.pipeline(pipeline, started.elapsed());
            self.check(result)
        })
    }

    fn get_db(&self) -> i64 {
        match &self.handle {
            Handle::Single(conn, _) => conn.get_db(),
            Handle::Cluster(conn) => conn.get_db(),
        }
    }
}

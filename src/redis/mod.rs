//! The Redis engine: everything tickstream knows about Redis lives in this room
//! (docs/ARCHITECTURE.md §6, §13). On one Redis or a Redis Cluster: one capped
//! stream per channel in a partitioned keyspace ([`keyspace`]), the append script
//! (`redis/append.lua`), shared connections for ordinary commands ([`connections`])
//! and one dedicated connection per partition reader ([`tail`]).
//!
//! - [`target`]: one Redis or a cluster, from `REDIS_URL`, with its TLS files.
//! - [`connections`]: the shared connections, scripts by `EVALSHA` (reloaded on
//!   `NOSCRIPT`), a command on a given cluster node.
//! - [`reply`]: reading Redis replies into ticks, ids and slot maps.
//! - [`latency`]: `tickstream_redis_command_duration_seconds` by command.
//! - `contract.rs`: the engine contract (`engine::Engine`) kept by the pieces below.
//! - [`append`]: the append pipeline (dedup, `seq`, candles, births, fences).
//! - [`reads`]: ranges, a stream's ends and info, the channel list.
//! - [`tail`]: the partition readers' blocking reads.
//! - [`failover`]: noticing a stream that a failover rolled back, and moving it to
//!   its next epoch (`redis/rollback.lua`).
//! - [`candles`]: reading candles, and rebuilding them from the streams.
//!
//! Commands that touch several channels (an ingest batch, the channel list) are
//! grouped by partition and sent as one pipeline per partition, concurrently: every
//! key of a partition shares one cluster slot, and a cluster pipeline must stay in
//! one slot. On one Redis the pipelines share its multiplexed connections.

pub mod append;
pub mod candles;
pub mod connections;
mod contract;
pub mod failover;
pub mod keyspace;
pub mod latency;
pub mod reads;
pub mod reply;
pub mod tail;
pub mod target;

use std::sync::Arc;

use self::connections::Connections;
use self::keyspace::ChannelKeys;
use self::latency::CommandLatency;
use self::reply::Unreadable;
use self::target::{Target, TlsFiles};
use crate::engine::{Settings, StoreError};

/// Where the partition count was recorded before keys outside partitions got hash
/// tags of their own; still read, so an upgrade keeps the safety check.
const LEGACY_PARTITIONS_KEY: &str = "tickstream:partitions";

pub struct RedisEngine {
    /// Shared with the rate limiter and the node registry, which keep keys of their
    /// own in the same Redis (handed to them by the wiring).
    connections: Arc<Connections>,
    /// With `TICKSTREAM_REDIS_WAIT`, ingests append and `WAIT` on connections of
    /// their own: Redis runs nothing else of a connection while it waits, so a `WAIT`
    /// on the shared ones would hold up every read and rate-limit call queued behind
    /// it (up to its 1 s timeout when a replica is away).
    waiting: Option<Connections>,
    append_script: redis::Script,
    rollback_script: redis::Script,
    /// `redis/probe.lua`: a channel's existence and its partition's last birth.
    probe_script: redis::Script,
    settings: Settings,
    unreadable: Unreadable,
    /// `tickstream_rollbacks_total`.
    rollbacks: prometheus::IntCounter,
}

impl RedisEngine {
    /// Connects, checks the deployment's partition count and loads the scripts. The
    /// first command proves the URL, credentials and TLS, so start-up names what is
    /// wrong (`WRONGPASS`, an unknown certificate issuer) instead of failing later.
    /// `unreadable` counts stream entries that cannot be read as ticks.
    pub async fn connect(
        target: Target,
        tls: &TlsFiles,
        settings: Settings,
        unreadable: prometheus::IntCounter,
        rollbacks: prometheus::IntCounter,
        latency: prometheus::HistogramVec,
    ) -> Result<RedisEngine, StoreError> {
        let latency = Arc::new(CommandLatency::new(latency));
        let waiting = match settings.wait_replicas {
            0 => None,
            _ => Some(Connections::open(target.clone(), tls, latency.clone())?),
        };
        let store = RedisEngine {
            connections: Arc::new(Connections::open(target, tls, latency)?),
            waiting,
            append_script: redis::Script::new(include_str!("../../redis/append.lua")),
            rollback_script: redis::Script::new(include_str!("../../redis/rollback.lua")),
            probe_script: redis::Script::new(include_str!("../../redis/probe.lua")),
            settings,
            unreadable: Unreadable::new(unreadable),
            rollbacks,
        };
        let partitions = settings.partitions;
        let mut conn = store.connections.get().await?;
        // Changing the partition count would silently move every channel to other
        // keys: record it at first start and refuse a different value afterwards.
        // (The legacy key has no hash tag: on a cluster it lives in another slot.)
        let legacy: Option<u32> = redis::cmd("GET")
            .arg(LEGACY_PARTITIONS_KEY)
            .query_async(&mut conn)
            .await?;
        let recorded: Option<u32> = get_or_set(&mut conn, keyspace::PARTITIONS, partitions).await?;
        for recorded in [legacy, recorded].into_iter().flatten() {
            if recorded != partitions {
                return Err(StoreError::Config(format!(
                    "TICKSTREAM_PARTITIONS: this Redis holds a deployment with {recorded} partitions; \
                     starting with {partitions} would orphan its data"
                )));
            }
        }
        // On a cluster SCRIPT LOAD reaches every master; a replica promoted later
        // answers NOSCRIPT once and gets the script then.
        store.append_script.load_async(&mut conn).await?;
        store.rollback_script.load_async(&mut conn).await?;
        store.probe_script.load_async(&mut conn).await?;
        store.connections.latency.name_script(&store.append_script, "append");
        store
            .connections
            .latency
            .name_script(&store.rollback_script, "rollback");
        store.connections.latency.name_script(&store.probe_script, "probe");
        Ok(store)
    }

    /// The shared connections, for the components that keep keys of their own beside
    /// the streams (the node registry, the rate limiter).
    pub fn connections(&self) -> Arc<Connections> {
        self.connections.clone()
    }

    pub(crate) fn keys(&self, channel: &str) -> ChannelKeys {
        ChannelKeys::new(channel, self.settings.partitions)
    }
}

/// `key`'s value, first set to `value` if it has none: whoever comes first decides,
/// in one round trip.
pub(crate) async fn get_or_set<T: redis::FromRedisValue>(
    conn: &mut (impl redis::aio::ConnectionLike + Send),
    key: &str,
    value: impl redis::ToRedisArgs,
) -> Result<T, StoreError> {
    let (now,): (T,) = redis::pipe()
        .cmd("SET")
        .arg(key)
        .arg(value)
        .arg("NX")
        .ignore()
        .cmd("GET")
        .arg(key)
        .query_async(conn)
        .await?;
    Ok(now)
}

/// Adds the read of `stream`'s newest entry to `pipe`.
pub(crate) fn newest_entry(pipe: &mut redis::Pipeline, stream: &str) {
    pipe.cmd("XREVRANGE").arg(stream).arg("+").arg("-").arg("COUNT").arg(1);
}

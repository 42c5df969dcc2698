//! The node registry: every tickstream node on one Redis heartbeats its id, address
//! and connection count into a sorted set, so operators (and `GET /api/v1/nodes`) see
//! which nodes serve. Entries not refreshed for [`STALE_AFTER`] are pruned by
//! whichever node heartbeats next, so a node killed with SIGKILL disappears by itself.
//! With the memory engine there is nothing to share: the list is this node.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::clock::now_ms;
use crate::engine::StoreError;
use crate::metrics::Metrics;
use crate::redis::connections::Connections;
use crate::redis::keyspace;

/// How often a node heartbeats.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// A node silent this long is gone.
pub const STALE_AFTER: Duration = Duration::from_secs(30);

/// One node as listed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    pub address: String,
    pub connections: i64,
    /// Unix ms.
    pub started: u64,
    /// Unix ms of the last heartbeat.
    pub last_seen: u64,
}

/// This node.
pub struct Node {
    pub id: String,
    pub address: String,
    pub started: u64,
    metrics: Arc<Metrics>,
    /// Where the registry lives (`None`: the memory engine; the list is this node).
    redis: Option<Arc<Connections>>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Node {
    pub fn new(address: String, metrics: Arc<Metrics>, redis: Option<Arc<Connections>>) -> Node {
        use rand::RngCore;
        Node {
            id: format!("node-{:08x}", rand::rng().next_u32()),
            address,
            started: now_ms(),
            metrics,
            redis,
        }
    }

    /// How other nodes and operators can reach a node bound to `bound`: the bound
    /// address, or the host's name when bound to every interface (`0.0.0.0:8080`
    /// says nothing).
    pub fn advertised_address(bound: std::net::SocketAddr) -> String {
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

    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            id: self.id.clone(),
            address: self.address.clone(),
            connections: self.metrics.connections.get(),
            started: self.started,
            last_seen: now_ms(),
        }
    }

    /// Heartbeats until shutdown, then removes this node's entry.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let Some(redis) = self.redis.as_deref() else {
            return;
        };
        loop {
            // A failed heartbeat is retried at the next beat; the outage itself is
            // reported by the readers and /readyz.
            let _ = heartbeat(redis, &self.info()).await;
            tokio::select! {
                _ = tokio::time::sleep(HEARTBEAT) => {}
                _ = shutdown.changed() => break,
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), deregister(redis, &self.id)).await;
    }

    /// Every live node; with the memory engine, just this one.
    pub async fn list(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let mut nodes = match self.redis.as_deref() {
            Some(redis) => live_nodes(redis).await?,
            None => Vec::new(),
        };
        if !nodes.iter().any(|n| n.id == self.id) {
            nodes.push(self.info());
        }
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }
}

/// Records a heartbeat and prunes nodes silent for [`STALE_AFTER`].
async fn heartbeat(redis: &Connections, node: &NodeInfo) -> Result<(), StoreError> {
    let now = now_ms();
    let cutoff = now.saturating_sub(millis(STALE_AFTER));
    let key = keyspace::node(&node.id);
    let mut conn = redis.get().await?;
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg(&key)
        .arg("address")
        .arg(&node.address)
        .arg("connections")
        .arg(node.connections)
        .arg("started")
        .arg(node.started)
        .ignore()
        .cmd("PEXPIRE")
        .arg(&key)
        .arg(millis(STALE_AFTER))
        .ignore()
        .cmd("ZADD")
        .arg(keyspace::NODES)
        .arg(now)
        .arg(&node.id)
        .ignore()
        .cmd("ZREMRANGEBYSCORE")
        .arg(keyspace::NODES)
        .arg("-inf")
        .arg(format!("({cutoff}"))
        .ignore()
        .query_async(&mut conn)
        .await?;
    Ok(())
}

/// Removes a node's entry (graceful shutdown).
async fn deregister(redis: &Connections, id: &str) -> Result<(), StoreError> {
    let mut conn = redis.get().await?;
    let _: () = redis::pipe()
        .cmd("ZREM")
        .arg(keyspace::NODES)
        .arg(id)
        .ignore()
        .cmd("DEL")
        .arg(keyspace::node(id))
        .ignore()
        .query_async(&mut conn)
        .await?;
    Ok(())
}

/// Nodes heard from within [`STALE_AFTER`].
async fn live_nodes(redis: &Connections) -> Result<Vec<NodeInfo>, StoreError> {
    let cutoff = now_ms().saturating_sub(millis(STALE_AFTER));
    let mut conn = redis.get().await?;
    let ids: Vec<(String, u64)> = redis::cmd("ZRANGE")
        .arg(keyspace::NODES)
        .arg(cutoff)
        .arg("+inf")
        .arg("BYSCORE")
        .arg("WITHSCORES")
        .query_async(&mut conn)
        .await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for (id, _) in &ids {
        pipe.cmd("HGETALL").arg(keyspace::node(id));
    }
    let details: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
    Ok(ids
        .into_iter()
        .zip(details)
        .map(|((id, last_seen), d)| NodeInfo {
            id,
            address: d.get("address").cloned().unwrap_or_default(),
            connections: d.get("connections").and_then(|c| c.parse().ok()).unwrap_or(0),
            started: d.get("started").and_then(|c| c.parse().ok()).unwrap_or(0),
            last_seen,
        })
        .collect())
}

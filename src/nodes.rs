//! The node registry: every tickstream node on one Redis heartbeats its id, address
//! and connection count into a sorted set, so operators (and `GET /api/v1/nodes`) see
//! which nodes serve. Entries not refreshed for [`STALE_AFTER`] are pruned by
//! whichever node heartbeats next, so a node killed with SIGKILL disappears by itself.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::store::Store;
use crate::tick::now_ms;

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
}

impl Node {
    pub fn new(address: String, metrics: Arc<Metrics>) -> Node {
        use rand::RngCore;
        Node {
            id: format!("node-{:08x}", rand::rng().next_u32()),
            address,
            started: now_ms(),
            metrics,
        }
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
    pub async fn run(self: Arc<Self>, store: Store, mut shutdown: watch::Receiver<bool>) {
        loop {
            // A failed heartbeat is retried at the next beat; the outage itself is
            // reported by the readers and /readyz.
            let _ = store.heartbeat(&self.info(), STALE_AFTER).await;
            tokio::select! {
                _ = tokio::time::sleep(HEARTBEAT) => {}
                _ = shutdown.changed() => break,
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), store.deregister(&self.id)).await;
    }

    /// Every live node; with the memory engine, just this one.
    pub async fn list(&self, store: &Store) -> Result<Vec<NodeInfo>, crate::store::StoreError> {
        let mut nodes = store.nodes(STALE_AFTER).await?;
        if !nodes.iter().any(|n| n.id == self.id) {
            nodes.push(self.info());
        }
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }
}

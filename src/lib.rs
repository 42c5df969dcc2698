//! tickstream: a WebSocket fan-out server for high-frequency ticks, backed by Redis
//! streams.
//!
//! The map: each module is one concept; start-up first, then the path of a tick
//! from producer to client, then what every request passes through
//! (docs/ARCHITECTURE.md opens with a "where is X" table).
//!
//! - [`config`]: environment, `.env` and CLI flags, validated once at start-up.
//! - [`server`]: the wiring: opens the engine, builds everything around it, serves,
//!   shuts down gracefully; `candles rebuild`'s work.
//! - [`tick`]: what a tick is: stream ids and `since` cursors, the ingest body and its
//!   validation, event ids, epochs, the wire JSON.
//! - [`ingest`]: the append service (validate, append behind the rollback fences,
//!   count), called by the HTTP handler and the demo.
//! - [`engine`]: the engine contract every store keeps, written on one trait, and the
//!   embedded memory engine.
//! - [`redis`]: the Redis engine, on one Redis or a Cluster: connections, cluster
//!   topology, replies, the keyspace, the append, tail readers, failover, candles.
//! - [`health`]: whether the store answers (one ping a second per node).
//! - [`hub`]: per node, one reader per partition; each tick serialized once and
//!   delivered from the channel: written straight to caught-up WebSocket
//!   subscribers, broadcast to the others; conflation; live candle feeds.
//! - [`framing`]: WebSocket server frames, encoded once for every socket.
//! - [`session`]: a client's subscriptions, transport-free (cursor, replay, budget,
//!   writer), and its transports: WebSocket (with its framing) and Server-Sent Events.
//! - [`page_cache`]: recent history in memory for REST pages.
//! - [`candles`]: OHLCV candles of `value`: intervals, the fold, retention.
//! - [`auth`]: who is asking (JWT, the HMAC-signed handshake, the ingest token) and
//!   what they may read and write; [`acl`]: channel and Origin patterns.
//! - [`ratelimit`]: token buckets per subject and group (shared in Redis), the per-IP
//!   flood shield, the client's address.
//! - [`http`]: the accept loop, admission, extractors, routes; handlers are thin
//!   adapters over the services above.
//! - [`error`]: the error policy; errors become HTTP answers in one place, and their
//!   cause reaches the request's log line.
//! - [`demo`]: `--demo`'s synthetic channels, fed through the append service.
//! - [`nodes`]: the registry of nodes sharing one Redis (heartbeats).
//! - [`metrics`]: Prometheus metrics, one registry per server.
//! - [`retry`], [`clock`]: backoff and quiet error logs; the one clock.
//!
//! [`run`] starts a server and serves until the shutdown future completes; tests use
//! [`Server::bind`] to learn the port before serving.

pub mod acl;
pub(crate) mod auth;
pub mod candles;
pub mod clock;
pub mod config;
pub(crate) mod demo;
pub(crate) mod engine;
pub(crate) mod error;
pub(crate) mod framing;
pub(crate) mod health;
pub(crate) mod http;
pub(crate) mod hub;
pub(crate) mod ingest;
pub(crate) mod metrics;
pub(crate) mod nodes;
pub(crate) mod page_cache;
pub mod ratelimit;
pub(crate) mod redis;
pub(crate) mod retry;
pub(crate) mod server;
pub mod session;
pub mod tick;

use std::future::Future;

pub use config::Config;
/// Every Redis key, and the partition function (tests and operators read them).
pub use redis::keyspace;
pub use server::rebuild::{rebuild_candles, RebuildError};
pub use server::{Server, StartError};

/// Starts a server from `config` and serves until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), StartError> {
    Server::bind(config).await?.run(shutdown).await
}

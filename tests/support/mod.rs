//! Test harness: private `redis-server` processes and in-process tickstream servers.
//!
//! Every test that touches storage gets its own `redis-server` on a free port with a
//! temporary directory (never the shared one on 6379), so tests run in parallel and
//! can stop, kill and restart Redis. Servers start in-process through
//! `tickstream::Server::bind` on port 0. Waits are on conditions with deadlines,
//! never bare sleeps.

#![allow(dead_code)]

mod app;
pub mod candles;
mod checks;
pub mod cluster;
mod node;
mod ports;
pub mod property;
pub mod raw;
mod redis_server;
mod sse;
mod ws;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tickstream::keyspace::ChannelKeys;
use tickstream::ratelimit::{Group, Limits, Rate, Tier};
use tickstream::tick::StreamId;
use tickstream::Config;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

pub const SECRET: &str = "test-secret-0123456789abcdef";
pub const INGEST_TOKEN: &str = "test-ingest-token";
pub const TIMEOUT: Duration = Duration::from_secs(20);

// Each test binary uses a part of the harness.
#[allow(unused_imports)]
pub use app::*;
#[allow(unused_imports)]
pub use checks::*;
#[allow(unused_imports)]
pub use node::*;
#[allow(unused_imports)]
pub use ports::*;
#[allow(unused_imports)]
pub use redis_server::*;
#[allow(unused_imports)]
pub use sse::*;
#[allow(unused_imports)]
pub use ws::*;

/// Runs a scenario, an `async fn(Engine)`, on both engines as two tests: `NAME::memory`
/// and `NAME::redis` (`cargo test NAME` runs both). `both_engines!(scenario)` names
/// the module after the scenario; `both_engines!(name, scenario)` otherwise.
#[allow(unused_macros)]
macro_rules! both_engines {
    ($scenario:ident) => {
        $crate::support::both_engines!($scenario, $scenario);
    };
    ($name:ident, $scenario:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$scenario($crate::support::Engine::Memory).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$scenario($crate::support::Engine::redis()).await;
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use both_engines;

//! OHLCV candles of a channel's `value` (docs/PROTOCOL.md §6 "Candles"): what a candle
//! is and how ticks fold into it — one definition, used by the memory engine, the
//! rebuild, the reads of both engines and (mirrored in Lua) `redis/append.lua`.
//!
//! - [`interval`]: the five intervals, their UTC-aligned buckets and retention.
//! - [`candle`]: one candle, the fold of a tick, the merge of two, and the compact
//!   text a Redis sorted set stores it as.
//! - [`book`]: a channel's candles of every interval in memory, with retention (the
//!   memory engine; the rebuild).
//!
//! Where candles meet the rest (each piece in the room whose job it is): stored and
//! read by the Redis engine in `redis/candles.rs` (folded by `redis/append.lua`) and
//! by the memory engine through [`book`]; sent live by the hub's feeds
//! (`hub/candle_feed.rs`); paged over REST by `http/candles.rs`; rebuilt by
//! `tickstream candles rebuild` (`server/rebuild.rs`).
//!
//! Open and close are decided by the tick's `ts` and, for equal `ts`, by its stream id
//! (first appended opens, last appended closes), so folding is the same whatever the
//! order ticks arrive in: a late tick updates its own older bucket exactly.

pub mod book;
pub mod candle;
pub mod interval;

pub use book::{Book, Order, Query, Span};
pub use candle::Candle;
pub use interval::{CandleSettings, Interval};

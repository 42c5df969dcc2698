//! The Redis engine's side of the engine contract (`engine::Engine`): each promise
//! kept by the piece of this room that owns it.

use std::sync::Arc;

use async_trait::async_trait;

use super::{get_or_set, keyspace, tail, RedisEngine};
use crate::candles::{Candle, Query};
use crate::engine::{
    Appended, ChannelSummary, Engine, Fence, Fences, IdRange, LastStored, Probe, RangeRead, StoreError, StreamEnds,
    StreamInfo, Tail, TailWaker,
};
use crate::tick::{PreparedTick, StreamId};

#[async_trait]
impl Engine for RedisEngine {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn append(&self, ticks: &[PreparedTick], fences: &dyn Fences) -> Result<Vec<Appended>, StoreError> {
        RedisEngine::append(self, ticks, fences).await
    }

    async fn probe(&self, channel: &str) -> Result<Probe, StoreError> {
        RedisEngine::probe(self, channel).await
    }

    async fn info(&self, channel: &str) -> Result<Option<StreamInfo>, StoreError> {
        RedisEngine::info(self, channel).await
    }

    async fn read_entries(
        &self,
        channel: &str,
        range: IdRange,
        count: usize,
        descending: bool,
    ) -> Result<RangeRead, StoreError> {
        RedisEngine::read_entries(self, channel, range, count, descending).await
    }

    async fn ends(&self, channel: &str) -> Result<StreamEnds, StoreError> {
        RedisEngine::ends(self, channel).await
    }

    async fn epoch(&self, channel: &str) -> Result<Option<String>, StoreError> {
        RedisEngine::epoch(self, channel).await
    }

    async fn channel_names(&self) -> Result<Vec<String>, StoreError> {
        RedisEngine::channel_names(self).await
    }

    async fn summaries(&self, names: &[String]) -> Result<Vec<ChannelSummary>, StoreError> {
        RedisEngine::summaries(self, names).await
    }

    async fn candles(&self, channel: &str, q: Query) -> Result<Vec<Candle>, StoreError> {
        RedisEngine::candles(self, channel, q).await
    }

    async fn rebuild_candles(&self, channel: &str) -> Result<usize, StoreError> {
        RedisEngine::rebuild_candles(self, channel).await
    }

    async fn last_stored(&self, channels: &[Arc<str>]) -> Result<Vec<LastStored>, StoreError> {
        RedisEngine::last_stored(self, channels).await
    }

    async fn roll_back_behind(
        &self,
        delivered: &[(Arc<str>, Fence)],
        rolled: &mut (dyn FnMut(Arc<str>, StreamId) + Send),
    ) -> Result<(), StoreError> {
        RedisEngine::roll_back_behind(self, delivered, rolled).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.connections.ping().await
    }

    async fn dev_secret(&self, candidate: String) -> Result<String, StoreError> {
        let mut conn = self.connections.get().await?;
        get_or_set(&mut conn, keyspace::DEV_SECRET, candidate).await
    }

    fn tail(self: Arc<Self>, partition: u32, waker: Arc<TailWaker>) -> Box<dyn Tail> {
        Box::new(tail::RedisTail::new(self, partition, waker))
    }
}

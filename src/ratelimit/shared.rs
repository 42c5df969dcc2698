//! The buckets kept in Redis, shared by every node: one `EVALSHA` of
//! `redis/token_bucket.lua` per check (docs/ARCHITECTURE.md "Admission"). The script
//! does the same arithmetic as `bucket.rs`, with Redis's clock.

use std::time::Duration;

use super::bucket::Decision;
use super::Rate;
use crate::engine::StoreError;
use crate::redis::connections::Connections;

pub struct SharedBuckets {
    script: redis::Script,
}

impl Default for SharedBuckets {
    fn default() -> Self {
        SharedBuckets {
            script: redis::Script::new(include_str!("../../redis/token_bucket.lua")),
        }
    }
}

impl SharedBuckets {
    /// Loads the script (at start-up; after a Redis restart the NOSCRIPT fallback of
    /// [`SharedBuckets::take`] loads it again).
    pub async fn load(&self, redis: &Connections) -> Result<(), StoreError> {
        let mut conn = redis.get().await?;
        self.script.load_async(&mut conn).await?;
        redis.latency.name_script(&self.script, "token_bucket");
        Ok(())
    }

    /// Takes `cost` tokens from the bucket at `key`.
    pub async fn take(&self, redis: &Connections, key: &str, rate: &Rate, cost: u32) -> Result<Decision, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("EVALSHA")
            .arg(self.script.get_hash())
            .arg(1)
            .arg(key)
            .arg(rate.interval_us())
            .arg(rate.burst)
            .arg(cost);
        let replies = redis.run_scripts(&[&self.script], &pipe).await?;
        let reply = replies
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::Protocol("no bucket reply".into()))?;
        let (allowed, remaining, retry_us): (i64, u64, u64) =
            redis::from_redis_value(reply).map_err(|e| StoreError::Protocol(format!("bucket reply: {e}")))?;
        Ok(Decision {
            allowed: allowed == 1,
            limit: rate.burst,
            remaining,
            retry_after: Duration::from_micros(retry_us),
        })
    }
}

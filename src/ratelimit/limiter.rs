//! The check a request makes: the subject's bucket of its group, in Redis so every
//! node shares it, or in this node's memory while Redis does not answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::bucket::{Decision, LocalBuckets};
use super::shared::SharedBuckets;
use super::{Group, Limits, Rate, Subject, Tier};
use crate::engine::StoreError;
use crate::health::StoreHealth;
use crate::metrics::Metrics;
use crate::redis::connections::Connections;

/// How long a check waits for Redis before deciding locally.
const REDIS_WAIT: Duration = Duration::from_millis(500);
/// After Redis failed a check, checks stay local this long before trying it again.
const LOCAL_AFTER_FAILURE_MS: u64 = 1_000;

/// The shared limiter.
pub struct RateLimiter {
    limits: Limits,
    /// The Redis that holds the shared buckets (`None`: the memory engine, whose
    /// node is alone; buckets stay in this node's memory).
    redis: Option<Arc<Connections>>,
    health: Arc<StoreHealth>,
    local: LocalBuckets,
    shared: SharedBuckets,
    /// Unix ms until which checks are local because Redis just failed one.
    local_until_ms: AtomicU64,
    metrics: Arc<Metrics>,
}

impl RateLimiter {
    pub fn new(
        limits: Limits,
        redis: Option<Arc<Connections>>,
        health: Arc<StoreHealth>,
        metrics: Arc<Metrics>,
    ) -> RateLimiter {
        RateLimiter {
            limits,
            redis,
            health,
            local: LocalBuckets::default(),
            shared: SharedBuckets::default(),
            local_until_ms: AtomicU64::new(0),
            metrics,
        }
    }

    /// Loads the bucket script into the shared store, if there is one.
    pub async fn prepare(&self) -> Result<(), StoreError> {
        match &self.redis {
            Some(redis) => self.shared.load(redis).await,
            None => Ok(()),
        }
    }

    /// Takes `cost` tokens of `group` for `subject`. `None` when the tier is unlimited
    /// (no headers either); otherwise the decision, refused or not, which the caller
    /// answers with. Refusals are counted here.
    pub async fn check(&self, subject: Subject<'_>, tier: Tier, group: Group, cost: u32) -> Option<Decision> {
        if tier == Tier::Internal {
            return None;
        }
        let rate = self.limits.get(tier, group)?;
        let key_subject = subject.key_part();
        let decision = if cost > rate.burst {
            // Can never succeed: say when a full bucket would be back, take nothing.
            Decision {
                allowed: false,
                limit: rate.burst,
                remaining: 0,
                retry_after: Duration::from_micros((f64::from(rate.burst) * rate.interval_us()) as u64),
            }
        } else {
            match self.shared(&key_subject, group, &rate, cost).await {
                Some(d) => d,
                None => self
                    .local
                    .take(&key_subject, group, &rate, crate::clock::now_us() as f64, cost),
            }
        };
        if !decision.allowed {
            self.metrics.rate_limited.with_label_values(&[group.name()]).inc();
        }
        Some(decision)
    }

    /// The shared bucket's answer, or `None` to decide locally (no Redis, Redis
    /// down or slow).
    async fn shared(&self, subject: &str, group: Group, rate: &Rate, cost: u32) -> Option<Decision> {
        let redis = self.redis.as_deref()?;
        if self.is_local() {
            return None;
        }
        let key = crate::redis::keyspace::rate_bucket(subject, group.name());
        let call = self.shared.take(redis, &key, rate, cost);
        match tokio::time::timeout(REDIS_WAIT, call).await {
            Ok(Ok(decision)) => Some(decision),
            Ok(Err(_)) | Err(_) => {
                self.metrics.redis_errors.inc();
                self.local_until_ms
                    .store(crate::clock::now_ms() + LOCAL_AFTER_FAILURE_MS, Ordering::Release);
                None
            }
        }
    }

    fn is_local(&self) -> bool {
        self.redis.is_none()
            || !self.health.is_up()
            || crate::clock::now_ms() < self.local_until_ms.load(Ordering::Acquire)
    }

    /// `"redis"` while buckets are shared, `"local"` while this node keeps them;
    /// refreshes the `tickstream_ratelimit_local` gauge.
    pub fn mode(&self) -> &'static str {
        let local = self.is_local();
        self.metrics.ratelimit_local.set(i64::from(local));
        if local {
            "local"
        } else {
            "redis"
        }
    }
}

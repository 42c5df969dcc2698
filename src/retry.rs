//! Living with a dependency that fails: exponential backoff with jitter, and log lines
//! that say a failure streak started, and ended, without repeating it many times a
//! second. Shared by everything that retries the store (readers, subscriptions, the
//! health check).

use std::future::Future;
use std::time::Duration;

use crate::metrics::Metrics;

/// Retries a store call with backoff until it succeeds: a subscription outlives a
/// Redis outage and continues where it was (the stream is the source of truth).
pub async fn until_ok<T, E, F, Fut>(metrics: &Metrics, mut call: F) -> T
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::default();
    let mut log = ErrorLog::default();
    loop {
        match call().await {
            Ok(v) => return v,
            Err(e) => {
                metrics.redis_errors.inc();
                if log.should_log() {
                    tracing::warn!(error = %e, "subscription: store unavailable, retrying");
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Exponential backoff with full jitter, 100 ms doubling to 5 s: reconnecting nodes
/// spread out instead of hammering a Redis that just came back.
#[derive(Debug, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn next_delay(&mut self) -> Duration {
        use rand::Rng;
        let cap = (100u64 << self.attempt.min(6)).min(5_000);
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_millis(rand::rng().random_range(cap / 2..=cap))
    }
}

/// Rate-limits a repeating error's log lines: the first, then one every 30 s.
#[derive(Debug, Default)]
pub struct ErrorLog {
    failing_since: Option<std::time::Instant>,
    last_logged: Option<std::time::Instant>,
}

impl ErrorLog {
    pub fn should_log(&mut self) -> bool {
        let now = std::time::Instant::now();
        self.failing_since.get_or_insert(now);
        match self.last_logged {
            Some(t) if now.duration_since(t) < Duration::from_secs(30) => false,
            _ => {
                self.last_logged = Some(now);
                true
            }
        }
    }

    /// True once after a failure streak ends.
    pub fn recovered(&mut self) -> bool {
        self.last_logged = None;
        self.failing_since.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_capped() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..20 {
            assert!(b.next_delay() <= Duration::from_secs(5));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn error_log_is_rate_limited() {
        let mut l = ErrorLog::default();
        assert!(l.should_log());
        assert!(!l.should_log());
        assert!(l.recovered());
        assert!(!l.recovered());
        assert!(l.should_log());
    }
}

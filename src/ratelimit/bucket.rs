//! The rate-limit arithmetic: a token bucket in its GCRA form, and the node-local
//! buckets used when Redis cannot answer.
//!
//! `redis/token_bucket.lua` runs the same arithmetic inside Redis (with Redis's
//! clock), so a client sees the same limits whichever one answers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::{Group, Rate};

/// What a check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The bucket's size (`X-RateLimit-Limit`).
    pub limit: u32,
    /// Whole tokens left after this request (`X-RateLimit-Remaining`).
    pub remaining: u64,
    /// When a refused request could succeed; zero when allowed.
    pub retry_after: Duration,
}

impl Decision {
    /// `Retry-After` in whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_micros().div_ceil(1_000_000).max(1) as u64
    }
}

/// One GCRA step. `tat` is the bucket's theoretical arrival time in microseconds (the
/// moment it is full again; `<= now` means full); returns the decision and the new
/// `tat` (unchanged when refused). Computed on the distance from `now`, as the Lua
/// script is, so both give the same answers (absolute microseconds leave a double no
/// fraction).
pub fn take(rate: &Rate, tat: f64, now: f64, cost: u32) -> (Decision, f64) {
    let interval = rate.interval_us();
    let window = f64::from(rate.burst) * interval;
    let ahead = (tat - now).max(0.0);
    // The epsilon keeps 19.999999 (float division) from reading as 19 tokens.
    let tokens = |ahead: f64| ((window - ahead) / interval + 1e-6).floor().max(0.0) as u64;
    let new_ahead = ahead + f64::from(cost) * interval;
    if new_ahead - window > 0.0 {
        let decision = Decision {
            allowed: false,
            limit: rate.burst,
            remaining: tokens(ahead),
            retry_after: Duration::from_micros((new_ahead - window).ceil() as u64),
        };
        return (decision, tat);
    }
    let decision = Decision {
        allowed: true,
        limit: rate.burst,
        remaining: tokens(new_ahead),
        retry_after: Duration::ZERO,
    };
    (decision, now + new_ahead)
}

/// Most subjects the local fallback remembers. Beyond it, full buckets are forgotten
/// first (a full bucket and no bucket are the same); if every one is in use, all are
/// forgotten. Memory stays bounded whatever subjects clients invent.
const LOCAL_SUBJECTS: usize = 100_000;

/// Node-local buckets with the same limits, for while Redis is unreachable.
#[derive(Default)]
pub struct LocalBuckets {
    buckets: Mutex<HashMap<(String, Group), f64>>,
}

impl LocalBuckets {
    pub fn take(&self, subject: &str, group: Group, rate: &Rate, now_us: f64, cost: u32) -> Decision {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let key = (subject.to_string(), group);
        let tat = buckets.get(&key).copied().unwrap_or(0.0);
        let (decision, new_tat) = take(rate, tat, now_us, cost);
        if decision.allowed {
            if buckets.len() >= LOCAL_SUBJECTS && !buckets.contains_key(&key) {
                buckets.retain(|_, tat| *tat > now_us);
                if buckets.len() >= LOCAL_SUBJECTS {
                    buckets.clear();
                }
            }
            buckets.insert(key, new_tat);
        }
        decision
    }

    pub fn len(&self) -> usize {
        self.buckets.lock().map_or(0, |b| b.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(raw: &str) -> Rate {
        Rate::parse(raw).unwrap().unwrap()
    }

    #[test]
    fn a_burst_then_one_per_interval() {
        let r = rate("60/m:3");
        let mut tat = 0.0;
        let now = 1_000_000_000.0;
        for left in [2, 1, 0] {
            let (d, t) = take(&r, tat, now, 1);
            assert!(d.allowed);
            assert_eq!(d.remaining, left);
            tat = t;
        }
        let (refused, t) = take(&r, tat, now, 1);
        assert!(!refused.allowed);
        assert_eq!(t, tat, "a refusal takes nothing");
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        assert_eq!(refused.retry_after_secs(), 1);
        // One interval later exactly one token is back.
        let (d, t) = take(&r, tat, now + 1_000_000.0, 1);
        assert!(d.allowed && d.remaining == 0);
        assert!(!take(&r, t, now + 1_000_000.0, 1).0.allowed);
    }

    #[test]
    fn a_cost_is_taken_whole_or_not_at_all() {
        let r = rate("10/s:10");
        let now = 5e12;
        let (d, tat) = take(&r, 0.0, now, 6);
        assert!(d.allowed && d.remaining == 4);
        let (d, same) = take(&r, tat, now, 5);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 4);
        assert_eq!(same, tat);
        assert_eq!(d.retry_after, Duration::from_millis(100));
        assert!(take(&r, tat, now, 4).0.allowed);
    }

    #[test]
    fn fractional_intervals_count_whole_tokens() {
        let r = rate("7/s:20");
        let (d, _) = take(&r, 0.0, 1e15, 1);
        assert_eq!(d.remaining, 19);
        assert_eq!(
            Decision {
                retry_after: Duration::from_micros(1),
                ..d
            }
            .retry_after_secs(),
            1
        );
        assert_eq!(
            Decision {
                retry_after: Duration::from_millis(59_001),
                ..d
            }
            .retry_after_secs(),
            60
        );
    }

    #[test]
    fn local_buckets_stay_bounded() {
        let b = LocalBuckets::default();
        let r = rate("1/h:1");
        for i in 0..LOCAL_SUBJECTS + 10 {
            assert!(b.take(&format!("s{i}"), Group::Api, &r, 1e12, 1).allowed);
        }
        assert!(b.len() <= LOCAL_SUBJECTS);
        assert!(
            !b.take(&format!("s{}", LOCAL_SUBJECTS + 9), Group::Api, &r, 1e12, 1)
                .allowed
        );
    }
}

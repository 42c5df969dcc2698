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
/// first (a full bucket and no bucket are the same); if that frees nothing, the
/// eighth of the subjects used least recently is forgotten, never all at once: a
/// flood of invented subjects cannot hand every busy client a fresh burst. Memory
/// stays bounded whatever subjects clients invent.
const LOCAL_SUBJECTS: usize = 100_000;

/// A local bucket: its theoretical arrival time and when it was last used.
#[derive(Clone, Copy)]
struct Local {
    tat: f64,
    /// The value of the use counter when this bucket was last asked.
    used: u64,
}

/// Node-local buckets with the same limits, for while Redis is unreachable.
#[derive(Default)]
pub struct LocalBuckets {
    buckets: Mutex<LocalMap>,
}

#[derive(Default)]
struct LocalMap {
    map: HashMap<(String, Group), Local>,
    /// Counts uses: the recency order of the buckets.
    uses: u64,
}

impl LocalMap {
    /// Makes room for one more bucket.
    fn make_room(&mut self, now_us: f64, capacity: usize) {
        self.map.retain(|_, b| b.tat > now_us);
        if self.map.len() < capacity {
            return;
        }
        let mut used: Vec<u64> = self.map.values().map(|b| b.used).collect();
        let evict = (capacity / 8).max(1).min(used.len());
        let (_, threshold, _) = used.select_nth_unstable(evict - 1);
        let threshold = *threshold;
        self.map.retain(|_, b| b.used > threshold);
    }
}

impl LocalBuckets {
    pub fn take(&self, subject: &str, group: Group, rate: &Rate, now_us: f64, cost: u32) -> Decision {
        self.take_within(subject, group, rate, now_us, cost, LOCAL_SUBJECTS)
    }

    fn take_within(
        &self,
        subject: &str,
        group: Group,
        rate: &Rate,
        now_us: f64,
        cost: u32,
        capacity: usize,
    ) -> Decision {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let key = (subject.to_string(), group);
        let tat = buckets.map.get(&key).map_or(0.0, |b| b.tat);
        let (decision, new_tat) = take(rate, tat, now_us, cost);
        buckets.uses += 1;
        let used = buckets.uses;
        if decision.allowed {
            if buckets.map.len() >= capacity && !buckets.map.contains_key(&key) {
                buckets.make_room(now_us, capacity);
            }
            buckets.map.insert(key, Local { tat: new_tat, used });
        } else if let Some(b) = buckets.map.get_mut(&key) {
            // A refused client is still a recent one: forgetting it would forgive it.
            b.used = used;
        }
        decision
    }

    pub fn len(&self) -> usize {
        self.buckets.lock().map_or(0, |b| b.map.len())
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

    #[test]
    fn a_full_fallback_forgets_the_least_recent_never_all() {
        let b = LocalBuckets::default();
        let r = rate("1/h:1");
        let cap = 64;
        let now = 1e12;
        // A busy client spends its one token, then a flood of invented subjects fills
        // the table while the busy client keeps trying (and keeps its bucket recent).
        assert!(b.take_within("busy", Group::Api, &r, now, 1, cap).allowed);
        for i in 0..10 * cap {
            assert!(b.take_within(&format!("flood{i}"), Group::Api, &r, now, 1, cap).allowed);
            assert!(b.len() <= cap);
            // Refused: its bucket is empty, and still remembered.
            assert!(!b.take_within("busy", Group::Api, &r, now, 1, cap).allowed, "after {i}");
        }
        // The flood's oldest subjects were forgotten, its newest are remembered.
        assert!(b.take_within("flood0", Group::Api, &r, now, 1, cap).allowed);
        assert!(
            !b.take_within(&format!("flood{}", 10 * cap - 1), Group::Api, &r, now, 1, cap)
                .allowed
        );
    }
}

//! A channel's candles of every interval, in memory: what the memory engine keeps,
//! and what `tickstream candles rebuild` folds a stream into before it merges the
//! result into Redis. Same retention rule as `redis/append.lua`: an interval keeps the
//! buckets newer than its newest bucket minus its retention.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Candle, CandleSettings, Interval};
use crate::tick::validate::parse_ts_us;
use crate::tick::{StreamId, Tick};

/// Which end of a page comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Asc,
    Desc,
}

/// Buckets whose start is in (`after`, `until`], Unix ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub after: Option<i64>,
    pub until: Option<i64>,
}

/// A read of candles: buckets of `interval` whose start is in `span`, `limit` at
/// most, in `order` (what every engine and caller passes along as one value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query {
    pub interval: Interval,
    pub span: Span,
    pub limit: usize,
    pub order: Order,
}

#[derive(Debug, Clone, Default)]
pub struct Book {
    sets: [BTreeMap<i64, Candle>; 5],
}

impl Book {
    /// Folds one stored tick into the candle of its bucket in every kept interval.
    pub fn add_tick(&mut self, settings: &CandleSettings, ts_us: i64, id: StreamId, value: &str, volume: Option<f64>) {
        for &interval in settings.intervals() {
            let start = interval.bucket(ts_us);
            let now = i64::try_from(id.ms).unwrap_or(i64::MAX);
            self.add(
                settings,
                interval,
                Candle::of_tick(start, ts_us, id, value, volume),
                now,
            );
        }
    }

    /// Folds a tick read back from a stream (a rebuild); a tick without `value`
    /// counts in no candle.
    pub fn add_stored(&mut self, settings: &CandleSettings, tick: &Tick) {
        let Ok(Value::Object(body)) = serde_json::from_str::<Value>(&format!("{{{}", tick.body)) else {
            return;
        };
        let (Some(ts), Some(value)) = (
            body.get("ts").and_then(Value::as_str).and_then(parse_ts_us),
            body.get("value").filter(|v| v.is_number()),
        ) else {
            return;
        };
        let volume = body.get("data").and_then(|d| d.get("volume")).and_then(Value::as_f64);
        self.add_tick(settings, ts, tick.id, &value.to_string(), volume);
    }

    /// Merges `candle` into its bucket, then drops what retention no longer keeps
    /// (`now_ms`: the time of the append, the tick's stream id).
    pub fn add(&mut self, settings: &CandleSettings, interval: Interval, candle: Candle, now_ms: i64) {
        let set = &mut self.sets[interval as usize];
        let newest = set.keys().next_back().map_or(candle.start, |&n| n.max(candle.start));
        let cutoff = settings.cutoff(interval, newest, now_ms);
        if candle.start > cutoff {
            match set.get_mut(&candle.start) {
                Some(existing) => existing.merge(&candle),
                None => {
                    set.insert(candle.start, candle);
                }
            }
        }
        // Everything at or before the cutoff goes (`split_off` keeps the rest).
        let kept = set.split_off(&cutoff.saturating_add(1));
        *set = kept;
    }

    /// Takes each of `rebuilt`'s candles in place of this book's candle of the same
    /// bucket, unless that one counts more ticks (it then also holds ticks the stream
    /// no longer has): the rule of a rebuild, the same as `redis/append.lua`'s.
    pub fn adopt(&mut self, settings: &CandleSettings, rebuilt: Book) {
        let now = i64::try_from(crate::clock::now_ms()).unwrap_or(i64::MAX);
        for (interval, set) in rebuilt.sets.into_iter().enumerate() {
            let ours = &mut self.sets[interval];
            for (start, candle) in set {
                if ours.get(&start).is_none_or(|c| c.count <= candle.count) {
                    ours.insert(start, candle);
                }
            }
            if let (Some(&newest), Some(&interval)) = (ours.keys().next_back(), Interval::ALL.get(interval)) {
                let kept = ours.split_off(&settings.cutoff(interval, newest, now).saturating_add(1));
                *ours = kept;
            }
        }
    }

    /// The candles `q` asks for.
    pub fn page(&self, q: Query) -> Vec<Candle> {
        let Query {
            interval,
            span,
            limit,
            order,
        } = q;
        let lo = span.after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        let hi = span.until.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Included);
        if let (std::ops::Bound::Excluded(a), std::ops::Bound::Included(u)) = (lo, hi) {
            if a >= u {
                return Vec::new();
            }
        }
        let range = self.sets[interval as usize].range((lo, hi)).map(|(_, c)| c.clone());
        match order {
            Order::Asc => range.take(limit).collect(),
            Order::Desc => range.rev().take(limit).collect(),
        }
    }

    /// Every candle of `interval`, oldest first.
    pub fn all(&self, interval: Interval) -> impl Iterator<Item = &Candle> {
        self.sets[interval as usize].values()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_rebuild_takes_the_candle_that_counted_more_ticks() {
        let settings = CandleSettings::default();
        let minute = |m: i64, s: i64| (m * 60 + s) * 1_000_000;
        // Stored: minute 0 counted 3 ticks (two since trimmed), minute 1 one tick.
        let mut stored = Book::default();
        for (n, (m, s)) in [(0, 1), (0, 2), (0, 3), (1, 5)].into_iter().enumerate() {
            stored.add_tick(&settings, minute(m, s), StreamId::new(1, n as u64), "1", None);
        }
        // Rebuilt from the stream: minute 0's last tick only, minute 1 with a tick
        // stored while candles were off, and minute 2 that had none.
        let mut rebuilt = Book::default();
        rebuilt.add_tick(&settings, minute(0, 3), StreamId::new(1, 2), "1", None);
        rebuilt.add_tick(&settings, minute(1, 1), StreamId::new(1, 0), "2", None);
        rebuilt.add_tick(&settings, minute(1, 5), StreamId::new(1, 3), "1", None);
        rebuilt.add_tick(&settings, minute(2, 0), StreamId::new(1, 4), "3", None);
        stored.adopt(&settings, rebuilt.clone());
        let counts: Vec<(i64, u64)> = stored.all(Interval::M1).map(|c| (c.start / 60_000, c.count)).collect();
        assert_eq!(counts, vec![(0, 3), (1, 2), (2, 1)]);
        // Again: nothing changes.
        let once = stored.clone();
        stored.adopt(&settings, rebuilt);
        assert_eq!(
            once.all(Interval::M1).collect::<Vec<_>>(),
            stored.all(Interval::M1).collect::<Vec<_>>()
        );
    }

    #[test]
    fn retention_keeps_what_is_newer_than_the_newest_minus_retention() {
        let mut settings = CandleSettings::default();
        settings.retention[Interval::M1 as usize] = Duration::from_secs(180);
        let mut book = Book::default();
        let at = |min: i64| min * 60_000_000;
        // Appended at 5 min (the id's ms is "now"): retention counts from 5.
        let id = |n: u64| StreamId::new(5 * 60_000, n);
        for (n, min) in [0, 1, 2, 3, 5].into_iter().enumerate() {
            book.add_tick(&settings, at(min), id(n as u64), "1", None);
        }
        let starts: Vec<i64> = book.all(Interval::M1).map(|c| c.start / 60_000).collect();
        assert_eq!(starts, vec![3, 5], "newest 5: buckets after 2 are kept");
        // A late tick past retention is not stored; one inside it is.
        book.add_tick(&settings, at(1), id(9), "1", None);
        book.add_tick(&settings, at(4), id(10), "1", None);
        // A tick dated a year ahead is kept, and trims nothing.
        book.add_tick(&settings, at(525_600), id(11), "1", None);
        let starts: Vec<i64> = book.all(Interval::M1).map(|c| c.start / 60_000).collect();
        assert_eq!(starts, vec![3, 4, 5, 525_600]);
        book = {
            let mut b = Book::default();
            for s in book.all(Interval::M1).filter(|c| c.start < 100 * 60_000) {
                b.add(&settings, Interval::M1, s.clone(), 5 * 60_000);
            }
            b
        };
        let starts: Vec<i64> = book.all(Interval::M1).map(|c| c.start / 60_000).collect();
        assert_eq!(starts, vec![3, 4, 5]);
        let span = Span {
            after: Some(3 * 60_000),
            until: Some(5 * 60_000),
        };
        let page: Vec<i64> = book
            .page(Query {
                interval: Interval::M1,
                span,
                limit: 10,
                order: Order::Desc,
            })
            .iter()
            .map(|c| c.start / 60_000)
            .collect();
        assert_eq!(page, vec![5, 4]);
        assert!(book
            .page(Query {
                interval: Interval::M1,
                span: Span {
                    after: Some(5),
                    until: Some(5)
                },
                limit: 10,
                order: Order::Asc
            })
            .is_empty());
    }
}

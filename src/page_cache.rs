//! A node-local cache of recent history for REST pages (docs/ARCHITECTURE.md §15).
//!
//! Ticks never change once stored, so a node can answer a page from memory when it
//! holds every entry the page needs. Each channel has at most one **segment**: the
//! ticks of every stream entry with id in `(low, high]`, of one epoch, in id order.
//! Segments are filled by the partition readers (live ticks of active channels) and
//! by the pages read from the engine (so history readers that are not subscribers are
//! served from memory from their second page on).
//!
//! Exactness does not rest on the cache being told about every change: each page
//! first asks the engine for the stream's ends (its first id, and its last entry with its
//! epoch: two `O(1)` reads in one round trip), and the cache answers only when
//! - the segment's epoch is the epoch of the stream's last entry (a new epoch or a
//!   rollback's successor never matches an older segment), and its `high` is not
//!   above the stream's last id (a failover that lost entries the segment holds);
//! - the segment covers the page: from the page's lower bound (raised to the stream's
//!   first id, so trimmed entries are never served) up to where the page ends.
//!
//! Else the page is read from the engine, and remembered. Memory is bounded by
//! `TICKSTREAM_HISTORY_CACHE` (MiB, all channels): the least recently read segments
//! go first; each segment keeps at most the stream's `MAXLEN` ticks.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::engine::{IdRange, RangeRead, Store, StoreError, StreamEnds as Ends};
use crate::tick::{StreamId, Tick};

/// Bytes a cached tick costs beyond its body (the `Tick` itself, its deque slot).
const TICK_OVERHEAD: usize = 96;

/// What a page asks for.
#[derive(Debug, Clone, Copy)]
pub struct Want {
    pub range: IdRange,
    /// Ticks at most (a handler asks one more than it shows, to know there is more).
    pub count: usize,
    pub descending: bool,
}

struct Segment {
    epoch: Arc<str>,
    /// Every entry with id in `(low, high]` is in `ticks` (unreadable entries aside,
    /// which no read returns either).
    low: StreamId,
    high: StreamId,
    ticks: VecDeque<Tick>,
    bytes: usize,
    /// The cache's clock at the last read: the least recently read go first.
    used: AtomicU64,
}

/// Epochs of one read share one allocation: compare pointers before text.
fn same(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

fn cost(t: &Tick) -> usize {
    t.body.len() + TICK_OVERHEAD
}

impl Segment {
    fn new(epoch: Arc<str>, low: StreamId, high: StreamId, ticks: Vec<Tick>) -> Segment {
        let bytes = ticks.iter().map(cost).sum();
        Segment {
            epoch,
            low,
            high,
            ticks: ticks.into(),
            bytes,
            used: AtomicU64::new(0),
        }
    }

    /// Adds what is known of `(after, through]`; gives the ticks back when they do
    /// not adjoin the segment (the caller replaces it, or keeps it).
    fn merge(&mut self, after: StreamId, through: StreamId, ticks: Vec<Tick>) -> Result<(), Vec<Tick>> {
        if after >= self.low && through <= self.high {
            return Ok(()); // nothing new
        }
        if after >= self.low && after <= self.high {
            // Extends the top.
            for t in ticks.into_iter().filter(|t| t.id > self.high) {
                self.bytes += cost(&t);
                self.ticks.push_back(t);
            }
            self.high = through;
            return Ok(());
        }
        if after < self.low && through >= self.low && through <= self.high {
            // Extends the bottom.
            for t in ticks.into_iter().rev().filter(|t| t.id <= self.low) {
                self.bytes += cost(&t);
                self.ticks.push_front(t);
            }
            self.low = after;
            return Ok(());
        }
        Err(ticks)
    }

    fn cap(&mut self, most: usize) {
        while self.ticks.len() > most {
            if let Some(old) = self.ticks.pop_front() {
                self.bytes -= cost(&old);
                self.low = old.id;
            }
        }
    }

    /// Calls `each` on the page's ticks, in page order, if the segment can answer it
    /// exactly; returns how many.
    fn answer(&self, ends: &Ends, want: Want, each: &mut dyn FnMut(&Tick)) -> Option<usize> {
        let (last, epoch) = ends.last.as_ref()?;
        let first = ends.first?;
        if !same(epoch, &self.epoch) || self.high > *last {
            return None;
        }
        let lo = want.range.from.max(first);
        let hi = want.range.to.min(*last);
        if lo > hi {
            return Some(0);
        }
        let start = self.ticks.partition_point(|t| t.id < lo);
        let end = self.ticks.partition_point(|t| t.id <= hi);
        let available = end.saturating_sub(start);
        // The segment must hold the page's first tick's side…
        let from_side = if want.descending {
            self.high >= hi
        } else {
            self.low < lo
        };
        if !from_side {
            return None;
        }
        // …and either enough ticks, or everything up to the page's other bound.
        let to_side = if want.descending {
            self.low < lo
        } else {
            self.high >= hi
        };
        if available < want.count && !to_side {
            return None;
        }
        let n = available.min(want.count);
        if want.descending {
            self.ticks.range(end - n..end).rev().for_each(&mut *each);
        } else {
            self.ticks.range(start..start + n).for_each(&mut *each);
        }
        Some(n)
    }
}

/// The cache; one per node, shared by the handlers and the partition readers.
pub struct PageCache {
    segments: Mutex<HashMap<Arc<str>, Arc<RwLock<Segment>>>>,
    /// Bytes held by all segments.
    bytes: AtomicUsize,
    budget: usize,
    /// Ticks one segment keeps at most (the stream's `MAXLEN`).
    per_channel: usize,
    clock: AtomicU64,
}

impl PageCache {
    pub fn new(budget_bytes: usize, per_channel: usize) -> PageCache {
        PageCache {
            segments: Mutex::new(HashMap::new()),
            bytes: AtomicUsize::new(0),
            budget: budget_bytes,
            per_channel: per_channel.max(1),
            clock: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<RwLock<Segment>>>> {
        self.segments.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes the cache holds now (the `tickstream_history_cache_bytes` gauge).
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Remembers that `ticks` are every readable entry of `channel` with id in
    /// `(after, through]`, in id order.
    pub fn remember(&self, channel: &Arc<str>, after: StreamId, through: StreamId, ticks: Vec<Tick>) {
        if self.budget == 0 || through <= after {
            return;
        }
        // Of one epoch only: where the epoch changes within them, what came before
        // belongs to a stream that no longer is.
        let newest_epoch = ticks.last().map(|t| t.epoch.clone());
        let (after, ticks) = match ticks
            .iter()
            .rposition(|t| newest_epoch.as_ref().is_some_and(|e| !same(&t.epoch, e)))
        {
            Some(i) => {
                let after = ticks[i].id;
                (after, ticks.into_iter().skip(i + 1).collect::<Vec<_>>())
            }
            None => (after, ticks),
        };
        let existing = self.lock().get(channel).cloned();
        let (before, now) = match existing {
            Some(seg) => {
                let mut s = seg.write().unwrap_or_else(|e| e.into_inner());
                let before = s.bytes;
                let same_epoch = ticks.first().is_none_or(|t| same(&t.epoch, &s.epoch));
                let unmerged = match same_epoch {
                    true => s.merge(after, through, ticks).err(),
                    false => Some(ticks),
                };
                if let Some(ticks) = unmerged {
                    let Some(epoch) = ticks.first().map(|t| t.epoch.clone()) else {
                        return;
                    };
                    // Disjoint and older than what is held: keep what is held.
                    if same_epoch && through < s.low {
                        return;
                    }
                    *s = Segment::new(epoch, after, through, ticks);
                }
                s.cap(self.per_channel);
                (before, s.bytes)
            }
            None => {
                let Some(epoch) = ticks.first().map(|t| t.epoch.clone()) else {
                    return;
                };
                let mut s = Segment::new(epoch, after, through, ticks);
                s.cap(self.per_channel);
                let now = s.bytes;
                s.used
                    .store(self.clock.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
                // Another read may have made the channel's segment meanwhile: keep
                // that one (replacing it would lose its bytes from the count).
                match self.lock().entry(channel.clone()) {
                    std::collections::hash_map::Entry::Occupied(_) => return,
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert(Arc::new(RwLock::new(s)));
                    }
                }
                (0, now)
            }
        };
        if now >= before {
            self.bytes.fetch_add(now - before, Ordering::Relaxed);
        } else {
            self.bytes.fetch_sub(before - now, Ordering::Relaxed);
        }
        self.evict();
    }

    /// Drops the least recently read segments until the cache fits its budget.
    fn evict(&self) {
        while self.bytes.load(Ordering::Relaxed) > self.budget {
            let mut map = self.lock();
            let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.read().map_or(0, |s| s.used.load(Ordering::Relaxed)))
                .map(|(c, _)| c.clone())
            else {
                return;
            };
            if let Some(seg) = map.remove(&oldest) {
                let freed = seg.read().map_or(0, |s| s.bytes);
                self.bytes
                    .fetch_sub(freed.min(self.bytes.load(Ordering::Relaxed)), Ordering::Relaxed);
            }
        }
    }

    /// Calls `each` on the page's ticks from memory, if the cache can answer exactly
    /// given the stream's `ends`; returns how many.
    pub fn answer(&self, channel: &str, ends: &Ends, want: Want, each: &mut dyn FnMut(&Tick)) -> Option<usize> {
        let seg = self.lock().get(channel).cloned()?;
        let s = seg.read().unwrap_or_else(|e| e.into_inner());
        s.used
            .store(self.clock.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        s.answer(ends, want, each)
    }

    /// A page: from memory when the cache can answer it, else from the store (and
    /// remembered). `each` gets the page's ticks in page order; returns how many, the
    /// stream's last epoch when it was asked (for an empty page's `epoch`) and where
    /// the page came from (`cache` or `store`).
    pub async fn page(
        &self,
        store: &Store,
        channel: &str,
        want: Want,
        each: &mut (dyn FnMut(&Tick) + Send),
    ) -> Result<(usize, Option<Arc<str>>, &'static str), StoreError> {
        if self.budget == 0 {
            let read = store.entries(channel, want.range, want.count, want.descending).await?;
            read.ticks.iter().for_each(&mut *each);
            return Ok((read.ticks.len(), None, "store"));
        }
        let ends = store.ends(channel).await?;
        let epoch = ends.last.as_ref().map(|(_, e)| e.clone());
        if let Some(n) = self.answer(channel, &ends, want, &mut |t| each(t)) {
            return Ok((n, epoch, "cache"));
        }
        let read = store.entries(channel, want.range, want.count, want.descending).await?;
        read.ticks.iter().for_each(&mut *each);
        let n = read.ticks.len();
        if let Some((last, _)) = &ends.last {
            let (after, through) = coverage(&read, want, *last);
            let mut ticks = read.ticks;
            if want.descending {
                ticks.reverse();
            }
            self.remember(&Arc::from(channel), after, through, ticks);
        }
        Ok((n, epoch, "store"))
    }
}

/// The ids `(after, through]` a read proves it saw every entry of, given the
/// stream's last id from just before it.
fn coverage(read: &RangeRead, want: Want, last_before: StreamId) -> (StreamId, StreamId) {
    let full = read.entries >= want.count;
    let (lower, upper) = (want.range.from.prev(), want.range.to);
    match (want.descending, read.edges) {
        // Ascending: from the range's start; up to the last entry, or (a short
        // reply) to the range's end as far as the stream then went.
        (false, Some((_, last_seen))) if full => (lower, last_seen),
        (false, seen) => (lower, upper.min(last_before).max(seen.map_or(lower, |s| s.1))),
        // Descending: down from the range's end (as far as the stream went, or
        // further if it grew meanwhile); down to the last entry seen, or (short)
        // to the range's start.
        (true, Some((top, bottom))) => {
            let through = upper.min(last_before).max(top);
            (if full { bottom.prev() } else { lower }, through)
        }
        (true, None) => (lower, upper.min(last_before)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(ms: u64, epoch: &Arc<str>) -> Tick {
        Tick {
            id: StreamId::new(ms, 0),
            seq: ms,
            epoch: epoch.clone(),
            channel: "c".into(),
            body: format!("\"seq\":{ms},\"epoch\":\"{epoch}\",\"ts\":null}}"),
        }
    }

    fn ticks(range: std::ops::RangeInclusive<u64>, epoch: &Arc<str>) -> Vec<Tick> {
        range.map(|ms| tick(ms, epoch)).collect()
    }

    fn ends(first: u64, last: u64, epoch: &Arc<str>) -> Ends {
        Ends {
            first: Some(StreamId::new(first, 0)),
            last: Some((StreamId::new(last, 0), epoch.clone())),
        }
    }

    fn want(from: u64, to: u64, count: usize, descending: bool) -> Want {
        Want {
            range: IdRange {
                from: StreamId::new(from, 0),
                to: StreamId::new(to, 0),
            },
            count,
            descending,
        }
    }

    fn ids(cache: &PageCache, ends: &Ends, want: Want) -> Option<Vec<u64>> {
        let mut got = Vec::new();
        cache.answer("c", ends, want, &mut |t| got.push(t.id.ms))?;
        Some(got)
    }

    #[test]
    fn answers_only_what_it_covers_exactly() {
        let e: Arc<str> = "e".into();
        let cache = PageCache::new(1 << 20, 1000);
        // Entries 11..=20 are known to be all of (10, 20].
        cache.remember(
            &"c".into(),
            StreamId::new(10, 0),
            StreamId::new(20, 0),
            ticks(11..=20, &e),
        );
        let now = ends(1, 20, &e);
        assert_eq!(ids(&cache, &now, want(12, 15, 10, false)), Some(vec![12, 13, 14, 15]));
        assert_eq!(ids(&cache, &now, want(0, u64::MAX, 3, true)), Some(vec![20, 19, 18]));
        // Below the segment: unknown.
        assert_eq!(ids(&cache, &now, want(5, 15, 10, false)), None);
        // Enough ticks before the segment's bottom is reached: known.
        assert_eq!(ids(&cache, &now, want(5, 20, 2, true)), Some(vec![20, 19]));
        assert_eq!(ids(&cache, &now, want(5, 20, 20, true)), None);
        // The stream grew past the segment: the top is unknown…
        let grown = ends(1, 25, &e);
        assert_eq!(ids(&cache, &grown, want(0, u64::MAX, 3, true)), None);
        // …but a page that ends inside it is still exact.
        assert_eq!(
            ids(&cache, &grown, want(11, u64::MAX, 3, false)),
            Some(vec![11, 12, 13])
        );
        assert_eq!(ids(&cache, &grown, want(18, u64::MAX, 10, false)), None);
        // Trimmed up to 15: the kept part only, as XRANGE would answer.
        let trimmed = ends(15, 20, &e);
        assert_eq!(
            ids(&cache, &trimmed, want(0, u64::MAX, 3, false)),
            Some(vec![15, 16, 17])
        );
        // Another epoch, or a stream shorter than what is held (a rollback): never.
        assert_eq!(ids(&cache, &ends(1, 20, &"f".into()), want(12, 15, 10, false)), None);
        assert_eq!(ids(&cache, &ends(1, 18, &e), want(12, 15, 10, false)), None);
    }

    #[test]
    fn segments_grow_at_either_end_and_reset_on_a_new_epoch() {
        let e: Arc<str> = "e".into();
        let cache = PageCache::new(1 << 20, 1000);
        let c: Arc<str> = "c".into();
        cache.remember(&c, StreamId::new(10, 0), StreamId::new(20, 0), ticks(11..=20, &e));
        cache.remember(&c, StreamId::new(20, 0), StreamId::new(25, 0), ticks(21..=25, &e));
        cache.remember(&c, StreamId::new(4, 0), StreamId::new(12, 0), ticks(5..=12, &e));
        let now = ends(1, 25, &e);
        assert_eq!(ids(&cache, &now, want(5, 25, 100, false)), Some((5..=25).collect()));
        // A gap (the reader missed nothing, but this read starts later): the newer
        // range replaces the segment.
        cache.remember(&c, StreamId::new(30, 0), StreamId::new(32, 0), ticks(31..=32, &e));
        assert_eq!(ids(&cache, &ends(1, 32, &e), want(5, 25, 100, false)), None);
        // A batch whose epoch changes midway keeps only the new epoch's part.
        let f: Arc<str> = "f".into();
        let mut mixed = ticks(33..=34, &e);
        mixed.extend(ticks(35..=36, &f));
        cache.remember(&c, StreamId::new(32, 0), StreamId::new(36, 0), mixed);
        assert_eq!(
            ids(&cache, &ends(35, 36, &f), want(0, u64::MAX, 10, false)),
            Some(vec![35, 36])
        );
    }

    #[test]
    fn memory_is_bounded_per_channel_and_in_all() {
        let e: Arc<str> = "e".into();
        let cache = PageCache::new(1 << 20, 100);
        let c: Arc<str> = "c".into();
        cache.remember(&c, StreamId::ZERO, StreamId::new(500, 0), ticks(1..=500, &e));
        // The oldest went: the segment starts at 400.
        assert_eq!(ids(&cache, &ends(1, 500, &e), want(0, 500, 1000, false)), None);
        assert_eq!(
            ids(&cache, &ends(1, 500, &e), want(401, 500, 1000, false)).map(|v| v.len()),
            Some(100)
        );
        let small = PageCache::new(20 * (TICK_OVERHEAD + 64), 1000);
        for n in 0..10u64 {
            let name: Arc<str> = format!("c{n}").into();
            small.remember(&name, StreamId::ZERO, StreamId::new(10, 0), ticks(1..=10, &e));
        }
        assert!(small.bytes() <= 20 * (TICK_OVERHEAD + 64), "{} bytes", small.bytes());
        assert!(small.bytes() > 0);
    }

    #[test]
    fn a_read_proves_what_it_saw() {
        let e: Arc<str> = "e".into();
        let read = |t: Vec<Tick>, entries: usize| RangeRead {
            edges: t.first().map(|a| a.id).zip(t.last().map(|b| b.id)),
            entries,
            ticks: t,
        };
        let id = |ms| StreamId::new(ms, 0);
        // Ascending, full: up to the last entry.
        let r = read(ticks(5..=7, &e), 3);
        assert_eq!(coverage(&r, want(5, u64::MAX, 3, false), id(20)), (id(5).prev(), id(7)));
        // Ascending, short: as far as the stream went.
        let r = read(ticks(5..=7, &e), 3);
        assert_eq!(coverage(&r, want(5, u64::MAX, 10, false), id(7)), (id(5).prev(), id(7)));
        // Descending, full: down to the last entry seen.
        let r = read(vec![tick(9, &e), tick(8, &e)], 2);
        assert_eq!(coverage(&r, want(0, u64::MAX, 2, true), id(9)), (id(8).prev(), id(9)));
    }
}

//! The embedded engine: what `tickstream` runs on when `REDIS_URL` is unset.
//!
//! Same semantics as the Redis engine (ids `<ms>-<seq>` that strictly increase per
//! channel, `seq` from 1 per epoch, a random epoch per channel, dedup within the
//! window, a capped history whose trimming counts as lost entries), so everything
//! above the store behaves identically. Nothing survives the process: start-up says
//! so loudly.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use async_trait::async_trait;

use super::{
    Appended, ChannelSummary, Engine, Fence, Fences, IdRange, LastStored, Probe, RangeRead, Settings, StoreError,
    StreamEnds, StreamInfo, Tail, TailBatch, TailWaker, TAIL_COUNT,
};
use crate::candles::{Book, Candle, CandleSettings, Query};
use crate::clock::now_ms;
use crate::tick::{new_epoch, PreparedTick, StreamId, Tick};

/// Most event ids remembered for deduplication (about 200 bytes each). Redis keeps
/// every marker for the whole window; this engine lives in the server's own memory,
/// so beyond this count the oldest are forgotten early: a retry of a tick older than
/// the newest 262,144 may then be stored again.
pub const DEDUP_CAPACITY: usize = 262_144;

struct Channel {
    name: Arc<str>,
    epoch: Arc<str>,
    entries: VecDeque<Tick>,
    seq: u64,
    added: u64,
    last_id: StreamId,
    /// Folded under the same lock as the append: as atomic as the Redis script.
    candles: Book,
}

impl Channel {
    /// Index of the first entry with id ≥ `id` (entries are in id order).
    fn lower_bound(&self, id: StreamId) -> usize {
        self.entries.partition_point(|t| t.id < id)
    }
}

#[derive(Default)]
struct State {
    channels: HashMap<Arc<str>, Channel>,
    /// (channel, event_id) → original id, with expiry.
    dedup: HashMap<(Arc<str>, String), (StreamId, Instant)>,
    /// Dedup keys in insertion order: the window is constant, so the oldest expire
    /// first and pruning is a pop from the front.
    dedup_order: VecDeque<(Instant, (Arc<str>, String))>,
}

/// The in-memory engine; shared behind `Arc`.
pub struct MemoryEngine {
    state: Mutex<State>,
    maxlen: usize,
    dedup_window: Duration,
    dedup_capacity: usize,
    candles: CandleSettings,
    /// Bumped on every append, so tail readers wake without polling.
    appended: watch::Sender<u64>,
    block: Duration,
}

impl MemoryEngine {
    pub fn new(settings: Settings) -> MemoryEngine {
        Self::with_dedup_capacity(settings, DEDUP_CAPACITY)
    }

    pub fn with_dedup_capacity(settings: Settings, dedup_capacity: usize) -> MemoryEngine {
        MemoryEngine {
            state: Mutex::new(State::default()),
            maxlen: usize::try_from(settings.stream_maxlen).unwrap_or(usize::MAX).max(1),
            dedup_window: settings.dedup_window,
            dedup_capacity: dedup_capacity.max(1),
            candles: settings.candles,
            appended: watch::channel(0).0,
            block: settings.tail_block,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way
        // that matters more than stopping the server would, so keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn append_one(&self, state: &mut State, t: &PreparedTick, now: Instant) -> Appended {
        let name: Arc<str> = match state.channels.get_key_value(t.channel.as_str()) {
            Some((k, _)) => k.clone(),
            None => t.channel.as_str().into(),
        };
        let dedup_key = (name.clone(), t.event_id.clone());
        if let Some((id, _)) = state.dedup.get(&dedup_key) {
            return Appended {
                id: *id,
                event_id: t.event_id.clone(),
                duplicate: true,
            };
        }
        let channel = state.channels.entry(name.clone()).or_insert_with(|| Channel {
            name: name.clone(),
            epoch: new_epoch().into(),
            entries: VecDeque::new(),
            seq: 0,
            added: 0,
            last_id: StreamId::ZERO,
            candles: Book::default(),
        });
        let ms = now_ms();
        let id = if ms > channel.last_id.ms {
            StreamId::new(ms, 0)
        } else {
            channel.last_id.next()
        };
        channel.seq += 1;
        channel.added += 1;
        channel.last_id = id;
        channel.entries.push_back(Tick {
            id,
            seq: channel.seq,
            epoch: channel.epoch.clone(),
            channel: channel.name.clone(),
            body: crate::tick::wire::body(channel.seq, &channel.epoch, &t.fields),
        });
        if let Some(value) = &t.value {
            let volume = t.volume.as_deref().and_then(|v| v.parse().ok());
            channel.candles.add_tick(&self.candles, t.ts_us, id, value, volume);
        }
        while channel.entries.len() > self.maxlen {
            channel.entries.pop_front();
        }
        let expires = now + self.dedup_window;
        state.dedup.insert(dedup_key.clone(), (id, expires));
        state.dedup_order.push_back((expires, dedup_key));
        while state.dedup_order.len() > self.dedup_capacity {
            if let Some((_, key)) = state.dedup_order.pop_front() {
                state.dedup.remove(&key);
            }
        }
        Appended {
            id,
            event_id: t.event_id.clone(),
            duplicate: false,
        }
    }

    fn ascending(&self, channel: &str, range: IdRange, count: usize) -> Vec<Tick> {
        let state = self.lock();
        let Some(c) = state.channels.get(channel) else {
            return Vec::new();
        };
        let start = c.lower_bound(range.from);
        c.entries
            .range(start..)
            .take_while(|t| t.id <= range.to)
            .take(count)
            .cloned()
            .collect()
    }

    fn descending(&self, channel: &str, range: IdRange, count: usize) -> Vec<Tick> {
        let state = self.lock();
        let Some(c) = state.channels.get(channel) else {
            return Vec::new();
        };
        let end = c.entries.partition_point(|t| t.id <= range.to);
        c.entries
            .range(..end)
            .rev()
            .take_while(|t| t.id >= range.from)
            .take(count)
            .cloned()
            .collect()
    }

    /// Event ids currently remembered (tests).
    #[cfg(test)]
    fn dedup_len(&self) -> usize {
        self.lock().dedup.len()
    }

    fn collect_after(&self, cursors: &[(Arc<str>, StreamId)]) -> Vec<TailBatch> {
        let state = self.lock();
        cursors
            .iter()
            .filter_map(|(name, cursor)| {
                let c = state.channels.get(&**name)?;
                let start = c.lower_bound(cursor.next());
                let ticks: Vec<Tick> = c.entries.range(start..).take(TAIL_COUNT).cloned().collect();
                let last = ticks.last()?.id;
                Some(TailBatch {
                    channel: name.clone(),
                    ticks,
                    after: *cursor,
                    last,
                })
            })
            .collect()
    }
}

#[async_trait]
impl Engine for MemoryEngine {
    fn name(&self) -> &'static str {
        "memory"
    }

    /// This engine never fails over: nothing is ever behind a fence.
    async fn append(&self, ticks: &[PreparedTick], _fences: &dyn Fences) -> Result<Vec<Appended>, StoreError> {
        let mut results = Vec::with_capacity(ticks.len());
        {
            let mut state = self.lock();
            let now = Instant::now();
            while state.dedup_order.front().is_some_and(|(exp, _)| *exp <= now) {
                if let Some((_, key)) = state.dedup_order.pop_front() {
                    state.dedup.remove(&key);
                }
            }
            for t in ticks {
                results.push(self.append_one(&mut state, t, now));
            }
        }
        self.appended.send_modify(|n| *n = n.wrapping_add(1));
        Ok(results)
    }

    /// Reads cost nothing here: every channel counts as existing.
    async fn probe(&self, _channel: &str) -> Result<Probe, StoreError> {
        Ok(Probe {
            exists: true,
            births: StreamId::ZERO,
        })
    }

    async fn info(&self, channel: &str) -> Result<Option<StreamInfo>, StoreError> {
        let state = self.lock();
        Ok(state.channels.get(channel).map(|c| StreamInfo {
            length: c.entries.len() as u64,
            entries_added: c.added,
            first: c.entries.front().cloned(),
            last: c.entries.back().cloned(),
        }))
    }

    /// Every entry here is a tick: nothing is unreadable.
    async fn read_entries(
        &self,
        channel: &str,
        range: IdRange,
        count: usize,
        descending: bool,
    ) -> Result<RangeRead, StoreError> {
        let ticks = match descending {
            false => self.ascending(channel, range, count),
            true => self.descending(channel, range, count),
        };
        Ok(RangeRead {
            edges: ticks.first().map(|t| t.id).zip(ticks.last().map(|t| t.id)),
            entries: ticks.len(),
            ticks,
        })
    }

    async fn ends(&self, channel: &str) -> Result<StreamEnds, StoreError> {
        let state = self.lock();
        let c = state.channels.get(channel);
        Ok(StreamEnds {
            first: c.and_then(|c| c.entries.front()).map(|t| t.id),
            last: c.and_then(|c| c.entries.back()).map(|t| (t.id, t.epoch.clone())),
        })
    }

    async fn epoch(&self, channel: &str) -> Result<Option<String>, StoreError> {
        Ok(self.lock().channels.get(channel).map(|c| c.epoch.to_string()))
    }

    async fn channel_names(&self) -> Result<Vec<String>, StoreError> {
        let mut names: Vec<String> = self.lock().channels.keys().map(|k| k.to_string()).collect();
        names.sort_unstable();
        Ok(names)
    }

    async fn summaries(&self, names: &[String]) -> Result<Vec<ChannelSummary>, StoreError> {
        let state = self.lock();
        Ok(names
            .iter()
            .map(|name| {
                let c = state.channels.get(name.as_str());
                ChannelSummary {
                    channel: name.clone(),
                    last: c.and_then(|c| c.entries.back().cloned()),
                    length: c.map_or(0, |c| c.entries.len() as u64),
                }
            })
            .collect())
    }

    async fn candles(&self, channel: &str, q: Query) -> Result<Vec<Candle>, StoreError> {
        let state = self.lock();
        Ok(state
            .channels
            .get(channel)
            .map(|c| c.candles.page(q))
            .unwrap_or_default())
    }

    /// Folds the channel's candles again from the ticks it still holds (the rule of
    /// [`Book::adopt`]).
    async fn rebuild_candles(&self, channel: &str) -> Result<usize, StoreError> {
        let mut state = self.lock();
        let Some(c) = state.channels.get_mut(channel) else {
            return Ok(0);
        };
        let mut book = Book::default();
        for tick in &c.entries {
            book.add_stored(&self.candles, tick);
        }
        c.candles.adopt(&self.candles, book);
        Ok(c.entries.len())
    }

    async fn last_stored(&self, channels: &[Arc<str>]) -> Result<Vec<LastStored>, StoreError> {
        let state = self.lock();
        Ok(channels
            .iter()
            .map(|name| {
                let c = state.channels.get(&**name);
                LastStored {
                    last_id: c.and_then(|c| c.entries.back()).map(|t| t.id),
                    epoch: c.map(|c| c.epoch.to_string()),
                    seq: c.map_or(0, |c| c.seq),
                }
            })
            .collect())
    }

    /// Nothing here survives the process, so nothing comes back shorter.
    async fn roll_back_behind(
        &self,
        _delivered: &[(Arc<str>, Fence)],
        _rolled: &mut (dyn FnMut(Arc<str>, StreamId) + Send),
    ) -> Result<(), StoreError> {
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The data dies with the process, and so do the tokens signed with this.
    async fn dev_secret(&self, candidate: String) -> Result<String, StoreError> {
        Ok(candidate)
    }

    fn tail(self: Arc<Self>, _partition: u32, waker: Arc<TailWaker>) -> Box<dyn Tail> {
        Box::new(MemoryTail {
            appended: self.appended.subscribe(),
            store: self,
            waker,
        })
    }
}

/// A partition reader over the memory engine: waits for the next append instead of
/// blocking on a socket.
struct MemoryTail {
    store: Arc<MemoryEngine>,
    appended: watch::Receiver<u64>,
    waker: Arc<TailWaker>,
}

#[async_trait]
impl Tail for MemoryTail {
    /// Nothing to connect to: never fresh.
    async fn connect(&mut self) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// Every channel counts as existing ([`Engine::probe`]), so there are no births.
    async fn read(
        &mut self,
        cursors: &[(Arc<str>, StreamId)],
        _births: Option<StreamId>,
    ) -> Result<(Vec<TailBatch>, Option<super::Births>), StoreError> {
        // Mark the current version seen *before* looking, so an append between the
        // look and the wait still wakes us.
        self.appended.borrow_and_update();
        let found = self.store.collect_after(cursors);
        if !found.is_empty() {
            return Ok((found, None));
        }
        tokio::select! {
            _ = self.appended.changed() => {}
            _ = self.waker.notify.notified() => {}
            _ = tokio::time::sleep(self.store.block) => {}
        }
        Ok((self.store.collect_after(cursors), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Store;

    fn prepared(channel: &str, n: i64) -> PreparedTick {
        serde_json::from_value::<crate::tick::IngestTick>(serde_json::json!({"channel": channel, "value": n}))
            .unwrap()
            .prepare(n)
            .unwrap()
    }

    fn settings(maxlen: u64) -> Settings {
        Settings {
            partitions: 16,
            stream_maxlen: maxlen,
            dedup_window: Duration::from_secs(60),
            tail_block: Duration::from_millis(10),
            wait_replicas: 0,
            candles: CandleSettings::default(),
        }
    }

    /// Nothing delivered: no fences.
    struct NoFences;

    impl Fences for NoFences {
        fn fence(&self, _channel: &str) -> Option<Fence> {
            None
        }
    }

    /// Appends as the append service does.
    async fn append(engine: &dyn Engine, ticks: &[PreparedTick]) -> Vec<Appended> {
        engine.append(ticks, &NoFences).await.unwrap()
    }

    #[tokio::test]
    async fn the_dedup_memory_is_bounded_by_count() {
        let s = MemoryEngine::with_dedup_capacity(settings(100), 4);
        let batch: Vec<_> = (0..10).map(|n| prepared("c", n)).collect();
        append(&s, &batch).await;
        assert_eq!(s.dedup_len(), 4);
        // The newest are still remembered; the oldest were forgotten and store again.
        assert!(append(&s, &batch[9..]).await[0].duplicate);
        assert!(!append(&s, &batch[..1]).await[0].duplicate);
        assert_eq!(s.dedup_len(), 4);
    }

    #[tokio::test]
    async fn ids_and_seq_increase_and_duplicates_take_none() {
        let s: Store = Arc::new(MemoryEngine::new(settings(3)));
        let batch: Vec<_> = (0..5).map(|n| prepared("c", n)).collect();
        let first = append(&*s, &batch).await;
        assert!(first.windows(2).all(|w| w[0].id < w[1].id));
        let again = append(&*s, &batch[..1]).await;
        assert!(again[0].duplicate);
        assert_eq!(again[0].id, first[0].id);
        let info = s.info("c").await.unwrap().unwrap();
        assert_eq!((info.length, info.entries_added), (3, 5));
        assert!(info.has_trimmed());
        assert_eq!(info.first.unwrap().seq, 3);
        assert_eq!(info.last.unwrap().seq, 5);
        let desc = s.rev_range("c", IdRange::ALL, 2).await.unwrap();
        assert_eq!(desc.iter().map(|t| t.seq).collect::<Vec<_>>(), vec![5, 4]);
        let asc = s.range("c", IdRange::after(first[3].id), 10).await.unwrap();
        assert_eq!(asc.len(), 1);
        let ends = s.ends("c").await.unwrap();
        assert_eq!(
            (ends.first, ends.last.map(|(id, _)| id)),
            (Some(first[2].id), Some(first[4].id))
        );
        assert_eq!(s.channel_names().await.unwrap(), ["c"]);
    }
}

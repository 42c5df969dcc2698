//! Live candles (docs/PROTOCOL.md §6 "Live candles"): one feed per channel and
//! interval on a node, shared by every subscriber that asked for that interval.
//!
//! A feed listens to its channel's live ticks like any subscriber. After a tick it
//! re-reads the channel's newest candle from the store (never more than once per
//! [`CANDLE_EVERY`]), so what it sends is exactly what the append script stored, with
//! no aggregation of its own: a frame when the candle changed, and when a later bucket
//! has begun, the closed bucket's last state with `final: true` first. Its cost is one
//! store read per 250 ms per active (channel, interval), whatever the subscribers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{broadcast, Notify};

use super::{Hub, Interrupted};
use crate::candles::{Candle, Interval, Order, Query, Span};
use crate::retry::until_ok;

/// A feed re-reads its candle at most this often.
pub const CANDLE_EVERY: Duration = Duration::from_millis(250);
/// Candle frames a slow subscriber may be behind before it skips to newer ones
/// (each frame is a whole candle: skipping loses no tick, only intermediate states).
const CANDLE_BUFFER: usize = 16;
/// Closed buckets one read sends `final` frames for.
const CLOSED_AT_ONCE: usize = 10;

type FeedKey = (Arc<str>, Interval);

/// Every live candle feed of a node.
#[derive(Default)]
pub(crate) struct CandleFeeds {
    feeds: Mutex<HashMap<FeedKey, Weak<Feed>>>,
}

impl CandleFeeds {
    fn lock(&self) -> MutexGuard<'_, HashMap<FeedKey, Weak<Feed>>> {
        self.feeds.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What a feed shares with its subscribers.
struct Shared {
    tx: broadcast::Sender<Arc<str>>,
    /// The last frame sent, `final` or not: a new subscriber's first frame. Sending
    /// and subscribing both happen under this lock, so a subscriber gets each state
    /// once, in order.
    last: Mutex<Option<Arc<str>>>,
}

impl Shared {
    fn last(&self) -> MutexGuard<'_, Option<Arc<str>>> {
        self.last.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn send(&self, frame: Arc<str>) {
        let mut last = self.last();
        *last = Some(frame.clone());
        // No receiver is fine: the last subscriber may have just left.
        let _ = self.tx.send(frame);
    }
}

/// A running feed; its task stops when the last subscriber drops it.
struct Feed {
    key: FeedKey,
    shared: Arc<Shared>,
    stop: Arc<Notify>,
    hub: Weak<Hub>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.stop.notify_one();
        if let Some(hub) = self.hub.upgrade() {
            let mut feeds = hub.candles.lock();
            // A newer feed may already stand under the key.
            if feeds.get(&self.key).is_some_and(|w| w.strong_count() == 0) {
                feeds.remove(&self.key);
            }
        }
    }
}

/// A subscriber's handle on a live candle feed.
pub struct CandleSubscription {
    /// The feed's last frame when this subscription began.
    current: Option<Arc<str>>,
    rx: broadcast::Receiver<Arc<str>>,
    feed: Arc<Feed>,
}

impl CandleSubscription {
    /// The next candle frame: first the current candle (if the channel has one),
    /// then every change. `None` when the feed ended. A subscriber that fell
    /// [`CANDLE_BUFFER`] frames behind skips to the feed's latest frame.
    pub async fn next(&mut self) -> Option<Arc<str>> {
        if let Some(current) = self.current.take() {
            return Some(current);
        }
        match self.rx.recv().await {
            Ok(frame) => Some(frame),
            Err(broadcast::error::RecvError::Lagged(_)) => {
                let latest = self.feed.shared.last();
                // What is still buffered is older than `latest`.
                self.rx = self.rx.resubscribe();
                latest.clone()
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

impl Hub {
    /// Subscribes to `channel`'s live candles of `interval`, starting the feed if
    /// this node has none for them yet.
    pub fn candles(self: &Arc<Self>, channel: &str, interval: Interval) -> CandleSubscription {
        let key: FeedKey = (Arc::from(channel), interval);
        let mut feeds = self.candles.lock();
        if let Some(feed) = feeds.get(&key).and_then(Weak::upgrade) {
            let (current, rx) = {
                let last = feed.shared.last();
                (last.clone(), feed.shared.tx.subscribe())
            };
            drop(feeds);
            return CandleSubscription { current, rx, feed };
        }
        let shared = Arc::new(Shared {
            tx: broadcast::channel(CANDLE_BUFFER).0,
            last: Mutex::new(None),
        });
        let stop = Arc::new(Notify::new());
        let feed = Arc::new(Feed {
            key: key.clone(),
            shared: shared.clone(),
            stop: stop.clone(),
            hub: Arc::downgrade(self),
        });
        feeds.insert(key.clone(), Arc::downgrade(&feed));
        drop(feeds);
        let rx = shared.tx.subscribe();
        tokio::spawn(run(self.clone(), key, shared, stop));
        CandleSubscription {
            current: None,
            rx,
            feed,
        }
    }
}

/// A feed's task: wait for a tick, re-read the candle, send what changed.
async fn run(hub: Arc<Hub>, (channel, interval): FeedKey, shared: Arc<Shared>, stop: Arc<Notify>) {
    let mut live = tokio::select! {
        live = until_ok(&hub.metrics, || hub.subscribe(&channel)) => live,
        _ = stop.notified() => return,
    };
    let mut sent: Option<Candle> = None;
    loop {
        // Read first (the current candle for the first subscriber), then after ticks.
        let read = tokio::select! {
            read = until_ok(&hub.metrics, || newest(&hub, &channel, interval)) => read,
            _ = stop.notified() => return,
        };
        if let Some(candle) = read {
            if let Some(previous) = sent.as_ref().filter(|p| p.start < candle.start) {
                // A later bucket began: the last state of every bucket closed since
                // (the previous one, and any that began and closed between two reads),
                // final.
                let span = Span {
                    after: Some(previous.start - 1),
                    until: Some(candle.start - 1),
                };
                let closed = tokio::select! {
                    c = until_ok(&hub.metrics, || closed(&hub, &channel, interval, span)) => c,
                    _ = stop.notified() => return,
                };
                for c in &closed {
                    shared.send(frame(&channel, interval, c, true));
                }
            }
            if sent.as_ref() != Some(&candle) {
                shared.send(frame(&channel, interval, &candle, false));
                sent = Some(candle);
            }
        }
        let paced = tokio::time::sleep(CANDLE_EVERY);
        tokio::select! {
            got = live.recv() => {
                if matches!(got, Err(Interrupted::Closed)) {
                    return;
                }
            }
            _ = stop.notified() => return,
        }
        // Ticks that arrive meanwhile fold into the same read.
        tokio::select! {
            _ = paced => {}
            _ = stop.notified() => return,
        }
        while let Ok(Some(_)) = live.try_recv() {}
    }
}

async fn newest(hub: &Hub, channel: &str, interval: Interval) -> Result<Option<Candle>, crate::engine::StoreError> {
    let page = hub
        .store
        .candles(
            channel,
            Query {
                interval,
                span: Span::default(),
                limit: 1,
                order: Order::Desc,
            },
        )
        .await?;
    Ok(page.into_iter().next())
}

/// The buckets that closed in `span`, oldest first (at most [`CLOSED_AT_ONCE`]: a
/// backfill that closes more at once gets final frames for its first ones; REST has
/// them all).
async fn closed(
    hub: &Hub,
    channel: &str,
    interval: Interval,
    span: Span,
) -> Result<Vec<Candle>, crate::engine::StoreError> {
    hub.store
        .candles(
            channel,
            Query {
                interval,
                span,
                limit: CLOSED_AT_ONCE,
                order: Order::Asc,
            },
        )
        .await
}

/// `{"type":"candle","channel","interval",…candle…,"final"}` (the channel regex
/// admits no character JSON would escape).
pub fn frame(channel: &str, interval: Interval, candle: &Candle, last: bool) -> Arc<str> {
    let mut text = String::with_capacity(256);
    text.push_str("{\"type\":\"candle\",\"channel\":\"");
    text.push_str(channel);
    text.push_str("\",\"interval\":\"");
    text.push_str(interval.name());
    text.push_str("\",");
    candle.write_members(&mut text);
    text.push_str(if last { ",\"final\":true}" } else { ",\"final\":false}" });
    Arc::from(text)
}

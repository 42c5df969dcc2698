//! Conflation (`rate`) as the hub times it (docs/ARCHITECTURE.md "Conflation").
//!
//! A conflated subscription gets at most `rate` tick frames a second, each the
//! newest tick not yet sent; a tick that finds it idle (nothing sent for `1/rate`)
//! goes out at once, otherwise the newest waiting one goes out `1/rate` after the
//! previous frame. What waits is always the channel's newest tick (the back of its
//! ring), shared by all; what a subscription keeps here is a few words: its
//! [`Sampler`], its interval, when it last sent and when it is due. No subscription
//! has a task or a timer of its own: each channel with conflated subscribers has
//! one [`Group`], whose due times are one heap, and one task that sleeps until the
//! earliest of them. Nothing here ever waits on a subscriber: a sampler that cannot
//! take a frame now is tried again `1/rate` later, with whatever is newest then, so
//! a slow conflated subscriber slows nobody.
//!
//! Timing is the hub's; what a frame says (the cursor, `skipped`, gaps) is the
//! session's, behind [`Sampler`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::channel::{LiveFrame, LiveSubscription, Partition};

/// The session's side of a conflated subscription.
pub trait Sampler: Send {
    /// Offers the channel's newest tick; never waits.
    fn offer(&mut self, newest: &LiveFrame) -> Offer;
}

/// What became of an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// A frame went out.
    Sent,
    /// Nothing newer than what was already sent.
    Stale,
    /// The connection's queue is full: try again later.
    Full,
    /// The connection is gone.
    Gone,
}

struct Entry {
    sampler: Box<dyn Sampler>,
    interval: Duration,
    /// When the last frame went out (`None`: never, so the next tick goes at once).
    sent_at: Option<Instant>,
    /// When it is due, while a tick waits for it (it is then in the heap).
    due: Option<Instant>,
}

/// The conflated subscriptions of one channel on this node.
pub(crate) struct Group {
    entries: HashMap<u64, Entry>,
    /// Entries with nothing waiting: the next published tick concerns them.
    idle: Vec<u64>,
    /// Entries with a tick waiting, by due time. An entry removed or re-armed leaves
    /// its old place behind; it is passed over when popped.
    due: BinaryHeap<Reverse<(Instant, u64)>>,
    next_key: u64,
    /// Wakes this group's timer task.
    timer: Arc<Notify>,
    /// What the timer task sleeps until (`None`: until woken).
    wake_at: Option<Instant>,
}

impl Group {
    fn new() -> Group {
        Group {
            entries: HashMap::new(),
            idle: Vec::new(),
            due: BinaryHeap::new(),
            next_key: 0,
            timer: Arc::new(Notify::new()),
            wake_at: None,
        }
    }

    /// Adds an entry; with `newest`, it is considered for it at once (else it idles
    /// until the channel's first tick).
    fn add(
        &mut self,
        sampler: Box<dyn Sampler>,
        interval: Duration,
        sent_at: Option<Instant>,
        newest: Option<&LiveFrame>,
        now: Instant,
    ) -> u64 {
        self.next_key += 1;
        let key = self.next_key;
        self.entries.insert(
            key,
            Entry {
                sampler,
                interval,
                sent_at,
                due: None,
            },
        );
        match newest {
            Some(newest) => self.consider(key, newest, now, true),
            None => self.idle.push(key),
        }
        key
    }

    /// Ticks were published and `newest` is the channel's newest: every idle
    /// subscription either sends it now or is armed for `1/rate` after its last
    /// frame. Armed ones need nothing: they will take whatever is newest when due.
    ///
    /// This runs under the partition lock: at most a [`SLICE`] is offered here; the
    /// rest fall due now and the timer fires them a slice at a time, as any crowd.
    pub(crate) fn published(&mut self, newest: &LiveFrame, now: Instant) {
        for (n, key) in std::mem::take(&mut self.idle).into_iter().enumerate() {
            self.consider(key, newest, now, n < SLICE);
        }
    }

    /// An idle entry and a tick: now (`inline`, else by the timer), or `1/rate`
    /// after its last frame.
    fn consider(&mut self, key: u64, newest: &LiveFrame, now: Instant, inline: bool) {
        let Some(entry) = self.entries.get(&key) else {
            return;
        };
        match entry.sent_at.map(|at| at + entry.interval) {
            Some(due) if due > now => self.arm(key, due),
            _ if inline => self.fire(key, newest, now),
            _ => self.arm(key, now),
        }
    }

    /// Offers `newest` to entry `key` and files it by the outcome.
    fn fire(&mut self, key: u64, newest: &LiveFrame, now: Instant) {
        let Some(entry) = self.entries.get_mut(&key) else {
            return;
        };
        match entry.sampler.offer(newest) {
            Offer::Sent => {
                entry.sent_at = Some(now);
                self.idle.push(key);
            }
            Offer::Stale => self.idle.push(key),
            Offer::Full => {
                let due = now + entry.interval;
                self.arm(key, due);
            }
            Offer::Gone => {
                self.entries.remove(&key);
            }
        }
    }

    fn arm(&mut self, key: u64, due: Instant) {
        let Some(entry) = self.entries.get_mut(&key) else {
            return;
        };
        entry.due = Some(due);
        self.due.push(Reverse((due, key)));
        if self.wake_at.is_none_or(|at| due < at) {
            self.wake_at = Some(due);
            self.timer.notify_one();
        }
    }

    /// Fires at most `limit` entries due by `now` with `newest` (none: the channel
    /// has no tick, so they go idle); returns when the next one is due (by `now`
    /// when more are due already).
    fn fire_due(&mut self, newest: Option<&LiveFrame>, now: Instant, mut limit: usize) -> Option<Instant> {
        while let Some(&Reverse((due, key))) = self.due.peek() {
            if due > now || limit == 0 {
                break;
            }
            limit -= 1;
            self.due.pop();
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            if entry.due != Some(due) {
                continue;
            }
            entry.due = None;
            match newest {
                Some(newest) => self.fire(key, newest, now),
                None => self.idle.push(key),
            }
        }
        self.wake_at = self.due.peek().map(|Reverse((due, _))| *due);
        self.wake_at
    }

    fn remove(&mut self, key: u64) {
        self.entries.remove(&key);
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A conflated subscription's hold on its channel: dropping it ends the
/// subscription (and, as any [`LiveSubscription`], may make the channel inactive).
pub struct Conflated {
    key: u64,
    /// Keeps the channel active; its live buffer is never read.
    live: LiveSubscription,
}

impl Drop for Conflated {
    fn drop(&mut self) {
        let mut channels = self.live.partition.lock();
        let Some(active) = channels.get_mut(&self.live.channel) else {
            return;
        };
        let Some(group) = active.conflation.as_mut() else {
            return;
        };
        group.remove(self.key);
        if group.is_empty() {
            // Its timer task finds no group of its own and ends.
            group.timer.notify_one();
            active.conflation = None;
        }
    }
}

/// Registers a conflated subscription of `live`'s channel, which has sent its last
/// frame at `sent_at`. From here on `sampler` is offered the channel's newest tick at
/// most once per `interval` (and at once if one newer than its cursor is there now).
pub(crate) fn register(
    mut live: LiveSubscription,
    interval: Duration,
    sampler: Box<dyn Sampler>,
    sent_at: Option<Instant>,
) -> Conflated {
    // Conflated subscribers take the newest tick from the ring: a receiver of the
    // live buffer would only pin frames nobody reads.
    live.rx = None;
    let mut channels = live.partition.lock();
    let key = match channels.get_mut(&live.channel) {
        Some(active) => {
            let group = match &mut active.conflation {
                Some(group) => group,
                None => {
                    let group = Group::new();
                    tokio::spawn(run_timer(
                        live.partition.clone(),
                        live.channel.clone(),
                        group.timer.clone(),
                    ));
                    active.conflation.insert(group)
                }
            };
            group.add(sampler, interval, sent_at, active.recent.back(), Instant::now())
        }
        // The live subscription keeps its channel active: it is there.
        None => 0,
    };
    drop(channels);
    Conflated { key, live }
}

/// Subscriptions the timer fires before it lets their writers run.
const SLICE: usize = 64;

/// The timer of one channel's group: sleeps until the earliest due time (or until a
/// subscription is armed earlier), fires what is due, and ends with its group.
///
/// Subscriptions that joined together fall due together. Fired a slice at a time,
/// with the writers of each slice written before the next is fired, each one's
/// `sent_at` is when its frame really left, so such a crowd spreads itself over the
/// period within a few rounds instead of every tenth of a second queueing its last
/// members behind a thousand writes (docs/BENCHMARKS.md "Conflation").
async fn run_timer(partition: Arc<Partition>, channel: Arc<str>, timer: Arc<Notify>) {
    loop {
        let now = Instant::now();
        let wake_at = {
            let mut channels = partition.lock();
            let Some(active) = channels.get_mut(&channel) else {
                return;
            };
            let newest = active.recent.back().cloned();
            match &mut active.conflation {
                Some(group) if Arc::ptr_eq(&group.timer, &timer) => group.fire_due(newest.as_ref(), now, SLICE),
                _ => return,
            }
        };
        if wake_at.is_some_and(|at| at <= now) {
            tokio::task::yield_now().await;
            continue;
        }
        match wake_at {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = timer.notified() => {}
                }
            }
            None => timer.notified().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records what it was offered; answers as told.
    struct Probe {
        offers: Arc<Mutex<Vec<u64>>>,
        answer: Arc<Mutex<Offer>>,
    }

    impl Sampler for Probe {
        fn offer(&mut self, newest: &LiveFrame) -> Offer {
            self.offers.lock().unwrap().push(newest.seq);
            *self.answer.lock().unwrap()
        }
    }

    fn frame(seq: u64) -> LiveFrame {
        let fields = crate::tick::wire::fields(0, None, None, "e");
        LiveFrame::new(&crate::tick::Tick {
            id: crate::tick::StreamId::new(seq, 0),
            seq,
            epoch: "e".into(),
            channel: "c".into(),
            body: crate::tick::wire::body(seq, "e", &fields),
        })
    }

    fn probe(group: &mut Group, sent_at: Option<Instant>) -> (Arc<Mutex<Vec<u64>>>, Arc<Mutex<Offer>>) {
        let offers = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(Mutex::new(Offer::Sent));
        let sampler = Probe {
            offers: offers.clone(),
            answer: answer.clone(),
        };
        group.add(
            Box::new(sampler),
            Duration::from_millis(100),
            sent_at,
            None,
            Instant::now(),
        );
        (offers, answer)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn an_idle_subscription_gets_a_tick_at_once_then_the_newest_when_due() {
        let mut group = Group::new();
        let (offers, _) = probe(&mut group, None);
        let t0 = Instant::now();
        group.published(&frame(1), t0);
        assert_eq!(*offers.lock().unwrap(), vec![1]);
        // Within 1/rate of the last frame: armed, not sent.
        group.published(&frame(2), t0 + ms(10));
        group.published(&frame(3), t0 + ms(20));
        assert_eq!(*offers.lock().unwrap(), vec![1]);
        assert_eq!(group.fire_due(Some(&frame(3)), t0 + ms(50), SLICE), Some(t0 + ms(100)));
        // Due: whatever is newest then goes out.
        assert_eq!(group.fire_due(Some(&frame(4)), t0 + ms(100), SLICE), None);
        assert_eq!(*offers.lock().unwrap(), vec![1, 4]);
        // Idle again long enough: the next tick goes at once.
        group.published(&frame(5), t0 + ms(300));
        assert_eq!(*offers.lock().unwrap(), vec![1, 4, 5]);
    }

    #[test]
    fn a_full_queue_is_tried_again_a_period_later() {
        let mut group = Group::new();
        let (offers, answer) = probe(&mut group, None);
        *answer.lock().unwrap() = Offer::Full;
        let t0 = Instant::now();
        group.published(&frame(1), t0);
        assert_eq!(group.fire_due(Some(&frame(1)), t0, SLICE), Some(t0 + ms(100)));
        *answer.lock().unwrap() = Offer::Sent;
        group.fire_due(Some(&frame(2)), t0 + ms(100), SLICE);
        assert_eq!(*offers.lock().unwrap(), vec![1, 2]);
    }

    #[test]
    fn a_crowd_is_fired_a_slice_at_a_time() {
        let mut group = Group::new();
        let t0 = Instant::now();
        let (a, _) = probe(&mut group, Some(t0));
        let (b, _) = probe(&mut group, Some(t0));
        group.published(&frame(1), t0 + ms(10));
        // Both due at once; a slice of one leaves the other due already.
        assert_eq!(group.fire_due(Some(&frame(2)), t0 + ms(100), 1), Some(t0 + ms(100)));
        assert_eq!(a.lock().unwrap().len() + b.lock().unwrap().len(), 1);
        assert_eq!(group.fire_due(Some(&frame(2)), t0 + ms(101), 1), None);
        assert_eq!((a.lock().unwrap().len(), b.lock().unwrap().len()), (1, 1));
    }

    #[test]
    fn a_tick_for_more_idle_subscriptions_than_a_slice_leaves_the_rest_to_the_timer() {
        let mut group = Group::new();
        let probes: Vec<_> = (0..SLICE + 10).map(|_| probe(&mut group, None).0).collect();
        let offered = |probes: &[Arc<Mutex<Vec<u64>>>]| probes.iter().filter(|p| !p.lock().unwrap().is_empty()).count();
        let t0 = Instant::now();
        // Under the partition lock: one slice; the other ten fall due at once.
        group.published(&frame(1), t0);
        assert_eq!(offered(&probes), SLICE);
        assert_eq!(group.wake_at, Some(t0));
        assert_eq!(group.fire_due(Some(&frame(1)), t0, SLICE), None);
        assert_eq!(offered(&probes), SLICE + 10);
    }

    #[test]
    fn a_gone_subscription_leaves_the_group() {
        let mut group = Group::new();
        let (_, answer) = probe(&mut group, None);
        *answer.lock().unwrap() = Offer::Gone;
        group.published(&frame(1), Instant::now());
        assert!(group.is_empty());
    }
}

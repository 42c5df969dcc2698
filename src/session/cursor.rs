//! Where a subscription stands, and the delivery rule: every tick with id > `since`
//! exactly once, in id order, and every discontinuity announced by a `gap` first
//! (docs/PROTOCOL.md §5.4). [`Cursor::admit`] is the one place that rule lives, for
//! replayed, caught-up and live ticks alike.

use std::sync::Arc;

use serde_json::json;

use super::protocol::{Frame, Kind};
use crate::hub::LiveFrame;
use crate::tick::epoch::is_rollback_of;
use crate::tick::StreamId;

/// What a subscription has sent, and in which epoch.
#[derive(Debug, Clone)]
pub struct Cursor {
    /// The session's number for this subscription.
    pub sub: u64,
    pub channel: String,
    pub last_sent: StreamId,
    pub last_seq: Option<u64>,
    /// `last_seq` is what the client said it had (a resume's `seq`), not the `seq` of
    /// a tick this cursor saw: a wrong claim may make a wrong gap, but must not make
    /// a `rollback`.
    pub seq_claimed: bool,
    pub epoch: Option<Arc<str>>,
    /// Ticks sent so far.
    pub sent: u64,
}

/// A conflated subscription's frames for one tick: a `gap` first, if any.
#[derive(Debug)]
pub struct Sample {
    pub gap: Option<Frame>,
    pub tick: Frame,
}

/// What to do with one tick.
#[derive(Debug)]
pub enum Admit {
    /// Already sent (an overlap of replay and live): skip it.
    Skip,
    /// Send it.
    Send,
    /// Send this `gap` frame, then the tick.
    SendAfter(Frame),
}

impl Cursor {
    pub fn new(sub: u64, channel: String) -> Cursor {
        Cursor {
            sub,
            channel,
            last_sent: StreamId::ZERO,
            last_seq: None,
            seq_claimed: false,
            epoch: None,
            sent: 0,
        }
    }

    /// The `gap` frame for a discontinuity after `last_sent`; `resume_from` is the
    /// first id that will follow (none yet when the channel has no ticks).
    pub fn gap_frame(&self, reason: &str, resume_from: Option<StreamId>, missed: Option<u64>) -> Frame {
        Frame::json(
            Kind::Gap,
            json!({
                "type": "gap",
                "channel": self.channel,
                "reason": reason,
                "after": self.last_sent.to_string(),
                "resume_from": resume_from.map(|id| id.to_string()),
                "missed": missed,
            }),
        )
    }

    /// Decides one tick and, unless it is skipped, moves the cursor to it.
    ///
    /// - A tick of another epoch than the last one sent is new, whatever its id, and
    ///   is preceded by a `gap`: `rollback` when its epoch is what a failover made of
    ///   the old one (`tick::epoch`), else `epoch`. (Only within one epoch does an id
    ///   at or below `last_sent` mean "already sent".)
    /// - Within the epoch, a `seq` that skips (history trimmed under a lagging
    ///   client) is a `gap` `trimmed` with the exact count, and a `seq` that goes
    ///   back (a failover rolled the stream back under this subscription, before
    ///   anyone moved it to a new epoch) a `gap` `rollback`.
    /// - A tick of an epoch that the cursor's epoch rolled back is stale (a frame
    ///   read before the rollback, arriving late): the subscription only moves
    ///   forward, so it is skipped.
    pub fn admit(&mut self, id: StreamId, seq: u64, epoch: &Arc<str>) -> Admit {
        self.admit_counting(id, seq, epoch, true)
    }

    /// The delivery rule of a conflated subscription (docs/PROTOCOL.md §5.8
    /// "Conflation"): `newest` goes out unless it was sent already, as a tick frame
    /// whose `skipped` counts the channel's ticks since the previous frame's (`null`
    /// where they cannot be counted: the `seq` before is unknown, or a `gap` of
    /// another epoch or a rollback precedes it). A jump in `seq` is what conflation
    /// means, never a `trimmed` gap. Returns the frames to send, in order.
    pub fn sample(&mut self, newest: &LiveFrame) -> Option<Sample> {
        let before = self.last_seq;
        match self.admit_counting(newest.id, newest.seq, &newest.epoch, false) {
            Admit::Skip => None,
            Admit::Send => Some(Sample {
                gap: None,
                tick: Frame::sampled(
                    newest,
                    before.and_then(|last| newest.seq.checked_sub(last.saturating_add(1))),
                ),
            }),
            Admit::SendAfter(gap) => Some(Sample {
                gap: Some(gap),
                tick: Frame::sampled(newest, None),
            }),
        }
    }

    /// The cursor now stands at tick `id` (`seq` of `epoch`), as sent: the next tick
    /// is judged against it.
    pub fn move_to(&mut self, id: StreamId, seq: u64, epoch: Arc<str>) {
        self.epoch = Some(epoch);
        self.seq_claimed = false;
        self.last_seq = Some(seq);
        self.last_sent = id;
    }

    fn admit_counting(&mut self, id: StreamId, seq: u64, epoch: &Arc<str>, count_jumps: bool) -> Admit {
        // The ticks of one read share one epoch allocation: the common case is a
        // pointer comparison, not a string one, and never an epoch parse.
        let other_epoch = self
            .epoch
            .as_ref()
            .filter(|ours| !Arc::ptr_eq(ours, epoch) && ***ours != **epoch);
        if other_epoch.is_some_and(|ours| is_rollback_of(ours, epoch)) {
            return Admit::Skip;
        }
        if other_epoch.is_none() && id <= self.last_sent {
            return Admit::Skip;
        }
        let gap = match other_epoch {
            Some(old) => {
                let reason = if is_rollback_of(epoch, old) {
                    "rollback"
                } else {
                    "epoch"
                };
                Some(self.gap_frame(reason, Some(id), None))
            }
            // Saturating: a client may send any `seq`, up to u64::MAX.
            None => match self.last_seq {
                Some(last) if count_jumps && seq > last.saturating_add(1) => {
                    Some(self.gap_frame("trimmed", Some(id), Some(seq - last - 1)))
                }
                Some(last) if seq <= last && !self.seq_claimed => Some(self.gap_frame("rollback", Some(id), None)),
                _ => None,
            },
        };
        self.move_to(id, seq, epoch.clone());
        self.sent += 1;
        match gap {
            Some(frame) => Admit::SendAfter(frame),
            None => Admit::Send,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> StreamId {
        StreamId::new(ms, 0)
    }

    fn gap_of(admit: Admit) -> serde_json::Value {
        match admit {
            Admit::SendAfter(Frame::Text { text, .. }) => serde_json::from_str(&text).unwrap(),
            other => panic!("expected a gap, got {other:?}"),
        }
    }

    #[test]
    fn consecutive_ticks_are_sent_and_duplicates_skipped() {
        let e: Arc<str> = "e1".into();
        let mut c = Cursor::new(1, "c".into());
        assert!(matches!(c.admit(id(10), 1, &e), Admit::Send));
        assert!(matches!(c.admit(id(11), 2, &e), Admit::Send));
        // Replay and live overlap: the same id (or an older one) again is skipped.
        assert!(matches!(c.admit(id(11), 2, &e), Admit::Skip));
        assert!(matches!(c.admit(id(10), 1, &e), Admit::Skip));
        assert_eq!((c.last_sent, c.last_seq, c.sent), (id(11), Some(2), 2));
    }

    #[test]
    fn a_seq_jump_is_a_trimmed_gap_with_the_exact_count() {
        let e: Arc<str> = "e1".into();
        let mut c = Cursor::new(1, "c".into());
        c.last_sent = id(5);
        c.last_seq = Some(4711);
        let gap = gap_of(c.admit(id(50), 4800, &e));
        assert_eq!(gap["reason"], "trimmed");
        assert_eq!(gap["missed"], 88);
        assert_eq!(gap["after"], "5-0");
        assert_eq!(gap["resume_from"], "50-0");
        // Continuity again afterwards.
        assert!(matches!(c.admit(id(51), 4801, &e), Admit::Send));
    }

    #[test]
    fn without_a_known_seq_nothing_can_be_counted() {
        let e: Arc<str> = "e1".into();
        let mut c = Cursor::new(1, "c".into());
        c.last_sent = id(5);
        // The caller announces a trimmed gap with `missed: null` itself when it knows
        // history was lost; the cursor cannot tell.
        assert!(matches!(c.admit(id(50), 4800, &e), Admit::Send));
    }

    #[test]
    fn a_new_epoch_is_announced_and_restarts_seq() {
        let old: Arc<str> = "old".into();
        let new: Arc<str> = "new".into();
        let mut c = Cursor::new(1, "c".into());
        assert!(matches!(c.admit(id(10), 900, &old), Admit::Send));
        let gap = gap_of(c.admit(id(20), 1, &new));
        assert_eq!(gap["reason"], "epoch");
        assert!(gap["missed"].is_null());
        assert!(matches!(c.admit(id(21), 2, &new), Admit::Send));
    }

    #[test]
    fn a_rollback_is_announced_and_its_ticks_are_new_whatever_their_ids() {
        let old: Arc<str> = "k3v9q2xaw1mz".into();
        let rolled: Arc<str> = crate::tick::epoch::after_rollback(&old).into();
        let mut c = Cursor::new(1, "c".into());
        assert!(matches!(c.admit(id(10), 7, &old), Admit::Send));
        assert!(matches!(c.admit(id(11), 8, &old), Admit::Send));
        // The failover lost 10 and 11; the new epoch's first tick even got a lower id.
        let gap = gap_of(c.admit(id(9), 1, &rolled));
        assert_eq!(
            (gap["reason"].as_str(), gap["after"].as_str()),
            (Some("rollback"), Some("11-0"))
        );
        assert!(gap["missed"].is_null());
        assert!(matches!(c.admit(id(12), 2, &rolled), Admit::Send));
        assert!(matches!(c.admit(id(12), 2, &rolled), Admit::Skip));
        // A frame of the rolled-back epoch read before the rollback, arriving late,
        // never takes the subscription back (nor makes a second gap).
        assert!(matches!(c.admit(id(13), 9, &old), Admit::Skip));
        assert!(matches!(c.admit(id(13), 3, &rolled), Admit::Send));
    }

    #[test]
    fn a_seq_that_goes_back_within_the_epoch_is_a_rollback() {
        let e: Arc<str> = "e1".into();
        let mut c = Cursor::new(1, "c".into());
        assert!(matches!(c.admit(id(10), 100, &e), Admit::Send));
        // A tick stored after a failover, before the stream moved to a new epoch.
        let gap = gap_of(c.admit(id(20), 96, &e));
        assert_eq!(gap["reason"], "rollback");
        assert!(matches!(c.admit(id(21), 97, &e), Admit::Send));
        // A claimed seq is only a claim: no rollback from it.
        let mut c = Cursor::new(1, "c".into());
        c.last_sent = id(5);
        c.last_seq = Some(1000);
        c.seq_claimed = true;
        assert!(matches!(c.admit(id(6), 5, &e), Admit::Send));
    }

    fn tick(id_ms: u64, seq: u64, epoch: &Arc<str>) -> LiveFrame {
        let fields = crate::tick::wire::fields(0, Some("1.5"), None, "ev");
        let tick = crate::tick::Tick {
            id: id(id_ms),
            seq,
            epoch: epoch.clone(),
            channel: "c".into(),
            body: crate::tick::wire::body(seq, epoch, &fields),
        };
        LiveFrame::new(&tick)
    }

    fn skipped_of(frame: &Frame) -> serde_json::Value {
        match frame {
            Frame::Sampled(s) => serde_json::from_str::<serde_json::Value>(&s.text).unwrap()["skipped"].clone(),
            other => panic!("expected a sampled tick, got {other:?}"),
        }
    }

    #[test]
    fn a_sample_counts_what_it_skipped_and_never_makes_a_trimmed_gap() {
        let e: Arc<str> = "e1".into();
        let mut c = Cursor::new(1, "c".into());
        c.last_sent = id(10);
        c.last_seq = Some(10);
        let s = c.sample(&tick(50, 50, &e)).unwrap();
        assert!(s.gap.is_none());
        assert_eq!(skipped_of(&s.tick), 39);
        // Continuity: previous seq + skipped + 1.
        let s = c.sample(&tick(51, 51, &e)).unwrap();
        assert_eq!(skipped_of(&s.tick), 0);
        // The same newest tick again sends nothing.
        assert!(c.sample(&tick(51, 51, &e)).is_none());
        // Without a known seq before, nothing can be counted.
        let mut c = Cursor::new(1, "c".into());
        assert!(skipped_of(&c.sample(&tick(5, 5, &e)).unwrap().tick).is_null());
    }

    #[test]
    fn a_sample_of_a_new_epoch_follows_its_gap_uncounted() {
        let old: Arc<str> = "old".into();
        let new: Arc<str> = "new".into();
        let mut c = Cursor::new(1, "c".into());
        c.sample(&tick(10, 10, &old)).unwrap();
        let s = c.sample(&tick(20, 7, &new)).unwrap();
        let gap = gap_of(Admit::SendAfter(s.gap.unwrap()));
        assert_eq!(gap["reason"], "epoch");
        assert!(skipped_of(&s.tick).is_null());
        assert_eq!(skipped_of(&c.sample(&tick(25, 9, &new)).unwrap().tick), 1);
    }

    #[test]
    fn a_sampled_frame_is_the_tick_with_skipped_last() {
        let e: Arc<str> = "e1".into();
        let t = tick(7, 3, &e);
        let Frame::Sampled(s) = Frame::sampled(&t, Some(12)) else {
            panic!("not a sampled frame");
        };
        let v: serde_json::Value = serde_json::from_str(&s.text).unwrap();
        let plain: serde_json::Value = serde_json::from_str(&t.text).unwrap();
        assert_eq!(v["skipped"], 12);
        assert_eq!(v.as_object().unwrap().len(), plain.as_object().unwrap().len() + 1);
        assert_eq!(v["seq"], 3);
        assert!(s.text.ends_with(",\"skipped\":12}"));
    }

    #[test]
    fn the_largest_seq_a_client_can_claim_does_not_overflow() {
        let e: Arc<str> = "e1".into();
        let mut c = Cursor::new(1, "c".into());
        c.last_seq = Some(u64::MAX);
        c.seq_claimed = true;
        assert!(matches!(c.admit(id(1), 5, &e), Admit::Send));
    }
}

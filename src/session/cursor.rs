//! Where a subscription stands, and the delivery rule: every tick with id > `since`
//! exactly once, in id order, and every discontinuity announced by a `gap` first
//! (docs/PROTOCOL.md §5.4). [`Cursor::admit`] is the one place that rule lives, for
//! replayed, caught-up and live ticks alike.

use std::sync::Arc;

use serde_json::json;

use super::protocol::{Frame, Kind};
use crate::tick::StreamId;

/// What a subscription has sent, and in which epoch.
#[derive(Debug)]
pub struct Cursor {
    /// The session's number for this subscription.
    pub sub: u64,
    pub channel: String,
    pub last_sent: StreamId,
    pub last_seq: Option<u64>,
    pub epoch: Option<Arc<str>>,
    /// Ticks sent so far.
    pub sent: u64,
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

    /// Decides one tick and, unless it is skipped, moves the cursor to it. A tick of
    /// another epoch than the last one sent is preceded by a `gap` `epoch`; a `seq`
    /// that skips within the epoch (history trimmed under a lagging client) by a `gap`
    /// `trimmed` with the exact count.
    pub fn admit(&mut self, id: StreamId, seq: u64, epoch: &Arc<str>) -> Admit {
        if id <= self.last_sent {
            return Admit::Skip;
        }
        let gap = match &self.epoch {
            Some(e) if e != epoch => {
                self.last_seq = None;
                Some(self.gap_frame("epoch", Some(id), None))
            }
            // Saturating: a client may send any `seq`, up to u64::MAX.
            _ => match self.last_seq {
                Some(last) if seq > last.saturating_add(1) => {
                    Some(self.gap_frame("trimmed", Some(id), Some(seq - last - 1)))
                }
                _ => None,
            },
        };
        self.epoch = Some(epoch.clone());
        self.last_seq = Some(seq);
        self.last_sent = id;
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
            Admit::SendAfter(Frame::Text { text, .. }) => serde_json::from_str(text.as_str()).unwrap(),
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
    fn the_largest_seq_a_client_can_claim_does_not_overflow() {
        let e: Arc<str> = "e1".into();
        let mut c = Cursor::new(1, "c".into());
        c.last_seq = Some(u64::MAX);
        assert!(matches!(c.admit(id(1), 5, &e), Admit::Send));
    }
}

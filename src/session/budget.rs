//! A socket's budget of tick bytes in flight (docs/PROTOCOL.md §5.5 "Slow consumers":
//! at most 1 MiB of tick data held per socket, whatever it subscribes to and however
//! slowly it reads).
//!
//! Replay and catch-up read the stream (or take from the node's ring) only what the
//! budget grants, and the grant travels with the frames through the connection's
//! queue into the writer, which gives it back once their bytes are written to the
//! socket. So a slow reader with 256 subscriptions replaying from `0-0` holds at most
//! [`REPLAY_BYTES`] of replayed ticks, never a page per subscription; the writer's
//! own batch of live ticks is capped by [`BATCH_BYTES`], and the two add up to at
//! most [`SOCKET_TICK_BYTES`] (the node's shared per-channel ring and live buffer
//! are not a socket's: every subscriber shares them).

use std::sync::Arc;

use tokio::sync::Semaphore;

/// Tick data one socket may hold, at most (SPEC: 1 MiB).
pub const SOCKET_TICK_BYTES: usize = 1024 * 1024;
/// The writer's batch, live ticks included, is cut at this many bytes (plus the
/// queue item, at most [`FEED_BYTES`] and a frame, that crossed it).
pub const BATCH_BYTES: usize = 96 * 1024;
/// A feed queues its pending frames once they weigh this much (or are 32 frames).
pub const FEED_BYTES: usize = 32 * 1024;
/// Replayed and caught-up ticks in flight: queued, in the writer's batch, or being
/// written. Beside them a socket holds at most two batches (one being written, and
/// for SSE one more handed to the response body, whose replayed ticks no longer
/// count here), each at most [`BATCH_BYTES`], a feed item and a frame: in all, under
/// [`SOCKET_TICK_BYTES`].
pub const REPLAY_BYTES: usize = SOCKET_TICK_BYTES - 2 * (BATCH_BYTES + FEED_BYTES + MAX_FRAME_BYTES);
/// A page read takes at most this much of the budget, so one subscription's slow
/// read never holds the whole socket's.
pub const PAGE_BYTES: usize = 256 * 1024;
/// The largest a tick frame can be: 8 KiB of `data` and 128 bytes of channel, a
/// `key` of 128 characters (up to 4 bytes each, its JSON escapes aside: it is not in
/// the frame) and the fixed members. Used to size the first page read of a feed.
pub const MAX_FRAME_BYTES: usize = 10 * 1024;
/// A grant is at least this much (or a whole frame), so a page read is never tiny.
const MIN_GRANT: usize = 64 * 1024;

/// The budget of one socket, shared by its subscriptions' feeds and its writer.
pub struct Budget {
    bytes: Semaphore,
}

impl Budget {
    pub fn new() -> Arc<Budget> {
        Arc::new(Budget {
            bytes: Semaphore::new(REPLAY_BYTES),
        })
    }

    /// Bytes not granted now.
    #[cfg(test)]
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }

    /// Waits until at least `min(at_least, REPLAY_BYTES)` bytes (and
    /// [`MIN_GRANT`]) are free, then grants up to `want` of what is free.
    pub async fn grant(self: &Arc<Self>, at_least: usize, want: usize) -> Grant {
        let floor = at_least.clamp(MIN_GRANT, REPLAY_BYTES);
        let Ok(permit) = self.bytes.acquire_many(floor as u32).await else {
            // Never closed; a grant of nothing makes the feed read one tick at a time.
            return Grant::none(self);
        };
        permit.forget();
        let mut bytes = floor;
        let extra = want.saturating_sub(floor).min(self.bytes.available_permits());
        if extra > 0 {
            if let Ok(more) = self.bytes.try_acquire_many(extra as u32) {
                more.forget();
                bytes += extra;
            }
        }
        Grant {
            budget: self.clone(),
            bytes,
        }
    }
}

/// Bytes of a socket's budget, given back when dropped: a feed's unused reserve, or
/// the bytes of frames on their way to the socket.
pub struct Grant {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Grant {
    pub fn none(budget: &Arc<Budget>) -> Grant {
        Grant {
            budget: budget.clone(),
            bytes: 0,
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Moves `n` bytes (at most what it holds) into a grant of their own.
    pub fn split(&mut self, n: usize) -> Grant {
        let n = n.min(self.bytes);
        self.bytes -= n;
        Grant {
            budget: self.budget.clone(),
            bytes: n,
        }
    }

    /// Moves `n` of its bytes (at most all) to `to`, a grant of the same budget:
    /// two counters change, nothing else (no budget handle is cloned or dropped).
    pub fn move_to(&mut self, to: &mut Grant, n: usize) {
        debug_assert!(Arc::ptr_eq(&self.budget, &to.budget));
        let n = n.min(self.bytes);
        self.bytes -= n;
        to.bytes += n;
    }

    /// Takes over `other`'s bytes.
    pub fn absorb(&mut self, mut other: Grant) {
        self.bytes += std::mem::take(&mut other.bytes);
    }

    /// Gives its bytes back now; the grant stays, empty.
    pub fn release(&mut self) {
        let bytes = std::mem::take(&mut self.bytes);
        if bytes > 0 {
            self.budget.bytes.add_permits(bytes);
        }
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.release();
    }
}

/// What a tick frame of this text costs the budget: its bytes, and its share of the
/// frame's allocation and of the queue.
pub fn frame_cost(text_len: usize) -> usize {
    text_len + 64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn grants_come_back_when_dropped_and_never_exceed_the_budget() {
        let budget = Budget::new();
        let mut a = budget.grant(0, usize::MAX).await;
        assert_eq!(
            a.bytes(),
            REPLAY_BYTES,
            "a grant takes what is free, up to what is asked"
        );
        assert_eq!(budget.available(), 0);
        let frames = a.split(100_000);
        assert_eq!((a.bytes(), frames.bytes()), (REPLAY_BYTES - 100_000, 100_000));
        drop(a);
        assert_eq!(budget.available(), REPLAY_BYTES - 100_000);
        // A second feed waits until enough is back.
        let waiting = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.grant(REPLAY_BYTES, REPLAY_BYTES).await.bytes() })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(frames);
        assert_eq!(waiting.await.unwrap(), REPLAY_BYTES);
        assert_eq!(budget.available(), REPLAY_BYTES);
        const { assert!(REPLAY_BYTES + 2 * (BATCH_BYTES + FEED_BYTES + MAX_FRAME_BYTES) <= SOCKET_TICK_BYTES) };
    }
}

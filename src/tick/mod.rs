//! Ticks: what producers send, how it is validated, and how a stored tick is written
//! to the wire (docs/PROTOCOL.md §1–2).
//!
//! - [`id`]: stream ids, the resume cursor everywhere, and where a subscriber starts.
//! - [`validate`]: the ingest body, its all-or-nothing validation and the event id.
//! - [`epoch`]: epoch names, and the successor a rollback moves a channel to.
//! - [`wire`]: a stored tick and the JSON it is written as.
//!
//! Everything here is pure (no I/O), so the rules are unit-tested beside the code. A
//! tick is validated once at ingest; after that the stored form is trusted, which is
//! why [`Tick::write_json`] can write JSON by hand without escaping: channel names,
//! epochs, ids and event ids are restricted alphabets, and `value` / `data` are stored
//! as compact JSON that serde_json produced.

pub mod epoch;
pub mod id;
pub mod validate;
pub mod wire;

pub use epoch::new_epoch;
pub use id::{BadSince, BadStreamId, Since, StreamId};
pub use validate::{check_not_ahead, parse_body, BodyError, IngestTick, PreparedTick, TickError};
pub use wire::Tick;

/// Longest channel name (docs/PROTOCOL.md §1: one leading character plus up to 127 more).
pub const MAX_CHANNEL_LEN: usize = 128;

/// `^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$`, checked by hand: it runs on every request
/// and a regex engine would be the only reason to pull one in.
pub fn is_valid_channel(name: &str) -> bool {
    let bytes = name.as_bytes();
    match bytes.first() {
        Some(first) if first.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    bytes.len() <= MAX_CHANNEL_LEN
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_follow_the_spec_regex() {
        for ok in ["a", "crypto.BTC-USD", "iss.USLAB000061", "x:y_z-1", &"a".repeat(128)] {
            assert!(is_valid_channel(ok), "{ok}");
        }
        for bad in ["", ".a", "-a", "a b", "../x", "*", "a/b", "é", &"a".repeat(129), "a*"] {
            assert!(!is_valid_channel(bad), "{bad}");
        }
    }
}

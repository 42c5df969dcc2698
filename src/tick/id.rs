//! Stream ids, `<ms>-<seq>`: a tick's identity and every client's resume cursor, and
//! [`Since`], where a subscriber starts.

use std::fmt;
use std::str::FromStr;

/// A Redis stream id, `<ms>-<seq>`: the tick's identity and every client's resume
/// cursor. Ordered as Redis orders them, so "ids > since" is a plain comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };
    pub const MAX: StreamId = StreamId {
        ms: u64::MAX,
        seq: u64::MAX,
    };

    pub fn new(ms: u64, seq: u64) -> Self {
        StreamId { ms, seq }
    }

    /// The smallest id greater than this one (for exclusive range starts).
    pub fn next(self) -> StreamId {
        match (self.ms, self.seq) {
            (u64::MAX, u64::MAX) => self,
            (ms, u64::MAX) => StreamId::new(ms + 1, 0),
            (ms, seq) => StreamId::new(ms, seq + 1),
        }
    }

    /// The greatest id smaller than this one (for exclusive range ends).
    pub fn prev(self) -> StreamId {
        match (self.ms, self.seq) {
            (0, 0) => self,
            (ms, 0) => StreamId::new(ms - 1, u64::MAX),
            (ms, seq) => StreamId::new(ms, seq - 1),
        }
    }
}

impl StreamId {
    /// Appends `<ms>-<seq>` without the formatting machinery (it runs per tick of
    /// every history page).
    pub fn push_to(self, out: &mut String) {
        push_digits(out, self.ms, 1);
        out.push('-');
        push_digits(out, self.seq, 1);
    }
}

/// Appends `n` in decimal, zero-padded to at least `width` digits.
pub(super) fn push_digits(out: &mut String, mut n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut i = digits.len();
    while n > 0 {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let start = i.min(digits.len() - width.clamp(1, digits.len()));
    for &d in &digits[start..] {
        out.push(char::from(d));
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a stream id (expected <ms>-<seq>, e.g. 1732348800123-0)")]
pub struct BadStreamId;

impl FromStr for StreamId {
    type Err = BadStreamId;

    /// Accepts `<ms>-<seq>` and, as Redis does, a bare `<ms>` meaning `<ms>-0`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = |p: &str| -> Result<u64, BadStreamId> {
            if p.is_empty() || p.len() > 20 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(BadStreamId);
            }
            p.parse().map_err(|_| BadStreamId)
        };
        match s.split_once('-') {
            Some((ms, seq)) => Ok(StreamId::new(digits(ms)?, digits(seq)?)),
            None => Ok(StreamId::new(digits(s)?, 0)),
        }
    }
}

/// Where a subscriber wants to start (SPEC §3 `since`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// `since` absent: the last `TICKSTREAM_DEFAULT_REPLAY` ticks.
    Default,
    /// `since=$`: live only.
    Live,
    /// Every tick with a greater id (`0-0` = everything kept).
    After(StreamId),
}

impl Since {
    pub fn parse(raw: Option<&str>) -> Result<Since, BadStreamId> {
        match raw {
            None | Some("") => Ok(Since::Default),
            Some("$") => Ok(Since::Live),
            Some(id) => id.parse().map(Since::After),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_parse_order_and_print() {
        let a: StreamId = "1732348800123-0".parse().unwrap();
        let b: StreamId = "1732348800123-1".parse().unwrap();
        let c: StreamId = "1732348800124".parse().unwrap();
        assert!(a < b && b < c);
        assert_eq!(a.to_string(), "1732348800123-0");
        assert_eq!(a.next(), b);
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "a-1",
            "1-2-3",
            "1 -2",
            "+1-0",
            "99999999999999999999999-0",
        ] {
            assert!(bad.parse::<StreamId>().is_err(), "{bad}");
        }
        assert_eq!(Since::parse(None), Ok(Since::Default));
        assert_eq!(Since::parse(Some("$")), Ok(Since::Live));
        assert_eq!(Since::parse(Some("0-0")), Ok(Since::After(StreamId::ZERO)));
    }
}

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
pub(crate) fn push_digits(out: &mut String, mut n: u64, width: usize) {
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

/// Where a subscriber wants to start (docs/PROTOCOL.md §5.1 `since`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// `since` absent: the last `TICKSTREAM_DEFAULT_REPLAY` ticks.
    Default,
    /// `since=$`: live only.
    Live,
    /// Every tick with a greater id (`0-0` = everything kept).
    After(StreamId),
}

/// A `since` that is neither an id, `$`, nor a moment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a stream id (<ms>-<seq>, e.g. 1732348800123-0), $, t:<RFC 3339> or t:<unix ms>")]
pub struct BadSince;

impl Since {
    /// `since` as a client writes it. A moment, `t:<RFC 3339>` or `t:<unix ms>`,
    /// starts at the first tick appended at or after it: after the last id of the
    /// millisecond before (stream ids count milliseconds of append time).
    pub fn parse(raw: Option<&str>) -> Result<Since, BadSince> {
        match raw {
            None | Some("") => Ok(Since::Default),
            Some("$") => Ok(Since::Live),
            Some(raw) => match raw.strip_prefix("t:") {
                Some(moment) => Ok(Since::After(StreamId::new(parse_moment(moment)?, 0).prev())),
                None => raw.parse().map(Since::After).map_err(|_| BadSince),
            },
        }
    }
}

/// A moment in Unix milliseconds: an RFC 3339 time (with an offset; sub-millisecond
/// parts are dropped, so the whole millisecond it falls in is included) or a number
/// of milliseconds. Before 1970 is refused.
pub fn parse_moment(raw: &str) -> Result<u64, BadSince> {
    use time::format_description::well_known::Rfc3339;
    if !raw.is_empty() && raw.len() <= 20 && raw.bytes().all(|b| b.is_ascii_digit()) {
        return raw.parse().map_err(|_| BadSince);
    }
    let t = time::OffsetDateTime::parse(raw, &Rfc3339).map_err(|_| BadSince)?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| BadSince)
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
        assert_eq!(Since::parse(Some("yesterday")), Err(BadSince));
    }

    #[test]
    fn a_moment_starts_at_the_first_tick_of_its_millisecond() {
        // 2026-11-23T08:00:00.123Z is 1795420800123 ms.
        let at = Since::After(StreamId::new(1795420800122, u64::MAX));
        assert_eq!(Since::parse(Some("t:1795420800123")), Ok(at));
        assert_eq!(Since::parse(Some("t:2026-11-23T08:00:00.123Z")), Ok(at));
        assert_eq!(Since::parse(Some("t:2026-11-23T09:00:00.123+01:00")), Ok(at));
        assert_eq!(Since::parse(Some("t:2026-11-23T08:00:00.123999Z")), Ok(at));
        // Everything, from the start of time.
        assert_eq!(Since::parse(Some("t:0")), Ok(Since::After(StreamId::ZERO)));
        for bad in [
            "t:",
            "t:soon",
            "t:1969-12-31T23:59:59Z",
            "t:-5",
            "t:2026-11-23T08:00:00",
        ] {
            assert_eq!(Since::parse(Some(bad)), Err(BadSince), "{bad}");
        }
    }
}

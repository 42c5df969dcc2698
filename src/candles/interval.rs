//! Candle intervals: `1s`, `1m`, `5m`, `1h`, `1d`, buckets aligned to UTC (a `1d`
//! bucket starts at 00:00:00Z), and how long each keeps its candles.

use std::time::Duration;

/// One candle interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Interval {
    S1,
    M1,
    M5,
    H1,
    D1,
}

impl Interval {
    pub const ALL: [Interval; 5] = [Interval::S1, Interval::M1, Interval::M5, Interval::H1, Interval::D1];

    pub fn parse(raw: &str) -> Option<Interval> {
        Interval::ALL.into_iter().find(|i| i.name() == raw)
    }

    /// As clients write it, and as keys and frames carry it.
    pub fn name(self) -> &'static str {
        match self {
            Interval::S1 => "1s",
            Interval::M1 => "1m",
            Interval::M5 => "5m",
            Interval::H1 => "1h",
            Interval::D1 => "1d",
        }
    }

    pub fn ms(self) -> i64 {
        match self {
            Interval::S1 => 1_000,
            Interval::M1 => 60_000,
            Interval::M5 => 300_000,
            Interval::H1 => 3_600_000,
            Interval::D1 => 86_400_000,
        }
    }

    /// The start (Unix ms) of the bucket a tick at `ts_us` falls in; floor division,
    /// so a time before 1970 falls in the bucket before it too.
    pub fn bucket(self, ts_us: i64) -> i64 {
        ts_us.div_euclid(1000).div_euclid(self.ms()) * self.ms()
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Whether candles are kept, and for how long per interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CandleSettings {
    /// `TICKSTREAM_CANDLES`.
    pub enabled: bool,
    /// `TICKSTREAM_CANDLE_RETENTION_<1S|1M|5M|1H|1D>`, by [`Interval::ALL`] order.
    pub retention: [Duration; 5],
}

impl Default for CandleSettings {
    fn default() -> Self {
        const H: u64 = 3600;
        const D: u64 = 24 * H;
        CandleSettings {
            enabled: true,
            retention: [
                Duration::from_secs(6 * H),
                Duration::from_secs(7 * D),
                Duration::from_secs(30 * D),
                Duration::from_secs(365 * D),
                Duration::from_secs(3650 * D),
            ],
        }
    }
}

impl CandleSettings {
    pub fn retention(&self, interval: Interval) -> Duration {
        self.retention[interval.index()]
    }

    /// The intervals kept (none when candles are off).
    pub fn intervals(&self) -> &'static [Interval] {
        if self.enabled {
            &Interval::ALL
        } else {
            &[]
        }
    }

    /// The interval a subscriber asked live candles of (`"candles"` in a subscribe,
    /// `?candles=` on a stream's URL); absent or empty asks for none.
    pub fn live(&self, raw: Option<&str>) -> Result<Option<Interval>, &'static str> {
        let Some(raw) = raw.filter(|r| !r.is_empty()) else {
            return Ok(None);
        };
        if !self.enabled {
            return Err("candles are off on this server (TICKSTREAM_CANDLES)");
        }
        Interval::parse(raw)
            .map(Some)
            .ok_or("candles must be one of 1s, 1m, 5m, 1h, 1d")
    }

    /// Buckets at or before this start are past retention, given the channel's
    /// newest bucket of `interval` and the time now (Unix ms): retention counts back
    /// from the newest bucket, but never from the future, so one tick whose `ts` is
    /// years ahead cannot trim a channel's real candles away.
    pub fn cutoff(&self, interval: Interval, newest: i64, now_ms: i64) -> i64 {
        let keep = i64::try_from(self.retention(interval).as_millis()).unwrap_or(i64::MAX);
        newest.min(now_ms).saturating_sub(keep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_utc_aligned() {
        // 2026-12-01T09:30:42.123456Z
        let ts = 1_796_117_442_123_456;
        assert_eq!(Interval::S1.bucket(ts), 1_796_117_442_000);
        assert_eq!(Interval::M1.bucket(ts), 1_796_117_400_000);
        assert_eq!(Interval::M5.bucket(ts), 1_796_117_400_000);
        assert_eq!(Interval::H1.bucket(ts), 1_796_115_600_000);
        assert_eq!(Interval::D1.bucket(ts), 1_796_083_200_000, "midnight UTC");
        assert_eq!(Interval::M1.bucket(-1), -60_000, "before 1970: the bucket before");
        for i in Interval::ALL {
            assert_eq!(Interval::parse(i.name()), Some(i));
        }
        assert_eq!(Interval::parse("2m"), None);
    }

    #[test]
    fn retention_counts_back_from_the_newest_candle() {
        let s = CandleSettings::default();
        assert_eq!(s.cutoff(Interval::M1, 10 * 86_400_000, 20 * 86_400_000), 3 * 86_400_000);
        // A bucket in the future counts as now.
        assert_eq!(
            s.cutoff(Interval::M1, 900 * 86_400_000, 10 * 86_400_000),
            3 * 86_400_000
        );
        let off = CandleSettings { enabled: false, ..s };
        assert!(off.intervals().is_empty());
    }
}

//! The server's clock, in the units the rest of the code uses. One place, so that
//! every "now" (stream ids are ms, ticks µs, tokens s) comes from the same clock.

use time::OffsetDateTime;

/// Current time in Unix milliseconds (stream ids' unit).
pub fn now_ms() -> u64 {
    u64::try_from(now_us() / 1000).unwrap_or(0)
}

/// Current time in Unix microseconds.
pub fn now_us() -> i64 {
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(nanos / 1000).unwrap_or(i64::MAX)
}

/// Current time in Unix seconds (token expiry, HMAC timestamps).
pub fn unix_now() -> u64 {
    u64::try_from(now_us() / 1_000_000).unwrap_or(0)
}

//! Ticks: what producers send, how it is validated, and how a stored tick is written
//! to the wire.
//!
//! Everything here is pure (no I/O), so the rules of SPEC §1 are unit-tested beside
//! the code. A tick is validated once at ingest; after that the stored form is
//! trusted, which is why [`Tick::write_json`] can write JSON by hand without escaping:
//! channel names, epochs, ids and event ids are restricted alphabets, and `value` /
//! `data` are stored as compact JSON that serde_json produced.

use std::cmp::Ordering;
use std::fmt::{self, Write as _};
use std::str::FromStr;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Longest channel name (SPEC §1: one leading character plus up to 127 more).
pub const MAX_CHANNEL_LEN: usize = 128;
/// Largest `data` object, measured as compact JSON.
pub const MAX_DATA_BYTES: usize = 8 * 1024;
/// Largest idempotency `key`.
pub const MAX_KEY_CHARS: usize = 128;
/// Most ticks in one ingest batch.
pub const MAX_BATCH: usize = 1000;

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
fn push_digits(out: &mut String, mut n: u64, width: usize) {
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

/// One tick as a producer posts it. Unknown fields are refused (SPEC §1), so a typo
/// such as `"vaule"` fails loudly instead of storing a tick without its value.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestTick {
    pub channel: String,
    #[serde(default)]
    pub ts: Option<String>,
    /// Kept as the JSON number the producer wrote, so that `42` and `42.0` hash as
    /// the producer's own serializer would write them (see [`event_id`]).
    #[serde(default)]
    pub value: Option<serde_json::Number>,
    #[serde(default)]
    pub data: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub key: Option<String>,
}

/// Why a tick was refused; the message goes back to the producer verbatim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TickError {
    #[error("channel must match ^[A-Za-z0-9][A-Za-z0-9_.:-]{{0,127}}$")]
    BadChannel,
    #[error("ts must be an RFC 3339 timestamp with an offset, e.g. 2026-11-23T08:00:00.123Z")]
    BadTs,
    #[error("value must be a finite number")]
    BadValue,
    #[error("data must be a JSON object of at most 8 KiB")]
    DataTooLarge,
    #[error("a tick needs at least one of value and data")]
    Empty,
    #[error("key must be at most 128 characters")]
    BadKey,
}

/// A validated tick, ready for the store: everything the append needs, already
/// serialized once.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedTick {
    pub channel: String,
    pub ts_us: i64,
    /// `value` as JSON number text.
    pub value: Option<String>,
    /// `data` as compact JSON (keys sorted).
    pub data: Option<String>,
    pub event_id: String,
    /// The tick object's members the producer determines, as stored: see [`tail`].
    pub tail: String,
}

impl IngestTick {
    /// Validates against SPEC §1; `now_us` is the default `ts`.
    pub fn prepare(self, now_us: i64) -> Result<PreparedTick, TickError> {
        if !is_valid_channel(&self.channel) {
            return Err(TickError::BadChannel);
        }
        let ts_us = match &self.ts {
            None => now_us,
            Some(raw) => parse_ts_us(raw).ok_or(TickError::BadTs)?,
        };
        if let Some(v) = &self.value {
            // serde_json refuses NaN/Infinity and out-of-range literals already; this
            // guards arbitrary-precision builds and keeps the rule visible.
            if !v.as_f64().is_some_and(f64::is_finite) {
                return Err(TickError::BadValue);
            }
        }
        if self.value.is_none() && self.data.is_none() {
            return Err(TickError::Empty);
        }
        if let Some(key) = &self.key {
            if key.chars().count() > MAX_KEY_CHARS {
                return Err(TickError::BadKey);
            }
        }
        let data = self.data.map(serde_json::Value::Object);
        let data_text = match &data {
            None => None,
            Some(d) => {
                let text = d.to_string();
                if text.len() > MAX_DATA_BYTES {
                    return Err(TickError::DataTooLarge);
                }
                Some(text)
            }
        };
        let event_id = event_id(
            &self.channel,
            self.key.as_deref(),
            ts_us,
            self.value.as_ref(),
            data.as_ref(),
        );
        let value = self.value.map(|v| v.to_string());
        let tail = tail(ts_us, value.as_deref(), data_text.as_deref(), &event_id);
        Ok(PreparedTick {
            channel: self.channel,
            ts_us,
            value,
            data: data_text,
            event_id,
            tail,
        })
    }
}

/// Why an ingest body was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("{0}")]
    Json(String),
    #[error("a batch needs at least one tick")]
    Empty,
    #[error("a batch holds at most {MAX_BATCH} ticks, got {0}")]
    TooMany(usize),
    /// `index` is set for batches, so the producer learns which tick was wrong.
    #[error("{}{error}", index.map(|i| format!("tick {i}: ")).unwrap_or_default())]
    Tick { index: Option<usize>, error: TickError },
}

/// Parses and validates an ingest body: one tick object or an array of up to
/// [`MAX_BATCH`]. All-or-nothing: any bad tick refuses the whole body.
pub fn parse_body(bytes: &[u8], now_us: i64) -> Result<Vec<PreparedTick>, BodyError> {
    let is_batch = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let json_err = |e: serde_json::Error| BodyError::Json(e.to_string());
    let raw: Vec<IngestTick> = if is_batch {
        serde_json::from_slice(bytes).map_err(json_err)?
    } else {
        vec![serde_json::from_slice(bytes).map_err(json_err)?]
    };
    if raw.is_empty() {
        return Err(BodyError::Empty);
    }
    if raw.len() > MAX_BATCH {
        return Err(BodyError::TooMany(raw.len()));
    }
    raw.into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.prepare(now_us).map_err(|error| BodyError::Tick {
                index: is_batch.then_some(i),
                error,
            })
        })
        .collect()
}

/// SPEC §1 event id: lowercase hex SHA-256 of the compact, key-sorted JSON array
/// `["k",channel,key]` or `["t",channel,ts_us,value,data]`. serde_json's `Value`
/// keeps object keys in a BTreeMap, so its compact output is already key-sorted.
pub fn event_id(
    channel: &str,
    key: Option<&str>,
    ts_us: i64,
    value: Option<&serde_json::Number>,
    data: Option<&serde_json::Value>,
) -> String {
    use serde_json::Value;
    let canonical = match key {
        Some(key) => Value::Array(vec!["k".into(), channel.into(), key.into()]),
        None => Value::Array(vec![
            "t".into(),
            channel.into(),
            ts_us.into(),
            value.cloned().map_or(Value::Null, Value::Number),
            data.cloned().unwrap_or(Value::Null),
        ]),
    };
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

/// Parses an RFC 3339 timestamp (offset required) into Unix microseconds.
pub fn parse_ts_us(raw: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(raw, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1000).ok()
}

/// Writes Unix microseconds as RFC 3339 UTC: milliseconds when that is exact (the
/// common case), microseconds otherwise, so no precision a producer sent is lost.
pub fn write_ts(out: &mut String, us: i64) {
    let Ok(t) = OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000) else {
        out.push_str("1970-01-01T00:00:00Z");
        return;
    };
    // By hand rather than `write!`: this runs for every tick a history page writes.
    push_digits(out, u64::try_from(t.year()).unwrap_or(0), 4);
    out.push('-');
    push_digits(out, u64::from(u8::from(t.month())), 2);
    out.push('-');
    push_digits(out, u64::from(t.day()), 2);
    out.push('T');
    push_digits(out, u64::from(t.hour()), 2);
    out.push(':');
    push_digits(out, u64::from(t.minute()), 2);
    out.push(':');
    push_digits(out, u64::from(t.second()), 2);
    out.push('.');
    let micros = t.microsecond();
    if micros % 1000 == 0 {
        push_digits(out, u64::from(micros / 1000), 3);
    } else {
        push_digits(out, u64::from(micros), 6);
    }
    out.push('Z');
}

/// Current time in Unix milliseconds (stream ids' unit).
pub fn now_ms() -> u64 {
    u64::try_from(now_us() / 1000).unwrap_or(0)
}

/// Current time in Unix microseconds.
pub fn now_us() -> i64 {
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(nanos / 1000).unwrap_or(i64::MAX)
}

/// The members of a tick object that the producer determines, serialized once at
/// ingest: `"ts":"…","value":…,"data":…,"event_id":"…"}` (with the object's closing
/// brace). The store keeps it behind `seq` and `epoch` as the tick's body, so a read
/// splices stored bytes instead of re-serializing every field.
pub fn tail(ts_us: i64, value: Option<&str>, data: Option<&str>, event_id: &str) -> String {
    let mut out = String::with_capacity(96 + data.map_or(0, str::len));
    out.push_str("\"ts\":\"");
    write_ts(&mut out, ts_us);
    out.push_str("\",\"value\":");
    out.push_str(value.unwrap_or("null"));
    out.push_str(",\"data\":");
    out.push_str(data.unwrap_or("null"));
    let _ = write!(out, ",\"event_id\":\"{event_id}\"}}");
    out
}

/// A stored tick's body: `"seq":…,"epoch":"…",` then its [`tail`]. The Redis append
/// script builds the same bytes (`redis/append.lua`).
pub fn body(seq: u64, epoch: &str, tail: &str) -> String {
    let mut out = String::with_capacity(40 + tail.len());
    let _ = write!(out, "\"seq\":{seq},\"epoch\":\"{epoch}\",");
    out.push_str(tail);
    out
}

/// A stored tick, as read back from a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    pub id: StreamId,
    pub seq: u64,
    pub epoch: Arc<str>,
    pub channel: Arc<str>,
    /// See [`body`]; `seq` and `epoch` above are read from its start.
    pub body: String,
}

/// Why a stored body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored tick body does not start with seq and epoch")]
pub struct BadBody;

impl Tick {
    /// Reads `seq` and `epoch` from a stored body. `epochs` holds the last epoch seen,
    /// so the ticks of one read share one allocation.
    pub fn from_body(
        id: StreamId,
        channel: Arc<str>,
        body: String,
        epochs: &mut Option<Arc<str>>,
    ) -> Result<Tick, BadBody> {
        let rest = body.strip_prefix("\"seq\":").ok_or(BadBody)?;
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or(BadBody)?;
        let seq = rest[..digits].parse().map_err(|_| BadBody)?;
        let rest = rest[digits..].strip_prefix(",\"epoch\":\"").ok_or(BadBody)?;
        let epoch = &rest[..rest.find('"').ok_or(BadBody)?];
        let epoch = match epochs {
            Some(e) if **e == *epoch => e.clone(),
            _ => {
                let e: Arc<str> = epoch.into();
                *epochs = Some(e.clone());
                e
            }
        };
        Ok(Tick {
            id,
            seq,
            epoch,
            channel,
            body,
        })
    }

    /// Ingest time: the moment the store appended it, which is what the stream id's
    /// millisecond part records (on every node alike, since Redis assigns it).
    pub fn ingest_ms(&self) -> u64 {
        self.id.ms
    }

    /// The tick's `ts` as stored (RFC 3339).
    pub fn ts(&self) -> Option<&str> {
        let start = self.body.find("\"ts\":\"")? + 6;
        let len = self.body[start..].find('"')?;
        Some(&self.body[start..start + len])
    }

    /// Writes the tick object of SPEC §1; with `as_frame` it is the WebSocket
    /// `tick` frame (the same object with `"type":"tick"` first). The members the
    /// stream id determines come first, then the stored body as it is.
    pub fn write_json(&self, out: &mut String, as_frame: bool) {
        out.push('{');
        if as_frame {
            out.push_str("\"type\":\"tick\",");
        }
        out.push_str("\"id\":\"");
        self.id.push_to(out);
        out.push_str("\",\"channel\":\"");
        out.push_str(&self.channel);
        out.push_str("\",\"ingest_ts\":\"");
        write_ts(out, i64::try_from(self.ingest_ms()).unwrap_or(0) * 1000);
        out.push_str("\",");
        out.push_str(&self.body);
    }

    /// The WebSocket `tick` frame as a fresh string.
    pub fn to_frame(&self) -> String {
        let mut out = String::with_capacity(96 + self.channel.len() + self.body.len());
        self.write_json(&mut out, true);
        out
    }
}

impl PartialOrd for Tick {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.id.cmp(&other.id))
    }
}

/// A fresh random epoch: 12 lowercase base-36 characters (62 bits), enough that two
/// lives of one channel never share one.
pub fn new_epoch() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..12)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(json: &str) -> Result<PreparedTick, TickError> {
        serde_json::from_str::<IngestTick>(json)
            .expect("parses")
            .prepare(1_000_000)
    }

    #[test]
    fn channel_names_follow_the_spec_regex() {
        for ok in ["a", "crypto.BTC-USD", "iss.USLAB000061", "x:y_z-1", &"a".repeat(128)] {
            assert!(is_valid_channel(ok), "{ok}");
        }
        for bad in ["", ".a", "-a", "a b", "../x", "*", "a/b", "é", &"a".repeat(129), "a*"] {
            assert!(!is_valid_channel(bad), "{bad}");
        }
    }

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

    #[test]
    fn event_id_is_sha256_of_the_canonical_array() {
        let t = tick(r#"{"channel":"c","ts":"1970-01-01T00:00:01Z","value":1.5,"data":{"b":1,"a":2}}"#).unwrap();
        let expected = hex::encode(Sha256::digest(br#"["t","c",1000000,1.5,{"a":2,"b":1}]"#));
        assert_eq!(t.event_id, expected);
        assert_eq!(t.data.as_deref(), Some(r#"{"a":2,"b":1}"#));

        let keyed = tick(r#"{"channel":"c","value":1,"key":"k1"}"#).unwrap();
        assert_eq!(keyed.event_id, hex::encode(Sha256::digest(br#"["k","c","k1"]"#)));
        let no_value = tick(r#"{"channel":"c","ts":"1970-01-01T00:00:01Z","data":{}}"#).unwrap();
        assert_eq!(
            no_value.event_id,
            hex::encode(Sha256::digest(br#"["t","c",1000000,null,{}]"#))
        );
    }

    #[test]
    fn ts_defaults_to_now_and_keeps_offsets() {
        assert_eq!(tick(r#"{"channel":"c","value":1}"#).unwrap().ts_us, 1_000_000);
        let t = tick(r#"{"channel":"c","value":1,"ts":"2026-11-23T09:00:00.123+01:00"}"#).unwrap();
        let mut s = String::new();
        write_ts(&mut s, t.ts_us);
        assert_eq!(s, "2026-11-23T08:00:00.123Z");
        s.clear();
        write_ts(&mut s, t.ts_us + 7);
        assert_eq!(s, "2026-11-23T08:00:00.123007Z");
    }

    #[test]
    fn hand_written_numbers_match_the_formatter() {
        for id in [
            StreamId::ZERO,
            StreamId::new(1732348800123, 0),
            StreamId::new(u64::MAX, 42),
        ] {
            let mut s = String::new();
            id.push_to(&mut s);
            assert_eq!(s, id.to_string());
        }
        for (us, text) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (1_000_001, "1970-01-01T00:00:01.000001Z"),
            (1_795_000_000_120_000, "2026-11-18T11:06:40.120Z"),
        ] {
            let mut s = String::new();
            write_ts(&mut s, us);
            assert_eq!(s, text);
            assert_eq!(parse_ts_us(&s), Some(us));
        }
    }

    #[test]
    fn invalid_ticks_are_refused_with_the_reason() {
        assert_eq!(tick(r#"{"channel":"a b","value":1}"#), Err(TickError::BadChannel));
        assert_eq!(
            tick(r#"{"channel":"c","value":1,"ts":"yesterday"}"#),
            Err(TickError::BadTs)
        );
        assert_eq!(
            tick(r#"{"channel":"c","value":1,"ts":"2026-11-23T08:00:00"}"#),
            Err(TickError::BadTs)
        );
        assert_eq!(tick(r#"{"channel":"c"}"#), Err(TickError::Empty));
        assert_eq!(tick(r#"{"channel":"c","value":null}"#), Err(TickError::Empty));
        let big = format!(r#"{{"channel":"c","data":{{"x":"{}"}}}}"#, "y".repeat(8200));
        assert_eq!(tick(&big), Err(TickError::DataTooLarge));
        let key = format!(r#"{{"channel":"c","value":1,"key":"{}"}}"#, "k".repeat(129));
        assert_eq!(tick(&key), Err(TickError::BadKey));
        for refused_by_serde in [
            r#"{"channel":"c","value":1,"extra":true}"#,
            r#"{"channel":"c","value":"NaN"}"#,
            r#"{"channel":"c","value":1e400}"#,
            r#"{"channel":"c","data":[1]}"#,
            r#"{"channel":5,"value":1}"#,
        ] {
            assert!(
                serde_json::from_str::<IngestTick>(refused_by_serde).is_err(),
                "{refused_by_serde}"
            );
        }
    }

    #[test]
    fn frames_are_valid_json_with_every_field() {
        let tail = tail(1732348800123000, Some("42000.5"), Some(r#"{"bid":1}"#), "ab");
        let mut epochs = None;
        let t = Tick::from_body(
            StreamId::new(1732348800123, 0),
            "crypto.BTC-USD".into(),
            body(4711, "k3v9q2xa", &tail),
            &mut epochs,
        )
        .unwrap();
        assert_eq!((t.seq, &*t.epoch), (4711, "k3v9q2xa"));
        assert_eq!(t.ts(), Some("2024-11-23T08:00:00.123Z"));
        let v: serde_json::Value = serde_json::from_str(&t.to_frame()).unwrap();
        assert_eq!(v["type"], "tick");
        assert_eq!(v["id"], "1732348800123-0");
        assert_eq!(v["channel"], "crypto.BTC-USD");
        assert_eq!(v["seq"], 4711);
        assert_eq!(v["epoch"], "k3v9q2xa");
        assert_eq!(v["value"], 42000.5);
        assert_eq!(v["data"]["bid"], 1);
        assert_eq!(v["event_id"], "ab");
        assert_eq!(v["ts"], "2024-11-23T08:00:00.123Z");
        assert_eq!(v["ingest_ts"], "2024-11-23T08:00:00.123Z");
        assert_eq!(v.as_object().unwrap().len(), 10);
        let mut plain = String::new();
        t.write_json(&mut plain, false);
        let p: serde_json::Value = serde_json::from_str(&plain).unwrap();
        assert_eq!(p.as_object().unwrap().len(), 9);
        assert!(p.get("type").is_none());
    }

    #[test]
    fn stored_bodies_are_checked_and_share_their_epoch() {
        let mut epochs = None;
        let id = StreamId::new(1, 0);
        let a = Tick::from_body(id, "c".into(), body(1, "e1", "}"), &mut epochs).unwrap();
        let b = Tick::from_body(id, "c".into(), body(2, "e1", "}"), &mut epochs).unwrap();
        assert!(Arc::ptr_eq(&a.epoch, &b.epoch));
        for bad in [
            "",
            "{}",
            r#""seq":x,"epoch":"e","#,
            r#""seq":1,"ep":"e","#,
            r#""seq":1,"epoch":"e"#,
        ] {
            assert_eq!(
                Tick::from_body(id, "c".into(), bad.into(), &mut epochs),
                Err(BadBody),
                "{bad}"
            );
        }
    }
}

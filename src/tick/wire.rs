//! A stored tick and the JSON it is written as (docs/PROTOCOL.md §2.5): the body the
//! store keeps, spliced behind the members the stream id gives.

use std::fmt::Write as _;
use std::sync::Arc;

use time::OffsetDateTime;

use super::id::{push_digits, StreamId};

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

/// The members of a tick object that the producer determines, serialized once at
/// ingest: `"ts":"…","value":…,"data":…,"event_id":"…"}` (with the object's closing
/// brace). The store keeps it behind `seq` and `epoch` as the tick's body, so a read
/// splices stored bytes instead of re-serializing every field.
pub fn fields(ts_us: i64, value: Option<&str>, data: Option<&str>, event_id: &str) -> String {
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

/// A stored tick's body: `"seq":…,"epoch":"…",` then its [`fields`]. The Redis append
/// script builds the same bytes (`redis/append.lua`).
pub fn body(seq: u64, epoch: &str, fields: &str) -> String {
    let mut out = String::with_capacity(40 + fields.len());
    let _ = write!(out, "\"seq\":{seq},\"epoch\":\"{epoch}\",");
    out.push_str(fields);
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

    /// Writes the tick object of docs/PROTOCOL.md §2.5; with `as_frame` it is the WebSocket
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

    /// About how long this tick's `tick` frame is (its body and channel, and at most
    /// 96 bytes of id, type and punctuation).
    pub fn frame_len_estimate(&self) -> usize {
        96 + self.channel.len() + self.body.len()
    }

    /// The WebSocket `tick` frame as a fresh string.
    pub fn to_frame(&self) -> String {
        let mut out = String::with_capacity(self.frame_len_estimate());
        self.write_json(&mut out, true);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tick::validate::parse_ts_us;

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
    fn frames_are_valid_json_with_every_field() {
        let fields = fields(1732348800123000, Some("42000.5"), Some(r#"{"bid":1}"#), "ab");
        let mut epochs = None;
        let t = Tick::from_body(
            StreamId::new(1732348800123, 0),
            "crypto.BTC-USD".into(),
            body(4711, "k3v9q2xa", &fields),
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

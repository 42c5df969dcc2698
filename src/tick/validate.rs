//! What producers send (docs/PROTOCOL.md §2.1–2.3): the ingest body, its
//! all-or-nothing validation, and the event id that deduplicates it.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::is_valid_channel;
use super::wire::fields;

/// Largest `data` object, measured as compact JSON.
pub const MAX_DATA_BYTES: usize = 8 * 1024;
/// Largest idempotency `key`.
pub const MAX_KEY_CHARS: usize = 128;
/// Most ticks in one ingest batch.
pub const MAX_BATCH: usize = 1000;

/// One tick as a producer posts it. Unknown fields are refused (docs/PROTOCOL.md §2.1), so a typo
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
    /// Dated further ahead of the server's clock than `TICKSTREAM_MAX_FUTURE`
    /// allows (seconds): candle retention counts back from the newest bucket, so a
    /// far-future tick would keep buckets that are never trimmed.
    #[error("ts is more than {0} s ahead of the server's clock")]
    TooFarAhead(u64),
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
    /// `data.volume` as JSON number text, when it is a number (candles sum it).
    pub volume: Option<String>,
    pub event_id: String,
    /// The tick object's members the producer determines, as stored: see [`fields`].
    pub fields: String,
}

impl IngestTick {
    /// Validates against docs/PROTOCOL.md §2.1; `now_us` is the default `ts`.
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
        let volume = data
            .as_ref()
            .and_then(|d| d.get("volume"))
            .filter(|v| v.is_number())
            .map(|v| v.to_string());
        let fields = fields(ts_us, value.as_deref(), data_text.as_deref(), &event_id);
        Ok(PreparedTick {
            channel: self.channel,
            ts_us,
            value,
            data: data_text,
            volume,
            event_id,
            fields,
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

/// Refuses the whole batch when a tick is dated more than `max_ahead_us` after
/// `now_us` (docs/PROTOCOL.md §2.1): a producer cannot grow Redis without bound
/// through timestamps.
pub fn check_not_ahead(ticks: &[PreparedTick], now_us: i64, max_ahead_us: i64) -> Result<(), BodyError> {
    let limit = now_us.saturating_add(max_ahead_us);
    match ticks.iter().position(|t| t.ts_us > limit) {
        None => Ok(()),
        Some(i) => Err(BodyError::Tick {
            index: (ticks.len() > 1).then_some(i),
            error: TickError::TooFarAhead(u64::try_from(max_ahead_us / 1_000_000).unwrap_or(0)),
        }),
    }
}

/// The event id (docs/PROTOCOL.md §2.3): lowercase hex SHA-256 of the compact, key-sorted JSON array
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tick::wire::write_ts;

    fn tick(json: &str) -> Result<PreparedTick, TickError> {
        serde_json::from_str::<IngestTick>(json)
            .expect("parses")
            .prepare(1_000_000)
    }

    #[test]
    fn ticks_dated_too_far_ahead_refuse_the_batch() {
        let now = 1_000_000_000_000;
        let hour = 3_600_000_000;
        let body = |ts: &[i64]| -> Vec<PreparedTick> {
            ts.iter()
                .map(|us| {
                    let mut ts = String::new();
                    write_ts(&mut ts, *us);
                    tick_at(&format!(r#"{{"channel":"c","ts":"{ts}","value":1}}"#), now)
                })
                .collect()
        };
        assert!(check_not_ahead(&body(&[now - hour, now, now + hour]), now, hour).is_ok());
        let err = check_not_ahead(&body(&[now, now + hour + 1]), now, hour).unwrap_err();
        assert_eq!(
            err,
            BodyError::Tick {
                index: Some(1),
                error: TickError::TooFarAhead(3600)
            }
        );
        let one = check_not_ahead(&body(&[now + 2 * hour]), now, hour).unwrap_err();
        assert!(matches!(one, BodyError::Tick { index: None, .. }));
    }

    fn tick_at(json: &str, now_us: i64) -> PreparedTick {
        serde_json::from_str::<IngestTick>(json)
            .unwrap()
            .prepare(now_us)
            .unwrap()
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
}

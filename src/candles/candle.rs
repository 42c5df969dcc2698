//! One candle: the fold of a bucket's ticks, and its stored form.
//!
//! The stored form is one member of a Redis sorted set (score: the bucket start):
//! `start|count|open|high|low|close|volume|open_ts|open_id|close_ts|close_id`, values
//! as the producer's number text (so `42` stays `42`), `volume` empty when no tick had
//! one. `redis/append.lua` reads and writes the same form; keep the two in step.

use std::fmt::Write;

use crate::tick::wire::write_ts;
use crate::tick::StreamId;

/// The tick that opens or closes a candle.
#[derive(Debug, Clone, PartialEq)]
pub struct Mark {
    pub ts_us: i64,
    pub id: StreamId,
    /// The tick's `value`, as JSON number text.
    pub value: String,
}

impl Mark {
    fn key(&self) -> (i64, StreamId) {
        (self.ts_us, self.id)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Candle {
    /// Bucket start, Unix ms.
    pub start: i64,
    pub count: u64,
    /// Smallest `ts` (equal `ts`: first appended).
    pub open: Mark,
    /// Largest `ts` (equal `ts`: last appended).
    pub close: Mark,
    pub high: String,
    pub low: String,
    /// Sum of `data.volume` over the ticks that had a number there.
    pub volume: Option<f64>,
}

fn v_or_none(text: &str) -> Option<f64> {
    text.parse().ok().filter(|v: &f64| v.is_finite())
}

fn number(text: &str) -> f64 {
    text.parse().unwrap_or(f64::NAN)
}

impl Candle {
    /// The candle of one tick.
    pub fn of_tick(start: i64, ts_us: i64, id: StreamId, value: &str, volume: Option<f64>) -> Candle {
        let mark = Mark {
            ts_us,
            id,
            value: value.to_string(),
        };
        Candle {
            start,
            count: 1,
            open: mark.clone(),
            close: mark,
            high: value.to_string(),
            low: value.to_string(),
            volume,
        }
    }

    /// Adds `other` (ticks of the same bucket) to this candle. Whatever order ticks
    /// come in, the result is the same, except for `volume`, a float64 sum taken in
    /// the order the ticks were appended.
    pub fn merge(&mut self, other: &Candle) {
        self.count += other.count;
        if other.open.key() < self.open.key() {
            self.open = other.open.clone();
        }
        if other.close.key() > self.close.key() {
            self.close = other.close.clone();
        }
        if number(&other.high) > number(&self.high) {
            self.high = other.high.clone();
        }
        if number(&other.low) < number(&self.low) {
            self.low = other.low.clone();
        }
        self.volume = match (self.volume, other.volume) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
    }

    /// The stored form (see the module comment).
    pub fn pack(&self) -> String {
        let volume = self.volume.map(|v| v.to_string()).unwrap_or_default();
        format!(
            "{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}",
            self.start,
            self.count,
            self.open.value,
            self.high,
            self.low,
            self.close.value,
            volume,
            self.open.ts_us,
            self.open.id,
            self.close.ts_us,
            self.close.id
        )
    }

    pub fn unpack(packed: &str) -> Option<Candle> {
        let f: Vec<&str> = packed.split('|').collect();
        let [start, count, open, high, low, close, volume, open_ts, open_id, close_ts, close_id] = f[..] else {
            return None;
        };
        let valid = |t: &str| t.parse::<f64>().is_ok_and(f64::is_finite);
        if ![open, high, low, close].into_iter().all(valid) {
            return None;
        }
        Some(Candle {
            start: start.parse().ok()?,
            count: count.parse().ok()?,
            open: Mark {
                ts_us: open_ts.parse().ok()?,
                id: open_id.parse().ok()?,
                value: open.into(),
            },
            close: Mark {
                ts_us: close_ts.parse().ok()?,
                id: close_id.parse().ok()?,
                value: close.into(),
            },
            high: high.into(),
            low: low.into(),
            // A sum past f64's range (`inf`) says nothing useful: no volume, rather
            // than no candle.
            volume: v_or_none(volume),
        })
    }

    /// The members of the candle object of docs/PROTOCOL.md §6.1, written straight
    /// into `out` (a page of 1,000 candles is written without building a JSON value):
    /// `"t":"…","open":…,"high":…,"low":…,"close":…,"count":…,"volume":…`.
    pub fn write_members(&self, out: &mut String) {
        out.push_str("\"t\":\"");
        write_ts(out, self.start.saturating_mul(1000));
        for (name, text) in [
            ("\",\"open\":", &self.open.value),
            (",\"high\":", &self.high),
            (",\"low\":", &self.low),
            (",\"close\":", &self.close.value),
        ] {
            out.push_str(name);
            push_number(out, text);
        }
        let _ = write!(out, ",\"count\":{},\"volume\":", self.count);
        match self.volume {
            Some(v) => push_f64(out, v),
            None => out.push_str("null"),
        }
    }

    /// The candle object as a JSON value (tests).
    #[cfg(test)]
    pub fn to_json(&self) -> serde_json::Value {
        let mut text = String::from("{");
        self.write_members(&mut text);
        text.push('}');
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }
}

/// A stored value's number text, as it is when it is JSON (it always is when the
/// node stored it; anything else is written as the number it parses to).
fn push_number(out: &mut String, text: &str) {
    if is_json_decimal(text) {
        out.push_str(text);
    } else {
        push_f64(out, number(text));
    }
}

/// `-?digits(.digits)?([eE][+-]?digits)?`, JSON's number grammar (leading zeros aside).
fn is_json_decimal(text: &str) -> bool {
    let rest = text.strip_prefix('-').unwrap_or(text);
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => digits(int) && digits(frac),
        None => digits(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix(['+', '-']).unwrap_or(e)));
    mantissa_ok && exponent_ok
}

fn push_f64(out: &mut String, v: f64) {
    match serde_json::to_string(&v) {
        Ok(text) if v.is_finite() => out.push_str(&text),
        _ => out.push_str("null"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn tick(ts_s: i64, seq: u64, value: &str, volume: Option<f64>) -> Candle {
        Candle::of_tick(0, ts_s * 1_000_000, StreamId::new(1000, seq), value, volume)
    }

    #[test]
    fn open_and_close_follow_ts_then_append_order_whatever_the_arrival() {
        let ticks = [
            tick(5, 1, "10", Some(1.0)),
            tick(3, 2, "7", None),
            tick(5, 3, "12.5", Some(2.0)),
            tick(3, 4, "8", None),
            tick(9, 5, "-1", Some(0.5)),
        ];
        let fold = |order: &[usize]| {
            let mut c = ticks[order[0]].clone();
            for &i in &order[1..] {
                c.merge(&ticks[i]);
            }
            c
        };
        let a = fold(&[0, 1, 2, 3, 4]);
        assert_eq!((a.open.value.as_str(), a.close.value.as_str()), ("7", "-1"));
        assert_eq!((a.high.as_str(), a.low.as_str(), a.count), ("12.5", "-1", 5));
        assert_eq!(a.volume, Some(3.5));
        // Equal ts: the first appended (seq 2) opens, not the later 8.
        let b = fold(&[3, 4, 2, 1, 0]);
        assert_eq!(
            (b.open, b.close, b.high, b.low, b.count),
            (a.open.clone(), a.close.clone(), a.high.clone(), a.low.clone(), 5)
        );
        let none = fold(&[1, 3]);
        assert_eq!(none.volume, None);
    }

    #[test]
    fn the_stored_form_round_trips() {
        let mut c = tick(5, 1, "42", Some(0.1));
        c.merge(&tick(6, 2, "1e-7", Some(0.2)));
        let packed = c.pack();
        assert_eq!(Candle::unpack(&packed), Some(c.clone()));
        assert_eq!(c.to_json()["open"], json!(42));
        assert_eq!(c.to_json()["volume"], json!(0.1 + 0.2));
        assert_eq!(c.to_json()["t"], "1970-01-01T00:00:00.000Z");
        for bad in ["", "1|2|3", "0|1|x|1|1|1||0|1-0|0|1-0"] {
            assert_eq!(Candle::unpack(bad), None, "{bad}");
        }
        // Number text that is not JSON (only a hand-edited member has it) is written
        // as the number it is; the JSON of a whole candle always parses.
        let odd = Candle::unpack("0|1|.5|+2|1e3|5.||0|1-0|0|1-0").unwrap();
        let v = odd.to_json();
        assert_eq!(
            (
                v["open"].clone(),
                v["high"].clone(),
                v["low"].clone(),
                v["close"].clone()
            ),
            (json!(0.5), json!(2.0), json!(1e3), json!(5.0))
        );
        // A volume sum past f64's range: the candle stays, without a volume.
        for sum in ["inf", "nan"] {
            let packed = format!("0|1|1|1|1|1|{sum}|0|1-0|0|1-0");
            assert_eq!(Candle::unpack(&packed).map(|c| c.volume), Some(None), "{packed}");
        }
    }
}

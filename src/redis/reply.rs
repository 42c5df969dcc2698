//! Redis replies taken apart by hand, over `redis::Value` (rather than the crate's
//! typed stream replies), so RESP2 arrays and RESP3 maps both parse and a tick is built
//! straight from the reply without an intermediate map per entry.
//!
//! A stream entry that cannot be read as a tick (written by something else, or
//! damaged) is skipped, counted in `tickstream_bad_entries_total` and logged, never
//! fatal: one bad entry must not stall its partition's reader or fail every history
//! page that covers it. Clients see it only if it took a `seq`: the next tick's `seq`
//! then shows the hole, and they get a `gap` (docs/PROTOCOL.md §5.4).

use std::sync::{Arc, Mutex};

use redis::Value;

use super::target::NodeAddr;
use crate::engine::{Births, StoreError};
use crate::retry::ErrorLog;
use crate::tick::{StreamId, Tick};

/// Counts and logs the stream entries that cannot be read.
pub struct Unreadable {
    counter: prometheus::IntCounter,
    log: Mutex<ErrorLog>,
}

impl Unreadable {
    pub fn new(counter: prometheus::IntCounter) -> Unreadable {
        Unreadable {
            counter,
            log: Mutex::new(ErrorLog::default()),
        }
    }

    fn note(&self, channel: &str, id: StreamId, error: &StoreError) {
        self.counter.inc();
        let due = self.log.lock().map(|mut l| l.should_log()).unwrap_or(true);
        if due {
            tracing::warn!(channel, id = %id, error = %error, "skipping a stream entry that is not a tick (logged at most every 30 s)");
        }
    }
}

/// Entries of XRANGE, XREVRANGE or XREAD: the readable ticks, and the id of the last
/// entry, readable or not.
pub struct Entries {
    pub ticks: Vec<Tick>,
    /// The first and last entry ids of the reply (readable or not), in reply order.
    pub first: Option<StreamId>,
    pub last: Option<StreamId>,
    /// Entries in the reply, readable or not.
    pub count: usize,
}

pub fn protocol(what: &str, v: &Value) -> StoreError {
    StoreError::Protocol(format!("{what}: {v:?}"))
}

pub fn as_array(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(items) | Value::Set(items) => Some(items),
        _ => None,
    }
}

pub fn as_bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        _ => None,
    }
}

pub fn as_str(v: &Value) -> Option<String> {
    as_bytes(v)
        .and_then(|b| std::str::from_utf8(b).ok())
        .map(str::to_string)
}

pub fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => as_bytes(other).and_then(|b| std::str::from_utf8(b).ok()?.parse().ok()),
    }
}

pub fn as_id(v: &Value) -> Option<StreamId> {
    std::str::from_utf8(as_bytes(v)?).ok()?.parse().ok()
}

/// Key/value pairs of a RESP2 flat array or a RESP3 map.
pub fn pairs(v: &Value) -> Option<Vec<(&Value, &Value)>> {
    match v {
        Value::Map(kv) => Some(kv.iter().map(|(k, v)| (k, v)).collect()),
        Value::Array(items) => Some(
            items
                .chunks(2)
                .filter(|c| c.len() == 2)
                .map(|c| (&c[0], &c[1]))
                .collect(),
        ),
        _ => None,
    }
}

/// `CLUSTER SLOTS`: each slot range and the address of its master (the first node
/// listed for the range). A range whose master has no usable address (a nil or `?`
/// endpoint while a node is being added or forgotten) is left out, so the slots it
/// covers count as unserved rather than the whole map as unreadable.
pub fn slot_ranges(reply: &Value) -> Option<Vec<(std::ops::RangeInclusive<u16>, NodeAddr)>> {
    Some(
        as_array(reply)?
            .iter()
            .filter_map(|range| {
                let items = as_array(range)?;
                let start = u16::try_from(as_u64(items.first()?)?).ok()?;
                let end = u16::try_from(as_u64(items.get(1)?)?).ok()?;
                let master = as_array(items.get(2)?)?;
                let host = as_str(master.first()?).filter(|h| !h.is_empty() && h != "?")?;
                let port = u16::try_from(as_u64(master.get(1)?)?).ok()?;
                Some((start..=end, NodeAddr { host, port }))
            })
            .collect(),
    )
}

/// XREAD's reply, taken apart: RESP2 `[[key, entries], …]` or RESP3 `{key: entries}`;
/// nil on timeout.
pub fn streams_of(reply: Value) -> Vec<(Value, Value)> {
    match reply {
        Value::Map(kv) => kv,
        Value::Array(items) => items
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => {
                    let entries = kv.pop()?;
                    Some((kv.pop()?, entries))
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Entries of XRANGE, XREVRANGE or XREAD. Takes the reply by value so each stored
/// body moves into its tick without a copy.
pub fn parse_entries(channel: &Arc<str>, v: Value, unreadable: &Unreadable) -> Result<Entries, StoreError> {
    let items = entry_list(v, "entries")?;
    let mut epochs = None;
    let mut out = Entries {
        ticks: Vec::with_capacity(items.len()),
        first: None,
        last: None,
        count: items.len(),
    };
    for entry in items {
        let (id, fields) = split_entry(entry)?;
        out.first.get_or_insert(id);
        out.last = Some(id);
        match parse_fields(channel, id, fields, &mut epochs) {
            Ok(tick) => out.ticks.push(tick),
            Err(e) => unreadable.note(channel, id, &e),
        }
    }
    Ok(out)
}

/// The first or last entry of `XINFO STREAM`; an unreadable one counts as absent.
pub fn parse_entry_opt(channel: &Arc<str>, v: &Value, unreadable: &Unreadable) -> Result<Option<Tick>, StoreError> {
    if matches!(v, Value::Nil) {
        return Ok(None);
    }
    let (id, fields) = split_entry(v.clone())?;
    match parse_fields(channel, id, fields, &mut None) {
        Ok(tick) => Ok(Some(tick)),
        Err(e) => {
            unreadable.note(channel, id, &e);
            Ok(None)
        }
    }
}

/// Entries of a partition's births stream (`keyspace::births`): the channels created,
/// up to the last entry's id; `None` for no entry.
pub fn parse_births(v: Value) -> Result<Option<Births>, StoreError> {
    let items = entry_list(v, "births")?;
    let mut channels = Vec::with_capacity(items.len());
    let mut last = None;
    for entry in items {
        let (id, fields) = split_entry(entry)?;
        last = Some(id);
        // A RESP2 flat array or a RESP3 map, as every entry's fields.
        for (name, value) in pairs(&fields).unwrap_or_default() {
            if as_bytes(name) == Some(b"c".as_slice()) {
                channels.extend(as_str(value));
            }
        }
    }
    Ok(last.map(|last| Births { channels, last }))
}

/// The entries of a range or stream reply (nil: none).
fn entry_list(v: Value, what: &str) -> Result<Vec<Value>, StoreError> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Array(items) | Value::Set(items) => Ok(items),
        other => Err(protocol(what, &other)),
    }
}

/// `[id, fields]`; an entry whose id is not a stream id is a reply we do not
/// understand at all.
fn split_entry(v: Value) -> Result<(StreamId, Value), StoreError> {
    match v {
        Value::Array(mut parts) if parts.len() == 2 => {
            let fields = parts.pop().unwrap_or(Value::Nil);
            let id = parts.pop().unwrap_or(Value::Nil);
            let id = as_id(&id).ok_or_else(|| protocol("entry id", &id))?;
            Ok((id, fields))
        }
        other => Err(protocol("entry", &other)),
    }
}

/// An entry's fields → Tick. An entry is `j` (see `redis/append.lua`); entries
/// written before that format (fields `q`, `ep`, `ts`, `e`, `v`, `d`) are still read.
fn parse_fields(
    channel: &Arc<str>,
    id: StreamId,
    fields: Value,
    epochs: &mut Option<Arc<str>>,
) -> Result<Tick, StoreError> {
    let read = |body: String, epochs: &mut Option<Arc<str>>| {
        Tick::from_body(id, channel.clone(), body, epochs).map_err(|e| StoreError::Protocol(format!("entry {id}: {e}")))
    };
    let body_of = |value: Value| into_string(value).ok_or_else(|| StoreError::Protocol(format!("entry {id}: body")));
    // Fields as (name, value) pairs: a RESP2 flat array or a RESP3 map.
    let fields: Vec<(Value, Value)> = match fields {
        // The current format, `[j, body]`: no pairs to build.
        Value::Array(mut items) if items.len() == 2 && as_bytes(&items[0]) == Some(b"j") => {
            let body = items.pop().unwrap_or(Value::Nil);
            return read(body_of(body)?, epochs);
        }
        Value::Map(kv) => kv,
        Value::Array(items) => {
            let mut kv = Vec::with_capacity(items.len() / 2);
            let mut items = items.into_iter();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                kv.push((k, v));
            }
            kv
        }
        other => return Err(protocol("entry fields", &other)),
    };
    let mut legacy = LegacyEntry::default();
    for (name, value) in fields {
        match as_bytes(&name) {
            Some(b"j") => return read(body_of(value)?, epochs),
            Some(b"q") => legacy.seq = as_u64(&value).unwrap_or(0),
            Some(b"ep") => legacy.epoch = as_str(&value).unwrap_or_default(),
            Some(b"ts") => legacy.ts_us = as_str(&value).and_then(|s| s.parse().ok()).unwrap_or(0),
            Some(b"v") => legacy.value = as_str(&value),
            Some(b"d") => legacy.data = as_str(&value),
            Some(b"e") => legacy.event_id = as_str(&value).unwrap_or_default(),
            _ => {}
        }
    }
    // A first-format entry has at least its seq, epoch and event id; anything else
    // is not a tick.
    if legacy.seq == 0 || legacy.epoch.is_empty() || legacy.event_id.is_empty() {
        return Err(StoreError::Protocol(format!(
            "entry {id}: neither a tick body nor tick fields"
        )));
    }
    let fields = crate::tick::wire::fields(
        legacy.ts_us,
        legacy.value.as_deref(),
        legacy.data.as_deref(),
        &legacy.event_id,
    );
    read(crate::tick::wire::body(legacy.seq, &legacy.epoch, &fields), epochs)
}

/// The fields of an entry in the first storage format.
#[derive(Default)]
struct LegacyEntry {
    seq: u64,
    epoch: String,
    ts_us: i64,
    value: Option<String>,
    data: Option<String>,
    event_id: String,
}

fn into_string(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        Value::VerbatimString { text, .. } => Some(text),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn unreadable() -> Unreadable {
        Unreadable::new(prometheus::IntCounter::new("bad", "entries").unwrap())
    }

    /// A stored entry in the current format: `[id, [j, body]]`.
    fn entry(id: &str, seq: u64, epoch: &str) -> Value {
        let fields = crate::tick::wire::fields(5_000, Some("1.5"), None, "ab");
        let body = crate::tick::wire::body(seq, epoch, &fields);
        Value::Array(vec![bulk(id), Value::Array(vec![bulk("j"), bulk(&body)])])
    }

    #[test]
    fn entries_read_every_format_and_skip_what_is_not_a_tick() {
        let channel: Arc<str> = "c".into();
        let legacy = Value::Array(vec![
            bulk("3-0"),
            Value::Array(
                [("q", "3"), ("ep", "e1"), ("ts", "7000"), ("e", "cd"), ("v", "2")]
                    .iter()
                    .flat_map(|(k, v)| [bulk(k), bulk(v)])
                    .collect(),
            ),
        ]);
        // RESP3 answers an entry's fields as a map.
        let map = Value::Array(vec![
            bulk("4-0"),
            Value::Map(vec![(bulk("j"), bulk("\"seq\":4,\"epoch\":\"e1\",\"x\":1"))]),
        ]);
        let junk = Value::Array(vec![bulk("2-0"), Value::Array(vec![bulk("other"), bulk("field")])]);
        let reply = Value::Array(vec![entry("1-0", 1, "e1"), junk, legacy, map]);
        let bad = unreadable();
        let read = parse_entries(&channel, reply, &bad).unwrap();
        assert_eq!(read.ticks.iter().map(|t| t.seq).collect::<Vec<_>>(), [1, 3, 4]);
        assert!(read.ticks.iter().all(|t| &*t.epoch == "e1" && &*t.channel == "c"));
        assert!(read.ticks[1].body.contains("\"value\":2"), "{}", read.ticks[1].body);
        // The unreadable entry still counts: a reader pages on past it.
        assert_eq!(
            (read.count, read.first, read.last),
            (4, Some(StreamId::new(1, 0)), Some(StreamId::new(4, 0)))
        );
        assert_eq!(bad.counter.get(), 1);
        // Ticks of one read share one epoch allocation.
        assert!(Arc::ptr_eq(&read.ticks[0].epoch, &read.ticks[2].epoch));
    }

    #[test]
    fn a_reply_that_is_not_entries_is_an_error_and_nil_is_none() {
        let channel: Arc<str> = "c".into();
        assert_eq!(parse_entries(&channel, Value::Nil, &unreadable()).unwrap().count, 0);
        assert!(parse_entries(&channel, Value::Int(3), &unreadable()).is_err());
        let bad_id = Value::Array(vec![Value::Array(vec![bulk("not-an-id"), Value::Array(vec![])])]);
        assert!(parse_entries(&channel, bad_id, &unreadable()).is_err());
        assert_eq!(parse_entry_opt(&channel, &Value::Nil, &unreadable()).unwrap(), None);
        let junk = Value::Array(vec![bulk("2-0"), Value::Array(vec![bulk("x"), bulk("y")])]);
        assert_eq!(parse_entry_opt(&channel, &junk, &unreadable()).unwrap(), None);
        let one = parse_entry_opt(&channel, &entry("9-1", 9, "e2"), &unreadable())
            .unwrap()
            .unwrap();
        assert_eq!((one.id, one.seq, &*one.epoch), (StreamId::new(9, 1), 9, "e2"));
    }

    #[test]
    fn xread_replies_come_apart_in_resp2_and_resp3() {
        let resp2 = Value::Array(vec![
            Value::Array(vec![bulk("k1"), Value::Array(vec![entry("1-0", 1, "e")])]),
            Value::Array(vec![bulk("k2"), Value::Array(vec![])]),
        ]);
        let resp3 = Value::Map(vec![(bulk("k1"), Value::Array(vec![entry("1-0", 1, "e")]))]);
        let keys = |v: Value| {
            streams_of(v)
                .into_iter()
                .map(|(k, _)| as_str(&k).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(resp2), ["k1", "k2"]);
        assert_eq!(keys(resp3), ["k1"]);
        assert!(streams_of(Value::Nil).is_empty(), "a timed-out XREAD is nil");
    }

    #[test]
    fn births_name_the_channels_created_and_the_last_id() {
        let birth = |id: &str, c: &str| Value::Array(vec![bulk(id), Value::Array(vec![bulk("c"), bulk(c)])]);
        let reply = Value::Array(vec![birth("5-0", "a.b"), birth("6-2", "c.d")]);
        assert_eq!(
            parse_births(reply).unwrap(),
            Some(Births {
                channels: vec!["a.b".into(), "c.d".into()],
                last: StreamId::new(6, 2),
            })
        );
        // RESP3 answers an entry's fields as a map.
        let map = Value::Array(vec![Value::Array(vec![
            bulk("7-0"),
            Value::Map(vec![(bulk("c"), bulk("e.f"))]),
        ])]);
        assert_eq!(parse_births(map).unwrap().unwrap().channels, ["e.f"]);
        assert_eq!(parse_births(Value::Array(vec![])).unwrap(), None);
        assert!(parse_births(Value::Okay).is_err());
    }

    #[test]
    fn slot_maps_leave_out_masters_without_an_address() {
        let range = |a: i64, b: i64, host: Value| {
            Value::Array(vec![
                Value::Int(a),
                Value::Int(b),
                Value::Array(vec![host, Value::Int(7001)]),
            ])
        };
        let reply = Value::Array(vec![
            range(0, 5460, bulk("10.0.0.1")),
            range(5461, 10922, bulk("?")),
            range(10923, 16383, Value::Nil),
        ]);
        let map = slot_ranges(&reply).unwrap();
        assert_eq!(
            map,
            vec![(
                0..=5460,
                NodeAddr {
                    host: "10.0.0.1".into(),
                    port: 7001
                }
            )]
        );
        assert_eq!(slot_ranges(&Value::Nil), None);
    }

    #[test]
    fn pairs_read_flat_arrays_and_maps() {
        let flat = Value::Array(vec![bulk("length"), Value::Int(3), bulk("dangling")]);
        let map = Value::Map(vec![(bulk("length"), Value::Int(3))]);
        for v in [flat, map] {
            let p = pairs(&v).unwrap();
            assert_eq!(p.len(), 1);
            assert_eq!((as_str(p[0].0).as_deref(), as_u64(p[0].1)), (Some("length"), Some(3)));
        }
        assert_eq!(as_id(&bulk("17-4")), Some(StreamId::new(17, 4)));
        // As Redis reads them: a bare millisecond time is its first id.
        assert_eq!(as_id(&bulk("17")), Some(StreamId::new(17, 0)));
        assert_eq!(as_id(&bulk("seventeen")), None);
    }
}

//! Candles for tests: random ticks shaped to hit every rule of docs/PROTOCOL.md §6
//! "Candles" (any `ts` order, duplicates, `key` retries, ticks without `value`,
//! batches across bucket edges), a reference fold written independently of the
//! server's, and the server's candles read back through REST paging.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::TestApp;

/// Interval names and lengths in ms, as the server keeps them.
pub const INTERVALS: [(&str, i64); 5] = [
    ("1s", 1_000),
    ("1m", 60_000),
    ("5m", 300_000),
    ("1h", 3_600_000),
    ("1d", 86_400_000),
];

/// 2026-11-30T23:50:00Z: ticks around it cross a day, hour and minute edge.
pub const BASE_US: i64 = 1_796_082_600_000_000;

pub fn rfc3339_us(ts_us: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ts_us) * 1000)
        .unwrap()
        .format(&Rfc3339)
        .unwrap()
}

pub fn parse_ms(t: &str) -> i64 {
    let t = OffsetDateTime::parse(t, &Rfc3339).unwrap();
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap()
}

/// One tick a producer sends, and what the reference needs of it.
#[derive(Debug, Clone)]
pub struct Sent {
    pub body: Value,
    pub ts_us: i64,
    pub value: Option<f64>,
    pub volume: Option<f64>,
    /// The `key`, when it has one: a retry with the same key is a duplicate whatever
    /// else differs.
    pub key: Option<String>,
}

/// Random ticks for `channel`, in random batches: about `n` ticks, a tenth of them
/// resent as they were, a few retried under an old key with another value.
pub fn random_batches(channel: &str, n: usize, seed: u64) -> Vec<Vec<Sent>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sent: Vec<Sent> = Vec::new();
    let mut batches = Vec::new();
    while sent.len() < n {
        let size = rng.random_range(1..40);
        let mut batch = Vec::new();
        for _ in 0..size {
            let roll = rng.random_range(0..100);
            let tick = if roll < 10 && !sent.is_empty() {
                // Resent exactly: the same key, or the same content without one.
                sent[rng.random_range(0..sent.len())].clone()
            } else if roll < 14 && sent.iter().any(|s| s.key.is_some()) {
                let keyed: Vec<&Sent> = sent.iter().filter(|s| s.key.is_some()).collect();
                let old = keyed[rng.random_range(0..keyed.len())];
                let mut retry = fresh(&mut rng, channel, sent.len());
                retry.key = old.key.clone();
                retry.body["key"] = json!(old.key);
                retry
            } else {
                fresh(&mut rng, channel, sent.len())
            };
            sent.push(tick.clone());
            batch.push(tick);
        }
        batches.push(batch);
    }
    batches
}

fn fresh(rng: &mut StdRng, channel: &str, n: usize) -> Sent {
    // Mostly within 20 minutes of BASE; a fifth exactly on a second or minute edge
    // (or a microsecond before it).
    let mut ts_us = BASE_US + rng.random_range(0..20 * 60 * 1_000_000);
    if rng.random_range(0..5) == 0 {
        let edge = if rng.random_bool(0.5) { 1_000_000 } else { 60_000_000 };
        ts_us = ts_us / edge * edge - i64::from(rng.random_bool(0.5));
    }
    let value = (rng.random_range(0..6) > 0).then(|| f64::from(rng.random_range(1..2_000_000)) / 100.0);
    let volume = match rng.random_range(0..10) {
        0..=5 => Some(json!(f64::from(rng.random_range(0..10_000)) / 10.0)),
        6 => Some(json!("lots")),
        _ => None,
    };
    let key = rng.random_bool(0.7).then(|| format!("{channel}-k{n}"));
    let mut body = json!({"channel": channel, "ts": rfc3339_us(ts_us)});
    if let Some(v) = value {
        body["value"] = json!(v);
    }
    if let Some(v) = &volume {
        body["data"] = json!({"volume": v, "n": n});
    } else {
        body["data"] = json!({"n": n});
    }
    if let Some(k) = &key {
        body["key"] = json!(k);
    }
    Sent {
        body,
        ts_us,
        value,
        volume: volume.and_then(|v| v.as_f64()),
        key,
    }
}

/// A candle as the reference folds it.
#[derive(Debug, Clone, PartialEq)]
pub struct RefCandle {
    pub count: u64,
    /// (ts, id order, value) of the opening and closing ticks.
    pub open: (i64, (u64, u64), f64),
    pub close: (i64, (u64, u64), f64),
    pub high: f64,
    pub low: f64,
    pub volume: Option<f64>,
}

fn id_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap();
    (ms.parse().unwrap(), seq.parse().unwrap())
}

/// Every interval's candles (bucket start ms → candle) of the stored ticks.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Reference {
    pub sets: BTreeMap<&'static str, BTreeMap<i64, RefCandle>>,
}

impl Reference {
    /// Folds a tick the server stored (not a duplicate) with the id it answered.
    pub fn add(&mut self, tick: &Sent, id: &str) {
        let Some(value) = tick.value else { return };
        let mark = (tick.ts_us, id_order(id), value);
        for (name, ms) in INTERVALS {
            let start = tick.ts_us.div_euclid(1000).div_euclid(ms) * ms;
            let one = RefCandle {
                count: 1,
                open: mark,
                close: mark,
                high: value,
                low: value,
                volume: tick.volume,
            };
            self.add_candle(name, start, &one);
        }
    }

    /// Adds a candle (disjoint ticks of the same bucket).
    pub fn add_candle(&mut self, interval: &'static str, start: i64, c: &RefCandle) {
        let set = self.sets.entry(interval).or_default();
        let Some(r) = set.get_mut(&start) else {
            set.insert(start, c.clone());
            return;
        };
        r.count += c.count;
        if (c.open.0, c.open.1) < (r.open.0, r.open.1) {
            r.open = c.open;
        }
        if (c.close.0, c.close.1) > (r.close.0, r.close.1) {
            r.close = c.close;
        }
        r.high = r.high.max(c.high);
        r.low = r.low.min(c.low);
        r.volume = match (r.volume, c.volume) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
    }

    pub fn candles(&self, interval: &str) -> BTreeMap<i64, RefCandle> {
        self.sets.get(interval).cloned().unwrap_or_default()
    }
}

/// Ingests every batch and folds what was stored into a reference; checks the
/// duplicate answers against the rules (a repeated key is always a duplicate).
pub async fn ingest_all(app: &TestApp, batches: &[Vec<Sent>]) -> Reference {
    let mut reference = Reference::default();
    let mut keys = std::collections::HashSet::new();
    for batch in batches {
        let body = Value::Array(batch.iter().map(|s| s.body.clone()).collect());
        let (answer, _) = app.ingest_results(&body, std::time::Duration::from_secs(30)).await;
        for (tick, result) in batch.iter().zip(answer) {
            let duplicate = result["duplicate"].as_bool().unwrap();
            if let Some(k) = &tick.key {
                assert_eq!(duplicate, !keys.insert(k.clone()), "key {k}: {result}");
            }
            if !duplicate {
                reference.add(tick, result["id"].as_str().unwrap());
            }
        }
    }
    reference
}

/// All of `channel`'s candles of `interval`, read through REST pages of `limit`.
pub async fn read_all(app: &TestApp, token: &str, channel: &str, interval: &str, limit: usize) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor = String::new();
    loop {
        let path = format!("/api/v1/channels/{channel}/candles?interval={interval}&limit={limit}&cursor={cursor}");
        let (status, page) = app.get(&path, Some(token)).await;
        assert_eq!(status, 200, "{path}: {page}");
        all.extend(page["candles"].as_array().unwrap().iter().cloned());
        match page["next"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => return all,
        }
    }
}

/// Asserts that the server's candles (REST objects) are the reference's, exactly
/// (volume, a float sum, to 1e-9 relative).
pub fn assert_matches(got: &[Value], expected: &BTreeMap<i64, RefCandle>, what: &str) {
    let starts: Vec<i64> = got.iter().map(|c| parse_ms(c["t"].as_str().unwrap())).collect();
    let want: Vec<i64> = expected.keys().copied().collect();
    assert_eq!(starts, want, "{what}: bucket starts");
    for (c, (start, r)) in got.iter().zip(expected) {
        let at = format!("{what} at {}", rfc3339_us(start * 1000));
        assert_eq!(c["count"].as_u64(), Some(r.count), "{at}: count {c}");
        assert_eq!(c["open"].as_f64(), Some(r.open.2), "{at}: open {c}");
        assert_eq!(c["close"].as_f64(), Some(r.close.2), "{at}: close {c}");
        assert_eq!(c["high"].as_f64(), Some(r.high), "{at}: high {c}");
        assert_eq!(c["low"].as_f64(), Some(r.low), "{at}: low {c}");
        match (c["volume"].as_f64(), r.volume) {
            (None, None) => assert!(c["volume"].is_null(), "{at}: volume {c}"),
            (Some(a), Some(b)) => assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{at}: volume {a} vs {b}"),
            (a, b) => panic!("{at}: volume {a:?} vs {b:?}"),
        }
    }
}

/// The property on one server: random ticks in, every interval's candles equal the
/// reference. Returns the reference.
pub async fn candles_match_reference(app: &TestApp, channel: &str, seed: u64) -> Reference {
    let batches = random_batches(channel, 600, seed);
    let reference = ingest_all(app, &batches).await;
    let token = super::token(&["*"]);
    for (interval, _) in INTERVALS {
        let got = read_all(app, &token, channel, interval, 1000).await;
        assert_matches(
            &got,
            &reference.candles(interval),
            &format!("{channel} {interval} (seed {seed})"),
        );
    }
    reference
}

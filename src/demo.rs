//! `tickstream --demo`: synthetic channels fed through the normal ingest path, so a
//! newcomer's first dashboard is alive (docs/PROTOCOL.md §8, README "Quick start").
//!
//! Four channels of different shapes, so every part of the dashboard has something
//! to show: two random-walk prices with `bid`/`ask` and a `volume` (candles sum it),
//! a telemetry sensor near 21 °C (a magnitude unrelated to the prices), and a slow
//! channel that ticks every 5 s. A channel with no history yet is first given the
//! last few minutes (ticks with past `ts`), so charts and candles have a shape at
//! once; a channel that has history continues from its last value, so restarting a
//! demo on the same Redis does not jump.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use crate::clock::now_us;
use crate::http::AppState;
use crate::retry::ErrorLog;
use crate::tick::wire::write_ts;
use crate::tick::{IngestTick, PreparedTick};

/// How often the feeder wakes; every channel's period is a multiple of it.
const STEP: Duration = Duration::from_millis(100);
/// History given to a channel that has none yet.
const BACKFILL: Duration = Duration::from_secs(180);

/// What a demo channel looks like.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// A geometric random walk; `volatility` is the standard deviation of one step's
    /// relative change, `spread` the bid/ask spread relative to the price.
    Price { start: f64, volatility: f64, spread: f64 },
    /// A slow sine around `base` plus noise, like a cabin temperature.
    Sensor {
        base: f64,
        swing: f64,
        period_s: f64,
        noise: f64,
    },
    /// A battery level that drains and recharges, one reading every few seconds.
    Battery,
}

#[derive(Debug, Clone, Copy)]
struct Feed {
    channel: &'static str,
    /// Ticks every this many [`STEP`]s.
    every: u32,
    shape: Shape,
}

const FEEDS: [Feed; 4] = [
    Feed {
        channel: "demo.BTC-USD",
        every: 1,
        shape: Shape::Price {
            start: 42_000.0,
            volatility: 0.0003,
            spread: 0.0001,
        },
    },
    Feed {
        channel: "demo.ETH-USD",
        every: 3,
        shape: Shape::Price {
            start: 2_300.0,
            volatility: 0.0005,
            spread: 0.0002,
        },
    },
    Feed {
        channel: "demo.iss.cabin-temp",
        every: 5,
        shape: Shape::Sensor {
            base: 21.5,
            swing: 0.6,
            period_s: 120.0,
            noise: 0.03,
        },
    },
    Feed {
        channel: "demo.slow.battery",
        every: 50,
        shape: Shape::Battery,
    },
];

/// The channels `--demo` feeds (printed at start-up, and used by tests).
pub fn channels() -> impl Iterator<Item = &'static str> {
    FEEDS.iter().map(|f| f.channel)
}

/// One channel's state between ticks.
struct Walker {
    feed: Feed,
    value: f64,
    /// Battery only: draining (-) or charging (+).
    direction: f64,
}

impl Walker {
    fn new(feed: Feed, last: Option<f64>) -> Walker {
        let start = match feed.shape {
            Shape::Price { start, .. } => start,
            Shape::Sensor { base, .. } => base,
            Shape::Battery => 87.0,
        };
        Walker {
            feed,
            value: last.filter(|v| v.is_finite() && *v > 0.0).unwrap_or(start),
            direction: -1.0,
        }
    }

    /// The next tick at `ts_us`.
    fn next(&mut self, rng: &mut StdRng, ts_us: i64) -> Option<PreparedTick> {
        let mut data = Map::new();
        match self.feed.shape {
            Shape::Price {
                start,
                volatility,
                spread,
            } => {
                // A slight pull towards the start keeps a long demo in a sane range.
                let drift = (start / self.value).ln() * 0.0005;
                self.value *= (drift + volatility * gaussian(rng)).exp();
                let half = self.value * spread / 2.0;
                data.insert("bid".into(), json!(round(self.value - half, 2)));
                data.insert("ask".into(), json!(round(self.value + half, 2)));
                data.insert("volume".into(), json!(round(rng.random_range(0.001..0.5), 4)));
            }
            Shape::Sensor {
                base,
                swing,
                period_s,
                noise,
            } => {
                let phase = (ts_us as f64 / 1e6) / period_s * std::f64::consts::TAU;
                self.value = base + swing * phase.sin() + noise * gaussian(rng);
                data.insert("unit".into(), json!("°C"));
                data.insert("sensor".into(), json!("cabin-air"));
            }
            Shape::Battery => {
                if self.value <= 20.0 {
                    self.direction = 1.0;
                } else if self.value >= 99.0 {
                    self.direction = -1.0;
                }
                self.value = (self.value + self.direction * rng.random_range(0.05..0.4)).clamp(0.0, 100.0);
                data.insert("unit".into(), json!("%"));
                data.insert(
                    "state".into(),
                    json!(if self.direction > 0.0 { "charging" } else { "draining" }),
                );
            }
        }
        let mut ts = String::new();
        write_ts(&mut ts, ts_us);
        let value = serde_json::Number::from_f64(round(self.value, 4))?;
        IngestTick {
            channel: self.feed.channel.to_string(),
            ts: Some(ts),
            value: Some(value),
            data: Some(data),
            key: None,
        }
        .prepare(ts_us)
        .ok()
    }
}

fn round(v: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (v * f).round() / f
}

/// A standard normal sample (Box–Muller).
fn gaussian(rng: &mut StdRng) -> f64 {
    let u: f64 = rng.random_range(f64::EPSILON..1.0);
    let v: f64 = rng.random();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// The `value` of a channel's newest tick, if it has one.
async fn last_value(state: &AppState, channel: &str) -> Result<Option<f64>, crate::engine::StoreError> {
    let Some(tick) = state.store.latest(channel).await? else {
        return Ok(None);
    };
    Ok(Some(value_of(&tick.body)))
}

/// The `value` of a stored body (see `tick::wire::body`: the object without its
/// opening brace); NaN when it has none.
fn value_of(body: &str) -> f64 {
    let object: Value = serde_json::from_str(&format!("{{{body}")).unwrap_or(Value::Null);
    object.get("value").and_then(Value::as_f64).unwrap_or(f64::NAN)
}

fn failed(state: &AppState, log: &mut ErrorLog, what: &str, e: &crate::engine::StoreError) {
    state.metrics.redis_errors.inc();
    if log.should_log() {
        tracing::warn!(error = %e, "{what}");
    }
}

/// Feeds the demo channels until shutdown. Store errors (Redis away) are logged
/// quietly and the feeder carries on: the demo resumes when the store does.
pub async fn run(state: AppState, mut shutdown: watch::Receiver<bool>) {
    let mut rng = StdRng::from_os_rng();
    let mut log = ErrorLog::default();
    let mut walkers = Vec::new();
    let mut backfill = Vec::new();
    let now = now_us();
    for feed in FEEDS {
        let last = loop {
            match last_value(&state, feed.channel).await {
                Ok(last) => break last,
                Err(e) => {
                    failed(&state, &mut log, "demo feeder: cannot read the demo channels", &e);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        };
        let mut walker = Walker::new(feed, last);
        if last.is_none() {
            let step_us = i64::from(feed.every) * STEP.as_micros() as i64;
            let count = BACKFILL.as_micros() as i64 / step_us;
            for k in (1..=count).rev() {
                backfill.extend(walker.next(&mut rng, now - k * step_us));
            }
        }
        walkers.push(walker);
    }
    for batch in backfill.chunks(crate::tick::validate::MAX_BATCH) {
        if let Err(e) = state.ingest.append(batch).await {
            failed(&state, &mut log, "demo feeder: backfill failed", &e);
        }
    }
    tracing::info!(channels = ?channels().collect::<Vec<_>>(), "demo feeder running");
    let mut clock = tokio::time::interval(STEP);
    clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut step: u64 = 0;
    loop {
        tokio::select! {
            _ = clock.tick() => {}
            _ = shutdown.changed() => return,
        }
        step += 1;
        let now = now_us();
        let batch: Vec<PreparedTick> = walkers
            .iter_mut()
            .filter(|w| step.is_multiple_of(u64::from(w.feed.every)))
            .filter_map(|w| w.next(&mut rng, now))
            .collect();
        if batch.is_empty() {
            continue;
        }
        match state.ingest.append(&batch).await {
            Ok(_) => {
                if log.recovered() {
                    tracing::info!("demo feeder: appending again");
                }
            }
            Err(e) => failed(&state, &mut log, "demo feeder: append failed", &e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_valid_and_shaped_as_documented() {
        let mut rng = StdRng::seed_from_u64(7);
        let now = now_us();
        for feed in FEEDS {
            let mut walker = Walker::new(feed, None);
            for k in 0..2_000 {
                let tick = walker.next(&mut rng, now + k * 100_000).expect("a valid tick");
                assert_eq!(tick.channel, feed.channel);
                let v: f64 = tick.value.as_deref().unwrap_or("nan").parse().unwrap_or(f64::NAN);
                let data: Value = serde_json::from_str(tick.data.as_deref().unwrap_or("null")).unwrap_or_default();
                match feed.shape {
                    Shape::Price { start, .. } => {
                        assert!(v > start * 0.5 && v < start * 2.0, "{} wandered to {v}", feed.channel);
                        let (bid, ask) = (data["bid"].as_f64().unwrap_or(0.0), data["ask"].as_f64().unwrap_or(0.0));
                        assert!(bid < ask, "bid {bid} ask {ask}");
                        assert!(tick.volume.is_some(), "candles need a volume");
                    }
                    Shape::Sensor { base, swing, .. } => assert!((v - base).abs() < swing + 0.5, "{v}"),
                    Shape::Battery => assert!((0.0..=100.0).contains(&v), "{v}"),
                }
            }
        }
    }

    #[test]
    fn the_last_value_is_read_from_a_stored_body() {
        use crate::tick::wire::{body, fields};
        let stored = body(
            7,
            "e1",
            &fields(1_700_000_000_000_000, Some("43210.5"), Some("{\"bid\":1}"), "ab"),
        );
        assert_eq!(value_of(&stored), 43_210.5);
        assert!(value_of(&body(8, "e1", &fields(0, None, Some("{}"), "cd"))).is_nan());
    }

    #[test]
    fn a_restarted_demo_continues_from_the_last_value() {
        let feed = FEEDS[0];
        assert_eq!(Walker::new(feed, Some(43_210.5)).value, 43_210.5);
        assert_eq!(Walker::new(feed, Some(f64::NAN)).value, 42_000.0);
    }
}

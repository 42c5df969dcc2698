//! Admission by rate: token buckets per (subject, group), kept in Redis so every node
//! shares them (docs/PROTOCOL.md "Rate limits").
//!
//! - [`bucket`]: the arithmetic (GCRA) and the node-local fallback buckets.
//! - [`ip`]: who the client is on the network (peer address, trusted proxies) and the
//!   per-IP flood shield that runs before anything else.
//! - [`shared`]: the buckets kept in Redis (`redis/token_bucket.lua`).
//! - [`limiter`]: the check a request makes: shared buckets, or local ones while
//!   Redis does not answer.
//!
//! A subject is a JWT `sub` or HMAC `client_id`, or the client IP for a request
//! without a valid credential. Limits come per tier and group from
//! `TICKSTREAM_RATE_<TIER>_<GROUP>`; tier `internal` is never limited. When Redis does
//! not answer, the same limits are kept per node until it does again.

pub mod bucket;
pub mod ip;
pub mod limiter;
pub mod shared;

use std::time::Duration;

/// Limits are tabled by the tier auth finds in a credential.
pub use crate::auth::{Subject, Tier};
pub use bucket::Decision;
pub use limiter::RateLimiter;

/// What a request spends tokens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    /// WebSocket handshakes and subscribes.
    Ws,
    /// REST reads.
    Api,
    /// Ingested ticks, one token each.
    Ingest,
}

impl Group {
    pub const ALL: [Group; 3] = [Group::Ws, Group::Api, Group::Ingest];

    pub fn name(self) -> &'static str {
        match self {
            Group::Ws => "ws",
            Group::Api => "api",
            Group::Ingest => "ingest",
        }
    }
}

/// A limit: `count` tokens per `period`, at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period: Duration,
    pub burst: u32,
}

impl Rate {
    /// Parses `<n>/<s|m|h>[:<burst>]` (burst defaults to `n`); `off` or `unlimited`
    /// gives `None`, no limit.
    pub fn parse(raw: &str) -> Result<Option<Rate>, String> {
        let raw = raw.trim();
        if matches!(raw, "off" | "unlimited") {
            return Ok(None);
        }
        let expected = || format!("expected <n>/<s|m|h>[:<burst>] (e.g. 60/m:20) or off, got {raw:?}");
        let (rate, burst) = match raw.split_once(':') {
            Some((rate, burst)) => (rate, Some(burst)),
            None => (raw, None),
        };
        let (count, unit) = rate.split_once('/').ok_or_else(expected)?;
        let count: u32 = count.trim().parse().map_err(|_| expected())?;
        let period = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(expected()),
        };
        let burst = match burst {
            Some(b) => b.trim().parse().map_err(|_| expected())?,
            None => count,
        };
        if count == 0 || burst == 0 || count > 1_000_000 || burst > 1_000_000 {
            return Err(format!("rate and burst must be 1..=1000000, got {raw:?}"));
        }
        Ok(Some(Rate { count, period, burst }))
    }

    /// Microseconds between two tokens.
    pub fn interval_us(&self) -> f64 {
        self.period.as_micros() as f64 / f64::from(self.count)
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.period.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}:{}", self.count, self.burst)
    }
}

/// Limits per tier and group; `None` is unlimited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// `[tier][group]` in the order of [`Tier::LIMITED`] and [`Group::ALL`].
    table: [[Option<Rate>; 3]; 3],
}

impl Limits {
    /// The defaults (docs/OPERATIONS.md "Rate limits" says why these).
    pub const DEFAULTS: [[&'static str; 3]; 3] = [
        // ws, api, ingest
        ["60/m:30", "60/m:20", "100/s:1000"],
        ["300/m:100", "600/m:100", "1000/s:5000"],
        ["1200/m:300", "3000/m:500", "10000/s:20000"],
    ];

    /// The environment variable of a tier and group, e.g. `TICKSTREAM_RATE_FREE_API`.
    pub fn variable(tier: Tier, group: Group) -> &'static str {
        match (tier, group) {
            (Tier::Free, Group::Ws) => "TICKSTREAM_RATE_FREE_WS",
            (Tier::Free, Group::Api) => "TICKSTREAM_RATE_FREE_API",
            (Tier::Free, Group::Ingest) => "TICKSTREAM_RATE_FREE_INGEST",
            (Tier::Pro, Group::Ws) => "TICKSTREAM_RATE_PRO_WS",
            (Tier::Pro, Group::Api) => "TICKSTREAM_RATE_PRO_API",
            (Tier::Pro, Group::Ingest) => "TICKSTREAM_RATE_PRO_INGEST",
            (Tier::Business, Group::Ws) => "TICKSTREAM_RATE_BUSINESS_WS",
            (Tier::Business, Group::Api) => "TICKSTREAM_RATE_BUSINESS_API",
            (Tier::Business, Group::Ingest) => "TICKSTREAM_RATE_BUSINESS_INGEST",
            (Tier::Internal, _) => "TICKSTREAM_RATE_INTERNAL (unlimited)",
        }
    }

    /// Builds the table from one value per tier and group (`value(tier, group)`),
    /// naming the variable of the first bad one.
    pub fn from_values(value: impl Fn(Tier, Group) -> String) -> Result<Limits, (&'static str, String)> {
        let mut table = [[None; 3]; 3];
        for (t, tier) in Tier::LIMITED.iter().enumerate() {
            for (g, group) in Group::ALL.iter().enumerate() {
                table[t][g] = Rate::parse(&value(*tier, *group)).map_err(|e| (Limits::variable(*tier, *group), e))?;
            }
        }
        Ok(Limits { table })
    }

    pub fn defaults() -> Limits {
        Limits::from_values(|t, g| Limits::default_value(t, g).to_string())
            .unwrap_or_else(|(var, e)| unreachable!("{var}: {e}"))
    }

    pub fn default_value(tier: Tier, group: Group) -> &'static str {
        let t = Tier::LIMITED.iter().position(|x| *x == tier).unwrap_or(0);
        let g = Group::ALL.iter().position(|x| *x == group).unwrap_or(0);
        Limits::DEFAULTS[t][g]
    }

    /// Every limited tier and group at `rate` (tests and benchmarks).
    pub fn uniform(rate: Option<Rate>) -> Limits {
        Limits { table: [[rate; 3]; 3] }
    }

    pub fn set(&mut self, tier: Tier, group: Group, rate: Option<Rate>) {
        if let (Some(t), Some(g)) = (
            Tier::LIMITED.iter().position(|x| *x == tier),
            Group::ALL.iter().position(|x| *x == group),
        ) {
            self.table[t][g] = rate;
        }
    }

    pub fn get(&self, tier: Tier, group: Group) -> Option<Rate> {
        let t = Tier::LIMITED.iter().position(|x| *x == tier)?;
        let g = Group::ALL.iter().position(|x| *x == group)?;
        self.table[t][g]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_refuse_nonsense() {
        assert_eq!(
            Rate::parse("60/m:20"),
            Ok(Some(Rate {
                count: 60,
                period: Duration::from_secs(60),
                burst: 20
            }))
        );
        assert_eq!(Rate::parse("5/s").unwrap().unwrap().burst, 5);
        assert_eq!(Rate::parse("off"), Ok(None));
        for bad in ["lots", "60", "60/d", "0/s", "5/s:0", "5/s:x", "-1/s", "5/s:2:3", ""] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Rate::parse("3000/m:500").unwrap().unwrap().to_string(), "3000/m:500");
        assert_eq!(Rate::parse("3000/m").unwrap().unwrap().interval_us(), 20_000.0);
    }

    #[test]
    fn every_default_parses_and_names_its_variable() {
        let limits = Limits::defaults();
        assert_eq!(limits.get(Tier::Free, Group::Api), Rate::parse("60/m:20").unwrap());
        assert_eq!(limits.get(Tier::Internal, Group::Api), None);
        assert_eq!(
            Limits::variable(Tier::Business, Group::Ingest),
            "TICKSTREAM_RATE_BUSINESS_INGEST"
        );
        let err = Limits::from_values(|t, g| {
            if (t, g) == (Tier::Pro, Group::Ws) {
                "lots".into()
            } else {
                "1/s".into()
            }
        })
        .unwrap_err();
        assert_eq!(err.0, "TICKSTREAM_RATE_PRO_WS");
    }
}

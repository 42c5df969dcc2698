//! Who the client is on the network, and the per-IP flood shield.
//!
//! The client IP is the TCP peer's address. `X-Forwarded-For` is believed only when
//! the peer is a trusted proxy (`TICKSTREAM_TRUSTED_PROXIES`): then the client is the
//! rightmost address in it that is not itself a trusted proxy. A header sent by anyone
//! else is ignored, so no client can pick its own address (docs/PROTOCOL.md "Rate
//! limits").
//!
//! The shield is tower-governor's keyed limiter, keyed on that address (an IPv6
//! client on its /64, since one host holds a whole /64), in front of every route: a
//! flood from one address is refused with 429 in memory and never reaches token
//! verification or Redis.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use tower_governor::governor::{GovernorConfig, GovernorConfigBuilder};
use tower_governor::key_extractor::PeerIpKeyExtractor;

use super::Rate;

/// An IP network: an address and a prefix length (`10.0.0.0/8`, `::1/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `1.2.3.4`, `10.0.0.0/8`, `fd00::/8`.
    pub fn parse(raw: &str) -> Option<Cidr> {
        let raw = raw.trim();
        let (addr, prefix) = match raw.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().ok()?)),
            None => (raw, None),
        };
        let written: IpAddr = addr.parse().ok()?;
        let max = if written.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return None;
        }
        // `::ffff:10.0.0.0/104` is `10.0.0.0/8`: peers are compared in canonical form,
        // so a mapped network must be too, with its prefix counted in IPv4 bits.
        let network = written.to_canonical();
        let prefix = match (written, network) {
            (IpAddr::V6(_), IpAddr::V4(_)) => prefix.checked_sub(96)?,
            _ => prefix,
        };
        Some(Cidr { network, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u128::from(u32::from(net)), u128::from(u32::from(ip)), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => masked(u128::from(net), u128::from(ip), self.prefix, 128),
            _ => false,
        }
    }
}

fn masked(net: u128, ip: u128, prefix: u8, bits: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = u32::from(bits - prefix);
    (net >> shift) == (ip >> shift)
}

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<Cidr>);

impl TrustedProxies {
    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client's address for a request from `peer` with these headers.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        // Split as bytes: one stray byte in an entry written by the client must not
        // hide the entries our proxies appended after it.
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .collect::<Vec<_>>();
        let mut client = peer;
        for entry in forwarded.iter().rev() {
            match std::str::from_utf8(entry)
                .ok()
                .and_then(|e| e.trim().parse::<IpAddr>().ok())
            {
                Some(ip) => {
                    client = ip.to_canonical();
                    if !self.trusts(client) {
                        break;
                    }
                }
                // Anything unparsable ends the chain: what lies left of it was written
                // by whoever sent the request, not by a proxy we trust.
                None => break,
            }
        }
        client
    }
}

/// The client address, computed once per request by the HTTP layer and read by the
/// shield, the rate limiter and handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl ClientIp {
    /// The address as rate limits see it: IPv4 as is, IPv6 by its /64 (a host is
    /// given a whole /64, so a finer key would give one client 2^64 budgets).
    pub fn rate_key(self) -> IpAddr {
        match self.0 {
            IpAddr::V4(v4) => IpAddr::V4(v4),
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        }
    }
}

/// The per-IP limiter; its map of addresses is pruned by `retain_recent`.
pub type Shield = Arc<GovernorConfig<PeerIpKeyExtractor, governor::middleware::NoOpMiddleware>>;

/// The shield for `rate`; `None` when it is off.
pub fn shield(rate: Option<Rate>) -> Option<Shield> {
    let rate = rate?;
    let per_token = Duration::from_nanos((rate.period.as_nanos() / u128::from(rate.count)).max(1) as u64);
    GovernorConfigBuilder::default()
        .period(per_token)
        .burst_size(rate.burst)
        .finish()
        .map(Arc::new)
}

/// Whole seconds until the shield would let `ip` through again, or `None` if it does
/// now (and counts this request).
pub fn shield_wait(shield: &Shield, ip: ClientIp) -> Option<u64> {
    use governor::clock::{Clock, DefaultClock};
    match shield.limiter().check_key(&ip.rate_key()) {
        Ok(()) => None,
        Err(not_until) => {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            Some(wait.as_micros().div_ceil(1_000_000).max(1) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_match_their_networks() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains(ip("10.1.200.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(Cidr::parse("127.0.0.1").unwrap().contains(ip("::ffff:127.0.0.1")));
        assert!(Cidr::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        // Mapped IPv4 networks count their prefix in IPv4 bits, and cannot be wider
        // than IPv4 itself.
        let mapped = Cidr::parse("::ffff:10.0.0.5").unwrap();
        assert!(mapped.contains(ip("10.0.0.5")));
        assert!(!mapped.contains(ip("10.0.0.6")));
        assert!(!mapped.contains(ip("8.8.8.8")));
        assert!(Cidr::parse("::ffff:10.0.0.0/104").unwrap().contains(ip("10.200.0.1")));
        for bad in ["", "10.0.0.0/33", "x", "10.0.0.0/", "::/129", "::ffff:10.0.0.0/64"] {
            assert!(Cidr::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.0.0.2".parse().unwrap());
        let none = TrustedProxies::default();
        assert_eq!(none.client_ip(ip("198.51.100.1"), &headers), ip("198.51.100.1"));
        let lb = TrustedProxies(vec![Cidr::parse("10.0.0.0/8").unwrap()]);
        // From the balancer: the rightmost address no trusted proxy wrote.
        assert_eq!(lb.client_ip(ip("10.0.0.1"), &headers), ip("203.0.113.7"));
        // From anyone else the header is the sender's own words.
        assert_eq!(lb.client_ip(ip("198.51.100.1"), &headers), ip("198.51.100.1"));
        headers.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(lb.client_ip(ip("10.0.0.1"), &headers), ip("10.0.0.1"));
        // A byte that is not UTF-8 in the client's own part hides nothing after it.
        headers.insert(
            "x-forwarded-for",
            axum::http::HeaderValue::from_bytes(b"\xff\xfe, 203.0.113.9").unwrap(),
        );
        assert_eq!(lb.client_ip(ip("10.0.0.1"), &headers), ip("203.0.113.9"));
    }

    #[test]
    fn ipv6_clients_are_limited_by_their_64() {
        let a = ClientIp(ip("2001:db8:1:2:aaaa::1")).rate_key();
        let b = ClientIp(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")).rate_key();
        assert_eq!(a, b);
        assert_ne!(a, ClientIp(ip("2001:db8:1:3::1")).rate_key());
        assert_eq!(ClientIp(ip("192.0.2.7")).rate_key(), ip("192.0.2.7"));
    }
}

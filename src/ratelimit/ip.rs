//! Who the client is on the network, and the per-IP flood shield.
//!
//! The client IP is the TCP peer's address. `X-Forwarded-For` is believed only when
//! the peer is a trusted proxy (`TICKSTREAM_TRUSTED_PROXIES`): then the client is the
//! rightmost address in it that is not itself a trusted proxy. A header sent by anyone
//! else is ignored, so no client can pick its own address (docs/PROTOCOL.md "Rate
//! limits").
//!
//! The shield is tower-governor, keyed on that address, in front of every route: a
//! flood from one address is refused with 429 in memory and never reaches token
//! verification or Redis.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request};
use tower_governor::governor::{GovernorConfig, GovernorConfigBuilder};
use tower_governor::key_extractor::KeyExtractor;
use tower_governor::GovernorError;

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
        let network: IpAddr = addr.parse().ok()?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Cidr {
            network: network.to_canonical(),
            prefix,
        })
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
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        let mut client = peer;
        for entry in forwarded.iter().rev() {
            match entry.parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip.to_canonical();
                    if !self.trusts(client) {
                        break;
                    }
                }
                // Anything unparsable ends the chain: what lies left of it was written
                // by whoever sent the request, not by a proxy we trust.
                Err(_) => break,
            }
        }
        client
    }
}

/// The client address, computed once per request by the HTTP layer and read by the
/// shield and the rate limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// Keys the shield on [`ClientIp`] (falling back to the peer address).
#[derive(Debug, Clone, Copy)]
pub struct ClientIpKey;

impl KeyExtractor for ClientIpKey {
    type Key = IpAddr;

    fn extract<T>(&self, req: &Request<T>) -> Result<IpAddr, GovernorError> {
        if let Some(ClientIp(ip)) = req.extensions().get::<ClientIp>() {
            return Ok(*ip);
        }
        req.extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .ok_or(GovernorError::UnableToExtractKey)
    }
}

pub type Shield = Arc<GovernorConfig<ClientIpKey, governor::middleware::NoOpMiddleware>>;

/// The shield's configuration for `rate`; `None` when it is off.
pub fn shield(rate: Option<Rate>) -> Option<Shield> {
    let rate = rate?;
    let per_token = Duration::from_nanos((rate.period.as_nanos() / u128::from(rate.count)).max(1) as u64);
    GovernorConfigBuilder::default()
        .period(per_token)
        .burst_size(rate.burst)
        .key_extractor(ClientIpKey)
        .finish()
        .map(Arc::new)
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
        for bad in ["", "10.0.0.0/33", "x", "10.0.0.0/", "::/129"] {
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
    }
}

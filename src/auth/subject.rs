//! Who a client is, as far as limits go: the subject its credential proves (or its
//! address) and its tier. Auth finds them; the rate limiter (`ratelimit/`) reads them.

use std::net::IpAddr;

/// A client's rate-limit tier (JWT `tier`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Tier {
    #[default]
    Free,
    Pro,
    Business,
    /// The operator's own clients: never limited, no rate headers.
    Internal,
}

impl Tier {
    pub fn parse(raw: &str) -> Option<Tier> {
        Some(match raw {
            "free" => Tier::Free,
            "pro" => Tier::Pro,
            "business" => Tier::Business,
            "internal" => Tier::Internal,
            _ => return None,
        })
    }

    /// The limited tiers, in the order of the limits' table (`ratelimit::Limits`).
    pub const LIMITED: [Tier; 3] = [Tier::Free, Tier::Pro, Tier::Business];

    pub fn name(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Pro => "pro",
            Tier::Business => "business",
            Tier::Internal => "internal",
        }
    }
}

/// Who is spending: a client by the credential it proved, or an address.
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    /// A JWT's `sub`.
    Jwt(&'a str),
    /// An HMAC-signed client's `client_id`.
    Hmac(&'a str),
    /// A request without a valid credential (an IPv6 address already cut to its /64).
    Ip(IpAddr),
}

impl Subject<'_> {
    /// The bucket key's subject part: `jwt:<sub>`, `hmac:<client_id>` or `ip:<address>`,
    /// so no client can name itself into another kind's bucket (an HMAC client that
    /// signs `client_id=alice` does not spend JWT user alice's tokens). A name that is
    /// long or holds characters that mean something in a key (`{`, `}`, spaces,
    /// controls) is hashed.
    pub fn key_part(&self) -> String {
        let (kind, name) = match self {
            Subject::Ip(ip) => return format!("ip:{ip}"),
            Subject::Jwt(sub) => ("jwt", *sub),
            Subject::Hmac(id) => ("hmac", *id),
        };
        let plain = name.len() <= 128 && name.bytes().all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}');
        if plain {
            format!("{kind}:{name}")
        } else {
            use sha2::{Digest, Sha256};
            format!("{kind}#{}", hex::encode(&Sha256::digest(name.as_bytes())[..16]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_cannot_collide_or_escape_the_hash_tag() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(Subject::Ip(ip).key_part(), "ip:10.0.0.1");
        assert_eq!(Subject::Jwt("ip:10.0.0.1").key_part(), "jwt:ip:10.0.0.1");
        assert_eq!(Subject::Jwt("alice").key_part(), "jwt:alice");
        assert_eq!(Subject::Hmac("alice").key_part(), "hmac:alice");
        for odd in ["a}b", "a b", &"x".repeat(200), "é"] {
            let k = Subject::Jwt(odd).key_part();
            assert!(k.starts_with("jwt#") && k.len() == 36, "{odd}: {k}");
        }
    }
}

//! Access patterns: which channels a token's `channels` claim grants, and which
//! browser origins may open a WebSocket (docs/PROTOCOL.md §3.2, §3.6).

use crate::tick::is_valid_channel;

/// A channel pattern from a token: an exact name, `prefix.*`, or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelPattern {
    All,
    /// Stored with its trailing dot, so `crypto.*` never matches `cryptography`.
    Prefix(String),
    Exact(String),
}

impl ChannelPattern {
    pub fn parse(raw: &str) -> Option<ChannelPattern> {
        if raw == "*" {
            return Some(ChannelPattern::All);
        }
        if let Some(prefix) = raw.strip_suffix(".*") {
            return is_valid_channel(prefix).then(|| ChannelPattern::Prefix(format!("{prefix}.")));
        }
        is_valid_channel(raw).then(|| ChannelPattern::Exact(raw.to_string()))
    }

    pub fn matches(&self, channel: &str) -> bool {
        match self {
            ChannelPattern::All => true,
            ChannelPattern::Prefix(p) => channel.len() > p.len() && channel.starts_with(p.as_str()),
            ChannelPattern::Exact(name) => name == channel,
        }
    }
}

/// A WebSocket Origin the server accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    /// `scheme://host[:port]`, lowercase.
    Exact(String),
    /// `https://*.example.com`: any subdomain depth, never `example.com` itself.
    Subdomains { scheme: String, suffix: String },
}

impl OriginPattern {
    pub fn parse(raw: &str) -> Option<OriginPattern> {
        let raw = raw.trim().trim_end_matches('/').to_ascii_lowercase();
        let (scheme, rest) = raw.split_once("://")?;
        if !matches!(scheme, "http" | "https") || rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
            return None;
        }
        if let Some(domain) = rest.strip_prefix("*.") {
            if domain.is_empty() || domain.contains('*') {
                return None;
            }
            return Some(OriginPattern::Subdomains {
                scheme: scheme.to_string(),
                suffix: format!(".{domain}"),
            });
        }
        (!rest.contains('*')).then_some(OriginPattern::Exact(raw))
    }

    pub fn matches(&self, origin: &str) -> bool {
        match self {
            OriginPattern::Exact(o) => o == origin,
            OriginPattern::Subdomains { scheme, suffix } => origin
                .strip_prefix(scheme.as_str())
                .and_then(|r| r.strip_prefix("://"))
                .is_some_and(|host| host.len() > suffix.len() && host.ends_with(suffix.as_str())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_patterns() {
        let p = ChannelPattern::parse("crypto.*").unwrap();
        assert!(p.matches("crypto.BTC-USD"));
        assert!(p.matches("crypto.a.b"));
        assert!(!p.matches("crypto"));
        assert!(!p.matches("cryptography"));
        assert!(ChannelPattern::parse("*").unwrap().matches("x"));
        assert!(ChannelPattern::parse("a").unwrap().matches("a"));
        assert!(!ChannelPattern::parse("a").unwrap().matches("ab"));
        for bad in ["", "a b", "*.x", "a.**", "../x", ".*"] {
            assert!(ChannelPattern::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn origin_patterns() {
        let sub = OriginPattern::parse("https://*.example.com").unwrap();
        assert!(sub.matches("https://app.example.com"));
        assert!(sub.matches("https://a.b.example.com"));
        assert!(!sub.matches("https://example.com"));
        assert!(!sub.matches("https://example.com.evil.test"));
        assert!(!sub.matches("http://app.example.com"));
        assert!(!sub.matches("https://evilexample.com"));
        let exact = OriginPattern::parse("https://App.Example.com/").unwrap();
        assert!(exact.matches("https://app.example.com"));
        for bad in ["example.com", "ftp://x", "https://", "https://a/b", "https://*"] {
            assert!(OriginPattern::parse(bad).is_none(), "{bad}");
        }
    }
}

//! Where the Redis engine connects: one Redis (`redis://`, `rediss://`) or a Redis
//! Cluster (`redis+cluster://h1:p1,h2:p2`, `rediss+cluster://…`), with the
//! credentials of the URL and the TLS files of the configuration
//! (docs/OPERATIONS.md "Redis Cluster").
//!
//! A cluster's nodes are reached by the addresses the cluster announces, with the
//! same scheme, credentials and TLS files as the seeds: the readers open their own
//! connection to each partition's master (docs/ARCHITECTURE.md §4).

use std::path::PathBuf;

use crate::engine::StoreError;

/// TLS material for `rediss://` beyond the system's trust store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM CA certificate(s) that signed the server's certificate
    /// (`TICKSTREAM_REDIS_TLS_CA`); the system trust store when absent.
    pub ca: Option<PathBuf>,
    /// PEM client certificate and key for mutual TLS (`TICKSTREAM_REDIS_TLS_CERT`,
    /// `TICKSTREAM_REDIS_TLS_KEY`).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// What `REDIS_URL` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One Redis: the URL as given.
    Single(String),
    /// A Redis Cluster: seed node URLs (`redis://[user:pass@]host:port`), any of them
    /// enough to discover the rest.
    Cluster {
        seeds: Vec<String>,
        /// `redis` or `rediss`.
        scheme: String,
        /// `user:pass@`, or empty.
        userinfo: String,
    },
}

/// A Redis node, as a cluster announces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddr {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Why a `REDIS_URL` cannot be used, in words for the operator.
pub fn parse(url: &str) -> Result<Target, String> {
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        return Ok(Target::Single(url.to_string()));
    }
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
        ("redis", rest)
    } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
        ("rediss", rest)
    } else {
        return Err("must start with redis://, rediss://, redis+cluster:// or rediss+cluster://".into());
    };
    // Credentials end at the last '@' (a password may contain '@' only percent-encoded,
    // but be lenient); a trailing path or `/0` is allowed and ignored (a cluster has
    // database 0 only).
    let (userinfo, hosts) = match rest.rfind('@') {
        Some(at) => (&rest[..=at], &rest[at + 1..]),
        None => ("", rest),
    };
    let hosts = hosts.split('/').next().unwrap_or("");
    let seeds: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| {
            let port_ok = h
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if port_ok {
                Ok(format!("{scheme}://{userinfo}{h}"))
            } else {
                Err(format!("cluster node {h:?} is not host:port"))
            }
        })
        .collect::<Result<_, _>>()?;
    if seeds.is_empty() {
        return Err("a cluster URL names at least one node: redis+cluster://host:port[,host:port…]".into());
    }
    Ok(Target::Cluster {
        seeds,
        scheme: scheme.into(),
        userinfo: userinfo.into(),
    })
}

impl Target {
    /// The URL of one cluster node, announced as `host:port`.
    pub fn node_url(&self, host: &str, port: u16) -> Option<String> {
        match self {
            Target::Single(_) => None,
            Target::Cluster { scheme, userinfo, .. } => Some(format!("{scheme}://{userinfo}{host}:{port}")),
        }
    }
}

fn read(var: &str, path: &PathBuf) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|e| StoreError::Config(format!("{var}: cannot read {}: {e}", path.display())))
}

/// The TLS files as redis-rs takes them; `None` when none are given (the system
/// trust store, or no TLS at all).
pub fn certificates(tls: &TlsFiles) -> Result<Option<redis::TlsCertificates>, StoreError> {
    if tls == &TlsFiles::default() {
        return Ok(None);
    }
    let root_cert = tls
        .ca
        .as_ref()
        .map(|p| read("TICKSTREAM_REDIS_TLS_CA", p))
        .transpose()?;
    let client_tls = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read("TICKSTREAM_REDIS_TLS_CERT", cert)?,
            client_key: read("TICKSTREAM_REDIS_TLS_KEY", key)?,
        }),
        (None, None) => None,
        _ => {
            return Err(StoreError::Config(
                "TICKSTREAM_REDIS_TLS_CERT and TICKSTREAM_REDIS_TLS_KEY go together".into(),
            ))
        }
    };
    Ok(Some(redis::TlsCertificates { client_tls, root_cert }))
}

/// A redis-rs client for one Redis at `url`, with the TLS files when given. (A
/// private CA or a client certificate can only be given through
/// `Client::build_with_tls`.)
pub fn client(url: &str, tls: &TlsFiles) -> Result<redis::Client, StoreError> {
    match certificates(tls)? {
        None => Ok(redis::Client::open(url)?),
        Some(certs) => Ok(redis::Client::build_with_tls(url, certs)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_one_redis_or_a_cluster() {
        assert_eq!(
            parse("redis://127.0.0.1:6379/0"),
            Ok(Target::Single("redis://127.0.0.1:6379/0".into()))
        );
        let t = parse("rediss+cluster://app:s3cret@10.0.0.1:7000,10.0.0.2:7001/").unwrap();
        assert_eq!(
            t,
            Target::Cluster {
                seeds: vec![
                    "rediss://app:s3cret@10.0.0.1:7000".into(),
                    "rediss://app:s3cret@10.0.0.2:7001".into()
                ],
                scheme: "rediss".into(),
                userinfo: "app:s3cret@".into(),
            }
        );
        assert_eq!(
            t.node_url("10.0.0.3", 7002).as_deref(),
            Some("rediss://app:s3cret@10.0.0.3:7002")
        );
        assert_eq!(
            parse("redis+cluster://h:1").unwrap().node_url("x", 2).as_deref(),
            Some("redis://x:2")
        );
        for bad in [
            "http://h:1",
            "redis+cluster://",
            "redis+cluster://h",
            "redis+cluster://h:port",
            "redis+cluster://:1",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}

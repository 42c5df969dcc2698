//! Who is asking, and may they: tokens (JWT, HMAC-signed handshake, the static
//! ingest token), channel patterns and the WebSocket Origin allowlist (SPEC §2).
//!
//! Everything downstream sees one [`Principal`]; how it was proven stays here.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderMap};
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::ratelimit::Tier;
use crate::tick::is_valid_channel;

/// Clock skew tolerated on `exp`, `nbf` and HMAC timestamps' neighbours (SPEC §2).
pub const LEEWAY_SECS: u64 = 30;
/// How far an HMAC handshake's `ts` may be from the server's clock.
pub const HMAC_WINDOW_SECS: i64 = 60;
/// The subprotocol the server answers; browsers send it with the bearer one.
pub const SUBPROTOCOL: &str = "tickstream.v1";
/// Prefix of the subprotocol that carries a browser's JWT.
pub const BEARER_SUBPROTOCOL_PREFIX: &str = "tickstream.bearer.";

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

/// An authenticated client, however it proved itself.
#[derive(Debug, Clone)]
pub struct Principal {
    /// JWT `sub` or HMAC `client_id`: the client id and rate-limit subject.
    pub sub: String,
    pub tier: Tier,
    pub channels: Vec<ChannelPattern>,
    pub scopes: Vec<String>,
    /// Unix seconds after which (plus the leeway) a connection must be closed with 4001.
    pub expires_at: Option<u64>,
}

impl Principal {
    pub fn can_read(&self, channel: &str) -> bool {
        self.channels.iter().any(|p| p.matches(channel))
    }

    pub fn can_ingest(&self) -> bool {
        self.scopes.iter().any(|s| s == "ingest")
    }

    /// The static ingest token's holder: may ingest, reads nothing.
    fn producer() -> Principal {
        Principal {
            sub: "ingest-token".into(),
            tier: Tier::Internal,
            channels: Vec::new(),
            scopes: vec!["ingest".into()],
            expires_at: None,
        }
    }
}

/// Why a request was not authenticated or not allowed. Mapped to HTTP once, in
/// `error.rs`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a token is required (Authorization: Bearer, the tickstream.bearer subprotocol, or ?token=)")]
    Missing,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid: {0}")]
    Invalid(String),
    #[error("the token does not allow {0}")]
    Forbidden(String),
    #[error("origin {0:?} is not allowed")]
    BadOrigin(String),
}

/// Claims tickstream reads from a JWT.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default)]
    pub channels: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(default)]
    pub scope: Scope,
}

/// `scope` as an array (SPEC) or, as OAuth servers issue it, one space-separated string.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scope {
    #[default]
    None,
    List(Vec<String>),
    Spaced(String),
}

impl Scope {
    fn into_vec(self) -> Vec<String> {
        match self {
            Scope::None => Vec::new(),
            Scope::List(v) => v,
            Scope::Spaced(s) => s.split_whitespace().map(str::to_string).collect(),
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

    fn matches(&self, origin: &str) -> bool {
        match self {
            OriginPattern::Exact(o) => o == origin,
            OriginPattern::Subdomains { scheme, suffix } => origin
                .strip_prefix(scheme.as_str())
                .and_then(|r| r.strip_prefix("://"))
                .is_some_and(|host| host.len() > suffix.len() && host.ends_with(suffix.as_str())),
        }
    }
}

/// Verifies every kind of credential the server accepts. Built once from `Config`.
pub struct Authenticator {
    jwt_key: DecodingKey,
    validation: Validation,
    /// Only for HS256 secrets: lets dev mode print a token.
    encoding: Option<EncodingKey>,
    /// SHA-256 of the static ingest token, compared in constant time.
    ingest_token_hash: Option<[u8; 32]>,
    hmac_secret: Option<Vec<u8>>,
    hmac_channels: Vec<ChannelPattern>,
    allowed_origins: Vec<OriginPattern>,
}

/// What start-up generated in dev mode, to be printed for the operator.
pub struct DevCredentials {
    pub reader_token: String,
    pub ingest_token: String,
}

/// Start-up failure reading key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("TICKSTREAM_JWT_PUBLIC_KEY: cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("TICKSTREAM_JWT_PUBLIC_KEY: {0} is neither an RSA nor an EC public key in PEM")]
    Parse(String),
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Authenticator {
    /// Builds the verifier. In dev mode (no key configured) it makes a random HS256
    /// secret and, if needed, an ingest token, and returns them so start-up can print
    /// them: the server never runs with authentication off.
    pub fn new(config: &Config) -> Result<(Authenticator, Option<DevCredentials>), KeyError> {
        let dev = config.dev_mode();
        let mut ingest_token = config.ingest_token.clone();
        let (jwt_key, algorithm, encoding) = if let Some(path) = &config.jwt_public_key {
            let shown = path.display().to_string();
            let pem = std::fs::read(path).map_err(|e| KeyError::Read(shown.clone(), e))?;
            if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                (key, Algorithm::RS256, None)
            } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                (key, Algorithm::ES256, None)
            } else {
                return Err(KeyError::Parse(shown));
            }
        } else {
            // With only an HMAC secret configured, JWTs still need *a* key; a random one
            // means no JWT verifies, which is the truth of that configuration.
            let secret = config.jwt_secret.clone().unwrap_or_else(|| random_hex(32));
            (
                DecodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
                Some(EncodingKey::from_secret(secret.as_bytes())),
            )
        };
        if dev && ingest_token.is_none() {
            ingest_token = Some(random_hex(24));
        }
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        match &config.jwt_audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            // Without a configured audience any `aud` is accepted.
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &config.jwt_issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let auth = Authenticator {
            jwt_key,
            validation,
            encoding,
            ingest_token_hash: ingest_token.as_deref().map(sha256),
            hmac_secret: config.hmac_secret.as_ref().map(|s| s.as_bytes().to_vec()),
            hmac_channels: config
                .hmac_channels
                .iter()
                .filter_map(|p| ChannelPattern::parse(p))
                .collect(),
            allowed_origins: config.allowed_origins.clone(),
        };
        let creds = if dev {
            let reader_token = auth
                .mint("dev", &["*"], &[], 24 * 3600)
                .map_err(|e| KeyError::Parse(e.to_string()))?;
            Some(DevCredentials {
                reader_token,
                ingest_token: ingest_token.unwrap_or_default(),
            })
        } else {
            None
        };
        Ok((auth, creds))
    }

    /// Signs a token with the HS256 secret (dev mode and tests).
    pub fn mint(&self, sub: &str, channels: &[&str], scopes: &[&str], ttl_secs: u64) -> Result<String, AuthError> {
        let key = self
            .encoding
            .as_ref()
            .ok_or_else(|| AuthError::Invalid("no HS256 secret to sign with".into()))?;
        let now = unix_now();
        let claims = Claims {
            sub: sub.into(),
            exp: now.saturating_add(ttl_secs),
            nbf: None,
            iat: Some(now),
            channels: channels.iter().map(|s| s.to_string()).collect(),
            tier: None,
            scope: Scope::List(scopes.iter().map(|s| s.to_string()).collect()),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key)
            .map_err(|e| AuthError::Invalid(e.to_string()))
    }

    /// Verifies a JWT: algorithm pinned by configuration, `exp` required, `nbf`
    /// honoured, 30 s leeway.
    pub fn verify_jwt(&self, token: &str) -> Result<Principal, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.jwt_key, &self.validation).map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::Invalid("not valid yet (nbf)".into()),
                ErrorKind::InvalidAlgorithm => AuthError::Invalid("algorithm not accepted".into()),
                ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
                ErrorKind::MissingRequiredClaim(c) => AuthError::Invalid(format!("missing claim {c}")),
                ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience (aud)".into()),
                ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer (iss)".into()),
                _ => AuthError::Invalid("malformed token".into()),
            })?;
        let claims = data.claims;
        let tier = match claims.tier.as_deref() {
            None => Tier::Free,
            Some(t) => Tier::parse(t).ok_or_else(|| AuthError::Invalid(format!("unknown tier {t:?}")))?,
        };
        let channels = claims
            .channels
            .iter()
            .map(|p| ChannelPattern::parse(p).ok_or_else(|| AuthError::Invalid(format!("bad channel pattern {p:?}"))))
            .collect::<Result<_, _>>()?;
        Ok(Principal {
            sub: claims.sub,
            tier,
            channels,
            scopes: claims.scope.into_vec(),
            expires_at: Some(claims.exp),
        })
    }

    /// Verifies an HMAC-signed handshake: `sig` = hex HMAC-SHA256(secret,
    /// "{client_id}\n{ts}\n{path}"), `ts` within ±60 s.
    pub fn verify_hmac(&self, client_id: &str, ts: &str, sig: &str, path: &str) -> Result<Principal, AuthError> {
        let secret = self
            .hmac_secret
            .as_ref()
            .ok_or_else(|| AuthError::Invalid("signed handshakes are not enabled".into()))?;
        if client_id.is_empty() || client_id.len() > 128 {
            return Err(AuthError::Invalid("bad client_id".into()));
        }
        let ts_secs: i64 = ts.parse().map_err(|_| AuthError::Invalid("bad ts".into()))?;
        let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
        // abs_diff: a `ts` near i64::MIN must be refused, not overflow.
        if now.abs_diff(ts_secs) > HMAC_WINDOW_SECS.unsigned_abs() {
            return Err(AuthError::Expired);
        }
        let sig = hex::decode(sig).map_err(|_| AuthError::Invalid("bad signature".into()))?;
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| AuthError::Invalid("bad key".into()))?;
        mac.update(format!("{client_id}\n{ts}\n{path}").as_bytes());
        mac.verify_slice(&sig)
            .map_err(|_| AuthError::Invalid("bad signature".into()))?;
        Ok(Principal {
            sub: client_id.to_string(),
            tier: Tier::Free,
            channels: self.hmac_channels.clone(),
            scopes: Vec::new(),
            expires_at: None,
        })
    }

    /// Authenticates a request from whatever credential it carries: a bearer header,
    /// the bearer subprotocol, `?token=`, or `client_id`/`ts`/`sig`.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        creds: &QueryCredentials,
        path: &str,
    ) -> Result<Principal, AuthError> {
        if let Some(token) = bearer(headers)
            .or_else(|| subprotocol_token(headers))
            .or(creds.token.as_deref())
        {
            return self.verify_jwt(token);
        }
        if let (Some(id), Some(ts), Some(sig)) = (&creds.client_id, &creds.ts, &creds.sig) {
            return self.verify_hmac(id, ts, sig, path);
        }
        Err(AuthError::Missing)
    }

    /// A producer: the static ingest token, or a JWT with scope `ingest`.
    pub fn authenticate_producer(&self, headers: &HeaderMap, creds: &QueryCredentials) -> Result<Principal, AuthError> {
        let token = bearer(headers).or(creds.token.as_deref()).ok_or(AuthError::Missing)?;
        if let Some(expected) = &self.ingest_token_hash {
            if constant_time_eq(&sha256(token), expected) {
                return Ok(Principal::producer());
            }
        }
        let principal = self.verify_jwt(token)?;
        if principal.can_ingest() {
            Ok(principal)
        } else {
            Err(AuthError::Forbidden("ingest (scope \"ingest\" required)".into()))
        }
    }

    /// CSWSH defence: the Origin must be allowed or be the server's own (the
    /// request's Host under http or https). A missing Origin is a non-browser client,
    /// which the caller admits only with a valid token.
    pub fn check_origin(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let origin = origin
            .to_str()
            .map_err(|_| AuthError::BadOrigin("<not ascii>".into()))?
            .to_ascii_lowercase();
        let own = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_ascii_lowercase)
            .is_some_and(|host| origin == format!("http://{host}") || origin == format!("https://{host}"));
        if own || self.allowed_origins.iter().any(|p| p.matches(&origin)) {
            Ok(())
        } else {
            Err(AuthError::BadOrigin(origin))
        }
    }

    /// Whether `origin` may read REST answers cross-origin (CORS).
    pub fn origin_allowed(&self, origin: &str) -> bool {
        let origin = origin.to_ascii_lowercase();
        self.allowed_origins.iter().any(|p| p.matches(&origin))
    }
}

/// Credentials that can travel in a query string.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct QueryCredentials {
    pub token: Option<String>,
    pub client_id: Option<String>,
    pub ts: Option<String>,
    pub sig: Option<String>,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn subprotocol_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(BEARER_SUBPROTOCOL_PREFIX))
}

/// Whether the client offered `tickstream.v1` (then the server must answer it).
pub fn offers_subprotocol(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL)
}

fn sha256(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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

    fn auth() -> Authenticator {
        let mut c = Config::defaults();
        c.jwt_secret = Some("0123456789abcdef0123".into());
        Authenticator::new(&c).unwrap().0
    }

    #[test]
    fn jwt_round_trip_and_refusals() {
        let a = auth();
        let t = a.mint("alice", &["crypto.*"], &[], 60).unwrap();
        let p = a.verify_jwt(&t).unwrap();
        assert_eq!(p.sub, "alice");
        assert!(p.can_read("crypto.BTC"));
        assert!(!p.can_read("iss.X"));
        assert!(!p.can_ingest());
        let expired = a.mint("alice", &["*"], &[], 0).unwrap();
        // exp = now is still inside the leeway.
        assert!(a.verify_jwt(&expired).is_ok());
        assert!(matches!(a.verify_jwt("garbage"), Err(AuthError::Invalid(_))));
        let other = {
            let mut c = Config::defaults();
            c.jwt_secret = Some("another-secret-of-16".into());
            Authenticator::new(&c).unwrap().0
        };
        assert!(matches!(
            a.verify_jwt(&other.mint("x", &["*"], &[], 60).unwrap()),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn dev_mode_never_runs_open() {
        let (a, creds) = Authenticator::new(&Config::defaults()).unwrap();
        let creds = creds.expect("dev mode prints credentials");
        assert!(a.verify_jwt(&creds.reader_token).unwrap().can_read("anything"));
        assert_eq!(creds.ingest_token.len(), 48);
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {}", creds.ingest_token).parse().unwrap(),
        );
        assert!(a.authenticate_producer(&h, &QueryCredentials::default()).is_ok());
        h.insert(header::AUTHORIZATION, "Bearer nope".parse().unwrap());
        assert!(a.authenticate_producer(&h, &QueryCredentials::default()).is_err());
    }
}

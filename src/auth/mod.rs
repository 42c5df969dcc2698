//! Who is asking, and may they: tokens (JWT, HMAC-signed handshake, the static
//! ingest token) and the WebSocket Origin check (docs/PROTOCOL.md §3).
//!
//! - [`jwt`]: JWT verification (and minting, for dev mode and tests).
//! - [`hmac`]: HMAC-signed handshakes.
//!
//! Everything downstream sees one [`Principal`]; how it was proven stays here.

pub mod hmac;
pub mod jwt;
pub mod subject;

use std::path::PathBuf;

use axum::http::{header, HeaderMap};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::acl::{ChannelPattern, OriginPattern};
pub use subject::{Subject, Tier};

/// Clock skew tolerated on `exp`, `nbf` and HMAC timestamps' neighbours.
pub const LEEWAY_SECS: u64 = 30;
/// How far an HMAC handshake's `ts` may be from the server's clock.
pub const HMAC_WINDOW_SECS: i64 = 60;
/// The subprotocol the server answers; browsers send it with the bearer one.
pub const SUBPROTOCOL: &str = "tickstream.v1";
/// Prefix of the subprotocol that carries a browser's JWT.
pub const BEARER_SUBPROTOCOL_PREFIX: &str = "tickstream.bearer.";

/// What authentication is configured with (a part of `Config`). Its `Debug` says
/// which secrets are set, never what they are.
#[derive(Clone, Default)]
pub struct Settings {
    /// HS256 secret (at least 16 bytes).
    pub jwt_secret: Option<String>,
    /// PEM public key file for RS256/ES256 (instead of the secret).
    pub jwt_public_key: Option<PathBuf>,
    /// When set, a JWT's `aud` must contain it.
    pub jwt_audience: Option<String>,
    /// When set, a JWT's `iss` must equal it.
    pub jwt_issuer: Option<String>,
    pub hmac_secret: Option<String>,
    /// What HMAC-signed clients may read.
    pub hmac_channels: Vec<ChannelPattern>,
    /// The operator's static producer token.
    pub ingest_token: Option<String>,
    /// Browser origins allowed besides the server's own.
    pub allowed_origins: Vec<OriginPattern>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("Settings")
            .field("jwt_secret", &set(&self.jwt_secret))
            .field("jwt_public_key", &self.jwt_public_key)
            .field("jwt_audience", &self.jwt_audience)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("hmac_secret", &set(&self.hmac_secret))
            .field("hmac_channels", &self.hmac_channels)
            .field("ingest_token", &set(&self.ingest_token))
            .field("allowed_origins", &self.allowed_origins)
            .finish()
    }
}

impl Settings {
    /// True when no verification key is configured: the server then makes its own
    /// (dev mode) rather than run with authentication off.
    pub fn dev_mode(&self) -> bool {
        self.jwt_secret.is_none() && self.jwt_public_key.is_none() && self.hmac_secret.is_none()
    }
}

/// An authenticated client, however it proved itself.
#[derive(Debug, Clone)]
pub struct Principal {
    /// What it proved itself with.
    pub credential: Credential,
    /// JWT `sub` or HMAC `client_id`: the client id and rate-limit subject.
    pub sub: String,
    pub tier: Tier,
    pub channels: Vec<ChannelPattern>,
    pub scopes: Vec<String>,
    /// Unix seconds after which (plus the leeway) a connection must be closed with 4001.
    pub expires_at: Option<u64>,
}

/// The kinds of credential the server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    Jwt,
    Hmac,
    /// The operator's static ingest token.
    IngestToken,
}

impl Principal {
    /// Whose rate-limit buckets this principal spends.
    pub fn subject(&self) -> Subject<'_> {
        match self.credential {
            Credential::Hmac => Subject::Hmac(&self.sub),
            Credential::Jwt | Credential::IngestToken => Subject::Jwt(&self.sub),
        }
    }

    pub fn can_read(&self, channel: &str) -> bool {
        self.channels.iter().any(|p| p.matches(channel))
    }

    pub fn can_ingest(&self) -> bool {
        self.scopes.iter().any(|s| s == "ingest")
    }

    /// Whether this producer may write `channel`: the static ingest token writes
    /// every channel; a JWT producer what its `channels` claim matches, as for
    /// reading (no claim: none).
    pub fn can_write(&self, channel: &str) -> bool {
        self.credential == Credential::IngestToken || self.can_read(channel)
    }

    /// The static ingest token's holder: may ingest, reads nothing.
    fn producer() -> Principal {
        Principal {
            credential: Credential::IngestToken,
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

/// Verifies every kind of credential the server accepts. Built once from [`Settings`].
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

/// A fresh candidate for dev mode's signing secret.
pub fn new_dev_secret() -> String {
    random_hex(32)
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

impl Authenticator {
    /// Builds the verifier. In dev mode (no key configured) it signs with `dev_secret`
    /// (kept by the engine: `Engine::dev_secret`), makes an ingest token if needed, and returns
    /// a reader token and the ingest token so start-up can print them: the server never
    /// runs with authentication off.
    pub fn new(
        settings: &Settings,
        dev_secret: Option<String>,
    ) -> Result<(Authenticator, Option<DevCredentials>), KeyError> {
        let dev = settings.dev_mode();
        let mut ingest_token = settings.ingest_token.clone();
        let (jwt_key, algorithm, encoding) = if let Some(path) = &settings.jwt_public_key {
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
            let secret = settings
                .jwt_secret
                .clone()
                .or(dev_secret.filter(|_| dev))
                .unwrap_or_else(|| random_hex(32));
            (
                DecodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
                Some(EncodingKey::from_secret(secret.as_bytes())),
            )
        };
        if dev && ingest_token.is_none() {
            ingest_token = Some(random_hex(24));
        }
        let validation = jwt::validation(algorithm, settings);
        let auth = Authenticator {
            jwt_key,
            validation,
            encoding,
            ingest_token_hash: ingest_token.as_deref().map(sha256),
            hmac_secret: settings.hmac_secret.as_ref().map(|s| s.as_bytes().to_vec()),
            hmac_channels: settings.hmac_channels.clone(),
            allowed_origins: settings.allowed_origins.clone(),
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

    /// Whether the request carries the operator's static ingest token.
    pub fn is_ingest_token(&self, headers: &HeaderMap) -> bool {
        match (&self.ingest_token_hash, bearer(headers)) {
            (Some(expected), Some(token)) => constant_time_eq(&sha256(token), expected),
            _ => false,
        }
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
    header_list(headers, header::SEC_WEBSOCKET_PROTOCOL).find_map(|p| p.strip_prefix(BEARER_SUBPROTOCOL_PREFIX))
}

/// Whether the client offered `tickstream.v1` (then the server must answer it).
pub fn offers_subprotocol(headers: &HeaderMap) -> bool {
    header_list(headers, header::SEC_WEBSOCKET_PROTOCOL).any(|p| p == SUBPROTOCOL)
}

/// The trimmed elements of a comma-separated header, over all its lines
/// (`Sec-WebSocket-Protocol`, `Connection`, `Upgrade`).
pub fn header_list(headers: &HeaderMap, name: header::HeaderName) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
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
    fn dev_mode_never_runs_open() {
        let (a, creds) = Authenticator::new(&Settings::default(), None).unwrap();
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
